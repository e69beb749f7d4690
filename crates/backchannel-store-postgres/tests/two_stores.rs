//! Two stores (as two nodes would) on one schema: sequencing through both
//! at once hands out one dense order, a retry through the other node finds
//! its original, and node timestamps never go backwards even when one
//! node's clock is behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use backchannel_store::{Outcome, Store};
use backchannel_store_postgres::PostgresStore;
use common::{Schemas, create, database_url, log_key, open, submission, talks_id, with_schemas};

fn placement(o: &Outcome) -> &backchannel_store::Placement {
    match o {
        Outcome::Sequenced(p) => p,
        other => panic!("not sequenced: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_share_one_log() {
    let Some(url) = database_url("two_stores_share_one_log") else {
        return;
    };
    let at = url.clone();
    with_schemas(&url, move |schemas: Schemas| async move {
        let url = at;
        let schema = schemas.fresh();
        let (a, b) = (open(&url, &schema).await, open(&url, &schema).await);
        create(&a, 1).await;
        create(&a, 2).await;
        assert!(b.talks(talks_id(1)).await.unwrap().is_some());

        // Both write at once, each its own keys, to both talks (in the two
        // orders, so the head locks are taken in talks order whatever the
        // batch order), plus one submission both send (a retry through
        // another node). Node b's clock is behind node a's.
        let write = |store: PostgresStore, sender: u8, clock: u64, talks: [u8; 2]| {
            tokio::spawn(async move {
                let key = log_key();
                let mut out = Vec::new();
                for i in 0..10u8 {
                    let batch = vec![
                        submission(talks[0], sender, i, i),
                        submission(1, 9, 0, 0),
                        submission(talks[1], sender, i, i),
                    ];
                    out.push(store.sequence(batch, clock, &key).await.unwrap());
                }
                out
            })
        };
        let (oa, ob) = tokio::join!(
            write(a.clone(), 1, 5_000, [1, 2]),
            write(b.clone(), 2, 1_000, [2, 1])
        );
        let (oa, ob) = (oa.unwrap(), ob.unwrap());
        let shared: Vec<&Outcome> = oa.iter().chain(&ob).map(|b| &b[1]).collect();
        assert!(
            shared.iter().all(|o| *o == shared[0]),
            "both stores return the shared submission's one placement"
        );
        // The seqs handed out per talks: a's batches are [1, shared, 2],
        // b's [2, shared, 1].
        let seqs = |talks: u8| -> BTreeSet<u64> {
            let (ia, ib) = if talks == 1 { (0, 2) } else { (2, 0) };
            let mut s: BTreeSet<u64> = oa.iter().map(|b| placement(&b[ia]).seq).collect();
            s.extend(ob.iter().map(|b| placement(&b[ib]).seq));
            if talks == 1 {
                s.insert(placement(shared[0]).seq);
            }
            s
        };
        for (talks, want) in [(1u8, 21u64), (2, 20)] {
            let t = talks_id(talks);
            assert_eq!(
                seqs(talks),
                (0..want).collect(),
                "talks {talks}: dense, each once"
            );
            for store in [&a, &b] {
                assert_eq!(store.log_size(t).await.unwrap(), want, "talks {talks}");
                let all = store.read(t, 0, 100).await.unwrap();
                assert_eq!(all.len() as u64, want, "each store sees everything");
                assert!(
                    all.iter().enumerate().all(|(i, e)| e.seq == i as u64),
                    "dense"
                );
                assert!(
                    all.windows(2).all(|w| w[0].node_time <= w[1].node_time),
                    "node times never go backwards"
                );
            }
            assert_eq!(
                a.read(t, 0, 100).await.unwrap(),
                b.read(t, 0, 100).await.unwrap()
            );
        }
        a.close().await;
        b.close().await;
    })
    .await;
}
