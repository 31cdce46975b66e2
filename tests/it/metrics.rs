//! The admin listener (#16): /metrics after a known mix of traffic, counted exactly; the
//! exposition checked by `promtool`; /status and /healthz; hostile input on the admin port.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::harness::*;
use crate::tls_kit::*;

pub const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// The admin address, from `TIME apex: info: admin on http://ADDR/ ...` on stderr.
pub fn admin_addr(apex: &Apex) -> SocketAddr {
    apex.wait_stderr("apex: info: admin on http://", 1);
    let err = apex.stderr();
    let line = err.lines().find_map(|l| l.split_once("apex: info: admin on http://")).unwrap().1;
    line.split('/').next().unwrap().parse().unwrap()
}

pub fn admin_get(addr: SocketAddr, path: &str, headers: &str) -> Response {
    let mut c = Client::connect(addr);
    c.request(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{headers}\r\n").as_bytes())
}

/// Series -> value, from a text exposition (`name{labels} value`).
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

struct Scrape(BTreeMap<String, f64>, String);

impl Scrape {
    fn take(addr: SocketAddr) -> Scrape {
        let r = admin_get(addr, "/metrics", "");
        assert_eq!(r.status, 200, "{}", r.head_str());
        assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
        let text = r.body_str();
        Scrape(parse(&text), text)
    }

    fn get(&self, series: &str) -> f64 {
        *self.0.get(series).unwrap_or_else(|| panic!("no series {series} in:\n{}", self.1))
    }

    fn eq(&self, series: &str, want: f64) {
        assert_eq!(self.get(series), want, "{series}\n{}", self.1);
    }
}

struct Mix {
    apex: Apex,
    _up: Upstream,
    _slow: Upstream,
    _pki: Root,
    leaf_names: &'static [&'static str],
    dead: SocketAddr,
    app: SocketAddr,
    slow_addr: SocketAddr,
}

const NAMES: &[&str] = &["app.test"];

/// Apex with routes to a working group, a silent one (504) and a refused one (502), a TLS
/// listener and the admin listener; nothing sent yet.
fn mix_apex() -> Mix {
    let up = Upstream::ok("hello");
    let slow = Upstream::silent();
    let dead = dead_addr();
    let pki = Root::new("metrics", "Apex Metrics Root");
    let leaf = sign_leaf(&pki.dir, "app", NAMES, &new_key(), &pki.issuer, &[], |_| {});
    let cfg = Config::new()
        .timeout("upstream_head", "300ms")
        .route("app.test", "/", "app")
        .route("app.test", "/slow", "slow")
        .route("app.test", "/dead", "dead")
        .group("app", &[up.addr])
        .group("slow", &[slow.addr])
        .group("dead", &[dead])
        .append(&tls_section(None, &[(&leaf, NAMES)]))
        .append(ADMIN);
    let apex = Apex::start(&cfg);
    let (app, slow_addr) = (up.addr, slow.addr);
    Mix { apex, _up: up, _slow: slow, _pki: pki, leaf_names: NAMES, dead, app, slow_addr }
}

