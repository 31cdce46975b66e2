//! One client connection and the upstream exchange it drives: the state machine.
//!
//! ```text
//!            +------------------------------ (keep-alive) ------------------------------+
//!            v                                                                          |
//!  accept -> ReadHead --route--> Connect --pooled--------------> Exchange(up) --head--> RespBody(up)
//!            |    |                 |   ^  \--open--> Opening(up) ---------up--^   |     |  |
//!            |    |                 |   +----- failed / timed out ------+        |   |     |  |
//!            |    |                 |   +------------- retry (RFC 9110 §9.2.2) --+   |     |  |
//!            |    |                 |                           101 --> Tunnel(up) --+--> Close
//!            |    +-- 400/404/308 --+--- 502/504 ----+------ 502/504 ------+          |     |
//!            |                                        v                              v     |
//!            +--- EOF, drain -----------------> Respond (Apex's own answer, or ------------+
//!                                                   |     what is left of a response)
//!                                                   +--> ReadHead (keep-alive) | Linger --> Close
//! ```
//! A response whose whole body came with its head (the common short one) ends in `Exchange`
//! (`body.rs`: `whole_body`), which goes to `ReadHead` or `Respond` as `RespBody` would (or to
//! `Close` on chunked framing that is not).
//!
//! Only `enter` assigns `self.phase`; it is called from `run` (after a phase function returned
//! `Next::Go`) and from `on_timeout`, and it `debug_assert!`s every (from, to) pair against
//! `allowed`. A phase that needs an upstream connection carries its key (`UpKey`), so it cannot
//! exist without one; the connection is pooled or closed before the phase that held it is left
//! (`enter` asserts that too, and closes it in release builds rather than leak it).
//!
//! Each phase function does one bounded round of work and returns `Next::Again` (made progress,
//! run again), `Next::Wait` (blocked on I/O or a timer) or `Next::Go(phase)`. The request body
//! keeps flowing upstream during `RespBody` (an upstream may answer before it has read
//! everything); the exchange ends when the response has ended, and a request body not fully sent
//! by then closes the client connection after the response.
//!
//! Buffers: `cin` (client bytes: heads, bodies, pipelined requests), `uout` (what goes upstream),
//! `uin` (upstream bytes), `cout` (what goes to the client). Taken from the worker's pool when
//! bytes arrive, given back when empty at the end of an exchange.
//!
//! Files: `head.rs` reads, routes and answers requests and writes heads; `connect.rs` finds the
//! upstream connection; `body.rs` moves bodies and ends the exchange; `tunnel.rs` relays after a
//! 101; `exchange.rs` holds the per-request bookkeeping; `account.rs` writes an exchange's
//! access-log line and counts it.

mod account;
mod body;
mod connect;
mod exchange;
mod head;
mod proxied;
mod tunnel;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bumpalo::Bump;
use mio::net::TcpStream;
use mio::{Registry, Token};
use slab::Slab;

use crate::buf::{Buf, BufPool, FreeList};
use crate::config::{Config, Timeout};
use crate::limits::{LINGER_MS, STEP_TURNS_MAX};
use crate::log::{Level, Rec, WorkerLog};
use crate::metrics::{CloseWhy, Reject, WorkerMetrics};
use crate::splice::PipePool;
use crate::tls::{Tls, TlsBufPool};
use crate::transport::{End, Filled, Io};
use crate::upstream::{UpConn, UpKey, Upstreams};

pub use exchange::Exchange;
use exchange::{EndedBy, FdReclaim};

/// What a worker lends a connection while it steps.
pub struct Cx {
    /// The batch's clock: nanoseconds since the process's epoch (`clock::now_ns`, read by
    /// `Cx::set_now`). Deadlines are kept in this unit: an integer add and compare, where
    /// `Instant + Duration` and `saturating_duration_since` cost ~30 instructions each (a
    /// connection arms about seven deadlines per request). `now()` is it as an `Instant`.
    pub now_ns: u64,
    /// `clock::origin_ns`, read once.
    pub origin_ns: u64,
    pub cfg: Arc<Config>,
    /// The published config, read through arc-swap's `Cache`: while nothing was published, a
    /// check is one atomic load and a compare (a full `load` was ~37 instructions).
    pub published: arc_swap::Cache<Arc<arc_swap::ArcSwap<Config>>, Arc<Config>>,
    /// Shutting down: no new requests; every connection closes after its current exchange.
    pub draining: bool,
    pub registry: Registry,
    pub bufs: BufPool,
    pub exchanges: FreeList<Exchange>,
    pub arena: Bump,
    pub ups: Upstreams,
    pub pipes: PipePool,
    /// Record buffers for TLS clients.
    pub tls_bufs: TlsBufPool,
    /// The port redirects to HTTPS point at: this worker's first TLS listener's.
    pub https_port: u16,
    pub log: WorkerLog,
    /// Request fields kept for the access log while their request is in flight.
    pub recs: Slab<Rec>,
    /// Earliest deadline armed since the last sweep (on `now_ns`'s clock).
    pub next_sweep: u64,
    /// An fd was closed: a paused accept loop may resume.
    pub fd_freed: bool,
    /// This worker's counters (the admin thread reads them).
    pub metrics: Arc<WorkerMetrics>,
    /// This worker's request ids (X-Request-Id, `$request_id`).
    pub ids: crate::rules::Ids,
    /// Routes' `rate` buckets per client address (`per_ip`).
    pub rates: crate::per_ip::AddrTable,
    /// Open connections per client address, for `limits.connections_per_ip`.
    pub conns_per_ip: crate::per_ip::AddrTable,
}

