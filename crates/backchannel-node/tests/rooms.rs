//! Rooms as MLS groups at the node: creation, key packages, commits with
//! their Welcome, the epoch rules, Welcome audience, and refusals — driven
//! by real MLS members (`backchannel-mls`) over TLS against a real node.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use backchannel_codec::{RoomId, TalksId};
use backchannel_crypto::{PublicKey, SecretKey, Signer};
use backchannel_mls::{Handshake, Member};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::{Commitment, Kind, SignedHeader};
use backchannel_store::Store;
use backchannel_store::memory::MemoryStore;
use common::*;
use serde_json::json;

const LIFETIME: u64 = 30 * 24 * 3600;

/// OpenMLS checks key package lifetimes against the system clock, so these
/// tests run the node's clock at the system's time too.
fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// When the tests' key packages become valid: a minute before the system
/// time, so that the node (whose clock was set to the system time when the
/// test began) finds them valid even after a second has ticked.
fn not_before() -> u64 {
    now_s() - 60
}

struct Device {
    label: u8,
    key: SecretKey,
    mls: Member,
    client: Client,
    idem: u64,
    /// Devices the access list no longer seats (the others are admitted).
    removed: Vec<PublicKey>,
}

impl Device {
    fn new(node: &TestNode<MemoryStore>, talks: TalksId, label: u8) -> Self {
        Self {
            label,
            key: key(label),
            mls: Member::new(talks, key(label)),
            client: node.client(label),
            idem: 0,
            removed: Vec::new(),
        }
    }

    fn idem(&mut self) -> [u8; 16] {
        self.idem += 1;
        let mut k = [0u8; 16];
        k[0] = self.label;
        k[8..].copy_from_slice(&self.idem.to_be_bytes());
        k
    }

    /// An envelope of `kind` carrying `message` (padded), committing to
    /// `commitment`.
    fn envelope(
        &mut self,
        room: RoomId,
        kind: Kind,
        message: &[u8],
        commitment: [u8; 32],
    ) -> Vec<u8> {
        let idem = self.idem();
        envelope_with(&self.key, room, message, idem, |h| {
            h.kind = kind;
            h.commitment = Commitment(commitment);
        })
    }

    async fn upload(&mut self, talks: TalksId, n: usize) {
        let kps = self
            .mls
            .key_packages(n, true, not_before(), LIFETIME)
            .expect("key packages");
        let a = self
            .client
            .post(
                &path(talks, "/key-packages"),
                json!({ "key_packages": kps.iter().map(|k| b64(k)).collect::<Vec<_>>() }),
            )
            .await;
        assert_eq!(a.status, 200, "{a:?}");
    }

    async fn create(&mut self, talks: TalksId, room: RoomId) -> Answer {
        let gi = self.mls.create_room(room).expect("creates");
        let body = Handshake::Create { group_info: &gi }.encode();
        let env = self.envelope(room, Kind::MlsHandshake, &body, [0; 32]);
        self.client.post_raw(&path(talks, "/envelopes"), env).await
    }

