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

use backchannel_codec::{Decode, PartyId, RoomId, TalksId};
use backchannel_crypto::{Digest, KeyId, PublicKey, SecretKey, Signer, sha256};
use backchannel_statement::fixtures::{self, labels};
use backchannel_tlog::{
    Checkpoint, HashReader, LeafData, LogOrigin, MemoryHashStore, NodeOrigin, Receipt,
};
use tokio::sync::broadcast::error::TryRecvError;

use crate::memory::{MemoryStore, stored_hash_count};
use crate::{
    AccessListRecord, Appended, BLOB_CHUNK, BlobRecord, CheckpointRecord, Fence, Fired, Gate,
    IntegrationLag, InvitationRecord, KeyPackageRecord, Lease, LeaseName, MAX_ENROLMENT_PAYLOAD,
    MAX_FIRE_BATCH, MAX_INVITATIONS, MAX_KEY_PACKAGE_BYTES, MAX_KEY_PACKAGE_REFERENCE,
    MAX_KEY_PACKAGES_PER_DEVICE, MAX_NUMBER, MAX_PENDING_CHANGES, MAX_READ, MAX_READ_BYTES,
    MAX_SEQUENCE_BATCH, MAX_TREE_HASHES, Outcome, PendingChange, Placement, Redemption, RoomState,
    RoomStateUpdate, ScheduledRecord, Store, StoreError, StoredEnvelope, StoredLeaf, Submission,
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
        access_version_checked_when_sequencing,
        sequence_is_dense_per_talks,
        node_time_never_decreases,
        receipts_verify,
        idempotent_retries,
        read_pages,
        leaves_are_reads_without_bodies,
        read_byte_budget,
        purge_keeps_proof_material,
        integrate_and_tree_hashes,
        tree_hashes_limits,
        checkpoint_note_compare_and_swap,
        subscribers_see_appends,
        batch_limit,
        concurrent_sequence,
        unintegrated_talks_lists_the_work,
        invitations_create_and_list,
        invitation_limit,
        redeem_invitation_once,
        pending_changes_compare_and_swap,
        pending_changes_limit,
        access_list_changes_drop_pending_changes,
        blobs_create_and_reference,
        blob_quota,
        concurrent_blob_quota,
        blob_chunks,
        empty_blob,
        mls_create_once,
        mls_commit_race,
        mls_stale_epoch,
        mls_rooms_of_two_talks_in_one_batch,
        mls_idempotency_first,
        mls_welcome_audience,
        mls_refusals_write_nothing,
        key_packages_put_and_claim,
        key_packages_limits,
        key_package_claim_limit,
        lease_lifecycle,
        lease_release,
        fenced_integrate,
        schedule_refusals,
        fire_due_in_due_order,
        fire_due_limits,
        fire_due_sequences_like_sequence,
        integration_lag_counts_every_talks,
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
        gate: None,
        access_version: None,
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
        welcome_to: match &sub.gate {
            Some(Gate::Welcome { to, .. }) => Some(to.clone()),
            _ => None,
        },
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

/// The `n`-th party id of the suite (`n < 16`).
pub fn party(n: u8) -> PartyId {
    PartyId(fixtures::id(0xB0 | (n & 0x0f)))
}

/// The `n`-th room id of the suite's blobs (`n < 16`).
pub fn blob_room(n: u8) -> RoomId {
    RoomId(fixtures::id(0xD0 | (n & 0x0f)))
}

/// The token of invitation number `n` (the store only ever sees its hash).
pub fn token(n: u16) -> [u8; 32] {
    sha256(&[b"token ".as_slice(), &n.to_be_bytes()].concat()).0
}

/// Invitation number `n` for `party`, unredeemed. Its signed bytes are
/// opaque to the store, so these are not a real invitation.
pub fn invitation(n: u16, party: PartyId) -> InvitationRecord {
    InvitationRecord {
        token_hash: sha256(&token(n)),
        party,
        expires_at: 1_700_000_600_000 + u64::from(n),
        invitation: format!("signed invitation {n}").into_bytes(),
        created_at: 1_700_000_000_000 + u64::from(n),
        redeemed: None,
    }
}

/// A redemption by the fixture key `label`, with a payload of `len` bytes.
pub fn redemption(label: u8, len: usize) -> Redemption {
    Redemption {
        key: sender(label),
        at: 1_700_000_100_000,
        payload: vec![label; len],
    }
}

/// Pending change number `n` with `signatures` signatures gathered: the
/// store keeps the change opaque, so only its length grows.
pub fn pending_change(n: u8, signatures: u8) -> PendingChange {
    PendingChange {
        delta_hash: sha256(&[b"delta ".as_slice(), &[n]].concat()),
        change: [vec![n; 40], vec![0x5c; usize::from(signatures) * 64]].concat(),
    }
}

/// The content of blob number `n` of `size` bytes.
pub fn blob_content(n: u8, size: u64) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8 ^ n).collect()
}

/// A new blob record: blob number `n` of `size` bytes, for `party`,
/// referenced from `room`. The store never hashes content (its caller
/// checks the chunks against the address before completing a blob), so the
/// address is derived from `n` and `size` alone, and sizes near 2^63 cost
/// nothing.
pub fn new_blob(n: u8, size: u64, party: PartyId, room: RoomId) -> BlobRecord {
    BlobRecord {
        hash: sha256(format!("blob {n} of {size} bytes").as_bytes()),
        size,
        party,
        uploader: sender(labels::US_HEAD_DEVICE),
        created_at: 1_700_000_200_000,
        complete: false,
        rooms: vec![room],
    }
}

/// Chunk `index` of `content`, as [`BlobRecord::chunk_len`] cuts it.
pub fn chunk_of(content: &[u8], index: u64) -> Vec<u8> {
    let start = (index * BLOB_CHUNK) as usize;
    let end = (start + BLOB_CHUNK as usize).min(content.len());
    content[start..end].to_vec()
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
        created_at: MAX_NUMBER + 1,
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
            store.integrate(unknown, 0, 0, &[], &c0, None).await,
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

/// [`Submission::access_version`] names the list the node validated
/// against; `sequence` refuses it with `AccessChanged` (and the current
/// version) once the list has another version, before the idempotency
/// lookup and the gate, writing nothing and taking no seq.
pub async fn access_version_checked_when_sequencing<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let u = open(store, 2).await;
    let a = sender(labels::US_HEAD_DEVICE);
    let named = |sub: Submission, version: Option<u64>| Submission {
        access_version: version,
        ..sub
    };
    let first = named(submission(t, a, 1, 0), Some(0));
    let out = sequence(
        store,
        vec![
            first.clone(),
            named(submission(t, a, 2, 0), None),
            named(submission(t, a, 3, 0), Some(1)),
            named(submission(u, a, 4, 0), Some(0)),
        ],
        1000,
    )
    .await;
    assert_eq!(placed(&out[0], "the current version").seq, 0);
    assert_eq!(placed(&out[1], "no version named").seq, 1);
    assert_eq!(
        out[2],
        Outcome::AccessChanged { version: 0 },
        "a version the list does not have"
    );
    assert_eq!(placed(&out[3], "other talks, its own list").seq, 0);

    let (v0, v1) = (access_list(1, 0), access_list(3, 1));
    ok(
        store.replace_access_list(t, v0.hash, &v1).await,
        "replace_access_list",
    );
    let gated_stale = Submission {
        access_version: Some(0),
        ..gated(t, a, 7, mls_room(1), Gate::Epoch { epoch: 0 })
    };
    let gated_current = Submission {
        access_version: Some(1),
        ..gated(t, a, 8, mls_room(1), Gate::Epoch { epoch: 0 })
    };
    let again = sequence(
        store,
        vec![
            first.clone(),
            named(submission(t, a, 5, 0), Some(0)),
            gated_stale,
            gated_current,
            named(submission(t, a, 6, 0), Some(1)),
            named(submission(t, a, 3, 0), Some(1)),
            named(first.clone(), Some(1)),
        ],
        2000,
    )
    .await;
    assert_eq!(
        again[0],
        Outcome::AccessChanged { version: 1 },
        "a retry under a replaced list learns nothing of its landing"
    );
    assert_eq!(
        again[1],
        Outcome::AccessChanged { version: 1 },
        "validated against the replaced list"
    );
    assert_eq!(
        again[2],
        Outcome::AccessChanged { version: 1 },
        "the access list is checked before the gate"
    );
    assert_eq!(again[3], Outcome::NoGroup, "then the gate");
    assert_eq!(placed(&again[4], "the new version").seq, 2);
    assert_eq!(
        placed(&again[5], "refused before, now current").seq,
        3,
        "a refusal kept nothing of its key"
    );
    assert_eq!(
        again[6], out[0],
        "a retry under the current list gets its placement back"
    );
    assert_eq!(ok(store.log_size(t).await, "log_size"), 4);
    let headers: Vec<Vec<u8>> = read_all(store, t)
        .await
        .into_iter()
        .map(|r| r.header)
        .collect();
    let want: Vec<Vec<u8>> = [(1, None), (2, None), (6, Some(1)), (3, Some(1))]
        .into_iter()
        .map(|(key, version)| named(submission(t, a, key, 0), version).header)
        .collect();
    assert_eq!(headers, want, "refused submissions wrote nothing");
}

/// [`Store::leaves`] pages like [`Store::read`], without the byte budget,
/// and each row is the read's row without body, receipt and audience, a
/// purged body changing nothing; the leaves rebuilt from them hash to
/// their stored leaf hashes.
pub async fn leaves_are_reads_without_bodies<S: Store>(store: &S) {
    let (t1, t2) = (open(store, 1).await, open(store, 2).await);
    let a = sender(labels::US_HEAD_DEVICE);
    let n = MAX_READ as u64 + 5;
    // Bodies of 64 KiB every 100th: a read's byte budget would cut its
    // pages short; leaves carry no bodies and are not cut.
    let batch: Vec<Submission> = (0..n as u32)
        .map(|i| {
            let sub = submission(t1, a, i, 0);
            if i % 100 == 0 {
                with_body(sub, 64 << 10)
            } else {
                sub
            }
        })
        .collect();
    sequence(store, batch, 1000).await;
    assert!(
        ok(store.purge_body(t1, 3).await, "purge_body"),
        "a body to purge"
    );
    let want: Vec<StoredLeaf> = read_all(store, t1)
        .await
        .into_iter()
        .map(StoredLeaf::from)
        .collect();
    assert_eq!(want.len() as u64, n);
    for leaf in &want {
        assert_eq!(leaf.leaf().hash(), leaf.leaf_hash, "seq {}", leaf.seq);
    }
    let check = async |from: u64, limit: usize, range: std::ops::Range<usize>| {
        let got = ok(store.leaves(t1, from, limit).await, "leaves");
        assert!(
            got == want[range.clone()],
            "leaves(from {from}, limit {limit}) must return seqs {range:?}, got {} rows starting at {:?}",
            got.len(),
            got.first().map(|e| e.seq)
        );
    };
    let max = MAX_READ;
    let n = n as usize;
    check(0, 10, 0..10).await;
    check(2, 3, 2..5).await;
    check(0, 0, 0..0).await;
    check(0, usize::MAX, 0..max).await;
    check(max as u64, 10, max..n).await;
    check(n as u64 - 1, 10, n - 1..n).await;
    check(n as u64, 10, n..n).await;
    check(u64::MAX, 10, n..n).await;
    assert!(ok(store.leaves(t2, 0, 10).await, "leaves").is_empty());
    assert!(
        ok(store.leaves(talks_id(9), 0, 10).await, "leaves").is_empty(),
        "unknown talks"
    );
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
        submission(t1, a, 1, 0), // the earlier batch's key again
        submission(t1, a, 2, 1), // the earlier conflict again
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
    assert_eq!(
        out[7],
        Outcome::Sequenced(p1.clone()),
        "a second retry of one key in a batch keeps the original too"
    );
    assert_eq!(out[8], Outcome::Conflict { seq: 1 }, "a second conflict");
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

    // Many keys in one batch (stores may look keys up and write rows in
    // chunks): 300 new, then all of them again with 3 new ones between,
    // and a changed header at the end.
    let many: Vec<Submission> = (100..400).map(|k| submission(t2, b, k, 0)).collect();
    let first = sequence(store, many.clone(), 10_000).await;
    let mut again = many.clone();
    again.insert(150, submission(t2, b, 1000, 0));
    again.insert(280, submission(t2, b, 1001, 0));
    again.push(submission(t2, b, 1002, 0));
    again.push(submission(t2, b, 399, 1));
    let out = sequence(store, again, 11_000).await;
    let retried: Vec<&Outcome> = out
        .iter()
        .enumerate()
        .filter(|(i, _)| ![150, 280, 302, 303].contains(i))
        .map(|(_, o)| o)
        .collect();
    assert_eq!(retried.len(), first.len());
    for (o, f) in retried.into_iter().zip(&first) {
        assert_eq!(o, f, "every retry in a large batch keeps its original");
    }
    let news: Vec<u64> = [150, 280, 302]
        .iter()
        .map(|&i| placed(&out[i], "new among retries").seq)
        .collect();
    assert_eq!(
        news,
        [301, 302, 303],
        "new keys among retries get the next seqs"
    );
    assert_eq!(
        out[303],
        Outcome::Conflict {
            seq: placed(&first[299], "last").seq
        },
        "a changed header at the end of a large batch"
    );
    assert_eq!(ok(store.log_size(t2).await, "log_size"), 304);
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
    ok(
        store.integrate(t, 0, 3, &h3, &c3, None).await,
        "integrate [0, 3)",
    );
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
            .integrate(t, from, 7, &hashes_between(&tree, from, 7), &c7, None)
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
            .integrate(t, 3, 7, &hashes_between(&tree, 3, 7), &c7, None)
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
            .integrate(t, 0, 3, &hashes_between(&tree, 0, 3), &c3, None)
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
            .integrate(t, 3, 7, &hashes_between(&tree, 3, 7), &c7, None)
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
            .integrate(t, 0, 2, &hashes_between(&tree, 0, 2), &c2, None)
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
            store.integrate(t, 2, 2, &[], &c2, None).await,
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
            .integrate(t, 2, 3, &hashes_between(&tree, 2, 3), &c3, None)
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
// Enrolment, pending changes, blobs and the integrator's work list.

/// The variant of a [`StoreError`], for tables of expected refusals.
fn kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::UnknownTalks => "UnknownTalks",
        StoreError::TalksExists => "TalksExists",
        StoreError::Stale => "Stale",
        StoreError::Limit(_) => "Limit",
        StoreError::Unavailable(_) => "Unavailable",
        StoreError::Sign(_) => "Sign",
        StoreError::Corrupt(_) => "Corrupt",
        StoreError::Exists => "Exists",
        StoreError::Quota => "Quota",
        StoreError::Fenced => "Fenced",
        StoreError::Backend(_) => "Backend",
    }
}

/// Asserts that `r` is the error `want` (a [`kind`]).
fn refused<T: Debug>(r: Result<T, StoreError>, want: &str, what: &str) {
    match &r {
        Err(e) if kind(e) == want => {}
        _ => panic!("{what}: want {want}, got {r:?}"),
    }
}

/// What the enrolment methods show of one talks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Enrolment {
    access: Option<AccessListRecord>,
    invitations: Vec<InvitationRecord>,
    pending: Vec<PendingChange>,
}

async fn enrolment<S: Store>(store: &S, t: TalksId) -> Enrolment {
    Enrolment {
        access: ok(store.access_list(t).await, "access_list"),
        invitations: ok(store.invitations(t).await, "invitations"),
        pending: ok(store.pending_changes(t).await, "pending_changes"),
    }
}

/// What the blob methods show of one blob: its record, which chunks are
/// stored and their bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BlobView {
    record: Option<BlobRecord>,
    present: Vec<u64>,
    chunks: Vec<Option<Vec<u8>>>,
}

async fn blob_view<S: Store>(store: &S, t: TalksId, hash: Digest) -> BlobView {
    let present = ok(
        store.blob_chunks_present(t, hash).await,
        "blob_chunks_present",
    );
    let mut chunks = Vec::with_capacity(present.len());
    for &i in &present {
        chunks.push(ok(store.blob_chunk(t, hash, i).await, "blob_chunk"));
    }
    BlobView {
        record: ok(store.blob(t, hash).await, "blob"),
        present,
        chunks,
    }
}

