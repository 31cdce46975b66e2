//! loadgen: the load generator of Apex's benchmark harness (bench/run). Linux only.
//!
//! Modes (each prints one JSON object on stdout, `idle` prints two):
//!   rate  --addr A --rate R --conns C --duration S [--warmup S] [--path P] [--drain S] [--tls SNI]
//!         Open loop: request n is due at t0 + n/R and goes to connection n % C. A connection
//!         sends its next request when it is due and the previous response is complete (no
//!         pipelining). Latency counts from the due time, not the send time, so a stalled
//!         server is charged for every request it delayed (no coordinated omission).
//!         With --tls, every connection speaks TLS (rustls, ring; server name SNI); the
//!         handshakes are done before the schedule starts.
//!   handshakes --addr A --conns C --duration S [--sni NAME] [--path P] [--resume 1] [--verify 1]
//!         New TLS connections, C at a time: each connects, does a full handshake, sends one
//!         GET with `Connection: close`, reads the response and waits for the server to close
//!         (at most 1 s), then its slot opens the next one, until S seconds have passed.
//!         Session resumption is off (no tickets or session ids kept) unless --resume 1.
//!         The server's certificate is not checked, nor (unless --verify 1) its handshake
//!         signature: the client's share of the work stays small. Reports completed
//!         exchanges per second as "rps" (one handshake each).
//!   idle  --addr A --conns N [--inflight K] [--hold S] [--path P]
//!         Opens N keep-alive connections (at most K connecting or waiting at once), sends
//!         one request on each, keeps them all open and idle, prints {"ready":..}, holds for
//!         S seconds (or until stdin closes), then prints how many the server closed.
//!   get   --addr A --path P                 one download; bytes, seconds, MB/s
//!   put   --addr A --path P --bytes N       one upload of N zero bytes (Content-Length)
//!
//! Cost: one thread, edge-triggered epoll via mio, a timerfd for the schedule (timer slack
//! lowered to 5 us), one latency sample (u64 ns) per request, sorted once at the end.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use std::sync::Arc;

use mio::event::Source;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

const TIMER: Token = Token(usize::MAX - 1);
const STDIN: Token = Token(usize::MAX - 2);
const RBUF_BYTES: usize = 64 * 1024;
const HEAD_BYTES_MAX: usize = 32 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(mode) = args.get(1).cloned() else {
        eprintln!("usage: loadgen rate|handshakes|idle|get|put --addr HOST:PORT ...");
        std::process::exit(2);
    };
    let opts = Opts::parse(&args[2..]);
    let res = match mode.as_str() {
        "rate" => rate(&opts),
        "handshakes" => handshakes(&opts),
        "idle" => idle(&opts),
        "get" => get(&opts),
        "put" => put(&opts),
        _ => Err(io::Error::other(format!("unknown mode {mode}"))),
    };
    if let Err(e) = res {
        eprintln!("loadgen {mode}: {e}");
        std::process::exit(1);
    }
}

struct Opts(Vec<(String, String)>);

