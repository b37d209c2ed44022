//! `autonomy run ros2.launch`: gate the launch through the policy, supervise `ros2 launch` in its
//! own process group, record its lifecycle, and report its five markers (`docs/ros2-launch.md`).

pub mod lifecycle;
mod supervise;

use std::borrow::Cow;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::gate::{Gate, Outcome, ToolCall};
use crate::record::{Body, MarkerRecord};
use crate::signals::Signals;
use crate::types::{AuditId, Decision, Source, ToolKind};
use crate::wal::WalError;

pub use supervise::{Supervision, sweep_group};

/// The `source` of the `tool.ros2.launch` call `run ros2.launch` makes.
pub const SOURCE: Source = Source::new("launch");

/// Exit code when the policy denies the launch.
pub const EXIT_DENIED: u8 = 126;
/// Exit code when `ros2` is not on PATH.
pub const EXIT_NOT_FOUND: u8 = 127;
/// Exit code when the run's audit trail could not be written or read back.
pub const EXIT_AUDIT_FAILED: u8 = 1;

/// The context every marker of this path carries.
pub const CONTEXT: &str = "context=native";

/// The five markers, in order.
pub mod labels {
    /// The WAL and the ROS node are up.
    pub const TELEMETRY_ACTIVE: &str = "ros2-telemetry-active";
    /// The policy allowed `tool.ros2.launch`.
    pub const LAUNCH_ALLOWED: &str = "ros2-launch-allowed";
    /// The policy denied it (a DENY line, not a PASS).
    pub const LAUNCH_DENIED: &str = "ros2-launch-denied";
    /// Just before `ros2 launch` is spawned.
    pub const STACK_START: &str = "ros2-stack-start";
    /// The launch ended with status 0 under enforcement.
    pub const POLICY_ENFORCED: &str = "ros2-policy-enforced";
    /// The run's records were read back from the WAL.
    pub const WAL_RECORDING: &str = "ros2-wal-recording";
}

/// Where marker lines go besides stdout and the WAL (the ROS `/autonomy/markers` topic).
pub trait MarkerSink: Send + Sync {
    /// Publishes one marker line, byte for byte as printed.
    fn publish(&self, line: &str);
}

/// A sink that publishes nowhere.
pub struct NoMarkers;

impl MarkerSink for NoMarkers {
    fn publish(&self, _line: &str) {}
}

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// The ROS package.
    pub package: String,
    /// The launch file within it.
    pub launch_file: String,
    /// Launch arguments (`name:=value` …), passed unchanged.
    pub arguments: Vec<String>,
}

/// How to supervise it.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// After SIGINT to launch, how long before SIGTERM to its group.
    pub grace: Duration,
    /// After SIGTERM to the group, how long before SIGKILL.
    pub term_grace: Duration,
    /// The `ros2` executable name or path (looked up on PATH).
    pub ros2: OsString,
    /// `AUTONOMY_RUNTIME_TOKEN` for the launched nodes (`run`'s one-run token).
    pub runtime_token: Option<String>,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            grace: Duration::from_secs(15),
            term_grace: Duration::from_secs(5),
            ros2: "ros2".into(),
            runtime_token: None,
        }
    }
}

struct Reporter<'a> {
    gate: &'a Arc<Gate>,
    sink: &'a dyn MarkerSink,
}

impl Reporter<'_> {
    /// Records the marker durably, then prints it, then publishes it: a printed marker is
    /// always already on disk.
    async fn emit(
        &self,
        status: &str,
        label: &str,
        suffix: &str,
        audit_id: Option<&AuditId>,
    ) -> Result<String, WalError> {
        let line = format!("{status} {label} {CONTEXT}{suffix}");
        let rec = MarkerRecord {
            label: Cow::Borrowed(label),
            line: Cow::Borrowed(&line),
            status: Cow::Borrowed(status),
        };
        self.gate.record(audit_id, &rec).await?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        drop(out);
        self.sink.publish(&line);
        Ok(line)
    }
}

