//! Audit export to NATS JetStream, against a real `nats-server -js` (Debian's `nats-server`)
//! started by each test on 127.0.0.1: records arrive in order and byte for byte; a broker killed
//! and restarted, or a daemon killed, loses and duplicates nothing; the cursor is never ahead of
//! the stream; `wal export` and `wal export-status`.
//!
//! The stream is read back with async-nats (the product's own client library), independently of
//! the exporter: every message of the node's subject, its headers and payload.
//!
//! Without `nats-server` these tests fail under `CI=true` (`.ci/run` installs it) and print one
//! skip line elsewhere.

mod live;
mod metrics;
mod once;
mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// The stream the tests use (the default).
pub const STREAM: &str = "AUTONOMY_AUDIT";

/// `nats-server` when installed; `None` (after one skip line) when not and not under CI.
pub fn nats_server(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: nats-server is missing and CI=true: .ci/run must install Debian's nats-server"
        );
        eprintln!("skipped {test}: nats-server is not installed (apt-get install nats-server)");
    }
    found
}

/// A `nats-server -js` on a free loopback port with its own store, killed on drop; `kill` and
/// `start` again keep the port and the store (a broker crash and restart).
pub struct Broker {
    bin: PathBuf,
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Broker {
    pub fn start(bin: PathBuf) -> Broker {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("js");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut b = Broker {
            bin,
            child: None,
            port,
            store,
            _tmp: tmp,
        };
        b.run();
        b
    }

    /// Starts the server (again) and waits until it takes connections.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let child = Command::new(&self.bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        assert!(
            eventually(Duration::from_secs(20), || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            }),
            "nats-server did not listen on {addr} within 20 s"
        );
    }

    /// SIGKILL: a broker crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGSTOP: a broker that takes connections and answers nothing (a hung host).
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT after [`Broker::pause`].
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let c = self.child.as_ref().expect("the broker is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig).unwrap();
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message of the stream, as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Got {
    pub stream_seq: u64,
    /// `Nats-Msg-Id`.
    pub id: String,
    /// `Autonomy-Seq`.
    pub seq: u64,
    pub rtype: String,
    pub payload: Vec<u8>,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every message on `subject` in the stream, in stream order (read with an ordered consumer).
pub fn stream_messages(url: &str, subject: &str) -> Vec<Got> {
    rt().block_on(async {
        use futures::StreamExt;
        let deadline = Duration::from_secs(60);
        tokio::time::timeout(deadline, async {
            let client = async_nats::connect(url)
                .await
                .expect("connect to the broker");
            let js = async_nats::jetstream::new(client);
            let stream = js.get_stream(STREAM).await.expect("the stream exists");
            let last = match stream.get_last_raw_message_by_subject(subject).await {
                Ok(m) => m.sequence,
                Err(_) => return Vec::new(),
            };
            let consumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                    filter_subject: subject.to_string(),
                    ..Default::default()
                })
                .await
                .expect("consumer");
            let mut msgs = consumer.messages().await.expect("messages");
            let mut out = Vec::new();
            while let Some(m) = msgs.next().await {
                let m = m.expect("message");
                let info = m.info().expect("info");
                let sseq = info.stream_sequence;
                let h = m.headers.clone().unwrap_or_default();
                let get = |k: &str| h.get(k).map(|v| v.as_str().to_string()).unwrap_or_default();
                out.push(Got {
                    stream_seq: sseq,
                    id: get("Nats-Msg-Id"),
                    seq: get("Autonomy-Seq").parse().unwrap_or(0),
                    rtype: get("Autonomy-Type"),
                    payload: m.payload.to_vec(),
                });
                if sseq >= last {
                    break;
                }
            }
            out
        })
        .await
        .expect("reading the stream took over 60 s")
    })
}

/// Creates the stream beforehand (with a short duplicate window, so a test can show that
/// nothing but the search before sending keeps re-sends out once the window has passed).
pub fn create_stream(url: &str, dup_window: Duration, subjects: &str) {
    rt().block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec![subjects.into()],
            duplicate_window: dup_window,
            ..Default::default()
        })
        .await
        .expect("create the stream");
    })
}

