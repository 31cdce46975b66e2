//! Keep-alive, pipelining and the per-worker upstream connection pool (reuse, stale
//! connections, retry of idempotent requests).

use crate::harness::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::thread;

#[test]
fn http11_is_keep_alive_by_default() {
    let up = Upstream::echo_path();
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    for i in 0..3 {
        let r = c.request(&get("h", &format!("/{i}")));
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), format!("/{i}"));
        assert!(!r.has_token("connection", "close"), "{}", r.head_str());
    }
}

/// RFC 9112 §2.2: empty lines before a request line are ignored, whether they arrive on their
/// own between requests (read, nothing to parse, wait) or in front of the request they precede
/// (read and parsed in the same pass).
#[test]
fn empty_lines_between_keep_alive_requests_are_ignored() {
    let up = Upstream::echo_path();
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    assert_eq!(c.request(&get("h", "/0")).body_str(), "/0");
    c.send(b"\r\n");
    thread::sleep(ms(50));
    c.send(b"\r\n");
    thread::sleep(ms(50));
    let r = c.request(&get("h", "/1"));
    assert_eq!((r.status, r.body_str()), (200, "/1".to_string()));
    let mut both = b"\r\n\r\n".to_vec();
    both.extend_from_slice(&get("h", "/2"));
    let r = c.request(&both);
    assert_eq!((r.status, r.body_str()), (200, "/2".to_string()));
    assert!(!r.has_token("connection", "close"), "{}", r.head_str());
    assert_eq!(up.requests().len(), 3, "empty lines are not requests");
}

#[test]
fn http11_connection_close_closes_after_response() {
    let up = Upstream::ok("x");
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let r = c.request(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "x");
    c.assert_closed();
}

#[test]
fn http10_without_keep_alive_is_closed_after_response() {
    let up = Upstream::ok("x");
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let r = c.request(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "x");
    c.assert_closed();
}

#[test]
fn http10_keep_alive_is_honoured_and_announced() {
    let up = Upstream::echo_path();
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    for i in 0..2 {
        let r = c.request(format!("GET /{i} HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), format!("/{i}"));
        assert!(r.has_token("connection", "keep-alive"), "{}", r.head_str());
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::echo_path();
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let mut all = vec![];
    for i in 0..5 {
        all.extend_from_slice(&get("h", &format!("/p{i}")));
    }
    all.extend_from_slice(b"POST /p5 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc");
    all.extend_from_slice(&get("h", "/p6"));
    c.send(&all);
    for i in 0..7 {
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), format!("/p{i}"));
    }
}

#[test]
fn ten_thousand_sequential_requests_on_one_connection() {
    let up = Upstream::ok("ok");
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let guard = std::time::Instant::now();
    for i in 0..10_000 {
        // hang guard for the suite, not a performance assertion
        assert!(guard.elapsed().as_secs() < 120, "only {i} of 10,000 requests done after 120 s");
        c.send(b"GET /seq HTTP/1.1\r\nHost: h\r\n\r\n");
        let r = c.try_read_response(false).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body, b"ok", "request {i}");
    }
}

