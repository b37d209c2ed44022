//! `autonomy-bench`: the end-to-end benchmark, in one run.
//!
//! Not a test. `cargo build --release && cargo run --release -p autonomy-bench --bin autonomy-bench -- [--secs N]
//! [--out FILE]`:
//!
//! * policy evaluation p50/p99 of the embedded demo policy and of the example policies
//!   (`examples/policies/`), in-process (allow and deny input);
//! * the raw `fdatasync` floor of the disk the WAL is on (256-byte appends, zero-filled file);
//! * the real daemon (`autonomy runtime start --demo`) on loopback, driven by a closed-loop
//!   HTTP/1.1 keep-alive client in this process: `GET /health` and `POST /v1/tool` (`tool.echo`)
//!   at 1, 16 and 64 connections, with `--wal-sync fsync` and with `--wal-sync none`, a deny
//!   (`tool.shell`) with fsync, plus `--rounds` rounds at 64 connections of `/health`, allow,
//!   deny, allow without fsync and a POST refused at parsing (the ceiling for any POST) back to
//!   back, with this client and with `wrk` (SPEC §9);
//!
//! then prints a Markdown table (also written to `--out`) and the speed targets (`docs/benchmarks.md`) with PASS/MISS.
//! HTTP rows also give the CPU time per request, read from `/proc` over the measured window: the
//! daemon's (all its threads, user + kernel) and the whole machine's (load generator included),
//! which is what bounds throughput when client and daemon share the cores.
//! See `docs/benchmarks.md`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use autonomy::policy::{PolicyEvaluator, PolicyInput, RegoPolicy, demo_policy};
use autonomy::tools::Allowlist;
use autonomy::types::{Decision, PolicyRef, Source, ToolKind};
use autonomy::wal::Preallocate;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};

/// The daemon's allocator, so the in-process policy evaluation is measured as the daemon runs it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use autonomy_bench::{external, fsync};

/// Each request gives up after this long (counted as an error).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The `tool.echo` request body.
const TOOL_BODY: &str = r#"{"kind":"tool.echo","params":{"message":"hello"}}"#;
/// The `tool.shell` request body: the demo policy denies it, with its reason.
const DENY_BODY: &str = r#"{"kind":"tool.shell","params":{"command":"ls"}}"#;
/// `TOOL_BODY` without its last brace: answered 400 at parsing, before the policy and the WAL.
/// What this server does for it is the least any `POST /v1/tool` costs (the ceiling for (c)).
const UNPARSABLE_BODY: &str = r#"{"kind":"tool.echo","params":{"message":"hello"}"#;
/// The daemon's default `http_get` allowlist, which the evaluator sees as `allowed_domains`.
const ALLOWED: &str = "api.anthropic.com,ifconfig.me";

/// End-to-end benchmark: policy evaluation, fdatasync, and the daemon's HTTP API.
#[derive(Parser)]
#[command(name = "autonomy-bench")]
struct Args {
    /// Seconds per measurement phase (plus a short warm-up).
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Also write the Markdown report here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The daemon binary [default: `autonomy` next to this executable: `cargo build --release`
    /// first].
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// Parent directory for the scratch WAL dirs and fdatasync file [default: target/bench].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Connection counts for the HTTP phases.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    conns: Vec<usize>,
    /// Worker threads of the load generator's tokio runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Side-by-side rounds at the top connection count: `GET /health`, allow, deny (fsync) and
    /// allow (none) back to back, with this client and with `wrk`; the verdicts take the
    /// median ratio of the rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measure only what identity and metrics cost per call: `/v1/tool` with auth off and
    /// /metrics idle, with a bearer token (`--auth required`), and with /metrics scraped every
    /// 100 ms, in alternating rounds at 1 and 64 connections, fsync and none.
    #[arg(long)]
    identity: bool,
    /// Measure only the in-process policy evaluations (with the host's tail beside each) and
    /// judge target (a): no disk, no daemon, a few seconds.
    #[arg(long)]
    eval_only: bool,
}

/// One measured row.
struct Row {
    what: String,
    conns: Option<usize>,
    ops: u64,
    secs: f64,
    /// Sorted latencies, ns.
    lat: Vec<u64>,
    errors: u64,
    /// CPU µs per request over the measured window: (daemon, machine).
    cpu: Option<(f64, f64)>,
    /// For an in-process evaluation row: sorted latencies (ns) of plain compute of about the
    /// evaluation's median length, timed alternately with the evaluations (the host's own tail).
    floor: Vec<u64>,
}

impl Row {
    fn new(
        what: impl Into<String>,
        conns: Option<usize>,
        mut lat: Vec<u64>,
        secs: f64,
        errors: u64,
    ) -> Row {
        lat.sort_unstable();
        Row {
            what: what.into(),
            conns,
            ops: lat.len() as u64,
            secs,
            lat,
            errors,
            cpu: None,
            floor: Vec::new(),
        }
    }

    /// Percentile in µs.
    fn p(&self, q: f64) -> f64 {
        percentile_us(&self.lat, q)
    }

