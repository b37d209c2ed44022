//! The real ROS 2 at `/opt/ros/jazzy` (`../shared/ros2`, installed by `.ci/run`), and children
//! run in their own process group with their output collected: what the real-ROS suite and the
//! bridge's real-ROS tests share.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::wait_timeout;

/// Sourced before every real `ros2` command.
pub const ROS_SETUP: &str = "/opt/ros/jazzy/setup.bash";

/// Whether the real ROS is there. Without it: a failure under `CI=true`, else one skip line.
pub fn have_ros(test: &str) -> bool {
    if Path::new(ROS_SETUP).is_file() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{ROS_SETUP} is missing: CI must install ../shared/ros2 (.ci/run does) for the real-ROS tests"
        );
    }
    eprintln!(
        "skipped {test}: no ROS 2 at {ROS_SETUP} (install it with ../shared/ros2/install.sh)"
    );
    false
}

/// A child in its own process group, its output lines collected; the group is killed on drop.
pub struct Proc {
    pub child: Child,
    what: String,
    lines: mpsc::Receiver<(bool, String)>,
    /// The stdout lines read so far.
    pub out: Vec<String>,
    /// The stderr lines read so far.
    pub err: Vec<String>,
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(mut cmd: Command, what: &str) -> Proc {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let (tx, rx) = mpsc::channel();
        fn pump(r: impl Read + Send + 'static, is_err: bool, tx: mpsc::Sender<(bool, String)>) {
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send((is_err, l)).is_err() {
                        break;
                    }
                }
            });
        }
        pump(child.stdout.take().expect("stdout"), false, tx.clone());
        pump(child.stderr.take().expect("stderr"), true, tx);
        Proc {
            child,
            what: what.to_string(),
            lines: rx,
            out: Vec::new(),
            err: Vec::new(),
            status: None,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn take(&mut self, (is_err, l): (bool, String)) {
        if is_err {
            self.err.push(l);
        } else {
            self.out.push(l);
        }
    }

    /// Takes the next output line if one arrives within `limit`; whether one did.
    pub fn poll(&mut self, limit: Duration) -> bool {
        let item = if limit.is_zero() {
            self.lines.try_recv().ok()
        } else {
            self.lines.recv_timeout(limit).ok()
        };
        item.map(|i| self.take(i)).is_some()
    }

    /// Waits for an output line (stdout or stderr) containing `pat`; returns it.
    pub fn wait_for(&mut self, pat: &str, limit: Duration) -> String {
        if let Some(l) = self.out.iter().chain(&self.err).find(|l| l.contains(pat)) {
            return l.clone();
        }
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(item) = self.lines.recv_timeout(Duration::from_millis(50)) {
                let hit = item.1.contains(pat);
                let line = item.1.clone();
                self.take(item);
                if hit {
                    return line;
                }
            }
        }
        panic!(
            "{}: no line with {pat:?} within {limit:?}\nstdout: {:#?}\nstderr: {:#?}",
            self.what, self.out, self.err
        );
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(self.pid(), sig);
    }

    /// Waits for the exit (killing the group after `limit`) and drains the output.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let st = match wait_timeout(&mut self.child, limit) {
            Some(st) => st,
            None => {
                self.stop_hard();
                self.drain();
                panic!(
                    "{} did not finish within {limit:?}\nstdout: {:#?}\nstderr: {:#?}",
                    self.what, self.out, self.err
                );
            }
        };
        self.status = Some(st);
        self.drain();
        st
    }

    pub fn drain(&mut self) {
        while let Ok(item) = self.lines.recv_timeout(Duration::from_millis(300)) {
            self.take(item);
        }
    }

    pub fn output(&self) -> (String, String) {
        (self.out.join("\n"), self.err.join("\n"))
    }

    /// SIGINT (what Ctrl-C sends), then the exit within `limit`.
    pub fn interrupt(&mut self, limit: Duration) -> ExitStatus {
        self.signal(Signal::SIGINT);
        self.wait(limit)
    }
}

impl Proc {
    /// Ends the process after a failure: SIGTERM first (so `autonomy` sweeps the launch's own
    /// process group), then SIGKILL to this group.
    pub fn stop_hard(&mut self) {
        let pid = self.pid();
        let _ = kill(pid, Signal::SIGTERM);
        let st = wait_timeout(&mut self.child, Duration::from_secs(15));
        let _ = killpg(pid, Signal::SIGKILL);
        self.status = Some(match st {
            Some(st) => st,
            None => self.child.wait().expect("wait"),
        });
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.stop_hard();
        } else {
            // The group may still hold children of an exited leader.
            let _ = killpg(self.pid(), Signal::SIGKILL);
        }
    }
}
