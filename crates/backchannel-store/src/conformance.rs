//! The conformance suite: the properties every [`Store`] backend has.
//!
//! A backend's tests call [`run`] with a function that opens a fresh, empty
//! store; every property runs on its own fresh store. Each property is a
//! `pub async fn` (so a failure names it, and a backend can run one alone
//! while debugging) and its name is printed to stderr before it runs.
//! [`crash_suite`] checks the crash model of [`MemoryStore`] (the only
//! backend that can crash on demand) against the same contract.
//!
//! This is test code living in the library so that other crates can run
//! it: it panics (with a message saying what broke) instead of returning
//! errors, and it uses only the fixed keys of
//! [`backchannel_statement::fixtures`], so every run is the same.
//!
//! One assumption beyond the trait's docs: a backend sends the
//! [`crate::Appended`] notification of a `sequence` call *before* that call
//! returns (after its sync), so the suite checks notifications with
//! `try_recv` and needs no timer.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;

use backchannel_codec::{Decode, RoomId, TalksId};
use backchannel_crypto::{Digest, KeyId, PublicKey, SecretKey, Signer, sha256};
use backchannel_statement::fixtures::{self, labels};
use backchannel_tlog::{
    Checkpoint, HashReader, LeafData, LogOrigin, MemoryHashStore, NodeOrigin, Receipt,
};
use tokio::sync::broadcast::error::TryRecvError;

use crate::memory::{MemoryStore, stored_hash_count};
use crate::{
    AccessListRecord, Appended, CheckpointRecord, MAX_READ, MAX_READ_BYTES, MAX_SEQUENCE_BATCH,
    MAX_TREE_HASHES, Outcome, Placement, Store, StoreError, StoredEnvelope, Submission,
    Subscription, TalksRecord,
};

/// Runs every property, each on a store from `fresh` (which must open a
/// new, empty store every time it is called).
pub async fn run<S, F, Fut>(fresh: F)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    macro_rules! properties {
        ($($name:ident),* $(,)?) => {$(
            eprintln!("store conformance: {}", stringify!($name));
            $name(&fresh().await).await;
        )*};
    }
    properties!(
        create_and_get_talks,
        unknown_talks,
        access_list_compare_and_swap,
        sequence_is_dense_per_talks,
        node_time_never_decreases,
        receipts_verify,
        idempotent_retries,
        read_pages,
        read_byte_budget,
        purge_keeps_proof_material,
        integrate_and_tree_hashes,
        tree_hashes_limits,
        checkpoint_note_compare_and_swap,
        subscribers_see_appends,
        batch_limit,
        concurrent_sequence,
    );
}

// ---------------------------------------------------------------------------
// Fixtures.

/// The node's log key used by the suite (fixture label `NODE_LOG`).
pub fn log_key() -> SecretKey {
    fixtures::key(labels::NODE_LOG)
}

/// The `n`-th talks id of the suite (`n < 16`).
pub fn talks_id(n: u8) -> TalksId {
    TalksId(fixtures::id(0xA0 | (n & 0x0f)))
}

/// A talks record for `talks`, opened by the Omani authority's key.
pub fn talks_record(talks: TalksId) -> TalksRecord {
    TalksRecord {
        talks,
        creator: fixtures::key(labels::OMAN_AUTHORITY).public_key().id(),
        created_at: 1_700_000_000_000,
    }
}

/// An access list record: the store treats the bytes as opaque, so these
/// are 64 bytes of `tag` (not a canonical access list), with their hash.
pub fn access_list(tag: u8, version: u64) -> AccessListRecord {
    let bytes = vec![tag; 64];
    AccessListRecord {
        hash: sha256(&bytes),
        bytes,
        version,
    }
}

/// The key id of the fixture key with label `label`, as a sender.
pub fn sender(label: u8) -> KeyId {
    fixtures::key(label).public_key().id()
}

/// A submission to `talks` by `sender` under idempotency key number `key`.
/// Header and body are derived from all four arguments, so a different
/// `variant` gives a different header under the same key (a conflict).
pub fn submission(talks: TalksId, sender: KeyId, key: u32, variant: u8) -> Submission {
    let mut seed = Vec::with_capacity(16 + 32 + 4 + 1);
    seed.extend_from_slice(talks.as_bytes());
    seed.extend_from_slice(sender.as_bytes());
    seed.extend_from_slice(&key.to_be_bytes());
    seed.push(variant);
    let h = sha256(&seed);
    let header: Vec<u8> = h.0.iter().copied().cycle().take(223).collect();
    let b = sha256(&h.0);
    let body: Vec<u8> = b.0.iter().copied().cycle().take(256).collect();
    let mut idempotency_key = [0u8; 16];
    idempotency_key[..4].copy_from_slice(&key.to_be_bytes());
    Submission {
        talks,
        room: RoomId(fixtures::id(0xC0 | (key & 0x0f) as u8)),
        sender,
        idempotency_key,
        header_hash: sha256(&header),
        header,
        body_hash: sha256(&body),
        body,
    }
}

/// The hashes leaves `[from, to)` add to `tree`, as `integrate` takes them.
pub fn hashes_between(tree: &MemoryHashStore, from: u64, to: u64) -> Vec<(u64, Digest)> {
    (stored_hash_count(from)..stored_hash_count(to))
        .map(|i| match tree.read_hashes(&[i]).as_deref() {
            Ok([h]) => (i, Digest(h.0)),
            other => panic!("reference tree lacks hash {i}: {other:?}"),
        })
        .collect()
}

/// A checkpoint of `talks` at `size`, signed by [`log_key`], as stored.
pub fn checkpoint_at(talks: TalksId, tree: &MemoryHashStore, size: u64) -> CheckpointRecord {
    let node = ok(NodeOrigin::new("mediator.example"), "node origin");
    let root = ok(tree.root_at(size), "reference tree root");
    let checkpoint = Checkpoint {
        origin: LogOrigin::new(&node, talks),
        size,
        root,
    };
    let signed = ok(checkpoint.sign(&log_key()), "signing a checkpoint");
    CheckpointRecord {
        size,
        note: signed.note().to_vec(),
    }
}

/// The envelope a store must hold for `sub` placed at `p`.
pub fn expected_envelope(sub: &Submission, p: &Placement) -> StoredEnvelope {
    StoredEnvelope {
        talks: sub.talks,
        seq: p.seq,
        node_time: p.node_time,
        room: sub.room,
        sender: sub.sender,
        header: sub.header.clone(),
        body: Some(sub.body.clone()),
        body_hash: sub.body_hash,
        leaf_hash: p.leaf_hash,
        receipt: p.receipt.clone(),
    }
}

/// Checks that `p` is a valid placement of `sub`: its leaf hash is the one
/// recomputed from the leaf data, and its receipt verifies under `node_key`.
pub fn check_placement(what: &str, node_key: &PublicKey, sub: &Submission, p: &Placement) {
    let leaf = LeafData {
        seq: p.seq,
        timestamp_ms: p.node_time,
        room: sub.room,
        header_hash: sub.header_hash,
        body_hash: sub.body_hash,
    }
    .hash();
    assert_eq!(
        p.leaf_hash, leaf,
        "{what}: leaf hash is not the recomputed one"
    );
    let receipt = ok(Receipt::from_canonical_bytes(&p.receipt), what);
    if let Err(e) = receipt.verify(node_key, sub.talks, p.seq, p.node_time, &leaf) {
        panic!("{what}: receipt does not verify: {e}");
    }
}

fn ok<T, E: Debug>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error {e:?}"),
    }
}

fn placed(o: &Outcome, what: &str) -> Placement {
    match o {
        Outcome::Sequenced(p) => p.clone(),
        other => panic!("{what}: expected a placement, got {other:?}"),
    }
}

async fn open<S: Store>(store: &S, n: u8) -> TalksId {
    let t = talks_id(n);
    ok(
        store
            .create_talks(&talks_record(t), &access_list(n, 0))
            .await,
        "create_talks",
    );
    t
}

async fn sequence<S: Store>(store: &S, batch: Vec<Submission>, clock_ms: u64) -> Vec<Outcome> {
    let n = batch.len();
    let out = ok(
        store.sequence(batch, clock_ms, &log_key()).await,
        "sequence",
    );
    assert_eq!(out.len(), n, "sequence: one outcome per submission");
    out
}

