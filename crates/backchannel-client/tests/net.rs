//! `NodeClient` against a real node started in-process (TLS on loopback, the
//! in-memory store): every call on its happy path, API errors with their
//! codes, the stream, pinning, and the submit retry.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use backchannel_test_support::test_limits;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use backchannel_client::net::{NetError, NodeClient, NodeStream, StreamEvent};
use backchannel_codec::{Decode, PartyId, RoomId, TalksId};
use backchannel_crypto::{SecretKey, Signer, sha256};
use backchannel_node::limits::Limits;
use backchannel_node::server::{Node, NodeConfig, witness_name};
use backchannel_node::tls::Fingerprint;
use backchannel_statement::access_list::FLAG_DEVICE;
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::header::{pad_body, unpad_body};
use backchannel_statement::{
    AccessEntry, AccessList, AccessListChange, AccessListDelta, Commitment, Header,
    InvitationFields, InvitationToken, Kind, SignedHeader,
};
use backchannel_store::memory::MemoryStore;
use backchannel_tlog::{
    LEAF_DATA_LEN, LeafData, LogOrigin, SignedCheckpoint, cosign_note, cosignatures,
};
use tlog_tiles::Tile;

/// The creator key (in the creators file).
const CREATOR: u8 = OMAN_LEAD_DEVICE;
/// A key on no list.
const OUTSIDER: u8 = 0x66;
/// The invited party's talks authority.
const NEW_AUTHORITY: u8 = 0x67;
/// The node's TLS key.
const NODE_TLS: u8 = 0x52;
/// Start of test time.
const T0: u64 = 1_800_000_000_000;

// --- A node on loopback ------------------------------------------------------

use backchannel_test_support::{ManualClock, Served, serve_tls};

struct TestNode {
    served: Served,
    store: Arc<MemoryStore>,
}

/// Starts a node over `store` on `addr` (port 0: any).
async fn start_on(store: Arc<MemoryStore>, addr: SocketAddr, limits: Limits) -> TestNode {
    let node = Node::new(
        Arc::clone(&store),
        NodeConfig {
            origin: backchannel_tlog::NodeOrigin::new("node.example").unwrap(),
            log_key: Arc::new(key(NODE_LOG)),
            creators: vec![key(CREATOR).public_key()],
            limits,
            clock: Arc::new(ManualClock(AtomicU64::new(T0))),
        },
    );
    let served = serve_tls(node, &key(NODE_TLS), addr).await.unwrap();
    TestNode { served, store }
}

async fn start(limits: Limits) -> TestNode {
    start_on(
        Arc::new(MemoryStore::new()),
        "127.0.0.1:0".parse().unwrap(),
        limits,
    )
    .await
}

impl TestNode {
    fn client(&self, label: u8) -> NodeClient {
        NodeClient::new(self.served.addr, self.served.fingerprint, &key(label)).unwrap()
    }

    /// Opens the reference talks as the creator.
    async fn open(&self) -> TalksId {
        let created = self.client(CREATOR).create_talks(&reference_list()).await;
        let created = created.unwrap();
        assert_eq!(created.version, 0);
        assert_eq!(created.list, reference_list());
        created.list.talks()
    }

    /// Stops serving (in-flight requests finish) and waits until it has.
    async fn stop(self) {
        self.served.stop().await;
    }
}

fn reference_list() -> AccessList {
    let t = fixtures::talks();
    t.roster.implied_access_list(t.talks).unwrap()
}

/// A signed header and its padded body, from `sender` to `room`.
fn envelope(sender: &SecretKey, room: RoomId, message: &[u8], idem: u8) -> (SignedHeader, Vec<u8>) {
    let body = pad_body(message).unwrap();
    let header = Header {
        talks: fixtures::talks().talks,
        room,
        sender: sender.public_key().id(),
        kind: Kind::MlsApp,
        idempotency_key: [idem; 16],
        body_len: body.len() as u32,
        body_hash: sha256(&body),
        commitment: Commitment([2; 32]),
    }
    .sign(sender)
    .unwrap();
    (header, body)
}