impl Cx {
    /// Adopts the published config if a reload replaced it. The worker calls this once per batch
    /// of events, and `await_head` each time it reads head bytes, so that a request whose bytes
    /// arrive after a reload has completed is routed by the new config even when it is read in a
    /// batch that began before the swap.
    #[inline]
    pub fn refresh(&mut self) {
        if !std::ptr::eq(Arc::as_ptr(self.published.load()), Arc::as_ptr(&self.cfg)) {
            self.adopt();
        }
    }

    #[cold]
    fn adopt(&mut self) {
        // The old snapshot stays alive in the thread that installed the new one (and in
        // requests still running on it), so this never frees a config here.
        self.cfg = Arc::clone(self.published.load());
        self.ups.sync(&self.cfg);
    }

    /// Reads the batch's clock into `now_ns`.
    #[inline]
    pub fn set_now(&mut self) {
        self.now_ns = crate::clock::now_ns_from(self.origin_ns);
    }

    /// The batch's clock as an `Instant`, for what keeps `Instant`s (the log's timers, per-IP
    /// rates); the request path reads `now_ns` or `now_ms`.
    pub fn now(&self) -> Instant {
        crate::clock::instant(self.now_ns)
    }

    /// The batch's clock in milliseconds since the process's epoch: `Health`'s unit.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.now_ns / 1_000_000
    }

    /// A deadline `t` from now, on `now_ns`'s clock; the sweep is brought forward to it.
    fn arm(&mut self, t: Timeout) -> u64 {
        let at = self.now_ns.saturating_add(t.nanos());
        if at < self.next_sweep {
            self.next_sweep = at;
        }
        at
    }
}

/// `d` in nanoseconds, saturating: u64 nanoseconds span 584 years, so only a timeout
/// configured near `Duration::MAX` saturates, and it never fires either way.
#[inline]
pub fn nanos(d: Duration) -> u64 {
    d.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(d.subsec_nanos()))
}

/// A client connection's key in the worker's slab; its epoll token is `key << 1`. A type of its
/// own so that it cannot be mixed up with an upstream connection's key (`UpKey`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientKey(pub usize);

impl ClientKey {
    pub const fn token(self) -> Token {
        Token(self.0 << 1)
    }
}

/// Where a connection is, and what that phase owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading a request head, or idle between requests.
    ReadHead,
    /// Finding an upstream connection for the routed request: pick a server, then take a
    /// pooled connection to it or open one.
    Connect,
    /// A new connection to the picked server: TCP connect, then the TLS handshake if any.
    Opening(UpKey),
    /// The request going out on `up`, its response head coming in.
    Exchange(UpKey),
    /// The response body coming back on `up`; the request body may still be going out.
    RespBody(UpKey),
    /// After a 101: bytes both ways between the client and `up`.
    Tunnel(UpKey),
    /// Writing what is queued for the client (Apex's own answer, or the end of a response);
    /// then the next request, or a lingering close.
    Respond,
    /// Write side shut: reading and discarding until the client closes or `LINGER_MS`.
    Linger,
    Close,
}

