//! The managed policy store: slots `current/` and `lkg/` (last known good), each holding
//! `bundle.tar.gz` and `meta.json`.
//!
//! ## Layout and atomic update protocol
//!
//! ```text
//! <store>/current -> state/current        (fixed relative symlinks, created once)
//! <store>/lkg     -> state/lkg
//! <store>/state   -> gens/<generation>    (THE single pointer that changes)
//! <store>/gens/<generation>/current/{bundle.tar.gz,meta.json}
//! <store>/gens/<generation>/lkg/{bundle.tar.gz,meta.json}     (absent when there is no lkg)
//! <store>/.lock                            (flock: one writer at a time)
//! ```
//!
//! An update (load, rollback, pull) takes the lock, writes a complete new generation in
//! `<store>/tmp-*`, fsyncs every file and directory, renames it to `gens/<generation>`,
//! creates a new symlink `state.tmp-*` pointing at it and `rename(2)`s that over `state`, then
//! fsyncs `<store>`. The rename is the commit point: a crash before it leaves the old state,
//! after it the new one. Recovery on the next update (or `policy status`) is only cleanup:
//! `tmp-*`, `state.tmp-*` and every generation that `state` does not point at are removed.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::bundle::{self, Bundle, BundleError};
use super::file::{self, FileKind, ReadError};
use super::signing::VerificationKey;
use crate::policy::eval::RegoPolicyError;

/// Bundle file name inside a slot.
pub const BUNDLE_FILE: &str = "bundle.tar.gz";
/// Metadata file name inside a slot.
pub const META_FILE: &str = "meta.json";
/// Largest `meta.json` read.
pub const MAX_META: u64 = 64 * 1024;

/// A slot's `meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// Bundle name.
    pub name: String,
    /// Bundle version (OPA: revision).
    pub version: String,
    /// `sha256:<hex>` bundle hash.
    pub hash: String,
    /// When it was loaded into the store (RFC 3339).
    pub loaded_at: String,
    /// Where it came from: a file path or an `oci://` ref.
    pub source: String,
    /// The policy_ref answers and records carry.
    pub policy_ref: String,
    /// `autonomy` or `opa`.
    #[serde(default)]
    pub layout: String,
    /// The bundle's signature when it was loaded: `verified <alg> [kid=<id>]`, `not verified
    /// [<alg>] [kid=<id>]` (signed, but loaded without a verification key) or `unsigned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Which slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The active bundle.
    Current,
    /// The last known good bundle.
    Lkg,
}

impl Slot {
    /// `current` or `lkg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Current => "current",
            Slot::Lkg => "lkg",
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file-system step of the store that failed; names it in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Reading a file's metadata.
    Read,
    /// Opening the lock file.
    Open,
    /// Creating the store directory.
    CreateStore,
    /// Creating a directory, file or symlink.
    Create,
    /// Creating the temporary generation directory.
    CreateTempIn,
    /// Writing and syncing a file.
    Write,
    /// Syncing a directory.
    Fsync,
    /// Renaming the new generation into `gens/`.
    RenameTo,
    /// Renaming the new `state` symlink over the old one (the commit point).
    Switch,
}

impl std::fmt::Display for IoOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoOp::Read => "cannot read",
            IoOp::Open => "cannot open",
            IoOp::CreateStore => "cannot create policy store",
            IoOp::Create => "cannot create",
            IoOp::CreateTempIn => "cannot create a temp dir in",
            IoOp::Write => "cannot write",
            IoOp::Fsync => "cannot fsync",
            IoOp::RenameTo => "cannot rename to",
            IoOp::Switch => "cannot switch",
        })
    }
}

