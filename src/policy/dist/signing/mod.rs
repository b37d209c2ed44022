//! Signed bundles in OPA's format: a `.signatures.json` at the bundle root holding one JWT whose
//! payload lists every other file of the bundle with its digest (`{"files": [{"name", "hash",
//! "algorithm"}], "keyid"?, "scope"?}`), signed with an RSA, ECDSA or Ed25519 key.
//!
//! [`verify`] checks a bundle's files against it exactly as OPA does (`bundle/verify.go`): the
//! JWT's signature with the configured public key, its `scope` against the configured scope, then
//! every file: each must be listed and match its digest ([`opa_hash`]), and every listed file must
//! be there. [`sign`] writes the same file, as `opa build --signing-key` does. The JWT crate is
//! `jsonwebtoken`, on ring ([`ring_provider`]).

mod opa_hash;
mod ring_provider;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub use opa_hash::{CanonicalError, HashAlg, canonical, file_digest, is_structured};

use crate::policy::dist::file::{FileKind, ReadError, read_capped};

/// The signature file's name at the bundle root.
pub const SIGNATURES_FILE: &str = ".signatures.json";
/// Largest key file read.
pub const MAX_KEY_FILE: u64 = 64 * 1024;

/// What kind of key a PEM file holds; it decides the JWT algorithms the key may be used with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA (2048 to 8192 bits): RS256/384/512, PS256/384/512; signs RS256.
    Rsa,
    /// ECDSA on P-256: ES256.
    P256,
    /// ECDSA on P-384: ES384.
    P384,
    /// Ed25519: EdDSA.
    Ed25519,
}

impl KeyKind {
    /// The JWT algorithms a key of this kind verifies.
    fn algorithms(self) -> Vec<Algorithm> {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => vec![RS256, RS384, RS512, PS256, PS384, PS512],
            KeyKind::P256 => vec![ES256],
            KeyKind::P384 => vec![ES384],
            KeyKind::Ed25519 => vec![EdDSA],
        }
    }

    /// The algorithm a key of this kind signs with (RS256 is OPA's default).
    fn signing_algorithm(self) -> Algorithm {
        match self {
            KeyKind::Rsa => Algorithm::RS256,
            KeyKind::P256 => Algorithm::ES256,
            KeyKind::P384 => Algorithm::ES384,
            KeyKind::Ed25519 => Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Rsa => "an RSA key (RS256, RS384, RS512, PS256, PS384, PS512)",
            KeyKind::P256 => "a P-256 key (ES256)",
            KeyKind::P384 => "a P-384 key (ES384)",
            KeyKind::Ed25519 => "an Ed25519 key (EdDSA)",
        })
    }
}

/// A JWT algorithm's name as it appears in a JWT header.
pub fn alg_name(alg: Algorithm) -> String {
    // `Algorithm` serialises as its JOSE name.
    serde_json::to_value(alg)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{alg:?}"))
}

/// Why a key file is refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// No `-----BEGIN …-----` line.
    #[error("{path}: not a PEM file (expected -----BEGIN {expected}-----)")]
    NotPem {
        /// The file.
        path: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A private key where a public one was expected.
    #[error(
        "{path} is a private key; --verification-key takes the public key (openssl pkey -in {path} -pubout -out pub.pem)"
    )]
    PrivateForVerification {
        /// The file.
        path: String,
    },
    /// A public key where a private one was expected.
    #[error("{path} is a public key; --signing-key takes the private key")]
    PublicForSigning {
        /// The file.
        path: String,
    },
    /// An `EC PRIVATE KEY` (SEC 1): ring reads EC keys in PKCS#8 only.
    #[error(
        "{path} is an EC key in SEC 1 form (BEGIN EC PRIVATE KEY); convert it to PKCS#8: openssl pkcs8 -topk8 -nocrypt -in {path} -out key.pem"
    )]
    Sec1 {
        /// The file.
        path: String,
    },
    /// A password-protected key.
    #[error("{path} is encrypted; give an unencrypted key (openssl pkey -in {path} -out key.pem)")]
    Encrypted {
        /// The file.
        path: String,
    },
    /// Another PEM type (a certificate, parameters…).
    #[error("{path} holds a {tag}, not {expected}")]
    WrongType {
        /// The file.
        path: String,
        /// Its PEM type.
        tag: String,
        /// What was expected.
        expected: &'static str,
    },
    /// Not an RSA, P-256, P-384 or Ed25519 key that ring accepts.
    #[error("{path}: not a usable RSA (2048-8192 bits), P-256, P-384 or Ed25519 {which} key")]
    Unsupported {
        /// The file.
        path: String,
        /// `public` or `private`.
        which: &'static str,
    },
}

