//! `autonomy-ros-bench`: what the ROS path costs (SPEC §9), side by side in one run.
//!
//! Not a test; needs a sourced ROS 2 (it is an rcl program through r2r) with `autonomy_msgs`.
//! Per RMW (`--rmw`, default Fast DDS and Cyclone) and per daemon build (`--daemon`, the default
//! ros2-client build, and `--daemon-r2r`, the `--features r2r` build):
//!
//! * a plain rcl node (this binary, `--serve-plain`) serves `/plain/tool`, the same
//!   `autonomy_msgs/srv/Tool`, answering every request at once with a fixed response: no policy,
//!   no WAL;
//! * `autonomy runtime start --demo --ros` serves `/autonomy/tool` (WAL fsync on, the default;
//!   and again with `--wal-sync none`, which shows the cost without the disk);
//! * one rcl client process (this binary, `--client`) calls them one at a time, alternating
//!   blocks of calls between the two, and reports each round trip (send → answer taken);
//!
//! plus the raw `fdatasync` latency of the disk the WAL is on, measured in the same run. The
//! verdict: `/autonomy/tool` p50 minus the plain p50 is at most one fsync (p50) + 200 µs.
//! See `docs/benchmarks.md`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use autonomy::wal::Preallocate;
use autonomy_bench::fsync;
use clap::Parser;
use futures::{FutureExt, StreamExt};
use r2r::QosProfile;
use r2r::autonomy_msgs::srv::Tool;
use serde_json::{Value, json};

/// The gated service.
const TOOL_SERVICE: &str = "/autonomy/tool";
/// The plain service (same type).
const PLAIN_SERVICE: &str = "/plain/tool";
/// One call gives up after this long (counted as an error).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server may take to be discovered.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The ROS path's cost: `/autonomy/tool` against a plain rcl service of the same type.
#[derive(Parser)]
#[command(name = "autonomy-ros-bench")]
struct Args {
    /// The default (ros2-client) daemon [default: `autonomy` next to this executable].
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// The r2r daemon (`cargo build --release --features r2r`, copied aside); without it only
    /// the default build is measured.
    #[arg(long, value_name = "PATH")]
    daemon_r2r: Option<PathBuf>,
    /// RMWs to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rmw_fastrtps_cpp,rmw_cyclonedds_cpp"
    )]
    rmw: Vec<String>,
    /// WAL sync modes of the daemon to measure (`fsync` is the one the target is about).
    #[arg(long, value_delimiter = ',', default_value = "fsync,none")]
    sync: Vec<String>,
    /// Measured calls per service and case.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Blocks the calls are split into, alternating between the two services.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Unmeasured calls per service first.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Parent directory of the scratch WAL dirs and the fdatasync file [default: target/bench].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Also write the Markdown report here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Internal: serve `/plain/tool` until killed.
    #[arg(long, hide = true)]
    serve_plain: bool,
    /// Internal: the client; prints one JSON line per service.
    #[arg(long, hide = true)]
    client: bool,
}

fn say(line: &str) {
    eprintln!("autonomy-ros-bench: {line}");
}

fn fail(msg: impl std::fmt::Display) -> ! {
    say(&format!("error: {msg}"));
    std::process::exit(1)
}

/// rcl with no arguments but the program name (ours are not ROS arguments).
fn node(name: &str) -> r2r::Node {
    let ctx = r2r::Context::create_with_args(vec!["autonomy-ros-bench".into()])
        .unwrap_or_else(|e| fail(format!("rcl init: {e}")));
    r2r::Node::create(ctx, name, "/").unwrap_or_else(|e| fail(format!("node {name}: {e}")))
}

