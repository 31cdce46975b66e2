//! TLS to upstream groups (`tls`, `tls_name`, `tls_ca` in `[upstream.NAME]`): requests reach a
//! TLS origin unchanged (bodies both ways, Content-Length and chunked, large ones), with SNI =
//! `tls_name` (none without it, the certificate then covering the IP), ALPN http/1.1, TLS 1.2 and
//! 1.3; upstream TLS connections pooled like plain ones; a server failing verification (unknown
//! CA, wrong name, expired, not TLS at all) skipped like one refusing connections, 502 when none
//! is left; TLS clients to TLS upstreams; bad TLS settings refused at start; TLS 1.3 session
//! tickets and KeyUpdates from the origin on a pooled connection.
//! The origin is in-test: std TcpListener + rustls `Acceptor`/`ServerConnection` per connection,
//! keep-alive HTTP/1.1, recording per connection what the ClientHello offered (SNI, ALPN), what
//! was negotiated, and every request. Certificates are made per test with rcgen.

use crate::harness::*;
use crate::tls_kit::*;
use rustls::crypto::ring::cipher_suite;
use rustls::server::Acceptor;
use rustls::{
    CipherSuite, ProtocolVersion, ServerConfig, ServerConnection, StreamOwned, SupportedCipherSuite,
    SupportedProtocolVersion,
};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Longest a TLS origin connection waits for bytes (or a handshake step) before giving up.
const UP_DEADLINE: Duration = Duration::from_secs(30);
/// Read timeout of origin sockets: how often a connection thread looks at the stop flag.
const UP_POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------- certificates

/// The test PKI (see `Root`); Apex is given the root's `ca` as `tls_ca`.
/// - `api`: api.test (DNS SAN only), root -> intermediate -> leaf, served with the intermediate;
/// - `ip`: IP SAN 127.0.0.1 only, signed by the root;
/// - `expired`: api.test, valid 2020-01-01..2021-01-01, signed by the root;
/// - `foreign`: api.test, signed by another root Apex does not trust (`other_ca`);
/// - `front`: a.test, for Apex's own `[tls]` listener, signed by the root.
struct Pki {
    root: Root,
    other_ca: PathBuf,
    api: Leaf,
    ip: Leaf,
    expired: Leaf,
    foreign: Leaf,
    front: Leaf,
}

impl AsRef<Root> for Pki {
    fn as_ref(&self) -> &Root {
        &self.root
    }
}

impl Pki {
    fn new() -> Pki {
        let root = Root::new("uptls", "Apex Upstream Test Root");
        let dir = &root.dir;
        let (mid, mid_cert) = intermediate_ca("Apex Upstream Test Intermediate", &root.issuer);
        let (other, other_cert) = self_signed_ca("Some Other Root");
        let other_ca = dir.write("other-ca.pem", &other_cert.pem());

        let api = sign_leaf(dir, "api", &["api.test"], &new_key(), &mid, &[&mid_cert], |_| {});
        let ip = sign_leaf(dir, "ip", &["127.0.0.1"], &new_key(), &root.issuer, &[], |_| {});
        let expired = sign_leaf(dir, "expired", &["api.test"], &new_key(), &root.issuer, &[], |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        });
        let foreign = sign_leaf(dir, "foreign", &["api.test"], &new_key(), &other, &[], |_| {});
        let front = sign_leaf(dir, "front", &["a.test"], &new_key(), &root.issuer, &[], |_| {});
        Pki { root, other_ca, api, ip, expired, foreign, front }
    }

    /// Apex's own `[tls]` listener on 127.0.0.1:0, serving `front` for a.test.
    fn front_section(&self) -> String {
        tls_section(None, &[(&self.front, &["a.test"])])
    }

    /// An origin config serving `leaf`: TLS 1.2 and 1.3, every ring cipher suite.
    fn server(&self, leaf: &Leaf) -> Arc<ServerConfig> {
        server_config(leaf, rustls::ALL_VERSIONS, None)
    }
}

/// An origin config: ALPN http/1.1 only, 4 TLS 1.3 session tickets after each handshake, secrets
/// extractable (to count the records received under the current key); `suites` None = all.
fn server_config(
    leaf: &Leaf,
    versions: &[&'static SupportedProtocolVersion],
    suites: Option<Vec<SupportedCipherSuite>>,
) -> Arc<ServerConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(s) = suites {
        provider.cipher_suites = s;
    }
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.ders.clone(), leaf.private_key())
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.enable_secret_extraction = true;
    cfg.send_tls13_tickets = 4;
    Arc::new(cfg)
}

// ---------------------------------------------------------------- config

/// `[upstream.NAME]` speaking TLS to `servers`, with `tls_name` / `tls_ca` when given and a
/// 10 s cooldown.
pub(crate) fn tls_group(name: &str, servers: &[SocketAddr], tls_name: Option<&str>, tls_ca: Option<&Path>) -> String {
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    let mut t = format!("\n[upstream.{name}]\nservers = [{}]\ntls = true\ncooldown = \"10s\"\n", list.join(", "));
    if let Some(n) = tls_name {
        t += &format!("tls_name = \"{n}\"\n");
    }
    if let Some(p) = tls_ca {
        t += &format!("tls_ca = \"{}\"\n", p.display());
    }
    t
}

/// A plain `[upstream.NAME]`.
fn plain_group(name: &str, servers: &[SocketAddr]) -> String {
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    format!("\n[upstream.{name}]\nservers = [{}]\ncooldown = \"10s\"\n", list.join(", "))
}

/// A config routing every request to one TLS group "api" of `servers`, verified as api.test.
fn api_config(servers: &[SocketAddr], pki: &Pki) -> Config {
    let group = tls_group("api", servers, Some("api.test"), Some(&pki.root.ca));
    Config::new().route("*", "/", "api").append(&group)
}

// ---------------------------------------------------------------- the TLS origin

/// What the origin does in answer to a request, in order.
enum Act {
    /// Writes these bytes (after any queued KeyUpdate, in the same flight) and flushes.
    Send(Vec<u8>),
    /// Queues a TLS 1.3 KeyUpdate (update_requested); it leaves with the next Send or Flush.
    KeyUpdate,
    /// Writes the TLS records queued, without application data.
    Flush,
    Pause(Duration),
    /// Ends the connection (no close_notify), once the receive record count is recorded.
    Close,
    /// Writes each of these as a record of its own, all in one socket write.
    Records(Vec<Vec<u8>>),
    /// Sends close_notify and ends the connection.
    CloseNotify,
    /// Writes raw bytes to the socket, under TLS (a forged record).
    Raw(Vec<u8>),
}

fn reply(bytes: Vec<u8>) -> Vec<Act> {
    vec![Act::Send(bytes)]
}

/// What one accepted connection saw, filled in as the connection goes.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnInfo {
    /// A ClientHello arrived (the fields below it are from it).
    hello: bool,
    sni: Option<String>,
    alpn_offered: Vec<String>,
    /// None while the handshake runs; the error as text when it failed.
    handshake: Option<Result<(), String>>,
    version: Option<ProtocolVersion>,
    suite: Option<CipherSuite>,
    /// The key exchange group negotiated (tls_pq.rs).
    pub(crate) group: Option<rustls::NamedGroup>,
    /// Full, or full with a HelloRetryRequest (tls_pq.rs).
    pub(crate) kind: Option<rustls::HandshakeKind>,
    alpn: Option<String>,
    requests: usize,
    /// Errors after the handshake (reads, writes, KeyUpdate refused).
    errors: Vec<String>,
    /// When the connection ended: records received under the receive key in use at the end
    /// (it restarts from 0 at each KeyUpdate from Apex); None if not extractable.
    rx_records_at_end: Option<u64>,
    ended: bool,
}

