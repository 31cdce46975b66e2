//! The record layer after the handshake (RFC 8446 §5 for TLS 1.3; RFC 5246 §6.2, RFC 5288
//! AES-GCM and RFC 7905 ChaCha20-Poly1305 for TLS 1.2): records sealed and opened in place in
//! the caller's buffer with ring's AEAD, the KeyUpdate (RFC 8446 §4.6.3) and post-handshake
//! messages, and the fatal alerts that name what the peer got wrong (`Fatal`).
//!
//! Invariants: a sequence number never wraps (the connection ends first); a key seals at most
//! `RECORDS_PER_KEY_MAX` records; a KeyUpdate we owe goes out before any further data record;
//! nothing here allocates (a handshake message split over records waits in a pooled record
//! buffer). Limits: such a message is at most `POST_HANDSHAKE_MSG_MAX` bytes; TLS 1.2
//! renegotiation is declined with a warning; more than `IDLE_RECORDS_IN_A_ROW_MAX` records
//! without data end the connection.

use std::io;

use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

use super::{TlsBuf, TlsBufPool, bad, broken};
use crate::limits::{TLS_BUF_BYTES, TLS_RECORD_PLAIN_MAX};

pub(super) const HEADER: usize = 5;
const TAG: usize = 16;
/// RFC 8446 §5.2: a TLSCiphertext fragment is at most 2^14 + 256 bytes; RFC 5246 §6.2.3 allows
/// 2^14 + 2048 in TLS 1.2.
pub(super) const CIPHERTEXT_MAX: usize = (1 << 14) + 2048;
pub(super) const CT_CHANGE_CIPHER_SPEC: u8 = 20;
pub(super) const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
pub(super) const CT_APPDATA: u8 = 23;
/// RFC 6520's heartbeat, the highest content type rustls knows.
pub(super) const CT_HEARTBEAT: u8 = 24;
const HS_KEY_UPDATE: u8 = 24;
const HS_NEW_SESSION_TICKET: u8 = 4;
/// TLS 1.2 renegotiation (RFC 5246 §7.4.1): a server's HelloRequest, a client's ClientHello.
const HS_HELLO_REQUEST: u8 = 0;
const HS_CLIENT_HELLO: u8 = 1;
/// A handshake message's header: type, then a 24-bit length (RFC 8446 §4).
const HS_HEADER: usize = 4;
/// The longest handshake message taken after the handshake, split over records: what a record
/// buffer holds (rustls allows 64 KiB; a KeyUpdate is 5 bytes, and the tickets of common
/// servers are a few hundred bytes).
const POST_HANDSHAKE_MSG_MAX: usize = TLS_BUF_BYTES;
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
pub(super) enum Version {
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
pub(super) enum Kernel {
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

/// The record layer after the handshake.
pub(super) struct Records {
    pub(super) version: Version,
    tx: Dir,
    rx: Dir,
    kernel: Kernel,
    /// The peer asked for a KeyUpdate back: ours goes out before our next data record
    /// (RFC 8446 §4.6.3; several requests while we are silent get one answer).
    reply_pending: bool,
    /// Records received since the last application data (`IDLE_RECORDS_IN_A_ROW_MAX`).
    idle_records: u8,
    /// TLS 1.2: a renegotiation was asked for; our no_renegotiation warning goes out before
    /// our next data record (`reply`).
    decline_pending: bool,
}

pub(super) enum Opened {
    /// Application data at `from..to` of the record (offsets within the buffer's filled bytes).
    Data { from: usize, to: usize },
    /// close_notify.
    Closed,
    /// Handshake messages at `from..to` of the record, for `handshake_msgs`.
    Handshake { from: usize, to: usize },
}

impl Records {
    pub(super) fn new(kernel: Kernel, secrets: rustls::ExtractedSecrets) -> io::Result<Self> {
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
            decline_pending: false,
        })
    }

