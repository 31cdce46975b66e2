//! systemd's readiness protocol (`Type=notify`, sd_notify(3)): one datagram of `KEY=VALUE`
//! lines to the unix socket named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). Without the variable every call does nothing. Main thread only; never on the
//! hot path. A failed send is not an error worth stopping for: systemd then says what it misses.
//!
//! Apex sends `READY=1` once it serves; `RELOADING=1` with `MONOTONIC_USEC` when SIGHUP starts
//! a reload and `READY=1` when it is done (applied or refused); `STOPPING=1` when it drains to
//! exit; and after a binary upgrade, `MAINPID=` the new process (the unit needs
//! `NotifyAccess=all` for the new process's own messages).

use std::os::unix::net::UnixDatagram;

pub struct Notifier {
    sock: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let sock = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_str()?.to_string();
            let addr = match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
                }
                None => std::os::unix::net::SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Notifier { sock }
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines).
    pub fn send(&self, state: &str) {
        if let Some((s, addr)) = &self.sock
            && let Err(e) = s.send_to_addr(state.as_bytes(), addr)
        {
            crate::log::say(
                crate::log::Level::Warn,
                format_args!("NOTIFY_SOCKET: cannot send {:?}: {e}", state.lines().next().unwrap_or("")),
            );
        }
    }

    /// `RELOADING=1` with the CLOCK_MONOTONIC time that systemd (253+) wants with it.
    pub fn reloading(&self) {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = (now.tv_sec as u64).saturating_mul(1_000_000).saturating_add(now.tv_nsec as u64 / 1_000);
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }
}
