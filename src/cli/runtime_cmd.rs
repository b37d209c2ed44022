//! `autonomy runtime start`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::Services;
use crate::http::HttpConfig;
use crate::http::HttpLimits;
use crate::policy::PolicyEvaluator;
use crate::policy::dist::oci::OciRef;
use crate::policy::dist::rollout::RegistryWatch;
use crate::runtime::RuntimeConfig;
use crate::tools::Allowlist;
use crate::wal::{SyncMode, WalOptions};

/// Default `--allowed-domains`.
pub(super) const DEFAULT_ALLOWED_DOMAINS: &str = "api.anthropic.com,ifconfig.me";

/// `autonomy runtime start`.
#[derive(Args, Debug)]
pub(super) struct StartArgs {
    /// Use the embedded demo policy.
    #[arg(long, conflicts_with = "policy")]
    pub demo: bool,
    /// Policy: `demo`, `current` (the store's current slot), `oci://host[:port]/name:tag` (from
    /// the store, no network), a bundle .tar.gz, a .rego file or a directory of them. Without
    /// it: the store's current slot if there is one, else deny-all; store-based policies are
    /// hot-reloaded when the current slot changes.
    #[arg(long, value_name = "REF")]
    pub policy: Option<String>,
    /// Policy store [default: $XDG_DATA_HOME/autonomy/policy]
    #[arg(long, value_name = "DIR", env = "AUTONOMY_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,
    /// Only bundles signed with this key are served or activated (`policy load` docs).
    #[command(flatten)]
    pub verify: super::policy_cmd::VerifyArgs,
    /// Roll out new versions from a registry: poll this tag's digest, and pull, verify, store
    /// and activate each new bundle (anything that fails a check is recorded as
    /// policy.rejected and changes nothing). The daemon serves the store's current slot
    /// meanwhile.
    #[arg(long, value_name = "oci://HOST[:PORT]/NAME[:TAG]", conflicts_with_all = ["policy", "demo"])]
    pub policy_watch: Option<String>,
    /// How often --policy-watch asks the registry for the tag's digest.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, requires = "policy_watch")]
    pub poll: Duration,
    /// Plain HTTP to the --policy-watch registry (loopback registries only).
    #[arg(long, requires = "policy_watch")]
    pub insecure_registry: bool,
    /// Address to listen on (host:port). Non-loopback addresses expose the API to the network.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7777")]
    pub listen: SocketAddr,
    /// Comma-separated `tool.http_get` allowlist: `host`, `host:port` or URLs.
    #[arg(long, value_name = "LIST", default_value = DEFAULT_ALLOWED_DOMAINS)]
    pub allowed_domains: String,
    /// WAL directory [default: $XDG_STATE_HOME/autonomy/wal]
    #[arg(long, value_name = "DIR", env = "AUTONOMY_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// WAL durability: `fsync` (every answer waits for its record on disk) or `none` (page cache
    /// only: survives a crash of the runtime, not a power loss; for benchmarks).
    #[arg(long, value_name = "MODE", default_value = "fsync", value_parser = parse_sync)]
    pub wal_sync: SyncMode,
    /// Rotate WAL segments at this size in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024 * 1024)]
    pub wal_segment_bytes: u64,
    /// WAL flushes: `overlap` (the next write is written and fdatasync'd while the last one's
    /// fdatasync runs) or `one` (one at a time). Either way an answer waits for its record on disk.
    #[arg(long, value_name = "MODE", default_value = "overlap", value_parser = parse_flushes)]
    pub wal_flushes: Flushes,
    /// With `--wal-flushes overlap`: how long the running fdatasync is waited for before the
    /// next write starts beside it (0 = at once). A shorter fdatasync is waited for, so under
    /// load more records share one.
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = parse_overlap_after)]
    pub wal_overlap_after: Duration,
    /// Bounds on HTTP clients.
    #[command(flatten)]
    pub http: HttpArgs,
    /// Also run the ROS 2 node /autonomy (service /autonomy/tool, topics /autonomy/markers and
    /// /autonomy/decisions) on ROS_DOMAIN_ID; RMW_IMPLEMENTATION picks the service mapping.
    #[arg(long)]
    pub ros: bool,
    /// The governed topic bridge.
    #[command(flatten)]
    pub bridge: super::BridgeArgs,
    /// Who may call.
    #[command(flatten)]
    pub auth: super::identity_cmd::AuthArgs,
    /// Rate limits, shadow mode, approvals.
    #[command(flatten)]
    pub gate: super::identity_cmd::GateArgs,
    /// Signed checkpoints.
    #[command(flatten)]
    pub checkpoints: super::checkpoint_cmd::CheckpointArgs,
    /// Publish every WAL record, in order, to NATS JetStream at URL (nats://HOST:PORT; several
    /// comma-separated for a cluster), deduplicated by Nats-Msg-Id <node>:<seq>; the cursor is
    /// export.cursor in the WAL directory. The WAL never waits for it (see docs/fleet.md).
    #[arg(long, value_name = "URL", env = "AUTONOMY_EXPORT")]
    pub export: Option<String>,
    /// Where exported records go.
    #[command(flatten)]
    pub export_target: super::ExportTarget,
}

