//! Helpers shared by the integration tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use backchannel_codec::{RoomId, TalksId};
use backchannel_crypto::{
    Context, Digest, KeyId, PublicKey, SecretKey, SignError, Signature, Signer, sha256,
};
use backchannel_store::{AccessListRecord, Store, Submission, TalksRecord};
use backchannel_store_sqlite::{SqliteOptions, SqliteStore};
use tempfile::TempDir;

/// A fresh database file in its own temporary directory (removed when the
/// returned `TempDir` is dropped).
pub async fn fresh() -> (TempDir, PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("node.sqlite");
    let store = open(&path).await;
    (dir, path, store)
}

pub async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path, SqliteOptions::default())
        .await
        .expect("opens")
}

/// A raw sqlx pool on the file, for tampering behind the store's back.
pub async fn raw(path: &Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false),
    )
    .await
    .expect("raw connection")
}

pub fn log_key() -> SecretKey {
    SecretKey::from_seed(&[7; 32]).expect("valid seed")
}

pub fn talks_id(n: u8) -> TalksId {
    TalksId([n; 16])
}

pub async fn create(store: &SqliteStore, n: u8) {
    let bytes = vec![n; 40];
    store
        .create_talks(
            &TalksRecord {
                talks: talks_id(n),
                creator: KeyId(Digest([0xc0; 32])),
                created_at: 1_000,
            },
            &AccessListRecord {
                hash: sha256(&bytes),
                bytes,
                version: 0,
            },
        )
        .await
        .expect("creates talks");
}

/// A submission to talks `talks` by sender `sender` under idempotency key
/// `key`, whose header and body are derived from `content`.
pub fn submission(talks: u8, sender: u8, key: u8, content: u8) -> Submission {
    let mut header = vec![content; 223];
    header[0] = talks;
    let body = vec![content ^ 0x55; 256];
    Submission {
        talks: talks_id(talks),
        room: RoomId([0x20 + talks; 16]),
        sender: KeyId(Digest([sender; 32])),
        idempotency_key: [key; 16],
        header_hash: sha256(&header),
        header,
        body_hash: sha256(&body),
        body,
        gate: None,
        access_version: None,
    }
}

/// A log key whose device is gone.
pub struct BrokenSigner(pub PublicKey);

impl Signer for BrokenSigner {
    fn public_key(&self) -> PublicKey {
        self.0
    }

    fn sign(&self, _: Context, _: &[u8]) -> Result<Signature, SignError> {
        Err(SignError::Unavailable("card removed".into()))
    }
}