impl Phase {
    /// The phase's name, for logs: what an operator reads, without slab keys.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::ReadHead => "ReadHead",
            Phase::Connect | Phase::Opening(_) => "Connect",
            Phase::Exchange(_) => "Exchange",
            Phase::RespBody(_) => "RespBody",
            Phase::Tunnel(_) => "Tunnel",
            Phase::Respond => "Respond",
            Phase::Linger => "Linger",
            Phase::Close => "Close",
        }
    }

    /// Its index in `metrics::STATE_NAMES` (the connections-by-state gauges).
    pub const fn index(self) -> usize {
        match self {
            Phase::ReadHead => 0,
            Phase::Connect | Phase::Opening(_) => 1,
            Phase::Exchange(_) => 2,
            Phase::RespBody(_) => 3,
            Phase::Tunnel(_) => 4,
            Phase::Respond => 5,
            Phase::Linger => 6,
            Phase::Close => 7,
        }
    }

    /// The upstream connection this phase holds.
    pub const fn up(self) -> Option<UpKey> {
        match self {
            Phase::Opening(up) | Phase::Exchange(up) | Phase::RespBody(up) | Phase::Tunnel(up) => Some(up),
            Phase::ReadHead | Phase::Connect | Phase::Respond | Phase::Linger | Phase::Close => None,
        }
    }
}

/// The transitions the machine makes (the diagram above). A connection may close from anywhere.
fn allowed(from: Phase, to: Phase) -> bool {
    use Phase::*;
    match (from, to) {
        (_, Close) => true,
        (ReadHead, Connect | Respond | Linger) => true,
        // A new connection, a pooled one, or Apex's own 502/504 when no server is left.
        (Connect, Connect | Opening(_) | Exchange(_) | Respond) => true,
        // Up, or failed or timed out: back to picking the next server.
        (Opening(a), Exchange(b)) => a == b,
        (Opening(_), Connect) => true,
        (Exchange(a), RespBody(b) | Tunnel(b)) => a == b,
        (Exchange(_), Connect | Respond) => true, // a retry; Apex's own 502/504
        // The whole response came with its head (`whole_body`): as from `RespBody`.
        (Exchange(_), ReadHead) => true,
        (RespBody(_), ReadHead | Respond) => true,
        // ReadHead while draining with bytes still queued for the client becomes Respond.
        (Respond, ReadHead | Respond | Linger) => true,
        _ => false,
    }
}

pub(crate) enum Next {
    Again,
    Wait,
    Go(Phase),
}

/// Why a connection is being closed, for the error log and for which status was sent. One
/// byte of payload at most, so that a phase function's `Step` comes back in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Internal(Broken),
    /// A PROXY protocol header that is not one, or cut short (`proxied.rs`).
    Proxy(crate::proxy_proto::ProxyError),
    /// The address a PROXY header named already has `limits.connections_per_ip` open.
    PerIp,
}

/// A broken invariant, by what the code expected and did not find. Each is `debug_assert!`ed
/// where it is detected; a release build closes the connection and logs the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// A routed request without the config snapshot it was routed with.
    NoSnapshot,
    /// A phase holding an upstream key whose slot is empty.
    UpstreamSlot,
    /// A connection whose TCP connect completed for a TLS handshake, without TLS state.
    TlsSlot,
    /// A splice without the pipe it was given.
    RequestPipe,
    ResponsePipe,
    /// More server picks than a group has servers.
    ConnectLoop,
}

impl Broken {
    pub const fn as_str(self) -> &'static str {
        match self {
            Broken::NoSnapshot => "no config snapshot",
            Broken::UpstreamSlot => "upstream slot empty",
            Broken::TlsSlot => "tls state missing",
            Broken::RequestPipe => "request pipe missing",
            Broken::ResponsePipe => "response pipe missing",
            Broken::ConnectLoop => "connect loop overran",
        }
    }
}

pub struct Conn {
    sock: TcpStream,
    peer: SocketAddr,
    io: Io,
    pub phase: Phase,
    cin: Option<Buf>,
    cout: Option<Buf>,
    /// On `Cx::now_ns`'s clock.
    pub deadline: u64,
    /// On the worker's run-again list.
    pub queued: bool,
    /// Running out of turns has been logged for this connection (once is enough).
    pub turns_logged: bool,
    /// The request in progress, from the worker's pool: an idle keep-alive connection has none.
    rq: Option<Box<Exchange>>,
    /// A TLS client: bytes to and from the socket go through it (and never through a pipe).
    tls: Option<Box<Tls>>,
    /// Came in on a listener in `tls.redirect_http`: every request gets a 308 to HTTPS.
    redirect: bool,
    /// Who its client is, as far as the PROXY header and `connections_per_ip` go.
    admit: Admit,
    /// Why it entered `Close` (for the closed-connections counter).
    why: CloseWhy,
}