/// Waits until the node's checkpoint reaches `size`; answers it verified.
async fn checkpoint_of(c: &NodeClient, talks: TalksId, size: u64) -> (Vec<u8>, SignedCheckpoint) {
    let origin = LogOrigin::new(
        &backchannel_tlog::NodeOrigin::new("node.example").unwrap(),
        talks,
    );
    for _ in 0..500 {
        let (at, note) = c.checkpoint(talks).await.unwrap();
        if at == size {
            let cp = SignedCheckpoint::verify(&note, &key(NODE_LOG).public_key(), &origin)
                .expect("the checkpoint verifies under the node's log key");
            return (note, cp);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no checkpoint of size {size}");
}

fn api_code(r: Result<impl std::fmt::Debug, NetError>) -> (u16, String) {
    match r {
        Err(NetError::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

// --- Tests ---------------------------------------------------------------------

#[tokio::test]
async fn every_call_works_on_its_happy_path() {
    let node = start(test_limits()).await;
    let t = fixtures::talks();
    let info = node.client(CREATOR).node_info().await.unwrap();
    assert_eq!(info.origin.as_str(), "node.example");
    assert_eq!(info.log_key, key(NODE_LOG).public_key());
    assert_eq!(info.blob_chunk, 1 << 20);
    let talks = node.open().await;
    let us = node.client(US_HEAD_DEVICE);
    let iran = node.client(IRAN_HEAD_DEVICE);
    let served = iran.access_list(talks).await.unwrap();
    assert_eq!((served.hash, served.version), (reference_list().hash(), 0));

    // Envelopes: sequenced with a receipt; a resend answers the same seq.
    let mut sent = Vec::new();
    for i in 0..5u8 {
        let (h, b) = envelope(&key(US_HEAD_DEVICE), t.record, &[i], i);
        let s = us.submit(talks, &h, &b).await.unwrap();
        assert_eq!(s.seq, u64::from(i));
        s.verify_receipt(&info.log_key, talks).unwrap();
        sent.push(s);
    }
    let (h, b) = envelope(&key(US_HEAD_DEVICE), t.record, &[0], 0);
    assert_eq!(us.submit(talks, &h, &b).await.unwrap().seq, 0);
    let page = iran.fetch(talks, 0, 1000).await.unwrap();
    assert_eq!((page.next, page.log_size), (5, 5));
    assert_eq!(page.envelopes.len(), 5);
    for (d, s) in page.envelopes.iter().zip(&sent) {
        assert_eq!(d.seq, s.seq);
        assert_eq!(d.leaf_hash(), s.leaf_hash);
        d.verify_receipt(&info.log_key).unwrap();
        assert_eq!(
            unpad_body(d.body.as_deref().unwrap()).unwrap(),
            [d.seq as u8]
        );
    }
    let page = iran.fetch(talks, 2, 2).await.unwrap();
    let seqs: Vec<u64> = page.envelopes.iter().map(|d| d.seq).collect();
    assert_eq!((seqs, page.next), (vec![2, 3], 4));

    // Checkpoints, proofs and tiles.
    let (_, cp5) = checkpoint_of(&iran, talks, 5).await;
    let root5 = cp5.checkpoint().root;
    let proof = iran.inclusion_proof(talks, 3, 5).await.unwrap();
    proof.verify(3, 5, &root5, &sent[3].leaf_hash).unwrap();
    for i in 5..8u8 {
        let (h, b) = envelope(&key(US_HEAD_DEVICE), t.record, &[i], i);
        sent.push(us.submit(talks, &h, &b).await.unwrap());
    }
    let (note, cp8) = checkpoint_of(&iran, talks, 8).await;
    let proof = iran.consistency_proof(talks, 5, 8).await.unwrap();
    proof.verify(5, &root5, 8, &cp8.checkpoint().root).unwrap();
    let hashes = iran
        .hash_tile(talks, &Tile::new(8, 0, 0, 8, false))
        .await
        .unwrap();
    for (i, s) in sent.iter().enumerate() {
        assert_eq!(&hashes[i * 32..(i + 1) * 32], &s.leaf_hash.0);
    }
    let data = iran
        .data_tile(talks, &Tile::new(8, 0, 0, 8, true))
        .await
        .unwrap();
    for (entry, s) in data.chunks(LEAF_DATA_LEN).zip(&sent) {
        assert_eq!(
            LeafData::from_canonical_bytes(entry).unwrap().hash(),
            s.leaf_hash
        );
    }

    // Cosigning the latest checkpoint.
    let dev = key(IRAN_HEAD_DEVICE);
    let cosigned = cosign_note(
        &note,
        &dev,
        &witness_name(&dev.public_key().id()),
        T0 / 1000,
    )
    .unwrap();
    let cosignature = cosignatures(&cosigned).unwrap().pop().unwrap();
    iran.cosign(talks, 8, &cosignature).await.unwrap();
    let (_, served_note) = iran.checkpoint(talks).await.unwrap();
    let line = cosignature.to_line();
    assert!(served_note.windows(line.len()).any(|w| w == line));

    // Invitations and enrolment.
    let mediator = node.client(OMAN_LEAD_DEVICE);
    let token = InvitationToken([42; 32]);
    let invitation = InvitationFields {
        talks,
        party: PartyId([0xee; 16]),
        token_hash: token.hash(),
        expires_at: T0 + 60_000,
    }
    .sign(&key(OMAN_TALKS))
    .unwrap();
    let created = mediator
        .create_invitation(talks, &invitation)
        .await
        .unwrap();
    assert_eq!(
        (&created.invitation, &created.redeemed),
        (&invitation, &None)
    );
    let enrolled = node
        .client(NEW_AUTHORITY)
        .enrol(talks, &token, b"sealed for the mediator")
        .await
        .unwrap();
    assert_eq!(enrolled.version, 1);
    let listed = mediator.invitations(talks).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].redeemed.map(|r| r.0),
        Some(key(NEW_AUTHORITY).public_key().id())
    );
    assert_eq!(
        listed[0].payload.as_deref(),
        Some(&b"sealed for the mediator"[..])
    );

    // An access-list change gathering its signatures.
    let current = iran.access_list(talks).await.unwrap();
    assert_eq!(current, enrolled);
    let new_device = key(0x69).public_key();
    let entry = AccessEntry::new(
        new_device,
        fixtures::PRINCIPALS[3],
        t.us,
        vec![t.record],
        FLAG_DEVICE,
    )
    .unwrap();
    let delta = AccessListDelta::new(talks, current.hash, vec![], vec![entry]).unwrap();
    let change = |signer: u8| {
        AccessListChange::new(delta.clone(), vec![delta.sign(&key(signer)).unwrap()]).unwrap()
    };
    let waiting = mediator
        .submit_change(talks, &change(OMAN_TALKS))
        .await
        .unwrap();
    assert!(!waiting.applied && waiting.missing.is_some());
    assert_eq!(waiting.access_list, current);
    let pending = us.pending_changes(talks).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].delta_hash, &pending[0].change.delta),
        (waiting.delta_hash, &delta)
    );
    let applied = node
        .client(US_TALKS)
        .submit_change(talks, &change(US_TALKS))
        .await
        .unwrap();
    assert!(applied.applied);
    assert_eq!(applied.access_list.version, 2);
    assert!(applied.access_list.list.get(&new_device.id()).is_some());
    assert!(us.pending_changes(talks).await.unwrap().is_empty());

    // Blobs: an upload that resumes after its first chunk, then a download.
    let content: Vec<u8> = (0..(2 << 20) + 12_345).map(|i| (i % 251) as u8).collect();
    let hash = sha256(&content);
    let blob = us
        .create_blob(talks, &hash, content.len() as u64, t.record)
        .await
        .unwrap();
    assert_eq!((blob.chunks, blob.complete), (3, false));
    us.put_chunk(talks, &hash, 0, &content[..1 << 20])
        .await
        .unwrap();
    assert_eq!(us.blob(talks, &hash).await.unwrap().present, vec![0]);
    let blob = us.upload_blob(talks, t.record, &content).await.unwrap();
    assert!(blob.complete);
    assert_eq!(blob.present, vec![0, 1, 2]);
    assert_eq!(us.complete_blob(talks, &hash).await.unwrap(), blob);
    assert_eq!(iran.download_blob(talks, &hash).await.unwrap(), content);
    assert_eq!(
        iran.get_chunk(talks, &hash, 2).await.unwrap(),
        &content[2 << 20..]
    );
}

