//! One client connection and the upstream exchange it drives: the state machine.
//!
//! ```text
//! ReadHead -> Connect -> Exchange -> RespBody -> ReadHead | Respond(close)
//!                           \-> Tunnel (after a 101, only when the client asked to upgrade)
//! any -> Respond (Apex's own answer) -> ReadHead | Linger -> Close
//! ```
//! Only `step` assigns `self.phase`. Each phase function does one bounded round of work and
//! returns `Next::Again` (made progress, run again), `Next::Wait` (blocked on I/O or a timer) or
//! `Next::Go(phase)`. The request body keeps flowing upstream during `RespBody` (an upstream may
//! answer before it has read everything); the exchange ends when the response has ended, and a
//! request body not fully sent by then closes the client connection after the response.
//!
//! Buffers: `cin` (client bytes: heads, bodies, pipelined requests), `uout` (what goes upstream),
//! `uin` (upstream bytes), `cout` (what goes to the client). Taken from the worker's pool when
//! bytes arrive, given back when empty at the end of an exchange.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bumpalo::Bump;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::buf::{Buf, BufPool, FreeList};
use crate::config::Config;
use crate::h1::chunked::Decoder;
use crate::h1::head::{host_name, parse_request};
use crate::h1::response::parse_response;
use crate::h1::write::{Location, Out, RespMode, write_answer, write_request, write_response};
use crate::h1::{Framing, H1Error, check_request_line, find_head_end, token_hash};
use crate::io::{Filled, Io, fill, flush};
use crate::limits::{
    HEADERS_CAP, INTERIM_MAX, LEADING_CRLF_MAX, LINGER_MS, PIPE_BYTES, SPLICE_MIN_BYTES, STEP_TURNS_MAX,
};
use crate::log::{Entry, Rec, Sink, WorkerLog};
use crate::splice::{Pipe, PipePool, Spliced};
use crate::tls::{Tls, TlsBufPool};
use crate::upstream::{UpConn, Upstreams};

/// What a worker lends a connection while it steps.
pub struct Cx {
    pub now: Instant,
    pub cfg: Arc<Config>,
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
    /// Earliest deadline armed since the last sweep.
    pub next_sweep: Instant,
    /// An fd was closed: a paused accept loop may resume.
    pub fd_freed: bool,
}

impl Cx {
    fn arm(&mut self, d: Duration) -> Instant {
        let at = self.now + d;
        if at < self.next_sweep {
            self.next_sweep = at;
        }
        at
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    ReadHead,
    Connect,
    Exchange,
    RespBody,
    Tunnel,
    Respond,
    Linger,
    Close,
}

enum Next {
    Again,
    Wait,
    Go(Phase),
}

/// What pumping the request body did: moved bytes (or not), or the exchange must change course.
enum Pump {
    Moved(bool),
    Divert(Next),
}

/// How a body is being moved.
#[derive(Clone, Copy, Debug)]
enum Body {
    Done,
    Length(u64),
    Chunked(Decoder),
    /// Until EOF (close-delimited responses).
    Raw,
}

impl Body {
    /// Bytes that may be spliced now without touching the framing: the rest of a
    /// Content-Length body, the rest of the current chunk's data, or anything until EOF.
    fn spliceable(&self) -> Option<u64> {
        match self {
            Body::Length(n) => Some(*n),
            Body::Chunked(d) => d.data_left(),
            Body::Raw => Some(u64::MAX),
            Body::Done => None,
        }
    }

    /// `n` bytes went through a pipe.
    fn spliced(&mut self, n: u64) {
        match self {
            Body::Length(rem) => *rem = rem.saturating_sub(n),
            Body::Chunked(d) => d.skip_data(n),
            Body::Raw | Body::Done => {}
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Body::Done => true,
            Body::Length(n) => *n == 0,
            Body::Chunked(d) => d.is_done(),
            Body::Raw => false,
        }
    }
}

/// Why a connection is being closed, for the error log and for which status was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Internal(&'static str),
}

pub struct Conn {
    sock: TcpStream,
    peer: SocketAddr,
    io: Io,
    pub phase: Phase,
    cin: Option<Buf>,
    cout: Option<Buf>,
    pub deadline: Instant,
    /// On the worker's run-again list.
    pub queued: bool,
    /// The request in progress, from the worker's pool: an idle keep-alive connection has none.
    rq: Option<Box<Exchange>>,
    /// A TLS client: bytes to and from the socket go through it (and never through a pipe).
    tls: Option<Box<Tls>>,
    /// Came in on a listener in `tls.redirect_http`: every request gets a 308 to HTTPS.
    redirect: bool,
}

/// Per-exchange state: what a request in flight needs and an idle connection does not. Lent
/// from the worker's `FreeList` when a request's first byte arrives, reset and given back when the
/// connection is idle again.
pub struct Exchange {
    uin: Option<Buf>,
    uout: Option<Buf>,
    /// The attached upstream connection (key in `Upstreams::conns`).
    up: Option<usize>,
    /// The config snapshot this request was routed with: it finishes on it, reload or not.
    snap: Option<Arc<Config>>,
    /// Pipes for splicing the request (client -> upstream) and response directions.
    preq: Option<Pipe>,
    presp: Option<Pipe>,
    /// This request's access-log fields in `Cx::recs`.
    rec: Option<u32>,
    head_scan: u32,
    head_timer: bool,
    line_ok: bool,
    keep_alive: bool,
    close_after: bool,
    client_minor: u8,
    is_head: bool,
    retry_ok: bool,
    retried: bool,
    /// Hashes of the protocols the client asked to upgrade to (none: no upgrade asked).
    upgrade: [u64; 2],
    group: u32,
    server: u32,
    tried: u64,
    head_len: u32,
    req_body: Body,
    resp_body: Body,
    rechunk: bool,
    resp_scan: u32,
    resp_reusable: bool,
    resp_seen: bool,
    interim: u8,
    timed_out: bool,
    client_eof: bool,
    up_eof: bool,
    /// The upstream's stream ended in a way that ends no message: an error, or a TLS stream
    /// without close_notify (RFC 8446 §6.1: truncation cannot be told from an end otherwise).
    up_cut: bool,
    /// The response was cut short: the client's connection ends without close_notify, so a
    /// TLS client can tell it from a complete close-delimited response.
    resp_cut: bool,
    client_shut: bool,
    up_shut: bool,
    /// A write upstream failed: the request side is over (nothing more is read from the client
    /// or sent), but what the upstream already answered is still read and relayed.
    up_wr_failed: bool,
    /// For the access log: when the head was complete, what was answered, bytes each way,
    /// and which side ended the exchange on an error.
    start: Option<Instant>,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    ended_by: EndedBy,
    logged: bool,
    /// An upstream connect found no free fd: the worker should close an idle connection and
    /// step this one again (`reclaimed` then, so a second failure is a 502).
    starved: bool,
    reclaimed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EndedBy {
    Nobody,
    Client,
    Upstream,
    Timeout,
}

impl EndedBy {
    const fn as_str(self) -> &'static str {
        match self {
            EndedBy::Nobody => "-",
            EndedBy::Client => "client",
            EndedBy::Upstream => "upstream",
            EndedBy::Timeout => "timeout",
        }
    }
}

impl Exchange {
    pub(crate) const fn new() -> Self {
        Exchange {
            uin: None,
            uout: None,
            up: None,
            snap: None,
            preq: None,
            presp: None,
            rec: None,
            head_scan: 0,
            head_timer: false,
            line_ok: false,
            keep_alive: false,
            close_after: false,
            client_minor: 1,
            is_head: false,
            retry_ok: false,
            retried: false,
            upgrade: [0; 2],
            group: 0,
            server: 0,
            tried: 0,
            head_len: 0,
            req_body: Body::Done,
            resp_body: Body::Done,
            rechunk: false,
            resp_scan: 0,
            resp_reusable: false,
            resp_seen: false,
            interim: 0,
            timed_out: false,
            client_eof: false,
            up_eof: false,
            up_cut: false,
            resp_cut: false,
            client_shut: false,
            up_shut: false,
            up_wr_failed: false,
            start: None,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            ended_by: EndedBy::Nobody,
            logged: false,
            starved: false,
            reclaimed: false,
        }
    }
}

