//! Per-client-address state a worker keeps: the token buckets of routes' `rate` limits and the
//! open-connection counts of `limits.connections_per_ip`. No sockets, no lock, no allocation
//! after `AddrTable::new`.
//!
//! Bounded memory whatever the number of addresses: a table is a fixed array of slots (32 bytes
//! each), open-addressed, probed over `WAYS` neighbouring slots from a seeded hash of the address
//! (the seed is random per table, so a client cannot pick addresses that pile into one
//! neighbourhood). Zeroed at start (calloc: pages are touched as slots are used, so resident memory
//! grows with the addresses seen, up to the table's size, and never past it).
//!
//! When a neighbourhood is full:
//! - rates: a slot whose bucket is full again (its client has been quiet long enough) carries no
//!   information and is reused first; otherwise the slot whose bucket is nearest to full is given
//!   to the new address (that old client starts again with a full bucket: the limit loosens for
//!   it, never tightens for anyone);
//! - connections: a slot with no open connection is reused; if all `WAYS` hold live counts the new
//!   connection is admitted uncounted (fails open, `Open::Uncounted`) rather than refused for an
//!   address that has not reached its limit.
//!
//! The state is per worker: with W workers, a client whose connections the kernel spreads over
//! them (SO_REUSEPORT hashes the source port too) gets up to W times a limit. README says so.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Instant;

/// Neighbouring slots probed for an address.
const WAYS: usize = 8;

/// A slot: the address (IPv4 mapped, `cidr::bits`) in two halves, the value (a bucket's
/// theoretical arrival time in ns, or a connection count), and a tag (0: never used; else which
/// route's bucket, or 1 for a connection count).
type Slot = [u64; 4];

pub struct AddrTable {
    slots: Box<[Slot]>,
    mask: usize,
    seed: u64,
    epoch: Instant,
}

/// A route's limit as the GCRA (ITU-T I.371 virtual scheduling) runs it: a token bucket of
/// `burst` tokens, one added every `interval_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// As written: this many requests per `per_secs` (1 or 60).
    pub count: u32,
    pub per_secs: u32,
    pub burst: u32,
    /// Nanoseconds per token, rounded up: never faster than written.
    pub interval_ns: u64,
    /// How far ahead of now a client's schedule may run: (burst - 1) intervals.
    pub tolerance_ns: u64,
}

impl Rate {
    /// `N/s` or `N/m`, N from 1 to 1,000,000; `burst` from 1 to 1,000,000 (the default: N).
    pub fn parse(s: &str, burst: Option<i64>) -> Result<Rate, String> {
        let bad = || format!("rate {s:?}: want N/s or N/m, N from 1 to 1000000 (e.g. \"100/s\")");
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let per_secs = match unit {
            "s" => 1,
            "m" => 60,
            _ => return Err(bad()),
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.len() > 7 {
            return Err(bad());
        }
        let count: u32 = n.parse().map_err(|_| bad())?;
        if !(1..=1_000_000).contains(&count) {
            return Err(bad());
        }
        let burst = match burst {
            None => count,
            Some(b) if (1..=1_000_000).contains(&b) => b as u32,
            Some(b) => return Err(format!("burst {b}: must be between 1 and 1000000")),
        };
        let interval_ns = (u64::from(per_secs) * 1_000_000_000).div_ceil(u64::from(count));
        Ok(Rate { count, per_secs, burst, interval_ns, tolerance_ns: interval_ns * u64::from(burst - 1) })
    }

    /// As the config writes it.
    pub fn show(&self) -> String {
        format!("{}/{}", self.count, if self.per_secs == 1 { "s" } else { "m" })
    }
}

/// What `AddrTable::open` decided for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    Counted,
    /// Its address already has `max` connections open on this worker.
    Over,
    /// No slot free in its neighbourhood: admitted, not counted (see the module's comment).
    Uncounted,
}

