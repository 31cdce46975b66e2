//! Operations: reload under load, tunnels and streams across a reload, and draining on SIGTERM.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

fn conf(up: SocketAddr) -> String {
    Config::to(up).workers(2).render()
}

/// A request as the load saw it: when sent, when answered, and which upstream answered.
struct Seen {
    sent: Instant,
    done: Instant,
    body: String,
}

#[test]
fn fifty_reloads_under_load_lose_nothing() {
    let a = Upstream::ok("A");
    let b = Upstream::ok("B");
    let (conf_a, conf_b) = (conf(a.addr), conf(b.addr));
    let apex = Apex::start_toml(&conf_a);
    let addr = apex.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
    let errors: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for k in 0..6 {
        let (stop, seen, errors) = (stop.clone(), seen.clone(), errors.clone());
        load.push(thread::spawn(move || {
            let keep_alive = k % 2 == 0;
            let mut c = keep_alive.then(|| Client::connect(addr));
            while !stop.load(SeqCst) {
                let mut fresh;
                let client = match c.as_mut() {
                    Some(c) => c,
                    None => {
                        fresh = Client::connect(addr);
                        &mut fresh
                    }
                };
                let sent = Instant::now();
                let req: &[u8] = if keep_alive {
                    b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"
                } else {
                    b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                };
                if let Err(e) = client.try_send(req) {
                    errors.lock().unwrap().push(format!("send: {e}"));
                    continue;
                }
                match client.try_read_response(false) {
                    Ok(r) if r.status == 200 => {
                        seen.lock().unwrap().push(Seen { sent, done: Instant::now(), body: r.body_str() })
                    }
                    Ok(r) => errors.lock().unwrap().push(format!("status {}", r.status)),
                    Err(e) => errors.lock().unwrap().push(format!("read: {e}")),
                }
            }
        }));
    }
    // Periods: (config, signalled at, the next reload confirmed at).
    let mut periods: Vec<(&str, Instant)> = vec![("A", Instant::now())];
    let mut ok_reloads = 0;
    let mut failed_reloads = 0;
    thread::sleep(ms(100));
    for i in 0..50 {
        let (text, name) = if i % 2 == 0 { (&conf_b, "B") } else { (&conf_a, "A") };
        if i % 5 == 4 {
            // A broken file in between: it must change nothing.
            std::fs::write(&apex.conf, format!("{text}\nbroken = [\n")).unwrap();
            apex.signal("HUP");
            failed_reloads += 1;
            apex.wait_stderr("reload failed", failed_reloads);
        }
        std::fs::write(&apex.conf, text).unwrap();
        let at = Instant::now();
        apex.signal("HUP");
        ok_reloads += 1;
        apex.wait_stderr("apex: reloaded", ok_reloads);
        periods.push((name, at));
        thread::sleep(ms(20));
    }
    thread::sleep(ms(100));
    stop.store(true, SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    assert!(errors.is_empty(), "{} failed requests, first: {:?}", errors.len(), errors.first());
    let seen = seen.lock().unwrap();
    assert!(seen.len() > 200, "only {} requests completed under load", seen.len());
    // Each response came from the upstream of a snapshot that was current while it ran: some
    // period of that config overlaps [sent, done]. A period ends when the next reload has been
    // confirmed (the swap happens between the signal and the confirmation).
    let confirmed_end = |k: usize| periods.get(k + 1).map(|p| p.1 + ms(50)).unwrap_or_else(Instant::now);
    for s in seen.iter() {
        let ok = periods
            .iter()
            .enumerate()
            .any(|(k, (name, start))| *name == s.body && *start <= s.done && s.sent <= confirmed_end(k));
        assert!(ok, "a response from {} outside any period of its config", s.body);
    }
    let from_b = seen.iter().filter(|s| s.body == "B").count();
    assert!(from_b > 0 && from_b < seen.len(), "both configs served: {from_b} of {}", seen.len());
    assert!(apex.stderr().matches("reload failed").count() == 10, "{}", apex.stderr());
}

const WS_REQ: &[u8] = b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";

#[test]
fn tunnel_and_slow_stream_survive_a_reload() {
    let up = Upstream::start(|mut c| {
        let Some(req) = c.read_head() else { return };
        c.record(&req);
        if req.target == "/ws" {
            let _ = c.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
            for _ in 0..4 {
                let got = c.read_until(b"\n", Duration::from_secs(5));
                if got.is_empty() || c.write(&[b"echo:", &got[..]].concat()).is_err() {
                    return;
                }
            }
            c.wait_eof();
        } else {
            let _ = c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
            for i in 0..10u8 {
                thread::sleep(ms(60));
                if c.write(&[b'0' + i]).is_err() {
                    return;
                }
            }
            c.wait_eof();
        }
    });
    let other = Upstream::ok("other");
    let apex = Apex::start_toml(&conf(up.addr));
    let mut ws = apex.client();
    ws.send(WS_REQ);
    assert_eq!(ws.read_response().status, 101);
    ws.send(b"one\n");
    assert_eq!(ws.read_until(b"echo:one\n"), b"echo:one\n");
    let mut slow = apex.client();
    slow.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    thread::sleep(ms(150));

    std::fs::write(&apex.conf, conf(other.addr)).unwrap();
    apex.signal("HUP");
    apex.wait_stderr("apex: reloaded", 1);

    ws.send(b"two\n");
    assert_eq!(ws.read_until(b"echo:two\n"), b"echo:two\n", "the tunnel outlived the reload");
    let r = slow.read_response();
    assert_eq!((r.status, r.body_str().as_str()), (200, "0123456789"), "the stream outlived the reload");
    // New requests go by the new config.
    assert_eq!(apex.client().request(&get("t", "/")).body_str(), "other");
}

#[test]
fn sigterm_finishes_in_flight_refuses_new_and_exits_zero() {
    let up = Upstream::http(|r| {
        if r.target == "/slow" {
            thread::sleep(ms(700));
        }
        ok("done")
    });
    let mut apex = Apex::start_toml(&conf(up.addr));
    let addr = apex.addr;
    let mut idle = apex.client();
    assert_eq!(idle.request(&get("t", "/warm")).status, 200);
    let mut slow = apex.client();
    slow.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    thread::sleep(ms(150));
    apex.signal("TERM");
    thread::sleep(ms(150));
    // New connections are refused while the drain runs.
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(refused.is_err(), "a new connection was accepted during the drain");
    // The idle keep-alive connection is closed.
    idle.assert_closed();
    // The in-flight response arrives whole, marked Connection: close.
    let r = slow.read_response();
    assert_eq!((r.status, r.body_str().as_str()), (200, "done"));
    assert!(r.has_token("connection", "close"), "{}", r.head_str());
    assert_eq!(apex.wait_exit(Duration::from_secs(10)), Some(0), "{}", apex.stderr());
}

#[test]
fn second_sigterm_exits_at_once() {
    let up = Upstream::silent();
    let mut apex = Apex::start_toml(&conf(up.addr));
    let mut c = apex.client();
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    thread::sleep(ms(100));
    apex.signal("TERM");
    thread::sleep(ms(100));
    assert!(apex.is_running(), "the first SIGTERM waits for the request in flight");
    apex.signal("TERM");
    assert!(apex.wait_exit(Duration::from_secs(5)).is_some(), "the second SIGTERM exits at once");
}

#[test]
fn access_log_has_a_line_per_request() {
    let up = Upstream::ok("hi");
    let dir = TempDir::new("log");
    let log = dir.path().join("access.log");
    let text = format!("{}\n[log]\naccess = {:?}\nformat = \"json\"\n", conf(up.addr), log.display().to_string());
    let apex = Apex::start_toml(&text);
    let mut c = apex.client();
    for i in 0..20 {
        assert_eq!(c.request(&get("t", &format!("/r{i}"))).status, 200);
    }
    let mut bad = apex.client();
    bad.send(b"GET / HTTP/1.1\r\nHost: t\r\nHost: t\r\n\r\n");
    assert_eq!(bad.read_response().status, 400);
    let end = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 21 || Instant::now() > end {
            break text;
        }
        thread::sleep(ms(20));
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 21, "{text}");
    assert!(lines[0].contains("\"method\":\"GET\",\"target\":\"/r0\""), "{}", lines[0]);
    assert!(lines[0].contains(&format!("\"upstream\":\"{}\"", up.addr)), "{}", lines[0]);
    assert!(lines[0].contains("\"status\":200"), "{}", lines[0]);
    assert!(lines[20].contains("\"status\":400") && lines[20].contains("\"ended_by\":\"client\""), "{}", lines[20]);
}