/// The first PEM block's type (`PUBLIC KEY`, `PRIVATE KEY`, …).
fn pem_tag(pem: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(pem);
    let rest = &s[s.find("-----BEGIN ")? + "-----BEGIN ".len()..];
    let tag = &rest[..rest.find("-----")?];
    Some(tag.to_string())
}

fn read_key(path: &Path, kind: FileKind) -> Result<(String, Vec<u8>), KeyError> {
    let bytes = read_capped(path, MAX_KEY_FILE, kind)?;
    Ok((path.display().to_string(), bytes))
}

/// A public key that bundle signatures must verify with (`--verification-key`), and the scope
/// they must carry (OPA's `scope`, empty unless set).
#[derive(Clone)]
pub struct VerificationKey {
    key: DecodingKey,
    kind: KeyKind,
    path: String,
    scope: String,
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// Reads a PEM public key (`PUBLIC KEY`, or `RSA PUBLIC KEY`) of at most [`MAX_KEY_FILE`]
    /// bytes.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let (shown, pem) = read_key(path, FileKind::VerificationKey)?;
        Self::from_pem(&shown, &pem)
    }

    /// Reads a PEM public key; `path` names it in messages.
    pub fn from_pem(path: &str, pem: &[u8]) -> Result<Self, KeyError> {
        const EXPECTED: &str = "PUBLIC KEY";
        let path = path.to_string();
        let tag = pem_tag(pem).ok_or_else(|| KeyError::NotPem {
            path: path.clone(),
            expected: EXPECTED,
        })?;
        match tag.as_str() {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
                return Err(KeyError::PrivateForVerification { path });
            }
            _ => {
                return Err(KeyError::WrongType {
                    path,
                    tag,
                    expected: "a public key",
                });
            }
        }
        let unsupported = || KeyError::Unsupported {
            path: path.clone(),
            which: "public",
        };
        let (key, kind) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (k, KeyKind::Rsa)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            // The uncompressed point's length names the curve.
            let kind = match k.try_get_as_bytes().map(<[u8]>::len) {
                Ok(65) => KeyKind::P256,
                Ok(97) => KeyKind::P384,
                _ => return Err(unsupported()),
            };
            (k, kind)
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            if k.try_get_as_bytes().map(<[u8]>::len).ok() != Some(32) {
                return Err(unsupported());
            }
            (k, KeyKind::Ed25519)
        } else {
            return Err(unsupported());
        };
        Ok(VerificationKey {
            key,
            kind,
            path,
            scope: String::new(),
        })
    }

    /// Signatures must carry this `scope` (OPA's `scope`; default empty: none).
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// What kind of key it is.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The file it was read from.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// A private key that `policy build --signing-key` signs with, and what it writes beside the
/// file list (`keyid`, `scope`).
#[derive(Clone)]
pub struct SigningKey {
    key: EncodingKey,
    kind: KeyKind,
    alg: Algorithm,
    kid: Option<String>,
    scope: Option<String>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kind", &self.kind)
            .field("kid", &self.kid)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a PEM private key in PKCS#8 (`PRIVATE KEY`), or PKCS#1 for RSA (`RSA PRIVATE KEY`),
    /// of at most [`MAX_KEY_FILE`] bytes.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let (shown, pem) = read_key(path, FileKind::SigningKey)?;
        Self::from_pem(&shown, &pem)
    }

    /// Reads a PEM private key; `path` names it in messages.
    pub fn from_pem(path: &str, pem: &[u8]) -> Result<Self, KeyError> {
        const EXPECTED: &str = "PRIVATE KEY";
        let path = path.to_string();
        let tag = pem_tag(pem).ok_or_else(|| KeyError::NotPem {
            path: path.clone(),
            expected: EXPECTED,
        })?;
        match tag.as_str() {
            "PRIVATE KEY" | "RSA PRIVATE KEY" => {}
            "EC PRIVATE KEY" => return Err(KeyError::Sec1 { path }),
            "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted { path }),
            "PUBLIC KEY" | "RSA PUBLIC KEY" => return Err(KeyError::PublicForSigning { path }),
            _ => {
                return Err(KeyError::WrongType {
                    path,
                    tag,
                    expected: "a private key",
                });
            }
        }
        let unsupported = || KeyError::Unsupported {
            path: path.clone(),
            which: "private",
        };
        let rng = ring::rand::SystemRandom::new();
        // Each candidate is checked by ring itself, so a key that cannot sign is refused here
        // and not at signing time.
        let (key, kind) = if let Ok(k) = EncodingKey::from_rsa_pem(pem) {
            ring::signature::RsaKeyPair::from_der(k.as_bytes()).map_err(|_| unsupported())?;
            (k, KeyKind::Rsa)
        } else if let Ok(k) = EncodingKey::from_ec_pem(pem) {
            use ring::signature::{
                ECDSA_P256_SHA256_FIXED_SIGNING as P256, ECDSA_P384_SHA384_FIXED_SIGNING as P384,
                EcdsaKeyPair,
            };
            let kind = if EcdsaKeyPair::from_pkcs8(&P256, k.as_bytes(), &rng).is_ok() {
                KeyKind::P256
            } else if EcdsaKeyPair::from_pkcs8(&P384, k.as_bytes(), &rng).is_ok() {
                KeyKind::P384
            } else {
                return Err(unsupported());
            };
            (k, kind)
        } else if let Ok(k) = EncodingKey::from_ed_pem(pem) {
            ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(k.as_bytes())
                .map_err(|_| unsupported())?;
            (k, KeyKind::Ed25519)
        } else {
            return Err(unsupported());
        };
        Ok(SigningKey {
            key,
            kind,
            alg: kind.signing_algorithm(),
            kid: None,
            scope: None,
        })
    }

    /// Writes `kid` in the JWT header and `keyid` in its payload (as `opa build --signing-key`
    /// with a key id does).
    pub fn with_kid(mut self, kid: Option<String>) -> Self {
        self.kid = kid.filter(|k| !k.is_empty());
        self
    }

    /// Writes `scope` in the payload.
    pub fn with_scope(mut self, scope: Option<String>) -> Self {
        self.scope = scope.filter(|s| !s.is_empty());
        self
    }

    /// The JWT algorithm it signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The key id it writes, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
}

