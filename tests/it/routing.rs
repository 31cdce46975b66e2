//! Routing: host specificity (exact > longest *.suffix > "*"), then longest path prefix;
//! 404 without a match; round-robin and passive health over a group's servers.

use crate::harness::*;

fn named(name: &'static str) -> Upstream {
    Upstream::ok(name)
}

struct Routed {
    apex: Apex,
    _ups: Vec<Upstream>,
}

fn routed() -> Routed {
    let names = ["any", "any_api", "exact", "exact_xy", "wild", "wild_b", "test_wild"];
    let ups: Vec<Upstream> = names.iter().map(|n| named(n)).collect();
    let mut cfg = Config::new()
        .route("*", "/", "any")
        .route("*", "/api", "any_api")
        .route("example.com", "/", "exact")
        .route("example.com", "/x/y", "exact_xy")
        .route("*.example.com", "/", "wild")
        .route("*.b.example.com", "/", "wild_b")
        .route("*.test.org", "/", "test_wild");
    for (n, u) in names.iter().zip(&ups) {
        cfg = cfg.group(n, &[u.addr]);
    }
    Routed { apex: Apex::start(&cfg), _ups: ups }
}

fn route_of(apex: &Apex, host: &str, path: &str) -> String {
    let r = apex.client().request(&get(host, path));
    assert_eq!(r.status, 200, "{host}{path}: {}", r.head_str());
    r.body_str()
}

#[test]
fn exact_host_wins_over_wildcards_and_star() {
    let t = routed();
    assert_eq!(route_of(&t.apex, "example.com", "/foo"), "exact");
    // host specificity comes before path length: "*" has /api, example.com has only "/"
    assert_eq!(route_of(&t.apex, "example.com", "/api/v1"), "exact");
}

#[test]
fn longest_path_prefix_within_host() {
    let t = routed();
    assert_eq!(route_of(&t.apex, "example.com", "/x/y/z"), "exact_xy");
    assert_eq!(route_of(&t.apex, "example.com", "/x/"), "exact");
    assert_eq!(route_of(&t.apex, "other.org", "/api/items"), "any_api");
    assert_eq!(route_of(&t.apex, "other.org", "/z"), "any");
}

#[test]
fn host_is_case_insensitive_and_port_ignored() {
    let t = routed();
    assert_eq!(route_of(&t.apex, "EXAMPLE.Com:8080", "/foo"), "exact");
    assert_eq!(route_of(&t.apex, "A.Example.COM:81", "/"), "wild");
}

#[test]
fn wildcard_matches_subdomains_and_longest_suffix_wins() {
    let t = routed();
    assert_eq!(route_of(&t.apex, "a.example.com", "/"), "wild");
    assert_eq!(route_of(&t.apex, "x.a.example.com", "/"), "wild");
    assert_eq!(route_of(&t.apex, "a.b.example.com", "/"), "wild_b");
    assert_eq!(route_of(&t.apex, "z.a.b.example.com", "/"), "wild_b");
}

#[test]
fn wildcard_does_not_match_bare_domain() {
    let t = routed();
    assert_eq!(route_of(&t.apex, "test.org", "/"), "any");
    assert_eq!(route_of(&t.apex, "www.test.org", "/"), "test_wild");
}

#[test]
fn no_matching_route_is_404_from_apex() {
    let up = Upstream::ok("x");
    let apex = Apex::start(
        &Config::new().route("example.com", "/", "app").route("*", "/only", "app").group("app", &[up.addr]),
    );
    let mut c = apex.client();
    let r = c.request(&get("other.org", "/"));
    assert_apex_status(&r, 404);
    let mut c = apex.client();
    let r = c.request(&get("example.org", "/only/x"));
    assert_eq!(r.status, 200, "{}", r.head_str());
    let mut c = apex.client();
    let r = c.request(&get("nomatch.org", "/else"));
    assert_apex_status(&r, 404);
    assert_eq!(up.requests().len(), 1, "only the routed request reaches the upstream");
}

#[test]
fn round_robin_over_group_servers() {
    let a = Upstream::ok("a");
    let b = Upstream::ok("b");
    let apex = Apex::start(&Config::new().route("*", "/", "g").group("g", &[a.addr, b.addr]));
    let mut seen = vec![];
    for _ in 0..6 {
        let mut c = apex.client();
        let r = c.request(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200);
        seen.push(r.body_str());
    }
    for w in seen.windows(2) {
        assert_ne!(w[0], w[1], "round robin must alternate: {seen:?}");
    }
    assert_eq!(a.requests().len(), 3);
    assert_eq!(b.requests().len(), 3);
}

#[test]
fn refused_server_is_skipped_and_request_goes_to_next() {
    let live = Upstream::ok("live");
    let dead = dead_addr();
    let apex = Apex::start(&Config::new().route("*", "/", "g").group_cooldown("g", &[dead, live.addr], "10s"));
    for i in 0..4 {
        let mut c = apex.client();
        let r = c.request(&get("h", &format!("/{i}")));
        assert_eq!(r.status, 200, "request {i}: {}", r.head_str());
        assert_eq!(r.body_str(), "live");
    }
    assert_eq!(live.requests().len(), 4);
}

#[test]
fn all_servers_down_is_502() {
    let apex = Apex::start(&Config::new().route("*", "/", "g").group("g", &[dead_addr(), dead_addr()]));
    let mut c = apex.client();
    let r = c.request(&get("h", "/"));
    assert_apex_status(&r, 502);
}
