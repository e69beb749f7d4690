//! `backchannel send|read|follow` and `backchannel log verify`: talk in
//! the rooms, read the verified archive, follow the event stream, verify
//! the log and witness it.

use std::path::PathBuf;

use anyhow::{Context as _, bail, ensure};
use backchannel_client::follow::Withheld;
use backchannel_client::fork::{Finality, is_final};
use backchannel_client::net::StreamEvent;
use backchannel_client::participant::TalksRecord;
use backchannel_client::safety::PartyVerification;
use backchannel_client::seal::Content;
use backchannel_client::session::{Archived, Discrepancy, revoked_or_expired};
use backchannel_codec::RoomId;
use backchannel_core::replay::Phase;
use backchannel_statement::roster::{KeyVerification, RoomPurpose};
use backchannel_statement::{Kind, Payload, SignedStatement};
use backchannel_tlog::SignedCheckpoint;
use serde::Serialize;

use crate::cli::{FollowArgs, LogVerifyArgs, ReadArgs, SendArgs};
use crate::home;
use crate::participant::{self, CliSession, Ctx, View, access_list, my_rooms, now_ms, refresh};

/// The exit code of `log verify` when it found evidence (documented in
/// `--help` and the README).
pub const EXIT_EVIDENCE: u8 = 3;

/// A failure that carries its own exit code.
#[derive(Debug)]
pub struct Evidence(pub String);

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Evidence {}

/// One archived envelope, as printed.
#[derive(Debug, Serialize)]
pub struct Line {
    seq: u64,
    node_time: u64,
    room: String,
    sender: String,
    kind: &'static str,
    text: String,
    /// For statements: what replay made of it.
    verdict: Option<String>,
}

/// What `read` shows of talk or an attachment someone sent to the record
/// room anyway (another client could): refused, its text not shown, and
/// counted for nothing (replay, and so every derived state, reads
/// statements only; `blob get` ignores announcements there).
pub const REFUSED_IN_RECORD: &str = "free text in the record room (not counted)";

/// What `send` and `blob put` say to talk or a file addressed to the
/// record room.
pub const RECORD_IS_FORMAL: &str = "the record room carries formal signed statements only \
     (roster, ground rules, certificates, acceptances, …), never talk or files; talk in a \
     caucus or another room of yours: `backchannel talks show` lists them";

/// Whether `room` is the talks' record room: the one the roster declares
/// for that purpose, or, before the roster reached this home, the record
/// room the talks were opened with.
pub fn is_record_room(record: &TalksRecord, view: &View, room: RoomId) -> bool {
    match view.roster() {
        Some(r) => r
            .rooms
            .iter()
            .any(|d| d.room == room && d.purpose == RoomPurpose::Record),
        None => record.record_room == Some(room),
    }
}

