//! Key exchange groups, offered in this order by default on the TLS listener and to TLS
//! upstreams: X25519MLKEM768 (0x11EC, the post-quantum hybrid of draft-ietf-tls-ecdhe-mlkem),
//! X25519, P-256 (secp256r1), P-384 (secp384r1). `tls.groups` and an upstream's `tls_groups`
//! pick another list (`parse`).
//!
//! The hybrid is built here as a rustls `SupportedKxGroup`: its X25519 half is rustls's own ring
//! X25519 (the same code as the classical group, with its checks), its ML-KEM-768 half is
//! libcrux's FIPS 203 implementation (formally verified, pure Rust, no C). Randomness comes
//! from ring's `SystemRandom` (getrandom), as ring's own key generation does.
//!
//! Runs during handshakes only, where rustls's API allocates anyway (a `Box` per key exchange,
//! a `Vec` per share); nothing here runs once a connection carries requests. Every length is
//! checked before it is used: a wrong share is rustls's `InvalidKeyShare`, which it answers with
//! illegal_parameter.

use ring::rand::{SecureRandom, SystemRandom};
use rustls::crypto::ring::kx_group;
use rustls::crypto::{ActiveKeyExchange, CompletedKeyExchange, CryptoProvider, SharedSecret, SupportedKxGroup};
use rustls::ffdhe_groups::FfdheGroup;
use rustls::{Error, NamedGroup, PeerMisbehaved, ProtocolVersion};

use libcrux_ml_kem::mlkem768;

/// ML-KEM-768 sizes (FIPS 203 §8, table 3) and X25519's (RFC 7748 §6.1).
const MLKEM768_EK_BYTES: usize = 1184;
const MLKEM768_CT_BYTES: usize = 1088;
const MLKEM_SS_BYTES: usize = 32;
const X25519_BYTES: usize = 32;
/// draft-ietf-tls-ecdhe-mlkem §3.1.1: the client share is 1216 bytes; §3.1.2: the server's 1120.
pub const CLIENT_SHARE_BYTES: usize = MLKEM768_EK_BYTES + X25519_BYTES;
pub const SERVER_SHARE_BYTES: usize = MLKEM768_CT_BYTES + X25519_BYTES;
const _: () = assert!(CLIENT_SHARE_BYTES == 1216 && SERVER_SHARE_BYTES == 1120);

const INVALID_SHARE: Error = Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare);

/// X25519MLKEM768 (draft-ietf-tls-ecdhe-mlkem, IANA 0x11EC), TLS 1.3 only.
pub static X25519MLKEM768: &dyn SupportedKxGroup = &X25519MlKem768;

/// The default order: the hybrid first, then the classical groups as rustls's ring provider
/// orders them.
pub const DEFAULT: [&dyn SupportedKxGroup; 4] =
    [X25519MLKEM768, kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];

/// The names `tls.groups` accepts (IANA's, and P-256/P-384 for the NIST curves), with their group.
const NAMES: [(&str, &dyn SupportedKxGroup); 6] = [
    ("X25519MLKEM768", X25519MLKEM768),
    ("X25519", kx_group::X25519),
    ("secp256r1", kx_group::SECP256R1),
    ("P-256", kx_group::SECP256R1),
    ("secp384r1", kx_group::SECP384R1),
    ("P-384", kx_group::SECP384R1),
];

/// A group list from config names (case-insensitive). Refused: an empty list, an unknown
/// name, a group named twice, and a list of only the hybrid (TLS 1.2 peers, which Apex accepts
/// and upstreams may be, could then agree on nothing).
pub fn parse(names: &[String]) -> Result<Vec<NamedGroup>, String> {
    let known = || NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    if names.is_empty() {
        return Err(format!("give at least one group (known: {})", known()));
    }
    let mut out: Vec<&'static dyn SupportedKxGroup> = Vec::with_capacity(names.len());
    for n in names {
        let Some(&(_, g)) = NAMES.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)) else {
            return Err(format!("unknown group {n:?} (known: {})", known()));
        };
        if out.iter().any(|o| o.name() == g.name()) {
            return Err(format!("group {n:?} is named twice"));
        }
        out.push(g);
    }
    if !out.iter().any(|g| g.usable_for_version(ProtocolVersion::TLSv1_2)) {
        return Err("add a classical group (X25519, P-256 or P-384): X25519MLKEM768 is TLS 1.3 only".into());
    }
    Ok(out.iter().map(|g| g.name()).collect())
}

