//! Per-request bookkeeping: what a request in flight needs and an idle keep-alive connection does
//! not. Lent from the worker's `FreeList` when a request's first byte arrives, reset and given
//! back when the connection is idle again (`Conn::park`), keeping only its response buffer
//! (`clear`).
//!
//! What a phase owns (its upstream connection) is in `Phase`, not here: this holds the buffers
//! and pipes, the body framing of each direction, and the access-log fields. The response body's
//! framing stays here rather than in `Phase::RespBody` so that `Conn` (and so every idle
//! connection) stays within its 128-byte budget (`conn::tests::idle_connection_fits_budget`).

use std::sync::Arc;

use crate::buf::Buf;
use crate::config::{Config, PerRequest, Timeout};
use crate::h1::chunked::Decoder;
use crate::limits::REQUEST_ID_MAX;
use crate::splice::Pipe;

use super::Cx;

/// How a body is being moved.
// A tag byte of its own (`repr(u8)`): without one the variant is kept in a niche of the chunk
// decoder's state, and each of the nine or so checks a request makes (`is_done`, `req_done`)
// finds it by subtracting and comparing. get −38 instructions a request (bench/README.md,
// round 12).
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub(super) enum Body {
    Done,
    Length(u64),
    Chunked(Decoder),
    /// Until EOF (close-delimited responses).
    Raw,
}

impl Body {
    /// Bytes that may be spliced now without touching the framing: the rest of a
    /// Content-Length body, the rest of the current chunk's data, or anything until EOF.
    pub(super) fn spliceable(&self) -> Option<u64> {
        match self {
            Body::Length(n) => Some(*n),
            Body::Chunked(d) => d.data_left(),
            Body::Raw => Some(u64::MAX),
            Body::Done => None,
        }
    }

    /// `n` bytes went through a pipe.
    pub(super) fn spliced(&mut self, n: u64) {
        match self {
            Body::Length(rem) => *rem = rem.saturating_sub(n),
            Body::Chunked(d) => d.skip_data(n),
            Body::Raw | Body::Done => {}
        }
    }

    pub(super) fn is_done(&self) -> bool {
        match self {
            Body::Done => true,
            Body::Length(n) => *n == 0,
            Body::Chunked(d) => d.is_done(),
            Body::Raw => false,
        }
    }
}

/// Which side ended the exchange on an error (the access log's `end=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EndedBy {
    Nobody,
    Client,
    Upstream,
    Timeout,
}

impl EndedBy {
    pub(super) const fn as_str(self) -> &'static str {
        match self {
            EndedBy::Nobody => "-",
            EndedBy::Client => "client",
            EndedBy::Upstream => "upstream",
            EndedBy::Timeout => "timeout",
        }
    }
}

/// How the upstream's stream has ended, as far as this exchange has read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UpEnd {
    Open,
    /// An end that can end a message: a FIN from a plain upstream, close_notify from a TLS one.
    Clean,
    /// An end that ends no message: an error, or a TLS stream without close_notify (RFC 8446
    /// §6.1: truncation cannot be told from an end otherwise).
    Cut,
}

impl UpEnd {
    pub(super) fn ended(self) -> bool {
        self != UpEnd::Open
    }
}

/// Whether this request may be sent again on a fresh connection (RFC 9110 §9.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Retry {
    /// Not idempotent, or it has a body Apex no longer holds.
    Never,
    /// Idempotent without a body: once, if a reused connection fails before any response byte.
    Once,
    /// Retried already.
    Used,
}

/// Out of fds for an upstream connect: the worker closes an idle connection for this request,
/// once (an active request comes before an idle connection, as nginx reuses idle keep-alives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FdReclaim {
    No,
    /// Asked the worker for an fd; `Conn::take_starved` hands the request over.
    Asked,
    /// An fd was freed for it; a second failure is a 502.
    Done,
}

