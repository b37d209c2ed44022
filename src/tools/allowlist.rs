//! The `tool.http_get` endpoint allowlist (`--allowed-domains`).
//!
//! Entries (comma-separated): `host`, `host:port`, `[v6]`, `[v6]:port`, a bare IPv6
//! address, or an `http`/`https` URL (`https://api.example.com`,
//! `http://127.0.0.1:8080/`). Hosts compare case-insensitively, a trailing dot is ignored.
//!
//! Matching (for an endpoint `scheme://host[:port]`, its port defaulting to 80 for
//! `http` and 443 for `https`):
//! - an entry with a port matches exactly that host and port (either scheme);
//! - an entry without a port matches that host on the scheme's default port only
//!   (`example.com` matches `http://example.com/` and `https://example.com/`, not
//!   `https://example.com:8443/`);
//! - a URL entry without a port takes its scheme's default port
//!   (`https://api.example.com` is `api.example.com:443`).
//!
//! A hostname entry never matches an IP-literal endpoint and vice versa.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// The host part of an entry or an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AllowHost {
    /// A DNS name: lower case, ASCII (IDNA), no trailing dot.
    Domain(String),
    /// An IP literal.
    Ip(IpAddr),
}

impl fmt::Display for AllowHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowHost::Domain(d) => f.write_str(d),
            AllowHost::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            AllowHost::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

