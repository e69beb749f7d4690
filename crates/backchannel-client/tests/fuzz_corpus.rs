//! Runs this crate's fuzz targets (`backchannel_client::fuzz`) briefly on
//! each `cargo test`: over the checked-in corpus (`fuzz/corpus/<target>/`)
//! and over deterministic mutations of each corpus file (every single-bit
//! flip of the first 512 bits, truncations at every length, and seeded
//! random byte changes) — the scheme of `backchannel-core`'s corpus test.
//! The targets assert that nothing panics and that whatever parses
//! re-encodes to the same bytes (JSON documents: to the same value).
//!
//! The `seed-*` files are valid encodings made here from fixed keys;
//! [`the_seeds_are_what_the_code_encodes`] checks them, and rewrites them
//! when run with `BACKCHANNEL_REGENERATE_VECTORS=1` after a deliberate
//! format change. Longer runs use cargo-fuzz: see `fuzz/Cargo.toml`.

use backchannel_test_support::survives_corpus;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backchannel_client::attachment::Attachment;
use backchannel_client::follow::{Follower, Pending, Witness};
use backchannel_client::fork::ForkEvidence;
use backchannel_client::handover::{self, Bundle, Item, NotHeld, Part, Share};
use backchannel_client::participant::{
    Enrolment, InvitationDoc, Invited, MemberInvitationDoc, MemberReplyDoc, PendingMember,
    PinnedNode, TalksRecord,
};
use backchannel_client::safety::{PartyVerification, SafetyCode};
use backchannel_client::seal::{AppMessage, Content};
use backchannel_codec::{Encode, PrincipalId, RoomId, TalksId};
use backchannel_crypto::{Digest, Signer, sha256};
use backchannel_mls::Handshake;
use backchannel_node::tls::Fingerprint;
use backchannel_statement::fixtures::{self, key, labels};
use backchannel_statement::header::pad_body;
use backchannel_statement::{Commitment, Header, Kind};
use backchannel_statement::{InvitationToken, PartyKind, Payload, Role, Salt};
use backchannel_tlog::{
    Checkpoint, LeafData, LogOrigin, MemoryHashStore, NodeOrigin, SignedCheckpoint,
};

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("participant", backchannel_client::fuzz::participant),
    ("client_state", backchannel_client::fuzz::client_state),
    ("data_tile", backchannel_client::fuzz::data_tile),
    ("mls", backchannel_client::fuzz::mls),
];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

#[test]
fn every_client_target_survives_its_corpus_and_mutations() {
    for (name, target) in TARGETS {
        survives_corpus(&corpus(), name, *target);
    }
}

// --- The seeds -------------------------------------------------------------------

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn node_origin() -> NodeOrigin {
    ok(NodeOrigin::new("node.example"))
}

fn pinned() -> PinnedNode {
    PinnedNode {
        address: "node.example:7443".into(),
        fingerprint: Fingerprint([7; 32]),
        origin: node_origin(),
        log_key: key(labels::NODE_LOG).public_key(),
    }
}

/// The leaf at `seq` of a log; `history` tells two logs apart.
fn leaf(history: u8, seq: u64) -> LeafData {
    LeafData {
        seq,
        timestamp_ms: 1_700_000_000_000 + seq,
        room: RoomId([1 + (seq % 3) as u8; 16]),
        header_hash: sha256(format!("header {history} {seq}").as_bytes()),
        body_hash: sha256(format!("body {history} {seq}").as_bytes()),
    }
}

/// The reference tree of `size` leaves of `history`.
fn tree(history: u8, size: u64) -> MemoryHashStore {
    let mut t = MemoryHashStore::new();
    for seq in 0..size {
        ok(t.append(&leaf(history, seq).hash()));
    }
    t
}

