//! Issue 20: where Apex's TLS stalled or answered otherwise than RFC 8446 asks. A ClientHello
//! larger than a record buffer, an SSLv2-format hello and plain HTTP on the TLS port waited for
//! client_head with no alert; after the handshake, a KeyUpdate split over records, an empty or
//! malformed alert, a ChangeCipherSpec, a record shorter than its tag and a TLS 1.2
//! renegotiation got the wrong alert or none; and a fatal alert was followed by a close that a
//! client still sending turned into a reset. As a client of a TLS upstream, a flight larger
//! than a record buffer stalled and a NewSessionTicket split over records was refused. Each
//! test here was seen failing before its fix.
//! Records no TLS library sends are sealed with `Sealer` (tls_kit), and what Apex answers is
//! opened with the connection's keys, so the alert it names is checked.
//!
//! "At once" is checked as "well before client_head": Apex runs with client_head 30 s and each
//! wait here is bounded at 5 s.

use crate::harness::*;
use crate::tls_kit::*;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

/// Alert descriptions (RFC 8446 §6).
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const DECODE_ERROR: u8 = 50;
const PROTOCOL_VERSION: u8 = 70;
const NO_RENEGOTIATION: u8 = 100;

const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
const CT_APPDATA: u8 = 23;

/// Apex's TLS record buffer (`TLS_BUF_BYTES`).
const TLS_BUF_BYTES: usize = 18 * 1024 + 512;

/// Apex in front of `up`, serving a.test, with client_head and client_idle at 30 s: a bound
/// Apex enforces shows as a prompt answer, never as one of those timeouts.
fn patient_apex(up: &Upstream, pki: &Pki) -> Apex {
    Apex::start(
        &Config::to(up.addr)
            .timeout("client_head", "30s")
            .timeout("client_idle", "30s")
            .append(&tls_section(None, &[(&pki.a, &["a.test"])])),
    )
}

/// Reads a raw socket until the peer closes it or 5 s pass: (bytes, closed).
fn raw_until_close(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = vec![];
    let mut tmp = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        s.set_read_timeout(Some(left.max(ms(1)))).unwrap();
        match s.read(&mut tmp) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => return (got, true),
        }
    }
}

/// Asserts that `got` is one plaintext fatal alert record naming `desc` (and nothing else) and
/// that the connection closed.
fn assert_plain_alert(what: &str, got: &[u8], closed: bool, desc: u8) {
    assert!(closed, "{what}: still open 5 s later (client_head 30 s); got {got:02x?}");
    // Type, version (any), length 2, level fatal, description.
    let alert = got.len() == 7 && got[0] == CT_ALERT && got[3..] == [0, 2, 2, desc];
    assert!(alert, "{what}: not the fatal alert {desc} before the close: {got:02x?}");
}

/// Asserts that Apex's records end with the fatal alert `desc` and a close.
fn assert_sealed_alert(what: &str, recs: &[(u8, Vec<u8>)], closed: bool, desc: u8) {
    assert!(closed, "{what}: still open 5 s later (client_head 30 s); records {recs:?}");
    assert_eq!(recs.last(), Some(&(CT_ALERT, vec![2, desc])), "{what}: Apex's records {recs:?}");
}

/// Whether Apex's records so far hold the whole response to a request for `path`.
fn has_response(recs: &[(u8, Vec<u8>)], path: &str) -> bool {
    let data: Vec<u8> = recs.iter().filter(|(ct, _)| *ct == CT_APPDATA).flat_map(|(_, p)| p.clone()).collect();
    contains(&data, path.as_bytes())
}

/// ALPN names that make a rustls ClientHello longer than `bytes` (250-byte names, then
/// http/1.1, the one Apex picks).
fn long_alpn(bytes: usize) -> &'static [&'static str] {
    let mut v: Vec<&'static str> =
        (0..bytes / 251 + 1).map(|i| &*Box::leak(format!("{i:05}{}", "x".repeat(245)).into_boxed_str())).collect();
    v.push("http/1.1");
    Box::leak(v.into_boxed_slice())
}

// ---------------------------------------------------------------- stalls in the handshake

