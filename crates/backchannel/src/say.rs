//! Signed messages and what the mediator does with them: `backchannel
//! message`, `release`, `convey`, `receipt` and `pending`, and how `read`
//! shows them (`describe`).
//!
//! Talk (`backchannel send`) is MLS chat: attributable to a device, bound
//! to its room, never conveyable. A message is a statement signed with the
//! member's identity key, with markings and an audience, so it can be
//! released, conveyed verbatim with its evidence, receipted and cited.
//! The rules live in `backchannel_core::posts`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail, ensure};
use backchannel_client::seal::Content;
use backchannel_client::session::revoked_or_expired;
use backchannel_codec::{PartyId, PrincipalId, RoomId};
use backchannel_core::posts::{
    self, ConveyError, ReleaseState, VerifiedVerbatim, check_outgoing, check_verbatim,
    marking_name, may_convey, release_signers, release_state, verify_verbatim,
};
use backchannel_core::replay::KeyRole;
use backchannel_crypto::{SecretKey, Signer as _};
use backchannel_statement::roster::RoomPurpose;
use backchannel_statement::{
    AgendaItem, Attribution, Audience, Conveyance, Conveyed, Markings, Message, Payload, Receipt,
    ReceiptKind, Release, SignedHeader, SignedStatement, Statement, Verbatim,
};
use clap::{Args, Subcommand, ValueEnum};
use rand_core::OsRng;
use serde::Serialize;

use crate::cli::{KeyKindArg, TalksArgs};
use crate::home;
use crate::participant::{self, CliSession, Ctx, View, access_list, my_rooms, now_ms, refresh};

/// How a message may be handled by the mediator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MarkingArg {
    /// For the mediator only: nothing of it may be conveyed.
    MediatorOnly,
    /// Its substance may be conveyed in the mediator's words.
    Substance,
    /// It may be conveyed verbatim, the signature intact.
    Verbatim,
}

impl From<MarkingArg> for Conveyance {
    fn from(m: MarkingArg) -> Self {
        match m {
            MarkingArg::MediatorOnly => Conveyance::MediatorOnly,
            MarkingArg::Substance => Conveyance::SubstanceMayBeConveyed,
            MarkingArg::Verbatim => Conveyance::VerbatimMayBeConveyed,
        }
    }
}

/// What a message says and how it may be handled.
#[derive(Debug, Args)]
pub struct MessageOptions {
    /// The agenda item it speaks to (`read --item` threads it).
    #[arg(long, value_name = "ITEM")]
    pub item: Option<String>,
    /// How the mediator may handle it (default: the ground rules').
    #[arg(long, value_enum)]
    pub marking: Option<MarkingArg>,
    /// Parties that may see it beyond the room (by name or initials;
    /// repeatable): a verbatim conveyance needs the destination's parties
    /// here.
    #[arg(long = "for", value_name = "PARTY")]
    pub for_parties: Vec<String>,
    /// Each receiving party must post a formal receipt.
    #[arg(long)]
    pub receipt_required: bool,
    /// A response is requested within this long ("30m", "2h", "1d").
    #[arg(long, value_name = "DURATION")]
    pub respond_within: Option<String>,
    /// Exploratory, not a formal position.
    #[arg(long)]
    pub exploratory: bool,
}

/// `backchannel message`.
#[derive(Debug, Args)]
pub struct MessageArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The room (its name, words of it, or its id).
    #[arg(long)]
    pub room: String,
    /// The seq of the statement this answers.
    #[arg(long, value_name = "SEQ")]
    pub reply_to: Option<u64>,
    /// Markings, audience, item.
    #[command(flatten)]
    pub options: MessageOptions,
    /// The words.
    pub text: String,
}

/// `backchannel release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The seq of the draft in your party's internal room.
    #[arg(long, value_name = "SEQ")]
    pub draft: u64,
    /// The room it goes to.
    #[arg(long, value_name = "ROOM")]
    pub to: String,
    /// Markings, audience (the draft's item unless given).
    #[command(flatten)]
    pub options: MessageOptions,
}

/// `backchannel convey`.
#[derive(Debug, Args)]
pub struct ConveyArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The room it goes to.
    #[arg(long, value_name = "ROOM", global = true)]
    pub to: Option<String>,
    /// How.
    #[command(subcommand)]
    pub how: ConveyHow,
}