/// Runs the whole marker sequence (allow, spawn, supervise, read back) and returns the exit code.
pub async fn run(
    gate: &Arc<Gate>,
    runtime_url: &str,
    sink: &dyn MarkerSink,
    req: LaunchRequest,
    opts: LaunchOptions,
    sigs: &mut Signals,
) -> u8 {
    let rep = Reporter { gate, sink };
    let wal_error = |e: WalError| {
        tracing::error!(target: crate::NOTICE, "the WAL cannot record this run: {e}");
        EXIT_AUDIT_FAILED
    };

    // 1. The WAL (and the ROS node, started by the caller) are up.
    if let Err(e) = rep.emit("PASS", labels::TELEMETRY_ACTIVE, "", None).await {
        return wal_error(e);
    }

    // 2. The gate.
    let mut params = Map::new();
    params.insert("package".into(), req.package.clone().into());
    params.insert("launch_file".into(), req.launch_file.clone().into());
    params.insert(
        "arguments".into(),
        Value::Array(req.arguments.iter().cloned().map(Value::String).collect()),
    );
    let kind = match ToolKind::parse("tool.ros2.launch") {
        Ok(k) => k,
        Err(e) => return wal_error(WalError::Invalid(e.to_string())),
    };
    let resp = gate
        .call(ToolCall {
            kind,
            params,
            source: SOURCE,
            agent: crate::types::Agent::new(crate::identity::RUN_AGENT),
        })
        .await;
    let audit_id = resp.audit_id.clone();
    // `autonomy run` launches what its command line says; it cannot launch a call the policy
    // changed, so a downgrade stops it like a deny (fail closed).
    if resp.decision == Decision::Deny || resp.downgrade.is_some() {
        let reason = resp
            .reason
            .clone()
            .unwrap_or_else(|| {
                if resp.downgrade.is_some() {
                    "the policy downgraded the launch (a patch), and autonomy run launches only what it was asked".to_string()
                } else {
                    "denied".to_string()
                }
            })
            .replace(['\n', '\r'], " ");
        if let Outcome::WalUnavailable(e) = &resp.outcome {
            tracing::error!(target: crate::NOTICE, "the WAL cannot record the launch decision: {e}");
        }
        let line = format!("DENY {} {CONTEXT} reason={reason}", labels::LAUNCH_DENIED);
        match rep
            .emit(
                "DENY",
                labels::LAUNCH_DENIED,
                &format!(" reason={reason}"),
                Some(&audit_id),
            )
            .await
        {
            Ok(_) => {}
            Err(_) => {
                // Still tell the operator; the decision itself is recorded or the gate said why.
                println!("{line}");
                sink.publish(&line);
            }
        }
        return EXIT_DENIED;
    }
    if let Err(e) = rep
        .emit("PASS", labels::LAUNCH_ALLOWED, "", Some(&audit_id))
        .await
    {
        return wal_error(e);
    }

    // 3. Find ros2, then spawn it.
    let Some(ros2) = find_on_path(&opts.ros2) else {
        tracing::error!(target: crate::NOTICE,
            "`{}` not found on PATH: source your ROS 2 setup file first (e.g. `source /opt/ros/jazzy/setup.bash`)",
            opts.ros2.to_string_lossy()
        );
        return EXIT_NOT_FOUND;
    };
    if let Err(e) = rep
        .emit("PASS", labels::STACK_START, "", Some(&audit_id))
        .await
    {
        return wal_error(e);
    }
    let sup = Supervision {
        gate: gate.clone(),
        audit_id: audit_id.clone(),
        runtime_url: runtime_url.to_string(),
        runtime_token: opts.runtime_token.clone(),
        grace: opts.grace,
        term_grace: opts.term_grace,
    };
    let code = match sup.run(&ros2, &req, sigs).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(target: crate::NOTICE, "cannot start {}: {e}", ros2.display());
            return EXIT_NOT_FOUND.min(126);
        }
    };
    if code != 0 {
        return code;
    }

    // 4. Launch ended with 0 under enforcement.
    if let Err(e) = rep
        .emit("PASS", labels::POLICY_ENFORCED, "", Some(&audit_id))
        .await
    {
        return wal_error(e);
    }
    // 5. Read the run's records back from the WAL before claiming they are there.
    let dir = gate.wal().dir().to_path_buf();
    let id = audit_id.clone();
    let check = tokio::task::spawn_blocking(move || readback(&dir, &id)).await;
    match check {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(target: crate::NOTICE, "reading the run back from the WAL failed: {e}");
            return EXIT_AUDIT_FAILED;
        }
        Err(e) => {
            tracing::error!(target: crate::NOTICE, "WAL read-back task failed: {e}");
            return EXIT_AUDIT_FAILED;
        }
    }
    if let Err(e) = rep
        .emit("PASS", labels::WAL_RECORDING, "", Some(&audit_id))
        .await
    {
        return wal_error(e);
    }
    0
}

/// Checks that the WAL holds this run's allow decision and markers 1–4.
fn readback(dir: &Path, audit_id: &AuditId) -> Result<(), String> {
    let records = crate::wal::read_records(dir).map_err(|e| e.to_string())?;
    let mut decision = false;
    let mut seen: Vec<String> = Vec::new();
    for r in &records {
        match r.body().map_err(|e| format!("seq {}: {e}", r.seq))? {
            Body::Decision(d)
                if r.audit_id.as_ref() == Some(audit_id) && d.decision == Decision::Allow =>
            {
                decision = true;
            }
            Body::Marker(m) => seen.push(m.label.into_owned()),
            _ => {}
        }
    }
    if !decision {
        return Err(format!("no allow decision for audit id {audit_id}"));
    }
    for want in [
        labels::TELEMETRY_ACTIVE,
        labels::LAUNCH_ALLOWED,
        labels::STACK_START,
        labels::POLICY_ENFORCED,
    ] {
        if !seen.iter().any(|s| s == want) {
            return Err(format!("marker {want} is missing"));
        }
    }
    Ok(())
}

/// Looks `name` up on PATH (or takes it as a path when it has a slash).
fn find_on_path(name: &OsString) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    let p = Path::new(name);
    if p.components().count() > 1 {
        return is_exec(p).then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|c| is_exec(c))
}
