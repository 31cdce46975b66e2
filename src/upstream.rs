//! Upstream connections and the per-worker keep-alive pool. Each worker owns its pool and its
//! round-robin cursors; only each server's `Health` is shared, through the config snapshot
//! (see health.rs).
//!
//! An upstream connection lives in its own slab for its whole life and is registered with epoll
//! once; attaching it to a client connection only sets `owner`. Idle pooled connections stay
//! registered, so an upstream that closes one is noticed (readable -> EOF) and the connection is
//! dropped before anyone reuses it. The pool's idle timeout should be shorter than the
//! upstream's own keep-alive timeout (config `upstream_idle`, default 4 s, below Node's 5 s).

use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::TcpStream;
use slab::Slab;

use crate::balance::Balance;
use crate::config::{AllDown, Config};
use crate::conn::ClientKey;
use crate::health::Health;
use crate::metrics::{SERVER_SLOTS, WorkerMetrics};
use crate::transport::Io;

/// An upstream connection's key in `Upstreams::conns`; its epoll token is `key << 1 | 1`.
/// A type of its own so that it cannot be mixed up with a client connection's key. 32 bits, so
/// that a `Phase` carrying one is 8 bytes (every connection's `Conn` holds a `Phase`): the slab
/// holds at most one entry per open fd, and a process's fds stay far below 2^32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpKey(u32);

impl UpKey {
    const fn of(key: usize) -> UpKey {
        UpKey(key as u32)
    }

    const fn index(self) -> usize {
        self.0 as usize
    }

    pub const fn token(self) -> mio::Token {
        mio::Token(self.index() << 1 | 1)
    }

    /// The key of an upstream token (odd tokens).
    pub const fn from_token(t: usize) -> UpKey {
        UpKey::of(t >> 1)
    }
}

/// `slow_start`: a server back from being out gets a share of picks that grows with the time
/// since, and its full share once `slow_start` has passed.
#[cfg(test)]
#[test]
fn slow_start_ramps_a_server_that_is_back() {
    let text = "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"g\"\n\
        [upstream.g]\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nslow_start = \"10s\"\n";
    let cfg = Arc::new(Config::parse(text, "t").unwrap_or_else(|e| panic!("{e}")));
    let mut ups = Upstreams::new(&cfg, 8);
    // Milliseconds on `Health`'s clock, as workers pass them (`Cx::now_ms`).
    let t0 = crate::clock::now_ms();
    assert!(ups.failed(0, t0, std::time::Duration::from_secs(1), 1));
    ups.ok(0, t0);
    let share = |ups: &mut Upstreams, at: u64| {
        let picks = 20_000;
        let to_a = (0..picks).filter(|_| ups.pick(&cfg, 0, 0, t0 + at, None).map(|(i, _)| i) == Some(0)).count();
        to_a as f64 / picks as f64
    };
    let at = |s: u64| s * 1000;
    // As if its weight were f = t / 10 s of the other's (from a twentieth): a share of
    // f / (1 + f) of the picks.
    let early = share(&mut ups, at(0));
    assert!((0.035..0.06).contains(&early), "weight 1/20: 0.048, got {early}");
    let half = share(&mut ups, at(5));
    assert!((0.30..0.37).contains(&half), "weight 1/2: 0.333, got {half}");
    assert_ne!(ups.servers.first().map(|s| s.health.up_since()), Some(0), "still ramping");
    let full = share(&mut ups, at(11));
    assert!((full - 0.5).abs() < 0.001, "its whole share: {full}");
    assert_eq!(ups.servers.first().map(|s| s.health.up_since()), Some(0), "done: no more looking");
}

/// Nothing is queued to read on this socket, not even an EOF: an idle connection still usable.
fn is_quiet(sock: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
    matches!(rustix::net::recv(sock, &mut byte, flags), Err(rustix::io::Errno::AGAIN))
}

/// Retries a group may have in flight in a worker whatever its load (`retry_budget`).
pub const RETRY_FLOOR: u32 = 3;

