//! What the TLS tests (tls.rs, tls_edges.rs, tls_upstream.rs, redirect.rs) share: a test PKI made
//! with rcgen (a root CA in a temp dir, intermediates, leaves), `[tls]` config sections, a
//! blocking rustls client of Apex's TLS listener (`Hello`, `Tls`), and curl/openssl runners.

use crate::harness::*;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, ConnectionTrafficSecrets, DigitallySignedStruct, HandshakeKind, ProtocolVersion,
    RootCertStore, SignatureScheme, StreamOwned, SupportedProtocolVersion,
};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Over 1 MiB, and not a multiple of any buffer or record size.
pub const BIG: usize = (3 << 20) + 4321;

// ---------------------------------------------------------------- certificates

/// A server certificate: its chain file (PEM, leaf first) and key file (PKCS#8), the chain as
/// DER and the key as DER.
pub struct Leaf {
    pub chain: PathBuf,
    pub key: PathBuf,
    pub ders: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

impl Leaf {
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key_der.clone()).into()
    }
}

/// The root of a test PKI: the temp dir its files go to, the root CA (ECDSA P-256) as an issuer
/// and as DER, and `ca`, its PEM file (for `tls_ca`, curl --cacert and openssl -CAfile).
/// Clients trust this root only. A test's `Pki` holds one and gives it by `AsRef`.
pub struct Root {
    pub dir: TempDir,
    pub issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
    pub ca: PathBuf,
}

impl Root {
    /// A root CA named `cn`, written as `ca.pem` into a new temp dir tagged `tag`.
    pub fn new(tag: &str, cn: &str) -> Root {
        let dir = TempDir::new(tag);
        let (issuer, cert) = self_signed_ca(cn);
        let ca = dir.write("ca.pem", &cert.pem());
        Root { dir, issuer, der: cert.der().clone(), ca }
    }
}

impl AsRef<Root> for Root {
    fn as_ref(&self) -> &Root {
        self
    }
}

pub fn ca_params(cn: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(constraints);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

/// A self-signed, unconstrained root CA named `cn`.
pub fn self_signed_ca(cn: &str) -> (Issuer<'static, KeyPair>, Certificate) {
    let key = KeyPair::generate().unwrap();
    let params = ca_params(cn, BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (Issuer::new(params, key), cert)
}

/// An intermediate CA named `cn` (path length 0) signed by `parent`.
pub fn intermediate_ca(cn: &str, parent: &Issuer<'_, KeyPair>) -> (Issuer<'static, KeyPair>, Certificate) {
    let key = KeyPair::generate().unwrap();
    let mut params = ca_params(cn, BasicConstraints::Constrained(0));
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, parent).unwrap();
    (Issuer::new(params, key), cert)
}

/// Signs a server certificate for `names` (DNS names, or IP addresses as IP SANs; the first is
/// also the CN) and `key` with `issuer`, `tweak` applied to its parameters before signing
/// (validity dates); writes `TAG.pem` (the leaf, then `up_chain`) and `TAG.key` (PKCS#8).
pub fn sign_leaf(
    dir: &TempDir,
    tag: &str,
    names: &[&str],
    key: &KeyPair,
    issuer: &Issuer<'_, KeyPair>,
    up_chain: &[&Certificate],
    tweak: impl FnOnce(&mut CertificateParams),
) -> Leaf {
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    tweak(&mut p);
    let cert = p.signed_by(key, issuer).unwrap();
    let mut pem = cert.pem();
    let mut ders = vec![cert.der().clone()];
    for c in up_chain {
        pem += &c.pem();
        ders.push(c.der().clone());
    }
    Leaf {
        chain: dir.write(&format!("{tag}.pem"), &pem),
        key: dir.write(&format!("{tag}.key"), &key.serialize_pem()),
        ders,
        key_der: key.serialize_der(),
    }
}

/// A new ECDSA P-256 key.
pub fn new_key() -> KeyPair {
    KeyPair::generate().unwrap()
}

// ---------------------------------------------------------------- config

/// A `[tls]` section with one listener on 127.0.0.1:0 and `certs` in order (the first is the
/// default); `strict_sni` left out when None.
pub fn tls_section(strict_sni: Option<bool>, certs: &[(&Leaf, &[&str])]) -> String {
    let mut t = String::from("[tls]\nlisten = [\"127.0.0.1:0\"]\n");
    if let Some(s) = strict_sni {
        t += &format!("strict_sni = {s}\n");
    }
    for (leaf, names) in certs {
        t += &cert_entry(&leaf.chain, &leaf.key, names);
    }
    t
}

pub fn cert_entry(chain: &Path, key: &Path, names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "\n[[tls.cert]]\nchain = \"{}\"\nkey = \"{}\"\nnames = [{}]\n",
        chain.display(),
        key.display(),
        names.join(", ")
    )
}

