//! `autonomy-bridge-bench`: what the governed topic bridge adds to a ROS 2 message's trip, beside
//! a direct pub/sub baseline measured in the same run on the same machine.
//!
//! Not a test. Build both in release and run on the disk you care about:
//! `cargo build --release --workspace && target/release/autonomy-bridge-bench
//!  --autonomy target/release/autonomy --dir ./bench-tmp`.
//!
//! One process publishes `geometry_msgs/Twist` (the sequence number in `linear.y`) and
//! subscribes, both through RustDDS raw endpoints, on three paths that are all up at once:
//! directly on one domain (the baseline), and through two `autonomy runtime start --bridge`
//! daemons (the embedded bridge demo policy, the WAL with fdatasync in `--dir`) from an agent
//! domain to a robot domain, one `strict`, one `batched`. The latency runs take turns in short
//! rounds (baseline, strict, batched, again), so a machine shared with other work slows all three
//! alike. Latency is receive time minus send time in this one process. Then the sustained-rate
//! steps (strict). The disk's fdatasync is measured before, between and after. Each daemon's
//! `autonomy_bridge_relay_seconds` (arrival in its reader to republish) is scraped around each
//! rate's rounds, to tell the daemon's own time from the DDS hops and the host's, and so is its
//! WAL's `autonomy_wal_fsync_seconds`. Prints Markdown tables and the targets (see
//! `docs/benchmarks.md`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path as Path_, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autonomy::bridge::config::{BridgeFile, TopicConfig};
use autonomy::bridge::dds::{RawSample, RawWriter, Side};
use autonomy::wal::Preallocate;
use clap::Parser;
use futures::StreamExt;

use autonomy_bench::fsync;

/// Measures the bridge's added latency and its sustained rate against direct pub/sub.
#[derive(Parser)]
#[command(name = "autonomy-bridge-bench")]
struct Args {
    /// The `autonomy` binary to run (a release build).
    #[arg(long, default_value = "target/release/autonomy")]
    autonomy: PathBuf,
    /// Parent directory for the WALs (a temp dir is made inside and removed).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Seconds per latency round (each path, each rate).
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Latency rounds per rate.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Publish rates (messages/s) for the latency tables.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    rates: Vec<u32>,
    /// Rates tried for the sustained-rate table (strict mode).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2000,5000,8000,12000,16000"
    )]
    max_rates: Vec<u32>,
    /// Seconds per sustained-rate step.
    #[arg(long, default_value_t = 3.0)]
    max_secs: f64,
    /// The batched daemon's `batch_window_ms`.
    #[arg(long, default_value_t = 10)]
    batch_window_ms: u32,
    /// The daemons' `--wal-sync` (`none` shows what the disk costs: not a supported setting for
    /// the bridge's guarantees).
    #[arg(long, default_value = "fsync")]
    wal_sync: String,
    /// The daemons' `--wal-flushes` (`overlap` or `one`).
    #[arg(long, default_value = "overlap")]
    wal_flushes: String,
    /// The daemons' `--wal-overlap-after` (`0`: every fdatasync overlapped at once).
    #[arg(long, default_value = "1ms")]
    wal_overlap_after: String,
    /// The first of five DDS domains: the baseline's, then agent and robot for strict, then for
    /// batched (the default 228–232 is apart from the test suite's 1–225).
    #[arg(long, default_value_t = 228)]
    domain: u16,
}