#[tokio::test]
async fn api_errors_surface_with_their_code() {
    let node = start(test_limits()).await;
    let t = fixtures::talks();
    let talks = node.open().await;
    // An outsider learns nothing: unknown talks and talks it is not on look alike.
    let outsider = node.client(OUTSIDER);
    assert_eq!(
        api_code(outsider.access_list(talks).await),
        (404, "not_found".into())
    );
    assert_eq!(
        api_code(outsider.access_list(TalksId([0x99; 16])).await),
        (404, "not_found".into())
    );
    assert_eq!(
        api_code(outsider.stream(talks, 0).await),
        (404, "not_found".into())
    );
    // Not a creator; talks that exist already.
    let iran = node.client(IRAN_HEAD_DEVICE);
    assert_eq!(
        api_code(iran.create_talks(&reference_list()).await),
        (403, "forbidden".into())
    );
    assert_eq!(
        api_code(node.client(CREATOR).create_talks(&reference_list()).await),
        (409, "exists".into())
    );
    // An idempotency key reused for another envelope (not retried).
    let us = node.client(US_HEAD_DEVICE);
    let (h, b) = envelope(&key(US_HEAD_DEVICE), t.record, b"one", 7);
    us.submit(talks, &h, &b).await.unwrap();
    let (h, b) = envelope(&key(US_HEAD_DEVICE), t.record, b"two", 7);
    let e = us.submit(talks, &h, &b).await.unwrap_err();
    assert_eq!(e.code(), Some("idempotency_conflict"));
    assert!(e.to_string().contains("fresh key"), "{e}");
    // Another key's envelope: the connection's key must be the sender.
    let (h, b) = envelope(&key(IRAN_HEAD_DEVICE), t.record, b"x", 8);
    assert_eq!(
        api_code(us.submit(talks, &h, &b).await),
        (403, "sender_not_connection_key".into())
    );
    // A proof beyond the tree.
    assert_eq!(
        api_code(iran.inclusion_proof(talks, 0, 99).await),
        (404, "not_found".into())
    );
    // A blob that is not there.
    assert_eq!(
        api_code(iran.download_blob(talks, &sha256(b"nothing")).await),
        (404, "not_found".into())
    );
}

