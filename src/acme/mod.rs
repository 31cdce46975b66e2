//! Automatic HTTPS (`[tls.acme]`): certificates from an ACME CA (RFC 8555), obtained and renewed
//! on a thread of their own, never on a worker.
//!
//! Workers see three lock-free snapshots here, each an `ArcSwap` that only the ACME thread
//! stores: the issued certificates (the SNI resolver, `tls::certs`, asks after `[[tls.cert]]`),
//! the TLS-ALPN-01 validation certificates (RFC 8737), and the pending HTTP-01 tokens (RFC 8555
//! §8.3, answered by the plain listeners before any redirect or route). The handshake path
//! clones one `Arc`; the request path reads only for `/.well-known/acme-challenge/` and
//! allocates nothing. The thread keeps every snapshot it replaced until no worker holds it, so
//! a worker never frees one.
//!
//! Until a name has its certificate, a handshake for it gets the first `[[tls.cert]]` (or none,
//! with `strict_sni` or without any `[[tls.cert]]`): other names keep working, and no
//! placeholder certificate is ever shown.
//!
//! Not supported: External Account Binding (RFC 8555 §7.3.4), DNS-01, wildcard names (they need
//! DNS-01), IP address identifiers (RFC 8738), OCSP stapling.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

mod ari;
mod b64;
mod client;
mod run;
mod state;

pub use ari::{cert_id, parse as parse_renewal_info, rfc3339};
pub use b64::b64url;
pub use client::{Resp, parse_response, problem_text};
pub use run::spawn;
pub use state::check as check_state;

/// Let's Encrypt's production directory: the default CA.
pub const DEFAULT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Where the account key and certificates live unless `state` says otherwise.
pub const DEFAULT_STATE: &str = "/var/lib/apex/acme";
/// RFC 8737 §6.2: the ALPN protocol of TLS-ALPN-01.
pub const ALPN: &[u8] = b"acme-tls/1";
/// RFC 8555 §8.3: where HTTP-01 tokens are fetched.
pub const HTTP01_PREFIX: &[u8] = b"/.well-known/acme-challenge/";

/// `[tls.acme]`, checked (config/build.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSpec {
    /// The account's contact (RFC 8555 §7.3), if given.
    pub email: Option<String>,
    /// The directory URL (§7.1.1).
    pub directory: String,
    /// The identifiers to order, lower-case DNS names; one certificate covers them all.
    pub names: Vec<String>,
    /// The directory of the account key and the certificates, absolute.
    pub state: PathBuf,
    /// Roots that the directory's own HTTPS chains to, instead of the system's.
    pub directory_ca: Option<PathBuf>,
    pub challenge: Challenge,
}

/// Which challenge to answer when the CA offers both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// TLS-ALPN-01 where offered (it needs no plain listener), else HTTP-01.
    Auto,
    TlsAlpn,
    Http,
}

impl Challenge {
    pub fn parse(s: &str) -> Option<Challenge> {
        match s {
            "auto" => Some(Challenge::Auto),
            "tls-alpn-01" => Some(Challenge::TlsAlpn),
            "http-01" => Some(Challenge::Http),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::Auto => "auto",
            Challenge::TlsAlpn => "tls-alpn-01",
            Challenge::Http => "http-01",
        }
    }
}

/// `https://host[:port]/path` -> (host, port, path). Only https: the CA's API is HTTPS
/// (RFC 8555 §6.1).
pub fn split_url(url: &str) -> Option<(&str, u16, &str)> {
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i)?, rest.get(i..)?),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (authority, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
    (ok && path.bytes().all(|b| b.is_ascii_graphic())).then_some((host, port, path))
}

type Named<T> = Vec<(Box<str>, T)>;

/// What the ACME thread publishes to workers.
struct Store {
    issued: ArcSwap<Named<Arc<CertifiedKey>>>,
    validation: ArcSwap<Named<Arc<CertifiedKey>>>,
    /// HTTP-01: token -> key authorization (RFC 8555 §8.1).
    tokens: ArcSwap<Named<Box<[u8]>>>,
}

static STORE: LazyLock<Store> = LazyLock::new(|| Store {
    issued: ArcSwap::from_pointee(Vec::new()),
    validation: ArcSwap::from_pointee(Vec::new()),
    tokens: ArcSwap::from_pointee(Vec::new()),
});

/// The issued certificate for `name`, if there is one (the SNI resolver, on the handshake).
pub fn issued(name: &str) -> Option<Arc<CertifiedKey>> {
    by_name(&STORE.issued, name)
}

/// The TLS-ALPN-01 validation certificate for `name` while its challenge is pending.
pub fn validation_cert(name: &str) -> Option<Arc<CertifiedKey>> {
    by_name(&STORE.validation, name)
}

/// The certificate published for `name` (case-insensitive, as DNS names compare) in `list`.
fn by_name(list: &ArcSwap<Named<Arc<CertifiedKey>>>, name: &str) -> Option<Arc<CertifiedKey>> {
    let g = list.load();
    g.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, k)| Arc::clone(k))
}

/// RFC 8737 §3: the validation server offers the single protocol `acme-tls/1`.
pub fn is_validation_hello<'a>(alpn: Option<impl Iterator<Item = &'a [u8]>>) -> bool {
    let Some(mut offered) = alpn else { return false };
    offered.next() == Some(ALPN) && offered.next().is_none()
}

/// HTTP-01: calls `f` with the key authorization for `token`, if one is pending. No
/// allocation: the worker reads the snapshot in place.
pub fn key_authorization<R>(token: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    let g = STORE.tokens.load();
    g.iter().find(|(t, _)| t.as_bytes() == token).map(|(_, ka)| f(ka))
}
