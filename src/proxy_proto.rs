//! The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2): parsed from the
//! bytes a trusted load balancer sends before anything else on a connection, and written for
//! upstreams. No sockets: the caller peeks at the socket, asks `parse`, and takes exactly `len`
//! bytes once a header is whole, so a TLS handshake or a request after it is left in the queue.
//!
//! Invariants: `parse` never reads past `buf`, never allocates, and answers `Incomplete` only
//! while `buf` is a proper prefix of some header it would accept (so a peer cannot hold a
//! connection in this state with bytes that can never become one); every length is checked
//! against the bytes present before use. A v2 header may be at most `PROXY_V2_BYTES_MAX` long
//! (its own length field allows 64 KiB of TLVs, which no load balancer sends); its TLVs are walked
//! to check their framing and skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::limits::PROXY_V2_BYTES_MAX;

/// §2.1: "PROXY" and a space starts every v1 header.
const V1_PREFIX: &[u8] = b"PROXY ";
/// §2.1: the longest v1 line, CRLF included ("PROXY UNKNOWN ffff:…:ffff ffff:…:ffff 65535 65535\r\n").
pub const V1_BYTES_MAX: usize = 107;
/// §2.2: the 12-byte v2 signature, which cannot start an HTTP request or a TLS record.
pub const V2_SIG: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
const V2_FIXED: usize = 16;

/// A whole header: its length on the wire and the client it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub len: usize,
    /// The original client's address and port; `None` when the header carries none Apex can use
    /// (v2 LOCAL, v1 UNKNOWN, v2 UNSPEC or UNIX): then the connection's own peer stands.
    pub source: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// Neither "PROXY " nor the v2 signature.
    Signature,
    /// A v1 line without CRLF within 107 bytes, or a v2 header longer than Apex takes.
    TooLong,
    /// A v1 line that is not `PROXY TCP4|TCP6|UNKNOWN …` with single spaces and valid fields.
    Syntax,
    /// A v2 version other than 2, or a command other than LOCAL or PROXY.
    Command,
    /// A v2 address family or transport protocol that is not defined (or a datagram one).
    Family,
    /// A v2 length too short for its address family, or a TLV running past the header.
    Length,
    /// The peer closed before the header was whole.
    Truncated,
}

impl ProxyError {
    /// For the error log, in the operator's words.
    pub const fn as_str(self) -> &'static str {
        match self {
            ProxyError::Signature => "PROXY header expected: wrong signature",
            ProxyError::TooLong => "PROXY header too long",
            ProxyError::Syntax => "PROXY v1 line malformed",
            ProxyError::Command => "PROXY v2 version or command unknown",
            ProxyError::Family => "PROXY v2 address family or protocol unknown",
            ProxyError::Length => "PROXY v2 length does not fit its addresses or TLVs",
            ProxyError::Truncated => "PROXY header cut short by a close",
        }
    }
}

/// `Ok(None)`: a proper prefix of a header, read more. `Ok(Some(h))`: the first `h.len` bytes
/// are the header; the rest belongs to whatever follows it.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    if buf.first() == Some(&b'P') {
        return v1(buf);
    }
    let n = buf.len().min(V2_SIG.len());
    if buf.get(..n) != V2_SIG.get(..n) {
        return Err(ProxyError::Signature);
    }
    v2(buf)
}

