//! `autonomy run ros2.launch`: markers, gate, supervision, lifecycle records, exit codes.
//!
//! These tests put `tests/fake_ros2/ros2` — a TEST DOUBLE that behaves like `ros2 launch` run
//! noninteractively — first on PATH, for what the real CLI cannot do on demand: record its
//! argv, exit with a chosen code, and wait forever for nodes that ignore SIGINT and SIGTERM
//! (fault injection). The real `ros2 launch` is tested in `ros::real`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

const MARKERS: [&str; 5] = [
    "PASS ros2-telemetry-active context=native",
    "PASS ros2-launch-allowed context=native",
    "PASS ros2-stack-start context=native",
    "PASS ros2-policy-enforced context=native",
    "PASS ros2-wal-recording context=native",
];

fn fake_path() -> String {
    let fake = repo().join("tests/fake_ros2");
    format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

struct Run {
    child: Child,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
}

fn start(args: &[&str], env: &[(&str, &str)], path: &str) -> Run {
    let mut cmd = Command::new(bin());
    cmd.arg("run")
        .args(args)
        .env("PATH", path)
        .env_remove("AUTONOMY_RUN_WAL_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let out = read_lines(child.stdout.take().unwrap());
    let err = read_lines(child.stderr.take().unwrap());
    Run { child, out, err }
}

impl Run {
    fn finish(mut self, limit: Duration) -> (Option<i32>, Vec<String>, Vec<String>) {
        let st = wait_timeout(&mut self.child, limit).expect("autonomy finished in time");
        let collect = |rx: &mpsc::Receiver<String>| {
            let mut v = Vec::new();
            while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
                v.push(l);
            }
            v
        };
        (st.code(), collect(&self.out), collect(&self.err))
    }

    fn wait_for(&self, pat: &str, limit: Duration) -> Vec<String> {
        let end = Instant::now() + limit;
        let mut seen = Vec::new();
        while Instant::now() < end {
            if let Ok(l) = self.out.recv_timeout(Duration::from_millis(100)) {
                let hit = l.contains(pat);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
        }
        panic!("no line with {pat:?} within {limit:?}; saw {seen:?}");
    }
}

fn markers_in(stdout: &[String]) -> Vec<String> {
    stdout
        .iter()
        .filter(|l| l.starts_with("PASS ros2-") || l.starts_with("DENY ros2-"))
        .cloned()
        .collect()
}

fn wal_markers(dir: &Path) -> Vec<String> {
    wal_records(dir)
        .into_iter()
        .filter(|r| r["type"] == "marker")
        .map(|r| r["line"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn allowed_launch_prints_five_markers_and_records_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let record = tmp.path().join("argv.json");
    let run = start(
        &[
            "--dir",
            wal.to_str().unwrap(),
            "ros2.launch",
            "demo_robot",
            "arm.launch.py",
            "use_sim:=true",
            "name:=two words",
            "--dir",
        ],
        &[
            ("FAKE_ROS2_RECORD", record.to_str().unwrap()),
            ("FAKE_ROS2_CALL", "hello from a node"),
        ],
        &fake_path(),
    );
    let (code, out, err) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "stdout {out:?}\nstderr {err:?}");
    assert_eq!(markers_in(&out), MARKERS, "{out:?}");
    // Launch output streams through, between markers 3 and 4.
    let pos = |s: &str| {
        out.iter()
            .position(|l| l.contains(s))
            .unwrap_or_else(|| panic!("{s} not in {out:?}"))
    };
    assert!(pos("ros2-stack-start") < pos("process started with pid"));
    assert!(pos("process has died") < pos("ros2-policy-enforced"));

    // Arguments arrive unchanged.
    let argv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!(
        argv["argv"],
        serde_json::json!([
            "launch",
            "demo_robot",
            "arm.launch.py",
            "use_sim:=true",
            "name:=two words",
            "--dir"
        ])
    );

    // The same marker lines, in order, in the WAL.
    assert_eq!(wal_markers(&wal), MARKERS);
    let recs = wal_records(&wal);
    let launch = recs
        .iter()
        .find(|r| r["type"] == "decision" && r["kind"] == "tool.ros2.launch")
        .expect("launch decision");
    assert_eq!(launch["decision"], "allow");
    assert_eq!(launch["source"], "launch");
    assert_eq!(launch["params"]["package"], "demo_robot");
    assert_eq!(launch["params"]["launch_file"], "arm.launch.py");
    assert_eq!(
        launch["params"]["arguments"],
        serde_json::json!(["use_sim:=true", "name:=two words", "--dir"])
    );
    let id = launch["audit_id"].as_str().unwrap();

    // Lifecycle records, parsed.
    let life: Vec<_> = recs.iter().filter(|r| r["type"] == "lifecycle").collect();
    assert!(life.iter().all(|r| r["audit_id"] == id));
    let started = life
        .iter()
        .filter(|r| r["event"] == "process.started")
        .count();
    assert_eq!(started, 3, "{life:?}");
    let died = life
        .iter()
        .find(|r| r["event"] == "process.died")
        .expect("a died record");
    assert_eq!(died["name"], "crasher-2");
    assert_eq!(died["exit_code"], 3);
    assert!(died["pid"].as_i64().unwrap() > 0);
    assert!(died["cmd"].as_str().unwrap().ends_with("-c crasher-2"));
    assert_eq!(
        life.iter()
            .filter(|r| r["event"] == "process.finished")
            .count(),
        2
    );

    // A launched node's HTTP call went through the runtime and is in the same WAL.
    let caller = out
        .iter()
        .find_map(|l| l.strip_prefix("caller got "))
        .expect("the node called the runtime");
    let calls = records_for(&wal, caller.trim());
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["kind"], "tool.echo");
    assert_eq!(calls[0]["params"]["message"], "hello from a node");

    let (code, out) = wal_verify(&wal);
    assert_eq!(code, 0, "{out}");
}

/// Builds the example launch-allowlist bundle (packages demo_nodes_cpp and turtlesim).
fn launch_bundle(dir: &Path) -> PathBuf {
    let out = dir.join("launch-allowlist.tar.gz");
    let src = repo().join("examples/policies/ros-launch-allowlist");
    build_bundle(&src, &out, "1.0.0", "launch-allowlist");
    out
}

#[test]
fn denied_launch_prints_deny_exits_126_and_spawns_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let record = tmp.path().join("argv.json");
    let bundle = launch_bundle(tmp.path());
    let run = start(
        &[
            "--policy",
            bundle.to_str().unwrap(),
            "--dir",
            wal.to_str().unwrap(),
            "ros2.launch",
            "rogue_pkg",
            "x.launch.py",
        ],
        &[("FAKE_ROS2_RECORD", record.to_str().unwrap())],
        &fake_path(),
    );
    let (code, out, err) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(126), "{out:?} {err:?}");
    let deny = r#"DENY ros2-launch-denied context=native reason=ROS package "rogue_pkg" is not in the launch allowlist"#;
    assert_eq!(
        markers_in(&out),
        vec![MARKERS[0].to_string(), deny.to_string()]
    );
    assert!(!record.exists(), "the stand-in must never start");
    assert_eq!(
        wal_markers(&wal),
        vec![MARKERS[0].to_string(), deny.to_string()]
    );
    let recs = wal_records(&wal);
    let d = recs.iter().find(|r| r["type"] == "decision").unwrap();
    assert_eq!(
        (d["kind"].as_str(), d["decision"].as_str()),
        (Some("tool.ros2.launch"), Some("deny"))
    );
    assert!(
        d["policy_ref"]
            .as_str()
            .unwrap()
            .starts_with("launch-allowlist@1.0.0"),
        "{d}"
    );

    // The same bundle allows a listed package.
    let run = start(
        &[
            "--policy",
            bundle.to_str().unwrap(),
            "ros2.launch",
            "turtlesim",
            "turtle.launch.py",
        ],
        &[],
        &fake_path(),
    );
    let (code, out, _) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0));
    assert_eq!(markers_in(&out), MARKERS);
}

