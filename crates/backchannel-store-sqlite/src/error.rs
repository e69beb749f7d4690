//! Mapping SQLite and decoding failures to [`StoreError`], and the checked
//! conversions between the contract's `u64`s and SQLite's `i64`s.
//!
//! Metadata hygiene: every message here is a fixed operation label plus
//! SQLite's own error text, which names tables and columns but never the
//! values bound to a statement, so no talks, room or key id can leak into a
//! log line through an error.

use backchannel_store::StoreError;
use sqlx::error::DatabaseError;

/// SQLite primary result codes (the low byte of an extended code) that mean
/// "nothing of this call may be assumed written, try again later".
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_NOMEM: i64 = 7;
const SQLITE_READONLY: i64 = 8;
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;
const SQLITE_CANTOPEN: i64 = 14;
/// Primary codes that mean the file itself is damaged.
const SQLITE_CORRUPT: i64 = 11;
const SQLITE_NOTADB: i64 = 26;

/// Maps an sqlx error from operation `op` (a fixed label, never data).
pub(crate) fn backend(op: &'static str, e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) => database(op, db.as_ref()),
        sqlx::Error::Io(e) => StoreError::Unavailable(format!("{op}: i/o: {e}")),
        sqlx::Error::PoolTimedOut => {
            StoreError::Unavailable(format!("{op}: timed out waiting for a connection"))
        }
        sqlx::Error::PoolClosed => StoreError::Unavailable(format!("{op}: the store is closed")),
        sqlx::Error::WorkerCrashed => {
            StoreError::Unavailable(format!("{op}: the database worker thread crashed"))
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(format!("{op}: a stored value has the wrong type"))
        }
        other => StoreError::Backend(format!("{op}: {other}")),
    }
}

/// Whether `e` is SQLite's "busy" or "locked": another connection holds the
/// lock, so the same call may succeed a moment later.
pub(crate) fn is_busy(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    matches!(
        db.code()
            .and_then(|c| c.parse::<i64>().ok())
            .map(|c| c & 0xff),
        Some(SQLITE_BUSY | SQLITE_LOCKED)
    )
}

fn database(op: &'static str, db: &dyn DatabaseError) -> StoreError {
    let code = db
        .code()
        .and_then(|c| c.parse::<i64>().ok())
        .map(|c| c & 0xff);
    let msg = db.message();
    match code {
        Some(SQLITE_CORRUPT | SQLITE_NOTADB) => {
            StoreError::Corrupt(format!("{op}: database file: {msg}"))
        }
        Some(
            SQLITE_BUSY | SQLITE_LOCKED | SQLITE_NOMEM | SQLITE_READONLY | SQLITE_IOERR
            | SQLITE_FULL | SQLITE_CANTOPEN,
        ) => StoreError::Unavailable(format!("{op}: {msg}")),
        _ => StoreError::Backend(format!("{op}: {msg}")),
    }
}

/// A `u64` of the contract as an SQLite INTEGER. Seqs, sizes, versions and
/// Unix-ms times stay far below 2^63 (that is 292 million years of
/// milliseconds); a value above is refused rather than wrapped, so that
/// ordering in SQL stays the numeric order.
pub(crate) fn to_sql(v: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Limit(what))
}

/// A stored INTEGER as a `u64`; negative means the row was tampered with
/// (the schema's CHECK constraints refuse negatives on write).
pub(crate) fn from_sql(v: i64, what: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}")))
}

/// A stored BLOB of a fixed length as an array.
pub(crate) fn fixed<const N: usize>(v: &[u8], what: &'static str) -> Result<[u8; N], StoreError> {
    <[u8; N]>::try_from(v)
        .map_err(|_| StoreError::Corrupt(format!("stored {what} has {} bytes, not {N}", v.len())))
}
