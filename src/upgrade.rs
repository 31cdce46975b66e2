//! Binary upgrade (`kill -USR2 PID`): the running process starts the binary at its own path with
//! its own arguments, hands it every listening socket, and waits for it to say it is ready; only
//! then does it stop accepting and drain. The listening sockets are shared, never closed and
//! re-bound, so no connection queued in the kernel is reset (closing a SO_REUSEPORT listener
//! resets its queue). A new process that fails (bad config, crash, not ready within
//! `UPGRADE_READY_MS`) changes nothing: the old one keeps serving and says why.
//!
//! How the sockets go over, without `unsafe` (and so without `pre_exec`): the parent duplicates
//! them to consecutive fds above every fd it has open, clears their close-on-exec flag, and
//! announces them as systemd's socket activation does, `LISTEN_FDS=N` and `LISTEN_FDNAMES`,
//! plus `LISTEN_FDS_FIRST_FD` for where they start (systemd's are always at 3, which a parent
//! cannot arrange without `pre_exec`). `LISTEN_PID` is left unset, as the child's PID is not
//! known before it runs; `APEX_UPGRADE=PID` (the old process) marks the environment as meant for
//! it. The child takes them through the same code as socket activation (`listen.rs`). Its stdin
//! is one end of a socket pair; it writes `ready\n` there once its workers serve.

use std::io::Read;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::limits::UPGRADE_READY_MS;

/// Starts the new binary with `listeners` (named `names`, in order) and waits until it is
/// ready. Its PID, or why it is not serving (it is then stopped).
pub fn start(listeners: &[TcpListener], names: &[&str]) -> Result<u32, String> {
    let exe = own_path().map_err(|e| format!("cannot find this binary's path: {e}"))?;
    let fds = inheritable(listeners)?;
    let first = fds.first().map_or(3, AsRawFd::as_raw_fd);
    let (mine, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let spawned = Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDS_FIRST_FD", first.to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env("APEX_UPGRADE", std::process::id().to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn();
    // The child has its copies (or none): ours go, and with them the inheritable flags.
    drop(fds);
    let mut child = spawned.map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = child.id();
    match wait_ready(mine) {
        Ok(()) => Ok(pid),
        Err(why) => {
            // A child that closed its end is usually exiting: give it a moment to say how.
            let end = Instant::now() + Duration::from_secs(2);
            let status = loop {
                match child.try_wait() {
                    Ok(Some(st)) => break format!("; it exited with {st}"),
                    Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break "; stopped it".to_string();
                    }
                }
            };
            Err(format!("new process {pid} ({}): {why}{status}", exe.display()))
        }
    }
}

/// Reads `ready\n` from the child, within `UPGRADE_READY_MS`.
fn wait_ready(mut s: UnixStream) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(UPGRADE_READY_MS);
    let mut got = Vec::with_capacity(8);
    let mut buf = [0u8; 16];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("not ready within {UPGRADE_READY_MS} ms"));
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => return Err("ended before it was ready".into()),
            Ok(n) => {
                got.extend_from_slice(buf.get(..n).unwrap_or(&[]));
                if got.starts_with(b"ready\n") {
                    return Ok(());
                }
                if got.len() > 64 {
                    return Err("said something other than ready".into());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(format!("not ready within {UPGRADE_READY_MS} ms"));
            }
            Err(e) => return Err(format!("reading its readiness: {e}")),
        }
    }
}

/// In the new process: tells the old one it serves now (nothing if not started by an upgrade).
pub fn announce_ready() {
    if std::env::var_os("APEX_UPGRADE").is_some() {
        let stdin = std::io::stdin();
        if let Err(e) = rustix::io::write(stdin.as_fd(), b"ready\n") {
            crate::log::say(crate::log::Level::Warn, format_args!("cannot tell the old process it may drain: {e}"));
        }
    }
}

/// The binary at this process's path now: /proc/self/exe, without the " (deleted)" that the
/// kernel appends once the file was replaced (which is how a new version is installed).
fn own_path() -> std::io::Result<PathBuf> {
    let p = std::fs::read_link("/proc/self/exe")?;
    let s = p.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(live) => PathBuf::from(live),
        None => p,
    })
}

/// Duplicates `listeners` to consecutive fds, above every fd open now (other threads open fds
/// at the lowest free number), without close-on-exec.
fn inheritable(listeners: &[TcpListener]) -> Result<Vec<OwnedFd>, String> {
    let n = listeners.len();
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    for attempt in 0..4u32 {
        let highest = std::fs::read_dir("/proc/self/fd")
            .map_err(|e| format!("/proc/self/fd: {e}"))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
            .max()
            .unwrap_or(2);
        let base = highest.saturating_add(64 << attempt);
        if u64::try_from(base).unwrap_or(u64::MAX).saturating_add(n as u64) >= limit {
            return Err(format!("no room for {n} fds below the open-file limit ({limit})"));
        }
        let mut out = Vec::with_capacity(n);
        for (i, l) in listeners.iter().enumerate() {
            let want = base.saturating_add(i32::try_from(i).unwrap_or(i32::MAX));
            let fd = rustix::io::fcntl_dupfd_cloexec(l, want).map_err(|e| format!("dup: {e}"))?;
            if fd.as_raw_fd() != want {
                break; // another thread took that number: try higher
            }
            out.push(fd);
        }
        if out.len() == n {
            for fd in &out {
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(|e| format!("fcntl: {e}"))?;
            }
            return Ok(out);
        }
    }
    Err("could not place the listening sockets at consecutive fds".into())
}
