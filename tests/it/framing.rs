//! Strict request framing (RFC 9110/9112 and the smuggling catalogue): every ambiguous or
//! malformed request gets a 4xx with `Connection: close`, and nothing reaches the upstream.

use crate::harness::*;

fn config(up: &Upstream) -> Config {
    // A wrongly forwarded request meets a silent upstream and turns into a 504, not a hang.
    Config::to(up.addr).timeout("client_head", "3s").timeout("client_body", "3s").timeout("upstream_head", "2s")
}

/// `req` must get `code` + Connection: close, and the upstream must receive no byte.
fn rejected(req: &[u8], code: u16) {
    let up = Upstream::silent();
    let apex = Apex::start(&config(&up));
    let mut c = apex.client();
    let _ = c.try_send(req);
    let r = c.try_read_response(false).unwrap_or_else(|e| panic!("request {:?}: {e}", String::from_utf8_lossy(req)));
    assert_apex_close(&mut c, &r, code);
    up.assert_untouched();
}

/// A chunked body with a framing error: 400 + close; the head may have been forwarded but the
/// upstream never receives a complete chunked body.
fn rejected_chunked(body: &[u8]) {
    let up = Upstream::silent();
    let apex = Apex::start(&config(&up));
    let mut c = apex.client();
    let mut req = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(body);
    let _ = c.try_send(&req);
    let r = c.try_read_response(false).unwrap_or_else(|e| panic!("body {:?}: {e}", String::from_utf8_lossy(body)));
    assert_apex_close(&mut c, &r, 400);
    std::thread::sleep(ms(100));
    for got in up.received() {
        let rest = match find(&got, b"\r\n\r\n") {
            Some(i) => &got[i + 4..],
            None => continue,
        };
        assert!(
            !rest.starts_with(b"0\r\n\r\n") && !contains(rest, b"\r\n0\r\n\r\n"),
            "upstream received a complete chunked body: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

macro_rules! reject {
    ($($name:ident: $req:expr => $code:expr;)*) => {
        $( #[test] fn $name() { rejected($req, $code) } )*
    };
}

macro_rules! reject_chunked {
    ($($name:ident: $body:expr;)*) => {
        $( #[test] fn $name() { rejected_chunked($body) } )*
    };
}

reject! {
    content_length_with_transfer_encoding:
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" => 400;
    transfer_encoding_with_content_length:
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n" => 400;
    two_equal_content_lengths:
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello" => 400;
    two_different_content_lengths:
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!" => 400;
    content_length_plus_sign: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello" => 400;
    content_length_negative: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\nhello" => 400;
    content_length_list: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello" => 400;
    content_length_hex: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\nhello" => 400;
    content_length_overflow:
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551617\r\n\r\nhello" => 400;
    content_length_empty: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\nhello" => 400;
    transfer_encoding_gzip_chunked_is_501:
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" => 501;
    transfer_encoding_chunked_gzip:
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n" => 400;
    transfer_encoding_chunked_chunked:
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" => 400;
    transfer_encoding_on_http10:
        b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" => 400;
    missing_host_on_http11: b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n" => 400;
    two_host_headers: b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n" => 400;
    host_with_userinfo: b"GET / HTTP/1.1\r\nHost: user@h\r\n\r\n" => 400;
    host_with_space: b"GET / HTTP/1.1\r\nHost: h x\r\n\r\n" => 400;
    absolute_form_authority_differs_from_host:
        b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n" => 400;
    obs_fold_space: b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n continued\r\n\r\n" => 400;
    obs_fold_tab: b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\tcontinued\r\n\r\n" => 400;
    whitespace_before_colon: b"GET / HTTP/1.1\r\nHost: h\r\nX-A : 1\r\n\r\n" => 400;
    whitespace_before_colon_in_host: b"GET / HTTP/1.1\r\nHost : h\r\n\r\n" => 400;
    bare_cr_in_header_value: b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r2\r\n\r\n" => 400;
    bare_lf_between_headers: b"GET / HTTP/1.1\r\nHost: h\nX-A: 1\r\n\r\n" => 400;
    bare_lf_after_request_line: b"GET / HTTP/1.1\nHost: h\r\n\r\n" => 400;
    nul_in_header_name: b"GET / HTTP/1.1\r\nHost: h\r\nX-\0A: 1\r\n\r\n" => 400;
    control_byte_in_header_name: b"GET / HTTP/1.1\r\nHost: h\r\nX-\x1bA: 1\r\n\r\n" => 400;
    nul_in_header_value: b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\x002\r\n\r\n" => 400;
    control_byte_in_header_value: b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\x012\r\n\r\n" => 400;
    del_in_header_value: b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\x7f2\r\n\r\n" => 400;
    nul_in_target: b"GET /a\0b HTTP/1.1\r\nHost: h\r\n\r\n" => 400;
    control_byte_in_target: b"GET /a\x01b HTTP/1.1\r\nHost: h\r\n\r\n" => 400;
    asterisk_form_with_get: b"GET * HTTP/1.1\r\nHost: h\r\n\r\n" => 400;
    http09_request: b"GET /\r\n" => 400;
}

reject_chunked! {
    chunk_size_not_hex: b"5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n";
    chunk_size_negative: b"-1\r\nhello\r\n0\r\n\r\n";
    chunk_size_0x_prefix: b"0x5\r\nhello\r\n0\r\n\r\n";
    chunk_size_overflow_17_hex_digits: b"10000000000000005\r\nhello\r\n0\r\n\r\n";
    chunk_extension_without_name: b"5;=x\r\nhello\r\n0\r\n\r\n";
    chunk_extension_unterminated_quote: b"5;a=\"x\r\nhello\r\n0\r\n\r\n";
    chunk_extension_with_space_in_name: b"5;a b\r\nhello\r\n0\r\n\r\n";
    chunk_extension_with_control_byte: b"5;a=\x01\r\nhello\r\n0\r\n\r\n";
    bare_lf_after_chunk_size: b"5\nhello\r\n0\r\n\r\n";
    bare_lf_after_chunk_extension: b"5;a=b\nhello\r\n0\r\n\r\n";
    bare_lf_after_last_chunk_size: b"5\r\nhello\r\n0\n\r\n";
    chunk_data_not_followed_by_crlf: b"5\r\nhelloXY0\r\n\r\n";
    chunk_data_followed_by_bare_lf: b"5\r\nhello\n0\r\n\r\n";
}

#[test]
fn valid_requests_after_a_valid_one_still_work() {
    // Control for the catalogue: the same connection shape that is rejected above passes
    // when well-formed, so the rejections are about the defect, not the harness.
    let up = Upstream::ok("fine");
    let apex = Apex::start(&config(&up));
    let mut c = apex.client();
    let r = c.request(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(r.status, 200);
    let r = c.request(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b;c=\"d e\"\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let r = c.request(b"GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.status, 200);
    let r = c.request(b"GET / HTTP/1.1\r\nHost: h\r\nX-Obs: caf\xc3\xa9\r\n\r\n");
    assert_eq!(r.status, 200, "obs-text (bytes >= 0x80) in a value is allowed");
    assert_eq!(up.requests().len(), 4);
}

#[test]
fn transfer_encoding_twice_as_separate_fields() {
    rejected(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
    );
}

#[test]
fn bad_request_pipelined_after_a_good_one_never_reaches_upstream() {
    let up = Upstream::echo_path();
    let apex = Apex::start(&config(&up));
    let mut c = apex.client();
    let mut both = get("h", "/good");
    both.extend_from_slice(
        b"POST /smuggle HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    );
    let _ = c.try_send(&both);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"/good");
    let r = c.read_response();
    assert_apex_close(&mut c, &r, 400);
    let targets: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, vec!["/good".to_string()]);
    let all: Vec<u8> = up.received().concat();
    assert!(!contains(&all, b"smuggle"), "{:?}", String::from_utf8_lossy(&all));
}

#[test]
fn transfer_coding_names_are_case_insensitive() {
    let up = Upstream::ok("fine");
    let apex = Apex::start(&config(&up));
    let mut c = apex.client();
    let r = c.request(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_eq!(up.one_request().body, b"hello");
}
