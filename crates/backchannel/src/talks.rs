//! `backchannel talks …`: open, invite, join, seat, accept, verify, show.
//!
//! The mediator's flow: `talks open` (the talks, with the mediator's team
//! on the access list) → `talks invite` once per party (an invitation file
//! to hand over out of band) → `talks seat` once every party has joined
//! (builds the roster from what the parties certified, proposes the
//! access-list change that seats every party's devices, posts roster and
//! ground rules to the record room). A party's flow: `talks join` with the
//! invitation (enrols its talks authority and its member) → `talks accept`
//! (co-signs the change that seats its devices after checking it seats
//! exactly them, waits for the roster, verifies it and the ground rules
//! against the node's access list and its own certification, and accepts
//! both) → `talks verify --with <party> --via <how>` once per other party,
//! after comparing safety codes out of band.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use backchannel_client::net::{NetError, NodeAddresses, NodeClient};
use backchannel_client::participant::{
    self as talks_store, Enrolment, InvitationDoc, Invited, PinnedNode, TalksRecord,
};
use backchannel_client::safety::PartyVerification;
use backchannel_client::seal::Content;
use backchannel_client::store::{ClientStore as _, Namespace};
use backchannel_codec::{PartyId, PrincipalId, RoomId, TalksId};
use backchannel_crypto::{Digest, PublicKey, SecretKey, Signer as _, sha256};
use backchannel_node::api::codes;
use backchannel_statement::access_list::{
    AccessEntry, FLAG_DESIGNATED_SIGNER, FLAG_DEVICE, FLAG_MAY_PROPOSE, FLAG_MEDIATOR,
};
use backchannel_statement::roster::{
    Calendar, ChangeRule, ExportRecipient, ExportRule, ExportScope, KeyVerification, MemberFields,
    PartyEntry, RoomPurpose, VerifiedRoster,
};
use backchannel_statement::{
    Acceptance, AccessList, AccessListChange, AccessListDelta, Act, Attribution, Audience,
    CheckpointRef, Conveyance, GroundRules, InvitationFields, InvitationToken, LifecycleChange,
    LifecyclePhase, Markings, PartyKind, Payload, Role, Roster, SignedStatement, Statement,
};
use rand_core::{OsRng, RngCore};
use serde::Serialize;

use crate::cli::{
    KeyKindArg, PinArgs, RoleArg, TalksAcceptArgs, TalksArgs, TalksCommand, TalksInviteArgs,
    TalksJoinArgs, TalksNodesArgs, TalksOpenArgs, TalksPhaseArgs, TalksSeatArgs, TalksVerifyArgs,
};
use crate::participant::{
    self, CliSession, Ctx, LABEL, View, access_list, my_rooms, now_ms, random16, refresh,
};
use crate::{home, keys};

/// The warning every participant reads when talks are opened or joined.
pub const NO_DENIABILITY: &str = "formal statements (roster, acceptances, agreements) are \
     transferable proof: anyone shown one can check who signed it. Talk is attributable too: \
     every envelope is signed by its sender's device. Backchannel offers no deniability. Bodies \
     are end-to-end encrypted (each room is an MLS group): the node sees who posts to which room \
     and when, never what.";

/// How many times `talks seat` proposes its seating change again when a
/// party's co-signature changed the list meanwhile (409 stale).
const SEAT_ATTEMPTS: u32 = 10;

/// How often `talks accept` polls the node while it waits.
const POLL: Duration = Duration::from_millis(300);

/// Runs one `talks` command.
pub fn main(home_dir: Option<PathBuf>, command: TalksCommand) -> anyhow::Result<()> {
    let command = match command {
        TalksCommand::Authority(c) => return crate::authority::main(home_dir, c),
        other => other,
    };
    let dir = home::resolve(home_dir)?;
    home::block_on(async move {
        match command {
            TalksCommand::Open(a) => open(&dir, a).await,
            TalksCommand::Invite(a) => invite(&dir, a).await,
            TalksCommand::Join(a) => join(&dir, a).await,
            TalksCommand::Seat(a) => seat(&dir, a).await,
            TalksCommand::Accept(a) => accept(&dir, a).await,
            TalksCommand::Nodes(a) => nodes(&dir, a).await,
            TalksCommand::Verify(a) => verify(&dir, a).await,
            TalksCommand::Show(a) => show(&dir, a).await,
            TalksCommand::Cosign(a) => cosign(&dir, a).await,
            TalksCommand::Consent(a) => consent(&dir, a).await,
            TalksCommand::Suspend(a) => change_phase(&dir, a, LifecyclePhase::Suspended).await,
            TalksCommand::Resume(a) => change_phase(&dir, a, LifecyclePhase::Resumed).await,
            TalksCommand::Conclude(a) => change_phase(&dir, a, LifecyclePhase::Concluded).await,
            TalksCommand::Close(a) => change_phase(&dir, a, LifecyclePhase::Closed).await,
            TalksCommand::Authority(_) => unreachable!("dispatched above"),
        }
    })
}

impl RoleArg {
    pub fn role(self) -> Role {
        match self {
            RoleArg::Head => Role::Head,
            RoleArg::Negotiator => Role::Negotiator,
            RoleArg::Expert => Role::Expert,
            RoleArg::Legal => Role::Legal,
            RoleArg::NoteTaker => Role::NoteTaker,
            RoleArg::Interpreter => Role::Interpreter,
            RoleArg::Principal => Role::Principal,
            RoleArg::Lead => Role::Lead,
            RoleArg::CoMediator => Role::CoMediator,
            RoleArg::Staff => Role::Staff,
        }
    }
}

fn pin(a: &PinArgs) -> anyhow::Result<PinnedNode> {
    PinnedNode::parse(a.node.clone(), &a.fingerprint, &a.origin, &a.log_key).map_err(|e| {
        let flag = match e.field {
            "node address" => "--node",
            "node fingerprint" => "--fingerprint",
            "node origin" => "--origin",
            _ => "--log-key",
        };
        match flag {
            "--fingerprint" | "--log-key" => anyhow!(
                "{flag} must be 64 hex digits, as `backchannel node info` prints it ({})",
                e.reason
            ),
            _ => anyhow!(
                "{flag} is not valid ({}); give it as `backchannel node info` prints it",
                e.reason
            ),
        }
    })
}

/// Checks a name given as `flag` (the library's rule for names).
pub fn check_name(flag: &'static str, name: &str) -> anyhow::Result<()> {
    talks_store::check_name(flag, name).map_err(|e| anyhow!("{e}"))
}

/// How long bodies are kept before they are purged, by default (the
/// record keeps verifying): ten years.
pub const DEFAULT_RETENTION_DAYS: u32 = 3650;

/// The working days of the default calendar, a bit per weekday from Monday:
/// Monday to Friday.
pub const MONDAY_TO_FRIDAY: u8 = 0b001_1111;

/// The ground rules `talks seat` (and the demo) posts: mediator-only
/// conveyance, formal attribution, each party exporting its own
/// statements to its own archive, [`DEFAULT_RETENTION_DAYS`], a Monday to
/// Friday calendar in `time_zone`, key verification required, changes by
/// all parties.
pub fn default_ground_rules(
    parties: impl IntoIterator<Item = PartyId>,
    time_zone: String,
    sealed_letters: Vec<(PartyId, PartyId)>,
) -> GroundRules {
    let mut exports: Vec<ExportRule> = parties
        .into_iter()
        .map(|party| ExportRule {
            party,
            scope: ExportScope::OwnStatements,
            to: ExportRecipient::OwnArchive,
        })
        .collect();
    exports.sort();
    GroundRules {
        confidentiality_default: Conveyance::MediatorOnly,
        attribution_default: Attribution::Formal,
        exports,
        sealed_letters,
        retention_days: Some(DEFAULT_RETENTION_DAYS),
        calendar: Calendar {
            time_zone,
            working_days: MONDAY_TO_FRIDAY,
        },
        key_verification: KeyVerification::Required,
        change_rule: ChangeRule::AllParties,
    }
}

