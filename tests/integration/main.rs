//! The integration suite: the built `autonomy` binary (and, where only the library can set a
//! scene up, the library) against real sockets, real files and real peers. One binary, one
//! module per subject, one set of shared helpers in `common`.
//!
//! All tests run in this one process, in parallel: a test changes no process-wide state (no
//! environment variables, no current directory, no signal handlers; a child's rlimits are set in
//! the child), and every ROS test takes its own `ROS_DOMAIN_ID` from `common::ros_domain`.

// Tests panic to fail: unwrap/expect are how they say "this must hold", and a test's stderr is
// where it reports what it measured or skipped. The helpers are `pub` inside this one binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    unreachable_pub
)]

mod bridge;
mod checkpoint;
mod common;
mod export;
mod http;
mod identity;
mod policy;
mod ros;
mod run;
mod wal;
