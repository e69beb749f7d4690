//! What people say in rooms, judged against the roster: release,
//! conveyance and receipts.
//!
//! - **Release.** Where the roster has a signing rule for
//!   [`Act::ReleaseMessage`] for a party, that party's messages leave the
//!   delegation only by release: a member drafts in the party's internal
//!   room, and a member the rule names (whose role permits the act) posts
//!   the released message elsewhere, naming the draft and its drafter.
//!   [`check_outgoing`] is what a client asks before posting;
//!   [`release_state`] is what a recipient shows.
//! - **Conveyance.** Only a mediator member whose role permits
//!   [`Act::Convey`] conveys. A verbatim conveyance carries the original
//!   signed statement with its evidence; [`check_verbatim`] is the
//!   mediator's check before conveying (marking and audience), and
//!   [`verify_verbatim`] is the recipient's: the header logged at the
//!   original's seq commits to those bytes, the leaf is in the recipient's
//!   own verified tree, the author's key was valid at that seq, the
//!   signature holds, and marking and audience admit the destination.
//!
//! No IO: the recipient's verified roots come in as a function.

use backchannel_codec::{PartyId, PrincipalId, RoomId, TalksId};
use backchannel_crypto::{Digest, sha256};
use backchannel_statement::header::SignedHeader;
use backchannel_statement::roster::{RoomPurpose, Roster};
use backchannel_statement::{
    Act, Audience, Commitment, Conveyance, Message, PartyKind, Salt, SignedStatement, Verbatim,
    VerifiedStatement,
};
use backchannel_tlog::{InclusionProof, LeafData};
use thiserror::Error;

use crate::replay::{KeyRole, Replay};

/// Why a client refuses to post a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PostError {
    /// The record room carries formal statements only.
    #[error(
        "the record room carries formal signed statements only; post messages to another of your rooms"
    )]
    RecordRoom,
    /// The room is not declared, or the author is not in it.
    #[error("you are not a member of that room")]
    NotInRoom,
    /// The party's messages leave the delegation by release only.
    #[error(
        "your party's messages leave the delegation by release: draft it in your party's internal room, and a member who may release it posts it (`backchannel release`)"
    )]
    NeedsRelease,
    /// The author may not release messages for its party.
    #[error("the roster does not let you release your party's messages")]
    NotReleaser,
    /// A release must leave the delegation; a draft stays inside it.
    #[error("a released message goes to a room outside your party's internal rooms")]
    ReleaseInside,
    /// A letter room the ground rules do not open.
    #[error("the ground rules do not allow sealed letters between these parties")]
    LetterNotAllowed,
}

/// The party's release rule: who may release its messages, if the roster
/// requires release.
pub fn release_signers(roster: &Roster, party: PartyId) -> Option<&[PrincipalId]> {
    roster
        .rules
        .iter()
        .find(|r| r.party == party && r.act == Act::ReleaseMessage)
        .map(|r| r.signers.as_slice())
}

/// Whether `room` stays inside `party`'s delegation (its internal room or
/// one of its members' private notes).
pub fn inside_delegation(roster: &Roster, party: PartyId, room: RoomId) -> bool {
    let Some(decl) = roster.room(room) else {
        return false;
    };
    matches!(
        decl.purpose,
        RoomPurpose::PartyInternal | RoomPurpose::PrivateNotes
    ) && roster.room_parties(room).is_some_and(|ps| ps == [party])
}

