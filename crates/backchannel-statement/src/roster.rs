//! The roster and the ground rules: the first two statements of every
//! talks, accepted by every party before anything else.

use std::collections::BTreeSet;

use backchannel_codec::{
    Decode, DecodeError, Encode, PartyId, PrincipalId, Reader, RoomId, TalksId, Writer,
    check_strictly_sorted,
};
use backchannel_crypto::{BadSignature, Context, Digest, PublicKey, SignError, Signature, Signer};
use thiserror::Error;

use crate::access_list::{
    AccessEntry, AccessList, AccessListError, FLAG_DESIGNATED_SIGNER, FLAG_DEVICE,
    FLAG_MAY_PROPOSE, FLAG_MEDIATOR,
};
use crate::markings::{Attribution, Conveyance};
use crate::roles::{Act, PartyKind, Role, u8_enum_codec};
use crate::text::check_string;

/// The context of a long-term authority's certification of a talks
/// authority key: signed over `talks ‖ party ‖ kind ‖ name ‖ talks authority key`.
pub const TALKS_AUTHORITY_CONTEXT: Context = Context::new("backchannel/v1/talks-authority");
/// The most parties (delegations, mediator teams, monitors, escrow agents).
pub const MAX_PARTIES: usize = 32;
/// The most members over all parties.
pub const MAX_MEMBERS: usize = 2_000;
/// The most devices one member may have.
pub const MAX_DEVICES: usize = 16;
/// The most rooms one talks may declare.
pub const MAX_ROOMS: usize = 256;
/// The most signing rules.
pub const MAX_RULES: usize = 256;
/// The longest name (of a party, member or room); names live only inside
/// encrypted bodies.
pub const MAX_NAME_BYTES: usize = 128;
/// The longest IANA time-zone name ("America/Argentina/ComodRivadavia" is 32).
pub const MAX_TIME_ZONE_BYTES: usize = 64;

/// A party's entry: its authority keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyEntry {
    /// The party's opaque id in these talks.
    pub party: PartyId,
    /// What kind of participant.
    pub kind: PartyKind,
    /// Its name ("Sultanate of Oman").
    pub name: String,
    /// Its long-term authority key (appears only inside encrypted bodies).
    pub authority_key: PublicKey,
    /// Its talks authority key for these talks.
    pub talks_authority_key: PublicKey,
    /// The authority key's signature over `talks ‖ party ‖ talks authority key`.
    pub authority_signature: Signature,
}

impl PartyEntry {
    /// Certifies `talks_authority_key` for `party` in `talks` with the
    /// party's long-term `authority`.
    pub fn certify(
        talks: TalksId,
        party: PartyId,
        kind: PartyKind,
        name: impl Into<String>,
        authority: &dyn Signer,
        talks_authority_key: PublicKey,
    ) -> Result<Self, SignError> {
        let name = name.into();
        let msg = Self::cert_message(talks, party, kind, &name, &talks_authority_key);
        let authority_signature = authority.sign(TALKS_AUTHORITY_CONTEXT, &msg)?;
        Ok(Self {
            party,
            kind,
            name,
            authority_key: authority.public_key(),
            talks_authority_key,
            authority_signature,
        })
    }

    /// `talks ‖ party ‖ kind ‖ name ‖ talks authority key`: the kind and
    /// name are bound so that the mediator cannot relabel a party.
    fn cert_message(
        talks: TalksId,
        party: PartyId,
        kind: PartyKind,
        name: &str,
        key: &PublicKey,
    ) -> Vec<u8> {
        let mut w = Writer::with_capacity(96 + name.len());
        talks.encode(&mut w);
        party.encode(&mut w);
        kind.encode(&mut w);
        w.text(name);
        key.encode(&mut w);
        w.into_bytes()
    }

    /// Checks the long-term authority's certification of the talks authority key.
    pub fn verify_certification(&self, talks: TalksId) -> Result<(), BadSignature> {
        let msg = Self::cert_message(
            talks,
            self.party,
            self.kind,
            &self.name,
            &self.talks_authority_key,
        );
        self.authority_key
            .verify(TALKS_AUTHORITY_CONTEXT, &msg, &self.authority_signature)
    }
}

/// The context of a party's certification of a member the roster lists:
/// its talks authority signs `talks ‖ member entry without the signature`.
pub const ROSTER_MEMBER_CONTEXT: Context = Context::new("backchannel/v1/roster-member");

