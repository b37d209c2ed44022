//! The write-ahead log: durable, hash-chained audit records.
//!
//! Segment files of length-prefixed, CRC32C-checked JSON frames; each payload carries a
//! contiguous `seq` and the hash of the previous payload. Appends use group commit: concurrent
//! appenders share one `fdatasync`, and every append returns only once its bytes are durable.
//! Blocking callers use `Wal::append` (leader/follower); async callers use `Wal::append_async`
//! (queue + completion, one flush per batch on tokio's blocking pool; see
//! `docs/benchmarks.md`). The byte layout and recovery rules are in `docs/wal.md`.

mod durable;
mod format;
pub mod reader;
pub mod repair;
mod stats;
mod writer;

use serde_json::{Map, Value};

use crate::types::AuditId;

pub use format::{
    GENESIS, MAX_BATCH_BYTES, MAX_PAYLOAD, RESERVED_KEYS, TORN_PAGE, batch_window_end, segment_name,
};
pub use reader::{
    DamageCode, Reader, StoredRecord, TornTail, VerifyReport, WalDamage, list_segments, verify,
};
pub use stats::WalStats;
pub use writer::Wal;
/// The writer's lock, for what reads a stopped node's WAL and must not run beside a writer.
pub(crate) use writer::take_lock;

pub use crate::record::{RecordBody, RecordType};

/// A record to append: its type, optional audit id and type-specific fields.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Record type.
    pub rtype: RecordType,
    /// The decision this record belongs to, if any.
    pub audit_id: Option<AuditId>,
    /// Type-specific fields; must not use the reserved keys `seq`, `ts`, `type`, `audit_id`, `prev`.
    /// Empty (and ignored) in a record made by [`NewRecord::encoded`].
    pub body: Map<String, Value>,
    /// The body already encoded (a JSON object), when made by [`NewRecord::encoded`].
    encoded: Option<Vec<u8>>,
}

/// Refuses a body that would use one of the keys the payload's header fields take.
fn refuse_reserved<'a>(mut keys: impl Iterator<Item = &'a str>) -> Result<(), WalError> {
    match keys.find(|k| RESERVED_KEYS.contains(k)) {
        Some(k) => Err(WalError::Invalid(format!(
            "record body uses the reserved key `{k}` (reserved: seq, ts, type, audit_id, prev)"
        ))),
        None => Ok(()),
    }
}

impl NewRecord {
    /// A record with no fields yet.
    pub fn new(rtype: RecordType, audit_id: Option<AuditId>) -> Self {
        NewRecord {
            rtype,
            audit_id,
            body: Map::new(),
            encoded: None,
        }
    }

    /// A typed record ([`crate::record`]), its body encoded now straight from borrowed fields:
    /// no `Map` is built and nothing is cloned (the per-call decision record is on the hot path).
    pub fn encoded<B: RecordBody>(audit_id: Option<AuditId>, body: &B) -> Result<Self, WalError> {
        let rtype = B::TYPE;
        refuse_reserved(B::KEYS.iter().copied())?;
        let bytes = serde_json::to_vec(body)
            .map_err(|e| WalError::Invalid(format!("cannot encode record body: {e}")))?;
        if bytes.first() != Some(&b'{') {
            return Err(WalError::Invalid(
                "a record body must be a JSON object".into(),
            ));
        }
        Ok(NewRecord {
            rtype,
            audit_id,
            body: Map::new(),
            encoded: Some(bytes),
        })
    }

    /// The body as it goes into the payload (taken out of the record).
    pub(crate) fn take_body(&mut self) -> Result<Vec<u8>, WalError> {
        if let Some(b) = self.encoded.take() {
            // `with` on an encoded record would otherwise lose its field without a word.
            if !self.body.is_empty() {
                return Err(WalError::Invalid(
                    "a record with an encoded body cannot take more fields".into(),
                ));
            }
            return Ok(b);
        }
        refuse_reserved(self.body.keys().map(String::as_str))?;
        serde_json::to_vec(&self.body)
            .map_err(|e| WalError::Invalid(format!("cannot encode record body: {e}")))
    }

