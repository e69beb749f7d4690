//! `NodeClient` against a real node started in-process (TLS on loopback, the
//! in-memory store): every call on its happy path, API errors with their
//! codes, the stream, pinning, and the submit retry.
//!
//! Rooms are MLS groups, and the node sequences an application envelope only
//! if its body is an MLS application message for the room's current epoch.
//! So each test that sends first puts its rooms' groups on the node with
//! real MLS members ([`Device`]: a group created, devices added by a commit
//! and its Welcome) and sends MLS messages; the seqs of what it sends follow
//! that setup (`base`, the log size after it). The node runs at the real
//! current time, read once per test and fixed (OpenMLS checks key-package
//! lifetimes against the system clock, the node against its own).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use backchannel_test_support::test_limits;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use backchannel_client::net::{
    MAX_NODE_ADDRESSES, NetError, NodeAddresses, NodeClient, NodeStream, StreamEvent,
};
use backchannel_codec::{Decode, PartyId, RoomId, TalksId};
use backchannel_crypto::{PublicKey, SecretKey, Signer, sha256};
use backchannel_mls::{Handshake, Member};
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
/// The current time (Unix ms), read once per node: the node's clock is set
/// to it and never moves.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
/// The lifetime of the key packages the devices upload (30 days).
const KEY_PACKAGE_LIFETIME_S: u64 = 30 * 24 * 3600;
/// The commitment every test message's header carries (the MLS
/// authenticated data).
const COMMITMENT: Commitment = Commitment([2; 32]);

// --- A node on loopback ------------------------------------------------------

use backchannel_test_support::{ManualClock, Served, serve_tls};

struct TestNode {
    served: Served,
    store: Arc<MemoryStore>,
    /// The node's clock (Unix ms), which never moves.
    t0: u64,
}

/// A new node instance id (nodes of one test may share a store).
fn instance() -> [u8; 16] {
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
    [NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed); 16]
}

/// Starts a node over `store` on `addr` (port 0: any), its clock at `t0`.
async fn start_on(store: Arc<MemoryStore>, addr: SocketAddr, limits: Limits, t0: u64) -> TestNode {
    let node = Node::new(
        Arc::clone(&store),
        NodeConfig {
            origin: backchannel_tlog::NodeOrigin::new("node.example").unwrap(),
            log_key: Arc::new(key(NODE_LOG)),
            creators: vec![key(CREATOR).public_key()],
            limits,
            clock: Arc::new(ManualClock(AtomicU64::new(t0))),
            instance: instance(),
        },
    );
    let served = serve_tls(node, &key(NODE_TLS), addr).await.unwrap();
    TestNode { served, store, t0 }
}