pub fn tls_addr(apex: &Apex) -> SocketAddr {
    apex.tls_addr.expect("apex announced no TLS listener")
}

// ---------------------------------------------------------------- rustls client

/// How the rustls client says hello.
#[derive(Clone, Copy, Debug)]
pub struct Hello {
    /// None: offer TLS 1.2 and 1.3.
    pub version: Option<&'static SupportedProtocolVersion>,
    /// The SNI sent; None: no SNI extension.
    pub sni: Option<&'static str>,
    /// The name the served chain must be valid for (checked against the test root).
    pub valid_for: &'static str,
    pub alpn: &'static [&'static str],
}

impl Hello {
    pub fn to(name: &'static str) -> Hello {
        Hello { version: None, sni: Some(name), valid_for: name, alpn: &["http/1.1"] }
    }
    pub fn v(self, version: &'static SupportedProtocolVersion) -> Hello {
        Hello { version: Some(version), ..self }
    }
    pub fn valid_for(self, name: &'static str) -> Hello {
        Hello { valid_for: name, ..self }
    }
    pub fn alpn(self, alpn: &'static [&'static str]) -> Hello {
        Hello { alpn, ..self }
    }
    pub fn no_sni(self) -> Hello {
        Hello { sni: None, ..self }
    }
}

pub fn versions() -> [(&'static SupportedProtocolVersion, ProtocolVersion); 2] {
    [(&rustls::version::TLS12, ProtocolVersion::TLSv1_2), (&rustls::version::TLS13, ProtocolVersion::TLSv1_3)]
}

/// Verifies the served chain against the test root for a fixed name, whatever SNI was sent, so a
/// test can ask for `unknown.test` and still check it got a valid default certificate.
#[derive(Debug)]
struct ValidFor {
    name: ServerName<'static>,
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ValidFor {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sni: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client config trusting `pki`'s root only, saying hello as `h`.
pub fn client_config(pki: &impl AsRef<Root>, h: Hello) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(pki.as_ref().der.clone()).unwrap();
    let roots = Arc::new(roots);
    let versions: Vec<&'static SupportedProtocolVersion> = match h.version {
        Some(v) => vec![v],
        None => rustls::ALL_VERSIONS.to_vec(),
    };
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider).build().unwrap();
    let name = ServerName::try_from(h.valid_for.to_string()).unwrap();
    cfg.dangerous().set_certificate_verifier(Arc::new(ValidFor { name, inner }));
    cfg.alpn_protocols = h.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    cfg.enable_sni = h.sni.is_some();
    Arc::new(cfg)
}

pub fn client_conn(pki: &impl AsRef<Root>, h: Hello) -> ClientConnection {
    let name = ServerName::try_from(h.sni.unwrap_or(h.valid_for).to_string()).unwrap();
    ClientConnection::new(client_config(pki, h), name).unwrap()
}

/// A TCP connection to `addr` with the harness's timeouts, no Nagle; `rcvbuf` is set before
/// connecting.
pub fn try_connect(addr: SocketAddr, rcvbuf: Option<usize>) -> io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n)?;
    }
    s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

pub fn connect(addr: SocketAddr, rcvbuf: Option<usize>) -> TcpStream {
    try_connect(addr, rcvbuf).expect("connect to apex")
}

