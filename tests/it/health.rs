//! Upstream health, one view for the whole process (issue #17): passive marks shared by every
//! worker, one probe per cooldown, `fail_after`, `all_down = "try"`, active checks, and a reload
//! that keeps what is known. Waits here are hang guards, never timing assertions.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::thread;

use crate::harness::*;

fn body_of(apex: &Apex, host: &str) -> String {
    let mut c = apex.client();
    let r = c.request(&get(host, "/"));
    assert_eq!(r.status, 200, "{}", r.head_str());
    r.body_str()
}

/// How many times `needle` is in Apex's stderr once `n` have arrived and the worker logs
/// (shipped every 100 ms) have had time to add any more.
fn settled(apex: &Apex, needle: &str, n: usize) -> usize {
    apex.wait_stderr(needle, n);
    thread::sleep(ms(500));
    apex.stderr().matches(needle).count()
}

/// A server whose connect hangs used to cost one stalled request per worker after every
/// cooldown (each worker kept its own mark). Now the first failure takes it out for every
/// worker, and past the cooldown one request, whichever worker has it, probes it.
#[test]
fn a_hanging_server_stalls_one_request_per_cooldown_for_the_whole_process() {
    let hole = BlackHole::new();
    let live = Upstream::ok("live");
    let apex = Apex::start(
        &Config::new()
            .workers(2)
            .route("*", "/", "g")
            .group_cooldown("g", &[hole.addr, live.addr], "1500ms")
            .timeout("upstream_connect", "300ms"),
    );
    // 16 connections: SO_REUSEPORT spreads them over both workers (all on one: 2^-15).
    let round = || {
        for _ in 0..16 {
            assert_eq!(body_of(&apex, "h"), "live");
        }
    };
    round();
    let n = settled(&apex, "connect timed out", 1);
    assert_eq!(n, 1, "one stalled connect for the whole process:\n{}", apex.stderr());
    thread::sleep(ms(1200)); // past the cooldown (1.5 s from the failure; 0.5 s went settling)
    round();
    let n = settled(&apex, "connect timed out", 2);
    assert_eq!(n, 2, "past the cooldown, one probe for the whole process:\n{}", apex.stderr());
}

#[test]
fn fail_after_takes_a_server_out_after_that_many_failures_in_a_row() {
    for (fail_after, tries) in [(1, 1), (3, 3)] {
        let dead = dead_addr();
        let apex = Apex::start(
            &Config::new()
                .route("*", "/", "g")
                .group_cooldown("g", &[dead], "60s")
                .append(&format!("fail_after = {fail_after}")),
        );
        for _ in 0..5 {
            let mut c = apex.client();
            assert_apex_status(&c.request(&get("h", "/")), 502);
        }
        let n = settled(&apex, &format!("upstream {dead}: connect"), tries);
        let log = apex.stderr();
        assert_eq!(n, tries, "fail_after = {fail_after}:\n{log}");
        assert_eq!(log.matches("skipped for 60s").count(), 1, "{log}");
    }
}

/// Every server out: 502 at once by default; with `all_down = "try"`, the one out longest is
/// tried anyway, and a server back before its cooldown ends answers.
#[test]
fn all_down_try_sends_the_request_to_a_server_that_is_out() {
    for (setting, want) in [("fail", 502), ("try", 200)] {
        let addr = dead_addr();
        let apex = Apex::start(
            &Config::new()
                .route("*", "/", "g")
                .group_cooldown("g", &[addr], "60s")
                .append(&format!("all_down = \"{setting}\"")),
        );
        let mut c = apex.client();
        assert_apex_status(&c.request(&get("h", "/")), 502);
        // The server comes back within its cooldown.
        let back = Upstream::start_on(TcpListener::bind(addr).unwrap(), |mut c| {
            while c.read_request().is_some() {
                if c.write(&ok("back")).is_err() {
                    break;
                }
            }
        });
        let mut c = apex.client();
        let r = c.request(&get("h", "/"));
        assert_eq!(r.status, want, "all_down = {setting:?}: {}", r.head_str());
        assert_eq!(back.accepts(), usize::from(want == 200), "all_down = {setting:?}");
    }
}