/// The acts a member's role permits, as certified.
pub fn acts_of(role: Role) -> Vec<Act> {
    [
        Act::AcceptTalks,
        Act::ReleaseMessage,
        Act::SignAgreement,
        Act::Convey,
    ]
    .into_iter()
    .filter(|a| role.permits(*a))
    .collect()
}

/// The participant's own certified roster entries.
async fn certify_self(
    ctx_store: &backchannel_client_store_sqlite::SqliteClientStore,
    record: &TalksRecord,
) -> anyhow::Result<Enrolment> {
    let talks = Some(record.talks);
    let authority = keys::load(ctx_store, KeyKindArg::Authority, None, LABEL)
        .await?
        .context("this home has no authority key")?;
    let get = |kind| async move {
        keys::load(ctx_store, kind, talks, LABEL)
            .await?
            .ok_or_else(|| anyhow!("this home lost its keys for these talks; restore the home from its backup (home.db): without them it cannot act in these talks"))
    };
    let talks_authority = get(KeyKindArg::TalksAuthority).await?;
    let identity = get(KeyKindArg::Identity).await?;
    let device = get(KeyKindArg::Device).await?;
    let entry = PartyEntry::certify(
        record.talks,
        record.party,
        record.party_kind,
        record.party_name.clone(),
        &authority,
        talks_authority.public_key(),
    )?;
    let member = MemberFields {
        principal: record.principal,
        party: record.party,
        role: record.role,
        name: record.member_name.clone(),
        identity_key: identity.public_key(),
        devices: vec![device.public_key()],
        acts: acts_of(record.role),
    }
    .certify(record.talks, &talks_authority)
    .map_err(|e| anyhow!("certifying your member entry: {e}"))?;
    Ok(Enrolment {
        entry,
        members: vec![member],
    })
}

#[derive(Serialize)]
struct Opened {
    talks: String,
    party: String,
    record_room: String,
    recovery_sheet: Option<PathBuf>,
}

async fn open(dir: &Path, a: TalksOpenArgs) -> anyhow::Result<()> {
    let node = pin(&a.pin)?;
    check_name("--name", &a.name)?;
    check_name("--member", &a.member)?;
    let role = a.role.role();
    ensure!(
        role.party_kind() == PartyKind::Mediator,
        "--role {} is a delegation's role; a mediator opens talks as lead, co-mediator or staff",
        role.name()
    );
    crate::members::check_sheet_path(a.sheet.recovery_sheet.as_deref())?;
    let store = home::open(dir, &a.passphrase).await?;
    let talks = TalksId(random16());
    let record = TalksRecord {
        talks,
        node,
        party: PartyId(random16()),
        party_kind: PartyKind::Mediator,
        party_name: a.name,
        principal: PrincipalId(random16()),
        member_name: a.member,
        role,
        record_room: Some(RoomId(random16())),
        invited: vec![],
        pending_members: vec![],
        verifications: Default::default(),
    };
    let authority = keys::load_or_generate(&store, KeyKindArg::Authority, None, LABEL).await?;
    let ta = keys::load_or_generate(&store, KeyKindArg::TalksAuthority, Some(talks), LABEL).await?;
    let identity = keys::load_or_generate(&store, KeyKindArg::Identity, Some(talks), LABEL).await?;
    let device = keys::load_or_generate(&store, KeyKindArg::Device, Some(talks), LABEL).await?;
    let initial = AccessList::new(
        talks,
        0,
        vec![
            AccessEntry::new(
                ta.public_key(),
                PrincipalId(record.party.0),
                record.party,
                vec![],
                FLAG_DESIGNATED_SIGNER | FLAG_MEDIATOR,
            )?,
            AccessEntry::new(
                device.public_key(),
                record.principal,
                record.party,
                record.record_room.into_iter().collect(),
                FLAG_DEVICE | FLAG_MAY_PROPOSE | FLAG_MEDIATOR,
            )?,
        ],
    )?;
    let created = record.node.client(&authority)?.create_talks(&initial).await;
    if created.as_ref().is_err_and(NetError::surely_not_acted) {
        // Keys of talks that do not exist must not linger in the home. (On
        // any other failure the node may have opened them: the keys stay.)
        keys::forget_talks(&store, talks).await?;
    }
    created.map_err(|e| {
        let hint = if e.code() == Some(codes::FORBIDDEN) {
            format!(
                "; ask the node's operator to run `backchannel node creators add {}`",
                hex::encode(authority.public_key().as_bytes())
            )
        } else {
            String::new()
        };
        anyhow!("the node did not open the talks: {e}{hint}")
    })?;
    talks_store::create(&store, &record).await?;
    store.close().await;
    // The talks are open whatever happens to the sheet: a sheet that
    // cannot be written is said, not a failure of the command.
    let sheet =
        crate::members::write_sheet_or_say(a.sheet.recovery_sheet.as_deref(), &record, &identity);
    let out = Opened {
        talks: talks.to_hex(),
        party: record.party.to_hex(),
        record_room: record.record_room.map(|r| r.to_hex()).unwrap_or_default(),
        recovery_sheet: sheet,
    };
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("opened talks {}", out.talks);
        if let Some(path) = &out.recovery_sheet {
            println!("{}", crate::members::sheet_written_with_authority(path));
        }
        eprintln!("note: {}", crate::restore::BEFORE_A_BACKUP);
        eprintln!("note: {NO_DENIABILITY}");
        println!(
            "next: invite each party with `backchannel talks invite --talks {} --out <file>`",
            out.talks
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct InvitedOut {
    talks: String,
    party: String,
    invitation: PathBuf,
    expires_at: u64,
}

async fn invite(dir: &Path, a: TalksInviteArgs) -> anyhow::Result<()> {
    let mut ctx = participant::open(dir, &a.talks).await?;
    ensure!(
        ctx.record.party_kind == PartyKind::Mediator,
        "only the mediator invites parties; you are a party in these talks"
    );
    ensure!(
        ctx.record.invited.len() < talks_store::MAX_INVITED,
        "these talks already have {} invited parties, the most one talks takes",
        ctx.record.invited.len()
    );
    let ta = ctx.key(KeyKindArg::TalksAuthority).await?;
    let device = ctx.key(KeyKindArg::Device).await?;
    let party = PartyId(random16());
    let mut t = [0u8; 32];
    OsRng.fill_bytes(&mut t);
    let token = InvitationToken(t);
    let expires_at = now_ms() + a.valid_hours * 3_600_000;
    let invitation = InvitationFields {
        talks: ctx.talks(),
        party,
        token_hash: token.hash(),
        expires_at,
    }
    .sign(&ta)?;
    let ikm = enrolment_secret(&ctx).await?;
    let doc = InvitationDoc {
        node: ctx.record.node.clone(),
        talks: ctx.talks(),
        party,
        token,
        expires_at,
        enrolment_key: backchannel_mls::hpke_public_key(&ikm)
            .map_err(|e| anyhow!("deriving the enrolment key: {e}"))?,
    };
    // The file first (refusing an existing one), so a failure leaves no
    // invitation on the node that nobody can redeem.
    participant::write_secret(&a.out, doc.to_json().as_bytes())?;
    if let Err(e) = ctx
        .record
        .node
        .client(&device)?
        .create_invitation(ctx.talks(), &invitation)
        .await
    {
        let _ = std::fs::remove_file(&a.out);
        return Err(anyhow!("the node did not take the invitation: {e}"));
    }
    ctx.record.invited.push(Invited {
        party,
        caucus: RoomId(random16()),
    });
    ctx.save().await?;
    let ctx_talks = ctx.talks();
    ctx.close().await;
    let out = InvitedOut {
        talks: ctx_talks.to_hex(),
        party: party.to_hex(),
        invitation: a.out.clone(),
        expires_at,
    };
    if a.talks.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "wrote the invitation to {}: hand it to the party over a channel the node does not \
             see; it holds a one-time token, valid {} hours",
            a.out.display(),
            a.valid_hours
        );
        println!("next, once every party has joined: `backchannel talks seat`");
    }
    Ok(())
}

