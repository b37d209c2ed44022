//! `autonomy runtime start` on a free loopback port, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Resp, bin, http, read_lines, wait_timeout};

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
            .env_remove("AUTONOMY_OPERATOR_TOKEN")
            .env_remove("AUTONOMY_VERIFICATION_KEY")
            .env_remove("AUTONOMY_VERIFICATION_SCOPE")
            .env_remove("AUTONOMY_EXPORT")
            .env_remove("AUTONOMY_NODE_ID")
            // Beside the WAL: tests never share an agents file or the local operator file.
            .env(
                "AUTONOMY_AGENTS_FILE",
                wal_dir.with_file_name(format!(
                    "{}.agents.json",
                    wal_dir
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("wal")
                )),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("spawn autonomy");
        let rx = read_lines(child.stderr.take().expect("stderr"));
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

    /// The agents file this daemon reads (set by `try_start_in` unless a test set its own).
    pub fn agents_file(&self) -> PathBuf {
        self.wal_dir.with_file_name(format!(
            "{}.agents.json",
            self.wal_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("wal")
        ))
    }

    /// POSTs JSON to /v1/tool with `Authorization: Bearer <token>`.
    pub fn tool_as(&self, token: &str, body: &str) -> Resp {
        super::http_with(
            self.addr,
            "POST",
            "/v1/tool",
            &[("Authorization", &format!("Bearer {token}"))],
            Some(("application/json", body.as_bytes())),
        )
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
