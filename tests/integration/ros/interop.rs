//! ROS 2 interop against an independent peer: `tests/ros_peer.py`, pure Python cyclonedds with
//! hand-written `dds_` types, speaking the rmw_cyclonedds conventions. Each test uses its own
//! `ROS_DOMAIN_ID` (from `common::ros_domain`), loopback only, and hard timeouts.
//!
//! Needs `.venv` with PyPI `cyclonedds` (made by `.ci/run`); without it the tests fail.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

fn gid_len() -> &'static str {
    if cfg!(feature = "humble") { "24" } else { "16" }
}

/// The peer, its stdout lines (JSON, one event each) arriving on a channel.
struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<Value>,
}

impl Peer {
    fn start(args: &[&str]) -> Peer {
        let mut child = Command::new(venv_python())
            .arg(repo().join("tests/ros_peer.py"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ros_peer.py");
        let lines = read_lines(child.stdout.take().expect("stdout"));
        Peer {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line with this event (failing on an `error` line or the deadline).
    fn wait_for(&mut self, event: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|_| serde_json::json!({"event": "raw", "line": line}));
                    self.seen.push(v.clone());
                    if v["event"] == "error" {
                        panic!("peer failed: {v}\nseen: {:?}", self.seen);
                    }
                    if v["event"] == event {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "peer: no {event:?} line within {limit:?}; seen: {:?}",
                    self.seen
                ),
            }
        }
    }

    fn events(&self, event: &str) -> Vec<Value> {
        self.seen
            .iter()
            .filter(|v| v["event"] == event)
            .cloned()
            .collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The records of `dir` about `audit_id`, as compact JSON text.
fn wal_texts_for(dir: &Path, audit_id: &str) -> Vec<String> {
    records_for(dir, audit_id)
        .iter()
        .map(|r| r.to_string().replace(' ', ""))
        .collect()
}

/// `runtime start --demo --ros` on domain `d_id` with the Cyclone service mapping.
fn cyclone_daemon(wal: &Path, d_id: u16) -> Daemon {
    Daemon::start_in(wal, &["--demo", "--ros"], |c| {
        c.env("ROS_DOMAIN_ID", d_id.to_string())
            .env("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
            .env_remove("ROS_DISTRO");
    })
}

#[test]
fn tool_service_decisions_and_discovery_with_a_cyclone_peer() {
    let py = venv_python();
    let d_id = ros_domain();
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let mut d = cyclone_daemon(&wal, d_id);
    let _ = py;
    let want = format!(
        "autonomy: ROS 2 node /autonomy on domain {d_id} ({}, rmw_cyclonedds_cpp service mapping)",
        if cfg!(feature = "humble") {
            "humble"
        } else {
            "jazzy"
        }
    );
    assert!(d.startup.contains(&want), "start lines: {:?}", d.startup);

    let calls = serde_json::json!([
        ["tool.echo", "{\"message\": \"hi\"}"],
        ["tool.shell", "{\"command\": \"id\"}"],
        ["tool.teleport", ""],
        ["tool.echo", "not json"],
        ["tool.echo", "[1, 2]"],
        ["bad kind!", "{}"],
        ["tool.echo", ""],
    ])
    .to_string();
    let dom = d_id.to_string();
    let url = d.url();
    // 5 gate decisions from ROS (echo, shell, teleport, echo with empty params) + 1 over HTTP;
    // the 3 malformed requests never reach the gate.
    let mut p = Peer::start(&[
        "tool",
        "--domain",
        &dom,
        "--gid",
        gid_len(),
        "--calls",
        &calls,
        "--http",
        &url,
        "--decisions",
        "5",
    ]);
    p.wait_for("done", Duration::from_secs(120));

    let replies = p.events("reply");
    assert_eq!(replies.len(), 7, "{replies:?}");
    let echo = &replies[0];
    assert_eq!(echo["decision"], "allow", "{echo}");
    assert_eq!(echo["output_json"], "\"hi\"", "{echo}");
    assert_eq!(echo["reason"], "");
    assert_eq!(echo["policy_ref"], "embedded:demo");
    assert_eq!(
        echo["seq"], 1,
        "the Cyclone request header is echoed unchanged"
    );
    // The demo policy's rule that allowed it, by METADATA id, file and line.
    assert_eq!(
        echo["rules"],
        serde_json::json!([{"package": "autonomy", "rule": "allow", "file": "demo.rego", "line": 12, "id": "DEMO-ECHO"}]),
        "{echo}"
    );
    let shell = &replies[1];
    assert_eq!(shell["decision"], "deny");
    assert!(
        shell["reason"]
            .as_str()
            .unwrap()
            .contains("always blocked by policy"),
        "{shell}"
    );
    assert_eq!(shell["output_json"], "");
    assert_eq!(shell["rules"][0]["id"], "DEMO-SHELL", "{shell}");
    assert_eq!(shell["rules"][0]["rule"], "reason", "{shell}");
    let unknown = &replies[2];
    assert_eq!(unknown["decision"], "deny");
    assert!(
        unknown["reason"]
            .as_str()
            .unwrap()
            .contains("tool.teleport"),
        "{unknown}"
    );
    for (r, what) in [
        (&replies[3], "not valid JSON"),
        (&replies[4], "must be a JSON object"),
        (&replies[5], "may only contain"),
    ] {
        assert_eq!(r["decision"], "deny", "{r}");
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.contains("malformed request") && reason.contains(what),
            "{r}"
        );
        assert_eq!(
            r["audit_id"], "",
            "malformed requests are not recorded: {r}"
        );
        assert_eq!(r["rules"], serde_json::json!([]), "no rule decided: {r}");
        assert_eq!(r["policy_ref"], "embedded:demo");
    }
    let empty = &replies[6];
    assert_eq!(
        empty["decision"], "allow",
        "empty params_json = {{}}: {empty}"
    );

    let http = &p.events("http")[0];
    assert_eq!(http["decision"], "allow");

    // One decision message per gate decision, audit ids equal to the answers'.
    let decisions = p.events("decision");
    let gate_replies = [&replies[0], &replies[1], &replies[2], &replies[6]];
    assert_eq!(decisions.len(), 5, "{decisions:?}");
    for r in gate_replies {
        let id = r["audit_id"].as_str().unwrap();
        assert!(!id.is_empty());
        let m = decisions
            .iter()
            .find(|m| m["audit_id"] == id)
            .unwrap_or_else(|| panic!("no decision message for {r}: {decisions:?}"));
        assert_eq!(m["source"], "ros2");
        assert_eq!(m["decision"], r["decision"]);
        assert_eq!(m["kind"], r["kind"]);
        assert_eq!(m["reason"], r["reason"]);
        assert_eq!(m["rules"], r["rules"], "{m}");
        assert_eq!(m["policy_ref"], "embedded:demo");
        assert!(m["stamp_sec"].as_i64().unwrap() > 1_600_000_000, "{m}");
    }
    let hm = decisions
        .iter()
        .find(|m| m["audit_id"] == http["audit_id"])
        .expect("decision message for the HTTP call");
    assert_eq!(hm["source"], "http");
    assert_eq!(hm["kind"], "tool.echo");

    // The node is visible in the ROS graph.
    let node = &p.events("node")[0];
    assert_eq!(node["name"], "autonomy");
    assert_eq!(node["namespace"], "/");
    assert!(node["writers"].as_u64().unwrap() >= 3, "{node}");

    // Recorded in the WAL like HTTP calls, with source ros2.
    for r in gate_replies {
        let id = r["audit_id"].as_str().unwrap();
        let recs = wal_texts_for(&wal, id);
        assert!(
            recs.iter()
                .any(|t| t.contains("\"source\":\"ros2\"") && t.contains("\"layer\":\"policy\"")),
            "no policy decision record with source ros2 for {id}: {recs:?}"
        );
    }

    let st = d.stop();
    assert!(st.success(), "{st}");
}

/// A stop and continue (Ctrl-Z then `fg`, a debugger or strace attaching, a cgroup freeze)
/// makes the DDS threads' `epoll_wait` fail with EINTR: the node must carry on, not lose its
/// participant (it did: two ERROR lines, then no discovery and no service).
#[test]
fn the_node_survives_a_stop_and_continue() {
    let d_id = ros_domain();
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let mut d = cyclone_daemon(&wal, d_id);
    let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    for _ in 0..3 {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let calls = serde_json::json!([["tool.echo", "{\"message\": \"still here\"}"]]).to_string();
    let dom = d_id.to_string();
    let mut p = Peer::start(&[
        "tool",
        "--domain",
        &dom,
        "--gid",
        gid_len(),
        "--calls",
        &calls,
    ]);
    p.wait_for("done", Duration::from_secs(60));
    let replies = p.events("reply");
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0]["decision"], "allow", "{:?}", replies[0]);
    assert_eq!(replies[0]["output_json"], "\"still here\"");
    let st = d.stop();
    assert!(st.success(), "{st}");
    let err: Vec<String> = d.stderr.try_iter().collect();
    assert!(
        !err.iter()
            .any(|l| l.contains("ERROR") || l.contains("Interrupted")),
        "stderr: {err:?}"
    );
}

/// An in-process deny-all runtime (WAL under `dir`) with node `/autonomy` on `domain`.
async fn deny_all_node(
    dir: &Path,
    domain: u16,
    mapping: autonomy::ros::ServiceMapping,
) -> (autonomy::runtime::Runtime, autonomy::ros::RosHandle) {
    use autonomy::runtime::{Runtime, RuntimeConfig};
    let cfg = RuntimeConfig::new(Box::new(autonomy::policy::DenyAll::new()), dir.join("wal"));
    let runtime = Runtime::open(cfg).await.expect("runtime");
    runtime.start(None).await.expect("runtime start");
    let ros = autonomy::ros::start(
        &runtime,
        autonomy::ros::RosConfig {
            domain_id: domain,
            mapping,
            backend: autonomy::ros::RosBackend::Dds,
        },
    )
    .expect("ROS node");
    (runtime, ros)
}

#[test]
fn markers_reach_late_subscribers() {
    use autonomy::ros::ServiceMapping;

    let _ = venv_python();
    let d_id = ros_domain();
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lines = [
        "PASS ros2-telemetry-active context=native",
        "PASS ros2-launch-allowed context=native",
        "DENY ros2-launch-denied context=native reason=kind \"x\" is not allowed: ü ✓",
    ];
    let live = "PASS ros2-wal-recording context=native";
    rt.block_on(async {
        let (runtime, ros) = deny_all_node(tmp.path(), d_id, ServiceMapping::Cyclone).await;
        for l in lines {
            ros.publish_marker(l).expect("publish");
        }
        // The subscriber joins after the lines were published: transient-local replays them.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let dom = d_id.to_string();
        let mut p = tokio::task::spawn_blocking(move || {
            let mut p = Peer::start(&["markers", "--domain", &dom, "--count", "4"]);
            p.wait_for("ready", Duration::from_secs(60));
            p
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        ros.publish_marker(live).expect("publish");
        let p = tokio::task::spawn_blocking(move || {
            p.wait_for("done", Duration::from_secs(60));
            p
        })
        .await
        .unwrap();
        let got: Vec<String> = p
            .events("marker")
            .iter()
            .map(|m| m["line"].as_str().unwrap().to_string())
            .collect();
        let mut want: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        want.push(live.to_string());
        assert_eq!(got, want, "byte for byte, in order");
        assert_eq!(ros.dropped_decisions(), 0);
        ros.shutdown().await;
        runtime.stop().await.expect("stop");
    });
}

#[test]
fn invalid_domain_id_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = cli(
        &[
            "runtime",
            "start",
            "--demo",
            "--ros",
            "--listen",
            "127.0.0.1:0",
            "--wal-dir",
            p(&tmp.path().join("wal")),
        ],
        &[("ROS_DOMAIN_ID", "300")],
    );
    assert_eq!(o.code, 2);
    let err = o.stderr;
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("autonomy: error: ROS_DOMAIN_ID=\"300\"")
            && lines[0].contains("0 to 232"),
        "{err}"
    );
}

#[test]
fn launch_file_is_valid_python() {
    let tmp = tempfile::tempdir().unwrap();
    let f = repo().join("launch/autonomy.launch.py");
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "py_compile"])
        .arg(&f)
        .env("PYTHONPYCACHEPREFIX", tmp.path());
    let o = run(cmd, Duration::from_secs(60));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let text = std::fs::read_to_string(&f).unwrap();
    for needle in [
        "ExecuteProcess",
        "DeclareLaunchArgument",
        "'listen'",
        "'policy'",
        "'wal_dir'",
        "'runtime', 'start', '--ros'",
    ] {
        assert!(text.contains(needle), "launch file lacks {needle}");
    }
}

