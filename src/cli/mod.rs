//! The command line (clap). Each subcommand lives in its own module; this one parses and dispatches.
//!
//! The CLI is where the process talks to the person running it, so it alone prints to stderr:
//! one line per error (`fail`, `usage`), plus its own progress lines; library code emits
//! notices through tracing instead ([`log`]).
#![allow(clippy::print_stderr)]

mod checkpoint_cmd;
mod demo;
mod identity_cmd;
pub mod log;
mod policy_cmd;
mod run;
mod runtime_cmd;
mod wal_cmd;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::bridge::{BridgeConfig, BridgeHandle};
use crate::export::{ExportConfig, ExportHandle};
use crate::http::{HttpConfig, HttpServer};
use crate::ros::{RosConfig, RosHandle};
use crate::runtime::{FrontEnd, Runtime, RuntimeConfig};

/// Exit code for a user error (bad flag, missing file, port in use).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for any other failure.
pub const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(
    name = "autonomy",
    version,
    about = "One policy gate and one durable, tamper-evident audit log between autonomous software and what it does.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command under governance: a runtime on a random loopback port, AUTONOMY_RUNTIME_URL set for it.
    Run(RunArgs),
    /// The long-running runtime (daemon).
    Runtime {
        #[command(subcommand)]
        cmd: RuntimeCmd,
    },
    /// Read, check and repair a WAL directory (inspect and verify take no lock: safe on a live runtime's WAL).
    Wal {
        #[command(subcommand)]
        cmd: wal_cmd::WalCmd,
    },
    /// Self-checks.
    Demo {
        #[command(subcommand)]
        cmd: DemoCmd,
    },
    /// Policy bundles: build, load, status, list, rollback, push, pull.
    Policy {
        #[command(subcommand)]
        cmd: policy_cmd::PolicyCmd,
    },
    /// Agents and their bearer tokens: add, list, revoke.
    Agent {
        #[command(subcommand)]
        cmd: identity_cmd::AgentCmd,
    },
    /// List the calls waiting for approval (needs an operator token, or a runtime of this user on this machine).
    Approvals {
        /// One JSON object per call.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        reach: identity_cmd::ReachArgs,
    },
    /// Approve a call that waits for approval: it runs once the approval is recorded.
    Approve {
        /// The call's audit_id.
        audit_id: String,
        /// Why (recorded with the approval).
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        #[command(flatten)]
        reach: identity_cmd::ReachArgs,
    },
    /// Reject a call that waits for approval: it is denied and never runs.
    Reject {
        /// The call's audit_id.
        audit_id: String,
        /// Why (recorded with the rejection).
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        #[command(flatten)]
        reach: identity_cmd::ReachArgs,
    },
    /// Make the node key that signs checkpoints: node.key (private, mode 600) and node.pub in
    /// the state directory; prints the public key.
    Keygen(checkpoint_cmd::KeygenArgs),
    /// Check records exported from a node against its signed checkpoints.
    Audit {
        #[command(subcommand)]
        cmd: checkpoint_cmd::AuditCmd,
    },
    /// Print the version.
    Version,
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `autonomy run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Policy: `demo` (the default: the embedded demo policy), `current` (the store's current
    /// slot), `oci://host[:port]/name:tag` (from the store, no network), a bundle .tar.gz, a
    /// .rego file or a directory of them.
    #[arg(long, value_name = "REF")]
    pub policy: Option<String>,
    /// Policy store for `current` and oci:// refs [default: $XDG_DATA_HOME/autonomy/policy]
    #[arg(long, value_name = "DIR", env = "AUTONOMY_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,
    /// Keep the WAL in DIR (created if needed) instead of a temp dir removed at exit.
    #[arg(long, value_name = "DIR", env = "AUTONOMY_RUN_WAL_DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the temp WAL dir at exit and print its path on stderr.
    #[arg(long)]
    pub keep: bool,
    /// Also start the ROS 2 node `/autonomy` (always on for `ros2.launch`).
    #[arg(long)]
    pub ros: bool,
    /// `ros2.launch` only: seconds between SIGINT to launch and SIGTERM to its process group.
    #[arg(long, value_name = "SECS", default_value_t = 15.0, value_parser = parse_secs)]
    pub grace_period: f64,
    /// `ros2.launch` only: wait up to SECS for subscribers of /autonomy/markers to be matched
    /// before marker 1 (a subscriber started before the run then sees every marker).
    #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = parse_secs, env = "AUTONOMY_ROS_SETTLE")]
    pub ros_settle: f64,
    /// `ros2.launch` only: after the last marker, keep the node up to SECS until matched
    /// reliable subscribers have acknowledged it.
    #[arg(long, value_name = "SECS", default_value_t = 3.0, value_parser = parse_secs, env = "AUTONOMY_ROS_LINGER")]
    pub ros_linger: f64,
    /// The governed topic bridge.
    #[command(flatten)]
    pub bridge: BridgeArgs,
    /// Who may call the run's runtime (default optional: the child's one-run token names it `run`).
    #[command(flatten)]
    pub(crate) auth: identity_cmd::AuthArgs,
    /// Rate limits, shadow mode, approvals.
    #[command(flatten)]
    pub(crate) gate: identity_cmd::GateArgs,
    /// The command and its arguments; everything from here on goes to it unchanged.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 1..,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

/// `--bridge` and its companions (`runtime start` and `run`).
#[derive(Args, Debug, Default)]
pub struct BridgeArgs {
    /// Relay the topics listed in FILE (TOML, see docs/bridge.md) from the agent's DDS domain to
    /// the robot's (ROS_DOMAIN_ID); each agent → robot message is decided by the policy
    /// (default without --policy: the embedded ros2-bridge-demo policy).
    #[arg(long, value_name = "FILE")]
    pub bridge: Option<PathBuf>,
    /// The agent's DDS domain for --bridge [default: 99]; must differ from ROS_DOMAIN_ID.
    #[arg(long, value_name = "N", requires = "bridge", value_parser = clap::value_parser!(u16).range(0..=232))]
    pub agent_domain: Option<u16>,
    /// A directory of custom message definitions for --bridge (DIR/<pkg>/msg/<Name>.msg),
    /// searched before the built-in ones; repeatable. AMENT_PREFIX_PATH is searched after them.
    #[arg(long, value_name = "DIR", requires = "bridge")]
    pub msg_path: Vec<PathBuf>,
}

/// Where audit records go (`runtime start --export` and `wal export --to`).
#[derive(Args, Debug, Default)]
pub(crate) struct ExportTarget {
    /// The subject to publish on [default: autonomy.audit.<node id>].
    #[arg(long, value_name = "SUBJECT")]
    pub export_subject: Option<String>,
    /// The JetStream stream to bind to, created (subjects autonomy.audit.>) when missing.
    #[arg(long, value_name = "NAME", default_value = crate::export::DEFAULT_STREAM)]
    pub export_stream: String,
    /// Replicas of the stream when it is created here (3 on a three-server cluster).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub export_replicas: usize,
    /// This node's id in message ids (`<node>:<seq>`) [default: generated once into
    /// $XDG_STATE_HOME/autonomy/node-id].
    #[arg(long, value_name = "ID", env = "AUTONOMY_NODE_ID")]
    pub node_id: Option<String>,
}

impl ExportTarget {
    /// The export's settings for `url` and the WAL in `wal_dir`; any mistake is a usage error
    /// line. `cursor_node` (a stopped node's cursor) names the node when no id is given.
    pub(crate) fn config(
        &self,
        url: &str,
        wal_dir: &std::path::Path,
        cursor_node: Option<&str>,
    ) -> Result<ExportConfig, ExitCode> {
        let given = self
            .node_id
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(cursor_node);
        let node =
            crate::node::NodeId::load_or_create(given, &crate::paths::state_dir().join("node-id"))
                .map_err(|e| usage(&e))?;
        let mut c = ExportConfig::new(url, node, wal_dir.to_path_buf()).map_err(|e| usage(&e))?;
        if let Some(s) = &self.export_subject {
            c = c.with_subject(s).map_err(|e| usage(&e))?;
        }
        c.with_stream(&self.export_stream)
            .and_then(|c| c.with_replicas(self.export_replicas))
            .map_err(|e| usage(&e))
    }
}

#[derive(Subcommand)]
enum DemoCmd {
    /// End-to-end self-check in a temp dir: runtime up, echo allowed, shell denied, unknown kind
    /// denied, http_get fail-closed, WAL verifies. One PASS/FAIL line per check; exit 0 only if all pass.
    Validate,
}

#[derive(Subcommand)]
enum RuntimeCmd {
    /// Start the runtime and serve until SIGINT/SIGTERM.
    Start(Box<runtime_cmd::StartArgs>),
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 3600"
        )),
    }
}