/// A member as the roster lists it, certified by its own party's talks
/// authority (so the mediator, who signs the roster, cannot add or change a
/// party's members): the roster's form of a [`crate::MemberCert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEntry {
    /// What the party certifies (read through `Deref`: `entry.principal`).
    pub member: MemberFields,
    /// The party's talks authority's signature over `talks ‖ member`, under
    /// [`ROSTER_MEMBER_CONTEXT`].
    pub certification: Signature,
}

impl std::ops::Deref for MemberEntry {
    type Target = MemberFields;
    fn deref(&self) -> &MemberFields {
        &self.member
    }
}

impl std::ops::DerefMut for MemberEntry {
    fn deref_mut(&mut self) -> &mut MemberFields {
        &mut self.member
    }
}

/// The fields of a [`MemberEntry`], before its party certifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberFields {
    /// The member's opaque id.
    pub principal: PrincipalId,
    /// Its party.
    pub party: PartyId,
    /// Its role.
    pub role: Role,
    /// Its name.
    pub name: String,
    /// Its identity key for these talks.
    pub identity_key: PublicKey,
    /// Its device keys.
    pub devices: Vec<PublicKey>,
    /// The acts it may sign for the party.
    pub acts: Vec<Act>,
}

impl MemberFields {
    fn encode_unsigned(&self, w: &mut Writer) {
        self.principal.encode(w);
        self.party.encode(w);
        self.role.encode(w);
        w.text(&self.name);
        self.identity_key.encode(w);
        w.list(&self.devices);
        w.list(&self.acts);
    }

    fn signed_message(&self, talks: TalksId) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        talks.encode(&mut w);
        self.encode_unsigned(&mut w);
        w.into_bytes()
    }

    /// Sorts devices and acts, checks the acts against the role, and signs
    /// the entry with the party's talks authority.
    pub fn certify(
        mut self,
        talks: TalksId,
        talks_authority: &dyn Signer,
    ) -> Result<MemberEntry, MemberCertifyError> {
        self.devices.sort();
        self.devices.dedup();
        self.acts.sort();
        self.acts.dedup();
        if let Some(&act) = self.acts.iter().find(|a| !self.role.permits(**a)) {
            return Err(MemberCertifyError::Act(crate::certs::ActNotPermitted {
                role: self.role,
                act,
            }));
        }
        let certification =
            talks_authority.sign(ROSTER_MEMBER_CONTEXT, &self.signed_message(talks))?;
        Ok(MemberEntry {
            member: self,
            certification,
        })
    }
}

/// Why a member entry could not be certified.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MemberCertifyError {
    /// An act the role does not permit.
    #[error(transparent)]
    Act(#[from] crate::certs::ActNotPermitted),
    /// The signer failed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl MemberEntry {
    /// Checks the party's certification of this entry.
    pub fn verify_certification(
        &self,
        talks: TalksId,
        talks_authority: &PublicKey,
    ) -> Result<(), BadSignature> {
        talks_authority.verify(
            ROSTER_MEMBER_CONTEXT,
            &self.member.signed_message(talks),
            &self.certification,
        )
    }
}

/// What a room is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RoomPurpose {
    /// The one room holding every principal; formal statements only.
    Record = 1,
    /// One delegation, no mediator.
    PartyInternal = 2,
    /// One party with the mediators.
    Caucus = 3,
    /// The mediator team.
    Mediators = 4,
    /// All parties with the mediators.
    Plenary = 5,
    /// Named experts of each party with mediator staff.
    Track = 6,
    /// Two parties with the mediators.
    Bilateral = 7,
    /// Sealed letters between two parties' members, no mediator.
    Letter = 8,
    /// One member's private notes.
    PrivateNotes = 9,
    /// A party with an escrow agent.
    Escrow = 10,
    /// The hotline.
    Hotline = 11,
}

u8_enum_codec!(
    RoomPurpose,
    "room purpose",
    [
        RoomPurpose::Record,
        RoomPurpose::PartyInternal,
        RoomPurpose::Caucus,
        RoomPurpose::Mediators,
        RoomPurpose::Plenary,
        RoomPurpose::Track,
        RoomPurpose::Bilateral,
        RoomPurpose::Letter,
        RoomPurpose::PrivateNotes,
        RoomPurpose::Escrow,
        RoomPurpose::Hotline,
    ]
);

