//! Finding the upstream connection for a routed request (`Connect`): pick a server round-robin
//! among those not cooling down, take a pooled connection to it or open one (TCP, then TLS if
//! the group speaks it), and give up on a server that fails. Also what happens when the
//! upstream fails before its response head: one retry on a fresh connection where that is safe
//! (RFC 9110 §9.2.2), else Apex's own 502.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use mio::Interest;
use mio::net::TcpStream;

use crate::config::RetryPolicy;
use crate::log::{Kind, Level};
use crate::metrics::{Reject, UpError};
use crate::tls::Tls;
use crate::transport::Io;
use crate::upstream::{UpConn, UpKey};

use super::exchange::{FdReclaim, Retry};
use super::{Broken, ClientKey, Conn, Cx, Exchange, Fault, Next, Phase, Step, is_fd_exhaustion, up_conn};

impl Conn {
    /// Waits for a new connection: TCP up, then the TLS handshake (verification included)
    /// under the same `upstream_connect` deadline. A server that fails either is treated as
    /// one that refused the connection.
    pub(super) fn opening(&mut self, rq: &mut Exchange, cx: &mut Cx, up: UpKey) -> Step {
        let u = up_conn(&mut cx.ups, up)?;
        if u.connected {
            return Ok(Next::Go(Phase::Exchange(up)));
        }
        let ok = if u.tcp_up {
            let Some(t) = u.tls.as_deref_mut() else {
                debug_assert!(false, "tcp_up is set only for a TLS connection");
                return Err(Fault::Internal(Broken::TlsSlot));
            };
            match t.connect(&u.sock, &mut u.io, &mut cx.tls_bufs) {
                Ok(true) => Some(true),
                Ok(false) => return Ok(Next::Wait),
                Err(e) => {
                    if let Ok(addr) = u.sock.peer_addr() {
                        let now = crate::clock::instant(cx.now_ns);
                        cx.log.event_of(now, Level::Warn, Kind::Upstream, format_args!("upstream {addr}: tls: {e}"));
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
        if ok == Some(true) && !u.tcp_up && rq.send_proxy.is_some() && !self.send_proxy_header(rq, u) {
            return Ok(self.connect_failed(rq, cx, up, false));
        }
        let Some(u) = cx.ups.get_mut(up) else { return Err(Fault::Internal(Broken::UpstreamSlot)) };
        match ok {
            Some(true) if !u.tcp_up && u.tls.is_some() => {
                u.tcp_up = true;
                Ok(Next::Again)
            }
            Some(true) => {
                u.connected = true;
                let server = u.server;
                cx.ups.ok(server, cx.now_ms());
                failover(rq, cx, Some(server));
                Ok(Next::Go(Phase::Exchange(up)))
            }
            None => {
                u.io.writable = false;
                Ok(Next::Wait)
            }
            Some(false) => Ok(self.connect_failed(rq, cx, up, false)),
        }
    }

    /// `send_proxy`: the PROXY header naming this request's client (its port when the client is
    /// the peer, else 0) and the address it connected to, written once the TCP connect is up and
    /// before anything else (TLS included). It fits one segment of a fresh socket's empty send
    /// buffer: a short write is a failed connection, never a guess.
    #[cold]
    fn send_proxy_header(&self, rq: &Exchange, u: &UpConn) -> bool {
        use std::io::Write as _;
        let src = rq.client.map_or(self.peer, |ip| SocketAddr::new(ip, 0));
        let Ok(dst) = self.sock.local_addr() else { return false };
        let mut h = [0u8; 108]; // v1's longest line with CRLF; v2 with IPv6 is 52
        let v2 = rq.send_proxy == Some(crate::config::SendProxy::V2);
        let Some(n) = crate::proxy_proto::write(v2, src, dst, &mut h) else { return false };
        let Some(bytes) = h.get(..n) else { return false };
        matches!((&u.sock).write(bytes), Ok(w) if w == n)
    }

    /// Picks a server: a pooled connection to it, else a new one.
    pub(super) fn connect(&mut self, rq: &mut Exchange, cx: &mut Cx, key: ClientKey) -> Step {
        for _ in 0..=crate::limits::GROUP_SERVERS_CAP {
            let cfg = rq.snap()?;
            let Some((idx, server)) = cx.ups.pick(cfg, rq.group as usize, rq.tried, cx.now_ms(), rq.key) else {
                failover(rq, cx, None);
                let why = if rq.timed_out { Reject::UpstreamTimeout } else { Reject::UpstreamFailed };
                let close = !rq.req_done();
                return self.fail(rq, cx, why, close);
            };
            let stats = cx.ups.slot(server).and_then(|i| cx.metrics.server(i));
            rq.tried |= 1u64 << idx;
            rq.server = server as u32;
            // A retry goes to a fresh connection: the pooled one just failed us.
            if rq.retry != Retry::Used
                && rq.send_proxy.is_none()
                && let Some(up) = cx.ups.take_idle(server, key, rq.retry == Retry::Never)
            {
                if let Some(s) = stats {
                    s.pool_hits.inc();
                }
                if rq.retrying {
                    cx.ups.mark_retry(up);
                }
                failover(rq, cx, Some(server));
                return Ok(Next::Go(Phase::Exchange(up)));
            }
            if let Some(s) = stats {
                s.pool_misses.inc();
            }
            let Some(addr) = cx.ups.addr(server) else { continue };
            match open(cx, key, server, addr) {
                Ok(up) => {
                    if let Some(s) = cx.ups.slot(server).and_then(|i| cx.metrics.server(i)) {
                        s.connects.inc();
                    }
                    if rq.retrying {
                        cx.ups.mark_retry(up);
                    }
                    return Ok(Next::Go(Phase::Opening(up)));
                }
                Err(e) if is_fd_exhaustion(&e) => {
                    // Not the server's fault: do not mark it down. Out of fds, an active request
                    // comes before an idle connection (as nginx reuses idle keep-alive
                    // connections): ask the worker to close one, once, then try again.
                    if rq.fd == FdReclaim::No {
                        rq.fd = FdReclaim::Asked;
                        rq.tried &= !(1u64 << idx);
                        // A deadline of its own while it waits (`enter` arms none for a pick),
                        // or a stale one from the head could fire and blame the server.
                        self.deadline = cx.arm(cx.cfg.timeouts.upstream_connect);
                        return Ok(Next::Wait);
                    }
                    let close = !rq.req_done();
                    return self.fail(rq, cx, Reject::NoFd, close);
                }
                Err(e) => {
                    cx.metrics.up_error(cx.ups.slot(server).unwrap_or(usize::MAX), UpError::ConnectRefused);
                    let then = count_failure(rq, cx, server);
                    cx.log.event_of(
                        cx.now(),
                        Level::Warn,
                        Kind::Upstream,
                        format_args!("upstream {addr}: connect: {e}; {then}"),
                    );
                    connect_retry(rq);
                }
            }
        }
        // Every pass marks a server tried or down, and a group has at most GROUP_SERVERS_CAP.
        debug_assert!(false, "more picks than servers");
        Err(Fault::Internal(Broken::ConnectLoop))
    }

    /// The connect failed (or timed out): close it, cool the server down, and pick the next.
    pub(super) fn connect_failed(&mut self, rq: &mut Exchange, cx: &mut Cx, up: UpKey, timed_out: bool) -> Next {
        count_failure(rq, cx, rq.server as usize); // said by `failover`, once the next pick is known
        let tls = cx.ups.get(up).is_some_and(|u| u.tcp_up);
        let e = if timed_out {
            UpError::ConnectTimeout
        } else if tls {
            UpError::Tls
        } else {
            UpError::ConnectRefused
        };
        cx.metrics.up_error(cx.ups.slot(rq.server as usize).unwrap_or(usize::MAX), e);
        // Said once the next pick's outcome is known (`failover`), so that a failure the next
        // server made good is one line naming both.
        failover(rq, cx, None);
        rq.failed = Some((rq.server, timed_out));
        rq.timed_out = timed_out;
        cx.ups.close(up);
        cx.fd_freed = true;
        connect_retry(rq);
        Next::Go(Phase::Connect)
    }

    /// Sends the request again, to another server (`may_retry` said it may): lets go of the
    /// failed connection, forgets what came from it, and rewinds the head for the next.
    pub(super) fn retry(&mut self, rq: &mut Exchange, cx: &mut Cx, said: &str) -> Next {
        let server = rq.server as usize;
        rq.fails = rq.fails.saturating_add(1);
        rq.retrying = true;
        if let Some(s) = cx.ups.slot(server).and_then(|i| cx.metrics.server(i)) {
            s.retries.inc();
        }
        if let Some(a) = cx.ups.addr(server) {
            cx.log.event_of(cx.now(), Level::Info, Kind::Upstream, format_args!("upstream {a}: {said}; retried"));
        }
        self.drop_upstream(rq, cx);
        rq.again();
        Next::Go(Phase::Connect)
    }

    /// The upstream connection failed before a response head. A reused connection that failed
    /// before any response byte may have been closed by the upstream while idle: an idempotent
    /// request without a body is retried once on a fresh connection (RFC 9110 §9.2.2).
    pub(super) fn upstream_failed(&mut self, rq: &mut Exchange, cx: &mut Cx, up: UpKey) -> Step {
        let reused = cx.ups.get(up).is_some_and(|u| u.reused);
        let slot = cx.ups.slot(rq.server as usize).unwrap_or(usize::MAX);
        if reused && rq.retry == Retry::Once && !rq.resp_seen {
            if let Some(s) = cx.metrics.server(slot) {
                s.retries.inc();
            }
            self.drop_upstream(rq, cx);
            rq.reset_for_retry();
            return Ok(Next::Go(Phase::Connect));
        }
        cx.metrics.up_error(slot, UpError::Reset);
        if !reused && !rq.resp_seen {
            // A fresh connection that failed before any response byte: the server's fault
            // (health.rs), as nginx's default proxy_next_upstream counts it.
            let server = rq.server as usize;
            let then = count_failure(rq, cx, server);
            if let Some(addr) = cx.ups.addr(server) {
                cx.log.event_of(
                    cx.now(),
                    Level::Warn,
                    Kind::Upstream,
                    format_args!("upstream {addr}: connection failed before a response; {then}"),
                );
            }
        }
        if !rq.resp_seen && may_retry(rq, cx, RetryPolicy::RESET) {
            return Ok(self.retry(rq, cx, "connection failed before a response"));
        }
        let close = !rq.req_done();
        self.fail(rq, cx, Reject::UpstreamFailed, close)
    }

    /// The upstream sent something Apex will not relay: 502, and the connection is discarded.
    pub(super) fn upstream_bad(&mut self, rq: &mut Exchange, cx: &mut Cx) -> Step {
        if let Some(addr) = cx.ups.addr(rq.server as usize) {
            cx.log.event_of(
                cx.now(),
                Level::Warn,
                Kind::Upstream,
                format_args!("upstream {addr}: malformed or unexpected response; 502"),
            );
        }
        cx.metrics.up_error(cx.ups.slot(rq.server as usize).unwrap_or(usize::MAX), UpError::BadResponse);
        let close = !rq.req_done();
        self.fail(rq, cx, Reject::UpstreamBadResponse, close)
    }
}

/// Says what happened to a connect that failed (held in `rq.failed` by `connect_failed`):
/// made good by server `next` (a warn naming both), or not (`next` None: the failure alone).
#[inline(always)]
pub(super) fn failover(rq: &mut Exchange, cx: &mut Cx, next: Option<usize>) {
    if let Some((server, timed_out)) = rq.failed {
        rq.failed = None;
        failover_line(rq, cx, server as usize, timed_out, next);
    }
}

#[cold]
#[inline(never)]
fn failover_line(rq: &Exchange, cx: &mut Cx, server: usize, timed_out: bool, next: Option<usize>) {
    let Some(addr) = cx.ups.addr(server) else { return };
    let cfg = rq.snap.as_deref();
    let (cooldown, fail_after) = passive(rq);
    let then = Then(cx.ups.is_out(server), cooldown, fail_after);
    let connect = cfg.map_or(std::time::Duration::ZERO, |c| c.timeouts.upstream_connect.duration());
    let what = if timed_out {
        format_args!("connect timed out (upstream_connect = {connect:?})")
    } else {
        format_args!("connect failed")
    };
    match next.and_then(|n| cx.ups.addr(n)) {
        Some(b) => cx.log.event_of(
            cx.now(),
            Level::Warn,
            Kind::Upstream,
            format_args!("upstream {addr}: {what}; retried on {b}; {addr} {}", then),
        ),
        None => {
            cx.log.event_of(cx.now(), Level::Warn, Kind::Upstream, format_args!("upstream {addr}: {what}; {}", then))
        }
    }
}

/// The passive-health settings of the request's group: (cooldown, fail_after).
fn passive(rq: &Exchange) -> (std::time::Duration, u32) {
    rq.snap
        .as_deref()
        .and_then(|c| c.groups.get(rq.group as usize))
        .map_or((std::time::Duration::ZERO, 1), |g| (g.cooldown, g.fail_after))
}

/// Counts a failure against `server` for every worker (health.rs); what that did, for the log.
fn count_failure(rq: &Exchange, cx: &mut Cx, server: usize) -> Then {
    let (cooldown, fail_after) = passive(rq);
    Then(cx.ups.failed(server, cx.now_ms(), cooldown, fail_after), cooldown, fail_after)
}

/// What a failure did to its server: "skipped for 10s", or "out after 3 in a row" while it has
/// not failed `fail_after` times yet (health.rs).
struct Then(bool, std::time::Duration, u32);

impl std::fmt::Display for Then {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Then(true, cooldown, _) => write!(f, "skipped for {cooldown:?}"),
            Then(false, _, n) => write!(f, "out after {n} in a row"),
        }
    }
}

/// The route's `retry` for a request the upstream may have acted on (`what`: a reset, a
/// timeout, a status): may it go on to another server? It must be safe to repeat and held
/// whole by Apex (idempotent, no body: RFC 9110 §9.2.2; `Retry::Never` otherwise), within
/// `attempts`, and within the worker's budget for its group, so that a sick group is not sent
/// more than a fifth over what it is asked (`Upstreams::retry_budget`; a refusal is counted).
/// Nothing has reached the client: interim responses are not relayed, and the callers run
/// before the response head is written.
pub(super) fn may_retry(rq: &Exchange, cx: &Cx, what: u8) -> bool {
    let p = rq.per.retry;
    if !p.on(what) || rq.retry == Retry::Never || !p.another(rq.fails.saturating_add(1)) {
        return false;
    }
    let Some(cfg) = rq.snap.as_deref() else { return false };
    if cx.ups.retry_budget(cfg, rq.group as usize) {
        return true;
    }
    if let Some(s) = cx.ups.slot(rq.server as usize).and_then(|i| cx.metrics.server(i)) {
        s.retries_denied.inc();
    }
    false
}

/// A connect failed: with the route's `retry`, the request goes to another server only if `on`
/// lists `connect` and `attempts` are left; otherwise no server is left for it (its 502 or 504
/// comes from the next pick).
fn connect_retry(rq: &mut Exchange) {
    rq.fails = rq.fails.saturating_add(1);
    let p = rq.per.retry;
    if !p.on(RetryPolicy::CONNECT) || !p.another(rq.fails) {
        rq.tried = u64::MAX;
    }
}

/// Starts a connection to `addr` for client `owner`, registered for both directions once.
fn open(cx: &mut Cx, owner: ClientKey, server: usize, addr: SocketAddr) -> io::Result<UpKey> {
    let tls = match cx.ups.tls(server) {
        Some(t) => Some(Box::new(Tls::client(Arc::clone(&t.config), t.name.clone())?)),
        None => None,
    };
    let mut sock = TcpStream::connect(addr)?;
    let _ = sock.set_nodelay(true);
    let up = cx.ups.vacant_key();
    cx.registry.register(&mut sock, up.token(), Interest::READABLE | Interest::WRITABLE)?;
    let inserted = cx.ups.insert(UpConn {
        sock,
        io: Io::default(),
        server,
        owner: Some(owner),
        connected: false,
        tcp_up: false,
        reused: false,
        retry: false,
        idle_deadline: cx.now_ns,
        tls,
    });
    debug_assert_eq!(inserted, up, "the vacant key is the one inserted");
    Ok(inserted)
}