/// A TLS connection to Apex after a completed handshake.
pub struct Tls {
    pub s: StreamOwned<ClientConnection, TcpStream>,
    pub buf: Vec<u8>,
}

/// Connects and completes the handshake; the error is rustls's (see `rustls_error`) or I/O.
pub fn tls_try(addr: SocketAddr, pki: &impl AsRef<Root>, h: Hello) -> io::Result<Tls> {
    tls_over(try_connect(addr, None)?, client_conn(pki, h))
}

pub fn tls(addr: SocketAddr, pki: &impl AsRef<Root>, h: Hello) -> Tls {
    tls_try(addr, pki, h).unwrap_or_else(|e| panic!("TLS handshake with apex at {addr} failed ({h:?}): {e}"))
}

/// Connects with a config the caller keeps: connections made from one `ClientConfig` share its
/// session store (`resumption`), so the second one can resume the first one's session.
pub fn tls_with(addr: SocketAddr, cfg: &Arc<ClientConfig>, sni: &str) -> Tls {
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let conn = ClientConnection::new(Arc::clone(cfg), name).unwrap();
    try_connect(addr, None)
        .and_then(|tcp| tls_over(tcp, conn))
        .unwrap_or_else(|e| panic!("TLS handshake with apex at {addr} failed (SNI {sni}): {e}"))
}

/// Completes the handshake of `conn` over a connected `tcp` (see `connect`).
pub fn tls_over(tcp: TcpStream, conn: ClientConnection) -> io::Result<Tls> {
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(Tls { s, buf: vec![] })
}

/// The rustls error inside an I/O error from `tls_try`, if any.
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

/// Reads plaintext into `buf`; Ok(0) at the end of the TLS stream, with or without close_notify.
pub fn tls_fill(s: &mut StreamOwned<ClientConnection, TcpStream>, buf: &mut Vec<u8>) -> io::Result<usize> {
    match tls_fill_strict(s, buf) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        r => r,
    }
}

