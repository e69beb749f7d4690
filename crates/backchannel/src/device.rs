//! `backchannel device list|revoke`: one member's devices (`link` and
//! `seat` are in [`crate::link`]).
//!
//! Listing shows the devices of this home's member (or, with `--member`,
//! of another member of its party) as the replayed record and the node's
//! access list know them: certified at which seq, on the list or not,
//! revoked (seq, reason, loss time) or not, and which is this home's.
//!
//! Revoking one device (`docs/formats.md` §10 rule 4) is for two homes:
//! - another device of the same member, holding an identity key the
//!   record certifies for that member: the identity key signs the
//!   revocation, and this device signs the removal from the access list
//!   (the change rule lets a device remove any device of its own
//!   principal; an identity key is never on the list, so it cannot sign a
//!   change the node applies);
//! - the party's talks-authority home, for any device of its party's
//!   members: its talks authority signs both (the party's designated
//!   signer needs no other signature for a removal).
//!
//! The revocation goes to the record room (every replay rejects what the
//! key signs after it, by log position, and views flag what the device
//! sent from the first seq the node stamped at or after `lost_at`), the
//! removal to the node (which then refuses the device), and this device's
//! room sync commits the removal in every room it shares with the revoked
//! device. A revocation is dry-run through replay before it is signed.
//!
//! The node applies a change its signatures complete from any member's
//! connection (a removal of a device of one's own principal, signed by
//! another device of it, is complete), and keeps a change waiting for
//! signatures only from a connection that may propose (`FLAG_MAY_PROPOSE`)
//! or a designated signer. Should the node still refuse the removal, the
//! revocation is logged, the command says so, and the talks-authority home
//! finishes it with the same command (a device already revoked but still
//! on the list is only taken off it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail, ensure};
use backchannel_client::seal::Content;
use backchannel_codec::{PartyId, PrincipalId, RoomId};
use backchannel_core::replay::{KeyRole, LoggedStatement};
use backchannel_crypto::{KeyId, PublicKey, SecretKey, Signer as _};
use backchannel_statement::access_list::{FLAG_DESIGNATED_SIGNER, FLAG_DEVICE, FLAG_MAY_PROPOSE};
use backchannel_statement::{
    AccessList, AccessListChange, AccessListDelta, Payload, Revoke, RevokeReason,
};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::cli::{EXIT_CODES, KeyKindArg, TalksArgs};
use crate::participant::{self, LABEL, View, now_ms, refresh};
use crate::{home, keys, members};

/// `backchannel device …`.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List your devices (or, with --member, another member's of your
    /// party): key id, certified at which seq, on the node's access list,
    /// revoked (seq, reason, when lost), and which one is this home's.
    #[command(after_help = EXIT_CODES)]
    List(DeviceListArgs),
    /// Revoke one device: from another device of yours (your identity key
    /// signs), or from your party's talks-authority home for any device of
    /// your party's members. Posts the revocation to the record, takes the
    /// device off the access list, and removes it from the MLS groups of
    /// the rooms this device shares with it.
    #[command(after_help = EXIT_CODES)]
    Revoke(DeviceRevokeArgs),
    /// Add a device of yours through a short code: `--out OFFER` on this
    /// device prints the code; `--offer OFFER --code CODE --out REQUEST`
    /// on the new device (a home of its own); `--request REQUEST` back on
    /// this device seats it; once the new device has run a command,
    /// `--history` on this device adds it to your rooms and hands it your
    /// history.
    #[command(after_help = EXIT_CODES)]
    Link(crate::link::DeviceLinkArgs),
    /// Seat a new device key of a member of your party from its request
    /// (a linked device, a restored home, a recovered member): posts its
    /// device certificate and proposes the access-list change.
    #[command(after_help = EXIT_CODES)]
    Seat(crate::link::DeviceSeatArgs),
}

/// `backchannel device list`.
#[derive(Debug, Args)]
pub struct DeviceListArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// Another member of your party, by name or principal id (32 hex
    /// digits): list their devices instead of yours.
    #[arg(long)]
    pub member: Option<String>,
}

