//! Audit export: every WAL record, in order, to a NATS JetStream stream, at least once and
//! deduplicated there, so the fleet's logs end up in one replicated place.
//!
//! The pieces:
//! - [`source`]: a thread reads the WAL's segment files (no lock, like `wal inspect
//!   --follow`) up to the writer's durable head and hands records on through a bounded channel.
//!   It never touches the append path, so a slow or absent broker never slows the WAL: the
//!   records simply wait in the log and the lag grows.
//! - `publish`: the async side publishes each record's payload bytes as stored, on
//!   `<subject>` with `Nats-Msg-Id: <node>:<seq>` (JetStream drops a re-sent id inside the
//!   stream's duplicate window), several in flight, and advances the cursor only over records
//!   whose publish JetStream acknowledged. Before publishing on a (new) connection it looks in
//!   the stream for records of this node past the cursor (acknowledged but not yet in the
//!   cursor when the daemon died, or stored while the broker could not answer) and does not send
//!   them again, so a re-send after any outage, however long, makes no duplicate either.
//! - [`cursor`]: `export.cursor` in the WAL directory, replaced atomically.
//!
//! Started from the runtime like a front end ([`start`]) or run once over a stopped node's WAL
//! ([`export_once`]). See `docs/fleet.md`.

pub mod cursor;
pub mod fetch;
mod metrics;
mod publish;
mod source;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::node::NodeId;
use crate::runtime::Runtime;
use crate::wal::Wal;

pub use cursor::{CURSOR_FILE, Cursor, CursorError};

/// The stream the export creates (or binds to) unless told otherwise.
pub const DEFAULT_STREAM: &str = "AUTONOMY_AUDIT";
/// Subjects of the default stream: `autonomy.audit.<node>` for every node.
pub const SUBJECT_PREFIX: &str = "autonomy.audit";
/// The duplicate window of a stream the export creates: a re-sent `Nats-Msg-Id` inside it is
/// dropped by JetStream. Re-sends after longer outages are caught before sending instead (the
/// stream is searched for records past the cursor), so it only has to cover the seconds
/// between a connection failing and the next one starting.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Publishes awaiting their acknowledgement, at most.
pub const IN_FLIGHT: usize = 512;
/// How long a stopping daemon keeps exporting (its last records, `runtime stopped` included).
pub const STOP_FLUSH: Duration = Duration::from_secs(5);

/// Header with the record's seq.
pub const HEADER_SEQ: &str = "Autonomy-Seq";
/// Header with the record's type.
pub const HEADER_TYPE: &str = "Autonomy-Type";
/// Header with the node id.
pub const HEADER_NODE: &str = "Autonomy-Node";

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// `nats://host:port` (or `tls://`), comma-separated for a cluster's servers.
    pub servers: Vec<async_nats::ServerAddr>,
    /// The servers as given, without passwords (for messages).
    pub display: String,
    /// This node.
    pub node: NodeId,
    /// The subject records are published on.
    pub subject: String,
    /// The JetStream stream.
    pub stream: String,
    /// Replicas of the stream when the export creates it.
    pub replicas: usize,
    /// The WAL directory (the cursor lives there too).
    pub wal_dir: PathBuf,
    /// Publishes awaiting acknowledgement, at most.
    pub in_flight: usize,
}

/// Why the export cannot start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A flag's value is not usable.
    #[error("{0}")]
    Config(String),
    /// The cursor file.
    #[error("{0}")]
    Cursor(#[from] CursorError),
    /// The cursor does not belong to this WAL or this node.
    #[error("{0}")]
    Mismatch(String),
    /// The WAL could not be read.
    #[error("{0}")]
    Wal(String),
    /// The export thread could not start.
    #[error("cannot start the export: {0}")]
    Spawn(std::io::Error),
}

