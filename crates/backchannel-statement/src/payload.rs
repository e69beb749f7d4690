//! Statement payload types. Later issues add types (new codes), never new
//! fields to these.

use backchannel_codec::{Decode, DecodeError, Encode, Reader, StatementId, Writer};
use backchannel_crypto::{Context, Digest};

use crate::access_list::AccessListChange;
use crate::authority::AuthorityPassed;
use crate::certs::{DeviceCert, MemberCert, Revoke};
use crate::history::HistoryShared;
use crate::lifecycle::LifecycleChange;
use crate::message::{CommitFailure, Conveyed, Message, Receipt, SessionConsent};
use crate::roster::{GroundRules, Roster};

/// A statement's type: its code in the frame and its signature context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatementType {
    /// The roster.
    Roster,
    /// The ground rules.
    GroundRules,
    /// A party's acceptance of roster and ground rules.
    Acceptance,
    /// A signed change to the node's access list.
    AccessListChange,
    /// A device certificate.
    DeviceCert,
    /// A member certificate.
    MemberCert,
    /// A key revocation.
    Revoke,
    /// A change of the talks' phase (suspend, resume, conclude, close).
    Lifecycle,
    /// A member's words in a room (a draft, or a released message).
    Message,
    /// A mediator's conveyance (verbatim, re-drafted, non-paper, recorded).
    Conveyance,
    /// A party's formal receipt of a `receipt-required` statement.
    Receipt,
    /// A member could not process a sequenced commit and rejoins.
    CommitFailure,
    /// A party's consent to a time-boxed joint session.
    SessionConsent,
    /// A member handed the history of rooms over to a successor.
    HistoryShared,
    /// A party's talks authority passed to a new key.
    AuthorityPassed,
}

impl StatementType {
    /// Every type of this version.
    pub const ALL: [StatementType; 15] = [
        StatementType::Roster,
        StatementType::GroundRules,
        StatementType::Acceptance,
        StatementType::AccessListChange,
        StatementType::DeviceCert,
        StatementType::MemberCert,
        StatementType::Revoke,
        StatementType::Lifecycle,
        StatementType::Message,
        StatementType::Conveyance,
        StatementType::Receipt,
        StatementType::CommitFailure,
        StatementType::SessionConsent,
        StatementType::HistoryShared,
        StatementType::AuthorityPassed,
    ];

    /// The type's code in the frame.
    pub const fn code(self) -> u16 {
        match self {
            StatementType::Roster => 1,
            StatementType::GroundRules => 2,
            StatementType::Acceptance => 3,
            StatementType::AccessListChange => 4,
            StatementType::DeviceCert => 5,
            StatementType::MemberCert => 6,
            StatementType::Revoke => 7,
            StatementType::Lifecycle => 8,
            StatementType::Message => 9,
            StatementType::Conveyance => 10,
            StatementType::Receipt => 11,
            StatementType::CommitFailure => 12,
            StatementType::SessionConsent => 13,
            StatementType::HistoryShared => 14,
            StatementType::AuthorityPassed => 15,
        }
    }

    /// The type with `code`, if this version defines it.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The type's name, as in its context string.
    pub const fn name(self) -> &'static str {
        match self {
            StatementType::Roster => "roster",
            StatementType::GroundRules => "ground-rules",
            StatementType::Acceptance => "acceptance",
            StatementType::AccessListChange => "access-list-change",
            StatementType::DeviceCert => "device-cert",
            StatementType::MemberCert => "member-cert",
            StatementType::Revoke => "revoke",
            StatementType::Lifecycle => "lifecycle",
            StatementType::Message => "message",
            StatementType::Conveyance => "conveyance",
            StatementType::Receipt => "receipt",
            StatementType::CommitFailure => "commit-failure",
            StatementType::SessionConsent => "session-consent",
            StatementType::HistoryShared => "history-shared",
            StatementType::AuthorityPassed => "authority-passed",
        }
    }

    /// The signature context: `backchannel/v1/statement/<name>`.
    pub const fn context(self) -> Context {
        match self {
            StatementType::Roster => Context::new("backchannel/v1/statement/roster"),
            StatementType::GroundRules => Context::new("backchannel/v1/statement/ground-rules"),
            StatementType::Acceptance => Context::new("backchannel/v1/statement/acceptance"),
            StatementType::AccessListChange => {
                Context::new("backchannel/v1/statement/access-list-change")
            }
            StatementType::DeviceCert => Context::new("backchannel/v1/statement/device-cert"),
            StatementType::MemberCert => Context::new("backchannel/v1/statement/member-cert"),
            StatementType::Revoke => Context::new("backchannel/v1/statement/revoke"),
            StatementType::Lifecycle => Context::new("backchannel/v1/statement/lifecycle"),
            StatementType::Message => Context::new("backchannel/v1/statement/message"),
            StatementType::Conveyance => Context::new("backchannel/v1/statement/conveyance"),
            StatementType::Receipt => Context::new("backchannel/v1/statement/receipt"),
            StatementType::CommitFailure => Context::new("backchannel/v1/statement/commit-failure"),
            StatementType::SessionConsent => {
                Context::new("backchannel/v1/statement/session-consent")
            }
            StatementType::HistoryShared => Context::new("backchannel/v1/statement/history-shared"),
            StatementType::AuthorityPassed => {
                Context::new("backchannel/v1/statement/authority-passed")
            }
        }
    }
}

/// A party's acceptance of the roster and ground rules, by its talks
/// authority (a mediator team's too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    /// The roster statement accepted.
    pub roster: StatementId,
    /// SHA-256 of its signed bytes.
    pub roster_hash: Digest,
    /// The ground rules statement accepted.
    pub ground_rules: StatementId,
    /// SHA-256 of its signed bytes.
    pub ground_rules_hash: Digest,
}