    /// We are the server (the peer is a client of ours).
    pub(super) fn is_server(&self) -> bool {
        matches!(self.kernel, Kernel::Server(_))
    }

    /// The shortest record body that can be opened at all: the tag, and the explicit nonce
    /// (TLS 1.2 GCM). (A TLS 1.3 record also needs its content type byte, which only opening
    /// it shows: a record of the tag alone is opened, then refused as having no type.)
    pub(super) fn sealed_min(&self) -> usize {
        TAG + if self.version == Version::Tls12Gcm { 8 } else { 0 }
    }

    /// Whether a record of this outer content type may come after the handshake: TLS 1.3
    /// protects every record as application_data (RFC 8446 §5.2; a change_cipher_spec after
    /// the peer's Finished "MUST be treated as an unexpected record type", §5); TLS 1.2 has
    /// alerts, handshake messages (renegotiation) and data (RFC 5246 §6.2.1), its one
    /// ChangeCipherSpec came before the Finished (§7.1).
    pub(super) fn expects(&self, outer: u8) -> bool {
        match self.version {
            Version::Tls13 => outer == CT_APPDATA,
            Version::Tls12Gcm | Version::Tls12Chacha => matches!(outer, CT_ALERT | CT_HANDSHAKE | CT_APPDATA),
        }
    }

    /// Plaintext bytes that fit in one record written into `room` bytes of buffer.
    pub(super) fn plain_room(&self, room: usize) -> usize {
        let overhead = HEADER + TAG + if self.version == Version::Tls12Gcm { 8 } else { 0 } + 1;
        room.saturating_sub(overhead).min(TLS_RECORD_PLAIN_MAX)
    }

