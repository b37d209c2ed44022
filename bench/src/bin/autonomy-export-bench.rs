//! `autonomy-export-bench`: what the audit export to NATS JetStream costs the daemon, and how
//! far behind it runs, at the daemon's full `/v1/tool` rate.
//!
//! Not a test. `cargo build --release && cargo run --release -p autonomy-bench --bin
//! autonomy-export-bench -- [--secs N] [--rounds N] [--out FILE]`. Needs Debian's `nats-server`.
//!
//! One `nats-server -js` on loopback, two daemons (`runtime start --demo`, fsync): the baseline
//! without `--export` and one with `--export`. In alternating rounds a closed-loop HTTP/1.1
//! client drives `POST /v1/tool` (`tool.echo`) on each at the given connection counts. Then the
//! exporting daemon is stopped and its stream read back: for every record, the time from its
//! `ts` (taken as it is written, before its fsync) to its arrival in JetStream (the server's
//! timestamp), the records exported per second in each window, and the lag in records (written
//! and not yet in the stream) over the window and when the load stops.
//! See `docs/benchmarks.md`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;

const TOOL_BODY: &str = r#"{"kind":"tool.echo","params":{"message":"hello"}}"#;
const NODE: &str = "bench";

/// Audit export throughput and lag at the daemon's full /v1/tool rate, beside a daemon without
/// export.
#[derive(Parser)]
#[command(name = "autonomy-export-bench")]
struct Args {
    /// Seconds per measurement window.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Alternating rounds (baseline, export).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connection counts.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    conns: Vec<usize>,
    /// Also write the Markdown report here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The daemon binary [default: `autonomy` next to this executable].
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// The NATS server binary [default: nats-server on PATH or /usr/sbin].
    #[arg(long, value_name = "PATH")]
    nats_server: Option<PathBuf>,
    /// Parent directory for scratch dirs [default: target/bench].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

fn say(s: &str) {
    eprintln!("autonomy-export-bench: {s}");
}

/// A child killed on drop (SIGTERM first, for a clean stop).
struct Proc {
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn daemon(bin: &Path, wal: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut child = Command::new(bin)
        .args([
            "runtime",
            "start",
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--wal-dir",
        ])
        .arg(wal)
        .args(extra)
        .env("XDG_STATE_HOME", wal.with_file_name("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stderr = child.stderr.take().expect("stderr");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1)
                && let Some(a) = rest.split_whitespace().next()
                && let Ok(a) = a.parse::<SocketAddr>()
            {
                let _ = tx.send(a);
            }
            if let Ok(mut l) = log2.lock() {
                l.push(line);
            }
        }
    });
    let p = Proc { child, log };
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "the daemon did not start: {}",
                p.log.lock().map(|l| l.join("\n")).unwrap_or_default()
            )
        });
    (p, addr)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = s.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(sender)
}

async fn one(s: &mut Sender, addr: SocketAddr) -> bool {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/tool")
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(TOOL_BODY.as_bytes())))
        .expect("request");
    let fut = async {
        s.ready().await.ok()?;
        let r = s.send_request(req).await.ok()?;
        let ok = r.status() == StatusCode::OK;
        r.into_body().collect().await.ok()?;
        Some(ok)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), fut).await,
        Ok(Some(true))
    )
}

