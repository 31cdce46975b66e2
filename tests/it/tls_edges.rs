//! Edges of the TLS record layer, one test per bug a review of it found (fixed in 8dca987): a
//! tunnel to a slow reader duplicated bytes; a certificate chain larger than the record buffer
//! hung the handshake; a zero-length record stalled the connection; no close_notify came before
//! Apex's close; KeyUpdates in a row were unbounded; a request in the same read as the client's
//! Finished and close_notify was lost; handshakes that sent nothing held record buffers; a client
//! offering only ALPN http/1.0 was refused. A second review (section 9) found records that
//! carry nothing unbounded, empty handshake records and over-long padding accepted; `Sealer`
//! (tls_kit) sends such records, which no TLS library does.
//! Certificates are made per test with rcgen (a root CA and leaves it signs); the clients are a
//! blocking rustls client (trusting only the test root) and curl.

use crate::harness::*;
use crate::tls_kit::*;
use rustls::{ProtocolVersion, StreamOwned, SupportedProtocolVersion};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- certificates

impl Pki {
    /// `[tls]` with one listener on 127.0.0.1:0 serving `leaf` for a.test.
    fn section_for(&self, leaf: &Leaf) -> String {
        tls_section(None, &[(leaf, &["a.test"])])
    }

    /// `[tls]` serving leaf A.
    fn section(&self) -> String {
        self.section_for(&self.a)
    }
}

/// The client's hello: SNI a.test, ALPN http/1.1, offering only `v`.
fn a_test(v: &'static SupportedProtocolVersion) -> Hello {
    Hello::to("a.test").v(v)
}

/// Apex in front of `up`, serving leaf A, with client_head and client_idle at 30 s: a bound
/// Apex enforces shows as a prompt close, never as one of those timeouts.
fn patient_apex(up: &Upstream, pki: &Pki) -> Apex {
    Apex::start(&Config::to(up.addr).timeout("client_head", "30s").timeout("client_idle", "30s").append(&pki.section()))
}

/// A TLS request through Apex still works (and so does a plain one).
fn assert_serving(apex: &Apex, pki: &Pki, path: &str) {
    let mut t = tls(tls_addr(apex), pki, a_test(&rustls::version::TLS13));
    let r = t.request(&get("a.test", path));
    assert_eq!(r.status, 200, "TLS request after the test: {}", r.head_str());
    let r = apex.client().request(&get("h", path));
    assert_eq!(r.status, 200, "plain request after the test: {}", r.head_str());
}

/// What a TLS 1.3 KeyUpdate (update_requested) count does not allow in a row: Apex, like rustls
/// and BoringSSL, takes 32 with no application data between them.
const KEY_UPDATES_IN_A_ROW_MAX: usize = 32;

// ---------------------------------------------------------------- curl

const CURL_VERSIONS: [(&[&str], &str); 2] =
    [(&["--tlsv1.2", "--tls-max", "1.2"], "TLSv1.2"), (&["--tlsv1.3"], "TLSv1.3")];

// ---------------------------------------------------------------- 1: tunnel to a slow reader

const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

fn ws_req() -> Vec<u8> {
    b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec()
}

/// A counter, one `%09d\n` line after another, cut at `n` bytes: a duplicated or lost stretch
/// shows as a line number out of sequence.
fn counter_bytes(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 10);
    let mut i = 0u64;
    while v.len() < n {
        v.extend_from_slice(format!("{i:09}\n").as_bytes());
        i += 1;
    }
    v.truncate(n);
    v
}

/// `intact N`, or where `got` first departs from `want`, with both sides around it.
fn counter_verdict(got: &[u8], want: &[u8]) -> String {
    match got.iter().zip(want).position(|(g, w)| g != w) {
        None if got.len() == want.len() => format!("intact {}", got.len()),
        None => format!("{} bytes where {} were sent (the common prefix is intact)", got.len(), want.len()),
        Some(i) => {
            let (lo, hi) = (i.saturating_sub(25), (i + 25).min(got.len()).min(want.len()));
            format!(
                "differs at byte {i} of {} (sent {}): got {:?}, sent {:?}",
                got.len(),
                want.len(),
                String::from_utf8_lossy(&got[lo..hi]),
                String::from_utf8_lossy(&want[lo..hi])
            )
        }
    }
}

/// Over 4 MiB, not a multiple of any buffer or record size.
const TUNNEL_BYTES: usize = (4 << 20) + 4321;