impl Encode for Acceptance {
    fn encode(&self, w: &mut Writer) {
        self.roster.encode(w);
        self.roster_hash.encode(w);
        self.ground_rules.encode(w);
        self.ground_rules_hash.encode(w);
    }
}

impl Decode for Acceptance {
    const MIN_LEN: usize = 96;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            roster: StatementId::decode(r)?,
            roster_hash: Digest::decode(r)?,
            ground_rules: StatementId::decode(r)?,
            ground_rules_hash: Digest::decode(r)?,
        })
    }
}

/// A statement's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// See [`Roster`].
    Roster(Roster),
    /// See [`GroundRules`].
    GroundRules(GroundRules),
    /// See [`Acceptance`].
    Acceptance(Acceptance),
    /// See [`AccessListChange`].
    AccessListChange(AccessListChange),
    /// See [`DeviceCert`].
    DeviceCert(DeviceCert),
    /// See [`MemberCert`].
    MemberCert(MemberCert),
    /// See [`Revoke`].
    Revoke(Revoke),
    /// See [`LifecycleChange`].
    Lifecycle(LifecycleChange),
    /// See [`Message`].
    Message(Message),
    /// See [`Conveyed`].
    Conveyance(Conveyed),
    /// See [`Receipt`].
    Receipt(Receipt),
    /// See [`CommitFailure`].
    CommitFailure(CommitFailure),
    /// See [`SessionConsent`].
    SessionConsent(SessionConsent),
    /// See [`HistoryShared`].
    HistoryShared(HistoryShared),
    /// See [`AuthorityPassed`].
    AuthorityPassed(AuthorityPassed),
}

impl Payload {
    /// The payload's statement type.
    pub fn statement_type(&self) -> StatementType {
        match self {
            Payload::Roster(_) => StatementType::Roster,
            Payload::GroundRules(_) => StatementType::GroundRules,
            Payload::Acceptance(_) => StatementType::Acceptance,
            Payload::AccessListChange(_) => StatementType::AccessListChange,
            Payload::DeviceCert(_) => StatementType::DeviceCert,
            Payload::MemberCert(_) => StatementType::MemberCert,
            Payload::Revoke(_) => StatementType::Revoke,
            Payload::Lifecycle(_) => StatementType::Lifecycle,
            Payload::Message(_) => StatementType::Message,
            Payload::Conveyance(_) => StatementType::Conveyance,
            Payload::Receipt(_) => StatementType::Receipt,
            Payload::CommitFailure(_) => StatementType::CommitFailure,
            Payload::SessionConsent(_) => StatementType::SessionConsent,
            Payload::HistoryShared(_) => StatementType::HistoryShared,
            Payload::AuthorityPassed(_) => StatementType::AuthorityPassed,
        }
    }

    /// Decodes `bytes` as a payload of type `ty`, strictly.
    pub fn decode_as(ty: StatementType, bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(match ty {
            StatementType::Roster => Payload::Roster(Roster::from_canonical_bytes(bytes)?),
            StatementType::GroundRules => {
                Payload::GroundRules(GroundRules::from_canonical_bytes(bytes)?)
            }
            StatementType::Acceptance => {
                Payload::Acceptance(Acceptance::from_canonical_bytes(bytes)?)
            }
            StatementType::AccessListChange => {
                Payload::AccessListChange(AccessListChange::from_canonical_bytes(bytes)?)
            }
            StatementType::DeviceCert => {
                Payload::DeviceCert(DeviceCert::from_canonical_bytes(bytes)?)
            }
            StatementType::MemberCert => {
                Payload::MemberCert(MemberCert::from_canonical_bytes(bytes)?)
            }
            StatementType::Revoke => Payload::Revoke(Revoke::from_canonical_bytes(bytes)?),
            StatementType::Lifecycle => {
                Payload::Lifecycle(LifecycleChange::from_canonical_bytes(bytes)?)
            }
            StatementType::Message => Payload::Message(Message::from_canonical_bytes(bytes)?),
            StatementType::Conveyance => {
                Payload::Conveyance(Conveyed::from_canonical_bytes(bytes)?)
            }
            StatementType::Receipt => Payload::Receipt(Receipt::from_canonical_bytes(bytes)?),
            StatementType::CommitFailure => {
                Payload::CommitFailure(CommitFailure::from_canonical_bytes(bytes)?)
            }
            StatementType::SessionConsent => {
                Payload::SessionConsent(SessionConsent::from_canonical_bytes(bytes)?)
            }
            StatementType::HistoryShared => {
                Payload::HistoryShared(HistoryShared::from_canonical_bytes(bytes)?)
            }
            StatementType::AuthorityPassed => {
                Payload::AuthorityPassed(AuthorityPassed::from_canonical_bytes(bytes)?)
            }
        })
    }
}

impl Encode for Payload {
    fn encode(&self, w: &mut Writer) {
        match self {
            Payload::Roster(p) => p.encode(w),
            Payload::GroundRules(p) => p.encode(w),
            Payload::Acceptance(p) => p.encode(w),
            Payload::AccessListChange(p) => p.encode(w),
            Payload::DeviceCert(p) => p.encode(w),
            Payload::MemberCert(p) => p.encode(w),
            Payload::Revoke(p) => p.encode(w),
            Payload::Lifecycle(p) => p.encode(w),
            Payload::Message(p) => p.encode(w),
            Payload::Conveyance(p) => p.encode(w),
            Payload::Receipt(p) => p.encode(w),
            Payload::CommitFailure(p) => p.encode(w),
            Payload::SessionConsent(p) => p.encode(w),
            Payload::HistoryShared(p) => p.encode(w),
            Payload::AuthorityPassed(p) => p.encode(w),
        }
    }
}