/// The groups named (as `parse` gives them), in that order; none: `DEFAULT`.
pub fn resolve(named: &[NamedGroup]) -> Vec<&'static dyn SupportedKxGroup> {
    if named.is_empty() {
        return DEFAULT.to_vec();
    }
    named.iter().filter_map(|n| NAMES.iter().find(|(_, g)| g.name() == *n).map(|&(_, g)| g)).collect()
}

/// A name for a negotiated group, as the config spells it.
pub fn name(g: NamedGroup) -> &'static str {
    NAMES.iter().find(|(_, k)| k.name() == g).map_or("other", |(n, _)| n)
}

/// rustls's ring provider with `groups` in place of its key exchange groups.
pub fn provider(groups: &[&'static dyn SupportedKxGroup]) -> CryptoProvider {
    CryptoProvider { kx_groups: groups.to_vec(), ..rustls::crypto::ring::default_provider() }
}

fn random<const N: usize>() -> Result<[u8; N], Error> {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).map_err(|_| Error::FailedToGetRandomBytes)?;
    Ok(b)
}

#[derive(Debug)]
struct X25519MlKem768;

impl SupportedKxGroup for X25519MlKem768 {
    /// The client's half: a fresh ML-KEM-768 key pair and X25519 key; the share is the
    /// encapsulation key, then the X25519 share (draft-ietf-tls-ecdhe-mlkem §3.1.1).
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let x25519 = kx_group::X25519.start()?;
        // FIPS 203 §7.1: ML-KEM.KeyGen from 64 random bytes (d || z).
        let (dk, ek) = mlkem768::generate_key_pair(random::<64>()?).into_parts();
        let mut share = Vec::with_capacity(CLIENT_SHARE_BYTES);
        share.extend_from_slice(ek.as_slice());
        share.extend_from_slice(x25519.pub_key());
        Ok(Box::new(Active { x25519, dk, share }))
    }

    /// The server's half, in one step (a KEM: the server's share depends on the client's).
    fn start_and_complete(&self, client_share: &[u8]) -> Result<CompletedKeyExchange, Error> {
        // §3.1.1: encapsulation key, then X25519 share; exactly 1216 bytes.
        if client_share.len() != CLIENT_SHARE_BYTES {
            return Err(INVALID_SHARE);
        }
        let (ek, x_share) = client_share.split_at(MLKEM768_EK_BYTES);
        let ek = mlkem768::MlKem768PublicKey::try_from(ek).map_err(|_| INVALID_SHARE)?;
        // §3.1.2: the server MUST run FIPS 203 §7.2's encapsulation key check (every
        // coefficient below q) and abort with illegal_parameter (rustls's answer to this error).
        if !mlkem768::validate_public_key(&ek) {
            return Err(INVALID_SHARE);
        }
        // RFC 8446 §4.2.8.2 / §7.4.2 checks (and the all-zero secret) are ring's, via rustls.
        let x = kx_group::X25519.start_and_complete(x_share)?;
        let (ct, ss) = mlkem768::encapsulate(&ek, random::<32>()?);
        // §3.1.2: ciphertext, then the server's X25519 share.
        let mut pub_key = Vec::with_capacity(SERVER_SHARE_BYTES);
        pub_key.extend_from_slice(ct.as_slice());
        pub_key.extend_from_slice(&x.pub_key);
        Ok(CompletedKeyExchange {
            group: NamedGroup::X25519MLKEM768,
            pub_key,
            secret: combine(&ss, x.secret.secret_bytes()),
        })
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        None
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }

    /// The draft defines the group for TLS 1.3 only (its title and §1).
    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        version == ProtocolVersion::TLSv1_3
    }
}