pub struct UpConn {
    pub sock: TcpStream,
    pub io: Io,
    pub server: usize,
    /// The client connection this one serves, or None while idle in the pool.
    pub owner: Option<ClientKey>,
    pub connected: bool,
    /// The TCP connect completed (a TLS connection is `connected` after its handshake).
    pub tcp_up: bool,
    /// It has carried a complete exchange before: a failure before any response byte may be
    /// the upstream closing an idle connection, so an idempotent request may be retried.
    pub reused: bool,
    /// It carries a retry the budget counts (`Upstreams::retry_budget`).
    pub retry: bool,
    /// Nanoseconds since the worker's epoch (`Cx::now_ns`).
    pub idle_deadline: u64,
    /// TLS to this server; `connected` only once its handshake is done.
    pub tls: Option<Box<crate::tls::Tls>>,
}

impl UpConn {
    /// Its stream's end can end a message: a FIN from a plain upstream, close_notify from a
    /// TLS one (RFC 8446 §6.1).
    pub fn ended_cleanly(&self) -> bool {
        self.tls.as_ref().is_none_or(|t| t.closed_cleanly())
    }
}

/// What a worker knows about one upstream address. Worker-local ids are stable across config
/// reloads: a server that stays keeps its pool and its passive-health mark.
pub struct ServerState {
    pub addr: SocketAddr,
    /// Idle connection keys, most recently used last.
    pub idle: Vec<usize>,
    /// Shared by every worker (from the current config).
    pub health: Arc<Health>,
    /// This worker's connections to it that serve a request (for `least_requests`).
    pub busy: u32,
    /// Of those, the ones that carry a retry (`retry_budget`).
    pub retrying: u32,
    /// In the current config. A removed server's connections close once idle.
    pub live: bool,
    /// How to speak TLS to it (from the current config), if at all.
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// Its metrics slot (from the current config).
    pub slot: usize,
}

pub struct Upstreams {
    conns: Slab<UpConn>,
    pub servers: Vec<ServerState>,
    /// The current config's server index -> worker id, and which config that is.
    map: Vec<usize>,
    map_for: usize,
    /// Per group of the current config: the next server to try.
    rr: Vec<usize>,
    idle_cap: usize,
    /// Per group of the current config, weighted groups only: smooth round-robin scores.
    scores: Vec<Vec<i64>>,
    /// For `least_requests` (balance.rs `two_choices`).
    rng: u64,
    /// Scratch for `least_requests`: the group's candidates (allocated at start).
    cands: Vec<usize>,
    /// The worker's counters (this pool publishes the idle and active gauges per server).
    pub metrics: Arc<WorkerMetrics>,
}

impl Upstreams {
    pub fn new(cfg: &Arc<Config>, conns_cap: usize) -> Self {
        let mut u = Upstreams {
            conns: Slab::with_capacity(conns_cap),
            servers: Vec::new(),
            map: Vec::new(),
            map_for: 0,
            rr: Vec::new(),
            idle_cap: 0,
            scores: Vec::new(),
            // Any non-zero seed; per worker, so that workers do not pick in lockstep.
            rng: (std::ptr::from_ref(&conns_cap) as u64) | 1,
            cands: Vec::with_capacity(crate::limits::GROUP_SERVERS_CAP),
            metrics: WorkerMetrics::new(),
        };
        u.sync(cfg);
        u
    }