fn v1(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf.get(..n) != V1_PREFIX.get(..n) {
        return Err(ProxyError::Signature);
    }
    let window = buf.get(..buf.len().min(V1_BYTES_MAX)).unwrap_or(buf);
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        // §2.1: "a receiver … must not try to parse more than 107 characters".
        return if buf.len() >= V1_BYTES_MAX { Err(ProxyError::TooLong) } else { Ok(None) };
    };
    // §2.1: the line ends with CRLF, and a bare LF is not one.
    let line = match lf.checked_sub(1).and_then(|cr| window.get(..cr).filter(|_| window.get(cr) == Some(&b'\r'))) {
        Some(l) => l,
        None => return Err(ProxyError::Syntax),
    };
    let rest = line.get(V1_PREFIX.len()..).ok_or(ProxyError::Syntax)?;
    let len = lf + 1;
    // §2.1: "UNKNOWN": the receiver ignores what follows up to the CRLF and keeps the real peer.
    if rest.starts_with(b"UNKNOWN") && (rest.len() == 7 || rest.get(7) == Some(&b' ')) {
        return Ok(Some(Header { len, source: None }));
    }
    let mut parts = rest.split(|&b| b == b' ');
    let (Some(proto), Some(src), Some(dst), Some(sport), Some(dport), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProxyError::Syntax);
    };
    // std's parsers take exactly the dotted-quad and RFC 4291 forms (no leading zeros in IPv4).
    let (src, dst): (IpAddr, IpAddr) = match proto {
        b"TCP4" => (
            text(src)?.parse::<Ipv4Addr>().map_err(|_| ProxyError::Syntax)?.into(),
            text(dst)?.parse::<Ipv4Addr>().map_err(|_| ProxyError::Syntax)?.into(),
        ),
        b"TCP6" => (
            text(src)?.parse::<Ipv6Addr>().map_err(|_| ProxyError::Syntax)?.into(),
            text(dst)?.parse::<Ipv6Addr>().map_err(|_| ProxyError::Syntax)?.into(),
        ),
        _ => return Err(ProxyError::Syntax),
    };
    let _ = dst;
    let sport = port(sport)?;
    port(dport)?;
    Ok(Some(Header { len, source: Some(SocketAddr::new(src, sport)) }))
}

fn text(b: &[u8]) -> Result<&str, ProxyError> {
    std::str::from_utf8(b).map_err(|_| ProxyError::Syntax)
}

/// §2.1: a port is a decimal number between 0 and 65535.
fn port(b: &[u8]) -> Result<u16, ProxyError> {
    if b.is_empty() || b.len() > 5 || !b.iter().all(u8::is_ascii_digit) {
        return Err(ProxyError::Syntax);
    }
    let n = b.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).map_err(|_| ProxyError::Syntax)
}

