//! Framing of every message kind, and clear errors on bad input.
#![allow(clippy::expect_used)] // Test helpers: a failure is a broken test.

mod common;

use backchannel_mls::{
    CIPHERSUITE, DecryptError, Framing, FramingError, MemberError, PublicError, PublicRoom,
    check_key_package, read_framing,
};
use common::*;
use openmls::prelude::{
    BasicCredential, CredentialWithKey, GroupId, MlsGroup, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY,
    PURE_PLAINTEXT_WIRE_FORMAT_POLICY, WireFormatPolicy, tls_codec::Serialize as _,
};
use openmls::treesync::LeafNodeParameters;
use openmls_rust_crypto::OpenMlsRustCrypto;

/// A group made with OpenMLS directly (to make what `Member` never makes).
fn raw_group(id: &[u8], policy: WireFormatPolicy) -> (OpenMlsRustCrypto, TestSigner, MlsGroup) {
    let provider = OpenMlsRustCrypto::default();
    let signer = TestSigner(key(1));
    let credential = CredentialWithKey {
        credential: BasicCredential::new(public(1).as_bytes().to_vec()).into(),
        signature_key: public(1).as_bytes().to_vec().into(),
    };
    let group = MlsGroup::builder()
        .with_group_id(GroupId::from_slice(id))
        .ciphersuite(CIPHERSUITE)
        .with_wire_format_policy(policy)
        .build(&provider, &signer, credential)
        .expect("group");
    (provider, signer, group)
}

