//! HTTP/1.1 message syntax and framing (RFC 9110, RFC 9112). Nothing here touches a socket:
//! every function takes bytes and returns a decision, so all of it is unit-tested and fuzzed.

pub mod chunked;
pub mod forwarded;
pub mod head;
pub mod response;
pub mod write;

/// Why a message was refused. `status` is what the client is told; for an upstream response
/// every variant becomes 502.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum H1Error {
    /// Head over `limits.head_bytes` (RFC 6585 §5).
    HeadTooLarge,
    /// More header fields than `limits.headers` (RFC 6585 §5).
    TooManyHeaders,
    /// httparse refused the syntax.
    Syntax(&'static str),
    /// A bare CR or LF, or other control byte, where RFC 9112 §2.2 allows only CRLF.
    BadLineEnding,
    /// A control byte or non-ASCII in the request target (RFC 9112 §3.2).
    BadTarget,
    /// A field value with a control byte (RFC 9110 §5.5).
    BadFieldValue,
    /// Host missing, repeated or malformed on HTTP/1.1 (RFC 9112 §3.2).
    BadHost,
    /// Content-Length repeated or not `1*DIGIT` that fits in u64 (RFC 9112 §6.3).
    BadContentLength,
    /// Both Transfer-Encoding and Content-Length (RFC 9112 §6.1).
    ConflictingLength,
    /// Transfer-Encoding whose final coding is not chunked, or chunked twice (RFC 9112 §6.3).
    BadTransferEncoding,
    /// A transfer coding other than chunked (RFC 9112 §6.1: 501).
    UnknownCoding,
    /// Transfer-Encoding in an HTTP/1.0 message (RFC 9112 §6.1).
    TransferEncodingOn10,
    /// Malformed chunked framing (RFC 9112 §7.1).
    BadChunk,
    /// CONNECT: Apex is not a forward proxy (RFC 9110 §9.3.6).
    MethodNotAllowed,
    /// An Expect value other than 100-continue (RFC 9110 §10.1.1).
    ExpectationFailed,
    /// Request body over `limits.body_bytes`.
    BodyTooLarge,
}

impl H1Error {
    pub const fn status(self) -> u16 {
        match self {
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::UnknownCoding => 501,
            Self::MethodNotAllowed => 405,
            Self::ExpectationFailed => 417,
            Self::BodyTooLarge => 413,
            _ => 400,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HeadTooLarge => "head too large",
            Self::TooManyHeaders => "too many header fields",
            Self::Syntax(s) => s,
            Self::BadLineEnding => "bare CR or LF",
            Self::BadTarget => "bad request target",
            Self::BadFieldValue => "control byte in field value",
            Self::BadHost => "missing, repeated or malformed Host",
            Self::BadContentLength => "bad Content-Length",
            Self::ConflictingLength => "Transfer-Encoding with Content-Length",
            Self::BadTransferEncoding => "bad Transfer-Encoding",
            Self::UnknownCoding => "unsupported transfer coding",
            Self::TransferEncodingOn10 => "Transfer-Encoding in HTTP/1.0",
            Self::BadChunk => "bad chunked framing",
            Self::MethodNotAllowed => "CONNECT not allowed",
            Self::ExpectationFailed => "unsupported expectation",
            Self::BodyTooLarge => "body too large",
        }
    }

    pub(crate) fn from_httparse(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => Self::TooManyHeaders,
            httparse::Error::HeaderName => Self::Syntax("bad header name"),
            httparse::Error::HeaderValue => Self::BadFieldValue,
            httparse::Error::NewLine => Self::BadLineEnding,
            httparse::Error::Status => Self::Syntax("bad status line"),
            httparse::Error::Token => Self::Syntax("bad token"),
            httparse::Error::Version => Self::Syntax("bad version"),
        }
    }
}

