//! Replay of key validity: who could sign what, at which log position; of
//! the talks' acceptance and lifecycle; of joint sessions, commit failures,
//! history handed over and talks authorities passed on; all from the record
//! room alone, each act counted once.
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
//!    revoked through the identity key, from another device.) A revocation
//!    for loss or compromise names when the key was lost; views flag what
//!    the key signed from the first seq whose node timestamp is at or after
//!    that time ([`KeyState::lost_at`]), before the revocation too.
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
//!    revocations, commit failures, history shares and authority passes
//!    (and *closed*) are accepted; while closed, nothing. Messages, conveyances, receipts and
//!    session consents only while open.
//! 10. **The record room alone.** Every piece of derived state (roster,
//!     keys, ground rules, acceptances, phase, joint sessions, commit
//!     failures, history shares, authority passes) comes from statements
//!     posted to the roster's record room ([`RoomPurpose::Record`]), so
//!     every party derives the same state whatever the mediator conveys
//!     to, or withholds from, the other rooms.
//!     The roster itself must be posted to the room it declares as record.
//!     A formal act (every payload but messages, conveyances and receipts)
//!     posted to any other room is [`Rejected::NotInRecordRoom`]; a message,
//!     conveyance or receipt posted to the record room is
//!     [`Rejected::MessageInRecordRoom`]. In the other rooms these are
//!     verified like any statement (rule 6, and the author's party must have
//!     a member in the room; a conveyance, or a receipt saying where
//!     something was conveyed, must be signed by a mediator whose role
//!     permits [`Act::Convey`]), accepted only while the talks are open, and
//!     [`Accepted::Said`]: they change no state.
//! 11. **An act counts once**, at the position where its author first
//!     posted it to the record room. A later statement by the same key
//!     with the same statement id and the same signed bytes is a copy
//!     ([`Accepted::Copy`], or [`Rejected::CopyOfRejected`] when the first
//!     did not count), with no effect; the same key, the same id and other
//!     bytes is [`Rejected::Equivocation`], kept as evidence
//!     ([`Replay::equivocations`]). In the other rooms a statement counts
//!     once per room, and an equivocation is judged against the record room
//!     and those rooms. Verdicts in the record room depend on the record
//!     room only; an equivocation between a record-room statement and an
//!     earlier one elsewhere is kept as evidence without changing the
//!     record-room verdict.
//! 12. **Joint sessions.** A [`SessionConsent`] is signed by the party's
//!     talks authority, or by a member whose role permits
//!     [`Act::AcceptTalks`], for a [`RoomPurpose::Plenary`] room in which the
//!     party has a member; accepted only while open. A party's later
//!     consent replaces its earlier one. [`Replay::joint_session`]: the
//!     session is open while the talks are open and every party with a
//!     member in the room has consented to a window covering the time.
//! 13. **Letter rooms.** Ground rules must allow sealed letters
//!     ([`GroundRules::sealed_letters`]) between the two delegations of
//!     every [`RoomPurpose::Letter`] room the roster declares, or they are
//!     [`Rejected::LettersNotAllowed`].
//! 14. **Commit failures.** A [`CommitFailure`] is signed by a member's
//!     identity key, names a room the roster declares and a commit sequenced
//!     before it, and is kept ([`Replay::commit_failures`]). It is about
//!     keys, like a revocation: accepted while open, suspended or concluded
//!     (while closed, nothing is).
//! 15. **History shared.** A [`HistoryShared`] is signed by a member's
//!     identity key (never a talks authority) whose role permits
//!     [`Act::HandOverHistory`]. Its `to` is a principal replay knows as a
//!     member of the author's party (from the roster, or a valid member
//!     certificate sequenced before it), the author itself included (its
//!     own new device); every room is declared by the roster and none is a
//!     [`RoomPurpose::PrivateNotes`] room (private notes are never handed
//!     over); `until` is at most the statement's own seq (no one shares the
//!     future). Otherwise [`Rejected::NotEntitled`],
//!     [`Rejected::HistoryShared`] or [`Rejected::HistoryRoom`]. It is kept
//!     ([`Replay::history_shared`]); like a commit failure it is about keys
//!     and records: accepted while open, suspended or concluded.
//! 16. **Authority passed.** An [`AuthorityPassed`] moves the talks
//!     authority of a party the roster declares from `old_key` — its talks
//!     authority valid at this seq and never passed on — to `new_key`, a
//!     key replay does not know in any role (nor a roster long-term
//!     authority key), whose signature over the transfer must verify.
//!     *Handed over*: the author is `old_key` itself, which must not be
//!     revoked. *Re-appointed*: `old_key` may be revoked (a party that
//!     revoked its lost talks authority is re-appointed); the party is not
//!     a mediator team (mediator teams change only with a new roster; a
//!     mediator team may still hand over its own); the author is the current
//!     talks authority of a mediator team other than the party; the party's
//!     long-term authority (its roster `authority_key`) certifies the
//!     transfer; every endorsement is by the current talks authority of a
//!     party other than the party and the author's team, and verifies;
//!     under the ground rules' change rule *all parties* — or before ground
//!     rules every party has accepted ([`Replay::awaiting_acceptance`]
//!     empty) — every such party endorses. Otherwise
//!     [`Rejected::NotEntitled`], [`Rejected::AuthorityPassed`],
//!     [`Rejected::Endorsement`] or [`Rejected::MissingEndorsement`].
//!     From the next statement on the new key is the party's talks
//!     authority ([`KeyRole::TalksAuthority`], valid from this seq) and the
//!     old key signs nothing ([`KeyState::passed_at`],
//!     [`Rejected::AuthorityRetired`]); what it signed before stays valid.
//!     Kept in [`Replay::authority_passes`]; accepted while open,
//!     suspended or concluded, like a commit failure.
//!
//! A rejected statement changes no state; replay goes on (the rejection is
//! itself evidence a client shows).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::num::NonZeroUsize;