    async fn claim(&self, talks: TalksId, devices: &[u8]) -> Vec<Option<Vec<u8>>> {
        let ids: Vec<String> = devices
            .iter()
            .map(|l| key(*l).public_key().id().to_hex())
            .collect();
        let a = self
            .client
            .post(
                &path(talks, "/key-packages/claim"),
                json!({ "devices": ids }),
            )
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        a.json["key_packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                let v = &k["key_package"];
                (!v.is_null()).then(|| unb64(v))
            })
            .collect()
    }

    /// Builds a commit adding `add` (claimed) and removing `remove`; returns
    /// the request body for `POST …/commits`.
    async fn commit(&mut self, talks: TalksId, room: RoomId, add: &[u8], remove: &[u8]) -> Vec<u8> {
        let kps: Vec<Vec<u8>> = if add.is_empty() {
            vec![]
        } else {
            self.claim(talks, add)
                .await
                .into_iter()
                .map(|k| k.expect("a key package"))
                .collect()
        };
        let remove: Vec<PublicKey> = remove.iter().map(|l| key(*l).public_key()).collect();
        let out = self
            .mls
            .commit(room, &kps, &remove, &|_: &PublicKey| true)
            .expect("commit");
        let hs = Handshake::Commit {
            commit: &out.commit,
            group_info: &out.group_info,
        }
        .encode();
        let mut req = self.envelope(room, Kind::MlsHandshake, &hs, [0; 32]);
        if let Some(w) = &out.welcome {
            req.extend(self.envelope(room, Kind::Welcome, w, [0; 32]));
        }
        req
    }

    /// Encrypts `text` for `room` and returns the envelope.
    fn message(&mut self, room: RoomId, text: &[u8]) -> Vec<u8> {
        let c = [7u8; 32];
        let m = self.mls.encrypt(room, text, &c).expect("encrypts");
        self.envelope(room, Kind::MlsApp, &m, c)
    }

    /// Fetches everything and processes it in log order: handshakes,
    /// Welcomes, application messages (returned as plaintexts).
    async fn receive(&mut self, talks: TalksId, from: u64) -> Vec<Vec<u8>> {
        let a = self
            .client
            .get(&path(talks, &format!("/envelopes?from={from}")))
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        let mut out = Vec::new();
        for d in a.json["envelopes"].as_array().unwrap() {
            let header = SignedHeader::decode(&unb64(&d["header"])).unwrap();
            let h = *header.header();
            let Some(body) = (!d["body"].is_null()).then(|| unb64(&d["body"])) else {
                continue;
            };
            let msg = backchannel_statement::header::unpad_body(&body)
                .unwrap()
                .to_vec();
            match h.kind {
                Kind::MlsHandshake => {
                    if let Ok(Handshake::Commit { commit, .. }) = Handshake::parse(&msg)
                        && self.mls.epoch(h.room).is_some()
                    {
                        let removed = self.removed.clone();
                        let processed =
                            self.mls
                                .process_handshake(h.room, commit, &move |k: &PublicKey| {
                                    !removed.contains(k)
                                });
                        match processed {
                            Ok(_) => {}
                            // Processed in an earlier receive.
                            Err(backchannel_mls::MemberError::WrongEpoch { message, current })
                                if message < current => {}
                            Err(e) => panic!("processing a sequenced commit: {e}"),
                        }
                    }
                }
                Kind::Welcome if self.mls.epoch(h.room).is_none() => {
                    self.mls.join(&msg, &|_: &PublicKey| true).expect("joins");
                }
                Kind::MlsApp if h.sender != self.key.public_key().id() => {
                    if let Ok(p) = self.mls.decrypt(h.room, &msg, &h.commitment.0) {
                        out.push(p);
                    }
                }
                _ => {}
            }
        }
        out
    }
}

async fn setup() -> (TestNode<MemoryStore>, TalksId, fixtures::Talks) {
    let node = start(test_limits()).await;
    node.clock
        .0
        .store(now_s() * 1000, std::sync::atomic::Ordering::SeqCst);
    let talks = node.open_reference_talks().await;
    (node, talks, fixtures::talks())
}

/// The record room with all four devices in it at epoch 1.
async fn record_room(
    node: &TestNode<MemoryStore>,
    talks: TalksId,
    t: &fixtures::Talks,
) -> Vec<Device> {
    let mut ds: Vec<Device> = [
        OMAN_LEAD_DEVICE,
        US_HEAD_DEVICE,
        IRAN_HEAD_DEVICE,
        US_NEGOTIATOR_DEVICE,
    ]
    .into_iter()
    .map(|l| Device::new(node, talks, l))
    .collect();
    for d in &mut ds {
        d.upload(talks, 4).await;
    }
    let a = ds[0].create(talks, t.record).await;
    assert_eq!(a.status, 200, "{a:?}");
    let req = ds[0]
        .commit(
            talks,
            t.record,
            &[US_HEAD_DEVICE, IRAN_HEAD_DEVICE, US_NEGOTIATOR_DEVICE],
            &[],
        )
        .await;
    let a = ds[0].client.post_raw(&path(talks, "/commits"), req).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.json["welcome"]["seq"].is_u64(), "{a:?}");
    for d in &mut ds {
        d.receive(talks, 0).await;
        assert_eq!(d.mls.epoch(t.record), Some(1), "device {:#x}", d.label);
    }
    ds
}

#[tokio::test]
async fn a_room_runs_on_mls_and_the_node_stores_only_ciphertext() {
    let (node, talks, t) = setup().await;
    let mut ds = record_room(&node, talks, &t).await;
    let auth: Vec<_> = ds
        .iter()
        .map(|d| d.mls.epoch_authenticator(t.record))
        .collect();
    assert!(auth.iter().all(|a| a.is_some() && *a == auth[0]));

    let canary = b"canary-5f1d2c3b4a".to_vec();
    let env = ds[1].message(t.record, &canary);
    let a = ds[1].client.post_raw(&path(talks, "/envelopes"), env).await;
    assert_eq!(a.status, 200, "{a:?}");
    let size = node.node.store().log_size(talks).await.unwrap();
    for i in [0usize, 2, 3] {
        let got = ds[i].receive(talks, size - 1).await;
        assert_eq!(got, vec![canary.clone()], "device {i}");
    }
    // Nothing the node stored holds the plaintext.
    for row in node.node.store().read(talks, 0, 1000).await.unwrap() {
        let body = row.body.unwrap_or_default();
        assert!(
            !body.windows(canary.len()).any(|w| w == canary.as_slice()),
            "seq {} stores the plaintext",
            row.seq
        );
    }
}

