//! A revoked device against a real node started in-process (TLS on
//! loopback), with the reference talks (Oman mediating between the United
//! States and Iran; the US negotiator is the member whose device is lost).
//!
//! - A revoked device cannot read anything sent after its removal: its
//!   saved client store (the MLS state and archive as persisted) is fed
//!   what the node's store holds after it — read straight from the store,
//!   past the node's access check, which refuses the device — through the
//!   session's own processing of sequenced envelopes
//!   ([`Session::receive_delivered`]); no application envelope sent after
//!   the removal opens (each is archived unreadable, with why), while one
//!   sent just before it, which the device had not received yet, does.
//! - Who may take a member's device off the access list: the change rule
//!   applies a removal signed by another device of the same principal,
//!   but an identity key is never on the list, so its signature is an
//!   unknown signer; and the node takes a change only from a connection
//!   whose entry may propose changes, which a negotiator's device may not.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{Sess, client, now_ms};

use std::collections::BTreeSet;
use std::sync::Arc;

use backchannel_client::net::Delivered;
use backchannel_client::rooms::sync_all;
use backchannel_client::seal::Content;
use backchannel_client::store::{ClientStore, MemoryClientStore, Namespace};
use backchannel_codec::{Decode as _, RoomId, TalksId};
use backchannel_crypto::Signer;
use backchannel_statement::access_list::FLAG_DEVICE;
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::{
    AccessEntry, AccessList, AccessListChange, AccessListDelta, Kind, Payload, Revoke,
    RevokeReason, Salt, SignedHeader, SignedStatement,
};
use backchannel_store::Store as _;
use backchannel_store::memory::MemoryStore;
use backchannel_test_support::Served;
use backchannel_tlog::Receipt;

/// A second device of the US negotiator.
const OTHER_DEVICE: u8 = 0x45;

fn talks() -> TalksId {
    fixtures::talks().talks
}

/// The roster's access list, as every client accepted it.
fn list() -> AccessList {
    let t = fixtures::talks();
    t.roster.implied_access_list(t.talks).unwrap()
}

/// A node over `store` with the talks opened on the roster's list.
async fn start(store: Arc<MemoryStore>) -> Served {
    common::start_with(store, &list()).await
}

async fn session(served: &Served, device: u8, store: &Arc<MemoryClientStore>) -> Sess {
    common::session(served, device, talks(), Arc::clone(store)).await
}

/// Talk from `s` in `room`; its seq.
async fn say(s: &mut Sess, list: &AccessList, room: RoomId, text: &str) -> u64 {
    s.send(list, room, Content::Talk(text.into()), Salt([7; 32]))
        .await
        .unwrap()
}

/// `statement` posted to the record room by `s`; its seq.
async fn post(s: &mut Sess, list: &AccessList, statement: &SignedStatement) -> u64 {
    s.send(
        list,
        fixtures::talks().record,
        Content::Statement(statement.as_bytes().to_vec()),
        Salt([8; 32]),
    )
    .await
    .unwrap()
}

/// Every envelope the node's store holds from `from` on in `rooms`, as
/// the node would deliver it: straight from the store, past the node's
/// access check.
async fn stored(store: &MemoryStore, rooms: &BTreeSet<RoomId>, from: u64) -> Vec<Delivered> {
    store
        .read(talks(), from, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| rooms.contains(&r.room))
        .map(|r| Delivered {
            seq: r.seq,
            node_time: r.node_time,
            header: SignedHeader::decode(&r.header).unwrap(),
            body: r.body,
            receipt: Receipt::from_canonical_bytes(&r.receipt).unwrap(),
        })
        .collect()
}

/// Removes `device` from the node's list: `signers` sign the removal,
/// `submitter`'s connection submits it.
async fn submit_removal(
    served: &Served,
    device: u8,
    signers: &[u8],
    submitter: u8,
) -> Result<AccessList, backchannel_client::net::NetError> {
    let c = client(served, submitter);
    let current = c.access_list(talks()).await?;
    let delta = AccessListDelta::new(
        talks(),
        current.hash,
        vec![key(device).public_key().id()],
        vec![],
    )
    .unwrap();
    let mut signatures: Vec<_> = signers
        .iter()
        .map(|s| delta.sign(&key(*s)).unwrap())
        .collect();
    signatures.sort_by_key(|(k, _)| *k);
    let change = AccessListChange::new(delta, signatures).unwrap();
    let outcome = c.submit_change(talks(), &change).await?;
    assert!(outcome.applied, "{outcome:?}");
    Ok(outcome.access_list.list)
}

