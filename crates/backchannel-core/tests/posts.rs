//! Release, conveyance and audience rules (`backchannel_core::posts`):
//! what a client refuses to post, how a recipient shows a release, and the
//! recipient's check of a verbatim conveyance — which must fail on any
//! byte of its evidence changed.

use backchannel_codec::RoomId;
use backchannel_core::posts::{
    ConveyError, PostError, ReleaseState, check_outgoing, check_verbatim, release_state,
    verify_verbatim,
};
use backchannel_core::replay::{LoggedStatement, Replay};
use backchannel_crypto::{Digest, Signer, sha256};
use backchannel_statement::fixtures::{self, LETTER, key, labels::*};
use backchannel_statement::header::{BODY_BUCKETS, Header};
use backchannel_statement::roster::SigningRule;
use backchannel_statement::{
    Act, Attribution, Audience, CheckpointRef, Commitment, Conveyance, Kind, Markings, Message,
    Payload, Release, Salt, SignedStatement, Statement, Verbatim,
};
use backchannel_tlog::{LeafData, MemoryHashStore};

/// The reference talks with a plenary and a letter room, where the US's
/// messages need release by its head.
fn talks() -> fixtures::Talks {
    let mut t = fixtures::talks_with_plenary_and_letter();
    let [_, us_head, _, _] = fixtures::PRINCIPALS;
    t.roster.rules = vec![SigningRule {
        party: t.us,
        act: Act::ReleaseMessage,
        threshold: 1,
        signers: vec![us_head],
    }];
    t
}