impl AllowHost {
    /// The host of a parsed URL, normalised like allowlist entries.
    pub(crate) fn from_url(url: &url::Url) -> Option<AllowHost> {
        match url.host()? {
            url::Host::Domain(d) => {
                let d = d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase();
                if d.is_empty() {
                    None
                } else {
                    Some(AllowHost::Domain(d))
                }
            }
            url::Host::Ipv4(a) => Some(AllowHost::Ip(IpAddr::V4(a))),
            url::Host::Ipv6(a) => Some(AllowHost::Ip(IpAddr::V6(a))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    host: AllowHost,
    /// `None`: the scheme's default port.
    port: Option<u16>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// A parsed allowlist.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    entries: Vec<Entry>,
}

/// A bad allowlist entry.
#[derive(Debug, thiserror::Error)]
#[error("bad --allowed-domains entry {entry:?}: {why}")]
pub struct AllowlistError {
    /// The entry.
    pub entry: String,
    /// Why.
    pub why: String,
}

fn bad(entry: &str, why: impl Into<String>) -> AllowlistError {
    AllowlistError {
        entry: entry.to_string(),
        why: why.into(),
    }
}

/// The default port of `http` / `https`.
pub(crate) fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl Allowlist {
    /// No entries: every `http_get` is refused.
    pub fn empty() -> Self {
        Allowlist::default()
    }

    /// Parses a comma-separated list of `host`, `host:port` or URLs.
    ///
    /// An empty (or all-blank) list is the empty allowlist; an empty item inside a
    /// non-empty list (`a,,b`, `a,`) is an error.
    pub fn parse(list: &str) -> Result<Self, AllowlistError> {
        if list.trim().is_empty() {
            return Ok(Allowlist::empty());
        }
        let mut entries: Vec<Entry> = Vec::new();
        for raw in list.split(',') {
            let e = parse_entry(raw.trim())?;
            if !entries.contains(&e) {
                entries.push(e);
            }
        }
        Ok(Allowlist { entries })
    }

    /// The normalised entries (`host`, `host:port`, `[v6]`, `[v6]:port`), for the policy
    /// input.
    pub fn entries(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.to_string()).collect()
    }

    /// Whether `host` on `port` (the URL's scheme `scheme`) is allowed.
    pub(crate) fn allows(&self, scheme: &str, host: &AllowHost, port: u16) -> bool {
        let Some(default) = default_port(scheme) else {
            return false;
        };
        self.entries
            .iter()
            .any(|e| e.host == *host && e.port.unwrap_or(default) == port)
    }

    /// Whether `url` (http/https, no userinfo) is allowed.
    #[cfg(test)]
    pub(crate) fn allows_url(&self, url: &url::Url) -> bool {
        let (Some(host), Some(port)) = (AllowHost::from_url(url), url.port_or_known_default())
        else {
            return false;
        };
        self.allows(url.scheme(), &host, port)
    }

    /// Whether an entry names `ip` literally for `port` (an IP entry without a port names it
    /// on every port).
    fn names_ip_on(&self, ip: IpAddr, port: u16) -> bool {
        let ip = canonical_ip(ip);
        self.entries.iter().any(|e| {
            matches!(e.host, AllowHost::Ip(a) if canonical_ip(a) == ip)
                && e.port.is_none_or(|p| p == port)
        })
    }

    /// Whether the SSRF guard may let the host name `host` connect to the special-purpose
    /// address `ip`: only when the allowlist names that IP for every port it allows `host` on.
    /// The resolver does not learn which port a connection is for, so the exemption must hold
    /// for all of them (`127.0.0.1:8080,localhost:9000` does not open `localhost:9000`).
    pub(crate) fn exempts(&self, host: &str, ip: IpAddr) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let mut ports = self
            .entries
            .iter()
            .filter(|e| matches!(&e.host, AllowHost::Domain(d) if *d == host))
            .flat_map(|e| match e.port {
                Some(p) => vec![p],
                None => vec![80, 443],
            })
            .peekable();
        ports.peek().is_some() && ports.all(|p| self.names_ip_on(ip, p))
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as its IPv4 address; everything else as is.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn parse_entry(entry: &str) -> Result<Entry, AllowlistError> {
    if entry.is_empty() {
        return Err(bad(entry, "empty entry"));
    }
    if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(entry, "contains whitespace"));
    }
    if entry.contains("://") {
        return parse_url_entry(entry);
    }
    if entry.contains(['/', '?', '#']) {
        return Err(bad(
            entry,
            "a path, query or fragment is only accepted in a URL entry (and only `/`)",
        ));
    }
    if entry.contains('@') {
        return Err(bad(entry, "userinfo (`user@`) is not allowed"));
    }
    // `[v6]` or `[v6]:port`
    if let Some(rest) = entry.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(bad(entry, "missing `]` after the IPv6 address"));
        };
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| bad(entry, format!("{inside:?} is not an IPv6 address")))?;
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(parse_port(entry, p)?),
                None => return Err(bad(entry, "unexpected text after `]`")),
            },
        };
        return Ok(Entry {
            host: AllowHost::Ip(IpAddr::V6(ip)),
            port,
        });
    }
    // Bare IPv6 (no port possible).
    if entry.matches(':').count() > 1 {
        let ip: Ipv6Addr = entry.parse().map_err(|_| {
            bad(
                entry,
                "not an IPv6 address (write an IPv6 address with a port as `[addr]:port`)",
            )
        })?;
        return Ok(Entry {
            host: AllowHost::Ip(IpAddr::V6(ip)),
            port: None,
        });
    }
    let (host, port) = match entry.split_once(':') {
        Some((h, p)) => (h, Some(parse_port(entry, p)?)),
        None => (entry, None),
    };
    Ok(Entry {
        host: parse_host(entry, host)?,
        port,
    })
}

fn parse_port(entry: &str, p: &str) -> Result<u16, AllowlistError> {
    if p.is_empty() {
        return Err(bad(entry, "empty port"));
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(entry, format!("port {p:?} is not a number")));
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad(entry, format!("port {p} is not in 1..=65535"))),
        Ok(n) => Ok(n),
    }
}

