//! Upstream health, one view for the whole process.
//!
//! Each upstream address has one `Health`, shared by every worker and by the active checker
//! through the config snapshot (`Config::health`, same index as `Config::servers`); a reload
//! carries it over for the addresses that stay (`Config::keep_health`). It is all atomics:
//! workers read it on every pick and write it only when a server fails or recovers.
//!
//! Passive: requests that fail to connect (or get a reset or a malformed answer on a fresh
//! connection) count against the server; after the group's `fail_after` in a row it is skipped
//! by every worker for `cooldown`. When the cooldown is over, the first worker to pick it claims
//! the probe by moving `down_until` one cooldown on (a compare-and-swap), so one request, not
//! one per worker, finds out whether it is back.
//!
//! Active (a group's `health = { … }`): one thread for the process sends the check request to
//! each server every `every`; `fall` failures in a row take it out, `rise` successes bring it
//! back. A server out by either view is skipped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::log::{Level, say};

#[derive(Debug)]
pub struct Health {
    /// 0 while up; otherwise the millisecond (on `clock::epoch`) until which requests skip it.
    down_until: AtomicU64,
    /// Requests that failed on it in a row.
    fails: AtomicU32,
    /// The active check's verdict (true without a check).
    checked_up: AtomicBool,
    /// The active checker's streak: > 0 successes in a row, < 0 failures in a row.
    streak: AtomicI32,
    /// When it came back (ms on `clock::epoch`, at least 1) after being out by either view; 0 once
    /// its group's `slow_start` has passed, or if it never was out.
    up_since: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            down_until: AtomicU64::new(0),
            fails: AtomicU32::new(0),
            checked_up: AtomicBool::new(true),
            streak: AtomicI32::new(0),
            up_since: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Up by every view: the common case, two loads.
    #[inline]
    pub fn is_up(&self) -> bool {
        self.down_until.load(Relaxed) == 0 && self.checked_up.load(Relaxed)
    }

    /// May a request use it now? Past its cooldown, only the caller that claims the probe may:
    /// the others keep skipping it for one more cooldown, or until the probe succeeds.
    #[inline]
    pub fn claim(&self, now_ms: u64, cooldown_ms: u64) -> bool {
        if !self.checked_up.load(Relaxed) {
            return false;
        }
        let until = self.down_until.load(Relaxed);
        if until == 0 {
            return true;
        }
        if now_ms < until {
            return false;
        }
        self.down_until.compare_exchange(until, (now_ms + cooldown_ms).max(1), Relaxed, Relaxed).is_ok()
    }

    /// A request failed on it. Returns true when this failure takes it out (`fail_after` in a row).
    pub fn failed(&self, now_ms: u64, cooldown_ms: u64, fail_after: u32) -> bool {
        let n = self.fails.fetch_add(1, Relaxed).saturating_add(1);
        if n >= fail_after.max(1) {
            self.down_until.store((now_ms + cooldown_ms).max(1), Relaxed);
            return true;
        }
        false
    }

    /// A request connected to it: it is up. Writes only when something changes, so the cache
    /// line stays shared between workers while all is well.
    /// `now_ms` is asked only when it was out: it is back now (its slow start begins).
    #[inline]
    pub fn ok(&self, now_ms: impl FnOnce() -> u64) {
        if self.fails.load(Relaxed) != 0 {
            self.fails.store(0, Relaxed);
        }
        if self.down_until.load(Relaxed) != 0 {
            self.down_until.store(0, Relaxed);
            self.up_since.store(now_ms().max(1), Relaxed);
        }
    }

    /// When it came back, if it may still be in its slow start (0: it is not).
    #[inline]
    pub fn up_since(&self) -> u64 {
        self.up_since.load(Relaxed)
    }

    /// Its slow start that began at `since` is over: later picks need not look again.
    pub fn ramped(&self, since: u64) {
        let _ = self.up_since.compare_exchange(since, 0, Relaxed, Relaxed);
    }

    /// The active check's verdict (true without a check): for /status and `apex_upstream_up`.
    pub fn checked_up(&self) -> bool {
        self.checked_up.load(Relaxed)
    }

    /// When it comes back if nothing probes it: for `all_down = "try"`, the least recently failed.
    pub fn down_until(&self) -> u64 {
        self.down_until.load(Relaxed)
    }

    /// No active check any more (a reload removed it): in by that view.
    fn unchecked(&self) {
        if !self.checked_up.load(Relaxed) {
            self.checked_up.store(true, Relaxed);
        }
        self.streak.store(0, Relaxed);
    }