    /// Follows a new config snapshot: maps its servers to worker ids (adding new addresses),
    /// marks removed ones, closes their idle connections. Runs on reload, not per request.
    pub fn sync(&mut self, cfg: &Arc<Config>) {
        self.idle_cap = cfg.limits.upstream_idle_per_server;
        for s in &mut self.servers {
            s.live = false;
        }
        self.map.clear();
        for (i, addr) in cfg.servers.iter().enumerate() {
            let id = match self.servers.iter().position(|s| s.addr == *addr) {
                Some(id) => id,
                None => {
                    self.servers.push(ServerState {
                        addr: *addr,
                        idle: Vec::with_capacity(self.idle_cap),
                        health: Arc::default(),
                        busy: 0,
                        retrying: 0,
                        live: true,
                        tls: None,
                        slot: 0,
                    });
                    self.servers.len() - 1
                }
            };
            if let Some(s) = self.servers.get_mut(id) {
                s.live = true;
                s.tls = cfg.server_tls.get(i).cloned().flatten();
                if let Some(h) = cfg.health.get(i) {
                    s.health = Arc::clone(h);
                }
                s.slot = cfg.server_slots.get(i).copied().unwrap_or(usize::MAX);
            }
            self.map.push(id);
        }
        let conns = &mut self.conns;
        for s in &mut self.servers {
            if !s.live {
                for k in s.idle.drain(..) {
                    conns.try_remove(k);
                }
            }
        }
        self.rr.clear();
        self.rr.resize(cfg.groups.len(), 0);
        self.scores =
            cfg.groups.iter().map(|g| if g.uniform { Vec::new() } else { vec![0; g.servers.len()] }).collect();
        self.map_for = Arc::as_ptr(cfg) as usize;
    }

    /// The worker id of `cfg`'s server `index`. A request still running on an older snapshot
    /// finds its server by address.
    fn id_of(&self, cfg: &Config, index: usize) -> Option<usize> {
        if std::ptr::from_ref(cfg) as usize == self.map_for {
            return self.map.get(index).copied();
        }
        let addr = cfg.servers.get(index)?;
        self.servers.iter().position(|s| s.addr == *addr)
    }

    pub fn get(&self, key: UpKey) -> Option<&UpConn> {
        self.conns.get(key.index())
    }

    pub fn get_mut(&mut self, key: UpKey) -> Option<&mut UpConn> {
        self.conns.get_mut(key.index())
    }

    /// The client connection `key` serves, if it is open and attached.
    pub fn owner(&self, key: UpKey) -> Option<ClientKey> {
        self.conns.get(key.index()).and_then(|c| c.owner)
    }

    /// The key the next `insert` will use (its token is registered before the insert).
    pub fn vacant_key(&self) -> UpKey {
        UpKey::of(self.conns.vacant_key())
    }

    pub fn insert(&mut self, c: UpConn) -> UpKey {
        if c.owner.is_some() {
            self.busy(c.server, true);
        }
        UpKey::of(self.conns.insert(c))
    }

    /// Server `id`'s metrics slot.
    #[inline]
    pub fn slot(&self, id: usize) -> Option<usize> {
        self.servers.get(id).map(|s| s.slot)
    }

    /// Sets the idle and active gauges of every server slot from the pool as it is. Called by
    /// the worker's sweep (at least once a second), not per request: the gauges cost nothing
    /// on the hot path. No allocation: the tally is on the stack.
    pub fn publish_gauges(&self) {
        let mut idle = [0u64; SERVER_SLOTS];
        let mut busy = [0u64; SERVER_SLOTS];
        for s in &self.servers {
            if let Some(n) = idle.get_mut(s.slot) {
                *n += s.idle.len() as u64;
            }
        }
        for (_, c) in self.conns.iter() {
            if c.owner.is_some()
                && let Some(n) = self.servers.get(c.server).and_then(|s| busy.get_mut(s.slot))
            {
                *n += 1;
            }
        }
        for ((st, i), b) in self.metrics.servers.iter().zip(idle).zip(busy) {
            st.idle.set(i);
            st.busy.set(b);
        }
    }

    /// A connection to `server` starts or stops serving a request.
    fn busy(&mut self, server: usize, on: bool) {
        if let Some(s) = self.servers.get_mut(server) {
            s.busy = if on { s.busy.saturating_add(1) } else { s.busy.saturating_sub(1) };
        }
    }