/// A host name or IPv4 literal (IPv6 is handled by the caller).
fn parse_host(entry: &str, host: &str) -> Result<AllowHost, AllowlistError> {
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    if trimmed.is_empty() {
        return Err(bad(entry, "empty host"));
    }
    if trimmed.contains('*') {
        return Err(bad(entry, "wildcards are not supported"));
    }
    match url::Host::parse(trimmed) {
        Ok(url::Host::Ipv4(a)) => Ok(AllowHost::Ip(IpAddr::V4(a))),
        Ok(url::Host::Ipv6(a)) => Ok(AllowHost::Ip(IpAddr::V6(a))),
        Ok(url::Host::Domain(d)) => {
            let d = d.to_ascii_lowercase();
            check_domain(entry, &d)?;
            Ok(AllowHost::Domain(d))
        }
        Err(e) => Err(bad(entry, format!("invalid host {host:?}: {e}"))),
    }
}

fn check_domain(entry: &str, d: &str) -> Result<(), AllowlistError> {
    if d.len() > 253 {
        return Err(bad(entry, "host name longer than 253 characters"));
    }
    for label in d.split('.') {
        if label.is_empty() {
            return Err(bad(entry, "empty label in host name"));
        }
        if label.len() > 63 {
            return Err(bad(entry, "host name label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(
                entry,
                format!("invalid character in host name label {label:?}"),
            ));
        }
    }
    Ok(())
}

