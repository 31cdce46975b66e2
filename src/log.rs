//! Access and error logs with no lock and no heap allocation per line on the hot path.
//!
//! Each worker formats lines into fixed-size chunks it owns (`CHUNKS_PER_WORKER` of them,
//! allocated at start and recycled). A full chunk, or one older than `LOG_FLUSH_MS`, goes to the
//! logger thread over the worker's own single-producer single-consumer ring (`rtrb`: two atomic
//! indices, no lock), and comes back empty over a second ring the other way. The logger thread
//! does every blocking write (stdout, a file, stderr).
//!
//! No lock is reachable from a worker: a worker touches only its two rings and the logger's
//! `Thread` handle, whose `unpark` (after each shipped chunk) is an atomic swap plus, only if the
//! logger sleeps, a futex wake (std's futex parker on Linux; no mutex). The logger sleeps in
//! `park_timeout` when it finds nothing to write. The main thread's control messages (a sink
//! change on reload or SIGUSR1, stop) use a std channel to the logger, off the worker path.
//!
//! A worker that has no empty chunk, or finds its ring full, drops the line and counts it: a full
//! pipe or a slow disk costs log lines, never traffic. Dropped counts are reported on the error
//! log when logging recovers. Ordering: chunks are written in the order each worker shipped them;
//! a sink change first writes what was shipped before it arrived to the old sink.
//!
//! Lines never contain raw client bytes: everything taken from a request is escaped (`\xHH` in
//! the combined format, `\u00HH` in JSON) and truncated.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rtrb::{Consumer, Producer, PushError, RingBuffer};

use crate::h1::write::Out;
use crate::time::civil_from_days;

mod level;
pub use level::{Kind, Level, Thousands, enabled, iso_now, say, set_threshold};

pub const CHUNK_BYTES: usize = 64 * 1024;
pub const CHUNKS_PER_WORKER: usize = 8;
pub const LOG_FLUSH_MS: u64 = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Combined,
    Json,
}

struct Chunk {
    data: Box<[u8; CHUNK_BYTES]>,
    len: usize,
}

/// A chunk of lines, worker -> logger.
enum Shipped {
    Access(Chunk),
    Error(Chunk),
}

/// main thread -> logger.
enum Ctl {
    /// Reopen the access file (SIGUSR1, logrotate), or switch sink (reload).
    Sink(Sink),
    Stop,
}

/// The logger's ends of one worker's rings.
struct Lane {
    full: Consumer<Shipped>,
    empty: Producer<Chunk>,
}

/// The main thread's handle on the logger thread.
pub struct Logger {
    ctl: Sender<Ctl>,
    handle: Option<JoinHandle<()>>,
}

impl Logger {
    /// Starts the logger thread; returns it and one `WorkerLog` per worker.
    pub fn start(sink: Sink, workers: usize) -> std::io::Result<(Logger, Vec<WorkerLog>)> {
        let mut lanes = Vec::with_capacity(workers);
        let mut ends = Vec::with_capacity(workers);
        for _ in 0..workers {
            // Each ring holds every chunk the worker owns, so neither can be full in practice.
            let (ship, full) = RingBuffer::<Shipped>::new(CHUNKS_PER_WORKER);
            let (mut empty, back) = RingBuffer::<Chunk>::new(CHUNKS_PER_WORKER);
            for _ in 0..CHUNKS_PER_WORKER {
                let _ = empty.push(Chunk { data: Box::new([0u8; CHUNK_BYTES]), len: 0 });
            }
            lanes.push(Lane { full, empty });
            ends.push((ship, back));
        }
        let (ctl, ctl_rx) = channel::<Ctl>();
        let out = open(&sink);
        let handle = std::thread::Builder::new().name("apex-log".into()).spawn(move || run(lanes, ctl_rx, out))?;
        let logger = handle.thread().clone();
        let logs = ends
            .into_iter()
            .map(|(ship, back)| WorkerLog {
                ship,
                back,
                logger: logger.clone(),
                access: None,
                error: None,
                since: None,
                dropped: 0,
                dropped_reported: 0,
                clock: Clock::default(),
                gates: Default::default(),
                holding: false,
            })
            .collect();
        Ok((Logger { ctl, handle: Some(handle) }, logs))
    }

