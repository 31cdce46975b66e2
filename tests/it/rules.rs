//! A route's rules (issue #18) and X-Request-Id (issue #16): header rules both ways, path
//! rewrites, redirects and fixed answers by Apex itself, and every invalid form refused by
//! `apex --check` naming its line.

use std::time::Duration;

use crate::cli::check_bad;
use crate::harness::*;

/// Apex with one route (`rules` appended to it) to `up`, plus `extra` TOML.
fn apex_with(up: &Upstream, rules: &str, extra: &str) -> Apex {
    Apex::start_toml(&format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n{extra}\n[[route]]\npath = \"/\"\nupstream = \"app\"\n{rules}\n\
         [upstream.app]\nservers = [\"{}\"]\n",
        up.addr
    ))
}

/// The upstream's view: the request head as it arrived, as the body.
fn echo_head() -> Upstream {
    Upstream::http(|r| ok(&r.head_str()))
}

fn is_our_id(v: &str) -> bool {
    v.len() == 32 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The access-log line of a request whose target contains `needle`, once written.
fn logged(apex: &Apex, needle: &str) -> String {
    let find = || apex.stdout_lines().into_iter().find(|l| l.contains(needle));
    wait_until(Duration::from_secs(5), || find().is_some());
    find().unwrap_or_else(|| panic!("no access-log line for {needle}: {:#?}", apex.stdout_lines()))
}

#[test]
fn request_headers_set_add_remove_ignore_case_and_duplicates() {
    let up = echo_head();
    let apex = apex_with(
        &up,
        "request_headers = { set = { \"X-Set\" = \"v-$scheme\", \"X-Client\" = \"$client_ip\", \"X-Host\" = \"${host}!\" }, \
         add = { \"X-Add\" = \"added\" }, remove = [\"X-Gone\"] }",
        "",
    );
    let r = apex.client().request(
        b"GET /h HTTP/1.1\r\nHost: App.Test:8080\r\nx-set: old1\r\nX-SET: old2\r\nX-Add: first\r\nx-gone: 1\r\n\
          X-Keep: k\r\nX-GONE: 2\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.head_str());
    let req = up.one_request();
    assert_eq!(req.headers_named("x-set"), vec!["v-http"], "{}", req.head_str());
    assert_eq!(req.headers_named("x-add"), vec!["first", "added"], "add appends: {}", req.head_str());
    assert!(req.headers_named("x-gone").is_empty(), "{}", req.head_str());
    assert_eq!(req.header("x-keep"), Some("k"));
    assert_eq!(req.header("x-client"), Some("127.0.0.1"));
    assert_eq!(req.header("x-host"), Some("App.Test!"), "$host: the host without its port");
    assert_eq!(req.header("host"), Some("App.Test:8080"), "Host itself is untouched");
    assert!(req.header("x-request-id").is_none(), "no id unless asked for: {}", req.head_str());
}

#[test]
fn response_headers_on_proxied_responses() {
    let up = Upstream::http(|_| {
        b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=1\r\nstrict-transport-security: max-age=2\r\n\
          X-Powered-By: php\r\nX-Frame-Options: SAMEORIGIN\r\nContent-Length: 2\r\n\r\nok"
            .to_vec()
    });
    let apex = apex_with(
        &up,
        "response_headers = { set = { \"Strict-Transport-Security\" = \"max-age=63072000; includeSubDomains\" }, \
         add = { \"X-Frame-Options\" = \"DENY\", \"X-Seen-By\" = \"$scheme $client_ip\" }, remove = [\"x-powered-by\"] }",
        "",
    );
    let mut c = apex.client();
    for _ in 0..2 {
        let r = c.request(&get("a", "/"));
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers_named("strict-transport-security"),
            vec!["max-age=63072000; includeSubDomains"],
            "{}",
            r.head_str()
        );
        assert!(r.header("x-powered-by").is_none(), "{}", r.head_str());
        assert_eq!(r.headers_named("x-frame-options"), vec!["SAMEORIGIN", "DENY"]);
        assert_eq!(r.header("x-seen-by"), Some("http 127.0.0.1"));
        assert_eq!(r.body, b"ok");
    }
}

#[test]
fn strip_prefix_down_to_empty_keeps_the_query() {
    let up = Upstream::echo_path();
    let apex = Apex::start_toml(&format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n\
         [[route]]\npath = \"/api\"\nupstream = \"app\"\nstrip_prefix = true\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\
         [upstream.app]\nservers = [\"{}\"]\n",
        up.addr
    ));
    let mut c = apex.client();
    for (sent, want) in [
        ("/api", "/"),
        ("/api?x=1&y=/api", "/?x=1&y=/api"),
        ("/api/", "/"),
        ("/api/v1/users?q", "/v1/users?q"),
        ("/apiv2", "/v2"),
        ("/other/api", "/other/api"),
    ] {
        let r = c.request(&get("a", sent));
        assert_eq!(r.body_str(), want, "{sent}");
    }
    // The access log keeps what the client asked for.
    assert!(logged(&apex, "/api/v1/users?q").contains("\"GET /api/v1/users?q HTTP/1.1\" 200"));
}

