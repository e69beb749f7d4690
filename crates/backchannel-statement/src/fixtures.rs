//! Deterministic talks for tests, vectors, benches and fuzz seeds: Oman
//! mediating between the United States and Iran (the reference scenario),
//! every key derived from a fixed seed. Not for production use: the keys
//! are public.

use backchannel_codec::{PartyId, PrincipalId, RoomId, TalksId};
use backchannel_crypto::{PublicKey, SecretKey, Signer};

use crate::markings::Markings;
use crate::payload::Payload;
use crate::roles::{Act, PartyKind, Role};
use crate::roster::{
    Calendar, ChangeRule, ExportRecipient, ExportRule, ExportScope, GroundRules, KeyVerification,
    MemberFields, PartyEntry, RoomDecl, RoomPurpose, Roster, SigningRule,
};
use crate::statement::{Audience, CheckpointRef, SignedStatement, Statement};
use crate::{Attribution, Conveyance};

/// A key derived from a one-byte label (seed = `[label; 32]`).
pub fn key(label: u8) -> SecretKey {
    // Seeds of repeated bytes all give valid keys; a test checks every label used.
    SecretKey::from_seed(&[label; 32]).unwrap_or_else(|e| panic!("fixture seed {label}: {e}"))
}

/// An id of 16 repeated bytes.
pub const fn id(b: u8) -> [u8; 16] {
    [b; 16]
}

/// `s` with the lowest bit of its signature's S flipped: it still decodes,
/// R and S are still well formed (S stays canonical but for a negligible
/// chance), and only the verification equation fails.
pub fn forged(s: &SignedStatement) -> SignedStatement {
    let mut bytes = s.as_bytes().to_vec();
    let s_low = bytes.len() - 32;
    bytes[s_low] ^= 1;
    SignedStatement::decode(&bytes).unwrap_or_else(|e| panic!("{e}"))
}

/// A deterministic RNG for fixtures.
pub fn rng(seed: u64) -> rand_chacha_like::Rng {
    rand_chacha_like::Rng(seed)
}