fn v2(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    // Each fixed byte is judged as soon as it is there: a bad one never waits for more.
    let (Some(&ver_cmd), fam) = (buf.get(12), buf.get(13)) else { return Ok(None) };
    // §2.2: the high nibble is the version (2), the low one the command: 0 LOCAL, 1 PROXY;
    // "receivers must drop connections presenting unexpected values here".
    if ver_cmd >> 4 != 2 || ver_cmd & 0xF > 1 {
        return Err(ProxyError::Command);
    }
    let local = ver_cmd & 0xF == 0;
    let Some(&fam) = fam else { return Ok(None) };
    // §2.2: family 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX; protocol 0 UNSPEC, 1 STREAM, 2 DGRAM.
    // A datagram client is not this TCP connection's: refused rather than believed.
    let (family, proto) = (fam >> 4, fam & 0xF);
    if family > 3 || proto > 1 {
        return Err(ProxyError::Family);
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else { return Ok(None) };
    let body = usize::from(u16::from_be_bytes([hi, lo]));
    let len = V2_FIXED + body;
    if len > PROXY_V2_BYTES_MAX {
        return Err(ProxyError::TooLong);
    }
    let addr_len = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    // §2.2: the length covers the addresses; shorter is a broken header even for LOCAL.
    if body < addr_len {
        return Err(ProxyError::Length);
    }
    let Some(block) = buf.get(V2_FIXED..len) else { return Ok(None) };
    let (addrs, tlvs) = block.split_at_checked(addr_len).ok_or(ProxyError::Length)?;
    skip_tlvs(tlvs)?;
    // §2.2: LOCAL: "the receiver must … use the real connection endpoints".
    let source = match (local, family) {
        (true, _) => None,
        (false, 1) => {
            let (Some(a), Some(p)) = (addrs.get(..4), addrs.get(8..10)) else { return Err(ProxyError::Length) };
            let a: [u8; 4] = a.try_into().map_err(|_| ProxyError::Length)?;
            let p: [u8; 2] = p.try_into().map_err(|_| ProxyError::Length)?;
            Some(SocketAddr::new(Ipv4Addr::from(a).into(), u16::from_be_bytes(p)))
        }
        (false, 2) => {
            let (Some(a), Some(p)) = (addrs.get(..16), addrs.get(32..34)) else { return Err(ProxyError::Length) };
            let a: [u8; 16] = a.try_into().map_err(|_| ProxyError::Length)?;
            let p: [u8; 2] = p.try_into().map_err(|_| ProxyError::Length)?;
            Some(SocketAddr::new(Ipv6Addr::from(a).into(), u16::from_be_bytes(p)))
        }
        // UNSPEC or UNIX: no IP to take; the balancer's own address stands.
        _ => None,
    };
    Ok(Some(Header { len, source }))
}

/// §2.2.x: type (1 byte), length (2 bytes, big-endian), value. Each must end within the header;
/// their meaning (ALPN, authority, CRC32c, SSL, …) is not used and so not checked.
fn skip_tlvs(mut t: &[u8]) -> Result<(), ProxyError> {
    // Each TLV takes at least 3 bytes, so this loop ends within len/3 turns.
    while !t.is_empty() {
        let (Some(&hi), Some(&lo)) = (t.get(1), t.get(2)) else { return Err(ProxyError::Length) };
        let end = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        t = t.get(end..).ok_or(ProxyError::Length)?;
    }
    Ok(())
}

/// Writes the header naming `src` as the client and `dst` as where it connected, for an
/// upstream that expects one. Returns the bytes written, or `None` if `out` is too small
/// (108 bytes always suffice). Mixed families (an IPv4 client through an IPv6 listener) are
/// written as IPv6 with the IPv4-mapped form, as HAProxy does.
pub fn write(v2: bool, src: SocketAddr, dst: SocketAddr, out: &mut [u8]) -> Option<usize> {
    let (src, dst) = same_family(src, dst);
    if v2 {
        let mut w = Cursor { out, at: 0 };
        w.put(&V2_SIG)?;
        w.put(&[0x21])?; // version 2, PROXY
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                w.put(&[0x11, 0, 12])?; // INET, STREAM
                w.put(&s.octets())?;
                w.put(&d.octets())?;
            }
            (s, d) => {
                w.put(&[0x21, 0, 36])?; // INET6, STREAM
                w.put(&v6(s).octets())?;
                w.put(&v6(d).octets())?;
            }
        }
        w.put(&src.port().to_be_bytes())?;
        w.put(&dst.port().to_be_bytes())?;
        return Some(w.at);
    }
    use std::io::Write as _;
    let cap = out.len();
    let mut cur = std::io::Cursor::new(out);
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    write!(cur, "PROXY {proto} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port()).ok()?;
    let n = usize::try_from(cur.position()).ok()?;
    (n <= cap).then_some(n)
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    // An IPv4-mapped address is written as the IPv4 address it is.
    let canon = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v) => match v.to_ipv4_mapped() {
            Some(four) => SocketAddr::new(four.into(), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    };
    let (s, d) = (canon(src), canon(dst));
    if s.is_ipv4() == d.is_ipv4() {
        (s, d)
    } else {
        (SocketAddr::new(v6(s.ip()).into(), s.port()), SocketAddr::new(v6(d.ip()).into(), d.port()))
    }
}

struct Cursor<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn put(&mut self, b: &[u8]) -> Option<()> {
        let end = self.at.checked_add(b.len())?;
        self.out.get_mut(self.at..end)?.copy_from_slice(b);
        self.at = end;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Every case also runs split at every byte: each proper prefix of an accepted header is
    /// `Incomplete`, and each prefix of a refused one is `Incomplete` or the same error.
    fn check(input: &[u8], want: Result<Option<Header>, ProxyError>) {
        assert_eq!(parse(input), want, "{:?}", String::from_utf8_lossy(input));
        for cut in 0..input.len() {
            let got = parse(&input[..cut]);
            match want {
                Ok(Some(h)) if cut < h.len => assert_eq!(got, Ok(None), "prefix {cut} of an accepted header"),
                Ok(_) => {}
                Err(e) => assert!(got == Ok(None) || got == Err(e), "prefix {cut}: {got:?}, want {e:?}"),
            }
        }
    }

