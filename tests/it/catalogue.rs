//! The smuggling and strictness catalogue (issue 5): tables of ambiguous or malformed messages,
//! each with the RFC 9110/9112 section that decides it and the outcome Apex must give, driven
//! through the real binary. One Apex and one upstream per family; each case on a fresh client
//! connection, followed by a valid request on another fresh connection that must get a 200 and
//! reach the upstream byte for byte, unaffected. Every family collects its failures and reports
//! them all at once (name, RFC, bytes, what happened).
//!
//! A new desync found in the wild becomes one more line in a table (SECURITY.md, "Reporting").
//! Where the RFC leaves a choice, the table takes the strict one and says why in a comment.

use crate::harness::*;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- the case model

/// What Apex must do with one request.
#[derive(Clone, Copy, Debug)]
enum Expect<'a> {
    /// Apex answers this status itself, with `Connection: close`, closes the connection, and
    /// the upstream receives no byte.
    Reject(u16),
    /// As `Reject`, for a body error found after the head may already have gone upstream (bad
    /// chunk framing): the upstream may see the head and part of the body, never a complete
    /// message, and the connection that carried them is not reused.
    RejectBody(u16),
    /// The client gets the upstream's 200 and the upstream receives exactly these bytes: the
    /// head as Apex re-serialises it (see `canon!`) and the re-framed body.
    Forward(&'a [u8]),
}
use Expect::*;

#[derive(Clone, Copy, Debug)]
struct Case<'a> {
    name: &'a str,
    /// The section that decides the outcome.
    rfc: &'a str,
    /// Exactly what the client sends, in one write.
    request: &'a [u8],
    expect: Expect<'a>,
}

const fn case<'a>(name: &'a str, rfc: &'a str, request: &'a [u8], expect: Expect<'a>) -> Case<'a> {
    Case { name, rfc, request, expect }
}

/// The head Apex sends upstream for a request: `line` (method and target) as HTTP/1.1, Host
/// first, then the client's other end-to-end fields `mid` in order, then the X-Forwarded trio,
/// then `tail` (Content-Length or Transfer-Encoding as Apex frames the body, the blank line,
/// the body).
macro_rules! canon {
    ($line:literal, $host:literal, $mid:literal, $tail:literal) => {
        concat!(
            $line,
            " HTTP/1.1\r\nHost: ",
            $host,
            "\r\n",
            $mid,
            "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ",
            $host,
            "\r\n",
            $tail
        )
        .as_bytes()
    };
}

/// `GET /` to Host h, as the upstream must receive it.
const GET_H: &[u8] = canon!("GET /", "h", "", "\r\n");
/// `POST /` with the body "hello", as the upstream must receive it.
const POST_HELLO: &[u8] = canon!("POST /", "h", "", "Content-Length: 5\r\n\r\nhello");

/// A valid chunked POST head followed by `body`: the chunk-framing family.
macro_rules! te {
    ($body:literal) => {
        concat!("POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", $body).as_bytes()
    };
}

/// What the upstream receives for a `te!` request whose body re-frames to `body`.
macro_rules! te_fwd {
    ($body:literal) => {
        concat!(
            "POST /c HTTP/1.1\r\nHost: h\r\n",
            "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n",
            "Transfer-Encoding: chunked\r\n\r\n",
            $body
        )
        .as_bytes()
    };
}

/// "hello" chunked, re-framed canonically.
const HELLO_CHUNKED: &[u8] = te_fwd!("5\r\nhello\r\n0\r\n\r\n");

// ---------------------------------------------------------------- the runner

/// Long enough for a wrongly forwarded byte to reach the in-test upstream's recorder.
const SETTLE: Duration = Duration::from_millis(30);
const FOLLOW: &[u8] = b"GET /follow HTTP/1.1\r\nHost: h\r\n\r\n";
const FOLLOW_UP: &[u8] = canon!("GET /follow", "h", "", "\r\n");

struct Rig {
    up: Upstream,
    apex: Apex,
}

impl Rig {
    /// An upstream answering every request `200 ok`, and an Apex in front of it with short
    /// timeouts (a wrongly awaited body becomes a quick 408/504, not a hang).
    fn new(tune: impl FnOnce(Config) -> Config) -> Rig {
        let up = Upstream::ok("ok");
        let cfg = Config::to(up.addr)
            .timeout("client_head", "2s")
            .timeout("client_body", "2s")
            .timeout("upstream_head", "2s")
            .timeout("upstream_body", "2s");
        let apex = Apex::start(&tune(cfg));
        Rig { up, apex }
    }
}

fn show(b: &[u8]) -> String {
    format!("\"{}\"", b.escape_ascii())
}

fn lens(up: &Upstream) -> Vec<usize> {
    up.received().iter().map(Vec::len).collect()
}

/// Bytes each upstream connection received since `before` (non-empty ones only).
fn since(up: &Upstream, before: &[usize]) -> Vec<(usize, Vec<u8>)> {
    up.received()
        .into_iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let from = before.get(i).copied().unwrap_or(0);
            (b.len() > from).then(|| (i, b[from..].to_vec()))
        })
        .collect()
}

fn joined(parts: &[(usize, Vec<u8>)]) -> Vec<u8> {
    parts.iter().flat_map(|(_, b)| b.iter().copied()).collect()
}

/// One final response (interim 1xx skipped).
fn final_response(c: &mut Client) -> Result<Response, String> {
    for _ in 0..5 {
        let r = c.try_read_response(false)?;
        if r.status >= 200 {
            return Ok(r);
        }
    }
    Err("more than 5 interim responses".into())
}

/// Checks an error response written by Apex itself: status, version, framing, close.
fn apex_error(c: &mut Client, code: u16) -> Result<(), String> {
    let r = c.try_read_response(false).map_err(|e| format!("no response: {e}"))?;
    if r.status != code {
        return Err(format!("answered {} instead of {code}: {}", r.status, show(&r.head)));
    }
    if r.version != "HTTP/1.1" || r.header("content-length").is_none() || !r.has_token("connection", "close") {
        return Err(format!("the {code} is not `HTTP/1.1`, framed, with `Connection: close`: {}", show(&r.head)));
    }
    match c.wait(Duration::from_secs(3)) {
        Seen::Closed => Ok(()),
        Seen::Data(d) => Err(format!("more bytes after the {code}: {}", show(&d))),
        Seen::Silent => Err(format!("connection still open 3 s after the {code}")),
    }
}

/// Whether `b` (what one upstream connection received) holds a complete request: a head and
/// the whole body its framing announces.
fn complete_message(b: &[u8]) -> bool {
    let Some(end) = find(b, b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
    let rest = &b[end + 4..];
    if head.contains("\r\ntransfer-encoding:") {
        return matches!(decode_chunked(rest), Ok(Some(_)));
    }
    match head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        Some(n) => n.trim().parse::<usize>().is_ok_and(|n| rest.len() >= n),
        None => true,
    }
}

/// Runs one case; Err says what went wrong.
fn check(rig: &Rig, case: &Case) -> Result<(), String> {
    let before = lens(&rig.up);
    let mut c = rig.apex.client();
    let _ = c.try_send(case.request);
    match case.expect {
        Reject(code) | RejectBody(code) => {
            let res = apex_error(&mut c, code);
            thread::sleep(SETTLE);
            let got = since(&rig.up, &before);
            let leaked = match case.expect {
                RejectBody(_) => got.iter().any(|(_, b)| complete_message(b)),
                _ => !got.is_empty(),
            };
            if leaked {
                let what = format!("upstream received {}", show(&joined(&got)));
                return Err(match res {
                    Ok(()) => what,
                    Err(e) => format!("{e}; {what}"),
                });
            }
            res.map_err(|e| match got.is_empty() {
                true => e,
                false => format!("{e}; upstream received {}", show(&joined(&got))),
            })?;
        }
        Forward(want) => {
            let r = final_response(&mut c).map_err(|e| {
                format!("no response: {e}; upstream received {}", show(&joined(&since(&rig.up, &before))))
            })?;
            if r.status != 200 || r.body != b"ok" {
                return Err(format!(
                    "client got {} {} instead of the upstream's 200; upstream received {}",
                    show(&r.head),
                    show(&r.body),
                    show(&joined(&since(&rig.up, &before)))
                ));
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while joined(&since(&rig.up, &before)).len() < want.len() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            thread::sleep(SETTLE);
            let got = joined(&since(&rig.up, &before));
            if got != want {
                return Err(format!("upstream received {}\n      instead of {}", show(&got), show(want)));
            }
        }
    }
    drop(c);
    follow_up(rig)
}

/// The same Apex, a fresh connection, a valid request: unaffected by the case before it.
fn follow_up(rig: &Rig) -> Result<(), String> {
    let before = lens(&rig.up);
    let mut f = rig.apex.client();
    f.try_send(FOLLOW).map_err(|e| format!("follow-up request: write: {e}"))?;
    let r = f.try_read_response(false).map_err(|e| format!("follow-up request: {e}"))?;
    let got = joined(&since(&rig.up, &before));
    if r.status != 200 || r.body != b"ok" || got != FOLLOW_UP {
        return Err(format!(
            "follow-up request got {} {}; upstream received {} for it",
            show(&r.head),
            show(&r.body),
            show(&got)
        ));
    }
    Ok(())
}

fn expected(e: &Expect) -> String {
    match e {
        Reject(code) => format!("{code} + close, nothing upstream"),
        RejectBody(code) => format!("{code} + close, no complete message upstream"),
        Forward(b) => format!("forward {}", show(b)),
    }
}

/// Runs every case; returns one description per failing case.
fn run(rig: &Rig, cases: &[Case]) -> Vec<String> {
    let mut failures = vec![];
    for case in cases {
        let res = catch_unwind(AssertUnwindSafe(|| check(rig, case)))
            .unwrap_or_else(|p| Err(format!("panicked: {:?}", p.downcast_ref::<String>())));
        if let Err(e) = res {
            failures.push(format!(
                "{} [{}]\n    request:  {}\n    expected: {}\n    got:      {e}",
                case.name,
                case.rfc,
                show(case.request),
                expected(&case.expect)
            ));
        }
    }
    failures
}

fn assert_all_pass(family: &str, total: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{family}: {} of {total} cases failed:\n\n{}\n",
        failures.len(),
        failures.join("\n\n")
    );
}

fn family(name: &str, cases: &[Case]) {
    let rig = Rig::new(|c| c);
    let failures = run(&rig, cases);
    assert_all_pass(name, cases.len(), &failures);
}

// ---------------------------------------------------------------- CL + TE

