//! The runtime: the core (WAL, policy, tools, gate) opened, started and stopped as one unit.
//! Front ends (HTTP, the ROS 2 node, the topic bridge) are started from it, each the same way:
//! `<front end>::start(&runtime, <its config>)`, which returns a handle the caller stops
//! before it stops the runtime. See `docs/architecture.md`.
//!
//! The lifecycle: [`Runtime::open`] (the WAL is open and recovered, the gate exists but takes no
//! call yet) → front ends start (they may bind and listen; a call that arrives now waits at the
//! gate) → [`Runtime::start`] (the `started` record, then the gate opens, then the policy
//! watcher) → … → front ends stop → [`Runtime::stop`] (the `stopped` record, the WAL closed).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use crate::checkpoint::task::{CheckpointConfig, Checkpointer};
use crate::gate::{Gate, GateOptions};
use crate::identity::Authenticator;
use crate::policy::dist::watch::PolicyWatch;
use crate::policy::{ActivePolicy, PolicyEvaluator};
use crate::record::{RuntimeStarted, RuntimeStopped, Started};
use crate::tools::{Allowlist, HttpGetLimits, Tools};
use crate::types::PolicyRef;
use crate::wal::{Wal, WalError, WalOptions};

/// A front end's handle: what every front end's `start(&runtime, config)` returns, and how it
/// is stopped (before the runtime).
pub trait FrontEnd: Send {
    /// Stops taking calls and lets those in flight finish (their records included).
    fn shutdown(self) -> impl std::future::Future<Output = ()> + Send;
}

/// Everything the core needs.
pub struct RuntimeConfig {
    /// The policy to start with.
    pub policy: Box<dyn PolicyEvaluator>,
    /// The `http_get` allowlist.
    pub allowlist: Allowlist,
    /// The WAL directory.
    pub wal_dir: PathBuf,
    /// WAL options.
    pub wal_options: WalOptions,
    /// Watch this policy store and hot-reload its current slot (see [`crate::policy::dist::watch`]).
    pub policy_watch: Option<PolicyWatch>,
    /// Who may call, and as whom.
    pub auth: Authenticator,
    /// Rate limits, shadow mode, approval timeout.
    pub gate: GateOptions,
    /// Sign the log's head now and then (see [`crate::checkpoint::task`]).
    pub checkpoints: Option<CheckpointConfig>,
}

impl RuntimeConfig {
    /// A core with an empty `http_get` allowlist (fail-closed), a durable WAL in `wal_dir` and
    /// no policy watch: what `run` and `demo validate` use.
    pub fn new(policy: Box<dyn PolicyEvaluator>, wal_dir: PathBuf) -> Self {
        RuntimeConfig {
            policy,
            allowlist: Allowlist::empty(),
            wal_dir,
            wal_options: WalOptions::default(),
            policy_watch: None,
            auth: Authenticator::off(),
            gate: GateOptions::default(),
            checkpoints: None,
        }
    }
}

/// Why the runtime could not open or start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The WAL could not be opened or written.
    #[error("{0}")]
    Wal(#[from] WalError),
}

/// The core, open: the gate exists; it takes calls once [`Runtime::start`] has run.
pub struct Runtime {
    gate: Arc<Gate>,
    auth: Arc<Authenticator>,
    reloader: Mutex<Option<JoinHandle<()>>>,
    policy_ref: PolicyRef,
    allowed_domains: Vec<String>,
    policy_watch: Mutex<Option<PolicyWatch>>,
    watcher: Mutex<Option<JoinHandle<()>>>,
    checkpoints: Mutex<Option<CheckpointConfig>>,
    checkpointer: Mutex<Option<Checkpointer>>,
    recovered: Option<String>,
}

impl Runtime {
    /// Opens the WAL (recovering a torn tail) and builds the gate, closed for now.
    pub async fn open(cfg: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let dir = cfg.wal_dir.clone();
        let opts = cfg.wal_options.clone();
        let (wal, recovery) = tokio::task::spawn_blocking(move || Wal::open(&dir, opts))
            .await
            .map_err(|e| WalError::TaskFailed(e.to_string()))??;
        let policy_ref = cfg.policy.policy_ref().clone();
        let allowed_domains = cfg.allowlist.entries();
        let policy = Arc::new(ActivePolicy::new(cfg.policy));
        let tools = Tools::new(cfg.allowlist, HttpGetLimits::default());
        let gate = Arc::new(Gate::new(policy, Arc::new(wal), tools).with_options(cfg.gate));
        Ok(Runtime {
            gate,
            auth: Arc::new(cfg.auth),
            reloader: Mutex::new(None),
            policy_ref,
            allowed_domains,
            policy_watch: Mutex::new(cfg.policy_watch),
            watcher: Mutex::new(None),
            checkpoints: Mutex::new(cfg.checkpoints),
            checkpointer: Mutex::new(None),
            recovered: recovery.trimmed,
        })
    }