/// A ClientHello of 24 KB and one of 60 KB (offering many long ALPN names, as large key shares
/// and many PSK identities make hellos large), both larger than a record buffer and sent as
/// records of 2^14 bytes, complete the handshake and the request is answered, in TLS 1.2 and
/// 1.3. The bug: the hello did not fit in the record buffer, and the handshake waited for
/// client_head with no alert.
#[test]
fn client_hello_larger_than_a_record_buffer_completes_the_handshake() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-strict");
    let apex = patient_apex(&up, &pki);
    for bytes in [24_000, 60_000] {
        assert!(bytes > TLS_BUF_BYTES);
        for (v, want) in versions() {
            let hello = Hello::to("a.test").v(v).alpn(long_alpn(bytes));
            let mut t = tls_try(tls_addr(&apex), &pki, hello)
                .unwrap_or_else(|e| panic!("{want:?}: a {bytes}-byte ClientHello: the handshake failed: {e}"));
            assert_eq!(t.version(), Some(want));
            assert_eq!(t.alpn().as_deref(), Some("http/1.1"));
            let path = format!("/hello-{bytes}/{want:?}");
            let r = t.request(&get("a.test", &path));
            assert_eq!((r.status, r.body_str()), (200, path), "{want:?}: {}", r.head_str());
        }
    }
    // The handshake buffer went back: more connections keep working.
    for i in 0..20 {
        let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test"));
        let path = format!("/after/{i}");
        assert_eq!(t.request(&get("a.test", &path)).status, 200);
    }
}

/// A ClientHello within rustls's 64 KiB bound for one message, but cut into 64-byte records,
/// takes more than the handshake may buffer (64 KiB and a little): Apex answers decode_error
/// (the alert rustls gives a message too large) at once and closes. A second hello claiming
/// more than 64 KiB is refused as soon as its first record is read.
#[test]
fn client_hello_past_the_handshake_bound_gets_an_alert_at_once() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-strict");
    let apex = patient_apex(&up, &pki);
    for (claimed, fragment) in [(65_000usize, 64usize), (0x1_0000, 16_384)] {
        let mut msg = vec![1u8, (claimed >> 16) as u8, (claimed >> 8) as u8, claimed as u8];
        msg.extend(std::iter::repeat_n(0u8, claimed));
        let mut wire = vec![];
        for part in msg.chunks(fragment) {
            wire.extend_from_slice(&[CT_HANDSHAKE, 3, 1, (part.len() >> 8) as u8, part.len() as u8]);
            wire.extend_from_slice(part);
        }
        let mut s = connect(tls_addr(&apex), None);
        let mut w = s.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let _ = w.write_all(&wire);
        });
        let (got, closed) = raw_until_close(&mut s);
        assert_plain_alert(&format!("a {claimed}-byte hello in {fragment}-byte records"), &got, closed, DECODE_ERROR);
        drop(s);
        writer.join().unwrap();
    }
    let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test"));
    assert_eq!(t.request(&get("a.test", "/after")).status, 200);
}

/// An SSLv2-format ClientHello (RFC 5246 Appendix E.2; RFC 8446 Appendix D.5: not to be
/// accepted) is refused at once with protocol_version; plain HTTP sent to the TLS port gets
/// rustls's decode_error at once. The bug: their first bytes were read as a record header
/// (lengths 0x0303 and 0x202f), and the connection waited for client_head with no alert.
#[test]
fn sslv2_hello_and_plain_http_on_the_tls_port_get_an_alert_at_once() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-strict");
    let apex = patient_apex(&up, &pki);
    // msg_length 0x2e, CLIENT-HELLO, version 3.3, 21 bytes of cipher specs, no session id,
    // a 16-byte challenge.
    let mut v2 = vec![0x80, 0x2e, 0x01, 0x03, 0x03, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10];
    for spec in [0x00c02fu32, 0x00c030, 0x00009c, 0x00009d, 0x00002f, 0x000035, 0x0000ff] {
        v2.extend_from_slice(&spec.to_be_bytes()[1..]);
    }
    v2.extend_from_slice(&[7u8; 16]);
    assert_eq!(v2.len(), 2 + 0x2e);
    for (what, bytes, desc) in [
        ("an SSLv2-format ClientHello", v2, PROTOCOL_VERSION),
        ("plain HTTP", get("a.test", "/plain-on-tls"), DECODE_ERROR),
    ] {
        let mut s = connect(tls_addr(&apex), None);
        s.write_all(&bytes).unwrap();
        let (got, closed) = raw_until_close(&mut s);
        assert_plain_alert(what, &got, closed, desc);
    }
    assert!(up.requests().is_empty(), "{:#?}", up.requests());
    let mut t = tls(tls_addr(&apex), &pki, Hello::to("a.test"));
    assert_eq!(t.request(&get("a.test", "/after")).status, 200);
}