/// An upstream answers an Upgrade with 101 and streams a 4 MiB counter into the tunnel, then
/// closes; the TLS client reads it slowly (4 KiB reads, a pause after each, a 16 KiB receive
/// buffer, `client_send_buffer` 16 KiB), so Apex's writes to it keep stopping half way. Every
/// byte must arrive once, in order. The bug: a record sealed but not yet sent was forgotten when
/// an empty buffer was flushed first, so its plaintext was sealed and sent again.
#[test]
fn tunnel_over_tls_to_a_slow_reader_delivers_every_byte_once_in_order() {
    let data = Arc::new(counter_bytes(TUNNEL_BYTES));
    let sent = data.clone();
    let up = Upstream::start(move |mut c| {
        let Some(req) = c.read_head() else { return };
        c.record(&req);
        if c.write(SWITCH).is_err() {
            return;
        }
        for part in sent.chunks(64 << 10) {
            if c.write(part).is_err() {
                return;
            }
        }
        let _ = c.s.shutdown(Shutdown::Write);
        c.wait_eof();
    });
    let pki = Pki::new("pki-edges");
    let apex = Apex::start(&Config::to(up.addr).limit("client_send_buffer", "\"16KiB\"").append(&pki.section()));
    // Both versions run before the verdict, so a failure says which of them break.
    let mut verdicts = vec![];
    for (v, want) in versions() {
        let mut t = tls_over(connect(tls_addr(&apex), Some(16 << 10)), client_conn(&pki, a_test(v)))
            .unwrap_or_else(|e| panic!("{want:?}: TLS handshake: {e}"));
        t.send(&ws_req());
        let r = t.try_read_response(false).unwrap_or_else(|e| panic!("{want:?}: reading the 101: {e}"));
        assert_eq!(r.status, 101, "{want:?}: {}", r.head_str());
        let mut got = std::mem::take(&mut t.buf);
        let mut small = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(60);
        let end = loop {
            assert!(Instant::now() < deadline, "{want:?}: 60 s and only {} of {TUNNEL_BYTES} bytes", got.len());
            let n = match t.s.read(&mut small) {
                Ok(0) => break "a clean close".to_string(),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break format!("{e}"),
            };
            let from = got.len();
            got.extend_from_slice(&small[..n]);
            // Stop at the first bad byte (the verdict says where), or past the end.
            if got.len() > TUNNEL_BYTES || got[from..] != data[from..got.len()] {
                break "a byte out of place".to_string();
            }
            thread::sleep(Duration::from_micros(300));
        };
        let verdict = counter_verdict(&got, &data);
        if verdict != format!("intact {TUNNEL_BYTES}") {
            verdicts.push(format!("{want:?}: {verdict} (the stream ended with {end})"));
        }
    }
    assert!(verdicts.is_empty(), "the tunnelled counter as read by a slow TLS client:\n{}", verdicts.join("\n"));
    assert_eq!(up.requests().len(), 2);
}

// ---------------------------------------------------------------- 2: a long certificate chain

/// Apex's TLS record buffer (`TLS_BUF_BYTES`, 18.5 KiB): a flight longer than this needs more
/// than one buffer's worth of records.
const TLS_BUF_BYTES: usize = 18 * 1024 + 512;

