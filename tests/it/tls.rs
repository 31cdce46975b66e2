//! TLS termination: `[tls]` listeners with certificates chosen by SNI, TLS 1.2 and 1.3, ALPN
//! http/1.1, requests proxied as over plain TCP but with `X-Forwarded-Proto: https`, bad
//! certificate configs refused at start, stalled and garbage handshakes closed.
//! Certificates are made per test with rcgen (root CA -> intermediate -> leaf A for a.test and
//! *.a.test; root CA -> leaf B for b.test); clients are a blocking rustls client, curl and
//! `openssl s_client`, all trusting only the test root.

use crate::harness::*;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, ClientConfig, ClientConnection, DigitallySignedStruct, ProtocolVersion, RootCertStore,
    SignatureScheme, StreamOwned, SupportedProtocolVersion,
};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- certificates

/// A certificate Apex serves: its chain file (PEM, leaf first), its key file, the chain as DER.
struct Leaf {
    chain: PathBuf,
    key: PathBuf,
    ders: Vec<CertificateDer<'static>>,
}

/// The test PKI, in a temp dir. Leaf A (a.test, *.a.test) is signed by an intermediate and its
/// chain file holds leaf + intermediate; leaf B (b.test) is signed by the root and its chain is
/// the leaf alone. Keys are ECDSA P-256 in PKCS#8. Clients trust the root only.
struct Pki {
    dir: TempDir,
    root: Issuer<'static, KeyPair>,
    root_der: CertificateDer<'static>,
    /// The root CA, PEM (for curl --cacert and openssl -CAfile).
    ca: PathBuf,
    a: Leaf,
    b: Leaf,
}

const A_NAMES: &[&str] = &["a.test", "*.a.test"];
const B_NAMES: &[&str] = &["b.test"];

fn ca_params(cn: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(constraints);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

/// Signs a server certificate for `names` (the first is also the CN) with `issuer`, writes
/// `TAG.pem` (the leaf, then `up_chain`) and `TAG.key` (PKCS#8).
fn sign_leaf(
    dir: &TempDir,
    tag: &str,
    names: &[&str],
    key: &KeyPair,
    issuer: &Issuer<'_, KeyPair>,
    up_chain: &[&Certificate],
) -> Leaf {
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
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
    }
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("pki");
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("Apex Test Root", BasicConstraints::Unconstrained);
        let root_cert = root_params.self_signed(&root_key).unwrap();
        let root = Issuer::new(root_params, root_key);
        let ca = dir.write("ca.pem", &root_cert.pem());

        let mid_key = KeyPair::generate().unwrap();
        let mut mid_params = ca_params("Apex Test Intermediate", BasicConstraints::Constrained(0));
        mid_params.use_authority_key_identifier_extension = true;
        let mid_cert = mid_params.signed_by(&mid_key, &root).unwrap();
        let mid = Issuer::new(mid_params, mid_key);

        let a = sign_leaf(&dir, "a", A_NAMES, &KeyPair::generate().unwrap(), &mid, &[&mid_cert]);
        let b = sign_leaf(&dir, "b", B_NAMES, &KeyPair::generate().unwrap(), &root, &[]);
        Pki { dir, root, root_der: root_cert.der().clone(), ca, a, b }
    }

    /// `[tls]` with A (the default) then B.
    fn section(&self) -> String {
        tls_section(None, &[(&self.a, A_NAMES), (&self.b, B_NAMES)])
    }

    /// Which test certificate a served chain starts with.
    fn which(&self, chain: &[CertificateDer<'static>]) -> &'static str {
        match chain.first() {
            Some(c) if *c == self.a.ders[0] => "A",
            Some(c) if *c == self.b.ders[0] => "B",
            Some(_) => "another certificate",
            None => "no certificate",
        }
    }
}

/// A `[tls]` section with one listener on 127.0.0.1:0 and `certs` in order (the first is the
/// default); `strict_sni` left out when None.
fn tls_section(strict_sni: Option<bool>, certs: &[(&Leaf, &[&str])]) -> String {
    let mut t = String::from("[tls]\nlisten = [\"127.0.0.1:0\"]\n");
    if let Some(s) = strict_sni {
        t += &format!("strict_sni = {s}\n");
    }
    for (leaf, names) in certs {
        t += &cert_entry(&leaf.chain, &leaf.key, names);
    }
    t
}

fn cert_entry(chain: &Path, key: &Path, names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "\n[[tls.cert]]\nchain = \"{}\"\nkey = \"{}\"\nnames = [{}]\n",
        chain.display(),
        key.display(),
        names.join(", ")
    )
}

/// Apex with a plain listener and the `[tls]` listener of `pki.section()`, routing to `up`.
fn start_tls(up: &Upstream, pki: &Pki) -> Apex {
    Apex::start(&Config::to(up.addr).append(&pki.section()))
}

fn tls_addr(apex: &Apex) -> SocketAddr {
    apex.tls_addr.expect("apex announced no TLS listener")
}

