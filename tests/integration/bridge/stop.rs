//! Deny means stop: a topic's safe message (a zero Twist) published on the robot side when a
//! message is denied (`on_deny = "publish"`) and once per silence of the agent
//! (`max_silence_ms`), each recorded; against the Python Cyclone DDS peer on both domains.

use serde_json::{Value, json};

use super::*;

/// The WAL's `bridge.safe_published` records, in log order.
fn safe_records(wal: &Path) -> Vec<Value> {
    wal_records(wal)
        .into_iter()
        .filter(|r| r["event"] == "bridge.safe_published")
        .collect()
}

/// (topic, linear.x, angular.z, arrival time) of what the robot side received, in order.
fn arrivals(p: &Proc) -> Vec<(String, f64, f64, f64)> {
    events(p, "robot")
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap().to_string(),
                e["x"].as_f64().unwrap(),
                e["z"].as_f64().unwrap(),
                e["t"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// With `on_deny = "publish"`, a too-fast /cmd_vel (denied by the embedded demo policy) is
/// answered with the zero Twist on the robot side, in its place in the topic's order, recorded
/// under the denied message's audit id after its decision; a topic with the default `drop`
/// sends nothing in its place.
#[test]
fn a_deny_publishes_the_zero_twist_recorded_under_its_audit_id() {
    let (agent, robot) = domains();
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let cfg = write_config(
        tmp.path(),
        r#"
[[topic]]
name = "/cmd_vel"
type = "geometry_msgs/msg/Twist"
on_deny = "publish"
safe_message = { linear = { x = 0.0 }, angular = { z = 0.0 } }

[[topic]]
name = "/cmd_vel/left"
type = "geometry_msgs/msg/Twist"
"#,
    );
    let mut d = bridge_daemon(&wal, &cfg, agent, robot, &[], |_| {});
    let plan = json!([
        ["twist", "/cmd_vel", 0.1, 0.5],
        ["twist", "/cmd_vel", 2.0, 0.5],
        ["twist", "/cmd_vel", 0.2, 0.5],
        ["twist", "/cmd_vel/left", 0.3, 0.0],
        ["twist", "/cmd_vel/left", 3.0, 0.0],
        ["twist", "/cmd_vel/left", 0.4, 0.0],
    ]);
    let p = peer(agent, robot, &plan, 5, 0, &[]);
    let got = arrivals(&p);
    let on = |t: &str| -> Vec<(f64, f64)> {
        got.iter()
            .filter(|g| g.0 == t)
            .map(|g| (g.1, g.2))
            .collect()
    };
    assert_eq!(
        on("/cmd_vel"),
        [(0.1, 0.5), (0.0, 0.0), (0.2, 0.5)],
        "{got:?}"
    );
    assert_eq!(on("/cmd_vel/left"), [(0.3, 0.0), (0.4, 0.0)], "{got:?}");

    let r = http(d.addr, "GET", "/metrics", None);
    let metrics = String::from_utf8(r.body).unwrap();
    let want = r#"autonomy_bridge_safe_published_total{topic="/cmd_vel"} 1"#;
    assert!(metrics.lines().any(|l| l == want), "{want}:\n{metrics}");
    assert!(
        !metrics.contains(r#"autonomy_bridge_safe_published_total{topic="/cmd_vel/left"}"#),
        "{metrics}"
    );

    let lines = stop(&mut d);
    for want in [
        "autonomy: bridge /cmd_vel: 3 received, 2 relayed, 1 denied, 0 malformed, 0 failed, 1 safe published",
        "autonomy: bridge /cmd_vel/left: 3 received, 2 relayed, 1 denied, 0 malformed, 0 failed",
    ] {
        assert!(lines.contains(&want.to_string()), "{want}: {lines:#?}");
    }

    let all = wal_records(&wal);
    let deny = all
        .iter()
        .find(|r| {
            r["type"] == "decision" && r["decision"] == "deny" && r["params"]["topic"] == "/cmd_vel"
        })
        .expect("the deny");
    let safe = safe_records(&wal);
    assert_eq!(safe.len(), 1, "{safe:#?}");
    assert_eq!(safe[0]["type"], "runtime");
    assert_eq!(safe[0]["reason"], "deny");
    assert_eq!(safe[0]["topic"], "/cmd_vel");
    assert_eq!(safe[0]["audit_id"], deny["audit_id"]);
    assert!(safe[0].get("max_silence_ms").is_none(), "{}", safe[0]);
    assert!(
        safe[0]["seq"].as_u64().unwrap() > deny["seq"].as_u64().unwrap(),
        "recorded after the decision"
    );
    let started = all.iter().find(|r| r["event"] == "bridge.started").unwrap();
    assert_eq!(started["topics"][0]["on_deny"], "publish");
    assert_eq!(
        started["topics"][0]["safe_message"],
        json!({"linear": {"x": 0.0, "y": 0.0, "z": 0.0}, "angular": {"x": 0.0, "y": 0.0, "z": 0.0}})
    );
    assert!(started["topics"][1].get("on_deny").is_none());
    let stopped = all.iter().find(|r| r["event"] == "bridge.stopped").unwrap();
    assert_eq!(stopped["topics"][0]["safe_published"], 1);
    assert!(stopped["topics"][1].get("safe_published").is_none());
    let (code, v) = wal_verify(&wal);
    assert_eq!(code, 0, "{v}");
}

/// `max_silence_ms = 300`: nothing is published before the first allowed message (a robot idle
/// at start is left alone); after the last allowed message the zero Twist arrives once, about
/// 300 ms later, even while denied messages keep coming (silence means no *allowed* command);
/// when allowed messages resume, it is re-armed and fires once more. Each time is recorded.
#[test]
fn a_silent_agent_triggers_the_watchdog_once_per_silence() {
    let (agent, robot) = domains();
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let cfg = write_config(
        tmp.path(),
        "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\nsafe_message = {}\nmax_silence_ms = 300\n",
    );
    let mut d = bridge_daemon(&wal, &cfg, agent, robot, &[], |_| {});
    let mut plan = vec![
        json!(["sleep", 0.8]),
        json!(["twist", "/cmd_vel", 0.1, 0.1]),
        json!(["sleep", 0.05]),
        json!(["twist", "/cmd_vel", 0.2, 0.1]),
        json!(["sleep", 0.05]),
        json!(["twist", "/cmd_vel", 0.3, 0.1]),
    ];
    // Denied (too fast) every 100 ms for a second: they do not hold the watchdog off.
    for _ in 0..10 {
        plan.push(json!(["sleep", 0.1]));
        plan.push(json!(["twist", "/cmd_vel", 5.0, 0.0]));
    }
    plan.extend([
        json!(["sleep", 1.0]),
        json!(["twist", "/cmd_vel", 0.4, 0.1]),
        json!(["sleep", 0.05]),
        json!(["twist", "/cmd_vel", 0.5, 0.1]),
    ]);
    let p = peer(agent, robot, &Value::Array(plan), 7, 0, &[]);
    let sent: Vec<f64> = events(&p, "sent")
        .iter()
        .map(|e| e["t"].as_f64().unwrap())
        .collect();
    assert_eq!(sent.len(), 15);
    let got = arrivals(&p);
    let xs: Vec<f64> = got.iter().map(|g| g.1).collect();
    assert_eq!(xs, [0.1, 0.2, 0.3, 0.0, 0.4, 0.5, 0.0], "{got:?}");
    assert!(
        got[0].3 >= sent[0],
        "nothing before the first message: {got:?}"
    );
    // The first stop: about 300 ms after the last allowed message, while the denied ones were
    // still coming (the last one was sent about a second after it).
    let after = got[3].3 - sent[2];
    assert!((0.25..0.9).contains(&after), "{after} s: {got:?} {sent:?}");
    assert!(got[3].3 < sent[12], "{got:?} {sent:?}");
    let after = got[6].3 - sent[14];
    assert!((0.25..1.2).contains(&after), "{after} s: {got:?} {sent:?}");

    let lines = stop(&mut d);
    let want = "autonomy: bridge /cmd_vel: 15 received, 5 relayed, 10 denied, 0 malformed, 0 failed, 2 safe published";
    assert!(lines.contains(&want.to_string()), "{want}: {lines:#?}");
    let safe = safe_records(&wal);
    assert_eq!(safe.len(), 2, "{safe:#?}");
    for s in &safe {
        assert_eq!(s["reason"], "silence");
        assert_eq!(s["topic"], "/cmd_vel");
        assert_eq!(s["max_silence_ms"], 300);
    }
    // Each recorded after the last allowed message before it.
    let allows: Vec<u64> = bridged_decisions(&wal)
        .iter()
        .filter(|r| r["decision"] == "allow")
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(allows.len(), 5);
    let seq = |r: &Value| r["seq"].as_u64().unwrap();
    assert!(seq(&safe[0]) > allows[2] && seq(&safe[0]) < allows[3]);
    assert!(seq(&safe[1]) > allows[4]);
}
