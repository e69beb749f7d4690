//! Replay of key validity: who could sign what, at which log position; and
//! of the talks' acceptance and lifecycle.
//!
//! Rules (`docs/formats.md` § 10, Replay rules):
//! 1. The first statement is the roster, signed by the mediator team's talks
//!    authority key, whose certification by the team's long-term authority
//!    the roster carries. It establishes every party's talks authority key,
//!    and the identity and device keys of the members it lists, from its seq.
//! 2. A [`MemberCert`] is valid when signed by the talks authority of the
//!    party it certifies for; its identity key is valid from its seq.
//! 3. A [`DeviceCert`] is valid when signed by the identity key of the
//!    principal it names; the device key is valid from its seq until its
//!    `not_after` (compared with node timestamps, never a signer's claim).
//! 4. A [`Revoke`] is valid when signed by the key's party's talks
//!    authority, or by its member's identity key (for that identity key or
//!    the member's devices). The key signs nothing sequenced after the
//!    revocation. (Device keys sign no statements, so a lost device is
//!    revoked through the identity key, from another device.)
//! 5. Ground rules are signed by the mediator team's talks authority; an
//!    acceptance by the accepting party's talks authority. Identity keys
//!    expire at their certificate's `not_after`, by node time.
//! 6. Every statement must be signed by a talks authority or identity key
//!    (device keys sign envelopes, never statements) valid at its own seq,
//!    act for that key's party, and be posted to a room in its audience.
//! 7. The first ground rules accepted are the talks' ground rules; a second
//!    is refused ([`Rejected::SecondGroundRules`]). An acceptance must name
//!    the roster statement's id and the SHA-256 of its signed bytes, and
//!    the ground rules' id and hash ([`Rejected::Acceptance`] otherwise,
//!    also before any ground rules); the accepting party (`acting_for`) is
//!    then in [`Replay::accepted_by`]. [`Replay::awaiting_acceptance`] lists
//!    the roster's parties of kind party that have not accepted.
//! 8. The talks start [`Phase::Open`]. A [`LifecycleChange`] is signed by a
//!    talks authority (as an acceptance is), acting for its party:
//!    - *suspended*: by a party of kind party, only while open →
//!      [`Phase::Suspended`] by that party;
//!    - *resumed*: by the suspending party or a mediator team, only while
//!      suspended → open;
//!    - *concluded*: by a mediator team, while open or suspended →
//!      [`Phase::Concluded`];
//!    - *closed*: by a mediator team, only while concluded →
//!      [`Phase::Closed`].
//!
//!    A change in any other phase is [`Rejected::WrongPhase`]; by another
//!    signer, [`Rejected::NotEntitled`].
//! 9. While suspended, formal acts (ground rules, acceptances) are
//!    [`Rejected::NotInPhase`]; key management (member and device
//!    certificates, revocations, access-list changes) goes on, so a lost
//!    device can be revoked during a suspension. While concluded, only
//!    revocations (and *closed*) are accepted; while closed, nothing.
//!
//! A rejected statement changes no state; replay goes on (the rejection is
//! itself evidence a client shows).

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use backchannel_codec::{PartyId, PrincipalId, RoomId, StatementId, TalksId};
use backchannel_crypto::{Digest, KeyId, PublicKey};
use backchannel_statement::roster::{GroundRules, Roster, VerifiedRoster};
use backchannel_statement::{
    Acceptance, LifecycleChange, LifecyclePhase, PartyKind, Payload, Role, SignedStatement,
    StatementType, VerifyError,
};
use thiserror::Error;

/// Whom a key speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRole {
    /// A party's talks authority.
    TalksAuthority {
        /// The party.
        party: PartyId,
    },
    /// A member's identity key.
    Identity {
        /// The member.
        principal: PrincipalId,
        /// Its party.
        party: PartyId,
        /// Its role.
        role: Role,
        /// Not valid after (Unix ms, compared with node timestamps).
        not_after: Option<u64>,
    },
    /// A member's device key.
    Device {
        /// The member.
        principal: PrincipalId,
        /// Its party.
        party: PartyId,
        /// Not valid after (Unix ms, compared with node timestamps).
        not_after: Option<u64>,
    },
}