/// Why a device is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceRevokeReason {
    /// The device was lost.
    Lost,
    /// The device's key is known or suspected to be compromised.
    Compromised,
    /// The device was replaced by another one.
    Superseded,
}

impl DeviceRevokeReason {
    fn reason(self) -> RevokeReason {
        match self {
            Self::Lost => RevokeReason::Lost,
            Self::Compromised => RevokeReason::Compromised,
            Self::Superseded => RevokeReason::Superseded,
        }
    }
}

/// `backchannel device revoke`.
#[derive(Debug, Args)]
pub struct DeviceRevokeArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The device: its key id (64 hex digits, as `backchannel device list`
    /// prints it), or the first 8 or more of them when they name one
    /// device only.
    #[arg(value_name = "DEVICE")]
    pub device: String,
    /// Why.
    #[arg(long, value_enum, default_value = "lost")]
    pub reason: DeviceRevokeReason,
    /// With --reason lost or compromised: when the device was lost, in UTC
    /// (2026-11-30T09:00Z; default now). Everything it sent from the first
    /// seq the node stamped at or after it is flagged in every view, even
    /// before this revocation is logged.
    #[arg(long, value_name = "UTC")]
    pub lost_at: Option<String>,
}

/// Runs one `device` command.
pub fn main(home_dir: Option<PathBuf>, command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::List(a) => list(home_dir, a),
        DeviceCommand::Revoke(a) => revoke(home_dir, a),
        DeviceCommand::Link(a) => crate::link::link(home_dir, a),
        DeviceCommand::Seat(a) => crate::link::seat_command(home_dir, a),
    }
}

/// The shortest prefix of a key id a user may give for a device.
pub const MIN_PREFIX: usize = 8;

/// A reason's name, as the CLI spells it.
fn reason_name(r: RevokeReason) -> &'static str {
    match r {
        RevokeReason::Superseded => "superseded",
        RevokeReason::Lost => "lost",
        RevokeReason::Compromised => "compromised",
        RevokeReason::Left => "left",
    }
}

/// A device key the record or the node's list names, and whose it is: the
/// record's word where it certifies the key, else the list's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    key: PublicKey,
    party: PartyId,
    principal: PrincipalId,
    /// Whether the replayed record certifies it (else only the list names
    /// it).
    certified: bool,
}

/// Every device key the record certified (any party), and every device on
/// the node's list.
fn known_devices(view: &View, list: &AccessList) -> BTreeMap<KeyId, Known> {
    let mut known = BTreeMap::new();
    for id in members::certified_member_keys(view) {
        if let Some(st) = view.replay.key(&id)
            && let KeyRole::Device {
                party, principal, ..
            } = st.role
        {
            known.insert(
                id,
                Known {
                    key: st.key,
                    party,
                    principal,
                    certified: true,
                },
            );
        }
    }
    for e in list.entries().iter().filter(|e| e.has(FLAG_DEVICE)) {
        known.entry(e.key_id()).or_insert(Known {
            key: *e.key(),
            party: e.party,
            principal: e.principal,
            certified: false,
        });
    }
    known
}

/// The DEVICE argument, checked before anything is opened: lower-case hex,
/// [`MIN_PREFIX`] to 64 digits.
fn parse_device_arg(s: &str) -> anyhow::Result<String> {
    let t = s.trim().to_lowercase();
    ensure!(
        !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()),
        "{s:?} is not a device key id: give its hex digits as `backchannel device list` prints \
         them; nothing was changed"
    );
    ensure!(
        t.len() >= MIN_PREFIX,
        "{s:?} is too short to name a device: give at least {MIN_PREFIX} hex digits of its key \
         id (`backchannel device list`); nothing was changed"
    );
    ensure!(
        t.len() <= 64,
        "{s:?} is longer than a key id (64 hex digits); nothing was changed"
    );
    Ok(t)
}