#[test]
fn sigusr1_reopens_the_access_log() {
    let up = Upstream::ok("hi");
    let dir = TempDir::new("rot");
    let log = dir.path().join("access.log");
    let text = format!("{}\n[log]\naccess = {:?}\n", conf(up.addr), log.display().to_string());
    let apex = Apex::start_toml(&text);
    assert_eq!(apex.client().request(&get("t", "/before")).status, 200);
    let wait_for = |path: &std::path::Path, needle: &str| {
        let end = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(path).unwrap_or_default().contains(needle) {
            assert!(Instant::now() < end, "{needle} never logged to {}", path.display());
            thread::sleep(ms(20));
        }
    };
    wait_for(&log, "/before");
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    apex.signal("USR1");
    thread::sleep(ms(200));
    assert_eq!(apex.client().request(&get("t", "/after")).status, 200);
    wait_for(&log, "/after");
    assert!(!std::fs::read_to_string(&rotated).unwrap().contains("/after"));
}

#[test]
fn listens_on_ipv4_and_ipv6_with_xff_for_each() {
    let up = Upstream::http(|r| ok(r.header("x-forwarded-for").unwrap_or("none")));
    let text = conf(up.addr).replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1:0\", \"[::1]:0\"]");
    assert!(text.contains("[::1]:0"), "{text}");
    let apex = Apex::start_toml(&text);
    // The harness reads the first listening line (IPv4); the second is [::1] on its own port.
    let end = Instant::now() + Duration::from_secs(5);
    let v6: SocketAddr = loop {
        let found = apex.stdout_lines().iter().find_map(|l| {
            l.strip_prefix("apex: listening on [").map(|_| l.trim_start_matches("apex: listening on ").parse().unwrap())
        });
        match found {
            Some(a) => break a,
            None if Instant::now() < end => thread::sleep(ms(10)),
            None => panic!("no IPv6 listening line: {:?}", apex.stdout_lines()),
        }
    };
    assert_eq!(apex.client().request(&get("t", "/")).body_str(), "127.0.0.1");
    let mut c6 = Client::connect(v6);
    assert_eq!(c6.request(&get("t", "/")).body_str(), "::1");
}