/// Sends the known mix: 3 plain 200s on one connection, 2 TLS 200s on one connection, 2
/// no-route 404s, a smuggling 400 (CL with TE), a bad-request 400 (bare LF), a 502 (refused
/// connect) and a 504 (silent upstream). Returns when every connection has been closed by
/// the client.
fn send_mix(m: &Mix) {
    let mut c = m.apex.client();
    for _ in 0..3 {
        assert_eq!(c.request(&get("app.test", "/")).status, 200);
    }
    for _ in 0..2 {
        assert_apex_status(&c.request(&get("other.test", "/")), 404);
    }
    assert_apex_status(&c.request(&get("app.test", "/dead")), 502);
    assert_apex_status(&c.request(&get("app.test", "/slow")), 504);
    drop(c);
    let mut t = tls(m.apex.tls_addr.unwrap(), &m._pki, Hello::to("app.test"));
    for _ in 0..2 {
        assert_eq!(t.request(&get("app.test", "/")).status, 200);
    }
    drop(t);
    let mut c = m.apex.client();
    let r = c.request(
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_apex_close(&mut c, &r, 400);
    let mut c = m.apex.client();
    let r = c.request(b"GET / HTTP/1.1\nHost: app.test\r\n\r\n");
    assert_apex_close(&mut c, &r, 400);
}

#[test]
fn a_known_mix_is_counted_exactly() {
    let m = mix_apex();
    let admin = admin_addr(&m.apex);
    send_mix(&m);
    // Counters are final once every connection is closed (the access-log line, and so the
    // count, of the last exchange is written before the close is seen).
    let closed = wait_until(Duration::from_secs(5), || Scrape::take(admin).get("apex_client_connections_open") == 0.0);
    assert!(closed, "connections still open:\n{}", Scrape::take(admin).1);
    let s = Scrape::take(admin);
    let (app, slow, dead) = (m.app, m.slow_addr, m.dead);
    let route = |r: &str, g: &str| format!("route=\"{r}\",upstream=\"{g}\"");
    let none = route("", "");
    for (labels, class, n) in [
        (route("app.test/", "app"), "2xx", 5.0),
        (none.clone(), "4xx", 4.0),
        (route("app.test/dead", "dead"), "5xx", 1.0),
        (route("app.test/slow", "slow"), "5xx", 1.0),
        (route("app.test/", "app"), "5xx", 0.0),
        (none.clone(), "5xx", 0.0),
    ] {
        s.eq(&format!("apex_requests_total{{{labels},class=\"{class}\"}}"), n);
    }
    for (labels, n) in [(route("app.test/", "app"), 5.0), (none, 4.0), (route("app.test/dead", "dead"), 1.0)] {
        s.eq(&format!("apex_request_duration_seconds_count{{{labels}}}"), n);
        s.eq(&format!("apex_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}}"), n);
    }
    for (reason, code, n) in [
        ("no_route", 404, 2.0),
        ("smuggling", 400, 1.0),
        ("bad_request", 400, 1.0),
        ("upstream_failed", 502, 1.0),
        ("upstream_timeout", 504, 1.0),
        ("bad_framing", 400, 0.0),
        ("client_timeout", 408, 0.0),
        ("head_too_large", 431, 0.0),
    ] {
        s.eq(&format!("apex_rejected_requests_total{{reason=\"{reason}\",code=\"{code}\"}}"), n);
    }
    let srv = |a: SocketAddr| format!("server=\"{a}\"");
    s.eq(&format!("apex_upstream_responses_total{{{},class=\"2xx\"}}", srv(app)), 5.0);
    s.eq(&format!("apex_upstream_responses_total{{{},class=\"5xx\"}}", srv(dead)), 1.0);
    s.eq(&format!("apex_upstream_responses_total{{{},class=\"5xx\"}}", srv(slow)), 1.0);
    s.eq(&format!("apex_upstream_first_byte_seconds_count{{{}}}", srv(app)), 5.0);
    s.eq(&format!("apex_upstream_first_byte_seconds_count{{{}}}", srv(slow)), 0.0);
    // Every request to `app` took a pooled connection or opened one; each opened one counts.
    let hits = s.get(&format!("apex_upstream_pool_hits_total{{{}}}", srv(app)));
    let misses = s.get(&format!("apex_upstream_pool_misses_total{{{}}}", srv(app)));
    assert_eq!(hits + misses, 5.0, "{}", s.1);
    s.eq(&format!("apex_upstream_connects_total{{{}}}", srv(app)), misses);
    s.eq(&format!("apex_upstream_connects_total{{{}}}", srv(dead)), 1.0);
    s.eq(&format!("apex_upstream_errors_total{{{},reason=\"connect_failed\"}}", srv(dead)), 1.0);
    s.eq(&format!("apex_upstream_errors_total{{{},reason=\"timeout\"}}", srv(slow)), 1.0);
    s.eq(&format!("apex_upstream_errors_total{{{},reason=\"connect_failed\"}}", srv(app)), 0.0);
    s.eq(&format!("apex_upstream_up{{{}}}", srv(dead)), 0.0);
    s.eq(&format!("apex_upstream_up{{{}}}", srv(app)), 1.0);
    // Gauges are published by the worker's sweep, at least once a second.
    let idle = format!("apex_upstream_idle_connections{{{}}}", srv(app));
    let settled = wait_until(Duration::from_secs(3), || Scrape::take(admin).get(&idle) == misses);
    assert!(settled, "{idle} never reached {misses}:\n{}", Scrape::take(admin).1);
    s.eq(&format!("apex_upstream_active_connections{{{}}}", srv(app)), 0.0);
    // Connections: 3 plain clients and 1 TLS one, all closed by now.
    s.eq("apex_client_connections_accepted_total{listener=\"plain\"}", 3.0);
    s.eq("apex_client_connections_accepted_total{listener=\"tls\"}", 1.0);
    let closed: f64 =
        s.0.iter().filter(|(k, _)| k.starts_with("apex_client_connections_closed_total")).map(|(_, v)| v).sum();
    assert_eq!(closed, 4.0, "{}", s.1);
    s.eq("apex_client_connections_closed_total{reason=\"after_response\"}", 2.0);
    s.eq("apex_client_connections_closed_total{reason=\"client\"}", 2.0);
    s.eq("apex_tls_handshakes_total{side=\"client\",version=\"TLSv1.3\",resumed=\"false\"}", 1.0);
    s.eq("apex_tls_handshakes_total{side=\"client\",version=\"TLSv1.2\",resumed=\"false\"}", 0.0);
    s.eq("apex_tls_handshake_failures_total{alert=\"other\"}", 0.0);
    // Bytes: every response went out through buffers (nothing here is long enough to splice).
    assert!(s.get("apex_client_bytes_total{direction=\"out\",via=\"copy\"}") > 0.0);
    s.eq("apex_client_bytes_total{direction=\"out\",via=\"splice\"}", 0.0);
    let expiry = s.0.keys().find(|k| k.starts_with("apex_tls_certificate_expiry_timestamp_seconds{")).cloned();
    let expiry = expiry.unwrap_or_else(|| panic!("no certificate expiry in:\n{}", s.1));
    assert!(expiry.contains(&format!("names=\"{}\"", m.leaf_names.join(","))), "{expiry}");
    assert!(s.get(&expiry) > 1.7e9, "{expiry}");
    s.eq("apex_config_generation", 1.0);
    assert!(s.get("process_open_fds") > 0.0 && s.get("process_resident_memory_bytes") > 0.0);
}

/// Handshakes that rustls itself refuses are counted by the alert it sent, not as "other":
/// a client offering only h2 (no_application_protocol, RFC 7301 §3.2) and plain HTTP on the
/// TLS port (a record header rustls refuses: decode_error).
#[test]
fn handshakes_rustls_refuses_are_counted_by_the_alert_it_sent() {
    let m = mix_apex();
    let admin = admin_addr(&m.apex);
    let tls_addr = m.apex.tls_addr.unwrap();
    for _ in 0..2 {
        let e = tls_try(tls_addr, &m._pki, Hello::to("app.test").alpn(&["h2"])).err().expect("h2 only is refused");
        let alert = rustls_error(&e).cloned();
        assert_eq!(alert, Some(rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)), "{e}");
    }
    let mut c = Client::connect(tls_addr);
    c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n");
    let (got, _) = c.read_until_close(Duration::from_secs(5));
    assert_eq!(got.get(..7), Some(&[21u8, 3, 3, 0, 2, 2, 50][..]), "a decode_error alert: {got:?}");
    let want = [("no_application_protocol", 2.0), ("decode_error", 1.0), ("other", 0.0)];
    let ok = wait_until(Duration::from_secs(3), || {
        let s = Scrape::take(admin);
        want.iter().all(|(a, n)| s.0.get(&format!("apex_tls_handshake_failures_total{{alert=\"{a}\"}}")) == Some(n))
    });
    let s = Scrape::take(admin);
    assert!(ok, "{want:?}:\n{}\n{}", s.1, m.apex.stderr());
}