/// The one key of `keys` whose hex id starts with `prefix`.
fn resolve<'a>(keys: impl Iterator<Item = &'a KeyId>, prefix: &str) -> anyhow::Result<KeyId> {
    let matching: Vec<KeyId> = keys
        .filter(|k| k.to_hex().starts_with(prefix))
        .copied()
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => bail!(
            "no device with key id {prefix}… is known to the record or the node's access list; \
             `backchannel device list` shows yours (`--member NAME` another member's); nothing \
             was changed"
        ),
        several => bail!(
            "{} devices have key ids starting {prefix}: {}; give more of the key id; nothing was \
             changed",
            several.len(),
            several
                .iter()
                .map(KeyId::to_hex)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The shortest prefix of `id` (at least [`MIN_PREFIX`] digits) that no
/// other of `all` shares: what `device revoke` takes.
fn short<'a>(id: &KeyId, all: impl Iterator<Item = &'a KeyId> + Clone) -> String {
    let hex = id.to_hex();
    (MIN_PREFIX..hex.len())
        .map(|n| &hex[..n])
        .find(|p| {
            all.clone()
                .filter(|k| *k != id)
                .all(|k| !k.to_hex().starts_with(p))
        })
        .unwrap_or(&hex)
        .to_owned()
}

/// How a revoked key was revoked, from the record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
struct RevokedOut {
    /// The seq of the (first valid) revocation.
    seq: u64,
    /// Its reason.
    reason: &'static str,
    /// When it was lost (Unix ms; the earliest any revocation names).
    lost_at: Option<u64>,
}

fn revoked(view: &View, id: &KeyId) -> Option<RevokedOut> {
    let st = view.replay.key(id)?;
    let seq = st.revoked_at?;
    let reason = view
        .logged(seq)
        .and_then(|l| match &l.statement.unverified().payload {
            Payload::Revoke(r) if r.key == *id => Some(reason_name(r.reason)),
            _ => None,
        })
        .unwrap_or("?");
    Some(RevokedOut {
        seq,
        reason,
        lost_at: st.lost_at,
    })
}

#[derive(Serialize)]
struct DeviceOut {
    key_id: String,
    short: String,
    this_device: bool,
    on_access_list: bool,
    /// The rooms the list seats it in.
    rooms: usize,
    /// The seq from which the record certifies it (`None`: only the node's
    /// list names it).
    certified_at: Option<u64>,
    not_after: Option<u64>,
    revoked: Option<RevokedOut>,
}

#[derive(Serialize)]
struct ListOut {
    talks: String,
    member: String,
    principal: String,
    devices: Vec<DeviceOut>,
    /// For this home's own member: each room this device sits in, and
    /// whether its history could come back if the device were lost.
    if_this_device_is_lost: Vec<IfLost>,
}

fn list(home_dir: Option<PathBuf>, a: DeviceListArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    home::block_on(async move {
        let ctx = participant::open(&dir, &a.talks).await?;
        let mut s = ctx.session().await?;
        let view = refresh(&ctx, &mut s).await?;
        let served = participant::access_list(&s).await?;
        let (principal, member) = match &a.member {
            None => (ctx.record.principal, ctx.record.member_name.clone()),
            Some(q) => {
                view.roster().context(
                    "the roster has not reached you: run `backchannel talks accept` first",
                )?;
                members::find_member(&members::party_members(&ctx, &view), q)?
            }
        };
        let me = s.device().public_key().id();
        let known = known_devices(&view, &served);
        let devices: Vec<DeviceOut> = known
            .iter()
            .filter(|(_, k)| k.principal == principal && k.party == ctx.record.party)
            .map(|(id, k)| {
                let st = view.replay.key(id);
                let entry = served.get(id);
                DeviceOut {
                    key_id: id.to_hex(),
                    short: short(id, known.keys()),
                    this_device: *id == me,
                    on_access_list: entry.is_some(),
                    rooms: entry.map_or(0, |e| e.rooms().len()),
                    certified_at: st.filter(|_| k.certified).map(|st| st.valid_from),
                    not_after: st.and_then(|st| match st.role {
                        KeyRole::Device { not_after, .. } => not_after,
                        _ => None,
                    }),
                    revoked: revoked(&view, id),
                }
            })
            .collect();
        // If this device were lost: per room it sits in, whether anyone
        // else of its party could hand the history back.
        let if_lost = if principal == ctx.record.principal {
            if_lost(&view, &served, &s.device().public_key().id())
        } else {
            Vec::new()
        };
        let talks = ctx.talks().to_hex();
        ctx.close().await;
        let out = ListOut {
            talks,
            member,
            principal: principal.to_hex(),
            devices,
            if_this_device_is_lost: if_lost,
        };
        if a.talks.json {
            println!("{}", serde_json::to_string(&out)?);
            return Ok(());
        }
        println!(
            "devices of {} ({} of them):",
            crate::messages::printable(&out.member),
            out.devices.len()
        );
        for d in &out.devices {
            let mut state = Vec::new();
            if d.this_device {
                state.push("this home's device".to_owned());
            }
            state.push(if d.on_access_list {
                format!("on the access list ({} rooms)", d.rooms)
            } else {
                "not on the access list".to_owned()
            });
            match d.certified_at {
                Some(seq) => state.push(format!("certified at seq {seq}")),
                None => state.push("not certified by the record".to_owned()),
            }
            if let Some(r) = &d.revoked {
                state.push(format!(
                    "revoked at seq {} ({}{})",
                    r.seq,
                    r.reason,
                    r.lost_at
                        .map(|t| format!(", lost at {}", crate::say::utc(t)))
                        .unwrap_or_default()
                ));
            }
            println!("  {:<12} {}", d.short, state.join("; "));
            println!("  {:<12} key id {}", "", d.key_id);
        }
        if !out.if_this_device_is_lost.is_empty() {
            println!("if this device is lost:");
            for r in &out.if_this_device_is_lost {
                println!(
                    "  {}: {}",
                    crate::messages::printable(&r.room),
                    r.recoverable
                );
            }
            println!("note: {}", crate::restore::BEFORE_A_BACKUP);
        }
        Ok(())
    })
}

/// What could give back one room's history if this device were lost.
#[derive(Serialize)]
struct IfLost {
    room: String,
    /// Plain words: who could hand it back, or that no one could.
    recoverable: String,
    /// Whether anyone but this device could.
    held_elsewhere: bool,
}

/// For each room `me` sits in on `list`: another device of the same
/// member, or another member of the party, sits there too (a handover
/// brings the history back), or no one does (what no backup holds is lost
/// with the device). Private-notes rooms are never handed over.
fn if_lost(view: &View, list: &AccessList, me: &KeyId) -> Vec<IfLost> {
    let Some(mine) = list.get(me) else {
        return Vec::new();
    };
    let private = view.private_notes();
    mine.rooms()
        .iter()
        .map(|room| {
            let others: Vec<&backchannel_statement::access_list::AccessEntry> = list
                .entries()
                .iter()
                .filter(|e| {
                    e.key_id() != *me
                        && e.has(FLAG_DEVICE)
                        && e.party == mine.party
                        && e.rooms().contains(room)
                })
                .collect();
            let own = others.iter().any(|e| e.principal == mine.principal);
            let (recoverable, held) = if private.contains(room) {
                (
                    if own {
                        "private notes: only your other device holds them (private notes are \
                         never handed over; a backup keeps what it held)"
                    } else {
                        "private notes: no one else holds them; a backup keeps what it held, \
                         anything after it is lost"
                    },
                    own,
                )
            } else if own {
                (
                    "your other device holds it (`handover --to` your name)",
                    true,
                )
            } else if !others.is_empty() {
                (
                    "a member of your party sits in it and can hand it over",
                    true,
                )
            } else {
                (
                    "no one else of your party sits in it: what no backup holds is lost with \
                     this device",
                    false,
                )
            };
            IfLost {
                room: view.room_name(*room),
                recoverable: recoverable.to_owned(),
                held_elsewhere: held,
            }
        })
        .collect()
}

/// Who signs a revocation and the removal that goes with it.
enum Signer {
    /// The party's talks authority: both.
    TalksAuthority(SecretKey),
    /// The member's identity key signs the revocation, this device the
    /// removal.
    Member(SecretKey),
}

#[derive(Serialize)]
struct RevokedDevice {
    talks: String,
    device: String,
    member: String,
    principal: String,
    /// "talks authority" or "identity".
    signed_by: &'static str,
    /// The seq of the revocation this command posted (`None`: it was
    /// revoked before, and only taken off the list now).
    revocation_seq: Option<u64>,
    /// The record's revocation: the one posted now or the earlier one.
    revoked: Option<RevokedOut>,
    removed_from_access_list: bool,
    /// Rooms whose MLS group this device committed its removal from.
    rooms_committed: Vec<String>,
    /// Rooms whose MLS group (as this device holds it) still has it: the
    /// group's other members commit its removal at their next command.
    rooms_waiting: Vec<String>,
}

fn revoke(home_dir: Option<PathBuf>, a: DeviceRevokeArgs) -> anyhow::Result<()> {
    // Arguments first: nothing is opened, synced or posted for a bad one.
    let reason = a.reason.reason();
    let lost_at = members::lost_at(reason, a.lost_at.as_deref(), now_ms())?;
    let wanted = parse_device_arg(&a.device)?;
    let dir = home::resolve(home_dir)?;
    home::block_on(async move {
        let ctx = participant::open(&dir, &a.talks).await?;
        let talks = ctx.talks();
        let ta = keys::load(&ctx.store, KeyKindArg::TalksAuthority, Some(talks), LABEL).await?;
        let identity = keys::load(&ctx.store, KeyKindArg::Identity, Some(talks), LABEL).await?;
        let mut s = ctx.session().await?;
        let view = refresh(&ctx, &mut s).await?;
        view.roster()
            .context("the roster has not reached you: run `backchannel talks accept` first")?;
        let record_room = ctx
            .record
            .record_room
            .context("the talks have no record room yet")?;
        let served = participant::access_list(&s).await?;
        let known = known_devices(&view, &served);
        let target = resolve(known.keys(), &wanted)?;
        let k = known[&target];
        // Names may come from other parties: printed escaped.
        let name = crate::messages::printable(&view.signer(&ctx.record, &target));
        let short = short(&target, known.keys());
        let hex = target.to_hex();

        // Who may revoke it (formats.md §10 rule 4).
        ensure!(
            target != s.device().public_key().id(),
            "device {short} is this home's own device: revoke it from another device of yours \
             (`backchannel device revoke {short}` there){}; nothing was changed",
            if ta.is_some() {
                ""
            } else {
                ", or ask the home holding your party's talks authority"
            }
        );
        ensure!(
            k.party == ctx.record.party,
            "device {short} belongs to {}, not to your party: only its own party revokes it \
             (tell them, or the mediator); nothing was changed",
            crate::messages::printable(&view.party_name(k.party))
        );
        ensure!(
            k.certified,
            "the record does not certify device {short} (only the node's access list names it), \
             so a revocation of it would count for nothing: ask the home holding your party's \
             talks authority to look into it; nothing was changed"
        );
        let mine = |key: &SecretKey| {
            view.replay.key(&key.public_key().id()).is_some_and(|st| {
                st.revoked_at.is_none()
                    && matches!(st.role,
                        KeyRole::Identity { principal, party, .. }
                            if principal == k.principal && party == k.party)
            })
        };
        let signer = match (ta, identity) {
            (Some(ta), _) => Signer::TalksAuthority(ta),
            (None, Some(id)) if mine(&id) => Signer::Member(id),
            (None, Some(_)) if k.principal == ctx.record.principal => bail!(
                "this home's identity key is not (or no longer) valid in the record, so it cannot \
                 revoke device {short}: ask the home holding your party's talks authority to run \
                 `backchannel device revoke {hex}`; nothing was changed"
            ),
            _ => bail!(
                "device {short} belongs to another member of your party ({name}): only the home \
                 holding your party's talks authority revokes it; ask them to run `backchannel \
                 device revoke {hex}`; nothing was changed"
            ),
        };
        let on_list = served.get(&target).is_some();
        let earlier = revoked(&view, &target);
        if let (Some(r), false) = (&earlier, on_list) {
            bail!(
                "device {short} is already revoked (seq {}, {}) and off the access list: nothing \
                 to do (`backchannel device list` shows your devices)",
                r.seq,
                r.reason
            );
        }
        // The revocation, dry-run through replay first.
        let revocation_seq = match &earlier {
            Some(r) => {
                eprintln!(
                    "note: device {short} was revoked at seq {} ({}); taking it off the access \
                     list",
                    r.seq, r.reason
                );
                None
            }
            None => {
                let key = match &signer {
                    Signer::TalksAuthority(key) | Signer::Member(key) => key,
                };
                let statement = crate::talks::statement(
                    key,
                    &ctx.record,
                    record_room,
                    s.checkpoint_ref(),
                    Payload::Revoke(Revoke {
                        key: target,
                        reason,
                        lost_at,
                    }),
                )?;
                let mut dry = view.replay.clone();
                dry.apply(LoggedStatement {
                    seq: s.next_seq(),
                    node_time: now_ms(),
                    room: record_room,
                    statement: &statement,
                })
                .map_err(|e| {
                    anyhow!(
                        "every participant's replay would reject this revocation ({e}); nothing \
                         was posted"
                    )
                })?;
                Some(
                    participant::post(
                        &mut s,
                        record_room,
                        Content::Statement(statement.as_bytes().to_vec()),
                    )
                    .await
                    .context("posting the revocation to the record room")?,
                )
            }
        };
        let logged = match revocation_seq {
            Some(seq) => format!("revoked device {short} in the record at seq {seq}"),
            None => format!("device {short} was already revoked in the record"),
        };

        // The rooms whose group (as this device holds it) has the device.
        let rooms: Vec<RoomId> = view
            .roster()
            .map(|r| r.rooms.iter().map(|d| d.room).collect())
            .unwrap_or_default();
        let holding = |s: &participant::CliSession| -> BTreeSet<RoomId> {
            rooms
                .iter()
                .copied()
                .filter(|r| s.room_members(*r).contains(&k.key))
                .collect()
        };
        let before = holding(&s);

        // Off the access list.
        let current = s.node().access_list(talks).await?;
        if current.list.get(&target).is_some() {
            let delta = AccessListDelta::new(talks, current.list.hash(), vec![target], vec![])?;
            let signature = match &signer {
                Signer::TalksAuthority(key) => delta.sign(key)?,
                Signer::Member(_) => delta.sign(s.device())?,
            };
            let change = AccessListChange::new(delta.clone(), vec![signature])?;
            match s.node().submit_change(talks, &change).await {
                Ok(o) if o.applied => {}
                Ok(o) => bail!(
                    "{logged}, but the node did not apply its removal from the access list ({}): \
                     run `backchannel device revoke {hex}` again",
                    o.missing.unwrap_or_default()
                ),
                Err(e) if e.status() == Some(403) => {
                    let entry = current.list.get(&s.device().public_key().id());
                    let may = entry
                        .is_some_and(|e| e.has(FLAG_MAY_PROPOSE) || e.has(FLAG_DESIGNATED_SIGNER));
                    bail!(
                        "{logged}{}: every view flags what it sent from then on. But the node did \
                         not take it off the access list{} ({e}). Until it is off the list, the \
                         device can still read and send: ask the home holding your party's talks \
                         authority to run `backchannel device revoke {hex}` now, which takes it \
                         off",
                        lost_at
                            .filter(|_| revocation_seq.is_some())
                            .map(|t| format!(" (lost at {})", crate::say::utc(t)))
                            .unwrap_or_default(),
                        if may {
                            ""
                        } else {
                            ": it takes access-list changes only from a talks authority or from a \
                             device that may propose them (a head of delegation's or a lead \
                             mediator's), and this device may not"
                        }
                    )
                }
                Err(e) => {
                    return Err(anyhow!(e).context(format!(
                        "{logged}, but taking it off the access list failed: run `backchannel \
                         device revoke {hex}` again"
                    )));
                }
            }
        }

        // This device commits the removal in the rooms it shares with it.
        let view = refresh(&ctx, &mut s).await?;
        let after = holding(&s);
        let out = RevokedDevice {
            talks: talks.to_hex(),
            device: hex.clone(),
            member: name,
            principal: k.principal.to_hex(),
            signed_by: match signer {
                Signer::TalksAuthority(_) => "talks authority",
                Signer::Member(_) => "identity",
            },
            revocation_seq,
            revoked: revoked(&view, &target),
            removed_from_access_list: true,
            rooms_committed: before
                .difference(&after)
                .map(|r| view.room_name(*r))
                .collect(),
            rooms_waiting: after.iter().map(|r| view.room_name(*r)).collect(),
        };
        ctx.close().await;
        if a.talks.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            let when = out
                .revoked
                .as_ref()
                .and_then(|r| r.lost_at)
                .map(|t| {
                    format!(
                        "; every view flags what it sent from {} on",
                        crate::say::utc(t)
                    )
                })
                .unwrap_or_default();
            println!(
                "{logged}{when}; took it off the access list (the node refuses it from now on) \
                 and removed it from the MLS groups of {} room(s) this device shares with it{}",
                out.rooms_committed.len(),
                if out.rooms_waiting.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; the other members of {} remove it at their next command",
                        out.rooms_waiting.join(", ")
                    )
                }
            );
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use backchannel_crypto::Digest;

    fn id(prefix: &[u8]) -> KeyId {
        let mut b = [0x55u8; 32];
        b[..prefix.len()].copy_from_slice(prefix);
        KeyId(Digest(b))
    }

    #[test]
    fn a_device_argument_is_hex_of_eight_to_sixty_four_digits() {
        assert_eq!(parse_device_arg(" ABCDEF01 ").unwrap(), "abcdef01");
        let e = parse_device_arg("abcdef0").unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
        let e = parse_device_arg("zzzzzzzz").unwrap_err().to_string();
        assert!(e.contains("not a device key id"), "{e}");
        let e = parse_device_arg(&"a".repeat(65)).unwrap_err().to_string();
        assert!(e.contains("longer than a key id"), "{e}");
        assert!(parse_device_arg(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn a_prefix_names_one_device_or_is_refused() {
        let a = id(&[0xab, 0xcd, 0xef, 0x01, 0x11]);
        let b = id(&[0xab, 0xcd, 0xef, 0x01, 0x22]);
        let c = id(&[0x12, 0x34, 0x56, 0x78]);
        let all = [a, b, c];
        assert_eq!(resolve(all.iter(), "12345678").unwrap(), c);
        assert_eq!(resolve(all.iter(), "abcdef0111").unwrap(), a);
        assert_eq!(resolve(all.iter(), &b.to_hex()).unwrap(), b);
        let e = resolve(all.iter(), "abcdef01").unwrap_err().to_string();
        assert!(
            e.contains("2 devices have key ids starting abcdef01"),
            "{e}"
        );
        let e = resolve(all.iter(), "deadbeef").unwrap_err().to_string();
        assert!(e.contains("no device with key id deadbeef"), "{e}");
        // The short form is the shortest unique prefix, at least 8 digits.
        assert_eq!(short(&c, all.iter()), "12345678");
        assert_eq!(short(&a, all.iter()), "abcdef011");
        assert_eq!(resolve(all.iter(), &short(&a, all.iter())).unwrap(), a);
    }

    #[test]
    fn lost_at_is_checked_as_members_remove_checks_it() {
        let now = 1_800_000_000_000;
        assert_eq!(
            members::lost_at(RevokeReason::Lost, None, now).unwrap(),
            Some(now)
        );
        assert_eq!(
            members::lost_at(RevokeReason::Superseded, None, now).unwrap(),
            None
        );
        let e = members::lost_at(RevokeReason::Superseded, Some("2026-01-01T00:00Z"), now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("goes with --reason lost"), "{e}");
        let e = members::lost_at(RevokeReason::Compromised, Some("yesterday"), now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a UTC time"), "{e}");
        let e = members::lost_at(RevokeReason::Lost, Some("2099-01-01T00:00Z"), now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lies in the future"), "{e}");
        assert_eq!(
            members::lost_at(RevokeReason::Lost, Some("2026-01-01T00:00Z"), now).unwrap(),
            Some(1_767_225_600_000)
        );
    }
}