/// A revocation of the US negotiator's device for loss, signed by `signer`
/// for the United States.
fn revoke_negotiator_device(signer: u8, lost_at: u64) -> SignedStatement {
    let t = fixtures::talks();
    t.statement(
        3,
        &key(signer),
        t.us,
        Payload::Revoke(Revoke {
            key: key(US_NEGOTIATOR_DEVICE).public_key().id(),
            reason: RevokeReason::Lost,
            lost_at: Some(lost_at),
        }),
    )
}

#[tokio::test]
async fn a_revoked_device_cannot_read_anything_sent_after_its_removal_from_its_saved_state() {
    let store = Arc::new(MemoryStore::new());
    let served = start(Arc::clone(&store)).await;
    let t = fixtures::talks();
    let rooms: BTreeSet<RoomId> = [t.record, t.us_caucus].into();
    let (so, su, sn, si) = (
        Arc::default(),
        Arc::default(),
        Arc::<MemoryClientStore>::default(),
        Arc::default(),
    );
    let mut oman = session(&served, OMAN_LEAD_DEVICE, &so).await;
    let mut us = session(&served, US_HEAD_DEVICE, &su).await;
    let mut iran = session(&served, IRAN_HEAD_DEVICE, &si).await;
    let just_before = {
        let mut negotiator = session(&served, US_NEGOTIATOR_DEVICE, &sn).await;
        sync_all(
            &mut [&mut oman, &mut us, &mut negotiator, &mut iran],
            &list(),
            now_ms() / 1000,
        )
        .await
        .unwrap();
        let roster = t.statement(
            1,
            &key(OMAN_TALKS),
            t.oman,
            Payload::Roster(t.roster.clone()),
        );
        post(&mut oman, &list(), &roster).await;
        say(&mut us, &list(), t.us_caucus, "before the removal").await;
        negotiator.receive(&list()).await.unwrap();
        let read: Vec<_> = negotiator
            .archive()
            .await
            .unwrap()
            .into_iter()
            .filter_map(|a| a.message.map(|m| m.content))
            .collect();
        assert!(
            read.contains(&Content::Talk("before the removal".into())),
            "{read:?}"
        );
        // One more before the removal, which the device does not receive:
        // its saved state must still open it (the control).
        say(&mut oman, &list(), t.us_caucus, "just before the removal").await
        // The device goes offline here; its store is what it saved.
    };
    let cursor = session(&served, US_NEGOTIATOR_DEVICE, &sn).await.next_seq();
    let saved_mls = sn
        .get(Namespace::Mls, &talks_key("mls"))
        .await
        .unwrap()
        .expect("a saved MLS state");

    // The US revokes the lost device in the record, takes it off the list,
    // and its device commits the removal in both rooms.
    let revocation = post(
        &mut us,
        &list(),
        &revoke_negotiator_device(US_TALKS, now_ms()),
    )
    .await;
    let current = submit_removal(&served, US_NEGOTIATOR_DEVICE, &[US_TALKS], US_HEAD_DEVICE)
        .await
        .unwrap();
    let report = us.sync_rooms(&current, now_ms() / 1000).await.unwrap();
    let removed: BTreeSet<RoomId> = report.removed.iter().map(|(r, _)| *r).collect();
    assert_eq!(removed, rooms, "{report:?}");
    // Talk in the epoch the removal made, before anything else moves the
    // rooms on.
    let mut after = Vec::new();
    for (room, text) in [
        (t.us_caucus, "the US, right after the removal"),
        (t.record, "the US, on the record, right after the removal"),
    ] {
        after.push((say(&mut us, &current, room, text).await, text));
    }
    // The others meet the removal, update their own leaves, and talk on.
    for s in [&mut oman, &mut iran] {
        s.receive(&current).await.unwrap();
        s.sync_rooms(&current, now_ms() / 1000).await.unwrap();
    }
    for (who, room, text) in [
        (
            US_HEAD_DEVICE,
            t.us_caucus,
            "the US, once the device is out",
        ),
        (OMAN_LEAD_DEVICE, t.us_caucus, "Oman, to the US caucus"),
        (OMAN_LEAD_DEVICE, t.record, "Oman, on the record"),
        (IRAN_HEAD_DEVICE, t.record, "Iran, on the record"),
    ] {
        let s = match who {
            US_HEAD_DEVICE => &mut us,
            OMAN_LEAD_DEVICE => &mut oman,
            _ => &mut iran,
        };
        after.push((say(s, &current, room, text).await, text));
    }
    for s in [&mut oman, &mut us, &mut iran] {
        s.receive(&current).await.unwrap();
    }
    // The control: the remaining members read each of them.
    for (seq, text) in &after {
        let a = oman.archived(*seq).await.unwrap().unwrap();
        assert_eq!(
            a.message.map(|m| m.content),
            Some(Content::Talk((*text).into())),
            "seq {seq}"
        );
    }

    // The node refuses the revoked device, and nothing of the removal
    // reached its store that way.
    let mut negotiator = session(&served, US_NEGOTIATOR_DEVICE, &sn).await;
    let refused = negotiator.receive(&list()).await.unwrap_err();
    assert!(refused.to_string().contains("404"), "{refused}");
    assert_eq!(
        sn.get(Namespace::Mls, &talks_key("mls"))
            .await
            .unwrap()
            .as_deref(),
        Some(&saved_mls[..])
    );

    // Its saved state, fed what the node's store holds from its cursor on
    // in its former rooms, through the session's own processing (with the
    // list it last accepted).
    let feed = stored(&store, &rooms, cursor).await;
    assert!(feed.iter().any(|d| d.seq == revocation));
    let archived = negotiator.receive_delivered(&list(), feed).await.unwrap();
    let by_seq = |seq: u64| archived.iter().find(|a| a.seq == seq).unwrap();
    // What was sent just before the removal opens.
    assert_eq!(
        by_seq(just_before).message.as_ref().map(|m| &m.content),
        Some(&Content::Talk("just before the removal".into())),
        "{:?}",
        by_seq(just_before).unreadable
    );
    // Nothing sent after it does: every application envelope from the
    // removal on is archived unreadable, with a reason.
    let removal = archived
        .iter()
        .find(|a| {
            let h = a.header.header();
            h.kind == Kind::MlsHandshake && h.sender == key(US_HEAD_DEVICE).public_key().id()
        })
        .expect("the removal commit")
        .seq;
    let mut tried = 0;
    for a in archived.iter().filter(|a| a.seq > removal) {
        if a.header.header().kind != Kind::MlsApp {
            continue;
        }
        tried += 1;
        assert_eq!(a.message, None, "seq {} opened", a.seq);
        assert!(
            a.unreadable.as_deref().is_some_and(|why| !why.is_empty()),
            "seq {}: {:?}",
            a.seq,
            a.unreadable
        );
    }
    assert!(tried >= after.len(), "{tried}");
    // The archive the session stored says the same.
    for (seq, _) in &after {
        let a = negotiator.archived(*seq).await.unwrap().unwrap();
        assert_eq!(a.message, None, "seq {seq}");
        assert!(a.unreadable.is_some(), "seq {seq}");
    }
    served.stop().await;
}