// ---------------------------------------------------------------- after the handshake

/// RFC 8446 §5: "If a TLS implementation receives an unexpected record type, it MUST terminate
/// the connection with an unexpected_message alert", and a change_cipher_spec record after the
/// peer's Finished is one. It got decode_error: its length (1) was checked before its type.
/// TLS 1.2 alike (RFC 5246 §7.1: the one ChangeCipherSpec comes before the Finished).
#[test]
fn change_cipher_spec_after_the_finished_gets_unexpected_message() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-strict");
    let apex = patient_apex(&up, &pki);
    for (v, name) in versions() {
        let mut s = Sealer::after_a_request(tls_addr(&apex), &pki, v, "/before");
        s.send(&[vec![20, 3, 3, 0, 1, 1]]);
        let (recs, closed) = s.read_records(Duration::from_secs(5), |_| false);
        assert_sealed_alert(&format!("{name:?}: a ChangeCipherSpec"), &recs, closed, UNEXPECTED_MESSAGE);
    }
}

/// A protected record shorter than its tag cannot be decrypted: bad_record_mac (RFC 8446 §5.2;
/// RFC 5246 §6.2.3.3, as rustls answers), not decode_error. Both versions.
#[test]
fn a_record_shorter_than_its_tag_gets_bad_record_mac() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-strict");
    let apex = patient_apex(&up, &pki);
    for (v, name) in versions() {
        for len in [0u8, 10] {
            let mut s = Sealer::after_a_request(tls_addr(&apex), &pki, v, "/before");
            let mut rec = vec![CT_APPDATA, 3, 3, 0, len];
            rec.extend(std::iter::repeat_n(0u8, len.into()));
            s.send(&[rec]);
            let (recs, closed) = s.read_records(Duration::from_secs(5), |_| false);
            assert_sealed_alert(&format!("{name:?}: a {len}-byte record"), &recs, closed, BAD_RECORD_MAC);
        }
    }
}

/// An alert record must hold exactly one alert (RFC 8446 §5.1; §5.4: an empty one is
/// unexpected_message; §6: one of the wrong length is decode_error). Both got a bare close.
/// Both versions.
#[test]
fn an_empty_or_malformed_alert_gets_a_fatal_alert() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-strict");
    let apex = patient_apex(&up, &pki);
    for (v, name) in versions() {
        for (alert, desc) in [(&[][..], UNEXPECTED_MESSAGE), (&[1][..], DECODE_ERROR), (&[1, 0, 0][..], DECODE_ERROR)] {
            let mut s = Sealer::after_a_request(tls_addr(&apex), &pki, v, "/before");
            let rec = s.record(CT_ALERT, alert, 0);
            s.send(&[rec]);
            let (recs, closed) = s.read_records(Duration::from_secs(5), |_| false);
            assert_sealed_alert(&format!("{name:?}: alert record {alert:?}"), &recs, closed, desc);
        }
    }
}

/// RFC 8446 §5.1: handshake messages may be split over records (with no other record between
/// the pieces). A KeyUpdate split in two and in four records is reassembled and honoured: the
/// request sealed with the client's next key is answered. It got unexpected_message.
#[test]
fn tls13_key_update_split_over_records_is_reassembled() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-strict");
    let apex = patient_apex(&up, &pki);
    let key_update = [24u8, 0, 0, 1, 0]; // update_not_requested: Apex's key stays
    for cuts in [&[2usize][..], &[1, 3, 4]] {
        let mut s = Sealer::after_a_request(tls_addr(&apex), &pki, &rustls::version::TLS13, "/before");
        let mut recs = vec![];
        let mut from = 0;
        for &to in cuts.iter().chain([&key_update.len()]) {
            recs.push(s.record(CT_HANDSHAKE, &key_update[from..to], 0));
            from = to;
        }
        s.next_send_key();
        let path = format!("/after-split-key-update/{}", cuts.len() + 1);
        recs.push(s.record(CT_APPDATA, &get("a.test", &path), 0));
        s.send(&recs);
        let (got, _) = s.read_records(Duration::from_secs(5), |r| {
            has_response(r, &path) || r.last().is_some_and(|x| x.0 != CT_APPDATA)
        });
        assert!(has_response(&got, &path), "a KeyUpdate in {} records: Apex's records {got:?}", cuts.len() + 1);
    }
}

