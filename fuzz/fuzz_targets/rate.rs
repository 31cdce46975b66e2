//! A route's `rate` string (`per_ip::Rate::parse`). Invariants: no panic; an accepted rate
//! prints back to the same value, its interval is never shorter than written (rounded up), and
//! its tolerance is (burst - 1) intervals.
#![no_main]
use apex::per_ip::Rate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (text, burst) = match s.split_once(';') {
        Some((t, b)) => (t, b.parse::<i64>().ok()),
        None => (s, None),
    };
    if let Ok(r) = Rate::parse(text, burst) {
        assert_eq!(Rate::parse(&r.show(), Some(i64::from(r.burst))), Ok(r));
        assert!(r.interval_ns * u64::from(r.count) >= u64::from(r.per_secs) * 1_000_000_000);
        assert_eq!(r.tolerance_ns, r.interval_ns * u64::from(r.burst - 1));
    }
});