/// What a client checks before `author` (of `party`) posts `message` to
/// `room`. `in_room`: whether the access list seats the author's device
/// there (members added after the roster are seated by access-list
/// changes). `letters_allowed` tells whether the ground rules open sealed
/// letters between the two parties of a letter room.
pub fn check_outgoing(
    roster: &Roster,
    author: PrincipalId,
    party: PartyId,
    room: RoomId,
    in_room: bool,
    message: &Message,
    letters_allowed: impl Fn(PartyId, PartyId) -> bool,
) -> Result<(), PostError> {
    let decl = roster.room(room).ok_or(PostError::NotInRoom)?;
    if decl.purpose == RoomPurpose::Record {
        return Err(PostError::RecordRoom);
    }
    if !in_room {
        return Err(PostError::NotInRoom);
    }
    if decl.purpose == RoomPurpose::Letter {
        let ps = roster.room_parties(room).unwrap_or_default();
        if ps.len() != 2 || !letters_allowed(ps[0], ps[1]) {
            return Err(PostError::LetterNotAllowed);
        }
    }
    let inside = inside_delegation(roster, party, room);
    match (release_signers(roster, party), &message.release) {
        (_, Some(_)) if inside => Err(PostError::ReleaseInside),
        (Some(signers), Some(_)) => {
            if signers.binary_search(&author).is_ok() {
                Ok(())
            } else {
                Err(PostError::NotReleaser)
            }
        }
        (Some(_), None) if !inside && roster.party_kind(party) == Some(PartyKind::Party) => {
            Err(PostError::NeedsRelease)
        }
        (None, Some(_)) => Err(PostError::NotReleaser),
        _ => Ok(()),
    }
}

/// How a recipient should show a message's release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseState {
    /// Inside the delegation (a draft, or internal talk).
    Internal,
    /// Released by the signer from a draft by `drafter`.
    Released {
        /// Who drafted it.
        drafter: PrincipalId,
    },
    /// The party's messages need no release.
    NotRequired,
    /// The roster requires release and this message has none, or its
    /// signer may not release: shown flagged, never as the party's
    /// released position.
    Unreleased,
}

/// The release state of `message`, signed by `author` of `party`, in `room`.
pub fn release_state(
    roster: &Roster,
    author: PrincipalId,
    party: PartyId,
    room: RoomId,
    message: &Message,
) -> ReleaseState {
    if inside_delegation(roster, party, room) {
        return ReleaseState::Internal;
    }
    // A drafter the roster lists in another party is a false claim.
    let drafter_ok = |d: PrincipalId| {
        roster
            .members
            .iter()
            .find(|m| m.principal == d)
            .is_none_or(|m| m.party == party)
    };
    match (release_signers(roster, party), &message.release) {
        (Some(signers), Some(r))
            if signers.binary_search(&author).is_ok() && drafter_ok(r.drafter) =>
        {
            ReleaseState::Released { drafter: r.drafter }
        }
        (Some(_), _) if roster.party_kind(party) == Some(PartyKind::Party) => {
            ReleaseState::Unreleased
        }
        (None, Some(_)) => ReleaseState::Unreleased,
        _ => ReleaseState::NotRequired,
    }
}

/// Why a verbatim conveyance is refused or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConveyError {
    /// The original's marking does not allow verbatim conveyance.
    #[error("its marking is {0}: it may not be conveyed verbatim")]
    Marking(&'static str),
    /// The original's audience does not admit the destination.
    #[error("its audience does not admit the destination room")]
    Audience,
    /// The conveyor is not a mediator member whose role permits conveying.
    #[error("only a mediator whose role permits it conveys")]
    NotConveyor,
    /// The destination is the record room, or not declared.
    #[error("conveyances go to declared rooms other than the record room")]
    Destination,
    /// The original is not a message.
    #[error("only a party's signed message is conveyed verbatim")]
    NotAMessage,
    /// The evidence does not hold: header, commitment, inclusion or signature.
    #[error("the evidence does not verify: {0}")]
    Evidence(&'static str),
    /// The original was not released where its party's messages need
    /// release: it is not the party's position.
    #[error("it was not released by its party (the roster requires release)")]
    Unreleased,
    /// The recipient has not verified the log at the proof's tree size.
    #[error(
        "the conveyance proves inclusion in a tree of {0} leaves, which your client has not verified yet; read again"
    )]
    Unverified(u64),
}