/// The request both services get.
fn request() -> Tool::Request {
    Tool::Request {
        kind: "tool.echo".into(),
        params_json: r#"{"message":"hello"}"#.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// The plain server: one thread takes each request and answers it, nothing else.

fn serve_plain() -> ! {
    let mut node = node("plain_tool");
    let mut requests = node
        .create_service::<Tool::Service>(PLAIN_SERVICE, QosProfile::services_default())
        .unwrap_or_else(|e| fail(format!("{PLAIN_SERVICE}: {e}")));
    // The size of the daemon's answer to the same request.
    let answer = Tool::Response {
        decision: "allow".into(),
        output_json: "\"hello\"".into(),
        reason: String::new(),
        policy_ref: "embedded:demo".into(),
        audit_id: "01a2353e-8ba4-73cd-a9af-225271842f4f".into(),
    };
    println!("ready");
    let _ = std::io::stdout().flush();
    loop {
        node.spin_once(Duration::from_millis(100));
        while let Some(Some(req)) = requests.next().now_or_never() {
            let _ = req.respond(answer.clone());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client: calls one at a time on one thread (send, spin until the answer is taken).

fn spin_until<F: std::future::Future>(
    node: &mut r2r::Node,
    fut: F,
    limit: Duration,
) -> Option<F::Output> {
    futures::pin_mut!(fut);
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = fut.as_mut().now_or_never() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= end {
            return None;
        }
        node.spin_once((end - now).min(Duration::from_millis(50)));
    }
}

/// One round trip: (latency ns, decision) or an error.
fn call(
    node: &mut r2r::Node,
    client: &r2r::Client<Tool::Service>,
    req: &Tool::Request,
) -> Result<(u64, String), String> {
    let t = Instant::now();
    let fut = client.request(req).map_err(|e| e.to_string())?;
    match spin_until(node, fut, CALL_TIMEOUT) {
        Some(Ok(resp)) => Ok((t.elapsed().as_nanos() as u64, resp.decision)),
        Some(Err(e)) => Err(e.to_string()),
        None => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

struct Series {
    service: &'static str,
    client: r2r::Client<Tool::Service>,
    lat: Vec<u64>,
    errors: u64,
    decisions: std::collections::BTreeMap<String, u64>,
}

fn client(a: &Args) -> ! {
    let mut node = node("autonomy_ros_bench");
    let mut series: Vec<Series> = [PLAIN_SERVICE, TOOL_SERVICE]
        .into_iter()
        .map(|service| Series {
            service,
            client: node
                .create_client::<Tool::Service>(service, QosProfile::services_default())
                .unwrap_or_else(|e| fail(format!("client {service}: {e}"))),
            lat: Vec::with_capacity(a.calls),
            errors: 0,
            decisions: Default::default(),
        })
        .collect();
    for s in &series {
        let ready = r2r::Node::is_available(&s.client).unwrap_or_else(|e| fail(e));
        match spin_until(&mut node, ready, DISCOVERY_TIMEOUT) {
            Some(Ok(())) => {}
            _ => fail(format!(
                "{} not available within {DISCOVERY_TIMEOUT:?}",
                s.service
            )),
        }
    }
    let req = request();
    // Warm-up (also lets the servers match our reply readers), not measured.
    for s in &series {
        for _ in 0..a.warmup {
            let _ = call(&mut node, &s.client, &req);
        }
    }
    let rounds = a.rounds.max(1);
    let per_round = a.calls.div_ceil(rounds);
    for round in 0..rounds {
        // Alternate which service goes first, so drift hits both alike.
        let order: Vec<usize> = if round % 2 == 0 {
            vec![0, 1]
        } else {
            vec![1, 0]
        };
        for i in order {
            let s = &mut series[i];
            for _ in 0..per_round {
                match call(&mut node, &s.client, &req) {
                    Ok((ns, decision)) => {
                        s.lat.push(ns);
                        *s.decisions.entry(decision).or_default() += 1;
                    }
                    Err(_) => s.errors += 1,
                }
            }
        }
    }
    for s in &series {
        println!(
            "{}",
            json!({"service": s.service, "lat_ns": s.lat, "errors": s.errors, "decisions": s.decisions})
        );
    }
    let _ = std::io::stdout().flush();
    std::process::exit(0)
}

// ---------------------------------------------------------------------------------------------
// The orchestrator.

/// A child process, killed (SIGTERM, then SIGKILL) on drop; stderr kept for errors.
struct Proc {
    child: Child,
    what: String,
    err: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `cmd` and waits for a line (stdout or stderr) containing `ready`.
    fn start(mut cmd: Command, what: &str, ready: &str) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| fail(format!("cannot start {what}: {e}")));
        let (tx, rx) = mpsc::channel::<String>();
        let err = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for (r, keep) in [
            (
                Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
                false,
            ),
            (Box::new(child.stderr.take().expect("stderr")), true),
        ] {
            let tx = tx.clone();
            let err = err.clone();
            // Reads to the end, so the child never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if keep && let Ok(mut e) = err.lock() {
                        e.push(line.clone());
                    }
                    let _ = tx.send(line);
                }
            });
        }
        let p = Proc {
            child,
            what: what.to_string(),
            err,
        };
        let end = Instant::now() + START_TIMEOUT;
        while Instant::now() < end {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100))
                && l.contains(ready)
            {
                return p;
            }
        }
        fail(format!("{what} did not start: {}", p.stderr()))
    }

    fn stderr(&self) -> String {
        self.err.lock().map(|e| e.join("\n")).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        say(&format!(
            "{} did not stop on SIGTERM; killing it",
            self.what
        ));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sorted latencies of one series, µs percentiles.
struct Lat(Vec<u64>);

impl Lat {
    fn p(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        self.0[i] as f64 / 1000.0
    }
}

struct Case {
    rmw: String,
    backend: &'static str,
    sync: String,
    plain: Lat,
    gated: Lat,
    errors: (u64, u64),
}

fn env_for(cmd: &mut Command, rmw: &str, domain: u16) {
    cmd.env("RMW_IMPLEMENTATION", rmw)
        .env("ROS_DOMAIN_ID", domain.to_string())
        .env_remove("AUTONOMY_WAL_DIR");
}

fn run_case(
    a: &Args,
    rmw: &str,
    domain: u16,
    (backend, daemon): (&'static str, &Path),
    sync: &str,
    dir: &Path,
) -> Case {
    let exe = std::env::current_exe().expect("current exe");
    let wal = dir.join(format!("wal-{rmw}-{backend}-{sync}"));
    let mut cmd = Command::new(daemon);
    cmd.args([
        "runtime",
        "start",
        "--demo",
        "--ros",
        "--listen",
        "127.0.0.1:0",
    ])
    .arg("--wal-dir")
    .arg(&wal)
    .args(["--wal-sync", sync])
    .env("AUTONOMY_ROS_BACKEND", backend);
    env_for(&mut cmd, rmw, domain);
    let d = Proc::start(
        cmd,
        &format!("the {backend} daemon"),
        "listening on http://",
    );
    let node_line = d
        .stderr()
        .lines()
        .find(|l| l.contains("ROS 2 node /autonomy"))
        .unwrap_or("")
        .to_string();
    say(&format!("{rmw}, {backend}: {node_line}"));

    let mut cmd = Command::new(&exe);
    cmd.arg("--client")
        .args(["--calls", &a.calls.to_string()])
        .args(["--rounds", &a.rounds.to_string()])
        .args(["--warmup", &a.warmup.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    env_for(&mut cmd, rmw, domain);
    let out = cmd
        .output()
        .unwrap_or_else(|e| fail(format!("client: {e}")));
    if !out.status.success() {
        fail(format!("the client failed ({})", out.status));
    }
    let mut plain = None;
    let mut gated = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let mut lat: Vec<u64> = v["lat_ns"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        lat.sort_unstable();
        let errors = v["errors"].as_u64().unwrap_or(0);
        match v["service"].as_str() {
            Some(PLAIN_SERVICE) => plain = Some((Lat(lat), errors)),
            Some(TOOL_SERVICE) => {
                let allowed = v["decisions"]["allow"].as_u64().unwrap_or(0);
                if allowed != lat.len() as u64 {
                    fail(format!(
                        "not every /autonomy/tool answer was allow: {}",
                        v["decisions"]
                    ));
                }
                gated = Some((Lat(lat), errors))
            }
            _ => {}
        }
    }
    drop(d);
    let (Some(plain), Some(gated)) = (plain, gated) else {
        fail("the client printed no results")
    };
    Case {
        rmw: rmw.to_string(),
        backend,
        sync: sync.to_string(),
        errors: (plain.1, gated.1),
        plain: plain.0,
        gated: gated.0,
    }
}

fn fmt_us(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.0}")
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let a = Args::parse();
    if a.serve_plain {
        serve_plain();
    }
    if a.client {
        client(&a);
    }
    if std::env::var_os("AMENT_PREFIX_PATH").is_none() {
        fail("source ROS 2 and autonomy_msgs first (see docs/benchmarks.md)");
    }
    let exe = std::env::current_exe().expect("current exe");
    let daemon = a
        .daemon
        .clone()
        .unwrap_or_else(|| exe.with_file_name("autonomy"));
    if !daemon.is_file() {
        fail(format!(
            "no daemon at {}: cargo build --release (or pass --daemon)",
            daemon.display()
        ));
    }
    let mut builds: Vec<(&'static str, PathBuf)> = vec![("dds", daemon)];
    if let Some(p) = &a.daemon_r2r {
        if !p.is_file() {
            fail(format!("no r2r daemon at {}", p.display()));
        }
        builds.push(("r2r", p.clone()));
    }
    let parent = a
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench")));
    std::fs::create_dir_all(&parent).unwrap_or_else(|e| fail(format!("--dir: {e}")));
    let tmp = tempfile::Builder::new()
        .prefix("autonomy-ros-bench-")
        .tempdir_in(&parent)
        .unwrap_or_else(|e| fail(format!("temp dir: {e}")));
    let dir = tmp.path();
    let load_before = loadavg();
    let started = Instant::now();
    say(&format!(
        "scratch dir {}, load average {load_before}",
        dir.display()
    ));

    // The disk the WAL is on, in the same run.
    let (mut fs_lat, _) = fsync::raw_fdatasync(dir, 2.0, Preallocate::default());
    fs_lat.sort_unstable();
    let fsync = Lat(fs_lat);
    say(&format!(
        "fdatasync p50 {} µs, p99 {} µs",
        fmt_us(fsync.p(0.5)),
        fmt_us(fsync.p(0.99))
    ));

    let mut cases = Vec::new();
    let base = 150 + (std::process::id() % 40) as u16;
    for (i, rmw) in a.rmw.iter().enumerate() {
        let domain = base + i as u16;
        let mut cmd = Command::new(&exe);
        cmd.arg("--serve-plain");
        env_for(&mut cmd, rmw, domain);
        let plain = Proc::start(cmd, "the plain server", "ready");
        for ((backend, bin), sync) in builds
            .iter()
            .flat_map(|b| a.sync.iter().map(move |s| (b, s)))
        {
            let c = run_case(&a, rmw, domain, (backend, bin), sync, dir);
            say(&format!(
                "{rmw}, {backend}, --wal-sync {sync}: plain p50 {} p99 {} µs; /autonomy/tool p50 {} p99 {} µs",
                fmt_us(c.plain.p(0.5)),
                fmt_us(c.plain.p(0.99)),
                fmt_us(c.gated.p(0.5)),
                fmt_us(c.gated.p(0.99))
            ));
            cases.push(c);
        }
        drop(plain);
    }

    let budget = fsync.p(0.5) + 200.0;
    let mut md = String::new();
    md.push_str(&format!(
        "Machine: {} × {}, load average {load_before} → {}; fdatasync (256 B, preallocated file, same disk as the WAL) p50 {} µs, p99 {} µs. {} calls per service and case, one at a time, after {} warm-up calls; run took {:.0} s.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        loadavg(),
        fmt_us(fsync.p(0.5)),
        fmt_us(fsync.p(0.99)),
        a.calls,
        a.warmup,
        started.elapsed().as_secs_f64()
    ));
    md.push_str("| RMW | daemon build | WAL sync | plain p50 µs | plain p99 µs | `/autonomy/tool` p50 µs | `/autonomy/tool` p99 µs | added p50 µs | added p99 µs | errors (plain / tool) | target: added p50 ≤ fsync p50 + 200 µs |\n");
    md.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    let mut all_pass = true;
    for c in &cases {
        let added50 = c.gated.p(0.5) - c.plain.p(0.5);
        let added99 = c.gated.p(0.99) - c.plain.p(0.99);
        let verdict = if c.sync == "fsync" {
            let pass = added50 <= budget && c.errors == (0, 0);
            all_pass &= pass;
            format!(
                "{} ({} ≤ {})",
                if pass { "PASS" } else { "MISS" },
                fmt_us(added50),
                fmt_us(budget)
            )
        } else {
            "–".to_string()
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {verdict} |\n",
            c.rmw,
            c.backend,
            c.sync,
            fmt_us(c.plain.p(0.5)),
            fmt_us(c.plain.p(0.99)),
            fmt_us(c.gated.p(0.5)),
            fmt_us(c.gated.p(0.99)),
            fmt_us(added50),
            fmt_us(added99),
            c.errors.0,
            c.errors.1,
        ));
    }
    println!("{md}");
    if let Some(out) = &a.out
        && let Err(e) = std::fs::write(out, &md)
    {
        fail(format!("{}: {e}", out.display()));
    }
    say(if all_pass {
        "every case within the target"
    } else {
        "some case missed the target"
    });
}