    /// Returns (index in the group, worker server id): a server this request has not tried,
    /// in by every worker's view (`Health`), chosen by the group's `balance` (balance.rs);
    /// `key` is the request's hash key, for `balance = "hash"`. With none left and
    /// `all_down = "try"`, the untried one whose cooldown ends soonest.
    pub fn pick(
        &mut self,
        cfg: &Config,
        group: usize,
        tried: u64,
        now_ms: u64,
        key: Option<u64>,
    ) -> Option<(usize, usize)> {
        let g = cfg.groups.get(group)?;
        let mut picked = self.choose(cfg, group, tried, now_ms, key);
        if !g.slow_start.is_zero()
            && let Some((i, id)) = picked
            && self.held_back(id, now_ms, g.slow_start)
        {
            // In its slow start, and not its turn this time: another one, if there is one.
            picked = self.choose(cfg, group, tried | (1u64 << i), now_ms, key).or(picked);
        }
        if picked.is_some() || g.all_down != AllDown::Try {
            return picked;
        }
        let n = g.servers.len();
        (0..n)
            .filter(|&i| tried & (1u64 << i) == 0)
            .filter_map(|i| Some((i, self.id_of(cfg, *g.servers.get(i)?)?)))
            .min_by_key(|&(_, id)| self.servers.get(id).map_or(u64::MAX, |s| s.health.down_until()))
    }

    /// `slow_start`: server `id` came back less than `span` ago, and this pick passes it by.
    /// A pick keeps it with a chance that grows in proportion to the time since (from a
    /// twentieth, so that it is tried from the start), and otherwise goes to another server:
    /// its share is that of a weight ramped the same way, as HAProxy's `slowstart` ramps it
    /// (two equal servers: f / (1 + f) of the picks at fraction f of the span). Not for
    /// `hash` groups (see `Group::slow_start`).
    #[cold]
    fn held_back(&mut self, id: usize, now_ms: u64, span: std::time::Duration) -> bool {
        let Some(h) = self.servers.get(id).map(|s| &s.health) else { return false };
        let since = h.up_since();
        if since == 0 {
            return false;
        }
        let (elapsed, span) = (now_ms.saturating_sub(since), span.as_millis() as u64);
        if elapsed >= span {
            h.ramped(since);
            return false;
        }
        let share = (elapsed * 1000 / span.max(1)).max(50);
        crate::balance::next_random(&mut self.rng) % 1000 >= share
    }

    /// `pick` by the group's `balance`, without `slow_start` and `all_down`.
    fn choose(
        &mut self,
        cfg: &Config,
        group: usize,
        tried: u64,
        now_ms: u64,
        key: Option<u64>,
    ) -> Option<(usize, usize)> {
        let g = cfg.groups.get(group)?;
        match (&g.balance, key, &g.maglev) {
            (Balance::RoundRobin, ..) if g.uniform => self.rotate(cfg, group, tried, now_ms),
            (Balance::Hash(_), Some(key), Some(table)) => {
                // The key's server, else the next in table order: the same in every worker.
                let mut seen = tried;
                let mut found = None;
                for i in table.walk(key) {
                    if seen & (1u64 << i) != 0 {
                        continue;
                    }
                    seen |= 1u64 << i;
                    if let Some(id) = self.usable(cfg, g, i, now_ms) {
                        found = Some((i, id));
                        break;
                    }
                    if seen.count_ones() as usize >= g.servers.len() {
                        break;
                    }
                }
                found
            }
            (Balance::LeastRequests, ..) => self.least_requests(cfg, g, tried, now_ms),
            _ if !g.uniform => self.smooth(cfg, group, tried, now_ms),
            _ => self.rotate(cfg, group, tried, now_ms),
        }
    }

    /// Member `i` of `g`, if it is in: its worker id. A server past its cooldown is claimed for
    /// this request, the one probe (`Health::claim`).
    #[inline]
    fn usable(&self, cfg: &Config, g: &crate::config::Group, i: usize, now_ms: u64) -> Option<usize> {
        let id = self.id_of(cfg, *g.servers.get(i)?)?;
        let h = &self.servers.get(id)?.health;
        (h.is_up() || h.claim(now_ms, g.cooldown.as_millis() as u64)).then_some(id)
    }