/// Every envelope of `talks`, read page by page.
pub async fn read_all<S: Store>(store: &S, talks: TalksId) -> Vec<StoredEnvelope> {
    let mut all: Vec<StoredEnvelope> = Vec::new();
    loop {
        let page = ok(store.read(talks, all.len() as u64, MAX_READ).await, "read");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

// ---------------------------------------------------------------------------
// Properties.

/// Talks are created once and read back; a second create is `TalksExists`
/// and changes nothing; a new talks is empty.
pub async fn create_and_get_talks<S: Store>(store: &S) {
    let t = talks_id(1);
    assert_eq!(ok(store.talks(t).await, "talks"), None);
    let rec = talks_record(t);
    let al = access_list(1, 0);
    ok(store.create_talks(&rec, &al).await, "create_talks");
    assert_eq!(ok(store.talks(t).await, "talks"), Some(rec.clone()));
    assert_eq!(
        ok(store.access_list(t).await, "access_list"),
        Some(al.clone())
    );

    let other = TalksRecord {
        created_at: rec.created_at + 1,
        ..rec.clone()
    };
    assert!(
        matches!(
            store.create_talks(&other, &access_list(9, 0)).await,
            Err(StoreError::TalksExists)
        ),
        "a second create of the same id must be TalksExists"
    );
    assert_eq!(ok(store.talks(t).await, "talks"), Some(rec));
    assert_eq!(ok(store.access_list(t).await, "access_list"), Some(al));

    assert_eq!(ok(store.log_size(t).await, "log_size"), 0);
    assert_eq!(ok(store.integrated_size(t).await, "integrated_size"), 0);
    assert_eq!(ok(store.checkpoint(t).await, "checkpoint"), None);
    assert!(ok(store.read(t, 0, 10).await, "read").is_empty());
    assert!(ok(store.tree_hashes(t, &[]).await, "tree_hashes").is_empty());

    // The first access list is version 0; times and versions fit 63 bits.
    let t3 = talks_id(3);
    assert!(
        matches!(
            store
                .create_talks(&talks_record(t3), &access_list(3, 1))
                .await,
            Err(StoreError::Limit(_))
        ),
        "a first access list of version 1 must be refused"
    );
    let late = TalksRecord {
        created_at: crate::MAX_NUMBER + 1,
        ..talks_record(t3)
    };
    assert!(
        matches!(
            store.create_talks(&late, &access_list(3, 0)).await,
            Err(StoreError::Limit(_))
        ),
        "a creation time of 2^63 must be refused"
    );
    assert_eq!(ok(store.talks(t3).await, "talks"), None);

    let t2 = open(store, 2).await;
    assert_eq!(
        ok(store.talks(t2).await, "talks").map(|r| r.talks),
        Some(t2)
    );
    assert_eq!(
        ok(store.access_list(t2).await, "access_list"),
        Some(access_list(2, 0))
    );
}

/// An unknown talks reads as absent or empty, never as an error, and a
/// batch naming it is refused whole with `UnknownTalks`.
pub async fn unknown_talks<S: Store>(store: &S) {
    let known = open(store, 1).await;
    let unknown = talks_id(9);
    assert_eq!(ok(store.talks(unknown).await, "talks"), None);
    assert_eq!(ok(store.access_list(unknown).await, "access_list"), None);
    assert_eq!(ok(store.log_size(unknown).await, "log_size"), 0);
    assert!(ok(store.read(unknown, 0, 10).await, "read").is_empty());
    assert_eq!(
        ok(store.integrated_size(unknown).await, "integrated_size"),
        0
    );
    assert_eq!(ok(store.checkpoint(unknown).await, "checkpoint"), None);
    assert!(ok(store.tree_hashes(unknown, &[]).await, "tree_hashes").is_empty());
    assert!(!ok(store.purge_body(unknown, 0).await, "purge_body"));

    let a = sender(labels::US_HEAD_DEVICE);
    let mut rx = store.subscribe();
    let batch = vec![submission(known, a, 1, 0), submission(unknown, a, 2, 0)];
    assert!(
        matches!(
            store.sequence(batch, 1000, &log_key()).await,
            Err(StoreError::UnknownTalks)
        ),
        "a batch naming an unknown talks must be UnknownTalks"
    );
    assert_eq!(ok(store.log_size(known).await, "log_size"), 0);
    assert!(ok(store.read(known, 0, 10).await, "read").is_empty());
    assert_eq!(
        rx.try_recv(),
        Err(TryRecvError::Empty),
        "a refused batch notifies nobody"
    );
    // Nothing was reserved or remembered: the known submission alone now
    // gets seq 0 as a new envelope.
    let out = sequence(store, vec![submission(known, a, 1, 0)], 1000).await;
    assert_eq!(placed(&out[0], "after UnknownTalks").seq, 0);

    assert!(
        matches!(
            store
                .replace_access_list(unknown, access_list(9, 0).hash, &access_list(9, 1))
                .await,
            Err(StoreError::UnknownTalks)
        ),
        "replace_access_list on an unknown talks must fail with UnknownTalks"
    );
    assert_eq!(ok(store.access_list(unknown).await, "access_list"), None);
    let c0 = CheckpointRecord {
        size: 0,
        note: b"an opaque note\n".to_vec(),
    };
    assert!(
        matches!(
            store.integrate(unknown, 0, 0, &[], &c0).await,
            Err(StoreError::UnknownTalks)
        ),
        "integrate on an unknown talks must fail with UnknownTalks"
    );
    assert_eq!(ok(store.checkpoint(unknown).await, "checkpoint"), None);
    assert!(
        matches!(
            store
                .replace_checkpoint_note(unknown, 0, &c0.note, b"x")
                .await,
            Err(StoreError::UnknownTalks)
        ),
        "replace_checkpoint_note on an unknown talks must fail with UnknownTalks"
    );
    assert_eq!(ok(store.talks(unknown).await, "talks"), None);
}

/// The access list changes only by compare-and-swap on its current hash,
/// to the next version.
pub async fn access_list_compare_and_swap<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let v0 = access_list(1, 0);
    let v1 = access_list(2, 1);
    let stale = |r: Result<(), StoreError>, what: &str| {
        assert!(
            matches!(r, Err(StoreError::Stale)),
            "{what}: want Stale, got {r:?}"
        );
    };
    stale(
        store.replace_access_list(t, v1.hash, &v1).await,
        "wrong expected hash",
    );
    stale(
        store
            .replace_access_list(t, v0.hash, &access_list(2, 0))
            .await,
        "same version",
    );
    stale(
        store
            .replace_access_list(t, v0.hash, &access_list(2, 2))
            .await,
        "version skipped",
    );
    assert_eq!(
        ok(store.access_list(t).await, "access_list"),
        Some(v0.clone())
    );

    ok(
        store.replace_access_list(t, v0.hash, &v1).await,
        "CAS v0 → v1",
    );
    assert_eq!(
        ok(store.access_list(t).await, "access_list"),
        Some(v1.clone())
    );

    let v2 = access_list(3, 2);
    stale(
        store.replace_access_list(t, v0.hash, &v2).await,
        "the old hash after a change",
    );
    ok(
        store.replace_access_list(t, v1.hash, &v2).await,
        "CAS v1 → v2",
    );
    assert_eq!(ok(store.access_list(t).await, "access_list"), Some(v2));
}

/// Seqs are dense from 0 per talks, assigned in batch order, independently
/// for each talks of one batch; stored rows are the submissions.
pub async fn sequence_is_dense_per_talks<S: Store>(store: &S) {
    let (t1, t2) = (open(store, 1).await, open(store, 2).await);
    let a = sender(labels::US_HEAD_DEVICE);
    assert!(
        sequence(store, Vec::new(), 1000).await.is_empty(),
        "an empty batch"
    );
    let mut subs = Vec::new();
    let mut places = Vec::new();
    let batch: Vec<Submission> = [t1, t2, t1, t1, t2]
        .iter()
        .enumerate()
        .map(|(i, &t)| submission(t, a, i as u32, 0))
        .collect();
    let out = sequence(store, batch.clone(), 1000).await;
    let seqs: Vec<u64> = out.iter().map(|o| placed(o, "batch 1").seq).collect();
    assert_eq!(
        seqs,
        [0, 0, 1, 2, 1],
        "dense seqs per talks, in batch order"
    );
    subs.extend(batch);
    places.extend(out.iter().map(|o| placed(o, "batch 1")));

    let batch: Vec<Submission> = (10..13).map(|i| submission(t1, a, i, 0)).collect();
    let out = sequence(store, batch.clone(), 1001).await;
    let seqs: Vec<u64> = out.iter().map(|o| placed(o, "batch 2").seq).collect();
    assert_eq!(seqs, [3, 4, 5], "a later batch continues the log");
    subs.extend(batch);
    places.extend(out.iter().map(|o| placed(o, "batch 2")));

    assert_eq!(ok(store.log_size(t1).await, "log_size"), 6);
    assert_eq!(ok(store.log_size(t2).await, "log_size"), 2);
    for t in [t1, t2] {
        let want: Vec<StoredEnvelope> = subs
            .iter()
            .zip(&places)
            .filter(|(s, _)| s.talks == t)
            .map(|(s, p)| expected_envelope(s, p))
            .collect();
        assert_eq!(read_all(store, t).await, want, "stored rows of {t}");
    }
}

/// A log's node timestamps are `max(previous, clock)`: a clock going
/// backwards never makes them decrease, and each talks has its own.
pub async fn node_time_never_decreases<S: Store>(store: &S) {
    let (t1, t2) = (open(store, 1).await, open(store, 2).await);
    let a = sender(labels::US_HEAD_DEVICE);
    let mut k = 0;
    let mut next = |t| {
        k += 1;
        submission(t, a, k, 0)
    };
    let check = async |batch: Vec<Submission>, clock: u64, want: &[u64]| {
        let out = sequence(store, batch, clock).await;
        let times: Vec<u64> = out.iter().map(|o| placed(o, "time").node_time).collect();
        assert_eq!(times, want, "node times at clock {clock}");
    };
    check(vec![next(t1)], 1000, &[1000]).await;
    check(vec![next(t1), next(t1)], 500, &[1000, 1000]).await;
    check(vec![next(t2)], 500, &[500]).await;
    check(vec![next(t1), next(t2)], 700, &[1000, 700]).await;
    check(vec![next(t1), next(t2)], 2000, &[2000, 2000]).await;
    check(vec![next(t2)], 0, &[2000]).await;
    let times: Vec<u64> = read_all(store, t1)
        .await
        .iter()
        .map(|e| e.node_time)
        .collect();
    assert_eq!(times, [1000, 1000, 1000, 1000, 2000]);
}

/// Every placement's receipt verifies under the log key with the leaf hash
/// recomputed from the leaf data; the new envelopes of one call share one
/// signed batch; stored rows carry the same leaf hash and receipt.
pub async fn receipts_verify<S: Store>(store: &S) {
    let (t1, t2) = (open(store, 1).await, open(store, 2).await);
    let a = sender(labels::US_HEAD_DEVICE);
    let b = sender(labels::IRAN_HEAD_DEVICE);
    let node_key = log_key().public_key();
    let mut all = Vec::new();
    // (submission, whether it is new in its batch)
    for (clock, batch) in [
        (
            1234,
            vec![
                (submission(t1, a, 1, 0), true),
                (submission(t2, b, 1, 0), true),
                (submission(t1, b, 2, 0), true),
            ],
        ),
        (1300, vec![(submission(t1, a, 3, 0), true)]),
        (
            1200,
            vec![
                (submission(t2, a, 4, 0), true),
                (submission(t1, a, 1, 0), false), // a retry: not in this batch
                (submission(t2, a, 5, 0), true),
            ],
        ),
    ] {
        let fresh = batch.iter().filter(|(_, new)| *new).count() as u64;
        let subs: Vec<Submission> = batch.iter().map(|(s, _)| s.clone()).collect();
        let out = sequence(store, subs, clock).await;
        let mut roots = BTreeSet::new();
        let mut indexes = BTreeSet::new();
        for ((s, new), o) in batch.iter().zip(&out) {
            let p = placed(o, "receipts");
            check_placement("receipt", &node_key, s, &p);
            let r = ok(Receipt::from_canonical_bytes(&p.receipt), "receipt");
            if !new {
                continue;
            }
            assert_eq!(
                r.batch_size(),
                fresh,
                "one batch per call, of its new envelopes"
            );
            roots.insert(*r.batch_root());
            indexes.insert(r.index());
            // Verification means something: another seq fails.
            assert!(
                r.verify(&node_key, s.talks, p.seq + 1, p.node_time, &p.leaf_hash)
                    .is_err(),
                "a receipt must not verify for another seq"
            );
            all.push((s.clone(), p));
        }
        assert_eq!(roots.len(), 1, "one signed batch per call");
        assert_eq!(indexes, (0..fresh).collect(), "distinct batch indexes");
    }
    for (s, p) in &all {
        let row = ok(store.read(s.talks, p.seq, 1).await, "read");
        assert_eq!(row, [expected_envelope(s, p)], "stored row at {}", p.seq);
    }
}

/// Idempotency: the same (talks, sender, key) with the same header gets the
/// original placement back (in a later batch or the same one); with another
/// header it is a `Conflict` naming the original's seq and writes nothing;
/// keys are scoped per (talks, sender).
pub async fn idempotent_retries<S: Store>(store: &S) {
    let (t1, t2) = (open(store, 1).await, open(store, 2).await);
    let a = sender(labels::US_HEAD_DEVICE);
    let b = sender(labels::IRAN_HEAD_DEVICE);
    let node_key = log_key().public_key();

    let first = sequence(
        store,
        vec![submission(t1, a, 1, 0), submission(t1, a, 2, 0)],
        1000,
    )
    .await;
    let p1 = placed(&first[0], "first");
    assert_eq!(p1.seq, 0);

    let batch = vec![
        submission(t1, a, 3, 0), // new: seq 2
        submission(t1, a, 1, 0), // retry from the earlier batch
        submission(t1, a, 3, 0), // retry within this batch
        submission(t1, a, 2, 1), // another header under an earlier key
        submission(t1, a, 3, 1), // another header under this batch's key
        submission(t1, b, 1, 0), // same key, other sender: new, seq 3
        submission(t2, a, 1, 0), // same key, other talks: new, seq 0
    ];
    let out = sequence(store, batch.clone(), 5000).await;
    let p3 = placed(&out[0], "new in batch 2");
    assert_eq!(p3.seq, 2);
    assert_eq!(
        out[1],
        Outcome::Sequenced(p1.clone()),
        "retry keeps the original"
    );
    assert_eq!(out[2], Outcome::Sequenced(p3.clone()), "in-batch retry");
    assert_eq!(
        out[3],
        Outcome::Conflict { seq: 1 },
        "conflict with an earlier batch"
    );
    assert_eq!(
        out[4],
        Outcome::Conflict { seq: 2 },
        "conflict within the batch"
    );
    assert_eq!(
        placed(&out[5], "other sender").seq,
        3,
        "keys are per sender"
    );
    assert_eq!(placed(&out[6], "other talks").seq, 0, "keys are per talks");
    for (s, o) in batch.iter().zip(&out) {
        if let Outcome::Sequenced(p) = o {
            check_placement("idempotency", &node_key, s, p);
        }
    }
    assert_eq!(ok(store.log_size(t1).await, "log_size"), 4);
    assert_eq!(ok(store.log_size(t2).await, "log_size"), 1);
    let headers: Vec<Vec<u8>> = read_all(store, t1)
        .await
        .into_iter()
        .map(|e| e.header)
        .collect();
    let want: Vec<Vec<u8>> = [(a, 1), (a, 2), (a, 3), (b, 1)]
        .iter()
        .map(|&(s, k)| submission(t1, s, k, 0).header)
        .collect();
    assert_eq!(headers, want, "no conflicting header is stored");

    // Batches of retries and conflicts only: nothing new, nothing written,
    // same bytes even at another clock.
    let out = sequence(
        store,
        vec![submission(t1, a, 3, 0), submission(t1, a, 2, 7)],
        9000,
    )
    .await;
    assert_eq!(
        out,
        [Outcome::Sequenced(p3), Outcome::Conflict { seq: 1 }],
        "retry-only batch"
    );
    assert_eq!(ok(store.log_size(t1).await, "log_size"), 4);
}

/// Reads return exactly the rows `from <= seq`, in order, at most `limit`,
/// capped at [`MAX_READ`].
pub async fn read_pages<S: Store>(store: &S) {
    let (t1, t2) = (open(store, 1).await, open(store, 2).await);
    let a = sender(labels::US_HEAD_DEVICE);
    let n = MAX_READ as u64 + 5;
    let batch: Vec<Submission> = (0..n as u32).map(|i| submission(t1, a, i, 0)).collect();
    let out = sequence(store, batch.clone(), 1000).await;
    let want: Vec<StoredEnvelope> = batch
        .iter()
        .zip(&out)
        .map(|(s, o)| expected_envelope(s, &placed(o, "paging")))
        .collect();
    let check = async |from: u64, limit: usize, range: std::ops::Range<usize>| {
        let got = ok(store.read(t1, from, limit).await, "read");
        assert!(
            got == want[range.clone()],
            "read(from {from}, limit {limit}) must return seqs {range:?}, got {} rows starting at {:?}",
            got.len(),
            got.first().map(|e| e.seq)
        );
    };
    let max = MAX_READ;
    let n = n as usize;
    check(0, 10, 0..10).await;
    check(10, 10, 10..20).await;
    check(7, 1, 7..8).await;
    check(0, 0, 0..0).await;
    check(max as u64, 10, max..n).await;
    check(n as u64 - 1, 10, n - 1..n).await;
    check(n as u64, 10, n..n).await;
    check(u64::MAX, 10, n..n).await;
    check(0, usize::MAX, 0..max).await;
    check(3, max + 1, 3..max + 3).await;
    assert_eq!(read_all(store, t1).await, want);
    assert!(ok(store.read(t2, 0, 10).await, "read").is_empty());
}

/// `submission` with a body of `len` bytes (the store treats bodies as
/// opaque; the node refuses bodies over `backchannel_statement`'s
/// `header::MAX_BODY` before they reach it).
pub fn with_body(mut sub: Submission, len: usize) -> Submission {
    let fill = sub.header_hash.0[0];
    sub.body = vec![fill; len];
    sub.body_hash = sha256(&sub.body);
    sub
}

/// The bytes of a row that count against [`MAX_READ_BYTES`].
fn row_bytes(e: &StoredEnvelope) -> usize {
    e.header.len() + e.body.as_ref().map_or(0, Vec::len)
}

/// How many of `rows` (from the first) one read with `limit` returns: at
/// most `limit` (capped at [`MAX_READ`]), and no more than fit in
/// [`MAX_READ_BYTES`], but at least one.
fn page_len(rows: &[StoredEnvelope], limit: usize) -> usize {
    let mut total = 0usize;
    let mut n = 0;
    for e in rows.iter().take(limit.min(MAX_READ)) {
        total += row_bytes(e);
        if n > 0 && total > MAX_READ_BYTES {
            break;
        }
        n += 1;
    }
    n
}

/// Reads stop before the row that would take a page's header and body
/// bytes past [`MAX_READ_BYTES`], but always return at least one row if any
/// exists (even one larger than the budget by itself); purged bodies count
/// nothing; paging by seq still reads every row exactly once.
pub async fn read_byte_budget<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let a = sender(labels::US_HEAD_DEVICE);
    // 1 MiB, `backchannel_statement::header::MAX_BODY`: the largest legal body.
    const MAX_BODY: usize = 1 << 20;
    let large = MAX_READ_BYTES / MAX_BODY + 4;
    let mut k = 0u32;
    let mut next = |len: usize| {
        k += 1;
        with_body(submission(t, a, k, 0), len)
    };
    let mut batches: Vec<Vec<Submission>> = Vec::new();
    batches.push((0..3).map(|_| next(256)).collect());
    // One batch per large body keeps each call's memory modest.
    for _ in 0..large {
        batches.push(vec![next(MAX_BODY)]);
    }
    // One row larger than the whole budget, then small ones again.
    batches.push(vec![next(MAX_READ_BYTES + 1)]);
    batches.push((0..2).map(|_| next(256)).collect());
    let mut want: Vec<StoredEnvelope> = Vec::new();
    for batch in batches {
        let out = sequence(store, batch.clone(), 1000).await;
        want.extend(
            batch
                .iter()
                .zip(&out)
                .map(|(s, o)| expected_envelope(s, &placed(o, "budget"))),
        );
    }
    let n = want.len();
    let huge = 3 + large;

    let check = async |want: &[StoredEnvelope], from: usize, limit: usize| -> usize {
        let got = ok(store.read(t, from as u64, limit).await, "read");
        let len = page_len(&want[from.min(n)..], limit);
        assert!(
            got == want[from.min(n)..from.min(n) + len],
            "read(from {from}, limit {limit}) must return {len} rows, got {} rows starting at {:?}",
            got.len(),
            got.first().map(|e| e.seq)
        );
        len
    };
    // From the start: the small rows and as many large ones as fit.
    let first = check(&want, 0, MAX_READ).await;
    assert!(
        first > 3 && first < huge,
        "the budget must cut the first page among the large rows, got {first} rows"
    );
    let bytes: usize = want[..first].iter().map(row_bytes).sum();
    assert!(bytes <= MAX_READ_BYTES, "a page of {bytes} bytes");
    assert!(
        bytes + row_bytes(&want[first]) > MAX_READ_BYTES,
        "the page stops only when the next row would not fit"
    );
    // The limit still applies below the budget.
    assert_eq!(check(&want, 0, 2).await, 2);
    assert_eq!(check(&want, 1, 0).await, 0);
    // The row before the oversized one comes alone, and so does that row.
    assert_eq!(check(&want, huge - 1, MAX_READ).await, 1);
    assert_eq!(check(&want, huge, MAX_READ).await, 1);
    assert_eq!(check(&want, huge, 1).await, 1);
    assert_eq!(check(&want, huge + 1, MAX_READ).await, 2);
    assert_eq!(check(&want, n, MAX_READ).await, 0);
    // Paging by seq reads everything once.
    assert!(
        read_all(store, t).await == want,
        "paging through large rows"
    );

    // A purged body counts nothing: after purging the large bodies of the
    // first page, it reaches further.
    for row in &mut want[3..first] {
        assert!(ok(store.purge_body(t, row.seq).await, "purge_body"));
        row.body = None;
    }
    let again = check(&want, 0, MAX_READ).await;
    assert!(
        again > first,
        "purged bodies must not count: {again} rows after purging, {first} before"
    );
}

