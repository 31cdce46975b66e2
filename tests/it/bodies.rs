//! Message bodies: CL and chunked request bodies (chunked re-framed canonically), response
//! bodies by CL, chunked or close, bodiless responses, de-chunking for HTTP/1.0, and 100 MiB
//! each way in bounded memory.

use crate::harness::*;
use std::io::Write;
use std::thread;
use std::time::Duration;

const CHUNKED_REQ: &[u8] = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";

fn assert_canonical(up: &Upstream, expect_n: usize) {
    let reqs = up.requests();
    assert_eq!(reqs.len(), expect_n, "requests seen upstream");
    for r in reqs {
        assert_eq!(r.method, "POST");
        assert!(r.has_token("transfer-encoding", "chunked"), "{}", r.head_str());
        assert!(r.header("content-length").is_none(), "{}", r.head_str());
        assert!(r.header("x-trailer").is_none());
        let body = canonical_chunked(&r.body_raw).unwrap_or_else(|e| {
            panic!("upstream body not canonical chunked ({e}): {:?}", String::from_utf8_lossy(&r.body_raw))
        });
        assert_eq!(body, b"hello world");
    }
}

#[test]
fn content_length_body_is_forwarded() {
    let up = Upstream::ok("got");
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let r = c.request(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world");
    assert_eq!(r.status, 200);
    let req = up.one_request();
    assert_eq!(req.header("content-length"), Some("11"));
    assert_eq!(req.body, b"hello world");
    assert!(req.header("transfer-encoding").is_none());
}

#[test]
fn chunked_request_is_reframed_canonically() {
    let up = Upstream::ok("got");
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let r = c.request(CHUNKED_REQ);
    assert_eq!(r.status, 200);
    assert_canonical(&up, 1);
}

#[test]
fn chunked_request_split_at_every_byte_position() {
    let up = Upstream::ok("got");
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    for i in 1..CHUNKED_REQ.len() {
        c.send(&CHUNKED_REQ[..i]);
        thread::sleep(ms(2));
        c.send(&CHUNKED_REQ[i..]);
        let r = c.try_read_response(false).unwrap_or_else(|e| panic!("split at {i}: {e}"));
        assert_eq!(r.status, 200, "split at {i}");
    }
    assert_canonical(&up, CHUNKED_REQ.len() - 1);
}

#[test]
fn chunked_request_byte_by_byte() {
    let up = Upstream::ok("got");
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    for b in CHUNKED_REQ {
        c.send(&[*b]);
        thread::sleep(ms(1));
    }
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_canonical(&up, 1);
}

const CHUNKED_RESP: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";

/// Answers `/split/N` with CHUNKED_RESP written in two parts split at N, `/bytes` byte by byte.
fn splitting_upstream() -> Upstream {
    Upstream::start(|mut c| {
        while let Some(r) = c.read_request() {
            let res = if let Some(n) = r.target.strip_prefix("/split/") {
                let n: usize = n.parse().unwrap_or(1);
                let a = c.write(&CHUNKED_RESP[..n]);
                thread::sleep(ms(2));
                a.and_then(|_| c.write(&CHUNKED_RESP[n..]))
            } else {
                let mut res = Ok(());
                for b in CHUNKED_RESP {
                    res = res.and_then(|_| c.write(&[*b]));
                    thread::sleep(ms(1));
                }
                res
            };
            if res.is_err() {
                break;
            }
        }
    })
}

#[test]
fn chunked_response_split_at_every_byte_position() {
    let up = splitting_upstream();
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    for i in 1..CHUNKED_RESP.len() {
        c.send(&get("h", &format!("/split/{i}")));
        let r = c.try_read_response(false).unwrap_or_else(|e| panic!("split at {i}: {e}"));
        assert_eq!(r.status, 200, "split at {i}");
        assert_eq!(r.body, b"hello world", "split at {i}");
    }
}

#[test]
fn chunked_response_byte_by_byte() {
    let up = splitting_upstream();
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let r = c.request(&get("h", "/bytes"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world");
    // and the connection is still usable
    let r = c.request(&get("h", "/split/7"));
    assert_eq!(r.body, b"hello world");
}

const LENGTH_RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world";

/// A Content-Length response written in two parts, split at every byte: the body bytes that
/// come with the head are relayed at once (`whole_body`), the rest in `RespBody`. Either way
/// the client gets the whole body, and the one upstream connection is pooled for the next.
#[test]
fn content_length_response_split_at_every_byte_position() {
    let up = Upstream::start(|mut c| {
        while let Some(r) = c.read_request() {
            let n: usize = r.target.strip_prefix("/split/").and_then(|n| n.parse().ok()).unwrap_or(1);
            let a = c.write(&LENGTH_RESP[..n]);
            thread::sleep(ms(2));
            if a.and_then(|_| c.write(&LENGTH_RESP[n..])).is_err() {
                break;
            }
        }
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    for i in 1..LENGTH_RESP.len() {
        c.send(&get("h", &format!("/split/{i}")));
        let r = c.try_read_response(false).unwrap_or_else(|e| panic!("split at {i}: {e}"));
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello world"[..]), "split at {i}");
    }
    assert_eq!(up.accepts(), 1, "every split response left its upstream connection pooled");
}

#[test]
fn content_length_response_is_relayed() {
    let up = Upstream::http(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nabcde".to_vec());
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    for _ in 0..2 {
        let r = c.request(&get("h", "/"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("5"));
        assert_eq!(r.header("x-up"), Some("1"));
        assert_eq!(r.body, b"abcde");
    }
}

#[test]
fn close_delimited_response_closes_client_connection() {
    let up = Upstream::start(|mut c| {
        if c.read_request().is_some() {
            let _ = c.write(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the end");
        }
        c.shutdown();
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    c.send(&get("h", "/"));
    // Without framing, read_response reads until Apex closes (10 s guard).
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"until the end");
    if r.header("content-length").is_some() || r.has_token("transfer-encoding", "chunked") {
        c.assert_closed();
    }
}

#[test]
fn head_response_has_no_body() {
    let up = Upstream::http(|r| {
        if r.method == "HEAD" { b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec() } else { ok("after-head") }
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let mut both = b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
    both.extend_from_slice(&get("h", "/next"));
    c.send(&both);
    let r = c.read_head_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("100"));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_eq!(r.body, b"after-head");
}

#[test]
fn no_body_for_204_and_304() {
    let up = Upstream::http(|r| match r.target.as_str() {
        "/204" => b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n".to_vec(),
        "/304" => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 50\r\n\r\n".to_vec(),
        _ => ok("final"),
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let mut all = get("h", "/204");
    all.extend_from_slice(&get("h", "/304"));
    all.extend_from_slice(&get("h", "/x"));
    c.send(&all);
    assert_eq!(c.read_response().status, 204);
    assert_eq!(c.read_response().status, 304);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"final");
}

#[test]
fn interim_1xx_response_has_no_body() {
    let up = Upstream::http(|_| {
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            .to_vec()
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    for _ in 0..2 {
        let r = c.request(&get("h", "/"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"ok");
    }
}

#[test]
fn chunked_response_to_http10_client_is_dechunked_and_closed() {
    let up = Upstream::http(|_| CHUNKED_RESP.to_vec());
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    c.send(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(r.header("transfer-encoding").is_none(), "HTTP/1.0 client got TE: {}", r.head_str());
    assert!(r.has_token("connection", "close"), "{}", r.head_str());
    assert_eq!(r.body, b"hello world");
    let (rest, closed) = c.read_until_close(Duration::from_secs(5));
    assert!(rest.is_empty() && closed, "connection must close right after the body");
}

const BIG: u64 = 100 << 20;
const RSS_MAX_KIB: u64 = 32 << 10;

fn pattern_block() -> Vec<u8> {
    (0..251 * 256).map(|i| pattern(i as u64)).collect()
}

/// Whether `part` is the pattern starting at offset `at` (`part` at most 64 KiB).
fn is_pattern(at: u64, part: &[u8]) -> bool {
    thread_local!(static CHECK: Vec<u8> = (0..251 * 263).map(|i| pattern(i as u64)).collect());
    let o = (at % 251) as usize;
    CHECK.with(|c| part.len() + o <= c.len() && &c[o..o + part.len()] == part)
}

#[test]
fn upload_100_mib_streams_in_bounded_memory() {
    let up = Upstream::start(|mut c| {
        let Some(req) = c.read_head() else { return };
        let n: u64 = req.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        c.set_recording(false);
        let (mut got, mut bad) = (0u64, false);
        while got < n {
            let Some(part) = c.read_chunk(1 << 16) else {
                break;
            };
            bad |= !is_pattern(got, &part);
            got += part.len() as u64;
        }
        let body = format!("{got} {}", if bad { "corrupt" } else { "intact" });
        let _ = c.write(&ok(&body));
        c.wait_eof();
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    c.set_read_timeout(Duration::from_secs(120));
    let mut w = c.s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let writer = thread::spawn(move || {
        w.write_all(format!("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: {BIG}\r\n\r\n").as_bytes())?;
        let block = pattern_block();
        let mut sent = 0u64;
        while sent < BIG {
            let n = (BIG - sent).min(block.len() as u64) as usize;
            w.write_all(&block[..n])?;
            sent += n as u64;
        }
        std::io::Result::Ok(sent)
    });
    let r = c.read_response();
    assert_eq!(writer.join().unwrap().expect("upload write"), BIG);
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), format!("{BIG} intact"));
    let hwm = apex.vm_hwm_kib();
    assert!(hwm < RSS_MAX_KIB, "apex VmHWM {hwm} KiB >= {RSS_MAX_KIB} KiB after a 100 MiB upload");
}

#[test]
fn download_100_mib_streams_in_bounded_memory() {
    let up = Upstream::start(|mut c| {
        if c.read_request().is_none() {
            return;
        }
        let block = pattern_block();
        if c.write(format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").as_bytes()).is_err() {
            return;
        }
        let mut sent = 0u64;
        while sent < BIG {
            let n = (BIG - sent).min(block.len() as u64) as usize;
            if c.write(&block[..n]).is_err() {
                return;
            }
            sent += n as u64;
        }
        c.wait_eof();
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    c.send(&get("h", "/down"));
    let r = c.read_head_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(BIG.to_string().as_str()));
    let mut got = 0u64;
    let mut tmp = vec![0u8; 1 << 16];
    while got < BIG {
        let n = c.read_some(&mut tmp).expect("reading the body");
        assert!(n > 0, "connection closed after {got} of {BIG} bytes");
        assert!(is_pattern(got, &tmp[..n]), "body corrupt in bytes {got}..{}", got + n as u64);
        got += n as u64;
    }
    assert_eq!(got, BIG);
    let hwm = apex.vm_hwm_kib();
    assert!(hwm < RSS_MAX_KIB, "apex VmHWM {hwm} KiB >= {RSS_MAX_KIB} KiB after a 100 MiB download");
}

#[test]
fn early_upstream_response_does_not_turn_the_body_into_a_request() {
    // The upstream answers after the head, before the body; the body looks like a request.
    let up = Upstream::start(|mut c| {
        while let Some(req) = c.read_head() {
            c.record(&req);
            if c.write(&ok("early")).is_err() {
                return;
            }
            let n: usize = req.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            if c.read_exact(n).is_none() {
                return;
            }
        }
    });
    let apex = Apex::start(&Config::to(up.addr));
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    for expect in [false, true] {
        let mut c = apex.client();
        let head = format!(
            "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n{}\r\n",
            smuggled.len(),
            if expect { "Expect: 100-continue\r\n" } else { "" }
        );
        c.send(head.as_bytes());
        let r = c.read_final_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"early");
        let _ = c.try_send(smuggled);
        match c.wait(ms(700)) {
            Seen::Data(d) => panic!("body bytes were parsed as a request (expect={expect}): got {d:?}"),
            Seen::Closed | Seen::Silent => {}
        }
    }
    let targets: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
    assert!(!targets.contains(&"/smuggled".to_string()), "smuggled request reached upstream: {targets:?}");
}

/// Chunks large enough that their data is spliced (past a buffer), checked byte for byte.
const CHUNK: usize = 1 << 20;
const CHUNKS: usize = 24;

#[test]
fn large_chunked_upload_is_reframed_intact() {
    let up = Upstream::start(|mut c| {
        if c.read_head().is_none() {
            return;
        }
        c.set_recording(false);
        // Canonical re-framing: exactly `100000\r\n<1 MiB>\r\n` per chunk, then `0\r\n\r\n`.
        let mut verdict = "intact";
        let mut at = 0u64;
        for _ in 0..CHUNKS {
            if c.read_exact(8).as_deref() != Some(b"100000\r\n") {
                verdict = "bad size line";
                break;
            }
            let Some(data) = c.read_exact(CHUNK) else {
                verdict = "short";
                break;
            };
            if !data.chunks(1 << 15).enumerate().all(|(i, p)| is_pattern(at + (i << 15) as u64, p)) {
                verdict = "corrupt";
            }
            at += CHUNK as u64;
            if c.read_exact(2).as_deref() != Some(b"\r\n") {
                verdict = "bad chunk end";
                break;
            }
        }
        if verdict == "intact" && c.read_exact(5).as_deref() != Some(b"0\r\n\r\n") {
            verdict = "bad last chunk";
        }
        let _ = c.write(&ok(verdict));
        c.wait_eof();
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    c.set_read_timeout(Duration::from_secs(120));
    let mut w = c.s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        // The client's own framing is odd but valid: uppercase hex with leading zeros and an extension.
        w.write_all(b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")?;
        let block: Vec<u8> = (0..CHUNK as u64 * CHUNKS as u64).map(pattern).collect();
        for part in block.chunks(CHUNK) {
            w.write_all(format!("{:08X};x=y\r\n", part.len()).as_bytes())?;
            w.write_all(part)?;
            w.write_all(b"\r\n")?;
        }
        w.write_all(b"0\r\nTrailer-Field: dropped\r\n\r\n")
    });
    let r = c.read_response();
    writer.join().unwrap().expect("upload write");
    assert_eq!((r.status, r.body_str().as_str()), (200, "intact"));
}

#[test]
fn large_chunked_download_is_relayed_intact() {
    let up = Upstream::start(|mut c| {
        if c.read_request().is_none() {
            return;
        }
        let block: Vec<u8> = (0..CHUNK as u64 * CHUNKS as u64).map(pattern).collect();
        let _ = c.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        for part in block.chunks(CHUNK) {
            if c.write(format!("{:x};ext\r\n", part.len()).as_bytes()).is_err()
                || c.write(part).is_err()
                || c.write(b"\r\n").is_err()
            {
                return;
            }
        }
        let _ = c.write(b"0\r\n\r\n");
        c.wait_eof();
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    c.set_read_timeout(Duration::from_secs(60));
    c.send(&get("h", "/down"));
    let r = c.read_head_response();
    assert_eq!(r.status, 200);
    assert!(r.has_token("transfer-encoding", "chunked"), "{}", r.head_str());
    // Read the whole chunked body raw, then check framing and data.
    let mut raw = Vec::new();
    let mut tmp = vec![0u8; 1 << 16];
    let expect_len = CHUNKS * (8 + CHUNK + 2) + 5;
    while raw.len() < expect_len {
        let n = c.read_some(&mut tmp).expect("reading the body");
        assert!(n > 0, "closed after {} bytes", raw.len());
        raw.extend_from_slice(&tmp[..n]);
    }
    let (body, used) = decode_chunked(&raw).unwrap().expect("complete chunked body");
    assert_eq!(used, raw.len(), "nothing after the last chunk");
    assert_eq!(body.len(), CHUNK * CHUNKS);
    assert!(body.chunks(1 << 15).enumerate().all(|(i, p)| is_pattern((i << 15) as u64, p)), "body corrupt");
    assert!(find(&raw, b"ext").is_none(), "chunk extensions are not relayed");
}
