//! TLS termination. rustls runs the handshake (its unbuffered API, into our pooled buffers);
//! once it completes, its traffic secrets are taken out (`dangerous_into_kernel_connection`, the
//! API made for kTLS) and application records are sealed and opened here, in place in pooled
//! buffers, with ring's AEAD. rustls 0.23 allocates a `Vec` for every record it decrypts or
//! encrypts itself, and iron law 2 forbids that per request; this kernel has no kTLS (`tls` is
//! not in tcp_available_ulp), so the record layer is ours: RFC 8446 §5 for TLS 1.3, RFC 5288
//! (AES-GCM) and RFC 7905 (ChaCha20-Poly1305) for TLS 1.2.
//!
//! To the connection this is a socket that reads and writes plaintext: `read` fills a `Buf` with
//! decrypted bytes, `write` takes plaintext from one. A plaintext byte counts as written only
//! when its record has left for the socket, so "cout is empty" still means "all sent".

use std::io;
use std::sync::Arc;

use mio::net::TcpStream;
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, ServerConfig};

use crate::buf::{Buf, BufPool};
use crate::io::{Filled, Io, fill, flush};
use crate::limits::{TLS_BUF_BYTES, TLS_RECORD_PLAIN_MAX};

pub type TlsBuf = Buf<TLS_BUF_BYTES>;
pub type TlsBufPool = BufPool<TLS_BUF_BYTES>;

const HEADER: usize = 5;
const TAG: usize = 16;
/// RFC 8446 §5.2: a TLSCiphertext fragment is at most 2^14 + 256 bytes; RFC 5246 §6.2.3 allows
/// 2^14 + 2048 in TLS 1.2.
const CIPHERTEXT_MAX: usize = (1 << 14) + 2048;
const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
const CT_APPDATA: u8 = 23;
const HS_KEY_UPDATE: u8 = 24;
const HS_NEW_SESSION_TICKET: u8 = 4;
/// Records we seal with one key: AES-GCM's limit is 2^24.5 (RFC 8446 §5.5); this stays well
/// under it for every suite. TLS 1.3 then moves to a new key (our own KeyUpdate); TLS 1.2 has
/// none, so the connection closes (after 2^23 records, at least 128 GiB). What the peer seals
/// is its own limit to keep: a forged record fails its tag whatever the count.
const RECORDS_PER_KEY_MAX: u64 = 1 << 23;
/// Records in a row that carry no application data: empty data records, KeyUpdates, tickets
/// (OpenSSL allows 32 empty records; rustls and BoringSSL 32 KeyUpdates). Each costs an AEAD
/// open (a KeyUpdate a key derivation too) and returns nothing to the reader, so a flood of
/// them would hold the worker for as long as it lasts.
const IDLE_RECORDS_IN_A_ROW_MAX: u8 = 32;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    Tls12Gcm,
    Tls12Chacha,
    Tls13,
}

/// One direction's key, fixed IV and sequence number.
struct Dir {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Dir {
    fn new(seq: u64, s: ConnectionTrafficSecrets) -> io::Result<Dir> {
        let (alg, key, iv) = match &s {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err(bad("unsupported cipher suite")),
        };
        let key = UnboundKey::new(alg, key.as_ref()).map_err(|_| bad("bad traffic key"))?;
        let iv: [u8; 12] = iv.as_ref().try_into().map_err(|_| bad("bad traffic iv"))?;
        Ok(Dir { key: LessSafeKey::new(key), iv, seq })
    }

    /// RFC 8446 §5.3 (and RFC 7905 §2, rustls's TLS 1.2 GCM): the IV XOR the sequence number.
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n.iter_mut().skip(4).zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn next(&mut self) -> io::Result<()> {
        self.seq = self.seq.checked_add(1).ok_or_else(|| bad("sequence number wrapped"))?;
        Ok(())
    }
}

/// What rustls keeps after the handshake: it computes next traffic secrets (KeyUpdate) and,
/// as a client, stores the session tickets a server sends.
enum Kernel {
    Server(KernelConnection<ServerConnectionData>),
    Client(KernelConnection<ClientConnectionData>),
}

impl Kernel {
    fn version(&self) -> ProtocolVersion {
        match self {
            Kernel::Server(k) => k.protocol_version(),
            Kernel::Client(k) => k.protocol_version(),
        }
    }

    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Server(k) => k.update_rx_secret(),
            Kernel::Client(k) => k.update_rx_secret(),
        }
    }

    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Server(k) => k.update_tx_secret(),
            Kernel::Client(k) => k.update_tx_secret(),
        }
    }
}