/// `unintegrated_talks` lists exactly the talks whose integrated size is
/// below their log size, in talks id order, at most `limit`; integrating
/// takes a talks off the list and sequencing puts it back.
pub async fn unintegrated_talks_lists_the_work<S: Store>(store: &S) {
    assert!(ok(store.unintegrated_talks(100).await, "unintegrated_talks").is_empty());
    // Opened out of id order, so the order is the store's.
    let mut ts = BTreeMap::new();
    for n in [5, 2, 4, 1, 3] {
        ts.insert(n, open(store, n).await);
    }
    let t = |n: u8| ts[&n];
    assert!(
        ok(store.unintegrated_talks(100).await, "unintegrated_talks").is_empty(),
        "empty logs have nothing to integrate"
    );
    let a = sender(labels::US_HEAD_DEVICE);
    let batch = vec![
        submission(t(5), a, 1, 0),
        submission(t(2), a, 2, 0),
        submission(t(1), a, 3, 0),
        submission(t(4), a, 4, 0),
        submission(t(4), a, 5, 0),
    ];
    sequence(store, batch, 1000).await;
    let check = async |limit: usize, want: &[u8]| {
        let got = ok(store.unintegrated_talks(limit).await, "unintegrated_talks");
        let want: Vec<TalksId> = want.iter().map(|&n| t(n)).collect();
        assert_eq!(got, want, "unintegrated_talks({limit})");
    };
    check(100, &[1, 2, 4, 5]).await;
    check(4, &[1, 2, 4, 5]).await;
    check(2, &[1, 2]).await;
    check(1, &[1]).await;
    check(0, &[]).await;
    check(usize::MAX, &[1, 2, 4, 5]).await;

    // A talks' first checkpoint of its empty log changes nothing.
    let empty = MemoryHashStore::new();
    ok(
        store
            .integrate(t(3), 0, 0, &[], &checkpoint_at(t(3), &empty, 0), None)
            .await,
        "integrate an empty log",
    );
    check(100, &[1, 2, 4, 5]).await;

    let integrate_all = async |n: u8, from: u64, to: u64| {
        let mut tree = MemoryHashStore::new();
        for e in read_all(store, t(n)).await {
            ok(tree.append(&e.leaf_hash), "reference tree");
        }
        ok(
            store
                .integrate(
                    t(n),
                    from,
                    to,
                    &hashes_between(&tree, from, to),
                    &checkpoint_at(t(n), &tree, to),
                    None,
                )
                .await,
            "integrate",
        );
    };
    integrate_all(2, 0, 1).await;
    check(100, &[1, 4, 5]).await;
    // Partly integrated is still work.
    integrate_all(4, 0, 1).await;
    check(100, &[1, 4, 5]).await;
    integrate_all(4, 1, 2).await;
    check(100, &[1, 5]).await;
    check(1, &[1]).await;
    // A new leaf puts a talks back on the list.
    sequence(store, vec![submission(t(2), a, 6, 0)], 1000).await;
    check(100, &[1, 2, 5]).await;
    integrate_all(1, 0, 1).await;
    integrate_all(2, 1, 2).await;
    integrate_all(5, 0, 1).await;
    check(100, &[]).await;
}

/// Invitations are created once per token hash and talks, read back one
/// by one and listed by token hash; a duplicate is `Exists`, an unknown
/// talks `UnknownTalks`, a malformed one `Limit`, and none writes anything.
pub async fn invitations_create_and_list<S: Store>(store: &S) {
    let (t, other) = (open(store, 1).await, open(store, 2).await);
    let unknown = talks_id(9);
    let invs: Vec<InvitationRecord> = (0..5u16)
        .map(|n| invitation(n, party(n as u8 % 2)))
        .collect();
    assert!(ok(store.invitations(t).await, "invitations").is_empty());
    assert_eq!(
        ok(store.invitation(t, invs[0].token_hash).await, "invitation"),
        None
    );
    for inv in &invs {
        ok(store.create_invitation(t, inv).await, "create_invitation");
    }
    // Token hashes are scoped to their talks.
    ok(
        store.create_invitation(other, &invs[0]).await,
        "the same token hash in other talks",
    );
    for inv in &invs {
        assert_eq!(
            ok(store.invitation(t, inv.token_hash).await, "invitation"),
            Some(inv.clone())
        );
    }
    let mut sorted = invs.clone();
    sorted.sort_by_key(|i| i.token_hash);
    assert_ne!(
        sorted, invs,
        "the suite's token hashes are not created in order"
    );
    assert_eq!(ok(store.invitations(t).await, "invitations"), sorted);
    assert_eq!(
        ok(store.invitations(other).await, "invitations"),
        [invs[0].clone()]
    );

    let before = enrolment(store, t).await;
    let duplicate = InvitationRecord {
        party: party(7),
        invitation: b"another invitation under the same token".to_vec(),
        ..invs[2].clone()
    };
    let redeemed = InvitationRecord {
        redeemed: Some(redemption(labels::US_HEAD_DEVICE, 10)),
        ..invitation(10, party(0))
    };
    let late = InvitationRecord {
        expires_at: MAX_NUMBER + 1,
        ..invitation(11, party(0))
    };
    let early = InvitationRecord {
        created_at: MAX_NUMBER + 1,
        ..invitation(12, party(0))
    };
    for (what, talks, inv, want) in [
        ("a duplicate token hash", t, &duplicate, "Exists"),
        (
            "an unknown talks",
            unknown,
            &invitation(13, party(0)),
            "UnknownTalks",
        ),
        ("an invitation already redeemed", t, &redeemed, "Limit"),
        ("an expiry of 2^63", t, &late, "Limit"),
        ("a creation time of 2^63", t, &early, "Limit"),
    ] {
        refused(store.create_invitation(talks, inv).await, want, what);
        assert_eq!(enrolment(store, t).await, before, "{what}: nothing written");
        assert_eq!(
            ok(store.invitation(talks, inv.token_hash).await, "invitation"),
            (talks == t && inv.token_hash == duplicate.token_hash).then(|| invs[2].clone()),
            "{what}: nothing written"
        );
    }
    assert!(ok(store.invitations(unknown).await, "invitations").is_empty());
    assert_eq!(ok(store.talks(unknown).await, "talks"), None);
}

/// A talks holds at most [`MAX_INVITATIONS`] invitations, redeemed or not:
/// one more is `Limit` and writes nothing; other talks are not affected.
pub async fn invitation_limit<S: Store>(store: &S) {
    let (t, other) = (open(store, 1).await, open(store, 2).await);
    let max = MAX_INVITATIONS as u16;
    for n in 0..max {
        ok(
            store.create_invitation(t, &invitation(n, party(1))).await,
            "create_invitation up to the limit",
        );
    }
    // Redeeming one frees nothing.
    ok(
        store
            .redeem_invitation(
                t,
                invitation(0, party(1)).token_hash,
                &redemption(labels::US_HEAD_DEVICE, 8),
                access_list(1, 0).hash,
                &access_list(2, 1),
            )
            .await,
        "redeem_invitation",
    );
    let before = enrolment(store, t).await;
    assert_eq!(before.invitations.len(), MAX_INVITATIONS);
    let extra = invitation(max, party(1));
    refused(
        store.create_invitation(t, &extra).await,
        "Limit",
        "MAX_INVITATIONS + 1",
    );
    assert_eq!(enrolment(store, t).await, before, "nothing written");
    assert_eq!(
        ok(store.invitation(t, extra.token_hash).await, "invitation"),
        None
    );
    // A duplicate at the limit is still a duplicate.
    refused(
        store.create_invitation(t, &invitation(5, party(1))).await,
        "Exists",
        "a duplicate at the limit",
    );
    ok(
        store.create_invitation(other, &extra).await,
        "another talks has its own limit",
    );
}

/// Redeeming marks the invitation redeemed with its redemption and installs
/// the next access list in one step, dropping the pending changes; a second
/// redemption, an unknown token, a stale access list or a skipped version
/// is `Stale`, a payload over [`MAX_ENROLMENT_PAYLOAD`] `Limit`, and none
/// of them writes anything.
pub async fn redeem_invitation_once<S: Store>(store: &S) {
    let (t, other) = (open(store, 1).await, open(store, 2).await);
    let (v0, v1, v2) = (access_list(1, 0), access_list(21, 1), access_list(22, 2));
    let (i1, i2) = (invitation(1, party(1)), invitation(2, party(2)));
    for inv in [&i1, &i2] {
        ok(store.create_invitation(t, inv).await, "create_invitation");
    }
    ok(
        store.create_invitation(other, &i1).await,
        "create_invitation in other talks",
    );
    ok(
        store
            .put_pending_change(t, v0.hash, None, &pending_change(1, 1))
            .await,
        "put_pending_change",
    );
    let largest = redemption(labels::US_HEAD_DEVICE, MAX_ENROLMENT_PAYLOAD);
    let too_large = redemption(labels::US_HEAD_DEVICE, MAX_ENROLMENT_PAYLOAD + 1);
    let too_late = Redemption {
        at: MAX_NUMBER + 1,
        ..largest.clone()
    };
    let before = enrolment(store, t).await;
    let other_before = enrolment(store, other).await;
    for (what, talks, token, r, expected, next, want) in [
        (
            "an unknown token",
            t,
            sha256(&token(9)),
            &largest,
            v0.hash,
            &v1,
            "Stale",
        ),
        (
            "a token's own bytes, not its hash",
            t,
            Digest(token(1)),
            &largest,
            v0.hash,
            &v1,
            "Stale",
        ),
        (
            "a stale expected hash",
            t,
            i1.token_hash,
            &largest,
            v1.hash,
            &v1,
            "Stale",
        ),
        (
            "the same version",
            t,
            i1.token_hash,
            &largest,
            v0.hash,
            &access_list(21, 0),
            "Stale",
        ),
        (
            "a skipped version",
            t,
            i1.token_hash,
            &largest,
            v0.hash,
            &v2,
            "Stale",
        ),
        (
            "a payload over the limit",
            t,
            i1.token_hash,
            &too_large,
            v0.hash,
            &v1,
            "Limit",
        ),
        (
            "a time of 2^63",
            t,
            i1.token_hash,
            &too_late,
            v0.hash,
            &v1,
            "Limit",
        ),
        (
            "an unknown talks",
            talks_id(9),
            i1.token_hash,
            &largest,
            v0.hash,
            &v1,
            "UnknownTalks",
        ),
    ] {
        refused(
            store
                .redeem_invitation(talks, token, r, expected, next)
                .await,
            want,
            what,
        );
        assert_eq!(enrolment(store, t).await, before, "{what}: nothing written");
    }

    ok(
        store
            .redeem_invitation(t, i1.token_hash, &largest, v0.hash, &v1)
            .await,
        "redeem_invitation",
    );
    let redeemed = InvitationRecord {
        redeemed: Some(largest.clone()),
        ..i1.clone()
    };
    let after = enrolment(store, t).await;
    assert_eq!(
        ok(store.invitation(t, i1.token_hash).await, "invitation"),
        Some(redeemed.clone())
    );
    assert_eq!(
        ok(store.invitation(t, i2.token_hash).await, "invitation"),
        Some(i2.clone()),
        "the other invitation is untouched"
    );
    assert_eq!(after.access, Some(v1.clone()), "the next list, version 1");
    assert!(after.pending.is_empty(), "pending changes are dropped");
    assert_eq!(
        enrolment(store, other).await,
        other_before,
        "other talks are untouched"
    );

    // Once only, whatever the access list.
    for (what, expected, next) in [
        ("a second redemption", v1.hash, &v2),
        ("a second redemption on the old list", v0.hash, &v1),
    ] {
        refused(
            store
                .redeem_invitation(
                    t,
                    i1.token_hash,
                    &redemption(labels::IRAN_HEAD_DEVICE, 3),
                    expected,
                    next,
                )
                .await,
            "Stale",
            what,
        );
        assert_eq!(enrolment(store, t).await, after, "{what}: nothing written");
    }
    // Another invitation against the list the first one replaced.
    refused(
        store
            .redeem_invitation(
                t,
                i2.token_hash,
                &redemption(labels::IRAN_HEAD_DEVICE, 0),
                v0.hash,
                &v1,
            )
            .await,
        "Stale",
        "a redemption on a replaced access list",
    );
    assert_eq!(enrolment(store, t).await, after, "nothing written");
    let empty = redemption(labels::IRAN_HEAD_DEVICE, 0);
    ok(
        store
            .redeem_invitation(t, i2.token_hash, &empty, v1.hash, &v2)
            .await,
        "redeem the second invitation",
    );
    assert_eq!(
        ok(store.invitation(t, i2.token_hash).await, "invitation"),
        Some(InvitationRecord {
            redeemed: Some(empty),
            ..i2
        })
    );
    assert_eq!(ok(store.access_list(t).await, "access_list"), Some(v2));
    assert_eq!(
        ok(store.invitation(other, i1.token_hash).await, "invitation"),
        Some(i1),
        "the same token hash in other talks stays unredeemed"
    );
}

/// A pending change is stored and updated only by compare-and-swap on the
/// access list's hash and on the change stored for its delta hash; a
/// refused put writes nothing; changes are listed by delta hash.
pub async fn pending_changes_compare_and_swap<S: Store>(store: &S) {
    let (t, other) = (open(store, 1).await, open(store, 2).await);
    let base = access_list(1, 0).hash;
    let (c1, c1b, c1c) = (
        pending_change(1, 1),
        pending_change(1, 2),
        pending_change(1, 3),
    );
    assert!(ok(store.pending_changes(t).await, "pending_changes").is_empty());
    assert!(ok(store.pending_changes(talks_id(9)).await, "pending_changes").is_empty());

    ok(
        store.put_pending_change(t, base, None, &c1).await,
        "put a new change",
    );
    assert_eq!(
        ok(store.pending_changes(t).await, "pending_changes"),
        std::slice::from_ref(&c1)
    );
    let before = enrolment(store, t).await;
    let absent = pending_change(2, 1);
    for (what, talks, base, expected, change, want) in [
        ("a new change that exists", t, base, None, &c1b, "Stale"),
        (
            "a wrong expected change",
            t,
            base,
            Some(&c1b.change[..]),
            &c1c,
            "Stale",
        ),
        (
            "an expected change that is absent",
            t,
            base,
            Some(&absent.change[..]),
            &absent,
            "Stale",
        ),
        (
            "a wrong base",
            t,
            access_list(2, 0).hash,
            Some(&c1.change[..]),
            &c1b,
            "Stale",
        ),
        (
            "a wrong base for a new change",
            t,
            access_list(2, 0).hash,
            None,
            &absent,
            "Stale",
        ),
        (
            "an unknown talks",
            talks_id(9),
            base,
            None,
            &absent,
            "UnknownTalks",
        ),
    ] {
        refused(
            store
                .put_pending_change(talks, base, expected, change)
                .await,
            want,
            what,
        );
        assert_eq!(enrolment(store, t).await, before, "{what}: nothing written");
    }
    assert!(ok(store.pending_changes(talks_id(9)).await, "pending_changes").is_empty());

    ok(
        store
            .put_pending_change(t, base, Some(&c1.change), &c1b)
            .await,
        "update with one more signature",
    );
    ok(
        store
            .put_pending_change(t, base, Some(&c1b.change), &c1c)
            .await,
        "update again",
    );
    refused(
        store
            .put_pending_change(t, base, Some(&c1b.change), &c1b)
            .await,
        "Stale",
        "the change before the update",
    );
    let mut changes: Vec<PendingChange> = (2..6).map(|n| pending_change(n, 0)).collect();
    for c in &changes {
        ok(
            store.put_pending_change(t, base, None, c).await,
            "put another change",
        );
    }
    changes.push(c1c);
    changes.sort_by_key(|c| c.delta_hash);
    assert_eq!(
        ok(store.pending_changes(t).await, "pending_changes"),
        changes
    );
    assert!(
        ok(store.pending_changes(other).await, "pending_changes").is_empty(),
        "other talks are untouched"
    );
    // The same delta in other talks is its own change, on its own base.
    ok(
        store
            .put_pending_change(other, access_list(2, 0).hash, None, &c1)
            .await,
        "the same delta in other talks",
    );
    assert_eq!(
        ok(store.pending_changes(t).await, "pending_changes"),
        changes
    );
}