fn twist(seq: u64) -> RawSample {
    let mut b = Vec::with_capacity(48);
    for v in [0.1f64, seq as f64, 0.0, 0.0, 0.0, 0.0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    RawSample {
        repr: autonomy::bridge::dds::CDR_LE,
        data: b.into(),
    }
}

fn seq_of(s: &RawSample) -> Option<u64> {
    let b: [u8; 8] = s.data.get(8..16)?.try_into().ok()?;
    Some(f64::from_le_bytes(b) as u64)
}

fn topic() -> TopicConfig {
    let f = BridgeFile::parse(
        "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\nqos = { depth = 1000 }\n",
    )
    .expect("topic");
    f.topics[0].clone()
}

/// Send and receive instants by sequence number.
#[derive(Default)]
struct Probe {
    sent: Vec<Instant>,
    recv: Vec<Option<Instant>>,
}

/// What one or more runs on a path measured.
#[derive(Default)]
struct Runs {
    sent: usize,
    /// Latency of each message received (ns).
    lat: Vec<u64>,
    /// Seconds between the first and the last arrival of each run, summed.
    span: f64,
}

impl Runs {
    fn add(&mut self, r: Runs) {
        self.sent += r.sent;
        self.lat.extend(r.lat);
        self.span += r.span;
    }

    fn summary(mut self) -> Summary {
        self.lat.sort_unstable();
        Summary {
            sent: self.sent,
            received: self.lat.len(),
            p50_us: pct(&self.lat, 0.50),
            p99_us: pct(&self.lat, 0.99),
            max_us: self.lat.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
            recv_rate: if self.span > 0.0 {
                self.lat.len() as f64 / self.span
            } else {
                0.0
            },
        }
    }
}

struct Summary {
    sent: usize,
    received: usize,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    recv_rate: f64,
}

impl Summary {
    fn lost(&self) -> usize {
        self.sent - self.received
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// One way from a writer to a reader: the baseline or a bridge.
struct Path {
    name: String,
    writer: RawWriter,
    probe: Arc<Mutex<Probe>>,
    next: u64,
}

impl Path {
    /// Publishes at `rate` for `secs`, then waits (3 s at most) for the stragglers.
    async fn run(&mut self, rate: u32, secs: f64) -> Runs {
        let first = self.next;
        let total = (rate as f64 * secs) as u64;
        // Ticks of 1 ms at most; higher rates send several messages per tick.
        let per_tick = rate.div_ceil(1000).max(1) as u64;
        let tick = Duration::from_secs_f64(per_tick as f64 / rate as f64);
        let mut iv = tokio::time::interval(tick);
        let start = Instant::now();
        let mut seq = first;
        while seq < first + total {
            iv.tick().await;
            for _ in 0..per_tick {
                if seq >= first + total {
                    break;
                }
                {
                    let mut p = self.probe.lock().expect("probe");
                    let i = seq as usize;
                    if p.sent.len() <= i {
                        p.sent.resize(i + 1, start);
                        p.recv.resize(i + 1, None);
                    }
                    p.sent[i] = Instant::now();
                }
                let _ = self.writer.write(twist(seq), None);
                seq += 1;
            }
        }
        // A gap in the numbering keeps a late arrival of this run out of the next one.
        self.next = first + total + 10;
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            let done = {
                let p = self.probe.lock().expect("probe");
                (first..first + total).all(|s| p.recv.get(s as usize).is_some_and(Option::is_some))
            };
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let p = self.probe.lock().expect("probe");
        let mut lat = Vec::new();
        let (mut t0, mut t1) = (None::<Instant>, None::<Instant>);
        for s in first..first + total {
            if let Some(Some(r)) = p.recv.get(s as usize) {
                lat.push(r.saturating_duration_since(p.sent[s as usize]).as_nanos() as u64);
                t0 = Some(t0.map_or(*r, |t| t.min(*r)));
                t1 = Some(t1.map_or(*r, |t| t.max(*r)));
            }
        }
        let span = match (t0, t1) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        Runs {
            sent: total as usize,
            lat,
            span,
        }
    }
}

/// A subscriber that stamps arrivals into `probe`.
fn subscribe(side: &mut Side, probe: Arc<Mutex<Probe>>) -> tokio::task::JoinHandle<()> {
    let reader = side.reader(&topic()).expect("reader");
    tokio::spawn(async move {
        let stream = reader.as_async_stream();
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let now = Instant::now();
            if let Ok(dcc) = item
                && let Some(s) = seq_of(&dcc.sample)
            {
                let mut p = probe.lock().expect("probe");
                if let Some(slot) = p.recv.get_mut(s as usize) {
                    *slot = Some(now);
                }
            }
        }
    })
}

/// Sends until one message gets through (discovery done on both hops), then returns the next
/// free sequence number.
async fn warm_up(writer: &RawWriter, probe: &Arc<Mutex<Probe>>) -> u64 {
    let start = Instant::now();
    let mut seq = 0u64;
    while start.elapsed() < Duration::from_secs(30) {
        {
            let mut p = probe.lock().expect("probe");
            p.sent.push(Instant::now());
            p.recv.push(None);
        }
        let _ = writer.write(twist(seq), None);
        seq += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let through = probe
            .lock()
            .expect("probe")
            .recv
            .iter()
            .any(Option::is_some);
        if through {
            // A moment for the remaining matches, then past everything sent so far.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return seq + 10;
        }
    }
    panic!("nothing got through within 30 s");
}

/// The in-process share of a bridged message: decoding a Twist and the embedded bridge demo
/// policy's decision (what the relay does before the WAL and the republish).
fn decide_cost(secs: f64) {
    use autonomy::bridge::cdr::{Decoder, WcharWidth};
    use autonomy::bridge::msgdef::{Library, TypeSet};
    use autonomy::policy::{PolicyEvaluator, PolicyInput};
    use autonomy::types::{Source, ToolKind};
    let mut set = TypeSet::new();
    let id = set
        .resolve(&Library::default(), "geometry_msgs/msg/Twist")
        .expect("Twist");
    let policy = autonomy::policy::eval::bridge_demo_policy().expect("policy");
    let kind = ToolKind::parse("tool.ros2.topic.publish").expect("kind");
    let sample = twist(1);
    let mut extra = serde_json::Map::new();
    extra.insert("rate".into(), 100.into());
    let (mut dec, mut eval) = (Vec::new(), Vec::new());
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let t0 = Instant::now();
        let m = Decoder::new(&set, WcharWidth::Four)
            .decode(id, &sample.data)
            .expect("decode");
        let t1 = Instant::now();
        let mut params = serde_json::Map::new();
        params.insert("topic".into(), "/cmd_vel".into());
        params.insert("type".into(), "geometry_msgs/msg/Twist".into());
        params.insert("message".into(), serde_json::Value::Object(m));
        let v = policy.evaluate(&PolicyInput {
            kind: &kind,
            params: &params,
            source: Source::new("bridge"),
            agent: &autonomy::types::Agent::anonymous(),
            allowed_domains: &[],
            extra: Some(&extra),
        });
        let t2 = Instant::now();
        assert_eq!(v.decision, autonomy::types::Decision::Allow);
        dec.push(t1.duration_since(t0).as_nanos() as u64);
        eval.push(t2.duration_since(t1).as_nanos() as u64);
    }
    dec.sort_unstable();
    eval.sort_unstable();
    println!(
        "in process, per Twist: decode p50 {:.1} µs p99 {:.1} µs; bridge demo policy p50 {:.1} µs p99 {:.1} µs\n",
        pct(&dec, 0.5),
        pct(&dec, 0.99),
        pct(&eval, 0.5),
        pct(&eval, 0.99)
    );
}

/// `autonomy runtime start --bridge` in `mode`, killed on drop.
struct Daemon {
    child: Child,
    /// Its HTTP address (`host:port`), for `GET /metrics`.
    addr: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// The relay histogram of the bench's topic, and the WAL's fdatasync histogram.
const SCRAPED: [&str; 2] = [
    r#"autonomy_bridge_relay_seconds_bucket{topic="/cmd_vel",direction="agent_to_robot",le=""#,
    r#"autonomy_wal_fsync_seconds_bucket{le=""#,
];

impl Daemon {
    /// The cumulative buckets `(upper bound in s, count)` of each [`SCRAPED`] histogram, `+Inf`
    /// as infinity; empty when the scrape fails.
    fn scrape(&self) -> [Vec<(f64, u64)>; 2] {
        let Ok(mut s) = std::net::TcpStream::connect(&self.addr) else {
            return Default::default();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        SCRAPED.map(|prefix| {
            body.lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .filter_map(|l| {
                    let (le, n) = l.split_once("\"} ")?;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    };
                    Some((le, n.trim().parse().ok()?))
                })
                .collect()
        })
    }
}

/// The observations between two scrapes, as a share within each bound.
fn relay_row(before: &[(f64, u64)], after: &[(f64, u64)]) -> Option<(u64, Vec<(f64, f64)>)> {
    let base = |le: f64| before.iter().find(|(b, _)| *b == le).map_or(0, |(_, n)| *n);
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| (*le, n.saturating_sub(base(*le))))
        .collect();
    let total = delta.last()?.1;
    (total > 0).then(|| {
        (
            total,
            delta
                .iter()
                .map(|(le, n)| (*le, *n as f64 / total as f64))
                .collect(),
        )
    })
}

fn daemon(args: &Args, dir: &Path_, mode: &str, agent: u16, robot: u16) -> Daemon {
    let cfg = dir.join(format!("bridge-{mode}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\naudit = \"{mode}\"\nqos = {{ depth = 1000 }}\n{}",
            if mode == "batched" {
                format!("batch_window_ms = {}\n", args.batch_window_ms)
            } else {
                String::new()
            }
        ),
    )
    .expect("config");
    let mut child = Command::new(&args.autonomy)
        .args(["runtime", "start", "--listen", "127.0.0.1:0", "--wal-dir"])
        .arg(dir.join(format!("wal-{mode}")))
        .arg("--bridge")
        .arg(&cfg)
        .args([
            "--agent-domain",
            &agent.to_string(),
            "--wal-sync",
            &args.wal_sync,
            "--wal-flushes",
            &args.wal_flushes,
            "--wal-overlap-after",
            &args.wal_overlap_after,
        ])
        .env("ROS_DOMAIN_ID", robot.to_string())
        .env_remove("RMW_IMPLEMENTATION")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start autonomy");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err)
            .lines()
            .map_while(std::result::Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let end = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(l) if l.contains("listening on") => {
                break l
                    .split("listening on http://")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or_default()
                    .trim_end_matches('/')
                    .to_string();
            }
            Ok(_) => {}
            Err(_) => panic!("autonomy did not start"),
        }
    };
    Daemon { child, addr }
}