/// A leaf for a.test and 700 more names: about 30 KB of certificate, larger than Apex's record
/// buffer. The bug: rustls hands over each handshake record once; the one that did not fit was
/// dropped and the handshake hung until client_head.
#[test]
fn certificate_chain_larger_than_the_record_buffer_completes_the_handshake() {
    let pki = Pki::new("pki-edges");
    let mut names = vec!["a.test".to_string()];
    names.extend((0..700).map(|i| format!("host{i:05}.example-long-domain-name.test")));
    let big = sign_leaf(
        &pki.root.dir,
        "big",
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
        &new_key(),
        &pki.root.issuer,
        &[],
        |_| {},
    );
    let der_bytes = big.ders[0].len();
    assert!(der_bytes > TLS_BUF_BYTES + 8192, "the big certificate is only {der_bytes} bytes");
    let up = Upstream::echo_path();
    // client_head bounds a hung handshake on the server side too.
    let apex = Apex::start(&Config::to(up.addr).timeout("client_head", "5s").append(&pki.section_for(&big)));
    let addr = tls_addr(&apex);
    for (v, want) in versions() {
        let mut t = tls_try(addr, &pki, a_test(v)).unwrap_or_else(|e| {
            panic!("{want:?}: the handshake with a {der_bytes}-byte certificate did not complete: {e}")
        });
        assert_eq!(t.s.conn.protocol_version(), Some(want));
        let chain = t.s.conn.peer_certificates().map(<[_]>::to_vec).unwrap_or_default();
        assert!(chain == big.ders, "{want:?}: the big certificate must be served whole");
        let path = format!("/big-chain/{want:?}");
        let r = t.request(&get("a.test", &path));
        assert_eq!((r.status, r.body_str()), (200, path), "{want:?}: {}", r.head_str());
    }
    for (flags, want) in CURL_VERSIONS {
        let (code, w, err, body) = curl(addr, &pki, "a.test", "/big-chain/curl", flags);
        assert_eq!(code, Some(0), "curl {flags:?} with a {der_bytes}-byte certificate failed:\n{err}");
        assert_eq!(w, "200 1.1", "curl {flags:?}: status and HTTP version;\n{err}");
        assert_eq!(String::from_utf8_lossy(&body), "/big-chain/curl", "curl {flags:?}");
        assert!(err.contains(&format!("SSL connection using {want}")), "curl {flags:?}: not {want}:\n{err}");
    }
    assert_eq!(up.requests().len(), 4);
}

// ---------------------------------------------------------------- 3: a zero-length record

/// After the handshake, a raw application-data record of length 0 (`17 03 03 00 00`, shorter
/// than any AEAD tag) and then a request: Apex must refuse the record and close at once
/// (client_head is 30 s), answering nothing; other clients are still served. The bug: the record
/// was never consumed, and the connection stalled until a timeout.
#[test]
fn zero_length_record_closes_the_connection_promptly() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-edges");
    let apex = patient_apex(&up, &pki);
    for (v, want) in versions() {
        let mut t = tls(tls_addr(&apex), &pki, a_test(v));
        thread::sleep(ms(100));
        t.s.sock.write_all(&[0x17, 0x03, 0x03, 0x00, 0x00]).unwrap();
        thread::sleep(ms(100));
        // Written under rustls, so it follows the raw record on the socket; ignored if Apex
        // already closed.
        let _ = t.s.write_all(&get("a.test", "/after-zero-length")).and_then(|()| t.s.flush());
        let (plain, end) = t.read_to_end(Duration::from_secs(3));
        assert!(
            end.is_some(),
            "{want:?}: the connection is still open 3 s after a zero-length record (client_head 30 s)"
        );
        assert!(
            plain.is_empty(),
            "{want:?}: Apex answered after a zero-length record: {:?}",
            String::from_utf8_lossy(&plain)
        );
    }
    assert!(up.requests().is_empty(), "nothing after a bad record reaches the upstream: {:#?}", up.requests());
    assert_serving(&apex, &pki, "/after-zero-length-records");
}

// ---------------------------------------------------------------- 4: close_notify

/// Asserts that the TLS stream of `t` ends with close_notify within 5 s, with nothing more.
fn assert_clean_close(t: &mut Tls, what: &str) {
    let (rest, end) = t.read_to_end(Duration::from_secs(5));
    assert!(rest.is_empty(), "{what}: bytes after the response: {:?}", String::from_utf8_lossy(&rest));
    match end {
        Some(Ok(())) => {}
        Some(Err(e)) => panic!("{what}: the TLS stream ended without close_notify: {e}"),
        None => panic!("{what}: the connection is still open 5 s after the response"),
    }
}

