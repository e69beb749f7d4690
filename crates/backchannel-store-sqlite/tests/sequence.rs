//! Sequencing on SQLite: batches, retries, failures that write nothing,
//! notifications, and concurrent writers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use backchannel_crypto::Signer;
use backchannel_store::{Appended, MAX_SEQUENCE_BATCH, Outcome, Store, StoreError};
use common::{BrokenSigner, create, fresh, log_key, submission, talks_id};

fn seqs(outcomes: &[Outcome]) -> Vec<Result<u64, u64>> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Sequenced(p) => Ok(p.seq),
            Outcome::Conflict { seq } => Err(*seq),
            other => panic!("no gate was submitted: {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_batch_across_talks_with_retries_and_conflicts() {
    let (_dir, _path, store) = fresh().await;
    let key = log_key();
    create(&store, 1).await;
    create(&store, 2).await;
    let mut sub = store.subscribe();
    let out = store
        .sequence(
            vec![
                submission(1, 1, 1, 1),
                submission(2, 1, 1, 2), // same sender and key, other talks
                submission(1, 1, 1, 1), // a retry within the batch
                submission(1, 1, 1, 3), // the key again, another header
                submission(1, 2, 1, 4), // the key, another sender
            ],
            100,
            &key,
        )
        .await
        .unwrap();
    assert_eq!(seqs(&out), vec![Ok(0), Ok(0), Ok(0), Err(0), Ok(1)]);
    assert_eq!(out[0], out[2]);
    let mut got = vec![sub.recv().await.unwrap(), sub.recv().await.unwrap()];
    got.sort_by_key(|a| a.talks);
    assert_eq!(
        got,
        vec![
            Appended {
                talks: talks_id(1),
                size: 2
            },
            Appended {
                talks: talks_id(2),
                size: 1
            },
        ]
    );

    // Only retries: nothing new, no notification, same placements.
    let again = store
        .sequence(
            vec![submission(1, 2, 1, 4), submission(1, 1, 1, 1)],
            50,
            &key,
        )
        .await
        .unwrap();
    assert_eq!(again, vec![out[4].clone(), out[0].clone()]);
    assert!(sub.try_recv().is_err());

    // Time never goes back: an earlier clock gets the previous time.
    let later = store
        .sequence(vec![submission(1, 3, 3, 3)], 50, &key)
        .await
        .unwrap();
    match &later[0] {
        Outcome::Sequenced(p) => assert_eq!((p.seq, p.node_time), (2, 100)),
        o => panic!("{o:?}"),
    }
}

#[tokio::test]
async fn a_failed_batch_writes_nothing() {
    let (_dir, _path, store) = fresh().await;
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

    assert_eq!(store.log_size(talks_id(1)).await.unwrap(), 0);
    assert!(store.read(talks_id(1), 0, 10).await.unwrap().is_empty());
    assert!(sub.try_recv().is_err());
    // The key was not taken by the failed attempts.
    let out = store
        .sequence(vec![submission(1, 1, 1, 2)], 10, &key)
        .await
        .unwrap();
    assert_eq!(seqs(&out), vec![Ok(0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_dense_seqs() {
    let (_dir, _path, store) = fresh().await;
    create(&store, 1).await;
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for t in 0..8u8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let key = log_key();
            for i in 0..10u8 {
                store
                    .sequence(vec![submission(1, t, i, i)], 10, &key)
                    .await
                    .unwrap();
                // Readers run beside the writer.
                store.read(talks_id(1), 0, 1000).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = store.read(talks_id(1), 0, 1000).await.unwrap();
    assert_eq!(all.len(), 80);
    assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64));
}

#[tokio::test]
async fn purge_keeps_everything_but_the_body() {
    let (_dir, _path, store) = fresh().await;
    create(&store, 1).await;
    store
        .sequence(vec![submission(1, 1, 1, 1)], 10, &log_key())
        .await
        .unwrap();
    let before = store.read(talks_id(1), 0, 1).await.unwrap().remove(0);
    assert!(store.purge_body(talks_id(1), 0).await.unwrap());
    assert!(!store.purge_body(talks_id(1), 0).await.unwrap());
    assert!(!store.purge_body(talks_id(1), 1).await.unwrap());
    assert!(!store.purge_body(talks_id(1), u64::MAX).await.unwrap());
    let after = store.read(talks_id(1), 0, 1).await.unwrap().remove(0);
    assert_eq!(after.body, None);
    assert_eq!(
        backchannel_store::StoredEnvelope {
            body: None,
            ..before
        },
        after
    );
}