/// A connection's standing before its first request: one byte, not two flags, so that `Conn`
/// stays within its budget (`idle_connection_fits_budget`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Admit {
    /// Came in on a `[proxy_protocol]` listener and its header is not taken yet (`proxied.rs`).
    AwaitsProxyHeader,
    /// Counted in `Cx::conns_per_ip` under `peer`'s address (uncounted on close).
    Counted,
    /// Neither.
    Plain,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .field("phase", &self.phase)
            .field("io", &self.io)
            .field("cin", &self.cin)
            .field("cout", &self.cout)
            .field("tls", &self.tls.is_some())
            .field("rq", &self.rq)
            .finish_non_exhaustive()
    }
}

type Step = Result<Next, Fault>;

/// A phase that held `up` is left for one that does not: whoever left it pooled or closed the
/// connection first. One still attached is a broken invariant; never leak its fd.
fn leave_upstream(cx: &mut Cx, up: UpKey, key: ClientKey, from: Phase, to: Phase) {
    if cx.ups.owner(up) == Some(key) {
        debug_assert!(false, "{from:?} -> {to:?} left {up:?} attached");
        cx.ups.close(up);
        cx.fd_freed = true;
    }
}

/// The upstream connection a phase holds. The phase owns it, so its slot is there: a miss is a
/// broken invariant (a debug build stops; a release build closes the client connection).
fn up_conn(ups: &mut Upstreams, up: UpKey) -> Result<&mut UpConn, Fault> {
    let u = ups.get_mut(up);
    debug_assert!(u.is_some(), "a phase holds {up:?} but its slot is empty");
    u.ok_or(Fault::Internal(Broken::UpstreamSlot))
}

