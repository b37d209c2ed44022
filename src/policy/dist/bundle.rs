//! Policy bundles: a reproducible `.tar.gz` of Rego modules, optional `data.json` files and a
//! `manifest.json` (ours) or `.manifest` (OPA's `opa build` layout).
//!
//! Reading a bundle never touches the file system beyond the archive itself: entries are read
//! into memory through a counting reader with hard limits, so a decompression bomb is cut off.
//!
//! **Bundle hash** (`bundle_hash`, `sha256:<hex>`): SHA-256 over every file of the bundle except
//! `manifest.json`, in byte order of their bundle-relative paths; for each file the hash input
//! is `path`, a NUL byte, the content length in decimal ASCII, a NUL byte, then the content.
//! `created_at` lives only in `manifest.json`, so it is not part of the hash.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::policy::eval::RegoPolicy;
use crate::types::PolicyRef;

/// Largest compressed bundle accepted.
pub const MAX_COMPRESSED: u64 = 16 * 1024 * 1024;
/// Largest single file inside a bundle.
pub const MAX_FILE: u64 = 4 * 1024 * 1024;
/// Largest total of all files inside a bundle.
pub const MAX_TOTAL: u64 = 32 * 1024 * 1024;
/// Most entries in one archive.
pub const MAX_ENTRIES: usize = 1000;
/// Hard cap on the decompressed tar stream (files plus headers and padding).
const MAX_TAR_STREAM: u64 = MAX_TOTAL + (MAX_ENTRIES as u64 + 8) * 2048;

/// Our manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// OPA's manifest file name.
pub const OPA_MANIFEST: &str = ".manifest";

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Bundle name.
    #[serde(default)]
    pub name: String,
    /// Semver version of the bundle.
    pub policy_bundle_version: String,
    /// Space-separated runtime version constraints (`>=0.1.0 <2.0.0`); empty = any.
    #[serde(default)]
    pub required_runtime_version: String,
    /// `sha256:<hex>` over the files (see the module docs).
    pub bundle_hash: String,
    /// RFC 3339 UTC build time.
    #[serde(default)]
    pub created_at: String,
}

/// Which layout a bundle uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Ours: `manifest.json`.
    Autonomy,
    /// `opa build`: optional `.manifest` with `revision`/`roots`.
    Opa,
}

/// A bundle read and checked (archive safety, hash, version constraint); not yet compiled.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Name (manifest `name`; OPA: `metadata.name` or `opa-bundle`).
    pub name: String,
    /// Version (manifest `policy_bundle_version`; OPA: `revision`).
    pub version: String,
    /// `sha256:<hex>` as defined in the module docs.
    pub hash: String,
    /// Runtime constraint (may be empty).
    pub required_runtime_version: String,
    /// The layout.
    pub layout: Layout,
    /// Rego modules: (bundle path, source), sorted by path.
    pub modules: Vec<(String, String)>,
    /// Merged data document, if any `data.json` was present.
    pub data: Option<Value>,
}

impl Bundle {
    /// `name@version#sha256:<first 12 hex>`: the policy_ref of this bundle.
    pub fn policy_ref(&self) -> PolicyRef {
        PolicyRef::new(policy_ref_string(&self.name, &self.version, &self.hash))
    }

    /// Compiles every module and checks the entry point.
    pub fn compile(&self) -> Result<RegoPolicy, String> {
        RegoPolicy::compile(self.policy_ref(), &self.modules, self.data.clone())
            .map_err(|e| e.to_string())
    }
}

/// `name@version#sha256:<first 12 hex of the bundle hash>`.
pub fn policy_ref_string(name: &str, version: &str, hash: &str) -> String {
    let hex = hash.strip_prefix("sha256:").unwrap_or(hash);
    let short: String = hex.chars().take(12).collect();
    format!("{name}@{version}#sha256:{short}")
}

