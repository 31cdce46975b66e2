//! Upstream names (`servers = ["app:8080"]`) resolved again every `resolve_every`, on a thread
//! of their own. A changed address set becomes a new config snapshot, built from the same text
//! the current one was (never from the file on disk: an edit waits for its SIGHUP), with the
//! health of the addresses that stay, and is published with a compare-and-swap so that a reload
//! that happened meanwhile wins. Workers see it as they see a reload: requests in flight finish
//! on the snapshot they started with, idle pooled connections to a departed address close. A
//! lookup that fails keeps the last good addresses, with a warning.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::log::{Level, say};

/// `assign` gives a new snapshot's servers their metrics slots (`metrics::Labels::assign`), so
/// that an address a name gained has its own series from its first request.
pub fn spawn_resolver(
    shared: Arc<ArcSwap<Config>>,
    assign: impl Fn(&mut Config) + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("apex-resolve".into()).spawn(move || {
        // Snapshots this thread replaced: kept, like the main thread's, so that the last
        // reference to a config is never dropped by a worker in the middle of its work.
        let mut retired: Vec<Arc<Config>> = Vec::new();
        loop {
            let every = shared.load().resolve_every.max(Duration::from_millis(10));
            std::thread::sleep(every);
            let current = shared.load_full();
            if let Some(old) = refresh(&shared, &current, &assign) {
                retired.push(old);
            }
        }
    })?;
    Ok(())
}

/// Resolves `current`'s names again; publishes a new snapshot if an address set changed.
/// Returns the snapshot it replaced.
fn refresh(shared: &ArcSwap<Config>, current: &Arc<Config>, assign: &dyn Fn(&mut Config)) -> Option<Arc<Config>> {
    let (text, file) = current.source.as_ref()?;
    let mut new = match Config::parse(text, file) {
        Ok(c) => c,
        Err(e) => {
            say(Level::Warn, format_args!("resolving upstream names again: {e}; keeping the last addresses"));
            return None;
        }
    };
    if new.names == current.names {
        return None;
    }
    new.keep_health(current);
    assign(&mut new);
    let changes: Vec<String> = new
        .names
        .iter()
        .filter(|n| !current.names.contains(n))
        .map(|(name, addrs)| {
            let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            format!("upstream {name} now resolves to {}", shown.join(", "))
        })
        .collect();
    let new = Arc::new(new);
    let prev = shared.compare_and_swap(current, Arc::clone(&new));
    if !Arc::ptr_eq(&prev, current) {
        return None; // a reload won the race; its own lookup is newer
    }
    for line in changes {
        say(Level::Info, format_args!("{line}"));
    }
    Some(Arc::clone(current))
}