/// How a mediator conveys.
#[derive(Debug, Subcommand)]
pub enum ConveyHow {
    /// The original signed message, with its evidence (its marking must
    /// allow it and its audience admit the destination).
    Verbatim {
        /// The seq of the original.
        #[arg(long, value_name = "SEQ")]
        seq: u64,
    },
    /// Your rendering of a party's position, in your words.
    Redraft {
        /// Whose position.
        #[arg(long, value_name = "PARTY")]
        about: String,
        /// The seq of the source (the link stays in the mediators' room).
        #[arg(long, value_name = "SEQ")]
        source: Option<u64>,
        /// The agenda item.
        #[arg(long)]
        item: Option<String>,
        /// The text.
        text: String,
    },
    /// An unattributed text put to the room as your own draft.
    NonPaper {
        /// The agenda item.
        #[arg(long)]
        item: Option<String>,
        /// The text.
        text: String,
    },
    /// An act that happened off the system ("conveyed orally").
    Record {
        /// The party that acted.
        #[arg(long, value_name = "PARTY")]
        by: String,
        /// When, as Unix milliseconds or a time ago ("25m").
        #[arg(long, value_name = "WHEN")]
        at: String,
        /// The agenda item.
        #[arg(long)]
        item: Option<String>,
        /// What happened.
        text: String,
    },
}

/// `backchannel receipt`.
#[derive(Debug, Args)]
pub struct ReceiptArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The seq of the statement your party formally receives.
    #[arg(long, value_name = "SEQ")]
    pub seq: u64,
}

/// `backchannel pending`.
#[derive(Debug, Args)]
pub struct PendingArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
}

#[derive(Serialize)]
struct Posted {
    seq: u64,
    room: String,
    what: String,
}

/// Closes the home and prints what was posted where.
async fn finish(
    ctx: Ctx,
    json: bool,
    seq: u64,
    room: String,
    what: impl Into<String>,
) -> anyhow::Result<()> {
    ctx.close().await;
    let p = Posted {
        seq,
        room,
        what: what.into(),
    };
    if json {
        println!("{}", serde_json::to_string(&p)?);
    } else {
        println!("{} to {} (seq {})", p.what, p.room, p.seq);
    }
    Ok(())
}

/// "30m", "2h", "1d" → milliseconds.
pub fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a duration; write e.g. 30m, 2h or 1d"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("{s:?} is not a duration; write e.g. 30m, 2h or 1d"),
    };
    n.checked_mul(ms)
        .ok_or_else(|| anyhow!("{s:?} is too long a duration"))
}

/// A UTC time as `YYYY-MM-DDTHH:MM[:SS]Z` (RFC 3339, UTC only) or as
/// [`utc`] prints it (`YYYY-MM-DD HH:MM UTC`), in Unix ms.
pub fn parse_utc(s: &str) -> anyhow::Result<u64> {
    let bad = || {
        anyhow!("{s:?} is not a UTC time: write it as 2026-11-30T09:00Z (or 2026-11-30 09:00 UTC)")
    };
    let t = s.trim();
    let rest = t
        .strip_suffix('Z')
        .or_else(|| t.strip_suffix(" UTC"))
        .ok_or_else(bad)?;
    let (date, time) = rest.split_once(['T', ' ']).ok_or_else(bad)?;
    let num = |x: &str, len: usize| -> anyhow::Result<i64> {
        if x.len() != len || !x.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        x.parse().map_err(|_| bad())
    };
    let d: Vec<&str> = date.split('-').collect();
    let [y, m, d] = d.as_slice() else {
        return Err(bad());
    };
    let (y, m, d) = (num(y, 4)?, num(m, 2)?, num(d, 2)?);
    let hms: Vec<&str> = time.split(':').collect();
    let (hh, mm, ss) = match hms.as_slice() {
        [h, m] => (num(h, 2)?, num(m, 2)?, 0),
        [h, m, s] => (num(h, 2)?, num(m, 2)?, num(s, 2)?),
        _ => return Err(bad()),
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || d < 1
        || d > days_in[(m - 1) as usize]
        || hh > 23
        || mm > 59
        || ss > 59
    {
        return Err(bad());
    }
    // Howard Hinnant's days_from_civil.
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1000).map_err(|_| bad())
}

/// Unix ms as `YYYY-MM-DD HH:MM UTC`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

fn item(s: &Option<String>) -> anyhow::Result<Option<AgendaItem>> {
    s.as_ref()
        .map(|i| AgendaItem::new(i.clone()))
        .transpose()
        .map_err(|e| anyhow!("--item: {e}"))
}

/// Who this home speaks as: its identity key, principal, party.
struct Me {
    key: SecretKey,
    principal: PrincipalId,
    party: PartyId,
}

async fn me(ctx: &Ctx, view: &View) -> anyhow::Result<Me> {
    let key = ctx.key(KeyKindArg::Identity).await?;
    match view.replay.key(&key.public_key().id()).map(|k| &k.role) {
        Some(KeyRole::Identity {
            principal, party, ..
        }) => Ok(Me {
            principal: *principal,
            party: *party,
            key,
        }),
        _ => bail!(
            "your identity key is not certified in the record yet; run `backchannel read` once \
             your party has seated you"
        ),
    }
}

