//! `Session` against a real node started in-process (TLS on loopback): the
//! node's SQLite database tampered with across a restart (a rewritten
//! envelope, a deleted one, a room no longer delivered) is caught by every
//! client, naming the seq; an inclusion proof of another leaf is refused by
//! re-hashing; a revoked identity key's later statement is rejected by
//! every client's replay; a device removed from the access list (and
//! revoked) is judged by log position, so its earlier envelopes are still
//! archived by a client that receives them only afterwards, also after a
//! resume, while a key no list or record names is refused naming the seq.
//!
//! Rooms are MLS groups: each test first brings the devices that send into
//! their rooms' groups ([`sync_all`]), which logs the groups' handshakes
//! and Welcomes; the seqs of what the tests send follow them (`base`, the
//! log size after that setup). The node runs at the real current time
//! (OpenMLS checks key-package lifetimes against the system clock, the node
//! against its own), fixed for the whole test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use backchannel_client::follow::Withheld;
use backchannel_client::net::NodeClient;
use backchannel_client::rooms::sync_all;
use backchannel_client::seal::Content;
use backchannel_client::session::{Discrepancy, LogReport, Session, SessionError};
use backchannel_client::store::MemoryClientStore;
use backchannel_codec::{Encode, RoomId, TalksId};
use backchannel_crypto::{Signer, sha256};
use backchannel_node::server::{Node, NodeConfig};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::header::pad_body;
use backchannel_statement::{
    AccessEntry, AccessList, AccessListChange, AccessListDelta, DeviceCert, Payload, Revoke,
    RevokeReason, Salt, SignedStatement,
};
use backchannel_store::Store;
use backchannel_store::memory::MemoryStore;
use backchannel_store_sqlite::{SqliteOptions, SqliteStore};
use backchannel_tlog::{InclusionProof, NodeOrigin};
use sqlx::Connection as _;

/// The creator key (in the creators file).
const CREATOR: u8 = OMAN_LEAD_DEVICE;
/// The node's TLS key.
const NODE_TLS: u8 = 0x52;
/// The current time (Unix ms), read once per test: the node's clock is set
/// to it and never moves, so every receipt is stamped with it, and the
/// sessions verify at it, so no receipt is ever overdue.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
/// Devices the US negotiator certifies (before and after its revocation).
const NEW_DEVICE: u8 = 0x45;
const LATER_DEVICE: u8 = 0x46;
/// A key no access list the clients accepted and no statement names.
const STRANGER: u8 = 0x66;

// --- A node on loopback ------------------------------------------------------

use backchannel_test_support::{ManualClock, Served, serve_tls, test_limits};

struct TestNode {
    served: Served,
    /// The node's clock (Unix ms), which never moves.
    t0: u64,
}