// ---------------------------------------------------------------- rustls client

/// How the rustls client says hello.
#[derive(Clone, Copy, Debug)]
struct Hello {
    /// None: offer TLS 1.2 and 1.3.
    version: Option<&'static SupportedProtocolVersion>,
    /// The SNI sent; None: no SNI extension.
    sni: Option<&'static str>,
    /// The name the served chain must be valid for (checked against the test root).
    valid_for: &'static str,
    alpn: &'static [&'static str],
}

impl Hello {
    fn to(name: &'static str) -> Hello {
        Hello { version: None, sni: Some(name), valid_for: name, alpn: &["http/1.1"] }
    }
    fn v(self, version: &'static SupportedProtocolVersion) -> Hello {
        Hello { version: Some(version), ..self }
    }
    fn valid_for(self, name: &'static str) -> Hello {
        Hello { valid_for: name, ..self }
    }
    fn alpn(self, alpn: &'static [&'static str]) -> Hello {
        Hello { alpn, ..self }
    }
    fn no_sni(self) -> Hello {
        Hello { sni: None, ..self }
    }
}

fn versions() -> [(&'static SupportedProtocolVersion, ProtocolVersion); 2] {
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

fn client_config(pki: &Pki, h: Hello) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(pki.root_der.clone()).unwrap();
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

fn client_conn(pki: &Pki, h: Hello) -> ClientConnection {
    let name = ServerName::try_from(h.sni.unwrap_or(h.valid_for).to_string()).unwrap();
    ClientConnection::new(client_config(pki, h), name).unwrap()
}

/// A TLS connection to Apex after a completed handshake.
struct Tls {
    s: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

/// Connects and completes the handshake; the error is rustls's (see `rustls_error`) or I/O.
fn tls_try(addr: SocketAddr, pki: &Pki, h: Hello) -> io::Result<Tls> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    let mut s = StreamOwned::new(client_conn(pki, h), tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(Tls { s, buf: vec![] })
}

fn tls(addr: SocketAddr, pki: &Pki, h: Hello) -> Tls {
    tls_try(addr, pki, h).unwrap_or_else(|e| panic!("TLS handshake with apex at {addr} failed ({h:?}): {e}"))
}

/// The rustls error inside an I/O error from `tls_try`, if any.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

/// Reads plaintext into `buf`; Ok(0) at the end of the TLS stream (close_notify or a TCP close).
fn tls_fill(s: &mut StreamOwned<ClientConnection, TcpStream>, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut tmp = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut tmp) {
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

impl Tls {
    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("TLS write to apex");
        self.s.flush().expect("TLS flush to apex");
    }

    /// Sends `b` as one TLS record in one socket write (`b` must fit in a record).
    fn send_one_record(&mut self, b: &[u8]) {
        assert!(b.len() <= 16 << 10, "{} bytes do not fit in one TLS record", b.len());
        self.s.conn.writer().write_all(b).unwrap();
        let mut out = vec![];
        while self.s.conn.wants_write() {
            self.s.conn.write_tls(&mut out).unwrap();
        }
        self.s.sock.write_all(&out).expect("write to apex");
    }

    fn try_read_response(&mut self, no_body: bool) -> Result<Response, String> {
        let s = &mut self.s;
        read_response_from(&mut self.buf, no_body, |buf| tls_fill(s, buf))
    }

    fn read_response(&mut self) -> Response {
        self.try_read_response(false).unwrap_or_else(|e| panic!("reading a response over TLS: {e}"))
    }

    /// Sends `req` and reads one final response (1xx skipped).
    fn request(&mut self, req: &[u8]) -> Response {
        self.send(req);
        for _ in 0..10 {
            let r = self.read_response();
            if !(100..200).contains(&r.status) {
                return r;
            }
        }
        panic!("more than 10 interim responses")
    }

    /// Reads until the TLS stream ends or `d` passes: (plaintext, ended).
    fn read_until_close(&mut self, d: Duration) -> (Vec<u8>, bool) {
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

    fn version(&self) -> Option<ProtocolVersion> {
        self.s.conn.protocol_version()
    }

    fn alpn(&self) -> Option<String> {
        self.s.conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned())
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.s.conn.peer_certificates().map(<[_]>::to_vec).unwrap_or_default()
    }
}

/// The first TLS flight of a client: a ClientHello record.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let mut conn = client_conn(pki, Hello::to("a.test"));
    let mut out = vec![];
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    assert!(out.len() > 50 && out[0] == 0x16, "not a handshake record: {out:?}");
    out
}

/// What Apex may send on a connection it refuses at the TLS layer: nothing, or TLS alert records
/// (content type 21); never plaintext such as an HTTP response.
fn assert_nothing_or_alert(bytes: &[u8], what: &str) {
    assert!(
        bytes.is_empty() || (bytes.len() >= 7 && bytes[0] == 0x15 && bytes[1] == 3),
        "{what}: expected a plain close, maybe after a TLS alert; got {} bytes {:?}",
        bytes.len(),
        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
    );
}

/// A TLS request through Apex still works (and so does a plain one).
fn assert_serving(apex: &Apex, pki: &Pki, path: &str) {
    let mut t = tls(tls_addr(apex), pki, Hello::to("a.test"));
    let r = t.request(&get("a.test", path));
    assert_eq!(r.status, 200, "TLS request after the test: {}", r.head_str());
    let r = apex.client().request(&get("h", path));
    assert_eq!(r.status, 200, "plain request after the test: {}", r.head_str());
}

/// Answers 200 with `METHOD TARGET BODY` for every request.
fn echo_all() -> Upstream {
    Upstream::http(|r| ok(&format!("{} {} {}", r.method, r.target, String::from_utf8_lossy(&r.body))))
}

/// 200 with Content-Length and the request body as the body.
fn echo_body(r: &Req) -> Vec<u8> {
    let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", r.body.len()).into_bytes();
    v.extend_from_slice(&r.body);
    v
}

fn pattern_bytes(n: usize) -> Vec<u8> {
    (0..n as u64).map(pattern).collect()
}

/// `intact N`, or where `body` first departs from the pattern.
fn pattern_verdict(body: &[u8]) -> String {
    match body.iter().enumerate().position(|(i, b)| *b != pattern(i as u64)) {
        None => format!("intact {}", body.len()),
        Some(i) => format!("corrupt at byte {i} of {}", body.len()),
    }
}

// ---------------------------------------------------------------- proxying over TLS

#[test]
fn tls12_and_tls13_requests_are_proxied_with_x_forwarded_proto_https() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    for (v, want) in versions() {
        let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test").v(v));
        assert_eq!(t.version(), Some(want));
        // A client-sent X-Forwarded-Proto is replaced, as on plain connections.
        let r = t.request(b"GET /secure?x=1 HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-Proto: http\r\n\r\n");
        assert_eq!(r.status, 200, "{want:?}: {}", r.head_str());
        assert_eq!(r.body_str(), "/secure?x=1", "{want:?}");
    }
    let r = apex.client().request(&get("plain.test", "/plain"));
    assert_eq!(r.status, 200);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3, "{reqs:#?}");
    for r in &reqs[..2] {
        assert_eq!(r.target, "/secure?x=1");
        assert_eq!(r.headers_named("x-forwarded-proto"), vec!["https"], "over TLS:\n{}", r.head_str());
        assert_eq!(r.headers_named("host"), vec!["a.test"], "{}", r.head_str());
        assert_eq!(r.headers_named("x-forwarded-for"), vec!["127.0.0.1"], "{}", r.head_str());
    }
    assert_eq!(reqs[2].headers_named("x-forwarded-proto"), vec!["http"], "plain:\n{}", reqs[2].head_str());
}

