//! TLS termination: `[tls]` listeners with certificates chosen by SNI, TLS 1.2 and 1.3, ALPN
//! http/1.1, requests proxied as over plain TCP but with `X-Forwarded-Proto: https`, bad
//! certificate configs refused at start (and by `apex --check`), stalled and garbage handshakes
//! closed, session resumption across connections and workers, certificates reloaded on SIGHUP,
//! TLS 1.3 KeyUpdates from the client answered.
//! Certificates are made per test with rcgen (root CA -> intermediate -> leaf A for a.test and
//! *.a.test; root CA -> leaf B for b.test); clients are a blocking rustls client, curl and
//! `openssl s_client`, all trusting only the test root.

use crate::harness::*;
use crate::tls_kit::*;
use rcgen::KeyPair;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    AlertDescription, ClientConfig, ClientConnection, HandshakeKind, ProtocolVersion, StreamOwned,
    SupportedProtocolVersion,
};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- certificates

/// The test PKI (see `Root`). Leaf A (a.test, *.a.test) is signed by an intermediate and its
/// chain file holds leaf + intermediate; leaf B (b.test) is signed by the root and its chain is
/// the leaf alone. Keys are ECDSA P-256 in PKCS#8.
struct Pki {
    root: Root,
    a: Leaf,
    b: Leaf,
}

impl AsRef<Root> for Pki {
    fn as_ref(&self) -> &Root {
        &self.root
    }
}

const A_NAMES: &[&str] = &["a.test", "*.a.test"];
const B_NAMES: &[&str] = &["b.test"];

impl Pki {
    fn new() -> Pki {
        let root = Root::new("pki", "Apex Test Root");
        let (mid, mid_cert) = intermediate_ca("Apex Test Intermediate", &root.issuer);
        let a = sign_leaf(&root.dir, "a", A_NAMES, &new_key(), &mid, &[&mid_cert], |_| {});
        let b = sign_leaf(&root.dir, "b", B_NAMES, &new_key(), &root.issuer, &[], |_| {});
        Pki { root, a, b }
    }

    /// `[tls]` with A (the default) then B.
    fn section(&self) -> String {
        tls_section(None, &[(&self.a, A_NAMES), (&self.b, B_NAMES)])
    }

    /// Which test certificate a served chain starts with.
    fn which(&self, chain: &[CertificateDer<'static>]) -> &'static str {
        match chain.first() {
            Some(c) if *c == self.a.ders[0] => "A",
            Some(c) if *c == self.b.ders[0] => "B",
            Some(_) => "another certificate",
            None => "no certificate",
        }
    }
}

/// Apex with a plain listener and the `[tls]` listener of `pki.section()`, routing to `up`.
fn start_tls(up: &Upstream, pki: &Pki) -> Apex {
    Apex::start(&Config::to(up.addr).append(&pki.section()))
}

// ---------------------------------------------------------------- rustls client

/// The first TLS flight of a client: a ClientHello record.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let mut conn = client_conn(pki, Hello::to("a.test"));
    let mut out = vec![];
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    assert!(out.len() > 50 && out[0] == 0x16, "not a handshake record: {out:?}");
    out
}

/// What Apex may send on a connection it refuses at the TLS layer: nothing, or TLS alert records
/// (content type 21); never plaintext such as an HTTP response.
fn assert_nothing_or_alert(bytes: &[u8], what: &str) {
    assert!(
        bytes.is_empty() || (bytes.len() >= 7 && bytes[0] == 0x15 && bytes[1] == 3),
        "{what}: expected a plain close, maybe after a TLS alert; got {} bytes {:?}",
        bytes.len(),
        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
    );
}

/// A TLS request through Apex still works (and so does a plain one).
fn assert_serving(apex: &Apex, pki: &Pki, path: &str) {
    let mut t = tls(tls_addr(apex), pki, Hello::to("a.test"));
    let r = t.request(&get("a.test", path));
    assert_eq!(r.status, 200, "TLS request after the test: {}", r.head_str());
    let r = apex.client().request(&get("h", path));
    assert_eq!(r.status, 200, "plain request after the test: {}", r.head_str());
}

/// Answers 200 with `METHOD TARGET BODY` for every request.
fn echo_all() -> Upstream {
    Upstream::http(|r| ok(&format!("{} {} {}", r.method, r.target, String::from_utf8_lossy(&r.body))))
}

/// 200 with Content-Length and the request body as the body.
fn echo_body(r: &Req) -> Vec<u8> {
    let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", r.body.len()).into_bytes();
    v.extend_from_slice(&r.body);
    v
}

// ---------------------------------------------------------------- proxying over TLS

#[test]
fn tls12_and_tls13_requests_are_proxied_with_x_forwarded_proto_https() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    for (v, want) in versions() {
        let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test").v(v));
        assert_eq!(t.version(), Some(want));
        // A client-sent X-Forwarded-Proto is replaced, as on plain connections.
        let r = t.request(b"GET /secure?x=1 HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-Proto: http\r\n\r\n");
        assert_eq!(r.status, 200, "{want:?}: {}", r.head_str());
        assert_eq!(r.body_str(), "/secure?x=1", "{want:?}");
    }
    let r = apex.client().request(&get("plain.test", "/plain"));
    assert_eq!(r.status, 200);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3, "{reqs:#?}");
    for r in &reqs[..2] {
        assert_eq!(r.target, "/secure?x=1");
        assert_eq!(r.headers_named("x-forwarded-proto"), vec!["https"], "over TLS:\n{}", r.head_str());
        assert_eq!(r.headers_named("host"), vec!["a.test"], "{}", r.head_str());
        assert_eq!(r.headers_named("x-forwarded-for"), vec!["127.0.0.1"], "{}", r.head_str());
    }
    assert_eq!(reqs[2].headers_named("x-forwarded-proto"), vec!["http"], "plain:\n{}", reqs[2].head_str());
}

#[test]
fn listeners_are_announced_plain_first_then_tls() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let (plain2, tls2) = (dead_addr(), dead_addr());
    let section =
        pki.section().replacen("listen = [\"127.0.0.1:0\"]", &format!("listen = [\"127.0.0.1:0\", \"{tls2}\"]"), 1);
    let toml = Config::to(up.addr).append(&section).render().replacen(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"127.0.0.1:0\", \"{plain2}\"]"),
        1,
    );
    let apex = Apex::start_toml(&toml);
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines: Vec<String> =
            apex.stdout_lines().into_iter().filter(|l| l.starts_with("apex: listening on ")).collect();
        if lines.len() >= 4 || Instant::now() > deadline {
            break lines;
        }
        thread::sleep(ms(10));
    };
    assert_eq!(lines.len(), 4, "two plain and two TLS listening lines expected: {lines:#?}");
    let addr_of = |l: &str| -> SocketAddr {
        let a = l.trim_start_matches("apex: listening on ").trim_end_matches(" tls").trim();
        a.parse().unwrap_or_else(|_| panic!("bad address in {l:?}"))
    };
    let is_tls: Vec<bool> = lines.iter().map(|l| l.trim_end().ends_with(" tls")).collect();
    assert_eq!(is_tls, vec![false, false, true, true], "plain lines first, then ` tls` lines: {lines:#?}");
    let addrs: Vec<SocketAddr> = lines.iter().map(|l| addr_of(l)).collect();
    assert!(addrs.iter().all(|a| a.port() != 0), "real ports are printed: {lines:#?}");
    assert!(addrs[..2].contains(&plain2) && addrs[2..].contains(&tls2), "{lines:#?}");
    assert_eq!(apex.addr, addrs[0], "Apex::addr is the first plain listener");
    assert_eq!(apex.tls_addr, Some(addrs[2]), "Apex::tls_addr is the first TLS listener");
    for (i, a) in addrs.iter().enumerate() {
        let path = format!("/listener{i}");
        let r = if is_tls[i] {
            tls(*a, &pki, Hello::to("a.test")).request(&get("a.test", &path))
        } else {
            Client::connect(*a).request(&get("h", &path))
        };
        assert_eq!((r.status, r.body_str()), (200, path), "listener {a}");
    }
}