    /// Records one active check; returns the new verdict when it changed.
    fn checked(&self, ok: bool, rise: u32, fall: u32, now_ms: u64) -> Option<bool> {
        let s = self.streak.load(Relaxed);
        let s = match (ok, s > 0) {
            (true, true) => s.saturating_add(1),
            (true, false) => 1,
            (false, false) => s.saturating_sub(1),
            (false, true) => -1,
        };
        self.streak.store(s, Relaxed);
        let up = self.checked_up.load(Relaxed);
        let flip = if up { s <= -(fall.max(1) as i32) } else { s >= rise.max(1) as i32 };
        if flip {
            if !up {
                self.up_since.store(now_ms.max(1), Relaxed);
            }
            self.checked_up.store(!up, Relaxed);
            return Some(!up);
        }
        None
    }
}

/// A group's active check, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub path: String,
    pub every: Duration,
    pub timeout: Duration,
    /// Accepted statuses: classes (`2xx`) or codes (`204`), as written, comma-separated.
    pub expect: Vec<Expect>,
    pub rise: u32,
    pub fall: u32,
    /// The Host header: the group's `tls_name`, else the first exact host routed to it, else
    /// the server's address.
    pub host: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Class(u16),
    Code(u16),
}

impl Expect {
    /// `"2xx"`, `"200"`, or a list: `"2xx,301"`.
    pub fn parse_list(s: &str) -> Option<Vec<Expect>> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            let b = part.as_bytes();
            let e = match b {
                [c @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => Expect::Class(u16::from(c - b'0')),
                [b'1'..=b'5', b'0'..=b'9', b'0'..=b'9'] => Expect::Code(part.parse().ok()?),
                _ => return None,
            };
            out.push(e);
        }
        (!out.is_empty()).then_some(out)
    }

    fn accepts(self, status: u16) -> bool {
        match self {
            Expect::Class(c) => status / 100 == c,
            Expect::Code(c) => status == c,
        }
    }

    pub fn show(list: &[Expect]) -> String {
        let parts: Vec<String> = list
            .iter()
            .map(|e| match e {
                Expect::Class(c) => format!("{c}xx"),
                Expect::Code(c) => c.to_string(),
            })
            .collect();
        parts.join(",")
    }
}

/// Runs the active checks for the life of the process, on its own thread. Each round checks
/// every due server at once (a scoped thread each), so a server that hangs delays no other.
pub fn spawn_checker(shared: Arc<ArcSwap<Config>>) -> std::io::Result<()> {
    std::thread::Builder::new().name("apex-health".into()).spawn(move || {
        // Per server address: when its next check is due.
        let mut due: Vec<(SocketAddr, Instant)> = Vec::new();
        loop {
            let cfg = shared.load_full();
            let now = Instant::now();
            let mut round: Vec<(usize, &Check)> = Vec::new();
            for (si, addr) in cfg.servers.iter().enumerate() {
                let Some(check) = cfg.check_for(si) else {
                    // A reload removed its check: its verdict goes with it.
                    if let Some(h) = cfg.health.get(si) {
                        h.unchecked();
                    }
                    continue;
                };
                match due.iter_mut().find(|(a, _)| a == addr) {
                    Some((_, at)) if *at > now => continue,
                    Some((_, at)) => *at = now + check.every,
                    None => due.push((*addr, now + check.every)),
                }
                round.push((si, check));
            }
            due.retain(|(a, _)| cfg.servers.contains(a));
            std::thread::scope(|s| {
                for &(si, check) in &round {
                    let cfg = &cfg;
                    s.spawn(move || run_check(cfg, si, check));
                }
            });
            let next = due.iter().map(|(_, at)| *at).min().unwrap_or(now + Duration::from_secs(1));
            // Also wakes for a reload that adds checks; a round never starts early.
            std::thread::sleep(
                next.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(10), Duration::from_secs(1)),
            );
        }
    })?;
    Ok(())
}

fn run_check(cfg: &Config, si: usize, check: &Check) {
    let (Some(addr), Some(health)) = (cfg.servers.get(si), cfg.health.get(si)) else { return };
    let tls = cfg.server_tls.get(si).cloned().flatten();
    let verdict = probe(*addr, check, tls.as_deref());
    let ok = matches!(verdict, Ok(status) if check.expect.iter().any(|e| e.accepts(status)));
    if let Some(up) = health.checked(ok, check.rise, check.fall, crate::clock::now_ms()) {
        let what = match &verdict {
            Ok(status) => format!("status {status}"),
            Err(e) => e.clone(),
        };
        if up {
            say(
                Level::Info,
                format_args!("upstream {addr}: health check passed {} times ({what}); back in", check.rise),
            );
        } else {
            say(
                Level::Warn,
                format_args!(
                    "upstream {addr}: health check failed {} times ({what}, want {}); out until it passes {} times",
                    check.fall,
                    Expect::show(&check.expect),
                    check.rise
                ),
            );
        }
    }
}