/// Starts a node over `store` on a free loopback port, its clock at `t0`.
async fn start<S: Store>(store: S, t0: u64) -> TestNode {
    let node = Node::new(
        Arc::new(store),
        NodeConfig {
            origin: origin(),
            log_key: Arc::new(key(NODE_LOG)),
            creators: vec![key(CREATOR).public_key()],
            limits: test_limits(),
            clock: Arc::new(ManualClock(AtomicU64::new(t0))),
            instance: [0xf3; 16],
        },
    );
    let served = serve_tls(node, &key(NODE_TLS), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    TestNode { served, t0 }
}

/// Starts a node on the SQLite database at `db` (created if absent), its
/// clock at `t0`.
async fn start_sqlite(db: &Path, t0: u64) -> TestNode {
    start(
        SqliteStore::open(db, SqliteOptions::default())
            .await
            .unwrap(),
        t0,
    )
    .await
}

impl TestNode {
    fn client(&self, label: u8) -> NodeClient {
        NodeClient::new(self.served.addr, self.served.fingerprint, &key(label)).unwrap()
    }

    /// Stops serving (requests in progress finish) and waits until the
    /// node, its integrator and its store are gone.
    async fn stop(self) {
        self.served.stop().await;
    }
}

fn origin() -> NodeOrigin {
    NodeOrigin::new("node.example").unwrap()
}

fn talks() -> TalksId {
    fixtures::talks().talks
}

/// The reference talks' access list (the roster's), as every client accepted it.
fn list() -> AccessList {
    let t = fixtures::talks();
    t.roster.implied_access_list(t.talks).unwrap()
}

/// The rooms `device` receives, by the accepted list.
fn rooms(device: u8) -> BTreeSet<RoomId> {
    list()
        .get(&key(device).public_key().id())
        .unwrap()
        .rooms()
        .iter()
        .copied()
        .collect()
}

// --- Sessions ------------------------------------------------------------------

type Sess = Session<MemoryClientStore>;

/// Opens (or, with the same store, resumes) `device`'s session on `node`.
async fn session(node: &TestNode, device: u8, store: &Arc<MemoryClientStore>) -> Sess {
    Session::open(
        Arc::clone(store),
        node.client(device),
        key(device),
        talks(),
        &origin(),
        key(NODE_LOG).public_key(),
    )
    .await
    .unwrap()
}

/// Waits until the node has integrated every envelope sequenced so far;
/// returns the log size.
async fn integrated(node: &TestNode) -> u64 {
    let c = node.client(OMAN_LEAD_DEVICE);
    for _ in 0..500 {
        let size = c.fetch(talks(), 0, 1).await.unwrap().log_size;
        let (cp, _) = c.checkpoint(talks()).await.unwrap();
        if cp == size {
            return size;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the node did not integrate its log");
}

/// Brings `sessions` into the MLS groups of their rooms by `list` (key
/// packages, groups created, devices added and joined), at the node's
/// time; returns the log size after that setup, once integrated.
async fn join_rooms(node: &TestNode, sessions: &mut [&mut Sess], list: &AccessList) -> u64 {
    sync_all(sessions, list, node.t0 / 1000).await.unwrap();
    integrated(node).await
}

/// Receives everything and verifies the log as `device`.
async fn sync(node: &TestNode, s: &mut Sess, device: u8) -> LogReport {
    s.receive(&list()).await.unwrap();
    let (report, _) = s.verify_log(&rooms(device), node.t0).await.unwrap();
    report
}

fn talk(text: &str) -> Content {
    Content::Talk(text.into())
}

/// The reference talks on `node`: the US head's and the Iran head's
/// devices join their rooms' groups (the log's first `base` envelopes),
/// then each posts to the record room in turn, `n` envelopes in all (seqs
/// `base..base + n`, the US head's at even offsets, Iran's at odd ones);
/// both receive and verify the whole log, and read every entry. Returns
/// `base`, and their sessions and stores.
async fn record_talk(node: &TestNode, n: u64) -> (u64, [(Sess, Arc<MemoryClientStore>, u8); 2]) {
    node.client(CREATOR).create_talks(&list()).await.unwrap();
    let record = fixtures::talks().record;
    let mut sessions = Vec::new();
    for device in [US_HEAD_DEVICE, IRAN_HEAD_DEVICE] {
        let store = Arc::new(MemoryClientStore::default());
        sessions.push((session(node, device, &store).await, store, device));
    }
    let base = {
        let [(a, _, _), (b, _, _)] = &mut sessions[..] else {
            unreachable!()
        };
        join_rooms(node, &mut [a, b], &list()).await
    };
    for i in 0..n {
        let (s, _, _) = &mut sessions[(i % 2) as usize];
        let text = format!("record entry {i}");
        let sent = s
            .send(&list(), record, talk(&text), Salt([i as u8; 32]))
            .await
            .unwrap();
        assert_eq!(sent, base + i);
    }
    assert_eq!(integrated(node).await, base + n);
    for (s, _, device) in &mut sessions {
        let report = sync(node, s, *device).await;
        assert_eq!(report.size, base + n);
        assert_eq!(report.withheld, vec![]);
        assert_eq!(report.not_merged, Vec::<u64>::new());
        let entries: Vec<_> = s
            .archive()
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.seq >= base)
            .collect();
        assert_eq!(entries.len() as u64, n);
        for (i, a) in (0u64..).zip(&entries) {
            assert_eq!(a.seq, base + i);
            assert_eq!(
                a.message.as_ref().map(|m| &m.content),
                Some(&talk(&format!("record entry {i}"))),
                "seq {}: {:?}",
                a.seq,
                a.unreadable
            );
        }
    }
    let [a, b]: [_; 2] = sessions.try_into().ok().unwrap();
    (base, [a, b])
}

/// Runs `query` (with the given blob binds) on the node's database while
/// the node is stopped, as an attacker holding the database would.
async fn tamper(db: &Path, query: &str, binds: Vec<Vec<u8>>) {
    // The query outlives the call in sqlx's types: one small leak per test.
    let query: &'static str = Box::leak(query.to_owned().into_boxed_str());
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let mut q = sqlx::query(query);
    for b in binds {
        q = q.bind(b);
    }
    let done = q.execute(&mut c).await.unwrap();
    assert_eq!(done.rows_affected(), 1, "{query}");
    c.close().await.unwrap();
}

// --- Tests ---------------------------------------------------------------------

/// Whether `message` names `seq` (and not a longer number starting with it).
fn names(message: &str, seq: u64) -> bool {
    let needle = format!("seq {seq}");
    message.match_indices(&needle).any(|(i, _)| {
        !message[i + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// Whether replay's `why` says the key was revoked at `seq` (and not at a
/// longer number starting with it).
fn revoked_at(why: &str, seq: u64) -> bool {
    let needle = format!("revoked at seq {seq}");
    why.match_indices(&needle).any(|(i, _)| {
        !why[i + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

#[tokio::test]
async fn a_rewritten_stored_envelope_fails_every_client_naming_its_seq() {
    const N: u64 = 5;
    let t0 = now_ms();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("node.db");
    let node = start_sqlite(&db, t0).await;
    let (base, [(_, us_store, _), (_, iran_store, _)]) = record_talk(&node, N).await;
    // The third record entry.
    let rewritten = base + 2;
    node.stop().await;

    // Rewrite its body, and its body hash consistently (the header, signed
    // by its sender, is left: the row still decodes), as an attacker with
    // the database would. The forged body is a valid-looking one: padded
    // like every body (the node cannot tell ciphertext from bytes).
    let record = fixtures::talks().record;
    let forged = pad_body(&[0xee; 200]).unwrap();
    tamper(
        &db,
        &format!("UPDATE envelopes SET body = ?, body_hash = ? WHERE seq = {rewritten}"),
        vec![forged.clone(), sha256(&forged).0.to_vec()],
    )
    .await;
    let node = start_sqlite(&db, t0).await;

    // A fresh device, which never archived the original bytes: the page
    // holding the rewritten seq does not check out (its body is not its
    // header's), and the data tiles do not hash into the node's signed
    // checkpoint; the node's own stored leaf hash, proved into that
    // checkpoint, blames that seq.
    let mut negotiator = session(
        &node,
        US_NEGOTIATOR_DEVICE,
        &Arc::new(MemoryClientStore::default()),
    )
    .await;
    let e = negotiator.receive(&list()).await.unwrap_err().to_string();
    assert!(names(&e, rewritten), "{e}");
    let e = negotiator
        .verify_log(&rooms(US_NEGOTIATOR_DEVICE), t0)
        .await
        .unwrap_err();
    assert!(matches!(e, SessionError::Evidence(_)), "{e:?}");
    let e = e.to_string();
    assert!(names(&e, rewritten) && e.contains("rewritten"), "{e}");
    for seq in (0..base + N).filter(|s| *s != rewritten) {
        assert!(!names(&e, seq), "seq {seq} blamed too: {e}");
    }

    // The devices that archived the original bytes (resumed from their
    // stores): the audit finds that the leaf served for that seq is not the
    // archived one, and that the envelope served again does not check out;
    // nothing else differs. Their archive still holds what the node's tree
    // commits to.
    let mut us = session(&node, US_HEAD_DEVICE, &us_store).await;
    let mut iran = session(&node, IRAN_HEAD_DEVICE, &iran_store).await;
    for s in [&us, &iran] {
        let found = s.check_archive().await.unwrap();
        assert!(
            found.iter().all(|d| d.seq() == Some(rewritten)),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|d| matches!(d, Discrepancy::Rewritten { seq, .. } if *seq == rewritten)),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|d| matches!(d, Discrepancy::Envelope { seq, .. } if *seq == rewritten)),
            "{found:?}"
        );
        assert!(found.iter().all(|d| names(&d.to_string(), rewritten)));
        s.prove_included(rewritten).await.unwrap();
    }

    // And in the normal course: the log grows, and verifying the new leaf
    // re-reads the first tile, where the rewritten seq no longer matches
    // the archive.
    let sent = us
        .send(&list(), record, talk("after the restart"), Salt([0x55; 32]))
        .await
        .unwrap();
    assert_eq!(sent, base + N);
    assert_eq!(integrated(&node).await, base + N + 1);
    let got = iran.receive(&list()).await.unwrap();
    assert_eq!(
        got.iter().map(|a| a.seq).collect::<Vec<_>>(),
        vec![base + N]
    );
    assert_eq!(
        got[0].message.as_ref().map(|m| &m.content),
        Some(&talk("after the restart"))
    );
    let e = iran
        .verify_log(&rooms(IRAN_HEAD_DEVICE), t0)
        .await
        .unwrap_err()
        .to_string();
    assert!(names(&e, rewritten) && e.contains("rewritten"), "{e}");
    node.stop().await;
}

#[tokio::test]
async fn a_deleted_stored_envelope_is_named_as_withheld() {
    const N: u64 = 5;
    let t0 = now_ms();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("node.db");
    let node = start_sqlite(&db, t0).await;
    let (base, [(us, us_store, _), _]) = record_talk(&node, N).await;
    // The third record entry.
    let deleted = base + 2;
    // What the US head's device archived: every envelope of its rooms,
    // which are the negotiator's rooms too (the record and the US caucus).
    assert_eq!(rooms(US_HEAD_DEVICE), rooms(US_NEGOTIATOR_DEVICE));
    let archived: Vec<u64> = us.archive().await.unwrap().iter().map(|a| a.seq).collect();
    assert!(archived.contains(&deleted));
    drop(us);
    node.stop().await;
    tamper(
        &db,
        &format!("DELETE FROM envelopes WHERE seq = {deleted}"),
        vec![],
    )
    .await;
    let node = start_sqlite(&db, t0).await;

    // A fresh device: the node refuses every page across the hole (500),
    // so receiving bisects down to the deleted seq, steps over it and
    // archives the rest; the node refuses the data tile too, and verifying
    // names the seq it withholds below its signed checkpoint.
    let mut negotiator = session(
        &node,
        US_NEGOTIATOR_DEVICE,
        &Arc::new(MemoryClientStore::default()),
    )
    .await;
    let got = negotiator.receive(&list()).await.unwrap();
    assert_eq!(
        got.iter().map(|a| a.seq).collect::<Vec<_>>(),
        archived
            .iter()
            .copied()
            .filter(|s| *s != deleted)
            .collect::<Vec<_>>()
    );
    assert_eq!(negotiator.next_seq(), base + N);
    let e = negotiator
        .verify_log(&rooms(US_NEGOTIATOR_DEVICE), t0)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            SessionError::Unserved { seq, size } if (seq, size) == (deleted, base + N)
        ),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(names(&e, deleted) && e.contains("withholds"), "{e}");

    // A device that had archived it: the audit names the deleted seq, and
    // only it.
    let us = session(&node, US_HEAD_DEVICE, &us_store).await;
    assert_eq!(
        us.check_archive().await.unwrap(),
        vec![Discrepancy::Unserved { seq: deleted }]
    );
    node.stop().await;
}

/// Not the deletion of a row (the node then refuses the leaf data too, see
/// above) but a node that no longer delivers a room's envelopes while its
/// log and tiles still hold them: the accounting reports them withheld.
#[tokio::test]
async fn an_envelope_the_node_stops_delivering_is_reported_withheld() {
    let t0 = now_ms();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("node.db");
    let node = start_sqlite(&db, t0).await;
    node.client(CREATOR).create_talks(&list()).await.unwrap();
    let t = fixtures::talks();
    let store = Arc::new(MemoryClientStore::default());
    let mut us = session(&node, US_HEAD_DEVICE, &store).await;
    // The US head's device creates the groups of its rooms (the record and
    // the US caucus): one handshake in each.
    join_rooms(&node, &mut [&mut us], &list()).await;
    us.send(&list(), t.record, talk("in the record"), Salt([1; 32]))
        .await
        .unwrap();
    let caucus = us
        .send(
            &list(),
            t.us_caucus,
            talk("in the US caucus"),
            Salt([2; 32]),
        )
        .await
        .unwrap();
    us.send(
        &list(),
        t.record,
        talk("in the record again"),
        Salt([3; 32]),
    )
    .await
    .unwrap();
    let size = integrated(&node).await;
    // Everything the log holds, by room: the record's envelopes and the US
    // caucus's (its group's creation and the talk sent there).
    us.receive(&list()).await.unwrap();
    let archived = us.archive().await.unwrap();
    assert_eq!(archived.len() as u64, size);
    let in_room = |room: RoomId| -> Vec<u64> {
        archived
            .iter()
            .filter(|a| a.header.header().room == room)
            .map(|a| a.seq)
            .collect()
    };
    let (in_record, in_caucus) = (in_room(t.record), in_room(t.us_caucus));
    assert!(in_caucus.contains(&caucus));
    assert_eq!(in_record.len() + in_caucus.len(), archived.len());
    drop(us);
    node.stop().await;

    // The node's stored access list no longer gives the US negotiator the
    // US caucus, so the node stops delivering it; the log still holds its
    // envelope, and the negotiator accepted the roster's list.
    let negotiator = key(US_NEGOTIATOR_DEVICE).public_key();
    let entries = list()
        .entries()
        .iter()
        .map(|e| {
            if e.key() == &negotiator {
                AccessEntry::new(*e.key(), e.principal, e.party, vec![t.record], e.flags).unwrap()
            } else {
                e.clone()
            }
        })
        .collect();
    let narrowed = AccessList::new(t.talks, 0, entries).unwrap();
    tamper(
        &db,
        "UPDATE access_lists SET bytes = ?, hash = ?",
        vec![narrowed.to_canonical_bytes(), narrowed.hash().0.to_vec()],
    )
    .await;
    let node = start_sqlite(&db, t0).await;
    let mut s = session(
        &node,
        US_NEGOTIATOR_DEVICE,
        &Arc::new(MemoryClientStore::default()),
    )
    .await;
    let got = s.receive(&list()).await.unwrap();
    assert_eq!(got.iter().map(|a| a.seq).collect::<Vec<_>>(), in_record);
    let (report, _) = s
        .verify_log(&rooms(US_NEGOTIATOR_DEVICE), t0)
        .await
        .unwrap();
    assert_eq!(report.size, size);
    let missing: Vec<Withheld> = in_caucus
        .iter()
        .map(|&seq| Withheld::Missing {
            seq,
            room: t.us_caucus,
        })
        .collect();
    assert_eq!(report.withheld, missing);

    // The same when the log is verified before anything is received: the
    // verified leaves wait until the session has fetched past them.
    let mut s = session(
        &node,
        US_NEGOTIATOR_DEVICE,
        &Arc::new(MemoryClientStore::default()),
    )
    .await;
    let (report, _) = s
        .verify_log(&rooms(US_NEGOTIATOR_DEVICE), t0)
        .await
        .unwrap();
    assert_eq!((report.size, report.withheld), (size, vec![]));
    s.receive(&list()).await.unwrap();
    let (report, _) = s
        .verify_log(&rooms(US_NEGOTIATOR_DEVICE), t0)
        .await
        .unwrap();
    assert_eq!((report.size, report.withheld), (size, missing));
    node.stop().await;
}

#[tokio::test]
async fn an_inclusion_proof_of_another_leaf_is_refused_by_rehashing() {
    // Eight record entries hold a whole aligned block of four leaves
    // (a complete subtree of the log's tree, wherever they start): i and j
    // are its second and fourth leaves, so their proofs have the same
    // length.
    const N: u64 = 8;
    let node = start(MemoryStore::new(), now_ms()).await;
    let (base, [(s, _, _), _]) = record_talk(&node, N).await;
    let block = base.div_ceil(4) * 4;
    let (i, j) = (block + 1, block + 3);
    assert!(base <= i && j < base + N);
    let c = node.client(US_HEAD_DEVICE);
    let size = s.follower().size();
    let root = s.follower().root();
    assert_eq!(size, base + N);
    let leaf_i = s.archived(i).await.unwrap().unwrap().leaf().hash();
    let leaf_j = s.archived(j).await.unwrap().unwrap().leaf().hash();
    let proof_i = c.inclusion_proof(talks(), i, size).await.unwrap();
    let proof_j = c.inclusion_proof(talks(), j, size).await.unwrap();

    // Each proof leads its own leaf, re-computed from the archive, into
    // the verified root.
    proof_i.verify(i, size, &root, &leaf_i).unwrap();
    proof_j.verify(j, size, &root, &leaf_j).unwrap();
    s.check_inclusion(i, &proof_i).await.unwrap();
    s.prove_included(i).await.unwrap();
    s.prove_included(j).await.unwrap();

    // j's valid proof offered for i: refused. Relabelled with i's index
    // (same path length here), it still does not re-hash leaf i into the
    // root; at j's own index, leaf i does not re-hash into it either.
    let e = s
        .check_inclusion(i, &proof_j)
        .await
        .unwrap_err()
        .to_string();
    assert!(names(&e, i), "{e}");
    assert!(proof_j.verify(i, size, &root, &leaf_i).is_err());
    let relabelled = InclusionProof::new(i, size, proof_j.hashes().to_vec()).unwrap();
    assert!(relabelled.verify(i, size, &root, &leaf_i).is_err());
    let e = s
        .check_inclusion(i, &relabelled)
        .await
        .unwrap_err()
        .to_string();
    assert!(names(&e, i), "{e}");
    assert!(proof_j.verify(j, size, &root, &leaf_i).is_err());

    // Nothing to prove past the verified size.
    assert!(matches!(
        s.prove_included(size).await,
        Err(SessionError::Usage(_))
    ));
    node.stop().await;
}

#[tokio::test]
async fn a_revoked_identity_keys_later_statement_is_rejected_by_every_replay() {
    let node = start(MemoryStore::new(), now_ms()).await;
    node.client(CREATOR).create_talks(&list()).await.unwrap();
    let t = fixtures::talks();
    let devices = [
        OMAN_LEAD_DEVICE,
        US_HEAD_DEVICE,
        IRAN_HEAD_DEVICE,
        US_NEGOTIATOR_DEVICE,
    ];
    let mut sessions = Vec::new();
    for device in devices {
        let store = Arc::new(MemoryClientStore::default());
        sessions.push((device, session(&node, device, &store).await));
    }
    let base = {
        let mut all: Vec<&mut Sess> = sessions.iter_mut().map(|(_, s)| s).collect();
        join_rooms(&node, &mut all, &list()).await
    };
    let device_cert = |seed: u64, device: u8| {
        t.statement(
            seed,
            &key(US_NEGOTIATOR),
            t.us,
            Payload::DeviceCert(DeviceCert {
                principal: fixtures::PRINCIPALS[3],
                device_key: key(device).public_key(),
                not_after: u64::MAX,
            }),
        )
    };
    // Replay's rule 4: a member's identity key is revoked by itself, or by
    // its party's talks authority (the US head's identity key may not).
    let revoke = t.statement(
        3,
        &key(US_TALKS),
        t.us,
        Payload::Revoke(Revoke {
            key: key(US_NEGOTIATOR).public_key().id(),
            reason: RevokeReason::Compromised,
            lost_at: None,
        }),
    );
    let log = [
        // The mediator posts the roster, signed by Oman's talks authority.
        (
            OMAN_LEAD_DEVICE,
            t.statement(
                1,
                &key(OMAN_TALKS),
                t.oman,
                Payload::Roster(t.roster.clone()),
            ),
        ),
        // The negotiator's identity key certifies a device of its own.
        (US_NEGOTIATOR_DEVICE, device_cert(2, NEW_DEVICE)),
        // The US talks authority revokes that identity key.
        (US_HEAD_DEVICE, revoke),
        // The negotiator's device still posts (the node knows nothing of
        // statements), a statement by the revoked identity key.
        (US_NEGOTIATOR_DEVICE, device_cert(4, LATER_DEVICE)),
    ];
    for (i, (device, statement)) in (0u64..).zip(log) {
        let (_, s) = sessions.iter_mut().find(|(d, _)| *d == device).unwrap();
        let sent = s
            .send(
                &list(),
                t.record,
                Content::Statement(statement.as_bytes().to_vec()),
                Salt([i as u8 + 1; 32]),
            )
            .await
            .unwrap();
        assert_eq!(sent, base + i);
    }
    assert_eq!(integrated(&node).await, base + 4);
    for (device, s) in &mut sessions {
        let report = sync(&node, s, *device).await;
        assert_eq!((report.size, report.withheld.len()), (base + 4, 0));
        let replay = s.replay().await.unwrap();
        assert_eq!(
            replay.accepted,
            vec![base, base + 1, base + 2],
            "device {device:#x}"
        );
        assert_eq!(replay.rejected.len(), 1, "{:?}", replay.rejected);
        let (seq, why) = &replay.rejected[0];
        assert_eq!(*seq, base + 3);
        assert!(revoked_at(why, base + 2), "{why}");
        assert_eq!(replay.forks, vec![]);
    }
    node.stop().await;
}

// --- Senders judged by log position --------------------------------------------

/// Posts `statement` to the record room through `s`; returns its seq.
async fn post(s: &mut Sess, statement: &SignedStatement, salt: u8) -> u64 {
    s.send(
        &list(),
        fixtures::talks().record,
        Content::Statement(statement.as_bytes().to_vec()),
        Salt([salt; 32]),
    )
    .await
    .unwrap()
}

/// The roster, signed by Oman's talks authority (the record's first
/// statement).
fn roster_statement() -> SignedStatement {
    let t = fixtures::talks();
    t.statement(
        1,
        &key(OMAN_TALKS),
        t.oman,
        Payload::Roster(t.roster.clone()),
    )
}

/// A revocation of `label`'s key by the US talks authority.
fn revoke_by_us_talks(seed: u64, label: u8, reason: RevokeReason) -> SignedStatement {
    let t = fixtures::talks();
    t.statement(
        seed,
        &key(US_TALKS),
        t.us,
        Payload::Revoke(Revoke {
            key: key(label).public_key().id(),
            reason,
            lost_at: None,
        }),
    )
}

/// A device certificate by the US negotiator's identity key.
fn negotiator_device_cert(seed: u64, device: u8) -> SignedStatement {
    let t = fixtures::talks();
    t.statement(
        seed,
        &key(US_NEGOTIATOR),
        t.us,
        Payload::DeviceCert(DeviceCert {
            principal: fixtures::PRINCIPALS[3],
            device_key: key(device).public_key(),
            not_after: u64::MAX,
        }),
    )
}

/// Removes `device` from the node's access list, signed by the US talks
/// authority (its party's designated signer) and submitted by the US
/// head's device; returns the list the node serves now.
async fn remove_from_list(node: &TestNode, device: u8) -> AccessList {
    let c = node.client(US_HEAD_DEVICE);
    let current = c.access_list(talks()).await.unwrap();
    let delta = AccessListDelta::new(
        talks(),
        current.hash,
        vec![key(device).public_key().id()],
        vec![],
    )
    .unwrap();
    let change =
        AccessListChange::new(delta.clone(), vec![delta.sign(&key(US_TALKS)).unwrap()]).unwrap();
    let outcome = c.submit_change(talks(), &change).await.unwrap();
    assert!(outcome.applied, "{outcome:?}");
    let served = c.access_list(talks()).await.unwrap().list;
    assert_eq!(served, outcome.access_list.list);
    assert!(served.get(&key(device).public_key().id()).is_none());
    served
}

/// Whose envelope the archived envelope at `seq` is.
async fn sender_of(s: &Sess, seq: u64) -> backchannel_crypto::KeyId {
    s.archived(seq)
        .await
        .unwrap()
        .unwrap()
        .header
        .header()
        .sender
}

#[tokio::test]
async fn a_removed_and_revoked_devices_earlier_envelopes_are_archived_by_a_later_client() {
    let node = start(MemoryStore::new(), now_ms()).await;
    node.client(CREATOR).create_talks(&list()).await.unwrap();
    let t = fixtures::talks();
    let mut open = Vec::new();
    for device in [
        OMAN_LEAD_DEVICE,
        US_HEAD_DEVICE,
        US_NEGOTIATOR_DEVICE,
        IRAN_HEAD_DEVICE,
    ] {
        let store = Arc::new(MemoryClientStore::default());
        open.push(session(&node, device, &store).await);
    }
    let [mut oman, mut us, mut negotiator, mut iran]: [Sess; 4] = open.try_into().ok().unwrap();
    // Every device joins its rooms' groups (an MLS group gives a device
    // nothing sent before it joined, so the devices that receive only
    // later below are members from the start, offline since).
    let base = join_rooms(
        &node,
        &mut [&mut oman, &mut us, &mut negotiator, &mut iran],
        &list(),
    )
    .await;

    // The roster; then the negotiator's device, on the list, talks and
    // posts a statement by the negotiator's identity key.
    assert_eq!(post(&mut oman, &roster_statement(), 1).await, base);
    let sent = negotiator
        .send(
            &list(),
            t.record,
            talk("from the negotiator's device"),
            Salt([1; 32]),
        )
        .await
        .unwrap();
    assert_eq!(sent, base + 1);
    let cert = negotiator_device_cert(2, NEW_DEVICE);
    assert_eq!(post(&mut negotiator, &cert, 2).await, base + 2);
    let sent = negotiator
        .send(&list(), t.record, talk("and again"), Salt([3; 32]))
        .await
        .unwrap();
    assert_eq!(sent, base + 3);

    // The device is lost: the US removes it from the node's list, and its
    // talks authority revokes the device key and the identity key it held.
    let current = remove_from_list(&node, US_NEGOTIATOR_DEVICE).await;
    let device_revoked = revoke_by_us_talks(3, US_NEGOTIATOR_DEVICE, RevokeReason::Lost);
    assert_eq!(post(&mut us, &device_revoked, 4).await, base + 4);
    let identity_revoked = revoke_by_us_talks(4, US_NEGOTIATOR, RevokeReason::Compromised);
    assert_eq!(post(&mut us, &identity_revoked, 5).await, base + 5);
    // The node no longer takes the removed device's envelopes.
    let refused = negotiator
        .send(
            &list(),
            t.record,
            talk("from the lost device"),
            Salt([6; 32]),
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, SessionError::Net(_)), "{refused:?}");
    // Whoever holds the identity key still gets a statement posted (the
    // node knows nothing of statements): replay rejects it by position.
    let late = negotiator_device_cert(5, LATER_DEVICE);
    assert_eq!(post(&mut us, &late, 7).await, base + 6);
    assert_eq!(integrated(&node).await, base + 7);

    // A device that receives only now, from the end of the setup, with the
    // list the node serves now (without the negotiator's device): the
    // device's earlier envelopes are archived (and read), judged by the
    // roster that certified it.
    for (device, s) in [(IRAN_HEAD_DEVICE, &mut iran), (OMAN_LEAD_DEVICE, &mut oman)] {
        assert_eq!(s.next_seq(), base, "device {device:#x}");
        let got = s.receive(&current).await.unwrap();
        assert_eq!(
            got.iter().map(|a| a.seq).collect::<Vec<_>>(),
            (base..base + 7).collect::<Vec<_>>(),
            "device {device:#x}"
        );
        for seq in [base + 1, base + 2, base + 3] {
            assert_eq!(
                sender_of(s, seq).await,
                key(US_NEGOTIATOR_DEVICE).public_key().id()
            );
            let a = s.archived(seq).await.unwrap().unwrap();
            assert!(a.message.is_some(), "seq {seq}: {:?}", a.unreadable);
        }
        let (report, _) = s.verify_log(&rooms(device), node.t0).await.unwrap();
        assert_eq!((report.size, report.withheld), (base + 7, vec![]));
        let replay = s.replay().await.unwrap();
        assert_eq!(
            replay.accepted,
            vec![base, base + 2, base + 4, base + 5],
            "device {device:#x}"
        );
        assert_eq!(replay.rejected.len(), 1, "{:?}", replay.rejected);
        let (seq, why) = &replay.rejected[0];
        assert_eq!(*seq, base + 6);
        assert!(revoked_at(why, base + 5), "{why}");
        assert_eq!(replay.forks, vec![]);
    }
    node.stop().await;
}

#[tokio::test]
async fn a_resumed_session_judges_a_removed_device_by_the_archived_record() {
    let node = start(MemoryStore::new(), now_ms()).await;
    node.client(CREATOR).create_talks(&list()).await.unwrap();
    let t = fixtures::talks();
    let iran_store = Arc::new(MemoryClientStore::default());
    let mut oman = session(&node, OMAN_LEAD_DEVICE, &Arc::default()).await;
    let mut us = session(&node, US_HEAD_DEVICE, &Arc::default()).await;
    let mut negotiator = session(&node, US_NEGOTIATOR_DEVICE, &Arc::default()).await;
    let base = {
        let mut iran = session(&node, IRAN_HEAD_DEVICE, &iran_store).await;
        join_rooms(
            &node,
            &mut [&mut oman, &mut us, &mut negotiator, &mut iran],
            &list(),
        )
        .await
    };

    // Iran's device archives the roster, and stops.
    assert_eq!(post(&mut oman, &roster_statement(), 1).await, base);
    assert_eq!(integrated(&node).await, base + 1);
    {
        let mut iran = session(&node, IRAN_HEAD_DEVICE, &iran_store).await;
        let got = iran.receive(&list()).await.unwrap();
        assert_eq!(got.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![base]);
        assert!(got[0].message.is_some(), "{:?}", got[0].unreadable);
    }

    // Meanwhile the negotiator's device talks, is removed from the list and
    // revoked.
    let sent = negotiator
        .send(&list(), t.record, talk("before the removal"), Salt([2; 32]))
        .await
        .unwrap();
    assert_eq!(sent, base + 1);
    let current = remove_from_list(&node, US_NEGOTIATOR_DEVICE).await;
    let revoked = revoke_by_us_talks(3, US_NEGOTIATOR_DEVICE, RevokeReason::Left);
    assert_eq!(post(&mut us, &revoked, 3).await, base + 2);
    assert_eq!(integrated(&node).await, base + 3);

    // Resumed from its store, with the current list: the device's envelope
    // is judged by the roster archived before the restart, so the session
    // rebuilt its record when it opened.
    let mut iran = session(&node, IRAN_HEAD_DEVICE, &iran_store).await;
    assert_eq!(iran.next_seq(), base + 1);
    let got = iran.receive(&current).await.unwrap();
    assert_eq!(
        got.iter().map(|a| a.seq).collect::<Vec<_>>(),
        vec![base + 1, base + 2]
    );
    assert_eq!(
        sender_of(&iran, base + 1).await,
        key(US_NEGOTIATOR_DEVICE).public_key().id()
    );
    assert_eq!(
        got[0].message.as_ref().map(|m| &m.content),
        Some(&talk("before the removal"))
    );
    let replay = iran.replay().await.unwrap();
    assert_eq!(replay.accepted, vec![base, base + 2]);
    assert_eq!(replay.rejected, vec![]);
    node.stop().await;
}

#[tokio::test]
async fn an_envelope_from_a_key_no_list_or_record_names_is_refused_naming_its_seq() {
    let t0 = now_ms();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("node.db");
    let node = start_sqlite(&db, t0).await;
    node.client(CREATOR).create_talks(&list()).await.unwrap();
    let t = fixtures::talks();
    let (oman_store, iran_store) = (Arc::default(), Arc::default());
    let mut oman = session(&node, OMAN_LEAD_DEVICE, &oman_store).await;
    // Iran's device is in the record room's group (it judges what it
    // receives there below), and stays offline until then.
    let mut iran = session(&node, IRAN_HEAD_DEVICE, &iran_store).await;
    let base = join_rooms(&node, &mut [&mut oman, &mut iran], &list()).await;
    drop(iran);
    assert_eq!(post(&mut oman, &roster_statement(), 1).await, base);
    let sent = oman
        .send(&list(), t.record, talk("the mediator opens"), Salt([2; 32]))
        .await
        .unwrap();
    assert_eq!(sent, base + 1);
    integrated(&node).await;
    drop(oman);
    node.stop().await;

    // An attacker with the node's database seats a key of its own in the
    // record room, which no list the clients accepted and no statement
    // names, and gets it into the room's group (here by a member whose
    // client took the list the node now serves); the node then sequences
    // its envelope.
    let us_device = list()
        .get(&key(US_HEAD_DEVICE).public_key().id())
        .unwrap()
        .clone();
    let mut entries = list().entries().to_vec();
    entries.push(
        AccessEntry::new(
            key(STRANGER).public_key(),
            us_device.principal,
            us_device.party,
            vec![t.record],
            us_device.flags,
        )
        .unwrap(),
    );
    let seated = AccessList::new(t.talks, 0, entries).unwrap();
    tamper(
        &db,
        "UPDATE access_lists SET bytes = ?, hash = ?",
        vec![seated.to_canonical_bytes(), seated.hash().0.to_vec()],
    )
    .await;
    let node = start_sqlite(&db, t0).await;
    let mut oman = session(&node, OMAN_LEAD_DEVICE, &oman_store).await;
    let mut stranger = session(&node, STRANGER, &Arc::default()).await;
    let size = join_rooms(&node, &mut [&mut oman, &mut stranger], &seated).await;
    assert!(stranger.room_epoch(t.record).is_some());
    let forged = stranger
        .send(&seated, t.record, talk("from nobody"), Salt([3; 32]))
        .await
        .unwrap();
    assert_eq!(forged, size);
    assert_eq!(integrated(&node).await, size + 1);

    // A client with the list it accepted refuses it as evidence naming its
    // seq, and only its seq.
    let mut iran = session(&node, IRAN_HEAD_DEVICE, &iran_store).await;
    let e = iran.receive(&list()).await.unwrap_err();
    assert!(matches!(e, SessionError::Evidence(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        names(&e, forged) && e.contains("not on the access list"),
        "{e}"
    );
    for seq in 0..forged {
        assert!(!names(&e, seq), "seq {seq} blamed too: {e}");
    }
    node.stop().await;
}
