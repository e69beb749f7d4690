//! The client's store ([`ClientStore`]) on one SQLite file, encrypted at
//! rest under keys derived from the passphrase.
//!
//! Features:
//! - **No plaintext key or value in the file.** The passphrase goes through
//!   scrypt (a random 32-byte salt, `N = 2^`[`SCRYPT_LOG_N`], r = 8, p = 1),
//!   and two keys are derived from its output under their own contexts.
//!   Values are sealed with XChaCha20-Poly1305 under one (a random 24-byte
//!   nonce per write), keys blinded with HMAC-SHA256 under the other. A
//!   value's associated data is its namespace tag and blinded key, so a
//!   value moved to another row (by hand or by a bug) fails to open:
//!   [`ClientStoreError::Corrupt`].
//! - **A wrong passphrase is told apart from damage.** A key check (a fixed
//!   string sealed under the value key) is stored with the salt; a
//!   passphrase that does not open it is [`OpenError::WrongPassphrase`].
//! - **Durable, atomic writes.** As in `backchannel-store-sqlite`: WAL with
//!   `synchronous=FULL` on the single write connection (checked on connect,
//!   and readable with [`SqliteClientStore::write_pragmas`]);
//!   [`ClientStore::put_many`] is one `BEGIN IMMEDIATE` transaction and
//!   returns after its `COMMIT`. Reads use `query_only` connections.
//! - **Versioned schema**, migrated on open (after the passphrase is
//!   checked, so nothing is written to a store the caller cannot open); a
//!   newer schema is refused ([`OpenError::NewerSchema`]).
//! - [`SqliteClientStore::create`] never touches an existing file and
//!   creates the new one with mode `0600`; [`SqliteClientStore::open`]
//!   never creates one. Derived keys are zeroized when the last clone of a
//!   store is dropped.
//!
//! Non-features, and what the file still tells whoever holds it:
//! - the namespace of every row (so how many values of each kind there
//!   are), every sealed value's length (plaintext + 40 bytes), and, by
//!   comparing copies over time, which rows changed;
//! - **no rollback protection**: values are authenticated one by one, the
//!   set of rows is not, so someone who can write the file can delete rows
//!   or put back an older sealed value of the same key, unnoticed here
//!   (the archive's contents are re-verified against the log by the client);
//! - the passphrase's bytes are used as given (no Unicode normalisation:
//!   that is the caller's), and it cannot be changed yet;
//! - SQLite's free pages may keep old ciphertexts until the file is vacuumed
//!   (sealed all the same).
//!
//! # File format
//!
//! Two tables besides `schema_migrations` (see `migrations/`):
//! `meta(id = 1, salt[32], scrypt_log_n, key_check)` and
//! `kv(ns, k[32], v)`, keyed by `(ns, k)`. In the notation of
//! `docs/formats.md`:
//!
//! ```text
//! master       = scrypt(passphrase, salt, N = 2^scrypt_log_n, r = 8, p = 1, 32 bytes)
//! value key    = H(backchannel/v1/client-store/value-key; master)
//! blinding key = H(backchannel/v1/client-store/blinding-key; master)
//! k            = HMAC-SHA256(blinding key, ns ‖ key)              ns = Namespace::tag()
//! v            = nonce[24] ‖ XChaCha20-Poly1305(value key, nonce, value, ad = ns ‖ k) ‖ tag[16]
//! key_check    = nonce[24] ‖ XChaCha20-Poly1305(value key, nonce, "backchannel client store v1",
//!                                               ad = "backchannel/v1/client-store/key-check") ‖ tag[16]
//! ```

mod error;
mod migrate;
mod seal;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backchannel_client::store::{ClientStore, ClientStoreError, Namespace, Put};
use backchannel_crypto::Context;
use rand_core::{OsRng, RngCore};
use secrecy::{ExposeSecret, SecretString};
use sqlx::SqliteConnection;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::sqlite::SqliteSynchronous;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::error::{backend, is_busy, is_damaged};
use crate::migrate::MigrateError;
pub use crate::migrate::SCHEMA_VERSION;
pub use crate::seal::{BLINDING_KEY_CONTEXT, KEY_CHECK_CONTEXT, VALUE_KEY_CONTEXT};
use crate::seal::{KeyCheckFailure, Keys, SALT_LEN};