/// Apex closing a TLS connection sends close_notify first (RFC 8446 §6.1), so the client can
/// tell the end of a response from a truncation: after a `Connection: close` request, after a
/// close-delimited body (the upstream sends no length and closes), and when the upstream ends a
/// tunnel. rustls's reader returns Ok(0) only after close_notify; a bare TCP close is its
/// UnexpectedEof error.
#[test]
fn close_notify_comes_before_apex_closes_a_tls_connection() {
    let up = Upstream::start(|mut c| {
        while let Some(r) = c.read_request() {
            match r.target.as_str() {
                "/close-delimited" => {
                    let _ = c.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close");
                    return;
                }
                "/ws" => {
                    let _ = c.write(SWITCH);
                    let _ = c.write(b"bye");
                    c.shutdown();
                    return;
                }
                t => {
                    if c.write(&ok(t)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let pki = Pki::new("pki-edges");
    let apex = Apex::start(&Config::to(up.addr).append(&pki.section()));
    for (v, want) in versions() {
        let what = format!("{want:?}, Connection: close");
        let mut t = tls(tls_addr(&apex), &pki, a_test(v));
        t.send(b"GET /conn-close HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        let r = t.try_read_response_strict().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!((r.status, r.body_str().as_str()), (200, "/conn-close"), "{what}: {}", r.head_str());
        assert!(r.has_token("connection", "close"), "{what}: {}", r.head_str());
        assert_clean_close(&mut t, &what);

        let what = format!("{want:?}, close-delimited body");
        let mut t = tls(tls_addr(&apex), &pki, a_test(v));
        t.send(&get("a.test", "/close-delimited"));
        let r = t.try_read_response_strict().unwrap_or_else(|e| {
            panic!("{what}: the body must end with close_notify, or the client cannot tell it whole: {e}")
        });
        assert_eq!((r.status, r.body_str().as_str()), (200, "until the close"), "{what}: {}", r.head_str());

        let what = format!("{want:?}, tunnel closed by the upstream");
        let mut t = tls(tls_addr(&apex), &pki, a_test(v));
        t.send(&ws_req());
        let r = t.try_read_response_strict().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.status, 101, "{what}: {}", r.head_str());
        let (rest, end) = t.read_to_end(Duration::from_secs(5));
        assert_eq!(String::from_utf8_lossy(&rest), "bye", "{what}");
        match end {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("{what}: the TLS stream ended without close_notify: {e}"),
            None => panic!("{what}: the tunnel is still open 5 s after the upstream closed"),
        }
    }
}

/// RFC 8446 §6.1: "Each party MUST send a close_notify alert before closing its write side".
/// A client that ends a keep-alive connection with its close_notify gets Apex's before the
/// close; Apex closed without one.
#[test]
fn a_clients_close_notify_is_answered_with_apexs() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-edges");
    let apex = Apex::start(&Config::to(up.addr).append(&pki.section()));
    for (v, want) in versions() {
        let mut t = tls(tls_addr(&apex), &pki, a_test(v));
        let r = t.request(&get("a.test", "/then-close-notify"));
        assert_eq!(r.status, 200, "{want:?}: {}", r.head_str());
        t.s.conn.send_close_notify();
        t.flush_tls();
        let (rest, end) = t.read_to_end(Duration::from_secs(5));
        assert!(rest.is_empty(), "{want:?}: {:?}", String::from_utf8_lossy(&rest));
        match end {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("{want:?}: Apex closed without answering close_notify: {e}"),
            None => panic!("{want:?}: still open 5 s after the client's close_notify"),
        }
    }
}

// ---------------------------------------------------------------- 5: KeyUpdate floods

/// A TLS 1.3 connection to Apex.
fn tls13(apex: &Apex, pki: &Pki) -> Tls {
    let t = tls(tls_addr(apex), pki, a_test(&rustls::version::TLS13));
    assert_eq!(t.s.conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    t
}

/// Queues `n` KeyUpdates (update_requested), one record each, and writes them in one go.
fn key_updates(t: &mut Tls, n: usize) {
    for _ in 0..n {
        t.s.conn.refresh_traffic_keys().unwrap();
    }
    t.flush_tls();
}

/// Whether Apex closes the socket under `t` within `d` (records read undecrypted).
fn tcp_closed_within(t: &mut Tls, d: Duration) -> bool {
    closed_within(&mut t.s.sock, d)
}

/// A TLS 1.3 connection with one request answered on it: the KeyUpdates that follow never
/// share a read with the client's Finished (that case has its own test below).
fn tls13_after_a_request(apex: &Apex, pki: &Pki, path: &str) -> Tls {
    let mut t = tls13(apex, pki);
    let r = t.request(&get("a.test", path));
    assert_eq!((r.status, r.body_str().as_str()), (200, path), "{}", r.head_str());
    t
}

/// KeyUpdates with no application data between them cost Apex a key derivation each; more than
/// 32 in a row (the bound of rustls and BoringSSL) end the connection, and the request after
/// them never reaches the upstream. 32 in a row, 17 before each of 10 requests, and one before
/// each of 10 requests keep it working. The bug: no bound, so a client could keep a worker busy
/// deriving keys (4.5 us each) without sending a request. What comes back is read undecrypted:
/// a rustls client itself refuses more than 32 KeyUpdates in a row from Apex (its answers).
#[test]
fn tls13_key_update_flood_is_cut_and_key_updates_between_requests_are_not() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-edges");
    let apex = patient_apex(&up, &pki);
    const FLOOD: usize = KEY_UPDATES_IN_A_ROW_MAX + 8;

    let mut t = tls13_after_a_request(&apex, &pki, "/before-flood");
    key_updates(&mut t, FLOOD);
    let _ = t.s.write_all(&get("a.test", "/after-flood")).and_then(|()| t.s.flush());
    assert!(
        tcp_closed_within(&mut t, Duration::from_secs(5)),
        "{FLOOD} KeyUpdates in a row: Apex has not closed the connection 5 s later (client_idle 30 s)"
    );
    let targets: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, ["/before-flood"], "the request after {FLOOD} KeyUpdates in a row must not be forwarded");

    // Exactly the bound, then a request.
    let mut t = tls13_after_a_request(&apex, &pki, "/before-32");
    key_updates(&mut t, KEY_UPDATES_IN_A_ROW_MAX);
    let r = t.send_then_read(&get("a.test", "/after-32"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "/after-32"), "{}", r.head_str());

    // More than the bound in all, but application data between: it resets the count.
    let mut t = tls13_after_a_request(&apex, &pki, "/before-groups");
    for i in 0..10 {
        key_updates(&mut t, KEY_UPDATES_IN_A_ROW_MAX / 2 + 1);
        let path = format!("/after-group/{i}");
        let r = t.send_then_read(&get("a.test", &path));
        assert_eq!((r.status, r.body_str()), (200, path), "after KeyUpdate group {i}");
    }
    let mut t = tls13_after_a_request(&apex, &pki, "/before-one-each");
    for i in 0..10 {
        key_updates(&mut t, 1);
        let path = format!("/one-each/{i}");
        let r = t.send_then_read(&get("a.test", &path));
        assert_eq!((r.status, r.body_str()), (200, path), "after KeyUpdate {i}");
    }
    assert_serving(&apex, &pki, "/after-key-updates");
}

impl Tls {
    /// Sends `req`, reads one response; the panic says what went wrong.
    fn send_then_read(&mut self, req: &[u8]) -> Response {
        self.try_read_response_after(req).unwrap_or_else(|e| panic!("a request and its response: {e}"))
    }
}

// ---------------------------------------------------------------- 6: Finished, request, close_notify

/// A TLS 1.3 client may send application data right behind its Finished: here the Finished, a
/// `Connection: close` request and the client's close_notify leave in one write, so Apex reads
/// them at once. The request must be answered. The bug: the request, decrypted with the
/// handshake's last flight, was dropped when the close_notify in the same read made it an EOF.
#[test]
fn tls13_finished_request_and_close_notify_in_one_write_get_the_response() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-edges");
    let apex = Apex::start(&Config::to(up.addr).append(&pki.section()));
    let mut tcp = connect(tls_addr(&apex), None);
    let mut conn = client_conn(&pki, a_test(&rustls::version::TLS13));
    // Up to the server's Finished; the client's own last flight stays queued in rustls.
    while conn.is_handshaking() {
        while conn.wants_write() {
            conn.write_tls(&mut tcp).unwrap();
        }
        if conn.read_tls(&mut tcp).unwrap() == 0 {
            panic!("apex closed during the handshake");
        }
        conn.process_new_packets().unwrap_or_else(|e| panic!("TLS 1.3 handshake: {e}"));
    }
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert!(conn.wants_write(), "the client's Finished should still be queued");
    conn.writer().write_all(b"GET /coalesced HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").unwrap();
    conn.send_close_notify();
    let mut flight = vec![];
    while conn.wants_write() {
        conn.write_tls(&mut flight).unwrap();
    }
    tcp.write_all(&flight).unwrap();
    let mut t = Tls { s: StreamOwned::new(conn, tcp), buf: vec![] };
    let r = t.try_read_response(false).unwrap_or_else(|e| {
        panic!("no response to a request sent with the client's Finished and close_notify in one write: {e}")
    });
    assert_eq!((r.status, r.body_str().as_str()), (200, "/coalesced"), "{}", r.head_str());
    assert_eq!(up.requests().len(), 1);
}

// ---------------------------------------------------------------- 7: memory of idle handshakes

/// 2,000 clients connect to the TLS port and send nothing: a handshake waiting for its
/// ClientHello holds no record buffer (18.5 KiB each). What it holds is its slot and rustls's
/// handshake state, made at accept (an `UnbufferedServerConnection` alone is about 1.9 KB: 2 KiB
/// is out of reach while it is); the bound, 8 KiB, is under half a record buffer. The bug: each
/// held its empty buffers (about 20 KB a connection; 4,000 of them held 79 MB).
#[test]
fn tls_connections_that_send_nothing_hold_no_record_buffers() {
    const N: usize = 2_000;
    const PER_CONN_MAX: f64 = 8192.0;
    let soft = raise_nofile(2 * N as u64 + 1_000);
    assert!(soft as usize >= N + 500, "RLIMIT_NOFILE {soft} is too low for this test");
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-edges");
    let apex = Apex::start(
        &Config::to(up.addr)
            .workers(1)
            .limit("connections", "10000")
            .timeout("client_head", "60s")
            .append(&pki.section()),
    );
    // Warm up: the pools, rustls's configuration, the session cache.
    for i in 0..10 {
        let mut t = tls13(&apex, &pki);
        let path = format!("/warm/{i}");
        assert_eq!(t.request(&get("a.test", &path)).status, 200);
    }
    thread::sleep(ms(200));
    let base_sockets = sockets_of(apex.pid());
    let before = vm_rss_kib(apex.pid());
    let mute: Vec<TcpStream> = (0..N).map(|_| connect(tls_addr(&apex), None)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sockets_of(apex.pid()) < base_sockets + N {
        assert!(
            Instant::now() < deadline,
            "apex accepted only {} of {N} connections in 10 s",
            sockets_of(apex.pid()) - base_sockets
        );
        thread::sleep(ms(20));
    }
    thread::sleep(ms(300));
    let after = vm_rss_kib(apex.pid());
    let per_conn = after.saturating_sub(before) as f64 * 1024.0 / N as f64;
    eprintln!("{N} TLS connections that sent nothing: RSS {before} -> {after} KiB, {per_conn:.0} bytes each");
    assert!(
        per_conn < PER_CONN_MAX,
        "{per_conn:.0} bytes of RSS per TLS connection that sent nothing (bound {PER_CONN_MAX}); \
         RSS {before} -> {after} KiB for {N} connections"
    );
    drop(mute);
    assert_serving(&apex, &pki, "/after-mute-clients");
}

// ---------------------------------------------------------------- 8: curl --http1.0

/// `curl --http1.0` offers only ALPN http/1.0; Apex must accept it (and answer) over TLS 1.2
/// and 1.3 rather than refuse the handshake with no_application_protocol.
#[test]
fn curl_http10_over_tls_gets_a_response() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-edges");
    let apex = Apex::start(&Config::to(up.addr).append(&pki.section()));
    let addr = tls_addr(&apex);
    for (flags, want) in CURL_VERSIONS {
        let extra = [flags, &["--http1.0"][..]].concat();
        let (code, w, err, body) = curl(addr, &pki, "a.test", "/http10", &extra);
        assert_eq!(code, Some(0), "curl --http1.0 {flags:?} failed:\n{err}");
        assert!(w.starts_with("200 "), "curl --http1.0 {flags:?}: status {w:?};\n{err}");
        assert_eq!(String::from_utf8_lossy(&body), "/http10", "curl --http1.0 {flags:?}");
        assert!(err.contains(&format!("SSL connection using {want}")), "curl {flags:?}: not {want}:\n{err}");
        assert!(
            err.lines().any(|l| l.contains("ALPN") && l.contains("http/1.0")),
            "curl --http1.0 {flags:?}: ALPN http/1.0 is not in curl's log:\n{err}"
        );
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.headers_named("x-forwarded-proto") == ["https"]), "{reqs:#?}");
}

/// A KeyUpdate (update_requested) sent right behind the client's Finished, so that Apex reads
/// both at once. The bug: rustls, given the whole read during the handshake, handled the
/// KeyUpdate itself: it moved its send key on and kept its answer back, and the secrets Apex
/// took over were for a key the client did not know yet, so every record Apex sent failed to
/// decrypt (29 of 30 connections). rustls now gets one record at a time and stops at the
/// handshake's end; the KeyUpdate is Apex's to open and answer.
#[test]
fn tls13_key_update_right_behind_the_finished_is_answered_and_the_connection_works() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-edges");
    let apex = Apex::start(&Config::to(up.addr).append(&pki.section()));
    for i in 0..30 {
        let mut t = tls13(&apex, &pki);
        key_updates(&mut t, 1);
        let path = format!("/after-key-update-{i}");
        let r = t.request(&get("a.test", &path));
        assert_eq!((r.status, r.body_str()), (200, path), "connection {i}: {}", r.head_str());
    }
    assert_serving(&apex, &pki, "/after");
}

// ---------------------------------------------------------------- 9: records that carry nothing

/// Records that carry no application data (empty data records; in TLS 1.3 KeyUpdates and
/// tickets too) cost Apex an AEAD open each and return nothing to the reader, so a stream of
/// them held the worker for as long as it lasted (3,000,000 empty records delayed another
/// client by 404 ms). More than 32 in a row (OpenSSL's bound) end the connection and the
/// request after them never reaches the upstream; 32, or 20 before each of several requests,
/// do not. Both versions.
#[test]
fn empty_records_in_a_row_are_bounded() {
    const MAX: usize = 32;
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-edges");
    let apex = patient_apex(&up, &pki);
    for (v, name) in versions() {
        let forwarded = |p: &str| up.requests().iter().any(|r| r.target == p);

        let mut s = Sealer::after_a_request(tls_addr(&apex), &pki, v, "/before");
        let flood = format!("/after-{}-empty/{name:?}", MAX + 1);
        let mut recs: Vec<Vec<u8>> = (0..=MAX).map(|_| s.record(23, b"", 0)).collect();
        recs.push(s.record(23, &get("a.test", &flood), 0));
        s.send(&recs);
        assert!(s.closed_within(Duration::from_secs(5)), "{name:?}: {} empty records in a row: still open", MAX + 1);
        assert!(!forwarded(&flood), "{name:?}: the request after {} empty records was forwarded", MAX + 1);

        let mut s = Sealer::after_a_request(tls_addr(&apex), &pki, v, "/before");
        for i in 0..4 {
            let path = format!("/after-{}-empty/{name:?}/{i}", if i == 0 { MAX } else { 20 });
            let mut recs: Vec<Vec<u8>> = (0..if i == 0 { MAX } else { 20 }).map(|_| s.record(23, b"", 0)).collect();
            recs.push(s.record(23, &get("a.test", &path), 0));
            s.send(&recs);
            assert!(up.wait_for(Duration::from_secs(5), |_| forwarded(&path)), "{name:?}: {path} not forwarded");
        }
    }
    assert_serving(&apex, &pki, "/after-empty-records");
}

/// RFC 8446 §5.1: "Implementations MUST NOT send zero-length fragments of Handshake types";
/// one is refused (it was read as no message at all and the connection went on).
#[test]
fn tls13_empty_handshake_record_is_refused() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-edges");
    let apex = patient_apex(&up, &pki);
    let mut s = Sealer::after_a_request(tls_addr(&apex), &pki, &rustls::version::TLS13, "/before");
    let recs = vec![s.record(22, b"", 0), s.record(23, &get("a.test", "/after-empty-handshake"), 0)];
    s.send(&recs);
    assert!(s.closed_within(Duration::from_secs(5)), "an empty handshake record: still open");
    assert!(!up.requests().iter().any(|r| r.target == "/after-empty-handshake"), "{:#?}", up.requests());
}

