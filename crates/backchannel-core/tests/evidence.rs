//! Evidence bundles verify offline, and any change to one is caught.

use backchannel_codec::{Decode, Encode};
use backchannel_core::evidence::{
    EquivocationError, EvidenceBundle, EvidenceError, ProvenEquivocation, verify_equivocation,
};
use backchannel_crypto::{Digest, Signer, sha256};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::header::pad_body;
use backchannel_statement::{
    Act, AuthorityPassed, Commitment, Header, Kind, MemberCert, PassedHow, Payload, Revoke,
    RevokeReason, Role, Salt,
};
use backchannel_tlog::{
    Checkpoint, CosignerKey, InclusionProof, LeafData, LogOrigin, MemoryHashStore, NodeOrigin,
    cosign_note,
};

const NEW_IDENTITY: u8 = 0x35;
const US_WITNESS: u8 = 0x61;
const IRAN_WITNESS: u8 = 0x62;

struct Fixture {
    bundle: EvidenceBundle,
    node: NodeOrigin,
    witnesses: Vec<CosignerKey>,
}

fn witness(label: u8, name: &str) -> CosignerKey {
    CosignerKey::new(name, key(label).public_key()).unwrap_or_else(|e| panic!("{e}"))
}

fn fixture() -> Fixture {
    fixture_with(US_NEGOTIATOR_DEVICE, Kind::MlsApp)
}

/// The revocation by the newly certified US negotiator that the bundle
/// opens (statement id from `seed`), with `reason`.
fn revocation(seed: u64, reason: RevokeReason) -> backchannel_statement::SignedStatement {
    let t = fixtures::talks();
    t.statement(
        seed,
        &key(NEW_IDENTITY),
        t.us,
        Payload::Revoke(Revoke {
            key: key(US_NEGOTIATOR_DEVICE).public_key().id(),
            reason,
            lost_at: Some(1_705_000_000_000),
        }),
    )
}

/// The bundle, with the envelope sent by the device `sender` as `kind`.
fn fixture_with(sender: u8, kind: Kind) -> Fixture {
    let (mut bundles, node, witnesses) =
        fixture_log(sender, kind, &[(10, revocation(3, RevokeReason::Lost))]);
    Fixture {
        bundle: bundles.remove(0),
        node,
        witnesses,
    }
}

