//! What a worker counts, in its own memory: one `WorkerMetrics` per worker, created at start,
//! shared (`Arc`) with the admin thread, which sums every worker's at scrape time.
//!
//! Invariants: each counter has one writer, its worker, so an increment is a relaxed load and
//! a relaxed store (no locked instruction); readers see a recent value, never a torn one. No
//! lock, no allocation, no panic on the hot path: every array is sized here and indexed with
//! `get`. The struct is aligned to 128 bytes so that two workers' counters never share a cache
//! line (the FIELD-NOTES measured shared lines costing more than the request).
//!
//! Labels: series are keyed by slots, and a slot's label value comes from the configuration
//! only (a route's host and path, a group's name, a server's address), never from a request,
//! so a client cannot create series. `Labels` maps names to slots: assigned by the main thread
//! at start and on each reload, and by the resolver when a name gains an address, append-only (a name keeps its slot, so its counters stay
//! monotonic across reloads), capped: past `ROUTE_SLOTS` or `SERVER_SLOTS` names share the
//! last slot, labelled `(other)`.

pub mod render;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use arc_swap::ArcSwap;

use crate::config::Config;

/// Route slots; slot 0 is "no route" (Apex's own answers before or without routing).
pub const ROUTE_SLOTS: usize = 128;
/// Upstream server slots.
pub const SERVER_SLOTS: usize = 128;

/// Histogram bucket upper bounds, in microseconds: 100 µs to 60 s (the range), with
/// 1-2.5-5 steps, and +Inf after them.
pub const BOUNDS_US: [u64; 18] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// A counter or gauge with one writer.
#[derive(Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    #[inline(always)]
    pub fn inc(&self) {
        self.add(1);
    }

    /// One writer: a load and a store, not a locked add.
    #[inline(always)]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// For gauges (a connection leaving a state); read back as a signed sum.
    #[inline(always)]
    pub fn dec(&self) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(1), Relaxed);
    }

    #[inline(always)]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Counter::new()
    }
}

/// Counts per bucket (not cumulative; the renderer sums them) and the sum in microseconds.
#[derive(Debug)]
pub struct Histogram {
    pub buckets: [Counter; BOUNDS_US.len() + 1],
    pub sum_us: Counter,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram { buckets: [const { Counter::new() }; BOUNDS_US.len() + 1], sum_us: Counter::new() }
    }

    #[inline(always)]
    pub fn observe(&self, us: u64) {
        if let Some(c) = self.buckets.get(bucket_of(us)) {
            c.inc();
        }
        self.sum_us.add(us);
    }
}

/// The bucket `us` falls in: the first bound >= us (Prometheus's `le`, less than or equal), as
/// `BOUNDS_US.partition_point(|&b| b < us)` finds it, without its search. Each bound is at least
/// twice the one before, so the values of one bit length (`[2^(n-1), 2^n)`) hold at most one
/// bound: `BY_BITS[n]` has the count of bounds below them and that bound, and one compare
/// finishes. Two a request (route and server); bench/README.md, round 13.
#[inline(always)]
pub fn bucket_of(us: u64) -> usize {
    let bits = (u64::BITS - us.leading_zeros()) as usize;
    let (below, bound) = BY_BITS.get(bits).copied().unwrap_or((BOUNDS_US.len() as u8, u64::MAX)); // bits <= 64: always there
    usize::from(below) + usize::from(us > bound)
}

/// For each bit length n (0 to 64): how many bounds lie below `2^(n-1)` (below 1 for n = 0), and
/// the one bound in `[2^(n-1), 2^n)` (u64::MAX when there is none).
#[allow(clippy::indexing_slicing)] // const-evaluated, within the arrays' lengths
const BY_BITS: [(u8, u64); 65] = {
    let mut t = [(0u8, u64::MAX); 65];
    let mut n = 0;
    while n <= 64 {
        let (lo, hi) =
            if n == 0 { (0u64, 0u64) } else { (1u64 << (n - 1), if n == 64 { u64::MAX } else { (1u64 << n) - 1 }) };
        let mut below = 0;
        let mut bound = u64::MAX;
        let mut i = 0;
        while i < BOUNDS_US.len() {
            let b = BOUNDS_US[i];
            if b < lo {
                below += 1;
            } else if b <= hi {
                assert!(bound == u64::MAX, "two bounds of one bit length");
                bound = b;
            }
            i += 1;
        }
        t[n] = (below, bound);
        n += 1;
    }
    t
};

