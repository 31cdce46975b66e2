//! Address ranges (`10.0.0.0/8`, `2001:db8::/32`, or a bare address meaning one host) as the
//! config writes them, and the membership test the hot path runs. No sockets, no allocation on
//! `contains`: a range is two `u128`s.
//!
//! An IPv4 address and its IPv4-mapped IPv6 form (`::ffff:10.0.0.1`, RFC 4291 §2.5.5.2) are the
//! same client: a dual-stack listener reports IPv4 peers in the mapped form, and a rule written
//! for `10.0.0.0/8` must still match them.

use std::fmt;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The network, as an IPv6 address (IPv4 mapped).
    net: u128,
    mask: u128,
    /// Prefix length as written (0..=32 for IPv4, 0..=128 for IPv6), for `Display`.
    len: u8,
    v4: bool,
}

/// An address as 128 bits, IPv4 in its mapped form.
pub fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Cidr {
    /// `ADDR/LEN` or `ADDR`. Host bits set below the prefix are refused: `10.0.0.1/8` is
    /// more often a typo than a wish, and the operator should see which they meant.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an address or ADDR/LEN range"))?;
        let (v4, max) = match ip {
            IpAddr::V4(_) => (true, 32u8),
            IpAddr::V6(_) => (false, 128u8),
        };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && !l.starts_with('+') => n,
                _ => return Err(format!("{s:?}: prefix length must be 0 to {max}")),
            },
        };
        let bits_len = u32::from(len) + if v4 { 96 } else { 0 };
        let mask = if bits_len == 0 { 0 } else { u128::MAX << (128 - bits_len) };
        let net = bits(ip);
        if net & !mask != 0 {
            return Err(format!("{s:?}: host bits set below the /{len} prefix (did you mean the network?)"));
        }
        Ok(Cidr { net, mask, len, v4 })
    }

    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        bits(ip) & self.mask == self.net
    }
}

/// Whether any range in `list` holds `ip`.
#[inline]
pub fn any_contains(list: &[Cidr], ip: IpAddr) -> bool {
    let b = bits(ip);
    list.iter().any(|c| b & c.mask == c.net)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = std::net::Ipv6Addr::from(self.net);
        match v6.to_ipv4_mapped() {
            Some(a) if self.v4 => write!(f, "{a}/{}", self.len),
            _ => write!(f, "{v6}/{}", self.len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn membership() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped is the same client");
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::a01:203")), "IPv4-compatible (deprecated) is not mapped");
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        let all4 = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all4.contains(ip("8.8.8.8")) && !all4.contains(ip("2001:db8::1")));
        let all = Cidr::parse("::/0").unwrap();
        assert!(all.contains(ip("8.8.8.8")) && all.contains(ip("2001:db8::1")));
        assert!(any_contains(&[v6, c], ip("10.9.9.9")));
        assert!(!any_contains(&[], ip("10.9.9.9")));
    }

    #[test]
    fn refusals_and_display() {
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/+8", "10.0.0.0/", "nope", "2001:db8::/129", "10.0.0.0/08x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        for good in ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::1/128", "0.0.0.0/0"] {
            assert_eq!(Cidr::parse(good).unwrap().to_string(), good);
        }
    }
}
