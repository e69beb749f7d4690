//! Handover against a real node: the US head hands the history of its rooms
//! to the negotiator's device, seated only after that history was sent.
//! The negotiator verifies the bundle against the headers it verified
//! itself and reads everything; bundles altered by one byte, reordered,
//! missing one statement, naming another room, sealed to another device or
//! for another member are refused; history outside the handover keeps its
//! reason.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{Sess, now_ms};

use std::collections::BTreeSet;
use std::sync::Arc;

use backchannel_client::handover::{
    self, Bundle, HandoverError, Item, NotHeld, Outcome, Scope, Share,
};
use backchannel_client::net::NodeClient;
use backchannel_client::rooms::{BEFORE_JOIN, sync_all};
use backchannel_client::seal::{AppMessage, Content};
use backchannel_client::session::Archived;
use backchannel_codec::{PrincipalId, RoomId};
use backchannel_crypto::Signer;
use backchannel_statement::fixtures::{self, PRINCIPALS, US_INTERNAL, key, labels::*};
use backchannel_statement::{
    AccessList, AccessListChange, AccessListDelta, HistoryShared, Payload, Salt,
};
use backchannel_store::memory::MemoryStore;
use backchannel_test_support::Served;

const NEGOTIATOR: PrincipalId = PRINCIPALS[3];
const HEAD: PrincipalId = PRINCIPALS[1];

fn t() -> fixtures::Talks {
    fixtures::talks_with_internal_rooms()
}

/// Every device of the reference talks but the negotiator's.
fn without_negotiator() -> AccessList {
    let t = t();
    let full = t.roster.implied_access_list(t.talks).unwrap();
    let gone = key(US_NEGOTIATOR_DEVICE).public_key().id();
    AccessList::new(
        t.talks,
        0,
        full.entries()
            .iter()
            .filter(|e| e.key_id() != gone)
            .cloned()
            .collect(),
    )
    .unwrap()
}

async fn start() -> Served {
    common::start_with(Arc::new(MemoryStore::new()), &without_negotiator()).await
}

async fn session(served: &Served, device: u8) -> Sess {
    common::session(served, device, t().talks, Arc::default()).await
}

/// Seats the negotiator's device where the roster puts it (signed by the
/// US talks authority); returns the list the node serves now.
async fn seat_negotiator(served: &Served) -> AccessList {
    let t = t();
    let full = t.roster.implied_access_list(t.talks).unwrap();
    let entry = full
        .get(&key(US_NEGOTIATOR_DEVICE).public_key().id())
        .unwrap()
        .clone();
    let c = NodeClient::new(served.addr, served.fingerprint, &key(US_HEAD_DEVICE)).unwrap();
    let current = c.access_list(t.talks).await.unwrap();
    let delta = AccessListDelta::new(t.talks, current.hash, vec![], vec![entry]).unwrap();
    // A change that adds keys needs the mediator's designated signer and,
    // under the reference ground rules, every party's.
    let change = AccessListChange::new(
        delta.clone(),
        vec![
            delta.sign(&key(US_TALKS)).unwrap(),
            delta.sign(&key(OMAN_TALKS)).unwrap(),
            delta.sign(&key(IRAN_TALKS)).unwrap(),
        ],
    )
    .unwrap();
    let outcome = c.submit_change(t.talks, &change).await.unwrap();
    assert!(outcome.applied, "{:?}", outcome.missing);
    c.access_list(t.talks).await.unwrap().list
}

async fn say(s: &mut Sess, list: &AccessList, room: RoomId, text: &str) -> u64 {
    s.send(list, room, Content::Talk(text.into()), Salt([7; 32]))
        .await
        .unwrap()
}

fn talk_of(a: &Archived) -> Option<String> {
    match a.message.as_ref().map(|m| &m.content) {
        Some(Content::Talk(t)) => Some(t.clone()),
        _ => None,
    }
}