enum Handshake {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

/// The record layer after the handshake.
struct Records {
    version: Version,
    tx: Dir,
    rx: Dir,
    kernel: Kernel,
    /// The peer asked for a KeyUpdate back: ours goes out before our next data record
    /// (RFC 8446 §4.6.3; several requests while we are silent get one answer).
    reply_pending: bool,
    /// Records received since the last application data (`IDLE_RECORDS_IN_A_ROW_MAX`).
    idle_records: u8,
}

enum Opened {
    /// Application data at `from..to` of the record (offsets within the buffer's filled bytes).
    Data { from: usize, to: usize },
    /// close_notify.
    Closed,
    /// A record that carried nothing for the application (a handled KeyUpdate).
    Nothing,
}

impl Records {
    fn new(kernel: Kernel, secrets: rustls::ExtractedSecrets) -> io::Result<Self> {
        let version = match (kernel.version(), &secrets.tx.1) {
            (ProtocolVersion::TLSv1_3, _) => Version::Tls13,
            (ProtocolVersion::TLSv1_2, ConnectionTrafficSecrets::Chacha20Poly1305 { .. }) => Version::Tls12Chacha,
            (ProtocolVersion::TLSv1_2, _) => Version::Tls12Gcm,
            _ => return Err(bad("unsupported protocol version")),
        };
        let (ts, tk) = secrets.tx;
        let (rs, rk) = secrets.rx;
        Ok(Records {
            version,
            tx: Dir::new(ts, tk)?,
            rx: Dir::new(rs, rk)?,
            kernel,
            reply_pending: false,
            idle_records: 0,
        })
    }

    /// The shortest valid protected record body: the tag, the explicit nonce (1.2 GCM), and
    /// the content type byte (1.3).
    fn min_len(&self) -> usize {
        TAG + match self.version {
            Version::Tls12Gcm => 8,
            Version::Tls12Chacha => 0,
            Version::Tls13 => 1,
        }
    }

    /// Plaintext bytes that fit in one record written into `room` bytes of buffer.
    fn plain_room(&self, room: usize) -> usize {
        let overhead = HEADER + TAG + if self.version == Version::Tls12Gcm { 8 } else { 0 } + 1;
        room.saturating_sub(overhead).min(TLS_RECORD_PLAIN_MAX)
    }

