//! Versioned schema migrations.
//!
//! Each migration is an SQL file under `migrations/`, embedded at compile
//! time, applied in order in one `BEGIN IMMEDIATE` transaction together with
//! its row in `schema_migrations`: after a crash a migration is either
//! wholly applied and recorded or not at all. The database's schema version
//! is the largest recorded version; a database with a version this code
//! does not know is refused before anything is written, so an older node
//! never writes into a schema it does not understand.

use sqlx::{Row, SqlitePool};

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
        name: "enrolment_blobs",
        sql: include_str!("../migrations/0002_enrolment_blobs.sql"),
    },
    Migration {
        version: 3,
        name: "mls",
        sql: include_str!("../migrations/0003_mls.sql"),
    },
    Migration {
        version: 4,
        name: "leases_scheduled",
        sql: include_str!("../migrations/0004_leases_scheduled.sql"),
    },
];

/// The schema version this code migrates to (the last migration's).
pub const SCHEMA_VERSION: u32 = 4;

const _: () = assert!(MIGRATIONS.len() as u32 == SCHEMA_VERSION);

/// The bookkeeping table, created before anything else (not a migration, so
/// that its absence means "version 0").
const CREATE_VERSIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER NOT NULL PRIMARY KEY,
    name    TEXT    NOT NULL
) STRICT";

fn sql_err(e: sqlx::Error) -> OpenError {
    OpenError::Sqlite(crate::error::backend("migrate", e).to_string())
}

/// Brings the database on `pool` (the write pool) to [`SCHEMA_VERSION`], or
/// refuses it if it is newer. Returns the version found before migrating.
pub(crate) async fn migrate(pool: &SqlitePool) -> Result<u32, OpenError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(sql_err)?;
    sqlx::query(CREATE_VERSIONS)
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;
    let found = current_version(&mut tx).await?;
    if found > SCHEMA_VERSION {
        // Dropping `tx` rolls back (nothing was changed anyway: the versions
        // table existed, or the database would be at version 0).
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
        sqlx::query("INSERT INTO schema_migrations (version, name) VALUES (?, ?)")
            .bind(i64::from(m.version))
            .bind(m.name)
            .execute(&mut *tx)
            .await
            .map_err(sql_err)?;
    }
    tx.commit().await.map_err(sql_err)?;
    Ok(found)
}

/// The largest recorded schema version (0 for a fresh database).
pub(crate) async fn current_version(conn: &mut sqlx::SqliteConnection) -> Result<u32, OpenError> {
    let row = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .fetch_one(&mut *conn)
        .await
        .map_err(sql_err)?;
    let v: i64 = row.try_get(0).map_err(sql_err)?;
    u32::try_from(v).map_err(|_| OpenError::Corrupt(format!("schema version {v}")))
}
