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
                let r = NewRecord::new(RecordType::Decision, Some(AuditId::new()))
                    .with("kind", "tool.http_get")
                    .with("decision", "allow")
                    .with("layer", "policy")
                    .with("policy_ref", "embedded:demo")
                    .with("source", "http");
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