/// Who may take a member's device off the access list, as the node
/// applies the change rule: another device of the same principal may sign
/// it; the member's identity key may not (it is never on the list); and
/// the node takes that complete change from the other device's own
/// connection, though it may not propose changes.
#[tokio::test]
async fn a_members_other_device_signs_and_hands_in_the_removal() {
    let store = Arc::new(MemoryStore::new());
    let served = start(Arc::clone(&store)).await;
    // The negotiator's second device, seated where its first one is
    // (signed by the US talks authority and the mediator's).
    let first = list()
        .get(&key(US_NEGOTIATOR_DEVICE).public_key().id())
        .unwrap()
        .clone();
    let c = client(&served, US_HEAD_DEVICE);
    let current = c.access_list(talks()).await.unwrap();
    let delta = AccessListDelta::new(
        talks(),
        current.hash,
        vec![],
        vec![
            AccessEntry::new(
                key(OTHER_DEVICE).public_key(),
                first.principal,
                first.party,
                first.rooms().to_vec(),
                FLAG_DEVICE,
            )
            .unwrap(),
        ],
    )
    .unwrap();
    let mut signatures = vec![
        delta.sign(&key(US_TALKS)).unwrap(),
        delta.sign(&key(OMAN_TALKS)).unwrap(),
    ];
    signatures.sort_by_key(|(k, _)| *k);
    let outcome = c
        .submit_change(talks(), &AccessListChange::new(delta, signatures).unwrap())
        .await
        .unwrap();
    assert!(outcome.applied, "{outcome:?}");

    // The identity key's signature: not on the list, an unknown signer.
    let e = submit_removal(
        &served,
        US_NEGOTIATOR_DEVICE,
        &[US_NEGOTIATOR],
        US_HEAD_DEVICE,
    )
    .await
    .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(
        e.to_string().contains("is not on the current access list"),
        "{e}"
    );
    // The other device's signature, submitted by that device: the change
    // is complete, so the node applies it whoever hands it in (only a
    // change left waiting for signatures needs a proposer's connection).
    let now = submit_removal(&served, US_NEGOTIATOR_DEVICE, &[OTHER_DEVICE], OTHER_DEVICE)
        .await
        .unwrap();
    assert!(
        now.get(&key(US_NEGOTIATOR_DEVICE).public_key().id())
            .is_none()
    );
    assert!(now.get(&key(OTHER_DEVICE).public_key().id()).is_some());
    served.stop().await;
}

/// The store key of one of the session's records of the talks.
fn talks_key(name: &str) -> Vec<u8> {
    let mut k = talks().0.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}