    /// Seals `plain` as one record of type `ct` at the start of `out`. Returns the record length.
    fn seal(&mut self, ct: u8, plain: &[u8], out: &mut [u8]) -> io::Result<usize> {
        let explicit = if self.version == Version::Tls12Gcm { 8 } else { 0 };
        let inner = plain.len() + usize::from(self.version == Version::Tls13);
        let body = explicit + inner + TAG;
        let total = HEADER + body;
        let rec = out.get_mut(..total).ok_or_else(|| bad("record does not fit"))?;
        let nonce = self.tx.nonce();
        // RFC 8446 §5.2: a TLS 1.3 record is application_data on the wire; the real type is the
        // last byte of the encrypted inner plaintext.
        let outer = if self.version == Version::Tls13 { CT_APPDATA } else { ct };
        let len = u16::try_from(body).map_err(|_| bad("record too long"))?;
        let [l0, l1] = len.to_be_bytes();
        let (head, rest) = rec.split_at_mut(HEADER);
        head.copy_from_slice(&[outer, 3, 3, l0, l1]);
        let (nonce_out, rest) = rest.split_at_mut(explicit);
        let (data, tag_out) = rest.split_at_mut(inner);
        let (p, typ) = data.split_at_mut(plain.len());
        p.copy_from_slice(plain);
        if let Some(t) = typ.first_mut() {
            *t = ct;
        }
        let aad_12;
        let aad: &[u8] = if self.version == Version::Tls13 {
            head
        } else {
            // RFC 5246 §6.2.3.3: seq_num + type + version + length of the plaintext.
            aad_12 = aad12(self.tx.seq, ct, plain.len());
            &aad_12
        };
        if let Some(e) = nonce.get(4..) {
            nonce_out.copy_from_slice(e.get(..explicit).unwrap_or(&[]));
        }
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), data)
            .map_err(|_| bad("seal failed"))?;
        tag_out.copy_from_slice(tag.as_ref());
        self.tx.next()?;
        if self.tx.seq >= RECORDS_PER_KEY_MAX {
            if self.version != Version::Tls13 {
                return Err(bad("record limit for this key reached"));
            }
            self.reply_pending = true; // a KeyUpdate of ours, before any further data
        }
        Ok(total)
    }

    /// Opens the record at the start of `buf` (whole: the caller checked its length).
    fn open(&mut self, rec: &mut [u8]) -> io::Result<Opened> {
        let (head, body) = rec.split_at_mut(HEADER);
        let outer = head.first().copied().unwrap_or(0);
        let (nonce, aad_buf, sealed, skip);
        match self.version {
            Version::Tls13 => {
                // RFC 8446 §5.1-5.2: after the handshake only application_data records.
                if outer != CT_APPDATA {
                    return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "unexpected record type"));
                }
                nonce = self.rx.nonce();
                aad_buf = [0u8; 13];
                sealed = body;
                skip = 0;
            }
            Version::Tls12Gcm | Version::Tls12Chacha => {
                let explicit = if self.version == Version::Tls12Gcm { 8 } else { 0 };
                let plain_len =
                    body.len().checked_sub(explicit + TAG).ok_or_else(|| fatal(ALERT_DECODE_ERROR, "short record"))?;
                let mut n = if explicit > 0 { self.rx.iv } else { self.rx.nonce() };
                if explicit > 0 {
                    // RFC 5288 §3: salt from the key block, then the record's explicit nonce.
                    if let (Some(d), Some(s)) = (n.get_mut(4..), body.get(..8)) {
                        d.copy_from_slice(s);
                    }
                }
                nonce = n;
                aad_buf = aad12(self.rx.seq, outer, plain_len);
                sealed = body.get_mut(explicit..).unwrap_or(&mut []);
                skip = explicit;
            }
        }
        let aad: &[u8] = if self.version == Version::Tls13 { head } else { &aad_buf };
        let plain = self
            .rx
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), sealed)
            .map_err(|_| fatal(ALERT_BAD_RECORD_MAC, "bad record mac"))?;
        self.rx.next()?;
        let (ct, len) = if self.version == Version::Tls13 {
            // RFC 8446 §5.4: TLSInnerPlaintext (content, type, padding) is at most 2^14 + 1 bytes.
            if plain.len() > TLS_RECORD_PLAIN_MAX + 1 {
                return Err(fatal(ALERT_RECORD_OVERFLOW, "record_overflow"));
            }
            // RFC 8446 §5.4: strip the zero padding; the last non-zero byte is the type.
            let Some(i) = plain.iter().rposition(|&b| b != 0) else {
                return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "record without a content type"));
            };
            (plain.get(i).copied().unwrap_or(0), i)
        } else {
            (outer, plain.len())
        };
        if len > TLS_RECORD_PLAIN_MAX {
            return Err(fatal(ALERT_RECORD_OVERFLOW, "record_overflow")); // RFC 8446 §5.4, RFC 5246 §6.2.3
        }
        let from = HEADER + skip;
        match ct {
            CT_APPDATA => {
                if len > 0 {
                    self.idle_records = 0;
                } else {
                    self.count_idle_record()?;
                }
                Ok(Opened::Data { from, to: from + len })
            }
            CT_ALERT => {
                // RFC 8446 §6.1 / RFC 5246 §7.2.1: close_notify is (1, 0); anything else ends it.
                // In 1.3 the level "can safely be ignored" (RFC 8446 §6): (2, 0) is one too.
                let close = match plain.get(..len) {
                    Some(&[1, 0]) => true,
                    Some(&[_, 0]) => self.version == Version::Tls13,
                    _ => false,
                };
                if close { Ok(Opened::Closed) } else { Err(bad("alert from the client")) }
            }
            CT_HANDSHAKE if self.version == Version::Tls13 => {
                // RFC 8446 §5.1: handshake records are never empty.
                let msgs = plain
                    .get(..len)
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| fatal(ALERT_UNEXPECTED_MESSAGE, "empty handshake record"))?;
                self.count_idle_record()?;
                self.post_handshake(msgs).map(|()| Opened::Nothing)
            }
            // TLS 1.2 renegotiation and anything else: refused by closing.
            _ => Err(fatal(ALERT_UNEXPECTED_MESSAGE, "unexpected record")),
        }
    }

    /// One more record in a row without application data; too many end the connection.
    fn count_idle_record(&mut self) -> io::Result<()> {
        self.idle_records = self.idle_records.saturating_add(1);
        if self.idle_records > IDLE_RECORDS_IN_A_ROW_MAX {
            return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "too many records without data"));
        }
        Ok(())
    }

    /// TLS 1.3 handshake messages after the handshake, whole within their record (a message
    /// split over records is refused). RFC 8446 §4.6.1: a server's NewSessionTicket (kept by
    /// rustls for resumption); §4.6.3: a KeyUpdate, which must end its record (§5.1).
    fn post_handshake(&mut self, mut msgs: &[u8]) -> io::Result<()> {
        while let &[typ, a, b, c, ref rest @ ..] = msgs {
            let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
            let (body, after) =
                rest.split_at_checked(len).ok_or_else(|| fatal(ALERT_UNEXPECTED_MESSAGE, "split handshake message"))?;
            match (typ, &mut self.kernel) {
                (HS_KEY_UPDATE, _) if after.is_empty() => return self.key_update(body),
                (HS_NEW_SESSION_TICKET, Kernel::Client(k)) => {
                    k.handle_new_session_ticket(body).map_err(|_| fatal(ALERT_DECODE_ERROR, "bad session ticket"))?
                }
                _ => return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "unexpected post-handshake message")),
            }
            msgs = after;
        }
        if msgs.is_empty() { Ok(()) } else { Err(fatal(ALERT_UNEXPECTED_MESSAGE, "split handshake message")) }
    }

    /// RFC 8446 §4.6.3: a KeyUpdate. The receive key moves on; if the peer asks for it, ours
    /// is owed (`reply`).
    fn key_update(&mut self, body: &[u8]) -> io::Result<()> {
        let &[req] = body else {
            return Err(fatal(ALERT_DECODE_ERROR, "bad key update"));
        };
        if req > 1 {
            return Err(fatal(ALERT_ILLEGAL_PARAMETER, "bad key update")); // RFC 8446 §4.6.3
        }
        let (seq, s) = self.kernel.next_rx().map_err(|_| bad("key update failed"))?;
        self.rx = Dir::new(seq, s)?;
        self.reply_pending |= req == 1;
        Ok(())
    }

    /// Seals the KeyUpdate we owe, under the old key, then moves the send key on. Returns
    /// false if `out` has no room for it yet (then no data record may be sealed either).
    fn reply(&mut self, out: &mut TlsBuf) -> io::Result<bool> {
        if !self.reply_pending {
            return Ok(true);
        }
        const KEY_UPDATE: [u8; 5] = [HS_KEY_UPDATE, 0, 0, 1, 0];
        if self.plain_room(out.spare_len()) < KEY_UPDATE.len() {
            return Ok(false);
        }
        let n = self.seal(CT_HANDSHAKE, &KEY_UPDATE, out.spare())?;
        out.commit(n);
        let (seq, s) = self.kernel.next_tx().map_err(|_| bad("key update failed"))?;
        self.tx = Dir::new(seq, s)?;
        self.reply_pending = false;
        Ok(true)
    }
}