fn parse_url_entry(entry: &str) -> Result<Entry, AllowlistError> {
    let url = url::Url::parse(entry).map_err(|e| bad(entry, format!("invalid URL: {e}")))?;
    let scheme = url.scheme();
    if default_port(scheme).is_none() {
        return Err(bad(
            entry,
            format!("unsupported scheme {scheme:?} (http or https only)"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(entry, "userinfo (`user:pass@`) is not allowed"));
    }
    if !(url.path().is_empty() || url.path() == "/") {
        return Err(bad(
            entry,
            format!("a URL entry cannot have a path ({:?})", url.path()),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(entry, "a URL entry cannot have a query or fragment"));
    }
    let Some(host) = AllowHost::from_url(&url) else {
        return Err(bad(entry, "empty host"));
    };
    if let AllowHost::Domain(d) = &host {
        if d.contains('*') {
            return Err(bad(entry, "wildcards are not supported"));
        }
        check_domain(entry, d)?;
    }
    let Some(port) = url.port_or_known_default() else {
        return Err(bad(entry, "no port"));
    };
    Ok(Entry {
        host,
        port: Some(port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        let a = Allowlist::parse(
            " API.Example.COM. , example.org:8080,https://secure.example.net,\
             http://127.0.0.1:8080/,[::1]:9000,::2,[fe80::1],10.0.0.1",
        )
        .unwrap();
        assert_eq!(
            a.entries(),
            vec![
                "api.example.com",
                "example.org:8080",
                "secure.example.net:443",
                "127.0.0.1:8080",
                "[::1]:9000",
                "[::2]",
                "[fe80::1]",
                "10.0.0.1",
            ]
        );
    }

    #[test]
    fn empty_list_is_empty() {
        assert!(Allowlist::parse("").unwrap().entries().is_empty());
        assert!(Allowlist::parse("  ").unwrap().entries().is_empty());
        assert!(Allowlist::empty().entries().is_empty());
        assert!(!Allowlist::empty().allows_url(&url("https://example.com/")));
    }

    #[test]
    fn duplicates_collapse() {
        let a = Allowlist::parse("a.com,A.com.,a.com:80,http://a.com").unwrap();
        assert_eq!(a.entries(), vec!["a.com", "a.com:80"]);
    }

    #[test]
    fn rejects_bad_entries() {
        for (list, why) in [
            ("a.com,,b.com", "empty entry"),
            ("a.com,", "empty entry"),
            (":80", "empty host"),
            (".", "empty host"),
            ("a.com:", "empty port"),
            ("a.com:http", "not a number"),
            ("a.com:0", "not in 1..=65535"),
            ("a.com:65536", "not in 1..=65535"),
            ("a.com:-1", "not a number"),
            ("ftp://a.com", "unsupported scheme"),
            ("file:///etc/passwd", "unsupported scheme"),
            ("https://a.com/path", "cannot have a path"),
            ("https://a.com/?q=1", "query or fragment"),
            ("https://u:p@a.com", "userinfo"),
            ("u@a.com", "userinfo"),
            ("a.com/path", "only accepted in a URL entry"),
            ("*.a.com", "wildcards"),
            ("a..com", "empty label"),
            ("a b.com", "whitespace"),
            ("a!.com", "invalid character"),
            ("[::1", "missing `]`"),
            ("[nope]:80", "not an IPv6 address"),
            ("[::1]80", "unexpected text"),
            ("1:2:3", "not an IPv6 address"),
            ("https://", "invalid URL"),
        ] {
            let e = Allowlist::parse(list).expect_err(list);
            assert!(
                e.to_string().contains(why),
                "{list:?}: got {e}, expected {why:?}"
            );
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn error_names_entry() {
        let e = Allowlist::parse("good.com, bad.com:99999").unwrap_err();
        assert_eq!(e.entry, "bad.com:99999");
        assert_eq!(
            e.to_string(),
            "bad --allowed-domains entry \"bad.com:99999\": port 99999 is not in 1..=65535"
        );
    }

    #[test]
    fn matching_rules() {
        let a = Allowlist::parse(
            "plain.com,ported.com:8080,https://tls.com,http://web.com:81,127.0.0.1:3000,[::1]:4000",
        )
        .unwrap();
        let yes = [
            "http://plain.com/",
            "https://plain.com/x",
            "http://PLAIN.com./",
            "https://plain.com:443/",
            "http://ported.com:8080/",
            "https://ported.com:8080/",
            "https://tls.com/",
            "http://tls.com:443/",
            "http://web.com:81/",
            "http://127.0.0.1:3000/",
            "http://[::1]:4000/",
        ];
        let no = [
            "http://plain.com:8080/",
            "https://plain.com:80/",
            "http://sub.plain.com/",
            "http://ported.com/",
            "https://ported.com/",
            "http://tls.com/",
            "http://web.com/",
            "http://127.0.0.1/",
            "http://127.0.0.1:3001/",
            "http://localhost:3000/",
            "http://[::1]:3000/",
            "ftp://plain.com/",
        ];
        for u in yes {
            assert!(a.allows_url(&url(u)), "{u} should be allowed");
        }
        for u in no {
            assert!(!a.allows_url(&url(u)), "{u} should not be allowed");
        }
    }

    #[test]
    fn ip_exemption_holds_only_for_the_ports_it_names() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = Allowlist::parse("127.0.0.1:80,127.0.0.1:443,localhost,[fe80::1]").unwrap();
        // localhost is allowed on 80 and 443; 127.0.0.1 is named on both.
        assert!(a.exempts("localhost", ip("127.0.0.1")));
        assert!(a.exempts("LocalHost.", ip("::ffff:127.0.0.1")));
        assert!(!a.exempts("localhost", ip("::1")));
        assert!(!a.exempts("localhost", ip("127.0.0.2")));
        // A host the allowlist does not name is never exempt.
        assert!(!a.exempts("other", ip("127.0.0.1")));

        // The IP named for another port does not exempt it for this host's port.
        let a = Allowlist::parse("127.0.0.1:19001,localhost:19002").unwrap();
        assert!(!a.exempts("localhost", ip("127.0.0.1")));
        let a = Allowlist::parse("127.0.0.1:19002,localhost:19002").unwrap();
        assert!(a.exempts("localhost", ip("127.0.0.1")));
        // An IP entry without a port names it on every port.
        let a = Allowlist::parse("127.0.0.1,localhost:19002").unwrap();
        assert!(a.exempts("localhost", ip("127.0.0.1")));
        // A host allowed on two ports needs the IP named on both.
        let a = Allowlist::parse("127.0.0.1:19002,localhost:19002,localhost:19003").unwrap();
        assert!(!a.exempts("localhost", ip("127.0.0.1")));
    }
}
