//! `tool.http_get`: one GET to an allowlisted endpoint, with the SSRF guard.
//!
//! - `params.endpoint`: an absolute `http`/`https` URL without userinfo.
//! - Its `host[:port]` must match the allowlist (see [`super::allowlist`]).
//! - A host name is resolved by [`CheckingResolver`], which drops every address in a
//!   special-purpose range (loopback, private, link-local, metadata, ...; see
//!   [`super::ssrf`]) unless the allowlist names that IP literally, and hands reqwest only
//!   the addresses it checked, so the address checked is the address connected (no DNS
//!   rebinding). If no address is left, the call is a runtime deny.
//! - An IP-literal host is connected as is: the allowlist already names it literally.
//! - Redirects: at most `max_redirects`, each target must be `http`/`https` and match the
//!   allowlist (else a runtime deny; the target never receives a request). Too many
//!   redirects is an upstream failure.
//! - The body is streamed and kept up to `max_body` bytes; past that the output is
//!   truncated (`"truncated": true`), not refused.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde_json::{Map, Value, json};

use super::allowlist::AllowHost;
use super::ssrf::refused_range;
use super::{Allowlist, ToolOutcome};

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("autonomy/", env!("CARGO_PKG_VERSION"));

/// Limits for `http_get`.
#[derive(Debug, Clone)]
pub struct HttpGetLimits {
    /// Total time for the request including redirects.
    pub timeout: std::time::Duration,
    /// Largest response body kept.
    pub max_body: usize,
    /// Most redirects followed.
    pub max_redirects: usize,
}

impl Default for HttpGetLimits {
    fn default() -> Self {
        HttpGetLimits {
            timeout: std::time::Duration::from_secs(10),
            max_body: 1024 * 1024,
            max_redirects: 5,
        }
    }
}

/// A refusal by the SSRF guard or the redirect policy: becomes a runtime deny.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Denied(String);

/// Name resolution failed (or found nothing): becomes an upstream failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ResolveFailed(String);

/// More redirects than allowed: becomes an upstream failure.
#[derive(Debug, thiserror::Error)]
#[error("too many redirects (more than {0})")]
struct TooManyRedirects(usize);

/// The `http_get` executor.
pub struct HttpGet {
    allowlist: Arc<Allowlist>,
    limits: HttpGetLimits,
    /// Built once; `Err` (why) if no TLS configuration could be built.
    client: Result<reqwest::Client, String>,
}

impl HttpGet {
    /// Creates the executor (and its HTTP client).
    pub fn new(allowlist: Allowlist, limits: HttpGetLimits) -> Self {
        let allowlist = Arc::new(allowlist);
        let client = build_client(&allowlist, &limits);
        if let Err(e) = &client {
            tracing::error!("tool.http_get: cannot build the HTTP client: {e}");
        }
        HttpGet {
            allowlist,
            limits,
            client,
        }
    }

    /// The allowlist in force.
    pub fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    /// Runs one GET.
    pub async fn get(&self, params: &Map<String, Value>) -> ToolOutcome {
        let url = match parse_endpoint(params) {
            Ok(u) => u,
            Err(msg) => return ToolOutcome::BadParams(msg),
        };
        let (Some(host), Some(port)) = (AllowHost::from_url(&url), url.port_or_known_default())
        else {
            return ToolOutcome::BadParams("tool.http_get: params.endpoint has no host".into());
        };
        if !self.allowlist.allows(url.scheme(), &host, port) {
            return ToolOutcome::RuntimeDeny(format!(
                "endpoint {host}:{port} is not in the allowlist (--allowed-domains)"
            ));
        }
        let client = match &self.client {
            Ok(c) => c,
            Err(e) => {
                return ToolOutcome::Upstream(format!("{host}: HTTP client unavailable: {e}"));
            }
        };
        let timeout = self.limits.timeout;
        let run = fetch(client, url, self.limits.max_body);
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => classify_error(&e, &host, timeout),
            Err(_) => ToolOutcome::Upstream(format!("{host}: timed out after {timeout:?}")),
        }
    }
}