#[derive(Debug)]
pub struct Exchange {
    pub(super) uin: Option<Buf>,
    pub(super) uout: Option<Buf>,
    /// The config snapshot this request was routed with: it finishes on it, reload or not.
    pub(super) snap: Option<Arc<Config>>,
    /// Pipes for splicing the request (client -> upstream) and response directions.
    pub(super) preq: Option<Pipe>,
    pub(super) presp: Option<Pipe>,
    /// This request's access-log fields in `Cx::recs`.
    pub(super) rec: Option<u32>,
    /// The client X-Forwarded-For named, from a peer in `trusted_proxies` (else the peer).
    pub(super) client: Option<std::net::IpAddr>,
    /// Its group's `send_proxy`: a fresh upstream connection of its own, header first, closed after.
    pub(super) send_proxy: Option<crate::config::SendProxy>,
    pub(super) head_scan: u32,
    pub(super) head_timer: bool,
    pub(super) line_ok: bool,
    pub(super) keep_alive: bool,
    pub(super) close_after: bool,
    pub(super) client_minor: u8,
    pub(super) is_head: bool,
    pub(super) retry: Retry,
    /// Hashes of the protocols the client asked to upgrade to (none: no upgrade asked).
    pub(super) upgrade: [u64; 2],
    pub(super) group: u32,
    /// The route's metrics slot (0: not routed).
    pub(super) route: u32,
    pub(super) server: u32,
    /// A connect that failed (server, timed out), not yet logged: see `connect::failover`.
    pub(super) failed: Option<(u32, bool)>,
    pub(super) tried: u64,
    /// Its route's timeouts, body limit and retry policy (the global ones until it is routed).
    pub(super) per: PerRequest,
    /// Servers it failed on, as its route's `retry` counts them (`RetryPolicy::another`).
    pub(super) fails: u8,
    /// Sent again after the upstream may have acted on it: its connections count against the
    /// worker's retry budget (`Upstreams::retry_budget`).
    pub(super) retrying: bool,
    /// The request's key for `balance = "hash"` (balance.rs), when it has one.
    pub(super) key: Option<u64>,
    /// Its route's rules in `snap`'s `Config::rules`, if it has any.
    pub(super) rules: Option<u32>,
    /// Its request id (`id_len` bytes; 0: none), taken or made once per request, and whether
    /// it goes out as X-Request-Id (`[log] request_id`) or only into templates.
    pub(super) id: [u8; REQUEST_ID_MAX],
    pub(super) id_len: u8,
    pub(super) id_out: bool,
    pub(super) head_len: u32,
    pub(super) req_body: Body,
    pub(super) resp_body: Body,
    pub(super) rechunk: bool,
    pub(super) resp_scan: u32,
    pub(super) resp_reusable: bool,
    pub(super) resp_seen: bool,
    pub(super) interim: u8,
    pub(super) timed_out: bool,
    pub(super) client_eof: bool,
    pub(super) up_end: UpEnd,
    /// The response was cut short: the client's connection ends without close_notify, so a
    /// TLS client can tell it from a complete close-delimited response.
    pub(super) resp_cut: bool,
    /// A tunnel passed each side's end on to the other.
    pub(super) client_shut: bool,
    pub(super) up_shut: bool,
    /// A write upstream failed: the request side is over (nothing more is read from the client
    /// or sent), but what the upstream already answered is still read and relayed.
    pub(super) up_wr_failed: bool,
    /// For the access log: when the head was complete, what was answered, bytes each way,
    /// and which side ended the exchange on an error. Times are on `Cx::now_ns`'s clock.
    pub(super) start: Option<u64>,
    /// When the response's first byte came from the upstream (its time to first byte).
    pub(super) first_byte: Option<u64>,
    pub(super) status: u16,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    /// Of `bytes_out`, the response heads' bytes (the rest is body, nginx's `$body_bytes_sent`).
    pub(super) head_out: u64,
    /// Of those, bytes that went through a pipe (`splice(2)`), not a buffer.
    pub(super) spliced_in: u64,
    pub(super) spliced_out: u64,
    pub(super) ended_by: EndedBy,
    pub(super) logged: bool,
    pub(super) fd: FdReclaim,
}