type Handler = dyn Fn(&Req) -> Vec<Act> + Send + Sync;

struct TlsUpState {
    stop: AtomicBool,
    accepts: AtomicUsize,
    open: AtomicUsize,
    conns: Mutex<Vec<ConnInfo>>,
    reqs: Mutex<Vec<Req>>,
}

impl Stoppable for TlsUpState {
    fn stopped(&self) -> bool {
        self.stop.load(SeqCst)
    }
}

impl TlsUpState {
    fn update(&self, index: usize, f: impl FnOnce(&mut ConnInfo)) {
        f(&mut self.conns.lock().unwrap()[index]);
    }
}

/// An in-test TLS origin on 127.0.0.1:0: one thread per accepted connection.
pub(crate) struct TlsUpstream {
    pub(crate) addr: SocketAddr,
    st: Arc<TlsUpState>,
    acceptor: Option<JoinHandle<()>>,
}

impl TlsUpstream {
    fn start(cfg: Arc<ServerConfig>, handler: impl Fn(&Req) -> Vec<Act> + Send + Sync + 'static) -> TlsUpstream {
        Self::start_with(cfg, None, handler)
    }

    /// `idle_close`: after a response, a connection idle this long is ended by the origin with a
    /// close_notify (as a backend with a short keep-alive timeout does).
    fn start_with(
        cfg: Arc<ServerConfig>,
        idle_close: Option<Duration>,
        handler: impl Fn(&Req) -> Vec<Act> + Send + Sync + 'static,
    ) -> TlsUpstream {
        let st = Arc::new(TlsUpState {
            stop: AtomicBool::new(false),
            accepts: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            conns: Mutex::new(vec![]),
            reqs: Mutex::new(vec![]),
        });
        let handler: Arc<Handler> = Arc::new(handler);
        let st2 = st.clone();
        let (addr, acceptor) = accept_loop(st.clone(), move |s| {
            let index = {
                let mut c = st2.conns.lock().unwrap();
                c.push(ConnInfo::default());
                c.len() - 1
            };
            st2.accepts.fetch_add(1, SeqCst);
            st2.open.fetch_add(1, SeqCst);
            let (st, cfg, handler) = (st2.clone(), cfg.clone(), handler.clone());
            thread::spawn(move || {
                let _open = OpenGuard(st.clone());
                serve(s, index, &cfg, idle_close, &*handler, &st);
            });
        });
        TlsUpstream { addr, st, acceptor: Some(acceptor) }
    }

    /// Answers 200 with `METHOD TARGET BODY` for every request.
    pub(crate) fn echo(cfg: Arc<ServerConfig>) -> TlsUpstream {
        Self::start(cfg, |r| reply(ok(&echo_text(r))))
    }

    fn accepts(&self) -> usize {
        self.st.accepts.load(SeqCst)
    }
    fn open(&self) -> usize {
        self.st.open.load(SeqCst)
    }
    pub(crate) fn conns(&self) -> Vec<ConnInfo> {
        self.st.conns.lock().unwrap().clone()
    }
    fn requests(&self) -> Vec<Req> {
        self.st.reqs.lock().unwrap().clone()
    }

    /// Waits up to `d` for `cond(self)`; returns whether it held.
    fn wait_for(&self, d: Duration, cond: impl Fn(&TlsUpstream) -> bool) -> bool {
        wait_until(d, || cond(self))
    }

    /// Asserts Apex never got a request through to this origin: every connection it made
    /// failed its handshake (Apex refused the certificate) and carried no request.
    fn assert_refused_by_apex(&self, what: &str) {
        // The origin thread may still be recording how the handshake ended.
        self.wait_for(Duration::from_secs(5), |u| u.conns().iter().all(|c| c.handshake.is_some()));
        let conns = self.conns();
        assert!(!conns.is_empty(), "{what}: Apex never connected to the origin");
        assert!(self.requests().is_empty(), "{what}: requests reached the origin: {:#?}", self.requests());
        for (i, c) in conns.iter().enumerate() {
            assert!(c.hello, "{what}: connection {i} sent no ClientHello: {c:?}");
            assert!(
                matches!(c.handshake, Some(Err(_))),
                "{what}: connection {i} completed its handshake; Apex must refuse the certificate during \
                 the handshake: {c:?}"
            );
        }
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.st.stop.store(true, SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

struct OpenGuard(Arc<TlsUpState>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, SeqCst);
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Reads the ClientHello (recording what it offers) and completes the handshake.
fn handshake(
    sock: &mut TcpStream,
    cfg: &Arc<ServerConfig>,
    index: usize,
    st: &TlsUpState,
) -> Result<ServerConnection, String> {
    let deadline = Instant::now() + UP_DEADLINE;
    let waited = |e: io::Error| {
        if st.stop.load(SeqCst) || Instant::now() > deadline { Err(format!("{e} (gave up waiting)")) } else { Ok(()) }
    };
    let mut acceptor = Acceptor::default();
    let accepted = loop {
        match acceptor.read_tls(sock) {
            Ok(0) => return Err("closed before a whole ClientHello".into()),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                waited(e)?;
                continue;
            }
            Err(e) => return Err(format!("reading the ClientHello: {e}")),
        }
        match acceptor.accept() {
            Ok(Some(a)) => break a,
            Ok(None) => {}
            Err((e, mut alert)) => {
                let _ = alert.write_all(sock);
                return Err(format!("bad ClientHello: {e}"));
            }
        }
    };
    {
        let hello = accepted.client_hello();
        let sni = hello.server_name().map(str::to_string);
        let alpn: Vec<String> =
            hello.alpn().map(|ps| ps.map(|p| String::from_utf8_lossy(p).into_owned()).collect()).unwrap_or_default();
        st.update(index, |i| {
            i.hello = true;
            i.sni = sni;
            i.alpn_offered = alpn;
        });
    }
    let mut conn = accepted.into_connection(cfg.clone()).map_err(|(e, mut alert)| {
        let _ = alert.write_all(sock);
        format!("handshake: {e}")
    })?;
    while conn.is_handshaking() {
        match conn.complete_io(sock) {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => waited(e)?,
            Err(e) => return Err(format!("handshake: {e}")),
        }
    }
    // The session tickets (TLS 1.3) go out now, before any request is read.
    while conn.wants_write() {
        conn.write_tls(sock).map_err(|e| format!("after the handshake: {e}"))?;
    }
    Ok(conn)
}

/// One origin connection: handshake, then keep-alive requests until EOF, `Act::Close`, the idle
/// close, an error, the stop flag or `UP_DEADLINE` without bytes.
fn serve(
    mut sock: TcpStream,
    index: usize,
    cfg: &Arc<ServerConfig>,
    idle_close: Option<Duration>,
    handler: &Handler,
    st: &Arc<TlsUpState>,
) {
    let conn = match handshake(&mut sock, cfg, index, st) {
        Ok(c) => c,
        Err(e) => {
            st.update(index, |i| {
                i.handshake = Some(Err(e));
                i.ended = true;
            });
            return;
        }
    };
    st.update(index, |i| {
        i.handshake = Some(Ok(()));
        i.version = conn.protocol_version();
        i.suite = conn.negotiated_cipher_suite().map(|s| s.suite());
        i.group = conn.negotiated_key_exchange_group().map(|g| g.name());
        i.kind = conn.handshake_kind();
        i.alpn = conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    });
    let mut c = TlsConn { s: StreamOwned::new(conn, sock), buf: vec![], index, st: st.clone(), idle_close };
    'conn: while let Some(req) = c.read_request() {
        st.reqs.lock().unwrap().push(req.clone());
        st.update(index, |i| i.requests += 1);
        for act in handler(&req) {
            let done = match act {
                Act::Send(b) => c.s.write_all(&b).and_then(|()| c.s.flush()).map_err(|e| format!("write: {e}")),
                Act::KeyUpdate => c.s.conn.refresh_traffic_keys().map_err(|e| format!("KeyUpdate: {e}")),
                Act::Flush => c.flush_tls(),
                Act::Pause(d) => {
                    thread::sleep(d);
                    Ok(())
                }
                Act::Close => break 'conn,
                Act::Records(rs) => c.write_records(&rs),
                Act::CloseNotify => {
                    c.s.conn.send_close_notify();
                    let _ = c.flush_tls();
                    break 'conn;
                }
                Act::Raw(b) => c.s.sock.write_all(&b).map_err(|e| format!("write: {e}")),
            };
            if let Err(e) = done {
                st.update(index, |i| i.errors.push(e));
                break 'conn;
            }
        }
    }
    let (conn, _sock) = c.s.into_parts();
    let rx = conn.dangerous_extract_secrets().ok().map(|s| s.rx.0);
    st.update(index, |i| {
        i.rx_records_at_end = rx;
        i.ended = true;
    });
}

struct TlsConn {
    s: StreamOwned<ServerConnection, TcpStream>,
    buf: Vec<u8>,
    index: usize,
    st: Arc<TlsUpState>,
    idle_close: Option<Duration>,
}

impl TlsConn {
    /// Seals each part as a record of its own (rustls makes one record per write) and sends
    /// them all in one socket write.
    fn write_records(&mut self, parts: &[Vec<u8>]) -> Result<(), String> {
        for p in parts {
            self.s.conn.writer().write_all(p).map_err(|e| format!("seal: {e}"))?;
        }
        let mut out = vec![];
        while self.s.conn.wants_write() {
            self.s.conn.write_tls(&mut out).map_err(|e| format!("seal: {e}"))?;
        }
        self.s.sock.write_all(&out).map_err(|e| format!("write: {e}"))
    }

