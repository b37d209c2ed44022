//! `--policy REF` resolution. Never touches the network.
//!
//! - `demo` / `embedded:demo`: the embedded demo policy.
//! - `ros2-bridge-demo` / `embedded:ros2-bridge-demo`: the embedded bridge demo policy.
//! - `current`: the store's current slot (watched for hot reload).
//! - `oci://host[:port]/name[:tag]`: the store slot whose source ref is this ref (watched);
//!   an error telling to `autonomy policy pull` it when no slot has it.
//! - a path: a bundle (`.tar.gz`/`.tgz`), a `.rego` file, or a directory of `.rego` files.
//! - nothing: `run` uses the demo policy; `runtime start` uses the current slot when there is
//!   one, else deny-all, and watches the store either way.
//!
//! With a verification key every bundle named (a file, a store slot) must be signed with it, and
//! the store watcher checks every slot it activates the same way; a policy that is no bundle at
//! all (the embedded ones, `.rego` files) is refused, since it cannot carry a signature.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::bundle::{self, BundleError};
use super::file::{self, FileKind, ReadError};
use super::oci::{OciRef, OciRefError};
use super::signing::VerificationKey;
use super::store::{Slot, Store, StoreError};
use super::watch::PolicyWatch;
use crate::policy::eval::{DenyAll, PolicyEvaluator, RegoPolicy, RegoPolicyError, demo_policy};
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

/// Why `--policy REF` names no usable policy. Every one is a usage error on the command line.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The embedded demo policy does not compile (a build defect).
    #[error("embedded demo policy: {0}")]
    Demo(RegoPolicyError),
    /// `--policy current` with an empty store.
    #[error(
        "--policy current: the policy store {} has no current bundle (load one with `autonomy policy load --bundle FILE`)",
        store.display()
    )]
    NoCurrent {
        /// The store directory.
        store: PathBuf,
    },
    /// `--policy current` with a current slot that cannot be read or checked.
    #[error("--policy current: the current slot in {} is not usable: {error}", store.display())]
    CurrentUnusable {
        /// The store directory.
        store: PathBuf,
        /// Why not.
        error: StoreError,
    },
    /// An `oci://` ref that does not parse.
    #[error(transparent)]
    OciRef(#[from] OciRefError),
    /// The store could not be searched for an `oci://` ref.
    #[error(transparent)]
    Store(StoreError),
    /// An `oci://` ref no slot came from.
    #[error(
        "--policy {reference}: not in the policy store {} (no network is used here; run `autonomy policy pull {reference}` first)",
        store.display()
    )]
    NotPulled {
        /// The ref, normalised.
        reference: String,
        /// The store directory.
        store: PathBuf,
    },
    /// The slot an `oci://` ref came from cannot be read or checked.
    #[error("--policy {reference}: the {slot} slot is not usable: {error}")]
    SlotUnusable {
        /// The ref, normalised.
        reference: String,
        /// The slot.
        slot: Slot,
        /// Why not.
        error: StoreError,
    },
    /// The slot an `oci://` ref came from was emptied meanwhile.
    #[error("--policy {reference}: the {slot} slot vanished")]
    SlotVanished {
        /// The ref, normalised.
        reference: String,
        /// The slot.
        slot: Slot,
    },
    /// A store bundle or a bundle file that does not compile.
    #[error("--policy {reference}: {error}")]
    Compile {
        /// `current`, the `oci://` ref or the bundle path.
        reference: String,
        /// Why not.
        error: RegoPolicyError,
    },
    /// A bundle file that is refused.
    #[error("--policy {path}: {error}")]
    Bundle {
        /// The path as given.
        path: String,
        /// Why.
        error: BundleError,
    },
    /// A directory that cannot be listed.
    #[error("cannot read policy directory {path}: {error}")]
    Directory {
        /// The path as given.
        path: String,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A directory without `.rego` files.
    #[error("policy directory {path} has no .rego files")]
    NoRego {
        /// The path as given.
        path: String,
    },
    /// A FIFO, device or socket.
    #[error(
        "--policy {path}: not a regular file or a directory (a FIFO or a device cannot hold a policy)"
    )]
    NotAFile {
        /// The path as given.
        path: String,
    },
    /// Nothing at that path, and not a known REF either.
    #[error(
        "--policy {path}: no such file or directory (use `demo`, `current`, `oci://host/name:tag`, a bundle .tar.gz, a .rego file or a directory of .rego files)"
    )]
    Missing {
        /// The path as given.
        path: String,
    },
    /// A `.rego` file that cannot be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A `.rego` file that is not UTF-8.
    #[error("{} is not UTF-8", file.display())]
    NotUtf8 {
        /// The file.
        file: PathBuf,
    },
    /// `.rego` files that do not compile.
    #[error("policy {path} rejected: {error}")]
    Rejected {
        /// The path as given.
        path: String,
        /// Why.
        error: RegoPolicyError,
    },
    /// A verification key with a policy that is not a bundle, so cannot be signed.
    #[error(
        "--verification-key is set, but {what} is not a signed bundle (use a signed bundle file, `current` or an oci:// ref)"
    )]
    NotABundle {
        /// What was asked for.
        what: String,
    },
}

