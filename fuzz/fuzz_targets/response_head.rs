//! Response head: parse and framing decision, then re-serialisation for the client; and the
//! head parsed straight from the buffer (`parse_response_in`) is the one `find_head_end` and
//! `parse_response` find, to the byte. The health checker's status-line reader
//! (`health::status_of`) reads the same bytes and must agree on the status of a head the full
//! parser takes.
#![no_main]
use apex::h1::response::{parse_response, parse_response_in};
use apex::h1::write::{write_response, Out, RespMode};
use apex::h1::{find_head_end, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else { return };
    let mut scanned = 0;
    let arena = bumpalo::Bump::new();
    let direct = parse_response_in(data, &arena, 64, flags & 1 == 1);
    let slow = match find_head_end(data, &mut scanned) {
        Ok(Some(end)) => parse_response(&data[..end], &arena, 64, flags & 1 == 1).ok().map(|r| (r, end)),
        _ => None,
    };
    match (&direct, &slow) {
        (Ok(Some((a, n))), Some((b, end))) => {
            assert_eq!(n, end, "the same head");
            assert_eq!((a.code, a.framing, a.reusable), (b.code, b.framing, b.reusable));
        }
        (Ok(Some((_, n))), None) => panic!("parsed straight from the buffer only: {:?}", &data[..*n]),
        (_, Some(_)) => assert!(matches!(data.first(), Some(b'\r' | b'\n')), "parsed by the scan only"),
        _ => {}
    }
    let checked = apex::health::status_of(data);
    let Some((resp, _)) = slow else { return };
    if data.starts_with(b"HTTP/1.") {
        assert_eq!(checked, Some(resp.code), "the health check reads another status");
    }
    if flags & 1 == 1 || resp.code < 200 || resp.code == 204 || resp.code == 304 {
        assert_eq!(resp.framing, Framing::None);
    }
    let framing = match resp.framing {
        Framing::Chunked if flags & 2 == 2 => Framing::Close,
        f => f,
    };
    let mode = RespMode { framing, keep_alive: flags & 4 == 4, client_minor: (flags >> 3) & 1, tunnel: false };
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Out::new(&mut buf);
    write_response(&resp, mode, None, &mut out);
    let Some(n) = out.finish() else { return };
    let mut s2 = 0;
    assert_eq!(find_head_end(&buf[..n], &mut s2), Ok(Some(n)));
    let arena2 = bumpalo::Bump::new();
    let again = parse_response(&buf[..n], &arena2, 128, flags & 1 == 1).expect("re-serialised response parses");
    assert_eq!(again.code, resp.code);
    // Apex's head is in Apex's form: written again from itself, it is the same bytes (field
    // lines copied as they came are only those already in that form).
    let mut buf2 = vec![0u8; 64 * 1024];
    let mut out2 = Out::new(&mut buf2);
    write_response(&again, mode, None, &mut out2);
    let n2 = out2.finish().expect("fits as before");
    assert_eq!(&buf2[..n2], &buf[..n], "written twice, the same head");
    // And that form is `name: value` CRLF for every field line (RFC 9110 §5.5: no OWS kept).
    let status = format!("HTTP/1.1 {} {}\r", resp.code, resp.reason);
    assert_eq!(buf[..n].split(|&b| b == b'\n').next(), Some(status.as_bytes()), "the status line in Apex's form");
    let mut lines = buf[..n].split(|&b| b == b'\n').skip(1);
    for h in again.headers {
        let line = lines.next().expect("a line per field");
        assert_eq!(line, [h.name.as_bytes(), b": ", h.value, b"\r"].concat(), "a field line in Apex's form");
    }
    if framing != Framing::None {
        assert_eq!(again.framing, framing, "the client sees the framing Apex chose");
    }
});