#[test]
fn alpn_selects_http11_and_refuses_h2_only() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    let addr = tls_addr(&apex);
    for (v, want) in versions() {
        let offers: [(&'static [&'static str], Option<&str>); 3] =
            [(&["h2", "http/1.1"], Some("http/1.1")), (&["http/1.1"], Some("http/1.1")), (&[], None)];
        for (offer, chosen) in offers {
            let mut t = tls(addr, &pki, Hello::to("a.test").v(v).alpn(offer));
            assert_eq!(t.alpn().as_deref(), chosen, "{want:?}, client offers {offer:?}");
            let r = t.request(&get("a.test", "/alpn"));
            assert_eq!(r.status, 200, "{want:?}, client offers {offer:?}: {}", r.head_str());
        }
        match tls_try(addr, &pki, Hello::to("a.test").v(v).alpn(&["h2"])) {
            Ok(t) => panic!("{want:?}: a client offering only h2 completed a handshake; ALPN {:?}", t.alpn()),
            Err(e) => assert!(
                matches!(rustls_error(&e), Some(rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol))),
                "{want:?}: a client offering only h2 must get a no_application_protocol alert, got: {e}"
            ),
        }
    }
    assert_serving(&apex, &pki, "/after");
}

#[test]
fn keep_alive_many_requests_on_one_tls_connection() {
    let up = echo_all();
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    for (v, want) in versions() {
        let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test").v(v));
        for i in 0..150 {
            let (req, expect) = match i % 3 {
                0 => (get("a.test", &format!("/k{i}")), format!("GET /k{i} ")),
                1 => (
                    format!("POST /k{i} HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nbody{}", i % 10)
                        .into_bytes(),
                    format!("POST /k{i} body{}", i % 10),
                ),
                _ => {
                    let mut req = format!("POST /k{i} HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .into_bytes();
                    req.extend_from_slice(&chunked(&[b"chun", b"ked"]));
                    (req, format!("POST /k{i} chunked"))
                }
            };
            t.send(&req);
            let r = t.try_read_response(false).unwrap_or_else(|e| panic!("{want:?}, request {i}: {e}"));
            assert_eq!(r.status, 200, "{want:?}, request {i}: {}", r.head_str());
            assert_eq!(r.body_str(), expect, "{want:?}, request {i}");
            assert!(!r.has_token("connection", "close"), "{want:?}, request {i}: {}", r.head_str());
        }
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 300);
    assert!(reqs.iter().all(|r| r.headers_named("x-forwarded-proto") == ["https"]), "every request is https");
}

#[test]
fn pipelined_requests_in_one_tls_record_are_answered_in_order() {
    let up = echo_all();
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    for (v, want) in versions() {
        let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test").v(v));
        let mut all = vec![];
        let mut expect = vec![];
        for i in 0..40 {
            all.extend_from_slice(&get("a.test", &format!("/p{i}")));
            expect.push(format!("GET /p{i} "));
        }
        all.extend_from_slice(b"POST /cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc");
        expect.push("POST /cl abc".into());
        all.extend_from_slice(b"POST /ch HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n");
        all.extend_from_slice(&chunked(&[b"de", b"f"]));
        expect.push("POST /ch def".into());
        all.extend_from_slice(&get("a.test", "/last"));
        expect.push("GET /last ".into());
        t.send_one_record(&all);
        for (i, e) in expect.iter().enumerate() {
            let r = t.try_read_response(false).unwrap_or_else(|err| panic!("{want:?}, response {i}: {err}"));
            assert_eq!((r.status, r.body_str()), (200, e.clone()), "{want:?}, response {i}");
        }
    }
}

#[test]
fn content_length_and_chunked_bodies_both_ways_over_tls() {
    // /cl echoes the body with Content-Length, /chunked echoes it chunked in two chunks.
    let up = Upstream::http(|r| {
        if r.target == "/chunked" {
            let half = r.body.len() / 2;
            let mut v = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            v.extend_from_slice(&chunked(&[&r.body[..half], &r.body[half..]]));
            v
        } else {
            echo_body(r)
        }
    });
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test"));
    let r = t.request(b"POST /cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: 11\r\n\r\nhello there");
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello there"));
    assert_eq!(r.header("content-length"), Some("11"), "{}", r.head_str());
    let r = t.request(
        b"POST /chunked HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n\
5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert!(r.has_token("transfer-encoding", "chunked"), "{}", r.head_str());
    assert_eq!(r.body_str(), "hello world");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body, b"hello there");
    let body = canonical_chunked(&reqs[1].body_raw)
        .unwrap_or_else(|e| panic!("chunked body not re-framed canonically ({e}): {:?}", reqs[1].body_raw));
    assert_eq!(body, b"hello world");
}

#[test]
fn large_uploads_over_tls_arrive_byte_for_byte() {
    let up = Upstream::http(|r| ok(&pattern_verdict(&r.body)));
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    let data = pattern_bytes(BIG);
    for (v, want) in versions() {
        let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test").v(v));
        t.send(format!("POST /cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: {BIG}\r\n\r\n").as_bytes());
        t.send(&data);
        let r = t.read_response();
        assert_eq!((r.status, r.body_str()), (200, format!("intact {BIG}")), "{want:?}, Content-Length upload");
        t.send(b"POST /chunked HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n");
        for part in data.chunks(100_000) {
            t.send(format!("{:x}\r\n", part.len()).as_bytes());
            t.send(part);
            t.send(b"\r\n");
        }
        t.send(b"0\r\n\r\n");
        let r = t.read_response();
        assert_eq!((r.status, r.body_str()), (200, format!("intact {BIG}")), "{want:?}, chunked upload");
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 4);
    for r in reqs.iter().filter(|r| r.target == "/chunked") {
        assert!(r.has_token("transfer-encoding", "chunked"), "{}", r.head_str());
        canonical_chunked(&r.body_raw).unwrap_or_else(|e| panic!("upstream chunked framing: {e}"));
    }
}

#[test]
fn large_downloads_over_tls_arrive_byte_for_byte() {
    let data = Arc::new(pattern_bytes(BIG));
    let body = data.clone();
    let up = Upstream::start(move |mut c| {
        while let Some(r) = c.read_request() {
            let mut resp;
            if r.target == "/chunked" {
                resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for part in body.chunks(65_000) {
                    resp.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    resp.extend_from_slice(part);
                    resp.extend_from_slice(b"\r\n");
                }
                resp.extend_from_slice(b"0\r\n\r\n");
            } else {
                resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                resp.extend_from_slice(&body);
            }
            if c.write(&resp).is_err() {
                return;
            }
        }
    });
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    for (v, want) in versions() {
        // Both on one connection: the connection stays usable after a big body.
        let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test").v(v));
        for path in ["/cl", "/chunked", "/cl"] {
            let r = t.request(&get("a.test", path));
            assert_eq!(r.status, 200, "{want:?} {path}: {}", r.head_str());
            assert_eq!(pattern_verdict(&r.body), format!("intact {BIG}"), "{want:?} {path}");
        }
    }
}

#[test]
fn incomplete_request_head_over_tls_gets_408() {
    let up = Upstream::silent();
    let pki = Pki::new();
    let apex = Apex::start(&Config::to(up.addr).timeout("client_head", "1s").append(&pki.section()));
    let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test"));
    t.send(b"GET /slow HTTP/1.1\r\nHost: a.test\r\n");
    let r = t.try_read_response(false).unwrap_or_else(|e| panic!("expected a 408 over TLS: {e}"));
    assert_apex_status(&r, 408);
    assert!(r.has_token("connection", "close"), "{}", r.head_str());
    let (rest, closed) = t.read_until_close(Duration::from_secs(10));
    assert!(closed, "the TLS connection must close after the 408");
    assert!(rest.is_empty(), "bytes after the 408: {:?}", String::from_utf8_lossy(&rest));
    up.assert_untouched();
}

// ---------------------------------------------------------------- hostile clients on the TLS port

#[test]
fn stalled_handshakes_are_closed_after_client_head_while_others_are_served() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    // One worker: a stalled handshake must not hold it.
    let apex = Apex::start(&Config::to(up.addr).timeout("client_head", "4s").append(&pki.section()));
    let addr = tls_addr(&apex);
    let hello = client_hello(&pki);
    let mut half = Client::connect(addr);
    half.send(&hello[..hello.len() / 2]);
    let mut mute = Client::connect(addr);
    for (v, want) in versions() {
        for i in 0..3 {
            let mut t = tls(addr, &pki, Hello::to("a.test").v(v));
            let path = format!("/meanwhile{i}");
            let r = t.request(&get("a.test", &path));
            assert_eq!((r.status, r.body_str()), (200, path), "{want:?}: a client served beside stalled ones");
        }
    }
    for (what, c) in [("half a ClientHello", &mut half), ("nothing", &mut mute)] {
        assert_eq!(
            c.wait(ms(10)),
            Seen::Silent,
            "the client that sent {what} was closed before the other clients were served; client_head \
             is 4s, so the stalled handshake held the worker (or this machine took 4 s for 6 handshakes)"
        );
    }
    for (what, c) in [("half a ClientHello", &mut half), ("nothing", &mut mute)] {
        let (bytes, closed) = c.read_until_close(Duration::from_secs(20));
        assert!(closed, "the client that sent {what} is still connected 20 s after client_head = 4s");
        assert_nothing_or_alert(&bytes, what);
    }
    assert_eq!(up.requests().len(), 6, "only the served clients' requests reach the upstream");
    assert_serving(&apex, &pki, "/after");
}