impl Conn {
    /// `proxy_wait`: a PROXY protocol header comes first, and names the client instead of `peer`.
    /// `counted`: the worker counted it in `conns_per_ip` under `peer`'s address.
    pub fn new(
        sock: TcpStream,
        peer: SocketAddr,
        tls: Option<Box<Tls>>,
        redirect: bool,
        proxy_wait: bool,
        counted: bool,
        cx: &mut Cx,
    ) -> Conn {
        let deadline = cx.arm(cx.cfg.timeouts.client_head);
        Conn {
            sock,
            peer,
            io: Io { readable: true, writable: true, hup: false },
            phase: Phase::ReadHead,
            cin: None,
            cout: None,
            deadline,
            queued: false,
            turns_logged: false,
            rq: None,
            tls,
            redirect,
            admit: match (proxy_wait, counted) {
                (true, _) => Admit::AwaitsProxyHeader,
                (false, true) => Admit::Counted,
                (false, false) => Admit::Plain,
            },
            why: CloseWhy::Client,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn on_event(&mut self, ev: rustix::event::epoll::EventFlags) {
        self.io.on_event(ev);
    }

    /// Whether the last step ran out of fds for an upstream connection (and hands the request
    /// its one reclaim); the worker frees one and steps this connection again.
    pub fn take_starved(&mut self) -> bool {
        let Some(rq) = self.rq.as_deref_mut() else { return false };
        if rq.fd != FdReclaim::Asked {
            return false;
        }
        rq.fd = FdReclaim::Done;
        true
    }

    /// Idle between requests, with nothing buffered either way: safe to close when draining.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::ReadHead)
            && self.cin.as_ref().is_none_or(Buf::is_empty)
            && self.cout.as_ref().is_none_or(Buf::is_empty)
    }

    /// Runs the state machine until it waits for I/O. Returns true if it stopped only because
    /// its turn budget ran out with work left (the worker steps it again after other work).
    pub fn step(&mut self, cx: &mut Cx, key: ClientKey) -> Result<bool, Fault> {
        let mut rq = self.rq.take().unwrap_or_else(|| cx.exchanges.take());
        let mut r = if self.admit == Admit::AwaitsProxyHeader {
            self.proxy_then_run(&mut rq, cx, key)
        } else {
            self.run(&mut rq, cx, key)
        };
        if let Err(Fault::Client) = r
            && self.tls_alerted()
        {
            r = self.linger_after_alert(&mut rq, cx, key);
        }
        self.park(rq, cx, r.is_ok());
        r
    }

    /// Our TLS sent the client a fatal alert, and the connection is not closing yet.
    #[cold]
    fn tls_alerted(&self) -> bool {
        !matches!(self.phase, Phase::Linger | Phase::Close) && self.tls.as_ref().is_some_and(|t| t.failed())
    }

    /// After a fatal TLS alert, from any phase: the exchange ends (its upstream connection
    /// closed) and the connection lingers as after an HTTP error (the write side shut, what the
    /// client still sends read and dropped for `LINGER_MS`), so a client still sending gets
    /// the alert rather than a reset (RFC 8446 §6.2 only asks that the connection close).
    #[cold]
    #[inline(never)]
    fn linger_after_alert(&mut self, rq: &mut Exchange, cx: &mut Cx, key: ClientKey) -> Result<bool, Fault> {
        self.drop_upstream(rq, cx);
        rq.close_after = true;
        self.enter(rq, Phase::Linger, cx, key);
        self.run(rq, cx, key)
    }

    /// Keeps the exchange while it holds or means anything; an idle connection gives it back.
    /// After a step that ended well in `ReadHead`, only the head scan can have touched it since
    /// it was reset (`enter` resets it on the way in; everything else a request sets comes with
    /// the step that leaves `ReadHead`): those fields are all that is looked at then. A step
    /// that failed may have stopped anywhere, so its exchange is looked at whole.
    fn park(&mut self, rq: Box<Exchange>, cx: &mut Cx, ok: bool) {
        let idle = matches!(self.phase, Phase::ReadHead)
            && if ok { rq.head_untouched() } else { rq.is_pristine() }
            && self.cin.as_ref().is_none_or(Buf::is_empty);
        debug_assert!(!idle || rq.is_pristine(), "an exchange given back holding something: {rq:?}");
        if idle {
            cx.exchanges.give(rq);
        } else {
            self.rq = Some(rq);
        }
    }

    fn run(&mut self, rq: &mut Exchange, cx: &mut Cx, key: ClientKey) -> Result<bool, Fault> {
        for _ in 0..STEP_TURNS_MAX {
            let next = match self.phase {
                Phase::ReadHead if self.nothing_to_read() => return Ok(false),
                Phase::ReadHead => self.read_head(rq, cx)?,
                Phase::Connect => self.connect(rq, cx, key)?,
                Phase::Opening(up) => apart(|| self.opening(rq, cx, up))?,
                Phase::Exchange(up) => self.exchange(rq, cx, up)?,
                Phase::RespBody(up) => self.resp_body(rq, cx, up)?,
                Phase::Tunnel(up) => apart(|| self.tunnel(rq, cx, up))?,
                Phase::Respond => apart(|| self.respond(rq, cx))?,
                Phase::Linger => apart(|| self.linger(cx))?,
                Phase::Close => return Ok(false),
            };
            match next {
                Next::Again => {}
                Next::Wait => return Ok(false),
                Next::Go(p) => self.enter(rq, p, cx, key),
            }
        }
        Ok(true)
    }

    /// Between requests, nothing buffered either way, and a plain socket drained (its last read
    /// was short): `read_head` would take a buffer, read nothing, give it back and wait. Waits
    /// for the client's next edge without that. A TLS client qualifies only when its session
    /// holds no bytes read or sealed (`Tls::is_quiet`): then its read and flush do nothing either.
    fn nothing_to_read(&self) -> bool {
        !self.io.readable
            && self.tls.as_deref().is_none_or(Tls::is_quiet)
            && self.cin.is_none()
            && self.cout.as_ref().is_none_or(Buf::is_empty)
    }

    /// The one place the phase changes: checks the transition, then runs the entry actions of
    /// the phase entered and arms its deadline.
    #[inline(always)]
    fn enter(&mut self, rq: &mut Exchange, to: Phase, cx: &mut Cx, key: ClientKey) {
        let from = self.phase;
        let to = if matches!(to, Phase::ReadHead) && cx.draining { self.drain_to(rq) } else { to };
        // Besides the table: a lingering close from anywhere after a fatal TLS alert.
        debug_assert!(
            allowed(from, to) || (to == Phase::Linger && self.tls_alerted()),
            "no transition {from:?} -> {to:?}"
        );
        // A phase entered with a key carries the one it came with (`allowed` checks it); the
        // others hold none, so whatever `from` held must have been pooled or closed.
        if let Phase::ReadHead | Phase::Connect | Phase::Respond | Phase::Linger | Phase::Close = to
            && let Some(up) = from.up()
        {
            leave_upstream(cx, up, key, from, to);
        }
        match to {
            Phase::ReadHead => {
                cx.bufs.release_if_empty(&mut self.cin);
                cx.bufs.release_if_empty(&mut self.cout);
                rq.clear(cx);
            }
            // Not after a cut response: RFC 8446 §6.1, close_notify says nothing was lost.
            Phase::Linger => self.client().shut_write(&mut cx.tls_bufs, !rq.resp_cut),
            _ => {}
        }
        let t = &cx.cfg.timeouts;
        let wait = match to {
            Phase::ReadHead => {
                // Pipelined bytes already waiting start the whole-head clock; otherwise idle.
                let has_bytes = self.cin.as_ref().is_some_and(|b| !b.is_empty());
                rq.head_timer = has_bytes;
                if has_bytes { t.client_head } else { t.client_idle }
            }
            // `connect` runs in the same pass and leaves `Connect` at once, except to wait for an
            // fd: it arms this deadline then (`connect`), not on every pick.
            Phase::Connect => {
                self.phase = to;
                return;
            }
            Phase::Opening(_) => t.upstream_connect,
            // The route's own values (PerRequest), set when the request was routed.
            Phase::Exchange(_) => {
                debug_assert!(rq.snap.is_some(), "exchanging an unrouted request");
                if rq.sent_all() { rq.per.upstream_head } else { rq.per.client_body }
            }
            Phase::RespBody(_) | Phase::Tunnel(_) => rq.per.upstream_body,
            Phase::Respond => t.client_send,
            Phase::Linger => Timeout::from_millis(LINGER_MS),
            Phase::Close => {
                self.why = account::close_why(from, rq, cx.draining);
                self.phase = to;
                return;
            }
        };
        self.deadline = cx.arm(wait);
        self.phase = to;
    }

    /// Shutting down: no next request, but what is queued for the client goes out first.
    fn drain_to(&mut self, rq: &mut Exchange) -> Phase {
        if self.cout.as_ref().is_some_and(|b| !b.is_empty()) {
            rq.close_after = true;
            Phase::Respond
        } else {
            Phase::Close
        }
    }

    /// Called by the worker when the connection is removed; `why` when the worker closes it
    /// itself (else the reason it entered `Close` with).
    pub fn close(mut self, cx: &mut Cx, key: ClientKey, why: Option<CloseWhy>) {
        if let Some(c) = cx.metrics.closed.get(why.unwrap_or(self.why) as usize) {
            c.inc();
        }
        cx.bufs.release(&mut self.cin);
        cx.bufs.release(&mut self.cout);
        if self.admit == Admit::Counted {
            cx.conns_per_ip.close(self.peer.ip());
        }
        if let Some(t) = self.tls.as_mut() {
            t.release_all(&mut cx.tls_bufs);
        }
        // A connection closed in the middle of an exchange (a fault) still holds its upstream.
        if let Some(up) = self.phase.up()
            && cx.ups.owner(up) == Some(key)
        {
            cx.ups.close(up);
        }
        cx.fd_freed = true;
        let Some(mut rq) = self.rq.take() else { return };
        self.log_done(&mut rq, cx);
        rq.clear(cx);
        cx.exchanges.give(rq);
    }

    /// The client's end, for reads and writes that go through its TLS if it has one.
    fn client(&mut self) -> End<'_> {
        End { sock: &self.sock, io: &mut self.io, tls: self.tls.as_deref_mut() }
    }

