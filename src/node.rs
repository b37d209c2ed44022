//! The node's identity in a fleet: a stable id, generated once and kept in the state directory
//! (`$XDG_STATE_HOME/autonomy/node-id`), or given by the operator. It names this node's records
//! wherever they leave the machine (the export's message ids, the checkpoints' origin).

use std::path::{Path, PathBuf};

/// Longest node id.
pub const MAX_LEN: usize = 64;

/// A node id: 1-64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(String);

/// Why a node id could not be read, made or accepted.
#[derive(Debug, thiserror::Error)]
pub enum NodeIdError {
    /// Not a valid id.
    #[error(
        "node id {0:?} is not valid: use 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
    )]
    Invalid(String),
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl NodeId {
    /// Checks `s` against the rules.
    pub fn parse(s: &str) -> Result<NodeId, NodeIdError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_LEN
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(NodeId(s.to_string()))
        } else {
            Err(NodeIdError::Invalid(s.to_string()))
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The node id: `given` if any, else the one in `file`, else a new one (`node-` and 16 random
    /// hex digits) written to `file` atomically, so every later start finds the same.
    pub fn load_or_create(given: Option<&str>, file: &Path) -> Result<NodeId, NodeIdError> {
        if let Some(g) = given {
            return NodeId::parse(g);
        }
        let io = |source| NodeIdError::Io {
            path: file.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(file) {
            Ok(s) => return NodeId::parse(s.trim()),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            Err(_) => {}
        }
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let id = NodeId(format!("node-{}", hex::encode(b)));
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".node-id")
            .tempfile_in(dir)
            .map_err(io)?;
        std::io::Write::write_all(&mut tmp, format!("{}\n", id.0).as_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        // Another process may have made one meanwhile: the first one written wins.
        match tmp.persist_noclobber(file) {
            Ok(_) => Ok(id),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                let s = std::fs::read_to_string(file).map_err(io)?;
                NodeId::parse(s.trim())
            }
            Err(e) => Err(io(e.error)),
        }
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_kept_or_given() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("s/node-id");
        let a = NodeId::load_or_create(None, &f).unwrap();
        assert!(a.as_str().starts_with("node-") && a.as_str().len() == 21);
        assert_eq!(NodeId::load_or_create(None, &f).unwrap(), a);
        assert_eq!(
            NodeId::load_or_create(Some("robot-7"), &f)
                .unwrap()
                .as_str(),
            "robot-7"
        );
        assert!(NodeId::load_or_create(Some("a b"), &f).is_err());
        std::fs::write(&f, "bad id\n").unwrap();
        assert!(NodeId::load_or_create(None, &f).is_err());
    }
}
