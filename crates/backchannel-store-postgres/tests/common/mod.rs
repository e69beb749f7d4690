//! Helpers shared by the integration tests: the test database, fresh
//! schemas that are dropped afterwards, and small fixtures.
//!
//! The tests that need a server read its URL from
//! `BACKCHANNEL_TEST_DATABASE_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/test`). Unset, they print why they
//! are skipped and pass; set, an unreachable server fails them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use backchannel_codec::{RoomId, TalksId};
use backchannel_crypto::{
    Context, Digest, KeyId, PublicKey, SecretKey, SignError, Signature, Signer, sha256,
};
use backchannel_store::{AccessListRecord, Store, Submission, TalksRecord};
use backchannel_store_postgres::{PostgresOptions, PostgresStore};
use sqlx::{Connection, PgConnection};

/// The environment variable naming the test server.
pub const DATABASE_URL_VAR: &str = "BACKCHANNEL_TEST_DATABASE_URL";

/// The test server's URL, or `None` (with a line saying so) when the
/// variable is unset: the calling test then returns and passes.
pub fn database_url(test: &str) -> Option<String> {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            // Straight to stderr, not through `eprintln!`, which the test
            // harness captures (and hides) for a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: {DATABASE_URL_VAR} is unset, so there is no PostgreSQL \
                 server to test against (set it to e.g. \
                 postgres://postgres@127.0.0.1:5432/test to run this test)"
            );
            None
        }
    }
}

/// A schema name no other run uses: `bc_test_` and 16 hex digits from a
/// randomly keyed hash of a process-wide counter and the process id.
pub fn fresh_schema_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("bc_test_{:016x}", h.finish())
}

/// The schemas a test created, to drop when it is over.
#[derive(Debug, Clone, Default)]
pub struct Schemas(Arc<Mutex<Vec<String>>>);

impl Schemas {
    /// A fresh schema name, remembered for [`Schemas::drop_all`].
    pub fn fresh(&self) -> String {
        let name = fresh_schema_name();
        self.0.lock().unwrap().push(name.clone());
        name
    }

    /// Drops every remembered schema with everything in it. A server that
    /// cannot be reached is reported, not a panic: the test that failed to
    /// reach it already says so.
    pub async fn drop_all(&self, url: &str) {
        let names = std::mem::take(&mut *self.0.lock().unwrap());
        if names.is_empty() {
            return;
        }
        let mut conn = match PgConnection::connect(url).await {
            Ok(conn) => conn,
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "cannot drop the test schemas {names:?}: {e}"
                );
                return;
            }
        };
        for name in names {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
            )))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("dropping schema {name}: {e}"));
        }
        conn.close().await.expect("closes");
    }
}

/// Runs `test` with a fresh [`Schemas`], then drops them whether the test
/// passed or panicked (and then re-raises its panic).
pub async fn with_schemas<F, Fut>(url: &str, test: F)
where
    F: FnOnce(Schemas) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let schemas = Schemas::default();
    let outcome = tokio::spawn(test(schemas.clone())).await;
    schemas.drop_all(url).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Options for a store in `schema`.
pub fn options(schema: &str) -> PostgresOptions {
    PostgresOptions {
        schema: Some(schema.to_owned()),
        max_connections: 8,
        ..PostgresOptions::default()
    }
}

/// Opens a store in `schema` (created and migrated if new).
pub async fn open(url: &str, schema: &str) -> PostgresStore {
    PostgresStore::open(url, options(schema))
        .await
        .unwrap_or_else(|e| panic!("opens the store in schema {schema} at {url}: {e}"))
}

/// A plain connection, for looking and tampering behind the store's back.
pub async fn raw(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connects to the test server {url}: {e}"))
}

pub fn log_key() -> SecretKey {
    SecretKey::from_seed(&[7; 32]).expect("valid seed")
}

pub fn talks_id(n: u8) -> TalksId {
    TalksId([n; 16])
}

pub async fn create(store: &PostgresStore, n: u8) {
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

/// A plain connection working in `schema`, for tampering behind the
/// store's back.
pub async fn raw_in(url: &str, schema: &str) -> PgConnection {
    let mut conn = raw(url).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET search_path TO \"{schema}\""
    )))
    .execute(&mut conn)
    .await
    .expect("sets the search path");
    conn
}