/// Starts a node on a fresh store, its clock at the current time.
async fn start(limits: Limits) -> TestNode {
    start_on(
        Arc::new(MemoryStore::new()),
        "127.0.0.1:0".parse().unwrap(),
        limits,
        now_ms(),
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

    /// The size of `talks`'s log (every envelope sequenced so far).
    async fn log_size(&self, talks: TalksId) -> u64 {
        let c = self.client(CREATOR);
        c.fetch(talks, 0, 1).await.unwrap().log_size
    }
}

fn reference_list() -> AccessList {
    let t = fixtures::talks();
    t.roster.implied_access_list(t.talks).unwrap()
}

/// A signed header of `kind` and its padded body carrying `message`, from
/// `sender` to `room`.
fn envelope_of(
    sender: &SecretKey,
    room: RoomId,
    kind: Kind,
    message: &[u8],
    idempotency_key: [u8; 16],
) -> (SignedHeader, Vec<u8>) {
    let body = pad_body(message).unwrap();
    let header = Header {
        talks: fixtures::talks().talks,
        room,
        sender: sender.public_key().id(),
        kind,
        idempotency_key,
        body_len: body.len() as u32,
        body_hash: sha256(&body),
        commitment: COMMITMENT,
    }
    .sign(sender)
    .unwrap();
    (header, body)
}

/// An application envelope whose body is `message` padded, not an MLS
/// message: only for refusals the node makes before it reads the body as
/// MLS (`submit::validate` runs before the rooms' gate).
fn raw_envelope(
    sender: &SecretKey,
    room: RoomId,
    message: &[u8],
    idem: u8,
) -> (SignedHeader, Vec<u8>) {
    envelope_of(sender, room, Kind::MlsApp, message, [idem; 16])
}

// --- MLS members -------------------------------------------------------------

/// Any key may be a leaf: the node checks leaves against the access list.
fn any_leaf(_: &PublicKey) -> bool {
    true
}

/// A device with its own MLS state, driving its rooms' groups through its
/// `NodeClient` by hand (as a session would), so that a test holds the
/// exact envelopes it submits.
struct Device {
    key: SecretKey,
    mls: Member,
    client: NodeClient,
    /// Setup envelopes sent so far (their idempotency keys).
    setup: u64,
    /// The node's clock (Unix ms): key packages start at it.
    t0: u64,
}

impl Device {
    fn new(node: &TestNode, talks: TalksId, label: u8) -> Self {
        Self {
            key: key(label),
            mls: Member::new(talks, key(label)),
            client: node.client(label),
            setup: 0,
            t0: node.t0,
        }
    }

    /// A setup envelope (handshake or Welcome): its idempotency keys start
    /// with `0xff`, apart from the tests' `[i; 16]`.
    fn setup_envelope(
        &mut self,
        room: RoomId,
        kind: Kind,
        message: &[u8],
    ) -> (SignedHeader, Vec<u8>) {
        self.setup += 1;
        let mut idem = [0xff; 16];
        idem[8..].copy_from_slice(&self.setup.to_be_bytes());
        idem[1..8].copy_from_slice(&self.key.public_key().as_bytes()[..7]);
        envelope_of(&self.key, room, kind, message, idem)
    }

    /// An application envelope carrying `text` encrypted for `room` at the
    /// group's current epoch, its header's commitment as the MLS
    /// authenticated data, with the idempotency key `[idem; 16]`.
    fn message(&mut self, room: RoomId, text: &[u8], idem: u8) -> (SignedHeader, Vec<u8>) {
        let ciphertext = self.mls.encrypt(room, text, &COMMITMENT.0).unwrap();
        envelope_of(&self.key, room, Kind::MlsApp, &ciphertext, [idem; 16])
    }

    /// Decrypts the body of an application envelope of `room`.
    fn read(&mut self, room: RoomId, header: &SignedHeader, body: &[u8]) -> Vec<u8> {
        assert_eq!(header.header().kind, Kind::MlsApp);
        self.mls
            .decrypt(
                room,
                unpad_body(body).unwrap(),
                &header.header().commitment.0,
            )
            .unwrap()
    }
}

/// Puts `room`'s MLS group on the node: `creator` creates it; if there are
/// `joiners`, they upload key packages, `creator` claims them and commits
/// their addition (commit and Welcome sequenced together), and they join
/// from the Welcome. Returns the seqs of the envelopes this logged.
async fn group(
    talks: TalksId,
    room: RoomId,
    creator: &mut Device,
    joiners: &mut [&mut Device],
) -> Vec<u64> {
    let group_info = creator.mls.create_room(room).unwrap();
    let create = Handshake::Create {
        group_info: &group_info,
    }
    .encode();
    let (h, b) = creator.setup_envelope(room, Kind::MlsHandshake, &create);
    let mut seqs = vec![creator.client.submit(talks, &h, &b).await.unwrap().seq];
    if joiners.is_empty() {
        return seqs;
    }
    for j in joiners.iter_mut() {
        let kps = j
            .mls
            .key_packages(1, false, j.t0 / 1000, KEY_PACKAGE_LIFETIME_S)
            .unwrap();
        assert_eq!(j.client.upload_key_packages(talks, kps).await.unwrap(), 1);
    }
    let ids: Vec<_> = joiners.iter().map(|j| j.key.public_key().id()).collect();
    let kps: Vec<Vec<u8>> = creator
        .client
        .claim_key_packages(talks, &ids)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.expect("a key package"))
        .collect();
    let out = creator.mls.commit(room, &kps, &[], &any_leaf).unwrap();
    let commit = Handshake::Commit {
        commit: &out.commit,
        group_info: &out.group_info,
    }
    .encode();
    let (ch, cb) = creator.setup_envelope(room, Kind::MlsHandshake, &commit);
    let (wh, wb) = creator.setup_envelope(room, Kind::Welcome, &out.welcome.unwrap());
    let (c, w) = creator
        .client
        .submit_commit(talks, (&ch, &cb), Some((&wh, &wb)))
        .await
        .unwrap();
    let w = w.expect("the Welcome is sequenced with its commit");
    creator.mls.merge_pending(room).unwrap();
    for j in joiners.iter_mut() {
        let page = j.client.fetch(talks, w.seq, 1).await.unwrap();
        let welcome = page.envelopes[0].body.as_deref().expect("its Welcome");
        let joined = j.mls.join(unpad_body(welcome).unwrap(), &any_leaf).unwrap();
        assert_eq!(joined, Some(room));
        assert_eq!(j.mls.epoch(room), creator.mls.epoch(room));
    }
    seqs.extend([c.seq, w.seq]);
    seqs
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

    // Key packages and the record room's group: the US head's device
    // creates it and adds the Iran head's device (commit and Welcome).
    let mut us_mls = Device::new(&node, talks, US_HEAD_DEVICE);
    let mut iran_mls = Device::new(&node, talks, IRAN_HEAD_DEVICE);
    assert_eq!(iran.key_package_count(talks).await.unwrap(), 0);
    assert_eq!(us.group_info(talks, t.record).await.unwrap(), None);
    let setup = group(talks, t.record, &mut us_mls, &mut [&mut iran_mls]).await;
    let base = node.log_size(talks).await;
    assert_eq!(setup, (0..base).collect::<Vec<_>>());
    assert_eq!(iran.key_package_count(talks).await.unwrap(), 0);
    let (epoch, _) = iran.group_info(talks, t.record).await.unwrap().unwrap();
    assert_eq!(Some(epoch), iran_mls.mls.epoch(t.record));

    // Envelopes: sequenced with a receipt; a resend answers the same seq.
    let mut sent = Vec::new();
    let mut envelopes = Vec::new();
    for i in 0..5u8 {
        let (h, b) = us_mls.message(t.record, &[i], i);
        let s = us.submit(talks, &h, &b).await.unwrap();
        assert_eq!(s.seq, base + u64::from(i));
        s.verify_receipt(&info.log_key, talks).unwrap();
        sent.push(s);
        envelopes.push((h, b));
    }
    let (h, b) = &envelopes[0];
    assert_eq!(us.submit(talks, h, b).await.unwrap().seq, base);
    let page = iran.fetch(talks, base, 1000).await.unwrap();
    assert_eq!((page.next, page.log_size), (base + 5, base + 5));
    assert_eq!(page.envelopes.len(), 5);
    for (i, (d, s)) in (0u8..).zip(page.envelopes.iter().zip(&sent)) {
        assert_eq!(d.seq, s.seq);
        assert_eq!(d.leaf_hash(), s.leaf_hash);
        d.verify_receipt(&info.log_key).unwrap();
        let body = d.body.as_deref().unwrap();
        assert_eq!(iran_mls.read(t.record, &d.header, body), [i]);
    }
    let page = iran.fetch(talks, base + 2, 2).await.unwrap();
    let seqs: Vec<u64> = page.envelopes.iter().map(|d| d.seq).collect();
    assert_eq!((seqs, page.next), (vec![base + 2, base + 3], base + 4));

    // Checkpoints, proofs and tiles.
    let (_, cp5) = checkpoint_of(&iran, talks, base + 5).await;
    let root5 = cp5.checkpoint().root;
    let proof = iran
        .inclusion_proof(talks, base + 3, base + 5)
        .await
        .unwrap();
    proof
        .verify(base + 3, base + 5, &root5, &sent[3].leaf_hash)
        .unwrap();
    for i in 5..8u8 {
        let (h, b) = us_mls.message(t.record, &[i], i);
        sent.push(us.submit(talks, &h, &b).await.unwrap());
    }
    let (note, cp8) = checkpoint_of(&iran, talks, base + 8).await;
    let proof = iran
        .consistency_proof(talks, base + 5, base + 8)
        .await
        .unwrap();
    proof
        .verify(base + 5, &root5, base + 8, &cp8.checkpoint().root)
        .unwrap();
    let width = u32::try_from(base + 8).unwrap();
    let hashes = iran
        .hash_tile(talks, &Tile::new(8, 0, 0, width, false))
        .await
        .unwrap();
    assert_eq!(hashes.len() as u64, (base + 8) * 32);
    for (s, hash) in sent.iter().zip(hashes.chunks(32).skip(base as usize)) {
        assert_eq!(hash, &s.leaf_hash.0);
    }
    let data = iran
        .data_tile(talks, &Tile::new(8, 0, 0, width, true))
        .await
        .unwrap();
    let entries: Vec<_> = data.chunks(LEAF_DATA_LEN).skip(base as usize).collect();
    assert_eq!(entries.len(), sent.len());
    for (entry, s) in entries.into_iter().zip(&sent) {
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
        node.t0 / 1000,
    )
    .unwrap();
    let cosignature = cosignatures(&cosigned).unwrap().pop().unwrap();
    iran.cosign(talks, base + 8, &cosignature).await.unwrap();
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
        expires_at: node.t0 + 60_000,
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
    // An application envelope to a room with no MLS group yet (this device
    // made one, but never put it on the node).
    let us = node.client(US_HEAD_DEVICE);
    let mut us_mls = Device::new(&node, talks, US_HEAD_DEVICE);
    us_mls.mls.create_room(t.record).unwrap();
    let (h, b) = us_mls.message(t.record, b"early", 6);
    assert_eq!(
        api_code(us.submit(talks, &h, &b).await),
        (409, "no_group".into())
    );
    us_mls.mls.forget_room(t.record);
    group(talks, t.record, &mut us_mls, &mut []).await;
    // An application envelope whose body is not an MLS message.
    let (h, b) = raw_envelope(&key(US_HEAD_DEVICE), t.record, b"plain", 5);
    assert_eq!(
        api_code(us.submit(talks, &h, &b).await),
        (400, "bad_mls".into())
    );
    // An idempotency key reused for another envelope (not retried).
    let (h, b) = us_mls.message(t.record, b"one", 7);
    us.submit(talks, &h, &b).await.unwrap();
    let (h, b) = us_mls.message(t.record, b"two", 7);
    let e = us.submit(talks, &h, &b).await.unwrap_err();
    assert_eq!(e.code(), Some("idempotency_conflict"));
    assert!(e.to_string().contains("fresh key"), "{e}");
    // Another key's envelope: the connection's key must be the sender (the
    // node refuses it before it reads the body, so a raw one will do).
    let (h, b) = raw_envelope(&key(IRAN_HEAD_DEVICE), t.record, b"x", 8);
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
    // The US head's device creates the record room's group and the US
    // caucus's: Iran hears of the record room's only.
    let mut us_mls = Device::new(&node, talks, US_HEAD_DEVICE);
    let record_setup = group(talks, t.record, &mut us_mls, &mut []).await;
    group(talks, t.us_caucus, &mut us_mls, &mut []).await;
    let base = node.log_size(talks).await;
    assert_eq!(until_caught(&mut stream, base).await, record_setup);
    // Record-room envelopes reach Iran; the US caucus one does not.
    for (i, room) in [t.record, t.us_caucus, t.record].into_iter().enumerate() {
        let (h, b) = us_mls.message(room, &[i as u8], i as u8);
        us.submit(talks, &h, &b).await.unwrap();
    }
    assert_eq!(
        until_caught(&mut stream, base + 3).await,
        vec![base, base + 2]
    );
    assert_eq!(stream.resume_from(), base + 3);
    // Answering the node's pings keeps the stream open past its idle timeout.
    // (The node may repeat `caught` when it polls; nothing else comes.)
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(event) = tokio::time::timeout_at(until, stream.next()).await {
        assert_eq!(event.unwrap(), StreamEvent::Caught(base + 3));
    }
    // Resume by seq: exactly what came since, once.
    let from = stream.resume_from();
    stream.close().await;
    let (h, b) = us_mls.message(t.record, b"later", 9);
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
    let mut us_mls = Device::new(&node, talks, US_HEAD_DEVICE);
    group(talks, t.record, &mut us_mls, &mut []).await;
    let base = node.log_size(talks).await;
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
    let (h, b) = us_mls.message(t.record, b"patient", 1);
    let s = us.submit(talks, &h, &b).await.unwrap();
    assert_eq!(s.seq, base);
}