    /// Closes the upstream connection this phase holds (the caller then leaves the phase) and
    /// drops what was buffered for or from it.
    fn drop_upstream(&mut self, rq: &mut Exchange, cx: &mut Cx) {
        if let Some(up) = self.phase.up() {
            cx.ups.close(up);
            cx.fd_freed = true;
        }
        rq.drop_up_bytes();
    }

    /// Queues Apex's own response and moves to `Respond`. Anything from the upstream is dropped.
    fn fail(&mut self, rq: &mut Exchange, cx: &mut Cx, why: Reject, close: bool) -> Step {
        self.drop_upstream(rq, cx);
        if matches!(self.phase, Phase::RespBody(_) | Phase::Tunnel(_)) {
            // The response head is already out: no status can be sent any more, only a close.
            return Ok(Next::Go(Phase::Close));
        }
        if let Some(c) = cx.metrics.rejected.get(why as usize) {
            c.inc();
        }
        let status = why.status();
        // An error ends the exchange early (a 404 is an answer like any; so are redirects and a
        // route's own answers, which do not come here).
        if rq.ended_by == EndedBy::Nobody && status != 404 {
            rq.ended_by = if status < 500 { EndedBy::Client } else { EndedBy::Upstream };
        }
        rq.close_after |= close || !rq.keep_alive || cx.draining;
        let n = head::queue_answer(&mut self.cout, &mut cx.bufs, rq, status, None)?;
        self.answered(rq, cx, status, n, answer_body(rq, status))
    }

    /// After Apex's own response of `n` bytes (`body` of them its body) is queued: the exchange's accounting and log line.
    fn answered(&mut self, rq: &mut Exchange, cx: &mut Cx, status: u16, n: usize, body: usize) -> Step {
        rq.start.get_or_insert(cx.now_ns);
        rq.status = status;
        rq.bytes_out += n as u64;
        rq.head_out += n.saturating_sub(body) as u64;
        self.log_done(rq, cx);
        Ok(Next::Go(Phase::Respond))
    }

