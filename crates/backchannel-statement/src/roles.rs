//! Roles and the permission matrix: which acts each role may sign.
//!
//! A member certificate names a role and the acts its holder may sign for
//! the party; the acts must be a subset of what the role permits
//! ([`Role::permits`]). Acts that need several signers (an agreement signed
//! by two of three) are governed by the roster's signing rules on top.
//!
//! | act \ role            | head | negotiator | expert | legal | note-taker | interpreter | principal | lead | co-mediator | staff | monitor | escrow-agent |
//! |-----------------------|------|------------|--------|-------|------------|-------------|-----------|------|-------------|-------|---------|--------------|
//! | accept-talks          |  ✓   |            |        |       |            |             |           |  ✓   |             |       |    ✓    |      ✓       |
//! | release-message       |  ✓   |     ✓      |        |       |            |             |           |      |             |       |         |              |
//! | propose-text          |  ✓   |     ✓      |   ✓    |   ✓   |            |             |           |  ✓   |      ✓      |       |         |              |
//! | initial-text          |  ✓   |     ✓      |        |   ✓   |            |             |           |  ✓   |      ✓      |       |         |              |
//! | sign-agreement        |  ✓   |     ✓      |        |       |            |             |     ✓     |  ✓   |             |       |         |              |
//! | file-dispute          |  ✓   |            |        |   ✓   |            |             |           |      |             |       |         |              |
//! | convey                |      |            |        |       |            |             |           |  ✓   |      ✓      |       |         |              |
//! | rule-on-dispute       |      |            |        |       |            |             |           |  ✓   |             |       |         |              |
//! | attest                |      |            |        |       |            |             |           |      |             |       |    ✓    |              |
//! | escrow                |      |            |        |       |            |             |           |      |             |       |         |      ✓       |
//! | hand-over-history     |  ✓   |     ✓      |        |       |     ✓      |             |           |  ✓   |      ✓      |   ✓   |         |              |
//! | manage-members        |  ✓   |            |        |       |            |             |           |  ✓   |             |       |    ✓    |      ✓       |
//!
//! Every member may post to the rooms it belongs to, certify and revoke its
//! own devices; those are not acts.

use backchannel_codec::{Decode, DecodeError, Encode, Reader, Writer};

/// What kind of participant a party entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PartyKind {
    /// A delegation.
    Party = 1,
    /// A mediator team.
    Mediator = 2,
    /// A monitor (inspectors).
    Monitor = 3,
    /// An escrow agent (a bank).
    EscrowAgent = 4,
}

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Head of a delegation.
    Head = 1,
    /// Negotiator.
    Negotiator = 2,
    /// Technical expert.
    Expert = 3,
    /// Legal adviser.
    Legal = 4,
    /// Note-taker.
    NoteTaker = 5,
    /// Interpreter.
    Interpreter = 6,
    /// A principal in the capital.
    Principal = 7,
    /// Lead mediator.
    Lead = 16,
    /// Co-mediator.
    CoMediator = 17,
    /// Mediator staff.
    Staff = 18,
    /// Monitor (inspector).
    Monitor = 32,
    /// Escrow agent officer.
    EscrowAgent = 48,
}

