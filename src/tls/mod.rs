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
//!
//! The parts, one job each: `handshake` (rustls's unbuffered handshake on our buffers),
//! `record` (sealing and opening records after it, alerts), `certs` (certificates and rustls
//! configurations, built at start and on reload, off the hot path), `kx` (the key exchange
//! groups, among them the post-quantum hybrid X25519MLKEM768), `agreed` (what a client's
//! handshake agreed on, for the access log). This file is the socket-like `Tls` that joins
//! them, and the only public face: other modules use `crate::tls::*` paths.
//! Invariants: no allocation per record (the handshake's `spill` aside, see `handshake`); no
//! byte after a fatal alert or our close_notify; a record that fails ends the connection.

use std::io;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::ServerConfig;
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;

use crate::buf::{Buf, BufPool};
use crate::limits::{TLS_BUF_BYTES, TLS_HS_BUF_BYTES};
use crate::transport::{Filled, Io, fill};

mod agreed;
mod certs;
mod handshake;
pub mod kx;
mod record;

pub use agreed::Agreed;
pub use certs::{
    CertSpec, UpstreamTls, UpstreamTlsSpec, client_config, leaf_expiry, serial_and_aki, server_config, validity,
};
use handshake::{Handshake, Hs, drive, send};
use record::{
    ALERT_BAD_RECORD_MAC, ALERT_DECODE_ERROR, ALERT_RECORD_OVERFLOW, ALERT_UNEXPECTED_MESSAGE, CIPHERTEXT_MAX,
    CT_ALERT, CT_APPDATA, Fatal, HEADER, Kernel, Opened, Records, Version, fatal, record_need,
};

pub type TlsBuf = Buf<TLS_BUF_BYTES>;
type HsBuf = Buf<TLS_HS_BUF_BYTES>;

/// A worker's TLS buffers: record buffers (two per TLS connection with bytes in flight), and
/// handshake buffers, lent only to a handshake whose incoming flight is larger than a record
/// buffer and given back as soon as its message is whole. Both are reused, never freed, so a
/// steady state allocates nothing.
pub struct TlsBufPool {
    rec: BufPool<TLS_BUF_BYTES>,
    hs: BufPool<TLS_HS_BUF_BYTES>,
    /// The worker's counters: handshakes done and failed are counted where they end.
    pub metrics: Arc<crate::metrics::WorkerMetrics>,
}

impl TlsBufPool {
    /// `prealloc` record buffers now; handshake buffers when first needed.
    pub fn new(prealloc: usize) -> Self {
        TlsBufPool { rec: BufPool::new(prealloc), hs: BufPool::new(0), metrics: crate::metrics::WorkerMetrics::new() }
    }
}

/// A finished handshake, by side, version and whether it resumed a session.
#[cold]
fn count_handshake(m: &crate::metrics::WorkerMetrics, upstream: bool, hs: &rustls::CommonState) {
    let tls13 = hs.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    let resumed = hs.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    m.tls_handshake(upstream, tls13, resumed);
}