/// `n` uninitialised header slots from the arena: httparse writes only those it uses, so a
/// large header limit costs nothing per message (filling 256 empty headers was 8 KiB of stores).
pub(crate) fn header_slots<'a>(
    arena: &'a bumpalo::Bump,
    n: usize,
) -> Result<&'a mut [std::mem::MaybeUninit<httparse::Header<'a>>], H1Error> {
    arena.try_alloc_slice_fill_with(n, |_| std::mem::MaybeUninit::uninit()).map_err(|_| H1Error::TooManyHeaders)
}

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// Finds the end of a head: the index just past the first CRLFCRLF. `scanned` remembers how far
/// earlier calls got, so a head trickled a byte at a time costs linear, not quadratic, time.
/// A bare LF, or a CR not followed by LF, is refused at once (RFC 9112 §2.2: we do not take the
/// lenient path; a lone LF is a classic smuggling desync).
pub fn find_head_end(buf: &[u8], scanned: &mut usize) -> Result<Option<usize>, H1Error> {
    let mut i = *scanned;
    while let Some(off) = buf.get(i..).and_then(|rest| memchr::memchr2(b'\r', b'\n', rest)) {
        let at = i + off;
        match buf.get(at) {
            Some(b'\r') => match buf.get(at + 1) {
                Some(b'\n') => {
                    // CRLF at `at`; the head ends if another CRLF follows.
                    match (buf.get(at + 2), buf.get(at + 3)) {
                        (Some(b'\r'), Some(b'\n')) => {
                            *scanned = at + 4;
                            return Ok(Some(at + 4));
                        }
                        (Some(b'\r'), None) | (None, _) => {
                            *scanned = at;
                            return Ok(None);
                        }
                        _ => i = at + 2,
                    }
                }
                Some(_) => return Err(H1Error::BadLineEnding),
                None => {
                    *scanned = at;
                    return Ok(None);
                }
            },
            _ => return Err(H1Error::BadLineEnding), // LF not preceded by CR
        }
    }
    *scanned = buf.len();
    Ok(None)
}

/// Whether every line of a head that httparse parsed whole ends in CRLF. httparse also takes a
/// bare LF for a line end; Apex does not (RFC 9112 §2.2: a lone LF is a classic smuggling
/// desync). httparse refuses a CR that is not followed by LF, and no LF can sit inside a start
/// line, a field name or a field value, so every LF of the head is just before a field name or
/// is one of the last two bytes' lines: checking the two bytes before each field name, and the
/// head's last four, is enough, and costs a compare a line instead of a second scan of the head.
/// `head` must start with the start line (httparse skips leading empty lines; callers leave
/// those to `find_head_end`).
pub(crate) fn lines_end_in_crlf(head: &[u8], headers: &[httparse::Header<'_>]) -> bool {
    headers.iter().all(|h| crlf_before(head, h.name)) && ends_in_blank_line(head)
}

/// `lines_end_in_crlf` for one field line: the line before `name` (a field name httparse found
/// in `head`) ends in CRLF.
#[inline(always)]
pub(crate) fn crlf_before(head: &[u8], name: &str) -> bool {
    let at = (name.as_ptr() as usize).wrapping_sub(head.as_ptr() as usize);
    matches!(at.checked_sub(2).and_then(|s| head.get(s..at)), Some([b'\r', b'\n']))
}

/// `lines_end_in_crlf` for the head's end: its last line and the blank line end in CRLF.
#[inline(always)]
pub(crate) fn ends_in_blank_line(head: &[u8]) -> bool {
    matches!(head.last_chunk::<4>(), Some(b"\r\n\r\n"))
}

/// A head found at the start of a buffer: httparse parses it straight from the bytes read, and
/// says where it ends, so the common case (a whole head in one read) costs one pass. Anything
/// else (a head still arriving, leading empty lines) is for `find_head_end`'s resumable scan.
pub(crate) fn starts_a_head(buf: &[u8]) -> bool {
    !matches!(buf.first(), None | Some(b'\r' | b'\n'))
}

/// Checks a request line as soon as its CRLF has arrived, before the rest of the head: an
/// HTTP/0.9 request (`GET /` with no version) or a line of garbage is refused at once rather
/// than waited on until the head timeout. Returns Ok(true) when a complete line was checked.
pub fn check_request_line(buf: &[u8]) -> Result<bool, H1Error> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n") else {
        return Ok(false);
    };
    let line = buf.get(..end).unwrap_or(&[]);
    // RFC 9112 §3: method SP request-target SP HTTP-version.
    let ok = line.len() > 9
        && (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
        && line.first().is_some_and(|&b| is_tchar(b));
    if ok { Ok(true) } else { Err(H1Error::Syntax("bad request line")) }
}