/// Reads plaintext into `buf`; Ok(0) only at a clean end (close_notify): a TCP close without it
/// is rustls's UnexpectedEof error, as for any client that tells a whole body from a cut one.
pub fn tls_fill_strict(s: &mut StreamOwned<ClientConnection, TcpStream>, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut tmp = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut tmp) {
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl Tls {
    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("TLS write to apex");
        self.s.flush().expect("TLS flush to apex");
    }

    /// Sends `b` as one TLS record in one socket write (`b` must fit in a record).
    pub fn send_one_record(&mut self, b: &[u8]) {
        assert!(b.len() <= 16 << 10, "{} bytes do not fit in one TLS record", b.len());
        self.s.conn.writer().write_all(b).unwrap();
        let mut out = vec![];
        while self.s.conn.wants_write() {
            self.s.conn.write_tls(&mut out).unwrap();
        }
        self.s.sock.write_all(&out).expect("write to apex");
    }

    pub fn try_read_response(&mut self, no_body: bool) -> Result<Response, String> {
        let s = &mut self.s;
        read_response_from(&mut self.buf, no_body, |buf| tls_fill(s, buf))
    }

    /// Reads one response whose end, if the connection ends, must be a clean one (close_notify).
    pub fn try_read_response_strict(&mut self) -> Result<Response, String> {
        let s = &mut self.s;
        read_response_from(&mut self.buf, false, |buf| tls_fill_strict(s, buf))
    }

    pub fn read_response(&mut self) -> Response {
        self.try_read_response(false).unwrap_or_else(|e| panic!("reading a response over TLS: {e}"))
    }

    /// Sends `req` and reads one final response (1xx skipped).
    pub fn request(&mut self, req: &[u8]) -> Response {
        self.send(req);
        for _ in 0..10 {
            let r = self.read_response();
            if !(100..200).contains(&r.status) {
                return r;
            }
        }
        panic!("more than 10 interim responses")
    }

    /// Sends `req`, reads one response; the error says what went wrong instead of panicking.
    pub fn try_read_response_after(&mut self, req: &[u8]) -> Result<Response, String> {
        self.s.write_all(req).and_then(|()| self.s.flush()).map_err(|e| format!("write: {e}"))?;
        self.try_read_response(false)
    }

    /// Reads until the TLS stream ends or `d` passes: (plaintext, ended).
    pub fn read_until_close(&mut self, d: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + d;
        let mut out = std::mem::take(&mut self.buf);
        while Instant::now() < deadline {
            match tls_fill(&mut self.s, &mut out) {
                Ok(0) => return (out, true),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(_) => return (out, true),
            }
        }
        (out, false)
    }

    /// Reads until the connection ends or `d` passes: the plaintext read, and how it ended
    /// (None: still open after `d`; Some(Ok(())): close_notify; Some(Err(e)): anything else).
    pub fn read_to_end(&mut self, d: Duration) -> (Vec<u8>, Option<io::Result<()>>) {
        let deadline = Instant::now() + d;
        let mut out = std::mem::take(&mut self.buf);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (out, None);
            }
            self.s.sock.set_read_timeout(Some(left.max(ms(1)))).unwrap();
            match tls_fill_strict(&mut self.s, &mut out) {
                Ok(0) => return (out, Some(Ok(()))),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if Instant::now() >= deadline {
                        return (out, None);
                    }
                }
                Err(e) => return (out, Some(Err(e))),
            }
        }
    }

    pub fn version(&self) -> Option<ProtocolVersion> {
        self.s.conn.protocol_version()
    }

    pub fn alpn(&self) -> Option<String> {
        self.s.conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned())
    }

    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.s.conn.peer_certificates().map(<[_]>::to_vec).unwrap_or_default()
    }

    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        self.s.conn.handshake_kind()
    }

    /// Writes whatever rustls has queued (a KeyUpdate, a close_notify) without application data.
    pub fn flush_tls(&mut self) {
        while self.s.conn.wants_write() {
            self.s.conn.write_tls(&mut self.s.sock).expect("write to apex");
        }
        self.s.sock.flush().unwrap();
    }

    /// Sends close_notify and closes the socket.
    pub fn close(mut self) {
        self.s.conn.send_close_notify();
        self.flush_tls();
        let _ = self.s.sock.shutdown(std::net::Shutdown::Both);
    }
}

// ---------------------------------------------------------------- curl and openssl

