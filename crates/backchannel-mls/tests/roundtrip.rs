//! Rooms end to end: create, add, encrypt, decrypt, padding, persistence,
//! removal, rejoin.
#![allow(clippy::expect_used)] // Test helpers: a failure is a broken test.

mod common;

use backchannel_mls::{DecryptError, Handled, Member, message_len};
use backchannel_statement::header::BODY_BUCKETS;
use common::*;

#[test]
fn three_devices_round_trip() {
    let r = room(1);
    let (node, mut ms) = room_of(3, r);
    assert_eq!(node.epoch(), 1);
    let keys: Vec<_> = (1..=3).map(public).collect();
    assert_eq!(node.members(), keys);
    for m in &ms {
        assert_eq!(m.epoch(r), Some(node.epoch()));
        assert_eq!(m.members(r), keys);
        assert_eq!(m.epoch_authenticator(r), ms[0].epoch_authenticator(r));
    }
    for sender in 0..3 {
        let msg = format!("hello from {sender}");
        let ct = ms[sender]
            .encrypt(r, msg.as_bytes(), &commitment(sender as u8))
            .expect("encrypt");
        for (i, m) in ms.iter_mut().enumerate() {
            let got = m.decrypt_from(r, &ct, &commitment(sender as u8));
            if i == sender {
                assert_eq!(got, Err(DecryptError::OwnMessage));
            } else {
                let (from, pt) = got.expect("decrypt");
                assert_eq!(from, keys[sender]);
                assert_eq!(pt, msg.as_bytes());
            }
        }
    }
}

/// Every bucket, lengths 0, 1 and each bucket boundary ±1: the message is
/// exactly `bucket - 4` bytes, and decrypts to the plaintext.
#[test]
fn padding_fills_the_bucket_exactly() {
    let r = room(2);
    let (_node, mut ms) = room_of(2, r);
    let mut lengths = vec![0usize, 1, 2, 100];
    let max = backchannel_mls::max_plaintext();
    for &b in &BODY_BUCKETS {
        // The largest plaintext of this bucket, and around it.
        let fits = (0..=b as usize)
            .rev()
            .find(|&l| message_len(l) == Some(b as usize - 4))
            .expect("the bucket holds something");
        lengths.extend([fits - 1, fits, fits + 1, b as usize - 1, b as usize]);
    }
    lengths.push(max);
    lengths.retain(|&l| l <= max);
    for len in lengths {
        let pt: Vec<u8> = (0..len).map(|i| i as u8 | 1).collect();
        let ct = ms[0].encrypt(r, &pt, &commitment(3)).expect("encrypt");
        let bucket = BODY_BUCKETS
            .iter()
            .map(|&b| b as usize)
            .find(|&b| message_len(len) == Some(b - 4))
            .expect("a bucket");
        assert_eq!(ct.len(), bucket - 4, "plaintext of {len}");
        // The smallest bucket: the previous one could not hold it.
        assert!(
            BODY_BUCKETS
                .iter()
                .all(|&b| b as usize >= bucket || message_len(len) != Some(b as usize - 4))
        );
        assert_eq!(ms[1].decrypt(r, &ct, &commitment(3)).expect("decrypt"), pt);
    }
    assert_eq!(message_len(max + 1), None);
    assert!(ms[0].encrypt(r, &vec![0; max + 1], &commitment(3)).is_err());
}

#[test]
fn a_different_commitment_is_refused() {
    let r = room(3);
    let (_node, mut ms) = room_of(2, r);
    let ct = ms[0].encrypt(r, b"offer", &commitment(1)).expect("encrypt");
    assert_eq!(
        ms[1].decrypt(r, &ct, &commitment(2)),
        Err(DecryptError::AadMismatch)
    );
    assert_eq!(
        ms[1].decrypt(r, &ct, &commitment(1)).expect("decrypt"),
        b"offer"
    );
}