/// The GET itself: status, content type and the body up to `max_body`.
async fn fetch(
    client: &reqwest::Client,
    url: url::Url,
    max_body: usize,
) -> Result<ToolOutcome, reqwest::Error> {
    let mut resp = client.get(url).send().await?;
    // reqwest hands back, unfollowed, a redirect whose target it cannot fetch (`file:`,
    // `data:`): that is still a redirect to a refused scheme, not an answer.
    if let Some(scheme) = refused_redirect_scheme(&resp) {
        return Ok(ToolOutcome::RuntimeDeny(format!(
            "redirect to scheme {scheme}: refused (http and https only)"
        )));
    }
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body: Vec<u8> = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = resp.chunk().await? {
        let room = max_body - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    if truncated {
        let cut = incomplete_utf8_tail(&body);
        body.truncate(body.len() - cut);
    }
    Ok(ToolOutcome::Output(json!({
        "status": status,
        "content_type": content_type,
        "body": String::from_utf8_lossy(&body),
        "truncated": truncated,
    })))
}

/// The scheme of a redirect's `Location` when it is neither http nor https.
fn refused_redirect_scheme(resp: &reqwest::Response) -> Option<String> {
    if !resp.status().is_redirection() {
        return None;
    }
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)?
        .to_str()
        .ok()?;
    let target = resp.url().join(location).ok()?;
    (!matches!(target.scheme(), "http" | "https")).then(|| target.scheme().to_string())
}

/// How many trailing bytes form an incomplete UTF-8 sequence (cut by truncation).
fn incomplete_utf8_tail(b: &[u8]) -> usize {
    for i in 1..=b.len().min(3) {
        let c = b[b.len() - i];
        if c & 0xC0 == 0x80 {
            continue; // continuation byte
        }
        let need = match c {
            0xF0..=0xFF => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        return if need > i { i } else { 0 };
    }
    0
}

/// `params.endpoint` as an absolute http/https URL without userinfo.
pub(crate) fn parse_endpoint(params: &Map<String, Value>) -> Result<url::Url, String> {
    let v = params
        .get("endpoint")
        .ok_or("tool.http_get: params.endpoint is required")?;
    let s = v
        .as_str()
        .ok_or("tool.http_get: params.endpoint must be a string")?;
    let url = url::Url::parse(s)
        .map_err(|e| format!("tool.http_get: params.endpoint is not an absolute URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "tool.http_get: params.endpoint must be an http or https URL, not {}:",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("tool.http_get: params.endpoint must not contain userinfo (user:pass@)".into());
    }
    if AllowHost::from_url(&url).is_none() {
        return Err("tool.http_get: params.endpoint has no host".into());
    }
    Ok(url)
}

/// A reqwest error as the tool's outcome: our own refusals (found through the `source()`
/// chain) are runtime denies, the rest upstream failures.
fn classify_error(
    err: &reqwest::Error,
    endpoint_host: &AllowHost,
    timeout: std::time::Duration,
) -> ToolOutcome {
    let host = err
        .url()
        .and_then(AllowHost::from_url)
        .unwrap_or_else(|| endpoint_host.clone());
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(d) = e.downcast_ref::<Denied>() {
            return ToolOutcome::RuntimeDeny(d.0.clone());
        }
        if let Some(r) = e.downcast_ref::<ResolveFailed>() {
            return ToolOutcome::Upstream(format!("{host}: {r}"));
        }
        if let Some(t) = e.downcast_ref::<TooManyRedirects>() {
            return ToolOutcome::Upstream(format!("{host}: {t}"));
        }
        cur = e.source();
    }
    if err.is_timeout() {
        return ToolOutcome::Upstream(format!("{host}: timed out after {timeout:?}"));
    }
    let what = if err.is_connect() {
        "connect failed"
    } else if err.is_body() || err.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    // The innermost cause is usually the telling one (e.g. "Connection refused").
    let mut causes = Vec::new();
    let mut cur = err.source();
    while let Some(e) = cur {
        causes.push(e.to_string());
        cur = e.source();
    }
    match causes.last() {
        Some(c) => ToolOutcome::Upstream(format!("{host}: {what}: {c}")),
        None => ToolOutcome::Upstream(format!("{host}: {what}")),
    }
}

/// Resolves host names and returns only the addresses that pass the SSRF check.
struct CheckingResolver {
    allowlist: Arc<Allowlist>,
}

impl Resolve for CheckingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowlist = self.allowlist.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(ResolveFailed(format!("DNS resolution failed: {e}"))))?
                .collect();
            let checked = check_addrs(&host, addrs, &allowlist)?;
            Ok(Box::new(checked.into_iter()) as Addrs)
        })
    }
}