/// Purging drops the body and keeps header, body hash, leaf and receipt
/// (which still verifies); a second purge, or a missing envelope, is
/// `Ok(false)`; a retry after the purge still gets its placement.
pub async fn purge_keeps_proof_material<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let a = sender(labels::US_HEAD_DEVICE);
    let batch: Vec<Submission> = (0..3).map(|i| submission(t, a, i, 0)).collect();
    let out = sequence(store, batch.clone(), 1000).await;
    let before = read_all(store, t).await;

    assert!(
        ok(store.purge_body(t, 1).await, "purge_body"),
        "first purge"
    );
    let after = read_all(store, t).await;
    assert_eq!(after[0], before[0]);
    assert_eq!(after[2], before[2]);
    let want = StoredEnvelope {
        body: None,
        ..before[1].clone()
    };
    assert_eq!(after[1], want, "only the body goes");
    let p = placed(&out[1], "purged");
    let kept = Placement {
        seq: after[1].seq,
        node_time: after[1].node_time,
        leaf_hash: after[1].leaf_hash,
        receipt: after[1].receipt.clone(),
    };
    assert_eq!(kept, p);
    // The verifier recomputes the leaf from the header and kept body hash.
    let from_row = Submission {
        header_hash: sha256(&after[1].header),
        body_hash: after[1].body_hash,
        ..batch[1].clone()
    };
    check_placement("after purge", &log_key().public_key(), &from_row, &kept);

    assert!(
        !ok(store.purge_body(t, 1).await, "purge_body"),
        "already purged"
    );
    assert!(
        !ok(store.purge_body(t, 3).await, "purge_body"),
        "past the end"
    );
    assert!(
        !ok(store.purge_body(t, u64::MAX).await, "purge_body"),
        "u64::MAX"
    );
    assert_eq!(read_all(store, t).await, after);

    let retry = sequence(store, vec![batch[1].clone()], 2000).await;
    assert_eq!(retry, [Outcome::Sequenced(p)], "retry after purge");
    assert_eq!(ok(store.log_size(t).await, "log_size"), 3);
}

