//! Shared helpers: fixed keys and ids, a fixed time, and a node that follows
//! rooms with `PublicRoom`.
#![allow(dead_code)] // each test binary uses some of these.
#![allow(clippy::expect_used)] // Test setup: a failure is a broken test.

use backchannel_codec::{RoomId, TalksId};
use backchannel_crypto::{PublicKey, SecretKey, Signer as _};
use backchannel_mls::{Member, Outgoing, PublicRoom};
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::SignatureScheme;

/// A device key as an OpenMLS signer (through `sign_mls`), for tests that
/// build MLS messages with raw OpenMLS.
pub struct TestSigner(pub SecretKey);

impl Signer for TestSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        self.0
            .sign_mls(payload)
            .map(|s| s.to_vec())
            .map_err(|_| SignerError::SigningError)
    }
    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// A fixed "now" (2026-01-01). OpenMLS itself compares key package
/// lifetimes with the system clock, so test key packages live long enough
/// to cover any run of these tests (20 years) whatever the date.
pub const NOW: u64 = 1_767_225_600;
pub const LIFETIME: u64 = 20 * 365 * 24 * 3600;

pub const TALKS: TalksId = TalksId([7; 16]);

pub fn room(n: u8) -> RoomId {
    RoomId([n; 16])
}

pub fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32]).expect("seed gives a valid key")
}

pub fn public(n: u8) -> PublicKey {
    key(n).public_key()
}

pub fn member(n: u8) -> Member {
    Member::new(TALKS, key(n))
}

pub fn all(_: &PublicKey) -> bool {
    true
}

pub fn commitment(n: u8) -> [u8; 32] {
    [n; 32]
}

/// One key package of `m`.
pub fn kp(m: &mut Member) -> Vec<u8> {
    m.key_packages(1, false, NOW, LIFETIME)
        .expect("key package")
        .remove(0)
}

/// A room created by `creator`, with the node following it.
pub fn create(creator: &mut Member, r: RoomId) -> PublicRoom {
    let info = creator.create_room(r).expect("create room");
    PublicRoom::create(TALKS, r, &info, &creator.device(), &all).expect("node accepts the room")
}

/// `committer` commits (adds `add`, removes `remove`); the node accepts it;
/// the committer merges; every `others` processes it; returns the outgoing.
pub fn commit_all(
    node: &mut PublicRoom,
    r: RoomId,
    committer: &mut Member,
    others: &mut [&mut Member],
    add: &[Vec<u8>],
    remove: &[PublicKey],
) -> Outgoing {
    let out = committer.commit(r, add, remove, &all).expect("commit");
    *node = node
        .stage_commit(&out.commit, &out.group_info, &all)
        .expect("node accepts the commit");
    committer.merge_pending(r).expect("merge");
    for o in others.iter_mut() {
        o.process_handshake(r, &out.commit, &all)
            .expect("process commit");
    }
    out
}

/// A room of `n` devices (seeds 1..=n), device 1 the creator, the others
/// added in one commit and joined from its Welcome.
pub fn room_of(n: u8, r: RoomId) -> (PublicRoom, Vec<Member>) {
    let mut members: Vec<Member> = (1..=n).map(member).collect();
    let mut node = create(&mut members[0], r);
    if n > 1 {
        let kps: Vec<Vec<u8>> = members[1..].iter_mut().map(kp).collect();
        let (first, rest) = members.split_at_mut(1);
        let out = commit_all(&mut node, r, &mut first[0], &mut [], &kps, &[]);
        let welcome = out.welcome.expect("a welcome for the added");
        for m in rest.iter_mut() {
            assert_eq!(m.join(&welcome, &all).expect("join"), Some(r));
        }
    }
    (node, members)
}