    fn flush_tls(&mut self) -> Result<(), String> {
        while self.s.conn.wants_write() {
            self.s.conn.write_tls(&mut self.s.sock).map_err(|e| format!("write: {e}"))?;
        }
        Ok(())
    }

    /// Reads more plaintext: Ok(0) at the end of the stream (close_notify, EOF, the idle close);
    /// Err on errors, stop, or `UP_DEADLINE` without bytes. `between` = waiting for a request.
    fn fill(&mut self, between: bool) -> io::Result<usize> {
        let idle = if between { self.idle_close } else { None };
        let start = Instant::now();
        let mut tmp = vec![0u8; 1 << 16];
        loop {
            if self.st.stop.load(SeqCst) {
                return Err(io::Error::other("origin stopped"));
            }
            match self.s.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {
                    if let Some(d) = idle
                        && start.elapsed() > d
                    {
                        self.s.conn.send_close_notify();
                        let _ = self.flush_tls();
                        return Ok(0);
                    }
                    if start.elapsed() > UP_DEADLINE {
                        return Err(e);
                    }
                }
                Err(e) => {
                    self.st.update(self.index, |i| i.errors.push(format!("read: {e}")));
                    return Err(e);
                }
            }
        }
    }
}

impl ReadsRequests for TlsConn {
    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
    fn more(&mut self, between: bool) -> Option<()> {
        match self.fill(between) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(()),
        }
    }
    fn index(&self) -> usize {
        self.index
    }
    fn bad_body(&mut self, why: String) {
        self.st.update(self.index, |i| i.errors.push(why));
    }
}

// ---------------------------------------------------------------- HTTP helpers

fn echo_text(r: &Req) -> String {
    format!("{} {} {}", r.method, r.target, String::from_utf8_lossy(&r.body))
}