#[test]
fn upstream_pool_is_reused_across_clients() {
    let up = Upstream::ok("pooled");
    let apex = Apex::start(&Config::to(up.addr).workers(1));
    let addr = apex.addr;
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..50)
        .map(|t| {
            let done = done.clone();
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..20 {
                    let r = c.request(&get("h", &format!("/{t}/{i}")));
                    assert_eq!(r.status, 200);
                    assert_eq!(r.body, b"pooled");
                    done.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    assert_eq!(done.load(SeqCst), 1000);
    assert_eq!(up.requests().len(), 1000);
    assert!(up.accepts() <= 100, "1000 requests from 50 clients made {} upstream connections", up.accepts());
}

/// An upstream connection that answered a HEAD is not pooled (a body the application writes
/// anyway would answer the next request: see the catalogue's resp_body_on_head_written_later),
/// and it is reset, not closed, so that HEADs leave no TIME_WAIT behind on Apex's side; GETs
/// around them still share one pooled connection.
#[test]
fn a_connection_that_answered_head_is_reset_not_pooled() {
    let up = Upstream::ok("x");
    let apex = Apex::start(&Config::to(up.addr).workers(1));
    // Left by earlier tests whose upstream had this port (they only expire): a baseline.
    let before = time_wait_to(up.addr.port());
    let mut c = apex.client();
    assert_eq!(c.request(&get("h", "/first")).status, 200);
    for i in 0..20 {
        c.send(format!("HEAD /{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        let r = c.read_head_response();
        assert_eq!(r.status, 200, "{}", r.head_str());
    }
    assert_eq!(c.request(&get("h", "/last")).status, 200);
    assert_eq!(up.requests().len(), 22);
    // The first GET's connection answers the first HEAD; each later HEAD and the last GET
    // need a new one.
    assert_eq!(up.accepts(), 21, "upstream connections for GET, 20 HEADs, GET");
    let after = time_wait_to(up.addr.port());
    assert!(after <= before, "TIME_WAIT sockets towards the upstream: {before} before 20 HEADs, {after} after");
}

/// Sockets in TIME_WAIT whose remote port is `port` (/proc/net/tcp, IPv4).
fn time_wait_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(3) == Some(&"06") && f.get(2).and_then(|r| r.rsplit(':').next()) == Some(&format!("{port:04X}")[..])
        })
        .count()
}

/// Upstream whose first connection answers one request, then reads the next request and
/// closes without answering; later connections answer normally.
fn dies_on_second_request() -> Upstream {
    Upstream::start(|mut c| {
        if c.index == 0 {
            if let Some(r) = c.read_request() {
                let _ = c.write(ok(&r.target).as_slice());
            }
            let _ = c.read_request();
            c.shutdown();
            return;
        }
        while let Some(r) = c.read_request() {
            if c.write(&ok(&r.target)).is_err() {
                break;
            }
        }
    })
}

#[test]
fn idempotent_request_on_dead_pooled_connection_is_retried() {
    let up = dies_on_second_request();
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let r = c.request(&get("h", "/first"));
    assert_eq!(r.status, 200);
    let r = c.request(&get("h", "/second"));
    assert_eq!(r.status, 200, "GET failing on a reused connection must be retried: {}", r.head_str());
    assert_eq!(r.body_str(), "/second");
    let seconds: Vec<usize> = up.requests().iter().filter(|r| r.target == "/second").map(|r| r.conn).collect();
    assert_eq!(seconds, vec![0, 1], "sent on the pooled connection 0, then retried once on a fresh one");
    assert_eq!(up.accepts(), 2, "one reused connection plus one fresh retry");
}

/// A reused connection that fails after an interim response is not the idle-close race the
/// retry is for: the upstream read the request and began to answer it, so the GET is not sent
/// again (it could run twice) and the client gets a 502.
#[test]
fn a_pooled_connection_that_fails_after_a_1xx_is_not_retried() {
    let up = Upstream::start(|mut c| {
        if c.index == 0 {
            if let Some(r) = c.read_request() {
                let _ = c.write(ok(&r.target).as_slice());
            }
            if c.read_request().is_some() {
                let _ = c.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n");
            }
            c.shutdown();
            return;
        }
        while let Some(r) = c.read_request() {
            if c.write(&ok(&r.target)).is_err() {
                break;
            }
        }
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    assert_eq!(c.request(&get("h", "/first")).status, 200);
    let r = c.request(&get("h", "/second"));
    assert_apex_status(&r, 502);
    let seconds = up.requests().iter().filter(|r| r.target == "/second").count();
    assert_eq!(seconds, 1, "a GET that got a 1xx before its connection failed was sent again");
    assert_eq!(up.accepts(), 1);
}

#[test]
fn non_idempotent_request_on_dead_pooled_connection_is_502() {
    let up = dies_on_second_request();
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let r = c.request(&get("h", "/first"));
    assert_eq!(r.status, 200);
    let r = c.request(b"POST /second HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody");
    assert_apex_status(&r, 502);
    let posts: Vec<usize> = up.requests().iter().filter(|r| r.method == "POST").map(|r| r.conn).collect();
    assert_eq!(posts, vec![0], "the POST goes over the pooled connection once and is not retried");
}

#[test]
fn pooled_connection_closed_by_upstream_is_detected() {
    // Each upstream connection answers one request (keep-alive framing) and then closes.
    let up = Upstream::start(|mut c| {
        if let Some(r) = c.read_request() {
            let _ = c.write(&ok(&r.target));
        }
        c.shutdown();
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let r = c.request(&get("h", "/a"));
    assert_eq!(r.status, 200);
    thread::sleep(ms(300));
    // Not idempotent, so only detection before reuse (not a retry) can make this succeed.
    let r = c.request(b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_eq!(r.body_str(), "/b");
    let mut c2 = apex.client();
    thread::sleep(ms(300));
    let r = c2.request(&get("h", "/c"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "/c");
}

#[test]
fn two_hundred_pipelined_requests_in_one_write() {
    let up = Upstream::echo_path();
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let mut all = vec![];
    for i in 0..200 {
        all.extend_from_slice(&get("h", &format!("/q{i}")));
    }
    c.send(&all);
    for i in 0..200 {
        let r = c.try_read_response(false).unwrap_or_else(|e| panic!("response {i}: {e}"));
        assert_eq!(r.status, 200, "response {i}");
        assert_eq!(r.body_str(), format!("/q{i}"), "responses out of order");
    }
}

#[test]
fn two_workers_serve_requests() {
    let up = Upstream::ok("w");
    let apex = Apex::start(&Config::to(up.addr).workers(2));
    for i in 0..20 {
        let mut c = apex.client();
        let r = c.request(&get("h", &format!("/{i}")));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"w");
    }
}

#[test]
fn keep_alive_continues_after_an_apex_404() {
    let up = Upstream::ok("found");
    let apex = Apex::start(&Config::new().route("*", "/app", "app").group("app", &[up.addr]));
    let mut c = apex.client();
    let r = c.request(&get("h", "/nothing"));
    assert_apex_status(&r, 404);
    if !r.has_token("connection", "close") {
        let r = c.request(&get("h", "/app/x"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"found");
    }
}

/// A client that pipelines a request and the start of another, then closes its side, still gets
/// the whole first response (the half head is an abort, and only that is dropped). The response
/// is long and the client reads late, so it is still queued in Apex when the EOF is seen.
#[test]
fn half_a_pipelined_head_then_eof_keeps_the_response_before_it() {
    const CHUNKS: usize = 1000;
    let up = Upstream::start(|mut c| {
        if c.read_request().is_some() {
            let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for _ in 0..CHUNKS {
                resp.extend_from_slice(b"3e8\r\n");
                resp.extend(std::iter::repeat_n(b'z', 1000));
                resp.extend_from_slice(b"\r\n");
            }
            resp.extend_from_slice(b"0\r\n\r\n");
            let _ = c.write(&resp);
        }
        c.wait_eof();
    });
    let apex = Apex::start(&Config::to(up.addr).limit("client_send_buffer", "4096"));
    let mut c = apex.client_small_rcvbuf(4096);
    c.send(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\nGET /second HTTP/1.1\r\nHo");
    c.s.shutdown(std::net::Shutdown::Write).unwrap();
    thread::sleep(ms(500));
    let (raw, closed) = c.read_until_close(std::time::Duration::from_secs(10));
    let end = find(&raw, b"\r\n\r\n").expect("a response head") + 4;
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw[..end]));
    let (body, used) = decode_chunked(&raw[end..]).unwrap().expect("the whole chunked body");
    assert_eq!(body.len(), CHUNKS * 1000);
    assert_eq!(end + used, raw.len(), "nothing after the first response");
    assert!(closed);
    assert_eq!(up.requests().len(), 1, "the half request never reaches the upstream");
}

/// A pipelined response head that arrives while the client is still reading the previous
/// response, and does not fit beside its queued tail, waits for room and goes out whole.
#[test]
fn big_response_head_waits_behind_a_slowly_read_pipelined_response() {
    let big = "v".repeat(12_000);
    let up = Upstream::start(move |mut c| {
        while let Some(r) = c.read_request() {
            let resp = if r.target == "/first" {
                let mut b = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for _ in 0..500 {
                    b.extend_from_slice(b"3e8\r\n");
                    b.extend(std::iter::repeat_n(b'z', 1000));
                    b.extend_from_slice(b"\r\n");
                }
                b.extend_from_slice(b"0\r\n\r\n");
                b
            } else {
                format!("HTTP/1.1 200 OK\r\nX-Big: {big}\r\nContent-Length: 6\r\n\r\nsecond").into_bytes()
            };
            if c.write(&resp).is_err() {
                break;
            }
        }
    });
    let apex = Apex::start(&Config::to(up.addr).limit("client_send_buffer", "4096"));
    let mut c = apex.client_small_rcvbuf(4096);
    c.send(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\nGET /second HTTP/1.1\r\nHost: h\r\n\r\n");
    thread::sleep(ms(500));
    let first = c.read_response();
    assert_eq!(first.status, 200);
    assert_eq!(first.body.len(), 500 * 1000);
    let second = c.read_response();
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-big").map(str::len), Some(12_000));
    assert_eq!(second.body_str(), "second");
}