#[test]
fn garbage_on_the_tls_port_is_closed_and_apex_keeps_serving() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    // client_head bounds a server that waits for more instead of refusing at once.
    let apex = Apex::start(&Config::to(up.addr).timeout("client_head", "2s").append(&pki.section()));
    let addr = tls_addr(&apex);
    let mut junk = vec![0x16, 0x03, 0x01, 0x00, 0x20];
    junk.extend_from_slice(&[0xab; 32]);
    let cases: [(&str, Vec<u8>); 5] = [
        ("a plain HTTP request", get("a.test", "/plain-on-tls")),
        ("a plain HTTP request with a body", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc".to_vec()),
        ("a record header claiming 64 KiB", [&[0x16u8, 0x03, 0x01, 0xff, 0xff][..], &[0x42u8; 100][..]].concat()),
        ("a handshake record of junk", junk),
        ("zero bytes", vec![0; 4096]),
    ];
    for (what, bytes) in &cases {
        let mut c = Client::connect(addr);
        let _ = c.try_send(bytes);
        let (got, closed) = c.read_until_close(Duration::from_secs(15));
        assert!(closed, "after {what} on the TLS port the connection is still open 15 s later");
        assert_nothing_or_alert(&got, what);
    }
    up.assert_untouched();
    let mut apex = apex;
    assert!(apex.is_running(), "apex exited; stderr:\n{}", apex.stderr());
    assert_serving(&apex, &pki, "/after-garbage");
}

// ---------------------------------------------------------------- SNI

/// Handshakes with `h` and asserts the certificate served (`want` is "A" or "B") and that a
/// request works on it.
fn assert_cert(addr: SocketAddr, pki: &Pki, h: Hello, want: &str) {
    let mut t = tls(addr, pki, h);
    let chain = t.chain();
    assert_eq!(pki.which(&chain), want, "certificate served for {h:?}");
    let leaf = if want == "A" { &pki.a } else { &pki.b };
    assert!(chain == leaf.ders, "the whole chain file is served, leaf first ({} certificates)", leaf.ders.len());
    let r = t.request(&get(h.sni.unwrap_or("nosni.test"), "/sni"));
    assert_eq!(r.status, 200, "{h:?}: {}", r.head_str());
}

#[test]
fn sni_selects_the_certificate_and_the_first_is_the_default() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    let addr = tls_addr(&apex);
    for (v, _) in versions() {
        assert_cert(addr, &pki, Hello::to("a.test").v(v), "A");
        assert_cert(addr, &pki, Hello::to("b.test").v(v), "B");
        assert_cert(addr, &pki, Hello::to("x.a.test").v(v), "A");
        assert_cert(addr, &pki, Hello::to("unknown.test").valid_for("a.test").v(v), "A");
        assert_cert(addr, &pki, Hello::to("a.test").no_sni().v(v), "A");
    }
}

#[test]
fn sni_wildcard_matches_one_label_and_default_follows_order() {
    // B first: now the default is B, so a wildcard match on A is not the default in disguise.
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let apex =
        Apex::start(&Config::to(up.addr).append(&tls_section(Some(false), &[(&pki.b, B_NAMES), (&pki.a, A_NAMES)])));
    let addr = tls_addr(&apex);
    for (v, _) in versions() {
        assert_cert(addr, &pki, Hello::to("x.a.test").v(v), "A");
        assert_cert(addr, &pki, Hello::to("a.test").v(v), "A");
        assert_cert(addr, &pki, Hello::to("b.test").v(v), "B");
        assert_cert(addr, &pki, Hello::to("y.x.a.test").valid_for("b.test").v(v), "B");
        assert_cert(addr, &pki, Hello::to("unknown.test").valid_for("b.test").v(v), "B");
        assert_cert(addr, &pki, Hello::to("b.test").no_sni().v(v), "B");
    }
}

