//! Listening sockets: bound here, or inherited (systemd socket activation, or the old Apex of a
//! binary upgrade; both announce them the same way, `LISTEN_FDS`).
//!
//! - Each worker has its own listener per address (SO_REUSEPORT), plain addresses first, then
//!   TLS ones, in config order: a worker tells them apart by index.
//! - An inherited socket is matched to a configured address by its local address; a configured
//!   port 0 matches the first unclaimed inherited socket on the same IP (tests, and upgrades of
//!   a process that was started on port 0). Apex binds nothing it was given. Workers beyond the
//!   sockets given for an address share them (the kernel's one queue); more sockets than workers
//!   is refused, because a socket nobody accepts on would strand the connections in its queue.
//! - Before binding an address it was not given, Apex probes it with a bind without
//!   SO_REUSEPORT: a second Apex (or anything else) already listening there makes it fail at
//!   start with "address in use" and, if /proc shows it, the PID, rather than silently joining the
//!   other process's SO_REUSEPORT group and taking part of its traffic with another config.
//!
//! Inherited fds: `LISTEN_FDS=N` sockets from fd `LISTEN_FDS_FIRST_FD` (default 3, systemd's
//! SD_LISTEN_FDS_START) on, taken if `LISTEN_PID` is this process, or if `LISTEN_PID` is unset
//! and `APEX_UPGRADE` is set (an upgrade cannot know its child's PID before the exec without an
//! unsafe `pre_exec`; see `upgrade.rs`). `listenfd` turns the numbers into sockets and clears the
//! variables, so a later upgrade's child does not see them.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};

use crate::config::Config;

/// Sockets this process was given at start, with their local addresses.
pub struct Inherited(Vec<(TcpListener, SocketAddr)>);

impl Inherited {
    pub fn none() -> Inherited {
        Inherited(Vec::new())
    }

