//! Signed checkpoints: the node signs its WAL head as a C2SP `tlog-checkpoint` signed note
//! (<https://c2sp.org/tlog-checkpoint>), writes it into the log as a `checkpoint` record, and
//! anyone holding the node's public key can later prove that a copy of the log (or the exported
//! stream) holds exactly what was signed.
//!
//! The note text is the three checkpoint lines:
//!
//! ```text
//! <origin: the node id>
//! <size: the seq of the last record covered>
//! <root: base64 of the 32-byte SHA-256 hash of that record's payload>
//! ```
//!
//! Our log is a hash chain, not a Merkle tree: the "root" is the chain head at `size`, which
//! commits to every record up to it (each record holds the hash of the one before). What a
//! checkpoint proves, and what it does not, is in `docs/fleet.md`.
//!
//! Parts: [`note`] (signed notes and Ed25519 key strings), this module (the checkpoint text,
//! key files, checking a local log), [`task`] (the runtime's checkpointer).

pub mod note;
pub mod task;

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::record::CheckpointRecord;
use crate::wal::{Reader, VerifyReport, WalDamage};
pub use note::{KeyError, NoteError, NoteSigner, NoteVerifier};

/// The private key's file name in the state directory.
pub const KEY_FILE: &str = "node.key";
/// The public key's file name beside it.
pub const PUB_FILE: &str = "node.pub";

/// `$XDG_STATE_HOME/autonomy/node.key`: where `keygen` puts the node key and the runtime looks.
pub fn default_key_file() -> PathBuf {
    crate::paths::state_dir().join(KEY_FILE)
}

/// The three lines a checkpoint signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Who signed it: the node id.
    pub origin: String,
    /// How many records it covers: the seq of the last one.
    pub size: u64,
    /// SHA-256 of the payload of record `size` (the WAL's head hash at that size).
    pub root: [u8; 32],
}

/// Why a checkpoint could not be made, read or matched.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The note is not signed by the key, or not a note.
    #[error("{0}")]
    Note(#[from] NoteError),
    /// The signed text is not a checkpoint.
    #[error("the signed text is not a checkpoint: {0}")]
    Text(String),
    /// A hash is not `sha256:` and 64 hex digits.
    #[error("{0:?} is not a sha256:<64 hex> hash")]
    Hash(String),
}

impl Checkpoint {
    /// The note text: origin, size and base64 root, each on its own line.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Reads a note text (extension lines after the third are allowed and ignored, as the
    /// format says).
    pub fn parse(text: &str) -> Result<Checkpoint, CheckpointError> {
        let bad = |why: &str| CheckpointError::Text(why.to_string());
        let mut lines = text.strip_suffix('\n').unwrap_or(text).split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(bad("fewer than three lines (origin, size, root)"));
        };
        if origin.is_empty() {
            return Err(bad("the origin line is empty"));
        }
        let size_ok = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        let size = size
            .parse::<u64>()
            .ok()
            .filter(|_| size_ok)
            .ok_or_else(|| bad(&format!("the size line {size:?} is not a decimal number")))?;
        let root: [u8; 32] = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad(&format!("the root line {root:?} is not base64 of 32 bytes")))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }

    /// The root as the WAL writes hashes: `sha256:<hex>`.
    pub fn root_hash(&self) -> String {
        format!("sha256:{}", hex::encode(self.root))
    }

    /// The checkpoint of a WAL head (`hash` as the WAL writes it: `sha256:<hex>`).
    pub fn of_head(origin: &str, size: u64, hash: &str) -> Result<Checkpoint, CheckpointError> {
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root: parse_hash(hash)?,
        })
    }

    /// Signs it: the `checkpoint` record that carries it.
    pub fn sign(&self, signer: &NoteSigner) -> Result<CheckpointRecord<'static>, CheckpointError> {
        let note = signer.sign(&self.text())?;
        Ok(CheckpointRecord {
            note: note.into(),
            origin: self.origin.clone().into(),
            root: self.root_hash().into(),
            size: self.size,
        })
    }
}

