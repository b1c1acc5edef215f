//! Whose connection is this: the client address the per-address limits
//! count, which is the TCP peer unless that peer is a trusted reverse
//! proxy, and then the one address that proxy put in the configured header.
//!
//! A header is believed only from the peers in `trusted_proxies`: from
//! anyone else it is ignored, or a client could name any address it likes
//! and never meet its limits. In a list such as `X-Forwarded-For: a, b, c`
//! each proxy appends the address it got the request from, so the list is
//! read from the right: trusted proxies are skipped and the first address
//! that is not one is the client (what a client wrote itself sits further
//! left and is never reached).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use hyper::header::{HeaderMap, HeaderName};

/// An address range: `10.0.0.0/8`, `::1/128`, or one address (`127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct AddrRange {
    base: IpAddr,
    prefix: u8,
}

impl AddrRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, ip.to_canonical()) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                prefix_eq(base.to_bits().into(), ip.to_bits().into(), self.prefix, 32)
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                prefix_eq(base.to_bits(), ip.to_bits(), self.prefix, 128)
            }
            _ => false,
        }
    }

    /// Loopback, IPv4 and IPv6.
    pub fn loopback() -> Vec<AddrRange> {
        vec![
            "127.0.0.0/8".parse().expect("valid range"),
            "::1".parse().expect("valid range"),
        ]
    }
}

/// Whether the first `prefix` of `width` bits of `a` and `b` agree.
fn prefix_eq(a: u128, b: u128, prefix: u8, width: u32) -> bool {
    let shift = width - u32::from(prefix);
    shift >= width || (a >> shift) == (b >> shift)
}

impl FromStr for AddrRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("{text:?} is not an address or a range (like 10.0.0.1, 10.0.0.0/8 or fd00::/8)")
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let base = IpAddr::from_str(addr.trim())
            .map_err(|_| bad())?
            .to_canonical();
        let width = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
        };
        if prefix > width {
            return Err(bad());
        }
        Ok(Self { base, prefix })
    }
}

impl TryFrom<String> for AddrRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// Where the client address comes from behind a reverse proxy.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxy {
    /// The header the proxies set (`x-forwarded-for`, `x-real-ip`, ...);
    /// `None`: always the TCP peer.
    pub header: Option<HeaderName>,
    /// Peers whose header is believed.
    pub proxies: Vec<AddrRange>,
}

impl TrustedProxy {
    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.proxies.iter().any(|range| range.contains(ip))
    }

    /// The client behind a connection from `peer` that sent `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        let Some(name) = &self.header else {
            return peer;
        };
        if !self.is_trusted(peer) {
            return peer;
        }
        // Every line of the header in order, then each list right to left.
        let entries: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        for entry in entries.iter().rev() {
            match parse_entry(entry) {
                Some(ip) if self.is_trusted(ip) => continue,
                Some(ip) => return ip,
                // A proxy of ours wrote something unreadable: count the
                // connection against the proxy rather than guess.
                None => return peer,
            }
        }
        // No header, or only proxies in it: the nearest one we know of.
        entries
            .first()
            .and_then(|entry| parse_entry(entry))
            .unwrap_or(peer)
    }
}

/// One entry of a forwarding header: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`
/// or `[2001:db8::1]:5678`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|addr| addr.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append("x-forwarded-for", line.parse().unwrap());
        }
        map
    }

    fn behind_proxy(proxies: &[&str]) -> TrustedProxy {
        TrustedProxy {
            header: Some(HeaderName::from_static("x-forwarded-for")),
            proxies: proxies.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn ranges_parse_and_match() {
        let range: AddrRange = "10.1.0.0/16".parse().unwrap();
        assert!(range.contains(ip("10.1.200.3")));
        assert!(!range.contains(ip("10.2.0.1")));
        assert!(range.contains(ip("::ffff:10.1.0.9")), "v4-mapped v6 is v4");
        let one: AddrRange = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
        let v6: AddrRange = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all: AddrRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "10.0.0", "::1/129", "host", "10.0.0.0/x", ""] {
            assert!(bad.parse::<AddrRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_header_is_believed_only_from_a_trusted_peer() {
        let proxy = behind_proxy(&["127.0.0.1"]);
        let spoofed = headers(&["203.0.113.7"]);
        assert_eq!(
            proxy.client_ip(ip("198.51.100.2"), &spoofed),
            ip("198.51.100.2")
        );
        assert_eq!(
            proxy.client_ip(ip("127.0.0.1"), &spoofed),
            ip("203.0.113.7")
        );
        // No header configured: never believed.
        let none = TrustedProxy::default();
        assert_eq!(none.client_ip(ip("127.0.0.1"), &spoofed), ip("127.0.0.1"));
    }

    #[test]
    fn the_list_is_read_from_the_right_past_trusted_proxies() {
        let proxy = behind_proxy(&["127.0.0.1", "10.0.0.0/8"]);
        // The client wrote "1.1.1.1" itself; the proxies appended the rest.
        let chain = headers(&["1.1.1.1, 203.0.113.7", "10.0.0.5"]);
        assert_eq!(proxy.client_ip(ip("127.0.0.1"), &chain), ip("203.0.113.7"));
        let with_ports = headers(&["[2001:db8::7]:443, 10.0.0.5:80"]);
        assert_eq!(
            proxy.client_ip(ip("127.0.0.1"), &with_ports),
            ip("2001:db8::7")
        );
        let only_proxies = headers(&["10.0.0.9, 10.0.0.5"]);
        assert_eq!(
            proxy.client_ip(ip("127.0.0.1"), &only_proxies),
            ip("10.0.0.9")
        );
        let garbage = headers(&["203.0.113.7, nonsense"]);
        assert_eq!(proxy.client_ip(ip("127.0.0.1"), &garbage), ip("127.0.0.1"));
        assert_eq!(
            proxy.client_ip(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
    }
}
