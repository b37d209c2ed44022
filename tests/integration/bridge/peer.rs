//! The bridge against the independent Python Cyclone DDS peer on both domains: what reaches the
//! robot, in which order, what the WAL holds, what the agent is told, what is counted.

use serde_json::{Value, json};

use super::*;

/// The strict path with the embedded demo policy: allowed Twists reach the robot side in order;
/// over-limit, non-finite, malformed, /disable_safety and other-topic messages never do; each
/// message has one decision in the WAL; what was dropped is published on the agent's
/// /autonomy/decisions; a robot → agent feed is relayed; the counts are recorded and printed at
/// the stop.
#[test]
fn only_allowed_messages_reach_the_robot_in_order_each_with_one_decision() {
    let (agent, robot) = domains();
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let cfg = write_config(
        tmp.path(),
        r#"
[[topic]]
name = "/cmd_vel"
type = "geometry_msgs/msg/Twist"

[[topic]]
name = "/cmd_vel/left"
type = "geometry_msgs/Twist"

[[topic]]
name = "/disable_safety"
type = "std_msgs/msg/Bool"

[[topic]]
name = "/status"
type = "std_msgs/msg/String"
direction = "robot_to_agent"

[[topic]]
name = "/lights"
type = "std_msgs/msg/Bool"
"#,
    );
    let mut d = bridge_daemon(&wal, &cfg, agent, robot, &[], |_| {});
    assert!(
        d.startup.contains(&format!(
            "autonomy: topic bridge /autonomy_bridge: agent domain {agent} → robot domain {robot} (4 topic(s) governed, 1 read-only feed(s) back)"
        )),
        "{:?}",
        d.startup
    );
    let plan = json!([
        ["twist", "/cmd_vel", 0.1, 0.0],
        ["twist", "/cmd_vel", 2.0, 0.0],
        ["twist", "/cmd_vel", 0.2, 1.5],
        ["bool", "/disable_safety", true],
        ["bool", "/lights", true],
        ["garbage", "/cmd_vel", "not a twist"],
        ["twist", "/cmd_vel/left", 0.3, 0.0],
        ["twist", "/cmd_vel", "NaN", 0.0],
        ["twist", "/cmd_vel", 0.5, -2.5],
        ["twist", "/cmd_vel", 0.4, 0.0],
    ]);
    let p = peer(agent, robot, &plan, 4, 3, &[]);

    let got: Vec<(String, f64)> = events(&p, "robot")
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap().to_string(),
                e["x"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect();
    let on = |t: &str| -> Vec<f64> { got.iter().filter(|g| g.0 == t).map(|g| g.1).collect() };
    assert_eq!(on("/cmd_vel"), [0.1, 0.2, 0.4], "{got:?}");
    assert_eq!(on("/cmd_vel/left"), [0.3], "{got:?}");
    assert!(on("/disable_safety").is_empty(), "{got:?}");
    assert!(on("/lights").is_empty(), "{got:?}");
    assert_eq!(got.len(), 4, "{got:?}");
    let feed: Vec<Value> = events(&p, "feed")
        .iter()
        .map(|f| f["data"].clone())
        .collect();
    assert_eq!(
        feed,
        [json!("status 0"), json!("status 1"), json!("status 2")]
    );

    // The agent learns about each dropped message.
    let told: Vec<String> = events(&p, "decision")
        .iter()
        .map(|e| {
            assert_eq!(e["source"], "bridge");
            assert_eq!(e["kind"], "tool.ros2.topic.publish");
            assert_eq!(e["decision"], "deny");
            assert_eq!(e["policy_ref"], "embedded:ros2-bridge-demo");
            e["reason"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(told.len(), 6, "{told:?}");
    for why in [
        "safety topics are never bridged",
        "topic /lights is not bridged by the demo policy",
    ] {
        assert!(told.contains(&why.to_string()), "{why}: {told:?}");
    }
    assert_eq!(
        told.iter()
            .filter(|r| *r == "/cmd_vel: |linear.x| must be <= 1.0 and |angular.z| <= 2.0")
            .count(),
        3,
        "{told:?}"
    );
    assert!(
        told.iter()
            .any(|r| r.starts_with("malformed message: geometry_msgs/msg/Twist truncated")),
        "{told:?}"
    );

    // The same counts in GET /metrics, per topic and decision, and the gate's decisions.
    let r = http(d.addr, "GET", "/metrics", None);
    assert_eq!(r.status, 200);
    let metrics = String::from_utf8(r.body).unwrap();
    for want in [
        r#"autonomy_bridge_messages_received_total{topic="/cmd_vel",direction="agent_to_robot"} 7"#,
        r#"autonomy_bridge_messages_total{topic="/cmd_vel",direction="agent_to_robot",decision="allow"} 3"#,
        r#"autonomy_bridge_messages_total{topic="/cmd_vel",direction="agent_to_robot",decision="deny"} 3"#,
        r#"autonomy_bridge_messages_total{topic="/cmd_vel",direction="agent_to_robot",decision="malformed"} 1"#,
        r#"autonomy_bridge_messages_total{topic="/status",direction="robot_to_agent",decision="allow"} 3"#,
        r#"autonomy_bridge_messages_failed_total{topic="/cmd_vel",direction="agent_to_robot"} 0"#,
        // How long each relayed message took through the bridge: all three, within 5 s.
        r#"autonomy_bridge_relay_seconds_count{topic="/cmd_vel",direction="agent_to_robot"} 3"#,
        r#"autonomy_bridge_relay_seconds_bucket{topic="/cmd_vel",direction="agent_to_robot",le="5"} 3"#,
        r#"autonomy_bridge_relay_seconds_count{topic="/status",direction="robot_to_agent"} 3"#,
        // Each topic is its own agent (`bridge:<topic>`).
        r#"autonomy_decisions_total{kind="tool.ros2.topic.publish",source="bridge",decision="allow",agent="bridge:/cmd_vel"} 3"#,
        r#"autonomy_decisions_total{kind="tool.ros2.topic.publish",source="bridge",decision="deny",agent="bridge:/cmd_vel"} 4"#,
        r#"autonomy_decisions_total{kind="tool.ros2.topic.publish",source="bridge",decision="allow",agent="bridge:/cmd_vel/left"} 1"#,
        r#"autonomy_decisions_total{kind="tool.ros2.topic.publish",source="bridge",decision="deny",agent="bridge:/disable_safety"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == want),
            "no {want} in\n{metrics}"
        );
    }
    // The bridge's families (its histogram included) pass the real promtool's lint.
    let test = "only_allowed_messages_reach_the_robot_in_order_each_with_one_decision";
    if let Some(promtool) = crate::http::metrics::tool("promtool", test) {
        let (ok, out) = crate::http::metrics::promtool_check(&promtool, &metrics);
        assert!(ok, "promtool check metrics: {out}\n{metrics}");
    }

    let lines = stop(&mut d);
    assert!(
        lines.contains(
            &"autonomy: bridge /cmd_vel: 7 received, 3 relayed, 3 denied, 1 malformed, 0 failed"
                .to_string()
        ),
        "{lines:?}"
    );

    // One decision per message; the allowed ones carry the decoded message.
    let recs = bridged_decisions(&wal);
    assert_eq!(recs.len(), 10, "{recs:#?}");
    for r in &recs {
        assert_eq!(r["kind"], "tool.ros2.topic.publish");
        assert_eq!(r["policy_ref"], "embedded:ros2-bridge-demo");
    }
    // Each topic's allows in the order they were sent (the topics interleave freely).
    let allowed = |topic: &str| -> Vec<f64> {
        recs.iter()
            .filter(|r| r["decision"] == "allow" && r["params"]["topic"] == topic)
            .map(|r| {
                assert_eq!(r["layer"], "policy");
                assert_eq!(r["params"]["type"], TWIST);
                r["params"]["message"]["linear"]["x"].as_f64().unwrap()
            })
            .collect()
    };
    assert_eq!(allowed("/cmd_vel"), [0.1, 0.2, 0.4], "{recs:#?}");
    assert_eq!(allowed("/cmd_vel/left"), [0.3], "{recs:#?}");
    assert_eq!(recs.iter().filter(|r| r["decision"] == "allow").count(), 4);
    let safety: Vec<&Value> = recs
        .iter()
        .filter(|r| r["params"]["topic"] == "/disable_safety")
        .collect();
    assert_eq!(safety.len(), 1);
    assert_eq!(safety[0]["decision"], "deny");
    assert_eq!(safety[0]["params"]["message"], json!({"data": true}));
    let nan: Vec<&Value> = recs
        .iter()
        .filter(|r| r["params"]["message"]["linear"]["x"] == "NaN")
        .collect();
    assert_eq!(nan.len(), 1, "{recs:#?}");
    assert_eq!(nan[0]["decision"], "deny");
    let malformed: Vec<&Value> = recs.iter().filter(|r| r["layer"] == "input").collect();
    assert_eq!(malformed.len(), 1, "{recs:#?}");
    assert_eq!(malformed[0]["decision"], "deny");
    assert_eq!(malformed[0]["params"]["topic"], "/cmd_vel");
    assert!(malformed[0]["params"]["message"].is_null());
    assert!(
        malformed[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("malformed message: ")
    );

    let all = wal_records(&wal);
    let started = all
        .iter()
        .find(|r| r["event"] == "bridge.started")
        .expect("bridge.started");
    assert_eq!(started["agent_domain"], agent);
    assert_eq!(started["robot_domain"], robot);
    assert_eq!(
        started["topics"][0],
        json!({"audit": "strict", "direction": "agent_to_robot", "name": "/cmd_vel", "type": TWIST})
    );
    assert_eq!(
        started["topics"][3],
        json!({"direction": "robot_to_agent", "name": "/status", "type": "std_msgs/msg/String"})
    );
    let stopped = all
        .iter()
        .find(|r| r["event"] == "bridge.stopped")
        .expect("bridge.stopped");
    assert_eq!(
        stopped["topics"][0],
        json!({"name": "/cmd_vel", "received": 7, "relayed": 3, "denied": 3, "malformed": 1, "failed": 0})
    );
    assert_eq!(stopped["topics"][3]["relayed"], 3);
    let (code, v) = wal_verify(&wal);
    assert_eq!(code, 0, "{v}");
}

/// Batched mode with the example policy (examples/bridge/policy.rego: at most 20 /cmd_vel
/// messages per second through `input.rate`): of a burst of 30, the first 20 reach the robot, in
/// order, republished before their records are durable; every message still has its decision
/// in the WAL, and the window is stated in the `bridge.started` record.
#[test]
fn batched_topic_with_the_example_rate_limit() {
    let (agent, robot) = domains();
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let cfg = write_config(
        tmp.path(),
        "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\naudit = \"batched\"\nbatch_window_ms = 15\n",
    );
    let policy = repo().join("examples/bridge/policy.rego");
    let mut d = bridge_daemon(&wal, &cfg, agent, robot, &["--policy", p(&policy)], |_| {});
    let plan: Vec<Value> = (1..=30)
        .map(|i| json!(["twist", "/cmd_vel", f64::from(i) / 100.0, 0.0]))
        .collect();
    let p = peer(agent, robot, &Value::Array(plan), 20, 0, &[]);
    let got: Vec<f64> = events(&p, "robot")
        .iter()
        .map(|e| e["x"].as_f64().unwrap())
        .collect();
    let want: Vec<f64> = (1..=20).map(|i| f64::from(i) / 100.0).collect();
    assert_eq!(got, want);
    let told = events(&p, "decision");
    assert_eq!(told.len(), 10, "{told:?}");
    assert!(
        told[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("/cmd_vel: 21 messages in the last second, at most 20"),
        "{told:?}"
    );
    stop(&mut d);
    let recs = bridged_decisions(&wal);
    let decisions: Vec<&str> = recs
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    let mut want = vec!["allow"; 20];
    want.extend(vec!["deny"; 10]);
    assert_eq!(decisions, want);
    let started = wal_records(&wal)
        .into_iter()
        .find(|r| r["event"] == "bridge.started")
        .unwrap();
    assert_eq!(started["topics"][0]["audit"], "batched");
    assert_eq!(started["topics"][0]["batch_window_ms"], 15);
}

/// The WAL fails mid-stream (a per-file size limit makes its writes fail, as a full disk
/// would): from then on nothing more reaches the robot, every message that did reach it has its
/// decision in the log, and the failure is one error line.
#[test]
fn a_wal_failure_drops_messages_fail_closed() {
    let (agent, robot) = domains();
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let cfg = write_config(
        tmp.path(),
        "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\n",
    );
    let mut d = bridge_daemon(
        &wal,
        &cfg,
        agent,
        robot,
        &["--wal-segment-bytes", "1048576"],
        |c| {
            set_rlimit(
                c,
                nix::sys::resource::Resource::RLIMIT_FSIZE,
                32 * 1024,
                32 * 1024,
            )
        },
    );
    let plan: Vec<Value> = (1..=200)
        .map(|i| json!(["twist", "/cmd_vel", f64::from(i) / 1000.0, 0.0]))
        .collect();
    let p = peer(
        agent,
        robot,
        &Value::Array(plan),
        200,
        0,
        &["--interval", "0.005", "--idle", "3"],
    );
    let got: Vec<f64> = events(&p, "robot")
        .iter()
        .map(|e| e["x"].as_f64().unwrap())
        .collect();
    assert!(!got.is_empty() && got.len() < 200, "{} arrived", got.len());
    let want: Vec<f64> = (1..=got.len()).map(|i| i as f64 / 1000.0).collect();
    assert_eq!(got, want, "a prefix, in order");

    let st = d.stop();
    let lines = rest(&mut d);
    assert_eq!(
        st.code(),
        Some(1),
        "the WAL cannot be closed cleanly: {lines:#?}"
    );
    let dropped: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.starts_with(
                "autonomy: error: bridge: /cmd_vel: message dropped: the audit log cannot record its decision",
            )
        })
        .collect();
    assert_eq!(dropped.len(), 1, "{lines:#?}");
    let summary = lines
        .iter()
        .find(|l| l.starts_with("autonomy: bridge /cmd_vel: 200 received"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(
        summary.ends_with(&format!(
            "{} relayed, 0 denied, 0 malformed, {} failed",
            got.len(),
            200 - got.len()
        )),
        "{summary}"
    );
    // Every message the robot got has its allow on disk. The write that failed may have left
    // whole records of its batch on disk that were never acknowledged (so never relayed): the
    // log holds the relayed ones first, in order, and perhaps a few more of the same sequence.
    let recorded: Vec<f64> = bridged_decisions(&wal)
        .iter()
        .filter(|r| r["decision"] == "allow")
        .map(|r| r["params"]["message"]["linear"]["x"].as_f64().unwrap())
        .collect();
    let sequence: Vec<f64> = (1..=recorded.len()).map(|i| i as f64 / 1000.0).collect();
    assert_eq!(
        recorded, sequence,
        "the log's allows are a prefix, in order"
    );
    assert!(
        recorded.starts_with(&want),
        "{recorded:?} does not start with {want:?}"
    );
}

/// Payloads that are not what the topic's type says (truncated, a bool byte of 7, a string
/// longer than the message, a string that is not UTF-8, more bytes than `max_bytes`): each is
/// denied before any policy sees it, recorded as malformed (layer `input`), told to the agent,
/// counted; nothing of it reaches the robot, and the topic goes on relaying what is valid.
#[test]
fn malformed_payloads_are_denied_recorded_and_counted() {
    let (agent, robot) = domains();
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let cfg = write_config(
        tmp.path(),
        r#"
[[topic]]
name = "/cmd_vel"
type = "geometry_msgs/msg/Twist"

[[topic]]
name = "/flag"
type = "std_msgs/msg/Bool"

[[topic]]
name = "/say"
type = "std_msgs/msg/String"

[[topic]]
name = "/cmd_vel/big"
type = "geometry_msgs/msg/Twist"
max_bytes = 64
"#,
    );
    let mut d = bridge_daemon(&wal, &cfg, agent, robot, &[], |_| {});
    let twist_t = "geometry_msgs::msg::dds_::Twist_";
    let plan = json!([
        ["twist", "/cmd_vel", 0.1, 0.0],
        ["raw", "/cmd_vel", twist_t, "00".repeat(12)],
        ["raw", "/flag", "std_msgs::msg::dds_::Bool_", "07"],
        [
            "raw",
            "/say",
            "std_msgs::msg::dds_::String_",
            "ffffff7f00000000"
        ],
        [
            "raw",
            "/say",
            "std_msgs::msg::dds_::String_",
            "03000000fffe00"
        ],
        ["raw", "/cmd_vel/big", twist_t, "00".repeat(100)],
        ["twist", "/cmd_vel", 0.2, 0.0],
    ]);
    let p = peer(agent, robot, &plan, 2, 0, &[]);
    assert_eq!(robot_xs(&p), [0.1, 0.2]);
    assert_eq!(events(&p, "robot").len(), 2, "{:#?}", p.out);

    // `bytes`: the payload as it arrived; Cyclone pads it to a multiple of 4.
    let want = [
        ("/cmd_vel", "geometry_msgs/msg/Twist truncated: ", 12),
        ("/flag", "std_msgs/msg/Bool bool byte 7 is not 0 or 1", 4),
        ("/say", "std_msgs/msg/String truncated: ", 8),
        ("/say", "std_msgs/msg/String string is not UTF-8", 8),
        (
            "/cmd_vel/big",
            "100 bytes exceed the topic's max_bytes 64",
            100,
        ),
    ];
    let told: Vec<String> = events(&p, "decision")
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(told.len(), want.len(), "{told:#?}");
    for (_, why, _) in &want {
        assert!(
            told.iter()
                .any(|r| r.starts_with(&format!("malformed message: {why}"))),
            "{why}: {told:#?}"
        );
    }

    let lines = stop(&mut d);
    for (topic, received, relayed, malformed) in [
        ("/cmd_vel", 3, 2, 1),
        ("/flag", 1, 0, 1),
        ("/say", 2, 0, 2),
        ("/cmd_vel/big", 1, 0, 1),
    ] {
        let line = format!(
            "autonomy: bridge {topic}: {received} received, {relayed} relayed, 0 denied, {malformed} malformed, 0 failed"
        );
        assert!(lines.contains(&line), "{line}: {lines:#?}");
    }
    let recs = bridged_decisions(&wal);
    assert_eq!(recs.len(), 7, "{recs:#?}");
    let refused: Vec<&Value> = recs.iter().filter(|r| r["layer"] == "input").collect();
    assert_eq!(refused.len(), want.len(), "{recs:#?}");
    // Each topic's records in the order its messages were sent (topics interleave freely).
    for (topic, why, bytes) in want {
        let r = refused
            .iter()
            .find(|r| {
                r["params"]["topic"] == topic
                    && r["reason"]
                        .as_str()
                        .is_some_and(|x| x.starts_with(&format!("malformed message: {why}")))
            })
            .unwrap_or_else(|| panic!("{topic} {why}: {refused:#?}"));
        assert_eq!(r["decision"], "deny");
        assert_eq!(r["kind"], "tool.ros2.topic.publish");
        assert_eq!(r["params"]["bytes"], bytes, "{r}");
        assert!(r["params"]["message"].is_null());
    }
    let say: Vec<&str> = refused
        .iter()
        .filter(|r| r["params"]["topic"] == "/say")
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert!(
        say[0].contains(" truncated: ") && say[1].contains("not UTF-8"),
        "{say:?}"
    );
    let (code, v) = wal_verify(&wal);
    assert_eq!(code, 0, "{v}");
}

/// The CDR of `my_msgs/msg/Cmd` (below) with these values, as every RMW writes it.
fn cmd_cdr(speed: f64, label: &str, ids: &[i32]) -> String {
    let mut b = speed.to_le_bytes().to_vec();
    b.extend((label.len() as u32 + 1).to_le_bytes());
    b.extend(label.as_bytes());
    b.push(0);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
    b.extend((ids.len() as u32).to_le_bytes());
    for i in ids {
        b.extend(i.to_le_bytes());
    }
    hex::encode(b)
}

/// Types the binary does not ship: one package from `--msg-path DIR`, one from a ROS prefix on
/// `AMENT_PREFIX_PATH` (`share/<pkg>/msg/`). Their messages are decoded for the policy (nested
/// field types, strings, sequences), and what is allowed reaches the robot byte for byte.
#[test]
fn custom_message_types_from_msg_path_and_ament_prefix_path() {
    let (agent, robot) = domains();
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let msgs = tmp.path().join("msgs");
    std::fs::create_dir_all(msgs.join("my_msgs/msg")).unwrap();
    std::fs::write(
        msgs.join("my_msgs/msg/Cmd.msg"),
        "# A custom command.\nfloat64 speed\nstring label  # a name\nint32[] ids\n",
    )
    .unwrap();
    let prefix = tmp.path().join("ws/install/plant_msgs");
    std::fs::create_dir_all(prefix.join("share/plant_msgs/msg")).unwrap();
    std::fs::write(
        prefix.join("share/plant_msgs/msg/Valve.msg"),
        "uint8 OPEN=1\nuint8 state\nstd_msgs/Header header\n",
    )
    .unwrap();
    let cfg = write_config(
        tmp.path(),
        "[[topic]]\nname = \"/cmd\"\ntype = \"my_msgs/msg/Cmd\"\n\n[[topic]]\nname = \"/valve\"\ntype = \"plant_msgs/Valve\"\n",
    );
    let policy = tmp.path().join("policy.rego");
    std::fs::write(
        &policy,
        r#"package autonomy

default allow := false

allow if {
	input.params.topic == "/cmd"
	input.params.message.speed <= 1.0
	input.params.message.label == "go"
}

allow if {
	input.params.topic == "/valve"
	input.params.message.state == 1
	input.params.message.header.frame_id == "v1"
}
"#,
    )
    .unwrap();
    let msg_path = p(&msgs).to_string();
    let ament = format!("/nonexistent:{}", prefix.display());
    let mut d = bridge_daemon(
        &wal,
        &cfg,
        agent,
        robot,
        &["--msg-path", &msg_path, "--policy", p(&policy)],
        |c| {
            c.env("AMENT_PREFIX_PATH", &ament);
        },
    );
    // Valve: state (1 byte), then the Header aligned to 4: stamp (sec, nanosec), frame_id.
    let valve = |state: u8, frame: &str| {
        let mut b = vec![state, 0, 0, 0];
        b.extend(7i32.to_le_bytes());
        b.extend(9u32.to_le_bytes());
        b.extend((frame.len() as u32 + 1).to_le_bytes());
        b.extend(frame.as_bytes());
        b.push(0);
        hex::encode(b)
    };
    let cmd_t = "my_msgs::msg::dds_::Cmd_";
    let valve_t = "plant_msgs::msg::dds_::Valve_";
    let ok_cmd = cmd_cdr(0.5, "go", &[1, -2]);
    let ok_valve = valve(1, "v1");
    let plan = json!([
        ["raw", "/cmd", cmd_t, ok_cmd],
        ["raw", "/cmd", cmd_t, cmd_cdr(2.0, "go", &[1, -2])],
        ["raw", "/valve", valve_t, valve(0, "v1")],
        ["raw", "/valve", valve_t, ok_valve],
    ]);
    let p = peer(agent, robot, &plan, 2, 0, &[]);
    let mut got: Vec<(String, String)> = events(&p, "robot")
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap().to_string(),
                e["hex"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("/cmd".to_string(), ok_cmd),
            ("/valve".to_string(), ok_valve)
        ]
    );
    stop(&mut d);
    let recs = bridged_decisions(&wal);
    let on = |topic: &str| -> Vec<(String, Value)> {
        recs.iter()
            .filter(|r| r["params"]["topic"] == topic)
            .map(|r| {
                (
                    r["decision"].as_str().unwrap().to_string(),
                    r["params"]["message"].clone(),
                )
            })
            .collect()
    };
    let decided = |d: &str, m: Value| (d.to_string(), m);
    assert_eq!(
        on("/cmd"),
        [
            decided(
                "allow",
                json!({"speed": 0.5, "label": "go", "ids": [1, -2]})
            ),
            decided("deny", json!({"speed": 2.0, "label": "go", "ids": [1, -2]})),
        ]
    );
    let header = json!({"stamp": {"sec": 7, "nanosec": 9}, "frame_id": "v1"});
    assert_eq!(
        on("/valve"),
        [
            decided("deny", json!({"state": 0, "header": header})),
            decided("allow", json!({"state": 1, "header": header})),
        ]
    );
    for r in &recs {
        let want = if r["params"]["topic"] == "/cmd" {
            "my_msgs/msg/Cmd"
        } else {
            "plant_msgs/msg/Valve"
        };
        assert_eq!(r["params"]["type"], want);
    }
}

/// Downgrades with the example policy (examples/bridge/policy.rego clamps |linear.x| to 1.0 and
/// |angular.z| to 2.0): an over-limit Twist reaches the robot clamped, not dropped, in order
/// with the rest, on a `batched` topic (republished at once); the WAL holds one `downgrade`
/// record per clamped message with the speed asked and the speed published; a speed that
/// cannot be clamped (NaN) and /disable_safety are still denied.
#[test]
fn over_limit_commands_reach_the_robot_clamped_with_both_values_in_the_wal() {
    let (agent, robot) = domains();
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let cfg = write_config(
        tmp.path(),
        "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\naudit = \"batched\"\nbatch_window_ms = 10\n\n[[topic]]\nname = \"/disable_safety\"\ntype = \"std_msgs/msg/Bool\"\n",
    );
    let policy = repo().join("examples/bridge/policy.rego");
    let mut d = bridge_daemon(&wal, &cfg, agent, robot, &["--policy", p(&policy)], |_| {});
    let plan = json!([
        ["twist", "/cmd_vel", 3.0, 0.0],
        ["twist", "/cmd_vel", 0.5, 2.5],
        ["twist", "/cmd_vel", "NaN", 0.0],
        ["bool", "/disable_safety", true],
        ["twist", "/cmd_vel", -7.0, -9.0],
        ["twist", "/cmd_vel", 0.25, 0.5],
    ]);
    let p = peer(agent, robot, &plan, 4, 0, &[]);
    let got: Vec<(f64, f64)> = events(&p, "robot")
        .iter()
        .filter(|e| e["topic"] == "/cmd_vel")
        .map(|e| (e["x"].as_f64().unwrap(), e["z"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        got,
        [(1.0, 0.0), (0.5, 2.0), (-1.0, -2.0), (0.25, 0.5)],
        "{:#?}",
        p.out
    );
    // The agent is told of each message dropped and each one clamped (decision allow, the patch
    // in the reason); the two topics' messages may interleave.
    let mut told: Vec<(String, String)> = events(&p, "decision")
        .iter()
        .map(|e| {
            (
                e["decision"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    told.sort();
    assert_eq!(told.len(), 5, "{told:#?}");
    assert_eq!(
        told[0],
        (
            "allow".to_string(),
            r#"downgraded: patch {"angular":{"z":-2},"linear":{"x":-1}}"#.to_string()
        ),
        "{told:#?}"
    );
    for t in &told[..3] {
        assert!(
            t.0 == "allow" && t.1.starts_with("downgraded: patch {"),
            "{told:#?}"
        );
    }
    assert_eq!(
        told[3..],
        [
            (
                "deny".to_string(),
                "/cmd_vel: |linear.x| must be <= 1.0 and |angular.z| <= 2.0".to_string()
            ),
            (
                "deny".to_string(),
                "safety topics are never bridged".to_string()
            ),
        ]
    );
    stop(&mut d);

    let (recs, safety): (Vec<Value>, Vec<Value>) = bridged_decisions(&wal)
        .into_iter()
        .partition(|r| r["params"]["topic"] == "/cmd_vel");
    assert_eq!(safety.len(), 1);
    assert_eq!(safety[0]["decision"], "deny");
    let summary: Vec<(String, Value, Value)> = recs
        .iter()
        .map(|r| {
            (
                r["decision"].as_str().unwrap().to_string(),
                r["params"]["message"]["linear"]["x"].clone(),
                r["patched"]["message"]["linear"]["x"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("downgrade".into(), json!(3.0), json!(1.0)),
            ("downgrade".into(), json!(0.5), json!(0.5)),
            ("deny".into(), json!("NaN"), Value::Null),
            ("downgrade".into(), json!(-7.0), json!(-1.0)),
            ("allow".into(), json!(0.25), Value::Null),
        ]
    );
    // One record per message, with both values under its audit id; the patch says what changed
    // and the patched message has every field, as published.
    let second = &recs[1];
    assert_eq!(second["params"]["message"]["angular"]["z"], 2.5);
    assert_eq!(second["patched"]["message"]["angular"]["z"], 2.0);
    assert_eq!(
        second["patched"]["message"],
        json!({"linear": {"x": 0.5, "y": 0.0, "z": 0.0}, "angular": {"x": 0.0, "y": 0.0, "z": 2.0}})
    );
    assert_eq!(second["patched"]["topic"], "/cmd_vel");
    assert_eq!(second["patch"]["angular"]["z"], 2.0);
    let id = second["audit_id"].as_str().unwrap();
    assert_eq!(records_for(&wal, id).len(), 1);
    let (code, v) = wal_verify(&wal);
    assert_eq!(code, 0, "{v}");
}