/// A talks holds at most [`MAX_PENDING_CHANGES`] pending changes: one more
/// new change is `Limit` and writes nothing, while an update of a stored
/// one is still accepted.
pub async fn pending_changes_limit<S: Store>(store: &S) {
    let (t, other) = (open(store, 1).await, open(store, 2).await);
    let base = access_list(1, 0).hash;
    for n in 0..MAX_PENDING_CHANGES as u8 {
        ok(
            store
                .put_pending_change(t, base, None, &pending_change(n, 0))
                .await,
            "put up to the limit",
        );
    }
    let before = enrolment(store, t).await;
    assert_eq!(before.pending.len(), MAX_PENDING_CHANGES);
    let extra = pending_change(MAX_PENDING_CHANGES as u8, 0);
    refused(
        store.put_pending_change(t, base, None, &extra).await,
        "Limit",
        "MAX_PENDING_CHANGES + 1",
    );
    assert_eq!(enrolment(store, t).await, before, "nothing written");
    ok(
        store
            .put_pending_change(
                t,
                base,
                Some(&pending_change(3, 0).change),
                &pending_change(3, 1),
            )
            .await,
        "an update at the limit",
    );
    assert_eq!(
        ok(store.pending_changes(t).await, "pending_changes").len(),
        MAX_PENDING_CHANGES
    );
    ok(
        store
            .put_pending_change(other, access_list(2, 0).hash, None, &extra)
            .await,
        "other talks have their own limit",
    );
}

/// Replacing the access list, directly or by redeeming an invitation, drops
/// every pending change of that talks (their base is gone) and of no other;
/// a refused replacement drops nothing.
pub async fn access_list_changes_drop_pending_changes<S: Store>(store: &S) {
    let (t1, t2) = (open(store, 1).await, open(store, 2).await);
    let (b1, b2) = (access_list(1, 0).hash, access_list(2, 0).hash);
    for (t, base) in [(t1, b1), (t2, b2)] {
        for n in 0..3 {
            ok(
                store
                    .put_pending_change(t, base, None, &pending_change(n, 1))
                    .await,
                "put_pending_change",
            );
        }
    }
    let (before1, before2) = (enrolment(store, t1).await, enrolment(store, t2).await);
    refused(
        store.replace_access_list(t1, b2, &access_list(11, 1)).await,
        "Stale",
        "a stale replacement",
    );
    assert_eq!(enrolment(store, t1).await, before1, "a refused replacement");

    ok(
        store.replace_access_list(t1, b1, &access_list(11, 1)).await,
        "replace_access_list",
    );
    assert!(ok(store.pending_changes(t1).await, "pending_changes").is_empty());
    assert_eq!(
        enrolment(store, t2).await,
        before2,
        "other talks keep theirs"
    );
    // The old base is gone for good; the new one takes changes again.
    refused(
        store
            .put_pending_change(t1, b1, None, &pending_change(0, 1))
            .await,
        "Stale",
        "a change on the replaced list",
    );
    ok(
        store
            .put_pending_change(t1, access_list(11, 1).hash, None, &pending_change(0, 1))
            .await,
        "a change on the new list",
    );
    let after1 = enrolment(store, t1).await;

    let inv = invitation(1, party(1));
    ok(store.create_invitation(t2, &inv).await, "create_invitation");
    ok(
        store
            .redeem_invitation(
                t2,
                inv.token_hash,
                &redemption(labels::US_HEAD_DEVICE, 16),
                b2,
                &access_list(12, 1),
            )
            .await,
        "redeem_invitation",
    );
    assert!(ok(store.pending_changes(t2).await, "pending_changes").is_empty());
    assert_eq!(
        enrolment(store, t1).await,
        after1,
        "other talks keep theirs"
    );
}

/// A blob is created once per hash and talks, incomplete with one room;
/// creating it again from another room adds the room (sorted, unique) and
/// returns the stored record, without counting its size again; another
/// size for the same hash, or a malformed record, is `Limit`; an unknown
/// talks is `UnknownTalks`; refusals write nothing.
pub async fn blobs_create_and_reference<S: Store>(store: &S) {
    let (t, other) = (open(store, 1).await, open(store, 2).await);
    let (pa, pb) = (party(1), party(2));
    let b1 = new_blob(1, 10, pa, blob_room(5));
    assert_eq!(ok(store.blob(t, b1.hash).await, "blob"), None);
    assert_eq!(ok(store.create_blob(t, &b1, 10).await, "create_blob"), b1);
    assert_eq!(ok(store.blob(t, b1.hash).await, "blob"), Some(b1.clone()));
    assert_eq!(ok(store.blob(other, b1.hash).await, "blob"), None);

    // Another party uploads the same content from two other rooms: the
    // record keeps its first party, uploader and time, and gains the rooms.
    let again = |room| BlobRecord {
        party: pb,
        uploader: sender(labels::IRAN_HEAD_DEVICE),
        created_at: b1.created_at + 1,
        ..new_blob(1, 10, pb, room)
    };
    let mut want = b1.clone();
    for (room, rooms) in [
        (blob_room(2), vec![blob_room(2), blob_room(5)]),
        (blob_room(9), vec![blob_room(2), blob_room(5), blob_room(9)]),
        (blob_room(5), vec![blob_room(2), blob_room(5), blob_room(9)]),
        (blob_room(2), vec![blob_room(2), blob_room(5), blob_room(9)]),
    ] {
        // A quota of 0: referencing an existing blob counts nothing.
        want.rooms = rooms;
        assert_eq!(
            ok(
                store.create_blob(t, &again(room), 0).await,
                "create_blob again"
            ),
            want,
            "from {room}"
        );
        assert_eq!(ok(store.blob(t, b1.hash).await, "blob"), Some(want.clone()));
    }
    // Party A's 10 bytes are counted once: 5 more fit a quota of 15.
    let b2 = new_blob(2, 5, pa, blob_room(1));
    assert_eq!(ok(store.create_blob(t, &b2, 15).await, "create_blob"), b2);
    // Party B's quota was never charged for the shared blob.
    let b3 = new_blob(3, 7, pb, blob_room(1));
    assert_eq!(ok(store.create_blob(t, &b3, 7).await, "create_blob"), b3);

    let before = blob_view(store, t, b1.hash).await;
    let fresh = new_blob(4, 3, pa, blob_room(1));
    let resized = BlobRecord {
        size: 11,
        ..new_blob(1, 10, pa, blob_room(7))
    };
    let cases: Vec<(&str, TalksId, BlobRecord, &str)> = vec![
        ("the same hash with another size", t, resized, "Limit"),
        (
            "no room",
            t,
            BlobRecord {
                rooms: vec![],
                ..fresh.clone()
            },
            "Limit",
        ),
        (
            "two rooms",
            t,
            BlobRecord {
                rooms: vec![blob_room(1), blob_room(2)],
                ..fresh.clone()
            },
            "Limit",
        ),
        (
            "complete already",
            t,
            BlobRecord {
                complete: true,
                ..fresh.clone()
            },
            "Limit",
        ),
        (
            "a size of 2^63",
            t,
            BlobRecord {
                size: MAX_NUMBER + 1,
                ..fresh.clone()
            },
            "Limit",
        ),
        (
            "a creation time of 2^63",
            t,
            BlobRecord {
                created_at: MAX_NUMBER + 1,
                ..fresh.clone()
            },
            "Limit",
        ),
        (
            "an unknown talks",
            talks_id(9),
            fresh.clone(),
            "UnknownTalks",
        ),
    ];
    for (what, talks, record, want) in cases {
        refused(
            store.create_blob(talks, &record, u64::MAX).await,
            want,
            what,
        );
        assert_eq!(
            blob_view(store, t, b1.hash).await,
            before,
            "{what}: nothing written"
        );
        assert_eq!(
            ok(store.blob(talks, fresh.hash).await, "blob"),
            None,
            "{what}: nothing written"
        );
    }
    assert_eq!(ok(store.blob(talks_id(9), b1.hash).await, "blob"), None);
    assert_eq!(ok(store.talks(talks_id(9)).await, "talks"), None);
}

/// A new blob counts its size against its party's quota in its talks: one
/// that would take the party's total past `quota` is `Quota` and writes
/// nothing; exactly the quota fits; parties and talks have separate
/// totals; a total never passes 2^63, whatever the quota.
pub async fn blob_quota<S: Store>(store: &S) {
    let (t, other) = (open(store, 1).await, open(store, 2).await);
    let (pa, pb, pc) = (party(1), party(2), party(3));
    let r = blob_room(1);
    // (what, talks, blob, quota, accepted)
    let cases = [
        ("party A, first blob", t, new_blob(1, 60, pa, r), 100, true),
        (
            "party A, one byte over",
            t,
            new_blob(2, 41, pa, r),
            100,
            false,
        ),
        (
            "party A, exactly the quota",
            t,
            new_blob(3, 40, pa, r),
            100,
            true,
        ),
        ("party A, full", t, new_blob(4, 1, pa, r), 100, false),
        (
            "party A, an empty blob when full",
            t,
            new_blob(5, 0, pa, r),
            100,
            true,
        ),
        (
            "party A, a larger quota",
            t,
            new_blob(6, 50, pa, r),
            150,
            true,
        ),
        (
            "party B, its own total",
            t,
            new_blob(7, 100, pb, r),
            100,
            true,
        ),
        (
            "party A, other talks",
            other,
            new_blob(8, 100, pa, r),
            100,
            true,
        ),
        (
            "party B, a quota of 0",
            other,
            new_blob(9, 1, pb, r),
            0,
            false,
        ),
        (
            "party C, a blob larger than its quota",
            t,
            new_blob(10, 11, pc, r),
            10,
            false,
        ),
        (
            "party C, up to 2^63 - 1",
            t,
            new_blob(11, MAX_NUMBER - 1, pc, r),
            u64::MAX,
            true,
        ),
        (
            "party C, one byte to 2^63 - 1",
            t,
            new_blob(12, 1, pc, r),
            u64::MAX,
            true,
        ),
        (
            "party C, past 2^63 - 1",
            t,
            new_blob(13, 1, pc, r),
            u64::MAX,
            false,
        ),
    ];
    for (what, talks, blob, quota, accepted) in cases {
        let r = store.create_blob(talks, &blob, quota).await;
        if accepted {
            assert_eq!(ok(r, what), blob, "{what}");
            assert_eq!(ok(store.blob(talks, blob.hash).await, "blob"), Some(blob));
        } else {
            refused(r, "Quota", what);
            assert_eq!(
                ok(store.blob(talks, blob.hash).await, "blob"),
                None,
                "{what}: nothing written"
            );
        }
    }
}

/// Concurrent creations of one party's blobs are checked against its quota
/// one at a time: exactly as many as fit are stored.
pub async fn concurrent_blob_quota<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let pa = party(1);
    const CALLS: u8 = 8;
    let blobs: Vec<BlobRecord> = (0..CALLS)
        .map(|n| new_blob(n, 10, pa, blob_room(1)))
        .collect();
    let results =
        futures::future::join_all(blobs.iter().map(|b| store.create_blob(t, b, 35))).await;
    let mut stored = 0;
    for (b, r) in blobs.iter().zip(results) {
        match r {
            Ok(rec) => {
                assert_eq!(&rec, b);
                stored += 1;
            }
            Err(StoreError::Quota) => {}
            Err(e) => panic!("concurrent create_blob: {e:?}"),
        }
    }
    assert_eq!(stored, 3, "three blobs of 10 bytes fit a quota of 35");
    let mut present = 0;
    for b in &blobs {
        present += usize::from(ok(store.blob(t, b.hash).await, "blob").is_some());
    }
    assert_eq!(present, 3, "the refused blobs were not written");
}

/// Chunks have exactly their length ([`BlobRecord::chunk_len`]); a wrong
/// length, an index past the end, an unknown or complete blob is `Limit`
/// and writes nothing; a chunk stored again is replaced; completing needs
/// every chunk (`Limit` otherwise), once complete a blob takes no chunk,
/// and completing it again is `Ok`.
pub async fn blob_chunks<S: Store>(store: &S) {
    let (t, other) = (open(store, 1).await, open(store, 2).await);
    let size = 2 * BLOB_CHUNK + 5;
    let content = blob_content(1, size);
    let b = new_blob(1, size, party(1), blob_room(1));
    let h = b.hash;
    ok(store.create_blob(t, &b, u64::MAX).await, "create_blob");
    let small = new_blob(2, 5, party(1), blob_room(1));
    ok(store.create_blob(t, &small, u64::MAX).await, "create_blob");
    assert_eq!(BlobRecord::chunk_count(size), 3);
    let chunk = |i: u64| chunk_of(&content, i);
    let full = BLOB_CHUNK as usize;
    let empty = blob_view(store, t, h).await;
    assert!(empty.present.is_empty());

    let unknown = sha256(b"no such blob");
    // (what, talks, hash, index, length, error)
    let cases: &[(&str, TalksId, Digest, u64, usize, &str)] = &[
        ("a first chunk one byte short", t, h, 0, full - 1, "Limit"),
        ("a first chunk one byte long", t, h, 0, full + 1, "Limit"),
        ("an empty first chunk", t, h, 0, 0, "Limit"),
        ("a last chunk one byte short", t, h, 2, 4, "Limit"),
        ("a last chunk one byte long", t, h, 2, 6, "Limit"),
        ("a full-size last chunk", t, h, 2, full, "Limit"),
        ("the index past the end", t, h, 3, 0, "Limit"),
        ("the index past the end, with bytes", t, h, 3, 5, "Limit"),
        ("the largest index", t, h, u64::MAX, 0, "Limit"),
        ("index 2^63", t, h, 1 << 63, 0, "Limit"),
        ("an unknown blob", t, unknown, 0, full, "Limit"),
        ("a blob of other talks", other, h, 0, full, "Limit"),
        ("an unknown talks", talks_id(9), h, 0, full, "UnknownTalks"),
    ];
    for &(what, talks, hash, index, len, want) in cases {
        let bytes = vec![0xab; len];
        refused(
            store.put_blob_chunk(talks, hash, index, &bytes).await,
            want,
            what,
        );
        assert_eq!(
            blob_view(store, t, h).await,
            empty,
            "{what}: nothing written"
        );
    }
    assert!(
        ok(
            store.blob_chunks_present(t, unknown).await,
            "blob_chunks_present"
        )
        .is_empty()
    );
    assert!(
        ok(
            store.blob_chunks_present(other, h).await,
            "blob_chunks_present"
        )
        .is_empty()
    );
    assert_eq!(
        ok(store.blob_chunk(t, unknown, 0).await, "blob_chunk"),
        None
    );
    assert_eq!(
        ok(store.blob_chunk(t, h, u64::MAX).await, "blob_chunk"),
        None
    );
    refused(
        store.complete_blob(t, h).await,
        "Limit",
        "completing with no chunk",
    );
    refused(
        store.complete_blob(t, unknown).await,
        "Limit",
        "completing an unknown blob",
    );
    refused(
        store.complete_blob(other, h).await,
        "Limit",
        "completing a blob of other talks",
    );
    refused(
        store.complete_blob(talks_id(9), h).await,
        "UnknownTalks",
        "completing in an unknown talks",
    );
    assert_eq!(blob_view(store, t, h).await, empty, "nothing written");

    // Out of order, and a chunk replaced.
    ok(store.put_blob_chunk(t, h, 2, &chunk(2)).await, "chunk 2");
    let wrong = vec![0xee; full];
    ok(
        store.put_blob_chunk(t, h, 0, &wrong).await,
        "chunk 0, wrong bytes",
    );
    assert_eq!(
        ok(store.blob_chunk(t, h, 0).await, "blob_chunk"),
        Some(wrong)
    );
    ok(
        store.put_blob_chunk(t, h, 0, &chunk(0)).await,
        "chunk 0 again",
    );
    assert_eq!(
        ok(store.blob_chunk(t, h, 0).await, "blob_chunk"),
        Some(chunk(0))
    );
    assert_eq!(ok(store.blob_chunk(t, h, 1).await, "blob_chunk"), None);
    assert_eq!(
        ok(store.blob_chunks_present(t, h).await, "blob_chunks_present"),
        [0, 2]
    );
    let partial = blob_view(store, t, h).await;
    refused(
        store.complete_blob(t, h).await,
        "Limit",
        "completing with chunk 1 missing",
    );
    assert_eq!(blob_view(store, t, h).await, partial, "nothing written");
    assert!(!ok(store.blob(t, h).await, "blob").is_some_and(|r| r.complete));

    ok(store.put_blob_chunk(t, h, 1, &chunk(1)).await, "chunk 1");
    assert_eq!(
        ok(store.blob_chunks_present(t, h).await, "blob_chunks_present"),
        [0, 1, 2]
    );
    let mut all = Vec::new();
    for i in 0..3 {
        all.extend(ok(store.blob_chunk(t, h, i).await, "blob_chunk").unwrap_or_default());
    }
    assert!(all == content, "the chunks are the content");
    // The other blob is untouched by all this.
    assert!(
        ok(
            store.blob_chunks_present(t, small.hash).await,
            "blob_chunks_present"
        )
        .is_empty()
    );

    ok(store.complete_blob(t, h).await, "complete_blob");
    let done = BlobRecord {
        complete: true,
        ..b.clone()
    };
    assert_eq!(ok(store.blob(t, h).await, "blob"), Some(done.clone()));
    ok(store.complete_blob(t, h).await, "completing again");
    let complete = blob_view(store, t, h).await;
    for (what, index, bytes) in [
        ("a chunk again", 1, chunk(1)),
        ("a different chunk", 1, vec![0xee; full]),
        ("a bad chunk", 2, vec![0; 1]),
    ] {
        refused(
            store.put_blob_chunk(t, h, index, &bytes).await,
            "Limit",
            &format!("{what} into a complete blob"),
        );
        assert_eq!(
            blob_view(store, t, h).await,
            complete,
            "{what}: nothing written"
        );
    }
    // Referencing a complete blob from another room keeps it complete.
    let mut from_room = done;
    from_room.rooms.insert(0, blob_room(0));
    assert_eq!(
        ok(
            store
                .create_blob(t, &new_blob(1, size, party(2), blob_room(0)), 0)
                .await,
            "create_blob of a complete blob"
        ),
        from_room
    );
}

