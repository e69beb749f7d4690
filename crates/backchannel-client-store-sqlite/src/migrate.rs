//! Versioned schema migrations, as in `backchannel-store-sqlite`: SQL files
//! under `migrations/`, embedded, applied in order inside the caller's
//! `BEGIN IMMEDIATE` transaction together with their rows in
//! `schema_migrations`; a database with a newer version is refused before
//! anything is written.

use sqlx::SqliteConnection;

/// One migration: its version (1, 2, … without gaps), a name and its SQL.
struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, in order. Append only.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "initial",
    sql: include_str!("../migrations/0001_initial.sql"),
}];

/// The schema version this code migrates to (the last migration's).
pub const SCHEMA_VERSION: u32 = 1;

const _: () = assert!(MIGRATIONS.len() as u32 == SCHEMA_VERSION);

/// The bookkeeping table (not a migration, so its absence means "version 0").
const CREATE_VERSIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER NOT NULL PRIMARY KEY,
    name    TEXT    NOT NULL
) STRICT";

/// Why migrating failed.
#[derive(Debug)]
pub(crate) enum MigrateError {
    /// The database is at `found`, newer than [`SCHEMA_VERSION`].
    Newer { found: u32 },
    /// The recorded version is not a `u32`.
    BadVersion(i64),
    /// SQLite failed.
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for MigrateError {
    fn from(e: sqlx::Error) -> Self {
        MigrateError::Sql(e)
    }
}

/// Brings the database to [`SCHEMA_VERSION`] inside the caller's write
/// transaction, or refuses it if it is newer. Returns the version found.
pub(crate) async fn migrate(conn: &mut SqliteConnection) -> Result<u32, MigrateError> {
    sqlx::query(CREATE_VERSIONS).execute(&mut *conn).await?;
    let found = current_version(conn).await?;
    if found > SCHEMA_VERSION {
        return Err(MigrateError::Newer { found });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        sqlx::raw_sql(m.sql).execute(&mut *conn).await?;
        sqlx::query("INSERT INTO schema_migrations (version, name) VALUES (?, ?)")
            .bind(i64::from(m.version))
            .bind(m.name)
            .execute(&mut *conn)
            .await?;
    }
    Ok(found)
}

/// The largest recorded schema version: 0 for a database without the
/// versions table (a fresh file, or not a client store).
pub(crate) async fn current_version(conn: &mut SqliteConnection) -> Result<u32, MigrateError> {
    let has_table: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
    )
    .fetch_one(&mut *conn)
    .await?;
    if has_table == 0 {
        return Ok(0);
    }
    let v: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .fetch_one(&mut *conn)
        .await?;
    u32::try_from(v).map_err(|_| MigrateError::BadVersion(v))
}