    /// Equal weights: the next member in turn.
    #[inline]
    fn rotate(&mut self, cfg: &Config, group: usize, tried: u64, now_ms: u64) -> Option<(usize, usize)> {
        let g = cfg.groups.get(group)?;
        let n = g.servers.len();
        let start = self.rr.get(group).copied().unwrap_or(0);
        for k in 0..n {
            let i = (start + k) % n;
            if tried & (1u64 << i) != 0 {
                continue;
            }
            let Some(id) = self.usable(cfg, g, i, now_ms) else { continue };
            if let Some(r) = self.rr.get_mut(group) {
                *r = (i + 1) % n;
            }
            return Some((i, id));
        }
        None
    }

    /// Weighted round-robin over the members that are up; one past its cooldown gets its probe
    /// first.
    fn smooth(&mut self, cfg: &Config, group: usize, tried: u64, now_ms: u64) -> Option<(usize, usize)> {
        let g = cfg.groups.get(group)?;
        let up = self.up_members(cfg, g, tried, now_ms)?;
        let scores = self.scores.get_mut(group)?;
        let i = crate::balance::smooth_pick(scores, &g.weights, |i| up & (1u64 << i) != 0)?;
        Some((i, self.id_of(cfg, *g.servers.get(i)?)?))
    }

    fn least_requests(
        &mut self,
        cfg: &Config,
        g: &crate::config::Group,
        tried: u64,
        now_ms: u64,
    ) -> Option<(usize, usize)> {
        let up = self.up_members(cfg, g, tried, now_ms)?;
        let mut cands = std::mem::take(&mut self.cands);
        cands.clear();
        cands.extend((0..g.servers.len()).filter(|&i| up & (1u64 << i) != 0));
        let busy = |i: usize| {
            let id = g.servers.get(i).and_then(|&x| self.id_of(cfg, x));
            u64::from(id.and_then(|id| self.servers.get(id)).map_or(0, |s| s.busy))
        };
        let weight = |i: usize| u64::from(g.weights.get(i).copied().unwrap_or(1));
        let mut rng = self.rng;
        let i = crate::balance::two_choices(&cands, busy, weight, &mut rng);
        self.rng = rng;
        self.cands = cands;
        let i = i?;
        Some((i, self.id_of(cfg, *g.servers.get(i)?)?))
    }

    /// The members not tried and up, as a bit set; or, if one is past its cooldown and this
    /// request claims its probe, that one alone.
    fn up_members(&self, cfg: &Config, g: &crate::config::Group, tried: u64, now_ms: u64) -> Option<u64> {
        let mut up = 0u64;
        for i in 0..g.servers.len() {
            if tried & (1u64 << i) != 0 {
                continue;
            }
            let Some(id) = g.servers.get(i).and_then(|&x| self.id_of(cfg, x)) else { continue };
            let Some(h) = self.servers.get(id).map(|s| &s.health) else { continue };
            if h.is_up() {
                up |= 1u64 << i;
            } else if h.claim(now_ms, g.cooldown.as_millis() as u64) {
                return Some(1u64 << i);
            }
        }
        (up != 0).then_some(up)
    }

    /// The retry budget of `group` in this worker: a retry may start while the retries in
    /// flight to its servers are fewer than a fifth of its requests in flight, or than
    /// `RETRY_FLOOR` (so that a quiet group can still retry; Envoy's min_retry_concurrency).
    /// Per worker, as the in-flight counts are: no cache line is shared for it. A retry is
    /// rare: the sums over the group run only then.
    pub fn retry_budget(&self, cfg: &Config, group: usize) -> bool {
        let Some(g) = cfg.groups.get(group) else { return false };
        let (mut busy, mut retrying) = (0u32, 0u32);
        for s in g.servers.iter().filter_map(|&x| self.servers.get(self.id_of(cfg, x)?)) {
            busy = busy.saturating_add(s.busy);
            retrying = retrying.saturating_add(s.retrying);
        }
        retrying < (busy / 5).max(RETRY_FLOOR)
    }

    /// Connection `up` now carries a retry: it counts against the budget until it is released.
    pub fn mark_retry(&mut self, up: UpKey) {
        let Some(c) = self.conns.get_mut(up.index()) else { return };
        if c.retry || c.owner.is_none() {
            return;
        }
        c.retry = true;
        let server = c.server;
        if let Some(s) = self.servers.get_mut(server) {
            s.retrying = s.retrying.saturating_add(1);
        }
    }