    /// Percentile of [`Row::floor`] in µs.
    fn floor_p(&self, q: f64) -> f64 {
        percentile_us(&self.floor, q)
    }

    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    fn markdown(&self) -> String {
        let conns = self.conns.map_or("–".to_string(), |c| c.to_string());
        let (daemon, machine) = self
            .cpu
            .map_or(("–".to_string(), "–".to_string()), |(d, m)| {
                (format!("{d:.1}"), format!("{m:.1}"))
            });
        format!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {daemon} | {machine} |",
            self.what,
            conns,
            self.rate(),
            fmt_us(self.p(0.50)),
            fmt_us(self.p(0.99)),
            self.ops,
            self.errors
        )
    }
}

/// Percentile `q` of sorted nanoseconds, in µs (NaN when there are none).
fn percentile_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The host's own tail beside each evaluation row (Markdown).
fn host_floor_table(evals: &[Row]) -> String {
    let mut md = String::from(
        "\nThe host's own tail beside each evaluation row: plain compute in registers of about the row's p50, timed alternately with its evaluations (same thread, same seconds). Where its p99 is far above its p50, the machine, not the evaluator, set that row's p99.\n\n",
    );
    md.push_str("| evaluation | eval p50 µs | eval p99 µs | plain compute p50 µs | plain compute p99 µs |\n");
    md.push_str("|---|---:|---:|---:|---:|\n");
    for r in evals {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.what.trim_start_matches("policy eval, "),
            fmt_us(r.p(0.50)),
            fmt_us(r.p(0.99)),
            fmt_us(r.floor_p(0.50)),
            fmt_us(r.floor_p(0.99)),
        ));
    }
    md
}

/// Target (a), judged on the worst evaluation row, with the host's tail beside it (Markdown).
fn target_a(evals: &[Row]) -> String {
    let worst = evals.iter().max_by(|a, b| a.p(0.99).total_cmp(&b.p(0.99)));
    let p99 = worst.map_or(f64::NAN, |r| r.p(0.99));
    format!(
        "- (a) policy evaluation p99 < 20 µs, allow and deny with its reason, the demo and the example policies: **{}** — worst p99 {p99:.1} µs ({}); plain compute of the same length beside it: p99 {:.1} µs.\n",
        if p99 < 20.0 { "PASS" } else { "MISS" },
        worst.map_or("", |r| r.what.trim_start_matches("policy eval, ")),
        worst.map_or(f64::NAN, |r| r.floor_p(0.99)),
    )
}

fn fmt_us(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn say(line: &str) {
    eprintln!("autonomy-bench: {line}");
}

// ---------------------------------------------------------------------------------------------
// Policy evaluation (in-process, through the library).

fn eval_phase(
    what: &str,
    policy: &RegoPolicy,
    kind: &str,
    params: Map<String, Value>,
    want: Decision,
    secs: f64,
) -> Row {
    let kind = ToolKind::parse(kind).expect("tool kind");
    let allowed = Allowlist::parse(ALLOWED).expect("allowlist").entries();
    let input = PolicyInput {
        kind: &kind,
        params: &params,
        source: Source::new("http"),
        agent: &autonomy::types::Agent::anonymous(),
        allowed_domains: &allowed,
        extra: None,
    };
    let v = policy.evaluate(&input);
    assert_eq!(v.decision, want, "{what}: unexpected verdict {v:?}");
    let warm_end = Instant::now() + Duration::from_millis(300);
    let mut warm = Vec::new();
    while Instant::now() < warm_end {
        let t = Instant::now();
        std::hint::black_box(policy.evaluate(&input));
        warm.push(t.elapsed().as_nanos() as u64);
    }
    let rounds = spin_rounds_for(median_ns(&mut warm));
    let mut lat = Vec::with_capacity(1 << 20);
    let mut floor = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    loop {
        let t = Instant::now();
        if t >= end {
            break;
        }
        std::hint::black_box(policy.evaluate(std::hint::black_box(&input)));
        lat.push(t.elapsed().as_nanos() as u64);
        // The host's share of the tail: the same length of plain compute, right after, so both
        // see the same machine.
        let t = Instant::now();
        std::hint::black_box(spin(std::hint::black_box(rounds)));
        floor.push(t.elapsed().as_nanos() as u64);
    }
    // Throughput from the sum of the timed calls (excludes the loop's own clock reads).
    let busy: u64 = lat.iter().sum();
    let mut row = Row::new(what, None, lat, busy as f64 / 1e9, 0);
    floor.sort_unstable();
    row.floor = floor;
    row
}

/// Plain compute in registers (a 64-bit LCG, `n` rounds): no allocation, no memory traffic, so
/// its tail is what the machine adds (interrupts, the hypervisor, neighbours), not the code.
fn spin(n: u64) -> u64 {
    let mut x = n;
    for i in 0..n {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(i ^ (x >> 7));
    }
    x
}

/// The median of `v` (sorted in place), 1 µs when empty.
fn median_ns(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(1_000)
}

/// The rounds of [`spin`] that take about `ns` on this machine (median of repeated runs).
fn spin_rounds_for(ns: u64) -> u64 {
    let time = |n: u64| {
        let mut v: Vec<u64> = (0..101)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(spin(std::hint::black_box(n)));
                t.elapsed().as_nanos() as u64
            })
            .collect();
        median_ns(&mut v).max(1)
    };
    let mut n = 64;
    while time(n) < ns && n < 1 << 30 {
        n *= 2;
    }
    (n as u128 * ns as u128 / time(n) as u128).max(1) as u64
}