fn line(ctx: &Ctx, view: &View, a: &Archived, conveyances: &Conveyances) -> Line {
    let h = a.header.header();
    let (kind, text, verdict) = match a.message.as_ref().map(|m| &m.content) {
        // Free text where only formal statements belong: refused, not shown
        // as talk.
        Some(Content::Talk(_) | Content::Attachment(_))
            if is_record_room(&ctx.record, view, h.room) =>
        {
            ("refused", REFUSED_IN_RECORD.to_owned(), None)
        }
        Some(Content::Talk(t)) => ("talk", t.clone(), None),
        Some(Content::Statement(b)) => match SignedStatement::decode(b) {
            Ok(s) => {
                let st = s.unverified();
                let logged = view.logged(a.seq);
                let standing = view.standing(&ctx.record, st.acting_for);
                let verdict = match logged.map(|l| &l.verdict) {
                    // A changed talks authority key blocks the party's
                    // formal acts until re-verified.
                    Some(Ok(())) if matches!(standing, PartyVerification::Changed { .. }) => {
                        format!(
                            "BLOCKED: {}'s keys changed since you verified them; compare \
                             safety codes again and `backchannel talks verify`",
                            view.party_name(st.acting_for)
                        )
                    }
                    // Formal acts of a party whose keys this participant
                    // has not verified: blocked where the ground rules
                    // require verification, flagged where they recommend it.
                    Some(Ok(()))
                        if formal(&st.payload)
                            && st.acting_for != ctx.record.party
                            && !standing.is_verified() =>
                    {
                        match view.replay.ground_rules().map(|g| g.key_verification) {
                            Some(KeyVerification::Required) => format!(
                                "BLOCKED until you verify {}'s keys (compare safety codes, \
                                 then `backchannel talks verify`)",
                                view.party_name(st.acting_for)
                            ),
                            _ => "accepted (keys not verified by you)".to_owned(),
                        }
                    }
                    Some(Ok(())) => "accepted".to_owned(),
                    Some(Err(e)) => format!("REJECTED by replay: {e}"),
                    None => "not replayed".into(),
                };
                // What replay rejected is not rendered as what it claims.
                let replayed = matches!(logged.map(|l| &l.verdict), Some(Ok(())));
                if let Some((kind, text)) = replayed
                    .then(|| {
                        crate::say::describe(
                            |p| view.standing(&ctx.record, p).label(),
                            view,
                            h.room,
                            &s,
                            conveyances,
                            a.seq,
                        )
                    })
                    .flatten()
                {
                    (kind, text, Some(verdict))
                } else {
                    let what = match &st.payload {
                        Payload::Acceptance(_) => {
                            format!(
                                "acceptance of roster and ground rules by {}",
                                view.party_name(st.acting_for)
                            )
                        }
                        Payload::Lifecycle(c) => {
                            format!("talks {} ({})", c.phase.name(), c.reason())
                        }
                        p => format!("{:?}", p.statement_type()).to_lowercase(),
                    };
                    (
                        "statement",
                        format!("{what}, signed by {}", view.signer(&ctx.record, &st.author)),
                        Some(verdict),
                    )
                }
            }
            Err(e) => ("statement", format!("does not decode: {e}"), None),
        },
        Some(Content::Attachment(b)) => (
            "attachment",
            match backchannel_client::attachment::Attachment::from_bytes(b) {
                Ok(a) => format!(
                    "attachment {} ({} bytes): `backchannel blob get {} --out FILE`",
                    a.name,
                    a.size,
                    a.blob.to_hex()
                ),
                Err(e) => format!("an attachment that does not decode: {e}"),
            },
            None,
        ),
        Some(Content::Copy(_)) => (
            "copy",
            "a copy of the room's earlier statements, for devices that joined after them".into(),
            None,
        ),
        Some(Content::Handover(_)) => (
            "handover",
            "a handover of earlier history, sealed to a successor's devices              (`backchannel handover --list`)"
                .into(),
            None,
        ),
        None => match (h.kind, &a.unreadable) {
            (Kind::MlsHandshake, None) => ("mls", "the room's MLS group changed".into(), None),
            (Kind::Welcome, None) => ("mls", "an MLS Welcome to new devices".into(), None),
            (_, Some(why)) => ("unreadable", why.clone(), None),
            _ => ("purged", String::new(), None),
        },
    };
    let mut sender = view.signer(&ctx.record, &h.sender);
    if let Some(why) = revoked_or_expired(&view.replay, &h.sender, a.seq, a.node_time) {
        sender = format!("{sender} — {why}");
    }
    Line {
        seq: a.seq,
        node_time: a.node_time,
        room: view.room_name(h.room),
        sender,
        kind,
        text,
        verdict,
    }
}

/// A withheld envelope, as printed: its seq first.
fn withheld_text(w: &Withheld) -> String {
    match w {
        Withheld::Missing { seq, room } => format!(
            "seq {seq}: the log holds an envelope of your room {} that the node never \
             delivered: it withholds seq {seq}",
            room.to_hex()
        ),
        Withheld::Mismatch {
            seq,
            logged,
            archived,
            ..
        } => format!(
            "seq {seq}: the log holds header {} at seq {seq}, but the node delivered header {}",
            logged.to_hex(),
            archived.to_hex()
        ),
    }
}