/// Integration stores the tree hashes and checkpoint, fenced on the
/// integrated size; `tree_hashes` returns them in the order asked.
pub async fn integrate_and_tree_hashes<S: Store>(store: &S) {
    let (t, other) = (open(store, 1).await, open(store, 2).await);
    let a = sender(labels::US_HEAD_DEVICE);
    let batch: Vec<Submission> = (0..7).map(|i| submission(t, a, i, 0)).collect();
    sequence(store, batch, 1000).await;
    sequence(store, vec![submission(other, a, 1, 0)], 1000).await;
    let mut tree = MemoryHashStore::new();
    for e in read_all(store, t).await {
        ok(tree.append(&e.leaf_hash), "reference tree");
    }

    let c3 = checkpoint_at(t, &tree, 3);
    let h3 = hashes_between(&tree, 0, 3);
    assert_eq!(h3.len() as u64, stored_hash_count(3));
    ok(store.integrate(t, 0, 3, &h3, &c3).await, "integrate [0, 3)");
    assert_eq!(ok(store.integrated_size(t).await, "integrated_size"), 3);
    assert_eq!(
        ok(store.checkpoint(t).await, "checkpoint"),
        Some(c3.clone())
    );
    let check_hashes = async |upto: u64| {
        let want = hashes_between(&tree, 0, upto);
        let idx: Vec<u64> = want.iter().map(|&(i, _)| i).collect();
        let got = ok(store.tree_hashes(t, &idx).await, "tree_hashes");
        let hashes: Vec<Digest> = want.iter().map(|&(_, h)| h).collect();
        assert_eq!(got, hashes, "tree hashes up to {upto}");
        let rev: Vec<u64> = idx.iter().rev().copied().collect();
        let got = ok(store.tree_hashes(t, &rev).await, "tree_hashes");
        let back: Vec<Digest> = hashes.iter().rev().copied().collect();
        assert_eq!(got, back, "tree hashes in the order asked");
        let twice = ok(store.tree_hashes(t, &[idx[0], idx[0]]).await, "tree_hashes");
        assert_eq!(twice, [hashes[0], hashes[0]], "an index asked twice");
    };
    check_hashes(3).await;

    // Fenced: a `from` that is not the integrated size writes nothing.
    let c7 = checkpoint_at(t, &tree, 7);
    for from in [0, 2, 4] {
        let r = store
            .integrate(t, from, 7, &hashes_between(&tree, from, 7), &c7)
            .await;
        assert!(
            matches!(r, Err(StoreError::Stale)),
            "integrate from {from} at size 3: want Stale, got {r:?}"
        );
    }
    assert_eq!(ok(store.integrated_size(t).await, "integrated_size"), 3);
    assert_eq!(ok(store.checkpoint(t).await, "checkpoint"), Some(c3));
    check_hashes(3).await;

    ok(
        store
            .integrate(t, 3, 7, &hashes_between(&tree, 3, 7), &c7)
            .await,
        "integrate [3, 7)",
    );
    assert_eq!(ok(store.integrated_size(t).await, "integrated_size"), 7);
    assert_eq!(ok(store.checkpoint(t).await, "checkpoint"), Some(c7));
    check_hashes(7).await;
    // Another talks is untouched.
    assert_eq!(ok(store.integrated_size(other).await, "integrated_size"), 0);
    assert_eq!(ok(store.checkpoint(other).await, "checkpoint"), None);
}

