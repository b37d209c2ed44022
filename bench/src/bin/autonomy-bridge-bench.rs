//! `autonomy-bridge-bench`: what the governed topic bridge adds to a ROS 2 message's trip, beside
//! a direct pub/sub baseline measured in the same run on the same machine.
//!
//! Not a test. Build both in release and run on the disk you care about:
//! `cargo build --release && cargo run --release -p autonomy-bench --bin autonomy-bridge-bench
//!  -- --autonomy target/release/autonomy --dir ./bench-tmp`.
//!
//! One process publishes `geometry_msgs/Twist` (the sequence number in `linear.y`) and
//! subscribes, both through RustDDS raw endpoints: directly on one domain (the baseline), and
//! through `autonomy runtime start --bridge` (the embedded bridge demo policy, the WAL with
//! fdatasync in `--dir`) from the agent domain to the robot domain, in `strict` and `batched`
//! mode. Latency is receive time minus send time in this one process. Prints Markdown tables
//! (see `docs/benchmarks.md`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
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
    /// Seconds per latency measurement.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
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
    /// The first of five DDS domains: the baseline's, then agent and robot for strict, then for
    /// batched (fresh domains per mode, so no endpoint of an earlier daemon lingers in discovery).
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

struct Result {
    sent: usize,
    received: usize,
    p50_us: f64,
    p99_us: f64,
    recv_rate: f64,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Publishes at `rate` for `secs` on `writer`, reading `reader`'s side through `probe`.
async fn run(
    writer: &RawWriter,
    probe: &Arc<Mutex<Probe>>,
    first: u64,
    rate: u32,
    secs: f64,
) -> Result {
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
                let mut p = probe.lock().expect("probe");
                let i = seq as usize;
                if p.sent.len() <= i {
                    p.sent.resize(i + 1, start);
                    p.recv.resize(i + 1, None);
                }
                p.sent[i] = Instant::now();
            }
            let _ = writer.write(twist(seq), None);
            seq += 1;
        }
    }
    // Let the last ones arrive.
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        let done = {
            let p = probe.lock().expect("probe");
            (first..first + total).all(|s| p.recv.get(s as usize).is_some_and(Option::is_some))
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = probe.lock().expect("probe");
    let mut lat = Vec::new();
    let (mut t0, mut t1) = (None::<Instant>, None::<Instant>);
    for s in first..first + total {
        if let Some(Some(r)) = p.recv.get(s as usize) {
            lat.push(r.saturating_duration_since(p.sent[s as usize]).as_nanos() as u64);
            t0 = Some(t0.map_or(*r, |t| t.min(*r)));
            t1 = Some(t1.map_or(*r, |t| t.max(*r)));
        }
    }
    lat.sort_unstable();
    let span = match (t0, t1) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    Result {
        sent: total as usize,
        received: lat.len(),
        p50_us: pct(&lat, 0.50),
        p99_us: pct(&lat, 0.99),
        recv_rate: if span > 0.0 {
            lat.len() as f64 / span
        } else {
            0.0
        },
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
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn daemon(bin: &Path, dir: &Path, mode: &str, agent: u16, robot: u16) -> Daemon {
    let cfg = dir.join(format!("bridge-{mode}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[[topic]]\nname = \"/cmd_vel\"\ntype = \"geometry_msgs/msg/Twist\"\naudit = \"{mode}\"\nqos = {{ depth = 1000 }}\n"
        ),
    )
    .expect("config");
    let mut child = Command::new(bin)
        .args(["runtime", "start", "--listen", "127.0.0.1:0", "--wal-dir"])
        .arg(dir.join(format!("wal-{mode}")))
        .arg("--bridge")
        .arg(&cfg)
        .args(["--agent-domain", &agent.to_string()])
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
    loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(l) if l.contains("listening on") => break,
            Ok(_) => {}
            Err(_) => panic!("autonomy did not start"),
        }
    }
    Daemon(child)
}

