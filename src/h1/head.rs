//! Request heads (RFC 9112 §2-§3, §6; RFC 9110 §7). `parse_request` turns a complete head into a
//! `Request` that borrows the head bytes, deciding the framing; `write::write_request` re-serialises it
//! for the upstream. Invariant: a `Request` that parses is unambiguous: one Host, one body
//! length (none, Content-Length or chunked), a target in origin-form for the upstream.

use bumpalo::Bump;

use super::{Field, Framing, H1Error, MessageFields, check_transfer_encoding, list_items, trim_ows};

#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The target as it goes upstream: origin-form (or `*` for OPTIONS).
    pub path: &'a str,
    /// HTTP minor version: 0 or 1.
    pub minor: u8,
    /// The Host value, as sent (or the authority of an absolute-form target).
    pub host: &'a [u8],
    /// Its host part, without the port: what routes match.
    pub host_name: &'a [u8],
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange (RFC 9112 §9.3).
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// The Upgrade value, when the client asked for a protocol switch Apex will tunnel.
    pub upgrade: Option<&'a [u8]>,
    pub headers: &'a [httparse::Header<'a>],
    /// What `Field::of` made of each header, in the same order: classified once, here.
    pub fields: &'a [Field],
    /// The head as it came, from the request line to its blank line: field lines that pass
    /// unchanged are copied from it in runs (`write::write_request`).
    pub raw: &'a [u8],
    /// Header names listed in Connection: hop-by-hop for this message (RFC 9110 §7.6.1).
    pub connection_names: &'a [&'a [u8]],
}

