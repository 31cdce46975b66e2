//! The chunked transfer coding (RFC 9112 §7.1), decoded strictly and re-framed.
//!
//! `Decoder::relay` reads chunked bytes and writes either canonical chunked (`<hex>CRLF data
//! CRLF`, no extensions, `0 CRLF CRLF`, trailers dropped) or the bare data (de-chunking for an
//! HTTP/1.0 client). It never trusts more than it has parsed: data passes only inside a chunk
//! whose size line was complete and valid, so framing can never be guessed. Strictness, after the
//! 2025 chunk-parsing desyncs: hex digits only (no sign, no `0x`, checked overflow), extensions
//! only as `;name[=token|quoted-string]`, CRLF only (a bare LF or CR is an error), bounded lines.

use super::is_tchar;
use crate::limits::{CHUNK_LINE_MAX, TRAILER_BYTES_MAX};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size; `any` once one digit was seen.
    Size {
        any: bool,
    },
    /// After the size or an extension: BWS, then `;` or CR.
    ExtBws {
        after_ws: bool,
    },
    /// After `;`: BWS then the first tchar of a name.
    ExtNameStart,
    ExtName,
    /// After a name: BWS, then `=`, `;` or CR.
    ExtAfterName {
        after_ws: bool,
    },
    /// After `=`: BWS then a token or a quoted string.
    ExtValStart,
    ExtValToken,
    ExtValQuoted,
    ExtValQuotedEscape,
    /// Saw CR ending a size line; LF must follow.
    SizeLf,
    /// Inside chunk data.
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine {
        colon: bool,
        name: bool,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    state: State,
    /// The chunk size while its line is parsed, then the data bytes left in the chunk.
    remaining: u64,
    line_bytes: u16,
    trailer_bytes: u16,
    /// Data bytes decoded so far (for the body-size limit).
    pub data_total: u64,
    /// Framing bytes waiting to be written out (a size line, a CRLF, the last chunk).
    stage: [u8; STAGE_BYTES],
    stage_len: u8,
    stage_pos: u8,
}

