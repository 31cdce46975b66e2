//! Upstream connections and the per-worker keep-alive pool. Each worker owns its pool, its
//! round-robin cursors and its passive-health marks: nothing here is shared between threads.
//!
//! An upstream connection lives in its own slab for its whole life and is registered with epoll
//! once; attaching it to a client connection only sets `owner`. Idle pooled connections stay
//! registered, so an upstream that closes one is noticed (readable -> EOF) and the connection is
//! dropped before anyone reuses it. The pool's idle timeout should be shorter than the
//! upstream's own keep-alive timeout (config `upstream_idle`, default 4 s, below Node's 5 s).

use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use slab::Slab;

use crate::config::Config;
use crate::io::Io;

pub struct UpConn {
    pub sock: TcpStream,
    pub io: Io,
    pub server: usize,
    /// The client connection this one serves, or None while idle in the pool.
    pub owner: Option<usize>,
    pub connected: bool,
    /// It has carried a complete exchange before: a failure before any response byte may be
    /// the upstream closing an idle connection, so an idempotent request may be retried.
    pub reused: bool,
    pub idle_deadline: Instant,
}

pub struct Upstreams {
    pub conns: Slab<UpConn>,
    /// Per server: idle connection keys, most recently used last.
    pub idle: Vec<Vec<usize>>,
    /// Per server: skipped until this instant after a failure (passive health).
    pub down_until: Vec<Option<Instant>>,
    /// Per group: the next server to try.
    pub rr: Vec<usize>,
    idle_cap: usize,
}

impl Upstreams {
    pub fn new(cfg: &Config, conns_cap: usize) -> Self {
        let idle_cap = cfg.limits.upstream_idle_per_server;
        Upstreams {
            conns: Slab::with_capacity(conns_cap),
            idle: cfg
                .servers
                .iter()
                .map(|_| Vec::with_capacity(idle_cap))
                .collect(),
            down_until: vec![None; cfg.servers.len()],
            rr: vec![0; cfg.groups.len()],
            idle_cap,
        }
    }

    /// Returns (index in the group, server). Round-robin over the group's servers that this request has not tried and that are not
    /// cooling down.
    pub fn pick(
        &mut self,
        cfg: &Config,
        group: usize,
        tried: u64,
        now: Instant,
    ) -> Option<(usize, usize)> {
        let g = cfg.groups.get(group)?;
        let n = g.servers.len();
        let start = self.rr.get(group).copied().unwrap_or(0);
        for k in 0..n {
            let i = (start + k) % n;
            let Some(&server) = g.servers.get(i) else {
                continue;
            };
            if tried & (1u64 << i) != 0 {
                continue;
            }
            if self
                .down_until
                .get(server)
                .copied()
                .flatten()
                .is_some_and(|t| t > now)
            {
                continue;
            }
            if let Some(r) = self.rr.get_mut(group) {
                *r = (i + 1) % n;
            }
            return Some((i, server));
        }
        None
    }

    pub fn mark_down(&mut self, server: usize, until: Instant) {
        if let Some(d) = self.down_until.get_mut(server) {
            *d = Some(until);
        }
    }

    pub fn mark_up(&mut self, server: usize) {
        if let Some(d) = self.down_until.get_mut(server) {
            *d = None;
        }
    }

    /// An idle connection to `server` that has seen nothing since it went idle.
    pub fn take_idle(&mut self, server: usize, owner: usize) -> Option<usize> {
        while let Some(key) = self.idle.get_mut(server)?.pop() {
            match self.conns.get_mut(key) {
                // Readable while idle means EOF, an error, or bytes nobody asked for: unusable.
                Some(c) if !c.io.readable && !c.io.hup => {
                    c.owner = Some(owner);
                    return Some(key);
                }
                Some(_) => {
                    self.conns.remove(key);
                }
                None => {}
            }
        }
        None
    }

    /// Returns a connection whose exchange ended cleanly to the pool, or closes it if full.
    pub fn release(&mut self, key: usize, deadline: Instant) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        // A read that filled its buffer left `readable` set: confirm the socket is quiet now.
        if c.io.readable || c.io.hup {
            let mut scratch = [0u8; 64];
            match std::io::Read::read(&mut &c.sock, &mut scratch) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && !c.io.hup => {
                    c.io.readable = false
                }
                _ => {
                    self.conns.remove(key);
                    return;
                }
            }
        }
        let server = c.server;
        match self.idle.get_mut(server) {
            Some(list) if list.len() < self.idle_cap => {
                c.owner = None;
                c.reused = true;
                c.idle_deadline = deadline;
                list.push(key);
            }
            _ => {
                self.conns.remove(key);
            }
        }
    }

    pub fn close(&mut self, key: usize) {
        if let Some(c) = self.conns.try_remove(key)
            && c.owner.is_none()
            && let Some(list) = self.idle.get_mut(c.server)
        {
            list.retain(|&k| k != key);
        }
    }

    /// Closes idle connections past their deadline; returns how many were closed.
    pub fn sweep(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for list in &mut self.idle {
            let conns = &mut self.conns;
            list.retain(|&k| match conns.get(k) {
                Some(c) if c.idle_deadline <= now => {
                    conns.remove(k);
                    false
                }
                Some(c) => {
                    next = Some(next.map_or(c.idle_deadline, |n| n.min(c.idle_deadline)));
                    true
                }
                None => false,
            });
        }
        next
    }

    pub fn addr(cfg: &Config, server: usize) -> Option<SocketAddr> {
        cfg.servers.get(server).copied()
    }
}
