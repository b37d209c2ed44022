//! The bundle hash and the `policy_ref` made from it.
//!
//! **Bundle hash** (`bundle_hash`, `sha256:<hex>`): SHA-256 over every file of the bundle except
//! `manifest.json` and `.signatures.json`, in byte order of their bundle-relative paths; for each
//! file the hash input is `path`, a NUL byte, the content length in decimal ASCII, a NUL byte,
//! then the content. `created_at` lives only in `manifest.json`, so it is not part of the hash;
//! the signature is not either (it covers `manifest.json`, which holds the hash, so it could not
//! be), so signing a bundle does not change its hash or its `policy_ref`.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::manifest::MANIFEST;
use crate::policy::dist::signing::SIGNATURES_FILE;

/// `name@version#sha256:<first 12 hex of the bundle hash>`.
pub fn policy_ref_string(name: &str, version: &str, hash: &str) -> String {
    let hex = hash.strip_prefix("sha256:").unwrap_or(hash);
    let short: String = hex.chars().take(12).collect();
    format!("{name}@{version}#sha256:{short}")
}

/// The bundle hash over `files` (path → content), skipping `manifest.json` and
/// `.signatures.json`.
pub fn bundle_hash(files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h = Sha256::new();
    for (name, content) in files {
        if name == MANIFEST || name == SIGNATURES_FILE {
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
