//! The ACME client's reading of the CA's bytes: a whole HTTP response (head, chunked or
//! Content-Length body), then the body as a problem document and as renewal information
//! (RFC 9773). Invariants: no panic; a parsed body is never longer than what followed the head;
//! a window read is never empty or reversed.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = apex::acme::parse_response(data) {
        assert!(r.body.len() <= data.len());
        let _ = apex::acme::problem_text(r.status, &r.body);
        if let Ok((w, _)) = apex::acme::parse_renewal_info(&r.body) {
            assert!(w.start < w.end);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = apex::acme::rfc3339(s);
    }
    let _ = apex::acme::problem_text(400, data);
});
