//! The log integrator against the in-memory store: roots, checkpoints,
//! stored hashes and inclusion proofs match a reference tree whatever the
//! batch size; racing integrators and crashes at every step end in the
//! same state as one clean run.
#![allow(clippy::expect_used)] // Test set-up failures should panic with their message.

use std::sync::{Mutex, PoisonError};

use backchannel_codec::Encode;
use backchannel_codec::{RoomId, TalksId};
use backchannel_crypto::{Digest, KeyId, Signer};
use backchannel_node::integrate::{
    IntegrateError, LeafHints, MAX_INTEGRATION_BATCH, integrate_hinted, integrate_once,
};
use backchannel_statement::fixtures::labels;
use backchannel_store::conformance::{
    access_list, hashes_between, log_key, read_all, sender, submission, talks_id, talks_record,
};
use backchannel_store::memory::MemoryStore;
use backchannel_store::{
    AccessListRecord, BlobRecord, CheckpointRecord, Fence, Fired, InvitationRecord, Lease,
    LeaseName, Outcome, PendingChange, Redemption, ScheduledRecord, Store, StoreError,
    StoredEnvelope, Submission, Subscription, TalksRecord,
};
use backchannel_tlog::{
    HashReader, InclusionProof, LEAF_DATA_LEN, LeafData, LogOrigin, MemoryHashStore, NodeOrigin,
    SignedCheckpoint,
};
use tlog_tiles::Hash;

fn node() -> NodeOrigin {
    NodeOrigin::new("mediator.example").expect("node origin")
}

fn device() -> KeyId {
    sender(labels::US_HEAD_DEVICE)
}

/// Sequences `n` envelopes into `talks`, in batches of uneven sizes.
async fn fill<S: Store>(store: &S, talks: TalksId, n: u64) {
    store
        .create_talks(&talks_record(talks), &access_list(1, 0))
        .await
        .expect("create talks");
    let sizes = [1u64, 3, 50, 200, 7];
    let mut next = 0u64;
    for &size in sizes.iter().cycle() {
        if next >= n {
            break;
        }
        let end = n.min(next + size);
        let batch: Vec<Submission> = (next..end)
            .map(|i| submission(talks, device(), u32::try_from(i).expect("small"), 0))
            .collect();
        let out = store.sequence(batch, 1_000 + next, &log_key()).await;
        assert_eq!(out.expect("sequence").len() as u64, end - next);
        next = end;
    }
    assert_eq!(store.log_size(talks).await.expect("log_size"), n);
}

/// Integrates until there is nothing left; returns the sizes reached.
async fn run_to_end<S: Store>(store: &S, talks: TalksId, max_leaves: u64) -> Vec<u64> {
    let mut sizes = Vec::new();
    while let Some(size) = integrate_once(store, talks, &node(), &log_key(), max_leaves, None)
        .await
        .expect("integrates")
    {
        sizes.push(size);
    }
    sizes
}

/// The stored hashes of the first `n` leaves, as a `HashReader`.
struct Stored(Vec<Hash>);

impl HashReader for Stored {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.0.get(i))
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// Everything integration writes for `talks`.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    integrated: u64,
    checkpoint: Option<CheckpointRecord>,
    hashes: Vec<Digest>,
}

async fn snapshot<S: Store>(store: &S, talks: TalksId) -> Snapshot {
    let integrated = store.integrated_size(talks).await.expect("integrated_size");
    let idx: Vec<u64> = (0..tlog_tiles::stored_hash_count(integrated)).collect();
    Snapshot {
        integrated,
        checkpoint: store.checkpoint(talks).await.expect("checkpoint"),
        hashes: store.tree_hashes(talks, &idx).await.expect("tree_hashes"),
    }
}