/// The header fields Apex acts on, each recognised once by `Field::of`; everything else is
/// `Other` and passes through untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Upgrade,
    Te,
    Trailer,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    Other,
}

impl Field {
    /// Classifies a field name as httparse gave it (a token, RFC 9110 §5.1), ignoring case:
    /// by length first, then one comparison with the one name of that length (and first
    /// letter) it can be, each against a constant of its own length.
    pub fn of(name: &[u8]) -> Field {
        let first = || name.first().map_or(0, |b| b | 0x20);
        let (is, field) = match name.len() {
            2 => (eq_token_lower(name, b"te"), Field::Te),
            4 => (eq_token_lower(name, b"host"), Field::Host),
            6 => (eq_token_lower(name, b"expect"), Field::Expect),
            7 if first() == b't' => (eq_token_lower(name, b"trailer"), Field::Trailer),
            7 => (eq_token_lower(name, b"upgrade"), Field::Upgrade),
            10 if first() == b'c' => (eq_token_lower(name, b"connection"), Field::Connection),
            10 => (eq_token_lower(name, b"keep-alive"), Field::KeepAlive),
            14 => (eq_token_lower(name, b"content-length"), Field::ContentLength),
            15 => (eq_token_lower(name, b"x-forwarded-for"), Field::XForwardedFor),
            16 if first() == b'p' => (eq_token_lower(name, b"proxy-connection"), Field::ProxyConnection),
            16 => (eq_token_lower(name, b"x-forwarded-host"), Field::XForwardedHost),
            17 if first() == b't' => (eq_token_lower(name, b"transfer-encoding"), Field::TransferEncoding),
            17 => (eq_token_lower(name, b"x-forwarded-proto"), Field::XForwardedProto),
            _ => return Field::Other,
        };
        if is { field } else { Field::Other }
    }

    /// Fields an intermediary must not forward (RFC 9110 §7.6.1), plus the framing fields Apex
    /// writes itself (RFC 9112 §6).
    pub const fn hop_by_hop(self) -> bool {
        matches!(
            self,
            Field::Connection
                | Field::KeepAlive
                | Field::ProxyConnection
                | Field::Te
                | Field::Trailer
                | Field::TransferEncoding
                | Field::Upgrade
                | Field::ContentLength
        )
    }
}

/// What the fields that frame a message (RFC 9112 §6.3) and its Connection options (RFC 9110
/// §7.6.1) say, gathered the same way from a request and a response.
#[derive(Default)]
pub(crate) struct MessageFields<'a> {
    pub content_length: Option<u64>,
    pub te_seen: bool,
    /// Connection: close.
    pub close: bool,
    /// Connection: keep-alive.
    pub keep_alive: bool,
    /// Connection: upgrade.
    pub upgrade_token: bool,
    /// The Upgrade field's value.
    pub upgrade: Option<&'a [u8]>,
}