/// What to do without `--policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoFlag {
    /// The embedded demo policy (`autonomy run`).
    Demo,
    /// The store's current slot, else deny-all (`autonomy runtime start`).
    StoreOrDenyAll,
    /// The embedded bridge demo policy (`--bridge` without `--policy`).
    BridgeDemo,
}

fn boxed(p: RegoPolicy) -> Box<dyn PolicyEvaluator> {
    Box::new(p)
}

/// A store bundle, compiled, watched for the next change from its own hash on.
fn watched(b: &bundle::Bundle, w: PolicyWatch) -> Result<Resolved, RegoPolicyError> {
    let p = b.compile()?;
    Ok(Resolved {
        policy: boxed(p),
        watch: Some(PolicyWatch {
            active_hash: Some(b.hash.clone()),
            ..w
        }),
        warning: None,
    })
}

/// Resolves `r` against the store in `store_dir`; with `key`, every bundle must be signed with
/// it (and the store watcher returned checks every slot it activates with it too).
pub fn resolve(
    r: Option<&str>,
    store_dir: &Path,
    no_flag: NoFlag,
    key: Option<&Arc<VerificationKey>>,
) -> Result<Resolved, ResolveError> {
    if key.is_some() {
        let unsigned = match (r, no_flag) {
            (None, NoFlag::Demo) | (Some("demo" | "embedded:demo"), _) => {
                Some("the embedded demo policy".to_string())
            }
            (None, NoFlag::BridgeDemo)
            | (Some("ros2-bridge-demo" | "embedded:ros2-bridge-demo"), _) => {
                Some("the embedded ros2-bridge-demo policy".to_string())
            }
            (Some(p), _)
                if p != "current"
                    && !p.starts_with("oci://")
                    && !(p.ends_with(".tar.gz") || p.ends_with(".tgz")) =>
            {
                Some(format!("--policy {p}"))
            }
            _ => None,
        };
        if let Some(what) = unsigned {
            return Err(ResolveError::NotABundle { what });
        }
    }
    let key_ref = key.map(|k| &**k);
    let new_watch = || PolicyWatch {
        key: key.cloned(),
        ..PolicyWatch::new(store_dir.to_path_buf(), None)
    };
    let store = Store::new(store_dir);
    match r {
        None if no_flag == NoFlag::Demo => demo(),
        Some("demo") | Some("embedded:demo") => demo(),
        None if no_flag == NoFlag::BridgeDemo => bridge_demo(),
        Some("ros2-bridge-demo") | Some("embedded:ros2-bridge-demo") => bridge_demo(),
        None => {
            let watch_before = new_watch();
            match store.open_slot(Slot::Current, key_ref) {
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
            let w = new_watch();
            let (_, b) = store
                .open_slot(Slot::Current, key_ref)
                .map_err(|error| ResolveError::CurrentUnusable {
                    store: store_dir.to_path_buf(),
                    error,
                })?
                .ok_or_else(|| ResolveError::NoCurrent {
                    store: store_dir.to_path_buf(),
                })?;
            watched(&b, w).map_err(|error| ResolveError::Compile {
                reference: "current".into(),
                error,
            })
        }
        Some(s) if s.starts_with("oci://") => {
            let reference = OciRef::parse(s)?.to_string();
            let w = new_watch();
            let slot = store
                .find_source(&reference)
                .map_err(ResolveError::Store)?
                .ok_or_else(|| ResolveError::NotPulled {
                    reference: reference.clone(),
                    store: store_dir.to_path_buf(),
                })?;
            let (_, b) = store
                .open_slot(slot, key_ref)
                .map_err(|error| ResolveError::SlotUnusable {
                    reference: reference.clone(),
                    slot,
                    error,
                })?
                .ok_or_else(|| ResolveError::SlotVanished {
                    reference: reference.clone(),
                    slot,
                })?;
            watched(&b, w).map_err(|error| ResolveError::Compile { reference, error })
        }
        Some(path) => from_path(path, key_ref).map(|policy| Resolved {
            policy,
            watch: None,
            warning: None,
        }),
    }
}

fn demo() -> Result<Resolved, ResolveError> {
    let p = demo_policy().map_err(ResolveError::Demo)?;
    Ok(Resolved {
        policy: boxed(p),
        watch: None,
        warning: None,
    })
}

fn bridge_demo() -> Result<Resolved, ResolveError> {
    let p = crate::policy::eval::bridge_demo_policy().map_err(ResolveError::Demo)?;
    Ok(Resolved {
        policy: boxed(p),
        watch: None,
        warning: None,
    })
}

fn deny_all_warn(w: PolicyWatch, store: &Store, e: &dyn Display) -> Resolved {
    Resolved {
        policy: Box::new(DenyAll::new()),
        watch: Some(w),
        warning: Some(format!(
            "the current policy slot in {} is not usable ({e}); starting DENY-ALL (fix it with `autonomy policy rollback` or `autonomy policy load`)",
            store.dir().display()
        )),
    }
}

/// A bundle file (signed with `key`, when given), a `.rego` file or a directory of `.rego` files.
pub fn from_path(
    path: &str,
    key: Option<&VerificationKey>,
) -> Result<Box<dyn PolicyEvaluator>, ResolveError> {
    let p = Path::new(path);
    let is_bundle = path.ends_with(".tar.gz") || path.ends_with(".tgz");
    if p.is_file() && is_bundle {
        let b = bundle::read_file(p, key).map_err(|error| ResolveError::Bundle {
            path: path.into(),
            error,
        })?;
        let pol = b.compile().map_err(|error| ResolveError::Compile {
            reference: path.into(),
            error,
        })?;
        return Ok(boxed(pol));
    }
    if key.is_some() && p.exists() {
        return Err(ResolveError::NotABundle {
            what: format!("--policy {path}"),
        });
    }
    let mut files = Vec::new();
    if p.is_dir() {
        let rd = std::fs::read_dir(p).map_err(|error| ResolveError::Directory {
            path: path.into(),
            error,
        })?;
        for ent in rd.flatten() {
            let fp = ent.path();
            if fp.extension().is_some_and(|x| x == "rego") {
                files.push(fp);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(ResolveError::NoRego { path: path.into() });
        }
    } else if p.is_file() {
        files.push(p.to_path_buf());
    } else if p.exists() {
        return Err(ResolveError::NotAFile { path: path.into() });
    } else {
        return Err(ResolveError::Missing { path: path.into() });
    }
    let mut modules = Vec::new();
    for f in &files {
        let bytes = file::read_capped(f, bundle::MAX_FILE, FileKind::PolicyFile)?;
        let src =
            String::from_utf8(bytes).map_err(|_| ResolveError::NotUtf8 { file: f.clone() })?;
        modules.push((f.display().to_string(), src));
    }
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| path.to_string());
    RegoPolicy::compile(PolicyRef::new(format!("file:{name}")), &modules, None)
        .map(boxed)
        .map_err(|error| ResolveError::Rejected {
            path: path.into(),
            error,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_without_a_black_box_test() {
        // A slot emptied between two reads, and a directory that lists as one but cannot be
        // read, are races or need root to provoke; their lines are pinned here.
        let vanished = ResolveError::SlotVanished {
            reference: "oci://h/p:1".into(),
            slot: Slot::Lkg,
        };
        assert_eq!(
            vanished.to_string(),
            "--policy oci://h/p:1: the lkg slot vanished"
        );
        let dir = ResolveError::Directory {
            path: "pol".into(),
            error: std::io::Error::from_raw_os_error(13),
        };
        assert_eq!(
            dir.to_string(),
            "cannot read policy directory pol: Permission denied (os error 13)"
        );
        let store = ResolveError::Store(StoreError::NoLkg { dir: "/s".into() });
        assert_eq!(
            store.to_string(),
            "no last-known-good bundle in /s (nothing to roll back to)"
        );
    }
}