/// `sha256:<64 hex>` → the 32 bytes.
pub fn parse_hash(s: &str) -> Result<[u8; 32], CheckpointError> {
    let mut out = [0u8; 32];
    let hex_part = s
        .strip_prefix("sha256:")
        .ok_or_else(|| CheckpointError::Hash(s.to_string()))?;
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| CheckpointError::Hash(s.to_string()))?;
    Ok(out)
}

/// Checks that `note` is signed by `key` and reads the checkpoint it signs.
pub fn open(note: &str, key: &NoteVerifier) -> Result<Checkpoint, CheckpointError> {
    Checkpoint::parse(key.open(note)?)
}

/// Why a local log does not match a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum LogMismatch {
    /// The log itself is damaged (what `wal verify` reports).
    #[error("{0}")]
    Damaged(WalDamage),
    /// The log ends before the checkpoint's size.
    #[error(
        "the log ends at seq {head_seq}, before seq {size} that the checkpoint signed: records were cut off (truncated) after it was signed"
    )]
    Truncated {
        /// The checkpoint's size.
        size: u64,
        /// Where the log ends.
        head_seq: u64,
    },
    /// Record `size` is not what was signed.
    #[error(
        "record seq {size} hashes to {found} but the checkpoint signed {signed}: the log was rewritten at or before seq {size} after it was signed"
    )]
    Rewritten {
        /// The checkpoint's size.
        size: u64,
        /// The signed root.
        signed: String,
        /// What the log holds.
        found: String,
    },
    /// A checkpoint of size 0 signs nothing.
    #[error("the checkpoint has size 0: it signs no record")]
    Empty,
}

/// Reads the whole log in `dir` as `wal verify` does (CRCs, `seq`, the chain) and checks that
/// record `cp.size` hashes to `cp.root`. Since each record carries the hash of the one before,
/// that proves every record up to `cp.size` is the one that was signed.
pub fn verify_log(dir: &Path, cp: &Checkpoint) -> Result<VerifyReport, LogMismatch> {
    if cp.size == 0 {
        return Err(LogMismatch::Empty);
    }
    let mut r = Reader::open(dir).map_err(LogMismatch::Damaged)?;
    let signed = cp.root_hash();
    while let Some(rec) = r.next_record().map_err(LogMismatch::Damaged)? {
        if rec.seq.0 == cp.size && rec.hash != signed {
            return Err(LogMismatch::Rewritten {
                size: cp.size,
                signed,
                found: rec.hash,
            });
        }
    }
    if r.head_seq() < cp.size {
        return Err(LogMismatch::Truncated {
            size: cp.size,
            head_seq: r.head_seq(),
        });
    }
    Ok(VerifyReport {
        records: r.records(),
        segments: r.segments(),
        head_seq: r.head_seq(),
        head_hash: r.head_hash().to_string(),
        torn_tail: r.torn_tail().map(|t| t.describe()),
    })
}

/// A key file that could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `keygen` does not replace a key.
    #[error(
        "{} already exists: a node keeps its key (checkpoints signed with it are checked with node.pub); move it away first to make a new one",
        .0.display()
    )]
    Exists(PathBuf),
    /// The file does not hold a key of the expected kind.
    #[error("{}: {source}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: KeyError,
    },
    /// The argument is neither a readable file nor a key.
    #[error("{arg:?} is neither a public key file nor a key (<name>+<id>+<base64>): {source}")]
    NotAKey {
        /// The argument.
        arg: String,
        /// Why it is not a key.
        source: KeyError,
    },
}

/// What `keygen` made.
#[derive(Debug)]
pub struct KeyPair {
    /// The private key file (mode 0600).
    pub key_file: PathBuf,
    /// The public key file.
    pub pub_file: PathBuf,
    /// The public key.
    pub verifier: NoteVerifier,
}