#[test]
fn strict_sni_refuses_names_no_certificate_serves() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let apex =
        Apex::start(&Config::to(up.addr).append(&tls_section(Some(true), &[(&pki.a, A_NAMES), (&pki.b, B_NAMES)])));
    let addr = tls_addr(&apex);
    for (v, want) in versions() {
        assert_cert(addr, &pki, Hello::to("a.test").v(v), "A");
        assert_cert(addr, &pki, Hello::to("x.a.test").v(v), "A");
        assert_cert(addr, &pki, Hello::to("b.test").v(v), "B");
        for name in ["unknown.test", "y.x.a.test"] {
            if let Ok(t) = tls_try(addr, &pki, Hello::to(name).valid_for("a.test").v(v)) {
                panic!("{want:?}: strict_sni served SNI {name} with certificate {}", pki.which(&t.chain()));
            }
        }
    }
    assert_eq!(up.requests().len(), 6, "only the accepted handshakes sent requests");
    assert_serving(&apex, &pki, "/after-strict");
}

// ---------------------------------------------------------------- certificate and key files

#[test]
fn sec1_and_pkcs1_keys_are_accepted() {
    let pki = Pki::new();
    let dir = pki.root.dir.path();
    // B's key as SEC1 ("EC PRIVATE KEY").
    let sec1 = dir.join("b.sec1.key");
    openssl(&["ec", "-in", path_str(&pki.b.key), "-out", path_str(&sec1)]);
    let text = std::fs::read_to_string(&sec1).unwrap();
    assert!(text.contains("BEGIN EC PRIVATE KEY"), "openssl ec did not write SEC1:\n{text}");
    // C: an RSA key, PKCS#1 ("RSA PRIVATE KEY"), for c.test, signed by the root.
    let p8 = dir.join("c.p8.key");
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path_str(&p8)]);
    let rsa = KeyPair::from_pem(&std::fs::read_to_string(&p8).unwrap()).unwrap();
    let c = sign_leaf(&pki.root.dir, "c", &["c.test"], &rsa, &pki.root.issuer, &[], |_| {});
    openssl(&["rsa", "-in", path_str(&p8), "-traditional", "-out", path_str(&c.key)]);
    let text = std::fs::read_to_string(&c.key).unwrap();
    assert!(text.contains("BEGIN RSA PRIVATE KEY"), "openssl rsa did not write PKCS#1:\n{text}");

    let up = Upstream::echo_path();
    let section = format!(
        "{}{}",
        tls_section(None, &[(&pki.a, A_NAMES)]),
        [cert_entry(&pki.b.chain, &sec1, B_NAMES), cert_entry(&c.chain, &c.key, &["c.test"])].concat()
    );
    let apex = Apex::start(&Config::to(up.addr).append(&section));
    let addr = tls_addr(&apex);
    for (v, want) in versions() {
        assert_cert(addr, &pki, Hello::to("b.test").v(v), "B");
        let mut t = tls(addr, &pki, Hello::to("c.test").v(v));
        assert!(t.chain() == c.ders, "{want:?}: c.test must get the RSA certificate C");
        let r = t.request(&get("c.test", "/rsa"));
        assert_eq!(r.status, 200, "{want:?}: {}", r.head_str());
    }
}

/// Starts `apex FILE` with `section` and asserts it exits non-zero at start, without a panic,
/// naming one of `paths` and (case-insensitively) containing every one of `words`.
fn assert_refused(section: &str, paths: &[&Path], words: &[&str]) {
    let dir = TempDir::new("badtls");
    let conf = dir.write("apex.toml", &Config::to(dead_addr()).append(section).render());
    let (code, _out, err) = run_apex(&[path_str(&conf)]);
    assert!(!err.contains("panicked"), "apex panicked:\n{err}\nconfig:\n{section}");
    assert!(code.is_some() && code != Some(0), "exit code {code:?}, expected a start-up error; stderr:\n{err}");
    assert!(
        paths.iter().any(|p| err.contains(path_str(p))),
        "stderr must name the file at fault (one of {paths:?}):\n{err}"
    );
    let low = err.to_ascii_lowercase();
    for w in words {
        assert!(low.contains(&w.to_ascii_lowercase()), "stderr must say {w:?}:\n{err}");
    }
}

#[test]
fn missing_chain_file_is_refused_at_start() {
    let pki = Pki::new();
    let missing = pki.root.dir.path().join("missing.pem");
    let section = format!("{}{}", tls_section(None, &[(&pki.a, A_NAMES)]), cert_entry(&missing, &pki.b.key, B_NAMES));
    assert_refused(&section, &[&missing], &[]);
}

#[test]
fn missing_key_file_is_refused_at_start() {
    let pki = Pki::new();
    let missing = pki.root.dir.path().join("missing.key");
    let section = format!("{}{}", tls_section(None, &[(&pki.a, A_NAMES)]), cert_entry(&pki.b.chain, &missing, B_NAMES));
    assert_refused(&section, &[&missing], &[]);
}

#[test]
fn key_not_matching_the_certificate_is_refused_at_start() {
    let pki = Pki::new();
    // B's chain with A's key.
    let section =
        format!("{}{}", tls_section(None, &[(&pki.a, A_NAMES)]), cert_entry(&pki.b.chain, &pki.a.key, B_NAMES));
    assert_refused(&section, &[&pki.b.chain, &pki.a.key], &["does not match"]);
}

#[test]
fn names_the_certificate_does_not_cover_are_refused_at_start() {
    let pki = Pki::new();
    let section = tls_section(None, &[(&pki.a, A_NAMES), (&pki.b, &["b.test", "c.test"])]);
    assert_refused(&section, &[&pki.b.chain], &["c.test"]);
    // A wildcard the certificate does not hold is not covered by an exact name either.
    let section = tls_section(None, &[(&pki.a, A_NAMES), (&pki.b, &["b.test", "*.b.test"])]);
    assert_refused(&section, &[&pki.b.chain], &["*.b.test"]);
}

// ---------------------------------------------------------------- curl and openssl s_client