/// The WAL's payloads, seq → raw JSON line, as `wal inspect --json` prints them.
pub fn wal_payloads(dir: &Path) -> BTreeMap<u64, String> {
    let o = cli(&["wal", "inspect", "--json", "--dir", p(dir)], &[]);
    assert_eq!(o.code, 0, "wal inspect failed: {}", o.stderr);
    o.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["seq"].as_u64().unwrap(), l.to_string())
        })
        .collect()
}

/// The cursor file, when there is one.
pub fn cursor(dir: &Path) -> Option<Value> {
    std::fs::read(dir.join("export.cursor"))
        .ok()
        .map(|b| serde_json::from_slice(&b).expect("the cursor is JSON"))
}

/// Checks that the stream holds each WAL record exactly once, byte for byte, under
/// `<node>:<seq>`; returns (messages, duplicates, missing) for the report.
pub fn assert_exactly_once(url: &str, node: &str, wal: &Path, what: &str) -> (usize, usize, usize) {
    let subject = format!("autonomy.audit.{node}");
    let want = wal_payloads(wal);
    let got = stream_messages(url, &subject);
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for g in &got {
        *seen.entry(g.seq).or_default() += 1;
        let raw = want
            .get(&g.seq)
            .unwrap_or_else(|| panic!("{what}: seq {} is in the stream, not in the WAL", g.seq));
        assert_eq!(
            String::from_utf8_lossy(&g.payload),
            *raw,
            "{what}: the payload of seq {} is not the stored bytes",
            g.seq
        );
    }
    let dups: Vec<_> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, n)| (*s, *n))
        .collect();
    let missing: Vec<_> = want
        .keys()
        .filter(|s| !seen.contains_key(s))
        .copied()
        .collect();
    assert!(
        dups.is_empty() && missing.is_empty(),
        "{what}: {} messages for {} records: {} duplicated (first {:?}), {} missing (first {:?})",
        got.len(),
        want.len(),
        dups.len(),
        &dups[..dups.len().min(5)],
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(got.len(), want.len(), "{what}: message count");
    for g in &got {
        assert_eq!(g.id, format!("{node}:{}", g.seq), "{what}: message id");
        let v: Value = serde_json::from_slice(&g.payload).unwrap();
        assert_eq!(
            v["type"],
            g.rtype.as_str(),
            "{what}: Autonomy-Type of seq {}",
            g.seq
        );
    }
    (got.len(), dups.len(), missing.len())
}

/// Starts a daemon exporting to `url` as `node`; its state dir is beside the WAL.
pub fn exporting_daemon(wal: &Path, url: &str, node: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["--demo", "--export", url, "--node-id", node];
    args.extend_from_slice(extra);
    let state = wal.with_file_name("state");
    Daemon::start_in(wal, &args, |c| {
        c.env("XDG_STATE_HOME", &state)
            .env_remove("AUTONOMY_NODE_ID");
    })
}

/// POSTs `tool.echo` (and every third call `tool.shell`, denied) from `threads` threads until
/// `stop` (or the daemon is gone, or 120 s); `answered` counts the 200/403 answers.
pub fn load(
    addr: std::net::SocketAddr,
    threads: usize,
    stop: &Arc<AtomicBool>,
    answered: &Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|w| {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120)
                {
                    i += 1;
                    let body = if i.is_multiple_of(3) {
                        r#"{"kind":"tool.shell","params":{"command":"id"}}"#.to_string()
                    } else {
                        format!(r#"{{"kind":"tool.echo","params":{{"message":"w{w}-{i}"}}}}"#)
                    };
                    match post(addr, &body) {
                        Some(200 | 403) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            })
        })
        .collect()
}

/// `wal export-status --json` of `dir`.
pub fn export_status(dir: &Path) -> Value {
    let o = cli(&["wal", "export-status", "--json", "--dir", p(dir)], &[]);
    assert_eq!(o.code, 0, "wal export-status: {}", o.all());
    serde_json::from_str(o.stdout.trim()).expect("export-status JSON")
}

/// One `POST /v1/tool`; its status, or `None` when the daemon is gone.
fn post(addr: std::net::SocketAddr, body: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let req = format!(
        "POST /v1/tool HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