impl KeyRole {
    fn party(&self) -> PartyId {
        match self {
            KeyRole::TalksAuthority { party }
            | KeyRole::Identity { party, .. }
            | KeyRole::Device { party, .. } => *party,
        }
    }
}

/// A key as replay knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// The key.
    pub key: PublicKey,
    /// Whom it speaks for.
    pub role: KeyRole,
    /// The seq from which it is valid.
    pub valid_from: u64,
    /// The seq of its revocation, if revoked.
    pub revoked_at: Option<u64>,
}

/// A statement as the log holds it.
#[derive(Debug, Clone, Copy)]
pub struct LoggedStatement<'a> {
    /// Its seq (leaf index).
    pub seq: u64,
    /// The node's timestamp (Unix ms).
    pub node_time: u64,
    /// The room it was posted to.
    pub room: RoomId,
    /// The statement.
    pub statement: &'a SignedStatement,
}

/// The phase of the talks (rules 8 and 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Negotiating: every statement may be made (the initial phase).
    Open,
    /// Suspended by a party; only key management and resuming or
    /// concluding are accepted.
    Suspended {
        /// The party that suspended the talks.
        by: PartyId,
        /// The seq of the suspension.
        at: u64,
    },
    /// Concluded by the mediator team; only revocations and closing are accepted.
    Concluded {
        /// The seq of the conclusion.
        at: u64,
    },
    /// Closed by the mediator team; nothing more is accepted.
    Closed {
        /// The seq of the closing.
        at: u64,
    },
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Open => f.write_str("open"),
            Phase::Suspended { by, at } => write!(f, "suspended by party {by} at seq {at}"),
            Phase::Concluded { at } => write!(f, "concluded at seq {at}"),
            Phase::Closed { at } => write!(f, "closed at seq {at}"),
        }
    }
}

/// A statement replay accepted, as acceptances cite it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementRef {
    /// Its seq.
    pub seq: u64,
    /// Its statement id.
    pub id: StatementId,
    /// SHA-256 of its signed bytes ([`SignedStatement::hash`]).
    pub hash: Digest,
}

impl StatementRef {
    fn of(seq: u64, statement: &SignedStatement) -> Self {
        Self {
            seq,
            id: statement.unverified().id,
            hash: statement.hash(),
        }
    }
}

/// Why replay did not count a statement.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejected {
    /// The log went backwards.
    #[error("seq {seq} is not after the last replayed seq {last}")]
    OutOfOrder {
        /// This seq.
        seq: u64,
        /// The last one replayed.
        last: u64,
    },
    /// Anything before an accepted roster.
    #[error("no roster has been accepted yet; the roster must come first")]
    BeforeRoster,
    /// A second roster (changes go through access-list changes and later issues).
    #[error("the talks already have a roster")]
    SecondRoster,
    /// Second ground rules (changes come with a later issue).
    #[error("the talks already have ground rules")]
    SecondGroundRules,
    /// An acceptance that does not name the talks' roster and ground rules.
    #[error("the acceptance does not match the talks: {0}")]
    Acceptance(&'static str),
    /// The talks' phase does not allow this statement (rule 9).
    #[error("no {} statement is accepted while the talks are {phase}", .statement.name())]
    NotInPhase {
        /// The statement's type.
        statement: StatementType,
        /// The phase.
        phase: Phase,
    },
    /// A lifecycle change the current phase does not allow (rule 8).
    #[error("the talks cannot be {} while {phase}", .change.name())]
    WrongPhase {
        /// The change asked for.
        change: LifecyclePhase,
        /// The phase the talks are in.
        phase: Phase,
    },
    /// The roster is invalid.
    #[error("invalid roster: {0}")]
    Roster(String),
    /// The author's key is not known at this seq.
    #[error("the author's key is not certified at seq {0}")]
    UnknownKey(u64),
    /// The author's key was revoked earlier in the log.
    #[error("the author's key was revoked at seq {revoked_at}, before this statement")]
    Revoked {
        /// Where.
        revoked_at: u64,
    },
    /// The author's key had expired by the node's clock.
    #[error("the author's key expired before this statement was sequenced")]
    Expired,
    /// The signature, talks or audience check failed.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The room is not declared by the roster.
    #[error("the room is not declared by the roster")]
    UnknownRoom,
    /// The author may not make this statement.
    #[error("not entitled: {0}")]
    NotEntitled(&'static str),
}

/// What an accepted statement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Established the roster.
    Roster,
    /// Certified a key.
    Certified(KeyId),
    /// Revoked a key.
    Revoked(KeyId),
    /// Established the ground rules.
    GroundRules,
    /// Recorded this party's acceptance of roster and ground rules.
    Acceptance(PartyId),
    /// Moved the talks into this phase.
    Phase(Phase),
    /// Counted, with no effect on keys.
    Recorded,
}