/// The name of a conveyance marking, as the CLI prints it.
pub fn marking_name(c: Conveyance) -> &'static str {
    match c {
        Conveyance::MediatorOnly => "mediator-only",
        Conveyance::SubstanceMayBeConveyed => "substance-may-be-conveyed",
        Conveyance::VerbatimMayBeConveyed => "verbatim-may-be-conveyed",
    }
}

/// Whether `original`'s audience admits `dest`: it names the room, or it
/// names every delegation (non-mediator party) with a member there.
pub fn audience_admits(roster: &Roster, original: &SignedStatement, dest: RoomId) -> bool {
    let audience = original.unverified().audience();
    if audience.contains(&Audience::Room(dest)) {
        return true;
    }
    let Some(parties) = roster.room_parties(dest) else {
        return false;
    };
    let delegations: Vec<&PartyId> = parties
        .iter()
        .filter(|p| roster.party_kind(**p) != Some(PartyKind::Mediator))
        .collect();
    !delegations.is_empty()
        && delegations
            .iter()
            .all(|p| audience.contains(&Audience::Party(**p)))
}

/// The mediator's check before conveying `original` verbatim to `dest`:
/// its marking and audience, and that the destination is a declared room
/// other than the record room.
pub fn check_verbatim(
    roster: &Roster,
    original: &SignedStatement,
    dest: RoomId,
) -> Result<(), ConveyError> {
    let decl = roster.room(dest).ok_or(ConveyError::Destination)?;
    if decl.purpose == RoomPurpose::Record {
        return Err(ConveyError::Destination);
    }
    let st = original.unverified();
    if !matches!(st.payload, backchannel_statement::Payload::Message(_)) {
        return Err(ConveyError::NotAMessage);
    }
    if st.markings.conveyance != Conveyance::VerbatimMayBeConveyed {
        return Err(ConveyError::Marking(marking_name(st.markings.conveyance)));
    }
    if !audience_admits(roster, original, dest) {
        return Err(ConveyError::Audience);
    }
    Ok(())
}

/// Whether `original`, by `author` of `party`, was released where it was
/// posted (or needed no release): only a party's released words travel
/// verbatim as its position.
pub fn check_released(
    roster: &Roster,
    author: PrincipalId,
    party: PartyId,
    origin_room: RoomId,
    original: &SignedStatement,
) -> Result<(), ConveyError> {
    let backchannel_statement::Payload::Message(m) = &original.unverified().payload else {
        return Err(ConveyError::NotAMessage);
    };
    match release_state(roster, author, party, origin_room, m) {
        ReleaseState::Released { .. } | ReleaseState::NotRequired => Ok(()),
        ReleaseState::Internal | ReleaseState::Unreleased => Err(ConveyError::Unreleased),
    }
}

/// Whether the key of `author` may convey: a mediator member's identity
/// key whose role permits [`Act::Convey`].
pub fn may_convey(replay: &Replay, author: &backchannel_crypto::KeyId) -> bool {
    matches!(
        replay.key(author).map(|k| &k.role),
        Some(KeyRole::Identity { role, .. }) if role.permits(Act::Convey)
    )
}

/// A verbatim conveyance that verified.
#[derive(Debug, Clone)]
pub struct VerifiedVerbatim {
    /// The original, its signature verified against its author's key as
    /// the record knew it at the original's seq.
    pub original: VerifiedStatement,
    /// The original's author, as the record knows it.
    pub author: PrincipalId,
    /// The original's room.
    pub origin_room: RoomId,
    /// The original's seq.
    pub seq: u64,
    /// The node's time for the original.
    pub node_time: u64,
}

