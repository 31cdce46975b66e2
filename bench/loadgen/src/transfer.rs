//! `get` and `put`: one large transfer on one blocking connection.

use std::io::{self, Read, Write};
use std::time::Duration;

use crate::Opts;
use crate::http::{Body, RBuf, Resp, request_bytes};
use crate::stats::now_ns;

pub(crate) fn parse_blocking_response(s: &mut std::net::TcpStream, buf: &mut [u8]) -> io::Result<(u16, u64)> {
    let mut rb = RBuf { buf: std::mem::take(&mut buf.to_vec()), start: 0, end: 0 };
    let mut resp = Resp::new();
    loop {
        let sp = rb.spare();
        let n = s.read(sp)?;
        if n == 0 {
            if resp.body == Body::UntilClose {
                return Ok((resp.status, resp.body_bytes));
            }
            return Err(io::Error::other("connection closed before the response ended"));
        }
        rb.end += n;
        if resp.advance(&mut rb)? {
            return Ok((resp.status, resp.body_bytes));
        }
    }
}

/// One blocking connection for a single large transfer.
pub(crate) fn connect_blocking(o: &Opts) -> io::Result<std::net::TcpStream> {
    let s = std::net::TcpStream::connect(o.addr()?)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.set_write_timeout(Some(Duration::from_secs(120)))?;
    Ok(s)
}

/// Prints a transfer's result line: `bytes` moved since `t0`.
pub(crate) fn report_transfer(mode: &str, status: u16, bytes: u64, t0: u64) {
    let secs = (now_ns() - t0) as f64 / 1e9;
    println!(
        "{{\"mode\":\"{mode}\",\"status\":{status},\"bytes\":{bytes},\"secs\":{secs:.4},\"mb_s\":{:.1}}}",
        bytes as f64 / 1e6 / secs
    );
}

pub(crate) fn get(o: &Opts) -> io::Result<()> {
    let mut s = connect_blocking(o)?;
    let t0 = now_ns();
    s.write_all(&request_bytes(o))?;
    let mut buf = vec![0u8; 1 << 20];
    let (status, bytes) = parse_blocking_response(&mut s, &mut buf)?;
    report_transfer("get", status, bytes, t0);
    Ok(())
}

pub(crate) fn put(o: &Opts) -> io::Result<()> {
    let total = o.f64("bytes", 1048576.0) as u64;
    let path = o.str("path", "/upload");
    let mut s = connect_blocking(o)?;
    let t0 = now_ns();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: apex-loadgen\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n"
    );
    s.write_all(head.as_bytes())?;
    let chunk = vec![b'x'; 1 << 20];
    let mut left = total;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..k])?;
        left -= k as u64;
    }
    let mut buf = vec![0u8; 1 << 16];
    let (status, _) = parse_blocking_response(&mut s, &mut buf)?;
    report_transfer("put", status, total, t0);
    Ok(())
}
