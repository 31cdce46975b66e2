//! Balancing per group (issue #17): weights, least requests, consistent hashing. Counts, never
//! timings; the distribution figures themselves are unit tests in src/balance.rs.

use std::thread;

use crate::harness::*;

fn group(servers: &str, extra: &str) -> String {
    format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n[[route]]\nupstream = \"g\"\n[upstream.g]\nservers = [{servers}]\n{extra}\n"
    )
}

#[test]
fn weights_share_requests_exactly() {
    let (a, b, c) = (Upstream::ok("a"), Upstream::ok("b"), Upstream::ok("c"));
    let apex = Apex::start_toml(&group(
        &format!("{{ addr = \"{}\", weight = 3 }}, \"{}\", {{ addr = \"{}\", weight = 1 }}", a.addr, b.addr, c.addr),
        "",
    ));
    let mut client = apex.client();
    let mut got = [0; 3];
    for _ in 0..50 {
        let r = client.request(&get("h", "/"));
        got[["a", "b", "c"].iter().position(|x| *x == r.body_str()).unwrap()] += 1;
    }
    assert_eq!(got, [30, 10, 10]);
}

/// A slow server holds its requests; least_requests sends the others to the fast one, where
/// round-robin would have sent it half.
#[test]
fn least_requests_avoids_a_server_with_requests_in_flight() {
    let slow = Upstream::http(|_| {
        thread::sleep(ms(600));
        ok("slow")
    });
    let fast = Upstream::ok("fast");
    let apex =
        Apex::start_toml(&group(&format!("\"{}\", \"{}\"", slow.addr, fast.addr), "balance = \"least_requests\""));
    let addr = apex.addr;
    let load: Vec<_> = (0..10)
        .map(|i| {
            thread::sleep(ms(30));
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                let r = c.request(&get("h", &format!("/{i}")));
                assert_eq!(r.status, 200);
                r.body_str()
            })
        })
        .collect();
    let bodies: Vec<String> = load.into_iter().map(|t| t.join().unwrap()).collect();
    let to_slow = bodies.iter().filter(|b| *b == "slow").count();
    assert!(to_slow <= 2, "{to_slow} of 10 went to the server with requests in flight: {bodies:?}");
}

#[test]
fn hash_keeps_each_key_on_one_server() {
    let ups: Vec<Upstream> = ["a", "b", "c"].into_iter().map(Upstream::ok).collect();
    let servers: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    for (on, req) in [
        (
            "header:X-User",
            (|k: usize| format!("GET / HTTP/1.1\r\nHost: h\r\nx-user: user{k}\r\n\r\n")) as fn(usize) -> String,
        ),
        ("cookie:sid", |k| format!("GET / HTTP/1.1\r\nHost: h\r\nCookie: theme=dark; sid=s{k}; x=1\r\n\r\n")),
    ] {
        let apex = Apex::start_toml(
            &group(&servers.join(", "), &format!("balance = \"hash\"\nhash_on = \"{on}\""))
                .replace("workers = 1", "workers = 2"),
        );
        let mut seen = std::collections::BTreeSet::new();
        for k in 0..20 {
            // Each on a new connection: either worker may have it.
            let first = apex.client().request(req(k).as_bytes()).body_str();
            for _ in 0..3 {
                assert_eq!(apex.client().request(req(k).as_bytes()).body_str(), first, "{on}: key {k} moved");
            }
            seen.insert(first);
        }
        assert!(seen.len() > 1, "{on}: 20 keys all on {seen:?}");
        // Without the key: round-robin.
        let mut c = apex.client();
        let bodies: std::collections::BTreeSet<String> = (0..3).map(|_| c.request(&get("h", "/")).body_str()).collect();
        assert_eq!(bodies.len(), 3, "{on}: requests without a key are spread");
    }
}

/// Every test client is 127.0.0.1: hashed on the client address, all go to one server.
#[test]
fn hash_on_client_ip_sends_one_client_to_one_server() {
    let ups: Vec<Upstream> = ["a", "b", "c"].into_iter().map(Upstream::ok).collect();
    let servers: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    let apex = Apex::start_toml(&group(&servers.join(", "), "balance = \"hash\""));
    let bodies: std::collections::BTreeSet<String> =
        (0..12).map(|_| apex.client().request(&get("h", "/")).body_str()).collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
}
