//! The node's storage ([`backchannel_store::Store`]) on PostgreSQL.
//!
//! Features:
//! - **Durable acknowledgements.** Every connection runs with
//!   `synchronous_commit = on`, set explicitly when the pool opens it and
//!   read back (a connection reporting anything else is refused), so a
//!   `COMMIT` returns only once its WAL record is flushed to disk (and, if
//!   the server has synchronous standbys, on them too); a method returns
//!   `Ok` only after its `COMMIT` did. The server's own `fsync` must be on
//!   as well: [`PostgresStore::settings`] reports both for health checks,
//!   but the store does not refuse a server running with `fsync = off`
//!   (test servers often do, on purpose).
//! - **Sequencing by row locks.** Each talks has a log head row: the next
//!   seq, the last node timestamp and the integrated size. `sequence` locks
//!   the heads of every talks in its batch (`SELECT … FOR UPDATE`, in talks
//!   id order so two batches cannot deadlock), then the access-list rows
//!   of the talks whose submissions name a list version (`FOR SHARE`, in
//!   the same order: a replacement or pending change, which locks the row
//!   `FOR UPDATE` and takes no head lock, waits for the batch, up to
//!   `lock_timeout`), then reads idempotency keys, room state and gates
//!   under those locks, and writes the envelopes and the heads in the same
//!   transaction. So seqs are handed out in one order
//!   across every connection (and, later, every node) on the database; a
//!   node timestamp is `max(head's last timestamp, clock)` and never goes
//!   backwards; and a transaction that rolls back rolls its counter back
//!   too, so seqs stay dense. `integrate` locks the same row, so
//!   integration is fenced against sequencing and itself. A node that
//!   hangs inside a transaction loses it (and its locks) after
//!   `idle_in_transaction_session_timeout` (1 s by default), and a lock
//!   wait gives up after `lock_timeout` (5 s), both set on every
//!   connection ([`PostgresOptions`]); either is `Unavailable`.
//! - **Leases and fencing.** A lease row per role (`acquire_lease`: insert
//!   if missing, then `FOR UPDATE`) carries an epoch that rises on every
//!   change of holder. A fenced `integrate` reads it `FOR SHARE` *before*
//!   it locks any log head (every transaction that takes both takes the
//!   lease row first, and `sequence` never takes it, so there is no lock
//!   cycle): a takeover waits for an integration in flight, or the
//!   integration sees the new epoch and is `Fenced`.
//! - **Timers.** `fire_due` claims due scheduled rows `FOR UPDATE SKIP
//!   LOCKED` (a row another node is firing is skipped, not waited for) and
//!   sequences them through the same code as `sequence`, in the claiming
//!   transaction, then deletes them: each fires once across every node.
//! - **Other writes** run in `READ COMMITTED` transactions with explicit
//!   locks where the contract needs a check and a write to be atomic: the
//!   access list row for its compare-and-swap and for pending changes (so a
//!   change never survives the list it was made against); the talks row
//!   (`FOR NO KEY UPDATE`) for the per-talks limits of invitations, blobs
//!   (quota) and key packages (per-device limits, claim counters); a blob's
//!   row for chunk writes against its completion. Reads that need one
//!   snapshot run in `REPEATABLE READ, READ ONLY` transactions. Isolation
//!   levels are named in every `BEGIN`, whatever the server's default.
//! - **Versioned schema.** Migrations under `migrations/` are embedded and
//!   applied on open, each in one transaction with its version row, under a
//!   transaction-scoped advisory lock (`pg_advisory_xact_lock`) so nodes
//!   starting together migrate once; a schema newer than this build knows
//!   is refused ([`OpenError::NewerSchema`]) before anything is written.
//! - **Its own schema.** [`PostgresOptions::schema`] names a PostgreSQL
//!   schema (created if missing) that every connection puts alone on its
//!   `search_path`, so one database can hold several stores (tests give
//!   each store a fresh one).
//! - **Notifications across nodes.** A store wakes its own subscribers
//!   after its own commits, and `sequence` also `NOTIFY`s
//!   ([`NOTIFY_CHANNEL`]) in the same transaction, so the notification is
//!   delivered only if it commits. Each store runs a relay that `LISTEN`s
//!   (on one connection of its pool) and wakes its subscribers for what
//!   other stores — other nodes — sequence in the same schema. A
//!   notification is only a wake-up: after its connection is lost, the
//!   relay listens again and announces every talks' current size, so
//!   subscribers re-read from the last seq they fanned out.
//! - **Defensive decoding.** Stored values of the wrong length, type or sign
//!   are [`StoreError::Corrupt`], never a panic; server errors are mapped by
//!   SQLSTATE to [`StoreError::Unavailable`] (connection lost, deadlock,
//!   serialization failure, shutdown, disk full: nothing may be assumed
//!   about the call), [`StoreError::Corrupt`] (`data_corrupted`) or
//!   [`StoreError::Backend`], with messages that carry no ids.
//!
//! Non-features:
//! - No transaction-pooling proxies: the per-connection settings above are
//!   session state, which a proxy in transaction mode (PgBouncer's
//!   `pool_mode = transaction`) would not keep.
//! - No content verification. The store returns what the database holds; a
//!   tampered header or receipt is served as stored and caught by clients,
//!   which verify headers, leaves, receipts and proofs themselves (the node
//!   is an untrusted sequencer). Structural breaks the store can see cheaply
//!   (a missing seq, a bad length) are reported as `Corrupt`.

mod error;
mod migrate;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

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
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, Row, Transaction};
use thiserror::Error;
use tokio::sync::{broadcast, watch};

use crate::error::{backend, fixed, from_sql, is_unique_violation, to_sql};
pub use crate::migrate::SCHEMA_VERSION;

/// The default of [`PostgresOptions::idle_in_transaction_timeout`].
///
/// 1 s: the store never waits on anything but the database (and signing a
/// receipt, which takes microseconds) between the statements of a
/// transaction, so a transaction idle for a second means its node was
/// paused (SIGSTOP, a VM frozen) or cut off behind a half-open connection.
/// Its row locks — talks' log heads above all, and the lease row — would
/// otherwise stall every other node's sequencing and integration of those
/// talks until TCP keepalive noticed, which takes hours by default.
pub const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(1);

/// The default of [`PostgresOptions::lock_timeout`].
///
/// 5 s: every lock the store takes is held for one short transaction, so a
/// wait this long means the holder is stuck (and will be cut off by the
/// idle timeout); failing with `Unavailable` lets the caller retry rather
/// than hang behind it.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest schema name PostgreSQL keeps whole (`NAMEDATALEN` − 1
/// bytes); a longer one would be truncated silently, so it is refused.
pub const MAX_SCHEMA_NAME: usize = 63;

/// How the store opens its database.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The PostgreSQL schema holding the store's tables, created if
    /// missing and put alone on every connection's `search_path`: a plain
    /// identifier matching `[a-z_][a-z0-9_]{0,62}`, not starting with
    /// `pg_` (reserved by PostgreSQL). `None`: the connection's default
    /// `search_path` decides (usually `public`).
    pub schema: Option<String>,
    /// How many connections the pool keeps at most for calls (at least 1;
    /// the notification relay holds one more).
    pub max_connections: u32,
    /// How long a call waits for a free connection (and `open` for the
    /// server) before failing with [`StoreError::Unavailable`]
    /// ([`OpenError::Unreachable`]).
    pub acquire_timeout: Duration,
    /// How long a connection may sit idle inside a transaction before the
    /// server ends its session and releases its locks
    /// (`idle_in_transaction_session_timeout`, whole milliseconds, at least
    /// 1). Our transactions never wait on anything but the database
    /// between statements, so a node paused or cut off inside one (SIGSTOP,
    /// a network partition) must not hold the log-head rows other nodes'
    /// sequencing and integration need for long. The call in that
    /// transaction fails with [`StoreError::Unavailable`] (outcome
    /// unknown). Default [`DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT`] (1 s).
    pub idle_in_transaction_timeout: Duration,
    /// How long one statement waits for a row lock before failing with
    /// [`StoreError::Unavailable`] (`lock_timeout`, whole milliseconds, at
    /// least 1), so a call never hangs behind a stuck lock holder. Default
    /// [`DEFAULT_LOCK_TIMEOUT`] (5 s).
    pub lock_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: None,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }
}

