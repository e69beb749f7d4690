//! The leaf rule and `admits`, one refusal each, on the member's side and
//! the node's.
#![allow(clippy::expect_used)] // Test helpers: a failure is a broken test.

mod common;

use backchannel_crypto::PublicKey;
use backchannel_mls::{CIPHERSUITE, LeafError, MemberError, PublicError, check_key_package};
use common::*;
use openmls::prelude::{
    BasicCredential, CredentialWithKey, KeyPackage, Lifetime, MlsMessageOut,
    tls_codec::Serialize as _,
};
use openmls_rust_crypto::OpenMlsRustCrypto;

/// A key package signed by device `n` whose credential names `identity`.
fn forged_key_package(n: u8, identity: &PublicKey) -> Vec<u8> {
    let provider = OpenMlsRustCrypto::default();
    let signer = TestSigner(key(n));
    let credential = CredentialWithKey {
        credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
        signature_key: public(n).as_bytes().to_vec().into(),
    };
    let bundle = KeyPackage::builder()
        .key_package_lifetime(Lifetime::init(NOW, NOW + LIFETIME))
        .build(CIPHERSUITE, &provider, &signer, credential)
        .expect("key package");
    MlsMessageOut::from(bundle.key_package().clone())
        .tls_serialize_detached()
        .expect("serialize")
}

fn not(n: u8) -> impl Fn(&PublicKey) -> bool {
    move |k: &PublicKey| *k != public(n)
}

#[test]
fn a_welcome_whose_tree_holds_a_refused_leaf_is_refused() {
    let r = room(1);
    let (mut node, mut ms) = room_of(2, r);
    let mut carol = member(3);
    let k = kp(&mut carol);
    let (a, b) = ms.split_at_mut(1);
    let out = commit_all(&mut node, r, &mut a[0], &mut [&mut b[0]], &[k], &[]);
    let welcome = out.welcome.expect("welcome");
    assert_eq!(
        carol.join(&welcome, &not(2)),
        Err(MemberError::Leaf(LeafError::NotAdmitted(public(2))))
    );
    assert!(carol.rooms().is_empty());
    // The refusal changed nothing: the key package still joins.
    assert_eq!(carol.join(&welcome, &all), Ok(Some(r)));
}

#[test]
fn an_add_of_a_refused_key_package_is_refused_by_member_and_node() {
    let r = room(2);
    let (node, mut ms) = room_of(2, r);
    let mut mallory = member(6);
    let k = kp(&mut mallory);
    assert_eq!(
        ms[0].commit(r, std::slice::from_ref(&k), &[], &not(6)),
        Err(MemberError::Leaf(LeafError::NotAdmitted(public(6))))
    );
    assert_eq!(ms[0].pending(r), None);
    let out = ms[0].commit(r, &[k], &[], &all).expect("commit");
    assert_eq!(
        node.stage_commit(&out.commit, &out.group_info, &not(6)),
        Err(PublicError::Leaf(LeafError::NotAdmitted(public(6))))
    );
    // And a member processing it refuses it too, leaving its state alone.
    let before = ms[1].to_bytes();
    assert_eq!(
        ms[1].process_handshake(r, &out.commit, &not(6)),
        Err(MemberError::Leaf(LeafError::NotAdmitted(public(6))))
    );
    assert_eq!(ms[1].to_bytes(), before);
}

#[test]
fn a_commit_by_a_refused_committer_is_refused_by_node_and_member() {
    let r = room(3);
    let (node, mut ms) = room_of(2, r);
    let out = ms[1].commit(r, &[], &[], &all).expect("commit");
    assert_eq!(
        node.stage_commit(&out.commit, &out.group_info, &not(2)),
        Err(PublicError::Leaf(LeafError::NotAdmitted(public(2))))
    );
    // The member checks the commit's UpdatePath leaf before merging, and
    // its state stays as it was.
    let before = ms[0].to_bytes();
    assert_eq!(
        ms[0].process_handshake(r, &out.commit, &not(2)),
        Err(MemberError::Leaf(LeafError::NotAdmitted(public(2))))
    );
    assert_eq!(ms[0].to_bytes(), before);
    assert!(
        node.stage_commit(&out.commit, &out.group_info, &all)
            .is_ok()
    );
}

#[test]
fn an_external_commit_by_a_refused_joiner_is_refused_by_the_node() {
    let r = room(4);
    let (mut node, mut ms) = room_of(2, r);
    let (a, b) = ms.split_at_mut(1);
    let info = commit_all(&mut node, r, &mut a[0], &mut [&mut b[0]], &[], &[]).group_info;
    let mut mallory = member(6);
    let out = mallory.rejoin(r, &info, &all).expect("external commit");
    assert_eq!(
        node.stage_commit(&out.commit, &out.group_info, &not(6)),
        Err(PublicError::Leaf(LeafError::NotAdmitted(public(6))))
    );
    // A member told the same refuses it as well.
    assert_eq!(
        ms[0].process_handshake(r, &out.commit, &not(6)),
        Err(MemberError::Leaf(LeafError::NotAdmitted(public(6))))
    );
    // The rejoining side checks the tree it joins.
    assert_eq!(
        member(7).rejoin(r, &info, &not(1)).map(|_| ()),
        Err(MemberError::Leaf(LeafError::NotAdmitted(public(1))))
    );
}

#[test]
fn a_credential_naming_another_key_is_refused_everywhere() {
    let forged = forged_key_package(6, &public(5));
    assert_eq!(
        check_key_package(&forged, &public(6), NOW, LIFETIME),
        Err(PublicError::Leaf(LeafError::IdentityNotSignatureKey))
    );
    assert_eq!(
        check_key_package(&forged, &public(5), NOW, LIFETIME),
        Err(PublicError::Leaf(LeafError::IdentityNotSignatureKey))
    );
    let r = room(5);
    let (_node, mut ms) = room_of(1, r);
    assert_eq!(
        ms[0].commit(r, &[forged], &[], &all),
        Err(MemberError::Leaf(LeafError::IdentityNotSignatureKey))
    );
    // A well-formed one passes.
    let mut eve = member(5);
    let good = kp(&mut eve);
    let info = check_key_package(&good, &public(5), NOW, LIFETIME).expect("valid");
    assert!(!info.last_resort);
    assert_eq!(info.not_after, NOW + LIFETIME);
    assert_eq!(
        check_key_package(&good, &public(6), NOW, LIFETIME),
        Err(PublicError::WrongDevice)
    );
}

#[test]
fn key_package_lifetimes_are_checked_against_the_given_time() {
    let mut eve = member(5);
    let kps = eve
        .key_packages(1, true, NOW, LIFETIME)
        .expect("key packages");
    assert_eq!(kps.len(), 2);
    let last = check_key_package(&kps[1], &public(5), NOW, LIFETIME).expect("valid");
    assert!(last.last_resort);
    assert!(matches!(
        check_key_package(&kps[0], &public(5), NOW - 1, LIFETIME),
        Err(PublicError::Expired { .. })
    ));
    assert!(matches!(
        check_key_package(&kps[0], &public(5), NOW + LIFETIME, LIFETIME),
        Err(PublicError::Expired { .. })
    ));
    assert!(matches!(
        check_key_package(&kps[0], &public(5), NOW, LIFETIME - 1),
        Err(PublicError::LifetimeTooLong { .. })
    ));
    // Not a key package at all.
    let (_node, mut ms) = room_of(1, room(6));
    let info = ms[0].create_room(room(7)).expect("room");
    assert_eq!(
        check_key_package(&info, &public(1), NOW, LIFETIME),
        Err(PublicError::WrongMessage("a key package"))
    );
}
