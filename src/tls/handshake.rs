//! The handshake, driven through rustls's unbuffered API on our pooled buffers: `drive` feeds
//! rustls one whole record at a time and writes what it encodes, `send` writes it out.
//!
//! Invariants: rustls never sees a byte past the handshake's last record (what follows is the
//! record layer's); records leave in the order rustls encoded them (`rout`, then `spill`).
//! Limits: `spill` is the one allocation, only for a flight larger than a buffer (a long
//! certificate chain), and it is given back once written. A flight coming in that is larger
//! than a record buffer asks for a handshake buffer (`Hs::Grow`, `TLS_HS_BUF_BYTES`); in one,
//! no byte past the record rustls waits for is read, so what is left when its message is done
//! fits a record buffer again.

use std::io;

use mio::net::TcpStream;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};

use super::record::{
    ALERT_DECODE_ERROR, ALERT_PROTOCOL_VERSION, CIPHERTEXT_MAX, CT_APPDATA, CT_CHANGE_CIPHER_SPEC, CT_HEARTBEAT,
    HEADER, record_need, whole_record,
};
use super::{TlsBuf, bad, broken};
use crate::buf::Buf;
use crate::limits::TLS_BUF_BYTES;
use crate::transport::{Filled, Io, fill_max, flush};

/// The handshake in progress, as the server (a client of ours) or the client (an upstream).
pub(super) enum Handshake {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

/// One side's handshake connection, as `drive` needs it.
pub(super) trait HsConn {
    type Data;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    /// rustls has records queued to send.
    fn queued(&self) -> bool;
}

impl HsConn for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
    fn queued(&self) -> bool {
        self.wants_write()
    }
}

impl HsConn for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
    fn queued(&self) -> bool {
        self.wants_write()
    }
}