/// A room declared by the roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomDecl {
    /// Its id.
    pub room: RoomId,
    /// Its purpose.
    pub purpose: RoomPurpose,
    /// Its name ("Caucus: Oman with the United States").
    pub name: String,
    /// Its member principals; sorted, unique.
    pub members: Vec<PrincipalId>,
}

/// Who must sign an act for a party: `threshold` of `signers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningRule {
    /// The party.
    pub party: PartyId,
    /// The act.
    pub act: Act,
    /// How many of the signers.
    pub threshold: u8,
    /// The members who may sign it; sorted, unique.
    pub signers: Vec<PrincipalId>,
}

/// The roster: who is in the talks, in which rooms, signing what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    /// Sorted by party id.
    pub parties: Vec<PartyEntry>,
    /// Sorted by principal id.
    pub members: Vec<MemberEntry>,
    /// Sorted by room id.
    pub rooms: Vec<RoomDecl>,
    /// Sorted by (party, act).
    pub rules: Vec<SigningRule>,
    /// SHA-256 of the canonical access list this roster implies.
    pub access_list_hash: Digest,
}

/// Why a roster is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RosterError {
    /// A list is over its limit, unsorted or holds duplicates.
    #[error("{0}")]
    Shape(&'static str),
    /// A reference to a party, member or room that is not declared.
    #[error("{0} refers to something the roster does not declare")]
    Dangling(&'static str),
    /// A member's role does not fit its party's kind.
    #[error("a {role} cannot be a member of a {kind:?}")]
    RoleKind {
        /// The role.
        role: &'static str,
        /// The party kind.
        kind: PartyKind,
    },
    /// The talks must have exactly one record room, holding every member.
    #[error("the talks must have exactly one record room, and it must hold every member")]
    RecordRoom,
    /// A room's members do not fit its purpose (the proximity invariant:
    /// no member of one party in another party's internal room or caucus,
    /// or in the mediators' room).
    #[error("room {room}: {rule}")]
    RoomPurpose {
        /// The room.
        room: RoomId,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A signing rule is impossible or names a non-member of its party.
    #[error("a signing rule must need between 1 and all of its signers, all members of its party")]
    Rule,
    /// A party's talks authority certification does not verify.
    #[error("party {0}: the authority's certification of its talks authority key does not verify")]
    Certification(PartyId),
    /// The statement is not a roster.
    #[error("the statement is not a roster")]
    NotARoster,
    /// The roster statement is not signed by a mediator team's talks
    /// authority acting for that team.
    #[error("the roster must be signed by a mediator team's talks authority, acting for that team")]
    NotSignedByMediator,
    /// A member entry is not certified by its party's talks authority.
    #[error("member {0}: its party's talks authority has not certified this entry")]
    MemberCertification(PrincipalId),
    /// The access-list hash is not that of the implied list.
    #[error("the roster's access-list hash does not match the access list it implies")]
    AccessListHash,
    /// A name is not clean text.
    #[error("names must be 1 to {MAX_NAME_BYTES} bytes of clean NFC text")]
    Name,
    /// The implied access list is invalid.
    #[error(transparent)]
    AccessList(#[from] AccessListError),
}

fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_BYTES && check_string(s).is_ok() && !s.contains('\n')
}

impl Roster {
    /// Checks the roster's structure (limits, order, references, roles,
    /// the record room, rules). Does not check signatures or the hash: see
    /// [`Roster::verify_for`].
    pub fn check_structure(&self) -> Result<(), RosterError> {
        let sorted = |ok: bool, what| {
            if ok {
                Ok(())
            } else {
                Err(RosterError::Shape(what))
            }
        };
        sorted(self.parties.len() <= MAX_PARTIES, "too many parties")?;
        sorted(self.members.len() <= MAX_MEMBERS, "too many members")?;
        sorted(self.rooms.len() <= MAX_ROOMS, "too many rooms")?;
        sorted(self.rules.len() <= MAX_RULES, "too many signing rules")?;
        sorted(
            self.parties.windows(2).all(|w| w[0].party < w[1].party),
            "parties must be sorted and unique",
        )?;
        sorted(
            self.members
                .windows(2)
                .all(|w| w[0].principal < w[1].principal),
            "members must be sorted and unique",
        )?;
        sorted(
            self.rooms.windows(2).all(|w| w[0].room < w[1].room),
            "rooms must be sorted and unique",
        )?;
        sorted(
            self.rules
                .windows(2)
                .all(|w| (w[0].party, w[0].act) < (w[1].party, w[1].act)),
            "signing rules must be sorted and unique",
        )?;
        for p in &self.parties {
            if !name_ok(&p.name) {
                return Err(RosterError::Name);
            }
        }
        let party = |id: PartyId| self.parties.iter().find(|p| p.party == id);
        for m in &self.members {
            let p = party(m.party).ok_or(RosterError::Dangling("a member's party"))?;
            if m.role.party_kind() != p.kind {
                return Err(RosterError::RoleKind {
                    role: m.role.name(),
                    kind: p.kind,
                });
            }
            if !name_ok(&m.name) {
                return Err(RosterError::Name);
            }
            sorted(
                m.devices.len() <= MAX_DEVICES,
                "too many devices for one member",
            )?;
            sorted(
                m.devices.windows(2).all(|w| w[0] < w[1]),
                "devices must be sorted and unique",
            )?;
        }
        let principals: BTreeSet<PrincipalId> = self.members.iter().map(|m| m.principal).collect();
        // A party's authority appears on the access list with its party id
        // as principal; no member may take that id.
        sorted(
            self.parties
                .iter()
                .all(|p| !principals.contains(&PrincipalId(p.party.0))),
            "a member's principal id equals a party id",
        )?;
        for r in &self.rooms {
            if !name_ok(&r.name) {
                return Err(RosterError::Name);
            }
            sorted(
                r.members.windows(2).all(|w| w[0] < w[1]),
                "room members must be sorted and unique",
            )?;
            if !r.members.iter().all(|m| principals.contains(m)) {
                return Err(RosterError::Dangling("a room's member"));
            }
        }
        // Every key has one holder and one role.
        let mut keys: Vec<&PublicKey> = Vec::new();
        for p in &self.parties {
            keys.extend([&p.authority_key, &p.talks_authority_key]);
        }
        for m in &self.members {
            keys.push(&m.identity_key);
            keys.extend(m.devices.iter());
        }
        keys.sort();
        sorted(
            keys.windows(2).all(|w| w[0] != w[1]),
            "a key appears twice in the roster",
        )?;
        let records: Vec<_> = self
            .rooms
            .iter()
            .filter(|r| r.purpose == RoomPurpose::Record)
            .collect();
        if records.len() != 1 || records[0].members.len() != principals.len() {
            return Err(RosterError::RecordRoom);
        }
        for r in &self.rooms {
            self.check_purpose(r)?;
        }
        for rule in &self.rules {
            let n = rule.signers.len();
            let members_ok = rule.signers.windows(2).all(|w| w[0] < w[1])
                && rule.signers.iter().all(|s| {
                    self.members
                        .iter()
                        .any(|m| m.principal == *s && m.party == rule.party)
                });
            if rule.threshold == 0 || usize::from(rule.threshold) > n || !members_ok {
                return Err(RosterError::Rule);
            }
        }
        Ok(())
    }

    /// Who may be in a room of each purpose. Only the members the roster
    /// lists can be placed, and each member entry is certified by its own
    /// party; these rules make sure that whatever the mediator declares, no
    /// member of one party enters another's internal room or caucus, or
    /// the mediators' room:
    ///
    /// | purpose        | members                                                      |
    /// |----------------|--------------------------------------------------------------|
    /// | record         | everyone (checked above)                                     |
    /// | party-internal | one delegation, at least one member, no one else             |
    /// | caucus         | one delegation and at least one mediator, no one else        |
    /// | mediators      | mediator teams only                                          |
    /// | plenary        | at least two delegations; mediators, monitors may join       |
    /// | track          | at least two delegations and at least one mediator           |
    /// | bilateral      | exactly two delegations; mediators may join                  |
    /// | letter         | exactly two delegations, no one else                         |
    /// | private-notes  | exactly one member                                           |
    /// | escrow, hotline| at least one member (their issues add their rules)           |
    fn check_purpose(&self, r: &RoomDecl) -> Result<(), RosterError> {
        let kind_of = |p: PartyId| self.party_kind(p);
        let mut delegations = BTreeSet::new();
        let mut mediators = 0usize;
        let mut others = 0usize;
        for principal in &r.members {
            let Some(m) = self.members.iter().find(|m| m.principal == *principal) else {
                return Err(RosterError::Dangling("a room's member"));
            };
            match kind_of(m.party) {
                Some(PartyKind::Party) => {
                    delegations.insert(m.party);
                }
                Some(PartyKind::Mediator) => mediators += 1,
                Some(_) => others += 1,
                None => return Err(RosterError::Dangling("a member's party")),
            }
        }
        let fail = |rule| Err(RosterError::RoomPurpose { room: r.room, rule });
        let d = delegations.len();
        match r.purpose {
            RoomPurpose::Record => Ok(()),
            RoomPurpose::PartyInternal if d != 1 || mediators + others > 0 => {
                fail("a party-internal room holds members of one delegation and no one else")
            }
            RoomPurpose::Caucus if d != 1 || mediators == 0 || others > 0 => {
                fail("a caucus holds members of one delegation and the mediators, no one else")
            }
            RoomPurpose::Mediators if d + others > 0 || mediators == 0 => {
                fail("the mediators' room holds mediator team members only")
            }
            RoomPurpose::Plenary if d < 2 => fail("a plenary holds at least two delegations"),
            RoomPurpose::Track if d < 2 || mediators == 0 || others > 0 => {
                fail("a track holds experts of at least two delegations with mediator staff")
            }
            RoomPurpose::Bilateral if d != 2 || others > 0 => {
                fail("a bilateral room holds exactly two delegations, with or without mediators")
            }
            RoomPurpose::Letter if d != 2 || mediators + others > 0 => {
                fail("a letter room holds members of exactly two delegations and no mediator")
            }
            RoomPurpose::PrivateNotes if r.members.len() != 1 => {
                fail("a private-notes room holds exactly one member")
            }
            _ if r.members.is_empty() => fail("a room holds at least one member"),
            _ => Ok(()),
        }
    }

    /// The declared room `room`, if any.
    pub fn room(&self, room: RoomId) -> Option<&RoomDecl> {
        self.rooms.iter().find(|r| r.room == room)
    }

    /// The kind of a party the roster declares.
    pub fn party_kind(&self, party: PartyId) -> Option<PartyKind> {
        self.parties
            .iter()
            .find(|p| p.party == party)
            .map(|p| p.kind)
    }

    /// The parties with a member in `room`, sorted, if the roster declares it.
    pub fn room_parties(&self, room: RoomId) -> Option<Vec<PartyId>> {
        let decl = self.rooms.iter().find(|r| r.room == room)?;
        let mut parties: Vec<PartyId> = self
            .members
            .iter()
            .filter(|m| decl.members.binary_search(&m.principal).is_ok())
            .map(|m| m.party)
            .collect();
        parties.sort();
        parties.dedup();
        Some(parties)
    }

    /// The mediator team whose talks authority key has id `key`: the only
    /// party that may sign the roster.
    pub fn mediator_with_authority(&self, key: &backchannel_crypto::KeyId) -> Option<&PartyEntry> {
        self.parties
            .iter()
            .find(|p| p.kind == PartyKind::Mediator && p.talks_authority_key.id() == *key)
    }

    /// The access list this roster implies for `talks`: each member's
    /// devices with the rooms the member is in; each party's talks authority
    /// key as its designated signer; heads and mediator leads may propose
    /// changes; mediator teams' keys are flagged as such.
    pub fn implied_access_list(&self, talks: TalksId) -> Result<AccessList, RosterError> {
        let mut entries = Vec::new();
        let kind_of = |p: PartyId| self.parties.iter().find(|e| e.party == p).map(|e| e.kind);
        for m in &self.members {
            let rooms: Vec<RoomId> = self
                .rooms
                .iter()
                .filter(|r| r.members.binary_search(&m.principal).is_ok())
                .map(|r| r.room)
                .collect();
            let mut flags = FLAG_DEVICE;
            if matches!(m.role, Role::Head | Role::Lead) {
                flags |= FLAG_MAY_PROPOSE;
            }
            if kind_of(m.party) == Some(PartyKind::Mediator) {
                flags |= FLAG_MEDIATOR;
            }
            for d in &m.devices {
                entries.push(AccessEntry::new(
                    *d,
                    m.principal,
                    m.party,
                    rooms.clone(),
                    flags,
                )?);
            }
        }
        for p in &self.parties {
            let mut flags = FLAG_DESIGNATED_SIGNER;
            if p.kind == PartyKind::Mediator {
                flags |= FLAG_MEDIATOR;
            }
            // The authority's entry has no principal of its own: it is the
            // party acting as a whole, so its principal id is its party id.
            let principal = PrincipalId(p.party.0);
            entries.push(AccessEntry::new(
                p.talks_authority_key,
                principal,
                p.party,
                Vec::new(),
                flags,
            )?);
        }
        Ok(AccessList::new(talks, 0, entries)?)
    }

    /// Everything [`Roster::check_structure`] checks, plus every party's
    /// talks-authority certification and the access-list hash, for `talks`.
    pub fn verify_for(&self, talks: TalksId) -> Result<AccessList, RosterError> {
        self.check_structure()?;
        for p in &self.parties {
            p.verify_certification(talks)
                .map_err(|_| RosterError::Certification(p.party))?;
        }
        for m in &self.members {
            let authority = self
                .parties
                .iter()
                .find(|p| p.party == m.party)
                .ok_or(RosterError::Dangling("a member's party"))?;
            m.verify_certification(talks, &authority.talks_authority_key)
                .map_err(|_| RosterError::MemberCertification(m.principal))?;
        }
        let list = self.implied_access_list(talks)?;
        if list.hash() != self.access_list_hash {
            return Err(RosterError::AccessListHash);
        }
        Ok(list)
    }
}

/// A roster statement that verified: the roster is sound for its talks
/// (see [`Roster::verify_for`]) and the statement is signed by a mediator
/// team's talks authority acting for that team.
#[derive(Debug, Clone)]
pub struct VerifiedRoster {
    /// The verified statement.
    pub statement: crate::VerifiedStatement,
    /// The roster.
    pub roster: Roster,
    /// The access list the roster implies.
    pub access_list: AccessList,
}

impl VerifiedRoster {
    /// Verifies a signed roster statement for `talks`: the one check replay
    /// and evidence verification share.
    pub fn verify(talks: TalksId, signed: &crate::SignedStatement) -> Result<Self, RosterError> {
        let crate::Payload::Roster(roster) = &signed.unverified().payload else {
            return Err(RosterError::NotARoster);
        };
        let access_list = roster.verify_for(talks)?;
        let mediator = roster
            .mediator_with_authority(&signed.unverified().author)
            .ok_or(RosterError::NotSignedByMediator)?;
        let statement = signed
            .verify(talks, &mediator.talks_authority_key)
            .map_err(|_| RosterError::NotSignedByMediator)?;
        if statement.statement().acting_for != mediator.party {
            return Err(RosterError::NotSignedByMediator);
        }
        Ok(Self {
            statement,
            roster: roster.clone(),
            access_list,
        })
    }
}

fn roster_err(e: RosterError) -> DecodeError {
    DecodeError::Invalid {
        field: "roster",
        reason: match e {
            RosterError::Shape(s) => s,
            RosterError::Dangling(s) => s,
            RosterError::RoleKind { .. } => "a role does not fit its party's kind",
            RosterError::RecordRoom => "exactly one record room holding every member",
            RosterError::RoomPurpose { .. } => "a room's members do not fit its purpose",
            RosterError::Rule => "impossible signing rule",
            RosterError::Name => "bad name",
            _ => "invalid",
        },
    }
}

impl Encode for PartyEntry {
    fn encode(&self, w: &mut Writer) {
        self.party.encode(w);
        self.kind.encode(w);
        w.text(&self.name);
        self.authority_key.encode(w);
        self.talks_authority_key.encode(w);
        self.authority_signature.encode(w);
    }
}

impl Decode for PartyEntry {
    const MIN_LEN: usize = 16 + 1 + 4 + 32 + 32 + 64;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            party: PartyId::decode(r)?,
            kind: PartyKind::decode(r)?,
            name: r.text("party name", MAX_NAME_BYTES)?.to_owned(),
            authority_key: PublicKey::decode(r)?,
            talks_authority_key: PublicKey::decode(r)?,
            authority_signature: Signature::decode(r)?,
        })
    }
}

