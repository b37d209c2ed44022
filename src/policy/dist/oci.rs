//! OCI distribution of policy bundles (`policy push` / `policy pull`) with `oci-client`.
//!
//! A bundle is stored as an OCI artifact: an image manifest whose config has media type
//! [`CONFIG_MEDIA_TYPE`] (a small JSON summary of the bundle) and whose single layer, media type
//! [`LAYER_MEDIA_TYPE`], is the bundle `.tar.gz` byte for byte. Pull checks the media types and
//! the layer size before downloading, verifies the layer's sha256 digest (oci-client checks it
//! while streaming; we check it again over the bytes we keep), then loads as `policy load` does.

use std::collections::BTreeMap;
use std::fmt;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use super::bundle::{self, Bundle};
use crate::policy::message::one_line;

/// Config media type of a policy artifact.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.autonomy.policy.config.v1+json";
/// Layer media type: the bundle `.tar.gz`.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.autonomy.policy.bundle.v1.tar+gzip";

/// `oci://host[:port]/name[:tag]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRef {
    /// `host[:port]` (an IPv6 host in brackets).
    pub registry: String,
    /// Repository path (`name` or `org/name`).
    pub repository: String,
    /// Tag (`latest` when omitted).
    pub tag: String,
}

impl fmt::Display for OciRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "oci://{}/{}:{}",
            self.registry, self.repository, self.tag
        )
    }
}

/// A ref that is not `oci://host[:port]/name[:tag]` under the OCI distribution reference
/// grammar, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid OCI ref {input:?}: {problem} (expected oci://host[:port]/name[:tag])")]
pub struct OciRefError {
    /// The ref as given.
    pub input: String,
    /// What is wrong.
    pub problem: RefProblem,
}

/// What is wrong with an OCI ref.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefProblem {
    /// Not `oci://…`.
    #[error("it must start with oci://")]
    Scheme,
    /// Nothing before the first `/`.
    #[error("no registry host")]
    NoHost,
    /// Nothing after the host.
    #[error("no repository name after the host")]
    NoRepository,
    /// `user:password@host`.
    #[error("credentials (user:password@) are not accepted in a ref; registry access is anonymous")]
    Userinfo,
    /// `[` without `]` or the reverse.
    #[error("unbalanced [ ] around the registry host")]
    Brackets,
    /// `[…]` that is not an IPv6 address.
    #[error("{0:?} is not an IPv6 address")]
    Ipv6(String),
    /// Not a DNS name or an IPv4 address.
    #[error("registry host {0:?} is not a host name or an IP address")]
    Host(String),
    /// Not 1–65535.
    #[error("port {0:?} is not a number from 1 to 65535")]
    Port(String),
    /// `.` or `..` in the repository path.
    #[error("path component {0:?} is not allowed")]
    Traversal(String),
    /// `//`, or a `/` at the start or end of the repository.
    #[error("the repository path has an empty component")]
    EmptyComponent,
    /// Upper case in the repository.
    #[error("repository names are lower-case")]
    Uppercase,
    /// A repository component outside the grammar.
    #[error(
        "repository component {0:?} is not valid (lower-case a-z and 0-9, separated by ., _, __ or -)"
    )]
    Component(String),
    /// Over 255 characters.
    #[error("the repository name is longer than 255 characters")]
    TooLong,
    /// A tag outside `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("tag {0:?} is not valid (1-128 of A-Z a-z 0-9 _ . -, not starting with . or -)")]
    Tag(String),
    /// `@sha256:…`.
    #[error("digest refs (@sha256:…) are not supported; use a tag")]
    Digest,
}

/// A DNS label as the reference grammar has it: alphanumerics, inner `-`.
fn host_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// A repository path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn tag_ok(t: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut cs = t.chars();
    t.len() <= 128 && cs.next().is_some_and(word) && cs.all(|c| word(c) || c == '.' || c == '-')
}

