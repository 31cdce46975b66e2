//! Process level: load the config, bind, start one worker thread per configured worker, then
//! handle signals on the main thread, which is never on the hot path.
//!
//! - SIGHUP: reload. The whole file is read and validated; on success the new snapshot is
//!   swapped in atomically, on any error the old one keeps serving and the error is logged with
//!   file, line and reason. Listener and worker changes are refused as a whole (restart to change
//!   them). Old snapshots are kept here until no worker or request holds them, so a worker never
//!   frees a config.
//! - SIGTERM, SIGINT: drain. Workers close their listeners (new connections are refused), close
//!   idle keep-alive connections, answer in-flight requests with `Connection: close`, and exit
//!   when done; the process exits 0, or after `timeouts.shutdown` anyway. A second one exits now.
//! - SIGQUIT: exit now.
//! - SIGUSR2: binary upgrade (`upgrade.rs`): start the binary at our path with our arguments and
//!   listening sockets; once it is ready, drain as for SIGTERM but leave idle keep-alive
//!   connections to their next request (answered `Connection: close`) or their `client_idle`.
//!   If it fails, nothing changes.
//!
//! Listening sockets may come from systemd (socket activation) or from the old process of an
//! upgrade, both through `LISTEN_FDS` (`listen.rs`). With `NOTIFY_SOCKET` set, systemd hears
//! READY, RELOADING, STOPPING and, after an upgrade, the new MAINPID (`notify.rs`).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

use crate::config::Config;
use crate::listen::{Inherited, bind_all};
use crate::log::{Level, say};
use crate::notify::Notifier;
use crate::reactor::Worker;