/// `tree_hashes` refuses what a caller (often a peer asking for a proof)
/// should not ask: an index at or beyond the integrated tree, on a known or
/// unknown talks, and more than [`MAX_TREE_HASHES`] indexes — all `Limit`,
/// never `Corrupt`, checked for the whole call.
pub async fn tree_hashes_limits<S: Store>(store: &S) {
    let (t, bare) = (open(store, 1).await, open(store, 2).await);
    let a = sender(labels::US_HEAD_DEVICE);
    let batch: Vec<Submission> = (0..7).map(|i| submission(t, a, i, 0)).collect();
    sequence(store, batch, 1000).await;
    sequence(store, vec![submission(bare, a, 1, 0)], 1000).await;
    let mut tree = MemoryHashStore::new();
    for e in read_all(store, t).await {
        ok(tree.append(&e.leaf_hash), "reference tree");
    }
    let limit = |r: Result<Vec<Digest>, StoreError>, what: &str| {
        assert!(
            matches!(r, Err(StoreError::Limit(_))),
            "{what}: want Limit, got {r:?}"
        );
    };

    // Nothing integrated yet: every index lies beyond the tree, although
    // the log has leaves.
    limit(store.tree_hashes(t, &[0]).await, "before any integration");
    limit(
        store.tree_hashes(bare, &[0]).await,
        "a talks never integrated",
    );
    limit(
        store.tree_hashes(talks_id(9), &[0]).await,
        "an unknown talks",
    );

    let c3 = checkpoint_at(t, &tree, 3);
    ok(
        store
            .integrate(t, 0, 3, &hashes_between(&tree, 0, 3), &c3)
            .await,
        "integrate [0, 3)",
    );
    let stored = stored_hash_count(3);
    let all: Vec<u64> = (0..stored).collect();
    let want: Vec<Digest> = hashes_between(&tree, 0, 3)
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    assert_eq!(ok(store.tree_hashes(t, &all).await, "tree_hashes"), want);
    for (what, idx) in [
        ("the first index beyond the tree", vec![stored]),
        ("a hash the log will have but not yet", vec![stored + 1]),
        ("beyond after good ones", vec![0, stored - 1, stored]),
        ("beyond before good ones", vec![stored, 0]),
        ("the largest index", vec![u64::MAX]),
        ("2^63", vec![1 << 63]),
    ] {
        limit(store.tree_hashes(t, &idx).await, what);
    }

    // The count limit: exactly MAX_TREE_HASHES is served, one more is not.
    let many = vec![0u64; MAX_TREE_HASHES];
    let got = ok(store.tree_hashes(t, &many).await, "MAX_TREE_HASHES indexes");
    assert_eq!(got, vec![want[0]; MAX_TREE_HASHES]);
    let too_many = vec![0u64; MAX_TREE_HASHES + 1];
    limit(
        store.tree_hashes(t, &too_many).await,
        "MAX_TREE_HASHES + 1 indexes",
    );

    // Integration moves the bound, for this talks only.
    let c7 = checkpoint_at(t, &tree, 7);
    ok(
        store
            .integrate(t, 3, 7, &hashes_between(&tree, 3, 7), &c7)
            .await,
        "integrate [3, 7)",
    );
    let stored7 = stored_hash_count(7);
    let got = ok(
        store.tree_hashes(t, &[stored, stored7 - 1]).await,
        "tree_hashes after the second integration",
    );
    let h = |i: u64| match tree.read_hashes(&[i]).as_deref() {
        Ok([h]) => Digest(h.0),
        other => panic!("reference tree lacks hash {i}: {other:?}"),
    };
    assert_eq!(got, [h(stored), h(stored7 - 1)]);
    limit(store.tree_hashes(t, &[stored7]).await, "beyond size 7");
    limit(store.tree_hashes(bare, &[0]).await, "another talks");
}

/// The latest checkpoint's note changes only by compare-and-swap on its
/// size and current note.
pub async fn checkpoint_note_compare_and_swap<S: Store>(store: &S) {
    let (t, bare) = (open(store, 1).await, open(store, 2).await);
    let a = sender(labels::US_HEAD_DEVICE);
    let batch: Vec<Submission> = (0..3).map(|i| submission(t, a, i, 0)).collect();
    sequence(store, batch, 1000).await;
    let mut tree = MemoryHashStore::new();
    for e in read_all(store, t).await {
        ok(tree.append(&e.leaf_hash), "reference tree");
    }
    let c2 = checkpoint_at(t, &tree, 2);
    ok(
        store
            .integrate(t, 0, 2, &hashes_between(&tree, 0, 2), &c2)
            .await,
        "integrate",
    );
    // The store keeps notes opaque; a cosignature line is just more bytes.
    let cosigned = |note: &[u8], witness: &str| {
        let mut n = note.to_vec();
        n.extend_from_slice(format!("\u{2014} {witness} AAAAAAAA\n").as_bytes());
        n
    };
    let n1 = cosigned(&c2.note, "w1.example");
    let n2 = cosigned(&n1, "w2.example");
    // A checkpoint is never re-signed in place: that would drop its
    // gathered cosignatures.
    ok(
        store.replace_checkpoint_note(t, 2, &c2.note, &n1).await,
        "replace_checkpoint_note",
    );
    assert!(
        matches!(
            store.integrate(t, 2, 2, &[], &c2).await,
            Err(StoreError::Limit(_))
        ),
        "integrate with from == to over an existing checkpoint must be Limit"
    );
    assert_eq!(
        ok(store.checkpoint(t).await, "checkpoint").map(|c| c.note),
        Some(n1.clone()),
        "the cosigned note must survive"
    );
    ok(
        store.replace_checkpoint_note(t, 2, &n1, &c2.note).await,
        "replace_checkpoint_note back",
    );
    let stale = |r: Result<(), StoreError>, what: &str| {
        assert!(
            matches!(r, Err(StoreError::Stale)),
            "{what}: want Stale, got {r:?}"
        );
    };

    stale(
        store.replace_checkpoint_note(bare, 0, b"", &n1).await,
        "no checkpoint yet",
    );
    assert_eq!(ok(store.checkpoint(bare).await, "checkpoint"), None);
    stale(
        store.replace_checkpoint_note(t, 2, &n1, &n2).await,
        "wrong expected note",
    );
    stale(
        store.replace_checkpoint_note(t, 3, &c2.note, &n1).await,
        "wrong size",
    );
    assert_eq!(
        ok(store.checkpoint(t).await, "checkpoint"),
        Some(c2.clone())
    );

    ok(
        store.replace_checkpoint_note(t, 2, &c2.note, &n1).await,
        "first cosignature",
    );
    let want = CheckpointRecord {
        size: 2,
        note: n1.clone(),
    };
    assert_eq!(ok(store.checkpoint(t).await, "checkpoint"), Some(want));
    stale(
        store.replace_checkpoint_note(t, 2, &c2.note, &n2).await,
        "the note before the change",
    );
    ok(
        store.replace_checkpoint_note(t, 2, &n1, &n2).await,
        "second cosignature",
    );

    let c3 = checkpoint_at(t, &tree, 3);
    ok(
        store
            .integrate(t, 2, 3, &hashes_between(&tree, 2, 3), &c3)
            .await,
        "integrate",
    );
    stale(
        store
            .replace_checkpoint_note(t, 2, &n2, &cosigned(&n2, "w3.example"))
            .await,
        "a checkpoint that is no longer the latest",
    );
    assert_eq!(ok(store.checkpoint(t).await, "checkpoint"), Some(c3));
}

