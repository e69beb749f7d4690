//! Two stores (as two node processes would) on one file: opening a fresh
//! file at the same time (the migration race), then sequencing through both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use backchannel_store::{Outcome, Store};
use backchannel_store_sqlite::{SCHEMA_VERSION, SqliteOptions, SqliteStore};
use common::{create, log_key, submission, talks_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_open_one_fresh_file_at_once_and_share_its_log() {
    // Several fresh files: the race is in who migrates first.
    for round in 0..8u8 {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node.sqlite");
        let (a, b) = tokio::join!(
            SqliteStore::open(&path, SqliteOptions::default()),
            SqliteStore::open(&path, SqliteOptions::default()),
        );
        let a = a.unwrap_or_else(|e| panic!("round {round}: the first open failed: {e}"));
        let b = b.unwrap_or_else(|e| panic!("round {round}: the second open failed: {e}"));
        assert_eq!(a.schema_version().await.unwrap(), SCHEMA_VERSION);
        assert_eq!(b.schema_version().await.unwrap(), SCHEMA_VERSION);

        create(&a, 1).await;
        assert!(b.talks(talks_id(1)).await.unwrap().is_some());

        // Both write at once, each its own keys, plus one submission both
        // send (a retry through another node).
        let write = |store: SqliteStore, sender: u8| {
            tokio::spawn(async move {
                let key = log_key();
                let mut out = Vec::new();
                for i in 0..10u8 {
                    let batch = vec![submission(1, sender, i, i), submission(1, 9, 0, 0)];
                    out.extend(store.sequence(batch, 10, &key).await.unwrap());
                }
                out
            })
        };
        let (oa, ob) = tokio::join!(write(a.clone(), 1), write(b.clone(), 2));
        let (oa, ob) = (oa.unwrap(), ob.unwrap());
        let seq = |o: &Outcome| match o {
            Outcome::Sequenced(p) => p.seq,
            other => panic!("round {round}: {other:?}"),
        };
        let seqs: BTreeSet<u64> = oa.iter().chain(&ob).map(seq).collect();
        // Every other outcome is the shared submission's.
        let shared: Vec<&Outcome> = oa.iter().chain(&ob).skip(1).step_by(2).collect();
        assert_eq!(shared.len(), 20);
        assert!(
            shared.iter().all(|o| *o == shared[0]),
            "round {round}: both stores return the shared one's one placement"
        );
        assert_eq!(seqs, (0..21).collect(), "round {round}: dense seqs");

        for store in [&a, &b] {
            assert_eq!(store.log_size(talks_id(1)).await.unwrap(), 21);
            let all = store.read(talks_id(1), 0, 100).await.unwrap();
            assert_eq!(all.len(), 21, "round {round}: each store sees everything");
            assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64));
        }
        assert_eq!(
            a.read(talks_id(1), 0, 100).await.unwrap(),
            b.read(talks_id(1), 0, 100).await.unwrap()
        );
        a.close().await;
        b.close().await;
    }
}