/// RFC 8446 §5.4: TLSInnerPlaintext (content, type byte, padding) is at most 2^14 + 1 bytes,
/// else record_overflow. Exactly the limit is read; one byte of padding more is refused (only
/// the content's length was checked, so padding up to the ciphertext limit passed).
#[test]
fn tls13_padding_past_the_inner_plaintext_limit_is_refused() {
    const INNER_MAX: usize = (1 << 14) + 1;
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-edges");
    let apex = patient_apex(&up, &pki);
    for (extra, path) in [(0, "/padded-to-the-limit"), (1, "/padded-past-the-limit")] {
        let mut s = Sealer::after_a_request(tls_addr(&apex), &pki, &rustls::version::TLS13, "/before");
        let req = get("a.test", path);
        let rec = s.record(23, &req, INNER_MAX - req.len() - 1 + extra);
        s.send(&[rec]);
        if extra == 0 {
            let seen = up.wait_for(Duration::from_secs(5), |u| u.requests().iter().any(|r| r.target == path));
            assert!(seen, "a record of exactly 2^14 + 1 inner bytes was not read");
        } else {
            assert!(s.closed_within(Duration::from_secs(5)), "an inner plaintext over 2^14 + 1 bytes: still open");
            assert!(!up.requests().iter().any(|r| r.target == path), "{:#?}", up.requests());
        }
    }
}