impl Opts {
    fn parse(a: &[String]) -> Opts {
        let mut v = Vec::new();
        let mut i = 0;
        while i < a.len() {
            let k = a[i].trim_start_matches('-').to_string();
            let val = a.get(i + 1).cloned().unwrap_or_default();
            v.push((k, val));
            i += 2;
        }
        Opts(v)
    }
    fn str(&self, k: &str, d: &str) -> String {
        self.0.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone()).unwrap_or_else(|| d.to_string())
    }
    fn f64(&self, k: &str, d: f64) -> f64 {
        self.str(k, "").parse().unwrap_or(d)
    }
    fn addr(&self) -> io::Result<SocketAddr> {
        self.str("addr", "127.0.0.1:8080").parse().map_err(|e| io::Error::other(format!("--addr: {e}")))
    }
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cpu_secs_self() -> f64 {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

// ---------------------------------------------------------------- response parser

#[derive(Clone, Copy, PartialEq, Debug)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Body {
    Head,
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

/// Incremental HTTP/1.1 response reader. Head bytes are parsed with httparse once the
/// blank line is in the buffer; body bytes are only counted.
struct Resp {
    body: Body,
    status: u16,
    close: bool,
    body_bytes: u64,
}

enum Step {
    Need,          // need more bytes
    Done(usize),   // a whole response ended; bytes consumed
    More(usize),   // consumed this many bytes, call again
}

impl Resp {
    fn new() -> Resp {
        Resp { body: Body::Head, status: 0, close: false, body_bytes: 0 }
    }

    fn step(&mut self, b: &[u8]) -> io::Result<Step> {
        match self.body {
            Body::Head => {
                let Some(end) = find(b, b"\r\n\r\n") else {
                    if b.len() > HEAD_BYTES_MAX {
                        return Err(io::Error::other("response head too large"));
                    }
                    return Ok(Step::Need);
                };
                let mut hs = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Response::new(&mut hs);
                match r.parse(&b[..end + 4]) {
                    Ok(httparse::Status::Complete(_)) => {}
                    _ => return Err(io::Error::other("bad response head")),
                }
                let status = r.code.unwrap_or(0);
                self.status = status;
                self.body_bytes = 0;
                let mut len = None;
                let mut chunked = false;
                for h in r.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let s = std::str::from_utf8(h.value).unwrap_or("").trim();
                        len = Some(s.parse::<u64>().map_err(|_| io::Error::other("bad content-length"))?);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = contains_ci(h.value, b"chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") && contains_ci(h.value, b"close") {
                        self.close = true;
                    }
                }
                if (100..200).contains(&status) {
                    return Ok(Step::More(end + 4)); // interim response: read the next head
                }
                self.body = if status == 204 || status == 304 {
                    Body::Length(0)
                } else if chunked {
                    Body::Chunked(Chunk::Size)
                } else if let Some(n) = len {
                    Body::Length(n)
                } else {
                    Body::UntilClose
                };
                if self.body == Body::Length(0) {
                    self.body = Body::Head;
                    return Ok(Step::Done(end + 4));
                }
                Ok(Step::More(end + 4))
            }
            Body::Length(n) => {
                let take = (b.len() as u64).min(n);
                self.body_bytes += take;
                if take == n {
                    self.body = Body::Head;
                    Ok(Step::Done(take as usize))
                } else {
                    self.body = Body::Length(n - take);
                    Ok(if take == 0 { Step::Need } else { Step::More(take as usize) })
                }
            }
            Body::UntilClose => {
                self.body_bytes += b.len() as u64;
                Ok(if b.is_empty() { Step::Need } else { Step::More(b.len()) })
            }
            Body::Chunked(c) => match c {
                Chunk::Size => {
                    let Some(e) = find(b, b"\r\n") else { return Ok(Step::Need) };
                    let line = &b[..e];
                    let hex_end = line.iter().position(|&x| !x.is_ascii_hexdigit()).unwrap_or(line.len());
                    let s = std::str::from_utf8(&line[..hex_end]).unwrap_or("");
                    let n = u64::from_str_radix(s, 16).map_err(|_| io::Error::other("bad chunk size"))?;
                    self.body = Body::Chunked(if n == 0 { Chunk::Trailer } else { Chunk::Data(n) });
                    Ok(Step::More(e + 2))
                }
                Chunk::Data(n) => {
                    let take = (b.len() as u64).min(n);
                    self.body_bytes += take;
                    self.body = Body::Chunked(if take == n { Chunk::DataEnd } else { Chunk::Data(n - take) });
                    Ok(if take == 0 { Step::Need } else { Step::More(take as usize) })
                }
                Chunk::DataEnd => {
                    if b.len() < 2 {
                        return Ok(Step::Need);
                    }
                    self.body = Body::Chunked(Chunk::Size);
                    Ok(Step::More(2))
                }
                Chunk::Trailer => {
                    let Some(e) = find(b, b"\r\n") else { return Ok(Step::Need) };
                    if e == 0 {
                        self.body = Body::Head;
                        return Ok(Step::Done(2));
                    }
                    Ok(Step::More(e + 2))
                }
            },
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn contains_ci(h: &[u8], n: &[u8]) -> bool {
    h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// Read buffer with a consumed prefix.
struct RBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RBuf {
    fn new(n: usize) -> RBuf {
        RBuf { buf: vec![0; n], start: 0, end: 0 }
    }
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
    fn spare(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }
}

/// A readable connection whose short read may mean "the socket's queue is empty now".
trait EdgeRead: Read {
    /// A read that returned less than asked for drained the socket (plain TCP: yes; TLS:
    /// no, a read returns one record's plaintext at a time).
    fn short_read_drains(&self) -> bool;
}

impl EdgeRead for TcpStream {
    fn short_read_drains(&self) -> bool {
        true
    }
}

/// Reads until WouldBlock (edge-triggered); returns Ok(true) at EOF.
/// Calls `on_done(status)` for each completed response; `false` stops parsing this read.
fn read_responses(
    sock: &mut impl EdgeRead,
    rb: &mut RBuf,
    resp: &mut Resp,
    mut on_done: impl FnMut(u16) -> bool,
) -> io::Result<bool> {
    loop {
        let sp = rb.spare();
        if sp.is_empty() {
            return Err(io::Error::other("read buffer full"));
        }
        match sock.read(sp) {
            Ok(0) => {
                if resp.body == Body::UntilClose {
                    resp.body = Body::Head;
                    on_done(resp.status);
                }
                return Ok(true);
            }
            Ok(n) => {
                let short = n < sp.len() && sock.short_read_drains();
                rb.end += n;
                loop {
                    match resp.step(rb.data())? {
                        Step::Need => break,
                        Step::More(k) => rb.consume(k),
                        Step::Done(k) => {
                            rb.consume(k);
                            if !on_done(resp.status) {
                                break;
                            }
                        }
                    }
                }
                // A short read means the socket queue was empty at that moment; new data
                // raises a new edge. Skipping the read that would return EAGAIN saves a syscall.
                if short {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------- timerfd

struct Timer(OwnedFd);

impl Timer {
    fn new() -> io::Result<Timer> {
        // SAFETY: plain syscalls with valid arguments.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 5_000u64);
            let fd = libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Timer(OwnedFd::from_raw_fd(fd)))
        }
    }
    /// Arm for an absolute CLOCK_MONOTONIC time in ns, then every `every_ns` (0: once).
    /// A periodic timer aligned with the schedule costs no syscall per request; re-arming
    /// an hrtimer per request was most of the generator's CPU time in a VM.
    fn arm(&self, at_ns: u64, every_ns: u64) {
        let at = at_ns.max(1);
        let its = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: (every_ns / 1_000_000_000) as i64, tv_nsec: (every_ns % 1_000_000_000) as i64 },
            it_value: libc::timespec { tv_sec: (at / 1_000_000_000) as i64, tv_nsec: (at % 1_000_000_000) as i64 },
        };
        // SAFETY: valid fd and itimerspec.
        unsafe { libc::timerfd_settime(self.0.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &its, std::ptr::null_mut()) };
    }
    fn clear(&self) {
        let mut v = [0u8; 8];
        // SAFETY: reading 8 bytes into a local buffer.
        unsafe { libc::read(self.0.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    }
}

// ---------------------------------------------------------------- rate mode

struct Conn {
    sock: Sock,
    connected: bool,
    rb: RBuf,
    resp: Resp,
    queue: VecDeque<u64>, // due times (ns) of requests assigned and not yet answered
    inflight: bool,       // queue.front() has been (partly) sent
    wpos: usize,
    want_write: bool,     // registered for WRITABLE too (connecting, or a write blocked)
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    Ok(s)
}

fn request_bytes(o: &Opts) -> Vec<u8> {
    let path = o.str("path", "/");
    format!("GET {path} HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: apex-loadgen\r\n\r\n").into_bytes()
}

/// Sends the head request of the queue if it is due. Connections are registered for
/// READABLE only (a loopback ACK would otherwise raise a writable edge per request);
/// WRITABLE is added only while a write is blocked.
fn try_send(c: &mut Conn, req: &[u8], now: u64, reg: &mio::Registry, tok: Token) -> io::Result<()> {
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

fn rate(o: &Opts) -> io::Result<()> {
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
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let idx = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        lat[idx.clamp(1, lat.len()) - 1] as f64 / 1000.0
    };
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
\"tls\":\"{tls_info}\",\"loadgen_cpu_s\":{cpu:.3}}}",
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(99.9),
        pct(100.0)
    );
    Ok(())
}

fn reconnect(poll: &mut Poll, c: &mut Conn, i: usize, addr: SocketAddr, tls: Option<&Tls>, reconnects: &mut u64) -> io::Result<()> {
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

// ---------------------------------------------------------------- idle mode

#[derive(PartialEq)]
enum IdleState {
    Connecting,
    Waiting,
    Idle,
    Closed,
}

struct IConn {
    sock: TcpStream,
    state: IdleState,
    rb: RBuf,
    resp: Resp,
    wpos: usize,
}

fn idle(o: &Opts) -> io::Result<()> {
    let addr = o.addr()?;
    let n = o.f64("conns", 9000.0) as usize;
    let inflight_max = o.f64("inflight", 100.0) as usize;
    let hold = o.f64("hold", 5.0);
    let req = request_bytes(o);
    let mut poll = Poll::new()?;
    poll.registry().register(&mut SourceFd(&0), STDIN, Interest::READABLE).ok();
    let mut cs: Vec<IConn> = Vec::with_capacity(n);
    let mut events = Events::with_capacity(1024);
    let (mut active, mut idle_n, mut errors, mut closed) = (0usize, 0usize, 0usize, 0usize);
    let t_start = now_ns();
    let deadline = t_start + 60_000_000_000;
    while idle_n + errors < n {
        while active < inflight_max && cs.len() < n {
            let i = cs.len();
            match connect(addr) {
                Ok(mut sock) => {
                    poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)?;
                    // small buffers: we hold thousands of these
                    cs.push(IConn { sock, state: IdleState::Connecting, rb: RBuf::new(4096), resp: Resp::new(), wpos: 0 });
                    active += 1;
                }
                Err(e) => return Err(io::Error::other(format!("connect #{i}: {e}"))),
            }
        }
        if now_ns() > deadline {
            return Err(io::Error::other(format!("idle: only {idle_n}/{n} ready after 60 s ({errors} errors)")));
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            if i >= cs.len() {
                continue;
            }
            let c = &mut cs[i];
            let mut fail = false;
            if c.state == IdleState::Connecting && (ev.is_writable() || ev.is_error()) {
                if c.sock.take_error()?.is_none() && c.sock.peer_addr().is_ok() {
                    let _ = c.sock.set_nodelay(true);
                    c.state = IdleState::Waiting;
                } else {
                    fail = true;
                }
            }
            if c.state == IdleState::Waiting && c.wpos < req.len() {
                loop {
                    match c.sock.write(&req[c.wpos..]) {
                        Ok(k) => {
                            c.wpos += k;
                            if c.wpos == req.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            fail = true;
                            break;
                        }
                    }
                }
            }
            if !fail && (c.state == IdleState::Waiting || c.state == IdleState::Idle) && (ev.is_readable() || ev.is_read_closed()) {
                let mut done = false;
                match read_responses(&mut c.sock, &mut c.rb, &mut c.resp, |_| {
                    done = true;
                    false
                }) {
                    Ok(eof) => {
                        if done && c.state == IdleState::Waiting {
                            c.state = IdleState::Idle;
                            active -= 1;
                            idle_n += 1;
                        }
                        if eof {
                            fail = true;
                        }
                    }
                    Err(_) => fail = true,
                }
            }
            if fail {
                match c.state {
                    IdleState::Idle => {
                        closed += 1;
                        idle_n -= 1;
                        errors += 1;
                    }
                    IdleState::Closed => {}
                    _ => {
                        active -= 1;
                        errors += 1;
                    }
                }
                c.state = IdleState::Closed;
                let _ = poll.registry().deregister(&mut c.sock);
            }
        }
    }
    let ready_s = (now_ns() - t_start) as f64 / 1e9;
    println!("{{\"mode\":\"idle\",\"ready\":{idle_n},\"errors\":{errors},\"secs\":{ready_s:.2}}}");
    io::stdout().flush()?;
    let end = now_ns() + (hold * 1e9) as u64;
    let mut stdin_open = true;
    while now_ns() < end && stdin_open {
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            if ev.token() == STDIN {
                let mut b = [0u8; 64];
                // SAFETY: reading into a local buffer from fd 0.
                let r = unsafe { libc::read(0, b.as_mut_ptr().cast(), b.len()) };
                if r == 0 {
                    stdin_open = false;
                }
                continue;
            }
            let i = ev.token().0;
            if i < cs.len() && cs[i].state == IdleState::Idle && (ev.is_read_closed() || ev.is_error()) {
                cs[i].state = IdleState::Closed;
                closed += 1;
            }
        }
    }
    println!("{{\"mode\":\"idle-end\",\"closed_by_server\":{closed}}}");
    Ok(())
}

// ---------------------------------------------------------------- get / put

fn parse_blocking_response(s: &mut std::net::TcpStream, buf: &mut [u8]) -> io::Result<(u16, u64)> {
    let mut rb = RBuf { buf: std::mem::take(&mut buf.to_vec()), start: 0, end: 0 };
    let mut resp = Resp::new();
    loop {
        let sp = rb.spare();
        let n = s.read(sp)?;
        if n == 0 {
            if resp.body == Body::UntilClose {
                return Ok((resp.status, resp.body_bytes));
            }
            return Err(io::Error::other("connection closed before the response ended"));
        }
        rb.end += n;
        loop {
            match resp.step(rb.data())? {
                Step::Need => break,
                Step::More(k) => rb.consume(k),
                Step::Done(k) => {
                    rb.consume(k);
                    return Ok((resp.status, resp.body_bytes));
                }
            }
        }
    }
}

/// One blocking connection for a single large transfer.
fn connect_blocking(o: &Opts) -> io::Result<std::net::TcpStream> {
    let s = std::net::TcpStream::connect(o.addr()?)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.set_write_timeout(Some(Duration::from_secs(120)))?;
    Ok(s)
}

/// Prints a transfer's result line: `bytes` moved since `t0`.
fn report_transfer(mode: &str, status: u16, bytes: u64, t0: u64) {
    let secs = (now_ns() - t0) as f64 / 1e9;
    println!(
        "{{\"mode\":\"{mode}\",\"status\":{status},\"bytes\":{bytes},\"secs\":{secs:.4},\"mb_s\":{:.1}}}",
        bytes as f64 / 1e6 / secs
    );
}

fn get(o: &Opts) -> io::Result<()> {
    let mut s = connect_blocking(o)?;
    let t0 = now_ns();
    s.write_all(&request_bytes(o))?;
    let mut buf = vec![0u8; 1 << 20];
    let (status, bytes) = parse_blocking_response(&mut s, &mut buf)?;
    report_transfer("get", status, bytes, t0);
    Ok(())
}

fn put(o: &Opts) -> io::Result<()> {
    let total = o.f64("bytes", 1048576.0) as u64;
    let path = o.str("path", "/upload");
    let mut s = connect_blocking(o)?;
    let t0 = now_ns();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: apex-loadgen\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n"
    );
    s.write_all(head.as_bytes())?;
    let chunk = vec![b'x'; 1 << 20];
    let mut left = total;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..k])?;
        left -= k as u64;
    }
    let mut buf = vec![0u8; 1 << 16];
    let (status, _) = parse_blocking_response(&mut s, &mut buf)?;
    report_transfer("put", status, total, t0);
    Ok(())
}

// ---------------------------------------------------------------- TLS (bench/tls)

/// The client side of TLS: one rustls config (ring, like Apex) and the server name to send.
struct Tls {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

impl Tls {
    /// TLS 1.3 and 1.2 (rustls prefers 1.3), ALPN http/1.1, no certificate check. Without
    /// `resume` no session is kept, so every connection does a full handshake.
    fn new(o: &Opts, sni: &str, resume: bool) -> io::Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algs = provider.signature_verification_algorithms;
        let verifier = Arc::new(NoVerify { algs, check_sig: o.str("verify", "0") == "1" });
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        if !resume {
            cfg.resumption = rustls::client::Resumption::disabled();
        }
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(sni.to_string())
            .map_err(|e| io::Error::other(format!("server name {sni:?}: {e}")))?;
        Ok(Tls { config: Arc::new(cfg), name })
    }
}

/// Accepts any certificate: the load generator measures servers, it does not trust them.
/// The handshake signature is checked only with --verify 1 (it costs the load side more
/// than the server's signing costs the server).
#[derive(Debug)]
struct NoVerify {
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
    check_sig: bool,
}

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        if self.check_sig {
            return rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs);
        }
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        if self.check_sig {
            return rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs);
        }
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A client connection, plain TCP or TLS. Read and Write carry plaintext; with TLS they also
/// drive the handshake (the request written during it waits inside rustls and leaves with
/// the client's Finished), so the modes' loops are the same for both.
struct Sock {
    tcp: TcpStream,
    tls: Option<Box<rustls::ClientConnection>>,
}

