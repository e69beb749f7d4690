//! Mapping PostgreSQL and decoding failures to [`StoreError`], and the
//! checked conversions between the contract's `u64`s and PostgreSQL's
//! `BIGINT`s.
//!
//! Metadata hygiene: every message here is a fixed operation label plus the
//! server's primary error message, which names tables, columns and
//! constraints but not the values bound to a statement (we never log the
//! `DETAIL` field, which may quote a key's value), so no talks, room or key
//! id can leak into a log line through an error.

use backchannel_store::StoreError;
use sqlx::error::DatabaseError;

/// Maps an sqlx error from operation `op` (a fixed label, never data).
pub(crate) fn backend(op: &'static str, e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) => database(op, db.as_ref()),
        // The connection broke: a statement (or the COMMIT) may or may not
        // have taken effect.
        sqlx::Error::Io(e) => StoreError::Unavailable(format!("{op}: i/o: {e}")),
        sqlx::Error::Tls(e) => StoreError::Unavailable(format!("{op}: tls: {e}")),
        sqlx::Error::Protocol(e) => StoreError::Unavailable(format!("{op}: protocol: {e}")),
        sqlx::Error::PoolTimedOut => {
            StoreError::Unavailable(format!("{op}: timed out waiting for a connection"))
        }
        sqlx::Error::PoolClosed => StoreError::Unavailable(format!("{op}: the store is closed")),
        sqlx::Error::BeginFailed => {
            StoreError::Unavailable(format!("{op}: could not begin a transaction"))
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(format!("{op}: a stored value has the wrong type"))
        }
        other => StoreError::Backend(format!("{op}: {other}")),
    }
}

/// How a SQLSTATE (PostgreSQL Appendix A) maps onto the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Nothing of this call may be assumed (not) written: try again.
    Unavailable,
    /// The stored data itself is damaged.
    Corrupt,
    /// Anything else: a bug, a privilege missing, a schema changed under us.
    Backend,
}

fn classify(code: &str) -> Class {
    match code {
        // serialization_failure, deadlock_detected: the transaction was
        // rolled back and may simply be retried.
        "40001" | "40P01" => Class::Unavailable,
        // transaction_integrity_constraint_violation,
        // statement_completion_unknown: the outcome is unknown.
        "40002" | "40003" => Class::Unavailable,
        // query_canceled (statement or lock timeout), admin_shutdown,
        // crash_shutdown, cannot_connect_now, idle_session_timeout,
        // database_dropped.
        "57014" | "57P01" | "57P02" | "57P03" | "57P05" => Class::Unavailable,
        // lock_not_available (a `lock_timeout` expired);
        // read_only_sql_transaction (connected to a standby after a
        // failover); idle_in_transaction_session_timeout (the session was
        // ended while its transaction sat idle: the node was paused or cut
        // off; the transaction rolled back, but a caller that lost the
        // connection at COMMIT cannot tell).
        "55P03" | "25006" | "25P03" => Class::Unavailable,
        // data_corrupted, index_corrupted.
        "XX001" | "XX002" => Class::Corrupt,
        // connection_exception (08…), insufficient_resources (53…: disk
        // full, out of memory, too many connections), operator_intervention
        // (57…), system_error (58…: i/o error).
        _ if ["08", "53", "57", "58"].iter().any(|c| code.starts_with(c)) => Class::Unavailable,
        _ => Class::Backend,
    }
}

fn database(op: &'static str, db: &dyn DatabaseError) -> StoreError {
    let code = db.code();
    let msg = db.message();
    match code.as_deref().map_or(Class::Backend, classify) {
        Class::Unavailable => StoreError::Unavailable(format!("{op}: {msg}")),
        Class::Corrupt => StoreError::Corrupt(format!("{op}: database: {msg}")),
        Class::Backend => StoreError::Backend(format!("{op}: {msg}")),
    }
}

/// Whether `e` is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// A `u64` of the contract as a PostgreSQL BIGINT. Seqs, sizes, versions
/// and Unix-ms times stay far below 2^63 (that is 292 million years of
/// milliseconds); a value above is refused rather than wrapped, so that
/// ordering in SQL stays the numeric order.
pub(crate) fn to_sql(v: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Limit(what))
}

/// A stored BIGINT as a `u64`; negative means the row was tampered with
/// (the schema's CHECK constraints refuse negatives on write).
pub(crate) fn from_sql(v: i64, what: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}")))
}

/// A stored BYTEA of a fixed length as an array.
pub(crate) fn fixed<const N: usize>(v: &[u8], what: &'static str) -> Result<[u8; N], StoreError> {
    <[u8; N]>::try_from(v)
        .map_err(|_| StoreError::Corrupt(format!("stored {what} has {} bytes, not {N}", v.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_onto_the_contract() {
        let check = |code: &str, want: Class| assert_eq!(classify(code), want, "{code}");
        check("40001", Class::Unavailable);
        check("40P01", Class::Unavailable);
        check("08006", Class::Unavailable);
        check("53100", Class::Unavailable);
        check("57P01", Class::Unavailable);
        check("58030", Class::Unavailable);
        check("25006", Class::Unavailable);
        check("25P03", Class::Unavailable);
        check("55P03", Class::Unavailable);
        check("25P02", Class::Backend);
        check("XX001", Class::Corrupt);
        check("XX002", Class::Corrupt);
        check("23505", Class::Backend);
        check("42P01", Class::Backend);
        check("XX000", Class::Backend);
    }
}
