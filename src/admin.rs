//! The admin listener (`[admin] listen`): `/metrics`, `/status` and `/healthz`, served by a
//! plain thread of its own with blocking std sockets, never by a worker.
//!
//! Hostile input is bounded as on the public listeners: one connection at a time, a head of at
//! most `ADMIN_HEAD_BYTES` read within `ADMIN_TIMEOUT` (else 431 or 408), parsed by the same
//! h1 parser the workers use (`parse_request`: anything it refuses gets 400), one response,
//! then the connection closes. Only GET and HEAD are served (RFC 9110 §9.1: others get 405 with
//! `Allow`). A slow or stuck client holds the listener for `ADMIN_TIMEOUT` at most.
//!
//! What the admin thread reads: every worker's counters (`WorkerMetrics`, relaxed atomics), the
//! label slots and the reload facts (`ArcSwap`s written by the main thread), the config snapshot
//! and the drain flag. Nothing it does can block a worker.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::metrics::{Counter, Labels, WorkerMetrics};

/// The largest request head the admin listener reads.
pub const ADMIN_HEAD_BYTES: usize = 8 * 1024;
/// How long one client may take to send its head and read the answer.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
const ADMIN_HEADERS_MAX: usize = 32;

/// The last config load or reload.
#[derive(Debug, Clone, Default)]
pub struct Reload {
    /// Unix seconds.
    pub at: u64,
    /// "ok", "failed" or "refused".
    pub result: &'static str,
    pub error: Option<String>,
}

/// What the admin thread reads; the main thread owns the writes.
pub struct Shared {
    pub workers: Vec<Arc<WorkerMetrics>>,
    pub labels: Labels,
    pub config: Arc<ArcSwap<Config>>,
    pub path: PathBuf,
    pub drain: Arc<AtomicBool>,
    pub started: Instant,
    pub started_unix: u64,
    /// Reloads: [ok, failed, refused] (main thread only).
    pub reloads: [Counter; 3],
    pub generation: Counter,
    pub last_reload: ArcSwap<Reload>,
}

impl Shared {
    pub fn draining(&self) -> bool {
        self.drain.load(Ordering::Relaxed)
    }

    /// A reload's outcome (main thread).
    pub fn reloaded(&self, result: &'static str, error: Option<String>) {
        let i = match result {
            "ok" => 0,
            "failed" => 1,
            _ => 2,
        };
        if let Some(c) = self.reloads.get(i) {
            c.inc();
        }
        if result == "ok" {
            self.generation.inc();
        }
        self.last_reload.store(Arc::new(Reload { at: crate::metrics::unix_now().0, result, error }));
    }
}

/// Binds the admin address; a warning if it is not loopback (the endpoints are unauthenticated).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        crate::log::say(
            crate::log::Level::Warn,
            format_args!(
                "admin.listen = {addr} is not a loopback address: /metrics and /status are served to anyone who can reach it, without authentication"
            ),
        );
    }
    // SO_REUSEPORT, so that the new process of a binary upgrade can bind it while the old
    // one still serves; the old one stops accepting on it when it hands over.
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(16)?;
    Ok(s.into())
}

/// Serves the admin listener until `stop` is set. Checks `stop` at least every 200 ms.
pub fn serve(l: TcpListener, sh: Arc<Shared>, stop: Arc<AtomicBool>) {
    let _ = l.set_nonblocking(true);
    let mut arena = bumpalo::Bump::with_capacity(16 * 1024);
    arena.set_allocation_limit(Some(64 * 1024));
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = one(s, &sh, &mut arena);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let fd = rustix::event::PollFd::new(&l, rustix::event::PollFlags::IN);
                let t = rustix::time::Timespec { tv_sec: 0, tv_nsec: 200_000_000 };
                let _ = rustix::event::poll(&mut [fd], Some(&t));
            }
            // EMFILE and the like: back off rather than spin.
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// One request, one response, close.
fn one(mut s: TcpStream, sh: &Shared, arena: &mut bumpalo::Bump) -> io::Result<()> {
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    let _ = s.set_nodelay(true);
    s.set_write_timeout(Some(ADMIN_TIMEOUT))?;
    let mut buf = vec![0u8; ADMIN_HEAD_BYTES];
    let mut len = 0;
    let mut scan = 0;
    let end = loop {
        let head = buf.get(..len).unwrap_or(&[]);
        match crate::h1::find_head_end(head, &mut scan) {
            Ok(Some(end)) => break end,
            Ok(None) => {}
            Err(_) => return answer(&mut s, 400, "text/plain", b"bad request\n", false),
        }
        if len >= buf.len() {
            return answer(&mut s, 431, "text/plain", b"request head too large\n", false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return answer(&mut s, 408, "text/plain", b"request timeout\n", false);
        }
        s.set_read_timeout(Some(left))?;
        let spare = buf.get_mut(len..).unwrap_or(&mut []);
        match s.read(spare) {
            Ok(0) => return Ok(()),
            Ok(n) => len += n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return answer(&mut s, 408, "text/plain", b"request timeout\n", false);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    arena.reset();
    let head = buf.get(..end).unwrap_or(&[]);
    let req = match crate::h1::head::parse_request(head, arena, ADMIN_HEADERS_MAX) {
        Ok(r) => r,
        Err(e) => {
            let status = e.status();
            return answer(&mut s, status, "text/plain", format!("{}\n", e.as_str()).as_bytes(), false);
        }
    };
    let is_head = req.method == "HEAD";
    if req.method != "GET" && !is_head {
        return answer(&mut s, 405, "text/plain", b"only GET and HEAD\n", false);
    }
    let path = req.path.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            // RFC 9110 §12.5.1: OpenMetrics only for a scraper that lists it in Accept.
            const OM: &[u8] = b"application/openmetrics-text";
            let om = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("accept") && h.value.windows(OM.len()).any(|w| w.eq_ignore_ascii_case(OM))
            });
            let body = crate::metrics::render::render(sh, om);
            let ctype = if om {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            answer(&mut s, 200, ctype, body.as_bytes(), is_head)
        }
        "/healthz" => {
            if sh.draining() {
                answer(&mut s, 503, "text/plain", b"draining\n", is_head)
            } else {
                answer(&mut s, 200, "text/plain", b"ok\n", is_head)
            }
        }
        "/status" => {
            let body = crate::status::render(sh);
            answer(&mut s, 200, "application/json", body.as_bytes(), is_head)
        }
        _ => answer(&mut s, 404, "text/plain", b"not found: try /metrics, /status or /healthz\n", is_head),
    }
}

fn answer(s: &mut TcpStream, status: u16, ctype: &str, body: &[u8], is_head: bool) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let allow = if status == 405 { "Allow: GET, HEAD\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    if !is_head {
        s.write_all(body)?;
    }
    // The whole answer is out; what the client still sends is read and dropped for a short,
    // bounded while, so that it gets our FIN and reads the answer rather than a reset.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    let until = Instant::now() + Duration::from_millis(200);
    for _ in 0..64 {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match s.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    Ok(())
}