    /// Writes what is queued for the client (and, over TLS, records still waiting to leave).
    fn flush_client(&mut self, cx: &mut Cx) -> Result<usize, Fault> {
        let (tls, cout) = (self.tls.as_deref_mut(), self.cout.as_mut());
        match (tls, cout) {
            (tls, Some(b)) => {
                End { sock: &self.sock, io: &mut self.io, tls }.flush(&mut cx.tls_bufs, b).map_err(|_| Fault::Client)
            }
            (None, None) => Ok(0),
            (Some(t), None) => {
                t.flush(&self.sock, &mut self.io, &mut cx.tls_bufs).map(|_| 0).map_err(|_| Fault::Client)
            }
        }
    }

    /// One read from the client into `cin` (taking a buffer for it).
    fn fill_client(&mut self, cx: &mut Cx) -> io::Result<Filled> {
        let cin = cx.bufs.fill_slot(&mut self.cin);
        End { sock: &self.sock, io: &mut self.io, tls: self.tls.as_deref_mut() }.fill(&mut cx.tls_bufs, cin)
    }

    // ---- Respond, Linger ------------------------------------------------------------------

    /// Writes what is queued in `cout`; then the next request, or a lingering close.
    fn respond(&mut self, rq: &mut Exchange, cx: &mut Cx) -> Step {
        let n = self.flush_client(cx)?;
        if self.cout.as_ref().is_some_and(|b| !b.is_empty()) {
            if n > 0 {
                self.deadline = cx.arm(cx.cfg.timeouts.client_send);
                return Ok(Next::Again);
            }
            return Ok(Next::Wait);
        }
        if rq.close_after { Ok(Next::Go(Phase::Linger)) } else { Ok(Next::Go(Phase::ReadHead)) }
    }

    /// After our write side is shut: read and discard until the client closes or time is up.
    fn linger(&mut self, cx: &mut Cx) -> Step {
        if let Some(b) = self.cin.as_mut() {
            b.clear();
        }
        match self.fill_client(cx) {
            Ok(Filled::Data(_)) => {
                if let Some(b) = self.cin.as_mut() {
                    b.clear();
                }
                Ok(Next::Again)
            }
            Ok(Filled::Idle) => {
                cx.bufs.release_if_empty(&mut self.cin);
                Ok(Next::Wait)
            }
            Ok(Filled::Eof) | Err(_) => Ok(Next::Go(Phase::Close)),
        }
    }

    // ---- Timers -----------------------------------------------------------------------------

    /// The deadline passed: moves to the phase that answers it (a 408 or 504 to write, the next
    /// server to connect to) or to `Close`. The worker steps the connection again unless closed.
    pub fn on_timeout(&mut self, cx: &mut Cx, key: ClientKey) -> Result<(), Fault> {
        let mut rq = self.rq.take().unwrap_or_else(|| cx.exchanges.take());
        let r = self.timed_out(&mut rq, cx, key);
        self.park(rq, cx, r.is_ok());
        r
    }

    fn timed_out(&mut self, rq: &mut Exchange, cx: &mut Cx, key: ClientKey) -> Result<(), Fault> {
        rq.ended_by = EndedBy::Timeout;
        if rq.start.is_some() || self.phase != Phase::ReadHead {
            let (peer, phase) = (self.peer, self.phase.name());
            let (name, value) = self.timeout_fired(rq, cx);
            cx.log.event(cx.now(), Level::Info, format_args!("client {peer}: timeout in {phase} ({name} = {value:?})"));
        }
        let next = match self.phase {
            Phase::ReadHead => {
                let partial = self.cin.as_ref().is_some_and(|b| !b.is_empty());
                if partial {
                    self.fail(rq, cx, Reject::ClientTimeout, true)? // RFC 9110 §15.5.9
                } else {
                    Next::Go(Phase::Close)
                }
            }
            Phase::Opening(up) => self.connect_failed(rq, cx, up, true),
            // Still picking when the deadline fired (waiting for an fd): 504 from the next pick.
            Phase::Connect => {
                rq.timed_out = true;
                Next::Go(Phase::Connect)
            }
            Phase::Exchange(_) => {
                let client_slow = !rq.req_done() && !rq.up_wr_failed && rq.uout.as_ref().is_none_or(Buf::is_empty);
                if client_slow {
                    self.fail(rq, cx, Reject::ClientTimeout, true)?
                } else {
                    cx.metrics.up_error(
                        cx.ups.slot(rq.server as usize).unwrap_or(usize::MAX),
                        crate::metrics::UpError::Timeout,
                    );
                    let what = crate::config::RetryPolicy::TIMEOUT;
                    if !rq.resp_seen && connect::may_retry(rq, cx, what) {
                        self.retry(rq, cx, "no response head within upstream_head")
                    } else {
                        self.fail(rq, cx, Reject::UpstreamTimeout, !rq.req_done())? // RFC 9110 §15.6.5
                    }
                }
            }
            Phase::RespBody(_) | Phase::Tunnel(_) => {
                self.drop_upstream(rq, cx);
                Next::Go(Phase::Close)
            }
            Phase::Respond | Phase::Linger | Phase::Close => Next::Go(Phase::Close),
        };
        if let Next::Go(p) = next {
            self.enter(rq, p, cx, key);
        }
        Ok(())
    }
}

