//! The OpenMLS provider (RustCrypto + an in-memory key/value store), the
//! device key as an MLS signer, and the group configuration.

use std::collections::{BTreeMap, HashMap};

use backchannel_crypto::{PublicKey, SecretKey};
use openmls::prelude::{
    BasicCredential, CredentialWithKey, Lifetime, MlsGroupCreateConfig, MlsGroupJoinConfig,
    PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::{
    OpenMlsProvider,
    signatures::{Signer, SignerError},
    types::SignatureScheme,
};

use crate::{CIPHERSUITE, MAX_PAST_EPOCHS};

/// The storage map: OpenMLS's key/value pairs, kept sorted so that its
/// serialization is canonical.
pub(crate) type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// RustCrypto for crypto and randomness, a [`MemoryStorage`] for state.
#[derive(Default)]
pub(crate) struct Provider {
    crypto: RustCrypto,
    storage: MemoryStorage,
}

impl Provider {
    /// A provider whose storage holds `map`.
    pub(crate) fn with_map(map: &Map) -> Self {
        let values: HashMap<Vec<u8>, Vec<u8>> =
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Self {
            crypto: RustCrypto::default(),
            storage: MemoryStorage {
                values: std::sync::RwLock::new(values),
            },
        }
    }

    /// The storage's contents, sorted.
    pub(crate) fn map(&self) -> Map {
        let values = self
            .storage
            .values
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        values.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Replaces the storage's contents with `map`.
    pub(crate) fn set_map(&self, map: &Map) {
        let mut values = self
            .storage
            .values
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *values = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

/// The device key as an MLS signer: signs MLS `SignContent`s only, through
/// [`SecretKey::sign_mls`].
pub(crate) struct MlsSigner<'a>(pub(crate) &'a SecretKey);

impl Signer for MlsSigner<'_> {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        self.0
            .sign_mls(payload)
            .map(|sig| sig.to_vec())
            .map_err(|_| SignerError::SigningError)
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// The credential of a device: identity = signature key = the device key.
pub(crate) fn credential(key: &PublicKey) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(key.as_bytes().to_vec()).into(),
        signature_key: key.as_bytes().to_vec().into(),
    }
}

/// How a member's groups are configured when it joins (Welcome or external
/// commit).
pub(crate) fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .padding_size(0)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .use_ratchet_tree_extension(true)
        .build()
}

/// How a room's creator configures its group. The creator's first leaf
/// gets a lifetime that never ends (`[0, u64::MAX]`): it comes from no
/// published key package, the crate reads no clock, and the creator's
/// first commit replaces it (every commit of ours updates our own leaf).
pub(crate) fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .padding_size(0)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .use_ratchet_tree_extension(true)
        .lifetime(Lifetime::init(0, u64::MAX))
        .build()
}