    /// How to speak TLS to server `id`, if at all.
    pub fn tls(&self, id: usize) -> Option<Arc<crate::tls::UpstreamTls>> {
        self.servers.get(id).and_then(|s| s.tls.clone())
    }

    pub fn addr(&self, id: usize) -> Option<SocketAddr> {
        self.servers.get(id).map(|s| s.addr)
    }

    /// A request failed on server `id`; true when that takes it out (`fail_after` in a row).
    pub fn failed(&self, id: usize, now_ms: u64, cooldown: std::time::Duration, fail_after: u32) -> bool {
        let Some(s) = self.servers.get(id) else { return false };
        let out = s.health.failed(now_ms, cooldown.as_millis() as u64, fail_after);
        if out && let Some(st) = self.metrics.server(s.slot) {
            st.down_until_ms.set(crate::metrics::unix_now().1 + cooldown.as_millis() as u64);
        }
        out
    }

    /// Server `id` is out by its passive health (for the log line that says so).
    pub fn is_out(&self, id: usize) -> bool {
        self.servers.get(id).is_some_and(|s| s.health.down_until() != 0)
    }

    /// A connection to server `id` came up.
    pub fn ok(&self, id: usize, now_ms: u64) {
        if let Some(s) = self.servers.get(id) {
            if s.health.down_until() != 0
                && let Some(st) = self.metrics.server(s.slot)
            {
                st.down_until_ms.set(0);
            }
            s.health.ok(|| now_ms);
        }
    }

    /// An idle connection to `server` that has seen nothing since it went idle.
    ///
    /// With `probe`, for a request that could not be retried if the connection turned out dead,
    /// one `recv(MSG_PEEK)` also catches a close that arrived after the last poll (RFC 9112
    /// §9.3.1: the upstream may close an idle connection at any time). Requests that can be
    /// retried (RFC 9110 §9.2.2) skip that syscall and are retried instead.
    pub fn take_idle(&mut self, server: usize, owner: ClientKey, probe: bool) -> Option<UpKey> {
        while let Some(key) = self.servers.get_mut(server)?.idle.pop() {
            match self.conns.get_mut(key) {
                // Readable while idle means EOF, an error, or bytes nobody asked for: unusable.
                Some(c) if !c.io.readable && !c.io.hup && (!probe || is_quiet(&c.sock)) => {
                    c.owner = Some(owner);
                    self.busy(server, true);
                    return Some(UpKey::of(key));
                }
                Some(_) => {
                    self.conns.try_remove(key);
                }
                None => {}
            }
        }
        None
    }

