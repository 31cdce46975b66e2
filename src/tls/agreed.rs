//! What a client's handshake agreed on, for the access log's TLS fields (issue #20): the
//! protocol version, the cipher suite and the key exchange group. Taken from rustls once, when
//! the handshake ends (`Agreed::of`), kept as rustls's two-byte codes in the connection's `Tls`
//! (a `Copy` value of a few bytes), and named only when a log line is written: static names,
//! no allocation.

use rustls::{CipherSuite, NamedGroup, ProtocolVersion};

use crate::log::TlsFields;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    version: ProtocolVersion,
    suite: CipherSuite,
    /// None: no key exchange took place (a resumed TLS 1.2 session, RFC 5246 §7.3).
    group: Option<NamedGroup>,
}

impl Agreed {
    /// What `hs`, whose handshake is complete, agreed on; None before a version and a suite are.
    #[cold]
    pub(super) fn of(hs: &rustls::CommonState) -> Option<Agreed> {
        Some(Agreed {
            version: hs.protocol_version()?,
            suite: hs.negotiated_cipher_suite()?.suite(),
            group: hs.negotiated_key_exchange_group().map(|g| g.name()),
        })
    }

    /// The names the access log writes.
    pub fn fields(self) -> TlsFields {
        TlsFields {
            version: version_name(self.version),
            cipher: suite_name(self.suite),
            group: self.group.map(super::kx::name),
        }
    }
}

/// As nginx's `$ssl_protocol` (OpenSSL's names).
fn version_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "other",
    }
}

/// IANA's names (the TLS Cipher Suites registry): RFC 8446 §B.4 for TLS 1.3's, RFC 5289 and
/// RFC 7905 for the TLS 1.2 ones rustls's ring provider has. rustls names the TLS 1.3 suites
/// `TLS13_*`; its names of the others are IANA's.
fn suite_name(s: CipherSuite) -> &'static str {
    match s {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        s => s.as_str().unwrap_or("other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_ianas_and_openssls() {
        let a = Agreed {
            version: ProtocolVersion::TLSv1_3,
            suite: CipherSuite::TLS13_AES_128_GCM_SHA256,
            group: Some(NamedGroup::X25519MLKEM768),
        };
        let f = a.fields();
        assert_eq!((f.version, f.cipher, f.group), ("TLSv1.3", "TLS_AES_128_GCM_SHA256", Some("X25519MLKEM768")));
        let a = Agreed {
            version: ProtocolVersion::TLSv1_2,
            suite: CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            group: None,
        };
        let f = a.fields();
        assert_eq!((f.version, f.cipher, f.group), ("TLSv1.2", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", None));
        assert_eq!(suite_name(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256), "TLS_CHACHA20_POLY1305_SHA256");
        assert_eq!(suite_name(CipherSuite::TLS13_AES_256_GCM_SHA384), "TLS_AES_256_GCM_SHA384");
        assert_eq!(suite_name(CipherSuite::Unknown(0x1234)), "other");
        assert_eq!(version_name(ProtocolVersion::TLSv1_1), "other");
        for (g, n) in
            [(NamedGroup::X25519, "X25519"), (NamedGroup::secp256r1, "secp256r1"), (NamedGroup::secp384r1, "secp384r1")]
        {
            assert_eq!(super::super::kx::name(g), n);
        }
    }
}
