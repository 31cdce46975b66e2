//! `idle`: many keep-alive connections that each send one request and then stay open.

use std::io::{self, Write};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::http::{RBuf, Resp, read_responses, request_bytes};
use crate::net::connect;
use crate::stats::now_ns;
use crate::{Opts, STDIN};

#[derive(PartialEq)]
pub(crate) enum IdleState {
    Connecting,
    Waiting,
    Idle,
    Closed,
}

pub(crate) struct IConn {
    pub(crate) sock: TcpStream,
    pub(crate) state: IdleState,
    pub(crate) rb: RBuf,
    pub(crate) resp: Resp,
    pub(crate) wpos: usize,
}

pub(crate) fn idle(o: &Opts) -> io::Result<()> {
    let addr = o.addr()?;
    let n = o.f64("conns", 9000.0) as usize;
    let inflight_max = o.f64("inflight", 100.0) as usize;
    let hold = o.f64("hold", 5.0);
    let req = request_bytes(o);
    let mut poll = Poll::new()?;
    poll.registry().register(&mut SourceFd(&0), STDIN, Interest::READABLE).ok();
    let mut cs: Vec<IConn> = Vec::with_capacity(n);
    let mut events = Events::with_capacity(1024);
    let (mut active, mut idle_n, mut errors, mut closed) = (0usize, 0usize, 0usize, 0usize);
    let t_start = now_ns();
    let deadline = t_start + 60_000_000_000;
    while idle_n + errors < n {
        while active < inflight_max && cs.len() < n {
            let i = cs.len();
            match connect(addr) {
                Ok(mut sock) => {
                    poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)?;
                    // small buffers: we hold thousands of these
                    cs.push(IConn { sock, state: IdleState::Connecting, rb: RBuf::new(4096), resp: Resp::new(), wpos: 0 });
                    active += 1;
                }
                Err(e) => return Err(io::Error::other(format!("connect #{i}: {e}"))),
            }
        }
        if now_ns() > deadline {
            return Err(io::Error::other(format!("idle: only {idle_n}/{n} ready after 60 s ({errors} errors)")));
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            if i >= cs.len() {
                continue;
            }
            let c = &mut cs[i];
            let mut fail = false;
            if c.state == IdleState::Connecting && (ev.is_writable() || ev.is_error()) {
                if c.sock.take_error()?.is_none() && c.sock.peer_addr().is_ok() {
                    let _ = c.sock.set_nodelay(true);
                    c.state = IdleState::Waiting;
                } else {
                    fail = true;
                }
            }
            if c.state == IdleState::Waiting && c.wpos < req.len() {
                loop {
                    match c.sock.write(&req[c.wpos..]) {
                        Ok(k) => {
                            c.wpos += k;
                            if c.wpos == req.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            fail = true;
                            break;
                        }
                    }
                }
            }
            if !fail && (c.state == IdleState::Waiting || c.state == IdleState::Idle) && (ev.is_readable() || ev.is_read_closed()) {
                let mut done = false;
                match read_responses(&mut c.sock, &mut c.rb, &mut c.resp, |_| {
                    done = true;
                    false
                }) {
                    Ok(eof) => {
                        if done && c.state == IdleState::Waiting {
                            c.state = IdleState::Idle;
                            active -= 1;
                            idle_n += 1;
                        }
                        if eof {
                            fail = true;
                        }
                    }
                    Err(_) => fail = true,
                }
            }
            if fail {
                match c.state {
                    IdleState::Idle => {
                        closed += 1;
                        idle_n -= 1;
                        errors += 1;
                    }
                    IdleState::Closed => {}
                    _ => {
                        active -= 1;
                        errors += 1;
                    }
                }
                c.state = IdleState::Closed;
                let _ = poll.registry().deregister(&mut c.sock);
            }
        }
    }
    let ready_s = (now_ns() - t_start) as f64 / 1e9;
    println!("{{\"mode\":\"idle\",\"ready\":{idle_n},\"errors\":{errors},\"secs\":{ready_s:.2}}}");
    io::stdout().flush()?;
    let end = now_ns() + (hold * 1e9) as u64;
    let mut stdin_open = true;
    while now_ns() < end && stdin_open {
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            if ev.token() == STDIN {
                let mut b = [0u8; 64];
                // SAFETY: reading into a local buffer from fd 0.
                let r = unsafe { libc::read(0, b.as_mut_ptr().cast(), b.len()) };
                if r == 0 {
                    stdin_open = false;
                }
                continue;
            }
            let i = ev.token().0;
            if i < cs.len() && cs[i].state == IdleState::Idle && (ev.is_read_closed() || ev.is_error()) {
                cs[i].state = IdleState::Closed;
                closed += 1;
            }
        }
    }
    println!("{{\"mode\":\"idle-end\",\"closed_by_server\":{closed}}}");
    Ok(())
}