/// Closed-loop load for `secs` after a short warm-up: (answered, seconds, daemon CPU µs/op,
/// the measured window in wall-clock time).
fn measure(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    pid: u32,
    broker: u32,
    conns: usize,
    secs: f64,
) -> (u64, f64, (f64, f64), (SystemTime, SystemTime)) {
    let warm = Duration::from_millis(500);
    rt.block_on(async move {
        let from = Instant::now() + warm;
        let end = from + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for _ in 0..conns {
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut s: Option<Sender> = None;
                while Instant::now() < end {
                    if s.is_none() {
                        s = connect(addr).await;
                        if s.is_none() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                    let Some(snd) = s.as_mut() else { continue };
                    let t0 = Instant::now();
                    let ok = one(snd, addr).await;
                    if !ok {
                        s = None;
                    } else if t0 >= from && Instant::now() <= end {
                        n += 1;
                    }
                }
                n
            }));
        }
        tokio::time::sleep_until(from.into()).await;
        let wall0 = SystemTime::now();
        let (cpu0, bcpu0) = (cpu_ticks(pid), cpu_ticks(broker));
        tokio::time::sleep_until(end.into()).await;
        let wall1 = SystemTime::now();
        let (cpu1, bcpu1) = (cpu_ticks(pid), cpu_ticks(broker));
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap_or(0);
        }
        let tick_us = 1e6 / 100.0;
        let per_op = |a: u64, b: u64| b.saturating_sub(a) as f64 * tick_us / total.max(1) as f64;
        (
            total,
            secs,
            (per_op(cpu0, cpu1), per_op(bcpu0, bcpu1)),
            (wall0, wall1),
        )
    })
}

/// The daemon's user + system clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let g = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    g(11) + g(12)
}

/// Every exported record: (record ts, arrival in JetStream), µs since the epoch.
fn read_stream(rt: &tokio::runtime::Runtime, url: &str) -> Vec<(i128, i128)> {
    rt.block_on(async {
        let client = async_nats::connect(url)
            .await
            .expect("connect to nats-server");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("AUTONOMY_AUDIT").await.expect("the stream");
        let subject = format!("autonomy.audit.{NODE}");
        let last = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .expect("messages in the stream")
            .sequence;
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject,
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut msgs = consumer.messages().await.expect("messages");
        let mut out = Vec::new();
        while let Some(Ok(m)) = msgs.next().await {
            let Ok(info) = m.info() else { break };
            let sseq = info.stream_sequence;
            let arrived = info.published.unix_timestamp_nanos() / 1000;
            let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON record");
            let ts = v["ts"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_micros() as i128);
            out.push((ts, arrived));
            if sseq >= last {
                break;
            }
        }
        out
    })
}

fn micros(t: SystemTime) -> i128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i128)
}

