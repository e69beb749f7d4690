//! The rooms a roster declares: the record room, and what the presets and
//! options add (`talks seat --preset … --track … --letters
//! --private-notes --require-release`; the demo uses the same plan).
//!
//! | option            | rooms                                                                  |
//! |-------------------|------------------------------------------------------------------------|
//! | preset proximity  | each delegation's internal room and its caucus with the mediators      |
//! | preset direct     | each delegation's internal room and one plenary of everyone            |
//! | (either preset)   | the mediators' room                                                    |
//! | --track NAME      | a track: each delegation's experts (its whole delegation if it has none yet) with the mediators' staff (all mediators if none) |
//! | --letters         | a letter room for each pair of delegations (the ground rules allow them) |
//! | --private-notes   | one private-notes room per member                                     |
//! | --require-release | a release rule per delegation: its heads and negotiators release       |
//!
//! Room ids other than the caucuses' (which the invitations fixed) are
//! derived from the talks id and what the room is, so a rerun of `talks
//! seat` declares the same ids.

use anyhow::{bail, ensure};
use backchannel_codec::{PartyId, PrincipalId, RoomId, TalksId};
use backchannel_crypto::sha256;
use backchannel_statement::roster::{MemberEntry, PartyEntry, RoomDecl, RoomPurpose, SigningRule};
use backchannel_statement::{Act, PartyKind, Role};
use clap::ValueEnum;

/// The longest track name (the room's name is "Track: " and the name, within
/// the roster's limit on names).
pub const MAX_TRACK_NAME: usize = 64;

/// A room preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Preset {
    /// Each delegation talks to the mediators in its own caucus; parties
    /// never share a room but the record.
    Proximity,
    /// The delegations meet in a plenary with the mediators.
    Direct,
}

/// What `talks seat` declares besides the record room.
#[derive(Debug, Clone, Default)]
pub struct RoomPlan {
    /// Presets, combined.
    pub presets: Vec<Preset>,
    /// Expert tracks, by name.
    pub tracks: Vec<String>,
    /// A letter room for each pair of delegations.
    pub letters: bool,
    /// A private-notes room per member.
    pub private_notes: bool,
    /// Delegations' messages leave them only by release.
    pub require_release: bool,
}

/// A room id derived from the talks and what the room is.
fn derived(talks: TalksId, purpose: RoomPurpose, parts: &[&[u8]]) -> RoomId {
    let mut b = b"backchannel/v1/room-id\0".to_vec();
    b.extend_from_slice(talks.as_bytes());
    b.push(purpose as u8);
    for p in parts {
        b.extend_from_slice(&(p.len() as u32).to_be_bytes());
        b.extend_from_slice(p);
    }
    let d = sha256(&b);
    let mut id = [0u8; 16];
    id.copy_from_slice(&d.0[..16]);
    RoomId(id)
}