/// One check: the status of `GET path` on a fresh connection, within `check.timeout` overall.
fn probe(addr: SocketAddr, check: &Check, tls: Option<&crate::tls::UpstreamTls>) -> Result<u16, String> {
    let deadline = Instant::now() + check.timeout;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let sock = TcpStream::connect_timeout(&addr, check.timeout).map_err(|e| format!("connect: {e}"))?;
    let _ = sock.set_nodelay(true);
    let host = check.host.clone().unwrap_or_else(|| addr.to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: apex-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        check.path
    );
    let mut head = [0u8; 1024];
    let mut n = 0;
    let mut exchange = |io: &mut dyn ReadWrite, sock: &TcpStream| -> Result<(), String> {
        sock.set_write_timeout(Some(left())).map_err(|e| e.to_string())?;
        io.write_all(req.as_bytes()).map_err(|e| format!("send: {e}"))?;
        io.flush().map_err(|e| format!("send: {e}"))?;
        // The status line is all a check needs (RFC 9112 §4): read until its end or the buffer's.
        while !head.get(..n).unwrap_or_default().contains(&b'\n') {
            let Some(spare) = head.get_mut(n..).filter(|s| !s.is_empty()) else { break };
            sock.set_read_timeout(Some(left())).map_err(|e| e.to_string())?;
            match io.read(spare) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Ok(())
    };
    match tls {
        None => {
            let mut s = &sock;
            exchange(&mut s, &sock)?;
        }
        Some(t) => {
            let conn = rustls::ClientConnection::new(Arc::clone(&t.config), t.name.clone())
                .map_err(|e| format!("tls: {e}"))?;
            let mut s = rustls::StreamOwned::new(conn, &sock);
            exchange(&mut s, &sock)?;
        }
    }
    status_of(head.get(..n).unwrap_or_default()).ok_or_else(|| "no HTTP status line".to_string())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The status code of an HTTP/1.x status line (RFC 9112 §4: `HTTP/1.x SP 3DIGIT SP`).
pub fn status_of(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_probe_per_cooldown_whoever_asks() {
        let h = Health::default();
        assert!(h.claim(0, 1000), "up: anyone may use it");
        assert!(h.failed(10, 1000, 1));
        assert!(!h.claim(500, 1000), "cooling down");
        assert!(h.claim(1010, 1000), "past the cooldown: the first caller probes");
        assert!(!h.claim(1011, 1000), "the others keep skipping it while the probe runs");
        assert!(!h.claim(2000, 1000), "for one more cooldown");
        h.ok(|| 2001);
        assert!(h.claim(2001, 1000), "the probe succeeded: up for all");
        assert_eq!(h.up_since(), 2001, "back: its slow start begins");
        h.ramped(2001);
        assert_eq!(h.up_since(), 0);
    }

    #[test]
    fn fail_after_counts_failures_in_a_row() {
        let h = Health::default();
        assert!(!h.failed(0, 1000, 3));
        assert!(!h.failed(0, 1000, 3));
        h.ok(|| 5);
        assert_eq!(h.up_since(), 0, "it never was out: no slow start");
        assert!(!h.failed(0, 1000, 3), "a success resets the count");
        assert!(!h.failed(0, 1000, 3));
        assert!(h.failed(0, 1000, 3));
        assert!(!h.claim(10, 1000));
    }

    #[test]
    fn active_checks_fall_and_rise() {
        let h = Health::default();
        assert_eq!(h.checked(false, 2, 3, 5), None);
        assert_eq!(h.checked(false, 2, 3, 5), None);
        assert_eq!(h.checked(true, 2, 3, 5), None, "a success breaks the streak");
        assert_eq!(h.checked(false, 2, 3, 5), None);
        assert_eq!(h.checked(false, 2, 3, 5), None);
        assert_eq!(h.checked(false, 2, 3, 5), Some(false));
        assert!(!h.claim(0, 0), "out by the active check");
        assert_eq!(h.checked(true, 2, 3, 5), None);
        assert_eq!(h.up_since(), 0);
        assert_eq!(h.checked(true, 2, 3, 5), Some(true));
        assert!(h.claim(0, 0));
        assert_eq!(h.up_since(), 5, "risen: its slow start begins");
    }

    #[test]
    fn expect_lists() {
        assert_eq!(Expect::parse_list("2xx"), Some(vec![Expect::Class(2)]));
        assert_eq!(Expect::parse_list("2xx, 301"), Some(vec![Expect::Class(2), Expect::Code(301)]));
        for bad in ["", "2x", "600", "20", "2xx,", "abc", "6xx"] {
            assert_eq!(Expect::parse_list(bad), None, "{bad:?}");
        }
        assert!(Expect::Class(2).accepts(204) && !Expect::Class(2).accepts(301));
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.0 503 x"), Some(503));
        for bad in [&b"HTTP/2 200 OK"[..], b"HTTP/1.1 20", b"HTTP/1.1 2x0 OK", b"", b"SSH-2.0"] {
            assert_eq!(status_of(bad), None);
        }
    }
}
