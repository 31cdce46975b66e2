//! One worker: an epoll loop (sockets registered through mio, waited on directly) over its own
//! listeners, a slab of client connections, its upstream pool and its timers. Workers share
//! nothing but the config snapshot.
//!
//! Tokens: a client connection is `key << 1`, an upstream connection `key << 1 | 1`, listener
//! `i` is `usize::MAX - i`. Slab keys are reused; a stale event for a reused slot only makes the
//! new owner try a syscall that returns `WouldBlock` (see `transport.rs`), so no generation is needed.
//!
//! Timers: every connection has one deadline. A sweep walks the slab when the earliest armed
//! deadline is due (at most every `SWEEP_MAX_MS`, at least `SWEEP_MIN_MS` apart); arming a
//! deadline is O(1) and allocates nothing.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bumpalo::Bump;
use mio::net::TcpListener;
use mio::{Interest, Poll, Token};
use rustix::event::epoll;
use rustix::io::Errno;
use slab::Slab;

use crate::buf::{BufPool, FreeList};
use crate::config::Config;
use crate::conn::{ClientKey, Conn, Cx, Exchange, Fault, Phase, is_fd_exhaustion};
use crate::limits::{
    ARENA_BYTES, EVENTS_CAPACITY, SWEEP_MAX_MS, SWEEP_MIN_MS, TLS_BUFS_PREALLOC, TLS_SESSIONS_PER_WORKER,
};
use crate::log::Level;
use crate::metrics::{CloseWhy, WorkerMetrics};
use crate::upstream::{UpKey, Upstreams};

/// Wakes a worker from `poll` (drain, reload). Even and far above any slab key.
const WAKE_TOKEN: usize = usize::MAX / 2 - 1;

/// Room for what one `epoll_wait` returns (`EVENTS_CAPACITY` events), made once by the thread
/// that runs the worker (an event's data may be a pointer, so the buffer stays on its thread).
pub struct Events(Vec<epoll::Event>);

impl Events {
    pub fn new() -> Self {
        let none = epoll::Event { flags: epoll::EventFlags::empty(), data: epoll::EventData::new_u64(0) };
        Events(vec![none; EVENTS_CAPACITY])
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

/// Lines about connections that ended on a fault or ran out of turns, per worker per second;
/// past that they are counted, and the count goes out with the next line let through.
const FAULT_LINES_PER_S: u32 = 10;

/// Rate-limits the fault lines of one worker, so that a flood of broken connections costs a
/// few lines a second, never a disk.
struct Throttle {
    window: Instant,
    lines: u32,
    held: u64,
}

impl Throttle {
    /// Whether a line may go out now, and how many were held back before it.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.lines = 0;
        }
        if self.lines >= FAULT_LINES_PER_S {
            self.held += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.held))
    }
}

pub struct Worker {
    poll: Poll,
    waker: Arc<mio::Waker>,
    listeners: Vec<TcpListener>,
    /// Listeners from this index on are TLS.
    plain_listeners: usize,
    /// Per plain listener: its requests get a redirect to HTTPS.
    redirects: Vec<bool>,
    /// The TLS server config for this worker: the snapshot's, with a session cache of its own so
    /// workers never share (and contend on) one. Rebuilt when the snapshot changes.
    tls: Option<(Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>)>,
    conns: Slab<Conn>,
    cx: Cx,
    accept_paused: bool,
    /// Set by a binary upgrade before `drain`: the drain then keeps idle keep-alive connections
    /// (see `start_drain`).
    handover: Option<Arc<AtomicBool>>,
    /// This drain closes idle keep-alive connections (a shutdown), or leaves them to their next
    /// request or their `client_idle` (a handover).
    close_idle: bool,
    /// Client connections the open-file limit allows this worker (see `fd_cap`).
    fd_cap: usize,
    /// Connections that ran out of turns with work left; stepped again after this batch.
    again: Vec<usize>,
    again_now: Vec<usize>,
    expired: Vec<usize>,
    faults: Throttle,
}