impl Exchange {
    pub(crate) const fn new() -> Self {
        Exchange {
            uin: None,
            uout: None,
            snap: None,
            preq: None,
            presp: None,
            rec: None,
            client: None,
            send_proxy: None,
            head_scan: 0,
            head_timer: false,
            line_ok: false,
            keep_alive: false,
            close_after: false,
            client_minor: 1,
            is_head: false,
            retry: Retry::Never,
            upgrade: [0; 2],
            group: 0,
            route: 0,
            server: 0,
            failed: None,
            tried: 0,
            key: None,
            rules: None,
            id: [0; REQUEST_ID_MAX],
            id_len: 0,
            id_out: false,
            per: PerRequest {
                upstream_head: Timeout::from_millis(0),
                upstream_body: Timeout::from_millis(0),
                client_body: Timeout::from_millis(0),
                body_bytes: 0,
                retry: crate::config::RetryPolicy::DEFAULT,
            },
            fails: 0,
            retrying: false,
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
            up_end: UpEnd::Open,
            resp_cut: false,
            client_shut: false,
            up_shut: false,
            up_wr_failed: false,
            start: None,
            first_byte: None,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            head_out: 0,
            spliced_in: 0,
            spliced_out: 0,
            ended_by: EndedBy::Nobody,
            logged: false,
            fd: FdReclaim::No,
        }
    }

    /// Holds nothing and has seen nothing: can go back to the pool as it is. In `ReadHead`,
    /// only the head-scan fields change before a request starts; `enter` resets the rest.
    pub(super) fn is_pristine(&self) -> bool {
        self.start.is_none()
            && self.head_scan == 0
            && !self.head_timer
            && !self.line_ok
            && self.ended_by == EndedBy::Nobody
            && !self.close_after
            && self.uin.as_ref().is_none_or(Buf::is_empty) // kept by `clear`, empty
            && self.uout.is_none()
            && self.snap.is_none()
            && self.preq.is_none()
            && self.presp.is_none()
            && self.rec.is_none()
    }

    /// The head scan has not begun: what `is_pristine` comes to in `ReadHead` after a step
    /// that ended well (`Conn::park`).
    pub(super) fn head_untouched(&self) -> bool {
        self.head_scan == 0 && !self.head_timer && !self.line_ok
    }

    /// Gives back what this exchange holds (buffers, pipes, the access-log record) and resets
    /// it for the next request. Its upstream connection, if any, belongs to the phase and has
    /// been pooled or closed already.
    ///
    /// The response buffer (`uin`) stays, emptied: nearly every request reads a response, and
    /// the next one this exchange serves reads into it without a trip through the pool (a take
    /// and a give, about 25 instructions a request; bench/README.md, round 13). That is at most
    /// one buffer per pooled exchange, and the pool holds as many exchanges as requests were
    /// ever in flight at once: at a peak each of those held a buffer or two of the pool's anyway.
    pub(super) fn clear(&mut self, cx: &mut Cx) {
        let mut uin = self.uin.take();
        if let Some(b) = uin.as_mut() {
            b.clear();
        }
        cx.bufs.release(&mut self.uout);
        cx.pipes.give_slot(&mut self.preq);
        cx.pipes.give_slot(&mut self.presp);
        if let Some(k) = self.rec.take() {
            cx.recs.try_remove(k as usize);
        }
        *self = Exchange::new();
        self.uin = uin;
    }

    /// The request id, if it has one.
    pub(super) fn id(&self) -> &[u8] {
        self.id.get(..usize::from(self.id_len)).unwrap_or(&[])
    }