/// Why a client connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseWhy {
    /// The client closed it (between requests, mid-head, or while Apex lingered).
    Client = 0,
    /// Idle between requests past `client_idle`.
    Idle,
    /// Another timeout (head, body, send, upstream).
    Timeout,
    /// Apex closed it after a response that said `Connection: close` (errors included).
    AfterResponse,
    /// The upstream ended the exchange early (a cut response).
    Upstream,
    /// A WebSocket (or other) tunnel ended.
    Tunnel,
    /// A socket error or a broken invariant.
    Error,
    /// Shutting down.
    Drain,
    /// Closed while idle to free an fd for an active request.
    Reclaimed,
}

pub const CLOSE_NAMES: [&str; 9] =
    ["client", "idle", "timeout", "after_response", "upstream", "tunnel", "error", "drain", "reclaimed"];

/// Each response Apex answers itself with a 4xx or 5xx, by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reject {
    /// A malformed head (syntax, bare CR/LF, control bytes, bad target, bad Host).
    BadRequest = 0,
    /// Bad chunked framing.
    BadFraming,
    /// An ambiguous message length: CL with TE, repeated or bad CL, TE other than a final
    /// chunked, TE on HTTP/1.0 (RFC 9112 §6.1, §6.3).
    Smuggling,
    HeadTooLarge,
    BodyTooLarge,
    MethodNotAllowed,
    ExpectationFailed,
    UnknownCoding,
    NoRoute,
    ClientTimeout,
    UpstreamFailed,
    UpstreamBadResponse,
    UpstreamTimeout,
    /// Out of file descriptors for the upstream connection.
    NoFd,
    /// The client's address is refused by its route's `allow` / `deny`.
    Forbidden,
    /// The client's address is over its route's `rate`.
    RateLimited,
}

pub const REJECT_NAMES: [(&str, u16); 16] = [
    ("bad_request", 400),
    ("bad_framing", 400),
    ("smuggling", 400),
    ("head_too_large", 431),
    ("body_too_large", 413),
    ("method_not_allowed", 405),
    ("expectation_failed", 417),
    ("unknown_coding", 501),
    ("no_route", 404),
    ("client_timeout", 408),
    ("upstream_failed", 502),
    ("upstream_bad_response", 502),
    ("upstream_timeout", 504),
    ("out_of_fds", 502),
    ("forbidden", 403),
    ("rate_limited", 429),
];

impl Reject {
    pub fn status(self) -> u16 {
        REJECT_NAMES.get(self as usize).map_or(500, |r| r.1)
    }

    pub const fn of(e: crate::h1::H1Error) -> Reject {
        use crate::h1::H1Error::*;
        match e {
            HeadTooLarge | TooManyHeaders => Reject::HeadTooLarge,
            Syntax(_) | BadLineEnding | BadTarget | BadFieldValue | BadHost => Reject::BadRequest,
            BadContentLength | ConflictingLength | BadTransferEncoding | TransferEncodingOn10 => Reject::Smuggling,
            BadChunk => Reject::BadFraming,
            UnknownCoding => Reject::UnknownCoding,
            MethodNotAllowed => Reject::MethodNotAllowed,
            ExpectationFailed => Reject::ExpectationFailed,
            BodyTooLarge => Reject::BodyTooLarge,
        }
    }
}

/// What went wrong with an upstream server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum UpError {
    ConnectRefused = 0,
    ConnectTimeout,
    Tls,
    /// Closed or reset before its response head.
    Reset,
    BadResponse,
    /// No response head within `upstream_head`.
    Timeout,
}

pub const UP_ERROR_NAMES: [&str; 6] = ["connect_failed", "connect_timeout", "tls", "reset", "bad_response", "timeout"];

/// Status classes: index 0 is "no status" (the exchange ended before any answer).
pub const CLASS_NAMES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

#[inline(always)]
pub fn class_of(status: u16) -> usize {
    let c = (status / 100) as usize;
    if c <= 5 { c } else { 0 }
}

