//! The governed topic bridge, black box: the `autonomy` binary with `--bridge` between two DDS
//! domains, driven by an independent peer (`tests/bridge_peer.py`, pure Python cyclonedds with
//! hand-written `dds_` types) and, where `/opt/ros/jazzy` is installed, by the real `ros2` CLI on
//! both RMWs.
//!
//! Domain ids 219–228 are this file's (the other ROS suites stay at or below 218), one pair per
//! test so they run in parallel; loopback only; every wait has a deadline.

// tests/common (shared) trips clippy::zombie_processes in `Daemon::try_start_in`.
#![allow(clippy::zombie_processes)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn venv_python() -> PathBuf {
    let py = root().join(".venv/bin/python");
    let ok = py.is_file()
        && Command::new(&py)
            .args(["-c", "import cyclonedds"])
            .output()
            .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the bridge tests need {} with PyPI cyclonedds: run .ci/run (or: python3 -m venv .venv && .venv/bin/pip install cyclonedds==11.0.1)",
        py.display()
    );
    py
}

const ROS_SETUP: &str = "/opt/ros/jazzy/setup.bash";

/// Whether the real ROS is there. Without it: a failure under `CI=true`, else one skip line.
fn have_ros(test: &str) -> bool {
    if Path::new(ROS_SETUP).is_file() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{ROS_SETUP} is missing: CI must install ../shared/ros2 (.ci/run does)");
    }
    eprintln!("skipped {test}: no ROS 2 at {ROS_SETUP}");
    false
}

/// A child whose stdout lines (JSON, or text) arrive on a channel; killed on drop.
struct Lines {
    child: Child,
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn spawn(mut cmd: Command) -> Lines {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().expect("spawn");
        let (tx, rx) = mpsc::channel();
        let pump = |r: Box<dyn Read + Send>, tx: mpsc::Sender<String>, prefix: &'static str| {
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(format!("{prefix}{l}")).is_err() {
                        break;
                    }
                }
            });
        };
        pump(
            Box::new(child.stdout.take().expect("stdout")),
            tx.clone(),
            "",
        );
        pump(
            Box::new(child.stderr.take().expect("stderr")),
            tx,
            "stderr: ",
        );
        Lines {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Collects lines until one contains `pat`, or panics after `limit`.
    fn wait_for(&mut self, pat: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains("\"event\": \"error\"") {
                        panic!("peer failed: {l}\nseen: {:#?}", self.seen);
                    }
                    if l.contains(pat) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {pat:?} within {limit:?}; seen: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// The JSON lines seen with this `event`.
    fn events(&self, event: &str) -> Vec<Value> {
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == event)
            .collect()
    }

    fn stop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT);
        if wait_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
        }
        while let Ok(l) = self.rx.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Runs the peer to its end (90 s at most).
fn peer(agent: u16, robot: u16, plan: &Value, expect: usize, feed: usize) -> Lines {
    peer_with(agent, robot, plan, expect, feed, &[])
}

