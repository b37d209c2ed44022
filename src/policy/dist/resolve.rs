//! `--policy REF` resolution. Never touches the network.
//!
//! - `demo` / `embedded:demo`: the embedded demo policy.
//! - `current`: the store's current slot (watched for hot reload).
//! - `oci://host[:port]/name[:tag]`: the store slot whose source ref is this ref (watched);
//!   an error telling to `autonomy policy pull` it when no slot has it.
//! - a path: a bundle (`.tar.gz`/`.tgz`), a `.rego` file, or a directory of `.rego` files.
//! - nothing: `run` uses the demo policy; `runtime start` uses the current slot when there is
//!   one, else deny-all, and watches the store either way.

use std::path::Path;

use super::oci::OciRef;
use super::store::{Slot, Store};
use super::watch::PolicyWatch;
use crate::policy::eval::{DenyAll, PolicyEvaluator, RegoPolicy, demo_policy};
use crate::types::PolicyRef;

/// What a REF resolved to.
pub struct Resolved {
    /// The policy to start with.
    pub policy: Box<dyn PolicyEvaluator>,
    /// The store to watch for hot reload, if the policy came from (or defaults to) the store.
    pub watch: Option<PolicyWatch>,
    /// A warning to print (e.g. the current slot is broken, so deny-all).
    pub warning: Option<String>,
}

/// What to do without `--policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoFlag {
    /// The embedded demo policy (`autonomy run`).
    Demo,
    /// The store's current slot, else deny-all (`autonomy runtime start`).
    StoreOrDenyAll,
}

fn boxed(p: RegoPolicy) -> Box<dyn PolicyEvaluator> {
    Box::new(p)
}

/// A store bundle, compiled, watched for the next change from its own hash on.
fn watched(b: &super::bundle::Bundle, w: PolicyWatch) -> Result<Resolved, String> {
    let p = b.compile().map_err(|e| e.to_string())?;
    Ok(Resolved {
        policy: boxed(p),
        watch: Some(PolicyWatch {
            active_hash: Some(b.hash.clone()),
            ..w
        }),
        warning: None,
    })
}

/// Resolves `r` against the store in `store_dir`.
pub fn resolve(r: Option<&str>, store_dir: &Path, no_flag: NoFlag) -> Result<Resolved, String> {
    let store = Store::new(store_dir);
    match r {
        None if no_flag == NoFlag::Demo => demo(),
        Some("demo") | Some("embedded:demo") => demo(),
        None => {
            let watch_before = PolicyWatch::new(store_dir.to_path_buf(), None);
            match store.open_slot(Slot::Current) {
                Ok(None) => Ok(Resolved {
                    policy: Box::new(DenyAll::new()),
                    watch: Some(watch_before),
                    warning: None,
                }),
                Ok(Some((_, b))) => match watched(&b, watch_before.clone()) {
                    Ok(r) => Ok(r),
                    Err(e) => Ok(deny_all_warn(watch_before, &store, &e)),
                },
                Err(e) => Ok(deny_all_warn(watch_before, &store, &e)),
            }
        }
        Some("current") => {
            let w = PolicyWatch::new(store_dir.to_path_buf(), None);
            let (_, b) = store
                .open_slot(Slot::Current)
                .map_err(|e| {
                    format!(
                        "--policy current: the current slot in {} is not usable: {e}",
                        store_dir.display()
                    )
                })?
                .ok_or_else(|| {
                    format!(
                        "--policy current: the policy store {} has no current bundle (load one with `autonomy policy load --bundle FILE`)",
                        store_dir.display()
                    )
                })?;
            watched(&b, w).map_err(|e| format!("--policy current: {e}"))
        }
        Some(s) if s.starts_with("oci://") => {
            let oref = OciRef::parse(s).map_err(|e| e.to_string())?;
            let key = oref.to_string();
            let w = PolicyWatch::new(store_dir.to_path_buf(), None);
            let slot = store.find_source(&key)?.ok_or_else(|| {
                format!(
                    "--policy {key}: not in the policy store {} (no network is used here; run `autonomy policy pull {key}` first)",
                    store_dir.display()
                )
            })?;
            let (_, b) = store
                .open_slot(slot)
                .map_err(|e| {
                    format!(
                        "--policy {key}: the {} slot is not usable: {e}",
                        slot.as_str()
                    )
                })?
                .ok_or_else(|| format!("--policy {key}: the {} slot vanished", slot.as_str()))?;
            watched(&b, w).map_err(|e| format!("--policy {key}: {e}"))
        }
        Some(path) => from_path(path).map(|policy| Resolved {
            policy,
            watch: None,
            warning: None,
        }),
    }
}

fn demo() -> Result<Resolved, String> {
    let p = demo_policy().map_err(|e| format!("embedded demo policy: {e}"))?;
    Ok(Resolved {
        policy: boxed(p),
        watch: None,
        warning: None,
    })
}

fn deny_all_warn(w: PolicyWatch, store: &Store, e: &str) -> Resolved {
    Resolved {
        policy: Box::new(DenyAll::new()),
        watch: Some(w),
        warning: Some(format!(
            "the current policy slot in {} is not usable ({e}); starting DENY-ALL (fix it with `autonomy policy rollback` or `autonomy policy load`)",
            store.dir().display()
        )),
    }
}

/// A bundle file, a `.rego` file or a directory of `.rego` files.
pub fn from_path(path: &str) -> Result<Box<dyn PolicyEvaluator>, String> {
    let p = Path::new(path);
    let is_bundle = path.ends_with(".tar.gz") || path.ends_with(".tgz");
    if p.is_file() && is_bundle {
        let b = super::bundle::read_file(p).map_err(|e| format!("--policy {path}: {e}"))?;
        let pol = b.compile().map_err(|e| format!("--policy {path}: {e}"))?;
        return Ok(boxed(pol));
    }
    let mut files = Vec::new();
    if p.is_dir() {
        let rd = std::fs::read_dir(p)
            .map_err(|e| format!("cannot read policy directory {path}: {e}"))?;
        for ent in rd.flatten() {
            let fp = ent.path();
            if fp.extension().is_some_and(|x| x == "rego") {
                files.push(fp);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(format!("policy directory {path} has no .rego files"));
        }
    } else if p.is_file() {
        files.push(p.to_path_buf());
    } else if p.exists() {
        return Err(format!(
            "--policy {path}: not a regular file or a directory (a FIFO or a device cannot hold a policy)"
        ));
    } else {
        return Err(format!(
            "--policy {path}: no such file or directory (use `demo`, `current`, `oci://host/name:tag`, a bundle .tar.gz, a .rego file or a directory of .rego files)"
        ));
    }
    let mut modules = Vec::new();
    for f in &files {
        let bytes = super::file::read_capped(
            f,
            super::bundle::MAX_FILE,
            super::file::FileKind::PolicyFile,
        )
        .map_err(|e| e.to_string())?;
        let src = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", f.display()))?;
        modules.push((f.display().to_string(), src));
    }
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| path.to_string());
    RegoPolicy::compile(PolicyRef::new(format!("file:{name}")), &modules, None)
        .map(boxed)
        .map_err(|e| format!("policy {path} rejected: {e}"))
}