    fn v2_header(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn inet(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut b = src.to_vec();
        b.extend_from_slice(&[127, 0, 0, 1]);
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b
    }

    #[test]
    fn v1_cases() {
        let line = b"PROXY TCP4 192.0.2.1 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        check(line, Ok(Some(Header { len: 41, source: Some(sa("192.0.2.1:56324")) })));
        let six = b"PROXY TCP6 2001:db8::1 ::1 65535 80\r\n";
        check(six, Ok(Some(Header { len: six.len(), source: Some(sa("[2001:db8::1]:65535")) })));
        check(b"PROXY UNKNOWN\r\n", Ok(Some(Header { len: 15, source: None })));
        check(b"PROXY UNKNOWN whatever is here\r\n", Ok(Some(Header { len: 32, source: None })));
        for (bad, e) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], ProxyError::Signature),
            (b"PROXZ TCP4", ProxyError::Signature),
            (b"PROXY TCP4 192.0.2.1 10.0.0.1 56324 443\n", ProxyError::Syntax), // bare LF
            (b"PROXY TCP4 192.0.2.1 10.0.0.1 56324\r\n", ProxyError::Syntax),
            (b"PROXY TCP4 192.0.2.1 10.0.0.1 56324 443 x\r\n", ProxyError::Syntax),
            (b"PROXY TCP4  192.0.2.1 10.0.0.1 56324 443\r\n", ProxyError::Syntax), // two spaces
            (b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n", ProxyError::Syntax),      // family mismatch
            (b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n", ProxyError::Syntax),
            (b"PROXY TCP4 192.0.2.1 10.0.0.1 65536 443\r\n", ProxyError::Syntax),
            (b"PROXY TCP4 192.0.2.1 10.0.0.1 -1 443\r\n", ProxyError::Syntax),
            (b"PROXY TCP4 192.0.2.01 10.0.0.1 1 443\r\n", ProxyError::Syntax), // leading zero
            (b"PROXY UDP4 192.0.2.1 10.0.0.1 1 443\r\n", ProxyError::Syntax),
            (b"PROXY UNKNOWNX\r\n", ProxyError::Syntax),
            (b"PROXY \r\n", ProxyError::Syntax),
        ] {
            check(bad, Err(e));
        }
    }

