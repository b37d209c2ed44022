//! The write-ahead log: durable, hash-chained audit records.
//!
//! FIRST CUT (issue 2): one segment file, a mutex and one fsync per append. The real engine
//! (segments, group commit, recovery, verify) replaces the insides behind the same API.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::types::{AuditId, Seq};

/// The kinds of record the log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordType {
    /// A policy or runtime-layer decision about one tool call.
    Decision,
    /// A runtime event: started, stopped, recovered.
    Runtime,
    /// A marker line (`PASS ros2-… context=native`).
    Marker,
    /// A supervised process started, died or finished.
    Lifecycle,
    /// A policy was activated, rejected or rolled back.
    Policy,
    /// An execution error after an allow (upstream failure, bad params).
    Error,
}

impl RecordType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::Decision => "decision",
            RecordType::Runtime => "runtime",
            RecordType::Marker => "marker",
            RecordType::Lifecycle => "lifecycle",
            RecordType::Policy => "policy",
            RecordType::Error => "error",
        }
    }
}

/// A record to append: its type, optional audit id and type-specific fields.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Record type.
    pub rtype: RecordType,
    /// The decision this record belongs to, if any.
    pub audit_id: Option<AuditId>,
    /// Type-specific fields; must not use the reserved keys `seq`, `ts`, `type`, `audit_id`, `prev`.
    pub body: Map<String, Value>,
}

impl NewRecord {
    /// A record with no fields yet.
    pub fn new(rtype: RecordType, audit_id: Option<AuditId>) -> Self {
        NewRecord {
            rtype,
            audit_id,
            body: Map::new(),
        }
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

/// Options for opening a WAL.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Rotate to a new segment when the current one would exceed this many bytes.
    pub segment_bytes: u64,
    /// Durability mode.
    pub sync: SyncMode,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 * 1024 * 1024,
            sync: SyncMode::Fsync,
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
    /// A previous write or fsync failed; the log refuses further appends.
    #[error("WAL_FAILED: an earlier write failed ({0}); restart the runtime")]
    Poisoned(String),
    /// Any other invalid use.
    #[error("{0}")]
    Invalid(String),
}

/// What recovery found when the WAL was opened.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Records found.
    pub records: u64,
    /// Bytes of torn tail cut off, if any, with where.
    pub trimmed: Option<String>,
}

const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

struct State {
    file: File,
    next_seq: u64,
    prev: String,
    failed: Option<String>,
}

/// An open, exclusively owned WAL directory.
pub struct Wal {
    dir: PathBuf,
    sync: SyncMode,
    state: Mutex<State>,
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovery), WalError> {
        std::fs::create_dir_all(dir).map_err(|e| WalError::Io {
            context: format!("cannot create WAL directory {}", dir.display()),
            source: e,
        })?;
        let path = dir.join("00000000000000000001.wal");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| WalError::Io {
                context: format!("cannot open {}", path.display()),
                source: e,
            })?;
        Ok((
            Wal {
                dir: dir.to_path_buf(),
                sync: opts.sync,
                state: Mutex::new(State {
                    file,
                    next_seq: 1,
                    prev: GENESIS.to_string(),
                    failed: None,
                }),
            },
            Recovery::default(),
        ))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record; returns once it is durable.
    pub fn append(&self, rec: NewRecord) -> Result<Seq, WalError> {
        self.append_batch(vec![rec])
    }

    /// Appends records in order; returns the last seq once all are durable.
    pub fn append_batch(&self, recs: Vec<NewRecord>) -> Result<Seq, WalError> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| WalError::Poisoned("lock poisoned".into()))?;
        if let Some(f) = &st.failed {
            return Err(WalError::Poisoned(f.clone()));
        }
        let mut buf = Vec::new();
        let mut last = Seq(st.next_seq.saturating_sub(1));
        for rec in recs {
            let mut obj = Map::new();
            obj.insert("seq".into(), st.next_seq.into());
            obj.insert("ts".into(), now_rfc3339().into());
            obj.insert("type".into(), rec.rtype.as_str().into());
            if let Some(a) = &rec.audit_id {
                obj.insert("audit_id".into(), a.as_str().into());
            }
            obj.insert("prev".into(), st.prev.clone().into());
            for (k, v) in rec.body {
                obj.insert(k, v);
            }
            let payload = serde_json::to_vec(&Value::Object(obj))
                .map_err(|e| WalError::Invalid(e.to_string()))?;
            st.prev = format!("sha256:{}", hex::encode(Sha256::digest(&payload)));
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
            buf.extend_from_slice(&payload);
            last = Seq(st.next_seq);
            st.next_seq += 1;
        }
        let res = st.file.write_all(&buf).and_then(|_| match self.sync {
            SyncMode::Fsync => st.file.sync_data(),
            SyncMode::None => Ok(()),
        });
        if let Err(e) = res {
            st.failed = Some(e.to_string());
            return Err(WalError::Io {
                context: "WAL write failed".into(),
                source: e,
            });
        }
        Ok(last)
    }

    /// Flushes and closes.
    pub fn close(&self) -> Result<(), WalError> {
        Ok(())
    }
}

/// Current UTC time as RFC 3339 with microseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// Every record payload in `dir`, in order (FIRST CUT: replaced by the reader).
pub fn read_records(dir: &Path) -> Result<Vec<Value>, WalError> {
    let path = dir.join("00000000000000000001.wal");
    let data = std::fs::read(&path).map_err(|e| WalError::Io {
        context: format!("cannot read {}", path.display()),
        source: e,
    })?;
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 8 <= data.len() {
        let len = u32::from_le_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]) as usize;
        let end = off + 8 + len;
        if len == 0 || end > data.len() {
            break;
        }
        let v: Value = serde_json::from_slice(&data[off + 8..end])
            .map_err(|e| WalError::Invalid(e.to_string()))?;
        out.push(v);
        off = end;
    }
    Ok(out)
}
