//! A hostile node serving two parties different histories, end to end: two
//! node instances in-process sharing one log key, origin and TLS identity
//! but not their stores, both holding the reference talks. The US head's
//! device (and the mediator's) talk to node A, Iran's head's device to node
//! B; each submits, follows, verifies and cosigns through `Session`.
//!
//! Shown: neither node ever gets the other party's cosignature (the
//! checkpoint is never final); comparing the two followers finds the fork;
//! fork evidence from the two served notes verifies offline with only the
//! log key and origin, a tampered file does not, and notes of one honest
//! history are not a fork. An honest node is the control: every party
//! cosigns within a checkpoint interval.
//!
//! Rooms are MLS groups: the devices that talk first join their rooms'
//! groups ([`sync_all`]), which logs the groups' handshakes; what they say
//! follows them (`base`, the log size after that setup). The nodes run at
//! the real current time, read once per test (OpenMLS checks key-package
//! lifetimes against the system clock, the node against its own).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use backchannel_client::follow::Follower;
use backchannel_client::fork::{
    Comparison, Finality, FinalityError, ForkError, ForkEvidence, MissingCosignersError, NotAFork,
    compare, cosigner_key, is_final, missing_cosigners, party_cosigners,
};
use backchannel_client::net::NodeClient;
use backchannel_client::rooms::sync_all;
use backchannel_client::seal::Content;
use backchannel_client::session::{Session, SessionError};
use backchannel_client::store::MemoryClientStore;
use backchannel_codec::{Decode, Encode, PartyId, RoomId, TalksId};
use backchannel_crypto::{Digest, PublicKey, Signer};
use backchannel_node::limits::Limits;
use backchannel_node::server::{Node, NodeConfig};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::{AccessList, Salt};
use backchannel_store::memory::MemoryStore;
use backchannel_tlog::{CosignatureError, LogOrigin, NodeOrigin, SignedCheckpoint, attach};

/// The creator key (in the creators file).
const CREATOR: u8 = OMAN_LEAD_DEVICE;
/// The node's TLS key (both instances: one node, as far as clients see).
const NODE_TLS: u8 = 0x52;
/// The current time (Unix ms): read once per test, the nodes' clocks are
/// set to it and never move, and the devices verify and cosign at it.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
/// The nodes' checkpoint interval.
const INTERVAL: Duration = Duration::from_millis(20);
/// How long a party waits past its cosignature before it expects every
/// other party's: one checkpoint interval and more.
const GRACE: Duration = Duration::from_millis(5 * 20);

// --- Nodes on loopback ---------------------------------------------------------

use backchannel_test_support::{ManualClock, Served, serve_tls};

/// A node, served until dropped.
struct TestNode {
    served: Served,
    /// The node's clock (Unix ms), which never moves.
    t0: u64,
}

fn node_origin() -> NodeOrigin {
    NodeOrigin::new("node.example").unwrap()
}

fn log_key() -> PublicKey {
    key(NODE_LOG).public_key()
}

fn origin(talks: TalksId) -> LogOrigin {
    LogOrigin::new(&node_origin(), talks)
}