/// Checks a fully integrated log of `n` leaves against a reference tree
/// built from the same leaf hashes.
async fn check_log<S: Store>(store: &S, talks: TalksId, n: u64) {
    let leaves: Vec<StoredEnvelope> = read_all(store, talks).await;
    assert_eq!(leaves.len() as u64, n);
    let mut tree = MemoryHashStore::new();
    for e in &leaves {
        tree.append(&e.leaf_hash).expect("reference tree");
    }
    let snap = snapshot(store, talks).await;
    assert_eq!(snap.integrated, n, "integrated size");

    let record = snap.checkpoint.expect("a checkpoint");
    assert_eq!(record.size, n);
    let signed = SignedCheckpoint::verify(
        &record.note,
        &log_key().public_key(),
        &LogOrigin::new(&node(), talks),
    )
    .expect("checkpoint verifies with the log key and origin");
    let root = tree.root().expect("reference root");
    assert_eq!(signed.checkpoint().size, n);
    assert_eq!(signed.checkpoint().root, root, "root of {n} leaves");

    let want: Vec<Digest> = hashes_between(&tree, 0, n)
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    assert_eq!(snap.hashes, want, "stored tree hashes of {n} leaves");

    let stored = Stored(snap.hashes.iter().map(|d| Hash(d.0)).collect());
    for (i, e) in (0..n).zip(&leaves) {
        InclusionProof::prove(&stored, i, n)
            .expect("proof from stored hashes")
            .verify(i, n, &root, &e.leaf_hash)
            .unwrap_or_else(|e| panic!("leaf {i} of {n}: {e}"));
    }
}

#[tokio::test]
async fn roots_hashes_and_proofs_match_a_reference_tree() {
    for n in [1u64, 2, 7, 64, 300] {
        for max in [MAX_INTEGRATION_BATCH, 1, 3, 16] {
            let store = MemoryStore::new();
            let t = talks_id(1);
            fill(&store, t, n).await;
            let sizes = run_to_end(&store, t, max).await;
            let want: Vec<u64> = (1..=n.div_ceil(max)).map(|k| n.min(k * max)).collect();
            assert_eq!(sizes, want, "n = {n}, max_leaves = {max}");
            check_log(&store, t, n).await;
        }
    }
}

#[tokio::test]
async fn integrates_what_arrives_between_calls() {
    let store = MemoryStore::new();
    let t = talks_id(1);
    fill(&store, t, 5).await;
    assert_eq!(run_to_end(&store, t, 3).await, [3, 5]);
    for i in 5..40u32 {
        let out = store
            .sequence(vec![submission(t, device(), i, 0)], 2_000, &log_key())
            .await
            .expect("sequence");
        assert!(matches!(out.as_slice(), [Outcome::Sequenced(_)]));
        if i % 4 == 0 {
            run_to_end(&store, t, 16).await;
        }
    }
    run_to_end(&store, t, 16).await;
    check_log(&store, t, 40).await;
}

#[tokio::test]
async fn nothing_to_do() {
    let store = MemoryStore::new();
    let (t, empty) = (talks_id(1), talks_id(2));
    let key = log_key();
    // An unknown talks has size 0 and nothing integrated.
    let r = integrate_once(&store, t, &node(), &key, 16, None).await;
    assert!(matches!(r, Ok(None)), "{r:?}");
    store
        .create_talks(&talks_record(empty), &access_list(2, 0))
        .await
        .expect("create talks");
    let r = integrate_once(&store, empty, &node(), &key, 16, None).await;
    assert!(matches!(r, Ok(None)), "{r:?}");
    fill(&store, t, 9).await;
    assert_eq!(run_to_end(&store, t, MAX_INTEGRATION_BATCH).await, [9]);
    let before = snapshot(&store, t).await;
    let r = integrate_once(&store, t, &node(), &key, 16, None).await;
    assert!(matches!(r, Ok(None)), "{r:?}");
    assert_eq!(snapshot(&store, t).await, before, "a no-op writes nothing");
    // A batch of 0 could never progress.
    fill(&store, talks_id(3), 1).await;
    let r = integrate_once(&store, talks_id(3), &node(), &key, 0, None).await;
    assert!(matches!(r, Err(IntegrateError::EmptyBatch)), "{r:?}");
}

#[test]
fn the_integration_future_is_send() {
    fn send<T: Send>(_: T) {}
    let store = MemoryStore::new();
    let key = log_key();
    send(integrate_once(&store, talks_id(1), &node(), &key, 1, None));
}

