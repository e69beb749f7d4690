//! HPKE (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305 — the ciphersuite's own) for what a client must send
//! to one recipient outside any MLS group: a party's enrolment to the
//! mediator, which it posts before it has a device in any room.
//!
//! ```text
//! sealed = kem_output[32] ‖ ciphertext          (ciphertext = AEAD output, tag last)
//! ```
//!
//! The recipient's key pair is derived from 32 secret bytes (`ikm`) it
//! keeps; its public key travels out of band (in the invitation document).

use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto as _;
use openmls_traits::types::{
    HpkeAeadType, HpkeCiphertext, HpkeConfig, HpkeKdfType, HpkeKemType, HpkePrivateKey,
};
use thiserror::Error;

/// The HPKE suite.
const CONFIG: HpkeConfig = HpkeConfig(
    HpkeKemType::DhKem25519,
    HpkeKdfType::HkdfSha256,
    HpkeAeadType::ChaCha20Poly1305,
);

/// The length of an X25519 public key and of the KEM output.
pub const HPKE_KEY_LEN: usize = 32;

/// Why sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HpkeError {
    /// A public key that is not 32 bytes, or that X25519 refuses.
    #[error("not an X25519 public key")]
    PublicKey,
    /// The sealed bytes are too short.
    #[error("sealed bytes too short")]
    Short,
    /// The ciphertext does not open under this key, info and aad.
    #[error("does not open: another key, another context, or altered bytes")]
    Open,
    /// The crypto provider failed.
    #[error("HPKE: {0}")]
    Crypto(String),
}

/// The public key of the key pair derived from `ikm`.
pub fn hpke_public_key(ikm: &[u8; 32]) -> Result<[u8; HPKE_KEY_LEN], HpkeError> {
    let pair = RustCrypto::default()
        .derive_hpke_keypair(CONFIG, ikm)
        .map_err(|e| HpkeError::Crypto(format!("{e:?}")))?;
    pair.public
        .as_slice()
        .try_into()
        .map_err(|_| HpkeError::Crypto("a public key that is not 32 bytes".into()))
}

/// Seals `plaintext` to `public` under `info` (the context) and `aad`.
pub fn hpke_seal(
    public: &[u8; HPKE_KEY_LEN],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, HpkeError> {
    let ct = RustCrypto::default()
        .hpke_seal(CONFIG, public, info, aad, plaintext)
        .map_err(|_| HpkeError::PublicKey)?;
    let mut out = ct.kem_output.as_slice().to_vec();
    if out.len() != HPKE_KEY_LEN {
        return Err(HpkeError::Crypto(
            "a KEM output that is not 32 bytes".into(),
        ));
    }
    out.extend_from_slice(ct.ciphertext.as_slice());
    Ok(out)
}

/// Opens what [`hpke_seal`] sealed to the key pair derived from `ikm`.
pub fn hpke_open(
    ikm: &[u8; 32],
    info: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, HpkeError> {
    let pair = RustCrypto::default()
        .derive_hpke_keypair(CONFIG, ikm)
        .map_err(|e| HpkeError::Crypto(format!("{e:?}")))?;
    open_with(&pair.private, info, aad, sealed)
}

/// Opens what [`hpke_seal`] sealed to the X25519 public key of `secret`,
/// an X25519 secret key itself (a device's, from
/// `backchannel_crypto::SecretKey::x25519_secret`), not key material to
/// derive one from.
pub fn hpke_open_x25519(
    secret: &[u8; 32],
    info: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, HpkeError> {
    open_with(&HpkePrivateKey::from(&secret[..]), info, aad, sealed)
}

fn open_with(
    private: &HpkePrivateKey,
    info: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, HpkeError> {
    if sealed.len() < HPKE_KEY_LEN + 16 {
        return Err(HpkeError::Short);
    }
    let crypto = RustCrypto::default();
    let (kem_output, ciphertext) = sealed.split_at(HPKE_KEY_LEN);
    let input = HpkeCiphertext {
        kem_output: kem_output.to_vec().into(),
        ciphertext: ciphertext.to_vec().into(),
    };
    crypto
        .hpke_open(CONFIG, &input, private, info, aad)
        .map_err(|_| HpkeError::Open)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sealed_bytes_open_only_with_their_key_context_and_aad() {
        let ikm = [7u8; 32];
        let public = hpke_public_key(&ikm).unwrap();
        let sealed = hpke_seal(&public, b"info", b"aad", b"the names").unwrap();
        assert_eq!(sealed.len(), 32 + 9 + 16);
        assert_eq!(
            hpke_open(&ikm, b"info", b"aad", &sealed).unwrap(),
            b"the names"
        );
        assert_eq!(
            hpke_open(&[8u8; 32], b"info", b"aad", &sealed),
            Err(HpkeError::Open)
        );
        assert_eq!(
            hpke_open(&ikm, b"other", b"aad", &sealed),
            Err(HpkeError::Open)
        );
        assert_eq!(
            hpke_open(&ikm, b"info", b"other", &sealed),
            Err(HpkeError::Open)
        );
        let mut altered = sealed.clone();
        altered[40] ^= 1;
        assert_eq!(
            hpke_open(&ikm, b"info", b"aad", &altered),
            Err(HpkeError::Open)
        );
        assert_eq!(
            hpke_open(&ikm, b"info", b"aad", &sealed[..40]),
            Err(HpkeError::Short)
        );
        assert!(!sealed.windows(9).any(|w| w == b"the names"));
    }

    #[test]
    fn a_device_key_opens_what_was_sealed_to_its_x25519_half() {
        use backchannel_crypto::Signer as _;
        let device = backchannel_crypto::SecretKey::from_seed(&[3; 32]).unwrap();
        let other = backchannel_crypto::SecretKey::from_seed(&[4; 32]).unwrap();
        let sealed = hpke_seal(
            &device.public_key().to_x25519(),
            b"info",
            b"aad",
            b"the file",
        )
        .unwrap();
        assert_eq!(
            hpke_open_x25519(&device.x25519_secret(), b"info", b"aad", &sealed).unwrap(),
            b"the file"
        );
        assert_eq!(
            hpke_open_x25519(&other.x25519_secret(), b"info", b"aad", &sealed),
            Err(HpkeError::Open)
        );
        assert_eq!(
            hpke_open_x25519(&device.x25519_secret(), b"other", b"aad", &sealed),
            Err(HpkeError::Open)
        );
    }
}