#[test]
fn listeners_are_announced_plain_first_then_tls() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let (plain2, tls2) = (dead_addr(), dead_addr());
    let section =
        pki.section().replacen("listen = [\"127.0.0.1:0\"]", &format!("listen = [\"127.0.0.1:0\", \"{tls2}\"]"), 1);
    let toml = Config::to(up.addr).append(&section).render().replacen(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"127.0.0.1:0\", \"{plain2}\"]"),
        1,
    );
    let apex = Apex::start_toml(&toml);
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines: Vec<String> =
            apex.stdout_lines().into_iter().filter(|l| l.starts_with("apex: listening on ")).collect();
        if lines.len() >= 4 || Instant::now() > deadline {
            break lines;
        }
        thread::sleep(ms(10));
    };
    assert_eq!(lines.len(), 4, "two plain and two TLS listening lines expected: {lines:#?}");
    let addr_of = |l: &str| -> SocketAddr {
        let a = l.trim_start_matches("apex: listening on ").trim_end_matches(" tls").trim();
        a.parse().unwrap_or_else(|_| panic!("bad address in {l:?}"))
    };
    let is_tls: Vec<bool> = lines.iter().map(|l| l.trim_end().ends_with(" tls")).collect();
    assert_eq!(is_tls, vec![false, false, true, true], "plain lines first, then ` tls` lines: {lines:#?}");
    let addrs: Vec<SocketAddr> = lines.iter().map(|l| addr_of(l)).collect();
    assert!(addrs.iter().all(|a| a.port() != 0), "real ports are printed: {lines:#?}");
    assert!(addrs[..2].contains(&plain2) && addrs[2..].contains(&tls2), "{lines:#?}");
    assert_eq!(apex.addr, addrs[0], "Apex::addr is the first plain listener");
    assert_eq!(apex.tls_addr, Some(addrs[2]), "Apex::tls_addr is the first TLS listener");
    for (i, a) in addrs.iter().enumerate() {
        let path = format!("/listener{i}");
        let r = if is_tls[i] {
            tls(*a, &pki, Hello::to("a.test")).request(&get("a.test", &path))
        } else {
            Client::connect(*a).request(&get("h", &path))
        };
        assert_eq!((r.status, r.body_str()), (200, path), "listener {a}");
    }
}

