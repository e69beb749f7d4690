//! The client's storage: everything a participant keeps goes through
//! [`ClientStore`], a small key-value contract that backends implement and
//! encrypt at rest (`backchannel-client-store-sqlite`: values sealed under a
//! key derived from the passphrase, keys blinded).
//!
//! Contract:
//! - `put` and `put_many` return only once durable; `put_many` is atomic
//!   (after a crash all of its writes are visible or none).
//! - Keys are opaque bytes within a [`Namespace`]; there are no range
//!   scans (a backend may blind keys), so callers keep their own counters
//!   (for example the archive's next seq) as values.
//! - A missing value is `Ok(None)`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use thiserror::Error;

/// What a value is (part of every key, so namespaces never collide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Namespace {
    /// Secret keys (key files' contents).
    Keys,
    /// The pinned node: address, fingerprint, origin, log key.
    Node,
    /// Per-talks state: roster, ground rules, lifecycle, safety-code states.
    Talks,
    /// Verified checkpoints and the log follower's state.
    Checkpoints,
    /// Cosigned checkpoints (the witness's memory).
    Cosigned,
    /// Archived envelopes, by talks and seq.
    Archive,
    /// MLS state per talks (one group per room), the request written
    /// before its first send, and the plaintexts of this device's own
    /// messages (MLS cannot decrypt one's own).
    Mls,
}

impl Namespace {
    /// A stable one-byte tag (part of the stored key).
    pub fn tag(self) -> u8 {
        match self {
            Namespace::Keys => 1,
            Namespace::Node => 2,
            Namespace::Talks => 3,
            Namespace::Checkpoints => 4,
            Namespace::Cosigned => 5,
            Namespace::Archive => 6,
            Namespace::Mls => 7,
        }
    }
}

/// Why a client store operation failed.
#[derive(Debug, Error)]
pub enum ClientStoreError {
    /// The passphrase does not open this store.
    #[error("the passphrase does not open this home; check it and try again")]
    WrongPassphrase,
    /// A stored value does not decrypt or decode (damage or tampering).
    #[error("the client store is damaged: {0}")]
    Corrupt(String),
    /// The backend failed (IO, database).
    #[error("the client store failed: {0}")]
    Backend(String),
}

/// One write of a [`ClientStore::put_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    /// Namespace.
    pub ns: Namespace,
    /// Key.
    pub key: Vec<u8>,
    /// Value; `None` deletes.
    pub value: Option<Vec<u8>>,
}

/// The client's storage.
pub trait ClientStore: Send + Sync + 'static {
    /// The value under `key`.
    fn get(
        &self,
        ns: Namespace,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<Vec<u8>>, ClientStoreError>> + Send;

    /// Writes (or deletes) several values atomically and durably.
    fn put_many(
        &self,
        writes: Vec<Put>,
    ) -> impl Future<Output = Result<(), ClientStoreError>> + Send;

    /// Writes one value durably.
    fn put(
        &self,
        ns: Namespace,
        key: &[u8],
        value: &[u8],
    ) -> impl Future<Output = Result<(), ClientStoreError>> + Send {
        self.put_many(vec![Put {
            ns,
            key: key.to_vec(),
            value: Some(value.to_vec()),
        }])
    }
}

/// Values by (namespace tag, key).
type Values = BTreeMap<(u8, Vec<u8>), Vec<u8>>;

/// An in-memory store for tests, the simulator and the demo.
#[derive(Debug, Default)]
pub struct MemoryClientStore {
    values: Mutex<Values>,
}

impl ClientStore for MemoryClientStore {
    async fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Vec<u8>>, ClientStoreError> {
        let values = self
            .values
            .lock()
            .map_err(|_| ClientStoreError::Backend("poisoned".into()))?;
        Ok(values.get(&(ns.tag(), key.to_vec())).cloned())
    }

    async fn put_many(&self, writes: Vec<Put>) -> Result<(), ClientStoreError> {
        let mut values = self
            .values
            .lock()
            .map_err(|_| ClientStoreError::Backend("poisoned".into()))?;
        for w in writes {
            let k = (w.ns.tag(), w.key);
            match w.value {
                Some(v) => values.insert(k, v),
                None => values.remove(&k),
            };
        }
        Ok(())
    }
}
