//! Shared helpers: the built binary and processes run with deadlines (`cli`), the daemon
//! (`daemon`), a raw HTTP client (`client`), a local HTTP server (`server`), the real ROS 2 and
//! children in their own process group (`ros`), and what several subjects read back: the WAL
//! through `autonomy wal`, and ROS domain ids.

mod cli;
mod client;
mod daemon;
mod ros;
mod server;

pub use cli::*;
pub use client::*;
pub use daemon::*;
pub use ros::*;
pub use server::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_autonomy"))
}

/// The repository's root (for `examples/`, `tests/fake_ros2`, `.venv`, …).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path as the `&str` argument a command line takes (test paths are UTF-8).
pub fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Waits for a child with a deadline; kills it (and returns `None`) when the deadline passes.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` every 100 ms until it is true or `limit` passes; then one last try.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// The lines of `r`, read on a thread of their own, as they arrive.
pub fn read_lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Sets `resource`'s limits in the process `cmd` starts, before it runs (never in this one, which
/// every test shares).
pub fn set_rlimit(
    cmd: &mut Command,
    resource: nix::sys::resource::Resource,
    soft: nix::sys::resource::rlim_t,
    hard: nix::sys::resource::rlim_t,
) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure makes one async-signal-safe call (setrlimit)
    // and touches no lock or allocation of this process.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(resource, soft, hard).map_err(std::io::Error::from)
        });
    }
}

/// All WAL records of `dir`, read through `autonomy wal inspect --json`.
pub fn wal_records(dir: &Path) -> Vec<Value> {
    let o = cli(&["wal", "inspect", "--json", "--dir", p(dir)], &[]);
    assert_eq!(o.code, 0, "wal inspect failed: {}", o.stderr);
    o.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// The WAL records about one audit id.
pub fn records_for(dir: &Path, audit_id: &str) -> Vec<Value> {
    wal_records(dir)
        .into_iter()
        .filter(|r| r["audit_id"] == audit_id)
        .collect()
}

/// Runs `autonomy wal verify --dir`, returning (exit code, stdout+stderr).
pub fn wal_verify(dir: &Path) -> (i32, String) {
    let o = cli(&["wal", "verify", "--dir", p(dir)], &[]);
    (o.code, o.all())
}

/// A `ROS_DOMAIN_ID` of its own for each call in this process (at most 112 calls; the suite
/// makes about 60 when every ROS test runs): a block of 112 ids chosen by the pid, so that a test
/// process running at the same time may use the other block, then the next id in it. All within
/// 1..=224, so 225..=232 stay free for the benchmarks (232 is the highest valid id).
pub fn ros_domain() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const BLOCK: u16 = 112;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    assert!(n < BLOCK, "more than {BLOCK} ROS domains in one test run");
    1 + (std::process::id() % 2) as u16 * BLOCK + n
}

/// `.venv/bin/python` with PyPI `cyclonedds`: the independent DDS peer (`tests/ros_peer.py`).
pub fn venv_python() -> PathBuf {
    let py = repo().join(".venv/bin/python");
    let ok = py.is_file()
        && Command::new(&py)
            .args(["-c", "import cyclonedds"])
            .output()
            .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the ROS 2 interop tests need {} with PyPI cyclonedds: run .ci/run (or: python3 -m venv .venv && .venv/bin/pip install cyclonedds==11.0.1)",
        py.display()
    );
    py
}

/// The embedded demo policy's source, for tests that package it.
pub const DEMO_REGO: &str = include_str!("../../../src/policy/eval/demo.rego");

/// `.venv/bin/python` when it can import `module`. Without it: a failure under `CI=true`, else
/// one skip line for `test` and `None`.
pub fn venv_with(module: &str, package: &str, test: &str) -> Option<PathBuf> {
    let py = repo().join(".venv/bin/python");
    let ok = py.is_file()
        && Command::new(&py)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    let how = format!(
        "{} with PyPI {package} (.ci/run installs it at the version it pins)",
        py.display()
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs {how}; CI=true, so that is a failure"
    );
    eprintln!("skipped {test}: it needs {how}");
    None
}
