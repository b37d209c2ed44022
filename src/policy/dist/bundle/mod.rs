//! Policy bundles: a reproducible `.tar.gz` of Rego modules, optional `data.json` files and a
//! `manifest.json` (ours) or `.manifest` (OPA's `opa build` layout).
//!
//! One file per job: [`archive`] (unpack with limits, pack), [`manifest`] (the manifest and the
//! bundle's name and version), [`hash`] (the bundle hash), [`version`] (runtime version
//! constraints), [`build`] (`policy build`). This module reads a bundle: archive, signature
//! (when a verification key is given; see [`crate::policy::dist::signing`]), manifest, hash,
//! constraint, then the Rego modules and the merged data document.

mod archive;
mod build;
mod data;
mod hash;
mod manifest;
mod version;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

pub use archive::{
    MAX_COMPRESSED, MAX_ENTRIES, MAX_FILE, MAX_TOTAL, PackError, Special, UnpackError, pack, unpack,
};
pub use build::{BuildError, Built, build, collect_dir, created_at};
pub use data::MergeError;
pub use hash::{bundle_hash, policy_ref_string};
pub use manifest::{MANIFEST, Manifest, ManifestError, NameError, OPA_MANIFEST};
pub use version::{Constraint, Op, VersionError, check_runtime, parse_constraints};

use crate::policy::dist::file::{FileKind, ReadError, read_capped};
use crate::policy::dist::signing::{self, SIGNATURES_FILE, SignatureError, VerificationKey};
use crate::policy::eval::{RegoPolicy, RegoPolicyError};
use crate::types::PolicyRef;

/// Which layout a bundle uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Ours: `manifest.json`.
    Autonomy,
    /// `opa build`: optional `.manifest` with `revision`/`roots`.
    Opa,
}

/// What a bundle's `.signatures.json` amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// The bundle has no `.signatures.json`.
    Unsigned,
    /// It has one, but no verification key was given: nothing was checked.
    NotVerified {
        /// The JWT's `alg`, if it could be read.
        alg: Option<String>,
        /// The JWT's `kid`, if any.
        kid: Option<String>,
    },
    /// It verified with the given key, and every file matched it.
    Verified(signing::Verified),
}

impl Signature {
    /// One word for messages and `meta.json`: `unsigned`, `not verified`, `verified`.
    pub fn status(&self) -> &'static str {
        match self {
            Signature::Unsigned => "unsigned",
            Signature::NotVerified { .. } => "not verified",
            Signature::Verified(_) => "verified",
        }
    }
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (alg, kid) = match self {
            Signature::Unsigned => return f.write_str("unsigned"),
            Signature::NotVerified { alg, kid } => (alg.as_deref(), kid.as_deref()),
            Signature::Verified(v) => (Some(v.alg.as_str()), v.kid.as_deref()),
        };
        f.write_str(self.status())?;
        if let Some(a) = alg {
            write!(f, " {a}")?;
        }
        if let Some(k) = kid {
            write!(f, " kid={k}")?;
        }
        Ok(())
    }
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
    /// The manifest's `"mode": "shadow"`: decisions are recorded, not enforced.
    pub shadow: bool,
    /// Its signature, and whether it was verified.
    pub signature: Signature,
}

impl Bundle {
    /// `name@version#sha256:<first 12 hex>`: the policy_ref of this bundle.
    pub fn policy_ref(&self) -> PolicyRef {
        PolicyRef::new(policy_ref_string(&self.name, &self.version, &self.hash))
    }

    /// Compiles every module and checks the entry point.
    pub fn compile(&self) -> Result<RegoPolicy, RegoPolicyError> {
        // Checked before compiling: a bad `limits` list refuses the bundle like a bad module.
        let limits = match self.data.as_ref().and_then(|d| d.get("limits")) {
            None => None,
            Some(Value::Array(rules)) => Some(crate::limits::Limits::from_rules(rules)?),
            Some(_) => {
                return Err(crate::limits::LimitsError(
                    "the key `limits` must be a list of rules".into(),
                )
                .into());
            }
        };
        Ok(
            RegoPolicy::compile(self.policy_ref(), &self.modules, self.data.clone())?
                .with_shadow(self.shadow)
                .with_limits(limits),
        )
    }
}