/// §3.1.3: the shared secret is the ML-KEM shared secret, then the X25519 one (64 bytes).
fn combine(mlkem: &[u8; MLKEM_SS_BYTES], x25519: &[u8]) -> SharedSecret {
    let mut s = Vec::with_capacity(MLKEM_SS_BYTES + X25519_BYTES);
    s.extend_from_slice(mlkem);
    s.extend_from_slice(x25519);
    // SharedSecret zeroes its bytes when dropped.
    SharedSecret::from(s)
}

/// The client's key exchange in flight.
struct Active {
    x25519: Box<dyn ActiveKeyExchange>,
    dk: mlkem768::MlKem768PrivateKey,
    share: Vec<u8>,
}

impl ActiveKeyExchange for Active {
    fn complete(self: Box<Self>, server_share: &[u8]) -> Result<SharedSecret, Error> {
        // §3.1.2: the client MUST check the ciphertext's length (illegal_parameter otherwise).
        if server_share.len() != SERVER_SHARE_BYTES {
            return Err(INVALID_SHARE);
        }
        let (ct, x_share) = server_share.split_at(MLKEM768_CT_BYTES);
        let ct = mlkem768::MlKem768Ciphertext::try_from(ct).map_err(|_| INVALID_SHARE)?;
        // FIPS 203 §6.3: decapsulation does not fail (implicit rejection gives a secret the
        // server does not have, and the handshake's Finished check fails).
        let ss = mlkem768::decapsulate(&self.dk, &ct);
        let x = self.x25519.complete(x_share)?;
        Ok(combine(&ss, x.secret_bytes()))
    }

    /// rustls sends this X25519 share too (one key, two shares: draft-ietf-tls-hybrid-design
    /// §3.2 allows it), so a server without the hybrid answers without a HelloRetryRequest.
    fn hybrid_component(&self) -> Option<(NamedGroup, &[u8])> {
        Some((NamedGroup::X25519, self.x25519.pub_key()))
    }

    fn complete_hybrid_component(self: Box<Self>, server_share: &[u8]) -> Result<SharedSecret, Error> {
        self.x25519.complete(server_share)
    }

