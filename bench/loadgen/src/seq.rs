//! `seq`: a closed loop on one keep-alive connection, for counting (bench/profile).
//!
//! One blocking connection (plain, or TLS with --tls SNI) sends one request, reads the whole
//! response, and sends the next: the server sees the same sequence of events for every
//! request, so counts per request (instructions, syscalls) do not depend on timing.
//! Phases, so that the counting window holds exactly `--requests` exchanges and nothing else
//! (no connect, no handshake, no close):
//!   1. connect (and handshake), `--warmup` requests; print {"phase":"warm",...}
//!   2. wait for a line on stdin; `--requests` requests; print {"phase":"done",...}
//!   3. wait for stdin to close (or another line), then close the connection and exit.
//! Each request is written with one write: the head and, with `--body N`, N bytes of body
//! (method POST, Content-Length). Any status other than 2xx, or an error, fails the run.

use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use crate::Opts;
use crate::http::{RBuf, Resp};
use crate::net::Tls;
use crate::stats::now_ns;

/// One request out, its whole response in; returns the status.
fn round_trip<S: Read + Write>(s: &mut S, req: &[u8], rb: &mut RBuf, resp: &mut Resp) -> io::Result<u16> {
    s.write_all(req)?;
    loop {
        if resp.advance(rb)? {
            return Ok(resp.status);
        }
        let sp = rb.spare();
        if sp.is_empty() {
            return Err(io::Error::other("read buffer full"));
        }
        let n = s.read(sp)?;
        if n == 0 {
            return Err(io::Error::other("server closed the connection"));
        }
        rb.end += n;
    }
}

fn run_n<S: Read + Write>(s: &mut S, n: u64, req: &[u8], rb: &mut RBuf, resp: &mut Resp) -> io::Result<u64> {
    let mut body_bytes = 0;
    for i in 0..n {
        let st = round_trip(s, req, rb, resp)?;
        if !(200..300).contains(&st) {
            return Err(io::Error::other(format!("request {i}: status {st}")));
        }
        body_bytes += resp.body_bytes;
    }
    Ok(body_bytes)
}

fn wait_stdin() -> io::Result<()> {
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(())
}

fn phases<S: Read + Write>(mut s: S, o: &Opts, tls_info: impl Fn(&S) -> String) -> io::Result<()> {
    let warm = o.f64("warmup", 200.0) as u64;
    let n = o.f64("requests", 5000.0) as u64;
    let body = o.f64("body", 0.0) as usize;
    let path = o.str("path", "/");
    let mut req = if body > 0 {
        format!(
            "POST {path} HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: apex-loadgen\r\nContent-Type: application/octet-stream\r\nContent-Length: {body}\r\n\r\n"
        )
        .into_bytes()
    } else {
        format!("GET {path} HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: apex-loadgen\r\n\r\n").into_bytes()
    };
    req.resize(req.len() + body, b'x');
    let mut rb = RBuf::new(crate::RBUF_BYTES);
    let mut resp = Resp::new();

    run_n(&mut s, warm, &req, &mut rb, &mut resp)?;
    println!("{{\"mode\":\"seq\",\"phase\":\"warm\",\"ok\":{warm},\"tls\":\"{}\"}}", tls_info(&s));
    io::stdout().flush()?;
    wait_stdin()?;
    let t0 = now_ns();
    let body_bytes = run_n(&mut s, n, &req, &mut rb, &mut resp)?;
    let secs = (now_ns() - t0) as f64 / 1e9;
    println!(
        "{{\"mode\":\"seq\",\"phase\":\"done\",\"ok\":{n},\"request_bytes\":{},\"response_body_bytes\":{body_bytes},\"secs\":{secs:.3}}}",
        req.len()
    );
    io::stdout().flush()?;
    wait_stdin()?;
    Ok(())
}

pub(crate) fn seq(o: &Opts) -> io::Result<()> {
    let tcp = TcpStream::connect(o.addr()?)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(60)))?;
    let sni = o.str("tls", "");
    if sni.is_empty() {
        return phases(tcp, o, |_| String::new());
    }
    let tls = Tls::new(o, &sni, false)?;
    let conn = rustls::ClientConnection::new(Arc::clone(&tls.config), tls.name.clone()).map_err(io::Error::other)?;
    let s = rustls::StreamOwned::new(conn, tcp);
    phases(s, o, |s| {
        format!(
            "{:?} {:?}",
            s.conn.protocol_version(),
            s.conn.negotiated_cipher_suite().map(|c| c.suite())
        )
        .replace("Some(", "")
        .replace(')', "")
    })
}