/// The interface package defines the fields the Rust types serialise, in the same order.
#[test]
fn ros_msgs_match_the_rust_types() {
    let pkg = repo().join("ros_msgs/autonomy_msgs");
    let fields = |rel: &str| -> Vec<Vec<(String, String)>> {
        let text = std::fs::read_to_string(pkg.join(rel)).unwrap();
        text.split("\n---")
            .map(|part| {
                part.lines()
                    .map(|l| l.split('#').next().unwrap().trim())
                    .filter(|l| !l.is_empty() && *l != "---")
                    .map(|l| {
                        let mut it = l.split_whitespace();
                        (
                            it.next().unwrap().to_string(),
                            it.next().unwrap().to_string(),
                        )
                    })
                    .collect()
            })
            .collect()
    };
    let own = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        fields("msg/Decision.msg"),
        vec![own(&[
            ("builtin_interfaces/Time", "stamp"),
            ("string", "audit_id"),
            ("string", "kind"),
            ("string", "decision"),
            ("string", "reason"),
            ("string", "policy_ref"),
            ("string", "source"),
            ("string", "rules_json"),
        ])]
    );
    assert_eq!(
        fields("srv/Tool.srv"),
        vec![
            own(&[("string", "kind"), ("string", "params_json")]),
            own(&[
                ("string", "decision"),
                ("string", "output_json"),
                ("string", "reason"),
                ("string", "policy_ref"),
                ("string", "audit_id"),
                ("string", "rules_json"),
            ]),
        ]
    );
    let pkg_xml = std::fs::read_to_string(pkg.join("package.xml")).unwrap();
    for n in [
        "<package format=\"3\">",
        "<name>autonomy_msgs</name>",
        "<buildtool_depend>rosidl_default_generators</buildtool_depend>",
        "<member_of_group>rosidl_interface_packages</member_of_group>",
        "builtin_interfaces",
    ] {
        assert!(pkg_xml.contains(n), "package.xml lacks {n}");
    }
    let cmake = std::fs::read_to_string(pkg.join("CMakeLists.txt")).unwrap();
    for n in [
        "rosidl_generate_interfaces",
        "\"msg/Decision.msg\"",
        "\"srv/Tool.srv\"",
        "builtin_interfaces",
    ] {
        assert!(cmake.contains(n), "CMakeLists.txt lacks {n}");
    }
}

