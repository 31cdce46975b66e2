//! Connections shared by the modes: a timerfd for schedules, plain and TLS client sockets.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Token};

use crate::Opts;
use crate::kx;
use crate::http::EdgeRead;

// ---------------------------------------------------------------- timerfd

pub(crate) struct Timer(pub(crate) OwnedFd);

impl Timer {
    pub(crate) fn new() -> io::Result<Timer> {
        // SAFETY: plain syscalls with valid arguments.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 5_000u64);
            let fd = libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Timer(OwnedFd::from_raw_fd(fd)))
        }
    }
    /// Arm for an absolute CLOCK_MONOTONIC time in ns, then every `every_ns` (0: once).
    /// A periodic timer aligned with the schedule costs no syscall per request; re-arming
    /// an hrtimer per request was most of the generator's CPU time in a VM.
    pub(crate) fn arm(&self, at_ns: u64, every_ns: u64) {
        let at = at_ns.max(1);
        let its = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: (every_ns / 1_000_000_000) as i64, tv_nsec: (every_ns % 1_000_000_000) as i64 },
            it_value: libc::timespec { tv_sec: (at / 1_000_000_000) as i64, tv_nsec: (at % 1_000_000_000) as i64 },
        };
        // SAFETY: valid fd and itimerspec.
        unsafe { libc::timerfd_settime(self.0.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &its, std::ptr::null_mut()) };
    }
    pub(crate) fn clear(&self) {
        let mut v = [0u8; 8];
        // SAFETY: reading 8 bytes into a local buffer.
        unsafe { libc::read(self.0.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    }
}

pub(crate) fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    Ok(s)
}

// ---------------------------------------------------------------- TLS (bench/tls)

/// The client side of TLS: one rustls config (ring, like Apex) and the server name to send.
pub(crate) struct Tls {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) name: rustls::pki_types::ServerName<'static>,
}

impl Tls {
    /// TLS 1.3 and 1.2 (rustls prefers 1.3), ALPN http/1.1, no certificate check. Without
    /// `resume` no session is kept, so every connection does a full handshake.
    ///
    /// `--groups`: `classical` (default: rustls's ring groups, X25519 first) or `pq` (Apex's
    /// default list, X25519MLKEM768 first, with its X25519 share beside it).
    pub(crate) fn new(o: &Opts, sni: &str, resume: bool) -> io::Result<Tls> {
        let provider = Arc::new(match o.str("groups", "classical").as_str() {
            "classical" => rustls::crypto::ring::default_provider(),
            "pq" => kx::provider(&kx::DEFAULT),
            g => return Err(io::Error::other(format!("--groups {g:?}: classical or pq"))),
        });
        let algs = provider.signature_verification_algorithms;
        let verifier = Arc::new(NoVerify { algs, check_sig: o.str("verify", "0") == "1" });
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        if !resume {
            cfg.resumption = rustls::client::Resumption::disabled();
        }
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(sni.to_string())
            .map_err(|e| io::Error::other(format!("server name {sni:?}: {e}")))?;
        Ok(Tls { config: Arc::new(cfg), name })
    }
}

/// Accepts any certificate: the load generator measures servers, it does not trust them.
/// The handshake signature is checked only with --verify 1 (it costs the load side more
/// than the server's signing costs the server).
#[derive(Debug)]
pub(crate) struct NoVerify {
    pub(crate) algs: rustls::crypto::WebPkiSupportedAlgorithms,
    pub(crate) check_sig: bool,
}

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        if self.check_sig {
            return rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs);
        }
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        if self.check_sig {
            return rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs);
        }
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A client connection, plain TCP or TLS. Read and Write carry plaintext; with TLS they also
/// drive the handshake (the request written during it waits inside rustls and leaves with
/// the client's Finished), so the modes' loops are the same for both.
pub(crate) struct Sock {
    pub(crate) tcp: TcpStream,
    pub(crate) tls: Option<Box<rustls::ClientConnection>>,
}

/// Writes pending TLS records until done or the socket is full (then they wait: see wants_write).
pub(crate) fn flush_records(t: &mut rustls::ClientConnection, tcp: &mut TcpStream) -> io::Result<()> {
    while t.wants_write() {
        match t.write_tls(tcp) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Sock {
    pub(crate) fn connect(addr: SocketAddr, tls: Option<&Tls>) -> io::Result<Sock> {
        let tcp = TcpStream::connect(addr)?;
        let tls = match tls {
            Some(t) => Some(Box::new(
                rustls::ClientConnection::new(t.config.clone(), t.name.clone()).map_err(io::Error::other)?,
            )),
            None => None,
        };
        Ok(Sock { tcp, tls })
    }
    /// Sends pending TLS records (the ClientHello first); call once connected.
    pub(crate) fn flush_tls(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(t) => flush_records(t, &mut self.tcp),
            None => Ok(()),
        }
    }
    /// TLS records are waiting for room in the socket.
    pub(crate) fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }
    pub(crate) fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }
    pub(crate) fn resumed(&self) -> bool {
        self.tls.as_ref().and_then(|t| t.handshake_kind()) == Some(rustls::HandshakeKind::Resumed)
    }
    /// "TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519 Full", or "" for plain TCP.
    pub(crate) fn describe(&self) -> String {
        let Some(t) = &self.tls else { return String::new() };
        format!(
            "{:?} {:?} {:?} {:?}",
            t.protocol_version(),
            t.negotiated_cipher_suite().map(|s| s.suite()),
            t.negotiated_key_exchange_group().map(|g| g.name()),
            t.handshake_kind()
        )
        .replace("Some(", "")
        .replace(')', "")
    }
    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.tcp.take_error()
    }
    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }
    pub(crate) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp.set_nodelay(on)
    }
}

impl Read for Sock {
    /// Plaintext; WouldBlock once the socket is drained and no plaintext is left; 0 at the
    /// server's close_notify or EOF.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Sock { tcp, tls } = self;
        let Some(t) = tls else { return tcp.read(buf) };
        loop {
            match t.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0), // no close_notify
                Err(e) => return Err(e),
            }
            match t.read_tls(tcp) {
                Ok(0) => {} // EOF: the reader reports it on the next turn
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e), // WouldBlock included: drained, nothing to return
            }
            let st = t.process_new_packets().map_err(io::Error::other)?;
            // handshake replies, and the request that waited for the handshake to end
            flush_records(t, tcp)?;
            if st.peer_has_closed() && st.plaintext_bytes_to_read() == 0 {
                return Ok(0);
            }
        }
    }
}

impl Write for Sock {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let Sock { tcp, tls } = self;
        let Some(t) = tls else { return tcp.write(b) };
        flush_records(t, tcp)?;
        if t.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = t.writer().write(b)?;
        flush_records(t, tcp)?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl EdgeRead for Sock {
    fn short_read_drains(&self) -> bool {
        self.tls.is_none()
    }
}

impl Source for Sock {
    fn register(&mut self, r: &mio::Registry, t: Token, i: Interest) -> io::Result<()> {
        self.tcp.register(r, t, i)
    }
    fn reregister(&mut self, r: &mio::Registry, t: Token, i: Interest) -> io::Result<()> {
        self.tcp.reregister(r, t, i)
    }
    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        self.tcp.deregister(r)
    }
}
