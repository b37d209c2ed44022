//! The manifest: ours (`manifest.json`) or OPA's (`.manifest`, `opa build`), and the bundle's
//! name, version and runtime constraint read from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Layout;

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
    /// `enforce` (the default) or `shadow`: decisions recorded, marked `shadow`, not enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// Why a bundle's manifest is refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// `manifest.json` is not JSON of the right shape.
    #[error("manifest.json is not valid: {0}")]
    Invalid(serde_json::Error),
    /// `policy_bundle_version` is not semver.
    #[error("manifest.json: policy_bundle_version {version:?} is not semver: {error}")]
    Version {
        /// The version as written.
        version: String,
        /// What semver said.
        error: semver::Error,
    },
    /// The files do not hash to `bundle_hash`.
    #[error("bundle hash mismatch: manifest says {manifest}, contents hash to {actual}")]
    HashMismatch {
        /// `bundle_hash` as written.
        manifest: String,
        /// What the files hash to.
        actual: String,
    },
    /// OPA's `.manifest` is not JSON.
    #[error(".manifest is not valid JSON: {0}")]
    OpaInvalid(serde_json::Error),
    /// The bundle name is not valid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// `mode` is neither `enforce` nor `shadow`.
    #[error("manifest.json: mode {0:?} is not \"enforce\" or \"shadow\"")]
    Mode(String),
}

/// A bundle name outside 1-128 of `A-Z a-z 0-9 - _ .`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bundle name {name:?} is not valid (use 1-128 of A-Z a-z 0-9 - _ .)")]
pub struct NameError {
    /// The name as given.
    pub name: String,
}

/// What a bundle's manifest says about it (or the defaults when an OPA bundle has none).
pub(super) struct Identity {
    pub(super) layout: Layout,
    pub(super) name: String,
    pub(super) version: String,
    /// Runtime constraint (may be empty).
    pub(super) runtime: String,
    /// `"mode": "shadow"`.
    pub(super) shadow: bool,
}

/// Reads the manifest of `files` and checks it: a valid semver version and a bundle hash equal
/// to `hash` (ours), a valid name (both layouts).
pub(super) fn identify(
    files: &BTreeMap<String, Vec<u8>>,
    hash: &str,
) -> Result<Identity, ManifestError> {
    let mut shadow = false;
    let (layout, name, version, runtime) = if let Some(m) = files.get(MANIFEST) {
        let m: Manifest = serde_json::from_slice(m).map_err(ManifestError::Invalid)?;
        semver::Version::parse(&m.policy_bundle_version).map_err(|error| {
            ManifestError::Version {
                version: m.policy_bundle_version.clone(),
                error,
            }
        })?;
        if m.bundle_hash != hash {
            return Err(ManifestError::HashMismatch {
                manifest: m.bundle_hash,
                actual: hash.to_string(),
            });
        }
        let name = if m.name.is_empty() {
            "bundle".to_string()
        } else {
            m.name.clone()
        };
        check_name(&name)?;
        shadow = match m.mode.as_deref() {
            None | Some("enforce") => false,
            Some("shadow") => true,
            Some(other) => return Err(ManifestError::Mode(other.to_string())),
        };
        (
            Layout::Autonomy,
            name,
            m.policy_bundle_version,
            m.required_runtime_version,
        )
    } else {
        let (name, version) = match files.get(OPA_MANIFEST) {
            Some(b) => {
                let v: Value = serde_json::from_slice(b).map_err(ManifestError::OpaInvalid)?;
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
    Ok(Identity {
        layout,
        name,
        version,
        runtime,
        shadow,
    })
}

/// Checks a bundle name: 1-128 of `A-Z a-z 0-9 - _ .`.
pub(super) fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(NameError {
            name: name.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("pol-1_a.b").is_ok());
        assert!(check_name(&"a".repeat(128)).is_ok());
        for bad in ["", "a b", "a/b", "é", &"a".repeat(129)] {
            assert_eq!(
                check_name(bad),
                Err(NameError {
                    name: bad.to_string()
                })
            );
        }
    }
}