/// The node's checkpoint of `size` leaves with `root`, signed and verified.
fn signed(talks: TalksId, size: u64, root: Digest) -> SignedCheckpoint {
    let origin = LogOrigin::new(&node_origin(), talks);
    let cp = Checkpoint {
        origin: origin.clone(),
        size,
        root,
    };
    let note = ok(cp.sign(&key(labels::NODE_LOG)));
    ok(SignedCheckpoint::verify(
        note.note(),
        &key(labels::NODE_LOG).public_key(),
        &origin,
    ))
}

/// The mediator's ground rules, a signed statement.
fn ground_rules_statement() -> Vec<u8> {
    let f = fixtures::talks();
    let s = f.statement(
        1,
        &key(labels::OMAN_LEAD),
        f.oman,
        Payload::GroundRules(f.ground_rules.clone()),
    );
    s.as_bytes().to_vec()
}

fn participant_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let f = fixtures::talks();
    let invitation = InvitationDoc {
        node: pinned(),
        talks: f.talks,
        party: f.us,
        token: InvitationToken([3; 32]),
        expires_at: 1_800_000_000_000,
        enrolment_key: [4; 32],
    };
    let [_, _, _, us_negotiator] = fixtures::PRINCIPALS;
    let member_invitation = MemberInvitationDoc {
        node: pinned(),
        talks: f.talks,
        party: f.us,
        party_name: "United States".into(),
        principal: us_negotiator,
        name: "US negotiator".into(),
        role: Role::Negotiator,
        record_room: f.record,
    };
    let reply = MemberReplyDoc {
        talks: f.talks,
        principal: us_negotiator,
        identity_key: key(labels::US_NEGOTIATOR).public_key(),
        device_key: key(labels::US_NEGOTIATOR_DEVICE).public_key(),
        // Not checked by the parser: any statement will do.
        device_cert: ground_rules_statement(),
    };
    let entry = f
        .roster
        .parties
        .iter()
        .find(|p| p.party == f.us)
        .cloned()
        .unwrap_or_else(|| panic!("the US party entry"));
    let members = f
        .roster
        .members
        .iter()
        .filter(|m| m.party == f.us)
        .cloned()
        .collect();
    let enrolment = Enrolment { entry, members };
    let record = TalksRecord {
        talks: f.talks,
        node: pinned(),
        party: f.oman,
        party_kind: PartyKind::Mediator,
        party_name: "Sultanate of Oman".into(),
        principal: fixtures::PRINCIPALS[0],
        member_name: "Omani lead mediator".into(),
        role: Role::Head,
        record_room: Some(f.record),
        invited: vec![
            Invited {
                party: f.us,
                caucus: f.us_caucus,
            },
            Invited {
                party: f.iran,
                caucus: f.iran_caucus,
            },
        ],
        pending_members: vec![PendingMember {
            principal: PrincipalId([0xa5; 16]),
            role: Role::NoteTaker,
            name: "note-taker".into(),
        }],
        verifications: BTreeMap::from([
            (
                f.us,
                PartyVerification::Verified {
                    how: "in person, Muscat".into(),
                    at_ms: 1_800_000_000_000,
                    code: SafetyCode(sha256(b"safety code")),
                },
            ),
            (
                f.iran,
                PartyVerification::Changed {
                    was: SafetyCode(sha256(b"old safety code")),
                },
            ),
        ]),
    };
    vec![
        ("seed-invitation", invitation.to_json().into_bytes()),
        (
            "seed-member-invitation",
            member_invitation.to_json().into_bytes(),
        ),
        ("seed-member-reply", reply.to_json().into_bytes()),
        ("seed-enrolment", enrolment.to_canonical_bytes()),
        ("seed-talks-record", record.to_canonical_bytes()),
    ]
}