/// `.signatures.json`.
#[derive(Debug, Serialize, Deserialize)]
struct SignaturesFile {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    plugin: String,
    #[serde(default)]
    signatures: Vec<String>,
}

/// One entry of the JWT's file list.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileInfo {
    #[serde(default)]
    name: String,
    #[serde(default)]
    hash: String,
    #[serde(default)]
    algorithm: String,
}

/// The JWT payload.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    #[serde(default)]
    files: Vec<FileInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keyid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// Why a bundle's signature does not hold.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// No `.signatures.json` while a verification key is set.
    #[error("the bundle is not signed (no {SIGNATURES_FILE}) and a verification key is set")]
    Unsigned,
    /// `.signatures.json` is not the expected JSON.
    #[error("{SIGNATURES_FILE} is not valid: {0}")]
    Malformed(serde_json::Error),
    /// A signing plugin other than OPA's default.
    #[error(
        "{SIGNATURES_FILE} names the signing plugin {0:?}; only OPA's default JWT signatures are supported"
    )]
    Plugin(String),
    /// Not exactly one JWT.
    #[error("{SIGNATURES_FILE} holds {0} signatures; exactly one is expected (as in OPA)")]
    Count(usize),
    /// The JWT does not parse.
    #[error("the bundle signature is not a valid JWT: {0}")]
    Jwt(jsonwebtoken::errors::Error),
    /// The JWT's algorithm is not one the key verifies.
    #[error("the bundle is signed with {alg}, but the verification key {key} is {kind}")]
    Algorithm {
        /// The JWT's `alg`.
        alg: String,
        /// The key file.
        key: String,
        /// The key's kind.
        kind: KeyKind,
    },
    /// The signature does not verify with the key.
    #[error(
        "the bundle signature does not verify with the verification key {key} (signed {alg}{kid})"
    )]
    BadSignature {
        /// The key file.
        key: String,
        /// The JWT's `alg`.
        alg: String,
        /// `, kid "…"` when the JWT names one.
        kid: String,
    },
    /// The payload's scope is not the configured one.
    #[error("the bundle signature's scope is {got:?}; the verification expects {want:?}")]
    Scope {
        /// What the signature says.
        got: String,
        /// What was configured.
        want: String,
    },
    /// A bundle file the signature does not list.
    #[error("{0} is not covered by the bundle signature")]
    NotListed(String),
    /// Files the signature lists that the bundle does not have.
    #[error("the bundle signature lists {0}, which the bundle does not have")]
    Missing(String),
    /// A digest algorithm that is not accepted.
    #[error(
        "the bundle signature hashes {path} with {alg:?}; only SHA-256, SHA-384 and SHA-512 are accepted"
    )]
    HashAlgorithm {
        /// The file.
        path: String,
        /// The algorithm named.
        alg: String,
    },
    /// A digest that is not hex.
    #[error("the bundle signature's digest of {0} is not hex")]
    NotHex(String),
    /// A structured file that is not JSON.
    #[error("{path} cannot be checked against the bundle signature: {error}")]
    Structured {
        /// The file.
        path: String,
        /// Why not.
        error: CanonicalError,
    },
    /// A file whose digest differs from the signed one.
    #[error(
        "{path} does not match the bundle signature (signed {alg} {want}, the file hashes to {got})"
    )]
    Digest {
        /// The file.
        path: String,
        /// The digest algorithm.
        alg: &'static str,
        /// The signed digest (hex).
        want: String,
        /// The file's digest (hex).
        got: String,
    },
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The JWT algorithm (`RS256`, `ES256`, `EdDSA`…).
    pub alg: String,
    /// The JWT's `kid` (or the payload's `keyid`), if any.
    pub kid: Option<String>,
}