impl Encode for MemberEntry {
    fn encode(&self, w: &mut Writer) {
        self.member.encode_unsigned(w);
        self.certification.encode(w);
    }
}

impl Decode for MemberEntry {
    const MIN_LEN: usize = 16 + 16 + 1 + 4 + 32 + 4 + 4 + 64;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let entry = Self {
            member: MemberFields {
                principal: PrincipalId::decode(r)?,
                party: PartyId::decode(r)?,
                role: Role::decode(r)?,
                name: r.text("member name", MAX_NAME_BYTES)?.to_owned(),
                identity_key: PublicKey::decode(r)?,
                devices: r.list("devices", MAX_DEVICES)?,
                acts: r.list("acts", crate::certs::MAX_ACTS)?,
            },
            certification: Signature::decode(r)?,
        };
        check_strictly_sorted(&entry.acts, "acts", |a| *a)?;
        if entry.acts.iter().any(|a| !entry.role.permits(*a)) {
            return Err(DecodeError::Invalid {
                field: "acts",
                reason: "an act the role does not permit",
            });
        }
        Ok(entry)
    }
}

impl Encode for RoomDecl {
    fn encode(&self, w: &mut Writer) {
        self.room.encode(w);
        self.purpose.encode(w);
        w.text(&self.name);
        w.list(&self.members);
    }
}