    /// Returns a connection whose exchange ended cleanly to the pool, or closes it if full.
    pub fn release(&mut self, up: UpKey, deadline: u64) {
        let key = up.index();
        let Some(server) = self.conns.get(key).filter(|c| c.owner.is_some()).map(|c| c.server) else {
            return;
        };
        self.busy(server, false);
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if std::mem::take(&mut c.retry)
            && let Some(s) = self.servers.get_mut(server)
        {
            s.retrying = s.retrying.saturating_sub(1);
        }
        // A read that filled its buffer left `readable` set: confirm the socket is quiet now.
        if c.io.readable || c.io.hup {
            let mut scratch = [0u8; 64];
            match std::io::Read::read(&mut &c.sock, &mut scratch) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && !c.io.hup => c.io.readable = false,
                _ => {
                    self.conns.try_remove(key);
                    return;
                }
            }
        }
        // Over TLS, records that came with the response's last one (a read opens one record
        // at a time) are bytes after the response: the connection is not reusable.
        if c.tls.as_ref().is_some_and(|t| t.has_unread()) {
            self.conns.try_remove(key);
            return;
        }
        let server = c.server;
        match self.servers.get_mut(server) {
            Some(ServerState { idle: list, live: true, .. }) if list.len() < self.idle_cap => {
                c.owner = None;
                c.reused = true;
                c.idle_deadline = deadline;
                list.push(key);
            }
            _ => {
                self.conns.try_remove(key);
            }
        }
    }

    pub fn close(&mut self, up: UpKey) {
        let key = up.index();
        let Some(c) = self.conns.try_remove(key) else { return };
        if c.owner.is_some() {
            self.busy(c.server, false);
            if c.retry
                && let Some(s) = self.servers.get_mut(c.server)
            {
                s.retrying = s.retrying.saturating_sub(1);
            }
        } else if let Some(s) = self.servers.get_mut(c.server) {
            s.idle.retain(|&k| k != key);
        }
    }

    /// Closes a connection with a reset (SO_LINGER 0): whatever the upstream sends after is
    /// refused, and no TIME_WAIT is left on Apex's side.
    pub fn reset(&mut self, key: UpKey) {
        if let Some(c) = self.conns.get(key.index()) {
            let _ = socket2::SockRef::from(&c.sock).set_linger(Some(std::time::Duration::ZERO));
        }
        self.close(key);
    }

    /// Closes the idle pooled connection closest to its deadline, if any (to free an fd).
    pub fn close_one_idle(&mut self) -> bool {
        let conns = &self.conns;
        let oldest = self
            .servers
            .iter()
            .enumerate()
            .flat_map(|(s, st)| st.idle.iter().map(move |&k| (s, k)))
            .min_by_key(|&(_, k)| conns.get(k).map(|c| c.idle_deadline));
        let Some((s, k)) = oldest else { return false };
        if let Some(st) = self.servers.get_mut(s) {
            st.idle.retain(|&x| x != k);
        }
        self.conns.try_remove(k).is_some()
    }

    /// Closes idle connections past their deadline; returns the earliest deadline left.
    pub fn sweep(&mut self, now_ns: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        for s in &mut self.servers {
            let conns = &mut self.conns;
            s.idle.retain(|&k| match conns.get(k) {
                Some(c) if c.idle_deadline <= now_ns => {
                    conns.try_remove(k);
                    false
                }
                Some(c) => {
                    next = Some(next.map_or(c.idle_deadline, |n| n.min(c.idle_deadline)));
                    true
                }
                None => false,
            });
        }
        next
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A pooled connection whose upstream closed after the last poll: its readiness flags still
    /// say "quiet", so only the probe can tell. Requests that cannot be retried ask for it.
    #[test]
    fn probe_catches_a_close_the_flags_have_not_seen() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let text =
            format!("listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"g\"\n[upstream.g]\nservers = [\"{addr}\"]\n");
        let cfg = Arc::new(Config::parse(&text, "t").unwrap());
        let mut ups = Upstreams::new(&cfg, 8);
        let pool = |ups: &mut Upstreams| {
            let s = std::net::TcpStream::connect(addr).unwrap();
            s.set_nonblocking(true).unwrap();
            let (peer, _) = l.accept().unwrap();
            let conn = UpConn {
                sock: TcpStream::from_std(s),
                io: Io::default(),
                server: 0,
                owner: Some(ClientKey(1)),
                connected: true,
                tcp_up: true,
                reused: false,
                retry: false,
                idle_deadline: 0,
                tls: None,
            };
            let key = ups.insert(conn);
            ups.release(key, 4_000_000_000);
            (key, peer)
        };

        // Still open: the probe keeps it.
        let (live, _peer) = pool(&mut ups);
        assert_eq!(ups.take_idle(0, ClientKey(2), true), Some(live));
        ups.close(live);

        // Closed by the upstream while idle, no poll since.
        let (dead, peer) = pool(&mut ups);
        drop(peer);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(ups.take_idle(0, ClientKey(2), false), Some(dead), "the flags alone cannot see the close");
        ups.release(dead, 4_000_000_000);
        assert_eq!(ups.take_idle(0, ClientKey(2), true), None, "the probe must see the close");
        assert!(ups.get(dead).is_none(), "a dead connection is dropped, not pooled again");
    }
}
