//! Known-answer vectors for every statement-level format
//! (`test-vectors/statement/*.json`), and the fuzz seed corpus.
//!
//! Every vector is made from fixed seeds, so this test regenerates them and
//! compares byte for byte; it also decodes and verifies the stored bytes, so
//! a change of encoding or of a context string fails here. Run with
//! `BACKCHANNEL_REGENERATE_VECTORS=1` to rewrite them after a deliberate
//! format change (there should be none within format version 1).

use std::path::{Path, PathBuf};

use backchannel_codec::{Decode, Encode, StatementId};
use backchannel_crypto::{Digest, Signer, sha256};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::header::pad_body;
use backchannel_statement::text::{LangString, LanguageTag, Unit, UnitId};
use backchannel_statement::*;
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn regenerate() -> bool {
    std::env::var_os("BACKCHANNEL_REGENERATE_VECTORS").is_some()
}

/// Writes (when regenerating) or compares one vector file.
fn check(name: &str, value: Value) {
    let path = root()
        .join("test-vectors/statement")
        .join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(&value).unwrap_or_else(|e| panic!("{e}")) + "\n";
    if regenerate() {
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with BACKCHANNEL_REGENERATE_VECTORS=1",
            path.display()
        )
    });
    assert_eq!(
        stored,
        text,
        "{} differs from what the code produces",
        path.display()
    );
}

