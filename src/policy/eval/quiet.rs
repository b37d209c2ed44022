//! Keeps one line of regorus's out of the runtime's stderr.
//!
//! regorus 0.14's statement scheduler prints `could not schedule all statements [...]` straight
//! to stderr (an `eprintln!`, not an error) when a query's unifications depend on each other,
//! e.g. `x = y; y = x` or `[a, b] = [b, a]`; the compile then fails with a proper error, which
//! is what the user gets. There is no switch for the print, so compiling runs with file
//! descriptor 2 pointed at an anonymous temporary file, and what the rest of the process wrote
//! meanwhile is copied back to the real stderr afterwards, minus that line. Compiles are
//! serialised by a lock so two never swap the descriptor at once.

use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

/// The line regorus prints; it is dropped, everything else is kept.
const NOISE: &str = "could not schedule all statements";

static LOCK: Mutex<()> = Mutex::new(());

/// Fd 2 while redirected: restores it and replays the captured output on drop (also on panic).
struct Redirect {
    saved: OwnedFd,
    capture: std::fs::File,
}

impl Redirect {
    fn start() -> Option<Redirect> {
        let capture = tempfile::tempfile().ok()?;
        let saved = nix::unistd::dup(std::io::stderr().as_fd()).ok()?;
        nix::unistd::dup2_stderr(capture.as_fd()).ok()?;
        Some(Redirect { saved, capture })
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        let restored = nix::unistd::dup2_stderr(self.saved.as_fd()).is_ok();
        let mut text = String::new();
        if self.capture.rewind().is_ok() {
            let _ = (&self.capture).take(1 << 20).read_to_string(&mut text);
        }
        if !restored {
            return;
        }
        let mut err = std::io::stderr().lock();
        for line in text.split_inclusive('\n') {
            if !line.starts_with(NOISE) {
                let _ = err.write_all(line.as_bytes());
            }
        }
    }
}

/// Runs `f` (a regorus compile) with regorus's scheduler line kept off stderr.
pub(crate) fn compile<R>(f: impl FnOnce() -> R) -> R {
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let _redirect = Redirect::start();
    f()
}