/// An empty blob has no chunk: none can be stored, and it completes at once.
pub async fn empty_blob<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let b = new_blob(1, 0, party(1), blob_room(1));
    assert_eq!(BlobRecord::chunk_count(0), 0);
    assert_eq!(ok(store.create_blob(t, &b, 0).await, "create_blob"), b);
    refused(
        store.put_blob_chunk(t, b.hash, 0, &[]).await,
        "Limit",
        "chunk 0 of an empty blob",
    );
    assert!(
        ok(
            store.blob_chunks_present(t, b.hash).await,
            "blob_chunks_present"
        )
        .is_empty()
    );
    ok(store.complete_blob(t, b.hash).await, "complete_blob");
    assert_eq!(
        ok(store.blob(t, b.hash).await, "blob"),
        Some(BlobRecord {
            complete: true,
            ..b
        })
    );
}

// ---------------------------------------------------------------------------
// MLS rooms: gated sequencing, Welcomes, key packages.

/// The `n`-th MLS room id of the suite (`n < 16`).
pub fn mls_room(n: u8) -> RoomId {
    RoomId(fixtures::id(0xE0 | (n & 0x0f)))
}

/// The room state a commit (or create) by `tag` leaves at `epoch`: opaque
/// bytes, distinct per (`tag`, `epoch`).
pub fn room_update(tag: u8, epoch: u64) -> RoomStateUpdate {
    RoomStateUpdate {
        public_group: format!("public group by {tag} at epoch {epoch}").into_bytes(),
        group_info: format!("group info by {tag} at epoch {epoch}").into_bytes(),
    }
}

/// [`submission`] into MLS room `room`, gated by `gate`.
pub fn gated(talks: TalksId, sender: KeyId, key: u32, room: RoomId, gate: Gate) -> Submission {
    Submission {
        room,
        gate: Some(gate),
        ..submission(talks, sender, key, 0)
    }
}

/// A Create gate with the state of [`room_update`]`(tag, 0)`.
pub fn create_gate(tag: u8) -> Gate {
    Gate::Create {
        state: room_update(tag, 0),
    }
}

/// A Commit gate from `epoch` with the state of
/// [`room_update`]`(tag, epoch + 1)`.
pub fn commit_gate(tag: u8, epoch: u64) -> Gate {
    Gate::Commit {
        epoch,
        state: room_update(tag, epoch + 1),
    }
}

/// The room state a store must show after `update` at `epoch`.
pub fn room_state_of(update: &RoomStateUpdate, epoch: u64, created_seq: u64) -> RoomState {
    RoomState {
        epoch,
        public_group: update.public_group.clone(),
        group_info: update.group_info.clone(),
        created_seq,
    }
}

/// Key package number `n` (its reference is `n` repeated, so references
/// sort by `n`), valid until `not_after`.
pub fn key_package(n: u8, not_after: u64, last_resort: bool) -> KeyPackageRecord {
    KeyPackageRecord {
        reference: vec![n; 32],
        bytes: format!("key package {n} until {not_after}").into_bytes(),
        not_after,
        last_resort,
    }
}

/// The suite's "now" for key packages (Unix seconds).
pub const KP_NOW: u64 = 1_700_000_000;

async fn room_state_at<S: Store>(store: &S, t: TalksId, room: RoomId) -> Option<RoomState> {
    ok(store.room_state(t, room).await, "room_state")
}

/// A room's group is created once: a second Create, in the same batch or a
/// later one, is `EpochTaken` naming the creating envelope; every other
/// gate on a room without a group is `NoGroup`; rooms and talks are
/// independent; the state reads back.
pub async fn mls_create_once<S: Store>(store: &S) {
    let (t1, t2) = (open(store, 1).await, open(store, 2).await);
    let a = sender(labels::US_HEAD_DEVICE);
    let b = sender(labels::IRAN_HEAD_DEVICE);
    let (r1, r2) = (mls_room(1), mls_room(2));
    assert_eq!(room_state_at(store, t1, r1).await, None);
    assert_eq!(
        room_state_at(store, talks_id(9), r1).await,
        None,
        "unknown talks"
    );

    let out = sequence(
        store,
        vec![
            submission(t1, a, 1, 0),
            gated(t1, a, 2, r1, Gate::Epoch { epoch: 0 }),
            gated(t1, a, 3, r1, commit_gate(1, 0)),
            gated(
                t1,
                a,
                4,
                r1,
                Gate::Welcome {
                    commit_epoch: 0,
                    commit: sha256(b"no commit"),
                    to: vec![b],
                },
            ),
            gated(t1, a, 5, r1, create_gate(1)),
            gated(t1, b, 5, r1, create_gate(2)),
            gated(t1, b, 6, r2, create_gate(3)),
            gated(t2, b, 7, r1, create_gate(4)),
        ],
        1000,
    )
    .await;
    assert_eq!(placed(&out[0], "ungated").seq, 0);
    for (i, what) in [(1, "app"), (2, "commit"), (3, "welcome")] {
        assert_eq!(
            out[i],
            Outcome::NoGroup,
            "{what} gated on a room with no group"
        );
    }
    assert_eq!(placed(&out[4], "create").seq, 1);
    assert_eq!(
        out[5],
        Outcome::EpochTaken { seq: 1 },
        "a second create in the same batch"
    );
    assert_eq!(placed(&out[6], "create in another room").seq, 2);
    assert_eq!(placed(&out[7], "create in another talks").seq, 0);
    assert_eq!(
        room_state_at(store, t1, r1).await,
        Some(room_state_of(&room_update(1, 0), 0, 1))
    );
    assert_eq!(
        room_state_at(store, t1, r2).await,
        Some(room_state_of(&room_update(3, 0), 0, 2))
    );
    assert_eq!(
        room_state_at(store, t2, r1).await,
        Some(room_state_of(&room_update(4, 0), 0, 0))
    );

    let out = sequence(store, vec![gated(t1, b, 8, r1, create_gate(5))], 1001).await;
    assert_eq!(
        out,
        [Outcome::EpochTaken { seq: 1 }],
        "a create in a later batch"
    );
    assert_eq!(ok(store.log_size(t1).await, "log_size"), 3);
    assert_eq!(
        room_state_at(store, t1, r1).await,
        Some(room_state_of(&room_update(1, 0), 0, 1)),
        "a refused create changes nothing"
    );
    // The gate is a property of the submission only: the stored rows are
    // the envelopes, as ever.
    let rows = read_all(store, t1).await;
    assert!(rows.iter().all(|e| e.welcome_to.is_none()));
}

/// Commits race for an epoch: in one batch and across batches exactly one
/// is sequenced and every other is `EpochTaken` naming the winner's seq;
/// the room moves to the next epoch with the winner's state. So under
/// concurrent calls.
pub async fn mls_commit_race<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let a = sender(labels::US_HEAD_DEVICE);
    let b = sender(labels::IRAN_HEAD_DEVICE);
    let r = mls_room(1);
    sequence(store, vec![gated(t, a, 1, r, create_gate(1))], 1000).await;

    let out = sequence(
        store,
        vec![
            gated(t, a, 2, r, commit_gate(1, 0)),
            gated(t, b, 2, r, commit_gate(2, 0)),
        ],
        1000,
    )
    .await;
    assert_eq!(placed(&out[0], "winner").seq, 1);
    assert_eq!(out[1], Outcome::EpochTaken { seq: 1 }, "in-batch loser");
    assert_eq!(
        room_state_at(store, t, r).await,
        Some(room_state_of(&room_update(1, 1), 1, 0))
    );

    let out = sequence(
        store,
        vec![
            gated(t, b, 3, r, commit_gate(2, 0)),
            gated(t, b, 4, r, commit_gate(2, 1)),
            gated(t, a, 4, r, commit_gate(1, 1)),
        ],
        1000,
    )
    .await;
    assert_eq!(
        out[0],
        Outcome::EpochTaken { seq: 1 },
        "a loser in a later batch"
    );
    assert_eq!(placed(&out[1], "epoch 1 winner").seq, 2);
    assert_eq!(out[2], Outcome::EpochTaken { seq: 2 });
    assert_eq!(
        room_state_at(store, t, r).await,
        Some(room_state_of(&room_update(2, 2), 2, 0))
    );

    // Concurrent calls, each with its own commit for epoch 2.
    const CALLS: u32 = 16;
    let key = log_key();
    let subs: Vec<Submission> = (0..CALLS)
        .map(|i| gated(t, b, 100 + i, r, commit_gate(10 + i as u8, 2)))
        .collect();
    let calls = subs.iter().map(|s| {
        let key = &key;
        async move { store.sequence(vec![s.clone()], 2000, key).await }
    });
    let results = futures::future::join_all(calls).await;
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for (i, res) in results.into_iter().enumerate() {
        match ok(res, "concurrent commits").as_slice() {
            [Outcome::Sequenced(p)] => winners.push((i, p.clone())),
            [Outcome::EpochTaken { seq }] => losers.push(*seq),
            other => panic!("concurrent commit {i}: {other:?}"),
        }
    }
    let [(w, p)] = winners.as_slice() else {
        panic!("exactly one concurrent commit must win: {winners:?}");
    };
    assert_eq!(p.seq, 3);
    assert!(
        losers.iter().all(|&s| s == p.seq),
        "every loser names the winner"
    );
    assert_eq!(
        room_state_at(store, t, r).await,
        Some(room_state_of(&room_update(10 + *w as u8, 3), 3, 0))
    );
    assert_eq!(ok(store.log_size(t).await, "log_size"), 4);
    let rows = read_all(store, t).await;
    assert_eq!(rows[3].header, subs[*w].header, "only the winner is stored");
}

/// Application messages and proposals are sequenced only in the room's
/// current epoch (`StaleEpoch` naming it otherwise, behind or ahead, and
/// so is a commit from an epoch ahead); an application message after a
/// commit in the same batch is stale.
pub async fn mls_stale_epoch<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let a = sender(labels::US_HEAD_DEVICE);
    let b = sender(labels::IRAN_HEAD_DEVICE);
    let r = mls_room(1);
    sequence(store, vec![gated(t, a, 1, r, create_gate(1))], 1000).await;
    let out = sequence(
        store,
        vec![
            gated(t, b, 2, r, Gate::Epoch { epoch: 0 }),
            gated(t, b, 3, r, Gate::Epoch { epoch: 1 }),
            gated(t, b, 4, r, commit_gate(2, 3)),
            gated(t, b, 5, r, Gate::Epoch { epoch: u64::MAX }),
            gated(t, b, 6, r, commit_gate(2, u64::MAX - 1)),
        ],
        1000,
    )
    .await;
    assert_eq!(placed(&out[0], "current epoch").seq, 1);
    assert_eq!(out[1], Outcome::StaleEpoch { epoch: 0 }, "ahead");
    assert_eq!(out[2], Outcome::StaleEpoch { epoch: 0 }, "a commit ahead");
    assert_eq!(out[3], Outcome::StaleEpoch { epoch: 0 }, "far ahead");
    assert_eq!(
        out[4],
        Outcome::StaleEpoch { epoch: 0 },
        "a commit far ahead"
    );

    let out = sequence(
        store,
        vec![
            gated(t, b, 7, r, Gate::Epoch { epoch: 0 }),
            gated(t, a, 8, r, commit_gate(1, 0)),
            gated(t, b, 9, r, Gate::Epoch { epoch: 0 }),
            gated(t, b, 10, r, Gate::Epoch { epoch: 1 }),
        ],
        1000,
    )
    .await;
    assert_eq!(placed(&out[0], "before the commit").seq, 2);
    assert_eq!(placed(&out[1], "commit").seq, 3);
    assert_eq!(
        out[2],
        Outcome::StaleEpoch { epoch: 1 },
        "after a commit of the same batch"
    );
    assert_eq!(placed(&out[3], "in the new epoch").seq, 4);
    let out = sequence(
        store,
        vec![gated(t, b, 11, r, Gate::Epoch { epoch: 0 })],
        1000,
    )
    .await;
    assert_eq!(out, [Outcome::StaleEpoch { epoch: 1 }], "behind");
    assert_eq!(ok(store.log_size(t).await, "log_size"), 5);
    assert_eq!(room_state_at(store, t, r).await.map(|s| s.epoch), Some(1));
}

/// One batch gated on rooms of two talks, each with its own state (read
/// together before the batch writes): every room is gated on its own
/// state and epoch, a room of the same id in the other talks is another
/// room, a room with no group is `NoGroup`, and both talks' heads and
/// states move.
pub async fn mls_rooms_of_two_talks_in_one_batch<S: Store>(store: &S) {
    let (t1, t2) = (open(store, 1).await, open(store, 2).await);
    let a = sender(labels::US_HEAD_DEVICE);
    let b = sender(labels::IRAN_HEAD_DEVICE);
    let (r1, r2, r3) = (mls_room(1), mls_room(2), mls_room(3));
    let out = sequence(
        store,
        vec![
            gated(t1, a, 1, r1, create_gate(1)),
            gated(t2, a, 2, r2, create_gate(2)),
            gated(t2, a, 3, r1, create_gate(3)),
            gated(t1, a, 14, r2, create_gate(6)),
        ],
        1000,
    )
    .await;
    for (i, o) in out.iter().enumerate() {
        placed(o, &format!("create {i}"));
    }
    // Room r1 of t2 moves to epoch 1; the other three stay at 0. The
    // next batch gates on five rooms, more than one lookup statement
    // holds where they are cut in powers of two.
    sequence(store, vec![gated(t2, b, 4, r1, commit_gate(4, 0))], 1000).await;

    let out = sequence(
        store,
        vec![
            gated(t1, b, 5, r1, Gate::Epoch { epoch: 0 }),
            gated(t2, b, 6, r1, Gate::Epoch { epoch: 1 }),
            gated(t2, b, 7, r1, Gate::Epoch { epoch: 0 }),
            gated(t1, b, 8, r3, Gate::Epoch { epoch: 0 }),
            submission(t2, b, 9, 0),
            gated(t2, b, 10, r2, commit_gate(5, 0)),
            gated(t1, b, 11, r1, Gate::Epoch { epoch: 1 }),
            gated(t2, b, 12, r2, Gate::Epoch { epoch: 1 }),
            gated(t2, b, 13, r2, Gate::Epoch { epoch: 0 }),
            gated(t1, b, 15, r2, Gate::Epoch { epoch: 0 }),
        ],
        1000,
    )
    .await;
    assert_eq!(placed(&out[0], "t1 r1 at its epoch 0").seq, 2);
    assert_eq!(placed(&out[1], "t2 r1 at its epoch 1").seq, 3);
    assert_eq!(out[2], Outcome::StaleEpoch { epoch: 1 }, "t2 r1 behind");
    assert_eq!(out[3], Outcome::NoGroup, "t1 r3 has no group");
    assert_eq!(placed(&out[4], "ungated in t2").seq, 4);
    assert_eq!(placed(&out[5], "t2 r2 commit").seq, 5);
    assert_eq!(out[6], Outcome::StaleEpoch { epoch: 0 }, "t1 r1 ahead");
    assert_eq!(placed(&out[7], "t2 r2 after its commit").seq, 6);
    assert_eq!(out[8], Outcome::StaleEpoch { epoch: 1 }, "t2 r2 behind");
    assert_eq!(placed(&out[9], "t1 r2 at its epoch 0").seq, 3);
    assert_eq!(ok(store.log_size(t1).await, "log_size"), 4);
    assert_eq!(ok(store.log_size(t2).await, "log_size"), 7);
    assert_eq!(
        room_state_at(store, t1, r1).await,
        Some(room_state_of(&room_update(1, 0), 0, 0))
    );
    assert_eq!(room_state_at(store, t2, r1).await.map(|s| s.epoch), Some(1));
    assert_eq!(
        room_state_at(store, t2, r2).await,
        Some(room_state_of(&room_update(5, 1), 1, 0))
    );
    assert_eq!(
        room_state_at(store, t1, r2).await,
        Some(room_state_of(&room_update(6, 0), 0, 1))
    );
    assert_eq!(room_state_at(store, t1, r3).await, None);
}