    /// Takes the request's X-Request-Id if it has exactly one and it is sane, else makes one.
    pub(super) fn take_id(&mut self, headers: &[httparse::Header<'_>], ids: &mut crate::rules::Ids) {
        let mut given = headers.iter().filter(|h| h.name.as_bytes().eq_ignore_ascii_case(crate::rules::REQUEST_ID));
        if let (Some(h), None) = (given.next(), given.next())
            && crate::rules::sane_id(h.value)
            && let Some(dst) = self.id.get_mut(..h.value.len())
        {
            dst.copy_from_slice(h.value);
            self.id_len = h.value.len() as u8; // at most REQUEST_ID_MAX
            return;
        }
        self.make_id(ids);
    }

    /// A new id from the worker's generator.
    pub(super) fn make_id(&mut self, ids: &mut crate::rules::Ids) {
        let mut fresh = [0u8; 32];
        ids.fill(&mut fresh);
        if let Some(dst) = self.id.get_mut(..32) {
            dst.copy_from_slice(&fresh);
            self.id_len = 32;
        }
    }

    /// Forgets what was buffered for or from the upstream (its connection is gone or pooled);
    /// the buffers stay, empty, until the exchange ends.
    pub(super) fn drop_up_bytes(&mut self) {
        if let Some(b) = self.uin.as_mut() {
            b.clear();
        }
        if let Some(b) = self.uout.as_mut() {
            b.clear();
        }
    }

    /// A retry on a fresh connection: what was learnt about the failed one does not carry over
    /// (a write that failed on it must not stop the head going out again on the new one).
    pub(super) fn reset_for_retry(&mut self) {
        self.retry = Retry::Used;
        self.tried = 0;
        self.again();
    }

    /// Sent again, to another server (the route's `retry`): as `reset_for_retry`, but the
    /// servers it failed on stay tried. The head, still at the start of `uout` (a request
    /// without a body put nothing after it), goes out again.
    pub(super) fn again(&mut self) {
        if let Some(b) = self.uout.as_mut() {
            b.rewind(self.head_len as usize);
        }
        self.resp_seen = false;
        self.first_byte = None;
        self.up_wr_failed = false;
        self.up_end = UpEnd::Open;
        self.up_shut = false;
        self.resp_scan = 0;
        self.interim = 0;
    }

    /// The whole request body has been taken from the client (or there was none) and none of
    /// it waits in a pipe; a copied tail may still wait in `uout` (see `req_sent`).
    pub(super) fn req_done(&self) -> bool {
        self.req_body.is_done() && self.preq.as_ref().is_none_or(|p| p.pending == 0)
    }

    /// The whole request has reached the upstream socket: nothing of it waits in Apex.
    pub(super) fn req_sent(&self) -> bool {
        self.req_done() && self.uout.as_ref().is_none_or(Buf::is_empty)
    }

    /// Nothing more will be sent upstream: the request is done, or its sending failed.
    pub(super) fn sent_all(&self) -> bool {
        self.req_done() || self.up_wr_failed
    }

    /// The whole response body has reached the client socket's side of the pipe.
    pub(super) fn resp_done(&self) -> bool {
        self.resp_body.is_done() && self.presp.as_ref().is_none_or(|p| p.pending == 0)
    }

    /// The snapshot this request was routed with. Set before `Connect`, so every later phase
    /// has one; a miss is a broken invariant.
    pub(super) fn snap(&self) -> Result<&Config, super::Fault> {
        debug_assert!(self.snap.is_some(), "a routed request holds its snapshot");
        self.snap.as_deref().ok_or(super::Fault::Internal(super::Broken::NoSnapshot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The retry path (a GET on a reused connection that failed before any response byte) goes
    /// to a fresh connection; a failed write on the old one once kept the head from being sent
    /// on the new one, and the client got a 504 after `upstream_head`. On loopback the socket
    /// sequence (a reset between the last poll and the write) cannot be forced, so this checks
    /// the reset itself.
    #[test]
    fn retry_forgets_the_failed_connection() {
        let mut rq = Exchange::new();
        rq.tried = 0b101;
        rq.up_wr_failed = true;
        rq.up_end = UpEnd::Cut;
        rq.up_shut = true;
        rq.resp_scan = 7;
        rq.interim = 2;
        rq.keep_alive = true;
        rq.head_len = 40;
        rq.retry = Retry::Once;
        rq.reset_for_retry();
        assert_eq!(rq.retry, Retry::Used);
        assert_eq!(rq.tried, 0, "every server may be tried again");
        assert!(!rq.up_wr_failed && !rq.up_end.ended() && !rq.up_shut);
        assert_eq!((rq.resp_scan, rq.interim), (0, 0));
        assert!(rq.keep_alive && rq.head_len == 40, "the request itself is kept");
        assert!(rq.sent_all(), "a body-less request has nothing more to send");
    }
}