/// Parses the command line and runs it; never panics on user input.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return clap_error(e),
    };
    log::init();
    ignore_sigxfsz();
    match cli.cmd {
        Command::Version => {
            println!("autonomy {}", crate::VERSION);
            ExitCode::SUCCESS
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "autonomy",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Run(args) => with_tokio(run::run(args)),
        Command::Wal { cmd } => wal_cmd::run(cmd),
        Command::Keygen(args) => checkpoint_cmd::keygen(args),
        Command::Audit { cmd } => checkpoint_cmd::audit(cmd),
        Command::Demo {
            cmd: DemoCmd::Validate,
        } => with_tokio(demo::validate()),
        Command::Policy { cmd } => with_tokio(policy_cmd::run(cmd)),
        Command::Agent { cmd } => identity_cmd::agent(cmd),
        Command::Approvals { json, reach } => with_tokio(identity_cmd::approvals(reach, json)),
        Command::Approve {
            audit_id,
            note,
            reach,
        } => with_tokio(identity_cmd::decide(reach, audit_id, true, note)),
        Command::Reject {
            audit_id,
            note,
            reach,
        } => with_tokio(identity_cmd::decide(reach, audit_id, false, note)),
        Command::Runtime {
            cmd: RuntimeCmd::Start(args),
        } => with_tokio(runtime_cmd::start(*args)),
    }
}