#[test]
fn missing_ros2_exits_127_with_a_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    let run = start(
        &["ros2.launch", "demo_robot", "x.launch.py"],
        &[],
        empty.to_str().unwrap(),
    );
    let (code, out, err) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(127), "{out:?} {err:?}");
    assert_eq!(markers_in(&out), MARKERS[..2]);
    let errs: Vec<_> = err.iter().filter(|l| l.contains("error")).collect();
    assert_eq!(errs.len(), 1, "{err:?}");
    assert!(
        errs[0].contains("not found on PATH") && errs[0].contains("source"),
        "{err:?}"
    );
}

#[test]
fn launch_exit_code_is_propagated_without_markers_4_and_5() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let run = start(
        &[
            "--dir",
            wal.to_str().unwrap(),
            "ros2.launch",
            "demo_robot",
            "x.launch.py",
        ],
        &[("FAKE_ROS2_EXIT", "3")],
        &fake_path(),
    );
    let (code, out, _) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(3));
    assert_eq!(markers_in(&out), MARKERS[..3]);
    assert_eq!(wal_markers(&wal), MARKERS[..3]);
}

#[test]
fn usage_errors_are_one_line() {
    let run = start(&["ros2.launch", "only_a_package"], &[], &fake_path());
    let (code, out, err) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(2));
    assert!(markers_in(&out).is_empty());
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(err[0].contains("ros2.launch <package> <launch_file>"));
}

