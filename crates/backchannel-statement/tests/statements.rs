//! Statement frame, payloads, access lists and headers, end to end.

use backchannel_codec::{
    Decode, DecodeError, Encode, PartyId, PrincipalId, RoomId, TalksId, Writer,
};
use backchannel_crypto::{Digest, KeyId, PublicKey, Signature, Signer, sha256};
use backchannel_statement::access_list::{
    FLAG_DESIGNATED_SIGNER, FLAG_DEVICE, FLAG_MAY_PROPOSE, FLAG_MEDIATOR,
};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::header::{BODY_BUCKETS, pad_body, unpad_body};
use backchannel_statement::roster::MemberFields;
use backchannel_statement::*;

fn payloads(t: &fixtures::Talks) -> Vec<(u8, PartyId, Payload)> {
    let roster = SignedStatement::decode(
        t.statement(
            1,
            &key(OMAN_LEAD),
            t.oman,
            Payload::Roster(t.roster.clone()),
        )
        .as_bytes(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let rules = t.statement(
        2,
        &key(OMAN_LEAD),
        t.oman,
        Payload::GroundRules(t.ground_rules.clone()),
    );
    vec![
        (OMAN_LEAD, t.oman, Payload::Roster(t.roster.clone())),
        (
            OMAN_LEAD,
            t.oman,
            Payload::GroundRules(t.ground_rules.clone()),
        ),
        (
            US_TALKS,
            t.us,
            Payload::Acceptance(Acceptance {
                roster: roster.unverified().id,
                roster_hash: roster.hash(),
                ground_rules: rules.unverified().id,
                ground_rules_hash: rules.hash(),
            }),
        ),
        (
            US_HEAD,
            t.us,
            Payload::DeviceCert(DeviceCert {
                principal: fixtures::PRINCIPALS[1],
                device_key: key(0x99).public_key(),
                not_after: 1_767_225_600_000,
            }),
        ),
        (
            US_TALKS,
            t.us,
            Payload::MemberCert(
                MemberCert::new(
                    fixtures::PRINCIPALS[3],
                    t.us,
                    Role::Negotiator,
                    key(US_NEGOTIATOR).public_key(),
                    vec![Act::ProposeText, Act::ReleaseMessage],
                    None,
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
        ),
        (
            US_HEAD,
            t.us,
            Payload::Revoke(Revoke {
                key: key(US_HEAD_DEVICE).public_key().id(),
                reason: RevokeReason::Lost,
                lost_at: Some(1_705_000_000_000),
            }),
        ),
        (
            IRAN_TALKS,
            t.iran,
            Payload::Lifecycle(
                LifecycleChange::new(LifecyclePhase::Suspended, "Consultations in Tehran.")
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
        ),
        (
            US_HEAD,
            t.us,
            Payload::HistoryShared(
                HistoryShared::new(
                    fixtures::PRINCIPALS[3],
                    vec![t.record, t.us_caucus],
                    12,
                    Digest([0x71; 32]),
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
        ),
        (
            OMAN_TALKS,
            t.oman,
            Payload::AuthorityPassed(reappointed(t, &[IRAN_TALKS])),
        ),
    ]
}

/// The US talks authority re-appointed by Oman: the successor's signature,
/// the US long-term authority's certification, endorsements by `endorsers`.
fn reappointed(t: &fixtures::Talks, endorsers: &[u8]) -> AuthorityPassed {
    let old = key(US_TALKS).public_key().id();
    let new = key(US_TALKS_SUCCESSOR).public_key();
    let how = PassedHow::Reappointed;
    let sign = |label: u8| {
        AuthorityPassed::sign_transfer(&key(label), t.talks, t.us, &old, &new, how)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let mut endorsements: Vec<Endorsement> = endorsers
        .iter()
        .map(|l| Endorsement {
            key: key(*l).public_key().id(),
            signature: sign(*l),
        })
        .collect();
    endorsements.sort_by_key(|e| e.key);
    AuthorityPassed::new(
        t.us,
        old,
        new,
        how,
        sign(US_TALKS_SUCCESSOR),
        Some(sign(US_AUTHORITY)),
        endorsements,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_payload_round_trips_and_verifies() {
    let t = fixtures::talks();
    for (i, (label, party, payload)) in payloads(&t).into_iter().enumerate() {
        let signer = key(label);
        let signed = t.statement(100 + i as u64, &signer, party, payload.clone());
        let decoded = SignedStatement::decode(signed.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decoded, signed);
        assert_eq!(decoded.unverified().payload, payload);
        let verified = decoded
            .verify(t.talks, &signer.public_key())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            verified
                .check_room(t.record, &[t.oman, t.us, t.iran])
                .is_ok()
        );
        // Posted into a room outside its audience: refused.
        assert_eq!(
            verified.check_room(t.us_caucus, &[t.oman, t.us]),
            Err(VerifyError::OutsideAudience)
        );
        // Moved into other talks: refused.
        assert_eq!(
            decoded.verify(TalksId([9; 16]), &signer.public_key()),
            Err(VerifyError::OtherTalks)
        );
        // Another key: refused.
        assert_eq!(
            decoded.verify(t.talks, &key(0x77).public_key()),
            Err(VerifyError::WrongKey)
        );
    }
}

#[test]
fn a_statement_re_signed_under_another_context_fails() {
    let t = fixtures::talks();
    let signer = key(US_HEAD);
    let signed = t.statement(
        5,
        &signer,
        t.us,
        Payload::Revoke(Revoke {
            key: key(US_HEAD_DEVICE).public_key().id(),
            reason: RevokeReason::Superseded,
            lost_at: None,
        }),
    );
    for ty in StatementType::ALL {
        let sig = signer
            .sign(ty.context(), signed.frame())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = signed.frame().to_vec();
        bytes.extend_from_slice(sig.as_bytes());
        let resigned = SignedStatement::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        let verdict = resigned.verify(t.talks, &signer.public_key());
        assert_eq!(verdict.is_ok(), ty == StatementType::Revoke, "{ty:?}");
    }
    // The envelope context, too.
    let sig = signer
        .sign(header::ENVELOPE_CONTEXT, signed.frame())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut bytes = signed.frame().to_vec();
    bytes.extend_from_slice(sig.as_bytes());
    let resigned = SignedStatement::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert!(resigned.verify(t.talks, &signer.public_key()).is_err());
}

#[test]
fn every_one_bit_change_is_rejected() {
    let t = fixtures::talks();
    let signer = key(US_HEAD);
    let signed = t.statement(
        6,
        &signer,
        t.us,
        Payload::DeviceCert(DeviceCert {
            principal: fixtures::PRINCIPALS[1],
            device_key: key(0x98).public_key(),
            not_after: 42,
        }),
    );
    let bytes = signed.as_bytes();
    for i in 0..bytes.len() * 8 {
        let mut b = bytes.to_vec();
        b[i / 8] ^= 1 << (i % 8);
        let ok = SignedStatement::decode(&b)
            .ok()
            .and_then(|s| s.verify(t.talks, &signer.public_key()).ok());
        assert!(ok.is_none(), "bit {i} flipped and still verified");
    }
}

#[test]
fn roster_verifies_and_its_tampering_does_not() {
    let t = fixtures::talks();
    let list = t
        .roster
        .verify_for(t.talks)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(list.hash(), t.roster.access_list_hash);
    // Certified for other talks.
    assert!(matches!(
        t.roster.verify_for(TalksId([2; 16])),
        Err(RosterError::Certification(_))
    ));
    // A substituted talks authority key.
    let mut r = t.roster.clone();
    r.parties[2].talks_authority_key = key(0x66).public_key();
    assert!(matches!(
        r.verify_for(t.talks),
        Err(RosterError::Certification(_))
    ));
    // A device slipped into a member's entry by the mediator: the member's
    // party did not certify it.
    let mut r = t.roster.clone();
    r.members[1].devices.push(key(0x65).public_key());
    r.members[1].devices.sort();
    assert_eq!(
        r.verify_for(t.talks),
        Err(RosterError::MemberCertification(fixtures::PRINCIPALS[1]))
    );
    // A member the mediator invents for the US, certified by the mediator.
    let mut r = t.roster.clone();
    let fake = MemberFields {
        principal: PrincipalId([0xa9; 16]),
        party: t.us,
        role: Role::Head,
        name: "Impostor".into(),
        identity_key: key(0x67).public_key(),
        devices: vec![key(0x68).public_key()],
        acts: vec![Act::SignAgreement],
    }
    .certify(t.talks, &key(OMAN_TALKS))
    .unwrap_or_else(|e| panic!("{e}"));
    r.members.push(fake);
    for room in r.rooms.iter_mut().filter(|room| room.room == t.record) {
        room.members.push(PrincipalId([0xa9; 16]));
        room.members.sort();
    }
    assert_eq!(
        r.verify_for(t.talks),
        Err(RosterError::MemberCertification(PrincipalId([0xa9; 16])))
    );
    // A room changed without updating the hash.
    let mut r = t.roster.clone();
    let caucus = r.rooms.iter_mut().find(|room| room.room == t.us_caucus);
    if let Some(caucus) = caucus {
        caucus.members.retain(|m| *m != fixtures::PRINCIPALS[3]);
    }
    assert_eq!(r.verify_for(t.talks), Err(RosterError::AccessListHash));
    // The proximity invariant: whatever the mediator signs, a US member in
    // Iran's caucus is refused, hash updated or not.
    let mut r = t.roster.clone();
    let caucus = r.rooms.iter_mut().find(|room| room.room == t.iran_caucus);
    if let Some(caucus) = caucus {
        caucus.members.push(fixtures::PRINCIPALS[3]);
        caucus.members.sort();
    }
    r.access_list_hash = r
        .implied_access_list(t.talks)
        .unwrap_or_else(|e| panic!("{e}"))
        .hash();
    assert!(matches!(
        r.verify_for(t.talks),
        Err(RosterError::RoomPurpose { room, .. }) if room == t.iran_caucus
    ));
    // No record room.
    let mut r = t.roster.clone();
    r.rooms.retain(|room| room.room != t.record);
    assert_eq!(r.check_structure(), Err(RosterError::RecordRoom));
    // A mediator role in a delegation.
    let mut r = t.roster.clone();
    r.members[1].role = Role::Lead;
    assert!(matches!(
        r.check_structure(),
        Err(RosterError::RoleKind { .. })
    ));
    // Decoding enforces structure.
    let mut r = t.roster.clone();
    r.members.swap(0, 1);
    assert!(Roster::from_canonical_bytes(&r.to_canonical_bytes()).is_err());
}

#[test]
fn member_certificates_respect_the_permission_matrix() {
    let cert = MemberCert::new(
        PrincipalId([1; 16]),
        PartyId([2; 16]),
        Role::Interpreter,
        key(0x90).public_key(),
        vec![Act::SignAgreement],
        None,
    );
    assert!(cert.is_err());
}

struct Change<'a> {
    talks: &'a fixtures::Talks,
    list: AccessList,
}

impl Change<'_> {
    fn check(
        &self,
        remove: Vec<u8>,
        upsert: Vec<AccessEntry>,
        signers: &[u8],
        expect: Result<(), &str>,
    ) {
        self.check_signed(
            remove,
            upsert,
            |delta| {
                signers
                    .iter()
                    .map(|l| delta.sign(&key(*l)).unwrap_or_else(|e| panic!("{e}")))
                    .collect()
            },
            expect,
        );
    }

    /// As [`Change::check`], with the signatures `sign` makes for the delta.
    fn check_signed(
        &self,
        remove: Vec<u8>,
        upsert: Vec<AccessEntry>,
        sign: impl FnOnce(&AccessListDelta) -> Vec<(KeyId, Signature)>,
        expect: Result<(), &str>,
    ) {
        let delta = AccessListDelta::new(
            self.talks.talks,
            self.list.hash(),
            remove.iter().map(|l| key(*l).public_key().id()).collect(),
            upsert,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let sigs = sign(&delta);
        let change = AccessListChange::new(delta, sigs).unwrap_or_else(|e| panic!("{e}"));
        let decoded = AccessListChange::from_canonical_bytes(&change.to_canonical_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decoded, change);
        match (self.list.apply(&change), expect) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(want)) => assert!(
                e.to_string().contains(want),
                "{e} does not contain {want:?}"
            ),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn access_list_changes_need_the_right_signatures() {
    let t = fixtures::talks();
    let list = t
        .roster
        .verify_for(t.talks)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        AccessList::from_canonical_bytes(&list.to_canonical_bytes()),
        Ok(list.clone())
    );
    let c = Change { talks: &t, list };
    let device = |label: u8, principal: PrincipalId, party, rooms: Vec<RoomId>| {
        AccessEntry::new(
            key(label).public_key(),
            principal,
            party,
            rooms,
            FLAG_DEVICE,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let us_head = fixtures::PRINCIPALS[1];
    // A member removes its own device.
    c.check(vec![US_HEAD_DEVICE], vec![], &[US_HEAD_DEVICE], Ok(()));
    // Not another member's device, even of the same party.
    c.check(
        vec![US_NEGOTIATOR_DEVICE],
        vec![],
        &[US_HEAD_DEVICE],
        Err("needs a device of its principal"),
    );
    // The party's designated signer removes a member's device; another party's cannot.
    c.check(vec![US_NEGOTIATOR_DEVICE], vec![], &[US_TALKS], Ok(()));
    c.check(
        vec![US_NEGOTIATOR_DEVICE],
        vec![],
        &[IRAN_TALKS],
        Err("needs a device of its principal"),
    );
    // Adding a US device to the US caucus: mediator + US.
    let new_us = device(0x90, us_head, t.us, vec![t.record, t.us_caucus]);
    c.check(
        vec![],
        vec![new_us.clone()],
        &[OMAN_TALKS, US_TALKS],
        Ok(()),
    );
    c.check(vec![], vec![new_us.clone()], &[US_TALKS], Err("mediator"));
    c.check(
        vec![],
        vec![new_us.clone()],
        &[OMAN_TALKS],
        Err("designated signer has not signed"),
    );
    // Putting a US device into Iran's caucus: Iran must sign too, whatever the mediator signs.
    let intruder = device(0x91, us_head, t.us, vec![t.iran_caucus]);
    c.check(
        vec![],
        vec![intruder.clone()],
        &[OMAN_TALKS, US_TALKS],
        Err("designated signer has not signed"),
    );
    c.check(
        vec![],
        vec![intruder],
        &[OMAN_TALKS, US_TALKS, IRAN_TALKS],
        Ok(()),
    );
    // A mediator cannot slip a key into a delegation's rooms by flagging it as its own.
    let disguised = AccessEntry::new(
        key(0x93).public_key(),
        PrincipalId([0xd0; 16]),
        t.iran,
        vec![t.iran_caucus],
        FLAG_DEVICE | FLAG_MEDIATOR,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    c.check(
        vec![],
        vec![disguised],
        &[OMAN_TALKS],
        Err("mediator flag must match"),
    );
    // A signer not on the list; a device signing where a designated signer is needed.
    c.check(
        vec![],
        vec![new_us.clone()],
        &[OMAN_TALKS, 0x55],
        Err("not on the current access list"),
    );
    c.check(
        vec![],
        vec![new_us],
        &[OMAN_LEAD_DEVICE, US_HEAD_DEVICE],
        Err("mediator"),
    );
    // Removing a key that is not there.
    c.check(vec![0x92], vec![], &[US_TALKS], Err("not on the list"));
}

#[test]
fn stale_or_forged_changes_change_nothing() {
    let t = fixtures::talks();
    let list = t
        .roster
        .verify_for(t.talks)
        .unwrap_or_else(|e| panic!("{e}"));
    let remove = vec![key(US_HEAD_DEVICE).public_key().id()];
    let stale = AccessListDelta::new(t.talks, Digest([7; 32]), remove.clone(), vec![])
        .unwrap_or_else(|e| panic!("{e}"));
    let sig = stale.sign(&key(US_TALKS)).unwrap_or_else(|e| panic!("{e}"));
    let change = AccessListChange::new(stale, vec![sig]).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        list.apply(&change),
        Err(AccessListError::StaleBase { .. })
    ));

    let delta = AccessListDelta::new(t.talks, list.hash(), remove, vec![])
        .unwrap_or_else(|e| panic!("{e}"));
    let (k, mut sig) = delta.sign(&key(US_TALKS)).unwrap_or_else(|e| panic!("{e}"));
    sig.0[0] ^= 1;
    let change = AccessListChange::new(delta, vec![(k, sig)]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(list.apply(&change), Err(AccessListError::BadSignature(k)));
    // Flags the node does not know are refused.
    assert!(
        AccessEntry::new(
            key(1).public_key(),
            PrincipalId([0; 16]),
            PartyId([0; 16]),
            vec![],
            0x80
        )
        .is_err()
    );
    assert!(
        list.get(&key(US_HEAD_DEVICE).public_key().id())
            .is_some_and(|e| e.has(FLAG_MAY_PROPOSE))
    );
}

#[test]
fn headers_sign_decode_and_bind_their_body() {
    let t = fixtures::talks();
    let device = key(US_HEAD_DEVICE);
    let body = pad_body(b"hello Muscat").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body.len(), 1024);
    assert_eq!(unpad_body(&body), Ok(&b"hello Muscat"[..]));
    let salt = Salt([3; 32]);
    let kinds = [
        Kind::MlsApp,
        Kind::MlsHandshake,
        Kind::Welcome,
        Kind::Alert(Severity::Flash),
        Kind::Ack(17),
        Kind::NodeTick,
    ];
    for kind in kinds {
        let header = Header {
            talks: t.talks,
            room: t.us_caucus,
            sender: device.public_key().id(),
            kind,
            idempotency_key: [5; 16],
            body_len: body.len() as u32,
            body_hash: sha256(&body),
            commitment: Commitment::to_plaintext(&salt, b"hello Muscat"),
        };
        let signed = header.sign(&device).unwrap_or_else(|e| panic!("{e}"));
        let bytes = signed.to_bytes();
        let decoded = SignedHeader::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decoded, signed);
        assert!(decoded.verify(&device.public_key()).is_ok());
        assert!(decoded.verify(&key(IRAN_HEAD_DEVICE).public_key()).is_err());
        assert!(decoded.check_body(&body).is_ok());
        assert!(decoded.header().commitment.opens(&salt, b"hello Muscat"));
        assert!(!decoded.header().commitment.opens(&salt, b"hello Tehran"));
        for i in 0..bytes.len() * 8 {
            let mut b = bytes;
            b[i / 8] ^= 1 << (i % 8);
            let ok = SignedHeader::decode(&b).is_ok_and(|h| h.verify(&device.public_key()).is_ok());
            assert!(!ok, "bit {i} flipped and still verified");
        }
    }
    // Not a bucket; another signer.
    let mut header = *SignedHeader::decode(
        &Header {
            talks: t.talks,
            room: t.record,
            sender: device.public_key().id(),
            kind: Kind::MlsApp,
            idempotency_key: [0; 16],
            body_len: 1024,
            body_hash: sha256(&body),
            commitment: Commitment([0; 32]),
        }
        .sign(&device)
        .unwrap_or_else(|e| panic!("{e}"))
        .to_bytes(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .header();
    assert!(header.sign(&key(IRAN_HEAD_DEVICE)).is_err());
    header.body_len = 1000;
    assert!(header.sign(&device).is_err());
}

#[test]
fn bodies_pad_to_buckets_and_refuse_bad_padding() {
    for (len, bucket) in [
        (0usize, 1024usize),
        (1020, 1024),
        (1021, 4096),
        ((1 << 20) - 4, 1 << 20),
    ] {
        let body = pad_body(&vec![1; len]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body.len(), bucket);
        assert!(BODY_BUCKETS.contains(&(bucket as u32)));
    }
    assert!(pad_body(&vec![1; (1 << 20) - 3]).is_err());
    let mut body = pad_body(b"x").unwrap_or_else(|e| panic!("{e}"));
    body[100] = 1;
    assert!(unpad_body(&body).is_err());
    assert!(unpad_body(&[0, 0, 0, 9, 1]).is_err());
    let mut body = pad_body(b"x").unwrap_or_else(|e| panic!("{e}"));
    body[0] = 0xff;
    assert!(unpad_body(&body).is_err());
}

#[test]
fn fixture_keys_are_valid_and_distinct() {
    let labels = [
        OMAN_AUTHORITY,
        US_AUTHORITY,
        IRAN_AUTHORITY,
        OMAN_TALKS,
        US_TALKS,
        IRAN_TALKS,
        US_TALKS_SUCCESSOR,
        IRAN_TALKS_SUCCESSOR,
        OMAN_LEAD,
        US_HEAD,
        IRAN_HEAD,
        US_NEGOTIATOR,
        OMAN_LEAD_DEVICE,
        US_HEAD_DEVICE,
        IRAN_HEAD_DEVICE,
        US_NEGOTIATOR_DEVICE,
        NODE_LOG,
    ];
    let mut ids: Vec<_> = labels.iter().map(|l| key(*l).public_key().id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), labels.len());
}

#[test]
fn non_canonical_values_are_refused() {
    let t = fixtures::talks();
    // A short message padded to a larger bucket than the smallest.
    let mut body = vec![0u8; 4096];
    body[3] = 1;
    body[4] = b'x';
    assert!(unpad_body(&body).is_err());
    // A time of loss on a superseded key.
    let bad = Revoke {
        key: key(US_HEAD_DEVICE).public_key().id(),
        reason: RevokeReason::Superseded,
        lost_at: Some(1),
    };
    assert!(Revoke::from_canonical_bytes(&bad.to_canonical_bytes()).is_err());
    // One key in two roles.
    let mut r = t.roster.clone();
    r.members[3].identity_key = r.members[1].identity_key;
    assert!(matches!(r.check_structure(), Err(RosterError::Shape(_))));
    // A statement signed by a key other than its author.
    let statement = Statement::new(
        &mut fixtures::rng(1),
        t.talks,
        key(US_HEAD).public_key().id(),
        t.us,
        vec![Audience::Room(t.record)],
        CheckpointRef::NONE,
        Markings::mediator_only(),
        Payload::Revoke(Revoke {
            key: key(US_HEAD_DEVICE).public_key().id(),
            reason: RevokeReason::Left,
            lost_at: None,
        }),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        statement.sign(&key(IRAN_HEAD)),
        Err(statement::BuildError::WrongSigner)
    ));
}

#[test]
fn lifecycle_changes_round_trip_and_decode_strictly() {
    use backchannel_statement::lifecycle::MAX_REASON_BYTES;

    // Every phase, with reasons up to the limit, round-trips.
    for phase in LifecyclePhase::ALL {
        for reason in [
            "",
            "Talks adjourn.\nNext round in Muscat.",
            &"é".repeat(512),
        ] {
            let change = LifecycleChange::new(phase, reason).unwrap_or_else(|e| panic!("{e}"));
            let bytes = change.to_canonical_bytes();
            assert_eq!(bytes[0], phase as u8);
            assert_eq!(&bytes[1..5], &(reason.len() as u32).to_be_bytes());
            assert_eq!(&bytes[5..], reason.as_bytes());
            assert_eq!(LifecycleChange::from_canonical_bytes(&bytes), Ok(change));
        }
    }
    let encode = |phase: u8, reason: &[u8]| {
        let mut b = vec![phase];
        b.extend_from_slice(&(reason.len() as u32).to_be_bytes());
        b.extend_from_slice(reason);
        b
    };
    let decode = |b: &[u8]| LifecycleChange::from_canonical_bytes(b);
    assert!(decode(&encode(1, b"ok")).is_ok());
    // Unknown phases.
    for phase in [0u8, 5, 0xff] {
        assert!(
            matches!(
                decode(&encode(phase, b"")),
                Err(DecodeError::UnknownValue {
                    field: "lifecycle phase",
                    ..
                })
            ),
            "phase {phase}"
        );
    }
    // Over the limit, even by one byte.
    assert!(matches!(
        decode(&encode(1, &[b'x'; MAX_REASON_BYTES + 1])),
        Err(DecodeError::TooLong { .. })
    ));
    assert!(decode(&encode(1, &[b'x'; MAX_REASON_BYTES])).is_ok());
    // Not UTF-8, not NFC, control characters (tab and CR too), bidi overrides.
    assert!(matches!(
        decode(&encode(1, b"\xff")),
        Err(DecodeError::BadUtf8 { .. })
    ));
    for bad in ["e\u{301}", "a\tb", "a\r\nb", "nul\0", "\u{202E}x"] {
        assert!(
            matches!(
                decode(&encode(1, bad.as_bytes())),
                Err(DecodeError::Invalid {
                    field: "lifecycle reason",
                    ..
                })
            ),
            "{bad:?}"
        );
        assert!(LifecycleChange::new(LifecyclePhase::Resumed, bad).is_err());
    }
    assert_eq!(
        LifecycleChange::new(LifecyclePhase::Closed, "x".repeat(MAX_REASON_BYTES + 1)),
        Err(LifecycleError::ReasonTooLong)
    );
    // Trailing bytes, and a length past the end.
    let mut long = encode(2, b"ok");
    long.push(0);
    assert!(matches!(
        decode(&long),
        Err(DecodeError::TrailingBytes { .. })
    ));
    assert!(decode(&encode(2, b"ok")[..6]).is_err());
    // Inside a statement: type code 8, and the payload decodes strictly there too.
    let t = fixtures::talks();
    let signed = t.statement(
        7,
        &key(US_TALKS),
        t.us,
        Payload::Lifecycle(
            LifecycleChange::new(LifecyclePhase::Suspended, "Consultations.")
                .unwrap_or_else(|e| panic!("{e}")),
        ),
    );
    assert_eq!(StatementType::Lifecycle.code(), 8);
    assert_eq!(signed.frame()[1..3], [0, 8]);
    assert_eq!(
        StatementType::Lifecycle.context().as_str(),
        "backchannel/v1/statement/lifecycle"
    );
    assert_eq!(StatementType::from_code(8), Some(StatementType::Lifecycle));
    assert_eq!(StatementType::from_code(16), None);
    let decoded = SignedStatement::decode(signed.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decoded, signed);
    // The payload is the frame's last field: its last byte, before the
    // 64-byte signature, is the reason's last byte. A tab there is refused.
    let mut bytes = signed.as_bytes().to_vec();
    let last = bytes.len() - 65;
    assert_eq!(bytes[last], b'.');
    bytes[last] = b'\t';
    assert!(matches!(
        SignedStatement::decode(&bytes),
        Err(DecodeError::Invalid {
            field: "lifecycle reason",
            ..
        })
    ));
}

#[test]
fn a_principal_belongs_to_one_party_and_old_changes_cannot_be_replayed() {
    let t = fixtures::talks();
    let list = t
        .roster
        .verify_for(t.talks)
        .unwrap_or_else(|e| panic!("{e}"));
    // An Iranian device claiming the US head's principal, to reach the US caucus.
    let borrowed = AccessEntry::new(
        key(0x94).public_key(),
        fixtures::PRINCIPALS[1],
        t.iran,
        vec![t.us_caucus],
        FLAG_DEVICE,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let delta = AccessListDelta::new(t.talks, list.hash(), vec![], vec![borrowed])
        .unwrap_or_else(|e| panic!("{e}"));
    let sigs = [OMAN_TALKS, IRAN_TALKS]
        .iter()
        .map(|l| delta.sign(&key(*l)).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let change = AccessListChange::new(delta, sigs).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        list.apply(&change),
        Err(AccessListError::PrincipalOfTwoParties(
            fixtures::PRINCIPALS[1]
        ))
    );

    // Remove a device, put it back: the list's contents are as before, but
    // its generation is not, so the old removal does not apply again.
    let device = list
        .get(&key(US_NEGOTIATOR_DEVICE).public_key().id())
        .cloned()
        .unwrap_or_else(|| panic!("fixture device"));
    let signed = |l: &AccessList, remove: Vec<_>, upsert: Vec<AccessEntry>, signers: &[u8]| {
        let delta = AccessListDelta::new(t.talks, l.hash(), remove, upsert)
            .unwrap_or_else(|e| panic!("{e}"));
        let sigs = signers
            .iter()
            .map(|s| delta.sign(&key(*s)).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        AccessListChange::new(delta, sigs).unwrap_or_else(|e| panic!("{e}"))
    };
    let removal = signed(&list, vec![device.key_id()], vec![], &[US_TALKS]);
    let l1 = list.apply(&removal).unwrap_or_else(|e| panic!("{e}"));
    let l2 = l1
        .apply(&signed(
            &l1,
            vec![],
            vec![device],
            &[OMAN_TALKS, US_TALKS, IRAN_TALKS],
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l2.entries(), list.entries());
    assert_eq!(l2.generation(), 2);
    assert!(matches!(
        l2.apply(&removal),
        Err(AccessListError::StaleBase { .. })
    ));
}

/// Each purpose's membership rule (`Roster::check_structure`), one
/// declared room at a time: the members given, with the purpose given, is
/// accepted or refused.
#[test]
fn rooms_hold_only_the_members_their_purpose_admits() {
    use backchannel_statement::roster::{RoomDecl, RoomPurpose as P};
    let t = fixtures::talks();
    let [lead, us_head, iran_head, us_neg] = fixtures::PRINCIPALS;
    let check = |purpose: P, members: &[PrincipalId], ok: bool| {
        let mut r = t.roster.clone();
        let mut members = members.to_vec();
        members.sort();
        r.rooms.push(RoomDecl {
            room: RoomId([0xee; 16]),
            purpose,
            name: "Room under test".into(),
            members,
        });
        r.rooms.sort_by_key(|d| d.room);
        let got = r.check_structure();
        assert_eq!(
            got.is_ok(),
            ok,
            "{purpose:?} with {members:?}: {got:?}",
            members = r.rooms.iter().find(|d| d.room == RoomId([0xee; 16]))
        );
        if !ok {
            assert!(
                matches!(got, Err(RosterError::RoomPurpose { .. })),
                "{got:?}"
            );
        }
    };
    check(P::PartyInternal, &[us_head, us_neg], true);
    check(P::PartyInternal, &[us_head, iran_head], false);
    check(P::PartyInternal, &[us_head, lead], false);
    check(P::Caucus, &[us_head, us_neg, lead], true);
    check(P::Caucus, &[us_head, lead, iran_head], false);
    check(P::Caucus, &[us_head], false);
    check(P::Mediators, &[lead], true);
    check(P::Mediators, &[lead, us_head], false);
    check(P::Plenary, &[lead, us_head, iran_head], true);
    check(P::Plenary, &[lead, us_head], false);
    check(P::Track, &[lead, us_neg, iran_head], true);
    check(P::Track, &[us_neg, iran_head], false);
    check(P::Bilateral, &[us_head, iran_head], true);
    check(P::Bilateral, &[us_head, lead], false);
    check(P::Letter, &[us_head, iran_head], true);
    check(P::Letter, &[us_head, iran_head, lead], false);
    check(P::Letter, &[us_head, us_neg], false);
    check(P::PrivateNotes, &[us_neg], true);
    check(P::PrivateNotes, &[us_neg, us_head], false);
    check(P::Hotline, &[], false);
}

#[test]
fn history_shares_round_trip_and_decode_strictly() {
    use backchannel_codec::DecodeError;
    use backchannel_statement::roster::MAX_ROOMS;

    let t = fixtures::talks();
    let to = fixtures::PRINCIPALS[3];
    let bundle = Digest([0x71; 32]);
    let share = HistoryShared::new(to, vec![t.record, t.us_caucus], 12, bundle)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(share.rooms(), [t.record, t.us_caucus]);
    assert_eq!(share.until(), 12);
    // to ‖ u32 count ‖ rooms ‖ until ‖ bundle.
    let bytes = share.to_canonical_bytes();
    assert_eq!(bytes.len(), 16 + 4 + 2 * 16 + 8 + 32);
    assert_eq!(&bytes[..16], to.as_bytes());
    assert_eq!(&bytes[16..20], &2u32.to_be_bytes());
    assert_eq!(&bytes[52..60], &12u64.to_be_bytes());
    assert_eq!(&bytes[60..], &bundle.0);
    assert_eq!(
        HistoryShared::from_canonical_bytes(&bytes),
        Ok(share.clone())
    );
    // The constructor sorts nothing and refuses what the decoder refuses.
    let new = |rooms: Vec<RoomId>, until| HistoryShared::new(to, rooms, until, bundle);
    assert_eq!(new(vec![], 1), Err(HistoryError::NoRooms));
    assert_eq!(
        new(vec![t.us_caucus, t.record], 1),
        Err(HistoryError::RoomsUnsorted)
    );
    assert_eq!(
        new(vec![t.record, t.record], 1),
        Err(HistoryError::RoomsUnsorted)
    );
    assert_eq!(new(vec![t.record], 0), Err(HistoryError::EmptyRange));
    let rooms = |n: usize| -> Vec<RoomId> {
        (0..n)
            .map(|i| {
                let mut id = [0u8; 16];
                id[8..].copy_from_slice(&(i as u64).to_be_bytes());
                RoomId(id)
            })
            .collect()
    };
    assert!(new(rooms(MAX_ROOMS), 1).is_ok());
    assert_eq!(
        new(rooms(MAX_ROOMS + 1), 1),
        Err(HistoryError::TooManyRooms)
    );
    // Over the limit on the wire: refused before allocation.
    let mut over = to.as_bytes().to_vec();
    over.extend_from_slice(&(MAX_ROOMS as u32 + 1).to_be_bytes());
    for r in rooms(MAX_ROOMS + 1) {
        over.extend_from_slice(r.as_bytes());
    }
    over.extend_from_slice(&1u64.to_be_bytes());
    over.extend_from_slice(&bundle.0);
    assert!(matches!(
        HistoryShared::from_canonical_bytes(&over),
        Err(DecodeError::TooLong { .. })
    ));
    // Trailing bytes.
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        HistoryShared::from_canonical_bytes(&long),
        Err(DecodeError::TrailingBytes { .. })
    ));
    // Inside a statement: type code 14, its own context, strict there too.
    let signed = t.statement(8, &key(US_HEAD), t.us, Payload::HistoryShared(share));
    assert_eq!(StatementType::HistoryShared.code(), 14);
    assert_eq!(StatementType::HistoryShared.name(), "history-shared");
    assert_eq!(signed.frame()[1..3], [0, 14]);
    assert_eq!(
        StatementType::HistoryShared.context().as_str(),
        "backchannel/v1/statement/history-shared"
    );
    assert_eq!(
        StatementType::from_code(14),
        Some(StatementType::HistoryShared)
    );
    let decoded = SignedStatement::decode(signed.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decoded, signed);
    // `until` is the payload's last field but the bundle: set it to 0 in
    // the frame and the statement no longer decodes.
    let mut bytes = signed.as_bytes().to_vec();
    let until_end = bytes.len() - 64 - 32;
    bytes[until_end - 8..until_end].copy_from_slice(&0u64.to_be_bytes());
    assert!(matches!(
        SignedStatement::decode(&bytes),
        Err(DecodeError::Invalid { field: "until", .. })
    ));
}

#[test]
fn authority_passes_round_trip_and_decode_strictly() {
    let t = fixtures::talks();
    let pass = reappointed(&t, &[IRAN_TALKS, OMAN_LEAD]);
    let bytes = pass.to_canonical_bytes();
    // party 16, old 32, new 32, how 1, signature 64, certification 1 + 64,
    // endorsements 4 + 2 × 96.
    assert_eq!(bytes.len(), 16 + 32 + 32 + 1 + 64 + 65 + 4 + 2 * 96);
    assert_eq!(&bytes[..16], &t.us.0);
    assert_eq!(bytes[80], 2);
    assert_eq!(bytes[145], 1);
    assert_eq!(
        AuthorityPassed::from_canonical_bytes(&bytes),
        Ok(pass.clone())
    );
    assert_eq!(pass.how(), PassedHow::Reappointed);
    assert_eq!(pass.endorsements().len(), 2);
    // Every signature is over the one transfer, under its own context.
    let transfer = pass.transfer_bytes(t.talks);
    assert_eq!(transfer.len(), authority::TRANSFER_LEN);
    let mut want = t.talks.0.to_vec();
    want.extend_from_slice(&t.us.0);
    want.extend_from_slice(pass.old_key.as_bytes());
    want.extend_from_slice(pass.new_key.as_bytes());
    want.push(2);
    assert_eq!(transfer, want);
    assert_eq!(
        authority::AUTHORITY_PASSED_CONTEXT.as_str(),
        "backchannel/v1/authority-passed"
    );
    let us_authority = key(US_AUTHORITY).public_key();
    assert_eq!(pass.verify(t.talks, &us_authority), Ok(()));
    assert_eq!(
        pass.verify(t.talks, &key(IRAN_AUTHORITY).public_key()),
        Err(AuthorityError::BadCertification)
    );
    for e in pass.endorsements() {
        let signer = [IRAN_TALKS, OMAN_LEAD]
            .into_iter()
            .map(|l| key(l).public_key())
            .find(|k| k.id() == e.key)
            .unwrap_or_else(|| panic!("endorser"));
        assert!(pass.verify_by(t.talks, &signer, &e.signature).is_ok());
        assert!(
            pass.verify_by(TalksId([9; 16]), &signer, &e.signature)
                .is_err()
        );
    }
    // The new key's signature is bound to the way of passing.
    let mut forged = bytes.clone();
    forged[80] = 1;
    // (That also breaks the shape: a certification on a hand-over.)
    assert!(matches!(
        AuthorityPassed::from_canonical_bytes(&forged),
        Err(DecodeError::Invalid {
            field: "authority certification",
            ..
        })
    ));
    let mut bad_sig = bytes.clone();
    bad_sig[81] ^= 1;
    let bad_sig = AuthorityPassed::from_canonical_bytes(&bad_sig).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        bad_sig.verify(t.talks, &us_authority),
        Err(AuthorityError::BadNewKeySignature)
    );

    // Trailing bytes; truncation at every length.
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        AuthorityPassed::from_canonical_bytes(&long),
        Err(DecodeError::TrailingBytes { .. })
    ));
    for n in 0..bytes.len() {
        assert!(AuthorityPassed::from_canonical_bytes(&bytes[..n]).is_err());
    }

    // Field by field, through a raw encoder.
    let old = key(US_TALKS).public_key().id();
    let new = key(US_TALKS_SUCCESSOR).public_key();
    let sig = Signature([0x5a; 64]);
    let end = |l: u8| Endorsement {
        key: key(l).public_key().id(),
        signature: sig,
    };
    let (e1, e2) = {
        let (a, b) = (end(IRAN_TALKS), end(OMAN_TALKS));
        if a.key < b.key { (a, b) } else { (b, a) }
    };
    let raw = |old: &[u8], new: &[u8], how: u8, cert: Option<u8>, ends: &[Endorsement]| {
        let mut w = Writer::new();
        t.us.encode(&mut w);
        w.raw(old);
        w.raw(new);
        w.u8(how);
        sig.encode(&mut w);
        match cert {
            None => w.u8(0),
            Some(b) => {
                w.u8(b);
                sig.encode(&mut w);
            }
        }
        w.list(ends);
        w.into_bytes()
    };
    let (o, n) = (old.as_bytes().as_slice(), new.as_bytes().as_slice());
    // The good shapes decode.
    assert!(AuthorityPassed::from_canonical_bytes(&raw(o, n, 1, None, &[])).is_ok());
    assert!(AuthorityPassed::from_canonical_bytes(&raw(o, n, 2, Some(1), &[])).is_ok());
    assert!(AuthorityPassed::from_canonical_bytes(&raw(o, n, 2, Some(1), &[e1, e2])).is_ok());
    let refused = |bytes: Vec<u8>, field: &str| {
        let got = AuthorityPassed::from_canonical_bytes(&bytes);
        assert!(
            matches!(
                &got,
                Err(DecodeError::Invalid { field: f, .. } | DecodeError::UnknownValue { field: f, .. }) if *f == field
            ),
            "{field}: {got:?}"
        );
    };
    // how: 0, 3, 0xff.
    for how in [0, 3, 0xff] {
        refused(raw(o, n, how, None, &[]), "how");
    }
    // The new key is the old key.
    refused(raw(new.id().as_bytes(), n, 1, None, &[]), "new key");
    // Certification on a hand-over, missing on a re-appointment, presence byte 2.
    refused(raw(o, n, 1, Some(1), &[]), "authority certification");
    refused(raw(o, n, 2, None, &[]), "authority certification");
    refused(raw(o, n, 2, Some(2), &[]), "authority certification");
    // Endorsements on a hand-over; unsorted; twice.
    refused(raw(o, n, 1, None, &[e1]), "endorsements");
    refused(raw(o, n, 2, Some(1), &[e2, e1]), "endorsements");
    refused(raw(o, n, 2, Some(1), &[e1, e1]), "endorsements");
    // A new key that is not a valid public key (small order: the identity).
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(AuthorityPassed::from_canonical_bytes(&raw(o, &identity, 1, None, &[])).is_err());
    // More than MAX_PARTIES endorsements.
    let mut many = raw(o, n, 2, Some(1), &[]);
    let count = many.len() - 4;
    many.truncate(count);
    many.extend_from_slice(&(roster::MAX_PARTIES as u32 + 1).to_be_bytes());
    for i in 0..=roster::MAX_PARTIES {
        many.extend_from_slice(&[i as u8; 32]);
        many.extend_from_slice(&[0; 64]);
    }
    assert!(matches!(
        AuthorityPassed::from_canonical_bytes(&many),
        Err(DecodeError::TooLong { .. })
    ));

    // The constructor refuses what the decoder refuses.
    let new_pass = |how, cert: Option<Signature>, ends: Vec<Endorsement>| {
        AuthorityPassed::new(t.us, old, new, how, sig, cert, ends)
    };
    assert_eq!(
        AuthorityPassed::new(
            t.us,
            new.id(),
            new,
            PassedHow::HandedOver,
            sig,
            None,
            vec![]
        ),
        Err(AuthorityError::SameKey)
    );
    assert_eq!(
        new_pass(PassedHow::HandedOver, Some(sig), vec![]),
        Err(AuthorityError::CertificationOnHandover)
    );
    assert_eq!(
        new_pass(PassedHow::Reappointed, None, vec![]),
        Err(AuthorityError::MissingCertification)
    );
    assert_eq!(
        new_pass(PassedHow::HandedOver, None, vec![e1]),
        Err(AuthorityError::EndorsementsOnHandover)
    );
    assert_eq!(
        new_pass(PassedHow::Reappointed, Some(sig), vec![e2, e1]),
        Err(AuthorityError::EndorsementsUnsorted)
    );
    let too_many: Vec<Endorsement> = (0..=roster::MAX_PARTIES)
        .map(|i| Endorsement {
            key: KeyId(Digest([i as u8; 32])),
            signature: sig,
        })
        .collect();
    assert_eq!(
        new_pass(PassedHow::Reappointed, Some(sig), too_many),
        Err(AuthorityError::TooManyEndorsements)
    );

    // A hand-over carrying an endorsement, re-signed by its author: the
    // frame does not decode, so replay never sees it.
    let old_key = key(US_TALKS);
    let hand_over = raw(o, n, 1, None, &[]);
    let signed = t.statement(
        10,
        &old_key,
        t.us,
        Payload::AuthorityPassed(
            AuthorityPassed::from_canonical_bytes(&hand_over).unwrap_or_else(|e| panic!("{e}")),
        ),
    );
    let mut frame = signed.frame().to_vec();
    let at = frame.len() - hand_over.len() - 4;
    assert_eq!(&frame[at + 4..], &hand_over[..]);
    frame.truncate(at);
    let with_endorsement = raw(o, n, 1, None, &[e1]);
    frame.extend_from_slice(&(with_endorsement.len() as u32).to_be_bytes());
    frame.extend_from_slice(&with_endorsement);
    let sig = old_key
        .sign(StatementType::AuthorityPassed.context(), &frame)
        .unwrap_or_else(|e| panic!("{e}"));
    frame.extend_from_slice(sig.as_bytes());
    assert!(matches!(
        SignedStatement::decode(&frame),
        Err(DecodeError::Invalid {
            field: "endorsements",
            ..
        })
    ));

    // In a statement: type 15, its own context.
    let signed = t.statement(9, &key(OMAN_TALKS), t.oman, Payload::AuthorityPassed(pass));
    assert_eq!(StatementType::AuthorityPassed.code(), 15);
    assert_eq!(StatementType::AuthorityPassed.name(), "authority-passed");
    assert_eq!(
        StatementType::AuthorityPassed.context().as_str(),
        "backchannel/v1/statement/authority-passed"
    );
    assert_eq!(
        StatementType::from_code(15),
        Some(StatementType::AuthorityPassed)
    );
    assert_eq!(StatementType::from_code(16), None);
    assert!(
        signed
            .verify(t.talks, &key(OMAN_TALKS).public_key())
            .is_ok()
    );
}

#[test]
fn a_designated_signer_is_replaced_without_it_by_every_other_party() {
    let t = fixtures::talks();
    let list = t
        .roster
        .verify_for(t.talks)
        .unwrap_or_else(|e| panic!("{e}"));
    let c = Change {
        talks: &t,
        list: list.clone(),
    };
    let us_signer = list
        .get(&key(US_TALKS).public_key().id())
        .cloned()
        .unwrap_or_else(|| panic!("the US talks authority is on the list"));
    // The shape the roster implies for a party's talks authority.
    assert_eq!(us_signer.flags, FLAG_DESIGNATED_SIGNER);
    assert!(us_signer.rooms().is_empty());
    assert_eq!(us_signer.principal.0, t.us.0);
    let entry = |label: u8, principal: PrincipalId, rooms: Vec<RoomId>, flags: u8| {
        AccessEntry::new(key(label).public_key(), principal, t.us, rooms, flags)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let successor = entry(
        US_TALKS_SUCCESSOR,
        us_signer.principal,
        us_signer.rooms().to_vec(),
        us_signer.flags,
    );
    let replace = || (vec![US_TALKS], vec![successor.clone()]);
    // The new key itself, the mediator and every other party (Iran) sign:
    // accepted, without the US.
    let (r, u) = replace();
    c.check(r, u, &[OMAN_TALKS, IRAN_TALKS, US_TALKS_SUCCESSOR], Ok(()));
    let delta = AccessListDelta::new(
        t.talks,
        list.hash(),
        vec![key(US_TALKS).public_key().id()],
        vec![successor.clone()],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let sigs = [OMAN_TALKS, IRAN_TALKS, US_TALKS_SUCCESSOR]
        .iter()
        .map(|l| delta.sign(&key(*l)).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let next = list
        .apply(&AccessListChange::new(delta, sigs).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(next.get(&key(US_TALKS).public_key().id()).is_none());
    assert!(
        next.get(&key(US_TALKS_SUCCESSOR).public_key().id())
            .is_some_and(|e| e.has(FLAG_DESIGNATED_SIGNER) && e.party == t.us)
    );
    // Proof of possession: without the new key's signature, refused; with
    // a signature by the new key over another delta (or by another key
    // under the new key's id), refused.
    let (r, u) = replace();
    c.check(
        r,
        u,
        &[OMAN_TALKS, IRAN_TALKS],
        Err("needs the new key's own signature over the change"),
    );
    let new_id = key(US_TALKS_SUCCESSOR).public_key().id();
    let other_delta = AccessListDelta::new(
        t.talks,
        Digest([0x5a; 32]),
        vec![key(US_TALKS).public_key().id()],
        vec![successor.clone()],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for forged in [
        other_delta
            .sign(&key(US_TALKS_SUCCESSOR))
            .unwrap_or_else(|e| panic!("{e}")),
        {
            let (r, u) = replace();
            let d = AccessListDelta::new(
                t.talks,
                list.hash(),
                r.iter().map(|l| key(*l).public_key().id()).collect(),
                u,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            (
                new_id,
                d.sign(&key(0x96)).unwrap_or_else(|e| panic!("{e}")).1,
            )
        },
    ] {
        let (r, u) = replace();
        c.check_signed(
            r,
            u,
            |delta| {
                let mut sigs: Vec<_> = [OMAN_TALKS, IRAN_TALKS]
                    .iter()
                    .map(|l| delta.sign(&key(*l)).unwrap_or_else(|e| panic!("{e}")))
                    .collect();
                sigs.push(forged);
                sigs
            },
            Err("does not verify"),
        );
    }
    // One other party missing: refused; the mediator missing: refused.
    let (r, u) = replace();
    c.check(r, u, &[OMAN_TALKS, US_TALKS_SUCCESSOR], Err("party 0c0c"));
    let (r, u) = replace();
    c.check(
        r,
        u,
        &[IRAN_TALKS, US_TALKS_SUCCESSOR],
        Err("mediator's designated signer"),
    );
    // A mediator's device is not its designated signer.
    let (r, u) = replace();
    c.check(
        r,
        u,
        &[OMAN_LEAD_DEVICE, IRAN_TALKS, US_TALKS_SUCCESSOR],
        Err("mediator's designated signer"),
    );
    // Anything more than the replacement: the ordinary rule, which needs
    // the US, and where the new key, not on the list, signs nothing.
    let extra = entry(0x94, fixtures::PRINCIPALS[1], vec![t.record], FLAG_DEVICE);
    c.check(
        vec![US_TALKS],
        vec![successor.clone(), extra.clone()],
        &[OMAN_TALKS, IRAN_TALKS],
        Err("designated signer has not signed"),
    );
    c.check(
        vec![US_TALKS],
        vec![successor.clone(), extra],
        &[OMAN_TALKS, IRAN_TALKS, US_TALKS_SUCCESSOR],
        Err("not on the current access list"),
    );
    c.check(
        vec![US_TALKS, US_HEAD_DEVICE],
        vec![successor.clone()],
        &[OMAN_TALKS, IRAN_TALKS, US_TALKS_SUCCESSOR],
        Err("not on the current access list"),
    );
    c.check(
        vec![US_TALKS, US_HEAD_DEVICE],
        vec![successor.clone()],
        &[OMAN_TALKS, IRAN_TALKS],
        Err("designated signer has not signed"),
    );
    // The new entry differs from the old but for the key (rooms, flags, a
    // device flag, another principal): the ordinary rule.
    for other in [
        entry(
            US_TALKS_SUCCESSOR,
            us_signer.principal,
            vec![t.us_caucus],
            us_signer.flags,
        ),
        entry(
            US_TALKS_SUCCESSOR,
            us_signer.principal,
            vec![],
            us_signer.flags | FLAG_MAY_PROPOSE,
        ),
        entry(
            US_TALKS_SUCCESSOR,
            us_signer.principal,
            vec![],
            us_signer.flags | FLAG_DEVICE,
        ),
        entry(
            US_TALKS_SUCCESSOR,
            fixtures::PRINCIPALS[1],
            vec![],
            us_signer.flags,
        ),
    ] {
        for signers in [
            &[OMAN_TALKS, IRAN_TALKS][..],
            &[OMAN_TALKS, IRAN_TALKS, US_TALKS_SUCCESSOR][..],
        ] {
            c.check(
                vec![US_TALKS],
                vec![other.clone()],
                signers,
                Err(if signers.len() == 2 {
                    "designated signer has not signed"
                } else {
                    "not on the current access list"
                }),
            );
        }
    }
    // The old entry is not a talks authority's shape: a designated signer
    // with a device flag, with rooms, or whose principal is not its party:
    // the ordinary rule, even replaced by an identical entry.
    let shaped = |e: AccessEntry| {
        let base = AccessList::new(
            t.talks,
            0,
            list.entries()
                .iter()
                .filter(|x| x.key_id() != us_signer.key_id())
                .cloned()
                .chain([e])
                .collect(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Change {
            talks: &t,
            list: base,
        }
    };
    for (principal, rooms, flags) in [
        (
            us_signer.principal,
            vec![],
            FLAG_DESIGNATED_SIGNER | FLAG_DEVICE,
        ),
        (us_signer.principal, vec![t.record], FLAG_DESIGNATED_SIGNER),
        (PrincipalId([0xb1; 16]), vec![], FLAG_DESIGNATED_SIGNER),
    ] {
        let c = shaped(entry(US_TALKS, principal, rooms.clone(), flags));
        let (r, u) = (
            vec![US_TALKS],
            vec![entry(US_TALKS_SUCCESSOR, principal, rooms, flags)],
        );
        c.check(
            r,
            u,
            &[OMAN_TALKS, IRAN_TALKS],
            Err("designated signer has not signed"),
        );
    }
    // A mediator team's designated signer is never replaced that way:
    // mediator teams change only with a new roster. Refused without the
    // mediator team's own signature, new key signing or not.
    let oman_signer = list
        .get(&key(OMAN_TALKS).public_key().id())
        .cloned()
        .unwrap_or_else(|| panic!("the Oman talks authority is on the list"));
    assert!(oman_signer.has(FLAG_MEDIATOR));
    let oman_successor = AccessEntry::new(
        key(0x27).public_key(),
        oman_signer.principal,
        oman_signer.party,
        oman_signer.rooms().to_vec(),
        oman_signer.flags,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    c.check(
        vec![OMAN_TALKS],
        vec![oman_successor.clone()],
        &[US_TALKS, IRAN_TALKS],
        Err("mediator"),
    );
    c.check(
        vec![OMAN_TALKS],
        vec![oman_successor],
        &[US_TALKS, IRAN_TALKS, 0x27],
        Err("not on the current access list"),
    );
    // Replacing a device (not a designated signer) that way: the ordinary rule.
    let device = list
        .get(&key(US_HEAD_DEVICE).public_key().id())
        .cloned()
        .unwrap_or_else(|| panic!("device"));
    c.check(
        vec![US_HEAD_DEVICE],
        vec![entry(
            0x95,
            device.principal,
            device.rooms().to_vec(),
            device.flags,
        )],
        &[OMAN_TALKS, IRAN_TALKS],
        Err("designated signer has not signed"),
    );
    // The ordinary path is unchanged: the old signer signs with the
    // mediator; a signer not on the list is refused there, the new key
    // included.
    let (r, u) = replace();
    c.check(r, u, &[OMAN_TALKS, US_TALKS], Ok(()));
    let (r, u) = replace();
    c.check(r, u, &[US_TALKS], Err("mediator"));
    let (r, u) = replace();
    c.check(
        r,
        u,
        &[OMAN_TALKS, US_TALKS, US_TALKS_SUCCESSOR],
        Err("not on the current access list"),
    );
    // Step 7 allows the new key alone off the list.
    let (r, u) = replace();
    c.check(
        r,
        u,
        &[OMAN_TALKS, IRAN_TALKS, US_TALKS_SUCCESSOR, 0x55],
        Err("not on the current access list"),
    );
}

/// `SignedStatement::verify_batch` of `items`, under three generators,
/// must give each item the verdict `verify` gives it alone.
fn check_statement_batch(talks: TalksId, items: &[(&SignedStatement, PublicKey)]) {
    let alone: Vec<_> = items.iter().map(|(s, k)| s.verify(talks, k)).collect();
    for seed in 0..3 {
        let batch = SignedStatement::verify_batch(talks, items, &mut fixtures::rng(seed));
        assert_eq!(batch, alone, "seed {seed}");
    }
}

#[test]
fn a_batch_gives_each_statement_the_verdict_it_gets_alone() {
    let t = fixtures::talks();
    let signed: Vec<(SignedStatement, PublicKey)> = payloads(&t)
        .into_iter()
        .enumerate()
        .map(|(i, (label, party, payload))| {
            let signer = key(label);
            (
                t.statement(300 + i as u64, &signer, party, payload),
                signer.public_key(),
            )
        })
        .collect();
    let good: Vec<(&SignedStatement, PublicKey)> = signed.iter().map(|(s, k)| (s, *k)).collect();
    assert!(good.len() > 3);
    check_statement_batch(t.talks, &good);
    assert!(
        SignedStatement::verify_batch(t.talks, &good, &mut fixtures::rng(9))
            .iter()
            .all(Result::is_ok)
    );
    check_statement_batch(t.talks, &[]);
    // One forged signature among good ones: only it fails.
    let bad = fixtures::forged(good[1].0);
    let mut mixed = good.clone();
    mixed[1] = (&bad, good[1].1);
    check_statement_batch(t.talks, &mixed);
    let verdicts = SignedStatement::verify_batch(t.talks, &mixed, &mut fixtures::rng(9));
    assert!(matches!(verdicts[1], Err(VerifyError::BadSignature(_))));
    assert_eq!(verdicts.iter().filter(|v| v.is_err()).count(), 1);
    // Offered with another key, and all of them in other talks.
    let mut wrong_key = good.clone();
    wrong_key[2].1 = key(0x77).public_key();
    check_statement_batch(t.talks, &wrong_key);
    // A refused key before a forged signature: each verdict stays with its
    // statement.
    wrong_key[3].0 = &bad;
    check_statement_batch(t.talks, &wrong_key);
    check_statement_batch(TalksId([9; 16]), &good);
    // Every signature forged.
    let all_bad: Vec<SignedStatement> = good.iter().map(|(s, _)| fixtures::forged(s)).collect();
    let all_bad: Vec<(&SignedStatement, PublicKey)> = all_bad
        .iter()
        .zip(&good)
        .map(|(s, (_, k))| (s, *k))
        .collect();
    check_statement_batch(t.talks, &all_bad);
}

#[test]
fn a_batch_of_headers_gives_each_header_the_verdict_it_gets_alone() {
    let t = fixtures::talks();
    let body = vec![0u8; 1024];
    let devices: Vec<_> = (0..6u8).map(|i| key(0x60 + i)).collect();
    let headers: Vec<(SignedHeader, PublicKey)> = devices
        .iter()
        .enumerate()
        .map(|(i, device)| {
            let header = Header {
                talks: t.talks,
                room: t.record,
                sender: device.public_key().id(),
                kind: Kind::MlsApp,
                idempotency_key: [i as u8; 16],
                body_len: 1024,
                body_hash: sha256(&body),
                commitment: Commitment([i as u8; 32]),
            };
            let signed = header.sign(device).unwrap_or_else(|e| panic!("{e}"));
            (signed, device.public_key())
        })
        .collect();
    let check = |items: &[(&SignedHeader, PublicKey)]| {
        let alone: Vec<_> = items.iter().map(|(h, k)| h.verify(k)).collect();
        for seed in 0..3 {
            let batch = SignedHeader::verify_batch(items, &mut fixtures::rng(seed));
            assert_eq!(batch, alone, "seed {seed}");
        }
        alone
    };
    let good: Vec<(&SignedHeader, PublicKey)> = headers.iter().map(|(h, k)| (h, *k)).collect();
    assert!(check(&good).iter().all(Result::is_ok));
    check(&[]);
    // The lowest bit of one signature's S flipped: well formed, and the
    // equation fails.
    let mut bytes = good[3].0.to_bytes();
    let s_low = bytes.len() - 32;
    bytes[s_low] ^= 1;
    let bad = SignedHeader::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let mut mixed = good.clone();
    mixed[3].0 = &bad;
    let verdicts = check(&mixed);
    assert_eq!(verdicts.iter().filter(|v| v.is_err()).count(), 1);
    assert!(verdicts[3].is_err());
    // Offered with another device's key.
    let mut wrong_key = good.clone();
    wrong_key[0].1 = good[1].1;
    let verdicts = check(&wrong_key);
    assert!(verdicts[0].is_err());
    // Both at once: the verdicts stay with their headers.
    wrong_key[3].0 = &bad;
    let verdicts = check(&wrong_key);
    let failed: Vec<usize> = (0..verdicts.len())
        .filter(|&i| verdicts[i].is_err())
        .collect();
    assert_eq!(failed, [0, 3]);
}
