//! Envelope validation, cheapest check first, and group commit.
#![allow(clippy::expect_used)] // Test set-up failures should panic with their message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use backchannel_codec::{Decode, RoomId, TalksId};
use backchannel_crypto::{Digest, SecretKey, Signer, sha256};
use backchannel_node::sequencer::{Clock, SequenceError, Sequencer};
use backchannel_node::submit::{SubmitError, validate};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::header::{MAX_BODY, pad_body};
use backchannel_statement::{AccessList, Commitment, Header, Kind};
use backchannel_store::memory::MemoryStore;
use backchannel_store::{AccessListRecord, Outcome, Store, TalksRecord};
use backchannel_tlog::Receipt;

struct Envelope {
    header: Vec<u8>,
    body: Vec<u8>,
}

/// An envelope from `sender` to `room`, with `edit` applied to the header
/// before `signer` signs it.
fn envelope(
    sender: &SecretKey,
    room: RoomId,
    edit: impl Fn(&mut Header),
    signer: &SecretKey,
) -> Envelope {
    let t = fixtures::talks();
    let body = pad_body(b"Muscat").expect("pads");
    let mut header = Header {
        talks: t.talks,
        room,
        sender: sender.public_key().id(),
        kind: Kind::MlsApp,
        idempotency_key: [1; 16],
        body_len: body.len() as u32,
        body_hash: sha256(&body),
        commitment: Commitment([2; 32]),
    };
    edit(&mut header);
    // Sign as `signer` even when it is not the sender (Header::sign refuses that).
    let unsigned = header.encode_unsigned();
    let sig = signer
        .sign(backchannel_statement::header::ENVELOPE_CONTEXT, &unsigned)
        .expect("signs");
    let mut bytes = unsigned.to_vec();
    bytes.extend_from_slice(sig.as_bytes());
    Envelope {
        header: bytes,
        body,
    }
}

fn access() -> AccessList {
    let t = fixtures::talks();
    t.roster.implied_access_list(t.talks).expect("access list")
}

/// Validates `e` on a connection authenticated as `connection` and compares
/// the verdict.
fn check(connection: u8, e: &Envelope, want: Result<(), SubmitError>) {
    let t = fixtures::talks();
    let got = validate(
        t.talks,
        &key(connection).public_key().verifying_key(),
        &access(),
        &e.header,
        e.body.clone(),
    );
    match (got, want) {
        (Ok(s), Ok(())) => {
            assert_eq!(s.header_hash, sha256(&e.header));
            assert_eq!(s.body_hash, sha256(&e.body));
            assert_eq!(s.sender, key(connection).public_key().id());
        }
        (Err(g), Err(w)) => assert_eq!(g, w),
        (g, w) => panic!("got {g:?}, want {w:?}"),
    }
}

#[test]
fn envelopes_are_validated_cheapest_first() {
    let t = fixtures::talks();
    let us = key(US_HEAD_DEVICE);
    let ok = |edit: &dyn Fn(&mut Header)| envelope(&us, t.us_caucus, edit, &us);
    check(US_HEAD_DEVICE, &ok(&|_| {}), Ok(()));
    // Sizes.
    let mut short = ok(&|_| {});
    short.header.pop();
    check(
        US_HEAD_DEVICE,
        &short,
        Err(SubmitError::MalformedHeader(
            backchannel_codec::DecodeError::Invalid {
                field: "signed header",
                reason: "must be 223 bytes",
            },
        )),
    );
    let mut big = ok(&|_| {});
    big.body = vec![0; MAX_BODY as usize + 1];
    check(US_HEAD_DEVICE, &big, Err(SubmitError::BodyTooLarge));
    // The talks, the sender, the list, the room, the kind.
    check(
        US_HEAD_DEVICE,
        &ok(&|h| h.talks = TalksId([9; 16])),
        Err(SubmitError::OtherTalks),
    );
    let iran = key(IRAN_HEAD_DEVICE);
    check(
        US_HEAD_DEVICE,
        &envelope(&iran, t.us_caucus, |_| {}, &iran),
        Err(SubmitError::NotConnectionKey),
    );
    let outsider = key(0x77);
    check(
        0x77,
        &envelope(&outsider, t.us_caucus, |_| {}, &outsider),
        Err(SubmitError::NotOnAccessList),
    );
    let signer = key(US_TALKS);
    check(
        US_TALKS,
        &envelope(&signer, t.us_caucus, |_| {}, &signer),
        Err(SubmitError::NotADevice),
    );
    check(
        US_HEAD_DEVICE,
        &ok(&|h| h.room = t.iran_caucus),
        Err(SubmitError::RoomNotAllowed),
    );
    check(
        US_HEAD_DEVICE,
        &ok(&|h| h.kind = Kind::NodeTick),
        Err(SubmitError::KindNotAllowed),
    );
    // The body length, the signature, the body hash.
    let mut long = ok(&|_| {});
    long.body = pad_body(&[7; 2000]).expect("pads");
    check(US_HEAD_DEVICE, &long, Err(SubmitError::BodyLength));
    let forged = envelope(&us, t.us_caucus, |_| {}, &key(0x78));
    check(US_HEAD_DEVICE, &forged, Err(SubmitError::BadSignature));
    let mut swapped = ok(&|_| {});
    swapped.body[100] = 1;
    check(US_HEAD_DEVICE, &swapped, Err(SubmitError::BodyHash));
    // Statuses and codes for the HTTP layer.
    assert_eq!(SubmitError::BadSignature.status(), 401);
    assert_eq!(SubmitError::BadSignature.code(), "bad_envelope_signature");
    assert_eq!(SubmitError::NotOnAccessList.status(), 404);
    assert_eq!(SubmitError::BodyTooLarge.status(), 413);
}

