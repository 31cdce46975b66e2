//! Error-log levels, the configured threshold (`[log] level`), the main thread's lines, and the
//! per-worker gates that rate-limit repeated lines of one kind.
//!
//! Every error-log line reads `2026-12-05T12:00:00Z apex: LEVEL: what happened`, RFC 3339 in
//! UTC, from a worker (through the logger thread) or from the main thread (`say`). The
//! threshold is one relaxed atomic, set by the main thread at start and on reload, read by
//! workers: no lock. A gate lets `GATE_LINES` lines of a kind through per `GATE_WINDOW` per
//! worker and counts the rest; when the window is over, one line says how many were held
//! ("… and 4,812 more like this in the last 10 s"), so a flood of bad requests costs a few
//! lines, never a disk.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        [Level::Error, Level::Warn, Level::Info, Level::Debug].into_iter().find(|l| l.as_str() == s)
    }
}

static THRESHOLD: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Lines above `l` are dropped from now on (main thread: at start and on reload).
pub fn set_threshold(l: Level) {
    THRESHOLD.store(l as u8, Relaxed);
}

#[inline]
pub fn enabled(l: Level) -> bool {
    (l as u8) <= THRESHOLD.load(Relaxed)
}

/// Now as RFC 3339 in UTC, to the second.
pub fn iso_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = crate::time::civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// A main-thread line (start-up, reload, signals, upgrade) on stderr, in the workers' format.
pub fn say(level: Level, args: fmt::Arguments) {
    if enabled(level) {
        eprintln!("{} apex: {}: {args}", iso_now(), level.as_str());
    }
}

/// Kinds of lines that repeat with traffic, each gated on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A request Apex refused (400, 413, 431, ...).
    Request = 0,
    /// A timeout that fired.
    Timeout,
    /// An upstream that failed (connect, TLS, a malformed response).
    Upstream,
}

pub const KINDS: usize = 3;
pub const GATE_LINES: u32 = 5;
pub const GATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, Default)]
pub struct Gate {
    start: Option<Instant>,
    lines: u32,
    pub held: u64,
    pub level: Option<Level>,
}

impl Gate {
    /// Whether a line may go out at `now`; `Some(n)` first when a window with `n` held lines
    /// just ended (say so before this line).
    pub fn admit(&mut self, now: Instant, level: Level) -> (bool, u64) {
        let over = self.start.is_none_or(|s| now.saturating_duration_since(s) >= GATE_WINDOW);
        let mut held = 0;
        if over {
            held = std::mem::take(&mut self.held);
            self.start = Some(now);
            self.lines = 0;
        }
        if self.lines < GATE_LINES {
            self.lines += 1;
            self.level = Some(level);
            return (true, held);
        }
        self.held += 1;
        (false, held)
    }

    /// The window ended with lines held: how many (and the gate is reset).
    pub fn expired(&mut self, now: Instant) -> Option<(u64, Level)> {
        let s = self.start?;
        if self.held == 0 || now.saturating_duration_since(s) < GATE_WINDOW {
            return None;
        }
        self.start = None;
        self.lines = 0;
        Some((std::mem::take(&mut self.held), self.level.unwrap_or(Level::Info)))
    }
}

/// A count with thousands separators: 4812 -> "4,812".
pub struct Thousands(pub u64);

impl fmt::Display for Thousands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut div = 1u64;
        while self.0 / div >= 1000 {
            div *= 1000;
        }
        write!(f, "{}", self.0 / div)?;
        while div > 1 {
            div /= 1000;
            write!(f, ",{:03}", self.0 / div % 1000)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_and_levels() {
        assert_eq!(Thousands(4812).to_string(), "4,812");
        assert_eq!(Thousands(7).to_string(), "7");
        assert_eq!(Thousands(1_000_000).to_string(), "1,000,000");
        assert_eq!(Level::parse("warn"), Some(Level::Warn));
        assert!(Level::Error < Level::Debug);
    }

    #[test]
    fn a_gate_holds_past_its_lines_and_says_how_many() {
        let t0 = Instant::now();
        let mut g = Gate::default();
        let admitted = (0..100).filter(|_| g.admit(t0, Level::Info).0).count();
        assert_eq!(admitted, GATE_LINES as usize);
        assert_eq!(g.expired(t0 + Duration::from_secs(1)), None);
        assert_eq!(g.expired(t0 + GATE_WINDOW), Some((95, Level::Info)));
        assert_eq!(g.admit(t0 + GATE_WINDOW, Level::Info), (true, 0));
    }
}