/// Formal acts: what a party commits to (roster, ground rules and
/// certificates are the basis the safety code covers, not acts).
fn formal(p: &Payload) -> bool {
    matches!(p, Payload::Acceptance(_) | Payload::Lifecycle(_))
}

/// `s` safe to print on a terminal: control characters (escape sequences,
/// carriage returns, line feeds that would forge a line of their own) and
/// bidirectional-text overrides are shown escaped. Another party's talk is
/// printed through this, never raw.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn print_line(l: &Line, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(l)?);
    } else {
        let l = &Line {
            room: printable(&l.room),
            sender: printable(&l.sender),
            text: printable(&l.text),
            verdict: l.verdict.as_deref().map(printable),
            ..*l
        };
        let body = match l.kind {
            "talk" => format!("“{}”", l.text),
            "refused" => format!("refused: {}", l.text),
            _ => format!(
                "[{}] {}{}",
                l.kind,
                l.text,
                l.verdict
                    .as_deref()
                    .map(|v| format!(" — {v}"))
                    .unwrap_or_default()
            ),
        };
        println!("#{:<5} {:<28} {}: {}", l.seq, l.room, l.sender, body);
    }
    Ok(())
}

/// Runs `send`.
pub fn send(home_dir: Option<PathBuf>, a: SendArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    home::block_on(send_inner(dir, a))
}

#[derive(Serialize)]
struct Sent {
    seq: u64,
    room: String,
}

async fn send_inner(dir: PathBuf, a: SendArgs) -> anyhow::Result<()> {
    ensure!(!a.text.is_empty(), "nothing to send: give the text to say");
    let ctx = participant::open(&dir, &a.talks).await?;
    ensure!(!names_record_room(&ctx.record, &a.room), RECORD_IS_FORMAL);
    let mut s = ctx.session().await?;
    let view = refresh(&ctx, &mut s).await?;
    let room = talk_room(&ctx, &s, &view, &a.room).await?;
    let seq = participant::post(&mut s, room, Content::Talk(a.text.clone()))
        .await
        .context("sending")?;
    let out = Sent {
        seq,
        room: view.room_name(room),
    };
    ctx.close().await;
    if a.talks.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "sent to {} (seq {seq}; the node's receipt verified)",
            out.room
        );
    }
    Ok(())
}

/// The room `query` names, once the participant may talk in it now:
/// seated there, every party has accepted the roster and ground rules
/// (ground rules first), and the talks are open. `send` and `blob put`
/// (whose announcement is talk) both ask.
pub async fn talk_room(
    ctx: &Ctx,
    s: &CliSession,
    view: &View,
    query: &str,
) -> anyhow::Result<RoomId> {
    let list = access_list(s).await?;
    let mine = my_rooms(&list, s.device());
    ensure!(
        !mine.is_empty(),
        "your device is not seated in any room yet: {}",
        if view.roster().is_none() {
            "wait for the mediator's roster and run `backchannel talks accept`"
        } else {
            "run `backchannel talks accept`"
        }
    );
    let room = match view.find_room(&ctx.record, &mine, query) {
        Ok(room) => room,
        // Before the roster only the record room exists, and it takes no
        // talk: say what comes first.
        Err(_) if view.roster().is_none() => bail!("{}", no_roster_yet(ctx)),
        Err(e) => return Err(e),
    };
    // Refused before anything is uploaded, encrypted or sent.
    ensure!(!is_record_room(&ctx.record, view, room), RECORD_IS_FORMAL);
    ensure!(
        mine.contains(&room),
        "you are not in room {}; your rooms are the ones `backchannel talks show` marks yours",
        view.room_name(room)
    );
    if view.roster().is_some() {
        let awaiting = view.awaiting();
        if !awaiting.is_empty() {
            bail!(
                "the ground rules come first: {} {} not accepted the roster and ground rules \
                 yet; talk waits until every party has",
                awaiting
                    .iter()
                    .map(|p| view.party_name(*p))
                    .collect::<Vec<_>>()
                    .join(", "),
                if awaiting.len() == 1 { "has" } else { "have" }
            );
        }
    } else {
        bail!("{}", no_roster_yet(ctx));
    }
    if view
        .roster()
        .and_then(|r| r.room(room))
        .is_some_and(|d| d.purpose == RoomPurpose::Plenary)
        && view.replay.joint_session(room, now_ms()).is_none()
    {
        bail!(
            "{} is open only during a joint session every party in it has consented to; each \
             party's head runs `backchannel talks consent --room plenary --for 2h`",
            view.room_name(room)
        );
    }
    match view.replay.phase() {
        Phase::Open => Ok(room),
        _ => bail!(
            "the talks are {}: nothing can be sent until they are resumed (`backchannel talks \
             show`)",
            view.phase_text()
        ),
    }
}

