//! Versioned schema migrations.
//!
//! Each migration is an SQL file under `migrations/`, embedded at compile
//! time, applied in order in one transaction together with its row in
//! `schema_migrations` (PostgreSQL's DDL is transactional): after a crash a
//! migration is either wholly applied and recorded or not at all. The
//! transaction first takes a transaction-scoped advisory lock named after
//! the store's schema, so nodes starting at once against one database
//! migrate it once: the others wait, then find it migrated. The database's
//! schema version is the largest recorded version; a database with a
//! version this code does not know is refused before anything is written,
//! so an older node never writes into a schema it does not understand.

use sqlx::{Connection, PgConnection, Row};

use crate::OpenError;

/// One migration: its version (1, 2, … without gaps), a name and its SQL.
struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, in order. Append only: a released migration never
/// changes (a database that ran it would differ from one created later).
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "leases_scheduled",
        sql: include_str!("../migrations/0002_leases_scheduled.sql"),
    },
];

/// The schema version this code migrates to (the last migration's). The
/// PostgreSQL schema is versioned on its own: version 1 held the whole of
/// storage contract version 3, version 2 adds contract version 4 (leases,
/// scheduled submissions, fenced checkpoints).
pub const SCHEMA_VERSION: u32 = 2;

const _: () = assert!(MIGRATIONS.len() as u32 == SCHEMA_VERSION);

/// The first key of the advisory lock `migrate` takes (the second is the
/// hash of the schema's name): an arbitrary constant, "bc" "mg" in ASCII,
/// so the lock does not collide with advisory locks other applications
/// sharing the database take under other keys.
const MIGRATE_LOCK: i32 = 0x6263_6d67;

/// The bookkeeping table, created before anything else (not a migration, so
/// that its absence means "version 0").
const CREATE_VERSIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER NOT NULL PRIMARY KEY,
    name    TEXT    NOT NULL
)";

fn sql_err(e: sqlx::Error) -> OpenError {
    OpenError::Postgres(crate::error::backend("migrate", e).to_string())
}

/// Brings the store's schema to [`SCHEMA_VERSION`], creating `schema` first
/// if it is given and missing, or refuses it if it is newer. Returns the
/// version found before migrating. `conn` already has its `search_path`
/// set to `schema`.
pub(crate) async fn migrate(
    conn: &mut PgConnection,
    schema: Option<&str>,
) -> Result<u32, OpenError> {
    let mut tx = conn
        .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
        .await
        .map_err(sql_err)?;
    // Held until COMMIT or ROLLBACK: one migrator per schema at a time.
    // Without a configured schema, the one the tables land in.
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext(COALESCE($2::TEXT, current_schema()::TEXT, '')))")
        .bind(MIGRATE_LOCK)
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;
    if let Some(schema) = schema {
        // Under the lock, so two nodes do not race to create it (a race
        // that `IF NOT EXISTS` alone does not prevent). The name was
        // validated as a plain identifier, so quoting it is enough.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
        )))
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;
    }
    sqlx::query(CREATE_VERSIONS)
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;
    let found = current_version(&mut tx).await?;
    if found > SCHEMA_VERSION {
        // Dropping `tx` rolls back (nothing was changed anyway: the schema
        // and the versions table existed, or the version would be 0).
        return Err(OpenError::NewerSchema {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        sqlx::raw_sql(m.sql)
            .execute(&mut *tx)
            .await
            .map_err(sql_err)?;
        sqlx::query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)")
            .bind(i32::try_from(m.version).map_err(|_| {
                OpenError::Corrupt(format!("migration version {} is too large", m.version))
            })?)
            .bind(m.name)
            .execute(&mut *tx)
            .await
            .map_err(sql_err)?;
    }
    tx.commit().await.map_err(sql_err)?;
    Ok(found)
}

/// The largest recorded schema version (0 for a fresh schema).
pub(crate) async fn current_version(conn: &mut PgConnection) -> Result<u32, OpenError> {
    let row = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .fetch_one(&mut *conn)
        .await
        .map_err(sql_err)?;
    let v: i32 = row.try_get(0).map_err(sql_err)?;
    u32::try_from(v).map_err(|_| OpenError::Corrupt(format!("schema version {v}")))
}
