//! The ACME client's reading of the CA's bytes: a whole HTTP response (head, chunked or
//! Content-Length body), then the body as a problem document. Invariants: no panic; a parsed
//! body is never longer than what followed the head.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = apex::acme::parse_response(data) {
        assert!(r.body.len() <= data.len());
        let _ = apex::acme::problem_text(r.status, &r.body);
    }
    let _ = apex::acme::problem_text(400, data);
});