use backchannel_codec::{PartyId, PrincipalId, RoomId, StatementId, TalksId};
use backchannel_crypto::{Digest, KeyId, PublicKey};
use backchannel_statement::roster::ChangeRule;
use backchannel_statement::roster::{GroundRules, RoomPurpose, Roster, VerifiedRoster};
use backchannel_statement::{
    Acceptance, Act, AuthorityPassed, CommitFailure, HistoryShared, LifecycleChange,
    LifecyclePhase, PartyKind, PassedHow, Payload, Role, SessionConsent, SignedStatement,
    StatementType, VerifiedStatement, VerifyError,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_core::CryptoRngCore;
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
    /// When a revocation says the key was lost or compromised (node clock,
    /// Unix ms; the earliest any valid revocation of it names): what it
    /// signed at a seq whose node timestamp is at or after this is suspect,
    /// even before the revocation's seq. A log position, never the signer's
    /// own claim of time, which a thief can backdate.
    pub lost_at: Option<u64>,
    /// The seq of the `authority-passed` statement that passed this talks
    /// authority to a new key (rule 16): like a revocation, the key signs
    /// nothing sequenced after it, and what it signed before stays valid.
    pub passed_at: Option<u64>,
}

impl KeyState {
    /// The seq after which the key signs nothing: the earlier of its
    /// revocation and the passing of its authority.
    pub fn retired_at(&self) -> Option<u64> {
        match (self.revoked_at, self.passed_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
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
    /// Concluded by the mediator team; only revocations, commit failures
    /// and closing are accepted.
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

/// Evidence of equivocation (rule 11): one key signed two statements with
/// the same statement id and different bytes, both in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Equivocation {
    /// The seq of the first.
    pub first: u64,
    /// The seq of the later one.
    pub later: u64,
    /// The statement id both carry.
    pub statement: StatementId,
    /// The key that signed both.
    pub author: KeyId,
}

/// A member's statement that it could not process a commit, as the record
/// keeps it (rule 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitFailureRecord {
    /// The room of the commit.
    pub room: RoomId,
    /// The commit's seq.
    pub seq: u64,
    /// The epoch the commit was for.
    pub epoch: u64,
    /// The member that could not process it.
    pub by: PrincipalId,
    /// The seq of the commit-failure statement.
    pub at: u64,
}

/// History a member handed over to a successor, as the record keeps it
/// (rule 15): "`by` shared `rooms` up to `until` with `to` at `seq`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryShare {
    /// The seq of the history-shared statement.
    pub seq: u64,
    /// Its statement id.
    pub statement: StatementId,
    /// The member that shared it (the statement's author).
    pub by: PrincipalId,
    /// Its party (and the successor's).
    pub party: PartyId,
    /// The successor: a member of the same party, or `by` itself.
    pub to: PrincipalId,
    /// The rooms, strictly sorted.
    pub rooms: Vec<RoomId>,
    /// The bundle covers the rooms' log positions strictly below this.
    pub until: u64,
    /// The bundle's id (`SHA-256("backchannel/v1/handover-bundle" ‖ bundle)`).
    pub bundle: Digest,
}

/// A party's talks authority passed to a new key, as the record keeps it
/// (rule 16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityPass {
    /// The seq of the authority-passed statement.
    pub seq: u64,
    /// Its statement id.
    pub statement: StatementId,
    /// The party.
    pub party: PartyId,
    /// The old talks authority key, which signs nothing after `seq`.
    pub old: KeyId,
    /// The new talks authority key, valid from `seq`.
    pub new: PublicKey,
    /// Handed over by the old holder, or re-appointed by a mediator team.
    pub how: PassedHow,
}