impl AddrTable {
    /// `slots` rounded up to a power of two (at least `WAYS`).
    pub fn new(slots: usize) -> AddrTable {
        let n = slots.max(WAYS).next_power_of_two();
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        AddrTable { slots: vec![[0u64; 4]; n].into_boxed_slice(), mask: n - 1, seed, epoch: Instant::now() }
    }

    fn home(&self, a: u128, tag: u64) -> usize {
        let (lo, hi) = (a as u64, (a >> 64) as u64);
        let mut h = (lo ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h = (h ^ hi ^ tag.rotate_left(40)).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        (h ^ (h >> 31)) as usize & self.mask
    }

    /// The slot holding (`a`, `tag`), else the best one to claim (the lowest `score`), marked
    /// `false`.
    fn find(&mut self, a: u128, tag: u64, score: impl Fn(&Slot) -> u64) -> Option<(&mut Slot, bool)> {
        let (lo, hi) = (a as u64, (a >> 64) as u64);
        let home = self.home(a, tag);
        let mut best = (u64::MAX, home);
        for i in 0..WAYS {
            let j = (home + i) & self.mask;
            let s = self.slots.get(j)?;
            if s[3] == tag && s[0] == lo && s[1] == hi {
                return self.slots.get_mut(j).map(|s| (s, true));
            }
            let v = if s[3] == 0 { 0 } else { score(s) };
            if v < best.0 {
                best = (v, j);
            }
        }
        self.slots.get_mut(best.1).map(|s| (s, false)).filter(|_| best.0 != u64::MAX)
    }

    fn now_ns(&self, now: Instant) -> u64 {
        // +1: 0 never means a time, so a fresh slot's value is always "in the past".
        now.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }

    /// One request of `client` on the route tagged `route` (0-based). `Err(secs)`: over the
    /// limit, try again in `secs` seconds (at least 1, for Retry-After).
    pub fn take(&mut self, client: IpAddr, route: u32, rate: &Rate, now: Instant) -> Result<(), u32> {
        let now = self.now_ns(now);
        let tag = u64::from(route) + 2; // 0: unused, 1: connection counts
        let a = crate::cidr::bits(client);
        // A bucket full again (its schedule not ahead of now) scores 0: free to reuse.
        let Some((s, found)) = self.find(a, tag, |s| s[2].saturating_sub(now)) else { return Ok(()) };
        if !found {
            *s = [a as u64, (a >> 64) as u64, now, tag];
        }
        let tat = s[2].max(now);
        let ahead = tat - now;
        if ahead > rate.tolerance_ns {
            let wait = ahead - rate.tolerance_ns;
            return Err(u32::try_from(wait.div_ceil(1_000_000_000)).unwrap_or(u32::MAX).max(1));
        }
        s[2] = tat.saturating_add(rate.interval_ns);
        Ok(())
    }

    /// A new connection from `client`, allowed `max` open at once.
    pub fn open(&mut self, client: IpAddr, max: u32) -> Open {
        let a = crate::cidr::bits(client);
        // A slot with no open connection scores 0; a live one can never be taken (u64::MAX).
        let Some((s, found)) = self.find(a, 1, |s| if s[2] == 0 { 0 } else { u64::MAX }) else {
            return Open::Uncounted;
        };
        if !found {
            *s = [a as u64, (a >> 64) as u64, 0, 1];
        }
        if s[2] >= u64::from(max) {
            return Open::Over;
        }
        s[2] += 1;
        Open::Counted
    }

    /// A counted connection from `client` closed.
    pub fn close(&mut self, client: IpAddr) {
        let a = crate::cidr::bits(client);
        if let Some((s, true)) = self.find(a, 1, |_| u64::MAX) {
            s[2] = s[2].saturating_sub(1);
        }
    }

    /// Slots in use (tests, bench).
    pub fn used(&self) -> usize {
        self.slots.iter().filter(|s| s[3] != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0A00_0000 + i))
    }