/// `.signatures.json`: a JSON object (serde would take an array for a struct too).
fn parse_signatures(raw: &[u8]) -> Result<SignaturesFile, SignatureError> {
    let v: serde_json::Value = serde_json::from_slice(raw).map_err(SignatureError::Malformed)?;
    if !v.is_object() {
        return Err(SignatureError::Malformed(serde::de::Error::custom(
            "expected an object {\"signatures\": [JWT]}",
        )));
    }
    serde_json::from_value(v).map_err(SignatureError::Malformed)
}

/// Checks `files` (path → content, `.signatures.json` included) against their signature and `key`.
pub fn verify(
    files: &BTreeMap<String, Vec<u8>>,
    key: &VerificationKey,
) -> Result<Verified, SignatureError> {
    ring_provider::install();
    let raw = files.get(SIGNATURES_FILE).ok_or(SignatureError::Unsigned)?;
    let sf = parse_signatures(raw)?;
    if !sf.plugin.is_empty() {
        return Err(SignatureError::Plugin(sf.plugin));
    }
    let [token] = sf.signatures.as_slice() else {
        return Err(SignatureError::Count(sf.signatures.len()));
    };
    let header = jsonwebtoken::decode_header(token).map_err(SignatureError::Jwt)?;
    let alg = alg_name(header.alg);
    let allowed = key.kind.algorithms();
    if !allowed.contains(&header.alg) {
        return Err(SignatureError::Algorithm {
            alg,
            key: key.path.clone(),
            kind: key.kind,
        });
    }
    // A JWS, as in OPA: no time or audience claims are required or checked.
    let mut v = Validation::new(header.alg);
    v.algorithms = allowed;
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    let payload = match jsonwebtoken::decode::<Payload>(token, &key.key, &v) {
        Ok(t) => t.claims,
        Err(e) if matches!(e.kind(), JwtErrorKind::InvalidSignature) => {
            return Err(SignatureError::BadSignature {
                key: key.path.clone(),
                alg,
                kid: header
                    .kid
                    .as_deref()
                    .map(|k| format!(", kid {k:?}"))
                    .unwrap_or_default(),
            });
        }
        Err(e) => return Err(SignatureError::Jwt(e)),
    };
    let got_scope = payload.scope.clone().unwrap_or_default();
    if got_scope != key.scope {
        return Err(SignatureError::Scope {
            got: got_scope,
            want: key.scope.clone(),
        });
    }
    // Later entries for the same name replace earlier ones, as in OPA.
    let mut listed: BTreeMap<String, FileInfo> = payload
        .files
        .into_iter()
        .map(|f| (f.name.trim_start_matches('/').to_string(), f))
        .collect();
    for (path, content) in files {
        if path == SIGNATURES_FILE {
            continue;
        }
        let info = listed
            .remove(path)
            .ok_or_else(|| SignatureError::NotListed(path.clone()))?;
        let alg =
            HashAlg::from_name(&info.algorithm).ok_or_else(|| SignatureError::HashAlgorithm {
                path: path.clone(),
                alg: info.algorithm.clone(),
            })?;
        let want = hex::decode(&info.hash).map_err(|_| SignatureError::NotHex(path.clone()))?;
        let got = file_digest(path, content, alg).map_err(|error| SignatureError::Structured {
            path: path.clone(),
            error,
        })?;
        if want != got {
            return Err(SignatureError::Digest {
                path: path.clone(),
                alg: alg.name(),
                want: hex::encode(want),
                got: hex::encode(got),
            });
        }
    }
    if !listed.is_empty() {
        let names: Vec<&str> = listed.keys().map(String::as_str).collect();
        return Err(SignatureError::Missing(names.join(", ")));
    }
    Ok(Verified {
        alg,
        kid: header.kid.or(payload.keyid).filter(|k| !k.is_empty()),
    })
}