/// The idempotency lookup comes before the gate: a retry of a landed
/// commit, application message or create gets its original placement
/// whatever the room's epoch is now (never `EpochTaken` or `StaleEpoch`),
/// in a later batch or the same one; another header under a landed key is
/// a `Conflict`, as ever.
pub async fn mls_idempotency_first<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let a = sender(labels::US_HEAD_DEVICE);
    let b = sender(labels::IRAN_HEAD_DEVICE);
    let r = mls_room(1);
    let create = gated(t, a, 1, r, create_gate(1));
    let commit0 = gated(t, a, 2, r, commit_gate(1, 0));
    let app1 = gated(t, b, 3, r, Gate::Epoch { epoch: 1 });
    let commit1 = gated(t, b, 4, r, commit_gate(2, 1));
    let first = sequence(
        store,
        vec![
            create.clone(),
            commit0.clone(),
            app1.clone(),
            commit1.clone(),
        ],
        1000,
    )
    .await;
    let placements: Vec<Placement> = first.iter().map(|o| placed(o, "first")).collect();
    assert_eq!(
        placements.iter().map(|p| p.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    let before = room_state_at(store, t, r).await;
    assert_eq!(before.as_ref().map(|s| s.epoch), Some(2));

    let commit2 = gated(t, a, 5, r, commit_gate(1, 2));
    let out = sequence(
        store,
        vec![
            commit0.clone(),
            app1.clone(),
            create.clone(),
            commit2.clone(),
            commit2.clone(),
            Submission {
                gate: Some(commit_gate(9, 2)),
                ..submission(t, a, 2, 1)
            },
        ],
        2000,
    )
    .await;
    assert_eq!(out[0], first[1], "a retried commit after the epoch moved");
    assert_eq!(out[1], first[2], "a retried message after the epoch moved");
    assert_eq!(out[2], first[0], "a retried create");
    let p = placed(&out[3], "new commit");
    assert_eq!(p.seq, 4);
    assert_eq!(out[4], out[3], "an in-batch retry of a commit");
    assert_eq!(
        out[5],
        Outcome::Conflict { seq: 1 },
        "another header under a landed key"
    );
    assert_eq!(ok(store.log_size(t).await, "log_size"), 5);
    assert_eq!(
        room_state_at(store, t, r).await,
        Some(room_state_of(&room_update(1, 3), 3, 0))
    );
}

/// A Welcome is sequenced after its commit only if that commit won its
/// epoch (in the same batch or a later one), and is stored with its
/// audience; a Welcome whose commit lost, is absent or has another hash is
/// `WelcomeOrphaned` and stores nothing.
pub async fn mls_welcome_audience<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let a = sender(labels::US_HEAD_DEVICE);
    let b = sender(labels::IRAN_HEAD_DEVICE);
    let c = sender(labels::US_NEGOTIATOR_DEVICE);
    let r = mls_room(1);
    sequence(store, vec![gated(t, a, 1, r, create_gate(1))], 1000).await;
    let win = gated(t, a, 2, r, commit_gate(1, 0));
    let lose = gated(t, b, 2, r, commit_gate(2, 0));
    let welcome = |sender, key, commit: &Submission, to| {
        gated(
            t,
            sender,
            key,
            r,
            Gate::Welcome {
                commit_epoch: 0,
                commit: commit.header_hash,
                to,
            },
        )
    };
    let w_win = welcome(a, 3, &win, vec![b, c]);
    let w_lose = welcome(b, 3, &lose, vec![a]);
    let batch = vec![win.clone(), w_win.clone(), lose.clone(), w_lose.clone()];
    let out = sequence(store, batch.clone(), 1000).await;
    assert_eq!(placed(&out[0], "commit").seq, 1);
    assert_eq!(placed(&out[1], "welcome").seq, 2);
    assert_eq!(out[2], Outcome::EpochTaken { seq: 1 });
    assert_eq!(out[3], Outcome::WelcomeOrphaned, "its commit lost");

    // Later batches: a Welcome of the winner still goes (with an empty
    // audience too); one for an epoch without a commit does not.
    let w_late = welcome(c, 4, &win, Vec::new());
    let w_absent = gated(
        t,
        c,
        5,
        r,
        Gate::Welcome {
            commit_epoch: 1,
            commit: win.header_hash,
            to: vec![a],
        },
    );
    let w_far = gated(
        t,
        c,
        6,
        r,
        Gate::Welcome {
            commit_epoch: u64::MAX,
            commit: win.header_hash,
            to: vec![a],
        },
    );
    let out2 = sequence(
        store,
        vec![w_late.clone(), w_absent, w_far, w_lose.clone()],
        1000,
    )
    .await;
    assert_eq!(placed(&out2[0], "a later welcome").seq, 3);
    assert_eq!(out2[1], Outcome::WelcomeOrphaned, "no commit for epoch 1");
    assert_eq!(out2[2], Outcome::WelcomeOrphaned, "far epoch");
    assert_eq!(out2[3], Outcome::WelcomeOrphaned, "still orphaned");

    let rows = read_all(store, t).await;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[1], expected_envelope(&win, &placed(&out[0], "commit")));
    assert_eq!(rows[1].welcome_to, None);
    assert_eq!(rows[2], expected_envelope(&w_win, &placed(&out[1], "w")));
    assert_eq!(rows[2].welcome_to, Some(vec![b, c]));
    assert_eq!(rows[3].welcome_to, Some(Vec::new()));
    assert_eq!(
        room_state_at(store, t, r).await,
        Some(room_state_of(&room_update(1, 1), 1, 0))
    );
}

/// A refused gate writes nothing and takes no seq: seqs stay dense around
/// refusals, the room's state is unchanged, and a batch of refusals only
/// writes nothing and notifies nobody.
pub async fn mls_refusals_write_nothing<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let a = sender(labels::US_HEAD_DEVICE);
    let b = sender(labels::IRAN_HEAD_DEVICE);
    let (r, empty) = (mls_room(1), mls_room(2));
    let setup = sequence(
        store,
        vec![
            gated(t, a, 1, r, create_gate(1)),
            gated(t, a, 2, r, commit_gate(1, 0)),
        ],
        1000,
    )
    .await;
    let state = room_state_at(store, t, r).await;
    let rows = read_all(store, t).await;
    let mut rx = store.subscribe();
    let refusals = vec![
        gated(t, b, 10, r, create_gate(2)),
        gated(t, b, 11, r, commit_gate(2, 0)),
        gated(t, b, 12, r, commit_gate(2, 5)),
        gated(t, b, 13, r, Gate::Epoch { epoch: 0 }),
        gated(t, b, 14, empty, Gate::Epoch { epoch: 0 }),
        gated(
            t,
            b,
            15,
            r,
            Gate::Welcome {
                commit_epoch: 0,
                commit: sha256(b"another commit"),
                to: vec![a],
            },
        ),
    ];
    let out = sequence(store, refusals.clone(), 5000).await;
    assert_eq!(
        out,
        [
            Outcome::EpochTaken { seq: 0 },
            Outcome::EpochTaken { seq: 1 },
            Outcome::StaleEpoch { epoch: 1 },
            Outcome::StaleEpoch { epoch: 1 },
            Outcome::NoGroup,
            Outcome::WelcomeOrphaned,
        ]
    );
    assert_eq!(read_all(store, t).await, rows, "refusals store nothing");
    assert_eq!(room_state_at(store, t, r).await, state);
    assert_eq!(room_state_at(store, t, empty).await, None);
    assert_eq!(
        rx.try_recv(),
        Err(TryRecvError::Empty),
        "a batch of refusals notifies nobody"
    );

    // Mixed: the accepted ones take consecutive seqs, in batch order.
    let mut batch = Vec::new();
    for (i, s) in refusals.iter().enumerate() {
        batch.push(s.clone());
        batch.push(submission(t, a, 100 + i as u32, 0));
    }
    batch.push(gated(t, a, 200, r, Gate::Epoch { epoch: 1 }));
    let out = sequence(store, batch.clone(), 6000).await;
    let seqs: Vec<Option<u64>> = out
        .iter()
        .map(|o| match o {
            Outcome::Sequenced(p) => Some(p.seq),
            _ => None,
        })
        .collect();
    let want: Vec<Option<u64>> = (0..refusals.len() as u64)
        .flat_map(|i| [None, Some(2 + i)])
        .chain([Some(2 + refusals.len() as u64)])
        .collect();
    assert_eq!(seqs, want, "refusals take no seq");
    let stored = read_all(store, t).await;
    assert_eq!(stored.len(), 2 + refusals.len() + 1);
    for (i, e) in stored.iter().enumerate() {
        assert_eq!(e.seq, i as u64, "dense seqs");
    }
    let node_key = log_key().public_key();
    for (s, o) in batch.iter().zip(&out) {
        if let Outcome::Sequenced(p) = o {
            check_placement("mixed batch", &node_key, s, p);
        }
    }
    // The receipts of the mixed batch count only its new envelopes.
    let p = placed(&out[1], "mixed");
    let receipt = ok(Receipt::from_canonical_bytes(&p.receipt), "receipt");
    assert_eq!(receipt.batch_size(), refusals.len() as u64 + 1);
    assert_eq!(placed(&setup[0], "setup").seq, 0);
    assert_eq!(room_state_at(store, t, r).await, state);
}

/// Key packages: stored per device, claimed lowest reference first and
/// deleted as they are handed out; the last-resort one is handed out when
/// no other is left and kept, and a new one replaces it; expired ones are
/// skipped and deleted; a duplicate reference is ignored; devices and
/// talks are independent; an unknown talks is `UnknownTalks`.
pub async fn key_packages_put_and_claim<S: Store>(store: &S) {
    let (t, t2) = (open(store, 1).await, open(store, 2).await);
    let d = sender(labels::IRAN_HEAD_DEVICE);
    let other = sender(labels::US_NEGOTIATOR_DEVICE);
    let c = sender(labels::US_HEAD_DEVICE);
    let now = KP_NOW;
    let claim = async |t: TalksId, device: KeyId, now: u64| {
        ok(
            store
                .claim_key_package(t, c, device, now, u32::MAX, 3600)
                .await,
            "claim_key_package",
        )
    };
    let count = async |t: TalksId, device: KeyId, now: u64| {
        ok(
            store.key_package_count(t, device, now).await,
            "key_package_count",
        )
    };
    assert_eq!(count(t, d, now).await, 0);
    assert_eq!(claim(t, d, now).await, None, "nothing to claim");

    let (p1, p2, p3) = (
        key_package(1, now + 100, false),
        key_package(2, now - 1, false),
        key_package(3, now, false),
    );
    let lr1 = key_package(9, now + 100, true);
    ok(
        store
            .put_key_packages(t, d, vec![p3.clone(), p1.clone(), p2.clone(), lr1.clone()])
            .await,
        "put_key_packages",
    );
    ok(
        store
            .put_key_packages(t, other, vec![key_package(1, now + 100, false)])
            .await,
        "put_key_packages (other device)",
    );
    assert_eq!(count(t, d, now).await, 2, "valid ordinary packages");
    assert_eq!(count(t, d, now - 10).await, 3, "the expired one was valid");
    assert_eq!(count(t2, d, now).await, 0, "per talks");

    assert_eq!(claim(t, d, now).await, Some(p1.clone()), "lowest reference");
    assert_eq!(count(t, d, now).await, 1);
    assert_eq!(
        count(t, d, now - 10).await,
        1,
        "the expired package was deleted on the way"
    );
    assert_eq!(
        claim(t, d, now).await,
        Some(p3.clone()),
        "valid at not_after"
    );
    assert_eq!(count(t, d, now).await, 0);
    assert_eq!(claim(t, d, now).await, Some(lr1.clone()), "the last resort");
    assert_eq!(claim(t, d, now).await, Some(lr1.clone()), "kept");
    assert_eq!(count(t, other, now).await, 1, "per device");

    // A new last-resort package replaces the old one; duplicates are
    // ignored, within a call and across calls.
    let lr2 = key_package(8, now + 100, true);
    let p4 = key_package(4, now + 100, false);
    let p4_other = KeyPackageRecord {
        bytes: b"other bytes".to_vec(),
        ..p4.clone()
    };
    ok(
        store
            .put_key_packages(t, d, vec![lr2.clone(), p4.clone(), p4_other.clone()])
            .await,
        "put_key_packages",
    );
    ok(
        store
            .put_key_packages(t, d, vec![p4_other.clone(), lr2.clone()])
            .await,
        "put_key_packages again",
    );
    assert_eq!(count(t, d, now).await, 1);
    assert_eq!(claim(t, d, now).await, Some(p4), "the first upload's bytes");
    assert_eq!(claim(t, d, now).await, Some(lr2.clone()), "replaced");
    // A duplicate of the stored last-resort one is ignored too.
    ok(
        store.put_key_packages(t, d, vec![lr2.clone()]).await,
        "put_key_packages (same last resort)",
    );
    assert_eq!(claim(t, d, now).await, Some(lr2.clone()));
    // An expired last resort is deleted and never handed out.
    assert_eq!(claim(t, d, now + 101).await, None, "everything expired");
    assert_eq!(claim(t, d, now).await, None, "and was deleted");
    // A claimed (deleted) reference may be uploaded again.
    ok(
        store.put_key_packages(t, d, vec![p1.clone()]).await,
        "put_key_packages (again)",
    );
    assert_eq!(claim(t, d, now).await, Some(p1));
    ok(
        store.put_key_packages(t, d, Vec::new()).await,
        "an empty upload",
    );

    let unknown = talks_id(9);
    refused(
        store
            .put_key_packages(unknown, d, vec![key_package(1, now, false)])
            .await,
        "UnknownTalks",
        "put_key_packages on an unknown talks",
    );
    refused(
        store
            .claim_key_package(unknown, c, d, now, u32::MAX, 3600)
            .await,
        "UnknownTalks",
        "claim_key_package on an unknown talks",
    );
    assert_eq!(count(unknown, d, now).await, 0);
}

