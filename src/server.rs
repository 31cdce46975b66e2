//! Process level: load the config, bind, start one worker thread per configured worker, and
//! wait. Signals and reload arrive in the operations work; for now SIGTERM ends the process.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::reactor::{Worker, bind_all};

pub fn run(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("apex: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (addrs, listeners) = match bind_all(&cfg) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("apex: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shared = Arc::new(ArcSwap::from_pointee(cfg));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (i, ls) in listeners.into_iter().enumerate() {
        let mut w = match Worker::new(Arc::clone(&shared), ls) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("apex: worker {i}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let stop = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name(format!("apex-w{i}"))
            .spawn(move || w.run(&stop));
        match spawned {
            Ok(h) => workers.push(h),
            Err(e) => {
                eprintln!("apex: cannot start worker {i}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    {
        let mut out = std::io::stdout().lock();
        for a in &addrs {
            let _ = writeln!(out, "apex: listening on {a}");
        }
        let _ = out.flush();
    }
    let mut code = ExitCode::SUCCESS;
    for h in workers {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("apex: worker stopped: {e}");
                code = ExitCode::FAILURE;
            }
            Err(_) => code = ExitCode::FAILURE,
        }
    }
    code
}