/// A clock the test moves.
struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

async fn store_with_talks() -> Arc<MemoryStore> {
    let t = fixtures::talks();
    let store = Arc::new(MemoryStore::new());
    let list = access();
    store
        .create_talks(
            &TalksRecord {
                talks: t.talks,
                creator: key(OMAN_AUTHORITY).public_key().id(),
                created_at: 0,
            },
            &AccessListRecord {
                bytes: backchannel_codec::Encode::to_canonical_bytes(&list),
                hash: list.hash(),
                version: 0,
            },
        )
        .await
        .expect("creates talks");
    store
}

fn submission(i: u32) -> backchannel_store::Submission {
    let t = fixtures::talks();
    let us = key(US_HEAD_DEVICE);
    let e = envelope(
        &us,
        t.record,
        |h| h.idempotency_key[..4].copy_from_slice(&i.to_be_bytes()),
        &us,
    );
    validate(
        t.talks,
        &us.public_key().verifying_key(),
        &access(),
        &e.header,
        e.body,
    )
    .expect("valid")
}

/// The node's log key, holding its first signature until released: a
/// stand-in for a slow commit, during which submissions pile up.
struct GatedKey {
    key: SecretKey,
    entered: std::sync::atomic::AtomicBool,
    open: std::sync::Mutex<bool>,
    released: std::sync::Condvar,
}

impl GatedKey {
    fn release(&self) {
        *self.open.lock().expect("lock") = true;
        self.released.notify_all();
    }
}

impl Signer for GatedKey {
    fn public_key(&self) -> backchannel_crypto::PublicKey {
        self.key.public_key()
    }
    fn sign(
        &self,
        context: backchannel_crypto::Context,
        message: &[u8],
    ) -> Result<backchannel_crypto::Signature, backchannel_crypto::SignError> {
        self.entered.store(true, Ordering::SeqCst);
        let mut open = self.open.lock().expect("lock");
        while !*open {
            open = self.released.wait(open).expect("wait");
        }
        self.key.sign(context, message)
    }
}

/// Holds the first commit until `n - 1` more submissions (made by
/// `make`) are queued behind it, then lets everything through. Returns the
/// store, the sequencer, and the seqs and batch roots the submitters got.
async fn gated_run(
    n: u32,
    make: fn(u32) -> backchannel_store::Submission,
) -> (
    Arc<MemoryStore>,
    Sequencer,
    Vec<u64>,
    std::collections::BTreeSet<Digest>,
) {
    let store = store_with_talks().await;
    let clock = Arc::new(TestClock(AtomicU64::new(1_700_000_000_000)));
    let gate = Arc::new(GatedKey {
        key: key(NODE_LOG),
        entered: std::sync::atomic::AtomicBool::new(false),
        open: std::sync::Mutex::new(false),
        released: std::sync::Condvar::new(),
    });
    let log_key: Arc<dyn Signer + Send + Sync> = gate.clone();
    let seq = Sequencer::spawn(store.clone(), clock, log_key);
    let mut tasks = Vec::new();
    // The first submission's commit starts and holds the sequencer…
    let first_seq = seq.clone();
    let first = make(0);
    tasks.push(tokio::spawn(async move { first_seq.submit(first).await }));
    while !gate.entered.load(Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }
    // …while every other submission queues behind it.
    for i in 1..n {
        let seq = seq.clone();
        let s = make(i);
        tasks.push(tokio::spawn(async move { seq.submit(s).await }));
    }
    while seq.queued() < n as usize - 1 {
        tokio::task::yield_now().await;
    }
    gate.release();
    let mut seqs = Vec::new();
    let mut roots = std::collections::BTreeSet::<Digest>::new();
    for task in tasks {
        let Ok(Outcome::Sequenced(p)) = task.await.expect("task") else {
            panic!("not sequenced");
        };
        let receipt = Receipt::from_canonical_bytes(&p.receipt).expect("receipt decodes");
        roots.insert(*receipt.batch_root());
        seqs.push(p.seq);
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..u64::from(n)).collect::<Vec<_>>(),
        "dense, each once"
    );
    (store, seq, seqs, roots)
}

