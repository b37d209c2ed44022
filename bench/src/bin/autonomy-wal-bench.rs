//! `autonomy-wal-bench`: raw fdatasync latency and WAL group-commit throughput on one disk.
//!
//! Not a test. Run a release build on the disk you care about:
//! `cargo run --release -p autonomy-bench --bin autonomy-wal-bench -- --dir ./bench-tmp --secs 3`.
//! Prints a Markdown table (see `docs/benchmarks.md`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use autonomy::types::AuditId;
use autonomy::wal::{NewRecord, Preallocate, RecordType, SyncMode, Wal, WalOptions};
use clap::Parser;

use autonomy_bench::fsync;

/// Measures fdatasync latency and WAL appends/s with 1, 16 and 64 writer threads.
#[derive(Parser)]
#[command(name = "autonomy-wal-bench")]
struct Args {
    /// Parent directory for the scratch files (a temp dir is made inside and removed).
    /// Default: $TMPDIR or the current directory.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.5)]
    secs: f64,
    /// Writer thread counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    threads: Vec<usize>,
    /// Segment size for the WAL runs.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    segment_bytes: u64,
    /// Only the record→durable comparison (`--paced-rates`, `--saturate`): one flush at a time
    /// against overlapping flushes, interleaved in rounds.
    #[arg(long)]
    durable_only: bool,
    /// Records per second submitted (as the bridge does) for the record→durable comparison.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    paced_rates: Vec<u64>,
    /// Concurrent async appenders, each submitting its next record once the last is durable
    /// (saturation), for the record→durable comparison; 0: none.
    #[arg(long, default_value_t = 16)]
    saturate: usize,
    /// Rounds of the record→durable comparison (each round runs both modes, alternating).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

struct Row {
    what: String,
    ops: u64,
    secs: f64,
    lat: Vec<u64>,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn print_row(r: &mut Row) {
    r.lat.sort_unstable();
    println!(
        "| {} | {:.0} | {:.0} | {:.0} | {} |",
        r.what,
        r.ops as f64 / r.secs,
        pct(&r.lat, 0.50),
        pct(&r.lat, 0.99),
        r.ops
    );
    let _ = std::io::stdout().flush();
}

/// 256-byte write + fdatasync to a plain file, one at a time.
fn raw_fdatasync(dir: &Path, secs: f64, pre: Preallocate) -> Row {
    let (lat, secs) = fsync::raw_fdatasync(dir, secs, pre);
    Row {
        what: format!(
            "raw write+fdatasync 256 B, 1 thread, prealloc={}",
            name(pre)
        ),
        ops: lat.len() as u64,
        secs,
        lat,
    }
}

fn name(p: Preallocate) -> &'static str {
    match p {
        Preallocate::Off => "off",
        Preallocate::Fallocate => "fallocate",
        Preallocate::ZeroFill => "zero-fill",
    }
}

/// WAL appends (fsync on) from `threads` threads for `secs`.
fn wal_run(dir: &Path, secs: f64, threads: usize, pre: Preallocate, seg: u64) -> Row {
    let wdir = dir.join(format!("wal-{}-{threads}", name(pre)));
    let (wal, _) = Wal::open(
        &wdir,
        WalOptions {
            segment_bytes: seg,
            sync: SyncMode::Fsync,
            preallocate: pre,
            ..WalOptions::default()
        },
    )
    .expect("open WAL");
    let wal = Arc::new(wal);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut hs = Vec::new();
    for _ in 0..threads {
        let w = wal.clone();
        hs.push(std::thread::spawn(move || {
            let mut lat = Vec::new();
            while Instant::now() < end {
                // About 256 bytes of payload in all, like one decision record.
                let r = decision();
                let t = Instant::now();
                w.append(r).expect("append");
                lat.push(t.elapsed().as_nanos() as u64);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for h in hs {
        lat.extend(h.join().expect("writer thread"));
    }
    let secs = start.elapsed().as_secs_f64();
    drop(wal);
    let _ = std::fs::remove_dir_all(&wdir);
    Row {
        what: format!("WAL append, {threads} threads, prealloc={}", name(pre)),
        ops: lat.len() as u64,
        secs,
        lat,
    }
}

/// A decision record of about 256 bytes of payload.
fn decision() -> NewRecord {
    NewRecord::new(RecordType::Decision, Some(AuditId::new()))
        .with("kind", "tool.http_get")
        .with("decision", "allow")
        .with("layer", "policy")
        .with("policy_ref", "embedded:demo")
        .with("source", "http")
}

/// Record→durable latencies (ns) with `Wal::submit` on a 2-worker runtime (the daemon's on this
/// VM): at `rate` records/s for `secs`, or with `rate` 0, `saturate` appenders back to back.
/// Also the WAL's own fdatasync count and mean (µs).
fn durable_run(
    dir: &Path,
    secs: f64,
    rate: u64,
    saturate: usize,
    overlap: bool,
) -> (Vec<u64>, u64, f64) {
    let wdir = dir.join(format!("durable-{rate}-{overlap}"));
    let opts = WalOptions {
        overlap_syncs: overlap,
        ..WalOptions::default()
    };
    let wal = Arc::new(Wal::open(&wdir, opts).expect("open WAL").0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let lat = rt.block_on(async {
        let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = tokio::time::Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        if rate > 0 {
            let n = (secs * rate as f64) as u64;
            for i in 0..n {
                tokio::time::sleep_until(start + Duration::from_nanos(i * 1_000_000_000 / rate))
                    .await;
                let t = Instant::now();
                let done = wal.submit(decision()).expect("submit");
                let lat = lat.clone();
                tasks.push(tokio::spawn(async move {
                    done.await.expect("durable");
                    if let Ok(mut l) = lat.lock() {
                        l.push(t.elapsed().as_nanos() as u64);
                    }
                }));
            }
        } else {
            for _ in 0..saturate {
                let (wal, lat) = (wal.clone(), lat.clone());
                tasks.push(tokio::spawn(async move {
                    while tokio::time::Instant::now() < end {
                        let t = Instant::now();
                        wal.submit(decision())
                            .expect("submit")
                            .await
                            .expect("durable");
                        if let Ok(mut l) = lat.lock() {
                            l.push(t.elapsed().as_nanos() as u64);
                        }
                    }
                }));
            }
        }
        for t in tasks {
            t.await.expect("task");
        }
        std::mem::take(&mut *lat.lock().expect("latencies"))
    });
    drop(rt);
    let s = wal.stats();
    let fsync_mean = s.fsync_ns.sum as f64 / s.fsync_ns.count.max(1) as f64 / 1000.0;
    drop(wal);
    let _ = std::fs::remove_dir_all(&wdir);
    (lat, s.fsync_ns.count, fsync_mean)
}

/// Record→durable, one flush at a time against overlapping flushes: the two modes alternate
/// within each round, so load from other work hits both alike.
fn durable_compare(dir: &Path, a: &Args) {
    println!(
        "| load | flushes | records | p50 µs | p99 µs | p99.9 µs | max µs | fdatasyncs | fdatasync mean µs |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut loads: Vec<u64> = a.paced_rates.clone();
    if a.saturate > 0 {
        loads.push(0);
    }
    for &rate in &loads {
        let mut all = [Vec::new(), Vec::new()];
        let mut syncs = [(0u64, 0.0f64); 2];
        for round in 0..a.rounds {
            // Alternate which mode goes first.
            for k in 0..2 {
                let overlap = (k + round) % 2 == 1;
                let (lat, n, mean) = durable_run(dir, a.secs, rate, a.saturate, overlap);
                let i = usize::from(overlap);
                all[i].extend(lat);
                syncs[i].1 = (syncs[i].1 * syncs[i].0 as f64 + mean * n as f64)
                    / (syncs[i].0 + n).max(1) as f64;
                syncs[i].0 += n;
            }
        }
        for (i, lat) in all.iter_mut().enumerate() {
            lat.sort_unstable();
            let load = if rate > 0 {
                format!("{rate} records/s")
            } else {
                format!("saturated, {} appenders", a.saturate)
            };
            println!(
                "| {load} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0} |",
                if i == 1 {
                    "overlapping"
                } else {
                    "one at a time"
                },
                lat.len(),
                pct(lat, 0.50),
                pct(lat, 0.99),
                pct(lat, 0.999),
                pct(lat, 1.0),
                syncs[i].0,
                syncs[i].1
            );
            let _ = std::io::stdout().flush();
        }
    }
}

fn main() {
    let a = Args::parse();
    let parent = a
        .dir
        .clone()
        .or_else(|| std::env::var_os("TMPDIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&parent).expect("create --dir");
    let tmp = tempfile::Builder::new()
        .prefix("autonomy-wal-bench-")
        .tempdir_in(&parent)
        .expect("temp dir");
    let dir = tmp.path();
    eprintln!("autonomy-wal-bench: scratch dir {}", dir.display());
    if a.durable_only {
        durable_compare(dir, &a);
        return;
    }
    println!("| measurement | ops/s | p50 µs | p99 µs | ops |");
    println!("|---|---:|---:|---:|---:|");
    let modes = [
        Preallocate::Off,
        Preallocate::Fallocate,
        Preallocate::ZeroFill,
    ];
    for pre in modes {
        print_row(&mut raw_fdatasync(dir, a.secs, pre));
    }
    for &t in &a.threads {
        for pre in modes {
            print_row(&mut wal_run(dir, a.secs, t, pre, a.segment_bytes));
        }
    }
}
