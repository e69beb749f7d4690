//! The node's storage ([`backchannel_store::Store`]) on one SQLite file.
//!
//! Features:
//! - **Durable acknowledgements.** The database runs in WAL mode with
//!   `synchronous=FULL` on the write connection, so every `COMMIT` fsyncs
//!   the WAL before it returns; a method returns `Ok` only after its
//!   `COMMIT` did. Every write connection is checked for both pragmas when it
//!   is opened and refused otherwise ([`SqliteStore::write_pragmas`] reads
//!   them back).
//! - **One writer.** Writes go through a pool of exactly one connection
//!   (SQLite allows one writer at a time), each method one
//!   `BEGIN IMMEDIATE` transaction, so a method's reads and writes see no
//!   interleaved writer and a crash leaves all or none of its writes.
//!   Reads use a small pool of `query_only` connections that WAL lets run
//!   beside the writer. The one writer is also what makes leases, fenced
//!   integration and timers atomic here: `acquire_lease` decides and writes
//!   in its write transaction, a fenced `integrate` reads the lease's epoch
//!   in its own, and `fire_due` claims due items simply by reading them in
//!   the write transaction that sequences (through the same code as
//!   `sequence`) and deletes them.
//! - **Versioned schema.** Migrations under `migrations/` are embedded and
//!   applied on open, in one `BEGIN IMMEDIATE` transaction that reads the
//!   version inside it, so several processes may open one fresh file at
//!   once (the loser of the race to switch it to WAL waits out the busy
//!   timeout); a database with a newer schema than this build knows is
//!   refused ([`OpenError::NewerSchema`]).
//! - **Defensive decoding.** Stored values of the wrong length, type or sign
//!   are [`StoreError::Corrupt`], never a panic; SQLite errors are mapped to
//!   [`StoreError::Unavailable`] (try again: nothing may be assumed written)
//!   or [`StoreError::Backend`], with messages that carry no ids.
//!
//! Non-features: no content verification. The store returns what the file
//! holds; a tampered header or receipt is served as stored and caught by
//! clients, which verify headers, leaves, receipts and proofs themselves
//! (the node is an untrusted sequencer). Structural breaks the store can see
//! cheaply (a missing seq, a bad length) are reported as `Corrupt`.

mod error;
mod migrate;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

use backchannel_codec::{Encode, PartyId, RoomId, TalksId};
use backchannel_crypto::{Digest, KeyId, Signer};
use backchannel_store::{
    AccessListRecord, Appended, BlobRecord, CheckpointRecord, Fence, Fired, Gate, GateColumns,
    InvitationRecord, KeyPackageRecord, Lease, LeaseName, MAX_FIRE_BATCH, MAX_INVITATIONS,
    MAX_KEY_PACKAGE_REFERENCE, MAX_KEY_PACKAGES_PER_DEVICE, MAX_PENDING_CHANGES, MAX_READ,
    MAX_READ_BYTES, MAX_SCHEDULED, MAX_SEQUENCE_BATCH, MAX_TREE_HASHES, Outcome, PendingChange,
    Placement, Redemption, RoomCommit, RoomState, SUBSCRIPTION_BUFFER, ScheduledRecord, Store,
    StoreError, StoredEnvelope, StoredLeaf, Submission, Subscription, TalksRecord,
};
use backchannel_tlog::{BatchRecord, LeafData, SignedBatch};
use sqlx::pool::PoolConnectionMetadata;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use thiserror::Error;
use tokio::sync::broadcast;

use crate::error::{backend, fixed, from_sql, is_busy, to_sql};
pub use crate::migrate::SCHEMA_VERSION;

/// How long [`SqliteStore::open`] pauses before trying again to open a
/// file another process holds locked while switching it to WAL.
const OPEN_RETRY: Duration = Duration::from_millis(10);

/// How the store opens its database.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a connection waits on a lock held by another process before
    /// failing with [`StoreError::Unavailable`] (SQLite's busy timeout).
    pub busy_timeout: Duration,
    /// How long a call waits for a free connection before failing with
    /// [`StoreError::Unavailable`]. Writers queue for the one write
    /// connection, so this bounds how long a write may wait behind others.
    pub acquire_timeout: Duration,
    /// How many read connections to keep at most (at least 1).
    pub read_connections: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(30),
            read_connections: 4,
        }
    }
}

/// Why the database could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The database was migrated by a newer build.
    #[error(
        "the database has schema version {found}, newer than this build knows ({known}): \
         run a newer node, or restore a backup taken by this version"
    )]
    NewerSchema {
        /// The version recorded in the database.
        found: u32,
        /// The newest version this build knows ([`SCHEMA_VERSION`]).
        known: u32,
    },
    /// The bookkeeping of the schema is unreadable.
    #[error("the database is corrupt: {0}")]
    Corrupt(String),
    /// SQLite refused to open, configure or migrate the file (including a
    /// write connection that would not run in WAL mode with
    /// `synchronous=FULL`).
    #[error("cannot open the database: {0}")]
    Sqlite(String),
}

/// The pragmas in force on the write connection, as SQLite reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePragmas {
    /// `PRAGMA journal_mode`, lower case (`"wal"`).
    pub journal_mode: String,
    /// `PRAGMA synchronous` by name (`"OFF"`, `"NORMAL"`, `"FULL"`, `"EXTRA"`).
    pub synchronous: String,
    /// `PRAGMA foreign_keys`.
    pub foreign_keys: bool,
    /// `PRAGMA busy_timeout`, in milliseconds.
    pub busy_timeout_ms: u64,
}

/// [`Store`] on an SQLite database file. Clones share the connections and
/// the subscribers.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: every write transaction goes through it.
    writer: SqlitePool,
    /// `query_only` connections for reads.
    reader: SqlitePool,
    appended: broadcast::Sender<Appended>,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it if missing, and migrates it
    /// to [`SCHEMA_VERSION`]. Must run inside a Tokio runtime.
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, OpenError> {
        let base = SqliteConnectOptions::new()
            .filename(path.as_ref())
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout)
            // FULL: a commit fsyncs the WAL before returning, so an
            // acknowledged envelope survives power loss (NORMAL would only
            // survive a process crash). Set on every connection.
            .synchronous(SqliteSynchronous::Full);
        let sql = |e: sqlx::Error| OpenError::Sqlite(backend("open", e).to_string());

        // Two processes opening one fresh file at once race to switch it to
        // WAL, and SQLite reports the loser's `PRAGMA journal_mode` as busy
        // at once, without waiting out the busy timeout: so wait it out
        // here. (The migration after it runs in `BEGIN IMMEDIATE`, which
        // does wait, and re-reads the version inside its transaction.)
        let deadline = Instant::now() + options.busy_timeout;
        let writer = loop {
            let connected = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                // Keep the one connection for the life of the store; if it is
                // lost, the pool opens a new one through the same checks.
                .idle_timeout(None)
                .max_lifetime(None)
                // See the readers' pool below.
                .test_before_acquire(false)
                .acquire_timeout(options.acquire_timeout)
                .after_connect(check_durable)
                .connect_with(
                    base.clone()
                        .create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal)
                        // On macOS, fsync does not flush the drive's cache;
                        // these make SQLite use F_FULLFSYNC there (no-ops
                        // elsewhere).
                        .pragma("fullfsync", "ON")
                        .pragma("checkpoint_fullfsync", "ON")
                        // Sequencing probes the idempotency index at
                        // random keys while it appends whole envelopes:
                        // with SQLite's default 2 MiB cache the index
                        // pages are evicted by the appends and read again.
                        .pragma("cache_size", WRITER_CACHE_KIB)
                        .statement_cache_capacity(WRITER_STATEMENT_CACHE),
                )
                .await;
            match connected {
                Ok(pool) => break pool,
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(OPEN_RETRY).await;
                }
                Err(e) => return Err(sql(e)),
            }
        };
        migrate::migrate(&writer).await?;

        // WAL is a property of the file, set by the writer above; readers
        // must not try to change the journal mode (that needs an exclusive
        // lock), and `query_only` makes any stray write fail loudly.
        let reader = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(0)
            // An SQLite connection is a thread of this process, not a
            // socket that can go stale: the ping before each acquire would
            // be one more round trip to that thread per query. (The pool
            // still pings on release, and drops a connection whose thread
            // has gone.)
            .test_before_acquire(false)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(
                base.create_if_missing(false)
                    .pragma("query_only", "ON")
                    // The recent log (what streams catching up and the
                    // integrator read) stays in each reader's own cache
                    // rather than being read again from the OS.
                    .pragma("cache_size", READER_CACHE_KIB),
            )
            .await
            .map_err(sql)?;

        let (appended, _) = broadcast::channel(SUBSCRIPTION_BUFFER);
        Ok(Self {
            writer,
            reader,
            appended,
        })
    }

    /// The pragmas of the write connection, read back from SQLite (for
    /// tests and health checks: a durable store reports `wal` and `FULL`).
    pub async fn write_pragmas(&self) -> Result<WritePragmas, StoreError> {
        const OP: &str = "write pragmas";
        let mut conn = self.writer.acquire().await.map_err(|e| backend(OP, e))?;
        let journal_mode: String = pragma(&mut conn, "PRAGMA journal_mode", OP).await?;
        let synchronous: i64 = pragma(&mut conn, "PRAGMA synchronous", OP).await?;
        let foreign_keys: i64 = pragma(&mut conn, "PRAGMA foreign_keys", OP).await?;
        let busy_timeout: i64 = pragma(&mut conn, "PRAGMA busy_timeout", OP).await?;
        Ok(WritePragmas {
            journal_mode: journal_mode.to_ascii_lowercase(),
            synchronous: synchronous_name(synchronous),
            foreign_keys: foreign_keys != 0,
            busy_timeout_ms: from_sql(busy_timeout, "busy timeout")?,
        })
    }

    /// The schema version recorded in the database.
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        let mut conn = self
            .reader
            .acquire()
            .await
            .map_err(|e| backend("schema version", e))?;
        migrate::current_version(&mut conn)
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))
    }

    /// Closes every connection, waiting for calls in progress. Later calls
    /// (on this store or its clones) fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn begin_write(
        &self,
        op: &'static str,
    ) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| backend(op, e))
    }

    /// Wakes this store's subscribers (after a commit).
    fn notify(&self, appended: &[Appended]) {
        for a in appended {
            // No receiver is not an error: nobody is listening.
            let _ = self.appended.send(*a);
        }
    }

    async fn begin_read(
        &self,
        op: &'static str,
    ) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.reader.begin().await.map_err(|e| backend(op, e))
    }
}

/// Refuses a write connection that is not in WAL mode with
/// `synchronous=FULL` (`after_connect` runs on every new pooled
/// connection, after the connect options' pragmas).
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

/// `PRAGMA synchronous` reports FULL as 2.
const SYNCHRONOUS_FULL: i64 = 2;

fn synchronous_name(v: i64) -> String {
    match v {
        0 => "OFF".into(),
        1 => "NORMAL".into(),
        SYNCHRONOUS_FULL => "FULL".into(),
        3 => "EXTRA".into(),
        other => other.to_string(),
    }
}

async fn pragma<T>(
    conn: &mut SqliteConnection,
    sql: &'static str,
    op: &'static str,
) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite> + Send + Unpin,
{
    sqlx::query_scalar(sql)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| backend(op, e))
}

