//! `backchannel handover`: hand the history of your rooms to a successor
//! (`backchannel_client::handover`), and list the handovers you received.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use backchannel_client::handover::{Outcome, Scope};
use backchannel_client::seal::Content;
use backchannel_codec::{PrincipalId, RoomId};
use backchannel_core::replay::KeyRole;
use backchannel_crypto::{PublicKey, Signer as _};
use backchannel_statement::access_list::FLAG_DEVICE;
use backchannel_statement::roster::RoomPurpose;
use backchannel_statement::{Act, HistoryShared, Payload};
use clap::Args;
use serde::Serialize;

use crate::cli::{KeyKindArg, TalksArgs};
use crate::home;
use crate::participant::{self, CliSession, Ctx, View, refresh};

/// `backchannel handover`.
#[derive(Debug, Args)]
pub struct HandoverArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The member who receives the history: a member of your party, by
    /// their name or principal id (32 hex digits); your own name hands it
    /// to your other devices.
    #[arg(long, required_unless_present = "list", conflicts_with = "list")]
    pub to: Option<String>,
    /// The rooms, by name or id, separated by commas (default: every room
    /// you and they both sit in).
    #[arg(long, value_delimiter = ',')]
    pub rooms: Vec<String>,
    /// Hand over the log below this seq (default: the latest checkpoint
    /// you verified).
    #[arg(long, value_name = "SEQ")]
    pub until: Option<u64>,
    /// List the handovers you received, and those the record announces.
    #[arg(long)]
    pub list: bool,
}

#[derive(Serialize)]
struct Sent {
    to: String,
    principal: String,
    rooms: Vec<String>,
    withheld: Vec<String>,
    left_out: Vec<String>,
    until: u64,
    bundle: String,
    bytes: usize,
    opened: usize,
    not_held: usize,
    parts: Vec<u64>,
    statement_seq: u64,
}

#[derive(Serialize)]
struct Listed {
    received: Vec<ReceivedOut>,
    announced: Vec<AnnouncedOut>,
}

#[derive(Serialize)]
struct ReceivedOut {
    bundle: String,
    at: u64,
    from: String,
    until: u64,
    rooms: Vec<String>,
    applied: bool,
    opened: u64,
    not_held: u64,
    withheld: Vec<String>,
    unverifiable: Vec<String>,
    refused: Option<String>,
    announced_at: Option<u64>,
}

#[derive(Serialize)]
struct AnnouncedOut {
    seq: u64,
    from: String,
    to: String,
    rooms: Vec<String>,
    until: u64,
    bundle: String,
}

/// Runs `backchannel handover`.
pub fn main(home_dir: Option<PathBuf>, a: HandoverArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    home::block_on(async move {
        let ctx = participant::open(&dir, &a.talks).await?;
        let result = if a.list {
            list(&ctx, &a).await
        } else {
            let ask = Ask {
                to: a.to.clone().unwrap_or_default(),
                rooms: a.rooms.clone(),
                until: a.until,
                wait_for_checkpoint: None,
                json: a.talks.json,
            };
            send(&ctx, &ask).await
        };
        ctx.close().await;
        result
    })
}

fn member_name(ctx: &Ctx, view: &View, p: PrincipalId) -> String {
    crate::members::party_members(ctx, view)
        .into_iter()
        .find(|(q, _)| *q == p)
        .map_or_else(
            || {
                view.replay
                    .roster()
                    .and_then(|r| r.members.iter().find(|m| m.member.principal == p))
                    .map_or_else(|| p.to_hex(), |m| m.member.name.clone())
            },
            |(_, n)| n,
        )
}

/// What to hand over: to whom (a name or principal id), which rooms (none:
/// every room both sit in), below which seq (none: the latest verified
/// checkpoint), how long to wait first for a checkpoint covering what this
/// device received (none: take the latest verified one as it is), and
/// whether to print JSON.
pub struct Ask {
    pub to: String,
    pub rooms: Vec<String>,
    pub until: Option<u64>,
    pub wait_for_checkpoint: Option<Duration>,
    pub json: bool,
}

/// How often [`await_checkpoint`] verifies the log again.
const CHECKPOINT_POLL: Duration = Duration::from_millis(200);

