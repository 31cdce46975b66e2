//! The `state` directory: `account.key` (the account's P-256 key, PKCS#8 PEM) and `cert.pem`
//! (the issued chain followed by its private key, one file so that the two always match). Both
//! 0600 in a 0700 directory, written atomically: a temporary file, fsync, rename, fsync of the
//! directory; a crash leaves the old file or the new one, never a mix.
//!
//! A file that is there but not what Apex wrote (corrupted, foreign) is an error naming it;
//! Apex never overwrites it, so nothing an operator put there is lost.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::AcmeSpec;

pub const ACCOUNT_FILE: &str = "account.key";
pub const CERT_FILE: &str = "cert.pem";

/// A certificate from `state`, ready to serve.
#[derive(Debug)]
pub struct Stored {
    pub key: Arc<CertifiedKey>,
    pub not_before: i64,
    pub not_after: i64,
    /// It covers every name of the spec.
    pub covers: bool,
    /// Its RFC 9773 identifier (`ari::cert_id`), if it has an Authority Key Identifier.
    pub id: Option<String>,
}

/// At start: every file in `state` that exists must read (an error names the file).
pub fn check(spec: &AcmeSpec) -> Result<(), String> {
    let account = spec.state.join(ACCOUNT_FILE);
    if account.exists() {
        read_account(&account)?;
    }
    load_cert(&spec.state, &spec.names).map(|_| ())
}

fn ensure_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("tls.acme state {}: cannot create: {e}", dir.display()))
}

fn read_account(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let key = PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{shown}: not an ACME account key ({e})"))?;
    let PrivateKeyDer::Pkcs8(der) = key else {
        return Err(format!("{shown}: not an ACME account key (want PKCS#8)"));
    };
    let rng = ring::rand::SystemRandom::new();
    ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        der.secret_pkcs8_der(),
        &rng,
    )
    .map_err(|_| format!("{shown}: not an ACME account key (want a P-256 key)"))?;
    Ok(der.secret_pkcs8_der().to_vec())
}

/// The account key, made and stored on first use (RFC 8555 §7.3: the key is the account).
pub fn account_key(dir: &Path) -> Result<Vec<u8>, String> {
    let path = dir.join(ACCOUNT_FILE);
    if path.exists() {
        return read_account(&path);
    }
    ensure_dir(dir)?;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| "cannot make an account key".to_string())?;
    let pem = pem_of("PRIVATE KEY", pkcs8.as_ref());
    write_atomic(&path, pem.as_bytes())?;
    Ok(pkcs8.as_ref().to_vec())
}

/// The stored certificate, if there is one.
pub fn load_cert(dir: &Path, names: &[String]) -> Result<Option<Stored>, String> {
    let path = dir.join(CERT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    parse_cert(&bytes, names).map(Some).map_err(|why| format!("{}: {why}", path.display()))
}

/// `cert.pem`'s contents: a chain, then its key.
pub fn parse_cert(bytes: &[u8], names: &[String]) -> Result<Stored, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a certificate chain and key Apex wrote ({e})"))?;
    let leaf = chain.first().ok_or("no certificate in it")?;
    let (not_before, not_after) = crate::tls::validity(leaf).ok_or("the certificate's validity cannot be read")?;
    let id = super::ari::cert_id(leaf);
    let key = PrivateKeyDer::from_pem_slice(bytes).map_err(|e| format!("no private key in it ({e})"))?;
    let provider = crate::tls::kx::provider(&crate::tls::kx::resolve(&[]));
    let ck = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| format!("the key does not fit the certificate ({e})"))?;
    let covers = names.iter().all(|n| {
        let mut check = rustls::server::ResolvesServerCertUsingSni::new();
        check.add(n, ck.clone()).is_ok()
    });
    Ok(Stored { key: Arc::new(ck), not_before, not_after, covers, id })
}

/// Stores a new chain (PEM, as the CA sent it) and its key (PKCS#8 DER).
pub fn save_cert(dir: &Path, chain_pem: &str, key_pkcs8: &[u8]) -> Result<(), String> {
    ensure_dir(dir)?;
    let mut text = chain_pem.trim_end().to_string();
    text.push('\n');
    text.push_str(&pem_of("PRIVATE KEY", key_pkcs8));
    write_atomic(&dir.join(CERT_FILE), text.as_bytes())
}

fn pem_of(label: &str, der: &[u8]) -> String {
    // Standard base64 with padding (RFC 7468 §2), 64 columns.
    let url = super::b64url(der);
    let mut std: String = url
        .chars()
        .map(|c| {
            if c == '-' {
                '+'
            } else if c == '_' {
                '/'
            } else {
                c
            }
        })
        .collect();
    while !std.len().is_multiple_of(4) {
        std.push('=');
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in std.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or(""));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Write, fsync, rename, fsync the directory: the file is the old one or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let shown = path.display();
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{shown}: cannot write: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_files_are_errors_naming_why() {
        assert!(parse_cert(b"hello", &[]).unwrap_err().contains("no certificate"));
        let pem = pem_of("CERTIFICATE", b"\x30\x03\x02\x01\x00");
        assert!(parse_cert(pem.as_bytes(), &[]).unwrap_err().contains("validity"));
    }

    #[test]
    fn pem_is_standard_base64() {
        assert_eq!(pem_of("X", &[0xfb, 0xff]), "-----BEGIN X-----\n+/8=\n-----END X-----\n");
    }
}
