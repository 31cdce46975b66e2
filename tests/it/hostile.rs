//! Slow clients, faults and exhaustion (SECURITY.md, "Availability"): each attack must cost only
//! the connections that make it. A normal keep-alive client runs beside every attack and must be
//! served throughout.
//!
//! Timing: durations asserted here are hang guards ("cut off within a few seconds of a 1 s
//! deadline"), a lower bound that follows from the deadline itself (never cut before it), and one
//! deliberately loose latency ratio for the normal client (the machine is shared and noisy).
//! The attacks hold 1,000 connections each from one thread with non-blocking std sockets, and
//! talk to `FastUp`, a one-thread mio origin, instead of the thread-per-connection `Upstream`.
//! The heavy tests take `HEAVY` so that they never run at the same time as each other (they
//! share this process's fd table and the machine's two cores).

use crate::harness::*;
use mio::net::{TcpListener as MioListener, TcpStream as MioStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Attacker connections per slow-client test.
const ATTACKERS: usize = 1000;
/// The response body an attacker asks for in the slow-read test.
const BIG: u64 = 1 << 20;
/// More than the kernel can buffer for one stalled connection (send + receive buffers, pipe).
const HUGE: u64 = 32 << 20;
const MED: u64 = 256 << 10;

/// Body length FastUp sends for `target`, when it is a pattern body.
fn pattern_len(target: &str) -> Option<u64> {
    [("/big", BIG), ("/huge", HUGE), ("/med", MED)].iter().find(|(p, _)| target.starts_with(p)).map(|(_, n)| *n)
}

static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn hard_nofile() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum.unwrap_or(u64::MAX)
}

/// Waits up to `d` for `pid` to hold at most `n` sockets; returns the last count seen.
fn wait_sockets_at_most(pid: u32, n: usize, d: Duration) -> usize {
    let end = Instant::now() + d;
    loop {
        let s = sockets_of(pid);
        if s <= n || Instant::now() > end {
            return s;
        }
        thread::sleep(ms(50));
    }
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

// ---------------------------------------------------------------- FastUp: a one-thread origin

/// A light origin for many connections: one thread, one mio loop, keep-alive. Each request is
/// answered 200 once its Content-Length body (if any) has been read and discarded; a target
/// starting with "/big", "/med" or "/huge" gets that many bytes of `pattern` (`pattern_len`),
/// any other target gets itself as the body.
struct FastUp {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepts: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    t: Option<JoinHandle<()>>,
}

struct UpC {
    s: MioStream,
    inb: Vec<u8>,
    body_left: u64,
    pending: Option<String>,
    out: Vec<u8>,
    out_pos: usize,
    big_left: u64,
    big_off: u64,
}

impl FastUp {
    fn start() -> FastUp {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepts = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (s2, a2, o2, n2) = (stop.clone(), accepts.clone(), open.clone(), answered.clone());
        let t = thread::spawn(move || fast_up_loop(MioListener::from_std(l), &s2, &a2, &o2, &n2));
        FastUp { addr, stop, accepts, open, answered, t: Some(t) }
    }
    fn open(&self) -> usize {
        self.open.load(SeqCst)
    }
    fn answered(&self) -> usize {
        self.answered.load(SeqCst)
    }
}

impl Drop for FastUp {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.t.take() {
            let _ = t.join();
        }
    }
}

fn fast_up_loop(
    mut l: MioListener,
    stop: &AtomicBool,
    accepts: &AtomicUsize,
    open: &AtomicUsize,
    answered: &AtomicUsize,
) {
    let mut poll = Poll::new().unwrap();
    poll.registry().register(&mut l, Token(0), Interest::READABLE).unwrap();
    let mut events = Events::with_capacity(1024);
    let mut conns: HashMap<usize, UpC> = HashMap::new();
    let mut next = 1usize;
    let pat: Vec<u8> = (0..(1u64 << 16) + 251).map(pattern).collect();
    while !stop.load(SeqCst) {
        if poll.poll(&mut events, Some(ms(20))).is_err() {
            events.clear();
        }
        let mut ready: Vec<usize> = events.iter().map(|e| e.token().0).filter(|&t| t != 0).collect();
        // Accept on every turn (also after EMFILE, which raises no new edge).
        while let Ok((mut s, _)) = l.accept() {
            let _ = s.set_nodelay(true);
            let k = next;
            next += 1;
            if poll.registry().register(&mut s, Token(k), Interest::READABLE | Interest::WRITABLE).is_err() {
                continue;
            }
            accepts.fetch_add(1, SeqCst);
            open.fetch_add(1, SeqCst);
            let c =
                UpC { s, inb: vec![], body_left: 0, pending: None, out: vec![], out_pos: 0, big_left: 0, big_off: 0 };
            conns.insert(k, c);
            ready.push(k);
        }
        for k in ready {
            let alive = match conns.get_mut(&k) {
                Some(c) => c.service(&pat, answered),
                None => continue,
            };
            if !alive && let Some(mut c) = conns.remove(&k) {
                let _ = poll.registry().deregister(&mut c.s);
                open.fetch_sub(1, SeqCst);
            }
        }
    }
}

impl UpC {
    fn busy(&self) -> bool {
        self.out_pos < self.out.len() || self.big_left > 0
    }

