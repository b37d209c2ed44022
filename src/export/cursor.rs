//! The export cursor: `export.cursor` in the WAL directory, how far the export has got.
//!
//! One JSON object, replaced whole (temp file, fsync, rename), so a crash leaves the old cursor
//! or the new one, never a torn one. It only ever holds a seq that JetStream acknowledged (or
//! that was found in the stream), so it is never ahead of the stream; it may be behind it (acks
//! received after the last write), which costs only re-sends that the stream drops as
//! duplicates.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The cursor's file name inside the WAL directory.
pub const CURSOR_FILE: &str = "export.cursor";

/// How far a WAL has been exported, and where to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The node id the records were published under (`Nats-Msg-Id = <node>:<seq>`).
    pub node: String,
    /// The JetStream stream.
    pub stream: String,
    /// The subject the records were published on.
    pub subject: String,
    /// Every record up to this seq is in the stream (0: none yet).
    pub acked_seq: u64,
    /// Every message of this node with a record seq above `acked_seq` is at a stream sequence
    /// above this one: where the next start looks for records already in the stream.
    pub scan_from: u64,
    /// When this cursor was written (RFC 3339 UTC).
    pub updated: String,
}

/// Why the cursor could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// The file could not be read or written.
    #[error("export cursor {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a cursor.
    #[error(
        "export cursor {path} is not valid ({why}); remove it to export again from the first record not in the stream"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The cursor file of a WAL directory.
pub fn path(wal_dir: &Path) -> PathBuf {
    wal_dir.join(CURSOR_FILE)
}

/// The cursor in `wal_dir`, or `None` when there is none yet.
pub fn load(wal_dir: &Path) -> Result<Option<Cursor>, CursorError> {
    let p = path(wal_dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CursorError::Io { path: p, source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CursorError::Invalid {
            path: p,
            why: e.to_string(),
        })
}

/// Replaces the cursor in `wal_dir` atomically: a temp file beside it, fsync'd, renamed over it.
///
/// The directory is not fsync'd: if a power cut loses the rename, the older cursor comes back,
/// which is behind the stream, never ahead of it.
pub fn store(wal_dir: &Path, c: &Cursor) -> Result<(), CursorError> {
    let p = path(wal_dir);
    let io = |source| CursorError::Io {
        path: p.clone(),
        source,
    };
    let mut body = serde_json::to_vec(c).map_err(|e| io(std::io::Error::other(e)))?;
    body.push(b'\n');
    let mut tmp = tempfile::Builder::new()
        .prefix(".export.cursor.")
        .tempfile_in(wal_dir)
        .map_err(io)?;
    std::io::Write::write_all(&mut tmp, &body).map_err(io)?;
    tmp.as_file().sync_data().map_err(io)?;
    tmp.persist(&p).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_whole_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(load(tmp.path()).unwrap(), None);
        let mut c = Cursor {
            node: "robot-7".into(),
            stream: "AUTONOMY_AUDIT".into(),
            subject: "autonomy.audit.robot-7".into(),
            acked_seq: 12,
            scan_from: 40,
            updated: crate::wal::now_rfc3339(),
        };
        store(tmp.path(), &c).unwrap();
        assert_eq!(load(tmp.path()).unwrap(), Some(c.clone()));
        c.acked_seq = 13;
        store(tmp.path(), &c).unwrap();
        assert_eq!(load(tmp.path()).unwrap(), Some(c));
        // Only the cursor is left: no temp files.
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [CURSOR_FILE]);
        std::fs::write(path(tmp.path()), "{").unwrap();
        assert!(matches!(load(tmp.path()), Err(CursorError::Invalid { .. })));
    }
}