/// Why a bundle is refused before it is compiled.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle file could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The archive is unsafe or broken.
    #[error(transparent)]
    Archive(#[from] UnpackError),
    /// The manifest is invalid or does not match the files.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The bundle's runtime constraint is invalid, or this runtime is outside it.
    #[error(transparent)]
    Runtime(#[from] VersionError),
    /// A `.rego` module that is not UTF-8.
    #[error("{path} is not UTF-8")]
    ModuleNotUtf8 {
        /// The module's bundle path.
        path: String,
    },
    /// A `data.json` that is not JSON.
    #[error("{path} is not valid JSON: {error}")]
    DataJson {
        /// The file's bundle path.
        path: String,
        /// What the parser said.
        error: serde_json::Error,
    },
    /// A `data.json` that cannot be merged with the others.
    #[error("{path}: {error}")]
    Data {
        /// The file's bundle path.
        path: String,
        /// Why not.
        error: MergeError,
    },
    /// The bundle's signature does not hold (a verification key was given).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A file that is not a module, a data document or a manifest.
    #[error(
        "unexpected file {path} in the bundle (allowed: *.rego, data.json, manifest.json, .manifest, .signatures.json)"
    )]
    UnexpectedFile {
        /// The file's bundle path.
        path: String,
    },
    /// No `.rego` file at all.
    #[error("bundle has no .rego modules")]
    NoModules,
}

/// Reads and checks a bundle file (at most [`MAX_COMPRESSED`] bytes, a regular file); with a
/// key, its signature must verify with it.
pub fn read_file(path: &Path, key: Option<&VerificationKey>) -> Result<Bundle, BundleError> {
    read_bytes(&read_capped(path, MAX_COMPRESSED, FileKind::Bundle)?, key)
}

/// Reads and checks a bundle from its compressed bytes; with a key, its signature must verify
/// with it.
pub fn read_bytes(bytes: &[u8], key: Option<&VerificationKey>) -> Result<Bundle, BundleError> {
    let files = unpack(bytes)?;
    from_files(files, key)
}

/// Checks the unpacked files and turns them into a [`Bundle`]. With a key, the signature is
/// checked first, before anything in the files is read: an unsigned bundle, a bad signature, or
/// a file that is not exactly what was signed refuses the bundle. Without one, a signature is
/// carried along unchecked.
pub fn from_files(
    files: BTreeMap<String, Vec<u8>>,
    key: Option<&VerificationKey>,
) -> Result<Bundle, BundleError> {
    let signature = match key {
        Some(k) => Signature::Verified(signing::verify(&files, k)?),
        None if files.contains_key(SIGNATURES_FILE) => {
            let peek = signing::peek(&files);
            Signature::NotVerified {
                alg: peek.as_ref().map(|p| p.alg.clone()),
                kid: peek.and_then(|p| p.kid),
            }
        }
        None => Signature::Unsigned,
    };
    let hash = bundle_hash(&files);
    let manifest::Identity {
        layout,
        name,
        version,
        runtime,
        shadow,
    } = manifest::identify(&files, &hash)?;
    check_runtime(&runtime, crate::VERSION)?;

    let mut modules = Vec::new();
    let mut data: Option<Value> = None;
    for (path, content) in &files {
        let base = path.rsplit('/').next().unwrap_or(path);
        if path == MANIFEST || path == OPA_MANIFEST || path == SIGNATURES_FILE {
            continue;
        }
        if base.ends_with(".rego") {
            let src = String::from_utf8(content.clone())
                .map_err(|_| BundleError::ModuleNotUtf8 { path: path.clone() })?;
            modules.push((path.clone(), src));
        } else if base == "data.json" {
            let v: Value =
                serde_json::from_slice(content).map_err(|error| BundleError::DataJson {
                    path: path.clone(),
                    error,
                })?;
            let dir: Vec<&str> = path
                .strip_suffix("data.json")
                .unwrap_or("")
                .split('/')
                .filter(|s| !s.is_empty())
                .collect();
            let root = data.get_or_insert_with(|| Value::Object(Map::new()));
            data::merge_at(root, &dir, v).map_err(|error| BundleError::Data {
                path: path.clone(),
                error,
            })?;
        } else {
            return Err(BundleError::UnexpectedFile { path: path.clone() });
        }
    }
    if modules.is_empty() {
        return Err(BundleError::NoModules);
    }
    Ok(Bundle {
        name,
        version,
        hash,
        required_runtime_version: runtime,
        layout,
        modules,
        data,
        shadow,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            mode: None,
        };
        f.insert(MANIFEST.into(), serde_json::to_vec(&m).unwrap());
        let b = read_bytes(&pack(&f).unwrap(), None).unwrap();
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
        let b = from_files(f, None).unwrap();
        assert_eq!(b.version, "r7");
        assert_eq!(
            b.data.unwrap(),
            serde_json::json!({"top": true, "a": {"b": {"x": 1}}})
        );
    }
}
