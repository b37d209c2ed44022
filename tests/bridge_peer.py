"""An independent peer for the topic bridge tests: pure Python cyclonedds with hand-written
`dds_` types (no code of ours), on both DDS domains at once.

  bridge_peer.py --agent D1 --robot D2 --plan JSON --expect N [--feed K] [--interval S] [--idle S]

On the agent domain it publishes the plan, one message after another, once the bridge has
matched every topic on both sides; on the robot domain it reads what the bridge republishes.
Plan entries: ["twist", topic, x, z] (geometry_msgs/Twist; x and z may be "NaN"), ["bool", topic, value]
(std_msgs/Bool), ["garbage", topic, text] (a payload that is not a Twist, on a Twist topic),
["raw", topic, dds_type, hex] (exactly these payload bytes, under that DDS type name; on a
topic with no twist or bool entry the robot side reads them back as bytes: {"hex": …}),
["sleep", seconds] (publish nothing for a while, reading the robot side meanwhile).
It also reads /autonomy/decisions on the agent domain, and with --feed K publishes K
std_msgs/String messages on /status on the robot domain and reads them back on the agent's.

Prints one JSON object per line: {"event": "matched"}, then {"event": "robot", ...} for each
message the robot side received (in order, with "t": seconds since "matched" when it was
read), {"event": "sent", "t": ...} as each plan entry is published, {"event": "decision", ...}, {"event": "feed", ...},
and {"event": "done"}. Every wait has a deadline.
"""

import argparse
import json
import math
import sys
import time
import types
from dataclasses import dataclass

import cyclonedds.idl.types as t
from cyclonedds.core import Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration


def out(**kv):
    print(json.dumps(kv), flush=True)


def fail(msg):
    out(event="error", message=msg)
    sys.exit(1)


@dataclass
class Vector3_(IdlStruct, typename="geometry_msgs::msg::dds_::Vector3_"):
    x: t.float64
    y: t.float64
    z: t.float64


@dataclass
class Twist_(IdlStruct, typename="geometry_msgs::msg::dds_::Twist_"):
    linear: Vector3_
    angular: Vector3_


# Same DDS type name, another layout: what a confused or hostile agent could send.
@dataclass
class NotATwist_(IdlStruct, typename="geometry_msgs::msg::dds_::Twist_"):
    text: str


@dataclass
class Bool_(IdlStruct, typename="std_msgs::msg::dds_::Bool_"):
    data: bool