/// Writes pending TLS records until done or the socket is full (then they wait: see wants_write).
fn flush_records(t: &mut rustls::ClientConnection, tcp: &mut TcpStream) -> io::Result<()> {
    while t.wants_write() {
        match t.write_tls(tcp) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Sock {
    fn connect(addr: SocketAddr, tls: Option<&Tls>) -> io::Result<Sock> {
        let tcp = TcpStream::connect(addr)?;
        let tls = match tls {
            Some(t) => Some(Box::new(
                rustls::ClientConnection::new(t.config.clone(), t.name.clone()).map_err(io::Error::other)?,
            )),
            None => None,
        };
        Ok(Sock { tcp, tls })
    }
    /// Sends pending TLS records (the ClientHello first); call once connected.
    fn flush_tls(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(t) => flush_records(t, &mut self.tcp),
            None => Ok(()),
        }
    }
    /// TLS records are waiting for room in the socket.
    fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }
    fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }
    fn resumed(&self) -> bool {
        self.tls.as_ref().and_then(|t| t.handshake_kind()) == Some(rustls::HandshakeKind::Resumed)
    }
    /// "TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519 Full", or "" for plain TCP.
    fn describe(&self) -> String {
        let Some(t) = &self.tls else { return String::new() };
        format!(
            "{:?} {:?} {:?} {:?}",
            t.protocol_version(),
            t.negotiated_cipher_suite().map(|s| s.suite()),
            t.negotiated_key_exchange_group().map(|g| g.name()),
            t.handshake_kind()
        )
        .replace("Some(", "")
        .replace(')', "")
    }
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.tcp.take_error()
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }
    fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp.set_nodelay(on)
    }
}