impl ExportConfig {
    /// A config with the defaults: subject `autonomy.audit.<node>`, stream `AUTONOMY_AUDIT`,
    /// one replica. `url` is one NATS URL or several, comma-separated.
    pub fn new(url: &str, node: NodeId, wal_dir: PathBuf) -> Result<ExportConfig, ExportError> {
        let mut servers = Vec::new();
        let mut shown = Vec::new();
        for part in url.split(',').map(str::trim) {
            if !(part.starts_with("nats://") || part.starts_with("tls://")) {
                return Err(ExportError::Config(format!(
                    "export URL {:?} is not a NATS URL: use nats://HOST:PORT (or tls://), comma-separated for several servers",
                    redact(part)
                )));
            }
            let addr: async_nats::ServerAddr = part
                .parse()
                .map_err(|e| ExportError::Config(format!("export URL {:?}: {e}", redact(part))))?;
            shown.push(redact(part));
            servers.push(addr);
        }
        let subject = format!("{SUBJECT_PREFIX}.{}", node.as_str());
        Ok(ExportConfig {
            servers,
            display: shown.join(","),
            node,
            subject,
            stream: DEFAULT_STREAM.to_string(),
            replicas: 1,
            wal_dir,
            in_flight: IN_FLIGHT,
        })
    }

    /// Publishes on `subject` instead (a literal subject: tokens of printable characters
    /// without `*` or `>`).
    pub fn with_subject(mut self, subject: &str) -> Result<ExportConfig, ExportError> {
        let ok = !subject.is_empty()
            && subject.len() <= 255
            && subject.split('.').all(|t| {
                !t.is_empty()
                    && t != "*"
                    && t != ">"
                    && t.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
            });
        if !ok {
            return Err(ExportError::Config(format!(
                "export subject {subject:?} is not a literal NATS subject: use dot-separated tokens without spaces, * or >, e.g. {SUBJECT_PREFIX}.robot-7"
            )));
        }
        self.subject = subject.to_string();
        Ok(self)
    }

    /// Binds to (or creates) stream `name` instead.
    pub fn with_stream(mut self, name: &str) -> Result<ExportConfig, ExportError> {
        let ok = !name.is_empty()
            && name.len() <= 255
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'));
        if !ok {
            return Err(ExportError::Config(format!(
                "export stream name {name:?} is not valid: use letters, digits, - and _ (no spaces, . * > / \\)"
            )));
        }
        self.stream = name.to_string();
        Ok(self)
    }

    /// The stream has this many replicas when the export creates it (1, 3 or 5 in a cluster).
    pub fn with_replicas(mut self, n: usize) -> Result<ExportConfig, ExportError> {
        if !(1..=5).contains(&n) {
            return Err(ExportError::Config(format!(
                "export replicas {n}: use 1 to 5 (3 for a three-server cluster)"
            )));
        }
        self.replicas = n;
        Ok(self)
    }

    /// One line for the operator: where the records go.
    pub fn describe(&self) -> String {
        format!(
            "audit export to {} (stream {}, subject {}, node {})",
            self.display, self.stream, self.subject, self.node
        )
    }
}

/// `nats://user:secret@host` → `nats://user:***@host`: URLs are printed, passwords never.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string().trim_end_matches('/').to_string()
        }
        _ => url.to_string(),
    }
}

/// The export's counters, readable while it runs.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Every record up to here is in the stream.
    pub acked_seq: AtomicU64,
    /// The highest seq known to be in the WAL.
    pub head_seq: AtomicU64,
    /// A connection to JetStream is up and publishing.
    pub connected: AtomicBool,
}

impl ExportStats {
    /// Records in the WAL not yet in the stream.
    pub fn lag(&self) -> u64 {
        self.head_seq
            .load(Ordering::Relaxed)
            .saturating_sub(self.acked_seq.load(Ordering::Relaxed))
    }
}

/// How an export ended.
#[derive(Debug, Clone)]
pub struct ExportOutcome {
    /// The cursor at the end: every record up to here is in the stream.
    pub acked_seq: u64,
    /// The cursor when it began.
    pub started_at: u64,
    /// The log's last seq known.
    pub head_seq: u64,
    /// The last error, when the export did not reach the head.
    pub error: Option<String>,
    /// A torn tail the reader stopped at ([`export_once`] only).
    pub torn_tail: Option<String>,
}

