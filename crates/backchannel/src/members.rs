//! `backchannel members add|join|admit|remove`: a party's members.
//!
//! Adding takes one hand-over each way, so that a member's secret keys
//! never leave their own home: the talks-authority holder writes a member
//! invitation (`members add`: pin, talks, party, the new principal id);
//! the new member's home makes its identity and device keys, signs a
//! device certificate with the identity key and writes a reply (`members
//! join`); the talks-authority holder checks the reply against what it
//! invited, posts a member certificate (its talks authority) and the
//! member's device certificate to the record room, and proposes the
//! access-list change seating the device in the rooms its own device is
//! in (`members admit`). That change alters rooms' membership, so under
//! the change rule the mediator and every party in those rooms co-sign it
//! (`talks cosign`, which co-signs only devices the record certifies).
//!
//! Removing (`members remove`):
//! The party's talks authority signs a revocation of the member's identity
//! key and of each of their device keys, posted to the record room (so
//! every participant's replay rejects whatever those keys sign later, by
//! log position), and then the access-list change that takes the devices
//! off the list (a removal by the party's designated signer needs no other
//! signature under the change rule), so the node refuses them from then on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail, ensure};
use backchannel_client::participant::{
    self as talks_store, MemberInvitationDoc, MemberReplyDoc, PendingMember, TalksRecord,
};
use backchannel_client::seal::Content;
use backchannel_client::store::{ClientStore as _, Namespace, Put};
use backchannel_codec::PrincipalId;
use backchannel_core::replay::KeyRole;
use backchannel_crypto::{KeyId, SecretKey};
use backchannel_statement::{
    AccessListChange, AccessListDelta, MemberCert, Payload, Revoke, RevokeReason, SignedStatement,
};
use serde::Serialize;

use crate::cli::{
    KeyKindArg, MembersAddArgs, MembersAdmitArgs, MembersCommand, MembersJoinArgs,
    MembersRecoverArgs, MembersRemoveArgs, RevokeReasonArg,
};
use crate::participant::{self, View, now_ms, refresh};
use crate::{home, keys};

#[derive(Serialize)]
struct Removed {
    member: String,
    principal: String,
    revoked: Vec<String>,
    revocation_seqs: Vec<u64>,
    devices_removed: usize,
}

/// Runs one `members` command.
pub fn main(home_dir: Option<PathBuf>, command: MembersCommand) -> anyhow::Result<()> {
    match command {
        MembersCommand::Remove(a) => remove(home_dir, a),
        MembersCommand::Add(a) => add(home_dir, a),
        MembersCommand::Join(a) => join(home_dir, a),
        MembersCommand::Admit(a) => admit(home_dir, a),
        MembersCommand::Recover(a) => recover(home_dir, a),
    }
}

#[derive(Serialize)]
struct AddedOut {
    principal: String,
    invitation: PathBuf,
}

fn add(home_dir: Option<PathBuf>, a: MembersAddArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    crate::talks::check_name("--name", &a.name)?;
    home::block_on(async move {
        let mut ctx = participant::open(&dir, &a.talks).await?;
        ctx.key(KeyKindArg::TalksAuthority).await.map_err(|_| {
            anyhow!("only the home holding your party's talks authority adds members: run this from the home that joined the talks for your party")
        })?;
        let role = a.role.role();
        ensure!(
            role.party_kind() == ctx.record.party_kind,
            "--role {} is not a role of your kind of party; a delegation's members are head, negotiator, expert, legal, note-taker, interpreter or principal, a mediator team's lead, co-mediator or staff",
            role.name()
        );
        room_for_one_more(&ctx.record)?;
        let principal = PrincipalId(participant::random16());
        let doc = invitation(&ctx.record, principal, &a.name, role)?;
        participant::write_secret(&a.out, doc.to_json().as_bytes())?;
        ctx.record.pending_members.push(PendingMember {
            principal,
            role,
            name: a.name.clone(),
        });
        ctx.save().await?;
        ctx.close().await;
        let out = AddedOut {
            principal: principal.to_hex(),
            invitation: a.out.clone(),
        };
        if a.talks.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            println!(
                "wrote the member invitation to {}: hand it to {} over a channel the node does \
                 not control; admit their reply with `backchannel members admit --reply <file>`",
                a.out.display(),
                a.name
            );
        }
        Ok(())
    })
}