/// Fails with a clear message when `tool` is not installed.
pub fn require(tool: &str) {
    let probe = if tool == "openssl" { "version" } else { "--version" };
    let found = Command::new(tool)
        .arg(probe)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{tool}` is not installed (or not on PATH): the TLS interoperability tests run curl and openssl; install both (`apt-get install curl openssl`, as .ci/run does)"
    );
}

/// Runs `tool args` with `input` on stdin, killed after `limit`: (exit code, stdout, stderr);
/// the code is None if it was killed.
pub fn run_tool(tool: &str, args: &[&str], input: &[u8], limit: Duration) -> (Option<i32>, Vec<u8>, String) {
    require(tool);
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {tool}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut v = vec![];
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = thread::spawn(move || {
        let mut v = vec![];
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st.code().unwrap_or(-1));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(ms(20));
    };
    let _ = writer.join();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    (code, out, String::from_utf8_lossy(&err).into_owned())
}

pub fn openssl(args: &[&str]) {
    let (code, _, err) = run_tool("openssl", args, b"", Duration::from_secs(60));
    assert_eq!(code, Some(0), "openssl {args:?} failed:\n{err}");
}

/// `curl -v https://HOST:PORT/PATH` resolved to the TLS listener, trusting the test root:
/// (exit code, `HTTP_CODE HTTP_VERSION`, verbose stderr, body).
pub fn curl(
    addr: SocketAddr,
    pki: &impl AsRef<Root>,
    host: &str,
    path: &str,
    extra: &[&str],
) -> (Option<i32>, String, String, Vec<u8>) {
    let root = pki.as_ref();
    let out = root.dir.path().join("curl.out");
    let _ = std::fs::remove_file(&out);
    let resolve = format!("{host}:{}:127.0.0.1", addr.port());
    let url = format!("https://{host}:{}{path}", addr.port());
    let mut args = vec![
        "-sS",
        "-v",
        "--max-time",
        "30",
        "--cacert",
        path_str(&root.ca),
        "--resolve",
        resolve.as_str(),
        "-o",
        path_str(&out),
        "-w",
        "%{http_code} %{http_version}",
    ];
    args.extend_from_slice(extra);
    args.push(url.as_str());
    let (code, stdout, stderr) = run_tool("curl", &args, b"", Duration::from_secs(40));
    (code, String::from_utf8_lossy(&stdout).into_owned(), stderr, std::fs::read(&out).unwrap_or_default())
}

// ---------------------------------------------------------------- records rustls never sends

/// A client that completed its handshake (and one request) with rustls, then seals records of
/// its own with the connection's keys: empty data records, empty handshake records, padding
/// past the limit, which no TLS library sends. RFC 8446 §5.2-5.4 (TLS 1.3), RFC 5288 and
/// RFC 7905 (TLS 1.2).
pub struct Sealer {
    pub sock: TcpStream,
    v13: bool,
    explicit_nonce: bool,
    key: ring::aead::LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    /// Apex's direction: its records are opened with these (`read_records`).
    rx_key: ring::aead::LessSafeKey,
    rx_iv: [u8; 12],
    rx_seq: u64,
    /// Raw bytes from Apex not yet opened.
    rx_buf: Vec<u8>,
    /// TLS 1.3: the client's application traffic secret (from the key log), for KeyUpdates;
    /// SHA-384 suites use a 48-byte secret, the others 32.
    secret: Vec<u8>,
    key_len: usize,
}

/// Keeps CLIENT_TRAFFIC_SECRET_0 (RFC 8446 §7.1), which rustls does not hand out otherwise.
#[derive(Debug, Default)]
struct ClientSecret(std::sync::Mutex<Vec<u8>>);

impl rustls::KeyLog for ClientSecret {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label == "CLIENT_TRAFFIC_SECRET_0" {
            *self.0.lock().unwrap() = secret.to_vec();
        }
    }
    fn will_log(&self, label: &str) -> bool {
        label == "CLIENT_TRAFFIC_SECRET_0"
    }
}

/// A length for ring's HKDF output.
struct OutLen(usize);

impl ring::hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// RFC 8446 §7.1: HKDF-Expand-Label(secret, label, "", len).
fn expand_label(secret: &[u8], label: &str, len: usize) -> Vec<u8> {
    let alg = if secret.len() == 48 { ring::hkdf::HKDF_SHA384 } else { ring::hkdf::HKDF_SHA256 };
    let full = format!("tls13 {label}");
    let info = [&(len as u16).to_be_bytes()[..], &[full.len() as u8], full.as_bytes(), &[0u8]].concat();
    let prk = ring::hkdf::Prk::new_less_safe(alg, secret);
    let mut out = vec![0u8; len];
    prk.expand(&[&info], OutLen(len)).unwrap().fill(&mut out).unwrap();
    out
}

impl Sealer {
    /// Handshakes with `v` (SNI a.test), answers `GET path` through rustls, then takes over.
    pub fn after_a_request(
        addr: SocketAddr,
        pki: &impl AsRef<Root>,
        v: &'static SupportedProtocolVersion,
        path: &str,
    ) -> Sealer {
        let mut cfg = ClientConfig::clone(&client_config(pki, Hello::to("a.test").v(v)));
        cfg.enable_secret_extraction = true;
        let log = Arc::new(ClientSecret::default());
        cfg.key_log = log.clone();
        let conn = ClientConnection::new(Arc::new(cfg), ServerName::try_from("a.test").unwrap()).unwrap();
        let mut t = tls_over(connect(addr, None), conn).unwrap();
        let r = t.request(&get("a.test", path));
        assert_eq!(r.status, 200, "{}", r.head_str());
        let (conn, sock) = t.s.into_parts();
        let v13 = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
        let mut s = Sealer::from_secrets(sock, v13, conn.dangerous_extract_secrets().unwrap());
        s.secret = log.0.lock().unwrap().clone();
        assert!(!v13 || !s.secret.is_empty(), "no client traffic secret logged");
        s
    }

