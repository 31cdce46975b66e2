//! Response heads from an upstream (RFC 9112 §4, §6.3). An upstream is trusted no more than a
//! client: a response whose framing is ambiguous is refused (the proxy answers 502 and drops
//! that connection) instead of being relayed for the client to misread.

use bumpalo::Bump;

use super::{Field, Framing, H1Error, MessageFields, check_transfer_encoding};

#[derive(Debug)]
pub struct Response<'a> {
    pub code: u16,
    pub reason: &'a str,
    pub minor: u8,
    /// How this response's body is delimited on the upstream connection.
    pub framing: Framing,
    /// Content-Length as sent, relayed on bodiless responses (HEAD, 304).
    pub content_length: Option<u64>,
    /// The upstream connection can carry another request after this message.
    pub reusable: bool,
    pub upgrade: Option<&'a [u8]>,
    pub headers: &'a [httparse::Header<'a>],
    /// What `Field::of` made of each header, in the same order: classified once, here.
    pub fields: &'a [Field],
    /// The head as it came, from the status line to its blank line: field lines that pass
    /// unchanged are copied from it in runs (`write::write_response`).
    pub raw: &'a [u8],
    pub connection_names: &'a [&'a [u8]],
}

/// Parses one complete head: `head` is exactly the head, ending in its blank line.
pub fn parse_response<'a>(
    head: &'a [u8],
    arena: &'a Bump,
    headers_max: usize,
    req_is_head: bool,
) -> Result<Response<'a>, H1Error> {
    match parse_response_in(head, arena, headers_max, req_is_head)? {
        // The head must be exactly the bytes given: never a prefix of them (a head found at the
        // wrong place must not pass with trailing bytes ignored).
        Some((resp, n)) if n == head.len() => Ok(resp),
        _ => Err(H1Error::Syntax("incomplete head")),
    }
}

/// Parses the head at the start of `buf`, which may hold more (the body): `Some((response, head
/// length))`, or None while no whole head is there yet, or when the buffer starts with an empty
/// line (`super::starts_a_head`: `find_head_end` decides on those).
pub fn parse_response_in<'a>(
    buf: &'a [u8],
    arena: &'a Bump,
    headers_max: usize,
    req_is_head: bool,
) -> Result<Option<(Response<'a>, usize)>, H1Error> {
    if !super::starts_a_head(buf) {
        return Ok(None);
    }
    let slots = super::header_slots(arena, headers_max)?;
    let mut resp = httparse::Response::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, slots)
        .map_err(H1Error::from_httparse)?;
    let httparse::Status::Complete(len) = status else {
        return Ok(None);
    };
    let head = buf.get(..len).unwrap_or(&[]);
    // `super::lines_end_in_crlf`, here in two parts: the end now, each field line in the loop
    // that classifies them (one pass over the fields, not two). A response refused for one
    // fault or another is the same 502, so which the loop finds first does not matter.
    if !super::ends_in_blank_line(head) {
        return Err(H1Error::BadLineEnding);
    }
    let (Some(code), Some(minor)) = (resp.code, resp.version) else {
        return Err(H1Error::Syntax("incomplete status line"));
    };
    // RFC 9110 §15: three digits, 100-599 (httparse takes any three digits).
    if !(100..=599).contains(&code) {
        return Err(H1Error::Syntax("bad status code"));
    }
    let reason = resp.reason.unwrap_or("");
    let headers: &'a [httparse::Header<'a>] = resp.headers;

    let mut fields = MessageFields::default();
    let mut names = bumpalo::collections::Vec::new_in(arena);
    // RFC 9110 §5.5: no control bytes in a value. httparse refuses them (its HEADER_VALUE_MAP is
    // exactly VCHAR, obs-text, SP and HTAB; h1::tests::field_values_checked_by_httparse holds it to
    // that), so values are not scanned a second time here. RFC 9112 §6.3 item 5: an invalid or
    // repeated Content-Length in a response is a 502.
    let kinds = arena.try_alloc_slice_fill_copy(headers.len(), Field::Other).map_err(|_| H1Error::TooManyHeaders)?;
    for (h, kind) in headers.iter().zip(kinds.iter_mut()) {
        if !super::crlf_before(head, h.name) {
            return Err(H1Error::BadLineEnding);
        }
        *kind = Field::of(h.name.as_bytes());
        fields.take(*kind, h.value, &mut names)?;
    }
    // A response's keep-alive and upgrade options change nothing: it is reusable unless "close"
    // (RFC 9112 §9.3), and a 101 is recognised by its status.
    let MessageFields { content_length, te_seen, close, upgrade, .. } = fields;

    if te_seen {
        if minor == 0 {
            return Err(H1Error::TransferEncodingOn10); // RFC 9112 §6.1
        }
        if content_length.is_some() {
            return Err(H1Error::ConflictingLength); // RFC 9112 §6.3 item 3: "ought to be handled as an error"
        }
        // Apex relays only the chunked coding; anything else would have to pass through as
        // close-delimited with a coding the client may not know.
        check_transfer_encoding(
            headers.iter().zip(kinds.iter()).filter(|(_, k)| **k == Field::TransferEncoding).map(|(h, _)| h.value),
        )?;
    }
    // RFC 9112 §6.3 items 1-7, in order.
    let framing = if req_is_head || code < 200 || code == 204 || code == 304 {
        Framing::None
    } else if te_seen {
        Framing::Chunked
    } else {
        match content_length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let reusable = minor == 1 && !close && framing != Framing::Close;
    let resp = Response {
        code,
        reason,
        minor,
        framing,
        content_length,
        reusable,
        upgrade,
        headers,
        fields: kinds,
        raw: head,
        connection_names: names.into_bump_slice(),
    };
    Ok(Some((resp, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(head: &[u8], req_is_head: bool) -> Result<(Framing, bool), H1Error> {
        let arena = Bump::new();
        parse_response(head, &arena, 32, req_is_head).map(|r| (r.framing, r.reusable))
    }

    #[test]
    fn framing_rules() {
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false), Ok((Framing::Length(3), true)));
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true), Ok((Framing::None, true)));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false),
            Ok((Framing::Chunked, true))
        );
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n", false), Ok((Framing::Close, false)));
        assert_eq!(framing(b"HTTP/1.1 204 No Content\r\n\r\n", false), Ok((Framing::None, true)));
        assert_eq!(
            framing(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false),
            Ok((Framing::None, true))
        );
        assert_eq!(framing(b"HTTP/1.1 100 Continue\r\n\r\n", false), Ok((Framing::None, true)));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", false),
            Ok((Framing::Length(1), false))
        );
        assert_eq!(framing(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false), Ok((Framing::Length(1), false)));
    }

    #[test]
    fn ambiguous_refused() {
        let bad: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
            b"HTTP/1.1 999 Nope\r\n\r\n",
            b"garbage\r\n\r\n",
        ];
        for head in bad {
            assert!(framing(head, false).is_err(), "{:?}", String::from_utf8_lossy(head));
        }
    }
}
