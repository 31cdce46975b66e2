//! Out of file descriptors, an active request comes before an idle connection.
//!
//! A binary of its own, because it lowers this process's RLIMIT_NOFILE. A worker runs on this
//! thread; idle keep-alive clients fill every fd; then an established client sends a request
//! whose upstream connection needs a new fd. The worker must close an idle client (which sees
//! EOF) and serve the request with 200, not 502.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apex::config::Config;
use apex::reactor::Worker;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

fn upstream(l: TcpListener) {
    for s in l.incoming() {
        let Ok(mut s) = s else {
            // EMFILE while the test holds every fd: try again shortly.
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                while let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    got.drain(..i + 4);
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                        return;
                    }
                }
            }
        });
    }
}

fn read_response(s: &mut TcpStream, worker: &mut Worker, events: &mut apex::reactor::Events) -> Vec<u8> {
    s.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        worker.turn_within(events, Duration::from_millis(5)).unwrap();
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"ok") || got.starts_with(b"HTTP/1.1 5") {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    got
}

#[test]
fn out_of_fds_an_idle_client_is_closed_for_an_active_request() {
    let lim = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: Some(96), maximum: lim.maximum }).unwrap();

    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = up.local_addr().unwrap();
    std::thread::spawn(move || upstream(up));
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n[timeouts]\nupstream_idle = \"100ms\"\n[log]\naccess = \"off\"\n\
         [[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"{up_addr}\"]\n"
    );
    let cfg = Config::parse(&text, "test").unwrap();
    let (addrs, mut ls) = apex::reactor::bind_all(&cfg).unwrap();
    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(cfg));
    let (_logger, mut logs) = apex::log::Logger::start(apex::log::Sink::Off, 1).unwrap();
    let mut worker = Worker::new(shared, ls.remove(0), logs.remove(0)).unwrap();
    let mut events = apex::reactor::Events::new();

    // An established client, served once; its pooled upstream connection then idles out.
    let mut active = TcpStream::connect(addrs[0]).unwrap();
    active.write_all(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert!(read_response(&mut active, &mut worker, &mut events).ends_with(b"ok"));
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        worker.turn_within(&mut events, Duration::from_millis(10)).unwrap();
    }

    // Idle clients until this process (clients and Apex's accepted sockets together) is out of
    // fds; keep turning the worker so it accepts as many as it can.
    let mut idle = Vec::new();
    loop {
        worker.turn_within(&mut events, Duration::from_millis(1)).unwrap();
        match TcpStream::connect(addrs[0]) {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
        assert!(idle.len() < 200, "the fd limit did not bind");
    }
    for _ in 0..50 {
        worker.turn_within(&mut events, Duration::from_millis(1)).unwrap();
    }

    // The established client's next request needs a new upstream connection and no fd is free.
    // Apex must close an idle client; when that client sees EOF this side closes it too, which
    // gives the upstream (in this same process) an fd to accept with.
    active.write_all(b"GET /2 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    active.set_nonblocking(true).unwrap();
    for s in &idle {
        s.set_nonblocking(true).unwrap();
    }
    let mut closed = 0;
    let mut resp = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && !(resp.starts_with(b"HTTP/1.1 ") && (resp.ends_with(b"ok") || resp.ends_with(b"\n")))
    {
        worker.turn_within(&mut events, Duration::from_millis(2)).unwrap();
        idle.retain_mut(|s| {
            let mut b = [0u8; 16];
            match s.read(&mut b) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => true,
                _ => {
                    closed += 1;
                    false
                }
            }
        });
        let mut buf = [0u8; 4096];
        match active.read(&mut buf) {
            Ok(n) if n > 0 => resp.extend_from_slice(&buf[..n]),
            _ => {}
        }
    }
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok"), "the active request got: {resp:?}");
    assert!(closed >= 1, "no idle client was closed to make room");
}
