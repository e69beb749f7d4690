//! Mapping SQLite failures to the contract's [`ClientStoreError`].
//!
//! Messages are a fixed operation label plus SQLite's own text, which names
//! tables and columns but never bound values (and every bound value is
//! blinded or sealed anyway).

use backchannel_client::store::ClientStoreError;

/// SQLite primary result codes (the low byte of an extended code).
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
/// Primary codes that mean the file itself is damaged.
const SQLITE_CORRUPT: i64 = 11;
const SQLITE_NOTADB: i64 = 26;

/// Maps an sqlx error from operation `op` (a fixed label, never data).
pub(crate) fn backend(op: &'static str, e: sqlx::Error) -> ClientStoreError {
    if is_damaged(&e) {
        return ClientStoreError::Corrupt(format!("{op}: database file: {e}"));
    }
    match e {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            ClientStoreError::Corrupt(format!("{op}: a stored value has the wrong type"))
        }
        sqlx::Error::PoolClosed => ClientStoreError::Backend(format!("{op}: the store is closed")),
        other => ClientStoreError::Backend(format!("{op}: {other}")),
    }
}

/// Whether `e` says the file is not a database or is damaged.
pub(crate) fn is_damaged(e: &sqlx::Error) -> bool {
    matches!(primary_code(e), Some(SQLITE_CORRUPT | SQLITE_NOTADB))
}

/// Whether `e` is SQLite's "busy" or "locked": another connection holds the
/// lock, so the same call may succeed a moment later.
pub(crate) fn is_busy(e: &sqlx::Error) -> bool {
    matches!(primary_code(e), Some(SQLITE_BUSY | SQLITE_LOCKED))
}

fn primary_code(e: &sqlx::Error) -> Option<i64> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    db.code()
        .and_then(|c| c.parse::<i64>().ok())
        .map(|c| c & 0xff)
}