fn pct(v: &[i128], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * q).round() as usize] as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let a = Args::parse();
    let exe = std::env::current_exe().expect("current exe");
    let bin = a
        .daemon
        .clone()
        .unwrap_or_else(|| exe.with_file_name("autonomy"));
    assert!(
        bin.exists(),
        "no daemon at {}: cargo build --release first",
        bin.display()
    );
    let nats = a.nats_server.clone().unwrap_or_else(|| {
        ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("nats-server"))
    });
    let parent = a
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench")));
    std::fs::create_dir_all(&parent).expect("scratch parent");
    let tmp = tempfile::Builder::new()
        .prefix("autonomy-export-bench-")
        .tempdir_in(&parent)
        .expect("temp dir");
    let dir = tmp.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let broker = Proc {
        child: Command::new(&nats)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("js"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nats.display())),
        log: Default::default(),
    };
    let up = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "nats-server did not listen on {url}");
    let (mut base, base_addr) = daemon(&bin, &dir.join("base/wal"), &[]);
    let (mut exp, exp_addr) = daemon(
        &bin,
        &dir.join("exp/wal"),
        &["--export", &url, "--node-id", NODE],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio");
    let started = Instant::now();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    // (conns, baseline rate, export rate, baseline cpu, export cpu, export window, broker cpu)
    let mut rows = Vec::new();
    for round in 0..a.rounds.max(1) {
        for &c in &a.conns {
            let bpid = broker.child.id();
            let (bn, bs, (bcpu, _), _) = measure(&rt, base_addr, base.child.id(), bpid, c, a.secs);
            let (en, es, (ecpu, ncpu), win) =
                measure(&rt, exp_addr, exp.child.id(), bpid, c, a.secs);
            let (br, er) = (bn as f64 / bs, en as f64 / es);
            say(&format!(
                "round {} at {c} conns: baseline {br:.0} req/s, --export {er:.0} req/s ({:.1}%)",
                round + 1,
                100.0 * er / br
            ));
            rows.push((c, br, er, bcpu, ecpu, win, ncpu));
            // Let the export drain before the next window, so each window starts level.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    exp.stop();
    base.stop();
    let stop_lines = exp.log.lock().map(|l| l.join("\n")).unwrap_or_default();
    let recs = read_stream(&rt, &url);
    say(&format!("{} records read back from the stream", recs.len()));

    let mut md = format!(
        "Command: `cargo build --release && cargo run --release -p autonomy-bench --bin autonomy-export-bench -- --secs {} --rounds {}`; nats-server `{}` on loopback (one server, file storage); load average {} before; {} CPUs; whole run {:.0} s.\n\n",
        a.secs,
        a.rounds,
        nats.display(),
        load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
    md.push_str("| conns | baseline req/s | `--export` req/s (ratio) | daemon CPU µs/op base → export | nats-server CPU µs/record | exported records/s | record → JetStream p50 / p99 / max ms | max lag (records) | lag at load stop (records) | caught up after stop |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for &c in &a.conns {
        let mine: Vec<_> = rows.iter().filter(|r| r.0 == c).collect();
        let ratio = median(mine.iter().map(|r| r.2 / r.1).collect());
        let (b, e) = (
            median(mine.iter().map(|r| r.1).collect()),
            median(mine.iter().map(|r| r.2).collect()),
        );
        let (bc, ec, nc) = (
            median(mine.iter().map(|r| r.3).collect()),
            median(mine.iter().map(|r| r.4).collect()),
            median(mine.iter().map(|r| r.6).collect()),
        );
        let mut exported_rate = Vec::new();
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        let mut pmax = Vec::new();
        let mut max_lag = Vec::new();
        let mut end_lag = Vec::new();
        let mut drain = Vec::new();
        for r in &mine {
            let (w0, w1) = (micros(r.5.0), micros(r.5.1));
            let mut lat: Vec<i128> = recs
                .iter()
                .filter(|(ts, _)| *ts >= w0 && *ts <= w1)
                .map(|(ts, arr)| arr - ts)
                .collect();
            lat.sort_unstable();
            let arrived = recs
                .iter()
                .filter(|(_, arr)| *arr >= w0 && *arr <= w1)
                .count();
            exported_rate.push(arrived as f64 / ((w1 - w0) as f64 / 1e6));
            p50.push(pct(&lat, 0.5) / 1000.0);
            p99.push(pct(&lat, 0.99) / 1000.0);
            pmax.push(pct(&lat, 1.0) / 1000.0);
            // Lag at t: records written by t and not yet in the stream; sampled every 10 ms.
            let lag_at =
                |t: i128| recs.iter().filter(|(ts, arr)| *ts <= t && *arr > t).count() as f64;
            let mut m: f64 = 0.0;
            let mut t = w0;
            while t <= w1 {
                m = m.max(lag_at(t));
                t += 10_000;
            }
            max_lag.push(m);
            end_lag.push(lag_at(w1));
            let last = recs
                .iter()
                .filter(|(ts, _)| *ts <= w1)
                .map(|(_, arr)| *arr)
                .max()
                .unwrap_or(w1);
            drain.push((last - w1).max(0) as f64 / 1000.0);
        }
        md.push_str(&format!(
            "| {c} | {b:.0} | {e:.0} ({:.1}%) | {bc:.1} → {ec:.1} | {nc:.1} | {:.0} | {:.1} / {:.1} / {:.1} | {:.0} | {:.0} | {:.0} ms |\n",
            100.0 * ratio,
            median(exported_rate),
            median(p50),
            median(p99),
            median(pmax),
            median(max_lag),
            median(end_lag),
            median(drain)
        ));
    }
    md.push_str(&format!(
        "\nMedians over {} rounds; the baseline and the exporting daemon alternate within each round. The exporting daemon's stop: {}\n",
        a.rounds,
        stop_lines
            .lines()
            .find(|l| l.contains("audit export:"))
            .unwrap_or("(no export line)")
    ));
    println!("{md}");
    if let Some(out) = &a.out {
        std::fs::write(out, &md).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
    }
}