/// A handshake record header claiming more than any record may hold (RFC 8446 §5.2: 2^14 + 256
/// in 1.3; RFC 5246 §6.2.3: 2^14 + 2048) can never be whole: it is refused at once with a
/// fatal alert (rustls's, decode_error; the RFC names record_overflow, but after the
/// ServerHello only rustls can seal an alert). It was waited for until client_head, holding a
/// record buffer.
#[test]
fn oversized_record_header_in_the_handshake_is_refused_at_once() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-edges");
    let apex = patient_apex(&up, &pki);
    for (len, follow) in [(0xffffu16, 20_000usize), (0x4801, 10)] {
        let mut s = connect(tls_addr(&apex), None);
        let mut bytes = vec![0x16, 0x03, 0x01];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(1u8, follow));
        let _ = s.write_all(&bytes);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = vec![];
        let closed = loop {
            let mut tmp = [0u8; 4096];
            match s.read(&mut tmp) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break false,
                Err(_) => break true,
            }
        };
        assert!(closed, "length {len:#x}: still open 5 s later (client_head 30 s); got {got:02x?}");
        // A plaintext alert record: type 21, version, length 2, level fatal (2), decode_error (50).
        assert!(
            got.len() >= 7 && got[0] == 21 && got[5] == 2 && got[6] == 50,
            "length {len:#x}: no fatal alert before the close: {got:02x?}"
        );
    }
    assert_serving(&apex, &pki, "/after-oversized-headers");
}

