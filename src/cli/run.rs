//! `autonomy run <command>`: a runtime for the life of one child process.

use std::path::PathBuf;
use std::process::ExitCode;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::RunArgs;
use super::Services;
use crate::http::HttpConfig;
use crate::runtime::RuntimeConfig;
use crate::signals::{Signals, exit_code_of};

/// Where the run's WAL lives and whether it is removed at exit.
enum WalPlace {
    Kept(PathBuf),
    Temp(tempfile::TempDir),
}

/// Runs the child under a fresh runtime and returns its exit code.
pub(super) async fn run(args: RunArgs) -> ExitCode {
    let launch = match launch_request(&args) {
        Ok(l) => l,
        Err(msg) => return super::usage(&msg),
    };
    let ros_config = match super::ros_config(args.ros || launch.is_some()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let bridge_config = match super::bridge_config(&args.bridge) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let no_flag = if bridge_config.is_some() {
        crate::policy::dist::resolve::NoFlag::BridgeDemo
    } else {
        crate::policy::dist::resolve::NoFlag::Demo
    };
    let resolved = match super::load_policy(
        args.policy.as_deref(),
        args.policy_dir.as_deref(),
        no_flag,
        None,
    ) {
        Ok(p) => p,
        Err(e) => return super::usage(&e),
    };
    if let Some(w) = &resolved.warning {
        eprintln!("autonomy: warning: {w}");
    }
    let policy = resolved.policy;
    let place = match &args.dir {
        Some(d) => WalPlace::Kept(d.clone()),
        None => match tempfile::Builder::new().prefix("autonomy-run-").tempdir() {
            Ok(t) if args.keep => WalPlace::Kept(t.keep()),
            Ok(t) => WalPlace::Temp(t),
            Err(e) => return super::fail(&format!("cannot create a temp WAL dir: {e}")),
        },
    };
    let wal_dir = match &place {
        WalPlace::Kept(p) => p.clone(),
        WalPlace::Temp(t) => t.path().to_path_buf(),
    };
    let mut sigs = match Signals::new() {
        Ok(s) => s,
        Err(e) => return super::fail(&format!("cannot install signal handlers: {e}")),
    };
    let auth = match args
        .auth
        .authenticator(true, crate::identity::AuthMode::Optional, true)
    {
        Ok(a) => a,
        Err(e) => return super::usage(&e),
    };
    // The child's one-run token: it names the child `run`, and dies with this process.
    let (auth, token) = match super::identity_cmd::ephemeral(
        auth,
        crate::identity::RUN_AGENT,
        crate::identity::Role::Agent,
    ) {
        Ok(x) => x,
        Err(e) => return super::fail(&e),
    };
    let gate = match args.gate.options() {
        Ok(g) => g,
        Err(e) => return super::usage(&e),
    };
    // Fail-closed on purpose: `run` has no way to widen the http_get allowlist.
    let core = RuntimeConfig {
        policy_watch: resolved.watch,
        auth,
        gate,
        ..RuntimeConfig::new(policy, wal_dir.clone())
    };
    let services =
        match Services::start(core, HttpConfig::loopback(), ros_config, bridge_config).await {
            Ok(s) => s,
            Err(code) => return code,
        };
    let url = services.http.url();

    let timing = crate::ros::MarkerTiming {
        settle: std::time::Duration::from_secs_f64(args.ros_settle),
        linger: std::time::Duration::from_secs_f64(args.ros_linger),
        ..Default::default()
    };
    let code = match launch {
        Some(req) => {
            if let Some(h) = &services.ros {
                h.await_marker_subscribers(timing).await;
            }
            let sink: Box<dyn crate::launch::MarkerSink + '_> = match &services.ros {
                Some(h) => Box::new(RosMarkers(h)),
                None => Box::new(crate::launch::NoMarkers),
            };
            let opts = crate::launch::LaunchOptions {
                grace: std::time::Duration::from_secs_f64(args.grace_period),
                runtime_token: Some(token.clone()),
                ..Default::default()
            };
            let gate = services.rt.gate();
            crate::launch::run(gate, &url, sink.as_ref(), req, opts, &mut sigs).await
        }
        None => supervise(&args, &url, &token, &mut sigs).await,
    };
    if let Some(h) = &services.ros
        && !h.flush_markers(timing.linger).await
    {
        eprintln!(
            "autonomy: warning: a subscriber of /autonomy/markers did not acknowledge the last marker within {:?}",
            timing.linger
        );
    }

    if let Err(e) = services.stop().await {
        eprintln!("autonomy: error: WAL close failed: {e}");
    }
    match place {
        WalPlace::Kept(p) => eprintln!("autonomy: WAL kept at {}", p.display()),
        WalPlace::Temp(t) => {
            if let Err(e) = t.close() {
                eprintln!("autonomy: warning: could not remove the temp WAL dir: {e}");
            }
        }
    }
    ExitCode::from(code)
}

