//! The client address and the limits on it (issue #18): X-Forwarded-For believed only from
//! `trusted_proxies` (walked right to left), replaced otherwise; per-route `rate` (429 with
//! Retry-After) counted, never timed; `limits.connections_per_ip` at accept. Distinct clients
//! come from distinct loopback addresses (127.0.0.0/8, bound before connect) or, through a
//! trusted peer, from X-Forwarded-For.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Apex in front of `up` with `top` (top-level keys) and one route to "app" carrying `route`.
fn apex_with(up: &Upstream, top: &str, route: &str, workers: u32) -> Apex {
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = {workers}\n{top}\n[[route]]\nupstream = \"app\"\n{route}\n\
         [[route]]\npath = \"/open\"\nupstream = \"app\"\n[upstream.app]\nservers = [\"{}\"]\n",
        up.addr
    );
    Apex::start_toml(&text)
}

fn req(path: &str, xff: &[&str]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: h\r\n");
    for v in xff {
        r += &format!("X-Forwarded-For: {v}\r\n");
    }
    r += "\r\n";
    r.into_bytes()
}

#[test]
fn xff_from_a_trusted_peer_names_the_client() {
    let up = xff_upstream();
    let apex = apex_with(&up, "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]", "allow = [\"203.0.113.0/24\"]", 1);
    let mut c = apex.client();
    for (path, xff, client) in [
        ("/one", &["203.0.113.9"][..], "203.0.113.9"),
        // Right to left, trusted hops skipped; what is left of the client is not believed.
        ("/chain", &["198.51.100.1, 203.0.113.9, 10.1.2.3, 127.0.0.1"][..], "203.0.113.9"),
        // Several lines are one list (RFC 9110 §5.3).
        ("/lines", &["198.51.100.1", "203.0.113.9 ,, 10.0.0.2"][..], "203.0.113.9"),
        ("/six", &["2001:db8::7"][..], "2001:db8::7"),
    ] {
        let r = c.request(&req(path, xff));
        let r = if client.contains(':') {
            // Outside the route's allow list: refused on the address X-Forwarded-For named.
            assert_apex_status(&r, 403);
            c.request(&req(&format!("/open{path}"), xff))
        } else {
            r
        };
        assert_eq!((r.status, r.body_str().as_str()), (200, client), "{path}: {}", r.head_str());
        let p = if client.contains(':') { format!("/open{path}") } else { path.to_string() };
        assert!(logged(&apex, &p).starts_with(&format!("{client} ")), "{path}: {}", logged(&apex, &p));
    }
    // A malformed entry stops the walk: the last trusted hop stands, and it is not in `allow`.
    for (path, xff) in [("/bad-port", "203.0.113.9:80"), ("/bad-after", "203.0.113.9, 10.0.0.1:1, 10.0.0.2")] {
        let r = c.request(&req(&format!("/open{path}"), &[xff]));
        let want = if path == "/bad-port" { "127.0.0.1" } else { "10.0.0.2" };
        assert_eq!((r.status, r.body_str().as_str()), (200, want), "{path}");
        assert_apex_status(&c.request(&req(path, &[xff])), 403);
    }
    // No X-Forwarded-For from a trusted peer: the peer is the client.
    let r = c.request(&req("/open/none", &[]));
    assert_eq!(r.body_str(), "127.0.0.1");
}

#[test]
fn xff_from_an_untrusted_peer_is_replaced() {
    let up = xff_upstream();
    let apex = apex_with(&up, "trusted_proxies = [\"10.0.0.0/8\"]", "allow = [\"203.0.113.0/24\"]", 1);
    let mut c = apex.client();
    let forged = &["203.0.113.9", "198.51.100.1"][..];
    // A forged address neither passes `allow` nor reaches the upstream or the log.
    assert_apex_status(&c.request(&req("/", forged)), 403);
    let r = c.request(&req("/open/forged", forged));
    assert_eq!((r.status, r.body_str().as_str()), (200, "127.0.0.1"), "{}", r.head_str());
    assert!(logged(&apex, "/open/forged").starts_with("127.0.0.1 "));
    assert_eq!(up.requests().last().unwrap().headers_named("x-forwarded-for"), ["127.0.0.1"]);
}

