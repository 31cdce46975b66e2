//! Timeouts, with short configured values. Upper bounds here are hang guards, not timings.

use crate::harness::*;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn client_head_timeout_is_whole_head_deadline_despite_trickle() {
    let up = Upstream::silent();
    let apex = Apex::start(&Config::to(up.addr).timeout("client_head", "1s"));
    let mut c = apex.client();
    let mut w = c.s.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let start = Instant::now();
    let dripper = thread::spawn(move || {
        if w.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ").is_err() {
            return;
        }
        // a byte every 100 ms for up to 6 s, never finishing the head
        for _ in 0..60 {
            if stop2.load(SeqCst) || w.write_all(b"a").is_err() {
                return;
            }
            thread::sleep(ms(100));
        }
    });
    let r = c.try_read_response(false);
    stop.store(true, SeqCst);
    let elapsed = start.elapsed();
    dripper.join().unwrap();
    let r = r.unwrap_or_else(|e| panic!("expected 408 while the head trickles in: {e}"));
    assert_apex_close(&mut c, &r, 408);
    assert!(elapsed < Duration::from_secs(5), "408 only after {elapsed:?} (client_head = 1s)");
    up.assert_untouched();
}

#[test]
fn client_idle_timeout_closes_keep_alive_connection() {
    let up = Upstream::ok("x");
    let apex = Apex::start(&Config::to(up.addr).timeout("client_idle", "500ms"));
    let mut c = apex.client();
    let r = c.request(&get("h", "/"));
    assert_eq!(r.status, 200);
    match c.wait(Duration::from_secs(5)) {
        Seen::Closed => {}
        Seen::Data(d) => {
            // An informative 408 before closing is acceptable; the close is what matters.
            assert!(d.starts_with(b"HTTP/1.1 408"), "unexpected bytes: {:?}", String::from_utf8_lossy(&d));
            let (_, closed) = c.read_until_close(Duration::from_secs(5));
            assert!(closed, "idle connection not closed");
        }
        Seen::Silent => {
            panic!("idle keep-alive connection still open 5 s after client_idle = 500ms")
        }
    }
}