/// A stale `from` handed straight to the store loses, and the integrator
/// reports a lost race as `Stale`.
#[tokio::test]
async fn a_stale_from_loses() {
    let store = MemoryStore::new();
    let t = talks_id(1);
    fill(&store, t, 10).await;
    let mut tree = MemoryHashStore::new();
    for e in read_all(&store, t).await {
        tree.append(&e.leaf_hash).expect("reference tree");
    }
    assert_eq!(
        integrate_once(&store, t, &node(), &log_key(), 4, None)
            .await
            .expect("integrates"),
        Some(4)
    );
    let c = backchannel_store::conformance::checkpoint_at(t, &tree, 10);
    let r = store
        .integrate(t, 0, 10, &hashes_between(&tree, 0, 10), &c, None)
        .await;
    assert!(matches!(r, Err(StoreError::Stale)), "{r:?}");
    assert_eq!(store.integrated_size(t).await.expect("size"), 4);
    assert_eq!(run_to_end(&store, t, 4).await, [8, 10]);
    check_log(&store, t, 10).await;
}

/// What the wrapper store does to one call.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Before forwarding the next `integrate`, another integrator
    /// integrates up to this many leaves.
    Race(u64),
    /// `read` leaves out this seq.
    DropLeaf(u64),
    /// `read` returns this seq with a wrong leaf hash.
    AlterLeaf(u64),
}

/// A `MemoryStore` with a fault injected.
struct Faulty {
    inner: MemoryStore,
    fault: Mutex<Option<Fault>>,
}

impl Faulty {
    fn new(fault: Fault) -> Self {
        Self {
            inner: MemoryStore::new(),
            fault: Mutex::new(Some(fault)),
        }
    }