#[tokio::test]
async fn a_bad_address_or_a_wrong_fingerprint_fails_clearly() {
    let node = start(test_limits()).await;
    for bad in ["nonsense", "host:", ":443", "a b:1", "::1:443", "[::1]"] {
        let e = NodeClient::new(bad, node.served.fingerprint, &key(IRAN_HEAD_DEVICE)).unwrap_err();
        assert!(matches!(e, NetError::Usage(_)), "{bad}: {e:?}");
    }
    let wrong = NodeClient::new(
        node.served.addr,
        Fingerprint([7; 32]),
        &key(IRAN_HEAD_DEVICE),
    )
    .unwrap();
    let e = wrong.node_info().await.unwrap_err();
    assert!(matches!(e, NetError::WrongCertificate { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&node.served.addr.to_string()) && text.contains(&"07".repeat(32)),
        "{text}"
    );
    let e = wrong.stream(fixtures::talks().talks, 0).await.unwrap_err();
    assert!(matches!(e, NetError::WrongCertificate { .. }), "{e:?}");
    // Nothing listening: a transport error.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = NodeClient::new(closed, node.served.fingerprint, &key(IRAN_HEAD_DEVICE))
        .unwrap()
        .node_info()
        .await
        .unwrap_err();
    assert!(matches!(e, NetError::Transport(_)), "{e:?}");
}

/// Reads events until caught up at `at` or beyond; answers the envelope seqs.
async fn until_caught(s: &mut NodeStream, at: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), s.next())
            .await
            .expect("an event in time")
            .unwrap();
        match event {
            StreamEvent::Envelope(d) => seqs.push(d.seq),
            StreamEvent::Caught(n) if n >= at => return seqs,
            StreamEvent::Caught(_) => {}
            StreamEvent::Closed(code) => panic!("closed early: {code}"),
        }
    }
}

