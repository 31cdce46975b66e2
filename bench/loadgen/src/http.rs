//! The HTTP/1.1 side shared by every mode: an incremental response reader, a read buffer
//! and the edge-triggered read loop.

use std::io::{self, Read};

use mio::net::TcpStream;

use crate::HEAD_BYTES_MAX;
use crate::Opts;

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Body {
    Head,
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

/// Incremental HTTP/1.1 response reader. Head bytes are parsed with httparse once the
/// blank line is in the buffer; body bytes are only counted.
pub(crate) struct Resp {
    pub(crate) body: Body,
    pub(crate) status: u16,
    pub(crate) close: bool,
    pub(crate) body_bytes: u64,
}

pub(crate) enum Step {
    Need,          // need more bytes
    Done(usize),   // a whole response ended; bytes consumed
    More(usize),   // consumed this many bytes, call again
}

impl Resp {
    pub(crate) fn new() -> Resp {
        Resp { body: Body::Head, status: 0, close: false, body_bytes: 0 }
    }

    /// Steps through what `rb` holds: true once the response has ended (its bytes consumed),
    /// false when it needs more bytes.
    pub(crate) fn advance(&mut self, rb: &mut RBuf) -> io::Result<bool> {
        loop {
            match self.step(rb.data())? {
                Step::Need => return Ok(false),
                Step::More(k) => rb.consume(k),
                Step::Done(k) => {
                    rb.consume(k);
                    return Ok(true);
                }
            }
        }
    }

    pub(crate) fn step(&mut self, b: &[u8]) -> io::Result<Step> {
        match self.body {
            Body::Head => {
                let Some(end) = find(b, b"\r\n\r\n") else {
                    if b.len() > HEAD_BYTES_MAX {
                        return Err(io::Error::other("response head too large"));
                    }
                    return Ok(Step::Need);
                };
                let mut hs = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Response::new(&mut hs);
                match r.parse(&b[..end + 4]) {
                    Ok(httparse::Status::Complete(_)) => {}
                    _ => return Err(io::Error::other("bad response head")),
                }
                let status = r.code.unwrap_or(0);
                self.status = status;
                self.body_bytes = 0;
                let mut len = None;
                let mut chunked = false;
                for h in r.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let s = std::str::from_utf8(h.value).unwrap_or("").trim();
                        len = Some(s.parse::<u64>().map_err(|_| io::Error::other("bad content-length"))?);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = contains_ci(h.value, b"chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") && contains_ci(h.value, b"close") {
                        self.close = true;
                    }
                }
                if (100..200).contains(&status) {
                    return Ok(Step::More(end + 4)); // interim response: read the next head
                }
                self.body = if status == 204 || status == 304 {
                    Body::Length(0)
                } else if chunked {
                    Body::Chunked(Chunk::Size)
                } else if let Some(n) = len {
                    Body::Length(n)
                } else {
                    Body::UntilClose
                };
                if self.body == Body::Length(0) {
                    self.body = Body::Head;
                    return Ok(Step::Done(end + 4));
                }
                Ok(Step::More(end + 4))
            }
            Body::Length(n) => {
                let take = (b.len() as u64).min(n);
                self.body_bytes += take;
                if take == n {
                    self.body = Body::Head;
                    Ok(Step::Done(take as usize))
                } else {
                    self.body = Body::Length(n - take);
                    Ok(if take == 0 { Step::Need } else { Step::More(take as usize) })
                }
            }
            Body::UntilClose => {
                self.body_bytes += b.len() as u64;
                Ok(if b.is_empty() { Step::Need } else { Step::More(b.len()) })
            }
            Body::Chunked(c) => match c {
                Chunk::Size => {
                    let Some(e) = find(b, b"\r\n") else { return Ok(Step::Need) };
                    let line = &b[..e];
                    let hex_end = line.iter().position(|&x| !x.is_ascii_hexdigit()).unwrap_or(line.len());
                    let s = std::str::from_utf8(&line[..hex_end]).unwrap_or("");
                    let n = u64::from_str_radix(s, 16).map_err(|_| io::Error::other("bad chunk size"))?;
                    self.body = Body::Chunked(if n == 0 { Chunk::Trailer } else { Chunk::Data(n) });
                    Ok(Step::More(e + 2))
                }
                Chunk::Data(n) => {
                    let take = (b.len() as u64).min(n);
                    self.body_bytes += take;
                    self.body = Body::Chunked(if take == n { Chunk::DataEnd } else { Chunk::Data(n - take) });
                    Ok(if take == 0 { Step::Need } else { Step::More(take as usize) })
                }
                Chunk::DataEnd => {
                    if b.len() < 2 {
                        return Ok(Step::Need);
                    }
                    self.body = Body::Chunked(Chunk::Size);
                    Ok(Step::More(2))
                }
                Chunk::Trailer => {
                    let Some(e) = find(b, b"\r\n") else { return Ok(Step::Need) };
                    if e == 0 {
                        self.body = Body::Head;
                        return Ok(Step::Done(2));
                    }
                    Ok(Step::More(e + 2))
                }
            },
        }
    }
}

pub(crate) fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

pub(crate) fn contains_ci(h: &[u8], n: &[u8]) -> bool {
    h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// Read buffer with a consumed prefix.
pub(crate) struct RBuf {
    pub(crate) buf: Vec<u8>,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl RBuf {
    pub(crate) fn new(n: usize) -> RBuf {
        RBuf { buf: vec![0; n], start: 0, end: 0 }
    }
    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }
}

/// A readable connection whose short read may mean "the socket's queue is empty now".
pub(crate) trait EdgeRead: Read {
    /// A read that returned less than asked for drained the socket (plain TCP: yes; TLS:
    /// no, a read returns one record's plaintext at a time).
    fn short_read_drains(&self) -> bool;
}

impl EdgeRead for TcpStream {
    fn short_read_drains(&self) -> bool {
        true
    }
}

/// Reads until WouldBlock (edge-triggered); returns Ok(true) at EOF.
/// Calls `on_done(status)` for each completed response; `false` stops parsing this read.
pub(crate) fn read_responses(
    sock: &mut impl EdgeRead,
    rb: &mut RBuf,
    resp: &mut Resp,
    mut on_done: impl FnMut(u16) -> bool,
) -> io::Result<bool> {
    loop {
        let sp = rb.spare();
        if sp.is_empty() {
            return Err(io::Error::other("read buffer full"));
        }
        match sock.read(sp) {
            Ok(0) => {
                if resp.body == Body::UntilClose {
                    resp.body = Body::Head;
                    on_done(resp.status);
                }
                return Ok(true);
            }
            Ok(n) => {
                let short = n < sp.len() && sock.short_read_drains();
                rb.end += n;
                loop {
                    match resp.step(rb.data())? {
                        Step::Need => break,
                        Step::More(k) => rb.consume(k),
                        Step::Done(k) => {
                            rb.consume(k);
                            if !on_done(resp.status) {
                                break;
                            }
                        }
                    }
                }
                // A short read means the socket queue was empty at that moment; new data
                // raises a new edge. Skipping the read that would return EAGAIN saves a syscall.
                if short {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

pub(crate) fn request_bytes(o: &Opts) -> Vec<u8> {
    let path = o.str("path", "/");
    format!("GET {path} HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: apex-loadgen\r\n\r\n").into_bytes()
}
