//! Two stores (two pools, as two nodes would) fire one schema's scheduled
//! items at once: every item fires exactly once (`FOR UPDATE SKIP
//! LOCKED`), each through one of them, and each talks' log holds exactly
//! its items' envelopes with dense seqs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use backchannel_codec::TalksId;
use backchannel_crypto::Signer as _;
use backchannel_statement::fixtures::labels;
use backchannel_store::conformance::{
    access_list, check_placement, log_key, read_all, sender, submission, talks_id, talks_record,
};
use backchannel_store::{Fired, MAX_FIRE_BATCH, Outcome, ScheduledRecord, Store, Submission};
use backchannel_store_postgres::PostgresStore;
use common::{Schemas, database_url, open, with_schemas};

const ITEMS: u32 = 1_000;
const TALKS: u8 = 4;
const NOW: u64 = 1_700_000_000_000;

/// Fires due items through `store`, `limit` at a time, until a call finds
/// nothing left to claim.
async fn fire_all(store: &PostgresStore, limit: usize) -> Vec<Fired> {
    let key = log_key();
    let mut all = Vec::new();
    loop {
        let fired = store.fire_due(NOW, limit, &key).await.unwrap();
        if fired.is_empty() {
            return all;
        }
        all.extend(fired);
        // Let the other store's calls in between ours.
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_fire_each_item_once() {
    let Some(url) = database_url("two_stores_fire_each_item_once") else {
        return;
    };
    let at = url.clone();
    with_schemas(&url, move |schemas: Schemas| async move {
        let url = at;
        let schema = schemas.fresh();
        let (a, b) = (open(&url, &schema).await, open(&url, &schema).await);
        let talks: Vec<TalksId> = (1..=TALKS).map(talks_id).collect();
        for (n, &t) in (1..=TALKS).zip(&talks) {
            a.create_talks(&talks_record(t), &access_list(n, 0))
                .await
                .unwrap();
        }
        let senders = [
            sender(labels::US_HEAD_DEVICE),
            sender(labels::IRAN_HEAD_DEVICE),
            sender(labels::OMAN_AUTHORITY),
        ];
        // Item k: talks k % 4, one of three senders, its own key; due
        // times spread over the past, several items per due time.
        let items: Vec<ScheduledRecord> = (0..ITEMS)
            .map(|k| {
                let mut id = [0x51; 16];
                id[12..].copy_from_slice(&k.to_be_bytes());
                ScheduledRecord {
                    id,
                    due_ms: NOW - u64::from(k % 97) * 10,
                    submission: submission(
                        talks[(k % u32::from(TALKS)) as usize],
                        senders[(k % 3) as usize],
                        k,
                        0,
                    ),
                }
            })
            .collect();
        // Scheduled through both stores at once.
        let (ha, hb) = items.split_at(items.len() / 2);
        let (ra, rb) = tokio::join!(
            async {
                for i in ha {
                    a.schedule(i).await.unwrap();
                }
            },
            async {
                for i in hb {
                    b.schedule(i).await.unwrap();
                }
            }
        );
        let ((), ()) = (ra, rb);
        assert_eq!(a.scheduled_count().await.unwrap(), u64::from(ITEMS));
        // Something not yet due stays.
        let later = ScheduledRecord {
            id: [0x52; 16],
            due_ms: NOW + 1,
            submission: submission(talks[0], senders[0], ITEMS, 0),
        };
        a.schedule(&later).await.unwrap();

        let (fa, fb) = tokio::join!(fire_all(&a, 16), fire_all(&b, 16));
        assert!(
            !fa.is_empty() && !fb.is_empty(),
            "both stores fired some ({} and {})",
            fa.len(),
            fb.len()
        );
        assert_eq!(fa.len() + fb.len(), ITEMS as usize, "every item fired");
        let by_id: BTreeMap<[u8; 16], &Item> = items.iter().map(|i| (i.id, i)).collect();
        let mut fired_ids = BTreeSet::new();
        let node_key = log_key().public_key();
        let mut placed: BTreeMap<TalksId, BTreeMap<u64, Submission>> = BTreeMap::new();
        for f in fa.iter().chain(&fb) {
            assert!(fired_ids.insert(f.id), "an item fired twice");
            let item = by_id.get(&f.id).expect("a scheduled item");
            let Outcome::Sequenced(p) = &f.outcome else {
                panic!("not sequenced: {:?}", f.outcome);
            };
            check_placement("fired", &node_key, &item.submission, p);
            let previous = placed
                .entry(item.submission.talks)
                .or_default()
                .insert(p.seq, item.submission.clone());
            assert!(previous.is_none(), "a seq handed out twice");
        }
        assert_eq!(fired_ids.len(), ITEMS as usize);
        for &t in &talks {
            let log = read_all(&a, t).await;
            let mine: Vec<&Item> = items.iter().filter(|i| i.submission.talks == t).collect();
            assert_eq!(log.len(), mine.len(), "each talks holds its items");
            let want: BTreeSet<_> = mine.iter().map(|i| i.submission.header_hash).collect();
            let got: BTreeSet<_> = log
                .iter()
                .map(|e| backchannel_crypto::sha256(&e.header))
                .collect();
            assert_eq!(got, want, "exactly its items' envelopes");
            let seqs = placed.get(&t).expect("fired into every talks");
            for (i, e) in log.iter().enumerate() {
                assert_eq!(e.seq, i as u64, "dense seqs");
                assert_eq!(
                    seqs.get(&e.seq).map(|s| &s.header),
                    Some(&e.header),
                    "the placement fire_due returned"
                );
            }
            assert_eq!(b.log_size(t).await.unwrap(), log.len() as u64);
        }
        assert_eq!(
            a.scheduled_count().await.unwrap(),
            1,
            "the later item waits"
        );
        assert_eq!(
            b.fire_due(NOW, MAX_FIRE_BATCH, &log_key()).await.unwrap(),
            []
        );
        let last = b
            .fire_due(NOW + 1, MAX_FIRE_BATCH, &log_key())
            .await
            .unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].id, later.id);
        assert_eq!(b.scheduled_count().await.unwrap(), 0);
        a.close().await;
        b.close().await;
    })
    .await;
}

type Item = ScheduledRecord;