impl Decode for RoomDecl {
    const MIN_LEN: usize = 16 + 1 + 4 + 4;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            room: RoomId::decode(r)?,
            purpose: RoomPurpose::decode(r)?,
            name: r.text("room name", MAX_NAME_BYTES)?.to_owned(),
            members: r.list("room members", MAX_MEMBERS)?,
        })
    }
}

impl Encode for SigningRule {
    fn encode(&self, w: &mut Writer) {
        self.party.encode(w);
        self.act.encode(w);
        w.u8(self.threshold);
        w.list(&self.signers);
    }
}

impl Decode for SigningRule {
    const MIN_LEN: usize = 16 + 1 + 1 + 4;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            party: PartyId::decode(r)?,
            act: Act::decode(r)?,
            threshold: r.u8("threshold")?,
            signers: r.list("signers", MAX_MEMBERS)?,
        })
    }
}

impl Encode for Roster {
    fn encode(&self, w: &mut Writer) {
        w.list(&self.parties);
        w.list(&self.members);
        w.list(&self.rooms);
        w.list(&self.rules);
        self.access_list_hash.encode(w);
    }
}

impl Decode for Roster {
    const MIN_LEN: usize = 16 + 32;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let roster = Self {
            parties: r.list("parties", MAX_PARTIES)?,
            members: r.list("members", MAX_MEMBERS)?,
            rooms: r.list("rooms", MAX_ROOMS)?,
            rules: r.list("signing rules", MAX_RULES)?,
            access_list_hash: Digest::decode(r)?,
        };
        roster.check_structure().map_err(roster_err)?;
        Ok(roster)
    }
}