    fn fault(&self) -> Option<Fault> {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for Faulty {
    async fn create_talks(&self, t: &TalksRecord, a: &AccessListRecord) -> Result<(), StoreError> {
        self.inner.create_talks(t, a).await
    }
    async fn talks(&self, t: TalksId) -> Result<Option<TalksRecord>, StoreError> {
        self.inner.talks(t).await
    }
    async fn access_list(&self, t: TalksId) -> Result<Option<AccessListRecord>, StoreError> {
        self.inner.access_list(t).await
    }
    async fn replace_access_list(
        &self,
        t: TalksId,
        expected: Digest,
        next: &AccessListRecord,
    ) -> Result<(), StoreError> {
        self.inner.replace_access_list(t, expected, next).await
    }
    async fn sequence(
        &self,
        batch: Vec<Submission>,
        clock_ms: u64,
        log_key: &(dyn Signer + Sync),
    ) -> Result<Vec<Outcome>, StoreError> {
        self.inner.sequence(batch, clock_ms, log_key).await
    }
    async fn log_size(&self, t: TalksId) -> Result<u64, StoreError> {
        self.inner.log_size(t).await
    }
    async fn read(
        &self,
        t: TalksId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        let mut page = self.inner.read(t, from, limit).await?;
        match self.fault() {
            Some(Fault::DropLeaf(seq)) => page.retain(|e| e.seq != seq),
            Some(Fault::AlterLeaf(seq)) => {
                for e in page.iter_mut().filter(|e| e.seq == seq) {
                    e.leaf_hash.0[0] ^= 1;
                }
            }
            _ => {}
        }
        Ok(page)
    }
    async fn purge_body(&self, t: TalksId, seq: u64) -> Result<bool, StoreError> {
        self.inner.purge_body(t, seq).await
    }
    async fn integrated_size(&self, t: TalksId) -> Result<u64, StoreError> {
        self.inner.integrated_size(t).await
    }
    async fn tree_hashes(&self, t: TalksId, indexes: &[u64]) -> Result<Vec<Digest>, StoreError> {
        self.inner.tree_hashes(t, indexes).await
    }
    async fn integrate(
        &self,
        t: TalksId,
        from: u64,
        to: u64,
        hashes: &[(u64, Digest)],
        checkpoint: &CheckpointRecord,
        fence: Option<Fence>,
    ) -> Result<(), StoreError> {
        let race = {
            let mut fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
            match *fault {
                Some(Fault::Race(max)) => {
                    *fault = None;
                    Some(max)
                }
                _ => None,
            }
        };
        if let Some(max) = race {
            // The other integrator reads the same state and commits first.
            let won = integrate_once(&self.inner, t, &node(), &log_key(), max, None).await;
            assert!(matches!(won, Ok(Some(_))), "the racer wins: {won:?}");
        }
        self.inner
            .integrate(t, from, to, hashes, checkpoint, fence)
            .await
    }
    async fn acquire_lease(
        &self,
        name: LeaseName,
        holder: [u8; 16],
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Lease, StoreError> {
        self.inner.acquire_lease(name, holder, now_ms, ttl_ms).await
    }
    async fn release_lease(
        &self,
        name: LeaseName,
        holder: [u8; 16],
        epoch: u64,
    ) -> Result<bool, StoreError> {
        self.inner.release_lease(name, holder, epoch).await
    }
    async fn schedule(&self, item: &ScheduledRecord) -> Result<(), StoreError> {
        self.inner.schedule(item).await
    }
    async fn fire_due(
        &self,
        now_ms: u64,
        limit: usize,
        log_key: &(dyn Signer + Sync),
    ) -> Result<Vec<Fired>, StoreError> {
        self.inner.fire_due(now_ms, limit, log_key).await
    }
    async fn scheduled_count(&self) -> Result<u64, StoreError> {
        self.inner.scheduled_count().await
    }
    async fn integration_lag(&self) -> Result<backchannel_store::IntegrationLag, StoreError> {
        self.inner.integration_lag().await
    }
    async fn checkpoint(&self, t: TalksId) -> Result<Option<CheckpointRecord>, StoreError> {
        self.inner.checkpoint(t).await
    }
    async fn replace_checkpoint_note(
        &self,
        t: TalksId,
        size: u64,
        expected: &[u8],
        note: &[u8],
    ) -> Result<(), StoreError> {
        self.inner
            .replace_checkpoint_note(t, size, expected, note)
            .await
    }
    fn subscribe(&self) -> Subscription {
        self.inner.subscribe()
    }
    async fn unintegrated_talks(&self, limit: usize) -> Result<Vec<TalksId>, StoreError> {
        self.inner.unintegrated_talks(limit).await
    }
    async fn create_invitation(&self, t: TalksId, i: &InvitationRecord) -> Result<(), StoreError> {
        self.inner.create_invitation(t, i).await
    }
    async fn invitation(
        &self,
        t: TalksId,
        token_hash: Digest,
    ) -> Result<Option<InvitationRecord>, StoreError> {
        self.inner.invitation(t, token_hash).await
    }
    async fn invitations(&self, t: TalksId) -> Result<Vec<InvitationRecord>, StoreError> {
        self.inner.invitations(t).await
    }
    async fn redeem_invitation(
        &self,
        t: TalksId,
        token_hash: Digest,
        redemption: &Redemption,
        expected: Digest,
        next: &AccessListRecord,
    ) -> Result<(), StoreError> {
        self.inner
            .redeem_invitation(t, token_hash, redemption, expected, next)
            .await
    }
    async fn pending_changes(&self, t: TalksId) -> Result<Vec<PendingChange>, StoreError> {
        self.inner.pending_changes(t).await
    }
    async fn put_pending_change(
        &self,
        t: TalksId,
        base: Digest,
        expected: Option<&[u8]>,
        change: &PendingChange,
    ) -> Result<(), StoreError> {
        self.inner
            .put_pending_change(t, base, expected, change)
            .await
    }
    async fn create_blob(
        &self,
        t: TalksId,
        blob: &BlobRecord,
        quota: u64,
    ) -> Result<BlobRecord, StoreError> {
        self.inner.create_blob(t, blob, quota).await
    }
    async fn blob(&self, t: TalksId, hash: Digest) -> Result<Option<BlobRecord>, StoreError> {
        self.inner.blob(t, hash).await
    }
    async fn put_blob_chunk(
        &self,
        t: TalksId,
        hash: Digest,
        index: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.inner.put_blob_chunk(t, hash, index, bytes).await
    }
    async fn blob_chunk(
        &self,
        t: TalksId,
        hash: Digest,
        index: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.blob_chunk(t, hash, index).await
    }
    async fn blob_chunks_present(&self, t: TalksId, hash: Digest) -> Result<Vec<u64>, StoreError> {
        self.inner.blob_chunks_present(t, hash).await
    }
    async fn complete_blob(&self, t: TalksId, hash: Digest) -> Result<(), StoreError> {
        self.inner.complete_blob(t, hash).await
    }
    async fn room_state(
        &self,
        t: TalksId,
        room: RoomId,
    ) -> Result<Option<backchannel_store::RoomState>, StoreError> {
        self.inner.room_state(t, room).await
    }
    async fn put_key_packages(
        &self,
        t: TalksId,
        device: KeyId,
        packages: Vec<backchannel_store::KeyPackageRecord>,
    ) -> Result<(), StoreError> {
        self.inner.put_key_packages(t, device, packages).await
    }
    async fn claim_key_package(
        &self,
        t: TalksId,
        claimer: KeyId,
        device: KeyId,
        now: u64,
        max_claims: u32,
        window_s: u64,
    ) -> Result<Option<backchannel_store::KeyPackageRecord>, StoreError> {
        self.inner
            .claim_key_package(t, claimer, device, now, max_claims, window_s)
            .await
    }
    async fn key_package_count(
        &self,
        t: TalksId,
        device: KeyId,
        now: u64,
    ) -> Result<u64, StoreError> {
        self.inner.key_package_count(t, device, now).await
    }
}

/// Two integrators between the same reads and the fenced write: exactly
/// one wins, the other sees `Stale` and writes nothing, and retrying ends
/// where a single integrator would.
#[tokio::test]
async fn racing_integrators() {
    for (racer, ours) in [(5u64, 8u64), (8, 5), (6, 6), (MAX_INTEGRATION_BATCH, 3)] {
        let store = Faulty::new(Fault::Race(racer));
        let t = talks_id(1);
        fill(&store, t, 30).await;
        let r = integrate_once(&store, t, &node(), &log_key(), ours, None).await;
        assert!(matches!(r, Err(IntegrateError::Stale)), "{r:?}");
        // What the store holds is exactly the winner's integration.
        let reference = MemoryStore::new();
        fill(&reference, t, 30).await;
        integrate_once(&reference, t, &node(), &log_key(), racer, None)
            .await
            .expect("integrates");
        assert_eq!(snapshot(&store, t).await, snapshot(&reference, t).await);
        // The loser retries from the winner's size.
        run_to_end(&store, t, ours).await;
        check_log(&store, t, 30).await;
    }
}

#[tokio::test]
async fn corrupt_leaves_are_refused() {
    for (fault, seq) in [
        (Fault::DropLeaf(4), 4),
        (Fault::DropLeaf(9), 9),
        (Fault::AlterLeaf(0), 0),
        (Fault::AlterLeaf(7), 7),
    ] {
        let store = Faulty::new(fault);
        let t = talks_id(1);
        fill(&store, t, 10).await;
        let r = integrate_once(&store, t, &node(), &log_key(), 16, None).await;
        match (fault, r) {
            (Fault::DropLeaf(_), Err(IntegrateError::MissingLeaf { seq: s }))
            | (Fault::AlterLeaf(_), Err(IntegrateError::BadLeaf { seq: s })) => {
                assert_eq!(s, seq)
            }
            (_, r) => panic!("{fault:?}: {r:?}"),
        }
        assert_eq!(store.integrated_size(t).await.expect("size"), 0);
        assert_eq!(store.checkpoint(t).await.expect("checkpoint"), None);
    }
}

/// Hints for the leaves `hinted` of `talks`, with the hashes the store holds.
async fn hints_for<S: Store>(store: &S, talks: TalksId, hinted: &[u64]) -> LeafHints {
    let hints = LeafHints::default();
    let all = read_all(store, talks).await;
    hints.record(hinted.iter().map(|&seq| {
        let e = usize::try_from(seq).ok().and_then(|i| all.get(i));
        (talks, e.expect("a stored leaf").leaf())
    }));
    hints
}

/// Integration with leaf hints, whichever leaves they cover, writes what
/// integration from the store writes, and leaves no hint below the
/// integrated size.
#[tokio::test]
async fn hints_give_the_same_log_as_reads() {
    const N: u64 = 23;
    let check = |hinted: Vec<u64>, max: u64| async move {
        let reference = MemoryStore::new();
        let store = MemoryStore::new();
        let t = talks_id(1);
        fill(&reference, t, N).await;
        fill(&store, t, N).await;
        run_to_end(&reference, t, max).await;
        let hints = hints_for(&store, t, &hinted).await;
        let mut sizes = Vec::new();
        while let Some(size) =
            integrate_hinted(&store, Some(&hints), t, &node(), &log_key(), max, None)
                .await
                .expect("integrates")
        {
            sizes.push(size);
        }
        assert_eq!(sizes.last(), Some(&N), "hinted {hinted:?}, max {max}");
        assert_eq!(snapshot(&store, t).await, snapshot(&reference, t).await);
        check_log(&store, t, N).await;
        // The last two data tiles' leaves stay (here, all of them).
        assert_eq!(hints.len(), hinted.len(), "hinted {hinted:?}");
    };
    for max in [MAX_INTEGRATION_BATCH, 4] {
        check((0..N).collect(), max).await;
        check(Vec::new(), max).await;
        check((0..10).collect(), max).await;
        check((5..N).collect(), max).await;
        check((0..N).filter(|s| s % 3 != 1).collect(), max).await;
        check(vec![0, 1, 2, 12, 13, 22], max).await;
    }
}

/// A hinted leaf is not read back; the first leaf past the hinted run is,
/// and a corrupt one there is still refused.
#[tokio::test]
async fn hints_stand_in_for_reads_and_only_for_them() {
    for (hinted, want) in [(0..7, Err(7)), (0..10, Ok(10)), (1..10, Err(7))] {
        let store = Faulty::new(Fault::AlterLeaf(7));
        let t = talks_id(1);
        fill(&store, t, 10).await;
        let hints = hints_for(&store.inner, t, &hinted.clone().collect::<Vec<_>>()).await;
        let r = integrate_hinted(&store, Some(&hints), t, &node(), &log_key(), 16, None).await;
        match (want, r) {
            (Ok(n), Ok(Some(size))) => assert_eq!(size, n),
            (Err(seq), Err(IntegrateError::BadLeaf { seq: s })) => assert_eq!(s, seq),
            (want, r) => panic!("hinted {hinted:?}: want {want:?}, got {r:?}"),
        }
    }
}

fn leaf(seq: u64) -> LeafData {
    LeafData {
        seq,
        timestamp_ms: 1_000,
        room: RoomId([1; 16]),
        header_hash: Digest([2; 32]),
        body_hash: Digest([3; 32]),
    }
}

/// Integration keeps the leaves of the last partial data tile and of the
/// full one before it, and the data tiles come from the hints only when
/// every leaf is there.
#[tokio::test]
async fn hints_keep_the_last_two_data_tiles() {
    const N: u64 = 600;
    let store = MemoryStore::new();
    let t = talks_id(1);
    fill(&store, t, N).await;
    let all: Vec<u64> = (0..N).collect();
    let hints = hints_for(&store, t, &all).await;
    let integrated = integrate_hinted(&store, Some(&hints), t, &node(), &log_key(), N, None).await;
    assert_eq!(integrated.expect("integrates"), Some(N));
    // 600 = two full tiles and 88 leaves: the second tile and the partial stay.
    assert_eq!(hints.len(), (N - 256) as usize);
    let stored: Vec<u8> = read_all(&store, t)
        .await
        .iter()
        .flat_map(|e| e.leaf().to_canonical_bytes())
        .collect();
    let bytes = |from: u64, to: u64| {
        stored[from as usize * LEAF_DATA_LEN..to as usize * LEAF_DATA_LEN].to_vec()
    };
    assert_eq!(hints.tile(t, 256, 512), Some(bytes(256, 512)));
    assert_eq!(hints.tile(t, 512, 600), Some(bytes(512, 600)));
    assert_eq!(hints.tile(t, 512, 520), Some(bytes(512, 520)));
    assert_eq!(hints.tile(t, 0, 256), None, "forgotten");
    assert_eq!(hints.tile(t, 512, 601), None, "not sequenced");
    assert_eq!(hints.tile(talks_id(2), 0, 1), None, "another talks");
}

/// The hints hold at most `MAX_LEAF_HINTS` leaves, forgetting the talks
/// recorded least recently first; clearing forgets all.
#[test]
fn hints_are_bounded() {
    use backchannel_node::integrate::MAX_LEAF_HINTS;
    let hints = LeafHints::default();
    let max = MAX_LEAF_HINTS as u64;
    hints.record((0..max / 2).map(|seq| (talks_id(1), leaf(seq))));
    hints.record((0..max / 2).map(|seq| (talks_id(2), leaf(seq))));
    assert_eq!(hints.len(), MAX_LEAF_HINTS);
    // One more talks: the first talks goes.
    hints.record([(talks_id(3), leaf(0))]);
    assert_eq!(hints.len(), MAX_LEAF_HINTS / 2 + 1);
    assert_eq!(hints.tile(talks_id(1), 0, 1), None);
    assert!(hints.tile(talks_id(2), 0, 1).is_some());
    // One talks alone past the bound loses its newest leaves: the oldest
    // are the ones integration takes next.
    hints.clear();
    hints.record((0..max + 10).map(|seq| (talks_id(1), leaf(seq))));
    assert_eq!(hints.len(), MAX_LEAF_HINTS);
    assert!(hints.tile(talks_id(1), 0, 1).is_some());
    assert!(hints.tile(talks_id(1), max - 1, max).is_some());
    assert_eq!(hints.tile(talks_id(1), max, max + 1), None);
    // The same leaf again counts once.
    hints.clear();
    hints.record([(talks_id(1), leaf(0)), (talks_id(1), leaf(0))]);
    assert_eq!(hints.len(), 1);
    hints.clear();
    assert!(hints.is_empty());
}

/// A crash at every step of integrating a log from scratch (several calls),
/// then a restart and integration to the end: the final state is the
/// crash-free one.
#[tokio::test]
async fn crash_at_every_step() {
    const N: u64 = 40;
    const MAX: u64 = 16;
    let t = talks_id(1);
    let clean = MemoryStore::new();
    fill(&clean, t, N).await;
    let start = clean.steps();
    assert_eq!(run_to_end(&clean, t, MAX).await, [16, 32, 40]);
    let steps = clean.steps() - start;
    let want = snapshot(&clean, t).await;

    let mut seen = std::collections::BTreeSet::new();
    for k in 0..steps {
        let store = MemoryStore::new();
        fill(&store, t, N).await;
        store.crash_at(k);
        let mut crashes = 0;
        loop {
            match integrate_once(&store, t, &node(), &log_key(), MAX, None).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(IntegrateError::Store(StoreError::Unavailable(_))) => {
                    let at = store.crashed().expect("down after a crash");
                    seen.insert((at.op, at.step));
                    crashes += 1;
                    store.restart();
                }
                Err(e) => panic!("crash at step {k}: {e}"),
            }
        }
        assert_eq!(crashes, 1, "crash at step {k} happened once");
        assert_eq!(snapshot(&store, t).await, want, "crash at step {k}");
    }
    for point in [
        ("integrated_size", "read"),
        ("log_size", "read"),
        ("read", "read"),
        ("tree_hashes", "read"),
        ("integrate", "read"),
        ("integrate", "write tree hash"),
        ("integrate", "write checkpoint"),
        ("integrate", "write integrated size"),
        ("integrate", "sync"),
        ("integrate", "acknowledge"),
    ] {
        assert!(seen.contains(&point), "no crash at {point:?}: {seen:?}");
    }
}
