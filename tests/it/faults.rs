//! Upstream faults: down, closing mid-body, garbage or ambiguous response heads, and
//! closing before a response. Bad upstream connections are never reused.

use crate::harness::*;
use std::time::Duration;

#[test]
fn upstream_down_is_502() {
    let apex = Apex::start(&Config::to(dead_addr()));
    let mut c = apex.client();
    let r = c.request(&get("h", "/"));
    assert_apex_status(&r, 502);
}

#[test]
fn upstream_closing_mid_body_truncates_client_response() {
    let up = Upstream::start(|mut c| {
        if c.read_request().is_some() {
            let mut resp = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
            resp.extend_from_slice(&[b'y'; 1000]);
            let _ = c.write(&resp);
        }
        c.shutdown();
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    c.send(&get("h", "/"));
    let r = c.read_head_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("100000"));
    let (body, closed) = c.read_until_close(Duration::from_secs(5));
    assert!(closed, "client connection must be closed when the upstream body breaks off");
    assert!(body.len() < 100000);
}

#[test]
fn upstream_closing_before_response_is_502() {
    let up = Upstream::start(|mut c| {
        let _ = c.read_request();
        c.shutdown();
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let r = c.request(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi");
    assert_apex_status(&r, 502);
}

/// Every upstream connection answers each request with `resp` and stays open.
fn bad_response(resp: &'static [u8]) {
    let up = Upstream::start(move |mut c| {
        while c.read_request().is_some() {
            if c.write(resp).is_err() {
                break;
            }
        }
    });
    let apex = Apex::start(&Config::to(up.addr).timeout("upstream_head", "3s"));
    for i in 0..2 {
        let mut c = apex.client();
        let r = c.request(&get("h", &format!("/{i}")));
        assert_apex_status(&r, 502);
    }
    assert_eq!(up.accepts(), 2, "an upstream connection that sent a bad response must not be reused");
}

#[test]
fn upstream_garbage_is_502() {
    bad_response(b"this is not http at all\r\n\r\n");
}

#[test]
fn upstream_bad_status_line_is_502() {
    bad_response(b"HTTP/1.1 2xx OK\r\nContent-Length: 0\r\n\r\n");
}

#[test]
fn upstream_content_length_with_transfer_encoding_is_502() {
    bad_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
}

#[test]
fn upstream_two_different_content_lengths_is_502() {
    bad_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!");
}

#[test]
fn upstream_bad_chunk_in_response_closes_client_connection() {
    let up = Upstream::start(|mut c| {
        if c.read_request().is_some() {
            let _ =
                c.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n");
        }
        c.wait_eof();
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    c.send(&get("h", "/"));
    match c.try_read_response(false) {
        Ok(r) if r.status == 502 => {} // detected before the head was relayed
        Ok(r) => panic!("a response with a broken chunk was relayed as complete: {}", r.head_str()),
        // "bad chunk size line" here would mean Apex relayed the broken framing
        Err(e) => assert!(
            e.contains("closed") || e.to_ascii_lowercase().contains("reset"),
            "expected the client connection to be cut, got: {e}"
        ),
    }
    let (_, closed) = c.read_until_close(Duration::from_secs(5));
    assert!(closed, "client connection must be closed");
}

/// An upstream may answer before it has read the whole request body, then close; its close
/// (a reset, with the body unread) fails Apex's writes of the rest of the body. The response it
/// already sent must still reach the client whole: a failed request side stops sending, not
/// reading. The client reads late and slowly, so the response sits in Apex when the reset comes.
#[test]
fn upstream_answering_early_then_resetting_still_delivers_its_response() {
    const BODY: usize = 100_000;
    let up = Upstream::start(|mut c| {
        if c.read_head().is_some() {
            let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n").into_bytes();
            resp.extend(std::iter::repeat_n(b'r', BODY));
            let _ = c.write(&resp);
            std::thread::sleep(ms(300)); // delivered to Apex before the reset
        }
        // Dropped with the request body unread: the kernel sends a reset.
    });
    let apex = Apex::start(&Config::to(up.addr).limit("client_send_buffer", "4096"));
    let mut c = apex.client_small_rcvbuf(4096);
    c.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 50000000\r\n\r\n");
    let mut w = c.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'q'; 65536];
        let mut sent = 0usize;
        while sent < 50_000_000 {
            match std::io::Write::write(&mut w, &chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
    });
    std::thread::sleep(ms(800));
    let r = c.read_head_response();
    assert_eq!(r.status, 200);
    let (body, closed) = c.read_until_close(Duration::from_secs(10));
    assert_eq!(body.len(), BODY, "the whole response, then a close (the request body was cut)");
    assert!(body.iter().all(|&b| b == b'r'));
    assert!(closed);
    writer.join().unwrap();
}

/// #14: a connection that fails is logged once, with the phase it was in and the cause (never
/// dropped silently), and a burst of such lines is held to the worker's rate (10 a second),
/// the next line saying how many were held back.
#[test]
fn a_failed_connection_is_logged_with_its_phase_and_cause_rate_limited() {
    let up = Upstream::start(|mut c| {
        if c.read_request().is_some() {
            let _ = c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n");
            let chunk = [b'y'; 65536];
            while c.write(&chunk).is_ok() {}
        }
    });
    let apex = Apex::start(&Config::to(up.addr).workers(1));
    let resets = 25;
    for _ in 0..resets {
        let mut c = apex.client();
        c.send(&get("h", "/"));
        assert_eq!(c.read_head_response().status, 200); // the body is streaming: RespBody
        // Reset, not closed: Apex's next write fails at once.
        socket2::SockRef::from(&c.s).set_linger(Some(Duration::ZERO)).unwrap();
    }
    let line = "closed in RespBody: the client's socket failed";
    apex.wait_stderr(line, 10);
    std::thread::sleep(Duration::from_millis(1200)); // the throttle's window passes
    // One more, after the window: it carries the count of those held back.
    let mut c = apex.client();
    c.send(&get("h", "/"));
    assert_eq!(c.read_head_response().status, 200);
    socket2::SockRef::from(&c.s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(c);
    apex.wait_stderr("more such lines held back)", 1);
    let err = apex.stderr();
    let logged = err.lines().filter(|l| l.contains(line)).count();
    assert!(logged <= 11, "{logged} lines for {} failures: not rate-limited\n{err}", resets + 1);
    assert!(err.lines().any(|l| l.contains("apex: info: client 127.0.0.1:") && l.contains(line)), "{err}");
}

/// #14: a connection that uses up its turns with work left (here 300 pipelined requests that
/// Apex answers itself, 404, with no upstream to wait on) is said once, its phase named, and
/// is then served to the end after other connections' work.
#[test]
fn a_connection_out_of_turns_is_logged_once_and_finished() {
    let apex = Apex::start(&Config::new().route("only.example", "/", "app").group("app", &[dead_addr()]).workers(1));
    let mut c = apex.client();
    let n = 300;
    c.send(&get("other.example", "/").repeat(n));
    for i in 0..n {
        assert_eq!(c.read_response().status, 404, "response {i}");
    }
    apex.wait_stderr("used its turns in", 1);
    let err = apex.stderr();
    assert_eq!(err.matches("used its turns in").count(), 1, "logged once per connection\n{err}");
    assert!(err.contains("apex: info: client 127.0.0.1:"), "{err}");
    let phase = err.split("used its turns in ").nth(1).and_then(|r| r.split(';').next()).unwrap_or("");
    assert!(["ReadHead", "Respond"].contains(&phase), "the phase it was in, named: {phase:?}\n{err}");
}