/// A log of 16 leaves holding `statements` at their seqs (each at node time
/// `1_705_000_123_456 + seq - 10`), and a bundle for each.
fn fixture_log(
    sender: u8,
    kind: Kind,
    statements: &[(u64, backchannel_statement::SignedStatement)],
) -> (Vec<EvidenceBundle>, NodeOrigin, Vec<CosignerKey>) {
    let t = fixtures::talks();
    let node = NodeOrigin::new("node.example").unwrap_or_else(|e| panic!("{e}"));
    let roster = t.statement(
        1,
        &key(OMAN_TALKS),
        t.oman,
        Payload::Roster(t.roster.clone()),
    );
    let cert = MemberCert::new(
        fixtures::PRINCIPALS[3],
        t.us,
        Role::Negotiator,
        key(NEW_IDENTITY).public_key(),
        vec![Act::ProposeText],
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cert = t.statement(2, &key(US_TALKS), t.us, Payload::MemberCert(cert));
    let salt = Salt([0x33; 32]);
    let device = key(sender);
    // Until rooms are MLS groups the body is the padded plaintext; only its
    // hash matters to the bundle.
    let headers: Vec<_> = statements
        .iter()
        .map(|(_, statement)| {
            let body = pad_body(statement.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            Header {
                talks: t.talks,
                room: t.record,
                sender: device.public_key().id(),
                kind,
                idempotency_key: [9; 16],
                body_len: body.len() as u32,
                body_hash: sha256(&body),
                commitment: Commitment::to_plaintext(&salt, statement.as_bytes()),
            }
            .sign(&device)
            .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let time = |seq: u64| 1_705_000_123_456u64 + seq - 10;

    // A log of 16 leaves with ours at their seqs.
    let mut store = MemoryHashStore::new();
    for i in 0..16u64 {
        let ours = statements.iter().position(|(seq, _)| *seq == i);
        let leaf = match ours {
            Some(n) => LeafData {
                seq: i,
                timestamp_ms: time(i),
                room: t.record,
                header_hash: headers[n].hash(),
                body_hash: headers[n].header().body_hash,
            },
            None => LeafData {
                seq: i,
                timestamp_ms: time(10) - 1000 + i,
                room: t.us_caucus,
                header_hash: Digest([i as u8; 32]),
                body_hash: Digest([0xbb; 32]),
            },
        };
        store.append(&leaf.hash()).unwrap_or_else(|e| panic!("{e}"));
    }
    let root = store.root().unwrap_or_else(|e| panic!("{e}"));
    let checkpoint = Checkpoint {
        origin: LogOrigin::new(&node, t.talks),
        size: 16,
        root,
    }
    .sign(&key(NODE_LOG))
    .unwrap_or_else(|e| panic!("{e}"));
    let mut note = checkpoint.note().to_vec();
    for (label, name) in [(US_WITNESS, "witness.us"), (IRAN_WITNESS, "witness.ir")] {
        note =
            cosign_note(&note, &key(label), name, 1_705_000_200).unwrap_or_else(|e| panic!("{e}"));
    }
    let bundles = statements
        .iter()
        .zip(headers)
        .map(|((seq, statement), header)| {
            let proof: InclusionProof = store
                .prove_inclusion(*seq, 16)
                .unwrap_or_else(|e| panic!("{e}"));
            EvidenceBundle {
                statement: statement.clone(),
                salt,
                header,
                seq: *seq,
                node_time: time(*seq),
                proof,
                checkpoint_note: note.clone(),
                chain: vec![roster.clone(), cert.clone()],
            }
        })
        .collect();
    (
        bundles,
        node,
        vec![
            witness(US_WITNESS, "witness.us"),
            witness(IRAN_WITNESS, "witness.ir"),
        ],
    )
}

#[test]
fn a_bundle_verifies_offline_after_a_round_trip() {
    let f = fixture();
    let bytes = f.bundle.to_canonical_bytes();
    let decoded = EvidenceBundle::from_canonical_bytes(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decoded, f.bundle);
    let v = decoded
        .verify(&f.node, &key(NODE_LOG).public_key(), &f.witnesses)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.seq, 10);
    assert_eq!(v.checkpoint_size, 16);
    assert_eq!(v.party, fixtures::talks().us);
    assert_eq!(v.party_authority, key(US_AUTHORITY).public_key());
    let mut names = v.cosigned_by.clone();
    names.sort();
    assert_eq!(names, ["witness.ir", "witness.us"]);
}

/// Verifies a modified bundle and expects an error containing `want`.
fn check(modify: impl FnOnce(&mut EvidenceBundle), want: &str) {
    let f = fixture();
    let mut b = f.bundle.clone();
    modify(&mut b);
    match b.verify(&f.node, &key(NODE_LOG).public_key(), &f.witnesses) {
        Ok(_) => panic!("a modified bundle verified (wanted {want:?})"),
        Err(e) => assert!(e.to_string().contains(want), "{e} lacks {want:?}"),
    }
}

#[test]
fn the_bundle_matches_its_known_answer_vector() {
    let f = fixture();
    let bytes = f.bundle.to_canonical_bytes();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../test-vectors/evidence/bundle.json");
    let value = serde_json::json!({
        "description": "an evidence bundle: a revocation by a newly certified US negotiator, leaf 10 of 16, checkpoint cosigned by two witnesses",
        "node_origin": "node.example",
        "log_public_key": hex::encode(key(NODE_LOG).public_key().as_bytes()),
        "witnesses": [
            {"name": "witness.us", "public_key": hex::encode(key(US_WITNESS).public_key().as_bytes())},
            {"name": "witness.ir", "public_key": hex::encode(key(IRAN_WITNESS).public_key().as_bytes())},
        ],
        "bundle": hex::encode(&bytes),
    });
    let text = serde_json::to_string_pretty(&value).unwrap_or_else(|e| panic!("{e}")) + "\n";
    if std::env::var_os("BACKCHANNEL_REGENERATE_VECTORS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new(".")))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/evidence/seed-bundle");
        std::fs::create_dir_all(seed.parent().unwrap_or(std::path::Path::new(".")))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&seed, &bytes).unwrap_or_else(|e| panic!("{e}"));
    }
    let stored =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(stored, text, "the bundle encoding changed");
}

#[test]
fn modified_bundles_are_rejected() {
    check(|b| b.salt.0[0] ^= 1, "commitment");
    check(|b| b.seq += 1, "another seq");
    check(|b| b.node_time += 1, "not included");
    check(|b| b.chain.truncate(1), "certifies the author");
    check(|b| b.chain.clear(), "chain is empty");
    check(|b| b.chain.swap(0, 1), "first statement is not a roster");
    check(|b| b.checkpoint_note[3] ^= 0x20, "checkpoint");
    // A statement the header did not commit to.
    check(|b| b.statement = b.chain[1].clone(), "commitment");
    // Logged by a device the chain does not know, or as another kind.
    for (sender, kind, want) in [
        (0x49, Kind::MlsApp, "sender is not a device"),
        (US_HEAD, Kind::MlsApp, "sender is not a device"),
        (US_HEAD_DEVICE, Kind::Welcome, "application message"),
    ] {
        let f = fixture_with(sender, kind);
        match f
            .bundle
            .verify(&f.node, &key(NODE_LOG).public_key(), &f.witnesses)
        {
            Ok(_) => panic!("verified with sender {sender:#x}"),
            Err(e) => assert!(e.to_string().contains(want), "{e} lacks {want:?}"),
        }
    }
    let f = fixture();
    // Another log key, another node origin.
    assert!(matches!(
        f.bundle
            .verify(&f.node, &key(0x52).public_key(), &f.witnesses),
        Err(EvidenceError::Checkpoint(_))
    ));
    let other = NodeOrigin::new("other.example").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        f.bundle
            .verify(&other, &key(NODE_LOG).public_key(), &f.witnesses)
            .is_err()
    );
}