#[test]
fn a_removed_member_decrypts_nothing_sent_after() {
    let r = room(4);
    let (mut node, mut ms) = room_of(3, r);
    let saved = ms[2].to_bytes();
    let (a, rest) = ms.split_at_mut(1);
    let (b, c) = rest.split_at_mut(1);
    // The access list no longer seats device 3: only then may a member
    // remove it (a removal of a device still admitted is refused).
    let but_3 = |k: &backchannel_crypto::PublicKey| *k != public(3);
    let out = a[0].commit(r, &[], &[public(3)], &but_3).expect("commit");
    assert!(
        node.stage_commit(&out.commit, &out.group_info, &all)
            .is_err(),
        "a removal of a device still admitted"
    );
    node = node
        .stage_commit(&out.commit, &out.group_info, &but_3)
        .expect("node accepts the removal");
    assert_eq!(node.members(), vec![public(1), public(2)]);
    a[0].merge_pending(r).expect("merge");
    b[0].process_handshake(r, &out.commit, &but_3)
        .expect("process");
    assert_eq!(
        c[0].process_handshake(r, &out.commit, &but_3),
        Ok(Handled::Removed)
    );
    assert!(c[0].rooms().is_empty());
    let ct = a[0].encrypt(r, b"after", &commitment(1)).expect("encrypt");
    assert_eq!(
        b[0].decrypt(r, &ct, &commitment(1)).expect("decrypt"),
        b"after"
    );
    assert_eq!(
        c[0].decrypt(r, &ct, &commitment(1)),
        Err(DecryptError::NotMember(r))
    );
    let mut restored = Member::from_bytes(TALKS, key(3), &saved).expect("restore");
    assert_eq!(
        restored.decrypt(r, &ct, &commitment(1)),
        Err(DecryptError::WrongEpoch {
            epoch: 2,
            current: 1
        })
    );
    // Even fed the removal, the saved state only learns it is out.
    assert_eq!(
        restored.process_handshake(r, &out.commit, &but_3),
        Ok(Handled::Removed)
    );
    assert_eq!(
        restored.decrypt(r, &ct, &commitment(1)),
        Err(DecryptError::NotMember(r))
    );
}

#[test]
fn a_member_of_one_room_cannot_read_another() {
    let (ra, rb) = (room(5), room(6));
    let (_na, mut a) = room_of(2, ra);
    let mut nb = create(&mut a[0], rb);
    let mut carol = member(3);
    let k = kp(&mut carol);
    let out = commit_all(&mut nb, rb, &mut a[0], &mut [], &[k], &[]);
    assert_eq!(
        carol.join(&out.welcome.expect("welcome"), &all),
        Ok(Some(rb))
    );
    let in_b = a[0]
        .encrypt(rb, b"room b only", &commitment(9))
        .expect("encrypt");
    assert_eq!(
        carol.decrypt(rb, &in_b, &commitment(9)).expect("decrypt"),
        b"room b only"
    );
    // Device 2 is in room A only.
    assert_eq!(
        a[1].decrypt(rb, &in_b, &commitment(9)),
        Err(DecryptError::NotMember(rb))
    );
    assert_eq!(
        a[1].decrypt(ra, &in_b, &commitment(9)),
        Err(DecryptError::WrongRoom)
    );
    // And a device joined later cannot read what came before it.
    let early = a[0].encrypt(ra, b"early", &commitment(1)).expect("encrypt");
    assert_eq!(
        a[1].decrypt(ra, &early, &commitment(1)).expect("decrypt"),
        b"early"
    );
}

#[test]
fn state_survives_to_bytes_and_from_bytes() {
    let r = room(7);
    let (mut node, mut ms) = room_of(3, r);
    let ct = ms[0].encrypt(r, b"one", &commitment(1)).expect("encrypt");
    // Mid-conversation: save and restore the receiver before it reads.
    let mut b = Member::from_bytes(TALKS, key(2), &ms[1].to_bytes()).expect("restore");
    assert_eq!(b.to_bytes(), ms[1].to_bytes());
    assert_eq!(b.decrypt(r, &ct, &commitment(1)).expect("decrypt"), b"one");
    ms[1] = b;
    // A pending commit survives.
    let out = ms[0].commit(r, &[], &[], &all).expect("commit");
    let mut a = Member::from_bytes(TALKS, key(1), &ms[0].to_bytes()).expect("restore");
    assert_eq!(a.pending(r), Some(out.clone()));
    node = node
        .stage_commit(&out.commit, &out.group_info, &all)
        .expect("node accepts");
    assert_eq!(
        a.process_handshake(r, &out.commit, &all),
        Ok(Handled::Own { epoch: 2 })
    );
    ms[0] = a;
    for m in &mut ms[1..] {
        assert_eq!(
            m.process_handshake(r, &out.commit, &all),
            Ok(Handled::Applied {
                epoch: 2,
                discarded_own: false
            })
        );
    }
    assert_eq!(node.epoch(), 2);
    let ct = ms[2].encrypt(r, b"two", &commitment(2)).expect("encrypt");
    assert_eq!(
        ms[0].decrypt(r, &ct, &commitment(2)).expect("decrypt"),
        b"two"
    );
    assert_eq!(ms[0].epoch_authenticator(r), ms[2].epoch_authenticator(r));
    // Another device's key, or another talks, is refused.
    assert!(Member::from_bytes(TALKS, key(9), &ms[0].to_bytes()).is_err());
    assert!(
        Member::from_bytes(
            backchannel_codec::TalksId([0; 16]),
            key(1),
            &ms[0].to_bytes()
        )
        .is_err()
    );
    // Node state too.
    let restored = backchannel_mls::PublicRoom::from_bytes(&node.to_bytes()).expect("node restore");
    assert_eq!(restored, node);
}

