//! The bridge on the command line: `autonomy run --bridge … ros2.launch`, and the mistakes that
//! stop `runtime start --bridge` with one usage line.

use std::process::Command;

use serde_json::Value;

use super::*;

/// `autonomy run --bridge FILE ros2.launch …` (with the TEST DOUBLE `tests/fake_ros2/ros2` first
/// on PATH, as the `ros::launch` tests use it): the bridge demo policy allows the launch, the bridge
/// runs for the life of the launch, and its records are in the run's WAL.
#[test]
fn run_ros2_launch_with_the_bridge() {
    let (agent, robot) = domains();
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let cfg = write_config(
        tmp.path(),
        "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\n",
    );
    let fake = repo().join("tests/fake_ros2");
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new(bin());
    c.args(["run", "--dir"])
        .arg(&wal)
        .args(["--bridge", p(&cfg), "--agent-domain", &agent.to_string()])
        .args(["ros2.launch", "demo_pkg", "demo.launch.py"])
        .env("PATH", path)
        .env("ROS_DOMAIN_ID", robot.to_string())
        .env("AUTONOMY_ROS_SETTLE", "0")
        .env("AUTONOMY_ROS_LINGER", "0")
        .env_remove("AUTONOMY_RUN_WAL_DIR")
        .env_remove("RMW_IMPLEMENTATION")
        .env_remove("ROS_DISTRO");
    let Out {
        code,
        stdout: out,
        stderr: err,
    } = run(c, Duration::from_secs(60));
    assert_eq!(code, 0, "{out}\n{err}");
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
        .env_remove("AMENT_PREFIX_PATH");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = run(c, Duration::from_secs(20));
    (Some(o.code), o.stderr.lines().map(str::to_string).collect())
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
    let no_safe = write(
        "s.toml",
        "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\nmax_silence_ms = 300\n",
    );
    let bad_safe = write(
        "m.toml",
        "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\non_deny = \"publish\"\nsafe_message = { linear = { w = 0.0 } }\n",
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
            vec!["--bridge", &no_safe],
            vec![],
            format!("autonomy: error: {no_safe}: topic[0] (/cmd_vel).max_silence_ms: the watchdog needs a safe_message to publish"),
        ),
        (
            vec!["--bridge", &bad_safe],
            vec![],
            "autonomy: error: bridge topic /cmd_vel: safe_message.linear.w: not a field of geometry_msgs/msg/Vector3 (its fields: x, y, z)".into(),
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

/// What docs/bridge.md tells a user to run works as it says: the end-to-end command
/// (examples/bridge/bridge.toml with examples/bridge/policy.rego) and the config block of "The
/// config file" start the bridge with the start line shown there, and stop with one count line
/// per topic.
#[test]
fn the_documented_configs_start() {
    let (agent, robot) = domains();
    let doc = std::fs::read_to_string(repo().join("docs/bridge.md")).unwrap();
    let block = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a TOML block in docs/bridge.md");
    let tmp = tempfile::tempdir().unwrap();
    let documented = write_config(tmp.path(), block);
    let example = repo().join("examples/bridge/bridge.toml");
    let policy = repo().join("examples/bridge/policy.rego");
    for (cfg, extra, summary, topics) in [
        (
            example.as_path(),
            vec!["--policy", p(&policy)],
            "(2 topic(s) governed, 1 read-only feed(s) back)",
            ["/cmd_vel", "/disable_safety", "/odom"].as_slice(),
        ),
        (
            documented.as_path(),
            vec![],
            "(1 topic(s) governed, 0 read-only feed(s) back)",
            ["/cmd_vel"].as_slice(),
        ),
    ] {
        let wal = tmp.path().join(format!("wal-{}", topics.len()));
        let mut d = bridge_daemon(&wal, cfg, agent, robot, &extra, |_| {});
        let line = format!(
            "autonomy: topic bridge /autonomy_bridge: agent domain {agent} → robot domain {robot} {summary}"
        );
        assert!(d.startup.contains(&line), "{line}: {:#?}", d.startup);
        let lines = stop(&mut d);
        for t in topics {
            // The example's /cmd_vel has a safe message, so its count is printed too.
            let safe = if cfg == example.as_path() && *t == "/cmd_vel" {
                ", 0 safe published"
            } else {
                ""
            };
            let want = format!(
                "autonomy: bridge {t}: 0 received, 0 relayed, 0 denied, 0 malformed, 0 failed{safe}"
            );
            assert!(lines.contains(&want), "{want}: {lines:#?}");
        }
    }
}