#[derive(Serialize)]
struct MemberJoined {
    talks: String,
    principal: String,
    reply: PathBuf,
    recovery_sheet: Option<PathBuf>,
}

fn join(home_dir: Option<PathBuf>, a: MembersJoinArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    let text = participant::read_document(&a.invitation, "member invitation")?;
    let doc = MemberInvitationDoc::parse(&text).map_err(|e| {
        anyhow!(
            "{} is not a member invitation ({e}); ask your party for a new one",
            a.invitation.display()
        )
    })?;
    // The sheet is read, and checked against the invitation, before the
    // home is touched.
    let from_sheet = match &a.from_sheet {
        None => None,
        Some(path) => {
            let text = participant::read_document(path, "recovery sheet")?;
            let r = backchannel_client::recovery::parse(&text).map_err(|e| {
                anyhow!("{} does not read as a recovery sheet: {e}", path.display())
            })?;
            ensure!(
                r.talks.is_none_or(|t| t == doc.talks),
                "the recovery sheet is for other talks than this invitation"
            );
            ensure!(
                r.principal.is_none_or(|p| p == doc.principal),
                "the recovery sheet is for another member than this invitation"
            );
            Some(r)
        }
    };
    check_sheet_path(a.recovery_sheet.as_deref())?;
    ensure!(
        !a.out.exists(),
        "{} exists; choose another --out",
        a.out.display()
    );
    ensure!(
        a.recovery_sheet.as_deref() != Some(a.out.as_path()),
        "--out and --recovery-sheet name the same file; give each its own"
    );
    home::block_on(async move {
        let store = home::open(&dir, &a.passphrase).await?;
        if talks_store::load(&store, doc.talks).await?.is_some() {
            bail!(
                "this home already takes part in talks {}; join with a new home (`backchannel home init --home <DIR>`)",
                doc.talks
            );
        }
        let t = Some(doc.talks);
        let identity = match &from_sheet {
            Some(recovered) => {
                keys::store_given(
                    &store,
                    KeyKindArg::Identity,
                    t,
                    participant::LABEL,
                    &recovered.identity,
                    false,
                    Vec::new(),
                )
                .await?;
                keys::load(&store, KeyKindArg::Identity, t, participant::LABEL)
                    .await?
                    .context("the identity key just stored cannot be read back")?
            }
            None => {
                keys::load_or_generate(&store, KeyKindArg::Identity, t, participant::LABEL).await?
            }
        };
        let device =
            keys::load_or_generate(&store, KeyKindArg::Device, t, participant::LABEL).await?;
        let record = TalksRecord {
            talks: doc.talks,
            node: doc.node.clone(),
            party: doc.party,
            party_kind: doc.role.party_kind(),
            party_name: doc.party_name.clone(),
            principal: doc.principal,
            member_name: doc.name.clone(),
            role: doc.role,
            record_room: Some(doc.record_room),
            invited: vec![],
            pending_members: vec![],
            verifications: Default::default(),
        };
        let reply = crate::link::request_for(&record, &identity, &device)?;
        participant::write_secret(&a.out, reply.to_json().as_bytes())?;
        talks_store::create(&store, &record).await?;
        store.close().await;
        let sheet = write_sheet_or_say(a.recovery_sheet.as_deref(), &record, &identity);
        let out = MemberJoined {
            talks: doc.talks.to_hex(),
            principal: doc.principal.to_hex(),
            reply: a.out.clone(),
            recovery_sheet: sheet.clone(),
        };
        if a.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            println!(
                "wrote your reply to {}: hand it back; once you are admitted and seated, \
                 `backchannel read` works from this home",
                a.out.display()
            );
            if let Some(path) = &sheet {
                println!("{}", sheet_written(path));
            }
            eprintln!("note: {}", crate::restore::BEFORE_A_BACKUP);
            eprintln!("note: {}", crate::talks::NO_DENIABILITY);
        }
        Ok(())
    })
}

