//! loadgen: the load generator of Apex's benchmark harness (bench/run). Linux only.
//!
//! Modes (each prints one JSON object on stdout, `idle` prints two):
//!   rate  --addr A --rate R --conns C --duration S [--warmup S] [--path P] [--drain S]
//!         Open loop: request n is due at t0 + n/R and goes to connection n % C. A connection
//!         sends its next request when it is due and the previous response is complete (no
//!         pipelining). Latency counts from the due time, not the send time, so a stalled
//!         server is charged for every request it delayed (no coordinated omission).
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
        eprintln!("usage: loadgen rate|idle|get|put --addr HOST:PORT ...");
        std::process::exit(2);
    };
    let opts = Opts::parse(&args[2..]);
    let res = match mode.as_str() {
        "rate" => rate(&opts),
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

/// Reads until WouldBlock (edge-triggered); returns Ok(true) at EOF.
/// Calls `on_done(status)` for each completed response; `false` stops parsing this read.
fn read_responses(
    sock: &mut TcpStream,
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
                let short = n < sp.len();
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
    sock: TcpStream,
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

    let mut poll = Poll::new()?;
    let timer = Timer::new()?;
    poll.registry().register(&mut SourceFd(&timer.0.as_raw_fd()), TIMER, Interest::READABLE)?;
    let mut cs: Vec<Conn> = Vec::with_capacity(conns);
    for i in 0..conns {
        let mut sock = connect(addr)?;
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
    // Wait for every connection to be established (at most 5 s).
    let deadline = now_ns() + 5_000_000_000;
    let mut up = 0;
    while up < conns && now_ns() < deadline {
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            if i >= conns || cs[i].connected {
                continue;
            }
            if ev.is_writable() || ev.is_error() {
                let c = &mut cs[i];
                if c.sock.take_error()?.is_none() && c.sock.peer_addr().is_ok() {
                    c.connected = true;
                    let _ = c.sock.set_nodelay(true);
                    c.want_write = false;
                    poll.registry().reregister(&mut c.sock, Token(i), Interest::READABLE)?;
                    up += 1;
                } else {
                    return Err(io::Error::other("connect failed"));
                }
            }
        }
    }
    if up < conns {
        return Err(io::Error::other(format!("only {up}/{conns} connections established")));
    }

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
                    reconnect(&mut poll, &mut cs[i], i, addr, &mut reconnects)?;
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
                    reconnect(&mut poll, c, i, addr, &mut reconnects)?;
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
                reconnect(&mut poll, c, i, addr, &mut reconnects)?;
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
\"loadgen_cpu_s\":{cpu:.3}}}",
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(99.9),
        pct(100.0)
    );
    Ok(())
}

fn reconnect(poll: &mut Poll, c: &mut Conn, i: usize, addr: SocketAddr, reconnects: &mut u64) -> io::Result<()> {
    let _ = poll.registry().deregister(&mut c.sock);
    *reconnects += 1;
    let mut sock = connect(addr)?;
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