    /// Adds a field (builder style).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.body.insert(key.to_string(), value.into());
        self
    }
}

/// How appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// fdatasync before an append returns (the default; the only mode that keeps the promise).
    #[default]
    Fsync,
    /// No fsync: records reach the OS page cache only. Survives a process crash, not a power loss.
    None,
}

/// How a new segment's space is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocate {
    /// No preallocation: the file grows with each write.
    Off,
    /// `fallocate(2)` mode 0 (falls back to zero-fill where unsupported).
    Fallocate,
    /// Write `segment_bytes` of zeros (and fsync) when the segment is created.
    #[default]
    ZeroFill,
}

/// How long a running `fdatasync` is waited for before the next write starts beside it: longer
/// than this disk class's usual fdatasync (a few hundred µs on SSDs and cloud volumes), so only
/// a slow one is overlapped.
pub const DEFAULT_OVERLAP_AFTER: std::time::Duration = std::time::Duration::from_millis(1);

/// Options for opening a WAL.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Rotate to a new segment when the current one would exceed this many bytes.
    pub segment_bytes: u64,
    /// Durability mode.
    pub sync: SyncMode,
    /// Reserve `segment_bytes` when a segment is created (see `docs/benchmarks.md`).
    pub preallocate: Preallocate,
    /// Let the next write start, and its `fdatasync` run, while the previous write's
    /// `fdatasync` is still running (two in flight at most; `docs/wal.md`, *Overlapping
    /// flushes*). `false`: one flush at a time.
    pub overlap_syncs: bool,
    /// With `overlap_syncs`: how long the running `fdatasync` must have taken before the next
    /// write may start beside it. Shorter ones are waited for, so under load their records
    /// share one larger batch (fewer fdatasyncs, wake-ups and context switches per record);
    /// `Duration::ZERO` overlaps at once.
    pub overlap_after: std::time::Duration,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 * 1024 * 1024,
            sync: SyncMode::Fsync,
            preallocate: Preallocate::default(),
            overlap_syncs: true,
            overlap_after: DEFAULT_OVERLAP_AFTER,
        }
    }
}

/// What went wrong with the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O error, with what we were doing.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process holds the directory lock.
    #[error("WAL_LOCKED: {0}")]
    Locked(String),
    /// A write or fsync of record bytes failed; the log refuses further appends until restart.
    #[error(
        "WAL_FAILED: a write to the WAL failed ({0}); it refuses every append until the runtime is restarted"
    )]
    Poisoned(String),
    /// This append failed without writing anything (the next segment could not be made); the
    /// next append tries again.
    #[error("WAL_UNAVAILABLE: {0}; nothing was written, and the next append tries again")]
    Unavailable(String),
    /// The stored log is damaged; the WAL refuses to open.
    #[error("{0}")]
    Damaged(WalDamage),
    /// The WAL was closed.
    #[error("WAL_CLOSED: the WAL is closed")]
    Closed,
    /// Any other invalid use (a reserved body key, a payload over the size limit, …).
    #[error("{0}")]
    Invalid(String),
    /// The blocking task that ran a WAL operation for async code panicked or was cancelled.
    #[error("WAL_TASK_FAILED: the task running a WAL operation ended abnormally: {0}")]
    TaskFailed(String),
}

/// What recovery found when the WAL was opened.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Records found.
    pub records: u64,
    /// Bytes of torn tail cut off, if any, with where.
    pub trimmed: Option<String>,
}

/// Current UTC time as RFC 3339 with microseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// Every record in `dir`, in order, read like `wal verify` reads (a live writer's half-written
/// tail is not an error).
pub fn read_records(dir: &std::path::Path) -> Result<Vec<StoredRecord>, WalDamage> {
    let mut r = Reader::open(dir)?;
    r.set_live(true);
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