fn aad12(seq: u64, ct: u8, len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    let [l0, l1] = (len as u16).to_be_bytes();
    for (d, s) in a.iter_mut().zip(seq.to_be_bytes().into_iter().chain([ct, 3, 3, l0, l1])) {
        *d = s;
    }
    a
}

/// One side's handshake connection, as `drive` needs it.
trait HsConn {
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
fn drive<C: HsConn>(
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
                let rest = rin.filled().get(*fed..).unwrap_or(&[]);
                if rest.len() >= HEADER && record_need(rest) - HEADER > CIPHERTEXT_MAX {
                    *fed += rest.len();
                    continue;
                }
                send(sock, io, rout, spill)?;
                rin.reserve(record_need(rin.filled().get(*fed..).unwrap_or(&[])) + *fed);
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
fn send(sock: &TcpStream, io: &mut Io, rout: &mut TlsBuf, spill: &mut Vec<u8>) -> io::Result<bool> {
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
    let n = e.encode(spill.get_mut(start..).unwrap_or(&mut [])).map_err(|_| bad("tls encode"))?;
    spill.truncate(start + n);
    Ok(())
}

/// The bytes of `rin` rustls has been given (and not discarded).
fn fed_slice(rin: &mut TlsBuf, fed: usize) -> &mut [u8] {
    let b = rin.filled_mut();
    let n = fed.min(b.len());
    b.get_mut(..n).unwrap_or(&mut [])
}

/// Applies rustls's discard to `rin` and to what it has been given.
fn consume_fed(rin: &mut TlsBuf, fed: &mut usize, discard: usize) {
    rin.consume(discard);
    *fed = fed.saturating_sub(discard);
}

/// The length of the whole record at the front of `b`, if it is all there.
fn whole_record(b: &[u8]) -> Option<usize> {
    let need = record_need(b);
    (b.len() >= HEADER && b.len() >= need).then_some(need)
}

/// What the handshake loop does after a state is handled.
enum Hs {
    Go,
    Flush,
    Read,
    Eof,
    Done,
}

/// Bytes the record at the front of `b` needs in all (its header's length + 5), or 5 while the
/// header is incomplete.
fn record_need(b: &[u8]) -> usize {
    match b.get(..HEADER) {
        Some(&[_, _, _, l0, l1]) => HEADER + usize::from(u16::from_be_bytes([l0, l1])),
        _ => HEADER,
    }
}

fn bad(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Alert descriptions (RFC 8446 §6.2).
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_ILLEGAL_PARAMETER: u8 = 47;
const ALERT_DECODE_ERROR: u8 = 50;

/// What the peer sent that ends the connection after the handshake, and the fatal alert that
/// tells it so (RFC 8446 §5.2, §6.2): sent before the close, not a bare close.
#[derive(Debug)]
struct Fatal {
    alert: u8,
    what: &'static str,
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.what)
    }
}

impl std::error::Error for Fatal {}

fn fatal(alert: u8, what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Fatal { alert, what })
}

/// One connection's TLS state: a client's (we are the server) or an upstream's (we are the
/// client).
pub struct Tls {
    hs: Option<Handshake>,
    rec: Option<Records>,
    /// Bytes from the socket, not yet opened.
    rin: Option<TlsBuf>,
    /// Records (handshake or sealed data) not yet written to the socket.
    rout: Option<TlsBuf>,
    /// Plaintext of the opened record at the front of `rin` not yet handed out:
    /// `rin.filled()[from..to]`, and the record's length.
    plain: (u32, u32, u32),
    /// Handshake records after those in `rout` that did not fit in it (empty: no allocation).
    spill: Vec<u8>,
    /// During the handshake: the bytes at the front of `rin` rustls has been given.
    fed: usize,
    /// Bytes at the front of the caller's plaintext buffer already sealed into `rout`.
    ahead: u32,
    eof: bool,
    /// The peer's close_notify came (else an end of stream is a bare TCP close).
    notified_by_peer: bool,
    /// The handshake failed and an alert went out: what the client still sends is discarded.
    failed: bool,
    /// A record failed (bad tag, bad length, ...): RFC 8446 §5.2, the connection is over, and
    /// nothing more is sent on it.
    broken: bool,
    /// Our close_notify is sealed: nothing may follow it.
    notified: bool,
}

impl Tls {
    pub fn server(cfg: Arc<ServerConfig>) -> io::Result<Tls> {
        let hs = UnbufferedServerConnection::new(cfg).map_err(|_| bad("tls setup"))?;
        Ok(Tls::with(Handshake::Server(hs)))
    }

    pub fn client(cfg: Arc<rustls::ClientConfig>, name: rustls::pki_types::ServerName<'static>) -> io::Result<Tls> {
        let hs = UnbufferedClientConnection::new(cfg, name).map_err(|_| bad("tls setup"))?;
        Ok(Tls::with(Handshake::Client(hs)))
    }