#[tokio::test]
async fn a_welcome_body_goes_only_to_the_devices_it_adds() {
    let (node, talks, t) = setup().await;
    let mut oman = Device::new(&node, talks, OMAN_LEAD_DEVICE);
    let mut head = Device::new(&node, talks, US_HEAD_DEVICE);
    let mut negotiator = Device::new(&node, talks, US_NEGOTIATOR_DEVICE);
    head.upload(talks, 2).await;
    negotiator.upload(talks, 2).await;
    assert_eq!(oman.create(talks, t.us_caucus).await.status, 200);
    let req = oman
        .commit(talks, t.us_caucus, &[US_HEAD_DEVICE], &[])
        .await;
    let a = oman.client.post_raw(&path(talks, "/commits"), req).await;
    assert_eq!(a.status, 200, "{a:?}");
    let welcome_seq = a.json["welcome"]["seq"].as_u64().unwrap();
    let fetch = |c: &Client| {
        let c = c.clone();
        async move {
            c.get(&path(
                talks,
                &format!("/envelopes?from={welcome_seq}&limit=1"),
            ))
            .await
        }
    };
    let to_head = fetch(&head.client).await;
    let to_negotiator = fetch(&negotiator.client).await;
    assert!(
        !to_head.json["envelopes"][0]["body"].is_null(),
        "{to_head:?}"
    );
    assert!(
        to_negotiator.json["envelopes"][0]["body"].is_null(),
        "the Welcome's body reached a device it does not add: {to_negotiator:?}"
    );
    assert_eq!(
        to_head.json["envelopes"][0]["header"],
        to_negotiator.json["envelopes"][0]["header"]
    );
    head.receive(talks, 0).await;
    negotiator.receive(talks, 0).await;
    assert_eq!(head.mls.epoch(t.us_caucus), Some(1));
    assert_eq!(negotiator.mls.epoch(t.us_caucus), None);
}

#[tokio::test]
async fn commits_racing_for_one_epoch_one_wins_and_everyone_converges() {
    let (node, talks, t) = setup().await;
    let mut ds = record_room(&node, talks, &t).await;
    let mut reqs = Vec::new();
    for d in &mut ds {
        reqs.push(d.commit(talks, t.record, &[], &[]).await);
    }
    let route = path(talks, "/commits");
    let answers = futures_util::future::join_all(
        ds.iter()
            .zip(reqs)
            .map(|(d, r)| d.client.post_raw(&route, r)),
    )
    .await;
    let won: Vec<_> = answers.iter().filter(|a| a.status == 200).collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    let winner_seq = won[0].json["commit"]["seq"].as_u64().unwrap();
    for a in answers.iter().filter(|a| a.status != 200) {
        assert_eq!(a.status, 409, "{a:?}");
        assert_eq!(a.code(), "epoch_taken");
        assert!(
            a.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("seq {winner_seq}")),
            "{a:?}"
        );
    }
    for d in &mut ds {
        d.receive(talks, 0).await;
        assert_eq!(d.mls.epoch(t.record), Some(2), "device {:#x}", d.label);
        assert!(d.mls.pending(t.record).is_none());
    }
    let auth: Vec<_> = ds
        .iter()
        .map(|d| d.mls.epoch_authenticator(t.record))
        .collect();
    assert!(auth.iter().all(|a| *a == auth[0]), "members diverged");
    let state = node
        .node
        .store()
        .room_state(talks, t.record)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.epoch, 2);
}

