//! Invitations and enrolment, access-list changes gathering signatures,
//! and blobs, through the API.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;

use backchannel_codec::{Decode, Encode, PartyId, TalksId};
use backchannel_crypto::{PublicKey, Signer, sha256};
use backchannel_node::limits::Limits;
use backchannel_statement::access_list::{FLAG_DESIGNATED_SIGNER, FLAG_DEVICE};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::{
    AccessEntry, AccessList, AccessListChange, AccessListDelta, InvitationFields, InvitationToken,
};
use backchannel_store::Store;
use common::*;
use serde_json::json;

const NEW_PARTY: PartyId = PartyId([0xee; 16]);
const NEW_AUTHORITY: u8 = 0x67;

fn invitation(talks: TalksId, token: &InvitationToken, expires_at: u64, signer: u8) -> Vec<u8> {
    InvitationFields {
        talks,
        party: NEW_PARTY,
        token_hash: token.hash(),
        expires_at,
    }
    .sign(&key(signer))
    .unwrap()
    .to_canonical_bytes()
}

async fn current_list<S: Store>(node: &TestNode<S>, talks: TalksId) -> AccessList {
    let r = node.node.store().access_list(talks).await.unwrap().unwrap();
    AccessList::from_canonical_bytes(&r.bytes).unwrap()
}