/// Every envelope the sequencer commits is handed to the integrator as a
/// leaf hint, and integration from the hints takes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequencer_hints_every_leaf_it_commits() {
    let n = 50u32;
    let (store, seq, _, _) = gated_run(n, submission).await;
    let hints = seq.leaf_hints();
    // The hints are recorded just after the acknowledgements.
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while hints.len() < n as usize {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the sequencer records its leaves");
    assert_eq!(hints.len(), n as usize);
    let integrated = backchannel_node::integrate::integrate_hinted(
        &*store,
        Some(hints),
        fixtures::talks().talks,
        &backchannel_tlog::NodeOrigin::new("mediator.example").expect("origin"),
        &key(NODE_LOG),
        u64::from(n),
        None,
    )
    .await
    .expect("integrates");
    assert_eq!(integrated, Some(u64::from(n)));
    // A partial data tile's leaves stay for the data tile.
    assert_eq!(hints.len(), n as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_that_arrive_during_a_commit_share_the_next_one() {
    let n = 200u32;
    let (store, seq, _, roots) = gated_run(n, submission).await;
    assert_eq!(
        roots.len(),
        2,
        "one commit for the first, one for the 199 that waited"
    );
    // A retry gets its original placement back and adds nothing.
    let Ok(Outcome::Sequenced(again)) = seq.submit(submission(7)).await else {
        panic!("retry refused");
    };
    let stored = store
        .read(fixtures::talks().talks, again.seq, 1)
        .await
        .expect("reads");
    assert_eq!(stored[0].receipt, again.receipt);
    assert_eq!(
        store.log_size(fixtures::talks().talks).await.expect("size"),
        u64::from(n)
    );
}

/// A submission with a 1 MiB body.
fn large_submission(i: u32) -> backchannel_store::Submission {
    let t = fixtures::talks();
    let us = key(US_HEAD_DEVICE);
    let body = pad_body(&vec![0x5a; (MAX_BODY as usize) - 4]).expect("pads");
    let mut header = Header {
        talks: t.talks,
        room: t.record,
        sender: us.public_key().id(),
        kind: Kind::MlsApp,
        idempotency_key: [0; 16],
        body_len: body.len() as u32,
        body_hash: sha256(&body),
        commitment: Commitment([2; 32]),
    };
    header.idempotency_key[..4].copy_from_slice(&i.to_be_bytes());
    let header = header.sign(&us).expect("signs").to_bytes();
    validate(
        t.talks,
        &us.public_key().verifying_key(),
        &access(),
        &header,
        body,
    )
    .expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commit_is_bounded_in_bytes() {
    // 69 queued 1 MiB envelopes: 63 fit in MAX_BATCH_BYTES (64 MiB), so two
    // commits follow the first.
    let (_, _, _, roots) = gated_run(70, large_submission).await;
    assert_eq!(roots.len(), 3);
}

#[tokio::test]
async fn a_storage_crash_refuses_the_batch_and_a_retry_succeeds() {
    let store = store_with_talks().await;
    let clock = Arc::new(TestClock(AtomicU64::new(1_700_000_000_000)));
    let log_key: Arc<dyn Signer + Send + Sync> = Arc::new(key(NODE_LOG));
    let seq = Sequencer::spawn(store.clone(), clock, log_key);
    store.crash_at(0);
    assert_eq!(
        seq.submit(submission(1)).await,
        Err(SequenceError::Unavailable)
    );
    store.restart();
    let Ok(Outcome::Sequenced(p)) = seq.submit(submission(1)).await else {
        panic!("not sequenced after restart");
    };
    assert_eq!(p.seq, 0);
}