/// Phases for the connections-by-state gauges (`conn::Phase::index`).
pub const STATE_NAMES: [&str; 8] =
    ["read_head", "connect", "exchange", "resp_body", "tunnel", "respond", "linger", "close"];

/// Per route slot.
#[derive(Debug)]
pub struct RouteStats {
    pub requests: [Counter; 6],
    pub duration: Histogram,
}

/// Per upstream server slot.
#[derive(Debug)]
pub struct ServerStats {
    pub responses: [Counter; 6],
    pub ttfb: Histogram,
    pub connects: Counter,
    pub errors: [Counter; 6],
    pub retries: Counter,
    /// Retries a route's `retry` allowed and the worker's retry budget refused.
    pub retries_denied: Counter,
    pub pool_hits: Counter,
    pub pool_misses: Counter,
    /// Gauges, as of the worker's last sweep: pooled idle connections, and connections
    /// serving a request.
    pub idle: Counter,
    pub busy: Counter,
    /// The last error: `UpError as u64 + 1` (0: none), and when (Unix seconds).
    pub last_error: Counter,
    pub last_error_at: Counter,
    /// Skipped after a failure until this Unix time in milliseconds (0: not cooling down).
    pub down_until_ms: Counter,
}

/// One worker's counters.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerMetrics {
    /// Accepted client connections: [plain, tls].
    pub accepted: [Counter; 2],
    pub closed: [Counter; CLOSE_NAMES.len()],
    /// Gauges: client connections by phase, as of the worker's last sweep (at most a second
    /// old; kept per sweep rather than per transition, which cost ~60 instructions a request).
    pub states: [Counter; STATE_NAMES.len()],
    pub rejected: [Counter; REJECT_NAMES.len()],
    /// Bytes from and to clients: [in, out] x [all, spliced].
    pub bytes: [[Counter; 2]; 2],
    /// TLS handshakes with clients (0) and upstreams (1): [side][1.2, 1.3][full, resumed].
    pub tls_handshakes: [[[Counter; 2]; 2]; 2],
    /// TLS handshakes with clients refused or failed, by the alert Apex sent (index: the
    /// alert's code; 0: failed without an alert of ours).
    pub tls_failures: [Counter; 256],
    pub routes: [RouteStats; ROUTE_SLOTS],
    pub servers: [ServerStats; SERVER_SLOTS],
}

impl WorkerMetrics {
    pub fn new() -> Arc<WorkerMetrics> {
        Arc::new(WorkerMetrics {
            accepted: [const { Counter::new() }; 2],
            closed: [const { Counter::new() }; CLOSE_NAMES.len()],
            states: [const { Counter::new() }; STATE_NAMES.len()],
            rejected: [const { Counter::new() }; REJECT_NAMES.len()],
            bytes: [const { [const { Counter::new() }; 2] }; 2],
            tls_handshakes: [const { [const { [const { Counter::new() }; 2] }; 2] }; 2],
            tls_failures: [const { Counter::new() }; 256],
            routes: [const { RouteStats { requests: [const { Counter::new() }; 6], duration: Histogram::new() } };
                ROUTE_SLOTS],
            servers: [const {
                ServerStats {
                    responses: [const { Counter::new() }; 6],
                    ttfb: Histogram::new(),
                    connects: Counter::new(),
                    errors: [const { Counter::new() }; 6],
                    retries: Counter::new(),
                    retries_denied: Counter::new(),
                    pool_hits: Counter::new(),
                    pool_misses: Counter::new(),
                    idle: Counter::new(),
                    busy: Counter::new(),
                    last_error: Counter::new(),
                    last_error_at: Counter::new(),
                    down_until_ms: Counter::new(),
                }
            }; SERVER_SLOTS],
        })
    }

    #[inline(always)]
    pub fn server(&self, slot: usize) -> Option<&ServerStats> {
        self.servers.get(slot)
    }

    /// An upstream error: counted, and remembered as the server's last (cold path).
    #[cold]
    pub fn up_error(&self, slot: usize, e: UpError) {
        if let Some(s) = self.servers.get(slot) {
            if let Some(c) = s.errors.get(e as usize) {
                c.inc();
            }
            s.last_error.set(e as u64 + 1);
            s.last_error_at.set(unix_now().0);
        }
    }

