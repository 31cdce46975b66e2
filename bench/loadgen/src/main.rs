//! loadgen: the load generator of Apex's benchmark harness (bench/run). Linux only.
//!
//! Modes (each prints one JSON object on stdout, `idle` prints two):
//!   rate  --addr A --rate R --conns C --duration S [--warmup S] [--path P] [--drain S] [--tls SNI]
//!         Open loop: request n is due at t0 + n/R and goes to connection n % C. A connection
//!         sends its next request when it is due and the previous response is complete (no
//!         pipelining). Latency counts from the due time, not the send time, so a stalled
//!         server is charged for every request it delayed (no coordinated omission).
//!         With --tls, every connection speaks TLS (rustls, ring; server name SNI); the
//!         handshakes are done before the schedule starts.
//!   handshakes --addr A --conns C --duration S [--sni NAME] [--path P] [--resume 1] [--verify 1]
//!              [--groups classical|pq]
//!         New TLS connections, C at a time: each connects, does a full handshake, sends one
//!         GET with `Connection: close`, reads the response and waits for the server to close
//!         (at most 1 s), then its slot opens the next one, until S seconds have passed.
//!         Session resumption is off (no tickets or session ids kept) unless --resume 1.
//!         The server's certificate is not checked, nor (unless --verify 1) its handshake
//!         signature: the client's share of the work stays small. Reports completed
//!         exchanges per second as "rps" (one handshake each). --groups pq offers Apex's
//!         default groups (X25519MLKEM768 first); classical (the default) rustls's ring ones.
//!   idle  --addr A --conns N [--inflight K] [--hold S] [--path P]
//!         Opens N keep-alive connections (at most K connecting or waiting at once), sends
//!         one request on each, keeps them all open and idle, prints {"ready":..}, holds for
//!         S seconds (or until stdin closes), then prints how many the server closed.
//!   get   --addr A --path P                 one download; bytes, seconds, MB/s
//!   put   --addr A --path P --bytes N       one upload of N zero bytes (Content-Length)
//!   seq   --addr A --requests N [--warmup W] [--path P] [--body B] [--tls SNI]
//!         Closed loop on one keep-alive connection, in phases driven by stdin, for counting
//!         (bench/profile): W requests, {"phase":"warm"}, wait for a line, N requests,
//!         {"phase":"done"}, wait for stdin to close. --body B: POST with B bytes.
//!
//! Cost: one thread, edge-triggered epoll via mio, a timerfd for the schedule (timer slack
//! lowered to 5 us), one latency sample (u64 ns) per request, sorted once at the end.
//!
//! Layout: one module per mode (rate, handshakes, idle, transfer for get/put, seq), plus the shared
//! pieces: http (response reader, read buffer), net (timerfd, plain and TLS sockets), stats.

mod handshakes;
/// Apex's key exchange groups: the same source file, so `--groups pq` is Apex's own hybrid.
#[path = "../../../src/tls/kx.rs"]
#[allow(dead_code)]
mod kx;
mod http;
mod idle;
mod net;
mod rate;
mod seq;
mod stats;
mod transfer;

use std::io;
use std::net::SocketAddr;

use mio::Token;

pub(crate) const TIMER: Token = Token(usize::MAX - 1);
pub(crate) const STDIN: Token = Token(usize::MAX - 2);
pub(crate) const RBUF_BYTES: usize = 64 * 1024;
pub(crate) const HEAD_BYTES_MAX: usize = 32 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(mode) = args.get(1).cloned() else {
        eprintln!("usage: loadgen rate|handshakes|idle|get|put|seq --addr HOST:PORT ...");
        std::process::exit(2);
    };
    let opts = Opts::parse(&args[2..]);
    let res = match mode.as_str() {
        "rate" => rate::rate(&opts),
        "handshakes" => handshakes::handshakes(&opts),
        "idle" => idle::idle(&opts),
        "get" => transfer::get(&opts),
        "put" => transfer::put(&opts),
        "seq" => seq::seq(&opts),
        _ => Err(io::Error::other(format!("unknown mode {mode}"))),
    };
    if let Err(e) = res {
        eprintln!("loadgen {mode}: {e}");
        std::process::exit(1);
    }
}

pub(crate) struct Opts(Vec<(String, String)>);

impl Opts {
    pub(crate) fn parse(a: &[String]) -> Opts {
        let mut v = Vec::new();
        let mut i = 0;
        while i < a.len() {
            let k = a[i].trim_start_matches('-').to_string();
            let val = a.get(i + 1).cloned().unwrap_or_default();
            v.push((k, val));
            i += 2;
        }
        Opts(v)
    }
    pub(crate) fn str(&self, k: &str, d: &str) -> String {
        self.0.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone()).unwrap_or_else(|| d.to_string())
    }
    pub(crate) fn f64(&self, k: &str, d: f64) -> f64 {
        self.str(k, "").parse().unwrap_or(d)
    }
    pub(crate) fn addr(&self) -> io::Result<SocketAddr> {
        self.str("addr", "127.0.0.1:8080").parse().map_err(|e| io::Error::other(format!("--addr: {e}")))
    }
}