    /// Takes over `sock` after a handshake either side completed (`secrets` extracted from
    /// it): seals with the tx secrets, opens with the rx ones. No KeyUpdate (`next_send_key`).
    pub fn from_secrets(sock: TcpStream, v13: bool, secrets: rustls::ExtractedSecrets) -> Sealer {
        let (seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        let (key, iv, explicit_nonce, key_len) = suite_key(&tx, v13);
        let (rx_key, rx_iv, _, _) = suite_key(&rx, v13);
        let secret = vec![];
        Sealer { sock, v13, explicit_nonce, key, iv, seq, rx_key, rx_iv, rx_seq, rx_buf: vec![], secret, key_len }
    }

    /// TLS 1.3: after sealing a KeyUpdate, the client's send key moves on (RFC 8446 §4.6.3,
    /// §7.2): records sealed after this call use the next generation's key.
    pub fn next_send_key(&mut self) {
        assert!(self.v13);
        self.secret = expand_label(&self.secret, "traffic upd", self.secret.len());
        let key = expand_label(&self.secret, "key", self.key_len);
        let alg = if self.key_len == 16 {
            &ring::aead::AES_128_GCM
        } else if self.secret.len() == 48 {
            &ring::aead::AES_256_GCM
        } else {
            // SHA-256 with a 32-byte key: ChaCha20-Poly1305 (AES-256 comes with SHA-384).
            &ring::aead::CHACHA20_POLY1305
        };
        self.key = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, &key).unwrap());
        self.iv = expand_label(&self.secret, "iv", 12).try_into().unwrap();
        self.seq = 0;
    }

    /// Reads and opens Apex's records until `done` says so, the connection ends or `d` passes:
    /// each record as (content type, plaintext), and whether the connection ended. A record
    /// that does not open ends the list as (0, []).
    pub fn read_records(&mut self, d: Duration, done: impl Fn(&[(u8, Vec<u8>)]) -> bool) -> (Vec<(u8, Vec<u8>)>, bool) {
        let deadline = Instant::now() + d;
        let mut out = vec![];
        let mut tmp = vec![0u8; 1 << 16];
        loop {
            while self.rx_buf.len() >= 5 {
                let len = usize::from(u16::from_be_bytes([self.rx_buf[3], self.rx_buf[4]]));
                if self.rx_buf.len() < 5 + len {
                    break;
                }
                let rec: Vec<u8> = self.rx_buf.drain(..5 + len).collect();
                match self.open(&rec) {
                    Some(r) => out.push(r),
                    None => {
                        out.push((0, vec![]));
                        return (out, false);
                    }
                }
            }
            if done(&out) {
                return (out, false);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (out, false);
            }
            self.sock.set_read_timeout(Some(left.max(ms(1)))).unwrap();
            match self.sock.read(&mut tmp) {
                Ok(0) => return (out, true),
                Ok(n) => self.rx_buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return (out, true),
            }
        }
    }

    /// Opens one whole record from Apex: (content type, plaintext).
    fn open(&mut self, rec: &[u8]) -> Option<(u8, Vec<u8>)> {
        let (head, body) = rec.split_at(5);
        let explicit = if self.explicit_nonce { 8 } else { 0 };
        let mut nonce = self.rx_iv;
        if explicit > 0 {
            nonce[4..].copy_from_slice(body.get(..8)?);
        } else {
            for (b, s) in nonce.iter_mut().skip(4).zip(self.rx_seq.to_be_bytes()) {
                *b ^= s;
            }
        }
        let mut data = body.get(explicit..)?.to_vec();
        let aad = if self.v13 {
            head.to_vec()
        } else {
            let plain = data.len().checked_sub(16)?;
            let mut a = self.rx_seq.to_be_bytes().to_vec();
            a.extend_from_slice(&[head[0], 3, 3, (plain >> 8) as u8, plain as u8]);
            a
        };
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
        let plain = self.rx_key.open_in_place(nonce, ring::aead::Aad::from(&aad), &mut data).ok()?.to_vec();
        self.rx_seq += 1;
        if !self.v13 {
            return Some((head[0], plain));
        }
        let i = plain.iter().rposition(|&b| b != 0)?;
        Some((plain[i], plain[..i].to_vec()))
    }

    /// One record of content type `ct` holding `plain` (and, in TLS 1.3, `pad` zero bytes of
    /// padding after the inner type).
    pub fn record(&mut self, ct: u8, plain: &[u8], pad: usize) -> Vec<u8> {
        let mut nonce = self.iv;
        for (b, s) in nonce.iter_mut().skip(4).zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        let mut data = plain.to_vec();
        if self.v13 {
            data.push(ct);
            data.extend(std::iter::repeat_n(0u8, pad));
        }
        let explicit = if self.explicit_nonce { 8 } else { 0 };
        let len = explicit + data.len() + 16;
        let head = [if self.v13 { 23 } else { ct }, 3, 3, (len >> 8) as u8, len as u8];
        let aad = if self.v13 {
            head.to_vec()
        } else {
            let mut a = self.seq.to_be_bytes().to_vec();
            a.extend_from_slice(&[ct, 3, 3, (plain.len() >> 8) as u8, plain.len() as u8]);
            a
        };
        let nonce_obj = ring::aead::Nonce::assume_unique_for_key(nonce);
        self.key.seal_in_place_append_tag(nonce_obj, ring::aead::Aad::from(&aad), &mut data).unwrap();
        self.seq += 1;
        let mut rec = head.to_vec();
        rec.extend_from_slice(&nonce[4..4 + explicit]);
        rec.extend_from_slice(&data);
        rec
    }

    /// Writes these records in one write (errors ignored: Apex may have closed already).
    pub fn send(&mut self, records: &[Vec<u8>]) {
        let _ = self.sock.write_all(&records.concat());
    }

    /// Whether Apex closes the connection within `d`.
    pub fn closed_within(&mut self, d: Duration) -> bool {
        closed_within(&mut self.sock, d)
    }
}