#[test]
fn alpn_selects_http11_and_refuses_h2_only() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    let addr = tls_addr(&apex);
    for (v, want) in versions() {
        let offers: [(&'static [&'static str], Option<&str>); 3] =
            [(&["h2", "http/1.1"], Some("http/1.1")), (&["http/1.1"], Some("http/1.1")), (&[], None)];
        for (offer, chosen) in offers {
            let mut t = tls(addr, &pki, Hello::to("a.test").v(v).alpn(offer));
            assert_eq!(t.alpn().as_deref(), chosen, "{want:?}, client offers {offer:?}");
            let r = t.request(&get("a.test", "/alpn"));
            assert_eq!(r.status, 200, "{want:?}, client offers {offer:?}: {}", r.head_str());
        }
        match tls_try(addr, &pki, Hello::to("a.test").v(v).alpn(&["h2"])) {
            Ok(t) => panic!("{want:?}: a client offering only h2 completed a handshake; ALPN {:?}", t.alpn()),
            Err(e) => assert!(
                matches!(rustls_error(&e), Some(rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol))),
                "{want:?}: a client offering only h2 must get a no_application_protocol alert, got: {e}"
            ),
        }
    }
    assert_serving(&apex, &pki, "/after");
}

#[test]
fn keep_alive_many_requests_on_one_tls_connection() {
    let up = echo_all();
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    for (v, want) in versions() {
        let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test").v(v));
        for i in 0..150 {
            let (req, expect) = match i % 3 {
                0 => (get("a.test", &format!("/k{i}")), format!("GET /k{i} ")),
                1 => (
                    format!("POST /k{i} HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nbody{}", i % 10)
                        .into_bytes(),
                    format!("POST /k{i} body{}", i % 10),
                ),
                _ => {
                    let mut req = format!("POST /k{i} HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .into_bytes();
                    req.extend_from_slice(&chunked(&[b"chun", b"ked"]));
                    (req, format!("POST /k{i} chunked"))
                }
            };
            t.send(&req);
            let r = t.try_read_response(false).unwrap_or_else(|e| panic!("{want:?}, request {i}: {e}"));
            assert_eq!(r.status, 200, "{want:?}, request {i}: {}", r.head_str());
            assert_eq!(r.body_str(), expect, "{want:?}, request {i}");
            assert!(!r.has_token("connection", "close"), "{want:?}, request {i}: {}", r.head_str());
        }
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 300);
    assert!(reqs.iter().all(|r| r.headers_named("x-forwarded-proto") == ["https"]), "every request is https");
}

#[test]
fn pipelined_requests_in_one_tls_record_are_answered_in_order() {
    let up = echo_all();
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    for (v, want) in versions() {
        let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test").v(v));
        let mut all = vec![];
        let mut expect = vec![];
        for i in 0..40 {
            all.extend_from_slice(&get("a.test", &format!("/p{i}")));
            expect.push(format!("GET /p{i} "));
        }
        all.extend_from_slice(b"POST /cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc");
        expect.push("POST /cl abc".into());
        all.extend_from_slice(b"POST /ch HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n");
        all.extend_from_slice(&chunked(&[b"de", b"f"]));
        expect.push("POST /ch def".into());
        all.extend_from_slice(&get("a.test", "/last"));
        expect.push("GET /last ".into());
        t.send_one_record(&all);
        for (i, e) in expect.iter().enumerate() {
            let r = t.try_read_response(false).unwrap_or_else(|err| panic!("{want:?}, response {i}: {err}"));
            assert_eq!((r.status, r.body_str()), (200, e.clone()), "{want:?}, response {i}");
        }
    }
}

#[test]
fn content_length_and_chunked_bodies_both_ways_over_tls() {
    // /cl echoes the body with Content-Length, /chunked echoes it chunked in two chunks.
    let up = Upstream::http(|r| {
        if r.target == "/chunked" {
            let half = r.body.len() / 2;
            let mut v = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            v.extend_from_slice(&chunked(&[&r.body[..half], &r.body[half..]]));
            v
        } else {
            echo_body(r)
        }
    });
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test"));
    let r = t.request(b"POST /cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: 11\r\n\r\nhello there");
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello there"));
    assert_eq!(r.header("content-length"), Some("11"), "{}", r.head_str());
    let r = t.request(
        b"POST /chunked HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n\
5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert!(r.has_token("transfer-encoding", "chunked"), "{}", r.head_str());
    assert_eq!(r.body_str(), "hello world");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body, b"hello there");
    let body = canonical_chunked(&reqs[1].body_raw)
        .unwrap_or_else(|e| panic!("chunked body not re-framed canonically ({e}): {:?}", reqs[1].body_raw));
    assert_eq!(body, b"hello world");
}

/// Over 1 MiB, and not a multiple of any buffer or record size.
const BIG: usize = (3 << 20) + 4321;

#[test]
fn large_uploads_over_tls_arrive_byte_for_byte() {
    let up = Upstream::http(|r| ok(&pattern_verdict(&r.body)));
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    let data = pattern_bytes(BIG);
    for (v, want) in versions() {
        let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test").v(v));
        t.send(format!("POST /cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: {BIG}\r\n\r\n").as_bytes());
        t.send(&data);
        let r = t.read_response();
        assert_eq!((r.status, r.body_str()), (200, format!("intact {BIG}")), "{want:?}, Content-Length upload");
        t.send(b"POST /chunked HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n");
        for part in data.chunks(100_000) {
            t.send(format!("{:x}\r\n", part.len()).as_bytes());
            t.send(part);
            t.send(b"\r\n");
        }
        t.send(b"0\r\n\r\n");
        let r = t.read_response();
        assert_eq!((r.status, r.body_str()), (200, format!("intact {BIG}")), "{want:?}, chunked upload");
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 4);
    for r in reqs.iter().filter(|r| r.target == "/chunked") {
        assert!(r.has_token("transfer-encoding", "chunked"), "{}", r.head_str());
        canonical_chunked(&r.body_raw).unwrap_or_else(|e| panic!("upstream chunked framing: {e}"));
    }
}

#[test]
fn large_downloads_over_tls_arrive_byte_for_byte() {
    let data = Arc::new(pattern_bytes(BIG));
    let body = data.clone();
    let up = Upstream::start(move |mut c| {
        while let Some(r) = c.read_request() {
            let mut resp;
            if r.target == "/chunked" {
                resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for part in body.chunks(65_000) {
                    resp.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    resp.extend_from_slice(part);
                    resp.extend_from_slice(b"\r\n");
                }
                resp.extend_from_slice(b"0\r\n\r\n");
            } else {
                resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                resp.extend_from_slice(&body);
            }
            if c.write(&resp).is_err() {
                return;
            }
        }
    });
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    for (v, want) in versions() {
        // Both on one connection: the connection stays usable after a big body.
        let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test").v(v));
        for path in ["/cl", "/chunked", "/cl"] {
            let r = t.request(&get("a.test", path));
            assert_eq!(r.status, 200, "{want:?} {path}: {}", r.head_str());
            assert_eq!(pattern_verdict(&r.body), format!("intact {BIG}"), "{want:?} {path}");
        }
    }
}

#[test]
fn incomplete_request_head_over_tls_gets_408() {
    let up = Upstream::silent();
    let pki = Pki::new();
    let apex = Apex::start(&Config::to(up.addr).timeout("client_head", "1s").append(&pki.section()));
    let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test"));
    t.send(b"GET /slow HTTP/1.1\r\nHost: a.test\r\n");
    let r = t.try_read_response(false).unwrap_or_else(|e| panic!("expected a 408 over TLS: {e}"));
    assert_apex_status(&r, 408);
    assert!(r.has_token("connection", "close"), "{}", r.head_str());
    let (rest, closed) = t.read_until_close(Duration::from_secs(10));
    assert!(closed, "the TLS connection must close after the 408");
    assert!(rest.is_empty(), "bytes after the 408: {:?}", String::from_utf8_lossy(&rest));
    up.assert_untouched();
}

// ---------------------------------------------------------------- hostile clients on the TLS port

#[test]
fn stalled_handshakes_are_closed_after_client_head_while_others_are_served() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    // One worker: a stalled handshake must not hold it.
    let apex = Apex::start(&Config::to(up.addr).timeout("client_head", "4s").append(&pki.section()));
    let addr = tls_addr(&apex);
    let hello = client_hello(&pki);
    let mut half = Client::connect(addr);
    half.send(&hello[..hello.len() / 2]);
    let mut mute = Client::connect(addr);
    for (v, want) in versions() {
        for i in 0..3 {
            let mut t = tls(addr, &pki, Hello::to("a.test").v(v));
            let path = format!("/meanwhile{i}");
            let r = t.request(&get("a.test", &path));
            assert_eq!((r.status, r.body_str()), (200, path), "{want:?}: a client served beside stalled ones");
        }
    }
    for (what, c) in [("half a ClientHello", &mut half), ("nothing", &mut mute)] {
        assert_eq!(
            c.wait(ms(10)),
            Seen::Silent,
            "the client that sent {what} was closed before the other clients were served; client_head \
             is 4s, so the stalled handshake held the worker (or this machine took 4 s for 6 handshakes)"
        );
    }
    for (what, c) in [("half a ClientHello", &mut half), ("nothing", &mut mute)] {
        let (bytes, closed) = c.read_until_close(Duration::from_secs(20));
        assert!(closed, "the client that sent {what} is still connected 20 s after client_head = 4s");
        assert_nothing_or_alert(&bytes, what);
    }
    assert_eq!(up.requests().len(), 6, "only the served clients' requests reach the upstream");
    assert_serving(&apex, &pki, "/after");
}