    pub fn set_sink(&self, sink: Sink) {
        let _ = self.ctl.send(Ctl::Sink(sink));
        self.wake();
    }

    /// Writes what the workers have shipped, then stops the thread.
    pub fn stop(mut self) {
        let _ = self.ctl.send(Ctl::Stop);
        self.wake();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }

    fn wake(&self) {
        if let Some(h) = &self.handle {
            h.thread().unpark();
        }
    }
}

type Output = Option<Box<dyn std::io::Write + Send>>;

/// The logger thread: writes what the workers ship, sleeps when there is nothing.
fn run(mut lanes: Vec<Lane>, ctl: Receiver<Ctl>, mut out: Output) {
    let mut stderr = std::io::stderr();
    loop {
        let mut busy = drain(&mut lanes, &mut out, &mut stderr);
        loop {
            match ctl.try_recv() {
                Ok(Ctl::Sink(s)) => {
                    // What was shipped before the change goes to the old sink.
                    drain(&mut lanes, &mut out, &mut stderr);
                    if let Some(o) = out.as_mut() {
                        let _ = o.flush();
                    }
                    out = open(&s);
                    busy = true;
                }
                Ok(Ctl::Stop) => return finish(&mut lanes, &mut out, &mut stderr),
                // The main thread dropped its handle without `stop`: go on while any worker
                // can still ship (as a channel would while a sender lives).
                Err(TryRecvError::Disconnected) if lanes.iter().all(|l| l.full.is_abandoned()) => {
                    return finish(&mut lanes, &mut out, &mut stderr);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if !busy {
            // Woken by `unpark` as soon as a worker ships or the main thread sends; the
            // timeout only bounds how long an abandoned logger lingers.
            std::thread::park_timeout(Duration::from_millis(LOG_FLUSH_MS));
        }
    }
}

/// Writes every chunk shipped so far and hands each back to its worker. Returns whether there
/// was any.
fn drain(lanes: &mut [Lane], out: &mut Output, stderr: &mut std::io::Stderr) -> bool {
    let mut any = false;
    for lane in lanes.iter_mut() {
        // At most one round of the worker's chunks, so a busy worker cannot keep the logger
        // from the others and from the main thread's messages.
        for _ in 0..CHUNKS_PER_WORKER {
            let Ok(shipped) = lane.full.pop() else { break };
            any = true;
            let mut c = match shipped {
                Shipped::Access(c) => {
                    if let Some(o) = out.as_mut() {
                        let _ = o.write_all(c.data.get(..c.len).unwrap_or(&[]));
                    }
                    c
                }
                Shipped::Error(c) => {
                    let _ = stderr.write_all(c.data.get(..c.len).unwrap_or(&[]));
                    c
                }
            };
            c.len = 0;
            // The ring holds all of the worker's chunks, so there is room.
            let _ = lane.empty.push(c);
        }
    }
    any
}

fn finish(lanes: &mut [Lane], out: &mut Output, stderr: &mut std::io::Stderr) {
    drain(lanes, out, stderr);
    if let Some(o) = out.as_mut() {
        let _ = o.flush();
    }
}

fn open(sink: &Sink) -> Output {
    match sink {
        Sink::Off => None,
        Sink::Stdout => Some(Box::new(std::io::stdout())),
        Sink::File(p) => match OpenOptions::new().create(true).append(true).open(p) {
            Ok(f) => Some(Box::new(f) as Box<dyn std::io::Write + Send>),
            Err(e) => {
                say(Level::Error, format_args!("cannot open access log {}: {e}", p.display()));
                None
            }
        },
    }
}

/// A formatted time, recomputed once a second.
#[derive(Default)]
struct Clock {
    secs: u64,
    /// `26/Nov/2026:00:39:19 +0000`
    clf: [u8; 26],
    /// `2026-11-26T00:39:19Z`
    iso: [u8; 20],
}

impl Clock {
    fn update(&mut self) {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if secs == self.secs && self.iso[0] != 0 {
            return;
        }
        self.secs = secs;
        let (y, m, d) = civil_from_days((secs / 86_400) as i64);
        let (hh, mm, ss) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let mon = MONTHS.get((m as usize).saturating_sub(1)).copied().unwrap_or("Jan");
        let mut w = Out::new(&mut self.clf);
        let _ = write!(w, "{d:02}/{mon}/{y:04}:{hh:02}:{mm:02}:{ss:02} +0000");
        let mut w = Out::new(&mut self.iso);
        let _ = write!(w, "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z");
    }
}

/// What one access-log line says.
pub struct Entry<'a> {
    pub client: std::net::SocketAddr,
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub minor: u8,
    pub status: u16,
    pub bytes_in: u64,
    /// All bytes sent to the client, heads included.
    pub bytes_out: u64,
    /// Of those, the response body's (nginx's `$body_bytes_sent`; a tunnel's bytes after the 101).
    pub body_out: u64,
    pub upstream: Option<std::net::SocketAddr>,
    pub micros: u64,
    pub referer: &'a [u8],
    pub agent: &'a [u8],
    /// Which side ended the exchange on an error: "client", "upstream", "timeout", or "-".
    pub ended_by: &'static str,
    /// With `[log] request_id`: the request's id (empty: none, a request refused unparsed).
    pub request_id: Option<&'a [u8]>,
    /// The connection's TLS, if it came over TLS.
    pub tls: Option<TlsFields>,
}

/// What a TLS connection's handshake agreed on, by name (`tls::Agreed::fields`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsFields {
    /// `TLSv1.3`, `TLSv1.2` (nginx's `$ssl_protocol`).
    pub version: &'static str,
    /// IANA's name of the cipher suite.
    pub cipher: &'static str,
    /// The key exchange group, as `tls.groups` names it; None: no key exchange (a resumed TLS
    /// 1.2 session).
    pub group: Option<&'static str>,
}

/// One worker's end of the logs.
pub struct WorkerLog {
    /// Full chunks to the logger.
    ship: Producer<Shipped>,
    /// Empty chunks back from it.
    back: Consumer<Chunk>,
    /// Woken after each shipped chunk.
    logger: Thread,
    access: Option<Chunk>,
    error: Option<Chunk>,
    /// When the oldest unshipped line was written.
    since: Option<Instant>,
    pub dropped: u64,
    dropped_reported: u64,
    clock: Clock,
    /// Rate limits for lines that repeat with traffic, per `Kind`.
    gates: [level::Gate; level::KINDS],
    /// Some gate holds lines back: `tick` checks whether its window is over.
    holding: bool,
}

impl WorkerLog {
    /// Logs one request. Never blocks, never allocates.
    pub fn access(&mut self, now: Instant, format: Format, e: &Entry) {
        self.clock.update();
        let (clf, iso) = (self.clock.clf, self.clock.iso);
        let line = |w: &mut Out| match format {
            Format::Combined => combined(w, &clf, e),
            Format::Json => json(w, &iso, e),
        };
        self.write(now, true, line);
    }

    /// Logs an event on the error log (stderr, through the logger thread), if `level` is
    /// enabled: `2026-12-05T12:00:00Z apex: info: what`.
    pub fn event(&mut self, now: Instant, level: Level, args: std::fmt::Arguments) {
        if !enabled(level) {
            return;
        }
        self.clock.update();
        let iso = self.clock.iso;
        self.write(now, false, |w| {
            w.put(&iso);
            w.put(b" apex: ");
            w.put(level.as_str().as_bytes());
            w.put(b": ");
            let _ = w.write_fmt(args);
            w.put(b"\n");
        });
    }

    /// `event`, through the gate of its kind (see `level.rs`).
    pub fn event_of(&mut self, now: Instant, level: Level, kind: Kind, args: std::fmt::Arguments) {
        if !enabled(level) {
            return;
        }
        let Some(g) = self.gates.get_mut(kind as usize) else { return };
        let (admit, held) = g.admit(now, level);
        self.holding |= !admit;
        if held > 0 {
            self.held(now, level, held);
        }
        if admit {
            self.event(now, level, args);
        }
    }

    #[cold]
    #[inline(never)]
    fn report_dropped(&mut self, now: Instant) {
        let n = self.dropped - self.dropped_reported;
        self.dropped_reported = self.dropped;
        self.event(now, Level::Warn, format_args!("{n} log lines dropped: the log sink is too slow"));
    }

    /// Says how many lines each gate whose window ended held back.
    #[cold]
    fn summarize(&mut self, now: Instant) {
        self.holding = false;
        for k in 0..level::KINDS {
            let Some(g) = self.gates.get_mut(k) else { continue };
            if let Some((n, level)) = g.expired(now) {
                self.held(now, level, n);
            } else if g.held > 0 {
                self.holding = true;
            }
        }
    }

    #[cold]
    fn held(&mut self, now: Instant, level: Level, n: u64) {
        self.event(now, level, format_args!("… and {} more like this in the last 10 s", Thousands(n)));
    }

    fn write(&mut self, now: Instant, access: bool, line: impl Fn(&mut Out)) {
        for _ in 0..2 {
            let slot = if access { &mut self.access } else { &mut self.error };
            if slot.is_none() {
                match self.back.pop() {
                    Ok(c) => *slot = Some(c),
                    Err(_) => break,
                }
            }
            let Some(c) = slot.as_mut() else { break };
            let mut w = Out::new(c.data.get_mut(c.len..).unwrap_or(&mut []));
            line(&mut w);
            match w.finish() {
                Some(n) => {
                    c.len += n;
                    self.since.get_or_insert(now);
                    return;
                }
                None if c.len == 0 => break, // a line larger than a chunk: cannot happen, drop
                None => self.ship(access),
            }
        }
        self.dropped += 1;
    }

    fn ship(&mut self, access: bool) {
        let slot = if access { &mut self.access } else { &mut self.error };
        let Some(c) = slot.take() else { return };
        let shipped = if access { Shipped::Access(c) } else { Shipped::Error(c) };
        match self.ship.push(shipped) {
            Ok(()) => self.logger.unpark(),
            Err(PushError::Full(Shipped::Access(mut c) | Shipped::Error(mut c))) => {
                // Keep the chunk: its lines are lost, the chunk is not.
                c.len = 0;
                self.dropped += 1;
                *slot = Some(c);
            }
        }
    }

    /// Lines wait to be shipped, or held-back lines to be summarised: `tick` has work to do.
    /// The worker asks first, so that a turn with nothing logged reads no `Instant`.
    #[inline]
    pub fn pending(&self) -> bool {
        self.holding || self.since.is_some()
    }

    /// Ships lines older than `LOG_FLUSH_MS`. Returns when to call again.
    pub fn tick(&mut self, now: Instant) -> Option<Instant> {
        if self.holding {
            self.summarize(now);
        }
        let since = self.since?;
        let due = since + Duration::from_millis(LOG_FLUSH_MS);
        if now < due {
            return Some(due);
        }
        if self.dropped > self.dropped_reported {
            self.report_dropped(now);
        }
        self.ship(true);
        self.ship(false);
        self.since = None;
        None
    }

    /// Ships everything now (shutdown).
    pub fn flush(&mut self) {
        self.ship(true);
        self.ship(false);
        self.since = None;
    }
}

/// Bytes from the wire, escaped for a log line: printable ASCII except `"` and `\` as is,
/// everything else as `\xHH`; at most `max` input bytes.
fn escaped(w: &mut Out, bytes: &[u8], max: usize, json: bool) {
    let take = bytes.get(..max).unwrap_or(bytes);
    for &b in take {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            w.put(&[b]);
        } else if json {
            let _ = write!(w, "\\u{b:04x}");
        } else {
            let _ = write!(w, "\\x{b:02X}");
        }
    }
    if take.len() < bytes.len() {
        w.put(b"...");
    }
}