#[test]
fn client_body_timeout_is_408() {
    let up = Upstream::silent();
    let apex = Apex::start(&Config::to(up.addr).timeout("client_body", "500ms").timeout("upstream_head", "10s"));
    let mut c = apex.client();
    c.send(b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789");
    c.set_read_timeout(Duration::from_secs(5));
    let r = c.try_read_response(false).unwrap_or_else(|e| panic!("expected 408: {e}"));
    assert_apex_close(&mut c, &r, 408);
    for got in up.received() {
        if let Some(i) = find(&got, b"\r\n\r\n") {
            assert!(got.len() - (i + 4) < 100, "upstream got a complete body");
        }
    }
}

#[test]
fn upstream_connect_timeout_is_504() {
    // On loopback a listener whose accept queue is full drops SYNs: connect hangs.
    let hole = BlackHole::new();
    let apex = Apex::start(&Config::to(hole.addr).timeout("upstream_connect", "300ms"));
    let mut c = apex.client();
    let start = Instant::now();
    c.send(&get("h", "/"));
    c.set_read_timeout(Duration::from_secs(8));
    let r = c.try_read_response(false).unwrap_or_else(|e| panic!("expected 504: {e}"));
    assert_apex_status(&r, 504);
    assert!(start.elapsed() < Duration::from_secs(8));
}

#[test]
fn upstream_connect_timeout_tries_next_server() {
    let hole = BlackHole::new();
    let live = Upstream::ok("live");
    let apex = Apex::start(
        &Config::new().route("*", "/", "g").group("g", &[hole.addr, live.addr]).timeout("upstream_connect", "300ms"),
    );
    for _ in 0..2 {
        let mut c = apex.client();
        let r = c.request(&get("h", "/"));
        assert_eq!(r.status, 200, "{}", r.head_str());
        assert_eq!(r.body, b"live");
    }
}

#[test]
fn upstream_head_timeout_is_504() {
    let up = Upstream::silent();
    let apex = Apex::start(&Config::to(up.addr).timeout("upstream_head", "500ms"));
    let mut c = apex.client();
    c.send(&get("h", "/"));
    c.set_read_timeout(Duration::from_secs(5));
    let r = c.try_read_response(false).unwrap_or_else(|e| panic!("expected 504: {e}"));
    assert_apex_status(&r, 504);
    assert_eq!(up.accepts(), 1, "the request did reach the upstream");
}

#[test]
fn upstream_body_timeout_closes_client_connection() {
    let up = Upstream::start(|mut c| {
        if c.read_request().is_some() {
            let mut resp = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
            resp.extend_from_slice(&[b'x'; 100]);
            let _ = c.write(&resp);
        }
        c.wait_eof(); // stall with the connection open
    });
    let apex = Apex::start(&Config::to(up.addr).timeout("upstream_body", "500ms"));
    let mut c = apex.client();
    c.send(&get("h", "/"));
    let r = c.read_head_response();
    assert_eq!(r.status, 200);
    let (body, closed) = c.read_until_close(Duration::from_secs(5));
    assert!(closed, "client connection still open 5 s after the upstream stalled");
    assert!(body.len() < 1000, "got the full body?");
    assert_eq!(body.len(), 100, "the bytes that did arrive are relayed");
}

#[test]
fn client_send_timeout_closes_a_client_that_does_not_read() {
    const SIZE: u64 = 256 << 20;
    let written = Arc::new(AtomicU64::new(0));
    let w2 = written.clone();
    let up = Upstream::start(move |mut c| {
        if c.read_request().is_none() {
            return;
        }
        let _ = c.s.set_write_timeout(Some(Duration::from_secs(10)));
        if c.write(format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes()).is_err() {
            return;
        }
        let block = vec![b'z'; 1 << 16];
        let mut sent = 0;
        while sent < SIZE && !c.stopping() {
            if c.write(&block).is_err() {
                break;
            }
            sent += block.len() as u64;
            w2.store(sent, SeqCst);
        }
    });
    let apex = Apex::start(&Config::to(up.addr).timeout("client_send", "500ms").timeout("upstream_body", "30s"));
    let mut c = apex.client();
    c.send(&get("h", "/big"));
    thread::sleep(Duration::from_secs(3)); // never read meanwhile
    let (got, closed) = c.read_until_close(Duration::from_secs(20));
    assert!(closed, "connection not closed");
    assert!(
        (got.len() as u64) < SIZE,
        "a client that did not read for 3 s (client_send = 500ms) still got the whole response"
    );
}

#[test]
fn new_connection_waits_client_head_not_client_idle() {
    let up = Upstream::ok("x");
    let apex = Apex::start(&Config::to(up.addr).timeout("client_idle", "300ms").timeout("client_head", "5s"));
    let mut c = apex.client();
    thread::sleep(ms(1000));
    let r = c.request(&get("h", "/"));
    assert_eq!(r.status, 200, "a new connection may wait client_head (5s), not client_idle");
}

#[test]
fn client_body_timeout_counts_progress_not_total_time() {
    let up = Upstream::ok("slow body ok");
    let apex = Apex::start(&Config::to(up.addr).timeout("client_body", "600ms"));
    let mut c = apex.client();
    c.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 15\r\n\r\n");
    for b in b"abcdefghijklmno" {
        thread::sleep(ms(150)); // 2.25 s in total, never 600 ms without progress
        c.send(&[*b]);
    }
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_eq!(up.one_request().body, b"abcdefghijklmno");
}

#[test]
fn upstream_body_timeout_counts_progress_not_total_time() {
    let up = Upstream::start(|mut c| {
        if c.read_request().is_none() {
            return;
        }
        if c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n").is_err() {
            return;
        }
        for b in b"abcdefghijklmno" {
            thread::sleep(ms(150));
            if c.write(&[*b]).is_err() {
                return;
            }
        }
        c.wait_eof();
    });
    let apex = Apex::start(&Config::to(up.addr).timeout("upstream_body", "600ms"));
    let mut c = apex.client();
    let r = c.request(&get("h", "/"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"abcdefghijklmno");
}

#[test]
fn upstream_idle_timeout_closes_pooled_connections() {
    let up = Upstream::ok("x");
    let apex = Apex::start(&Config::to(up.addr).timeout("upstream_idle", "300ms"));
    let mut c = apex.client();
    assert_eq!(c.request(&get("h", "/")).status, 200);
    assert_eq!(up.accepts(), 1);
    let closed = up.wait_for(Duration::from_secs(5), |u| u.open() == 0);
    assert!(closed, "idle pooled upstream connection still open 5 s after upstream_idle = 300ms");
    // and a later request simply opens a new one
    assert_eq!(c.request(&get("h", "/again")).status, 200);
}

fn routes(extra_global: &str, up: std::net::SocketAddr) -> String {
    format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n{extra_global}\n\
         [[route]]\npath = \"/long\"\nupstream = \"app\"\nupstream_head = \"60s\"\n\
         [[route]]\npath = \"/upload\"\nupstream = \"app\"\nbody_bytes = \"1MiB\"\n\
         [[route]]\npath = \"/small\"\nupstream = \"app\"\nbody_bytes = 100\n\
         [[route]]\nupstream = \"app\"\n\
         [upstream.app]\nservers = [\"{up}\"]\n"
    )
}