fn message(release: bool) -> Message {
    let r = release.then_some(Release {
        draft: backchannel_codec::StatementId([1; 16]),
        draft_hash: Digest([2; 32]),
        drafter: fixtures::PRINCIPALS[3],
    });
    Message::new(None, "words", r).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_client_refuses_what_the_roster_forbids() {
    let t = talks();
    let [lead, us_head, _, us_neg] = fixtures::PRINCIPALS;
    let check =
        |who, party, room: RoomId, release: bool, letters: bool, want: Result<(), PostError>| {
            let got = check_outgoing(
                &t.roster,
                who,
                party,
                room,
                true,
                &message(release),
                |_, _| letters,
            );
            assert_eq!(got, want, "{who:?} in {room:?}, release {release}");
        };
    check(
        us_head,
        t.us,
        t.record,
        false,
        true,
        Err(PostError::RecordRoom),
    );
    check(
        us_head,
        t.us,
        t.us_caucus,
        false,
        true,
        Err(PostError::NeedsRelease),
    );
    check(us_head, t.us, t.us_caucus, true, true, Ok(()));
    check(
        us_neg,
        t.us,
        t.us_caucus,
        true,
        true,
        Err(PostError::NotReleaser),
    );
    check(
        us_head,
        t.us,
        LETTER,
        true,
        false,
        Err(PostError::LetterNotAllowed),
    );
    check(us_head, t.us, LETTER, true, true, Ok(()));
    // Iran has no release rule; the mediator needs none.
    check(
        fixtures::PRINCIPALS[2],
        t.iran,
        t.iran_caucus,
        false,
        true,
        Ok(()),
    );
    check(
        fixtures::PRINCIPALS[2],
        t.iran,
        t.iran_caucus,
        true,
        true,
        Err(PostError::NotReleaser),
    );
    check(lead, t.oman, t.us_caucus, false, true, Ok(()));
    // Not seated there.
    assert_eq!(
        check_outgoing(
            &t.roster,
            us_head,
            t.us,
            t.us_caucus,
            false,
            &message(true),
            |_, _| true
        ),
        Err(PostError::NotInRoom)
    );
    // How a recipient shows them.
    assert_eq!(
        release_state(&t.roster, us_head, t.us, t.us_caucus, &message(true)),
        ReleaseState::Released {
            drafter: fixtures::PRINCIPALS[3]
        }
    );
    assert_eq!(
        release_state(&t.roster, us_neg, t.us, t.us_caucus, &message(true)),
        ReleaseState::Unreleased
    );
    assert_eq!(
        release_state(&t.roster, us_head, t.us, t.us_caucus, &message(false)),
        ReleaseState::Unreleased
    );
    assert_eq!(
        release_state(&t.roster, lead, t.oman, t.us_caucus, &message(false)),
        ReleaseState::NotRequired
    );
}

/// A US message in the US caucus, and the replay that knows its author.
struct Logged {
    t: fixtures::Talks,
    replay: Replay,
    original: SignedStatement,
    verbatim: Verbatim,
    root: Digest,
}

fn sign(
    t: &fixtures::Talks,
    conveyance: Conveyance,
    audience: Vec<Audience>,
    released: bool,
) -> SignedStatement {
    let signer = key(US_HEAD);
    let markings =
        Markings::new(conveyance, vec![], Attribution::Formal).unwrap_or_else(|e| panic!("{e}"));
    Statement::new(
        &mut fixtures::rng(7),
        t.talks,
        signer.public_key().id(),
        t.us,
        audience,
        CheckpointRef::NONE,
        markings,
        Payload::Message(message(released)),
    )
    .and_then(|s| s.sign(&signer))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn logged(conveyance: Conveyance, audience: fn(&fixtures::Talks) -> Vec<Audience>) -> Logged {
    logged_by(conveyance, audience, US_HEAD_DEVICE, true)
}

/// [`logged`], the envelope sent by device `sender`, the message released
/// or not.
fn logged_by(
    conveyance: Conveyance,
    audience: fn(&fixtures::Talks) -> Vec<Audience>,
    sender: u8,
    released: bool,
) -> Logged {
    let t = talks();
    let mut replay = Replay::new(t.talks);
    let roster = t.statement(
        1,
        &key(OMAN_TALKS),
        t.oman,
        Payload::Roster(t.roster.clone()),
    );
    let rules = t.statement(
        2,
        &key(OMAN_TALKS),
        t.oman,
        Payload::GroundRules(t.ground_rules.clone()),
    );
    for (seq, st) in [(0, &roster), (1, &rules)] {
        replay
            .apply(LoggedStatement {
                seq,
                node_time: 1_000 + seq,
                room: t.record,
                statement: st,
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let original = sign(&t, conveyance, audience(&t), released);
    let salt = Salt([9; 32]);
    let body = vec![0xab; BODY_BUCKETS[0] as usize];
    let header = Header {
        talks: t.talks,
        room: t.us_caucus,
        sender: key(sender).public_key().id(),
        kind: Kind::MlsApp,
        idempotency_key: [3; 16],
        body_len: BODY_BUCKETS[0],
        body_hash: sha256(&body),
        commitment: Commitment::to_plaintext(&salt, original.as_bytes()),
    }
    .sign(&key(sender))
    .unwrap_or_else(|e| panic!("{e}"));
    // A log of four leaves, the message at seq 2.
    let mut tree = MemoryHashStore::new();
    let mut leaves = Vec::new();
    for seq in 0..4u64 {
        let leaf = if seq == 2 {
            LeafData {
                seq,
                timestamp_ms: 1_002,
                room: t.us_caucus,
                header_hash: header.hash(),
                body_hash: sha256(&body),
            }
        } else {
            LeafData {
                seq,
                timestamp_ms: 1_000 + seq,
                room: t.record,
                header_hash: Digest([seq as u8; 32]),
                body_hash: Digest([0; 32]),
            }
        };
        tree.append(&leaf.hash()).unwrap_or_else(|e| panic!("{e}"));
        leaves.push(leaf);
    }
    let proof = tree.prove_inclusion(2, 4).unwrap_or_else(|e| panic!("{e}"));
    let verbatim = Verbatim::new(
        t.us_caucus,
        2,
        1_002,
        header.to_bytes().to_vec(),
        salt.0,
        original.as_bytes().to_vec(),
        sha256(&body),
        4,
        proof.hashes().to_vec(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Logged {
        root: tree.root().unwrap_or_else(|e| panic!("{e}")),
        t,
        replay,
        original,
        verbatim,
    }
}

fn for_iran(t: &fixtures::Talks) -> Vec<Audience> {
    vec![Audience::Room(t.us_caucus), Audience::Party(t.iran)]
}

#[test]
fn a_verbatim_conveyance_verifies_and_any_change_to_its_evidence_fails() {
    let l = logged(Conveyance::VerbatimMayBeConveyed, for_iran);
    let verify = |v: &Verbatim, root: Digest| {
        verify_verbatim(l.t.talks, &l.replay, v, l.t.iran_caucus, |n| {
            (n == 4).then_some(root)
        })
    };
    let ok = verify(&l.verbatim, l.root).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.seq, 2);
    assert_eq!(ok.author, fixtures::PRINCIPALS[1]);
    assert_eq!(ok.original.signed(), &l.original);
    // The mediator's own check agrees.
    assert_eq!(
        check_verbatim(&l.t.roster, &l.original, l.t.iran_caucus),
        Ok(())
    );

    // Every byte of the conveyed statement, header and salt matters.
    let mut tampered = Vec::new();
    for i in 0..l.verbatim.statement().len() {
        let mut b = l.verbatim.statement().to_vec();
        b[i] ^= 1;
        tampered.push(rebuild(&l.verbatim, None, Some(b), None));
    }
    for i in 0..l.verbatim.header().len() {
        let mut h = l.verbatim.header().to_vec();
        h[i] ^= 1;
        tampered.push(rebuild(&l.verbatim, Some(h), None, None));
    }
    let mut salt = l.verbatim.salt;
    salt[0] ^= 1;
    tampered.push(rebuild(&l.verbatim, None, None, Some(salt)));
    let mut wrong_seq = l.verbatim.clone();
    wrong_seq.seq = 1;
    tampered.push(wrong_seq);
    let mut wrong_time = l.verbatim.clone();
    wrong_time.node_time += 1;
    tampered.push(wrong_time);
    let mut wrong_body = l.verbatim.clone();
    wrong_body.body_hash = Digest([7; 32]);
    tampered.push(wrong_body);
    let mut wrong_proof = l.verbatim.clone();
    wrong_proof.proof[0] = Digest([7; 32]);
    tampered.push(wrong_proof);
    for (i, v) in tampered.iter().enumerate() {
        assert!(verify(v, l.root).is_err(), "tampered evidence {i} verified");
    }
    // A tree the recipient has not verified: not checked, said so.
    assert_eq!(
        verify_verbatim(l.t.talks, &l.replay, &l.verbatim, l.t.iran_caucus, |_| None).map(|_| ()),
        Err(ConveyError::Unverified(4))
    );
    // Another root: not in the recipient's log.
    assert!(verify(&l.verbatim, Digest([1; 32])).is_err());
}

fn rebuild(
    v: &Verbatim,
    header: Option<Vec<u8>>,
    statement: Option<Vec<u8>>,
    salt: Option<[u8; 32]>,
) -> Verbatim {
    Verbatim::new(
        v.origin_room,
        v.seq,
        v.node_time,
        header.unwrap_or_else(|| v.header().to_vec()),
        salt.unwrap_or(v.salt),
        statement.unwrap_or_else(|| v.statement().to_vec()),
        v.body_hash,
        v.tree_size,
        v.proof.clone(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn markings_and_audience_decide_what_may_travel_verbatim() {
    type Case = (
        Conveyance,
        fn(&fixtures::Talks) -> Vec<Audience>,
        fn(&fixtures::Talks) -> RoomId,
        Result<(), ConveyError>,
    );
    let cases: [Case; 6] = [
        (
            Conveyance::VerbatimMayBeConveyed,
            for_iran,
            |t| t.iran_caucus,
            Ok(()),
        ),
        (
            Conveyance::MediatorOnly,
            for_iran,
            |t| t.iran_caucus,
            Err(ConveyError::Marking("mediator-only")),
        ),
        (
            Conveyance::SubstanceMayBeConveyed,
            for_iran,
            |t| t.iran_caucus,
            Err(ConveyError::Marking("substance-may-be-conveyed")),
        ),
        // Addressed to the US caucus only: Iran's caucus is not admitted.
        (
            Conveyance::VerbatimMayBeConveyed,
            |t| vec![Audience::Room(t.us_caucus)],
            |t| t.iran_caucus,
            Err(ConveyError::Audience),
        ),
        // Addressed by room to the plenary, which it may then reach.
        (
            Conveyance::VerbatimMayBeConveyed,
            |t| {
                vec![
                    Audience::Room(t.us_caucus),
                    Audience::Room(fixtures::PLENARY),
                ]
            },
            |_| fixtures::PLENARY,
            Ok(()),
        ),
        // Never into the record room.
        (
            Conveyance::VerbatimMayBeConveyed,
            for_iran,
            |t| t.record,
            Err(ConveyError::Destination),
        ),
    ];
    for (i, (conveyance, audience, dest, want)) in cases.into_iter().enumerate() {
        let l = logged(conveyance, audience);
        let dest = dest(&l.t);
        assert_eq!(
            check_verbatim(&l.t.roster, &l.original, dest),
            want,
            "case {i}"
        );
        // The recipient refuses what the mediator should have.
        let got = verify_verbatim(l.t.talks, &l.replay, &l.verbatim, dest, |_| Some(l.root));
        assert_eq!(got.is_ok(), want.is_ok(), "case {i}: {:?}", got.map(|_| ()));
    }
}

/// Evidence that holds together but tells a lie: the author's words
/// re-posted by another member's device, or words the author's party never
/// released.
#[test]
fn a_reposted_or_unreleased_original_does_not_travel_verbatim() {
    for (sender, released, want) in [
        (US_HEAD_DEVICE, true, None),
        (
            US_NEGOTIATOR_DEVICE,
            true,
            Some(ConveyError::Evidence(
                "the original was not sent by a device of its author",
            )),
        ),
        (
            OMAN_LEAD_DEVICE,
            true,
            Some(ConveyError::Evidence(
                "the original was not sent by a device of its author",
            )),
        ),
        (US_HEAD_DEVICE, false, Some(ConveyError::Unreleased)),
    ] {
        let l = logged_by(
            Conveyance::VerbatimMayBeConveyed,
            for_iran,
            sender,
            released,
        );
        let got = verify_verbatim(l.t.talks, &l.replay, &l.verbatim, l.t.iran_caucus, |_| {
            Some(l.root)
        })
        .map(|_| ())
        .err();
        assert_eq!(got, want, "sender {sender:#x}, released {released}");
    }
}