/// Why the database could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The URL is not a PostgreSQL connection URL.
    #[error("the database URL is not valid ({0}): expected postgres://user@host:port/database")]
    Url(String),
    /// The schema name is not a plain identifier we accept.
    #[error(
        "the schema name {0:?} is not valid: use 1 to 63 characters of a-z, 0-9 and _, \
         not starting with a digit or pg_"
    )]
    SchemaName(String),
    /// The server could not be reached (refused, timed out, TLS failed).
    #[error("cannot reach the database server: {0}")]
    Unreachable(String),
    /// The schema was migrated by a newer build.
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
    /// The server refused to log in, configure or migrate (including a
    /// connection that would not run with `synchronous_commit = on`).
    #[error("cannot open the database: {0}")]
    Postgres(String),
}

/// Session settings of a connection, as the server reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// `synchronous_commit` (`"on"` on every connection of the store).
    pub synchronous_commit: String,
    /// The server's `fsync` (`"on"` unless the server was configured to
    /// trade durability for speed).
    pub fsync: String,
    /// `current_schema()`: where the store's tables are.
    pub current_schema: Option<String>,
    /// `idle_in_transaction_session_timeout` as the server shows it
    /// (`"1s"` by default).
    pub idle_in_transaction_session_timeout: String,
    /// `lock_timeout` as the server shows it (`"5s"` by default).
    pub lock_timeout: String,
}

/// [`Store`] on a PostgreSQL database. Clones share the connections and the
/// subscribers.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    appended: broadcast::Sender<Appended>,
    /// Names this store's own notifications, which its relay skips (its
    /// subscribers heard of its writes already).
    instance: u64,
    /// Held by every clone; once the last is dropped, the notification
    /// relay sees its receiver close and stops.
    _alive: Arc<watch::Sender<()>>,
}

/// The channel sequencing notifies on, with `schema instance talks size` as
/// the payload (`pg_notify` in [`Store::sequence`]; the store's instance in
/// 16 hex digits, the talks in 32, the new log size in decimal).
pub const NOTIFY_CHANNEL: &str = "backchannel_appended";

/// How long the relay waits before listening again after its connection
/// failed.
const RELISTEN_BACKOFF: Duration = Duration::from_millis(250);

/// What the notification relay works with.
struct Relay {
    pool: PgPool,
    /// The store's schema: notifications of stores in other schemas of the
    /// database are skipped.
    schema: String,
    /// The store's own instance: its own notifications are skipped.
    instance: u64,
    appended: broadcast::Sender<Appended>,
}

/// Relays what other nodes sequence on this database to this store's
/// subscribers: `LISTEN`s on [`NOTIFY_CHANNEL`] (telling `listening` once
/// it does) and turns each notification of another store in the same
/// schema into an [`Appended`]. A notification is only a wake-up: whenever
/// the relay listens again after its connection was lost (notifications
/// sent meanwhile are gone), it re-reads every talks' log size and
/// announces each, so subscribers re-read from the last seq they fanned out
/// and miss nothing. Ends when the pool closes or the last clone of the
/// store is dropped.
async fn relay_notifications(
    relay: Relay,
    mut dropped: watch::Receiver<()>,
    listening: tokio::sync::oneshot::Sender<()>,
) {
    let mut listening = Some(listening);
    let mut listener: Option<sqlx::postgres::PgListener> = None;
    loop {
        if relay.pool.is_closed() {
            return;
        }
        let l = match listener.as_mut() {
            Some(l) => l,
            None => {
                let started = async {
                    let mut l = sqlx::postgres::PgListener::connect_with(&relay.pool).await?;
                    l.listen(NOTIFY_CHANNEL).await?;
                    Ok::<_, sqlx::Error>(l)
                };
                let started = tokio::select! {
                    r = started => r,
                    _ = dropped.changed() => return,
                };
                match started {
                    Ok(l) => {
                        match listening.take() {
                            Some(tell) => {
                                let _ = tell.send(());
                            }
                            None => announce_all(&relay).await,
                        }
                        listener.insert(l)
                    }
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(_) => {
                        tokio::time::sleep(RELISTEN_BACKOFF).await;
                        continue;
                    }
                }
            }
        };
        let next = tokio::select! {
            r = l.try_recv() => r,
            _ = dropped.changed() => return,
        };
        match next {
            Ok(Some(n)) => {
                if let Some(a) = parse_notification(&relay, n.payload()) {
                    // No receiver is not an error: nobody is listening.
                    let _ = relay.appended.send(a);
                }
            }
            // The connection was lost and is back, listening again:
            // whatever was notified meanwhile is gone.
            Ok(None) => announce_all(&relay).await,
            Err(sqlx::Error::PoolClosed) => return,
            Err(_) => {
                listener = None;
                tokio::time::sleep(RELISTEN_BACKOFF).await;
            }
        }
    }
}

/// Announces every talks' current log size (after the relay lost
/// notifications). A failure is left for the next time: subscribers poll
/// anyway.
async fn announce_all(relay: &Relay) {
    let Ok(rows) = sqlx::query("SELECT talks, next_seq FROM log_heads")
        .fetch_all(&relay.pool)
        .await
    else {
        return;
    };
    for row in rows {
        let talks = row
            .try_get::<Vec<u8>, _>("talks")
            .ok()
            .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok());
        let size = row
            .try_get::<i64, _>("next_seq")
            .ok()
            .and_then(|n| u64::try_from(n).ok());
        if let (Some(talks), Some(size)) = (talks, size) {
            let _ = relay.appended.send(Appended {
                talks: TalksId(talks),
                size,
            });
        }
    }
}

/// The [`Appended`] a notification payload (`schema instance talks size`)
/// announces, if it is well formed, for the relay's schema and from another
/// store.
fn parse_notification(relay: &Relay, payload: &str) -> Option<Appended> {
    let mut parts = payload.split(' ');
    let (schema, instance, talks, size) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if schema != relay.schema
        || parts.next().is_some()
        || u64::from_str_radix(instance, 16).ok()? == relay.instance
    {
        return None;
    }
    Some(Appended {
        talks: TalksId::from_hex(talks).ok()?,
        size: size.parse().ok()?,
    })
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://…`), creates the
    /// configured schema if missing and migrates it to [`SCHEMA_VERSION`].
    /// Must run inside a Tokio runtime.
    pub async fn open(url: &str, options: PostgresOptions) -> Result<Self, OpenError> {
        if let Some(schema) = &options.schema {
            check_schema_name(schema)?;
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(OpenError::Url("not a postgres:// URL".into()));
        }
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| OpenError::Url(e.to_string()))?
            .application_name("backchannel-node");
        let schema: Option<Arc<str>> = options.schema.as_deref().map(Arc::from);

        // One connection first, outside the pool: the pool retries a
        // refused connection until its timeout and then reports only that
        // it timed out, where this reports why (refused, unknown host, bad
        // password, settings refused). It also runs the migrations.
        let mut first = tokio::time::timeout(
            options.acquire_timeout,
            PgConnection::connect_with(&connect),
        )
        .await
        .map_err(|_| OpenError::Unreachable("timed out connecting".into()))?
        .map_err(open_error)?;
        let timeouts = Timeouts::of(&options);
        configure(&mut first, schema.as_deref(), timeouts)
            .await
            .map_err(open_error)?;
        let migrated = migrate::migrate(&mut first, schema.as_deref()).await;
        // The schema the tables are in, which names this store's
        // notifications among those of other stores on the database.
        let current_schema = match &migrated {
            Ok(_) => sqlx::query_scalar::<_, Option<String>>("SELECT current_schema()::TEXT")
                .fetch_one(&mut first)
                .await
                .map_err(open_error)?
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        // Closing politely is a courtesy to the server; a failure to do so
        // changes nothing for us.
        let _ = first.close().await;
        migrated?;

        let pool = PgPoolOptions::new()
            // One more for the notification relay, which keeps its own.
            .max_connections(options.max_connections.max(1).saturating_add(1))
            .min_connections(0)
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _| {
                let schema = schema.clone();
                Box::pin(async move { configure(conn, schema.as_deref(), timeouts).await })
            })
            .connect_lazy_with(connect);

        let (appended, _) = broadcast::channel(SUBSCRIPTION_BUFFER);
        let (alive, dropped) = watch::channel(());
        // Randomly keyed by the standard library (from the OS), so no two
        // stores share one.
        let instance = {
            use std::hash::{BuildHasher as _, Hasher as _};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.finish()
        };
        let (listening, started) = tokio::sync::oneshot::channel();
        tokio::spawn(relay_notifications(
            Relay {
                pool: pool.clone(),
                schema: current_schema,
                instance,
                appended: appended.clone(),
            },
            dropped,
            listening,
        ));
        // Once the relay listens, nothing another node sequences is missed;
        // if it cannot yet, it keeps trying (subscribers poll meanwhile).
        let _ = tokio::time::timeout(options.acquire_timeout, started).await;
        Ok(Self {
            pool,
            appended,
            instance,
            _alive: Arc::new(alive),
        })
    }

    /// The session settings of a pooled connection, read back from the
    /// server (for tests and health checks: a durable store reports
    /// `synchronous_commit` and `fsync` both `on`).
    pub async fn settings(&self) -> Result<SessionSettings, StoreError> {
        const OP: &str = "settings";
        let row = sqlx::query(
            "SELECT current_setting('synchronous_commit') AS synchronous_commit,
                    current_setting('fsync') AS fsync,
                    current_schema()::TEXT AS current_schema,
                    current_setting('idle_in_transaction_session_timeout') AS idle,
                    current_setting('lock_timeout') AS lock_timeout",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| backend(OP, e))?;
        let text = |col: &'static str| {
            row.try_get::<Option<String>, _>(col)
                .map_err(|e| backend(OP, e))
        };
        Ok(SessionSettings {
            synchronous_commit: text("synchronous_commit")?.unwrap_or_default(),
            fsync: text("fsync")?.unwrap_or_default(),
            current_schema: text("current_schema")?,
            idle_in_transaction_session_timeout: text("idle")?.unwrap_or_default(),
            lock_timeout: text("lock_timeout")?.unwrap_or_default(),
        })
    }

    /// The schema version recorded in the database.
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        let mut conn = self
            .pool
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
        self.pool.close().await;
    }

    async fn begin_write(
        &self,
        op: &'static str,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE")
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
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(|e| backend(op, e))
    }
}

