//! Shared test harness: runs the real `autonomy` binary and talks to it over real sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_autonomy"))
}

/// A daemon started with `autonomy runtime start`, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub wal_dir: PathBuf,
    pub stderr: mpsc::Receiver<String>,
    /// Lines printed on stderr before the start line.
    pub startup: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts the daemon on a free loopback port with a fresh WAL dir; `extra` are more flags.
    pub fn start(extra: &[&str]) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let wal = tmp.path().join("wal");
        let mut d = Self::start_in(&wal, extra, |_| {});
        d._tmp = Some(tmp);
        d
    }

    /// Starts the daemon on `wal_dir`; `tweak` may adjust the command (env, rlimits).
    pub fn start_in(wal_dir: &Path, extra: &[&str], tweak: impl FnOnce(&mut Command)) -> Daemon {
        Self::try_start_in(wal_dir, extra, tweak)
            .unwrap_or_else(|e| panic!("daemon did not start: {e}"))
    }

    /// As `start_in`, but returns the startup failure (stderr) instead of panicking.
    // The child is waited for by `Daemon::drop` on success and on every failure path below.
    #[allow(clippy::zombie_processes)]
    pub fn try_start_in(
        wal_dir: &Path,
        extra: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Result<Daemon, String> {
        let mut cmd = Command::new(bin());
        cmd.args(["runtime", "start", "--listen", "127.0.0.1:0", "--wal-dir"])
            .arg(wal_dir)
            .args(extra)
            .env_remove("AUTONOMY_WAL_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("spawn autonomy");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr: SocketAddr = rest
                            .split_whitespace()
                            .next()
                            .and_then(|a| a.parse().ok())
                            .expect("address in the start line");
                        return Ok(Daemon {
                            child,
                            addr,
                            wal_dir: wal_dir.to_path_buf(),
                            stderr: rx,
                            startup: seen,
                            _tmp: None,
                        });
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(st)) = child.try_wait() {
                        // Drain what is left.
                        while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                            seen.push(l);
                        }
                        return Err(format!(
                            "exited with code {:?}: {}",
                            st.code(),
                            seen.join("\n")
                        ));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = child.wait().ok();
                    return Err(format!(
                        "exited with code {:?}: {}",
                        st.and_then(|s| s.code()),
                        seen.join("\n")
                    ));
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!("no start line within 20 s: {}", seen.join("\n")))
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// POSTs JSON to /v1/tool.
    pub fn tool(&self, body: &str) -> Resp {
        http(
            self.addr,
            "POST",
            "/v1/tool",
            Some(("application/json", body.as_bytes())),
        )
    }

    /// Sends SIGTERM and waits (up to 20 s) for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        wait_timeout(&mut self.child, Duration::from_secs(20))
            .expect("daemon did not stop within 20 s")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a child with a deadline.
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

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON (panics with the body text if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client over a raw socket, so tests control every byte (timeouts: 30 s).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    s.set_write_timeout(Some(Duration::from_secs(30))).ok();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((ct, b)) = body {
        if !ct.is_empty() {
            req.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write head");
    if let Some((_, b)) = body {
        // The server may answer (413) and close before reading everything: that is fine.
        let _ = s.write_all(b);
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(p) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..p]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[p + 2..p + 2 + n]);
        b = &b[p + 2 + n + 2..];
    }
}

/// All WAL records of `dir`, read through `autonomy wal inspect --json`.
pub fn wal_records(dir: &Path) -> Vec<Value> {
    let out = Command::new(bin())
        .args(["wal", "inspect", "--json", "--dir"])
        .arg(dir)
        .output()
        .expect("run wal inspect");
    assert!(
        out.status.success(),
        "wal inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
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
    let out = Command::new(bin())
        .args(["wal", "verify", "--dir"])
        .arg(dir)
        .output()
        .expect("run wal verify");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A loopback HTTP server for `http_get` tests: answers every request with `respond(path)`,
/// counting requests. Runs on its own thread until the process ends.
pub struct LocalServer {
    pub addr: SocketAddr,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl LocalServer {
    pub fn start(respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> LocalServer {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let hits = std::sync::Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let respond = std::sync::Arc::new(respond);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let h = h.clone();
                let respond = respond.clone();
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut tmp) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let _ = s.write_all(&respond(&path));
                });
            }
        });
        LocalServer { addr, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A plain 200 response with `body`.
pub fn ok_response(content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A redirect to `location`.
pub fn redirect_response(location: &str) -> Vec<u8> {
    format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// A `ROS_DOMAIN_ID` of its own for each call in this process (at most 25 calls): a block of
/// 25 ids chosen by the pid, so that a test process running at the same time most likely uses
/// another block, then the next id in it. All within 1..=225 (232 is the highest valid id).
pub fn ros_domain() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    assert!(n < 25, "more than 25 ROS domains in one test run");
    1 + (std::process::id() % 9) as u16 * 25 + n
}
