//! Post-quantum key exchange (issue #20): X25519MLKEM768 (draft-ietf-tls-ecdhe-mlkem, 0x11EC)
//! offered and negotiated on the TLS listener and to TLS upstreams, then X25519, P-256, P-384;
//! classical clients and origins unaffected; `tls.groups` and an upstream's `tls_groups` change
//! the list; and when a HelloRetryRequest happens (rustls follows the client's order). The
//! access log names the group a client's connection negotiated, with its version and cipher.
//! The clients and origins are rustls with Apex's own provider (`apex::tls::kx`: rustls's ring
//! provider plus the hybrid), or with rustls's plain ring provider for classical peers. Every
//! check reads the negotiated group and the handshake kind off the peer's connection.

use crate::cli::check_bad;
use crate::harness::*;
use crate::tls_kit::*;
use crate::tls_upstream::{TlsUpstream, tls_group};
use apex::tls::kx;
use rustls::client::ClientSessionStore;
use rustls::client::{Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::crypto::ring::kx_group;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, NamedGroup, RootCertStore, ServerConfig, SupportedCipherSuite,
};
use std::sync::Arc;

/// Apex with a `[tls]` listener for a.test (plus `extra` lines in `[tls]`), routing to `up`.
fn start(up: &Upstream, pki: &Pki, extra: &str) -> Apex {
    let section = tls_section(None, &[(&pki.a, &["a.test"])]);
    let section = section.replacen("[tls]\n", &format!("[tls]\n{extra}\n"), 1);
    Apex::start(&Config::to(up.addr).append(&section))
}

/// A session store that remembers nothing but says the server last chose `hint`: rustls then
/// sends a key share for that group only, whatever order `supported_groups` has (RFC 8446
/// §4.2.8 lets a client send shares for a subset), the way a client that learnt a server's group
/// does.
#[derive(Debug)]
struct Hint(NamedGroup);

impl ClientSessionStore for Hint {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        Some(self.0)
    }
    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(&self, _: ServerName<'static>, _: Tls13ClientSessionValue) {}
    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        None
    }
}

