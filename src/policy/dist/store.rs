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

use super::bundle::{self, Bundle};
use super::file::{self, FileKind};

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
    pub fn meta(&self, slot: Slot) -> Result<Option<Meta>, String> {
        let p = self.slot_dir(slot).join(META_FILE);
        match std::fs::metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
            Ok(_) => {}
        }
        let b =
            file::read_capped(&p, MAX_META, FileKind::SlotMetadata).map_err(|e| e.to_string())?;
        serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{} is not valid: {e}", p.display()))
    }

    /// Reads a slot (from one generation, so meta and bundle always match).
    pub fn read_slot(&self, slot: Slot) -> Result<Option<SlotData>, String> {
        let base = match self.generation() {
            Some(g) => g.join(slot.as_str()),
            None => self.slot_dir(slot),
        };
        read_slot_dir(&base)
    }

    /// Reads, checks and compiles a slot's bundle; `Ok(None)` when the slot is empty.
    pub fn open_slot(&self, slot: Slot) -> Result<Option<(Meta, Bundle)>, String> {
        let Some(sd) = self.read_slot(slot)? else {
            return Ok(None);
        };
        let b = check_slot(&sd)?;
        Ok(Some((sd.meta, b)))
    }

    /// The slot whose source ref is `source` (current first).
    pub fn find_source(&self, source: &str) -> Result<Option<Slot>, String> {
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
    pub fn install(&self, bytes: &[u8], b: &Bundle, source: &str) -> Result<Loaded, String> {
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
        };
        let _lock = self.lock()?;
        let old = self.read_slot(Slot::Current)?;
        let meta_bytes = serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?;
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
    pub fn rollback(&self) -> Result<(Meta, Option<Meta>), String> {
        let _lock = self.lock()?;
        let Some(lkg) = self.read_slot(Slot::Lkg)? else {
            return Err(format!(
                "no last-known-good bundle in {} (nothing to roll back to)",
                self.dir.display()
            ));
        };
        // Compiled too: a bundle an older version stored (say, a recursive one) must not become
        // current again.
        check_slot(&lkg)
            .and_then(|b| b.compile().map(|_| ()).map_err(|e| e.to_string()))
            .map_err(|e| format!("the lkg slot is not usable: {e}"))?;
        let cur = self.read_slot(Slot::Current)?;
        self.commit(
            Some((&lkg.bytes, &lkg.meta_raw)),
            cur.as_ref()
                .map(|c| (c.bytes.as_slice(), c.meta_raw.as_slice())),
        )?;
        Ok((lkg.meta, cur.map(|c| c.meta)))
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create policy store {}: {e}", self.dir.display()))?;
        let p = self.dir.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| format!("cannot open {}: {e}", p.display()))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| format!("cannot lock {}: {e}", p.display()))
    }

    /// Writes a new generation and switches `state` to it (see the module docs).
    fn commit(
        &self,
        current: Option<(&[u8], &[u8])>,
        lkg: Option<(&[u8], &[u8])>,
    ) -> Result<(), String> {
        let d = &self.dir;
        let err = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
        self.cleanup();
        let gens = d.join("gens");
        std::fs::create_dir_all(&gens).map_err(|e| err("cannot create", &gens, e))?;
        for s in ["current", "lkg"] {
            let link = d.join(s);
            match std::fs::symlink_metadata(&link) {
                Ok(m) if m.file_type().is_symlink() => {}
                Ok(_) => {
                    return Err(format!(
                        "{} is not managed by this version of autonomy (expected a symlink to state/{s}); move it away",
                        link.display()
                    ));
                }
                Err(_) => {
                    std::os::unix::fs::symlink(format!("state/{s}"), &link)
                        .map_err(|e| err("cannot create", &link, e))?;
                }
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix("tmp-")
            .tempdir_in(d)
            .map_err(|e| err("cannot create a temp dir in", d, e))?;
        for (name, slot) in [("current", current), ("lkg", lkg)] {
            let Some((bundle, meta)) = slot else { continue };
            let sd = tmp.path().join(name);
            std::fs::create_dir(&sd).map_err(|e| err("cannot create", &sd, e))?;
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
        std::fs::rename(&tmp_path, &gen_dir).map_err(|e| err("cannot rename to", &gen_dir, e))?;
        sync_dir(&gens)?;
        let new_link = d.join(format!("state.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&new_link);
        std::os::unix::fs::symlink(format!("gens/{gen_name}"), &new_link)
            .map_err(|e| err("cannot create", &new_link, e))?;
        // The commit point.
        std::fs::rename(&new_link, d.join("state"))
            .map_err(|e| err("cannot switch", &d.join("state"), e))?;
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
pub fn read_slot_dir(base: &Path) -> Result<Option<SlotData>, String> {
    let mp = base.join(META_FILE);
    let bp = base.join(BUNDLE_FILE);
    if let Err(e) = std::fs::metadata(&mp) {
        if e.kind() == std::io::ErrorKind::NotFound && !bp.exists() {
            return Ok(None);
        }
        return Err(format!("cannot read {}: {e}", mp.display()));
    }
    // Bounded reads of regular files only: a slot edited by hand into a FIFO or a device must
    // not hang or exhaust the daemon that watches it.
    let meta_raw =
        file::read_capped(&mp, MAX_META, FileKind::SlotMetadata).map_err(|e| e.to_string())?;
    let meta = serde_json::from_slice::<Meta>(&meta_raw)
        .map_err(|e| format!("{} is not valid: {e}", mp.display()))?;
    let bytes = file::read_capped(&bp, bundle::MAX_COMPRESSED, FileKind::SlotBundle)
        .map_err(|e| e.to_string())?;
    Ok(Some(SlotData {
        meta,
        bytes,
        meta_raw,
    }))
}

/// Checks a slot's bundle fully and that it matches its metadata.
pub fn check_slot(sd: &SlotData) -> Result<Bundle, String> {
    let b = bundle::read_bytes(&sd.bytes).map_err(|e| e.to_string())?;
    if b.hash != sd.meta.hash {
        return Err(format!(
            "slot bundle hashes to {}, meta.json says {}",
            b.hash, sd.meta.hash
        ));
    }
    Ok(b)
}

fn write_synced(p: &Path, data: &[u8]) -> Result<(), String> {
    let mut f =
        std::fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", p.display()))
}

fn sync_dir(p: &Path) -> Result<(), String> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot fsync {}: {e}", p.display()))
}