/// Why nothing can be said before the roster: only the record room exists
/// then, and it carries formal statements only.
fn no_roster_yet(ctx: &Ctx) -> &'static str {
    if ctx.record.party_kind == backchannel_statement::PartyKind::Mediator {
        "the roster has not been posted yet: until it is, only the record room exists, and it \
         carries formal signed statements only; seat the parties (`backchannel talks seat`), \
         then talk in their caucuses"
    } else {
        "the roster has not been received yet: until it is, only the record room is known, and \
         it carries formal signed statements only; run `backchannel talks accept` if you have \
         not accepted, else `backchannel read` to fetch the roster"
    }
}

/// Whether `query` names the record room in words this home knows
/// without asking the node: "record" (any case: also the name the CLI's
/// roster gives it) or its id. `send` and `blob put` refuse it before
/// receiving anything; [`talk_room`] decides for every other spelling once
/// the home is up to date.
pub fn names_record_room(record: &TalksRecord, query: &str) -> bool {
    let q = query.trim();
    q.eq_ignore_ascii_case("record")
        || RoomId::from_hex(q).is_ok_and(|id| record.record_room == Some(id))
}

/// Verbatim conveyances' verdicts, by seq.
pub type Conveyances = std::collections::BTreeMap<
    u64,
    Result<backchannel_core::posts::VerifiedVerbatim, backchannel_core::posts::ConveyError>,
>;

/// Checks the verbatim conveyances at or after `from` against this
/// client's own verified log, verifying the log first when one is there
/// (its proof must be checked against a checkpoint this client verified).
async fn conveyances_from(s: &mut CliSession, view: &View, from: u64) -> Conveyances {
    let any = view.statements.iter().any(|l| {
        l.seq >= from
            && matches!(
                l.statement.unverified().payload,
                Payload::Conveyance(backchannel_statement::Conveyed::Verbatim(_))
            )
    });
    if !any {
        return Conveyances::new();
    }
    if let Ok(list) = access_list(s).await {
        let rooms = my_rooms(&list, s.device());
        // A log that does not verify now is reported by `log verify`; the
        // conveyance then shows as not checked.
        let _ = s.verify_log(&rooms, now_ms()).await;
    }
    crate::say::check_conveyances(s, view, from).await
}

/// Runs `read`.
pub fn read(home_dir: Option<PathBuf>, a: ReadArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    home::block_on(async move {
        let ctx = participant::open(&dir, &a.talks).await?;
        let mut s = ctx.session().await?;
        let from = if a.all || a.item.is_some() {
            0
        } else {
            s.next_seq()
        };
        let view = refresh(&ctx, &mut s).await?;
        let conveyances = conveyances_from(&mut s, &view, from).await;
        let item = a.item.as_deref().map(str::to_lowercase);
        for arch in view.archived_from(from) {
            if let Some(want) = &item {
                let named = view
                    .logged(arch.seq)
                    .and_then(|l| crate::say::item_of(&l.statement))
                    .map(|i| i.to_lowercase());
                if named.as_deref() != Some(want.as_str()) {
                    continue;
                }
            }
            print_line(&line(&ctx, &view, arch, &conveyances), a.talks.json)?;
        }
        ctx.close().await;
        Ok(())
    })
}