/// A client of a.test offering `groups` in that order (TLS 1.3 and 1.2, or `v` only), its one
/// key share for `hint` if given (else for the first group, plus X25519 when that is the hybrid).
fn client(
    pki: &Pki,
    groups: &[&'static dyn SupportedKxGroup],
    v: Option<&'static rustls::SupportedProtocolVersion>,
    hint: Option<NamedGroup>,
) -> Arc<ClientConfig> {
    client_of(pki, kx::provider(groups), v, hint)
}

/// `client` with the provider `p` (its groups and cipher suites).
fn client_of(
    pki: &Pki,
    p: CryptoProvider,
    v: Option<&'static rustls::SupportedProtocolVersion>,
    hint: Option<NamedGroup>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.root.der.clone()).unwrap();
    let versions = v.map_or(rustls::ALL_VERSIONS.to_vec(), |v| vec![v]);
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(&versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    if let Some(h) = hint {
        cfg.resumption = rustls::client::Resumption::store(Arc::new(Hint(h)));
    }
    Arc::new(cfg)
}

/// Handshakes with Apex, sends one request; (group, handshake kind), after checking the 200.
fn handshake(apex: &Apex, cfg: Arc<ClientConfig>) -> (NamedGroup, HandshakeKind) {
    let conn = ClientConnection::new(cfg, ServerName::try_from("a.test").unwrap()).unwrap();
    let mut t = tls_over(connect(tls_addr(apex), None), conn).expect("handshake with apex");
    let got = (
        t.s.conn.negotiated_key_exchange_group().expect("a group").name(),
        t.s.conn.handshake_kind().expect("a handshake kind"),
    );
    let r = t.request(&get("a.test", "/pq"));
    assert_eq!(r.status, 200, "request after a handshake on {got:?}: {}", r.head_str());
    got
}

const HYBRID: NamedGroup = NamedGroup::X25519MLKEM768;

/// A client of a.test offering `groups` and the one cipher suite `suite` (so only its version).
fn client_suite(pki: &Pki, groups: &[&'static dyn SupportedKxGroup], suite: SupportedCipherSuite) -> Arc<ClientConfig> {
    let p = CryptoProvider { cipher_suites: vec![suite], ..kx::provider(groups) };
    client_of(pki, p, Some(suite.version()), None)
}

/// The access-log line of one request for `path` on a new TLS connection made with `cfg`.
fn logged_over_tls(apex: &Apex, cfg: Arc<ClientConfig>, path: &str) -> String {
    let conn = ClientConnection::new(cfg, ServerName::try_from("a.test").unwrap()).unwrap();
    let mut t = tls_over(connect(tls_addr(apex), None), conn).expect("handshake with apex");
    let r = t.request(&get("a.test", path));
    assert_eq!(r.status, 200, "{path}: {}", r.head_str());
    logged(apex, path)
}

/// Issue #20: the access log names the TLS version, the cipher suite (IANA's name) and the key
/// exchange group of the connection each request came on: ` tls= cipher= group=` at the end of
/// a combined line, `tls_version`, `tls_cipher`, `tls_group` in JSON. A request over plain HTTP
/// has none of them in a combined line, and nulls in JSON (as `upstream` is for no upstream).
#[test]
fn the_access_log_names_the_tls_version_cipher_and_group() {
    use rustls::crypto::ring::cipher_suite as cs;
    let pki = Pki::new("pq");
    let up = Upstream::ok("pq");
    for format in ["combined", "json"] {
        let section = tls_section(None, &[(&pki.a, &["a.test"])]);
        let log = format!("[log]\naccess = \"stdout\"\nformat = \"{format}\"\n");
        let apex = Apex::start(&Config::to(up.addr).append(&section).append(&log));
        // Fresh clients per Apex: nothing to resume, every handshake agrees on a group.
        let cases = [
            (
                "hybrid",
                client_suite(&pki, &kx::DEFAULT, cs::TLS13_AES_128_GCM_SHA256),
                ["TLSv1.3", "TLS_AES_128_GCM_SHA256", "X25519MLKEM768"],
            ),
            (
                "x25519",
                client_suite(&pki, &[kx_group::X25519], cs::TLS13_CHACHA20_POLY1305_SHA256),
                ["TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256", "X25519"],
            ),
            // TLS 1.2 has no hybrid: the client offering it gets X25519.
            (
                "tls12",
                client_suite(&pki, &kx::DEFAULT, cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
                ["TLSv1.2", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "X25519"],
            ),
            (
                "tls12-p256",
                client_suite(&pki, &[kx_group::SECP256R1], cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
                ["TLSv1.2", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "secp256r1"],
            ),
            (
                "p384",
                client_suite(&pki, &[kx_group::SECP384R1], cs::TLS13_AES_256_GCM_SHA384),
                ["TLSv1.3", "TLS_AES_256_GCM_SHA384", "secp384r1"],
            ),
        ];
        for (name, cfg, [version, cipher, group]) in cases {
            let line = logged_over_tls(&apex, cfg, &format!("/{format}-{name}"));
            if format == "combined" {
                let want = format!(" end=- tls={version} cipher={cipher} group={group}");
                assert!(line.ends_with(&want), "{name}: the line should end with {want:?}: {line}");
            } else {
                let v: serde_json::Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{name}: {e}: {line}"));
                assert_eq!(
                    (&v["tls_version"], &v["tls_cipher"], &v["tls_group"]),
                    (&version.into(), &cipher.into(), &group.into()),
                    "{name}: {line}"
                );
            }
        }
        let path = format!("/{format}-plain");
        let r = apex.client().request(&get("a.test", &path));
        assert_eq!(r.status, 200, "{}", r.head_str());
        let line = logged(&apex, &path);
        if format == "combined" {
            assert!(line.ends_with(" end=-") && !line.contains("tls="), "plain: no TLS fields: {line}");
        } else {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("plain: {e}: {line}"));
            for k in ["tls_version", "tls_cipher", "tls_group"] {
                assert_eq!(v.get(k), Some(&serde_json::Value::Null), "plain: {k} is null: {line}");
            }
        }
    }
}

#[test]
fn a_client_offering_the_hybrid_negotiates_it_without_a_retry() {
    let pki = Pki::new("pq");
    let up = Upstream::ok("pq");
    let apex = start(&up, &pki, "");
    let tls13 = Some(&rustls::version::TLS13);
    assert_eq!(handshake(&apex, client(&pki, &kx::DEFAULT, None, None)), (HYBRID, HandshakeKind::Full));
    assert_eq!(handshake(&apex, client(&pki, &kx::DEFAULT, tls13, None)), (HYBRID, HandshakeKind::Full));
    // Only the hybrid: no classical share at all, so nothing else could have been agreed.
    assert_eq!(handshake(&apex, client(&pki, &[kx::X25519MLKEM768], tls13, None)), (HYBRID, HandshakeKind::Full));
    // TLS 1.2 has no hybrid (the draft is TLS 1.3 only): the same client gets X25519 there.
    let tls12 = Some(&rustls::version::TLS12);
    assert_eq!(handshake(&apex, client(&pki, &kx::DEFAULT, tls12, None)), (NamedGroup::X25519, HandshakeKind::Full));
}

#[test]
fn classical_clients_still_get_their_group() {
    let pki = Pki::new("pq");
    let up = Upstream::ok("pq");
    let apex = start(&up, &pki, "");
    // rustls's ring provider as it is: X25519, P-256, P-384.
    let ring = rustls::crypto::ring::default_provider().kx_groups;
    assert_eq!(handshake(&apex, client(&pki, &ring, None, None)), (NamedGroup::X25519, HandshakeKind::Full));
    for (g, want) in [(kx_group::SECP256R1, NamedGroup::secp256r1), (kx_group::SECP384R1, NamedGroup::secp384r1)] {
        assert_eq!(handshake(&apex, client(&pki, &[g], None, None)), (want, HandshakeKind::Full));
    }
}

/// rustls 0.23's server takes the first group of the client's supported_groups that it has,
/// whatever the order of `tls.groups`, and asks for it with a HelloRetryRequest (RFC 8446
/// §4.1.4) when the client sent no share for it. So "offers the hybrid, sends only an X25519
/// share" retries exactly when the listener has the hybrid.
#[test]
fn a_retry_happens_only_for_a_group_the_listener_has_and_the_client_lists_first() {
    let pki = Pki::new("pq");
    let up = Upstream::ok("pq");
    let hybrid_first_x25519_share = || client(&pki, &kx::DEFAULT, None, Some(NamedGroup::X25519));
    let x25519_first = || client(&pki, &[kx_group::X25519, kx::X25519MLKEM768], None, None);

    let default = start(&up, &pki, "");
    let retried = (HYBRID, HandshakeKind::FullWithHelloRetryRequest);
    assert_eq!(handshake(&default, hybrid_first_x25519_share()), retried);
    assert_eq!(handshake(&default, x25519_first()), (NamedGroup::X25519, HandshakeKind::Full));

    let classical = start(&up, &pki, r#"groups = ["X25519", "P-256", "P-384"]"#);
    assert_eq!(handshake(&classical, hybrid_first_x25519_share()), (NamedGroup::X25519, HandshakeKind::Full));
    assert_eq!(handshake(&classical, x25519_first()), (NamedGroup::X25519, HandshakeKind::Full));
    // The hybrid alone cannot be agreed with it: the handshake fails, nothing else is offered.
    let only_hybrid = client(&pki, &[kx::X25519MLKEM768], None, None);
    let conn = ClientConnection::new(only_hybrid, ServerName::try_from("a.test").unwrap()).unwrap();
    assert!(tls_over(connect(tls_addr(&classical), None), conn).is_err());

    // The listener's order is not a preference: X25519 listed first changes nothing.
    let x25519_listed_first = start(&up, &pki, r#"groups = ["X25519", "X25519MLKEM768"]"#);
    assert_eq!(handshake(&x25519_listed_first, hybrid_first_x25519_share()), retried);
    assert_eq!(handshake(&x25519_listed_first, client(&pki, &kx::DEFAULT, None, None)), (HYBRID, HandshakeKind::Full));
}

#[test]
fn bad_group_lists_are_refused_with_their_line() {
    let tls = "[tls]\nlisten = [\"127.0.0.1:0\"]\n";
    let route =
        "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n";
    check_bad(&format!("{route}{tls}groups = [\"X448\"]\n"), 8..=8, &["unknown group \"X448\""]);
    check_bad(&format!("{route}{tls}groups = []\n"), 8..=8, &["at least one group"]);
    check_bad(&format!("{route}{tls}groups = [\"P-256\", \"secp256r1\"]\n"), 8..=8, &["named twice"]);
    check_bad(&format!("{route}{tls}groups = [\"X25519MLKEM768\"]\n"), 8..=8, &["TLS 1.3 only"]);
    check_bad(&format!("{route}tls = true\ntls_groups = [\"nope\"]\n"), 7..=7, &["tls_groups", "unknown group"]);
    check_bad(&format!("{route}tls_groups = [\"X25519\"]\n"), 6..=6, &["needs `tls = true`"]);
}

/// An origin config with `groups` (TLS 1.3 and 1.2), serving `leaf`.
fn origin(leaf: &Leaf, groups: &[&'static dyn SupportedKxGroup]) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(kx::provider(groups)))
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.ders.clone(), leaf.private_key())
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// One request through Apex to a TLS origin with `groups`, Apex's group having `tls_lines`;
/// what the origin saw: (group, handshake kind).
fn upstream_handshake(
    pki: &Pki,
    groups: &[&'static dyn SupportedKxGroup],
    tls_lines: &str,
) -> (NamedGroup, HandshakeKind) {
    let up = TlsUpstream::echo(origin(&pki.a, groups));
    let group = tls_group("api", &[up.addr], Some("a.test"), Some(pki.root.ca.as_path())) + tls_lines;
    let apex = Apex::start(&Config::new().route("*", "/", "api").append(&group));
    let r = apex.client().request(&get("h", "/up"));
    assert_eq!(r.status, 200, "through Apex to the origin: {}", r.head_str());
    let c = up.conns();
    let c = c.first().expect("the origin saw a connection");
    (c.group.expect("a group"), c.kind.expect("a handshake kind"))
}

#[test]
fn upstreams_are_offered_the_hybrid_first() {
    let pki = Pki::new("pq");
    assert_eq!(upstream_handshake(&pki, &kx::DEFAULT, ""), (HYBRID, HandshakeKind::Full));
    // An origin that has only the hybrid (and so takes TLS 1.3 only) is reached too.
    assert_eq!(upstream_handshake(&pki, &[kx::X25519MLKEM768], ""), (HYBRID, HandshakeKind::Full));
    // A classical origin answers the X25519 share sent beside the hybrid's: no retry.
    let ring = rustls::crypto::ring::default_provider().kx_groups;
    assert_eq!(upstream_handshake(&pki, &ring, ""), (NamedGroup::X25519, HandshakeKind::Full));
    // tls_groups: the order Apex offers.
    let p256_first = "tls_groups = [\"P-256\", \"X25519MLKEM768\"]\n";
    assert_eq!(upstream_handshake(&pki, &kx::DEFAULT, p256_first), (NamedGroup::secp256r1, HandshakeKind::Full));
}
