//! Upstream servers by name (issue #17): resolved at start and on reload, then every
//! `resolve_every` on a background thread; a change moves traffic, a failed lookup keeps the
//! last good addresses. Apex runs in a mount namespace of its own whose /etc/hosts is a file
//! the test writes (`unshare -m`, as root, as CI runs): nothing outside the test sees it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use crate::harness::*;

/// An upstream on 127.0.0.N:port, answering `body`.
fn on(ip: &str, port: u16, body: &'static str) -> Upstream {
    let l = TcpListener::bind(format!("{ip}:{port}")).unwrap();
    Upstream::start_on(l, move |mut c| {
        while c.read_request().is_some() {
            if c.write(&ok(body)).is_err() {
                break;
            }
        }
    })
}

fn conf(port: u16, extra: &str) -> String {
    format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 2\nresolve_every = \"100ms\"\n{extra}\n[[route]]\nupstream = \"app\"\n\
         [upstream.app]\nservers = [\"app.apex-test:{port}\"]\ncooldown = \"100ms\"\n"
    )
}

/// `apex --check conf` with `hosts` as its /etc/hosts (see `Apex::start_with_hosts`).
fn check_with_hosts(hosts: &Path, conf: &Path) -> Output {
    Command::new("unshare")
        .args(["-m", "sh", "-c", "mount --bind \"$0\" /etc/hosts && exec \"$1\" --check \"$2\""])
        .arg(hosts)
        .arg(APEX)
        .arg(conf)
        .output()
        .unwrap()
}

fn body(apex: &Apex) -> String {
    let r = apex.client().request(&get("h", "/"));
    assert_eq!(r.status, 200, "{}", r.head_str());
    r.body_str()
}

#[test]
fn a_name_resolves_at_start_and_traffic_follows_its_changes() {
    let a = on("127.0.0.2", 0, "a");
    let port = a.addr.port();
    let b = on("127.0.0.3", port, "b");
    let dir = TempDir::new("hosts");
    let hosts = dir.write("hosts", "127.0.0.2 app.apex-test\n");
    let apex = Apex::start_with_hosts(&conf(port, ""), &hosts);
    for _ in 0..4 {
        assert_eq!(body(&apex), "a");
    }
    // The name moves to b: written in place (a bind mount follows the file, not its name).
    std::fs::write(&hosts, "127.0.0.3 app.apex-test\n").unwrap();
    apex.wait_stderr("app.apex-test", 1);
    apex.wait_stderr("now resolves to 127.0.0.3", 1);
    for _ in 0..6 {
        assert_eq!(body(&apex), "b", "after the change:\n{}", apex.stderr());
    }
    // Both addresses: both serve.
    std::fs::write(&hosts, "127.0.0.2 app.apex-test\n127.0.0.3 app.apex-test\n").unwrap();
    apex.wait_stderr("now resolves to 127.0.0.2:", 1);
    let seen: std::collections::BTreeSet<String> = (0..6).map(|_| body(&apex)).collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    // A failed lookup keeps the last good set.
    std::fs::write(&hosts, "# nothing\n").unwrap();
    apex.wait_stderr("keeping the last addresses", 1);
    let seen: std::collections::BTreeSet<String> = (0..6).map(|_| body(&apex)).collect();
    assert_eq!(seen.len(), 2, "still both: {seen:?}");
    drop(b);
}

#[test]
fn a_name_that_does_not_resolve_at_start_is_a_config_error_naming_it() {
    let dir = TempDir::new("hosts");
    let hosts = dir.write("hosts", "# nothing\n");
    let conf_path = dir.write("apex.toml", &conf(8080, ""));
    let out = check_with_hosts(&hosts, &conf_path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("app.apex-test:8080") && err.contains("cannot resolve"), "{err}");
}

#[test]
fn check_prints_what_a_name_resolves_to() {
    let dir = TempDir::new("hosts");
    let hosts = dir.write("hosts", "127.0.0.7 app.apex-test\n127.0.0.8 app.apex-test\n");
    let conf_path = dir.write("apex.toml", &conf(8080, ""));
    let out = check_with_hosts(&hosts, &conf_path);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("servers = [\"app.apex-test:8080\"]")
            && text.contains("# app.apex-test:8080 -> 127.0.0.7:8080, 127.0.0.8:8080"),
        "{text}"
    );
}

/// An address a name gains is its own `server` in /metrics from its first request, without a
/// reload (the resolver assigns its slot when it publishes the new addresses).
#[test]
fn an_address_a_name_gains_has_its_own_metrics_series() {
    use crate::metrics::{ADMIN, admin_addr, admin_get};
    let a = on("127.0.0.2", 0, "a");
    let port = a.addr.port();
    let b = on("127.0.0.3", port, "b");
    let dir = TempDir::new("hosts");
    let hosts = dir.write("hosts", "127.0.0.2 app.apex-test\n");
    let apex = Apex::start_with_hosts(&conf(port, ADMIN), &hosts);
    let admin = admin_addr(&apex);
    assert_eq!(body(&apex), "a");
    std::fs::write(&hosts, "127.0.0.3 app.apex-test\n").unwrap();
    apex.wait_stderr("now resolves to 127.0.0.3", 1);
    for _ in 0..3 {
        assert_eq!(body(&apex), "b");
    }
    let series =
        |addr: std::net::SocketAddr| format!("apex_upstream_responses_total{{server=\"{addr}\",class=\"2xx\"}} ");
    // Counters reach a scrape within a worker's next batch: wait for them, then check exactly.
    let text = || admin_get(admin, "/metrics", "").body_str();
    assert!(wait_until(ms(5000), || text().contains(&format!("{}3", series(b.addr)))), "{}", text());
    assert!(text().contains(&format!("{}1", series(a.addr))), "{}", text());
    assert!(!text().contains("(other)"), "{}", text());
}