#[test]
fn garbage_on_the_tls_port_is_closed_and_apex_keeps_serving() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    // client_head bounds a server that waits for more instead of refusing at once.
    let apex = Apex::start(&Config::to(up.addr).timeout("client_head", "2s").append(&pki.section()));
    let addr = tls_addr(&apex);
    let mut junk = vec![0x16, 0x03, 0x01, 0x00, 0x20];
    junk.extend_from_slice(&[0xab; 32]);
    let cases: [(&str, Vec<u8>); 5] = [
        ("a plain HTTP request", get("a.test", "/plain-on-tls")),
        ("a plain HTTP request with a body", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc".to_vec()),
        ("a record header claiming 64 KiB", [&[0x16u8, 0x03, 0x01, 0xff, 0xff][..], &[0x42u8; 100][..]].concat()),
        ("a handshake record of junk", junk),
        ("zero bytes", vec![0; 4096]),
    ];
    for (what, bytes) in &cases {
        let mut c = Client::connect(addr);
        let _ = c.try_send(bytes);
        let (got, closed) = c.read_until_close(Duration::from_secs(15));
        assert!(closed, "after {what} on the TLS port the connection is still open 15 s later");
        assert_nothing_or_alert(&got, what);
    }
    up.assert_untouched();
    let mut apex = apex;
    assert!(apex.is_running(), "apex exited; stderr:\n{}", apex.stderr());
    assert_serving(&apex, &pki, "/after-garbage");
}