/// Key package limits: at most [`MAX_KEY_PACKAGES_PER_DEVICE`] per device
/// (its last-resort one included) — over it `Limit` and nothing written,
/// while re-uploading stored references is fine; references of 1 to
/// [`MAX_KEY_PACKAGE_REFERENCE`] bytes, packages of at most
/// [`MAX_KEY_PACKAGE_BYTES`], one last-resort package per upload, times
/// below 2^63.
pub async fn key_packages_limits<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let d = sender(labels::IRAN_HEAD_DEVICE);
    let d2 = sender(labels::US_NEGOTIATOR_DEVICE);
    let c = sender(labels::US_HEAD_DEVICE);
    let now = KP_NOW;
    let max = MAX_KEY_PACKAGES_PER_DEVICE;
    let many = |from: usize, n: usize| -> Vec<KeyPackageRecord> {
        (from..from + n)
            .map(|i| KeyPackageRecord {
                reference: (i as u32).to_be_bytes().to_vec(),
                ..key_package(0, now + 100, false)
            })
            .collect()
    };
    let count = async |device: KeyId| {
        ok(
            store.key_package_count(t, device, now).await,
            "key_package_count",
        )
    };
    refused(
        store.put_key_packages(t, d, many(0, max + 1)).await,
        "Limit",
        "one upload over the cap",
    );
    assert_eq!(count(d).await, 0, "nothing written");
    ok(
        store.put_key_packages(t, d, many(0, max - 1)).await,
        "put up to the cap",
    );
    refused(
        store.put_key_packages(t, d, many(max - 1, 2)).await,
        "Limit",
        "past the cap",
    );
    assert_eq!(count(d).await, max as u64 - 1, "nothing written");
    let lr = key_package(0xF0, now + 100, true);
    ok(
        store
            .put_key_packages(t, d, vec![many(0, 1)[0].clone(), lr.clone()])
            .await,
        "a duplicate and the last resort reach the cap",
    );
    ok(
        store
            .put_key_packages(t, d, vec![key_package(0xF1, now + 100, true)])
            .await,
        "a replacing last resort at the cap",
    );
    ok(
        store.put_key_packages(t, d, many(0, max - 1)).await,
        "re-uploading stored references at the cap",
    );
    refused(
        store.put_key_packages(t, d, many(max, 1)).await,
        "Limit",
        "one more at the cap",
    );
    assert_eq!(count(d).await, max as u64 - 1);
    // Claiming makes room.
    ok(
        store.claim_key_package(t, c, d, now, u32::MAX, 3600).await,
        "claim",
    );
    ok(
        store.put_key_packages(t, d, many(max, 1)).await,
        "after a claim",
    );

    let bad: Vec<(&str, Vec<KeyPackageRecord>)> = vec![
        (
            "an empty reference",
            vec![KeyPackageRecord {
                reference: Vec::new(),
                ..key_package(1, now, false)
            }],
        ),
        (
            "a long reference",
            vec![KeyPackageRecord {
                reference: vec![1; MAX_KEY_PACKAGE_REFERENCE + 1],
                ..key_package(1, now, false)
            }],
        ),
        (
            "a large package",
            vec![KeyPackageRecord {
                bytes: vec![1; MAX_KEY_PACKAGE_BYTES + 1],
                ..key_package(1, now, false)
            }],
        ),
        (
            "a time of 2^63",
            vec![key_package(1, MAX_NUMBER + 1, false)],
        ),
        (
            "two last-resort packages",
            vec![key_package(1, now, true), key_package(2, now, true)],
        ),
    ];
    for (what, packages) in bad {
        let mut with_good = vec![key_package(3, now + 100, false)];
        with_good.extend(packages);
        refused(
            store.put_key_packages(t, d2, with_good).await,
            "Limit",
            what,
        );
        assert_eq!(count(d2).await, 0, "{what}: nothing written");
    }
    let largest = KeyPackageRecord {
        reference: vec![7; MAX_KEY_PACKAGE_REFERENCE],
        bytes: vec![7; MAX_KEY_PACKAGE_BYTES],
        not_after: MAX_NUMBER,
        last_resort: false,
    };
    ok(
        store.put_key_packages(t, d2, vec![largest.clone()]).await,
        "the largest package",
    );
    refused(
        store
            .claim_key_package(t, c, d2, MAX_NUMBER + 1, u32::MAX, 3600)
            .await,
        "Limit",
        "a claim at 2^63",
    );
    assert_eq!(
        ok(
            store
                .claim_key_package(t, c, d2, MAX_NUMBER, u32::MAX, 3600)
                .await,
            "claim the largest",
        ),
        Some(largest)
    );
}

/// Claims are counted per (claimer, device) in a window: past
/// `max_claims` in `[now - window, now]` a claim is `Limit` and writes
/// nothing (no package is taken); other claimers and other devices are not
/// affected; a claim that finds nothing counts; the window starts afresh
/// once it is over.
pub async fn key_package_claim_limit<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let d = sender(labels::IRAN_HEAD_DEVICE);
    let d2 = sender(labels::US_NEGOTIATOR_DEVICE);
    let (c1, c2) = (
        sender(labels::US_HEAD_DEVICE),
        sender(labels::OMAN_LEAD_DEVICE),
    );
    let now = KP_NOW;
    let packages: Vec<KeyPackageRecord> = (1..=10)
        .map(|n| key_package(n, now + 1000, false))
        .collect();
    ok(
        store.put_key_packages(t, d, packages.clone()).await,
        "put_key_packages",
    );
    let claim = async |claimer: KeyId, device: KeyId, at: u64, max: u32| {
        store
            .claim_key_package(t, claimer, device, at, max, 60)
            .await
    };
    for (i, at) in [now, now + 1, now + 2].into_iter().enumerate() {
        assert_eq!(
            ok(claim(c1, d, at, 3).await, "claim within the limit"),
            Some(packages[i].clone())
        );
    }
    refused(claim(c1, d, now + 3, 3).await, "Limit", "a fourth claim");
    refused(
        claim(c1, d, now + 60, 3).await,
        "Limit",
        "still in the window",
    );
    assert_eq!(
        ok(store.key_package_count(t, d, now).await, "count"),
        7,
        "a refused claim takes nothing"
    );
    assert_eq!(
        ok(claim(c2, d, now + 3, 3).await, "another claimer"),
        Some(packages[3].clone())
    );
    assert_eq!(
        ok(claim(c1, d2, now + 3, 3).await, "another device"),
        None,
        "nothing for that device"
    );
    assert_eq!(
        ok(claim(c1, d, now + 61, 3).await, "a new window"),
        Some(packages[4].clone())
    );
    // Claims that find nothing count too.
    ok(claim(c1, d2, now + 4, 2).await, "second claim of d2");
    refused(
        claim(c1, d2, now + 5, 2).await,
        "Limit",
        "third claim of d2",
    );
    refused(claim(c2, d2, now, 0).await, "Limit", "max_claims 0");
    assert_eq!(ok(store.key_package_count(t, d, now).await, "count"), 5);
}

// ---------------------------------------------------------------------------
// The crash suite (MemoryStore only).

/// One operation of the crash scenario.
#[derive(Debug, Clone)]
enum Op {
    Create(TalksRecord, AccessListRecord),
    Sequence(Vec<Submission>, u64),
    ReplaceAccessList(TalksId, Digest, AccessListRecord),
    Integrate(
        TalksId,
        u64,
        u64,
        Vec<(u64, Digest)>,
        CheckpointRecord,
        Option<Fence>,
    ),
    Purge(TalksId, u64),
    ReplaceNote(TalksId, u64, Vec<u8>, Vec<u8>),
    CreateInvitation(TalksId, InvitationRecord),
    Redeem(TalksId, Digest, Redemption, Digest, AccessListRecord),
    PutPending(TalksId, Digest, Option<Vec<u8>>, PendingChange),
    CreateBlob(TalksId, BlobRecord, u64),
    PutChunk(TalksId, Digest, u64, Vec<u8>),
    CompleteBlob(TalksId, Digest),
    PutKeyPackages(TalksId, KeyId, Vec<KeyPackageRecord>),
    /// (talks, claimer, device, now, max claims, window)
    Claim(TalksId, KeyId, KeyId, u64, u32, u64),
    /// (holder, now, ttl)
    AcquireLease([u8; 16], u64, u64),
    /// (holder, epoch)
    ReleaseLease([u8; 16], u64),
    Schedule(ScheduledRecord),
    /// (now, limit)
    FireDue(u64, usize),
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Done {
    Unit,
    Outcomes(Vec<Outcome>),
    Purged(bool),
    Blob(BlobRecord),
    KeyPackage(Option<KeyPackageRecord>),
    Lease(Lease),
    Released(bool),
    Fired(Vec<Fired>),
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
            Op::CreateInvitation(..) => "create_invitation",
            Op::Redeem(..) => "redeem_invitation",
            Op::PutPending(..) => "put_pending_change",
            Op::CreateBlob(..) => "create_blob",
            Op::PutChunk(..) => "put_blob_chunk",
            Op::CompleteBlob(..) => "complete_blob",
            Op::PutKeyPackages(..) => "put_key_packages",
            Op::Claim(..) => "claim_key_package",
            Op::AcquireLease(..) => "acquire_lease",
            Op::ReleaseLease(..) => "release_lease",
            Op::Schedule(..) => "schedule",
            Op::FireDue(..) => "fire_due",
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
            Op::Integrate(t, from, to, hashes, c, fence) => store
                .integrate(*t, *from, *to, hashes, c, *fence)
                .await
                .map(|()| Done::Unit)?,
            Op::Purge(t, seq) => Done::Purged(store.purge_body(*t, *seq).await?),
            Op::ReplaceNote(t, size, expected, note) => store
                .replace_checkpoint_note(*t, *size, expected, note)
                .await
                .map(|()| Done::Unit)?,
            Op::CreateInvitation(t, inv) => store
                .create_invitation(*t, inv)
                .await
                .map(|()| Done::Unit)?,
            Op::Redeem(t, token, r, expected, next) => store
                .redeem_invitation(*t, *token, r, *expected, next)
                .await
                .map(|()| Done::Unit)?,
            Op::PutPending(t, base, expected, change) => store
                .put_pending_change(*t, *base, expected.as_deref(), change)
                .await
                .map(|()| Done::Unit)?,
            Op::CreateBlob(t, blob, quota) => {
                Done::Blob(store.create_blob(*t, blob, *quota).await?)
            }
            Op::PutChunk(t, hash, index, bytes) => store
                .put_blob_chunk(*t, *hash, *index, bytes)
                .await
                .map(|()| Done::Unit)?,
            Op::CompleteBlob(t, hash) => {
                store.complete_blob(*t, *hash).await.map(|()| Done::Unit)?
            }
            Op::PutKeyPackages(t, device, packages) => store
                .put_key_packages(*t, *device, packages.clone())
                .await
                .map(|()| Done::Unit)?,
            Op::Claim(t, claimer, device, now, max, window) => Done::KeyPackage(
                store
                    .claim_key_package(*t, *claimer, *device, *now, *max, *window)
                    .await?,
            ),
            Op::AcquireLease(h, now, ttl) => Done::Lease(
                store
                    .acquire_lease(LeaseName::Integrator, *h, *now, *ttl)
                    .await?,
            ),
            Op::ReleaseLease(h, epoch) => Done::Released(
                store
                    .release_lease(LeaseName::Integrator, *h, *epoch)
                    .await?,
            ),
            Op::Schedule(item) => store.schedule(item).await.map(|()| Done::Unit)?,
            Op::FireDue(now, limit) => Done::Fired(store.fire_due(*now, *limit, &key).await?),
        })
    }

    /// Checks what a repeat of this operation, after it took effect,
    /// returns: a sequence batch (gated or not), a blob's creation (or
    /// reference), a chunk, a completion and a key package upload are
    /// idempotent (same result); the rest are compare-and-swaps or
    /// creations that now refuse or do nothing, and the scenario's claims
    /// each make the last claim their limit allows, so a repeat is `Limit`.
    fn check_repeat(&self, first: &Done, repeat: Result<Done, StoreError>) {
        let fine = match (self, &repeat) {
            (
                Op::Sequence(..)
                | Op::CreateBlob(..)
                | Op::PutChunk(..)
                | Op::CompleteBlob(..)
                | Op::PutKeyPackages(..)
                | Op::AcquireLease(..)
                | Op::ReleaseLease(..),
                Ok(d),
            ) => d == first,
            // Fired items are gone: a repeat finds nothing due.
            (Op::FireDue(..), Ok(Done::Fired(f))) => f.is_empty(),
            (Op::Schedule(..), Err(StoreError::Exists)) => true,
            (Op::Claim(..), Err(StoreError::Limit(_))) => true,
            (Op::CreateInvitation(..), Err(StoreError::Exists)) => true,
            (Op::Redeem(..) | Op::PutPending(..), Err(StoreError::Stale)) => true,
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
    /// The integrator lease, as durably stored.
    lease: Option<Lease>,
    /// How many scheduled items wait.
    scheduled: u64,
    /// The integrator's work list.
    unintegrated: Vec<TalksId>,
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
    enrolment: Enrolment,
    /// The watched blobs ([`Scenario::blobs`]) as this talks has them.
    blobs: Vec<BlobView>,
    /// The MLS state of the watched rooms ([`Scenario::rooms`]).
    rooms: Vec<Option<RoomState>>,
    /// The watched devices' valid ordinary key packages
    /// ([`Scenario::devices`]), counted at two times (one before the
    /// scenario's expired packages expire).
    key_packages: Vec<(u64, u64)>,
}

/// What the crash suite watches besides the talks.
#[derive(Debug, Clone, Default)]
struct Watched {
    blobs: Vec<Digest>,
    rooms: Vec<RoomId>,
    devices: Vec<KeyId>,
}

async fn view(store: &MemoryStore, talks: &[TalksId], watched: &Watched) -> View {
    let blobs = &watched.blobs;
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
            enrolment: enrolment(store, t).await,
            blobs: Vec::with_capacity(blobs.len()),
            rooms: Vec::with_capacity(watched.rooms.len()),
            key_packages: Vec::with_capacity(watched.devices.len()),
        };
        let mut v = v;
        for &h in blobs {
            v.blobs.push(blob_view(store, t, h).await);
        }
        for &r in &watched.rooms {
            v.rooms.push(room_state_at(store, t, r).await);
        }
        for &d in &watched.devices {
            let count = async |now| ok(store.key_package_count(t, d, now).await, "count");
            v.key_packages
                .push((count(KP_NOW).await, count(KP_NOW - 10).await));
        }
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
    View {
        talks: out,
        lease: store.lease(LeaseName::Integrator),
        scheduled: scheduled_count(store).await,
        unintegrated: ok(
            store.unintegrated_talks(MAX_READ).await,
            "unintegrated_talks",
        ),
    }
}