    #[cold]
    pub fn tls_failure(&self, alert: u8) {
        if let Some(c) = self.tls_failures.get(usize::from(alert)) {
            c.inc();
        }
    }

    /// A finished TLS handshake (`upstream`: Apex was the client).
    #[cold]
    pub fn tls_handshake(&self, upstream: bool, tls13: bool, resumed: bool) {
        if let Some(c) = self
            .tls_handshakes
            .get(usize::from(upstream))
            .and_then(|s| s.get(usize::from(tls13)))
            .and_then(|v| v.get(usize::from(resumed)))
        {
            c.inc();
        }
    }
}

/// (Unix seconds, Unix milliseconds) now; 0 before 1970.
pub fn unix_now() -> (u64, u64) {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.as_millis() as u64)
}

/// The names behind the slots (see the module's doc).
#[derive(Debug, Default, Clone)]
pub struct LabelSet {
    /// Per route slot: (route as "host path", upstream group). Slot 0 is no route.
    pub routes: Vec<(String, String)>,
    /// Per server slot: its address.
    pub servers: Vec<String>,
}

/// Slot assignment, written by the main thread (reloads) and the resolver (a name's new
/// addresses), read by the admin thread.
#[derive(Debug)]
pub struct Labels {
    pub set: ArcSwap<LabelSet>,
}

impl Default for Labels {
    fn default() -> Self {
        Labels::new()
    }
}

impl Labels {
    pub fn new() -> Labels {
        let first = LabelSet { routes: vec![(String::new(), String::new())], servers: Vec::new() };
        Labels { set: ArcSwap::from_pointee(first) }
    }

    /// Gives every route and server of `cfg` its slot (old names keep theirs, new ones are
    /// appended), writes the slots into `cfg`, and publishes the names. Two threads assign:
    /// the main one on reload, the resolver when a name's addresses change; a compare-and-swap
    /// makes the one that loses the race assign again over the other's names, so no name is
    /// lost and none gets two slots.
    pub fn assign(&self, cfg: &mut Config) {
        loop {
            let current = self.set.load_full();
            let mut set = LabelSet::clone(&current);
            let groups: Vec<String> = cfg.groups.iter().map(|g| g.name.clone()).collect();
            for site in &mut cfg.sites {
                let host = site.host.to_string();
                for r in &mut site.routes {
                    let key = (
                        format!("{host}{}", String::from_utf8_lossy(&r.path)),
                        groups.get(r.group).cloned().unwrap_or_default(),
                    );
                    r.slot = slot_of(&mut set.routes, key, ROUTE_SLOTS, || ("(other)".into(), "(other)".into()));
                }
            }
            cfg.server_slots = cfg
                .servers
                .iter()
                .map(|a| slot_of(&mut set.servers, a.to_string(), SERVER_SLOTS, || "(other)".into()))
                .collect();
            let prev = self.set.compare_and_swap(&current, Arc::new(set));
            if Arc::ptr_eq(&prev, &current) {
                return;
            }
        }
    }
}

fn slot_of<T: PartialEq>(names: &mut Vec<T>, key: T, cap: usize, other: impl Fn() -> T) -> usize {
    if let Some(i) = names.iter().position(|n| *n == key) {
        return i;
    }
    if names.len() + 1 < cap {
        names.push(key);
        return names.len() - 1;
    }
    if names.len() + 1 == cap {
        names.push(other());
    }
    cap - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bucket_of` is the search it replaces, at every bound and its neighbours, at every power
    /// of two and its neighbours, and at the ends.
    #[test]
    fn bucket_of_is_the_search() {
        let search = |us: u64| BOUNDS_US.partition_point(|&b| b < us);
        let mut values = vec![0, 1, 2, u64::MAX - 1, u64::MAX];
        for b in BOUNDS_US {
            values.extend([b - 1, b, b + 1]);
        }
        for n in 0..64 {
            let p = 1u64 << n;
            values.extend([p - 1, p, p + 1]);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x >> (x % 64));
        }
        for us in values {
            assert_eq!(bucket_of(us), search(us), "{us} µs");
        }
    }
}
