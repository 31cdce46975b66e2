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
fn upstream(l: TcpListener, accepts: Arc<AtomicUsize>) {
    for s in l.incoming() {
        let Ok(s) = s else { return };
        accepts.fetch_add(1, Relaxed);
        std::thread::spawn(move || {
            let _ = serve_upstream(s);
        });
    }
}

fn serve_upstream(s: TcpStream) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_nodelay(true)?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    static BIG_BODY: [u8; BIG] = [b'x'; BIG];
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let head_only = line.starts_with("HEAD ");
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
        if path == "/chunked" {
            w.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            )?;
        } else if path == "/big" {
            write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n")?;
            w.write_all(&BIG_BODY)?;
        } else {
            let body = format!("got {got}");
            write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())?;
            if !head_only {
                w.write_all(body.as_bytes())?;
            }
        }
    }
}

/// Reads one response; returns (status, body length).
fn read_response(r: &mut BufReader<TcpStream>) -> (u16, usize) {
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

fn connect(addr: std::net::SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

/// One round of the traffic mix; returns the number of requests it made.
fn mix(addr: std::net::SocketAddr, big: bool) -> usize {
    let (mut s, mut r) = connect(addr);
    let mut n = 0;
    for i in 0..40 {
        s.write_all(format!("GET /small/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
        assert_eq!(read_response(&mut r).0, 200);
        s.write_all(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world").unwrap();
        assert_eq!(read_response(&mut r), (200, 6));
        s.write_all(
            b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(read_response(&mut r).0, 200);
        s.write_all(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut r), (200, 11));
        // Pipelined: three heads in one write.
        s.write_all(
            b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\nHEAD /c HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
        assert_eq!(read_response(&mut r).0, 200);
        assert_eq!(read_response(&mut r).0, 200);
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
        s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut r), (200, BIG));
        let body = vec![b'y'; BIG];
        write!(s, "POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {BIG}\r\n\r\n").unwrap();
        s.write_all(&body).unwrap();
        assert_eq!(read_response(&mut r).0, 200);
        n += 2;
    }
    // A request Apex answers itself (no route), keep-alive continues.
    s.write_all(b"GET /x HTTP/1.1\r\nHost: nowhere.test\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).0, 404);
    // A request Apex rejects: 400 and close.
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).0, 400);
    n + 2
}

#[test]
fn keep_alive_traffic_allocates_nothing() {
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = up.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let acc = Arc::clone(&accepts);
    std::thread::spawn(move || upstream(up, acc));

    let text = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n[limits]\nconnections = 64\n\
         [log]\naccess = \"{}\"\n[[route]]\nhost = \"t\"\nupstream = \"app\"\n[upstream.app]\nservers = [\"{up_addr}\"]\n",
        std::env::temp_dir().join(format!("apex-alloc-free-{}.log", std::process::id())).display()
    );
    let cfg = Config::parse(&text, "test").unwrap();
    let (addrs, mut listeners) = apex::reactor::bind_all(&cfg).unwrap();
    let addr = addrs[0];
    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(cfg));
    let log_path = std::env::temp_dir().join(format!("apex-alloc-free-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log_path);
    let (logger, mut logs) = apex::log::Logger::start(apex::log::Sink::File(log_path.clone()), 1).unwrap();
    let mut worker = Worker::new(shared, listeners.remove(0), logs.remove(0)).unwrap();

    let warm = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicUsize::new(0));
    let (w2, d2, r2) = (Arc::clone(&warm), Arc::clone(&done), Arc::clone(&requests));
    let client = std::thread::spawn(move || {
        // Warm-up: every kind of request, on several connections at once, twice.
        for _ in 0..2 {
            let hs: Vec<_> = (0..4).map(|_| std::thread::spawn(move || mix(addr, true))).collect();
            hs.into_iter().for_each(|h| {
                h.join().unwrap();
            });
        }
        w2.store(true, SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        let mut total = 0;
        while total < 10_000 {
            let hs: Vec<_> = (0..4).map(|k| std::thread::spawn(move || mix(addr, k == 0))).collect();
            total += hs.into_iter().map(|h| h.join().unwrap()).sum::<usize>();
        }
        r2.store(total, SeqCst);
        d2.store(true, SeqCst);
    });

    let mut events = mio::Events::with_capacity(1024);
    let start = Instant::now();
    let mut armed = false;
    while !done.load(SeqCst) {
        assert!(start.elapsed() < Duration::from_secs(240), "test took too long");
        if !armed && warm.load(SeqCst) {
            // Let the warm-up connections' closes drain, then count.
            for _ in 0..20 {
                worker.turn(&mut events).unwrap();
            }
            ALLOCS.store(0, SeqCst);
            ARMED.with(|a| a.set(true));
            armed = true;
        }
        worker.turn(&mut events).unwrap();
    }
    ARMED.with(|a| a.set(false));
    client.join().unwrap();
    // The access log saw every request: the allocation-free path includes logging.
    for _ in 0..30 {
        worker.turn_within(&mut events, Duration::from_millis(10)).unwrap();
    }
    drop(worker);
    logger.stop();
    let logged = std::fs::read_to_string(&log_path).unwrap().lines().count();
    let _ = std::fs::remove_file(&log_path);
    let allocs = ALLOCS.load(SeqCst);
    let total = requests.load(SeqCst);
    assert!(total >= 10_000, "only {total} requests measured");
    assert!(logged >= total, "access log has {logged} lines for {total}+ requests");
    assert!(
        accepts.load(SeqCst) < total / 10,
        "upstream connections were not reused: {} accepts",
        accepts.load(SeqCst)
    );
    assert_eq!(allocs, 0, "{allocs} heap allocations ({} bytes) over {total} requests", ALLOC_BYTES.load(SeqCst));
}