impl Read for Sock {
    /// Plaintext; WouldBlock once the socket is drained and no plaintext is left; 0 at the
    /// server's close_notify or EOF.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Sock { tcp, tls } = self;
        let Some(t) = tls else { return tcp.read(buf) };
        loop {
            match t.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0), // no close_notify
                Err(e) => return Err(e),
            }
            match t.read_tls(tcp) {
                Ok(0) => {} // EOF: the reader reports it on the next turn
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e), // WouldBlock included: drained, nothing to return
            }
            let st = t.process_new_packets().map_err(io::Error::other)?;
            // handshake replies, and the request that waited for the handshake to end
            flush_records(t, tcp)?;
            if st.peer_has_closed() && st.plaintext_bytes_to_read() == 0 {
                return Ok(0);
            }
        }
    }
}

impl Write for Sock {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let Sock { tcp, tls } = self;
        let Some(t) = tls else { return tcp.write(b) };
        flush_records(t, tcp)?;
        if t.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = t.writer().write(b)?;
        flush_records(t, tcp)?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl EdgeRead for Sock {
    fn short_read_drains(&self) -> bool {
        self.tls.is_none()
    }
}

impl Source for Sock {
    fn register(&mut self, r: &mio::Registry, t: Token, i: Interest) -> io::Result<()> {
        self.tcp.register(r, t, i)
    }
    fn reregister(&mut self, r: &mio::Registry, t: Token, i: Interest) -> io::Result<()> {
        self.tcp.reregister(r, t, i)
    }
    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        self.tcp.deregister(r)
    }
}

// ---------------------------------------------------------------- handshakes mode

struct HConn {
    sock: Sock,
    connected: bool,
    sent: bool,
    started: u64,
    answered_at: u64, // 0 until the response is complete
    rb: RBuf,
    resp: Resp,
}

fn handshakes(o: &Opts) -> io::Result<()> {
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
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let idx = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        lat[idx.clamp(1, lat.len()) - 1] as f64 / 1000.0
    };
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