/// The HTTP server's bounds on clients (`docs/http-api.md`, "Limits").
#[derive(Args, Debug)]
pub(super) struct HttpArgs {
    /// Close a connection whose request head is not complete this long after its first byte
    /// (or after connecting).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Close a keep-alive connection idle this long between requests.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Answer 408 when a request body takes longer than this to arrive.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Most open connections [default: the open-file limit (ulimit -n) minus 64, at most 4096].
    /// At the limit the longest-idle connection is closed; if none is idle, new ones get 503.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: Option<u32>,
    /// After answering before a body was read (413, 415, 405…): keep reading and discarding
    /// it this long at most, so the client can read the answer.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub linger_timeout: Duration,
    /// … and this many bytes at most; a client that sends more is cut off.
    #[arg(long, value_name = "BYTES", default_value_t = 8 * 1024 * 1024)]
    pub linger_bytes: u64,
}

impl HttpArgs {
    /// The limits these flags set.
    pub(super) fn limits(&self) -> HttpLimits {
        let defaults = HttpLimits::default();
        HttpLimits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            body_timeout: self.body_timeout,
            max_connections: self
                .max_connections
                .map_or(defaults.max_connections, |n| n as usize),
            linger_time: self.linger_timeout,
            linger_bytes: self.linger_bytes,
            ..defaults
        }
    }
}

/// Parses a duration such as `10s`, `500ms` or `2m` (a bare number is seconds); 1 ms to 1 h.
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?} is not a duration such as 10s or 500ms: {e}"))?,
    };
    if d < Duration::from_millis(1) || d > Duration::from_secs(3600) {
        return Err(format!("{s:?} is out of range: use 1ms to 1h"));
    }
    Ok(d)
}

/// Parses `--wal-sync`.
pub(super) fn parse_sync(s: &str) -> Result<SyncMode, String> {
    match s {
        "fsync" => Ok(SyncMode::Fsync),
        "none" => Ok(SyncMode::None),
        _ => Err(format!("unknown WAL sync mode {s:?}: use fsync or none")),
    }
}

/// How the WAL's flushes may run (`--wal-flushes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flushes {
    /// Two at once: the next write's fdatasync starts while the last one's runs.
    Overlap,
    /// One at a time.
    One,
}

/// Parses `--wal-flushes`.
pub(super) fn parse_flushes(s: &str) -> Result<Flushes, String> {
    match s {
        "overlap" => Ok(Flushes::Overlap),
        "one" => Ok(Flushes::One),
        _ => Err(format!("unknown WAL flush mode {s:?}: use overlap or one")),
    }
}

/// Parses `--wal-overlap-after`: 0 to 1 s.
pub(super) fn parse_overlap_after(s: &str) -> Result<Duration, String> {
    let d = match s.trim() {
        "0" => Duration::ZERO,
        t => humantime::parse_duration(t)
            .map_err(|e| format!("{s:?} is not a duration such as 1ms or 500us: {e}"))?,
    };
    if d > Duration::from_secs(1) {
        return Err(format!("{s:?} is out of range: use 0 to 1s"));
    }
    Ok(d)
}