#[tokio::test]
async fn submit_retries_across_a_node_restart() {
    let node = start(test_limits()).await;
    let t = fixtures::talks();
    let talks = node.open().await;
    let us = node.client(US_HEAD_DEVICE);
    let mut us_mls = Device::new(&node, talks, US_HEAD_DEVICE);
    group(talks, t.record, &mut us_mls, &mut []).await;
    let base = node.log_size(talks).await;
    let (h, b) = us_mls.message(t.record, b"first", 1);
    assert_eq!(us.submit(talks, &h, &b).await.unwrap().seq, base);
    // The node comes back on the same address and store (and so with the
    // room's group) a little later.
    let (store, addr, t0) = (Arc::clone(&node.store), node.served.addr, node.t0);
    node.stop().await;
    let restarted = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        start_on(store, addr, test_limits(), t0).await
    });
    let (h, b) = us_mls.message(t.record, b"second", 2);
    let s = us.submit(talks, &h, &b).await.unwrap();
    assert_eq!(s.seq, base + 1);
    let node = restarted.await.unwrap();
    assert_eq!(
        node.client(IRAN_HEAD_DEVICE)
            .fetch(talks, 0, 10)
            .await
            .unwrap()
            .next,
        base + 2
    );
}

// --- Several nodes ---------------------------------------------------------