    #[test]
    fn v1_is_bounded_at_107_bytes() {
        // The longest legal line (§2.1) is accepted; one byte more without a CRLF is refused.
        let max = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(max.len(), V1_BYTES_MAX);
        check(max, Ok(Some(Header { len: 107, source: None })));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_BYTES_MAX, b'a');
        long.extend_from_slice(b"\r\n");
        check(&long, Err(ProxyError::TooLong));
        // Exactly 107 bytes, none of them a LF: no more are read.
        assert_eq!(parse(&long[..V1_BYTES_MAX]), Err(ProxyError::TooLong));
        assert_eq!(parse(&long[..V1_BYTES_MAX - 1]), Ok(None));
    }

    #[test]
    fn v2_cases() {
        let four = v2_header(0x21, 0x11, &inet([192, 0, 2, 9], 40000));
        check(&four, Ok(Some(Header { len: 28, source: Some(sa("192.0.2.9:40000")) })));
        let mut six_body = vec![0x20, 0x01, 0x0d, 0xb8];
        six_body.resize(16, 0);
        six_body[15] = 7;
        six_body.extend_from_slice(&[0; 16]);
        six_body.extend_from_slice(&8080u16.to_be_bytes());
        six_body.extend_from_slice(&443u16.to_be_bytes());
        let six = v2_header(0x21, 0x21, &six_body);
        check(&six, Ok(Some(Header { len: 52, source: Some(sa("[2001:db8::7]:8080")) })));
        // LOCAL (a balancer's health check): addresses ignored, even unspecified ones.
        check(&v2_header(0x20, 0x00, &[]), Ok(Some(Header { len: 16, source: None })));
        check(&v2_header(0x20, 0x11, &inet([1, 2, 3, 4], 1)), Ok(Some(Header { len: 28, source: None })));
        // UNSPEC and UNIX carry no IP: the peer stands.
        check(&v2_header(0x21, 0x00, &[]), Ok(Some(Header { len: 16, source: None })));
        check(&v2_header(0x21, 0x31, &[0; 216]), Ok(Some(Header { len: 232, source: None })));
        // TLVs after the addresses are walked and skipped (AWS's VPC endpoint id, a NOOP).
        let mut tlv = inet([198, 51, 100, 1], 5);
        tlv.extend_from_slice(&[0xEA, 0, 4, b'v', b'p', b'c', b'e', 0x04, 0, 0]);
        check(&v2_header(0x21, 0x11, &tlv), Ok(Some(Header { len: 16 + 22, source: Some(sa("198.51.100.1:5")) })));
    }

    #[test]
    fn v2_refusals() {
        let ok = inet([192, 0, 2, 9], 1);
        let mut bad_sig = v2_header(0x21, 0x11, &ok);
        bad_sig[11] = 0x0B;
        check(&bad_sig, Err(ProxyError::Signature));
        check(&v2_header(0x11, 0x11, &ok), Err(ProxyError::Command)); // version 1 in a v2 header
        check(&v2_header(0x31, 0x11, &ok), Err(ProxyError::Command));
        check(&v2_header(0x22, 0x11, &ok), Err(ProxyError::Command)); // command 2
        check(&v2_header(0x21, 0x41, &ok), Err(ProxyError::Family)); // family 4
        check(&v2_header(0x21, 0xF1, &ok), Err(ProxyError::Family));
        check(&v2_header(0x21, 0x13, &ok), Err(ProxyError::Family)); // protocol 3
        check(&v2_header(0x21, 0x12, &ok), Err(ProxyError::Family)); // UDP
        check(&v2_header(0x21, 0x11, &ok[..11]), Err(ProxyError::Length)); // INET needs 12
        check(&v2_header(0x21, 0x21, &[0; 35]), Err(ProxyError::Length)); // INET6 needs 36
        check(&v2_header(0x21, 0x31, &[0; 215]), Err(ProxyError::Length));
        // A TLV whose length runs past the header, and a stub of one.
        let mut over = ok.clone();
        over.extend_from_slice(&[0x04, 0, 9, 1, 2]);
        check(&v2_header(0x21, 0x11, &over), Err(ProxyError::Length));
        let mut stub = ok.clone();
        stub.extend_from_slice(&[0x04, 0]);
        check(&v2_header(0x21, 0x11, &stub), Err(ProxyError::Length));
        // A length past what Apex takes is refused at once, not waited for.
        let mut huge = V2_SIG.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert_eq!(parse(&huge), Err(ProxyError::TooLong));
        // A length past the packet: more is awaited (the close or the timeout ends it).
        let mut past = v2_header(0x21, 0x11, &ok);
        past[15] = 40;
        assert_eq!(parse(&past), Ok(None));
    }

    #[test]
    fn written_headers_parse_back() {
        for (src, dst) in [
            ("192.0.2.1:1234", "10.0.0.1:80"),
            ("[2001:db8::1]:1", "[::1]:443"),
            ("192.0.2.1:5", "[::1]:443"),
            ("[::ffff:192.0.2.1]:5", "127.0.0.1:8080"),
        ] {
            for v2 in [false, true] {
                let mut out = [0u8; 108];
                let n = write(v2, sa(src), sa(dst), &mut out).unwrap();
                let h = parse(&out[..n]).unwrap().unwrap();
                assert_eq!(h.len, n);
                let got = h.source.unwrap();
                assert_eq!(got.port(), sa(src).port());
                assert_eq!(crate::cidr::bits(got.ip()), crate::cidr::bits(sa(src).ip()), "{src} v2={v2}");
            }
        }
        assert_eq!(write(false, sa("192.0.2.1:1"), sa("10.0.0.1:2"), &mut [0u8; 8]), None);
        assert_eq!(write(true, sa("192.0.2.1:1"), sa("10.0.0.1:2"), &mut [0u8; 8]), None);
    }
}