#[test]
fn framing_of_every_kind() {
    let r = room(1);
    let (mut node, mut ms) = room_of(1, r);
    let mut bob = member(2);
    let k = kp(&mut bob);
    assert_eq!(read_framing(&k), Ok(Framing::KeyPackage));
    let reference = check_key_package(&k, &public(2), NOW, LIFETIME)
        .expect("valid")
        .reference;

    let out = ms[0].commit(r, &[k], &[], &all).expect("commit");
    assert_eq!(
        read_framing(&out.commit),
        Ok(Framing::Commit {
            talks: TALKS,
            room: r,
            epoch: 0
        })
    );
    assert_eq!(
        read_framing(&out.group_info),
        Ok(Framing::GroupInfo {
            talks: TALKS,
            room: r,
            epoch: 1
        })
    );
    let welcome = out.welcome.clone().expect("welcome");
    assert_eq!(
        read_framing(&welcome),
        Ok(Framing::Welcome {
            key_packages: vec![reference]
        })
    );
    node = node
        .stage_commit(&out.commit, &out.group_info, &all)
        .expect("accepted");
    ms[0].merge_pending(r).expect("merge");
    bob.join(&welcome, &all).expect("join");
    assert_eq!(node.epoch(), 1);

    let ct = ms[0].encrypt(r, b"x", &commitment(5)).expect("encrypt");
    assert_eq!(
        read_framing(&ct),
        Ok(Framing::Application {
            talks: TALKS,
            room: r,
            epoch: 1,
            authenticated_data: commitment(5).to_vec()
        })
    );

    let id = backchannel_mls::group_id(TALKS, r);
    let (provider, signer, mut group) = raw_group(&id, PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
    let (proposal, _) = group
        .propose_self_update(&provider, &signer, LeafNodeParameters::default())
        .expect("proposal");
    let proposal = proposal.tls_serialize_detached().expect("bytes");
    assert_eq!(
        read_framing(&proposal),
        Ok(Framing::Proposal {
            talks: TALKS,
            room: r,
            epoch: 0
        })
    );
    // The member side handles commits only.
    assert_eq!(
        ms[0].process_handshake(r, &proposal, &all),
        Err(MemberError::WrongMessage("a commit"))
    );
}

#[test]
fn framing_refusals() {
    // Garbage, empty, truncated, trailing bytes.
    assert!(matches!(read_framing(b""), Err(FramingError::Decode(_))));
    assert!(matches!(
        read_framing(b"\x00\x01\x00\x09garbage"),
        Err(FramingError::Decode(_))
    ));
    assert_eq!(
        read_framing(b"\x00\x02\x00\x01"),
        Err(FramingError::WrongVersion(2))
    );
    let mut m = member(1);
    let k = kp(&mut m);
    for cut in [4, 5, 8, k.len() / 2, k.len() - 1] {
        assert!(
            matches!(read_framing(&k[..cut]), Err(FramingError::Decode(_))),
            "truncated at {cut}"
        );
    }
    let mut long = k.clone();
    long.push(0);
    assert_eq!(read_framing(&long), Err(FramingError::TrailingBytes(1)));
    // Another ciphersuite (MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519).
    let mut other = k.clone();
    other[6..8].copy_from_slice(&[0, 1]);
    assert_eq!(read_framing(&other), Err(FramingError::WrongCiphersuite(1)));

    // An encrypted handshake.
    let id = backchannel_mls::group_id(TALKS, room(1));
    let (provider, signer, mut group) = raw_group(&id, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY);
    let commit = group
        .self_update(&provider, &signer, LeafNodeParameters::default())
        .expect("commit")
        .into_commit()
        .tls_serialize_detached()
        .expect("bytes");
    assert_eq!(read_framing(&commit), Err(FramingError::PrivateHandshake));

    // A group id that is not talks ‖ room.
    let (provider, signer, mut group) = raw_group(&[1; 16], PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
    let commit = group
        .self_update(&provider, &signer, LeafNodeParameters::default())
        .expect("commit")
        .into_commit()
        .tls_serialize_detached()
        .expect("bytes");
    assert_eq!(read_framing(&commit), Err(FramingError::BadGroupId(16)));

    // An unencrypted application message (OpenMLS never makes one; built
    // by hand: PublicMessage, member sender 0, empty authenticated data,
    // content type application, then signature and membership tag).
    let mut public_app = vec![0, 1, 0, 1, 32];
    public_app.extend_from_slice(&id);
    public_app.extend_from_slice(&[0; 8]); // epoch
    public_app.extend_from_slice(&[1, 0, 0, 0, 0]); // sender: member 0
    public_app.push(0); // authenticated data
    public_app.push(1); // content type: application
    public_app.extend_from_slice(&[3, b'a', b'b', b'c']);
    public_app.extend_from_slice(&[0x40, 64]); // signature: varint 64
    public_app.extend_from_slice(&[0; 64]);
    public_app.push(32);
    public_app.extend_from_slice(&[0; 32]);
    assert_eq!(
        read_framing(&public_app),
        Err(FramingError::PublicApplication)
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    let r = room(2);
    let (mut node, mut ms) = room_of(2, r);
    // Garbage and truncation everywhere.
    assert!(matches!(
        node.stage_commit(b"garbage", b"garbage", &all),
        Err(PublicError::Framing(_))
    ));
    assert!(matches!(
        ms[0].process_handshake(r, b"\x00\x01", &all),
        Err(MemberError::Framing(_))
    ));
    assert!(matches!(
        ms[0].decrypt(r, b"\x00\x01\x00\x02", &commitment(1)),
        Err(DecryptError::Malformed(_))
    ));
    assert!(matches!(
        ms[0].join(b"", &all),
        Err(MemberError::Framing(_))
    ));
    assert!(PublicRoom::from_bytes(b"\x01").is_err());
    assert!(backchannel_mls::Member::from_bytes(TALKS, key(1), b"junk").is_err());
    let truncated_state = node.to_bytes();
    assert!(PublicRoom::from_bytes(&truncated_state[..truncated_state.len() - 1]).is_err());

    let (a, b) = ms.split_at_mut(1);
    let first = a[0].commit(r, &[], &[], &all).expect("commit");
    let cut = &first.commit[..first.commit.len() - 3];
    assert!(matches!(
        node.stage_commit(cut, &first.group_info, &all),
        Err(PublicError::Framing(FramingError::Decode(_)))
    ));
    // The GroupInfo of the commit, and only it.
    assert!(matches!(
        node.stage_commit(&first.commit, &first.commit, &all),
        Err(PublicError::WrongMessage(_))
    ));
    let old_info = b[0].commit(r, &[], &[], &all).expect("commit").group_info;
    b[0].discard_pending(r);
    assert!(matches!(
        node.stage_commit(&first.commit, &old_info, &all),
        Err(PublicError::GroupInfoMismatch(_))
    ));
    node = node
        .stage_commit(&first.commit, &first.group_info, &all)
        .expect("accepted");
    a[0].merge_pending(r).expect("merge");
    b[0].process_handshake(r, &first.commit, &all)
        .expect("process");

    // A stale commit: the node and the members say so.
    assert_eq!(
        node.stage_commit(&first.commit, &first.group_info, &all),
        Err(PublicError::WrongEpoch {
            expected: 2,
            got: 1
        })
    );
    assert_eq!(
        b[0].process_handshake(r, &first.commit, &all),
        Err(MemberError::WrongEpoch {
            message: 1,
            current: 2
        })
    );
    // A handshake of another room; a message of a room never joined.
    assert_eq!(
        b[0].process_handshake(room(3), &first.commit, &all),
        Err(MemberError::WrongRoom)
    );
    assert_eq!(
        b[0].commit(room(3), &[], &[], &all),
        Err(MemberError::NotMember(room(3)))
    );
    assert_eq!(b[0].merge_pending(r), Err(MemberError::NoPendingCommit));
    assert_eq!(
        b[0].commit(r, &[], &[public(9)], &all),
        Err(MemberError::NotInRoom(public(9)))
    );
    assert_eq!(
        b[0].commit(r, &[], &[public(2)], &all),
        Err(MemberError::RemoveSelf)
    );
    b[0].commit(r, &[], &[], &all).expect("commit");
    assert_eq!(
        b[0].commit(r, &[], &[], &all),
        Err(MemberError::PendingCommit)
    );
    // The room's creation: only epoch 0, only its creator, only this room.
    let mut c = member(3);
    let info = c.create_room(room(4)).expect("room");
    assert_eq!(
        PublicRoom::create(TALKS, room(4), &info, &public(1), &all),
        Err(PublicError::NotCreator)
    );
    assert_eq!(
        PublicRoom::create(TALKS, room(5), &info, &public(3), &all),
        Err(PublicError::WrongRoom)
    );
    assert_eq!(
        PublicRoom::create(TALKS, r, &first.group_info, &public(1), &all),
        Err(PublicError::WrongEpoch {
            expected: 0,
            got: 2
        })
    );
    assert!(matches!(
        PublicRoom::create(TALKS, room(4), &info, &public(3), &|_| false),
        Err(PublicError::Leaf(_))
    ));
    // Creating a room twice.
    assert_eq!(
        c.create_room(room(4)),
        Err(MemberError::AlreadyMember(room(4)))
    );
}