#[test]
fn a_server_failing_its_health_check_is_out_until_it_passes_again() {
    let sick = Arc::new(AtomicBool::new(false));
    let flag = sick.clone();
    let a = Upstream::http(move |r| match r.target.as_str() {
        "/healthz" if flag.load(SeqCst) => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec(),
        "/healthz" => ok("fine"),
        _ => ok("a"),
    });
    let b = Upstream::http(|r| ok(if r.target == "/healthz" { "fine" } else { "b" }));
    let apex = Apex::start(&Config::new().workers(2).route("app.test", "/", "g").group("g", &[a.addr, b.addr]).append(
        r#"health = { path = "/healthz", every = "50ms", timeout = "1s", expect = "2xx", rise = 2, fall = 2 }"#,
    ));
    let ten = || (0..10).map(|_| body_of(&apex, "app.test")).collect::<Vec<_>>();
    assert!(ten().contains(&"a".to_string()), "both serve at first");

    sick.store(true, SeqCst);
    apex.wait_stderr(&format!("upstream {}: health check failed 2 times (status 503, want 2xx)", a.addr), 1);
    let got = ten();
    assert!(got.iter().all(|b| b == "b"), "out by its check: {got:?}");

    sick.store(false, SeqCst);
    apex.wait_stderr(&format!("upstream {}: health check passed 2 times", a.addr), 1);
    assert!(ten().contains(&"a".to_string()), "back in");

    // The checks asked the configured path with the routed host.
    let checks: Vec<Req> = a.requests().into_iter().filter(|r| r.target == "/healthz").collect();
    assert!(checks.len() >= 4, "{} checks", checks.len());
    assert!(checks.iter().all(|r| r.header("host") == Some("app.test")), "{:?}", checks[0].headers);
    assert!(!b.requests().iter().any(|r| r.target == "/healthz" && r.header("host") != Some("app.test")));
}

/// A reload keeps each remaining server's health: one that is out stays out, without every
/// worker probing it again.
#[test]
fn a_reload_keeps_a_server_out() {
    let dead = dead_addr();
    let text = Config::new().route("*", "/", "g").group_cooldown("g", &[dead], "60s").render();
    let apex = Apex::start_toml(&text);
    let mut c = apex.client();
    assert_apex_status(&c.request(&get("h", "/")), 502);
    apex.wait_stderr(&format!("upstream {dead}: connect"), 1);
    std::fs::write(&apex.conf, format!("{text}\n# reloaded\n")).unwrap();
    apex.signal("HUP");
    apex.wait_stderr("apex: info: reloaded", 1);
    let mut c = apex.client();
    assert_apex_status(&c.request(&get("h", "/")), 502);
    thread::sleep(ms(500)); // the worker logs ship every 100 ms
    let log = apex.stderr();
    assert_eq!(log.matches(&format!("upstream {dead}: connect")).count(), 1, "no new connect after the reload:\n{log}");
}

/// A server back in after failing its check gets `slow_start`: its share of new requests
/// starts as if its weight were a twentieth of the other's (about 1 in 21), where without it
/// it takes every other request at once.
#[test]
fn a_server_back_in_ramps_up_over_slow_start() {
    for (slow_start, range) in [(Some("60s"), 1..=60), (None, 200..=200)] {
        let sick = Arc::new(AtomicBool::new(true));
        let flag = sick.clone();
        let a = Upstream::http(move |r| match r.target.as_str() {
            "/healthz" if flag.load(SeqCst) => {
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec()
            }
            "/healthz" => ok("fine"),
            _ => ok("a"),
        });
        let b = Upstream::http(|r| ok(if r.target == "/healthz" { "fine" } else { "b" }));
        let mut group = String::from(
            r#"health = { path = "/healthz", every = "50ms", timeout = "1s", expect = "2xx", rise = 1, fall = 1 }"#,
        );
        if let Some(s) = slow_start {
            group += &format!("\nslow_start = \"{s}\"");
        }
        let apex = Apex::start(&Config::new().route("app.test", "/", "g").group("g", &[a.addr, b.addr]).append(&group));
        apex.wait_stderr(&format!("upstream {}: health check failed 1 times", a.addr), 1);
        sick.store(false, SeqCst);
        apex.wait_stderr(&format!("upstream {}: health check passed 1 times", a.addr), 1);
        let mut c = apex.client();
        let to_a = (0..400)
            .filter(|_| {
                let r = c.request(&get("app.test", "/"));
                assert_eq!(r.status, 200);
                r.body_str() == "a"
            })
            .count();
        assert!(range.contains(&to_a), "slow_start {slow_start:?}: {to_a} of 400 to the server back in");
    }
}