    fn pub_key(&self) -> &[u8] {
        &self.share
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        None
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_parse_and_are_checked() {
        let g = parse(&names(&["x25519", "X25519MLKEM768", "P-256"])).unwrap();
        assert_eq!(g, [NamedGroup::X25519, NamedGroup::X25519MLKEM768, NamedGroup::secp256r1]);
        let r: Vec<NamedGroup> = resolve(&g).iter().map(|g| g.name()).collect();
        assert_eq!(r, g);
        let d: Vec<NamedGroup> = resolve(&[]).iter().map(|g| g.name()).collect();
        assert_eq!(d, [NamedGroup::X25519MLKEM768, NamedGroup::X25519, NamedGroup::secp256r1, NamedGroup::secp384r1]);
        assert!(parse(&[]).unwrap_err().contains("at least one"));
        assert!(parse(&names(&["X448"])).unwrap_err().contains("unknown group \"X448\""));
        assert!(parse(&names(&["P-256", "secp256r1"])).unwrap_err().contains("twice"));
        assert!(parse(&names(&["X25519MLKEM768"])).unwrap_err().contains("TLS 1.3 only"));
        assert_eq!(name(NamedGroup::X25519MLKEM768), "X25519MLKEM768");
        assert_eq!(name(NamedGroup::FFDHE2048), "other");
    }

    /// The layout, checked against libcrux and ring directly rather than against our own other
    /// half: a client share whose first 1184 bytes are an ML-KEM key we hold, whose last 32 are
    /// an X25519 key we hold; the server's share and secret must split as §3.1.2 and §3.1.3 say.
    #[test]
    fn server_share_and_secret_follow_the_draft() {
        let (dk, ek) = mlkem768::generate_key_pair([7u8; 64]).into_parts();
        let x = kx_group::X25519.start().unwrap();
        let mut client = ek.as_slice().to_vec();
        client.extend_from_slice(x.pub_key());
        let done = X25519MLKEM768.start_and_complete(&client).unwrap();
        assert_eq!(done.group, NamedGroup::X25519MLKEM768);
        assert_eq!(done.pub_key.len(), SERVER_SHARE_BYTES);
        let (ct, x_server) = done.pub_key.split_at(MLKEM768_CT_BYTES);
        let ss = mlkem768::decapsulate(&dk, &mlkem768::MlKem768Ciphertext::try_from(ct).unwrap());
        let xs = x.complete(x_server).unwrap();
        let secret = done.secret.secret_bytes();
        assert_eq!(secret.len(), 64);
        assert_eq!(&secret[..32], &ss[..], "ML-KEM secret first");
        assert_eq!(&secret[32..], xs.secret_bytes(), "X25519 secret second");
    }

    /// The client's share: encapsulation key first (a valid one), X25519 share last (the one
    /// also offered alone); our secret matches a server built from libcrux and ring directly.
    #[test]
    fn client_share_follows_the_draft() {
        let active = X25519MLKEM768.start().unwrap();
        let share = active.pub_key().to_vec();
        assert_eq!(share.len(), CLIENT_SHARE_BYTES);
        let (ek, x_client) = share.split_at(MLKEM768_EK_BYTES);
        let ek = mlkem768::MlKem768PublicKey::try_from(ek).unwrap();
        assert!(mlkem768::validate_public_key(&ek));
        assert_eq!(active.hybrid_component(), Some((NamedGroup::X25519, x_client)));
        let (ct, ss) = mlkem768::encapsulate(&ek, [9u8; 32]);
        let xs = kx_group::X25519.start_and_complete(x_client).unwrap();
        let mut server = ct.as_slice().to_vec();
        server.extend_from_slice(&xs.pub_key);
        let secret = active.complete(&server).unwrap();
        assert_eq!(&secret.secret_bytes()[..32], &ss[..]);
        assert_eq!(&secret.secret_bytes()[32..], xs.secret.secret_bytes());
    }

    #[test]
    fn bad_shares_are_refused() {
        let ok = X25519MLKEM768.start().unwrap().pub_key().to_vec();
        for n in [0, 32, CLIENT_SHARE_BYTES - 1, CLIENT_SHARE_BYTES + 1] {
            let share = vec![1u8; n];
            assert_eq!(X25519MLKEM768.start_and_complete(&share).err(), Some(INVALID_SHARE), "{n} bytes");
        }
        // FIPS 203 §7.2: a coefficient of q (3329 = 0xD01) or more fails the modulus check.
        let mut bad = ok.clone();
        bad[0] = 0xff;
        bad[1] = 0x0f;
        assert_eq!(X25519MLKEM768.start_and_complete(&bad).err(), Some(INVALID_SHARE));
        // An all-zero X25519 share gives the all-zero secret, refused (RFC 8446 §7.4.2).
        let mut zero = ok.clone();
        zero[MLKEM768_EK_BYTES..].fill(0);
        assert_eq!(X25519MLKEM768.start_and_complete(&zero).err(), Some(INVALID_SHARE));
        assert!(X25519MLKEM768.start_and_complete(&ok).is_ok());
        for n in [0, SERVER_SHARE_BYTES - 1, SERVER_SHARE_BYTES + 1] {
            let a = X25519MLKEM768.start().unwrap();
            assert_eq!(a.complete(&vec![1u8; n]).err(), Some(INVALID_SHARE), "{n} bytes");
        }
    }

    #[test]
    fn hybrid_is_tls13_only() {
        assert!(X25519MLKEM768.usable_for_version(ProtocolVersion::TLSv1_3));
        assert!(!X25519MLKEM768.usable_for_version(ProtocolVersion::TLSv1_2));
    }
}
