//! Chunked decoder fed in arbitrary splits through an output of arbitrary size. Invariants: the
//! result (error or output bytes) does not depend on the splits; re-chunked output decodes to the
//! same data; the decoder never consumes past the end of the message.
#![no_main]
use apex::h1::chunked::Decoder;
use libfuzzer_sys::fuzz_target;

fn run(input: &[u8], step: usize, cap: usize, rechunk: bool) -> Result<(Vec<u8>, usize, bool), ()> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut buf = vec![0u8; cap];
    let mut pos = 0;
    let mut avail = step.min(input.len());
    for _ in 0..(input.len() + 2) * 64 + 64 {
        let (c, p) = d.relay(&input[pos..avail], &mut buf, rechunk).map_err(|_| ())?;
        pos += c;
        out.extend_from_slice(&buf[..p]);
        if d.is_done() {
            return Ok((out, pos, true));
        }
        if c == 0 && p == 0 {
            if avail == input.len() {
                return Ok((out, pos, false));
            }
            avail = (avail + step).min(input.len());
        }
    }
    panic!("no progress");
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let step = 1 + data[0] as usize;
    let cap = 1 + data[1] as usize;
    let input = &data[2..];
    let whole = run(input, input.len().max(1), 65536, true);
    let split = run(input, step, cap, true);
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "output depends on the split"),
        (Err(_), Err(_)) => {}
        _ => panic!("validity depends on the split: {whole:?} vs {split:?}"),
    }
    if let Ok((rechunked, _, true)) = whole {
        let plain = run(input, input.len(), 65536, false).expect("same input de-chunks");
        let again = run(&rechunked, rechunked.len(), 65536, false).expect("our output is valid chunked");
        assert_eq!(plain.0, again.0, "re-chunking keeps the data");
        assert_eq!(again.1, rechunked.len());
    }
});
