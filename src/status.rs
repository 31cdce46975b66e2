//! `GET /status`: one JSON object for people and scripts, written by hand (RFC 8259 strings,
//! escaped below) rather than through serde_json (which only the ACME
//! client needs).
//!
//! ```text
//! {"version", "pid", "uptime_seconds", "draining", "workers",
//!  "config": {"file", "generation", "last_reload": {"at", "result", "error"}},
//!  "connections": {"open", "by_state": {"read_head", ...}},
//!  "upstreams": [{"group", "servers": [{"address", "healthy", "passive": "up" | "down",
//!                 "check": null | "up" | "down", "in_flight", "idle_pooled",
//!                 "last_error": null | {"reason", "at"}}]}],
//! (`healthy`: neither the passive view nor the group's active check has it out.)
//!  "certificates": [{"chain", "names", "not_after"}]}
//! ```
//! Times are RFC 3339 in UTC.

use std::fmt::Write as _;

use crate::admin::Shared;
use crate::metrics::{STATE_NAMES, UP_ERROR_NAMES};

/// A JSON string (RFC 8259 §7): quote, backslash and control characters escaped.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Unix seconds as RFC 3339 (`2026-12-05T12:00:00Z`).
pub fn rfc3339(secs: i64) -> String {
    let (y, m, d) = crate::time::civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", t / 3600, t / 60 % 60, t % 60)
}

pub fn render(sh: &Shared) -> String {
    let cfg = sh.config.load();
    let labels = sh.labels.set.load();
    let ws = &sh.workers;
    let mut o = String::with_capacity(4096);
    let last = sh.last_reload.load();
    let _ = write!(
        o,
        "{{\"version\":{},\"pid\":{},\"uptime_seconds\":{},\"draining\":{},\"workers\":{},",
        json_str(env!("CARGO_PKG_VERSION")),
        std::process::id(),
        sh.started.elapsed().as_secs(),
        sh.draining(),
        ws.len()
    );
    let error = last.error.as_deref().map_or("null".to_string(), json_str);
    let _ = write!(
        o,
        "\"config\":{{\"file\":{},\"generation\":{},\"last_reload\":{{\"at\":{},\"result\":{},\"error\":{error}}}}},",
        json_str(&sh.path.display().to_string()),
        sh.generation.get(),
        json_str(&rfc3339(last.at as i64)),
        json_str(last.result),
    );
    let open = crate::metrics::render::open_connections(ws);
    let mut states = String::new();
    for (i, s) in STATE_NAMES.iter().enumerate() {
        let n: u64 = ws.iter().map(|w| w.states.get(i).map_or(0, |c| c.get())).sum();
        let _ = write!(states, "{}\"{s}\":{n}", if i > 0 { "," } else { "" });
    }
    let _ = write!(o, "\"connections\":{{\"open\":{open},\"by_state\":{{{states}}}}},");
    let now_ms = crate::metrics::unix_now().1;
    o.push_str("\"upstreams\":[");
    for (gi, g) in cfg.groups.iter().enumerate() {
        let _ = write!(o, "{}{{\"group\":{},\"servers\":[", if gi > 0 { "," } else { "" }, json_str(&g.name));
        for (k, &si) in g.servers.iter().enumerate() {
            let addr = cfg.servers.get(si).map(|a| a.to_string()).unwrap_or_default();
            let slot = cfg.server_slots.get(si).copied().unwrap_or(usize::MAX);
            let stats: Vec<_> = ws.iter().filter_map(|w| w.server(slot)).collect();
            let busy: i64 = stats.iter().map(|s| s.busy.get() as i64).sum();
            let idle: i64 = stats.iter().map(|s| s.idle.get() as i64).sum();
            let down = stats.iter().any(|s| s.down_until_ms.get() > now_ms);
            // The active check's verdict, where the group has one (null: no check).
            let check = match (&g.check, cfg.health.get(si)) {
                (Some(_), Some(h)) => {
                    if h.checked_up() {
                        "\"up\""
                    } else {
                        "\"down\""
                    }
                }
                _ => "null",
            };
            // The most recent error among the workers.
            let last = stats.iter().filter(|s| s.last_error.get() > 0).max_by_key(|s| s.last_error_at.get());
            let last_error = match last {
                Some(s) => {
                    let what = UP_ERROR_NAMES.get(s.last_error.get() as usize - 1).copied().unwrap_or("unknown");
                    format!(
                        "{{\"reason\":{},\"at\":{}}}",
                        json_str(what),
                        json_str(&rfc3339(s.last_error_at.get() as i64))
                    )
                }
                None => "null".into(),
            };
            let shared = labels.servers.get(slot).is_some_and(|a| *a != addr);
            let _ = write!(
                o,
                "{}{{\"address\":{},\"healthy\":{},\"passive\":{},\"check\":{check},\"in_flight\":{busy},\"idle_pooled\":{idle},\"last_error\":{last_error}{}}}",
                if k > 0 { "," } else { "" },
                json_str(&addr),
                !down && check != "\"down\"",
                if down { "\"down\"" } else { "\"up\"" },
                if shared { ",\"counted_as\":\"(other)\"" } else { "" }
            );
        }
        o.push_str("]}");
    }
    o.push_str("],\"certificates\":[");
    if let Some(t) = &cfg.tls {
        for (i, (c, exp)) in t.certs.iter().zip(&t.expiry).enumerate() {
            let names: Vec<String> = c.names.iter().map(|n| json_str(n)).collect();
            let after = exp.map_or("null".to_string(), |e| json_str(&rfc3339(e)));
            let _ = write!(
                o,
                "{}{{\"chain\":{},\"names\":[{}],\"not_after\":{after}}}",
                if i > 0 { "," } else { "" },
                json_str(&c.chain.display().to_string()),
                names.join(",")
            );
        }
    }
    o.push_str("]}\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_and_times() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_936_000), "2025-12-05T12:00:00Z");
    }
}