/// Starts a node with its own in-memory store, the fixtures' log key and
/// the origin `node.example`, its clock at `t0`, and opens the reference
/// talks on it.
async fn start(t0: u64) -> (TestNode, TalksId) {
    let limits = Limits {
        requests_per_second: 100_000,
        request_burst: 100_000,
        connections_per_second: 100_000,
        connection_burst: 100_000,
        connections_per_source: 100_000,
        checkpoint_interval: INTERVAL,
        ..Limits::default()
    };
    let node = Node::new(
        Arc::new(MemoryStore::new()),
        NodeConfig {
            origin: node_origin(),
            log_key: Arc::new(key(NODE_LOG)),
            creators: vec![key(CREATOR).public_key()],
            limits,
            clock: Arc::new(ManualClock(AtomicU64::new(t0))),
            instance: [0xf0; 16],
        },
    );
    let node = TestNode {
        served: serve_tls(node, &key(NODE_TLS), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap(),
        t0,
    };
    let created = node
        .client(CREATOR)
        .create_talks(&reference_list())
        .await
        .unwrap();
    (node, created.list.talks())
}

impl TestNode {
    fn client(&self, label: u8) -> NodeClient {
        NodeClient::new(self.served.addr, self.served.fingerprint, &key(label)).unwrap()
    }

    /// Waits until the node has integrated every envelope sequenced so
    /// far; returns the log size.
    async fn integrated(&self, talks: TalksId) -> u64 {
        let c = self.client(OMAN_LEAD_DEVICE);
        for _ in 0..500 {
            let size = c.fetch(talks, 0, 1).await.unwrap().log_size;
            let (cp, _) = c.checkpoint(talks).await.unwrap();
            if cp == size {
                return size;
            }
            tokio::time::sleep(INTERVAL).await;
        }
        panic!("the node did not integrate its log");
    }
}

fn reference_list() -> AccessList {
    let t = fixtures::talks();
    t.roster.implied_access_list(t.talks).unwrap()
}

// --- Devices -------------------------------------------------------------------

type Sess = Session<MemoryClientStore>;

/// One device's session on one node, with the rooms it receives.
struct Device {
    session: Sess,
    rooms: BTreeSet<RoomId>,
    /// The node's clock: the device verifies and cosigns at it.
    t0: u64,
}

async fn device(node: &TestNode, talks: TalksId, label: u8) -> Device {
    device_with(node, talks, label, Arc::new(MemoryClientStore::default())).await
}

async fn device_with(
    node: &TestNode,
    talks: TalksId,
    label: u8,
    store: Arc<MemoryClientStore>,
) -> Device {
    let session = Session::open(
        store,
        node.client(label),
        key(label),
        talks,
        &node_origin(),
        log_key(),
    )
    .await
    .unwrap();
    let rooms = reference_list()
        .get(&key(label).public_key().id())
        .unwrap()
        .rooms()
        .iter()
        .copied()
        .collect();
    Device {
        session,
        rooms,
        t0: node.t0,
    }
}

/// Brings `devices` (all on `node`) into the MLS groups of their rooms;
/// returns the log size after that setup, once integrated.
async fn join_rooms(node: &TestNode, talks: TalksId, devices: &mut [&mut Device]) -> u64 {
    let mut sessions: Vec<&mut Sess> = devices.iter_mut().map(|d| &mut d.session).collect();
    sync_all(&mut sessions, &reference_list(), node.t0 / 1000)
        .await
        .unwrap();
    node.integrated(talks).await
}

impl Device {
    async fn say(&mut self, text: &str, salt: u8) -> u64 {
        let record = fixtures::talks().record;
        self.session
            .send(
                &reference_list(),
                record,
                Content::Talk(text.into()),
                Salt([salt; 32]),
            )
            .await
            .unwrap()
    }

    /// Receives, verifies the log once the node's checkpoint reaches
    /// `size` (nothing withheld, every receipt merged) and cosigns it.
    /// Only that checkpoint is verified (none below it on the way), so
    /// followers compare at the sizes the tests expect.
    async fn verify_and_cosign(&mut self, size: u64) -> SignedCheckpoint {
        let talks = self.session.talks();
        for _ in 0..500 {
            let (served, _) = self.session.node().checkpoint(talks).await.unwrap();
            if served >= size {
                break;
            }
            tokio::time::sleep(INTERVAL).await;
        }
        self.session.receive(&reference_list()).await.unwrap();
        let (report, checkpoint) = self.session.verify_log(&self.rooms, self.t0).await.unwrap();
        assert_eq!(
            report.size, size,
            "the node's checkpoint never reached size {size}"
        );
        assert!(report.withheld.is_empty(), "{report:?}");
        assert!(report.not_merged.is_empty(), "{report:?}");
        self.session
            .cosign(&checkpoint, self.t0 / 1000)
            .await
            .unwrap();
        checkpoint
    }

    fn follower(&self) -> &Follower {
        self.session.follower()
    }

    /// The node's latest checkpoint note as served, verified.
    async fn served(&self) -> (Vec<u8>, SignedCheckpoint) {
        let talks = self.session.talks();
        let (_, note) = self.session.node().checkpoint(talks).await.unwrap();
        let checkpoint = SignedCheckpoint::verify(&note, &log_key(), &origin(talks)).unwrap();
        (note, checkpoint)
    }
}

fn sorted(mut parties: Vec<PartyId>) -> Vec<PartyId> {
    parties.sort();
    parties
}

// --- The honest control ------------------------------------------------------------

#[tokio::test]
async fn an_honest_node_gets_every_party_s_cosignature_within_an_interval() {
    let (node, talks) = start(now_ms()).await;
    let parties = party_cosigners(&reference_list());
    let t = fixtures::talks();
    assert_eq!(
        parties.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        sorted(vec![t.oman, t.us, t.iran])
    );
    let mut us = device(&node, talks, US_HEAD_DEVICE).await;
    let mut iran = device(&node, talks, IRAN_HEAD_DEVICE).await;
    let mut oman = device(&node, talks, OMAN_LEAD_DEVICE).await;
    let base = join_rooms(&node, talks, &mut [&mut us, &mut iran, &mut oman]).await;
    assert_eq!(us.say("the US proposal", 1).await, base);
    assert_eq!(iran.say("the Iranian proposal", 2).await, base + 1);
    for d in [&mut us, &mut iran, &mut oman] {
        d.verify_and_cosign(base + 2).await;
    }
    let (note, checkpoint) = us.served().await;
    assert_eq!(checkpoint.checkpoint().size, base + 2);
    assert_eq!(is_final(&note, &parties).unwrap(), Finality::Final);
    // The negotiator's device did not cosign: its party is covered by the head's.
    let all: Vec<_> = parties.iter().flat_map(|(_, k)| k.clone()).collect();
    assert_eq!(
        missing_cosigners(&note, &all).unwrap(),
        vec![cosigner_key(&key(US_NEGOTIATOR_DEVICE).public_key()).unwrap()]
    );
    assert!(matches!(
        compare(us.follower(), iran.follower()),
        Comparison::Consistent { largest, .. } if largest == base + 2
    ));
    assert!(matches!(
        is_final(&note, &[]),
        Err(FinalityError::NoParties)
    ));
}

// --- The hostile node ----------------------------------------------------------------

#[tokio::test]
async fn a_node_serving_two_histories_is_caught_with_offline_evidence() {
    let t = fixtures::talks();
    let t0 = now_ms();
    let (node_a, talks) = start(t0).await;
    let (node_b, talks_b) = start(t0).await;
    assert_eq!(talks, talks_b);
    let origin = origin(talks);
    let parties = party_cosigners(&reference_list());
    // One node as far as anyone can tell: same origin, log key and certificate.
    let info_a = node_a.client(US_HEAD_DEVICE).node_info().await.unwrap();
    let info_b = node_b.client(IRAN_HEAD_DEVICE).node_info().await.unwrap();
    assert_eq!(
        (info_a.origin, info_a.log_key),
        (info_b.origin, info_b.log_key)
    );
    assert_eq!(node_a.served.fingerprint, node_b.served.fingerprint);

    // The US (and the mediator) are shown history A, Iran history B. The
    // US head's device creates its rooms' groups on node A, Iran's head's
    // device its rooms' groups on node B: two rooms each, so both logs
    // hold as many envelopes after that. The mediator's device only
    // follows, verifies and cosigns here: it need not be in the groups (it
    // archives what it cannot read).
    let mut us = device(&node_a, talks, US_HEAD_DEVICE).await;
    let oman_store = Arc::new(MemoryClientStore::default());
    let mut oman = device_with(&node_a, talks, OMAN_LEAD_DEVICE, Arc::clone(&oman_store)).await;
    let mut iran = device(&node_b, talks, IRAN_HEAD_DEVICE).await;
    let base = join_rooms(&node_a, talks, &mut [&mut us]).await;
    assert_eq!(join_rooms(&node_b, talks, &mut [&mut iran]).await, base);
    // The first size at which the two histories differ in what was said.
    let size = base + 1;
    assert_eq!(us.say("the US proposal", 1).await, base);
    assert_eq!(iran.say("the Iranian proposal", 2).await, base);
    let cp_us = us.verify_and_cosign(size).await;
    let cp_oman = oman.verify_and_cosign(size).await;
    let cp_iran = iran.verify_and_cosign(size).await;
    assert_eq!(cp_us.checkpoint(), cp_oman.checkpoint());
    let (root_a, root_b) = (cp_us.checkpoint().root, cp_iran.checkpoint().root);
    assert_ne!(root_a, root_b, "each history verifies on its own");

    // (a) Missing cosignatures: wait a checkpoint interval and more, several
    // times over; neither node ever gets the other side's cosignature.
    let waited = tokio::time::Instant::now();
    for _ in 0..10 {
        tokio::time::sleep(INTERVAL).await;
        let (note_a, cp_a) = us.served().await;
        let (note_b, cp_b) = iran.served().await;
        assert_eq!(
            (cp_a.checkpoint().size, cp_b.checkpoint().size),
            (size, size)
        );
        assert_eq!(
            is_final(&note_a, &parties).unwrap(),
            Finality::Pending {
                missing: vec![t.iran]
            }
        );
        assert_eq!(
            is_final(&note_b, &parties).unwrap(),
            Finality::Pending {
                missing: sorted(vec![t.oman, t.us])
            }
        );
    }
    assert!(waited.elapsed() >= GRACE);
    println!(
        "after {} ms ({} checkpoint intervals): node A missing Iran, node B missing Oman and the US",
        waited.elapsed().as_millis(),
        waited.elapsed().as_millis() / INTERVAL.as_millis()
    );
    let (note_a, _) = us.served().await;
    let (note_b, _) = iran.served().await;
    let iran_keys = &parties.iter().find(|(p, _)| *p == t.iran).unwrap().1;
    let us_keys = &parties.iter().find(|(p, _)| *p == t.us).unwrap().1;
    assert_eq!(&missing_cosigners(&note_a, iran_keys).unwrap(), iran_keys);
    assert!(missing_cosigners(&note_b, iran_keys).unwrap().is_empty());
    assert_eq!(
        missing_cosigners(&note_b, us_keys).unwrap(),
        us_keys.clone(),
        "no US device cosigned history B"
    );
    // The node cannot borrow Iran's cosignature from history B: on history
    // A's checkpoint it does not verify, and the note is refused.
    let iran_line = backchannel_tlog::cosignatures(&note_b)
        .unwrap()
        .into_iter()
        .find(|c| c.name() == iran_keys[0].name())
        .unwrap();
    let transplanted = attach(&note_a, &iran_line).unwrap();
    assert!(matches!(
        is_final(&transplanted, &parties),
        Err(FinalityError::Cosigners(
            MissingCosignersError::Cosignature(CosignatureError::BadSignature(_))
        ))
    ));

    // (b) Comparing the two parties' verified states.
    assert_eq!(
        compare(us.follower(), iran.follower()),
        Comparison::Forked {
            size,
            root_a,
            root_b
        }
    );
    assert_eq!(
        compare(us.follower(), oman.follower()),
        Comparison::Consistent {
            compared: 1,
            largest: size
        }
    );

    // (c) Evidence from the two served notes (cosignatures and all),
    // written out, read back and verified with only the log key and origin.
    let evidence = ForkEvidence::from_checkpoints(&note_a, &note_b, &log_key(), &origin).unwrap();
    let file = evidence.to_canonical_bytes();
    let read = ForkEvidence::from_canonical_bytes(&file).unwrap();
    let fork = read.verify(&log_key(), &origin).unwrap();
    assert_eq!(fork.size, size);
    assert_eq!(
        BTreeSet::from([fork.root_a, fork.root_b]),
        BTreeSet::from([root_a, root_b])
    );
    let summary = serde_json::to_string(&fork.summary()).unwrap();
    println!("same-size fork evidence: {} bytes; {summary}", file.len());
    // Only the log's line is kept: the evidence is the same from bare notes.
    let (bare_a, bare_b) = read.notes();
    assert!(backchannel_tlog::cosignatures(bare_a).unwrap().is_empty());
    assert_eq!(
        ForkEvidence::from_checkpoints(bare_b, bare_a, &log_key(), &origin).unwrap(),
        evidence
    );

    // A tampered file fails: a character of a root, of a signature, and
    // then every single byte flipped in turn.
    let root_text = |note: &[u8]| -> usize {
        let body_end = note.windows(2).position(|w| w == b"\n\n").unwrap();
        let root_start = note[..body_end].iter().rposition(|&b| b == b'\n').unwrap() + 1;
        let at = file.windows(note.len()).position(|w| w == note).unwrap();
        at + root_start
    };
    let mut tampered = file.clone();
    let i = root_text(bare_a) + 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    // Refused as it reads if the roots' order broke, else when verified.
    if let Ok(e) = ForkEvidence::from_canonical_bytes(&tampered) {
        assert!(matches!(
            e.verify(&log_key(), &origin),
            Err(ForkError::Checkpoint { .. })
        ));
    }
    let mut tampered = file.clone();
    let i = file.len() - 20; // inside note b's signature line (base64)
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let e = ForkEvidence::from_canonical_bytes(&tampered).unwrap();
    assert!(matches!(
        e.verify(&log_key(), &origin),
        Err(ForkError::Checkpoint { .. })
    ));
    let (mut refused_reading, mut refused_verifying) = (0, 0);
    for i in 0..file.len() {
        let mut flipped = file.clone();
        flipped[i] ^= 0x01;
        match ForkEvidence::from_canonical_bytes(&flipped) {
            Err(_) => refused_reading += 1,
            Ok(e) => {
                assert!(
                    e.verify(&log_key(), &origin).is_err(),
                    "byte {i} flipped verifies"
                );
                refused_verifying += 1;
            }
        }
    }
    println!(
        "every one of {} single-bit flips is refused: {refused_reading} when read, \
         {refused_verifying} when verified",
        file.len()
    );
    // Another log key or another talks: not this node's fork.
    assert!(read.verify(&key(0x99).public_key(), &origin).is_err());
    assert!(
        read.verify(
            &log_key(),
            &LogOrigin::new(&node_origin(), TalksId([9; 16]))
        )
        .is_err()
    );
    // Two notes of one honest history are not a fork.
    let (note_a_again, _) = oman.served().await;
    assert_eq!(
        ForkEvidence::from_checkpoints(&note_a, &note_a_again, &log_key(), &origin),
        Err(NotAFork::SameRoot { size })
    );

    // The history moves on: the US says more on node A (one more
    // envelope). Iran's note against A's larger note is a fork of the
    // prefix form: A's tree has another root at Iran's size, by node A's
    // own proof.
    let size2 = size + 1;
    assert_eq!(us.say("the US answer", 3).await, size);
    let cp_us2 = us.verify_and_cosign(size2).await;
    let (note_a2, _) = us.served().await;
    let proof = us
        .session
        .node()
        .consistency_proof(talks, size, size2)
        .await
        .unwrap();
    let prefix_root = us.follower().root_at(size).unwrap();
    assert_eq!(prefix_root, root_a);
    let evidence =
        ForkEvidence::from_prefix(&note_a2, &note_b, &prefix_root, &proof, &log_key(), &origin)
            .unwrap();
    let file2 = evidence.to_canonical_bytes();
    let fork = ForkEvidence::from_canonical_bytes(&file2)
        .unwrap()
        .verify(&log_key(), &origin)
        .unwrap();
    assert_eq!(
        (fork.size, fork.root_a, fork.root_b, fork.later),
        (
            size,
            root_b,
            root_a,
            Some((size2, cp_us2.checkpoint().root))
        )
    );
    println!(
        "prefix fork evidence: {} bytes; {}",
        file2.len(),
        serde_json::to_string(&fork.summary()).unwrap()
    );
    // A's own notes of sizes 1 and 2 are one history.
    assert_eq!(
        ForkEvidence::from_checkpoints(&note_a, &note_a2, &log_key(), &origin),
        Err(NotAFork::DifferentSizes {
            size_a: size,
            size_b: size2
        })
    );
    assert_eq!(
        ForkEvidence::from_prefix(&note_a, &note_a2, &prefix_root, &proof, &log_key(), &origin),
        Err(NotAFork::Consistent {
            old: size,
            new: size2
        })
    );
    // A prefix root the proof does not bind: no evidence.
    assert_eq!(
        ForkEvidence::from_prefix(
            &note_b,
            &note_a2,
            &Digest([7; 32]),
            &proof,
            &log_key(),
            &origin
        ),
        Err(NotAFork::BadProof {
            old: size,
            new: size2
        })
    );

    // The mediator's device, pointed at node B with its stored state,
    // refuses history B outright.
    drop(oman);
    let mut oman_on_b = device_with(&node_b, talks, OMAN_LEAD_DEVICE, oman_store).await;
    oman_on_b.session.receive(&reference_list()).await.unwrap();
    match oman_on_b.session.verify_log(&oman_on_b.rooms, t0).await {
        Err(SessionError::Evidence(e)) => {
            assert!(e.contains(&format!("fork at size {size}")), "{e}");
        }
        other => panic!("expected a fork, got {other:?}"),
    }
    assert_eq!(oman_on_b.follower().root_at(size), Some(root_a));
}