#[tokio::test]
async fn an_invitee_enrols_once_with_its_token() {
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let token = InvitationToken([42; 32]);
    let inv = invitation(talks, &token, T0 + 60_000, OMAN_TALKS);
    let mediator = node.client(OMAN_LEAD_DEVICE);

    // Only the mediator team invites; the signature must be its designated signer's.
    let a = node
        .client(US_HEAD_DEVICE)
        .post(
            &path(talks, "/invitations"),
            json!({"invitation": b64(&inv)}),
        )
        .await;
    assert_eq!((a.status, a.code().as_str()), (403, "forbidden"));
    let by_device = invitation(talks, &token, T0 + 60_000, OMAN_LEAD_DEVICE);
    let a = mediator
        .post(
            &path(talks, "/invitations"),
            json!({"invitation": b64(&by_device)}),
        )
        .await;
    assert_eq!((a.status, a.code().as_str()), (400, "malformed"));
    let expired = invitation(talks, &token, T0 - 1, OMAN_TALKS);
    let a = mediator
        .post(
            &path(talks, "/invitations"),
            json!({"invitation": b64(&expired)}),
        )
        .await;
    assert_eq!((a.status, a.code().as_str()), (400, "malformed"));
    assert!(
        node.node
            .store()
            .invitations(talks)
            .await
            .unwrap()
            .is_empty()
    );

    let a = mediator
        .post(
            &path(talks, "/invitations"),
            json!({"invitation": b64(&inv)}),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let a = mediator
        .post(
            &path(talks, "/invitations"),
            json!({"invitation": b64(&inv)}),
        )
        .await;
    assert_eq!((a.status, a.code().as_str()), (409, "exists"));

    // A wrong token looks like unknown talks.
    let invitee = node.client(NEW_AUTHORITY);
    let wrong = invitee
        .post(&path(talks, "/enrol"), json!({"token": b64(&[1; 32])}))
        .await;
    let unknown = invitee
        .post(
            &path(TalksId([0x99; 16]), "/enrol"),
            json!({"token": b64(&[1; 32])}),
        )
        .await;
    assert_eq!(wrong.status, 404);
    assert_eq!(wrong.bytes, unknown.bytes);

    // The token enrols the key as the new party's talks authority.
    let before = current_list(&node, talks).await;
    let a = invitee
        .post(
            &path(talks, "/enrol"),
            json!({"token": b64(&token.0), "payload": b64(b"sealed for the mediator")}),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let after = current_list(&node, talks).await;
    assert_eq!(after.generation(), before.generation() + 1);
    let e = after.get(&key(NEW_AUTHORITY).public_key().id()).unwrap();
    assert_eq!((e.party, e.flags), (NEW_PARTY, FLAG_DESIGNATED_SIGNER));
    assert_eq!(a.json["hash"], hex::encode(after.hash().0));
    // A retry by the same key gets the same answer; another key is refused.
    let again = invitee
        .post(&path(talks, "/enrol"), json!({"token": b64(&token.0)}))
        .await;
    assert_eq!(again.status, 200);
    let other = node
        .client(0x68)
        .post(&path(talks, "/enrol"), json!({"token": b64(&token.0)}))
        .await;
    assert_eq!((other.status, other.code().as_str()), (409, "exists"));
    assert_eq!(current_list(&node, talks).await, after);
    // Once the enrolled key leaves the list, its token no longer shows it
    // the list: it is an outsider like any other.
    {
        let k = key(NEW_AUTHORITY).public_key();
        let delta = AccessListDelta::new(talks, after.hash(), vec![k.id()], vec![]).unwrap();
        let change = AccessListChange::new(
            delta.clone(),
            vec![delta.sign(&key(NEW_AUTHORITY)).unwrap()],
        )
        .unwrap();
        let a = invitee
            .post(
                &path(talks, "/access-list/changes"),
                json!({"change": b64(&change.to_canonical_bytes())}),
            )
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        let retry = invitee
            .post(&path(talks, "/enrol"), json!({"token": b64(&token.0)}))
            .await;
        assert_eq!(retry.status, 404);
        assert_eq!(retry.bytes, unknown.bytes);
    }
    // The mediator reads the redemption and its payload.
    let l = mediator.get(&path(talks, "/invitations")).await;
    let i = &l.json["invitations"][0];
    assert_eq!(
        i["redeemed_by"],
        hex::encode(key(NEW_AUTHORITY).public_key().id().0.0)
    );
    assert_eq!(unb64(&i["payload"]), b"sealed for the mediator");
}

#[tokio::test]
async fn an_expired_invitation_is_refused() {
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let token = InvitationToken([43; 32]);
    let inv = invitation(talks, &token, T0 + 1000, OMAN_TALKS);
    let a = node
        .client(OMAN_LEAD_DEVICE)
        .post(
            &path(talks, "/invitations"),
            json!({"invitation": b64(&inv)}),
        )
        .await;
    assert_eq!(a.status, 201);
    node.clock.0.fetch_add(1001, Ordering::SeqCst);
    let before = current_list(&node, talks).await;
    let a = node
        .client(NEW_AUTHORITY)
        .post(&path(talks, "/enrol"), json!({"token": b64(&token.0)}))
        .await;
    assert_eq!((a.status, a.code().as_str()), (410, "expired"));
    assert_eq!(current_list(&node, talks).await, before);
}

/// A second device for the US negotiator, in the record room, added to
/// `list`: it touches the US party, so the change needs the mediator's and
/// the US designated signers.
fn second_negotiator_device(talks: TalksId, list: &AccessList) -> (PublicKey, AccessListDelta) {
    let t = fixtures::talks();
    let new_device = key(0x69).public_key();
    let entry = AccessEntry::new(
        new_device,
        fixtures::PRINCIPALS[3],
        t.us,
        vec![t.record],
        FLAG_DEVICE,
    )
    .unwrap();
    let delta = AccessListDelta::new(talks, list.hash(), vec![], vec![entry]).unwrap();
    (new_device, delta)
}

#[tokio::test]
async fn a_change_waits_for_every_required_signature() {
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let list = reference_list();
    let (new_device, delta) = second_negotiator_device(talks, &list);
    let submit = |label: u8, signer: u8| {
        let change =
            AccessListChange::new(delta.clone(), vec![delta.sign(&key(signer)).unwrap()]).unwrap();
        let c = node.client(label);
        async move {
            c.post(
                &path(talks, "/access-list/changes"),
                json!({"change": b64(&change.to_canonical_bytes())}),
            )
            .await
        }
    };
    // A device without the right to propose: 403.
    let a = submit(US_NEGOTIATOR_DEVICE, OMAN_TALKS).await;
    assert_eq!((a.status, a.code().as_str()), (403, "forbidden"));
    assert!(
        node.node
            .store()
            .pending_changes(talks)
            .await
            .unwrap()
            .is_empty()
    );
    // A signature by a key not on the list: 400, nothing pending.
    let a = submit(OMAN_LEAD_DEVICE, 0x70).await;
    assert_eq!((a.status, a.code().as_str()), (400, "malformed"));
    // An incomplete change with no signature of the submitter's own party
    // (here only the US's) is not kept pending: 403, nothing pending.
    let a = submit(OMAN_LEAD_DEVICE, US_TALKS).await;
    assert_eq!((a.status, a.code().as_str()), (403, "forbidden"));
    assert!(
        node.node
            .store()
            .pending_changes(talks)
            .await
            .unwrap()
            .is_empty()
    );
    // The mediator's signature alone: pending.
    let a = submit(OMAN_LEAD_DEVICE, OMAN_TALKS).await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.json["applied"], false);
    assert_eq!(current_list(&node, talks).await, list);
    let p = node
        .client(US_HEAD_DEVICE)
        .get(&path(talks, "/access-list/changes"))
        .await;
    assert_eq!(p.json["pending"].as_array().unwrap().len(), 1);
    // The US designated signer adds its signature: applied.
    let a = submit(US_TALKS, US_TALKS).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json["applied"], true);
    let now = current_list(&node, talks).await;
    assert!(now.get(&new_device.id()).is_some());
    assert!(
        node.node
            .store()
            .pending_changes(talks)
            .await
            .unwrap()
            .is_empty()
    );
    // The same change again is stale.
    let a = submit(US_TALKS, US_TALKS).await;
    assert_eq!((a.status, a.code().as_str()), (409, "stale"));
}