/// Accepts a schema name that is a plain lower-case identifier
/// (`[a-z_][a-z0-9_]{0,62}`) and not one PostgreSQL reserves (`pg_…`), so
/// it can be quoted into DDL and `search_path` as it is.
fn check_schema_name(name: &str) -> Result<(), OpenError> {
    let bytes = name.as_bytes();
    let valid = match bytes.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_lowercase() || *first == b'_')
                && rest
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
                && bytes.len() <= MAX_SCHEMA_NAME
                && !name.starts_with("pg_")
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(OpenError::SchemaName(name.into()))
    }
}

/// What `open` reports for a failure to connect or configure.
fn open_error(e: sqlx::Error) -> OpenError {
    match e {
        sqlx::Error::Io(e) => OpenError::Unreachable(e.to_string()),
        sqlx::Error::Tls(e) => OpenError::Unreachable(format!("tls: {e}")),
        sqlx::Error::PoolTimedOut => OpenError::Unreachable("timed out connecting".into()),
        sqlx::Error::Configuration(e) => OpenError::Postgres(e.to_string()),
        e => OpenError::Postgres(backend("open", e).to_string()),
    }
}

/// The session timeouts of [`PostgresOptions`], as `set_config` values.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    idle_in_transaction_ms: u128,
    lock_ms: u128,
}

impl Timeouts {
    fn of(options: &PostgresOptions) -> Self {
        // 0 would mean "no timeout" to PostgreSQL: at least 1 ms.
        Self {
            idle_in_transaction_ms: options.idle_in_transaction_timeout.as_millis().max(1),
            lock_ms: options.lock_timeout.as_millis().max(1),
        }
    }
}

