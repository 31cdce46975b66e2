//! Certificates and rustls configurations: `[[tls.cert]]` entries loaded and checked (files,
//! key match, names covered, not expired) into the server config with its SNI resolver; the
//! client config for TLS upstreams; the process's session-ticket key rotator.
//!
//! Runs at start and on reload, never on a worker's hot path: it may allocate, and its errors
//! are `String`s naming the file. Limits: the expiry check reads only the leaf's notAfter (a
//! minimal DER walker, `der`); webpki does the real chain and name checks.

use std::sync::Arc;

use rustls::ServerConfig;

/// One `[[tls.cert]]`: a chain, its key, and the SNI names it serves.
#[derive(Debug, Clone)]
pub struct CertSpec {
    pub chain: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub names: Vec<String>,
}

/// Picks a certificate by SNI: exact names, then one-label wildcards (`*.example.com`), then the
/// first certificate, unless `strict` (then an unknown or absent name fails the handshake).
#[derive(Debug)]
struct Sni {
    /// Lowercase names; a wildcard is stored as its suffix with the dot (`.example.com`).
    exact: Vec<(Box<str>, usize)>,
    wild: Vec<(Box<str>, usize)>,
    keys: Vec<Arc<rustls::sign::CertifiedKey>>,
    strict: bool,
    /// `[tls.acme]` is configured: names without a `[[tls.cert]]` get the certificate the ACME
    /// thread issued (`acme::issued`), and `acme-tls/1` hellos the validation certificate.
    acme: bool,
}

impl rustls::server::ResolvesServerCert for Sni {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if self.acme && crate::acme::is_validation_hello(hello.alpn()) {
            // RFC 8737 §3: a hello offering only acme-tls/1 gets the validation certificate
            // for its name, or no handshake.
            return hello.server_name().and_then(crate::acme::validation_cert);
        }
        let found = hello.server_name().and_then(|n| {
            let exact = self.exact.iter().find(|(e, _)| e.eq_ignore_ascii_case(n));
            let wild = || {
                let dot = n.find('.')?;
                let suffix = n.get(dot..)?;
                self.wild.iter().find(|(w, _)| w.eq_ignore_ascii_case(suffix))
            };
            exact.or_else(wild).map(|&(_, i)| i)
        });
        let i = match found {
            Some(i) => i,
            None if self.acme => {
                // `[[tls.cert]]` entries win for the names they cover; then what ACME issued.
                if let Some(k) = hello.server_name().and_then(crate::acme::issued) {
                    return Some(k);
                }
                if self.strict {
                    return None;
                }
                0
            }
            None if self.strict => return None,
            None => 0,
        };
        self.keys.get(i).cloned()
    }
}

/// Loads every certificate and key and builds the rustls server config, with the key exchange
/// `groups` (`kx::DEFAULT` unless `tls.groups` says otherwise). An error names the entry (its
/// index in `certs`) and the file.
///
/// Which group a handshake uses is rustls's choice (0.23, `server/hs.rs`): the first group in
/// the *client's* supported_groups that is in `groups`; the order of `groups` is not consulted.
/// If the client sent no key share for that group, rustls answers with a HelloRetryRequest
/// for it (RFC 8446 §4.1.4). So a client that lists X25519MLKEM768 first but sends only an
/// X25519 share gets a HelloRetryRequest when `groups` holds the hybrid, and X25519 at once when
/// it does not; one that lists X25519 first gets X25519 either way.
pub fn server_config(
    certs: &[CertSpec],
    strict_sni: bool,
    groups: &[&'static dyn rustls::crypto::SupportedKxGroup],
    acme: bool,
) -> Result<Arc<ServerConfig>, (usize, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(super::kx::provider(groups));
    let mut sni = Sni { exact: Vec::new(), wild: Vec::new(), keys: Vec::new(), strict: strict_sni, acme };
    for (i, c) in certs.iter().enumerate() {
        let chain_name = c.chain.display();
        let key_name = c.key.display();
        std::fs::metadata(&c.chain).map_err(|e| (i, format!("chain {chain_name}: {e}")))?;
        std::fs::metadata(&c.key).map_err(|e| (i, format!("key {key_name}: {e}")))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.chain)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| (i, format!("chain {chain_name}: not a PEM certificate chain ({e})")))?;
        let Some(leaf) = chain.first() else {
            return Err((i, format!("chain {chain_name}: no certificate in it")));
        };
        if let Some(end) = not_after(leaf)
            && end < now_utc()
        {
            return Err((i, format!("chain {chain_name}: the certificate expired on {}", show_time(end))));
        }
        let key = PrivateKeyDer::from_pem_file(&c.key)
            .map_err(|e| (i, format!("key {key_name}: not a PEM private key ({e})")))?;
        let ck = rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            let why = match e {
                rustls::Error::InconsistentKeys(_) => "does not match the certificate".to_string(),
                e => format!("unusable ({e})"),
            };
            (i, format!("key {key_name} {why} in {chain_name}"))
        })?;
        let ck = Arc::new(ck);
        for n in &c.names {
            let lower = n.to_ascii_lowercase();
            // webpki checks the name against the certificate; a wildcard is checked with a
            // name it must cover.
            let probe = match lower.strip_prefix("*.") {
                Some(rest) => format!("apex-wildcard-probe.{rest}"),
                None => lower.clone(),
            };
            let mut check = rustls::server::ResolvesServerCertUsingSni::new();
            if check.add(&probe, rustls::sign::CertifiedKey::clone(&ck)).is_err() {
                return Err((i, format!("chain {chain_name}: the certificate does not cover the name {n:?}")));
            }
            match lower.strip_prefix('*') {
                Some(suffix) => sni.wild.push((suffix.into(), sni.keys.len())),
                None => sni.exact.push((lower.into(), sni.keys.len())),
            }
        }
        sni.keys.push(ck);
    }
    if sni.keys.is_empty() && !acme {
        return Err((0, "tls: give at least one [[tls.cert]]".into()));
    }
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| (0, format!("tls: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(sni));
    // RFC 7301: HTTP/1.x only (http/1.0 for clients that offer only it, as curl --http1.0
    // does); a client offering only other protocols (h2) is refused.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    if acme {
        // Last: rustls picks the first of ours the client offers, so only a client offering
        // nothing else gets it (RFC 8737 §3), and the connection ends after the handshake.
        cfg.alpn_protocols.push(crate::acme::ALPN.to_vec());
    }
    // The record layer after the handshake is ours (see the module comment).
    cfg.enable_secret_extraction = true;
    cfg.ticketer = ticketer().map_err(|e| (0, format!("tls: session tickets: {e}")))?;
    Ok(Arc::new(cfg))
}