fn markings(view: &View, o: &MessageOptions) -> anyhow::Result<Markings> {
    let default = view
        .replay
        .ground_rules()
        .map_or(Conveyance::MediatorOnly, |g| g.confidentiality_default);
    let mut m = Markings::new(
        o.marking.map_or(default, Conveyance::from),
        vec![],
        if o.exploratory {
            Attribution::Exploratory
        } else {
            Attribution::Formal
        },
    )?;
    m.receipt_required = o.receipt_required;
    if let Some(d) = &o.respond_within {
        m.respond_by = Some(now_ms().saturating_add(parse_duration(d)?));
    }
    Ok(m)
}

fn audience(view: &View, room: RoomId, o: &MessageOptions) -> anyhow::Result<Vec<Audience>> {
    let mut a = vec![Audience::Room(room)];
    for p in &o.for_parties {
        a.push(Audience::Party(view.find_party(p)?));
    }
    Ok(a)
}

fn sign(
    ctx: &Ctx,
    s: &CliSession,
    me: &Me,
    audience: Vec<Audience>,
    markings: Markings,
    payload: Payload,
) -> anyhow::Result<SignedStatement> {
    Ok(Statement::new(
        &mut OsRng,
        ctx.talks(),
        me.key.public_key().id(),
        me.party,
        audience,
        s.checkpoint_ref(),
        markings,
        payload,
    )?
    .sign(&me.key)?)
}

fn letters_allowed(view: &View) -> impl Fn(PartyId, PartyId) -> bool + '_ {
    move |a, b| {
        let pair = if a < b { (a, b) } else { (b, a) };
        view.replay
            .ground_rules()
            .is_some_and(|g| g.sealed_letters.contains(&pair))
    }
}

async fn post_statement(
    s: &mut CliSession,
    room: RoomId,
    st: &SignedStatement,
) -> anyhow::Result<u64> {
    participant::post(s, room, Content::Statement(st.as_bytes().to_vec())).await
}