/// Publishes marker lines on `/autonomy/markers`.
struct RosMarkers<'a>(&'a crate::ros::RosHandle);

impl crate::launch::MarkerSink for RosMarkers<'_> {
    fn publish(&self, line: &str) {
        if let Err(e) = self.0.publish_marker(line) {
            eprintln!("autonomy: warning: marker not published on /autonomy/markers: {e}");
        }
    }
}

/// `ros2.launch <package> <launch_file> [args…]` as the command selects the launch path.
fn launch_request(args: &RunArgs) -> Result<Option<crate::launch::LaunchRequest>, String> {
    if args.command.first().map(|c| c.as_os_str()) != Some(std::ffi::OsStr::new("ros2.launch")) {
        return Ok(None);
    }
    let text: Vec<String> = args
        .command
        .iter()
        .skip(1)
        .map(|a| {
            a.to_str()
                .map(str::to_string)
                .ok_or_else(|| format!("ros2.launch arguments must be UTF-8: {a:?}"))
        })
        .collect::<Result<_, _>>()?;
    match text.as_slice() {
        [package, launch_file, rest @ ..] => Ok(Some(crate::launch::LaunchRequest {
            package: package.clone(),
            launch_file: launch_file.clone(),
            arguments: rest.to_vec(),
        })),
        _ => Err("usage: autonomy run [--policy REF] [--dir DIR] [--keep] ros2.launch <package> <launch_file> [launch args…]".into()),
    }
}

/// Spawns the child, forwards signals, and maps its end to an exit code.
async fn supervise(args: &RunArgs, url: &str, token: &str, sigs: &mut Signals) -> u8 {
    let (prog, rest) = match args.command.split_first() {
        Some(x) => x,
        None => {
            eprintln!("autonomy: error: no command given");
            return super::EXIT_USAGE;
        }
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(rest)
        .env("AUTONOMY_RUNTIME_URL", url)
        .env("AUTONOMY_RUNTIME_TOKEN", token);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let name = prog.to_string_lossy();
            return match e.kind() {
                std::io::ErrorKind::NotFound => {
                    eprintln!(
                        "autonomy: error: command not found: {name} (check the name and your PATH)"
                    );
                    127
                }
                std::io::ErrorKind::PermissionDenied => {
                    eprintln!("autonomy: error: cannot execute {name}: permission denied");
                    126
                }
                _ => {
                    eprintln!("autonomy: error: cannot start {name}: {e}");
                    126
                }
            };
        }
    };
    let pid = child.id().map(|p| Pid::from_raw(p as i32));
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(s) => exit_code_of(s),
                    Err(e) => {
                        eprintln!("autonomy: error: waiting for the child failed: {e}");
                        super::EXIT_FAILURE
                    }
                };
            }
            sig = sigs.next() => {
                if let Some(pid) = pid
                    && !(sig == Signal::SIGINT && child_got_tty_sigint())
                {
                    let _ = kill(pid, sig);
                }
            }
        }
    }
}

/// A Ctrl-C typed at a terminal already reached the child (same foreground process group);
/// forwarding it again would interrupt the child twice.
fn child_got_tty_sigint() -> bool {
    let stdin = std::io::stdin();
    match nix::unistd::tcgetpgrp(&stdin) {
        Ok(fg) => fg == nix::unistd::getpgrp(),
        Err(_) => false,
    }
}
