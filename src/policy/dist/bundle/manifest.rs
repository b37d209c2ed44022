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
}

/// What a bundle's manifest says about it (or the defaults when an OPA bundle has none).
pub(super) struct Identity {
    pub(super) layout: Layout,
    pub(super) name: String,
    pub(super) version: String,
    /// Runtime constraint (may be empty).
    pub(super) runtime: String,
}

/// Reads the manifest of `files` and checks it: a valid semver version and a bundle hash equal
/// to `hash` (ours), a valid name (both layouts).
pub(super) fn identify(files: &BTreeMap<String, Vec<u8>>, hash: &str) -> Result<Identity, String> {
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
    Ok(Identity {
        layout,
        name,
        version,
        runtime,
    })
}

/// Checks a bundle name: 1-128 of `A-Z a-z 0-9 - _ .`.
pub(super) fn check_name(name: &str) -> Result<(), String> {
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