/// The crash scenario, run once without a crash: the operations, their
/// results, and what the store shows after each.
struct Scenario {
    talks: Vec<TalksId>,
    /// The blobs the scenario creates (their hashes), the MLS rooms and
    /// the key packages' devices it uses, watched in every talks.
    watched: Watched,
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
        self.views
            .push(view(store, &self.talks, &self.watched).await);
        done
    }

    /// Several talks, three group commits (the second with a retry of the
    /// first, an in-batch retry, two conflicts, a clock gone backwards; the
    /// third with retries only partly), a pending change stored, updated
    /// and dropped by an access-list change, two integrations, a purge and
    /// a cosignature; then an invitation redeemed over a pending change,
    /// and a blob created, referenced from a second room, uploaded in two
    /// chunks and completed; then two MLS-gated group commits (a group
    /// created, a message, a commit race, a Welcome of the winner and one
    /// of the loser, stale and group-less submissions; then a retry of the
    /// winning commit, the next epoch's commit race and refusals), two key
    /// package uploads (the second with a duplicate and a replacing
    /// last-resort package) and two claims (one deleting an expired
    /// package on the way).
    async fn build() -> Self {
        let store = MemoryStore::new();
        let talks = vec![talks_id(1), talks_id(2), talks_id(3)];
        let (t1, t2, t3) = (talks[0], talks[1], talks[2]);
        let blob = new_blob(1, BLOB_CHUNK + 3, party(1), blob_room(2));
        let r = mls_room(1);
        let device = sender(labels::US_NEGOTIATOR_DEVICE);
        let watched = Watched {
            blobs: vec![blob.hash],
            rooms: vec![r],
            devices: vec![device],
        };
        let mut s = Scenario {
            views: vec![view(&store, &talks, &watched).await],
            talks,
            watched,
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
        let (c1, c1b) = (pending_change(1, 1), pending_change(1, 2));
        let base1 = access_list(1, 0).hash;
        s.push(&store, Op::PutPending(t1, base1, None, c1.clone()))
            .await;
        s.push(&store, Op::PutPending(t1, base1, Some(c1.change), c1b))
            .await;
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
            Op::Integrate(t1, 0, size, hashes_between(&tree, 0, size), c, None),
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
                None,
            ),
        )
        .await;

        let inv = invitation(1, party(2));
        let base2 = access_list(2, 0).hash;
        s.push(&store, Op::CreateInvitation(t2, inv.clone())).await;
        s.push(
            &store,
            Op::PutPending(t2, base2, None, pending_change(2, 1)),
        )
        .await;
        s.push(
            &store,
            Op::Redeem(
                t2,
                inv.token_hash,
                redemption(labels::IRAN_HEAD_DEVICE, 100),
                base2,
                access_list(12, 1),
            ),
        )
        .await;

        let content = blob_content(1, blob.size);
        s.push(&store, Op::CreateBlob(t3, blob.clone(), 2 * BLOB_CHUNK))
            .await;
        let referenced = BlobRecord {
            rooms: vec![blob_room(1)],
            ..blob.clone()
        };
        s.push(&store, Op::CreateBlob(t3, referenced, 0)).await;
        for i in [1, 0] {
            s.push(
                &store,
                Op::PutChunk(t3, blob.hash, i, chunk_of(&content, i)),
            )
            .await;
        }
        s.push(&store, Op::CompleteBlob(t3, blob.hash)).await;

        let win = gated(t1, a, 22, r, commit_gate(1, 0));
        let lose = gated(t1, b, 23, r, commit_gate(2, 0));
        let welcome = |sender, key, commit: &Submission, to| {
            gated(
                t1,
                sender,
                key,
                r,
                Gate::Welcome {
                    commit_epoch: 0,
                    commit: commit.header_hash,
                    to,
                },
            )
        };
        let batch4 = vec![
            gated(t1, a, 20, r, create_gate(1)),
            gated(t1, b, 21, r, Gate::Epoch { epoch: 0 }),
            win.clone(),
            lose.clone(),
            welcome(a, 24, &win, vec![b]),
            welcome(b, 25, &lose, vec![a]),
            gated(t1, b, 26, r, Gate::Epoch { epoch: 0 }),
            gated(t2, a, 27, r, Gate::Epoch { epoch: 0 }),
            submission(t2, a, 28, 0),
        ];
        let Done::Outcomes(out4) = s.push(&store, Op::Sequence(batch4, 3000)).await else {
            panic!("sequence returns outcomes");
        };
        let win_seq = placed(&out4[2], "scenario: the winning commit").seq;
        let created = placed(&out4[0], "scenario: the create").seq;
        assert_eq!(out4[3], Outcome::EpochTaken { seq: win_seq });
        placed(&out4[4], "scenario: the winner's welcome");
        assert_eq!(out4[5], Outcome::WelcomeOrphaned);
        assert_eq!(out4[6], Outcome::StaleEpoch { epoch: 1 });
        assert_eq!(out4[7], Outcome::NoGroup);

        let batch5 = vec![
            win.clone(), // retry of batch 4
            gated(t1, b, 30, r, commit_gate(2, 1)),
            gated(t1, a, 31, r, commit_gate(1, 1)),
            gated(t1, a, 32, r, create_gate(3)),
            gated(t1, a, 33, r, commit_gate(1, 5)),
        ];
        let Done::Outcomes(out5) = s.push(&store, Op::Sequence(batch5, 3100)).await else {
            panic!("sequence returns outcomes");
        };
        assert_eq!(
            out5[0], out4[2],
            "scenario: a retried commit keeps its placement"
        );
        let next_seq = placed(&out5[1], "scenario: epoch 1's commit").seq;
        assert_eq!(out5[2], Outcome::EpochTaken { seq: next_seq });
        assert_eq!(out5[3], Outcome::EpochTaken { seq: created });
        assert_eq!(out5[4], Outcome::StaleEpoch { epoch: 2 });

        let now = KP_NOW;
        s.push(
            &store,
            Op::PutKeyPackages(
                t2,
                device,
                vec![
                    key_package(3, now + 100, false),
                    key_package(1, now + 100, false),
                    key_package(2, now - 1, false),
                    key_package(9, now + 100, true),
                ],
            ),
        )
        .await;
        s.push(
            &store,
            Op::PutKeyPackages(
                t2,
                device,
                vec![
                    key_package(1, now + 100, false),
                    key_package(4, now + 100, false),
                    key_package(8, now + 100, true),
                ],
            ),
        )
        .await;
        for (claimer, want) in [(a, 1), (b, 3)] {
            let done = s
                .push(&store, Op::Claim(t2, claimer, device, now, 1, 3600))
                .await;
            assert_eq!(
                done,
                Done::KeyPackage(Some(key_package(want, now + 100, false))),
                "scenario: a claim"
            );
        }

        // The integrator lease taken; timers scheduled and fired (a new
        // envelope and a refused gate in one call, then one alone); a
        // fenced integration; the lease released and taken by another;
        // a call that fires refusals only.
        let h1 = holder(1);
        let done = s.push(&store, Op::AcquireLease(h1, 10_000, 1_000)).await;
        assert_eq!(done, Done::Lease(lease(1, 1, 11_000)), "scenario: lease");
        let no_group = mls_room(2);
        for item in [
            scheduled(1, 20_000, submission(t1, b, 50, 0)),
            scheduled(2, 15_000, submission(t2, b, 51, 0)),
            scheduled(
                3,
                15_000,
                gated(t1, b, 52, no_group, Gate::Epoch { epoch: 0 }),
            ),
            scheduled(4, 99_000, submission(t3, b, 54, 0)),
            scheduled(
                5,
                31_000,
                gated(t1, b, 53, no_group, Gate::Epoch { epoch: 0 }),
            ),
        ] {
            s.push(&store, Op::Schedule(item)).await;
        }
        let Done::Fired(fired) = s.push(&store, Op::FireDue(16_000, 16)).await else {
            panic!("fire_due returns what it fired");
        };
        assert_eq!(fired.len(), 2, "scenario: two due");
        assert_eq!(fired[1].outcome, Outcome::NoGroup, "scenario: a refusal");
        s.push(&store, Op::FireDue(30_000, 1)).await;
        // (The MLS part of the scenario appended to t1 as well.)
        for e in read_all(&store, t1).await.iter().skip(tree.size() as usize) {
            ok(tree.append(&e.leaf_hash), "reference tree");
        }
        let end = tree.size();
        assert!(end > to, "scenario: t1 has leaves to integrate");
        s.push(
            &store,
            Op::Integrate(
                t1,
                to,
                end,
                hashes_between(&tree, to, end),
                checkpoint_at(t1, &tree, end),
                Some(Fence {
                    name: LeaseName::Integrator,
                    epoch: 1,
                }),
            ),
        )
        .await;
        let done = s.push(&store, Op::ReleaseLease(h1, 1)).await;
        assert_eq!(done, Done::Released(true), "scenario: released");
        let done = s
            .push(&store, Op::AcquireLease(holder(2), 10_500, 1_000))
            .await;
        assert_eq!(done, Done::Lease(lease(2, 2, 11_500)), "scenario: taken");
        let done = s.push(&store, Op::FireDue(40_000, 16)).await;
        assert_eq!(
            done,
            Done::Fired(vec![Fired {
                id: scheduled_id(5),
                outcome: Outcome::NoGroup,
            }]),
            "scenario: refusals only"
        );
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
/// note, pending changes, an invitation and its redemption, a blob's
/// creation, second room, chunks and completion, two MLS-gated group
/// commits with creates, commits, Welcomes and refused gates, key package
/// uploads and claims), crash at `k`, restart,
/// and check that
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
            let took_effect = view(&store, &s.talks, &s.watched).await == s.views[c + 1];
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
            view(&store, &s.talks, &s.watched).await == s.views[c + 1],
            "{what}: state after the retry"
        );
        for (i, op) in s.ops.iter().enumerate().skip(c + 1) {
            let done = ok(op.apply(&store).await, &what);
            assert_eq!(done, s.results[i], "{what}: op {i} after recovery");
        }
        assert!(
            view(&store, &s.talks, &s.watched).await == s.views[s.ops.len()],
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
    for (op, steps) in [
        (
            "sequence",
            &[
                "read",
                "reserve",
                "sign",
                "write envelope",
                "sync",
                "notify",
                "acknowledge",
            ][..],
        ),
        (
            "redeem_invitation",
            &[
                "read",
                "write invitation",
                "write access list",
                "drop pending changes",
                "sync",
                "acknowledge",
            ][..],
        ),
        (
            "create_blob",
            &["read", "write blob", "sync", "acknowledge"][..],
        ),
        ("sequence", &["write room state"][..]),
        (
            "fire_due",
            &[
                "read",
                "reserve",
                "sign",
                "write envelope",
                "delete scheduled",
                "sync",
                "notify",
                "acknowledge",
            ][..],
        ),
        (
            "acquire_lease",
            &["read", "write lease", "sync", "acknowledge"][..],
        ),
        (
            "release_lease",
            &["read", "write lease", "sync", "acknowledge"][..],
        ),
        (
            "schedule",
            &["read", "write scheduled", "sync", "acknowledge"][..],
        ),
        (
            "put_key_packages",
            &["read", "write key package", "sync", "acknowledge"][..],
        ),
        (
            "claim_key_package",
            &[
                "read",
                "write claim counter",
                "delete expired key packages",
                "delete key package",
                "sync",
                "acknowledge",
            ][..],
        ),
    ] {
        for &step in steps {
            assert!(points.contains(&(op, step)), "no crash at {op} / {step}");
        }
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
    let v = view(store, &s.talks, &s.watched).await;
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

// ---------------------------------------------------------------------------
// Leases, fenced integration and scheduled items.

/// Holder number `n`'s instance id.
pub fn holder(n: u8) -> [u8; 16] {
    [0xE0 | (n & 0x0f); 16]
}

/// The id of scheduled item number `n`.
pub fn scheduled_id(n: u16) -> [u8; 16] {
    let mut id = [0x5d; 16];
    id[14..].copy_from_slice(&n.to_be_bytes());
    id
}

/// Scheduled item number `n`, due at `due_ms`, sequencing `submission`.
pub fn scheduled(n: u16, due_ms: u64, submission: Submission) -> ScheduledRecord {
    ScheduledRecord {
        id: scheduled_id(n),
        due_ms,
        submission,
    }
}

async fn acquire<S: Store>(store: &S, h: u8, now_ms: u64, ttl_ms: u64) -> Lease {
    ok(
        store
            .acquire_lease(LeaseName::Integrator, holder(h), now_ms, ttl_ms)
            .await,
        "acquire_lease",
    )
}

fn lease(epoch: u64, h: u8, expires_ms: u64) -> Lease {
    Lease {
        epoch,
        holder: holder(h),
        expires_ms,
    }
}

async fn fire<S: Store>(store: &S, now_ms: u64, limit: usize) -> Vec<Fired> {
    ok(store.fire_due(now_ms, limit, &log_key()).await, "fire_due")
}

async fn scheduled_count<S: Store>(store: &S) -> u64 {
    ok(store.scheduled_count().await, "scheduled_count")
}

/// A lease is taken by its first caller under epoch 1, renewed by its
/// holder (same epoch, new expiry, even once expired if nobody took it),
/// refused to another while unexpired (the call returns the holder's
/// lease), and taken over at its expiry under the next epoch; an expiry
/// past 2^63 is `Limit` and changes nothing.
pub async fn lease_lifecycle<S: Store>(store: &S) {
    assert_eq!(
        acquire(store, 1, 1000, 100).await,
        lease(1, 1, 1100),
        "first taker"
    );
    assert_eq!(
        acquire(store, 1, 1050, 100).await,
        lease(1, 1, 1150),
        "renewal"
    );
    assert_eq!(
        acquire(store, 2, 1149, 500).await,
        lease(1, 1, 1150),
        "refused to another while unexpired"
    );
    assert_eq!(
        acquire(store, 2, 1150, 100).await,
        lease(2, 2, 1250),
        "taken over at its expiry, under the next epoch"
    );
    assert_eq!(
        acquire(store, 1, 1200, 100).await,
        lease(2, 2, 1250),
        "the old holder lost it"
    );
    assert_eq!(
        acquire(store, 2, 5000, 100).await,
        lease(2, 2, 5100),
        "an expired lease nobody took is renewed under its epoch"
    );
    for (now, ttl) in [(MAX_NUMBER, 1), (0, u64::MAX), (MAX_NUMBER + 1, 0)] {
        refused(
            store
                .acquire_lease(LeaseName::Integrator, holder(3), now, ttl)
                .await,
            "Limit",
            "an expiry past 2^63",
        );
    }
    assert_eq!(
        acquire(store, 3, 5099, 1).await,
        lease(2, 2, 5100),
        "a refused call changed nothing"
    );
    assert_eq!(
        acquire(store, 3, 5100, 1).await,
        lease(3, 3, 5101),
        "third holder, third epoch"
    );
}

/// A released lease is taken at once by another, under the next epoch; a
/// release by someone else or under another epoch is `false` and changes
/// nothing.
pub async fn lease_release<S: Store>(store: &S) {
    let name = LeaseName::Integrator;
    assert!(
        !ok(store.release_lease(name, holder(1), 1).await, "release"),
        "nothing to release before anyone took it"
    );
    assert_eq!(acquire(store, 1, 1000, 10_000).await, lease(1, 1, 11_000));
    assert!(
        !ok(store.release_lease(name, holder(2), 1).await, "release"),
        "a non-holder cannot release"
    );
    assert!(
        !ok(store.release_lease(name, holder(1), 2).await, "release"),
        "the wrong epoch cannot release"
    );
    assert!(
        !ok(store.release_lease(name, holder(1), 0).await, "release"),
        "epoch 0 cannot release"
    );
    assert_eq!(
        acquire(store, 2, 2000, 100).await,
        lease(1, 1, 11_000),
        "failed releases changed nothing"
    );
    assert!(
        ok(store.release_lease(name, holder(1), 1).await, "release"),
        "the holder releases"
    );
    assert_eq!(
        acquire(store, 2, 2001, 100).await,
        lease(2, 2, 2101),
        "a released lease is taken at once, under the next epoch"
    );
    assert!(
        !ok(store.release_lease(name, holder(1), 1).await, "release"),
        "the old holder cannot release its successor's lease"
    );
    assert_eq!(acquire(store, 1, 2050, 100).await, lease(2, 2, 2101));
}

/// A fenced `integrate` runs under the lease's current epoch; under a
/// stale (or future, or 0) epoch it is `Fenced` and writes nothing; an
/// unfenced one runs whatever the lease.
pub async fn fenced_integrate<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let a = sender(labels::US_HEAD_DEVICE);
    sequence(
        store,
        (0..6).map(|k| submission(t, a, k, 0)).collect(),
        1000,
    )
    .await;
    let mut tree = MemoryHashStore::new();
    for e in read_all(store, t).await {
        ok(tree.append(&e.leaf().hash()), "reference tree");
    }
    let fence = |epoch| {
        Some(Fence {
            name: LeaseName::Integrator,
            epoch,
        })
    };
    let c2 = checkpoint_at(t, &tree, 2);
    refused(
        store
            .integrate(t, 0, 2, &hashes_between(&tree, 0, 2), &c2, fence(1))
            .await,
        "Fenced",
        "a fence on a lease never taken",
    );
    assert_eq!(ok(store.integrated_size(t).await, "integrated_size"), 0);
    assert_eq!(acquire(store, 1, 1000, 100).await.epoch, 1);
    ok(
        store
            .integrate(t, 0, 2, &hashes_between(&tree, 0, 2), &c2, fence(1))
            .await,
        "integrate under the current epoch",
    );
    assert_eq!(ok(store.integrated_size(t).await, "integrated_size"), 2);
    assert_eq!(acquire(store, 2, 1100, 100).await.epoch, 2, "takeover");

    let before_hashes = ok(
        store
            .tree_hashes(t, &(0..stored_hash_count(2)).collect::<Vec<_>>())
            .await,
        "tree_hashes",
    );
    let c4 = checkpoint_at(t, &tree, 4);
    for epoch in [1, 3, 0] {
        refused(
            store
                .integrate(t, 2, 4, &hashes_between(&tree, 2, 4), &c4, fence(epoch))
                .await,
            "Fenced",
            &format!("integrate under epoch {epoch} while the lease has epoch 2"),
        );
        assert_eq!(ok(store.integrated_size(t).await, "integrated_size"), 2);
        assert_eq!(
            ok(store.checkpoint(t).await, "checkpoint"),
            Some(c2.clone())
        );
        assert_eq!(
            ok(
                store
                    .tree_hashes(t, &(0..stored_hash_count(2)).collect::<Vec<_>>())
                    .await,
                "tree_hashes"
            ),
            before_hashes
        );
        refused(
            store.tree_hashes(t, &[stored_hash_count(2)]).await,
            "Limit",
            "a fenced integrate stored no hash",
        );
    }
    ok(
        store
            .integrate(t, 2, 4, &hashes_between(&tree, 2, 4), &c4, fence(2))
            .await,
        "integrate under the new epoch",
    );
    assert_eq!(ok(store.checkpoint(t).await, "checkpoint"), Some(c4));
    let c6 = checkpoint_at(t, &tree, 6);
    ok(
        store
            .integrate(t, 4, 6, &hashes_between(&tree, 4, 6), &c6, None)
            .await,
        "an unfenced integrate",
    );
    assert_eq!(ok(store.integrated_size(t).await, "integrated_size"), 6);
    assert_eq!(ok(store.checkpoint(t).await, "checkpoint"), Some(c6));
    let idx: Vec<u64> = (0..stored_hash_count(6)).collect();
    let want: Vec<Digest> = hashes_between(&tree, 0, 6)
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    assert_eq!(ok(store.tree_hashes(t, &idx).await, "tree_hashes"), want);
}

/// `schedule` stores an item once (`Exists` for a waiting id), needs its
/// talks (`UnknownTalks`) and a due time below 2^63 (`Limit`); refusals
/// store nothing; `scheduled_count` counts due and future items.
pub async fn schedule_refusals<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let a = sender(labels::US_HEAD_DEVICE);
    assert_eq!(scheduled_count(store).await, 0);
    ok(
        store
            .schedule(&scheduled(1, 2000, submission(t, a, 1, 0)))
            .await,
        "schedule",
    );
    ok(
        store
            .schedule(&scheduled(2, 9000, submission(t, a, 2, 0)))
            .await,
        "schedule",
    );
    refused(
        store
            .schedule(&scheduled(1, 3000, submission(t, a, 3, 0)))
            .await,
        "Exists",
        "a taken id",
    );
    refused(
        store
            .schedule(&scheduled(3, 3000, submission(talks_id(9), a, 3, 0)))
            .await,
        "UnknownTalks",
        "an unknown talks",
    );
    refused(
        store
            .schedule(&scheduled(4, MAX_NUMBER + 1, submission(t, a, 4, 0)))
            .await,
        "Limit",
        "a due time past 2^63",
    );
    assert_eq!(scheduled_count(store).await, 2, "refusals stored nothing");
    ok(
        store
            .schedule(&scheduled(5, MAX_NUMBER, submission(t, a, 5, 0)))
            .await,
        "a due time of 2^63 - 1",
    );
    assert_eq!(scheduled_count(store).await, 3);
    // Only item 1 is due: the one with the taken id was not stored over it.
    let fired = fire(store, 2000, MAX_FIRE_BATCH).await;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].id, scheduled_id(1));
    let p = placed(&fired[0].outcome, "fired");
    check_placement(
        "fired",
        &log_key().public_key(),
        &submission(t, a, 1, 0),
        &p,
    );
    assert_eq!(scheduled_count(store).await, 2);
    ok(
        store
            .schedule(&scheduled(1, 3000, submission(t, a, 3, 0)))
            .await,
        "a fired item's id is free again",
    );
}