    fn with(hs: Handshake) -> Tls {
        Tls {
            hs: Some(hs),
            rec: None,
            rin: None,
            rout: None,
            plain: (0, 0, 0),
            spill: Vec::new(),
            fed: 0,
            ahead: 0,
            eof: false,
            notified_by_peer: false,
            failed: false,
            broken: false,
            notified: false,
        }
    }

    /// The handshake failed and the client was told why: close gracefully (linger) so the
    /// alert is read, not lost to a reset.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The peer ended its stream with close_notify (RFC 8446 §6.1), not a bare TCP close.
    pub fn closed_cleanly(&self) -> bool {
        self.notified_by_peer
    }

    /// Bytes from the peer not handed out yet: an opened record's plaintext, or records not
    /// yet opened. A pooled connection holding any would hand them to the next exchange as
    /// its response.
    pub fn has_unread(&self) -> bool {
        self.plain.0 < self.plain.1 || self.rin.as_ref().is_some_and(|b| !b.is_empty())
    }

    /// Gives both record buffers back (the connection is closing).
    pub fn release_all(&mut self, pool: &mut TlsBufPool) {
        pool.release(&mut self.rin);
        pool.release(&mut self.rout);
    }

    /// Puts decrypted bytes into `dst`, reading the socket as needed; drives the handshake first.
    pub fn read<const N: usize>(
        &mut self,
        sock: &TcpStream,
        io: &mut Io,
        pool: &mut TlsBufPool,
        dst: &mut Buf<N>,
    ) -> io::Result<Filled> {
        if self.failed {
            // Lingering after an alert: read and drop.
            let rin = pool.fill_slot(&mut self.rin);
            rin.clear();
            let r = fill(sock, io, rin);
            rin.clear();
            return r;
        }
        if self.broken {
            return Err(bad("tls connection failed"));
        }
        let r = self.read_inner(sock, io, pool, dst);
        if let Err(e) = &r
            && !self.broken
        {
            self.alert(e, sock, io, pool);
        }
        self.broken |= r.is_err();
        r
    }

    /// Sends the fatal alert for what the peer sent after the handshake, if it calls for one
    /// (RFC 8446 §6.2): the last record Apex seals on this connection.
    fn alert(&mut self, e: &io::Error, sock: &TcpStream, io: &mut Io, pool: &mut TlsBufPool) {
        if let Some(f) = e.get_ref().and_then(|x| x.downcast_ref::<Fatal>()) {
            self.send_alert([2, f.alert], sock, io, pool);
        }
    }

    fn read_inner<const N: usize>(
        &mut self,
        sock: &TcpStream,
        io: &mut Io,
        pool: &mut TlsBufPool,
        dst: &mut Buf<N>,
    ) -> io::Result<Filled> {
        loop {
            let (from, to, end) = self.plain;
            if from < to {
                let rin = self.rin.as_mut().ok_or_else(|| bad("tls state"))?;
                let src = rin.filled().get(from as usize..to as usize).unwrap_or(&[]);
                let spare = dst.spare();
                let n = src.len().min(spare.len());
                if n == 0 {
                    return Ok(Filled::Idle);
                }
                if let (Some(d), Some(s)) = (spare.get_mut(..n), src.get(..n)) {
                    d.copy_from_slice(s);
                }
                dst.commit(n);
                self.plain.0 += n as u32;
                if self.plain.0 == to {
                    rin.consume(end as usize);
                    self.plain = (0, 0, 0);
                }
                return Ok(Filled::Data(n));
            }
            if self.eof {
                return Ok(Filled::Eof);
            }
            if self.hs.is_some() {
                if !self.handshake(sock, io, pool)? {
                    return Ok(Filled::Idle);
                }
                continue;
            }
            if self.open_one(sock, io, pool)? {
                continue;
            }
            let rin = pool.fill_slot(&mut self.rin);
            rin.reserve(record_need(rin.filled()));
            match fill(sock, io, rin)? {
                Filled::Data(_) => {}
                Filled::Idle => {
                    pool.release_if_empty(&mut self.rin);
                    return Ok(Filled::Idle);
                }
                // A TCP close without close_notify: HTTP framing decides whether that truncated
                // anything (RFC 8446 §6.1 leaves it to the application).
                Filled::Eof => {
                    self.eof = true;
                    return Ok(Filled::Eof);
                }
            }
        }
    }

