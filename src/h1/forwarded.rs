//! The client behind trusted proxies, from X-Forwarded-For (a de facto list of addresses, each
//! proxy appending the peer it saw; RFC 7239 §5.2's `Forwarded: for=` is its standard form and is
//! not read). Only the entries a trusted proxy appended can be believed, so the list is walked
//! from the right: each entry is the peer of the hop to its right, and the walk stops at the
//! first address that is not a trusted proxy (nginx's `real_ip_recursive on`, HAProxy's
//! `option forwarded`'s walk).
//!
//! Strict: an entry is a bare IPv4 or IPv6 address (no port, brackets or `unknown`); anything
//! else stops the walk, and the last address reached stands (a trusted proxy, at worst the TCP
//! peer): a malformed entry never becomes a client, and nothing left of it is believed.
//! No allocation: addresses parse from the header bytes in place.

use std::net::IpAddr;

use crate::cidr::{Cidr, any_contains};

/// The longest address text: an IPv6 address with an embedded IPv4 (`ffff:…:255.255.255.255`).
const ADDR_TEXT_MAX: usize = 45;

/// The client, given the X-Forwarded-For field lines in order (several lines are one list,
/// RFC 9110 §5.3) and a `peer` the caller has found in `trusted`. Right-most untrusted entry;
/// when every entry is trusted, the left-most one; with none usable, `peer`.
pub fn client<'a>(lines: impl DoubleEndedIterator<Item = &'a [u8]>, peer: IpAddr, trusted: &[Cidr]) -> IpAddr {
    let mut client = peer;
    for line in lines.rev() {
        for item in line.rsplit(|&b| b == b',') {
            let item = super::trim_ows(item);
            // RFC 9110 §5.6.1: a recipient ignores empty list elements.
            if item.is_empty() {
                continue;
            }
            let Some(ip) = parse_ip(item) else { return client };
            client = ip;
            if !any_contains(trusted, ip) {
                return client;
            }
        }
    }
    client
}

/// A bare address, as `IpAddr`'s textual form (dotted quad, or RFC 5952-style IPv6).
fn parse_ip(b: &[u8]) -> Option<IpAddr> {
    if b.len() > ADDR_TEXT_MAX {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(lines: &[&str], peer: &str) -> String {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("2001:db8::/32").unwrap()];
        client(lines.iter().map(|l| l.as_bytes()), peer.parse().unwrap(), &trusted).to_string()
    }

    #[test]
    fn right_most_untrusted() {
        assert_eq!(walk(&["203.0.113.7"], "10.0.0.1"), "203.0.113.7");
        assert_eq!(walk(&["1.1.1.1, 203.0.113.7, 10.0.0.2"], "10.0.0.1"), "203.0.113.7", "a forged left part ignored");
        assert_eq!(walk(&["1.1.1.1", "203.0.113.7, 10.0.0.2"], "10.0.0.1"), "203.0.113.7", "lines are one list");
        assert_eq!(walk(&["10.0.0.3, 10.0.0.2"], "10.0.0.1"), "10.0.0.3", "all trusted: the left-most");
        assert_eq!(walk(&[], "10.0.0.1"), "10.0.0.1", "none: the peer");
        assert_eq!(walk(&["  2001:db9::1 ,, 2001:db8::5 ,"], "10.0.0.1"), "2001:db9::1", "OWS, empty elements");
    }

    #[test]
    fn malformed_stops_the_walk() {
        for bad in
            ["1.1.1.1:80", "[2001:db9::1]", "unknown", "01.1.1.1", "1.1.1", "x\u{e9}", "1.1.1.1 2.2.2.2", "\"1.1.1.1\""]
        {
            assert_eq!(walk(&[&format!("9.9.9.9, {bad}")], "10.0.0.1"), "10.0.0.1", "{bad:?}");
            assert_eq!(walk(&[&format!("{bad}, 10.0.0.9")], "10.0.0.1"), "10.0.0.9", "{bad:?}: the last trusted hop");
        }
        assert_eq!(walk(&[&"1".repeat(5000)], "10.0.0.1"), "10.0.0.1");
    }
}