fn bad(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// A broken invariant of this module, not something the peer did: a debug build stops here; a
/// release build ends the connection with this error rather than guess (never a panic, never
/// a byte counted as moved that was not).
fn broken(what: &'static str) -> io::Error {
    debug_assert!(false, "tls invariant broken: {what}");
    bad(what)
}

/// One connection's TLS state: a client's (we are the server) or an upstream's (we are the
/// client).
pub struct Tls {
    hs: Option<Handshake>,
    rec: Option<Records>,
    /// Bytes from the socket, not yet opened.
    rin: Option<TlsBuf>,
    /// During the handshake, instead of `rin`: an incoming flight larger than a record buffer.
    hs_in: Option<HsBuf>,
    /// After the handshake: the start of a handshake message split over records (KeyUpdate,
    /// NewSessionTicket), until the rest comes (`Records::handshake_msgs`).
    hs_part: Option<TlsBuf>,
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
    /// A fatal alert of ours went out (the handshake was refused, or a record after it; as
    /// the server only): what the client still sends is discarded while the connection
    /// lingers.
    failed: bool,
    /// A record failed (bad tag, bad length, ...): RFC 8446 §5.2, the connection is over, and
    /// nothing more is sent on it.
    broken: bool,
    /// Our close_notify is sealed: nothing may follow it.
    notified: bool,
    /// The handshake has sent a protected record: the peer reads no plaintext alert from us.
    protected: bool,
    /// What the handshake agreed on (the access log's TLS fields), once it is done.
    agreed: Option<Agreed>,
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
            hs_in: None,
            hs_part: None,
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
            protected: false,
            agreed: None,
        }
    }

    /// The version, cipher suite and key exchange group a client's handshake agreed on (as the
    /// server only: an upstream's is not logged); None until it is done.
    pub fn agreed(&self) -> Option<Agreed> {
        self.agreed
    }

    /// A fatal alert told the client why the connection ends: close gracefully (linger) so
    /// the alert is read, not lost to a reset. From then on `read` only discards.
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
        self.plain.0 < self.plain.1
            || self.rin.as_ref().is_some_and(|b| !b.is_empty())
            || self.hs_in.as_ref().is_some_and(|b| !b.is_empty())
    }

    /// Nothing a read or a flush could act on without a new socket edge: the handshake is over,
    /// no plaintext or record from the peer is held (`has_unread`), no sealed record waits to be
    /// written (`rout`, `spill`), and the stream has neither ended nor failed. Then, with the
    /// socket drained, `read` returns `Idle` and a write of nothing does nothing, as on a plain
    /// socket; a KeyUpdate owed is sealed only in front of data (`write`), so none is skipped.
    /// Out of line: plain connections, which never call it, keep their checks short.
    #[inline(never)]
    pub fn is_quiet(&self) -> bool {
        self.hs.is_none()
            && !self.eof
            && !self.failed
            && !self.broken
            && !self.has_unread()
            && self.rout.as_ref().is_none_or(|b| b.is_empty())
            && self.spill.is_empty()
    }

    /// Gives both record buffers back (the connection is closing).
    pub fn release_all(&mut self, pool: &mut TlsBufPool) {
        pool.rec.release(&mut self.rin);
        pool.rec.release(&mut self.rout);
        pool.hs.release(&mut self.hs_in);
        pool.rec.release(&mut self.hs_part);
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
            pool.hs.release(&mut self.hs_in);
            let rin = pool.rec.fill_slot(&mut self.rin);
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
    /// (RFC 8446 §6.2): the last record Apex seals on this connection. As the server, once it
    /// is out, the connection lingers (`failed`), as after an HTTP error.
    fn alert(&mut self, e: &io::Error, sock: &TcpStream, io: &mut Io, pool: &mut TlsBufPool) {
        if let Some(f) = e.get_ref().and_then(|x| x.downcast_ref::<Fatal>()) {
            let out = self.send_alert([2, f.alert], sock, io, pool);
            self.failed = out && self.rec.as_ref().is_some_and(Records::is_server);
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
                // `plain` lies within the record at the front of `rin` (set by `open_one`).
                let src =
                    rin.filled().get(from as usize..to as usize).ok_or_else(|| broken("plaintext outside rin"))?;
                let spare = dst.spare();
                let n = src.len().min(spare.len());
                if n == 0 {
                    return Ok(Filled::Idle);
                }
                let (Some(d), Some(s)) = (spare.get_mut(..n), src.get(..n)) else {
                    return Err(broken("plaintext copy out of bounds"));
                };
                d.copy_from_slice(s);
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
            let rin = pool.rec.fill_slot(&mut self.rin);
            rin.reserve(record_need(rin.filled()));
            match fill(sock, io, rin)? {
                Filled::Data(_) => {}
                Filled::Idle => {
                    pool.rec.release_if_empty(&mut self.rin);
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
        // The type first (a ChangeCipherSpec record is shorter than any protected one):
        // RFC 8446 §5, "If a TLS implementation receives an unexpected record type, it MUST
        // terminate the connection with an unexpected_message alert".
        if !rec.expects(rin.filled().first().copied().unwrap_or(0)) {
            return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "unexpected record type"));
        }
        // RFC 8446 §5.2: at most 2^14 + 256 bytes in TLS 1.3 (RFC 5246 §6.2.3: 2^14 + 2048 in
        // 1.2), else record_overflow.
        let max = if rec.version == Version::Tls13 { (1 << 14) + 256 } else { CIPHERTEXT_MAX };
        if need - HEADER > max {
            return Err(fatal(ALERT_RECORD_OVERFLOW, "record too long"));
        }
        // Shorter than its tag (and explicit nonce), a record cannot be decrypted: RFC 8446
        // §5.2 "If the decryption fails, the receiver MUST terminate the connection with a
        // bad_record_mac alert" (RFC 5246 §6.2.3.3 alike; rustls answers so). This also rules
        // out a zero length that would never be consumed.
        if need - HEADER < rec.sealed_min() {
            return Err(fatal(ALERT_BAD_RECORD_MAC, "record shorter than its tag"));
        }
        if rin.len() < need {
            return Ok(false);
        }
        let rout = pool.rec.fill_slot(&mut self.rout);
        let whole = rin.filled_mut().get_mut(..need).ok_or_else(|| bad("tls state"))?;
        let opened = rec.open(whole)?;
        if let Opened::Handshake { from, to } = opened {
            let msgs = rin.filled().get(from..to).ok_or_else(|| broken("handshake messages outside the record"))?;
            rec.handshake_msgs(msgs, &mut self.hs_part, pool)?;
        } else if self.hs_part.is_some() {
            // RFC 8446 §5.1: "if a handshake message is split over two or more records, there
            // MUST NOT be any other records between them".
            return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "record inside a split handshake message"));
        }
        rec.reply(rout)?; // if there is no room now, `write` sends it before any data
        match opened {
            Opened::Data { from, to } if from < to => self.plain = (from as u32, to as u32, need as u32),
            Opened::Data { .. } | Opened::Handshake { .. } => rin.consume(need),
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
        // Twice at most: once more in a handshake buffer, if the flight outgrew `rin`.
        for _ in 0..2 {
            let Some(hs) = self.hs.as_mut() else { return Ok(true) };
            let rout = pool.rec.fill_slot(&mut self.rout);
            let (spill, fed, failed, protected) =
                (&mut self.spill, &mut self.fed, &mut self.failed, &mut self.protected);
            let step = match (hs, self.hs_in.as_mut()) {
                (Handshake::Server(hs), Some(big)) => drive(hs, sock, io, big, rout, spill, fed, failed, protected),
                (Handshake::Client(hs), Some(big)) => drive(hs, sock, io, big, rout, spill, fed, failed, protected),
                (Handshake::Server(hs), None) => {
                    let rin = pool.rec.fill_slot(&mut self.rin);
                    drive(hs, sock, io, rin, rout, spill, fed, failed, protected)
                }
                (Handshake::Client(hs), None) => {
                    let rin = pool.rec.fill_slot(&mut self.rin);
                    drive(hs, sock, io, rin, rout, spill, fed, failed, protected)
                }
            };
            let is_server = matches!(self.hs, Some(Handshake::Server(_)));
            let step = match step {
                Ok(s) => s,
                Err(e) => {
                    if is_server {
                        pool.metrics.tls_failure(0);
                    }
                    return Err(e);
                }
            };
            if is_server {
                match step {
                    Hs::Refuse(alert, _) | Hs::Alerted(alert, _) => pool.metrics.tls_failure(alert),
                    Hs::Grow if self.hs_in.is_some() => pool.metrics.tls_failure(ALERT_DECODE_ERROR),
                    _ => {}
                }
            }
            let step = match step {
                Hs::Alerted(_, e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                s => s,
            };
            if !matches!(step, Hs::Grow) {
                self.shrink(pool, matches!(step, Hs::Done))?;
            }
            return match step {
                Hs::Grow if self.hs_in.is_none() => {
                    self.grow(pool)?;
                    continue;
                }
                // A flight past the handshake bound: rustls would wait for the rest forever.
                // decode_error, as rustls answers a message past its own bound (0xffff).
                Hs::Grow => Err(self.refuse(ALERT_DECODE_ERROR, "handshake flight too large", sock, io, pool)),
                Hs::Refuse(alert, what) => Err(self.refuse(alert, what, sock, io, pool)),
                Hs::Eof => {
                    self.eof = true;
                    Ok(true)
                }
                Hs::Done => {
                    let mut validation = false;
                    let (secrets, kernel) = match self.hs.take() {
                        Some(Handshake::Server(hs)) => {
                            count_handshake(&pool.metrics, false, &hs);
                            self.agreed = Agreed::of(&hs);
                            validation = hs.alpn_protocol() == Some(crate::acme::ALPN);
                            hs.dangerous_into_kernel_connection().map(|(s, k)| (s, Kernel::Server(k)))
                        }
                        Some(Handshake::Client(hs)) => {
                            count_handshake(&pool.metrics, true, &hs);
                            hs.dangerous_into_kernel_connection().map(|(s, k)| (s, Kernel::Client(k)))
                        }
                        None => return Ok(true),
                    }
                    .map_err(|_| bad("tls secrets"))?;
                    self.rec = Some(Records::new(kernel, secrets)?);
                    self.flush(sock, io, pool)?;
                    pool.rec.release_if_empty(&mut self.rin);
                    // RFC 8737 §3: a TLS-ALPN-01 validation ends with the handshake; no
                    // request is read on it.
                    self.eof |= validation;
                    Ok(true)
                }
                _ => {
                    // Waiting: an empty buffer goes back (a client that sends nothing holds none).
                    pool.rec.release_if_empty(&mut self.rin);
                    pool.hs.release_if_empty(&mut self.hs_in);
                    pool.rec.release_if_empty(&mut self.rout);
                    Ok(false)
                }
            };
        }
        Err(broken("handshake buffer grown twice"))
    }

    /// Moves the handshake's input into a handshake buffer (`rin`'s bytes, in order: what
    /// rustls has been given keeps its offsets).
    fn grow(&mut self, pool: &mut TlsBufPool) -> io::Result<()> {
        let big = pool.hs.fill_slot(&mut self.hs_in);
        if let Some(small) = self.rin.as_ref()
            && !big.put(small.filled())
        {
            return Err(broken("record buffer larger than a handshake buffer"));
        }
        pool.rec.release(&mut self.rin);
        Ok(())
    }

    /// Gives a handshake buffer back once rustls holds nothing in it (`fed` is 0: no message is
    /// half read) and what is left fits a record buffer, which it always does at the
    /// handshake's end (`done`): a handshake buffer is never read past the record awaited.
    fn shrink(&mut self, pool: &mut TlsBufPool, done: bool) -> io::Result<()> {
        let Some(big) = self.hs_in.as_ref() else { return Ok(()) };
        if !done && (self.fed > 0 || big.len() > TLS_BUF_BYTES) {
            return Ok(());
        }
        if !big.is_empty() {
            let small = pool.rec.fill_slot(&mut self.rin);
            if !small.is_empty() || !small.put(big.filled()) {
                return Err(broken("handshake leftover does not fit a record buffer"));
            }
        }
        pool.hs.release(&mut self.hs_in);
        Ok(())
    }

    /// Refuses the handshake with a fatal alert of ours (rustls has none for it), in plaintext
    /// (RFC 8446 §5.1: legacy_record_version 0x0303), after what rustls queued; only while the
    /// peer still reads plaintext (`protected`), else the close alone says it. What the peer
    /// still sends is then discarded (`failed`). Returns the error that ends the handshake.
    fn refuse(
        &mut self,
        alert: u8,
        what: &'static str,
        sock: &TcpStream,
        io: &mut Io,
        pool: &mut TlsBufPool,
    ) -> io::Error {
        pool.hs.release(&mut self.hs_in);
        if !self.protected {
            let record = [CT_ALERT, 3, 3, 0, 2, 2, alert];
            let out = pool.rec.fill_slot(&mut self.rout);
            // After every record rustls encoded: those in `spill` come after `rout`'s.
            let queued = if self.spill.is_empty() {
                out.put(&record)
            } else {
                self.spill.extend_from_slice(&record);
                true
            };
            if queued {
                self.failed = send(sock, io, out, &mut self.spill).unwrap_or(false);
            }
        }
        bad(what)
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
                pool.rec.release_if_empty(&mut self.rout);
                return Ok(consumed);
            }
            let out = pool.rec.fill_slot(&mut self.rout);
            let mut sealed = 0;
            loop {
                // A KeyUpdate owed (asked for, or our key's record limit) goes before any data.
                if !rec.reply(out)? {
                    break;
                }
                // `sealed` counts bytes of `src` taken below, so it never passes its end; a
                // slice that fell short would count bytes as sealed that were not.
                let rest = src.filled().get(sealed..).ok_or_else(|| broken("sealed past the plaintext"))?;
                let spare = out.spare();
                let n = rest.len().min(rec.plain_room(spare.len()));
                if n == 0 {
                    break;
                }
                let plain = rest.get(..n).ok_or_else(|| broken("seal past the plaintext"))?;
                let w = rec.seal(CT_APPDATA, plain, spare)?;
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
        let _ = self.send_alert([1, 0], sock, io, pool);
    }

    /// Seals `alert` (level, description) as the last record Apex sends on this connection,
    /// after any KeyUpdate it owes, and writes what is queued. Returns whether it is sealed and
    /// all of it written.
    fn send_alert(&mut self, alert: [u8; 2], sock: &TcpStream, io: &mut Io, pool: &mut TlsBufPool) -> bool {
        let Some(rec) = self.rec.as_mut() else { return false };
        if self.notified || self.broken {
            return false;
        }
        let out = pool.rec.fill_slot(&mut self.rout);
        if rec.reply(out).unwrap_or(false)
            && rec.plain_room(out.spare_len()) >= 2
            && let Ok(n) = rec.seal(CT_ALERT, &alert, out.spare())
        {
            out.commit(n);
            self.notified = true;
        }
        let sent = self.flush(sock, io, pool).unwrap_or(false);
        self.notified && sent
    }

    /// Writes records already sealed (handshake, a KeyUpdate reply, an alert), in order.
    /// Returns whether all are out.
    pub fn flush(&mut self, sock: &TcpStream, io: &mut Io, pool: &mut TlsBufPool) -> io::Result<bool> {
        let done = match self.rout.as_mut() {
            Some(out) => send(sock, io, out, &mut self.spill)?,
            None if self.spill.is_empty() => true,
            None => send(sock, io, pool.rec.fill_slot(&mut self.rout), &mut self.spill)?,
        };
        pool.rec.release_if_empty(&mut self.rout);
        Ok(done)
    }
}