/// A party's latest consent to a joint session in one room (rule 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentWindow {
    /// From (Unix ms, UTC).
    pub opens: u64,
    /// Until (Unix ms, UTC), exclusive.
    pub closes: u64,
    /// The seq of the consent.
    pub at: u64,
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
    /// The author's key was a talks authority that passed to a new key
    /// earlier in the log (rule 16).
    #[error(
        "the author's key passed its party's talks authority to a new key at seq {passed_at}; it signs nothing after that"
    )]
    AuthorityRetired {
        /// The seq of the authority-passed statement.
        passed_at: u64,
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
    /// A formal act posted outside the record room (rule 10).
    #[error(
        "a {} statement is a formal act: it counts only in the talks' record room",
        .statement.name()
    )]
    NotInRecordRoom {
        /// The statement's type.
        statement: StatementType,
    },
    /// A message, conveyance or receipt posted to the record room (rule 10).
    #[error(
        "messages belong in the talks' other rooms; the record room carries formal statements only (this is a {} statement)",
        .statement.name()
    )]
    MessageInRecordRoom {
        /// The statement's type.
        statement: StatementType,
    },
    /// The same key signed other bytes under this statement id earlier
    /// (rule 11): evidence against the author, kept in
    /// [`Replay::equivocations`].
    #[error(
        "equivocation: its author signed other content under statement id {statement}, first at seq {first}"
    )]
    Equivocation {
        /// The seq of the first statement under the id.
        first: u64,
        /// The statement id.
        statement: StatementId,
    },
    /// A copy of a statement that did not count (rule 11).
    #[error("a copy of the statement at seq {first}, which did not count")]
    CopyOfRejected {
        /// The seq of the first posting.
        first: u64,
    },
    /// Ground rules that do not allow the sealed letters of a letter room
    /// the roster declares (rule 13).
    #[error(
        "the ground rules do not allow sealed letters between the two delegations of letter room {room}"
    )]
    LettersNotAllowed {
        /// The letter room.
        room: RoomId,
    },
    /// A session consent that does not fit the talks (rule 12).
    #[error("the session consent does not fit the talks: {0}")]
    SessionConsent(&'static str),
    /// A commit failure that does not fit the record (rule 14).
    #[error("the commit failure does not fit the record: {0}")]
    CommitFailure(&'static str),
    /// A history share that does not fit the record (rule 15).
    #[error("the history share does not fit the record: {0}")]
    HistoryShared(&'static str),
    /// An authority pass that does not fit the record (rule 16).
    #[error("the authority pass does not fit the record: {0}")]
    AuthorityPassed(&'static str),
    /// An endorsement of a re-appointment that does not count (rule 16).
    #[error("the endorsement by key {} does not count: {reason}", .key.to_hex())]
    Endorsement {
        /// The endorsing key's id.
        key: KeyId,
        /// Why.
        reason: &'static str,
    },
    /// A re-appointment under the change rule "all parties" that a party
    /// did not endorse (rule 16).
    #[error(
        "the ground rules' change rule needs every other party's endorsement of a re-appointment; party {party} has not endorsed it"
    )]
    MissingEndorsement {
        /// The party whose talks authority has not endorsed.
        party: PartyId,
    },
    /// A history share naming a room whose history may not be handed over
    /// (rule 15).
    #[error("the history share names room {room}: {reason}")]
    HistoryRoom {
        /// The room.
        room: RoomId,
        /// Why its history may not be handed over.
        reason: &'static str,
    },
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
    /// A message, conveyance or receipt in one of the talks' other rooms:
    /// verified, with no effect on the talks' state (rule 10).
    Said,
    /// A copy of the statement at seq `first` in the same room, which
    /// counted there; no effect (rule 11).
    Copy {
        /// The seq of the first posting.
        first: u64,
    },
    /// A party's consent to a joint session in `room` (rule 12).
    SessionConsent {
        /// The plenary room.
        room: RoomId,
        /// The consenting party.
        party: PartyId,
    },
    /// A member's commit failure, kept (rule 14).
    CommitFailure {
        /// The room of the commit.
        room: RoomId,
        /// The commit's seq.
        seq: u64,
    },
    /// A party's talks authority passed to a new key (rule 16).
    AuthorityPassed {
        /// The party.
        party: PartyId,
        /// The old key.
        old: KeyId,
        /// The new key's id.
        new: KeyId,
    },
    /// History handed over, kept (rule 15).
    HistoryShared {
        /// The member that shared it.
        by: PrincipalId,
        /// The successor.
        to: PrincipalId,
        /// The bundle covers log positions strictly below this.
        until: u64,
    },
}

/// The first posting of a statement (by its author key and id) to the
/// record room.
#[derive(Debug, Clone, Copy)]
struct Posted {
    seq: u64,
    hash: Digest,
    counted: bool,
}

/// The postings of a statement (by its author key and id) outside the
/// record room: the first seq and bytes, and the first posting per room.
#[derive(Debug, Clone)]
struct Said {
    first: u64,
    hash: Digest,
    /// (room, seq, counted), one per room.
    rooms: Vec<(RoomId, u64, bool)>,
}

/// A statement's key for rule 11: its author key and its id.
type PostKey = (KeyId, StatementId);

/// A statement's signature verified ahead of replay, with the key it was
/// verified with ([`Replay::apply_all`]).
type Ahead = Option<(PublicKey, Result<VerifiedStatement, VerifyError>)>;

/// How many statements [`Replay::apply_all`] verifies ahead at a time: the
/// verified copies it holds at once.
const PREVERIFY_WINDOW: usize = 4096;

/// Replays one talks' record.
#[derive(Debug, Clone)]
pub struct Replay {
    talks: TalksId,
    roster: Option<(StatementRef, Roster)>,
    /// The roster's record room.
    record: Option<RoomId>,
    ground_rules: Option<(StatementRef, GroundRules)>,
    accepted: BTreeSet<PartyId>,
    phase: Phase,
    keys: HashMap<KeyId, KeyState>,
    /// Every party an identity or device key in `keys` speaks for, by its
    /// principal (keys are never removed, so neither are these).
    principal_parties: HashMap<PrincipalId, BTreeSet<PartyId>>,
    /// The identity keys in `keys`, by their principal.
    identities: HashMap<PrincipalId, Vec<KeyId>>,
    last_seq: Option<u64>,
    /// Rule 11 in the record room: one entry per statement posted there
    /// whose signature verified (bounded by the log).
    posted: HashMap<PostKey, Posted>,
    /// Rule 11 in the other rooms.
    said: HashMap<PostKey, Said>,
    equivocations: Vec<Equivocation>,
    /// Each party's latest consent, per plenary room.
    consents: BTreeMap<(RoomId, PartyId), ConsentWindow>,
    commit_failures: Vec<CommitFailureRecord>,
    history_shared: Vec<HistoryShare>,
    authority_passes: Vec<AuthorityPass>,
}

/// Whether a payload is a formal act, counted only in the record room;
/// messages, conveyances and receipts are what people say in the others.
fn is_formal(payload: &Payload) -> bool {
    !matches!(
        payload,
        Payload::Message(_) | Payload::Conveyance(_) | Payload::Receipt(_)
    )
}

/// The roster's record room (the structure check makes it exactly one).
fn record_room(roster: &Roster) -> Option<RoomId> {
    roster
        .rooms
        .iter()
        .find(|r| r.purpose == RoomPurpose::Record)
        .map(|r| r.room)
}

/// The purpose of a room the roster declares.
fn purpose_of(roster: &Roster, room: RoomId) -> Option<RoomPurpose> {
    roster
        .rooms
        .iter()
        .find(|r| r.room == room)
        .map(|r| r.purpose)
}

/// Rule 13: the ground rules allow sealed letters between the two
/// delegations of every letter room the roster declares.
fn check_letters(roster: &Roster, rules: &GroundRules) -> Result<(), Rejected> {
    for decl in roster
        .rooms
        .iter()
        .filter(|r| r.purpose == RoomPurpose::Letter)
    {
        let parties = roster.room_parties(decl.room).unwrap_or_default();
        let allowed = match parties.as_slice() {
            [a, b] => {
                rules.sealed_letters.contains(&(*a, *b)) || rules.sealed_letters.contains(&(*b, *a))
            }
            _ => false,
        };
        if !allowed {
            return Err(Rejected::LettersNotAllowed { room: decl.room });
        }
    }
    Ok(())
}

impl Replay {
    /// Replay of `talks`, from the start of its log.
    pub fn new(talks: TalksId) -> Self {
        Self {
            talks,
            roster: None,
            record: None,
            ground_rules: None,
            accepted: BTreeSet::new(),
            phase: Phase::Open,
            keys: HashMap::new(),
            principal_parties: HashMap::new(),
            identities: HashMap::new(),
            last_seq: None,
            posted: HashMap::new(),
            said: HashMap::new(),
            equivocations: Vec::new(),
            consents: BTreeMap::new(),
            commit_failures: Vec::new(),
            history_shared: Vec::new(),
            authority_passes: Vec::new(),
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

    /// The roster's record room, once the roster is accepted: the one room
    /// whose statements make the talks' state (rule 10).
    pub fn record_room(&self) -> Option<RoomId> {
        self.record
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

    /// Every equivocation replay met (rule 11), in log order of the later
    /// statement: evidence against the author key.
    pub fn equivocations(&self) -> &[Equivocation] {
        &self.equivocations
    }

    /// Every commit failure the record keeps (rule 14), in log order.
    pub fn commit_failures(&self) -> &[CommitFailureRecord] {
        &self.commit_failures
    }

    /// Every history share the record keeps (rule 15), in log order.
    pub fn history_shared(&self) -> &[HistoryShare] {
        &self.history_shared
    }

    /// Every talks-authority pass the record keeps (rule 16), in log order.
    pub fn authority_passes(&self) -> &[AuthorityPass] {
        &self.authority_passes
    }

    /// The talks authority of `party` as of the last replayed statement:
    /// its roster key, or the new key of its latest accepted pass; `None`
    /// when it was revoked (or before the roster).
    pub fn talks_authority(&self, party: PartyId) -> Option<&KeyState> {
        self.keys.values().find(|k| {
            k.role == (KeyRole::TalksAuthority { party })
                && k.revoked_at.is_none()
                && k.passed_at.is_none()
        })
    }

    /// Each party's latest consent to a joint session in `room`, by party
    /// id (rule 12).
    pub fn session_consents(&self, room: RoomId) -> Vec<(PartyId, ConsentWindow)> {
        self.consents
            .range((room, PartyId([0; 16]))..=(room, PartyId([0xff; 16])))
            .map(|((_, party), w)| (*party, *w))
            .collect()
    }

    /// The joint session in the plenary `room` open at `now_ms` (Unix ms),
    /// as `(opens, closes)`: the intersection of the latest consent of
    /// every party with a member in the room, if it covers `now_ms`
    /// (`opens <= now_ms < closes`) and the talks are open (rule 12).
    pub fn joint_session(&self, room: RoomId, now_ms: u64) -> Option<(u64, u64)> {
        if self.phase != Phase::Open {
            return None;
        }
        let roster = self.roster()?;
        if purpose_of(roster, room)? != RoomPurpose::Plenary {
            return None;
        }
        let parties = roster.room_parties(room)?;
        if parties.is_empty() {
            return None;
        }
        let (mut opens, mut closes) = (0, u64::MAX);
        for party in parties {
            let w = self.consents.get(&(room, party))?;
            opens = opens.max(w.opens);
            closes = closes.min(w.closes);
        }
        (opens <= now_ms && now_ms < closes).then_some((opens, closes))
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
        let result = self.apply_inner(entry, None);
        self.last_seq = Some(entry.seq);
        result
    }

    /// Replays `entries`, the next statements of the log in order: the same
    /// verdicts, in the same order, and the same state as [`Replay::apply`]
    /// on each in turn, with their signatures verified ahead on up to
    /// `threads` threads (scoped, joined before it returns; one thread
    /// spawns none).
    ///
    /// Ahead of replay, each statement's signature is verified
    /// ([`SignedStatement::verify_batch`]: one batch per thread and window,
    /// its coefficients from a generator seeded from `rng`; a failed batch
    /// split in halves, and a signature no batch proved good checked on its
    /// own) with the key its author id names:
    /// a key replay knows, or one a statement of the same window introduces
    /// (a roster, member or device certificate, an authority pass). Replay
    /// then judges each statement as [`Replay::apply`] does and uses that
    /// verification only when the key it finds for the author at that seq
    /// is the very key verified with; otherwise it verifies again. A
    /// signature is a function of statement, talks and key, so no verdict
    /// can differ; statements replay would refuse before their signature
    /// are verified for nothing.
    pub fn apply_all(
        &mut self,
        entries: &[LoggedStatement<'_>],
        threads: NonZeroUsize,
        rng: &mut impl CryptoRngCore,
    ) -> Vec<Result<Accepted, Rejected>> {
        let mut verdicts = Vec::with_capacity(entries.len());
        for window in entries.chunks(PREVERIFY_WINDOW) {
            let mut ahead = self.verify_ahead(window, threads, rng).into_iter();
            for entry in window {
                let pre = ahead.next().flatten();
                if let Some(last) = self.last_seq
                    && entry.seq <= last
                {
                    verdicts.push(Err(Rejected::OutOfOrder {
                        seq: entry.seq,
                        last,
                    }));
                    continue;
                }
                verdicts.push(self.apply_inner(*entry, pre));
                self.last_seq = Some(entry.seq);
            }
        }
        verdicts
    }

    /// The signatures of `window` verified on up to `threads` threads, each
    /// with the key its author id names (see [`Replay::apply_all`]), in
    /// order; `None` where no key is known yet or for the roster (verified
    /// with its certifications by [`VerifiedRoster::verify`]).
    fn verify_ahead(
        &self,
        window: &[LoggedStatement<'_>],
        threads: NonZeroUsize,
        rng: &mut impl CryptoRngCore,
    ) -> Vec<Ahead> {
        // Keys introduced by the window's own statements, by id.
        let mut introduced: HashMap<KeyId, PublicKey> = HashMap::new();
        let mut introduce = |k: &PublicKey| {
            introduced.insert(k.id(), *k);
        };
        for entry in window {
            match &entry.statement.unverified().payload {
                Payload::Roster(r) => {
                    for p in &r.parties {
                        introduce(&p.talks_authority_key);
                    }
                    for m in &r.members {
                        introduce(&m.identity_key);
                        m.devices.iter().for_each(&mut introduce);
                    }
                }
                Payload::MemberCert(c) => introduce(&c.identity_key),
                Payload::DeviceCert(c) => introduce(&c.device_key),
                Payload::AuthorityPassed(p) => introduce(&p.new_key),
                _ => {}
            }
        }
        let talks = self.talks;
        let jobs: Vec<Option<(&SignedStatement, PublicKey)>> = window
            .iter()
            .map(|entry| {
                let unverified = entry.statement.unverified();
                if matches!(unverified.payload, Payload::Roster(_)) {
                    return None;
                }
                let key = self
                    .keys
                    .get(&unverified.author)
                    .map(|k| k.key)
                    .or_else(|| introduced.get(&unverified.author).copied())?;
                Some((entry.statement, key))
            })
            .collect();
        // Each thread batch-verifies its share with coefficients from its
        // own generator, seeded from `rng`.
        let verify = |jobs: &[Option<(&SignedStatement, PublicKey)>], seed: [u8; 32]| {
            let known: Vec<(&SignedStatement, PublicKey)> =
                jobs.iter().flatten().copied().collect();
            let mut rng = ChaCha20Rng::from_seed(seed);
            let mut verdicts = SignedStatement::verify_batch(talks, &known, &mut rng).into_iter();
            jobs.iter()
                .map(|job| {
                    let (_, key) = (*job)?;
                    Some((key, verdicts.next()?))
                })
                .collect::<Vec<Ahead>>()
        };
        let mut seed = || {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            seed
        };
        let per_thread = jobs.len().div_ceil(threads.get()).max(1);
        if threads.get() == 1 || jobs.len() <= per_thread {
            return verify(&jobs, seed());
        }
        std::thread::scope(|scope| {
            let mut chunks = jobs.chunks(per_thread);
            let first = chunks.next().unwrap_or_default();
            let others: Vec<_> = chunks
                .map(|chunk| {
                    let seed = seed();
                    (chunk.len(), scope.spawn(move || verify(chunk, seed)))
                })
                .collect();
            let mut out = verify(first, seed());
            for (len, handle) in others {
                match handle.join() {
                    Ok(results) => out.extend(results),
                    // A thread that did not finish leaves its statements to
                    // be verified in turn by replay.
                    Err(_) => out.extend(std::iter::repeat_with(|| None).take(len)),
                }
            }
            out
        })
    }

    /// `pre`: the statement's signature verified ahead, with the key it was
    /// verified with ([`Replay::apply_all`]).
    fn apply_inner(
        &mut self,
        entry: LoggedStatement<'_>,
        pre: Ahead,
    ) -> Result<Accepted, Rejected> {
        let Some(record) = self.record else {
            return self.apply_roster(entry);
        };
        let (author_key, author_role) = self.author_at(entry)?;
        let verified = match pre {
            Some((key, verified)) if key == author_key => verified?,
            _ => entry.statement.verify(self.talks, &author_key)?,
        };
        let in_record = entry.room == record;
        let hash = entry.statement.hash();
        if let Some(copy) = self.check_repeat(entry, in_record, hash)? {
            return Ok(copy);
        }
        let result = self.judge(entry, in_record, &verified, author_role);
        self.remember(entry, in_record, hash, result.is_ok());
        result
    }

    /// The author's key and role, if it may sign a statement at this seq
    /// (rule 6): certified, not revoked before it, not expired by node
    /// time, and not a device key.
    fn author_at(&self, entry: LoggedStatement<'_>) -> Result<(PublicKey, KeyRole), Rejected> {
        let author = self
            .keys
            .get(&entry.statement.unverified().author)
            .ok_or(Rejected::UnknownKey(entry.seq))?;
        if let Some(revoked_at) = author.revoked_at {
            // The revocation itself is at `revoked_at`; everything after it is refused.
            if entry.seq > revoked_at {
                return Err(Rejected::Revoked { revoked_at });
            }
        }
        if let Some(passed_at) = author.passed_at
            && entry.seq > passed_at
        {
            return Err(Rejected::AuthorityRetired { passed_at });
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
        Ok((author.key, author.role.clone()))
    }

    /// Rule 11, before the statement is judged: `Some` verdict for a copy,
    /// an error for an equivocation or a copy of a rejected statement,
    /// `None` for a first posting. In the record room only the record room
    /// decides; an equivocation against an earlier posting elsewhere is
    /// kept as evidence without changing the verdict.
    fn check_repeat(
        &mut self,
        entry: LoggedStatement<'_>,
        in_record: bool,
        hash: Digest,
    ) -> Result<Option<Accepted>, Rejected> {
        let unverified = entry.statement.unverified();
        let key = (unverified.author, unverified.id);
        let copy = |first: u64, counted: bool| {
            if counted {
                Ok(Some(Accepted::Copy { first }))
            } else {
                Err(Rejected::CopyOfRejected { first })
            }
        };
        let posted = self.posted.get(&key).copied();
        if in_record {
            if let Some(p) = posted {
                if p.hash == hash {
                    return copy(p.seq, p.counted);
                }
                return Err(self.equivocation(p.seq, entry));
            }
            if let Some(first) = self
                .said
                .get(&key)
                .filter(|s| s.hash != hash)
                .map(|s| s.first)
            {
                // Evidence only: the record room's verdict must not depend
                // on rooms not every party sees.
                let _ = self.equivocation(first, entry);
            }
            return Ok(None);
        }
        if let Some(p) = posted.filter(|p| p.hash != hash) {
            return Err(self.equivocation(p.seq, entry));
        }
        let Some(said) = self.said.get(&key) else {
            return Ok(None);
        };
        if said.hash != hash {
            let first = said.first;
            return Err(self.equivocation(first, entry));
        }
        match said.rooms.iter().find(|(room, _, _)| *room == entry.room) {
            Some(&(_, first, counted)) => copy(first, counted),
            None => Ok(None),
        }
    }

    /// Keeps the evidence of an equivocation with the statement at `first`,
    /// and returns the rejection.
    fn equivocation(&mut self, first: u64, entry: LoggedStatement<'_>) -> Rejected {
        let unverified = entry.statement.unverified();
        self.equivocations.push(Equivocation {
            first,
            later: entry.seq,
            statement: unverified.id,
            author: unverified.author,
        });
        Rejected::Equivocation {
            first,
            statement: unverified.id,
        }
    }

    /// Rule 11, after the statement was judged: its first posting to this room.
    /// `hash`: the statement's ([`SignedStatement::hash`]).
    fn remember(
        &mut self,
        entry: LoggedStatement<'_>,
        in_record: bool,
        hash: Digest,
        counted: bool,
    ) {
        let unverified = entry.statement.unverified();
        let key = (unverified.author, unverified.id);
        if in_record {
            self.posted.entry(key).or_insert(Posted {
                seq: entry.seq,
                hash,
                counted,
            });
            return;
        }
        let said = self.said.entry(key).or_insert_with(|| Said {
            first: entry.seq,
            hash,
            rooms: Vec::new(),
        });
        if !said.rooms.iter().any(|(room, _, _)| *room == entry.room) {
            said.rooms.push((entry.room, entry.seq, counted));
        }
    }

    /// Judges a statement whose author key and signature verified, posted
    /// for the first time to its room.
    fn judge(
        &mut self,
        entry: LoggedStatement<'_>,
        in_record: bool,
        verified: &VerifiedStatement,
        author_role: KeyRole,
    ) -> Result<Accepted, Rejected> {
        let Some((_, roster)) = &self.roster else {
            return Err(Rejected::BeforeRoster);
        };
        let statement = verified.statement();
        if let Payload::Roster(_) = statement.payload {
            return Err(Rejected::SecondRoster);
        }
        if statement.acting_for != author_role.party() {
            return Err(Rejected::NotEntitled(
                "the author acts for a party not its own",
            ));
        }
        let room_parties = roster
            .room_parties(entry.room)
            .ok_or(Rejected::UnknownRoom)?;
        verified.check_room(entry.room, &room_parties)?;
        let statement_type = statement.payload.statement_type();
        match (in_record, is_formal(&statement.payload)) {
            (true, false) => {
                return Err(Rejected::MessageInRecordRoom {
                    statement: statement_type,
                });
            }
            (false, true) => {
                return Err(Rejected::NotInRecordRoom {
                    statement: statement_type,
                });
            }
            _ => {}
        }
        self.check_phase(&statement.payload)?;
        if !in_record {
            // Rule 10: what people say, verified, with no effect on state.
            if !room_parties.contains(&statement.acting_for) {
                return Err(Rejected::NotEntitled(
                    "the author's party has no member in the room",
                ));
            }
            // Only a mediator whose role permits it conveys, or says where
            // it conveyed something.
            let conveys = matches!(statement.payload, Payload::Conveyance(_))
                || matches!(
                    &statement.payload,
                    Payload::Receipt(r) if r.kind == backchannel_statement::ReceiptKind::ConveyedTo
                );
            let may_convey = matches!(
                &author_role,
                KeyRole::Identity { role, .. } if role.permits(Act::Convey)
            ) && roster.party_kind(statement.acting_for)
                == Some(PartyKind::Mediator);
            if conveys && !may_convey {
                return Err(Rejected::NotEntitled(
                    "only a mediator whose role permits it conveys",
                ));
            }
            return Ok(Accepted::Said);
        }

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
                // Any identity or device key of the principal speaking
                // for another party (indexed by principal as certified).
                let taken = roster.parties.iter().any(|p| p.party.0 == cert.principal.0)
                    || self
                        .principal_parties
                        .get(&cert.principal)
                        .is_some_and(|parties| parties.iter().any(|p| *p != cert.party));
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
                    if let Some(t) = revoke.lost_at {
                        state.lost_at = Some(state.lost_at.map_or(t, |was| was.min(t)));
                    }
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
                check_letters(roster, rules)?;
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
            Payload::SessionConsent(consent) => {
                let party = statement.acting_for;
                self.apply_consent(consent, &author_role, party, entry.seq)
            }
            Payload::CommitFailure(failure) => {
                self.apply_commit_failure(failure, &author_role, entry.seq)
            }
            Payload::HistoryShared(share) => {
                self.apply_history_shared(share, &author_role, entry.seq, statement.id)
            }
            Payload::AuthorityPassed(pass) => self.apply_authority_passed(
                pass,
                &author_role,
                statement.author,
                entry.seq,
                statement.id,
            ),
            // Rule 10 sent these away above; kept exhaustive so a new
            // payload must be placed.
            Payload::Message(_) | Payload::Conveyance(_) | Payload::Receipt(_) => {
                Err(Rejected::MessageInRecordRoom {
                    statement: statement_type,
                })
            }
        }
    }

    /// Rule 9: what the phase lets through, before the payload's own rule.
    /// Lifecycle changes are judged by rule 8 (`apply_lifecycle`).
    fn check_phase(&self, payload: &Payload) -> Result<(), Rejected> {
        let allowed = match (self.phase, payload) {
            (_, Payload::Lifecycle(_)) => true,
            (Phase::Closed { .. }, _) => false,
            // About keys and records, like revocations (rules 14 to 16).
            (
                _,
                Payload::CommitFailure(_) | Payload::HistoryShared(_) | Payload::AuthorityPassed(_),
            ) => true,
            (Phase::Open, _) => true,
            (Phase::Suspended { .. }, p) => matches!(
                p,
                Payload::MemberCert(_)
                    | Payload::DeviceCert(_)
                    | Payload::Revoke(_)
                    | Payload::AccessListChange(_)
            ),
            (Phase::Concluded { .. }, p) => matches!(p, Payload::Revoke(_)),
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

    /// Rule 12: a party's consent to a joint session in a plenary room it
    /// has a member in, by its talks authority or a member who may accept
    /// the talks for it. Replaces the party's earlier consent for the room.
    fn apply_consent(
        &mut self,
        consent: &SessionConsent,
        author_role: &KeyRole,
        party: PartyId,
        seq: u64,
    ) -> Result<Accepted, Rejected> {
        let entitled = match author_role {
            KeyRole::TalksAuthority { .. } => true,
            KeyRole::Identity { role, .. } => role.permits(Act::AcceptTalks),
            KeyRole::Device { .. } => false,
        };
        if !entitled {
            return Err(Rejected::NotEntitled(
                "a party consents to a joint session through its talks authority or a member who may accept the talks",
            ));
        }
        let Some((_, roster)) = &self.roster else {
            return Err(Rejected::BeforeRoster);
        };
        match purpose_of(roster, consent.room) {
            None => {
                return Err(Rejected::SessionConsent(
                    "it names a room the roster does not declare",
                ));
            }
            Some(RoomPurpose::Plenary) => {}
            Some(_) => {
                return Err(Rejected::SessionConsent(
                    "joint sessions are held in plenary rooms only",
                ));
            }
        }
        let in_room = roster
            .room_parties(consent.room)
            .is_some_and(|parties| parties.contains(&party));
        if !in_room {
            return Err(Rejected::SessionConsent(
                "the consenting party has no member in the room",
            ));
        }
        if consent.closes <= consent.opens {
            return Err(Rejected::SessionConsent(
                "the window must close after it opens",
            ));
        }
        self.consents.insert(
            (consent.room, party),
            ConsentWindow {
                opens: consent.opens,
                closes: consent.closes,
                at: seq,
            },
        );
        Ok(Accepted::SessionConsent {
            room: consent.room,
            party,
        })
    }

    /// Rule 14: a member's identity key states that it could not process a
    /// commit sequenced earlier in a room the roster declares.
    fn apply_commit_failure(
        &mut self,
        failure: &CommitFailure,
        author_role: &KeyRole,
        seq: u64,
    ) -> Result<Accepted, Rejected> {
        let KeyRole::Identity { principal, .. } = *author_role else {
            return Err(Rejected::NotEntitled(
                "a commit failure is stated by the member's identity key",
            ));
        };
        let Some((_, roster)) = &self.roster else {
            return Err(Rejected::BeforeRoster);
        };
        if purpose_of(roster, failure.room).is_none() {
            return Err(Rejected::CommitFailure(
                "it names a room the roster does not declare",
            ));
        }
        if failure.seq >= seq {
            return Err(Rejected::CommitFailure(
                "it names a commit not sequenced before it",
            ));
        }
        self.commit_failures.push(CommitFailureRecord {
            room: failure.room,
            seq: failure.seq,
            epoch: failure.epoch,
            by: principal,
            at: seq,
        });
        Ok(Accepted::CommitFailure {
            room: failure.room,
            seq: failure.seq,
        })
    }

    /// Rule 15: a member's identity key, whose role permits handing over
    /// history, shares rooms the roster declares (no private notes) up to
    /// its own seq with a member of its party.
    fn apply_history_shared(
        &mut self,
        share: &HistoryShared,
        author_role: &KeyRole,
        seq: u64,
        statement: StatementId,
    ) -> Result<Accepted, Rejected> {
        let KeyRole::Identity {
            principal: by,
            party,
            role,
            ..
        } = *author_role
        else {
            return Err(Rejected::NotEntitled(
                "history is handed over by a member's identity key, not a talks authority",
            ));
        };
        if !role.permits(Act::HandOverHistory) {
            return Err(Rejected::NotEntitled(
                "the member's role does not permit handing over history",
            ));
        }
        let Some((_, roster)) = &self.roster else {
            return Err(Rejected::BeforeRoster);
        };
        // Every key replay knows was certified at or before this seq: the
        // roster's members, and those of valid member certificates since;
        // the successor must hold one not revoked.
        let member_of_party = self
            .identities
            .get(&share.to)
            .into_iter()
            .flatten()
            .filter_map(|id| self.keys.get(id))
            .any(|k| {
                k.revoked_at.is_none()
                    && matches!(
                        k.role,
                        KeyRole::Identity { principal, party: p, .. } if principal == share.to && p == party
                    )
            });
        if !member_of_party {
            return Err(Rejected::HistoryShared(
                "it is shared with a principal that is not a member of the author's party",
            ));
        }
        for &room in share.rooms() {
            match purpose_of(roster, room) {
                None => {
                    return Err(Rejected::HistoryRoom {
                        room,
                        reason: "the roster does not declare it",
                    });
                }
                Some(RoomPurpose::PrivateNotes) => {
                    return Err(Rejected::HistoryRoom {
                        room,
                        reason: "private notes are never handed over",
                    });
                }
                Some(_) => {}
            }
        }
        if share.until() > seq {
            return Err(Rejected::HistoryShared(
                "it covers log positions after its own seq",
            ));
        }
        self.history_shared.push(HistoryShare {
            seq,
            statement,
            by,
            party,
            to: share.to,
            rooms: share.rooms().to_vec(),
            until: share.until(),
            bundle: share.bundle,
        });
        Ok(Accepted::HistoryShared {
            by,
            to: share.to,
            until: share.until(),
        })
    }

    /// Rule 16: a party's talks authority passes from its current key to a
    /// new one, handed over by the old holder or re-appointed by a mediator
    /// team with the party's long-term authority and the endorsements the
    /// ground rules' change rule names.
    fn apply_authority_passed(
        &mut self,
        pass: &AuthorityPassed,
        author_role: &KeyRole,
        author: KeyId,
        seq: u64,
        statement: StatementId,
    ) -> Result<Accepted, Rejected> {
        let Some((_, roster)) = &self.roster else {
            return Err(Rejected::BeforeRoster);
        };
        let KeyRole::TalksAuthority {
            party: author_party,
        } = *author_role
        else {
            return Err(Rejected::NotEntitled(
                "a talks authority passes only by a talks authority's statement",
            ));
        };
        let entry = roster
            .parties
            .iter()
            .find(|p| p.party == pass.party)
            .ok_or(Rejected::AuthorityPassed(
                "it names a party the roster does not declare",
            ))?;
        // `author_at` already refused a retired or revoked author; the old
        // key must be the party's talks authority valid at this seq, never
        // passed on (so its latest). Handed over, it must also be unrevoked
        // (it signs the statement); re-appointed, a revoked one is passed
        // on too: a party that revoked its lost talks authority is still
        // re-appointed.
        let current =
            |k: &KeyState| k.valid_from <= seq && k.revoked_at.is_none() && k.passed_at.is_none();
        let latest = |k: &KeyState| k.valid_from <= seq && k.passed_at.is_none();
        let old_fits = self.keys.get(&pass.old_key).is_some_and(|k| {
            k.role == (KeyRole::TalksAuthority { party: pass.party })
                && match pass.how() {
                    PassedHow::HandedOver => current(k),
                    PassedHow::Reappointed => latest(k),
                }
        });
        if !old_fits {
            return Err(Rejected::AuthorityPassed(
                "the old key is not the party's talks authority at this seq",
            ));
        }
        match pass.how() {
            PassedHow::HandedOver => {
                if author != pass.old_key {
                    return Err(Rejected::NotEntitled(
                        "a handed-over talks authority is passed by the old key itself",
                    ));
                }
            }
            PassedHow::Reappointed => {
                if entry.kind == PartyKind::Mediator {
                    return Err(Rejected::AuthorityPassed(
                        "a mediator team's talks authority is not re-appointed; mediator teams change only with a new roster",
                    ));
                }
                if author_party == pass.party
                    || roster.party_kind(author_party) != Some(PartyKind::Mediator)
                {
                    return Err(Rejected::NotEntitled(
                        "a talks authority is re-appointed by another mediator team's talks authority",
                    ));
                }
            }
        }
        // A key has one holder and one role for the life of the talks.
        let new_id = pass.new_key.id();
        if self.keys.contains_key(&new_id)
            || roster
                .parties
                .iter()
                .any(|p| p.authority_key == pass.new_key)
        {
            return Err(Rejected::AuthorityPassed(
                "the new key is already known; a talks authority passes to a new key",
            ));
        }
        pass.verify(self.talks, &entry.authority_key)
            .map_err(|e| match e {
                backchannel_statement::AuthorityError::BadCertification => {
                    Rejected::AuthorityPassed(
                        "the party's long-term authority certification does not verify",
                    )
                }
                _ => Rejected::AuthorityPassed(
                    "the new key's signature over the transfer does not verify",
                ),
            })?;
        if pass.how() == PassedHow::Reappointed {
            let mut endorsed = BTreeSet::new();
            for e in pass.endorsements() {
                let state = self.keys.get(&e.key).ok_or(Rejected::Endorsement {
                    key: e.key,
                    reason: "replay does not know the key",
                })?;
                let KeyRole::TalksAuthority { party } = state.role else {
                    return Err(Rejected::Endorsement {
                        key: e.key,
                        reason: "it is not a talks authority",
                    });
                };
                if !current(state) {
                    return Err(Rejected::Endorsement {
                        key: e.key,
                        reason: "it is not its party's talks authority at this seq",
                    });
                }
                if party == pass.party || party == author_party {
                    return Err(Rejected::Endorsement {
                        key: e.key,
                        reason: "it speaks for the party itself or the re-appointing mediator team",
                    });
                }
                pass.verify_by(self.talks, &state.key, &e.signature)
                    .map_err(|_| Rejected::Endorsement {
                        key: e.key,
                        reason: "its signature over the transfer does not verify",
                    })?;
                endorsed.insert(party);
            }
            // The ground rules' change rule counts once every party has
            // accepted them; until then, all parties.
            let accepted_rules = self
                .ground_rules
                .as_ref()
                .filter(|_| self.awaiting_acceptance().is_empty());
            let all_parties =
                accepted_rules.is_none_or(|(_, g)| g.change_rule == ChangeRule::AllParties);
            if all_parties
                && let Some(p) = roster.parties.iter().find(|p| {
                    p.party != pass.party && p.party != author_party && !endorsed.contains(&p.party)
                })
            {
                return Err(Rejected::MissingEndorsement { party: p.party });
            }
        }
        self.keys.insert(
            new_id,
            KeyState {
                key: pass.new_key,
                role: KeyRole::TalksAuthority { party: pass.party },
                valid_from: seq,
                revoked_at: None,
                lost_at: None,
                passed_at: None,
            },
        );
        if let Some(old) = self.keys.get_mut(&pass.old_key) {
            old.passed_at = Some(seq);
        }
        self.authority_passes.push(AuthorityPass {
            seq,
            statement,
            party: pass.party,
            old: pass.old_key,
            new: pass.new_key,
            how: pass.how(),
        });
        Ok(Accepted::AuthorityPassed {
            party: pass.party,
            old: pass.old_key,
            new: new_id,
        })
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
        if let KeyRole::Identity {
            principal, party, ..
        }
        | KeyRole::Device {
            principal, party, ..
        } = role
        {
            self.principal_parties
                .entry(principal)
                .or_default()
                .insert(party);
        }
        if let KeyRole::Identity { principal, .. } = role {
            self.identities.entry(principal).or_default().push(id);
        }
        self.keys.insert(
            id,
            KeyState {
                key,
                role,
                valid_from: seq,
                revoked_at: None,
                lost_at: None,
                passed_at: None,
            },
        );
        Ok(Accepted::Certified(id))
    }

    /// Rule 1 (and 10): the roster, the first statement, posted to the room
    /// it declares as the record room.
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
        let record = record_room(&roster).ok_or(Rejected::Roster(
            "the roster declares no record room".into(),
        ))?;
        if entry.room != record {
            return Err(Rejected::NotInRecordRoom {
                statement: StatementType::Roster,
            });
        }
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
        self.record = Some(record);
        self.remember(entry, true, entry.statement.hash(), true);
        Ok(Accepted::Roster)
    }
}
