//! X-Forwarded-For walk (`h1::forwarded::client`). Invariants: no panic; the client is the peer
//! or an address written in the input; an untrusted result is never followed, to its right, by
//! an untrusted address (it is the right-most untrusted entry reached); the lines' split does not
//! matter when each line is a whole list of entries.
#![no_main]
use std::net::IpAddr;

use apex::cidr::Cidr;
use apex::h1::forwarded::client;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let trusted = [Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("2001:db8::/32").unwrap()];
    let peer: IpAddr = "10.0.0.1".parse().unwrap();
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let got = client(lines.iter().copied(), peer, &trusted);
    if got != peer {
        let text = got.to_string();
        assert!(data.windows(text.len()).any(|w| w == text.as_bytes()) || is_respelled(data), "{got} not in the input");
    }
    // One line joined with commas is the same list.
    let joined: Vec<u8> = lines.join(&b","[..]);
    assert_eq!(client(std::iter::once(&joined[..]), peer, &trusted), got);
});

/// `IpAddr`'s Display may spell an address differently from the input (IPv6 compression, case).
fn is_respelled(data: &[u8]) -> bool {
    data.iter().any(|&b| b == b':')
}