    /// A table of `slots`, the rate `rate` with `burst`, and the table's time zero.
    fn bucket(slots: usize, rate: &str, burst: i64) -> (AddrTable, Rate, Instant) {
        let t = AddrTable::new(slots);
        let t0 = t.epoch;
        (t, Rate::parse(rate, Some(burst)).unwrap(), t0)
    }

    #[test]
    fn rate_strings() {
        let r = Rate::parse("100/s", Some(200)).unwrap();
        assert_eq!((r.interval_ns, r.tolerance_ns), (10_000_000, 199 * 10_000_000));
        assert_eq!(Rate::parse("3/m", None).unwrap().burst, 3);
        assert_eq!(Rate::parse("3/s", None).unwrap().interval_ns, 333_333_334, "rounded up");
        for bad in ["", "/s", "0/s", "1/h", "1/", "+1/s", "1 /s", "10000000/s", "1e3/s", "-1/s", "1/S"] {
            assert!(Rate::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Rate::parse("1/s", Some(0)).is_err());
        assert_eq!(Rate::parse("7/m", None).unwrap().show(), "7/m");
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let (mut t, r, t0) = bucket(64, "10/s", 5);
        for _ in 0..5 {
            assert_eq!(t.take(ip(1), 0, &r, t0), Ok(()));
        }
        assert_eq!(t.take(ip(1), 0, &r, t0), Err(1), "over: Retry-After rounds up to 1 s");
        assert_eq!(t.take(ip(2), 0, &r, t0), Ok(()), "another address has its own bucket");
        assert_eq!(t.take(ip(1), 1, &r, t0), Ok(()), "another route too");
        let later = t0 + Duration::from_millis(100);
        assert_eq!(t.take(ip(1), 0, &r, later), Ok(()), "one token per 100 ms");
        assert!(t.take(ip(1), 0, &r, later).is_err());
        let slow = Rate::parse("1/m", Some(1)).unwrap();
        assert_eq!(t.take(ip(3), 0, &slow, t0), Ok(()));
        assert_eq!(t.take(ip(3), 0, &slow, t0 + Duration::from_secs(1)), Err(59));
    }

    #[test]
    fn accepted_never_exceeds_burst_plus_rate() {
        let (mut t, r, t0) = bucket(64, "50/s", 20);
        let mut ok = 0u64;
        for ms in 0..3000u64 {
            for _ in 0..3 {
                ok += u64::from(t.take(ip(9), 0, &r, t0 + Duration::from_millis(ms)).is_ok());
            }
        }
        // 20 at once, then 50/s over 2.999 s: 20 + 149 (the 150th token is due at 3.0 s).
        assert_eq!(ok, 20 + 149);
    }

    #[test]
    fn bounded_whatever_the_addresses() {
        let (mut t, r, t0) = bucket(1024, "1/m", 1);
        for i in 0..100_000 {
            let _ = t.take(ip(i), 0, &r, t0);
        }
        assert_eq!(t.used(), 1024, "full, never more");
        // A quiet client's slot is reused first: a minute later every bucket is full again.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(t.take(ip(7), 0, &r, later), Ok(()));
    }

    #[test]
    fn connection_counts() {
        let mut t = AddrTable::new(64);
        assert_eq!(t.open(ip(1), 2), Open::Counted);
        assert_eq!(t.open(ip(1), 2), Open::Counted);
        assert_eq!(t.open(ip(1), 2), Open::Over);
        assert_eq!(t.open(ip(2), 2), Open::Counted);
        t.close(ip(1));
        assert_eq!(t.open(ip(1), 2), Open::Counted);
        t.close(ip(9)); // never counted: nothing happens
        // Every slot live: a new address is admitted uncounted, never refused.
        let mut small = AddrTable::new(8);
        for i in 0..8 {
            let _ = small.open(ip(100 + i), 1);
        }
        let live = (0..8).filter(|i| small.open(ip(100 + i), 1) == Open::Over).count();
        assert!(live >= 1);
        assert_ne!(small.open(ip(5000), 1), Open::Over);
    }
}