/// The JWT header of a bundle's signature, read without verifying anything (for display).
pub fn peek(files: &BTreeMap<String, Vec<u8>>) -> Option<Verified> {
    let sf = parse_signatures(files.get(SIGNATURES_FILE)?).ok()?;
    let header = jsonwebtoken::decode_header(sf.signatures.first()?).ok()?;
    Some(Verified {
        alg: alg_name(header.alg),
        kid: header.kid,
    })
}

/// Why a bundle could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A structured file is not JSON.
    #[error("{path} cannot be signed: {error}")]
    Structured {
        /// The file.
        path: String,
        /// Why not.
        error: CanonicalError,
    },
    /// The JWT could not be made.
    #[error("cannot sign the bundle: {0}")]
    Jwt(jsonwebtoken::errors::Error),
    /// `.signatures.json` could not be written as JSON.
    #[error("cannot write {SIGNATURES_FILE}: {0}")]
    Json(serde_json::Error),
}

/// `.signatures.json` for `files` (every file but `.signatures.json` itself is listed, with its
/// SHA-256 digest), as `opa build --signing-key` writes it.
pub fn sign(files: &BTreeMap<String, Vec<u8>>, key: &SigningKey) -> Result<Vec<u8>, SignError> {
    ring_provider::install();
    let mut list = Vec::new();
    for (path, content) in files {
        if path == SIGNATURES_FILE {
            continue;
        }
        let d =
            file_digest(path, content, HashAlg::Sha256).map_err(|error| SignError::Structured {
                path: path.clone(),
                error,
            })?;
        list.push(FileInfo {
            name: path.clone(),
            hash: hex::encode(d),
            algorithm: HashAlg::Sha256.name().to_string(),
        });
    }
    let payload = Payload {
        files: list,
        keyid: key.kid.clone(),
        scope: key.scope.clone(),
    };
    let mut header = Header::new(key.alg);
    header.kid = key.kid.clone();
    let token = jsonwebtoken::encode(&header, &payload, &key.key).map_err(SignError::Jwt)?;
    serde_json::to_vec_pretty(&SignaturesFile {
        plugin: String::new(),
        signatures: vec![token],
    })
    .map_err(SignError::Json)
}

#[cfg(test)]
mod tests;