/// The scrypt work factor (`N = 2^SCRYPT_LOG_N`, r = 8, p = 1) new stores
/// are created with.
///
/// 17 is 128 MiB and a few hundred milliseconds per attempt, paid once per
/// `open` (every client command opens the store), and the same per guess by
/// anyone who copies the file: one step below key files'
/// (`backchannel_keyfile::SCRYPT_LOG_N`), which are opened only to sign.
pub const SCRYPT_LOG_N: u8 = 17;

/// The highest work factor a store may demand when it is opened.
///
/// Two steps above [`SCRYPT_LOG_N`] (512 MiB): a later version may raise
/// the constant that much and older versions still open its stores, while
/// a hostile file cannot make us spend tens of GiB.
pub const MAX_SCRYPT_LOG_N: u8 = SCRYPT_LOG_N + 2;

/// The environment variable that lowers the work factor stores are
/// *created* with, so tests run in milliseconds; the same one
/// `backchannel-keyfile` honours. Debug builds only: release builds ignore
/// it (`cfg!(debug_assertions)`). Values outside `1..=SCRYPT_LOG_N` are
/// ignored. Never set it outside tests: such a store is cheap to
/// brute-force.
pub const DANGER_TEST_SCRYPT_LOG_N_ENV: &str = "BACKCHANNEL_DANGER_TEST_SCRYPT_LOG_N";

/// How long opening pauses before trying again to open a file another
/// process holds locked while switching it to WAL.
const OPEN_RETRY: Duration = Duration::from_millis(10);

/// `PRAGMA synchronous` reports FULL as 2.
const SYNCHRONOUS_FULL: i64 = 2;

/// Every hash context this crate defines (for the prefix-freeness test and
/// the formats document).
pub fn contexts() -> Vec<Context> {
    vec![VALUE_KEY_CONTEXT, BLINDING_KEY_CONTEXT, KEY_CHECK_CONTEXT]
}

/// How the store opens its database.
#[derive(Debug, Clone)]
pub struct ClientStoreOptions {
    /// How long a connection waits on a lock held by another process
    /// (SQLite's busy timeout).
    pub busy_timeout: Duration,
    /// How long a call waits for a free connection. Writers queue for the
    /// one write connection, so this bounds how long a write may wait
    /// behind others.
    pub acquire_timeout: Duration,
    /// How many read connections to keep at most (at least 1).
    pub read_connections: u32,
    /// The work factor [`SqliteClientStore::create`] uses instead of
    /// [`SCRYPT_LOG_N`], for tests (which cannot set
    /// [`DANGER_TEST_SCRYPT_LOG_N_ENV`] safely: the environment is shared by
    /// test threads). Same rules as the variable, which it takes precedence
    /// over: debug builds only, `1..=SCRYPT_LOG_N`, otherwise ignored.
    pub danger_test_scrypt_log_n: Option<u8>,
}

impl Default for ClientStoreOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(30),
            read_connections: 2,
            danger_test_scrypt_log_n: None,
        }
    }
}

/// The pragmas in force on the write connection, as SQLite reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePragmas {
    /// `PRAGMA journal_mode`, lower case (`"wal"`).
    pub journal_mode: String,
    /// `PRAGMA synchronous` by name (`"OFF"`, `"NORMAL"`, `"FULL"`, `"EXTRA"`).
    pub synchronous: String,
    /// `PRAGMA busy_timeout`, in milliseconds.
    pub busy_timeout_ms: u64,
}

/// Why a store could not be created.
#[derive(Debug, Error)]
pub enum CreateError {
    /// A file (or a leftover SQLite journal) already exists at the path.
    #[error(
        "{} already exists; open it instead, or move it away to start afresh",
        path.display()
    )]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The passphrase was empty.
    #[error("the passphrase is empty; choose a passphrase to protect the client store")]
    EmptyPassphrase,
    /// The operating system gave no randomness for the salt or a nonce.
    #[error("no randomness from the operating system: {0}")]
    Randomness(String),
    /// scrypt could not run.
    #[error("key derivation failed: {0}")]
    KeyDerivation(String),
    /// The file system refused.
    #[error("could not create {}", path.display())]
    Io {
        /// The path that failed (the store or its directory).
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// SQLite refused to set up the new file (including a write connection
    /// that would not run in WAL mode with `synchronous=FULL`).
    #[error("cannot set up the client store: {0}")]
    Sqlite(String),
}