impl Request<'_> {
    /// RFC 9110 §9.2.2: idempotent methods may be retried automatically.
    pub fn idempotent(&self) -> bool {
        matches!(self.method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Parses one complete head: `head` is exactly the head, ending in its blank line.
pub fn parse_request<'a>(head: &'a [u8], arena: &'a Bump, headers_max: usize) -> Result<Request<'a>, H1Error> {
    match parse_request_in(head, arena, headers_max)? {
        // The head must be exactly the bytes given: never a prefix of them (a head found at the
        // wrong place must not pass with trailing bytes ignored).
        Some((req, n)) if n == head.len() => Ok(req),
        _ => Err(H1Error::Syntax("incomplete head")),
    }
}

/// Parses the head at the start of `buf`, which may hold more (a body, the next request):
/// `Some((request, head length))`, or None while no whole head is there yet, or when the buffer
/// starts with an empty line (`super::starts_a_head`: `find_head_end` decides on those).
// Always inlined into `read_head` (directly, and through `parse_request` for a head that came in
// pieces): left to the profile, LLVM keeps it out of line when a change elsewhere tips its
// estimate, a call and the loss of what the two share (get 5,947 against 5,892 instructions a
// request; bench/README.md, round 10).
#[inline(always)]
pub fn parse_request_in<'a>(
    buf: &'a [u8],
    arena: &'a Bump,
    headers_max: usize,
) -> Result<Option<(Request<'a>, usize)>, H1Error> {
    if !super::starts_a_head(buf) {
        return Ok(None);
    }
    let slots = super::header_slots(arena, headers_max)?;
    let mut req = httparse::Request::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, slots)
        .map_err(H1Error::from_httparse)?;
    let httparse::Status::Complete(len) = status else {
        return Ok(None);
    };
    let head = buf.get(..len).unwrap_or(&[]);
    let headers: &'a [httparse::Header<'a>] = req.headers;
    // A bare LF anywhere is the error for the whole head, before anything else is judged:
    // `lines_end_in_crlf`, checked in two parts. The end now, each field line in the loop that
    // classifies them (one pass over the fields, not two); an error found before the loop has
    // seen every line checks the rest first (`refuse`, off the common path).
    if !super::ends_in_blank_line(head) {
        return Err(H1Error::BadLineEnding);
    }
    let refuse = |e: H1Error| if super::lines_end_in_crlf(head, headers) { e } else { H1Error::BadLineEnding };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(refuse(H1Error::Syntax("incomplete request line")));
    };

    // RFC 9110 §9.3.6: CONNECT asks a forward proxy for a tunnel. Apex is a gateway.
    if method == "CONNECT" {
        return Err(refuse(H1Error::MethodNotAllowed));
    }
    // RFC 9112 §3.2: visible ASCII only; httparse lets some non-ASCII through.
    // No fragment either: no request-target form has one (RFC 9112 §3.2).
    if target.is_empty() || !target.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'#') {
        return Err(refuse(H1Error::BadTarget));
    }

    let mut host: Option<&[u8]> = None;
    let mut fields = MessageFields::default();
    let mut expect_continue = false;
    let mut names = bumpalo::collections::Vec::new_in(arena);

    // RFC 9110 §5.5: no control bytes in a value. httparse refuses them (its HEADER_VALUE_MAP is
    // exactly VCHAR, obs-text, SP and HTAB; h1::tests::field_values_checked_by_httparse holds it to
    // that), so values are not scanned a second time here.
    let kinds =
        arena.try_alloc_slice_fill_copy(headers.len(), Field::Other).map_err(|_| refuse(H1Error::TooManyHeaders))?;
    for (h, kind) in headers.iter().zip(kinds.iter_mut()) {
        if !super::crlf_before(head, h.name) {
            return Err(H1Error::BadLineEnding);
        }
        let name = h.name.as_bytes();
        let field = Field::of(name);
        *kind = field;
        // `Transfer_Encoding`, `Content_Length`, `Host`, `X_Forwarded_Proto` with underscores are
        // different fields to us, but the same to backends that map `_` to `-` (CGI, WSGI, PHP):
        // a framing field, or one Apex sets, in disguise is refused (nginx drops underscored
        // names by default for the same reason). Such a name is as long as the real one.
        if field == Field::Other && name.len() >= DISGUISE_MIN_LEN && is_ours_in_disguise(name) {
            return Err(refuse(H1Error::Syntax("underscore in a framing or forwarding header name")));
        }
        if fields.take(field, h.value, &mut names).map_err(refuse)? {
            continue;
        }
        match field {
            // RFC 9112 §3.2: more than one Host is a 400.
            Field::Host if host.is_some() => return Err(refuse(H1Error::BadHost)),
            Field::Host => host = Some(trim_ows(h.value)),
            Field::Expect => {
                // RFC 9110 §10.1.1: only 100-continue is defined.
                if trim_ows(h.value).eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = minor == 1;
                } else {
                    return Err(refuse(H1Error::ExpectationFailed));
                }
            }
            _ => {}
        }
    }
    // Every line has been checked from here on: errors below are the head's own.
    let MessageFields { content_length, te_seen, close, keep_alive: keep_alive_token, upgrade_token, upgrade } = fields;

    let framing = if te_seen {
        // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
        if minor == 0 {
            return Err(H1Error::TransferEncodingOn10);
        }
        // RFC 9112 §6.1: a server MAY reject TE with CL; a proxy that guesses is a desync.
        if content_length.is_some() {
            return Err(H1Error::ConflictingLength);
        }
        check_transfer_encoding(
            headers.iter().zip(kinds.iter()).filter(|(_, k)| **k == Field::TransferEncoding).map(|(h, _)| h.value),
        )?;
        Framing::Chunked
    } else {
        match content_length {
            Some(0) | None => Framing::None, // RFC 9112 §6.3 item 7: no length, no body.
            Some(n) => Framing::Length(n),
        }
    };

    // Request target forms, RFC 9112 §3.2.
    let path = if target.starts_with('/') {
        target // origin-form
    } else if target == "*" {
        if method != "OPTIONS" {
            return Err(H1Error::BadTarget); // §3.2.4: asterisk-form is for OPTIONS only
        }
        target
    } else if let Some((authority, path)) = split_absolute(target) {
        // §3.2.2: the authority is the target host; one that disagrees with Host is ambiguous.
        if authority.is_empty() || authority.contains('@') || !valid_host(authority.as_bytes()) {
            return Err(H1Error::BadTarget);
        }
        match host {
            Some(h) if !h.eq_ignore_ascii_case(authority.as_bytes()) => {
                return Err(H1Error::BadHost);
            }
            // §3.2: a client MUST send Host even with an absolute-form target, and a server
            // MUST answer 400 to an HTTP/1.1 request without one.
            None if minor == 1 => return Err(H1Error::BadHost),
            _ => host = Some(authority.as_bytes()),
        }
        path
    } else {
        return Err(H1Error::BadTarget);
    };

    let (host, host_name) = match host {
        Some(h) => (h, host_name_of(h).ok_or(H1Error::BadHost)?),
        None if minor == 1 => return Err(H1Error::BadHost), // RFC 9112 §3.2: Host is required
        None => (&b""[..], &b""[..]),
    };

    // RFC 9112 §9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive".
    let keep_alive = !close && (minor == 1 || keep_alive_token);
    // RFC 9110 §7.8: ignore Upgrade from HTTP/1.0, and honour it only when Connection names it.
    // h2c is never tunnelled: Apex does not speak HTTP/2, and an h2c upgrade through a proxy is a
    // known way past its routing rules.
    let upgrade = upgrade.filter(|u| {
        minor == 1 && upgrade_token && !u.is_empty() && !list_items(u).any(|p| p.eq_ignore_ascii_case(b"h2c"))
    });

    let req = Request {
        method,
        path,
        minor,
        host,
        host_name,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
        headers,
        fields: kinds,
        raw: head,
        connection_names: names.into_bump_slice(),
    };
    Ok(Some((req, len)))
}