/// Checks `msg` against the roster's rules for `room` (record room,
/// seat, letters, release), signs it with the member's identity key under
/// the options' markings and audience, and posts it: its seq.
async fn post_message(
    ctx: &Ctx,
    s: &mut CliSession,
    view: &View,
    me: &Me,
    room: RoomId,
    msg: Message,
    options: &MessageOptions,
) -> anyhow::Result<u64> {
    let roster = view.roster().context("no roster yet")?;
    let list = access_list(s).await?;
    check_outgoing(
        roster,
        me.principal,
        me.party,
        room,
        my_rooms(&list, s.device()).contains(&room),
        &msg,
        letters_allowed(view),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let st = sign(
        ctx,
        s,
        me,
        audience(view, room, options)?,
        markings(view, options)?,
        Payload::Message(msg),
    )?;
    post_statement(s, room, &st).await
}

/// Runs `backchannel message`.
pub fn message(home_dir: Option<PathBuf>, a: MessageArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    home::block_on(async move {
        let ctx = participant::open(&dir, &a.talks).await?;
        let mut s = ctx.session().await?;
        let view = refresh(&ctx, &mut s).await?;
        let me = me(&ctx, &view).await?;
        let room = crate::messages::talk_room(&ctx, &s, &view, &a.room).await?;
        let reply_to = match a.reply_to {
            Some(seq) => Some(
                view.logged(seq)
                    .with_context(|| format!("no statement at seq {seq} in your archive"))?
                    .statement
                    .unverified()
                    .id,
            ),
            None => None,
        };
        let mut msg = Message::new(item(&a.options.item)?, a.text.clone(), None)?;
        msg.reply_to = reply_to;
        let seq = post_message(&ctx, &mut s, &view, &me, room, msg, &a.options).await?;
        let what = "message posted";
        finish(ctx, a.talks.json, seq, view.room_name(room), what).await
    })
}

/// Runs `backchannel release`.
pub fn release(home_dir: Option<PathBuf>, a: ReleaseArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    home::block_on(async move {
        let ctx = participant::open(&dir, &a.talks).await?;
        let mut s = ctx.session().await?;
        let view = refresh(&ctx, &mut s).await?;
        let me = me(&ctx, &view).await?;
        let roster = view.roster().context("no roster yet")?;
        let logged = view
            .logged(a.draft)
            .with_context(|| format!("no statement at seq {} in your archive", a.draft))?;
        let draft_room = view
            .archived_at(a.draft)
            .map(|x| x.header.header().room)
            .context("the draft is not archived")?;
        let Payload::Message(draft) = &logged.statement.unverified().payload else {
            bail!(
                "seq {} is not a message; only a drafted message is released",
                a.draft
            );
        };
        ensure!(
            logged.verdict.is_ok(),
            "the draft at seq {} did not verify: {}",
            a.draft,
            logged.verdict.clone().err().unwrap_or_default()
        );
        ensure!(
            posts::inside_delegation(roster, me.party, draft_room),
            "seq {} is not a draft in your party's internal room",
            a.draft
        );
        let drafter = match view
            .replay
            .key(&logged.statement.unverified().author)
            .map(|k| &k.role)
        {
            Some(KeyRole::Identity { principal, .. }) => *principal,
            _ => bail!("the draft's author is not a member of the record"),
        };
        let room = crate::messages::talk_room(&ctx, &s, &view, &a.to).await?;
        let release = Release {
            draft: logged.statement.unverified().id,
            draft_hash: logged.statement.hash(),
            drafter,
        };
        let item = match item(&a.options.item)? {
            Some(i) => Some(i),
            None => draft.item.clone(),
        };
        let msg = Message::new(item, draft.text().to_owned(), Some(release))?;
        let seq = post_message(&ctx, &mut s, &view, &me, room, msg, &a.options).await?;
        let what = format!("released the draft of seq {}", a.draft);
        finish(ctx, a.talks.json, seq, view.room_name(room), what).await
    })
}

/// Runs `backchannel convey`.
pub fn convey(home_dir: Option<PathBuf>, a: ConveyArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    home::block_on(async move {
        let ctx = participant::open(&dir, &a.talks).await?;
        let mut s = ctx.session().await?;
        let view = refresh(&ctx, &mut s).await?;
        let me = me(&ctx, &view).await?;
        ensure!(
            may_convey(&view.replay, &me.key.public_key().id()),
            "only a mediator whose role permits it (lead or co-mediator) conveys"
        );
        let to = a.to.as_deref().context("say where it goes: --to ROOM")?;
        let room = crate::messages::talk_room(&ctx, &s, &view, to).await?;
        let roster = view.roster().context("no roster yet")?.clone();
        let plain = |view: &View| -> anyhow::Result<Markings> {
            Ok(Markings::new(
                view.replay
                    .ground_rules()
                    .map_or(Conveyance::MediatorOnly, |g| g.confidentiality_default),
                vec![],
                Attribution::Formal,
            )?)
        };
        let (conveyed, what, source) = match &a.how {
            ConveyHow::Verbatim { seq } => {
                let logged = view
                    .logged(*seq)
                    .with_context(|| format!("no statement at seq {seq} in your archive"))?;
                if let Err(e) = &logged.verdict {
                    bail!("refused: seq {seq} was rejected by replay ({e})");
                }
                check_verbatim(&roster, &logged.statement, room)
                    .map_err(|e| anyhow!("refused: seq {seq} {e}"))?;
                let archived = view
                    .archived_at(*seq)
                    .context("the original is not archived")?;
                let o = logged.statement.unverified();
                if let Some(KeyRole::Identity {
                    principal, party, ..
                }) = view.replay.key(&o.author).map(|k| &k.role)
                {
                    posts::check_released(
                        &roster,
                        *principal,
                        *party,
                        archived.header.header().room,
                        &logged.statement,
                    )
                    .map_err(|e| anyhow!("refused: seq {seq} {e}"))?;
                }
                // The inclusion proof, against this client's own verified
                // tree: verify the log first, then check what is served.
                let list = access_list(&s).await?;
                let rooms = my_rooms(&list, s.device());
                s.verify_log(&rooms, now_ms())
                    .await
                    .map_err(crate::messages::evidence_or)?;
                let v = verbatim_evidence(&s, archived, &logged.statement).await?;
                (Conveyed::Verbatim(v), "conveyed verbatim", Some(*seq))
            }
            ConveyHow::Redraft {
                about,
                source,
                item: i,
                text,
            } => {
                if let Some(src) = source {
                    let l = view
                        .logged(*src)
                        .with_context(|| format!("no statement at seq {src} in your archive"))?;
                    if l.statement.unverified().markings.conveyance == Conveyance::MediatorOnly {
                        eprintln!(
                            "warning: the source (seq {src}) is marked mediator-only: its \
                             author asked that nothing of it be conveyed"
                        );
                    }
                }
                (
                    Conveyed::Redrafted {
                        about: view.find_party(about)?,
                        item: item(i)?,
                        text: text.clone(),
                    },
                    "conveyed re-drafted",
                    *source,
                )
            }
            ConveyHow::NonPaper { item: i, text } => (
                Conveyed::NonPaper {
                    item: item(i)?,
                    text: text.clone(),
                },
                "put a non-paper",
                None,
            ),
            ConveyHow::Record {
                by,
                at,
                item: i,
                text,
            } => {
                let at = match at.parse::<u64>() {
                    Ok(ms) => ms,
                    Err(_) => now_ms().saturating_sub(parse_duration(at)?),
                };
                (
                    Conveyed::Recorded {
                        by: view.find_party(by)?,
                        at,
                        item: item(i)?,
                        text: text.clone(),
                    },
                    "recorded",
                    None,
                )
            }
        };
        conveyed.check().map_err(|e| anyhow!("{e}"))?;
        let st = sign(
            &ctx,
            &s,
            &me,
            vec![Audience::Room(room)],
            plain(&view)?,
            Payload::Conveyance(conveyed.clone()),
        )?;
        let seq = post_statement(&mut s, room, &st).await?;
        // The trail: a verbatim conveyance's receipt goes to the origin
        // room (the author sees where its words went); a re-draft's link
        // to its source stays in the mediators' room.
        if let (Conveyed::Verbatim(v), Some(src)) = (&conveyed, source) {
            let original = &view.logged(src).context("original")?.statement;
            let receipt = Receipt {
                kind: ReceiptKind::ConveyedTo,
                statement: original.unverified().id,
                hash: original.hash(),
                room,
                seq,
            };
            let r = sign(
                &ctx,
                &s,
                &me,
                vec![Audience::Room(v.origin_room)],
                plain(&view)?,
                Payload::Receipt(receipt),
            )?;
            post_statement(&mut s, v.origin_room, &r).await?;
        }
        if let (Conveyed::Redrafted { .. }, Some(src)) = (&conveyed, source)
            && let Some(mediators) = roster
                .rooms
                .iter()
                .find(|d| d.purpose == RoomPurpose::Mediators)
                .map(|d| d.room)
        {
            let l = view.logged(src).context("source")?;
            let msg = Message::new(
                None,
                format!(
                    "re-drafted seq {src} (statement {}) as seq {seq} in {}",
                    l.statement.unverified().id,
                    view.room_name(room)
                ),
                None,
            )?;
            let link = sign(
                &ctx,
                &s,
                &me,
                vec![Audience::Room(mediators)],
                Markings::mediator_only(),
                Payload::Message(msg),
            )?;
            post_statement(&mut s, mediators, &link).await?;
        }
        finish(ctx, a.talks.json, seq, view.room_name(room), what).await
    })
}

/// Runs `backchannel receipt`.
pub fn receipt(home_dir: Option<PathBuf>, a: ReceiptArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    home::block_on(async move {
        let ctx = participant::open(&dir, &a.talks).await?;
        let mut s = ctx.session().await?;
        let view = refresh(&ctx, &mut s).await?;
        let me = me(&ctx, &view).await?;
        let logged = view
            .logged(a.seq)
            .with_context(|| format!("no statement at seq {} in your archive", a.seq))?;
        let st = logged.statement.unverified();
        ensure!(
            st.markings.receipt_required,
            "seq {} is not marked receipt-required; no formal receipt is asked for",
            a.seq
        );
        ensure!(
            st.acting_for != me.party,
            "seq {} is your own party's; receipts are for what others sent you",
            a.seq
        );
        let room = view
            .archived_at(a.seq)
            .map(|x| x.header.header().room)
            .context("not archived")?;
        let receipt = Receipt {
            kind: ReceiptKind::Received,
            statement: st.id,
            hash: logged.statement.hash(),
            room,
            seq: a.seq,
        };
        let r = sign(
            &ctx,
            &s,
            &me,
            vec![Audience::Room(room)],
            Markings::mediator_only(),
            Payload::Receipt(receipt),
        )?;
        let seq = post_statement(&mut s, room, &r).await?;
        let what = format!("formal receipt of seq {}", a.seq);
        finish(ctx, a.talks.json, seq, view.room_name(room), what).await
    })
}

/// One thing awaiting someone.
#[derive(Debug, Serialize)]
pub struct Awaiting {
    /// The room.
    pub room: String,
    /// The seq of what awaits.
    pub seq: u64,
    /// What is awaited ("receipt", "response", "release").
    pub what: &'static str,
    /// From whom.
    pub from: String,
    /// By when, if a deadline was set (UTC).
    pub by: Option<String>,
}

/// What awaits whose response, per room, from the archive: receipts of
/// `receipt-required` statements (per receiving party), responses asked
/// for by a deadline (a message replying to it), and drafts not yet
/// released.
pub fn pending_of(view: &View) -> Vec<Awaiting> {
    let Some(roster) = view.roster() else {
        return Vec::new();
    };
    let room_of: BTreeMap<u64, RoomId> = view
        .archive
        .iter()
        .map(|a| (a.seq, a.header.header().room))
        .collect();
    let mut received: BTreeSet<(backchannel_codec::StatementId, PartyId)> = BTreeSet::new();
    let mut replied: BTreeSet<(backchannel_codec::StatementId, PartyId)> = BTreeSet::new();
    let mut released: BTreeSet<backchannel_codec::StatementId> = BTreeSet::new();
    for l in view.statements.iter().filter(|l| l.verdict.is_ok()) {
        let st = l.statement.unverified();
        match &st.payload {
            Payload::Receipt(r) if r.kind == ReceiptKind::Received => {
                received.insert((r.statement, st.acting_for));
            }
            Payload::Message(m) => {
                if let Some(id) = m.reply_to {
                    replied.insert((id, st.acting_for));
                }
                if let Some(r) = &m.release {
                    released.insert(r.draft);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for l in view.statements.iter().filter(|l| l.verdict.is_ok()) {
        let st = l.statement.unverified();
        let Some(&room) = room_of.get(&l.seq) else {
            continue;
        };
        if !matches!(st.payload, Payload::Message(_) | Payload::Conveyance(_)) {
            continue;
        }
        let others: Vec<PartyId> = roster
            .room_parties(room)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| *p != st.acting_for)
            .collect();
        if st.markings.receipt_required {
            for p in &others {
                if !received.contains(&(st.id, *p)) {
                    out.push(Awaiting {
                        room: view.room_name(room),
                        seq: l.seq,
                        what: "receipt",
                        from: view.party_name(*p),
                        by: None,
                    });
                }
            }
        }
        if let Some(by) = st.markings.respond_by {
            for p in &others {
                if !replied.contains(&(st.id, *p)) {
                    out.push(Awaiting {
                        room: view.room_name(room),
                        seq: l.seq,
                        what: "response",
                        from: view.party_name(*p),
                        by: Some(utc(by)),
                    });
                }
            }
        }
        if let Payload::Message(m) = &st.payload
            && m.release.is_none()
            && posts::inside_delegation(roster, st.acting_for, room)
            && roster.room(room).map(|d| d.purpose) == Some(RoomPurpose::PartyInternal)
            && !released.contains(&st.id)
            && let Some(signers) = release_signers(roster, st.acting_for)
        {
            let names: Vec<String> = signers
                .iter()
                .filter_map(|p| roster.members.iter().find(|m| m.principal == *p))
                .map(|m| m.name.clone())
                .collect();
            out.push(Awaiting {
                room: view.room_name(room),
                seq: l.seq,
                what: "release",
                from: names.join(" or "),
                by: None,
            });
        }
    }
    out
}

/// Runs `backchannel pending`.
pub fn pending(home_dir: Option<PathBuf>, a: PendingArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    home::block_on(async move {
        let ctx = participant::open(&dir, &a.talks).await?;
        let mut s = ctx.session().await?;
        let view = refresh(&ctx, &mut s).await?;
        let out = pending_of(&view);
        ctx.close().await;
        if a.talks.json {
            println!("{}", serde_json::to_string(&out)?);
            return Ok(());
        }
        if out.is_empty() {
            println!("nothing awaits anyone's response in your rooms");
        }
        let mut room = String::new();
        for w in &out {
            if w.room != room {
                println!("{}:", crate::messages::printable(&w.room));
                room.clone_from(&w.room);
            }
            println!(
                "  seq {:<5} awaits {} from {}{}",
                w.seq,
                w.what,
                crate::messages::printable(&w.from),
                w.by.as_deref()
                    .map(|b| format!(" by {b}"))
                    .unwrap_or_default()
            );
        }
        Ok(())
    })
}

/// Checks every verbatim conveyance at or after `from` in the archive
/// against this client's own verified log (fetching, and checking, an
/// inclusion proof against its own checkpoint where the conveyance's is
/// one it has not verified).
pub async fn check_conveyances(
    s: &CliSession,
    view: &View,
    from: u64,
) -> BTreeMap<u64, Result<VerifiedVerbatim, ConveyError>> {
    let mut out = BTreeMap::new();
    // Only what is about to be shown: each check may ask the node for a
    // proof.
    for l in view.statements.iter().filter(|l| l.seq >= from) {
        let Payload::Conveyance(Conveyed::Verbatim(v)) = &l.statement.unverified().payload else {
            continue;
        };
        let Some(room) = view.archived_at(l.seq).map(|a| a.header.header().room) else {
            continue;
        };
        let mut r = verify_verbatim(s.talks(), &view.replay, v, room, |n| {
            s.follower().root_at(n)
        });
        if let Err(ConveyError::Unverified(_)) = r {
            let size = s.follower().size();
            if size > v.seq
                && let Ok(p) = s.node().inclusion_proof(s.talks(), v.seq, size).await
            {
                let mut own = v.clone();
                own.tree_size = size;
                own.proof = p.hashes().to_vec();
                r = verify_verbatim(s.talks(), &view.replay, &own, room, |n| {
                    s.follower().root_at(n)
                });
            }
        }
        out.insert(l.seq, r);
    }
    out
}

/// How `read` shows a message, conveyance or receipt: (kind, text), or
/// `None` for other statements. `standing(party)` is how that party's keys
/// stand for the reader (`PartyVerification::label`), shown beside a
/// verbatim original's author.
/// The evidence a verbatim conveyance carries for `statement`, logged in
/// `archived`: the logged header, the body's salt, and an inclusion proof
/// from the node, checked against `s`'s own latest verified checkpoint
/// (verify the log first).
pub async fn verbatim_evidence(
    s: &CliSession,
    archived: &backchannel_client::session::Archived,
    statement: &SignedStatement,
) -> anyhow::Result<Verbatim> {
    let seq = archived.seq;
    let salt = archived
        .message
        .as_ref()
        .context("the original's body is not in your archive")?
        .salt;
    let size = s.follower().size();
    let root = s
        .follower()
        .root_at(size)
        .context("no verified checkpoint yet")?;
    let proof = s
        .node()
        .inclusion_proof(archived.header.header().talks, seq, size)
        .await?;
    proof
        .verify(seq, size, &root, &archived.leaf().hash())
        .map_err(|_| {
            anyhow!(
                "the node served an inclusion proof for seq {seq} that does not verify \
                 against your checkpoint: keep this as evidence and tell the parties"
            )
        })?;
    Ok(Verbatim::new(
        archived.header.header().room,
        seq,
        archived.node_time,
        archived.header.to_bytes().to_vec(),
        salt.0,
        statement.as_bytes().to_vec(),
        archived.header.header().body_hash,
        size,
        proof.hashes().to_vec(),
    )?)
}

pub fn describe(
    standing: impl Fn(PartyId) -> String,
    view: &View,
    room: RoomId,
    st: &SignedStatement,
    conveyances: &BTreeMap<u64, Result<VerifiedVerbatim, ConveyError>>,
    seq: u64,
) -> Option<(&'static str, String)> {
    let roster = view.roster()?;
    let u = st.unverified();
    let author = match view.replay.key(&u.author).map(|k| &k.role) {
        Some(KeyRole::Identity { principal, .. }) => Some(*principal),
        _ => None,
    };
    let name_of = |p: PrincipalId| {
        roster
            .members
            .iter()
            .find(|m| m.principal == p)
            .map_or_else(|| p.to_hex(), |m| m.name.clone())
    };
    let item_tag =
        |i: Option<&AgendaItem>| i.map(|i| format!("[{}] ", i.as_str())).unwrap_or_default();
    let marking = marking_name(u.markings.conveyance);
    let extras = {
        let mut e = Vec::new();
        if u.markings.receipt_required {
            e.push("receipt required".to_owned());
        }
        if let Some(by) = u.markings.respond_by {
            e.push(format!("respond by {}", utc(by)));
        }
        if e.is_empty() {
            String::new()
        } else {
            format!(" ({})", e.join("; "))
        }
    };
    Some(match &u.payload {
        Payload::Message(m) => {
            let who = author.map_or_else(|| "?".into(), name_of);
            let release = match author {
                Some(p) => release_state(roster, p, u.acting_for, room, m),
                None => ReleaseState::Unreleased,
            };
            let how = match release {
                ReleaseState::Internal => "internal".to_owned(),
                ReleaseState::Released { drafter } => {
                    format!("drafted by {}, released by {who}", name_of(drafter))
                }
                ReleaseState::NotRequired => format!("by {who}"),
                ReleaseState::Unreleased => format!(
                    "by {who} — NOT RELEASED: the roster requires {}'s messages to be released",
                    view.party_name(u.acting_for)
                ),
            };
            (
                "message",
                format!(
                    "{}{} ({}, {marking}){extras}",
                    item_tag(m.item.as_ref()),
                    m.text(),
                    how
                ),
            )
        }
        Payload::Conveyance(_) if !may_convey(&view.replay, &u.author) => (
            "refused",
            "a conveyance by someone who is not a mediator permitted to convey: not shown".into(),
        ),
        Payload::Conveyance(c) => {
            let by = author.map_or_else(|| "?".into(), name_of);
            let text = match c {
                Conveyed::Verbatim(verbatim) => match conveyances.get(&seq) {
                    Some(Ok(v)) => {
                        let o = v.original.statement();
                        // The original's author key, and the device that
                        // sent it, judged at the original's seq and node
                        // time: a loss dated at or before it is shown here
                        // as in the original's own room.
                        let sender = SignedHeader::decode(verbatim.header())
                            .ok()
                            .map(|h| h.header().sender);
                        let flag = revoked_or_expired(&view.replay, &o.author, v.seq, v.node_time)
                            .or_else(|| {
                                sender.and_then(|k| {
                                    revoked_or_expired(&view.replay, &k, v.seq, v.node_time)
                                })
                            })
                            .map(|why| format!(" — the original was {why}"))
                            .unwrap_or_default();
                        let (t, i) = match &o.payload {
                            Payload::Message(m) => (m.text().to_owned(), m.item.clone()),
                            _ => (String::new(), None),
                        };
                        format!(
                            "{}\"{t}\" — {} of {} ({}), conveyed verbatim by {by}; the author's \
                             signature verified, logged at seq {} at {}",
                            item_tag(i.as_ref()),
                            name_of(v.author),
                            view.party_name(o.acting_for),
                            standing(o.acting_for),
                            v.seq,
                            utc(v.node_time)
                        ) + &flag
                    }
                    Some(Err(e)) => format!("a verbatim conveyance by {by} that FAILED: {e}"),
                    None => format!("a verbatim conveyance by {by}, not checked"),
                },
                Conveyed::Redrafted { about, item, text } => format!(
                    "{}{text} — {by}'s rendering of {}'s position (re-drafted by the mediator, \
                     not {}'s words)",
                    item_tag(item.as_ref()),
                    view.party_name(*about),
                    view.party_name(*about)
                ),
                Conveyed::NonPaper { item, text } => format!(
                    "{}{text} — non-paper: an unattributed draft put by the mediators",
                    item_tag(item.as_ref())
                ),
                Conveyed::Recorded {
                    by: p,
                    at,
                    item,
                    text,
                } => format!(
                    "{}{text} — RECORDED by {by}: {} acted off the system at {} (as recorded, \
                     not {}'s own signed act)",
                    item_tag(item.as_ref()),
                    view.party_name(*p),
                    utc(*at),
                    view.party_name(*p)
                ),
            };
            ("conveyance", text)
        }
        Payload::Receipt(r) => {
            let who = author.map_or_else(|| "?".into(), name_of);
            // The target by id and hash (ids are chosen by their authors).
            let target = view
                .statements
                .iter()
                .find(|l| {
                    l.statement.unverified().id == r.statement && l.statement.hash() == r.hash
                })
                .map_or_else(|| "a statement".to_owned(), |l| format!("seq {}", l.seq));
            if r.kind == ReceiptKind::ConveyedTo && !may_convey(&view.replay, &u.author) {
                return Some((
                    "refused",
                    "a conveyance receipt by someone who is not a mediator permitted to convey"
                        .into(),
                ));
            }
            // The conveyance's own time where this reader holds it (a
            // member of the destination room); otherwise, as for the
            // author, the time the mediator logged the receipt, right
            // after the conveyance.
            let at = match view
                .archived_at(r.seq)
                .filter(|a| a.header.header().room == r.room)
            {
                Some(a) => format!(" at {}", utc(a.node_time)),
                None => view
                    .archived_at(seq)
                    .map(|a| format!("; receipted at {}", utc(a.node_time)))
                    .unwrap_or_default(),
            };
            match r.kind {
                ReceiptKind::Received => (
                    "receipt",
                    format!(
                        "{} formally received {target} (by {who})",
                        view.party_name(u.acting_for)
                    ),
                ),
                ReceiptKind::ConveyedTo => (
                    "receipt",
                    format!(
                        "{target} conveyed verbatim to {} by {who} (seq {}{})",
                        roster
                            .room_parties(r.room)
                            .unwrap_or_default()
                            .iter()
                            .filter(|p| roster.party_kind(**p)
                                != Some(backchannel_statement::PartyKind::Mediator))
                            .map(|p| view.party_name(*p))
                            .collect::<Vec<_>>()
                            .join(", "),
                        r.seq,
                        at
                    ),
                ),
            }
        }
        _ => return None,
    })
}

/// The agenda item a statement names, if any (a verbatim conveyance's is
/// its original's).
pub fn item_of(st: &SignedStatement) -> Option<String> {
    match &st.unverified().payload {
        Payload::Message(m) => m.item.as_ref().map(|i| i.as_str().to_owned()),
        // One level: only a message travels verbatim.
        Payload::Conveyance(Conveyed::Verbatim(v)) => SignedStatement::decode(v.statement())
            .ok()
            .and_then(|o| match &o.unverified().payload {
                Payload::Message(m) => m.item.as_ref().map(|i| i.as_str().to_owned()),
                _ => None,
            }),
        Payload::Conveyance(c) => c.item().map(|i| i.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_utc, utc};

    #[test]
    fn utc_times_parse_and_print_back() {
        let check = |s: &str, want: Option<u64>| {
            assert_eq!(parse_utc(s).ok(), want, "{s}");
        };
        check("1970-01-01T00:00Z", Some(0));
        check("1970-01-01T00:00:01Z", Some(1_000));
        check("2026-11-30T09:00Z", Some(1_796_029_200_000));
        check("2026-11-30 09:00 UTC", Some(1_796_029_200_000));
        check("2024-02-29T23:59:59Z", Some(1_709_251_199_000));
        check("2000-03-01T00:00Z", Some(951_868_800_000));
        for bad in [
            "",
            "2026-11-30T09:00",
            "2026-11-30T09:00+01:00",
            "2026-11-30",
            "2025-02-29T00:00Z",
            "2026-13-01T00:00Z",
            "2026-11-31T00:00Z",
            "2026-11-30T24:00Z",
            "2026-11-30T09:60Z",
            "1969-12-31T23:59Z",
            "26-11-30T09:00Z",
            "2026-11-30T9:00Z",
            "+026-11-30T09:00Z",
        ] {
            check(bad, None);
        }
        // `utc` prints whole minutes.
        for ms in [0, 86_340_000, 951_868_800_000, 1_796_029_200_000] {
            let printed = utc(ms);
            assert_eq!(parse_utc(&printed).ok(), Some(ms), "{printed}");
        }
    }
}
