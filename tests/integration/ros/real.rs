//! The real-ROS suite: the `autonomy` binary against a real ROS 2 Jazzy at `/opt/ros/jazzy`
//! (`../shared/ros2`, installed by `.ci/run`): the real `ros2` CLI, `ros2 launch`, rclpy nodes
//! and colcon, on both RMWs (`rmw_fastrtps_cpp`, the default, and `rmw_cyclonedds_cpp`).
//!
//! Every case runs against the default build (ros2-client) and, in the tests named `…_r2r`,
//! against the r2r build (`cargo build --features r2r`, a real rcl node) whose binary
//! `AUTONOMY_BIN_R2R` names (`.ci/run` builds it).
//!
//! Without `/opt/ros/jazzy` (or, for the `…_r2r` tests, without `AUTONOMY_BIN_R2R`) every test
//! here prints one line saying it was skipped, except with `CI=true`, where they fail. Each test has its own `ROS_DOMAIN_ID`, so they run in parallel;
//! every `ros2` command runs with `--no-daemon` where it has the flag, under a timeout, in its
//! own process group that is killed if the test fails. One colcon workspace (this repo's
//! `ros_msgs/autonomy_msgs` and the test package `tests/ros_pkgs/autonomy_test_nodes`) is built
//! once per test run and shared.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::common::*;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;

const FASTDDS: &str = "rmw_fastrtps_cpp";
const CYCLONE: &str = "rmw_cyclonedds_cpp";