/// Why a store could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    /// No file at the path.
    #[error("{} does not exist; create the client store first", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The passphrase does not open the store (or its salt or key check
    /// was altered: the two look the same).
    #[error("the passphrase does not open this client store; check it and try again")]
    WrongPassphrase,
    /// The store asks for more scrypt work than [`MAX_SCRYPT_LOG_N`].
    #[error(
        "the client store asks for scrypt work factor 2^{log_n}, more than the limit of \
         2^{max}; it was not written by this version of Backchannel, or it was tampered with"
    )]
    WorkFactorTooHigh {
        /// The work factor the store asks for.
        log_n: u8,
        /// The highest accepted, [`MAX_SCRYPT_LOG_N`].
        max: u8,
    },
    /// The database was migrated by a newer build.
    #[error(
        "the client store has schema version {found}, newer than this build knows ({known}): \
         run a newer Backchannel, or restore a backup taken by this version"
    )]
    NewerSchema {
        /// The version recorded in the database.
        found: u32,
        /// The newest version this build knows ([`SCHEMA_VERSION`]).
        known: u32,
    },
    /// Not a client store, or a damaged one.
    #[error("the client store is damaged or not a client store ({0}); restore it from a backup")]
    Corrupt(String),
    /// scrypt could not run.
    #[error("key derivation failed: {0}")]
    KeyDerivation(String),
    /// The file could not be examined.
    #[error("could not read {}", path.display())]
    Io {
        /// The path given.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// SQLite refused to open, configure or migrate the file.
    #[error("cannot open the client store: {0}")]
    Sqlite(String),
}

impl From<OpenError> for ClientStoreError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::WrongPassphrase => ClientStoreError::WrongPassphrase,
            OpenError::Corrupt(reason) => ClientStoreError::Corrupt(reason),
            other => ClientStoreError::Backend(other.to_string()),
        }
    }
}

impl From<CreateError> for ClientStoreError {
    fn from(e: CreateError) -> Self {
        ClientStoreError::Backend(e.to_string())
    }
}

/// [`ClientStore`] on an encrypted SQLite database file. Clones share the
/// connections and the keys.
#[derive(Debug, Clone)]
pub struct SqliteClientStore {
    /// Exactly one connection: every write transaction goes through it.
    writer: SqlitePool,
    /// `query_only` connections for reads.
    reader: SqlitePool,
    keys: Arc<Keys>,
    scrypt_log_n: u8,
}

impl SqliteClientStore {
    /// Creates a new store at `path`, protected by `passphrase`. Refuses a
    /// path where a file (or a leftover `-wal` or `-journal` file) exists,
    /// and an empty passphrase. Must run inside a Tokio runtime (scrypt
    /// runs on its blocking pool).
    ///
    /// The work factor is [`SCRYPT_LOG_N`], unless a debug build is given
    /// [`ClientStoreOptions::danger_test_scrypt_log_n`] or runs with
    /// [`DANGER_TEST_SCRYPT_LOG_N_ENV`] set.
    pub async fn create(
        path: impl AsRef<Path>,
        passphrase: &SecretString,
        options: ClientStoreOptions,
    ) -> Result<Self, CreateError> {
        let path = path.as_ref();
        if passphrase.expose_secret().is_empty() {
            return Err(CreateError::EmptyPassphrase);
        }
        // A WAL or rollback journal left by a removed database would be
        // replayed into the new file. Checked early to fail before the slow
        // derivation; the exclusive create below is the race-free check of
        // the file itself.
        for p in [
            path.to_owned(),
            sidecar(path, "-wal"),
            sidecar(path, "-journal"),
        ] {
            if std::fs::symlink_metadata(&p).is_ok() {
                return Err(CreateError::AlreadyExists { path: p });
            }
        }
        let log_n = create_log_n(
            options.danger_test_scrypt_log_n,
            std::env::var(DANGER_TEST_SCRYPT_LOG_N_ENV).ok().as_deref(),
            cfg!(debug_assertions),
        );
        let mut salt = [0u8; SALT_LEN];
        OsRng
            .try_fill_bytes(&mut salt)
            .map_err(|e| CreateError::Randomness(e.to_string()))?;
        let keys = derive(passphrase, salt, log_n)
            .await
            .map_err(CreateError::KeyDerivation)?;
        let key_check = keys
            .key_check()
            .map_err(|_| CreateError::Randomness("no nonce for the key check".into()))?;

        create_private(path)?;
        let created = Self::initialise(path, &options, keys, salt, log_n, &key_check).await;
        if created.is_err() {
            // Leave no half-made store behind, so creating again works. The
            // file is ours: the exclusive create above made it.
            for p in [
                path.to_owned(),
                sidecar(path, "-wal"),
                sidecar(path, "-shm"),
                sidecar(path, "-journal"),
            ] {
                let _ = std::fs::remove_file(p);
            }
        }
        created
    }