/// Runs a handshake until it is done, ends, or waits (`Hs::Read`, `Hs::Flush`). rustls is fed
/// one record at a time and stops at the handshake's end, so it never holds application data
/// (early data is off): whatever follows the handshake is the record layer's.
/// On failure, the alert rustls queued is written and `failed` says whether it left.
/// `protected`: a record rustls encoded is protected (the peer no longer reads plaintext).
// Disjoint borrows of one Tls's fields (and the socket's), which a struct would only rename.
#[allow(clippy::too_many_arguments)]
pub(super) fn drive<C: HsConn, const N: usize>(
    hs: &mut C,
    sock: &TcpStream,
    io: &mut Io,
    rin: &mut Buf<N>,
    rout: &mut TlsBuf,
    spill: &mut Vec<u8>,
    fed: &mut usize,
    failed: &mut bool,
    protected: &mut bool,
) -> io::Result<Hs> {
    loop {
        let st = hs.process(fed_slice(rin, *fed));
        let discard = st.discard;
        let state = match st.state {
            Ok(state) => state,
            Err(e) => {
                // rustls queued a fatal alert (no_application_protocol, handshake_failure,
                // ...): it goes out before the close (RFC 8446 §6.2), so the client learns why.
                // Only what is queued is asked for (`wants_write`): with nothing queued,
                // rustls would parse the rest of the buffer again and, on more bad bytes,
                // try to send a second fatal alert (a debug assertion in rustls). The
                // status's discard is applied first: rustls checks the buffer it is given
                // against what it has parsed (an empty slice panics).
                consume_fed(rin, fed, discard);
                let mut encoded = false;
                let start = rout.len();
                for _ in 0..8 {
                    if !hs.queued() {
                        break;
                    }
                    let st = hs.process(fed_slice(rin, *fed));
                    let discard = st.discard;
                    let ok = match st.state {
                        Ok(ConnectionState::EncodeTlsData(mut e)) => e.encode(rout.spare()).ok(),
                        _ => None,
                    };
                    consume_fed(rin, fed, discard);
                    let Some(n) = ok else { break };
                    rout.commit(n);
                    encoded = true;
                }
                // rustls sends no alert for a message claiming more than its bound (0xffff):
                // ours says it, with the alert rustls gives other undecodable input.
                if !encoded && e == rustls::Error::InvalidMessage(rustls::InvalidMessage::HandshakePayloadTooLarge) {
                    return Ok(Hs::Refuse(ALERT_DECODE_ERROR, "handshake message too large"));
                }
                let alert = if encoded { alert_sent(rout.filled().get(start..).unwrap_or(&[]), &e) } else { 0 };
                *failed = encoded && send(sock, io, rout, spill).unwrap_or(false);
                // rustls's reason (a certificate not valid for the name, no shared
                // protocol, ...) is what an operator needs in the log.
                return Ok(Hs::Alerted(alert, e));
            }
        };
        let next = match state {
            ConnectionState::EncodeTlsData(mut e) => {
                // rustls has handed this record over: it must be kept now. Into `rout` if it
                // fits (after writing what is there), else into `spill` (a flight larger
                // than a buffer: a long certificate chain), which keeps the order.
                let encoded = if spill.is_empty() {
                    match e.encode(rout.spare()) {
                        Ok(n) => commit(rout, n),
                        Err(EncodeError::InsufficientSize(need)) => {
                            send(sock, io, rout, spill)?;
                            rout.reserve(need.required_size);
                            match e.encode(rout.spare()) {
                                Ok(n) => commit(rout, n),
                                Err(_) => encode_spill(&mut e, spill)?,
                            }
                        }
                        Err(_) => return Err(bad("tls encode")),
                    }
                } else {
                    encode_spill(&mut e, spill)?
                };
                *protected |= encoded;
                Hs::Go
            }
            ConnectionState::TransmitTlsData(t) => {
                // Queued in `rout` is as good as sent: it leaves before anything sealed later.
                t.done();
                Hs::Flush
            }
            ConnectionState::BlockedHandshake => Hs::Read,
            ConnectionState::WriteTraffic(_) => Hs::Done,
            ConnectionState::PeerClosed | ConnectionState::Closed => Hs::Eof,
            _ => return Err(bad("unexpected tls state")),
        };
        consume_fed(rin, fed, discard);
        match next {
            Hs::Go => {}
            Hs::Flush => {
                if !send(sock, io, rout, spill)? {
                    return Ok(Hs::Flush);
                }
            }
            Hs::Read => {
                // rustls is given one more whole record only when it asks for more, so it
                // never reads past the handshake's last record: what follows (a KeyUpdate,
                // application data) is ours to open. Given it all at once, rustls would
                // handle a KeyUpdate that came with the client's Finished itself, moving its
                // send key on and keeping its answer back, and the secrets handed over would
                // be for a key the client does not know yet.
                if let Some(n) = rin.filled().get(*fed..).and_then(whole_record) {
                    *fed += n;
                    continue;
                }
                // A header claiming more than any record may hold (RFC 8446 §5.2, RFC 5246
                // §6.2.3) can never be whole in `rin`: rustls is given what there is and
                // refuses it with a fatal alert (decode_error), instead of the wait lasting
                // client_head.
                // `fed` counts bytes of `rin` given to rustls, so it never passes its end.
                let rest = rin.filled().get(*fed..).ok_or_else(|| broken("fed past rin"))?;
                let need = record_need(rest);
                // Nor can first bytes that are no TLS record at all: an SSLv2-format
                // ClientHello is refused by us (protocol_version: RFC 8446 Appendix D.5 says
                // not to accept one); anything else rustls refuses at its header (decode_error:
                // an unknown content type, a version not 3.x, as plain HTTP to this port has),
                // so it is given what there is. Until an SSLv2 header is all here, it is
                // waited for, so that it gets its own alert.
                let v2 = *fed == 0 && rest.first().is_some_and(|&b| b & 0x80 != 0);
                if v2 && sslv2_hello(rest) {
                    return Ok(Hs::Refuse(ALERT_PROTOCOL_VERSION, "SSLv2-format ClientHello"));
                }
                let oversized = rest.len() >= HEADER && need - HEADER > CIPHERTEXT_MAX;
                if (oversized || header_refused(rest)) && (!v2 || rest.len() >= SSLV2_HEADER) {
                    *fed += rest.len();
                    continue;
                }
                // A message spread over records stays in `rin` until it is whole (rustls joins
                // its pieces in place and discards them together): when this one cannot take
                // the record awaited, the caller lends a handshake buffer, or refuses.
                let end = *fed + need;
                if end > N {
                    return Ok(Hs::Grow);
                }
                send(sock, io, rout, spill)?;
                rin.reserve(end);
                // In a handshake buffer, nothing past that record is read (see the module).
                let max = if N > TLS_BUF_BYTES { end.saturating_sub(rin.len()) } else { usize::MAX };
                match fill_max(sock, io, rin, max)? {
                    Filled::Data(_) => {}
                    Filled::Idle => return Ok(Hs::Read),
                    Filled::Eof => return Err(bad("peer closed during the handshake")),
                }
            }
            Hs::Eof | Hs::Grow | Hs::Refuse(..) | Hs::Alerted(..) => return Ok(next),
            Hs::Done => return Ok(Hs::Done),
        }
    }
}

