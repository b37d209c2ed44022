//! The governed topic bridge, black box: the `autonomy` binary with `--bridge` between two DDS
//! domains, driven by an independent peer (`tests/bridge_peer.py`, pure Python cyclonedds with
//! hand-written `dds_` types) and, where `/opt/ros/jazzy` is installed, by the real `ros2` CLI on
//! both RMWs. Every test takes its domains from `ros_domain`, so they run in parallel with the
//! other ROS tests; loopback only; every wait has a deadline.

mod cli;
mod peer;
mod real;
mod stop;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

const TWIST: &str = "geometry_msgs/msg/Twist";

/// An agent domain and a robot domain, neither used by another test.
fn domains() -> (u16, u16) {
    (ros_domain(), ros_domain())
}

/// Runs the peer to its end (120 s at most): it publishes `plan` on the agent domain and reads
/// the robot domain until `expect` messages (and `feed` feed messages) arrived.
fn peer(agent: u16, robot: u16, plan: &Value, expect: usize, feed: usize, extra: &[&str]) -> Proc {
    let mut c = Command::new(venv_python());
    c.arg(repo().join("tests/bridge_peer.py"))
        .args(["--agent", &agent.to_string(), "--robot", &robot.to_string()])
        .args(["--plan", &plan.to_string()])
        .args(["--expect", &expect.to_string(), "--feed", &feed.to_string()])
        .args(extra);
    let mut p = Proc::spawn(c, "tests/bridge_peer.py");
    let st = p.wait(Duration::from_secs(120));
    assert!(
        st.success(),
        "the peer failed ({st}):\nstdout: {:#?}\nstderr: {:#?}",
        p.out,
        p.err
    );
    assert!(p.out.iter().any(|l| l.contains("\"event\": \"done\"")));
    p
}

/// The peer's JSON lines with this `event`.
fn events(p: &Proc, event: &str) -> Vec<Value> {
    p.out
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

/// `x` (linear.x) of each Twist the robot side received, in order.
fn robot_xs(p: &Proc) -> Vec<f64> {
    events(p, "robot")
        .iter()
        .map(|e| e["x"].as_f64().unwrap_or(f64::NAN))
        .collect()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("bridge.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A daemon with `--bridge`, the robot on `robot`, the agent on `agent`; `tweak` may adjust the
/// command further.
fn bridge_daemon(
    wal: &Path,
    config: &Path,
    agent: u16,
    robot: u16,
    extra: &[&str],
    tweak: impl FnOnce(&mut Command),
) -> Daemon {
    let a = agent.to_string();
    let mut args = vec!["--bridge", p(config), "--agent-domain", &a];
    args.extend_from_slice(extra);
    Daemon::start_in(wal, &args, |c| {
        c.env("ROS_DOMAIN_ID", robot.to_string())
            .env_remove("RMW_IMPLEMENTATION")
            .env_remove("ROS_DISTRO")
            .env_remove("AMENT_PREFIX_PATH");
        tweak(c);
    })
}

/// Stops the daemon, which must exit 0; returns its remaining stderr lines.
fn stop(d: &mut Daemon) -> Vec<String> {
    let st = d.stop();
    let lines = rest(d);
    assert_eq!(st.code(), Some(0), "{lines:#?}");
    lines
}

/// The daemon's stderr lines not read yet.
fn rest(d: &mut Daemon) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(l) = d.stderr.recv_timeout(Duration::from_millis(300)) {
        lines.push(l);
    }
    lines
}

/// The WAL's decisions about bridged messages, in log order.
fn bridged_decisions(wal: &Path) -> Vec<Value> {
    wal_records(wal)
        .into_iter()
        .filter(|r| r["type"] == "decision" && r["source"] == "bridge")
        .collect()
}
