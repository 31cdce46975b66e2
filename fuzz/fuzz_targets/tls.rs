//! A TLS listener fed arbitrary bytes, with a worker turned by hand on this thread.
//!
//! The first byte picks the mode:
//! - raw: the bytes go straight to the TLS port (rustls's handshake parsing and our glue:
//!   buffering, discards, alerts, lingering; a seed carries an X25519MLKEM768 key share, so
//!   mutated hybrid shares reach src/tls/kx.rs). Checked: Apex answers only with well-framed TLS
//!   records (never plaintext), and nothing reaches the upstream without a handshake.
//! - after a handshake: a real rustls client (TLS 1.2 or 1.3, AES-GCM or ChaCha20, picked by the
//!   mode byte) completes a handshake, sends the first part of the bytes as plaintext through
//!   TLS (HTTP or not), then the rest raw on the socket, as forged records. Checked: until the
//!   forged bytes go out, every record Apex sends decrypts and parses for the client (our record
//!   layer is right for every length and split), and the upstream only ever sees bytes that came
//!   in through TLS (a forged record is never taken as data).
//! - sealed (mode bit 3 set, after a handshake): instead of forged bytes, the client takes its
//!   keys from rustls and seals records of its own making: each `[type][n][n bytes]` of the
//!   rest becomes one record of that content type (20-24, or the byte itself past 250) holding
//!   those bytes, as no TLS library sends them (empty or malformed alerts, handshake messages
//!   split over records, KeyUpdates, renegotiation, ChangeCipherSpec). This reaches what only
//!   a decrypted record shows. Checked: Apex answers only with well-framed TLS records, and
//!   the upstream sees no more requests than the heads sent as data, through rustls or sealed.
#![no_main]
use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use apex::config::Config;
use apex::reactor::Worker;
use libfuzzer_sys::fuzz_target;

#[path = "shared/check.rs"]
mod check;
use check::{check_stream, drain};

struct Harness {
    worker: Worker,
    events: apex::reactor::Events,
    addr: SocketAddr,
    upstream: TcpListener,
    clients: Vec<Arc<rustls::ClientConfig>>,
    _dir: std::path::PathBuf,
}

thread_local!(static H: RefCell<Option<Harness>> = const { RefCell::new(None) });