/// Makes a new node key named `name` in `dir`: `node.key` (the signer key string, mode 0600)
/// and `node.pub` (the verifier key string). Refuses to replace either.
pub fn keygen(dir: &Path, name: &str) -> Result<KeyPair, KeyFileError> {
    let key_file = dir.join(KEY_FILE);
    let pub_file = dir.join(PUB_FILE);
    for f in [&key_file, &pub_file] {
        if f.symlink_metadata().is_ok() {
            return Err(KeyFileError::Exists(f.clone()));
        }
    }
    let signer = NoteSigner::generate(name).map_err(|source| KeyFileError::Key {
        path: key_file.clone(),
        source,
    })?;
    let verifier = signer.verifier();
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| KeyFileError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    write_new(&key_file, signer.encode().as_bytes(), 0o600)?;
    if let Err(e) = write_new(&pub_file, verifier.to_string().as_bytes(), 0o644) {
        // Without its public half the key is of no use to anyone: leave nothing behind.
        let _ = std::fs::remove_file(&key_file);
        return Err(e);
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(KeyPair {
        key_file,
        pub_file,
        verifier,
    })
}

/// Writes `bytes` and a newline to a new file `path` with `mode`, atomically (a temp file
/// persisted without replacing anything).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    // tempfile creates the file 0600, so the private key is never readable by others.
    let mut tmp = tempfile::Builder::new()
        .prefix(".node-key")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.write_all(b"\n").map_err(io)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists(path.to_path_buf())
        } else {
            io(e.error)
        }
    })?;
    Ok(())
}