/// What a party may export, and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExportScope {
    /// Its own statements.
    OwnStatements = 1,
    /// Everything in the rooms it holds.
    RoomsItHolds = 2,
    /// Evidence bundles of single statements.
    EvidenceBundles = 3,
}

/// The recipient of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExportRecipient {
    /// The party's own archive.
    OwnArchive = 1,
    /// An arbiter or court.
    Arbiter = 2,
    /// The public.
    Public = 3,
}

u8_enum_codec!(
    ExportScope,
    "export scope",
    [
        ExportScope::OwnStatements,
        ExportScope::RoomsItHolds,
        ExportScope::EvidenceBundles
    ]
);
u8_enum_codec!(
    ExportRecipient,
    "export recipient",
    [
        ExportRecipient::OwnArchive,
        ExportRecipient::Arbiter,
        ExportRecipient::Public
    ]
);
u8_enum_codec!(
    Conveyance,
    "conveyance",
    [
        Conveyance::MediatorOnly,
        Conveyance::SubstanceMayBeConveyed,
        Conveyance::VerbatimMayBeConveyed
    ]
);
u8_enum_codec!(
    Attribution,
    "attribution",
    [Attribution::Formal, Attribution::Exploratory]
);

/// One permission to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExportRule {
    /// The party allowed.
    pub party: PartyId,
    /// What it may export.
    pub scope: ExportScope,
    /// To whom.
    pub to: ExportRecipient,
}