impl Worker {
    pub fn new(
        shared: Arc<ArcSwap<Config>>,
        listeners: Vec<std::net::TcpListener>,
        log: crate::log::WorkerLog,
    ) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Arc::new(mio::Waker::new(&registry, Token(WAKE_TOKEN))?);
        let cfg = shared.load_full();
        let cap = cfg.limits.connections;
        let mut ls = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.into_iter().enumerate() {
            l.set_nonblocking(true)?;
            let mut l = TcpListener::from_std(l);
            registry.register(&mut l, Token(usize::MAX - i), Interest::READABLE)?;
            ls.push(l);
        }
        // Listeners are bound in config order, plain first (`bind_all`).
        let redirects: Vec<bool> =
            cfg.listen.iter().map(|a| cfg.tls.as_ref().is_some_and(|t| t.redirect_http.contains(a))).collect();
        let https_port = ls.get(cfg.listen.len()).and_then(|l| l.local_addr().ok()).map_or(443, |a| a.port());
        let uses_tls = cfg.tls.is_some() || cfg.server_tls.iter().any(Option::is_some);
        let arena = Bump::with_capacity(ARENA_BYTES);
        arena.set_allocation_limit(Some(ARENA_BYTES));
        let now_ns = crate::clock::now_ns();
        let metrics = crate::metrics::WorkerMetrics::new();
        let mut ups = Upstreams::new(&cfg, cap + cfg.servers.len() * cfg.limits.upstream_idle_per_server);
        ups.metrics = Arc::clone(&metrics);
        let mut tls_bufs = crate::tls::TlsBufPool::new(if uses_tls { TLS_BUFS_PREALLOC } else { 0 });
        tls_bufs.metrics = Arc::clone(&metrics);
        Ok(Worker {
            poll,
            waker,
            listeners: ls,
            plain_listeners: cfg.listen.len(),
            redirects,
            tls: None,
            conns: Slab::with_capacity(cap),
            cx: Cx {
                now_ns,
                origin_ns: crate::clock::origin_ns(),
                cfg,
                published: arc_swap::Cache::new(shared),
                draining: false,
                registry,
                bufs: BufPool::new(64),
                exchanges: FreeList::new(64, || Box::new(Exchange::new())),
                arena,
                ups,
                pipes: crate::splice::PipePool::new(),
                // Sized at start like the plain pool when anything speaks TLS (18.5 KiB each).
                tls_bufs,
                https_port,
                log,
                recs: Slab::with_capacity(cap),
                next_sweep: now_ns.saturating_add(SWEEP_MAX_MS * 1_000_000),
                fd_freed: false,
                metrics,
                ids: crate::rules::Ids::from_os(),
                rates: crate::per_ip::AddrTable::new(crate::limits::RATE_SLOTS),
                conns_per_ip: crate::per_ip::AddrTable::new(
                    (cap * crate::limits::CONN_SLOTS_PER_CONN).min(crate::limits::CONN_SLOTS_MAX),
                ),
            },
            accept_paused: false,
            handover: None,
            close_idle: true,
            fd_cap: usize::MAX,
            again: Vec::with_capacity(cap),
            again_now: Vec::with_capacity(cap),
            expired: Vec::with_capacity(cap),
            faults: Throttle { window: crate::clock::instant(now_ns), lines: 0, held: 0 },
        })
    }

    /// Caps this worker's client connections below what the open-file limit allows, so that
    /// every accepted client can also get its upstream connection (see `server::fd_cap`).
    pub fn set_fd_cap(&mut self, cap: usize) {
        self.fd_cap = cap.max(1);
    }

    /// A flag the main thread sets before `drain` when another process has taken over the
    /// listeners (a binary upgrade).
    pub fn set_handover(&mut self, flag: Arc<AtomicBool>) {
        self.handover = Some(flag);
    }

    /// This worker's counters, for the admin thread.
    pub fn metrics(&self) -> Arc<WorkerMetrics> {
        Arc::clone(&self.cx.metrics)
    }

    /// Lets another thread interrupt this worker's `poll`.
    pub fn waker(&self) -> Arc<mio::Waker> {
        Arc::clone(&self.waker)
    }

    /// Runs until `drain` is set and every connection has finished its exchange.
    pub fn run(&mut self, drain: &AtomicBool) -> io::Result<()> {
        let mut events = Events::new();
        loop {
            if drain.load(Ordering::Relaxed) && !self.cx.draining {
                self.start_drain();
            }
            if self.cx.draining && self.conns.is_empty() {
                self.cx.log.flush();
                return Ok(());
            }
            self.turn(&mut events)?;
        }
    }

    /// Stop accepting (closing the listeners, so new connections are refused), close idle
    /// keep-alive connections; the rest close after their current exchange.
    ///
    /// After a handover (binary upgrade) the listeners live on in the new process, so closing
    /// ours refuses nothing. Idle keep-alive connections are then not closed at once: a client
    /// may have its next request on the wire, and a close would reset it. Each is answered once
    /// more, with `Connection: close`, or closed by its own `client_idle` (or `shutdown`).
    fn start_drain(&mut self) {
        self.cx.draining = true;
        self.close_idle = !self.handover.as_ref().is_some_and(|h| h.load(Ordering::SeqCst));
        for mut l in self.listeners.drain(..) {
            let _ = self.cx.registry.deregister(&mut l);
        }
        if !self.close_idle {
            return;
        }
        self.expired.clear();
        for (key, c) in self.conns.iter() {
            if c.is_idle() && self.expired.len() < self.expired.capacity() {
                self.expired.push(key);
            }
        }
        while let Some(key) = self.expired.pop() {
            self.close_for(key, CloseWhy::Drain);
        }
    }

    /// One poll and everything it made ready.
    pub fn turn(&mut self, events: &mut Events) -> io::Result<()> {
        self.turn_capped(events, u64::MAX)
    }

    /// `turn`, waiting in `poll` at most `max_wait` (tests and fuzzing drive a worker by hand).
    pub fn turn_within(&mut self, events: &mut Events, max_wait: Duration) -> io::Result<()> {
        self.turn_capped(events, crate::conn::nanos(max_wait))
    }

    /// A turn waiting at most `cap_ns` nanoseconds (u64::MAX: no cap, `turn`'s, so that the
    /// worker's own loop converts no `Duration` per turn).
    fn turn_capped(&mut self, events: &mut Events, cap_ns: u64) -> io::Result<()> {
        // From the batch's clock, not a fresh one: the sweep may come one batch's work late,
        // well inside its own granularity (`SWEEP_MIN_MS`), and a turn reads the clock once.
        let timeout_ns =
            if self.again.is_empty() { self.cx.next_sweep.saturating_sub(self.cx.now_ns).min(cap_ns) } else { 0 };
        // epoll_wait on mio's epoll fd, straight (rustix's raw syscall): mio's `poll` goes through
        // glibc's cancellation wrapper and rounds the timeout in u128, about 45 instructions a
        // call more (issue #21). Registration stays mio's, and so does the meaning of the flags
        // (`Io::on_event` reads them as mio's `Event` does); a token is the u64 mio registered.
        // No deadline and no limit (`turn`): wait for an event.
        let wait = (timeout_ns != u64::MAX).then_some(rustix::time::Timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as i64,
            tv_nsec: (timeout_ns % 1_000_000_000) as i64,
        });
        let ready = match epoll::wait(self.poll.registry(), &mut events.0[..], wait.as_ref()) {
            Ok(n) => n,
            Err(Errno::INTR) => 0,
            Err(e) => return Err(e.into()),
        };
        self.cx.set_now();
        // One snapshot per batch (and again per request head: `Cx::refresh`).
        self.cx.refresh();

        for i in 0..ready {
            let Some(&ev) = events.0.get(i) else { break };
            let (t, ev) = (ev.data.u64() as usize, ev.flags);
            if t == WAKE_TOKEN {
                continue;
            }
            if t > usize::MAX - self.listeners.len().max(1) {
                self.accept(usize::MAX - t);
            } else if t & 1 == 0 {
                let key = t >> 1;
                if let Some(c) = self.conns.get_mut(key) {
                    c.on_event(ev);
                    self.drive(key);
                }
            } else {
                let uk = UpKey::from_token(t);
                let owner = match self.cx.ups.get_mut(uk) {
                    Some(u) => {
                        u.io.on_event(ev);
                        u.owner
                    }
                    None => continue,
                };
                match owner {
                    Some(ClientKey(key)) => self.drive(key),
                    None => self.idle_check(uk),
                }
            }
        }

        // Connections stepped again (out of turns, or handed an fd): usually none, and then not
        // even the swap (six words moved each turn).
        if !self.again.is_empty() {
            std::mem::swap(&mut self.again, &mut self.again_now);
            while let Some(key) = self.again_now.pop() {
                if let Some(c) = self.conns.get_mut(key) {
                    c.queued = false;
                    self.drive(key);
                }
            }
        }

        if self.cx.now_ns >= self.cx.next_sweep {
            self.sweep();
        }
        if self.cx.log.pending() {
            let now = self.cx.now();
            if let Some(due) = self.cx.log.tick(now) {
                let due = self.cx.now_ns.saturating_add(crate::conn::nanos(due.saturating_duration_since(now)));
                if due < self.cx.next_sweep {
                    self.cx.next_sweep = due;
                }
            }
        }
        if self.accept_paused && self.cx.fd_freed {
            self.resume_accept();
        }
        self.cx.fd_freed = false;
        Ok(())
    }

    fn drive(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        match c.step(&mut self.cx, ClientKey(key)) {
            Ok(more) if !matches!(c.phase, Phase::Close) => {
                let starved = c.take_starved();
                let log_turns = more && !c.turns_logged;
                if (more || starved) && !c.queued {
                    c.queued = true;
                    self.again.push(key);
                }
                if log_turns {
                    self.out_of_turns(key);
                }
                if starved {
                    self.reclaim_fd(key);
                }
            }
            Ok(_) => self.close(key),
            Err(f) => self.fault(key, f),
        }
    }

    /// Closes a connection the worker itself ends, for `why`.
    fn close_for(&mut self, key: usize, why: CloseWhy) {
        if let Some(c) = self.conns.try_remove(key) {
            c.close(&mut self.cx, ClientKey(key), Some(why));
        }
    }

    /// Not an error (a long body can use its turns), but a connection that keeps doing so is
    /// worth seeing: once per connection.
    #[cold]
    fn out_of_turns(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else { return };
        c.turns_logged = true;
        let (peer, phase) = (c.peer(), c.phase.name());
        let what = format_args!("used its turns in {phase}; stepped again after other work");
        log_fault(&mut self.cx, &mut self.faults, peer, Level::Info, what);
    }

    /// A connection's step failed: says so (rate-limited), then closes it.
    #[cold]
    fn fault(&mut self, key: usize, f: Fault) {
        if let Some(c) = self.conns.get(key) {
            let (peer, phase) = (c.peer(), c.phase.name());
            let (level, cause) = match f {
                Fault::Client => (Level::Info, "the client's socket failed"),
                Fault::Upstream => (Level::Info, "the upstream's socket failed"),
                Fault::Internal(what) => (Level::Error, what.as_str()),
                Fault::Proxy(e) => (Level::Info, e.as_str()),
                Fault::PerIp => (Level::Info, "limits.connections_per_ip reached: refused"),
            };
            log_fault(&mut self.cx, &mut self.faults, peer, level, format_args!("closed in {phase}: {cause}"));
        }
        self.close_for(key, CloseWhy::Error);
    }

    /// Out of fds while a request needs an upstream connection: close an idle pooled upstream
    /// connection, else an idle keep-alive client (not `except`), so the request can proceed.
    /// Rare (fd exhaustion only), so a scan is fine.
    fn reclaim_fd(&mut self, except: usize) {
        if self.cx.ups.close_one_idle() {
            return;
        }
        let victim = self.conns.iter().find(|(k, c)| *k != except && c.is_idle()).map(|(k, _)| k);
        if let Some(k) = victim {
            self.close_for(k, CloseWhy::Reclaimed);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(c) = self.conns.try_remove(key) {
            c.close(&mut self.cx, ClientKey(key), None);
        }
    }

    /// An idle pooled upstream connection had an event: unless it was spurious, the upstream
    /// closed it or sent bytes nobody asked for. Either way it is no longer usable.
    fn idle_check(&mut self, uk: UpKey) {
        let Some(u) = self.cx.ups.get_mut(uk) else {
            return;
        };
        if !u.io.readable && !u.io.hup {
            return;
        }
        if let Some(t) = u.tls.as_deref_mut() {
            // TLS records on an idle connection may be the server's KeyUpdate or a late session
            // ticket: handled (and answered) by the record layer, the connection stays pooled.
            // Application data or a close means it is no longer usable.
            let mut scratch = self.cx.bufs.take();
            let r = t.read(&u.sock, &mut u.io, &mut self.cx.tls_bufs, &mut scratch);
            let keep = matches!(r, Ok(crate::transport::Filled::Idle)) && scratch.is_empty();
            self.cx.bufs.give(scratch);
            if !keep {
                self.cx.ups.close(uk);
                self.cx.fd_freed = true;
            }
            return;
        }
        let mut scratch = [0u8; 64];
        match (&u.sock).read(&mut scratch) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !u.io.hup => u.io.readable = false,
            _ => {
                self.cx.ups.close(uk);
                self.cx.fd_freed = true;
            }
        }
    }

    fn accept(&mut self, li: usize) {
        let mut errors = 0;
        loop {
            if self.conns.len() >= self.cx.cfg.limits.connections.min(self.fd_cap) {
                // At the limit: stop; a closing connection resumes us. The kernel queues the rest.
                self.accept_paused = true;
                return;
            }
            let Some(l) = self.listeners.get(li) else {
                return;
            };
            match l.accept() {
                Ok((mut sock, peer)) => {
                    let proxy_wait = self.expects_proxy(li);
                    if proxy_wait && !self.proxy_trusted(peer) {
                        // Only trusted balancers may name a client; anyone else could forge one
                        // (HAProxy's accept-proxy, restricted). Closed unread.
                        let what = format_args!("not in proxy_protocol.trusted on a PROXY listener: refused");
                        log_fault(&mut self.cx, &mut self.faults, peer, Level::Info, what);
                        continue;
                    }
                    let Some(counted) = self.count_peer(peer, proxy_wait) else {
                        // Over `connections_per_ip`: closed unread, without a byte.
                        let what = format_args!("limits.connections_per_ip reached: refused at accept");
                        log_fault(&mut self.cx, &mut self.faults, peer, Level::Info, what);
                        continue;
                    };
                    let tls = if li >= self.plain_listeners {
                        // A TLS client on a config without TLS (cannot happen: reload refuses
                        // listener changes) is closed.
                        let Some(cfg) = self.tls_config() else { continue };
                        match crate::tls::Tls::server(cfg) {
                            Ok(t) => Some(Box::new(t)),
                            Err(_) => continue,
                        }
                    } else {
                        None
                    };
                    let _ = sock.set_nodelay(true);
                    let sndbuf = self.cx.cfg.limits.client_send_buffer;
                    if sndbuf > 0 {
                        // Bounds what a client that stops reading can park in the kernel, and
                        // lets client_send see it stall (autotuning grows to several MiB).
                        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&sock, sndbuf);
                    }
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if self
                        .cx
                        .registry
                        .register(&mut sock, ClientKey(key).token(), Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        continue;
                    }
                    let redirect = self.redirects.get(li).copied().unwrap_or(false);
                    if let Some(a) = self.cx.metrics.accepted.get(usize::from(tls.is_some())) {
                        a.inc();
                    }
                    entry.insert(Conn::new(sock, peer, tls, redirect, proxy_wait, counted, &mut self.cx));
                    self.drive(key);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_fd_exhaustion(&e) => {
                    // EMFILE/ENFILE: an edge-triggered listener will not tell us again, so retry
                    // when one of our fds closes, or at the next sweep. Never spin.
                    self.accept_paused = true;
                    return;
                }
                Err(_) => {
                    errors += 1;
                    if errors > 64 {
                        return;
                    }
                }
            }
        }
    }

    /// Whether listener `li` is in `[proxy_protocol] listeners`: its address as configured
    /// (plain ones first, then TLS, the order `bind_all` binds them in).
    fn expects_proxy(&self, li: usize) -> bool {
        let cfg = &self.cx.cfg;
        let Some(p) = &cfg.proxy else { return false };
        let addr = match li.checked_sub(self.plain_listeners) {
            None => cfg.listen.get(li),
            Some(t) => cfg.tls.as_ref().and_then(|tls| tls.listen.get(t)),
        };
        addr.is_some_and(|a| p.listeners.contains(a))
    }

    /// `limits.connections_per_ip` at accept: `None` over the limit, else whether it was
    /// counted. A PROXY listener's peer is a balancer (the header's client is counted when it
    /// is read, `proxied.rs`), and a peer in `trusted_proxies` carries many clients' requests:
    /// neither is counted.
    fn count_peer(&mut self, peer: SocketAddr, proxy_wait: bool) -> Option<bool> {
        let max = self.cx.cfg.limits.connections_per_ip;
        if max == 0 || proxy_wait || crate::cidr::any_contains(&self.cx.cfg.trusted_proxies, peer.ip()) {
            return Some(false);
        }
        match self.cx.conns_per_ip.open(peer.ip(), max) {
            crate::per_ip::Open::Over => None,
            crate::per_ip::Open::Counted => Some(true),
            crate::per_ip::Open::Uncounted => Some(false),
        }
    }

    fn proxy_trusted(&self, peer: SocketAddr) -> bool {
        self.cx.cfg.proxy.as_ref().is_some_and(|p| crate::cidr::any_contains(&p.trusted, peer.ip()))
    }

    /// This worker's TLS config for the current snapshot (see `Worker::tls`).
    fn tls_config(&mut self) -> Option<Arc<rustls::ServerConfig>> {
        let shared = &self.cx.cfg.tls.as_ref()?.server;
        match &self.tls {
            Some((from, mine)) if Arc::ptr_eq(from, shared) => Some(Arc::clone(mine)),
            _ => {
                let mut mine = rustls::ServerConfig::clone(shared);
                mine.session_storage = rustls::server::ServerSessionMemoryCache::new(TLS_SESSIONS_PER_WORKER);
                let mine = Arc::new(mine);
                self.tls = Some((Arc::clone(shared), Arc::clone(&mine)));
                Some(mine)
            }
        }
    }

    fn resume_accept(&mut self) {
        self.accept_paused = false;
        for li in 0..self.listeners.len() {
            self.accept(li);
        }
    }

    /// The gauges (client connections by phase, upstream connections idle and active), from
    /// the slabs as they are: once per sweep, not per request.
    fn publish_gauges(&self) {
        let mut states = [0u64; crate::metrics::STATE_NAMES.len()];
        for (_, c) in self.conns.iter() {
            if let Some(n) = states.get_mut(c.phase.index()) {
                *n += 1;
            }
        }
        for (g, n) in self.cx.metrics.states.iter().zip(states) {
            g.set(n);
        }
        self.cx.ups.publish_gauges();
    }

    fn sweep(&mut self) {
        let now = self.cx.now_ns;
        let mut next = now.saturating_add(SWEEP_MAX_MS * 1_000_000);
        self.expired.clear();
        for (key, c) in self.conns.iter() {
            if c.deadline <= now {
                if self.expired.len() < self.expired.capacity() {
                    self.expired.push(key);
                }
            } else if c.deadline < next {
                next = c.deadline;
            }
        }
        // Deadlines armed while the expired connections are handled lower this further.
        self.cx.next_sweep = next;
        while let Some(key) = self.expired.pop() {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            match c.on_timeout(&mut self.cx, ClientKey(key)) {
                Ok(()) if !matches!(c.phase, Phase::Close) => self.drive(key),
                Ok(()) => self.close(key),
                Err(f) => self.fault(key, f),
            }
        }
        if let Some(t) = self.cx.ups.sweep(now) {
            next = next.min(t);
        }
        self.publish_gauges();
        self.cx.next_sweep = self.cx.next_sweep.min(next).max(now.saturating_add(SWEEP_MIN_MS * 1_000_000));
        if self.cx.draining && self.close_idle {
            // Connections that went idle since: nothing more will come on them.
            for (key, c) in self.conns.iter() {
                if c.is_idle() && self.expired.len() < self.expired.capacity() {
                    self.expired.push(key);
                }
            }
            while let Some(key) = self.expired.pop() {
                self.close_for(key, CloseWhy::Drain);
            }
        }
        if self.accept_paused {
            self.resume_accept();
        }
    }
}

/// One fault line through the worker's throttle, with the count of lines it held back before.
fn log_fault(cx: &mut Cx, throttle: &mut Throttle, peer: SocketAddr, level: Level, what: std::fmt::Arguments) {
    let now = cx.now();
    match throttle.admit(now) {
        Some(0) => cx.log.event(now, level, format_args!("client {peer}: {what}")),
        Some(held) => {
            cx.log.event(now, level, format_args!("client {peer}: {what} (and {held} more such lines held back)"))
        }
        None => {}
    }
}

/// Binds every listen address once per worker with SO_REUSEPORT, so each worker has its own
/// accept queue. Port 0 is resolved by the first bind and reused by the others.
/// Returns the bound addresses and, per worker, its listeners (see `listen::bind_all`).
pub fn bind_all(cfg: &Config) -> io::Result<(Vec<SocketAddr>, Vec<Vec<std::net::TcpListener>>)> {
    crate::listen::bind_all(cfg, &mut crate::listen::Inherited::none())
}