/// The longest framing staged at once: 16 hex digits and CRLF.
const STAGE_BYTES: usize = 18;

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub const fn new() -> Self {
        Decoder {
            state: State::Size { any: false },
            remaining: 0,
            line_bytes: 0,
            trailer_bytes: 0,
            data_total: 0,
            stage: [0; STAGE_BYTES],
            stage_len: 0,
            stage_pos: 0,
        }
    }

    /// The whole message, last chunk and trailers included, has been read and written out.
    pub fn is_done(&self) -> bool {
        self.state == State::Done && self.stage_pos == self.stage_len
    }

    /// Data bytes of the current chunk that may bypass the decoder (spliced): only once the
    /// chunk's size line is parsed and any framing it produced has been written out.
    pub fn data_left(&self) -> Option<u64> {
        (self.state == State::Data && self.stage_pos == self.stage_len && self.remaining > 0).then_some(self.remaining)
    }

    /// Accounts for `n` data bytes moved around the decoder (at most `data_left`).
    pub fn skip_data(&mut self, n: u64) {
        debug_assert!(self.data_left().is_some_and(|left| n <= left));
        self.remaining = self.remaining.saturating_sub(n);
        if self.remaining == 0 && self.state == State::Data {
            self.state = State::DataCr;
        }
    }

    /// Reads from `input` and writes to `out`; returns (consumed, produced). Stops when input is
    /// used up, `out` is full, or the message ended. `rechunk`: keep the chunked coding (else
    /// de-chunk). Bytes after the message's end are left unconsumed.
    pub fn relay(&mut self, input: &[u8], out: &mut [u8], rechunk: bool) -> Result<(usize, usize), ChunkError> {
        let mut i = 0;
        let mut o = 0;
        loop {
            // Staged framing goes out first, so bytes stay in order.
            while self.stage_pos < self.stage_len {
                let Some(slot) = out.get_mut(o) else {
                    return Ok((i, o));
                };
                *slot = self.stage.get(usize::from(self.stage_pos)).copied().unwrap_or(0);
                self.stage_pos += 1;
                o += 1;
            }
            if self.state == State::Done {
                return Ok((i, o));
            }
            if self.state == State::Data {
                let avail_in = input.len() - i;
                let avail_out = out.len() - o;
                let n = (self.remaining.min(avail_in as u64) as usize).min(avail_out);
                if n == 0 {
                    return Ok((i, o));
                }
                // `i` and `o` never pass their slices' ends, so both ranges exist. Were one
                // missing, nothing was copied: an error, not `n` bytes counted as relayed.
                let (Some(src), Some(dst)) = (input.get(i..i + n), out.get_mut(o..o + n)) else {
                    debug_assert!(false, "chunk data range outside input or output");
                    return Err(ChunkError);
                };
                dst.copy_from_slice(src);
                i += n;
                o += n;
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let Some(&b) = input.get(i) else {
                return Ok((i, o));
            };
            i += 1;
            self.byte(b, rechunk)?;
        }
    }

    fn stage(&mut self, bytes: &[u8]) {
        // Callers stage at most a size line (16 hex digits + CRLF) or the last chunk.
        debug_assert!(bytes.len() <= STAGE_BYTES, "staged framing longer than the stage");
        let n = bytes.len().min(self.stage.len());
        if let (Some(dst), Some(src)) = (self.stage.get_mut(..n), bytes.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.stage_len = n as u8;
        self.stage_pos = 0;
    }

    fn stage_size_line(&mut self, size: u64) {
        let mut tmp = [0u8; STAGE_BYTES];
        let mut digits = [0u8; 16];
        let mut n = 0;
        let mut v = size;
        loop {
            if let Some(d) = digits.get_mut(n) {
                *d = b"0123456789abcdef".get((v & 0xf) as usize).copied().unwrap_or(b'0');
            }
            n += 1;
            v >>= 4;
            if v == 0 || n == 16 {
                break;
            }
        }
        let mut len = 0;
        for k in (0..n).rev() {
            if let (Some(t), Some(d)) = (tmp.get_mut(len), digits.get(k)) {
                *t = *d;
            }
            len += 1;
        }
        for &c in b"\r\n" {
            if let Some(t) = tmp.get_mut(len) {
                *t = c;
            }
            len += 1;
        }
        self.stage(tmp.get(..len).unwrap_or(&[]));
    }

    fn line_byte(&mut self) -> Result<(), ChunkError> {
        self.line_bytes = self.line_bytes.saturating_add(1);
        if usize::from(self.line_bytes) > CHUNK_LINE_MAX { Err(ChunkError) } else { Ok(()) }
    }

    fn byte(&mut self, b: u8, rechunk: bool) -> Result<(), ChunkError> {
        use State::*;
        let is_ws = b == b' ' || b == b'\t';
        match self.state {
            Size { any } => {
                self.line_byte()?;
                if let Some(d) = (b as char).to_digit(16) {
                    // RFC 9112 §7.1: chunk-size = 1*HEXDIG; overflow is an error, not a wrap.
                    self.remaining =
                        self.remaining.checked_mul(16).and_then(|s| s.checked_add(u64::from(d))).ok_or(ChunkError)?;
                    self.state = Size { any: true };
                } else if !any {
                    return Err(ChunkError);
                } else if b == b'\r' {
                    self.state = SizeLf;
                } else if b == b';' {
                    self.state = ExtNameStart;
                } else if is_ws {
                    self.state = ExtBws { after_ws: true };
                } else {
                    return Err(ChunkError);
                }
            }
            ExtBws { after_ws } => {
                self.line_byte()?;
                match b {
                    b';' => self.state = ExtNameStart,
                    b' ' | b'\t' => self.state = ExtBws { after_ws: true },
                    // BWS is only allowed before `;`: "5 \r\n" has nothing to separate.
                    b'\r' if !after_ws => self.state = SizeLf,
                    _ => return Err(ChunkError),
                }
            }
            ExtNameStart => {
                self.line_byte()?;
                if is_ws {
                } else if is_tchar(b) {
                    self.state = ExtName;
                } else {
                    return Err(ChunkError);
                }
            }
            ExtName => {
                self.line_byte()?;
                match b {
                    _ if is_tchar(b) => {}
                    b' ' | b'\t' => self.state = ExtAfterName { after_ws: true },
                    b'=' => self.state = ExtValStart,
                    b';' => self.state = ExtNameStart,
                    b'\r' => self.state = SizeLf,
                    _ => return Err(ChunkError),
                }
            }
            ExtAfterName { after_ws } => {
                self.line_byte()?;
                match b {
                    b' ' | b'\t' => {}
                    b'=' => self.state = ExtValStart,
                    b';' => self.state = ExtNameStart,
                    b'\r' if !after_ws => self.state = SizeLf,
                    _ => return Err(ChunkError),
                }
            }
            ExtValStart => {
                self.line_byte()?;
                match b {
                    b' ' | b'\t' => {}
                    b'"' => self.state = ExtValQuoted,
                    _ if is_tchar(b) => self.state = ExtValToken,
                    _ => return Err(ChunkError),
                }
            }
            ExtValToken => {
                self.line_byte()?;
                match b {
                    _ if is_tchar(b) => {}
                    b' ' | b'\t' => self.state = ExtBws { after_ws: true },
                    b';' => self.state = ExtNameStart,
                    b'\r' => self.state = SizeLf,
                    _ => return Err(ChunkError),
                }
            }
            ExtValQuoted => {
                self.line_byte()?;
                // RFC 9110 §5.6.4 qdtext: HTAB, SP, VCHAR except `"` and `\`, obs-text.
                match b {
                    b'"' => self.state = ExtBws { after_ws: false },
                    b'\\' => self.state = ExtValQuotedEscape,
                    b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => {}
                    _ => return Err(ChunkError),
                }
            }
            ExtValQuotedEscape => {
                self.line_byte()?;
                match b {
                    b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => self.state = ExtValQuoted,
                    _ => return Err(ChunkError),
                }
            }
            SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError);
                }
                self.line_bytes = 0;
                if self.remaining == 0 {
                    self.state = TrailerStart;
                } else {
                    self.data_total = self.data_total.saturating_add(self.remaining);
                    if rechunk {
                        self.stage_size_line(self.remaining);
                    }
                    self.state = Data;
                }
            }
            Data => {
                debug_assert!(false, "data is copied in bulk");
                return Err(ChunkError);
            }
            DataCr => {
                if b != b'\r' {
                    return Err(ChunkError);
                }
                self.state = DataLf;
            }
            DataLf => {
                if b != b'\n' {
                    return Err(ChunkError);
                }
                if rechunk {
                    self.stage(b"\r\n");
                }
                self.state = Size { any: false };
            }
            TrailerStart | TrailerLine { .. } => {
                self.trailer_bytes = self.trailer_bytes.saturating_add(1);
                if usize::from(self.trailer_bytes) > TRAILER_BYTES_MAX {
                    return Err(ChunkError);
                }
                let start = self.state == TrailerStart;
                let (colon, name) = match self.state {
                    TrailerLine { colon, name } => (colon, name),
                    _ => (false, false),
                };
                match b {
                    b'\r' if start => self.state = TrailerLf { empty: true },
                    b'\r' if colon => self.state = TrailerLf { empty: false },
                    // A field line: token ":" value (RFC 9112 §5); no obs-fold, no bare LF.
                    b':' if name && !colon => self.state = TrailerLine { colon: true, name },
                    _ if !colon && is_tchar(b) => self.state = TrailerLine { colon, name: true },
                    b'\t' | b' ' if colon => {}
                    0x21..=0x7e | 0x80..=0xff if colon => {}
                    _ => return Err(ChunkError),
                }
            }
            TrailerLf { empty } => {
                if b != b'\n' {
                    return Err(ChunkError);
                }
                if empty {
                    if rechunk {
                        self.stage(b"0\r\n\r\n");
                    }
                    self.state = Done;
                } else {
                    self.state = TrailerStart;
                }
            }
            Done => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces at `split`, through an output of `out_cap` bytes at a time.
    fn run(input: &[u8], split: usize, out_cap: usize, rechunk: bool) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut avail = split.min(input.len());
        let mut buf = vec![0u8; out_cap];
        for _ in 0..100_000 {
            let (c, p) = d.relay(&input[consumed..avail], &mut buf, rechunk)?;
            consumed += c;
            out.extend_from_slice(&buf[..p]);
            if d.is_done() {
                return Ok((out, consumed));
            }
            if c == 0 && p == 0 {
                if avail == input.len() {
                    return Ok((out, consumed));
                }
                avail = input.len();
            }
        }
        panic!("no progress");
    }

    fn all_splits(input: &[u8], rechunk: bool) -> Result<(Vec<u8>, usize), ChunkError> {
        let first = run(input, input.len(), 4096, rechunk);
        for split in 0..input.len() {
            for cap in [1, 3, 4096] {
                let got = run(input, split, cap, rechunk);
                match (&first, &got) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "split {split} cap {cap}"),
                    (Err(_), Err(_)) => {}
                    _ => panic!("split {split} cap {cap}: {first:?} vs {got:?}"),
                }
            }
        }
        first
    }

    #[test]
    fn rechunks_canonically() {
        let input = b"5;ext=1;q=\"a b\"\r\nhello\r\n000A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (out, used) = all_splits(input, true).unwrap();
        assert_eq!(out, b"5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n");
        assert_eq!(used, input.len() - 4);
        let (out, _) = all_splits(input, false).unwrap();
        assert_eq!(out, b"hello0123456789");
    }

    #[test]
    fn strict_cases() {
        let bad: &[&[u8]] = &[
            b"zz\r\n",
            b"-1\r\n",
            b"+1\r\nx\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"10000000000000000\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5;\r\nhello\r\n0\r\n\r\n",
            b"5;a=\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"x\r\nhello\r\n0\r\n\r\n",
            b"5;a b\r\nhello\r\n0\r\n\r\n",
            b"5;a=b c\r\nhello\r\n0\r\n\r\n",
            b"5;\0\r\nhello\r\n0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"0\r\n folded: x\r\n\r\n",
            b"0\r\n\n",
        ];
        for input in bad {
            assert!(all_splits(input, true).is_err(), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn accepts_bws_before_semicolon_and_leading_zeros() {
        let (out, _) = all_splits(b"0005 ; a = b\r\nhello\r\n0\r\n\r\n", true).unwrap();
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
    }

    #[test]
    fn data_can_bypass_the_decoder() {
        let mut d = Decoder::new();
        let mut out = [0u8; 64];
        let (used, made) = d.relay(b"a\r\n", &mut out, true).unwrap();
        assert_eq!((used, &out[..made]), (3, &b"a\r\n"[..]));
        assert_eq!(d.data_left(), Some(10));
        d.skip_data(4);
        assert_eq!(d.data_left(), Some(6));
        d.skip_data(6);
        assert_eq!(d.data_left(), None);
        let (used, made) = d.relay(b"\r\n0\r\n\r\n", &mut out, true).unwrap();
        assert_eq!((used, &out[..made]), (7, &b"\r\n0\r\n\r\n"[..]));
        assert!(d.is_done());
    }

    /// What `relay` reports as produced is exactly what it wrote, byte for byte, and it never
    /// writes past that: for every output size, the bytes after `produced` are untouched, and
    /// consumed + produced add up to the whole message however it is cut.
    #[test]
    fn relay_counts_only_bytes_it_moved() {
        let input = b"a\r\n0123456789\r\n3\r\nxyz\r\n0\r\n\r\n";
        for rechunk in [true, false] {
            let want = all_splits(input, rechunk).unwrap().0;
            for cap in 1..=want.len() + 1 {
                let mut d = Decoder::new();
                let (mut used, mut got) = (0, Vec::new());
                while !d.is_done() {
                    let mut out = vec![0xEEu8; cap];
                    let (c, p) = d.relay(&input[used..], &mut out, rechunk).unwrap();
                    assert!(c <= input.len() - used && p <= cap, "cap {cap}: ({c}, {p})");
                    assert!(out[p..].iter().all(|&b| b == 0xEE), "cap {cap}: wrote past {p}");
                    assert!(c > 0 || p > 0, "cap {cap}: no progress");
                    used += c;
                    got.extend_from_slice(&out[..p]);
                }
                assert_eq!((used, &got), (input.len(), &want), "cap {cap} rechunk {rechunk}");
            }
        }
    }

    #[test]
    fn max_size_does_not_overflow() {
        let mut d = Decoder::new();
        let mut out = [0u8; 64];
        assert!(d.relay(b"ffffffffffffffff\r\nab", &mut out, true).is_ok());
        assert_eq!(d.data_total, u64::MAX);
    }

    #[test]
    fn long_size_line_refused() {
        let mut line = b"1;a=".to_vec();
        line.extend(std::iter::repeat_n(b'b', CHUNK_LINE_MAX));
        line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert!(run(&line, line.len(), 64, true).is_err());
    }
}