/// Replays one talks' record.
#[derive(Debug, Clone)]
pub struct Replay {
    talks: TalksId,
    roster: Option<(StatementRef, Roster)>,
    ground_rules: Option<(StatementRef, GroundRules)>,
    accepted: BTreeSet<PartyId>,
    phase: Phase,
    keys: HashMap<KeyId, KeyState>,
    last_seq: Option<u64>,
}

impl Replay {
    /// Replay of `talks`, from the start of its log.
    pub fn new(talks: TalksId) -> Self {
        Self {
            talks,
            roster: None,
            ground_rules: None,
            accepted: BTreeSet::new(),
            phase: Phase::Open,
            keys: HashMap::new(),
            last_seq: None,
        }
    }

    /// The accepted roster.
    pub fn roster(&self) -> Option<&Roster> {
        self.roster.as_ref().map(|(_, r)| r)
    }

    /// The roster statement: its seq, id and hash, as acceptances cite it.
    pub fn roster_statement(&self) -> Option<&StatementRef> {
        self.roster.as_ref().map(|(s, _)| s)
    }

    /// The talks' ground rules: the first ground rules accepted.
    pub fn ground_rules(&self) -> Option<&GroundRules> {
        self.ground_rules.as_ref().map(|(_, g)| g)
    }

    /// The ground-rules statement: its seq, id and hash, as acceptances cite it.
    pub fn ground_rules_statement(&self) -> Option<&StatementRef> {
        self.ground_rules.as_ref().map(|(s, _)| s)
    }

    /// Every party (of any kind) whose acceptance of the roster and ground
    /// rules was accepted, sorted by id.
    pub fn accepted_by(&self) -> Vec<PartyId> {
        self.accepted.iter().copied().collect()
    }

