//! Expect: 100-continue answered by Apex, Upgrade tunnels only after a 101, h2c not
//! tunnelled, CONNECT refused.

use crate::harness::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn expect_100_continue_is_answered_by_apex() {
    let up = Upstream::ok("got");
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    c.send(b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    c.set_read_timeout(Duration::from_secs(5));
    let r = c.try_read_response(false).unwrap_or_else(|e| panic!("waiting for 100 Continue: {e}"));
    assert_eq!(r.status, 100, "{}", r.head_str());
    assert!(r.head.starts_with(b"HTTP/1.1 100 Continue\r\n"), "{}", r.head_str());
    c.send(b"hello");
    let r = c.read_final_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"got");
    let req = up.one_request();
    assert!(req.header("expect").is_none(), "Expect forwarded:\n{}", req.head_str());
    assert_eq!(req.body, b"hello");
}

const WS_REQ: &[u8] = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

#[test]
fn websocket_upgrade_becomes_a_two_way_tunnel() {
    let up = Upstream::start(|mut c| {
        let Some(req) = c.read_head() else { return };
        c.record(&req);
        if c.write(SWITCH).is_err() || c.write(b"srv-hello").is_err() {
            return;
        }
        let got = c.read_until(b"cli-ping", Duration::from_secs(5));
        let mut echo = b"echo:".to_vec();
        echo.extend_from_slice(&got);
        let _ = c.write(&echo);
        c.wait_eof();
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    c.send(WS_REQ);
    let r = c.read_response();
    assert_eq!(r.status, 101, "{}", r.head_str());
    assert!(r.has_token("upgrade", "websocket"), "{}", r.head_str());
    assert!(r.has_token("connection", "upgrade"), "{}", r.head_str());
    let got = c.read_until(b"srv-hello");
    assert_eq!(got, b"srv-hello", "upstream->client tunnel bytes");
    c.send(b"cli-ping");
    let got = c.read_until(b"echo:cli-ping");
    assert_eq!(got, b"echo:cli-ping", "client->upstream->client tunnel bytes");
    let req = up.one_request();
    assert!(req.has_token("upgrade", "websocket"), "{}", req.head_str());
    assert!(req.has_token("connection", "upgrade"), "{}", req.head_str());
    assert_eq!(req.header("sec-websocket-key"), Some("dGhlIHNhbXBsZSBub25jZQ=="));
}

#[test]
fn bytes_after_upgrade_request_wait_for_101() {
    let early: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
    let early2 = early.clone();
    let up = Upstream::start(move |mut c| {
        if c.read_head().is_none() {
            return;
        }
        // Anything arriving before we answer 101 arrived too early.
        let pre = c.read_for(ms(500));
        *early2.lock().unwrap() = Some(pre.clone());
        if c.write(SWITCH).is_err() {
            return;
        }
        let mut got = pre;
        got.extend_from_slice(&c.read_until(b"EARLY", Duration::from_secs(3)));
        let mut echo = b"late:".to_vec();
        echo.extend_from_slice(&got);
        let _ = c.write(&echo);
        c.wait_eof();
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let mut req = WS_REQ.to_vec();
    req.extend_from_slice(b"EARLY");
    c.send(&req);
    let r = c.read_response();
    assert_eq!(r.status, 101);
    let got = c.read_until(b"late:EARLY");
    let pre = early.lock().unwrap().clone().expect("upstream saw the upgrade request");
    assert!(pre.is_empty(), "upstream received {:?} before it sent 101", String::from_utf8_lossy(&pre));
    assert_eq!(got, b"late:EARLY", "bytes sent before the 101 must be tunnelled after it");
}

#[test]
fn upgrade_refused_with_200_is_a_normal_response_not_a_tunnel() {
    let up = Upstream::ok("no-upgrade");
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    c.send(WS_REQ);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"no-upgrade");
    // These bytes must be parsed as HTTP (and rejected), never relayed raw.
    let _ = c.try_send(b"GARBAGE-TUNNEL-BYTES\r\n\r\n");
    let _ = c.read_until_close(Duration::from_secs(2));
    let all: Vec<u8> = up.received().concat();
    assert!(!contains(&all, b"GARBAGE"), "tunnel opened without 101: {:?}", String::from_utf8_lossy(&all));
}

#[test]
fn h2c_upgrade_is_not_tunnelled() {
    let up = Upstream::ok("h1");
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let r = c.request(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"h1");
    let req = up.one_request();
    assert!(req.header("upgrade").is_none(), "h2c Upgrade forwarded:\n{}", req.head_str());
    assert!(req.header("http2-settings").is_none(), "{}", req.head_str());
    assert!(!req.has_token("connection", "upgrade"), "{}", req.head_str());
}

#[test]
fn connect_is_405() {
    let up = Upstream::silent();
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let _ = c.try_send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    let r = c.read_response();
    assert_apex_status(&r, 405);
    up.assert_untouched();
}

#[test]
fn tunnel_close_propagates_to_the_client() {
    let up = Upstream::start(|mut c| {
        if c.read_head().is_none() {
            return;
        }
        let _ = c.write(SWITCH);
        let _ = c.write(b"bye");
        c.shutdown();
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    c.send(WS_REQ);
    let r = c.read_response();
    assert_eq!(r.status, 101);
    let (rest, closed) = c.read_until_close(Duration::from_secs(5));
    assert_eq!(rest, b"bye");
    assert!(closed, "client side of the tunnel must close when the upstream closes");
}

/// A 101 that comes while part of the request body still waits in Apex to go upstream: the
/// body and the tunnel's first bytes must reach the upstream whole and in order, or the switch
/// is refused. Tunnelling at once would drop the waiting body bytes and let the client's
/// post-101 bytes stand in for the body's tail (RFC 9110 §7.8: the switch takes effect after
/// the request; RFC 9112 §6.3: both ends must agree where the body ends). Where the body's
/// tail ends up (upstream socket, Apex's socket buffer, Apex's own buffer) depends on socket
/// buffer sizes, so three sizes are tried.
#[test]
fn a_101_before_the_request_body_is_sent_never_loses_body_bytes() {
    for first in [2_980_000, 2_900_000, 3_060_000] {
        upgrade_with_a_body_the_upstream_has_not_read(first, 16_000);
    }
}

fn upgrade_with_a_body_the_upstream_has_not_read(first: usize, second: usize) {
    // The upstream (small receive buffer) reads the head, then nothing until it has sent the
    // 101, so the body backs up into Apex; a second burst lands in Apex's own buffer.
    let got: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
    let got2 = got.clone();
    let up = Upstream::start_on(small_rcvbuf_listener(4096), move |mut c| {
        if c.read_head().is_none() {
            return;
        }
        std::thread::sleep(ms(700));
        if c.write(SWITCH).is_err() {
            return;
        }
        c.set_recording(false);
        let mut all = c.read_until(b"WSFRAME", Duration::from_secs(10));
        all.extend_from_slice(&c.read_for(ms(200)));
        *got2.lock().unwrap() = Some(all);
        c.wait_eof();
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let head = format!(
        "POST /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: {}\r\n\r\n",
        first + second
    );
    c.send(head.as_bytes());
    let mut w = c.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        w.write_all(&vec![b'a'; first])?;
        std::thread::sleep(ms(200));
        w.write_all(&vec![b'b'; second])
    });
    c.set_read_timeout(Duration::from_secs(10));
    let r = c.read_response();
    writer.join().unwrap().expect("the body went to Apex");
    if r.status != 101 {
        assert_apex_status(&r, 502);
        let _ = c.try_send(b"WSFRAME");
        std::thread::sleep(ms(300));
        let all: Vec<u8> = up.received().concat();
        assert!(!contains(&all, b"WSFRAME"), "tunnel bytes went upstream after a refused switch");
        return;
    }
    c.send(b"WSFRAME");
    assert!(wait_until(Duration::from_secs(10), || got.lock().unwrap().is_some()), "upstream saw no tunnel bytes");
    let all = got.lock().unwrap().take().unwrap();
    let mut want = vec![b'a'; first];
    want.extend_from_slice(&vec![b'b'; second]);
    want.extend_from_slice(b"WSFRAME");
    let body = first + second;
    assert_eq!(
        all.len(),
        want.len(),
        "upstream got {} bytes before the tunnel's; the body has {body}",
        all.len().saturating_sub(7)
    );
    assert!(all == want, "body and tunnel bytes out of order upstream");
}