/// What the engine is asked to do from outside.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Control {
    /// Follow the log.
    Run,
    /// Export up to this seq, then stop; give up at the deadline.
    Finish {
        /// The last seq to export.
        target: u64,
        /// When to give up.
        deadline: tokio::time::Instant,
    },
}

/// A running export (`runtime start --export`).
pub struct ExportHandle {
    control: watch::Sender<Control>,
    task: tokio::task::JoinHandle<ExportOutcome>,
    stop_reading: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    stats: Arc<ExportStats>,
    wal: Arc<Wal>,
}

/// Starts exporting `runtime`'s WAL: from the cursor on, following the log, until
/// [`ExportHandle::finish`].
pub fn start(runtime: &Runtime, cfg: ExportConfig) -> Result<ExportHandle, ExportError> {
    let wal = runtime.gate().wal().clone();
    let head = wal.head().0.0;
    let cur = load_cursor(&cfg)?;
    if cur.acked_seq > head {
        return Err(ahead(&cfg.wal_dir, cur.acked_seq, head));
    }
    let stats = Arc::new(ExportStats::default());
    stats.acked_seq.store(cur.acked_seq, Ordering::Relaxed);
    stats.head_seq.store(head, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(source::CHANNEL);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = source::spawn(
        cfg.wal_dir.clone(),
        cur.acked_seq,
        source::Limit::Durable(wal.clone()),
        tx,
        stop.clone(),
        stats.clone(),
    )
    .map_err(ExportError::Spawn)?;
    let (ctl, ctl_rx) = watch::channel(Control::Run);
    let engine = publish::Engine::new(cfg, cur, rx, ctl_rx, stats.clone(), true);
    let task = tokio::spawn(engine.run());
    runtime
        .gate()
        .metrics()
        .add_source(Arc::new(metrics::ExportMetrics {
            stats: stats.clone(),
            wal: wal.clone(),
        }));
    Ok(ExportHandle {
        control: ctl,
        task,
        stop_reading: stop,
        reader: Some(reader),
        stats,
        wal,
    })
}

impl ExportHandle {
    /// The counters.
    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }

    /// Exports what the WAL holds now (call it after the runtime's `stopped` record), for at
    /// most `bound`, writes the cursor and stops.
    pub async fn finish(mut self, bound: Duration) -> ExportOutcome {
        let target = self.wal.head().0.0;
        self.stats.head_seq.fetch_max(target, Ordering::Relaxed);
        let _ = self.control.send(Control::Finish {
            target,
            deadline: tokio::time::Instant::now() + bound,
        });
        let out = match (&mut self.task).await {
            Ok(o) => o,
            Err(e) => ExportOutcome {
                acked_seq: self.stats.acked_seq.load(Ordering::Relaxed),
                started_at: 0,
                head_seq: target,
                error: Some(format!("the export task ended abnormally: {e}")),
                torn_tail: None,
            },
        };
        self.stop_reader();
        out
    }

    fn stop_reader(&mut self) {
        self.stop_reading.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            // The thread sleeps at most one poll, or is unblocked by the receiver's drop.
            let _ = r.join();
        }
    }
}