// ---------------------------------------------------------------------------
// Row decoding. Every stored value is checked as it is read.

fn blob<'r>(row: &'r SqliteRow, col: &'static str) -> Result<&'r [u8], StoreError> {
    row.try_get::<&[u8], _>(col)
        .map_err(|_| StoreError::Corrupt(format!("stored {col} is not a blob")))
}

fn uint(row: &SqliteRow, col: &'static str) -> Result<u64, StoreError> {
    let v: i64 = row
        .try_get(col)
        .map_err(|_| StoreError::Corrupt(format!("stored {col} is not an integer")))?;
    from_sql(v, col)
}

fn digest(row: &SqliteRow, col: &'static str) -> Result<Digest, StoreError> {
    Ok(Digest(fixed::<32>(blob(row, col)?, col)?))
}

fn opt_blob<'r>(row: &'r SqliteRow, col: &'static str) -> Result<Option<&'r [u8]>, StoreError> {
    row.try_get::<Option<&[u8]>, _>(col)
        .map_err(|_| StoreError::Corrupt(format!("stored {col} is not a blob")))
}

fn opt_uint(row: &SqliteRow, col: &'static str) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = row
        .try_get(col)
        .map_err(|_| StoreError::Corrupt(format!("stored {col} is not an integer")))?;
    v.map(|v| from_sql(v, col)).transpose()
}

/// A stored boolean (0 or 1).
fn flag(row: &SqliteRow, col: &'static str) -> Result<bool, StoreError> {
    match uint(row, col)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(StoreError::Corrupt(format!("stored {col} is not 0 or 1"))),
    }
}

fn invitation(row: &SqliteRow) -> Result<InvitationRecord, StoreError> {
    let redeemed = match (
        opt_blob(row, "redeemed_key")?,
        opt_uint(row, "redeemed_at")?,
        opt_blob(row, "payload")?,
    ) {
        (None, None, None) => None,
        (Some(key), Some(at), Some(payload)) => Some(Redemption {
            key: KeyId(Digest(fixed::<32>(key, "redeemed_key")?)),
            at,
            payload: payload.to_vec(),
        }),
        _ => {
            return Err(StoreError::Corrupt(
                "an invitation's redemption is partly stored".into(),
            ));
        }
    };
    Ok(InvitationRecord {
        token_hash: digest(row, "token_hash")?,
        party: PartyId(fixed::<16>(blob(row, "party")?, "party")?),
        expires_at: uint(row, "expires_at")?,
        invitation: blob(row, "invitation")?.to_vec(),
        created_at: uint(row, "created_at")?,
        redeemed,
    })
}

fn envelope(talks: TalksId, row: &SqliteRow) -> Result<StoredEnvelope, StoreError> {
    let body = row
        .try_get::<Option<&[u8]>, _>("body")
        .map_err(|_| StoreError::Corrupt("stored body is not a blob".into()))?;
    Ok(StoredEnvelope {
        talks,
        seq: uint(row, "seq")?,
        node_time: uint(row, "node_time")?,
        room: RoomId(fixed::<16>(blob(row, "room")?, "room")?),
        sender: KeyId(digest(row, "sender")?),
        header: blob(row, "header")?.to_vec(),
        body: body.map(<[u8]>::to_vec),
        body_hash: digest(row, "body_hash")?,
        leaf_hash: digest(row, "leaf_hash")?,
        receipt: blob(row, "receipt")?.to_vec(),
        welcome_to: opt_blob(row, "welcome_to")?
            .map(|keys| key_ids(keys, "welcome_to"))
            .transpose()?,
    })
}

/// Key ids stored concatenated (32 bytes each).
fn key_ids(bytes: &[u8], what: &'static str) -> Result<Vec<KeyId>, StoreError> {
    let (keys, rest) = bytes.as_chunks::<32>();
    if !rest.is_empty() {
        return Err(StoreError::Corrupt(format!(
            "stored {what} is not a list of 32-byte keys"
        )));
    }
    Ok(keys.iter().map(|k| KeyId(Digest(*k))).collect())
}

/// Key ids concatenated, as [`key_ids`] reads them back.
fn key_ids_bytes(keys: &[KeyId]) -> Vec<u8> {
    keys.iter()
        .flat_map(|k| k.as_bytes().iter().copied())
        .collect()
}

/// A scheduled item as stored.
fn scheduled_row(row: &SqliteRow) -> Result<ScheduledRecord, StoreError> {
    let gate = GateColumns {
        kind: opt_uint(row, "gate_kind")?
            .map(|k| u8::try_from(k).map_err(|_| StoreError::Corrupt("gate_kind".into())))
            .transpose()?,
        epoch: opt_uint(row, "gate_epoch")?,
        public_group: opt_blob(row, "gate_public_group")?.map(<[u8]>::to_vec),
        group_info: opt_blob(row, "gate_group_info")?.map(<[u8]>::to_vec),
        commit: opt_blob(row, "gate_commit")?
            .map(|b| fixed::<32>(b, "gate_commit").map(Digest))
            .transpose()?,
        to: opt_blob(row, "gate_to")?
            .map(|b| key_ids(b, "gate_to"))
            .transpose()?,
    };
    Ok(ScheduledRecord {
        id: fixed::<16>(blob(row, "id")?, "scheduled id")?,
        due_ms: uint(row, "due_ms")?,
        submission: Submission {
            talks: TalksId(fixed::<16>(blob(row, "talks")?, "talks")?),
            room: RoomId(fixed::<16>(blob(row, "room")?, "room")?),
            sender: KeyId(digest(row, "sender")?),
            idempotency_key: fixed::<16>(blob(row, "idempotency_key")?, "idempotency key")?,
            header: blob(row, "header")?.to_vec(),
            header_hash: digest(row, "header_hash")?,
            body: blob(row, "body")?.to_vec(),
            body_hash: digest(row, "body_hash")?,
            gate: gate.into_gate()?,
            access_version: None,
        },
    })
}

/// The stored lease `name` (`None`: never taken).
async fn stored_lease(
    conn: &mut SqliteConnection,
    name: LeaseName,
    op: &'static str,
) -> Result<Option<Lease>, StoreError> {
    let row = sqlx::query("SELECT epoch, holder, expires_ms FROM leases WHERE name = ?")
        .bind(name.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend(op, e))?;
    row.map(|row| {
        Ok(Lease {
            epoch: uint(&row, "epoch")?,
            holder: fixed::<16>(blob(&row, "holder")?, "lease holder")?,
            expires_ms: uint(&row, "expires_ms")?,
        })
    })
    .transpose()
}

/// Writes lease `name` as `lease`.
async fn write_lease(
    conn: &mut SqliteConnection,
    name: LeaseName,
    lease: &Lease,
    op: &'static str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO leases (name, epoch, holder, expires_ms) VALUES (?, ?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET
             epoch = excluded.epoch,
             holder = excluded.holder,
             expires_ms = excluded.expires_ms",
    )
    .bind(name.as_str())
    .bind(to_sql(lease.epoch, "the lease epoch is out of range")?)
    .bind(lease.holder.as_slice())
    .bind(to_sql(
        lease.expires_ms,
        "the lease expiry is out of range",
    )?)
    .execute(&mut *conn)
    .await
    .map_err(|e| backend(op, e))?;
    Ok(())
}

fn room_state_row(row: &SqliteRow) -> Result<RoomState, StoreError> {
    Ok(RoomState {
        epoch: uint(row, "epoch")?,
        public_group: blob(row, "public_group")?.to_vec(),
        group_info: blob(row, "group_info")?.to_vec(),
        created_seq: uint(row, "created_seq")?,
    })
}

fn key_package(row: &SqliteRow) -> Result<KeyPackageRecord, StoreError> {
    let reference = blob(row, "reference")?;
    if reference.is_empty() || reference.len() > MAX_KEY_PACKAGE_REFERENCE {
        return Err(StoreError::Corrupt(
            "stored key package reference has a bad length".into(),
        ));
    }
    Ok(KeyPackageRecord {
        reference: reference.to_vec(),
        bytes: blob(row, "bytes")?.to_vec(),
        not_after: uint(row, "not_after")?,
        last_resort: flag(row, "last_resort")?,
    })
}

// ---------------------------------------------------------------------------
// Queries shared by several methods.

/// A talks' log head as stored.
#[derive(Debug, Clone, Copy)]
struct Head {
    next_seq: u64,
    last_time: u64,
    integrated_size: u64,
}

async fn head(
    conn: &mut SqliteConnection,
    talks: TalksId,
    op: &'static str,
) -> Result<Option<Head>, StoreError> {
    let row =
        sqlx::query("SELECT next_seq, last_time, integrated_size FROM log_heads WHERE talks = ?")
            .bind(talks.as_bytes().as_slice())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| backend(op, e))?;
    row.as_ref().map(head_of).transpose()
}

/// A log head from its row's columns, checked.
fn head_of(row: &SqliteRow) -> Result<Head, StoreError> {
    let head = Head {
        next_seq: uint(row, "next_seq")?,
        last_time: uint(row, "last_time")?,
        integrated_size: uint(row, "integrated_size")?,
    };
    if head.integrated_size > head.next_seq {
        return Err(StoreError::Corrupt(
            "the integrated size exceeds the log size".into(),
        ));
    }
    Ok(head)
}

/// The log heads and access-list versions of the talks in `talks`
/// (distinct), in one statement per [`LOOKUP_CHUNK`] talks: what
/// [`sequence_in`] reads of each talks of its batch before it writes
/// anything. A talks with no head is not in the map.
async fn sequencing_heads(
    conn: &mut SqliteConnection,
    talks: &[TalksId],
    op: &'static str,
) -> Result<HashMap<TalksId, (Head, u64)>, StoreError> {
    let mut found = HashMap::with_capacity(talks.len());
    for range in pow2_chunks(talks.len(), LOOKUP_CHUNK) {
        let part = &talks[range];
        let sql = format!(
            "WITH k(n, talks) AS (VALUES {})
             SELECT k.n, h.next_seq, h.last_time, h.integrated_size, a.version
               FROM k JOIN log_heads h ON h.talks = k.talks
                      JOIN access_lists a ON a.talks = h.talks",
            placeholders(part.len(), 2)
        );
        // Only placeholders vary: every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (n, t) in part.iter().enumerate() {
            query = query.bind(n as i64).bind(t.as_bytes().as_slice());
        }
        for row in query
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| backend(op, e))?
        {
            let t = asked(&row, part, op)?;
            found.insert(*t, (head_of(&row)?, uint(&row, "version")?));
        }
    }
    Ok(found)
}