/// An act a member may sign for its party.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Act {
    /// Accept the roster and ground rules for the party.
    AcceptTalks = 1,
    /// Release a message out of the delegation.
    ReleaseMessage = 2,
    /// Propose negotiating text.
    ProposeText = 3,
    /// Initial text ad referendum.
    InitialText = 4,
    /// Sign an agreement.
    SignAgreement = 5,
    /// File a dispute.
    FileDispute = 6,
    /// Convey a statement between rooms.
    Convey = 7,
    /// Rule on a dispute.
    RuleOnDispute = 8,
    /// Attest that a step was or was not performed.
    Attest = 9,
    /// Deposit, release or refund through escrow.
    Escrow = 10,
    /// Hand history over to a successor.
    HandOverHistory = 11,
    /// Certify or remove the party's members.
    ManageMembers = 12,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 12] = [
        Role::Head,
        Role::Negotiator,
        Role::Expert,
        Role::Legal,
        Role::NoteTaker,
        Role::Interpreter,
        Role::Principal,
        Role::Lead,
        Role::CoMediator,
        Role::Staff,
        Role::Monitor,
        Role::EscrowAgent,
    ];

    /// The kind of participant this role belongs to.
    pub fn party_kind(self) -> PartyKind {
        match self {
            Role::Head
            | Role::Negotiator
            | Role::Expert
            | Role::Legal
            | Role::NoteTaker
            | Role::Interpreter
            | Role::Principal => PartyKind::Party,
            Role::Lead | Role::CoMediator | Role::Staff => PartyKind::Mediator,
            Role::Monitor => PartyKind::Monitor,
            Role::EscrowAgent => PartyKind::EscrowAgent,
        }
    }

    /// Whether this role may sign `act` (the matrix in the module docs).
    pub fn permits(self, act: Act) -> bool {
        use Act::*;
        use Role::*;
        match act {
            AcceptTalks | ManageMembers => matches!(self, Head | Lead | Monitor | EscrowAgent),
            ReleaseMessage => matches!(self, Head | Negotiator),
            ProposeText => matches!(self, Head | Negotiator | Expert | Legal | Lead | CoMediator),
            InitialText => matches!(self, Head | Negotiator | Legal | Lead | CoMediator),
            SignAgreement => matches!(self, Head | Negotiator | Principal | Lead),
            FileDispute => matches!(self, Head | Legal),
            Convey => matches!(self, Lead | CoMediator),
            RuleOnDispute => matches!(self, Lead),
            Attest => self == Monitor,
            Escrow => self == EscrowAgent,
            HandOverHistory => matches!(
                self,
                Head | Negotiator | NoteTaker | Lead | CoMediator | Staff
            ),
        }
    }

    /// The role's name as the docs and CLI spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Head => "head",
            Role::Negotiator => "negotiator",
            Role::Expert => "expert",
            Role::Legal => "legal",
            Role::NoteTaker => "note-taker",
            Role::Interpreter => "interpreter",
            Role::Principal => "principal",
            Role::Lead => "lead",
            Role::CoMediator => "co-mediator",
            Role::Staff => "staff",
            Role::Monitor => "monitor",
            Role::EscrowAgent => "escrow-agent",
        }
    }
}

macro_rules! u8_enum_codec {
    ($ty:ty, $field:literal, [$($v:path),+ $(,)?]) => {
        impl Encode for $ty {
            fn encode(&self, w: &mut Writer) {
                w.u8(*self as u8);
            }
        }
        impl Decode for $ty {
            const MIN_LEN: usize = 1;
            fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let v = r.u8($field)?;
                $(if v == $v as u8 { return Ok($v); })+
                Err(DecodeError::UnknownValue { field: $field, value: u64::from(v) })
            }
        }
    };
}
pub(crate) use u8_enum_codec;

u8_enum_codec!(
    PartyKind,
    "party kind",
    [
        PartyKind::Party,
        PartyKind::Mediator,
        PartyKind::Monitor,
        PartyKind::EscrowAgent
    ]
);
u8_enum_codec!(
    Role,
    "role",
    [
        Role::Head,
        Role::Negotiator,
        Role::Expert,
        Role::Legal,
        Role::NoteTaker,
        Role::Interpreter,
        Role::Principal,
        Role::Lead,
        Role::CoMediator,
        Role::Staff,
        Role::Monitor,
        Role::EscrowAgent,
    ]
);
u8_enum_codec!(
    Act,
    "act",
    [
        Act::AcceptTalks,
        Act::ReleaseMessage,
        Act::ProposeText,
        Act::InitialText,
        Act::SignAgreement,
        Act::FileDispute,
        Act::Convey,
        Act::RuleOnDispute,
        Act::Attest,
        Act::Escrow,
        Act::HandOverHistory,
        Act::ManageMembers,
    ]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_act_has_a_role_of_the_right_kind() {
        // Only the head of a delegation accepts talks for it; only monitors attest.
        assert!(Role::Head.permits(Act::AcceptTalks));
        assert!(!Role::Negotiator.permits(Act::AcceptTalks));
        assert!(Role::Monitor.permits(Act::Attest));
        assert!(!Role::Lead.permits(Act::Attest));
        assert!(!Role::Interpreter.permits(Act::ReleaseMessage));
        // Parties never convey; mediators never file disputes.
        for r in Role::ALL {
            if r.party_kind() == PartyKind::Party {
                assert!(!r.permits(Act::Convey), "{}", r.name());
            } else {
                assert!(!r.permits(Act::FileDispute), "{}", r.name());
            }
        }
    }
}