/// TLS 1.2 renegotiation asked for by the client (a ClientHello after the handshake) is
/// declined with a no_renegotiation warning and the connection goes on, as rustls does
/// (RFC 5246 §7.2.2). It got a fatal unexpected_message.
#[test]
fn tls12_renegotiation_gets_a_no_renegotiation_warning_and_the_connection_goes_on() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-strict");
    let apex = patient_apex(&up, &pki);
    let mut s = Sealer::after_a_request(tls_addr(&apex), &pki, &rustls::version::TLS12, "/before");
    let mut hello = vec![1u8, 0, 0, 36, 3, 3];
    hello.extend_from_slice(&[9u8; 32]);
    hello.extend_from_slice(&[0, 0]);
    let recs = vec![s.record(CT_HANDSHAKE, &hello, 0), s.record(CT_APPDATA, &get("a.test", "/after-renegotiation"), 0)];
    s.send(&recs);
    let (got, _) = s.read_records(Duration::from_secs(5), |r| {
        has_response(r, "/after-renegotiation") || r.last().is_some_and(|x| x.0 != CT_APPDATA && x.0 != CT_ALERT)
    });
    assert_eq!(got.first(), Some(&(CT_ALERT, vec![1, NO_RENEGOTIATION])), "Apex's records {got:?}");
    assert!(has_response(&got, "/after-renegotiation"), "Apex's records {got:?}");
}

/// After a fatal alert Apex closes as after an HTTP error (nginx's lingering close): its write
/// side is shut and what the client still sends is read and dropped for a while, so the client
/// is not reset while sending. The bug: the connection closed at once with the client's bytes
/// unread, the kernel answered them with a reset, and the client's writes failed.
#[test]
fn a_client_still_sending_after_a_fatal_alert_is_not_reset() {
    let up = Upstream::echo_path();
    let pki = Pki::new("pki-strict");
    let apex = patient_apex(&up, &pki);
    for (v, name) in versions() {
        let mut s = Sealer::after_a_request(tls_addr(&apex), &pki, v, "/before");
        s.send(&[vec![CT_APPDATA, 3, 3, 0, 32], vec![0; 32]]); // fails its tag
        let (recs, _) = s.read_records(Duration::from_secs(5), |r| !r.is_empty());
        assert_eq!(recs.last(), Some(&(CT_ALERT, vec![2, BAD_RECORD_MAC])), "{name:?}: {recs:?}");
        thread::sleep(ms(50)); // the alert's connection is past its close (or lingering)
        let junk = vec![0x17u8; 4096];
        for i in 0..20 {
            if let Err(e) = s.sock.write_all(&junk) {
                panic!("{name:?}: write {i} after the alert failed: {e}");
            }
            thread::sleep(ms(5));
        }
        let _ = s.sock.shutdown(std::net::Shutdown::Write);
        assert!(s.closed_within(Duration::from_secs(5)), "{name:?}: not closed after the client closed");
    }
}

/// The application data in Apex's (or, to an origin, in its client's) records.
fn appdata(recs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    recs.iter().filter(|(ct, _)| *ct == CT_APPDATA).flat_map(|(_, p)| p.clone()).collect()
}