@dataclass
class String_(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str


@dataclass
class Time_(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: t.int32
    nanosec: t.uint32


@dataclass
class Decision_(IdlStruct, typename="autonomy_msgs::msg::dds_::Decision_"):
    stamp: Time_
    audit_id: str
    kind: str
    decision: str
    reason: str
    policy_ref: str
    source: str
    rules_json: str


_raw = {}


def raw_class(typename, n):
    """A struct of exactly n bytes named `typename`: any payload, unchanged, on any topic."""
    if (typename, n) not in _raw:
        body = {"__annotations__": {"b": t.array[t.uint8, n]}}
        cls = types.new_class(f"Raw{len(_raw)}_", (IdlStruct,), {"typename": typename},
                              lambda ns: ns.update(body))
        _raw[(typename, n)] = dataclass(cls)
    return _raw[(typename, n)]


def qos(depth=100):
    return Qos(
        Policy.Reliability.Reliable(duration(seconds=1)),
        Policy.History.KeepLast(depth),
        Policy.Durability.Volatile,
        Policy.DataRepresentation(use_cdrv0_representation=True),
    )


def wait_until(pred, secs, what):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    fail(f"timed out after {secs}s waiting for {what}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--agent", type=int, required=True)
    p.add_argument("--robot", type=int, required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--feed", type=int, default=0)
    p.add_argument("--interval", type=float, default=0.0)
    p.add_argument("--idle", type=float, default=0.0)
    a = p.parse_args()
    plan = json.loads(a.plan)

    agent = DomainParticipant(a.agent)
    robot = DomainParticipant(a.robot)
    kinds = {}
    for e in plan:
        if e[0] not in ("raw", "sleep"):
            kinds.setdefault(e[1], "bool" if e[0] == "bool" else "twist")
    writers, garbage_writers, readers, raw_writers = {}, {}, {}, {}
    for e in plan:
        if e[0] == "raw":
            cls = raw_class(e[2], len(bytes.fromhex(e[3])))
            if (e[1], cls) not in raw_writers:
                raw_writers[(e[1], cls)] = DataWriter(agent, Topic(agent, "rt" + e[1], cls), qos=qos())
            if e[1] not in kinds and e[1] not in readers:
                readers[e[1]] = DataReader(robot, Topic(robot, "rt" + e[1], cls), qos=qos())
    for topic, kind in kinds.items():
        cls = Bool_ if kind == "bool" else Twist_
        dds_name = "rt" + topic
        writers[topic] = DataWriter(agent, Topic(agent, dds_name, cls), qos=qos())
        if kind == "twist":
            garbage_writers[topic] = DataWriter(
                agent, Topic(agent, dds_name, NotATwist_), qos=qos()
            )
        readers[topic] = DataReader(robot, Topic(robot, dds_name, cls), qos=qos())
    decisions = DataReader(agent, Topic(agent, "rt/autonomy/decisions", Decision_), qos=qos())
    if a.feed:
        feed_w = DataWriter(robot, Topic(robot, "rt/status", String_), qos=qos())
        feed_r = DataReader(agent, Topic(agent, "rt/status", String_), qos=qos())

    for (topic, _), w in raw_writers.items():
        wait_until(lambda: len(w.get_matched_subscriptions()) > 0, 30,
                   f"the bridge's reader of {topic} (raw writer)")
    for topic in readers:
        wait_until(lambda: len(readers[topic].get_matched_publications()) > 0, 30,
                   f"the bridge's writer of {topic} (robot domain)")
    for topic in kinds:
        wait_until(lambda: len(writers[topic].get_matched_subscriptions()) > 0, 30,
                   f"the bridge's reader of {topic} (agent domain)")
        if topic in garbage_writers:
            wait_until(lambda: len(garbage_writers[topic].get_matched_subscriptions()) > 0, 30,
                       f"the bridge's reader of {topic} (garbage writer)")
        wait_until(lambda: len(readers[topic].get_matched_publications()) > 0, 30,
                   f"the bridge's writer of {topic} (robot domain)")
    wait_until(lambda: len(decisions.get_matched_publications()) > 0, 30,
               "the bridge's /autonomy/decisions writer")
    if a.feed:
        wait_until(lambda: len(feed_w.get_matched_subscriptions()) > 0, 30,
                   "the bridge's reader of /status (robot domain)")
        wait_until(lambda: len(feed_r.get_matched_publications()) > 0, 30,
                   "the bridge's writer of /status (agent domain)")
    time.sleep(0.5)  # let the bridge's side of each match settle too
    out(event="matched")
    t0 = time.monotonic()

    got, feeds, decs = [], [], []

    def drain():
        for topic, r in readers.items():
            for s in r.take(N=100):
                now = round(time.monotonic() - t0, 3)
                if isinstance(s, Twist_):
                    got.append({"topic": topic, "x": s.linear.x, "z": s.angular.z, "t": now})
                elif isinstance(s, Bool_):
                    got.append({"topic": topic, "data": s.data, "t": now})
                elif hasattr(s, "b"):
                    got.append({"topic": topic, "hex": bytes(s.b).hex(), "t": now})
        for s in decisions.take(N=100):
            if isinstance(s, Decision_):
                decs.append(s)
        if a.feed:
            for s in feed_r.take(N=100):
                if isinstance(s, String_):
                    feeds.append(s.data)

    for e in plan:
        kind, topic = e[0], e[1]
        if kind == "sleep":
            until = time.monotonic() + float(e[1])
            while time.monotonic() < until:
                drain()
                time.sleep(0.01)
            continue
        out(event="sent", topic=topic, t=round(time.monotonic() - t0, 3))
        if kind == "twist":
            writers[topic].write(
                Twist_(
                    linear=Vector3_(x=float(e[2]), y=0.0, z=0.0),
                    angular=Vector3_(x=0.0, y=0.0, z=float(e[3])),
                )
            )
        elif kind == "bool":
            writers[topic].write(Bool_(data=e[2]))
        elif kind == "garbage":
            garbage_writers[topic].write(NotATwist_(text=e[2]))
        elif kind == "raw":
            data = bytes.fromhex(e[3])
            cls = raw_class(e[2], len(data))
            raw_writers[(topic, cls)].write(cls(b=list(data)))
        if a.interval:
            time.sleep(a.interval)
    for i in range(a.feed):
        feed_w.write(String_(data=f"status {i}"))

    deadline = time.monotonic() + 30
    last, last_n = time.monotonic(), 0
    while time.monotonic() < deadline and (len(got) < a.expect or len(feeds) < a.feed):
        drain()
        if len(got) != last_n:
            last, last_n = time.monotonic(), len(got)
        # --idle S: stop waiting once nothing new has arrived for S seconds.
        if a.idle and time.monotonic() - last > a.idle:
            break
        time.sleep(0.02)
    # Anything more (which would be a failure) has a moment to show up.
    settle = time.monotonic() + 1.0
    while time.monotonic() < settle:
        drain()
        time.sleep(0.05)
    for g in got:
        out(event="robot", **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in g.items()})
    for d in decs:
        out(event="decision", audit_id=d.audit_id, kind=d.kind, decision=d.decision,
            reason=d.reason, policy_ref=d.policy_ref, source=d.source,
            rules=json.loads(d.rules_json))
    for f in feeds:
        out(event="feed", data=f)
    out(event="done")


if __name__ == "__main__":
    main()