impl Exchange {
    /// Holds nothing and has seen nothing: can go back to the pool as it is. In `ReadHead`,
    /// only the head-scan fields change before a request starts; `enter` resets the rest.
    fn is_pristine(&self) -> bool {
        self.start.is_none()
            && self.head_scan == 0
            && !self.head_timer
            && !self.line_ok
            && self.ended_by == EndedBy::Nobody
            && !self.close_after
            && self.uin.is_none()
            && self.uout.is_none()
            && self.up.is_none()
            && self.snap.is_none()
            && self.preq.is_none()
            && self.presp.is_none()
            && self.rec.is_none()
    }

    /// Gives back what this exchange holds (buffers, pipes, an upstream connection that
    /// `finish_exchange` or `fail` did not already take, the access-log record) and resets it
    /// for the next request.
    fn clear(&mut self, cx: &mut Cx) {
        cx.bufs.release(&mut self.uin);
        cx.bufs.release(&mut self.uout);
        cx.pipes.give_slot(&mut self.preq);
        cx.pipes.give_slot(&mut self.presp);
        if let Some(uk) = self.up.take() {
            cx.ups.close(uk);
            cx.fd_freed = true;
        }
        if let Some(k) = self.rec.take() {
            cx.recs.try_remove(k as usize);
        }
        *self = Exchange::new();
    }

    /// A retry on a fresh connection: what was learnt about the failed one does not carry over
    /// (a write that failed on it must not stop the head going out again on the new one).
    fn reset_for_retry(&mut self) {
        self.retried = true;
        self.tried = 0;
        self.up_wr_failed = false;
        self.up_eof = false;
        self.up_cut = false;
        self.up_shut = false;
        self.resp_scan = 0;
        self.interim = 0;
    }

    /// The whole request body has been taken from the client (or there was none) and none of
    /// it waits in a pipe; a copied tail may still wait in `uout` (see `req_sent`).
    fn req_done(&self) -> bool {
        self.req_body.is_done() && self.preq.as_ref().is_none_or(|p| p.pending == 0)
    }

    /// The whole request has reached the upstream socket: nothing of it waits in Apex.
    fn req_sent(&self) -> bool {
        self.req_done() && self.uout.as_ref().is_none_or(Buf::is_empty)
    }

    /// Nothing more will be sent upstream: the request is done, or its sending failed.
    fn sent_all(&self) -> bool {
        self.req_done() || self.up_wr_failed
    }

    /// The whole response body has reached the client socket's side of the pipe.
    fn resp_done(&self) -> bool {
        self.resp_body.is_done() && self.presp.as_ref().is_none_or(|p| p.pending == 0)
    }
}

type Step = Result<Next, Fault>;