/// Every changed byte makes the bundle fail, or (for a byte of a witness's
/// key name, which turns its line into an unknown signature that C2SP notes
/// ignore) drops that witness from the verified cosigners.
#[test]
fn every_changed_byte_of_an_encoded_bundle_is_rejected() {
    let f = fixture();
    let bytes = f.bundle.to_canonical_bytes();
    let log_key = key(NODE_LOG).public_key();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 1 << (i % 8);
        let verdict = EvidenceBundle::from_canonical_bytes(&b)
            .ok()
            .and_then(|bundle| bundle.verify(&f.node, &log_key, &f.witnesses).ok());
        if let Some(v) = verdict {
            assert!(
                v.cosigned_by.len() < 2,
                "byte {i} changed and the bundle still fully verified"
            );
        }
    }
}

#[test]
fn two_bundles_prove_an_equivocation_and_nothing_else_does() {
    // The negotiator's identity key signed two revocations under one
    // statement id (seed 3): at seqs 10 and 12.
    let lost = revocation(3, RevokeReason::Lost);
    let compromised = revocation(3, RevokeReason::Compromised);
    let other_id = revocation(4, RevokeReason::Compromised);
    let log_key = key(NODE_LOG).public_key();
    let (b, node, witnesses) = fixture_log(
        US_NEGOTIATOR_DEVICE,
        Kind::MlsApp,
        &[
            (10, lost.clone()),
            (12, compromised),
            (13, other_id),
            (14, lost.clone()),
        ],
    );
    let proven = verify_equivocation(&b[1], &b[0], &node, &log_key, &witnesses)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        proven,
        ProvenEquivocation {
            statement: lost.unverified().id,
            author: key(NEW_IDENTITY).public_key().id(),
            party: fixtures::talks().us,
            first: 10,
            later: 12,
        }
    );
    let refused = |x: &EvidenceBundle, y: &EvidenceBundle| {
        verify_equivocation(x, y, &node, &log_key, &witnesses).unwrap_err()
    };
    assert_eq!(refused(&b[0], &b[2]), EquivocationError::OtherId);
    assert_eq!(refused(&b[0], &b[3]), EquivocationError::SameBytes);
    let mut broken = b[1].clone();
    broken.salt.0[0] ^= 1;
    assert!(matches!(
        refused(&b[0], &broken),
        EquivocationError::SecondBundle(EvidenceError::Commitment)
    ));
    assert!(matches!(
        refused(&broken, &b[0]),
        EquivocationError::FirstBundle(EvidenceError::Commitment)
    ));
    // The same id by another key is no equivocation of either.
    let t = fixtures::talks();
    let by_us_talks = t.statement(
        3,
        &key(US_TALKS),
        t.us,
        Payload::Revoke(Revoke {
            key: key(US_NEGOTIATOR_DEVICE).public_key().id(),
            reason: RevokeReason::Lost,
            lost_at: None,
        }),
    );
    assert_eq!(by_us_talks.unverified().id, lost.unverified().id);
    let (b, node, witnesses) = fixture_log(
        US_NEGOTIATOR_DEVICE,
        Kind::MlsApp,
        &[(10, lost), (12, by_us_talks)],
    );
    assert_eq!(
        verify_equivocation(&b[0], &b[1], &node, &log_key, &witnesses),
        Err(EquivocationError::OtherAuthor)
    );
}