/// The Fast DDS (Enhanced) mapping, round trip between two ros2-client/RustDDS participants:
/// correlation by related-sample-identity in inline QoS, no payload header. This checks our
/// server end in that mapping, not interop with a real Fast DDS (see docs/ros2.md).
#[test]
fn enhanced_mapping_round_trip_with_a_ros2_client_client() {
    use autonomy::ros::{ServiceMapping, ToolRequest, ToolResponse};
    use ros2_client::{
        Context, ContextOptions, Name, NodeName, NodeOptions, QosProfile, ServiceTypeName,
    };

    let d_id = ros_domain();
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (runtime, ros) = deny_all_node(tmp.path(), d_id, ServiceMapping::Enhanced).await;

        let ctx = Context::with_options(ContextOptions::new().domain_id(d_id)).unwrap();
        let mut node = ctx
            .new_node(
                NodeName::new("/", "enhanced_client").unwrap(),
                NodeOptions::new().enable_rosout(false),
            )
            .unwrap();
        let qos = QosProfile::publisher_default();
        let client = node
            .create_client::<ToolRequest, ToolResponse>(
                ros2_client::ServiceMapping::Enhanced,
                &Name::parse("/autonomy/tool").unwrap(),
                &ServiceTypeName::new("autonomy_msgs", "Tool"),
                qos.clone(),
                qos,
            )
            .unwrap();
        let spinner = node.spinner().unwrap();
        tokio::spawn(spinner.spin());
        tokio::time::timeout(Duration::from_secs(20), client.wait_for_service(&node))
            .await
            .expect("service discovered within 20 s");
        let call = |kind: &str, params: &str| ToolRequest {
            kind: kind.into(),
            params_json: params.into(),
        };
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            client.async_call_service(call("tool.echo", "{\"message\":\"hi\"}")),
        )
        .await
        .expect("answer within 20 s")
        .expect("call");
        // Deny-all: recorded and answered with the policy's reason.
        assert_eq!(r.decision, "deny");
        assert_eq!(r.policy_ref, "builtin:deny-all");
        assert!(!r.audit_id.is_empty());
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            client.async_call_service(call("tool.echo", "oops")),
        )
        .await
        .expect("answer within 20 s")
        .expect("call");
        assert!(r.reason.contains("not valid JSON"), "{r:?}");
        drop(client);
        drop(node);
        ros.shutdown().await;
        runtime.stop().await.expect("stop");
    });
}