/// Checks `host[:port]` (or `[v6][:port]`).
fn check_registry(auth: &str) -> Result<(), RefProblem> {
    if auth.is_empty() {
        return Err(RefProblem::NoHost);
    }
    if auth.contains('@') {
        return Err(RefProblem::Userinfo);
    }
    let (host, port) = if let Some(rest) = auth.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(RefProblem::Brackets)?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(RefProblem::Ipv6(v6.to_string()));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(RefProblem::Brackets)?),
        };
        (None, port)
    } else {
        if auth.contains(['[', ']']) {
            return Err(RefProblem::Brackets);
        }
        match auth.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(auth), None),
        }
    };
    if let Some(h) = host {
        let ok = h.parse::<std::net::Ipv4Addr>().is_ok()
            || (!h.is_empty() && h.len() <= 253 && h.split('.').all(host_label));
        if !ok {
            return Err(RefProblem::Host(h.to_string()));
        }
    }
    if let Some(p) = port
        && !(p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n)))
    {
        return Err(RefProblem::Port(p.to_string()));
    }
    Ok(())
}

impl OciRef {
    /// Parses `oci://host[:port]/name[:tag]` with the OCI distribution reference grammar (an
    /// IPv6 host in brackets; no credentials, no digest).
    pub fn parse(s: &str) -> Result<Self, OciRefError> {
        let err = |problem| OciRefError {
            input: s.to_string(),
            problem,
        };
        let rest = s.strip_prefix("oci://").ok_or(err(RefProblem::Scheme))?;
        let (auth, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        check_registry(auth).map_err(err)?;
        if path.is_empty() {
            return Err(err(RefProblem::NoRepository));
        }
        if path.contains('@') {
            return Err(err(RefProblem::Digest));
        }
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (path, "latest"),
        };
        for c in repository.split('/') {
            if c == "." || c == ".." {
                return Err(err(RefProblem::Traversal(c.to_string())));
            }
            if c.is_empty() {
                return Err(err(RefProblem::EmptyComponent));
            }
            if c.chars().any(|ch| ch.is_ascii_uppercase()) {
                return Err(err(RefProblem::Uppercase));
            }
            if !path_component(c) {
                return Err(err(RefProblem::Component(c.to_string())));
            }
        }
        if repository.len() > 255 {
            return Err(err(RefProblem::TooLong));
        }
        if !tag_ok(tag) {
            return Err(err(RefProblem::Tag(tag.to_string())));
        }
        // The same name and tag through the distribution grammar of `oci-spec` (its host part
        // knows no IPv6, so a stand-in host is used): both must agree before anything is sent.
        let probe = format!("registry.invalid/{repository}:{tag}");
        match Reference::try_from(probe.as_str()) {
            Ok(r) if r.repository() == repository && r.tag() == Some(tag) => {}
            _ => return Err(err(RefProblem::Component(repository.to_string()))),
        }
        Ok(OciRef {
            registry: auth.to_string(),
            repository: repository.to_string(),
            tag: tag.to_string(),
        })
    }

    fn reference(&self) -> Reference {
        Reference::with_tag(
            self.registry.clone(),
            self.repository.clone(),
            self.tag.clone(),
        )
    }