/// Reads the node key from `file`; also returns a warning when others may read it.
pub fn load_signer(file: &Path) -> Result<(NoteSigner, Option<String>), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| KeyFileError::Io {
        path: file.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(file).map_err(io)?;
    let text = zeroize::Zeroizing::new(read_small(file)?);
    let signer = NoteSigner::parse(&text).map_err(|source| KeyFileError::Key {
        path: file.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    let warning = (mode & 0o077 != 0).then(|| {
        format!(
            "the node key {} can be read by others (mode {mode:o}): chmod 600 it",
            file.display()
        )
    });
    Ok((signer, warning))
}

/// Reads a key file of at most 4 KiB.
fn read_small(file: &Path) -> Result<String, KeyFileError> {
    use std::io::Read;
    let io = |source| KeyFileError::Io {
        path: file.to_path_buf(),
        source,
    };
    let mut s = String::new();
    std::fs::File::open(file)
        .map_err(io)?
        .take(4096)
        .read_to_string(&mut s)
        .map_err(io)?;
    Ok(s)
}

/// The public key `arg` names: a file holding it (such as `node.pub`), or the key string itself.
pub fn load_verifier(arg: &str) -> Result<NoteVerifier, KeyFileError> {
    let path = Path::new(arg);
    if path.is_file() {
        let text = read_small(path)?;
        return NoteVerifier::parse(&text).map_err(|source| KeyFileError::Key {
            path: path.to_path_buf(),
            source,
        });
    }
    NoteVerifier::parse(arg).map_err(|source| {
        if path.exists() || !arg.contains('+') {
            // Most likely a path that is not a readable file.
            KeyFileError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file (nor a key string)",
                ),
            }
        } else {
            KeyFileError::NotAKey {
                arg: arg.to_string(),
                source,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_strict_parse() {
        let cp = Checkpoint {
            origin: "robot-7".into(),
            size: 42,
            root: [0xab; 32],
        };
        let t = cp.text();
        assert_eq!(
            t,
            "robot-7\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n"
        );
        assert_eq!(Checkpoint::parse(&t).unwrap(), cp);
        assert_eq!(
            Checkpoint::parse(&format!("{t}ext line\n")).unwrap(),
            cp,
            "extension lines are allowed"
        );
        assert_eq!(
            cp.root_hash(),
            format!("sha256:{}", "ab".repeat(32)),
            "the root as the WAL writes hashes"
        );
        assert_eq!(
            Checkpoint::of_head("robot-7", 42, &cp.root_hash()).unwrap(),
            cp
        );
        for bad in [
            "robot-7\n42\n",
            "\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
            "robot-7\n042\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
            "robot-7\n+42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
            "robot-7\n42\nq6ur\n",
        ] {
            assert!(Checkpoint::parse(bad).is_err(), "accepted {bad:?}");
        }
        assert!(parse_hash("sha256:00").is_err());
        assert!(parse_hash(&"ab".repeat(32)).is_err());
    }

    #[test]
    fn a_signed_checkpoint_opens_with_its_key_only() {
        let s = NoteSigner::from_seed("robot-7", &[1; 32]).unwrap();
        let cp = Checkpoint {
            origin: "robot-7".into(),
            size: 3,
            root: [9; 32],
        };
        let rec = cp.sign(&s).unwrap();
        assert_eq!(rec.size, 3);
        assert_eq!(rec.root, cp.root_hash());
        assert!(rec.note.starts_with(&*cp.text()));
        assert_eq!(open(&rec.note, &s.verifier()).unwrap(), cp);
        let other = NoteSigner::from_seed("robot-7", &[2; 32]).unwrap();
        assert!(matches!(
            open(&rec.note, &other.verifier()),
            Err(CheckpointError::Note(NoteError::NotSigned { .. }))
        ));
    }

    #[test]
    fn the_example_in_docs_fleet_md_is_real() {
        let key = NoteVerifier::parse(
            "node-cb9dc9bf330f1b9e+992816a5+AW0l/1CDy1Zn474dAN9JBgRGD69LeJ16iKLrz7pWSXFu",
        )
        .unwrap();
        let record = r#"{"seq":9,"ts":"2026-12-02T11:59:20.888216Z","type":"checkpoint","prev":"sha256:eca9f35200cf48cab2c3323da5ce8088a258502721d2a850c7ab00b249496cce","note":"node-cb9dc9bf330f1b9e\n8\n7KnzUgDPSMqywzI9pc6AiKJYUCch0qhQx6sAsklJbM4=\n\n— node-cb9dc9bf330f1b9e mSgWpT/8chZ0zLF/rwZHiYiD33uiibN/r2m1ZHK/mOJqB/VXqTvrYIPhdbFIpgyb3mBY4Os5UzBMVhe6RZY61KPpbQ0=\n","origin":"node-cb9dc9bf330f1b9e","root":"sha256:eca9f35200cf48cab2c3323da5ce8088a258502721d2a850c7ab00b249496cce","size":8}"#;
        let v: serde_json::Value = serde_json::from_str(record).unwrap();
        let cp = open(v["note"].as_str().unwrap(), &key).unwrap();
        assert_eq!(cp.origin, "node-cb9dc9bf330f1b9e");
        assert_eq!(cp.size, 8);
        assert_eq!(cp.root_hash(), v["root"]);
        assert_eq!(cp.root_hash(), v["prev"]);
        let docs = include_str!("../../docs/fleet.md");
        assert!(
            docs.contains(record),
            "docs/fleet.md no longer shows this record"
        );
        assert!(docs.contains(&key.to_string()));
    }

    #[test]
    fn keygen_writes_a_private_file_and_never_replaces_it() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let kp = keygen(&dir, "robot-7").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&kp.key_file), 0o600);
        assert_eq!(mode(&kp.pub_file), 0o644);
        assert_eq!(mode(&dir), 0o700);
        let (signer, warning) = load_signer(&kp.key_file).unwrap();
        assert!(warning.is_none());
        assert_eq!(signer.verifier(), kp.verifier);
        assert_eq!(
            load_verifier(kp.pub_file.to_str().unwrap()).unwrap(),
            kp.verifier
        );
        assert_eq!(
            load_verifier(&kp.verifier.to_string()).unwrap(),
            kp.verifier
        );
        let before = std::fs::read(&kp.key_file).unwrap();
        assert!(matches!(
            keygen(&dir, "robot-7"),
            Err(KeyFileError::Exists(_))
        ));
        assert_eq!(std::fs::read(&kp.key_file).unwrap(), before);
        std::fs::set_permissions(&kp.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_signer(&kp.key_file).unwrap().1.is_some());
        // The public key file is not a private key, and a missing file says so.
        assert!(load_signer(&kp.pub_file).is_err());
        assert!(matches!(
            load_verifier(tmp.path().join("nope.pub").to_str().unwrap()),
            Err(KeyFileError::Io { .. })
        ));
    }
}