    /// Seals `plain` as one record of type `ct` at the start of `out`. Returns the record length.
    pub(super) fn seal(&mut self, ct: u8, plain: &[u8], out: &mut [u8]) -> io::Result<usize> {
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
        // RFC 5288 §3: the explicit nonce is the nonce's last 8 bytes (`explicit` is 0 or 8, and
        // `nonce_out` that long). An empty fallback here would panic in `copy_from_slice`.
        let e = nonce.get(4..4 + explicit).ok_or_else(|| broken("explicit nonce longer than the nonce"))?;
        nonce_out.copy_from_slice(e);
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
    pub(super) fn open(&mut self, rec: &mut [u8]) -> io::Result<Opened> {
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
                // `open_one` checked the length (`sealed_min`).
                let plain_len = body
                    .len()
                    .checked_sub(explicit + TAG)
                    .ok_or_else(|| fatal(ALERT_BAD_RECORD_MAC, "record shorter than its tag"))?;
                let mut n = if explicit > 0 { self.rx.iv } else { self.rx.nonce() };
                if explicit > 0 {
                    // RFC 5288 §3: salt from the key block, then the record's explicit nonce.
                    // `body` holds at least `explicit + TAG` bytes (`plain_len` above).
                    let (Some(d), Some(s)) = (n.get_mut(4..), body.get(..8)) else {
                        return Err(broken("explicit nonce past the record"));
                    };
                    d.copy_from_slice(s);
                }
                nonce = n;
                aad_buf = aad12(self.rx.seq, outer, plain_len);
                sealed = body.get_mut(explicit..).ok_or_else(|| broken("explicit nonce past the record"))?;
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
                // RFC 8446 §5.1: an alert record holds exactly one alert (level, description).
                // §5.4: an empty one "MUST" get unexpected_message (RFC 5246 §6.2.1 forbids
                // them too); one of another length cannot be decoded (§6: decode_error).
                let alert = plain.get(..len).unwrap_or_default();
                let &[level, desc] = alert else {
                    return Err(if alert.is_empty() {
                        fatal(ALERT_UNEXPECTED_MESSAGE, "empty alert record")
                    } else {
                        fatal(ALERT_DECODE_ERROR, "malformed alert record")
                    });
                };
                // RFC 8446 §6.1 / RFC 5246 §7.2.1: close_notify is (1, 0). In 1.3 the level
                // "can safely be ignored" (RFC 8446 §6): (2, 0) is one too. Any other alert
                // ends the connection, with no alert of ours after it (§6.2).
                let close = desc == 0 && (level == 1 || self.version == Version::Tls13);
                if close { Ok(Opened::Closed) } else { Err(bad("alert from the peer")) }
            }
            CT_HANDSHAKE => {
                // RFC 8446 §5.1 (RFC 5246 §6.2.1): handshake records are never empty.
                if len == 0 {
                    return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "empty handshake record"));
                }
                self.count_idle_record()?;
                Ok(Opened::Handshake { from, to: from + len })
            }
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

    /// The handshake messages of one record after the handshake (`Opened::Handshake`). RFC
    /// 8446 §5.1: a message may be split over records, with no other record between the
    /// pieces (the caller checks that): one begun in earlier records is completed first from
    /// `part`, each whole one is handled, and one cut at this record's end is kept in `part`
    /// (a record buffer lent by `pool`, given back once the message is whole) for the next.
    /// Its header is checked as soon as it is here, so a message that may not come, or that
    /// could not fit, is refused before its body is waited for.
    pub(super) fn handshake_msgs(
        &mut self,
        mut msgs: &[u8],
        part: &mut Option<TlsBuf>,
        pool: &mut TlsBufPool,
    ) -> io::Result<()> {
        while let Some(buf) = part.as_mut() {
            let want = self.msg_bytes(buf.filled())?;
            if buf.len() < want {
                let (piece, rest) = msgs.split_at_checked((want - buf.len()).min(msgs.len())).unwrap_or((msgs, &[]));
                if piece.is_empty() {
                    return Ok(()); // the rest comes in the next record
                }
                if !buf.put(piece) {
                    return Err(broken("handshake message past its buffer")); // `msg_bytes` bounds it
                }
                msgs = rest;
                continue; // the header may just have come whole: `want` again
            }
            let whole = buf.filled().get(..want).ok_or_else(|| broken("handshake message shorter than its header"))?;
            let (&typ, body) = whole.split_first().ok_or_else(|| broken("handshake message without a type"))?;
            self.handshake_msg(typ, body.get(HS_HEADER - 1..).unwrap_or_default(), msgs.is_empty())?;
            pool.rec.release(part);
        }
        while let &[typ, a, b, c, ref rest @ ..] = msgs {
            let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
            let Some((body, after)) = rest.split_at_checked(len) else { break };
            self.handshake_msg(typ, body, after.is_empty())?;
            msgs = after;
        }
        if !msgs.is_empty() {
            self.msg_bytes(msgs)?;
            let buf = pool.rec.fill_slot(part);
            if !buf.put(msgs) {
                return Err(broken("a record's plaintext past a record buffer"));
            }
        }
        Ok(())
    }

    /// The length of the post-handshake message whose first bytes are `head` (header and
    /// body), once its header is here; before, the header's length. A message that may not
    /// come after the handshake is refused at its type (unexpected_message, RFC 8446 §4.6),
    /// one longer than a record buffer (`POST_HANDSHAKE_MSG_MAX`) at its length (decode_error,
    /// as rustls refuses a message past its own bound).
    fn msg_bytes(&self, head: &[u8]) -> io::Result<usize> {
        let &[typ, a, b, c, ..] = head else { return Ok(HS_HEADER) };
        let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
        let tls13 = self.version == Version::Tls13;
        let allowed = match (typ, &self.kernel) {
            (HS_KEY_UPDATE, _) | (HS_NEW_SESSION_TICKET, Kernel::Client(_)) => tls13,
            // TLS 1.2 renegotiation, declined (`handshake_msg`): a client's ClientHello, a
            // server's HelloRequest.
            (HS_CLIENT_HELLO, Kernel::Server(_)) | (HS_HELLO_REQUEST, Kernel::Client(_)) => !tls13,
            _ => false,
        };
        if !allowed {
            return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "unexpected post-handshake message"));
        }
        if HS_HEADER + len > POST_HANDSHAKE_MSG_MAX {
            return Err(fatal(ALERT_DECODE_ERROR, "post-handshake message too long"));
        }
        Ok(HS_HEADER + len)
    }

    /// One whole post-handshake message: RFC 8446 §4.6.1, a server's NewSessionTicket (kept by
    /// rustls for resumption); §4.6.3, a KeyUpdate, which must end its record (§5.1: no message
    /// may span a key change).
    /// TLS 1.2: a renegotiation asked for (a ClientHello to us as the server, a HelloRequest
    /// to us as a client) is declined with a no_renegotiation warning and the connection goes
    /// on (RFC 5246 §7.2.2, as rustls does); the message itself is dropped.
    fn handshake_msg(&mut self, typ: u8, body: &[u8], ends_record: bool) -> io::Result<()> {
        let tls13 = self.version == Version::Tls13;
        match (typ, &mut self.kernel) {
            (HS_KEY_UPDATE, _) if tls13 && ends_record => self.key_update(body),
            (HS_NEW_SESSION_TICKET, Kernel::Client(k)) if tls13 => {
                k.handle_new_session_ticket(body).map_err(|_| fatal(ALERT_DECODE_ERROR, "bad session ticket"))
            }
            (HS_CLIENT_HELLO, Kernel::Server(_)) | (HS_HELLO_REQUEST, Kernel::Client(_)) if !tls13 => {
                self.decline_pending = true;
                Ok(())
            }
            _ => Err(fatal(ALERT_UNEXPECTED_MESSAGE, "unexpected post-handshake message")),
        }
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
    /// A no_renegotiation warning owed (TLS 1.2) goes first, likewise.
    pub(super) fn reply(&mut self, out: &mut TlsBuf) -> io::Result<bool> {
        if self.decline_pending {
            // RFC 5246 §7.2.2: no_renegotiation "is always a warning".
            if self.plain_room(out.spare_len()) < 2 {
                return Ok(false);
            }
            let n = self.seal(CT_ALERT, &[1, ALERT_NO_RENEGOTIATION], out.spare())?;
            out.commit(n);
            self.decline_pending = false;
        }
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

/// Bytes the record at the front of `b` needs in all (its header's length + 5), or 5 while the
/// header is incomplete.
pub(super) fn record_need(b: &[u8]) -> usize {
    match b.get(..HEADER) {
        Some(&[_, _, _, l0, l1]) => HEADER + usize::from(u16::from_be_bytes([l0, l1])),
        _ => HEADER,
    }
}

/// The length of the whole record at the front of `b`, if it is all there.
pub(super) fn whole_record(b: &[u8]) -> Option<usize> {
    let need = record_need(b);
    (b.len() >= HEADER && b.len() >= need).then_some(need)
}

/// Alert descriptions (RFC 8446 §6.2).
pub(super) const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
pub(super) const ALERT_BAD_RECORD_MAC: u8 = 20;
pub(super) const ALERT_RECORD_OVERFLOW: u8 = 22;
pub(super) const ALERT_ILLEGAL_PARAMETER: u8 = 47;
pub(super) const ALERT_DECODE_ERROR: u8 = 50;
pub(super) const ALERT_PROTOCOL_VERSION: u8 = 70;
pub(super) const ALERT_NO_RENEGOTIATION: u8 = 100;

/// What the peer sent that ends the connection after the handshake, and the fatal alert that
/// tells it so (RFC 8446 §5.2, §6.2): sent before the close, not a bare close.
#[derive(Debug)]
pub(super) struct Fatal {
    pub(super) alert: u8,
    what: &'static str,
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.what)
    }
}

impl std::error::Error for Fatal {}

pub(super) fn fatal(alert: u8, what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Fatal { alert, what })
}