/// Runs a phase function out of line. `run` is entered once per event, and LLVM hoists the
/// field addresses its inlined phases use into its prologue: the phases a keep-alive request
/// never visits (Opening, Tunnel, Respond, Linger) are kept out of it. Putting every phase out
/// of line cost more (bench/profile get: 9,572 against 9,372); these four saved 31.
/// Under the profile-guided build (bench/pgo), the request path's two largest bodies are kept
/// out too, `read_head` and `response_head` (`#[inline(never)]` on each): `run`'s prologue
/// went from 108 to 46 instructions a request and get from 6,026 to 5,908. `connect`,
/// `exchange` and `resp_body` out of line as well cost more (6,032); `resp_body` alone on
/// top, 5,958 (bench/README.md, round 9).
#[inline(never)]
fn apart<T>(f: impl FnOnce() -> T) -> T {
    f()
}

/// Out of file descriptors or socket memory: nobody's fault but the machine's.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].iter().any(|x| x.raw_os_error() == code)
}

/// The body length of Apex's own answer with `status` to `rq` (none to a HEAD).
pub(super) fn answer_body(rq: &Exchange, status: u16) -> usize {
    if rq.is_head { 0 } else { crate::h1::write::answer_body_len(status) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle keep-alive connection holds no buffer and no exchange, only its `Conn` in the
    /// slab: the hot-path issue's budget is 0.5 KiB of RSS per idle connection, and the slab
    /// entry is most of it (the rest is the kernel-side epoll entry, not RSS).
    /// A phase function's result fits two registers (see `Fault`).
    #[test]
    fn step_fits_registers() {
        assert!(std::mem::size_of::<Step>() <= 16, "Step is {} bytes", std::mem::size_of::<Step>());
    }

    #[test]
    fn idle_connection_fits_budget() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 128, "Conn grew to {size} bytes; the budget is 128");
    }

    /// The table and the diagram agree on the paths a request takes.
    #[test]
    fn transitions_follow_the_diagram() {
        let (a, b) = (UpKey::from_token(3), UpKey::from_token(5));
        let ok = [
            (Phase::ReadHead, Phase::Connect),
            (Phase::Connect, Phase::Opening(a)),
            (Phase::Opening(a), Phase::Exchange(a)),
            (Phase::Connect, Phase::Exchange(b)),
            (Phase::Exchange(a), Phase::RespBody(a)),
            (Phase::Exchange(a), Phase::Tunnel(a)),
            (Phase::Exchange(a), Phase::Connect),
            (Phase::Exchange(a), Phase::ReadHead), // the whole response with its head
            (Phase::RespBody(a), Phase::ReadHead),
            (Phase::RespBody(a), Phase::Respond),
            (Phase::Respond, Phase::Linger),
            (Phase::Linger, Phase::Close),
            (Phase::Tunnel(a), Phase::Close),
        ];
        for (from, to) in ok {
            assert!(allowed(from, to), "{from:?} -> {to:?} should be allowed");
        }
        let refused = [
            (Phase::Opening(a), Phase::Exchange(b)), // another connection
            (Phase::Exchange(a), Phase::RespBody(b)),
            (Phase::ReadHead, Phase::Exchange(a)), // an upstream without a connect
            (Phase::ReadHead, Phase::RespBody(a)),
            (Phase::Tunnel(a), Phase::ReadHead), // a tunnel never becomes HTTP again
            (Phase::Tunnel(a), Phase::Respond),
            (Phase::RespBody(a), Phase::Connect), // no retry once a response began
            (Phase::Linger, Phase::ReadHead),
            (Phase::Close, Phase::ReadHead),
        ];
        for (from, to) in refused {
            assert!(!allowed(from, to), "{from:?} -> {to:?} should be refused");
        }
    }
}
