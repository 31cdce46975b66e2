//! Request head: end-of-head search, parse, framing decision, and re-serialisation.
//! Invariants: a head that parses re-serialises into a head that parses again, to the same
//! method, path, host and framing (one canonical message), with no hop-by-hop header left.
#![no_main]
use apex::h1::head::parse_request;
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
    let Ok(Some(end)) = once else { return };
    let head = &data[..end];
    let arena = bumpalo::Bump::new();
    let Ok(req) = parse_request(head, &arena, 64) else { return };
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Out::new(&mut buf);
    write_request(&req, "192.0.2.1".parse().unwrap(), false, &mut out);
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