/// A TLS 1.3 origin may split a NewSessionTicket over records (RFC 8446 §5.1): Apex, its
/// client, joins the pieces, hands the ticket to rustls, and passes on the response that
/// follows. It refused the first piece (unexpected_message) and the client got a 502. The
/// origin is rustls for the handshake, then `Sealer` with the server's secrets.
#[test]
fn tls13_session_ticket_split_over_records_by_an_upstream_is_reassembled() {
    let pki = Pki::new("pki-strict");
    let leaf = sign_leaf(&pki.root.dir, "up", &["up.test"], &new_key(), &pki.root.issuer, &[], |_| {});
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(leaf.ders.clone(), leaf.private_key())
            .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.enable_secret_extraction = true;
    cfg.send_tls13_tickets = 0; // the origin sends its own, split
    let cfg = std::sync::Arc::new(cfg);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = thread::spawn(move || -> Result<String, String> {
        let (mut sock, _) = listener.accept().map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut conn = rustls::ServerConnection::new(cfg).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(|e| format!("handshake: {e}"))?;
        }
        // The request, if it came with the client's Finished, is rustls's already.
        let mut req = vec![];
        let _ = conn.reader().read_to_end(&mut req);
        let secrets = conn.dangerous_extract_secrets().map_err(|e| format!("secrets: {e}"))?;
        let mut s = Sealer::from_secrets(sock, true, secrets);
        // lifetime 3600 s, age_add 0, a 1-byte nonce, a 16-byte ticket, no extensions.
        let mut body = vec![0, 0, 0x0e, 0x10, 0, 0, 0, 0, 1, 0, 0, 16];
        body.extend_from_slice(&[7u8; 16]);
        body.extend_from_slice(&[0, 0]);
        let mut ticket = vec![4u8, 0, 0, body.len() as u8];
        ticket.extend(body);
        let recs = vec![s.record(CT_HANDSHAKE, &ticket[..7], 0), s.record(CT_HANDSHAKE, &ticket[7..], 0)];
        s.send(&recs);
        if !contains(&req, b"\r\n\r\n") {
            let (got, _) = s.read_records(Duration::from_secs(5), |r| contains(&appdata(r), b"\r\n\r\n"));
            req.extend(appdata(&got));
        }
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nafter a split ticket";
        let rec = s.record(CT_APPDATA, resp, 0);
        s.send(&[rec]);
        let _ = s.closed_within(Duration::from_secs(3));
        Ok(String::from_utf8_lossy(&req).into_owned())
    });
    let group = format!(
        "\n[upstream.up]\nservers = [\"{addr}\"]\ntls = true\ntls_name = \"up.test\"\ntls_ca = \"{}\"\n",
        pki.root.ca.display()
    );
    let apex = Apex::start(&Config::new().route("*", "/", "up").append(&group));
    let r = apex.client().request(&get("h", "/split-ticket"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "after a split ticket"), "{}", r.head_str());
    drop(apex);
    let req = origin.join().unwrap().unwrap_or_else(|e| panic!("the origin: {e}"));
    assert!(req.starts_with("GET /split-ticket "), "{req:?}");
}

/// An upstream's flight larger than a record buffer (a 30 KB certificate) takes the same
/// handshake buffer as a large ClientHello: the request goes through, TLS 1.2 and 1.3. The
/// certificate's records did not fit together, and the connect waited for upstream_connect.
#[test]
fn an_upstream_flight_larger_than_a_record_buffer_completes_the_handshake() {
    let pki = Pki::new("pki-strict");
    let mut names = vec!["up.test".to_string()];
    names.extend((0..700).map(|i| format!("host{i:05}.example-long-domain-name.test")));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let big = sign_leaf(&pki.root.dir, "big", &names, &new_key(), &pki.root.issuer, &[], |_| {});
    assert!(big.ders[0].len() > TLS_BUF_BYTES + 8192, "the certificate is only {} bytes", big.ders[0].len());
    for (v, want) in versions() {
        let mut cfg =
            rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[v])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(big.ders.clone(), big.private_key())
                .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = std::sync::Arc::new(cfg);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let origin = thread::spawn(move || -> Result<(), String> {
            let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
            sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut s = rustls::StreamOwned::new(rustls::ServerConnection::new(cfg).unwrap(), sock);
            let mut req = vec![];
            let mut tmp = [0u8; 4096];
            while !contains(&req, b"\r\n\r\n") {
                let n = s.read(&mut tmp).map_err(|e| format!("reading the request: {e}"))?;
                if n == 0 {
                    return Err(format!("closed after {:?}", String::from_utf8_lossy(&req)));
                }
                req.extend_from_slice(&tmp[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nbig chain").map_err(|e| e.to_string())?;
            s.flush().map_err(|e| e.to_string())?;
            let _ = s.read(&mut tmp);
            Ok(())
        });
        let group = format!(
            "\n[upstream.up]\nservers = [\"{addr}\"]\ntls = true\ntls_name = \"up.test\"\ntls_ca = \"{}\"\n",
            pki.root.ca.display()
        );
        let apex = Apex::start(&Config::new().route("*", "/", "up").timeout("upstream_connect", "30s").append(&group));
        let r = apex.client().request(&get("h", "/big-upstream-chain"));
        assert_eq!((r.status, r.body_str().as_str()), (200, "big chain"), "{want:?}: {}", r.head_str());
        drop(apex);
        origin.join().unwrap().unwrap_or_else(|e| panic!("{want:?}: the origin: {e}"));
    }
}