/// The example policy in `examples/policies/<name>`: its `.rego` files, and each `data.json`
/// mounted at its directory's path (`ros/data.json` is `data.ros`), as `policy build` does.
fn example_policy(name: &str) -> RegoPolicy {
    let root =
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policies")).join(name);
    let mut modules = Vec::new();
    let mut data = Map::new();
    let mut dirs = vec![(root.clone(), Vec::<String>::new())];
    while let Some((dir, at)) = dirs.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let file = p
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default();
            if p.is_dir() {
                let mut at = at.clone();
                at.push(file);
                dirs.push((p, at));
            } else if file.ends_with(".rego") {
                let src = std::fs::read_to_string(&p).expect("read a .rego file");
                modules.push((p.display().to_string(), src));
            } else if file == "data.json" {
                let v: Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).expect("read data.json"))
                        .expect("data.json is JSON");
                let mut slot = &mut data;
                for k in &at {
                    slot = slot
                        .entry(k.clone())
                        .or_insert_with(|| Value::Object(Map::new()))
                        .as_object_mut()
                        .expect("data.json under an object");
                }
                if let Value::Object(m) = v {
                    slot.extend(m);
                }
            }
        }
    }
    RegoPolicy::compile(
        PolicyRef::new(format!("example:{name}")),
        &modules,
        (!data.is_empty()).then_some(Value::Object(data)),
    )
    .unwrap_or_else(|e| panic!("example {name}: {e}"))
}

/// The first allowed and the first denied case of an example's `cases.json`: (name, kind,
/// params, decision).
fn example_cases(name: &str) -> Vec<(String, String, Map<String, Value>, Decision)> {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policies"))
        .join(name)
        .join("cases.json");
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("cases.json"))
            .expect("cases.json is JSON");
    let mut out = Vec::new();
    for want in ["allow", "deny"] {
        if let Some(c) = cases.iter().find(|c| c["decision"] == want) {
            out.push((
                c["name"].as_str().unwrap_or("?").to_string(),
                c["input"]["kind"].as_str().unwrap_or("?").to_string(),
                c["input"]["params"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                if want == "allow" {
                    Decision::Allow
                } else {
                    Decision::Deny
                },
            ));
        }
    }
    out
}

/// One side-by-side round with one client: per load (`/health`, allow, deny, allow without
/// fsync, a POST refused at parsing), req/s and the daemon's CPU µs per request.
type Round = [(f64, Option<f64>); 5];

/// The example policies the evaluation phase measures besides the demo.
const EXAMPLES: [&str; 3] = ["argument-checks", "http-allowlist", "ros-launch-allowlist"];

// ---------------------------------------------------------------------------------------------
// The daemon.

/// CPU time counters from `/proc`, in clock ticks.
#[derive(Clone, Copy)]
struct CpuSnap {
    /// The daemon's user + system time (all threads).
    daemon: u64,
    /// The machine's busy time (all CPUs; user, nice, system, irq, softirq, steal).
    machine: u64,
}

impl CpuSnap {
    fn take(pid: u32) -> Option<CpuSnap> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the `(comm)`, which may hold spaces: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let daemon = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let all = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = all
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        let machine = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| cpu.get(i)).sum();
        Some(CpuSnap { daemon, machine })
    }

    /// µs per op between `self` and `later`: (daemon, machine).
    fn per_op(self, later: CpuSnap, ops: u64) -> Option<(f64, f64)> {
        if ops == 0 {
            return None;
        }
        let tick_us = 1e6
            / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                .ok()
                .flatten()
                .filter(|&t| t > 0)
                .unwrap_or(100) as f64;
        Some((
            later.daemon.saturating_sub(self.daemon) as f64 * tick_us / ops as f64,
            later.machine.saturating_sub(self.machine) as f64 * tick_us / ops as f64,
        ))
    }
}

struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(bin: &Path, wal_dir: &Path, sync: &str) -> Daemon {
        Self::start_with(bin, wal_dir, sync, &[])
    }

    fn start_with(bin: &Path, wal_dir: &Path, sync: &str, extra: &[&str]) -> Daemon {
        let mut child = Command::new(bin)
            .args(["runtime", "start", "--demo", "--listen", "127.0.0.1:0"])
            .arg("--wal-dir")
            .arg(wal_dir)
            .args(["--wal-sync", sync])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        // Reads the daemon's stderr to the end, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("listening on http://") {
                    let rest = &line[i + "listening on http://".len()..];
                    let addr = rest.split_whitespace().next().unwrap_or("");
                    if let Ok(a) = addr.parse::<SocketAddr>() {
                        let _ = tx.send(a);
                    }
                }
                if let Ok(mut l) = log2.lock() {
                    l.push(line);
                }
            }
        });
        let mut d = Daemon {
            child,
            addr: "127.0.0.1:0".parse().expect("addr"),
            log,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(a) => d.addr = a,
            Err(_) => {
                let log = d.log.lock().map(|l| l.join("\n")).unwrap_or_default();
                panic!(
                    "the daemon did not print `listening on http://…` within {} s; its stderr:\n{log}",
                    START_TIMEOUT.as_secs()
                );
            }
        }
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: the daemon finishes in-flight calls and closes its WAL; SIGKILL if it hangs.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator: `conns` keep-alive HTTP/1.1 connections, each sending its next request
// when the previous answer is in (closed loop).

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Health,
    Tool,
    /// `POST /v1/tool` with `tool.shell`: a durable deny (403) with the policy's reason.
    Deny,
    /// `POST /v1/tool` with `Authorization: Bearer` and the token in [`TOKEN`].
    ToolBearer,
    /// `POST /v1/tool` whose body is not JSON: a 400 before the policy and the WAL.
    Unparsable,
}

/// The bearer token of the `--identity` phases (an agent added for the run).
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

impl Target {
    fn request(self, addr: SocketAddr) -> Request<Full<Bytes>> {
        let b = Request::builder().header(header::HOST, addr.to_string());
        match self {
            Target::Health => b
                .method(Method::GET)
                .uri("/health")
                .body(Full::new(Bytes::new())),
            Target::Tool => b
                .method(Method::POST)
                .uri("/v1/tool")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(TOOL_BODY.as_bytes()))),
            Target::Deny => b
                .method(Method::POST)
                .uri("/v1/tool")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(DENY_BODY.as_bytes()))),
            Target::Unparsable => b
                .method(Method::POST)
                .uri("/v1/tool")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(UNPARSABLE_BODY.as_bytes()))),
            Target::ToolBearer => b
                .method(Method::POST)
                .uri("/v1/tool")
                .header(header::CONTENT_TYPE, "application/json")
                .header(
                    header::AUTHORIZATION,
                    format!("Bearer {}", TOKEN.get().map_or("", String::as_str)),
                )
                .body(Full::new(Bytes::from_static(TOOL_BODY.as_bytes()))),
        }
        .expect("request")
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One request; the status and body.
async fn one(
    sender: &mut Sender,
    addr: SocketAddr,
    t: Target,
) -> Result<(StatusCode, Bytes), String> {
    let fut = async {
        sender.ready().await.map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(t.request(addr))
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err("timed out".into()),
    }
}