fn client_state_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let talks = TalksId([0x7a; 16]);
    let origin = LogOrigin::new(&node_origin(), talks);
    let log_key = key(labels::NODE_LOG).public_key();
    let t = tree(0, 13);
    let root = |t: &MemoryHashStore, size| ok(t.root_at(size));
    let leaves = |from, to| (from..to).map(|s| leaf(0, s)).collect::<Vec<_>>();

    // A follower that verified sizes 5 and 13 (three subtrees in its range).
    let f5 = ok(Follower::new().advance(&signed(talks, 5, root(&t, 5)), &leaves(0, 5)));
    let f13 = ok(f5.advance(&signed(talks, 13, root(&t, 13)), &leaves(5, 13)));

    let mut pending = Pending::new();
    for (seq, time) in [
        (13, 1_700_000_000_013),
        (14, 1_700_000_000_014),
        (20, 1_700_000_001_000),
    ] {
        ok(pending.add(seq, leaf(0, seq).hash(), time));
    }

    let mut witness = Witness::new();
    ok(witness.cosign(
        &f13,
        &signed(talks, 13, root(&t, 13)),
        &key(labels::US_HEAD_DEVICE),
        1_700_000_000,
    ));

    // Form 1: two notes of size 13. Form 2: a note of size 6 of another
    // history, and a note of size 13 whose prefix of 6 has another root.
    let other = tree(1, 6);
    let same_size = ok(ForkEvidence::from_checkpoints(
        signed(talks, 13, root(&t, 13)).note(),
        signed(talks, 13, sha256(b"another root")).note(),
        &log_key,
        &origin,
    ));
    let prefix = ok(ForkEvidence::from_prefix(
        signed(talks, 6, root(&other, 6)).note(),
        signed(talks, 13, root(&t, 13)).note(),
        &root(&t, 6),
        &ok(t.prove_consistency(6, 13)),
        &log_key,
        &origin,
    ));

    let talk = AppMessage {
        content: Content::Talk("Muscat, Tuesday: the sequencing of relief.".into()),
        salt: Salt([9; 32]),
    };
    let statement = AppMessage {
        content: Content::Statement(ground_rules_statement()),
        salt: Salt([10; 32]),
    };
    // A handover bundle (one shared room: an opened talk and an item not
    // held; one withheld room) and one part of a sealed bundle (fixed
    // bytes: sealing draws a fresh HPKE key, so no sealed part is fixed).
    let bundle = Bundle {
        talks,
        from: PrincipalId([0xa2; 16]),
        to: PrincipalId([0xa4; 16]),
        until: 40,
        checkpoint: backchannel_statement::CheckpointRef {
            size: 13,
            root: root(&t, 13),
        },
        rooms: vec![
            (
                RoomId([0x71; 16]),
                Share::Shared(vec![
                    (7, Item::Opened(talk.clone())),
                    (9, Item::NotHeld(NotHeld::Unread)),
                ]),
            ),
            (RoomId([0x79; 16]), Share::WithheldPrivateNotes),
        ],
    };
    let part = Part {
        bundle: handover::bundle_id(&bundle.to_bytes()),
        index: 0,
        count: 2,
        recipients: vec![(
            key(labels::US_NEGOTIATOR_DEVICE).public_key().id(),
            [0x5e; 80],
        )],
        ciphertext: vec![0xc1; 48],
    };
    let code = SafetyCode(sha256(b"safety code"));
    let verified = PartyVerification::Verified {
        how: "in person, Muscat".into(),
        at_ms: 1_800_000_000_000,
        code,
    };
    vec![
        ("seed-follower-empty", Follower::new().to_canonical_bytes()),
        ("seed-follower-13", f13.to_canonical_bytes()),
        ("seed-pending", pending.to_canonical_bytes()),
        ("seed-witness-new", Witness::new().to_canonical_bytes()),
        ("seed-witness-cosigned", witness.to_canonical_bytes()),
        ("seed-fork-same-size", same_size.to_canonical_bytes()),
        ("seed-fork-prefix", prefix.to_canonical_bytes()),
        ("seed-app-talk", talk.to_bytes()),
        ("seed-app-statement", statement.to_bytes()),
        ("seed-verification-verified", verified.to_canonical_bytes()),
        (
            "seed-verification-vouched",
            PartyVerification::VouchedByMediator.to_canonical_bytes(),
        ),
        (
            "seed-verification-changed",
            PartyVerification::Changed { was: code }.to_canonical_bytes(),
        ),
        ("seed-safety-code", code.to_canonical_bytes()),
        ("seed-handover-bundle", bundle.to_bytes()),
        ("seed-handover-part", part.to_bytes()),
    ]
}