#[tokio::test]
async fn epochs_stale_messages_and_retries() {
    let (node, talks, t) = setup().await;
    let mut ds = record_room(&node, talks, &t).await;
    // A message encrypted at epoch 1, sent after a commit moved the room on.
    let stale = ds[2].message(t.record, b"late");
    let req = ds[1].commit(talks, t.record, &[], &[]).await;
    let landed = ds[1]
        .client
        .post_raw(&path(talks, "/commits"), req.clone())
        .await;
    assert_eq!(landed.status, 200, "{landed:?}");
    let size = node.node.store().log_size(talks).await.unwrap();
    let a = ds[2]
        .client
        .post_raw(&path(talks, "/envelopes"), stale)
        .await;
    assert_eq!((a.status, a.code().as_str()), (409, "stale_epoch"), "{a:?}");
    // The retry of the commit that landed gets its seq, though the epoch
    // moved past it.
    let again = ds[1].client.post_raw(&path(talks, "/commits"), req).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json["commit"]["seq"], landed.json["commit"]["seq"]);
    assert_eq!(node.node.store().log_size(talks).await.unwrap(), size);
    // After catching up the sender encrypts again, and it lands.
    ds[2].receive(talks, 0).await;
    let fresh = ds[2].message(t.record, b"on time");
    let a = ds[2]
        .client
        .post_raw(&path(talks, "/envelopes"), fresh)
        .await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test]
async fn bad_mls_input_is_refused_and_changes_nothing() {
    let (node, talks, t) = setup().await;
    let mut ds = record_room(&node, talks, &t).await;
    let store = node.node.store().clone();
    let size = store.log_size(talks).await.unwrap();
    let state = store.room_state(talks, t.record).await.unwrap();

    // Garbage in a handshake, in an application message, a plaintext body
    // in a room that has a group, a Welcome alone, a second creation.
    let garbage = ds[1].envelope(t.record, Kind::MlsHandshake, b"\x02garbage", [0; 32]);
    let plain = ds[1].envelope(t.record, Kind::MlsApp, b"free text", [7; 32]);
    let w = ds[1].envelope(t.record, Kind::Welcome, b"\x00\x01", [0; 32]);
    for (what, env, route, code) in [
        ("garbage handshake", garbage, "/envelopes", "bad_mls"),
        ("plaintext application body", plain, "/envelopes", "bad_mls"),
        ("a Welcome alone", w, "/envelopes", "bad_mls"),
    ] {
        let a = ds[1].client.post_raw(&path(talks, route), env).await;
        assert_eq!(
            (a.status, a.code()),
            (400, code.to_owned()),
            "{what}: {a:?}"
        );
    }
    // An MLS application message to a room whose group the node never saw
    // created (made locally, never submitted).
    ds[0].mls.create_room(t.iran_caucus).unwrap();
    let orphan = ds[0].message(t.iran_caucus, b"nobody can read this room yet");
    let a = ds[0]
        .client
        .post_raw(&path(talks, "/envelopes"), orphan)
        .await;
    assert_eq!((a.status, a.code().as_str()), (409, "no_group"), "{a:?}");
    ds[0].mls.forget_room(t.iran_caucus);

    let mut other = Device::new(&node, talks, IRAN_HEAD_DEVICE);
    other.idem = 1000;
    let again = other.create(talks, t.record).await;
    assert_eq!(
        (again.status, again.code().as_str()),
        (409, "epoch_taken"),
        "{again:?}"
    );

    // A commit adding a device the access list does not seat in the room:
    // Iran's head into the US caucus.
    assert_eq!(ds[0].create(talks, t.us_caucus).await.status, 200);
    let req = ds[0]
        .commit(talks, t.us_caucus, &[IRAN_HEAD_DEVICE], &[])
        .await;
    let a = ds[0].client.post_raw(&path(talks, "/commits"), req).await;
    assert_eq!((a.status, a.code().as_str()), (400, "bad_mls"), "{a:?}");
    ds[0].mls.discard_pending(t.us_caucus);

    // A commit that adds members but comes without its Welcome.
    let req = ds[0]
        .commit(talks, t.us_caucus, &[US_HEAD_DEVICE], &[])
        .await;
    let commit_only = {
        let h = SignedHeader::decode(&req[..223]).unwrap();
        req[..223 + h.header().body_len as usize].to_vec()
    };
    let a = ds[0]
        .client
        .post_raw(&path(talks, "/commits"), commit_only)
        .await;
    assert_eq!((a.status, a.code().as_str()), (400, "bad_mls"), "{a:?}");

    assert_eq!(
        store.log_size(talks).await.unwrap(),
        size + 1,
        "only the caucus creation"
    );
    assert_eq!(store.room_state(talks, t.record).await.unwrap(), state);
}

