//! `policy build`: a bundle from a directory of `.rego` and `data.json` files.

use std::collections::BTreeMap;
use std::path::Path;

use super::archive::{MAX_COMPRESSED, MAX_ENTRIES, MAX_FILE, pack};
use super::from_files;
use super::hash::bundle_hash;
use super::manifest::{MANIFEST, Manifest, check_name};
use super::version::parse_constraints;
use crate::policy::dist::file::read_capped;

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