/// Writes a fuzz seed (when regenerating).
fn seed(target: &str, name: &str, bytes: &[u8]) {
    if regenerate() {
        let dir = root().join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The US talks authority re-appointed by Oman: the successor's
/// signature, the US long-term authority's certification, Iran's
/// endorsement (the change rule of the fixture ground rules is all parties).
fn reappointed_us_authority(t: &fixtures::Talks) -> AuthorityPassed {
    let old = key(US_TALKS).public_key().id();
    let new = key(US_TALKS_SUCCESSOR).public_key();
    let how = PassedHow::Reappointed;
    let sign = |label: u8| {
        AuthorityPassed::sign_transfer(&key(label), t.talks, t.us, &old, &new, how)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    AuthorityPassed::new(
        t.us,
        old,
        new,
        how,
        sign(US_TALKS_SUCCESSOR),
        Some(sign(US_AUTHORITY)),
        vec![Endorsement {
            key: key(IRAN_TALKS).public_key().id(),
            signature: sign(IRAN_TALKS),
        }],
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn stored_hex(name: &str, field: &str) -> Vec<u8> {
    let path = root()
        .join("test-vectors/statement")
        .join(format!("{name}.json"));
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    hex::decode(
        v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{name}.{field}")),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn text() -> StructuredText {
    let tag = |t| LanguageTag::new(t).unwrap_or_else(|e| panic!("{e}"));
    let s = |t, x: &str| LangString::new(tag(t), x).unwrap_or_else(|e| panic!("{e}"));
    StructuredText::new(vec![Unit {
        id: UnitId(7),
        label: "1".into(),
        strings: vec![
            s("en", "Each side releases five detainees."),
            s("fa", "هر طرف پنج زندانی را آزاد می\u{200C}کند."),
        ],
        children: vec![Unit {
            id: UnitId(8),
            label: "1(a)".into(),
            strings: vec![s("en", "Through the escrow agent, simultaneously.")],
            children: vec![],
        }],
    }])
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn primitives() {
    let k = key(US_HEAD);
    check(
        "key-id",
        json!({
            "description": "key id = SHA-256(\"backchannel/v1/key-id\" || 0x01 || Ed25519 public key)",
            "seed": hex::encode([US_HEAD; 32]),
            "public_key": hex::encode(k.public_key().as_bytes()),
            "key_id": k.public_key().id().to_hex(),
        }),
    );
    let salt = Salt([0x5a; 32]);
    let c = Commitment::to_plaintext(&salt, b"Muscat");
    check(
        "commitment",
        json!({
            "description": "SHA-256(\"backchannel/v1/commitment\" || salt || plaintext)",
            "salt": hex::encode(salt.0),
            "plaintext": hex::encode(b"Muscat"),
            "commitment": hex::encode(c.0),
        }),
    );
    let body = pad_body(b"Muscat").unwrap_or_else(|e| panic!("{e}"));
    check(
        "body",
        json!({
            "description": "body = u32 length || message || zeros up to the smallest bucket (1 KiB here)",
            "message": hex::encode(b"Muscat"),
            "body_len": body.len(),
            "body_prefix": hex::encode(&body[..16]),
            "body_sha256": sha256(&body).to_hex(),
        }),
    );
    let t = text();
    let bytes = t.to_canonical_bytes();
    seed("text", "seed-structured-text", &bytes);
    seed(
        "text",
        "seed-markings",
        &Markings::mediator_only().to_canonical_bytes(),
    );
    check(
        "structured-text",
        json!({
            "description": "two units, English and Persian (with ZWNJ), nested",
            "encoding": hex::encode(&bytes),
        }),
    );
    assert_eq!(
        StructuredText::from_canonical_bytes(&stored_hex("structured-text", "encoding")),
        Ok(t)
    );
}

#[test]
fn statements() {
    let t = fixtures::talks();
    let mut markings = Markings::new(
        Conveyance::VerbatimMayBeConveyed,
        vec![
            HandlingLabel::WithoutPrejudice,
            HandlingLabel::Free("NOFORN".into()),
        ],
        Attribution::Exploratory,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    markings.receipt_required = true;
    markings.respond_by = Some(1_705_320_000_000);
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
    let member = MemberCert::new(
        fixtures::PRINCIPALS[3],
        t.us,
        Role::Negotiator,
        key(US_NEGOTIATOR).public_key(),
        vec![Act::ProposeText, Act::ReleaseMessage],
        Some(1_767_225_600_000),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let list = t
        .roster
        .implied_access_list(t.talks)
        .unwrap_or_else(|e| panic!("{e}"));
    let delta = AccessListDelta::new(
        t.talks,
        list.hash(),
        vec![key(US_NEGOTIATOR_DEVICE).public_key().id()],
        vec![],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let sig = delta.sign(&key(US_TALKS)).unwrap_or_else(|e| panic!("{e}"));
    let change = AccessListChange::new(delta, vec![sig]).unwrap_or_else(|e| panic!("{e}"));
    let lifecycle = LifecycleChange::new(
        LifecyclePhase::Suspended,
        "Consultations in capitals.\nWe expect to resume within ten days.",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cases: Vec<(&str, u8, _, Payload, Markings)> = vec![
        (
            "roster",
            OMAN_TALKS,
            t.oman,
            Payload::Roster(t.roster.clone()),
            Markings::mediator_only(),
        ),
        (
            "ground-rules",
            OMAN_TALKS,
            t.oman,
            Payload::GroundRules(t.ground_rules.clone()),
            Markings::mediator_only(),
        ),
        (
            "acceptance",
            IRAN_TALKS,
            t.iran,
            Payload::Acceptance(Acceptance {
                roster: roster.unverified().id,
                roster_hash: roster.hash(),
                ground_rules: rules.unverified().id,
                ground_rules_hash: rules.hash(),
            }),
            markings.clone(),
        ),
        (
            "access-list-change",
            US_TALKS,
            t.us,
            Payload::AccessListChange(change.clone()),
            Markings::mediator_only(),
        ),
        (
            "device-cert",
            US_HEAD,
            t.us,
            Payload::DeviceCert(DeviceCert {
                principal: fixtures::PRINCIPALS[1],
                device_key: key(US_HEAD_DEVICE).public_key(),
                not_after: 1_767_225_600_000,
            }),
            Markings::mediator_only(),
        ),
        (
            "member-cert",
            US_TALKS,
            t.us,
            Payload::MemberCert(member),
            Markings::mediator_only(),
        ),
        (
            "revoke",
            US_TALKS,
            t.us,
            Payload::Revoke(Revoke {
                key: key(US_HEAD_DEVICE).public_key().id(),
                reason: RevokeReason::Lost,
                lost_at: Some(1_705_000_000_000),
            }),
            Markings::mediator_only(),
        ),
        (
            "lifecycle",
            US_TALKS,
            t.us,
            Payload::Lifecycle(lifecycle.clone()),
            Markings::mediator_only(),
        ),
        (
            "message",
            US_HEAD,
            t.us,
            Payload::Message({
                let mut m = Message::new(
                    Some(AgendaItem::new("proxies").unwrap_or_else(|e| panic!("{e}"))),
                    "Iran must restrain its proxies.",
                    Some(Release {
                        draft: StatementId([0x41; 16]),
                        draft_hash: Digest([0x42; 32]),
                        drafter: fixtures::PRINCIPALS[3],
                    }),
                )
                .unwrap_or_else(|e| panic!("{e}"));
                m.reply_to = Some(StatementId([0x43; 16]));
                m
            }),
            {
                let mut m = Markings::new(
                    Conveyance::VerbatimMayBeConveyed,
                    vec![],
                    Attribution::Formal,
                )
                .unwrap_or_else(|e| panic!("{e}"));
                m.receipt_required = true;
                m.respond_by = Some(1_705_003_600_000);
                m
            },
        ),
        (
            "conveyance-verbatim",
            OMAN_LEAD,
            t.oman,
            Payload::Conveyance(Conveyed::Verbatim(
                Verbatim::new(
                    t.us_caucus,
                    17,
                    1_705_000_000_000,
                    vec![0x51; 223],
                    [0x52; 32],
                    vec![0x53; 40],
                    Digest([0x54; 32]),
                    18,
                    vec![Digest([0x55; 32]), Digest([0x56; 32])],
                )
                .unwrap_or_else(|e| panic!("{e}")),
            )),
            Markings::mediator_only(),
        ),
        (
            "conveyance-redrafted",
            OMAN_LEAD,
            t.oman,
            Payload::Conveyance(Conveyed::Redrafted {
                about: t.iran,
                item: AgendaItem::new("ceasefire").ok(),
                text: "Iran would consider a ceasefire as a first step.".into(),
            }),
            Markings::mediator_only(),
        ),
        (
            "conveyance-non-paper",
            OMAN_LEAD,
            t.oman,
            Payload::Conveyance(Conveyed::NonPaper {
                item: AgendaItem::new("detainees").ok(),
                text: "A phased exchange of detainees.".into(),
            }),
            Markings::mediator_only(),
        ),
        (
            "conveyance-recorded",
            OMAN_LEAD,
            t.oman,
            Payload::Conveyance(Conveyed::Recorded {
                by: t.iran,
                at: 1_705_000_300_000,
                item: None,
                text: "Conveyed orally: the talks may continue.".into(),
            }),
            Markings::mediator_only(),
        ),
        (
            "receipt",
            IRAN_HEAD,
            t.iran,
            Payload::Receipt(Receipt {
                kind: ReceiptKind::Received,
                statement: StatementId([0x61; 16]),
                hash: Digest([0x62; 32]),
                room: t.iran_caucus,
                seq: 21,
            }),
            Markings::mediator_only(),
        ),
        (
            "commit-failure",
            US_HEAD,
            t.us,
            Payload::CommitFailure(
                CommitFailure::new(
                    t.us_caucus,
                    30,
                    4,
                    "the commit's path secret did not decrypt",
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            Markings::mediator_only(),
        ),
        (
            "session-consent",
            US_TALKS,
            t.us,
            Payload::SessionConsent(
                SessionConsent::new(fixtures::PLENARY, 1_705_000_000_000, 1_705_007_200_000)
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
            Markings::mediator_only(),
        ),
        (
            "history-shared",
            US_HEAD,
            t.us,
            Payload::HistoryShared(
                HistoryShared::new(
                    fixtures::PRINCIPALS[3],
                    vec![t.record, t.us_caucus],
                    42,
                    Digest([0x71; 32]),
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            Markings::mediator_only(),
        ),
        (
            "authority-passed",
            OMAN_TALKS,
            t.oman,
            Payload::AuthorityPassed(reappointed_us_authority(&t)),
            Markings::mediator_only(),
        ),
    ];
    for (i, (name, label, party, payload, markings)) in cases.into_iter().enumerate() {
        let signer = key(label);
        let ty = payload.statement_type();
        let statement = Statement::new(
            &mut fixtures::rng(1000 + i as u64),
            t.talks,
            signer.public_key().id(),
            party,
            vec![Audience::Room(t.record), Audience::Party(t.us)],
            CheckpointRef {
                size: 17,
                root: Digest([0xcc; 32]),
            },
            markings,
            payload,
        )
        .and_then(|s| s.sign(&signer))
        .unwrap_or_else(|e| panic!("{e}"));
        seed("statement", &format!("seed-{name}"), statement.as_bytes());
        check(
            &format!("statement-{name}"),
            json!({
                "description": format!("a signed {name} statement; signature = Ed25519(author, context || frame)"),
                "type_code": ty.code(),
                "context": ty.context().as_str(),
                "talks": t.talks.to_hex(),
                "author_public_key": hex::encode(signer.public_key().as_bytes()),
                "signed_statement": hex::encode(statement.as_bytes()),
                "statement_sha256": statement.hash().to_hex(),
            }),
        );
        // The stored bytes decode and verify with today's code.
        let stored = stored_hex(&format!("statement-{name}"), "signed_statement");
        let decoded = SignedStatement::decode(&stored).unwrap_or_else(|e| panic!("{name}: {e}"));
        decoded
            .verify(t.talks, &signer.public_key())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    let list_bytes = list.to_canonical_bytes();
    seed("access_list", "seed-list", &list_bytes);
    seed("access_list", "seed-change", &change.to_canonical_bytes());
    seed("roster", "seed-roster", &t.roster.to_canonical_bytes());
    seed(
        "roster",
        "seed-ground-rules",
        &t.ground_rules.to_canonical_bytes(),
    );
    seed("text", "seed-lifecycle", &lifecycle.to_canonical_bytes());
    check(
        "lifecycle",
        json!({
            "description": "a lifecycle change payload: phase:u8 (0x01 suspended) || reason:text",
            "phase": lifecycle.phase as u8,
            "reason": lifecycle.reason(),
            "encoding": hex::encode(lifecycle.to_canonical_bytes()),
        }),
    );
    assert_eq!(
        LifecycleChange::from_canonical_bytes(&stored_hex("lifecycle", "encoding")),
        Ok(lifecycle)
    );
    check(
        "access-list",
        json!({
            "description": "the access list the fixture roster implies, and its SHA-256 (the roster's access_list_hash)",
            "encoding": hex::encode(&list_bytes),
            "sha256": list.hash().to_hex(),
        }),
    );
    assert_eq!(list.hash(), t.roster.access_list_hash);
    assert_eq!(sha256(&stored_hex("access-list", "encoding")), list.hash());
}

#[test]
fn headers() {
    let t = fixtures::talks();
    let device = key(US_HEAD_DEVICE);
    let body = pad_body(b"Muscat").unwrap_or_else(|e| panic!("{e}"));
    let header = Header {
        talks: t.talks,
        room: t.us_caucus,
        sender: device.public_key().id(),
        kind: Kind::Alert(Severity::Flash),
        idempotency_key: [0x1d; 16],
        body_len: body.len() as u32,
        body_hash: sha256(&body),
        commitment: Commitment::to_plaintext(&Salt([0x5a; 32]), b"Muscat"),
    }
    .sign(&device)
    .unwrap_or_else(|e| panic!("{e}"));
    seed("header", "seed-alert", &header.to_bytes());
    seed("header", "seed-body", &body);
    check(
        "envelope-header",
        json!({
            "description": "a signed alert header; signature = Ed25519(device, \"backchannel/v1/envelope\" || 159 header bytes)",
            "device_public_key": hex::encode(device.public_key().as_bytes()),
            "signed_header": hex::encode(header.to_bytes()),
            "header_hash": header.hash().to_hex(),
        }),
    );
    let stored = SignedHeader::decode(&stored_hex("envelope-header", "signed_header"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(stored.verify(&device.public_key()).is_ok());
}