fn dash_or(w: &mut Out, bytes: &[u8], max: usize, json: bool) {
    if bytes.is_empty() {
        w.put(b"-");
    } else {
        escaped(w, bytes, max, json);
    }
}

/// NCSA combined format, then Apex's fields: `in= up= us= end=`.
fn combined(w: &mut Out, clf: &[u8], e: &Entry) {
    let _ = write!(w, "{} - - [", e.client.ip());
    w.put(clf);
    w.put(b"] \"");
    if e.method.is_empty() && e.target.is_empty() {
        w.put(b"-");
    } else if e.method.is_empty() {
        escaped(w, e.target, 1024, false); // a request line that did not parse, as it came
    } else {
        escaped(w, e.method, 32, false);
        w.put(b" ");
        escaped(w, e.target, 1024, false);
        let _ = write!(w, " HTTP/1.{}", e.minor);
    }
    let _ = write!(w, "\" {} {} \"", e.status, e.body_out);
    dash_or(w, e.referer, 512, false);
    w.put(b"\" \"");
    dash_or(w, e.agent, 512, false);
    let _ = write!(w, "\" in={} out={} up=", e.bytes_in, e.bytes_out);
    match e.upstream {
        Some(a) => {
            let _ = write!(w, "{a}");
        }
        None => w.put(b"-"),
    }
    let _ = write!(w, " us={} end={}", e.micros, e.ended_by);
    if let Some(t) = e.tls {
        w.put(b" tls=");
        w.put(t.version.as_bytes());
        w.put(b" cipher=");
        w.put(t.cipher.as_bytes());
        w.put(b" group=");
        w.put(t.group.unwrap_or("-").as_bytes());
    }
    if let Some(id) = e.request_id {
        w.put(b" id=");
        dash_or(w, id, 64, false);
    }
    w.put(b"\n");
}

