//! Replay of key validity: who could sign what, at which log position.
//!
//! Rules (`docs/formats.md` § 10, Replay rules for key validity):
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
//!
//! A rejected statement changes no state; replay goes on (the rejection is
//! itself evidence a client shows).

use std::collections::HashMap;

use backchannel_codec::{PartyId, PrincipalId, RoomId, TalksId};
use backchannel_crypto::{KeyId, PublicKey};
use backchannel_statement::roster::{Roster, VerifiedRoster};
use backchannel_statement::{PartyKind, Payload, Role, SignedStatement, VerifyError};
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
    /// Counted, with no effect on keys.
    Recorded,
}

/// Replays one talks' record.
#[derive(Debug, Clone)]
pub struct Replay {
    talks: TalksId,
    roster: Option<Roster>,
    keys: HashMap<KeyId, KeyState>,
    last_seq: Option<u64>,
}

impl Replay {
    /// Replay of `talks`, from the start of its log.
    pub fn new(talks: TalksId) -> Self {
        Self {
            talks,
            roster: None,
            keys: HashMap::new(),
            last_seq: None,
        }
    }

    /// The accepted roster.
    pub fn roster(&self) -> Option<&Roster> {
        self.roster.as_ref()
    }

    /// A key's state.
    pub fn key(&self, id: &KeyId) -> Option<&KeyState> {
        self.keys.get(id)
    }

    /// Replays the next statement of the log.
    pub fn apply(&mut self, entry: LoggedStatement<'_>) -> Result<Accepted, Rejected> {
        if let Some(last) = self.last_seq {
            if entry.seq <= last {
                return Err(Rejected::OutOfOrder {
                    seq: entry.seq,
                    last,
                });
            }
        }
        let result = self.apply_inner(entry);
        self.last_seq = Some(entry.seq);
        result
    }

    fn apply_inner(&mut self, entry: LoggedStatement<'_>) -> Result<Accepted, Rejected> {
        let unverified = entry.statement.unverified();
        let Some(roster) = &self.roster else {
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
        {
            if entry.node_time > t {
                return Err(Rejected::Expired);
            }
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
            Payload::GroundRules(_) => {
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
                Ok(Accepted::Recorded)
            }
            Payload::Acceptance(_) => {
                if !matches!(author_role, KeyRole::TalksAuthority { .. }) {
                    return Err(Rejected::NotEntitled(
                        "a party accepts roster and ground rules through its talks authority",
                    ));
                }
                Ok(Accepted::Recorded)
            }
            Payload::AccessListChange(_) => Ok(Accepted::Recorded),
        }
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
        self.roster = Some(roster);
        Ok(Accepted::Roster)
    }
}
