//! One end of a connection as the state machine sees it: a socket, its edge-triggered readiness
//! flags, and its TLS if it has one (`End`), read and written as plaintext either way.
//!
//! Edge-triggered readiness, kept honest. epoll (through mio) reports a change once; these flags
//! remember it until a syscall says otherwise. Only `WouldBlock`, or a short read/write (the queue
//! was drained at that moment, so new data raises a new edge), clears a flag. Event flags are never
//! acted on directly: a stale event for a reused slab slot costs at most one `WouldBlock`.

use std::io;

use mio::net::TcpStream;
use rustix::event::epoll::EventFlags;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

use crate::buf::Buf;
use crate::tls::{Tls, TlsBufPool};

#[derive(Clone, Copy, Debug, Default)]
pub struct Io {
    pub readable: bool,
    pub writable: bool,
    /// The peer closed or the socket errored: read until the syscall says so.
    pub hup: bool,
}

impl Io {
    /// Takes what epoll said about this socket, read as mio's `Event` reads it: readable on
    /// IN or PRI, read-closed on HUP or IN with RDHUP, writable on OUT, write-closed on HUP or
    /// ERR; an error is all three (the syscall that follows says what it was).
    pub fn on_event(&mut self, ev: EventFlags) {
        if ev.intersects(EventFlags::IN | EventFlags::PRI | EventFlags::HUP | EventFlags::ERR) {
            self.readable = true;
        }
        if ev.intersects(EventFlags::OUT | EventFlags::HUP | EventFlags::ERR) {
            self.writable = true;
        }
        if ev.intersects(EventFlags::HUP | EventFlags::ERR) || ev.contains(EventFlags::IN | EventFlags::RDHUP) {
            self.hup = true;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filled {
    /// Read this many bytes.
    Data(usize),
    /// Nothing to read now (or no room).
    Idle,
    /// The peer closed its write side.
    Eof,
}

/// One read into `buf`'s spare room, if the socket is readable and there is room.
pub fn fill<const N: usize>(sock: &TcpStream, io: &mut Io, buf: &mut Buf<N>) -> io::Result<Filled> {
    if !io.readable {
        return Ok(Filled::Idle);
    }
    let spare = buf.spare();
    if spare.is_empty() {
        return Ok(Filled::Idle);
    }
    let got = recv_once(sock, io, spare)?;
    if let Filled::Data(n) = got {
        buf.commit(n);
    }
    Ok(got)
}

/// One read of at most `max` bytes into `buf`'s spare room (a reader that must not take bytes
/// past a boundary it knows). A full read of `max` leaves the socket marked readable. `fill`
/// without the bound, kept apart from it: `fill` is on every request's path.
pub fn fill_max<const N: usize>(sock: &TcpStream, io: &mut Io, buf: &mut Buf<N>, max: usize) -> io::Result<Filled> {
    if !io.readable {
        return Ok(Filled::Idle);
    }
    let spare = buf.spare();
    let want = spare.len().min(max);
    let Some(spare) = spare.get_mut(..want).filter(|s| !s.is_empty()) else {
        return Ok(Filled::Idle);
    };
    let got = recv_once(sock, io, spare)?;
    if let Filled::Data(n) = got {
        buf.commit(n);
    }
    Ok(got)
}

/// One recv into `spare`; a short read (or EAGAIN) clears `readable`. rustix's raw syscall, not
/// std's read: glibc's recv wraps every call in the cancellation-point bookkeeping
/// (__pthread_enable/disable_asynccancel), ~50 instructions a call that a worker thread, never
/// cancelled, does not need.
#[inline(always)]
fn recv_once(sock: &TcpStream, io: &mut Io, spare: &mut [u8]) -> io::Result<Filled> {
    let want = spare.len();
    loop {
        match rustix::net::recv(sock, &mut *spare, RecvFlags::empty()).map(|(n, _)| n) {
            Ok(0) => return Ok(Filled::Eof),
            Ok(n) => {
                if n < want && !io.hup {
                    io.readable = false;
                }
                return Ok(Filled::Data(n));
            }
            Err(Errno::AGAIN) => {
                io.readable = false;
                return Ok(Filled::Idle);
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// One write of `buf`'s bytes, if the socket is writable. Returns bytes written.
pub fn flush<const N: usize>(sock: &TcpStream, io: &mut Io, buf: &mut Buf<N>) -> io::Result<usize> {
    if !io.writable || buf.is_empty() {
        return Ok(0);
    }
    let want = buf.len();
    loop {
        // As in `fill`; MSG_NOSIGNAL as std's write on a socket: a peer gone is an error, not
        // a SIGPIPE.
        match rustix::net::send(sock, buf.filled(), SendFlags::NOSIGNAL) {
            Ok(n) => {
                if n < want {
                    io.writable = false;
                }
                buf.consume(n);
                return Ok(n);
            }
            Err(Errno::AGAIN) => {
                io.writable = false;
                return Ok(0);
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// One end of a connection: a socket, and its TLS if it has one. Reads and writes plaintext;
/// over TLS a byte counts as written once its record has left for the socket.
pub struct End<'a> {
    pub sock: &'a TcpStream,
    pub io: &'a mut Io,
    pub tls: Option<&'a mut Tls>,
}

impl End<'_> {
    /// One read into `buf`: from the socket, or opened from TLS records.
    pub fn fill(&mut self, pool: &mut TlsBufPool, buf: &mut Buf) -> io::Result<Filled> {
        match self.tls.as_deref_mut() {
            Some(t) => t.read(self.sock, self.io, pool, buf),
            None => fill(self.sock, self.io, buf),
        }
    }

    /// One write of `buf`: to the socket, or sealed in TLS records.
    pub fn flush(&mut self, pool: &mut TlsBufPool, buf: &mut Buf) -> io::Result<usize> {
        match self.tls.as_deref_mut() {
            Some(t) => t.write(self.sock, self.io, pool, buf),
            None => flush(self.sock, self.io, buf),
        }
    }

    /// Ends the write side: close_notify first when `clean` and this end speaks TLS (RFC 8446
    /// §6.1), then a FIN.
    pub fn shut_write(&mut self, pool: &mut TlsBufPool, clean: bool) {
        if let Some(t) = self.tls.as_deref_mut().filter(|_| clean) {
            t.close_notify(self.sock, self.io, pool);
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }
}

/// Looks at what is queued on `sock` without taking it (MSG_PEEK). A short look (or EAGAIN)
/// clears `readable`, as `fill` does: more bytes raise a new edge.
pub fn peek(sock: &TcpStream, io: &mut Io, spare: &mut [u8]) -> io::Result<Filled> {
    if !io.readable {
        return Ok(Filled::Idle);
    }
    loop {
        match rustix::net::recv(sock, &mut *spare, RecvFlags::PEEK).map(|(n, _)| n) {
            Ok(0) => return Ok(Filled::Eof),
            Ok(n) => return Ok(Filled::Data(n)),
            Err(Errno::AGAIN) => {
                io.readable = false;
                return Ok(Filled::Idle);
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Takes exactly `scratch.len()` bytes that a `peek` saw queued, and drops them.
pub fn discard(sock: &TcpStream, scratch: &mut [u8]) -> io::Result<()> {
    let mut left = scratch.len();
    while left > 0 {
        let Some(room) = scratch.get_mut(..left) else { break };
        match rustix::net::recv(sock, room, RecvFlags::empty()).map(|(n, _)| n) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => left = left.saturating_sub(n),
            Err(Errno::INTR) => {}
            // Peeked bytes are queued: anything else (EAGAIN included) is a broken socket.
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Io::on_event` on every combination of the flags epoll reports, against the readiness
    /// that mio's `Event` methods give for them (mio 1.x, sys/unix/selector/epoll.rs), composed
    /// as `on_event` composed them when it took a mio `Event`.
    #[test]
    fn flags_read_as_mio_reads_them() {
        let all =
            [EventFlags::IN, EventFlags::PRI, EventFlags::OUT, EventFlags::ERR, EventFlags::HUP, EventFlags::RDHUP];
        for bits in 0u32..1 << all.len() {
            let f = all
                .iter()
                .enumerate()
                .filter(|(i, _)| bits >> i & 1 == 1)
                .fold(EventFlags::empty(), |f, (_, &x)| f | x);
            let has = |x: EventFlags| f.contains(x);
            let readable = has(EventFlags::IN) || has(EventFlags::PRI);
            let error = has(EventFlags::ERR);
            let read_closed = has(EventFlags::HUP) || (has(EventFlags::IN) && has(EventFlags::RDHUP));
            let write_closed =
                has(EventFlags::HUP) || (has(EventFlags::OUT) && has(EventFlags::ERR)) || f == EventFlags::ERR;
            let mut io = Io::default();
            io.on_event(f);
            let want =
                (readable || read_closed || error, has(EventFlags::OUT) || write_closed || error, read_closed || error);
            assert_eq!((io.readable, io.writable, io.hup), want, "{f:?}");
        }
    }
}