impl<'a> MessageFields<'a> {
    /// Takes `field` if it is one of these; any other option in Connection goes to `names` (a
    /// field named there is hop-by-hop for this message). Ok(false): not one of these.
    // Inlined into both parsers: called out of line it cost 225 instructions per request
    // (bench/profile: 10,872 against 10,647).
    #[inline(always)]
    pub fn take(
        &mut self,
        field: Field,
        value: &'a [u8],
        names: &mut bumpalo::collections::Vec<'_, &'a [u8]>,
    ) -> Result<bool, H1Error> {
        match field {
            // RFC 9112 §6.3 item 5: a repeated Content-Length is refused, even when equal.
            Field::ContentLength if self.content_length.is_some() => return Err(H1Error::BadContentLength),
            Field::ContentLength => self.content_length = Some(parse_content_length(value)?),
            Field::TransferEncoding => self.te_seen = true,
            // The usual values, one option and nothing around it, without splitting a list.
            // `eq_token_lower` is exact here too: a field value holds no CR (RFC 9112 §5), and
            // only CR besides '-' folds onto '-'.
            Field::Connection if eq_token_lower(value, b"keep-alive") => self.keep_alive = true,
            Field::Connection if eq_token_lower(value, b"close") => self.close = true,
            Field::Connection => {
                for item in list_items(value) {
                    if item.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if item.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else if item.eq_ignore_ascii_case(b"upgrade") {
                        self.upgrade_token = true;
                    } else if !item.is_empty() {
                        names.try_reserve(1).map_err(|_| H1Error::TooManyHeaders)?;
                        names.push(item);
                    }
                }
            }
            Field::Upgrade => self.upgrade = Some(trim_ows(value)),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// `name` equals `lower` ignoring ASCII case, a word at a time. `lower` is a lowercase
/// field name (letters and '-'), `name` a token: on tokens, setting bit 0x20 folds exactly the
/// upper-case letters (the only other bytes it maps onto a letter or '-' are controls, which no
/// token holds), so one OR per word replaces a per-byte case fold.
///
/// Always inlined, and called with `lower` a constant: its length, and so which words are
/// compared, is then known where it is called (`Field::of` once made one call with a length
/// chosen at run time; bench/README.md, round 13).
#[inline(always)]
fn eq_token_lower(name: &[u8], lower: &[u8]) -> bool {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    const FOLD4: u32 = 0x2020_2020;
    if name.len() != lower.len() {
        return false;
    }
    let w8 = |c: &[u8; 8]| u64::from_ne_bytes(*c);
    let w4 = |c: &[u8; 4]| u32::from_ne_bytes(*c);
    // Two overlapping words, the first and the last, cover 4 to 16 bytes: every name Apex
    // classifies but two costs two compares (the overlap is compared twice, to the same result).
    match name.len() {
        4..=7 => match (name.first_chunk::<4>(), name.last_chunk::<4>(), lower.first_chunk(), lower.last_chunk()) {
            (Some(a), Some(b), Some(x), Some(y)) => w4(a) | FOLD4 == w4(x) && w4(b) | FOLD4 == w4(y),
            _ => false,
        },
        8..=16 => match (name.first_chunk::<8>(), name.last_chunk::<8>(), lower.first_chunk(), lower.last_chunk()) {
            (Some(a), Some(b), Some(x), Some(y)) => w8(a) | FOLD == w8(x) && w8(b) | FOLD == w8(y),
            _ => false,
        },
        _ => {
            let (mut a, mut b) = (name, lower);
            while let (Some((x, ra)), Some((y, rb))) = (a.split_first_chunk::<8>(), b.split_first_chunk::<8>()) {
                if w8(x) | FOLD != w8(y) {
                    return false;
                }
                (a, b) = (ra, rb);
            }
            a.iter().zip(b).all(|(&x, &y)| x | 0x20 == y)
        }
    }
}

/// A 64-bit FNV-1a hash of a protocol token, case-insensitive: lets a connection remember which
/// protocols its client asked to upgrade to without keeping the bytes.
pub fn token_hash(token: &[u8]) -> u64 {
    token
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x100_0000_01b3))
}

/// RFC 9110 §5.6.2 tchar.
pub const fn is_tchar(b: u8) -> bool {
    matches!(b, b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
        | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

/// Trims optional whitespace (SP, HTAB) from both ends (RFC 9110 §5.6.3 OWS).
#[inline(always)]
pub fn trim_ows(v: &[u8]) -> &[u8] {
    let ows = |b: &u8| matches!(b, b' ' | b'\t');
    // Most values have none at either end (httparse takes a field value without any): two
    // compares, not a scan from each end.
    if v.first().is_some_and(|b| !ows(b)) && v.last().is_some_and(|b| !ows(b)) {
        return v;
    }
    trim_ows_scan(v)
}

fn trim_ows_scan(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |e| e + 1);
    v.get(start..end).unwrap_or(&[])
}

/// Parses Content-Length: exactly `1*DIGIT` (RFC 9110 §8.6), checked against u64 overflow
/// (HAProxy once read 2^64+1 as 1). No sign, no list, no hex, no empty value.
pub fn parse_content_length(v: &[u8]) -> Result<u64, H1Error> {
    let v = trim_ows(v);
    if v.is_empty() {
        return Err(H1Error::BadContentLength);
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(H1Error::BadContentLength);
        }
        n = n.checked_mul(10).and_then(|n| n.checked_add(u64::from(b - b'0'))).ok_or(H1Error::BadContentLength)?;
    }
    Ok(n)
}

/// Splits a comma-separated list value into trimmed elements (RFC 9110 §5.6.1).
pub fn list_items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim_ows)
}