#[tokio::test]
async fn key_packages_are_checked_claimed_once_and_kept_as_last_resort() {
    let (node, talks, _t) = setup().await;
    let mut head = Device::new(&node, talks, US_HEAD_DEVICE);
    let oman = Device::new(&node, talks, OMAN_LEAD_DEVICE);
    // Someone else's key package is refused.
    let mut other = Member::new(talks, key(IRAN_HEAD_DEVICE));
    let theirs = other
        .key_packages(1, false, not_before(), LIFETIME)
        .unwrap();
    let a = head
        .client
        .post(
            &path(talks, "/key-packages"),
            json!({ "key_packages": [b64(&theirs[0])] }),
        )
        .await;
    assert_eq!((a.status, a.code().as_str()), (400, "bad_mls"), "{a:?}");
    let a = head
        .client
        .post(
            &path(talks, "/key-packages"),
            json!({ "key_packages": [b64(b"junk")] }),
        )
        .await;
    assert_eq!((a.status, a.code().as_str()), (400, "bad_mls"), "{a:?}");

    head.upload(talks, 2).await; // two ordinary, one last resort
    let count = head.client.get(&path(talks, "/key-packages")).await;
    assert_eq!(count.json["count"], 2, "{count:?}");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let k = oman
            .claim(talks, &[US_HEAD_DEVICE])
            .await
            .remove(0)
            .expect("a package");
        seen.push(k);
    }
    assert_ne!(seen[0], seen[1], "an ordinary package was handed out twice");
    assert_eq!(seen[2], seen[3], "the last resort package is kept");
    let count = head.client.get(&path(talks, "/key-packages")).await;
    assert_eq!(count.json["count"], 0);

    // Someone not on the list gets what unknown talks get.
    let outsider = node.client(OUTSIDER);
    let a = outsider
        .post(
            &path(talks, "/key-packages/claim"),
            json!({ "devices": [key(US_HEAD_DEVICE).public_key().id().to_hex()] }),
        )
        .await;
    assert_eq!(a.status, 404, "{a:?}");
}

#[tokio::test]
async fn a_removed_member_reads_nothing_sent_after_its_removal() {
    let (node, talks, t) = setup().await;
    let mut ds = record_room(&node, talks, &t).await;
    // The negotiator's state as saved before its removal.
    let saved = ds[3].mls.to_bytes();
    // While the access list seats it, no member removes it from the group.
    let req = ds[0]
        .commit(talks, t.record, &[], &[US_NEGOTIATOR_DEVICE])
        .await;
    let a = ds[0].client.post_raw(&path(talks, "/commits"), req).await;
    assert_eq!((a.status, a.code().as_str()), (400, "bad_mls"), "{a:?}");
    ds[0].mls.discard_pending(t.record);
    // Off the list (written to the store as an applied change would be),
    // then out of the group.
    let store = node.node.store().clone();
    let negotiator = key(US_NEGOTIATOR_DEVICE).public_key().id();
    replace_list(&*store, talks, &[negotiator], Vec::new()).await;
    for d in ds.iter_mut() {
        d.removed.push(key(US_NEGOTIATOR_DEVICE).public_key());
    }
    let req = ds[0]
        .commit(talks, t.record, &[], &[US_NEGOTIATOR_DEVICE])
        .await;
    let a = ds[0].client.post_raw(&path(talks, "/commits"), req).await;
    assert_eq!(a.status, 200, "{a:?}");
    let removed_at = a.json["commit"]["seq"].as_u64().unwrap();
    for d in ds.iter_mut().take(3) {
        d.receive(talks, 0).await;
    }
    for (i, text) in [(1usize, b"after one".as_slice()), (2, b"after two")] {
        let env = ds[i].message(t.record, text);
        assert_eq!(
            ds[i]
                .client
                .post_raw(&path(talks, "/envelopes"), env)
                .await
                .status,
            200
        );
    }
    // Every later envelope of the room, straight from the store.
    let mut removed = Member::from_bytes(talks, key(US_NEGOTIATOR_DEVICE), &saved).unwrap();
    let mut tried = 0;
    for row in node
        .node
        .store()
        .read(talks, removed_at, 1000)
        .await
        .unwrap()
    {
        let h = SignedHeader::decode(&row.header).unwrap();
        let Some(body) = row.body else { continue };
        let msg = backchannel_statement::header::unpad_body(&body)
            .unwrap()
            .to_vec();
        match h.header().kind {
            Kind::MlsHandshake => {
                if let Ok(Handshake::Commit { commit, .. }) = Handshake::parse(&msg) {
                    let _ = removed.process_handshake(t.record, commit, &|_: &PublicKey| true);
                }
            }
            Kind::MlsApp => {
                tried += 1;
                assert!(
                    removed
                        .decrypt(t.record, &msg, &h.header().commitment.0)
                        .is_err(),
                    "the removed member decrypted seq {}",
                    row.seq
                );
            }
            _ => {}
        }
    }
    assert_eq!(tried, 2);
}