#[test]
fn node_address_lists_parse_strictly() {
    fn check(list: &str, want: Result<&str, &str>) {
        match (NodeAddresses::parse(list), want) {
            (Ok(got), Ok(canonical)) => assert_eq!(got.to_string(), canonical, "{list}"),
            (Err(e), Err(says)) => assert!(e.to_string().contains(says), "{list}: {e}"),
            (got, want) => panic!("{list}: {got:?}, want {want:?}"),
        }
    }
    check("127.0.0.1:7443", Ok("127.0.0.1:7443"));
    check("a.example:1,b.example:2", Ok("a.example:1,b.example:2"));
    check(" a.example:1 , [::1]:2 ", Ok("a.example:1,[::1]:2"));
    check("a.example:1,", Err("is not host:port"));
    check(",a.example:1", Err("is not host:port"));
    check("a.example:1,,b.example:2", Err("is not host:port"));
    check("a.example:1;b.example:2", Err("is not host:port"));
    check("a.example:1,a.example:1", Err("listed twice"));
    let nine = (1..=MAX_NODE_ADDRESSES + 1)
        .map(|i| format!("n{i}.example:1"))
        .collect::<Vec<_>>()
        .join(",");
    check(&nine, Err("more than the 8"));
    // Eight long names pass the count but not the length a record keeps.
    let long = (1..=MAX_NODE_ADDRESSES)
        .map(|i| format!("node-{i}.mediation.example.org:7443"))
        .collect::<Vec<_>>()
        .join(",");
    check(&long, Err("more than the 256"));
    let fits = (1..=MAX_NODE_ADDRESSES)
        .map(|i| format!("node-{i}.example.org:7443"))
        .collect::<Vec<_>>()
        .join(",");
    check(&fits, Ok(&fits));
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn a_client_of_several_nodes_fails_over_by_itself_and_resumes_by_seq() {
    // Two nodes on one store: one database, one log key, one TLS identity.
    let store = Arc::new(MemoryStore::new());
    let t0 = now_ms();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let a = start_on(Arc::clone(&store), any, test_limits(), t0).await;
    let b = start_on(Arc::clone(&store), any, test_limits(), t0).await;
    let fingerprint = a.served.fingerprint;
    assert_eq!(fingerprint, b.served.fingerprint);
    let both = format!("{},{}", a.served.addr, b.served.addr);
    let client = |label| NodeClient::new(&both, fingerprint, &key(label)).unwrap();

    let t = fixtures::talks();
    let talks = a.open().await;
    let us = client(US_HEAD_DEVICE);
    let mut us_mls = Device::new(&a, talks, US_HEAD_DEVICE);
    group(talks, t.record, &mut us_mls, &mut []).await;
    let base = a.log_size(talks).await;
    let first = us_mls.message(t.record, b"first", 1);
    assert_eq!(
        us.submit(talks, &first.0, &first.1).await.unwrap().seq,
        base
    );
    assert_eq!(us.current_address(), a.served.addr.to_string());
    let iran = client(IRAN_HEAD_DEVICE);
    let mut stream = iran.stream(talks, base).await.unwrap();
    let mut got = until_caught(&mut stream, base + 1).await;

    // Node A goes away (its streams are closed): the next submission is
    // sent to B, by the client.
    a.stop().await;
    let (h, b2) = us_mls.message(t.record, b"second", 2);
    assert_eq!(us.submit(talks, &h, &b2).await.unwrap().seq, base + 1);
    assert_eq!(us.current_address(), b.served.addr.to_string());
    // Resending the first envelope (a retry whose answer was lost) gets
    // its original seq from B: nothing is sequenced twice.
    assert_eq!(
        us.submit(talks, &first.0, &first.1).await.unwrap().seq,
        base
    );

    // The stream resumes by seq from whichever node answers.
    let from = stream.resume_from();
    assert_eq!(from, base + 1);
    let mut resumed = iran.stream(talks, from).await.unwrap();
    assert_eq!(iran.current_address(), b.served.addr.to_string());
    got.extend(until_caught(&mut resumed, base + 2).await);
    assert_eq!(got, vec![base, base + 1], "no gap, no duplicate");

    // Reads fail over too: the first address is dead.
    let reads = NodeClient::new(
        format!("{},{}", closed_port(), b.served.addr),
        fingerprint,
        &key(IRAN_HEAD_DEVICE),
    )
    .unwrap();
    assert_eq!(reads.fetch(talks, 0, 100).await.unwrap().next, base + 2);
    assert_eq!(reads.current_address(), b.served.addr.to_string());

    // Every node down: the error names the last one tried.
    b.stop().await;
    let e = us.node_info().await.unwrap_err();
    assert!(matches!(e, NetError::Transport(_)), "{e:?}");
}

#[tokio::test]
async fn a_wrong_certificate_at_one_address_stops_the_client() {
    let node = start(test_limits()).await;
    // Another server (another TLS identity) first in the list: the client
    // reports it, rather than routing around an impostor.
    let impostor = Node::new(
        Arc::new(MemoryStore::new()),
        NodeConfig {
            origin: backchannel_tlog::NodeOrigin::new("node.example").unwrap(),
            log_key: Arc::new(key(NODE_LOG)),
            creators: vec![],
            limits: test_limits(),
            clock: Arc::new(ManualClock(AtomicU64::new(node.t0))),
            instance: instance(),
        },
    );
    let impostor = serve_tls(impostor, &key(0x53), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let c = NodeClient::new(
        format!("{},{}", impostor.addr, node.served.addr),
        node.served.fingerprint,
        &key(IRAN_HEAD_DEVICE),
    )
    .unwrap();
    let e = c.node_info().await.unwrap_err();
    assert!(
        matches!(&e, NetError::WrongCertificate { address, .. } if *address == impostor.addr.to_string()),
        "{e:?}"
    );
    let e = c.stream(fixtures::talks().talks, 0).await.unwrap_err();
    assert!(matches!(e, NetError::WrongCertificate { .. }), "{e:?}");
    assert_eq!(c.current_address(), impostor.addr.to_string());
    impostor.stop().await;
}