#[test]
fn forwarded_for_append_keeps_the_chain() {
    let up = xff_upstream();
    let apex = apex_with(&up, "forwarded_for = \"append\"", "", 1);
    let r = apex.client().request(&req("/", &["203.0.113.9", "198.51.100.1"]));
    assert_eq!(r.body_str(), "203.0.113.9, 198.51.100.1, 127.0.0.1");
    // Appended, not believed: the log has the peer.
    assert!(logged(&apex, "/").starts_with("127.0.0.1 "));
}

#[test]
fn over_the_rate_is_429_with_retry_after() {
    let up = Upstream::ok("ok");
    let apex = apex_with(&up, "trusted_proxies = [\"127.0.0.2\"]", "rate = \"1/m\"\nburst = 2", 1);
    let mut c = apex.client();
    for _ in 0..2 {
        assert_eq!(c.request(&get("h", "/")).status, 200);
    }
    let r = c.request(&get("h", "/"));
    assert_apex_status(&r, 429);
    assert_eq!(r.body_str(), "429 Too Many Requests\n");
    let after: u32 = r.header("retry-after").expect("Retry-After").parse().expect("delay-seconds");
    assert!((1..=60).contains(&after), "Retry-After {after}: the next token is due within a minute");
    assert!(!r.has_token("connection", "close"), "a 429 keeps the connection: {}", r.head_str());
    assert_eq!(c.request(&get("h", "/open")).status, 200, "another route has no limit");
    assert_eq!(up.requests().len(), 3, "the refused request never went upstream");
    // Another address has its own bucket: a socket of its own, or X-Forwarded-For from a trusted peer.
    let mut other = Client::connect_from(Ipv4Addr::new(127, 0, 0, 3), apex.addr);
    assert_eq!(other.request(&get("h", "/")).status, 200);
    let mut proxy = Client::connect_from(Ipv4Addr::new(127, 0, 0, 2), apex.addr);
    for who in ["203.0.113.1", "203.0.113.2"] {
        for want in [200, 200, 429] {
            assert_eq!(proxy.request(&req("/", &[who])).status, want, "{who}");
        }
    }
    // HEAD gets the head only.
    c.send(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!((r.status, r.body.len()), (429, 0));
    let logged_429 = || apex.stdout_lines().iter().any(|l| l.contains("\" 429 "));
    assert!(wait_until(Duration::from_secs(5), logged_429), "logged as 429");
}

/// Sends requests one after another on `conns` keep-alive connections (one thread each) for
/// about `secs`; returns (accepted, refused, elapsed): elapsed from before the first send to
/// after the last answer, so it covers every instant Apex decided at.
fn hammer(addr: std::net::SocketAddr, conns: usize, secs: f64) -> (u64, u64, f64) {
    let t0 = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let (mut ok, mut no) = (0u64, 0u64);
                while t0.elapsed().as_secs_f64() < secs {
                    match c.request(&get("h", "/")).status {
                        200 => ok += 1,
                        429 => no += 1,
                        s => panic!("status {s}"),
                    }
                }
                (ok, no)
            })
        })
        .collect();
    let (mut ok, mut no) = (0, 0);
    for t in threads {
        let (a, b) = t.join().unwrap();
        ok += a;
        no += b;
    }
    (ok, no, t0.elapsed().as_secs_f64())
}

