//! `tls.redirect_http`: plain listeners that answer every request with a 308 to HTTPS.

use crate::harness::*;
use crate::tls_kit::cert_entry;

/// A `[tls]` section (one self-signed certificate for `r.test`) plus `extra` lines in it.
fn tls_section(dir: &TempDir, extra: &str) -> String {
    let ck = rcgen::generate_simple_self_signed(vec!["r.test".to_string()]).unwrap();
    let chain = dir.write("r.pem", &ck.cert.pem());
    let key = dir.write("r.key", &ck.signing_key.serialize_pem());
    format!("[tls]\nlisten = [\"127.0.0.1:0\"]\n{extra}") + &cert_entry(&chain, &key, &["r.test"])
}

#[test]
fn redirect_listener_answers_308_to_the_https_port_and_keeps_alive() {
    let up = Upstream::echo_path();
    let dir = TempDir::new("redirect");
    let apex = Apex::start(&Config::to(up.addr).append(&tls_section(&dir, "redirect_http = [\"127.0.0.1:0\"]")));
    let port = apex.tls_addr.expect("a TLS listener").port();
    let mut c = apex.client();
    // The path and query are kept; the Host's port is replaced by the TLS listener's.
    let r = c.request(b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: Example.test:8080\r\n\r\n");
    assert_eq!(r.status, 308, "{}", r.head_str());
    assert_eq!(r.header("location"), Some(format!("https://Example.test:{port}/a/b?x=1&y=%20").as_str()));
    assert!(!r.has_token("connection", "close"), "a redirect keeps the connection: {}", r.head_str());
    // Same connection: HEAD gets the head only, then a POST with a body: 308 and close (its
    // body was not read, so it cannot be told from a next request).
    c.send(b"HEAD /h HTTP/1.1\r\nHost: r.test\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!((r.status, r.body.len()), (308, 0));
    assert_eq!(r.header("location"), Some(format!("https://r.test:{port}/h").as_str()));
    let r = c.request(b"POST /form HTTP/1.1\r\nHost: r.test\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some(format!("https://r.test:{port}/form").as_str()));
    assert!(r.has_token("connection", "close"), "{}", r.head_str());
    up.assert_untouched();
}

#[test]
fn without_redirect_http_a_plain_listener_proxies_beside_tls() {
    let up = Upstream::echo_path();
    let dir = TempDir::new("redirect-off");
    let apex = Apex::start(&Config::to(up.addr).append(&tls_section(&dir, "")));
    let r = apex.client().request(b"GET /through HTTP/1.1\r\nHost: r.test\r\n\r\n");
    assert_eq!((r.status, r.body_str()), (200, "/through".to_string()));
}

#[test]
fn redirect_http_must_name_a_plain_listener() {
    let dir = TempDir::new("redirect-bad");
    let text = Config::to(dead_addr()).append(&tls_section(&dir, "redirect_http = [\"127.0.0.1:1\"]")).render();
    let conf = dir.write("apex.toml", &text);
    let (code, _out, err) = run_apex(&[conf.to_str().unwrap()]);
    assert_ne!(code, Some(0), "stderr:\n{err}");
    assert!(err.contains("tls.redirect_http") && err.contains("127.0.0.1:1"), "stderr:\n{err}");
}
