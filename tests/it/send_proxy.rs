//! `send_proxy` (issue #18): Apex opens each connection to such a group with a PROXY header
//! naming the client. Received by real nginx (`listen … proxy_protocol`, answering with
//! `$proxy_protocol_addr`), and by a hand-written upstream that checks the exact bytes. Such
//! connections are never pooled: each request gets its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::*;

/// nginx behind `proxy_protocol`, answering each request with the PROXY header's address and
/// port. `None` when it is not installed (the caller says SKIPPED).
fn nginx() -> Option<Daemon> {
    nginx_with(|addr| {
        format!(
            "listen {addr} proxy_protocol;\n\
             location / {{ return 200 \"$proxy_protocol_addr $proxy_protocol_port\"; }}"
        )
    })
}

fn apex_to(up: SocketAddr, send: &str, top: &str) -> Apex {
    Apex::start_toml(&format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n{top}\n[[route]]\nupstream = \"app\"\n\
         [upstream.app]\nservers = [\"{up}\"]\nsend_proxy = \"{send}\"\n"
    ))
}

#[test]
fn nginx_reads_the_client_apex_sends() {
    for send in ["v1", "v2"] {
        let Some(nginx) = nginx() else {
            eprintln!("SKIPPED: nginx is not installed (apt-get install nginx)");
            return;
        };
        let apex = apex_to(nginx.addr, send, "trusted_proxies = [\"127.0.0.2\"]");
        // The peer itself: its address and port.
        let mut c = apex.client();
        let port = c.s.local_addr().unwrap().port();
        let r = c.request(&get("h", "/"));
        assert_eq!((r.status, r.body_str()), (200, format!("127.0.0.1 {port}")), "{send}: {}", r.head_str());
        // Keep-alive: the second request is sent on a new upstream connection, header first.
        let r = c.request(&get("h", "/again"));
        assert_eq!(r.body_str(), format!("127.0.0.1 {port}"), "{send}");
        // The client a trusted proxy names (port unknown: Apex sends 0, which nginx shows empty).
        let mut p = Client::connect_from(std::net::Ipv4Addr::new(127, 0, 0, 2), apex.addr);
        let r = p.request(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n");
        assert_eq!(r.status, 200, "{send}: {}", r.head_str());
        assert_eq!(r.body_str().split(' ').next(), Some("203.0.113.9"), "{send}: {}", r.body_str());
        let r = p.request(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 2001:db8::9\r\n\r\n");
        let addr = r.body_str();
        assert_eq!(addr.split(' ').next(), Some("2001:db8::9"), "{send}: IPv6 client through an IPv4 listener");
    }
}

/// An upstream that records the bytes each connection starts with (up to the request's blank
/// line) and answers 200 keep-alive to every request on it.
fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = Arc::clone(&seen);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let rec = Arc::clone(&rec);
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = Vec::new();
                let mut first = true;
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    loop {
                        // A v2 header's signature holds a blank line: look for the head after it.
                        let skip = match buf.get(14..16) {
                            Some(l) if first && buf.starts_with(&apex::proxy_proto::V2_SIG) => {
                                16 + usize::from(u16::from_be_bytes([l[0], l[1]]))
                            }
                            _ => 0,
                        };
                        let tail = buf.get(skip.min(buf.len())..).unwrap_or(&[]);
                        let Some(end) = find(tail, b"\r\n\r\n").map(|e| e + skip) else { break };
                        if first {
                            rec.lock().unwrap().push(buf[..end + 4].to_vec());
                            first = false;
                        }
                        buf.drain(..end + 4);
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[test]
fn exact_header_bytes_and_no_pooling() {
    for send in ["v1", "v2"] {
        let (up, seen) = recording_upstream();
        let apex = apex_to(up, send, "");
        let mut c = apex.client();
        let me = c.s.local_addr().unwrap();
        for _ in 0..3 {
            assert_eq!(c.request(&get("h", "/")).status, 200);
        }
        let mut want = [0u8; 108];
        let n = apex::proxy_proto::write(send == "v2", me, apex.addr, &mut want).unwrap();
        let want = &want[..n];
        if send == "v1" {
            let line = format!("PROXY TCP4 127.0.0.1 {} {} {}\r\n", apex.addr.ip(), me.port(), apex.addr.port());
            assert_eq!(want, line.as_bytes());
        } else {
            let mut v2 = apex::proxy_proto::V2_SIG.to_vec();
            v2.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1]);
            v2.extend_from_slice(&me.port().to_be_bytes());
            v2.extend_from_slice(&apex.addr.port().to_be_bytes());
            assert_eq!(want, &v2[..]);
        }
        let conns = seen.lock().unwrap().clone();
        assert_eq!(conns.len(), 3, "{send}: one upstream connection per request, never pooled");
        for b in &conns {
            assert!(b.starts_with(want), "{send}: {:?}", String::from_utf8_lossy(b));
            let rest = &b[want.len()..];
            assert!(rest.starts_with(b"GET / HTTP/1.1\r\nHost: h\r\n"), "{send}: {:?}", String::from_utf8_lossy(rest));
        }
    }
}

/// A group without send_proxy on the same server still pools, and never gets a connection that
/// began with another client's header.
#[test]
fn groups_without_send_proxy_keep_pooling() {
    let (up, seen) = recording_upstream();
    let apex = Apex::start_toml(&format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n[[route]]\npath = \"/p\"\nupstream = \"proxied\"\n\
         [[route]]\nupstream = \"plain\"\n[upstream.proxied]\nservers = [\"{up}\"]\nsend_proxy = \"v1\"\n\
         [upstream.plain]\nservers = [\"{up}\"]\n"
    ));
    let mut c = apex.client();
    for path in ["/", "/p", "/", "/p", "/"] {
        assert_eq!(c.request(&get("h", path)).status, 200, "{path}");
    }
    let conns = seen.lock().unwrap().clone();
    let proxied = conns.iter().filter(|b| b.starts_with(b"PROXY ")).count();
    assert_eq!(
        (conns.len(), proxied),
        (3, 2),
        "{:?}",
        conns.iter().map(|b| String::from_utf8_lossy(b)).collect::<Vec<_>>()
    );
}