/// The MLS states of the rooms in `rooms` (distinct), in one statement
/// per [`LOOKUP_CHUNK`] rooms, read in the caller's transaction. A room
/// with no state is not in the map.
async fn room_states(
    conn: &mut SqliteConnection,
    rooms: &[(TalksId, RoomId)],
    op: &'static str,
) -> Result<HashMap<(TalksId, RoomId), RoomState>, StoreError> {
    let mut found = HashMap::with_capacity(rooms.len());
    for range in pow2_chunks(rooms.len(), LOOKUP_CHUNK) {
        let part = &rooms[range];
        let sql = format!(
            "WITH k(n, talks, room) AS (VALUES {})
             SELECT k.n, r.epoch, r.public_group, r.group_info, r.created_seq
               FROM k JOIN room_state r ON r.talks = k.talks AND r.room = k.room",
            placeholders(part.len(), 3)
        );
        // Only placeholders vary: every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (n, (t, r)) in part.iter().enumerate() {
            query = query
                .bind(n as i64)
                .bind(t.as_bytes().as_slice())
                .bind(r.as_bytes().as_slice());
        }
        for row in query
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| backend(op, e))?
        {
            let k = asked(&row, part, op)?;
            found.insert(*k, room_state_row(&row)?);
        }
    }
    Ok(found)
}

/// Moves the log heads of `heads` (talks, next seq, last time; distinct
/// talks) in one statement per [`LOOKUP_CHUNK`] talks, inside the
/// caller's write transaction; every one of them must exist.
async fn update_heads(
    conn: &mut SqliteConnection,
    heads: &[(TalksId, u64, u64)],
    op: &'static str,
) -> Result<(), StoreError> {
    for range in pow2_chunks(heads.len(), LOOKUP_CHUNK) {
        let part = &heads[range];
        let sql = format!(
            "WITH v(talks, next_seq, last_time) AS (VALUES {})
             UPDATE log_heads SET next_seq = v.next_seq, last_time = v.last_time
               FROM v WHERE log_heads.talks = v.talks",
            placeholders(part.len(), 3)
        );
        // Only placeholders vary: every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (talks, next_seq, last_time) in part {
            query = query
                .bind(talks.as_bytes().as_slice())
                .bind(to_sql(*next_seq, "the log is full")?)
                .bind(to_sql(*last_time, "the clock is beyond the storage range")?);
        }
        let done = query
            .execute(&mut *conn)
            .await
            .map_err(|e| backend(op, e))?;
        if done.rows_affected() != part.len() as u64 {
            return Err(StoreError::Corrupt(format!(
                "{op}: a log head read in this transaction is gone"
            )));
        }
    }
    Ok(())
}

/// The latest checkpoint of a talks.
async fn latest_checkpoint(
    conn: &mut SqliteConnection,
    talks: TalksId,
    op: &'static str,
) -> Result<Option<CheckpointRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT size, note FROM checkpoints WHERE talks = ? ORDER BY size DESC LIMIT 1",
    )
    .bind(talks.as_bytes().as_slice())
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| backend(op, e))?;
    row.map(|row| {
        Ok(CheckpointRecord {
            size: uint(&row, "size")?,
            note: blob(&row, "note")?.to_vec(),
        })
    })
    .transpose()
}

/// The item of `items` a lookup row answers: the row's `n` column is its
/// index, as the statement bound it. A row naming none is the backend's
/// fault.
fn asked<'a, T>(row: &SqliteRow, items: &'a [T], op: &str) -> Result<&'a T, StoreError> {
    usize::try_from(uint(row, "n")?)
        .ok()
        .and_then(|n| items.get(n))
        .ok_or_else(|| StoreError::Backend(format!("{op}: a lookup row names nothing looked up")))
}

/// An envelope found by its idempotency key.
struct Original {
    placement: Placement,
    header_hash: Digest,
}

/// How many rows one lookup or head-update statement of the sequencing
/// carries at most: idempotency keys (4 bound values each), log heads
/// (2), room states (3) or head moves (3); at most 1,024 values, well
/// under SQLite's 32,766.
const LOOKUP_CHUNK: usize = 256;

/// How many envelopes one `INSERT` statement carries at most (13 bound
/// values each).
const INSERT_CHUNK: usize = 64;

/// Each read connection's page cache: `PRAGMA cache_size` in KiB (negative),
/// 16 MiB (SQLite's default is 2 MiB).
const READER_CACHE_KIB: &str = "-16384";

/// The write connection's page cache: `PRAGMA cache_size` in KiB
/// (negative), 64 MiB.
const WRITER_CACHE_KIB: &str = "-65536";

/// Prepared statements the write connection keeps (sqlx's default is
/// 100): its fixed statements, about 75, and the batched ones whose text
/// depends on their row count ([`pow2_chunks`]: up to 9 sizes each of the
/// idempotency lookups, heads, room states, head moves, envelope and tree
/// hash inserts), so none is prepared again for every batch.
const WRITER_STATEMENT_CACHE: usize = 256;

/// Tree hashes per `INSERT` of an integration (3 values each).
const HASH_INSERT_CHUNK: usize = 256;

/// Cuts `n` items into ranges of at most `max` (a power of two) items,
/// each a power of two long: full `max`-sized ranges, then the binary
/// digits of the rest. A batched statement's SQL depends only on its row
/// count, so a batch of any size uses a handful of distinct statements,
/// each prepared once per connection (sqlx caches them), instead of one
/// round trip to the connection's thread per row.
fn pow2_chunks(n: usize, max: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let rest = n - start;
        let len = if rest >= max {
            max
        } else {
            1 << (usize::BITS - 1 - rest.leading_zeros())
        };
        out.push(start..start + len);
        start += len;
    }
    out
}

/// `(?, ?, …), (?, ?, …), …`: `rows` rows of `columns` placeholders.
fn placeholders(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// The envelopes already stored under the idempotency keys of `batch`
/// (read before any of the batch is written), by batch index of the first
/// submission carrying each key: one statement per [`LOOKUP_CHUNK`] keys
/// rather than one per submission.
async fn by_idempotency_keys(
    conn: &mut SqliteConnection,
    batch: &[Submission],
) -> Result<HashMap<(TalksId, KeyId, [u8; 16]), Original>, StoreError> {
    // Distinct keys, by the index of their first submission.
    let mut seen: HashSet<(TalksId, KeyId, [u8; 16])> = HashSet::with_capacity(batch.len());
    let keys: Vec<&Submission> = batch
        .iter()
        .filter(|s| seen.insert((s.talks, s.sender, s.idempotency_key)))
        .collect();
    let mut found = HashMap::new();
    for range in pow2_chunks(keys.len(), LOOKUP_CHUNK) {
        let part = &keys[range];
        let sql = format!(
            "WITH k(n, talks, sender, idempotency_key) AS (VALUES {})
             SELECT k.n, e.seq, e.node_time, e.header_hash, e.leaf_hash, e.receipt
               FROM k JOIN envelopes e
                 ON e.talks = k.talks AND e.sender = k.sender
                AND e.idempotency_key = k.idempotency_key",
            placeholders(part.len(), 4)
        );
        // Only placeholders vary: every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (n, sub) in part.iter().enumerate() {
            query = query
                .bind(n as i64)
                .bind(sub.talks.as_bytes().as_slice())
                .bind(sub.sender.as_bytes().as_slice())
                .bind(sub.idempotency_key.as_slice());
        }
        let rows = query
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| backend("sequence", e))?;
        for row in rows {
            let n = asked(&row, part, "sequence")?;
            found.insert(
                (n.talks, n.sender, n.idempotency_key),
                Original {
                    placement: Placement {
                        seq: uint(&row, "seq")?,
                        node_time: uint(&row, "node_time")?,
                        leaf_hash: digest(&row, "leaf_hash")?,
                        receipt: blob(&row, "receipt")?.to_vec(),
                    },
                    header_hash: digest(&row, "header_hash")?,
                },
            );
        }
    }
    Ok(found)
}

/// A room's MLS state, read in the caller's transaction.
async fn room_state(
    conn: &mut SqliteConnection,
    talks: TalksId,
    room: RoomId,
    op: &'static str,
) -> Result<Option<RoomState>, StoreError> {
    let row = sqlx::query(
        "SELECT epoch, public_group, group_info, created_seq FROM room_state
         WHERE talks = ? AND room = ?",
    )
    .bind(talks.as_bytes().as_slice())
    .bind(room.as_bytes().as_slice())
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| backend(op, e))?;
    row.as_ref().map(room_state_row).transpose()
}

/// The recorded commit that left `epoch` of a room.
async fn room_commit(
    conn: &mut SqliteConnection,
    talks: TalksId,
    room: RoomId,
    epoch: u64,
    op: &'static str,
) -> Result<Option<RoomCommit>, StoreError> {
    // An epoch past i64::MAX was never recorded (every epoch took a seq).
    let Ok(epoch) = i64::try_from(epoch) else {
        return Ok(None);
    };
    let row = sqlx::query(
        "SELECT seq, header_hash FROM room_commits WHERE talks = ? AND room = ? AND epoch = ?",
    )
    .bind(talks.as_bytes().as_slice())
    .bind(room.as_bytes().as_slice())
    .bind(epoch)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| backend(op, e))?;
    row.map(|row| {
        Ok(RoomCommit {
            seq: uint(&row, "seq")?,
            header_hash: digest(&row, "header_hash")?,
        })
    })
    .transpose()
}

/// Whether the talks exists.
async fn talks_exists(
    conn: &mut SqliteConnection,
    talks: TalksId,
    op: &'static str,
) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 FROM talks WHERE talks = ?")
        .bind(talks.as_bytes().as_slice())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend(op, e))?;
    Ok(row.is_some())
}

/// The access-list swap of [`Store::replace_access_list`] and
/// [`Store::redeem_invitation`], inside the caller's write transaction:
/// checks that the current list's hash is `expected` and `next` its next
/// version (`Stale` otherwise, `UnknownTalks` without a list), then
/// installs `next` and drops every pending change (their base is gone).
async fn swap_access_list(
    tx: &mut SqliteConnection,
    talks: TalksId,
    expected: Digest,
    next: &AccessListRecord,
    op: &'static str,
) -> Result<(), StoreError> {
    let id = talks.as_bytes().as_slice();
    let next_version = to_sql(next.version, "the access list version is out of range")?;
    let row = sqlx::query("SELECT hash, version FROM access_lists WHERE talks = ?")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| backend(op, e))?;
    let Some(row) = row else {
        return Err(StoreError::UnknownTalks);
    };
    if digest(&row, "hash")? != expected {
        return Err(StoreError::Stale);
    }
    // A version that is not the current + 1 was computed from another
    // list than the stored one: as stale as a hash mismatch.
    if uint(&row, "version")?.checked_add(1) != Some(next.version) {
        return Err(StoreError::Stale);
    }
    sqlx::query("UPDATE access_lists SET version = ?, hash = ?, bytes = ? WHERE talks = ?")
        .bind(next_version)
        .bind(next.hash.0.as_slice())
        .bind(next.bytes.as_slice())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(op, e))?;
    sqlx::query("DELETE FROM pending_changes WHERE talks = ?")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(op, e))?;
    Ok(())
}