/// How long `follow` waits on a quiet stream before a new round verifies
/// (and cosigns) the node's latest checkpoint.
const WITNESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `follow`.
pub fn follow(home_dir: Option<PathBuf>, a: FollowArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    home::block_on(async move {
        let mut seen = 0u64;
        let mut cosigned = 0u64;
        let mut backoff = std::time::Duration::from_millis(200);
        loop {
            // Each round holds the home (its lock) while it catches up
            // through pages (verifying and archiving) and witnesses the
            // log, then lets it go while it waits on the stream for the
            // next envelope, so other commands can use the home meanwhile.
            let ctx = participant::open(&dir, &a.talks).await?;
            let mut s = ctx.session().await?;
            let from = s.next_seq();
            let view = refresh(&ctx, &mut s).await?;
            let conveyances = conveyances_from(&mut s, &view, from).await;
            for arch in view.archived_from(from) {
                print_line(&line(&ctx, &view, arch, &conveyances), a.talks.json)?;
                seen += 1;
            }
            witness(&mut s, &mut cosigned, a.talks.json).await?;
            let node = s.node().clone();
            let (talks, next) = (s.talks(), s.next_seq());
            drop(s);
            ctx.close().await;
            home::release();
            if a.count.is_some_and(|n| seen >= n) {
                break;
            }
            let mut stream = match node.stream(talks, next).await {
                Ok(st) => st,
                Err(e) => {
                    eprintln!("the event stream failed ({e}); retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
                    continue;
                }
            };
            backoff = std::time::Duration::from_millis(200);
            loop {
                match tokio::time::timeout(WITNESS_EVERY, stream.next()).await {
                    // Quiet: a new round verifies and cosigns the latest
                    // checkpoint.
                    Err(_) => break,
                    Ok(Ok(StreamEvent::Envelope(_))) => break,
                    Ok(Ok(StreamEvent::Caught(_))) => continue,
                    Ok(Ok(StreamEvent::Closed(code))) => {
                        if code == 4003 {
                            bail!("the node closed the stream: this device left the access list");
                        }
                        break;
                    }
                    Ok(Err(e)) => {
                        eprintln!("the event stream failed ({e}); resuming");
                        break;
                    }
                }
            }
            stream.close().await;
        }
        Ok(())
    })
}

/// Verifies the node's latest checkpoint and cosigns it once it is past
/// the last one this run cosigned: what a party's client does as a
/// witness. Evidence stops the run (exit 3).
async fn witness(s: &mut CliSession, cosigned: &mut u64, json: bool) -> anyhow::Result<()> {
    let list = access_list(s).await?;
    let rooms = my_rooms(&list, s.device());
    let (report, checkpoint) = s.verify_log(&rooms, now_ms()).await.map_err(evidence_or)?;
    if !report.withheld.is_empty() || !report.not_merged.is_empty() {
        return Err(Evidence(format!(
            "the log holds evidence against the node: {}{}; run `backchannel log verify` for \
             the whole account",
            report
                .withheld
                .iter()
                .map(withheld_text)
                .collect::<Vec<_>>()
                .join("; "),
            report
                .not_merged
                .iter()
                .map(|s| format!("; seq {s} receipted but not merged in time"))
                .collect::<String>()
        ))
        .into());
    }
    if report.size > *cosigned {
        match s.cosign(&checkpoint, now_ms() / 1000).await {
            Ok(()) => {
                *cosigned = report.size;
                if !json {
                    eprintln!("verified and cosigned the log at size {}", report.size);
                }
            }
            // The node signed a newer checkpoint meanwhile: the next round
            // verifies and cosigns that one.
            Err(e) if stale(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct Verified {
    talks: String,
    size: u64,
    root: String,
    archived: usize,
    statements_accepted: usize,
    statements_rejected: Vec<(u64, String)>,
    withheld: Vec<String>,
    not_merged: Vec<u64>,
    discrepancies: Vec<String>,
    forks: Vec<String>,
    /// One author's two statements under one id with different bytes:
    /// evidence against that author (not the node), kept by replay.
    equivocations: Vec<String>,
    cosigned: bool,
    parties_cosigning: usize,
    parties: usize,
    /// The parties with no cosignature on the latest checkpoint: past a
    /// checkpoint interval or two, compare checkpoints with them (`log
    /// verify --save-checkpoint`, then `log compare`): they may have been
    /// shown another history.
    missing_cosigners: Vec<String>,
    final_: bool,
}

/// Runs `log verify`.
pub fn verify(home_dir: Option<PathBuf>, a: LogVerifyArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    home::block_on(verify_inner(dir, a))
}

async fn verify_inner(dir: PathBuf, a: LogVerifyArgs) -> anyhow::Result<()> {
    let ctx = participant::open(&dir, &a.talks).await?;
    let mut s = ctx.session().await?;
    let out = verify_session(&ctx, &mut s, !a.no_cosign).await;
    ctx.close().await;
    let (out, note) = out?;
    if let Some(path) = &a.save_checkpoint {
        participant::write_secret(path, &note)?;
    }
    let evidence = !out.withheld.is_empty()
        || !out.not_merged.is_empty()
        || !out.discrepancies.is_empty()
        || !out.forks.is_empty();
    if a.talks.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "verified the log to size {} (root {}); {} envelopes archived",
            out.size, out.root, out.archived
        );
        println!(
            "replay: {} statements accepted, {} rejected",
            out.statements_accepted,
            out.statements_rejected.len()
        );
        for (seq, why) in &out.statements_rejected {
            println!("  rejected seq {seq}: {why}");
        }
        for w in &out.withheld {
            println!("  EVIDENCE withheld: {w}");
        }
        for seq in &out.not_merged {
            println!("  EVIDENCE seq {seq}: receipted but not merged in time");
        }
        for d in &out.discrepancies {
            println!("  EVIDENCE {d}");
        }
        for f in &out.forks {
            println!("  EVIDENCE fork: {f}");
        }
        for e in &out.equivocations {
            println!("  EVIDENCE against a signer, equivocation: {e}");
        }
        println!(
            "{}; {} of {} parties cosign the latest checkpoint{}",
            if out.cosigned {
                "cosigned the verified checkpoint"
            } else {
                "did not cosign"
            },
            out.parties_cosigning,
            out.parties,
            if out.final_ { ": it is final" } else { "" }
        );
        if !out.missing_cosigners.is_empty() {
            println!(
                "not yet cosigned by {}: if that lasts past a checkpoint interval or two, \
                 compare checkpoints with them (`log verify --save-checkpoint`, `log compare`)",
                out.missing_cosigners.join(", ")
            );
        }
    }
    if evidence {
        return Err(Evidence(format!(
            "the log holds evidence against the node: {}",
            out.withheld
                .iter()
                .chain(&out.discrepancies)
                .chain(&out.forks)
                .cloned()
                .chain(out.not_merged.iter().map(|s| format!("seq {s} not merged")))
                .collect::<Vec<_>>()
                .join("; ")
        ))
        .into());
    }
    Ok(())
}

async fn verify_session(
    ctx: &Ctx,
    s: &mut CliSession,
    cosign: bool,
) -> anyhow::Result<(Verified, Vec<u8>)> {
    let list = access_list(s).await?;
    let rooms = my_rooms(&list, s.device());
    s.receive(&list).await.map_err(evidence_or)?;
    let (mut report, mut checkpoint) = s.verify_log(&rooms, now_ms()).await.map_err(evidence_or)?;
    let discrepancies: Vec<Discrepancy> = s.check_archive().await.map_err(evidence_or)?;
    let replayed = s.replay().await?;
    let clean = report.withheld.is_empty()
        && report.not_merged.is_empty()
        && discrepancies.is_empty()
        && replayed.forks.is_empty();
    let mut cosigned = false;
    if cosign && clean {
        // The node may sign a newer checkpoint between verifying and
        // cosigning (409 stale): verify that one and cosign it instead.
        for attempt in 1..=COSIGN_ATTEMPTS {
            match s.cosign(&checkpoint, now_ms() / 1000).await {
                Ok(()) => {
                    cosigned = true;
                    break;
                }
                Err(e) if stale(&e) && attempt < COSIGN_ATTEMPTS => {
                    let (r, c) = s.verify_log(&rooms, now_ms()).await.map_err(evidence_or)?;
                    if !r.withheld.is_empty() || !r.not_merged.is_empty() {
                        report = r;
                        break;
                    }
                    (report, checkpoint) = (r, c);
                }
                Err(e) if stale(&e) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    let view = View::of(ctx.talks(), s.archive().await?);
    let (cosigning, parties, missing) = finality(ctx, s, &view).await?;
    let missing_cosigners = missing.iter().map(|p| view.party_name(*p)).collect();
    let note = checkpoint.note().to_vec();
    Ok((
        Verified {
            talks: ctx.talks().to_hex(),
            size: report.size,
            root: report.root.to_hex(),
            archived: view.archive.len(),
            statements_accepted: replayed.accepted.len(),
            statements_rejected: replayed.rejected,
            withheld: report.withheld.iter().map(withheld_text).collect(),
            not_merged: report.not_merged,
            discrepancies: discrepancies.iter().map(ToString::to_string).collect(),
            forks: replayed
                .forks
                .iter()
                .map(|(seq, size, ours, theirs)| {
                    format!(
                        "seq {seq} refers to root {} at size {size}, ours is {}",
                        theirs.to_hex(),
                        ours.to_hex()
                    )
                })
                .collect(),
            equivocations: replayed
                .equivocations
                .iter()
                .map(|(first, later, id)| {
                    format!(
                        "seq {later} reuses the id of seq {first} (statement {id}) with other                          bytes"
                    )
                })
                .collect(),
            cosigned,
            parties_cosigning: cosigning,
            parties,
            missing_cosigners,
            final_: parties > 0 && cosigning == parties,
        },
        note,
    ))
}

/// How many of the roster's parties cosign the node's latest checkpoint
/// (by the devices the record certifies), of how many, and which do not (`fork::is_final` over the served note, once
/// it verifies under the pinned log key).
async fn finality(
    ctx: &Ctx,
    s: &CliSession,
    view: &View,
) -> anyhow::Result<(usize, usize, Vec<backchannel_codec::PartyId>)> {
    let (_, note) = s.node().checkpoint(s.talks()).await?;
    let origin = backchannel_tlog::LogOrigin::new(&ctx.record.node.origin, s.talks());
    SignedCheckpoint::verify(&note, &ctx.record.node.log_key, &origin)
        .map_err(|e| Evidence(format!("a checkpoint that does not verify: {e}")))?;
    let parties = view.party_cosigners();
    let n = parties.len();
    if n == 0 {
        // No roster yet: nobody can make a checkpoint final.
        return Ok((0, 0, vec![]));
    }
    Ok(match is_final(&note, &parties)? {
        Finality::Final => (n, n, vec![]),
        Finality::Pending { missing } => (n - missing.len(), n, missing),
    })
}

/// How many times `log verify` tries to cosign while the log keeps
/// growing under it (then it reports `cosigned: false`).
const COSIGN_ATTEMPTS: u32 = 3;

/// Whether the node refused a cosignature because it signed a newer
/// checkpoint meanwhile.
fn stale(e: &backchannel_client::session::SessionError) -> bool {
    matches!(e, backchannel_client::session::SessionError::Net(n) if n.code() == Some(backchannel_node::api::codes::STALE))
}

/// Evidence against the node (exit 3), or another failure.
pub fn evidence_or(e: backchannel_client::session::SessionError) -> anyhow::Error {
    use backchannel_client::session::SessionError;
    match e {
        SessionError::Evidence(_) | SessionError::Unserved { .. } => Evidence(e.to_string()).into(),
        other => anyhow::Error::from(other),
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn printed_text_cannot_forge_lines_or_reorder_them() {
        for (input, want) in [
            ("plain “talk”, d’accord", "plain “talk”, d’accord"),
            ("a\n#7 forged — accepted", "a\\u{a}#7 forged — accepted"),
            ("\u{1b}[2Jcleared", "\\u{1b}[2Jcleared"),
            ("back\rover", "back\\u{d}over"),
            ("\u{202e}desrever", "\\u{202e}desrever"),
        ] {
            assert_eq!(printable(input), want, "{input:?}");
        }
    }
}
