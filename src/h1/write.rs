//! Serialising heads. Apex never forwards a client's or an upstream's head as it came: it
//! writes the start line, the framing fields and the forwarding fields from the parsed message,
//! and drops every hop-by-hop field, so the next hop sees one unambiguous message whatever
//! oddity arrived. The other field lines pass byte for byte, copied in runs from the head they
//! came in: the parser has checked each of them (a token, a colon, a value of VCHAR, obs-text,
//! SP and HTAB, a CRLF: RFC 9112 §5), and a run of them is exactly the lines it holds.
//! All writes go into a caller's fixed buffer; nothing allocates.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::head::{Request, named_in};
use super::response::Response;
use super::{Field, Framing, list_items};
use crate::rules::{Answer, Edits, Vars};

/// A cursor over a fixed output buffer. Any write that does not fit fails as a whole message:
/// the caller checks `Out::finish`.
pub struct Out<'b> {
    buf: &'b mut [u8],
    len: usize,
    overflow: bool,
}

impl<'b> Out<'b> {
    pub fn new(buf: &'b mut [u8]) -> Self {
        Out { buf, len: 0, overflow: false }
    }

    pub fn put(&mut self, bytes: &[u8]) {
        // After a failure `buf` is empty and `len` past it (or 0): nothing fits any more, so
        // the flag is not looked at here, only set.
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => self.fail(),
        }
    }

    /// A decimal number, without going through `core::fmt` (a third of the user-space time
    /// per request went to formatting before this).
    pub fn put_u64(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            if let Some(d) = digits.get_mut(i) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || i == 0 {
                break;
            }
        }
        self.put(digits.get(i..).unwrap_or(&[]));
    }

    /// `Content-Length: n` CRLF, built on the stack and written in one copy.
    pub fn content_length(&mut self, n: u64) {
        self.content_length_then(n, b"\r\n");
    }

    /// `Content-Length: n`, then `end` (its CRLF, or that and the head's blank line).
    #[inline(always)]
    pub fn content_length_then<const E: usize>(&mut self, mut n: u64, end: &[u8; E]) {
        const NAME: &[u8; 16] = b"Content-Length: ";
        const { assert!(E <= 4) };
        let mut line = [0u8; 16 + 20 + 4];
        let mut at = line.len() - E;
        if let Some(tail) = line.last_chunk_mut::<E>() {
            *tail = *end;
        }
        loop {
            at -= 1;
            if let Some(d) = line.get_mut(at) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || at == NAME.len() {
                break;
            }
        }
        at -= NAME.len();
        if let Some(name) = line.get_mut(at..at + NAME.len()) {
            name.copy_from_slice(NAME);
        }
        self.put(line.get(at..).unwrap_or(&[]));
    }

    pub fn put_ip(&mut self, ip: IpAddr) {
        self.put_ip_after(b"", ip);
    }

    /// `prefix` (a field name, at most `PREFIX_MAX` bytes), then `ip`.
    #[inline(always)]
    pub fn put_ip_after<const P: usize>(&mut self, prefix: &[u8; P], ip: IpAddr) {
        const { assert!(P <= PREFIX_MAX) };
        match ip {
            IpAddr::V4(v4) => {
                // Into a stack buffer after the prefix, then one copy: a put per octet and dot
                // cost 260 instructions per request. Each octet is one 4-byte store from `OCTET`
                // (its digits, then a dot), so no division runs per request.
                let mut text = [0u8; PREFIX_MAX + 16];
                if let Some(head) = text.first_chunk_mut::<P>() {
                    *head = *prefix;
                }
                let mut len = P;
                for octet in v4.octets() {
                    let (word, n) = OCTET.get(usize::from(octet)).copied().unwrap_or_default(); // u8: always there
                    if let Some(slot) = text.get_mut(len..len + 4) {
                        slot.copy_from_slice(&word);
                    }
                    len += usize::from(n) + 1;
                }
                // Less the last octet's dot.
                self.put(text.get(..len - 1).unwrap_or(&[]));
            }
            IpAddr::V6(_) => {
                self.put(prefix);
                let _ = write!(self, "{ip}");
            }
        }
    }

    /// Makes the message fail as a whole, as an overflow does.
    pub fn fail(&mut self) {
        self.overflow = true;
        self.buf = &mut [];
    }

    /// Bytes written, or None if the message did not fit.
    pub fn finish(self) -> Option<usize> {
        if self.overflow { None } else { Some(self.len) }
    }
}