/// A tiny deterministic generator (SplitMix64) so fixtures need no RNG crate.
pub mod rand_chacha_like {
    /// SplitMix64, as a `CryptoRng` only for deterministic fixtures.
    pub struct Rng(pub u64);
    impl rand_core::RngCore for Rng {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for chunk in dest.chunks_mut(8) {
                let v = self.next_u64().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl rand_core::CryptoRng for Rng {}
}

/// The reference talks.
pub struct Talks {
    /// Talks id.
    pub talks: TalksId,
    /// Oman (mediator), United States, Iran.
    pub oman: PartyId,
    /// The US delegation.
    pub us: PartyId,
    /// The Iranian delegation.
    pub iran: PartyId,
    /// The record room.
    pub record: RoomId,
    /// The US caucus (US with Oman).
    pub us_caucus: RoomId,
    /// The Iranian caucus (Iran with Oman).
    pub iran_caucus: RoomId,
    /// The roster.
    pub roster: Roster,
    /// The ground rules.
    pub ground_rules: GroundRules,
}

/// Key labels: long-term authority 1x, talks authority 2x, identity 3x, device 4x;
/// x = 1 Oman lead, 2 US head, 3 Iran head, 4 US negotiator; talks
/// authority successors 25 (US) and 26 (Iran).
pub mod labels {
    /// Oman's long-term authority.
    pub const OMAN_AUTHORITY: u8 = 0x11;
    /// US long-term authority.
    pub const US_AUTHORITY: u8 = 0x12;
    /// Iran's long-term authority.
    pub const IRAN_AUTHORITY: u8 = 0x13;
    /// Oman's talks authority.
    pub const OMAN_TALKS: u8 = 0x21;
    /// US talks authority.
    pub const US_TALKS: u8 = 0x22;
    /// Iran's talks authority.
    pub const IRAN_TALKS: u8 = 0x23;
    /// A successor to the US talks authority (not in the roster: an
    /// `authority-passed` statement names it).
    pub const US_TALKS_SUCCESSOR: u8 = 0x25;
    /// A successor to Iran's talks authority (not in the roster).
    pub const IRAN_TALKS_SUCCESSOR: u8 = 0x26;
    /// Oman lead mediator's identity key.
    pub const OMAN_LEAD: u8 = 0x31;
    /// US head's identity key.
    pub const US_HEAD: u8 = 0x32;
    /// Iran head's identity key.
    pub const IRAN_HEAD: u8 = 0x33;
    /// US negotiator's identity key.
    pub const US_NEGOTIATOR: u8 = 0x34;
    /// Oman lead's device.
    pub const OMAN_LEAD_DEVICE: u8 = 0x41;
    /// US head's device.
    pub const US_HEAD_DEVICE: u8 = 0x42;
    /// Iran head's device.
    pub const IRAN_HEAD_DEVICE: u8 = 0x43;
    /// US negotiator's device.
    pub const US_NEGOTIATOR_DEVICE: u8 = 0x44;
    /// The node's log key.
    pub const NODE_LOG: u8 = 0x51;
}

fn pk(label: u8) -> PublicKey {
    key(label).public_key()
}

/// Principal ids: Oman lead, US head, Iran head, US negotiator.
pub const PRINCIPALS: [PrincipalId; 4] = [
    PrincipalId(id(0xa1)),
    PrincipalId(id(0xa2)),
    PrincipalId(id(0xa3)),
    PrincipalId(id(0xa4)),
];

/// A room declaration, its members sorted.
fn room(room: RoomId, purpose: RoomPurpose, name: &str, mut members: Vec<PrincipalId>) -> RoomDecl {
    members.sort();
    RoomDecl {
        room,
        purpose,
        name: name.into(),
        members,
    }
}

/// Builds the reference talks.
pub fn talks() -> Talks {
    use labels::*;
    let talks = TalksId(id(0x01));
    let (oman, us, iran) = (PartyId(id(0x0a)), PartyId(id(0x0b)), PartyId(id(0x0c)));
    let (record, us_caucus, iran_caucus) = (RoomId(id(0x71)), RoomId(id(0x72)), RoomId(id(0x73)));
    let [lead, us_head, iran_head, us_neg] = PRINCIPALS;
    let party = |p, kind, name: &str, auth: u8, talks_auth: u8| {
        PartyEntry::certify(talks, p, kind, name, &key(auth), pk(talks_auth))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    // Each member is certified by its own party's talks authority.
    let talks_authority = |p: PartyId| {
        if p == oman {
            OMAN_TALKS
        } else if p == us {
            US_TALKS
        } else {
            IRAN_TALKS
        }
    };
    let member = |principal, party, role: Role, name: &str, ident: u8, dev: u8| {
        let acts = [
            Act::AcceptTalks,
            Act::ReleaseMessage,
            Act::SignAgreement,
            Act::Convey,
        ]
        .into_iter()
        .filter(|a| role.permits(*a))
        .collect();
        MemberFields {
            principal,
            party,
            role,
            name: name.into(),
            identity_key: pk(ident),
            devices: vec![pk(dev)],
            acts,
        }
        .certify(talks, &key(talks_authority(party)))
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let mut roster = Roster {
        parties: vec![
            party(
                oman,
                PartyKind::Mediator,
                "Sultanate of Oman",
                OMAN_AUTHORITY,
                OMAN_TALKS,
            ),
            party(
                us,
                PartyKind::Party,
                "United States",
                US_AUTHORITY,
                US_TALKS,
            ),
            party(
                iran,
                PartyKind::Party,
                "Islamic Republic of Iran",
                IRAN_AUTHORITY,
                IRAN_TALKS,
            ),
        ],
        members: vec![
            member(
                lead,
                oman,
                Role::Lead,
                "Lead mediator",
                OMAN_LEAD,
                OMAN_LEAD_DEVICE,
            ),
            member(us_head, us, Role::Head, "US envoy", US_HEAD, US_HEAD_DEVICE),
            member(
                iran_head,
                iran,
                Role::Head,
                "Deputy foreign minister",
                IRAN_HEAD,
                IRAN_HEAD_DEVICE,
            ),
            member(
                us_neg,
                us,
                Role::Negotiator,
                "US negotiator",
                US_NEGOTIATOR,
                US_NEGOTIATOR_DEVICE,
            ),
        ],
        rooms: vec![
            room(record, RoomPurpose::Record, "Record", PRINCIPALS.to_vec()),
            room(
                us_caucus,
                RoomPurpose::Caucus,
                "Caucus: Oman with the United States",
                vec![lead, us_head, us_neg],
            ),
            room(
                iran_caucus,
                RoomPurpose::Caucus,
                "Caucus: Oman with Iran",
                vec![lead, iran_head],
            ),
        ],
        rules: vec![SigningRule {
            party: us,
            act: Act::SignAgreement,
            threshold: 1,
            signers: vec![us_head],
        }],
        access_list_hash: backchannel_crypto::Digest([0; 32]),
    };
    roster.access_list_hash = roster
        .implied_access_list(talks)
        .unwrap_or_else(|e| panic!("{e}"))
        .hash();
    let mut exports = vec![
        ExportRule {
            party: us,
            scope: ExportScope::OwnStatements,
            to: ExportRecipient::OwnArchive,
        },
        ExportRule {
            party: iran,
            scope: ExportScope::OwnStatements,
            to: ExportRecipient::OwnArchive,
        },
        ExportRule {
            party: oman,
            scope: ExportScope::EvidenceBundles,
            to: ExportRecipient::Arbiter,
        },
    ];
    exports.sort();
    let ground_rules = GroundRules {
        confidentiality_default: Conveyance::MediatorOnly,
        attribution_default: Attribution::Formal,
        exports,
        sealed_letters: Vec::new(),
        retention_days: Some(3650),
        calendar: Calendar {
            time_zone: "Asia/Muscat".into(),
            working_days: 0b001_1111,
        },
        key_verification: KeyVerification::Required,
        change_rule: ChangeRule::AllParties,
    };
    Talks {
        talks,
        oman,
        us,
        iran,
        record,
        us_caucus,
        iran_caucus,
        roster,
        ground_rules,
    }
}

impl Talks {
    /// A statement signed by `signer` for `party`, addressed to the record room.
    pub fn statement(
        &self,
        seed: u64,
        signer: &dyn Signer,
        party: PartyId,
        payload: Payload,
    ) -> SignedStatement {
        Statement::new(
            &mut rng(seed),
            self.talks,
            signer.public_key().id(),
            party,
            vec![Audience::Room(self.record)],
            CheckpointRef::NONE,
            Markings::mediator_only(),
            payload,
        )
        .and_then(|s| s.sign(signer))
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The plenary room of [`talks_with_plenary_and_letter`]: the lead mediator
/// with both heads.
pub const PLENARY: RoomId = RoomId(id(0x74));
/// The letter room of [`talks_with_plenary_and_letter`]: the US head and
/// the Iranian head, no mediator.
pub const LETTER: RoomId = RoomId(id(0x75));

/// The reference talks with two more rooms, [`PLENARY`] and [`LETTER`], and
/// ground rules that allow sealed letters between the United States and
/// Iran; everything else as [`talks`] builds it.
pub fn talks_with_plenary_and_letter() -> Talks {
    let [lead, us_head, iran_head, _] = PRINCIPALS;
    let mut t = talks_with(vec![
        room(
            PLENARY,
            RoomPurpose::Plenary,
            "Plenary",
            vec![lead, us_head, iran_head],
        ),
        room(
            LETTER,
            RoomPurpose::Letter,
            "Letters: United States and Iran",
            vec![us_head, iran_head],
        ),
    ]);
    t.ground_rules.sealed_letters = vec![(t.us.min(t.iran), t.us.max(t.iran))];
    t
}

/// The US delegation's internal room of [`talks_with_internal_rooms`]: the
/// US head and negotiator, no mediator.
pub const US_INTERNAL: RoomId = RoomId(id(0x76));
/// Iran's internal room of [`talks_with_internal_rooms`]: the Iranian head.
pub const IRAN_INTERNAL: RoomId = RoomId(id(0x77));
/// The mediators' room of [`talks_with_internal_rooms`]: the lead mediator.
pub const MEDIATORS: RoomId = RoomId(id(0x78));

/// The reference talks with every room of proximity talks: besides the
/// record and the two caucuses, each delegation's internal room
/// ([`US_INTERNAL`], [`IRAN_INTERNAL`]) and the mediators' room
/// ([`MEDIATORS`]); everything else as [`talks`] builds it.
pub fn talks_with_internal_rooms() -> Talks {
    let [lead, us_head, iran_head, us_neg] = PRINCIPALS;
    talks_with(vec![
        room(
            US_INTERNAL,
            RoomPurpose::PartyInternal,
            "Internal: United States",
            vec![us_head, us_neg],
        ),
        room(
            IRAN_INTERNAL,
            RoomPurpose::PartyInternal,
            "Internal: Iran",
            vec![iran_head],
        ),
        room(MEDIATORS, RoomPurpose::Mediators, "Mediators", vec![lead]),
    ])
}

/// The reference talks with `rooms` declared too: rooms in id order, the
/// roster's access-list hash recomputed.
fn talks_with(rooms: Vec<RoomDecl>) -> Talks {
    let mut t = talks();
    t.roster.rooms.extend(rooms);
    t.roster.rooms.sort_by_key(|r| r.room);
    t.roster.access_list_hash = t
        .roster
        .implied_access_list(t.talks)
        .unwrap_or_else(|e| panic!("{e}"))
        .hash();
    t
}

impl Talks {
    /// A statement signed by `signer` for `party`, addressed to `audience`
    /// (rooms and parties), for statements posted outside the record room.
    pub fn statement_to(
        &self,
        seed: u64,
        signer: &dyn Signer,
        party: PartyId,
        audience: Vec<Audience>,
        payload: Payload,
    ) -> SignedStatement {
        Statement::new(
            &mut rng(seed),
            self.talks,
            signer.public_key().id(),
            party,
            audience,
            CheckpointRef::NONE,
            Markings::mediator_only(),
            payload,
        )
        .and_then(|s| s.sign(signer))
        .unwrap_or_else(|e| panic!("{e}"))
    }
}