/// RFC 8446 §5.2 and §6.2: a record that fails its tag, or is longer than any record may be,
/// ends the connection with a fatal alert that says so (bad_record_mac, record_overflow), not a
/// bare close as before. Both versions; the alert is read (decrypted) by the rustls client.
#[test]
fn a_bad_record_after_the_handshake_gets_its_alert() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-edges");
    let apex = patient_apex(&up, &pki);
    let forged = [&[23u8, 3, 3, 0, 32][..], &[0; 32]].concat();
    let too_long = [&[23u8, 3, 3, 0x48, 0x01][..], &[0; 64]].concat();
    for (v, name) in versions() {
        for (bytes, want) in
            [(&forged, rustls::AlertDescription::BadRecordMac), (&too_long, rustls::AlertDescription::RecordOverflow)]
        {
            let mut t = tls(tls_addr(&apex), &pki, a_test(v));
            let r = t.request(&get("a.test", "/before"));
            assert_eq!(r.status, 200);
            t.s.sock.write_all(bytes).unwrap();
            let (_, end) = t.read_to_end(Duration::from_secs(5));
            let err = match end {
                Some(Err(e)) => e,
                other => panic!("{name:?} {want:?}: the connection ended {other:?}"),
            };
            assert_eq!(
                rustls_error(&err),
                Some(&rustls::Error::AlertReceived(want)),
                "{name:?}: ended by {err} instead of the alert {want:?}"
            );
        }
    }
}

/// RFC 8446 §6: in TLS 1.3 an alert's level "can safely be ignored", so close_notify sent with
/// level fatal (2, 0) is a close_notify and is answered with Apex's, as (1, 0) is. It was taken
/// as an error (and a TLS upstream's close-delimited response ended that way was cut).
#[test]
fn tls13_close_notify_with_level_fatal_is_a_close_notify() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-edges");
    let apex = patient_apex(&up, &pki);
    for level in [1u8, 2] {
        let mut s = Sealer::after_a_request(tls_addr(&apex), &pki, &rustls::version::TLS13, "/before");
        let rec = s.record(21, &[level, 0], 0);
        s.send(&[rec]);
        s.sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = vec![];
        let _ = s.sock.read_to_end(&mut got);
        // Undecrypted: Apex's close_notify is one record of 19 bytes of ciphertext (alert 2,
        // inner type 1, tag 16); after an error Apex closes with nothing.
        assert_eq!(got.get(3..5), Some(&[0u8, 19][..]), "level {level}: {got:02x?}");
        assert_eq!(got.len(), 5 + 19, "level {level}: {got:02x?}");
    }
}