/// 200 with Content-Length and `body`, and an `X-Upstream: tls` header.
fn cl_response(body: &[u8]) -> Vec<u8> {
    let mut v = format!("HTTP/1.1 200 OK\r\nX-Upstream: tls\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    v.extend_from_slice(body);
    v
}

/// 200, chunked in pieces of `piece` bytes, with an `X-Upstream: tls` header.
fn chunked_response(body: &[u8], piece: usize) -> Vec<u8> {
    let mut v = b"HTTP/1.1 200 OK\r\nX-Upstream: tls\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in body.chunks(piece) {
        v.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        v.extend_from_slice(part);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

/// The origin of the body tests: GET /big-cl and /big-chunked download `data`; POST /echo-cl and
/// /echo-chunked send the request body back (Content-Length, chunked); anything else is echoed
/// as text.
fn bodies_origin(cfg: Arc<ServerConfig>, data: Arc<Vec<u8>>) -> TlsUpstream {
    TlsUpstream::start(cfg, move |r| {
        reply(match r.target.as_str() {
            "/big-cl" => cl_response(&data),
            "/big-chunked" => chunked_response(&data, 65_000),
            "/echo-cl" => cl_response(&r.body),
            "/echo-chunked" => chunked_response(&r.body, 100_000),
            _ => cl_response(echo_text(r).as_bytes()),
        })
    })
}

/// Sends a chunked POST of `data` (100,000-byte chunks) on `send`.
fn send_chunked_post(send: &mut dyn FnMut(&[u8]), host: &str, path: &str, data: &[u8]) {
    send(format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes());
    for part in data.chunks(100_000) {
        send(format!("{:x}\r\n", part.len()).as_bytes());
        send(part);
        send(b"\r\n");
    }
    send(b"0\r\n\r\n");
}

/// Asserts the origin's connections all completed a handshake with `sni`, ALPN offered exactly
/// [http/1.1] and http/1.1 chosen.
fn assert_handshakes(up: &TlsUpstream, sni: Option<&str>, what: &str) {
    let conns = up.conns();
    assert!(!conns.is_empty(), "{what}: no connection reached the origin");
    for (i, c) in conns.iter().enumerate() {
        assert_eq!(c.handshake, Some(Ok(())), "{what}: connection {i}: {c:?}");
        assert_eq!(c.sni.as_deref(), sni, "{what}: SNI sent on connection {i}: {c:?}");
        assert_eq!(c.alpn_offered, ["http/1.1"], "{what}: ALPN offered on connection {i}: {c:?}");
        assert_eq!(c.alpn.as_deref(), Some("http/1.1"), "{what}: ALPN chosen on connection {i}: {c:?}");
    }
}

// ---------------------------------------------------------------- 1. proxying to a TLS origin

#[test]
fn get_and_post_reach_a_tls_upstream_with_sni_alpn_and_bodies_intact() {
    let pki = Pki::new();
    let data = Arc::new(pattern_bytes(BIG));
    let up = bodies_origin(pki.server(&pki.api), data.clone());
    let apex = Apex::start(&api_config(&[up.addr], &pki));
    let mut c = apex.client();

    // The Host is the client's (not tls_name); a client-sent X-Forwarded-Proto is replaced.
    let r = c.request(b"GET /hello?x=1 HTTP/1.1\r\nHost: www.example\r\nX-Forwarded-Proto: https\r\n\r\n");
    assert_eq!((r.status, r.body_str().as_str()), (200, "GET /hello?x=1 "), "{}", r.head_str());
    assert_eq!(r.header("x-upstream"), Some("tls"), "origin headers reach the client: {}", r.head_str());

    let r = c.request(&get("www.example", "/big-cl"));
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_eq!(r.header("content-length"), Some(BIG.to_string().as_str()), "{}", r.head_str());
    assert_eq!(pattern_verdict(&r.body), format!("intact {BIG}"), "Content-Length download");

    let r = c.request(&get("www.example", "/big-chunked"));
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert!(r.has_token("transfer-encoding", "chunked"), "{}", r.head_str());
    assert_eq!(pattern_verdict(&r.body), format!("intact {BIG}"), "chunked download");

    c.send(format!("POST /echo-cl HTTP/1.1\r\nHost: www.example\r\nContent-Length: {BIG}\r\n\r\n").as_bytes());
    c.send(&data);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_eq!(pattern_verdict(&r.body), format!("intact {BIG}"), "Content-Length upload, echoed");

    send_chunked_post(&mut |b| c.send(b), "www.example", "/echo-chunked", &data);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert!(r.has_token("transfer-encoding", "chunked"), "{}", r.head_str());
    assert_eq!(pattern_verdict(&r.body), format!("intact {BIG}"), "chunked upload, echoed chunked");

    let r = c.request(b"POST /small HTTP/1.1\r\nHost: www.example\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!((r.status, r.body_str().as_str()), (200, "POST /small hello"), "{}", r.head_str());

    let reqs = up.requests();
    let targets: Vec<&str> = reqs.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/hello?x=1", "/big-cl", "/big-chunked", "/echo-cl", "/echo-chunked", "/small"]);
    for r in &reqs {
        assert_eq!(r.headers_named("x-forwarded-proto"), ["http"], "plain client side:\n{}", r.head_str());
        assert_eq!(r.headers_named("host"), ["www.example"], "{}", r.head_str());
        assert_eq!(r.headers_named("x-forwarded-for"), ["127.0.0.1"], "{}", r.head_str());
    }
    assert_eq!(reqs[3].header("content-length"), Some(BIG.to_string().as_str()), "{}", reqs[3].head_str());
    assert_eq!(pattern_verdict(&reqs[3].body), format!("intact {BIG}"), "the origin got the upload");
    assert!(reqs[4].has_token("transfer-encoding", "chunked"), "{}", reqs[4].head_str());
    canonical_chunked(&reqs[4].body_raw).unwrap_or_else(|e| panic!("chunked upload framing at the origin: {e}"));
    assert_eq!(pattern_verdict(&reqs[4].body), format!("intact {BIG}"), "the origin got the chunked upload");
    assert_handshakes(&up, Some("api.test"), "tls_name = api.test");
}

// ---------------------------------------------------------------- 2. no tls_name

#[test]
fn without_tls_name_no_sni_is_sent_and_the_certificate_must_cover_the_ip() {
    let pki = Pki::new();
    let ip_up = TlsUpstream::echo(pki.server(&pki.ip));
    let dns_up = TlsUpstream::echo(pki.server(&pki.api));
    let apex = Apex::start(
        &Config::new()
            .route("dns.test", "/", "dnsonly")
            .route("*", "/", "ip")
            .append(&tls_group("ip", &[ip_up.addr], None, Some(&pki.root.ca)))
            .append(&tls_group("dnsonly", &[dns_up.addr], None, Some(&pki.root.ca))),
    );
    let mut c = apex.client();
    for i in 0..3 {
        let path = format!("/ip/{i}");
        let r = c.request(&get("ip.test", &path));
        assert_eq!((r.status, r.body_str()), (200, format!("GET {path} ")), "IP SAN certificate: {}", r.head_str());
    }
    assert_handshakes(&ip_up, None, "no tls_name");
    assert!(ip_up.conns().iter().all(|c| c.sni.is_none()), "no SNI without tls_name: {:?}", ip_up.conns());

    // A certificate naming only api.test does not cover 127.0.0.1.
    let r = apex.client().request(&get("dns.test", "/dns"));
    assert_apex_status(&r, 502);
    dns_up.assert_refused_by_apex("DNS-only certificate, no tls_name");
    assert!(dns_up.conns().iter().all(|c| c.sni.is_none()), "no SNI without tls_name: {:?}", dns_up.conns());

    let r = c.request(&get("ip.test", "/ip/after"));
    assert_eq!(r.status, 200, "{}", r.head_str());
}

// ---------------------------------------------------------------- 3. pooling

#[test]
fn keep_alive_requests_share_one_pooled_tls_connection() {
    let pki = Pki::new();
    let up = TlsUpstream::echo(pki.server(&pki.api));
    let apex = Apex::start(&api_config(&[up.addr], &pki).timeout("upstream_idle", "1s"));
    let mut c = apex.client();
    for i in 0..50 {
        let path = format!("/seq/{i}");
        let r = try_request(&mut c, &get("h", &path)).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!((r.status, r.body_str()), (200, format!("GET {path} ")), "request {i}");
    }
    assert_eq!(up.requests().len(), 50);
    assert_eq!(up.accepts(), 1, "50 sequential keep-alive requests opened {} upstream TLS connections", up.accepts());

    // The pool is shared by clients: ten new client connections in turn reuse it too.
    for i in 0..10 {
        let r = apex.client().request(&get("h", &format!("/client/{i}")));
        assert_eq!(r.status, 200, "client {i}: {}", r.head_str());
    }
    assert_eq!(up.accepts(), 1, "ten clients in turn opened {} upstream TLS connections", up.accepts());
    assert!(up.requests().iter().all(|r| r.conn == 0), "every request on the one pooled connection");

    // upstream_idle = 1s: Apex closes the idle pooled connection, then opens a new one.
    let closed = up.wait_for(Duration::from_secs(6), |u| u.open() == 0);
    assert!(closed, "the idle pooled TLS connection is still open 6 s after upstream_idle = 1s: {:?}", up.conns());
    let r = c.request(&get("h", "/after-idle"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "GET /after-idle "), "{}", r.head_str());
    assert_eq!(up.accepts(), 2, "a new upstream TLS connection after the idle one was closed");
    assert_handshakes(&up, Some("api.test"), "pooled");
}

/// A read opens one record at a time, so records that arrive with the response's last one
/// wait inside Apex's TLS state, where no socket check sees them: a connection holding any is
/// not pooled, else the next request (another client's here) gets them as its response.
#[test]
fn records_after_the_response_keep_a_tls_connection_out_of_the_pool() {
    let pki = Pki::new();
    let up = TlsUpstream::start(pki.server(&pki.api), |r| {
        if r.target == "/first" {
            vec![Act::Records(vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec(),
                b"first".to_vec(),
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL".to_vec(),
            ])]
        } else {
            reply(ok(&echo_text(r)))
        }
    });
    let apex = Apex::start(&api_config(&[up.addr], &pki).workers(1));
    let r = apex.client().request(&get("h", "/first"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "first"), "{}", r.head_str());
    let r = apex.client().request(&get("h", "/second"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "GET /second "), "another client's response: {}", r.head_str());
    assert_eq!(up.accepts(), 2, "the connection with records after its response was pooled");
}

#[test]
fn a_tls_upstream_closing_an_idle_pooled_connection_is_not_a_failure() {
    let pki = Pki::new();
    // The origin ends a connection (close_notify, then FIN) 300 ms after its last response.
    let up = TlsUpstream::start_with(pki.server(&pki.api), Some(ms(300)), |r| reply(ok(&echo_text(r))));
    let apex = Apex::start(&api_config(&[up.addr], &pki).timeout("upstream_idle", "60s"));
    let mut c = apex.client();
    let r = c.request(&get("h", "/first"));
    assert_eq!(r.status, 200, "{}", r.head_str());
    // POSTs with a body are not retried: each must find the closed connection gone from the pool.
    for (i, req) in [
        get("h", "/get-after-close"),
        b"POST /post-after-close HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
        b"POST /post-again HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\ndef".to_vec(),
    ]
    .iter()
    .enumerate()
    {
        let closed = up.wait_for(Duration::from_secs(5), |u| u.open() == 0);
        assert!(closed, "the origin did not close its idle connection: {:?}", up.conns());
        thread::sleep(ms(200));
        let r = c.request(req);
        assert_eq!(r.status, 200, "request {i} after the origin closed the pooled connection: {}", r.head_str());
        assert_eq!(up.accepts(), i + 2, "request {i}: one new connection per closed one");
    }
    let mut apex = apex;
    assert!(apex.is_running(), "apex exited; stderr:\n{}", apex.stderr());
}

#[test]
fn upstream_idle_per_server_bounds_the_tls_pool() {
    let pki = Pki::new();
    // Slow answers make 10 concurrent requests need 10 upstream connections.
    let up = TlsUpstream::start(pki.server(&pki.api), |r| vec![Act::Pause(ms(300)), Act::Send(ok(&r.target))]);
    let apex = Apex::start(
        &api_config(&[up.addr], &pki).limit("upstream_idle_per_server", "2").timeout("upstream_idle", "60s"),
    );
    for (i, r) in burst(apex.addr, 10).iter().enumerate() {
        assert_eq!((r.status, r.body_str()), (200, format!("/{i}")));
    }
    assert!(up.accepts() > 2, "the burst used only {} upstream TLS connections", up.accepts());
    let settled = up.wait_for(Duration::from_secs(5), |u| u.open() <= 2);
    assert!(settled, "{} upstream TLS connections still open (limit 2), {} accepted", up.open(), up.accepts());
    // The kept ones are reused.
    let before = up.accepts();
    let r = apex.client().request(&get("h", "/reuse"));
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_eq!(up.accepts(), before, "a pooled TLS connection is reused");
}

// ---------------------------------------------------------------- 4. versions and suites

#[test]
fn tls12_only_and_tls13_only_upstreams_work_with_each_cipher_suite() {
    let pki = Pki::new();
    let cases: [(&'static SupportedProtocolVersion, ProtocolVersion, SupportedCipherSuite); 6] = [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2, cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2, cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        (
            &rustls::version::TLS12,
            ProtocolVersion::TLSv1_2,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3, cipher_suite::TLS13_AES_128_GCM_SHA256),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3, cipher_suite::TLS13_AES_256_GCM_SHA384),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3, cipher_suite::TLS13_CHACHA20_POLY1305_SHA256),
    ];
    let data = Arc::new(pattern_bytes((256 << 10) + 777));
    let ups: Vec<TlsUpstream> = cases
        .iter()
        .map(|(v, _, s)| bodies_origin(server_config(&pki.api, &[*v], Some(vec![*s])), data.clone()))
        .collect();
    let mut cfg = Config::new();
    for (i, up) in ups.iter().enumerate() {
        let name = format!("g{i}");
        let group = tls_group(&name, &[up.addr], Some("api.test"), Some(&pki.root.ca));
        cfg = cfg.route(&format!("s{i}.test"), "/", &name).append(&group);
    }
    let apex = Apex::start(&cfg);
    for (i, ((_, version, suite), up)) in cases.iter().zip(&ups).enumerate() {
        let what = format!("{version:?} {:?}", suite.suite());
        let host = format!("s{i}.test");
        let mut c = apex.client();
        let r = c.request(&get(&host, "/small"));
        assert_eq!((r.status, r.body_str().as_str()), (200, "GET /small "), "{what}: {}", r.head_str());
        let r = c.request(&get(&host, "/big-chunked"));
        assert_eq!(r.status, 200, "{what}: {}", r.head_str());
        assert_eq!(pattern_verdict(&r.body), format!("intact {}", data.len()), "{what}: download");
        c.send(format!("POST /echo-cl HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n", data.len()).as_bytes());
        c.send(&data);
        let r = c.read_response();
        assert_eq!(r.status, 200, "{what}: {}", r.head_str());
        assert_eq!(pattern_verdict(&r.body), format!("intact {}", data.len()), "{what}: upload, echoed");
        assert_handshakes(up, Some("api.test"), &what);
        for conn in up.conns() {
            assert_eq!(conn.version, Some(*version), "{what}: {conn:?}");
            assert_eq!(conn.suite, Some(suite.suite()), "{what}: {conn:?}");
        }
        assert_eq!(up.requests().len(), 3, "{what}");
    }
}