/// Sets up one connection (the first, and every one the pool opens):
/// `synchronous_commit = on`, checked by reading it back, bounds on idle
/// transactions and lock waits ([`PostgresOptions`]) and the store's
/// schema alone on the `search_path`.
async fn configure(
    conn: &mut PgConnection,
    schema: Option<&str>,
    timeouts: Timeouts,
) -> Result<(), sqlx::Error> {
    // On: a COMMIT waits for its WAL to be flushed (and for synchronous
    // standbys, if any). `local` or `off` would acknowledge envelopes a
    // crash can lose; a role or database default is overridden here.
    sqlx::query("SELECT set_config('synchronous_commit', 'on', false)")
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT set_config('idle_in_transaction_session_timeout', $1, false)")
        .bind(format!("{}ms", timeouts.idle_in_transaction_ms))
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT set_config('lock_timeout', $1, false)")
        .bind(format!("{}ms", timeouts.lock_ms))
        .execute(&mut *conn)
        .await?;
    if let Some(schema) = schema {
        // Quoted as an identifier (the name was checked to need no
        // escaping); the schema need not exist yet (`open` creates it).
        sqlx::query("SELECT set_config('search_path', $1, false)")
            .bind(format!("\"{schema}\""))
            .execute(&mut *conn)
            .await?;
    }
    let sync: String = sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
        .fetch_one(&mut *conn)
        .await?;
    if sync != "on" {
        return Err(sqlx::Error::Configuration(
            format!("the connection runs synchronous_commit={sync}; on is required").into(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Row decoding. Every stored value is checked as it is read.

fn blob<'r>(row: &'r PgRow, col: &'static str) -> Result<&'r [u8], StoreError> {
    row.try_get::<&[u8], _>(col)
        .map_err(|_| StoreError::Corrupt(format!("stored {col} is not a bytea")))
}

fn uint(row: &PgRow, col: &'static str) -> Result<u64, StoreError> {
    let v: i64 = row
        .try_get(col)
        .map_err(|_| StoreError::Corrupt(format!("stored {col} is not an integer")))?;
    from_sql(v, col)
}

fn digest(row: &PgRow, col: &'static str) -> Result<Digest, StoreError> {
    Ok(Digest(fixed::<32>(blob(row, col)?, col)?))
}

fn opt_blob<'r>(row: &'r PgRow, col: &'static str) -> Result<Option<&'r [u8]>, StoreError> {
    row.try_get::<Option<&[u8]>, _>(col)
        .map_err(|_| StoreError::Corrupt(format!("stored {col} is not a bytea")))
}

fn opt_uint(row: &PgRow, col: &'static str) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = row
        .try_get(col)
        .map_err(|_| StoreError::Corrupt(format!("stored {col} is not an integer")))?;
    v.map(|v| from_sql(v, col)).transpose()
}

/// A stored BOOLEAN.
fn flag(row: &PgRow, col: &'static str) -> Result<bool, StoreError> {
    row.try_get(col)
        .map_err(|_| StoreError::Corrupt(format!("stored {col} is not a boolean")))
}

fn invitation(row: &PgRow) -> Result<InvitationRecord, StoreError> {
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

fn envelope(talks: TalksId, row: &PgRow) -> Result<StoredEnvelope, StoreError> {
    let body = row
        .try_get::<Option<&[u8]>, _>("body")
        .map_err(|_| StoreError::Corrupt("stored body is not a bytea".into()))?;
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
fn scheduled_row(row: &PgRow) -> Result<ScheduledRecord, StoreError> {
    let kind: Option<i16> = row
        .try_get("gate_kind")
        .map_err(|_| StoreError::Corrupt("stored gate_kind is not a smallint".into()))?;
    let gate = GateColumns {
        kind: kind
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

/// A lease row.
fn lease_row(row: &PgRow) -> Result<Lease, StoreError> {
    Ok(Lease {
        epoch: uint(row, "epoch")?,
        holder: fixed::<16>(blob(row, "holder")?, "lease holder")?,
        expires_ms: uint(row, "expires_ms")?,
    })
}

/// Writes lease `name` as `lease` (its row exists and is locked).
async fn write_lease(
    conn: &mut PgConnection,
    name: LeaseName,
    lease: &Lease,
    op: &'static str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE leases SET epoch = $1, holder = $2, expires_ms = $3 WHERE name = $4")
        .bind(to_sql(lease.epoch, "the lease epoch is out of range")?)
        .bind(lease.holder.as_slice())
        .bind(to_sql(
            lease.expires_ms,
            "the lease expiry is out of range",
        )?)
        .bind(name.as_str())
        .execute(&mut *conn)
        .await
        .map_err(|e| backend(op, e))?;
    Ok(())
}

/// The first key of the advisory lock `schedule` takes, "bc" "sc" in
/// ASCII (see `migrate::MIGRATE_LOCK`); the second is a hash of the schema
/// the tables are in. It serialises `schedule` calls on one schema so that
/// [`MAX_SCHEDULED`] holds across nodes, without holding up stores of
/// other schemas on the same database.
const SCHEDULE_LOCK: i32 = 0x6263_7363;

fn room_state_row(row: &PgRow) -> Result<RoomState, StoreError> {
    Ok(RoomState {
        epoch: uint(row, "epoch")?,
        public_group: blob(row, "public_group")?.to_vec(),
        group_info: blob(row, "group_info")?.to_vec(),
        created_seq: uint(row, "created_seq")?,
    })
}

fn key_package(row: &PgRow) -> Result<KeyPackageRecord, StoreError> {
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

/// How [`head`] reads a talks' log head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadLock {
    /// A plain read.
    None,
    /// `FOR UPDATE`: the sequencing counter, held by `sequence` and
    /// `integrate` until their transaction ends.
    Update,
    /// `FOR SHARE`: keeps `integrate` (and `sequence`) out while a
    /// checkpoint's note is swapped.
    Share,
}

async fn head(
    conn: &mut PgConnection,
    talks: TalksId,
    op: &'static str,
    lock: HeadLock,
) -> Result<Option<Head>, StoreError> {
    let sql = match lock {
        HeadLock::None => {
            "SELECT next_seq, last_time, integrated_size FROM log_heads WHERE talks = $1"
        }
        HeadLock::Update => {
            "SELECT next_seq, last_time, integrated_size FROM log_heads WHERE talks = $1
             FOR UPDATE"
        }
        HeadLock::Share => {
            "SELECT next_seq, last_time, integrated_size FROM log_heads WHERE talks = $1
             FOR SHARE"
        }
    };
    let row = sqlx::query(sql)
        .bind(talks.as_bytes().as_slice())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend(op, e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let head = Head {
        next_seq: uint(&row, "next_seq")?,
        last_time: uint(&row, "last_time")?,
        integrated_size: uint(&row, "integrated_size")?,
    };
    if head.integrated_size > head.next_seq {
        return Err(StoreError::Corrupt(
            "the integrated size exceeds the log size".into(),
        ));
    }
    Ok(Some(head))
}

/// The latest checkpoint of a talks.
async fn latest_checkpoint(
    conn: &mut PgConnection,
    talks: TalksId,
    op: &'static str,
) -> Result<Option<CheckpointRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT size, note FROM checkpoints WHERE talks = $1 ORDER BY size DESC LIMIT 1",
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
fn asked<'a, T>(row: &PgRow, items: &'a [T], op: &str) -> Result<&'a T, StoreError> {
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

/// The envelopes already stored under the idempotency keys of `batch`
/// (read before any of the batch is written): one statement over arrays
/// of the keys (`UNNEST`) rather than one round trip per submission.
async fn by_idempotency_keys(
    conn: &mut PgConnection,
    batch: &[Submission],
) -> Result<HashMap<(TalksId, KeyId, [u8; 16]), Original>, StoreError> {
    // Distinct keys, in order of first appearance.
    let mut seen: HashSet<(TalksId, KeyId, [u8; 16])> = HashSet::with_capacity(batch.len());
    let keys: Vec<&Submission> = batch
        .iter()
        .filter(|s| seen.insert((s.talks, s.sender, s.idempotency_key)))
        .collect();
    let mut found = HashMap::new();
    if keys.is_empty() {
        return Ok(found);
    }
    let n: Vec<i64> = (0..keys.len() as i64).collect();
    let talks: Vec<&[u8]> = keys.iter().map(|s| s.talks.as_bytes().as_slice()).collect();
    let senders: Vec<&[u8]> = keys
        .iter()
        .map(|s| s.sender.as_bytes().as_slice())
        .collect();
    let idempotency: Vec<&[u8]> = keys.iter().map(|s| s.idempotency_key.as_slice()).collect();
    let rows = sqlx::query(
        "SELECT k.n, e.seq, e.node_time, e.header_hash, e.leaf_hash, e.receipt
           FROM UNNEST($1::int8[], $2::bytea[], $3::bytea[], $4::bytea[])
                AS k(n, talks, sender, idempotency_key)
           JOIN envelopes e
             ON e.talks = k.talks AND e.sender = k.sender
            AND e.idempotency_key = k.idempotency_key",
    )
    .bind(&n)
    .bind(&talks)
    .bind(&senders)
    .bind(&idempotency)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| backend("sequence", e))?;
    for row in rows {
        let sub = asked(&row, &keys, "sequence")?;
        found.insert(
            (sub.talks, sub.sender, sub.idempotency_key),
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
    Ok(found)
}

/// Writes the batch's new envelopes in one statement over arrays of their
/// columns (`UNNEST`).
async fn insert_envelopes(
    tx: &mut PgConnection,
    batch: &[Submission],
    fresh: &[Fresh],
    placements: &[Placement],
) -> Result<(), StoreError> {
    const OP: &str = "sequence";
    let subs: Vec<&Submission> = fresh.iter().map(|f| &batch[f.submission]).collect();
    let talks: Vec<&[u8]> = fresh
        .iter()
        .map(|f| f.record.talks.as_bytes().as_slice())
        .collect();
    let seqs: Vec<i64> = fresh
        .iter()
        .map(|f| to_sql(f.record.seq, "the log is full"))
        .collect::<Result<_, _>>()?;
    let times: Vec<i64> = fresh
        .iter()
        .map(|f| {
            to_sql(
                f.record.timestamp_ms,
                "the clock is beyond the storage range",
            )
        })
        .collect::<Result<_, _>>()?;
    let rooms: Vec<&[u8]> = subs.iter().map(|s| s.room.as_bytes().as_slice()).collect();
    let senders: Vec<&[u8]> = subs
        .iter()
        .map(|s| s.sender.as_bytes().as_slice())
        .collect();
    let idempotency: Vec<&[u8]> = subs.iter().map(|s| s.idempotency_key.as_slice()).collect();
    let headers: Vec<&[u8]> = subs.iter().map(|s| s.header.as_slice()).collect();
    let header_hashes: Vec<&[u8]> = subs.iter().map(|s| s.header_hash.0.as_slice()).collect();
    let bodies: Vec<&[u8]> = subs.iter().map(|s| s.body.as_slice()).collect();
    let body_hashes: Vec<&[u8]> = subs.iter().map(|s| s.body_hash.0.as_slice()).collect();
    let leaf_hashes: Vec<&[u8]> = fresh
        .iter()
        .map(|f| f.record.leaf_hash.0.as_slice())
        .collect();
    let receipts: Vec<&[u8]> = placements.iter().map(|p| p.receipt.as_slice()).collect();
    let welcome_to: Vec<Option<Vec<u8>>> = subs
        .iter()
        .map(|s| match &s.gate {
            Some(Gate::Welcome { to, .. }) => Some(key_ids_bytes(to)),
            _ => None,
        })
        .collect();
    sqlx::query(
        "INSERT INTO envelopes (talks, seq, node_time, room, sender, idempotency_key,
                 header, header_hash, body, body_hash, leaf_hash, receipt, welcome_to)
         SELECT * FROM UNNEST($1::bytea[], $2::int8[], $3::int8[], $4::bytea[], $5::bytea[],
                 $6::bytea[], $7::bytea[], $8::bytea[], $9::bytea[], $10::bytea[],
                 $11::bytea[], $12::bytea[], $13::bytea[])",
    )
    .bind(&talks)
    .bind(&seqs)
    .bind(&times)
    .bind(&rooms)
    .bind(&senders)
    .bind(&idempotency)
    .bind(&headers)
    .bind(&header_hashes)
    .bind(&bodies)
    .bind(&body_hashes)
    .bind(&leaf_hashes)
    .bind(&receipts)
    .bind(&welcome_to)
    .execute(&mut *tx)
    .await
    .map_err(|e| {
        // The idempotency keys were looked up under the head locks, so
        // only the (talks, seq) key can collide: a head behind its rows.
        if is_unique_violation(&e) {
            StoreError::Corrupt("the log head is behind its envelopes".into())
        } else {
            backend(OP, e)
        }
    })?;
    Ok(())
}

/// A room's MLS state, read in the caller's transaction.
async fn room_state(
    conn: &mut PgConnection,
    talks: TalksId,
    room: RoomId,
    op: &'static str,
) -> Result<Option<RoomState>, StoreError> {
    let row = sqlx::query(
        "SELECT epoch, public_group, group_info, created_seq FROM room_state
         WHERE talks = $1 AND room = $2",
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
    conn: &mut PgConnection,
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
        "SELECT seq, header_hash FROM room_commits WHERE talks = $1 AND room = $2 AND epoch = $3",
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

/// Locks the talks row (`FOR NO KEY UPDATE`: the talks lock, which the
/// key-share locks of foreign-key checks do not wait for) until the caller's
/// transaction ends; `false` for an unknown talks. It serialises the writes
/// of one talks that check a per-talks or per-device limit before writing
/// (invitations, blobs and their quota, key packages and claims).
async fn lock_talks(
    conn: &mut PgConnection,
    talks: TalksId,
    op: &'static str,
) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 FROM talks WHERE talks = $1 FOR NO KEY UPDATE")
        .bind(talks.as_bytes().as_slice())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend(op, e))?;
    Ok(row.is_some())
}

/// Whether the talks exists.
async fn talks_exists(
    conn: &mut PgConnection,
    talks: TalksId,
    op: &'static str,
) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 FROM talks WHERE talks = $1")
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
    tx: &mut PgConnection,
    talks: TalksId,
    expected: Digest,
    next: &AccessListRecord,
    op: &'static str,
) -> Result<(), StoreError> {
    let id = talks.as_bytes().as_slice();
    let next_version = to_sql(next.version, "the access list version is out of range")?;
    // Locked until the caller's transaction ends: the compare and the swap
    // are one step, and a pending change cannot slip in between.
    let row = sqlx::query("SELECT hash, version FROM access_lists WHERE talks = $1 FOR UPDATE")
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
    sqlx::query("UPDATE access_lists SET version = $1, hash = $2, bytes = $3 WHERE talks = $4")
        .bind(next_version)
        .bind(next.hash.0.as_slice())
        .bind(next.bytes.as_slice())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(op, e))?;
    sqlx::query("DELETE FROM pending_changes WHERE talks = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(op, e))?;
    Ok(())
}

/// A blob's record with its rooms, read in the caller's transaction.
async fn blob_record(
    conn: &mut PgConnection,
    talks: TalksId,
    hash: Digest,
    op: &'static str,
) -> Result<Option<BlobRecord>, StoreError> {
    let id = talks.as_bytes().as_slice();
    let row = sqlx::query(
        "SELECT size, party, uploader, created_at, complete FROM blobs
         WHERE talks = $1 AND hash = $2",
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
        sqlx::query("SELECT room FROM blob_rooms WHERE talks = $1 AND hash = $2 ORDER BY room")
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
///
/// `sql` selects `size` and `complete` of the blob `($1, $2)` and locks its
/// row: [`BLOB_FOR_SHARE`] for a chunk write, [`BLOB_FOR_UPDATE`] for
/// completion, so no chunk changes while a blob is being completed.
async fn blob_state(
    conn: &mut PgConnection,
    talks: TalksId,
    hash: Digest,
    op: &'static str,
    unknown: &'static str,
    sql: &'static str,
) -> Result<(u64, bool), StoreError> {
    let row = sqlx::query(sql)
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

/// The blob row for a chunk write (see [`blob_state`]).
const BLOB_FOR_SHARE: &str =
    "SELECT size, complete FROM blobs WHERE talks = $1 AND hash = $2 FOR SHARE";
/// The blob row for its completion (see [`blob_state`]).
const BLOB_FOR_UPDATE: &str =
    "SELECT size, complete FROM blobs WHERE talks = $1 AND hash = $2 FOR NO KEY UPDATE";

/// A count from `SELECT COUNT(*)`.
async fn count(
    conn: &mut PgConnection,
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
    conn: &mut PgConnection,
    (talks, room): (TalksId, RoomId),
    state: &RoomState,
    commits: &[(u64, RoomCommit)],
) -> Result<(), StoreError> {
    const OP: &str = "sequence";
    let id = talks.as_bytes().as_slice();
    let room_id = room.as_bytes().as_slice();
    sqlx::query(
        "INSERT INTO room_state (talks, room, epoch, public_group, group_info, created_seq)
         VALUES ($1, $2, $3, $4, $5, $6)
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
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(room_id)
        .bind(to_sql(*epoch, "the epoch is out of range")?)
        .bind(to_sql(c.seq, "the log is full")?)
        .bind(c.header_hash.0.as_slice())
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            // The epoch's commit was looked up above in this transaction,
            // under the talks' head lock.
            if is_unique_violation(&e) {
                StoreError::Corrupt("a room's commits disagree with its state".into())
            } else {
                backend(OP, e)
            }
        })?;
    }
    Ok(())
}

/// The log heads of `talks` (distinct, sorted), locked `FOR UPDATE` in
/// that order until the transaction ends, in one statement. A talks with
/// no head is not in the map.
async fn locked_heads(
    conn: &mut PgConnection,
    talks: &[TalksId],
    op: &'static str,
) -> Result<HashMap<TalksId, Head>, StoreError> {
    let n: Vec<i64> = (0..talks.len() as i64).collect();
    let ids: Vec<&[u8]> = talks.iter().map(|t| t.as_bytes().as_slice()).collect();
    let rows = sqlx::query(
        "SELECT k.n, h.next_seq, h.last_time, h.integrated_size
           FROM log_heads h JOIN UNNEST($1::int8[], $2::bytea[]) AS k(n, talks)
             ON h.talks = k.talks
          ORDER BY h.talks
            FOR UPDATE OF h",
    )
    .bind(&n)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| backend(op, e))?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let t = asked(&row, talks, op)?;
        let head = Head {
            next_seq: uint(&row, "next_seq")?,
            last_time: uint(&row, "last_time")?,
            integrated_size: uint(&row, "integrated_size")?,
        };
        if head.integrated_size > head.next_seq {
            return Err(StoreError::Corrupt(
                "the integrated size exceeds the log size".into(),
            ));
        }
        found.insert(*t, head);
    }
    Ok(found)
}

/// The access lists' versions of `talks` (distinct, sorted), locked `FOR
/// SHARE` in that order until the transaction ends, in one statement. A
/// talks with no list is not in the map.
async fn shared_access_versions(
    conn: &mut PgConnection,
    talks: &[TalksId],
    op: &'static str,
) -> Result<HashMap<TalksId, u64>, StoreError> {
    let mut found = HashMap::with_capacity(talks.len());
    if talks.is_empty() {
        return Ok(found);
    }
    let n: Vec<i64> = (0..talks.len() as i64).collect();
    let ids: Vec<&[u8]> = talks.iter().map(|t| t.as_bytes().as_slice()).collect();
    let rows = sqlx::query(
        "SELECT k.n, a.version
           FROM access_lists a JOIN UNNEST($1::int8[], $2::bytea[]) AS k(n, talks)
             ON a.talks = k.talks
          ORDER BY a.talks
            FOR SHARE OF a",
    )
    .bind(&n)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| backend(op, e))?;
    for row in rows {
        let t = asked(&row, talks, op)?;
        found.insert(*t, uint(&row, "version")?);
    }
    Ok(found)
}

/// The MLS states of `rooms` (distinct), in one statement, read in the
/// caller's transaction. A room with no state is not in the map.
async fn room_states(
    conn: &mut PgConnection,
    rooms: &[(TalksId, RoomId)],
    op: &'static str,
) -> Result<HashMap<(TalksId, RoomId), RoomState>, StoreError> {
    let mut found = HashMap::with_capacity(rooms.len());
    if rooms.is_empty() {
        return Ok(found);
    }
    let n: Vec<i64> = (0..rooms.len() as i64).collect();
    let talks: Vec<&[u8]> = rooms.iter().map(|(t, _)| t.as_bytes().as_slice()).collect();
    let ids: Vec<&[u8]> = rooms.iter().map(|(_, r)| r.as_bytes().as_slice()).collect();
    let rows = sqlx::query(
        "SELECT k.n, r.epoch, r.public_group, r.group_info, r.created_seq
           FROM UNNEST($1::int8[], $2::bytea[], $3::bytea[]) AS k(n, talks, room)
           JOIN room_state r ON r.talks = k.talks AND r.room = k.room",
    )
    .bind(&n)
    .bind(&talks)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| backend(op, e))?;
    for row in rows {
        let k = asked(&row, rooms, op)?;
        found.insert(*k, room_state_row(&row)?);
    }
    Ok(found)
}

/// Moves the log heads of `heads` (talks, next seq, last time; distinct
/// talks, each locked by this transaction) in one statement, and queues
/// one notification per talks for the other nodes on this database, in
/// order, in another: they learn of it at the commit (a notification is
/// delivered only if the transaction commits, in commit order):
/// `relay_notifications`.
async fn update_heads(
    conn: &mut PgConnection,
    heads: &[(TalksId, u64, u64)],
    instance: u64,
    op: &'static str,
) -> Result<(), StoreError> {
    if heads.is_empty() {
        return Ok(());
    }
    let ids: Vec<&[u8]> = heads
        .iter()
        .map(|(t, _, _)| t.as_bytes().as_slice())
        .collect();
    let next: Vec<i64> = heads
        .iter()
        .map(|(_, n, _)| to_sql(*n, "the log is full"))
        .collect::<Result<_, _>>()?;
    let last: Vec<i64> = heads
        .iter()
        .map(|(_, _, t)| to_sql(*t, "the clock is beyond the storage range"))
        .collect::<Result<_, _>>()?;
    let done = sqlx::query(
        "UPDATE log_heads h SET next_seq = v.next_seq, last_time = v.last_time
           FROM UNNEST($1::bytea[], $2::int8[], $3::int8[]) AS v(talks, next_seq, last_time)
          WHERE h.talks = v.talks",
    )
    .bind(&ids)
    .bind(&next)
    .bind(&last)
    .execute(&mut *conn)
    .await
    .map_err(|e| backend(op, e))?;
    if done.rows_affected() != heads.len() as u64 {
        return Err(StoreError::Backend(format!(
            "{op}: a log head locked by this transaction is gone"
        )));
    }
    let payloads: Vec<String> = heads
        .iter()
        .map(|(t, next, _)| format!("{:016x} {} {}", instance, t.to_hex(), next))
        .collect();
    sqlx::query(
        "SELECT pg_notify($1, current_schema() || ' ' || u.p)
           FROM UNNEST($2::text[]) WITH ORDINALITY AS u(p, i)
          ORDER BY u.i",
    )
    .bind(NOTIFY_CHANNEL)
    .bind(&payloads)
    .execute(&mut *conn)
    .await
    .map_err(|e| backend(op, e))?;
    Ok(())
}

/// The sequencing of [`Store::sequence`] and [`Store::fire_due`], inside
/// the caller's write transaction (which the caller commits): locks the
/// heads of the batch's talks, then the idempotency lookups, gates, seqs,
/// one signed receipt batch, the envelopes, room states, log heads and
/// their `NOTIFY` (as store `instance`). Returns the outcomes, in batch
/// order, and the growth to announce once committed (empty: nothing new
/// was written).
async fn sequence_in(
    tx: &mut PgConnection,
    batch: &[Submission],
    clock_ms: u64,
    log_key: &(dyn Signer + Sync),
    instance: u64,
) -> Result<(Vec<Outcome>, Vec<Appended>), StoreError> {
    const OP: &str = "sequence";

    // The heads of every talks of the batch, locked in talks id order
    // (so two batches sharing talks cannot deadlock) until COMMIT: from
    // here on no other connection sequences into these talks, and
    // everything read below (idempotency keys, room state, commits) is
    // what the previous holder of the lock committed.
    // One statement for them all: the rows are locked as the sort
    // returns them, in talks order.
    let mut ids: Vec<TalksId> = batch.iter().map(|s| s.talks).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut heads = locked_heads(&mut *tx, &ids, OP).await?;
    if heads.len() != ids.len() {
        return Err(StoreError::UnknownTalks);
    }
    // The access lists' versions of the talks whose submissions name one,
    // locked `FOR SHARE` (after the heads, in the same order) until
    // COMMIT: a replacement, which locks the list `FOR UPDATE`, waits for
    // this batch, and a replacement that committed first is what is read.
    let listed: Vec<TalksId> = ids
        .iter()
        .copied()
        .filter(|t| {
            batch
                .iter()
                .any(|s| s.talks == *t && s.access_version.is_some())
        })
        .collect();
    let access = shared_access_versions(&mut *tx, &listed, OP).await?;
    if access.len() != listed.len() {
        return Err(StoreError::UnknownTalks);
    }

    // The talks touched, in order of first appearance (the order of the
    // notifications), with their stored next seq.
    let mut order: Vec<(TalksId, u64)> = Vec::new();
    let mut ordered: HashSet<TalksId> = HashSet::new();
    let mut pending: HashMap<(TalksId, KeyId, [u8; 16]), usize> = HashMap::new();
    let mut fresh: Vec<Fresh> = Vec::new();
    let mut slots: Vec<Slot> = Vec::with_capacity(batch.len());
    // Rooms gated in this batch, in order of first appearance.
    let mut rooms: HashMap<(TalksId, RoomId), RoomPlan> = HashMap::new();
    let mut room_order: Vec<(TalksId, RoomId)> = Vec::new();

    // Every idempotency key of the batch looked up at once, under the
    // head locks and before anything of the batch is written.
    let stored = by_idempotency_keys(&mut *tx, batch).await?;
    // And the state of every room a submission is gated on, at once.
    let mut rooms_seen = HashSet::new();
    let gated: Vec<(TalksId, RoomId)> = batch
        .iter()
        .filter(|s| s.gate.is_some())
        .map(|s| (s.talks, s.room))
        .filter(|k| rooms_seen.insert(*k))
        .collect();
    let mut read_rooms = room_states(&mut *tx, &gated, OP).await?;

    for (i, sub) in batch.iter().enumerate() {
        if ordered.insert(sub.talks) {
            let Some(h) = heads.get(&sub.talks) else {
                // Every talks of the batch was locked above.
                return Err(StoreError::Backend("sequence: lost a log head".into()));
            };
            order.push((sub.talks, h.next_seq));
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
        update_heads(&mut *tx, &moved, instance, OP).await?;
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

async fn commit(tx: Transaction<'static, Postgres>, op: &'static str) -> Result<(), StoreError> {
    tx.commit().await.map_err(|e| backend(op, e))
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

impl Store for PostgresStore {
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
        // A concurrent creator of the same id waits for ours to commit or
        // roll back, then inserts nothing: either way one wins.
        let inserted = sqlx::query(
            "INSERT INTO talks (talks, creator, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (talks) DO NOTHING",
        )
        .bind(id)
        .bind(talks.creator.as_bytes().as_slice())
        .bind(created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        if inserted.rows_affected() != 1 {
            return Err(StoreError::TalksExists);
        }
        sqlx::query(
            "INSERT INTO access_lists (talks, version, hash, bytes) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(version)
        .bind(access_list.hash.0.as_slice())
        .bind(access_list.bytes.as_slice())
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        sqlx::query(
            "INSERT INTO log_heads (talks, next_seq, last_time, integrated_size)
             VALUES ($1, 0, 0, 0)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        commit(tx, OP).await
    }

    async fn talks(&self, talks: TalksId) -> Result<Option<TalksRecord>, StoreError> {
        const OP: &str = "read talks";
        let row = sqlx::query("SELECT creator, created_at FROM talks WHERE talks = $1")
            .bind(talks.as_bytes().as_slice())
            .fetch_optional(&self.pool)
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
        let row = sqlx::query("SELECT bytes, hash, version FROM access_lists WHERE talks = $1")
            .bind(talks.as_bytes().as_slice())
            .fetch_optional(&self.pool)
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
        // nothing of the batch is written unless COMMIT succeeds, and the
        // counters roll back with the envelopes (seqs stay dense).
        let mut tx = self.begin_write(OP).await?;
        let (outcomes, appended) =
            sequence_in(&mut tx, &batch, clock_ms, log_key, self.instance).await?;
        if !appended.is_empty() {
            // Durable here (WAL flushed, synchronous_commit=on): only now
            // may the node acknowledge, and subscribers be woken.
            commit(tx, OP).await?;
            self.notify(&appended);
        }
        // (With nothing new, `tx` is dropped here: a rollback of a
        // transaction that wrote nothing, which releases the head locks.)
        Ok(outcomes)
    }

    async fn log_size(&self, talks: TalksId) -> Result<u64, StoreError> {
        const OP: &str = "log size";
        let mut conn = self.pool.acquire().await.map_err(|e| backend(OP, e))?;
        Ok(head(&mut conn, talks, OP, HeadLock::None)
            .await?
            .map_or(0, |h| h.next_seq))
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
        let Some(h) = head(&mut tx, talks, OP, HeadLock::None).await? else {
            return Ok(Vec::new());
        };
        let want = h.next_seq.saturating_sub(from).min(limit as u64);
        // First the sizes only (`octet_length` of an out-of-line value reads
        // its TOAST pointer, not its content), to find how many rows fit in
        // `MAX_READ_BYTES` without loading bodies that would not be sent.
        let sizes = sqlx::query(
            "SELECT seq,
                    octet_length(header)::BIGINT + COALESCE(octet_length(body), 0)::BIGINT
                        AS bytes
             FROM envelopes WHERE talks = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
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
             FROM envelopes WHERE talks = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
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
             FROM envelopes WHERE talks = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(from_sql_value)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
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
            "UPDATE envelopes SET body = NULL WHERE talks = $1 AND seq = $2 AND body IS NOT NULL",
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
        let mut conn = self.pool.acquire().await.map_err(|e| backend(OP, e))?;
        Ok(head(&mut conn, talks, OP, HeadLock::None)
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
        let integrated = head(&mut tx, talks, OP, HeadLock::None)
            .await?
            .map_or(0, |h| h.integrated_size);
        let stored = tlog_tiles::stored_hash_count(integrated);
        if indexes.iter().any(|&i| i >= stored) {
            return Err(StoreError::Limit(
                "tree_hashes: a hash at or beyond the integrated tree was asked for",
            ));
        }
        // One round trip for the whole call. An index past i64::MAX (a tree
        // of over 2^62 leaves) can never have been stored (`integrate`
        // refuses it), so it is left out and found missing below.
        let wanted: Vec<i64> = indexes
            .iter()
            .filter_map(|&i| i64::try_from(i).ok())
            .collect();
        let rows =
            sqlx::query("SELECT idx, hash FROM tree_hashes WHERE talks = $1 AND idx = ANY($2)")
                .bind(talks.as_bytes().as_slice())
                .bind(wanted)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| backend(OP, e))?;
        commit(tx, OP).await?;
        let mut found: HashMap<u64, Digest> = HashMap::with_capacity(rows.len());
        for row in &rows {
            found.insert(uint(row, "idx")?, digest(row, "hash")?);
        }
        indexes
            .iter()
            .map(|i| {
                // Below the integrated tree, a missing hash is a hole:
                // corruption.
                found.get(i).copied().ok_or(StoreError::Corrupt(
                    "a tree hash is missing below the integrated size".into(),
                ))
            })
            .collect()
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
        let mut tx = self.begin_write(OP).await?;
        // The lease row first, before any log head: every transaction that
        // locks both takes this one first (and `sequence` never takes it),
        // so no lock cycle exists. `FOR SHARE`, not `FOR KEY SHARE`: an
        // `acquire_lease` moving the epoch (an UPDATE of a non-key column)
        // waits for this transaction, or it committed and we read its
        // epoch here.
        if let Some(fence) = fence {
            let row = sqlx::query("SELECT epoch FROM leases WHERE name = $1 FOR SHARE")
                .bind(fence.name.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| backend(OP, e))?;
            let epoch = row.map(|r| uint(&r, "epoch")).transpose()?;
            backchannel_store::check_fence(fence, epoch)?;
        }
        // The head locked until COMMIT: the fence on `from` holds against a
        // concurrent integrator, and sequencing waits (briefly).
        let Some(h) = head(&mut tx, talks, OP, HeadLock::Update).await? else {
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
            let exists = sqlx::query("SELECT 1 FROM checkpoints WHERE talks = $1 LIMIT 1")
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
        // All the hashes in one statement, as two parallel arrays.
        let indexes = hashes
            .iter()
            .map(|(index, _)| to_sql(*index, "a tree hash index is out of range"))
            .collect::<Result<Vec<i64>, StoreError>>()?;
        let values: Vec<&[u8]> = hashes.iter().map(|(_, hash)| hash.0.as_slice()).collect();
        sqlx::query(
            "INSERT INTO tree_hashes (talks, idx, hash)
             SELECT $1, idx, hash FROM UNNEST($2::BIGINT[], $3::BYTEA[]) AS h (idx, hash)",
        )
        .bind(id)
        .bind(indexes)
        .bind(values)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        // A size integrates once (from == to only for a first, empty
        // checkpoint), so this never replaces a note and its cosignatures.
        let lease_epoch = fence
            .map(|f| to_sql(f.epoch, "the lease epoch is out of range"))
            .transpose()?;
        sqlx::query(
            "INSERT INTO checkpoints (talks, size, note, lease_epoch) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(to_sql(to, "the log is full")?)
        .bind(checkpoint.note.as_slice())
        .bind(lease_epoch)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        sqlx::query("UPDATE log_heads SET integrated_size = $1 WHERE talks = $2")
            .bind(to_sql(to, "the log is full")?)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        commit(tx, OP).await
    }

    async fn checkpoint(&self, talks: TalksId) -> Result<Option<CheckpointRecord>, StoreError> {
        const OP: &str = "read checkpoint";
        let mut conn = self.pool.acquire().await.map_err(|e| backend(OP, e))?;
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
        // Shared: no integration can add a newer checkpoint until COMMIT, so
        // "still the latest" holds; two swappers of one note are decided by
        // the compare in the UPDATE below.
        if head(&mut tx, talks, OP, HeadLock::Share).await?.is_none() {
            return Err(StoreError::UnknownTalks);
        }
        let Some(latest) = latest_checkpoint(&mut tx, talks, OP).await? else {
            return Err(StoreError::Stale);
        };
        if latest.size != size || latest.note != expected {
            return Err(StoreError::Stale);
        }
        // The compare again in the UPDATE: a concurrent swap of the same
        // note that committed first makes this one update nothing (READ
        // COMMITTED re-checks the WHERE clause on the row it waited for).
        let swapped = sqlx::query(
            "UPDATE checkpoints SET note = $1 WHERE talks = $2 AND size = $3 AND note = $4",
        )
        .bind(note)
        .bind(talks.as_bytes().as_slice())
        .bind(to_sql(size, "the log is full")?)
        .bind(expected)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        if swapped.rows_affected() != 1 {
            return Err(StoreError::Stale);
        }
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
        .fetch_one(&self.pool)
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
             ORDER BY talks LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
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
        // The talks lock: the count below and the insert are one step.
        if !lock_talks(&mut tx, talks, OP).await? {
            return Err(StoreError::UnknownTalks);
        }
        let taken = sqlx::query("SELECT 1 FROM invitations WHERE talks = $1 AND token_hash = $2")
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
            "SELECT COUNT(*) FROM invitations WHERE talks = $1",
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
             VALUES ($1, $2, $3, $4, $5, $6)",
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
             FROM invitations WHERE talks = $1 AND token_hash = $2",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(token_hash.0.as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| backend(OP, e))?;
        row.as_ref().map(invitation).transpose()
    }

    async fn invitations(&self, talks: TalksId) -> Result<Vec<InvitationRecord>, StoreError> {
        const OP: &str = "read invitations";
        let rows = sqlx::query(
            "SELECT token_hash, party, expires_at, invitation, created_at,
                    redeemed_key, redeemed_at, payload
             FROM invitations WHERE talks = $1 ORDER BY token_hash LIMIT $2",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(MAX_INVITATIONS as i64)
        .fetch_all(&self.pool)
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
            "UPDATE invitations SET redeemed_key = $1, redeemed_at = $2, payload = $3
             WHERE talks = $4 AND token_hash = $5 AND redeemed_key IS NULL",
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
            "SELECT delta_hash, change FROM pending_changes WHERE talks = $1
             ORDER BY delta_hash LIMIT $2",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(MAX_PENDING_CHANGES as i64)
        .fetch_all(&self.pool)
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
        // The access list's row locked until COMMIT, as a swap locks it: a
        // change is never stored against a list being replaced (which drops
        // every pending change), and changes of one talks are written one
        // at a time (the compare, the count and the write are one step).
        let row = sqlx::query("SELECT hash FROM access_lists WHERE talks = $1 FOR UPDATE")
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
            sqlx::query("SELECT change FROM pending_changes WHERE talks = $1 AND delta_hash = $2")
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
            sqlx::query(
                "UPDATE pending_changes SET change = $1 WHERE talks = $2 AND delta_hash = $3",
            )
            .bind(change.change.as_slice())
            .bind(id)
            .bind(delta)
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        } else {
            let held = count(
                &mut tx,
                "SELECT COUNT(*) FROM pending_changes WHERE talks = $1",
                &[id],
                OP,
            )
            .await?;
            if held >= MAX_PENDING_CHANGES as u64 {
                return Err(StoreError::Limit(
                    "a talks holds at most MAX_PENDING_CHANGES pending changes",
                ));
            }
            sqlx::query(
                "INSERT INTO pending_changes (talks, delta_hash, change) VALUES ($1, $2, $3)",
            )
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
        // The talks lock: a new blob and its quota check are one step, and
        // two uploads of one hash do not both insert it.
        if !lock_talks(&mut tx, talks, OP).await? {
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
            sqlx::query("INSERT INTO blob_rooms (talks, hash, room) VALUES ($1, $2, $3)")
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
        // The quota is checked under the talks lock in the transaction that
        // inserts, so concurrent uploads of one party cannot both fit in its
        // last bytes. (A party's total stays below 2^63, `fits_quota`, so
        // the NUMERIC sum fits a BIGINT.)
        let row = sqlx::query(
            "SELECT COALESCE(SUM(size), 0)::BIGINT AS used FROM blobs
             WHERE talks = $1 AND party = $2",
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
             VALUES ($1, $2, $3, $4, $5, $6, FALSE)",
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
        sqlx::query("INSERT INTO blob_rooms (talks, hash, room) VALUES ($1, $2, $3)")
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
        let (size, complete) = blob_state(
            &mut tx,
            talks,
            hash,
            OP,
            "put_blob_chunk: no such blob",
            BLOB_FOR_SHARE,
        )
        .await?;
        if complete {
            return Err(StoreError::Limit("put_blob_chunk: the blob is complete"));
        }
        backchannel_store::check_blob_chunk(size, index, bytes.len())?;
        sqlx::query(
            "INSERT INTO blob_chunks (talks, hash, idx, bytes) VALUES ($1, $2, $3, $4)
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
        let row = sqlx::query(
            "SELECT bytes FROM blob_chunks WHERE talks = $1 AND hash = $2 AND idx = $3",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(hash.0.as_slice())
        .bind(index)
        .fetch_optional(&self.pool)
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
            sqlx::query("SELECT idx FROM blob_chunks WHERE talks = $1 AND hash = $2 ORDER BY idx")
                .bind(talks.as_bytes().as_slice())
                .bind(hash.0.as_slice())
                .fetch_all(&self.pool)
                .await
                .map_err(|e| backend(OP, e))?;
        rows.iter().map(|row| uint(row, "idx")).collect()
    }

    async fn complete_blob(&self, talks: TalksId, hash: Digest) -> Result<(), StoreError> {
        const OP: &str = "complete blob";
        let mut tx = self.begin_write(OP).await?;
        let (size, complete) = blob_state(
            &mut tx,
            talks,
            hash,
            OP,
            "complete_blob: no such blob",
            BLOB_FOR_UPDATE,
        )
        .await?;
        if complete {
            return Ok(());
        }
        let chunks = BlobRecord::chunk_count(size);
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM blob_chunks WHERE talks = $1 AND hash = $2 AND idx < $3",
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
        sqlx::query("UPDATE blobs SET complete = TRUE WHERE talks = $1 AND hash = $2")
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
        let mut conn = self.pool.acquire().await.map_err(|e| backend(OP, e))?;
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
        // Arguments first: a refused call takes no lock.
        backchannel_store::next_lease(None, holder, now_ms, ttl_ms)?;
        let mut tx = self.begin_write(OP).await?;
        // The row exists from here on (a lease never taken: epoch 0, no
        // holder), so `FOR UPDATE` always has a row to lock and two first
        // takers serialise on it.
        sqlx::query(
            "INSERT INTO leases (name, epoch, holder, expires_ms) VALUES ($1, 0, $2, 0)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name.as_str())
        .bind([0u8; 16].as_slice())
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        let row =
            sqlx::query("SELECT epoch, holder, expires_ms FROM leases WHERE name = $1 FOR UPDATE")
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| backend(OP, e))?;
        let Some(current) = row.as_ref().map(lease_row).transpose()? else {
            return Err(StoreError::Backend(
                "acquire lease: the lease row vanished".into(),
            ));
        };
        let Some(next) = backchannel_store::next_lease(Some(current), holder, now_ms, ttl_ms)?
        else {
            // Another holder's unexpired lease stands (`tx` rolls back).
            return Ok(current);
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
        let row =
            sqlx::query("SELECT epoch, holder, expires_ms FROM leases WHERE name = $1 FOR UPDATE")
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| backend(OP, e))?;
        let Some(current) = row
            .as_ref()
            .map(lease_row)
            .transpose()?
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
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()::TEXT))")
            .bind(SCHEDULE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
        if !talks_exists(&mut tx, sub.talks, OP).await? {
            return Err(StoreError::UnknownTalks);
        }
        let taken = sqlx::query("SELECT 1 FROM scheduled WHERE id = $1")
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
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
        .bind(gate.kind.map(i16::from))
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
        .map_err(|e| {
            // Looked up above under the advisory lock: only a concurrent
            // schedule outside it (none) could collide.
            if is_unique_violation(&e) {
                StoreError::Exists
            } else {
                backend(OP, e)
            }
        })?;
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
        // Nothing due (nearly always): one read answers it, without a
        // transaction, every tick of every node.
        let any_due = sqlx::query("SELECT 1 FROM scheduled WHERE due_ms <= $1 LIMIT 1")
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| backend(OP, e))?
            .is_some();
        if !any_due {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write(OP).await?;
        // The claim: due rows locked until COMMIT; rows another caller is
        // firing right now are skipped, not waited for (and are gone once
        // it commits), so every row fires once across every node. The head
        // locks `sequence_in` takes next come after these rows' locks,
        // which no other transaction takes before a head lock.
        let due = sqlx::query(
            "SELECT id, due_ms, talks, room, sender, idempotency_key, header, header_hash,
                 body, body_hash, gate_kind, gate_epoch, gate_public_group, gate_group_info,
                 gate_commit, gate_to
             FROM scheduled WHERE due_ms <= $1 ORDER BY due_ms, id LIMIT $2
             FOR UPDATE SKIP LOCKED",
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
        let (outcomes, appended) =
            sequence_in(&mut tx, &batch, now_ms, log_key, self.instance).await?;
        let id_bytes: Vec<&[u8]> = ids.iter().map(|id| id.as_slice()).collect();
        sqlx::query("DELETE FROM scheduled WHERE id = ANY($1)")
            .bind(id_bytes)
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(OP, e))?;
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
        let mut conn = self.pool.acquire().await.map_err(|e| backend(OP, e))?;
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
        // The talks lock: the device's count and the inserts are one step.
        if !lock_talks(&mut tx, talks, OP).await? {
            return Err(StoreError::UnknownTalks);
        }
        let rows = sqlx::query(
            "SELECT reference, last_resort FROM key_packages WHERE talks = $1 AND device = $2",
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
                "DELETE FROM key_packages WHERE talks = $1 AND device = $2 AND last_resort",
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
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(dev)
            .bind(p.reference.as_slice())
            .bind(p.bytes.as_slice())
            .bind(to_sql(p.not_after, "times are below 2^63")?)
            .bind(p.last_resort)
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
        // The talks lock: the claim counter, the choice of a package and its
        // deletion are one step, so no package is handed out twice and the
        // claim limit holds across connections.
        if !lock_talks(&mut tx, talks, OP).await? {
            return Err(StoreError::UnknownTalks);
        }
        let row = sqlx::query(
            "SELECT window_start, claims FROM key_package_claims
             WHERE talks = $1 AND claimer = $2 AND device = $3",
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
             VALUES ($1, $2, $3, $4, $5)
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
        sqlx::query("DELETE FROM key_packages WHERE talks = $1 AND device = $2 AND not_after < $3")
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
             WHERE talks = $1 AND device = $2 ORDER BY last_resort, reference LIMIT 1",
        )
        .bind(id)
        .bind(dev)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| backend(OP, e))?;
        let claimed = row.as_ref().map(key_package).transpose()?;
        if let Some(p) = claimed.as_ref().filter(|p| !p.last_resort) {
            sqlx::query(
                "DELETE FROM key_packages WHERE talks = $1 AND device = $2 AND reference = $3",
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
             WHERE talks = $1 AND device = $2 AND NOT last_resort AND not_after >= $3",
        )
        .bind(talks.as_bytes().as_slice())
        .bind(device.as_bytes().as_slice())
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| backend(OP, e))?;
        uint(&row, "n")
    }
}
