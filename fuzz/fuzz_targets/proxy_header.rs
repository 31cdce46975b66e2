//! PROXY protocol header (v1 and v2). Invariants: no panic; a header is never longer than the
//! input nor than the bounds (107 bytes for v1, PROXY_V2_BYTES_MAX for v2); the answer does not
//! depend on bytes after the header (what follows belongs to TLS or HTTP); every proper prefix of
//! an accepted header asks for more; and a header Apex writes parses back to its source.
#![no_main]
use apex::proxy_proto::{parse, write, V1_BYTES_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let got = parse(data);
    if let Ok(Some(h)) = got {
        assert!(h.len <= data.len());
        assert!(h.len <= apex::limits::PROXY_V2_BYTES_MAX);
        if data.first() == Some(&b'P') {
            assert!(h.len <= V1_BYTES_MAX);
        }
        assert_eq!(parse(&data[..h.len]), got, "bytes after the header changed the answer");
        let cut = data.first().map_or(0, |&b| b as usize) % h.len;
        assert_eq!(parse(&data[..cut]), Ok(None), "a proper prefix of a header is incomplete");
    }
    // Round trip: the first bytes pick an address and a version.
    if data.len() >= 21 {
        let mut a = [0u8; 16];
        a.copy_from_slice(&data[1..17]);
        let port = u16::from_be_bytes([data[17], data[18]]);
        let src: std::net::SocketAddr = if data[0] & 1 == 0 {
            (std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]), port).into()
        } else {
            (std::net::Ipv6Addr::from(a), port).into()
        };
        let dst: std::net::SocketAddr = ([127, 0, 0, 1], u16::from_be_bytes([data[19], data[20]])).into();
        let mut out = [0u8; 108];
        let n = write(data[0] & 2 == 0, src, dst, &mut out).expect("108 bytes suffice");
        let h = parse(&out[..n]).expect("written header parses").expect("whole");
        assert_eq!(h.len, n);
        let back = h.source.expect("a source");
        assert_eq!(back.port(), port);
        assert_eq!(apex::cidr::bits(back.ip()), apex::cidr::bits(src.ip()));
    }
});