#[derive(Serialize)]
struct Joined {
    talks: String,
    party: String,
    talks_authority: String,
    device: String,
    recovery_sheet: Option<PathBuf>,
}

async fn join(dir: &Path, a: TalksJoinArgs) -> anyhow::Result<()> {
    check_name("--name", &a.name)?;
    check_name("--member", &a.member)?;
    let role = a.role.role();
    ensure!(
        role.party_kind() == PartyKind::Party,
        "--role {} is a mediator's role; a party's member is head, negotiator, expert, legal, \
         note-taker, interpreter or principal",
        role.name()
    );
    crate::members::check_sheet_path(a.sheet.recovery_sheet.as_deref())?;
    let text = participant::read_document(&a.invitation, "invitation")?;
    let doc = InvitationDoc::parse(&text).map_err(|e| {
        anyhow!(
            "{} is not a usable invitation ({e}); ask the mediator for a new one",
            a.invitation.display()
        )
    })?;
    if doc.expires_at <= now_ms() {
        bail!("the invitation has expired; ask the mediator for a new one");
    }
    let store = home::open(dir, &a.passphrase).await?;
    if talks_store::load(&store, doc.talks).await?.is_some() {
        bail!(
            "this home already takes part in talks {}; `backchannel talks show --talks {}`",
            doc.talks,
            doc.talks
        );
    }
    let record = TalksRecord {
        talks: doc.talks,
        node: doc.node.clone(),
        party: doc.party,
        party_kind: PartyKind::Party,
        party_name: a.name,
        principal: PrincipalId(random16()),
        member_name: a.member,
        role,
        record_room: None,
        invited: vec![],
        pending_members: vec![],
        verifications: Default::default(),
    };
    keys::load_or_generate(&store, KeyKindArg::Authority, None, LABEL).await?;
    let t = Some(doc.talks);
    let ta = keys::load_or_generate(&store, KeyKindArg::TalksAuthority, t, LABEL).await?;
    let identity = keys::load_or_generate(&store, KeyKindArg::Identity, t, LABEL).await?;
    let device = keys::load_or_generate(&store, KeyKindArg::Device, t, LABEL).await?;
    let enrolment = certify_self(&store, &record).await?;
    let enrolled = doc
        .node
        .client(&ta)?
        .enrol(
            doc.talks,
            &doc.token,
            &enrolment
                .seal(&doc)
                .map_err(|e| anyhow!("sealing the enrolment to the mediator: {e}"))?,
        )
        .await;
    if enrolled.as_ref().is_err_and(NetError::surely_not_acted) {
        // Keys of talks this home did not join must not linger in it. (On
        // any other failure, a lost answer, the node may have enrolled the
        // key: the keys stay, and joining again with the same invitation
        // answers again for the same key.)
        keys::forget_talks(&store, doc.talks).await?;
    }
    enrolled.map_err(|e| {
            anyhow!("the node did not enrol you: {e}; if the token was used or expired, ask the mediator for a new invitation")
        })?;
    talks_store::create(&store, &record).await?;
    store.close().await;
    let sheet =
        crate::members::write_sheet_or_say(a.sheet.recovery_sheet.as_deref(), &record, &identity);
    let out = Joined {
        talks: doc.talks.to_hex(),
        party: doc.party.to_hex(),
        talks_authority: hex::encode(ta.public_key().as_bytes()),
        device: hex::encode(device.public_key().as_bytes()),
        recovery_sheet: sheet,
    };
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("joined talks {} as {}", out.talks, record.party_name);
        if let Some(path) = &out.recovery_sheet {
            println!("{}", crate::members::sheet_written_with_authority(path));
        }
        eprintln!("note: {}", crate::restore::BEFORE_A_BACKUP);
        eprintln!("note: {NO_DENIABILITY}");
        println!(
            "next: once the mediator has seated the parties, `backchannel talks accept --talks {}`",
            out.talks
        );
    }
    Ok(())
}

pub fn statement(
    signer: &SecretKey,
    record: &TalksRecord,
    room: RoomId,
    checkpoint: CheckpointRef,
    payload: Payload,
) -> anyhow::Result<SignedStatement> {
    Ok(Statement::new(
        &mut OsRng,
        record.talks,
        signer.public_key().id(),
        record.party,
        vec![Audience::Room(room)],
        checkpoint,
        Markings::mediator_only(),
        payload,
    )?
    .sign(signer)?)
}

/// The mediator's enrolment secret for the talks (HPKE key material; the
/// invitation carries its public key, and each party seals its enrolment
/// to it): made at the first invitation, kept in the home.
async fn enrolment_secret(ctx: &Ctx) -> anyhow::Result<[u8; 32]> {
    let mut name = b"enrolment-secret/".to_vec();
    name.extend_from_slice(ctx.talks().as_bytes());
    if let Some(b) = ctx.store.get(Namespace::Keys, &name).await? {
        return b
            .as_slice()
            .try_into()
            .map_err(|_| anyhow!("the home's enrolment secret for these talks is damaged"));
    }
    let mut ikm = [0u8; 32];
    OsRng.fill_bytes(&mut ikm);
    ctx.store.put(Namespace::Keys, &name, &ikm).await?;
    Ok(ikm)
}

/// The roster from what each party certified in its enrolment, with the
/// rooms `plan` declares (`crate::room_plan`).
async fn build_roster(
    ctx: &Ctx,
    s: &CliSession,
    record_room: RoomId,
    plan: &crate::room_plan::RoomPlan,
) -> anyhow::Result<Roster> {
    // What each party certified, from its enrolment.
    let mut parties = Vec::new();
    let mut members = Vec::new();
    let own = certify_self(&ctx.store, &ctx.record).await?;
    parties.push(own.entry);
    members.extend(own.members);
    let served = s.node().invitations(ctx.talks()).await?;
    let ikm = enrolment_secret(ctx).await?;
    let mut waiting = Vec::new();
    for inv in &ctx.record.invited {
        let Some(si) = served
            .iter()
            .find(|si| si.invitation.fields.party == inv.party)
        else {
            bail!(
                "the node does not list the invitation of party {}: it lost an invitation it took; report it to the node's operator, and invite that party again",
                inv.party
            );
        };
        let Some(payload) = si.payload.as_deref() else {
            waiting.push(inv.party.to_hex());
            continue;
        };
        let e = Enrolment::open(&ikm, ctx.talks(), inv.party, payload)
            .map_err(|e| anyhow!("party {}'s enrolment: {e}; invite it again", inv.party))?;
        ensure!(
            e.entry.party == inv.party && e.entry.kind == PartyKind::Party,
            "party {}'s enrolment is for another party; invite that party again",
            inv.party
        );
        ensure!(
            Some(e.entry.talks_authority_key.id()) == si.redeemed.map(|(k, _)| k),
            "party {}'s enrolment names a talks authority other than the key that redeemed \
             the invitation; invite that party again",
            inv.party
        );
        ensure!(
            e.members.iter().all(|m| m.member.party == inv.party),
            "party {}'s enrolment lists members of another party; invite that party again",
            inv.party
        );
        parties.push(e.entry);
        members.extend(e.members);
    }
    if !waiting.is_empty() {
        bail!(
            "not every invited party has joined yet (waiting for {}); run `talks seat` again \
             once they have",
            waiting.join(", ")
        );
    }
    parties.sort_by_key(|p| p.party);
    members.sort_by_key(|m| m.principal);
    let invited = &ctx.record.invited;
    let (rooms, rules) = crate::room_plan::declare(
        ctx.talks(),
        &parties,
        &members,
        record_room,
        |p| invited.iter().find(|i| i.party == p).map(|i| i.caucus),
        plan,
    )?;
    let mut roster = Roster {
        parties,
        members,
        rooms,
        rules,
        access_list_hash: Digest([0; 32]),
    };
    let implied = roster.implied_access_list(ctx.talks())?;
    roster.access_list_hash = implied.hash();
    roster.verify_for(ctx.talks())?;
    Ok(roster)
}