/// The world of every test: the head talks in the US internal room and
/// posts the roster to the record room before the negotiator is seated;
/// then the negotiator is seated, joins and receives. Returns (head,
/// negotiator, list, the seq of the last talk before the negotiator
/// joined).
async fn before_the_handover(served: &Served) -> (Sess, Sess, AccessList, Vec<u64>) {
    let t = t();
    let list = without_negotiator();
    let mut oman = session(served, OMAN_LEAD_DEVICE).await;
    let mut head = session(served, US_HEAD_DEVICE).await;
    let mut iran = session(served, IRAN_HEAD_DEVICE).await;
    sync_all(
        &mut [&mut oman, &mut head, &mut iran],
        &list,
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
    oman.send(
        &list,
        t.record,
        Content::Statement(roster.as_bytes().to_vec()),
        Salt([1; 32]),
    )
    .await
    .unwrap();
    let mut said = Vec::new();
    for text in ["our line on detainees", "hold the funds question", "third"] {
        said.push(say(&mut head, &list, US_INTERNAL, text).await);
    }
    said.push(say(&mut head, &list, t.record, "for the record").await);
    let list = seat_negotiator(served).await;
    let mut negotiator = session(served, US_NEGOTIATOR_DEVICE).await;
    sync_all(
        &mut [&mut oman, &mut head, &mut iran, &mut negotiator],
        &list,
        now_ms() / 1000,
    )
    .await
    .unwrap();
    head.receive(&list).await.unwrap();
    negotiator.receive(&list).await.unwrap();
    integrate(served, &mut head).await;
    integrate(served, &mut negotiator).await;
    (head, negotiator, list, said)
}

/// Waits until the node's checkpoint covers the log, and verifies it.
async fn integrate(served: &Served, s: &mut Sess) {
    let c = NodeClient::new(served.addr, served.fingerprint, &key(OMAN_LEAD_DEVICE)).unwrap();
    for _ in 0..500 {
        let size = c.fetch(t().talks, 0, 1).await.unwrap().log_size;
        let (cp, _) = c.checkpoint(t().talks).await.unwrap();
        if cp == size {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let rooms: BTreeSet<RoomId> = c
        .access_list(t().talks)
        .await
        .unwrap()
        .list
        .get(&s.device().public_key().id())
        .unwrap()
        .rooms()
        .iter()
        .copied()
        .collect();
    s.verify_log(&rooms, now_ms()).await.unwrap();
}

/// The head's `history-shared` statement announcing `out` in the record
/// room (the successor applies a handover only once it is announced).
async fn announce(
    head: &mut Sess,
    list: &AccessList,
    sc: &Scope,
    out: &handover::HandedOver,
) -> u64 {
    let t = t();
    let st = t.statement(
        sc.until,
        &key(US_HEAD),
        t.us,
        Payload::HistoryShared(
            HistoryShared::new(
                NEGOTIATOR,
                out.contents.shared_rooms(),
                sc.until,
                out.bundle,
            )
            .unwrap(),
        ),
    );
    head.send(
        list,
        t.record,
        Content::Statement(st.as_bytes().to_vec()),
        Salt([8; 32]),
    )
    .await
    .unwrap()
}

fn scope(head: &Sess, rooms: &[RoomId], until: u64) -> Scope {
    Scope {
        talks: t().talks,
        from: HEAD,
        to: NEGOTIATOR,
        until,
        checkpoint: head.checkpoint_ref(),
        rooms: rooms.iter().copied().collect(),
        private_notes: BTreeSet::new(),
    }
}

#[tokio::test]
async fn the_successor_reads_the_history_it_was_handed_verified() {
    let served = start().await;
    let (mut head, mut negotiator, list, said) = before_the_handover(&served).await;
    let t = t();
    // Before: the negotiator reads none of the talk, and says why.
    let before = negotiator.archive().await.unwrap();
    for seq in &said {
        let a = before.iter().find(|a| a.seq == *seq).unwrap();
        assert_eq!(talk_of(a), None);
        assert_eq!(a.unreadable.as_deref(), Some(BEFORE_JOIN));
    }
    // The head hands over the internal room up to the first three talks,
    // and the record room.
    let until = said[2] + 1;
    let sc = scope(&head, &[US_INTERNAL, t.record], until);
    let out = head
        .hand_over(
            &list,
            &sc,
            &[key(US_NEGOTIATOR_DEVICE).public_key()],
            US_INTERNAL,
        )
        .await
        .unwrap();
    assert_eq!(out.parts.len(), 1);
    assert_eq!(out.bundle, handover::bundle_id(&out.contents.to_bytes()));
    // Not applied before the record announces it: it waits.
    negotiator.receive(&list).await.unwrap();
    assert!(negotiator.handovers().await.unwrap().is_empty());
    assert_eq!(
        negotiator
            .archived(said[0])
            .await
            .unwrap()
            .unwrap()
            .unreadable
            .as_deref(),
        Some(BEFORE_JOIN)
    );
    announce(&mut head, &list, &sc, &out).await;
    negotiator.receive(&list).await.unwrap();
    let received = negotiator.handovers().await.unwrap();
    assert_eq!(received.len(), 1, "{received:?}");
    let r = &received[0];
    assert_eq!((r.bundle, r.from, r.until), (out.bundle, HEAD, until));
    assert_eq!(r.sender, key(US_HEAD_DEVICE).public_key().id());
    match &r.outcome {
        Outcome::Applied {
            opened, withheld, ..
        } => {
            assert_eq!(*opened, 3, "{r:?}");
            assert!(withheld.is_empty());
        }
        Outcome::Refused(why) => panic!("refused: {why}"),
    }
    let after = negotiator.archive().await.unwrap();
    let read: Vec<String> = said
        .iter()
        .filter_map(|seq| after.iter().find(|a| a.seq == *seq).and_then(talk_of))
        .collect();
    assert_eq!(
        read,
        ["our line on detainees", "hold the funds question", "third"]
    );
    // The record-room talk lies past `until`: not covered, it keeps its
    // reason (not an error).
    let past = after.iter().find(|a| a.seq == said[3]).unwrap();
    assert_eq!(talk_of(past), None);
    assert_eq!(past.unreadable.as_deref(), Some(BEFORE_JOIN));
    // A second handover of the rest opens the record-room talk.
    head.receive(&list).await.unwrap();
    integrate(&served, &mut head).await;
    let sc2 = scope(&head, &[t.record], head.follower().size());
    let out2 = head
        .hand_over(
            &list,
            &sc2,
            &[key(US_NEGOTIATOR_DEVICE).public_key()],
            US_INTERNAL,
        )
        .await
        .unwrap();
    announce(&mut head, &list, &sc2, &out2).await;
    negotiator.receive(&list).await.unwrap();
    assert_eq!(negotiator.handovers().await.unwrap().len(), 2);
    let past = negotiator.archived(said[3]).await.unwrap().unwrap();
    assert_eq!(talk_of(&past).as_deref(), Some("for the record"));
    // The Iranian head, in the record room, sees the parts as messages it
    // cannot open and is given nothing.
    let mut iran = session(&served, IRAN_HEAD_DEVICE).await;
    iran.receive(&list).await.unwrap();
    assert!(iran.handovers().await.unwrap().is_empty());
}

/// The negotiator's verdict on a bundle built from the head's archive and
/// then changed by `change`.
async fn verdict(
    head: &Sess,
    negotiator: &Sess,
    sc: &Scope,
    change: impl FnOnce(&mut Bundle),
) -> Result<handover::Verified, HandoverError> {
    let mut bundle = handover::build(&head.archive().await.unwrap(), sc);
    change(&mut bundle);
    handover::verify(
        &bundle,
        &negotiator.archive().await.unwrap(),
        t().talks,
        NEGOTIATOR,
        negotiator.follower(),
    )
}

fn items(b: &mut Bundle, room: RoomId) -> &mut Vec<(u64, Item)> {
    match b.rooms.iter_mut().find(|(r, _)| *r == room) {
        Some((_, Share::Shared(items))) => items,
        _ => panic!("room not shared"),
    }
}

#[tokio::test]
async fn an_altered_reordered_or_incomplete_bundle_is_refused() {
    let served = start().await;
    let (head, negotiator, _list, said) = before_the_handover(&served).await;
    let t = t();
    let until = head.follower().size();
    let sc = scope(&head, &[US_INTERNAL, t.record], until);

    // Unchanged, it opens the four talks (the roster the negotiator already
    // has from the head's copy: checked, nothing to open).
    let ok = verdict(&head, &negotiator, &sc, |_| {}).await.unwrap();
    let opened: BTreeSet<u64> = ok.opens.iter().map(|(s, _)| *s).collect();
    assert!(said.iter().all(|s| opened.contains(s)), "{ok:?}");
    assert!(ok.already_read >= 1, "{ok:?}");

    // One byte of one talk changed.
    let e = verdict(&head, &negotiator, &sc, |b| {
        let (_, item) = items(b, US_INTERNAL)
            .iter_mut()
            .find(|(s, _)| *s == said[1])
            .unwrap();
        let Item::Opened(AppMessage {
            content: Content::Talk(text),
            ..
        }) = item
        else {
            panic!("not talk")
        };
        text.replace_range(0..1, "O");
    })
    .await
    .unwrap_err();
    assert!(matches!(e, HandoverError::Forged(_)), "{e}");
    assert!(e.to_string().contains(&format!("seq {}", said[1])), "{e}");

    // One byte of one statement changed (the roster in the record room).
    let e = verdict(&head, &negotiator, &sc, |b| {
        let item = items(b, t.record)
            .iter_mut()
            .find_map(|(_, i)| match i {
                Item::Opened(AppMessage {
                    content: Content::Statement(bytes),
                    ..
                }) => Some(bytes),
                _ => None,
            })
            .unwrap();
        let n = item.len() - 1;
        item[n] ^= 1;
    })
    .await
    .unwrap_err();
    assert!(matches!(e, HandoverError::Forged(_)), "{e}");

    // A statement left out.
    let e = verdict(&head, &negotiator, &sc, |b| {
        items(b, t.record).retain(|(_, i)| {
            !matches!(
                i,
                Item::Opened(AppMessage {
                    content: Content::Statement(_),
                    ..
                })
            )
        });
    })
    .await
    .unwrap_err();
    assert!(matches!(e, HandoverError::Omits(_)), "{e}");

    // Claimed not held: accounted for, opens nothing, says why.
    let v = verdict(&head, &negotiator, &sc, |b| {
        for (s, i) in items(b, US_INTERNAL).iter_mut() {
            if *s == said[0] {
                *i = Item::NotHeld(NotHeld::Unread);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(v.not_held, vec![(said[0], NotHeld::Unread)]);

    // A talk moved to another room.
    let e = verdict(&head, &negotiator, &sc, |b| {
        let moved = items(b, US_INTERNAL).remove(0);
        items(b, t.record).push(moved);
        items(b, t.record).sort_by_key(|(s, _)| *s);
    })
    .await
    .unwrap_err();
    assert!(
        matches!(e, HandoverError::Forged(_) | HandoverError::Omits(_)),
        "{e}"
    );

    // Reordered: the canonical decoding refuses it.
    let mut b = handover::build(&head.archive().await.unwrap(), &sc);
    items(&mut b, US_INTERNAL).swap(0, 1);
    let e = Bundle::from_bytes(&b.to_bytes()).unwrap_err();
    assert!(e.to_string().contains("sorted"), "{e}");

    // For another member.
    let e = verdict(&head, &negotiator, &sc, |b| b.to = HEAD)
        .await
        .unwrap_err();
    assert!(matches!(e, HandoverError::NotForUs(_)), "{e}");

    // A checkpoint this device's log contradicts.
    let e = verdict(&head, &negotiator, &sc, |b| b.checkpoint.root.0[0] ^= 1)
        .await
        .unwrap_err();
    assert!(matches!(e, HandoverError::Fork(_)), "{e}");

    // Private notes are withheld, and say so.
    let mut withheld = sc.clone();
    withheld.rooms.insert(fixtures::MEDIATORS);
    withheld.private_notes.insert(fixtures::MEDIATORS);
    let v = verdict(&head, &negotiator, &withheld, |_| {})
        .await
        .unwrap();
    assert_eq!(v.withheld.len(), 1);
    assert!(v.withheld[0].1.contains("private notes"));

    // Sealed: one byte of a part changed, or a part for another device.
    let bytes = handover::build(&head.archive().await.unwrap(), &sc).to_bytes();
    let me = key(US_NEGOTIATOR_DEVICE);
    let parts = handover::seal(t.talks, &bytes, &[me.public_key()], &[9; 32]).unwrap();
    assert_eq!(handover::open(t.talks, &parts, &me).unwrap(), bytes);
    let mut altered = parts.clone();
    altered[0].ciphertext[5] ^= 1;
    assert!(matches!(
        handover::open(t.talks, &altered, &me),
        Err(HandoverError::Seal(_))
    ));
    assert!(matches!(
        handover::open(t.talks, &parts, &key(US_HEAD_DEVICE)),
        Err(HandoverError::NotForUs(_))
    ));
    let other_talks = backchannel_codec::TalksId([0xee; 16]);
    assert!(handover::open(other_talks, &parts, &me).is_err());
    // Each part round-trips and its bad bytes are refused.
    let p = &parts[0];
    assert_eq!(&handover::Part::from_bytes(&p.to_bytes()).unwrap(), p);
    let mut b = p.to_bytes();
    b[0] = 2;
    assert!(handover::Part::from_bytes(&b).is_err());
}