    /// Opens the next whole record in `rin`, if there is one. Returns whether it made progress.
    fn open_one(&mut self, sock: &TcpStream, io: &mut Io, pool: &mut TlsBufPool) -> io::Result<bool> {
        let (Some(rec), Some(rin)) = (self.rec.as_mut(), self.rin.as_mut()) else {
            return Ok(false);
        };
        if rin.len() < HEADER {
            return Ok(false);
        }
        let need = record_need(rin.filled());
        // RFC 8446 §5.2: at most 2^14 + 256 bytes in TLS 1.3 (RFC 5246 §6.2.3: 2^14 + 2048 in
        // 1.2), else record_overflow; and never shorter than its tag (and explicit nonce),
        // which also rules out a zero length that would never be consumed.
        let max = if rec.version == Version::Tls13 { (1 << 14) + 256 } else { CIPHERTEXT_MAX };
        if need - HEADER > max {
            return Err(fatal(ALERT_RECORD_OVERFLOW, "record too long"));
        }
        if need - HEADER < rec.min_len() {
            return Err(fatal(ALERT_DECODE_ERROR, "record too short"));
        }
        if rin.len() < need {
            return Ok(false);
        }
        let rout = pool.fill_slot(&mut self.rout);
        let whole = rin.filled_mut().get_mut(..need).ok_or_else(|| bad("tls state"))?;
        let opened = rec.open(whole)?;
        rec.reply(rout)?; // if there is no room now, `write` sends it before any data
        match opened {
            Opened::Data { from, to } if from < to => self.plain = (from as u32, to as u32, need as u32),
            Opened::Data { .. } | Opened::Nothing => rin.consume(need),
            Opened::Closed => {
                rin.consume(need);
                self.eof = true;
                self.notified_by_peer = true;
            }
        }
        self.flush(sock, io, pool)?;
        Ok(true)
    }

    /// Drives the handshake as far as the bytes at hand allow. Returns false when it waits for
    /// the socket.
    fn handshake(&mut self, sock: &TcpStream, io: &mut Io, pool: &mut TlsBufPool) -> io::Result<bool> {
        let rin = pool.fill_slot(&mut self.rin);
        let rout = pool.fill_slot(&mut self.rout);
        let step = match self.hs.as_mut() {
            None => return Ok(true),
            Some(Handshake::Server(hs)) => {
                drive(hs, sock, io, rin, rout, &mut self.spill, &mut self.fed, &mut self.failed)
            }
            Some(Handshake::Client(hs)) => {
                drive(hs, sock, io, rin, rout, &mut self.spill, &mut self.fed, &mut self.failed)
            }
        };
        match step? {
            Hs::Eof => {
                self.eof = true;
                Ok(true)
            }
            Hs::Done => {
                let (secrets, kernel) = match self.hs.take() {
                    Some(Handshake::Server(hs)) => {
                        hs.dangerous_into_kernel_connection().map(|(s, k)| (s, Kernel::Server(k)))
                    }
                    Some(Handshake::Client(hs)) => {
                        hs.dangerous_into_kernel_connection().map(|(s, k)| (s, Kernel::Client(k)))
                    }
                    None => return Ok(true),
                }
                .map_err(|_| bad("tls secrets"))?;
                self.rec = Some(Records::new(kernel, secrets)?);
                self.flush(sock, io, pool)?;
                pool.release_if_empty(&mut self.rin);
                Ok(true)
            }
            _ => {
                // Waiting: an empty buffer goes back (a client that sends nothing holds none).
                pool.release_if_empty(&mut self.rin);
                pool.release_if_empty(&mut self.rout);
                Ok(false)
            }
        }
    }

    /// Seals plaintext from the front of `src` and writes records to the socket. Bytes leave
    /// `src` only when their records have all been written. Returns plaintext bytes consumed.
    pub fn write<const N: usize>(
        &mut self,
        sock: &TcpStream,
        io: &mut Io,
        pool: &mut TlsBufPool,
        src: &mut Buf<N>,
    ) -> io::Result<usize> {
        if self.broken || (self.notified && !src.is_empty()) {
            return Err(bad("tls connection closed"));
        }
        let mut consumed = 0;
        loop {
            if !self.flush(sock, io, pool)? {
                return Ok(consumed);
            }
            // `ahead` belongs to the buffer it was sealed from: another caller's (an empty
            // cout flushed before a tunnel's uin) must not clear it.
            let ahead = (self.ahead as usize).min(src.len());
            src.consume(ahead);
            consumed += ahead;
            self.ahead -= ahead as u32;
            // Nothing can be sealed before the handshake is over (`read` drives it for a
            // client of ours, `connect` for an upstream).
            let Some(rec) = self.rec.as_mut() else { return Ok(consumed) };
            if src.is_empty() || !io.writable {
                pool.release_if_empty(&mut self.rout);
                return Ok(consumed);
            }
            let out = pool.fill_slot(&mut self.rout);
            let mut sealed = 0;
            loop {
                // A KeyUpdate owed (asked for, or our key's record limit) goes before any data.
                if !rec.reply(out)? {
                    break;
                }
                let rest = src.filled().get(sealed..).unwrap_or(&[]);
                let spare = out.spare();
                let n = rest.len().min(rec.plain_room(spare.len()));
                if n == 0 {
                    break;
                }
                let w = rec.seal(CT_APPDATA, rest.get(..n).unwrap_or(&[]), spare)?;
                out.commit(w);
                sealed += n;
            }
            self.ahead = sealed as u32;
        }
    }

    /// As a client: drives the handshake. Returns whether it is done (false: waiting).
    pub fn connect(&mut self, sock: &TcpStream, io: &mut Io, pool: &mut TlsBufPool) -> io::Result<bool> {
        if self.hs.is_some() {
            self.handshake(sock, io, pool)?;
        }
        if self.eof {
            return Err(bad("closed during the handshake"));
        }
        Ok(self.rec.is_some())
    }

    /// RFC 8446 §6.1: close_notify before our side closes, so the peer can tell a complete
    /// close-delimited body or tunnel from a truncated one. Best effort: sent if there is room.
    pub fn close_notify(&mut self, sock: &TcpStream, io: &mut Io, pool: &mut TlsBufPool) {
        self.send_alert([1, 0], sock, io, pool);
    }