/// Why the store could not be read or updated, or a slot is not usable.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system step failed.
    #[error("{op} {}: {error}", path.display())]
    Io {
        /// The step.
        op: IoOp,
        /// The path it was on.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The store's lock could not be taken.
    #[error("cannot lock {}: {error}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What the OS said.
        error: nix::errno::Errno,
    },
    /// A slot file could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A slot's `meta.json` is not valid.
    #[error("{} is not valid: {error}", path.display())]
    Meta {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        error: serde_json::Error,
    },
    /// A slot's metadata could not be written as JSON.
    #[error(transparent)]
    MetaJson(serde_json::Error),
    /// A slot's bundle is refused.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// A slot's bundle does not hash to what its `meta.json` says.
    #[error("slot bundle hashes to {actual}, meta.json says {recorded}")]
    HashMismatch {
        /// What the bundle hashes to.
        actual: String,
        /// What `meta.json` says.
        recorded: String,
    },
    /// A slot's bundle does not compile.
    #[error(transparent)]
    Compile(#[from] RegoPolicyError),
    /// `current` or `lkg` exists but is not the symlink this store makes.
    #[error(
        "{} is not managed by this version of autonomy (expected a symlink to state/{slot}); move it away",
        link.display()
    )]
    Unmanaged {
        /// The path.
        link: PathBuf,
        /// The slot it should be.
        slot: Slot,
    },
    /// A rollback without a last-known-good bundle.
    #[error("no last-known-good bundle in {} (nothing to roll back to)", dir.display())]
    NoLkg {
        /// The store directory.
        dir: PathBuf,
    },
    /// A rollback to a last-known-good bundle that is not usable.
    #[error("the lkg slot is not usable: {0}")]
    LkgUnusable(Box<StoreError>),
}

/// A failed file-system step, for `map_err`.
fn io(op: IoOp, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        op,
        path: path.to_path_buf(),
        error,
    }
}

/// A slot's contents, read from disk.
#[derive(Debug, Clone)]
pub struct SlotData {
    /// The metadata.
    pub meta: Meta,
    /// The bundle bytes.
    pub bytes: Vec<u8>,
    /// `meta.json` as stored.
    pub meta_raw: Vec<u8>,
}

/// The store at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Result of a successful load.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The new current slot's metadata.
    pub meta: Meta,
    /// The previous current, now lkg.
    pub previous: Option<Meta>,
}