fn peer_with(
    agent: u16,
    robot: u16,
    plan: &Value,
    expect: usize,
    feed: usize,
    extra: &[&str],
) -> Lines {
    let mut c = Command::new(venv_python());
    c.arg(root().join("tests/bridge_peer.py"))
        .args(["--agent", &agent.to_string(), "--robot", &robot.to_string()])
        .args(["--plan", &plan.to_string()])
        .args(["--expect", &expect.to_string(), "--feed", &feed.to_string()])
        .args(extra);
    let mut p = Lines::spawn(c);
    p.wait_for("\"event\": \"done\"", Duration::from_secs(90));
    p
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("bridge.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A daemon with `--bridge`, the robot on `robot`, the agent on `agent`.
fn bridge_daemon(wal: &Path, config: &Path, agent: u16, robot: u16, extra: &[&str]) -> Daemon {
    let mut args = vec!["--bridge", config.to_str().unwrap(), "--agent-domain"];
    let a = agent.to_string();
    args.push(&a);
    args.extend_from_slice(extra);
    Daemon::start_in(wal, &args, |c| {
        c.env("ROS_DOMAIN_ID", robot.to_string())
            .env_remove("RMW_IMPLEMENTATION")
            .env_remove("ROS_DISTRO")
            .env_remove("AMENT_PREFIX_PATH");
    })
}

/// Stops the daemon; returns its remaining stderr lines.
fn stop(d: &mut Daemon) -> Vec<String> {
    let st = d.stop();
    assert_eq!(st.code(), Some(0));
    let mut lines = Vec::new();
    while let Ok(l) = d.stderr.recv_timeout(Duration::from_millis(200)) {
        lines.push(l);
    }
    lines
}

fn bridged_decisions(wal: &Path) -> Vec<Value> {
    wal_records(wal)
        .into_iter()
        .filter(|r| r["type"] == "decision" && r["source"] == "bridge")
        .collect()
}

const TWIST: &str = "geometry_msgs/msg/Twist";

/// The strict path with the embedded demo policy: allowed Twists reach the robot side in order,
/// over-limit, non-finite, malformed and /disable_safety messages never do; each message has
/// one decision in the WAL; what was dropped is published on the agent's /autonomy/decisions;
/// a robot → agent feed is relayed; the counts are recorded and printed at the stop.
#[test]
fn only_allowed_messages_reach_the_robot_in_order_each_with_one_decision() {
    let (robot, agent) = (219, 220);
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
"#,
    );
    let mut d = bridge_daemon(&wal, &cfg, agent, robot, &[]);
    assert!(
        d.startup.contains(&format!(
            "autonomy: topic bridge /autonomy_bridge: agent domain {agent} → robot domain {robot} (3 topic(s) governed, 1 read-only feed(s) back)"
        )),
        "{:?}",
        d.startup
    );
    let plan = json!([
        ["twist", "/cmd_vel", 0.1, 0.0],
        ["twist", "/cmd_vel", 2.0, 0.0],
        ["twist", "/cmd_vel", 0.2, 1.5],
        ["bool", "/disable_safety", true],
        ["garbage", "/cmd_vel", "not a twist"],
        ["twist", "/cmd_vel/left", 0.3, 0.0],
        ["twist", "/cmd_vel", "NaN", 0.0],
        ["twist", "/cmd_vel", 0.5, -2.5],
        ["twist", "/cmd_vel", 0.4, 0.0],
    ]);
    let p = peer(agent, robot, &plan, 4, 3);

    let got: Vec<(String, f64)> = p
        .events("robot")
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
    assert_eq!(got.len(), 4, "{got:?}");
    let feed: Vec<Value> = p.events("feed").iter().map(|f| f["data"].clone()).collect();
    assert_eq!(
        feed,
        [json!("status 0"), json!("status 1"), json!("status 2")]
    );

    // The agent learns about each dropped message.
    let told: Vec<String> = p
        .events("decision")
        .iter()
        .map(|e| {
            assert_eq!(e["source"], "bridge");
            assert_eq!(e["kind"], "tool.ros2.topic.publish");
            assert_eq!(e["decision"], "deny");
            assert_eq!(e["policy_ref"], "embedded:ros2-bridge-demo");
            e["reason"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(told.len(), 5, "{told:?}");
    assert!(
        told.contains(&"safety topics are never bridged".to_string()),
        "{told:?}"
    );
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
    assert_eq!(recs.len(), 9, "{recs:#?}");
    for r in &recs {
        assert_eq!(r["kind"], "tool.ros2.topic.publish");
        assert_eq!(r["policy_ref"], "embedded:ros2-bridge-demo");
    }
    let allowed: Vec<f64> = recs
        .iter()
        .filter(|r| r["decision"] == "allow")
        .map(|r| {
            assert_eq!(r["layer"], "policy");
            assert_eq!(r["params"]["type"], TWIST);
            r["params"]["message"]["linear"]["x"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(allowed, [0.1, 0.2, 0.3, 0.4], "{recs:#?}");
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
    let (robot, agent) = (221, 222);
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let cfg = write_config(
        tmp.path(),
        "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\naudit = \"batched\"\nbatch_window_ms = 15\n",
    );
    let policy = root().join("examples/bridge/policy.rego");
    let mut d = bridge_daemon(
        &wal,
        &cfg,
        agent,
        robot,
        &["--policy", policy.to_str().unwrap()],
    );
    let plan: Vec<Value> = (1..=30)
        .map(|i| json!(["twist", "/cmd_vel", f64::from(i) / 100.0, 0.0]))
        .collect();
    let p = peer(agent, robot, &Value::Array(plan), 20, 0);
    let got: Vec<f64> = p
        .events("robot")
        .iter()
        .map(|e| e["x"].as_f64().unwrap())
        .collect();
    let want: Vec<f64> = (1..=20).map(|i| f64::from(i) / 100.0).collect();
    assert_eq!(got, want);
    let told = p.events("decision");
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
    use std::os::unix::process::CommandExt;
    let (robot, agent) = (227, 228);
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let cfg = write_config(
        tmp.path(),
        "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\n",
    );
    let a = agent.to_string();
    let mut d = Daemon::start_in(
        &wal,
        &[
            "--bridge",
            cfg.to_str().unwrap(),
            "--agent-domain",
            &a,
            "--wal-segment-bytes",
            "1048576",
        ],
        |c| {
            c.env("ROS_DOMAIN_ID", robot.to_string())
                .env_remove("RMW_IMPLEMENTATION");
            // SAFETY: only setrlimit, which is async-signal-safe, runs in the child.
            unsafe {
                c.pre_exec(|| {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_FSIZE,
                        32 * 1024,
                        32 * 1024,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        },
    );
    let plan: Vec<Value> = (1..=200)
        .map(|i| json!(["twist", "/cmd_vel", f64::from(i) / 1000.0, 0.0]))
        .collect();
    let p = peer_with(
        agent,
        robot,
        &Value::Array(plan),
        200,
        0,
        &["--interval", "0.005", "--idle", "3"],
    );
    let got: Vec<f64> = p
        .events("robot")
        .iter()
        .map(|e| e["x"].as_f64().unwrap())
        .collect();
    assert!(!got.is_empty() && got.len() < 200, "{} arrived", got.len());
    let want: Vec<f64> = (1..=got.len()).map(|i| i as f64 / 1000.0).collect();
    assert_eq!(got, want, "a prefix, in order");

    let st = d.stop();
    let mut lines = Vec::new();
    while let Ok(l) = d.stderr.recv_timeout(Duration::from_millis(300)) {
        lines.push(l);
    }
    assert_eq!(
        st.code(),
        Some(1),
        "the WAL cannot be closed cleanly: {lines:#?}"
    );
    let dropped: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.contains(
                "bridge: /cmd_vel: message dropped: the audit log cannot record its decision",
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
    // Every message the robot got has its allow on disk.
    let recorded: Vec<f64> = bridged_decisions(&wal)
        .iter()
        .filter(|r| r["decision"] == "allow")
        .map(|r| r["params"]["message"]["linear"]["x"].as_f64().unwrap())
        .collect();
    assert_eq!(recorded, want);
}

/// `autonomy run --bridge FILE ros2.launch …` (with the TEST DOUBLE `tests/fake_ros2/ros2` first
/// on PATH, as tests/launch.rs uses it): the bridge demo policy allows the launch, the bridge
/// runs for the life of the launch, and its records are in the run's WAL.
#[test]
fn run_ros2_launch_with_the_bridge() {
    let (robot, agent) = (229, 230);
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let cfg = write_config(
        tmp.path(),
        "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\n",
    );
    let fake = root().join("tests/fake_ros2");
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new(bin());
    c.args(["run", "--dir"])
        .arg(&wal)
        .args([
            "--bridge",
            cfg.to_str().unwrap(),
            "--agent-domain",
            &agent.to_string(),
        ])
        .args(["ros2.launch", "demo_pkg", "demo.launch.py"])
        .env("PATH", path)
        .env("ROS_DOMAIN_ID", robot.to_string())
        .env("AUTONOMY_ROS_SETTLE", "0")
        .env("AUTONOMY_ROS_LINGER", "0")
        .env_remove("AUTONOMY_RUN_WAL_DIR")
        .env_remove("RMW_IMPLEMENTATION")
        .env_remove("ROS_DISTRO")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let st = wait_timeout(&mut child, Duration::from_secs(60)).expect("run ends");
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(st.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains("PASS ros2-launch-allowed context=native"),
        "{out}"
    );
    assert!(
        err.contains(&format!(
            "autonomy: topic bridge /autonomy_bridge: agent domain {agent} → robot domain {robot}"
        )),
        "{err}"
    );
    let recs = wal_records(&wal);
    assert_eq!(recs[0]["policy_ref"], "embedded:ros2-bridge-demo");
    let launch: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "decision" && r["kind"] == "tool.ros2.launch")
        .collect();
    assert_eq!(launch.len(), 1);
    assert_eq!(launch[0]["decision"], "allow");
    assert!(recs.iter().any(|r| r["event"] == "bridge.started"));
    assert!(recs.iter().any(|r| r["event"] == "bridge.stopped"));
}

fn start_fails(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Command::new(bin());
    c.args(["runtime", "start", "--listen", "127.0.0.1:0", "--wal-dir"])
        .arg(tmp.path().join("wal"))
        .args(args)
        .env_remove("ROS_DOMAIN_ID")
        .env_remove("AMENT_PREFIX_PATH")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_timeout(&mut child, Duration::from_secs(20)).expect("exits");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (st.code(), err.lines().map(str::to_string).collect())
}

/// Bad configs, an unknown type and one domain for both sides: one line each, exit 2, nothing
/// started.
#[test]
fn config_mistakes_are_one_usage_line() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let ok = write(
        "ok.toml",
        "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\n",
    );
    let bad_qos = write(
        "q.toml",
        "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\nqos = { reliability = \"fast\" }\n",
    );
    let bad_type = write(
        "t.toml",
        "[[topic]]\nname = \"/x\"\ntype = \"my_msgs/msg/Cmd\"\n",
    );
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case> = vec![
        (
            vec!["--bridge", &bad_qos],
            vec![],
            format!("autonomy: error: {bad_qos}: topic[0] (/cmd_vel).qos.reliability: \"fast\" is not reliable or best_effort"),
        ),
        (
            vec!["--bridge", &bad_type],
            vec![],
            "autonomy: error: bridge topic /x: no definition of my_msgs/msg/Cmd".into(),
        ),
        (
            vec!["--bridge", &ok, "--agent-domain", "42"],
            vec![("ROS_DOMAIN_ID", "42")],
            "autonomy: error: the agent and the robot are both on DDS domain 42: give the bridge two domains (--agent-domain N, ROS_DOMAIN_ID for the robot)".into(),
        ),
        (
            vec!["--bridge", &ok],
            vec![("ROS_DOMAIN_ID", "99")],
            "autonomy: error: the agent and the robot are both on DDS domain 99".into(),
        ),
        (
            vec!["--agent-domain", "5"],
            vec![],
            "autonomy: error: the following required arguments were not provided:".into(),
        ),
        (
            vec!["--bridge", "/nonexistent/b.toml"],
            vec![],
            "autonomy: error: /nonexistent/b.toml: cannot read:".into(),
        ),
    ];
    for (args, env, want) in cases {
        let (code, lines) = start_fails(&args, &env);
        assert_eq!(code, Some(2), "{args:?}: {lines:?}");
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].starts_with(&want), "{args:?}: {lines:?}");
    }
}

/// The decoder's golden vectors are what this machine's real ROS 2 makes today, on both RMWs.
#[test]
fn golden_vectors_match_the_real_ros() {
    if !have_ros("golden_vectors_match_the_real_ros") {
        return;
    }
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("src/bridge/cdr/golden.json")).unwrap(),
    )
    .unwrap();
    for rmw in ["rmw_fastrtps_cpp", "rmw_cyclonedds_cpp"] {
        let script = root().join("tests/bridge_golden.py");
        let out = Command::new("timeout")
            .args(["60", "bash", "-c"])
            .arg(format!(
                "source {ROS_SETUP} && exec python3 {}",
                script.display()
            ))
            .env("RMW_IMPLEMENTATION", rmw)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let now: Value = serde_json::from_slice(&out.stdout).unwrap();
        // Fast DDS leaves uninitialised padding bytes: compare the decoded values and the
        // bytes up to the padding.
        for (a, b) in now
            .as_array()
            .unwrap()
            .iter()
            .zip(golden[rmw].as_array().unwrap())
        {
            assert_eq!(a["type"], b["type"]);
            assert_eq!(a["json"], b["json"], "{rmw} {}", a["type"]);
            if rmw == "rmw_cyclonedds_cpp" {
                assert_eq!(a["hex"], b["hex"], "{rmw} {}", a["type"]);
            }
        }
        assert_eq!(
            now.as_array().unwrap().len(),
            golden[rmw].as_array().unwrap().len()
        );
    }
}

/// `bash -c 'source ROS; exec "$@"'` on `domain` with `rmw`.
fn ros2(argv: &[&str], domain: u16, rmw: &str, log_dir: &Path) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(format!("source {ROS_SETUP} && exec \"$@\""))
        .arg("bash")
        .args(argv)
        .env("ROS_DOMAIN_ID", domain.to_string())
        .env("RMW_IMPLEMENTATION", rmw)
        .env("ROS_LOG_DIR", log_dir)
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("ROS_DISTRO");
    c
}

/// The real ROS 2 on both sides: `ros2 topic pub -r 10` on the agent domain (an allowed Twist,
/// an over-limit one on the same topic, and /disable_safety), `ros2 topic echo` on the robot
/// domain sees the allowed one only, with no type-hash warnings; the WAL has the decisions.
fn real_ros_pub_and_echo(rmw: &str, robot: u16, agent: u16) {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let logs = tmp.path().join("ros_log");
    let cfg = write_config(
        tmp.path(),
        "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\n\n[[topic]]\nname = \"/disable_safety\"\ntype = \"std_msgs/msg/Bool\"\n",
    );
    let a = agent.to_string();
    let mut d = Daemon::start_in(
        &wal,
        &["--bridge", cfg.to_str().unwrap(), "--agent-domain", &a],
        |c| {
            c.env("ROS_DOMAIN_ID", robot.to_string())
                .env("RMW_IMPLEMENTATION", rmw)
                .env_remove("ROS_DISTRO");
        },
    );
    let echo = |topic: &str, ty: &str, field: &str| {
        let mut argv = vec!["ros2", "topic", "echo", "--no-daemon"];
        if !field.is_empty() {
            argv.extend(["--field", field]);
        }
        argv.extend([topic, ty]);
        Lines::spawn(ros2(&argv, robot, rmw, &logs))
    };
    let mut cmd_vel = echo("/cmd_vel", "geometry_msgs/msg/Twist", "linear.x");
    let mut safety = echo("/disable_safety", "std_msgs/msg/Bool", "");
    let publish = |topic: &str, ty: &str, msg: &str| {
        Lines::spawn(ros2(
            &["ros2", "topic", "pub", "-r", "10", topic, ty, msg],
            agent,
            rmw,
            &logs,
        ))
    };
    let mut ok = publish(
        "/cmd_vel",
        "geometry_msgs/msg/Twist",
        "{linear: {x: 0.5}, angular: {z: 0.25}}",
    );
    let mut fast = publish("/cmd_vel", "geometry_msgs/msg/Twist", "{linear: {x: 3.0}}");
    let mut off = publish("/disable_safety", "std_msgs/msg/Bool", "{data: true}");
    cmd_vel.wait_for("0.5", Duration::from_secs(60));
    // The node on the agent side, as the ROS graph shows it.
    let mut seen_node = String::new();
    for _ in 0..5 {
        let mut c = ros2(&["ros2", "node", "list", "--no-daemon"], agent, rmw, &logs);
        let mut l = Lines::spawn(c.env("PYTHONUNBUFFERED", "1"));
        if wait_timeout(&mut l.child, Duration::from_secs(30)).is_some() {
            while let Ok(x) = l.rx.recv_timeout(Duration::from_millis(200)) {
                l.seen.push(x);
            }
        }
        seen_node = l.seen.join("\n");
        if l.seen.iter().any(|x| x == "/autonomy_bridge") {
            break;
        }
    }
    assert!(
        seen_node.lines().any(|x| x == "/autonomy_bridge"),
        "{rmw}: {seen_node}"
    );
    // Let the three publishers run a while longer, then stop everything.
    std::thread::sleep(Duration::from_secs(2));
    for p in [&mut ok, &mut fast, &mut off] {
        p.stop();
    }
    std::thread::sleep(Duration::from_millis(500));
    cmd_vel.stop();
    safety.stop();
    let lines = stop(&mut d);
    let noise: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" WARN") || l.contains("ERROR"))
        .collect();
    assert!(noise.is_empty(), "{rmw}: {noise:#?}");

    let values: Vec<&String> = cmd_vel
        .seen
        .iter()
        .filter(|l| !l.starts_with("stderr: ") && *l != "---")
        .collect();
    assert!(!values.is_empty());
    assert!(
        values.iter().all(|v| v.as_str() == "0.5"),
        "{rmw}: {:#?}",
        cmd_vel.seen
    );
    assert!(
        !safety.seen.iter().any(|l| l.contains("data:")),
        "{rmw}: /disable_safety reached the robot: {:#?}",
        safety.seen
    );
    for l in cmd_vel.seen.iter().chain(&safety.seen) {
        assert!(!l.contains("Failed to parse type hash"), "{rmw}: {l}");
    }
    let recs = bridged_decisions(&wal);
    let x = |r: &Value| r["params"]["message"]["linear"]["x"].as_f64();
    assert!(
        recs.iter()
            .any(|r| r["decision"] == "allow" && x(r) == Some(0.5)),
        "{rmw}"
    );
    assert!(
        recs.iter()
            .filter(|r| x(r) == Some(3.0))
            .all(|r| r["decision"] == "deny")
    );
    assert!(recs.iter().any(|r| x(r) == Some(3.0)), "{rmw}");
    assert!(
        recs.iter()
            .any(|r| r["params"]["topic"] == "/disable_safety" && r["decision"] == "deny"),
        "{rmw}"
    );
    // Every relayed message had its decision: as many allows as echoed values at least.
    let allows = recs.iter().filter(|r| r["decision"] == "allow").count();
    assert!(
        allows >= values.len(),
        "{allows} allows, {} echoed",
        values.len()
    );
}

#[test]
fn real_ros_pub_and_echo_fastdds() {
    if have_ros("real_ros_pub_and_echo_fastdds") {
        real_ros_pub_and_echo("rmw_fastrtps_cpp", 223, 224);
    }
}

#[test]
fn real_ros_pub_and_echo_cyclone() {
    if have_ros("real_ros_pub_and_echo_cyclone") {
        real_ros_pub_and_echo("rmw_cyclonedds_cpp", 225, 226);
    }
}
