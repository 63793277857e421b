//! The client's address behind reverse proxies (contract §10, `[server] trusted-proxies`).
//!
//! A proxy's peer address is the proxy, not the client; the proxy appends the address it received
//! the request from to `X-Forwarded-For`. Only the entries appended by proxies we trust can be
//! believed: everything to their left was written by whoever sent the request. So the client is
//! the right-most address that is not a trusted proxy, found by walking the header from the
//! right. From a peer that is not trusted the header is ignored altogether, else any client could
//! choose its own address (and with it a fresh rate-limit bucket for every request).
//!
//! No CIDR crate: a network is an address and a prefix length, matched on the address's bits.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `2001:db8::/32`); a bare address is the network of
/// that one address (`/32`, `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `addr` is in the network. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a
    /// dual-stack socket reports for an IPv4 peer) count as the IPv4 address they map.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        // The network address is kept with its host bits clear (see `from_str`).
        addr.is_ipv4() == self.network.is_ipv4() && network_address(addr, self.prefix) == self.network
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// Refuses a network written with host bits set (`10.0.0.1/8`): whether `10.0.0.1/32` or
    /// `10.0.0.0/8` was meant cannot be told, and the wrong guess trusts a whole network.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("'{addr}' is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            // Digits as written, so `/08` and `/+8` (which `u8::from_str` takes) are refused.
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(length) if length <= max && length.to_string() == prefix => length,
                _ => return Err(format!("the prefix length after '/' must be a number from 0 to {max}")),
            },
        };
        // An IPv4-mapped IPv6 network is the IPv4 network it maps, as addresses are matched.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => {
                (IpAddr::V4(v6.to_ipv4_mapped().expect("checked")), prefix - 96)
            }
            _ => (addr, prefix),
        };
        let network = network_address(addr, prefix);
        if network != addr {
            return Err(format!(
                "it has bits set beyond its /{prefix} prefix: write {network}/{prefix} for the network, \
                 or {addr} alone for one address"
            ));
        }
        Ok(Cidr { network, prefix })
    }
}

/// `addr` with the bits past the first `prefix` cleared.
fn network_address(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((v4.to_bits() & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(v6.to_bits() & mask))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The client a request comes from: `peer` itself unless it is a trusted proxy; from a trusted
/// proxy, the right-most address of `X-Forwarded-For` that is not a trusted proxy. An entry that
/// is not an address (`unknown`, an obfuscated name, garbage) ends the walk: the client is then
/// the last address read before it, as nothing to its left can be believed. When every entry is
/// trusted, the client is the left-most one.
///
/// Several `X-Forwarded-For` headers count as one list, in their order (RFC 9110 §5.3).
pub(crate) fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |addr: IpAddr| trusted.iter().any(|cidr| cidr.contains(addr));
    let peer = peer.to_canonical();
    if !is_trusted(peer) {
        return peer;
    }
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        match value.to_str() {
            Ok(value) => entries.extend(value.split(',')),
            // Not text: as malformed as an entry can be.
            Err(_) => entries.push(""),
        }
    }
    let mut client = peer;
    for entry in entries.into_iter().rev() {
        let Some(addr) = forwarded_addr(entry) else {
            return client;
        };
        client = addr;
        if !is_trusted(addr) {
            return addr;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`), as some proxies write it.
fn forwarded_addr(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let addr = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|socket| socket.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse::<Ipv6Addr>().ok().map(IpAddr::V6))?;
    Some(addr.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|text| text.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn networks_parse_and_match_by_prefix() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.255.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped counts as IPv4");
        assert!(!net.contains(ip("::1")));
        let host: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(host.to_string(), "127.0.0.1/32");
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("2001:db8::1")));

        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let odd: Cidr = "fc00::/7".parse().unwrap();
        assert!(odd.contains(ip("fdff::1")) && odd.contains(ip("fc00::1")) && !odd.contains(ip("fe00::1")));
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2001:db8::1")));
        // An IPv4-mapped network is the IPv4 network it maps.
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn bad_networks_are_refused_saying_why() {
        for (text, why) in [
            ("10.0.0.1/8", "10.0.0.0/8"),
            ("10.0.0.0/33", "0 to 32"),
            ("2001:db8::/129", "0 to 128"),
            ("10.0.0.0/", "0 to 32"),
            ("10.0.0.0/08", "0 to 32"),
            ("10.0.0.0/+8", "0 to 32"),
            ("10.0.0/8", "not an IPv4 or IPv6 address"),
            ("localhost", "not an IPv4 or IPv6 address"),
            ("", "not an IPv4 or IPv6 address"),
            ("2001:db8::1/32", "2001:db8::/32"),
        ] {
            let error = text.parse::<Cidr>().expect_err(text);
            assert!(error.contains(why), "{text}: {error}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(client_addr(ip("192.0.2.7"), &headers, &[]), ip("192.0.2.7"));
        let trusted = cidrs(&["10.0.0.0/8"]);
        assert_eq!(client_addr(ip("192.0.2.7"), &headers, &trusted), ip("192.0.2.7"));
        // A dual-stack socket's IPv4-mapped peer is reported as IPv4.
        assert_eq!(client_addr(ip("::ffff:192.0.2.7"), &headers, &trusted), ip("192.0.2.7"));
    }

    #[test]
    fn from_a_trusted_peer_the_client_is_the_right_most_untrusted_address() {
        let trusted = cidrs(&["127.0.0.1/32", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        // The client cannot choose what the proxies appended to its right.
        let headers = forwarded(&["198.51.100.1, 203.0.113.9, 10.0.0.5"]);
        assert_eq!(client_addr(peer, &headers, &trusted), ip("203.0.113.9"));
        // Several headers are one list, in order.
        let headers = forwarded(&["198.51.100.1", "203.0.113.9,10.0.0.5"]);
        assert_eq!(client_addr(peer, &headers, &trusted), ip("203.0.113.9"));
        // Ports and brackets, as some proxies write them.
        let headers = forwarded(&["203.0.113.9:4711"]);
        assert_eq!(client_addr(peer, &headers, &trusted), ip("203.0.113.9"));
        let headers = forwarded(&["[2001:db8::9]:4711, [2001:db8::8]"]);
        assert_eq!(client_addr(peer, &headers, &trusted), ip("2001:db8::8"));
        // No header: the proxy itself.
        assert_eq!(client_addr(peer, &HeaderMap::new(), &trusted), peer);
        // Every entry trusted: the left-most.
        let headers = forwarded(&["10.0.0.9, 10.0.0.5"]);
        assert_eq!(client_addr(peer, &headers, &trusted), ip("10.0.0.9"));
    }

    #[test]
    fn a_malformed_entry_stops_the_walk_at_the_last_good_address() {
        let trusted = cidrs(&["127.0.0.1/32", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        let headers = forwarded(&["203.0.113.9, unknown, 10.0.0.5"]);
        assert_eq!(client_addr(peer, &headers, &trusted), ip("10.0.0.5"));
        let headers = forwarded(&["203.0.113.9,,10.0.0.5"]);
        assert_eq!(client_addr(peer, &headers, &trusted), ip("10.0.0.5"));
        let headers = forwarded(&["garbage"]);
        assert_eq!(client_addr(peer, &headers, &trusted), peer);
        // Garbage left of the client is never read.
        let headers = forwarded(&["garbage, 203.0.113.9"]);
        assert_eq!(client_addr(peer, &headers, &trusted), ip("203.0.113.9"));
        let mut headers = forwarded(&["203.0.113.9"]);
        headers.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(client_addr(peer, &headers, &trusted), peer);
    }
}
