//! The SSRF range classifier: which IP addresses `tool.http_get` refuses to connect to
//! (unless the allowlist names the address literally).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv4 special-purpose ranges refused, most specific first.
const V4: &[([u8; 4], u8, &str)] = &[
    ([255, 255, 255, 255], 32, "broadcast 255.255.255.255/32"),
    ([0, 0, 0, 0], 32, "unspecified 0.0.0.0/32"),
    ([0, 0, 0, 0], 8, "\"this network\" 0.0.0.0/8"),
    ([10, 0, 0, 0], 8, "private 10.0.0.0/8"),
    (
        [100, 64, 0, 0],
        10,
        "shared address space (CGNAT) 100.64.0.0/10",
    ),
    ([127, 0, 0, 0], 8, "loopback 127.0.0.0/8"),
    (
        [169, 254, 169, 254],
        32,
        "link-local 169.254.0.0/16 (cloud metadata service)",
    ),
    ([169, 254, 0, 0], 16, "link-local 169.254.0.0/16"),
    ([172, 16, 0, 0], 12, "private 172.16.0.0/12"),
    ([192, 0, 0, 0], 24, "IETF protocol assignments 192.0.0.0/24"),
    ([192, 0, 2, 0], 24, "documentation 192.0.2.0/24"),
    ([192, 88, 99, 0], 24, "6to4 relay anycast 192.88.99.0/24"),
    ([192, 168, 0, 0], 16, "private 192.168.0.0/16"),
    ([198, 18, 0, 0], 15, "benchmarking 198.18.0.0/15"),
    ([198, 51, 100, 0], 24, "documentation 198.51.100.0/24"),
    ([203, 0, 113, 0], 24, "documentation 203.0.113.0/24"),
    ([224, 0, 0, 0], 4, "multicast 224.0.0.0/4"),
    ([240, 0, 0, 0], 4, "reserved 240.0.0.0/4"),
];

/// IPv6 special-purpose ranges refused outright, most specific first (the ranges that
/// embed an IPv4 address are handled in code).
const V6: &[([u16; 8], u8, &str)] = &[
    ([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified ::/128"),
    ([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback ::1/128"),
    (
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "local-use NAT64 64:ff9b:1::/48",
    ),
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only 100::/64"),
    (
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "documentation 2001:db8::/32",
    ),
    (
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "IETF protocol assignments 2001::/23 (incl. Teredo, benchmarking)",
    ),
    ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4 2002::/16"),
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation 3fff::/20"),
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique local fc00::/7"),
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local fe80::/10"),
    (
        [0xfec0, 0, 0, 0, 0, 0, 0, 0],
        10,
        "site-local (deprecated) fec0::/10",
    ),
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast ff00::/8"),
];

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    (u128::from(ip) & mask) == (u128::from(Ipv6Addr::from(net)) & mask)
}

fn v4_range(ip: Ipv4Addr) -> Option<&'static str> {
    V4.iter()
        .find(|(net, len, _)| in_v4(ip, *net, *len))
        .map(|(_, _, name)| *name)
}

/// The refused range `ip` is in (a human-readable name with its CIDR), or `None` for an
/// ordinary globally routable unicast address.
///
/// An IPv6 address that embeds an IPv4 one (IPv4-mapped `::ffff:0:0/96`, NAT64
/// `64:ff9b::/96`) is classified by its IPv4 address; IPv4-compatible `::/96` is refused
/// outright (deprecated). Outside the ranges listed, IPv6 must be in global unicast
/// `2000::/3`.
pub(crate) fn refused_range(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => v4_range(v4).map(str::to_string),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_range(v4).map(|r| format!("IPv4-mapped {r}"));
            }
            if in_v6(v6, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
                let [.., a, b, c, d] = v6.octets();
                return v4_range(Ipv4Addr::new(a, b, c, d)).map(|r| format!("NAT64 {r}"));
            }
            if let Some((_, _, name)) = V6.iter().find(|(net, len, _)| in_v6(v6, *net, *len)) {
                return Some((*name).to_string());
            }
            if in_v6(v6, [0; 8], 96) {
                return Some("IPv4-compatible (deprecated) ::/96".to_string());
            }
            if !in_v6(v6, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3) {
                return Some("reserved (outside global unicast 2000::/3)".to_string());
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        let table: &[(&str, Option<&str>)] = &[
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.254", Some("loopback")),
            ("10.1.2.3", Some("private 10.")),
            ("172.16.0.1", Some("private 172.16.")),
            ("172.31.255.255", Some("private 172.16.")),
            ("172.32.0.1", None),
            ("192.168.1.1", Some("private 192.168.")),
            ("169.254.169.254", Some("metadata")),
            ("169.254.1.1", Some("link-local")),
            ("100.64.0.1", Some("CGNAT")),
            ("100.127.255.255", Some("CGNAT")),
            ("100.128.0.1", None),
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("this network")),
            ("224.0.0.1", Some("multicast")),
            ("239.255.255.250", Some("multicast")),
            ("255.255.255.255", Some("broadcast")),
            ("240.0.0.1", Some("reserved")),
            ("192.0.2.1", Some("documentation")),
            ("198.51.100.7", Some("documentation")),
            ("203.0.113.9", Some("documentation")),
            ("198.18.0.1", Some("benchmarking")),
            ("198.19.255.255", Some("benchmarking")),
            ("198.20.0.1", None),
            ("192.0.0.8", Some("IETF")),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("::1", Some("loopback ::1")),
            ("::", Some("unspecified ::")),
            ("fe80::1", Some("link-local fe80")),
            ("fc00::1", Some("unique local")),
            ("fd12:3456::1", Some("unique local")),
            ("fec0::1", Some("site-local")),
            ("ff02::1", Some("multicast ff00")),
            ("::ffff:127.0.0.1", Some("IPv4-mapped loopback")),
            ("::ffff:169.254.169.254", Some("IPv4-mapped link-local")),
            ("::ffff:10.0.0.1", Some("IPv4-mapped private")),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some("IPv4-compatible")),
            ("::8.8.8.8", Some("IPv4-compatible")),
            ("64:ff9b::7f00:1", Some("NAT64 loopback")),
            ("64:ff9b::a9fe:a9fe", Some("NAT64 link-local")),
            ("64:ff9b::808:808", None),
            ("64:ff9b:1::1", Some("local-use NAT64")),
            ("100::1", Some("discard")),
            ("2001:db8::1", Some("documentation")),
            ("2001::1", Some("IETF")),
            ("2002:7f00:1::1", Some("6to4")),
            ("3fff::1", Some("documentation")),
            ("4000::1", Some("reserved")),
            ("2606:4700::1111", None),
            ("2a00:1450:4001::200e", None),
        ];
        for (addr, want) in table {
            let ip: IpAddr = addr.parse().unwrap();
            let got = refused_range(ip);
            match (want, &got) {
                (None, None) => {}
                (Some(w), Some(g)) if g.contains(w) => {}
                _ => panic!("{addr}: expected {want:?}, got {got:?}"),
            }
        }
    }
}