#[test]
fn rewrite_with_query_strings() {
    let up = Upstream::echo_path();
    let apex = apex_with(&up, "rewrite = { prefix = \"/old\", to = \"/new/v2\" }", "");
    let mut c = apex.client();
    for (sent, want) in [
        ("/old/a?b=/old", "/new/v2/a?b=/old"),
        ("/old", "/new/v2"),
        ("/old?q", "/new/v2?q"),
        ("/x?/old", "/x?/old"),
        ("/", "/"),
    ] {
        let r = c.request(&get("a", sent));
        assert_eq!(r.body_str(), want, "{sent}");
    }
    let r = c.request(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.body_str(), "*", "asterisk-form is never rewritten");
}

#[test]
fn redirects_with_variables_head_and_keep_alive() {
    let up = Upstream::ok("upstream");
    let apex = Apex::start_toml(&format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n\
         [[route]]\npath = \"/moved\"\nredirect = {{ to = \"https://example.com$path\", status = 301 }}\n\
         [[route]]\npath = \"/perm\"\nredirect = {{ to = \"$scheme://${{host}}/new?from=$$$path\" }}\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\n\
         [upstream.app]\nservers = [\"{}\"]\n",
        up.addr
    ));
    let mut c = apex.client();
    let r = c.request(&get("a", "/moved/x?y=1"));
    assert_eq!((r.status, r.reason.as_str()), (301, "Moved Permanently"), "{}", r.head_str());
    assert_eq!(r.header("location"), Some("https://example.com/moved/x?y=1"));
    assert_eq!(r.header("content-length"), Some("0"));
    assert!(r.header("connection").is_none(), "kept alive: {}", r.head_str());
    c.send(b"HEAD /perm/a HTTP/1.1\r\nHost: b.test:81\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!(r.status, 308, "the default status: {}", r.head_str());
    assert_eq!(r.header("location"), Some("http://b.test/new?from=$/perm/a"));
    assert!(r.body.is_empty());
    let r = c.request(&get("a", "/"));
    assert_eq!(r.body_str(), "upstream", "the same connection goes on");
    assert_eq!(up.requests().len(), 1, "redirects never reach the upstream");
    assert!(logged(&apex, "/moved/x").contains("\" 301 0 "));
    // A body is not read: the connection closes after the answer.
    let mut c = apex.client();
    let r = c.request(b"POST /moved HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(r.status, 301);
    assert!(r.has_token("connection", "close"), "{}", r.head_str());
    c.assert_closed();
}

#[test]
fn respond_keeps_alive_pipelines_and_respects_head() {
    let apex = Apex::start_toml(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n\
         [[route]]\npath = \"/health\"\nrespond = { status = 200, body = \"ok\\n\" }\n\
         [[route]]\npath = \"/json\"\nrespond = { status = 503, body = \"{\\\"down\\\":true}\" }\n\
         response_headers = { set = { \"Content-Type\" = \"application/json\", \"Retry-After\" = \"120\" } }\n\
         [[route]]\npath = \"/\"\nrespond = { status = 204 }\n[log]\nrequest_id = true\n",
    );
    let mut c = apex.client();
    c.send(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\nHEAD /health HTTP/1.1\r\nHost: a\r\n\r\nGET /json HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.read_response();
    assert_eq!((r.status, r.body_str().as_str()), (200, "ok\n"), "{}", r.head_str());
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert!(r.header("x-request-id").is_some_and(is_our_id), "Apex's own answers carry the id: {}", r.head_str());
    let r = c.read_head_response();
    assert_eq!((r.status, r.header("content-length")), (200, Some("3")), "{}", r.head_str());
    assert!(r.body.is_empty());
    let r = c.read_response();
    assert_eq!(r.status, 503);
    assert_eq!(r.headers_named("content-type"), vec!["application/json"], "{}", r.head_str());
    assert_eq!(r.header("retry-after"), Some("120"));
    assert_eq!(r.body_str(), "{\"down\":true}");
    let r = c.read_response();
    assert_eq!(r.status, 204);
    assert!(r.header("content-length").is_none(), "RFC 9110 §8.6: none on a 204: {}", r.head_str());
    // Still open: an HTTP/1.0 keep-alive client is told so.
    let r = c.request(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.has_token("connection", "keep-alive"), "{}", r.head_str());
    let r = c.request(b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert!(r.has_token("connection", "close"), "{}", r.head_str());
    c.assert_closed();
    let line = logged(&apex, "GET /json");
    assert!(
        line.contains("\" 503 13 ") && line.contains(" up=- ") && line.contains(" end=- "),
        "a configured answer is no error: {line}"
    );
    let line = logged(&apex, "HEAD /health");
    assert!(line.contains("\" 200 0 ") && line.contains(" end=-"), "{line}");
}

#[test]
fn request_id_absent_present_and_hostile() {
    let up = Upstream::http(|r| {
        let id = r.header("x-request-id").unwrap_or("-").to_string();
        // The upstream's own X-Request-Id is replaced by the request's.
        format!("HTTP/1.1 200 OK\r\nX-Request-Id: upstream-own\r\nContent-Length: {}\r\n\r\n{id}", id.len())
            .into_bytes()
    });
    let apex = apex_with(&up, "", "[log]\nrequest_id = true\n");
    let mut c = apex.client();
    let long = "a".repeat(65);
    let cases: [(&str, Option<&str>); 6] = [
        ("", None),
        ("X-Request-Id: abc-123_XYZ.9\r\n", Some("abc-123_XYZ.9")),
        (
            "x-request-id: 0123456789012345678901234567890123456789012345678901234567890123\r\n",
            Some("0123456789012345678901234567890123456789012345678901234567890123"),
        ),
        (&format!("X-Request-Id: {long}\r\n"), None),
        ("X-Request-Id: a\r\nX-Request-Id: a\r\n", None),
        ("X-Request-Id: caf\u{e9} au lait\r\n", None),
    ];
    let mut seen = Vec::new();
    for (i, (header, kept)) in cases.iter().enumerate() {
        let r = c.request(format!("GET /id{i} HTTP/1.1\r\nHost: a\r\n{header}\r\n").as_bytes());
        assert_eq!(r.status, 200, "{header:?}: {}", r.head_str());
        let at_upstream = r.body_str();
        assert_eq!(r.headers_named("x-request-id"), vec![at_upstream.as_str()], "{header:?}: {}", r.head_str());
        match kept {
            Some(k) => assert_eq!(at_upstream, *k),
            None => assert!(is_our_id(&at_upstream), "{header:?}: replaced by one of ours, got {at_upstream:?}"),
        }
        assert!(logged(&apex, &format!("/id{i} ")).ends_with(&format!(" id={at_upstream}")), "{header:?}");
        seen.push(at_upstream);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), cases.len(), "every request got its own id");
}

#[test]
fn request_id_in_templates_without_the_log_setting() {
    let up = echo_head();
    let apex = apex_with(
        &up,
        "request_headers = { set = { \"X-Trace\" = \"t-$request_id\" } }\n\
         response_headers = { add = { \"X-Trace\" = \"$request_id\" } }",
        "[log]\nformat = \"json\"\n",
    );
    let r = apex.client().request(&get("a", "/t"));
    let req = up.one_request();
    let sent = req.header("x-trace").unwrap_or_default().to_string();
    assert!(sent.starts_with("t-") && is_our_id(&sent[2..]), "{}", req.head_str());
    assert_eq!(r.header("x-trace"), Some(&sent[2..]), "the same id both ways: {}", r.head_str());
    assert!(req.header("x-request-id").is_none() && r.header("x-request-id").is_none());
    let line = logged(&apex, "\"/t\"");
    assert!(!line.contains("request_id"), "not logged unless [log] request_id: {line}");
}

#[test]
fn request_id_in_the_json_log() {
    let up = Upstream::ok("ok");
    let apex = apex_with(&up, "", "[log]\nformat = \"json\"\nrequest_id = true\n");
    let r = apex.client().request(b"GET /j HTTP/1.1\r\nHost: a\r\nX-Request-Id: a\"b\r\n\r\n");
    assert_eq!(r.header("x-request-id"), Some("a\"b"));
    let line = logged(&apex, "\"/j\"");
    assert!(line.ends_with(",\"request_id\":\"a\\u0022b\"}"), "{line}");
}

/// Every invalid form is refused, naming its line (`cli::check_bad`: both `--check` and a start).
#[test]
fn invalid_rules_are_config_errors() {
    let base = |route: &str| {
        format!(
            "listen = [\"127.0.0.1:0\"]\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n[[route]]\npath = \"/a\"\n{route}\n"
        )
    };
    let up = "upstream = \"app\"\n";
    for (route, line, words) in [
        (
            format!("{up}request_headers = {{ set = {{ \"X-A\" = \"$nope\" }} }}"),
            7..=7,
            &["unknown variable $nope"][..],
        ),
        (format!("{up}request_headers = {{ set = {{ \"X-A\" = \"a\\r\\nb\" }} }}"), 7..=7, &["byte 0x0d"]),
        (format!("{up}request_headers = {{ set = {{ \"X-A\" = \" a\" }} }}"), 7..=7, &["whitespace"]),
        (format!("{up}request_headers = {{ set = {{ \"X A\" = \"a\" }} }}"), 7..=7, &["not a field name"]),
        (format!("{up}request_headers = {{ set = {{ \"Content-Length\" = \"1\" }} }}"), 7..=7, &["apex's own"]),
        (format!("{up}request_headers = {{ remove = [\"Transfer-Encoding\"] }}"), 7..=7, &["apex's own"]),
        (format!("{up}request_headers = {{ remove = [\"host\"] }}"), 7..=7, &["apex's own"]),
        (format!("{up}response_headers = {{ set = {{ \"Connection\" = \"close\" }} }}"), 7..=7, &["apex's own"]),
        (format!("{up}response_headers = {{ add = {{ \"X-Request-Id\" = \"1\" }} }}"), 7..=7, &["apex's own"]),
        (format!("{up}request_headers = {{ set = {{ \"X-A\" = \"1\", \"x-a\" = \"2\" }} }}"), 7..=7, &["twice"]),
        (format!("{up}request_headers = {{ set = {{ \"X-A\" = \"1\" }}, remove = [\"x-A\"] }}"), 7..=7, &["twice"]),
        (format!("{up}response_headers = {{ set = {{ \"X-H\" = \"$host\" }} }}"), 7..=7, &["$host is not available"]),
        (format!("{up}request_headers = {{ sett = {{ }} }}"), 7..=7, &["unknown field"]),
        (format!("{up}strip_prefix = true\nrewrite = {{ prefix = \"/a\", to = \"/b\" }}"), 7..=7, &["give one"]),
        (format!("{up}rewrite = {{ prefix = \"a\", to = \"/b\" }}"), 7..=7, &["rewrite"]),
        (format!("{up}rewrite = {{ prefix = \"/a\", to = \"/b?x\" }}"), 7..=7, &["rewrite"]),
        ("redirect = { to = \"https://x$path\", status = 200 }".into(), 6..=6, &["redirect status 200"]),
        ("redirect = { to = \"https://x/ $path\" }".into(), 6..=6, &["byte 0x20"]),
        ("redirect = { to = \"\" }".into(), 6..=6, &["give a target"]),
        (format!("{up}redirect = {{ to = \"/x\" }}"), 6..=6, &["answered by apex"]),
        ("redirect = { to = \"/x\" }\nrespond = { status = 200 }".into(), 6..=6, &["give one"]),
        ("respond = { status = 204, body = \"x\" }".into(), 6..=6, &["has no body"]),
        ("respond = { status = 99 }".into(), 6..=6, &["want 200 to 599"]),
        ("respond = { status = 200 }\nstrip_prefix = true".into(), 4..=7, &["answered by apex"]),
        ("strip_prefix = true".into(), 4..=6, &["give `upstream`"]),
    ] {
        check_bad(&base(&route), line, words);
    }
}