// ---------------------------------------------------------------- SNI

/// Handshakes with `h` and asserts the certificate served (`want` is "A" or "B") and that a
/// request works on it.
fn assert_cert(addr: SocketAddr, pki: &Pki, h: Hello, want: &str) {
    let mut t = tls(addr, pki, h);
    let chain = t.chain();
    assert_eq!(pki.which(&chain), want, "certificate served for {h:?}");
    let leaf = if want == "A" { &pki.a } else { &pki.b };
    assert!(chain == leaf.ders, "the whole chain file is served, leaf first ({} certificates)", leaf.ders.len());
    let r = t.request(&get(h.sni.unwrap_or("nosni.test"), "/sni"));
    assert_eq!(r.status, 200, "{h:?}: {}", r.head_str());
}

#[test]
fn sni_selects_the_certificate_and_the_first_is_the_default() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    let addr = tls_addr(&apex);
    for (v, _) in versions() {
        assert_cert(addr, &pki, Hello::to("a.test").v(v), "A");
        assert_cert(addr, &pki, Hello::to("b.test").v(v), "B");
        assert_cert(addr, &pki, Hello::to("x.a.test").v(v), "A");
        assert_cert(addr, &pki, Hello::to("unknown.test").valid_for("a.test").v(v), "A");
        assert_cert(addr, &pki, Hello::to("a.test").no_sni().v(v), "A");
    }
}

#[test]
fn sni_wildcard_matches_one_label_and_default_follows_order() {
    // B first: now the default is B, so a wildcard match on A is not the default in disguise.
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let apex =
        Apex::start(&Config::to(up.addr).append(&tls_section(Some(false), &[(&pki.b, B_NAMES), (&pki.a, A_NAMES)])));
    let addr = tls_addr(&apex);
    for (v, _) in versions() {
        assert_cert(addr, &pki, Hello::to("x.a.test").v(v), "A");
        assert_cert(addr, &pki, Hello::to("a.test").v(v), "A");
        assert_cert(addr, &pki, Hello::to("b.test").v(v), "B");
        assert_cert(addr, &pki, Hello::to("y.x.a.test").valid_for("b.test").v(v), "B");
        assert_cert(addr, &pki, Hello::to("unknown.test").valid_for("b.test").v(v), "B");
        assert_cert(addr, &pki, Hello::to("b.test").no_sni().v(v), "B");
    }
}

#[test]
fn strict_sni_refuses_names_no_certificate_serves() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let apex =
        Apex::start(&Config::to(up.addr).append(&tls_section(Some(true), &[(&pki.a, A_NAMES), (&pki.b, B_NAMES)])));
    let addr = tls_addr(&apex);
    for (v, want) in versions() {
        assert_cert(addr, &pki, Hello::to("a.test").v(v), "A");
        assert_cert(addr, &pki, Hello::to("x.a.test").v(v), "A");
        assert_cert(addr, &pki, Hello::to("b.test").v(v), "B");
        for name in ["unknown.test", "y.x.a.test"] {
            if let Ok(t) = tls_try(addr, &pki, Hello::to(name).valid_for("a.test").v(v)) {
                panic!("{want:?}: strict_sni served SNI {name} with certificate {}", pki.which(&t.chain()));
            }
        }
    }
    assert_eq!(up.requests().len(), 6, "only the accepted handshakes sent requests");
    assert_serving(&apex, &pki, "/after-strict");
}

// ---------------------------------------------------------------- certificate and key files