/// A group's TLS to its servers, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsSpec {
    /// SNI and the name the certificate must match; None: the server's IP address, no SNI.
    pub server_name: Option<String>,
    /// Roots to trust instead of the system's.
    pub ca: Option<std::path::PathBuf>,
    /// Key exchange groups in the order offered (`tls_groups`); empty: `kx::DEFAULT`.
    pub groups: Vec<rustls::NamedGroup>,
}

/// How to speak TLS to one upstream server.
#[derive(Debug)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

impl UpstreamTls {
    pub fn new(config: Arc<rustls::ClientConfig>, spec: &UpstreamTlsSpec, addr: std::net::SocketAddr) -> Self {
        use rustls::pki_types::{DnsName, ServerName};
        // Checked when the config was read; an IP address is the fallback either way.
        let name = match spec.server_name.as_deref().map(|n| DnsName::try_from(n.to_string())) {
            Some(Ok(n)) => ServerName::DnsName(n),
            _ => ServerName::IpAddress(addr.ip().into()),
        };
        UpstreamTls { config, name }
    }
}

/// The system's roots: Debian/Ubuntu, then RHEL/Fedora, then Alpine/BSD locations.
const SYSTEM_ROOTS: [&str; 3] =
    ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// A TLS client config for upstreams: TLS 1.2 and 1.3, ALPN http/1.1, the chain and name
/// verified by webpki against `ca` (a PEM bundle) or the system's roots, key exchange `groups`
/// in that order. The order matters here: rustls sends a key share for the first group only
/// (and, when that is X25519MLKEM768, its X25519 half as a second share), so the default
/// offers the hybrid and a server without it still answers in one round trip.
pub fn client_config(
    ca: Option<&std::path::Path>,
    groups: &[&'static dyn rustls::crypto::SupportedKxGroup],
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = match ca {
        Some(p) => p.to_path_buf(),
        None => SYSTEM_ROOTS
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| format!("tls: no system roots (looked for {}); give tls_ca", SYSTEM_ROOTS.join(", ")))?,
    };
    let shown = path.display();
    std::fs::metadata(&path).map_err(|e| format!("tls_ca {shown}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("tls_ca {shown}: not PEM certificates ({e})"))?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("tls_ca {shown}: no usable certificate in it"));
    }
    let provider = Arc::new(super::kx::provider(groups));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.enable_secret_extraction = true;
    Ok(Arc::new(cfg))
}

/// One ticket key rotator for the process: tickets issued before a reload still resume after
/// it, and every worker can open every ticket.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    static TICKETER: std::sync::OnceLock<Arc<dyn rustls::server::ProducesTickets>> = std::sync::OnceLock::new();
    if let Some(t) = TICKETER.get() {
        return Ok(Arc::clone(t));
    }
    let t = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::clone(TICKETER.get_or_init(|| t)))
}

/// Seconds since the Unix epoch, now.
fn now_utc() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn show_time(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let (y, m, d) = crate::time::civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// One DER element at the front of `b`: (tag, contents, rest).
pub(crate) fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l0, mut b) = b.split_first()?;
    let len = if l0 < 0x80 {
        usize::from(l0)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (lb, rest) = b.split_at_checked(n)?;
        b = rest;
        lb.iter().fold(0usize, |a, &x| (a << 8) | usize::from(x))
    };
    let (body, rest) = b.split_at_checked(len)?;
    Some((tag, body, rest))
}

