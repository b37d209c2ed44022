//! The runtime: WAL + policy + tools + gate + HTTP listener, started and stopped as one unit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::gate::Gate;
use crate::policy::{ActivePolicy, PolicyEvaluator};
use crate::tools::{Allowlist, HttpGetLimits, Tools};
use crate::wal::{NewRecord, RecordType, Wal, WalError, WalOptions};

/// Everything needed to start a runtime.
pub struct RuntimeConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The policy to start with.
    pub policy: Box<dyn PolicyEvaluator>,
    /// The `http_get` allowlist.
    pub allowlist: Allowlist,
    /// The WAL directory.
    pub wal_dir: PathBuf,
    /// WAL options.
    pub wal_options: WalOptions,
    /// Bounds on HTTP clients: body size, timeouts, connection limit, lingering.
    pub http: crate::http::HttpLimits,
    /// Watch this policy store and hot-reload its current slot (see [`crate::policy::dist::watch`]).
    pub policy_watch: Option<crate::policy::dist::watch::PolicyWatch>,
}

impl RuntimeConfig {
    /// A runtime on `127.0.0.1:<random port>` with an empty `http_get` allowlist (fail-closed),
    /// a durable WAL in `wal_dir` and no policy watch: what `run` and `demo validate` use.
    pub fn loopback(policy: Box<dyn PolicyEvaluator>, wal_dir: PathBuf) -> Self {
        RuntimeConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            policy,
            allowlist: Allowlist::empty(),
            wal_dir,
            wal_options: WalOptions::default(),
            http: crate::http::HttpLimits::default(),
            policy_watch: None,
        }
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The WAL could not be opened.
    #[error("{0}")]
    Wal(#[from] WalError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
        /// What to do.
        hint: &'static str,
    },
}

/// A running runtime.
pub struct Runtime {
    gate: Arc<Gate>,
    addr: SocketAddr,
    stop_tx: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    watcher: Option<JoinHandle<()>>,
}

impl Runtime {
    /// Opens the WAL, records the start, binds the listener and starts serving.
    pub async fn start(cfg: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let dir = cfg.wal_dir.clone();
        let opts = cfg.wal_options.clone();
        let (wal, recovery) = tokio::task::spawn_blocking(move || Wal::open(&dir, opts))
            .await
            .map_err(|e| WalError::Invalid(format!("WAL open task failed: {e}")))??;
        if let Some(t) = &recovery.trimmed {
            eprintln!("autonomy: WAL recovery: {t}");
        }
        let wal = Arc::new(wal);

        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| RuntimeError::Bind {
                addr: cfg.listen,
                hint: match e.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        " (another process is using it; stop it or choose another address with --listen)"
                    }
                    std::io::ErrorKind::AddrNotAvailable => {
                        " (no interface has that address; use 127.0.0.1 or an address of this machine)"
                    }
                    std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges; use a higher port)",
                    _ => "",
                },
                source: e,
            })?;
        let addr = listener.local_addr().map_err(|e| RuntimeError::Bind {
            addr: cfg.listen,
            source: e,
            hint: "",
        })?;

        let policy_ref = cfg.policy.policy_ref().clone();
        let allowed = cfg.allowlist.entries();
        let policy = Arc::new(ActivePolicy::new(cfg.policy));
        let tools = Tools::new(cfg.allowlist, HttpGetLimits::default());
        let gate = Arc::new(Gate::new(policy, wal.clone(), tools));

        let start = NewRecord::new(RecordType::Runtime, None)
            .with("event", "started")
            .with("version", crate::VERSION)
            .with("listen", addr.to_string())
            .with("policy_ref", policy_ref.as_str())
            .with("allowed_domains", allowed);
        let w = wal.clone();
        tokio::task::spawn_blocking(move || w.append(start))
            .await
            .map_err(|e| WalError::Invalid(format!("WAL task failed: {e}")))??;

        let watcher = cfg
            .policy_watch
            .map(|w| crate::policy::dist::watch::spawn(w, gate.policy().clone(), wal.clone()));

        let app = crate::http::router(gate.clone(), &cfg.http);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(crate::http::server::serve(
            listener,
            app,
            cfg.http,
            async move {
                let _ = stop_rx.await;
            },
        ));
        Ok(Runtime {
            gate,
            addr,
            stop_tx: Some(stop_tx),
            server: Some(server),
            watcher,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The gate, for other front ends.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Stops accepting, lets in-flight calls finish, records the stop and closes the WAL.
    pub async fn stop(mut self) -> Result<(), WalError> {
        if let Some(w) = self.watcher.take() {
            w.abort();
            let _ = w.await;
        }
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take()
            && let Err(e) = server.await
        {
            tracing::warn!("HTTP server task failed: {e}");
        }
        let wal = self.gate.wal().clone();
        tokio::task::spawn_blocking(move || {
            wal.append(NewRecord::new(RecordType::Runtime, None).with("event", "stopped"))?;
            wal.close()
        })
        .await
        .map_err(|e| WalError::Invalid(format!("WAL task failed: {e}")))?
    }
}