    /// Opens the store at `path` with `passphrase`, and migrates it to
    /// [`SCHEMA_VERSION`] once the passphrase is known to be right. Refuses
    /// a missing file. Must run inside a Tokio runtime.
    pub async fn open(
        path: impl AsRef<Path>,
        passphrase: &SecretString,
        options: ClientStoreOptions,
    ) -> Result<Self, OpenError> {
        let path = path.as_ref();
        match std::fs::metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(OpenError::NotFound {
                    path: path.to_owned(),
                });
            }
            Err(source) => {
                return Err(OpenError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let writer = connect_writer(path, &options)
            .await
            .map_err(|e| open_sql("open", e))?;
        let opened = Self::unlock(writer.clone(), path, passphrase, &options).await;
        if opened.is_err() {
            writer.close().await;
        }
        opened
    }

    /// The pragmas of the write connection, read back from SQLite (a
    /// durable store reports `wal` and `FULL`).
    pub async fn write_pragmas(&self) -> Result<WritePragmas, ClientStoreError> {
        const OP: &str = "write pragmas";
        let mut conn = self.writer.acquire().await.map_err(|e| backend(OP, e))?;
        let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| backend(OP, e))?;
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| backend(OP, e))?;
        let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| backend(OP, e))?;
        Ok(WritePragmas {
            journal_mode: journal_mode.to_ascii_lowercase(),
            synchronous: synchronous_name(synchronous),
            busy_timeout_ms: u64::try_from(busy_timeout).unwrap_or(0),
        })
    }

    /// Writes a consistent copy of the whole store to `path`, a file that
    /// must not exist (`VACUUM INTO` on the write connection, so no write
    /// lands half in the copy): the same rows, sealed under the same
    /// passphrase, with no free pages (so no stale ciphertexts). The copy
    /// is made with mode `0600` and fsynced before this returns. Refuses a
    /// path where a file exists ([`ClientStoreError::Backend`] saying so).
    pub async fn backup_to(&self, path: &Path) -> Result<(), ClientStoreError> {
        const OP: &str = "backup";
        // Made here first, so the mode is ours and an existing file is
        // refused without a race; SQLite then writes into the empty file.
        create_private(path).map_err(|e| ClientStoreError::Backend(format!("{OP}: {e}")))?;
        let target = path
            .to_str()
            .ok_or_else(|| ClientStoreError::Backend(format!("{OP}: the path is not UTF-8")))?
            .to_owned();
        let result = async {
            let mut conn = self.writer.acquire().await.map_err(|e| backend(OP, e))?;
            sqlx::query("VACUUM INTO ?")
                .bind(&target)
                .execute(&mut *conn)
                .await
                .map_err(|e| backend(OP, e))?;
            let file = std::fs::File::open(path)
                .map_err(|e| ClientStoreError::Backend(format!("{OP}: {e}")))?;
            file.sync_all()
                .map_err(|e| ClientStoreError::Backend(format!("{OP}: {e}")))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| ClientStoreError::Backend(format!("{OP}: {e}")))?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// The scrypt work factor this store was created with.
    pub fn scrypt_log_n(&self) -> u8 {
        self.scrypt_log_n
    }

    /// Closes every connection, waiting for calls in progress (SQLite
    /// checkpoints the WAL into the file when the last one closes). Later
    /// calls, on this store or its clones, fail with
    /// [`ClientStoreError::Backend`].
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Sets up a file [`Self::create`] just made: schema and `meta` row in
    /// one transaction, so a crash leaves either a whole store or a file
    /// `open` reports as not a store.
    async fn initialise(
        path: &Path,
        options: &ClientStoreOptions,
        keys: Keys,
        salt: [u8; SALT_LEN],
        log_n: u8,
        key_check: &[u8],
    ) -> Result<Self, CreateError> {
        let sql = |e: sqlx::Error| CreateError::Sqlite(backend("create", e).to_string());
        let writer = connect_writer(path, options).await.map_err(sql)?;
        let set_up = async {
            let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(sql)?;
            migrate::migrate(&mut tx).await.map_err(|e| match e {
                MigrateError::Sql(e) => sql(e),
                other => CreateError::Sqlite(format!("migrate: {other:?}")),
            })?;
            sqlx::query("INSERT INTO meta (id, salt, scrypt_log_n, key_check) VALUES (1, ?, ?, ?)")
                .bind(&salt[..])
                .bind(i64::from(log_n))
                .bind(key_check)
                .execute(&mut *tx)
                .await
                .map_err(sql)?;
            tx.commit().await.map_err(sql)?;
            // The new directory entry must survive a crash too.
            sync_parent(path)?;
            connect_reader(path, options).await.map_err(sql)
        };
        match set_up.await {
            Ok(reader) => Ok(Self {
                writer,
                reader,
                keys: Arc::new(keys),
                scrypt_log_n: log_n,
            }),
            Err(e) => {
                writer.close().await;
                Err(e)
            }
        }
    }

    /// Reads the key-derivation parameters, checks the passphrase, then
    /// migrates.
    async fn unlock(
        writer: SqlitePool,
        path: &Path,
        passphrase: &SecretString,
        options: &ClientStoreOptions,
    ) -> Result<Self, OpenError> {
        let sql = |e| open_sql("open", e);
        let (salt, log_n, key_check) = {
            let mut conn = writer.acquire().await.map_err(sql)?;
            read_meta(&mut conn).await?
        };
        let keys = derive(passphrase, salt, log_n)
            .await
            .map_err(OpenError::KeyDerivation)?;
        keys.verify_key_check(&key_check).map_err(|f| match f {
            KeyCheckFailure::WrongPassphrase => OpenError::WrongPassphrase,
            KeyCheckFailure::Corrupt => {
                OpenError::Corrupt("the key check opens to an unexpected value".into())
            }
        })?;

        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(sql)?;
        migrate::migrate(&mut tx).await.map_err(migrate_err)?;
        tx.commit().await.map_err(sql)?;

        let reader = connect_reader(path, options).await.map_err(sql)?;
        Ok(Self {
            writer,
            reader,
            keys: Arc::new(keys),
            scrypt_log_n: log_n,
        })
    }
}

