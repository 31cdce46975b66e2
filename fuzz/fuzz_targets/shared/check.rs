//! Checks shared by the fuzz targets that drive a real worker: reading a socket dry, and
//! parsing what Apex sent as canonical HTTP/1.1 messages.
use std::io::{ErrorKind, Read};
use std::net::TcpStream;

use apex::h1::chunked::Decoder;
use apex::h1::head::parse_request;
use apex::h1::response::parse_response;
use apex::h1::{find_head_end, Framing};

pub fn drain(s: &mut TcpStream, into: &mut Vec<u8>) -> (bool, bool) {
    let mut buf = [0u8; 65536];
    let mut progress = false;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (progress, true),
            Ok(n) => {
                into.extend_from_slice(&buf[..n]);
                progress = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return (progress, false),
            Err(_) => return (progress, true),
        }
    }
}

/// Splits `bytes` into messages; returns how many heads parsed. Panics on a message Apex must
/// never have produced. `requests`: parse as requests (else responses). `client_sent_head`: the
/// client sent a HEAD request, so a response may carry a Content-Length and no body; which
/// response answers it is not tracked, so a body-less reading is accepted when the next bytes
/// are the next response's status line (the first crash this target found was this checker
/// not knowing that).
pub fn check_stream(bytes: &[u8], requests: bool, client_sent_head: bool) -> usize {
    let mut rest = bytes;
    let mut count = 0;
    let mut head_method_head = false;
    while !rest.is_empty() {
        let mut scan = 0;
        let end = match find_head_end(rest, &mut scan) {
            Ok(Some(e)) => e,
            Ok(None) => return count, // cut short
            Err(e) => panic!("bad line ending in what Apex sent: {e:?} in {:?}", String::from_utf8_lossy(rest)),
        };
        let arena = bumpalo::Bump::new();
        let framing = if requests {
            let r = parse_request(&rest[..end], &arena, 256)
                .unwrap_or_else(|e| panic!("upstream got an unparsable head ({e:?}): {:?}", String::from_utf8_lossy(&rest[..end])));
            let mut hosts = 0;
            let mut framing_headers = 0;
            for h in r.headers {
                let n = h.name.to_ascii_lowercase();
                assert!(!matches!(n.as_str(), "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "expect")
                    || (n == "connection" && r.upgrade.is_some()), "hop-by-hop {n} forwarded");
                hosts += usize::from(n == "host");
                framing_headers += usize::from(n == "content-length" || n == "transfer-encoding");
            }
            assert_eq!(hosts, 1, "one Host");
            assert!(framing_headers <= 1, "one framing header");
            head_method_head = r.is_head();
            count += 1;
            r.framing
        } else {
            let r = parse_response(&rest[..end], &arena, 256, head_method_head)
                .unwrap_or_else(|e| panic!("client got an unparsable response ({e:?}): {:?}", String::from_utf8_lossy(&rest[..end])));
            if r.code >= 200 {
                count += 1;
            }
            if r.code == 101 {
                return count; // a tunnel: raw bytes follow
            }
            r.framing
        };
        rest = &rest[end..];
        match framing {
            Framing::None => {}
            Framing::Length(n) => {
                if !requests && client_sent_head && rest.starts_with(b"HTTP/1.") {
                    continue;
                }
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if rest.len() < n {
                    return count;
                }
                rest = &rest[n..];
            }
            Framing::Chunked => {
                let mut d = Decoder::new();
                let mut sink = vec![0u8; rest.len() + 64];
                let (used, _) = d.relay(rest, &mut sink, false).unwrap_or_else(|_| panic!("bad chunking sent by Apex"));
                if !d.is_done() {
                    return count;
                }
                rest = &rest[used..];
            }
            Framing::Close => return count,
        }
    }
    count
}