pub fn run(path: &Path) -> ExitCode {
    // First, while no other thread runs: `listenfd` clears the variables it reads.
    let mut given = match Inherited::from_env() {
        Ok(g) => g,
        Err(e) => {
            say(Level::Error, format_args!("inherited sockets: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let notify = Notifier::from_env();
    let started = (Instant::now(), crate::metrics::unix_now().0);
    let mut cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            say(Level::Error, format_args!("{e}"));
            return ExitCode::FAILURE;
        }
    };
    crate::log::set_threshold(cfg.log.level);
    // A bad file in the ACME state is an error naming it, before anything listens.
    if let Some(a) = cfg.tls.as_ref().and_then(|t| t.acme.as_ref())
        && let Err(e) = crate::acme::check_state(a)
    {
        say(Level::Error, format_args!("tls.acme: {e}"));
        return ExitCode::FAILURE;
    }
    let nofile = raise_fd_limit();
    // Signals first, so one that arrives during start-up is not lost to its default action.
    let (tx, rx) = mpsc::channel();
    match Signals::new([SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2]) {
        Ok(mut signals) => {
            let spawned = std::thread::Builder::new().name("apex-signals".into()).spawn(move || {
                for sig in signals.forever() {
                    if tx.send(sig).is_err() {
                        return;
                    }
                }
            });
            if let Err(e) = spawned {
                say(Level::Error, format_args!("cannot start the signal thread: {e}"));
                return ExitCode::FAILURE;
            }
        }
        Err(e) => {
            say(Level::Error, format_args!("cannot install signal handlers: {e}"));
            return ExitCode::FAILURE;
        }
    }
    let inherited = given.len();
    let (addrs, listeners) = match bind_all(&cfg, &mut given) {
        Ok(x) => x,
        Err(e) => {
            say(Level::Error, format_args!("{e}"));
            return ExitCode::FAILURE;
        }
    };
    let (logger, logs) = match crate::log::Logger::start(cfg.log.access.clone(), cfg.workers) {
        Ok(x) => x,
        Err(e) => {
            say(Level::Error, format_args!("cannot start the logger: {e}"));
            return ExitCode::FAILURE;
        }
    };
    // Our own copies of every listener, in worker order, to hand to a new binary (SIGUSR2).
    let plain = cfg.listen.len();
    let mut handover: Vec<std::net::TcpListener> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for ls in &listeners {
        for (j, l) in ls.iter().enumerate() {
            match l.try_clone() {
                Ok(c) => handover.push(c),
                Err(e) => {
                    say(Level::Error, format_args!("cannot keep a listener for upgrades: {e}"));
                    return ExitCode::FAILURE;
                }
            }
            names.push(if j < plain { "http" } else { "https" });
        }
    }
    let labels = crate::metrics::Labels::new();
    labels.assign(&mut cfg);
    let admin_listener = match cfg.admin.map(crate::admin::bind) {
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            let addr = cfg.admin.map(|a| a.to_string()).unwrap_or_default();
            say(Level::Error, format_args!("cannot listen on admin.listen {addr}: {e}"));
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let shared = Arc::new(ArcSwap::from_pointee(cfg));
    let drain = Arc::new(AtomicBool::new(false));
    let handed_over = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let mut wakers = Vec::new();
    let cap = fd_cap(nofile, shared.load().workers);
    let limits = shared.load().limits;
    // `connections = 0` (the default) is sized from the limit in silence; only a number the
    // operator wrote and the limit cannot carry is worth a warning.
    if cap < limits.connections && !limits.connections_auto {
        say(
            Level::Warn,
            format_args!(
                "the open-file limit ({nofile}) allows {cap} client connections per worker, fewer than limits.connections = {}; raise `ulimit -n` (LimitNOFILE) to reach it, or set connections = 0 to size it from the limit",
                limits.connections
            ),
        );
    }
    let mut worker_metrics = Vec::new();
    for (i, (ls, log)) in listeners.into_iter().zip(logs).enumerate() {
        let mut w = match Worker::new(Arc::clone(&shared), ls, log) {
            Ok(w) => w,
            Err(e) => {
                say(Level::Error, format_args!("worker {i}: {e}"));
                return ExitCode::FAILURE;
            }
        };
        w.set_fd_cap(cap);
        w.set_handover(Arc::clone(&handed_over));
        wakers.push(w.waker());
        worker_metrics.push(w.metrics());
        let drain = Arc::clone(&drain);
        let spawned = std::thread::Builder::new().name(format!("apex-w{i}")).spawn(move || w.run(&drain));
        match spawned {
            Ok(h) => workers.push(h),
            Err(e) => {
                say(Level::Error, format_args!("cannot start worker {i}: {e}"));
                return ExitCode::FAILURE;
            }
        }
    }
    let admin = Arc::new(crate::admin::Shared {
        workers: worker_metrics,
        labels,
        config: Arc::clone(&shared),
        path: path.to_path_buf(),
        drain: Arc::clone(&drain),
        started: started.0,
        started_unix: started.1,
        reloads: Default::default(),
        generation: crate::metrics::Counter::new(),
        last_reload: ArcSwap::from_pointee(crate::admin::Reload { at: started.1, result: "ok", error: None }),
    });
    admin.generation.inc();
    let admin_stop = Arc::new(AtomicBool::new(false));
    if let Some(l) = admin_listener {
        let (sh, stop) = (Arc::clone(&admin), Arc::clone(&admin_stop));
        let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        match std::thread::Builder::new().name("apex-admin".into()).spawn(move || crate::admin::serve(l, sh, stop)) {
            Ok(_) => say(Level::Info, format_args!("admin on http://{addr}/ (/metrics, /status, /healthz)")),
            Err(e) => {
                say(Level::Error, format_args!("cannot start the admin thread: {e}"));
                return ExitCode::FAILURE;
            }
        }
    }
    // Active health checks (health.rs): one thread for the process, idle while no group asks.
    if let Err(e) = crate::health::spawn_checker(Arc::clone(&shared)) {
        eprintln!("apex: cannot start the health checker: {e}");
        return ExitCode::FAILURE;
    }
    // Upstream names resolved again every `resolve_every` (resolve.rs); idle without names.
    let labels = Arc::clone(&admin);
    if let Err(e) = crate::resolve::spawn_resolver(Arc::clone(&shared), move |c| labels.labels.assign(c)) {
        eprintln!("apex: cannot start the resolver: {e}");
        return ExitCode::FAILURE;
    }
    // Certificates from an ACME CA (acme/): one thread, idle without [tls.acme].
    if let Err(e) = crate::acme::spawn(Arc::clone(&shared)) {
        eprintln!("apex: cannot start the ACME thread: {e}");
        return ExitCode::FAILURE;
    }
    // Before the listening lines, which whoever started us may be waiting for.
    if inherited > 0 {
        say(
            Level::Info,
            format_args!("serving on {inherited} inherited listening sockets (pid {})", std::process::id()),
        );
    }
    {
        let mut out = std::io::stdout().lock();
        let plain = shared.load().listen.len();
        for (i, a) in addrs.iter().enumerate() {
            let _ = writeln!(out, "apex: listening on {a}{}", if i >= plain { " tls" } else { "" });
        }
        let _ = out.flush();
    }
    crate::upgrade::announce_ready();
    notify.send("READY=1");

    let mut retired: Vec<Arc<Config>> = Vec::new();
    let mut drain_deadline: Option<Instant> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(SIGHUP) => {
                notify.reloading();
                let sink = shared.load().log.access.clone();
                reload(path, &shared, &mut retired, &admin);
                let new_sink = shared.load().log.access.clone();
                if new_sink != sink {
                    logger.set_sink(new_sink);
                }
                wake(&wakers);
                notify.send("READY=1");
            }
            Ok(SIGUSR2) if drain_deadline.is_some() => {
                say(Level::Warn, format_args!("upgrade refused: this process is draining"));
            }
            Ok(SIGUSR2) => {
                let me = std::process::id();
                say(Level::Info, format_args!("upgrade: starting the new binary (pid {me} serves meanwhile)"));
                match crate::upgrade::start(&handover, &names) {
                    Ok(pid) => {
                        say(Level::Info, format_args!("upgraded: pid {pid} serves now; pid {me} drains"));
                        notify.send(&format!("MAINPID={pid}\nREADY=1"));
                        handover.clear();
                        handed_over.store(true, Ordering::SeqCst);
                        // The new process serves the admin address (SO_REUSEPORT) from now on.
                        admin_stop.store(true, Ordering::SeqCst);
                        drain.store(true, Ordering::SeqCst);
                        wake(&wakers);
                        drain_deadline = Some(Instant::now() + shared.load().timeouts.shutdown);
                    }
                    Err(why) => say(Level::Error, format_args!("upgrade failed: {why}; pid {me} still serving")),
                }
            }
            // logrotate: reopen the access log file.
            Ok(SIGUSR1) => {
                let sink = shared.load().log.access.clone();
                if let crate::log::Sink::File(p) = &sink {
                    say(Level::Info, format_args!("SIGUSR1: reopening the access log {}", p.display()));
                } else {
                    say(Level::Info, format_args!("SIGUSR1: the access log is not a file; nothing to reopen"));
                }
                logger.set_sink(sink);
            }
            Ok(SIGTERM | SIGINT) => {
                if drain_deadline.is_some() {
                    say(Level::Warn, format_args!("second signal: exiting now"));
                    std::process::exit(1);
                }
                notify.send("STOPPING=1");
                // The workers' listeners close now; ours must not keep the sockets open.
                handover.clear();
                let grace = shared.load().timeouts.shutdown;
                say(
                    Level::Info,
                    format_args!(
                        "draining: no new connections; exiting when in-flight requests end (at most {grace:?})"
                    ),
                );
                drain.store(true, Ordering::SeqCst);
                wake(&wakers);
                drain_deadline = Some(Instant::now() + grace);
            }
            Ok(SIGQUIT) => {
                say(Level::Warn, format_args!("SIGQUIT: exiting now"));
                std::process::exit(0);
            }
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        // A snapshot only this thread still holds can go: no worker or request uses it.
        retired.retain(|c| Arc::strong_count(c) > 1);

        if workers.iter().all(|h| h.is_finished()) {
            let mut code = ExitCode::SUCCESS;
            for h in workers {
                match h.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        say(Level::Error, format_args!("worker stopped: {e}"));
                        code = ExitCode::FAILURE;
                    }
                    Err(_) => code = ExitCode::FAILURE,
                }
            }
            logger.stop();
            return code;
        }
        if drain_deadline.is_none() && workers.iter().any(|h| h.is_finished()) {
            say(Level::Error, format_args!("a worker stopped unexpectedly; draining the others"));
            notify.send("STOPPING=1");
            handover.clear();
            drain.store(true, Ordering::SeqCst);
            drain_deadline = Some(Instant::now() + shared.load().timeouts.shutdown);
        }
        if drain_deadline.is_some_and(|d| Instant::now() >= d) {
            say(Level::Warn, format_args!("drain timeout: exiting with requests still in flight"));
            std::process::exit(0);
        }
    }
}

