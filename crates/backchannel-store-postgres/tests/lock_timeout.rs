//! A lock wait gives up after `PostgresOptions::lock_timeout` with
//! `Unavailable` (SQLSTATE 55P03), rather than hanging behind a stuck
//! holder: here a connection holding the lease row, as a node paused
//! inside its transaction would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use backchannel_store::{LeaseName, Store, StoreError};
use backchannel_store_postgres::PostgresStore;
use common::{Schemas, database_url, options, raw_in, with_schemas};
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_wait_is_unavailable_after_the_lock_timeout() {
    let Some(url) = database_url("a_lock_wait_is_unavailable_after_the_lock_timeout") else {
        return;
    };
    let at = url.clone();
    with_schemas(&url, move |schemas: Schemas| async move {
        let url = at;
        let schema = schemas.fresh();
        let store = PostgresStore::open(
            &url,
            backchannel_store_postgres::PostgresOptions {
                lock_timeout: Duration::from_millis(300),
                ..options(&schema)
            },
        )
        .await
        .unwrap();
        let lease = store
            .acquire_lease(LeaseName::Integrator, [1; 16], 1_000, 60_000)
            .await
            .unwrap();
        assert_eq!(lease.epoch, 1);

        // Another session holds the lease row and sits in its transaction
        // (this one has no idle timeout of ours).
        let mut other = raw_in(&url, &schema).await;
        let mut tx = other.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM leases WHERE name = 'integrator' FOR UPDATE")
            .execute(&mut *tx)
            .await
            .unwrap();

        let started = Instant::now();
        let r = store
            .acquire_lease(LeaseName::Integrator, [2; 16], 2_000, 60_000)
            .await;
        let waited = started.elapsed();
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
            "gave up after the lock timeout, not at once nor never: {waited:?}"
        );
        tx.rollback().await.unwrap();
        other.close().await.unwrap();

        // The holder is unchanged; once the row is free the store works.
        let again = store
            .acquire_lease(LeaseName::Integrator, [2; 16], 2_000, 60_000)
            .await
            .unwrap();
        assert_eq!(again, lease, "the unexpired lease stands");
        store.close().await;
    })
    .await;
}

/// A node paused inside a transaction (here: a session that took the
/// lease row as a fenced integration does, with the store's own idle
/// timeout, then went quiet) loses its locks after
/// `idle_in_transaction_session_timeout`: another node's takeover goes
/// through, well within its lock timeout, instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_writer_loses_its_locks_after_the_idle_timeout() {
    let Some(url) = database_url("a_paused_writer_loses_its_locks_after_the_idle_timeout") else {
        return;
    };
    let at = url.clone();
    with_schemas(&url, move |schemas: Schemas| async move {
        let url = at;
        let schema = schemas.fresh();
        let store = PostgresStore::open(&url, options(&schema)).await.unwrap();
        let settings = store.settings().await.unwrap();
        assert_eq!(settings.idle_in_transaction_session_timeout, "1s");
        assert_eq!(settings.lock_timeout, "5s");
        let first = store
            .acquire_lease(LeaseName::Integrator, [1; 16], 1_000, 2_000)
            .await
            .unwrap();
        assert_eq!(first.epoch, 1);

        // The paused integrator: the lease row held FOR SHARE, then silence.
        let mut paused = raw_in(&url, &schema).await;
        sqlx::query("SET idle_in_transaction_session_timeout = '1s'")
            .execute(&mut paused)
            .await
            .unwrap();
        let mut tx = paused.begin().await.unwrap();
        sqlx::query("SELECT epoch FROM leases WHERE name = 'integrator' FOR SHARE")
            .execute(&mut *tx)
            .await
            .unwrap();

        // Another node takes the expired lease: it waits for the lock, the
        // server ends the paused session, and the takeover commits.
        let other = PostgresStore::open(&url, options(&schema)).await.unwrap();
        let taken = other
            .acquire_lease(LeaseName::Integrator, [2; 16], 10_000, 2_000)
            .await
            .unwrap();
        assert_eq!((taken.holder, taken.epoch), ([2; 16], 2));
        // The paused session was ended: its transaction is gone.
        assert!(
            sqlx::query("SELECT 1").execute(&mut *tx).await.is_err(),
            "the paused session is closed"
        );
        drop(tx);
        drop(paused);
        other.close().await;
        store.close().await;
    })
    .await;
}