/// The longest prefix `put_ip_after` takes.
const PREFIX_MAX: usize = 24;

/// Each octet's decimal digits followed by a dot, padded to four bytes, and the digit count.
#[allow(clippy::indexing_slicing)] // const-evaluated; a u8 index into 256 entries
const OCTET: [([u8; 4], u8); 256] = {
    let mut t = [([0u8; 4], 0u8); 256];
    let mut o = 0u8;
    loop {
        t[o as usize] = if o >= 100 {
            ([b'0' + o / 100, b'0' + o / 10 % 10, b'0' + o % 10, b'.'], 3)
        } else if o >= 10 {
            ([b'0' + o / 10, b'0' + o % 10, b'.', 0], 2)
        } else {
            ([b'0' + o, b'.', 0, 0], 1)
        };
        if o == 255 {
            break t;
        }
        o += 1;
    }
};

impl std::fmt::Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.put(s.as_bytes());
        Ok(())
    }
}

/// The head sent upstream, with a route's edits (header rules, X-Request-Id) if any.
/// X-Forwarded-For: with `append`, the client's list (several lines joined) then `client_ip`
/// (the peer Apex saw); without, `client_ip` alone (the client Apex decided on), the client's
/// list dropped so that it cannot forge its address.
pub fn write_request(
    req: &Request,
    client_ip: IpAddr,
    append: bool,
    https: bool,
    edits: Option<&Edits>,
    out: &mut Out,
) {
    // The request line and the Host line, as Apex writes them: copied, the two in one run with
    // the lines after them, when the head already holds them in that form (`as_written`);
    // else written from the parsed request.
    let (headers, fields, run) = if as_written(req) {
        (req.headers.get(1..).unwrap_or(&[]), req.fields.get(1..).unwrap_or(&[]), Some(0))
    } else {
        out.put(req.method.as_bytes());
        out.put(b" ");
        out.put(req.path.as_bytes());
        // RFC 9110 §2.5: an intermediary sends its own version.
        out.put(b" HTTP/1.1\r\nHost: ");
        out.put(req.host);
        out.put(b"\r\n");
        (req.headers, req.fields, None)
    };
    let names = req.connection_names;
    // Written below from the parsed request instead (Host, X-Forwarded-*), or answered by Apex
    // itself (Expect, RFC 9110 §10.1.1).
    let rewritten = |f: Field| {
        matches!(f, Field::Host | Field::Expect | Field::XForwardedFor | Field::XForwardedProto | Field::XForwardedHost)
    };
    copy_kept_lines(req.raw, headers, fields, run, out, |h, f| {
        rewritten(f)
            || f.hop_by_hop()
            || (!names.is_empty() && named_in(names, h.name.as_bytes()))
            || edits.is_some_and(|e| e.drops(h.name.as_bytes()))
    });
    if let Some(e) = edits {
        e.write(out);
    }
    // Several X-Forwarded-For lines are one list (RFC 9110 §5.3): join them in order, then
    // append the client's address.
    const XFF: &[u8; 17] = b"X-Forwarded-For: ";
    let mut list = req
        .headers
        .iter()
        .zip(req.fields)
        .filter(|(_, f)| append && **f == Field::XForwardedFor)
        .map(|(h, _)| super::trim_ows(h.value))
        .filter(|v| !v.is_empty())
        .peekable();
    if list.peek().is_none() {
        out.put_ip_after(XFF, client_ip); // the name and the address in one copy
    } else {
        out.put(XFF);
        for v in list {
            out.put(v);
            out.put(b", ");
        }
        out.put_ip_after(b"", client_ip);
    }
    out.put(if https {
        &b"\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: "[..]
    } else {
        &b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: "[..]
    });
    out.put(req.host);
    // Nothing after X-Forwarded-Host (the usual GET): its CRLF and the blank line in one copy.
    if matches!(req.framing, Framing::None | Framing::Close) && req.upgrade.is_none() {
        out.put(b"\r\n\r\n");
        return;
    }
    out.put(b"\r\n");
    match req.framing {
        Framing::Length(n) => out.content_length(n),
        Framing::Chunked => out.put(b"Transfer-Encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
    if let Some(proto) = req.upgrade {
        out.put(b"Connection: upgrade\r\nUpgrade: ");
        out.put(proto);
        out.put(b"\r\n");
    }
    out.put(b"\r\n");
}

/// Whether the head begins with the request line and the Host line exactly as `write_request`
/// would write them: `method SP target SP "HTTP/1.1" CRLF` with the target going upstream
/// unchanged (no rule rewrote it, origin-form or `*`), then `Host: value` CRLF with the very
/// value that goes upstream, one SP before it, nothing after it. httparse took the line's
/// delimiters as single SPs, began the first field line right after the request line's CRLF
/// (`lines_end_in_crlf` checked that it is one), ended its name at the colon and took its value
/// without leading or trailing whitespace; what is left to check is the version, the name's
/// spelling and where the value lies.
fn as_written(req: &Request) -> bool {
    const AFTER_TARGET: &[u8; 17] = b" HTTP/1.1\r\nHost: ";
    let raw = req.raw;
    let at = |p: &[u8]| (p.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
    let path = req.path.as_bytes();
    let Some(host) = req.headers.first() else { return false };
    // Not right after the method: a path a rule rewrote, or an absolute-form target's.
    if at(path) != req.method.len() + 1 {
        return false;
    }
    let value_at = at(path) + path.len() + AFTER_TARGET.len();
    raw.get(value_at - AFTER_TARGET.len()..value_at) == Some(&AFTER_TARGET[..])
        && at(host.value) == value_at
        && std::ptr::eq(host.value, req.host)
        && raw.get(value_at + host.value.len()) == Some(&b'\r')
}

/// How a response goes to the client.
#[derive(Clone, Copy, Debug)]
pub struct RespMode {
    /// The framing the client will see.
    pub framing: Framing,
    pub keep_alive: bool,
    pub client_minor: u8,
    /// A 101 that opens a tunnel.
    pub tunnel: bool,
}

pub fn write_response(resp: &Response, mode: RespMode, edits: Option<&Edits>, out: &mut Out) {
    // RFC 9110 §2.5: Apex sends its own version. An HTTP/1.1 status line already in the form
    // written here ("HTTP/1.1 ", the code, SP, the reason, CRLF) starts the first copied run.
    let raw = resp.raw;
    let reason = resp.reason.as_bytes();
    let reason_at = (reason.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
    let status_as_written = resp.minor == 1
        && raw.starts_with(b"HTTP/1.1 ")
        && raw.get(12) == Some(&b' ')
        && reason_at == 13
        && raw.get(13 + reason.len()..15 + reason.len()) == Some(&b"\r\n"[..]);
    let first = if status_as_written {
        Some(0)
    } else {
        out.put(b"HTTP/1.1 ");
        out.put_u64(u64::from(resp.code));
        out.put(b" ");
        out.put(reason);
        out.put(b"\r\n");
        None
    };
    let names = resp.connection_names;
    copy_kept_lines(raw, resp.headers, resp.fields, first, out, |h, f| {
        f.hop_by_hop()
            || (!names.is_empty() && named_in(names, h.name.as_bytes()))
            || edits.is_some_and(|e| e.drops(h.name.as_bytes()))
    });
    if let Some(e) = edits {
        e.write(out);
    }
    match mode.framing {
        // Nothing after Content-Length (keep-alive to an HTTP/1.1 client, the usual response):
        // its CRLF and the blank line in one copy.
        Framing::Length(n) if !mode.tunnel && mode.keep_alive && mode.client_minor != 0 => {
            return out.content_length_then(n, b"\r\n\r\n");
        }
        Framing::Length(n) => out.content_length(n),
        Framing::Chunked => out.put(b"Transfer-Encoding: chunked\r\n"),
        // A bodiless response still says how long the body would be (HEAD, 304: RFC 9110 §8.6).
        Framing::None => {
            if let (Some(n), true) = (resp.content_length, resp.code != 204 && resp.code >= 200) {
                out.content_length(n);
            }
        }
        Framing::Close => {}
    }
    if mode.tunnel {
        out.put(b"Connection: upgrade\r\nUpgrade: ");
        out.put(resp.upgrade.unwrap_or(b""));
        out.put(b"\r\n");
    } else if !mode.keep_alive {
        out.put(b"Connection: close\r\n");
    } else if mode.client_minor == 0 {
        out.put(b"Connection: keep-alive\r\n");
    }
    out.put(b"\r\n");
}

/// Writes the field lines that `dropped` keeps. A line already in the form Apex would write
/// (`name: value` CRLF, one SP, no trailing whitespace: RFC 9110 §5.5 leaves OWS out of the
/// value) is copied from `raw` (a whole head), a run of neighbouring ones in one copy; any other
/// is written from its name and value. `headers` and `fields` are the parser's, in order;
/// `run` is where an open run starts (the start line, when it is copied too).
fn copy_kept_lines(
    raw: &[u8],
    headers: &[httparse::Header<'_>],
    fields: &[Field],
    mut run: Option<usize>,
    out: &mut Out,
    dropped: impl Fn(&httparse::Header<'_>, Field) -> bool,
) {
    let base = raw.as_ptr() as usize;
    let at = |p: &[u8]| (p.as_ptr() as usize).wrapping_sub(base);
    let copy = |out: &mut Out, from: usize, to: usize| match raw.get(from..to) {
        Some(lines) => out.put(lines),
        None => out.fail(), // not lines of this head: never, as the parser gives them
    };
    for (h, &f) in headers.iter().zip(fields) {
        let name = h.name.as_bytes();
        let start = at(name);
        if dropped(h, f) {
            if let Some(from) = run.take() {
                copy(out, from, start);
            }
            continue;
        }
        let value_at = at(h.value);
        let canonical = !h.value.is_empty()
            && value_at == start + name.len() + 2
            && raw.get(value_at - 1) == Some(&b' ')
            && raw.get(value_at + h.value.len()) == Some(&b'\r');
        if canonical {
            run.get_or_insert(start);
            continue;
        }
        if let Some(from) = run.take() {
            copy(out, from, start);
        }
        out.put(name);
        out.put(b": ");
        out.put(h.value);
        out.put(b"\r\n");
    }
    if let Some(from) = run {
        copy(out, from, raw.len().saturating_sub(2));
    }
}

pub const fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// A response Apex writes itself: short, well formed, `Connection: close` when it will close.
/// Where a redirect to HTTPS points: `https://HOST[:PORT]TARGET` (the port only if not 443).
pub struct Location<'a> {
    pub host: &'a [u8],
    pub port: u16,
    pub target: &'a [u8],
}

/// The body of Apex's own answer: "404 Not Found\n".
pub fn answer_body_len(status: u16) -> usize {
    3 + 1 + reason(status).len() + 1
}

/// The end of a head Apex writes itself: its edits (X-Request-Id, a route's response rules),
/// the connection's fate, then the blank line.
fn end_own_head(edits: Option<&Edits>, close: bool, keep_alive_10: bool, out: &mut Out) {
    if let Some(e) = edits {
        e.write(out);
    }
    if close {
        out.put(b"Connection: close\r\n");
    } else if keep_alive_10 {
        out.put(b"Connection: keep-alive\r\n"); // an HTTP/1.0 client kept alive must be told
    }
    out.put(b"\r\n");
}

/// A 200 with a short text body Apex holds itself (an ACME HTTP-01 key authorization).
pub fn write_text_answer(body: &[u8], own: Own, out: &mut Out) {
    out.put(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ");
    out.put_u64(body.len() as u64);
    out.put(b"\r\n");
    let Own { edits, close, head_only, keep_alive_10 } = own;
    end_own_head(edits, close, keep_alive_10, out);
    if !head_only {
        out.put(body);
    }
}

/// Apex's own answer: an error, or (with a location) a redirect.
pub fn write_answer(status: u16, location: Option<Location<'_>>, own: Own, out: &mut Out) {
    let Own { edits, close, head_only, keep_alive_10 } = own;
    let reason = reason(status);
    let body_len = answer_body_len(status);
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {body_len}\r\n");
    if let Some(l) = location {
        out.put(b"Location: https://");
        out.put(l.host);
        if l.port != 443 {
            out.put(b":");
            out.put_u64(u64::from(l.port));
        }
        out.put(l.target);
        out.put(b"\r\n");
    }
    if status == 405 {
        out.put(b"Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE\r\n");
    }
    end_own_head(edits, close, keep_alive_10, out);
    if !head_only {
        let _ = writeln!(out, "{status} {reason}");
    }
}

/// A route's own answer (`redirect`, `respond`): its status, `Location` written from the
/// template, the body, a Content-Type unless the route's response rules set or remove one.
/// RFC 9110 §15.3.5, §6.4.1: a 204 or 304 has no body and no Content-Length.
pub fn write_route_answer(a: &Answer, vars: &Vars, own: Own, out: &mut Out) {
    let status = a.status();
    out.put(b"HTTP/1.1 ");
    out.put_u64(u64::from(status));
    out.put(b" ");
    // RFC 9112 §4: the reason phrase may be empty; Apex's fallback "Error" is for errors only.
    let r = reason(status);
    out.put(if status < 400 && r == "Error" { b"" } else { r.as_bytes() });
    out.put(b"\r\n");
    let Own { edits, close, head_only, keep_alive_10 } = own;
    match a {
        Answer::Redirect { to, .. } => {
            out.put(b"Location: ");
            to.write(vars, out);
            out.put(b"\r\n");
            out.content_length(0);
        }
        Answer::Respond { body, .. } => {
            let typed = edits.and_then(|e| e.rules).is_some_and(|(r, _)| r.drops(b"content-type"));
            if !body.is_empty() && !typed {
                out.put(b"Content-Type: text/plain\r\n");
            }
            if status != 204 && status != 304 {
                out.content_length(body.len() as u64);
            }
        }
    }
    end_own_head(edits, close, keep_alive_10, out);
    if let (Answer::Respond { body, .. }, false) = (a, head_only) {
        out.put(body);
    }
}

/// How an answer of Apex's own ends: its edits, whether the connection closes after it, whether
/// it answers a HEAD (no body), and whether an HTTP/1.0 client is kept alive.
#[derive(Clone, Copy)]
pub struct Own<'a> {
    pub edits: Option<&'a Edits<'a>>,
    pub close: bool,
    pub head_only: bool,
    pub keep_alive_10: bool,
}

/// 429 Too Many Requests (RFC 6585 §4), with Retry-After in delay-seconds (RFC 9110 §10.2.3).
pub fn write_too_many(retry_secs: u32, own: Own, out: &mut Out) {
    let (reason, body_len) = (reason(429), answer_body_len(429));
    let _ = write!(
        out,
        "HTTP/1.1 429 {reason}\r\nContent-Type: text/plain\r\nContent-Length: {body_len}\r\nRetry-After: {retry_secs}\r\n"
    );
    end_own_head(own.edits, own.close, own.keep_alive_10, out);
    if !own.head_only {
        let _ = writeln!(out, "429 {reason}");
    }
}

/// Is `token` one of the comma-separated items of any value? Used for `Connection`.
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    list_items(value).any(|t| t.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::head::parse_request;
    use bumpalo::Bump;

    fn rewrite(head: &[u8]) -> String {
        let arena = Bump::new();
        let req = parse_request(head, &arena, 32).unwrap();
        let mut buf = [0u8; 2048];
        let mut out = Out::new(&mut buf);
        write_request(&req, "10.0.0.9".parse().unwrap(), true, false, None, &mut out);
        let n = out.finish().unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// The connection fuzzer's first crash was about this: Apex's own answer to HEAD says how long
    /// the body would be and sends none (RFC 9110 §9.3.2).
    #[test]
    fn own_error_to_head_has_length_and_no_body() {
        let mut buf = [0u8; 256];
        let mut out = Out::new(&mut buf);
        write_answer(502, None, Own { edits: None, close: false, head_only: true, keep_alive_10: false }, &mut out);
        let n = out.finish().unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.ends_with("Content-Length: 16\r\n\r\n"), "{text:?}");
    }

    #[test]
    fn numbers_and_addresses() {
        let mut buf = [0u8; 128];
        let mut out = Out::new(&mut buf);
        for n in [0, 7, 10, 65535, u64::MAX] {
            out.put_u64(n);
            out.put(b" ");
        }
        out.put_ip("10.0.255.1".parse().unwrap());
        out.put(b" ");
        out.put_ip("::1".parse().unwrap());
        let n = out.finish().unwrap();
        assert_eq!(&buf[..n], b"0 7 10 65535 18446744073709551615 10.0.255.1 ::1");
    }

    #[test]
    fn content_length_lines() {
        for n in [0, 7, 10, 24, 99, 100, 1_234_567_890, u64::MAX - 1, u64::MAX] {
            let mut buf = [0u8; 64];
            let mut out = Out::new(&mut buf);
            out.content_length(n);
            let len = out.finish().unwrap();
            assert_eq!(&buf[..len], format!("Content-Length: {n}\r\n").as_bytes());
        }
        let mut small = [0u8; 20];
        let mut out = Out::new(&mut small);
        out.content_length(123);
        out.content_length(4);
        assert_eq!(out.finish(), None, "a line that does not fit fails the message");
    }

    #[test]
    fn ipv4_as_std_writes_it() {
        // Every octet value in every position (the table has an entry per value).
        for a in 0..=255u8 {
            for b in [0u8, 7, 42, 255] {
                let ip = std::net::Ipv4Addr::new(a, b.wrapping_add(a), 100 - b % 100, 255 - a);
                let mut buf = [0u8; 15];
                let mut out = Out::new(&mut buf);
                out.put_ip(IpAddr::V4(ip));
                let n = out.finish().unwrap();
                assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), ip.to_string());
            }
        }
    }

    /// Kept field lines go out in order, whatever sits between them: dropped lines at the start,
    /// in the middle and at the end, and one named in Connection; those not in Apex's form
    /// (no SP after the colon, trailing OWS) are written in it.
    #[test]
    fn response_lines_kept_in_runs() {
        let head = b"HTTP/1.1 200 OK\r\nConnection: x-hop, keep-alive\r\nServer:s\r\nDate: d  \r\n\
                     Keep-Alive: 5\r\nX-Hop: 1\r\nETag: \"e\"\r\nContent-Length: 2\r\nVary: *\r\nTE: x\r\n\r\n";
        let arena = Bump::new();
        let resp = crate::h1::response::parse_response(head, &arena, 32, false).unwrap();
        let mut buf = [0u8; 512];
        let mut out = Out::new(&mut buf);
        let mode = RespMode { framing: resp.framing, keep_alive: true, client_minor: 1, tunnel: false };
        write_response(&resp, mode, None, &mut out);
        let n = out.finish().unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: s\r\nDate: d\r\nETag: \"e\"\r\nVary: *\r\nContent-Length: 2\r\n\r\n"
        );
        // Status lines: copied when already in Apex's form, written otherwise.
        for (line, want) in [
            (&b"HTTP/1.0 200 OK"[..], "HTTP/1.1 200 OK"),
            (b"HTTP/1.1 200", "HTTP/1.1 200 "),
            (b"HTTP/1.1 200 ", "HTTP/1.1 200 "),
            (b"HTTP/1.1 404 Not  Found", "HTTP/1.1 404 Not  Found"),
        ] {
            let head = [line, b"\r\nContent-Length: 0\r\n\r\n"].concat();
            let resp = crate::h1::response::parse_response(&head, &arena, 32, false).unwrap();
            let mut out = Out::new(&mut buf);
            write_response(&resp, RespMode { framing: resp.framing, ..mode }, None, &mut out);
            let n = out.finish().unwrap();
            assert_eq!(
                std::str::from_utf8(&buf[..n]).unwrap(),
                format!("{want}\r\nContent-Length: 0\r\n\r\n"),
                "{line:?}"
            );
        }
        // Nothing dropped: the field lines are one copy, the whole block.
        let plain = b"HTTP/1.1 204 No Content\r\nA: 1\r\nB: 2\r\n\r\n";
        let resp = crate::h1::response::parse_response(plain, &arena, 32, false).unwrap();
        let mut out = Out::new(&mut buf);
        write_response(&resp, RespMode { framing: resp.framing, ..mode }, None, &mut out);
        let n = out.finish().unwrap();
        assert_eq!(&buf[..n], &plain[..]);
    }

    /// The request line and Host line are copied from the head only when they are already what
    /// Apex writes; every other form is written from the parsed request, and the result is the
    /// same head either way.
    #[test]
    fn request_and_host_lines_copied_only_as_written() {
        let tail = "X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a.com\r\n\r\n";
        for (head, copied, want) in [
            (
                &b"GET /x HTTP/1.1\r\nHost: a.com\r\nB: 2\r\n\r\n"[..],
                true,
                "GET /x HTTP/1.1\r\nHost: a.com\r\nB: 2\r\n",
            ),
            (b"GET /x HTTP/1.1\r\nHost: a.com\r\n\r\n", true, "GET /x HTTP/1.1\r\nHost: a.com\r\n"),
            (b"OPTIONS * HTTP/1.1\r\nHost: a.com\r\n\r\n", true, "OPTIONS * HTTP/1.1\r\nHost: a.com\r\n"),
            // Host first but dropped lines after it: the run ends before them.
            (
                b"GET /x HTTP/1.1\r\nHost: a.com\r\nTE: x\r\nB: 2\r\n\r\n",
                true,
                "GET /x HTTP/1.1\r\nHost: a.com\r\nB: 2\r\n",
            ),
            // Each of these differs from Apex's form in one place.
            (b"GET /x HTTP/1.0\r\nHost: a.com\r\n\r\n", false, "GET /x HTTP/1.1\r\nHost: a.com\r\n"),
            (b"GET /x HTTP/1.1\r\nhost: a.com\r\n\r\n", false, "GET /x HTTP/1.1\r\nHost: a.com\r\n"),
            (b"GET /x HTTP/1.1\r\nHost:a.com\r\n\r\n", false, "GET /x HTTP/1.1\r\nHost: a.com\r\n"),
            (b"GET /x HTTP/1.1\r\nHost:  a.com\r\n\r\n", false, "GET /x HTTP/1.1\r\nHost: a.com\r\n"),
            (b"GET /x HTTP/1.1\r\nHost: a.com \r\n\r\n", false, "GET /x HTTP/1.1\r\nHost: a.com\r\n"),
            (b"GET /x HTTP/1.1\r\nB: 2\r\nHost: a.com\r\n\r\n", false, "GET /x HTTP/1.1\r\nHost: a.com\r\nB: 2\r\n"),
            (b"GET http://a.com/x HTTP/1.1\r\nHost: a.com\r\n\r\n", false, "GET /x HTTP/1.1\r\nHost: a.com\r\n"),
        ] {
            let arena = Bump::new();
            let req = parse_request(head, &arena, 32).unwrap();
            assert_eq!(as_written(&req), copied, "{:?}", String::from_utf8_lossy(head));
            assert_eq!(rewrite(head), format!("{want}{tail}"), "{:?}", String::from_utf8_lossy(head));
        }
        // A path a rule rewrote is in the arena, not in the head: written, never copied.
        let arena = Bump::new();
        let mut req = parse_request(b"GET /api/x HTTP/1.1\r\nHost: a.com\r\n\r\n", &arena, 32).unwrap();
        req.path = arena.alloc_str("/x");
        assert!(!as_written(&req));
        let mut buf = [0u8; 512];
        let mut out = Out::new(&mut buf);
        write_request(&req, "10.0.0.9".parse().unwrap(), true, false, None, &mut out);
        let n = out.finish().unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), format!("GET /x HTTP/1.1\r\nHost: a.com\r\n{tail}"));
    }

    /// The head's end: the blank line joins the last line's copy only when nothing follows it.
    #[test]
    fn head_endings() {
        let arena = Bump::new();
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
        let resp = crate::h1::response::parse_response(head, &arena, 32, false).unwrap();
        for (keep_alive, client_minor, tunnel, want) in [
            (true, 1, false, "Content-Length: 2\r\n\r\n"),
            (false, 1, false, "Content-Length: 2\r\nConnection: close\r\n\r\n"),
            (true, 0, false, "Content-Length: 2\r\nConnection: keep-alive\r\n\r\n"),
            (true, 1, true, "Content-Length: 2\r\nConnection: upgrade\r\nUpgrade: \r\n\r\n"),
        ] {
            let mut buf = [0u8; 256];
            let mut out = Out::new(&mut buf);
            let mode = RespMode { framing: resp.framing, keep_alive, client_minor, tunnel };
            write_response(&resp, mode, None, &mut out);
            let n = out.finish().unwrap();
            assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), format!("HTTP/1.1 200 OK\r\n{want}"));
        }
        let tail = "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n";
        for (head, want) in [
            (&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..], format!("{tail}\r\n")),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n", format!("{tail}Content-Length: 3\r\n\r\n")),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                format!("{tail}Transfer-Encoding: chunked\r\n\r\n"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
                format!("{tail}Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
            ),
        ] {
            let got = rewrite(head);
            assert!(got.ends_with(&format!("X-Forwarded-For: 10.0.0.9\r\n{want}")), "{got:?}");
        }
    }

    /// `forwarded_for = "replace"`: the client's list is dropped, whatever it says.
    #[test]
    fn forwarded_for_replaced() {
        let arena = Bump::new();
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\n\r\n";
        let req = parse_request(head, &arena, 32).unwrap();
        let mut buf = [0u8; 512];
        let mut out = Out::new(&mut buf);
        write_request(&req, "10.0.0.9".parse().unwrap(), false, false, None, &mut out);
        let n = out.finish().unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.contains("\r\nX-Forwarded-For: 10.0.0.9\r\n") && !text.contains("6.6.6.6"), "{text}");
    }

    #[test]
    fn too_many_requests_says_when_to_retry() {
        let mut buf = [0u8; 256];
        let mut out = Out::new(&mut buf);
        write_too_many(7, Own { edits: None, close: false, head_only: false, keep_alive_10: false }, &mut out);
        let n = out.finish().unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 22\r\nRetry-After: 7\r\n\r\n429 Too Many Requests\n"
        );
    }

    #[test]
    fn hop_by_hop_removed_and_forwarded_set() {
        let got = rewrite(
            b"GET /x HTTP/1.1\r\nHost: a.com\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n\
              TE: trailers\r\nProxy-Connection: x\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n\
              X-Forwarded-For: 2.2.2.2\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(
            got,
            "GET /x HTTP/1.1\r\nHost: a.com\r\nAccept: */*\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: a.com\r\n\r\n"
        );
    }
}