fn data_tile_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let tile = |from: u64, to: u64| -> Vec<u8> {
        (from..to)
            .flat_map(|s| leaf(0, s).to_canonical_bytes())
            .collect()
    };
    vec![
        ("seed-tile-0-of-3", tile(0, 3)),
        ("seed-tile-256-of-2", tile(256, 258)),
    ]
}

/// What the `mls` target parses that has a fixed encoding: handshake
/// bodies (around opaque MLS bytes), a copy of statements, an attachment,
/// and a request written before its first send. (MLS messages themselves
/// carry fresh randomness, so none is a fixed seed.)
fn mls_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let f = fixtures::talks();
    let create = Handshake::Create {
        group_info: b"group info bytes",
    };
    let commit = Handshake::Commit {
        commit: b"commit bytes",
        group_info: b"group info bytes",
    };
    // Copy: u32 n, then (seq, salt, u32 len, statement).
    let statement = ground_rules_statement();
    let mut copy = 2u32.to_be_bytes().to_vec();
    for (seq, salt) in [(3u64, [5u8; 32]), (4, [6; 32])] {
        copy.extend_from_slice(&seq.to_be_bytes());
        copy.extend_from_slice(&salt);
        copy.extend_from_slice(&(statement.len() as u32).to_be_bytes());
        copy.extend_from_slice(&statement);
    }
    let attachment = Attachment {
        blob: sha256(b"blob"),
        size: 50_000,
        key: [8; 32],
        name: "brief.pdf".into(),
    };
    // Unsent: version 1, route 1 (an envelope), the signed header, the body.
    let body = ok(pad_body(b"an MLS message"));
    let header = ok(Header {
        talks: f.talks,
        room: f.record,
        sender: key(labels::US_HEAD_DEVICE).public_key().id(),
        kind: Kind::MlsApp,
        idempotency_key: [1; 16],
        body_len: body.len() as u32,
        body_hash: sha256(&body),
        commitment: Commitment([2; 32]),
    }
    .sign(&key(labels::US_HEAD_DEVICE)));
    let mut unsent = vec![1u8, 1];
    unsent.extend_from_slice(&header.to_bytes());
    unsent.extend_from_slice(&(body.len() as u32).to_be_bytes());
    unsent.extend_from_slice(&body);
    vec![
        ("seed-handshake-create", create.encode()),
        ("seed-handshake-commit", commit.encode()),
        ("seed-copy", copy),
        ("seed-attachment", attachment.to_bytes()),
        ("seed-unsent-envelope", unsent),
    ]
}

#[test]
fn the_seeds_are_what_the_code_encodes() {
    let regenerate = std::env::var_os("BACKCHANNEL_REGENERATE_VECTORS").is_some();
    for (target, seeds) in [
        ("participant", participant_seeds()),
        ("client_state", client_state_seeds()),
        ("data_tile", data_tile_seeds()),
        ("mls", mls_seeds()),
    ] {
        let dir = corpus().join(target);
        for (name, bytes) in seeds {
            let path = dir.join(name);
            if regenerate {
                ok(std::fs::create_dir_all(&dir));
                ok(std::fs::write(&path, &bytes));
                continue;
            }
            let stored = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run with BACKCHANNEL_REGENERATE_VECTORS=1",
                    path.display()
                )
            });
            assert!(
                stored == bytes,
                "{} differs from what the code encodes; run with BACKCHANNEL_REGENERATE_VECTORS=1",
                path.display()
            );
        }
    }
}
