//! `rate`: open loop at a fixed rate (see main.rs).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::http::{RBuf, Resp, read_responses, request_bytes};
use crate::net::{Sock, Timer, Tls};
use crate::stats::{cpu_secs_self, now_ns, percentile_us};
use crate::{Opts, RBUF_BYTES, TIMER};

pub(crate) struct Conn {
    pub(crate) sock: Sock,
    pub(crate) connected: bool,
    pub(crate) rb: RBuf,
    pub(crate) resp: Resp,
    pub(crate) queue: VecDeque<u64>, // due times (ns) of requests assigned and not yet answered
    pub(crate) inflight: bool,       // queue.front() has been (partly) sent
    pub(crate) wpos: usize,
    pub(crate) want_write: bool,     // registered for WRITABLE too (connecting, or a write blocked)
}

/// Sends the head request of the queue if it is due. Connections are registered for
/// READABLE only (a loopback ACK would otherwise raise a writable edge per request);
/// WRITABLE is added only while a write is blocked.
pub(crate) fn try_send(c: &mut Conn, req: &[u8], now: u64, reg: &mio::Registry, tok: Token) -> io::Result<()> {
    if !c.connected {
        return Ok(());
    }
    if c.sock.wants_write() {
        // TLS records that could not leave when they were made (plain TCP: never)
        c.sock.flush_tls()?;
        if c.sock.wants_write() {
            if !c.want_write {
                c.want_write = true;
                reg.reregister(&mut c.sock, tok, Interest::READABLE | Interest::WRITABLE)?;
            }
            return Ok(());
        }
    }
    if !c.inflight {
        match c.queue.front() {
            Some(&due) if due <= now => {
                c.inflight = true;
                c.wpos = 0;
            }
            _ => return Ok(()),
        }
    }
    while c.wpos < req.len() {
        match c.sock.write(&req[c.wpos..]) {
            Ok(n) => c.wpos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !c.want_write {
                    c.want_write = true;
                    reg.reregister(&mut c.sock, tok, Interest::READABLE | Interest::WRITABLE)?;
                }
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if c.want_write {
        c.want_write = false;
        reg.reregister(&mut c.sock, tok, Interest::READABLE)?;
    }
    Ok(())
}

pub(crate) fn rate(o: &Opts) -> io::Result<()> {
    let addr = o.addr()?;
    let rate = o.f64("rate", 1000.0);
    let conns = o.f64("conns", 100.0) as usize;
    let dur = o.f64("duration", 10.0);
    let warm = o.f64("warmup", 1.0);
    let drain = o.f64("drain", 3.0);
    let req = request_bytes(o);
    let sni = o.str("tls", "");
    let tls = if sni.is_empty() { None } else { Some(Tls::new(o, &sni, false)?) };

    let mut poll = Poll::new()?;
    let timer = Timer::new()?;
    poll.registry().register(&mut SourceFd(&timer.0.as_raw_fd()), TIMER, Interest::READABLE)?;
    let mut cs: Vec<Conn> = Vec::with_capacity(conns);
    for i in 0..conns {
        let mut sock = Sock::connect(addr, tls.as_ref())?;
        poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        cs.push(Conn {
            sock,
            connected: false,
            rb: RBuf::new(RBUF_BYTES),
            resp: Resp::new(),
            queue: VecDeque::new(),
            inflight: false,
            wpos: 0,
            want_write: true,
        });
    }
    let mut events = Events::with_capacity(1024);
    // Wait for every connection to be established, TLS handshakes included (at most 5 s).
    let deadline = now_ns() + 5_000_000_000;
    let mut up = 0;
    let mut ready = vec![false; conns];
    while up < conns && now_ns() < deadline {
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            if i >= conns || ready[i] {
                continue;
            }
            let c = &mut cs[i];
            if !c.connected && (ev.is_writable() || ev.is_error()) {
                if c.sock.take_error()?.is_none() && c.sock.peer_addr().is_ok() {
                    c.connected = true;
                    let _ = c.sock.set_nodelay(true);
                    c.want_write = false;
                    poll.registry().reregister(&mut c.sock, Token(i), Interest::READABLE)?;
                    c.sock.flush_tls()?; // the ClientHello
                } else {
                    return Err(io::Error::other("connect failed"));
                }
            }
            if c.connected && c.sock.handshaking() {
                let mut b = [0u8; 256];
                match c.sock.read(&mut b) {
                    Ok(0) => return Err(io::Error::other("TLS: the server closed during the handshake")),
                    Ok(_) => return Err(io::Error::other("TLS: data before any request")),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(io::Error::other(format!("TLS handshake: {e}"))),
                }
            }
            if c.connected && !c.sock.handshaking() {
                ready[i] = true;
                up += 1;
            }
        }
    }
    if up < conns {
        return Err(io::Error::other(format!("only {up}/{conns} connections established")));
    }
    let tls_info = cs.first().map(|c| c.sock.describe()).unwrap_or_default();

    let interval_ns = (1e9 / rate).round().max(1.0) as u64;
    let interval = interval_ns as f64;
    let mut periodic = false;
    let t0 = now_ns() + 10_000_000;
    let t_warm = t0 + (warm * 1e9) as u64;
    let t_end = t_warm + (dur * 1e9) as u64;
    let t_drain = t_end + (drain * 1e9) as u64;
    let cpu0 = cpu_secs_self();
    let mut next_n: u64 = 0;
    let due_of = |n: u64| t0 + (n as f64 * interval) as u64;
    let mut armed = 0u64;
    let mut last_done = 0u64;
    let mut lat: Vec<u64> = Vec::with_capacity((rate * (dur + 1.0)) as usize + 16);
    let (mut sent_measured, mut ok, mut bad_status, mut errors, mut reconnects, mut done_warm) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);

    loop {
        let now = now_ns();
        // Schedule every request due by now.
        while due_of(next_n) <= now && due_of(next_n) < t_end {
            let due = due_of(next_n);
            if due >= t_warm {
                sent_measured += 1;
            }
            let i = (next_n % conns as u64) as usize;
            let c = &mut cs[i];
            c.queue.push_back(due);
            if !c.inflight {
                if let Err(_e) = try_send(c, &req, now, poll.registry(), Token(i)) {
                    errors += 1;
                    reconnect(&mut poll, &mut cs[i], i, addr, tls.as_ref(), &mut reconnects)?;
                }
            }
            next_n += 1;
        }
        let pending: usize = cs.iter().map(|c| c.queue.len()).sum();
        if now >= t_end && pending == 0 {
            break;
        }
        if now >= t_drain {
            break;
        }
        // Schedule ticks come from one periodic timer at the request interval, phase-aligned
        // with t0 (integral ns intervals keep the phase); after the last one, a one-shot at t_drain.
        let next_due = due_of(next_n);
        if next_due < t_end {
            if !periodic {
                timer.arm(next_due, interval_ns);
                periodic = true;
            }
        } else {
            // Wake at t_end (all answered early?), then at t_drain at the latest.
            let wake = if now < t_end { t_end } else { t_drain };
            if periodic || armed != wake {
                timer.arm(wake, 0);
                periodic = false;
                armed = wake;
            }
        }
        poll.poll(&mut events, None)?;
        let now = now_ns();
        for ev in events.iter() {
            let t = ev.token();
            if t == TIMER {
                timer.clear();
                continue;
            }
            let i = t.0;
            if i >= conns {
                continue;
            }
            let c = &mut cs[i];
            if !c.connected {
                if c.sock.take_error()?.is_none() && c.sock.peer_addr().is_ok() {
                    c.connected = true;
                    let _ = c.sock.set_nodelay(true);
                    c.want_write = false;
                    poll.registry().reregister(&mut c.sock, t, Interest::READABLE)?;
                } else {
                    errors += 1;
                    reconnect(&mut poll, c, i, addr, tls.as_ref(), &mut reconnects)?;
                    continue;
                }
            }
            let mut failed = false;
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                let (mut got_ok, mut got_bad, mut got_warm) = (0u64, 0u64, 0u64);
                let queue = &mut c.queue;
                let inflight = &mut c.inflight;
                let r = read_responses(&mut c.sock, &mut c.rb, &mut c.resp, |status| {
                    let Some(due) = queue.pop_front() else { return false };
                    *inflight = false;
                    if due >= t_warm {
                        last_done = now;
                        lat.push(now.saturating_sub(due));
                        if (200..400).contains(&status) { got_ok += 1 } else { got_bad += 1 }
                    } else {
                        got_warm += 1;
                    }
                    // no pipelining: a connection carries one request at a time
                    false
                });
                ok += got_ok;
                bad_status += got_bad;
                done_warm += got_warm;
                match r {
                    Ok(false) => {}
                    Ok(true) | Err(_) => failed = true,
                }
                if c.resp.close && !c.inflight {
                    failed = true;
                }
            }
            if !failed {
                if let Err(_e) = try_send(c, &req, now, poll.registry(), t) {
                    failed = true;
                }
            }
            if failed {
                if c.inflight {
                    errors += 1; // a request was sent and not answered: it is sent again
                }
                reconnect(&mut poll, c, i, addr, tls.as_ref(), &mut reconnects)?;
            }
        }
    }
    let end = now_ns();
    let incomplete: u64 = cs.iter().map(|c| c.queue.iter().filter(|&&d| d >= t_warm).count() as u64).sum();
    for c in &cs {
        for &d in &c.queue {
            if d >= t_warm {
                lat.push(end - d); // never answered: charged at least until we stopped waiting
            }
        }
    }
    let cpu = cpu_secs_self() - cpu0;
    lat.sort_unstable();
    let pct = |p: f64| percentile_us(&lat, p);
    // Requests slower than `ms` (bench/failover: how many a failure delayed, and by how much).
    let over = |ms: u64| lat.len() - lat.partition_point(|&ns| ns <= ms * 1_000_000);
    let mean = if lat.is_empty() { 0.0 } else { lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0 };
    // Throughput of the measured requests: answered ones over the time from the window's
    // start to the window's end or the last answer, whichever is later (a server that falls
    // behind finishes during the drain and shows a rate below the target).
    let span = (last_done.max(t_end) - t_warm) as f64 / 1e9;
    let achieved = ok as f64 / span;
    println!(
        "{{\"mode\":\"rate\",\"target_rps\":{rate},\"conns\":{conns},\"duration_s\":{dur},\"warmup_s\":{warm},\
\"scheduled\":{sent_measured},\"ok\":{ok},\"bad_status\":{bad_status},\"errors\":{errors},\"reconnects\":{reconnects},\
\"incomplete\":{incomplete},\"warmup_done\":{done_warm},\"achieved_rps\":{achieved:.1},\
\"lat_us\":{{\"mean\":{mean:.1},\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}},\
\"over_ms\":{{\"1\":{},\"10\":{},\"100\":{},\"1000\":{}}},\
\"tls\":\"{tls_info}\",\"loadgen_cpu_s\":{cpu:.3}}}",
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(99.9),
        pct(100.0),
        over(1),
        over(10),
        over(100),
        over(1000)
    );
    Ok(())
}

pub(crate) fn reconnect(poll: &mut Poll, c: &mut Conn, i: usize, addr: SocketAddr, tls: Option<&Tls>, reconnects: &mut u64) -> io::Result<()> {
    let _ = poll.registry().deregister(&mut c.sock);
    *reconnects += 1;
    let mut sock = Sock::connect(addr, tls)?;
    poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)?;
    c.sock = sock;
    c.connected = false;
    c.rb = RBuf::new(RBUF_BYTES);
    c.resp = Resp::new();
    c.inflight = false; // the unanswered request stays at the queue's front and is sent again
    c.wpos = 0;
    c.want_write = true;
    Ok(())
}
