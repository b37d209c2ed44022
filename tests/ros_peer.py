"""An independent ROS 2 peer for the interop tests: pure Python cyclonedds, hand-written
`dds_` types (no code of ours), speaking the rmw_cyclonedds conventions.

Prints one JSON object per line on stdout. Every wait has a deadline.

  ros_peer.py tool --domain D --gid N --calls JSON --http URL --decisions K
      Calls /autonomy/tool (Cyclone mapping) once per call in JSON ([[kind, params_json], ...]),
      then POSTs tool.echo to URL/v1/tool, collects K /autonomy/decisions messages and looks
      for node /autonomy in ros_discovery_info.
  ros_peer.py markers --domain D --count N
      Subscribes to /autonomy/markers (reliable, transient-local, keep-last 32), prints
      {"event": "ready"} once matched and each marker line as it arrives, until N lines.
"""

import argparse
import json
import sys
import time
import urllib.request
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


# rmw_cyclonedds: the request header {uint64 client_id; int64 seq} flattened ahead of the fields.
@dataclass
class Tool_Request_(IdlStruct, typename="autonomy_msgs::srv::dds_::Tool_Request_"):
    client_id: t.uint64
    seq: t.int64
    kind: str
    params_json: str


@dataclass
class Tool_Response_(IdlStruct, typename="autonomy_msgs::srv::dds_::Tool_Response_"):
    client_id: t.uint64
    seq: t.int64
    decision: str
    output_json: str
    reason: str
    policy_ref: str
    audit_id: str
    rules_json: str


def discovery_types(gid_len):
    @dataclass
    class Gid_(IdlStruct, typename="rmw_dds_common::msg::dds_::Gid_"):
        data: t.array[t.uint8, gid_len]

    @dataclass
    class NodeEntitiesInfo_(IdlStruct, typename="rmw_dds_common::msg::dds_::NodeEntitiesInfo_"):
        node_namespace: t.bounded_str[256]
        node_name: t.bounded_str[256]
        reader_gid_seq: t.sequence[Gid_]
        writer_gid_seq: t.sequence[Gid_]

    @dataclass
    class ParticipantEntitiesInfo_(
        IdlStruct, typename="rmw_dds_common::msg::dds_::ParticipantEntitiesInfo_"
    ):
        gid: Gid_
        node_entities_info_seq: t.sequence[NodeEntitiesInfo_]

    return ParticipantEntitiesInfo_


XCDR1 = Policy.DataRepresentation(use_cdrv0_representation=True)


def qos(depth=10, transient=False):
    ps = [
        Policy.Reliability.Reliable(duration(seconds=1)),
        Policy.History.KeepLast(depth),
        XCDR1,
    ]
    ps.append(Policy.Durability.TransientLocal if transient else Policy.Durability.Volatile)
    return Qos(*ps)


def wait_until(pred, secs, what):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    fail(f"timed out after {secs}s waiting for {what}")


def tool(args):
    dp = DomainParticipant(args.domain)
    req_w = DataWriter(dp, Topic(dp, "rq/autonomy/toolRequest", Tool_Request_), qos=qos())
    rep_r = DataReader(dp, Topic(dp, "rr/autonomy/toolReply", Tool_Response_), qos=qos())
    dec_r = DataReader(dp, Topic(dp, "rt/autonomy/decisions", Decision_), qos=qos(depth=100))
    pei = discovery_types(args.gid)
    disc_r = DataReader(
        dp, Topic(dp, "ros_discovery_info", pei), qos=qos(depth=1, transient=True)
    )

    # Our reply reader and the decisions reader must be matched before we ask, or the
    # (volatile) answers could go out before the server knows us.
    wait_until(lambda: len(req_w.get_matched_subscriptions()) > 0, 20, "the request reader")
    wait_until(lambda: len(rep_r.get_matched_publications()) > 0, 20, "the reply writer")
    wait_until(lambda: len(dec_r.get_matched_publications()) > 0, 20, "the decisions writer")
    time.sleep(0.3)  # let the reverse direction (writer side) finish matching too
    out(event="matched")

    client_id = 0x0123456789ABCDEF
    decisions = []

    def drain_decisions():
        for s in dec_r.take(N=100):
            if isinstance(s, Decision_):
                decisions.append(s)

    for seq, (kind, params_json) in enumerate(json.loads(args.calls), start=1):
        req_w.write(Tool_Request_(client_id=client_id, seq=seq, kind=kind, params_json=params_json))
        deadline = time.monotonic() + 20
        reply = None
        while reply is None and time.monotonic() < deadline:
            for s in rep_r.take(N=10):
                if isinstance(s, Tool_Response_) and s.client_id == client_id and s.seq == seq:
                    reply = s
            drain_decisions()
            if reply is None:
                time.sleep(0.02)
        if reply is None:
            fail(f"no reply for call {seq} ({kind}) within 20s")
        out(
            event="reply",
            seq=reply.seq,
            kind=kind,
            decision=reply.decision,
            output_json=reply.output_json,
            reason=reply.reason,
            policy_ref=reply.policy_ref,
            audit_id=reply.audit_id,
            rules=json.loads(reply.rules_json),
        )

    if args.http:
        body = json.dumps({"kind": "tool.echo", "params": {"message": "via http"}}).encode()
        rq = urllib.request.Request(
            args.http + "/v1/tool", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(rq, timeout=20) as r:
            out(event="http", **json.loads(r.read()))

    deadline = time.monotonic() + 20
    while len(decisions) < args.decisions and time.monotonic() < deadline:
        drain_decisions()
        time.sleep(0.02)
    for d in decisions:
        out(
            event="decision",
            stamp_sec=d.stamp.sec,
            audit_id=d.audit_id,
            kind=d.kind,
            decision=d.decision,
            reason=d.reason,
            policy_ref=d.policy_ref,
            source=d.source,
            rules=json.loads(d.rules_json),
        )

    deadline = time.monotonic() + 20
    found = None
    while found is None and time.monotonic() < deadline:
        for s in disc_r.read(N=100):
            for n in getattr(s, "node_entities_info_seq", []):
                if n.node_name == "autonomy":
                    found = n
        if found is None:
            time.sleep(0.05)
    if found is None:
        fail("node /autonomy not seen in ros_discovery_info within 20s")
    out(
        event="node",
        namespace=found.node_namespace,
        name=found.node_name,
        readers=len(found.reader_gid_seq),
        writers=len(found.writer_gid_seq),
    )
    out(event="done")


def markers(args):
    dp = DomainParticipant(args.domain)
    r = DataReader(dp, Topic(dp, "rt/autonomy/markers", String_), qos=qos(depth=32, transient=True))
    wait_until(lambda: len(r.get_matched_publications()) > 0, 20, "the markers writer")
    out(event="ready")
    got = 0
    deadline = time.monotonic() + 30
    while got < args.count and time.monotonic() < deadline:
        for s in r.take(N=32):
            if isinstance(s, String_):
                out(event="marker", line=s.data)
                got += 1
        time.sleep(0.02)
    if got < args.count:
        fail(f"only {got} of {args.count} markers within 30s")
    out(event="done")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["tool", "markers"])
    p.add_argument("--domain", type=int, required=True)
    p.add_argument("--gid", type=int, default=16)
    p.add_argument("--calls", default="[]")
    p.add_argument("--http", default="")
    p.add_argument("--decisions", type=int, default=0)
    p.add_argument("--count", type=int, default=1)
    a = p.parse_args()
    tool(a) if a.mode == "tool" else markers(a)


if __name__ == "__main__":
    main()