/// Approvals through `/autonomy/tool`: the service call waits while its call is parked, and the
/// answer comes when an operator approves or rejects it, or the timeout denies it. The caller is
/// named by its client process (`ros2:<gid prefix>`).
#[test]
fn service_calls_wait_for_approval() {
    use crate::identity::approvals::{ASK, one_pending};
    let d_id = ros_domain();
    let tmp = tempfile::tempdir().unwrap();
    let pol = crate::identity::policy_dir(tmp.path(), "pol", ASK);
    let wal = tmp.path().join("wal");
    let d = Daemon::start_in(
        &wal,
        &["--ros", "--policy", p(&pol), "--approval-timeout", "6s"],
        |c| {
            c.env("ROS_DOMAIN_ID", d_id.to_string())
                .env("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
                .env_remove("ROS_DISTRO");
        },
    );
    let ask = ["tool.echo", "{\"message\": \"ask\"}"];
    let calls = serde_json::json!([ask, ask, ask]).to_string();
    let dom = d_id.to_string();
    let mut peer = Peer::start(&[
        "tool",
        "--domain",
        &dom,
        "--gid",
        gid_len(),
        "--calls",
        &calls,
    ]);
    let agents = d.agents_file();
    let answer = |verb: &str, note: &str| -> Value {
        let p1 = one_pending(&d);
        assert_eq!(p1["source"], "ros2", "{p1}");
        let agent = p1["agent"].as_str().unwrap();
        assert!(
            agent.starts_with("ros2:") && agent.len() == 5 + 16,
            "the caller is its client process: {agent}"
        );
        let out = cli(
            &[
                verb,
                p1["audit_id"].as_str().unwrap(),
                "--note",
                note,
                "--agents",
                p(&agents),
            ],
            &[],
        );
        assert_eq!(out.code, 0, "{}", out.all());
        p1
    };
    let first = answer("approve", "fine");
    let second = answer("reject", "no");
    // The third is left to time out.
    peer.wait_for("done", Duration::from_secs(90));
    let replies = peer.events("reply");
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert_eq!(replies[0]["decision"], "allow");
    assert_eq!(replies[0]["output_json"], "\"ask\"");
    assert_eq!(replies[0]["audit_id"], first["audit_id"]);
    assert_eq!(replies[1]["decision"], "deny");
    assert_eq!(replies[1]["reason"], "rejected by operator:local: no");
    assert_eq!(replies[1]["audit_id"], second["audit_id"]);
    assert_eq!(replies[2]["decision"], "deny");
    assert_eq!(replies[2]["reason"], "not approved within 6 s");
    let by: Vec<String> = replies
        .iter()
        .map(|r| {
            let recs = records_for(&wal, r["audit_id"].as_str().unwrap());
            assert_eq!(recs[0]["event"], "approval.requested");
            recs[1]["by"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(by, ["operator:local", "operator:local", "timeout"]);
}