fn fsync_once(dir: &Path_, secs: f64, into: &mut Vec<u64>) {
    let (fs, _) = fsync::raw_fdatasync(dir, secs, Preallocate::ZeroFill);
    into.extend(fs);
}

/// A bucket bound for a table head: `250 µs`, `2.5 ms`.
fn human(secs: f64) -> String {
    if secs < 1e-3 {
        format!("{} µs", (secs * 1e6).round())
    } else {
        format!("{} ms", secs * 1e3)
    }
}

/// Whether a measured figure meets its target.
fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).expect("dir");
    let tmp = tempfile::Builder::new()
        .prefix("bridge-bench-")
        .tempdir_in(&parent)
        .expect("temp dir");
    let d = args.domain;
    let mut fsyncs = Vec::new();
    fsync_once(tmp.path(), 2.0, &mut fsyncs);
    decide_cost(2.0);

    // All three paths up at once: the baseline (one domain), strict and batched (two each).
    let mut sides = Vec::new();
    let mut subs = Vec::new();
    let mut daemons = Vec::new();
    let mut paths = Vec::new();
    for (name, mode, agent_d, robot_d) in [
        ("direct pub/sub (baseline)", None, d, d),
        ("bridge, strict", Some("strict"), d + 1, d + 2),
        ("bridge, batched", Some("batched"), d + 3, d + 4),
    ] {
        if let Some(mode) = mode {
            daemons.push(daemon(&args, tmp.path(), mode, agent_d, robot_d));
        }
        let probe = Arc::new(Mutex::new(Probe::default()));
        let mut publisher = Side::new(agent_d, &[]).expect("publisher");
        let mut subscriber = Side::new(robot_d, &[]).expect("subscriber");
        subs.push(subscribe(&mut subscriber, probe.clone()));
        let writer = publisher.writer(&topic()).expect("writer");
        let next = warm_up(&writer, &probe).await;
        sides.push(publisher);
        sides.push(subscriber);
        paths.push(Path {
            name: name.to_string(),
            writer,
            probe,
            next,
        });
    }

    // Latency: for each rate, rounds of baseline, strict, batched.
    let mut table: Vec<(u32, Vec<Summary>)> = Vec::new();
    // Per rate, daemon (strict, batched) and scraped histogram: its change over the rounds.
    type Row = Option<(u64, Vec<(f64, f64)>)>;
    let mut inside: Vec<(u32, Vec<[Row; 2]>)> = Vec::new();
    for &rate in &args.rates {
        let mut runs: Vec<Runs> = paths.iter().map(|_| Runs::default()).collect();
        let before: Vec<_> = daemons.iter().map(Daemon::scrape).collect();
        for _ in 0..args.rounds {
            for (p, r) in paths.iter_mut().zip(runs.iter_mut()) {
                r.add(p.run(rate, args.secs).await);
            }
        }
        table.push((rate, runs.into_iter().map(Runs::summary).collect()));
        inside.push((
            rate,
            daemons
                .iter()
                .zip(&before)
                .map(|(d, b)| {
                    let [relay, fsync] = d.scrape();
                    [relay_row(&b[0], &relay), relay_row(&b[1], &fsync)]
                })
                .collect(),
        ));
    }
    fsync_once(tmp.path(), 2.0, &mut fsyncs);

    // Sustained rate, strict.
    let mut sustained = Vec::new();
    for &rate in &args.max_rates {
        let r = paths[1].run(rate, args.max_secs).await;
        sustained.push((rate, r.summary()));
    }
    fsync_once(tmp.path(), 2.0, &mut fsyncs);
    fsyncs.sort_unstable();
    // The same disk synced at each latency rate's pace (idle between syncs, as the strict WAL is).
    let paced: Vec<(u32, f64, f64)> = args
        .rates
        .iter()
        .map(|&rate| {
            let every = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            let mut v = fsync::paced_fdatasync(tmp.path(), 3.0, every);
            v.sort_unstable();
            (rate, pct(&v, 0.5), pct(&v, 0.99))
        })
        .collect();
    let (fs50, fs99, fs999) = (pct(&fsyncs, 0.5), pct(&fsyncs, 0.99), pct(&fsyncs, 0.999));

    println!(
        "fdatasync (256 B records, preallocated file) on {}: p50 {fs50:.0} µs, p99 {fs99:.0} µs, p99.9 {fs999:.0} µs, max {:.0} µs ({} syncs before, between and after the runs)\n",
        parent.display(),
        fsyncs.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
        fsyncs.len()
    );
    for (rate, p50, p99) in &paced {
        println!(
            "fdatasync at {rate} syncs/s (the disk idle in between, 3 s after the runs): p50 {p50:.0} µs, p99 {p99:.0} µs"
        );
    }
    println!();
    println!(
        "Latency: {} rounds of {} s per path and rate, the paths taking turns.\n",
        args.rounds, args.secs
    );
    println!(
        "| path | msgs/s | sent | lost | p50 µs | p99 µs | max µs | added p50 µs | added p99 µs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (rate, sums) in &table {
        let base = &sums[0];
        for (i, (p, r)) in paths.iter().zip(sums).enumerate() {
            let added = |a: f64, b: f64| {
                if i == 0 {
                    "—".to_string()
                } else {
                    format!("{:+.0}", a - b)
                }
            };
            println!(
                "| {} | {rate} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} |",
                p.name,
                r.sent,
                r.lost(),
                r.p50_us,
                r.p99_us,
                r.max_us,
                added(r.p50_us, base.p50_us),
                added(r.p99_us, base.p99_us),
            );
        }
    }
    // The daemon's own share of the trip, and its WAL's fdatasyncs meanwhile.
    let shown = [100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3];
    println!(
        "\nInside each daemon over the same rounds: `relay` is `autonomy_bridge_relay_seconds` (from the arrival in its DDS reader to the republish), `fdatasync` its WAL's (`autonomy_wal_fsync_seconds`). Share within:\n"
    );
    print!("| path | msgs/s | what | n |");
    for b in shown {
        print!(" ≤ {} |", human(b));
    }
    println!(" p99 within |");
    println!("|---|---:|---|---:|{}---|", "---:|".repeat(shown.len()));
    for (rate, rows) in &inside {
        for (p, pair) in paths[1..].iter().zip(rows) {
            for (what, row) in ["relay", "fdatasync"].iter().zip(pair) {
                let Some((n, shares)) = row else {
                    println!("| {} | {rate} | {what} | (no scrape) |", p.name);
                    continue;
                };
                print!("| {} | {rate} | {what} | {n} |", p.name);
                for b in shown {
                    let share = shares.iter().find(|(le, _)| (*le - b).abs() < 1e-12);
                    match share {
                        Some((_, f)) => print!(" {:.1}% |", f * 100.0),
                        None => print!(" — |"),
                    }
                }
                let p99 = shares.iter().find(|(_, f)| *f >= 0.99).map(|(le, _)| *le);
                println!(
                    " {} |",
                    p99.map_or("—".to_string(), |le| if le.is_finite() {
                        format!("≤ {}", human(le))
                    } else {
                        "> 10 s".to_string()
                    })
                );
            }
        }
    }
    println!(
        "\nSustained rate, strict (each step {} s):\n",
        args.max_secs
    );
    println!("| offered msgs/s | sent | lost | received msgs/s | p50 µs | p99 µs |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (rate, r) in &sustained {
        println!(
            "| {rate} | {} | {} | {:.0} | {:.0} | {:.0} |",
            r.sent,
            r.lost(),
            r.recv_rate,
            r.p50_us,
            r.p99_us
        );
    }

    // The targets.
    let at = |rate: u32, path: usize| {
        table
            .iter()
            .find(|(r, _)| *r == rate)
            .map(|(_, s)| (s[path].p99_us - s[0].p99_us, s[path].lost()))
    };
    println!("\n| target | measured | |");
    println!("|---|---|---|");
    if let Some((added, lost)) = at(1000, 2) {
        println!(
            "| batched adds < 1 ms p99 at 1 kHz | {added:+.0} µs, {lost} lost | {} |",
            verdict(added < 1000.0 && lost == 0)
        );
    }
    for rate in [100, 1000] {
        if let Some((added, lost)) = at(rate, 1) {
            println!(
                "| strict adds < one fsync (p99 {fs99:.0} µs) + 1 ms p99 at {rate} msgs/s | {added:+.0} µs, {lost} lost | {} |",
                verdict(added < fs99 + 1000.0 && lost == 0)
            );
            if let Some((_, _, p99)) = paced.iter().find(|(r, _, _)| *r == rate) {
                println!(
                    "| the same, fsync at {rate} syncs/s (p99 {p99:.0} µs) | {added:+.0} µs, {lost} lost | {} |",
                    verdict(added < p99 + 1000.0 && lost == 0)
                );
            }
        }
    }
    let best = sustained
        .iter()
        .filter(|(_, r)| r.lost() == 0)
        .map(|(rate, _)| *rate)
        .max();
    println!(
        "| ≥ 5,000 Twist/s sustained, strict, no loss | {} | {} |",
        best.map_or("none without loss".to_string(), |b| format!(
            "highest step without loss: {b} msgs/s"
        )),
        verdict(best.is_some_and(|b| b >= 5000))
    );

    drop(paths);
    for s in sides {
        s.shutdown().await;
    }
    drop(daemons);
}