    /// Whether the registry host is a loopback address (or `localhost`).
    pub fn is_loopback(&self) -> bool {
        let host = if let Some(h) = self.registry.strip_prefix('[') {
            h.split(']').next().unwrap_or("")
        } else {
            self.registry.split(':').next().unwrap_or("")
        };
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// Why a push or a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Plain HTTP to a registry that is not on this machine.
    #[error("--insecure (plain HTTP) is only allowed for loopback registries, not {registry}")]
    InsecureRemote {
        /// The registry, `host[:port]`.
        registry: String,
    },
    /// The client could not be set up (TLS roots, proxy settings).
    #[error("cannot set up the OCI client: {0}")]
    Client(Box<OciDistributionError>),
    /// The artifact's config could not be written as JSON.
    #[error(transparent)]
    Config(serde_json::Error),
    /// The registry refused the push, or could not be reached.
    // A registry's message is kept whole (no cap), as it always was.
    #[error("push to {reference} failed: {}", one_line(&error.to_string(), usize::MAX))]
    Push {
        /// Where to.
        reference: OciRef,
        /// What the client said.
        error: Box<OciDistributionError>,
    },
    /// The manifest could not be fetched.
    #[error("cannot fetch {reference}: {}", one_line(&error.to_string(), usize::MAX))]
    Fetch {
        /// What.
        reference: OciRef,
        /// What the client said.
        error: Box<OciDistributionError>,
    },
    /// The ref names an image index.
    #[error("{reference} is an image index, not a policy bundle")]
    ImageIndex {
        /// What.
        reference: OciRef,
    },
    /// The artifact's config is not ours.
    #[error(
        "{reference} is not a policy bundle (config media type {media_type:?}, expected {CONFIG_MEDIA_TYPE})"
    )]
    NotAPolicy {
        /// What.
        reference: OciRef,
        /// The config's media type.
        media_type: String,
    },
    /// Not exactly one layer of our media type.
    #[error("{reference} does not hold exactly one layer of type {LAYER_MEDIA_TYPE}")]
    Layers {
        /// What.
        reference: OciRef,
    },
    /// The manifest declares a layer over the compressed bundle limit (or a negative size).
    #[error("{reference}: the bundle layer is {size} bytes; the limit is {limit}")]
    LayerTooBig {
        /// What.
        reference: OciRef,
        /// The declared size.
        size: i64,
        /// The limit.
        limit: u64,
    },
    /// The layer could not be downloaded (or was longer than declared).
    #[error("cannot download {reference}: {}", one_line(&error.to_string(), usize::MAX))]
    Download {
        /// What.
        reference: OciRef,
        /// What the client said.
        error: Box<OciDistributionError>,
    },
    /// The layer does not hash to its digest.
    #[error(
        "digest mismatch for {reference}: the manifest says {manifest}, the layer hashes to {actual}"
    )]
    DigestMismatch {
        /// What.
        reference: OciRef,
        /// The digest in the manifest.
        manifest: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The layer is shorter than declared.
    #[error("size mismatch for {reference}: the manifest says {manifest} bytes, got {actual}")]
    SizeMismatch {
        /// What.
        reference: OciRef,
        /// The size in the manifest.
        manifest: i64,
        /// The bytes received.
        actual: usize,
    },
}

fn client(r: &OciRef, insecure: bool) -> Result<Client, OciError> {
    if insecure && !r.is_loopback() {
        return Err(OciError::InsecureRemote {
            registry: r.registry.clone(),
        });
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = ClientConfig {
        protocol: if insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..ClientConfig::default()
    };
    Client::try_from(cfg).map_err(|e| OciError::Client(Box::new(e)))
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The layer (bundle) digest.
    pub digest: String,
    /// The manifest URL the registry gave.
    pub manifest_url: String,
}

/// Pushes a checked bundle's bytes to `r`.
pub async fn push(
    bytes: &[u8],
    b: &Bundle,
    r: &OciRef,
    insecure: bool,
) -> Result<Pushed, OciError> {
    let c = client(r, insecure)?;
    let config = serde_json::json!({
        "name": b.name,
        "version": b.version,
        "bundle_hash": b.hash,
        "required_runtime_version": b.required_runtime_version,
        "policy_ref": b.policy_ref().as_str(),
    });
    let mut ann = BTreeMap::new();
    ann.insert(
        "org.opencontainers.image.title".to_string(),
        format!("{}-{}.tar.gz", b.name, b.version),
    );
    ann.insert(
        "org.opencontainers.image.version".to_string(),
        b.version.clone(),
    );
    let layer = ImageLayer::new(bytes.to_vec(), LAYER_MEDIA_TYPE.to_string(), Some(ann));
    let cfg = Config::new(
        serde_json::to_vec(&config).map_err(OciError::Config)?,
        CONFIG_MEDIA_TYPE.to_string(),
        None,
    );
    let resp = c
        .push(
            &r.reference(),
            &[layer],
            cfg,
            &RegistryAuth::Anonymous,
            None,
        )
        .await
        .map_err(|error| OciError::Push {
            reference: r.clone(),
            error: Box::new(error),
        })?;
    Ok(Pushed {
        digest: sha256(bytes),
        manifest_url: resp.manifest_url,
    })
}

impl OciError {
    /// Whether the registry could not be reached or did not answer (worth trying again later),
    /// as opposed to serving something that is not a good policy bundle.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            OciError::Client(_) | OciError::Fetch { .. } | OciError::Download { .. }
        )
    }
}