#[tokio::test]
async fn any_member_hands_in_a_change_its_signatures_complete() {
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let list = reference_list();
    let (new_device, delta) = second_negotiator_device(talks, &list);
    let signed = |signers: &[u8]| {
        let mut sigs: Vec<_> = signers
            .iter()
            .map(|s| delta.sign(&key(*s)).unwrap())
            .collect();
        sigs.sort_by_key(|(k, _)| *k);
        AccessListChange::new(delta.clone(), sigs).unwrap()
    };
    let submit = |change: AccessListChange| {
        let c = node.client(US_NEGOTIATOR_DEVICE);
        async move {
            c.post(
                &path(talks, "/access-list/changes"),
                json!({"change": b64(&change.to_canonical_bytes())}),
            )
            .await
        }
    };
    // From a device that may not propose: incomplete, refused and not kept.
    let a = submit(signed(&[US_TALKS])).await;
    assert_eq!((a.status, a.code().as_str()), (403, "forbidden"));
    assert!(
        node.node
            .store()
            .pending_changes(talks)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(current_list(&node, talks).await, list);
    // Complete: applied, whoever hands it in.
    let a = submit(signed(&[OMAN_TALKS, US_TALKS])).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        current_list(&node, talks)
            .await
            .get(&new_device.id())
            .is_some()
    );
}