impl Conn {
    pub fn new(sock: TcpStream, peer: SocketAddr, tls: Option<Box<Tls>>, redirect: bool, cx: &mut Cx) -> Conn {
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
            rq: None,
            tls,
            redirect,
        }
    }

    pub fn on_event(&mut self, ev: &mio::event::Event) {
        self.io.on_event(ev);
    }

    /// Whether the last step ran out of fds for an upstream connection (and clears the flag);
    /// the worker frees one and steps this connection again.
    pub fn take_starved(&mut self) -> bool {
        let Some(rq) = self.rq.as_deref_mut() else { return false };
        let starved = std::mem::take(&mut rq.starved);
        if starved {
            rq.reclaimed = true;
        }
        starved
    }

    /// Idle between requests, with nothing buffered either way: safe to close when draining.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::ReadHead
            && self.cin.as_ref().is_none_or(Buf::is_empty)
            && self.cout.as_ref().is_none_or(Buf::is_empty)
    }

    /// Runs the state machine until it waits for I/O. Returns true if it stopped only because
    /// its turn budget ran out with work left (the worker steps it again after other work).
    pub fn step(&mut self, cx: &mut Cx, key: usize) -> Result<bool, Fault> {
        let mut rq = self.rq.take().unwrap_or_else(|| cx.exchanges.take());
        let r = self.run(&mut rq, cx, key);
        self.park(rq, cx);
        r
    }

    /// Keeps the exchange while it holds or means anything; an idle connection gives it back.
    fn park(&mut self, rq: Box<Exchange>, cx: &mut Cx) {
        if self.phase == Phase::ReadHead && rq.is_pristine() && self.cin.as_ref().is_none_or(Buf::is_empty) {
            cx.exchanges.give(rq);
        } else {
            self.rq = Some(rq);
        }
    }

    fn run(&mut self, rq: &mut Exchange, cx: &mut Cx, key: usize) -> Result<bool, Fault> {
        for _ in 0..STEP_TURNS_MAX {
            let next = match self.phase {
                Phase::ReadHead => self.read_head(rq, cx)?,
                Phase::Connect => self.connect(rq, cx, key)?,
                Phase::Exchange => self.exchange(rq, cx)?,
                Phase::RespBody => self.resp_body(rq, cx)?,
                Phase::Tunnel => self.tunnel(rq, cx)?,
                Phase::Respond => self.respond(rq, cx)?,
                Phase::Linger => self.linger(cx)?,
                Phase::Close => return Ok(false),
            };
            match next {
                Next::Again => {}
                Next::Wait => return Ok(false),
                Next::Go(p) => self.enter(rq, p, cx),
            }
        }
        Ok(true)
    }

    /// Entry actions of each phase, in one place.
    fn enter(&mut self, rq: &mut Exchange, p: Phase, cx: &mut Cx) {
        let t = cx.cfg.timeouts;
        match p {
            Phase::ReadHead if cx.draining => {
                // Shutting down: no next request, but what is queued for the client goes out.
                if self.cout.as_ref().is_some_and(|b| !b.is_empty()) {
                    rq.close_after = true;
                    self.deadline = cx.arm(cx.cfg.timeouts.client_send);
                    self.phase = Phase::Respond;
                } else {
                    self.phase = Phase::Close;
                }
                return;
            }
            Phase::ReadHead => {
                cx.bufs.release_if_empty(&mut self.cin);
                cx.bufs.release_if_empty(&mut self.cout);
                rq.clear(cx);
                let has_bytes = self.cin.as_ref().is_some_and(|b| !b.is_empty());
                // Pipelined bytes already waiting start the whole-head clock; otherwise idle.
                self.deadline = cx.arm(if has_bytes { t.client_head } else { t.client_idle });
                rq.head_timer = has_bytes;
            }
            Phase::Exchange => {
                self.deadline = cx.arm(if rq.sent_all() { t.upstream_head } else { t.client_body });
            }
            Phase::RespBody | Phase::Tunnel => self.deadline = cx.arm(t.upstream_body),
            Phase::Respond => self.deadline = cx.arm(t.client_send),
            Phase::Linger => {
                // Not after a cut response: RFC 8446 §6.1, close_notify says nothing was lost.
                if let Some(t) = self.tls.as_deref_mut().filter(|_| !rq.resp_cut) {
                    t.close_notify(&self.sock, &mut self.io, &mut cx.tls_bufs);
                }
                let _ = self.sock.shutdown(Shutdown::Write);
                self.deadline = cx.arm(Duration::from_millis(LINGER_MS));
            }
            // A deadline of its own, or a stale one from the head could fire while an fd is
            // being reclaimed and blame the server for it.
            Phase::Connect => self.deadline = cx.arm(t.upstream_connect),
            Phase::Close => {}
        }
        self.phase = p;
    }

    /// Called by the worker when the connection is removed.
    pub fn close(mut self, cx: &mut Cx) {
        cx.bufs.release(&mut self.cin);
        cx.bufs.release(&mut self.cout);
        if let Some(t) = self.tls.as_mut() {
            t.release_all(&mut cx.tls_bufs);
        }
        cx.fd_freed = true;
        let Some(mut rq) = self.rq.take() else { return };
        self.log_done(&mut rq, cx);
        rq.clear(cx);
        cx.exchanges.give(rq);
    }

    fn drop_upstream(&mut self, rq: &mut Exchange, cx: &mut Cx) {
        if let Some(uk) = rq.up.take() {
            cx.ups.close(uk);
            cx.fd_freed = true;
        }
        if let Some(b) = rq.uin.as_mut() {
            b.clear();
        }
        if let Some(b) = rq.uout.as_mut() {
            b.clear();
        }
    }

    /// Queues Apex's own response and moves to `Respond`. Anything from the upstream is dropped.
    fn fail(&mut self, rq: &mut Exchange, cx: &mut Cx, status: u16, close: bool) -> Step {
        self.drop_upstream(rq, cx);
        if matches!(self.phase, Phase::RespBody | Phase::Tunnel) {
            // The response head is already out: no status can be sent any more, only a close.
            return Ok(Next::Go(Phase::Close));
        }
        rq.close_after |= close || !rq.keep_alive || cx.draining;
        let n = queue_answer(&mut self.cout, &mut cx.bufs, rq, status, None)?;
        self.answered(rq, cx, status, n)
    }

    /// After Apex's own response of `n` bytes is queued: the exchange's accounting and log line.
    fn answered(&mut self, rq: &mut Exchange, cx: &mut Cx, status: u16, n: usize) -> Step {
        rq.start.get_or_insert(cx.now);
        rq.status = status;
        rq.bytes_out += n as u64;
        if rq.ended_by == EndedBy::Nobody && status != 404 && status != 308 {
            rq.ended_by = if status < 500 { EndedBy::Client } else { EndedBy::Upstream };
        }
        self.log_done(rq, cx);
        Ok(Next::Go(Phase::Respond))
    }

    /// Writes this exchange's access-log line, once, and frees its record.
    fn log_done(&mut self, rq: &mut Exchange, cx: &mut Cx) {
        let Some(start) = rq.start else { return };
        if rq.logged {
            return;
        }
        rq.logged = true;
        let rec = rq.rec.take();
        if cx.cfg.log.access != Sink::Off {
            let r = rec.and_then(|k| cx.recs.get(k as usize));
            let e = Entry {
                client: self.peer,
                method: r.map_or(&[][..], Rec::method),
                target: r.map_or(&[][..], Rec::target),
                minor: rq.client_minor,
                status: rq.status,
                bytes_in: rq.bytes_in,
                bytes_out: rq.bytes_out,
                upstream: if rq.tried != 0 { cx.ups.addr(rq.server as usize) } else { None },
                micros: cx.now.saturating_duration_since(start).as_micros() as u64,
                referer: r.map_or(&[][..], Rec::referer),
                agent: r.map_or(&[][..], Rec::agent),
                ended_by: rq.ended_by.as_str(),
            };
            cx.log.access(cx.now, cx.cfg.log.format, &e);
        }
        if let Some(k) = rec {
            cx.recs.try_remove(k as usize);
        }
    }

    fn flush_client(&mut self, cx: &mut Cx) -> Result<usize, Fault> {
        match (self.tls.as_deref_mut(), self.cout.as_mut()) {
            (tls, Some(b)) => {
                End { sock: &self.sock, io: &mut self.io, tls }.flush(&mut cx.tls_bufs, b).map_err(|_| Fault::Client)
            }
            (None, None) => Ok(0),
            (Some(t), None) => {
                t.flush(&self.sock, &mut self.io, &mut cx.tls_bufs).map(|_| 0).map_err(|_| Fault::Client)
            }
        }
    }

    // ---- ReadHead -------------------------------------------------------------------------

    fn read_head(&mut self, rq: &mut Exchange, cx: &mut Cx) -> Step {
        let progress = self.flush_client(cx)? > 0;
        let limits = cx.cfg.limits;
        let cin = cx.bufs.fill_slot(&mut self.cin);
        // RFC 9112 §2.2: ignore a few empty lines before a request line.
        for _ in 0..LEADING_CRLF_MAX {
            if cin.filled().starts_with(b"\r\n") {
                cin.consume(2);
            } else {
                break;
            }
        }
        let mut scan = rq.head_scan as usize;
        let found = find_head_end(cin.filled(), &mut scan);
        rq.head_scan = scan as u32; // within a buffer: fits
        let found = match found {
            Ok(f) => f,
            Err(e) => return self.reject(rq, cx, e),
        };
        let Some(end) = found else {
            if !rq.line_ok {
                match check_request_line(cin.filled()) {
                    Ok(ok) => rq.line_ok = ok,
                    Err(e) => return self.reject(rq, cx, e),
                }
            }
            if cin.len() >= limits.head_bytes {
                return self.reject(rq, cx, H1Error::HeadTooLarge);
            }
            let got = client_fill(&self.sock, &mut self.io, &mut self.tls, &mut cx.tls_bufs, cin);
            if got.is_err() && self.tls.as_ref().is_some_and(|t| t.failed()) {
                // A TLS handshake refused with an alert: close gracefully so it is read.
                return Ok(Next::Go(Phase::Linger));
            }
            match got.map_err(|_| Fault::Client)? {
                Filled::Data(_) => {
                    if !rq.head_timer {
                        rq.head_timer = true;
                        self.deadline = cx.arm(cx.cfg.timeouts.client_head);
                    }
                    return Ok(Next::Again);
                }
                Filled::Eof => {
                    // Between requests, a close is the client's way to end; mid-head it aborts
                    // only the request it cut. Responses to earlier requests still go out.
                    if self.cout.as_ref().is_some_and(|b| !b.is_empty()) {
                        cin.clear();
                        rq.close_after = true;
                        return Ok(Next::Go(Phase::Respond));
                    }
                    // RFC 8446 §6.1: each side sends close_notify before closing its write
                    // side; a TLS client's came first, Apex's answers it.
                    if let Some(t) = self.tls.as_deref_mut().filter(|t| t.closed_cleanly()) {
                        t.close_notify(&self.sock, &mut self.io, &mut cx.tls_bufs);
                    }
                    return Ok(Next::Go(Phase::Close));
                }
                Filled::Idle => {
                    if cin.is_empty() {
                        cx.bufs.release_if_empty(&mut self.cin);
                    }
                    return Ok(if progress { Next::Again } else { Next::Wait });
                }
            }
        };
        if end > limits.head_bytes {
            return self.reject(rq, cx, H1Error::HeadTooLarge);
        }

        // Parse, route, and write the upstream head, all from the borrowed head bytes.
        cx.arena.reset();
        let Some(cin) = self.cin.as_ref() else {
            return Err(Fault::Internal("cin"));
        };
        let head = cin.filled().get(..end).unwrap_or(&[]);
        let req = match parse_request(head, &cx.arena, limits.headers) {
            Ok(r) => r,
            Err(e) => {
                // A syntax error says nothing about the version; answer for what we saw.
                return self.reject(rq, cx, e);
            }
        };
        rq.start = Some(cx.now);
        rq.bytes_in = end as u64;
        if cx.cfg.log.access != Sink::Off && cx.recs.len() < cx.recs.capacity() {
            let header = |name: &str| {
                req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map_or(&[][..], |h| h.value)
            };
            let entry = cx.recs.vacant_entry();
            let k = entry.key();
            let rec = entry.insert(Rec::empty());
            rec.capture(req.method.as_bytes(), req.path.as_bytes(), req.minor, header("referer"), header("user-agent"));
            rq.rec = u32::try_from(k).ok();
        }
        rq.keep_alive = req.keep_alive;
        rq.client_minor = req.minor;
        rq.is_head = req.is_head();
        rq.upgrade = [0; 2];
        if let Some(u) = req.upgrade {
            for (slot, p) in rq.upgrade.iter_mut().zip(crate::h1::list_items(u)) {
                *slot = token_hash(p);
            }
        }
        rq.req_body = match req.framing {
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked(Decoder::new()),
            Framing::None | Framing::Close => Body::Done,
        };
        rq.retry_ok = req.idempotent() && matches!(req.framing, Framing::None);
        let has_body = !matches!(req.framing, Framing::None);
        let expect_continue = req.expect_continue && has_body;
        if let Framing::Length(n) = req.framing
            && n > limits.body_bytes
        {
            return self.reject(rq, cx, H1Error::BodyTooLarge);
        }
        // OPTIONS * (RFC 9112 §3.2.4) is about the server as a whole: route it as "/".
        let path = if req.path == "*" { b"/" } else { req.path.as_bytes() };
        if self.redirect {
            // A plain listener that sends everyone to HTTPS: 308 keeps the method and body
            // (RFC 9110 §15.4.9). The body is not read: close after, like a 404's.
            rq.close_after |= has_body || !rq.keep_alive || cx.draining;
            let to = Location { host: host_name(req.host), port: cx.https_port, target: path };
            let n = queue_answer(&mut self.cout, &mut cx.bufs, rq, 308, Some(to))?;
            if let Some(b) = self.cin.as_mut() {
                b.consume(end);
            }
            return self.answered(rq, cx, 308, n);
        }
        let path_only = path.split(|&b| b == b'?').next().unwrap_or(path);
        let Some(group) = cx.cfg.route(host_name(req.host), path_only) else {
            let close = has_body; // the body was not read: it cannot be told from the next request
            let consumed = end;
            if let Some(b) = self.cin.as_mut() {
                b.consume(consumed);
            }
            return self.fail(rq, cx, 404, close);
        };
        rq.group = group as u32; // config groups are few
        rq.snap = Some(Arc::clone(&cx.cfg));

        let uout = cx.bufs.fill_slot(&mut rq.uout);
        uout.clear();
        let mut w = Out::new(uout.spare());
        write_request(&req, self.peer.ip(), self.tls.is_some(), &mut w);
        let Some(n) = w.finish() else {
            return self.reject(rq, cx, H1Error::HeadTooLarge);
        };
        uout.commit(n);
        rq.head_len = n as u32; // within a buffer
        if let Some(b) = self.cin.as_mut() {
            b.consume(end);
        }
        // Buffers are held only while they hold bytes: a body or the next request takes one again.
        cx.bufs.release_if_empty(&mut self.cin);
        // RFC 9110 §10.1.1: Apex answers 100-continue itself, once it has an upstream to send to
        // (the Expect header is not forwarded, so the upstream never sends a second one).
        if expect_continue {
            let cout = cx.bufs.fill_slot(&mut self.cout);
            if !cout.put(b"HTTP/1.1 100 Continue\r\n\r\n") {
                return Err(Fault::Client);
            }
        }
        Ok(Next::Go(Phase::Connect))
    }

    /// A malformed request: its status, `Connection: close`, and nothing forwarded.
    fn reject(&mut self, rq: &mut Exchange, cx: &mut Cx, e: H1Error) -> Step {
        let peer = self.peer;
        cx.log.error(cx.now, format_args!("info: client {peer}: {} {}", e.status(), e.as_str()));
        if let Some(b) = self.cin.as_mut() {
            b.clear();
        }
        self.fail(rq, cx, e.status(), true)
    }

    // ---- Connect --------------------------------------------------------------------------

    fn connect(&mut self, rq: &mut Exchange, cx: &mut Cx, key: usize) -> Step {
        // Waiting on a connect in progress?
        if let Some(uk) = rq.up {
            let Some(u) = cx.ups.conns.get_mut(uk) else {
                return Err(Fault::Internal("upstream slot"));
            };
            if u.connected {
                return Ok(Next::Go(Phase::Exchange));
            }
            let ok = if u.tcp_up {
                // TCP is up; the TLS handshake (verification included) decides, under the same
                // upstream_connect deadline: a server that fails it is treated as one that
                // refused the connection.
                let t = u.tls.as_deref_mut().ok_or(Fault::Internal("tls slot"))?;
                match t.connect(&u.sock, &mut u.io, &mut cx.tls_bufs) {
                    Ok(true) => Some(true),
                    Ok(false) => return Ok(Next::Wait),
                    Err(e) => {
                        let addr = u.sock.peer_addr().ok();
                        if let Some(addr) = addr {
                            cx.log.error(cx.now, format_args!("warn: upstream {addr}: tls: {e}"));
                        }
                        Some(false)
                    }
                }
            } else {
                if !u.io.writable && !u.io.hup {
                    return Ok(Next::Wait);
                }
                match u.sock.take_error() {
                    Ok(None) => match u.sock.peer_addr() {
                        Ok(_) => Some(true),
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => None,
                        Err(_) => Some(false),
                    },
                    _ => Some(false),
                }
            };
            if ok == Some(true) && !u.tcp_up && u.tls.is_some() {
                u.tcp_up = true;
                return Ok(Next::Again);
            }
            match ok {
                None => {
                    u.io.writable = false;
                    return Ok(Next::Wait);
                }
                Some(true) => {
                    u.connected = true;
                    let server = u.server;
                    cx.ups.mark_up(server);
                    return Ok(Next::Go(Phase::Exchange));
                }
                Some(false) => {
                    self.connect_failed(rq, cx, false);
                }
            }
        }
        // Pick a server: a pooled connection to it, else a new one.
        for _ in 0..=crate::limits::GROUP_SERVERS_CAP {
            let Some(cfg) = rq.snap.as_deref() else { return Err(Fault::Internal("no snapshot")) };
            let cooldown = cfg.groups.get(rq.group as usize).map_or(Duration::ZERO, |g| g.cooldown);
            let Some((idx, server)) = cx.ups.pick(cfg, rq.group as usize, rq.tried, cx.now) else {
                let status = if rq.timed_out { 504 } else { 502 };
                let close = !rq.req_done();
                return self.fail(rq, cx, status, close);
            };
            rq.tried |= 1u64 << idx;
            rq.server = server as u32;
            // A retry goes to a fresh connection: the pooled one just failed us.
            if !rq.retried
                && let Some(uk) = cx.ups.take_idle(server, key, !rq.retry_ok)
            {
                rq.up = Some(uk);
                return Ok(Next::Go(Phase::Exchange));
            }
            let Some(addr) = cx.ups.addr(server) else { continue };
            match self.open(cx, key, server, addr) {
                Ok(uk) => {
                    rq.up = Some(uk);
                    self.deadline = cx.arm(cx.cfg.timeouts.upstream_connect);
                    return Ok(Next::Again);
                }
                Err(e) if is_fd_exhaustion(&e) => {
                    // Not the server's fault: do not mark it down. Out of fds, an active request
                    // comes before an idle connection (as nginx reuses idle keep-alive
                    // connections): ask the worker to close one, once, then try again.
                    if !rq.reclaimed {
                        rq.starved = true;
                        rq.tried &= !(1u64 << idx);
                        return Ok(Next::Wait);
                    }
                    let close = !rq.req_done();
                    return self.fail(rq, cx, 502, close);
                }
                Err(e) => {
                    cx.ups.mark_down(server, cx.now + cooldown);
                    cx.log.error(cx.now, format_args!("warn: upstream {addr}: connect: {e}; skipped for {cooldown:?}"));
                }
            }
        }
        Err(Fault::Internal("connect loop"))
    }

    fn open(&mut self, cx: &mut Cx, key: usize, server: usize, addr: SocketAddr) -> io::Result<usize> {
        let tls = match cx.ups.tls(server) {
            Some(t) => Some(Box::new(Tls::client(Arc::clone(&t.config), t.name.clone())?)),
            None => None,
        };
        let mut sock = TcpStream::connect(addr)?;
        let _ = sock.set_nodelay(true);
        let entry = cx.ups.conns.vacant_entry();
        let uk = entry.key();
        cx.registry.register(&mut sock, Token(uk << 1 | 1), Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(UpConn {
            sock,
            io: Io::default(),
            server,
            owner: Some(key),
            connected: false,
            tcp_up: false,
            reused: false,
            idle_deadline: cx.now,
            tls,
        });
        Ok(uk)
    }

    /// The connect failed (or timed out): cool the server down and let `connect` pick the next.
    fn connect_failed(&mut self, rq: &mut Exchange, cx: &mut Cx, timed_out: bool) {
        let cooldown =
            rq.snap.as_deref().and_then(|c| c.groups.get(rq.group as usize)).map_or(Duration::ZERO, |g| g.cooldown);
        cx.ups.mark_down(rq.server as usize, cx.now + cooldown);
        if let Some(addr) = cx.ups.addr(rq.server as usize) {
            let what = if timed_out { "timed out" } else { "failed" };
            cx.log.error(cx.now, format_args!("warn: upstream {addr}: connect {what}; skipped for {cooldown:?}"));
        }
        rq.timed_out = timed_out;
        if let Some(uk) = rq.up.take() {
            cx.ups.close(uk);
            cx.fd_freed = true;
        }
    }

    // ---- Exchange: request out, response head in -----------------------------------------

    fn exchange(&mut self, rq: &mut Exchange, cx: &mut Cx) -> Step {
        let mut progress = self.flush_client(cx)? > 0;
        match self.pump_request(rq, cx)? {
            Pump::Moved(moved) => progress |= moved,
            Pump::Divert(next) => return Ok(next),
        }
        let t = cx.cfg.timeouts;
        let Some(uk) = rq.up else {
            return Err(Fault::Internal("no upstream"));
        };
        let Some(u) = cx.ups.conns.get_mut(uk) else {
            return Err(Fault::Internal("upstream slot"));
        };
        // Send what we have upstream.
        let sent = match rq.uout.as_mut() {
            Some(b) if !rq.up_wr_failed => up_flush(u, &mut cx.tls_bufs, b),
            _ => Ok(0),
        };
        let sent = match sent {
            Ok(n) => n,
            Err(_) => {
                // An upstream that answers early may close on the rest of the request: read on.
                rq.up_wr_failed = true;
                0
            }
        };
        progress |= sent > 0;
        // Read the response head.
        let uin = cx.bufs.fill_slot(&mut rq.uin);
        match up_fill(u, &mut cx.tls_bufs, uin) {
            Ok(Filled::Data(_)) => {
                rq.resp_seen = true;
                progress = true;
            }
            Ok(Filled::Idle) => {}
            end @ (Ok(Filled::Eof) | Err(_)) => {
                if uin.is_empty() || !rq.resp_seen {
                    return self.upstream_failed(rq, cx);
                }
                rq.up_eof = true;
                rq.up_cut = end.is_err() || !u.ended_cleanly();
            }
        }
        let mut scan = rq.resp_scan as usize;
        let found = find_head_end(uin.filled(), &mut scan);
        rq.resp_scan = scan as u32;
        let found = match found {
            Ok(f) => f,
            Err(_) => return self.upstream_bad(rq, cx),
        };
        let Some(end) = found else {
            if uin.spare_len() == 0 || rq.up_eof {
                return self.upstream_bad(rq, cx); // a head larger than a buffer, or cut short
            }
            if progress {
                self.deadline = cx.arm(if rq.sent_all() { t.upstream_head } else { t.client_body });
                return Ok(Next::Again);
            }
            return Ok(Next::Wait);
        };
        self.response_head(rq, cx, end)
    }

    fn response_head(&mut self, rq: &mut Exchange, cx: &mut Cx, end: usize) -> Step {
        cx.arena.reset();
        let Some(uin) = rq.uin.as_ref() else {
            return Err(Fault::Internal("uin"));
        };
        let head = uin.filled().get(..end).unwrap_or(&[]);
        let resp = match parse_response(head, &cx.arena, HEADERS_CAP, rq.is_head) {
            Ok(r) => r,
            Err(_) => return self.upstream_bad(rq, cx),
        };
        if resp.code == 101 {
            // RFC 9110 §7.8: a server switches only to a protocol the client listed. Anything
            // else, h2c included, is an upstream switching on its own: refused.
            let asked = |p: &[u8]| rq.upgrade.contains(&token_hash(p));
            let ok = resp
                .upgrade
                .is_some_and(|u| crate::h1::list_items(u).all(|p| !p.is_empty() && asked(p)) && !u.is_empty());
            // And only once the request is fully sent, its tail in `uout` included: the
            // tunnel relays client bytes only, so body bytes still in Apex would be lost and
            // the client's next bytes taken for them (RFC 9112 §6.3).
            // Upgrade is HTTP/1.1's (§7.8); HTTP/1.0 has no 1xx (§15.2): a 1.0 "switch" is not one.
            if rq.upgrade == [0; 2] || !ok || !rq.req_sent() || resp.minor != 1 {
                return self.upstream_bad(rq, cx); // a switch nobody asked for
            }
        } else if resp.code < 200 {
            // Interim responses: Apex answered 100-continue itself; the rest are dropped.
            rq.interim += 1;
            if rq.interim > INTERIM_MAX {
                return self.upstream_bad(rq, cx);
            }
            if let Some(b) = rq.uin.as_mut() {
                b.consume(end);
            }
            rq.resp_scan = 0;
            return Ok(Next::Again);
        }
        let tunnel = resp.code == 101;
        let (framing, body) = match resp.framing {
            Framing::None => (Framing::None, Body::Done),
            Framing::Length(n) => (Framing::Length(n), Body::Length(n)),
            // RFC 9112 §7.1: HTTP/1.0 has no chunked coding: de-chunk and delimit by close.
            Framing::Chunked if rq.client_minor == 1 => (Framing::Chunked, Body::Chunked(Decoder::new())),
            Framing::Chunked => (Framing::Close, Body::Chunked(Decoder::new())),
            Framing::Close => (Framing::Close, Body::Raw),
        };
        rq.rechunk = framing == Framing::Chunked;
        if framing == Framing::Close {
            rq.close_after = true;
        }
        // A request body still coming in cannot be told from the next request: say close.
        let keep_alive = rq.keep_alive && !rq.close_after && !tunnel && !cx.draining && rq.req_done();
        let mode = RespMode { framing, keep_alive, client_minor: rq.client_minor, tunnel };
        let cout = cx.bufs.fill_slot(&mut self.cout);
        let mut w = Out::new(cout.spare());
        write_response(&resp, mode, &mut w);
        match w.finish() {
            Some(n) => {
                cout.commit(n);
                rq.bytes_out += n as u64;
                rq.status = resp.code;
            }
            None if !cout.is_empty() => {
                // Earlier bytes first; the head is found again from the start next time.
                rq.resp_scan = 0;
                return Ok(Next::Wait);
            }
            None => return self.upstream_bad(rq, cx),
        }
        rq.resp_reusable = resp.reusable;
        rq.resp_body = body;
        if let Some(b) = rq.uin.as_mut() {
            b.consume(end);
        }
        // The head sent upstream is no longer needed for a retry once a response has come.
        cx.bufs.release_if_empty(&mut rq.uout);
        if !keep_alive {
            rq.close_after = true;
        }
        if tunnel {
            return Ok(Next::Go(Phase::Tunnel));
        }
        Ok(Next::Go(Phase::RespBody))
    }

    /// The upstream connection failed before a response head. A reused connection that failed
    /// before any response byte may have been closed by the upstream while idle: an idempotent
    /// request without a body is retried once on a fresh connection (RFC 9110 §9.2.2).
    fn upstream_failed(&mut self, rq: &mut Exchange, cx: &mut Cx) -> Step {
        let reused = rq.up.and_then(|k| cx.ups.conns.get(k)).is_some_and(|u| u.reused);
        if reused && rq.retry_ok && !rq.retried && !rq.resp_seen {
            self.drop_upstream(rq, cx);
            rq.reset_for_retry();
            if let Some(b) = rq.uout.as_mut() {
                b.rewind(rq.head_len as usize);
            }
            return Ok(Next::Go(Phase::Connect));
        }
        let close = !rq.req_done();
        self.fail(rq, cx, 502, close)
    }

    /// The upstream sent something Apex will not relay: 502, and the connection is discarded.
    fn upstream_bad(&mut self, rq: &mut Exchange, cx: &mut Cx) -> Step {
        if let Some(addr) = cx.ups.addr(rq.server as usize) {
            cx.log.error(cx.now, format_args!("warn: upstream {addr}: malformed or unexpected response; 502"));
        }
        let close = !rq.req_done();
        self.fail(rq, cx, 502, close)
    }

    /// Moves request body bytes from the client to `uout`, reading the client as needed.
    fn pump_request(&mut self, rq: &mut Exchange, cx: &mut Cx) -> Result<Pump, Fault> {
        if rq.req_done() {
            return Ok(Pump::Moved(false));
        }
        if rq.up_wr_failed {
            // The rest of the body cannot be told from a next request: close after the response.
            rq.close_after = true;
            return Ok(Pump::Moved(false));
        }
        let cin_empty = self.cin.as_ref().is_none_or(Buf::is_empty);
        let uout_empty = rq.uout.as_ref().is_none_or(Buf::is_empty);
        let pending = rq.preq.as_ref().is_some_and(|p| p.pending > 0);
        // TLS on either side: records, not bytes, so bodies are copied. (The upstream slot is
        // looked up last: only for a body long enough to splice.)
        let spliceable = self.tls.is_none()
            && matches!(rq.req_body, Body::Length(_) | Body::Chunked(_))
            && rq.req_body.spliceable().is_some_and(|n| n > SPLICE_MIN_BYTES)
            && rq.up.and_then(|k| cx.ups.conns.get(k)).is_none_or(|u| u.tls.is_none());
        if pending || (spliceable && cin_empty && uout_empty) {
            if rq.preq.is_none() {
                rq.preq = cx.pipes.take();
            }
            if rq.preq.is_some() {
                return self.splice_request(rq, cx);
            }
        }
        let mut progress = false;
        let cin = cx.bufs.fill_slot(&mut self.cin);
        let uout = cx.bufs.fill_slot(&mut rq.uout);
        if !rq.client_eof {
            match client_fill(&self.sock, &mut self.io, &mut self.tls, &mut cx.tls_bufs, cin) {
                Ok(Filled::Data(_)) => progress = true,
                Ok(Filled::Idle) => {}
                // The body may already be whole in `cin` (data and FIN in one event): decide
                // after relaying it whether this is an abort.
                Ok(Filled::Eof) | Err(_) => rq.client_eof = true,
            }
        }
        let spare = uout.spare();
        let relayed = match &mut rq.req_body {
            Body::Length(rem) => {
                let n = copy_prefix(cin.filled(), spare, *rem);
                *rem -= n as u64;
                Some((n, n))
            }
            Body::Chunked(dec) => dec.relay(cin.filled(), spare, true).ok(),
            Body::Done | Body::Raw => Some((0, 0)),
        };
        let Some((used, made)) = relayed else {
            // RFC 9112 §7.1: malformed chunked framing is the client's error.
            return self.fail(rq, cx, 400, true).map(Pump::Divert);
        };
        cin.consume(used);
        uout.commit(made);
        rq.bytes_in += used as u64;
        let limit = rq.snap.as_deref().map_or(u64::MAX, |c| c.limits.body_bytes);
        if matches!(rq.req_body, Body::Chunked(d) if d.data_total > limit) {
            return self.fail(rq, cx, 413, true).map(Pump::Divert);
        }
        // A client that vanished with its body unfinished aborts its exchange; one that
        // half-closed after a whole body gets its response, then the connection closes.
        if rq.client_eof {
            rq.close_after = true;
            if !rq.req_body.is_done() && self.cin.as_ref().is_none_or(Buf::is_empty) {
                rq.ended_by = EndedBy::Client;
                return Ok(Pump::Divert(Next::Go(Phase::Close)));
            }
        }
        Ok(Pump::Moved(progress || used > 0))
    }

    /// The rest of a Content-Length request body, client socket -> pipe -> upstream socket.
    fn splice_request(&mut self, rq: &mut Exchange, cx: &mut Cx) -> Result<Pump, Fault> {
        let Some(uk) = rq.up else {
            return Err(Fault::Internal("no upstream"));
        };
        let (Some(u), Some(pipe)) = (cx.ups.conns.get_mut(uk), rq.preq.as_mut()) else {
            return Err(Fault::Internal("splice slots"));
        };
        let mut progress = false;
        for _ in 0..2 {
            match crate::splice::drain(&u.sock, &mut u.io, pipe) {
                Ok(n) => progress |= n > 0,
                Err(_) => {
                    rq.up_wr_failed = true;
                    rq.close_after = true;
                    return Ok(Pump::Moved(progress));
                }
            }
            let Some(rem) = rq.req_body.spliceable() else { break };
            let room = PIPE_BYTES.saturating_sub(pipe.pending);
            if room == 0 || rem == 0 {
                break;
            }
            let max = usize::try_from(rem).unwrap_or(usize::MAX).min(room);
            match crate::splice::fill(&self.sock, &mut self.io, pipe, max) {
                Ok(Spliced::Bytes(n)) => {
                    rq.req_body.spliced(n as u64);
                    rq.bytes_in += n as u64;
                    progress = true;
                }
                Ok(Spliced::Idle) => break,
                // A client that vanishes mid-request aborts its exchange.
                Ok(Spliced::Eof) | Err(_) => {
                    rq.client_eof = true;
                    rq.ended_by = EndedBy::Client;
                    return Ok(Pump::Divert(Next::Go(Phase::Close)));
                }
            }
        }
        Ok(Pump::Moved(progress))
    }

    /// The rest of a long Content-Length or close-delimited response, upstream -> pipe -> client.
    /// Returns whether bytes moved.
    fn splice_response(&mut self, rq: &mut Exchange, cx: &mut Cx) -> Result<bool, Fault> {
        let Some(uk) = rq.up else {
            return Err(Fault::Internal("no upstream"));
        };
        let (Some(u), Some(pipe)) = (cx.ups.conns.get_mut(uk), rq.presp.as_mut()) else {
            return Err(Fault::Internal("splice slots"));
        };
        let mut progress = false;
        for _ in 0..2 {
            progress |= crate::splice::drain(&self.sock, &mut self.io, pipe).map_err(|_| Fault::Client)? > 0;
            let room = PIPE_BYTES.saturating_sub(pipe.pending);
            if room == 0 || rq.up_eof {
                break;
            }
            let max = rq.resp_body.spliceable().map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX).min(room));
            if max == 0 {
                break;
            }
            match crate::splice::fill(&u.sock, &mut u.io, pipe, max) {
                Ok(Spliced::Bytes(n)) => {
                    rq.resp_body.spliced(n as u64);
                    rq.bytes_out += n as u64;
                    progress = true;
                }
                Ok(Spliced::Idle) => break,
                Ok(Spliced::Eof) => rq.up_eof = true,
                Err(_) => (rq.up_eof, rq.up_cut) = (true, true),
            }
        }
        Ok(progress)
    }

    // ---- RespBody ---------------------------------------------------------------------------

    fn resp_body(&mut self, rq: &mut Exchange, cx: &mut Cx) -> Step {
        let mut progress = match self.pump_request(rq, cx)? {
            Pump::Moved(moved) => moved,
            Pump::Divert(next) => return Ok(next),
        };
        let Some(uk) = rq.up else {
            return Err(Fault::Internal("no upstream"));
        };
        let Some(u) = cx.ups.conns.get_mut(uk) else {
            return Err(Fault::Internal("upstream slot"));
        };
        if let Some(b) = rq.uout.as_mut()
            && !rq.up_wr_failed
        {
            match up_flush(u, &mut cx.tls_bufs, b) {
                Ok(n) => progress |= n > 0,
                // The response keeps coming in; the rest of the request is dropped.
                Err(_) => rq.up_wr_failed = true,
            }
        }
        // TLS on either side: records, not bytes, so bodies are copied.
        let spliceable =
            self.tls.is_none() && u.tls.is_none() && rq.resp_body.spliceable().is_some_and(|n| n > SPLICE_MIN_BYTES);
        let drained = rq.uin.as_ref().is_none_or(Buf::is_empty) && self.cout.as_ref().is_none_or(Buf::is_empty);
        let pending = rq.presp.as_ref().is_some_and(|p| p.pending > 0);
        if pending || (spliceable && drained) {
            if rq.presp.is_none() {
                rq.presp = cx.pipes.take();
            }
            if rq.presp.is_some() {
                progress |= self.splice_response(rq, cx)?;
                return Ok(self.resp_progress(rq, cx, progress));
            }
        }
        let Some(u) = cx.ups.conns.get_mut(uk) else {
            return Err(Fault::Internal("upstream slot"));
        };
        let uin = cx.bufs.fill_slot(&mut rq.uin);
        let cout = cx.bufs.fill_slot(&mut self.cout);
        if !rq.up_eof {
            match up_fill(u, &mut cx.tls_bufs, uin) {
                Ok(Filled::Data(_)) => progress = true,
                Ok(Filled::Idle) => {}
                Ok(Filled::Eof) => (rq.up_eof, rq.up_cut) = (true, !u.ended_cleanly()),
                Err(_) => (rq.up_eof, rq.up_cut) = (true, true),
            }
        }
        let spare = cout.spare();
        let (used, made) = match &mut rq.resp_body {
            Body::Length(rem) => {
                let n = copy_prefix(uin.filled(), spare, *rem);
                *rem -= n as u64;
                (n, n)
            }
            Body::Raw => {
                let n = copy_prefix(uin.filled(), spare, u64::MAX);
                (n, n)
            }
            Body::Chunked(dec) => match dec.relay(uin.filled(), spare, rq.rechunk) {
                Ok(r) => r,
                Err(_) => {
                    // Bad framing mid-body: the response head is out; all we can do is cut it.
                    self.drop_upstream(rq, cx);
                    return Ok(Next::Go(Phase::Close));
                }
            },
            Body::Done => (0, 0),
        };
        uin.consume(used);
        cout.commit(made);
        rq.bytes_out += made as u64;
        progress |= used > 0;
        progress |= self.flush_client(cx)? > 0;
        Ok(self.resp_progress(rq, cx, progress))
    }

    /// After a round of response body: finished, cut short, or waiting.
    fn resp_progress(&mut self, rq: &mut Exchange, cx: &mut Cx, progress: bool) -> Next {
        let t = cx.cfg.timeouts;
        if rq.resp_done() {
            return self.finish_exchange(rq, cx);
        }
        let pipe_empty = rq.presp.as_ref().is_none_or(|p| p.pending == 0);
        if rq.up_eof && rq.uin.as_ref().is_none_or(Buf::is_empty) && pipe_empty {
            // A close-delimited body ends with the upstream's stream, unless that was cut.
            if matches!(rq.resp_body, Body::Raw) && !rq.up_cut {
                rq.resp_body = Body::Done;
                rq.resp_reusable = false;
                return self.finish_exchange(rq, cx);
            }
            // Cut short: the client sees a body shorter than its framing promised (or, for a
            // close-delimited one, no close_notify), then a close.
            rq.ended_by = EndedBy::Upstream;
            rq.resp_cut = true;
            self.drop_upstream(rq, cx);
            rq.close_after = true;
            return Next::Go(Phase::Respond);
        }
        if progress {
            let client_slow = self.cout.as_ref().is_some_and(|b| !b.is_empty()) || !pipe_empty;
            self.deadline = cx.arm(if client_slow { t.client_send } else { t.upstream_body });
            return Next::Again;
        }
        Next::Wait
    }

    /// The response has ended: pool or drop the upstream connection, then the next request or
    /// the close.
    fn finish_exchange(&mut self, rq: &mut Exchange, cx: &mut Cx) -> Next {
        // A HEAD response has no body (RFC 9110 §9.3.2), but an application that answers HEAD
        // as GET writes one anyway, often in a later segment: pooled, the connection would hand
        // those bytes to the next request sent on it as its response. A plain connection is not
        // pooled, and is reset rather than closed, so that a flood of HEADs leaves no TIME_WAIT
        // ports behind. A TLS one is pooled (SECURITY.md says so): a handshake per HEAD would
        // be an amplification, and allocates.
        if rq.is_head
            && let Some(uk) = rq.up
            && cx.ups.conns.get(uk).is_some_and(|u| u.tls.is_none())
        {
            rq.up = None;
            cx.ups.reset(uk);
            cx.fd_freed = true;
        }
        let clean = rq.resp_reusable
            && rq.req_done()
            && !rq.up_eof
            && rq.uin.as_ref().is_none_or(Buf::is_empty)
            && rq.uout.as_ref().is_none_or(Buf::is_empty);
        if !rq.req_done() {
            rq.close_after = true; // the rest of the body cannot be told from a request
        }
        match rq.up.take() {
            Some(uk) if clean => {
                let idle = cx.cfg.timeouts.upstream_idle;
                let at = cx.arm(idle);
                cx.ups.release(uk, at);
            }
            Some(uk) => {
                cx.ups.close(uk);
                cx.fd_freed = true;
            }
            None => {}
        }
        if let Some(b) = rq.uin.as_mut() {
            b.clear();
        }
        if let Some(b) = rq.uout.as_mut() {
            b.clear();
        }
        cx.pipes.give_slot(&mut rq.preq);
        cx.pipes.give_slot(&mut rq.presp);
        self.log_done(rq, cx);
        if rq.close_after { Next::Go(Phase::Respond) } else { Next::Go(Phase::ReadHead) }
    }

    // ---- Tunnel -----------------------------------------------------------------------------

    /// Both directions raw until both sides have closed their write side. Buffered bytes go
    /// first, then each direction switches to a pipe.
    fn tunnel(&mut self, rq: &mut Exchange, cx: &mut Cx) -> Step {
        let mut progress = self.flush_client(cx)? > 0;
        let Some(uk) = rq.up else {
            return Err(Fault::Internal("no upstream"));
        };
        let Some(u) = cx.ups.conns.get_mut(uk) else {
            return Err(Fault::Internal("upstream slot"));
        };
        let cin = cx.bufs.fill_slot(&mut self.cin);
        let uin = cx.bufs.fill_slot(&mut rq.uin);
        if self.tls.is_some() || u.tls.is_some() {
            // Through buffers both ways: TLS bytes cannot be spliced. Upstream bytes wait for
            // the 101 head in cout.
            if self.cout.as_ref().is_some_and(|b| !b.is_empty()) {
                return Ok(if progress { Next::Again } else { Next::Wait });
            }
            let c = End { sock: &self.sock, io: &mut self.io, tls: self.tls.as_deref_mut() };
            let up = End { sock: &u.sock, io: &mut u.io, tls: u.tls.as_deref_mut() };
            let eofs = (&mut rq.client_eof, &mut rq.up_eof);
            let Ok(moved) = relay_buffered(c, up, &mut cx.tls_bufs, cin, uin, eofs) else {
                return Ok(Next::Go(Phase::Close));
            };
            progress |= moved;
            // Each end is passed on as it came: close_notify only for a clean end (a FIN from a
            // plain peer, close_notify from a TLS one), so a truncation stays one (RFC 8446 §6.1).
            if rq.client_eof && cin.is_empty() && !rq.up_shut {
                let clean = self.tls.as_deref().is_none_or(Tls::closed_cleanly);
                if let Some(t) = u.tls.as_deref_mut().filter(|_| clean) {
                    t.close_notify(&u.sock, &mut u.io, &mut cx.tls_bufs);
                }
                let _ = u.sock.shutdown(Shutdown::Write);
                rq.up_shut = true;
            }
            if rq.up_eof && uin.is_empty() && !rq.client_shut {
                let clean = u.ended_cleanly();
                if let Some(t) = self.tls.as_deref_mut().filter(|_| clean) {
                    t.close_notify(&self.sock, &mut self.io, &mut cx.tls_bufs);
                }
                let _ = self.sock.shutdown(Shutdown::Write);
                rq.client_shut = true;
            }
        } else {
            let (c, up) = ((&self.sock, &mut self.io), (&u.sock, &mut u.io));
            let Ok(moved) = relay_raw(c, up, cin, &mut rq.preq, &mut cx.pipes, &mut rq.client_eof) else {
                return Ok(Next::Go(Phase::Close));
            };
            progress |= moved;
            if rq.client_eof && cin.is_empty() && rq.preq.as_ref().is_none_or(|p| p.pending == 0) && !rq.up_shut {
                let _ = u.sock.shutdown(Shutdown::Write);
                rq.up_shut = true;
            }
            // upstream -> client, after the 101 head in cout
            if self.cout.as_ref().is_none_or(Buf::is_empty) {
                let (c, up) = ((&self.sock, &mut self.io), (&u.sock, &mut u.io));
                let Ok(moved) = relay_raw(up, c, uin, &mut rq.presp, &mut cx.pipes, &mut rq.up_eof) else {
                    return Ok(Next::Go(Phase::Close));
                };
                progress |= moved;
                let drained = uin.is_empty() && rq.presp.as_ref().is_none_or(|p| p.pending == 0);
                if rq.up_eof && drained && !rq.client_shut {
                    let _ = self.sock.shutdown(Shutdown::Write);
                    rq.client_shut = true;
                }
            }
        }
        if rq.client_shut && rq.up_shut {
            return Ok(Next::Go(Phase::Close));
        }
        if progress {
            self.deadline = cx.arm(cx.cfg.timeouts.upstream_body);
            return Ok(Next::Again);
        }
        Ok(Next::Wait)
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
        let cin = cx.bufs.fill_slot(&mut self.cin);
        cin.clear();
        match client_fill(&self.sock, &mut self.io, &mut self.tls, &mut cx.tls_bufs, cin) {
            Ok(Filled::Data(_)) => {
                cin.clear();
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

    /// The deadline passed. Returns whether the connection should be stepped again (it has a
    /// response to write) rather than closed.
    pub fn on_timeout(&mut self, cx: &mut Cx) -> Result<(), Fault> {
        let mut rq = self.rq.take().unwrap_or_else(|| cx.exchanges.take());
        let r = self.timed_out(&mut rq, cx);
        self.park(rq, cx);
        r
    }

    fn timed_out(&mut self, rq: &mut Exchange, cx: &mut Cx) -> Result<(), Fault> {
        rq.ended_by = EndedBy::Timeout;
        if rq.start.is_some() || self.phase != Phase::ReadHead {
            let (peer, phase) = (self.peer, self.phase);
            cx.log.error(cx.now, format_args!("info: client {peer}: timeout in {phase:?}"));
        }
        let next = match self.phase {
            Phase::ReadHead => {
                let partial = self.cin.as_ref().is_some_and(|b| !b.is_empty());
                if partial {
                    self.fail(rq, cx, 408, true)? // RFC 9110 §15.5.9
                } else {
                    Next::Go(Phase::Close)
                }
            }
            Phase::Connect => {
                self.connect_failed(rq, cx, true);
                Next::Go(Phase::Connect)
            }
            Phase::Exchange => {
                let client_slow = !rq.req_done() && !rq.up_wr_failed && rq.uout.as_ref().is_none_or(Buf::is_empty);
                if client_slow {
                    self.fail(rq, cx, 408, true)?
                } else {
                    self.fail(rq, cx, 504, !rq.req_done())? // RFC 9110 §15.6.5
                }
            }
            Phase::RespBody | Phase::Tunnel | Phase::Respond | Phase::Linger | Phase::Close => Next::Go(Phase::Close),
        };
        if let Next::Go(p) = next {
            self.enter(rq, p, cx);
        }
        Ok(())
    }
}

/// One direction of a tunnel, `src` to `dst`: bytes already in `buf` first, then through a pipe
/// (or `buf` again when no pipe is free). Sets `eof` when `src` has closed. Returns progress.
fn relay_raw(
    src: (&TcpStream, &mut Io),
    dst: (&TcpStream, &mut Io),
    buf: &mut Buf,
    pipe: &mut Option<Pipe>,
    pipes: &mut PipePool,
    eof: &mut bool,
) -> io::Result<bool> {
    let (src, sio) = src;
    let (dst, dio) = dst;
    let mut progress = false;
    if !buf.is_empty() {
        progress |= flush(dst, dio, buf)? > 0;
        if !buf.is_empty() {
            return Ok(progress);
        }
    }
    if pipe.is_none() {
        *pipe = pipes.take();
    }
    match pipe {
        Some(p) => {
            for _ in 0..2 {
                progress |= crate::splice::drain(dst, dio, p)? > 0;
                if p.pending > 0 || *eof {
                    break;
                }
                match crate::splice::fill(src, sio, p, PIPE_BYTES)? {
                    Spliced::Bytes(_) => progress = true,
                    Spliced::Idle => break,
                    Spliced::Eof => *eof = true,
                }
            }
        }
        None => {
            if !*eof {
                match fill(src, sio, buf)? {
                    Filled::Data(_) => progress = true,
                    Filled::Idle => {}
                    Filled::Eof => *eof = true,
                }
            }
            progress |= flush(dst, dio, buf)? > 0;
        }
    }
    Ok(progress)
}

/// Writes Apex's own response (an error, or a redirect) into `cout`. Returns its length.
fn queue_answer(
    cout: &mut Option<Buf>,
    bufs: &mut BufPool,
    rq: &Exchange,
    status: u16,
    to: Option<Location<'_>>,
) -> Result<usize, Fault> {
    let ka10 = rq.client_minor == 0 && !rq.close_after;
    let out = bufs.fill_slot(cout);
    let mut w = Out::new(out.spare());
    write_answer(status, to, rq.close_after, rq.is_head, ka10, &mut w);
    // No room: the client has not read earlier responses (or a redirect's target is nearly a
    // whole buffer long); give up.
    let n = w.finish().ok_or(Fault::Client)?;
    out.commit(n);
    Ok(n)
}

/// One write of `buf` to an upstream: to the socket, or sealed in TLS records.
fn up_flush(u: &mut UpConn, pool: &mut TlsBufPool, buf: &mut Buf) -> io::Result<usize> {
    End { sock: &u.sock, io: &mut u.io, tls: u.tls.as_deref_mut() }.flush(pool, buf)
}

/// One read from an upstream into `buf`: from the socket, or opened from TLS records.
fn up_fill(u: &mut UpConn, pool: &mut TlsBufPool, buf: &mut Buf) -> io::Result<Filled> {
    End { sock: &u.sock, io: &mut u.io, tls: u.tls.as_deref_mut() }.fill(pool, buf)
}

/// One read from the client into `buf`: from the socket, or decrypted from TLS records.
fn client_fill(
    sock: &TcpStream,
    io: &mut Io,
    tls: &mut Option<Box<Tls>>,
    pool: &mut TlsBufPool,
    buf: &mut Buf,
) -> io::Result<Filled> {
    End { sock, io, tls: tls.as_deref_mut() }.fill(pool, buf)
}

/// One end of a connection: a socket, and its TLS if it has one.
struct End<'a> {
    sock: &'a TcpStream,
    io: &'a mut Io,
    tls: Option<&'a mut Tls>,
}

impl End<'_> {
    fn fill(&mut self, pool: &mut TlsBufPool, buf: &mut Buf) -> io::Result<Filled> {
        match self.tls.as_deref_mut() {
            Some(t) => t.read(self.sock, self.io, pool, buf),
            None => fill(self.sock, self.io, buf),
        }
    }

    fn flush(&mut self, pool: &mut TlsBufPool, buf: &mut Buf) -> io::Result<usize> {
        match self.tls.as_deref_mut() {
            Some(t) => t.write(self.sock, self.io, pool, buf),
            None => flush(self.sock, self.io, buf),
        }
    }
}