impl Drop for ExportHandle {
    fn drop(&mut self) {
        self.stop_reading.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// Exports a stopped node's WAL (`wal export`): from the cursor to the end of the log, then
/// returns; gives up after `bound`. Holds the WAL's lock meanwhile, so it never runs beside a
/// runtime (whose own `--export` would write the same cursor).
pub async fn export_once(cfg: ExportConfig, bound: Duration) -> Result<ExportOutcome, ExportError> {
    if !cfg.wal_dir.is_dir() {
        return Err(ExportError::Wal(format!(
            "WAL directory {} does not exist",
            cfg.wal_dir.display()
        )));
    }
    let _lock = crate::wal::take_lock(&cfg.wal_dir).map_err(|e| ExportError::Wal(e.to_string()))?;
    let cur = load_cursor(&cfg)?;
    // Records a crashed runtime wrote but did not sync are made durable before they leave.
    sync_segments(&cfg.wal_dir)?;
    let stats = Arc::new(ExportStats::default());
    stats.acked_seq.store(cur.acked_seq, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(source::CHANNEL);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = source::spawn(
        cfg.wal_dir.clone(),
        cur.acked_seq,
        source::Limit::Files,
        tx,
        stop.clone(),
        stats.clone(),
    )
    .map_err(ExportError::Spawn)?;
    let (_ctl, ctl_rx) = watch::channel(Control::Finish {
        target: u64::MAX,
        deadline: tokio::time::Instant::now() + bound,
    });
    let engine = publish::Engine::new(cfg, cur, rx, ctl_rx, stats, false);
    let out = engine.run().await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    Ok(out)
}

/// The cursor to start from: the stored one if it was written for this node (to another stream
/// or subject: start over, the new place holds nothing yet), else a fresh one. Stale temp files
/// of a cursor write cut short by a crash are removed.
fn load_cursor(cfg: &ExportConfig) -> Result<Cursor, ExportError> {
    if let Ok(rd) = std::fs::read_dir(&cfg.wal_dir) {
        for e in rd.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(".export.cursor.")
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let fresh = Cursor {
        node: cfg.node.as_str().to_string(),
        stream: cfg.stream.clone(),
        subject: cfg.subject.clone(),
        acked_seq: 0,
        scan_from: 0,
        updated: crate::wal::now_rfc3339(),
    };
    match cursor::load(&cfg.wal_dir)? {
        None => Ok(fresh),
        Some(c) if c.node != cfg.node.as_str() => Err(ExportError::Mismatch(format!(
            "the export cursor {} was written for node {:?}, not {:?}: give --node-id {} (a WAL keeps one node id), or move the cursor aside to export this log again under the new id",
            cursor::path(&cfg.wal_dir).display(),
            c.node,
            cfg.node.as_str(),
            c.node
        ))),
        Some(c) if c.stream != cfg.stream || c.subject != cfg.subject => {
            tracing::warn!(
                target: crate::NOTICE,
                "audit export: the cursor was for stream {} subject {} (up to seq {}); exporting from seq 1 to stream {} subject {}",
                c.stream,
                c.subject,
                c.acked_seq,
                cfg.stream,
                cfg.subject
            );
            Ok(fresh)
        }
        Some(c) => Ok(c),
    }
}

pub(crate) fn ahead(dir: &Path, acked: u64, head: u64) -> ExportError {
    ExportError::Mismatch(format!(
        "the export cursor {} says records up to seq {acked} are in the stream, but the WAL ends at seq {head} (was it cut back by `wal repair` or replaced?); new records would reuse exported message ids: move the cursor aside and export under a new --node-id",
        cursor::path(dir).display()
    ))
}

/// fsyncs every segment (read-only descriptors do), so what is exported is on disk.
fn sync_segments(dir: &Path) -> Result<(), ExportError> {
    let segs = crate::wal::list_segments(dir)
        .map_err(|e| ExportError::Wal(format!("cannot read {}: {e}", dir.display())))?;
    for (_, p) in segs {
        std::fs::File::open(&p)
            .and_then(|f| f.sync_data())
            .map_err(|e| ExportError::Wal(format!("cannot sync {}: {e}", p.display())))?;
    }
    Ok(())
}

/// What `wal export-status` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportStatus {
    /// The cursor, if any.
    pub cursor: Option<Cursor>,
    /// The WAL's last seq.
    pub head_seq: u64,
    /// Records not yet in the stream.
    pub lag: u64,
}

/// Reads the cursor and the WAL's head (no lock: safe beside a running daemon).
pub fn status(wal_dir: &Path) -> Result<ExportStatus, ExportError> {
    let cursor = cursor::load(wal_dir)?;
    let mut r = crate::wal::Reader::open_allow_empty(wal_dir)
        .map_err(|e| ExportError::Wal(e.to_string()))?;
    r.set_live(true);
    while r
        .next_record()
        .map_err(|e| ExportError::Wal(e.to_string()))?
        .is_some()
    {}
    let head_seq = r.head_seq();
    let acked = cursor.as_ref().map_or(0, |c| c.acked_seq);
    Ok(ExportStatus {
        cursor,
        head_seq,
        lag: head_seq.saturating_sub(acked),
    })
}