/// The chain of the fixture bundle, with the US talks authority passed on
/// (`how`, by `author`) before the member certificate, which the new key
/// signs.
fn chain_through_a_pass(
    how: PassedHow,
    author: u8,
    cert_by: u8,
) -> Vec<backchannel_statement::SignedStatement> {
    let t = fixtures::talks();
    let f = fixture();
    let old = key(US_TALKS).public_key().id();
    let new = key(US_TALKS_SUCCESSOR).public_key();
    let sign = |label: u8| {
        AuthorityPassed::sign_transfer(&key(label), t.talks, t.us, &old, &new, how)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let cert = (how == PassedHow::Reappointed).then(|| sign(cert_by));
    let pass = AuthorityPassed::new(t.us, old, new, how, sign(US_TALKS_SUCCESSOR), cert, vec![])
        .unwrap_or_else(|e| panic!("{e}"));
    let party = if author == OMAN_TALKS { t.oman } else { t.us };
    let pass = t.statement(20, &key(author), party, Payload::AuthorityPassed(pass));
    let member = MemberCert::new(
        fixtures::PRINCIPALS[3],
        t.us,
        Role::Negotiator,
        key(NEW_IDENTITY).public_key(),
        vec![Act::ProposeText],
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let member = t.statement(
        21,
        &key(US_TALKS_SUCCESSOR),
        t.us,
        Payload::MemberCert(member),
    );
    vec![f.bundle.chain[0].clone(), pass, member]
}

#[test]
fn a_chain_runs_through_a_talks_authority_passed_on() {
    let f = fixture();
    for chain in [
        chain_through_a_pass(PassedHow::HandedOver, US_TALKS, US_AUTHORITY),
        chain_through_a_pass(PassedHow::Reappointed, OMAN_TALKS, US_AUTHORITY),
    ] {
        let mut b = f.bundle.clone();
        b.chain = chain;
        b.verify(&f.node, &key(NODE_LOG).public_key(), &f.witnesses)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // Handed over by someone else; re-appointed by the party itself, or
    // certified by another long-term authority.
    for chain in [
        chain_through_a_pass(PassedHow::HandedOver, OMAN_TALKS, US_AUTHORITY),
        chain_through_a_pass(PassedHow::Reappointed, US_TALKS, US_AUTHORITY),
        chain_through_a_pass(PassedHow::Reappointed, OMAN_TALKS, IRAN_AUTHORITY),
    ] {
        check(|b| b.chain = chain, "not signed by its certifier");
    }
}

/// An authority-pass link of the US talks authority from `old` to `new`
/// (`how`, signed by `author` and by `new`; re-appointed, certified by the
/// US long-term authority).
fn pass_link(
    seed: u64,
    how: PassedHow,
    author: u8,
    old: u8,
    new: u8,
) -> backchannel_statement::SignedStatement {
    let t = fixtures::talks();
    let old = key(old).public_key().id();
    let new_key = key(new).public_key();
    let sign = |label: u8| {
        AuthorityPassed::sign_transfer(&key(label), t.talks, t.us, &old, &new_key, how)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let cert = (how == PassedHow::Reappointed).then(|| sign(US_AUTHORITY));
    let pass = AuthorityPassed::new(t.us, old, new_key, how, sign(new), cert, vec![])
        .unwrap_or_else(|e| panic!("{e}"));
    let party = if author == OMAN_TALKS { t.oman } else { t.us };
    t.statement(seed, &key(author), party, Payload::AuthorityPassed(pass))
}

/// The fixture's member certificate, signed by `signer` for the US.
fn member_cert_by(seed: u64, signer: u8) -> backchannel_statement::SignedStatement {
    let t = fixtures::talks();
    let member = MemberCert::new(
        fixtures::PRINCIPALS[3],
        t.us,
        Role::Negotiator,
        key(NEW_IDENTITY).public_key(),
        vec![Act::ProposeText],
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    t.statement(seed, &key(signer), t.us, Payload::MemberCert(member))
}

#[test]
fn a_key_passed_on_in_the_chain_vouches_for_nothing_after_and_never_becomes_a_long_term_key() {
    let f = fixture();
    let roster = f.bundle.chain[0].clone();
    const THIRD: u8 = 0x28;
    let handed = pass_link(
        30,
        PassedHow::HandedOver,
        US_TALKS,
        US_TALKS,
        US_TALKS_SUCCESSOR,
    );
    // The control: one pass, the new key certifies the member.
    let mut b = f.bundle.clone();
    b.chain = vec![
        roster.clone(),
        handed.clone(),
        member_cert_by(31, US_TALKS_SUCCESSOR),
    ];
    b.verify(&f.node, &key(NODE_LOG).public_key(), &f.witnesses)
        .unwrap_or_else(|e| panic!("{e}"));
    for chain in [
        // The passed key passes again: handed over by itself, or
        // re-appointed by Oman; then the third key certifies the member.
        vec![
            roster.clone(),
            handed.clone(),
            pass_link(32, PassedHow::HandedOver, US_TALKS, US_TALKS, THIRD),
            member_cert_by(33, THIRD),
        ],
        vec![
            roster.clone(),
            handed.clone(),
            pass_link(34, PassedHow::Reappointed, OMAN_TALKS, US_TALKS, THIRD),
            member_cert_by(35, THIRD),
        ],
        // The passed key certifies the member after the pass.
        vec![roster.clone(), handed.clone(), member_cert_by(36, US_TALKS)],
        // The new key is the US long-term authority key (handed over, or
        // re-appointed).
        vec![
            roster.clone(),
            pass_link(37, PassedHow::HandedOver, US_TALKS, US_TALKS, US_AUTHORITY),
            member_cert_by(38, US_AUTHORITY),
        ],
        vec![
            roster.clone(),
            pass_link(
                39,
                PassedHow::Reappointed,
                OMAN_TALKS,
                US_TALKS,
                OMAN_AUTHORITY,
            ),
            member_cert_by(40, OMAN_AUTHORITY),
        ],
    ] {
        check(|b| b.chain = chain, "not signed by its certifier");
    }
}