/// A tunnel with TLS on either side: client -> upstream through `cin`, upstream -> client
/// through `uin`. `eofs`: (client, upstream) closed their side.
fn relay_buffered(
    mut client: End<'_>,
    mut up: End<'_>,
    pool: &mut TlsBufPool,
    cin: &mut Buf,
    uin: &mut Buf,
    eofs: (&mut bool, &mut bool),
) -> io::Result<bool> {
    let (client_eof, up_eof) = eofs;
    let mut progress = false;
    for _ in 0..2 {
        progress |= up.flush(pool, cin)? > 0;
        if !*client_eof && cin.spare_len() > 0 {
            match client.fill(pool, cin)? {
                Filled::Data(_) => progress = true,
                Filled::Idle => {}
                Filled::Eof => *client_eof = true,
            }
        }
        progress |= client.flush(pool, uin)? > 0;
        if !*up_eof && uin.spare_len() > 0 {
            match up.fill(pool, uin)? {
                Filled::Data(_) => progress = true,
                Filled::Idle => {}
                Filled::Eof => *up_eof = true,
            }
        }
    }
    progress |= up.flush(pool, cin)? > 0;
    progress |= client.flush(pool, uin)? > 0;
    Ok(progress)
}

/// Copies the front of `src` into `dst`: as much as fits, at most `max` bytes. Returns how many.
fn copy_prefix(src: &[u8], dst: &mut [u8], max: u64) -> usize {
    let n = usize::try_from(max).unwrap_or(usize::MAX).min(src.len()).min(dst.len());
    if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
        d.copy_from_slice(s);
    }
    n
}

