//! Zero-copy body moves: socket -> pipe -> socket with splice(2), through rustix's safe wrapper.
//! Linux only. mio does not see I/O done on the raw fd; that is sound here because readiness is
//! only a hint that every syscall re-checks (see `transport.rs`), and splice from a socket drains the
//! same queue a read would.
//!
//! HAProxy's rules, kept: splice only when more than a buffer's worth of body is known to be
//! forwardable; never move more than the message's remaining length (framing stays in user
//! space); drain the user-space buffer of that direction before switching to the pipe; pipes
//! come from a per-worker pool with a limit, and at the limit bodies are copied instead. A pipe
//! that still holds bytes when its connection dies is closed, not pooled.

use std::io;

use mio::net::TcpStream;
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};

use crate::limits::{PIPE_BYTES, PIPES_PER_WORKER};
use crate::transport::Io;

pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Bytes in the pipe, not yet spliced out. Only ever compared with zero: splice moves whole
    /// socket buffers, so a pipe can hold more than its nominal size.
    pub pending: usize,
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pipe({} pending)", self.pending)
    }
}

pub struct PipePool {
    free: Vec<Pipe>,
    live: usize,
}

impl Default for PipePool {
    fn default() -> Self {
        Self::new()
    }
}

impl PipePool {
    pub fn new() -> Self {
        PipePool { free: Vec::with_capacity(PIPES_PER_WORKER), live: 0 }
    }

    /// A pipe, or None at the limit (or if the kernel refuses one): the caller copies instead.
    pub fn take(&mut self) -> Option<Pipe> {
        if let Some(p) = self.free.pop() {
            return Some(p);
        }
        if self.live >= PIPES_PER_WORKER {
            return None;
        }
        let (r, w) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).ok()?;
        let _ = fcntl_setpipe_size(&w, PIPE_BYTES); // a hint; the default 64 KiB also works
        self.live += 1;
        Some(Pipe { r, w, pending: 0 })
    }

    pub fn give(&mut self, p: Pipe) {
        if p.pending == 0 && self.free.len() < self.free.capacity() {
            self.free.push(p);
        } else {
            self.live = self.live.saturating_sub(1); // dropped: its fds close
        }
    }

    pub fn give_slot(&mut self, slot: &mut Option<Pipe>) {
        if let Some(p) = slot.take() {
            self.give(p);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spliced {
    Bytes(usize),
    Idle,
    Eof,
}

fn flags() -> SpliceFlags {
    SpliceFlags::NONBLOCK | SpliceFlags::MOVE
}

/// Moves at most `max` bytes from `src` into the pipe, which may already hold some: filling
/// while the other side drains keeps both sockets busy. EAGAIN clears the readable flag only
/// when the pipe was empty: then it can only mean the socket has nothing. With bytes pending it
/// may mean the pipe is full, and the flag stays (costing at most one EAGAIN later).
pub fn fill(src: &TcpStream, io: &mut Io, pipe: &mut Pipe, max: usize) -> io::Result<Spliced> {
    if !io.readable || max == 0 {
        return Ok(Spliced::Idle);
    }
    loop {
        match splice(src, None, &pipe.w, None, max.min(PIPE_BYTES), flags()) {
            Ok(0) => return Ok(Spliced::Eof),
            Ok(n) => {
                pipe.pending += n;
                return Ok(Spliced::Bytes(n));
            }
            Err(Errno::AGAIN) => {
                if pipe.pending == 0 {
                    io.readable = false;
                }
                return Ok(Spliced::Idle);
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Moves what the pipe holds into `dst`. The pipe is non-empty, so EAGAIN means the socket is full.
pub fn drain(dst: &TcpStream, io: &mut Io, pipe: &mut Pipe) -> io::Result<usize> {
    if !io.writable || pipe.pending == 0 {
        return Ok(0);
    }
    loop {
        match splice(&pipe.r, None, dst, None, pipe.pending, flags()) {
            Ok(n) => {
                pipe.pending = pipe.pending.saturating_sub(n);
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