impl Store {
    /// The store in `dir` (nothing is created until the first update).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<store>/<slot>`.
    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.dir.join(slot.as_str())
    }

    /// Where `state` points now (the generation directory), if the store has a state.
    pub fn generation(&self) -> Option<PathBuf> {
        let t = std::fs::read_link(self.dir.join("state")).ok()?;
        Some(self.dir.join(t))
    }

    /// Reads a slot's metadata; `Ok(None)` when the slot is empty.
    pub fn meta(&self, slot: Slot) -> Result<Option<Meta>, StoreError> {
        let p = self.slot_dir(slot).join(META_FILE);
        match std::fs::metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(IoOp::Read, &p)(e)),
            Ok(_) => {}
        }
        let b = file::read_capped(&p, MAX_META, FileKind::SlotMetadata)?;
        serde_json::from_slice(&b)
            .map(Some)
            .map_err(|error| StoreError::Meta { path: p, error })
    }

    /// Reads a slot (from one generation, so meta and bundle always match).
    pub fn read_slot(&self, slot: Slot) -> Result<Option<SlotData>, StoreError> {
        let base = match self.generation() {
            Some(g) => g.join(slot.as_str()),
            None => self.slot_dir(slot),
        };
        read_slot_dir(&base)
    }

    /// Reads and checks a slot's bundle (its signature too, with a key); `Ok(None)` when the
    /// slot is empty.
    pub fn open_slot(
        &self,
        slot: Slot,
        key: Option<&VerificationKey>,
    ) -> Result<Option<(Meta, Bundle)>, StoreError> {
        let Some(sd) = self.read_slot(slot)? else {
            return Ok(None);
        };
        let b = check_slot(&sd, key)?;
        Ok(Some((sd.meta, b)))
    }

    /// The slot whose source ref is `source` (current first).
    pub fn find_source(&self, source: &str) -> Result<Option<Slot>, StoreError> {
        for s in [Slot::Current, Slot::Lkg] {
            if let Some(m) = self.meta(s)?
                && m.source == source
            {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// Installs a checked bundle as current; the old current becomes lkg.
    pub fn install(&self, bytes: &[u8], b: &Bundle, source: &str) -> Result<Loaded, StoreError> {
        let meta = Meta {
            name: b.name.clone(),
            version: b.version.clone(),
            hash: b.hash.clone(),
            loaded_at: crate::wal::now_rfc3339(),
            source: source.to_string(),
            policy_ref: b.policy_ref().as_str().to_string(),
            layout: match b.layout {
                bundle::Layout::Autonomy => "autonomy".into(),
                bundle::Layout::Opa => "opa".into(),
            },
            signature: Some(b.signature.to_string()),
        };
        let _lock = self.lock()?;
        let old = self.read_slot(Slot::Current)?;
        let meta_bytes = serde_json::to_vec_pretty(&meta).map_err(StoreError::MetaJson)?;
        self.commit(
            Some((bytes, &meta_bytes)),
            old.as_ref()
                .map(|o| (o.bytes.as_slice(), o.meta_raw.as_slice())),
        )?;
        Ok(Loaded {
            meta,
            previous: old.map(|o| o.meta),
        })
    }

    /// Swaps current and lkg. Errors when there is no lkg.
    pub fn rollback(&self) -> Result<(Meta, Option<Meta>), StoreError> {
        let _lock = self.lock()?;
        let Some(lkg) = self.read_slot(Slot::Lkg)? else {
            return Err(StoreError::NoLkg {
                dir: self.dir.clone(),
            });
        };
        // Compiled too: a bundle an older version stored (say, a recursive one) must not become
        // current again.
        check_slot(&lkg, None)
            .and_then(|b| b.compile().map(|_| ()).map_err(StoreError::from))
            .map_err(|e| StoreError::LkgUnusable(Box::new(e)))?;
        let cur = self.read_slot(Slot::Current)?;
        self.commit(
            Some((&lkg.bytes, &lkg.meta_raw)),
            cur.as_ref()
                .map(|c| (c.bytes.as_slice(), c.meta_raw.as_slice())),
        )?;
        Ok((lkg.meta, cur.map(|c| c.meta)))
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io(IoOp::CreateStore, &self.dir))?;
        let p = self.dir.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io(IoOp::Open, &p))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, error)| StoreError::Lock { path: p, error })
    }

    /// Writes a new generation and switches `state` to it (see the module docs).
    fn commit(
        &self,
        current: Option<(&[u8], &[u8])>,
        lkg: Option<(&[u8], &[u8])>,
    ) -> Result<(), StoreError> {
        let d = &self.dir;
        self.cleanup();
        let gens = d.join("gens");
        std::fs::create_dir_all(&gens).map_err(io(IoOp::Create, &gens))?;
        for slot in [Slot::Current, Slot::Lkg] {
            let link = d.join(slot.as_str());
            match std::fs::symlink_metadata(&link) {
                Ok(m) if m.file_type().is_symlink() => {}
                Ok(_) => return Err(StoreError::Unmanaged { link, slot }),
                Err(_) => {
                    std::os::unix::fs::symlink(format!("state/{slot}"), &link)
                        .map_err(io(IoOp::Create, &link))?;
                }
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix("tmp-")
            .tempdir_in(d)
            .map_err(io(IoOp::CreateTempIn, d))?;
        for (name, slot) in [("current", current), ("lkg", lkg)] {
            let Some((bundle, meta)) = slot else { continue };
            let sd = tmp.path().join(name);
            std::fs::create_dir(&sd).map_err(io(IoOp::Create, &sd))?;
            write_synced(&sd.join(BUNDLE_FILE), bundle)?;
            write_synced(&sd.join(META_FILE), meta)?;
            sync_dir(&sd)?;
        }
        sync_dir(tmp.path())?;
        let gen_name = format!(
            "{:020}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|t| t.as_nanos())
                .unwrap_or(0),
            std::process::id()
        );
        let gen_dir = gens.join(&gen_name);
        let tmp_path = tmp.keep();
        std::fs::rename(&tmp_path, &gen_dir).map_err(io(IoOp::RenameTo, &gen_dir))?;
        sync_dir(&gens)?;
        let new_link = d.join(format!("state.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&new_link);
        std::os::unix::fs::symlink(format!("gens/{gen_name}"), &new_link)
            .map_err(io(IoOp::Create, &new_link))?;
        // The commit point.
        let state = d.join("state");
        std::fs::rename(&new_link, &state).map_err(io(IoOp::Switch, &state))?;
        sync_dir(d)?;
        self.cleanup();
        Ok(())
    }

    /// Removes leftovers of interrupted updates and generations no longer in use.
    pub fn cleanup(&self) {
        let d = &self.dir;
        let live = std::fs::read_link(d.join("state"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_os_string()));
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with("tmp-") {
                    let _ = std::fs::remove_dir_all(e.path());
                } else if n.starts_with("state.tmp-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(d.join("gens")) {
            for e in rd.flatten() {
                if Some(e.file_name()) != live {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// Reads `bundle.tar.gz` and `meta.json` from a slot directory.
pub fn read_slot_dir(base: &Path) -> Result<Option<SlotData>, StoreError> {
    let mp = base.join(META_FILE);
    let bp = base.join(BUNDLE_FILE);
    if let Err(e) = std::fs::metadata(&mp) {
        if e.kind() == std::io::ErrorKind::NotFound && !bp.exists() {
            return Ok(None);
        }
        return Err(io(IoOp::Read, &mp)(e));
    }
    // Bounded reads of regular files only: a slot edited by hand into a FIFO or a device must
    // not hang or exhaust the daemon that watches it.
    let meta_raw = file::read_capped(&mp, MAX_META, FileKind::SlotMetadata)?;
    let meta = serde_json::from_slice::<Meta>(&meta_raw)
        .map_err(|error| StoreError::Meta { path: mp, error })?;
    let bytes = file::read_capped(&bp, bundle::MAX_COMPRESSED, FileKind::SlotBundle)?;
    Ok(Some(SlotData {
        meta,
        bytes,
        meta_raw,
    }))
}

/// Checks a slot's bundle fully (its signature too, with a key) and that it matches its
/// metadata.
pub fn check_slot(sd: &SlotData, key: Option<&VerificationKey>) -> Result<Bundle, StoreError> {
    let b = bundle::read_bytes(&sd.bytes, key)?;
    if b.hash != sd.meta.hash {
        return Err(StoreError::HashMismatch {
            actual: b.hash,
            recorded: sd.meta.hash.clone(),
        });
    }
    Ok(b)
}

fn write_synced(p: &Path, data: &[u8]) -> Result<(), StoreError> {
    let mut f = std::fs::File::create(p).map_err(io(IoOp::Create, p))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(io(IoOp::Write, p))
}

fn sync_dir(p: &Path) -> Result<(), StoreError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(io(IoOp::Fsync, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_messages() {
        // Disk errors while writing a generation cannot be provoked here without root; the
        // messages are pinned instead.
        let e = |op| io(op, Path::new("/s/gens/1"))(std::io::Error::from_raw_os_error(28));
        let cases = [
            (IoOp::Read, "cannot read"),
            (IoOp::Open, "cannot open"),
            (IoOp::CreateStore, "cannot create policy store"),
            (IoOp::Create, "cannot create"),
            (IoOp::CreateTempIn, "cannot create a temp dir in"),
            (IoOp::Write, "cannot write"),
            (IoOp::Fsync, "cannot fsync"),
            (IoOp::RenameTo, "cannot rename to"),
            (IoOp::Switch, "cannot switch"),
        ];
        for (op, words) in cases {
            assert_eq!(
                e(op).to_string(),
                format!("{words} /s/gens/1: No space left on device (os error 28)")
            );
        }
        let lock = StoreError::Lock {
            path: "/s/.lock".into(),
            error: nix::errno::Errno::ENOLCK,
        };
        assert_eq!(
            lock.to_string(),
            "cannot lock /s/.lock: ENOLCK: No record locks available"
        );
    }
}