/// A `[[route]]` sets its own upstream_head (issue #17): a long-poll route waits while the
/// global value still cuts every other route short.
#[test]
fn a_route_overrides_upstream_head_for_its_requests_only() {
    let up = Upstream::http(|_| {
        thread::sleep(ms(900));
        ok("late")
    });
    let apex = Apex::start_toml(&routes("[timeouts]\nupstream_head = \"300ms\"", up.addr));
    let mut c = apex.client();
    c.set_read_timeout(Duration::from_secs(8));
    let r = c.request(&get("h", "/long/poll"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "late"), "the route's 60 s applies");
    let mut c = apex.client();
    c.set_read_timeout(Duration::from_secs(8));
    c.send(&get("h", "/other"));
    let r = c.try_read_response(false).unwrap_or_else(|e| panic!("expected 504: {e}"));
    assert_apex_status(&r, 504);
}

/// A route's body_bytes may be larger or smaller than the global one, for Content-Length and
/// chunked bodies alike.
#[test]
fn a_route_overrides_body_bytes_for_its_requests_only() {
    let up = Upstream::http(|r| ok(&r.body.len().to_string()));
    let apex = Apex::start_toml(&routes("[limits]\nbody_bytes = \"1KiB\"", up.addr));
    let post = |path: &str, n: usize| {
        let mut req = format!("POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n").into_bytes();
        req.extend(std::iter::repeat_n(b'x', n));
        req
    };
    let chunked = |path: &str, n: usize| {
        let mut req =
            format!("POST {path} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\r\n").into_bytes();
        req.extend(std::iter::repeat_n(b'x', n));
        req.extend(b"\r\n0\r\n\r\n");
        req
    };
    let r = apex.client().request(&post("/upload", 10_000));
    assert_eq!((r.status, r.body_str().as_str()), (200, "10000"), "the upload route takes 1 MiB");
    let r = apex.client().request(&chunked("/upload", 10_000));
    assert_eq!((r.status, r.body_str().as_str()), (200, "10000"));
    assert_apex_status(&apex.client().request(&post("/other", 10_000)), 413);
    assert_apex_status(&apex.client().request(&post("/upload", 2 << 20)), 413);
    let r = apex.client().request(&post("/other", 500));
    assert_eq!(r.status, 200, "under the global 1 KiB");
    assert_apex_status(&apex.client().request(&post("/small", 500)), 413);
    assert_apex_status(&apex.client().request(&chunked("/small", 500)), 413);
}