/// A blob's record with its rooms, read in the caller's transaction.
async fn blob_record(
    conn: &mut SqliteConnection,
    talks: TalksId,
    hash: Digest,
    op: &'static str,
) -> Result<Option<BlobRecord>, StoreError> {
    let id = talks.as_bytes().as_slice();
    let row = sqlx::query(
        "SELECT size, party, uploader, created_at, complete FROM blobs
         WHERE talks = ? AND hash = ?",
    )
    .bind(id)
    .bind(hash.0.as_slice())
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| backend(op, e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let complete = flag(&row, "complete")?;
    let rooms =
        sqlx::query("SELECT room FROM blob_rooms WHERE talks = ? AND hash = ? ORDER BY room")
            .bind(id)
            .bind(hash.0.as_slice())
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| backend(op, e))?
            .iter()
            .map(|r| Ok(RoomId(fixed::<16>(blob(r, "room")?, "room")?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
    if rooms.is_empty() {
        return Err(StoreError::Corrupt("a blob has no room".into()));
    }
    Ok(Some(BlobRecord {
        hash,
        size: uint(&row, "size")?,
        party: PartyId(fixed::<16>(blob(&row, "party")?, "party")?),
        uploader: KeyId(digest(&row, "uploader")?),
        created_at: uint(&row, "created_at")?,
        complete,
        rooms,
    }))
}

/// A blob's size and whether it is complete, for a write on it: `Limit`
/// for an unknown blob (`UnknownTalks` for an unknown talks).
async fn blob_state(
    conn: &mut SqliteConnection,
    talks: TalksId,
    hash: Digest,
    op: &'static str,
    unknown: &'static str,
) -> Result<(u64, bool), StoreError> {
    let row = sqlx::query("SELECT size, complete FROM blobs WHERE talks = ? AND hash = ?")
        .bind(talks.as_bytes().as_slice())
        .bind(hash.0.as_slice())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend(op, e))?;
    let Some(row) = row else {
        return Err(if talks_exists(conn, talks, op).await? {
            StoreError::Limit(unknown)
        } else {
            StoreError::UnknownTalks
        });
    };
    let complete = flag(&row, "complete")?;
    Ok((uint(&row, "size")?, complete))
}

/// A count from `SELECT COUNT(*)`.
async fn count(
    conn: &mut SqliteConnection,
    sql: &'static str,
    binds: &[&[u8]],
    op: &'static str,
) -> Result<u64, StoreError> {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = q.bind(*b);
    }
    let row = q.fetch_one(&mut *conn).await.map_err(|e| backend(op, e))?;
    let n: i64 = row
        .try_get(0)
        .map_err(|_| StoreError::Corrupt("a count is not an integer".into()))?;
    from_sql(n, "count")
}

/// Stores a room's new MLS state and the commits a batch recorded for it,
/// inside the `sequence` transaction.
async fn write_room(
    conn: &mut SqliteConnection,
    (talks, room): (TalksId, RoomId),
    state: &RoomState,
    commits: &[(u64, RoomCommit)],
) -> Result<(), StoreError> {
    const OP: &str = "sequence";
    let id = talks.as_bytes().as_slice();
    let room_id = room.as_bytes().as_slice();
    sqlx::query(
        "INSERT INTO room_state (talks, room, epoch, public_group, group_info, created_seq)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (talks, room) DO UPDATE SET
             epoch = excluded.epoch,
             public_group = excluded.public_group,
             group_info = excluded.group_info",
    )
    .bind(id)
    .bind(room_id)
    .bind(to_sql(state.epoch, "the epoch is out of range")?)
    .bind(state.public_group.as_slice())
    .bind(state.group_info.as_slice())
    .bind(to_sql(state.created_seq, "the log is full")?)
    .execute(&mut *conn)
    .await
    .map_err(|e| backend(OP, e))?;
    for (epoch, c) in commits {
        sqlx::query(
            "INSERT INTO room_commits (talks, room, epoch, seq, header_hash)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(room_id)
        .bind(to_sql(*epoch, "the epoch is out of range")?)
        .bind(to_sql(c.seq, "the log is full")?)
        .bind(c.header_hash.0.as_slice())
        .execute(&mut *conn)
        .await
        .map_err(|e| match e {
            // The epoch's commit was looked up above in this transaction.
            sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation => {
                StoreError::Corrupt("a room's commits disagree with its state".into())
            }
            e => backend(OP, e),
        })?;
    }
    Ok(())
}

/// The sequencing of [`Store::sequence`] and [`Store::fire_due`], inside
/// the caller's write transaction (which the caller commits): the
/// idempotency lookups, gates, seqs, one signed receipt batch, the
/// envelopes, room states and log heads. Returns the outcomes, in batch
/// order, and the growth to announce once committed (empty: nothing new
/// was written).
///
/// Everything it reads is read before anything is written, a statement
/// per kind (idempotency keys, heads, gated rooms' states): so a room's
/// state is read for a submission that turns out to be a retry, and a
/// corrupt row anywhere in the batch fails it even where a talks named
/// earlier is unknown.
async fn sequence_in(
    tx: &mut SqliteConnection,
    batch: &[Submission],
    clock_ms: u64,
    log_key: &(dyn Signer + Sync),
) -> Result<(Vec<Outcome>, Vec<Appended>), StoreError> {
    const OP: &str = "sequence";

    // Heads of the talks touched, in order of first appearance (the
    // order of the notifications), with their stored next seq.
    let mut heads: HashMap<TalksId, Head> = HashMap::new();
    // The access list's version of each talks, read with its head.
    let mut access: HashMap<TalksId, u64> = HashMap::new();
    let mut order: Vec<(TalksId, u64)> = Vec::new();
    let mut pending: HashMap<(TalksId, KeyId, [u8; 16]), usize> = HashMap::new();
    let mut fresh: Vec<Fresh> = Vec::new();
    let mut slots: Vec<Slot> = Vec::with_capacity(batch.len());
    // Rooms gated in this batch, in order of first appearance.
    let mut rooms: HashMap<(TalksId, RoomId), RoomPlan> = HashMap::new();
    let mut room_order: Vec<(TalksId, RoomId)> = Vec::new();

    // Every idempotency key, log head and gated room state of the batch
    // read at once (a statement each, not one per talks or room), before
    // anything of the batch is written.
    let stored = by_idempotency_keys(&mut *tx, batch).await?;
    let mut talks_seen = HashSet::with_capacity(batch.len());
    let talks: Vec<TalksId> = batch
        .iter()
        .map(|s| s.talks)
        .filter(|t| talks_seen.insert(*t))
        .collect();
    let mut read_heads = sequencing_heads(&mut *tx, &talks, OP).await?;
    let mut rooms_seen = HashSet::new();
    let gated: Vec<(TalksId, RoomId)> = batch
        .iter()
        .filter(|s| s.gate.is_some())
        .map(|s| (s.talks, s.room))
        .filter(|k| rooms_seen.insert(*k))
        .collect();
    let mut read_rooms = room_states(&mut *tx, &gated, OP).await?;

    for (i, sub) in batch.iter().enumerate() {
        if let Entry::Vacant(v) = heads.entry(sub.talks) {
            let Some((h, version)) = read_heads.remove(&sub.talks) else {
                return Err(StoreError::UnknownTalks);
            };
            order.push((sub.talks, h.next_seq));
            access.insert(sub.talks, version);
            v.insert(h);
        }

        // The access list first, before the idempotency lookups.
        if let Some(refused) =
            backchannel_store::access_changed(sub.access_version, access.get(&sub.talks).copied())?
        {
            slots.push(Slot::Done(refused));
            continue;
        }

        // A key seen earlier in this batch: a retry of that submission.
        let key = (sub.talks, sub.sender, sub.idempotency_key);
        if let Some(&f) = pending.get(&key) {
            let first = &batch[fresh[f].submission];
            slots.push(if first.header_hash == sub.header_hash {
                Slot::New(f)
            } else {
                Slot::Done(Outcome::Conflict {
                    seq: fresh[f].record.seq,
                })
            });
            continue;
        }
        // A key stored before: a retry, or a conflict.
        if let Some(original) = stored.get(&key) {
            slots.push(Slot::Done(if original.header_hash == sub.header_hash {
                Outcome::Sequenced(original.placement.clone())
            } else {
                Outcome::Conflict {
                    seq: original.placement.seq,
                }
            }));
            continue;
        }

        // The gate, after the idempotency lookups: a retry that landed
        // got its placement above, whatever the room's epoch is now.
        let room_key = (sub.talks, sub.room);
        if let Some(gate) = &sub.gate {
            if let Entry::Vacant(v) = rooms.entry(room_key) {
                let state = read_rooms.remove(&room_key);
                room_order.push(room_key);
                v.insert(RoomPlan {
                    state,
                    commits: Vec::new(),
                    changed: false,
                });
            }
            let planned_commit = |e: u64| {
                rooms.get(&room_key).and_then(|p| {
                    p.commits
                        .iter()
                        .find(|(epoch, _)| *epoch == e)
                        .map(|(_, c)| *c)
                })
            };
            let commit = match gate.commit_epoch() {
                None => None,
                Some(e) => match planned_commit(e) {
                    Some(c) => Some(c),
                    None => room_commit(&mut *tx, sub.talks, sub.room, e, OP).await?,
                },
            };
            let state = rooms.get(&room_key).and_then(|p| p.state.as_ref());
            if let Err(refused) = backchannel_store::check_gate(gate, state, commit) {
                slots.push(Slot::Done(refused));
                continue;
            }
        }

        let Some(h) = heads.get_mut(&sub.talks) else {
            // Inserted above for this very talks.
            return Err(StoreError::Backend("sequence: lost a log head".into()));
        };
        let seq = h.next_seq;
        let timestamp_ms = h.last_time.max(clock_ms);
        h.next_seq = seq
            .checked_add(1)
            .ok_or(StoreError::Limit("the log is full"))?;
        h.last_time = timestamp_ms;
        let leaf_hash = LeafData {
            seq,
            timestamp_ms,
            room: sub.room,
            header_hash: sub.header_hash,
            body_hash: sub.body_hash,
        }
        .hash();
        if let (Some(gate), Some(planned)) = (&sub.gate, rooms.get_mut(&room_key))
            && let Some((state, commit)) =
                backchannel_store::gate_effect(gate, planned.state.as_ref(), seq, sub.header_hash)
        {
            planned.state = Some(state);
            planned.commits.extend(commit);
            planned.changed = true;
        }
        pending.insert(key, fresh.len());
        slots.push(Slot::New(fresh.len()));
        fresh.push(Fresh {
            submission: i,
            record: BatchRecord {
                talks: sub.talks,
                seq,
                timestamp_ms,
                leaf_hash,
            },
        });
    }

    let mut placements: Vec<Placement> = Vec::with_capacity(fresh.len());
    if !fresh.is_empty() {
        // One signature for the batch. Built and dropped before the next
        // await, and before anything is written.
        let receipts: Vec<Vec<u8>> = {
            let records = fresh.iter().map(|f| f.record).collect();
            let signed = SignedBatch::sign(log_key, records, clock_ms)
                .map_err(|e| StoreError::Sign(e.to_string()))?;
            (0..fresh.len())
                .map(|i| {
                    signed
                        .receipt(i)
                        .map(|r| r.to_canonical_bytes())
                        .ok_or(StoreError::Sign("a record has no receipt".into()))
                })
                .collect::<Result<_, _>>()?
        };
        for (f, receipt) in fresh.iter().zip(receipts) {
            placements.push(Placement {
                seq: f.record.seq,
                node_time: f.record.timestamp_ms,
                leaf_hash: f.record.leaf_hash,
                receipt,
            });
        }
        insert_envelopes(&mut *tx, batch, &fresh, &placements).await?;

        // The rooms' new states and commits, after the envelopes they
        // name (foreign keys), in the same transaction.
        for room_key in &room_order {
            let Some(planned) = rooms.get(room_key).filter(|p| p.changed) else {
                continue;
            };
            let Some(state) = &planned.state else {
                continue;
            };
            write_room(&mut *tx, *room_key, state, &planned.commits).await?;
        }
        let moved: Vec<(TalksId, u64, u64)> = order
            .iter()
            .filter_map(|(talks, stored_next)| {
                heads
                    .get(talks)
                    .filter(|h| h.next_seq != *stored_next)
                    .map(|h| (*talks, h.next_seq, h.last_time))
            })
            .collect();
        update_heads(&mut *tx, &moved, OP).await?;
    }
    let appended = order
        .iter()
        .filter_map(|(talks, stored_next)| {
            heads
                .get(talks)
                .filter(|h| h.next_seq != *stored_next)
                .map(|h| Appended {
                    talks: *talks,
                    size: h.next_seq,
                })
        })
        .collect();

    let outcomes = slots
        .into_iter()
        .map(|s| match s {
            Slot::Done(o) => Ok(o),
            Slot::New(i) => placements
                .get(i)
                .cloned()
                .map(Outcome::Sequenced)
                .ok_or(StoreError::Backend("sequence: lost a placement".into())),
        })
        .collect::<Result<_, _>>()?;
    Ok((outcomes, appended))
}

async fn commit(tx: Transaction<'static, Sqlite>, op: &'static str) -> Result<(), StoreError> {
    tx.commit().await.map_err(|e| backend(op, e))
}

/// Writes the batch's new envelopes, [`INSERT_CHUNK`] rows per statement.
async fn insert_envelopes(
    tx: &mut SqliteConnection,
    batch: &[Submission],
    fresh: &[Fresh],
    placements: &[Placement],
) -> Result<(), StoreError> {
    const OP: &str = "sequence";
    let welcome_to: Vec<Option<Vec<u8>>> = fresh
        .iter()
        .map(|f| match &batch[f.submission].gate {
            Some(Gate::Welcome { to, .. }) => Some(key_ids_bytes(to)),
            _ => None,
        })
        .collect();
    for range in pow2_chunks(fresh.len(), INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO envelopes (talks, seq, node_time, room, sender, idempotency_key,
                     header, header_hash, body, body_hash, leaf_hash, receipt, welcome_to)
                 VALUES {}",
            placeholders(range.len(), 13)
        );
        // Only placeholders vary: every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for i in range {
            let (f, placed) = (&fresh[i], &placements[i]);
            let sub = &batch[f.submission];
            let r = &f.record;
            query = query
                .bind(r.talks.as_bytes().as_slice())
                .bind(to_sql(r.seq, "the log is full")?)
                .bind(to_sql(
                    r.timestamp_ms,
                    "the clock is beyond the storage range",
                )?)
                .bind(sub.room.as_bytes().as_slice())
                .bind(sub.sender.as_bytes().as_slice())
                .bind(sub.idempotency_key.as_slice())
                .bind(sub.header.as_slice())
                .bind(sub.header_hash.0.as_slice())
                .bind(sub.body.as_slice())
                .bind(sub.body_hash.0.as_slice())
                .bind(r.leaf_hash.0.as_slice())
                .bind(placed.receipt.as_slice())
                .bind(welcome_to[i].as_deref());
        }
        query.execute(&mut *tx).await.map_err(|e| match e {
            // The idempotency keys were looked up before, so only the
            // (talks, seq) key can collide: a head behind its rows.
            sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation => {
                StoreError::Corrupt("the log head is behind its envelopes".into())
            }
            e => backend(OP, e),
        })?;
    }
    Ok(())
}

