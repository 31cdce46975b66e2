//! Iron law 2, proved: a worker serving keep-alive traffic makes no heap allocation per request.
//!
//! A binary of its own, with a counting global allocator. The worker runs on this test's main
//! thread; the client and the upstream run on other threads, whose allocations are not counted
//! (the counter is armed per thread). After a warm-up that fills the worker's pools, the client
//! drives the measured mix: small GETs, POSTs with Content-Length, chunked requests and chunked
//! responses, pipelined requests, a request Apex rejects itself (400), a 404, a 10 MiB body each
//! way, and new client connections, with the access log on. The test asserts zero allocations
//! in that window, and that the access log got a line per request.
#![allow(unsafe_code)]
// GlobalAlloc needs it
// Test code: a failed unwrap is a failed test, and the test harness may use a Mutex.
#![allow(clippy::disallowed_types, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

use apex::config::Config;
use apex::reactor::Worker;

struct Counting;

thread_local!(static ARMED: Cell<bool> = const { Cell::new(false) });
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ARMED.try_with(Cell::get).unwrap_or(false) {
            ALLOCS.fetch_add(1, Relaxed);
            ALLOC_BYTES.fetch_add(l.size() as u64, Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BIG: usize = 10 << 20;

/// Upstream: answers every request; `/chunked` gets a chunked response, `/big` a 10 MiB body,
/// POSTs are read (CL or chunked) and answered with their length.
fn upstream(l: TcpListener, counts: Arc<UpCounts>, tls: Option<Arc<rustls::ServerConfig>>) {
    for s in l.incoming() {
        let Ok(s) = s else { return };
        counts.accepts.fetch_add(1, Relaxed);
        let tls = tls.clone();
        let counts = Arc::clone(&counts);
        std::thread::spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
            let _ = s.set_nodelay(true);
            let _ = match tls {
                Some(cfg) => {
                    serve_upstream(rustls::StreamOwned::new(rustls::ServerConnection::new(cfg).unwrap(), s), &counts)
                }
                None => serve_upstream(s, &counts),
            };
        });
    }
}

/// What the upstream saw: connections accepted, HEAD requests read.
#[derive(Default)]
struct UpCounts {
    accepts: AtomicUsize,
    heads: AtomicUsize,
    /// Answers `/sick` 503 (the first server only: the second answers it 200).
    sick: bool,
    /// 503s it answered.
    sick_answers: AtomicUsize,
}

fn serve_upstream<S: Read + Write>(s: S, counts: &UpCounts) -> std::io::Result<()> {
    let mut r = BufReader::new(s);
    static BIG_BODY: [u8; BIG] = [b'x'; BIG];
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let head_only = line.starts_with("HEAD ");
        if head_only {
            counts.heads.fetch_add(1, Relaxed);
        }
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        let (mut cl, mut chunked) = (0usize, false);
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            if h == "\r\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                cl = v.trim().parse().unwrap();
            }
            if lower.starts_with("transfer-encoding:") {
                chunked = true;
            }
        }
        let mut got = 0;
        if chunked {
            loop {
                let mut sz = String::new();
                r.read_line(&mut sz)?;
                let n = usize::from_str_radix(sz.trim(), 16).unwrap();
                let mut data = vec![0; n + 2];
                r.read_exact(&mut data)?;
                got += n;
                if n == 0 {
                    break;
                }
            }
        } else {
            let mut left = cl;
            let mut buf = vec![0; 65536];
            while left > 0 {
                let n = r.read(&mut buf[..left.min(65536)])?;
                if n == 0 {
                    return Ok(());
                }
                left -= n;
            }
            got = cl;
        }
        if path == "/sick" && counts.sick {
            counts.sick_answers.fetch_add(1, Relaxed);
            W(&mut r).write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nsick")?;
        } else if path == "/chunked" {
            W(&mut r).write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            )?;
        } else if path == "/big" {
            write!(W(&mut r), "HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n")?;
            W(&mut r).write_all(&BIG_BODY)?;
        } else {
            let body = format!("got {got}");
            write!(W(&mut r), "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())?;
            if !head_only {
                W(&mut r).write_all(body.as_bytes())?;
            }
        }
    }
}