#[test]
fn rate_limit_accepts_at_most_burst_plus_rate_times_elapsed() {
    let (rate, burst) = (20.0, 5u64);
    let up = Upstream::ok("ok");
    let apex = apex_with(&up, "", "rate = \"20/s\"\nburst = 5", 1);
    let (ok, no, elapsed) = hammer(apex.addr, 2, 1.5);
    let bound = burst + (rate * elapsed).ceil() as u64;
    eprintln!("rate 20/s burst 5, 1 worker: {ok} accepted, {no} refused in {elapsed:.3} s (bound {bound})");
    assert!(ok <= bound, "{ok} accepted in {elapsed:.3} s: over burst + rate x elapsed = {bound}");
    assert!(ok >= burst, "{ok}: the burst at least");
    assert!(no > 0, "sent as fast as possible, some must be refused");
    assert_eq!(up.requests().len() as u64, ok);
}

/// Per-worker buckets: with W workers a client spreading connections over them gets up to W
/// times the limit (README). Measured here, bounded by W x (burst + rate x elapsed).
#[test]
fn rate_limit_per_worker_is_at_most_workers_times_the_limit() {
    let (rate, burst, workers) = (20.0, 5u64, 2u64);
    let up = Upstream::ok("ok");
    let apex = apex_with(&up, "", "rate = \"20/s\"\nburst = 5", workers as u32);
    let (ok, no, elapsed) = hammer(apex.addr, 8, 1.5);
    let one = burst + (rate * elapsed).ceil() as u64;
    eprintln!(
        "rate 20/s burst 5, {workers} workers, 8 connections: {ok} accepted, {no} refused in {elapsed:.3} s \
         (one worker's bound {one}, {:.2}x it)",
        ok as f64 / one as f64
    );
    assert!(ok <= workers * one, "{ok} over {workers} x {one}");
    assert!(no > 0);
}

#[test]
fn connections_per_ip_are_refused_at_accept_without_a_byte() {
    let up = Upstream::ok("ok");
    let apex = Apex::start(&Config::to(up.addr).limit("connections_per_ip", "2"));
    let mut a = apex.client();
    let mut b = apex.client();
    for c in [&mut a, &mut b] {
        assert_eq!(c.request(&get("h", "/")).status, 200);
    }
    // The third from the same address: closed unread, not a byte sent.
    let mut third = apex.client();
    let _ = third.try_send(&get("h", "/"));
    let (bytes, closed) = third.read_until_close(Duration::from_secs(5));
    assert!(closed && bytes.is_empty(), "closed: {closed}, got {:?}", String::from_utf8_lossy(&bytes));
    // Another address has its own count.
    let mut other = Client::connect_from(Ipv4Addr::new(127, 0, 0, 4), apex.addr);
    assert_eq!(other.request(&get("h", "/")).status, 200);
    // A closed connection gives its place back.
    drop(a);
    let again = wait_until(Duration::from_secs(5), || {
        let mut c = apex.client();
        c.try_send(&get("h", "/")).is_ok() && c.try_read_response(false).is_ok_and(|r| r.status == 200)
    });
    assert!(again, "a place freed by a close is given again");
    assert_eq!(b.request(&get("h", "/")).status, 200, "the connections kept are untouched");
    apex.wait_stderr("limits.connections_per_ip reached: refused at accept", 1);
}

#[test]
fn connections_per_ip_spare_trusted_proxies() {
    let up = Upstream::ok("ok");
    let cfg = Config::to(up.addr).limit("connections_per_ip", "1");
    let apex = Apex::start_toml(&format!("trusted_proxies = [\"127.0.0.1\"]\n{}", cfg.render()));
    // A trusted proxy carries many clients: its connections are not counted.
    let mut cs: Vec<Client> = (0..3).map(|_| apex.client()).collect();
    for c in &mut cs {
        assert_eq!(c.request(&get("h", "/")).status, 200);
    }
    let mut one = Client::connect_from(Ipv4Addr::new(127, 0, 0, 5), apex.addr);
    assert_eq!(one.request(&get("h", "/")).status, 200);
    let mut two = Client::connect_from(Ipv4Addr::new(127, 0, 0, 5), apex.addr);
    let _ = two.try_send(&get("h", "/"));
    let (bytes, closed) = two.read_until_close(Duration::from_secs(5));
    assert!(closed && bytes.is_empty());
}