/// What became of one submission while its batch is being built.
enum Slot {
    /// Decided from what was already stored.
    Done(Outcome),
    /// The new envelope at this index of the batch (itself, or the first
    /// submission of the batch with the same idempotency key).
    New(usize),
}

/// A room gated in the batch being sequenced, as its earlier submissions
/// leave it.
struct RoomPlan {
    state: Option<RoomState>,
    /// Commits of this batch, by the epoch they leave.
    commits: Vec<(u64, RoomCommit)>,
    /// Whether this batch changes the room's state.
    changed: bool,
}

/// A new envelope of the batch being sequenced.
struct Fresh {
    /// Its index in the submitted batch.
    submission: usize,
    record: BatchRecord,
}

impl Store for SqliteStore {
    async fn create_talks(
        &self,
        talks: &TalksRecord,
        access_list: &AccessListRecord,
    ) -> Result<(), StoreError> {
        const OP: &str = "create talks";
        let created_at = to_sql(talks.created_at, "the creation time is out of range")?;
        if access_list.version != 0 {
            return Err(StoreError::Limit("the first access list is version 0"));
        }
        let version = to_sql(
            access_list.version,
            "the access list version is out of range",
        )?;
        let id = talks.talks.as_bytes().as_slice();
        let mut tx = self.begin_write(OP).await?;
        let exists = sqlx::query("SELECT 1 FROM talks WHERE talks = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        if exists.is_some() {
            return Err(StoreError::TalksExists);
        }
        sqlx::query("INSERT INTO talks (talks, creator, created_at) VALUES (?, ?, ?)")
            .bind(id)
            .bind(talks.creator.as_bytes().as_slice())
            .bind(created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        sqlx::query("INSERT INTO access_lists (talks, version, hash, bytes) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(version)
            .bind(access_list.hash.0.as_slice())
            .bind(access_list.bytes.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        sqlx::query(
            "INSERT INTO log_heads (talks, next_seq, last_time, integrated_size)
             VALUES (?, 0, 0, 0)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        commit(tx, OP).await
    }

    async fn talks(&self, talks: TalksId) -> Result<Option<TalksRecord>, StoreError> {
        const OP: &str = "read talks";
        let row = sqlx::query("SELECT creator, created_at FROM talks WHERE talks = ?")
            .bind(talks.as_bytes().as_slice())
            .fetch_optional(&self.reader)
            .await
            .map_err(|e| backend(OP, e))?;
        row.map(|row| {
            Ok(TalksRecord {
                talks,
                creator: KeyId(digest(&row, "creator")?),
                created_at: uint(&row, "created_at")?,
            })
        })
        .transpose()
    }

    async fn access_list(&self, talks: TalksId) -> Result<Option<AccessListRecord>, StoreError> {
        const OP: &str = "read access list";
        let row = sqlx::query("SELECT bytes, hash, version FROM access_lists WHERE talks = ?")
            .bind(talks.as_bytes().as_slice())
            .fetch_optional(&self.reader)
            .await
            .map_err(|e| backend(OP, e))?;
        row.map(|row| {
            Ok(AccessListRecord {
                bytes: blob(&row, "bytes")?.to_vec(),
                hash: digest(&row, "hash")?,
                version: uint(&row, "version")?,
            })
        })
        .transpose()
    }

    async fn replace_access_list(
        &self,
        talks: TalksId,
        expected: Digest,
        next: &AccessListRecord,
    ) -> Result<(), StoreError> {
        const OP: &str = "replace access list";
        to_sql(next.version, "the access list version is out of range")?;
        let mut tx = self.begin_write(OP).await?;
        swap_access_list(&mut tx, talks, expected, next, OP).await?;
        commit(tx, OP).await
    }

    async fn sequence(
        &self,
        batch: Vec<Submission>,
        clock_ms: u64,
        log_key: &(dyn Signer + Sync),
    ) -> Result<Vec<Outcome>, StoreError> {
        const OP: &str = "sequence";
        if batch.len() > MAX_SEQUENCE_BATCH {
            return Err(StoreError::Limit(
                "a sequence batch holds at most MAX_SEQUENCE_BATCH envelopes",
            ));
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        to_sql(clock_ms, "the clock is beyond the storage range")?;

        // Every error below returns early and drops `tx`, which rolls back:
        // nothing of the batch is written unless COMMIT succeeds.
        let mut tx = self.begin_write(OP).await?;
        let (outcomes, appended) = sequence_in(&mut tx, &batch, clock_ms, log_key).await?;
        if !appended.is_empty() {
            // Durable here (WAL fsync'd, synchronous=FULL): only now may the
            // node acknowledge, and subscribers be woken.
            commit(tx, OP).await?;
            self.notify(&appended);
        }
        // (With nothing new, `tx` is dropped here: a rollback of a
        // transaction that wrote nothing.)
        Ok(outcomes)
    }

    async fn log_size(&self, talks: TalksId) -> Result<u64, StoreError> {
        const OP: &str = "log size";
        let mut conn = self.reader.acquire().await.map_err(|e| backend(OP, e))?;
        Ok(head(&mut conn, talks, OP).await?.map_or(0, |h| h.next_seq))
    }

    async fn read(
        &self,
        talks: TalksId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        const OP: &str = "read envelopes";
        let limit = limit.min(MAX_READ);
        // Seqs never reach i64::MAX (see `to_sql`), so nothing lies beyond.
        let Ok(from_sql_value) = i64::try_from(from) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        // One snapshot for the head and the rows, so they can be compared.
        let mut tx = self.begin_read(OP).await?;
        let Some(h) = head(&mut tx, talks, OP).await? else {
            return Ok(Vec::new());
        };
        let want = h.next_seq.saturating_sub(from).min(limit as u64);
        // First the sizes only (SQLite reads a blob's length from the
        // record header, not its content), to find how many rows fit in
        // `MAX_READ_BYTES` without loading bodies that would not be sent.
        let sizes = sqlx::query(
            "SELECT seq, length(header) + COALESCE(length(body), 0) AS bytes
             FROM envelopes WHERE talks = ? AND seq >= ? ORDER BY seq LIMIT ?",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(from_sql_value)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        if sizes.len() as u64 != want {
            return Err(StoreError::Corrupt(
                "the envelopes disagree with the log size".into(),
            ));
        }
        let mut total = 0usize;
        let mut fit = 0usize;
        for (expected, row) in (from..).zip(&sizes) {
            if uint(row, "seq")? != expected {
                return Err(StoreError::Corrupt("a seq is missing from the log".into()));
            }
            let bytes = usize::try_from(uint(row, "bytes")?).unwrap_or(usize::MAX);
            total = total.saturating_add(bytes);
            // The first row always goes, so paging makes progress.
            if fit > 0 && total > MAX_READ_BYTES {
                break;
            }
            fit += 1;
        }
        if fit == 0 {
            commit(tx, OP).await?;
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT seq, node_time, room, sender, header, body, body_hash, leaf_hash, receipt,
                    welcome_to
             FROM envelopes WHERE talks = ? AND seq >= ? ORDER BY seq LIMIT ?",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(from_sql_value)
        .bind(i64::try_from(fit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        commit(tx, OP).await?;

        if rows.len() != fit {
            return Err(StoreError::Corrupt(
                "the envelopes disagree with the log size".into(),
            ));
        }
        let mut out = Vec::with_capacity(rows.len());
        for (expected, row) in (from..).zip(&rows) {
            let e = envelope(talks, row)?;
            if e.seq != expected {
                return Err(StoreError::Corrupt("a seq is missing from the log".into()));
            }
            out.push(e);
        }
        Ok(out)
    }

    async fn leaves(
        &self,
        talks: TalksId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredLeaf>, StoreError> {
        const OP: &str = "read leaves";
        let limit = limit.min(MAX_READ);
        let Ok(from_sql_value) = i64::try_from(from) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        // One statement: one snapshot. Rows are dense from `from` up to the
        // log size (the head is written in the transaction that wrote them).
        let rows = sqlx::query(
            "SELECT seq, node_time, room, header, body_hash, leaf_hash
             FROM envelopes WHERE talks = ? AND seq >= ? ORDER BY seq LIMIT ?",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(from_sql_value)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await
        .map_err(|e| backend(OP, e))?;
        let mut out = Vec::with_capacity(rows.len());
        for (expected, row) in (from..).zip(&rows) {
            let leaf = StoredLeaf {
                seq: uint(row, "seq")?,
                node_time: uint(row, "node_time")?,
                room: RoomId(fixed::<16>(blob(row, "room")?, "room")?),
                header: blob(row, "header")?.to_vec(),
                body_hash: digest(row, "body_hash")?,
                leaf_hash: digest(row, "leaf_hash")?,
            };
            if leaf.seq != expected {
                return Err(StoreError::Corrupt("a seq is missing from the log".into()));
            }
            out.push(leaf);
        }
        Ok(out)
    }

    async fn purge_body(&self, talks: TalksId, seq: u64) -> Result<bool, StoreError> {
        const OP: &str = "purge body";
        let Ok(seq) = i64::try_from(seq) else {
            return Ok(false);
        };
        let mut tx = self.begin_write(OP).await?;
        let done = sqlx::query(
            "UPDATE envelopes SET body = NULL WHERE talks = ? AND seq = ? AND body IS NOT NULL",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(seq)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        commit(tx, OP).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn integrated_size(&self, talks: TalksId) -> Result<u64, StoreError> {
        const OP: &str = "integrated size";
        let mut conn = self.reader.acquire().await.map_err(|e| backend(OP, e))?;
        Ok(head(&mut conn, talks, OP)
            .await?
            .map_or(0, |h| h.integrated_size))
    }

    async fn tree_hashes(
        &self,
        talks: TalksId,
        indexes: &[u64],
    ) -> Result<Vec<Digest>, StoreError> {
        const OP: &str = "read tree hashes";
        // The caller's errors first, for the whole call: too many indexes,
        // or (below) a peer-chosen index beyond the integrated tree — both
        // `Limit`, never `Corrupt`.
        if indexes.len() > MAX_TREE_HASHES {
            return Err(StoreError::Limit(
                "tree_hashes: at most MAX_TREE_HASHES indexes per call",
            ));
        }
        let mut tx = self.begin_read(OP).await?;
        let integrated = head(&mut tx, talks, OP)
            .await?
            .map_or(0, |h| h.integrated_size);
        let stored = tlog_tiles::stored_hash_count(integrated);
        if indexes.iter().any(|&i| i >= stored) {
            return Err(StoreError::Limit(
                "tree_hashes: a hash at or beyond the integrated tree was asked for",
            ));
        }
        let mut out = Vec::with_capacity(indexes.len());
        for &index in indexes {
            // An index past i64::MAX (a tree of over 2^62 leaves) can never
            // have been stored (`integrate` refuses it), so it is missing.
            let row = match i64::try_from(index) {
                Ok(idx) => sqlx::query("SELECT hash FROM tree_hashes WHERE talks = ? AND idx = ?")
                    .bind(talks.as_bytes().as_slice())
                    .bind(idx)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| backend(OP, e))?,
                Err(_) => None,
            };
            // Below the integrated tree, a missing hash is a hole: corruption.
            let Some(row) = row else {
                return Err(StoreError::Corrupt(
                    "a tree hash is missing below the integrated size".into(),
                ));
            };
            out.push(digest(&row, "hash")?);
        }
        commit(tx, OP).await?;
        Ok(out)
    }

    async fn integrate(
        &self,
        talks: TalksId,
        from: u64,
        to: u64,
        hashes: &[(u64, Digest)],
        checkpoint: &CheckpointRecord,
        fence: Option<Fence>,
    ) -> Result<(), StoreError> {
        const OP: &str = "integrate";
        let id = talks.as_bytes().as_slice();
        // One writer: the write transaction itself keeps `acquire_lease`
        // out until this one ends, so the epoch read here holds to COMMIT.
        let mut tx = self.begin_write(OP).await?;
        if let Some(fence) = fence {
            let stored = stored_lease(&mut tx, fence.name, OP).await?;
            backchannel_store::check_fence(fence, stored.map(|l| l.epoch))?;
        }
        let Some(h) = head(&mut tx, talks, OP).await? else {
            return Err(StoreError::UnknownTalks);
        };
        if h.integrated_size != from {
            return Err(StoreError::Stale);
        }
        if to < from || to > h.next_seq {
            return Err(StoreError::Limit(
                "integration must end between its start and the log size",
            ));
        }
        if checkpoint.size != to {
            return Err(StoreError::Limit(
                "the checkpoint must be at the integrated size",
            ));
        }
        if from == to {
            let exists = sqlx::query("SELECT 1 FROM checkpoints WHERE talks = ? LIMIT 1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| backend(OP, e))?;
            if exists.is_some() {
                // Re-signing would drop the cosignatures gathered on the note.
                return Err(StoreError::Limit(
                    "integrate: nothing new to integrate; add cosignatures with replace_checkpoint_note",
                ));
            }
        }
        backchannel_store::check_integration_hashes(from, to, hashes)?;
        // A few multi-row statements, not one per hash: the write
        // connection (and so the sequencer's next group commit) waits for
        // every round trip of this transaction.
        for range in pow2_chunks(hashes.len(), HASH_INSERT_CHUNK) {
            let sql = format!(
                "INSERT INTO tree_hashes (talks, idx, hash) VALUES {}",
                placeholders(range.len(), 3)
            );
            // Only placeholders vary: every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (index, hash) in &hashes[range] {
                query = query
                    .bind(id)
                    .bind(to_sql(*index, "a tree hash index is out of range")?)
                    .bind(hash.0.as_slice());
            }
            query.execute(&mut *tx).await.map_err(|e| backend(OP, e))?;
        }
        // A size integrates once (from == to only for a first, empty
        // checkpoint), so this never replaces a note and its cosignatures.
        let lease_epoch = fence
            .map(|f| to_sql(f.epoch, "the lease epoch is out of range"))
            .transpose()?;
        sqlx::query("INSERT INTO checkpoints (talks, size, note, lease_epoch) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(to_sql(to, "the log is full")?)
            .bind(checkpoint.note.as_slice())
            .bind(lease_epoch)
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        sqlx::query("UPDATE log_heads SET integrated_size = ? WHERE talks = ?")
            .bind(to_sql(to, "the log is full")?)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        commit(tx, OP).await
    }

    async fn checkpoint(&self, talks: TalksId) -> Result<Option<CheckpointRecord>, StoreError> {
        const OP: &str = "read checkpoint";
        let mut conn = self.reader.acquire().await.map_err(|e| backend(OP, e))?;
        latest_checkpoint(&mut conn, talks, OP).await
    }

    async fn replace_checkpoint_note(
        &self,
        talks: TalksId,
        size: u64,
        expected: &[u8],
        note: &[u8],
    ) -> Result<(), StoreError> {
        const OP: &str = "replace checkpoint note";
        let mut tx = self.begin_write(OP).await?;
        if head(&mut tx, talks, OP).await?.is_none() {
            return Err(StoreError::UnknownTalks);
        }
        let Some(latest) = latest_checkpoint(&mut tx, talks, OP).await? else {
            return Err(StoreError::Stale);
        };
        if latest.size != size || latest.note != expected {
            return Err(StoreError::Stale);
        }
        sqlx::query("UPDATE checkpoints SET note = ? WHERE talks = ? AND size = ?")
            .bind(note)
            .bind(talks.as_bytes().as_slice())
            .bind(to_sql(size, "the log is full")?)
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        commit(tx, OP).await
    }

    fn subscribe(&self) -> Subscription {
        self.appended.subscribe()
    }

    async fn integration_lag(&self) -> Result<backchannel_store::IntegrationLag, StoreError> {
        const OP: &str = "integration lag";
        // The WHERE clause is the partial index's: one pass over the talks
        // with work, however many talks there are.
        let row = sqlx::query(
            "SELECT COUNT(*), COALESCE(MAX(next_seq - integrated_size), 0)
             FROM log_heads WHERE integrated_size < next_seq",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(|e| backend(OP, e))?;
        let number = |i: usize, what: &'static str| -> Result<u64, StoreError> {
            let n: i64 = row
                .try_get(i)
                .map_err(|_| StoreError::Corrupt(format!("{OP}: the {what} is not an integer")))?;
            from_sql(n, what)
        };
        Ok(backchannel_store::IntegrationLag {
            lagging_talks: number(0, "count")?,
            max_leaves: number(1, "lag")?,
        })
    }

    async fn unintegrated_talks(&self, limit: usize) -> Result<Vec<TalksId>, StoreError> {
        const OP: &str = "unintegrated talks";
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The WHERE clause is the partial index's, so only talks with work
        // are visited.
        let rows = sqlx::query(
            "SELECT talks FROM log_heads WHERE integrated_size < next_seq
             ORDER BY talks LIMIT ?",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await
        .map_err(|e| backend(OP, e))?;
        rows.iter()
            .map(|row| Ok(TalksId(fixed::<16>(blob(row, "talks")?, "talks")?)))
            .collect()
    }

    async fn create_invitation(
        &self,
        talks: TalksId,
        invitation: &InvitationRecord,
    ) -> Result<(), StoreError> {
        const OP: &str = "create invitation";
        backchannel_store::check_new_invitation(invitation)?;
        let expires_at = to_sql(invitation.expires_at, "the expiry is out of range")?;
        let created_at = to_sql(invitation.created_at, "the creation time is out of range")?;
        let id = talks.as_bytes().as_slice();
        let token = invitation.token_hash.0.as_slice();
        let mut tx = self.begin_write(OP).await?;
        if !talks_exists(&mut tx, talks, OP).await? {
            return Err(StoreError::UnknownTalks);
        }
        let taken = sqlx::query("SELECT 1 FROM invitations WHERE talks = ? AND token_hash = ?")
            .bind(id)
            .bind(token)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        if taken.is_some() {
            return Err(StoreError::Exists);
        }
        let held = count(
            &mut tx,
            "SELECT COUNT(*) FROM invitations WHERE talks = ?",
            &[id],
            OP,
        )
        .await?;
        if held >= MAX_INVITATIONS as u64 {
            return Err(StoreError::Limit(
                "a talks holds at most MAX_INVITATIONS invitations",
            ));
        }
        sqlx::query(
            "INSERT INTO invitations (talks, token_hash, party, expires_at, invitation, created_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(token)
        .bind(invitation.party.as_bytes().as_slice())
        .bind(expires_at)
        .bind(invitation.invitation.as_slice())
        .bind(created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        commit(tx, OP).await
    }

    async fn invitation(
        &self,
        talks: TalksId,
        token_hash: Digest,
    ) -> Result<Option<InvitationRecord>, StoreError> {
        const OP: &str = "read invitation";
        let row = sqlx::query(
            "SELECT token_hash, party, expires_at, invitation, created_at,
                    redeemed_key, redeemed_at, payload
             FROM invitations WHERE talks = ? AND token_hash = ?",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(token_hash.0.as_slice())
        .fetch_optional(&self.reader)
        .await
        .map_err(|e| backend(OP, e))?;
        row.as_ref().map(invitation).transpose()
    }

    async fn invitations(&self, talks: TalksId) -> Result<Vec<InvitationRecord>, StoreError> {
        const OP: &str = "read invitations";
        let rows = sqlx::query(
            "SELECT token_hash, party, expires_at, invitation, created_at,
                    redeemed_key, redeemed_at, payload
             FROM invitations WHERE talks = ? ORDER BY token_hash LIMIT ?",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(MAX_INVITATIONS as i64)
        .fetch_all(&self.reader)
        .await
        .map_err(|e| backend(OP, e))?;
        rows.iter().map(invitation).collect()
    }

    async fn redeem_invitation(
        &self,
        talks: TalksId,
        token_hash: Digest,
        redemption: &Redemption,
        expected: Digest,
        next: &AccessListRecord,
    ) -> Result<(), StoreError> {
        const OP: &str = "redeem invitation";
        backchannel_store::check_redemption(redemption, next)?;
        let at = to_sql(redemption.at, "the redemption time is out of range")?;
        let id = talks.as_bytes().as_slice();
        let token = token_hash.0.as_slice();
        let mut tx = self.begin_write(OP).await?;
        if !talks_exists(&mut tx, talks, OP).await? {
            return Err(StoreError::UnknownTalks);
        }
        // Only an unredeemed invitation is redeemed: a second redemption
        // (or a race with one) updates nothing and is stale.
        let redeemed = sqlx::query(
            "UPDATE invitations SET redeemed_key = ?, redeemed_at = ?, payload = ?
             WHERE talks = ? AND token_hash = ? AND redeemed_key IS NULL",
        )
        .bind(redemption.key.as_bytes().as_slice())
        .bind(at)
        .bind(redemption.payload.as_slice())
        .bind(id)
        .bind(token)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        if redeemed.rows_affected() != 1 {
            return Err(StoreError::Stale);
        }
        // Refused here, the update above is rolled back with `tx`.
        swap_access_list(&mut tx, talks, expected, next, OP).await?;
        commit(tx, OP).await
    }

    async fn pending_changes(&self, talks: TalksId) -> Result<Vec<PendingChange>, StoreError> {
        const OP: &str = "read pending changes";
        let rows = sqlx::query(
            "SELECT delta_hash, change FROM pending_changes WHERE talks = ?
             ORDER BY delta_hash LIMIT ?",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(MAX_PENDING_CHANGES as i64)
        .fetch_all(&self.reader)
        .await
        .map_err(|e| backend(OP, e))?;
        rows.iter()
            .map(|row| {
                Ok(PendingChange {
                    delta_hash: digest(row, "delta_hash")?,
                    change: blob(row, "change")?.to_vec(),
                })
            })
            .collect()
    }

    async fn put_pending_change(
        &self,
        talks: TalksId,
        base: Digest,
        expected: Option<&[u8]>,
        change: &PendingChange,
    ) -> Result<(), StoreError> {
        const OP: &str = "put pending change";
        let id = talks.as_bytes().as_slice();
        let delta = change.delta_hash.0.as_slice();
        let mut tx = self.begin_write(OP).await?;
        let row = sqlx::query("SELECT hash FROM access_lists WHERE talks = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        let Some(row) = row else {
            return Err(StoreError::UnknownTalks);
        };
        if digest(&row, "hash")? != base {
            return Err(StoreError::Stale);
        }
        let stored =
            sqlx::query("SELECT change FROM pending_changes WHERE talks = ? AND delta_hash = ?")
                .bind(id)
                .bind(delta)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| backend(OP, e))?;
        let stored = stored.as_ref().map(|r| blob(r, "change")).transpose()?;
        if stored != expected {
            return Err(StoreError::Stale);
        }
        if stored.is_some() {
            sqlx::query("UPDATE pending_changes SET change = ? WHERE talks = ? AND delta_hash = ?")
                .bind(change.change.as_slice())
                .bind(id)
                .bind(delta)
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(OP, e))?;
        } else {
            let held = count(
                &mut tx,
                "SELECT COUNT(*) FROM pending_changes WHERE talks = ?",
                &[id],
                OP,
            )
            .await?;
            if held >= MAX_PENDING_CHANGES as u64 {
                return Err(StoreError::Limit(
                    "a talks holds at most MAX_PENDING_CHANGES pending changes",
                ));
            }
            sqlx::query("INSERT INTO pending_changes (talks, delta_hash, change) VALUES (?, ?, ?)")
                .bind(id)
                .bind(delta)
                .bind(change.change.as_slice())
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(OP, e))?;
        }
        commit(tx, OP).await
    }

    async fn create_blob(
        &self,
        talks: TalksId,
        new: &BlobRecord,
        quota: u64,
    ) -> Result<BlobRecord, StoreError> {
        const OP: &str = "create blob";
        let room = backchannel_store::check_new_blob(new)?;
        let size = to_sql(new.size, "the blob size is out of range")?;
        let created_at = to_sql(new.created_at, "the creation time is out of range")?;
        let id = talks.as_bytes().as_slice();
        let hash = new.hash.0.as_slice();
        let mut tx = self.begin_write(OP).await?;
        if !talks_exists(&mut tx, talks, OP).await? {
            return Err(StoreError::UnknownTalks);
        }
        if let Some(mut existing) = blob_record(&mut tx, talks, new.hash, OP).await? {
            if existing.size != new.size {
                return Err(StoreError::Limit(
                    "a blob with this hash exists with another size",
                ));
            }
            let Err(at) = existing.rooms.binary_search(&room) else {
                // Already referenced from this room: nothing to write.
                return Ok(existing);
            };
            sqlx::query("INSERT INTO blob_rooms (talks, hash, room) VALUES (?, ?, ?)")
                .bind(id)
                .bind(hash)
                .bind(room.as_bytes().as_slice())
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(OP, e))?;
            commit(tx, OP).await?;
            existing.rooms.insert(at, room);
            return Ok(existing);
        }
        // The quota is checked in the write transaction that inserts, so
        // concurrent uploads of one party cannot both fit in its last bytes.
        let row = sqlx::query(
            "SELECT COALESCE(SUM(size), 0) AS used FROM blobs WHERE talks = ? AND party = ?",
        )
        .bind(id)
        .bind(new.party.as_bytes().as_slice())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        if !backchannel_store::fits_quota(uint(&row, "used")?, new.size, quota) {
            return Err(StoreError::Quota);
        }
        sqlx::query(
            "INSERT INTO blobs (talks, hash, size, party, uploader, created_at, complete)
             VALUES (?, ?, ?, ?, ?, ?, 0)",
        )
        .bind(id)
        .bind(hash)
        .bind(size)
        .bind(new.party.as_bytes().as_slice())
        .bind(new.uploader.as_bytes().as_slice())
        .bind(created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        sqlx::query("INSERT INTO blob_rooms (talks, hash, room) VALUES (?, ?, ?)")
            .bind(id)
            .bind(hash)
            .bind(room.as_bytes().as_slice())
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        commit(tx, OP).await?;
        Ok(new.clone())
    }

    async fn blob(&self, talks: TalksId, hash: Digest) -> Result<Option<BlobRecord>, StoreError> {
        const OP: &str = "read blob";
        // One snapshot for the record and its rooms.
        let mut tx = self.begin_read(OP).await?;
        let record = blob_record(&mut tx, talks, hash, OP).await?;
        commit(tx, OP).await?;
        Ok(record)
    }

    async fn put_blob_chunk(
        &self,
        talks: TalksId,
        hash: Digest,
        index: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        const OP: &str = "put blob chunk";
        let mut tx = self.begin_write(OP).await?;
        let (size, complete) =
            blob_state(&mut tx, talks, hash, OP, "put_blob_chunk: no such blob").await?;
        if complete {
            return Err(StoreError::Limit("put_blob_chunk: the blob is complete"));
        }
        backchannel_store::check_blob_chunk(size, index, bytes.len())?;
        sqlx::query(
            "INSERT INTO blob_chunks (talks, hash, idx, bytes) VALUES (?, ?, ?, ?)
             ON CONFLICT (talks, hash, idx) DO UPDATE SET bytes = excluded.bytes",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(hash.0.as_slice())
        .bind(to_sql(index, "a chunk index is out of range")?)
        .bind(bytes)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        commit(tx, OP).await
    }

    async fn blob_chunk(
        &self,
        talks: TalksId,
        hash: Digest,
        index: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        const OP: &str = "read blob chunk";
        // An index past i64::MAX was never stored (`put_blob_chunk` refuses
        // any index past the last chunk).
        let Ok(index) = i64::try_from(index) else {
            return Ok(None);
        };
        let row =
            sqlx::query("SELECT bytes FROM blob_chunks WHERE talks = ? AND hash = ? AND idx = ?")
                .bind(talks.as_bytes().as_slice())
                .bind(hash.0.as_slice())
                .bind(index)
                .fetch_optional(&self.reader)
                .await
                .map_err(|e| backend(OP, e))?;
        row.map(|row| Ok(blob(&row, "bytes")?.to_vec())).transpose()
    }

    async fn blob_chunks_present(
        &self,
        talks: TalksId,
        hash: Digest,
    ) -> Result<Vec<u64>, StoreError> {
        const OP: &str = "read blob chunks present";
        let rows =
            sqlx::query("SELECT idx FROM blob_chunks WHERE talks = ? AND hash = ? ORDER BY idx")
                .bind(talks.as_bytes().as_slice())
                .bind(hash.0.as_slice())
                .fetch_all(&self.reader)
                .await
                .map_err(|e| backend(OP, e))?;
        rows.iter().map(|row| uint(row, "idx")).collect()
    }

    async fn complete_blob(&self, talks: TalksId, hash: Digest) -> Result<(), StoreError> {
        const OP: &str = "complete blob";
        let mut tx = self.begin_write(OP).await?;
        let (size, complete) =
            blob_state(&mut tx, talks, hash, OP, "complete_blob: no such blob").await?;
        if complete {
            return Ok(());
        }
        let chunks = BlobRecord::chunk_count(size);
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM blob_chunks WHERE talks = ? AND hash = ? AND idx < ?",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(hash.0.as_slice())
        .bind(to_sql(chunks, "a chunk index is out of range")?)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        if uint(&row, "n")? != chunks {
            return Err(StoreError::Limit("complete_blob: a chunk is missing"));
        }
        sqlx::query("UPDATE blobs SET complete = 1 WHERE talks = ? AND hash = ?")
            .bind(talks.as_bytes().as_slice())
            .bind(hash.0.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        commit(tx, OP).await
    }

    async fn room_state(
        &self,
        talks: TalksId,
        room: RoomId,
    ) -> Result<Option<RoomState>, StoreError> {
        const OP: &str = "read room state";
        let mut conn = self.reader.acquire().await.map_err(|e| backend(OP, e))?;
        room_state(&mut conn, talks, room, OP).await
    }

    async fn acquire_lease(
        &self,
        name: LeaseName,
        holder: [u8; 16],
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Lease, StoreError> {
        const OP: &str = "acquire lease";
        let mut tx = self.begin_write(OP).await?;
        let current = stored_lease(&mut tx, name, OP).await?;
        let Some(next) = backchannel_store::next_lease(current, holder, now_ms, ttl_ms)? else {
            // Another holder's unexpired lease stands (`tx` rolls back).
            return Ok(current.unwrap_or(Lease {
                epoch: 0,
                holder: [0; 16],
                expires_ms: 0,
            }));
        };
        write_lease(&mut tx, name, &next, OP).await?;
        commit(tx, OP).await?;
        Ok(next)
    }

    async fn release_lease(
        &self,
        name: LeaseName,
        holder: [u8; 16],
        epoch: u64,
    ) -> Result<bool, StoreError> {
        const OP: &str = "release lease";
        let mut tx = self.begin_write(OP).await?;
        let Some(current) = stored_lease(&mut tx, name, OP)
            .await?
            .filter(|l| l.epoch > 0 && l.epoch == epoch && l.holder == holder)
        else {
            return Ok(false);
        };
        let released = Lease {
            expires_ms: 0,
            ..current
        };
        write_lease(&mut tx, name, &released, OP).await?;
        commit(tx, OP).await?;
        Ok(true)
    }

    async fn schedule(&self, item: &ScheduledRecord) -> Result<(), StoreError> {
        const OP: &str = "schedule";
        backchannel_store::check_scheduled(item)?;
        let sub = &item.submission;
        let gate = GateColumns::of(sub.gate.as_ref());
        let mut tx = self.begin_write(OP).await?;
        if !talks_exists(&mut tx, sub.talks, OP).await? {
            return Err(StoreError::UnknownTalks);
        }
        let taken = sqlx::query("SELECT 1 FROM scheduled WHERE id = ?")
            .bind(item.id.as_slice())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        if taken.is_some() {
            return Err(StoreError::Exists);
        }
        if count(&mut tx, "SELECT COUNT(*) FROM scheduled", &[], OP).await? >= MAX_SCHEDULED as u64
        {
            return Err(StoreError::Limit(
                "a store holds at most MAX_SCHEDULED scheduled items",
            ));
        }
        sqlx::query(
            "INSERT INTO scheduled (id, due_ms, talks, room, sender, idempotency_key, header,
                 header_hash, body, body_hash, gate_kind, gate_epoch, gate_public_group,
                 gate_group_info, gate_commit, gate_to)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(item.id.as_slice())
        .bind(to_sql(item.due_ms, "the due time is out of range")?)
        .bind(sub.talks.as_bytes().as_slice())
        .bind(sub.room.as_bytes().as_slice())
        .bind(sub.sender.as_bytes().as_slice())
        .bind(sub.idempotency_key.as_slice())
        .bind(sub.header.as_slice())
        .bind(sub.header_hash.0.as_slice())
        .bind(sub.body.as_slice())
        .bind(sub.body_hash.0.as_slice())
        .bind(gate.kind.map(i64::from))
        .bind(
            gate.epoch
                .map(|e| to_sql(e, "the epoch is out of range"))
                .transpose()?,
        )
        .bind(gate.public_group)
        .bind(gate.group_info)
        .bind(gate.commit.map(|c| c.0.to_vec()))
        .bind(gate.to.as_deref().map(key_ids_bytes))
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        commit(tx, OP).await
    }

    async fn fire_due(
        &self,
        now_ms: u64,
        limit: usize,
        log_key: &(dyn Signer + Sync),
    ) -> Result<Vec<Fired>, StoreError> {
        const OP: &str = "fire due";
        let now = to_sql(now_ms, "the clock is beyond the storage range")?;
        let limit = limit.min(MAX_FIRE_BATCH);
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Nothing due (nearly always): a read answers it, without taking
        // the single write connection from the sequencer every tick.
        let any_due = sqlx::query("SELECT 1 FROM scheduled WHERE due_ms <= ? LIMIT 1")
            .bind(now)
            .fetch_optional(&self.reader)
            .await
            .map_err(|e| backend(OP, e))?
            .is_some();
        if !any_due {
            return Ok(Vec::new());
        }
        // SQLite has one writer: this write transaction is the claim, so
        // no other caller can fire the rows read here before it ends.
        let mut tx = self.begin_write(OP).await?;
        let due = sqlx::query(
            "SELECT id, due_ms, talks, room, sender, idempotency_key, header, header_hash,
                 body, body_hash, gate_kind, gate_epoch, gate_public_group, gate_group_info,
                 gate_commit, gate_to
             FROM scheduled WHERE due_ms <= ? ORDER BY due_ms, id LIMIT ?",
        )
        .bind(now)
        // At most MAX_FIRE_BATCH, which fits.
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?
        .iter()
        .map(scheduled_row)
        .collect::<Result<Vec<_>, _>>()?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, batch): (Vec<[u8; 16]>, Vec<Submission>) =
            due.into_iter().map(|d| (d.id, d.submission)).unzip();
        let (outcomes, appended) = sequence_in(&mut tx, &batch, now_ms, log_key).await?;
        for id in &ids {
            sqlx::query("DELETE FROM scheduled WHERE id = ?")
                .bind(id.as_slice())
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(OP, e))?;
        }
        commit(tx, OP).await?;
        self.notify(&appended);
        Ok(ids
            .into_iter()
            .zip(outcomes)
            .map(|(id, outcome)| Fired { id, outcome })
            .collect())
    }

    async fn scheduled_count(&self) -> Result<u64, StoreError> {
        const OP: &str = "scheduled count";
        let mut conn = self.reader.acquire().await.map_err(|e| backend(OP, e))?;
        count(&mut conn, "SELECT COUNT(*) FROM scheduled", &[], OP).await
    }

    async fn put_key_packages(
        &self,
        talks: TalksId,
        device: KeyId,
        packages: Vec<KeyPackageRecord>,
    ) -> Result<(), StoreError> {
        const OP: &str = "put key packages";
        backchannel_store::check_key_packages(&packages)?;
        let id = talks.as_bytes().as_slice();
        let dev = device.as_bytes().as_slice();
        let mut tx = self.begin_write(OP).await?;
        if !talks_exists(&mut tx, talks, OP).await? {
            return Err(StoreError::UnknownTalks);
        }
        let rows = sqlx::query(
            "SELECT reference, last_resort FROM key_packages WHERE talks = ? AND device = ?",
        )
        .bind(id)
        .bind(dev)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        let mut stored: HashSet<Vec<u8>> = HashSet::with_capacity(rows.len());
        let mut has_last_resort = false;
        for row in &rows {
            stored.insert(blob(row, "reference")?.to_vec());
            has_last_resort |= flag(row, "last_resort")?;
        }
        let new = backchannel_store::new_key_packages(&packages, |r| stored.contains(r));
        // A new last-resort package takes the place of the stored one.
        let replaced = has_last_resort && new.iter().any(|p| p.last_resort);
        if stored.len() + new.len() - usize::from(replaced) > MAX_KEY_PACKAGES_PER_DEVICE {
            return Err(StoreError::Limit(
                "a device holds at most MAX_KEY_PACKAGES_PER_DEVICE key packages",
            ));
        }
        if new.is_empty() {
            // Nothing to write: `tx` rolls back a transaction that wrote
            // nothing.
            return Ok(());
        }
        if replaced {
            sqlx::query(
                "DELETE FROM key_packages WHERE talks = ? AND device = ? AND last_resort = 1",
            )
            .bind(id)
            .bind(dev)
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        }
        for p in new {
            sqlx::query(
                "INSERT INTO key_packages (talks, device, reference, bytes, not_after, last_resort)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(id)
            .bind(dev)
            .bind(p.reference.as_slice())
            .bind(p.bytes.as_slice())
            .bind(to_sql(p.not_after, "times are below 2^63")?)
            .bind(i64::from(p.last_resort))
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        }
        commit(tx, OP).await
    }

    async fn claim_key_package(
        &self,
        talks: TalksId,
        claimer: KeyId,
        device: KeyId,
        now: u64,
        max_claims: u32,
        window_s: u64,
    ) -> Result<Option<KeyPackageRecord>, StoreError> {
        const OP: &str = "claim key package";
        let now_sql = to_sql(now, "times are below 2^63")?;
        let id = talks.as_bytes().as_slice();
        let dev = device.as_bytes().as_slice();
        let by = claimer.as_bytes().as_slice();
        let mut tx = self.begin_write(OP).await?;
        if !talks_exists(&mut tx, talks, OP).await? {
            return Err(StoreError::UnknownTalks);
        }
        let row = sqlx::query(
            "SELECT window_start, claims FROM key_package_claims
             WHERE talks = ? AND claimer = ? AND device = ?",
        )
        .bind(id)
        .bind(by)
        .bind(dev)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        let stored = row
            .map(|row| {
                let claims = u32::try_from(uint(&row, "claims")?)
                    .map_err(|_| StoreError::Corrupt("stored claims is out of range".into()))?;
                Ok::<_, StoreError>((uint(&row, "window_start")?, claims))
            })
            .transpose()?;
        // Refused here, nothing is written (`tx` rolls back).
        let (start, claims) = backchannel_store::count_claim(stored, now, max_claims, window_s)?;
        sqlx::query(
            "INSERT INTO key_package_claims (talks, claimer, device, window_start, claims)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (talks, claimer, device) DO UPDATE SET
                 window_start = excluded.window_start, claims = excluded.claims",
        )
        .bind(id)
        .bind(by)
        .bind(dev)
        .bind(to_sql(start, "times are below 2^63")?)
        .bind(i64::from(claims))
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        sqlx::query("DELETE FROM key_packages WHERE talks = ? AND device = ? AND not_after < ?")
            .bind(id)
            .bind(dev)
            .bind(now_sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        // Every package left is valid: an ordinary one first, the lowest
        // reference first; the last-resort one only when none is left.
        let row = sqlx::query(
            "SELECT reference, bytes, not_after, last_resort FROM key_packages
             WHERE talks = ? AND device = ? ORDER BY last_resort, reference LIMIT 1",
        )
        .bind(id)
        .bind(dev)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        let claimed = row.as_ref().map(key_package).transpose()?;
        if let Some(p) = claimed.as_ref().filter(|p| !p.last_resort) {
            sqlx::query(
                "DELETE FROM key_packages WHERE talks = ? AND device = ? AND reference = ?",
            )
            .bind(id)
            .bind(dev)
            .bind(p.reference.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        }
        commit(tx, OP).await?;
        Ok(claimed)
    }

    async fn key_package_count(
        &self,
        talks: TalksId,
        device: KeyId,
        now: u64,
    ) -> Result<u64, StoreError> {
        const OP: &str = "count key packages";
        // Nothing stored is valid past 2^63 (`not_after` is below it).
        let Ok(now) = i64::try_from(now) else {
            return Ok(0);
        };
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM key_packages
             WHERE talks = ? AND device = ? AND last_resort = 0 AND not_after >= ?",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(device.as_bytes().as_slice())
        .bind(now)
        .fetch_one(&self.reader)
        .await
        .map_err(|e| backend(OP, e))?;
        uint(&row, "n")
    }
}