fn json(w: &mut Out, iso: &[u8], e: &Entry) {
    w.put(b"{\"time\":\"");
    w.put(iso);
    let _ = write!(w, "\",\"client\":\"{}\",\"method\":\"", e.client);
    escaped(w, e.method, 32, true);
    w.put(b"\",\"target\":\"");
    escaped(w, e.target, 1024, true);
    let _ = write!(
        w,
        "\",\"version\":\"1.{}\",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"body_bytes\":{},\"upstream\":",
        e.minor, e.status, e.bytes_in, e.bytes_out, e.body_out
    );
    match e.upstream {
        Some(a) => {
            let _ = write!(w, "\"{a}\"");
        }
        None => w.put(b"null"),
    }
    let _ = write!(w, ",\"us\":{},\"referer\":\"", e.micros);
    escaped(w, e.referer, 512, true);
    w.put(b"\",\"agent\":\"");
    escaped(w, e.agent, 512, true);
    let _ = write!(w, "\",\"ended_by\":\"{}\"", e.ended_by);
    // Always there, null over plain HTTP, as `upstream` is with no upstream. The names are
    // Apex's own (static, plain ASCII): nothing to escape.
    match e.tls {
        Some(t) => {
            w.put(b",\"tls_version\":\"");
            w.put(t.version.as_bytes());
            w.put(b"\",\"tls_cipher\":\"");
            w.put(t.cipher.as_bytes());
            w.put(b"\",\"tls_group\":");
            match t.group {
                Some(g) => {
                    w.put(b"\"");
                    w.put(g.as_bytes());
                    w.put(b"\"");
                }
                None => w.put(b"null"),
            }
        }
        None => w.put(b",\"tls_version\":null,\"tls_cipher\":null,\"tls_group\":null"),
    }
    if let Some(id) = e.request_id {
        if id.is_empty() {
            w.put(b",\"request_id\":null");
        } else {
            w.put(b",\"request_id\":\"");
            escaped(w, id, 64, true);
            w.put(b"\"");
        }
    }
    w.put(b"}\n");
}