fn row(what: &str, rate: u32, r: &Result, base: Option<&Result>) {
    let added = |a: f64, b: Option<f64>| b.map_or("—".to_string(), |b| format!("{:+.0}", a - b));
    println!(
        "| {what} | {rate} | {} | {} | {:.0} | {:.0} | {} | {} |",
        r.sent,
        r.sent - r.received,
        r.p50_us,
        r.p99_us,
        added(r.p50_us, base.map(|b| b.p50_us)),
        added(r.p99_us, base.map(|b| b.p99_us)),
    );
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
    let base_d = args.domain;

    let (mut fs, _) = fsync::raw_fdatasync(tmp.path(), 2.0, Preallocate::ZeroFill);
    fs.sort_unstable();
    println!(
        "fdatasync on {}: p50 {:.0} µs, p99 {:.0} µs\n",
        parent.display(),
        pct(&fs, 0.5),
        pct(&fs, 0.99)
    );

    decide_cost(2.0);

    // Baseline: the same raw endpoints, one hop, on one domain.
    let base_probe = Arc::new(Mutex::new(Probe::default()));
    let mut base_pub = Side::new(base_d, &[]).expect("baseline publisher");
    let mut base_sub = Side::new(base_d, &[]).expect("baseline subscriber");
    let _bs = subscribe(&mut base_sub, base_probe.clone());
    let base_w = base_pub.writer(&topic()).expect("writer");
    let mut next = warm_up(&base_w, &base_probe).await;
    let mut baselines = Vec::new();
    for &rate in &args.rates {
        let r = run(&base_w, &base_probe, next, rate, args.secs).await;
        next += r.sent as u64 + 10;
        baselines.push(r);
    }
    drop(base_w);
    base_pub.shutdown().await;
    base_sub.shutdown().await;

    println!("| path | msgs/s | sent | lost | p50 µs | p99 µs | added p50 µs | added p99 µs |");
    println!("|---|---|---|---|---|---|---|---|");
    for (rate, b) in args.rates.iter().zip(&baselines) {
        row("direct pub/sub (baseline)", *rate, b, None);
    }
    let mut sustained = Vec::new();
    let mut after = Vec::new();
    for (mode, agent_d) in [("strict", args.domain + 1), ("batched", args.domain + 3)] {
        let robot_d = agent_d + 1;
        let _d = daemon(&args.autonomy, tmp.path(), mode, agent_d, robot_d);
        let probe = Arc::new(Mutex::new(Probe::default()));
        let mut agent = Side::new(agent_d, &[]).expect("agent side");
        let mut robot = Side::new(robot_d, &[]).expect("robot side");
        let _s = subscribe(&mut robot, probe.clone());
        let w = agent.writer(&topic()).expect("writer");
        let mut next = warm_up(&w, &probe).await;
        for (rate, b) in args.rates.iter().zip(&baselines) {
            let r = run(&w, &probe, next, *rate, args.secs).await;
            next += r.sent as u64 + 10;
            row(&format!("bridge, {mode}"), *rate, &r, Some(b));
        }
        if mode == "strict" {
            for &rate in &args.max_rates {
                let r = run(&w, &probe, next, rate, args.max_secs).await;
                next += r.sent as u64 + 10;
                sustained.push((rate, r));
            }
        }
        agent.shutdown().await;
        robot.shutdown().await;
        let (mut fs, _) = fsync::raw_fdatasync(tmp.path(), 2.0, Preallocate::ZeroFill);
        fs.sort_unstable();
        after.push(format!(
            "fdatasync after the {mode} runs: p50 {:.0} µs, p99 {:.0} µs",
            pct(&fs, 0.5),
            pct(&fs, 0.99)
        ));
    }
    println!();
    for l in &after {
        println!("{l}");
    }
    println!(
        "\nSustained rate, strict (each step {} s):\n",
        args.max_secs
    );
    println!("| offered msgs/s | sent | lost | received msgs/s | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|---|");
    for (rate, r) in &sustained {
        println!(
            "| {rate} | {} | {} | {:.0} | {:.0} | {:.0} |",
            r.sent,
            r.sent - r.received,
            r.recv_rate,
            r.p50_us,
            r.p99_us
        );
    }
}
