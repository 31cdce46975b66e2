//! `handshakes`: new TLS connections, each a full handshake, one GET and the server's close.

use std::io::{self, Read, Write};
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};

use crate::Opts;
use crate::http::{RBuf, Resp, read_responses};
use crate::net::{Sock, Tls};
use crate::stats::{cpu_secs_self, now_ns, percentile_us};

pub(crate) struct HConn {
    pub(crate) sock: Sock,
    pub(crate) connected: bool,
    pub(crate) sent: bool,
    pub(crate) started: u64,
    pub(crate) answered_at: u64, // 0 until the response is complete
    pub(crate) rb: RBuf,
    pub(crate) resp: Resp,
}

pub(crate) fn handshakes(o: &Opts) -> io::Result<()> {
    let addr = o.addr()?;
    let conns = (o.f64("conns", 50.0) as usize).max(1);
    let dur = o.f64("duration", 10.0);
    let drain = o.f64("drain", 2.0);
    let resume = o.str("resume", "0") == "1";
    let sni = o.str("sni", "bench.test");
    let tls = Tls::new(o, &sni, resume)?;
    let path = o.str("path", "/");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\nUser-Agent: apex-loadgen\r\nConnection: close\r\n\r\n").into_bytes();
    const CLOSE_WAIT_NS: u64 = 1_000_000_000;

    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut slots: Vec<Option<HConn>> = (0..conns).map(|_| None).collect();
    let cpu0 = cpu_secs_self();
    let t0 = now_ns();
    let t_end = t0 + (dur * 1e9) as u64;
    let t_drain = t_end + (drain * 1e9) as u64;
    let mut lat: Vec<u64> = Vec::with_capacity(1 << 16);
    let (mut ok, mut bad_status, mut errors, mut connect_errors, mut not_closed, mut resumed) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut last_done = t0;
    let mut last_sweep = t0;
    let mut info = String::new();
    let mut first_error = String::new();
    let mut buf = [0u8; 256];
    loop {
        let now = now_ns();
        // Fill the empty slots while the window is open.
        if now < t_end {
            for (i, slot) in slots.iter_mut().enumerate() {
                if slot.is_some() {
                    continue;
                }
                match Sock::connect(addr, Some(&tls)) {
                    Ok(mut sock) => {
                        poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)?;
                        *slot = Some(HConn {
                            sock,
                            connected: false,
                            sent: false,
                            started: now,
                            answered_at: 0,
                            rb: RBuf::new(4096),
                            resp: Resp::new(),
                        });
                    }
                    Err(e) => {
                        connect_errors += 1;
                        if first_error.is_empty() {
                            first_error = format!("connect: {e}");
                        }
                    }
                }
            }
        }
        let live = slots.iter().filter(|s| s.is_some()).count();
        if (now >= t_end && live == 0) || now >= t_drain {
            break;
        }
        let wake = if now < t_end { t_end } else { t_drain };
        let wait = Duration::from_nanos((wake - now).min(100_000_000));
        // A failed connect() leaves its slot empty: retry soon rather than at the next event.
        let wait = if live < conns { wait.min(Duration::from_millis(1)) } else { wait };
        poll.poll(&mut events, Some(wait))?;
        let now = now_ns();
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(c) = slots.get_mut(i).and_then(|s| s.as_mut()) else { continue };
            let mut fail: Option<String> = None;
            let mut closed = false;
            if !c.connected {
                if c.sock.take_error()?.is_none() && c.sock.peer_addr().is_ok() {
                    c.connected = true;
                    let _ = c.sock.set_nodelay(true);
                } else if ev.is_writable() || ev.is_error() || ev.is_read_closed() {
                    fail = Some("connect failed".into());
                } else {
                    continue;
                }
            }
            if fail.is_none() && !c.sent {
                // Buffered by rustls until the handshake is done; sends the ClientHello now.
                match c.sock.write(&req) {
                    Ok(n) if n == req.len() => c.sent = true,
                    Ok(_) => fail = Some("request not taken whole".into()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => fail = Some(format!("write: {e}")),
                }
            } else if fail.is_none() && c.sock.wants_write() {
                if let Err(e) = c.sock.flush_tls() {
                    fail = Some(format!("write: {e}"));
                }
            }
            if fail.is_none() {
                let mut status = 0u16;
                let r = if c.answered_at == 0 {
                    read_responses(&mut c.sock, &mut c.rb, &mut c.resp, |st| {
                        status = st;
                        false
                    })
                } else {
                    // answered: read (and drop) until the server closes
                    loop {
                        match c.sock.read(&mut buf) {
                            Ok(0) => break Ok(true),
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                            Err(e) => break Err(e),
                        }
                    }
                };
                if status != 0 && c.answered_at == 0 {
                    c.answered_at = now;
                    last_done = now;
                    lat.push(now - c.started);
                    if (200..400).contains(&status) { ok += 1 } else { bad_status += 1 }
                    if c.sock.resumed() {
                        resumed += 1;
                    }
                    if info.is_empty() {
                        info = c.sock.describe();
                    }
                }
                match r {
                    Ok(eof) => closed = eof,
                    Err(e) => fail = Some(format!("read: {e}")),
                }
            }
            if closed || fail.is_some() {
                if c.answered_at == 0 {
                    errors += 1;
                    if first_error.is_empty() {
                        first_error = fail.unwrap_or_else(|| "closed before the response".into());
                    }
                }
                if let Some(mut c) = slots[i].take() {
                    let _ = poll.registry().deregister(&mut c.sock);
                }
            }
        }
        // Answered connections the server keeps open: closed by us after 1 s.
        if now - last_sweep > 100_000_000 {
            last_sweep = now;
            for slot in slots.iter_mut() {
                if slot.as_ref().is_some_and(|c| c.answered_at != 0 && now - c.answered_at > CLOSE_WAIT_NS) {
                    not_closed += 1;
                    if let Some(mut c) = slot.take() {
                        let _ = poll.registry().deregister(&mut c.sock);
                    }
                }
            }
        }
    }
    let unfinished = slots.iter().filter(|s| s.as_ref().is_some_and(|c| c.answered_at == 0)).count();
    let cpu = cpu_secs_self() - cpu0;
    let secs = (last_done.max(t_end) - t0) as f64 / 1e9;
    lat.sort_unstable();
    let pct = |p: f64| percentile_us(&lat, p);
    let first_error = first_error.replace('"', "'");
    println!(
        "{{\"mode\":\"handshakes\",\"conns\":{conns},\"duration_s\":{dur},\"resume\":{resume},\"ok\":{ok},\"bad_status\":{bad_status},\
\"errors\":{errors},\"connect_errors\":{connect_errors},\"unfinished\":{unfinished},\"not_closed_by_server\":{not_closed},\
\"resumed\":{resumed},\"secs\":{secs:.3},\"rps\":{:.1},\"non2xx\":{bad_status},\"socket_errors\":{},\
\"lat_us\":{{\"p50\":{:.1},\"p99\":{:.1},\"max\":{:.1}}},\"tls\":\"{info}\",\"first_error\":\"{first_error}\",\"loadgen_cpu_s\":{cpu:.3}}}",
        ok as f64 / secs,
        errors + connect_errors + unfinished as u64,
        pct(50.0),
        pct(99.0),
        pct(100.0)
    );
    Ok(())
}