#[test]
fn curl_gets_and_posts_over_tls12_and_tls13() {
    let up = Upstream::http(|r| if r.method == "POST" { echo_body(r) } else { ok(&r.target) });
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    let addr = tls_addr(&apex);
    let upload = pki.root.dir.write("upload.bin", "");
    let data = pattern_bytes((3 << 19) + 7);
    std::fs::write(&upload, &data).unwrap();
    let data_arg = format!("@{}", path_str(&upload));
    for (flags, want) in [(&["--tlsv1.2", "--tls-max", "1.2"][..], "TLSv1.2"), (&["--tlsv1.3"][..], "TLSv1.3")] {
        // curl checks the name, so each success also shows SNI chose a certificate for the host.
        for host in ["a.test", "b.test", "x.a.test"] {
            let path = format!("/curl/{host}");
            let (code, w, err, body) = curl(addr, &pki, host, &path, flags);
            assert_eq!(code, Some(0), "curl {flags:?} https://{host}/ failed:\n{err}");
            assert_eq!(w, "200 1.1", "curl {flags:?} {host}: status and HTTP version;\n{err}");
            assert_eq!(String::from_utf8_lossy(&body), path, "curl {flags:?} {host}");
            assert!(err.contains(&format!("SSL connection using {want}")), "curl {flags:?}: not {want}:\n{err}");
            assert!(
                err.lines().any(|l| l.contains("ALPN") && l.contains("accepted") && l.contains("http/1.1")),
                "curl {flags:?}: the server must accept ALPN http/1.1:\n{err}"
            );
        }
        let extra =
            [flags, &["--data-binary", data_arg.as_str(), "-H", "Content-Type: application/octet-stream"][..]].concat();
        let (code, w, err, body) = curl(addr, &pki, "a.test", "/curl/upload", &extra);
        assert_eq!(code, Some(0), "curl {flags:?} upload failed:\n{err}");
        assert_eq!(w, "200 1.1", "curl {flags:?} upload;\n{err}");
        assert_eq!(body.len(), data.len(), "curl {flags:?}: echoed upload length");
        assert!(body == data, "curl {flags:?}: echoed upload differs: {}", pattern_verdict(&body));
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 8);
    assert!(reqs.iter().all(|r| r.headers_named("x-forwarded-proto") == ["https"]), "every curl request is https");
}

#[test]
fn openssl_s_client_negotiates_http11_with_sni_over_tls12_and_tls13() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    let connect = tls_addr(&apex).to_string();
    for (flag, want) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let args = [
            "s_client",
            "-connect",
            connect.as_str(),
            "-servername",
            "b.test",
            "-alpn",
            "http/1.1",
            "-CAfile",
            path_str(&pki.root.ca),
            "-verify_hostname",
            "b.test",
            "-verify_return_error",
            "-ign_eof",
            "-nocommands",
            flag,
        ];
        let req = b"GET /ossl HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n";
        let (code, out, err) = run_tool("openssl", &args, req, Duration::from_secs(30));
        let out = String::from_utf8_lossy(&out);
        assert!(
            code.is_some(),
            "openssl s_client {flag} still running after 30 s (apex did not close after `Connection: close`?):\n{out}\n{err}"
        );
        assert!(out.contains(&format!("New, {want},")), "{flag}: not {want}:\n{out}\n{err}");
        assert!(out.contains("ALPN protocol: http/1.1"), "{flag}: ALPN http/1.1 not negotiated:\n{out}\n{err}");
        // -verify_hostname b.test: only certificate B is valid for it.
        assert!(out.contains("Verify return code: 0 (ok)"), "{flag}: certificate not valid for b.test:\n{out}\n{err}");
        assert!(out.contains("HTTP/1.1 200 "), "{flag}: no response:\n{out}\n{err}");
        assert!(out.contains("/ossl"), "{flag}: response body missing:\n{out}\n{err}");
    }
    assert_eq!(up.requests().len(), 2);
}

// ---------------------------------------------------------------- session resumption

/// Connects `n` times with one client config (so one session store), one request on each,
/// closing each with close_notify; returns each connection's handshake kind.
fn connect_n_times(apex: &Apex, pki: &Pki, v: &'static SupportedProtocolVersion, n: usize) -> Vec<HandshakeKind> {
    let cfg = client_config(pki, Hello::to("a.test").v(v));
    let want =
        if std::ptr::eq(v, &rustls::version::TLS13) { ProtocolVersion::TLSv1_3 } else { ProtocolVersion::TLSv1_2 };
    let mut kinds = vec![];
    for i in 0..n {
        let mut t = tls_with(tls_addr(apex), &cfg, "a.test");
        assert_eq!(t.version(), Some(want), "connection {i}");
        let kind = t.handshake_kind().unwrap_or_else(|| panic!("{want:?}, connection {i}: no handshake kind"));
        let path = format!("/resume/{i}");
        // The response also carries the session tickets in front of it (TLS 1.3 sends them after
        // the handshake), so reading it is what fills the client's session store.
        let r = t.request(&get("a.test", &path));
        assert_eq!((r.status, r.body_str()), (200, path), "{want:?}, connection {i} ({kind:?}): {}", r.head_str());
        t.close();
        kinds.push(kind);
    }
    kinds
}

/// The first handshake is full, every later one resumes.
fn assert_full_then_resumed(kinds: &[HandshakeKind], what: &str) {
    assert_eq!(kinds.first(), Some(&HandshakeKind::Full), "{what}: the first connection has nothing to resume");
    let not_resumed: Vec<(usize, HandshakeKind)> =
        kinds.iter().copied().enumerate().skip(1).filter(|&(_, k)| k != HandshakeKind::Resumed).collect();
    assert!(
        not_resumed.is_empty(),
        "{what}: every connection after the first must resume the session of the one before; \
         these did not (index, handshake kind): {not_resumed:?}; all: {kinds:?}"
    );
}

/// Threads of `apex` named `apex-w*` (its workers), once there are `want` of them or after 5 s
/// (a thread names itself once it runs, which may be after the listening line).
fn worker_threads(apex: &Apex, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let dir = std::fs::read_dir(format!("/proc/{}/task", apex.pid())).unwrap();
        let n = dir
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
            .filter(|c| c.starts_with("apex-w"))
            .count();
        if n == want || Instant::now() > deadline {
            return n;
        }
        thread::sleep(ms(10));
    }
}

/// Apex with `workers` workers; `n` connections with one client config offering only `v`, one
/// request each: the first handshake is full, every later one resumes; all `n` requests arrive.
fn assert_sessions_resume(v: &'static SupportedProtocolVersion, workers: u32, n: usize) {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let apex = Apex::start(&Config::to(up.addr).workers(workers).append(&pki.section()));
    if workers > 1 {
        assert_eq!(
            worker_threads(&apex, workers as usize),
            workers as usize,
            "apex must run {workers} worker threads for this test"
        );
    }
    let kinds = connect_n_times(&apex, &pki, v, n);
    let name = if std::ptr::eq(v, &rustls::version::TLS13) { "TLS 1.3" } else { "TLS 1.2" };
    assert_full_then_resumed(&kinds, &format!("{name}, workers = {workers}"));
    assert_eq!(up.requests().len(), n);
}

#[test]
fn tls13_session_resumes_with_one_worker() {
    assert_sessions_resume(&rustls::version::TLS13, 1, 4);
}

#[test]
fn tls12_session_resumes_with_one_worker() {
    assert_sessions_resume(&rustls::version::TLS12, 1, 4);
}

