//! The process's monotonic clock, as workers read it: CLOCK_MONOTONIC (the clock `Instant` reads
//! on Linux) straight as nanoseconds since one process-wide epoch. A worker reads it once per
//! batch of events; deadlines, upstream health and the sweep are integer compares on it. Going
//! through `Instant` cost ~65 instructions a read more (libc's wrapper, then
//! `saturating_duration_since` and the conversion back to nanoseconds; issue #21).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::time::{ClockId, clock_gettime};

/// The origin of every worker's `now_ns` and of `Health`'s milliseconds, as an `Instant` (for
/// the code that keeps `Instant`s) and as the raw clock's nanoseconds.
struct Epoch {
    at: Instant,
    raw_ns: u64,
}

fn the_epoch() -> &'static Epoch {
    static EPOCH: OnceLock<Epoch> = OnceLock::new();
    // `at` first, then the raw reading: a time derived from the raw clock (`instant`) is then
    // at most the gap between the two reads (well under a microsecond) behind the real one,
    // never ahead of it, like any clock read earlier in the batch.
    EPOCH.get_or_init(|| {
        let at = Instant::now();
        Epoch { at, raw_ns: raw_ns() }
    })
}

/// CLOCK_MONOTONIC in nanoseconds (rustix: the vDSO, no libc wrapper). The clock starts near
/// boot, so u64 nanoseconds last 584 years; a negative reading cannot happen and reads as 0.
#[inline]
fn raw_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// The process's epoch as an `Instant`.
pub fn epoch() -> Instant {
    the_epoch().at
}

/// Nanoseconds since `epoch`, now.
#[inline]
pub fn now_ns() -> u64 {
    now_ns_from(origin_ns())
}

/// The raw clock's reading at `epoch`: kept by a worker, so that its reads of the clock
/// (`now_ns_from`) need not look at the process-wide `OnceLock` each time.
pub fn origin_ns() -> u64 {
    the_epoch().raw_ns
}

/// `now_ns`, given `origin_ns`.
#[inline]
pub fn now_ns_from(origin: u64) -> u64 {
    raw_ns().saturating_sub(origin)
}

/// Milliseconds since `epoch`, now: the unit `Health` counts in (the checker thread reads it
/// here; workers take it from their batch's clock, `Cx::now_ms`).
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// The `Instant` `ns` nanoseconds after `epoch`, for code that keeps `Instant`s (the log's
/// timers, per-IP rates). Saturates at `epoch` where `Instant` could not hold it.
pub fn instant(ns: u64) -> Instant {
    let e = epoch();
    e.checked_add(Duration::from_nanos(ns)).unwrap_or(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_ns_runs_with_instant() {
        // The raw clock and `Instant` are the same clock: a raw reading taken between two
        // `Instant`s lands between them (less the epoch's gap, under a millisecond here).
        for _ in 0..1000 {
            let a = Instant::now();
            let n = now_ns();
            let b = Instant::now();
            let (lo, hi) = (a.duration_since(epoch()), b.duration_since(epoch()));
            assert!(u128::from(n) <= hi.as_nanos(), "{n} after {hi:?}");
            assert!(u128::from(n) + 1_000_000 >= lo.as_nanos(), "{n} long before {lo:?}");
            assert!(instant(n) <= b);
        }
    }

    #[test]
    fn now_ns_never_goes_back() {
        let mut last = now_ns();
        for _ in 0..10_000 {
            let n = now_ns();
            assert!(n >= last);
            last = n;
        }
    }
}