/// Reads one response; returns (status, body length).
fn read_response<S: Read>(r: &mut BufReader<S>) -> (u16, usize) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let (mut cl, mut chunked) = (0usize, false);
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            cl = v.trim().parse().unwrap();
        }
        if lower.starts_with("transfer-encoding:") {
            chunked = true;
        }
    }
    if chunked {
        let mut total = 0;
        loop {
            let mut sz = String::new();
            r.read_line(&mut sz).unwrap();
            let n = usize::from_str_radix(sz.trim(), 16).unwrap();
            let mut data = vec![0; n + 2];
            r.read_exact(&mut data).unwrap();
            total += n;
            if n == 0 {
                return (status, total);
            }
        }
    }
    let mut body = vec![0; cl];
    r.read_exact(&mut body).unwrap();
    (status, cl)
}

fn connect(addr: std::net::SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    BufReader::new(s)
}

/// Writes on the stream under a `BufReader` (a TLS stream cannot be cloned into two halves).
struct W<'a, S>(&'a mut BufReader<S>);

impl<S: Write> Write for W<'_, S> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.get_mut().write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.get_mut().flush()
    }
}

/// One round of the traffic mix on a new connection; returns the number of requests it made.
fn mix(addr: std::net::SocketAddr, big: bool) -> usize {
    let mut r = connect(addr);
    let n = requests(&mut r, big);
    n + reject(&mut r)
}