/// The addresses of `host` that may be connected to: not in a refused range, or named
/// literally by the allowlist. None left is a refusal (or a resolution failure if there
/// were none at all).
fn check_addrs(
    host: &str,
    addrs: Vec<SocketAddr>,
    allowlist: &Allowlist,
) -> Result<Vec<SocketAddr>, Box<dyn StdError + Send + Sync>> {
    let mut ok: Vec<SocketAddr> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for a in addrs {
        let ip = a.ip();
        match refused_range(ip) {
            Some(range) if !allowlist.exempts(host, ip) => {
                let r = format!("{ip} ({range})");
                if !refused.contains(&r) {
                    refused.push(r);
                }
            }
            _ => {
                if !ok.contains(&a) {
                    ok.push(a);
                }
            }
        }
    }
    if !ok.is_empty() {
        return Ok(ok);
    }
    if refused.is_empty() {
        return Err(Box::new(ResolveFailed(
            "DNS resolution found no addresses".into(),
        )));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    Err(Box::new(Denied(format!(
        "endpoint host {host} resolves to {}: special-purpose addresses are refused \
         unless --allowed-domains names the IP literally",
        refused.join(", ")
    ))))
}

/// The redirect policy: at most `max` redirects, each to an allowlisted http/https target.
fn redirect_policy(allowlist: Arc<Allowlist>, max: usize) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max {
            return attempt.error(TooManyRedirects(max));
        }
        let target = attempt.url();
        if !matches!(target.scheme(), "http" | "https") {
            let msg = format!(
                "redirect to scheme {}: refused (http and https only)",
                target.scheme()
            );
            return attempt.error(Denied(msg));
        }
        let (Some(host), Some(port)) =
            (AllowHost::from_url(target), target.port_or_known_default())
        else {
            return attempt.error(Denied("redirect to a URL without a host refused".into()));
        };
        if !target.username().is_empty() || target.password().is_some() {
            let msg = format!("redirect to {host}:{port} with userinfo (user:pass@) refused");
            return attempt.error(Denied(msg));
        }
        if !allowlist.allows(target.scheme(), &host, port) {
            let msg = format!(
                "redirect target {host}:{port} is not in the allowlist (--allowed-domains)"
            );
            return attempt.error(Denied(msg));
        }
        attempt.follow()
    })
}

