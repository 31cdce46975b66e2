//! Request head: end-of-head search, parse, framing decision, and re-serialisation.
//! Invariants: a head that parses re-serialises into a head that parses again, to the same
//! method, path, host and framing (one canonical message), with no hop-by-hop header left; and
//! the head parsed straight from the buffer (`parse_request_in`, the path of a head that came
//! whole) is the one `find_head_end` and `parse_request` find, to the byte.
#![no_main]
use apex::h1::head::{parse_request, parse_request_in};
use apex::h1::write::{write_request, Out};
use apex::h1::{find_head_end, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut scanned = 0;
    // Feed in two pieces to exercise the resumable scan; the result must not depend on the split.
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let first = find_head_end(&data[..split], &mut scanned);
    let end = match first {
        Ok(Some(e)) => Ok(Some(e)),
        Ok(None) => find_head_end(data, &mut scanned),
        Err(e) => Err(e),
    };
    let mut fresh = 0;
    let once = find_head_end(data, &mut fresh);
    assert_eq!(end.is_err(), once.is_err());
    let arena = bumpalo::Bump::new();
    let direct = parse_request_in(data, &arena, 64);
    let slow = match once {
        Ok(Some(end)) => parse_request(&data[..end], &arena, 64).ok().map(|r| (r, end)),
        _ => None,
    };
    match (&direct, &slow) {
        (Ok(Some((a, n))), Some((b, end))) => {
            assert_eq!(n, end, "the same head");
            assert_eq!((a.method, a.path, a.host, a.framing), (b.method, b.path, b.host, b.framing));
        }
        (Ok(Some((_, n))), None) => panic!("parsed straight from the buffer only: {:?}", &data[..*n]),
        // Leading empty lines are left to find_head_end.
        (_, Some(_)) => assert!(matches!(data.first(), Some(b'\r' | b'\n')), "parsed by the scan only"),
        _ => {}
    }
    let Some((req, _)) = slow else { return };
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Out::new(&mut buf);
    write_request(&req, "192.0.2.1".parse().unwrap(), data.len() % 2 == 0, false, None, &mut out);
    let Some(n) = out.finish() else { return };
    let again = &buf[..n];
    let mut s2 = 0;
    assert_eq!(find_head_end(again, &mut s2), Ok(Some(n)), "re-serialised head is one head");
    let arena2 = bumpalo::Bump::new();
    let req2 = parse_request(again, &arena2, 128).expect("re-serialised head parses");
    assert_eq!(req.method, req2.method);
    assert_eq!(req.path, req2.path);
    assert_eq!(req.host, req2.host);
    match req.framing {
        Framing::Length(_) | Framing::Chunked | Framing::None => assert_eq!(req.framing, req2.framing),
        Framing::Close => panic!("a request is never close-delimited"),
    }
    for h in req2.headers {
        let n = h.name.to_ascii_lowercase();
        assert!(!matches!(n.as_str(), "keep-alive" | "proxy-connection" | "te" | "trailer" | "expect"), "{n} forwarded");
    }
});
