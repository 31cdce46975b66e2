//! Limits: head bytes and header count (431), body bytes (413), client connections per worker,
//! idle upstream connections kept per server.

use crate::harness::*;
use std::thread;
use std::time::Duration;

fn rejected_with(cfg: impl Fn(&Upstream) -> Config, req: &[u8], code: u16) {
    let up = Upstream::silent();
    let apex = Apex::start(&cfg(&up).timeout("upstream_head", "2s"));
    let mut c = apex.client();
    let _ = c.try_send(req);
    let r = c.try_read_response(false).unwrap_or_else(|e| panic!("expected {code}: {e}"));
    assert_apex_close(&mut c, &r, code);
    up.assert_untouched();
}

#[test]
fn head_over_head_bytes_is_431() {
    let mut req = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
    req.extend_from_slice(&[b'a'; 2000]);
    req.extend_from_slice(b"\r\n\r\n");
    rejected_with(|up| Config::to(up.addr).limit("head_bytes", "\"1KiB\""), &req, 431);
}

#[test]
fn head_over_default_16kib_is_431() {
    let mut req = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 0..40 {
        req.extend_from_slice(format!("X-F{i}: ").as_bytes());
        req.extend_from_slice(&[b'b'; 500]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    rejected_with(|up| Config::to(up.addr), &req, 431);
}

#[test]
fn head_just_under_head_bytes_is_accepted() {
    let up = Upstream::ok("fits");
    let apex = Apex::start(&Config::to(up.addr).limit("head_bytes", "\"1KiB\""));
    let mut c = apex.client();
    let mut req = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
    req.extend_from_slice(&[b'a'; 900]);
    req.extend_from_slice(b"\r\n\r\n");
    let r = c.request(&req);
    assert_eq!(r.status, 200, "a {}-byte head under a 1 KiB limit", req.len());
}

#[test]
fn more_header_fields_than_limit_is_431() {
    let mut req = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 0..20 {
        req.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    rejected_with(|up| Config::to(up.addr).limit("headers", "10"), &req, 431);
}

#[test]
fn content_length_over_body_bytes_is_413() {
    let mut req = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'c'; 2000]);
    rejected_with(|up| Config::to(up.addr).limit("body_bytes", "1000"), &req, 413);
}

#[test]
fn chunked_body_over_body_bytes_is_413() {
    let up = Upstream::silent();
    let apex = Apex::start(&Config::to(up.addr).limit("body_bytes", "1000").timeout("upstream_head", "5s"));
    let mut c = apex.client();
    let mut req = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"190\r\n"); // 400 bytes each
        req.extend_from_slice(&[b'd'; 400]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let _ = c.try_send(&req);
    let r = c.try_read_response(false).unwrap_or_else(|e| panic!("expected 413: {e}"));
    assert_apex_close(&mut c, &r, 413);
    thread::sleep(ms(100));
    for got in up.received() {
        assert!(!contains(&got, b"0\r\n\r\n"), "upstream received the whole over-limit body");
    }
}

#[test]
fn connections_per_worker_limit_queues_the_next_client() {
    let up = Upstream::ok("x");
    let apex = Apex::start(&Config::to(up.addr).workers(1).limit("connections", "5"));
    let mut held: Vec<Client> = (0..5)
        .map(|_| {
            let mut c = apex.client();
            assert_eq!(c.request(&get("h", "/")).status, 200);
            c
        })
        .collect();
    let mut sixth = apex.client(); // the kernel completes the handshake
    sixth.send(&get("h", "/sixth"));
    match sixth.wait(Duration::from_secs(1)) {
        Seen::Silent => {}
        other => panic!("the 6th connection must wait while 5 are open, got {other:?}"),
    }
    drop(held.pop());
    sixth.set_read_timeout(Duration::from_secs(5));
    let r =
        sixth.try_read_response(false).unwrap_or_else(|e| panic!("6th connection not served after one closed: {e}"));
    assert_eq!(r.status, 200);
    // the four others still work
    for c in &mut held {
        assert_eq!(c.request(&get("h", "/")).status, 200);
    }
}

#[test]
fn upstream_idle_per_server_bounds_the_pool() {
    // Slow answers make 10 concurrent requests need 10 upstream connections.
    let up = Upstream::http(|_| {
        thread::sleep(ms(300));
        ok("slow")
    });
    let apex = Apex::start(
        &Config::to(up.addr).workers(1).limit("upstream_idle_per_server", "2").timeout("upstream_idle", "60s"),
    );
    for r in burst(apex.addr, 10) {
        assert_eq!(r.status, 200);
    }
    assert!(up.accepts() > 2, "burst used only {} upstream connections", up.accepts());
    let settled = up.wait_for(Duration::from_secs(3), |u| u.open() <= 2);
    assert!(settled, "{} upstream connections still open (limit 2), {} accepted", up.open(), up.accepts());
}

#[test]
fn header_count_and_body_size_at_the_limit_are_accepted() {
    let up = Upstream::ok("fits");
    let apex = Apex::start(&Config::to(up.addr).limit("headers", "10").limit("body_bytes", "1000"));
    let mut c = apex.client();
    let mut req = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n".to_vec();
    for i in 0..8 {
        req.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(&[b'e'; 1000]);
    let r = c.request(&req);
    assert_eq!(r.status, 200, "10 fields and a 1000-byte body fit limits 10 / 1000");
    assert_eq!(up.one_request().body.len(), 1000);
}