/// A subscriber sees `Appended { talks, size }` for every talks a batch
/// grew, by the time `sequence` returns; a refused batch notifies nothing.
pub async fn subscribers_see_appends<S: Store>(store: &S) {
    let (t1, t2, t3) = (
        open(store, 1).await,
        open(store, 2).await,
        open(store, 3).await,
    );
    let a = sender(labels::US_HEAD_DEVICE);
    let mut rx = store.subscribe();
    let mut drain = || {
        let mut sizes = BTreeMap::new();
        loop {
            match rx.try_recv() {
                Ok(n) => {
                    let s = sizes.entry(n.talks).or_insert(0);
                    *s = n.size.max(*s);
                }
                Err(TryRecvError::Empty) => return sizes,
                Err(e) => panic!("subscription: {e}"),
            }
        }
    };
    sequence(
        store,
        vec![
            submission(t1, a, 1, 0),
            submission(t2, a, 2, 0),
            submission(t1, a, 3, 0),
        ],
        1000,
    )
    .await;
    assert_eq!(drain(), BTreeMap::from([(t1, 2), (t2, 1)]));
    sequence(store, vec![submission(t1, a, 4, 0)], 1000).await;
    assert_eq!(drain(), BTreeMap::from([(t1, 3)]));

    let r = store
        .sequence(
            vec![submission(t3, a, 5, 0), submission(talks_id(9), a, 6, 0)],
            1000,
            &log_key(),
        )
        .await;
    assert!(matches!(r, Err(StoreError::UnknownTalks)), "got {r:?}");
    assert_eq!(drain(), BTreeMap::new(), "a refused batch notifies nobody");
}

/// A batch of [`MAX_SEQUENCE_BATCH`] is sequenced (one signed batch); one
/// more is `Limit` and writes nothing.
pub async fn batch_limit<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let a = sender(labels::US_HEAD_DEVICE);
    let too_many: Vec<Submission> = (0..=MAX_SEQUENCE_BATCH as u32)
        .map(|i| submission(t, a, i, 0))
        .collect();
    let r = store.sequence(too_many.clone(), 1000, &log_key()).await;
    assert!(matches!(r, Err(StoreError::Limit(_))), "got {r:?}");
    assert_eq!(ok(store.log_size(t).await, "log_size"), 0);

    let mut batch = too_many;
    batch.truncate(MAX_SEQUENCE_BATCH);
    let out = sequence(store, batch.clone(), 1000).await;
    assert_eq!(
        ok(store.log_size(t).await, "log_size"),
        MAX_SEQUENCE_BATCH as u64
    );
    let node_key = log_key().public_key();
    for i in [0, MAX_SEQUENCE_BATCH / 2, MAX_SEQUENCE_BATCH - 1] {
        let p = placed(&out[i], "full batch");
        assert_eq!(p.seq, i as u64);
        check_placement("full batch", &node_key, &batch[i], &p);
        let r = ok(Receipt::from_canonical_bytes(&p.receipt), "receipt");
        assert_eq!(r.batch_size(), MAX_SEQUENCE_BATCH as u64);
    }
}

/// Many `sequence` calls in flight at once on one store: half submit the
/// very same submission (same talks, sender, idempotency key and header),
/// the others distinct keys (some across two talks). The shared one is
/// stored exactly once and every call that submitted it gets the same
/// outcome; the logs stay dense, every placement is the stored row, and
/// node times never decrease.
pub async fn concurrent_sequence<S: Store>(store: &S) {
    let (t1, t2) = (open(store, 1).await, open(store, 2).await);
    let a = sender(labels::US_HEAD_DEVICE);
    let b = sender(labels::IRAN_HEAD_DEVICE);
    let key = log_key();
    let node_key = key.public_key();
    let shared = submission(t1, a, 1, 0);
    const CALLS: u32 = 32;
    let batches: Vec<Vec<Submission>> = (0..CALLS)
        .map(|i| {
            if i % 2 == 0 {
                vec![shared.clone()]
            } else if i % 4 == 1 {
                vec![submission(t1, b, 100 + i, 0)]
            } else {
                vec![submission(t1, b, 100 + i, 0), submission(t2, a, 100 + i, 0)]
            }
        })
        .collect();
    let calls = batches.iter().enumerate().map(|(i, batch)| {
        let key = &key;
        // Clocks out of order, so concurrent calls race on node time too.
        let clock = 1000 + (i as u64 * 7919) % 101;
        async move { store.sequence(batch.clone(), clock, key).await }
    });
    let results = futures::future::join_all(calls).await;

    let mut shared_outcomes = Vec::new();
    let mut placements: BTreeMap<TalksId, Vec<(Submission, Placement)>> = BTreeMap::new();
    for (batch, r) in batches.iter().zip(results) {
        let out = ok(r, "concurrent sequence");
        assert_eq!(out.len(), batch.len(), "one outcome per submission");
        for (s, o) in batch.iter().zip(&out) {
            let p = placed(o, "concurrent sequence");
            check_placement("concurrent sequence", &node_key, s, &p);
            if *s == shared {
                shared_outcomes.push(o.clone());
            } else {
                placements.entry(s.talks).or_default().push((s.clone(), p));
            }
        }
    }
    assert_eq!(shared_outcomes.len(), CALLS as usize / 2);
    assert!(
        shared_outcomes.iter().all(|o| *o == shared_outcomes[0]),
        "every call with the same submission must get the same outcome: {shared_outcomes:?}"
    );
    let shared_placement = placed(&shared_outcomes[0], "shared");
    placements
        .entry(t1)
        .or_default()
        .push((shared.clone(), shared_placement));

    for t in [t1, t2] {
        let mut want = placements.remove(&t).unwrap_or_default();
        want.sort_by_key(|(_, p)| p.seq);
        let want: Vec<StoredEnvelope> = want.iter().map(|(s, p)| expected_envelope(s, p)).collect();
        let got = read_all(store, t).await;
        assert_eq!(
            ok(store.log_size(t).await, "log_size"),
            got.len() as u64,
            "log size of {t}"
        );
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.seq, i as u64, "seqs of {t} must be dense");
        }
        assert!(
            got.windows(2).all(|w| w[0].node_time <= w[1].node_time),
            "node times of {t} must never decrease"
        );
        assert!(got == want, "the stored rows of {t} are the placements");
    }
    let copies = read_all(store, t1)
        .await
        .iter()
        .filter(|e| e.header == shared.header)
        .count();
    assert_eq!(copies, 1, "the shared submission is stored {copies} times");
}

// ---------------------------------------------------------------------------
// The crash suite (MemoryStore only).