/// The keep-alive part of the mix on an open connection; returns the number of requests made.
fn requests<S: Read + Write>(r: &mut BufReader<S>, big: bool) -> usize {
    let mut n = 0;
    for i in 0..40 {
        W(r).write_all(format!("GET /small/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
        assert_eq!(read_response(r).0, 200);
        W(r).write_all(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world").unwrap();
        assert_eq!(read_response(r), (200, 6));
        W(r).write_all(
            b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(read_response(r).0, 200);
        W(r).write_all(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(r), (200, 11));
        // Pipelined: three heads in one write.
        W(r).write_all(
            b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\nHEAD /c HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
        assert_eq!(read_response(r).0, 200);
        assert_eq!(read_response(r).0, 200);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"));
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        n += 7;
    }
    if big {
        W(r).write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(r), (200, BIG));
        let body = vec![b'y'; BIG];
        write!(W(r), "POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {BIG}\r\n\r\n").unwrap();
        W(r).write_all(&body).unwrap();
        assert_eq!(read_response(r).0, 200);
        n += 2;
    }
    // A request Apex answers itself (no route), keep-alive continues.
    W(r).write_all(b"GET /x HTTP/1.1\r\nHost: nowhere.test\r\n\r\n").unwrap();
    assert_eq!(read_response(r).0, 404);
    n + 1
}

/// A request Apex rejects: 400 and close.
fn reject<S: Read + Write>(r: &mut BufReader<S>) -> usize {
    W(r).write_all(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n").unwrap();
    assert_eq!(read_response(r).0, 400);
    1
}

struct Outcome {
    allocs: u64,
    bytes: u64,
    requests: usize,
    logged: usize,
    /// Of those lines, the ones with a TLS connection's fields (TLSv1.2 or TLSv1.3).
    logged_tls: usize,
    upstream_accepts: usize,
    upstream_heads: usize,
    upstream_503s: usize,
    /// Requests the worker's counters saw in the measured window, and scrapes taken meanwhile.
    counted: u64,
    scrapes: usize,
}

/// Requests counted by a worker's metrics, every route and status class.
fn counted(m: &apex::metrics::WorkerMetrics) -> u64 {
    m.routes.iter().flat_map(|r| r.requests.iter()).map(apex::metrics::Counter::get).sum()
}

/// Runs one worker on this thread for `text` (plus an access log) while `client` runs on its own
/// thread with the bound addresses. `client` calls `warm()` once its warm-up is over, and gets
/// back when counting has started; it returns the requests it made after that. Allocations on
/// this thread are counted from then until `client` returns.
fn run(
    text: &str,
    upstream_tls: Option<Arc<rustls::ServerConfig>>,
    client: impl FnOnce(Vec<std::net::SocketAddr>, &dyn Fn()) -> usize + Send + 'static,
) -> Outcome {
    run_with("", text, upstream_tls, client)
}

/// `run` with `log` (TOML lines) added to the `[log]` table.
fn run_with(
    log: &str,
    text: &str,
    upstream_tls: Option<Arc<rustls::ServerConfig>>,
    client: impl FnOnce(Vec<std::net::SocketAddr>, &dyn Fn()) -> usize + Send + 'static,
) -> Outcome {
    // The counter is global: one measured worker at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = up.local_addr().unwrap();
    let counts = Arc::new(UpCounts { sick: true, ..UpCounts::default() });
    let up_counts = Arc::clone(&counts);
    std::thread::spawn(move || upstream(up, up_counts, upstream_tls));
    // A second server, for a group that retries (`{UP}` and `{UP2}` in `text`).
    let up2 = TcpListener::bind("127.0.0.1:0").unwrap();
    let up2_addr = up2.local_addr().unwrap();
    std::thread::spawn(move || upstream(up2, Arc::new(UpCounts::default()), None));
    let text = text.replace("{UP}", &up_addr.to_string()).replace("{UP2}", &up2_addr.to_string());
    let text = text.as_str();
    let log_path = std::env::temp_dir().join(format!("apex-alloc-free-{}-{}.log", std::process::id(), text.len()));
    // Top-level keys first: what comes before a line `---` in `text`.
    let (top, text) = text.split_once("\n---\n").unwrap_or(("", text));
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n{top}\n[limits]\nconnections = 64\n\
         [log]\naccess = \"{}\"\n{log}\n[[route]]\nhost = \"t\"\nupstream = \"app\"\n[upstream.app]\nservers = [\"{up_addr}\"]\n{text}",
        log_path.display()
    );
    let cfg = Config::parse(&text, "test").unwrap();
    let (addrs, mut listeners) = apex::reactor::bind_all(&cfg).unwrap();
    let mut cfg = cfg;
    let labels = apex::metrics::Labels::new();
    labels.assign(&mut cfg);
    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(cfg));
    let config = Arc::clone(&shared);
    let _ = std::fs::remove_file(&log_path);
    let (logger, mut logs) = apex::log::Logger::start(apex::log::Sink::File(log_path.clone()), 1).unwrap();
    let mut worker = Worker::new(shared, listeners.remove(0), logs.remove(0)).unwrap();
    // Metrics are always counted; an admin thread scrapes them all through the window, as
    // Prometheus would (its allocations are its own thread's, not counted).
    let metrics = worker.metrics();
    let admin = Arc::new(apex::admin::Shared {
        workers: vec![Arc::clone(&metrics)],
        labels,
        config,
        path: "test".into(),
        drain: Arc::new(AtomicBool::new(false)),
        started: Instant::now(),
        started_unix: 0,
        reloads: Default::default(),
        generation: apex::metrics::Counter::new(),
        last_reload: arc_swap::ArcSwap::from_pointee(apex::admin::Reload::default()),
    });

    let warm = Arc::new(AtomicBool::new(false));
    let armed_flag = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicUsize::new(0));
    let (w2, a2, d2, r2) = (Arc::clone(&warm), Arc::clone(&armed_flag), Arc::clone(&done), Arc::clone(&requests));
    let client = std::thread::spawn(move || {
        let warmed = move || {
            w2.store(true, SeqCst);
            while !a2.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let total = client(addrs, &warmed);
        r2.store(total, SeqCst);
        d2.store(true, SeqCst);
    });

    let (a3, d3) = (Arc::clone(&armed_flag), Arc::clone(&done));
    let scraper = std::thread::spawn(move || {
        let mut scrapes = 0;
        while !d3.load(SeqCst) {
            if a3.load(SeqCst) {
                let text = apex::metrics::render::render(&admin, scrapes % 2 == 1);
                assert!(text.contains("apex_requests_total{route=\"t/\",upstream=\"app\",class=\"2xx\"}"), "{text}");
                scrapes += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        scrapes
    });
    let mut events = apex::reactor::Events::new();
    let start = Instant::now();
    let mut armed = false;
    let mut before = 0;
    while !done.load(SeqCst) {
        assert!(start.elapsed() < Duration::from_secs(240), "test took too long");
        if !armed && warm.load(SeqCst) {
            // Let the warm-up connections' closes drain, then count.
            for _ in 0..20 {
                worker.turn_within(&mut events, Duration::from_millis(1)).unwrap();
            }
            before = counted(&metrics);
            ALLOCS.store(0, SeqCst);
            ALLOC_BYTES.store(0, SeqCst);
            ARMED.with(|a| a.set(true));
            armed = true;
            armed_flag.store(true, SeqCst);
        }
        worker.turn_within(&mut events, Duration::from_millis(5)).unwrap();
    }
    ARMED.with(|a| a.set(false));
    let allocs = (ALLOCS.load(SeqCst), ALLOC_BYTES.load(SeqCst));
    client.join().unwrap();
    let scrapes = scraper.join().unwrap();
    // The access log saw every request: the allocation-free path includes logging.
    for _ in 0..30 {
        worker.turn_within(&mut events, Duration::from_millis(10)).unwrap();
    }
    let after = counted(&metrics);
    drop(worker);
    logger.stop();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let logged = log.lines().count();
    let logged_tls =
        log.lines().filter(|l| l.contains(" tls=TLSv1.") || l.contains("\"tls_version\":\"TLSv1.")).count();
    let _ = std::fs::remove_file(&log_path);
    Outcome {
        allocs: allocs.0,
        bytes: allocs.1,
        requests: requests.load(SeqCst),
        logged,
        logged_tls,
        upstream_accepts: counts.accepts.load(SeqCst),
        upstream_heads: counts.heads.load(SeqCst),
        upstream_503s: counts.sick_answers.load(SeqCst),
        counted: after - before,
        scrapes,
    }
}

fn check(o: &Outcome) {
    let total = o.requests;
    assert!(total >= 10_000, "only {total} requests measured");
    assert!(o.logged >= total, "access log has {} lines for {total}+ requests", o.logged);
    assert!(o.counted >= total as u64, "the metrics counted {} requests of {total}+", o.counted);
    assert!(o.scrapes > 0, "nothing scraped the metrics while the worker served");
    // A connection that answered a HEAD is reset, not pooled (conn/body.rs, finish_exchange), and
    // one whose 503 is retried elsewhere is let go (conn/connect.rs, retry): each may cost one;
    // every other exchange reuses pooled connections.
    let (accepts, heads, retried) = (o.upstream_accepts, o.upstream_heads, o.upstream_503s);
    assert!(heads > 0, "the mix has HEADs");
    assert!(
        accepts.saturating_sub(heads + retried) < total / 10,
        "upstream connections were not reused: {accepts} accepts, {heads} of them possibly after a HEAD, \
         {retried} after a 503"
    );
    assert_eq!(o.allocs, 0, "{} heap allocations ({} bytes) over {total} requests", o.allocs, o.bytes);
}

/// `check`, for TLS clients only: every line also has the connection's TLS fields.
fn check_tls(o: &Outcome) {
    check(o);
    assert!(
        o.logged_tls >= o.requests,
        "{} access-log lines with TLS fields for {}+ requests",
        o.logged_tls,
        o.requests
    );
}

#[test]
fn keep_alive_traffic_allocates_nothing() {
    check(&run("", None, keep_alive_mix));
}

/// The other balancing policies pick (and hash each request's key) without allocating.
#[test]
fn hashed_and_least_requests_traffic_allocates_nothing() {
    check(&run("balance = \"hash\"\nhash_on = \"header:host\"\nfail_after = 2", None, keep_alive_mix));
    check(&run("balance = \"least_requests\"", None, keep_alive_mix));
}

/// Behind a trusted PROXY protocol sender: each new connection starts with a header (v1 or v2,
/// alternating) naming another client; taking it, and judging a route's allow/deny on its
/// address, allocates nothing.
#[test]
fn proxied_traffic_allocates_nothing() {
    // The small GETs go through a route with address rules, judged on the header's address.
    let text = "[proxy_protocol]\nlisteners = [\"127.0.0.1:0\"]\ntrusted = [\"127.0.0.0/8\"]\n\
                [[route]]\nhost = \"t\"\npath = \"/small\"\nupstream = \"app\"\n\
                allow = [\"198.51.100.0/24\", \"2001:db8::/32\"]\ndeny = [\"10.0.0.0/8\", \"203.0.113.0/24\"]\n";
    check(&run(text, None, |addrs, warmed| {
        let addr = addrs[0];
        let round = move |k: u8, big: bool| {
            let mut r = connect(addr);
            let src = std::net::SocketAddr::from(([198, 51, 100, k], 1000 + u16::from(k)));
            let mut h = [0u8; 108];
            let n = apex::proxy_proto::write(k.is_multiple_of(2), src, addr, &mut h).unwrap();
            W(&mut r).write_all(&h[..n]).unwrap();
            requests(&mut r, big) + reject(&mut r)
        };
        rounds(round, warmed)
    }));
}

/// A route's rules and request ids: the small GETs go through a rewrite and header rules both
/// ways whose values name every header variable, with X-Request-Id made for each request,
/// forwarded, returned and logged; the pipelined `GET /a` is answered by Apex itself
/// (`respond`, with the route's response rules).
#[test]
fn rules_and_request_ids_allocate_nothing() {
    let text = "[[route]]\nhost = \"t\"\npath = \"/small\"\nupstream = \"app\"\n\
                rewrite = { prefix = \"/small\", to = \"/tiny\" }\n\
                request_headers = { set = { \"X-Client\" = \"$client_ip\", \"X-Id\" = \"$request_id\", \"User-Agent\" = \"apex ${host}\" }, \
                add = { \"X-Via\" = \"apex $scheme\" }, remove = [\"Accept\"] }\n\
                response_headers = { set = { \"Strict-Transport-Security\" = \"max-age=63072000\" }, add = { \"X-Trace\" = \"$request_id\" } }\n\
                [[route]]\nhost = \"t\"\npath = \"/a\"\nrespond = { status = 200, body = \"a\" }\n\
                response_headers = { set = { \"Cache-Control\" = \"no-store\" } }\n";
    check(&run_with("request_id = true", text, None, keep_alive_mix));
}

/// Behind a trusted proxy: each request's X-Forwarded-For names the client (a walk over a
/// chain, trusted hops skipped), which a route's allow list and rate limit judge; over the
/// rate, Apex answers 429 itself. None of it allocates.
#[test]
fn rate_limited_traffic_behind_trusted_proxies_allocates_nothing() {
    let text = "trusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n---\n\
                [[route]]\nhost = \"t\"\npath = \"/small\"\nupstream = \"app\"\n\
                allow = [\"198.51.100.0/24\", \"127.0.0.0/8\"]\nrate = \"1000000/s\"\nburst = 1000000\n\
                [[route]]\nhost = \"t\"\npath = \"/limited\"\nupstream = \"app\"\nrate = \"1/m\"\nburst = 1\n";
    check(&run(text, None, |addrs, warmed| {
        let addr = addrs[0];
        let round = move |k: u8, big: bool| {
            let mut r = connect(addr);
            let mut n = 0;
            for i in 0..40u8 {
                let xff = format!("X-Forwarded-For: 203.0.113.1, 198.51.100.{k}\r\nX-Forwarded-For: 10.0.0.{i}");
                W(&mut r).write_all(format!("GET /small/{i} HTTP/1.1\r\nHost: t\r\n{xff}\r\n\r\n").as_bytes()).unwrap();
                assert_eq!(read_response(&mut r).0, 200);
                W(&mut r).write_all(format!("GET /limited HTTP/1.1\r\nHost: t\r\n{xff}\r\n\r\n").as_bytes()).unwrap();
                let status = read_response(&mut r).0;
                assert!(status == 200 || status == 429, "{status}");
                n += 2;
            }
            n + requests(&mut r, big) + reject(&mut r)
        };
        rounds(round, warmed)
    }));
}

/// A route whose 503s are retried on the group's other server (`retry`, with its budget), in a
/// group with `slow_start`: the retry (the failed connection let go, the head rewound, the
/// next pick, a fresh connection) allocates nothing.
#[test]
fn retried_requests_allocate_nothing() {
    let text = "[[route]]\nhost = \"t\"\npath = \"/sick\"\nupstream = \"pair\"\n\
                retry = { attempts = 2, on = [\"reset\", \"503\"] }\n\
                [upstream.pair]\nservers = [\"{UP}\", \"{UP2}\"]\nslow_start = \"10s\"\n";
    check(&run(text, None, |addrs, warmed| {
        let addr = addrs[0];
        let round = move |_: u8, big: bool| {
            let mut r = connect(addr);
            for _ in 0..40 {
                W(&mut r).write_all(b"GET /sick HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
                // 503 only when the budget (3 retries in flight at this load) refused.
                let status = read_response(&mut r).0;
                assert!(status == 200 || status == 503, "{status}");
            }
            40 + requests(&mut r, big)
        };
        rounds(round, warmed)
    }));
}

fn keep_alive_mix(addrs: Vec<std::net::SocketAddr>, warmed: &dyn Fn()) -> usize {
    let addr = addrs[0];
    rounds(move |_, big| mix(addr, big), warmed)
}

/// The client side's driver: `round(k, big)` runs one connection's requests (`k` numbers the
/// round, `big` adds the 10 MiB bodies) and returns how many. Warm-up: every kind of request,
/// four rounds at once, twice; then `warmed()`, and four rounds at once (the first of them
/// big) until 10,000 requests are measured. Returns the requests measured.
fn rounds(round: impl Fn(u8, bool) -> usize + Copy + Send + 'static, warmed: &dyn Fn()) -> usize {
    for _ in 0..2 {
        let hs: Vec<_> = (0..4u8).map(|k| std::thread::spawn(move || round(k, true))).collect();
        hs.into_iter().for_each(|h| {
            h.join().unwrap();
        });
    }
    warmed();
    std::thread::sleep(Duration::from_millis(50));
    let mut total = 0;
    let mut k = 0u8;
    while total < 10_000 {
        let hs: Vec<_> = (0..4u8).map(|i| std::thread::spawn(move || round(k.wrapping_add(i), i == 0))).collect();
        total += hs.into_iter().map(|h| h.join().unwrap()).sum::<usize>();
        k = k.wrapping_add(4);
    }
    total
}

/// A self-signed certificate for `t`, written to `dir`: (PEM chain path, key path, DER).
fn cert_for_t(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, rustls::pki_types::CertificateDer<'static>) {
    std::fs::create_dir_all(dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["t".to_string()]).unwrap();
    let (chain, key) = (dir.join("t.pem"), dir.join("t.key"));
    std::fs::write(&chain, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (chain, key, ck.cert.der().clone())
}

/// The TLS clients' part: four keep-alive connections (1.3 AES-GCM, 1.3 ChaCha20, 1.2 AES-GCM,
/// 1.2 ChaCha20), handshakes and warm-up at once, then ten rounds of the mix each at once.
fn tls_clients(
    addr: std::net::SocketAddr,
    der: rustls::pki_types::CertificateDer<'static>,
    warmed: &dyn Fn(),
) -> usize {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    // Apex's own groups: X25519MLKEM768 first, so the TLS 1.3 connections negotiate the hybrid
    // (checked below); TLS 1.2 ones get X25519 (the hybrid is TLS 1.3 only).
    let provider = Arc::new(apex::tls::kx::provider(&apex::tls::kx::DEFAULT));
    use rustls::crypto::ring::cipher_suite as cs;
    let kinds = [
        (&rustls::version::TLS13, cs::TLS13_AES_128_GCM_SHA256),
        (&rustls::version::TLS13, cs::TLS13_CHACHA20_POLY1305_SHA256),
        (&rustls::version::TLS12, cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        (&rustls::version::TLS12, cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ];
    // One thread per connection; all warm up at once (the record-buffer pool grows to the
    // number of connections busy at the same time, once), then all are measured at once.
    let ready = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = kinds
        .iter()
        .enumerate()
        .map(|(k, &(v, suite))| {
            let mut p = rustls::crypto::CryptoProvider::clone(&provider);
            p.cipher_suites = vec![suite];
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(p))
                .with_protocol_versions(&[v])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            let (ready, go) = (Arc::clone(&ready), Arc::clone(&go));
            std::thread::spawn(move || {
                let cfg = Arc::new(cfg);
                let open = || {
                    let name = rustls::pki_types::ServerName::try_from("t").unwrap();
                    let c = rustls::ClientConnection::new(Arc::clone(&cfg), name).unwrap();
                    BufReader::new(rustls::StreamOwned::new(c, connect(addr).into_inner()))
                };
                // Warm-up covers the measured window's whole mix, the 400-and-close (with its
                // close_notify) included, on a connection of its own.
                let mut first = open();
                requests(&mut first, true);
                reject(&mut first);
                let mut r = open();
                for _ in 0..2 {
                    requests(&mut r, true); // the handshake happens here
                }
                // (TLS 1.2 connections resume the first one's session: no key exchange there.)
                if v.version == rustls::ProtocolVersion::TLSv1_3 {
                    let group = r.get_ref().conn.negotiated_key_exchange_group().map(|g| g.name());
                    assert_eq!(group, Some(rustls::NamedGroup::X25519MLKEM768));
                }
                ready.fetch_add(1, SeqCst);
                while !go.load(SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let mut n = 0;
                for _ in 0..10 {
                    n += requests(&mut r, k == 0);
                }
                n + reject(&mut r)
            })
        })
        .collect();
    while ready.load(SeqCst) < kinds.len() {
        std::thread::sleep(Duration::from_millis(1));
    }
    warmed();
    go.store(true, SeqCst);
    hs.into_iter().map(|h| h.join().unwrap()).sum()
}

/// The TLS listener section for `t`'s certificate.
fn tls_listener(chain: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "[tls]\nlisten = [\"127.0.0.1:0\"]\n[[tls.cert]]\nchain = \"{}\"\nkey = \"{}\"\nnames = [\"t\"]\n",
        chain.display(),
        key.display()
    )
}

/// The same mix over TLS keep-alive connections (TLS 1.3 and 1.2, AES-GCM and ChaCha20): after
/// the handshake, a request allocates nothing either. The handshakes happen in the warm-up;
/// a handshake allocates (rustls builds its state on the heap), a request does not.
#[test]
fn tls_keep_alive_traffic_allocates_nothing() {
    let dir = std::env::temp_dir().join(format!("apex-alloc-free-tls-{}", std::process::id()));
    let (chain, key, der) = cert_for_t(&dir);
    let o = run(&tls_listener(&chain, &key), None, move |addrs, warmed| tls_clients(addrs[1], der, warmed));
    let _ = std::fs::remove_dir_all(&dir);
    check_tls(&o);
}

/// TLS on both sides: TLS clients, and an upstream group over TLS (tls_name, tls_ca). The
/// upstream connections' handshakes happen in the warm-up too; pooled, they are reused.
#[test]
fn tls_to_a_tls_upstream_allocates_nothing() {
    let dir = std::env::temp_dir().join(format!("apex-alloc-free-tls-up-{}", std::process::id()));
    let (chain, key, der) = cert_for_t(&dir);
    let certs = vec![der.clone()];
    let pk = rustls::pki_types::PrivateKeyDer::try_from(
        std::fs::read(&key)
            .map(|pem| {
                use rustls::pki_types::pem::PemObject;
                rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem).unwrap().secret_der().to_vec()
            })
            .unwrap(),
    )
    .unwrap();
    // An origin that has only X25519MLKEM768 (so TLS 1.3 only): Apex's upstream connections
    // can only be made, and pooled, with the hybrid negotiated.
    let groups = [apex::tls::kx::X25519MLKEM768];
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(apex::tls::kx::provider(&groups)))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, pk)
        .unwrap();
    // The group's TLS lines go into [upstream.app], which `run` writes last before this text.
    let text =
        format!("tls = true\ntls_name = \"t\"\ntls_ca = \"{}\"\n{}", chain.display(), tls_listener(&chain, &key));
    // The access log in JSON here (the other TLS cases write combined lines): its TLS fields
    // cost no allocation either.
    let o = run_with("format = \"json\"", &text, Some(Arc::new(server)), move |addrs, warmed| {
        tls_clients(addrs[1], der, warmed)
    });
    let _ = std::fs::remove_dir_all(&dir);
    check_tls(&o);
}

/// `[tls.acme]` configured beside the `[[tls.cert]]` (the resolver then also asks the ACME
/// snapshot, and offers acme-tls/1 last in ALPN): after the handshake, requests still allocate
/// nothing. The ACME thread is not started here (`server::run` starts it), so nothing is ordered.
#[test]
fn tls_with_acme_configured_allocates_nothing() {
    let dir = std::env::temp_dir().join(format!("apex-alloc-free-acme-{}", std::process::id()));
    let (chain, key, der) = cert_for_t(&dir);
    let text = format!(
        "{}[tls.acme]\nnames = [\"acme.test\"]\ndirectory = \"https://127.0.0.1:9/dir\"\nstate = \"{}\"\n",
        tls_listener(&chain, &key),
        dir.join("acme").display()
    );
    let o = run(&text, None, move |addrs, warmed| tls_clients(addrs[1], der, warmed));
    let _ = std::fs::remove_dir_all(&dir);
    check_tls(&o);
}
