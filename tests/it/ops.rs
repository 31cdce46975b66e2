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
    // Periods: (config, signalled at, confirmed at: Apex said "reloaded").
    let start = Instant::now();
    let mut periods: Vec<(&str, Instant, Instant)> = vec![("A", start, start)];
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
        apex.wait_stderr("apex: info: reloaded", ok_reloads);
        periods.push((name, at, Instant::now()));
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
    // period of that config overlaps [sent, done]. A period starts at its signal and ends when
    // the next reload has been confirmed (the swap happens between the signal and the
    // confirmation; a fixed delay after the signal was not enough on a loaded machine).
    let confirmed_end = |k: usize| periods.get(k + 1).map(|p| p.2).unwrap_or_else(Instant::now);
    for s in seen.iter() {
        let ok = periods
            .iter()
            .enumerate()
            .any(|(k, (name, start, _))| *name == s.body && *start <= s.done && s.sent <= confirmed_end(k));
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
    apex.wait_stderr("apex: info: reloaded", 1);

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

/// Reads `path` until it has `n` lines (the logger flushes within ~100 ms), at most 5 s.
fn log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n || Instant::now() > end {
            return text.lines().map(str::to_owned).collect();
        }
        thread::sleep(ms(20));
    }
}

/// The combined format's bytes field is the body sent (nginx's `$body_bytes_sent`) and `out=`
/// the total; a request rejected before it parsed logs its request line and User-Agent,
/// escaped; a WebSocket line counts the tunnel's bytes both ways.
#[test]
fn access_log_counts_body_and_total_and_names_rejected_requests() {
    let up = Upstream::start(|mut c| {
        while let Some(req) = c.read_head() {
            c.record(&req);
            if req.target == "/ws" {
                let _ =
                    c.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
                let got = c.read_until(b"\n", Duration::from_secs(5)); // "0123456789\n": 11 bytes
                let _ = c.write(&[b"echo:", &got[..]].concat()); // 16 bytes back
                c.wait_eof();
                return;
            }
            if c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").is_err() {
                return;
            }
        }
    });
    let dir = TempDir::new("log-bytes");
    let log = dir.path().join("access.log");
    let apex = Apex::start_toml(&format!("{}\n[log]\naccess = {:?}\n", conf(up.addr), log.display().to_string()));
    let r = apex.client().request(&get("t", "/five"));
    assert_eq!(r.body_str(), "hello");
    let total = r.head_str().len() + 5;

    let mut bad = apex.client();
    bad.send(b"GET /dup?q=1 HTTP/1.1\r\nHost: t\r\nUser-Agent: evil/\x01\r\nHost: t\r\n\r\n");
    assert_eq!(bad.read_response().status, 400);
    let mut junk = apex.client();
    junk.send(b"\x16\x03\x01 garbage\r\n\r\n");
    assert_eq!(junk.read_response().status, 400);

    let mut ws = apex.client();
    ws.send(WS_REQ);
    assert_eq!(ws.read_response().status, 101);
    ws.send(b"0123456789\n");
    assert_eq!(ws.read_until(b"echo:0123456789\n"), b"echo:0123456789\n");
    drop(ws); // the tunnel's line is written when it ends

    let lines = log_lines(&log, 4);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let line =
        |needle: &str| lines.iter().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}: {lines:#?}"));
    let five = line("/five");
    assert!(five.contains("\"GET /five HTTP/1.1\" 200 5 "), "{five}");
    assert!(five.contains(&format!(" out={total} ")), "{five}");
    let dup = line("/dup");
    assert!(dup.contains("\"GET /dup?q=1 HTTP/1.1\" 400 "), "{dup}");
    assert!(dup.contains("\"evil/\\x01\""), "{dup}");
    let garbage = line("garbage");
    assert!(garbage.contains("\"\\x16\\x03\\x01 garbage\" 400 "), "{garbage}");
    let tunnel = line("/ws");
    assert!(tunnel.contains("\" 101 16 "), "the body field counts the tunnel's bytes down: {tunnel}");
    assert!(tunnel.contains(&format!(" in={} ", WS_REQ.len() + 11)), "and up: {tunnel}");
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

// ---------------------------------------------------------------- upgrade, systemd, second Apex

/// An apex started by `cmd` (the binary itself, or a shell that execs it), with stdout read for
/// `apex: listening on`. Killed on drop, together with every process an upgrade started from it
/// (the PIDs its stderr names) that still runs this config.
struct Run {
    child: std::process::Child,
    conf: std::path::PathBuf,
    err: std::path::PathBuf,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Run {
    fn start(toml: &str, bin: &std::path::Path) -> Run {
        Self::start_with(toml, |conf| {
            let mut c = std::process::Command::new(bin);
            c.arg(conf);
            c
        })
    }

    /// `make` gets the config file's path and returns the command to run.
    fn start_with(toml: &str, make: impl FnOnce(&std::path::Path) -> std::process::Command) -> Run {
        use std::io::BufRead;
        let dir = TempDir::new("ops");
        let conf = dir.write("apex.toml", toml);
        let err = dir.path().join("stderr");
        let mut child = make(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Drains stdout (the access log too) for as long as any process of the run holds it.
        thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("apex: listening on ") {
                    let _ = tx.send(a.trim().parse::<SocketAddr>().ok());
                }
            }
        });
        let got = rx.recv_timeout(Duration::from_secs(10));
        let mut run = Run { child, conf, err, addr: "0.0.0.0:0".parse().unwrap(), _dir: dir };
        match got {
            Ok(Some(a)) => run.addr = a,
            _ => panic!("apex did not say where it listens; stderr:\n{}", run.stderr()),
        }
        run
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits (bounded) until stderr holds `needle` `n` times.
    fn wait_stderr(&self, needle: &str, n: usize) {
        let end = Instant::now() + Duration::from_secs(30);
        while self.stderr().matches(needle).count() < n {
            assert!(Instant::now() < end, "stderr never had {n} x {needle:?}:\n{}", self.stderr());
            thread::sleep(ms(5));
        }
    }

    /// The first process, then each one an upgrade said serves now.
    fn pids(&self) -> Vec<u32> {
        let mut v = vec![self.child.id()];
        for l in self.stderr().lines() {
            // `2026-12-05T12:00:00Z apex: info: upgraded: pid N serves now; ...`
            if let Some((_, rest)) = l.split_once(" apex: info: upgraded: pid ") {
                v.push(rest.split(' ').next().unwrap().parse().unwrap());
            }
        }
        v
    }

    fn serving_pid(&self) -> u32 {
        *self.pids().last().unwrap()
    }

    /// Whether `pid` is alive (not a zombie) and runs this run's config.
    fn runs_here(&self, pid: u32) -> bool {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'));
        !zombie && contains(&cmdline, self.conf.as_os_str().as_encoded_bytes())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for pid in self.pids() {
            if pid != self.child.id() && self.runs_here(pid) {
                let _ = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
    assert!(ok.success(), "kill -{sig} {pid}");
}

/// What a load run saw: requests answered 200, and everything else.
#[derive(Default)]
struct Tally {
    ok: usize,
    errors: Vec<String>,
}

/// Six clients until `stop`: three keep-alive (reconnecting after `Connection: close`, as a
/// client must), three with a new connection per request.
fn load(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>) -> Vec<thread::JoinHandle<()>> {
    (0..6)
        .map(|k| {
            let (stop, tally) = (stop.clone(), tally.clone());
            thread::spawn(move || {
                let keep_alive = k % 2 == 0;
                let mut c: Option<Client> = None;
                while !stop.load(SeqCst) {
                    let client = c.get_or_insert_with(|| Client::connect(addr));
                    let req: &[u8] = if keep_alive {
                        b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"
                    } else {
                        b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                    };
                    let r = client
                        .try_send(req)
                        .map_err(|e| format!("send: {e}"))
                        .and_then(|()| client.try_read_response(false).map_err(|e| format!("read: {e}")));
                    match r {
                        Ok(r) if r.status == 200 => {
                            tally.lock().unwrap().ok += 1;
                            if !keep_alive || r.has_token("connection", "close") {
                                c = None;
                            }
                        }
                        Ok(r) => {
                            tally.lock().unwrap().errors.push(format!("status {}", r.status));
                            c = None;
                        }
                        Err(e) => {
                            tally.lock().unwrap().errors.push(e);
                            c = None;
                        }
                    }
                }
            })
        })
        .collect()
}

/// The binary is replaced on disk (a new file renamed over it, as a package manager does) and
/// upgraded with SIGUSR2, five times in a row, under load: nothing is lost, and each new
/// process takes over from the last.
#[test]
fn five_binary_upgrades_under_load_lose_nothing() {
    let up = Upstream::ok("A");
    let bins = TempDir::new("bin");
    let bin = bins.path().join("apex");
    std::fs::copy(APEX, &bin).unwrap();
    let run = Run::start(&conf(up.addr), &bin);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let load = load(run.addr, stop.clone(), tally.clone());
    thread::sleep(ms(200));
    for i in 1..=5 {
        let new = bins.path().join("apex.new");
        std::fs::copy(APEX, &new).unwrap();
        std::fs::rename(&new, &bin).unwrap();
        let old = run.serving_pid();
        let before = tally.lock().unwrap().ok;
        kill(old, "USR2");
        run.wait_stderr("apex: info: upgraded: pid", i);
        let new_pid = run.serving_pid();
        assert_ne!(new_pid, old);
        assert!(run.runs_here(new_pid), "{}", run.stderr());
        // Load goes on through the new process before the next upgrade.
        let end = Instant::now() + Duration::from_secs(10);
        while tally.lock().unwrap().ok < before + 1000 && Instant::now() < end {
            thread::sleep(ms(10));
        }
    }
    thread::sleep(ms(200));
    stop.store(true, SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let t = tally.lock().unwrap();
    eprintln!("five upgrades under load: {} requests answered, {} errors", t.ok, t.errors.len());
    assert!(
        t.errors.is_empty(),
        "{} failed requests, first: {:?}\nstderr:\n{}",
        t.errors.len(),
        t.errors.first(),
        run.stderr()
    );
    assert!(t.ok > 1000, "only {} requests completed under load", t.ok);
    // The old processes drain and exit; the last one serves alone.
    let pids = run.pids();
    assert_eq!(pids.len(), 6);
    let (last, old) = pids.split_last().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || old.iter().all(|p| !run.runs_here(*p))),
        "an old process still runs"
    );
    assert!(run.runs_here(*last));
    let mut c = Client::connect(run.addr);
    assert_eq!(c.request(&get("t", "/")).status, 200);
}

/// A new config that does not load, a new binary that dies before it is ready, a config with
/// fewer workers than sockets: each upgrade fails with a line saying why, the old process keeps
/// serving, the load sees nothing. A good upgrade after them still works.
#[test]
fn a_failed_upgrade_leaves_the_old_process_serving() {
    let up = Upstream::ok("A");
    let bins = TempDir::new("bin");
    let bin = bins.path().join("apex");
    std::fs::copy(APEX, &bin).unwrap();
    let run = Run::start(&conf(up.addr), &bin);
    let pid = run.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let load = load(run.addr, stop.clone(), tally.clone());
    thread::sleep(ms(100));

    let good = std::fs::read_to_string(&run.conf).unwrap();
    std::fs::write(&run.conf, format!("{good}\nbroken = [\n")).unwrap();
    kill(pid, "USR2");
    run.wait_stderr("apex: error: upgrade failed", 1);
    assert!(run.stderr().contains(&format!("pid {pid} still serving")), "{}", run.stderr());
    std::fs::write(&run.conf, &good).unwrap();

    let new = bins.path().join("apex.new");
    std::fs::write(&new, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&new, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&new, &bin).unwrap();
    kill(pid, "USR2");
    run.wait_stderr("apex: error: upgrade failed", 2);
    assert!(run.stderr().contains("exit status: 3"), "{}", run.stderr());
    thread::sleep(ms(100));
    assert_eq!(run.pids(), vec![pid], "{}", run.stderr());

    std::fs::copy(APEX, &new).unwrap();
    std::fs::rename(&new, &bin).unwrap();
    // Fewer workers than sockets handed over would strand the connections queued on the rest.
    assert!(good.contains("workers = 2\n"));
    std::fs::write(&run.conf, good.replace("workers = 2\n", "workers = 1\n")).unwrap();
    kill(pid, "USR2");
    run.wait_stderr("apex: error: upgrade failed", 3);
    assert!(run.stderr().contains("given 2 listening sockets but workers = 1"), "{}", run.stderr());
    std::fs::write(&run.conf, &good).unwrap();

    kill(pid, "USR2");
    run.wait_stderr("apex: info: upgraded: pid", 1);
    thread::sleep(ms(100));
    stop.store(true, SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let t = tally.lock().unwrap();
    assert!(
        t.errors.is_empty(),
        "{} failed requests, first: {:?}\nstderr:\n{}",
        t.errors.len(),
        t.errors.first(),
        run.stderr()
    );
    assert!(t.ok > 100, "only {} requests completed", t.ok);
}

/// `Type=notify`: READY=1 when serving, RELOADING=1 with MONOTONIC_USEC on SIGHUP and READY=1
/// after, MAINPID= the new process after an upgrade, STOPPING=1 on the drain.
#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let up = Upstream::ok("A");
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let recv = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut run = Run::start_with(&conf(up.addr), |conf| {
        let mut c = std::process::Command::new(APEX);
        c.arg(conf).env("NOTIFY_SOCKET", &path);
        c
    });
    assert_eq!(recv(), "READY=1");
    kill(run.child.id(), "HUP");
    let reloading = recv();
    let usec = reloading.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").unwrap_or_else(|| panic!("{reloading:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0, "{reloading:?}");
    assert_eq!(recv(), "READY=1");
    // An upgrade names the new main process (which says READY=1 itself too, in either order).
    kill(run.child.id(), "USR2");
    let mut two = [recv(), recv()];
    two.sort();
    let new_pid = run.serving_pid();
    assert_ne!(new_pid, run.child.id());
    assert_eq!(two, [format!("MAINPID={new_pid}\nREADY=1"), "READY=1".to_string()]);
    let end = Instant::now() + Duration::from_secs(10);
    while run.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "the old process did not drain and exit after the upgrade");
        thread::sleep(ms(10));
    }
    kill(new_pid, "TERM");
    assert_eq!(recv(), "STOPPING=1");
    assert!(wait_until(Duration::from_secs(10), || !run.runs_here(new_pid)), "apex did not exit after SIGTERM");
}

/// Socket activation: a listening socket at fd 3 with LISTEN_FDS=1 and LISTEN_PID set (bash
/// moves it there and execs Apex, so `$$` is Apex's PID). Apex serves on it, binds nothing.
#[test]
fn socket_activation_serves_on_the_socket_it_was_given() {
    use std::os::fd::AsRawFd;
    let up = Upstream::ok("A");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let text = conf(up.addr).replace("listen = [\"127.0.0.1:0\"]", &format!("listen = [\"{addr}\"]"));
    assert!(text.contains(&addr.to_string()));
    // Inheritable for the moment of the spawn only.
    rustix::io::fcntl_setfd(&l, rustix::io::FdFlags::empty()).unwrap();
    let fd = l.as_raw_fd();
    let run = Run::start_with(&text, |conf| {
        let mut c = std::process::Command::new("bash");
        c.arg("-c")
            .arg("exec 3<&\"$1\"- && LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec \"$0\" \"$2\"")
            .arg(APEX)
            .arg(fd.to_string())
            .arg(conf);
        c
    });
    rustix::io::fcntl_setfd(&l, rustix::io::FdFlags::CLOEXEC).unwrap();
    drop(l);
    assert_eq!(run.addr, addr);
    assert!(run.stderr().contains("serving on 1 inherited"), "{}", run.stderr());
    for _ in 0..10 {
        let mut c = Client::connect(addr);
        assert_eq!(c.request(&get("t", "/")).body_str(), "A");
    }
}

/// A second Apex on an address the first one serves fails at start, saying the address is in
/// use and by which PID, instead of joining its SO_REUSEPORT group. The same for any process.
#[test]
fn a_second_apex_on_a_served_address_fails_naming_the_pid() {
    let up = Upstream::ok("A");
    let first = Apex::start_toml(&conf(up.addr));
    let dir = TempDir::new("second");
    let text = conf(up.addr).replace("127.0.0.1:0", &first.addr.to_string());
    let file = dir.write("second.toml", &text);
    let (code, _out, err) = run_apex(&[file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {}: address in use by pid {} (apex)", first.addr, first.pid())),
        "{err}"
    );
    assert_eq!(first.client().request(&get("t", "/")).status, 200);

    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = conf(up.addr).replace("127.0.0.1:0", &other.local_addr().unwrap().to_string());
    let file = dir.write("third.toml", &text);
    let (code, _out, err) = run_apex(&[file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("address in use by pid {}", std::process::id())), "{err}");
}

/// A new binary that starts but never says it is ready is stopped after the readiness timeout
/// (15 s), and the old process goes on serving.
#[test]
fn an_upgrade_never_ready_is_stopped_and_the_old_process_serves() {
    let up = Upstream::ok("A");
    let bins = TempDir::new("bin");
    let bin = bins.path().join("apex");
    std::fs::copy(APEX, &bin).unwrap();
    let run = Run::start(&conf(up.addr), &bin);
    let pid = run.child.id();
    let new = bins.path().join("apex.new");
    // Holds its stdin (the readiness socket) open and says nothing.
    std::fs::write(&new, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&new, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&new, &bin).unwrap();
    kill(pid, "USR2");
    run.wait_stderr("apex: error: upgrade failed", 1);
    let err = run.stderr();
    assert!(
        err.contains("not ready within 15000 ms; stopped it") && err.contains(&format!("pid {pid} still serving")),
        "{err}"
    );
    assert_eq!(run.pids(), vec![pid]);
    assert_eq!(Client::connect(run.addr).request(&get("t", "/")).body_str(), "A");
}