/// One operation of the crash scenario.
#[derive(Debug, Clone)]
enum Op {
    Create(TalksRecord, AccessListRecord),
    Sequence(Vec<Submission>, u64),
    ReplaceAccessList(TalksId, Digest, AccessListRecord),
    Integrate(TalksId, u64, u64, Vec<(u64, Digest)>, CheckpointRecord),
    Purge(TalksId, u64),
    ReplaceNote(TalksId, u64, Vec<u8>, Vec<u8>),
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Done {
    Unit,
    Outcomes(Vec<Outcome>),
    Purged(bool),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Create(..) => "create_talks",
            Op::Sequence(..) => "sequence",
            Op::ReplaceAccessList(..) => "replace_access_list",
            Op::Integrate(..) => "integrate",
            Op::Purge(..) => "purge_body",
            Op::ReplaceNote(..) => "replace_checkpoint_note",
        }
    }

    async fn apply(&self, store: &MemoryStore) -> Result<Done, StoreError> {
        let key = log_key();
        Ok(match self {
            Op::Create(t, al) => store.create_talks(t, al).await.map(|()| Done::Unit)?,
            Op::Sequence(batch, clock) => {
                Done::Outcomes(store.sequence(batch.clone(), *clock, &key).await?)
            }
            Op::ReplaceAccessList(t, expected, next) => store
                .replace_access_list(*t, *expected, next)
                .await
                .map(|()| Done::Unit)?,
            Op::Integrate(t, from, to, hashes, c) => store
                .integrate(*t, *from, *to, hashes, c)
                .await
                .map(|()| Done::Unit)?,
            Op::Purge(t, seq) => Done::Purged(store.purge_body(*t, *seq).await?),
            Op::ReplaceNote(t, size, expected, note) => store
                .replace_checkpoint_note(*t, *size, expected, note)
                .await
                .map(|()| Done::Unit)?,
        })
    }

    /// Checks what a repeat of this operation, after it took effect,
    /// returns: a sequence batch is idempotent (same outcomes); the rest
    /// are compare-and-swaps or creations that now refuse or do nothing.
    fn check_repeat(&self, first: &Done, repeat: Result<Done, StoreError>) {
        let fine = match (self, &repeat) {
            (Op::Sequence(..), Ok(d)) => d == first,
            (Op::Create(..), Err(StoreError::TalksExists)) => true,
            (Op::ReplaceAccessList(..) | Op::Integrate(..), Err(StoreError::Stale)) => true,
            (Op::ReplaceNote(..), Err(StoreError::Stale)) => true,
            (Op::Purge(..), Ok(Done::Purged(false))) => true,
            _ => false,
        };
        assert!(
            fine,
            "{} repeated after it took effect returned {repeat:?}",
            self.name()
        );
    }
}

/// What a store shows of some talks: everything the trait can read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    talks: Vec<TalksView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TalksView {
    record: Option<TalksRecord>,
    access: Option<AccessListRecord>,
    size: u64,
    log: Vec<StoredEnvelope>,
    integrated: u64,
    hashes: Vec<Digest>,
    checkpoint: Option<CheckpointRecord>,
}

async fn view<S: Store>(store: &S, talks: &[TalksId]) -> View {
    let mut out = Vec::new();
    for &t in talks {
        let integrated = ok(store.integrated_size(t).await, "integrated_size");
        let idx: Vec<u64> = (0..stored_hash_count(integrated)).collect();
        let v = TalksView {
            record: ok(store.talks(t).await, "talks"),
            access: ok(store.access_list(t).await, "access_list"),
            size: ok(store.log_size(t).await, "log_size"),
            log: read_all(store, t).await,
            integrated,
            hashes: ok(store.tree_hashes(t, &idx).await, "tree_hashes"),
            checkpoint: ok(store.checkpoint(t).await, "checkpoint"),
        };
        // Dense: row i has seq i, and the size says how many rows.
        assert_eq!(v.size, v.log.len() as u64, "log size of {t}");
        for (i, e) in v.log.iter().enumerate() {
            assert_eq!(e.seq, i as u64, "seqs of {t} must be dense");
        }
        let keys: BTreeSet<(KeyId, &[u8])> =
            v.log.iter().map(|e| (e.sender, &e.header[..])).collect();
        assert_eq!(
            keys.len(),
            v.log.len(),
            "an envelope of {t} is stored twice"
        );
        out.push(v);
    }
    View { talks: out }
}

/// The crash scenario, run once without a crash: the operations, their
/// results, and what the store shows after each.
struct Scenario {
    talks: Vec<TalksId>,
    ops: Vec<Op>,
    results: Vec<Done>,
    /// `views[i]`: after the first `i` operations.
    views: Vec<View>,
    /// Steps the operations run (reading the views takes more).
    steps: u64,
}

impl Scenario {
    async fn push(&mut self, store: &MemoryStore, op: Op) -> Done {
        let before = store.steps();
        let done = ok(op.apply(store).await, op.name());
        self.steps += store.steps() - before;
        self.ops.push(op);
        self.results.push(done.clone());
        self.views.push(view(store, &self.talks).await);
        done
    }

    /// Several talks, three group commits (the second with a retry of the
    /// first, an in-batch retry, two conflicts, a clock gone backwards; the
    /// third with retries only partly), an access-list change, two
    /// integrations, a purge and a cosignature.
    async fn build() -> Self {
        let store = MemoryStore::new();
        let talks = vec![talks_id(1), talks_id(2), talks_id(3)];
        let (t1, t2, t3) = (talks[0], talks[1], talks[2]);
        let mut s = Scenario {
            views: vec![view(&store, &talks).await],
            talks,
            ops: Vec::new(),
            results: Vec::new(),
            steps: 0,
        };
        let a = sender(labels::US_HEAD_DEVICE);
        let b = sender(labels::IRAN_HEAD_DEVICE);
        for (i, &t) in [t1, t2, t3].iter().enumerate() {
            s.push(
                &store,
                Op::Create(talks_record(t), access_list(i as u8 + 1, 0)),
            )
            .await;
        }
        let batch1 = vec![
            submission(t1, a, 1, 0),
            submission(t1, a, 2, 0),
            submission(t2, a, 1, 0),
        ];
        let Done::Outcomes(out1) = s.push(&store, Op::Sequence(batch1, 1000)).await else {
            panic!("sequence returns outcomes");
        };
        s.push(
            &store,
            Op::ReplaceAccessList(t1, access_list(1, 0).hash, access_list(11, 1)),
        )
        .await;
        let batch2 = vec![
            submission(t1, a, 3, 0),
            submission(t1, a, 1, 0), // retry of batch 1
            submission(t2, b, 1, 0),
            submission(t3, a, 1, 0),
            submission(t1, a, 3, 0), // in-batch retry
            submission(t1, a, 2, 1), // conflict with batch 1
            submission(t3, a, 2, 0),
            submission(t3, a, 2, 1), // in-batch conflict
        ];
        let Done::Outcomes(out2) = s.push(&store, Op::Sequence(batch2, 900)).await else {
            panic!("sequence returns outcomes");
        };
        assert_eq!(out2[1], out1[0], "scenario: retry keeps its placement");
        assert_eq!(out2[4], out2[0], "scenario: in-batch retry");
        assert_eq!(out2[5], Outcome::Conflict { seq: 1 });
        assert_eq!(out2[7], Outcome::Conflict { seq: 1 });

        let mut tree = MemoryHashStore::new();
        for e in read_all(&store, t1).await {
            ok(tree.append(&e.leaf_hash), "reference tree");
        }
        let size = tree.size();
        let c = checkpoint_at(t1, &tree, size);
        let note = c.note.clone();
        s.push(
            &store,
            Op::Integrate(t1, 0, size, hashes_between(&tree, 0, size), c),
        )
        .await;
        s.push(&store, Op::Purge(t1, 1)).await;
        let mut cosigned = note.clone();
        cosigned.extend_from_slice("\u{2014} w.example AAAAAAAA\n".as_bytes());
        s.push(&store, Op::ReplaceNote(t1, size, note, cosigned))
            .await;

        let batch3 = vec![
            submission(t2, a, 1, 0), // retry of batch 1
            submission(t1, a, 4, 0),
            submission(t3, a, 2, 0), // retry of batch 2
            submission(t2, a, 5, 0),
        ];
        let Done::Outcomes(out3) = s.push(&store, Op::Sequence(batch3, 2000)).await else {
            panic!("sequence returns outcomes");
        };
        assert_eq!(out3[0], out1[2], "scenario: retry keeps its placement");
        assert_eq!(out3[2], out2[6], "scenario: retry keeps its placement");

        for e in read_all(&store, t1).await.iter().skip(size as usize) {
            ok(tree.append(&e.leaf_hash), "reference tree");
        }
        let to = tree.size();
        s.push(
            &store,
            Op::Integrate(
                t1,
                size,
                to,
                hashes_between(&tree, size, to),
                checkpoint_at(t1, &tree, to),
            ),
        )
        .await;
        s
    }
}

