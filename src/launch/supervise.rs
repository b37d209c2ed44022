//! Process-group supervision of `ros2 launch`: spawn, stream, record lifecycle, stop, sweep.
//!
//! `ros2 launch` is one Python process whose nodes share its process group. With stdin not a
//! TTY it is "noninteractive" and forwards SIGINT to each node itself, escalating to SIGTERM
//! and SIGKILL on its own timers. SIGTERM to launch itself only cancels launch and may orphan
//! nodes, so the stop sequence is: SIGINT to launch, grace, SIGTERM to the group, SIGKILL to
//! the group, and always a sweep of the group at the end.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::LaunchRequest;
use super::lifecycle::{self, Lifecycle};
use crate::gate::Gate;
use crate::signals::{Signals, exit_code_of};
use crate::types::AuditId;

/// Longest line we parse for lifecycle events; longer lines pass through unparsed.
const MAX_LINE: u64 = 64 * 1024;

/// One supervised launch.
pub struct Supervision {
    /// The gate (its WAL gets the lifecycle records).
    pub gate: Arc<Gate>,
    /// The launch decision's audit id, carried by every lifecycle record.
    pub audit_id: AuditId,
    /// `AUTONOMY_RUNTIME_URL` for the launched nodes.
    pub runtime_url: String,
    /// `AUTONOMY_RUNTIME_TOKEN` for the launched nodes.
    pub runtime_token: Option<String>,
    /// SIGINT → SIGTERM delay.
    pub grace: Duration,
    /// SIGTERM → SIGKILL delay.
    pub term_grace: Duration,
}

/// The stop sequence's stages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    Running,
    Interrupted,
    Terminated,
    Killed,
}

impl Supervision {
    /// Spawns `ros2 launch …`, supervises it to the end and returns its exit code.
    pub async fn run(
        &self,
        ros2: &Path,
        req: &LaunchRequest,
        sigs: &mut Signals,
    ) -> std::io::Result<u8> {
        // Orphaned nodes of the group are re-parented to us, so the final sweep can reap them
        // instead of leaving zombies that keep the group "alive".
        let _ = nix::sys::prctl::set_child_subreaper(true);

        let mut cmd = tokio::process::Command::new(ros2);
        cmd.arg("launch")
            .arg(&req.package)
            .arg(&req.launch_file)
            .args(&req.arguments)
            .env("AUTONOMY_RUNTIME_URL", &self.runtime_url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0);
        if let Some(t) = &self.runtime_token {
            cmd.env("AUTONOMY_RUNTIME_TOKEN", t);
        }
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .map(|p| Pid::from_raw(p as i32))
            .ok_or_else(|| std::io::Error::other("launch exited before its pid was read"))?;
        let pgid = pid;

        let (tx, rx) = mpsc::unbounded_channel::<Lifecycle>();
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(out, tokio::io::stdout(), tx.clone())));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(err, tokio::io::stderr(), tx.clone())));
        }
        drop(tx);
        let recorder = tokio::spawn(record(self.gate.clone(), self.audit_id.clone(), rx));

        let mut stage = Stage::Running;
        let mut deadline: Option<tokio::time::Instant> = None;
        let status = loop {
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                st = child.wait() => break st?,
                sig = sigs.next() => {
                    if stage == Stage::Running {
                        tracing::info!(target: crate::NOTICE, "{sig} received: stopping the launch (SIGINT now, SIGTERM to its process group in {}s; press Ctrl-C again to skip ahead)", self.grace.as_secs());
                    }
                    (stage, deadline) = self.escalate(stage, pid, pgid);
                }
                _ = timer => {
                    (stage, deadline) = self.escalate(stage, pid, pgid);
                }
            }
        };

        sweep_group(pgid, self.term_grace).await;
        // The pipes close once every process that held them is gone; bound the wait anyway.
        for p in pumps {
            let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), recorder).await;
        Ok(exit_code_of(status))
    }

    fn escalate(&self, stage: Stage, pid: Pid, pgid: Pid) -> (Stage, Option<tokio::time::Instant>) {
        let now = tokio::time::Instant::now();
        match stage {
            Stage::Running => {
                let _ = kill(pid, Signal::SIGINT);
                (Stage::Interrupted, Some(now + self.grace))
            }
            Stage::Interrupted => {
                tracing::info!(target: crate::NOTICE, "launch still running: SIGTERM to its process group");
                let _ = killpg(pgid, Signal::SIGTERM);
                (Stage::Terminated, Some(now + self.term_grace))
            }
            Stage::Terminated | Stage::Killed => {
                tracing::info!(target: crate::NOTICE, "launch still running: SIGKILL to its process group");
                let _ = killpg(pgid, Signal::SIGKILL);
                (Stage::Killed, None)
            }
        }
    }
}

/// Ends every process left in the group: SIGTERM, then SIGKILL after `term_grace`, reaping
/// the ones re-parented to us. Returns once the group is empty (or after the SIGKILL wait).
pub async fn sweep_group(pgid: Pid, term_grace: Duration) {
    reap(pgid);
    if !group_alive(pgid) {
        return;
    }
    let _ = killpg(pgid, Signal::SIGTERM);
    if wait_empty(pgid, term_grace).await {
        return;
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    wait_empty(pgid, Duration::from_secs(2)).await;
}

async fn wait_empty(pgid: Pid, limit: Duration) -> bool {
    let end = tokio::time::Instant::now() + limit;
    loop {
        reap(pgid);
        if !group_alive(pgid) {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// Reaps exited members of the group that are our children (re-parented to us).
fn reap(pgid: Pid) {
    loop {
        match waitpid(Pid::from_raw(-pgid.as_raw()), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// Copies launch output through unchanged, line by line, and picks out lifecycle lines.
async fn pump<R, W>(r: R, mut w: W, tx: mpsc::UnboundedSender<Lifecycle>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut br = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut br).take(MAX_LINE).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let _ = w.write_all(&buf).await;
                let _ = w.flush().await;
                if let Some(ev) = lifecycle::parse(&String::from_utf8_lossy(&buf)) {
                    let _ = tx.send(ev);
                }
            }
        }
    }
}

/// Appends lifecycle events to the WAL in the order they were printed.
async fn record(gate: Arc<Gate>, audit_id: AuditId, mut rx: mpsc::UnboundedReceiver<Lifecycle>) {
    while let Some(ev) = rx.recv().await {
        if let Err(e) = gate.record(Some(&audit_id), &ev.record()).await {
            tracing::warn!("lifecycle record not written: {e}");
        }
    }
}