/// Checks that the daemon answers `t` as expected before measuring it.
async fn sanity(addr: SocketAddr, t: Target) {
    let mut s = connect(addr).await.expect("connect to the daemon");
    let (status, body) = one(&mut s, addr, t).await.expect("first request");
    let v: Value = serde_json::from_slice(&body).expect("JSON answer");
    match t {
        Target::Health => assert!(status == StatusCode::OK && v["status"] == "ok", "{v}"),
        Target::Tool | Target::ToolBearer => assert!(
            status == StatusCode::OK && v["decision"] == "allow" && v["output"] == "hello",
            "{status} {v}"
        ),
        Target::Deny => assert!(
            status == StatusCode::FORBIDDEN
                && v["decision"] == "deny"
                && v["reason"] == "tool.shell is always blocked by policy",
            "{status} {v}"
        ),
        Target::Unparsable => assert!(
            status == StatusCode::BAD_REQUEST
                && v["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("the body is not valid JSON")),
            "{status} {v}"
        ),
    }
}

impl Target {
    /// The status of a good answer.
    fn ok_status(self) -> StatusCode {
        match self {
            Target::Deny => StatusCode::FORBIDDEN,
            Target::Unparsable => StatusCode::BAD_REQUEST,
            _ => StatusCode::OK,
        }
    }
}

async fn load(
    addr: SocketAddr,
    daemon_pid: u32,
    t: Target,
    conns: usize,
    warm: Duration,
    secs: f64,
) -> (Vec<u64>, f64, u64, Option<(CpuSnap, CpuSnap)>) {
    let measure_from = Instant::now() + warm;
    let end = measure_from + Duration::from_secs_f64(secs);
    // CPU counters at the edges of the measured window, from a thread of its own.
    let snaps = std::thread::spawn(move || {
        let sleep_until =
            |t: Instant| std::thread::sleep(t.saturating_duration_since(Instant::now()));
        sleep_until(measure_from);
        let a = CpuSnap::take(daemon_pid);
        sleep_until(end);
        let b = CpuSnap::take(daemon_pid);
        a.zip(b)
    });
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            let mut sender: Option<Sender> = None;
            while Instant::now() < end {
                let s = match sender.as_mut() {
                    Some(s) => s,
                    None => match connect(addr).await {
                        Ok(s) => sender.insert(s),
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let t0 = Instant::now();
                let r = one(s, addr, t).await;
                let done = Instant::now();
                let counted = t0 >= measure_from && done <= end;
                match r {
                    Ok((status, _)) if status == t.ok_status() => {
                        if counted {
                            lat.push((done - t0).as_nanos() as u64);
                        }
                    }
                    Ok(_) => {
                        if counted {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        sender = None;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((l, e)) = task.await {
            lat.extend(l);
            errors += e;
        }
    }
    let snaps = snaps.join().ok().flatten();
    (lat, secs, errors, snaps)
}

/// One HTTP load phase against `daemon`, as a row with its CPU per request.
fn measure(
    rt: &tokio::runtime::Runtime,
    daemon: &Daemon,
    t: Target,
    conns: usize,
    warm: Duration,
    secs: f64,
    what: String,
) -> Row {
    let (lat, secs, errors, snaps) =
        rt.block_on(load(daemon.addr, daemon.child.id(), t, conns, warm, secs));
    let mut r = Row::new(what, Some(conns), lat, secs, errors);
    r.cpu = snaps.and_then(|(x, y)| x.per_op(y, r.ops + r.errors));
    r
}

/// One `wrk` run of `t` against `daemon`; a wrong status counts as an error (a deny's 403 is
/// the right one).
fn wrk_run(
    w: &external::Wrk,
    daemon: &Daemon,
    t: Target,
    conns: usize,
    secs: f64,
) -> Result<external::WrkRun, String> {
    let (path, body) = match t {
        Target::Health => ("/health", None),
        Target::Tool => ("/v1/tool", Some(TOOL_BODY)),
        Target::Deny => ("/v1/tool", Some(DENY_BODY)),
        Target::Unparsable => ("/v1/tool", Some(UNPARSABLE_BODY)),
        Target::ToolBearer => return Err("wrk does not send bearer tokens here".into()),
    };
    let r = w.run(
        &format!("http://{}{path}", daemon.addr),
        body,
        conns,
        secs,
        daemon.child.id(),
    )?;
    let wrong = if matches!(t, Target::Deny | Target::Unparsable) {
        r.requests - r.non2xx.min(r.requests)
    } else {
        r.non2xx
    };
    if wrong + r.errors > 0 {
        say(&format!(
            "wrk {path}: {wrong} answers with the wrong status, {} socket errors",
            r.errors
        ));
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// What identity and metrics cost per call (`--identity`).

/// GETs /metrics every `every` until `stop` is set; the number of scrapes that answered 200.
fn scraper(
    addr: SocketAddr,
    every: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut ok = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let req =
                    format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                let mut buf = Vec::new();
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_end(&mut buf).is_ok()
                    && buf.starts_with(b"HTTP/1.1 200")
                {
                    ok += 1;
                }
            }
            std::thread::sleep(every);
        }
        ok
    })
}

/// The `--identity` section: auth off and /metrics idle (the baseline), a bearer token under
/// `--auth required`, and /metrics scraped every 100 ms, each measured in turn in every round.
fn identity_section(a: &Args, bin: &Path, dir: &Path, rt: &tokio::runtime::Runtime) -> String {
    let agents = dir.join("agents.json");
    let out = Command::new(bin)
        .args(["agent", "add", "bench", "--agents"])
        .arg(&agents)
        .output()
        .expect("autonomy agent add");
    assert!(
        out.status.success(),
        "agent add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let _ = TOKEN.set(token);
    let agents_arg = agents.to_string_lossy().to_string();
    let warm = Duration::from_secs_f64((a.secs / 6.0).clamp(0.2, 1.0));
    // (name, flags, target, scraped)
    let configs: [(&str, Vec<&str>, Target, bool); 3] = [
        (
            "auth off, /metrics idle (baseline)",
            vec!["--auth", "off"],
            Target::Tool,
            false,
        ),
        (
            "`--auth required`, bearer token",
            vec!["--auth", "required", "--agents", &agents_arg],
            Target::ToolBearer,
            false,
        ),
        (
            "auth off, /metrics scraped every 100 ms",
            vec!["--auth", "off"],
            Target::Tool,
            true,
        ),
    ];
    let mut md = String::from(
        "| `--wal-sync` | conns | configuration | req/s (median) | p50 µs | p99 µs | daemon CPU µs/op | req/s vs baseline (median of rounds) |\n|---|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for sync in ["fsync", "none"] {
        let daemons: Vec<Daemon> = configs
            .iter()
            .enumerate()
            .map(|(i, (_, flags, _, _))| {
                Daemon::start_with(bin, &dir.join(format!("wal-id-{sync}-{i}")), sync, flags)
            })
            .collect();
        for (d, (_, _, t, _)) in daemons.iter().zip(&configs) {
            rt.block_on(sanity(d.addr, *t));
        }
        for conns in [1usize, 64] {
            // rows[config][round]
            let mut rows: Vec<Vec<Row>> = configs.iter().map(|_| Vec::new()).collect();
            for round in 0..a.rounds.max(1) {
                for (k, (d, (name, _, t, scraped))) in daemons.iter().zip(&configs).enumerate() {
                    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let scrapes =
                        scraped.then(|| scraper(d.addr, Duration::from_millis(100), stop.clone()));
                    let r = measure(rt, d, *t, conns, warm, a.secs, name.to_string());
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    let n = scrapes.and_then(|h| h.join().ok());
                    say(&format!(
                        "identity {sync} {conns} conns round {}: {name}: {:.0} req/s p50 {} p99 {}{}",
                        round + 1,
                        r.rate(),
                        fmt_us(r.p(0.5)),
                        fmt_us(r.p(0.99)),
                        n.map(|n| format!(" ({n} scrapes)")).unwrap_or_default()
                    ));
                    rows[k].push(r);
                }
            }
            let median = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
            };
            for (k, (name, _, _, _)) in configs.iter().enumerate() {
                let rs = &rows[k];
                let ratio = median(
                    rs.iter()
                        .zip(&rows[0])
                        .map(|(x, base)| x.rate() / base.rate())
                        .collect(),
                );
                let cpu = median(rs.iter().filter_map(|r| r.cpu.map(|c| c.0)).collect());
                md.push_str(&format!(
                    "| {sync} | {conns} | {name} | {:.0} | {} | {} | {} | {:.1}% |\n",
                    median(rs.iter().map(Row::rate).collect()),
                    fmt_us(median(rs.iter().map(|r| r.p(0.5)).collect())),
                    fmt_us(median(rs.iter().map(|r| r.p(0.99)).collect())),
                    if cpu.is_nan() {
                        "–".into()
                    } else {
                        format!("{cpu:.1}")
                    },
                    100.0 * ratio
                ));
            }
        }
    }
    md
}

// ---------------------------------------------------------------------------------------------

fn daemon_binary(a: &Args) -> PathBuf {
    if let Some(p) = &a.daemon {
        return p.clone();
    }
    let exe = std::env::current_exe().expect("current exe");
    let daemon = exe.with_file_name("autonomy");
    // Not rebuilt from here: a `cargo build` started by `cargo run` inherits its environment,
    // which makes cargo rebuild half the dependency tree (twice per run).
    let (Ok(d), Ok(b)) = (std::fs::metadata(&daemon), std::fs::metadata(&exe)) else {
        panic!(
            "no daemon binary at {}: run `cargo build --release` first (or pass --daemon)",
            daemon.display()
        );
    };
    if let (Ok(dt), Ok(bt)) = (d.modified(), b.modified())
        && dt + Duration::from_secs(60) < bt
    {
        say(&format!(
            "warning: {} is older than this benchmark; run `cargo build --release` to measure the current code",
            daemon.display()
        ));
    }
    daemon
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let a = Args::parse();
    let started = Instant::now();
    let bin = daemon_binary(&a);
    assert!(bin.exists(), "no daemon binary at {}", bin.display());
    let parent = a
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench")));
    std::fs::create_dir_all(&parent).expect("create --dir");
    let tmp = tempfile::Builder::new()
        .prefix("autonomy-bench-")
        .tempdir_in(&parent)
        .expect("temp dir");
    let dir = tmp.path();
    let load_before = loadavg();
    say(&format!(
        "scratch dir {}, {} s per phase, load average {load_before}",
        dir.display(),
        a.secs
    ));

    if a.identity {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.client_threads.max(1))
            .enable_all()
            .build()
            .expect("tokio runtime");
        let table = identity_section(&a, &bin, dir, &rt);
        let md = format!(
            "Command: `cargo build --release && cargo run --release -p autonomy-bench --bin autonomy-bench -- --identity --secs {} --rounds {}`; load average {load_before} before, {} after; {} CPUs; whole run {:.0} s.\n\n{table}",
            a.secs,
            a.rounds,
            loadavg(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            started.elapsed().as_secs_f64()
        );
        println!("{md}");
        if let Some(out) = &a.out {
            std::fs::write(out, &md)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
        }
        return;
    }

    let mut rows: Vec<Row> = Vec::new();
    let show = |r: &Row| say(&r.markdown());

    // 1. Policy evaluation: the demo, then each example policy's first allow and first deny.
    let demo = demo_policy().expect("the demo policy compiles");
    let mut params = Map::new();
    params.insert("message".into(), Value::String("hello".into()));
    let r = eval_phase(
        "policy eval, allow (`tool.echo`)",
        &demo,
        "tool.echo",
        params,
        Decision::Allow,
        a.secs,
    );
    show(&r);
    rows.push(r);
    let mut params = Map::new();
    params.insert("command".into(), Value::String("rm -rf /".into()));
    let r = eval_phase(
        "policy eval, deny (`tool.shell`) + reason",
        &demo,
        "tool.shell",
        params,
        Decision::Deny,
        a.secs,
    );
    show(&r);
    rows.push(r);
    let eval_secs = (a.secs / 3.0).max(0.5);
    for ex in EXAMPLES {
        let policy = example_policy(ex);
        for (case, kind, params, want) in example_cases(ex) {
            let what = format!(
                "policy eval, example `{ex}`, {} ({case})",
                if want == Decision::Allow {
                    "allow"
                } else {
                    "deny + reason"
                }
            );
            let r = eval_phase(&what, &policy, &kind, params, want, eval_secs);
            show(&r);
            rows.push(r);
        }
    }
    let n_eval = rows.len();
    if a.eval_only {
        let mut md = format!(
            "Command: `cargo run --release -p autonomy-bench --bin autonomy-bench -- --eval-only --secs {}`; load average {load_before} before, {} after; {} CPUs.\n\n",
            a.secs,
            loadavg(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        md.push_str(host_floor_table(&rows).trim_start());
        md.push('\n');
        md.push_str(&target_a(&rows));
        println!("{md}");
        if let Some(out) = &a.out {
            std::fs::write(out, &md)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
        }
        return;
    }

    // 2. The disk.
    let (lat, secs) = fsync::raw_fdatasync(dir, a.secs, Preallocate::default());
    let r = Row::new(
        "raw write 256 B + fdatasync, preallocated file",
        Some(1),
        lat,
        secs,
        0,
    );
    show(&r);
    rows.push(r);

    // 3. The daemons: one with fsync and one without, both up for the whole run, so that the
    // side-by-side rounds switch between them in seconds.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.client_threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let warm = Duration::from_secs_f64((a.secs / 6.0).clamp(0.2, 1.0));
    let top = a.conns.iter().copied().max().unwrap_or(64);
    let fsyncd = Daemon::start(&bin, &dir.join("wal-fsync"), "fsync");
    let noned = Daemon::start(&bin, &dir.join("wal-none"), "none");
    say(&format!(
        "daemons: --wal-sync fsync on {}, --wal-sync none on {}",
        fsyncd.addr, noned.addr
    ));
    for (d, t) in [
        (&fsyncd, Target::Health),
        (&fsyncd, Target::Tool),
        (&fsyncd, Target::Deny),
        (&noned, Target::Tool),
        (&fsyncd, Target::Unparsable),
    ] {
        rt.block_on(sanity(d.addr, t));
    }
    let wrk = external::Wrk::find(dir);
    if wrk.is_none() {
        say(
            "no `wrk` (and it could not be installed): the rounds use this benchmark's client only",
        );
    }
    // The five loads of a round, in the order they run.
    let loads: [(&str, &Daemon, Target); 5] = [
        ("`GET /health`", &fsyncd, Target::Health),
        ("allow, fsync", &fsyncd, Target::Tool),
        ("deny, fsync", &fsyncd, Target::Deny),
        ("allow, none", &noned, Target::Tool),
        ("POST refused at parsing", &fsyncd, Target::Unparsable),
    ];
    // rounds[client][round][load]: (req/s, daemon CPU µs/op).
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(), Vec::new()];
    for i in 0..a.rounds.max(1) {
        for (ci, client) in ["own", "wrk"].into_iter().enumerate() {
            let mut round = [(f64::NAN, None); 5];
            for (k, (_, d, t)) in loads.iter().enumerate() {
                round[k] = if ci == 0 {
                    let r = measure(&rt, d, *t, top, warm, a.secs, String::new());
                    (r.rate(), r.cpu.map(|c| c.0))
                } else if let Some(w) = &wrk {
                    match wrk_run(w, d, *t, top, a.secs) {
                        Ok(r) => (r.rate, r.daemon_cpu),
                        Err(e) => {
                            say(&format!("wrk: {e}"));
                            (f64::NAN, None)
                        }
                    }
                } else {
                    continue;
                };
            }
            if round[0].0.is_nan() {
                continue;
            }
            say(&format!(
                "round {} ({client} client, {top} conns): /health {:.0}, allow {:.0}, deny {:.0}, allow none {:.0}, refused at parsing {:.0} req/s",
                i + 1,
                round[0].0,
                round[1].0,
                round[2].0,
                round[3].0,
                round[4].0
            ));
            rounds[ci].push(round);
        }
    }
    for (d, sync, targets) in [
        (
            &fsyncd,
            "fsync",
            &[Target::Health, Target::Tool, Target::Deny][..],
        ),
        (&noned, "none", &[Target::Tool][..]),
    ] {
        for &t in targets {
            for &c in &a.conns {
                let what = match t {
                    Target::Health => "`GET /health`".to_string(),
                    Target::Deny => {
                        format!("`POST /v1/tool` deny (`tool.shell`), `--wal-sync {sync}`")
                    }
                    Target::Tool | Target::ToolBearer => {
                        format!("`POST /v1/tool` echo, `--wal-sync {sync}`")
                    }
                    Target::Unparsable => "`POST /v1/tool` refused at parsing".to_string(),
                };
                let r = measure(&rt, d, t, c, warm, a.secs, what);
                show(&r);
                rows.push(r);
            }
        }
    }
    drop(fsyncd);
    drop(noned);
    drop(rt);
    let load_after = loadavg();

    // 4. Report.
    let find = |prefix: &str, c: Option<usize>| {
        rows.iter()
            .find(|r| r.what.starts_with(prefix) && r.conns == c)
    };
    let mut md = String::new();
    md.push_str(&format!(
        "Command: `cargo build --release && cargo run --release -p autonomy-bench --bin autonomy-bench -- --secs {} --rounds {}`; {} s per phase; load average {load_before} before, {load_after} after; {} CPUs; whole run {:.0} s.\n\n",
        a.secs,
        a.rounds,
        a.secs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64()
    ));
    md.push_str("| measurement | conns | ops/s | p50 µs | p99 µs | samples | errors | daemon CPU µs/op | machine CPU µs/op |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &rows {
        md.push_str(&r.markdown());
        md.push('\n');
    }

    md.push_str(&format!(
        "\nSide by side at {top} connections, both daemons up, each round running the five loads back to back with each client (`own`: this benchmark's hyper client; `wrk`: `wrk -t2 -c{top}`). req/s, and in brackets the daemon's CPU µs per request. `refused` is a `POST /v1/tool` whose body is not JSON, answered 400 before the policy and the WAL: the most any POST can reach on this server, so `refused / health` is the ceiling for allow / health.\n\n"
    ));
    md.push_str("| round | client | `/health` | allow, fsync | deny, fsync | allow, none | refused | allow / health | deny / allow | fsync / none | refused / health |\n");
    md.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let cell = |(r, c): (f64, Option<f64>)| {
        format!(
            "{r:.0} ({})",
            c.map_or("–".to_string(), |v| format!("{v:.1}"))
        )
    };
    let pct = |x: f64| format!("{:.0}%", 100.0 * x);
    for (ci, client) in ["own", "wrk"].into_iter().enumerate() {
        for (i, r) in rounds[ci].iter().enumerate() {
            md.push_str(&format!(
                "| {} | {client} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                i + 1,
                cell(r[0]),
                cell(r[1]),
                cell(r[2]),
                cell(r[3]),
                cell(r[4]),
                pct(r[1].0 / r[0].0),
                pct(r[2].0 / r[1].0),
                pct(r[1].0 / r[3].0),
                pct(r[4].0 / r[0].0),
            ));
        }
    }

    md.push_str(&host_floor_table(&rows[..n_eval]));
    let fsync_p50 = find("raw write", Some(1)).map_or(f64::NAN, |r| r.p(0.50));
    let health1 = find("`GET /health`", Some(1)).map_or(f64::NAN, |r| r.p(0.50));
    let tool1 =
        find("`POST /v1/tool` echo, `--wal-sync fsync`", Some(1)).map_or(f64::NAN, |r| r.p(0.50));
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    let budget = health1 + fsync_p50 + 60.0;
    md.push_str("\nTargets (SPEC §9):\n\n");
    md.push_str(&target_a(&rows[..n_eval]));
    md.push_str(&format!(
        "- (b) `/v1/tool` p50 at 1 connection ≤ `/health` p50 + fsync p50 + 60 µs: **{}** — {tool1:.0} µs vs {health1:.0} + {fsync_p50:.0} + 60 = {budget:.0} µs.\n",
        verdict(tool1 <= budget)
    ));
    let median = |mut v: Vec<f64>| -> f64 {
        v.retain(|x| x.is_finite());
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    for (name, num, den, bar) in [
        ("(c) durable allow ≥ 60% of `GET /health`", 1, 0, 0.60),
        ("(d) durable deny ≥ 90% of the durable allow", 2, 1, 0.90),
        (
            "(e) allow with fsync ≥ 85% of allow with `--wal-sync none`",
            1,
            3,
            0.85,
        ),
    ] {
        let mut parts = Vec::new();
        let mut all = true;
        for (ci, client) in ["own", "wrk"].into_iter().enumerate() {
            if rounds[ci].is_empty() {
                continue;
            }
            let ratios: Vec<f64> = rounds[ci].iter().map(|r| r[num].0 / r[den].0).collect();
            let m = median(ratios.clone());
            all &= m >= bar;
            // The same ratio from the daemon's CPU per request (den's over num's): what the
            // throughput ratio would be if the daemon's CPU were the only limit.
            let cpu = median(
                rounds[ci]
                    .iter()
                    .filter_map(|r| Some(r[den].1? / r[num].1?))
                    .collect(),
            );
            // Beside allow / health, the ceiling: a POST that stops at parsing, same rounds.
            let ceiling = if (num, den) == (1, 0) {
                let c = median(rounds[ci].iter().map(|r| r[4].0 / r[0].0).collect());
                format!(" (a POST refused at parsing: {})", pct(c))
            } else {
                String::new()
            };
            parts.push(format!(
                "{client} client median {}{ceiling} ({}), from the daemon's CPU per request {}",
                pct(m),
                ratios
                    .iter()
                    .map(|&x| pct(x))
                    .collect::<Vec<_>>()
                    .join(", "),
                pct(cpu)
            ));
        }
        md.push_str(&format!(
            "- {name}, at {top} connections: **{}** — {}.\n",
            verdict(all && !parts.is_empty()),
            parts.join("; ")
        ));
    }

    println!("{md}");
    let _ = std::io::stdout().flush();
    if let Some(out) = &a.out {
        std::fs::write(out, &md).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
        say(&format!("wrote {}", out.display()));
    }
}