/// Verifies the log until a checkpoint covers every seq this device
/// received, or `wait` has passed (then says what the handover will leave
/// out).
async fn await_checkpoint(s: &mut CliSession, wait: Duration) -> anyhow::Result<()> {
    let list = participant::access_list(s).await?;
    let rooms = participant::my_rooms(&list, s.device());
    let received = s.next_seq();
    let deadline = Instant::now() + wait;
    loop {
        s.verify_log(&rooms, participant::now_ms())
            .await
            .map_err(crate::messages::evidence_or)?;
        let verified = s.checkpoint_ref().size;
        if verified >= received {
            return Ok(());
        }
        if Instant::now() >= deadline {
            eprintln!(
                "note: the latest checkpoint covers seqs below {verified} of the {received} this \
                 device received; what lies past it is not in this handover: run it again later \
                 for the rest"
            );
            return Ok(());
        }
        tokio::time::sleep(CHECKPOINT_POLL).await;
    }
}

/// Hands the history of `a.rooms` over to `a.to` (`backchannel handover`,
/// and `device link --history` to the member's own other devices).
pub async fn send(ctx: &Ctx, a: &Ask) -> anyhow::Result<()> {
    let to_query = a.to.clone();
    if a.until == Some(0) {
        bail!("--until 0 hands over nothing; give a seq above 0, or leave it out");
    }
    let identity = ctx.key(KeyKindArg::Identity).await.map_err(|_| {
        anyhow!(
            "this home holds no member identity key for these talks: a handover is signed by the \
             member who holds the history; run it from that member's home"
        )
    })?;
    let mut s = ctx.session().await?;
    let view = refresh(ctx, &mut s).await?;
    let roster = view
        .replay
        .roster()
        .context("the roster has not reached you yet: run `backchannel read` first")?
        .clone();
    let me = ctx.record.principal;
    // Your role, as the record certifies your identity key.
    let my_role = match view
        .replay
        .key(&identity.public_key().id())
        .map(|k| (&k.role, k.revoked_at))
    {
        Some((KeyRole::Identity { role, .. }, None)) => *role,
        _ => bail!(
            "the record does not certify this home's identity key (or revoked it): only a \
             member of the talks hands over history"
        ),
    };
    ensure!(
        my_role.permits(Act::HandOverHistory),
        "your role ({}) may not hand over history; a member whose role may (head, negotiator, \
         note-taker, or a mediator's lead, co-mediator or staff) can",
        my_role.name()
    );
    let (to, to_name) =
        crate::members::find_member(&crate::members::party_members(ctx, &view), &to_query)?;
    let list = participant::access_list(&s).await?;
    let my_device = s.device().public_key().id();
    let mine: BTreeSet<RoomId> = list
        .get(&my_device)
        .context("your device is not on the access list")?
        .rooms()
        .iter()
        .copied()
        .collect();
    // The successor's devices: every device of theirs on the list (for
    // your own name, your other devices).
    let devices: Vec<(PublicKey, BTreeSet<RoomId>)> = list
        .entries()
        .iter()
        .filter(|e| e.principal == to && e.flags & FLAG_DEVICE != 0 && e.key_id() != my_device)
        .map(|e| (*e.key(), e.rooms().iter().copied().collect()))
        .collect();
    if devices.is_empty() && to == me {
        bail!(
            "you have no other device on the access list yet: your talks-authority home seats \
             the new one first (`device seat --request`, co-signed with `talks cosign`), then \
             you hand over"
        );
    }
    ensure!(
        !devices.is_empty(),
        "{to_name} has no device on the access list yet: they join first (`backchannel members \
         join`, then `members admit` by your talks authority), then you hand over"
    );
    // What they can check: rooms every one of their devices sits in.
    let theirs: BTreeSet<RoomId> = devices
        .iter()
        .map(|(_, r)| r.clone())
        .reduce(|x, y| x.intersection(&y).copied().collect())
        .unwrap_or_default();
    let asked: BTreeSet<RoomId> = if a.rooms.is_empty() {
        mine.clone()
    } else {
        let mut set = BTreeSet::new();
        for r in &a.rooms {
            set.insert(view.find_room(&ctx.record, &mine, r.trim())?);
        }
        set
    };
    let purpose = |room: &RoomId| {
        roster
            .rooms
            .iter()
            .find(|d| d.room == *room)
            .map(|d| d.purpose)
    };
    let private: BTreeSet<RoomId> = asked
        .iter()
        .filter(|r| purpose(r) == Some(RoomPurpose::PrivateNotes))
        .copied()
        .collect();
    // Rooms they do not sit in could not be checked there: left out, and
    // said so (named rooms: refused).
    let not_theirs: Vec<RoomId> = asked
        .iter()
        .filter(|r| !theirs.contains(r) && !private.contains(r))
        .copied()
        .collect();
    if !a.rooms.is_empty() && !not_theirs.is_empty() {
        bail!(
            "{to_name} does not sit in {}: they could not check that history; seat them there \
             first, or leave it out of --rooms",
            not_theirs
                .iter()
                .map(|r| view.room_name(*r))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let shared: BTreeSet<RoomId> = asked
        .iter()
        .filter(|r| theirs.contains(r) && !private.contains(r))
        .copied()
        .collect();
    ensure!(
        !shared.is_empty(),
        "no room to hand over: {to_name} sits in none of the rooms you named{}",
        if private.is_empty() {
            ""
        } else {
            " (private notes are never handed over)"
        }
    );
    if let Some(wait) = a.wait_for_checkpoint {
        await_checkpoint(&mut s, wait).await?;
    }
    let verified = s.checkpoint_ref().size;
    let until = match a.until {
        Some(u) if u > verified => bail!(
            "--until {u} lies past the latest checkpoint you verified (size {verified}); run \
             `backchannel log verify`, or give a lower seq"
        ),
        Some(u) => u,
        None => verified,
    };
    ensure!(
        until > 0,
        "you have verified no checkpoint yet: run `backchannel log verify` first"
    );
    // The handover travels through a room both sit in: the party's internal
    // room if there is one, else the first room shared.
    let record = ctx
        .record
        .record_room
        .context("the talks have no record room yet")?;
    // Through the party's internal room, else any shared room but the
    // record (where every party's devices would download it).
    let both: BTreeSet<RoomId> = mine.intersection(&theirs).copied().collect();
    let travel = both
        .iter()
        .find(|r| purpose(r) == Some(RoomPurpose::PartyInternal))
        .or_else(|| both.iter().find(|r| **r != record))
        .copied()
        .with_context(|| {
            format!(
                "{to_name} and you sit together only in the record room, and a handover does \
                 not travel through it (every party would download it): seat them in your \
                 party's internal room first"
            )
        })?;
    let scope = Scope {
        talks: ctx.talks(),
        from: me,
        to,
        until,
        checkpoint: s.checkpoint_ref(),
        rooms: shared.iter().chain(&private).copied().collect(),
        private_notes: private.clone(),
    };
    let keys: Vec<PublicKey> = devices.iter().map(|(k, _)| *k).collect();
    let out = s
        .hand_over(&list, &scope, &keys, travel)
        .await
        .map_err(crate::messages::evidence_or)?;
    let statement = crate::talks::statement(
        &identity,
        &ctx.record,
        record,
        s.checkpoint_ref(),
        Payload::HistoryShared(HistoryShared::new(
            to,
            shared.iter().copied().collect(),
            until,
            out.bundle,
        )?),
    )?;
    let statement_seq = participant::post(
        &mut s,
        record,
        Content::Statement(statement.as_bytes().to_vec()),
    )
    .await
    .with_context(|| {
        format!(
            "the handover's parts went out (seqs {:?}, bundle {}) but its announcement in the \
             record did not; {to_name} applies it only once announced: run the same handover \
             again",
            out.parts,
            out.bundle.to_hex()
        )
    })?;
    let (opened, not_held) = out.contents.counts();
    let sent = Sent {
        to: to_name.clone(),
        principal: to.to_hex(),
        rooms: shared.iter().map(|r| view.room_name(*r)).collect(),
        withheld: private.iter().map(|r| view.room_name(*r)).collect(),
        left_out: not_theirs.iter().map(|r| view.room_name(*r)).collect(),
        until,
        bundle: out.bundle.to_hex(),
        bytes: out.bytes,
        opened,
        not_held,
        parts: out.parts.clone(),
        statement_seq,
    };
    if a.json {
        println!("{}", serde_json::to_string(&sent)?);
        return Ok(());
    }
    println!(
        "handed over {} up to seq {until} to {to_name}: {opened} messages with their content, \
         {not_held} you could not read either; sealed to their {} device(s) ({} bytes, parts at \
         seqs {:?}), announced in the record at seq {statement_seq}",
        sent.rooms.join(", "),
        keys.len(),
        out.bytes,
        out.parts
    );
    for r in &sent.withheld {
        println!("  left out {r}: private notes are never handed over");
    }
    for r in &sent.left_out {
        println!("  left out {r}: {to_name} does not sit there and could not check it");
    }
    Ok(())
}

async fn list(ctx: &Ctx, a: &HandoverArgs) -> anyhow::Result<()> {
    let mut s = ctx.session().await?;
    let view = refresh(ctx, &mut s).await?;
    let announced = view.replay.history_shared();
    let received: Vec<ReceivedOut> = s
        .handovers()
        .await?
        .into_iter()
        .map(|r| {
            let announced_at = announced
                .iter()
                .find(|h| h.bundle == r.bundle && h.by == r.from)
                .map(|h| h.seq);
            let (applied, opened, not_held, withheld, unverifiable, refused) = match r.outcome {
                Outcome::Applied {
                    opened,
                    not_held,
                    withheld,
                    unverifiable,
                } => (
                    true,
                    opened,
                    not_held,
                    withheld
                        .iter()
                        .map(|(room, why)| format!("{}: {why}", view.room_name(*room)))
                        .collect(),
                    unverifiable
                        .iter()
                        .map(|room| view.room_name(*room))
                        .collect(),
                    None,
                ),
                Outcome::Refused(why) => (false, 0, 0, vec![], vec![], Some(why)),
            };
            ReceivedOut {
                bundle: r.bundle.to_hex(),
                at: r.at,
                from: member_name(ctx, &view, r.from),
                until: r.until,
                rooms: r.rooms.iter().map(|room| view.room_name(*room)).collect(),
                applied,
                opened,
                not_held,
                withheld,
                unverifiable,
                refused,
                announced_at,
            }
        })
        .collect();
    let announced: Vec<AnnouncedOut> = announced
        .iter()
        .map(|h| AnnouncedOut {
            seq: h.seq,
            from: member_name(ctx, &view, h.by),
            to: member_name(ctx, &view, h.to),
            rooms: h.rooms.iter().map(|room| view.room_name(*room)).collect(),
            until: h.until,
            bundle: h.bundle.to_hex(),
        })
        .collect();
    if a.talks.json {
        println!(
            "{}",
            serde_json::to_string(&Listed {
                received,
                announced
            })?
        );
        return Ok(());
    }
    if received.is_empty() {
        println!("you received no handover");
    }
    for r in &received {
        match &r.refused {
            Some(why) => println!(
                "seq {}: REFUSED a handover from {} ({}): {why}; nothing of it was used",
                r.at, r.from, r.bundle
            ),
            None => {
                println!(
                    "seq {}: from {}, {} up to seq {}: verified against the log; {} messages \
                     opened, {} it could not give (its sender could not read them either); {}",
                    r.at,
                    r.from,
                    r.rooms.join(", "),
                    r.until,
                    r.opened,
                    r.not_held,
                    match r.announced_at {
                        Some(seq) => format!("announced in the record at seq {seq}"),
                        None => "not announced in the record (yet)".into(),
                    }
                );
                for w in &r.withheld {
                    println!("  withheld {w}");
                }
                for u in &r.unverifiable {
                    println!("  not checked here (you do not sit in {u}): nothing of it opened");
                }
            }
        }
    }
    for h in &announced {
        println!(
            "the record, seq {}: {} handed {} up to seq {} to {}",
            h.seq,
            h.from,
            h.rooms.join(", "),
            h.until,
            h.to
        );
    }
    Ok(())
}