/// Whether parties must compare the talks safety code before formal acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyVerification {
    /// Formal acts of a party are blocked until it is verified.
    Required = 1,
    /// Shown as a warning only.
    Recommended = 2,
}

/// How the roster or ground rules may be changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeRule {
    /// Every party accepts the change.
    AllParties = 1,
    /// The mediator and every party the change affects.
    MediatorAndAffectedParties = 2,
}

u8_enum_codec!(
    KeyVerification,
    "key verification",
    [KeyVerification::Required, KeyVerification::Recommended]
);
u8_enum_codec!(
    ChangeRule,
    "change rule",
    [
        ChangeRule::AllParties,
        ChangeRule::MediatorAndAffectedParties
    ]
);

/// The calendar deadlines are counted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    /// IANA time zone name ("Asia/Muscat").
    pub time_zone: String,
    /// Working days as a bit mask, bit 0 = Monday … bit 6 = Sunday.
    pub working_days: u8,
}

/// The ground rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroundRules {
    /// Default conveyance marking.
    pub confidentiality_default: Conveyance,
    /// Default attribution.
    pub attribution_default: Attribution,
    /// Who may export what to whom; sorted, unique.
    pub exports: Vec<ExportRule>,
    /// Pairs of parties that may exchange sealed letters, each pair
    /// (lower id, higher id); sorted, unique.
    pub sealed_letters: Vec<(PartyId, PartyId)>,
    /// Days after which bodies are purged (the record keeps verifying);
    /// `None` keeps bodies for the life of the talks.
    pub retention_days: Option<u32>,
    /// The calendar of deadlines.
    pub calendar: Calendar,
    /// Key verification requirement.
    pub key_verification: KeyVerification,
    /// How these rules and the roster change.
    pub change_rule: ChangeRule,
}