/// The recipient's check of a verbatim conveyance into `dest`.
/// `root_at(size)` is the root of the recipient's own verified tree of
/// that size, if it has verified one.
pub fn verify_verbatim(
    talks: TalksId,
    replay: &Replay,
    v: &Verbatim,
    dest: RoomId,
    root_at: impl Fn(u64) -> Option<Digest>,
) -> Result<VerifiedVerbatim, ConveyError> {
    let roster = replay.roster().ok_or(ConveyError::Destination)?;
    let header = SignedHeader::decode(v.header())
        .map_err(|_| ConveyError::Evidence("the header does not decode"))?;
    let h = header.header();
    if h.room != v.origin_room {
        return Err(ConveyError::Evidence("the header is for another room"));
    }
    if h.talks != talks || h.kind != backchannel_statement::Kind::MlsApp {
        return Err(ConveyError::Evidence(
            "the header is not an application message of these talks",
        ));
    }
    if h.body_hash != v.body_hash {
        return Err(ConveyError::Evidence("the header names another body"));
    }
    if !Commitment::opens(&h.commitment, &Salt(v.salt), v.statement()) {
        return Err(ConveyError::Evidence(
            "the logged header does not commit to the conveyed bytes",
        ));
    }
    let leaf = LeafData {
        seq: v.seq,
        timestamp_ms: v.node_time,
        room: v.origin_room,
        header_hash: sha256(v.header()),
        body_hash: v.body_hash,
    };
    let root = root_at(v.tree_size).ok_or(ConveyError::Unverified(v.tree_size))?;
    let proof = InclusionProof::new(v.seq, v.tree_size, v.proof.clone())
        .map_err(|_| ConveyError::Evidence("the inclusion proof is malformed"))?;
    proof
        .verify(v.seq, v.tree_size, &root, &leaf.hash())
        .map_err(|_| ConveyError::Evidence("the original is not in the verified log"))?;
    let original = SignedStatement::decode(v.statement())
        .map_err(|_| ConveyError::Evidence("the original does not decode"))?;
    let st = original.unverified();
    let valid_at = |k: &crate::replay::KeyState| {
        let not_after = match k.role {
            KeyRole::Identity { not_after, .. } | KeyRole::Device { not_after, .. } => not_after,
            KeyRole::TalksAuthority { .. } => None,
        };
        k.valid_from <= v.seq
            && k.retired_at().is_none_or(|r| r >= v.seq)
            && not_after.is_none_or(|t| v.node_time <= t)
    };
    let key = replay
        .key(&st.author)
        .ok_or(ConveyError::Evidence("the original's author is unknown"))?;
    if !valid_at(key) {
        return Err(ConveyError::Evidence(
            "the original's author key was not valid at its seq",
        ));
    }
    let KeyRole::Identity {
        principal, party, ..
    } = key.role
    else {
        return Err(ConveyError::NotAMessage);
    };
    // The envelope was sent by one of the author's own devices, valid
    // then: nobody else re-posted the author's words.
    let sender = replay
        .key(&h.sender)
        .ok_or(ConveyError::Evidence("the original's sender is unknown"))?;
    if !matches!(sender.role, KeyRole::Device { principal: p, .. } if p == principal)
        || !valid_at(sender)
    {
        return Err(ConveyError::Evidence(
            "the original was not sent by a device of its author",
        ));
    }
    if st.acting_for != party {
        return Err(ConveyError::Evidence(
            "the original acts for another party than its author's",
        ));
    }
    let verified = original
        .verify(talks, &key.key)
        .map_err(|_| ConveyError::Evidence("the original's signature does not verify"))?;
    // Posted where its audience admits it, by a party of that room.
    let origin_parties = roster
        .room_parties(v.origin_room)
        .ok_or(ConveyError::Evidence("the origin room is not declared"))?;
    if !origin_parties.contains(&party)
        || verified.check_room(v.origin_room, &origin_parties).is_err()
    {
        return Err(ConveyError::Evidence(
            "the original's audience does not admit the room it was posted to",
        ));
    }
    check_verbatim(roster, &original, dest)?;
    check_released(roster, principal, party, v.origin_room, &original)?;
    Ok(VerifiedVerbatim {
        original: verified,
        author: principal,
        origin_room: v.origin_room,
        seq: v.seq,
        node_time: v.node_time,
    })
}