/// One direction's key and IV as ring takes them, whether TLS 1.2 GCM's explicit nonce is in
/// use, and the key's length.
fn suite_key(s: &ConnectionTrafficSecrets, v13: bool) -> (ring::aead::LessSafeKey, [u8; 12], bool, usize) {
    let (alg, key, iv, explicit_nonce) = match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&ring::aead::AES_128_GCM, key, iv, !v13),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&ring::aead::AES_256_GCM, key, iv, !v13),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&ring::aead::CHACHA20_POLY1305, key, iv, false),
        _ => panic!("unexpected cipher suite"),
    };
    let k = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, key.as_ref()).unwrap());
    (k, iv.as_ref().try_into().unwrap(), explicit_nonce, key.as_ref().len())
}

/// Reads a raw socket (TLS records, not decrypted) until the peer closes it or `d` passes;
/// returns whether it closed (EOF or reset).
pub fn closed_within(sock: &mut TcpStream, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    let mut tmp = vec![0u8; 1 << 16];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        sock.set_read_timeout(Some(left.max(ms(1)))).unwrap();
        match sock.read(&mut tmp) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return true,
        }
    }
}

/// The test PKI (see `Root`): leaf A for a.test signed by a root of its own (ECDSA P-256, PKCS#8).
pub struct Pki {
    pub root: Root,
    pub a: Leaf,
}

impl AsRef<Root> for Pki {
    fn as_ref(&self) -> &Root {
        &self.root
    }
}

impl Pki {
    /// `name` names the root's directory and so keeps each suite's files apart.
    pub fn new(name: &str) -> Pki {
        let root = Root::new(name, "Apex Test Root");
        let a = sign_leaf(&root.dir, "a", &["a.test"], &new_key(), &root.issuer, &[], |_| {});
        Pki { root, a }
    }
}