/// The framing a Transfer-Encoding value asks for: `chunked` must appear exactly once and last
/// (RFC 9112 §6.3 item 4: otherwise the length cannot be determined: 400); any other coding is
/// one Apex does not implement (RFC 9112 §6.1: 501). Empty list elements are refused rather than
/// skipped: a proxy that skips what its upstream does not is a desync.
pub fn check_transfer_encoding<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<(), H1Error> {
    let mut chunked_seen = false;
    let mut last_chunked = false;
    let mut unknown = false;
    for value in values {
        for item in list_items(value) {
            if item.is_empty() || !item.iter().all(|&b| is_tchar(b)) {
                return Err(H1Error::BadTransferEncoding);
            }
            if item.eq_ignore_ascii_case(b"chunked") {
                if chunked_seen {
                    return Err(H1Error::BadTransferEncoding); // RFC 9112 §7: never twice
                }
                chunked_seen = true;
                last_chunked = true;
            } else {
                unknown = true;
                last_chunked = false;
            }
        }
    }
    if !last_chunked {
        return Err(if unknown && !chunked_seen { H1Error::UnknownCoding } else { H1Error::BadTransferEncoding });
    }
    if unknown {
        return Err(H1Error::UnknownCoding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `trim_ows` against a plain trim on every string of up to six bytes over SP, HTAB, a
    /// letter and a comma: the fast path (nothing to trim) takes exactly the strings it should.
    #[test]
    fn trim_ows_every_short_string() {
        let alphabet = [b' ', b'\t', b'a', b','];
        for len in 0..=6u32 {
            for code in 0..4usize.pow(len) {
                let v: Vec<u8> = (0..len).map(|i| alphabet[code / 4usize.pow(i) % 4]).collect();
                let ows = |b: &u8| *b == b' ' || *b == b'\t';
                let start = v.iter().position(|b| !ows(b)).unwrap_or(v.len());
                let end = v.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
                assert_eq!(trim_ows(&v), &v[start..end], "{v:?}");
            }
        }
    }

    /// Every length, from the per-byte one to the looped one, against a per-byte fold: equal
    /// names in any case, and a name that differs in one byte, at every position.
    #[test]
    fn eq_token_lower_every_length() {
        let lower = b"abcdefghij-klmnopqrstu";
        for n in 0..=lower.len() {
            let want = &lower[..n];
            let upper: Vec<u8> = want.to_ascii_uppercase();
            assert!(eq_token_lower(want, want) && eq_token_lower(&upper, want), "length {n}");
            for i in 0..n {
                let mut bad = upper.clone();
                bad[i] = b'_';
                assert!(!eq_token_lower(&bad, want), "length {n}, byte {i}");
            }
            assert!(!eq_token_lower(&lower[..n.saturating_sub(1)], want) || n == 0);
        }
    }

    #[test]
    fn head_end_found_once_whatever_the_split() {
        let msg = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
        for split in 0..msg.len() {
            let mut scanned = 0;
            let first = find_head_end(&msg[..split], &mut scanned).unwrap();
            let got = first.or_else(|| find_head_end(msg, &mut scanned).unwrap());
            assert_eq!(got, Some(27), "split {split}");
        }
    }

    #[test]
    fn fields_recognised_in_any_case_and_nothing_else() {
        let known = [
            ("host", Field::Host),
            ("content-length", Field::ContentLength),
            ("transfer-encoding", Field::TransferEncoding),
            ("connection", Field::Connection),
            ("keep-alive", Field::KeepAlive),
            ("proxy-connection", Field::ProxyConnection),
            ("upgrade", Field::Upgrade),
            ("te", Field::Te),
            ("trailer", Field::Trailer),
            ("expect", Field::Expect),
            ("x-forwarded-for", Field::XForwardedFor),
            ("x-forwarded-proto", Field::XForwardedProto),
            ("x-forwarded-host", Field::XForwardedHost),
        ];
        for (name, field) in known {
            assert_eq!(Field::of(name.as_bytes()), field, "{name}");
            assert_eq!(Field::of(name.to_ascii_uppercase().as_bytes()), field, "{name}");
            // Every single-byte change to a token byte is another field.
            for i in 0..name.len() {
                for b in (b'!'..=b'~').filter(|&b| is_tchar(b)) {
                    let mut other = name.as_bytes().to_vec();
                    if other[i].eq_ignore_ascii_case(&b) {
                        continue;
                    }
                    other[i] = b;
                    assert_eq!(Field::of(&other), Field::Other, "{:?}", String::from_utf8_lossy(&other));
                }
            }
            // A prefix or an extension is another field.
            assert_eq!(Field::of(&name.as_bytes()[1..]), Field::Other, "{name}");
            assert_eq!(Field::of(format!("{name}s").as_bytes()), Field::Other, "{name}");
        }
        for other in ["tee", "Trailers", "x-upgrade", "Content-Type", "x-forwarded-fox", "", "-"] {
            assert_eq!(Field::of(other.as_bytes()), Field::Other, "{other}");
        }
    }

    /// The parsers rely on httparse for RFC 9110 §5.5 (no control bytes in a value, NUL, bare CR
    /// and DEL included): every byte outside the set must fail both parsers, at the start, in
    /// the middle and at the end of a value, and every byte inside it must pass.
    #[test]
    fn field_values_checked_by_httparse() {
        // RFC 9110 §5.5: field-value bytes are VCHAR, obs-text, SP and HTAB; nothing else.
        let valid_field_value_byte = |b: u8| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80;
        let arena = bumpalo::Bump::new();
        for b in 0..=255u8 {
            for (pre, post) in [(&b""[..], &b"x"[..]), (b"a", b"b"), (b"x", b"")] {
                let value = [pre, &[b], post].concat();
                let req = [&b"GET / HTTP/1.1\r\nHost: a\r\nX: "[..], &value, b"\r\n\r\n"].concat();
                let resp = [&b"HTTP/1.1 200 OK\r\nX: "[..], &value, b"\r\nContent-Length: 0\r\n\r\n"].concat();
                let ok = valid_field_value_byte(b);
                let got = (
                    head::parse_request(&req, &arena, 32).is_ok(),
                    response::parse_response(&resp, &arena, 32, false).is_ok(),
                );
                // SP and HTAB at either end are OWS, trimmed, not part of the value: they pass too.
                assert_eq!(got, (ok, ok), "byte {b:#04x} in {value:?}");
            }
        }
    }

    /// A head with a bare CR or LF anywhere, however balanced by other CRs and LFs, is never
    /// accepted: not parsed straight from the buffer (`parse_*_in`, `lines_end_in_crlf`), and
    /// not by `find_head_end` and the parsers together, whether it arrives whole or in two
    /// reads.
    #[test]
    fn bare_cr_and_lf_refused_by_head_end_and_parser() {
        let arena = bumpalo::Bump::new();
        let bare = |h: &[u8]| {
            h.iter().enumerate().any(|(i, &b)| {
                (b == b'\r' && h.get(i + 1) != Some(&b'\n')) || (b == b'\n' && (i == 0 || h[i - 1] != b'\r'))
            })
        };
        let heads: [(&[u8], bool); 2] = [
            (b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 0\r\n\r\n", false),
        ];
        let (mut tried, mut tried_whole) = (0, 0);
        for (head, is_request) in heads {
            let mut cases = Vec::new();
            for i in 0..head.len() {
                for ins in [&b"\r"[..], b"\n", b"\n\r", b"\r\r\n\n", b"\n\n\r\r"] {
                    cases.push([&head[..i], ins, &head[i..]].concat());
                }
                for sub in [b'\r', b'\n'] {
                    let mut h = head.to_vec();
                    h[i] = sub;
                    cases.push(h);
                }
            }
            for case in cases {
                // Parsed straight from the buffer, as a head that came whole in one read is.
                let whole = if is_request {
                    head::parse_request_in(&case, &arena, 32).ok().flatten().map(|(_, n)| n)
                } else {
                    response::parse_response_in(&case, &arena, 32, false).ok().flatten().map(|(_, n)| n)
                };
                if let Some(n) = whole {
                    assert!(!bare(&case[..n]), "accepted whole {:?}", String::from_utf8_lossy(&case[..n]));
                    tried_whole += 1;
                }
                for split in [case.len(), case.len() / 2] {
                    let mut scanned = 0;
                    let found = match find_head_end(&case[..split], &mut scanned) {
                        Ok(None) => find_head_end(&case, &mut scanned),
                        other => other,
                    };
                    let Ok(Some(end)) = found else { continue };
                    let h = &case[..end];
                    let parsed = if is_request {
                        head::parse_request(h, &arena, 32).is_ok()
                    } else {
                        response::parse_response(h, &arena, 32, false).is_ok()
                    };
                    assert!(!(parsed && bare(h)), "accepted {:?}", String::from_utf8_lossy(h));
                    tried += 1;
                }
            }
        }
        // Mutations after a head's end leave a clean head for the parser.
        assert!(tried > 20, "only {tried} heads got as far as the parser");
        assert!(tried_whole > 20, "only {tried_whole} heads parsed whole");
    }

    #[test]
    fn bare_lf_and_cr_refused() {
        let mut s = 0;
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: a\r\n\r\n", &mut s), Err(H1Error::BadLineEnding));
        let mut s = 0;
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", &mut s), Err(H1Error::BadLineEnding));
        let mut s = 0;
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\n", &mut s), Err(H1Error::BadLineEnding));
    }

    #[test]
    fn request_line_checked_early() {
        assert_eq!(check_request_line(b"GET / HTTP/1.1\r\nHo"), Ok(true));
        assert_eq!(check_request_line(b"GET / HTTP/1.1"), Ok(false));
        assert!(check_request_line(b"GET /\r\n").is_err());
        assert!(check_request_line(b"GET / HTTP/2.0\r\n").is_err());
        assert!(check_request_line(b"\x16\x03\x01 TLS\r\n").is_err());
    }

    #[test]
    fn content_length_strict() {
        assert_eq!(parse_content_length(b"0"), Ok(0));
        assert_eq!(parse_content_length(b" 42 "), Ok(42));
        assert_eq!(parse_content_length(b"007"), Ok(7));
        assert_eq!(parse_content_length(b"18446744073709551615"), Ok(u64::MAX));
        for bad in
            [&b""[..], b"+5", b"-1", b"5, 5", b"0x10", b"18446744073709551616", b"18446744073709551617", b"1 2", b"5a"]
        {
            assert_eq!(parse_content_length(bad), Err(H1Error::BadContentLength), "{:?}", bad);
        }
    }

    #[test]
    fn transfer_encoding_rules() {
        let te = |v: &[&[u8]]| check_transfer_encoding(v.iter().copied());
        assert_eq!(te(&[b"chunked"]), Ok(()));
        assert_eq!(te(&[b"Chunked"]), Ok(()));
        assert_eq!(te(&[b" chunked\t"]), Ok(()));
        assert_eq!(te(&[b"gzip, chunked"]), Err(H1Error::UnknownCoding));
        assert_eq!(te(&[b"gzip", b"chunked"]), Err(H1Error::UnknownCoding));
        assert_eq!(te(&[b"gzip"]), Err(H1Error::UnknownCoding));
        assert_eq!(te(&[b"chunked, gzip"]), Err(H1Error::BadTransferEncoding));
        assert_eq!(te(&[b"chunked, chunked"]), Err(H1Error::BadTransferEncoding));
        assert_eq!(te(&[b"chunked", b"chunked"]), Err(H1Error::BadTransferEncoding));
        assert_eq!(te(&[b"chunked,"]), Err(H1Error::BadTransferEncoding));
        assert_eq!(te(&[b"\"chunked\""]), Err(H1Error::BadTransferEncoding));
        assert_eq!(te(&[b""]), Err(H1Error::BadTransferEncoding));
        assert_eq!(te(&[b"chunked;q=1"]), Err(H1Error::BadTransferEncoding));
    }
}