#[test]
fn promtool_accepts_the_scrape_after_mixed_traffic() {
    let m = mix_apex();
    let admin = admin_addr(&m.apex);
    send_mix(&m);
    let text = Scrape::take(admin).1;
    // OpenMetrics when asked for: counters' family names lose `_total`, `# EOF` ends it.
    let om = admin_get(admin, "/metrics", "Accept: application/openmetrics-text; version=1.0.0\r\n");
    assert_eq!(om.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    let om = om.body_str();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE apex_requests counter\n") && text.contains("# TYPE apex_requests_total counter\n"));
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus); .ci/run installs it");
        return;
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn status_tells_version_reloads_upstreams_and_certificates() {
    let m = mix_apex();
    let admin = admin_addr(&m.apex);
    let st = |apex: &Apex| {
        let r = admin_get(admin, "/status", "");
        assert_eq!((r.status, r.header("content-type")), (200, Some("application/json")), "{}", apex.stderr());
        r.body_str()
    };
    let s = st(&m.apex);
    for want in [
        &format!("\"version\":\"{}\"", env!("CARGO_PKG_VERSION")),
        &format!("\"pid\":{}", m.apex.pid()),
        "\"draining\":false",
        "\"workers\":1",
        "\"generation\":1",
        "\"result\":\"ok\",\"error\":null",
        "\"by_state\":{\"read_head\":0,",
        "\"group\":\"dead\"",
        &format!(
            "\"address\":\"{}\",\"healthy\":true,\"passive\":\"up\",\"check\":null,\"in_flight\":0,\"idle_pooled\":0,\"last_error\":null",
            m.dead
        ),
        "\"names\":[\"app.test\"],\"not_after\":\"",
    ] {
        assert!(s.contains(want), "{want} not in {s}");
    }
    // A 502: the server is cooling down, and its last error says why.
    let mut c = m.apex.client();
    assert_apex_status(&c.request(&get("app.test", "/dead")), 502);
    // One connection open, idle, while the status is read (by state: as of the worker's last
    // sweep, at most a second old).
    let idle = "\"open\":1,\"by_state\":{\"read_head\":1,";
    assert!(wait_until(Duration::from_secs(3), || st(&m.apex).contains(idle)), "{idle} not in {}", st(&m.apex));
    let s = st(&m.apex);
    let dead = format!(
        "\"address\":\"{}\",\"healthy\":false,\"passive\":\"down\",\"check\":null,\"in_flight\":0,\"idle_pooled\":0,\"last_error\":{{\"reason\":\"connect_failed\",\"at\":\"20",
        m.dead
    );
    assert!(s.contains(&dead), "{dead} not in {s}");
    // A reload that fails says so, with the error; the generation stays.
    std::fs::write(&m.apex.conf, "listen = [\"127.0.0.1:0\"]\nbogus = 1\n").unwrap();
    m.apex.signal("HUP");
    m.apex.wait_stderr("reload failed", 1);
    let s = st(&m.apex);
    assert!(s.contains("\"generation\":1,\"last_reload\":{\"at\":\"20"), "{s}");
    assert!(s.contains("\"result\":\"failed\",\"error\":\""), "{s}");
    assert!(s.contains("unknown field"), "{s}");
    let scrape = Scrape::take(admin);
    scrape.eq("apex_config_reloads_total{result=\"failed\"}", 1.0);
    scrape.eq("apex_config_last_reload_success", 0.0);
}

#[test]
fn healthz_is_200_while_serving_and_503_while_draining() {
    let up = Upstream::silent();
    let mut apex =
        Apex::start(&Config::to(up.addr).timeout("upstream_head", "20s").timeout("shutdown", "20s").append(ADMIN));
    let admin = admin_addr(&apex);
    let r = admin_get(admin, "/healthz", "");
    assert_eq!((r.status, r.body_str().as_str()), (200, "ok\n"));
    // A request in flight keeps the process draining after SIGTERM.
    let mut c = apex.client();
    c.send(&get("t", "/"));
    assert!(up.wait_for(Duration::from_secs(5), |u| u.accepts() == 1));
    apex.signal("TERM");
    apex.wait_stderr("apex: info: draining", 1);
    let r = admin_get(admin, "/healthz", "");
    assert_eq!((r.status, r.body_str().as_str()), (503, "draining\n"), "{}", apex.stderr());
    let s = admin_get(admin, "/status", "").body_str();
    assert!(s.contains("\"draining\":true"), "{s}");
    let busy = || admin_get(admin, "/status", "").body_str().contains("\"in_flight\":1");
    assert!(wait_until(Duration::from_secs(3), busy), "{}", admin_get(admin, "/status", "").body_str());
    assert!(apex.is_running());
}

/// Writes `bytes` to the admin port and returns what came back before the close.
fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_admin_listener_survives_hostile_input() {
    let up = Upstream::ok("x");
    let mut apex = Apex::start(&Config::to(up.addr).append(ADMIN));
    let admin = admin_addr(&apex);
    let status = |resp: &str| resp.split(' ').nth(1).unwrap_or("").to_string();
    // A head past the bound, with no end: 431, never a buffer that grows.
    let big = format!("GET /metrics HTTP/1.1\r\nHost: a\r\nX: {}", "a".repeat(20_000));
    assert_eq!(status(&raw(admin, big.as_bytes())), "431");
    // What the shared parser refuses (the same catalogue as the public listeners).
    for (bytes, code) in [
        (&b"GET /metrics HTTP/1.1\nHost: a\r\n\r\n"[..], "400"),
        (b"GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "400"),
        (b"GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
        (b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", "405"),
        (b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n", "404"),
        (b"GET /metrics\x00 HTTP/1.1\r\nHost: a\r\n\r\n", "400"),
    ] {
        assert_eq!(status(&raw(admin, bytes)), code, "{:?}", String::from_utf8_lossy(bytes));
    }
    // Connections that send nothing, or half a head, are cut after the admin timeout (408);
    // meanwhile and after, the listener serves.
    let stalled: Vec<_> = (0..3)
        .map(|i| {
            thread::spawn(move || {
                let bytes: &[u8] = if i == 0 { b"" } else { b"GET /metrics HTTP/1.1\r\nHo" };
                raw(admin, bytes)
            })
        })
        .collect();
    for t in stalled {
        let r = t.join().unwrap();
        assert!(r.is_empty() || status(&r) == "408", "{r}");
    }
    // Connect and vanish.
    for _ in 0..20 {
        drop(TcpStream::connect(admin).unwrap());
    }
    assert_eq!(admin_get(admin, "/healthz", "").status, 200);
    assert_eq!(Scrape::take(admin).get("apex_workers"), 1.0);
    // HEAD gets the head only.
    let head = raw(admin, b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"), "{head}");
    assert!(apex.is_running(), "{}", apex.stderr());
    // The proxy itself was never disturbed.
    assert_eq!(apex.client().request(&get("t", "/")).status, 200);
}

#[test]
fn a_non_loopback_admin_address_is_warned_about() {
    let up = Upstream::ok("x");
    let apex = Apex::start(&Config::to(up.addr).append("[admin]\nlisten = \"0.0.0.0:0\"\n"));
    apex.wait_stderr("admin.listen = 0.0.0.0:0 is not a loopback address", 1);
    let quiet = Apex::start(&Config::to(up.addr).append(ADMIN));
    admin_addr(&quiet);
    assert!(!quiet.stderr().contains("not a loopback"), "{}", quiet.stderr());
}

/// The flood: 100,000 bad requests (each a bare LF, 400 and a close) write at most a
/// few dozen error-log lines, and the rest are counted in one line per window.
#[test]
fn a_flood_of_bad_requests_writes_a_few_dozen_lines() {
    let up = Upstream::ok("x");
    let apex = Apex::start(&Config::to(up.addr).workers(2).append(ADMIN));
    let admin = admin_addr(&apex);
    const N: usize = 100_000;
    const THREADS: usize = 8;
    let addr = apex.addr;
    let hs: Vec<_> = (0..THREADS)
        .map(|_| {
            thread::spawn(move || {
                for _ in 0..N / THREADS {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.write_all(b"GET / HTTP/1.1\nHost: t\r\n\r\n").unwrap();
                    let mut out = [0u8; 12];
                    s.read_exact(&mut out).unwrap();
                    assert_eq!(&out, b"HTTP/1.1 400");
                }
            })
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    Scrape::take(admin).eq("apex_rejected_requests_total{reason=\"bad_request\",code=\"400\"}", N as f64);
    let err = apex.stderr();
    let lines = err.lines().filter(|l| l.contains(": 400 ")).count();
    let held = err.lines().filter(|l| l.contains("more like this in the last 10 s")).count();
    // Five lines of the kind per worker per 10 s, and one count per window that held some.
    assert!(lines + held <= 60, "{lines} lines about 400s and {held} counts for {N} bad requests:\n{err}");
    assert!(lines >= 5, "the first bad requests are logged:\n{err}");
    for l in err.lines() {
        let (stamp, rest) = l.split_once(' ').unwrap();
        assert!(stamp.len() == 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "no RFC 3339 time: {l}");
        let level = rest.strip_prefix("apex: ").and_then(|r| r.split(':').next()).unwrap_or("");
        assert!(["error", "warn", "info", "debug"].contains(&level), "no level: {l}");
    }
}

/// A connect that failed on one server and was made good by the next is one warn naming both;
/// counted as that server's error, and the request answered.
#[test]
fn a_failure_the_next_server_made_good_is_one_warn_naming_both() {
    let up = Upstream::ok("x");
    let dead = dead_addr();
    let apex = Apex::start(&Config::new().route("*", "/", "app").group("app", &[dead, up.addr]).append(ADMIN));
    let admin = admin_addr(&apex);
    // Round-robin starts at the first server: the refused one, then the live one.
    assert_eq!(apex.client().request(&get("t", "/")).status, 200);
    let want = format!("apex: warn: upstream {dead}: connect failed; retried on {}; {dead} skipped for 10s", up.addr);
    apex.wait_stderr(&want, 1);
    let err = apex.stderr();
    assert_eq!(err.lines().filter(|l| l.contains(&dead.to_string())).count(), 1, "one line about {dead}:\n{err}");
    let s = Scrape::take(admin);
    s.eq(&format!("apex_upstream_errors_total{{server=\"{dead}\",reason=\"connect_failed\"}}"), 1.0);
    s.eq(&format!("apex_upstream_responses_total{{server=\"{}\",class=\"2xx\"}}", up.addr), 1.0);
}

/// An active check's verdict shows: /status says which view has a server out (`check`,
/// `passive`) and `healthy` is false, and `apex_upstream_up` is 0, until it passes again.
#[test]
fn status_and_the_up_gauge_show_the_active_checks_verdict() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let sick = Arc::new(AtomicBool::new(true));
    let flag = sick.clone();
    let a = Upstream::http(move |r| match r.target.as_str() {
        "/healthz" if flag.load(SeqCst) => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec(),
        _ => ok("a"),
    });
    let b = Upstream::ok("b");
    let apex = Apex::start(
        &Config::new()
            .route("app.test", "/", "g")
            .group("g", &[a.addr, b.addr])
            .append("health = { path = \"/healthz\", every = \"50ms\", timeout = \"1s\", rise = 1, fall = 1 }\n")
            .append(ADMIN),
    );
    let admin = admin_addr(&apex);
    let up = |s: SocketAddr| format!("apex_upstream_up{{server=\"{s}\"}}");
    let seen = |healthy: bool, check: &str, gauge: f64| {
        wait_until(Duration::from_secs(5), || {
            let status = admin_get(admin, "/status", "").body_str();
            let want =
                format!("{{\"address\":\"{}\",\"healthy\":{healthy},\"passive\":\"up\",\"check\":\"{check}\",", a.addr);
            status.contains(&want) && Scrape::take(admin).get(&up(a.addr)) == gauge
        })
    };
    assert!(seen(false, "down", 0.0), "{}", admin_get(admin, "/status", "").body_str());
    Scrape::take(admin).eq(&up(b.addr), 1.0);
    sick.store(false, SeqCst);
    assert!(seen(true, "up", 1.0), "{}", admin_get(admin, "/status", "").body_str());
}