/// The rooms (sorted by id) and signing rules the plan declares for these
/// parties and members. `caucus_of` names each delegation's caucus room
/// (fixed by its invitation).
pub fn declare(
    talks: TalksId,
    parties: &[PartyEntry],
    members: &[MemberEntry],
    record_room: RoomId,
    caucus_of: impl Fn(PartyId) -> Option<RoomId>,
    plan: &RoomPlan,
) -> anyhow::Result<(Vec<RoomDecl>, Vec<SigningRule>)> {
    let of = |pred: &dyn Fn(&MemberEntry) -> bool| {
        let mut v: Vec<PrincipalId> = members
            .iter()
            .filter(|m| pred(m))
            .map(|m| m.principal)
            .collect();
        v.sort();
        v
    };
    let kind = |p: PartyId| parties.iter().find(|e| e.party == p).map(|e| e.kind);
    let delegations: Vec<&PartyEntry> = parties
        .iter()
        .filter(|p| p.kind == PartyKind::Party)
        .collect();
    let mediators = of(&|m| kind(m.party) == Some(PartyKind::Mediator));
    let mediator_name = parties
        .iter()
        .find(|p| p.kind == PartyKind::Mediator)
        .map_or_else(|| "the mediators".to_owned(), |p| p.name.clone());
    let mut rooms = vec![RoomDecl {
        room: record_room,
        purpose: RoomPurpose::Record,
        name: "Record".into(),
        members: of(&|_| true),
    }];
    if !plan.presets.is_empty() && !mediators.is_empty() {
        rooms.push(RoomDecl {
            room: derived(talks, RoomPurpose::Mediators, &[]),
            purpose: RoomPurpose::Mediators,
            name: format!("Mediators: {mediator_name}"),
            members: mediators.clone(),
        });
    }
    for d in &delegations {
        let own = of(&|m| m.party == d.party);
        if !plan.presets.is_empty() {
            rooms.push(RoomDecl {
                room: derived(talks, RoomPurpose::PartyInternal, &[d.party.as_bytes()]),
                purpose: RoomPurpose::PartyInternal,
                name: format!("Internal: {}", d.name),
                members: own.clone(),
            });
        }
        if plan.presets.contains(&Preset::Proximity) {
            let Some(room) = caucus_of(d.party) else {
                bail!("party {} has no caucus room", d.party);
            };
            let mut m = own.clone();
            m.extend(&mediators);
            m.sort();
            rooms.push(RoomDecl {
                room,
                purpose: RoomPurpose::Caucus,
                name: format!("Caucus: {mediator_name} with {}", d.name),
                members: m,
            });
        }
    }
    if plan.presets.contains(&Preset::Direct) {
        rooms.push(RoomDecl {
            room: derived(talks, RoomPurpose::Plenary, &[]),
            purpose: RoomPurpose::Plenary,
            name: "Plenary".into(),
            members: of(&|m| matches!(kind(m.party), Some(PartyKind::Party | PartyKind::Mediator))),
        });
    }
    for name in &plan.tracks {
        ensure!(
            !name.is_empty() && name.len() <= MAX_TRACK_NAME && !name.contains(['\n', '\t']),
            "a track's name is 1 to {MAX_TRACK_NAME} bytes on one line"
        );
        let mut m = Vec::new();
        for d in &delegations {
            let experts = of(&|x| x.party == d.party && x.role == Role::Expert);
            m.extend(if experts.is_empty() {
                of(&|x| x.party == d.party)
            } else {
                experts
            });
        }
        let staff = of(&|x| x.role == Role::Staff);
        m.extend(if staff.is_empty() { &mediators } else { &staff });
        m.sort();
        rooms.push(RoomDecl {
            room: derived(talks, RoomPurpose::Track, &[name.as_bytes()]),
            purpose: RoomPurpose::Track,
            name: format!("Track: {name}"),
            members: m,
        });
    }
    if plan.letters {
        for (i, a) in delegations.iter().enumerate() {
            for b in &delegations[i + 1..] {
                let (x, y) = if a.party < b.party { (a, b) } else { (b, a) };
                rooms.push(RoomDecl {
                    room: derived(
                        talks,
                        RoomPurpose::Letter,
                        &[x.party.as_bytes(), y.party.as_bytes()],
                    ),
                    purpose: RoomPurpose::Letter,
                    name: format!("Letter: {} and {}", x.name, y.name),
                    members: of(&|m| m.party == x.party || m.party == y.party),
                });
            }
        }
    }
    if plan.private_notes {
        for m in members {
            rooms.push(RoomDecl {
                room: derived(talks, RoomPurpose::PrivateNotes, &[m.principal.as_bytes()]),
                purpose: RoomPurpose::PrivateNotes,
                name: format!("Private notes: {}", m.name),
                members: vec![m.principal],
            });
        }
    }
    rooms.sort_by_key(|r| r.room);
    let mut rules = Vec::new();
    if plan.require_release {
        for d in &delegations {
            let signers = of(&|m| m.party == d.party && m.role.permits(Act::ReleaseMessage));
            ensure!(
                !signers.is_empty(),
                "{} has no member who may release messages (a head or negotiator)",
                d.name
            );
            rules.push(SigningRule {
                party: d.party,
                act: Act::ReleaseMessage,
                threshold: 1,
                signers,
            });
        }
        rules.sort_by_key(|r| (r.party, r.act));
    }
    Ok((rooms, rules))
}

/// The pairs of parties the plan's letter rooms join (lower id first),
/// for the ground rules.
pub fn letter_pairs(rooms: &[RoomDecl], members: &[MemberEntry]) -> Vec<(PartyId, PartyId)> {
    let mut pairs: Vec<(PartyId, PartyId)> = rooms
        .iter()
        .filter(|r| r.purpose == RoomPurpose::Letter)
        .filter_map(|r| {
            let mut ps: Vec<PartyId> = members
                .iter()
                .filter(|m| r.members.binary_search(&m.principal).is_ok())
                .map(|m| m.party)
                .collect();
            ps.sort();
            ps.dedup();
            match ps.as_slice() {
                [a, b] => Some((*a, *b)),
                _ => None,
            }
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
}