/// Refuses a `--recovery-sheet` path that exists or whose directory does
/// not, before anything is made.
pub fn check_sheet_path(path: Option<&Path>) -> anyhow::Result<()> {
    if let Some(path) = path {
        ensure!(
            !path.exists(),
            "{} exists; choose another --recovery-sheet",
            path.display()
        );
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        ensure!(
            parent.is_dir(),
            "{} is not a directory; choose a --recovery-sheet in one that exists",
            parent.display()
        );
    }
    Ok(())
}

/// Writes the recovery sheet of `identity`, the identity key of the member
/// `record` names, to `path` (new, owner-only).
pub fn write_sheet(path: &Path, record: &TalksRecord, identity: &SecretKey) -> anyhow::Result<()> {
    let sheet = backchannel_client::recovery::sheet(
        record.talks,
        &record.party_name,
        &record.member_name,
        record.principal,
        identity,
    );
    participant::write_secret(path, sheet.as_bytes())
        .with_context(|| format!("writing the recovery sheet {}", path.display()))
}

/// Writes the recovery sheet `path` asks for, if any, once the talks
/// record is kept: the path written, or `None` with the reason on stderr
/// (the command has already done its work, so it does not fail for the
/// sheet; the user is told what a missing sheet means).
pub fn write_sheet_or_say(
    path: Option<&Path>,
    record: &TalksRecord,
    identity: &SecretKey,
) -> Option<PathBuf> {
    let path = path?;
    match write_sheet(path, record, identity) {
        Ok(()) => Some(path.to_path_buf()),
        Err(e) => {
            eprintln!(
                "warning: no recovery sheet: {e:#}; everything else is done, but without a sheet a \
                 lost identity key is replaced by a new one your talks authority certifies \
                 (`members recover`)"
            );
            None
        }
    }
}

/// What a command says once it wrote a recovery sheet to `path`.
pub fn sheet_written(path: &Path) -> String {
    format!(
        "wrote your recovery sheet to {}: print it, keep it offline, and delete the file; it \
         re-issues your identity key if every device is lost (your talks authority runs \
         `members recover`, you `members join --from-sheet`)",
        path.display()
    )
}

/// What `talks open` and `talks join` say once they wrote a recovery sheet
/// to `path`: the home that made the identity key also holds the party's
/// talks authority and long-term authority, which the sheet does not
/// bring back.
pub fn sheet_written_with_authority(path: &Path) -> String {
    format!(
        "{}. This home also holds your party's talks authority, which the sheet does not bring \
         back: the sheet helps once that authority is held by another home (`talks authority \
         claim|pass`); against losing this home itself, keep a backup (`home backup`)",
        sheet_written(path)
    )
}

#[derive(Serialize)]
struct Admitted {
    principal: String,
    member_cert_seq: u64,
    device_cert_seq: u64,
    applied: bool,
    /// A member being recovered: their earlier keys, revoked as lost.
    revoked_as_lost: Vec<String>,
}