/// Parses the `[log]` access setting: "stdout", "off", or a file path.
pub fn parse_sink(s: &str) -> Sink {
    match s {
        "off" => Sink::Off,
        "stdout" | "-" => Sink::Stdout,
        p => Sink::File(PathBuf::from(p)),
    }
}

/// The request fields an access-log line needs, copied (truncated) when the head is parsed,
/// because the head's bytes are gone by the time the exchange ends. Lives in a per-worker slab
/// only while its request is in flight.
pub struct Rec {
    method: [u8; 16],
    target: [u8; 512],
    referer: [u8; 192],
    agent: [u8; 192],
    lens: [u16; 4],
    pub minor: u8,
}

impl Rec {
    pub const fn empty() -> Rec {
        Rec { method: [0; 16], target: [0; 512], referer: [0; 192], agent: [0; 192], lens: [0; 4], minor: 1 }
    }

    pub fn capture(&mut self, method: &[u8], target: &[u8], minor: u8, referer: &[u8], agent: &[u8]) {
        fn copy(dst: &mut [u8], src: &[u8]) -> u16 {
            let n = src.len().min(dst.len());
            if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
                d.copy_from_slice(s);
            }
            n as u16
        }
        self.lens = [
            copy(&mut self.method, method),
            copy(&mut self.target, target),
            copy(&mut self.referer, referer),
            copy(&mut self.agent, agent),
        ];
        self.minor = minor;
    }

    /// For a request rejected before it could be parsed: its request line and User-Agent, read
    /// from the raw bytes as far as they go (`head`: what the client sent, at most a buffer).
    /// A line of three words ending in `HTTP/1.x` is split as a parsed one would be; anything
    /// else is kept whole as the target, with no method, and printed escaped like any target.
    #[cold]
    pub fn capture_raw(&mut self, head: &[u8]) {
        let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let line = lines.next().unwrap_or(&[]);
        let agent = lines
            .take_while(|l| !l.is_empty())
            .find_map(|l| {
                let colon = l.iter().position(|&b| b == b':')?;
                let (name, value) = l.split_at(colon);
                name.eq_ignore_ascii_case(b"user-agent").then(|| value.get(1..).unwrap_or(&[]).trim_ascii())
            })
            .unwrap_or(&[]);
        let mut words = line.split(|&b| b == b' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some(m), Some(t), Some(v), None) if v.len() == 8 && v.starts_with(b"HTTP/1.") && !m.is_empty() => {
                let minor = if v.get(7) == Some(&b'0') { 0 } else { 1 };
                self.capture(m, t, minor, &[], agent);
            }
            _ => self.capture(&[], line, 1, &[], agent),
        }
    }

    pub fn method(&self) -> &[u8] {
        self.method.get(..usize::from(self.lens[0])).unwrap_or(&[])
    }
    pub fn target(&self) -> &[u8] {
        self.target.get(..usize::from(self.lens[1])).unwrap_or(&[])
    }
    pub fn referer(&self) -> &[u8] {
        self.referer.get(..usize::from(self.lens[2])).unwrap_or(&[])
    }
    pub fn agent(&self) -> &[u8] {
        self.agent.get(..usize::from(self.lens[3])).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(target: &'a [u8]) -> Entry<'a> {
        Entry {
            client: "127.0.0.1:5000".parse().unwrap(),
            method: b"GET",
            target,
            minor: 1,
            status: 200,
            bytes_in: 40,
            bytes_out: 120,
            body_out: 20,
            upstream: Some("127.0.0.1:9000".parse().unwrap()),
            micros: 250,
            referer: b"",
            agent: b"curl/8",
            ended_by: "-",
            request_id: None,
            tls: None,
        }
    }

    /// A shipped chunk is written promptly (the worker wakes the logger), chunks cross the
    /// rings in order and come back for reuse, and `stop` writes what was shipped.
    #[test]
    fn lines_reach_the_sink_promptly_and_on_stop() {
        let path = std::env::temp_dir().join(format!("apex-log-unit-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let (logger, mut logs) = Logger::start(Sink::File(path.clone()), 2).unwrap();
        let t0 = Instant::now();
        logs[0].access(t0, Format::Combined, &entry(b"/first"));
        assert!(logs[0].tick(t0 + Duration::from_millis(LOG_FLUSH_MS)).is_none());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&path).unwrap_or_default().contains("/first") {
            assert!(Instant::now() < deadline, "a shipped chunk was not written within 5 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        // More lines than one chunk holds, fewer than all of a worker's chunks: none dropped,
        // whatever the logger's pace.
        let lines = 2 * CHUNK_BYTES / 150;
        for _ in 0..lines {
            logs[1].access(t0, Format::Json, &entry(b"/many"));
        }
        logs[1].flush();
        assert_eq!((logs[0].dropped, logs[1].dropped), (0, 0));
        logger.stop();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(text.lines().filter(|l| l.contains("/many")).count(), lines);
        assert_eq!(text.lines().count(), lines + 1);
    }

    /// One line for `e`, as the worker writes it: JSON or combined.
    fn render(json_format: bool, e: &Entry) -> String {
        let mut clock = Clock::default();
        clock.update();
        let mut buf = [0u8; 1024];
        let mut w = Out::new(&mut buf);
        if json_format {
            json(&mut w, &clock.iso, e)
        } else {
            combined(&mut w, &clock.clf, e)
        }
        let n = w.finish().unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn lines_are_escaped() {
        let line = render(false, &entry(b"/a\"b\x01"));
        assert!(
            line.contains(
                "\"GET /a\\x22b\\x01 HTTP/1.1\" 200 20 \"-\" \"curl/8\" in=40 out=120 up=127.0.0.1:9000 us=250 end=-\n"
            ),
            "{line}"
        );
        let line = render(true, &entry(b"/\"x"));
        assert!(line.contains("\"target\":\"/\\u0022x\""), "{line}");
        assert!(
            line.ends_with("\"ended_by\":\"-\",\"tls_version\":null,\"tls_cipher\":null,\"tls_group\":null}\n"),
            "{line}"
        );
        assert!(line.contains("\"bytes_out\":120,\"body_bytes\":20,"), "{line}");
    }

    /// TLS fields follow `end=` in a combined line (a request id still ends it), `-` for no
    /// group; in JSON they are strings, or null.
    #[test]
    fn tls_fields_follow_end() {
        let tls = TlsFields { version: "TLSv1.3", cipher: "TLS_AES_128_GCM_SHA256", group: Some("X25519MLKEM768") };
        let e = Entry { request_id: Some(&b"abc"[..]), tls: Some(tls), ..entry(b"/") };
        let l = render(false, &e);
        assert!(l.ends_with(" end=- tls=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256 group=X25519MLKEM768 id=abc\n"), "{l}");
        let l = render(true, &e);
        assert!(l.ends_with(",\"tls_group\":\"X25519MLKEM768\",\"request_id\":\"abc\"}\n"), "{l}");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(
            (&v["tls_version"], &v["tls_cipher"], &v["tls_group"]),
            (&"TLSv1.3".into(), &"TLS_AES_128_GCM_SHA256".into(), &"X25519MLKEM768".into())
        );
        let resumed = TlsFields { version: "TLSv1.2", cipher: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", group: None };
        let e = Entry { tls: Some(resumed), ..entry(b"/") };
        let l = render(false, &e);
        assert!(l.ends_with(" end=- tls=TLSv1.2 cipher=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 group=-\n"), "{l}");
        let l = render(true, &e);
        let want = ",\"tls_version\":\"TLSv1.2\",\"tls_cipher\":\"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\",\"tls_group\":null}\n";
        assert!(l.ends_with(want), "{l}");
    }

    /// A head that did not parse: a well-formed request line is split, anything else kept whole;
    /// the User-Agent is found among the lines before the blank one only.
    #[test]
    fn raw_heads_are_captured_as_far_as_they_go() {
        let mut r = Rec::empty();
        r.capture_raw(b"POST /x HTTP/1.0\r\nHost: a\r\nuser-agent:  ua/1 \r\n\r\nUser-Agent: body");
        assert_eq!((r.method(), r.target(), r.minor, r.agent()), (&b"POST"[..], &b"/x"[..], 0, &b"ua/1"[..]));
        r.capture_raw(b"GET  / HTTP/1.1\nUser-Agent\n\nUser-Agent: late");
        assert_eq!((r.method(), r.target(), r.agent()), (&b""[..], &b"GET  / HTTP/1.1"[..], &b""[..]));
        r.capture_raw(b"");
        assert_eq!((r.method(), r.target()), (&b""[..], &b""[..]));
    }
}