fn time_zone_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TIME_ZONE_BYTES
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
}

impl Encode for GroundRules {
    fn encode(&self, w: &mut Writer) {
        self.confidentiality_default.encode(w);
        self.attribution_default.encode(w);
        w.len(self.exports.len());
        for e in &self.exports {
            e.party.encode(w);
            e.scope.encode(w);
            e.to.encode(w);
        }
        w.len(self.sealed_letters.len());
        for (a, b) in &self.sealed_letters {
            a.encode(w);
            b.encode(w);
        }
        w.option(self.retention_days.map(u64::from).as_ref());
        w.text(&self.calendar.time_zone);
        w.u8(self.calendar.working_days);
        self.key_verification.encode(w);
        self.change_rule.encode(w);
    }
}

impl Decode for GroundRules {
    const MIN_LEN: usize = 2 + 4 + 4 + 1 + 4 + 3;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let confidentiality_default = Conveyance::decode(r)?;
        let attribution_default = Attribution::decode(r)?;
        let n = r.len("export rules", MAX_RULES, 18)?;
        let mut exports = Vec::with_capacity(n);
        for _ in 0..n {
            exports.push(ExportRule {
                party: PartyId::decode(r)?,
                scope: ExportScope::decode(r)?,
                to: ExportRecipient::decode(r)?,
            });
        }
        check_strictly_sorted(&exports, "export rules", |e| *e)?;
        let n = r.len("sealed letters", MAX_PARTIES * MAX_PARTIES, 32)?;
        let mut sealed_letters = Vec::with_capacity(n);
        for _ in 0..n {
            let pair = (PartyId::decode(r)?, PartyId::decode(r)?);
            if pair.0 >= pair.1 {
                return Err(DecodeError::Invalid {
                    field: "sealed letters",
                    reason: "each pair must be (lower, higher)",
                });
            }
            sealed_letters.push(pair);
        }
        check_strictly_sorted(&sealed_letters, "sealed letters", |p| *p)?;
        let retention_days = match r.option::<u64>("retention")? {
            None => None,
            Some(d) => Some(u32::try_from(d).map_err(|_| DecodeError::Invalid {
                field: "retention",
                reason: "more than u32::MAX days",
            })?),
        };
        let time_zone = r.text("time zone", MAX_TIME_ZONE_BYTES)?.to_owned();
        if !time_zone_ok(&time_zone) {
            return Err(DecodeError::Invalid {
                field: "time zone",
                reason: "not an IANA time-zone name",
            });
        }
        let working_days = r.u8("working days")?;
        if working_days & 0x80 != 0 {
            return Err(DecodeError::UnknownValue {
                field: "working days",
                value: u64::from(working_days),
            });
        }
        Ok(Self {
            confidentiality_default,
            attribution_default,
            exports,
            sealed_letters,
            retention_days,
            calendar: Calendar {
                time_zone,
                working_days,
            },
            key_verification: KeyVerification::decode(r)?,
            change_rule: ChangeRule::decode(r)?,
        })
    }
}