// ---------------------------------------------------------------- 5. verification failures

/// A plain HTTP/1.1 server: answers whatever arrives first (a ClientHello) with a 400 and closes.
fn plain_http_server() -> Upstream {
    Upstream::start(|mut c| {
        if c.read_chunk(1 << 16).is_some() {
            let _ = c.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    })
}

/// Asserts a plain server configured as TLS got a ClientHello (a handshake record) from Apex.
fn assert_got_client_hello(plain: &Upstream, what: &str) {
    plain.wait_for(Duration::from_secs(5), |u| !u.received().is_empty() && !u.received()[0].is_empty());
    let got = plain.received();
    assert!(!got.is_empty(), "{what}: Apex never connected");
    for (i, b) in got.iter().enumerate() {
        assert!(
            b.len() > 5 && b[0] == 0x16 && b[1] == 3,
            "{what}: connection {i} did not start with a TLS handshake record: {:?}",
            String::from_utf8_lossy(&b[..b.len().min(100)])
        );
    }
}

#[test]
fn certificate_failures_get_502_and_apex_keeps_serving() {
    let pki = Pki::new();
    let foreign = TlsUpstream::echo(pki.server(&pki.foreign));
    let mismatch = TlsUpstream::echo(pki.server(&pki.api));
    let expired = TlsUpstream::echo(pki.server(&pki.expired));
    let plain = plain_http_server();
    let good = TlsUpstream::echo(pki.server(&pki.api));
    let apex = Apex::start(
        &Config::new()
            .route("unknown-ca.test", "/", "foreign")
            .route("mismatch.test", "/", "mismatch")
            .route("expired.test", "/", "expired")
            .route("plain.test", "/", "plain")
            .route("*", "/", "good")
            .append(&tls_group("foreign", &[foreign.addr], Some("api.test"), Some(&pki.root.ca)))
            .append(&tls_group("mismatch", &[mismatch.addr], Some("other.test"), Some(&pki.root.ca)))
            .append(&tls_group("expired", &[expired.addr], Some("api.test"), Some(&pki.root.ca)))
            .append(&tls_group("plain", &[plain.addr], Some("api.test"), Some(&pki.root.ca)))
            .append(&tls_group("good", &[good.addr], Some("api.test"), Some(&pki.root.ca))),
    );
    let mut c = apex.client();
    let r = c.request(&get("good.test", "/before"));
    assert_eq!(r.status, 200, "{}", r.head_str());
    for host in ["unknown-ca.test", "mismatch.test", "expired.test", "plain.test"] {
        // The first request meets the failure, the second the cooldown: 502 both times.
        for attempt in ["first", "in cooldown"] {
            let r = apex.client().request(&get(host, "/x"));
            assert_apex_status(&r, 502);
            assert!(!r.body_str().contains("Bad Request"), "{host} ({attempt}): {}", r.body_str());
        }
        let r = c.request(&get("good.test", &format!("/after-{host}")));
        assert_eq!(r.status, 200, "the good group after {host}: {}", r.head_str());
    }
    foreign.assert_refused_by_apex("certificate from an unknown CA");
    mismatch.assert_refused_by_apex("certificate for api.test, tls_name other.test");
    assert!(mismatch.conns().iter().all(|c| c.sni.as_deref() == Some("other.test")), "{:?}", mismatch.conns());
    expired.assert_refused_by_apex("expired certificate");
    assert_got_client_hello(&plain, "plain HTTP server with tls = true");
    assert!(plain.requests().is_empty());

    let mut apex = apex;
    assert!(apex.is_running(), "apex exited; stderr:\n{}", apex.stderr());
    let r = apex.client().request(&get("good.test", "/end"));
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_handshakes(&good, Some("api.test"), "the good group");
}

#[test]
fn failing_tls_servers_are_skipped_and_the_group_serves_from_the_good_one() {
    let pki = Pki::new();
    let foreign = TlsUpstream::echo(pki.server(&pki.foreign));
    let plain = plain_http_server();
    let good = TlsUpstream::echo(pki.server(&pki.api));
    let expired = TlsUpstream::echo(pki.server(&pki.expired));
    let servers = [foreign.addr, plain.addr, good.addr, expired.addr];
    let apex = Apex::start(&api_config(&servers, &pki));
    let mut c = apex.client();
    for i in 0..12 {
        let path = format!("/r{i}");
        let r = try_request(&mut c, &get("h", &path)).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!((r.status, r.body_str()), (200, format!("GET {path} ")), "request {i}: {}", r.head_str());
    }
    assert_eq!(good.requests().len(), 12, "every request served by the good server");
    foreign.assert_refused_by_apex("unknown CA, in a group");
    expired.assert_refused_by_apex("expired, in a group");
    assert_got_client_hello(&plain, "plain server, in a group");
    // cooldown = 10s, one worker: each failing server is tried once, then skipped.
    assert_eq!(foreign.accepts(), 1, "the unknown-CA server must be skipped for its cooldown");
    assert_eq!(expired.accepts(), 1, "the expired server must be skipped for its cooldown");
    assert_eq!(plain.accepts(), 1, "the plain server must be skipped for its cooldown");
    // The error log names each server that failed (`warn: upstream ADDR: ...`).
    for a in [foreign.addr, plain.addr, expired.addr] {
        apex.wait_stderr(&a.to_string(), 1);
    }
    assert!(!apex.stderr().contains("panicked"), "{}", apex.stderr());
}

#[test]
fn without_tls_ca_the_system_roots_are_used_and_do_not_trust_the_test_ca() {
    let pki = Pki::new();
    let up = TlsUpstream::echo(pki.server(&pki.api));
    let group = tls_group("api", &[up.addr], Some("api.test"), None);
    let apex = Apex::start(&Config::new().route("*", "/", "api").append(&group));
    let r = apex.client().request(&get("h", "/system-roots"));
    assert_apex_status(&r, 502);
    up.assert_refused_by_apex("test CA, system roots");
    assert!(up.conns().iter().all(|c| c.sni.as_deref() == Some("api.test")), "{:?}", up.conns());
}

// ---------------------------------------------------------------- 6. TLS client -> TLS origin

#[test]
fn tls_client_to_tls_upstream_gets_x_forwarded_proto_https() {
    let pki = Pki::new();
    let data = Arc::new(pattern_bytes(BIG));
    let up = bodies_origin(pki.server(&pki.api), data.clone());
    let apex = Apex::start(&api_config(&[up.addr], &pki).append(&pki.front_section()));
    let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test"));
    let r = t.request(&get("a.test", "/over-tls"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "GET /over-tls "), "{}", r.head_str());
    let r = t.request(&get("a.test", "/big-chunked"));
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_eq!(pattern_verdict(&r.body), format!("intact {BIG}"), "download TLS origin -> TLS client");
    t.send(format!("POST /echo-cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: {BIG}\r\n\r\n").as_bytes());
    t.send(&data);
    let r = t.read_response();
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_eq!(pattern_verdict(&r.body), format!("intact {BIG}"), "upload TLS client -> TLS origin, echoed");
    send_chunked_post(&mut |b| t.send(b), "a.test", "/echo-chunked", &data);
    let r = t.read_response();
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_eq!(pattern_verdict(&r.body), format!("intact {BIG}"), "chunked upload over TLS both sides");

    // A plain client of the same Apex, to the same origin.
    let r = apex.client().request(&get("a.test", "/plain"));
    assert_eq!(r.status, 200, "{}", r.head_str());

    let reqs = up.requests();
    assert_eq!(reqs.len(), 5, "{reqs:#?}");
    for r in &reqs[..4] {
        assert_eq!(r.headers_named("x-forwarded-proto"), ["https"], "TLS client side:\n{}", r.head_str());
    }
    assert_eq!(reqs[4].headers_named("x-forwarded-proto"), ["http"], "plain client side:\n{}", reqs[4].head_str());
    assert_eq!(pattern_verdict(&reqs[2].body), format!("intact {BIG}"), "the origin got the upload");
    assert_eq!(pattern_verdict(&reqs[3].body), format!("intact {BIG}"), "the origin got the chunked upload");
    assert_handshakes(&up, Some("api.test"), "TLS client to TLS origin");
}

/// RFC 8446 §6.1: a TCP close without close_notify may be an attacker's truncation. A response
/// delimited by the close of a TLS upstream therefore ends only with its close_notify: a bare
/// close or a forged record cuts it, and Apex passes the cut on (no close_notify of its own to a
/// TLS client, `end=upstream` in the log) instead of presenting the response as complete.
#[test]
fn a_close_delimited_response_cut_by_a_tls_upstream_is_not_passed_on_as_complete() {
    let pki = Pki::new();
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    let up = TlsUpstream::start(pki.server(&pki.api), move |r| {
        let part = |b: &[u8]| Act::Send([&head[..], b].concat());
        match r.target.as_str() {
            "/whole" => vec![part(b"whole"), Act::Pause(ms(100)), Act::CloseNotify],
            "/bare-close" => vec![part(b"partial"), Act::Pause(ms(100)), Act::Close],
            // A record that fails its tag (RFC 8446 §5.2), then silence.
            _ => vec![
                part(b"partial"),
                Act::Pause(ms(100)),
                Act::Raw([&[23u8, 3, 3, 0, 32][..], &[0; 32]].concat()),
                Act::Pause(ms(1500)),
            ],
        }
    });
    let apex = Apex::start(&api_config(&[up.addr], &pki).append(&pki.front_section()));
    for (path, body, clean) in
        [("/whole", "whole", true), ("/bare-close", "partial", false), ("/forged", "partial", false)]
    {
        let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test"));
        t.send(&get("a.test", path));
        let (got, end) = t.read_to_end(Duration::from_secs(5));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 ") && text.ends_with(body), "{path}: {text:?}");
        match end {
            Some(Ok(())) => assert!(clean, "{path}: a cut response ended with Apex's close_notify"),
            Some(Err(e)) => assert!(!clean, "{path}: a whole response ended without close_notify: {e}"),
            None => panic!("{path}: still open 5 s later"),
        }
    }
    let line = |p: &str| apex.stdout_lines().into_iter().find(|l| l.contains(&format!("GET {p} ")));
    let logged =
        wait_until(Duration::from_secs(5), || ["/whole", "/bare-close", "/forged"].iter().all(|p| line(p).is_some()));
    assert!(logged, "access log: {:#?}", apex.stdout_lines());
    let ended = |p: &str| line(p).unwrap_or_default();
    assert!(ended("/whole").contains("end=-"), "{}", ended("/whole"));
    assert!(ended("/bare-close").contains("end=upstream"), "{}", ended("/bare-close"));
    assert!(ended("/forged").contains("end=upstream"), "{}", ended("/forged"));
}

/// The same in a tunnel (after a 101): each side's end is passed on as it came, so a TLS
/// origin's close_notify reaches a TLS client as Apex's close_notify, and its bare close as a
/// bare close (it came with close_notify either way).
#[test]
fn a_tunnel_passes_a_tls_upstreams_bare_close_on_as_a_bare_close() {
    let pki = Pki::new();
    let up = TlsUpstream::start(pki.server(&pki.api), |r| {
        let switch =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nhello".to_vec();
        let end = if r.target == "/clean" { Act::CloseNotify } else { Act::Close };
        vec![Act::Send(switch), Act::Pause(ms(100)), end]
    });
    let apex = Apex::start(&api_config(&[up.addr], &pki).append(&pki.front_section()));
    for (path, clean) in [("/clean", true), ("/bare", false)] {
        let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test"));
        t.send(
            format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .as_bytes(),
        );
        let (got, end) = t.read_to_end(Duration::from_secs(5));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 101 ") && text.ends_with("hello"), "{path}: {text:?}");
        match end {
            Some(Ok(())) => assert!(clean, "{path}: the origin's bare close reached the client as close_notify"),
            Some(Err(e)) => assert!(!clean, "{path}: the origin's close_notify did not reach the client: {e}"),
            None => panic!("{path}: still open 5 s later"),
        }
    }
}

// ---------------------------------------------------------------- 7. config errors

/// Writes `toml` and asserts `apex FILE` and `apex --check FILE` both refuse it: non-zero exit,
/// no panic, stderr containing one of `needles`.
fn assert_config_refused(toml: &str, needles: &[&str], what: &str) {
    let dir = TempDir::new("badup");
    let conf = dir.write("apex.toml", toml);
    for args in [vec![path_str(&conf)], vec!["--check", path_str(&conf)]] {
        let (code, _out, err) = run_apex(&args);
        assert!(!err.contains("panicked"), "{what}: apex {args:?} panicked:\n{err}\nconfig:\n{toml}");
        assert!(
            code.is_some() && code != Some(0),
            "{what}: apex {args:?} exited {code:?}, expected a config error; stderr:\n{err}\nconfig:\n{toml}"
        );
        assert!(
            needles.iter().any(|n| err.contains(n)),
            "{what}: apex {args:?}: stderr must name one of {needles:?}:\n{err}\nconfig:\n{toml}"
        );
    }
}

/// The control of a refusal test: `apex --check` accepts `toml`, which differs from the refused
/// config only in the setting under test (so the refusal is about that setting, not the keys).
fn assert_check_accepts(toml: &str, what: &str) {
    let dir = TempDir::new("goodup");
    let conf = dir.write("apex.toml", toml);
    let (code, _out, err) = run_apex(&["--check", path_str(&conf)]);
    assert_eq!(code, Some(0), "{what}: apex --check must accept this config; stderr:\n{err}\nconfig:\n{toml}");
}

fn one_group(tls_name: Option<&str>, tls_ca: Option<&Path>) -> String {
    Config::new().route("*", "/", "api").append(&tls_group("api", &[dead_addr()], tls_name, tls_ca)).render()
}

#[test]
fn missing_tls_ca_file_is_refused_at_start() {
    let pki = Pki::new();
    let missing = pki.root.dir.path().join("no-such-ca.pem");
    assert_check_accepts(&one_group(Some("api.test"), Some(&pki.root.ca)), "control: tls_ca present");
    assert_config_refused(&one_group(Some("api.test"), Some(&missing)), &[path_str(&missing)], "missing tls_ca");
}

#[test]
fn tls_ca_without_pem_certificates_is_refused_at_start() {
    let pki = Pki::new();
    let cases = [
        ("garbage.pem", "this is not a certificate\n".to_string()),
        ("empty.pem", String::new()),
        ("key-only.pem", std::fs::read_to_string(&pki.api.key).unwrap()),
        ("der-as-text.pem", String::from_utf8_lossy(&pki.root.der).into_owned()),
    ];
    assert_check_accepts(&one_group(Some("api.test"), Some(&pki.root.ca)), "control: tls_ca of certificates");
    for (name, contents) in cases {
        let p = pki.root.dir.write(name, &contents);
        assert_config_refused(&one_group(Some("api.test"), Some(&p)), &[path_str(&p)], &format!("tls_ca = {name}"));
    }
}

#[test]
fn tls_name_that_is_not_a_dns_name_is_refused_at_start() {
    let pki = Pki::new();
    assert_check_accepts(&one_group(Some("api.test"), Some(&pki.root.ca)), "control: tls_name = api.test");
    for bad in ["not a name", "api..test", "api.test/x", ""] {
        let mut needles = vec!["tls_name"];
        if !bad.is_empty() {
            needles.push(bad);
        }
        assert_config_refused(&one_group(Some(bad), Some(&pki.root.ca)), &needles, &format!("tls_name = {bad:?}"));
    }
}

#[test]
fn one_address_in_two_groups_with_different_tls_settings_is_refused_at_start() {
    let pki = Pki::new();
    let addr = dead_addr();
    let base = || Config::new().route("a.test", "/", "a").route("*", "/", "b");
    let a = tls_group("a", &[addr], Some("api.test"), Some(&pki.root.ca));
    let cases = [
        ("tls on and off", plain_group("b", &[addr])),
        ("tls_name differs", tls_group("b", &[addr], Some("other.test"), Some(&pki.root.ca))),
        ("tls_name set and not", tls_group("b", &[addr], None, Some(&pki.root.ca))),
        ("tls_ca differs", tls_group("b", &[addr], Some("api.test"), Some(&pki.other_ca))),
        ("tls_ca set and not", tls_group("b", &[addr], Some("api.test"), None)),
    ];
    let same = tls_group("b", &[addr], Some("api.test"), Some(&pki.root.ca));
    assert_check_accepts(&base().append(&a).append(&same).render(), "control: the same TLS settings");
    for (what, b) in cases {
        let toml = base().append(&a).append(&b).render();
        assert_config_refused(&toml, &[&addr.to_string()], what);
    }
}

#[test]
fn one_address_in_two_groups_with_the_same_tls_settings_is_accepted() {
    let pki = Pki::new();
    let up = TlsUpstream::echo(pki.server(&pki.api));
    let apex = Apex::start(
        &Config::new()
            .route("a.test", "/", "a")
            .route("*", "/", "b")
            .append(&tls_group("a", &[up.addr], Some("api.test"), Some(&pki.root.ca)))
            .append(&tls_group("b", &[up.addr], Some("api.test"), Some(&pki.root.ca))),
    );
    for host in ["a.test", "b.test"] {
        let r = apex.client().request(&get(host, "/shared"));
        assert_eq!((r.status, r.body_str().as_str()), (200, "GET /shared "), "{host}: {}", r.head_str());
    }
    assert_handshakes(&up, Some("api.test"), "one server in two groups");
}

// ---------------------------------------------------------------- 8. tickets and KeyUpdates

/// Requests before a KeyUpdate from the origin: enough records under the first key that a key
/// Apex never changed shows in the count.
const KU_BEFORE: usize = 20;
/// Requests after the last KeyUpdate from the origin, before /end.
const KU_AFTER: usize = 2;

/// A TLS 1.3 origin (4 NewSessionTickets after each handshake, see `server_config`) that sends
/// KeyUpdates (update_requested): /ku-alone: alone, 100 ms after the response, while the
/// connection idles in Apex's pool; /ku-with: in the same flight as the response; /ku-mid-body:
/// in the middle of a big body. /end answers, then ends the connection, recording its counts.
fn key_update_origin(pki: &Pki, body: Arc<Vec<u8>>) -> TlsUpstream {
    TlsUpstream::start(server_config(&pki.api, &[&rustls::version::TLS13], None), move |r| match r.target.as_str() {
        "/ku-alone" => vec![Act::Send(ok("alone")), Act::Pause(ms(100)), Act::KeyUpdate, Act::Flush],
        "/ku-with" => vec![Act::KeyUpdate, Act::Send(ok("with"))],
        "/ku-mid-body" => {
            let resp = cl_response(&body);
            let half = resp.len() / 2;
            vec![Act::Send(resp[..half].to_vec()), Act::Pause(ms(50)), Act::KeyUpdate, Act::Send(resp[half..].to_vec())]
        }
        "/end" => vec![Act::Send(ok("end")), Act::Close],
        _ => reply(ok(&r.target)),
    })
}

/// `n` GETs of /TAG/i on `c`, each answered with its path.
fn gets(c: &mut Client, tag: &str, n: usize) {
    for i in 0..n {
        let path = format!("/{tag}/{i}");
        let r = try_request(c, &get("h", &path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!((r.status, r.body_str()), (200, path.clone()), "{path}: {}", r.head_str());
    }
}

/// GET `path`, answered with `body`.
fn get_expect(c: &mut Client, path: &str, body: &str) {
    let r = try_request(c, &get("h", path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!((r.status, r.body_str().as_str()), (200, body), "{path}: {}", r.head_str());
}

/// Ends a KeyUpdate test after GET /end: all `n` requests went over the one origin connection,
/// and Apex answered the origin's last KeyUpdate (update_requested) with one of its own (RFC 8446
/// §4.6.3): the origin's receive key changed after it, so only the `KU_AFTER` + 1 requests sent
/// since then came under it (fewer than `KU_BEFORE`).
fn assert_one_connection_and_key_update_answered(up: &TlsUpstream, n: usize) {
    let reqs = up.requests();
    assert_eq!(reqs.len(), n, "every request reached the origin");
    let conns = up.conns();
    if conns.len() > 1 {
        let last: Vec<String> = (0..conns.len())
            .map(|k| {
                let on: Vec<&Req> = reqs.iter().filter(|r| r.conn == k).collect();
                format!("connection {k}: {} requests, the last {:?}", on.len(), on.last().map(|r| &r.target))
            })
            .collect();
        panic!(
            "TLS 1.3 tickets and KeyUpdates from the origin must not cost Apex the pooled connection, yet \
             it opened {}: {last:#?}\n{conns:#?}",
            conns.len()
        );
    }
    let ended = up.wait_for(Duration::from_secs(5), |u| u.conns().first().is_some_and(|c| c.ended));
    assert!(ended, "the origin connection did not end after /end: {:?}", up.conns());
    let info = &up.conns()[0];
    assert_eq!(info.version, Some(ProtocolVersion::TLSv1_3), "{info:?}");
    assert!(info.errors.is_empty(), "origin-side errors: {info:?}");
    let rx = info.rx_records_at_end.expect("the origin could not read its record counts");
    assert!(
        rx < KU_BEFORE as u64,
        "{rx} records from Apex arrived under the origin's current receive key, though it should have \
         changed after the origin's last KeyUpdate (only {} requests since): Apex did not answer the \
         KeyUpdate (update_requested) with one of its own",
        KU_AFTER + 1
    );
}

#[test]
fn tls13_key_updates_with_and_inside_responses_keep_the_pooled_connection_and_are_answered() {
    let pki = Pki::new();
    let data = Arc::new(pattern_bytes(BIG));
    let up = key_update_origin(&pki, data.clone());
    let apex = Apex::start(&api_config(&[up.addr], &pki).timeout("upstream_idle", "30s"));
    let mut c = apex.client();
    gets(&mut c, "before", KU_BEFORE);
    get_expect(&mut c, "/ku-with", "with");
    gets(&mut c, "after-with", KU_BEFORE);
    let r = c.request(&get("h", "/ku-mid-body"));
    assert_eq!(r.status, 200, "{}", r.head_str());
    assert_eq!(pattern_verdict(&r.body), format!("intact {BIG}"), "a body with a KeyUpdate in the middle");
    gets(&mut c, "after-mid-body", KU_AFTER);
    get_expect(&mut c, "/end", "end");
    assert_one_connection_and_key_update_answered(&up, KU_BEFORE + 1 + KU_BEFORE + 1 + KU_AFTER + 1);
}

#[test]
fn tls13_key_update_while_the_connection_idles_in_the_pool_keeps_it_and_is_answered() {
    let pki = Pki::new();
    let up = key_update_origin(&pki, Arc::new(vec![]));
    let apex = Apex::start(&api_config(&[up.addr], &pki).timeout("upstream_idle", "30s"));
    let mut c = apex.client();
    gets(&mut c, "before", KU_BEFORE);
    get_expect(&mut c, "/ku-alone", "alone");
    // The KeyUpdate reaches Apex while the connection sits idle in its pool.
    thread::sleep(ms(400));
    gets(&mut c, "after-alone", KU_AFTER);
    get_expect(&mut c, "/end", "end");
    assert_one_connection_and_key_update_answered(&up, KU_BEFORE + 1 + KU_AFTER + 1);
}

/// Sends `req` on `c`, reads one response; the error says what went wrong instead of panicking.
fn try_request(c: &mut Client, req: &[u8]) -> Result<Response, String> {
    c.try_send(req).map_err(|e| format!("write: {e}"))?;
    c.try_read_response(false)
}