#[derive(Serialize)]
struct Seated {
    talks: String,
    parties: usize,
    change_applied: bool,
    roster_posted: bool,
}

async fn seat(dir: &Path, a: TalksSeatArgs) -> anyhow::Result<()> {
    let ctx = participant::open(dir, &a.talks).await?;
    ensure!(
        ctx.record.party_kind == PartyKind::Mediator,
        "only the mediator seats the parties; a party runs `backchannel talks accept`"
    );
    let record_room = ctx
        .record
        .record_room
        .context("the talks have no record room")?;
    ensure!(
        !ctx.record.invited.is_empty(),
        "no party is invited yet; `backchannel talks invite` first"
    );
    let ta = ctx.key(KeyKindArg::TalksAuthority).await?;
    let mut s = ctx.session().await?;
    let view = refresh(&ctx, &mut s).await?;
    if view.roster().is_some() && view.replay.ground_rules().is_some() {
        bail!(
            "the parties are seated: roster and ground rules are posted; `backchannel talks show`"
        );
    }

    // The roster: the one posted by an interrupted run, or built now from
    // what each party certified.
    let roster = match view.roster() {
        Some(r) => r.clone(),
        None => {
            let plan = crate::room_plan::RoomPlan {
                presets: a.presets.clone(),
                tracks: a.tracks.clone(),
                letters: a.letters,
                private_notes: a.private_notes,
                require_release: a.require_release,
            };
            build_roster(&ctx, &s, record_room, &plan).await?
        }
    };
    let implied = roster.implied_access_list(ctx.talks())?;

    // The ground rules, and the statements to post, built and checked
    // before anything reaches the node (a statement that does not decode
    // would stall the talks for good).
    let rules = default_ground_rules(
        ctx.record.invited.iter().map(|i| i.party),
        a.time_zone.clone(),
        crate::room_plan::letter_pairs(&roster.rooms, &roster.members),
    );
    let roster_st = statement(
        &ta,
        &ctx.record,
        record_room,
        s.checkpoint_ref(),
        Payload::Roster(roster.clone()),
    )?;
    let rules_st = statement(
        &ta,
        &ctx.record,
        record_room,
        s.checkpoint_ref(),
        Payload::GroundRules(rules),
    )?;
    for (what, st) in [("roster", &roster_st), ("ground rules", &rules_st)] {
        SignedStatement::decode(st.as_bytes()).map_err(|e| {
            anyhow!("the {what} would not decode ({e}); check --time-zone (an IANA zone such as Asia/Muscat)")
        })?;
    }
    // Everything is built and checked: now the node. An interrupted run
    // resumes here: the change again (the node merges the same delta), the
    // roster only if it is not posted yet, then the ground rules.
    // The change that seats everyone, signed by the mediator; each party
    // co-signs it in `talks accept`.
    // A party co-signing meanwhile changes the list under us (409 stale):
    // read it again and propose what is still missing.
    for attempt in 0.. {
        let current = s.node().access_list(ctx.talks()).await?;
        let upsert: Vec<AccessEntry> = implied
            .entries()
            .iter()
            .filter(|e| current.list.get(&e.key_id()) != Some(e))
            .cloned()
            .collect();
        let remove: Vec<_> = current
            .list
            .entries()
            .iter()
            .filter(|e| implied.get(&e.key_id()).is_none())
            .map(|e| e.key_id())
            .collect();
        if upsert.is_empty() && remove.is_empty() {
            break;
        }
        let delta = AccessListDelta::new(ctx.talks(), current.list.hash(), remove, upsert)?;
        let change = AccessListChange::new(delta.clone(), vec![delta.sign(&ta)?])?;
        match s.node().submit_change(ctx.talks(), &change).await {
            Ok(_) => break,
            Err(e) if e.code() == Some(codes::STALE) && attempt < SEAT_ATTEMPTS => {
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(e.into()),
        }
    }

    // The roster goes to the record room only once every device the list
    // seats there is in the room's MLS group: a device added later could
    // not read it. Each party's devices upload key packages in `talks
    // accept`, once the change has applied; each refresh here creates the
    // rooms' groups and adds whoever has.
    let deadline = Instant::now() + Duration::from_secs(a.wait);
    let mut applied;
    let waiting = loop {
        let list = access_list(&s).await?;
        applied = implied
            .entries()
            .iter()
            .all(|e| list.get(&e.key_id()) == Some(e));
        let waiting = if applied {
            refresh(&ctx, &mut s).await?;
            let missing = backchannel_client::rooms::seated(&list, record_room)
                .difference(&s.room_members(record_room))
                .count();
            (missing > 0).then(|| {
                format!(
                    "{missing} device(s) of the record room are not in its group yet: each \
                     party's `talks accept` uploads its devices' key packages"
                )
            })
        } else {
            Some(
                "the access-list change that seats the parties waits for their co-signatures \
                  (`backchannel talks accept`)"
                    .to_owned(),
            )
        };
        match waiting {
            Some(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
            other => break other,
        }
    };
    let n = roster.parties.len();
    let seated_talks = ctx.talks().to_hex();
    if let Some(why) = waiting {
        ctx.close().await;
        let out = Seated {
            talks: seated_talks,
            parties: n,
            change_applied: applied,
            roster_posted: false,
        };
        if a.talks.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            println!(
                "proposed the seating of {n} parties; not posting the roster yet: {why}; run \
                 `backchannel talks seat` again then"
            );
        }
        return Ok(());
    }
    let view = refresh(&ctx, &mut s).await?;
    let roster_posted = view.roster().is_some();
    for st in [(!roster_posted).then_some(&roster_st), Some(&rules_st)]
        .into_iter()
        .flatten()
    {
        participant::post(
            &mut s,
            record_room,
            Content::Statement(st.as_bytes().to_vec()),
        )
        .await?;
    }
    ctx.close().await;
    let out = Seated {
        talks: seated_talks,
        parties: n,
        change_applied: true,
        roster_posted: true,
    };
    if a.talks.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "posted the roster ({n} parties) and the ground rules to the record room, whose \
             MLS group holds every seated device"
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct Accepted {
    talks: String,
    seq: Option<u64>,
    already: bool,
    safety_code: String,
}

async fn accept(dir: &Path, a: TalksAcceptArgs) -> anyhow::Result<()> {
    let mut ctx = participant::open(dir, &a.talks).await?;
    ensure!(
        ctx.record.party_kind == PartyKind::Party,
        "the mediator does not accept its own roster; parties do"
    );
    let deadline = Instant::now() + Duration::from_secs(a.wait);
    let ta = ctx.key(KeyKindArg::TalksAuthority).await?;
    let device = ctx.key(KeyKindArg::Device).await?;
    let authority = ctx.record.node.client(&ta)?;
    let own = certify_self(&ctx.store, &ctx.record).await?;
    let ours: BTreeSet<PublicKey> = own
        .members
        .iter()
        .flat_map(|m| m.member.devices.iter().copied())
        .collect();

    // 1. Co-sign the change that seats our devices, once it is proposed;
    //    wait until it applies.
    let mut signed = false;
    loop {
        let list = authority.access_list(ctx.talks()).await?.list;
        let seated: BTreeSet<PublicKey> = list
            .entries()
            .iter()
            .filter(|e| e.party == ctx.record.party && e.has(FLAG_DEVICE))
            .map(|e| *e.key())
            .collect();
        // Later members' devices may sit next to ours: ours must be there.
        if ours.is_subset(&seated) {
            break;
        }
        if !signed {
            for p in authority.pending_changes(ctx.talks()).await? {
                let delta = &p.change.delta;
                let touching: BTreeSet<PublicKey> = delta
                    .upsert()
                    .iter()
                    .filter(|e| e.party == ctx.record.party)
                    .map(|e| *e.key())
                    .collect();
                if touching.is_empty() {
                    continue;
                }
                let removes_ours = delta
                    .remove()
                    .iter()
                    .any(|k| list.get(k).is_some_and(|e| e.party == ctx.record.party));
                if touching != ours || removes_ours {
                    bail!(
                        "the proposed access-list change seats other keys for your party than \
                         your devices (or removes yours): do not accept; report it to the \
                         other parties, and ask the mediator"
                    );
                }
                if p.change
                    .signatures()
                    .iter()
                    .any(|(k, _)| *k == ta.public_key().id())
                {
                    signed = true;
                    continue;
                }
                let change = AccessListChange::new(delta.clone(), vec![delta.sign(&ta)?])?;
                match authority.submit_change(ctx.talks(), &change).await {
                    Ok(_) => {}
                    // Another party co-signed at the same moment: read the
                    // pending change again and sign it anew.
                    Err(e) if e.code() == Some(codes::STALE) => continue,
                    Err(e) => return Err(e.into()),
                }
                signed = true;
                if !a.talks.json {
                    eprintln!("co-signed the access-list change that seats your devices");
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "your devices are not seated yet ({}); run `talks accept` again later",
                if signed {
                    "the change waits for the other parties' co-signatures"
                } else {
                    "the mediator has not proposed the change: has it run `talks seat`?"
                }
            );
        }
        tokio::time::sleep(POLL).await;
    }

    // 2. The roster and ground rules from the record room.
    let mut s = ctx.session().await?;
    let view = loop {
        let v = refresh(&ctx, &mut s).await?;
        if v.roster_statement().is_some() && v.ground_rules_statement().is_some() {
            break v;
        }
        if Instant::now() >= deadline {
            bail!(
                "the roster and ground rules have not reached you yet; run `talks accept` again later"
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let r = view.roster_statement().cloned().context("roster")?;
    let g = view
        .ground_rules_statement()
        .cloned()
        .context("ground rules")?;
    let verified = VerifiedRoster::verify(ctx.talks(), &r)?;
    let list = access_list(&s).await?;
    let room = verified
        .roster
        .rooms
        .iter()
        .find(|d| d.purpose == RoomPurpose::Record)
        .map(|d| d.room)
        .context("the roster declares no record room")?;
    let code = view
        .safety_code(&ctx.record)
        .context("no safety code without roster and ground rules")?;

    let (seq, already) = if view.has_accepted(ctx.record.party) {
        (None, true)
    } else {
        check_roster(&view, &verified, &list, &own, ctx.record.party)?;
        // The acceptance carries the latest checkpoint verified, which must
        // hold no evidence against the node.
        let rooms = my_rooms(&list, &device);
        let (report, _) = s
            .verify_log(&rooms, now_ms())
            .await
            .map_err(crate::messages::evidence_or)?;
        if !report.withheld.is_empty() || !report.not_merged.is_empty() {
            return Err(crate::messages::Evidence(
                "the log holds evidence against the node (`backchannel log verify` names it): \
                 do not accept; report it"
                    .into(),
            )
            .into());
        }
        if !a.talks.json {
            print_rules(&view);
        }
        let acceptance = statement(
            &ta,
            &ctx.record,
            room,
            s.checkpoint_ref(),
            Payload::Acceptance(Acceptance {
                roster: r.unverified().id,
                roster_hash: sha256(r.as_bytes()),
                ground_rules: g.unverified().id,
                ground_rules_hash: sha256(g.as_bytes()),
            }),
        )?;
        let seq = participant::post(
            &mut s,
            room,
            Content::Statement(acceptance.as_bytes().to_vec()),
        )
        .await?;
        (Some(seq), false)
    };
    ctx.record.record_room = Some(room);
    ctx.save().await?;
    let talks = ctx.talks();
    ctx.close().await;
    let out = Accepted {
        talks: talks.to_hex(),
        seq,
        already,
        safety_code: code.phrase(),
    };
    if a.talks.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        match seq {
            Some(seq) => println!("accepted the roster and the ground rules (seq {seq})"),
            None => println!("you had already accepted the roster and the ground rules"),
        }
        println!("safety code: {}", out.safety_code);
        println!(
            "next: compare it with each other party over a channel the mediator does not \
             control, then `backchannel talks verify --with <party> --via <how>`"
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct VerifiedOut {
    party: String,
    name: String,
    via: String,
    safety_code: String,
}

#[derive(Serialize)]
struct NodesOut {
    talks: String,
    nodes: Vec<String>,
    changed: bool,
}

/// Shows or replaces the talks' node address list. Every address of a new
/// list is asked for its node information over the pinned certificate
/// first, and must name the pinned origin and log key: a list is saved
/// only if each of its nodes is the same node.
async fn nodes(dir: &Path, a: TalksNodesArgs) -> anyhow::Result<()> {
    let mut ctx = participant::open(dir, &a.talks).await?;
    let changed = if let Some(list) = &a.set {
        let parsed = NodeAddresses::parse(list).map_err(|e| anyhow!("--set: {e}"))?;
        let device = ctx.key(KeyKindArg::Device).await?;
        for address in parsed.iter() {
            let info = NodeClient::new(address, ctx.record.node.fingerprint, &device)?
                .node_info()
                .await
                .with_context(|| {
                    format!("asking {address} for its node information; nothing was changed")
                })?;
            ensure!(
                info.origin == ctx.record.node.origin && info.log_key == ctx.record.node.log_key,
                "{address} presents the pinned certificate but names another origin or log key: \
                 it is not a node of this talks' log; nothing was changed"
            );
        }
        let canonical = parsed.to_string();
        let changed = canonical != ctx.record.node.address;
        ctx.record.node.address = canonical;
        ctx.save().await?;
        changed
    } else {
        false
    };
    let out = NodesOut {
        talks: ctx.talks().to_hex(),
        nodes: NodeAddresses::parse(&ctx.record.node.address)?
            .iter()
            .map(str::to_owned)
            .collect(),
        changed,
    };
    ctx.close().await;
    if a.talks.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        for n in &out.nodes {
            println!("{n}");
        }
    }
    Ok(())
}

async fn verify(dir: &Path, a: TalksVerifyArgs) -> anyhow::Result<()> {
    check_name("--via", &a.via)?;
    let mut ctx = participant::open(dir, &a.talks).await?;
    let mut s = ctx.session().await?;
    let view = refresh(&ctx, &mut s).await?;
    let party = view.find_party(&a.with)?;
    ensure!(
        party != ctx.record.party,
        "that is your own party; compare codes with another party"
    );
    let code = view
        .safety_code(&ctx.record)
        .context("no safety code yet: the roster and the ground rules have not reached you")?;
    if let Some(theirs) = &a.code {
        // As printed: twelve words in groups of four, "/" between them.
        let theirs: Vec<String> = theirs
            .split(|c: char| c.is_whitespace() || c == '/')
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        let ours: Vec<String> = code.words().iter().map(|w| w.to_string()).collect();
        if theirs != ours {
            bail!(
                "the codes differ: yours is \"{}\". Do not rely on {}'s signatures: the keys you \
                 were shown for it (or the node's) are not the ones it holds. Nothing was recorded.",
                code.phrase(),
                view.party_name(party)
            );
        }
    }
    ctx.record.verifications.insert(
        party,
        PartyVerification::Verified {
            how: a.via.clone(),
            at_ms: now_ms(),
            code,
        },
    );
    ctx.save().await?;
    ctx.close().await;
    let out = VerifiedOut {
        party: party.to_hex(),
        name: view.party_name(party),
        via: a.via,
        safety_code: code.phrase(),
    };
    if a.talks.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "recorded: {}'s keys verified ({}) on safety code \"{}\"",
            out.name, out.via, out.safety_code
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct PartyOut {
    party: String,
    name: String,
    kind: &'static str,
    accepted: bool,
    keys: String,
    verified: bool,
}

#[derive(Serialize)]
struct RoomOut {
    room: String,
    name: String,
    mine: bool,
}

#[derive(Serialize)]
struct ShowOut {
    talks: String,
    node: String,
    you: String,
    party: String,
    roster: bool,
    ground_rules: bool,
    phase: String,
    awaiting_acceptance: Vec<String>,
    parties: Vec<PartyOut>,
    rooms: Vec<RoomOut>,
    safety_code: Option<String>,
    verified_size: u64,
    archived_to: u64,
    other_talks: Vec<String>,
}

async fn show(dir: &Path, a: TalksArgs) -> anyhow::Result<()> {
    let ctx = participant::open(dir, &a).await?;
    let mut s = ctx.session().await?;
    let view = match refresh(&ctx, &mut s).await {
        Ok(v) => v,
        // Evidence against the node is never hidden behind the archive.
        Err(e) if e.downcast_ref::<crate::messages::Evidence>().is_some() => return Err(e),
        Err(e) => {
            eprintln!("warning: the node could not be reached ({e:#}); showing the archive");
            View::of(ctx.talks(), s.archive().await?)
        }
    };
    let list = access_list(&s).await.ok();
    let mine = list
        .as_ref()
        .map(|l| my_rooms(l, s.device()))
        .unwrap_or_default();
    let others = talks_store::talks_index(&*ctx.store)
        .await?
        .into_iter()
        .filter(|t| *t != ctx.talks())
        .map(|t| t.to_hex())
        .collect();
    let code = view.safety_code(&ctx.record);
    let parties = view
        .roster()
        .map(|r| {
            r.parties
                .iter()
                .map(|p| {
                    let standing = view.standing(&ctx.record, p.party);
                    PartyOut {
                        party: p.party.to_hex(),
                        name: p.name.clone(),
                        kind: match p.kind {
                            PartyKind::Mediator => "mediator",
                            PartyKind::Party => "party",
                            PartyKind::Monitor => "monitor",
                            PartyKind::EscrowAgent => "escrow agent",
                        },
                        accepted: view.has_accepted(p.party),
                        keys: if p.party == ctx.record.party {
                            "your own party".into()
                        } else {
                            standing.label()
                        },
                        verified: standing.is_verified(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let rooms = view
        .roster()
        .map(|r| {
            r.rooms
                .iter()
                .map(|d| RoomOut {
                    room: d.room.to_hex(),
                    name: d.name.clone(),
                    mine: mine.contains(&d.room),
                })
                .collect()
        })
        .unwrap_or_default();
    let out = ShowOut {
        talks: ctx.talks().to_hex(),
        node: ctx.record.node.address.clone(),
        you: format!(
            "{} ({}), {}",
            ctx.record.member_name,
            ctx.record.role.name(),
            ctx.record.party_name
        ),
        party: ctx.record.party.to_hex(),
        roster: view.roster().is_some(),
        ground_rules: view.replay.ground_rules().is_some(),
        phase: view.phase_text(),
        awaiting_acceptance: view
            .awaiting()
            .iter()
            .map(|p| view.party_name(*p))
            .collect(),
        parties,
        rooms,
        safety_code: code.map(|c| c.phrase()),
        verified_size: s.follower().size(),
        archived_to: s.next_seq(),
        other_talks: others,
    };
    ctx.close().await;
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!("talks        {}", out.talks);
    println!("node         {}", out.node);
    println!("you          {}", out.you);
    if !out.roster {
        println!("roster       not received yet");
    }
    println!("phase        {}", out.phase);
    for p in &out.parties {
        println!(
            "party        {} ({}){} — keys: {}",
            p.name,
            p.kind,
            if p.accepted { ", accepted" } else { "" },
            p.keys
        );
    }
    if !out.awaiting_acceptance.is_empty() {
        println!(
            "awaiting     acceptance by {}",
            out.awaiting_acceptance.join(", ")
        );
    }
    for r in &out.rooms {
        println!(
            "room         {}{}",
            r.name,
            if r.mine { " (yours)" } else { "" }
        );
    }
    println!(
        "log          verified to size {}, archived to seq {}",
        out.verified_size, out.archived_to
    );
    if let Some(c) = code {
        println!("safety code  {}", c.phrase());
        println!("{}", c.qr_text());
    }
    if !out.other_talks.is_empty() {
        println!("other talks  {}", out.other_talks.join(", "));
    }
    Ok(())
}

#[derive(Serialize)]
struct PhaseOut {
    talks: String,
    change: &'static str,
    seq: u64,
    phase: String,
}

/// Signs a lifecycle change with the talks authority and posts it to the
/// record room, once replay of the archive says it would be accepted (so
/// a change the phase or the signer does not allow is refused here, with
/// replay's reason, before anything is sent).
async fn change_phase(dir: &Path, a: TalksPhaseArgs, phase: LifecyclePhase) -> anyhow::Result<()> {
    let change =
        LifecycleChange::new(phase, a.reason.clone()).map_err(|e| anyhow!("--reason: {e}"))?;
    let ctx = participant::open(dir, &a.talks).await?;
    let ta = ctx.key(KeyKindArg::TalksAuthority).await?;
    let mut s = ctx.session().await?;
    let view = refresh(&ctx, &mut s).await?;
    let room = ctx
        .record
        .record_room
        .context("the roster has not reached you: run `backchannel talks accept` first")?;
    let st = statement(
        &ta,
        &ctx.record,
        room,
        s.checkpoint_ref(),
        Payload::Lifecycle(change),
    )?;
    let mut dry = view.replay.clone();
    dry.apply(backchannel_core::replay::LoggedStatement {
        seq: s.next_seq().max(1),
        node_time: now_ms(),
        room,
        statement: &st,
    })
    .map_err(|e| anyhow!("the talks cannot be {} now: {e}", phase.name()))?;
    let seq = participant::post(&mut s, room, Content::Statement(st.as_bytes().to_vec())).await?;
    let after = View {
        replay: dry,
        ..view
    };
    let out = PhaseOut {
        talks: ctx.talks().to_hex(),
        change: phase.name(),
        seq,
        phase: after.phase_text(),
    };
    ctx.close().await;
    if a.talks.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("the talks are {} (seq {seq})", out.phase);
    }
    Ok(())
}

#[derive(Serialize)]
struct ConsentOut {
    talks: String,
    room: String,
    seq: u64,
    opens: u64,
    closes: u64,
    /// Whether every party in the room has now consented to a window
    /// covering the present.
    open_now: bool,
}

/// Posts the party's signed consent to a joint session in a plenary room,
/// from now (or `--in`) for `--for`, dry-run through replay first.
async fn consent(dir: &Path, a: crate::cli::TalksConsentArgs) -> anyhow::Result<()> {
    let length = crate::say::parse_duration(&a.for_)?;
    let delay = match &a.in_ {
        Some(d) => crate::say::parse_duration(d)?,
        None => 0,
    };
    let ctx = participant::open(dir, &a.talks).await?;
    let ta = ctx.key(KeyKindArg::TalksAuthority).await?;
    let mut s = ctx.session().await?;
    let view = refresh(&ctx, &mut s).await?;
    let list = access_list(&s).await?;
    let room = view.find_room(&ctx.record, &my_rooms(&list, s.device()), &a.room)?;
    ensure!(
        view.roster()
            .and_then(|r| r.room(room))
            .is_some_and(|d| d.purpose == RoomPurpose::Plenary),
        "joint sessions are held in a plenary room; {} is not one",
        view.room_name(room)
    );
    let record_room = ctx
        .record
        .record_room
        .context("the roster has not reached you: run `backchannel talks accept` first")?;
    let opens = now_ms().saturating_add(delay);
    let consent =
        backchannel_statement::SessionConsent::new(room, opens, opens.saturating_add(length))
            .map_err(|e| anyhow!("--for: {e}"))?;
    let st = statement(
        &ta,
        &ctx.record,
        record_room,
        s.checkpoint_ref(),
        Payload::SessionConsent(consent),
    )?;
    let mut dry = view.replay.clone();
    dry.apply(backchannel_core::replay::LoggedStatement {
        seq: s.next_seq().max(1),
        node_time: now_ms(),
        room: record_room,
        statement: &st,
    })
    .map_err(|e| anyhow!("your consent would not count: {e}"))?;
    let seq = participant::post(
        &mut s,
        record_room,
        Content::Statement(st.as_bytes().to_vec()),
    )
    .await?;
    let out = ConsentOut {
        talks: ctx.talks().to_hex(),
        room: view.room_name(room),
        seq,
        opens: consent.opens,
        closes: consent.closes,
        open_now: dry.joint_session(room, now_ms()).is_some(),
    };
    ctx.close().await;
    if a.talks.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "consented to a joint session in {} from {} to {} (seq {seq}); {}",
            crate::messages::printable(&out.room),
            crate::say::utc(out.opens),
            crate::say::utc(out.closes),
            if out.open_now {
                "every party in the room has consented: the session is open"
            } else {
                "it opens once every party in the room has consented"
            }
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct CosignedOut {
    cosigned: Vec<String>,
    applied: usize,
    refused: Vec<String>,
}

/// Co-signs the pending changes the record justifies ([`unjustified`]);
/// anything else is refused and shown.
async fn cosign(dir: &Path, a: TalksArgs) -> anyhow::Result<()> {
    let ctx = participant::open(dir, &a).await?;
    let ta = ctx.key(KeyKindArg::TalksAuthority).await?;
    let mut s = ctx.session().await?;
    let view = refresh(&ctx, &mut s).await?;
    let current = access_list(&s).await?;
    // The talks authority's own connection when it is on the list; a
    // re-appointed authority not seated yet signs over this home's
    // device's (its own signature is what the seating change waits for).
    let own_connection;
    let node = if current.get(&ta.public_key().id()).is_some() {
        own_connection = ctx.record.node.client(&ta)?;
        &own_connection
    } else {
        s.node()
    };
    let mut out = CosignedOut {
        cosigned: vec![],
        applied: 0,
        refused: vec![],
    };
    for p in node.pending_changes(ctx.talks()).await? {
        let delta = &p.change.delta;
        if p.change
            .signatures()
            .iter()
            .any(|(k, _)| *k == ta.public_key().id())
        {
            continue;
        }
        let why = unjustified(&view, &ctx.record, &current, delta);
        if !why.is_empty() {
            out.refused.push(format!(
                "change {}: {}",
                p.delta_hash.to_hex(),
                why.join("; ")
            ));
            continue;
        }
        // With the signatures gathered so far, so that the last one
        // completes the change whoever submits it.
        let mut signatures: Vec<_> = p.change.signatures().to_vec();
        signatures.push(delta.sign(&ta)?);
        signatures.sort_by_key(|(k, _)| *k);
        let change = AccessListChange::new(delta.clone(), signatures)?;
        match node.submit_change(ctx.talks(), &change).await {
            Ok(o) => {
                out.cosigned.push(p.delta_hash.to_hex());
                if o.applied {
                    out.applied += 1;
                }
            }
            Err(e) if e.code() == Some(codes::STALE) => {
                out.refused.push(format!(
                    "change {}: the list changed meanwhile; run `talks cosign` again",
                    p.delta_hash.to_hex()
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    ctx.close().await;
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "co-signed {} pending change(s), {} of them now applied",
            out.cosigned.len(),
            out.applied
        );
        for r in &out.refused {
            println!("did not co-sign {r}");
        }
    }
    if !out.refused.is_empty() {
        bail!(
            "{} change(s) were not co-signed: see above; ask whoever proposed them",
            out.refused.len()
        );
    }
    Ok(())
}

/// What in `delta` the record does not justify, for this participant to
/// co-sign it (empty: co-sign). Every upserted entry must be a device that
/// the replayed record certifies, unrevoked, for the entry's party and
/// principal; sit only in rooms the roster gives its party (a room where
/// the roster seats none of that party's members is another party's room);
/// carry the mediator flag exactly when its party is a mediator team, and
/// never the designated-signer flag. No removal may touch this
/// participant's own party (its own members leave through `members
/// remove`, signed by its own talks authority).
fn unjustified(
    view: &View,
    record: &TalksRecord,
    current: &AccessList,
    delta: &AccessListDelta,
) -> Vec<String> {
    let mut why = Vec::new();
    let Some(roster) = view.roster() else {
        why.push("the roster has not reached you: nothing can be checked".into());
        return why;
    };
    // A change that only seats a talks authority the record passed on, in
    // the old key's entry, is what the pass asks for.
    if crate::authority::justified_pass(view, current, delta).is_some() {
        return why;
    }
    for e in delta.upsert() {
        let key = e.key_id().to_hex();
        let certified = view.replay.key(&e.key_id()).is_some_and(|k| {
            k.revoked_at.is_none()
                && matches!(
                    &k.role,
                    backchannel_core::replay::KeyRole::Device { principal, party, .. }
                        if *principal == e.principal && *party == e.party
                )
        });
        if !certified {
            why.push(format!(
                "key {key} is not a device the record certifies for its member"
            ));
            continue;
        }
        let party_rooms: BTreeSet<RoomId> = roster
            .rooms
            .iter()
            .filter(|d| {
                roster
                    .members
                    .iter()
                    .any(|m| m.member.party == e.party && d.members.contains(&m.principal))
            })
            .map(|d| d.room)
            .collect();
        if let Some(room) = e.rooms().iter().find(|r| !party_rooms.contains(r)) {
            why.push(format!(
                "key {key} would sit in room {}, which the roster does not give {}",
                view.room_name(*room),
                view.party_name(e.party)
            ));
        }
        let mediator = roster
            .parties
            .iter()
            .any(|p| p.party == e.party && p.kind == PartyKind::Mediator);
        if e.has(FLAG_MEDIATOR) != mediator || e.has(FLAG_DESIGNATED_SIGNER) {
            why.push(format!(
                "key {key} would carry flags its role does not have"
            ));
        }
    }
    for k in delta.remove() {
        if current.get(k).is_some_and(|e| e.party == record.party) {
            why.push(format!(
                "it removes key {} of your own party (your members leave through `members \
                 remove`)",
                k.to_hex()
            ));
        }
    }
    why
}

/// What a party checks before it accepts a roster: it lists the party
/// exactly as the party certified it; the node's access list holds every
/// entry the roster implies, and nothing else but devices the record
/// certified since (members admitted later); and no caucus the party sits
/// in seats another delegation.
fn check_roster(
    view: &View,
    verified: &VerifiedRoster,
    list: &AccessList,
    own: &Enrolment,
    party: PartyId,
) -> anyhow::Result<()> {
    let roster = &verified.roster;
    let me = roster
        .parties
        .iter()
        .find(|p| p.party == party)
        .context("the roster does not list your party: do not accept; report it")?;
    ensure!(
        *me == own.entry,
        "the roster lists your party with other keys or another name than you certified: do not \
         accept; report it"
    );
    for m in &own.members {
        ensure!(
            roster.members.contains(m),
            "the roster lists your member {:?} otherwise than you certified: do not accept",
            m.member.name
        );
    }
    for e in verified.access_list.entries() {
        ensure!(
            list.get(&e.key_id()) == Some(e),
            "the node's access list does not hold key {} as the roster implies: do not accept; \
             report it",
            e.key_id().to_hex()
        );
    }
    for e in list.entries() {
        let implied = verified.access_list.get(&e.key_id()).is_some();
        let certified = view.replay.key(&e.key_id()).is_some_and(|k| {
            matches!(k.role, backchannel_core::replay::KeyRole::Device { party, .. } if party == e.party)
        });
        ensure!(
            implied || (certified && e.has(FLAG_DEVICE) && !e.has(FLAG_DESIGNATED_SIGNER)),
            "the node's access list holds key {} that neither the roster nor the record vouches \
             for: do not accept; report it",
            e.key_id().to_hex()
        );
    }
    let kind = |p: PartyId| roster.parties.iter().find(|e| e.party == p).map(|e| e.kind);
    let party_of = |principal: &PrincipalId| {
        roster
            .members
            .iter()
            .find(|m| m.principal == *principal)
            .map(|m| m.member.party)
    };
    for d in &roster.rooms {
        let parties: BTreeSet<PartyId> = d.members.iter().filter_map(party_of).collect();
        if d.purpose == RoomPurpose::Caucus && parties.contains(&party) {
            let others: Vec<String> = parties
                .iter()
                .filter(|p| **p != party && kind(**p) == Some(PartyKind::Party))
                .map(|p| view.party_name(*p))
                .collect();
            ensure!(
                others.is_empty(),
                "the caucus {:?} you sit in also seats {}: do not accept; report it",
                d.name,
                others.join(", ")
            );
        }
    }
    Ok(())
}

/// Prints the ground rules a party is about to accept.
fn print_rules(view: &View) {
    let Some(g) = view.replay.ground_rules() else {
        return;
    };
    println!("ground rules you accept:");
    println!(
        "  default confidentiality {:?}, attribution {:?}",
        g.confidentiality_default, g.attribution_default
    );
    for e in &g.exports {
        println!(
            "  export: {} may export {:?} to {:?}",
            view.party_name(e.party),
            e.scope,
            e.to
        );
    }
    match g.retention_days {
        Some(d) => println!("  bodies purged after {d} days (the record keeps verifying)"),
        None => println!("  bodies kept for the life of the talks"),
    }
    println!(
        "  key verification {:?}; changes by {:?}; calendar {}",
        g.key_verification, g.change_rule, g.calendar.time_zone
    );
}

#[cfg(test)]
mod tests {
    // Test code: a panic is the failure report.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use backchannel_client::participant::PinnedNode;
    use backchannel_core::replay::LoggedStatement;
    use backchannel_node::tls::Fingerprint;
    use backchannel_statement::fixtures::{self, key, labels::*};
    use backchannel_tlog::NodeOrigin;

    /// The reference talks' record (the roster at seq 0) as a view, the
    /// list it implies, and the US head's record.
    fn reference() -> (View, AccessList, TalksRecord) {
        let t = fixtures::talks();
        let roster = t.statement(
            1,
            &key(OMAN_TALKS),
            t.oman,
            Payload::Roster(t.roster.clone()),
        );
        let mut replay = backchannel_core::replay::Replay::new(t.talks);
        replay
            .apply(LoggedStatement {
                seq: 0,
                node_time: 1,
                room: t.record,
                statement: &roster,
            })
            .expect("the roster");
        let view = View {
            archive: vec![],
            replay,
            statements: vec![],
            names: Default::default(),
        };
        let list = t.roster.implied_access_list(t.talks).expect("a list");
        let record = TalksRecord {
            talks: t.talks,
            node: PinnedNode {
                address: "127.0.0.1:1".into(),
                fingerprint: Fingerprint([0; 32]),
                origin: NodeOrigin::new("node.example").expect("origin"),
                log_key: key(NODE_LOG).public_key(),
            },
            party: t.us,
            party_kind: PartyKind::Party,
            party_name: "United States".into(),
            principal: fixtures::PRINCIPALS[1],
            member_name: "US head".into(),
            role: Role::Head,
            record_room: Some(t.record),
            invited: vec![],
            pending_members: vec![],
            verifications: Default::default(),
        };
        (view, list, record)
    }

    fn check(
        delta: impl Fn(
            &AccessList,
            &fixtures::Talks,
        ) -> (Vec<backchannel_crypto::KeyId>, Vec<AccessEntry>),
        want: &[&str],
    ) {
        let (view, list, record) = reference();
        let t = fixtures::talks();
        let (remove, upsert) = delta(&list, &t);
        let d = AccessListDelta::new(t.talks, list.hash(), remove, upsert).expect("a delta");
        let why = unjustified(&view, &record, &list, &d);
        assert_eq!(why.len(), want.len(), "{why:?}");
        for (w, needle) in why.iter().zip(want) {
            assert!(w.contains(needle), "{w:?} lacks {needle:?}");
        }
    }

    /// The entry of `label`'s device on the list, with other rooms or flags.
    fn moved(list: &AccessList, label: u8, rooms: Vec<RoomId>, flags: u8) -> AccessEntry {
        let e = list
            .get(&key(label).public_key().id())
            .expect("on the list");
        AccessEntry::new(*e.key(), e.principal, e.party, rooms, flags).expect("an entry")
    }

    #[test]
    fn cosign_only_what_the_record_justifies() {
        // A roster device in its own rooms: co-signed.
        check(
            |l, t| {
                (
                    vec![],
                    vec![moved(
                        l,
                        US_NEGOTIATOR_DEVICE,
                        vec![t.record, t.us_caucus],
                        FLAG_DEVICE,
                    )],
                )
            },
            &[],
        );
        // A US device in Iran's caucus: refused, naming the room.
        check(
            |l, t| {
                (
                    vec![],
                    vec![moved(
                        l,
                        US_NEGOTIATOR_DEVICE,
                        vec![t.record, t.iran_caucus],
                        FLAG_DEVICE,
                    )],
                )
            },
            &["which the roster does not give"],
        );
        // A delegation's device with the mediator's flag, or any device
        // made a designated signer: refused.
        check(
            |l, t| {
                (
                    vec![],
                    vec![moved(
                        l,
                        US_HEAD_DEVICE,
                        vec![t.record],
                        FLAG_DEVICE | FLAG_MEDIATOR,
                    )],
                )
            },
            &["flags"],
        );
        check(
            |l, t| {
                (
                    vec![],
                    vec![moved(
                        l,
                        US_HEAD_DEVICE,
                        vec![t.record],
                        FLAG_DEVICE | FLAG_DESIGNATED_SIGNER,
                    )],
                )
            },
            &["flags"],
        );
        // A key the record does not certify: refused.
        check(
            |_, t| {
                let stranger = key(0x77).public_key();
                let e = AccessEntry::new(
                    stranger,
                    fixtures::PRINCIPALS[1],
                    t.us,
                    vec![t.record],
                    FLAG_DEVICE,
                )
                .expect("an entry");
                (vec![], vec![e])
            },
            &["not a device the record certifies"],
        );
        // Removing a key of one's own party: refused; another party's: not
        // this participant's to refuse (that party must sign it anyway).
        check(
            |_, _| (vec![key(US_NEGOTIATOR_DEVICE).public_key().id()], vec![]),
            &["of your own party"],
        );
        check(
            |_, _| (vec![key(IRAN_HEAD_DEVICE).public_key().id()], vec![]),
            &[],
        );
    }
}