/// Fields Apex frames the message by or writes itself that have a `-` to disguise as `_`.
const DISGUISABLE: [&[u8]; 5] =
    [b"content-length", b"transfer-encoding", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"];
/// The shortest of them: a shorter name is none of them.
const DISGUISE_MIN_LEN: usize = 14;

/// A field Apex frames the message by or writes itself, spelled with `_` for some `-`.
pub(crate) fn is_ours_in_disguise(name: &[u8]) -> bool {
    DISGUISABLE.iter().any(|n| {
        n.len() == name.len()
            && n.iter().zip(name).all(|(&a, &b)| a == b.to_ascii_lowercase() || (a == b'-' && b == b'_'))
    })
}

/// `http://authority/path?q` -> (authority, "/path?q"); a missing path becomes "/".
/// The target has been checked to be visible ASCII, so slicing at ASCII positions is exact.
fn split_absolute(target: &str) -> Option<(&str, &str)> {
    let rest = strip_prefix_ignore_case(target, "http://").or_else(|| strip_prefix_ignore_case(target, "https://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at_checked(end)?;
    if path.starts_with('/') {
        Some((authority, path))
    } else if path.is_empty() {
        Some((authority, "/"))
    } else {
        None // "?query" with no path cannot be made origin-form without allocating; refuse.
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) { s.get(prefix.len()..) } else { None }
}

/// RFC 3986 §3.2.2 reg-name bytes (unreserved, sub-delims, and `%` of pct-encoded), by byte
/// value: one load a byte instead of a chain of comparisons.
#[allow(clippy::indexing_slicing)] // const-evaluated; a u8 index into 256 entries
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0u8;
    loop {
        let ok = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        table[b as usize] = ok; // evaluated at compile time: a bad index fails the build

        if b == 255 {
            break table;
        }
        b += 1;
    }
};

/// RFC 9110 §7.2 / RFC 3986 §3.2.2: `uri-host [ ":" port ]`, with uri-host an IP-literal in
/// brackets or a reg-name (unreserved, pct-encoded, sub-delims). No userinfo, no spaces.
pub fn valid_host(h: &[u8]) -> bool {
    host_name_of(h).is_some()
}

/// The host part of a valid Host value (`valid_host`), without the port, for routing: found
/// in the pass that checks it. None if the value is not valid.
pub fn host_name_of(h: &[u8]) -> Option<&[u8]> {
    let port_ok = |port: &[u8]| port.iter().all(u8::is_ascii_digit) && port.len() <= 5;
    if h.first() == Some(&b'[') {
        let close = h.iter().position(|&b| b == b']')?;
        let (lit, rest) = h.split_at(close + 1);
        let inner = lit.get(1..lit.len() - 1).unwrap_or(&[]);
        if inner.is_empty() || !inner.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return None;
        }
        return match rest.split_first() {
            None => Some(lit),
            Some((b':', port)) if port_ok(port) => Some(lit),
            Some(_) => None,
        };
    }
    // A reg-name up to the first byte that is not one (':' is not), in one pass; that byte
    // must be the ':' before the port.
    match h.iter().position(|&b| REG_NAME.get(usize::from(b)) != Some(&true)) {
        None => Some(h),
        Some(i) if h.get(i) == Some(&b':') && port_ok(h.get(i + 1..).unwrap_or(&[])) => h.get(..i),
        Some(_) => None,
    }
}

pub(crate) fn named_in(names: &[&[u8]], name: &[u8]) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bare LF is the error for the whole head, whichever line has it and whatever else is
    /// wrong before it: the field lines are checked in the classifying loop, and an error found
    /// before that loop has seen every line checks the rest first.
    #[test]
    fn bare_lf_wins_over_every_other_error() {
        let arena = Bump::new();
        let faults: [(&str, &str, H1Error); 7] = [
            ("CONNECT a:1", "Host: a", H1Error::MethodNotAllowed),
            ("GET /#f", "Host: a", H1Error::BadTarget),
            ("GET /", "Host: a\r\nExpect: x", H1Error::ExpectationFailed),
            ("GET /", "Host: a\r\nHost: b", H1Error::BadHost),
            ("GET /", "Host: a\r\nContent-Length: x", H1Error::BadContentLength),
            (
                "GET /",
                "Host: a\r\nContent_Length: 1",
                H1Error::Syntax("underscore in a framing or forwarding header name"),
            ),
            ("GET /", "Host: a\r\nContent-Length: 1\r\nContent-Length: 1", H1Error::BadContentLength),
        ];
        for (line, fields, alone) in faults {
            let whole = format!("{line} HTTP/1.1\r\n{fields}\r\nX: 1\r\n\r\n");
            let got = parse_request_in(whole.as_bytes(), &arena, 32).map(|r| r.is_some());
            assert_eq!(got, Err(alone), "{whole:?}");
            // The same head with a bare LF after the fault, in a later line, and at the start.
            for bare in [
                format!("{line} HTTP/1.1\r\n{fields}\nX: 1\r\n\r\n"),
                format!("{line} HTTP/1.1\r\n{fields}\r\nX: 1\nY: 2\r\n\r\n"),
                format!("{line} HTTP/1.1\n{fields}\r\nX: 1\r\n\r\n"),
            ] {
                let got = parse_request_in(bare.as_bytes(), &arena, 32).map(|r| r.is_some());
                assert_eq!(got, Err(H1Error::BadLineEnding), "{bare:?}");
            }
        }
    }

    /// RFC 3986 §3.2.2: reg-name = *( unreserved / pct-encoded / sub-delims ), byte by byte.
    #[test]
    fn reg_name_bytes_are_rfc_3986s() {
        let unreserved = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
        let sub_delims = b"!$&'()*+,;=";
        for b in 0..=255u8 {
            let want = unreserved.contains(&b) || sub_delims.contains(&b) || b == b'%';
            assert_eq!(valid_host(&[b'a', b, b'a']), want, "byte {b:#04x}");
        }
    }

    #[test]
    fn disguise_min_len_is_the_shortest_disguisable_name() {
        assert_eq!(DISGUISABLE.iter().map(|n| n.len()).min(), Some(DISGUISE_MIN_LEN));
        assert!(DISGUISABLE.iter().all(|n| n.contains(&b'-')));
        for n in DISGUISABLE {
            let disguised: Vec<u8> = n.iter().map(|&b| if b == b'-' { b'_' } else { b.to_ascii_uppercase() }).collect();
            let head = [&b"GET / HTTP/1.1\r\nHost: a\r\n"[..], &disguised, b": 1\r\n\r\n"].concat();
            assert!(parse_request(&head, &Bump::new(), 32).is_err(), "{:?}", String::from_utf8_lossy(&disguised));
        }
    }

    fn parse(head: &[u8]) -> Result<Framing, H1Error> {
        let arena = Bump::new();
        parse_request(head, &arena, 64).map(|r| r.framing)
    }

    macro_rules! case {
        ($name:ident, $head:expr, $want:expr) => {
            #[test]
            fn $name() {
                assert_eq!(parse($head), $want);
            }
        };
    }

    case!(plain_get, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Ok(Framing::None));
    case!(cl_body, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", Ok(Framing::Length(5)));
    case!(chunked_body, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Ok(Framing::Chunked));
    case!(
        te_and_cl,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        Err(H1Error::ConflictingLength)
    );
    case!(
        cl_and_te,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        Err(H1Error::ConflictingLength)
    );
    case!(
        two_cl_equal,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        Err(H1Error::BadContentLength)
    );
    case!(cl_list, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", Err(H1Error::BadContentLength));
    case!(te_on_10, b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Err(H1Error::TransferEncodingOn10));
    case!(
        te_gzip,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        Err(H1Error::UnknownCoding)
    );
    case!(no_host, b"GET / HTTP/1.1\r\n\r\n", Err(H1Error::BadHost));
    case!(no_host_10, b"GET / HTTP/1.0\r\n\r\n", Ok(Framing::None));
    case!(two_hosts, b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", Err(H1Error::BadHost));
    case!(host_userinfo, b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", Err(H1Error::BadHost));
    case!(host_space, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Err(H1Error::BadHost));
    case!(absolute_agrees, b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n", Ok(Framing::None));
    case!(absolute_disagrees, b"GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n", Err(H1Error::BadHost));
    case!(absolute_without_host_11, b"GET http://a/x HTTP/1.1\r\n\r\n", Err(H1Error::BadHost));
    case!(absolute_without_host_10, b"GET http://a/x HTTP/1.0\r\n\r\n", Ok(Framing::None));
    case!(asterisk_get, b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", Err(H1Error::BadTarget));
    case!(asterisk_options, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Ok(Framing::None));
    case!(connect, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", Err(H1Error::MethodNotAllowed));
    case!(authority_form, b"GET a:443 HTTP/1.1\r\nHost: a\r\n\r\n", Err(H1Error::BadTarget));
    case!(nul_in_value, b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", Err(H1Error::BadFieldValue));
    case!(space_before_colon, b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", Err(H1Error::Syntax("bad header name")));
    case!(fragment, b"GET /a#f HTTP/1.1\r\nHost: a\r\n\r\n", Err(H1Error::BadTarget));
    case!(
        te_underscore,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n",
        Err(H1Error::Syntax("underscore in a framing or forwarding header name"))
    );
    case!(
        xfp_underscore,
        b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_Proto: https\r\n\r\n",
        Err(H1Error::Syntax("underscore in a framing or forwarding header name"))
    );
    case!(other_underscore, b"GET / HTTP/1.1\r\nHost: a\r\nX_Custom: 1\r\n\r\n", Ok(Framing::None));
    case!(expect_other, b"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", Err(H1Error::ExpectationFailed));

    #[test]
    fn obs_fold_refused() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n").is_err());
    }

    #[test]
    fn too_many_headers() {
        let arena = Bump::new();
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(parse_request(head, &arena, 2).map(|r| r.framing), Err(H1Error::TooManyHeaders));
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let arena = Bump::new();
        let r = parse_request(b"GET HTTP://a:8/x?y HTTP/1.1\r\nHost: a:8\r\n\r\n", &arena, 8).unwrap();
        assert_eq!((r.path, r.host), ("/x?y", &b"a:8"[..]));
        let r = parse_request(b"GET http://a HTTP/1.0\r\n\r\n", &arena, 8).unwrap();
        assert_eq!((r.path, r.host), ("/", &b"a"[..]));
    }

    #[test]
    fn keep_alive_rules() {
        let arena = Bump::new();
        let ka = |h: &[u8]| parse_request(h, &arena, 8).unwrap().keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn upgrade_needs_connection_token_and_no_h2c() {
        let arena = Bump::new();
        let up = |h: &[u8]| parse_request(h, &arena, 8).unwrap().upgrade.is_some();
        assert!(up(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"));
        assert!(!up(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"));
        assert!(!up(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"));
        assert!(!up(b"GET / HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"));
    }

    #[test]
    fn hop_by_hop_names() {
        for h in [
            "Connection",
            "keep-alive",
            "Proxy-Connection",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "content-length",
        ] {
            assert!(Field::of(h.as_bytes()).hop_by_hop(), "{h}");
        }
        for h in ["Host", "Accept", "tee", "Trailers", "x-upgrade", "Content-Type"] {
            assert!(!Field::of(h.as_bytes()).hop_by_hop(), "{h}");
        }
    }

    #[test]
    fn hosts() {
        for ok in [&b"a"[..], b"a.b-c.example", b"a:80", b"[::1]", b"[::1]:8080", b"127.0.0.1:1"] {
            assert!(valid_host(ok), "{:?}", ok);
        }
        for bad in [&b"a b"[..], b"u@a", b"a:x", b"[::1", b"[]", b"a:123456", b"a/b"] {
            assert!(!valid_host(bad), "{:?}", bad);
        }
        assert_eq!(host_name_of(b"a.com:80"), Some(&b"a.com"[..]));
        assert_eq!(host_name_of(b"a.com"), Some(&b"a.com"[..]));
        assert_eq!(host_name_of(b"[::1]:80"), Some(&b"[::1]"[..]));
        assert_eq!(host_name_of(b"[::1]"), Some(&b"[::1]"[..]));
        assert_eq!(host_name_of(b"a.com:8x"), None);
        // Through the parser: the name routes see, with an absolute-form target's authority
        // in place of Host.
        let arena = Bump::new();
        let req = parse_request(b"GET / HTTP/1.1\r\nHost: A.example:8080\r\n\r\n", &arena, 8).unwrap();
        assert_eq!((req.host, req.host_name), (&b"A.example:8080"[..], &b"A.example"[..]));
        let req = parse_request(b"GET http://b.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n", &arena, 8).unwrap();
        assert_eq!((req.host_name, req.path), (&b"b.example"[..], "/x"));
        let req = parse_request(b"GET / HTTP/1.0\r\n\r\n", &arena, 8).unwrap();
        assert_eq!(req.host_name, b"");
    }
}