    /// Takes the sockets announced in the environment, if they are meant for this process.
    /// Call before any thread starts (`listenfd` edits the environment).
    pub fn from_env() -> io::Result<Inherited> {
        let Ok(count) = std::env::var("LISTEN_FDS") else {
            return Ok(Inherited::none());
        };
        let me = std::process::id().to_string();
        let for_me = match std::env::var("LISTEN_PID") {
            Ok(pid) => pid == me,
            Err(_) => std::env::var_os("APEX_UPGRADE").is_some(),
        };
        if !for_me {
            return Ok(Inherited::none());
        }
        let mut fds = listenfd::ListenFd::from_env();
        let mut out = Vec::with_capacity(fds.len());
        for i in 0..fds.len() {
            let l = fds
                .take_tcp_listener(i)
                .map_err(|e| io::Error::new(e.kind(), format!("LISTEN_FDS={count}: socket {i}: {e}")))?;
            if let Some(l) = l {
                let a = l.local_addr()?;
                out.push((l, a));
            }
        }
        Ok(Inherited(out))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Removes and returns the sockets for `want`: exact local address, or for port 0 every
    /// socket bound to the first unclaimed port on that IP.
    fn claim(&mut self, want: SocketAddr) -> Vec<TcpListener> {
        let pick =
            if want.port() != 0 { Some(want) } else { self.0.iter().map(|(_, a)| *a).find(|a| a.ip() == want.ip()) };
        let Some(pick) = pick else { return Vec::new() };
        let (mine, rest) = std::mem::take(&mut self.0).into_iter().partition(|(_, a)| *a == pick);
        self.0 = rest;
        mine.into_iter().map(|(l, _)| l).collect()
    }
}

/// Binds (or takes from `given`) every listen address once per worker.
/// Returns the bound addresses and, per worker, its listeners; says on stderr which inherited
/// sockets the config did not ask for (they are closed).
pub fn bind_all(cfg: &Config, given: &mut Inherited) -> io::Result<(Vec<SocketAddr>, Vec<Vec<TcpListener>>)> {
    let mut addrs: Vec<SocketAddr> = cfg.listen.clone();
    addrs.extend(cfg.tls.iter().flat_map(|t| t.listen.iter().copied()));
    let workers = cfg.workers.max(1);
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::with_capacity(addrs.len())).collect();
    // Exact addresses claim theirs first, so a port 0 address cannot take them.
    let mut claimed: Vec<Vec<TcpListener>> = addrs.iter().map(|_| Vec::new()).collect();
    for pass_zero in [false, true] {
        for (a, c) in addrs.iter().zip(claimed.iter_mut()) {
            if (a.port() == 0) == pass_zero {
                *c = given.claim(*a);
            }
        }
    }
    for (addr, mine) in addrs.iter_mut().zip(claimed) {
        if mine.len() > workers {
            return Err(io::Error::other(format!(
                "{addr}: given {} listening sockets but workers = {workers}; a socket no worker accepts on would strand the connections queued on it (start with the old `workers`)",
                mine.len()
            )));
        }
        if let Some(first) = mine.first() {
            *addr = first.local_addr()?;
            let mut shared = Vec::with_capacity(workers);
            for w in 0..workers {
                // Workers past the sockets given share them round-robin.
                if let Some(l) = mine.get(w % mine.len()) {
                    shared.push(l.try_clone()?);
                }
            }
            for (ls, l) in per_worker.iter_mut().zip(shared) {
                ls.push(l);
            }
            continue;
        }
        if addr.port() != 0 {
            probe(*addr)?;
        }
        for (w, ls) in per_worker.iter_mut().enumerate() {
            let l = bind_one(*addr).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            if w == 0 {
                *addr = l.local_addr()?;
            }
            ls.push(l);
        }
    }
    for (_, a) in given.0.drain(..) {
        crate::log::say(
            crate::log::Level::Warn,
            format_args!("an inherited listening socket on {a} is not in the config; closing it"),
        );
    }
    Ok((addrs, per_worker))
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Fails if another socket already listens on `addr`: a bind without SO_REUSEPORT cannot
/// share the port with a listener (SO_REUSEADDR still lets it past TIME_WAIT leftovers).
fn probe(addr: SocketAddr) -> io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    match s.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let who = match listener_pid(addr) {
                Some((pid, name)) => format!("by pid {pid} ({name})"),
                None => "by a process this user cannot see".to_string(),
            };
            Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "cannot listen on {addr}: address in use {who}; to replace a running Apex without dropping connections, send it SIGUSR2"
                ),
            ))
        }
        Err(e) => Err(io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))),
    }
}

/// The process listening on `addr` (or on the wildcard address of its port), and its name:
/// the socket's inode from /proc/net/tcp{,6}, then the process holding it in /proc/*/fd.
/// None if /proc does not say (another user's process, or no /proc).
pub fn listener_pid(addr: SocketAddr) -> Option<(u32, String)> {
    // Both tables: a dual-stack listener on [::] holds IPv4 ports too.
    let text = ["/proc/net/tcp", "/proc/net/tcp6"].map(|t| std::fs::read_to_string(t).unwrap_or_default()).concat();
    let inode = text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
        let a = parse_proc_addr(local)?;
        let hit = *state == "0A" // TCP_LISTEN
            && a.port() == addr.port()
            && (a.ip() == addr.ip() || a.ip().is_unspecified() || addr.ip().is_unspecified());
        hit.then(|| inode.to_string())
    })?;
    let target = format!("socket:[{inode}]");
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        let owns =
            fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()));
        if owns {
            let name = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            return Some((pid, name.trim().to_string()));
        }
    }
    None
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word in host order.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes.as_slice()).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes.as_slice()).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses_parse() {
        assert_eq!(parse_proc_addr("0100007F:1F90"), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(parse_proc_addr("00000000000000000000000001000000:0050"), Some("[::1]:80".parse().unwrap()));
        assert_eq!(parse_proc_addr("zz:1"), None);
    }

    #[test]
    fn a_listener_is_found_by_its_address() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let (pid, _) = listener_pid(a).unwrap();
        assert_eq!(pid, std::process::id());
        let e = probe(a).unwrap_err().to_string();
        assert!(e.contains("address in use by pid"), "{e}");
        drop(l);
        probe(a).unwrap();
    }
}