fn admit(home_dir: Option<PathBuf>, a: MembersAdmitArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    let text = participant::read_document(&a.reply, "member's reply")?;
    let reply = MemberReplyDoc::parse(&text).map_err(|e| {
        anyhow!(
            "{} is not a member's reply ({e}); ask the member to send it again",
            a.reply.display()
        )
    })?;
    home::block_on(async move {
        let ctx = participant::open(&dir, &a.talks).await?;
        ensure!(
            reply.talks == ctx.talks(),
            "the reply is for talks {}, not these; pass --talks {}",
            reply.talks,
            reply.talks
        );
        let ta = ctx.key(KeyKindArg::TalksAuthority).await.map_err(|_| {
            anyhow!("only the home holding your party's talks authority admits members: run this from the home that invited them")
        })?;
        let Some(pending) = ctx
            .record
            .pending_members
            .iter()
            .find(|p| p.principal == reply.principal)
            .cloned()
        else {
            bail!(
                "you did not invite member {}; `members add` first",
                reply.principal
            );
        };
        // The device certificate: the member's identity key, for the
        // device key the reply names, in this talks and party.
        let cert = SignedStatement::decode(&reply.device_cert)
            .map_err(|e| anyhow!("the reply's device certificate does not decode ({e}); ask the member to run `members join` again"))?;
        let verified = cert.verify(ctx.talks(), &reply.identity_key).map_err(|e| {
            anyhow!("the reply's device certificate is not signed by its identity key ({e}); do not admit it: ask the member, over another channel, to send it again")
        })?;
        let st = verified.statement();
        let ok = st.talks == ctx.talks()
            && st.acting_for == ctx.record.party
            && matches!(&st.payload, Payload::DeviceCert(c)
                if c.principal == reply.principal && c.device_key == reply.device_key);
        ensure!(
            ok,
            "the reply's device certificate is not for this member's device in your party; do not admit it: ask the member to send it again"
        );
        let mut s = ctx.session().await?;
        let view = refresh(&ctx, &mut s).await?;
        // Each step is skipped when an earlier, interrupted run did it: a
        // member certificate for this principal, the device certificate,
        // the device on the list.
        let logged = |f: &dyn Fn(&Payload) -> bool| {
            view.statements
                .iter()
                .filter(|l| l.verdict.is_ok())
                .find(|l| f(&l.statement.unverified().payload))
                .map(|l| l.seq)
        };
        let member_logged = logged(&|p| {
            matches!(p, Payload::MemberCert(c)
                if c.principal == reply.principal && c.identity_key == reply.identity_key)
        });
        // A member being recovered (`members recover`) answers with the
        // identity key the record already certifies for them (from their
        // recovery sheet), or with a new one.
        let known = view.replay.key(&reply.identity_key.id());
        let theirs = known.filter(|k| {
            matches!(k.role, KeyRole::Identity { principal, party, .. }
                if principal == reply.principal && party == ctx.record.party)
        });
        ensure!(
            known.is_none() || theirs.is_some(),
            "the reply's identity key is already in the record for someone else; ask the member to join again from a new home"
        );
        if let Some(k) = theirs {
            ensure!(
                k.revoked_at.is_none(),
                "the reply's identity key is revoked in the record (seq {}); ask the member to \
                 join again without --from-sheet, for a new identity key",
                k.revoked_at.unwrap_or_default()
            );
        }
        let member_logged = member_logged.or(theirs.map(|k| k.valid_from));
        // A member this home is recovering (`members recover`): every other
        // key of theirs still valid — earlier identity keys, the lost
        // devices — is revoked as lost at the time recover was given, and
        // the devices taken off the list. (Without it, a second identity
        // key for a member is a second device's, and nothing is revoked.)
        let recovering = recovering(&ctx, reply.principal).await?;
        let lost: Vec<KeyId> = match recovering {
            None => Vec::new(),
            Some(_) => certified_member_keys(&view)
                .into_iter()
                .filter(|id| {
                    *id != reply.identity_key.id()
                        && *id != reply.device_key.id()
                        && view.replay.key(id).is_some_and(|k| {
                            k.revoked_at.is_none()
                                && match k.role {
                                    KeyRole::Identity { principal, .. }
                                    | KeyRole::Device { principal, .. } => {
                                        principal == reply.principal
                                    }
                                    KeyRole::TalksAuthority { .. } => false,
                                }
                        })
                })
                .collect(),
        };
        let device_logged = logged(&|p| {
            matches!(p, Payload::DeviceCert(c)
                if c.principal == reply.principal && c.device_key == reply.device_key)
        });
        let current = s.node().access_list(ctx.talks()).await?;
        ensure!(
            !(member_logged.is_some()
                && device_logged.is_some()
                && current.list.get(&reply.device_key.id()).is_some()),
            "this member is already admitted and seated"
        );
        let room = ctx.record.record_room.context("no record room yet")?;
        let member_cert_seq = match member_logged {
            Some(seq) => seq,
            None => {
                let member_cert = crate::talks::statement(
                    &ta,
                    &ctx.record,
                    room,
                    s.checkpoint_ref(),
                    Payload::MemberCert(MemberCert::new(
                        reply.principal,
                        ctx.record.party,
                        pending.role,
                        reply.identity_key,
                        crate::talks::acts_of(pending.role),
                        None,
                    )?),
                )?;
                participant::post(
                    &mut s,
                    room,
                    Content::Statement(member_cert.as_bytes().to_vec()),
                )
                .await?
            }
        };
        for old in &lost {
            let revoke = crate::talks::statement(
                &ta,
                &ctx.record,
                room,
                s.checkpoint_ref(),
                Payload::Revoke(Revoke {
                    key: *old,
                    reason: RevokeReason::Lost,
                    lost_at: recovering,
                }),
            )?;
            participant::post(&mut s, room, Content::Statement(revoke.as_bytes().to_vec())).await?;
        }
        // The lost devices off the list (a removal the party's designated
        // signer makes alone).
        let gone: Vec<KeyId> = lost
            .iter()
            .copied()
            .filter(|k| current.list.get(k).is_some())
            .collect();
        let current = if gone.is_empty() {
            current
        } else {
            let delta = AccessListDelta::new(ctx.talks(), current.list.hash(), gone, vec![])?;
            let change = AccessListChange::new(delta.clone(), vec![delta.sign(&ta)?])?;
            participant::submit_change(&ctx, &ta, &change).await?;
            s.node().access_list(ctx.talks()).await?
        };
        let device_cert_seq = match device_logged {
            Some(seq) => seq,
            None => {
                participant::post(&mut s, room, Content::Statement(reply.device_cert.clone()))
                    .await?
            }
        };
        // Seat the device where the member's devices sit (a member being
        // recovered), else where this participant's own device sits.
        let (applied, missing) = if current.list.get(&reply.device_key.id()).is_some() {
            (true, None)
        } else {
            let outcome = crate::link::propose_seat(
                &ctx,
                &s,
                &ta,
                &view,
                &current.list,
                reply.principal,
                reply.device_key,
            )
            .await?;
            (outcome.applied, outcome.missing)
        };
        if recovering.is_some() {
            ctx.store
                .put_many(vec![recovering_put(&ctx, reply.principal, None)])
                .await?;
        }
        ctx.close().await;
        let out = Admitted {
            principal: reply.principal.to_hex(),
            member_cert_seq,
            device_cert_seq,
            applied,
            revoked_as_lost: lost.iter().map(KeyId::to_hex).collect(),
        };
        if a.talks.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            if !lost.is_empty() {
                println!(
                    "recovered: revoked {} earlier key(s) of {} as lost and took their devices \
                     off the list: {}",
                    lost.len(),
                    pending.name,
                    lost.iter()
                        .map(|k| k.to_hex()[..16].to_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            println!(
                "certified {} in the record (seqs {} and {}); the change seating their device {}",
                pending.name,
                out.member_cert_seq,
                out.device_cert_seq,
                if out.applied {
                    "applied".to_owned()
                } else {
                    format!(
                        "waits for co-signatures ({}): the mediator and the other parties run \
                         `backchannel talks cosign`",
                        missing.unwrap_or_default()
                    )
                }
            );
        }
        Ok(())
    })
}

/// `--lost-at` of a revocation for `reason`, checked before anything is
/// opened: the time given (UTC, not after `now`), `now` when none is given
/// for a loss or a compromise, none otherwise; refused with any other
/// reason (`Revoke` carries a loss time only for those two). `members
/// remove` and `device revoke` share it.
pub fn lost_at(reason: RevokeReason, given: Option<&str>, now: u64) -> anyhow::Result<Option<u64>> {
    match (given, reason) {
        (None, RevokeReason::Lost | RevokeReason::Compromised) => Ok(Some(now)),
        (None, _) => Ok(None),
        (Some(t), RevokeReason::Lost | RevokeReason::Compromised) => {
            let t = crate::say::parse_utc(t).map_err(|e| anyhow!("--lost-at: {e}"))?;
            ensure!(
                t <= now,
                "--lost-at lies in the future ({}); give the time the keys were lost",
                crate::say::utc(t)
            );
            Ok(Some(t))
        }
        (Some(_), _) => {
            bail!("--lost-at goes with --reason lost or --reason compromised; nothing was changed")
        }
    }
}

/// Your party's members, as the replayed record knows them: the roster's,
/// and those certified since (named as this home invited them, or, for
/// this home's own member, as it joined; else by their principal id).
pub fn party_members(ctx: &participant::Ctx, view: &View) -> Vec<(PrincipalId, String)> {
    let mut members: Vec<(PrincipalId, String)> = view
        .roster()
        .into_iter()
        .flat_map(|r| r.members.iter())
        .filter(|m| m.member.party == ctx.record.party)
        .map(|m| (m.member.principal, m.member.name.clone()))
        .collect();
    for l in &view.statements {
        if let (Ok(()), Payload::MemberCert(c)) = (&l.verdict, &l.statement.unverified().payload)
            && c.party == ctx.record.party
            && !members.iter().any(|(p, _)| *p == c.principal)
        {
            let name = if c.principal == ctx.record.principal {
                ctx.record.member_name.clone()
            } else {
                ctx.record
                    .pending_members
                    .iter()
                    .find(|p| p.principal == c.principal)
                    .map_or_else(|| c.principal.to_hex(), |p| p.name.clone())
            };
            members.push((c.principal, name));
        }
    }
    members
}

/// The one member of `members` that `query` names: their name (any case)
/// or their principal id.
pub fn find_member(
    members: &[(PrincipalId, String)],
    query: &str,
) -> anyhow::Result<(PrincipalId, String)> {
    let q = query.to_lowercase();
    let by_id = PrincipalId::from_hex(query).ok();
    let matching: Vec<_> = members
        .iter()
        .filter(|(p, name)| Some(*p) == by_id || name.to_lowercase() == q)
        .collect();
    match matching.as_slice() {
        [one] => Ok((one.0, one.1.clone())),
        [] => bail!(
            "your party has no member {query:?}; its members: {}",
            members
                .iter()
                .map(|(p, n)| format!("{n:?} ({})", p.to_hex()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => bail!("several members are called {query:?}; give the principal id"),
    }
}

/// Every member key the record certified, of any party: the roster's
/// identity keys and devices, and the member and device certificates
/// replay accepted since. (Replay says whose each is: `view.replay.key`.)
pub fn certified_member_keys(view: &View) -> BTreeSet<KeyId> {
    let mut keys: BTreeSet<KeyId> = BTreeSet::new();
    for m in view.roster().into_iter().flat_map(|r| r.members.iter()) {
        keys.insert(m.member.identity_key.id());
        keys.extend(m.member.devices.iter().map(|d| d.id()));
    }
    for l in view.statements.iter().filter(|l| l.verdict.is_ok()) {
        match &l.statement.unverified().payload {
            Payload::DeviceCert(c) => {
                keys.insert(c.device_key.id());
            }
            Payload::MemberCert(c) => {
                keys.insert(c.identity_key.id());
            }
            _ => {}
        }
    }
    keys
}

#[derive(Serialize)]
struct Recovering {
    member: String,
    principal: String,
    invitation: PathBuf,
}

/// Runs `members recover`: a member invitation, again, for a member of the
/// party who lost every device.
fn recover(home_dir: Option<PathBuf>, a: MembersRecoverArgs) -> anyhow::Result<()> {
    let lost_at = lost_at(RevokeReason::Lost, a.lost_at.as_deref(), now_ms())?
        .context("a loss has a time")?;
    let dir = home::resolve(home_dir)?;
    ensure!(
        !a.out.exists(),
        "{} exists; choose another --out",
        a.out.display()
    );
    home::block_on(async move {
        let mut ctx = participant::open(&dir, &a.talks).await?;
        ctx.key(KeyKindArg::TalksAuthority).await.map_err(|_| {
            anyhow!("only the home holding your party's talks authority recovers members: run this from the home that joined the talks for your party")
        })?;
        let mut s = ctx.session().await?;
        let view = refresh(&ctx, &mut s).await?;
        let members = party_members(&ctx, &view);
        let (principal, name) = find_member(&members, &a.member)?;
        ensure!(
            principal != ctx.record.principal,
            "you cannot recover yourself from this home: it holds your keys"
        );
        // The member's role: from their latest identity key the record
        // certifies.
        let role = certified_member_keys(&view)
            .into_iter()
            .filter_map(|id| view.replay.key(&id))
            .filter_map(|k| match k.role {
                KeyRole::Identity {
                    principal: p, role, ..
                } if p == principal => Some((k.valid_from, role)),
                _ => None,
            })
            .max_by_key(|(seq, _)| *seq)
            .map(|(_, role)| role)
            .context("the record certifies no identity key for that member")?;
        let doc = invitation(&ctx.record, principal, &name, role)?;
        let pending = ctx
            .record
            .pending_members
            .iter()
            .any(|p| p.principal == principal);
        // Checked before anything is written.
        if !pending {
            room_for_one_more(&ctx.record)?;
        }
        participant::write_secret(&a.out, doc.to_json().as_bytes())?;
        ctx.store
            .put_many(vec![recovering_put(&ctx, principal, Some(lost_at))])
            .await?;
        if !pending {
            ctx.record.pending_members.push(PendingMember {
                principal,
                role,
                name: name.clone(),
            });
            ctx.save().await?;
        }
        ctx.close().await;
        let out = Recovering {
            member: name.clone(),
            principal: principal.to_hex(),
            invitation: a.out.clone(),
        };
        if a.talks.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            println!(
                "wrote a member invitation for {name} to {}: they join from a new home with \
                 `backchannel members join --invitation <file> --out <reply>` (adding \
                 `--from-sheet <sheet>` if they kept their recovery sheet); check who answers \
                 before you admit the reply (`members admit`): without the sheet you certify a \
                 new identity key for them, and the old one is revoked",
                a.out.display()
            );
        }
        Ok(())
    })
}

/// Whether this home may remember one more invited member.
fn room_for_one_more(record: &TalksRecord) -> anyhow::Result<()> {
    ensure!(
        record.pending_members.len() < backchannel_client::participant::MAX_INVITED_MEMBERS,
        "this home has invited {} members into these talks, the most it keeps; another member \
         holding your party's talks authority can invite more",
        backchannel_client::participant::MAX_INVITED_MEMBERS
    );
    Ok(())
}

/// The member invitation for `principal` (`name`, `role`) of this home's
/// party, once the roster has come (it names the record room).
fn invitation(
    record: &TalksRecord,
    principal: PrincipalId,
    name: &str,
    role: backchannel_statement::Role,
) -> anyhow::Result<MemberInvitationDoc> {
    let record_room = record
        .record_room
        .context("the roster has not reached you: run `backchannel talks accept` first")?;
    Ok(MemberInvitationDoc {
        node: record.node.clone(),
        talks: record.talks,
        party: record.party,
        party_name: record.party_name.clone(),
        principal,
        name: name.to_owned(),
        role,
        record_room,
    })
}

/// The store key of "this home is recovering `principal`".
fn recovering_key(ctx: &participant::Ctx, principal: PrincipalId) -> Vec<u8> {
    let mut k = b"backchannel/v1/home/recovering/".to_vec();
    k.extend_from_slice(ctx.talks().as_bytes());
    k.extend_from_slice(principal.as_bytes());
    k
}

/// When `principal`'s keys were lost, if this home is recovering them
/// (`members recover`, until `members admit` seats them again).
async fn recovering(ctx: &participant::Ctx, principal: PrincipalId) -> anyhow::Result<Option<u64>> {
    let Some(b) = ctx
        .store
        .get(Namespace::Talks, &recovering_key(ctx, principal))
        .await?
    else {
        return Ok(None);
    };
    let b: [u8; 8] = b
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("the home's record of a member being recovered is damaged"))?;
    Ok(Some(u64::from_be_bytes(b)))
}

/// The write that records (`Some(lost_at)`) or clears (`None`) that this
/// home is recovering `principal`.
fn recovering_put(ctx: &participant::Ctx, principal: PrincipalId, lost_at: Option<u64>) -> Put {
    Put {
        ns: Namespace::Talks,
        key: recovering_key(ctx, principal),
        value: lost_at.map(|t| t.to_be_bytes().to_vec()),
    }
}

/// Runs `members remove`.
fn remove(home_dir: Option<PathBuf>, a: MembersRemoveArgs) -> anyhow::Result<()> {
    // Arguments first: nothing is opened, synced or posted for a bad one.
    let reason = match a.reason {
        RevokeReasonArg::Left => RevokeReason::Left,
        RevokeReasonArg::Lost => RevokeReason::Lost,
        RevokeReasonArg::Compromised => RevokeReason::Compromised,
    };
    let lost_at = lost_at(reason, a.lost_at.as_deref(), now_ms())?;
    let dir = home::resolve(home_dir)?;
    home::block_on(async move {
        let ctx = participant::open(&dir, &a.talks).await?;
        let ta = ctx.key(KeyKindArg::TalksAuthority).await.map_err(|_| {
            anyhow!("only the home holding your party's talks authority removes members: run this from the home that joined the talks for your party")
        })?;
        let mut s = ctx.session().await?;
        let view = refresh(&ctx, &mut s).await?;
        view.roster()
            .context("the roster has not reached you: run `backchannel talks accept` first")?;
        let (principal, name) = find_member(&party_members(&ctx, &view), &a.member)?;
        ensure!(
            principal != ctx.record.principal,
            "you cannot remove yourself; another member holding your party's talks authority can"
        );
        // Every key of that member the record certified: the roster's, and
        // member and device certificates since.
        let live: Vec<KeyId> = certified_member_keys(&view)
            .into_iter()
            .filter(|k| {
                view.replay.key(k).is_some_and(|st| {
                    st.revoked_at.is_none()
                        && matches!(st.role,
                            KeyRole::Identity { principal: p, .. } | KeyRole::Device { principal: p, .. }
                                if p == principal)
                })
            })
            .collect();
        let room = ctx
            .record
            .record_room
            .context("the talks have no record room yet")?;
        let mut seqs = Vec::new();
        for key in &live {
            let st = crate::talks::statement(
                &ta,
                &ctx.record,
                room,
                s.checkpoint_ref(),
                Payload::Revoke(Revoke {
                    key: *key,
                    reason,
                    lost_at,
                }),
            )?;
            seqs.push(
                participant::post(&mut s, room, Content::Statement(st.as_bytes().to_vec())).await?,
            );
        }
        // Off the access list.
        let current = s.node().access_list(ctx.talks()).await?;
        let remove: Vec<KeyId> = current
            .list
            .entries()
            .iter()
            .filter(|e| e.principal == principal && e.party == ctx.record.party)
            .map(|e| e.key_id())
            .collect();
        if !remove.is_empty() {
            let delta =
                AccessListDelta::new(ctx.talks(), current.list.hash(), remove.clone(), vec![])?;
            let change = AccessListChange::new(delta.clone(), vec![delta.sign(&ta)?])?;
            let outcome = participant::submit_change(&ctx, &ta, &change).await?;
            ensure!(
                outcome.applied,
                "the node did not apply the removal ({}); the revocations are logged: run `members remove` again",
                outcome.missing.unwrap_or_default()
            );
        }
        ctx.close().await;
        let out = Removed {
            member: name,
            principal: principal.to_hex(),
            revoked: live.iter().map(KeyId::to_hex).collect(),
            revocation_seqs: seqs,
            devices_removed: remove.len(),
        };
        if a.talks.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            println!(
                "removed {}: revoked {} keys in the record (seqs {:?}) and took {} devices off \
                 the access list",
                out.member,
                out.revoked.len(),
                out.revocation_seqs,
                out.devices_removed
            );
        }
        Ok(())
    })
}