#[tokio::test]
async fn the_stream_delivers_answers_pings_and_resumes() {
    let node = start(Limits {
        ping_interval: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(300),
        ..test_limits()
    })
    .await;
    let t = fixtures::talks();
    let talks = node.open().await;
    let us = node.client(US_HEAD_DEVICE);
    let iran = node.client(IRAN_HEAD_DEVICE);
    let mut stream = iran.stream(talks, 0).await.unwrap();
    assert!(until_caught(&mut stream, 0).await.is_empty());
    // Record-room envelopes reach Iran; the US caucus one does not.
    for (i, room) in [t.record, t.us_caucus, t.record].into_iter().enumerate() {
        let (h, b) = envelope(&key(US_HEAD_DEVICE), room, &[i as u8], i as u8);
        us.submit(talks, &h, &b).await.unwrap();
    }
    assert_eq!(until_caught(&mut stream, 3).await, vec![0, 2]);
    assert_eq!(stream.resume_from(), 3);
    // Answering the node's pings keeps the stream open past its idle timeout.
    // (The node may repeat `caught` when it polls; nothing else comes.)
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(event) = tokio::time::timeout_at(until, stream.next()).await {
        assert_eq!(event.unwrap(), StreamEvent::Caught(3));
    }
    // Resume by seq: exactly what came since, once.
    let from = stream.resume_from();
    stream.close().await;
    let (h, b) = envelope(&key(US_HEAD_DEVICE), t.record, b"later", 9);
    let later = us.submit(talks, &h, &b).await.unwrap();
    let mut stream = iran.stream(talks, from).await.unwrap();
    assert_eq!(
        until_caught(&mut stream, later.seq + 1).await,
        vec![later.seq]
    );
}

#[tokio::test]
async fn a_stream_the_node_hears_nothing_from_is_closed_idle() {
    let node = start(Limits {
        ping_interval: Duration::from_secs(60),
        idle_timeout: Duration::from_millis(200),
        ..test_limits()
    })
    .await;
    let talks = node.open().await;
    let mut stream = node
        .client(IRAN_HEAD_DEVICE)
        .stream(talks, 0)
        .await
        .unwrap();
    assert!(until_caught(&mut stream, 0).await.is_empty());
    let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event, StreamEvent::Closed(4001));
    assert_eq!(stream.next().await.unwrap(), StreamEvent::Closed(4001));
}

#[tokio::test]
async fn submit_retries_while_storage_is_unavailable() {
    let node = start(test_limits()).await;
    let t = fixtures::talks();
    let talks = node.open().await;
    let us = node.client(US_HEAD_DEVICE);
    node.store.crash_at(0);
    // Other calls do not retry: storage down is 503 at once.
    assert_eq!(
        api_code(us.access_list(talks).await),
        (503, "unavailable".into())
    );
    assert!(node.store.crashed().is_some());
    let store = Arc::clone(&node.store);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        store.restart();
    });
    let (h, b) = envelope(&key(US_HEAD_DEVICE), t.record, b"patient", 1);
    let s = us.submit(talks, &h, &b).await.unwrap();
    assert_eq!(s.seq, 0);
}

#[tokio::test]
async fn submit_retries_across_a_node_restart() {
    let node = start(test_limits()).await;
    let t = fixtures::talks();
    let talks = node.open().await;
    let us = node.client(US_HEAD_DEVICE);
    let (h, b) = envelope(&key(US_HEAD_DEVICE), t.record, b"first", 1);
    us.submit(talks, &h, &b).await.unwrap();
    // The node comes back on the same address and store a little later.
    let (store, addr) = (Arc::clone(&node.store), node.served.addr);
    node.stop().await;
    let restarted = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        start_on(store, addr, test_limits()).await
    });
    let (h, b) = envelope(&key(US_HEAD_DEVICE), t.record, b"second", 2);
    let s = us.submit(talks, &h, &b).await.unwrap();
    assert_eq!(s.seq, 1);
    let node = restarted.await.unwrap();
    assert_eq!(
        node.client(IRAN_HEAD_DEVICE)
            .fetch(talks, 0, 10)
            .await
            .unwrap()
            .next,
        2
    );
}