/// A whole request with its body and then the client's FIN in one go (`printf ... | nc -N`):
/// the request is answered, not taken for an abort.
#[test]
fn request_then_half_close_is_answered() {
    let up = Upstream::http(|r| ok(&format!("{} bytes", r.body.len())));
    let apex = Apex::start_toml(&conf(up.addr));
    for req in [
        &b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"[..],
        &b"POST /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
    ] {
        let mut c = apex.client();
        c.send(req);
        c.s.shutdown(std::net::Shutdown::Write).unwrap();
        let r = c.read_response();
        assert_eq!((r.status, r.body_str().as_str()), (200, "5 bytes"));
    }
}

/// Pipelined responses to a client that reads nothing for a while (small socket buffers, bodies
/// under the splice threshold, so they queue in `cout`) all arrive whole and in order, the last
/// with a blank line inside its body.
#[test]
fn pipelined_responses_to_a_slow_reader_arrive_whole() {
    let mid = vec![b'x'; 16_330]; // head + body leave 9 bytes of a 16 KiB buffer
    let up = Upstream::http(move |r| {
        if r.target == "/mid" {
            let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", mid.len()).into_bytes();
            v.extend_from_slice(&mid);
            v
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nab\r\n\r\ncdefgh".to_vec()
        }
    });
    let text = format!("{}\n[limits]\nclient_send_buffer = \"16KiB\"\n", conf(up.addr));
    let apex = Apex::start_toml(&text);
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&apex.addr.into()).unwrap();
    let mut c: TcpStream = s.into();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::{Read, Write};
    let mut reqs = Vec::new();
    for _ in 0..8 {
        reqs.extend_from_slice(b"GET /mid HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    reqs.extend_from_slice(b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n");
    c.write_all(&reqs).unwrap();
    thread::sleep(ms(500)); // the responses reach Apex while the client reads nothing
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !got.ends_with(b"cdefgh") {
        let n = c.read(&mut buf).expect("reading the responses");
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    let first = b"HTTP/1.1 200 OK\r\nContent-Length: 16330\r\n\r\n";
    let last = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nab\r\n\r\ncdefgh";
    assert_eq!(got.len(), 8 * (first.len() + 16_330) + last.len(), "every response, nothing more or less");
    assert!(got.ends_with(last));
}
