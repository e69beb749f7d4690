//! The one leaf rule: a BasicCredential whose identity is a device's Ed25519
//! key, that key as the leaf's signature key, and the caller admitting it.

use backchannel_crypto::PublicKey;
use openmls::prelude::{BasicCredential, Credential, CredentialType};
use thiserror::Error;

/// Why a leaf (a member of a room's tree, or a key package's leaf) is
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LeafError {
    /// The credential is not a BasicCredential.
    #[error("the leaf's credential is not a basic credential")]
    NotBasic,
    /// The identity is not an acceptable Ed25519 public key.
    #[error("the leaf's identity is not an Ed25519 device key")]
    BadIdentity,
    /// The identity and the leaf's signature key differ.
    #[error("the leaf's identity is not its signature key")]
    IdentityNotSignatureKey,
    /// The caller does not admit the device to the room.
    #[error("device {0:?} is not admitted to this room")]
    NotAdmitted(PublicKey),
}

/// The device key of a leaf with `credential` and `signature_key`, if the
/// credential is a BasicCredential naming exactly that key (no `admits`).
pub(crate) fn device_key(
    credential: &Credential,
    signature_key: &[u8],
) -> Result<PublicKey, LeafError> {
    if credential.credential_type() != CredentialType::Basic {
        return Err(LeafError::NotBasic);
    }
    let basic = BasicCredential::try_from(credential.clone()).map_err(|_| LeafError::NotBasic)?;
    let key = PublicKey::from_bytes(basic.identity()).map_err(|_| LeafError::BadIdentity)?;
    if key.as_bytes().as_slice() != signature_key {
        return Err(LeafError::IdentityNotSignatureKey);
    }
    Ok(key)
}

/// [`device_key`], then `admits`.
pub(crate) fn check(
    credential: &Credential,
    signature_key: &[u8],
    admits: &dyn Fn(&PublicKey) -> bool,
) -> Result<PublicKey, LeafError> {
    let key = device_key(credential, signature_key)?;
    if !admits(&key) {
        return Err(LeafError::NotAdmitted(key));
    }
    Ok(key)
}