/// Runs the daemon until SIGINT/SIGTERM.
pub(super) async fn start(args: StartArgs) -> ExitCode {
    let allowlist = match Allowlist::parse(&args.allowed_domains) {
        Ok(a) => a,
        Err(e) => return super::usage(&e.to_string()),
    };
    let policy_ref_arg = if args.demo {
        Some("demo")
    } else {
        args.policy.as_deref()
    };
    let ros_config = match super::ros_config(args.ros) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let bridge_config = match super::bridge_config(&args.bridge) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let key = match args.verify.key() {
        Ok(k) => k,
        Err(code) => return code,
    };
    let registry = match &args.policy_watch {
        None => None,
        Some(r) => match OciRef::parse(r) {
            Ok(reference) if args.insecure_registry && !reference.is_loopback() => {
                return super::usage(&format!(
                    "--insecure-registry (plain HTTP) is only allowed for loopback registries, not {}",
                    reference.registry
                ));
            }
            Ok(reference) => Some(RegistryWatch {
                reference,
                poll: args.poll,
                insecure: args.insecure_registry,
            }),
            Err(e) => return super::usage(&e),
        },
    };
    // With a registry to watch, the daemon serves the store (what the watcher installs there).
    let no_flag = if bridge_config.is_some() && registry.is_none() {
        crate::policy::dist::resolve::NoFlag::BridgeDemo
    } else {
        crate::policy::dist::resolve::NoFlag::StoreOrDenyAll
    };
    let mut resolved = match super::load_policy(
        policy_ref_arg,
        args.policy_dir.as_deref(),
        no_flag,
        key.as_ref(),
    ) {
        Ok(p) => p,
        Err(e) => return super::usage(&e),
    };
    if let Some(w) = &resolved.warning {
        eprintln!("autonomy: warning: {w}");
    }
    if let Some(reg) = registry {
        if key.is_none() {
            eprintln!(
                "autonomy: warning: --policy-watch without --verification-key: any bundle pushed to {} will be served, unverified",
                reg.reference
            );
        }
        match resolved.watch.as_mut() {
            Some(w) => w.registry = Some(reg),
            // The store is always watched when no --policy is given (the only case here).
            None => return super::fail(&"--policy-watch: no policy store to watch"),
        }
    }
    let policy: Box<dyn PolicyEvaluator> = resolved.policy;
    let deny_all = policy.policy_ref().as_str() == "builtin:deny-all";
    let policy_ref = policy.policy_ref().clone();
    let loopback = args.listen.ip().is_loopback();
    let auth = match args
        .auth
        .authenticator(loopback, crate::identity::AuthMode::Off, false)
    {
        Ok(a) => a,
        Err(e) => return super::usage(&e),
    };
    let auth_mode = auth.mode();
    // The local operator token: `autonomy approve` run by this user on this machine finds it
    // in a file only this user can read.
    let (auth, operator_token) = match super::identity_cmd::ephemeral(
        auth,
        super::identity_cmd::LOCAL_OPERATOR,
        crate::identity::Role::Operator,
    ) {
        Ok(x) => x,
        Err(e) => return super::fail(&e),
    };
    let gate = match args.gate.options() {
        Ok(g) => g,
        Err(e) => return super::usage(&e),
    };
    let checkpoints = match super::checkpoint_cmd::config(
        &args.checkpoints,
        args.export_target.node_id.as_deref(),
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let checkpoint_line = checkpoints.as_ref().map(|c| c.describe());
    let wal_dir = args.wal_dir.unwrap_or_else(crate::paths::default_wal_dir);
    // An empty AUTONOMY_EXPORT (a unit file's `Environment=AUTONOMY_EXPORT=`) means off.
    let export = match args.export.as_deref().filter(|u| !u.trim().is_empty()) {
        Some(url) => match args.export_target.config(url, &wal_dir, None) {
            Ok(c) => Some(c),
            Err(code) => return code,
        },
        None => None,
    };
    let core = RuntimeConfig {
        policy,
        allowlist,
        wal_dir: wal_dir.clone(),
        wal_options: WalOptions {
            segment_bytes: args.wal_segment_bytes,
            sync: args.wal_sync,
            overlap_syncs: args.wal_flushes == Flushes::Overlap,
            overlap_after: args.wal_overlap_after,
            ..WalOptions::default()
        },
        policy_watch: resolved.watch,
        auth,
        gate,
        checkpoints,
    };
    let http = HttpConfig {
        listen: args.listen,
        limits: args.http.limits(),
    };
    let mut sigs = match crate::signals::Signals::new() {
        Ok(s) => s,
        Err(e) => return super::fail(&format!("cannot install signal handlers: {e}")),
    };
    let mut services = match Services::start(core, http, ros_config, bridge_config).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(c) = export
        && let Err(code) = services.start_export(c).await
    {
        let _ = services.stop().await;
        return code;
    }
    if !loopback {
        eprintln!(
            "autonomy: warning: listening on {} exposes the tool API beyond this machine",
            services.http.addr()
        );
    }
    if args.auth.insecure_no_auth && auth_mode == crate::identity::AuthMode::Off {
        tracing::warn!(
            target: crate::NOTICE,
            "--insecure-no-auth: calls are taken without tokens, from anyone who can reach {}",
            services.http.addr()
        );
    }
    let operator_file = match super::identity_cmd::OperatorFile::write(
        &args.auth.file.path(),
        &services.http.url(),
        &operator_token,
    ) {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!(
                "autonomy: warning: cannot write the local operator file ({e}): `autonomy approve` needs --token here"
            );
            None
        }
    };
    if deny_all {
        eprintln!(
            "autonomy: no policy loaded: the runtime is DENY-ALL (use --demo, --policy or `autonomy policy load`)"
        );
    }
    if args.wal_sync == SyncMode::None {
        eprintln!(
            "autonomy: warning: --wal-sync none: answers do not wait for the disk; a power loss can lose acknowledged records"
        );
    }
    if let Some(l) = checkpoint_line {
        eprintln!("autonomy: {l}");
    }
    eprintln!(
        "autonomy runtime {} listening on {} (policy {}, WAL {})",
        crate::VERSION,
        services.http.url(),
        policy_ref,
        wal_dir.display()
    );
    let sig = sigs.next().await;
    if let Some(f) = operator_file {
        f.remove();
    }
    eprintln!("autonomy: {sig} received: finishing in-flight calls and closing the WAL");
    match services.stop().await {
        Ok(()) => {
            eprintln!("autonomy: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(&format!("WAL close failed: {e}")),
    }
}
