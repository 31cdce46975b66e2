//! The scrape: every worker's counters summed, written as Prometheus text format 0.0.4, or as
//! OpenMetrics 1.0 when the scraper asks for it (counters' TYPE names lose `_total`, `# EOF`
//! ends the exposition). Runs on the admin thread; allocates freely. The cost does not depend on
//! the number of open connections: gauges are kept by the workers, not counted here.

use std::fmt::Write as _;

use super::{
    BOUNDS_US, CLASS_NAMES, CLOSE_NAMES, Histogram, LabelSet, REJECT_NAMES, STATE_NAMES, UP_ERROR_NAMES, WorkerMetrics,
};
use crate::admin::Shared;

/// Label values from the config, escaped as both formats ask (backslash, quote, newline).
pub fn escape(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

struct Out {
    s: String,
    om: bool,
}

impl Out {
    /// HELP and TYPE lines. `name` is the family name; counters' samples add `_total`.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let shown = if kind == "counter" && !self.om { format!("{name}_total") } else { name.to_string() };
        let _ = writeln!(self.s, "# HELP {shown} {help}\n# TYPE {shown} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.s, "{name} {v}");
        } else {
            let _ = writeln!(self.s, "{name}{{{labels}}} {v}");
        }
    }

    fn histogram(&mut self, name: &str, labels: &str, h: &[&Histogram]) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0u64;
        for (i, b) in BOUNDS_US.iter().enumerate() {
            cum += h.iter().map(|x| x.buckets.get(i).map_or(0, super::Counter::get)).sum::<u64>();
            let le = *b as f64 / 1e6;
            let _ = writeln!(self.s, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
        }
        cum += h.iter().map(|x| x.buckets.get(BOUNDS_US.len()).map_or(0, super::Counter::get)).sum::<u64>();
        let _ = writeln!(self.s, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let sum: u64 = h.iter().map(|x| x.sum_us.get()).sum();
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(self.s, "{name}_sum{braces} {}", sum as f64 / 1e6);
        let _ = writeln!(self.s, "{name}_count{braces} {cum}");
    }
}

/// The sum over workers of one counter picked by `f`.
fn sum(ws: &[std::sync::Arc<WorkerMetrics>], f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
    ws.iter().map(|w| f(w)).fold(0u64, u64::wrapping_add)
}

/// The whole exposition.
pub fn render(sh: &Shared, om: bool) -> String {
    let ws = &sh.workers;
    let labels = sh.labels.set.load();
    let cfg = sh.config.load();
    let mut o = Out { s: String::with_capacity(32 * 1024), om };

    o.family("apex_build_info", "gauge", "Always 1; the version is a label.");
    o.sample("apex_build_info", &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1);
    o.family("apex_workers", "gauge", "Worker threads.");
    o.sample("apex_workers", "", ws.len());
    o.family("apex_draining", "gauge", "1 while shutting down (no new connections), else 0.");
    o.sample("apex_draining", "", u8::from(sh.draining()));

    o.family("apex_config_reloads", "counter", "Config reloads (SIGHUP) by result.");
    for (i, r) in ["ok", "failed", "refused"].iter().enumerate() {
        o.sample("apex_config_reloads_total", &format!("result=\"{r}\""), sh.reloads.get(i).map_or(0, |c| c.get()));
    }
    o.family("apex_config_generation", "gauge", "Config snapshots loaded: 1 at start, +1 per applied reload.");
    o.sample("apex_config_generation", "", sh.generation.get());
    o.family(
        "apex_config_last_reload_timestamp_seconds",
        "gauge",
        "When the config was last loaded or reloaded (applied or not).",
    );
    o.sample("apex_config_last_reload_timestamp_seconds", "", sh.last_reload.load().at);
    o.family("apex_config_last_reload_success", "gauge", "1 if the last load or reload was applied, else 0.");
    o.sample("apex_config_last_reload_success", "", u8::from(sh.last_reload.load().error.is_none()));

    clients(&mut o, ws);
    requests(&mut o, ws, &labels);
    upstreams(&mut o, ws, &labels, &cfg);
    tls(&mut o, ws, &cfg);
    process(&mut o, sh);
    if om {
        o.s.push_str("# EOF\n");
    }
    o.s
}

fn clients(o: &mut Out, ws: &[std::sync::Arc<WorkerMetrics>]) {
    o.family("apex_client_connections_accepted", "counter", "Client connections accepted, by listener kind.");
    for (i, l) in ["plain", "tls"].iter().enumerate() {
        let n = sum(ws, |w| w.accepted.get(i).map_or(0, |c| c.get()));
        o.sample("apex_client_connections_accepted_total", &format!("listener=\"{l}\""), n);
    }
    o.family("apex_client_connections_closed", "counter", "Client connections closed, by reason.");
    for (i, r) in CLOSE_NAMES.iter().enumerate() {
        let n = sum(ws, |w| w.closed.get(i).map_or(0, |c| c.get()));
        o.sample("apex_client_connections_closed_total", &format!("reason=\"{r}\""), n);
    }
    o.family(
        "apex_client_connections",
        "gauge",
        "Open client connections by state, as of each worker's last sweep (at most 1 s old; read_head includes idle keep-alive).",
    );
    for (i, s) in STATE_NAMES.iter().enumerate() {
        let n = sum(ws, |w| w.states.get(i).map_or(0, |c| c.get()));
        o.sample("apex_client_connections", &format!("state=\"{s}\""), n);
    }
    o.family("apex_client_connections_open", "gauge", "Open client connections (accepted - closed, exact).");
    o.sample("apex_client_connections_open", "", open_connections(ws));
    o.family("apex_rejected_requests", "counter", "Responses Apex answered itself with a 4xx or 5xx, by reason.");
    for (i, (r, code)) in REJECT_NAMES.iter().enumerate() {
        let n = sum(ws, |w| w.rejected.get(i).map_or(0, |c| c.get()));
        o.sample("apex_rejected_requests_total", &format!("reason=\"{r}\",code=\"{code}\""), n);
    }
    o.family(
        "apex_client_bytes",
        "counter",
        "Bytes from (in) and to (out) clients, copied through buffers or spliced.",
    );
    for (d, dir) in ["in", "out"].iter().enumerate() {
        let all = sum(ws, |w| w.bytes.get(d).and_then(|x| x.first()).map_or(0, |c| c.get()));
        let spliced = sum(ws, |w| w.bytes.get(d).and_then(|x| x.get(1)).map_or(0, |c| c.get()));
        for (via, n) in [("copy", all.saturating_sub(spliced)), ("splice", spliced)] {
            o.sample("apex_client_bytes_total", &format!("direction=\"{dir}\",via=\"{via}\""), n);
        }
    }
}

/// Accepted minus closed, over every worker.
pub fn open_connections(ws: &[std::sync::Arc<WorkerMetrics>]) -> i64 {
    let accepted = sum(ws, |w| w.accepted.iter().map(|c| c.get()).sum());
    let closed = sum(ws, |w| w.closed.iter().map(|c| c.get()).sum());
    accepted.wrapping_sub(closed) as i64
}

fn requests(o: &mut Out, ws: &[std::sync::Arc<WorkerMetrics>], labels: &LabelSet) {
    let route_labels = |slot: usize| -> String {
        let (r, g) = labels.routes.get(slot).cloned().unwrap_or_default();
        if slot == 0 {
            return "route=\"\",upstream=\"\"".into();
        }
        format!("route=\"{}\",upstream=\"{}\"", escape(&r), escape(&g))
    };
    o.family(
        "apex_requests",
        "counter",
        "Requests by route (host and path prefix; empty: none matched), upstream group and status class.",
    );
    for slot in 0..labels.routes.len() {
        let l = route_labels(slot);
        for (c, class) in CLASS_NAMES.iter().enumerate() {
            let n = sum(ws, |w| w.routes.get(slot).and_then(|r| r.requests.get(c)).map_or(0, |x| x.get()));
            o.sample("apex_requests_total", &format!("{l},class=\"{class}\""), n);
        }
    }
    o.family("apex_request_duration_seconds", "histogram", "From a request's whole head to its response's end.");
    for slot in 0..labels.routes.len() {
        let hs: Vec<&Histogram> = ws.iter().filter_map(|w| w.routes.get(slot)).map(|r| &r.duration).collect();
        o.histogram("apex_request_duration_seconds", &route_labels(slot), &hs);
    }
}

fn upstreams(o: &mut Out, ws: &[std::sync::Arc<WorkerMetrics>], labels: &LabelSet, cfg: &crate::config::Config) {
    let servers: Vec<(usize, String)> =
        labels.servers.iter().enumerate().map(|(i, a)| (i, format!("server=\"{}\"", escape(a)))).collect();
    let each = |o: &mut Out, name: &str, kind: &str, help: &str, f: &dyn Fn(&super::ServerStats) -> u64| {
        o.family(name, kind, help);
        let sample = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
        for (i, l) in &servers {
            let n = sum(ws, |w| w.server(*i).map_or(0, f));
            if kind == "gauge" {
                o.sample(&sample, l, n as i64);
            } else {
                o.sample(&sample, l, n);
            }
        }
    };
    o.family("apex_upstream_responses", "counter", "Exchanges with each upstream server, by status class.");
    for (i, l) in &servers {
        for (c, class) in CLASS_NAMES.iter().enumerate() {
            let n = sum(ws, |w| w.server(*i).and_then(|s| s.responses.get(c)).map_or(0, |x| x.get()));
            o.sample("apex_upstream_responses_total", &format!("{l},class=\"{class}\""), n);
        }
    }
    o.family(
        "apex_upstream_first_byte_seconds",
        "histogram",
        "From a request's whole head to the first byte of its upstream's response (connect included).",
    );
    for (i, l) in &servers {
        let hs: Vec<&Histogram> = ws.iter().filter_map(|w| w.server(*i)).map(|s| &s.ttfb).collect();
        o.histogram("apex_upstream_first_byte_seconds", l, &hs);
    }
    each(o, "apex_upstream_connects", "counter", "New connections opened to each upstream server.", &|s| {
        s.connects.get()
    });
    o.family("apex_upstream_errors", "counter", "Upstream failures by server and reason.");
    for (i, l) in &servers {
        for (e, name) in UP_ERROR_NAMES.iter().enumerate() {
            let n = sum(ws, |w| w.server(*i).and_then(|s| s.errors.get(e)).map_or(0, |x| x.get()));
            o.sample("apex_upstream_errors_total", &format!("{l},reason=\"{name}\""), n);
        }
    }
    each(
        o,
        "apex_upstream_retries",
        "counter",
        "Requests sent again after failing on this server: on a fresh connection after a reused one failed, or to another server by the route's retry.",
        &|s| s.retries.get(),
    );
    each(
        o,
        "apex_upstream_retries_denied",
        "counter",
        "Requests failed on this server that the route's retry allowed and the retry budget refused.",
        &|s| s.retries_denied.get(),
    );
    each(o, "apex_upstream_pool_hits", "counter", "Requests sent on a pooled (reused) connection.", &|s| {
        s.pool_hits.get()
    });
    each(o, "apex_upstream_pool_misses", "counter", "Requests that needed a new connection.", &|s| s.pool_misses.get());
    each(
        o,
        "apex_upstream_idle_connections",
        "gauge",
        "Idle pooled connections (as of each worker's last sweep).",
        &|s| s.idle.get(),
    );
    each(
        o,
        "apex_upstream_active_connections",
        "gauge",
        "Connections carrying a request, connecting included (as of each worker's last sweep).",
        &|s| s.busy.get(),
    );
    let now_ms = super::unix_now().1;
    o.family(
        "apex_upstream_up",
        "gauge",
        "0 while a server is skipped: after a failure (passive health) or failed by its active check; else 1.",
    );
    for (i, l) in &servers {
        let passive_down = ws.iter().any(|w| w.server(*i).is_some_and(|s| s.down_until_ms.get() > now_ms));
        o.sample("apex_upstream_up", l, u8::from(!passive_down && !checked_down(cfg, *i)));
    }
}

/// Has an active check taken the server of metrics slot `slot` out? (Servers sharing a slot:
/// any of them.)
pub fn checked_down(cfg: &crate::config::Config, slot: usize) -> bool {
    cfg.server_slots.iter().zip(&cfg.health).any(|(&s, h)| s == slot && !h.checked_up())
}

/// A TLS alert's name (RFC 8446 §6).
pub fn alert_name(code: u8) -> String {
    let n = match code {
        0 => "other",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        40 => "handshake_failure",
        42 => "bad_certificate",
        47 => "illegal_parameter",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        120 => "no_application_protocol",
        c => return format!("alert_{c}"),
    };
    n.to_string()
}

fn tls(o: &mut Out, ws: &[std::sync::Arc<WorkerMetrics>], cfg: &crate::config::Config) {
    o.family("apex_tls_handshakes", "counter", "Completed TLS handshakes, with clients and with upstreams.");
    for (s, side) in ["client", "upstream"].iter().enumerate() {
        for (v, ver) in ["TLSv1.2", "TLSv1.3"].iter().enumerate() {
            for (r, resumed) in ["false", "true"].iter().enumerate() {
                let n = sum(ws, |w| {
                    w.tls_handshakes.get(s).and_then(|x| x.get(v)).and_then(|x| x.get(r)).map_or(0, |c| c.get())
                });
                o.sample(
                    "apex_tls_handshakes_total",
                    &format!("side=\"{side}\",version=\"{ver}\",resumed=\"{resumed}\""),
                    n,
                );
            }
        }
    }
    o.family("apex_tls_handshake_failures", "counter", "TLS handshakes with clients that failed, by the alert sent.");
    for code in 0..=255u8 {
        let n = sum(ws, |w| w.tls_failures.get(usize::from(code)).map_or(0, |c| c.get()));
        if n > 0 || code == 0 {
            o.sample("apex_tls_handshake_failures_total", &format!("alert=\"{}\"", alert_name(code)), n);
        }
    }
    if let Some(t) = &cfg.tls {
        o.family(
            "apex_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "When each configured certificate expires (its notAfter).",
        );
        for (c, exp) in t.certs.iter().zip(&t.expiry) {
            let Some(exp) = exp else { continue };
            let l = format!(
                "chain=\"{}\",names=\"{}\"",
                escape(&c.chain.display().to_string()),
                escape(&c.names.join(","))
            );
            o.sample("apex_tls_certificate_expiry_timestamp_seconds", &l, exp);
        }
    }
}

/// The standard process metrics, read from /proc now.
fn process(o: &mut Out, sh: &Shared) {
    let p = Proc::read();
    o.family("process_cpu_seconds", "counter", "User and system CPU time spent, in seconds.");
    o.sample("process_cpu_seconds_total", "", p.cpu_seconds);
    o.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    o.sample("process_resident_memory_bytes", "", p.rss_bytes);
    o.family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
    o.sample("process_virtual_memory_bytes", "", p.vsize_bytes);
    o.family("process_open_fds", "gauge", "Open file descriptors.");
    o.sample("process_open_fds", "", p.open_fds);
    o.family("process_max_fds", "gauge", "The open-file soft limit.");
    o.sample("process_max_fds", "", p.max_fds);
    o.family("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch, in seconds.");
    o.sample("process_start_time_seconds", "", sh.started_unix);
}

/// Process facts from /proc/self (0 where unreadable).
#[derive(Default)]
pub struct Proc {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub vsize_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
}

impl Proc {
    pub fn read() -> Proc {
        let mut p = Proc::default();
        let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
        let page = rustix::param::page_size() as u64;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            // proc(5): utime is field 14, stime 15, vsize 23, rss 24; `rest` starts at field 3.
            p.cpu_seconds = (num(11) + num(12)) as f64 / ticks;
            p.vsize_bytes = num(20);
            p.rss_bytes = num(21) * page;
        }
        p.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        p.max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(0);
        p
    }
}
