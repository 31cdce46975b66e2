//! A route's `retry = { attempts, on }` (issue #17): which failures send a request on to the
//! next server, how many servers it may go to, that only requests safe to repeat are sent
//! again (RFC 9110 §9.2.2), and the budget that keeps retries under a fifth of what a group
//! has in flight. One worker throughout, so that round-robin's order is known: the first
//! request of a run goes to the group's first server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::thread;

use crate::harness::*;

const UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nsick";

/// A server that answers every request 503.
fn sick() -> Upstream {
    Upstream::http(|_| UNAVAILABLE.to_vec())
}

/// Apex with one route to group "g" of `servers`, the route's own lines `route` (a `retry`).
fn apex(servers: &[std::net::SocketAddr], route: &str) -> Apex {
    Apex::start(&Config::new().route("*", "/", "g").route_extra(route).group("g", servers))
}

fn post(body: &str) -> Vec<u8> {
    format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// A 503 from one server is answered by the next for a GET (and a HEAD), never for a POST;
/// without `retry` the 503 is the client's.
#[test]
fn a_503_sends_an_idempotent_request_to_the_next_server() {
    let (a, b) = (sick(), Upstream::ok("b"));
    let apex = apex(&[a.addr, b.addr], r#"retry = { attempts = 2, on = ["503"] }"#);
    let mut c = apex.client();
    for _ in 0..6 {
        let r = c.request(&get("h", "/"));
        assert_eq!((r.status, r.body_str()), (200, "b".into()), "{}", r.head_str());
    }
    c.send(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n");
    let head = c.read_head_response();
    assert_eq!(head.status, 200, "{}", head.head_str());
    let to_a = a.requests().len();
    assert!(to_a >= 3, "round-robin sent a its turns ({to_a}), each retried on b");
    assert_eq!(b.requests().len(), 7, "every request ended on b");

    // A POST is not safe to repeat: the 503 goes to the client when a has it.
    let mut statuses = vec![];
    for _ in 0..4 {
        let r = c.request(&post("x"));
        statuses.push(r.status);
    }
    let posts_on_a = a.requests().iter().filter(|r| r.method == "POST").count();
    let posts_on_b = b.requests().iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts_on_a + posts_on_b, 4, "each POST went out once: {statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), posts_on_a, "{statuses:?}");
    assert!(posts_on_a >= 1, "round-robin gave a POST to a");
    apex.wait_stderr(&format!("upstream {}: answered 503; retried", a.addr), 1);

    // The same group without `retry`: a's 503 is the answer.
    let plain = Apex::start(&Config::new().route("*", "/", "g").group("g", &[a.addr, b.addr]));
    let mut c = plain.client();
    let got: Vec<u16> = (0..4).map(|_| c.request(&get("h", "/")).status).collect();
    assert_eq!(got, [503, 200, 503, 200]);
}

/// `attempts` counts servers, the first included: with every server sick, each GET goes to
/// exactly that many and the last 503 is the answer.
#[test]
fn attempts_bounds_the_servers_a_request_goes_to() {
    let sick3 = [sick(), sick(), sick()];
    let addrs: Vec<_> = sick3.iter().map(|s| s.addr).collect();
    for attempts in [1, 2, 3] {
        let apex = apex(&addrs, &format!(r#"retry = {{ attempts = {attempts}, on = ["503"] }}"#));
        let before: usize = sick3.iter().map(|s| s.requests().len()).sum();
        let mut c = apex.client();
        for _ in 0..5 {
            let r = c.request(&get("h", "/"));
            assert_eq!((r.status, r.body_str()), (503, "sick".into()), "the last server's answer");
        }
        let after: usize = sick3.iter().map(|s| s.requests().len()).sum();
        assert_eq!(after - before, 5 * attempts, "attempts = {attempts}");
    }
}

/// A server that takes the request and closes without a byte of answer: with `reset` in
/// `on` (the default list when `retry` is given) the GET goes to the next server; without
/// `retry`, 502.
#[test]
fn a_connection_that_fails_before_a_response_is_retried_with_reset() {
    let drop_it = || {
        Upstream::start(|mut c| {
            let _ = c.read_head();
        })
    };
    for (route, want) in [(r#"retry = { on = ["reset"] }"#, 200), ("retry = { attempts = 2 }", 200), ("", 502)] {
        let (a, b) = (drop_it(), Upstream::ok("b"));
        // No cooldown: a stays in the rotation after it fails.
        let apex = Apex::start(&Config::new().route("*", "/", "g").route_extra(route).group_cooldown(
            "g",
            &[a.addr, b.addr],
            "0s",
        ));
        let mut c = apex.client();
        let r = c.request(&get("h", "/"));
        assert_eq!(r.status, want, "{route:?}: {}", r.head_str());
        assert_eq!(a.accepts(), 1, "{route:?}: the first try went to a");
        if want == 200 {
            assert_eq!(r.body_str(), "b");
            // A POST is never sent twice: a has its turn, fails it, and that is the answer.
            let r = apex.client().request(&post("once"));
            assert_eq!(r.status, 502, "{route:?}: {}", r.head_str());
            assert_eq!(a.accepts(), 2, "{route:?}");
            assert!(b.requests().iter().all(|r| r.method == "GET"), "{route:?}: the POST did not reach b");
        }
    }
}

/// No response head within `upstream_head`: with `timeout` in `on`, the next server answers;
/// without, 504.
#[test]
fn a_timeout_is_retried_only_when_listed() {
    for (on, want) in [(r#"["timeout"]"#, 200), (r#"["reset"]"#, 504)] {
        let (a, b) = (Upstream::silent(), Upstream::ok("b"));
        let apex = apex(&[a.addr, b.addr], &format!("upstream_head = \"300ms\"\nretry = {{ on = {on} }}"));
        let r = apex.client().request(&get("h", "/"));
        assert_eq!(r.status, want, "on = {on}: {}", r.head_str());
    }
}

/// A failed connect moves on to the next server by default (nothing was sent) and with
/// `connect` listed; a `retry` without it answers 502 at once.
#[test]
fn a_failed_connect_moves_on_unless_retry_leaves_connect_out() {
    for (route, want) in [("", 200), (r#"retry = { on = ["connect"] }"#, 200), (r#"retry = { on = ["503"] }"#, 502)] {
        let (dead, live) = (dead_addr(), Upstream::ok("live"));
        let apex = apex(&[dead, live.addr], route);
        let r = apex.client().request(&get("h", "/"));
        assert_eq!(r.status, want, "{route:?}: {}", r.head_str());
    }
}

/// The budget: of 60 GETs in flight at once, the 30 or so that a answers 503 may not all go to b.
/// Retries stay under a fifth of the group's requests in flight (here at most 60 / 5 = 12),
/// and at least 3 (the floor) are let through. Without it every one of the 30 would be sent
/// twice.
#[test]
fn retries_stay_within_the_budget() {
    let a = Upstream::http(|_| {
        thread::sleep(ms(300));
        UNAVAILABLE.to_vec()
    });
    let b = Upstream::http(|_| {
        thread::sleep(ms(1500));
        ok("b")
    });
    let apex = Arc::new(apex(&[a.addr, b.addr], r#"retry = { attempts = 2, on = ["503"] }"#));
    let (ok200, got503) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..60)
        .map(|_| {
            let (apex, ok200, got503) = (apex.clone(), ok200.clone(), got503.clone());
            thread::spawn(move || {
                let r = apex.client().request(&get("h", "/"));
                match r.status {
                    200 => ok200.fetch_add(1, SeqCst),
                    503 => got503.fetch_add(1, SeqCst),
                    s => panic!("status {s}"),
                };
            })
        })
        .collect();
    for t in clients {
        t.join().unwrap();
    }
    let (ok200, got503) = (ok200.load(SeqCst), got503.load(SeqCst));
    assert_eq!(ok200 + got503, 60);
    // a never gets a retry (it is the one each retry left), b never fails: every request
    // beyond the 60 is a retry of one of a's 503s, and each ended 200 on b.
    let (to_a, to_b) = (a.requests().len(), b.requests().len());
    let retried = to_a + to_b - 60;
    assert_eq!(ok200, to_b);
    assert!(to_a >= 20, "round-robin sent a its share: {to_a}");
    assert!((3..=12).contains(&retried), "{retried} of a's {to_a} 503s retried (budget: 3 to 12)");
}

/// A route's `retry` is checked at load, and `--check` shows it.
#[test]
fn retry_settings_are_checked() {
    let dir = TempDir::new("retry-check");
    let base = "listen = [\"127.0.0.1:0\"]\n[upstream.g]\nservers = [\"127.0.0.1:9\"]\n[[route]]\nupstream = \"g\"\n";
    for (line, want) in [
        ("retry = { attempts = 0 }", "retry attempts 0: want 1 to 64"),
        ("retry = { attempts = 65 }", "retry attempts 65"),
        (r#"retry = { on = ["418"] }"#, "retry on \"418\": want some of connect, reset, timeout, 500, 502, 503, 504"),
        ("retry = { tries = 2 }", "unknown field `tries`"),
    ] {
        let conf = dir.write("bad.toml", &format!("{base}{line}\n"));
        let (code, _, err) = run_apex(&["--check", conf.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{line}: {err}");
        assert!(err.contains(want), "{line}: {err}");
    }
    let conf = dir.write("good.toml", &format!("{base}retry = {{ attempts = 3, on = [\"connect\", \"503\"] }}\n"));
    let (code, out, err) = run_apex(&["--check", conf.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(r#"retry = { attempts = 3, on = ["connect", "503"] }"#), "{out}");
}

/// Three real nginx servers, eight keep-alive clients sending GETs as fast as they can, and one
/// server killed (SIGKILL) in the middle: with `retry` (connect and reset), no GET is lost.
/// Requests in flight on the dead server's pooled connections are retried on a fresh one;
/// requests sent on a fresh connection it had accepted go to the next server; new requests
/// find its port closed and move on. Its share goes to the other two.
#[test]
fn killing_one_of_three_nginx_under_load_loses_no_get() {
    let start = |name: &str| nginx_with(|addr| format!("listen {addr};\nlocation / {{ return 200 \"{name}\"; }}"));
    let (Some(n0), Some(mut n1), Some(n2)) = (start("n0"), start("n1"), start("n2")) else {
        eprintln!("SKIPPED: nginx is not installed");
        return;
    };
    let apex = Arc::new(Apex::start(
        &Config::new()
            .workers(2)
            .route("*", "/", "g")
            .route_extra("retry = { attempts = 3 }")
            .group("g", &[n0.addr, n1.addr, n2.addr]),
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (apex, stop) = (apex.clone(), stop.clone());
            thread::spawn(move || {
                let mut c = apex.client();
                let mut seen: Vec<(u16, String)> = vec![];
                while !stop.load(SeqCst) {
                    let r = c.request(&get("h", "/"));
                    seen.push((r.status, r.body_str()));
                }
                seen
            })
        })
        .collect();
    thread::sleep(ms(700));
    n1.kill();
    thread::sleep(ms(1000));
    stop.store(true, SeqCst);
    let seen: Vec<(u16, String)> = clients.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let bad: Vec<_> = seen.iter().filter(|(s, _)| *s != 200).collect();
    assert!(bad.is_empty(), "{} of {} GETs failed: {:?}", bad.len(), seen.len(), &bad[..bad.len().min(5)]);
    let by = |name: &str| seen.iter().filter(|(_, b)| b == name).count();
    assert!(by("n1") > 0 && by("n0") > 0 && by("n2") > 0, "all three served before the kill");
    assert!(by("n0") + by("n2") > by("n1"), "the other two took n1's share after it");
    drop((n0, n2));
}