/// RFC 9112 §6.1: "A server MAY reject a request that contains both Content-Length and
/// Transfer-Encoding or process such a request in accordance with the Transfer-Encoding
/// alone"; a proxy that forwards both hands the upstream the choice an attacker wants. Apex
/// rejects every spelling, including ones whose TE value it would otherwise refuse.
#[rustfmt::skip]
const CL_TE: &[Case] = &[
    case("cl_then_te", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("te_then_cl", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("te_cl_classic_te_cl_smuggle", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\nHost: h\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n", Reject(400)),
    case("cl_te_smuggled_get", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("cl_te_names_lowercase", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_names_uppercase", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nCONTENT-LENGTH: 5\r\nTRANSFER-ENCODING: chunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_value_uppercase", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_value_mixed_case", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: cHuNkEd\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_value_no_space", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding:chunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_value_extra_spaces", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding:    chunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_value_leading_tab", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_value_trailing_space", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked \r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_value_trailing_tab", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\t\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_value_leading_comma", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: , chunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_value_trailing_comma", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_value_quoted", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_value_vertical_tab", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_value_empty", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: \r\n\r\nhello", Reject(400)),
    case("cl_te_identity", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: identity\r\n\r\nhello", Reject(400)),
    case("cl_te_gzip_chunked", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_x_chunked", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: x-chunked\r\n\r\nhello", Reject(400)),
    case("te_chunked_cl_zero", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("cl_zero_te_chunked", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("cl_te_in_second_field_line", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_far_apart", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nContent-Length: 5\r\nX-A: 1\r\nX-B: 2\r\nHost: h\r\nX-C: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_on_get", "RFC 9112 §6.1", b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_on_http10", "RFC 9112 §6.1", b"POST / HTTP/1.0\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_list_te", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("cl_te_both_named_in_connection", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nConnection: Content-Length\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", Reject(400)),
];

// ---------------------------------------------------------------- Content-Length

/// RFC 9110 §8.6: Content-Length = 1*DIGIT. RFC 9112 §6.3 item 5: an invalid value (including
/// a list of differing values) is unrecoverable: 400 and close. Repeated equal values (a list
/// a recipient MAY collapse) are refused too: strict, and Apex documents it.
#[rustfmt::skip]
const CONTENT_LENGTH: &[Case] = &[
    case("cl_duplicate_equal", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", Reject(400)),
    case("cl_duplicate_different", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", Reject(400)),
    case("cl_duplicate_case_differs", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\ncontent-length: 5\r\nContent-Length: 5\r\n\r\nhello", Reject(400)),
    case("cl_duplicate_zero", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", Reject(400)),
    case("cl_duplicate_apart", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nContent-Length: 0\r\nHost: h\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello", Reject(400)),
    case("cl_plus_sign", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello", Reject(400)),
    case("cl_minus_sign", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -5\r\n\r\nhello", Reject(400)),
    case("cl_minus_zero", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -0\r\n\r\n", Reject(400)),
    case("cl_list_with_space", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello", Reject(400)),
    case("cl_list_without_space", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5,5\r\n\r\nhello", Reject(400)),
    case("cl_list_different", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!", Reject(400)),
    case("cl_trailing_comma", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5,\r\n\r\nhello", Reject(400)),
    case("cl_leading_comma", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: ,5\r\n\r\nhello", Reject(400)),
    case("cl_hex", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello", Reject(400)),
    case("cl_hex_uppercase_x", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0X5\r\n\r\nhello", Reject(400)),
    case("cl_hex_letter", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: a\r\n\r\nhelloworld", Reject(400)),
    case("cl_octal_looking_is_decimal", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 05\r\n\r\nhello", Forward(POST_HELLO)),
    case("cl_many_leading_zeros", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 00000000000000000000000005\r\n\r\nhello", Forward(POST_HELLO)),
    case("cl_ows_around_value", "RFC 9110 §5.5", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \t 5 \t\r\n\r\nhello", Forward(POST_HELLO)),
    // RFC 9112 §6.3 item 6: the body is exactly CL bytes; what follows is the next request.
    case("cl_shorter_than_bytes_sent", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nhello", Forward(canon!("POST /", "h", "", "Content-Length: 3\r\n\r\nhel"))),
    // CL 0 is no body; Apex frames "no body" by sending no length at all (§6.3 item 7).
    case("cl_zero", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", Forward(canon!("POST /", "h", "", "\r\n"))),
    case("cl_on_get", "RFC 9110 §8.6", b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello", Forward(canon!("GET /", "h", "", "Content-Length: 5\r\n\r\nhello"))),
    case("cl_body_looks_like_request", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 32\r\n\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n", Forward(canon!("POST /", "h", "", "Content-Length: 32\r\n\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n"))),
    // u64::MAX parses, then exceeds limits.body_bytes: 413 (RFC 9110 §15.5.14).
    case("cl_u64_max_is_too_large", "RFC 9110 §15.5.14", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551615\r\n\r\nhello", Reject(413)),
    case("cl_2_pow_64", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\nhello", Reject(400)),
    case("cl_2_pow_64_plus_1", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551617\r\n\r\nh", Reject(400)),
    case("cl_30_digits", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000000000000000000000005\r\n\r\nhello", Reject(400)),
    case("cl_empty", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\nhello", Reject(400)),
    case("cl_whitespace_only", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:    \r\n\r\nhello", Reject(400)),
    case("cl_tab_only", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\t\r\n\r\nhello", Reject(400)),
    case("cl_letters", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: five\r\n\r\nhello", Reject(400)),
    case("cl_digit_then_letter", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5a\r\n\r\nhello", Reject(400)),
    case("cl_with_dot", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5.0\r\n\r\nhello", Reject(400)),
    case("cl_exponent", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5e0\r\n\r\nhello", Reject(400)),
    case("cl_space_inside", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5 5\r\n\r\nhello", Reject(400)),
    case("cl_trailing_semicolon", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5;\r\n\r\nhello", Reject(400)),
    case("cl_trailing_garbage", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5 bytes\r\n\r\nhello", Reject(400)),
    case("cl_underscore_separator", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1_0\r\n\r\nhelloworld", Reject(400)),
    case("cl_fullwidth_digit", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \xef\xbc\x95\r\n\r\nhello", Reject(400)),
    case("cl_superscript_digit", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \xc2\xb9\r\n\r\nh", Reject(400)),
    case("cl_nul_after_digit", "RFC 9110 §5.5", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\x00\r\n\r\nhello", Reject(400)),
    case("cl_vertical_tab_before_digit", "RFC 9110 §5.5", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \x0b5\r\n\r\nhello", Reject(400)),
    case("cl_quoted", "RFC 9110 §8.6", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \"5\"\r\n\r\nhello", Reject(400)),
    // Content-Length spelled with an underscore: a different field to Apex, the same one to a
    // backend that maps `_` to `-` (CGI, WSGI, PHP). A framing field in disguise is refused.
    case("cl_underscore_name_is_refused", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nHost: h\r\nContent_Length: 5\r\n\r\nhello", Reject(400)),
];

// ---------------------------------------------------------------- Transfer-Encoding

/// RFC 9112 §6.1 and §7: a request's Transfer-Encoding must end in exactly one `chunked`
/// (otherwise §6.3 item 4: 400); a coding Apex does not implement is 501; TE in HTTP/1.0 is
/// refused (§6.1: "treat the message as if the framing is faulty"). Coding names are
/// case-insensitive and OWS around the value is not part of it (RFC 9110 §5.5).
#[rustfmt::skip]
const TRANSFER_ENCODING: &[Case] = &[
    case("te_chunked", "RFC 9112 §7.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forward(canon!("POST /", "h", "", "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))),
    case("te_chunked_uppercase", "RFC 9112 §7", b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forward(HELLO_CHUNKED)),
    case("te_chunked_mixed_case", "RFC 9112 §7", b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: cHuNkEd\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forward(HELLO_CHUNKED)),
    case("te_name_lowercase", "RFC 9110 §5.1", b"POST /c HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forward(HELLO_CHUNKED)),
    case("te_no_space_after_colon", "RFC 9112 §5.1", b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forward(HELLO_CHUNKED)),
    case("te_leading_ows", "RFC 9112 §5.1", b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:   chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forward(HELLO_CHUNKED)),
    case("te_leading_tab", "RFC 9112 §5.1", b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forward(HELLO_CHUNKED)),
    case("te_trailing_space", "RFC 9112 §5.1", b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked \r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forward(HELLO_CHUNKED)),
    case("te_trailing_tab", "RFC 9112 §5.1", b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\t\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forward(HELLO_CHUNKED)),
    case("te_on_get", "RFC 9112 §6.1", b"GET /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forward(canon!("GET /c", "h", "", "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))),
    case("te_chunked_chunked", "RFC 9112 §7", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_chunked_twice_as_fields", "RFC 9112 §7", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_gzip_chunked", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(501)),
    case("te_gzip_then_chunked_fields", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(501)),
    case("te_chunked_gzip", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_chunked_then_gzip_fields", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_gzip_alone", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nhello", Reject(501)),
    case("te_deflate_chunked", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: deflate, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(501)),
    // "identity" was removed from the registry (RFC 9112 §7, RFC 7230 appendix A.2): unknown.
    case("te_identity", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\nhello", Reject(501)),
    case("te_identity_chunked", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(501)),
    case("te_x_chunked", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: x-chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(501)),
    case("te_chunkedx", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunkedx\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(501)),
    case("te_chunk_singular", "RFC 9112 §6.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunk\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(501)),
    case("te_quoted_chunked", "RFC 9112 §7", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \"chunked\"\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    // §7: "The chunked coding does not define any parameters. Their presence SHOULD be
    // treated as an error."
    case("te_chunked_with_parameter", "RFC 9112 §7", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;q=1\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_chunked_trailing_semicolon", "RFC 9112 §7", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_empty_value", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_comma_only", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ,\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    // RFC 9110 §5.6.1 asks recipients to skip empty list elements; Apex refuses them instead
    // (strict: an upstream that does not skip them would read different framing).
    case("te_leading_empty_element", "RFC 9110 §5.6.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: , chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_trailing_empty_element", "RFC 9110 §5.6.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_chunked_then_empty_field", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_space_inside_name", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chun ked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_vertical_tab_before_value", "RFC 9110 §5.5", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \x0bchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_form_feed_before_value", "RFC 9110 §5.5", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \x0cchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_nul_after_value", "RFC 9110 §5.5", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\x00\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_nbsp_before_value", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \xa0chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_space_before_colon", "RFC 9112 §5.1", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_obs_fold_gzip_chunked", "RFC 9112 §5.2", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_on_http10", "RFC 9112 §6.1", b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    case("te_gzip_on_http10", "RFC 9112 §6.1", b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nhello", Reject(400)),
    case("te_on_http10_keep_alive", "RFC 9112 §6.1", b"POST / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    // Transfer-Encoding spelled with an underscore: httparse accepts `_` in a name (a tchar);
    // a backend that maps `_` to `-` would see chunked framing Apex did not: refused.
    case("te_underscore_name_is_refused", "RFC 9112 §6.3", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer_Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
    // Naming a framing field in Connection (RFC 9110 §7.6.1) must not strip the framing: Apex
    // frames the upstream body itself.
    case("te_named_in_connection", "RFC 9110 §7.6.1", b"POST /c HTTP/1.1\r\nHost: h\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forward(HELLO_CHUNKED)),
    case("cl_named_in_connection", "RFC 9110 §7.6.1", b"POST / HTTP/1.1\r\nHost: h\r\nConnection: close, Content-Length\r\nContent-Length: 5\r\n\r\nhello", Forward(POST_HELLO)),
];

// ---------------------------------------------------------------- chunk framing

/// RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF; chunk-size = 1*HEXDIG;
/// chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] ); last-chunk =
/// 1*"0" [ chunk-ext ] CRLF; trailer-section = *( field-line CRLF ). Anything else is a framing
/// error (400, close). The upstream always receives `<hex>\r\n<data>\r\n` ... `0\r\n\r\n`:
/// extensions and trailers dropped (§7.1.1: a recipient MUST ignore unknown extensions;
/// §7.1.2: trailers may be discarded).
#[rustfmt::skip]
const CHUNKS: &[Case] = &[
    case("chunk_plain", "RFC 9112 §7.1", te!("5\r\nhello\r\n0\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_empty_body", "RFC 9112 §7.1", te!("0\r\n\r\n"), Forward(te_fwd!("0\r\n\r\n"))),
    case("chunk_size_leading_zeros", "RFC 9112 §7.1", te!("0005\r\nhello\r\n0\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_size_32_leading_zeros", "RFC 9112 §7.1", te!("000000000000000000000000000000005\r\nhello\r\n0\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_last_chunk_many_zeros", "RFC 9112 §7.1", te!("5\r\nhello\r\n0000\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_size_uppercase_hex", "RFC 9112 §7.1", te!("A\r\n0123456789\r\n0\r\n\r\n"), Forward(te_fwd!("a\r\n0123456789\r\n0\r\n\r\n"))),
    case("chunk_size_lowercase_hex", "RFC 9112 §7.1", te!("b\r\n0123456789a\r\n0\r\n\r\n"), Forward(te_fwd!("b\r\n0123456789a\r\n0\r\n\r\n"))),
    case("chunk_several", "RFC 9112 §7.1", te!("2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"), Forward(te_fwd!("2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"))),
    case("chunk_ext_token", "RFC 9112 §7.1.1", te!("5;a=b\r\nhello\r\n0\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_ext_name_only", "RFC 9112 §7.1.1", te!("5;a\r\nhello\r\n0\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_ext_quoted_with_space", "RFC 9112 §7.1.1", te!("5;a=\"x y\"\r\nhello\r\n0\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_ext_quoted_escape", "RFC 9112 §7.1.1", te!("5;a=\"x\\\"y\"\r\nhello\r\n0\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_ext_quoted_obs_text", "RFC 9110 §5.6.4", te!("5;a=\"caf\u{e9}\"\r\nhello\r\n0\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_ext_several", "RFC 9112 §7.1.1", te!("5;a=b;c=\"d\";e\r\nhello\r\n0\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_ext_bws", "RFC 9112 §7.1.1", te!("5 ; a = b\r\nhello\r\n0\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_ext_on_last_chunk", "RFC 9112 §7.1.1", te!("5\r\nhello\r\n0;a=b\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_trailer_dropped", "RFC 9112 §7.1.2", te!("5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_two_trailers_dropped", "RFC 9112 §7.1.2", te!("5\r\nhello\r\n0\r\nX-T: 1\r\nX-U: two words\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_trailer_empty_value", "RFC 9112 §7.1.2", te!("5\r\nhello\r\n0\r\nX-T:\r\n\r\n"), Forward(HELLO_CHUNKED)),
    // Framing fields in a trailer section are dropped, never applied (RFC 9110 §6.5.1).
    case("chunk_trailer_content_length", "RFC 9110 §6.5.1", te!("5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n"), Forward(HELLO_CHUNKED)),
    case("chunk_trailer_transfer_encoding", "RFC 9110 §6.5.1", te!("5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"), Forward(HELLO_CHUNKED)),
    // What follows the last chunk is the next request, forwarded as one.
    case("chunk_then_pipelined_request", "RFC 9112 §9.3", te!("5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n"), Forward(concat!(
        "POST /c HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n",
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET /next HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n",
    ).as_bytes())),
    // 16 hex digits fit in u64 but ask for more than limits.body_bytes: 413.
    case("chunk_size_u64_max_too_large", "RFC 9110 §15.5.14", te!("ffffffffffffffff\r\nhello\r\n0\r\n\r\n"), RejectBody(413)),
    case("chunk_size_plus_sign", "RFC 9112 §7.1", te!("+5\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_size_minus_sign", "RFC 9112 §7.1", te!("-5\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_size_0x_prefix", "RFC 9112 §7.1", te!("0x5\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_size_17_hex_digits", "RFC 9112 §7.1", te!("10000000000000005\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_size_overflow_to_zero", "RFC 9112 §7.1", te!("10000000000000000\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_size_trailing_space", "RFC 9112 §7.1", te!("5 \r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_size_trailing_tab", "RFC 9112 §7.1", te!("5\t\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_size_leading_space", "RFC 9112 §7.1", te!(" 5\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_size_empty", "RFC 9112 §7.1", te!("\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_size_not_hex", "RFC 9112 §7.1", te!("g\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_size_hex_then_junk", "RFC 9112 §7.1", te!("5g\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_size_underscore", "RFC 9112 §7.1", te!("0_5\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_size_nul", "RFC 9112 §7.1", te!("5\x00\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_ext_empty", "RFC 9112 §7.1.1", te!("5;\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_ext_no_name", "RFC 9112 §7.1.1", te!("5;=x\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_ext_no_value", "RFC 9112 §7.1.1", te!("5;a=\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_ext_unterminated_quote", "RFC 9112 §7.1.1", te!("5;a=\"unterminated\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_ext_value_with_space", "RFC 9112 §7.1.1", te!("5;a=b c\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_ext_name_with_space", "RFC 9112 §7.1.1", te!("5;a b=c\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_ext_control_in_value", "RFC 9112 §7.1.1", te!("5;a=\x01\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_ext_nul_in_name", "RFC 9112 §7.1.1", te!("5;a\x00=b\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_ext_del_in_value", "RFC 9112 §7.1.1", te!("5;a=b\x7f\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_ext_control_in_quoted", "RFC 9112 §7.1.1", te!("5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_ext_junk_after_quoted", "RFC 9112 §7.1.1", te!("5;a=\"b\"c\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_ext_bare_lf", "RFC 9112 §7.1", te!("5;a=b\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_ext_bare_cr", "RFC 9112 §7.1", te!("5;a=b\rhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_bare_lf_after_size", "RFC 9112 §7.1", te!("5\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_bare_cr_after_size", "RFC 9112 §7.1", te!("5\rhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_lf_only_after_data", "RFC 9112 §7.1", te!("5\r\nhello\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_cr_only_after_data", "RFC 9112 §7.1", te!("5\r\nhello\r0\r\n\r\n"), RejectBody(400)),
    case("chunk_missing_crlf_after_data", "RFC 9112 §7.1", te!("5\r\nhello0\r\n\r\n"), RejectBody(400)),
    case("chunk_data_longer_than_size", "RFC 9112 §7.1", te!("5\r\nhelloXX\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_data_shorter_than_size", "RFC 9112 §7.1", te!("6\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_lflf_after_data", "RFC 9112 §7.1", te!("5\r\nhello\n\n0\r\n\r\n"), RejectBody(400)),
    case("chunk_last_chunk_bare_lf", "RFC 9112 §7.1", te!("5\r\nhello\r\n0\n\r\n"), RejectBody(400)),
    case("chunk_final_bare_lf", "RFC 9112 §7.1", te!("5\r\nhello\r\n0\r\n\n"), RejectBody(400)),
    case("chunk_final_cr_then_junk", "RFC 9112 §7.1", te!("5\r\nhello\r\n0\r\n\rX"), RejectBody(400)),
    case("chunk_trailer_obs_fold", "RFC 9112 §7.1.2", te!("5\r\nhello\r\n0\r\nX-T: 1\r\n folded\r\n\r\n"), RejectBody(400)),
    case("chunk_trailer_without_colon", "RFC 9112 §7.1.2", te!("5\r\nhello\r\n0\r\nX-T\r\n\r\n"), RejectBody(400)),
    case("chunk_trailer_space_before_colon", "RFC 9112 §7.1.2", te!("5\r\nhello\r\n0\r\nX-T : 1\r\n\r\n"), RejectBody(400)),
    case("chunk_trailer_empty_name", "RFC 9112 §7.1.2", te!("5\r\nhello\r\n0\r\n: 1\r\n\r\n"), RejectBody(400)),
    case("chunk_trailer_nul_in_value", "RFC 9110 §5.5", te!("5\r\nhello\r\n0\r\nX-T: a\x00b\r\n\r\n"), RejectBody(400)),
    case("chunk_trailer_bare_lf", "RFC 9112 §7.1.2", te!("5\r\nhello\r\n0\r\nX-T: 1\n\r\n"), RejectBody(400)),
    case("chunk_trailer_bare_cr", "RFC 9112 §7.1.2", te!("5\r\nhello\r\n0\r\nX-T: 1\r2\r\n\r\n"), RejectBody(400)),
    // A "trailer" that is really a smuggled request line.
    case("chunk_trailer_is_request_line", "RFC 9112 §7.1.2", te!("5\r\nhello\r\n0\r\nGET /admin HTTP/1.1\r\n\r\n"), RejectBody(400)),
];

// ---------------------------------------------------------------- field syntax

/// RFC 9112 §5.1: field-line = field-name ":" OWS field-value OWS, no whitespace between name
/// and colon ("MUST reject ... with 400"); §5.2: obs-fold in a request MUST be rejected (or
/// replaced, which a proxy must not do silently); §2.2: whitespace between the start-line and
/// the first field MUST be rejected or ignored. RFC 9110 §5.1: field-name = token; §5.5: a
/// field value holds no CR, LF or NUL (MUST reject or replace) nor other control bytes.
#[rustfmt::skip]
const FIELDS: &[Case] = &[
    case("obs_fold_space", "RFC 9112 §5.2", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n 2\r\n\r\n", Reject(400)),
    case("obs_fold_tab", "RFC 9112 §5.2", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\t2\r\n\r\n", Reject(400)),
    case("obs_fold_empty_first_line", "RFC 9112 §5.2", b"GET / HTTP/1.1\r\nHost: h\r\nX-A:\r\n 2\r\n\r\n", Reject(400)),
    case("obs_fold_on_host", "RFC 9112 §5.2", b"GET / HTTP/1.1\r\nHost:\r\n h\r\n\r\n", Reject(400)),
    case("obs_fold_on_content_length", "RFC 9112 §5.2", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n 5\r\n\r\nhello", Reject(400)),
    case("obs_fold_whitespace_only_line", "RFC 9112 §5.2", b"GET / HTTP/1.1\r\nHost: h\r\n \r\nX-A: 1\r\n\r\n", Reject(400)),
    case("whitespace_line_after_request_line", "RFC 9112 §2.2", b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", Reject(400)),
    case("tab_line_after_request_line", "RFC 9112 §2.2", b"GET / HTTP/1.1\r\n\tHost: h\r\n\r\n", Reject(400)),
    case("space_before_colon", "RFC 9112 §5.1", b"GET / HTTP/1.1\r\nHost: h\r\nX-A : 1\r\n\r\n", Reject(400)),
    case("tab_before_colon", "RFC 9112 §5.1", b"GET / HTTP/1.1\r\nHost: h\r\nX-A\t: 1\r\n\r\n", Reject(400)),
    case("spaces_before_colon", "RFC 9112 §5.1", b"GET / HTTP/1.1\r\nHost: h\r\nX-A   : 1\r\n\r\n", Reject(400)),
    case("space_before_colon_on_host", "RFC 9112 §5.1", b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", Reject(400)),
    case("space_before_colon_on_cl", "RFC 9112 §5.1", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello", Reject(400)),
    case("space_inside_name", "RFC 9110 §5.1", b"GET / HTTP/1.1\r\nHost: h\r\nX A: 1\r\n\r\n", Reject(400)),
    case("tab_inside_name", "RFC 9110 §5.1", b"GET / HTTP/1.1\r\nHost: h\r\nX\tA: 1\r\n\r\n", Reject(400)),
    case("empty_name", "RFC 9110 §5.1", b"GET / HTTP/1.1\r\nHost: h\r\n: 1\r\n\r\n", Reject(400)),
    case("no_colon", "RFC 9112 §5.1", b"GET / HTTP/1.1\r\nHost: h\r\nX-A\r\n\r\n", Reject(400)),
    case("name_with_paren", "RFC 9110 §5.6.2", b"GET / HTTP/1.1\r\nHost: h\r\nX(A): 1\r\n\r\n", Reject(400)),
    case("name_with_quote", "RFC 9110 §5.6.2", b"GET / HTTP/1.1\r\nHost: h\r\nX\"A: 1\r\n\r\n", Reject(400)),
    case("name_with_slash", "RFC 9110 §5.6.2", b"GET / HTTP/1.1\r\nHost: h\r\nX/A: 1\r\n\r\n", Reject(400)),
    case("name_with_at", "RFC 9110 §5.6.2", b"GET / HTTP/1.1\r\nHost: h\r\nX@A: 1\r\n\r\n", Reject(400)),
    case("name_with_brace", "RFC 9110 §5.6.2", b"GET / HTTP/1.1\r\nHost: h\r\nX{A}: 1\r\n\r\n", Reject(400)),
    case("name_with_comma", "RFC 9110 §5.6.2", b"GET / HTTP/1.1\r\nHost: h\r\nX,A: 1\r\n\r\n", Reject(400)),
    case("name_with_equals", "RFC 9110 §5.6.2", b"GET / HTTP/1.1\r\nHost: h\r\nX=A: 1\r\n\r\n", Reject(400)),
    case("name_non_ascii", "RFC 9110 §5.6.2", b"GET / HTTP/1.1\r\nHost: h\r\nX-\xc3\xa9: 1\r\n\r\n", Reject(400)),
    case("name_nul", "RFC 9110 §5.6.2", b"GET / HTTP/1.1\r\nHost: h\r\nX-\x00A: 1\r\n\r\n", Reject(400)),
    case("name_soh", "RFC 9110 §5.6.2", b"GET / HTTP/1.1\r\nHost: h\r\nX-\x01A: 1\r\n\r\n", Reject(400)),
    case("name_escape", "RFC 9110 §5.6.2", b"GET / HTTP/1.1\r\nHost: h\r\nX-\x1bA: 1\r\n\r\n", Reject(400)),
    case("name_del", "RFC 9110 §5.6.2", b"GET / HTTP/1.1\r\nHost: h\r\nX-\x7fA: 1\r\n\r\n", Reject(400)),
    case("name_bare_cr", "RFC 9112 §2.2", b"GET / HTTP/1.1\r\nHost: h\r\nX-\rA: 1\r\n\r\n", Reject(400)),
    case("name_bare_lf", "RFC 9112 §2.2", b"GET / HTTP/1.1\r\nHost: h\r\nX-\nA: 1\r\n\r\n", Reject(400)),
    case("value_nul", "RFC 9110 §5.5", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\x002\r\n\r\n", Reject(400)),
    case("value_soh", "RFC 9110 §5.5", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\x012\r\n\r\n", Reject(400)),
    case("value_backspace", "RFC 9110 §5.5", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\x082\r\n\r\n", Reject(400)),
    case("value_vertical_tab", "RFC 9110 §5.5", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\x0b2\r\n\r\n", Reject(400)),
    case("value_form_feed", "RFC 9110 §5.5", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\x0c2\r\n\r\n", Reject(400)),
    case("value_escape", "RFC 9110 §5.5", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\x1b[2J\r\n\r\n", Reject(400)),
    case("value_unit_separator", "RFC 9110 §5.5", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\x1f2\r\n\r\n", Reject(400)),
    case("value_del", "RFC 9110 §5.5", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\x7f2\r\n\r\n", Reject(400)),
    case("value_bare_cr", "RFC 9110 §5.5", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r2\r\n\r\n", Reject(400)),
    case("value_bare_lf", "RFC 9112 §2.2", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\n2\r\n\r\n", Reject(400)),
    case("value_bare_lf_smuggles_field", "RFC 9112 §2.2", b"POST / HTTP/1.1\r\nHost: h\r\nX-A: 1\nContent-Length: 5\r\n\r\nhello", Reject(400)),
    case("value_cr_cr_lf", "RFC 9112 §2.2", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\r\n\r\n", Reject(400)),
    case("head_ends_lf_lf", "RFC 9112 §2.2", b"GET / HTTP/1.1\r\nHost: h\n\n", Reject(400)),
    case("head_ends_cr_lf_lf", "RFC 9112 §2.2", b"GET / HTTP/1.1\r\nHost: h\r\n\n", Reject(400)),
    // Valid: obs-text is allowed in values and forwarded byte for byte.
    case("value_obs_text", "RFC 9110 §5.5", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: caf\xc3\xa9 \xff\r\n\r\n", Forward(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: caf\xc3\xa9 \xff\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n")),
    // Valid: OWS around a value is not part of it; Apex writes one space after the colon.
    case("value_ows_trimmed", "RFC 9110 §5.5", b"GET / HTTP/1.1\r\nHost: h\r\nX-A:  \t1 2\t  \r\n\r\n", Forward(canon!("GET /", "h", "X-A: 1 2\r\n", "\r\n"))),
    case("value_empty", "RFC 9110 §5.5", b"GET / HTTP/1.1\r\nHost: h\r\nX-A:\r\n\r\n", Forward(canon!("GET /", "h", "X-A: \r\n", "\r\n"))),
    case("name_all_tchars", "RFC 9110 §5.6.2", b"GET / HTTP/1.1\r\nHost: h\r\n!#$%&'*+-.^_`|~09azAZ: 1\r\n\r\n", Forward(canon!("GET /", "h", "!#$%&'*+-.^_`|~09azAZ: 1\r\n", "\r\n"))),
    case("repeated_field_kept_in_order", "RFC 9110 §5.3", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-B: 2\r\nX-A: 3\r\n\r\n", Forward(canon!("GET /", "h", "X-A: 1\r\nX-B: 2\r\nX-A: 3\r\n", "\r\n"))),
    case("connection_names_field", "RFC 9110 §7.6.1", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: X-A, keep-alive\r\nX-A: 1\r\nX-B: 2\r\nKeep-Alive: timeout=5\r\n\r\n", Forward(canon!("GET /", "h", "X-B: 2\r\n", "\r\n"))),
    case("hop_by_hop_fields_dropped", "RFC 9110 §7.6.1", b"GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nTrailer: X-T\r\nProxy-Connection: keep-alive\r\nKeep-Alive: 1\r\nX-B: 2\r\n\r\n", Forward(canon!("GET /", "h", "X-B: 2\r\n", "\r\n"))),
    // Host can never be removed by naming it in Connection (it is what the upstream routes on).
    case("connection_names_host", "RFC 9110 §7.6.1", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Host\r\n\r\n", Forward(GET_H)),
    // A client cannot forge Apex's X-Forwarded-Proto/Host, nor X-Forwarded-For: from a peer not
    // in trusted_proxies it is replaced (forwarded_for = "replace", the default).
    case("x_forwarded_spoofed", "RFC 7239 §5.2", b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: admin\r\n\r\n", Forward(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n")),
    // Nor in disguise: `X_Forwarded_Proto` is another field to Apex, and the same one as
    // Apex's own to a backend that maps `_` to `-` (CGI, WSGI, PHP); which copy wins is the
    // backend's guess, so the request is refused, as framing fields in disguise are.
    case("x_forwarded_proto_underscore_is_refused", "RFC 7239 §5.2", b"GET / HTTP/1.1\r\nHost: h\r\nX_Forwarded_Proto: https\r\n\r\n", Reject(400)),
    case("x_forwarded_host_underscore_is_refused", "RFC 7239 §5.2", b"GET / HTTP/1.1\r\nHost: h\r\nx-forwarded_host: admin\r\n\r\n", Reject(400)),
    case("x_forwarded_for_underscore_is_refused", "RFC 7239 §5.2", b"GET / HTTP/1.1\r\nHost: h\r\nX_FORWARDED_FOR: 10.9.9.9\r\n\r\n", Reject(400)),
];

// ---------------------------------------------------------------- request line and target

/// RFC 9112 §3: request-line = method SP request-target SP HTTP-version, single SPs; §2.3:
/// HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive; §3 "Recipients of an invalid
/// request-line SHOULD respond with either a 400 (Bad Request) error or a 301"; §2.2: bare CR
/// and LF refused; §3.2: the target has no whitespace or control bytes.
#[rustfmt::skip]
const REQUEST_LINE: &[Case] = &[
    case("http10_request", "RFC 9112 §2.3", b"GET / HTTP/1.0\r\nHost: h\r\n\r\n", Forward(GET_H)),
    case("leading_empty_line", "RFC 9112 §2.2", b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", Forward(GET_H)),
    case("leading_bare_lf", "RFC 9112 §2.2", b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("leading_space", "RFC 9112 §3", b" GET / HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("tab_after_method", "RFC 9112 §3", b"GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("tab_before_version", "RFC 9112 §3", b"GET /\tHTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("two_spaces_after_method", "RFC 9112 §3", b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("two_spaces_before_version", "RFC 9112 §3", b"GET /  HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("trailing_space_after_version", "RFC 9112 §3", b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", Reject(400)),
    case("vertical_tab_separator", "RFC 9112 §3", b"GET\x0b/ HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("version_lowercase", "RFC 9112 §2.3", b"GET / http/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("version_1_2", "RFC 9112 §2.3", b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", Reject(400)),
    case("version_2_0", "RFC 9112 §2.3", b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", Reject(400)),
    case("version_0_9", "RFC 9112 §2.3", b"GET / HTTP/0.9\r\nHost: h\r\n\r\n", Reject(400)),
    case("version_1_10", "RFC 9112 §2.3", b"GET / HTTP/1.10\r\nHost: h\r\n\r\n", Reject(400)),
    case("version_leading_zero", "RFC 9112 §2.3", b"GET / HTTP/01.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("version_no_minor", "RFC 9112 §2.3", b"GET / HTTP/1\r\nHost: h\r\n\r\n", Reject(400)),
    case("version_missing", "RFC 9112 §3", b"GET /\r\nHost: h\r\n\r\n", Reject(400)),
    case("http09_simple_request", "RFC 9112 §3", b"GET /\r\n", Reject(400)),
    case("target_missing", "RFC 9112 §3", b"GET HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("method_only", "RFC 9112 §3", b"GET\r\nHost: h\r\n\r\n", Reject(400)),
    case("method_bad_char", "RFC 9110 §9.1", b"GE@T / HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("method_nul", "RFC 9110 §9.1", b"G\x00T / HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("http2_preface", "RFC 9113 §3.4", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Reject(400)),
    case("tls_client_hello", "RFC 9112 §3", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", Reject(400)),
    case("request_line_bare_cr", "RFC 9112 §2.2", b"GET / HTTP/1.1\rHost: h\r\n\r\n", Reject(400)),
    case("request_line_bare_lf", "RFC 9112 §2.2", b"GET / HTTP/1.1\nHost: h\r\n\r\n", Reject(400)),
    // Methods are case-sensitive tokens: "get" is an unknown method, forwarded as is.
    case("method_lowercase_is_another_method", "RFC 9110 §9.1", b"get / HTTP/1.1\r\nHost: h\r\n\r\n", Forward(canon!("get /", "h", "", "\r\n"))),
    case("method_unknown", "RFC 9110 §9.1", b"FROB / HTTP/1.1\r\nHost: h\r\n\r\n", Forward(canon!("FROB /", "h", "", "\r\n"))),
    case("target_with_space", "RFC 9112 §3.2", b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("target_with_tab", "RFC 9112 §3.2", b"GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("target_nul", "RFC 9112 §3.2", b"GET /a\x00b HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("target_soh", "RFC 9112 §3.2", b"GET /a\x01b HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("target_escape", "RFC 9112 §3.2", b"GET /a\x1bb HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("target_del", "RFC 9112 §3.2", b"GET /a\x7fb HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("target_bare_cr", "RFC 9112 §2.2", b"GET /a\rb HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("target_bare_lf", "RFC 9112 §2.2", b"GET /a\nb HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("target_non_ascii", "RFC 9112 §3.2", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    // RFC 9112 §3.2.1: origin-form = absolute-path [ "?" query ]; no fragment (RFC 3986 §3.5:
    // "#" is not allowed in path or query). A fragment never belongs on the wire: strict 400.
    case("target_fragment", "RFC 9112 §3.2.1", b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("target_fragment_after_query", "RFC 9112 §3.2.1", b"GET /a?b=1#frag HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    // Valid origin-forms are forwarded untouched (a proxy does not normalise the path).
    case("target_percent_encoded_nul", "RFC 3986 §2.1", b"GET /a%00b HTTP/1.1\r\nHost: h\r\n\r\n", Forward(canon!("GET /a%00b", "h", "", "\r\n"))),
    case("target_dot_segments", "RFC 9110 §4.2.3", b"GET /a/../b HTTP/1.1\r\nHost: h\r\n\r\n", Forward(canon!("GET /a/../b", "h", "", "\r\n"))),
    case("target_double_slash", "RFC 9112 §3.2.1", b"GET //x/y HTTP/1.1\r\nHost: h\r\n\r\n", Forward(canon!("GET //x/y", "h", "", "\r\n"))),
    case("target_query", "RFC 9112 §3.2.1", b"GET /a?b=1&c=%20 HTTP/1.1\r\nHost: h\r\n\r\n", Forward(canon!("GET /a?b=1&c=%20", "h", "", "\r\n"))),
];

// ---------------------------------------------------------------- Host and target forms

/// RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host, with more than
/// one Host field line, or with an invalid Host value (Host = uri-host [ ":" port ], RFC 9110
/// §7.2). §3.2.2: with an absolute-form target, the target's authority wins and a proxy MUST
/// send a Host generated from it; Apex additionally refuses a Host that disagrees (documented).
#[rustfmt::skip]
const HOSTS: &[Case] = &[
    case("absolute_form_agrees_with_host", "RFC 9112 §3.2.2", b"GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n", Forward(canon!("GET /x", "h", "", "\r\n"))),
    // §3.2: "A client MUST send a Host header field in an HTTP/1.1 request even if the
    // request-target is in the absolute-form"; a server MUST answer 400 to one that lacks it.
    case("absolute_form_without_host", "RFC 9112 §3.2", b"GET http://h/x HTTP/1.1\r\n\r\n", Reject(400)),
    // Host names are case-insensitive (RFC 3986 §3.2.2); the target's spelling is forwarded.
    case("absolute_form_authority_case_differs", "RFC 9112 §3.2.2", b"GET http://H/x HTTP/1.1\r\nHost: h\r\n\r\n", Forward(canon!("GET /x", "H", "", "\r\n"))),
    case("absolute_form_scheme_uppercase", "RFC 3986 §3.1", b"GET HTTP://h/x HTTP/1.1\r\nHost: h\r\n\r\n", Forward(canon!("GET /x", "h", "", "\r\n"))),
    case("absolute_form_https", "RFC 9112 §3.2.2", b"GET https://h/x HTTP/1.1\r\nHost: h\r\n\r\n", Forward(canon!("GET /x", "h", "", "\r\n"))),
    case("absolute_form_empty_path", "RFC 9112 §3.2.1", b"GET http://h HTTP/1.1\r\nHost: h\r\n\r\n", Forward(GET_H)),
    case("absolute_form_with_query", "RFC 9112 §3.2.2", b"GET http://h/x?y=1 HTTP/1.1\r\nHost: h\r\n\r\n", Forward(canon!("GET /x?y=1", "h", "", "\r\n"))),
    case("absolute_form_with_port", "RFC 9112 §3.2.2", b"GET http://h:8080/x HTTP/1.1\r\nHost: h:8080\r\n\r\n", Forward(canon!("GET /x", "h:8080", "", "\r\n"))),
    case("absolute_form_ipv6", "RFC 9112 §3.2.2", b"GET http://[::1]:8080/x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", Forward(canon!("GET /x", "[::1]:8080", "", "\r\n"))),
    case("absolute_form_disagrees_with_host", "RFC 9112 §3.2.2", b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n", Reject(400)),
    case("absolute_form_port_disagrees", "RFC 9112 §3.2.2", b"GET http://h:8080/ HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("absolute_form_userinfo", "RFC 9110 §4.2.4", b"GET http://user@h/ HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("absolute_form_userinfo_password", "RFC 9110 §4.2.4", b"GET http://u:p@h/ HTTP/1.1\r\n\r\n", Reject(400)),
    case("absolute_form_empty_authority", "RFC 9110 §4.2.1", b"GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("absolute_form_ftp_scheme", "RFC 9112 §3.2.2", b"GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("absolute_form_one_slash", "RFC 9112 §3.2", b"GET http:/h/x HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("absolute_form_bad_host_char", "RFC 9110 §4.2.1", b"GET http://h\"x/ HTTP/1.1\r\n\r\n", Reject(400)),
    case("absolute_form_fragment", "RFC 9112 §3.2.2", b"GET http://h/x#frag HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    // Valid absolute-URI, but it has no path to keep: Apex refuses rather than synthesise
    // "/?y=1" (safe; the strict outcome for a form reverse proxies should not see).
    case("absolute_form_query_without_path", "RFC 9112 §3.2.1", b"GET http://h?y=1 HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    // Apex's documented rule: a Host that disagrees with the target's authority is refused,
    // an empty one included (strict; §3.2.2 would let the target win).
    case("absolute_form_empty_host_field", "RFC 9112 §3.2.2", b"GET http://h/x HTTP/1.1\r\nHost:\r\n\r\n", Reject(400)),
    case("absolute_form_http10_without_host", "RFC 9112 §3.2.2", b"GET http://h/x HTTP/1.0\r\n\r\n", Forward(canon!("GET /x", "h", "", "\r\n"))),
    case("host_missing_http11", "RFC 9112 §3.2", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", Reject(400)),
    // HTTP/1.0 has no Host requirement; Apex sends the upstream an empty Host (RFC 9112 §3.2:
    // the value a client sends when the target has no authority).
    case("host_missing_http10", "RFC 9112 §3.2", b"GET / HTTP/1.0\r\n\r\n", Forward(canon!("GET /", "", "", "\r\n"))),
    // An empty Host is a valid field value (RFC 9112 §3.2) and §3.3 then uses the server's
    // default authority: forwarded with the empty value, routed by the catch-all.
    case("host_empty", "RFC 9112 §3.2", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", Forward(canon!("GET /", "", "", "\r\n"))),
    case("host_repeated_equal", "RFC 9112 §3.2", b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n", Reject(400)),
    case("host_repeated_different", "RFC 9112 §3.2", b"GET / HTTP/1.1\r\nHost: h\r\nHost: evil\r\n\r\n", Reject(400)),
    case("host_repeated_case_differs", "RFC 9112 §3.2", b"GET / HTTP/1.1\r\nHost: h\r\nhost: h\r\n\r\n", Reject(400)),
    case("host_repeated_http10", "RFC 9112 §3.2", b"GET / HTTP/1.0\r\nHost: h\r\nHost: evil\r\n\r\n", Reject(400)),
    case("host_list", "RFC 9112 §3.2", b"GET / HTTP/1.1\r\nHost: h, evil\r\n\r\n", Reject(400)),
    case("host_userinfo", "RFC 9110 §7.2", b"GET / HTTP/1.1\r\nHost: user@h\r\n\r\n", Reject(400)),
    case("host_at_only", "RFC 9110 §7.2", b"GET / HTTP/1.1\r\nHost: @h\r\n\r\n", Reject(400)),
    case("host_space_inside", "RFC 9110 §7.2", b"GET / HTTP/1.1\r\nHost: h x\r\n\r\n", Reject(400)),
    case("host_tab_inside", "RFC 9110 §7.2", b"GET / HTTP/1.1\r\nHost: h\tx\r\n\r\n", Reject(400)),
    case("host_nul", "RFC 9110 §5.5", b"GET / HTTP/1.1\r\nHost: h\x00x\r\n\r\n", Reject(400)),
    case("host_slash", "RFC 9110 §7.2", b"GET / HTTP/1.1\r\nHost: h/x\r\n\r\n", Reject(400)),
    case("host_question_mark", "RFC 9110 §7.2", b"GET / HTTP/1.1\r\nHost: h?x\r\n\r\n", Reject(400)),
    case("host_hash", "RFC 9110 §7.2", b"GET / HTTP/1.1\r\nHost: h#x\r\n\r\n", Reject(400)),
    case("host_port_letters", "RFC 9110 §7.2", b"GET / HTTP/1.1\r\nHost: a:x\r\n\r\n", Reject(400)),
    case("host_port_huge", "RFC 9110 §7.2", b"GET / HTTP/1.1\r\nHost: a:99999999\r\n\r\n", Reject(400)),
    case("host_two_ports", "RFC 9110 §7.2", b"GET / HTTP/1.1\r\nHost: a:80:80\r\n\r\n", Reject(400)),
    case("host_ipv6_unbracketed", "RFC 3986 §3.2.2", b"GET / HTTP/1.1\r\nHost: ::1\r\n\r\n", Reject(400)),
    case("host_ipv6_unclosed", "RFC 3986 §3.2.2", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", Reject(400)),
    case("host_ipv6_junk_after", "RFC 3986 §3.2.2", b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", Reject(400)),
    case("host_ipv6_empty", "RFC 3986 §3.2.2", b"GET / HTTP/1.1\r\nHost: []\r\n\r\n", Reject(400)),
    case("host_non_ascii", "RFC 9110 §7.2", b"GET / HTTP/1.1\r\nHost: h\xc3\xa9\r\n\r\n", Reject(400)),
    case("host_with_port", "RFC 9110 §7.2", b"GET / HTTP/1.1\r\nHost: h:8080\r\n\r\n", Forward(canon!("GET /", "h:8080", "", "\r\n"))),
    case("host_ipv6", "RFC 3986 §3.2.2", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", Forward(canon!("GET /", "[::1]:8080", "", "\r\n"))),
    case("host_ipv4", "RFC 3986 §3.2.2", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", Forward(canon!("GET /", "127.0.0.1", "", "\r\n"))),
    case("host_ows_trimmed", "RFC 9110 §5.5", b"GET / HTTP/1.1\r\nHost: \t h \t\r\n\r\n", Forward(GET_H)),
    case("host_underscore", "RFC 3986 §3.2.2", b"GET / HTTP/1.1\r\nHost: my_host\r\n\r\n", Forward(canon!("GET /", "my_host", "", "\r\n"))),
    case("host_after_other_fields", "RFC 9112 §3.2", b"GET / HTTP/1.1\r\nX-A: 1\r\nHost: h\r\n\r\n", Forward(canon!("GET /", "h", "X-A: 1\r\n", "\r\n"))),
];

// ---------------------------------------------------------------- methods, Expect, Upgrade

/// RFC 9110 §9.3.6: CONNECT is for proxies; Apex is not one (405). RFC 9112 §3.2.3/§3.2.4:
/// authority-form only for CONNECT, asterisk-form only for OPTIONS. RFC 9110 §10.1.1: an
/// expectation other than 100-continue MAY be answered 417. RFC 9110 §7.8: Upgrade is
/// hop-by-hop, honoured only when listed in Connection, and never in HTTP/1.0; h2c is never
/// tunnelled (RFC 9113 §3.1 deprecates it), so it is stripped, not forwarded.
#[rustfmt::skip]
const METHODS: &[Case] = &[
    case("connect_authority_form", "RFC 9110 §9.3.6", b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", Reject(405)),
    case("connect_origin_form", "RFC 9110 §9.3.6", b"CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n", Reject(405)),
    case("connect_http10", "RFC 9110 §9.3.6", b"CONNECT h:443 HTTP/1.0\r\n\r\n", Reject(405)),
    // Methods are case-sensitive: "connect" is not CONNECT, and its authority-form is invalid.
    case("connect_lowercase_authority_form", "RFC 9112 §3.2.3", b"connect h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", Reject(400)),
    case("get_authority_form", "RFC 9112 §3.2.3", b"GET h:80 HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("get_asterisk_form", "RFC 9112 §3.2.4", b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("post_asterisk_form", "RFC 9112 §3.2.4", b"POST * HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", Reject(400)),
    case("head_asterisk_form", "RFC 9112 §3.2.4", b"HEAD * HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("options_asterisk_with_junk", "RFC 9112 §3.2.4", b"OPTIONS *x HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    case("options_asterisk_form", "RFC 9112 §3.2.4", b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", Forward(canon!("OPTIONS *", "h", "", "\r\n"))),
    case("options_origin_form", "RFC 9110 §9.3.7", b"OPTIONS /x HTTP/1.1\r\nHost: h\r\n\r\n", Forward(canon!("OPTIONS /x", "h", "", "\r\n"))),
    case("expect_unknown", "RFC 9110 §10.1.1", b"POST / HTTP/1.1\r\nHost: h\r\nExpect: something\r\nContent-Length: 5\r\n\r\nhello", Reject(417)),
    case("expect_100_continue_in_list", "RFC 9110 §10.1.1", b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue, x\r\nContent-Length: 5\r\n\r\nhello", Reject(417)),
    case("expect_102_processing", "RFC 9110 §10.1.1", b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 102-processing\r\n\r\n", Reject(417)),
    case("expect_empty", "RFC 9110 §10.1.1", b"GET / HTTP/1.1\r\nHost: h\r\nExpect:\r\n\r\n", Reject(417)),
    case("expect_100_continue_with_parameter", "RFC 9110 §10.1.1", b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue;a=b\r\nContent-Length: 5\r\n\r\nhello", Reject(417)),
    // Apex answers 100 itself and never forwards Expect.
    case("expect_100_continue_mixed_case", "RFC 9110 §10.1.1", b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\nhello", Forward(POST_HELLO)),
    case("expect_100_continue_without_body", "RFC 9110 §10.1.1", b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n", Forward(GET_H)),
    case("expect_100_continue_http10", "RFC 9110 §10.1.1", b"POST / HTTP/1.0\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", Forward(POST_HELLO)),
    case("upgrade_h2c_with_settings", "RFC 9110 §7.8", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", Forward(GET_H)),
    case("upgrade_h2c_without_settings", "RFC 9110 §7.8", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", Forward(GET_H)),
    case("upgrade_h2c_uppercase", "RFC 9110 §7.8", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: H2C\r\n\r\n", Forward(GET_H)),
    case("upgrade_h2c_in_list", "RFC 9110 §7.8", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket, h2c\r\n\r\n", Forward(GET_H)),
    case("upgrade_without_connection_token", "RFC 9110 §7.8", b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n", Forward(GET_H)),
    case("upgrade_connection_names_other", "RFC 9110 §7.8", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nUpgrade: websocket\r\n\r\n", Forward(GET_H)),
    case("upgrade_on_http10", "RFC 9110 §7.8", b"GET / HTTP/1.0\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", Forward(GET_H)),
    case("upgrade_empty_value", "RFC 9110 §7.8", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade:\r\n\r\n", Forward(GET_H)),
    case("connection_upgrade_without_upgrade", "RFC 9110 §7.8", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n", Forward(GET_H)),
    // A WebSocket upgrade the upstream answers with 200: no tunnel; the bytes the client sent
    // next are parsed as HTTP, here a second request forwarded on its own.
    case("websocket_answered_200_then_http", "RFC 9110 §7.8", b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n", Forward(concat!(
        "GET /ws HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n",
        "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        "GET /next HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n",
    ).as_bytes())),
];

// ---------------------------------------------------------------- pipelining after a bad request

/// Each of these is sent between two good requests in one write: the first is answered 200 and
/// forwarded, the bad one gets its error and the close, and the third never reaches the
/// upstream (RFC 9112 §9.3.2: responses in order; after an unrecoverable framing error the
/// connection cannot continue, §6.3 / §9.6).
#[rustfmt::skip]
const PIPELINED_BAD: &[Case] = &[
    case("pipelined_cl_te", "RFC 9112 §6.1", b"POST /bad HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", Reject(400)),
    case("pipelined_te_cl", "RFC 9112 §6.1", b"POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", Reject(400)),
    case("pipelined_duplicate_cl", "RFC 9112 §6.3", b"POST /bad HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n", Reject(400)),
    case("pipelined_te_gzip", "RFC 9112 §6.1", b"POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", Reject(501)),
    case("pipelined_bad_chunk", "RFC 9112 §7.1", b"POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", RejectBody(400)),
    case("pipelined_chunk_size_overflow", "RFC 9112 §7.1", b"POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n\r\n", RejectBody(400)),
    case("pipelined_obs_fold", "RFC 9112 §5.2", b"GET /bad HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n 2\r\n\r\n", Reject(400)),
    case("pipelined_bare_lf", "RFC 9112 §2.2", b"GET /bad HTTP/1.1\nHost: h\r\n\r\n", Reject(400)),
    case("pipelined_nul_in_value", "RFC 9110 §5.5", b"GET /bad HTTP/1.1\r\nHost: h\r\nX-A: \x00\r\n\r\n", Reject(400)),
    case("pipelined_missing_host", "RFC 9112 §3.2", b"GET /bad HTTP/1.1\r\n\r\n", Reject(400)),
    case("pipelined_http2_version", "RFC 9112 §2.3", b"GET /bad HTTP/2.0\r\nHost: h\r\n\r\n", Reject(400)),
    case("pipelined_connect", "RFC 9110 §9.3.6", b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n", Reject(405)),
    case("pipelined_expect", "RFC 9110 §10.1.1", b"GET /bad HTTP/1.1\r\nHost: h\r\nExpect: nothing\r\n\r\n", Reject(417)),
];

const P1: &[u8] = b"GET /p1 HTTP/1.1\r\nHost: h\r\n\r\n";
const P1_UP: &[u8] = canon!("GET /p1", "h", "", "\r\n");
const P3: &[u8] = b"GET /p3 HTTP/1.1\r\nHost: h\r\n\r\n";

fn check_pipelined(rig: &Rig, case: &Case) -> Result<(), String> {
    let code = match case.expect {
        Reject(c) | RejectBody(c) => c,
        Forward(_) => return Err("pipelined cases must be rejections".into()),
    };
    let before = lens(&rig.up);
    let mut c = rig.apex.client();
    let _ = c.try_send(&[P1, case.request, P3].concat());
    let r = c.try_read_response(false).map_err(|e| format!("first (good) request: {e}"))?;
    if r.status != 200 || r.body != b"ok" {
        return Err(format!("first (good) request got {} {}", show(&r.head), show(&r.body)));
    }
    let res = apex_error(&mut c, code);
    thread::sleep(SETTLE);
    let got = joined(&since(&rig.up, &before));
    let rest = got.strip_prefix(P1_UP);
    let clean = match (rest, case.expect) {
        (Some(rest), RejectBody(_)) => !complete_message(rest) && !contains(rest, b"/p3"),
        (Some(rest), _) => rest.is_empty(),
        (None, _) => false,
    };
    if !clean {
        let what = format!("upstream received {}", show(&got));
        return Err(match res {
            Ok(()) => what,
            Err(e) => format!("{e}; {what}"),
        });
    }
    res
}

// ---------------------------------------------------------------- the request families

#[test]
fn catalogue_cl_te() {
    family("CL+TE", CL_TE);
}

#[test]
fn catalogue_content_length() {
    family("Content-Length", CONTENT_LENGTH);
}

#[test]
fn catalogue_transfer_encoding() {
    family("Transfer-Encoding", TRANSFER_ENCODING);
}

#[test]
fn catalogue_chunk_framing() {
    family("chunk framing", CHUNKS);
}

#[test]
fn catalogue_field_syntax() {
    family("field syntax", FIELDS);
}

#[test]
fn catalogue_request_line() {
    family("request line", REQUEST_LINE);
}

#[test]
fn catalogue_host_and_target_forms() {
    family("Host and target forms", HOSTS);
}

#[test]
fn catalogue_methods_expect_upgrade() {
    family("methods, Expect, Upgrade", METHODS);
}

#[test]
fn catalogue_pipelined_after_bad_request() {
    let rig = Rig::new(|c| c);
    let mut failures = vec![];
    for case in PIPELINED_BAD {
        let res = catch_unwind(AssertUnwindSafe(|| check_pipelined(&rig, case)))
            .unwrap_or_else(|p| Err(format!("panicked: {:?}", p.downcast_ref::<String>())))
            .and_then(|()| follow_up(&rig));
        if let Err(e) = res {
            failures.push(format!(
                "{} [{}]\n    request:  {}\n    expected: 200 for /p1, then {}, /p3 never upstream\n    got:      {e}",
                case.name,
                case.rfc,
                show(&[P1, case.request, P3].concat()),
                expected(&case.expect)
            ));
        }
    }
    assert_all_pass("pipelined after a bad request", PIPELINED_BAD.len(), &failures);
}

/// Head and header-count limits (RFC 6585 §5: 431), and the chunk-line and trailer bounds,
/// on an Apex with `head_bytes = 1KiB` and `headers = 10`. Built at run time (long bytes).
#[test]
fn catalogue_limits() {
    let rig = Rig::new(|c| c.limit("head_bytes", "\"1KiB\"").limit("headers", "10"));
    let fields = |n: usize| -> String { (0..n).map(|i| format!("X-{i}: v\r\n")).collect() };
    let pad_to = |prefix: &str, total: usize| -> String {
        // A head of exactly `total` bytes: prefix, one X-Pad field, blank line.
        let fixed = prefix.len() + "X-Pad: \r\n\r\n".len();
        format!("{prefix}X-Pad: {}\r\n\r\n", "p".repeat(total - fixed))
    };
    let up_head = |line: &str, mid: &str| -> Vec<u8> {
        format!(
            "{line} HTTP/1.1\r\nHost: h\r\n{mid}X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n"
        )
        .into_bytes()
    };
    let exact = pad_to("GET / HTTP/1.1\r\nHost: h\r\n", 1024);
    let exact_mid = exact.strip_prefix("GET / HTTP/1.1\r\nHost: h\r\n").unwrap().strip_suffix("\r\n").unwrap();
    let long_ext = format!(
        "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a={}\r\nhello\r\n0\r\n\r\n",
        "x".repeat(4100)
    );
    let ok_ext = format!(
        "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a={}\r\nhello\r\n0\r\n\r\n",
        "x".repeat(4000)
    );
    let big_trailer = format!(
        "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: {}\r\n\r\n",
        "t".repeat(17 * 1024)
    );
    // (name, rfc, request, bytes the upstream must receive or None, status if rejected)
    type Built = (&'static str, &'static str, Vec<u8>, Option<Vec<u8>>, u16);
    let owned: Vec<Built> = vec![
        ("head_of_exactly_head_bytes", "RFC 6585 §5", exact.clone().into_bytes(), Some(up_head("GET /", exact_mid)), 0),
        ("head_one_byte_over", "RFC 6585 §5", pad_to("GET / HTTP/1.1\r\nHost: h\r\n", 1025).into_bytes(), None, 431),
        (
            "request_line_over_head_bytes",
            "RFC 6585 §5",
            format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(1100)).into_bytes(),
            None,
            431,
        ),
        ("request_line_never_ends", "RFC 6585 §5", format!("GET /{}", "a".repeat(1100)).into_bytes(), None, 431),
        (
            "field_value_over_head_bytes",
            "RFC 6585 §5",
            format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n", "b".repeat(1100)).into_bytes(),
            None,
            431,
        ),
        (
            "fields_at_limit",
            "RFC 6585 §5",
            format!("GET / HTTP/1.1\r\nHost: h\r\n{}\r\n", fields(9)).into_bytes(),
            Some(up_head("GET /", &fields(9))),
            0,
        ),
        (
            "fields_over_limit",
            "RFC 6585 §5",
            format!("GET / HTTP/1.1\r\nHost: h\r\n{}\r\n", fields(10)).into_bytes(),
            None,
            431,
        ),
        (
            "fields_far_over_limit",
            "RFC 6585 §5",
            format!("GET / HTTP/1.1\r\nHost: h\r\n{}\r\n", fields(60)).into_bytes(),
            None,
            431,
        ),
        ("chunk_line_under_bound", "RFC 9112 §7.1.1", ok_ext.into_bytes(), Some(HELLO_CHUNKED.to_vec()), 0),
        ("chunk_line_over_bound", "RFC 9112 §7.1.1", long_ext.into_bytes(), None, 400),
        ("trailer_section_over_bound", "RFC 9112 §7.1.2", big_trailer.into_bytes(), None, 400),
    ];
    let cases: Vec<Case> = owned
        .iter()
        .map(|(name, rfc, req, fwd, code)| {
            let expect = match (fwd, *code) {
                (Some(b), _) => Forward(b),
                (None, 400) => RejectBody(400),
                (None, c) => Reject(c),
            };
            case(name, rfc, req, expect)
        })
        .collect();
    let failures = run(&rig, &cases);
    assert_all_pass("limits", cases.len(), &failures);
}

// ---------------------------------------------------------------- the response side

/// What the client must see when the upstream answers with a response case.
#[derive(Clone, Copy, Debug)]
enum Got {
    /// Apex's own 502 (the head was never relayed), and nothing of the upstream's bytes.
    Bad,
    /// The valid response relayed with this status (body "ok" for a 200 to GET, else none),
    /// and nothing after it.
    Relay(u16),
    /// The head may already be out: a 502, or a truncated body the client can tell is
    /// truncated, then a close; never a complete message built from the bad bytes.
    Cut,
}

#[derive(Clone, Copy, Debug)]
struct RespCase {
    name: &'static str,
    rfc: &'static str,
    /// Extra request fields (the request is `GET /resp/N` to Host h).
    extra: &'static str,
    /// What the upstream writes when it has read the request.
    response: &'static [u8],
    /// Written 100 ms later on the same connection, if any.
    later: Option<&'static [u8]>,
    /// The upstream closes its connection after `response`.
    close: bool,
    /// The request is HEAD rather than GET.
    head: bool,
    /// The next request follows the response at once, before `later` is written.
    next_at_once: bool,
    expect: Got,
}

const fn resp(name: &'static str, rfc: &'static str, response: &'static [u8], expect: Got) -> RespCase {
    RespCase { name, rfc, extra: "", response, later: None, close: false, head: false, next_at_once: false, expect }
}

/// Every bad byte sequence an upstream sends carries this marker; no client may ever see it.
const EVIL: &[u8] = b"EVIL";

const H2C_REQ: &str =
    "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n";
const WS_REQ: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// RFC 9112 §6.3 items 3-5 for responses (CL+TE "ought to be handled as an error"; invalid
/// Content-Length "unrecoverable error"), §2.2/§5 syntax, §4 status-line = HTTP-version SP
/// 3DIGIT SP reason, RFC 9110 §15 (status 100-599), §7.8 (101 only to a requested Upgrade).
/// A proxy MUST NOT forward a response it cannot frame (RFC 9112 §6.3 item 5: "the proxy MUST
/// close the connection to the server, discard the received response, and send a 502").
#[rustfmt::skip]
const RESPONSES: &[RespCase] = &[
    resp("resp_cl_then_te", "RFC 9112 §6.3", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nEVIL\r\n0\r\n\r\n", Got::Bad),
    resp("resp_te_then_cl", "RFC 9112 §6.3", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n4\r\nEVIL\r\n0\r\n\r\n", Got::Bad),
    resp("resp_cl_duplicate_equal", "RFC 9110 §8.6", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nEVIL", Got::Bad),
    resp("resp_cl_duplicate_different", "RFC 9112 §6.3", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 4\r\n\r\nEVIL", Got::Bad),
    resp("resp_cl_list", "RFC 9112 §6.3", b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\nEVIL", Got::Bad),
    resp("resp_cl_plus", "RFC 9110 §8.6", b"HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\nEVIL", Got::Bad),
    resp("resp_cl_negative", "RFC 9110 §8.6", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nEVIL", Got::Bad),
    resp("resp_cl_hex", "RFC 9110 §8.6", b"HTTP/1.1 200 OK\r\nContent-Length: 0x4\r\n\r\nEVIL", Got::Bad),
    resp("resp_cl_overflow", "RFC 9110 §8.6", b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551620\r\n\r\nEVIL", Got::Bad),
    resp("resp_cl_empty", "RFC 9110 §8.6", b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nEVIL", Got::Bad),
    resp("resp_cl_letters", "RFC 9110 §8.6", b"HTTP/1.1 200 OK\r\nContent-Length: 4x\r\n\r\nEVIL", Got::Bad),
    resp("resp_te_chunked_gzip", "RFC 9112 §6.3", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n4\r\nEVIL\r\n0\r\n\r\n", Got::Bad),
    resp("resp_te_chunked_twice", "RFC 9112 §7", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nEVIL\r\n0\r\n\r\n", Got::Bad),
    resp("resp_http10_with_te_chunked", "RFC 9112 §6.1", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nEVIL\r\n0\r\n\r\n", Got::Bad),
    resp("resp_nul_in_value", "RFC 9110 §5.5", b"HTTP/1.1 200 OK\r\nX-A: a\x00EVIL\r\nContent-Length: 2\r\n\r\nok", Got::Bad),
    resp("resp_nul_in_name", "RFC 9110 §5.1", b"HTTP/1.1 200 OK\r\nX-\x00EVIL: a\r\nContent-Length: 2\r\n\r\nok", Got::Bad),
    resp("resp_control_in_value", "RFC 9110 §5.5", b"HTTP/1.1 200 OK\r\nX-A: \x1b[2JEVIL\r\nContent-Length: 2\r\n\r\nok", Got::Bad),
    resp("resp_bare_lf_everywhere", "RFC 9112 §2.2", b"HTTP/1.1 200 OK\nContent-Length: 4\n\nEVIL", Got::Bad),
    resp("resp_bare_lf_in_one_line", "RFC 9112 §2.2", b"HTTP/1.1 200 OK\r\nX-A: 1\nSet-Cookie: EVIL\r\nContent-Length: 2\r\n\r\nok", Got::Bad),
    resp("resp_bare_cr", "RFC 9112 §2.2", b"HTTP/1.1 200 OK\r\nX-A: 1\rSet-Cookie: EVIL\r\nContent-Length: 2\r\n\r\nok", Got::Bad),
    resp("resp_obs_fold", "RFC 9112 §5.2", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n EVIL\r\nContent-Length: 2\r\n\r\nok", Got::Bad),
    resp("resp_space_before_colon", "RFC 9112 §5.1", b"HTTP/1.1 200 OK\r\nContent-Length : 4\r\n\r\nEVIL", Got::Bad),
    resp("resp_status_99", "RFC 9112 §4", b"HTTP/1.1 99 EVIL\r\nContent-Length: 2\r\n\r\nok", Got::Bad),
    resp("resp_status_600", "RFC 9110 §15", b"HTTP/1.1 600 EVIL\r\nContent-Length: 2\r\n\r\nok", Got::Bad),
    resp("resp_status_letters", "RFC 9112 §4", b"HTTP/1.1 2OO EVIL\r\nContent-Length: 2\r\n\r\nok", Got::Bad),
    resp("resp_status_four_digits", "RFC 9112 §4", b"HTTP/1.1 2000 EVIL\r\nContent-Length: 2\r\n\r\nok", Got::Bad),
    resp("resp_version_lowercase", "RFC 9112 §2.3", b"http/1.1 200 EVIL\r\nContent-Length: 2\r\n\r\nok", Got::Bad),
    resp("resp_version_2", "RFC 9112 §2.3", b"HTTP/2.0 200 EVIL\r\nContent-Length: 2\r\n\r\nok", Got::Bad),
    resp("resp_not_http", "RFC 9112 §4", b"EVIL\r\n\r\n", Got::Bad),
    resp("resp_101_unrequested", "RFC 9110 §15.2.2", b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nEVIL", Got::Bad),
    RespCase { extra: H2C_REQ, ..resp("resp_101_to_h2c", "RFC 9110 §7.8", b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nEVIL", Got::Bad) },
    RespCase { extra: WS_REQ, ..resp("resp_101_without_upgrade_field", "RFC 9110 §7.8", b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\nEVIL", Got::Bad) },
    // RFC 9110 §7.8: "A server MUST NOT switch to a protocol that was not indicated by the
    // client". A proxy that tunnels such a switch hands the client a protocol it never chose;
    // strict: 502.
    // Upgrade is HTTP/1.1's (RFC 9110 §7.8); HTTP/1.0 has no 1xx at all (§15.2): a 101 from
    // an HTTP/1.0 server is not a switch Apex can trust.
    RespCase { extra: WS_REQ, ..resp("resp_101_from_http10", "RFC 9110 §7.8", b"HTTP/1.0 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nEVIL", Got::Bad) },
    RespCase { extra: WS_REQ, ..resp("resp_101_to_other_protocol", "RFC 9110 §7.8", b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: EVIL\r\n\r\nEVIL", Got::Bad) },
    // Bytes after a complete response: relayed response, the rest discarded, connection dropped.
    resp("resp_extra_bytes_after_body", "RFC 9112 §6.3", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL", Got::Relay(200)),
    RespCase { later: Some(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"), ..resp("resp_second_unsolicited_response", "RFC 9112 §9.3.2", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Got::Relay(200)) },
    RespCase { later: Some(b"EVIL"), ..resp("resp_garbage_while_idle", "RFC 9112 §9.3.2", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Got::Relay(200)) },
    RespCase { later: Some(b"EVIL"), ..resp("resp_chunked_then_garbage", "RFC 9112 §7.1", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", Got::Relay(200)) },
    // A body where none can be (RFC 9110 §6.4.1, RFC 9112 §6.3 items 1-2): not relayed, and
    // not left on the connection to be read as the next response.
    RespCase { head: true, ..resp("resp_body_on_head", "RFC 9110 §9.3.2", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL", Got::Relay(200)) },
    // The same body in a later write (an application that answers HEAD as GET), with the next
    // request already on its way: it must not find those bytes waiting as its response, so a
    // connection that answered a HEAD is never pooled.
    RespCase { head: true, next_at_once: true, later: Some(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"), ..resp("resp_body_on_head_written_later", "RFC 9110 §9.3.2", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", Got::Relay(200)) },
    resp("resp_body_on_204", "RFC 9110 §15.3.5", b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\nEVIL", Got::Relay(204)),
    resp("resp_body_on_304", "RFC 9110 §15.4.5", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\nEVIL", Got::Relay(304)),
    resp("resp_body_on_1xx", "RFC 9110 §15.2", b"HTTP/1.1 103 Early Hints\r\nContent-Length: 4\r\n\r\nEVILHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Got::Bad),
    // Body errors after the head has been relayed: truncation the client can see, then close.
    resp("resp_chunk_size_not_hex", "RFC 9112 §7.1", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\nEVIL\r\n0\r\n\r\n", Got::Cut),
    resp("resp_chunk_bare_lf_after_size", "RFC 9112 §7.1", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\nEVIL\r\n0\r\n\r\n", Got::Cut),
    resp("resp_chunk_size_overflow", "RFC 9112 §7.1", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000004\r\nEVIL\r\n0\r\n\r\n", Got::Cut),
    resp("resp_chunk_0x_size", "RFC 9112 §7.1", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x4\r\nEVIL\r\n0\r\n\r\n", Got::Cut),
    resp("resp_chunk_data_longer_than_size", "RFC 9112 §7.1", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokEVIL\r\n0\r\n\r\n", Got::Cut),
    resp("resp_chunk_bad_extension", "RFC 9112 §7.1.1", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;a=\"x\r\nEVIL\r\n0\r\n\r\n", Got::Cut),
    resp("resp_chunk_trailer_obs_fold", "RFC 9112 §7.1.2", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n EVIL\r\n\r\n", Got::Cut),
    RespCase { close: true, ..resp("resp_cl_body_cut_short", "RFC 9112 §8", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", Got::Cut) },
    RespCase { close: true, ..resp("resp_chunked_cut_short", "RFC 9112 §8", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", Got::Cut) },
];

/// The upstream for the response table: `GET /resp/N` gets RESPONSES[N]; anything else 200 ok.
fn response_upstream() -> Upstream {
    Upstream::start(|mut c| {
        while let Some(req) = c.read_request() {
            let case =
                req.target.strip_prefix("/resp/").and_then(|n| n.parse::<usize>().ok()).and_then(|n| RESPONSES.get(n));
            let Some(case) = case else {
                if c.write(&ok("ok")).is_err() {
                    return;
                }
                continue;
            };
            if c.write(case.response).is_err() {
                return;
            }
            if let Some(later) = case.later {
                thread::sleep(Duration::from_millis(100));
                if c.write(later).is_err() {
                    return;
                }
            }
            if case.close {
                c.shutdown();
                return;
            }
        }
    })
}

/// Whether raw client bytes hold one response whose body is complete by its own framing.
fn complete_response(b: &[u8]) -> bool {
    let Some(end) = find(b, b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
    let body = &b[end + 4..];
    if head.contains("\r\ntransfer-encoding: chunked") {
        return matches!(decode_chunked(body), Ok(Some(_)));
    }
    match head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        Some(n) => n.trim().parse::<usize>().is_ok_and(|n| body.len() >= n),
        None => false, // close-delimited: never provably complete
    }
}

fn check_response(apex: &Apex, up: &Upstream, i: usize, case: &RespCase) -> Result<(), String> {
    let mut c = apex.client();
    let method = if case.head { "HEAD" } else { "GET" };
    let _ = c.try_send(format!("{method} /resp/{i} HTTP/1.1\r\nHost: h\r\n{}\r\n", case.extra).as_bytes());
    let mut seen: Vec<u8> = vec![];
    let mut open = true;
    match case.expect {
        Got::Bad | Got::Relay(_) => {
            let r = c.try_read_response(case.head).map_err(|e| format!("no response: {e}"))?;
            seen.extend_from_slice(&r.head);
            seen.extend_from_slice(&r.body);
            let good = match case.expect {
                Got::Bad => r.status == 502 && r.header("content-length").is_some() && r.body == b"502 Bad Gateway\n",
                Got::Relay(code) => {
                    let body: &[u8] = if code == 200 && !case.head { b"ok" } else { b"" };
                    r.status == code && r.body == body
                }
                Got::Cut => false,
            };
            if !good || contains(&seen, EVIL) {
                return Err(format!("client got {}", show(&seen)));
            }
            // Give `later` bytes time to arrive; nothing more may reach the client.
            if !case.next_at_once {
                thread::sleep(Duration::from_millis(if case.later.is_some() { 300 } else { 20 }));
                match c.wait(Duration::from_millis(100)) {
                    Seen::Silent => {}
                    Seen::Closed => open = false,
                    Seen::Data(d) => return Err(format!("client got {} and then {}", show(&seen), show(&d))),
                }
            }
        }
        Got::Cut => {
            let (got, closed) = c.read_until_close(Duration::from_secs(4));
            if !closed {
                return Err(format!("connection not closed after a cut response; client got {}", show(&got)));
            }
            let is_502 = got.starts_with(b"HTTP/1.1 502 ");
            if contains(&got, EVIL) || (!got.is_empty() && !is_502 && complete_response(&got)) {
                return Err(format!("client got {} (looks complete, or has the bad bytes)", show(&got)));
            }
            open = false;
        }
    }
    // The next request (on the same client connection when it is still open) gets a clean
    // answer, from a different upstream connection.
    let mut next = if open { c } else { apex.client() };
    next.try_send(format!("GET /after/{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
        .map_err(|e| format!("next request: write: {e}"))?;
    let r = next.try_read_response(false).map_err(|e| format!("next request: {e}"))?;
    if r.status != 200 || r.body != b"ok" || contains(&r.head, EVIL) {
        return Err(format!("next request got {} {}", show(&r.head), show(&r.body)));
    }
    if case.next_at_once {
        thread::sleep(Duration::from_millis(300));
        if let Seen::Data(d) = next.wait(Duration::from_millis(100)) {
            return Err(format!("after the next response the client got {}", show(&d)));
        }
    }
    let reqs = up.requests();
    let conn_of = |t: &str| reqs.iter().find(|q| q.target == t).map(|q| q.conn);
    match (conn_of(&format!("/resp/{i}")), conn_of(&format!("/after/{i}"))) {
        (Some(a), Some(b)) if a == b => {
            Err(format!("upstream connection {a} was reused after the bad response (accepts: {})", up.accepts()))
        }
        (Some(_), Some(_)) => Ok(()),
        (a, b) => Err(format!("upstream did not see both requests: /resp {a:?}, /after {b:?}")),
    }
}

#[test]
fn catalogue_responses() {
    let up = response_upstream();
    let apex = Apex::start(
        &Config::to(up.addr).timeout("upstream_head", "2s").timeout("upstream_body", "2s").timeout("client_head", "2s"),
    );
    let mut failures = vec![];
    for (i, case) in RESPONSES.iter().enumerate() {
        let res = catch_unwind(AssertUnwindSafe(|| check_response(&apex, &up, i, case)))
            .unwrap_or_else(|p| Err(format!("panicked: {:?}", p.downcast_ref::<String>())));
        if let Err(e) = res {
            failures.push(format!(
                "{} [{}]\n    response: {}{}\n    expected: {:?}\n    got:      {e}",
                case.name,
                case.rfc,
                show(case.response),
                case.later.map(|l| format!(" then {}", show(l))).unwrap_or_default(),
                case.expect
            ));
        }
    }
    assert_all_pass("responses", RESPONSES.len(), &failures);
}

// ---------------------------------------------------------------- the catalogue itself

#[test]
fn catalogue_has_150_distinct_request_cases() {
    let tables: [&[Case]; 9] =
        [CL_TE, CONTENT_LENGTH, TRANSFER_ENCODING, CHUNKS, FIELDS, REQUEST_LINE, HOSTS, METHODS, PIPELINED_BAD];
    let all: Vec<&Case> = tables.iter().flat_map(|t| t.iter()).collect();
    assert!(all.len() >= 150, "only {} request cases", all.len());
    let mut names = std::collections::HashSet::new();
    let mut bytes = std::collections::HashSet::new();
    for c in &all {
        assert!(names.insert(c.name), "case name used twice: {}", c.name);
        assert!(bytes.insert(c.request), "request bytes used twice (second: {})", c.name);
        assert!(c.rfc.starts_with("RFC "), "{}: no RFC section", c.name);
    }
    let mut rnames = std::collections::HashSet::new();
    for r in RESPONSES {
        assert!(rnames.insert(r.name) && !names.contains(r.name), "response case name used twice: {}", r.name);
        assert!(
            contains(r.response, EVIL) || r.later.is_some_and(|l| contains(l, EVIL)) || r.close,
            "{}: no marker",
            r.name
        );
    }
}

/// Control for the runner itself: a case whose expectation is wrong must be reported, so a
/// passing family means Apex passed, not that the checks are vacuous.
#[test]
fn catalogue_runner_reports_wrong_expectations() {
    let rig = Rig::new(|c| c);
    let wrong = [
        case("valid_get_expected_rejected", "-", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
        case("valid_chunked_expected_rejected", "-", te!("5\r\nhello\r\n0\r\n\r\n"), RejectBody(400)),
        case("rejected_expected_forwarded", "-", b"GET / HTTP/1.1\r\n\r\n", Forward(GET_H)),
        case("forwarded_other_bytes", "-", b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", Forward(GET_H)),
        case("other_status", "-", b"CONNECT h:1 HTTP/1.1\r\nHost: h\r\n\r\n", Reject(400)),
    ];
    let failures = run(&rig, &wrong);
    assert_eq!(failures.len(), wrong.len(), "the runner missed a wrong expectation:\n{}", failures.join("\n"));
    let right = [case("control", "-", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", Forward(GET_H))];
    assert_all_pass("control", 1, &run(&rig, &right));
}