const MARKERS: [&str; 5] = [
    "PASS ros2-telemetry-active context=native",
    "PASS ros2-launch-allowed context=native",
    "PASS ros2-stack-start context=native",
    "PASS ros2-policy-enforced context=native",
    "PASS ros2-wal-recording context=native",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `autonomy` binary a case runs.
struct Build {
    /// `dds` (the default build, ros2-client) or `r2r` (built with `--features r2r`).
    name: &'static str,
    bin: PathBuf,
}

/// The default build.
fn dds() -> Build {
    Build {
        name: "dds",
        bin: bin(),
    }
}

/// The r2r build from `AUTONOMY_BIN_R2R`, when ROS is there and the variable names a file.
/// Without it: a failure under `CI=true`, else one skip line.
fn r2r(test: &str) -> Option<Build> {
    if !have_ros(test) {
        return None;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    match std::env::var_os("AUTONOMY_BIN_R2R").map(PathBuf::from) {
        Some(p) if p.is_file() => Some(Build {
            name: "r2r",
            bin: p,
        }),
        Some(p) => panic!(
            "AUTONOMY_BIN_R2R={} is not a file (cargo build --features r2r builds it)",
            p.display()
        ),
        None if ci => panic!(
            "AUTONOMY_BIN_R2R is not set: CI must build the r2r variant (.ci/run does) for {test}"
        ),
        None => {
            eprintln!(
                "skipped {test}: AUTONOMY_BIN_R2R does not name an `autonomy` built with --features r2r"
            );
            None
        }
    }
}

/// A fresh domain id per call, apart from every other ROS test of the suite.
fn domain() -> u16 {
    ros_domain()
}

/// Where one ROS test runs: its RMW, its domain, optionally the colcon workspace overlay.
#[derive(Clone)]
struct RosEnv {
    rmw: &'static str,
    domain: u16,
    overlay: Option<PathBuf>,
    log_dir: PathBuf,
}

impl RosEnv {
    fn new(rmw: &'static str, overlay: Option<&Path>) -> RosEnv {
        // Inside this run's workspace directory, removed with it by a later run.
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ros_ws-{}", std::process::id()))
            .join("ros_log");
        RosEnv {
            rmw,
            domain: domain(),
            overlay: overlay.map(Path::to_path_buf),
            log_dir,
        }
    }

    /// `argv` with ROS (and the overlay) sourced: `bash -c 'source …; exec "$@"'`.
    fn command(&self, argv: &[&str]) -> Command {
        let mut script = format!("source {ROS_SETUP}");
        if let Some(ws) = &self.overlay {
            script.push_str(&format!(" && source {}/install/setup.bash", ws.display()));
        }
        script.push_str(" && exec \"$@\"");
        let mut c = Command::new("bash");
        c.arg("-c").arg(script).arg("bash").args(argv);
        self.env(&mut c);
        c
    }

    fn env(&self, c: &mut Command) {
        c.env("ROS_DOMAIN_ID", self.domain.to_string())
            .env("RMW_IMPLEMENTATION", self.rmw)
            .env("ROS_LOG_DIR", &self.log_dir)
            // Python CLIs print through a pipe at once, not when they exit.
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("ROS_DISTRO")
            // Each build runs with its default backend (r2r's is rcl).
            .env_remove("AUTONOMY_ROS_BACKEND")
            .env_remove("AUTONOMY_RUN_WAL_DIR")
            .env_remove("AUTONOMY_WAL_DIR");
    }

    /// Runs a `ros2 …` command to the end (killed after `limit`): (status, stdout, stderr).
    fn run(&self, argv: &[&str], limit: Duration) -> (ExitStatus, String, String) {
        let mut p = Proc::spawn(self.command(argv), &argv.join(" "));
        let st = p.wait(limit);
        let (out, err) = p.output();
        (st, out, err)
    }

    /// `ros2 <argv>` until a line of its stdout is `want` (each try killed after `each`).
    fn run_until(&self, argv: &[&str], want: &str, tries: usize, each: Duration) -> String {
        let mut seen = String::new();
        for _ in 0..tries {
            let (_, out, err) = self.run(argv, each);
            assert_no_type_hash_warnings(&err);
            if out.lines().any(|l| l.trim_end() == want) {
                return out;
            }
            seen = format!("{out}{err}");
        }
        panic!(
            "`{}` never showed {want:?} ({}, domain {}); last output:\n{seen}",
            argv.join(" "),
            self.rmw,
            self.domain
        );
    }
}

/// Jazzy's Cyclone RMW warns about every discovered endpoint without a type hash.
fn assert_no_type_hash_warnings(stderr: &str) {
    assert!(
        !stderr.contains("Failed to parse type hash"),
        "a ROS peer could not read our type hashes:\n{stderr}"
    );
}

/// The tracing lines (warn or error) in the runtime's stderr, and rcl's own warnings
/// (`[WARN] [<time>] [rcl]: …`): there must be none.
fn log_noise(lines: &[String]) -> Vec<String> {
    let rcutils = |l: &str| {
        ["[WARN] [", "[FATAL] ["].iter().any(|sev| {
            l.strip_prefix(sev)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
    };
    lines
        .iter()
        .filter(|l| l.contains(" WARN") || l.contains("ERROR") || rcutils(l))
        .cloned()
        .collect()
}

/// The colcon workspace with `autonomy_msgs` (from `ros_msgs/`) and `autonomy_test_nodes`,
/// built once per test run; every test that needs it waits for the one build.
fn workspace() -> PathBuf {
    static WS: OnceLock<Mutex<Option<Result<PathBuf, String>>>> = OnceLock::new();
    let cell = WS.get_or_init(|| Mutex::new(None));
    let mut g = cell.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(build_workspace());
    }
    match g.as_ref().expect("set above") {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn colcon() -> PathBuf {
    let venv = root().join(".venv/bin/colcon");
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("colcon"))
            .find(|c| c.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!("the real-ROS suite needs colcon: .venv/bin/pip install colcon-common-extensions (.ci/run does)")
    })
}

fn build_workspace() -> Result<PathBuf, String> {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // Workspaces of earlier runs whose process is gone are removed.
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = name
                .strip_prefix("ros_ws-")
                .and_then(|p| p.parse::<i32>().ok())
                && kill(Pid::from_raw(pid), None).is_err()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let ws = base.join(format!("ros_ws-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&ws);
    let src = ws.join("src");
    std::fs::create_dir_all(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    for pkg in [
        root().join("ros_msgs/autonomy_msgs"),
        root().join("tests/ros_pkgs/autonomy_test_nodes"),
    ] {
        let st = Command::new("cp")
            .arg("-r")
            .arg(&pkg)
            .arg(&src)
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("cannot copy {}", pkg.display()));
        }
    }
    let env = RosEnv::new(FASTDDS, None);
    let colcon = colcon();
    let mut cmd = env.command(&[
        colcon.to_str().expect("utf-8 path"),
        "build",
        "--event-handlers",
        "console_direct-",
    ]);
    cmd.current_dir(&ws);
    let t0 = Instant::now();
    let mut p = Proc::spawn(cmd, "colcon build");
    let st = p.wait(Duration::from_secs(600));
    let (out, err) = p.output();
    if !st.success() {
        return Err(format!(
            "colcon build failed ({st}):\n{out}\n{err}\n(see {}/log)",
            ws.display()
        ));
    }
    eprintln!("colcon build of the test workspace took {:?}", t0.elapsed());
    Ok(ws)
}

/// `(decision, output_json, reason, audit_id, rules_json)` from `ros2 service call` output,
/// whose response line is a Python repr: `autonomy_msgs.srv.Tool_Response(decision='allow', …)`.
fn parse_response(out: &str) -> (String, String, String, String, String) {
    let line = out
        .lines()
        .find(|l| l.contains("Tool_Response("))
        .unwrap_or_else(|| panic!("no response in:\n{out}"));
    let field = |name: &str| -> String {
        let pat = format!("{name}=");
        let i = line
            .find(&pat)
            .unwrap_or_else(|| panic!("{name} in {line}"))
            + pat.len();
        let rest = &line[i..];
        let q = rest.chars().next().expect("quote");
        let mut val = String::new();
        let mut chars = rest[1..].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => val.push(chars.next().unwrap_or('\\')),
                c if c == q => break,
                c => val.push(c),
            }
        }
        val
    };
    (
        field("decision"),
        field("output_json"),
        field("reason"),
        field("audit_id"),
        field("rules_json"),
    )
}

fn call_tool(
    env: &RosEnv,
    kind: &str,
    params_json: &str,
) -> (String, String, String, String, String) {
    // YAML flow mapping; params_json as a single-quoted YAML string.
    let req = format!(
        "{{kind: '{kind}', params_json: '{}'}}",
        params_json.replace('\'', "''")
    );
    let (st, out, err) = env.run(
        &[
            "ros2",
            "service",
            "call",
            "/autonomy/tool",
            "autonomy_msgs/srv/Tool",
            &req,
        ],
        Duration::from_secs(60),
    );
    assert!(st.success(), "service call failed ({st}):\n{out}\n{err}");
    assert_no_type_hash_warnings(&err);
    parse_response(&out)
}

/// `autonomy runtime start --demo --ros` of `build` on a free loopback port, with ROS and the
/// overlay sourced (the r2r build links rcl and the message libraries); its HTTP address.
fn start_runtime(env: &RosEnv, build: &Build, wal: &Path) -> (Proc, SocketAddr) {
    let mut p = Proc::spawn(
        env.command(&[
            build.bin.to_str().unwrap(),
            "runtime",
            "start",
            "--listen",
            "127.0.0.1:0",
            "--wal-dir",
            wal.to_str().unwrap(),
            "--demo",
            "--ros",
        ]),
        &format!("autonomy runtime start ({})", build.name),
    );
    let line = p.wait_for("listening on http://", Duration::from_secs(60));
    let addr = line
        .split("listening on http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (p, addr)
}

/// The RIHS01 hash `ros2 topic info -v` shows for the publisher of `topic` on node `/autonomy`.
fn advertised_hash(env: &RosEnv, topic: &str) -> String {
    // `topic info` has no `--spin-time`: each try discovers for 0.5 s, which a loaded machine
    // can miss with Fast DDS, so tries go on until a deadline rather than a count.
    let end = Instant::now() + Duration::from_secs(40);
    let mut last = String::new();
    while Instant::now() < end {
        let (_, out, err) = env.run(
            &["ros2", "topic", "info", "-v", "--no-daemon", topic],
            Duration::from_secs(30),
        );
        assert_no_type_hash_warnings(&err);
        // Blocks of `Node name: …` … `Topic type hash: …` per endpoint.
        let mut node = "";
        for l in out.lines().map(str::trim) {
            if let Some(n) = l.strip_prefix("Node name: ") {
                node = n;
            } else if let Some(h) = l.strip_prefix("Topic type hash: ")
                && node == "autonomy"
            {
                return h.to_string();
            }
        }
        last = out;
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!(
        "ros2 topic info -v {topic} shows no publisher on /autonomy ({}) in 40 s; last output:\n{last}",
        env.rmw
    );
}

/// The `type_hashes` rosidl wrote for one interface: (type name, RIHS01 string).
fn rosidl_hashes(file: &Path) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display())),
    )
    .unwrap();
    v["type_hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["type_name"].as_str().unwrap().to_string(),
                h["hash_string"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The node in the graph, its topics and service with their types, the tool service (allow
/// with output, deny with reason, malformed params; audit ids in the WAL as `source: ros2`), a
/// decision made over HTTP seen by `ros2 topic echo`, the type hashes peers see on the wire, no
/// type-hash warnings from the CLI, no warnings from us.
fn graph_service_and_decisions(rmw: &'static str, build: Build) {
    let ws = workspace();
    let env = RosEnv::new(rmw, Some(&ws));
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let (mut d, addr) = start_runtime(&env, &build, &wal);
    let start = d
        .err
        .iter()
        .find(|l| l.contains("ROS 2 node /autonomy"))
        .cloned()
        .unwrap_or_default();
    let want = match build.name {
        "r2r" => "(rcl via r2r, ",
        _ => " service mapping)",
    };
    assert!(start.contains(want), "{}: start line {start:?}", build.name);
    let tool = |body: &str| {
        http(
            addr,
            "POST",
            "/v1/tool",
            Some(("application/json", body.as_bytes())),
        )
    };

    // Discovery gets 2 s per try instead of the CLI's 0.5 s: a loaded machine (the whole suite
    // running) can take longer than that to see a Fast DDS participant.
    env.run_until(
        &["ros2", "node", "list", "--no-daemon", "--spin-time", "2"],
        "/autonomy",
        5,
        Duration::from_secs(30),
    );
    let topics = env.run_until(
        &[
            "ros2",
            "topic",
            "list",
            "-t",
            "--no-daemon",
            "--spin-time",
            "2",
        ],
        "/autonomy/decisions [autonomy_msgs/msg/Decision]",
        5,
        Duration::from_secs(30),
    );
    assert!(
        topics.contains("/autonomy/markers [std_msgs/msg/String]"),
        "{topics}"
    );
    let services = env.run_until(
        &[
            "ros2",
            "service",
            "list",
            "-t",
            "--no-daemon",
            "--spin-time",
            "2",
        ],
        "/autonomy/tool [autonomy_msgs/srv/Tool]",
        5,
        Duration::from_secs(30),
    );
    assert!(
        !services.contains("/autonomy/get_parameters"),
        "the node serves no parameter services: {services}"
    );

    let (decision, output, reason, allow_id, rules) =
        call_tool(&env, "tool.echo", r#"{"message": "hi"}"#);
    assert_eq!(
        (decision.as_str(), output.as_str(), reason.as_str()),
        ("allow", "\"hi\"", "")
    );
    // The demo policy's rule that allowed it, with its METADATA id, as JSON text.
    let rules: Value = serde_json::from_str(&rules).unwrap_or_else(|e| panic!("{rules}: {e}"));
    assert_eq!(rules[0]["id"], "DEMO-ECHO", "{rules}");
    assert_eq!(rules[0]["file"], "demo.rego", "{rules}");
    let (decision, output, reason, deny_id, rules) =
        call_tool(&env, "tool.shell", r#"{"command": "id"}"#);
    assert_eq!((decision.as_str(), output.as_str()), ("deny", ""));
    assert!(reason.contains("always blocked by policy"), "{reason}");
    let rules: Value = serde_json::from_str(&rules).unwrap_or_else(|e| panic!("{rules}: {e}"));
    assert_eq!(rules[0]["id"], "DEMO-SHELL", "{rules}");
    let (decision, _, reason, bad_id, rules) = call_tool(&env, "tool.echo", "not json");
    assert_eq!(rules, "[]", "a malformed request is decided by no rule");
    assert_eq!(decision, "deny");
    assert!(
        reason.starts_with("malformed request:") && reason.contains("not valid JSON"),
        "{reason}"
    );
    assert_eq!(bad_id, "", "a malformed request is not recorded");
    for id in [&allow_id, &deny_id] {
        let recs = records_for(&wal, id);
        assert!(
            recs.iter()
                .any(|r| r["type"] == "decision" && r["source"] == "ros2"),
            "no decision record with source ros2 for {id}: {recs:?}"
        );
    }

    // `ros2 topic echo` sees a decision made over HTTP. The echo subscribes when it is up,
    // which we cannot see from here, so HTTP calls repeat until one is printed.
    let mut echo = Proc::spawn(
        env.command(&[
            "ros2",
            "topic",
            "echo",
            "--no-daemon",
            "/autonomy/decisions",
            "autonomy_msgs/msg/Decision",
        ]),
        "ros2 topic echo /autonomy/decisions",
    );
    let mut http_ids = Vec::new();
    let end = Instant::now() + Duration::from_secs(40);
    let seen = loop {
        let r = tool(r#"{"kind": "tool.echo", "params": {"message": "over http"}}"#);
        assert_eq!(r.status, 200);
        http_ids.push(r.json()["audit_id"].as_str().unwrap().to_string());
        std::thread::sleep(Duration::from_millis(500));
        while echo.poll(Duration::ZERO) {}
        if let Some(l) = echo.out.iter().find(|l| {
            http_ids
                .iter()
                .any(|id| l.trim() == format!("audit_id: {id}"))
        }) {
            break l.clone();
        }
        assert!(
            Instant::now() < end,
            "ros2 topic echo printed no HTTP decision: {:#?} {:#?}",
            echo.out,
            echo.err
        );
    };
    let at = echo.out.iter().position(|l| *l == seen).unwrap();
    let msg: Vec<&str> = echo.out[at..]
        .iter()
        .take_while(|l| *l != "---")
        .map(String::as_str)
        .collect();
    assert!(msg.contains(&"source: http"), "{msg:?}");
    assert!(msg.contains(&"kind: tool.echo"), "{msg:?}");
    assert!(msg.contains(&"decision: allow"), "{msg:?}");
    echo.interrupt(Duration::from_secs(20));
    assert_no_type_hash_warnings(&echo.output().1);

    // What peers see on the wire: the hashes rosidl generated (for the r2r build rcl sends
    // rosidl's own; for the default build they are computed here).
    let decision =
        rosidl_hashes(&ws.join("install/autonomy_msgs/share/autonomy_msgs/msg/Decision.json"));
    assert_eq!(advertised_hash(&env, "/autonomy/decisions"), decision[0].1);
    let string = rosidl_hashes(Path::new("/opt/ros/jazzy/share/std_msgs/msg/String.json"));
    assert_eq!(advertised_hash(&env, "/autonomy/markers"), string[0].1);

    d.signal(Signal::SIGTERM);
    let st = d.wait(Duration::from_secs(20));
    assert!(st.success(), "{st}");
    assert_eq!(log_noise(&d.err), Vec::<String>::new(), "{:#?}", d.err);
}

#[test]
fn graph_service_and_decisions_fastdds() {
    if have_ros("graph_service_and_decisions_fastdds") {
        graph_service_and_decisions(FASTDDS, dds());
    }
}

#[test]
fn graph_service_and_decisions_cyclone() {
    if have_ros("graph_service_and_decisions_cyclone") {
        graph_service_and_decisions(CYCLONE, dds());
    }
}

#[test]
fn graph_service_and_decisions_fastdds_r2r() {
    if let Some(b) = r2r("graph_service_and_decisions_fastdds_r2r") {
        graph_service_and_decisions(FASTDDS, b);
    }
}

#[test]
fn graph_service_and_decisions_cyclone_r2r() {
    if let Some(b) = r2r("graph_service_and_decisions_cyclone_r2r") {
        graph_service_and_decisions(CYCLONE, b);
    }
}

/// `ros2 topic echo` output with `--field data`: the data lines.
fn echoed(p: &Proc) -> Vec<String> {
    p.out
        .iter()
        .filter(|l| l.starts_with("PASS ") || l.starts_with("DENY "))
        .cloned()
        .collect()
}

/// `autonomy run ros2.launch` with the real `ros2 launch` on the colcon-built test package: a
/// plain `ros2 topic echo` started before the run and a transient-local one started during the
/// launch each see the five markers in order; the launched rclpy node's HTTP call is in the WAL;
/// the node that died with exit code 3 is a lifecycle record.
fn real_launch_and_markers(rmw: &'static str, build: Build) {
    let ws = workspace();
    let env = RosEnv::new(rmw, Some(&ws));
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let hold = tmp.path().join("hold");
    let echo = |extra: &[&str]| {
        let mut argv = vec!["ros2", "topic", "echo", "--no-daemon", "--field", "data"];
        argv.extend_from_slice(extra);
        argv.extend(["/autonomy/markers", "std_msgs/msg/String"]);
        Proc::spawn(env.command(&argv), "ros2 topic echo /autonomy/markers")
    };
    // The way users watch a run: a plain echo, started first (it subscribes with the CLI's
    // default QoS, best effort and volatile, as no publisher is there yet).
    let mut early = echo(&[]);
    env.run_until(
        &["ros2", "topic", "info", "--no-daemon", "/autonomy/markers"],
        "Subscription count: 1",
        10,
        Duration::from_secs(30),
    );

    let hold_arg = format!("hold:={}", hold.display());
    // rcl on Fast DDS matched the waiting echo after 0.4 to 3 s here (Cyclone: 0.3 s; the
    // ros2-client build: 1.5 s), so the r2r build runs with the settle docs/ros2.md advises.
    let settle = match build.name {
        "r2r" => "5",
        _ => "2",
    };
    let autonomy = &build.bin;
    let mut run = Proc::spawn(
        env.command(&[
            autonomy.to_str().unwrap(),
            "run",
            "--dir",
            wal.to_str().unwrap(),
            "--grace-period",
            "2",
            "--ros-settle",
            settle,
            "ros2.launch",
            "autonomy_test_nodes",
            "run.launch.py",
            &hold_arg,
            // A launch argument that is also a valid ROS remap rule: it is for the launch, and
            // rcl must not take it as a rule for our node (it warns when it does).
            "robot:=alpha",
        ]),
        "autonomy run ros2.launch",
    );
    let caller = run.wait_for("caller got ", Duration::from_secs(60));
    // A late joiner with transient-local durability, while the launch still runs. `ros2 topic
    // echo` makes it best effort; only our ros2-client backend sends the history to a best-effort
    // reader (a patch), rcl's DDS writers serve it to reliable ones only.
    let late_qos: &[&str] = match build.name {
        "r2r" => &[
            "--qos-durability",
            "transient_local",
            "--qos-reliability",
            "reliable",
        ],
        _ => &["--qos-durability", "transient_local"],
    };
    let mut late = echo(late_qos);
    late.wait_for(MARKERS[2], Duration::from_secs(60));
    std::fs::write(&hold, b"").unwrap();
    let st = run.wait(Duration::from_secs(60));
    let (out, err) = run.output();
    assert_eq!(st.code(), Some(0), "{out}\n{err}");
    let printed: Vec<&str> = run
        .out
        .iter()
        .filter(|l| l.starts_with("PASS ros2-"))
        .map(String::as_str)
        .collect();
    assert_eq!(printed, MARKERS, "{out}");
    assert_eq!(log_noise(&run.err), Vec::<String>::new(), "{err}");

    for (name, p) in [("early", &mut early), ("late", &mut late)] {
        // Marker 5 is acknowledged (or its linger ended) before `autonomy` exited.
        let end = Instant::now() + Duration::from_secs(10);
        while echoed(p).len() < 5 && Instant::now() < end {
            p.poll(Duration::from_millis(100));
        }
        p.interrupt(Duration::from_secs(20));
        assert_eq!(
            echoed(p),
            MARKERS,
            "{name} subscriber ({rmw}, {}): {:#?}",
            build.name,
            p.out
        );
        assert_no_type_hash_warnings(&p.output().1);
    }

    // The launched node's call, recorded in the same WAL.
    let id = caller.split("caller got ").nth(1).unwrap().trim();
    let recs = records_for(&wal, id);
    assert!(
        recs.iter().any(|r| r["type"] == "decision"
            && r["kind"] == "tool.echo"
            && r["source"] == "http"
            && r["params"]["message"] == "from a launched rclpy node"),
        "{recs:?}"
    );
    // The crasher's death, parsed from the real launch's line.
    let all = wal_records(&wal);
    let died: Vec<&Value> = all
        .iter()
        .filter(|r| r["type"] == "lifecycle" && r["event"] == "process.died")
        .collect();
    assert_eq!(died.len(), 1, "{all:?}");
    assert_eq!(died[0]["exit_code"], 3);
    assert!(
        died[0]["cmd"]
            .as_str()
            .unwrap()
            .contains("test_node.py crash 3"),
        "{}",
        died[0]
    );
    let (code, v) = wal_verify(&wal);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn real_launch_and_markers_fastdds() {
    if have_ros("real_launch_and_markers_fastdds") {
        real_launch_and_markers(FASTDDS, dds());
    }
}

#[test]
fn real_launch_and_markers_cyclone() {
    if have_ros("real_launch_and_markers_cyclone") {
        real_launch_and_markers(CYCLONE, dds());
    }
}

#[test]
fn real_launch_and_markers_fastdds_r2r() {
    if let Some(b) = r2r("real_launch_and_markers_fastdds_r2r") {
        real_launch_and_markers(FASTDDS, b);
    }
}

#[test]
fn real_launch_and_markers_cyclone_r2r() {
    if let Some(b) = r2r("real_launch_and_markers_cyclone_r2r") {
        real_launch_and_markers(CYCLONE, b);
    }
}

fn group_alive(pgid: i32) -> bool {
    !matches!(
        killpg(Pid::from_raw(pgid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Ctrl-C with a real `ros2 launch` whose node ignores SIGINT and SIGTERM: the escalation ends
/// it, and no process of the launch outlives `autonomy`.
fn ctrl_c_real_launch(rmw: &'static str, build: Build) {
    let ws = workspace();
    let env = RosEnv::new(rmw, Some(&ws));
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("stubborn.json");
    let arg = format!("pidfile:={}", pidfile.display());
    let autonomy = &build.bin;
    let mut run = Proc::spawn(
        env.command(&[
            autonomy.to_str().unwrap(),
            "run",
            "--grace-period",
            "1",
            "--ros-settle",
            "0",
            "ros2.launch",
            "autonomy_test_nodes",
            "stubborn.launch.py",
            &arg,
        ]),
        "autonomy run ros2.launch (stubborn)",
    );
    run.wait_for("process started with pid", Duration::from_secs(60));
    let end = Instant::now() + Duration::from_secs(30);
    while !pidfile.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let rec: Value = serde_json::from_str(&std::fs::read_to_string(&pidfile).unwrap()).unwrap();
    let (pid, pgid) = (
        rec["pid"].as_i64().unwrap() as i32,
        rec["pgid"].as_i64().unwrap() as i32,
    );
    assert_ne!(
        pgid,
        run.pid().as_raw(),
        "launch runs in its own process group"
    );
    let t0 = Instant::now();
    let st = run.interrupt(Duration::from_secs(60));
    let (out, err) = run.output();
    assert!(!st.success(), "{out}\n{err}");
    assert!(
        err.contains("SIGTERM to its process group"),
        "escalation announced: {err}"
    );
    assert!(
        !group_alive(pgid),
        "a process of the launch outlived autonomy"
    );
    assert!(
        kill(Pid::from_raw(pid), None).is_err(),
        "the stubborn node survived"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "SIGTERM came before the grace period"
    );
    let printed: Vec<&str> = run
        .out
        .iter()
        .filter(|l| l.starts_with("PASS ros2-"))
        .map(String::as_str)
        .collect();
    assert_eq!(printed, MARKERS[..3]);
}

#[test]
fn ctrl_c_real_launch_fastdds() {
    if have_ros("ctrl_c_real_launch_fastdds") {
        ctrl_c_real_launch(FASTDDS, dds());
    }
}

#[test]
fn ctrl_c_real_launch_cyclone() {
    if have_ros("ctrl_c_real_launch_cyclone") {
        ctrl_c_real_launch(CYCLONE, dds());
    }
}

#[test]
fn ctrl_c_real_launch_fastdds_r2r() {
    if let Some(b) = r2r("ctrl_c_real_launch_fastdds_r2r") {
        ctrl_c_real_launch(FASTDDS, b);
    }
}

#[test]
fn ctrl_c_real_launch_cyclone_r2r() {
    if let Some(b) = r2r("ctrl_c_real_launch_cyclone_r2r") {
        ctrl_c_real_launch(CYCLONE, b);
    }
}

/// `ros2 launch launch/autonomy.launch.py demo:=true`: a service call through it; SIGINT to
/// launch → the runtime logs `stopped` and its WAL verifies.
fn repo_launch_file(rmw: &'static str, build: Build) {
    let ws = workspace();
    let env = RosEnv::new(rmw, Some(&ws));
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let launch_file = root().join("launch/autonomy.launch.py");
    let autonomy = &build.bin;
    let args = [
        format!("autonomy:={}", autonomy.display()),
        format!("wal_dir:={}", wal.display()),
        "listen:=127.0.0.1:0".to_string(),
        "demo:=true".to_string(),
    ];
    let mut argv = vec!["ros2", "launch", launch_file.to_str().unwrap()];
    argv.extend(args.iter().map(String::as_str));
    let mut launch = Proc::spawn(env.command(&argv), "ros2 launch autonomy.launch.py");
    launch.wait_for("listening on http://", Duration::from_secs(60));

    let (decision, output, _, id, _) = call_tool(&env, "tool.echo", r#"{"message": "via launch"}"#);
    assert_eq!(
        (decision.as_str(), output.as_str()),
        ("allow", "\"via launch\"")
    );

    let st = launch.interrupt(Duration::from_secs(60));
    let (out, err) = launch.output();
    assert!(st.success(), "launch exit {st}\n{out}\n{err}");
    assert!(
        out.lines()
            .chain(err.lines())
            .any(|l| l.ends_with("autonomy: stopped")),
        "{out}\n{err}"
    );
    assert!(
        records_for(&wal, &id)
            .iter()
            .any(|r| r["type"] == "decision" && r["source"] == "ros2")
    );
    let (code, v) = wal_verify(&wal);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn repo_launch_file_fastdds() {
    if have_ros("repo_launch_file_fastdds") {
        repo_launch_file(FASTDDS, dds());
    }
}

#[test]
fn repo_launch_file_cyclone() {
    if have_ros("repo_launch_file_cyclone") {
        repo_launch_file(CYCLONE, dds());
    }
}

#[test]
fn repo_launch_file_fastdds_r2r() {
    if let Some(b) = r2r("repo_launch_file_fastdds_r2r") {
        repo_launch_file(FASTDDS, b);
    }
}

#[test]
fn repo_launch_file_cyclone_r2r() {
    if let Some(b) = r2r("repo_launch_file_cyclone_r2r") {
        repo_launch_file(CYCLONE, b);
    }
}

/// `colcon build` of `ros_msgs/autonomy_msgs` works, `ros2 interface show` shows the service,
/// and the type hashes our node advertises are the ones this rosidl generated (for our package
/// just built, for the standard ones as installed).
#[test]
fn colcon_build_interface_show_and_type_hashes() {
    if !have_ros("colcon_build_interface_show_and_type_hashes") {
        return;
    }
    let ws = workspace();
    let env = RosEnv::new(FASTDDS, Some(&ws));
    let (st, out, err) = env.run(
        &["ros2", "interface", "show", "autonomy_msgs/srv/Tool"],
        Duration::from_secs(60),
    );
    assert!(st.success(), "{out}\n{err}");
    let srv = std::fs::read_to_string(root().join("ros_msgs/autonomy_msgs/srv/Tool.srv")).unwrap();
    assert_eq!(
        out.trim(),
        srv.trim(),
        "ros2 interface show prints the package's definition"
    );

    let share = ws.join("install/autonomy_msgs/share/autonomy_msgs");
    let sys = Path::new("/opt/ros/jazzy/share");
    let mut checked = Vec::new();
    for file in [
        share.join("msg/Decision.json"),
        share.join("srv/Tool.json"),
        sys.join("std_msgs/msg/String.json"),
        sys.join("rmw_dds_common/msg/ParticipantEntitiesInfo.json"),
        sys.join("rcl_interfaces/msg/ParameterEvent.json"),
    ] {
        for (t, hash) in rosidl_hashes(&file) {
            assert_eq!(
                autonomy::ros::type_hash::rihs01(&t),
                Some(hash.as_str()),
                "{t}"
            );
            checked.push(t);
        }
    }
    for t in autonomy::ros::type_hash::ENDPOINT_TYPES {
        assert!(checked.iter().any(|c| c == t), "{t} not checked");
    }
    for t in [
        "autonomy_msgs/srv/Tool",
        "autonomy_msgs/srv/Tool_Event",
        "service_msgs/msg/ServiceEventInfo",
    ] {
        assert!(checked.iter().any(|c| c == t), "{t} not checked");
    }
}

/// `scripts/robot-check.sh`, the check users run on a robot: every line PASS, exit 0 (on
/// Cyclone, where missing type hashes would show; the other tests cover both RMWs).
#[test]
fn robot_check_script_passes() {
    if have_ros("robot_check_script_passes") {
        robot_check(dds());
    }
}

#[test]
fn robot_check_script_passes_r2r() {
    if let Some(b) = r2r("robot_check_script_passes_r2r") {
        robot_check(b);
    }
}

fn robot_check(build: Build) {
    let ws = workspace();
    let env = RosEnv::new(CYCLONE, Some(&ws));
    let script = root().join("scripts/robot-check.sh");
    let mut cmd = env.command(&[
        script.to_str().unwrap(),
        "autonomy_test_nodes",
        "run.launch.py",
    ]);
    cmd.env("AUTONOMY", &build.bin);
    let mut p = Proc::spawn(cmd, "scripts/robot-check.sh");
    let st = p.wait(Duration::from_secs(240));
    let (out, err) = p.output();
    assert!(st.success(), "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    let (summary, checks) = lines.split_last().expect("output");
    assert!(checks.iter().all(|l| l.starts_with("PASS ")), "{out}");
    for name in [
        "node-list",
        "service-allow",
        "service-deny",
        "service-malformed",
        "decisions-echo",
        "wal-source-ros2",
        "markers",
        "type-hashes",
        "runtime-log",
    ] {
        assert!(
            checks
                .iter()
                .any(|l| l.starts_with(&format!("PASS {name} "))),
            "no PASS {name}:\n{out}"
        );
    }
    assert!(summary.ends_with(" passed, 0 failed"), "{summary}");
}