impl ClientStore for SqliteClientStore {
    async fn get(&self, ns: Namespace, key: &[u8]) -> Result<Option<Vec<u8>>, ClientStoreError> {
        let blinded = self.keys.blind(ns, key);
        let sealed: Option<Vec<u8>> = sqlx::query_scalar("SELECT v FROM kv WHERE ns = ? AND k = ?")
            .bind(i64::from(ns.tag()))
            .bind(&blinded[..])
            .fetch_optional(&self.reader)
            .await
            .map_err(|e| backend("get", e))?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        match self.keys.open_value(ns, &blinded, &sealed) {
            Some(value) => Ok(Some(value)),
            None => Err(ClientStoreError::Corrupt(format!(
                "a value in namespace {ns:?} does not decrypt: altered, truncated or moved \
                 from another key"
            ))),
        }
    }

    async fn put_many(&self, writes: Vec<Put>) -> Result<(), ClientStoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        // Blind and seal before taking the write lock, so it is held for
        // SQL only. The plaintexts are ours now: zeroized once sealed.
        let mut rows = Vec::with_capacity(writes.len());
        for Put { ns, key, value } in writes {
            let key = Zeroizing::new(key);
            let blinded = self.keys.blind(ns, &key);
            let sealed = match value.map(Zeroizing::new) {
                Some(value) => Some(self.keys.seal_value(ns, &blinded, &value).map_err(|_| {
                    ClientStoreError::Backend(
                        "cannot seal a value: no randomness from the operating system".into(),
                    )
                })?),
                None => None,
            };
            rows.push((i64::from(ns.tag()), blinded, sealed));
        }

        const OP: &str = "put";
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| backend(OP, e))?;
        for (ns, k, v) in &rows {
            let query = match v {
                Some(v) => sqlx::query(
                    "INSERT INTO kv (ns, k, v) VALUES (?, ?, ?) \
                     ON CONFLICT (ns, k) DO UPDATE SET v = excluded.v",
                )
                .bind(*ns)
                .bind(&k[..])
                .bind(&v[..]),
                None => sqlx::query("DELETE FROM kv WHERE ns = ? AND k = ?")
                    .bind(*ns)
                    .bind(&k[..]),
            };
            // On error `tx` is dropped, which rolls back every write so far.
            query.execute(&mut *tx).await.map_err(|e| backend(OP, e))?;
        }
        // Returns once the WAL is fsynced (synchronous=FULL).
        tx.commit().await.map_err(|e| backend(OP, e))
    }
}