/// The digest of the manifest `r`'s tag points at now (a `HEAD` of the manifest; a `GET` when
/// the registry sends no `Docker-Content-Digest`).
pub async fn manifest_digest(r: &OciRef, insecure: bool) -> Result<String, OciError> {
    let c = client(r, insecure)?;
    c.fetch_manifest_digest(&r.reference(), &RegistryAuth::Anonymous)
        .await
        .map_err(|error| OciError::Fetch {
            reference: r.clone(),
            error: Box::new(error),
        })
}

/// What a pull brought.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The bundle file, byte for byte.
    pub bytes: Vec<u8>,
    /// Its (the layer's) digest, checked.
    pub digest: String,
    /// The digest of the manifest it came from.
    pub manifest_digest: String,
}

/// Pulls the bundle bytes from `r`, verifying media types, size and digest.
pub async fn pull(r: &OciRef, insecure: bool) -> Result<Pulled, OciError> {
    let c = client(r, insecure)?;
    let reference = r.reference();
    let (manifest, manifest_digest) = c
        .pull_manifest(&reference, &RegistryAuth::Anonymous)
        .await
        .map_err(|error| OciError::Fetch {
            reference: r.clone(),
            error: Box::new(error),
        })?;
    let m = match manifest {
        OciManifest::Image(m) => m,
        OciManifest::ImageIndex(_) => {
            return Err(OciError::ImageIndex {
                reference: r.clone(),
            });
        }
    };
    if m.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(OciError::NotAPolicy {
            reference: r.clone(),
            media_type: m.config.media_type,
        });
    }
    let layer = match m.layers.as_slice() {
        [l] if l.media_type == LAYER_MEDIA_TYPE => l.clone(),
        _ => {
            return Err(OciError::Layers {
                reference: r.clone(),
            });
        }
    };
    if layer.size < 0 || layer.size as u64 > bundle::MAX_COMPRESSED {
        return Err(OciError::LayerTooBig {
            reference: r.clone(),
            size: layer.size,
            limit: bundle::MAX_COMPRESSED,
        });
    }
    let mut w = CapWriter {
        buf: Vec::with_capacity(layer.size as usize),
        cap: layer.size as usize,
    };
    c.pull_blob(&reference, &layer, &mut w)
        .await
        .map_err(|error| OciError::Download {
            reference: r.clone(),
            error: Box::new(error),
        })?;
    let out = w.buf;
    let got = sha256(&out);
    if got != layer.digest {
        return Err(OciError::DigestMismatch {
            reference: r.clone(),
            manifest: layer.digest,
            actual: got,
        });
    }
    if out.len() as i64 != layer.size {
        return Err(OciError::SizeMismatch {
            reference: r.clone(),
            manifest: layer.size,
            actual: out.len(),
        });
    }
    Ok(Pulled {
        bytes: out,
        digest: got,
        manifest_digest,
    })
}

/// Collects a blob, failing as soon as it grows past the size the manifest declared.
struct CapWriter {
    buf: Vec<u8>,
    cap: usize,
}

