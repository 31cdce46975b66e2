//! The handshake, driven through rustls's unbuffered API on our pooled buffers: `drive` feeds
//! rustls one whole record at a time and writes what it encodes, `send` writes it out.
//!
//! Invariants: rustls never sees a byte past the handshake's last record (what follows is the
//! record layer's); records leave in the order rustls encoded them (`rout`, then `spill`).
//! Limits: `spill` is the one allocation, only for a flight larger than a buffer (a long
//! certificate chain), and it is given back once written.

use std::io;

use mio::net::TcpStream;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};

use super::record::{CIPHERTEXT_MAX, HEADER, record_need, whole_record};
use super::{TlsBuf, bad, broken};
use crate::transport::{Filled, Io, fill, flush};

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
// Disjoint borrows of one Tls's fields (and the socket's), which a struct would only rename.
#[allow(clippy::too_many_arguments)]
pub(super) fn drive<C: HsConn>(
    hs: &mut C,
    sock: &TcpStream,
    io: &mut Io,
    rin: &mut TlsBuf,
    rout: &mut TlsBuf,
    spill: &mut Vec<u8>,
    fed: &mut usize,
    failed: &mut bool,
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
                *failed = encoded && send(sock, io, rout, spill).unwrap_or(false);
                // rustls's reason (a certificate not valid for the name, no shared
                // protocol, ...) is what an operator needs in the log.
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        };
        let next = match state {
            ConnectionState::EncodeTlsData(mut e) => {
                // rustls has handed this record over: it must be kept now. Into `rout` if it
                // fits (after writing what is there), else into `spill` (a flight larger
                // than a buffer: a long certificate chain), which keeps the order.
                if spill.is_empty() {
                    match e.encode(rout.spare()) {
                        Ok(n) => rout.commit(n),
                        Err(EncodeError::InsufficientSize(need)) => {
                            send(sock, io, rout, spill)?;
                            rout.reserve(need.required_size);
                            match e.encode(rout.spare()) {
                                Ok(n) => rout.commit(n),
                                Err(_) => encode_spill(&mut e, spill)?,
                            }
                        }
                        Err(_) => return Err(bad("tls encode")),
                    }
                } else {
                    encode_spill(&mut e, spill)?;
                }
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
                if rest.len() >= HEADER && need - HEADER > CIPHERTEXT_MAX {
                    *fed += rest.len();
                    continue;
                }
                send(sock, io, rout, spill)?;
                rin.reserve(need + *fed);
                match fill(sock, io, rin)? {
                    Filled::Data(_) => {}
                    Filled::Idle => return Ok(Hs::Read),
                    Filled::Eof => return Err(bad("peer closed during the handshake")),
                }
            }
            Hs::Eof => return Ok(next),
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

/// Encodes a handshake record that does not fit in `rout` into `spill`, after what is there.
fn encode_spill<D>(e: &mut rustls::unbuffered::EncodeTlsData<'_, D>, spill: &mut Vec<u8>) -> io::Result<()> {
    let need = match e.encode(&mut []) {
        Err(EncodeError::InsufficientSize(s)) => s.required_size,
        Ok(_) => return Ok(()),
        Err(_) => return Err(bad("tls encode")),
    };
    let start = spill.len();
    spill.resize(start + need, 0);
    let room = spill.get_mut(start..).ok_or_else(|| broken("spill shorter than resized"))?;
    let n = e.encode(room).map_err(|_| bad("tls encode"))?;
    spill.truncate(start + n);
    Ok(())
}

/// The bytes of `rin` rustls has been given (and not discarded).
fn fed_slice(rin: &mut TlsBuf, fed: usize) -> &mut [u8] {
    let b = rin.filled_mut();
    // `fed` never passes the filled bytes (see `drive`); release builds clamp (rustls is given
    // less, never more than there is).
    debug_assert!(fed <= b.len(), "fed past rin");
    let n = fed.min(b.len());
    b.get_mut(..n).unwrap_or(&mut [])
}

/// Applies rustls's discard to `rin` and to what it has been given.
fn consume_fed(rin: &mut TlsBuf, fed: &mut usize, discard: usize) {
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
}