/// Which of its two allowed outcomes a crashed operation had.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    absent: bool,
    present: bool,
}

/// The crash model: for every step `k` of a scenario covering every
/// writing operation (three group commits over several talks with retries
/// and conflicts, access-list change, two integrations, purge, checkpoint
/// note), crash at `k`, restart, and check that
/// (a) every envelope acknowledged before the crash is there once, with its
/// placement; (b) the crashed operation is entirely visible or entirely
/// absent, and both happen for each operation across the steps; (c) the
/// store then accepts the crashed operation again (a crashed batch gets the
/// same outcomes: no gaps, no duplicates) and the rest of the scenario
/// ends in the state of the run without a crash; (d) retried submissions
/// keep their original placement; (e) no [`Appended`] notification, from
/// before a crash or after it, announces more than is durable: after each
/// restart every size received is at most its talks' `log_size`. The
/// first retry is itself crashed at varying steps, so recovery from a
/// crash during recovery is covered too.
pub async fn crash_suite() {
    let s = Scenario::build().await;
    let mut seen = vec![Seen::default(); s.ops.len()];
    let mut points = BTreeSet::new();
    for k in 0..s.steps {
        let store = MemoryStore::new();
        // Subscribed before anything runs: every notification of the run
        // is checked against what survived each crash (e).
        let mut rx = store.subscribe();
        store.crash_at(k);
        let mut acked: Vec<(Submission, Placement)> = Vec::new();
        let mut crashed = None;
        let mut announced = BTreeMap::new();
        for (i, op) in s.ops.iter().enumerate() {
            match op.apply(&store).await {
                Ok(done) => {
                    assert_eq!(done, s.results[i], "step {k}: op {i} before the crash");
                    if let (Op::Sequence(batch, _), Done::Outcomes(out)) = (op, &done) {
                        for (sub, o) in batch.iter().zip(out) {
                            if let Outcome::Sequenced(p) = o {
                                acked.push((sub.clone(), p.clone()));
                            }
                        }
                    }
                }
                Err(StoreError::Unavailable(_)) => {
                    crashed = Some(i);
                    break;
                }
                Err(e) => panic!("step {k}: op {i} ({}) failed: {e:?}", op.name()),
            }
        }
        let Some(c) = crashed else {
            panic!("step {k}: the armed crash never happened");
        };
        let point = match store.crashed() {
            Some(p) => p,
            None => panic!("step {k}: the store says it did not crash"),
        };
        assert_eq!(point.index, k, "crash point index");
        assert_eq!(point.op, s.ops[c].name(), "crash point op");
        points.insert((point.op, point.step));
        let what = format!("crash at step {k} ({} / {})", point.op, point.step);
        assert!(
            matches!(
                store.log_size(s.talks[0]).await,
                Err(StoreError::Unavailable(_))
            ),
            "{what}: a crashed store refuses calls until restarted"
        );
        store.restart();
        check_notifications(&store, &mut rx, &mut announced, &what).await;

        let took_effect = check_after_crash(&store, &s, c, &acked, &what).await;
        if took_effect {
            seen[c].present = true;
        } else {
            seen[c].absent = true;
        }

        // Recover: repeat the crashed operation, itself crashed once early.
        let mut again = Some(k % 4);
        loop {
            let took_effect = view(&store, &s.talks).await == s.views[c + 1];
            if let Some(j) = again.take() {
                store.crash_at(j);
            }
            let r = s.ops[c].apply(&store).await;
            store.disarm();
            if matches!(r, Err(StoreError::Unavailable(_))) {
                store.restart();
                check_notifications(&store, &mut rx, &mut announced, &what).await;
                check_after_crash(&store, &s, c, &acked, &what).await;
                continue;
            }
            if took_effect {
                s.ops[c].check_repeat(&s.results[c], r);
            } else {
                assert_eq!(ok(r, &what), s.results[c], "{what}: the retried op");
            }
            break;
        }
        assert!(
            view(&store, &s.talks).await == s.views[c + 1],
            "{what}: state after the retry"
        );
        for (i, op) in s.ops.iter().enumerate().skip(c + 1) {
            let done = ok(op.apply(&store).await, &what);
            assert_eq!(done, s.results[i], "{what}: op {i} after recovery");
        }
        assert!(
            view(&store, &s.talks).await == s.views[s.ops.len()],
            "{what}: final state"
        );
        check_notifications(&store, &mut rx, &mut announced, &what).await;
    }
    for (i, op) in s.ops.iter().enumerate() {
        assert!(
            seen[i].absent && seen[i].present,
            "op {i} ({}): a crash must be able both to lose it and to keep it, saw {:?}",
            op.name(),
            seen[i]
        );
    }
    for step in [
        "read",
        "reserve",
        "sign",
        "write envelope",
        "sync",
        "notify",
        "acknowledge",
    ] {
        assert!(
            points.contains(&("sequence", step)),
            "no crash at sequence / {step}"
        );
    }
    eprintln!(
        "crash suite: {} crash points over {} operations: {points:?}",
        s.steps,
        s.ops.len()
    );
}

/// (e) of the crash suite: drains `rx` into `announced` (the largest size
/// announced per talks) and checks, on a store just restarted, that no
/// notification ever announced a size beyond what is durable (logs only
/// grow, so every notification received so far is checked again).
async fn check_notifications(
    store: &MemoryStore,
    rx: &mut Subscription,
    announced: &mut BTreeMap<TalksId, u64>,
    what: &str,
) {
    loop {
        match rx.try_recv() {
            Ok(Appended { talks, size }) => {
                let max = announced.entry(talks).or_insert(0);
                *max = (*max).max(size);
            }
            Err(TryRecvError::Empty) => break,
            Err(e) => panic!("{what}: subscription: {e}"),
        }
    }
    for (&talks, &size) in announced.iter() {
        let durable = ok(store.log_size(talks).await, "log_size");
        assert!(
            size <= durable,
            "{what}: a notification announced size {size} of {talks}, \
             but only {durable} envelopes are durable"
        );
    }
}

/// After a crash in operation `c` and a restart: every acknowledged
/// envelope is there once with its placement (a), and the store shows the
/// state from before or after operation `c`, nothing in between (b).
/// Returns whether `c` took effect.
async fn check_after_crash(
    store: &MemoryStore,
    s: &Scenario,
    c: usize,
    acked: &[(Submission, Placement)],
    what: &str,
) -> bool {
    let v = view(store, &s.talks).await;
    for (sub, p) in acked {
        let Some(tv) = s
            .talks
            .iter()
            .position(|&t| t == sub.talks)
            .map(|i| &v.talks[i])
        else {
            panic!("{what}: acknowledged talks {} is not watched", sub.talks);
        };
        let Some(row) = usize::try_from(p.seq).ok().and_then(|i| tv.log.get(i)) else {
            panic!(
                "{what}: acknowledged seq {} of {} is gone",
                p.seq, sub.talks
            );
        };
        let kept = Placement {
            seq: row.seq,
            node_time: row.node_time,
            leaf_hash: row.leaf_hash,
            receipt: row.receipt.clone(),
        };
        assert_eq!(&kept, p, "{what}: acknowledged placement changed");
        assert_eq!(
            row.header, sub.header,
            "{what}: acknowledged header changed"
        );
        let copies = tv.log.iter().filter(|e| e.header == sub.header).count();
        assert_eq!(
            copies, 1,
            "{what}: acknowledged envelope stored {copies} times"
        );
    }
    if v == s.views[c] {
        false
    } else if v == s.views[c + 1] {
        true
    } else {
        panic!(
            "{what}: {} is half-visible after restart:\n{v:#?}",
            s.ops[c].name()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submissions_are_distinct_and_consistent() {
        let a = sender(labels::US_HEAD_DEVICE);
        let s = submission(talks_id(1), a, 1, 0);
        assert_eq!(s.header.len(), 223);
        assert_eq!(s.header_hash, sha256(&s.header));
        assert_eq!(s.body_hash, sha256(&s.body));
        assert_ne!(s.header, submission(talks_id(1), a, 1, 1).header);
        assert_eq!(
            s.idempotency_key,
            submission(talks_id(1), a, 1, 1).idempotency_key
        );
        assert_ne!(s.header, submission(talks_id(2), a, 1, 0).header);
    }
}