/// A file-size limit hit by the WAL must become a write error (→ 503, fail closed), not a
/// silent death of the runtime by SIGXFSZ.
fn ignore_sigxfsz() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: installing SIG_IGN runs no code in signal context and happens before any threads.
    let _ = unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) };
}

fn with_tokio<F: std::future::Future<Output = ExitCode>>(f: F) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => fail(&format!("cannot start the async runtime: {e}")),
    }
}

/// Prints clap's help/version as is; any parse error as one line.
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let text = e.render().to_string();
            let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
            let mut first = lines
                .next()
                .unwrap_or("invalid arguments")
                .trim()
                .trim_start_matches("error: ")
                .to_string();
            // "…were not provided:" and the like list what they mean on the lines below.
            if first.ends_with(':') {
                let listed: Vec<&str> = lines
                    .take_while(|l| !l.trim().is_empty())
                    .map(str::trim)
                    .collect();
                first = format!("{first} {}", listed.join(", "));
            }
            eprintln!("autonomy: error: {first} (see --help)");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The ROS 2 node's settings from the environment when `enabled`; a bad `ROS_DOMAIN_ID` is a
/// usage error.
pub(crate) fn ros_config(enabled: bool) -> Result<Option<crate::ros::RosConfig>, ExitCode> {
    if !enabled {
        return Ok(None);
    }
    crate::ros::RosConfig::from_env()
        .map(Some)
        .map_err(|e| usage(&e))
}

/// The bridge's settings when `--bridge` is given: the file, both domains and every topic's
/// type checked now, so any mistake is one usage error line before anything starts.
pub(crate) fn bridge_config(args: &BridgeArgs) -> Result<Option<BridgeConfig>, ExitCode> {
    let Some(path) = &args.bridge else {
        return Ok(None);
    };
    let file = crate::bridge::config::BridgeFile::load(path).map_err(|e| usage(&e))?;
    let domain = std::env::var("ROS_DOMAIN_ID").ok();
    let robot = crate::ros::parse_domain_id(domain.as_deref()).map_err(|e| usage(&e))?;
    let agent = args
        .agent_domain
        .unwrap_or(crate::bridge::DEFAULT_AGENT_DOMAIN);
    let rmw = std::env::var("RMW_IMPLEMENTATION").ok();
    BridgeConfig::new(
        file,
        agent,
        robot,
        &crate::bridge::msgdef::Library::from_env(args.msg_path.clone()),
        BridgeConfig::wchar_for(rmw.as_deref()),
    )
    .map(Some)
    .map_err(|e| usage(&e))
}

/// The runtime and its front ends, as `runtime start` and `run` bring them up.
pub(crate) struct Services {
    /// The core.
    pub rt: Runtime,
    /// `GET /health`, `POST /v1/tool`.
    pub http: HttpServer,
    /// Node `/autonomy`, when asked for.
    pub ros: Option<RosHandle>,
    /// The topic bridge, when asked for.
    pub bridge: Option<BridgeHandle>,
    /// The audit export, when asked for.
    pub export: Option<ExportHandle>,
}