    /// The roster's parties of kind [`PartyKind::Party`] that have not
    /// accepted yet, in roster order (empty before the roster).
    pub fn awaiting_acceptance(&self) -> Vec<PartyId> {
        self.roster()
            .map(|r| {
                r.parties
                    .iter()
                    .filter(|p| p.kind == PartyKind::Party && !self.accepted.contains(&p.party))
                    .map(|p| p.party)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The talks' phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// A key's state.
    pub fn key(&self, id: &KeyId) -> Option<&KeyState> {
        self.keys.get(id)
    }

    /// Replays the next statement of the log.
    pub fn apply(&mut self, entry: LoggedStatement<'_>) -> Result<Accepted, Rejected> {
        if let Some(last) = self.last_seq
            && entry.seq <= last
        {
            return Err(Rejected::OutOfOrder {
                seq: entry.seq,
                last,
            });
        }
        let result = self.apply_inner(entry);
        self.last_seq = Some(entry.seq);
        result
    }

    fn apply_inner(&mut self, entry: LoggedStatement<'_>) -> Result<Accepted, Rejected> {
        let unverified = entry.statement.unverified();
        let Some((_, roster)) = &self.roster else {
            return self.apply_roster(entry);
        };
        if let Payload::Roster(_) = unverified.payload {
            return Err(Rejected::SecondRoster);
        }
        // The author's key, valid at this seq.
        let author = self
            .keys
            .get(&unverified.author)
            .ok_or(Rejected::UnknownKey(entry.seq))?;
        if let Some(revoked_at) = author.revoked_at {
            // The revocation itself is at `revoked_at`; everything after it is refused.
            if entry.seq > revoked_at {
                return Err(Rejected::Revoked { revoked_at });
            }
        }
        if author.valid_from > entry.seq {
            return Err(Rejected::UnknownKey(entry.seq));
        }
        if let KeyRole::Device {
            not_after: Some(t), ..
        }
        | KeyRole::Identity {
            not_after: Some(t), ..
        } = author.role
            && entry.node_time > t
        {
            return Err(Rejected::Expired);
        }
        if matches!(author.role, KeyRole::Device { .. }) {
            // Device keys authenticate connections and sign envelopes (and
            // later MLS leaves); statements are signed by identity keys.
            return Err(Rejected::NotEntitled(
                "device keys sign envelopes, not statements",
            ));
        }
        let verified = entry.statement.verify(self.talks, &author.key)?;
        let statement = verified.statement();
        if statement.acting_for != author.role.party() {
            return Err(Rejected::NotEntitled(
                "the author acts for a party not its own",
            ));
        }
        let room_parties = roster
            .room_parties(entry.room)
            .ok_or(Rejected::UnknownRoom)?;
        verified.check_room(entry.room, &room_parties)?;
        let author_role = author.role.clone();
        self.check_phase(&statement.payload)?;

        match &statement.payload {
            Payload::Roster(_) => Err(Rejected::SecondRoster),
            Payload::MemberCert(cert) => {
                if author_role != (KeyRole::TalksAuthority { party: cert.party }) {
                    return Err(Rejected::NotEntitled(
                        "a member certificate must be signed by its party's talks authority",
                    ));
                }
                let kind = roster
                    .party_kind(cert.party)
                    .ok_or(Rejected::NotEntitled("certificate for an unknown party"))?;
                if cert.role.party_kind() != kind {
                    return Err(Rejected::NotEntitled(
                        "the role does not fit the party's kind",
                    ));
                }
                // A principal belongs to one party for the life of the talks.
                let taken = roster.parties.iter().any(|p| p.party.0 == cert.principal.0)
                    || self.keys.values().any(|k| match k.role {
                        KeyRole::Identity {
                            principal, party, ..
                        }
                        | KeyRole::Device {
                            principal, party, ..
                        } => principal == cert.principal && party != cert.party,
                        KeyRole::TalksAuthority { .. } => false,
                    });
                if taken {
                    return Err(Rejected::NotEntitled(
                        "the principal belongs to another party",
                    ));
                }
                let role = KeyRole::Identity {
                    principal: cert.principal,
                    party: cert.party,
                    role: cert.role,
                    not_after: cert.not_after,
                };
                self.certify(cert.identity_key, role, entry.seq)
            }
            Payload::DeviceCert(cert) => {
                let KeyRole::Identity {
                    principal, party, ..
                } = author_role
                else {
                    return Err(Rejected::NotEntitled(
                        "a device certificate must be signed by a member identity key",
                    ));
                };
                if principal != cert.principal {
                    return Err(Rejected::NotEntitled(
                        "a member may certify only its own devices",
                    ));
                }
                let role = KeyRole::Device {
                    principal,
                    party,
                    not_after: Some(cert.not_after),
                };
                self.certify(cert.device_key, role, entry.seq)
            }
            Payload::Revoke(revoke) => {
                let target = self
                    .keys
                    .get(&revoke.key)
                    .ok_or(Rejected::NotEntitled("revocation of an unknown key"))?;
                let allowed = revoke.key == statement.author
                    || author_role
                        == (KeyRole::TalksAuthority {
                            party: target.role.party(),
                        })
                    || matches!(
                        (&author_role, &target.role),
                        (
                            KeyRole::Identity { principal: a, party: pa, .. },
                            KeyRole::Device { principal: b, party: pb, .. },
                        ) if a == b && pa == pb
                    );
                if !allowed {
                    return Err(Rejected::NotEntitled(
                        "only the key itself, its certifier or its party's talks authority may revoke it",
                    ));
                }
                if let Some(state) = self.keys.get_mut(&revoke.key) {
                    state.revoked_at.get_or_insert(entry.seq);
                }
                Ok(Accepted::Revoked(revoke.key))
            }
            Payload::GroundRules(rules) => {
                if author_role
                    != (KeyRole::TalksAuthority {
                        party: statement.acting_for,
                    })
                    || roster.party_kind(statement.acting_for) != Some(PartyKind::Mediator)
                {
                    return Err(Rejected::NotEntitled(
                        "ground rules are signed by the mediator team's talks authority",
                    ));
                }
                if self.ground_rules.is_some() {
                    return Err(Rejected::SecondGroundRules);
                }
                self.ground_rules =
                    Some((StatementRef::of(entry.seq, entry.statement), rules.clone()));
                Ok(Accepted::GroundRules)
            }
            Payload::Acceptance(acceptance) => {
                if !matches!(author_role, KeyRole::TalksAuthority { .. }) {
                    return Err(Rejected::NotEntitled(
                        "a party accepts roster and ground rules through its talks authority",
                    ));
                }
                self.check_acceptance(acceptance)?;
                // A repeated acceptance by the same party changes nothing.
                self.accepted.insert(statement.acting_for);
                Ok(Accepted::Acceptance(statement.acting_for))
            }
            Payload::Lifecycle(change) => {
                let party = statement.acting_for;
                let kind = roster.party_kind(party);
                self.apply_lifecycle(change, &author_role, party, kind, entry.seq)
            }
            Payload::AccessListChange(_) => Ok(Accepted::Recorded),
        }
    }

    /// Rule 9: what the phase lets through, before the payload's own rule.
    /// Lifecycle changes are judged by rule 8 (`apply_lifecycle`).
    fn check_phase(&self, payload: &Payload) -> Result<(), Rejected> {
        let allowed = match (self.phase, payload) {
            (_, Payload::Lifecycle(_)) | (Phase::Open, _) => true,
            (Phase::Suspended { .. }, p) => matches!(
                p,
                Payload::MemberCert(_)
                    | Payload::DeviceCert(_)
                    | Payload::Revoke(_)
                    | Payload::AccessListChange(_)
            ),
            (Phase::Concluded { .. }, p) => matches!(p, Payload::Revoke(_)),
            (Phase::Closed { .. }, _) => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(Rejected::NotInPhase {
                statement: payload.statement_type(),
                phase: self.phase,
            })
        }
    }

    /// Rule 7: an acceptance names the roster and the ground rules, by id
    /// and by the hash of their signed bytes.
    fn check_acceptance(&self, a: &Acceptance) -> Result<(), Rejected> {
        let Some((roster, _)) = &self.roster else {
            return Err(Rejected::BeforeRoster);
        };
        let Some((rules, _)) = &self.ground_rules else {
            return Err(Rejected::Acceptance("no ground rules have been set yet"));
        };
        if a.roster != roster.id {
            return Err(Rejected::Acceptance("it names another roster statement"));
        }
        if a.roster_hash != roster.hash {
            return Err(Rejected::Acceptance(
                "its roster hash is not that of the roster statement",
            ));
        }
        if a.ground_rules != rules.id {
            return Err(Rejected::Acceptance(
                "it names another ground-rules statement",
            ));
        }
        if a.ground_rules_hash != rules.hash {
            return Err(Rejected::Acceptance(
                "its ground-rules hash is not that of the ground-rules statement",
            ));
        }
        Ok(())
    }

    /// Rule 8: a lifecycle change by a talks authority acting for `party`.
    fn apply_lifecycle(
        &mut self,
        change: &LifecycleChange,
        author_role: &KeyRole,
        party: PartyId,
        kind: Option<PartyKind>,
        seq: u64,
    ) -> Result<Accepted, Rejected> {
        if !matches!(author_role, KeyRole::TalksAuthority { .. }) {
            return Err(Rejected::NotEntitled(
                "lifecycle changes are signed by a talks authority",
            ));
        }
        let mediator = kind == Some(PartyKind::Mediator);
        let wrong_phase = || Rejected::WrongPhase {
            change: change.phase,
            phase: self.phase,
        };
        let next = match change.phase {
            LifecyclePhase::Suspended => {
                if kind != Some(PartyKind::Party) {
                    return Err(Rejected::NotEntitled(
                        "only a party of kind party suspends the talks",
                    ));
                }
                if self.phase != Phase::Open {
                    return Err(wrong_phase());
                }
                Phase::Suspended { by: party, at: seq }
            }
            LifecyclePhase::Resumed => {
                if !mediator && kind != Some(PartyKind::Party) {
                    return Err(Rejected::NotEntitled(
                        "only the suspending party or the mediator team resumes the talks",
                    ));
                }
                let Phase::Suspended { by, .. } = self.phase else {
                    return Err(wrong_phase());
                };
                if party != by && !mediator {
                    return Err(Rejected::NotEntitled(
                        "only the suspending party or the mediator team resumes the talks",
                    ));
                }
                Phase::Open
            }
            LifecyclePhase::Concluded => {
                if !mediator {
                    return Err(Rejected::NotEntitled(
                        "only the mediator team concludes the talks",
                    ));
                }
                if !matches!(self.phase, Phase::Open | Phase::Suspended { .. }) {
                    return Err(wrong_phase());
                }
                Phase::Concluded { at: seq }
            }
            LifecyclePhase::Closed => {
                if !mediator {
                    return Err(Rejected::NotEntitled(
                        "only the mediator team closes the talks",
                    ));
                }
                if !matches!(self.phase, Phase::Concluded { .. }) {
                    return Err(wrong_phase());
                }
                Phase::Closed { at: seq }
            }
        };
        self.phase = next;
        Ok(Accepted::Phase(next))
    }

    fn certify(&mut self, key: PublicKey, role: KeyRole, seq: u64) -> Result<Accepted, Rejected> {
        let id = key.id();
        // A key has one holder and one role for the life of the talks: a
        // second certificate could otherwise un-revoke it, move its start or
        // let it speak for someone else.
        if self.keys.contains_key(&id) {
            return Err(Rejected::NotEntitled(
                "the key is already certified; rotation uses a new key",
            ));
        }
        self.keys.insert(
            id,
            KeyState {
                key,
                role,
                valid_from: seq,
                revoked_at: None,
            },
        );
        Ok(Accepted::Certified(id))
    }

    fn apply_roster(&mut self, entry: LoggedStatement<'_>) -> Result<Accepted, Rejected> {
        if !matches!(entry.statement.unverified().payload, Payload::Roster(_)) {
            return Err(Rejected::BeforeRoster);
        }
        let VerifiedRoster {
            statement: verified,
            roster,
            ..
        } = VerifiedRoster::verify(self.talks, entry.statement)
            .map_err(|e| Rejected::Roster(e.to_string()))?;
        let parties = roster
            .room_parties(entry.room)
            .ok_or(Rejected::UnknownRoom)?;
        verified.check_room(entry.room, &parties)?;
        let seq = entry.seq;
        // The map is empty before the roster and `verify_for` checked that
        // every roster key is distinct, so none of these certifications can
        // be refused.
        for p in &roster.parties {
            self.certify(
                p.talks_authority_key,
                KeyRole::TalksAuthority { party: p.party },
                seq,
            )?;
        }
        for m in &roster.members {
            let identity = KeyRole::Identity {
                principal: m.principal,
                party: m.party,
                role: m.role,
                not_after: None,
            };
            self.certify(m.identity_key, identity, seq)?;
            for d in &m.devices {
                let device = KeyRole::Device {
                    principal: m.principal,
                    party: m.party,
                    not_after: None,
                };
                self.certify(*d, device, seq)?;
            }
        }
        self.roster = Some((StatementRef::of(seq, entry.statement), roster));
        Ok(Accepted::Roster)
    }
}
