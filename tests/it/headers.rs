//! Head re-serialisation: hop-by-hop headers dropped both ways, X-Forwarded-* set, Host kept,
//! absolute-form targets sent upstream in origin-form. Checked on the exact bytes received.

use crate::harness::*;

fn forward(req: &[u8]) -> Req {
    let up = Upstream::ok("ok");
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let r = c.request(req);
    assert_eq!(r.status, 200, "{}", r.head_str());
    up.one_request()
}

#[test]
fn hop_by_hop_request_headers_are_removed() {
    let req = forward(
        b"GET /h HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret, x-other\r\nX-Secret: 1\r\n\
X-Other: 2\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
Trailer: X-T\r\nUpgrade: foo/1\r\nX-Keep: yes\r\n\r\n",
    );
    for name in ["x-secret", "x-other", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"] {
        assert!(req.header(name).is_none(), "{name} must not be forwarded:\n{}", req.head_str());
    }
    if let Some(conn) = req.header("connection") {
        let low = conn.to_ascii_lowercase();
        assert!(!low.contains("x-secret") && !low.contains("x-other"), "{}", req.head_str());
    }
    assert_eq!(req.header("x-keep"), Some("yes"));
    assert_eq!(req.header("host"), Some("h"));
}

#[test]
fn x_forwarded_for_is_set() {
    let req = forward(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(req.headers_named("x-forwarded-for"), vec!["127.0.0.1"], "{}", req.head_str());
}

/// By default (`forwarded_for = "replace"`) a client's own X-Forwarded-For never reaches the
/// upstream: it would be a forged address.
#[test]
fn x_forwarded_for_is_replaced() {
    let req = forward(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n");
    assert_eq!(req.headers_named("x-forwarded-for"), vec!["127.0.0.1"], "{}", req.head_str());
}

#[test]
fn x_forwarded_for_is_appended() {
    let up = Upstream::ok("ok");
    let apex = Apex::start_toml(&format!("forwarded_for = \"append\"\n{}", Config::to(up.addr).render()));
    let r = apex.client().request(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n");
    assert_eq!(r.status, 200);
    let req = up.one_request();
    assert_eq!(req.headers_named("x-forwarded-for"), vec!["10.0.0.1, 127.0.0.1"], "{}", req.head_str());
}

#[test]
fn x_forwarded_proto_and_host_are_set_and_replace_client_values() {
    let req = forward(
        b"GET / HTTP/1.1\r\nHost: app.example:8080\r\nX-Forwarded-Proto: https\r\n\
X-Forwarded-Host: evil.example\r\n\r\n",
    );
    assert_eq!(req.headers_named("x-forwarded-proto"), vec!["http"], "{}", req.head_str());
    assert_eq!(req.headers_named("x-forwarded-host"), vec!["app.example:8080"], "{}", req.head_str());
    let req = forward(b"GET / HTTP/1.1\r\nHost: plain.example\r\n\r\n");
    assert_eq!(req.headers_named("x-forwarded-proto"), vec!["http"]);
    assert_eq!(req.headers_named("x-forwarded-host"), vec!["plain.example"]);
}

#[test]
fn host_is_kept_as_sent() {
    let req = forward(b"GET /p?q=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nX-A: 1\r\n\r\n");
    assert_eq!(req.headers_named("host"), vec!["Example.COM:8080"], "{}", req.head_str());
    assert_eq!(req.target, "/p?q=1");
    assert_eq!(req.method, "GET");
    assert_eq!(req.version, "HTTP/1.1");
}

#[test]
fn absolute_form_target_is_sent_in_origin_form() {
    let req = forward(b"GET http://example.com/path/x?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(req.target, "/path/x?q=1", "{}", req.head_str());
    assert!(req.head.starts_with(b"GET /path/x?q=1 HTTP/1.1\r\n"), "{}", req.head_str());
    assert_eq!(req.header("host"), Some("example.com"));
}

#[test]
fn upstream_head_is_well_formed() {
    let req = forward(b"GET /w HTTP/1.1\r\nHost: h\r\nX-Many: a\r\nX-Many: b\r\n\r\n");
    let text = req.head_str();
    assert!(text.ends_with("\r\n\r\n"));
    for line in text.trim_end_matches("\r\n").split("\r\n") {
        assert!(!line.contains('\n') && !line.contains('\r'), "line {line:?}");
    }
    assert_eq!(req.headers_named("x-many"), vec!["a", "b"], "repeated fields kept in order");
}

#[test]
fn hop_by_hop_response_headers_are_removed() {
    let up = Upstream::http(|_| {
        b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: secret\r\nKeep-Alive: timeout=5\r\n\
Proxy-Connection: keep-alive\r\nX-Ok: 1\r\nContent-Length: 2\r\n\r\nok"
            .to_vec()
    });
    let apex = Apex::start(&Config::to(up.addr));
    let mut c = apex.client();
    let r = c.request(&get("h", "/"));
    assert_eq!(r.status, 200);
    for name in ["x-internal", "keep-alive", "proxy-connection"] {
        assert!(r.header(name).is_none(), "{name} relayed to the client:\n{}", r.head_str());
    }
    assert!(!r.has_token("connection", "x-internal"), "{}", r.head_str());
    assert_eq!(r.header("x-ok"), Some("1"));
    assert_eq!(r.body, b"ok");
}

/// W3C Trace Context (`traceparent`, `tracestate`) passes through untouched, byte for byte and
/// in order, both ways: Apex is not a tracing participant and must not break a trace.
#[test]
fn trace_context_passes_through_untouched() {
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const STATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let up = Upstream::http(|r| {
        let echo = format!("{}|{}", r.header("traceparent").unwrap_or("-"), r.header("tracestate").unwrap_or("-"));
        format!("HTTP/1.1 200 OK\r\ntraceparent: {PARENT}\r\nContent-Length: {}\r\n\r\n{echo}", echo.len()).into_bytes()
    });
    let apex = Apex::start(&Config::to(up.addr));
    let r = apex.client().request(
        format!("GET / HTTP/1.1\r\nHost: h\r\ntraceparent: {PARENT}\r\ntracestate: {STATE}\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.body_str(), format!("{PARENT}|{STATE}"));
    assert_eq!(r.header("traceparent"), Some(PARENT), "{}", r.head_str());
    let head = up.one_request().head_str();
    assert!(head.contains(&format!("\r\ntraceparent: {PARENT}\r\ntracestate: {STATE}\r\n")), "{head}");
}