/// The bundle hash over `files` (path → content), skipping `manifest.json`.
pub fn bundle_hash(files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h = Sha256::new();
    for (name, content) in files {
        if name == MANIFEST {
            continue;
        }
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update(content.len().to_string().as_bytes());
        h.update([0u8]);
        h.update(content);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

// ---------------------------------------------------------------------------------------------
// Runtime version constraints.

/// Parses a space-separated list of `OPversion` constraints (`>=`, `>`, `<=`, `<`, `=`).
pub fn parse_constraints(s: &str) -> Result<Vec<(String, semver::Version)>, String> {
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        let (op, rest) = ["<=", ">=", "<", ">", "="]
            .iter()
            .find_map(|op| tok.strip_prefix(op).map(|r| (*op, r)))
            .unwrap_or(("=", tok));
        let v = semver::Version::parse(rest).map_err(|e| {
            format!(
                "invalid runtime version constraint {tok:?}: {e} (use e.g. \">=0.1.0 <2.0.0\"; operators >=, >, <=, <, =)"
            )
        })?;
        out.push((op.to_string(), v));
    }
    Ok(out)
}

/// Checks that `runtime` satisfies every constraint in `s`.
pub fn check_runtime(s: &str, runtime: &str) -> Result<(), String> {
    let cs = parse_constraints(s)?;
    let have = semver::Version::parse(runtime)
        .map_err(|e| format!("runtime version {runtime} is not semver: {e}"))?;
    let ok = cs.iter().all(|(op, v)| match op.as_str() {
        ">=" => have >= *v,
        ">" => have > *v,
        "<=" => have <= *v,
        "<" => have < *v,
        _ => have == *v,
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bundle requires runtime {}, have {runtime}",
            s.split_whitespace().collect::<Vec<_>>().join(" ")
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// A reader that fails once more than `limit` bytes went through it.
struct Limited<R> {
    inner: R,
    left: u64,
    what: &'static str,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One probe byte tells a stream that ends exactly at the limit from a larger one.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(format!("LIMIT:{}", self.what))),
            };
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    if let Some(what) = s.strip_prefix("LIMIT:") {
        return what.to_string();
    }
    format!("not a valid .tar.gz bundle: {s}")
}

/// Normalises one archive path; `None` for the root itself.
fn clean_path(raw: &[u8]) -> Result<(bool, Option<String>), String> {
    let s = std::str::from_utf8(raw).map_err(|_| "archive entry name is not UTF-8".to_string())?;
    if s.contains('\0') || s.contains('\\') {
        return Err(format!("archive entry {s:?} has a forbidden character"));
    }
    let absolute = s.starts_with('/');
    let mut parts = Vec::new();
    for (i, c) in s.split('/').enumerate() {
        match c {
            "" if i == 0 => {}
            "" | "." => {}
            ".." => return Err(format!("archive entry {s:?} contains `..`")),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Ok((absolute, None));
    }
    Ok((absolute, Some(parts.join("/"))))
}

/// Reads a file of at most `cap` bytes; `what` names it in messages ("bundle", "policy file").
///
/// Only a regular file is read. It is opened non-blocking (so opening a FIFO cannot hang) and
/// checked on the open descriptor (so it cannot be swapped between the check and the read),
/// and no more than `cap + 1` bytes are read whatever its size claims (a device such as
/// `/dev/zero` reports 0 and never ends).
pub fn read_capped(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{what} {} is not a regular file", path.display()));
    }
    let too_big = |n: u64| format!("{what} {} is {n} bytes; the limit is {cap}", path.display());
    if meta.len() > cap {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    if bytes.len() as u64 > cap {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads and checks a bundle file (at most [`MAX_COMPRESSED`] bytes, a regular file).
pub fn read_file(path: &Path) -> Result<Bundle, String> {
    read_bytes(&read_capped(path, MAX_COMPRESSED, "bundle")?)
}

/// Reads and checks a bundle from its compressed bytes.
pub fn read_bytes(bytes: &[u8]) -> Result<Bundle, String> {
    let files = unpack(bytes)?;
    from_files(files)
}

/// Unpacks the archive into memory with every safety check; returns path → content.
pub fn unpack(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    if bytes.len() as u64 > MAX_COMPRESSED {
        return Err(format!(
            "bundle is {} bytes compressed; the limit is {MAX_COMPRESSED}",
            bytes.len()
        ));
    }
    let gz = flate2::read::GzDecoder::new(bytes);
    let limited = Limited {
        inner: gz,
        left: MAX_TAR_STREAM,
        what: "bundle unpacks to more than the 32 MiB limit (decompression bomb?)",
    };
    let mut ar = tar::Archive::new(limited);
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    let mut count = 0usize;
    let mut saw_relative = false;
    let mut saw_absolute = false;
    let entries = ar.entries().map_err(|e| io_reason(&e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| io_reason(&e))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(format!("bundle has more than {MAX_ENTRIES} entries"));
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).to_string();
        let et = entry.header().entry_type();
        use tar::EntryType as E;
        match et {
            E::Regular | E::Continuous => {}
            E::Directory | E::XGlobalHeader => {
                clean_path(&raw)?;
                continue;
            }
            E::Symlink => return Err(format!("archive entry {shown:?} is a symlink")),
            E::Link => return Err(format!("archive entry {shown:?} is a hard link")),
            E::Char | E::Block => return Err(format!("archive entry {shown:?} is a device")),
            E::Fifo => return Err(format!("archive entry {shown:?} is a fifo")),
            other => {
                return Err(format!(
                    "archive entry {shown:?} has an unsupported type {other:?}"
                ));
            }
        }
        let (absolute, name) = clean_path(&raw)?;
        let Some(name) = name else {
            return Err(format!("archive entry {shown:?} has no name"));
        };
        if absolute {
            saw_absolute = true;
        } else {
            saw_relative = true;
        }
        let size = entry.header().size().map_err(|e| io_reason(&e))?;
        if size > MAX_FILE {
            return Err(format!(
                "{name} is {size} bytes; the limit per file is {MAX_FILE}"
            ));
        }
        let mut content = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(MAX_FILE + 1)
            .read_to_end(&mut content)
            .map_err(|e| io_reason(&e))?;
        if content.len() as u64 > MAX_FILE {
            return Err(format!("{name} is larger than the {MAX_FILE}-byte limit"));
        }
        total += content.len() as u64;
        if total > MAX_TOTAL {
            return Err(format!(
                "bundle unpacks to more than the {MAX_TOTAL}-byte limit (decompression bomb?)"
            ));
        }
        if files.insert(name.clone(), content).is_some() {
            return Err(format!("archive has {name} twice"));
        }
    }
    if saw_absolute {
        // `opa build` writes root-relative names (`/.manifest`, `/data.json`); they are allowed
        // only in an OPA-layout bundle whose every entry is root-relative.
        if saw_relative || files.contains_key(MANIFEST) {
            let first = files.keys().next().cloned().unwrap_or_default();
            return Err(format!(
                "archive has an absolute path (/{first}); only `opa build` bundles, whose every entry starts with `/`, may use them"
            ));
        }
    }
    if files.is_empty() {
        return Err("bundle is empty".into());
    }
    Ok(files)
}

/// Checks the unpacked files and turns them into a [`Bundle`].
pub fn from_files(files: BTreeMap<String, Vec<u8>>) -> Result<Bundle, String> {
    let hash = bundle_hash(&files);
    let (layout, name, version, runtime) = if let Some(m) = files.get(MANIFEST) {
        let m: Manifest =
            serde_json::from_slice(m).map_err(|e| format!("manifest.json is not valid: {e}"))?;
        semver::Version::parse(&m.policy_bundle_version).map_err(|e| {
            format!(
                "manifest.json: policy_bundle_version {:?} is not semver: {e}",
                m.policy_bundle_version
            )
        })?;
        if m.bundle_hash != hash {
            return Err(format!(
                "bundle hash mismatch: manifest says {}, contents hash to {hash}",
                m.bundle_hash
            ));
        }
        let name = if m.name.is_empty() {
            "bundle".to_string()
        } else {
            m.name.clone()
        };
        check_name(&name)?;
        (
            Layout::Autonomy,
            name,
            m.policy_bundle_version,
            m.required_runtime_version,
        )
    } else {
        let (name, version) = match files.get(OPA_MANIFEST) {
            Some(b) => {
                let v: Value = serde_json::from_slice(b)
                    .map_err(|e| format!(".manifest is not valid JSON: {e}"))?;
                let rev = v.get("revision").and_then(Value::as_str).unwrap_or("");
                let name = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("opa-bundle")
                    .to_string();
                (name, rev.to_string())
            }
            None => ("opa-bundle".to_string(), String::new()),
        };
        let version = if version.is_empty() {
            "unversioned".to_string()
        } else {
            version
        };
        check_name(&name)?;
        (Layout::Opa, name, version, String::new())
    };
    check_runtime(&runtime, crate::VERSION)?;

    let mut modules = Vec::new();
    let mut data: Option<Value> = None;
    for (path, content) in &files {
        let base = path.rsplit('/').next().unwrap_or(path);
        if path == MANIFEST || path == OPA_MANIFEST {
            continue;
        }
        if base.ends_with(".rego") {
            let src =
                String::from_utf8(content.clone()).map_err(|_| format!("{path} is not UTF-8"))?;
            modules.push((path.clone(), src));
        } else if base == "data.json" {
            let v: Value = serde_json::from_slice(content)
                .map_err(|e| format!("{path} is not valid JSON: {e}"))?;
            let dir: Vec<&str> = path
                .strip_suffix("data.json")
                .unwrap_or("")
                .split('/')
                .filter(|s| !s.is_empty())
                .collect();
            let root = data.get_or_insert_with(|| Value::Object(Map::new()));
            merge_at(root, &dir, v).map_err(|e| format!("{path}: {e}"))?;
        } else if path == ".signatures.json" {
            return Err(
                "signed OPA bundles (.signatures.json) are not supported: rebuild without --signing-key"
                    .into(),
            );
        } else {
            return Err(format!(
                "unexpected file {path} in the bundle (allowed: *.rego, data.json, manifest.json, .manifest)"
            ));
        }
    }
    if modules.is_empty() {
        return Err("bundle has no .rego modules".into());
    }
    Ok(Bundle {
        name,
        version,
        hash,
        required_runtime_version: runtime,
        layout,
        modules,
        data,
    })
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "bundle name {name:?} is not valid (use 1-128 of A-Z a-z 0-9 - _ .)"
        ));
    }
    Ok(())
}

fn merge_at(root: &mut Value, dir: &[&str], v: Value) -> Result<(), String> {
    let mut cur = root;
    for seg in dir {
        let obj = cur
            .as_object_mut()
            .ok_or_else(|| format!("data at {seg} is not an object"))?;
        cur = obj
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    merge(cur, v)
}

fn merge(dst: &mut Value, src: Value) -> Result<(), String> {
    match (dst, src) {
        (Value::Object(d), Value::Object(s)) => {
            for (k, v) in s {
                match d.get_mut(&k) {
                    Some(existing) => merge(existing, v)?,
                    None => {
                        d.insert(k, v);
                    }
                }
            }
            Ok(())
        }
        (d, s) if d.as_object().is_some_and(Map::is_empty) => {
            *d = s;
            Ok(())
        }
        _ => Err("data documents overlap".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Building.

/// What `policy build` made.
#[derive(Debug, Clone)]
pub struct Built {
    /// The manifest written.
    pub manifest: Manifest,
    /// The compressed archive.
    pub bytes: Vec<u8>,
}

/// Collects `*.rego` and `data.json` files under `dir` (recursively; symlinks refused).
pub fn collect_dir(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files)?;
    Ok(files)
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) -> Result<(), String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for ent in rd {
        let ent = ent.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let p = ent.path();
        let ft = ent
            .file_type()
            .map_err(|e| format!("cannot stat {}: {e}", p.display()))?;
        let fname = ent.file_name().to_string_lossy().to_string();
        if fname.starts_with('.') {
            continue;
        }
        if ft.is_symlink() {
            return Err(format!(
                "{} is a symlink; bundles hold regular files only",
                p.display()
            ));
        }
        if ft.is_dir() {
            walk(root, &p, out)?;
            continue;
        }
        if !(fname.ends_with(".rego") || fname == "data.json") {
            continue;
        }
        let rel = p
            .strip_prefix(root)
            .map_err(|_| format!("{} is outside {}", p.display(), root.display()))?
            .to_string_lossy()
            .replace('\\', "/");
        if rel == MANIFEST {
            continue;
        }
        let content = read_capped(&p, MAX_FILE, "policy file")?;
        out.insert(rel, content);
    }
    Ok(())
}

/// `created_at`: from `SOURCE_DATE_EPOCH` when set (reproducible builds), else now.
pub fn created_at() -> Result<String, String> {
    let t = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.trim().is_empty() => {
            let secs: u64 = s
                .trim()
                .parse()
                .map_err(|_| format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds"))?;
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
        }
        _ => std::time::SystemTime::now(),
    };
    Ok(humantime::format_rfc3339_seconds(t).to_string())
}

/// Builds a bundle from a directory: checks version, constraint, compiles, then archives.
pub fn build(dir: &Path, name: &str, version: &str, runtime: &str) -> Result<Built, String> {
    semver::Version::parse(version)
        .map_err(|e| format!("--version {version:?} is not semver (e.g. 1.2.0): {e}"))?;
    parse_constraints(runtime)?;
    check_name(name)?;
    if !dir.is_dir() {
        return Err(format!("--in {}: not a directory", dir.display()));
    }
    let files = collect_dir(dir)?;
    if !files.keys().any(|k| k.ends_with(".rego")) {
        return Err(format!("{} has no .rego files", dir.display()));
    }
    if files.len() + 1 > MAX_ENTRIES {
        return Err(format!("more than {MAX_ENTRIES} files"));
    }
    let manifest = Manifest {
        name: name.to_string(),
        policy_bundle_version: version.to_string(),
        required_runtime_version: runtime.split_whitespace().collect::<Vec<_>>().join(" "),
        bundle_hash: bundle_hash(&files),
        created_at: created_at()?,
    };
    let mut all = files;
    let mj = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    all.insert(MANIFEST.to_string(), mj);
    // Validate exactly what a load would see (except the runtime constraint, which is about
    // the runtime that loads it, and is only syntax-checked here).
    let checked = {
        let mut m = manifest.clone();
        m.required_runtime_version.clear();
        let mut probe = all.clone();
        probe.insert(
            MANIFEST.to_string(),
            serde_json::to_vec(&m).map_err(|e| e.to_string())?,
        );
        from_files(probe)?
    };
    checked.compile()?;
    let bytes = pack(&all)?;
    if bytes.len() as u64 > MAX_COMPRESSED {
        return Err(format!(
            "bundle would be {} bytes; the limit is {MAX_COMPRESSED}",
            bytes.len()
        ));
    }
    Ok(Built { manifest, bytes })
}

/// A reproducible `.tar.gz`: entries in byte order of their names, mtime 0, uid/gid 0, mode
/// 0644, no owner names, gzip header without name or time.
pub fn pack(files: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, String> {
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::new(9));
    let mut tb = tar::Builder::new(gz);
    tb.mode(tar::HeaderMode::Deterministic);
    for (name, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        tb.append_data(&mut h, name, content.as_slice())
            .map_err(|e| format!("cannot archive {name}: {e}"))?;
    }
    let gz = tb.into_inner().map_err(|e| e.to_string())?;
    let mut out = gz.finish().map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints() {
        assert!(check_runtime("", "0.1.0").is_ok());
        assert!(check_runtime(">=0.1.0 <2.0.0", "0.1.0").is_ok());
        assert!(check_runtime("=0.1.0", "0.1.0").is_ok());
        assert!(check_runtime(">0.1.0", "0.1.0").is_err());
        assert_eq!(
            check_runtime(">=99.0.0", "0.1.0").unwrap_err(),
            "bundle requires runtime >=99.0.0, have 0.1.0"
        );
        assert!(parse_constraints("~1.0").is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(
            clean_path(b"./a/b.rego").unwrap(),
            (false, Some("a/b.rego".into()))
        );
        assert_eq!(
            clean_path(b"/data.json").unwrap(),
            (true, Some("data.json".into()))
        );
        assert!(clean_path(b"a/../../b").is_err());
    }

    #[test]
    fn roundtrip_and_hash() {
        let mut f = BTreeMap::new();
        f.insert(
            "p.rego".to_string(),
            b"package autonomy\ndefault allow := false\n".to_vec(),
        );
        let h = bundle_hash(&f);
        let m = Manifest {
            name: "t".into(),
            policy_bundle_version: "1.0.0".into(),
            required_runtime_version: String::new(),
            bundle_hash: h.clone(),
            created_at: String::new(),
        };
        f.insert(MANIFEST.into(), serde_json::to_vec(&m).unwrap());
        let b = read_bytes(&pack(&f).unwrap()).unwrap();
        assert_eq!(b.hash, h);
        assert_eq!(b.policy_ref().as_str(), policy_ref_string("t", "1.0.0", &h));
        b.compile().unwrap();
    }

    #[test]
    fn opa_data_nesting() {
        let mut f = BTreeMap::new();
        f.insert(
            ".manifest".to_string(),
            br#"{"revision":"r7","roots":[""]}"#.to_vec(),
        );
        f.insert("a/b/data.json".to_string(), br#"{"x":1}"#.to_vec());
        f.insert("data.json".to_string(), br#"{"top":true}"#.to_vec());
        f.insert(
            "p.rego".to_string(),
            b"package autonomy\nallow if data.a.b.x == 1\n".to_vec(),
        );
        let b = from_files(f).unwrap();
        assert_eq!(b.version, "r7");
        assert_eq!(
            b.data.unwrap(),
            serde_json::json!({"top": true, "a": {"b": {"x": 1}}})
        );
    }
}