/// Each connection costs one fd (two while proxied): raise the soft limit to the hard one, as
/// nginx's `worker_rlimit_nofile` or the Go runtime do, so the configured `connections` are
/// reachable without a wrapper script. EMFILE is still handled when the hard limit is low.
/// Returns the soft limit now in force.
fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        let before = lim.current;
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            say(Level::Warn, format_args!("cannot raise the open-file limit: {e}"));
            return before.unwrap_or(u64::MAX);
        }
    }
    lim.current.unwrap_or(u64::MAX)
}

/// fds kept back for listeners, epoll, wakers, the logger, and a few pipes.
const FD_RESERVE: u64 = 24;

/// Client connections per worker that the open-file limit can carry, one fd each:
/// `(limit - 24) / workers`, 24 being `FD_RESERVE`; with `ulimit -n 1024` and 2 workers,
/// (1024 - 24) / 2 = 500. README.md's "File descriptors" says the same, and a test checks
/// both examples against this function. A request that then finds no fd for its upstream
/// connection makes the worker close an idle pooled upstream connection or an idle keep-alive
/// client (as nginx reuses idle connections), so established clients keep being served; only
/// when every connection is busy does it get 502.
/// Past the cap the kernel queues new connections until one closes.
fn fd_cap(nofile: u64, workers: usize) -> usize {
    let budget = nofile.saturating_sub(FD_RESERVE) / (workers.max(1) as u64);
    usize::try_from(budget).unwrap_or(usize::MAX).max(1)
}