#[test]
fn rejoin_by_external_commit() {
    let r = room(8);
    let (mut node, mut ms) = room_of(3, r);
    let mut latest_info = {
        let (a, rest) = ms.split_at_mut(1);
        let (b, c) = rest.split_at_mut(1);
        commit_all(
            &mut node,
            r,
            &mut a[0],
            &mut [&mut b[0], &mut c[0]],
            &[],
            &[],
        )
        .group_info
    };
    // Device 3 lost its state entirely; device 2 still has its (stale) one.
    for (i, fresh) in [(2usize, true), (1, false)] {
        let mut m = if fresh {
            member(i as u8 + 1)
        } else {
            Member::from_bytes(TALKS, key(i as u8 + 1), &ms[i].to_bytes()).expect("restore")
        };
        let out = m.rejoin(r, &latest_info, &all).expect("rejoin");
        assert_eq!(out.epoch, node.epoch());
        assert!(out.welcome.is_none());
        node = node
            .stage_commit(&out.commit, &out.group_info, &all)
            .expect("node accepts the external commit");
        latest_info = out.group_info.clone();
        assert_eq!(
            m.process_handshake(r, &out.commit, &all),
            Ok(Handled::Own {
                epoch: node.epoch()
            })
        );
        assert_eq!(m.joined(r), Some(node.epoch()));
        ms[i] = m;
        for (j, other) in ms.iter_mut().enumerate() {
            if j != i {
                assert_eq!(
                    other.process_handshake(r, &out.commit, &all),
                    Ok(Handled::Applied {
                        epoch: node.epoch(),
                        discarded_own: false
                    })
                );
            }
        }
        assert_eq!(node.members().len(), 3);
    }
    let auth = ms[0].epoch_authenticator(r);
    assert!(ms.iter().all(|m| m.epoch_authenticator(r) == auth));
    let ct = ms[2].encrypt(r, b"back", &commitment(4)).expect("encrypt");
    assert_eq!(
        ms[0].decrypt(r, &ct, &commitment(4)).expect("decrypt"),
        b"back"
    );
    assert_eq!(
        ms[1].decrypt(r, &ct, &commitment(4)).expect("decrypt"),
        b"back"
    );
    // What was sent before the rejoin stays closed to the rejoined.
    let mut sorted = node.members();
    sorted.sort();
    let mut expected: Vec<_> = (1..=3).map(public).collect();
    expected.sort();
    assert_eq!(sorted, expected);
}

#[test]
fn before_join_says_ask_for_a_handover() {
    let r = room(9);
    let (mut node, mut ms) = room_of(2, r);
    let early = ms[0]
        .encrypt(r, b"before you", &commitment(1))
        .expect("encrypt");
    let mut carol = member(3);
    let k = kp(&mut carol);
    let (a, b) = ms.split_at_mut(1);
    let out = commit_all(&mut node, r, &mut a[0], &mut [&mut b[0]], &[k], &[]);
    carol
        .join(&out.welcome.expect("welcome"), &all)
        .expect("join");
    let err = carol
        .decrypt(r, &early, &commitment(1))
        .expect_err("before join");
    assert_eq!(
        err,
        DecryptError::BeforeJoin {
            epoch: 1,
            joined: 2
        }
    );
    assert!(err.to_string().contains("handover"));
}
