//! A session's rooms against a real node: an update of its own leaf after
//! `PCS_UPDATE_MESSAGES` messages or `PCS_UPDATE_INTERVAL`, a rejoin by external commit when its
//! MLS state fell behind the log, and a message to a room this device is
//! not in yet refused before anything is sent. What the node stores, tried
//! with members' saved MLS states: the other party's internal and caucus
//! rooms and the mediators' room, and a removed
//! member's former rooms after its removal (removed online or offline).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{Sess, now_ms, start_with};

use std::sync::Arc;

use backchannel_client::net::NodeClient;
use backchannel_client::rooms::{PCS_UPDATE_INTERVAL, PCS_UPDATE_MESSAGES, sync_all};
use backchannel_client::seal::Content;
use backchannel_client::session::SessionError;
use backchannel_client::store::{ClientStore, MemoryClientStore, Namespace, Put};
use backchannel_codec::TalksId;
use backchannel_crypto::Signer;
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::{AccessList, Salt};
use backchannel_store::memory::MemoryStore;
use backchannel_test_support::Served;

fn talks() -> TalksId {
    fixtures::talks().talks
}

fn list() -> AccessList {
    let t = fixtures::talks();
    t.roster.implied_access_list(t.talks).unwrap()
}

async fn start() -> Served {
    start_on(Arc::new(MemoryStore::new())).await
}

async fn start_on(store: Arc<MemoryStore>) -> Served {
    start_with(store, &list()).await
}

async fn session(served: &Served, device: u8, store: &Arc<MemoryClientStore>) -> Sess {
    common::session(served, device, talks(), Arc::clone(store)).await
}