fn wake(wakers: &[Arc<mio::Waker>]) {
    for w in wakers {
        let _ = w.wake();
    }
}

/// SIGHUP: all or nothing.
fn reload(path: &Path, shared: &ArcSwap<Config>, retired: &mut Vec<Arc<Config>>, admin: &crate::admin::Shared) {
    let mut new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            say(Level::Error, format_args!("reload failed: {e}; still serving the previous config"));
            admin.reloaded("failed", Some(e.to_string()));
            return;
        }
    };
    let current = shared.load();
    if new.admin != current.admin {
        let why = format!("{}: `admin.listen` changed, which needs a restart", path.display());
        say(Level::Error, format_args!("reload refused: {why}; still serving the previous config"));
        admin.reloaded("refused", Some(why));
        return;
    }
    let tls_listen = |c: &Config| c.tls.as_ref().map(|t| t.listen.clone());
    if new.listen != current.listen || new.workers != current.workers || tls_listen(&new) != tls_listen(&current) {
        let why = format!("{}: `listen`, `tls.listen` or `workers` changed, which needs a restart", path.display());
        say(Level::Error, format_args!("reload refused: {why}; still serving the previous config"));
        admin.reloaded("refused", Some(why));
        return;
    }
    new.keep_health(&current);
    drop(current);
    crate::log::set_threshold(new.log.level);
    admin.labels.assign(&mut new);
    retired.push(shared.swap(Arc::new(new)));
    admin.reloaded("ok", None);
    say(Level::Info, format_args!("reloaded {}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every worked example `(A - B) / C = D` in `text`, as numbers.
    fn examples(text: &str) -> Vec<[u64; 4]> {
        let mut out = Vec::new();
        for (i, _) in text.match_indices('(') {
            let rest = text.get(i + 1..).unwrap_or("");
            let nums: Vec<u64> = rest
                .split(|c: char| !c.is_ascii_digit() && c != ',')
                .filter(|w| !w.is_empty())
                .take(4)
                .map(|w| w.replace(',', "").parse().unwrap_or(0))
                .collect();
            let shape: String =
                rest.chars().filter(|c| !c.is_ascii_digit() && *c != ',' && *c != ' ').take(4).collect();
            if nums.len() == 4 && shape == "-)/=" {
                out.push([nums[0], nums[1], nums[2], nums[3]]);
            }
        }
        out
    }

    #[test]
    fn fd_formula_in_docs_is_the_code() {
        let readme = include_str!("../README.md");
        let section = readme.split("### File descriptors").nth(1).unwrap().split("\n### ").next().unwrap();
        assert!(section.contains(&format!("(limit - {FD_RESERVE}) / workers")), "{section}");
        let here = include_str!("server.rs");
        let doc = here.split("fn fd_cap").next().unwrap().rsplit("FD_RESERVE: u64").next().unwrap();
        for (name, text) in [("README.md", section), ("fd_cap's doc", doc)] {
            let ex = examples(text);
            assert!(!ex.is_empty(), "{name} has no worked example (A - B) / C = D");
            for [limit, reserve, workers, cap] in ex {
                assert_eq!(reserve, FD_RESERVE, "{name}");
                assert_eq!(fd_cap(limit, workers as usize) as u64, cap, "{name}: ({limit} - {reserve}) / {workers}");
            }
        }
    }
}