/// 16 connections over two SO_REUSEPORT workers: the kernel spreads them by 4-tuple hash, so the
/// odds that all land on one worker are 2^-15; a ticket issued by one worker is then presented to
/// the other. Tickets are sealed with one key shared by the workers; the per-worker session
/// caches do not matter for them.
#[test]
fn tls13_session_tickets_resume_on_either_of_two_workers() {
    assert_sessions_resume(&rustls::version::TLS13, 2, 16);
}

/// As above over TLS 1.2: Apex issues TLS 1.2 session tickets too (RFC 5077), sealed with the
/// same shared key, so resumption does not depend on which worker's session cache is asked.
#[test]
fn tls12_session_tickets_resume_on_either_of_two_workers() {
    assert_sessions_resume(&rustls::version::TLS12, 2, 16);
}

// ---------------------------------------------------------------- certificate reload

#[test]
fn sighup_reloads_certificates_and_a_failed_reload_keeps_the_previous_ones() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    // The files Apex serves from, rewritten in place by the test; the config never changes.
    let live = TempDir::new("live-cert");
    let chain = live.write("live.pem", &std::fs::read_to_string(&pki.a.chain).unwrap());
    let key = live.write("live.key", &std::fs::read_to_string(&pki.a.key).unwrap());
    let section = format!("[tls]\nlisten = [\"127.0.0.1:0\"]\n{}", cert_entry(&chain, &key, A_NAMES));
    let mut apex = Apex::start(&Config::to(up.addr).append(&section));
    let addr = tls_addr(&apex);

    // Connections opened before the reload, one per version, kept open across both reloads.
    let mut before: Vec<(ProtocolVersion, Tls)> = vec![];
    for (v, want) in versions() {
        let mut t = tls(addr, &pki, Hello::to("a.test").v(v));
        assert!(t.chain() == pki.a.ders, "{want:?}: before the reload, certificate A is served");
        let r = t.request(&get("a.test", "/before-reload"));
        assert_eq!(r.status, 200, "{want:?}: {}", r.head_str());
        before.push((want, t));
    }

    // A2: the same names, a new key, another issuer (the root), so the chain differs too.
    let a2 = sign_leaf(&pki.root.dir, "a2", A_NAMES, &new_key(), &pki.root.issuer, &[], |_| {});
    std::fs::write(&chain, std::fs::read(&a2.chain).unwrap()).unwrap();
    std::fs::write(&key, std::fs::read(&a2.key).unwrap()).unwrap();
    apex.signal("HUP");
    apex.wait_stderr("apex: info: reloaded", 1);
    // A fresh client config per connection: nothing is resumed, so the chain is the one served now.
    for (v, want) in versions() {
        let mut t = tls(addr, &pki, Hello::to("a.test").v(v));
        assert!(
            t.chain() == a2.ders,
            "{want:?}: a connection made after the reload must get the new certificate, got {}",
            pki.which(&t.chain())
        );
        let r = t.request(&get("a.test", "/after-reload"));
        assert_eq!(r.status, 200, "{want:?}: {}", r.head_str());
    }
    for (want, t) in &mut before {
        let r = t.request(&get("a.test", "/old-conn-after-reload"));
        assert_eq!(r.status, 200, "{want:?}: a connection opened before the reload keeps working: {}", r.head_str());
        assert!(t.chain() == pki.a.ders, "{want:?}: the old connection still has certificate A");
    }

    // A broken key: the reload fails, naming the key file, and A2 stays.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\ngarbage\n").unwrap();
    apex.signal("HUP");
    apex.wait_stderr("apex: error: reload failed", 1);
    let err = apex.stderr();
    let line = err.lines().find(|l| l.contains("apex: error: reload failed")).unwrap();
    assert!(line.contains(path_str(&key)), "the reload failure must name the key file {}:\n{err}", key.display());
    assert_eq!(err.matches("apex: info: reloaded").count(), 1, "the failed reload must not report success:\n{err}");
    assert!(apex.is_running(), "apex exited after a failed reload; stderr:\n{err}");
    for (v, want) in versions() {
        let mut t = tls(addr, &pki, Hello::to("a.test").v(v));
        assert!(
            t.chain() == a2.ders,
            "{want:?}: after a failed reload the previous (second) certificate is still served, got {}",
            pki.which(&t.chain())
        );
        let r = t.request(&get("a.test", "/after-failed-reload"));
        assert_eq!(r.status, 200, "{want:?}: {}", r.head_str());
    }
    for (want, t) in &mut before {
        let r = t.request(&get("a.test", "/old-conn-after-failed-reload"));
        assert_eq!(r.status, 200, "{want:?}: {}", r.head_str());
    }
    let r = apex.client().request(&get("h", "/plain-after-failed-reload"));
    assert_eq!(r.status, 200, "plain listener after the failed reload: {}", r.head_str());
}

// ---------------------------------------------------------------- expired certificates, --check