    /// Consumes body bytes, answers finished requests, parses the next head. Never reads a new
    /// head while a response is still going out (responses stay in order).
    fn parse(&mut self, answered: &AtomicUsize) {
        loop {
            if self.body_left > 0 {
                let n = (self.body_left as usize).min(self.inb.len());
                self.inb.drain(..n);
                self.body_left -= n as u64;
                if self.body_left > 0 {
                    return;
                }
            }
            if self.busy() {
                return;
            }
            if let Some(target) = self.pending.take() {
                self.out.clear();
                self.out_pos = 0;
                if let Some(n) = pattern_len(&target) {
                    self.out.extend_from_slice(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes());
                    self.big_left = n;
                    self.big_off = 0;
                } else {
                    self.out.extend_from_slice(&ok(&target));
                }
                answered.fetch_add(1, SeqCst);
                continue;
            }
            let Some(i) = find(&self.inb, b"\r\n\r\n") else { return };
            let head: Vec<u8> = self.inb.drain(..i + 4).collect();
            let text = String::from_utf8_lossy(&head).into_owned();
            let target = text.split(' ').nth(1).unwrap_or("/").to_string();
            self.body_left = text
                .split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            self.pending = Some(target);
        }
    }

    /// Reads, answers and writes until nothing moves. False once the connection is over.
    fn service(&mut self, pat: &[u8], answered: &AtomicUsize) -> bool {
        let mut tmp = vec![0u8; 1 << 16];
        loop {
            let mut progress = false;
            loop {
                match self.s.read(&mut tmp) {
                    Ok(0) => return false,
                    Ok(n) => {
                        self.inb.extend_from_slice(&tmp[..n]);
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            self.parse(answered);
            loop {
                let r = if self.out_pos < self.out.len() {
                    self.s.write(&self.out[self.out_pos..])
                } else if self.big_left > 0 {
                    let off = (self.big_off % 251) as usize;
                    let n = (self.big_left as usize).min(1 << 16);
                    self.s.write(&pat[off..off + n])
                } else {
                    break;
                };
                match r {
                    Ok(n) if self.out_pos < self.out.len() => {
                        self.out_pos += n;
                        progress = true;
                    }
                    Ok(n) => {
                        self.big_left -= n as u64;
                        self.big_off += n as u64;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            if !progress {
                return true;
            }
        }
    }
}

// ---------------------------------------------------------------- the attacking crowd

/// Many non-blocking client connections driven from one thread.
struct Crowd {
    socks: Vec<Option<TcpStream>>,
    /// First bytes each connection received (at most `KEEP`).
    got: Vec<Vec<u8>>,
    bytes: Vec<usize>,
    /// When the first and the last bytes were written (deadlines run from about then).
    first_at: Vec<Option<Instant>>,
    sent_at: Vec<Option<Instant>>,
    closed_at: Vec<Option<Instant>>,
}

const KEEP: usize = 256;

impl Crowd {
    /// `n` connections to `addr`, each sending `first(i)` as soon as it is connected (so no
    /// deadline runs from the accept while the others connect); `rcvbuf` shrinks each socket's
    /// receive buffer (set before connect, so the window stays small).
    fn connect(addr: SocketAddr, n: usize, rcvbuf: Option<usize>, first: impl Fn(usize) -> Vec<u8>) -> Crowd {
        let mut socks = Vec::with_capacity(n);
        for i in 0..n {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            if let Some(b) = rcvbuf {
                s.set_recv_buffer_size(b).unwrap();
            }
            s.connect_timeout(&addr.into(), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("attacker {i} of {n}: connect: {e}"));
            s.set_tcp_nodelay(true).unwrap();
            s.set_nonblocking(true).unwrap();
            socks.push(Some(TcpStream::from(s)));
        }
        let mut c = Crowd {
            socks: vec![],
            got: vec![vec![]; n],
            bytes: vec![0; n],
            first_at: vec![None; n],
            sent_at: vec![None; n],
            closed_at: vec![None; n],
        };
        for (i, s) in socks.into_iter().enumerate() {
            c.socks.push(s);
            c.send_one(i, &first(i));
        }
        c
    }

    fn open(&self) -> usize {
        self.socks.iter().filter(|s| s.is_some()).count()
    }

    fn close(&mut self, i: usize) {
        self.socks[i] = None;
        self.closed_at[i].get_or_insert(Instant::now());
    }

    /// Writes `bytes(i)` on every open connection (what fits); a failed write means the peer
    /// is gone.
    fn send(&mut self, bytes: impl Fn(usize) -> Vec<u8>) {
        for i in 0..self.socks.len() {
            self.send_one(i, &bytes(i));
        }
    }

    fn send_one(&mut self, i: usize, b: &[u8]) {
        let Some(s) = self.socks[i].as_mut() else { return };
        if b.is_empty() {
            return;
        }
        match s.write(b) {
            Ok(_) => {
                let now = Instant::now();
                self.sent_at[i] = Some(now);
                self.first_at[i].get_or_insert(now);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.close(i),
        }
    }

    /// Reads what every open connection has received; EOF or reset closes it.
    fn poll(&mut self) {
        let mut tmp = vec![0u8; 1 << 16];
        for i in 0..self.socks.len() {
            let Some(s) = self.socks[i].as_mut() else { continue };
            loop {
                match s.read(&mut tmp) {
                    Ok(0) => {
                        self.close(i);
                        break;
                    }
                    Ok(n) => {
                        let keep = n.min(KEEP.saturating_sub(self.got[i].len()));
                        self.got[i].extend_from_slice(&tmp[..keep]);
                        self.bytes[i] += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.close(i);
                        break;
                    }
                }
            }
        }
    }

    /// Polls until every connection is closed or `d` passes.
    fn wait_all_closed(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while self.open() > 0 && Instant::now() < end {
            self.poll();
            thread::sleep(ms(20));
        }
    }

    /// Asserts every connection was closed, and that whatever it received before the close
    /// was `prefix` (Apex's error response) or nothing. Returns how many got `prefix`.
    fn assert_cut_off(&self, prefix: &[u8], what: &str) -> usize {
        let open = self.open();
        assert_eq!(open, 0, "{open} of {} {what} attackers are still connected", self.socks.len());
        let mut with = 0;
        for (i, g) in self.got.iter().enumerate() {
            if g.is_empty() {
                continue;
            }
            assert!(g.starts_with(prefix), "{what} attacker {i} received {:?}", String::from_utf8_lossy(g));
            with += 1;
        }
        with
    }

    /// Asserts each connection closed between `min` and `max` after its first write (`from_first`)
    /// or its last. Returns the range seen.
    fn assert_closed_within(&self, from_first: bool, min: Duration, max: Duration, what: &str) -> (Duration, Duration) {
        let mut seen = (Duration::MAX, Duration::ZERO);
        for i in 0..self.socks.len() {
            let sent = if from_first { self.first_at[i] } else { self.sent_at[i] };
            let (Some(sent), Some(closed)) = (sent, self.closed_at[i]) else {
                panic!("{what} attacker {i}: sent {:?}, closed {:?}", self.sent_at[i], self.closed_at[i]);
            };
            let after = closed.saturating_duration_since(sent);
            assert!(after >= min, "{what} attacker {i} was cut off {after:?} after its last byte, before the deadline");
            assert!(after <= max, "{what} attacker {i} was cut off only {after:?} after its last byte");
            seen = (seen.0.min(after), seen.1.max(after));
        }
        seen
    }
}

// ---------------------------------------------------------------- the normal client

/// What the normal client saw: latency of each request with the number of attackers
/// connected when it started, and every failure.
struct NormalLog {
    samples: Vec<(Duration, usize)>,
    failures: Vec<String>,
}

/// A keep-alive client that GETs `/n/{i}` (2 ms apart) until stopped, checking each answer is
/// 200 with its own path as the body (what both FastUp and `multi_up` send).
struct Normal {
    stop: Arc<AtomicBool>,
    t: JoinHandle<NormalLog>,
}

impl Normal {
    fn start(addr: SocketAddr, attackers: Arc<AtomicUsize>) -> Normal {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let t = thread::spawn(move || {
            let mut log = NormalLog { samples: vec![], failures: vec![] };
            let mut c = Client::connect(addr);
            let mut i = 0u64;
            while !stop2.load(SeqCst) {
                i += 1;
                let target = format!("/n/{i}");
                let open = attackers.load(SeqCst);
                let t0 = Instant::now();
                let r =
                    c.try_send(&get("h", &target)).map_err(|e| e.to_string()).and_then(|()| c.try_read_response(false));
                match r {
                    Ok(r) if r.status == 200 && r.body == target.as_bytes() => {
                        log.samples.push((t0.elapsed(), open));
                    }
                    Ok(r) => {
                        log.failures.push(format!("{target}: {} {:?}", r.head_str(), r.body_str()));
                        c = Client::connect(addr);
                    }
                    Err(e) => {
                        log.failures.push(format!("{target}: {e}"));
                        c = Client::connect(addr);
                    }
                }
                thread::sleep(ms(2));
            }
            log
        });
        Normal { stop, t }
    }

    fn finish(self) -> NormalLog {
        self.stop.store(true, SeqCst);
        self.t.join().expect("normal client thread")
    }
}

/// `n` sequential requests on `c`; their latencies (all must be 200 with the path as body).
fn baseline(c: &mut Client, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let target = format!("/base/{i}");
            let t0 = Instant::now();
            let r = c.request(&get("h", &target));
            let d = t0.elapsed();
            assert_eq!(r.status, 200, "baseline request {i}: {}", r.head_str());
            assert_eq!(r.body, target.as_bytes());
            d
        })
        .collect()
}

/// The normal client was never refused, kept completing requests while at least `floor`
/// attackers were connected, and its median latency then stayed within 20x its baseline (or
/// 50 ms, whichever is larger: the machine is shared). Returns (requests during the attack,
/// median then).
fn assert_normal_served(log: &NormalLog, base: &[Duration], floor: usize, what: &str) -> (usize, Duration) {
    assert!(log.failures.is_empty(), "normal client failed during the {what} attack: {:#?}", log.failures);
    let during: Vec<Duration> = log.samples.iter().filter(|(_, open)| *open >= floor).map(|(d, _)| *d).collect();
    assert!(
        during.len() >= 20,
        "normal client completed only {} requests while {floor}+ {what} attackers were connected",
        during.len()
    );
    let (b, m) = (median(base), median(&during));
    let bound = (b * 20).max(ms(50));
    assert!(m <= bound, "normal client median latency {m:?} during the {what} attack, baseline {b:?}");
    (during.len(), m)
}

// ---------------------------------------------------------------- 1-3: slow clients

#[test]
fn slowloris_costs_only_the_attackers() {
    let _g = heavy();
    raise_nofile(8192);
    let up = FastUp::start();
    let apex = Apex::start(&Config::to(up.addr).workers(1).timeout("client_head", "1s"));
    let mut c = apex.client();
    let base = baseline(&mut c, 200);
    drop(c);
    let open = Arc::new(AtomicUsize::new(0));
    let normal = Normal::start(apex.addr, open.clone());
    thread::sleep(ms(100));
    let apex_base = sockets_of(apex.pid());

    // Never-ending head, one byte per round, a round every 150 ms.
    let head: Vec<u8> = [b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ".as_slice(), &[b'a'; 200]].concat();
    let mut crowd = Crowd::connect(apex.addr, ATTACKERS, None, |_| head[..1].to_vec());
    open.store(ATTACKERS, SeqCst);
    let start = Instant::now();
    let mut k = 1;
    while crowd.open() > 0 && start.elapsed() < Duration::from_secs(8) {
        crowd.send(|_| vec![head[k % head.len()]]);
        k += 1;
        let round = Instant::now();
        while round.elapsed() < ms(150) {
            crowd.poll();
            open.store(crowd.open(), SeqCst);
            thread::sleep(ms(10));
        }
    }
    let attack = start.elapsed();
    let log = normal.finish();

    let with_408 = crowd.assert_cut_off(b"HTTP/1.1 408 ", "slowloris");
    // The deadline runs from the first byte and bounds the whole head: each attacker is cut
    // off about 1 s after its first byte however steadily it trickles, never before.
    let (earliest, latest) = crowd.assert_closed_within(true, ms(500), Duration::from_secs(5), "slowloris");
    let (during, m) = assert_normal_served(&log, &base, ATTACKERS * 9 / 10, "slowloris");
    let left = wait_sockets_at_most(apex.pid(), apex_base + 5, Duration::from_secs(5));
    assert!(left <= apex_base + 5, "apex still holds {left} sockets after the attack (before: {apex_base})");
    // Not one attacker byte reached the origin: it answered exactly the normal requests.
    let normal_done = log.samples.len() + base.len();
    assert_eq!(
        up.answered(),
        normal_done,
        "origin answered {} requests, the normal client made {normal_done}",
        up.answered()
    );
    eprintln!(
        "slowloris: {ATTACKERS} attackers, {with_408} got 408, cut off {earliest:?}..{latest:?} after the first byte; \
         attack {attack:?}; normal: {during} requests during the attack, median {m:?} (baseline {:?}); \
         apex VmHWM {} KiB",
        median(&base),
        apex.vm_hwm_kib()
    );
}

#[test]
fn slow_body_costs_only_the_attackers() {
    let _g = heavy();
    raise_nofile(8192);
    let up = FastUp::start();
    // 2 s, not 1 s: connecting and feeding 1,000 attackers (32 MiB of bodies) can take over a
    // second on a loaded machine, and the first would be cut before the last is in.
    let apex = Apex::start(&Config::to(up.addr).workers(1).timeout("client_body", "2s"));
    let mut c = apex.client();
    let base = baseline(&mut c, 200);
    drop(c);
    let open = Arc::new(AtomicUsize::new(0));
    let normal = Normal::start(apex.addr, open.clone());
    thread::sleep(ms(100));
    let apex_base = sockets_of(apex.pid());
    let up_base = up.open();

    // A head promising 1,000,000 bytes, then 10 bytes (even attackers) or 64 KiB (odd ones: a
    // body big enough for Apex to splice), then nothing.
    let head = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    let mut crowd = Crowd::connect(apex.addr, ATTACKERS, None, |i| {
        let n = if i % 2 == 0 { 10 } else { 64 * 1024 };
        let mut b = head.clone();
        b.extend((0..n as u64).map(pattern));
        b
    });
    open.store(ATTACKERS, SeqCst);
    let start = Instant::now();
    while crowd.open() > 0 && start.elapsed() < Duration::from_secs(8) {
        crowd.poll();
        open.store(crowd.open(), SeqCst);
        thread::sleep(ms(10));
    }
    let log = normal.finish();

    let with_408 = crowd.assert_cut_off(b"HTTP/1.1 408 ", "slow-body");
    let (earliest, latest) = crowd.assert_closed_within(false, ms(500), Duration::from_secs(5), "slow-body");
    let (during, m) = assert_normal_served(&log, &base, ATTACKERS * 9 / 10, "slow-body");
    let left = wait_sockets_at_most(apex.pid(), apex_base + 5, Duration::from_secs(5));
    assert!(left <= apex_base + 5, "apex still holds {left} sockets after the attack (before: {apex_base})");
    // The upstream connections that carried the unfinished bodies were closed, not pooled.
    assert!(
        up.wait_for_open(up_base + 2, Duration::from_secs(5)),
        "origin still has {} connections open (before: {up_base})",
        up.open()
    );
    let normal_done = log.samples.len() + base.len();
    assert_eq!(up.answered(), normal_done, "no attacker request may be answered by the origin");
    eprintln!(
        "slow body: {ATTACKERS} attackers, {with_408} got 408, cut off {earliest:?}..{latest:?} after their last \
         byte; origin accepted {} connections; normal: {during} requests during the attack, median {m:?} \
         (baseline {:?}); apex VmHWM {} KiB",
        up.accepts.load(SeqCst),
        median(&base),
        apex.vm_hwm_kib()
    );
}

impl FastUp {
    fn wait_for_open(&self, n: usize, d: Duration) -> bool {
        let end = Instant::now() + d;
        while self.open() > n {
            if Instant::now() > end {
                return false;
            }
            thread::sleep(ms(50));
        }
        true
    }
}

#[test]
fn slow_read_costs_only_the_attackers_and_memory_stays_bounded() {
    let _g = heavy();
    raise_nofile(8192);
    let up = FastUp::start();
    // client_idle is short too: a response small enough to fit in the kernel's socket buffers
    // is, for Apex, fully written, and its connection then waits for a next request (idle).
    let apex = Apex::start(&Config::to(up.addr).workers(1).timeout("client_send", "1s").timeout("client_idle", "2s"));
    let mut c = apex.client();
    let base = baseline(&mut c, 200);
    // One big response read normally: the path works, and it warms Apex's buffers and pipes.
    let r = c.request(&get("h", "/big/warm"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, BIG);
    assert!(r.body.iter().enumerate().all(|(i, &b)| b == pattern(i as u64)), "big body corrupted");
    drop(c);
    let open = Arc::new(AtomicUsize::new(0));
    let normal = Normal::start(apex.addr, open.clone());
    thread::sleep(ms(100));
    let apex_base = sockets_of(apex.pid());
    let hwm_before = apex.vm_hwm_kib();

    // Tiny receive windows. Apex's send buffer still grows to tcp_wmem's maximum (4 MiB here),
    // so a response is truly stuck in Apex only past that: DEEP attackers ask for 32 MiB and
    // must be cut by client_send. The crowd asks for 256 KiB each, which the kernel absorbs
    // (256 MiB of kernel memory for 1,000; 1 MiB each would pin about 1 GiB of the shared
    // machine's TCP memory); Apex must still release those connections, via client_idle.
    const DEEP: usize = 20;
    let mut deep = Crowd::connect(apex.addr, DEEP, Some(4096), |i| get("h", &format!("/huge/{i}")));
    let mut crowd = Crowd::connect(apex.addr, ATTACKERS, Some(4096), |i| get("h", &format!("/med/{i}")));
    open.store(ATTACKERS + DEEP, SeqCst);
    let sent = Instant::now();
    thread::sleep(ms(300));
    let peak = sockets_of(apex.pid());
    // The attackers read nothing. Watch Apex's sockets drop back to what the normal client needs.
    let left = wait_sockets_at_most(apex.pid(), apex_base + 5, Duration::from_secs(10));
    let released = sent.elapsed();
    let log = normal.finish();
    assert!(peak >= ATTACKERS + DEEP, "apex held only {peak} sockets 300 ms into the attack: it did not happen");
    assert!(
        left <= apex_base + 5,
        "apex still holds {left} sockets {released:?} after {} clients stopped reading (before: {apex_base})",
        ATTACKERS + DEEP
    );
    let cut = apex.stderr().matches("timeout in RespBody").count();
    assert!(cut >= DEEP, "only {cut} responses were cut by client_send; {DEEP} could not fit in kernel buffers");
    // Now read: a deep attacker gets the start of its response, then EOF or reset, well short
    // of 32 MiB; a crowd attacker gets its response (from the kernel), then EOF.
    deep.wait_all_closed(Duration::from_secs(20));
    crowd.wait_all_closed(Duration::from_secs(20));
    deep.assert_cut_off(b"HTTP/1.1 200 ", "slow-read (32 MiB)");
    crowd.assert_cut_off(b"HTTP/1.1 200 ", "slow-read (256 KiB)");
    let most = deep.bytes.iter().copied().max().unwrap_or(0);
    assert!((most as u64) < HUGE, "a deep attacker received {most} bytes, its whole response");
    let (during, m) = assert_normal_served(&log, &base, ATTACKERS * 9 / 10, "slow-read");
    let hwm = apex.vm_hwm_kib();
    // Bound: Apex's user-space memory per stalled response is at most two pooled 16 KiB buffers
    // (the upstream's bytes and the client's), 32 MiB for 1,000; pipe contents and socket
    // buffers are kernel memory, not RSS. 96 MiB over the start leaves room for allocator slack
    // and fails if anything buffered whole responses (the crowd's alone are 256 MiB).
    assert!(
        hwm <= hwm_before + 96 * 1024,
        "apex VmHWM grew from {hwm_before} KiB to {hwm} KiB with {} slow readers",
        ATTACKERS + DEEP
    );
    eprintln!(
        "slow read: {DEEP} deep attackers cut by client_send (read at most {most} of {HUGE} bytes each), \
         {ATTACKERS} crowd attackers released by client_idle; all released {released:?} after the requests; \
         apex VmHWM {hwm_before} -> {hwm} KiB; normal: {during} requests during the attack, median {m:?} \
         (baseline {:?})",
        median(&base)
    );
}

// ---------------------------------------------------------------- 4: upstream faults

/// Makes the socket's close send RST instead of FIN.
fn arm_reset(s: &TcpStream) {
    socket2::SockRef::from(s).set_linger(Some(Duration::ZERO)).unwrap();
}

/// One origin whose behaviour depends on the path. Any other path (the normal client's) gets
/// 200 with the path as the body. "/silent" never answers; "/rsthead" resets after half a head;
/// "/rstbody" resets after 1,000 of 100,000 body bytes; "/garbage" answers garbage;
/// "/stale/arm" answers and arms its connection: the next request on it, whoever sends it, is
/// read and the connection closed unanswered (the pooled-connection race); "/upload" reads its
/// body, and sets `upload_cut` if the connection ends before the body does.
fn multi_up(stale_kills: Arc<AtomicUsize>, upload_cut: Arc<AtomicBool>) -> Upstream {
    Upstream::start(move |mut c| {
        let mut armed = false;
        while let Some(r) = c.read_head() {
            let body = match r.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
                Some(n) => c.read_exact(n),
                None => Some(vec![]),
            };
            if armed {
                stale_kills.fetch_add(1, SeqCst);
                c.shutdown();
                return;
            }
            let t = r.target.clone();
            let reply = match t.as_str() {
                "/silent" => {
                    c.wait_eof();
                    return;
                }
                "/rsthead" => {
                    let _ = c.write(b"HTTP/1.1 200 OK\r\nContent-Le");
                    thread::sleep(ms(50)); // let Apex read the half head before the reset
                    arm_reset(&c.s);
                    return;
                }
                "/rstbody" => {
                    let mut b = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
                    b.extend_from_slice(&[b'y'; 1000]);
                    let _ = c.write(&b);
                    thread::sleep(ms(50));
                    arm_reset(&c.s);
                    return;
                }
                "/garbage" => b"this is not http at all\r\n\r\n".to_vec(),
                "/stale/arm" => {
                    armed = true;
                    ok(&t)
                }
                "/upload" if body.is_none() => {
                    upload_cut.store(true, SeqCst);
                    return;
                }
                _ => ok(&t),
            };
            if body.is_none() || c.write(&reply).is_err() {
                return;
            }
        }
    })
}

#[test]
fn upstream_faults_cost_only_their_own_request() {
    let _g = heavy();
    let stale_kills = Arc::new(AtomicUsize::new(0));
    let upload_cut = Arc::new(AtomicBool::new(false));
    let up = multi_up(stale_kills.clone(), upload_cut.clone());
    // The upload has a server of its own: on the shared one, a connection "/stale/arm" armed
    // may still be idle in the pool when the upload comes (which connection the stale GETs
    // reuse depends on the normal client's timing), and that server would drop the upload
    // itself, unread.
    let upload_up = multi_up(Arc::new(AtomicUsize::new(0)), upload_cut.clone());
    let apex = Apex::start(
        &Config::to(up.addr)
            .route("*", "/down", "down")
            .group("down", &[dead_addr()])
            .route("*", "/upload", "upload")
            .group("upload", &[upload_up.addr])
            .workers(1)
            .timeout("upstream_head", "500ms"),
    );
    let mut c = apex.client();
    let base = baseline(&mut c, 100);
    drop(c);
    // The normal client shares the faulty origin (same server, same pool) with every fault
    // below except the refused connect, which has its own group.
    let normal = Normal::start(apex.addr, Arc::new(AtomicUsize::new(1)));
    let mut seen = vec![];
    for round in 0..3 {
        // refused connect
        let r = apex.client().request(&get("h", "/down"));
        assert_apex_status(&r, 502);
        // accepted, never answered
        let r = apex.client().request(&get("h", "/silent"));
        assert_apex_status(&r, 504);
        // reset in the middle of the response head
        let r = apex.client().request(&get("h", "/rsthead"));
        assert_apex_status(&r, 502);
        // reset in the middle of the response body: the client sees a short body, then a close
        let mut k = apex.client();
        k.send(&get("h", "/rstbody"));
        let r = k.read_head_response();
        assert_eq!(r.status, 200, "{}", r.head_str());
        assert_eq!(r.header("content-length"), Some("100000"));
        let (body, closed) = k.read_until_close(Duration::from_secs(5));
        assert!(closed, "client connection must be closed when the upstream resets mid-body");
        assert!(body.len() < 100_000, "got {} body bytes", body.len());
        // garbage instead of a response
        let r = apex.client().request(&get("h", "/garbage"));
        assert_apex_status(&r, 502);
        // a pooled connection that dies as it is reused: the GET is retried, never a 502
        let mut k = apex.client();
        let r = k.request(&get("h", "/stale/arm"));
        assert_eq!(r.status, 200, "{}", r.head_str());
        for i in 0..3 {
            let target = format!("/stale/{round}/{i}");
            let r = k.request(&get("h", &target));
            assert_eq!(r.status, 200, "GET after an armed connection: {}", r.head_str());
            assert_eq!(r.body, target.as_bytes());
        }
        seen.push(round);
    }
    // a client that resets in the middle of its upload
    let k = apex.client();
    let mut b = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    b.extend((0..100_000u64).map(pattern));
    (&k.s).write_all(&b).unwrap();
    thread::sleep(ms(200));
    arm_reset(&k.s);
    drop(k);
    let cut = up.wait_for(Duration::from_secs(5), |_| upload_cut.load(SeqCst));
    thread::sleep(ms(200)); // the normal client keeps going after the reset
    let log = normal.finish();

    assert!(cut, "the upload's upstream connection was not closed after its client reset");
    assert!(stale_kills.load(SeqCst) >= 1, "no request ever met an armed pooled connection: the race was not tested");
    assert!(log.failures.is_empty(), "the normal client was hurt by a fault on another request: {:#?}", log.failures);
    assert!(log.samples.len() >= 20, "normal client completed only {} requests", log.samples.len());
    let r = apex.client().request(&get("h", "/after"));
    assert_eq!(r.status, 200);
    let all: Vec<Duration> = log.samples.iter().map(|(d, _)| *d).collect();
    eprintln!(
        "faults: {} rounds; {} requests met a dying pooled connection; normal client: {} requests, none failed, \
         median {:?} (baseline {:?})",
        seen.len(),
        stale_kills.load(SeqCst),
        log.samples.len(),
        median(&all),
        median(&base)
    );
}

// ---------------------------------------------------------------- 5: fd exhaustion

/// `apex CONFIG` run through `sh -c 'ulimit -n N; exec apex CONFIG'`; killed on drop.
struct LimitedApex {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl LimitedApex {
    fn start(nofile: u32, toml: &str) -> LimitedApex {
        let dir = TempDir::new("fdlimit");
        let conf = dir.write("apex.toml", toml);
        let mut child = Command::new("sh")
            .arg("-c")
            // dash and bash: -n without -H/-S sets the soft and the hard limit.
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$1\""))
            .arg(APEX)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .expect("spawn sh");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("apex: listening on ") {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        });
        let a = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "apex under `ulimit -n {nofile}` did not start: {}",
                fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
            )
        });
        LimitedApex { child, addr: a.parse().unwrap(), _dir: dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// User + system CPU time, in seconds.
    fn cpu_secs(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        // fields 14 and 15 of stat(5); `rest` starts at field 3
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        let hz = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok())
            .unwrap_or(100);
        ticks as f64 / hz as f64
    }
}

impl Drop for LimitedApex {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn fd_exhaustion_pauses_accept_without_spinning_and_recovers() {
    let _g = heavy();
    let up = Upstream::ok("fd");
    // connections = 10000, so the 64-fd limit binds, not the connection cap. Apex accepts at most
    // 64 - 24 = 40 clients; when the pooled upstream connections idle out (upstream_idle = 1s)
    // and established clients need new ones, a request that finds no free fd makes Apex close
    // an idle connection first: no 502 (before, the freed fds went to queued clients and every
    // established client then got 502). tests/fd_reclaim.rs drives that path exactly.
    let toml = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n\n[timeouts]\nclient_head = \"30s\"\nclient_idle = \"30s\"\n\
         upstream_idle = \"1s\"\n\n[limits]\nconnections = 10000\n\n[log]\naccess = \"off\"\n\n\
         [[route]]\nhost = \"*\"\npath = \"/\"\nupstream = \"app\"\n\n[upstream.app]\nservers = [\"{}\"]\n",
        up.addr
    );
    let mut apex = LimitedApex::start(64, &toml);
    let limits = fs::read_to_string(format!("/proc/{}/limits", apex.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string();
    assert_eq!(line.split_whitespace().collect::<Vec<_>>()[3..5], ["64", "64"], "{line}");

    let request = |c: &mut Client, path: &str| {
        let r = c.request(&get("h", path));
        assert_eq!(r.status, 200, "{path}: {}", r.head_str());
        assert_eq!(r.body, b"fd");
    };
    let mut steady: Vec<Client> = (0..5).map(|_| Client::connect(apex.addr)).collect();
    for (i, c) in steady.iter_mut().enumerate() {
        request(c, &format!("/steady/{i}"));
    }
    // 100 more connections than fds: the kernel completes every handshake; Apex accepts up to
    // its fd-derived cap and the rest wait in its accept queue.
    let mut flood: Vec<Client> = (0..100).map(|_| Client::connect(apex.addr)).collect();
    thread::sleep(ms(500));
    let fds = apex.fds();
    assert!(fds <= 65, "apex holds {fds} fds, over its limit of 64 (plus one inherited)");
    let held = sockets_of(apex.pid());
    assert!((30..=48).contains(&held), "apex holds {held} sockets: it should stop near its cap of 40 clients");
    // The newest is queued, not served.
    flood[99].send(&get("h", "/queued"));
    assert_eq!(flood[99].wait(Duration::from_secs(1)), Seen::Silent, "the 100th flood connection was served");
    // Connections Apex already has are served.
    for (i, c) in steady.iter_mut().enumerate() {
        request(c, &format!("/steady/saturated/{i}"));
    }
    request(&mut flood[0], "/flood/0");
    // Saturated, Apex waits; it does not spin on the listener.
    let cpu0 = apex.cpu_secs();
    thread::sleep(Duration::from_secs(2));
    let cpu = apex.cpu_secs() - cpu0;
    assert!(cpu < 0.3, "apex used {cpu:.2} s of CPU in 2 s while out of fds: it spins");
    assert!(apex.child.try_wait().unwrap().is_none(), "apex exited while out of fds");
    // The pooled upstream connections have idled out (1 s): established clients need new ones,
    // and get them.
    for (i, c) in steady.iter_mut().enumerate() {
        request(c, &format!("/steady/after-idle/{i}"));
    }
    // Free fds: close the 90 oldest flood connections. The queued ones get accepted and served.
    // (Idle flood connections may have been closed by Apex to serve the steady clients.)
    let t0 = Instant::now();
    flood.drain(..90);
    let r = flood.last_mut().unwrap().read_response();
    assert_eq!(r.status, 200, "queued request: {}", r.head_str());
    let recovered = t0.elapsed();
    for (i, c) in flood.iter_mut().enumerate().take(9) {
        request(c, &format!("/flood/late/{i}"));
    }
    for (i, c) in steady.iter_mut().enumerate() {
        request(c, &format!("/steady/after/{i}"));
    }
    eprintln!(
        "fd exhaustion: apex held {fds} fds, {held} sockets (limit 64) with 105 clients; \
         {cpu:.2} s CPU over 2 s saturated; the queued request was answered {recovered:?} after 90 clients closed"
    );
}

// ---------------------------------------------------------------- 6: 10,000 connections

#[test]
fn ten_thousand_concurrent_connections() {
    let _g = heavy();
    // This process holds the clients and the origin's side of Apex's upstream connections. A
    // request in flight may hold its own upstream connection, so requests go out in two waves
    // of 5,000. Apex (which inherits this limit) accepts at most (limit - 24) / workers clients per
    // worker. The limit is raised to 65,536 where allowed (root with the capability);
    // one worker is used unless the limit is large, so that SO_REUSEPORT's uneven spread over
    // workers cannot leave some connections queued at a full worker.
    const WAVE: usize = 5_000;
    let soft = raise_nofile(65_536.max(hard_nofile()));
    let n = 10_000usize.min((soft as usize).saturating_sub(WAVE + 500));
    if n < 10_000 {
        eprintln!("RLIMIT_NOFILE is {soft}: testing {n} concurrent connections, not 10,000");
    }
    assert!(n >= 1_000, "RLIMIT_NOFILE {soft} is too low for this test");
    let up = FastUp::start();
    let workers = if soft >= 40_100 { 2 } else { 1 };
    let apex = Apex::start(&Config::to(up.addr).workers(workers).limit("connections", "10000"));
    let rss_start = vm_rss_kib(apex.pid());
    let t0 = Instant::now();
    let mut cs: Vec<Client> = (0..n).map(|_| Client::connect(apex.addr)).collect();
    let connected = t0.elapsed();
    let held = sockets_of(apex.pid());
    assert!(held > n, "apex holds {held} sockets with {n} clients connected: not all were accepted");
    let rss_idle = vm_rss_kib(apex.pid());
    for wave in 0..n.div_ceil(WAVE) {
        let ids = wave * WAVE..((wave + 1) * WAVE).min(n);
        for i in ids.clone() {
            cs[i].send(&get("h", &format!("/c/{i}")));
        }
        for i in ids {
            let r = cs[i].try_read_response(false).unwrap_or_else(|e| panic!("connection {i} of {n}: {e}"));
            let target = format!("/c/{i}");
            assert_eq!(r.status, 200, "connection {i}: {}", r.head_str());
            assert_eq!(r.body, target.as_bytes(), "connection {i} got another's response");
            assert!(!r.has_token("connection", "close"), "connection {i}: {}", r.head_str());
        }
    }
    let answered = t0.elapsed();
    // Every client connection is still open in Apex, all at the same time.
    let held = sockets_of(apex.pid());
    assert!(held > n, "apex holds {held} sockets with {n} keep-alive clients connected");
    let (rss_after, hwm) = (vm_rss_kib(apex.pid()), apex.vm_hwm_kib());
    drop(cs);
    let left = wait_sockets_at_most(apex.pid(), 2 + 2 * 64 + 10, Duration::from_secs(10));
    assert!(left <= 2 + 2 * 64 + 10, "apex still holds {left} sockets after {n} clients closed");
    assert_eq!(up.answered(), n);
    let rss_closed = vm_rss_kib(apex.pid());
    eprintln!(
        "{n} connections: connected in {connected:?}, all answered by {answered:?}; apex held {held} sockets; \
         RSS {rss_start} KiB at start, {rss_idle} KiB with {n} new connections, {rss_after} KiB with them idle \
         after a request each, VmHWM {hwm} KiB, {rss_closed} KiB after they closed; origin accepted {} \
         connections; {left} sockets left after the close",
        up.accepts.load(SeqCst)
    );
}

// ---------------------------------------------------------------- 7: bounded send buffers

/// With `client_send_buffer` set, a client that never reads a 1 MiB response cannot park it in
/// an autotuned kernel buffer: Apex's write stalls, client_send fires, the connection closes
/// long before client_idle would have.
#[test]
fn client_send_buffer_lets_client_send_cut_a_stalled_reader() {
    let _g = heavy();
    let up = FastUp::start();
    let apex = Apex::start(
        &Config::to(up.addr)
            .workers(1)
            .timeout("client_send", "500ms")
            .timeout("client_idle", "60s")
            .limit("client_send_buffer", "\"64KiB\""),
    );
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&apex.addr.into()).unwrap();
    let mut s: TcpStream = s.into();
    s.write_all(&get("h", "/big/stall")).unwrap();
    // Never read; wait past client_send (but far short of client_idle).
    thread::sleep(Duration::from_millis(2500));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(closed, "the stalled reader was not cut (read {got} bytes)");
    assert!(got < BIG, "the whole response was buffered ({got} bytes): the send buffer was not bounded");
    assert!(apex.stderr().contains("timeout in RespBody"), "{}", apex.stderr());
}

/// An idle keep-alive connection holds only its slot in the slab: no buffer, no exchange.
/// 3,000 clients each finish a request (ten at a time, so the buffer and exchange pools stay
/// small) and stay connected. The hot-path issue's budget is 0.5 KiB each (bench/run measures
/// that with 100 in flight); this asserts the design's own bound, 256 bytes: a 104-byte `Conn`
/// and its slab tag, with room for allocator slack. Before the exchange moved out of `Conn`
/// (408 bytes), this measured 399 bytes per connection.
#[test]
fn idle_keep_alive_connection_holds_only_its_slab_slot() {
    let _g = heavy();
    const N: usize = 3_000;
    let soft = raise_nofile(2 * N as u64 + 500);
    assert!(soft as usize >= 2 * N + 200, "RLIMIT_NOFILE {soft} is too low for this test");
    let up = FastUp::start();
    let apex = Apex::start(&Config::to(up.addr).workers(1).limit("connections", "10000"));
    let mut warm = apex.client();
    for i in 0..20 {
        assert_eq!(warm.request(&get("h", &format!("/w/{i}"))).status, 200);
    }
    let before = vm_rss_kib(apex.pid());
    let mut cs: Vec<Client> = Vec::with_capacity(N);
    for batch in 0..N / 10 {
        let mut group: Vec<Client> = (0..10).map(|_| apex.client()).collect();
        for (i, c) in group.iter_mut().enumerate() {
            c.send(&get("h", &format!("/i/{batch}/{i}")));
        }
        for c in &mut group {
            assert_eq!(c.read_response().status, 200);
        }
        cs.extend(group);
    }
    thread::sleep(ms(200));
    let after = vm_rss_kib(apex.pid());
    let per_conn = (after.saturating_sub(before)) as f64 * 1024.0 / N as f64;
    eprintln!("{N} idle keep-alive connections: RSS {before} -> {after} KiB, {per_conn:.0} bytes each");
    assert!(per_conn < 256.0, "{per_conn:.0} bytes of RSS per idle connection (bound 256)");
    drop(cs);
}
