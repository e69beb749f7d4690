//! Commit races: every member commits in the same epoch; the node takes the
//! first; everyone converges on the winner.
#![allow(clippy::expect_used)] // Test helpers: a failure is a broken test.

mod common;

use backchannel_mls::{Handled, PublicError};
use common::*;

fn race(n: u8, winner: usize) {
    let r = room(n);
    let (mut node, mut ms) = room_of(n, r);
    let epoch = node.epoch();
    let outs: Vec<_> = ms
        .iter_mut()
        .map(|m| m.commit(r, &[], &[], &all).expect("commit"))
        .collect();
    // The node sequences the winner first; every other commit is then stale.
    node = node
        .stage_commit(&outs[winner].commit, &outs[winner].group_info, &all)
        .expect("the first commit is accepted");
    for (i, out) in outs.iter().enumerate() {
        if i != winner {
            assert_eq!(
                node.stage_commit(&out.commit, &out.group_info, &all),
                Err(PublicError::WrongEpoch {
                    expected: epoch + 1,
                    got: epoch
                })
            );
        }
    }
    for (i, m) in ms.iter_mut().enumerate() {
        let handled = m
            .process_handshake(r, &outs[winner].commit, &all)
            .expect("process the winner");
        if i == winner {
            assert_eq!(handled, Handled::Own { epoch: epoch + 1 });
        } else {
            assert_eq!(
                handled,
                Handled::Applied {
                    epoch: epoch + 1,
                    discarded_own: true
                }
            );
            assert_eq!(m.pending(r), None);
        }
    }
    let auth = ms[0].epoch_authenticator(r);
    for m in &ms {
        assert_eq!(m.epoch(r), Some(node.epoch()));
        assert_eq!(m.epoch_authenticator(r), auth);
    }
    // And the room still talks.
    let ct = ms[winner]
        .encrypt(r, b"settled", &commitment(1))
        .expect("encrypt");
    let reader = (winner + 1) % ms.len();
    assert_eq!(
        ms[reader].decrypt(r, &ct, &commitment(1)).expect("decrypt"),
        b"settled"
    );
}

#[test]
fn every_member_commits_in_the_same_epoch() {
    for n in 2..=10u8 {
        race(n, (n as usize * 7) % n as usize);
        race(n, n as usize - 1);
    }
}