impl tokio::io::AsyncWrite for CapWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.buf.len() + data.len() > self.cap {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "the registry sent more bytes than the manifest declares",
            )));
        }
        self.buf.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs() {
        let r = OciRef::parse("oci://127.0.0.1:5000/org/pol:1.2.0").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "org/pol");
        assert_eq!(r.tag, "1.2.0");
        assert!(r.is_loopback());
        let r = OciRef::parse("oci://reg.example.com/pol").unwrap();
        assert_eq!(r.to_string(), "oci://reg.example.com/pol:latest");
        assert!(!r.is_loopback());
        assert!(OciRef::parse("reg/pol").is_err());
        assert!(OciRef::parse("oci://reg").is_err());
        assert!(OciRef::parse("oci://reg/Pol").is_err());
        let r = OciRef::parse("oci://[::1]:5000/a/b-c__d.e:v1.0_x").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("[::1]:5000", "a/b-c__d.e", "v1.0_x")
        );
        assert!(r.is_loopback());
        let problem = |s: &str| OciRef::parse(s).unwrap_err().problem;
        assert_eq!(
            problem("oci://127.0.0.1:1/../../x"),
            RefProblem::Traversal("..".into())
        );
        assert_eq!(problem("oci://h/a/./b"), RefProblem::Traversal(".".into()));
        assert_eq!(
            problem("oci://127.0.0.1:99999/x:y"),
            RefProblem::Port("99999".into())
        );
        assert_eq!(problem("oci://h:0/x"), RefProblem::Port("0".into()));
        assert_eq!(problem("oci://h:/x"), RefProblem::Port("".into()));
        assert_eq!(problem("oci://[::1/x"), RefProblem::Brackets);
        assert_eq!(problem("oci://::1]/x"), RefProblem::Brackets);
        assert_eq!(problem("oci://[zz]/x"), RefProblem::Ipv6("zz".into()));
        assert_eq!(problem("oci://user:pw@host/x"), RefProblem::Userinfo);
        assert_eq!(problem("oci://host/x@sha256:ab"), RefProblem::Digest);
        assert_eq!(problem("oci://host//x"), RefProblem::EmptyComponent);
        assert_eq!(problem("oci://host/x/"), RefProblem::EmptyComponent);
        assert_eq!(problem("oci:///x"), RefProblem::NoHost);
        assert_eq!(problem("oci://h_x/x"), RefProblem::Host("h_x".into()));
        assert!(OciRef::parse("oci://h/a--b__c").is_ok());
        assert_eq!(
            problem("oci://h/a___b"),
            RefProblem::Component("a___b".into())
        );
        assert_eq!(problem("oci://h/x:.t"), RefProblem::Tag(".t".into()));
        assert_eq!(
            problem("oci://h/x?y=1"),
            RefProblem::Component("x?y=1".into())
        );
        assert_eq!(
            OciRef::parse("oci://127.0.0.1:99999/x:y")
                .unwrap_err()
                .to_string(),
            "invalid OCI ref \"oci://127.0.0.1:99999/x:y\": port \"99999\" is not a number from 1 to 65535 (expected oci://host[:port]/name[:tag])"
        );
    }

    #[test]
    fn pull_messages() {
        // What a registry can serve wrongly is pinned here; reaching each through a real
        // registry would take hand-made manifests it may refuse to store.
        let r = OciRef::parse("oci://127.0.0.1:5000/org/pol:1.0.0").unwrap();
        let reference = || r.clone();
        let cases = [
            (
                OciError::ImageIndex {
                    reference: reference(),
                },
                "oci://127.0.0.1:5000/org/pol:1.0.0 is an image index, not a policy bundle",
            ),
            (
                OciError::NotAPolicy {
                    reference: reference(),
                    media_type: "application/vnd.oci.image.config.v1+json".into(),
                },
                "oci://127.0.0.1:5000/org/pol:1.0.0 is not a policy bundle (config media type \"application/vnd.oci.image.config.v1+json\", expected application/vnd.autonomy.policy.config.v1+json)",
            ),
            (
                OciError::Layers {
                    reference: reference(),
                },
                "oci://127.0.0.1:5000/org/pol:1.0.0 does not hold exactly one layer of type application/vnd.autonomy.policy.bundle.v1.tar+gzip",
            ),
            (
                OciError::LayerTooBig {
                    reference: reference(),
                    size: -1,
                    limit: bundle::MAX_COMPRESSED,
                },
                "oci://127.0.0.1:5000/org/pol:1.0.0: the bundle layer is -1 bytes; the limit is 16777216",
            ),
            (
                OciError::DigestMismatch {
                    reference: reference(),
                    manifest: "sha256:aa".into(),
                    actual: "sha256:bb".into(),
                },
                "digest mismatch for oci://127.0.0.1:5000/org/pol:1.0.0: the manifest says sha256:aa, the layer hashes to sha256:bb",
            ),
            (
                OciError::SizeMismatch {
                    reference: reference(),
                    manifest: 10,
                    actual: 9,
                },
                "size mismatch for oci://127.0.0.1:5000/org/pol:1.0.0: the manifest says 10 bytes, got 9",
            ),
            (
                OciError::Download {
                    reference: reference(),
                    error: Box::new(OciDistributionError::SpecViolationError(
                        "line one\n   line  two\n\n".into(),
                    )),
                },
                // Lines trimmed and joined; spaces inside a line kept.
                "cannot download oci://127.0.0.1:5000/org/pol:1.0.0: OCI distribution spec violation: line one line  two",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
        }
    }
}