fn group_alive(pgid: i32) -> bool {
    !matches!(
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

fn ctrl_c_run(
    grace: &str,
    second_sigint: bool,
) -> (Option<i32>, Vec<String>, Vec<String>, i32, Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("argv.json");
    let run = start(
        &[
            "--grace-period",
            grace,
            "ros2.launch",
            "demo_robot",
            "x.launch.py",
        ],
        &[
            ("FAKE_ROS2_MODE", "wait"),
            ("FAKE_ROS2_RECORD", record.to_str().unwrap()),
        ],
        &fake_path(),
    );
    let mut seen = run.wait_for("immortal-3]: process started", Duration::from_secs(30));
    let end = Instant::now() + Duration::from_secs(10);
    while !record.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let pgid = rec["pgid"].as_i64().unwrap() as i32;
    assert!(group_alive(pgid));
    let pid = nix::unistd::Pid::from_raw(run.child.id() as i32);
    let t0 = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    if second_sigint {
        std::thread::sleep(Duration::from_millis(300));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    }
    let (code, out, err) = run.finish(Duration::from_secs(60));
    let took = t0.elapsed();
    seen.extend(out);
    (code, seen, err, pgid, took)
}

#[test]
fn ctrl_c_escalates_and_leaves_no_process_of_the_group() {
    let (code, out, err, pgid, took) = ctrl_c_run("1", false);
    // The stand-in waits for its nodes; one ignores SIGINT, one ignores SIGINT and SIGTERM.
    // After the grace period the group gets SIGTERM (launch dies of it: 128+15), then the
    // sweep SIGKILLs what is left.
    assert_eq!(code, Some(143), "{out:?} {err:?}");
    assert!(
        out.iter()
            .any(|l| l.contains("user interrupted with ctrl-c")),
        "launch got SIGINT first: {out:?}"
    );
    assert!(
        err.iter()
            .any(|l| l.contains("SIGTERM to its process group")),
        "{err:?}"
    );
    assert!(
        !group_alive(pgid),
        "a process of the launch group outlived autonomy"
    );
    assert_eq!(markers_in(&out), MARKERS[..3]);
    assert!(
        took >= Duration::from_millis(900),
        "SIGTERM came before the grace period: {took:?}"
    );
}

#[test]
fn a_second_ctrl_c_skips_the_grace_period() {
    let (code, out, err, pgid, took) = ctrl_c_run("30", true);
    assert_eq!(code, Some(143), "{out:?} {err:?}");
    assert!(
        took < Duration::from_secs(20),
        "the second Ctrl-C did not skip ahead: {took:?}"
    );
    assert!(!group_alive(pgid));
}

/// The same marker lines reach `/autonomy/markers`, as seen by an independent Cyclone DDS peer
/// (PyPI `cyclonedds`, hand-written types; see tests/ros_peer.py).
#[test]
fn markers_are_published_on_the_ros_topic() {
    let domain = ros_domain();
    let mut peer = Command::new(venv_python())
        .arg(repo().join("tests/ros_peer.py"))
        .args(["markers", "--domain", &domain.to_string(), "--count", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let peer_out = read_lines(peer.stdout.take().unwrap());
    let run = start(
        &["ros2.launch", "demo_robot", "x.launch.py"],
        &[
            ("ROS_DOMAIN_ID", &domain.to_string()),
            ("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp"),
        ],
        &fake_path(),
    );
    let (code, out, err) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{out:?} {err:?}");
    assert_eq!(markers_in(&out), MARKERS);
    assert!(
        err.iter()
            .any(|l| l.contains(&format!("ROS 2 node /autonomy on domain {domain}"))),
        "{err:?}"
    );
    let st = wait_timeout(&mut peer, Duration::from_secs(40)).expect("peer finished");
    let mut got = Vec::new();
    while let Ok(l) = peer_out.recv_timeout(Duration::from_millis(300)) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
        if v["event"] == "marker" {
            got.push(v["line"].as_str().unwrap_or_default().to_string());
        }
    }
    assert!(st.success(), "peer failed; got {got:?}");
    assert_eq!(got, MARKERS, "byte for byte, in order");
}

#[test]
fn a_ctrl_c_shutdown_that_ends_in_0_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let run = start(
        &[
            "--dir",
            tmp.path().join("wal").to_str().unwrap(),
            "ros2.launch",
            "demo_robot",
            "x.launch.py",
        ],
        &[("FAKE_ROS2_MODE", "interruptible")],
        &fake_path(),
    );
    run.wait_for("listener-2]: process started", Duration::from_secs(30));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let (code, out, err) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{out:?} {err:?}");
    // markers 1-3 were consumed by wait_for; 4 and 5 follow the clean shutdown.
    assert_eq!(markers_in(&out), MARKERS[3..]);
    assert_eq!(wal_markers(&tmp.path().join("wal")), MARKERS);
}
