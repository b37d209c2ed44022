//! `autonomy`: one policy gate and one tamper-evident, durable audit log between autonomous
//! software and what it does.
//!
//! The core (`policy`, `wal`, `tools`, `gate`) knows nothing of HTTP, ROS or the CLI; the front
//! ends (`http`, `cli`) call one [`gate::Gate`].

#![warn(missing_docs)]

pub mod approvals;
pub mod audit;
pub mod bridge;
pub mod checkpoint;
pub mod cli;
pub mod export;
pub mod gate;
pub mod http;
pub mod identity;
pub mod launch;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod paths;
pub mod policy;
pub mod record;
pub mod ros;
pub mod runtime;
pub mod signals;
pub mod stats;
pub mod tools;
pub mod types;
pub mod wal;

/// The tracing target of operator notices: what the program tells the person running it (a
/// policy was activated, a launch is being stopped). The CLI prints them as its own lines.
pub const NOTICE: &str = "notice";

/// The runtime's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