/// Writes `rout`, then `spill` (records that came after it). Returns whether both are empty.
pub(super) fn send(sock: &TcpStream, io: &mut Io, rout: &mut TlsBuf, spill: &mut Vec<u8>) -> io::Result<bool> {
    use std::io::Write as _;
    flush(sock, io, rout)?;
    while rout.is_empty() && !spill.is_empty() && io.writable {
        match (&*sock).write(spill) {
            Ok(n) => {
                spill.drain(..n.min(spill.len()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => io.writable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if spill.is_empty() && spill.capacity() > 0 {
        *spill = Vec::new(); // the handshake's spill is given back
    }
    Ok(rout.is_empty() && spill.is_empty())
}

/// Bytes an SSLv2-format CLIENT-HELLO shows before it can be told apart (`sslv2_hello`).
const SSLV2_HEADER: usize = 4;

/// RFC 5246 Appendix E.2: an SSLv2-format CLIENT-HELLO starts with a two-byte length whose top
/// bit is set (no TLS content type has it), then msg_type 1 and the version's major byte, 3.
fn sslv2_hello(b: &[u8]) -> bool {
    matches!(b, &[len, _, 1, 3, ..] if len & 0x80 != 0)
}

/// A record header rustls refuses as soon as it has read that much of it (its
/// `read_opaque_message_header`): a content type it does not know (RFC 8446 §5: 20 to 24), or
/// a version whose major byte is not 3.
fn header_refused(b: &[u8]) -> bool {
    match b {
        [typ, ..] if !(CT_CHANGE_CIPHER_SPEC..=CT_HEARTBEAT).contains(typ) => true,
        [_, major, _, ..] => *major != 3,
        _ => false,
    }
}

/// Commits `n` bytes rustls encoded at the end of `rout`. Returns whether they hold a protected
/// record (`protected`).
fn commit(rout: &mut TlsBuf, n: usize) -> bool {
    rout.commit(n);
    let start = rout.len().saturating_sub(n);
    rout.filled().get(start..).is_some_and(protected)
}

/// Encodes a handshake record that does not fit in `rout` into `spill`, after what is there.
/// Returns whether it is protected (`protected`).
fn encode_spill<D>(e: &mut rustls::unbuffered::EncodeTlsData<'_, D>, spill: &mut Vec<u8>) -> io::Result<bool> {
    let need = match e.encode(&mut []) {
        Err(EncodeError::InsufficientSize(s)) => s.required_size,
        Ok(_) => return Ok(false),
        Err(_) => return Err(bad("tls encode")),
    };
    let start = spill.len();
    spill.resize(start + need, 0);
    let room = spill.get_mut(start..).ok_or_else(|| broken("spill shorter than resized"))?;
    let n = e.encode(room).map_err(|_| bad("tls encode"))?;
    spill.truncate(start + n);
    Ok(spill.get(start..).is_some_and(protected))
}

/// Whether any of these whole records, as rustls encoded them, is protected: once a
/// ChangeCipherSpec (TLS 1.2: what follows it is encrypted) or an application_data record
/// (TLS 1.3's outer type for every encrypted record, RFC 8446 §5.2) has gone out, the peer
/// reads no plaintext alert from us.
fn protected(mut recs: &[u8]) -> bool {
    while let Some(n) = whole_record(recs) {
        if matches!(recs.first(), Some(&(CT_CHANGE_CIPHER_SPEC | CT_APPDATA))) {
            return true;
        }
        recs = recs.get(n..).unwrap_or(&[]);
    }
    false
}

/// The bytes of `rin` rustls has been given (and not discarded).
fn fed_slice<const N: usize>(rin: &mut Buf<N>, fed: usize) -> &mut [u8] {
    let b = rin.filled_mut();
    // `fed` never passes the filled bytes (see `drive`); release builds clamp (rustls is given
    // less, never more than there is).
    debug_assert!(fed <= b.len(), "fed past rin");
    let n = fed.min(b.len());
    b.get_mut(..n).unwrap_or(&mut [])
}

/// Applies rustls's discard to `rin` and to what it has been given.
fn consume_fed<const N: usize>(rin: &mut Buf<N>, fed: &mut usize, discard: usize) {
    rin.consume(discard);
    *fed = fed.saturating_sub(discard);
}

/// What the handshake loop does after a state is handled.
pub(super) enum Hs {
    Go,
    Flush,
    Read,
    Eof,
    Done,
    /// The record awaited does not fit in this input buffer beside the message rustls holds.
    Grow,
    /// The handshake is refused with this fatal alert, which rustls has not sent.
    Refuse(u8, &'static str),
    /// rustls failed the handshake and sent this alert (0: none went out).
    Alerted(u8, rustls::Error),
}

/// The description of the fatal alert rustls just encoded into `out` (RFC 8446 §6), after
/// whatever else it still had to send (a ServerHello): read from its record while that is
/// plaintext (content type 21, length 2: level, description); once the handshake is encrypted,
/// the alert rustls sends for `e` (the errors that come after the ServerHello: ALPN, RFC 7301
/// §3.2, is decided with the EncryptedExtensions), else 0.
fn alert_sent(mut out: &[u8], e: &rustls::Error) -> u8 {
    while let [ty, 3, _, hi, lo, rest @ ..] = out {
        let len = usize::from(*hi) << 8 | usize::from(*lo);
        if let (21, [_, desc]) = (*ty, rest.get(..len).unwrap_or(&[])) {
            return *desc;
        }
        out = rest.get(len..).unwrap_or(&[]);
    }
    match e {
        rustls::Error::NoApplicationProtocol => 120,
        rustls::Error::InvalidMessage(m) => u8::from(rustls::AlertDescription::from(*m)),
        rustls::Error::InvalidCertificate(c) => u8::from(rustls::AlertDescription::from(c.clone())),
        rustls::Error::InappropriateMessage { .. } | rustls::Error::InappropriateHandshakeMessage { .. } => 10,
        rustls::Error::DecryptError => 20,
        _ => 0,
    }
}