/// Out of file descriptors or socket memory: nobody's fault but the machine's.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].iter().any(|x| x.raw_os_error() == code)
}

#[cfg(test)]
mod tests {
    /// An idle keep-alive connection holds no buffer and no exchange, only its `Conn` in the
    /// slab: the hot-path issue's budget is 0.5 KiB of RSS per idle connection, and the slab
    /// entry is most of it (the rest is the kernel-side epoll entry, not RSS).
    /// The retry path (a GET on a reused connection that failed before any response byte) goes
    /// to a fresh connection; a failed write on the old one once kept the head from being sent
    /// on the new one, and the client got a 504 after `upstream_head`. On loopback the socket
    /// sequence (a reset between the last poll and the write) cannot be forced, so this checks
    /// the reset itself.
    #[test]
    fn retry_forgets_the_failed_connection() {
        let mut rq = super::Exchange::new();
        rq.tried = 0b101;
        rq.up_wr_failed = true;
        rq.up_eof = true;
        rq.up_shut = true;
        rq.resp_scan = 7;
        rq.interim = 2;
        rq.keep_alive = true;
        rq.head_len = 40;
        rq.reset_for_retry();
        assert!(rq.retried);
        assert_eq!(rq.tried, 0, "every server may be tried again");
        assert!(!rq.up_wr_failed && !rq.up_eof && !rq.up_shut);
        assert_eq!((rq.resp_scan, rq.interim), (0, 0));
        assert!(rq.keep_alive && rq.head_len == 40, "the request itself is kept");
        assert!(rq.sent_all(), "a body-less request has nothing more to send");
    }

    #[test]
    fn idle_connection_fits_budget() {
        let size = std::mem::size_of::<super::Conn>();
        assert!(size <= 128, "Conn grew to {size} bytes (104 now)");
    }
}