    /// Records `started` (with the HTTP front end's address, when there is one), opens the gate
    /// to calls, and starts the policy watcher. Front ends started before this hold their calls
    /// at the gate until now, so no decision precedes the `started` record.
    pub async fn start(&self, listen: Option<SocketAddr>) -> Result<(), RuntimeError> {
        let listen = listen.map(|a| a.to_string());
        let started = RuntimeStarted {
            allowed_domains: (&self.allowed_domains[..]).into(),
            auth: Some(self.auth.mode().as_str().into()),
            event: Started,
            listen: listen.as_deref().map(Into::into),
            policy_ref: self.policy_ref.as_str().into(),
            shadow: self.gate.shadow().then_some(true),
            version: crate::VERSION.into(),
        };
        self.gate.record(None, &started).await?;
        self.gate.open();
        if let Some(h) = self.auth.spawn_reloader()
            && let Ok(mut slot) = self.reloader.lock()
        {
            *slot = Some(h);
        }
        let watch = self.policy_watch.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = watch {
            let h = crate::policy::dist::watch::spawn(
                w,
                self.gate.policy().clone(),
                self.gate.wal().clone(),
            );
            if let Ok(mut slot) = self.watcher.lock() {
                *slot = Some(h);
            }
        }
        let checkpoints = self.checkpoints.lock().ok().and_then(|mut c| c.take());
        if let Some(c) = checkpoints {
            let cp = crate::checkpoint::task::spawn(c, self.gate.wal().clone());
            if let Ok(mut slot) = self.checkpointer.lock() {
                *slot = Some(cp);
            }
        }
        Ok(())
    }

    /// What recovery cut when the WAL was opened (a torn tail), for the operator to read.
    pub fn recovered(&self) -> Option<&str> {
        self.recovered.as_deref()
    }

    /// The gate, for front ends.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Who may call, for front ends that take tokens.
    pub fn auth(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// Stops the policy watcher, writes a last checkpoint (when checkpoints are on), records the
    /// stop and closes the WAL. Stop the front ends first, so calls in flight finish with their
    /// records.
    pub async fn stop(self) -> Result<(), WalError> {
        let watcher = self.watcher.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = watcher {
            w.abort();
            let _ = w.await;
        }
        let reloader = self.reloader.lock().ok().and_then(|mut w| w.take());
        if let Some(r) = reloader {
            r.abort();
        }
        let checkpointer = self.checkpointer.lock().ok().and_then(|mut c| c.take());
        if let Some(c) = checkpointer {
            c.stop().await;
        }
        self.gate.record(None, &RuntimeStopped::default()).await?;
        let wal = self.gate.wal().clone();
        tokio::task::spawn_blocking(move || wal.close())
            .await
            .map_err(|e| WalError::TaskFailed(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::ToolCall;
    use crate::record::{Body, RecordType};
    use crate::types::{Source, ToolKind};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_before_start_waits_and_follows_the_started_record() {
        let tmp = tempfile::tempdir().unwrap();
        let policy = Box::new(crate::policy::demo_policy().unwrap());
        let rt = Runtime::open(RuntimeConfig::new(policy, tmp.path().join("wal")))
            .await
            .unwrap();
        let gate = rt.gate().clone();
        let call = tokio::spawn(async move {
            gate.call(ToolCall {
                kind: ToolKind::parse("tool.echo").unwrap(),
                params: serde_json::from_str(r#"{"message":"early"}"#).unwrap(),
                source: Source::new("test"),
                agent: crate::types::Agent::anonymous(),
            })
            .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !call.is_finished(),
            "a call was decided before the runtime started"
        );
        rt.start(Some(([127, 0, 0, 1], 9).into())).await.unwrap();
        let resp = tokio::time::timeout(std::time::Duration::from_secs(5), call)
            .await
            .expect("the call goes through once started")
            .unwrap();
        assert_eq!(resp.decision, crate::types::Decision::Allow);
        rt.stop().await.unwrap();

        let recs = crate::wal::read_records(&tmp.path().join("wal")).unwrap();
        let types: Vec<_> = recs.iter().map(|r| r.rtype).collect();
        assert_eq!(
            types,
            [
                RecordType::Runtime,
                RecordType::Decision,
                RecordType::Runtime
            ]
        );
        assert!(
            matches!(recs[0].body().unwrap(), Body::RuntimeStarted(s) if s.listen.as_deref() == Some("127.0.0.1:9"))
        );
        assert!(matches!(recs[2].body().unwrap(), Body::RuntimeStopped(_)));
    }
}