/// The talk this device archived, in seq order.
async fn talk(s: &Sess) -> Vec<String> {
    s.archive()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|a| match a.message.map(|m| m.content) {
            Some(Content::Talk(t)) => Some(t),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_device_updates_its_leaf_after_enough_messages_and_the_room_goes_on() {
    let served = start().await;
    let record = fixtures::talks().record;
    let (sa, sb) = (Arc::default(), Arc::default());
    let mut us = session(&served, US_HEAD_DEVICE, &sa).await;
    let mut iran = session(&served, IRAN_HEAD_DEVICE, &sb).await;
    // Every device the list seats is in the room: nothing to add or remove,
    // so only the update can make a commit.
    let (so, sn) = (Arc::default(), Arc::default());
    let mut oman = session(&served, OMAN_LEAD_DEVICE, &so).await;
    let mut negotiator = session(&served, US_NEGOTIATOR_DEVICE, &sn).await;
    sync_all(
        &mut [&mut us, &mut iran, &mut oman, &mut negotiator],
        &list(),
        now_ms() / 1000,
    )
    .await
    .unwrap();
    let epoch = us.room_epoch(record).unwrap();
    for i in 0..PCS_UPDATE_MESSAGES - 1 {
        us.send(
            &list(),
            record,
            Content::Talk(format!("m{i}")),
            Salt([1; 32]),
        )
        .await
        .unwrap();
    }
    // Not due yet.
    let report = us.sync_rooms(&list(), now_ms() / 1000).await.unwrap();
    assert!(report.updated.is_empty(), "{report:?}");
    us.send(&list(), record, Content::Talk("last".into()), Salt([1; 32]))
        .await
        .unwrap();
    // Due now, and kept across a restart of the session.
    let mut us = session(&served, US_HEAD_DEVICE, &sa).await;
    let report = us.sync_rooms(&list(), now_ms() / 1000).await.unwrap();
    assert_eq!(report.updated, vec![record], "{report:?}");
    assert_eq!(us.room_epoch(record), Some(epoch + 1));
    let report = us.sync_rooms(&list(), now_ms() / 1000).await.unwrap();
    assert!(
        report.updated.is_empty(),
        "counted again from the update: {report:?}"
    );
    // The other member follows the update and reads what comes after.
    us.send(
        &list(),
        record,
        Content::Talk("after".into()),
        Salt([2; 32]),
    )
    .await
    .unwrap();
    iran.receive(&list()).await.unwrap();
    assert_eq!(iran.room_epoch(record), Some(epoch + 1));
    let got = talk(&iran).await;
    assert_eq!(got.len() as u32, PCS_UPDATE_MESSAGES + 1);
    assert_eq!(got.last().map(String::as_str), Some("after"));
    served.stop().await;
}

/// However few messages it sends, an active device updates its leaf once
/// `PCS_UPDATE_INTERVAL` has passed since its first message after its last
/// commit; a quiet one owes nothing.
#[tokio::test]
async fn a_device_that_talks_updates_its_leaf_at_least_every_interval() {
    // Before the node starts: its clock, which stamps the message, is at or
    // after this, however long the sessions take to open.
    let now = now_ms() / 1000;
    let served = start().await;
    let record = fixtures::talks().record;
    let stores: [Arc<MemoryClientStore>; 4] = Default::default();
    let labels = [
        US_HEAD_DEVICE,
        IRAN_HEAD_DEVICE,
        OMAN_LEAD_DEVICE,
        US_NEGOTIATOR_DEVICE,
    ];
    let mut sessions = Vec::new();
    for (l, st) in labels.iter().zip(&stores) {
        sessions.push(session(&served, *l, st).await);
    }
    {
        let mut all: Vec<&mut Sess> = sessions.iter_mut().collect();
        sync_all(&mut all, &list(), now).await.unwrap();
    }
    let interval = PCS_UPDATE_INTERVAL.as_secs();
    let us = &mut sessions[0];
    let epoch = us.room_epoch(record).unwrap();
    // Quiet: nothing is due however late.
    let report = us.sync_rooms(&list(), now + 10 * interval).await.unwrap();
    assert!(report.updated.is_empty(), "{report:?}");
    say(us, &list(), record, "one message").await;
    // Not yet due just before the interval ends (the message's node time is
    // at or after `now`).
    let report = us.sync_rooms(&list(), now + interval - 5).await.unwrap();
    assert!(report.updated.is_empty(), "{report:?}");
    // Due after it, and kept across a restart of the session.
    let mut us = session(&served, US_HEAD_DEVICE, &stores[0]).await;
    let report = us.sync_rooms(&list(), now + interval + 5).await.unwrap();
    assert_eq!(report.updated, vec![record], "{report:?}");
    assert_eq!(us.room_epoch(record), Some(epoch + 1));
    // Counted again from the update.
    let report = us.sync_rooms(&list(), now + 3 * interval).await.unwrap();
    assert!(report.updated.is_empty(), "{report:?}");
    served.stop().await;
}

#[tokio::test]
async fn a_device_whose_state_fell_behind_rejoins_by_external_commit() {
    let served = start().await;
    let record = fixtures::talks().record;
    let (sa, sb) = (Arc::default(), Arc::default());
    let mut us = session(&served, US_HEAD_DEVICE, &sa).await;
    let mut iran = session(&served, IRAN_HEAD_DEVICE, &sb).await;
    sync_all(&mut [&mut us, &mut iran], &list(), now_ms() / 1000)
        .await
        .unwrap();
    // Iran's MLS state as it stood, kept aside.
    let stale = sb
        .get(Namespace::Mls, &mls_key())
        .await
        .unwrap()
        .expect("stored MLS state");
    // The US device sends enough to owe an update, and commits it.
    for i in 0..PCS_UPDATE_MESSAGES {
        us.send(
            &list(),
            record,
            Content::Talk(format!("m{i}")),
            Salt([1; 32]),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        us.sync_rooms(&list(), now_ms() / 1000)
            .await
            .unwrap()
            .updated,
        vec![record]
    );
    // Iran receives past the commit, then loses its MLS state to the old
    // one (as if it could not process the commit): behind the log.
    iran.receive(&list()).await.unwrap();
    sb.put_many(vec![Put {
        ns: Namespace::Mls,
        key: mls_key(),
        value: Some(stale),
    }])
    .await
    .unwrap();
    let mut iran = session(&served, IRAN_HEAD_DEVICE, &sb).await;
    let behind = iran.room_epoch(record).unwrap();
    let report = iran.sync_rooms(&list(), now_ms() / 1000).await.unwrap();
    assert!(report.rejoined.contains(&record), "{report:?}");
    // What its signed commit failure will name: the epoch it could not leave.
    assert_eq!(report.rejoined_from, vec![(record, behind)], "{report:?}");
    assert!(iran.room_epoch(record).unwrap() > behind + 1);
    // Both read each other again.
    us.receive(&list()).await.unwrap();
    assert_eq!(us.room_epoch(record), iran.room_epoch(record));
    us.send(
        &list(),
        record,
        Content::Talk("welcome back".into()),
        Salt([3; 32]),
    )
    .await
    .unwrap();
    iran.send(
        &list(),
        record,
        Content::Talk("thank you".into()),
        Salt([4; 32]),
    )
    .await
    .unwrap();
    iran.receive(&list()).await.unwrap();
    us.receive(&list()).await.unwrap();
    assert_eq!(
        talk(&iran).await.last().map(String::as_str),
        Some("thank you")
    );
    assert!(talk(&iran).await.contains(&"welcome back".to_owned()));
    assert_eq!(
        talk(&us).await.last().map(String::as_str),
        Some("thank you")
    );
    served.stop().await;
}

#[tokio::test]
async fn a_device_not_yet_in_a_room_sends_nothing() {
    let served = start().await;
    let record = fixtures::talks().record;
    let store = Arc::default();
    let mut us = session(&served, US_HEAD_DEVICE, &store).await;
    let e = us
        .send(
            &list(),
            record,
            Content::Talk("too early".into()),
            Salt([1; 32]),
        )
        .await
        .expect_err("not in the room's group");
    assert!(
        matches!(&e, SessionError::Usage(m) if m.contains("not in the room's MLS group yet")),
        "{e}"
    );
    let c = NodeClient::new(served.addr, served.fingerprint, &key(OMAN_LEAD_DEVICE)).unwrap();
    assert_eq!(c.fetch(talks(), 0, 10).await.unwrap().log_size, 0);
    served.stop().await;
}

/// The proximity invariant, against what the node stores: in proximity
/// talks with every room (record, caucuses, each delegation's internal
/// room, the mediators' room), each member's saved MLS state is tried on
/// every stored application envelope of the other delegation's internal and
/// caucus rooms and of the mediators' room (the mediator's, on both
/// delegations' internal rooms), straight from the node's store: none
/// opens.
#[tokio::test]
async fn no_member_of_one_party_decrypts_the_other_partys_rooms() {
    use fixtures::{IRAN_INTERNAL, MEDIATORS, US_INTERNAL};
    let store = Arc::new(MemoryStore::new());
    let t = fixtures::talks_with_internal_rooms();
    let list = t.roster.implied_access_list(t.talks).unwrap();
    let served = start_with(Arc::clone(&store), &list).await;
    let labels = [
        OMAN_LEAD_DEVICE,
        US_HEAD_DEVICE,
        US_NEGOTIATOR_DEVICE,
        IRAN_HEAD_DEVICE,
    ];
    let stores: Vec<Arc<MemoryClientStore>> = labels.iter().map(|_| Arc::default()).collect();
    let mut sessions = Vec::new();
    for (l, st) in labels.iter().zip(&stores) {
        sessions.push(session(&served, *l, st).await);
    }
    {
        let mut all: Vec<&mut Sess> = sessions.iter_mut().collect();
        sync_all(&mut all, &list, now_ms() / 1000).await.unwrap();
    }
    for (i, room, text) in [
        (0, t.us_caucus, "to the US"),
        (1, t.us_caucus, "US internal position"),
        (2, t.us_caucus, "US fallback"),
        (0, t.iran_caucus, "to Iran"),
        (3, t.iran_caucus, "Iran's red line"),
        (1, US_INTERNAL, "US delegation only"),
        (2, US_INTERNAL, "US delegation, again"),
        (3, IRAN_INTERNAL, "Iran's delegation only"),
        (3, IRAN_INTERNAL, "Iran's delegation, again"),
        (0, MEDIATORS, "the mediators' own assessment"),
        (0, MEDIATORS, "the mediators' next move"),
    ] {
        sessions[i]
            .send(&list, room, Content::Talk(text.into()), Salt([9; 32]))
            .await
            .unwrap();
    }
    for s in &mut sessions {
        s.receive(&list).await.unwrap();
    }
    let rows = backchannel_store::Store::read(&*store, talks(), 0, 1000)
        .await
        .unwrap();
    let us_closed = [IRAN_INTERNAL, t.iran_caucus, MEDIATORS];
    // (device, the rooms it must not open)
    for (i, closed) in [
        (1, &us_closed[..]),
        (2, &us_closed[..]),
        (3, &[US_INTERNAL, t.us_caucus, MEDIATORS][..]),
        (0, &[US_INTERNAL, IRAN_INTERNAL][..]),
    ] {
        let saved = stores[i]
            .get(Namespace::Mls, &mls_key())
            .await
            .unwrap()
            .expect("a saved MLS state");
        let mut member =
            backchannel_mls::Member::from_bytes(talks(), key(labels[i]), &saved).unwrap();
        for &room in closed {
            let mut tried = 0;
            for row in rows.iter().filter(|r| r.room == room) {
                let h = *backchannel_statement::SignedHeader::decode(&row.header)
                    .unwrap()
                    .header();
                if h.kind != backchannel_statement::Kind::MlsApp {
                    continue;
                }
                let body = row.body.as_ref().unwrap();
                let msg = backchannel_statement::header::unpad_body(body).unwrap();
                tried += 1;
                assert!(
                    member.decrypt(room, msg, &h.commitment.0).is_err(),
                    "device {:#x} decrypted seq {} of room {room:?}",
                    labels[i],
                    row.seq
                );
            }
            assert!(tried >= 2, "{tried} envelopes of {room:?}");
        }
    }
    // What each member may read, from the same store, opens: the check can
    // fail.
    let expect = [
        (
            0,
            vec!["Iran's red line", "US fallback", "US internal position"],
        ),
        (1, vec!["US delegation, again", "US fallback", "to the US"]),
        (
            2,
            vec!["US delegation only", "US internal position", "to the US"],
        ),
        (3, vec!["to Iran"]),
    ];
    for (i, want) in expect {
        let got = talk(&sessions[i]).await;
        for w in want {
            assert!(
                got.iter().any(|g| g == w),
                "device {:#x} did not read {w:?}: {got:?}",
                labels[i]
            );
        }
    }
    served.stop().await;
}

/// Removes `device` from the node's access list, signed by the US talks
/// authority (its party's designated signer) and submitted by the US
/// head's device; returns the list the node serves now.
async fn remove_from_list(served: &Served, device: u8) -> AccessList {
    use backchannel_statement::{AccessListChange, AccessListDelta};
    let c = NodeClient::new(served.addr, served.fingerprint, &key(US_HEAD_DEVICE)).unwrap();
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
    let list = c.access_list(talks()).await.unwrap().list;
    assert!(list.get(&key(device).public_key().id()).is_none());
    list
}

/// The application envelopes of `room` the node stores from `from` on:
/// (seq, sender, header commitment, MLS message).
async fn stored_app_messages(
    store: &MemoryStore,
    room: backchannel_codec::RoomId,
    from: u64,
) -> Vec<(u64, backchannel_crypto::KeyId, [u8; 32], Vec<u8>)> {
    backchannel_store::Store::read(store, talks(), from, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.room == room)
        .filter_map(|r| {
            let h = *backchannel_statement::SignedHeader::decode(&r.header)
                .unwrap()
                .header();
            (h.kind == backchannel_statement::Kind::MlsApp).then(|| {
                let body = r.body.as_ref().unwrap();
                let msg = backchannel_statement::header::unpad_body(body).unwrap();
                (r.seq, h.sender, h.commitment.0, msg.to_vec())
            })
        })
        .collect()
}

/// Talk from `s` in `room` (the list seats it there).
async fn say(s: &mut Sess, list: &AccessList, room: backchannel_codec::RoomId, text: &str) -> u64 {
    s.send(list, room, Content::Talk(text.into()), Salt([7; 32]))
        .await
        .unwrap()
}

/// What the devices of a removed member's rooms say once it is removed:
/// the remaining members sync (the US head's commits the removal; each
/// then owes and commits an update of its own leaf), talk in both rooms,
/// and receive. Returns the seq of the first envelope after the removal
/// was put on the list (the removal's commit is at or after it).
async fn remove_and_talk_on(
    served: &Served,
    store: &MemoryStore,
    remaining: &mut [&mut Sess; 3],
) -> (u64, AccessList) {
    let t = fixtures::talks();
    let cut = backchannel_store::Store::log_size(store, talks())
        .await
        .unwrap();
    let current = remove_from_list(served, US_NEGOTIATOR_DEVICE).await;
    let [oman, us, iran] = remaining;
    let report = us.sync_rooms(&current, now_ms() / 1000).await.unwrap();
    let removed: Vec<_> = report.removed.iter().map(|(r, _)| *r).collect();
    assert!(
        removed.contains(&t.record) && removed.contains(&t.us_caucus),
        "{report:?}"
    );
    say(us, &current, t.us_caucus, "said once the negotiator is out").await;
    say(
        oman,
        &current,
        t.record,
        "on the record, without the negotiator",
    )
    .await;
    // The others meet the removal and owe an update of their own leaves.
    for s in [&mut **oman, &mut **iran] {
        s.receive(&current).await.unwrap();
        let report = s.sync_rooms(&current, now_ms() / 1000).await.unwrap();
        assert!(!report.updated.is_empty(), "{report:?}");
    }
    say(oman, &current, t.us_caucus, "after the updates").await;
    say(iran, &current, t.record, "Iran, after the updates").await;
    say(us, &current, t.record, "the US, after the updates").await;
    for s in [&mut **oman, &mut **us, &mut **iran] {
        s.receive(&current).await.unwrap();
    }
    (cut, current)
}

/// Tries the removed negotiator's saved MLS state on every application
/// envelope of its former rooms from `cut` on, straight from the node's
/// store: none opens. Each of them opens for the remaining members that
/// did not send it (the control: the check can fail). Returns how many
/// were tried.
async fn assert_locked_out(
    store: &MemoryStore,
    saved: &[u8],
    cut: u64,
    remaining: &[(u8, &Sess)],
) -> usize {
    let t = fixtures::talks();
    let mut member =
        backchannel_mls::Member::from_bytes(talks(), key(US_NEGOTIATOR_DEVICE), saved).unwrap();
    let list = list();
    let mut tried = 0;
    for room in [t.record, t.us_caucus] {
        for (seq, sender, commitment, msg) in stored_app_messages(store, room, cut).await {
            tried += 1;
            assert!(
                member.decrypt(room, &msg, &commitment).is_err(),
                "the removed device decrypted seq {seq}"
            );
            let mut opened = 0;
            for (label, s) in remaining {
                if key(*label).public_key().id() == sender
                    || !list.seats_device(&key(*label).public_key().id(), room)
                {
                    continue;
                }
                let a = s.archived(seq).await.unwrap().unwrap();
                assert!(
                    matches!(a.message.map(|m| m.content), Some(Content::Talk(_))),
                    "device {label:#x} does not read seq {seq}: {:?}",
                    a.unreadable
                );
                opened += 1;
            }
            assert!(opened >= 1, "seq {seq}");
        }
    }
    tried
}

/// A member removed while its session runs: its MLS state as its store
/// held it at the removal opens nothing sent in its former rooms after
/// it, straight from the node's store (it did open what was sent before).
#[tokio::test]
async fn a_removed_member_decrypts_nothing_sent_after_its_removal() {
    let store = Arc::new(MemoryStore::new());
    let served = start_on(Arc::clone(&store)).await;
    let t = fixtures::talks();
    let (so, su, sn, si) = (
        Arc::default(),
        Arc::default(),
        Arc::<MemoryClientStore>::default(),
        Arc::default(),
    );
    let mut oman = session(&served, OMAN_LEAD_DEVICE, &so).await;
    let mut us = session(&served, US_HEAD_DEVICE, &su).await;
    let mut negotiator = session(&served, US_NEGOTIATOR_DEVICE, &sn).await;
    let mut iran = session(&served, IRAN_HEAD_DEVICE, &si).await;
    sync_all(
        &mut [&mut oman, &mut us, &mut negotiator, &mut iran],
        &list(),
        now_ms() / 1000,
    )
    .await
    .unwrap();
    say(&mut us, &list(), t.us_caucus, "before the removal").await;
    negotiator.receive(&list()).await.unwrap();
    assert_eq!(talk(&negotiator).await, vec!["before the removal"]);
    // One more before the removal, which its session has not received: the
    // saved state still opens it (so what follows is not a vacuous check).
    let last = say(&mut oman, &list(), t.us_caucus, "just before the removal").await;
    let saved = sn
        .get(Namespace::Mls, &mls_key())
        .await
        .unwrap()
        .expect("a saved MLS state");

    let (cut, current) =
        remove_and_talk_on(&served, &store, &mut [&mut oman, &mut us, &mut iran]).await;
    // Its session, still running, is refused by the node from now on.
    assert!(negotiator.receive(&list()).await.is_err());
    assert_eq!(
        sn.get(Namespace::Mls, &mls_key()).await.unwrap().as_deref(),
        Some(&saved[..]),
        "nothing of the removal reached it"
    );

    let mut member =
        backchannel_mls::Member::from_bytes(talks(), key(US_NEGOTIATOR_DEVICE), &saved).unwrap();
    let before = stored_app_messages(&store, t.us_caucus, last).await;
    let (_, _, commitment, msg) = &before[0];
    assert!(member.decrypt(t.us_caucus, msg, commitment).is_ok());
    let tried = assert_locked_out(
        &store,
        &saved,
        cut,
        &[
            (OMAN_LEAD_DEVICE, &oman),
            (US_HEAD_DEVICE, &us),
            (IRAN_HEAD_DEVICE, &iran),
        ],
    )
    .await;
    assert!(tried >= 5, "{tried}");
    let _ = current;
    served.stop().await;
}

/// A member removed while its device is offline: when it comes back, its
/// saved MLS state opens nothing sent in its former rooms after the
/// removal, straight from the node's store (it does open what it missed
/// before the removal); and its client says it is no longer there rather
/// than failing on anything else.
#[tokio::test]
async fn a_member_removed_while_offline_decrypts_nothing_when_it_comes_back() {
    let store = Arc::new(MemoryStore::new());
    let served = start_on(Arc::clone(&store)).await;
    let t = fixtures::talks();
    let (so, su, sn, si) = (
        Arc::default(),
        Arc::default(),
        Arc::<MemoryClientStore>::default(),
        Arc::default(),
    );
    let mut oman = session(&served, OMAN_LEAD_DEVICE, &so).await;
    let mut us = session(&served, US_HEAD_DEVICE, &su).await;
    let mut iran = session(&served, IRAN_HEAD_DEVICE, &si).await;
    {
        let mut negotiator = session(&served, US_NEGOTIATOR_DEVICE, &sn).await;
        sync_all(
            &mut [&mut oman, &mut us, &mut negotiator, &mut iran],
            &list(),
            now_ms() / 1000,
        )
        .await
        .unwrap();
        // Its session ends here: offline from now on.
    }
    let saved = sn
        .get(Namespace::Mls, &mls_key())
        .await
        .unwrap()
        .expect("a saved MLS state");
    let missed = say(
        &mut us,
        &list(),
        t.us_caucus,
        "while the negotiator is away",
    )
    .await;

    let (cut, current) =
        remove_and_talk_on(&served, &store, &mut [&mut oman, &mut us, &mut iran]).await;

    // It comes back: the state it saved opens what it missed before the
    // removal, and nothing after.
    let mut member =
        backchannel_mls::Member::from_bytes(talks(), key(US_NEGOTIATOR_DEVICE), &saved).unwrap();
    let before = stored_app_messages(&store, t.us_caucus, missed).await;
    assert_eq!(before[0].0, missed);
    let (_, _, commitment, msg) = &before[0];
    assert!(member.decrypt(t.us_caucus, msg, commitment).is_ok());
    let tried = assert_locked_out(
        &store,
        &saved,
        cut,
        &[
            (OMAN_LEAD_DEVICE, &oman),
            (US_HEAD_DEVICE, &us),
            (IRAN_HEAD_DEVICE, &iran),
        ],
    )
    .await;
    assert!(tried >= 5, "{tried}");

    // Its client, from its own store: the node no longer serves it, a
    // sync with the list as it stands has nothing to do, and a message is
    // refused before anything is encrypted or sent.
    let mut negotiator = session(&served, US_NEGOTIATOR_DEVICE, &sn).await;
    let size = backchannel_store::Store::log_size(&*store, talks())
        .await
        .unwrap();
    match negotiator.receive(&list()).await {
        Err(SessionError::Net(e)) => assert_eq!(e.status(), Some(404), "{e}"),
        other => panic!("{other:?}"),
    }
    let report = negotiator
        .sync_rooms(&current, now_ms() / 1000)
        .await
        .unwrap();
    assert!(!report.changed(), "{report:?}");
    let e = negotiator
        .send(
            &current,
            t.us_caucus,
            Content::Talk("am I still here?".into()),
            Salt([8; 32]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, SessionError::Usage(m) if m.contains("does not seat this device")),
        "{e}"
    );
    assert_eq!(
        backchannel_store::Store::log_size(&*store, talks())
            .await
            .unwrap(),
        size
    );
    assert_eq!(
        sn.get(Namespace::Mls, &mls_key()).await.unwrap().as_deref(),
        Some(&saved[..]),
        "its ratchet did not move"
    );
    served.stop().await;
}

/// Where a session keeps its MLS state (`talks ‖ "mls"` in the Mls
/// namespace).
fn mls_key() -> Vec<u8> {
    let mut k = talks().0.to_vec();
    k.extend_from_slice(b"mls");
    k
}
