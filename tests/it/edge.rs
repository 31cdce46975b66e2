//! The edge (issue #18): PROXY protocol on listeners, from real HAProxy (`send-proxy`,
//! `send-proxy-v2`, in front of plain HTTP and of TLS) and from raw sockets for the malformed
//! headers; the real client address in X-Forwarded-For and the access log.
//!
//! HAProxy runs as a child of the test on a port bound and released (`dead_addr`; it cannot
//! report a port 0 it bound), in the foreground, killed when its guard drops. Its
//! `tcp-request connection set-src` makes the client it announces 192.0.2.77, an address no
//! socket on this machine has, so the address that arrives can only have come from the header.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::harness::*;
use crate::tls_kit::{Hello, Pki, client_conn, tls_over, tls_section};

/// The client HAProxy announces.
const SPOOFED: &str = "192.0.2.77";

/// HAProxy in TCP mode relaying to `to` with `send` (`send-proxy` or `send-proxy-v2`), or
/// `None` when it is not installed (.ci/run installs it; the caller says SKIPPED).
fn haproxy(to: SocketAddr, send: &str) -> Option<Daemon> {
    let dir = TempDir::new("haproxy");
    let addr = dead_addr();
    let conf = dir.write(
        "haproxy.cfg",
        &format!(
            "global\n    maxconn 64\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
             frontend f\n    bind {addr}\n    tcp-request connection set-src ipv4({SPOOFED})\n    default_backend b\n\
             backend b\n    server apex {to} {send}\n"
        ),
    );
    Daemon::start("haproxy", &["-db".as_ref(), "-f".as_ref(), conf.as_os_str()], addr, dir)
}

/// Apex with `[proxy_protocol]` on its listeners (plain, and TLS if `tls` is given), trusting
/// `trusted`, in front of `up`.
fn apex_proxied(up: SocketAddr, trusted: &str, tls: Option<&str>) -> Apex {
    let mut cfg = Config::to(up);
    if let Some(t) = tls {
        cfg = cfg.append(t);
    }
    let cfg = cfg.append(&format!("[proxy_protocol]\nlisteners = [\"127.0.0.1:0\"]\ntrusted = [{trusted}]\n"));
    Apex::start(&cfg)
}