/// The client: no proxy, no decompression, fixed User-Agent, the checking resolver, the
/// allowlist redirect policy, the total timeout. TLS: rustls with `ring`, the platform's
/// roots, or the bundled webpki roots if the platform has none.
fn build_client(
    allowlist: &Arc<Allowlist>,
    limits: &HttpGetLimits,
) -> Result<reqwest::Client, String> {
    // Fails only if a provider is already installed: then that one is used.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = || {
        reqwest::Client::builder()
            .no_proxy()
            .user_agent(USER_AGENT)
            .timeout(limits.timeout)
            .connect_timeout(limits.timeout)
            .referer(false)
            .redirect(redirect_policy(allowlist.clone(), limits.max_redirects))
            .dns_resolver(Arc::new(CheckingResolver {
                allowlist: allowlist.clone(),
            }))
    };
    match builder().build() {
        Ok(c) => Ok(c),
        Err(platform) => {
            tracing::warn!(
                "tool.http_get: platform TLS roots unavailable ({platform}); using bundled webpki roots"
            );
            let roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .filter_map(|c| reqwest::Certificate::from_der(c.as_ref()).ok());
            builder()
                .tls_certs_only(roots)
                .build()
                .map_err(|e| format!("{platform}; with bundled roots: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_tail() {
        assert_eq!(incomplete_utf8_tail(b"abc"), 0);
        assert_eq!(incomplete_utf8_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_utf8_tail(&"é".as_bytes()[..1]), 1);
        assert_eq!(incomplete_utf8_tail(&"€".as_bytes()[..2]), 2);
        assert_eq!(incomplete_utf8_tail(&"😀".as_bytes()[..3]), 3);
        assert_eq!(incomplete_utf8_tail("😀".as_bytes()), 0);
    }

    #[test]
    fn check_addrs_filters_and_denies() {
        let sa = |s: &str| -> SocketAddr { SocketAddr::new(s.parse().unwrap(), 0) };
        let none = Allowlist::empty();
        let e = check_addrs("localhost.", vec![sa("127.0.0.1"), sa("::1")], &none).unwrap_err();
        let d = e.downcast_ref::<Denied>().expect("denied");
        assert_eq!(
            d.0,
            "endpoint host localhost resolves to 127.0.0.1 (loopback 127.0.0.0/8), ::1 \
             (loopback ::1/128): special-purpose addresses are refused unless \
             --allowed-domains names the IP literally"
        );
        // Mixed: only the public address survives.
        let ok = check_addrs("mixed", vec![sa("10.0.0.1"), sa("8.8.8.8")], &none).unwrap();
        assert_eq!(ok, vec![sa("8.8.8.8")]);
        // Named literally (for every port the host is allowed on): allowed.
        let lit = Allowlist::parse("127.0.0.1,localhost").unwrap();
        let ok = check_addrs("localhost", vec![sa("127.0.0.1"), sa("::1")], &lit).unwrap();
        assert_eq!(ok, vec![sa("127.0.0.1")]);
        // Named for another port only: refused.
        let other = Allowlist::parse("127.0.0.1:8080,localhost:9000").unwrap();
        let e = check_addrs("localhost", vec![sa("127.0.0.1")], &other).unwrap_err();
        assert!(e.downcast_ref::<Denied>().is_some());
        // Nothing at all: a resolution failure.
        let e = check_addrs("x", vec![], &none).unwrap_err();
        assert!(e.downcast_ref::<ResolveFailed>().is_some());
    }

    #[test]
    fn bad_params() {
        let h = HttpGet::new(Allowlist::empty(), HttpGetLimits::default());
        assert!(h.client.is_ok(), "{:?}", h.client.as_ref().err());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (p, want) in [
            (json!({}), "params.endpoint is required"),
            (json!({"endpoint": 3}), "must be a string"),
            (json!({"endpoint": "/relative"}), "not an absolute URL"),
            (json!({"endpoint": "ftp://example.com/"}), "http or https"),
            (json!({"endpoint": "file:///etc/passwd"}), "http or https"),
            (
                json!({"endpoint": "http://user:pw@example.com/"}),
                "userinfo",
            ),
            (json!({"endpoint": "http://user@example.com/"}), "userinfo"),
        ] {
            let out = rt.block_on(h.get(p.as_object().unwrap()));
            match out {
                ToolOutcome::BadParams(m) => assert!(m.contains(want), "{p}: {m}"),
                o => panic!("{p}: expected BadParams, got {o:?}"),
            }
        }
    }
}
