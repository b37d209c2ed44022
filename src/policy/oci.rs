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
use oci_client::manifest::OciManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use super::bundle::{self, Bundle};

/// Config media type of a policy artifact.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.autonomy.policy.config.v1+json";
/// Layer media type: the bundle `.tar.gz`.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.autonomy.policy.bundle.v1.tar+gzip";

/// `oci://host[:port]/name[:tag]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRef {
    /// `host[:port]`.
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

impl OciRef {
    /// Parses `oci://host[:port]/name[:tag]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("invalid OCI ref {s:?}: {why} (expected oci://host[:port]/name[:tag])")
        };
        let rest = s
            .strip_prefix("oci://")
            .ok_or_else(|| bad("missing oci://"))?;
        if rest.contains('@') {
            return Err(bad("digest refs are not supported; use a tag"));
        }
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no repository name"))?;
        if registry.is_empty()
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        {
            return Err(bad("bad registry host"));
        }
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (path, "latest"),
        };
        if repository.is_empty()
            || repository.starts_with('/')
            || repository.ends_with('/')
            || repository.contains("//")
            || !repository
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
        {
            return Err(bad("repository names use lower-case a-z, 0-9, . _ - and /"));
        }
        if tag.is_empty()
            || tag.len() > 128
            || !tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(bad("bad tag"));
        }
        Ok(OciRef {
            registry: registry.to_string(),
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

fn client(r: &OciRef, insecure: bool) -> Result<Client, String> {
    if insecure && !r.is_loopback() {
        return Err(format!(
            "--insecure (plain HTTP) is only allowed for loopback registries, not {}",
            r.registry
        ));
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
    Client::try_from(cfg).map_err(|e| format!("cannot set up the OCI client: {e}"))
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
pub async fn push(bytes: &[u8], b: &Bundle, r: &OciRef, insecure: bool) -> Result<Pushed, String> {
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
        serde_json::to_vec(&config).map_err(|e| e.to_string())?,
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
        .map_err(|e| format!("push to {r} failed: {}", one_line(&e.to_string())))?;
    Ok(Pushed {
        digest: sha256(bytes),
        manifest_url: resp.manifest_url,
    })
}

/// Pulls the bundle bytes from `r`, verifying media types, size and digest.
pub async fn pull(r: &OciRef, insecure: bool) -> Result<(Vec<u8>, String), String> {
    let c = client(r, insecure)?;
    let reference = r.reference();
    let (manifest, _digest) = c
        .pull_manifest(&reference, &RegistryAuth::Anonymous)
        .await
        .map_err(|e| format!("cannot fetch {r}: {}", one_line(&e.to_string())))?;
    let m = match manifest {
        OciManifest::Image(m) => m,
        OciManifest::ImageIndex(_) => {
            return Err(format!("{r} is an image index, not a policy bundle"));
        }
    };
    if m.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(format!(
            "{r} is not a policy bundle (config media type {:?}, expected {CONFIG_MEDIA_TYPE})",
            m.config.media_type
        ));
    }
    let layer = match m.layers.as_slice() {
        [l] if l.media_type == LAYER_MEDIA_TYPE => l.clone(),
        _ => {
            return Err(format!(
                "{r} does not hold exactly one layer of type {LAYER_MEDIA_TYPE}"
            ));
        }
    };
    if layer.size < 0 || layer.size as u64 > bundle::MAX_COMPRESSED {
        return Err(format!(
            "{r}: the bundle layer is {} bytes; the limit is {}",
            layer.size,
            bundle::MAX_COMPRESSED
        ));
    }
    let mut w = CapWriter {
        buf: Vec::with_capacity(layer.size as usize),
        cap: layer.size as usize,
    };
    c.pull_blob(&reference, &layer, &mut w)
        .await
        .map_err(|e| format!("cannot download {r}: {}", one_line(&e.to_string())))?;
    let out = w.buf;
    let got = sha256(&out);
    if got != layer.digest {
        return Err(format!(
            "digest mismatch for {r}: the manifest says {}, the layer hashes to {got}",
            layer.digest
        ));
    }
    if out.len() as i64 != layer.size {
        return Err(format!(
            "size mismatch for {r}: the manifest says {} bytes, got {}",
            layer.size,
            out.len()
        ));
    }
    Ok((out, got))
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

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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
    }
}