#[test]
fn haproxy_send_proxy_v1_and_v2_name_the_client() {
    for send in ["send-proxy", "send-proxy-v2"] {
        let up = xff_upstream();
        let apex = apex_proxied(up.addr, "\"127.0.0.0/8\"", None);
        let Some(hap) = haproxy(apex.addr, send) else {
            eprintln!("SKIPPED: haproxy is not installed (apt-get install haproxy); .ci/run installs it");
            return;
        };
        let mut c = Client::connect(hap.addr);
        // Two requests on one connection: the header is read once, the address stays.
        for path in ["/one", "/two"] {
            let r = c.request(format!("GET {path}-{send} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
            assert_eq!(r.status, 200, "{send}: {}", r.head_str());
            assert_eq!(r.body_str(), SPOOFED, "{send}: X-Forwarded-For names the client HAProxy announced");
            let line = logged(&apex, &format!("{path}-{send}"));
            assert!(line.starts_with(&format!("{SPOOFED} ")), "{send}: access log: {line}");
        }
    }
}

#[test]
fn haproxy_in_front_of_tls() {
    let pki = Pki::new("edge");
    let up = xff_upstream();
    let apex = apex_proxied(up.addr, "\"127.0.0.1\"", Some(&tls_section(None, &[(&pki.a, &["a.test"])])));
    let tls_at = apex.tls_addr.expect("tls listener");
    for send in ["send-proxy", "send-proxy-v2"] {
        let Some(hap) = haproxy(tls_at, send) else {
            eprintln!("SKIPPED: haproxy is not installed (apt-get install haproxy); .ci/run installs it");
            return;
        };
        let tcp = TcpStream::connect(hap.addr).unwrap();
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut t = tls_over(tcp, client_conn(&pki, Hello::to("a.test"))).expect("TLS through haproxy");
        let r = t.request(format!("GET /tls-{send} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200, "{send}: {}", r.head_str());
        assert_eq!(r.body_str(), SPOOFED, "{send}");
        let line = logged(&apex, &format!("/tls-{send}"));
        assert!(line.starts_with(&format!("{SPOOFED} ")), "{send}: access log: {line}");
    }
}

/// A v2 header naming `src` (IPv4, PROXY command), built by hand.
fn v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = apex::proxy_proto::V2_SIG.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

#[test]
fn headers_in_pieces_and_local_and_unknown() {
    let up = xff_upstream();
    let apex = apex_proxied(up.addr, "\"127.0.0.0/8\"", None);
    // The header and the request trickle in byte by byte: the header is whole only at its end.
    let mut bytes = v2([198, 51, 100, 4], 5000);
    bytes.extend_from_slice(b"GET /pieces HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut c = Client::connect(apex.addr);
    for b in &bytes {
        c.send(std::slice::from_ref(b));
    }
    let r = c.read_response();
    assert_eq!((r.status, r.body_str().as_str()), (200, "198.51.100.4"));
    // v1 with the request in the same segment.
    let mut c = Client::connect(apex.addr);
    let r = c.request(b"PROXY TCP6 2001:db8::5 ::1 4000 80\r\nGET /six HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!((r.status, r.body_str().as_str()), (200, "2001:db8::5"));
    assert!(logged(&apex, "/six").starts_with("2001:db8::5 "));
    // LOCAL (a balancer's own health check) and UNKNOWN: the connection's own peer stands.
    let mut local = apex::proxy_proto::V2_SIG.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    for (name, header) in [("local", local), ("unknown", b"PROXY UNKNOWN\r\n".to_vec())] {
        let mut c = Client::connect(apex.addr);
        let mut req = header;
        req.extend_from_slice(format!("GET /{name} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        let r = c.request(&req);
        assert_eq!((r.status, r.body_str().as_str()), (200, "127.0.0.1"), "{name}");
    }
}

#[test]
fn malformed_headers_close_the_connection_unanswered() {
    let up = xff_upstream();
    let apex = apex_proxied(up.addr, "\"127.0.0.0/8\"", None);
    let ok = v2([192, 0, 2, 1], 1);
    let mut long_v1 = b"PROXY UNKNOWN ".to_vec();
    long_v1.resize(120, b'a');
    long_v1.extend_from_slice(b"\r\n");
    let with = |i: usize, b: u8| {
        let mut h = ok.clone();
        h[i] = b;
        h
    };
    let mut tlv_past = ok.clone();
    tlv_past[15] = 12 + 4; // 4 bytes of TLVs …
    tlv_past.extend_from_slice(&[0x04, 0x00, 0x09, 0x00]); // … whose one TLV says 9
    let mut too_long = apex::proxy_proto::V2_SIG.to_vec();
    too_long.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("no header (a plain request)", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), false),
        ("wrong v2 signature", with(3, 0x0B), false),
        ("v2 version 3", with(12, 0x31), false),
        ("v2 command 2", with(12, 0x22), false),
        ("unknown family", with(13, 0x41), false),
        ("unknown transport", with(13, 0x15), false),
        ("INET length too short", with(15, 8), false),
        ("TLV past the header", tlv_past, false),
        ("v2 length past what Apex takes", too_long, false),
        ("v1 over 107 bytes", long_v1, false),
        ("v1 bare LF", b"PROXY TCP4 192.0.2.1 127.0.0.1 1 80\nGET / HTTP/1.1\r\n\r\n".to_vec(), false),
        ("v1 bad port", b"PROXY TCP4 192.0.2.1 127.0.0.1 70000 80\r\n".to_vec(), false),
        // Truncated: part of a header, then the write side closed.
        ("v2 truncated", ok[..20].to_vec(), true),
        ("v2 length past the packet", with(15, 40), true),
        ("v1 truncated", b"PROXY TCP4 192.0.2.1 127.0".to_vec(), true),
    ];
    for (name, bytes, shut) in cases {
        let mut c = Client::connect(apex.addr);
        c.send(&bytes);
        if shut {
            c.s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let (got, closed) = c.read_until_close(Duration::from_secs(5));
        assert!(closed, "{name}: still open");
        assert!(got.is_empty(), "{name}: answered {:?}", String::from_utf8_lossy(&got));
    }
    assert!(up.requests().is_empty(), "nothing reached the upstream");
    // Each was logged with what was wrong (throttled at 10 a second; a few suffice).
    apex.wait_stderr("PROXY header expected: wrong signature", 1);
    // And Apex still serves a good one.
    let mut req = ok.clone();
    req.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = Client::connect(apex.addr).request(&req);
    assert_eq!((r.status, r.body_str().as_str()), (200, "192.0.2.1"));
}

#[test]
fn untrusted_peers_are_refused_even_with_a_valid_header() {
    let up = xff_upstream();
    let apex = apex_proxied(up.addr, "\"192.0.2.0/24\"", None);
    let mut req = v2([203, 0, 113, 1], 1);
    req.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut c = Client::connect(apex.addr);
    let _ = c.try_send(&req);
    let (got, closed) = c.read_until_close(Duration::from_secs(5));
    assert!(closed && got.is_empty(), "answered: {:?}", String::from_utf8_lossy(&got));
    assert!(up.requests().is_empty());
    apex.wait_stderr("not in proxy_protocol.trusted", 1);
}

#[test]
fn check_validates_proxy_protocol() {
    let base =
        "listen = [\"127.0.0.1:8080\"]\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n";
    let dir = TempDir::new("edge-check");
    for (extra, want) in [
        (
            "[proxy_protocol]\nlisteners = [\"127.0.0.1:9999\"]\ntrusted = [\"10.0.0.0/8\"]\n",
            ":7: proxy_protocol.listeners: 127.0.0.1:9999 is not in `listen`",
        ),
        (
            "[proxy_protocol]\nlisteners = [\"127.0.0.1:8080\"]\ntrusted = [\"10.0.0.1/8\"]\n",
            ":8: proxy_protocol.trusted: \"10.0.0.1/8\": host bits set",
        ),
        (
            "[proxy_protocol]\nlisteners = [\"127.0.0.1:8080\"]\ntrusted = []\n",
            ":8: proxy_protocol.trusted: give the load balancers' addresses",
        ),
    ] {
        let p = dir.write("bad.toml", &format!("{base}{extra}"));
        let (code, _, err) = run_apex(&["--check", p.to_str().unwrap()]);
        assert_ne!(code, Some(0), "{extra}");
        assert!(err.contains(want), "{extra}: {err}");
    }
    let p = dir.write(
        "good.toml",
        &format!(
            "{base}[proxy_protocol]\nlisteners = [\"127.0.0.1:8080\"]\ntrusted = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n"
        ),
    );
    let (code, out, err) = run_apex(&["--check", p.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(
            "[proxy_protocol]\nlisteners = [\"127.0.0.1:8080\"]\ntrusted = [\"10.0.0.0/8\", \"2001:db8::/32\"]"
        ),
        "{out}"
    );
}

/// `allow` / `deny` per route, judged on the address the PROXY header names: 403 from Apex,
/// nothing forwarded, keep-alive kept; other routes untouched.
#[test]
fn allow_and_deny_answer_403_on_the_real_address() {
    let up = xff_upstream();
    let cfg = Config::new().route("*", "/", "app").group("app", &[up.addr]).append(
        "[[route]]\npath = \"/admin\"\nupstream = \"app\"\nallow = [\"198.51.100.0/24\"]\ndeny = [\"198.51.100.66\"]\n\
             [[route]]\npath = \"/public\"\nupstream = \"app\"\ndeny = [\"203.0.113.0/24\", \"2001:db8::/32\"]\n\
             [proxy_protocol]\nlisteners = [\"127.0.0.1:0\"]\ntrusted = [\"127.0.0.0/8\"]\n",
    );
    let apex = Apex::start(&cfg);
    let as_client = |src: &str, paths: &[(&str, u16)]| {
        let mut c = Client::connect(apex.addr);
        let src: SocketAddr = src.parse().unwrap();
        let mut h = [0u8; 108];
        let n = apex::proxy_proto::write(true, src, apex.addr, &mut h).unwrap();
        c.send(&h[..n]);
        for (path, want) in paths {
            let r = c.request(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
            assert_eq!(r.status, *want, "{src} {path}: {}", r.head_str());
            if *want == 403 {
                assert_apex_status(&r, 403);
            }
        }
    };
    let before = up.requests().len();
    as_client("198.51.100.5:1", &[("/admin/x", 200), ("/public", 200), ("/", 200)]);
    as_client("198.51.100.66:1", &[("/admin", 403), ("/public", 200)]); // deny wins over allow
    as_client("192.0.2.1:1", &[("/admin", 403), ("/admin/y", 403), ("/public/z", 200)]);
    as_client("203.0.113.9:1", &[("/public", 403), ("/", 200), ("/admin", 403)]);
    as_client("[2001:db8::9]:1", &[("/public", 403), ("/", 200)]);
    let forwarded = up.requests().len() - before;
    assert_eq!(forwarded, 7, "only the admitted requests reach the upstream");
    assert!(logged(&apex, "/public").starts_with("198.51.100.5 "));
}

#[test]
fn check_validates_allow_and_deny() {
    let dir = TempDir::new("edge-acl");
    let base =
        "listen = [\"127.0.0.1:8080\"]\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n[[route]]\nupstream = \"app\"\n";
    let p = dir.write("bad.toml", &format!("{base}deny = [\"10.0.0.0/40\"]\n"));
    let (code, _, err) = run_apex(&["--check", p.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(err.contains(":6: deny: \"10.0.0.0/40\": prefix length must be 0 to 32"), "{err}");
    let p = dir.write("good.toml", &format!("{base}allow = [\"10.0.0.0/8\"]\ndeny = [\"10.9.0.0/16\"]\n"));
    let (code, out, err) = run_apex(&["--check", p.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("allow = [\"10.0.0.0/8\"]\ndeny = [\"10.9.0.0/16\"]\n"), "{out}");
}