/// The work factor for new stores: [`SCRYPT_LOG_N`], or in debug builds the
/// test override from the options or the environment.
fn create_log_n(option: Option<u8>, env: Option<&str>, debug_build: bool) -> u8 {
    if !debug_build {
        return SCRYPT_LOG_N;
    }
    let valid = |n: &u8| (1..=SCRYPT_LOG_N).contains(n);
    option
        .filter(valid)
        .or_else(|| env.and_then(|v| v.trim().parse::<u8>().ok()).filter(valid))
        .unwrap_or(SCRYPT_LOG_N)
}

/// Runs scrypt on Tokio's blocking pool (it takes CPU-seconds at the
/// default work factor).
async fn derive(
    passphrase: &SecretString,
    salt: [u8; SALT_LEN],
    log_n: u8,
) -> Result<Keys, String> {
    let passphrase = passphrase.clone();
    tokio::task::spawn_blocking(move || Keys::derive(&passphrase, &salt, log_n))
        .await
        .map_err(|e| format!("the key derivation task failed: {e}"))?
        .map_err(|_| format!("scrypt refused work factor 2^{log_n}"))
}

/// The `meta` row: salt, work factor (checked against
/// [`MAX_SCRYPT_LOG_N`]) and key check. Refuses a newer schema first, and
/// a database without one.
async fn read_meta(
    conn: &mut SqliteConnection,
) -> Result<([u8; SALT_LEN], u8, Vec<u8>), OpenError> {
    let version = migrate::current_version(conn).await.map_err(migrate_err)?;
    if version == 0 {
        return Err(OpenError::Corrupt(
            "no client store schema: another file, or a creation that was interrupted".into(),
        ));
    }
    if version > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema {
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    let row: Option<(Vec<u8>, i64, Vec<u8>)> =
        sqlx::query_as("SELECT salt, scrypt_log_n, key_check FROM meta WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| open_sql("read key derivation parameters", e))?;
    let Some((salt, log_n, key_check)) = row else {
        return Err(OpenError::Corrupt(
            "the key derivation parameters are missing".into(),
        ));
    };
    let salt = <[u8; SALT_LEN]>::try_from(salt.as_slice())
        .map_err(|_| OpenError::Corrupt(format!("the salt has {} bytes", salt.len())))?;
    let log_n = u8::try_from(log_n)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| OpenError::Corrupt(format!("scrypt work factor {log_n}")))?;
    if log_n > MAX_SCRYPT_LOG_N {
        return Err(OpenError::WorkFactorTooHigh {
            log_n,
            max: MAX_SCRYPT_LOG_N,
        });
    }
    Ok((salt, log_n, key_check))
}

fn open_sql(op: &'static str, e: sqlx::Error) -> OpenError {
    if is_damaged(&e) {
        return OpenError::Corrupt(format!("{op}: {e}"));
    }
    match backend(op, e) {
        ClientStoreError::Corrupt(reason) => OpenError::Corrupt(reason),
        other => OpenError::Sqlite(other.to_string()),
    }
}

fn migrate_err(e: MigrateError) -> OpenError {
    match e {
        MigrateError::Newer { found } => OpenError::NewerSchema {
            found,
            known: SCHEMA_VERSION,
        },
        MigrateError::BadVersion(v) => OpenError::Corrupt(format!("schema version {v}")),
        MigrateError::Sql(e) => open_sql("migrate", e),
    }
}

/// The write pool: one connection, WAL, `synchronous=FULL`, checked.
async fn connect_writer(
    path: &Path,
    options: &ClientStoreOptions,
) -> Result<SqlitePool, sqlx::Error> {
    // Two processes opening one fresh file at once race to switch it to
    // WAL, and SQLite reports the loser's `PRAGMA journal_mode` as busy at
    // once, without waiting out the busy timeout: so wait it out here.
    let deadline = Instant::now() + options.busy_timeout;
    loop {
        let connected = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // Keep the one connection for the life of the store; if it is
            // lost, the pool opens a new one through the same checks.
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(options.acquire_timeout)
            .after_connect(check_durable)
            .connect_with(
                base_options(path, options)
                    .journal_mode(SqliteJournalMode::Wal)
                    // On macOS, fsync does not flush the drive's cache; these
                    // make SQLite use F_FULLFSYNC there (no-ops elsewhere).
                    .pragma("fullfsync", "ON")
                    .pragma("checkpoint_fullfsync", "ON"),
            )
            .await;
        match connected {
            Ok(pool) => return Ok(pool),
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                tokio::time::sleep(OPEN_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The read pool. WAL is a property of the file, set by the writer; readers
/// must not try to change it, and `query_only` makes a stray write fail.
async fn connect_reader(
    path: &Path,
    options: &ClientStoreOptions,
) -> Result<SqlitePool, sqlx::Error> {
    SqlitePoolOptions::new()
        .max_connections(options.read_connections.max(1))
        .min_connections(0)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(base_options(path, options).pragma("query_only", "ON"))
        .await
}

fn base_options(path: &Path, options: &ClientStoreOptions) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        // `create` makes the file itself (exclusively, mode 0600); `open`
        // must never make one.
        .create_if_missing(false)
        .busy_timeout(options.busy_timeout)
        // FULL: a commit fsyncs the WAL before returning, so a write that
        // returned survives power loss. Set on every connection.
        .synchronous(SqliteSynchronous::Full)
}

/// Refuses a write connection that is not in WAL mode with
/// `synchronous=FULL` (`after_connect` runs on every new pooled connection,
/// after the connect options' pragmas).
fn check_durable(
    conn: &mut SqliteConnection,
    _: PoolConnectionMetadata,
) -> Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await?;
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await?;
        if !mode.eq_ignore_ascii_case("wal") || sync != SYNCHRONOUS_FULL {
            return Err(sqlx::Error::Configuration(
                format!(
                    "the write connection runs journal_mode={mode}, synchronous={}; \
                     WAL and FULL are required (is the file on a filesystem without \
                     shared memory, such as a network mount?)",
                    synchronous_name(sync)
                )
                .into(),
            ));
        }
        Ok(())
    })
}

fn synchronous_name(v: i64) -> String {
    match v {
        0 => "OFF".into(),
        1 => "NORMAL".into(),
        SYNCHRONOUS_FULL => "FULL".into(),
        3 => "EXTRA".into(),
        other => other.to_string(),
    }
}

/// `path` with `suffix` appended to its file name (SQLite's `-wal`,
/// `-shm`, `-journal`).
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

/// Creates the empty database file, failing if anything exists at `path`
/// (even a file created a moment ago by another process), readable and
/// writable by its owner only. SQLite gives the `-wal` and `-shm` files the
/// database file's mode.
fn create_private(path: &Path) -> Result<(), CreateError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(CreateError::AlreadyExists {
            path: path.to_owned(),
        }),
        Err(source) => Err(CreateError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Fsyncs the directory holding `path`, so a new file's entry is durable.
#[cfg(unix)]
fn sync_parent(path: &Path) -> Result<(), CreateError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CreateError::Io { path: dir, source })
}