    /// Seals `alert` (level, description) as the last record Apex sends on this connection,
    /// after any KeyUpdate it owes, and writes what is queued.
    fn send_alert(&mut self, alert: [u8; 2], sock: &TcpStream, io: &mut Io, pool: &mut TlsBufPool) {
        let Some(rec) = self.rec.as_mut() else { return };
        if self.notified || self.broken {
            return;
        }
        let out = pool.fill_slot(&mut self.rout);
        if rec.reply(out).unwrap_or(false)
            && rec.plain_room(out.spare_len()) >= 2
            && let Ok(n) = rec.seal(CT_ALERT, &alert, out.spare())
        {
            out.commit(n);
            self.notified = true;
        }
        let _ = self.flush(sock, io, pool);
    }

    /// Writes records already sealed (handshake, a KeyUpdate reply, an alert), in order.
    /// Returns whether all are out.
    pub fn flush(&mut self, sock: &TcpStream, io: &mut Io, pool: &mut TlsBufPool) -> io::Result<bool> {
        let done = match self.rout.as_mut() {
            Some(out) => send(sock, io, out, &mut self.spill)?,
            None if self.spill.is_empty() => true,
            None => send(sock, io, pool.fill_slot(&mut self.rout), &mut self.spill)?,
        };
        pool.release_if_empty(&mut self.rout);
        Ok(done)
    }
}

// ---- configuration ---------------------------------------------------------------------------

/// One `[[tls.cert]]`: a chain, its key, and the SNI names it serves.
#[derive(Debug, Clone)]
pub struct CertSpec {
    pub chain: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub names: Vec<String>,
}

/// Picks a certificate by SNI: exact names, then one-label wildcards (`*.example.com`), then the
/// first certificate, unless `strict` (then an unknown or absent name fails the handshake).
#[derive(Debug)]
struct Sni {
    /// Lowercase names; a wildcard is stored as its suffix with the dot (`.example.com`).
    exact: Vec<(Box<str>, usize)>,
    wild: Vec<(Box<str>, usize)>,
    keys: Vec<Arc<rustls::sign::CertifiedKey>>,
    strict: bool,
}

impl rustls::server::ResolvesServerCert for Sni {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let found = hello.server_name().and_then(|n| {
            let exact = self.exact.iter().find(|(e, _)| e.eq_ignore_ascii_case(n));
            let wild = || {
                let dot = n.find('.')?;
                let suffix = n.get(dot..)?;
                self.wild.iter().find(|(w, _)| w.eq_ignore_ascii_case(suffix))
            };
            exact.or_else(wild).map(|&(_, i)| i)
        });
        let i = match found {
            Some(i) => i,
            None if self.strict => return None,
            None => 0,
        };
        self.keys.get(i).cloned()
    }
}

/// Loads every certificate and key and builds the rustls server config. An error names the
/// entry (its index in `certs`) and the file.
pub fn server_config(certs: &[CertSpec], strict_sni: bool) -> Result<Arc<ServerConfig>, (usize, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sni = Sni { exact: Vec::new(), wild: Vec::new(), keys: Vec::new(), strict: strict_sni };
    for (i, c) in certs.iter().enumerate() {
        let chain_name = c.chain.display();
        let key_name = c.key.display();
        std::fs::metadata(&c.chain).map_err(|e| (i, format!("chain {chain_name}: {e}")))?;
        std::fs::metadata(&c.key).map_err(|e| (i, format!("key {key_name}: {e}")))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.chain)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| (i, format!("chain {chain_name}: not a PEM certificate chain ({e})")))?;
        let Some(leaf) = chain.first() else {
            return Err((i, format!("chain {chain_name}: no certificate in it")));
        };
        if let Some(end) = not_after(leaf)
            && end < now_utc()
        {
            return Err((i, format!("chain {chain_name}: the certificate expired on {}", show_time(end))));
        }
        let key = PrivateKeyDer::from_pem_file(&c.key)
            .map_err(|e| (i, format!("key {key_name}: not a PEM private key ({e})")))?;
        let ck = rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            let why = match e {
                rustls::Error::InconsistentKeys(_) => "does not match the certificate".to_string(),
                e => format!("unusable ({e})"),
            };
            (i, format!("key {key_name} {why} in {chain_name}"))
        })?;
        let ck = Arc::new(ck);
        for n in &c.names {
            let lower = n.to_ascii_lowercase();
            // webpki checks the name against the certificate; a wildcard is checked with a
            // name it must cover.
            let probe = match lower.strip_prefix("*.") {
                Some(rest) => format!("apex-wildcard-probe.{rest}"),
                None => lower.clone(),
            };
            let mut check = rustls::server::ResolvesServerCertUsingSni::new();
            if check.add(&probe, rustls::sign::CertifiedKey::clone(&ck)).is_err() {
                return Err((i, format!("chain {chain_name}: the certificate does not cover the name {n:?}")));
            }
            match lower.strip_prefix('*') {
                Some(suffix) => sni.wild.push((suffix.into(), sni.keys.len())),
                None => sni.exact.push((lower.into(), sni.keys.len())),
            }
        }
        sni.keys.push(ck);
    }
    if sni.keys.is_empty() {
        return Err((0, "tls: give at least one [[tls.cert]]".into()));
    }
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| (0, format!("tls: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(sni));
    // RFC 7301: HTTP/1.x only (http/1.0 for clients that offer only it, as curl --http1.0
    // does); a client offering only other protocols (h2) is refused.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    // The record layer after the handshake is ours (see the module comment).
    cfg.enable_secret_extraction = true;
    cfg.ticketer = ticketer().map_err(|e| (0, format!("tls: session tickets: {e}")))?;
    Ok(Arc::new(cfg))
}

/// A group's TLS to its servers, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsSpec {
    /// SNI and the name the certificate must match; None: the server's IP address, no SNI.
    pub server_name: Option<String>,
    /// Roots to trust instead of the system's.
    pub ca: Option<std::path::PathBuf>,
}

