//! Two stores (two pools, as two nodes would) contend for the integrator
//! lease on one schema with a short ttl while the clock advances: no epoch
//! ever has two holders, and the loser of a takeover cannot integrate
//! under its old epoch (`Fenced`), even racing the takeover.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use backchannel_statement::fixtures::labels;
use backchannel_store::conformance::{
    access_list, checkpoint_at, hashes_between, log_key, read_all, sender, submission, talks_id,
    talks_record,
};
use backchannel_store::{Fence, Lease, LeaseName, Store, StoreError};
use backchannel_store_postgres::PostgresStore;
use backchannel_tlog::MemoryHashStore;
use common::{Schemas, database_url, open, with_schemas};

const NAME: LeaseName = LeaseName::Integrator;
const HOLDER_A: [u8; 16] = [0xaa; 16];
const HOLDER_B: [u8; 16] = [0xbb; 16];
/// A clock step shorter than the ttl: a holder that calls every step
/// keeps its lease; one that skips a step loses it to the other.
const STEP_MS: u64 = 10;
const TTL_MS: u64 = 15;
const ROUNDS: u64 = 300;

async fn acquire(store: &PostgresStore, holder: [u8; 16], now_ms: u64) -> Lease {
    store
        .acquire_lease(NAME, holder, now_ms, TTL_MS)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_epoch_has_two_holders_and_the_loser_is_fenced() {
    let Some(url) = database_url("no_epoch_has_two_holders_and_the_loser_is_fenced") else {
        return;
    };
    let at = url.clone();
    with_schemas(&url, move |schemas: Schemas| async move {
        let url = at;
        let schema = schemas.fresh();
        let (a, b) = (open(&url, &schema).await, open(&url, &schema).await);

        // Both call at once in most rounds; each skips some rounds (a every
        // third, b every fifth), letting its lease lapse to the other.
        let mut seen: Vec<Lease> = Vec::new();
        for round in 0..ROUNDS {
            let now = 1_000 + round * STEP_MS;
            let call_a = round % 3 != 0;
            let call_b = round % 5 != 0;
            let (la, lb) = tokio::join!(
                async {
                    if call_a {
                        Some(acquire(&a, HOLDER_A, now).await)
                    } else {
                        None
                    }
                },
                async {
                    if call_b {
                        Some(acquire(&b, HOLDER_B, now).await)
                    } else {
                        None
                    }
                }
            );
            seen.extend(la);
            seen.extend(lb);
        }
        let mut holders: BTreeMap<u64, [u8; 16]> = BTreeMap::new();
        for l in &seen {
            assert!(l.epoch > 0, "every call returns a taken lease");
            assert!(l.holder == HOLDER_A || l.holder == HOLDER_B);
            let first = *holders.entry(l.epoch).or_insert(l.holder);
            assert_eq!(first, l.holder, "epoch {} has two holders", l.epoch);
        }
        let by_a = holders.values().filter(|h| **h == HOLDER_A).count();
        let by_b = holders.values().filter(|h| **h == HOLDER_B).count();
        assert!(
            by_a >= 5 && by_b >= 5,
            "the lease changed hands often ({by_a} epochs held by a, {by_b} by b)"
        );
        let epochs: Vec<u64> = holders.keys().copied().collect();
        assert_eq!(
            epochs,
            (1..=epochs.len() as u64).collect::<Vec<_>>(),
            "epochs rise by one per change of holder"
        );
        assert!(
            holders
                .iter()
                .zip(holders.iter().skip(1))
                .all(|(x, y)| x.1 != y.1),
            "consecutive epochs have different holders"
        );

        // A takeover: a holds the lease, then it lapses and b takes it.
        let t = talks_id(1);
        a.create_talks(&talks_record(t), &access_list(1, 0))
            .await
            .unwrap();
        let s = sender(labels::US_HEAD_DEVICE);
        a.sequence(
            (0..6).map(|k| submission(t, s, k, 0)).collect(),
            5,
            &log_key(),
        )
        .await
        .unwrap();
        let mut tree = MemoryHashStore::new();
        for e in read_all(&a, t).await {
            tree.append(&e.leaf().hash()).unwrap();
        }
        let later = 1_000_000;
        let mine = acquire(&a, HOLDER_A, later).await;
        assert_eq!(mine.holder, HOLDER_A);
        let fence_a = Fence {
            name: NAME,
            epoch: mine.epoch,
        };
        a.integrate(
            t,
            0,
            2,
            &hashes_between(&tree, 0, 2),
            &checkpoint_at(t, &tree, 2),
            Some(fence_a),
        )
        .await
        .unwrap();
        let theirs = acquire(&b, HOLDER_B, later + TTL_MS).await;
        assert_eq!((theirs.holder, theirs.epoch), (HOLDER_B, mine.epoch + 1));
        let c4 = checkpoint_at(t, &tree, 4);
        let r = a
            .integrate(t, 2, 4, &hashes_between(&tree, 2, 4), &c4, Some(fence_a))
            .await;
        assert!(matches!(r, Err(StoreError::Fenced)), "{r:?}");
        assert_eq!(a.integrated_size(t).await.unwrap(), 2, "nothing written");
        assert_eq!(
            b.checkpoint(t).await.unwrap(),
            Some(checkpoint_at(t, &tree, 2))
        );
        let fence_b = Fence {
            name: NAME,
            epoch: theirs.epoch,
        };
        b.integrate(t, 2, 4, &hashes_between(&tree, 2, 4), &c4, Some(fence_b))
            .await
            .unwrap();

        // Racing: b integrates under its epoch while a takes the lease
        // over. The integration either ran first (under b's epoch, before
        // the takeover committed) or saw the new epoch and was refused;
        // never both a new epoch and b's write after it.
        let c6 = checkpoint_at(t, &tree, 6);
        let h6 = hashes_between(&tree, 4, 6);
        let (r, taken) = tokio::join!(
            b.integrate(t, 4, 6, &h6, &c6, Some(fence_b)),
            acquire(&a, HOLDER_A, later + 10 * TTL_MS)
        );
        assert_eq!((taken.holder, taken.epoch), (HOLDER_A, theirs.epoch + 1));
        match r {
            Ok(()) => assert_eq!(a.integrated_size(t).await.unwrap(), 6),
            Err(StoreError::Fenced) => assert_eq!(a.integrated_size(t).await.unwrap(), 4),
            Err(e) => panic!("integrate racing a takeover: {e:?}"),
        }
        a.close().await;
        b.close().await;
    })
    .await;
}