/// The notAfter of the first certificate in a PEM chain file, Unix seconds (for metrics and
/// /status; the file was read and checked when the config was loaded).
pub fn leaf_expiry(chain: &std::path::Path) -> Option<i64> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let leaf = CertificateDer::pem_file_iter(chain).ok()?.next()?.ok()?;
    not_after(&leaf)
}

/// The certificate's notAfter (RFC 5280 §4.1.2.5), in seconds since the epoch.
fn not_after(cert: &[u8]) -> Option<i64> {
    validity(cert).map(|(_, end)| end)
}

/// The certificate's notBefore and notAfter (RFC 5280 §4.1.2.5), in seconds since the epoch.
pub fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let (_, c, _) = der(cert)?; // Certificate
    let (_, tbs, _) = der(c)?; // TBSCertificate
    let (tag, _, mut rest) = der(tbs)?;
    if tag == 0xa0 {
        rest = der(rest)?.2; // [0] version, then the serial number
    }
    let rest = der(rest)?.2; // signature algorithm
    let rest = der(rest)?.2; // issuer
    let (_, validity, _) = der(rest)?;
    let (tag, t, after) = der(validity)?; // notBefore
    let start = time_of(tag, t)?;
    let (tag, t, _) = der(after)?;
    Some((start, time_of(tag, t)?))
}

/// The certificate's serial number (its DER contents, sign byte included) and the keyIdentifier
/// of its Authority Key Identifier extension (RFC 5280 §4.1.2.2, §4.2.1.1): what names it to
/// its CA (RFC 9773 §4.1, ACME renewal information).
pub fn serial_and_aki(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, c, _) = der(cert)?; // Certificate
    let (_, tbs, _) = der(c)?; // TBSCertificate
    let (mut tag, mut body, mut rest) = der(tbs)?;
    if tag == 0xa0 {
        (tag, body, rest) = der(rest)?; // [0] version, then the serial number
    }
    if tag != 0x02 {
        return None;
    }
    let serial = body;
    // signature, issuer, validity, subject, subjectPublicKeyInfo, then the optional fields.
    for _ in 0..5 {
        rest = der(rest)?.2;
    }
    while !rest.is_empty() {
        let (tag, body, next) = der(rest)?;
        rest = next;
        if tag != 0xa3 {
            continue; // [1] issuerUniqueID, [2] subjectUniqueID
        }
        let (_, mut exts, _) = der(body)?; // Extensions ::= SEQUENCE OF Extension
        while !exts.is_empty() {
            let (_, ext, next) = der(exts)?;
            exts = next;
            let (_, oid, value) = der(ext)?;
            if oid != [0x55, 0x1d, 0x23] {
                continue; // not id-ce-authorityKeyIdentifier (2.5.29.35)
            }
            let (mut tag, mut v, after) = der(value)?; // critical BOOLEAN DEFAULT FALSE
            if tag == 0x01 {
                (tag, v, _) = der(after)?;
            }
            if tag != 0x04 {
                return None;
            }
            let (_, mut aki, _) = der(v)?; // AuthorityKeyIdentifier ::= SEQUENCE
            while !aki.is_empty() {
                let (tag, id, next) = der(aki)?;
                if tag == 0x80 {
                    return Some((serial, id)); // keyIdentifier [0] IMPLICIT OCTET STRING
                }
                aki = next;
            }
            return None;
        }
    }
    None
}

/// A UTCTime or GeneralizedTime, in seconds since the epoch.
fn time_of(tag: u8, t: &[u8]) -> Option<i64> {
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |a, &c| c.is_ascii_digit().then(|| a * 10 + i64::from(c - b'0')))
    };
    // UTCTime YYMMDDHHMMSSZ (years 1950-2049) or GeneralizedTime YYYYMMDDHHMMSSZ.
    let (y, rest) = match tag {
        0x17 => {
            let yy = digits(t.get(..2)?)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, t.get(2..)?)
        }
        0x18 => (digits(t.get(..4)?)?, t.get(4..)?),
        _ => return None,
    };
    let f = |i: usize| digits(rest.get(i..i + 2)?);
    let days = crate::time::days_from_civil(y, f(0)?, f(2)?);
    Some(days * 86_400 + f(4)? * 3600 + f(6)? * 60 + f(8)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_dates_show() {
        assert_eq!(show_time(1_798_761_600), "2027-01-01");
    }

    #[test]
    fn der_reader_refuses_truncation() {
        assert!(der(&[0x30, 0x05, 1, 2]).is_none());
        assert!(der(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert_eq!(der(&[0x02, 0x01, 7, 9]), Some((0x02, &[7u8][..], &[9u8][..])));
        assert!(not_after(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_none());
    }
}