/// Behind a PROXY protocol balancer the client the header names is counted, not the balancer:
/// over the limit, the connection is closed right after the header, without a byte.
#[test]
fn connections_per_ip_count_the_client_a_proxy_header_names() {
    let up = Upstream::ok("ok");
    let cfg = Config::to(up.addr)
        .limit("connections_per_ip", "1")
        .append("[proxy_protocol]\nlisteners = [\"127.0.0.1:0\"]\ntrusted = [\"127.0.0.1\"]\n");
    let apex = Apex::start(&cfg);
    let open = |client: &str| {
        let mut c = apex.client();
        c.send(format!("PROXY TCP4 {client} 127.0.0.1 5000 80\r\n").as_bytes());
        c
    };
    let mut first = open("192.0.2.1");
    assert_eq!(first.request(&get("h", "/")).status, 200);
    let mut other = open("192.0.2.2");
    assert_eq!(other.request(&get("h", "/")).status, 200, "the balancer itself is not counted");
    let mut second = open("192.0.2.1");
    let _ = second.try_send(&get("h", "/"));
    let (bytes, closed) = second.read_until_close(Duration::from_secs(5));
    assert!(closed && bytes.is_empty(), "got {:?}", String::from_utf8_lossy(&bytes));
    apex.wait_stderr("limits.connections_per_ip reached: refused", 1);
}

/// `count` requests on one keep-alive connection from a trusted peer, X-Forwarded-For
/// naming a new address each (10.x.y.z from `first`), pipelined in batches.
fn many_addresses(apex: &Apex, first: u32, count: u32) {
    let mut c = apex.client();
    let mut i = 0;
    while i < count {
        let n = (count - i).min(500);
        let mut batch = Vec::new();
        for k in 0..n {
            let ip = Ipv4Addr::from(0x0B00_0000 + first + i + k);
            batch.extend_from_slice(&req("/", &[&ip.to_string()]));
        }
        c.send(&batch);
        for _ in 0..n {
            let r = c.read_response();
            assert!(r.status == 200 || r.status == 429, "{}", r.head_str());
        }
        i += n;
    }
}

fn rss_kib(apex: &Apex) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{}/status", apex.pid())).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Bounded memory whatever the number of addresses: past the table's size (65,536 slots of 32
/// bytes per worker), more addresses cost nothing.
#[test]
fn rate_table_memory_stays_flat_with_many_addresses() {
    let up = Upstream::ok("ok");
    let apex = apex_with(&up, "trusted_proxies = [\"127.0.0.1\"]", "rate = \"1/m\"\nburst = 1", 1);
    many_addresses(&apex, 0, 20_000);
    let before = rss_kib(&apex);
    many_addresses(&apex, 20_000, 60_000);
    let after = rss_kib(&apex);
    eprintln!("RSS after 20,000 addresses {before} KiB, after 80,000 {after} KiB");
    assert!(after <= before + 1024, "RSS grew {} KiB with 60,000 more addresses", after - before);
}

/// bench/per_ip_rss runs this: one million addresses through one worker's table.
#[test]
#[ignore = "slow: bench/per_ip_rss"]
fn rate_table_memory_with_a_million_addresses() {
    let up = Upstream::ok("ok");
    let apex = apex_with(&up, "trusted_proxies = [\"127.0.0.1\"]", "rate = \"1/m\"\nburst = 1", 1);
    let start = rss_kib(&apex);
    let mut done = 0;
    for step in [10_000u32, 90_000, 900_000] {
        let t = Instant::now();
        many_addresses(&apex, done, step);
        done += step;
        println!(
            "per_ip_rss: {done} addresses: VmRSS {} KiB (started at {start}), {:.1} s",
            rss_kib(&apex),
            t.elapsed().as_secs_f64()
        );
    }
}