#[test]
fn sec1_and_pkcs1_keys_are_accepted() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    // B's key as SEC1 ("EC PRIVATE KEY").
    let sec1 = dir.join("b.sec1.key");
    openssl(&["ec", "-in", path_str(&pki.b.key), "-out", path_str(&sec1)]);
    let text = std::fs::read_to_string(&sec1).unwrap();
    assert!(text.contains("BEGIN EC PRIVATE KEY"), "openssl ec did not write SEC1:\n{text}");
    // C: an RSA key, PKCS#1 ("RSA PRIVATE KEY"), for c.test, signed by the root.
    let p8 = dir.join("c.p8.key");
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path_str(&p8)]);
    let rsa = KeyPair::from_pem(&std::fs::read_to_string(&p8).unwrap()).unwrap();
    let c = sign_leaf(&pki.dir, "c", &["c.test"], &rsa, &pki.root, &[]);
    openssl(&["rsa", "-in", path_str(&p8), "-traditional", "-out", path_str(&c.key)]);
    let text = std::fs::read_to_string(&c.key).unwrap();
    assert!(text.contains("BEGIN RSA PRIVATE KEY"), "openssl rsa did not write PKCS#1:\n{text}");

    let up = Upstream::echo_path();
    let section = format!(
        "{}{}",
        tls_section(None, &[(&pki.a, A_NAMES)]),
        [cert_entry(&pki.b.chain, &sec1, B_NAMES), cert_entry(&c.chain, &c.key, &["c.test"])].concat()
    );
    let apex = Apex::start(&Config::to(up.addr).append(&section));
    let addr = tls_addr(&apex);
    for (v, want) in versions() {
        assert_cert(addr, &pki, Hello::to("b.test").v(v), "B");
        let mut t = tls(addr, &pki, Hello::to("c.test").v(v));
        assert!(t.chain() == c.ders, "{want:?}: c.test must get the RSA certificate C");
        let r = t.request(&get("c.test", "/rsa"));
        assert_eq!(r.status, 200, "{want:?}: {}", r.head_str());
    }
}

/// Starts `apex FILE` with `section` and asserts it exits non-zero at start, without a panic,
/// naming one of `paths` and (case-insensitively) containing every one of `words`.
fn assert_refused(section: &str, paths: &[&Path], words: &[&str]) {
    let dir = TempDir::new("badtls");
    let conf = dir.write("apex.toml", &Config::to(dead_addr()).append(section).render());
    let (code, _out, err) = run_apex(&[path_str(&conf)]);
    assert!(!err.contains("panicked"), "apex panicked:\n{err}\nconfig:\n{section}");
    assert!(code.is_some() && code != Some(0), "exit code {code:?}, expected a start-up error; stderr:\n{err}");
    assert!(
        paths.iter().any(|p| err.contains(path_str(p))),
        "stderr must name the file at fault (one of {paths:?}):\n{err}"
    );
    let low = err.to_ascii_lowercase();
    for w in words {
        assert!(low.contains(&w.to_ascii_lowercase()), "stderr must say {w:?}:\n{err}");
    }
}

#[test]
fn missing_chain_file_is_refused_at_start() {
    let pki = Pki::new();
    let missing = pki.dir.path().join("missing.pem");
    let section = format!("{}{}", tls_section(None, &[(&pki.a, A_NAMES)]), cert_entry(&missing, &pki.b.key, B_NAMES));
    assert_refused(&section, &[&missing], &[]);
}

#[test]
fn missing_key_file_is_refused_at_start() {
    let pki = Pki::new();
    let missing = pki.dir.path().join("missing.key");
    let section = format!("{}{}", tls_section(None, &[(&pki.a, A_NAMES)]), cert_entry(&pki.b.chain, &missing, B_NAMES));
    assert_refused(&section, &[&missing], &[]);
}

#[test]
fn key_not_matching_the_certificate_is_refused_at_start() {
    let pki = Pki::new();
    // B's chain with A's key.
    let section =
        format!("{}{}", tls_section(None, &[(&pki.a, A_NAMES)]), cert_entry(&pki.b.chain, &pki.a.key, B_NAMES));
    assert_refused(&section, &[&pki.b.chain, &pki.a.key], &["does not match"]);
}

#[test]
fn names_the_certificate_does_not_cover_are_refused_at_start() {
    let pki = Pki::new();
    let section = tls_section(None, &[(&pki.a, A_NAMES), (&pki.b, &["b.test", "c.test"])]);
    assert_refused(&section, &[&pki.b.chain], &["c.test"]);
    // A wildcard the certificate does not hold is not covered by an exact name either.
    let section = tls_section(None, &[(&pki.a, A_NAMES), (&pki.b, &["b.test", "*.b.test"])]);
    assert_refused(&section, &[&pki.b.chain], &["*.b.test"]);
}