#[tokio::test]
async fn blobs_upload_in_chunks_and_are_served_to_their_rooms_only() {
    let node = start(Limits {
        max_blob: 3 << 20,
        party_blob_quota: 4 << 20,
        ..test_limits()
    })
    .await;
    let talks = node.open_reference_talks().await;
    let t = fixtures::talks();
    let content: Vec<u8> = (0..(2 << 20) + 100).map(|i| (i % 251) as u8).collect();
    let hash = hex::encode(sha256(&content).0);
    let us = node.client(US_HEAD_DEVICE);
    let create = |size: u64, room: backchannel_codec::RoomId, hash: String| {
        let us = us.clone();
        async move {
            us.post(
                &path(talks, "/blobs"),
                json!({"hash": hash, "size": size, "room": room.to_hex()}),
            )
            .await
        }
    };
    // Limits: larger than max_blob → 413; a room the key is not in → 403.
    let a = create(4 << 20, t.us_caucus, hash.clone()).await;
    assert_eq!((a.status, a.code().as_str()), (413, "too_large"));
    let a = create(content.len() as u64, t.iran_caucus, hash.clone()).await;
    assert_eq!((a.status, a.code().as_str()), (403, "forbidden"));
    let a = create(content.len() as u64, t.us_caucus, hash.clone()).await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.json["chunks"], 3);
    // Quota: another 3 MiB blob would pass the party's 4 MiB.
    let a = create(3 << 20, t.us_caucus, "11".repeat(32)).await;
    assert_eq!((a.status, a.code().as_str()), (413, "quota_exceeded"));
    // Chunks: wrong length refused; then all three.
    let chunk = |i: u64, b: Vec<u8>| {
        let us = us.clone();
        let hash = hash.clone();
        async move {
            us.send(
                "PUT",
                &path(talks, &format!("/blobs/{hash}/chunks/{i}")),
                Some(Body::Raw(b)),
            )
            .await
        }
    };
    let a = chunk(0, vec![0; 10]).await;
    assert_eq!((a.status, a.code().as_str()), (400, "malformed"));
    // Completing early: a chunk is missing.
    let a = us
        .post(&path(talks, &format!("/blobs/{hash}/complete")), json!({}))
        .await;
    assert_eq!(a.status, 400);
    for (i, c) in content.chunks(1 << 20).enumerate() {
        assert_eq!(chunk(i as u64, c.to_vec()).await.status, 204);
    }
    let a = us
        .post(&path(talks, &format!("/blobs/{hash}/complete")), json!({}))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json["complete"], true);
    // The US negotiator (in the caucus) reads it; Iran gets 404.
    let neg = node.client(US_NEGOTIATOR_DEVICE);
    let mut got = Vec::new();
    for i in 0..3 {
        let a = neg
            .get(&path(talks, &format!("/blobs/{hash}/chunks/{i}")))
            .await;
        assert_eq!(a.status, 200);
        got.extend_from_slice(&a.bytes);
    }
    assert_eq!(got, content);
    let a = node
        .client(IRAN_HEAD_DEVICE)
        .get(&path(talks, &format!("/blobs/{hash}")))
        .await;
    assert_eq!((a.status, a.code().as_str()), (404, "not_found"));
    // Knowing the hash does not let another party link it into its room.
    let a = node
        .client(IRAN_HEAD_DEVICE)
        .post(
            &path(talks, "/blobs"),
            json!({"hash": hash, "size": content.len(), "room": t.iran_caucus.to_hex()}),
        )
        .await;
    assert_eq!((a.status, a.code().as_str()), (404, "not_found"));
    let stored = node
        .node
        .store()
        .blob(talks, sha256(&content))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.rooms, vec![t.us_caucus]);
}

#[tokio::test]
async fn a_blob_whose_chunks_do_not_hash_to_its_address_is_not_completed() {
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let t = fixtures::talks();
    let us = node.client(US_HEAD_DEVICE);
    let hash = hex::encode(sha256(b"the real content").0);
    let a = us
        .post(
            &path(talks, "/blobs"),
            json!({"hash": hash, "size": 16, "room": t.record.to_hex()}),
        )
        .await;
    assert_eq!(a.status, 201);
    let a = us
        .send(
            "PUT",
            &path(talks, &format!("/blobs/{hash}/chunks/0")),
            Some(Body::Raw(b"not the content!".to_vec())),
        )
        .await;
    assert_eq!(a.status, 204);
    // A stored chunk never changes: the same bytes again are fine, others 409.
    let put = |bytes: &'static [u8]| {
        let us = us.clone();
        let p = path(talks, &format!("/blobs/{hash}/chunks/0"));
        async move { us.send("PUT", &p, Some(Body::Raw(bytes.to_vec()))).await }
    };
    assert_eq!(put(b"not the content!").await.status, 204);
    let other = put(b"the real content").await;
    assert_eq!((other.status, other.code().as_str()), (409, "exists"));
    let a = us
        .post(&path(talks, &format!("/blobs/{hash}/complete")), json!({}))
        .await;
    assert_eq!((a.status, a.code().as_str()), (400, "malformed"));
    let a = us
        .get(&path(talks, &format!("/blobs/{hash}/chunks/0")))
        .await;
    assert_eq!(a.status, 404, "an incomplete blob is not served");
}