#[test]
fn expired_certificate_is_refused_at_start() {
    let pki = Pki::new();
    let old = sign_leaf(&pki.root.dir, "old", &["old.test"], &new_key(), &pki.root.issuer, &[], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    // Alone (the default certificate), and after a valid one.
    assert_refused(&tls_section(None, &[(&old, &["old.test"])]), &[&old.chain], &["expired"]);
    assert_refused(&tls_section(None, &[(&pki.a, A_NAMES), (&old, &["old.test"])]), &[&old.chain], &["expired"]);
    // `apex --check` says the same.
    let dir = TempDir::new("expired");
    let conf =
        dir.write("apex.toml", &Config::to(dead_addr()).append(&tls_section(None, &[(&old, &["old.test"])])).render());
    let (code, out, err) = run_apex(&["--check", path_str(&conf)]);
    assert_eq!(code, Some(1), "apex --check on an expired certificate; stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains(path_str(&old.chain)) && err.contains("expired"), "stderr:\n{err}");
}

#[test]
fn check_prints_the_tls_section_and_refuses_a_key_that_does_not_match() {
    let pki = Pki::new();
    // Relative paths, resolved against the config file's directory (the PKI's).
    let section = format!(
        "[tls]\nlisten = [\"127.0.0.1:0\"]\n{}{}",
        cert_entry(Path::new("a.pem"), Path::new("a.key"), A_NAMES),
        cert_entry(Path::new("b.pem"), Path::new("b.key"), B_NAMES)
    );
    let conf = pki.root.dir.write("apex.toml", &Config::to(dead_addr()).append(&section).render());
    let (code, out, err) = run_apex(&["--check", path_str(&conf)]);
    assert_eq!(code, Some(0), "apex --check on a valid [tls] config; stderr:\n{err}");
    let at = out.find("\n[tls]\n").unwrap_or_else(|| panic!("no [tls] section in the effective config:\n{out}"));
    let tls_part = &out[at..];
    let mut parts = tls_part.split("\n[[tls.cert]]\n");
    let table: Vec<&str> = parts.next().unwrap_or("").lines().collect();
    for line in ["listen = [\"127.0.0.1:0\"]", "strict_sni = false"] {
        assert!(table.contains(&line), "[tls] must hold `{line}` (the strict_sni default filled in):\n{out}");
    }
    let entries: Vec<&str> = parts.collect();
    assert_eq!(entries.len(), 2, "two [[tls.cert]] entries, in order:\n{out}");
    for (entry, (leaf, names)) in entries.iter().zip([(&pki.a, A_NAMES), (&pki.b, B_NAMES)]) {
        let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        let want = format!(
            "chain = {:?}\nkey = {:?}\nnames = [{}]",
            path_str(&leaf.chain),
            path_str(&leaf.key),
            names.join(", ")
        );
        assert!(
            entry.starts_with(&want),
            "entry must be (absolute paths):\n{want}\ngot:\n{entry}\nwhole output:\n{out}"
        );
    }
    // The effective config is a config: checked again, it prints itself.
    let body = |s: &str| s.split_once('\n').map(|(_, rest)| rest.to_string()).unwrap_or_default();
    let again = pki.root.dir.write("effective.toml", &out);
    let (code, out2, err) = run_apex(&["--check", path_str(&again)]);
    assert_eq!(code, Some(0), "apex --check on its own output; stderr:\n{err}\nfile:\n{out}");
    assert_eq!(body(&out2), body(&out), "the effective config round-trips");

    // B's chain with A's key.
    let bad_section = format!("[tls]\nlisten = [\"127.0.0.1:0\"]\n{}", cert_entry(&pki.b.chain, &pki.a.key, B_NAMES));
    let bad = pki.root.dir.write("bad.toml", &Config::to(dead_addr()).append(&bad_section).render());
    let (code, out, err) = run_apex(&["--check", path_str(&bad)]);
    assert_eq!(code, Some(1), "apex --check with a key that does not match; stdout:\n{out}\nstderr:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(&format!("{}:", path_str(&bad))), "stderr must name the config file:\n{err}");
    assert!(err.contains(path_str(&pki.a.key)), "stderr must name the key file:\n{err}");
    assert!(err.contains("does not match"), "stderr must say the key does not match:\n{err}");
    assert!(!out.contains("[tls]"), "no effective config is printed for a bad file:\n{out}");
}

// ---------------------------------------------------------------- TLS 1.3 KeyUpdate

/// A TLS 1.3 client that can hand its keys back at the end (to count records per key), its
/// socket's receive buffer set to `rcvbuf` bytes before connecting when given.
fn tls13_extractable(addr: SocketAddr, pki: &Pki, rcvbuf: Option<usize>) -> Tls {
    let mut cfg = ClientConfig::clone(&client_config(pki, Hello::to("a.test").v(&rustls::version::TLS13)));
    cfg.enable_secret_extraction = true;
    let conn = ClientConnection::new(Arc::new(cfg), ServerName::try_from("a.test").unwrap()).unwrap();
    let t =
        tls_over(connect(addr, rcvbuf), conn).unwrap_or_else(|e| panic!("TLS 1.3 handshake with apex at {addr}: {e}"));
    assert_eq!(t.version(), Some(ProtocolVersion::TLSv1_3));
    t
}

/// `n` GETs on `t`, each echoed back.
fn echo_gets(t: &mut Tls, tag: &str, n: usize) {
    for i in 0..n {
        let path = format!("/{tag}/{i}");
        let r = t.try_read_response_after(&get("a.test", &path)).unwrap_or_else(|e| panic!("{tag} request {i}: {e}"));
        assert_eq!((r.status, r.body_str()), (200, format!("GET {path} ")), "{tag} request {i}");
    }
}

/// Ends the test on `t`: Apex must have answered the client's last KeyUpdate (update_requested)
/// with one of its own (RFC 8446 §4.6.3), so the client's receive key is new and its record
/// count restarted: fewer records than the `before` responses received under the old key.
fn assert_apex_updated_its_key(t: Tls, before: u64, what: &str) {
    let secrets = t.s.conn.dangerous_extract_secrets().unwrap();
    let (rx, tx) = (secrets.rx.0, secrets.tx.0);
    assert!(
        rx < before,
        "{what}: the client has received {rx} records under its current receive key, though the key \
         should have changed after the last KeyUpdate it sent (at least {before} records came before \
         it): Apex did not answer update_requested with a KeyUpdate of its own"
    );
    assert!(tx < before, "{what}: the client's own send key did not change ({tx} records)");
}

#[test]
fn tls13_key_updates_from_the_client_keep_a_keep_alive_connection_working() {
    let up = echo_all();
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    let addr = tls_addr(&apex);
    const BEFORE: usize = 20;

    // A KeyUpdate in the same flight as the next request.
    let mut t = tls13_extractable(addr, &pki, None);
    echo_gets(&mut t, "before", BEFORE);
    t.s.conn.refresh_traffic_keys().unwrap();
    echo_gets(&mut t, "same-flight", 2);
    assert_apex_updated_its_key(t, BEFORE as u64, "KeyUpdate with a request");

    // A KeyUpdate on its own, the request later.
    let mut t = tls13_extractable(addr, &pki, None);
    echo_gets(&mut t, "before", BEFORE);
    t.s.conn.refresh_traffic_keys().unwrap();
    t.flush_tls();
    thread::sleep(ms(100));
    echo_gets(&mut t, "lone", 2);
    assert_apex_updated_its_key(t, BEFORE as u64, "KeyUpdate alone");

    // Three KeyUpdates in a row, each on its own.
    let mut t = tls13_extractable(addr, &pki, None);
    echo_gets(&mut t, "before", BEFORE);
    for _ in 0..3 {
        t.s.conn.refresh_traffic_keys().unwrap();
        t.flush_tls();
        thread::sleep(ms(20));
    }
    echo_gets(&mut t, "three", 2);
    assert_apex_updated_its_key(t, BEFORE as u64, "three KeyUpdates");

    // A KeyUpdate between the head and the body of a POST.
    let mut t = tls13_extractable(addr, &pki, None);
    echo_gets(&mut t, "before", BEFORE);
    t.send(b"POST /split HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\n");
    thread::sleep(ms(100));
    t.s.conn.refresh_traffic_keys().unwrap();
    t.flush_tls();
    thread::sleep(ms(100));
    t.send(b"0123456789");
    let r = t.try_read_response(false).unwrap_or_else(|e| panic!("POST with a KeyUpdate inside: {e}"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "POST /split 0123456789"), "{}", r.head_str());
    echo_gets(&mut t, "after-post", 2);
    assert_apex_updated_its_key(t, BEFORE as u64, "KeyUpdate inside a request body");

    assert_eq!(up.requests().len(), 4 * BEFORE + 2 + 2 + 2 + 3);
    assert_serving(&apex, &pki, "/after-key-updates");
}

/// Counts the TLS records in a byte stream from Apex, fed in pieces as they arrive.
#[derive(Default)]
struct RecordCount {
    records: u64,
    header: Vec<u8>,
    body_left: usize,
}

impl RecordCount {
    fn feed(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(b.len());
                self.body_left -= n;
                b = &b[n..];
                continue;
            }
            let n = (5 - self.header.len()).min(b.len());
            self.header.extend_from_slice(&b[..n]);
            b = &b[n..];
            if self.header.len() == 5 {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header.clear();
                self.records += 1;
            }
        }
    }
}

/// `tls_fill`, but reading the socket here, so every record from Apex is counted in `count`.
fn tls_fill_counting(
    s: &mut StreamOwned<ClientConnection, TcpStream>,
    count: &mut RecordCount,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    let mut raw = vec![0u8; 1 << 16];
    let mut plain = vec![0u8; 1 << 16];
    loop {
        let n = s.sock.read(&mut raw)?;
        if n == 0 {
            return Ok(0);
        }
        count.feed(&raw[..n]);
        let (mut rest, mut got, mut closed) = (&raw[..n], 0, false);
        while !rest.is_empty() {
            s.conn.read_tls(&mut rest)?;
            s.conn.process_new_packets().map_err(io::Error::other)?;
            // Drained at once: rustls refuses more TLS while its plaintext buffer is full.
            loop {
                match s.conn.reader().read(&mut plain) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(m) => {
                        buf.extend_from_slice(&plain[..m]);
                        got += m;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        if got > 0 {
            return Ok(got);
        }
        if closed {
            return Ok(0);
        }
    }
}

impl Tls {
    /// Reads one response through `tls_fill_counting`.
    fn read_response_counting(&mut self, count: &mut RecordCount) -> Result<Response, String> {
        let s = &mut self.s;
        read_response_from(&mut self.buf, false, |buf| tls_fill_counting(s, count, buf))
    }
}

/// Ends a test whose client sent one KeyUpdate (update_requested) while `count` counted every
/// record from Apex: Apex answered it with a KeyUpdate of its own (RFC 8446 §4.6.3) iff the
/// client's receive key changed, so that fewer records came under it than were counted in all.
fn assert_apex_answered_within(t: Tls, count: &RecordCount, what: &str) {
    let rx = t.s.conn.dangerous_extract_secrets().unwrap().rx.0;
    assert!(
        rx < count.records,
        "{what}: {rx} records arrived under the client's current receive key, and {} in all since \
         before the client's KeyUpdate: the key never changed, so Apex did not answer the KeyUpdate \
         (update_requested) with one of its own",
        count.records
    );
}

/// The client sends a KeyUpdate in the middle of a 3 MiB download, having read 64 KiB of it
/// (a 32 KiB receive buffer, `client_send_buffer` 64 KiB: most of it is still on Apex's side).
/// The download must finish intact, Apex must answer the KeyUpdate, and the connection stays
/// usable.
#[test]
fn tls13_key_update_during_a_large_download() {
    let data = Arc::new(pattern_bytes(BIG));
    let body = data.clone();
    let up = Upstream::http(move |r| {
        if r.target == "/big" {
            let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            v.extend_from_slice(&body);
            v
        } else {
            ok(&r.target)
        }
    });
    let pki = Pki::new();
    let apex = Apex::start(&Config::to(up.addr).limit("client_send_buffer", "\"64KiB\"").append(&pki.section()));
    let mut t = tls13_extractable(tls_addr(&apex), &pki, Some(32 << 10));
    // The session tickets arrive with the first response; counting starts after it.
    echo_path_get(&mut t, "/first", None);
    let mut count = RecordCount::default();
    t.send(&get("a.test", "/big"));
    while t.buf.len() < 64 << 10 {
        match tls_fill_counting(&mut t.s, &mut count, &mut t.buf) {
            Ok(0) => panic!("apex closed the connection after {} bytes of the download", t.buf.len()),
            Ok(_) => {}
            Err(e) => panic!("reading the download: {e}"),
        }
    }
    // Apex fills the socket buffers while this client does not read.
    thread::sleep(ms(300));
    t.s.conn.refresh_traffic_keys().unwrap();
    t.flush_tls();
    let r = t.read_response_counting(&mut count).unwrap_or_else(|e| panic!("download with a KeyUpdate midway: {e}"));
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_eq!(pattern_verdict(&r.body), format!("intact {BIG}"));
    echo_path_get(&mut t, "/after-download", Some(&mut count));
    assert_apex_answered_within(t, &count, "KeyUpdate during a download");
}

/// GET `path` from an upstream that answers with the path; counted when `count` is given.
fn echo_path_get(t: &mut Tls, path: &str, count: Option<&mut RecordCount>) {
    t.send(&get("a.test", path));
    let r = match count {
        Some(c) => t.read_response_counting(c),
        None => t.try_read_response(false),
    }
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!((r.status, r.body_str().as_str()), (200, path), "{}", r.head_str());
}

/// A KeyUpdate that arrives while Apex's output to the client is backed up and Apex is still
/// reading from it: the upstream echoes an upload as it arrives; the client sends 384 KiB
/// without reading (32 KiB receive buffer, `client_send_buffer` 64 KiB, so the echo fills every
/// buffer on the way back, Apex's sealed records included), then a KeyUpdate, then the last
/// 64 KiB. Apex must answer it behind the records it has already sealed under the old key, and
/// the echo arrive intact.
#[test]
fn tls13_key_update_while_the_response_to_the_client_is_backed_up() {
    const FIRST: usize = 384 << 10;
    const TOTAL: usize = FIRST + (64 << 10);
    let up = Upstream::start(|mut c| {
        while let Some(r) = c.read_head() {
            c.record(&r);
            let n: usize = r.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let head = if n == 0 {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}", r.target.len(), r.target)
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n")
            };
            if c.write(head.as_bytes()).is_err() {
                return;
            }
            let mut left = n;
            while left > 0 {
                let Some(chunk) = c.read_chunk(left.min(64 << 10)) else { return };
                left -= chunk.len();
                if c.write(&chunk).is_err() {
                    return;
                }
            }
        }
    });
    let pki = Pki::new();
    let apex = Apex::start(&Config::to(up.addr).limit("client_send_buffer", "\"64KiB\"").append(&pki.section()));
    let mut t = tls13_extractable(tls_addr(&apex), &pki, Some(32 << 10));
    echo_path_get(&mut t, "/first", None);
    let mut count = RecordCount::default();
    let data = pattern_bytes(TOTAL);
    t.send(format!("POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: {TOTAL}\r\n\r\n").as_bytes());
    t.send(&data[..FIRST]);
    // The echo backs up towards this client, which does not read.
    thread::sleep(ms(300));
    t.s.conn.refresh_traffic_keys().unwrap();
    t.flush_tls();
    thread::sleep(ms(100));
    t.send(&data[FIRST..]);
    let r = t.read_response_counting(&mut count).unwrap_or_else(|e| panic!("echoed upload, KeyUpdate midway: {e}"));
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_eq!(pattern_verdict(&r.body), format!("intact {TOTAL}"), "the echo of the upload");
    // An upstream that answers before the request is whole ends the connection after the
    // response (`Connection: close`), so nothing more is asked on this one.
    assert_apex_answered_within(t, &count, "KeyUpdate while the response is backed up");
}