/// `fire_due` fires only due items, earliest first (ties by id), as one
/// receipt batch of the new envelopes, with node times from `now_ms`, and
/// deletes them: a second call fires nothing.
pub async fn fire_due_in_due_order<S: Store>(store: &S) {
    let (t1, t2) = (open(store, 1).await, open(store, 2).await);
    let a = sender(labels::US_HEAD_DEVICE);
    let b = sender(labels::IRAN_HEAD_DEVICE);
    let node_key = log_key().public_key();
    // (item number, due, submission)
    // Ids in another order than due times, so firing by id would show.
    let items = [
        (2, 3000, submission(t1, a, 1, 0)),
        (7, 1000, submission(t2, b, 1, 0)),
        (5, 2000, submission(t1, b, 2, 0)),
        (4, 2000, submission(t1, a, 3, 0)),
        (1, 9000, submission(t2, a, 4, 0)),
    ];
    for (n, due, sub) in &items {
        ok(
            store.schedule(&scheduled(*n, *due, sub.clone())).await,
            "schedule",
        );
    }
    assert_eq!(scheduled_count(store).await, 5);
    assert_eq!(
        fire(store, 999, MAX_FIRE_BATCH).await,
        [],
        "nothing due yet"
    );
    assert_eq!(ok(store.log_size(t1).await, "log_size"), 0);

    let mut rx = store.subscribe();
    let fired = fire(store, 2500, MAX_FIRE_BATCH).await;
    let ids: Vec<[u8; 16]> = fired.iter().map(|f| f.id).collect();
    assert_eq!(
        ids,
        [scheduled_id(7), scheduled_id(4), scheduled_id(5)],
        "the due items, earliest first, ties by id"
    );
    let subs = [&items[1].2, &items[3].2, &items[2].2];
    let mut roots = BTreeSet::new();
    for (f, sub) in fired.iter().zip(subs) {
        let p = placed(&f.outcome, "fired");
        check_placement("fired", &node_key, sub, &p);
        assert_eq!(p.node_time, 2500, "node time from now_ms");
        let r = ok(Receipt::from_canonical_bytes(&p.receipt), "receipt");
        assert_eq!(r.batch_size(), 3, "one batch of the new envelopes");
        roots.insert(*r.batch_root());
        let row = ok(store.read(sub.talks, p.seq, 1).await, "read");
        assert_eq!(row, [expected_envelope(sub, &p)]);
    }
    assert_eq!(roots.len(), 1, "one signed batch per call");
    let seqs: Vec<(TalksId, u64)> = fired
        .iter()
        .zip(subs)
        .map(|(f, s)| (s.talks, placed(&f.outcome, "fired").seq))
        .collect();
    assert_eq!(seqs, [(t2, 0), (t1, 0), (t1, 1)], "seqs in firing order");
    let mut heard = BTreeMap::new();
    while let Ok(n) = rx.try_recv() {
        heard.insert(n.talks, n.size);
    }
    assert_eq!(
        heard,
        BTreeMap::from([(t1, 2), (t2, 1)]),
        "subscribers woken"
    );
    assert_eq!(scheduled_count(store).await, 2);
    assert_eq!(
        fire(store, 2500, MAX_FIRE_BATCH).await,
        [],
        "fired items are gone"
    );

    let fired = fire(store, 10_000, MAX_FIRE_BATCH).await;
    let ids: Vec<[u8; 16]> = fired.iter().map(|f| f.id).collect();
    assert_eq!(ids, [scheduled_id(2), scheduled_id(1)]);
    assert_eq!(placed(&fired[0].outcome, "fired").seq, 2);
    assert_eq!(placed(&fired[1].outcome, "fired").seq, 1);
    assert_eq!(scheduled_count(store).await, 0);
    assert_eq!(fire(store, MAX_NUMBER, MAX_FIRE_BATCH).await, []);
    for t in [t1, t2] {
        for (i, e) in read_all(store, t).await.iter().enumerate() {
            assert_eq!(e.seq, i as u64, "dense seqs");
        }
    }
    assert_eq!(read_all(store, t1).await.len(), 3);
    assert_eq!(read_all(store, t2).await.len(), 2);
    refused(
        store.fire_due(MAX_NUMBER + 1, 1, &log_key()).await,
        "Limit",
        "a clock past 2^63",
    );
}

/// `fire_due` claims at most `limit` items, and never more than
/// [`MAX_FIRE_BATCH`]; a limit of 0 fires nothing.
pub async fn fire_due_limits<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let a = sender(labels::US_HEAD_DEVICE);
    let n = MAX_FIRE_BATCH as u16 + 3;
    for k in 0..n {
        ok(
            store
                .schedule(&scheduled(
                    k,
                    1000 + u64::from(k),
                    submission(t, a, u32::from(k), 0),
                ))
                .await,
            "schedule",
        );
    }
    assert_eq!(fire(store, 5000, 0).await, [], "a limit of 0");
    assert_eq!(scheduled_count(store).await, u64::from(n));
    let first = fire(store, 5000, 2).await;
    assert_eq!(
        first.iter().map(|f| f.id).collect::<Vec<_>>(),
        [scheduled_id(0), scheduled_id(1)]
    );
    let second = fire(store, 5000, usize::MAX).await;
    assert_eq!(second.len(), MAX_FIRE_BATCH, "capped at MAX_FIRE_BATCH");
    assert_eq!(second[0].id, scheduled_id(2));
    let third = fire(store, 5000, usize::MAX).await;
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].id, scheduled_id(n - 1));
    assert_eq!(scheduled_count(store).await, 0);
    let stored = read_all(store, t).await;
    assert_eq!(stored.len(), usize::from(n));
    for (k, e) in stored.iter().enumerate() {
        assert_eq!(e.seq, k as u64);
        assert_eq!(
            e.header,
            submission(t, a, k as u32, 0).header,
            "fired in due order"
        );
    }
}

/// `fire_due` sequences like `sequence`: a submission whose idempotency key
/// already holds the same envelope gets the original placement (and one
/// under another header a `Conflict`), two items of one call under one key
/// get one placement, a refused gate is the item's outcome and writes
/// nothing (no seq taken), a passing gate changes the room; each fired
/// item is deleted whatever its outcome.
pub async fn fire_due_sequences_like_sequence<S: Store>(store: &S) {
    let t = open(store, 1).await;
    let a = sender(labels::US_HEAD_DEVICE);
    let b = sender(labels::IRAN_HEAD_DEVICE);
    let node_key = log_key().public_key();
    let (r, empty) = (mls_room(1), mls_room(2));
    let original = submission(t, a, 1, 0);
    let out = sequence(store, vec![original.clone()], 1000).await;
    let p0 = placed(&out[0], "original");

    let items = vec![
        scheduled(1, 2000, original.clone()),
        scheduled(2, 2001, submission(t, a, 1, 1)),
        scheduled(3, 2002, gated(t, b, 3, empty, Gate::Epoch { epoch: 0 })),
        scheduled(4, 2003, gated(t, b, 4, r, create_gate(1))),
        scheduled(5, 2004, submission(t, a, 5, 0)),
        scheduled(6, 2005, submission(t, a, 5, 0)),
        scheduled(7, 2006, gated(t, b, 7, r, create_gate(2))),
        scheduled(8, 2007, gated(t, b, 8, r, Gate::Epoch { epoch: 0 })),
    ];
    for item in &items {
        ok(store.schedule(item).await, "schedule");
    }
    let fired = fire(store, 3000, MAX_FIRE_BATCH).await;
    assert_eq!(
        fired.iter().map(|f| f.id).collect::<Vec<_>>(),
        items.iter().map(|i| i.id).collect::<Vec<_>>()
    );
    let outcomes: Vec<&Outcome> = fired.iter().map(|f| &f.outcome).collect();
    assert_eq!(outcomes[0], &Outcome::Sequenced(p0.clone()), "a retry");
    assert_eq!(outcomes[1], &Outcome::Conflict { seq: 0 }, "a conflict");
    assert_eq!(outcomes[2], &Outcome::NoGroup, "a refused gate");
    let p_create = placed(outcomes[3], "create");
    assert_eq!(p_create.seq, 1, "refusals take no seq");
    let p5 = placed(outcomes[4], "new");
    assert_eq!(p5.seq, 2);
    assert_eq!(
        outcomes[5],
        &Outcome::Sequenced(p5.clone()),
        "a retry in the batch"
    );
    assert_eq!(
        outcomes[6],
        &Outcome::EpochTaken { seq: 1 },
        "gates see the batch"
    );
    let p8 = placed(outcomes[7], "message");
    assert_eq!(p8.seq, 3);
    for (item, o) in items.iter().zip(&outcomes) {
        if let Outcome::Sequenced(p) = o {
            check_placement("fired", &node_key, &item.submission, p);
        }
    }
    let r5 = ok(Receipt::from_canonical_bytes(&p5.receipt), "receipt");
    assert_eq!(r5.batch_size(), 3, "the batch holds the new envelopes only");
    let stored = read_all(store, t).await;
    assert_eq!(stored.len(), 4, "nothing written for retries and refusals");
    assert_eq!(stored[0], expected_envelope(&original, &p0));
    assert_eq!(
        stored[1],
        expected_envelope(&items[3].submission, &p_create)
    );
    assert_eq!(stored[2], expected_envelope(&items[4].submission, &p5));
    assert_eq!(stored[3], expected_envelope(&items[7].submission, &p8));
    assert_eq!(
        room_state_at(store, t, r).await,
        Some(room_state_of(&room_update(1, 0), 0, 1)),
        "the create's room state"
    );
    assert_eq!(room_state_at(store, t, empty).await, None);
    assert_eq!(
        scheduled_count(store).await,
        0,
        "every fired item is deleted"
    );
    assert_eq!(fire(store, 3000, MAX_FIRE_BATCH).await, []);

    // A batch of refusals and retries only still deletes its items.
    let mut rx = store.subscribe();
    ok(
        store.schedule(&scheduled(10, 4000, original.clone())).await,
        "schedule",
    );
    ok(
        store
            .schedule(&scheduled(
                11,
                4000,
                gated(t, b, 11, empty, Gate::Epoch { epoch: 0 }),
            ))
            .await,
        "schedule",
    );
    let fired = fire(store, 5000, MAX_FIRE_BATCH).await;
    assert_eq!(
        fired,
        [
            Fired {
                id: scheduled_id(10),
                outcome: Outcome::Sequenced(p0),
            },
            Fired {
                id: scheduled_id(11),
                outcome: Outcome::NoGroup,
            },
        ]
    );
    assert_eq!(scheduled_count(store).await, 0);
    assert_eq!(read_all(store, t).await, stored, "nothing new stored");
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "nobody woken");
}

/// `integration_lag` counts every talks with leaves not yet integrated and
/// the most any one has, and follows integration.
pub async fn integration_lag_counts_every_talks<S: Store>(store: &S) {
    let lag = |talks, max| IntegrationLag {
        lagging_talks: talks,
        max_leaves: max,
    };
    assert_eq!(
        ok(store.integration_lag().await, "lag"),
        lag(0, 0),
        "empty store"
    );
    let a = sender(labels::US_HEAD_DEVICE);
    // A third talks, never written to, is never lagging.
    let (t1, t2, _t3) = (
        open(store, 1).await,
        open(store, 2).await,
        open(store, 3).await,
    );
    assert_eq!(
        ok(store.integration_lag().await, "lag"),
        lag(0, 0),
        "empty logs"
    );
    sequence(
        store,
        (0..5).map(|k| submission(t1, a, k, 0)).collect(),
        1000,
    )
    .await;
    sequence(
        store,
        (0..3).map(|k| submission(t2, a, k, 0)).collect(),
        1000,
    )
    .await;
    assert_eq!(ok(store.integration_lag().await, "lag"), lag(2, 5));
    let mut tree = MemoryHashStore::new();
    for e in read_all(store, t1).await {
        ok(tree.append(&e.leaf().hash()), "reference tree");
    }
    ok(
        store
            .integrate(
                t1,
                0,
                4,
                &hashes_between(&tree, 0, 4),
                &checkpoint_at(t1, &tree, 4),
                None,
            )
            .await,
        "integrate",
    );
    assert_eq!(
        ok(store.integration_lag().await, "lag"),
        lag(2, 3),
        "t1 one behind, t2 three"
    );
    ok(
        store
            .integrate(
                t1,
                4,
                5,
                &hashes_between(&tree, 4, 5),
                &checkpoint_at(t1, &tree, 5),
                None,
            )
            .await,
        "integrate",
    );
    assert_eq!(ok(store.integration_lag().await, "lag"), lag(1, 3));
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
