//! Sequencing on PostgreSQL beyond the conformance suite: failures that
//! write nothing and take no seq (the counter rolls back with its
//! transaction), and stored data that breaks an invariant read as
//! `Corrupt`, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use backchannel_crypto::Signer;
use backchannel_store::{MAX_SEQUENCE_BATCH, Outcome, Store, StoreError};
use common::{
    BrokenSigner, Schemas, create, database_url, log_key, open, raw_in, submission, talks_id,
    with_schemas,
};
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_writes_nothing_and_leaves_no_gap() {
    let Some(url) = database_url("a_failed_batch_writes_nothing_and_leaves_no_gap") else {
        return;
    };
    let at = url.clone();
    with_schemas(&url, move |schemas: Schemas| async move {
        let store = open(&at, &schemas.fresh()).await;
        let key = log_key();
        create(&store, 1).await;
        let mut sub = store.subscribe();

        let unknown = store
            .sequence(
                vec![submission(1, 1, 1, 1), submission(9, 1, 1, 1)],
                10,
                &key,
            )
            .await;
        assert!(
            matches!(unknown, Err(StoreError::UnknownTalks)),
            "{unknown:?}"
        );

        // Fails after the head was locked and seqs were assigned in the
        // transaction: the rollback takes them back.
        let broken = BrokenSigner(key.public_key());
        let unsigned = store
            .sequence(vec![submission(1, 1, 1, 1)], 10, &broken)
            .await;
        assert!(matches!(unsigned, Err(StoreError::Sign(_))), "{unsigned:?}");

        let too_many = (0..=MAX_SEQUENCE_BATCH)
            .map(|i| submission(1, 1, (i % 256) as u8, 1))
            .collect();
        let limit = store.sequence(too_many, 10, &key).await;
        assert!(matches!(limit, Err(StoreError::Limit(_))), "{limit:?}");

        let far = store
            .sequence(vec![submission(1, 1, 1, 1)], u64::MAX, &key)
            .await;
        assert!(matches!(far, Err(StoreError::Limit(_))), "{far:?}");

        assert_eq!(store.log_size(talks_id(1)).await.unwrap(), 0);
        assert!(store.read(talks_id(1), 0, 10).await.unwrap().is_empty());
        assert!(sub.try_recv().is_err());
        // Neither the key nor a seq was taken by the failed attempts.
        let out = store
            .sequence(vec![submission(1, 1, 1, 2)], 10, &key)
            .await
            .unwrap();
        assert!(
            matches!(&out[..], [Outcome::Sequenced(p)] if p.seq == 0),
            "{out:?}"
        );
        store.close().await;
    })
    .await;
}

/// Drops every CHECK constraint of the connection's schema, so rows can be
/// damaged the way a disk or an operator might.
const DROP_CHECKS: &str = "DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT conrelid::regclass AS t, conname FROM pg_constraint
             WHERE contype = 'c' AND connamespace = current_schema()::regnamespace
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.t, r.conname);
    END LOOP;
END $$";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_are_corrupt_not_panics() {
    let Some(url) = database_url("malformed_rows_are_corrupt_not_panics") else {
        return;
    };
    let at = url.clone();
    with_schemas(&url, move |schemas: Schemas| async move {
        let url = at;
        let cases: &[(&'static str, &str)] = &[
            (
                "UPDATE envelopes SET leaf_hash = '\\x00' WHERE seq = 1",
                "leaf_hash",
            ),
            (
                "UPDATE envelopes SET room = '\\x0102' WHERE seq = 1",
                "room",
            ),
            (
                "UPDATE envelopes SET node_time = -1 WHERE seq = 1",
                "node_time",
            ),
            ("DELETE FROM envelopes WHERE seq = 1", "disagree"),
            ("UPDATE log_heads SET next_seq = 5", "disagree"),
            (
                "DELETE FROM envelopes WHERE seq = 1; UPDATE log_heads SET next_seq = 2",
                "missing",
            ),
        ];
        for (sql, says) in cases {
            let schema = schemas.fresh();
            let store = open(&url, &schema).await;
            create(&store, 1).await;
            store
                .sequence(
                    (0..3).map(|i| submission(1, 1, i, i)).collect(),
                    10,
                    &log_key(),
                )
                .await
                .unwrap();

            let mut conn = raw_in(&url, &schema).await;
            sqlx::raw_sql(DROP_CHECKS).execute(&mut conn).await.unwrap();
            sqlx::raw_sql(*sql).execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();

            match store.read(talks_id(1), 0, 10).await {
                Err(StoreError::Corrupt(m)) => assert!(m.contains(says), "{sql}: {m}"),
                other => panic!("{sql}: {other:?}"),
            }
            store.close().await;
        }
    })
    .await;
}