/// How to speak TLS to one upstream server.
#[derive(Debug)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

impl UpstreamTls {
    pub fn new(config: Arc<rustls::ClientConfig>, spec: &UpstreamTlsSpec, addr: std::net::SocketAddr) -> Self {
        use rustls::pki_types::{DnsName, ServerName};
        // Checked when the config was read; an IP address is the fallback either way.
        let name = match spec.server_name.as_deref().map(|n| DnsName::try_from(n.to_string())) {
            Some(Ok(n)) => ServerName::DnsName(n),
            _ => ServerName::IpAddress(addr.ip().into()),
        };
        UpstreamTls { config, name }
    }
}

/// The system's roots: Debian/Ubuntu, then RHEL/Fedora, then Alpine/BSD locations.
const SYSTEM_ROOTS: [&str; 3] =
    ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// A TLS client config for upstreams: TLS 1.2 and 1.3, ALPN http/1.1, the chain and name
/// verified by webpki against `ca` (a PEM bundle) or the system's roots.
pub fn client_config(ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = match ca {
        Some(p) => p.to_path_buf(),
        None => SYSTEM_ROOTS
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| format!("tls: no system roots (looked for {}); give tls_ca", SYSTEM_ROOTS.join(", ")))?,
    };
    let shown = path.display();
    std::fs::metadata(&path).map_err(|e| format!("tls_ca {shown}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("tls_ca {shown}: not PEM certificates ({e})"))?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("tls_ca {shown}: no usable certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.enable_secret_extraction = true;
    Ok(Arc::new(cfg))
}

/// One ticket key rotator for the process: tickets issued before a reload still resume after
/// it, and every worker can open every ticket.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    static TICKETER: std::sync::OnceLock<Arc<dyn rustls::server::ProducesTickets>> = std::sync::OnceLock::new();
    if let Some(t) = TICKETER.get() {
        return Ok(Arc::clone(t));
    }
    let t = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::clone(TICKETER.get_or_init(|| t)))
}

/// Seconds since the Unix epoch, now.
fn now_utc() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn show_time(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let (y, m, d) = crate::time::civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// One DER element at the front of `b`: (tag, contents, rest).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l0, mut b) = b.split_first()?;
    let len = if l0 < 0x80 {
        usize::from(l0)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (lb, rest) = b.split_at_checked(n)?;
        b = rest;
        lb.iter().fold(0usize, |a, &x| (a << 8) | usize::from(x))
    };
    let (body, rest) = b.split_at_checked(len)?;
    Some((tag, body, rest))
}

/// The certificate's notAfter (RFC 5280 §4.1.2.5), in seconds since the epoch.
fn not_after(cert: &[u8]) -> Option<i64> {
    let (_, c, _) = der(cert)?; // Certificate
    let (_, tbs, _) = der(c)?; // TBSCertificate
    let (tag, _, mut rest) = der(tbs)?;
    if tag == 0xa0 {
        rest = der(rest)?.2; // [0] version, then the serial number
    }
    let rest = der(rest)?.2; // signature algorithm
    let rest = der(rest)?.2; // issuer
    let (_, validity, _) = der(rest)?;
    let (_, _, after) = der(validity)?; // notBefore
    let (tag, t, _) = der(after)?;
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |a, &c| c.is_ascii_digit().then(|| a * 10 + i64::from(c - b'0')))
    };
    // UTCTime YYMMDDHHMMSSZ (years 1950-2049) or GeneralizedTime YYYYMMDDHHMMSSZ.
    let (y, rest) = match tag {
        0x17 => {
            let yy = digits(t.get(..2)?)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, t.get(2..)?)
        }
        0x18 => (digits(t.get(..4)?)?, t.get(4..)?),
        _ => return None,
    };
    let f = |i: usize| digits(rest.get(i..i + 2)?);
    let days = crate::time::days_from_civil(y, f(0)?, f(2)?);
    Some(days * 86_400 + f(4)? * 3600 + f(6)? * 60 + f(8)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_dates_show() {
        assert_eq!(show_time(1_798_761_600), "2027-01-01");
    }

    #[test]
    fn der_reader_refuses_truncation() {
        assert!(der(&[0x30, 0x05, 1, 2]).is_none());
        assert!(der(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert_eq!(der(&[0x02, 0x01, 7, 9]), Some((0x02, &[7u8][..], &[9u8][..])));
        assert!(not_after(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_none());
    }
}