// ---------------------------------------------------------------- curl and openssl s_client

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Fails with a clear message when `tool` is not installed.
fn require(tool: &str) {
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
fn run_tool(tool: &str, args: &[&str], input: &[u8], limit: Duration) -> (Option<i32>, Vec<u8>, String) {
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

fn openssl(args: &[&str]) {
    let (code, _, err) = run_tool("openssl", args, b"", Duration::from_secs(60));
    assert_eq!(code, Some(0), "openssl {args:?} failed:\n{err}");
}

/// `curl -v https://HOST:PORT/PATH` resolved to the TLS listener, trusting the test root:
/// (exit code, `HTTP_CODE HTTP_VERSION`, verbose stderr, body).
fn curl(addr: SocketAddr, pki: &Pki, host: &str, path: &str, extra: &[&str]) -> (Option<i32>, String, String, Vec<u8>) {
    let out = pki.dir.path().join("curl.out");
    let _ = std::fs::remove_file(&out);
    let resolve = format!("{host}:{}:127.0.0.1", addr.port());
    let url = format!("https://{host}:{}{path}", addr.port());
    let mut args = vec![
        "-sS",
        "-v",
        "--max-time",
        "30",
        "--cacert",
        path_str(&pki.ca),
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

#[test]
fn curl_gets_and_posts_over_tls12_and_tls13() {
    let up = Upstream::http(|r| if r.method == "POST" { echo_body(r) } else { ok(&r.target) });
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    let addr = tls_addr(&apex);
    let upload = pki.dir.write("upload.bin", "");
    let data = pattern_bytes((3 << 19) + 7);
    std::fs::write(&upload, &data).unwrap();
    let data_arg = format!("@{}", path_str(&upload));
    for (flags, want) in [(&["--tlsv1.2", "--tls-max", "1.2"][..], "TLSv1.2"), (&["--tlsv1.3"][..], "TLSv1.3")] {
        // curl checks the name, so each success also shows SNI chose a certificate for the host.
        for host in ["a.test", "b.test", "x.a.test"] {
            let path = format!("/curl/{host}");
            let (code, w, err, body) = curl(addr, &pki, host, &path, flags);
            assert_eq!(code, Some(0), "curl {flags:?} https://{host}/ failed:\n{err}");
            assert_eq!(w, "200 1.1", "curl {flags:?} {host}: status and HTTP version;\n{err}");
            assert_eq!(String::from_utf8_lossy(&body), path, "curl {flags:?} {host}");
            assert!(err.contains(&format!("SSL connection using {want}")), "curl {flags:?}: not {want}:\n{err}");
            assert!(
                err.lines().any(|l| l.contains("ALPN") && l.contains("accepted") && l.contains("http/1.1")),
                "curl {flags:?}: the server must accept ALPN http/1.1:\n{err}"
            );
        }
        let extra =
            [flags, &["--data-binary", data_arg.as_str(), "-H", "Content-Type: application/octet-stream"][..]].concat();
        let (code, w, err, body) = curl(addr, &pki, "a.test", "/curl/upload", &extra);
        assert_eq!(code, Some(0), "curl {flags:?} upload failed:\n{err}");
        assert_eq!(w, "200 1.1", "curl {flags:?} upload;\n{err}");
        assert_eq!(body.len(), data.len(), "curl {flags:?}: echoed upload length");
        assert!(body == data, "curl {flags:?}: echoed upload differs: {}", pattern_verdict(&body));
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 8);
    assert!(reqs.iter().all(|r| r.headers_named("x-forwarded-proto") == ["https"]), "every curl request is https");
}

#[test]
fn openssl_s_client_negotiates_http11_with_sni_over_tls12_and_tls13() {
    let up = Upstream::echo_path();
    let pki = Pki::new();
    let apex = start_tls(&up, &pki);
    let connect = tls_addr(&apex).to_string();
    for (flag, want) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let args = [
            "s_client",
            "-connect",
            connect.as_str(),
            "-servername",
            "b.test",
            "-alpn",
            "http/1.1",
            "-CAfile",
            path_str(&pki.ca),
            "-verify_hostname",
            "b.test",
            "-verify_return_error",
            "-ign_eof",
            "-nocommands",
            flag,
        ];
        let req = b"GET /ossl HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n";
        let (code, out, err) = run_tool("openssl", &args, req, Duration::from_secs(30));
        let out = String::from_utf8_lossy(&out);
        assert!(
            code.is_some(),
            "openssl s_client {flag} still running after 30 s (apex did not close after `Connection: close`?):\n{out}\n{err}"
        );
        assert!(out.contains(&format!("New, {want},")), "{flag}: not {want}:\n{out}\n{err}");
        assert!(out.contains("ALPN protocol: http/1.1"), "{flag}: ALPN http/1.1 not negotiated:\n{out}\n{err}");
        // -verify_hostname b.test: only certificate B is valid for it.
        assert!(out.contains("Verify return code: 0 (ok)"), "{flag}: certificate not valid for b.test:\n{out}\n{err}");
        assert!(out.contains("HTTP/1.1 200 "), "{flag}: no response:\n{out}\n{err}");
        assert!(out.contains("/ossl"), "{flag}: response body missing:\n{out}\n{err}");
    }
    assert_eq!(up.requests().len(), 2);
}
