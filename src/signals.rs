//! SIGINT and SIGTERM as an async stream, shared by the daemon, `run` and the launch supervisor.

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

/// SIGINT and SIGTERM as a stream.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (from now on the signals no longer kill the process).
    pub fn new() -> std::io::Result<Self> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
        }
    }
}

/// A child's exit code, or 128+N when it died of signal N.
pub fn exit_code_of(s: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    if let Some(c) = s.code() {
        (c & 0xff) as u8
    } else if let Some(sig) = s.signal() {
        (128 + sig).min(255) as u8
    } else {
        1
    }
}