/// Directories cannot be opened for syncing on other platforms.
#[cfg(not(unix))]
fn sync_parent(_path: &Path) -> Result<(), CreateError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_factor_override_only_in_debug_builds_and_in_range() {
        let check = |option, env, debug, expected| {
            assert_eq!(
                create_log_n(option, env, debug),
                expected,
                "{option:?} {env:?} {debug}"
            );
        };
        check(None, None, true, SCRYPT_LOG_N);
        check(Some(4), None, true, 4);
        check(None, Some("5"), true, 5);
        check(None, Some(" 5\n"), true, 5);
        check(Some(4), Some("5"), true, 4);
        check(Some(0), Some("5"), true, 5);
        check(Some(SCRYPT_LOG_N + 1), None, true, SCRYPT_LOG_N);
        check(None, Some("0"), true, SCRYPT_LOG_N);
        check(None, Some("x"), true, SCRYPT_LOG_N);
        check(None, Some("18"), true, SCRYPT_LOG_N);
        check(Some(4), Some("5"), false, SCRYPT_LOG_N);
    }

    #[test]
    fn sidecars_append_to_the_file_name() {
        assert_eq!(
            sidecar(Path::new("/a/home.sqlite"), "-wal"),
            Path::new("/a/home.sqlite-wal")
        );
    }
}