fn harness() -> Harness {
    let dir = std::env::temp_dir().join(format!("apex-fuzz-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["fuzz.test".to_string()]).unwrap();
    std::fs::write(dir.join("c.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("c.key"), ck.signing_key.serialize_pem()).unwrap();
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    upstream.set_nonblocking(true).unwrap();
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n[timeouts]\nclient_head = \"2s\"\n\
         [limits]\nconnections = 512\nbody_bytes = 100000\n[log]\naccess = \"off\"\n\
         [[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"{}\"]\n\
         [tls]\nlisten = [\"127.0.0.1:0\"]\n[[tls.cert]]\nchain = \"{d}/c.pem\"\nkey = \"{d}/c.key\"\nnames = [\"fuzz.test\"]\n",
        upstream.local_addr().unwrap(),
        d = dir.display()
    );
    let cfg = Config::parse(&text, "fuzz").unwrap();
    let (addrs, mut ls) = apex::reactor::bind_all(&cfg).unwrap();
    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(cfg));
    let (logger, mut logs) = apex::log::Logger::start(apex::log::Sink::Off, 1).unwrap();
    std::mem::forget(logger);
    let worker = Worker::new(shared, ls.remove(0), logs.remove(0)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    use rustls::crypto::ring::cipher_suite as cs;
    let kinds = [
        (&rustls::version::TLS13, cs::TLS13_AES_128_GCM_SHA256),
        (&rustls::version::TLS13, cs::TLS13_CHACHA20_POLY1305_SHA256),
        (&rustls::version::TLS12, cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        (&rustls::version::TLS12, cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ];
    let clients = kinds
        .iter()
        .map(|&(v, suite)| {
            // Apex's own groups: TLS 1.3 runs negotiate X25519MLKEM768, as today's clients do.
            let mut p = apex::tls::kx::provider(&apex::tls::kx::DEFAULT);
            p.cipher_suites = vec![suite];
            let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(p))
                .with_protocol_versions(&[v])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            c.resumption = rustls::client::Resumption::disabled(); // every run does a full handshake
            c.enable_secret_extraction = true; // the sealed mode
            Arc::new(c)
        })
        .collect();
    Harness { worker, events: apex::reactor::Events::new(), addr: addrs[1], upstream, clients, _dir: dir }
}

/// Every byte is part of a TLS record with a known content type and version 3.x.
fn check_records(mut b: &[u8]) {
    while b.len() >= 5 {
        assert!((20..=24).contains(&b[0]) && b[1] == 3, "not a TLS record header: {:?}", &b[..5]);
        let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
        assert!(len <= (1 << 14) + 2048, "record of {len} bytes");
        b = &b[(5 + len).min(b.len())..];
    }
}

/// Accepts upstream connections and answers each read with one small response.
fn serve_upstream(h: &mut Harness, ups: &mut Vec<(TcpStream, Vec<u8>)>) -> bool {
    let mut progress = false;
    while let Ok((s, _)) = h.upstream.accept() {
        s.set_nonblocking(true).unwrap();
        ups.push((s, Vec::new()));
        progress = true;
    }
    for (s, got) in ups.iter_mut() {
        let before = got.len();
        let (p, _) = drain(s, got);
        progress |= p;
        if got.len() > before {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    }
    progress
}

fn raw(h: &mut Harness, data: &[u8]) {
    let mut client = TcpStream::connect(h.addr).unwrap();
    client.set_nonblocking(true).unwrap();
    let mut to_send = data;
    let mut got = Vec::new();
    let mut ups = Vec::new();
    let mut idle = 0;
    for _ in 0..200 {
        let mut progress = false;
        if !to_send.is_empty() {
            match client.write(to_send) {
                Ok(n) => {
                    to_send = &to_send[n..];
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => to_send = &[],
            }
        }
        h.worker.turn_within(&mut h.events, Duration::from_millis(1)).unwrap();
        progress |= serve_upstream(h, &mut ups);
        let (p, closed) = drain(&mut client, &mut got);
        progress |= p;
        if closed {
            break;
        }
        idle = if progress { 0 } else { idle + 1 };
        if idle > 6 && to_send.is_empty() {
            break;
        }
    }
    check_records(&got);
    assert!(ups.iter().all(|(_, g)| g.is_empty()), "bytes reached the upstream without a handshake");
}

/// The client's send direction, taken from rustls after the handshake (the sealed mode).
struct Sealer {
    v13: bool,
    explicit_nonce: bool,
    key: ring::aead::LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Sealer {
    fn take(tls: rustls::ClientConnection) -> Option<Sealer> {
        use rustls::ConnectionTrafficSecrets as S;
        let v13 = tls.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        let (seq, s) = tls.dangerous_extract_secrets().ok()?.tx;
        let (alg, key, iv, explicit_nonce) = match &s {
            S::Aes128Gcm { key, iv } => (&ring::aead::AES_128_GCM, key, iv, !v13),
            S::Aes256Gcm { key, iv } => (&ring::aead::AES_256_GCM, key, iv, !v13),
            S::Chacha20Poly1305 { key, iv } => (&ring::aead::CHACHA20_POLY1305, key, iv, false),
            _ => return None,
        };
        let key = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, key.as_ref()).ok()?);
        Some(Sealer { v13, explicit_nonce, key, iv: iv.as_ref().try_into().ok()?, seq })
    }

    /// One record of content type `ct` holding `plain` (RFC 8446 §5.2; RFC 5288, RFC 7905).
    fn record(&mut self, ct: u8, plain: &[u8]) -> Vec<u8> {
        let mut nonce = self.iv;
        for (b, s) in nonce.iter_mut().skip(4).zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        let mut data = plain.to_vec();
        if self.v13 {
            data.push(ct);
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
        let n = ring::aead::Nonce::assume_unique_for_key(nonce);
        self.key.seal_in_place_append_tag(n, ring::aead::Aad::from(&aad), &mut data).unwrap();
        self.seq += 1;
        let mut rec = head.to_vec();
        rec.extend_from_slice(&nonce[4..4 + explicit]);
        rec.extend_from_slice(&data);
        rec
    }
}

/// The sealed mode's records from `spec` (see the module), and the application data in them.
fn sealed_records(s: &mut Sealer, mut spec: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut wire, mut data) = (Vec::new(), Vec::new());
    while let [sel, n, rest @ ..] = spec {
        let ct = if *sel > 250 { *sel } else { [20, 21, 22, 23, 24][usize::from(*sel) % 5] };
        let (plain, after) = rest.split_at(usize::from(*n).min(rest.len()));
        if ct == 23 {
            data.extend_from_slice(plain);
        }
        wire.extend(s.record(ct, plain));
        spec = after;
    }
    (wire, data)
}

/// Writes `wire` to Apex and turns the worker until it closes or goes idle; returns what Apex
/// sent (raw).
fn exchange_raw(h: &mut Harness, sock: &mut TcpStream, ups: &mut Vec<(TcpStream, Vec<u8>)>, wire: &[u8]) -> Vec<u8> {
    let mut to_send = wire;
    let mut got = Vec::new();
    let mut idle = 0;
    for _ in 0..200 {
        let mut progress = false;
        if !to_send.is_empty() {
            match sock.write(to_send) {
                Ok(n) => {
                    to_send = &to_send[n..];
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => to_send = &[],
            }
        }
        h.worker.turn_within(&mut h.events, Duration::from_millis(1)).unwrap();
        progress |= serve_upstream(h, ups);
        let (p, closed) = drain(sock, &mut got);
        progress |= p;
        if closed {
            break;
        }
        idle = if progress { 0 } else { idle + 1 };
        if idle > 6 && to_send.is_empty() {
            break;
        }
    }
    got
}

fn after_handshake(h: &mut Harness, kind: usize, sealed: bool, plain: &[u8], forged: &[u8]) {
    let spec = if sealed { forged } else { &[][..] };
    let forged = if sealed { &[][..] } else { forged };
    let cfg = Arc::clone(&h.clients[kind % h.clients.len()]);
    let mut tls = rustls::ClientConnection::new(cfg, "fuzz.test".try_into().unwrap()).unwrap();
    let mut sock = TcpStream::connect(h.addr).unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut ups = Vec::new();
    let mut plain_left = plain;
    let mut forged_left = forged;
    let mut received = Vec::new();
    let mut closed = false;
    let mut idle = 0;
    for _ in 0..300 {
        let mut progress = false;
        if !tls.is_handshaking() && !plain_left.is_empty() {
            let n = tls.writer().write(plain_left).unwrap_or(0);
            plain_left = &plain_left[n..];
            progress |= n > 0;
        }
        while tls.wants_write() {
            match tls.write_tls(&mut sock) {
                Ok(n) if n > 0 => progress = true,
                _ => break,
            }
        }
        // Forged records go out only after all plaintext has left as records.
        if !tls.is_handshaking() && plain_left.is_empty() && !tls.wants_write() && !forged_left.is_empty() {
            match sock.write(forged_left) {
                Ok(n) => {
                    forged_left = &forged_left[n..];
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => forged_left = &[],
            }
        }
        h.worker.turn_within(&mut h.events, Duration::from_millis(1)).unwrap();
        progress |= serve_upstream(h, &mut ups);
        if !closed {
            match tls.read_tls(&mut sock) {
                Ok(0) => closed = true,
                Ok(_) => {
                    progress = true;
                    let forging = forged.len() != forged_left.len();
                    match tls.process_new_packets() {
                        Ok(_) => {}
                        // After forged records Apex may close or alert; before, it must not.
                        Err(e) if forging => {
                            let _ = e;
                            closed = true;
                        }
                        Err(e) => panic!("the client could not read Apex's records: {e}"),
                    }
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = tls.reader().read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        received.extend_from_slice(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => closed = true,
            }
        }
        idle = if progress { 0 } else { idle + 1 };
        if idle > 8 && (closed || (plain_left.is_empty() && forged_left.is_empty())) {
            break;
        }
    }
    // The sealed mode: records of the client's own making, after rustls's.
    let mut sealed_data = Vec::new();
    if sealed
        && !closed
        && plain_left.is_empty()
        && let Some(mut s) = Sealer::take(tls)
    {
        let (wire, data) = sealed_records(&mut s, spec);
        sealed_data = data;
        // Alerts and answers, sealed with keys this client no longer follows: framing only.
        check_records(&exchange_raw(h, &mut sock, &mut ups, &wire));
    }
    // What Apex answered is well-formed HTTP (its own errors or the upstream's canned answer),
    // and the upstream got canonical requests, no more than the heads sent through TLS: forged
    // records never become data.
    let heads = plain.windows(4).filter(|w| w == b"\r\n\r\n").count()
        + sealed_data.windows(4).filter(|w| w == b"\r\n\r\n").count();
    let forwarded: usize = ups.iter().map(|(_, g)| check_stream(g, true, false)).sum();
    assert!(forwarded <= heads, "upstream saw {forwarded} requests for {heads} heads sent through TLS");
    let sent_head = plain.windows(5).any(|w| w == b"HEAD ");
    let responses = check_stream(&received, false, sent_head);
    assert!(responses <= heads + 1, "client got {responses} responses for {heads} heads");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    H.with(|h| {
        let mut h = h.borrow_mut();
        let h = h.get_or_insert_with(harness);
        if mode & 1 == 0 {
            raw(h, data);
        } else {
            let Some((&split, data)) = data.split_first() else { return };
            let k = (split as usize * data.len()) / 255;
            let (plain, forged) = data.split_at(k.min(data.len()));
            after_handshake(h, usize::from(mode >> 1), mode & 8 != 0, plain, forged);
        }
    });
});