impl Services {
    /// Opens the core, starts HTTP on `http`, records the start, then starts the ROS 2 node
    /// when `ros` is given and the topic bridge when `bridge` is (and says so). Any failure is
    /// one error line; the exit code is in the `Err`.
    pub(crate) async fn start(
        core: RuntimeConfig,
        http: HttpConfig,
        ros: Option<RosConfig>,
        bridge: Option<BridgeConfig>,
    ) -> Result<Services, ExitCode> {
        let rt = Runtime::open(core).await.map_err(|e| fail(&e))?;
        if let Some(t) = rt.recovered() {
            eprintln!("autonomy: WAL recovery: {t}");
        }
        // On a failure before the start is recorded, the WAL is dropped as it is: the log
        // holds nothing of this attempt.
        let http = crate::http::start(&rt, http).await.map_err(|e| fail(&e))?;
        if let Err(e) = rt.start(Some(http.addr())).await {
            http.shutdown().await;
            return Err(fail(&e));
        }
        let mut s = Services {
            rt,
            http,
            ros: None,
            bridge: None,
            export: None,
        };
        if let Some(c) = ros {
            match crate::ros::start(&s.rt, c.clone()) {
                Ok(h) => s.ros = Some(h),
                Err(e) => {
                    let _ = s.stop().await;
                    return Err(fail(&format!("cannot start the ROS 2 node: {e}")));
                }
            }
            eprintln!("autonomy: {}", c.describe());
            let distro = std::env::var("ROS_DISTRO").ok();
            if let Some(w) = RosConfig::distro_warning(distro.as_deref()) {
                eprintln!("autonomy: {w}");
            }
        }
        if let Some(c) = bridge {
            let line = c.describe();
            match crate::bridge::start(&s.rt, c).await {
                Ok(h) => s.bridge = Some(h),
                Err(e) => {
                    let _ = s.stop().await;
                    return Err(fail(&format!("cannot start the topic bridge: {e}")));
                }
            }
            eprintln!("autonomy: {line}");
        }
        Ok(s)
    }

    /// Starts the audit export (after [`Services::start`]): it follows the WAL from its
    /// cursor. A cursor of another node or ahead of the log stops everything with one line.
    pub(crate) async fn start_export(&mut self, c: ExportConfig) -> Result<(), ExitCode> {
        let line = c.describe();
        match crate::export::start(&self.rt, c) {
            Ok(h) => {
                let lag = h.stats().lag();
                let from = h
                    .stats()
                    .acked_seq
                    .load(std::sync::atomic::Ordering::Relaxed);
                self.export = Some(h);
                eprintln!(
                    "autonomy: {line}: from seq {} ({lag} record(s) behind)",
                    from + 1
                );
                Ok(())
            }
            Err(e) => Err(fail(&format!("cannot start the audit export: {e}"))),
        }
    }

    /// Stops the front ends (calls in flight finish), then the runtime, then gives the audit
    /// export a bounded time to send what is left (the `stopped` record included).
    pub(crate) async fn stop(mut self) -> Result<(), crate::wal::WalError> {
        let export = self.export.take();
        let res = self.stop_runtime().await;
        if let Some(x) = export {
            let o = x.finish(crate::export::STOP_FLUSH).await;
            match &o.error {
                None => eprintln!(
                    "autonomy: audit export: every record up to seq {} is in the stream",
                    o.acked_seq
                ),
                Some(e) => eprintln!(
                    "autonomy: warning: audit export: {} record(s) not in the stream at stop ({e}); they go at the next start, or with `autonomy wal export`",
                    o.head_seq.saturating_sub(o.acked_seq)
                ),
            }
        }
        res
    }

    async fn stop_runtime(self) -> Result<(), crate::wal::WalError> {
        // Calls waiting for a person would hold the stop up to their timeout: deny them now.
        self.rt.gate().approvals().close();
        if let Some(b) = self.bridge {
            for c in b.shutdown().await {
                let safe = c
                    .safe_published
                    .map(|n| format!(", {n} safe published"))
                    .unwrap_or_default();
                eprintln!(
                    "autonomy: bridge {}: {} received, {} relayed, {} denied, {} malformed, {} failed{safe}",
                    c.name, c.received, c.relayed, c.denied, c.malformed, c.failed
                );
            }
        }
        if let Some(ros) = self.ros {
            ros.shutdown().await;
        }
        self.http.shutdown().await;
        self.rt.stop().await
    }
}

/// Prints one error line and returns the failure exit code.
pub(crate) fn fail(msg: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("autonomy: error: {msg}");
    ExitCode::from(EXIT_FAILURE)
}

/// Prints one error line and returns the usage exit code.
pub(crate) fn usage(msg: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("autonomy: error: {msg}");
    ExitCode::from(EXIT_USAGE)
}

/// Resolves `--policy REF` (see [`crate::policy::dist::resolve`]) against the store in `policy_dir`
/// (default `$XDG_DATA_HOME/autonomy/policy`); with `key`, only bundles signed with it.
pub(crate) fn load_policy(
    r: Option<&str>,
    policy_dir: Option<&std::path::Path>,
    no_flag: crate::policy::dist::resolve::NoFlag,
    key: Option<&std::sync::Arc<crate::policy::dist::signing::VerificationKey>>,
) -> Result<crate::policy::dist::resolve::Resolved, crate::policy::dist::resolve::ResolveError> {
    let dir = policy_dir
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(crate::paths::default_policy_dir);
    crate::policy::dist::resolve::resolve(r, &dir, no_flag, key)
}
