//! `backchannel evidence export`: one statement of the archive opened as an
//! evidence bundle (`backchannel_core::evidence`, docs/formats.md § 9) that
//! anyone can verify offline; and `backchannel evidence verify-statement`,
//! which does that with nothing but the bundle, the node's log key and its
//! origin.
//!
//! A bundle is made only as the talks' ground rules allow (their export
//! rules, for the exporter's own party), and only over a **final**
//! checkpoint — one a device of every party has cosigned — so what it
//! proves is what every party verified. Its contents:
//!
//! - the statement and its commitment salt, from the archived message;
//! - the signed header, seq and node time, as archived;
//! - the node's inclusion proof of the leaf at the size this client
//!   verified, checked here against the verified root (never taken on the
//!   node's word);
//! - the checkpoint note of exactly that size, as served, with its
//!   cosignatures;
//! - the chain: the roster statement, then any member or device
//!   certificates of the archive that vouch for the author's key or the
//!   device that sent it.
//!
//! The bundle is verified with [`EvidenceBundle::verify`] before it is
//! written.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail, ensure};
use backchannel_client::fork::{Finality, is_final};
use backchannel_client::seal::Content;
use backchannel_client::session::revoked_or_expired;
use backchannel_codec::{Decode as _, Encode as _, PartyId};
use backchannel_core::evidence::{EvidenceBundle, MAX_BUNDLE_LEN, MAX_CHAIN, VerifiedEvidence};
use backchannel_crypto::{KeyId, PublicKey};
use backchannel_statement::markings::{Attribution, Conveyance, HandlingLabel};
use backchannel_statement::roster::{ExportRecipient, ExportRule, ExportScope, Roster};
use backchannel_statement::{Markings, Payload, SignedStatement};
use backchannel_tlog::{CosignerKey, LogOrigin, NodeOrigin, SignedCheckpoint, witness_name};
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::cli::{EXIT_CODES, TalksArgs};
use crate::home;
use crate::messages::Evidence;
use crate::participant::{self, CliSession, Ctx, View, access_list, my_rooms, now_ms};

/// How many times the export catches up with a log that grows meanwhile
/// before it gives up.
const SYNC_ATTEMPTS: usize = 5;

/// Who an export is for, as the ground rules' export rules name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecipientArg {
    /// Your party's own archive.
    OwnArchive,
    /// An arbiter or court.
    Arbiter,
    /// The public.
    Public,
}

impl RecipientArg {
    fn recipient(self) -> ExportRecipient {
        match self {
            RecipientArg::OwnArchive => ExportRecipient::OwnArchive,
            RecipientArg::Arbiter => ExportRecipient::Arbiter,
            RecipientArg::Public => ExportRecipient::Public,
        }
    }
}

/// `backchannel evidence export`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct ExportArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The seq of the statement (as `backchannel read --all` prints it).
    #[arg(long, value_name = "N")]
    pub seq: u64,
    /// Where to write the bundle (must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Who the bundle is for; the ground rules must let your party export
    /// the statement to them (a rule for a wider audience — arbiter, then
    /// public — covers a narrower one).
    #[arg(long, value_enum, default_value = "own-archive")]
    pub to: RecipientArg,
}

/// `backchannel evidence verify-statement`.
#[derive(Debug, Args)]
pub struct VerifyBundleArgs {
    /// The node's log key (64 hex digits), as `backchannel node info`
    /// prints it: known independently of whoever hands over the bundle.
    #[arg(long, value_name = "HEX")]
    pub log_key: String,
    /// The node's origin.
    #[arg(long)]
    pub origin: String,
    /// The evidence bundle (`backchannel evidence export`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

// --- Names ------------------------------------------------------------------

fn scope_name(s: ExportScope) -> &'static str {
    match s {
        ExportScope::OwnStatements => "own statements",
        ExportScope::RoomsItHolds => "rooms it holds",
        ExportScope::EvidenceBundles => "evidence bundles",
    }
}

fn recipient_name(r: ExportRecipient) -> &'static str {
    match r {
        ExportRecipient::OwnArchive => "own archive",
        ExportRecipient::Arbiter => "arbiter",
        ExportRecipient::Public => "public",
    }
}

/// The markings, as printed and in `--json`.
#[derive(Debug, Serialize)]
pub struct MarkingsOut {
    conveyance: &'static str,
    labels: Vec<String>,
    attribution: &'static str,
    receipt_required: bool,
    respond_by: Option<u64>,
    valid_until: Option<u64>,
}

impl MarkingsOut {
    fn of(m: &Markings) -> Self {
        Self {
            conveyance: match m.conveyance {
                Conveyance::MediatorOnly => "mediator only",
                Conveyance::SubstanceMayBeConveyed => "substance may be conveyed",
                Conveyance::VerbatimMayBeConveyed => "verbatim may be conveyed",
            },
            labels: m
                .labels()
                .iter()
                .map(|l| match l {
                    HandlingLabel::WithoutPrejudice => "without prejudice".to_owned(),
                    HandlingLabel::SubjectToContract => "subject to contract".to_owned(),
                    HandlingLabel::MediationPrivileged => "mediation privileged".to_owned(),
                    HandlingLabel::Free(s) => s.clone(),
                })
                .collect(),
            attribution: match m.attribution {
                Attribution::Formal => "formal",
                Attribution::Exploratory => "exploratory",
            },
            receipt_required: m.receipt_required,
            respond_by: m.respond_by,
            valid_until: m.valid_until,
        }
    }

    fn line(&self) -> String {
        let mut parts = vec![self.conveyance.to_owned(), self.attribution.to_owned()];
        parts.extend(self.labels.iter().map(|l| format!("“{l}”")));
        if self.receipt_required {
            parts.push("receipt required".into());
        }
        if let Some(t) = self.respond_by {
            parts.push(format!("respond by {t} (Unix ms)"));
        }
        if let Some(t) = self.valid_until {
            parts.push(format!("valid until {t} (Unix ms)"));
        }
        parts.join("; ")
    }
}

fn type_name(p: &Payload) -> String {
    format!("{:?}", p.statement_type()).to_lowercase()
}

fn party_name(roster: &Roster, party: PartyId) -> String {
    roster
        .parties
        .iter()
        .find(|p| p.party == party)
        .map_or_else(|| party.to_hex(), |p| p.name.clone())
}

// --- Export -----------------------------------------------------------------

/// What `evidence export` prints.
#[derive(Debug, Serialize)]
struct Exported {
    talks: String,
    seq: u64,
    statement_type: String,
    statement_id: String,
    party: String,
    party_name: String,
    node_time: u64,
    checkpoint_size: u64,
    cosigned_by: Vec<String>,
    markings: MarkingsOut,
    to: &'static str,
    out: String,
    bytes: usize,
    log_key: String,
    origin: String,
    /// Why the record flags the statement (its author's key or its
    /// sender's reported lost at or before it, revoked, expired), if it
    /// does: the bundle itself does not carry it.
    flagged: Option<String>,
}

/// Runs `evidence export`.
pub fn main(home_dir: Option<PathBuf>, a: ExportArgs) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    if a.out.exists() {
        bail!("{} exists; choose another --out", a.out.display());
    }
    home::block_on(async move {
        let ctx = participant::open(&dir, &a.talks).await?;
        let out = export(&ctx, &a).await;
        ctx.close().await;
        let out = out?;
        if a.talks.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            println!(
                "exported the {} of {} at seq {} (node time {} ms) to {} ({} bytes, for {})",
                out.statement_type,
                out.party_name,
                out.seq,
                out.node_time,
                out.out,
                out.bytes,
                out.to
            );
            println!(
                "in the checkpoint of size {}, final: cosigned by {}",
                out.checkpoint_size,
                out.cosigned_by.join(", ")
            );
            println!("markings: {}", out.markings.line());
            if let Some(why) = &out.flagged {
                println!(
                    "FLAGGED: the record says it was {why}; the bundle proves it was logged and \
                     signed, not that its signer still held the key — say so to whoever receives it"
                );
            }
            println!(
                "check it anywhere with `backchannel evidence verify-statement --log-key {} \
                 --origin {} {}`",
                out.log_key, out.origin, out.out
            );
        }
        Ok(())
    })
}

/// Catches the session up with the node until the latest checkpoint note
/// is of the size this client verified; that note (as served, with its
/// cosignatures) and its verified checkpoint.
async fn sync(
    ctx: &Ctx,
    s: &mut CliSession,
    list: &backchannel_statement::AccessList,
) -> anyhow::Result<(Vec<u8>, SignedCheckpoint)> {
    let rooms = my_rooms(list, s.device());
    let origin = LogOrigin::new(&ctx.record.node.origin, s.talks());
    for _ in 0..SYNC_ATTEMPTS {
        s.receive(list)
            .await
            .map_err(crate::messages::evidence_or)?;
        let (report, _) = s
            .verify_log(&rooms, now_ms())
            .await
            .map_err(crate::messages::evidence_or)?;
        if !report.withheld.is_empty() {
            return Err(Evidence(format!(
                "the node withholds envelopes of your rooms ({}); run `backchannel log verify`",
                report
                    .withheld
                    .iter()
                    .map(|w| format!("{w:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
        let (size, note) = s
            .node()
            .checkpoint(s.talks())
            .await
            .context("fetching the node's latest checkpoint")?;
        if size != s.follower().size() {
            // The log grew between the two requests: catch up again.
            continue;
        }
        let checkpoint = SignedCheckpoint::verify(&note, &ctx.record.node.log_key, &origin)
            .map_err(|e| Evidence(format!("a checkpoint that does not verify: {e}")))?;
        let cp = checkpoint.checkpoint();
        if cp.size != s.follower().size() || cp.root != s.follower().root() {
            return Err(Evidence(format!(
                "the node's checkpoint of size {} has root {}, the verified root is {}: two \
                 histories (run `backchannel log verify`)",
                cp.size,
                cp.root.to_hex(),
                s.follower().root().to_hex()
            ))
            .into());
        }
        return Ok((note, checkpoint));
    }
    bail!("the log keeps growing while the export catches up with it; try again")
}

async fn export(ctx: &Ctx, a: &ExportArgs) -> anyhow::Result<Exported> {
    let mut s = ctx.session().await?;
    let list = access_list(&s).await?;
    let (note, checkpoint) = sync(ctx, &mut s, &list).await?;
    let size = checkpoint.checkpoint().size;
    let view = View::of(ctx.talks(), s.archive().await?);
    let (roster, roster_st) = match (view.roster(), view.roster_statement()) {
        (Some(r), Some(st)) => (r, st),
        _ => bail!(
            "the roster has not reached you yet; run `backchannel talks accept` (or `backchannel \
             read`) first"
        ),
    };
    let rules = view.replay.ground_rules().context(
        "the ground rules have not reached you yet: they say what may be exported; run \
         `backchannel read` first",
    )?;

    // The statement, as archived.
    let seq = a.seq;
    ensure!(
        seq < size,
        "seq {seq} is not in the verified log yet (it holds {size} envelopes); wait for it to be \
         sequenced, then export again"
    );
    let archived = s.archived(seq).await?.ok_or_else(|| {
        anyhow!(
            "your archive holds no envelope at seq {seq}: it is not in one of your rooms \
             (`backchannel read --all` lists what you hold)"
        )
    })?;
    let message = archived.message.as_ref().ok_or_else(|| {
        anyhow!(
            "the body of seq {seq} was purged (retention): the statement is no longer held, so \
             it cannot be opened"
        )
    })?;
    let statement = match &message.content {
        Content::Statement(bytes) => SignedStatement::decode(bytes)
            .map_err(|e| anyhow!("the statement at seq {seq} does not decode: {e}"))?,
        Content::Talk(_) | Content::Copy(_) | Content::Attachment(_) | Content::Handover(_) => {
            bail!(
                "seq {seq} is talk, not a signed statement: only statements are exported as \
             evidence"
            )
        }
    };
    match view
        .statements
        .iter()
        .find(|l| l.seq == seq)
        .map(|l| &l.verdict)
    {
        Some(Ok(())) => {}
        Some(Err(e)) => bail!(
            "replay rejected the statement at seq {seq} ({e}); a rejected statement proves \
             nothing and is not exported"
        ),
        None => bail!("the statement at seq {seq} was not replayed"),
    }
    let st = statement.unverified();
    let header = archived.header.header();

    // The ground rules: a rule for the exporter's own party must cover it.
    let me = ctx.record.party;
    let want = a.to.recipient();
    let covers = |scope: ExportScope| match scope {
        ExportScope::OwnStatements => st.acting_for == me,
        ExportScope::RoomsItHolds => roster
            .room_parties(header.room)
            .is_some_and(|parties| parties.contains(&me)),
        ExportScope::EvidenceBundles => true,
    };
    let allowed = rules
        .exports
        .iter()
        .any(|r| r.party == me && covers(r.scope) && r.to >= want);
    if !allowed {
        let scopes: Vec<&str> = [
            ExportScope::OwnStatements,
            ExportScope::RoomsItHolds,
            ExportScope::EvidenceBundles,
        ]
        .into_iter()
        .filter(|s| covers(*s))
        .map(scope_name)
        .collect();
        let mine: Vec<String> = rules
            .exports
            .iter()
            .filter(|r| r.party == me)
            .map(|r: &ExportRule| format!("{} → {}", scope_name(r.scope), recipient_name(r.to)))
            .collect();
        bail!(
            "the ground rules do not let {me_name} export the {ty} of {author} at seq {seq} to \
             {to}: that needs an export rule for {me_name} of {scopes} → {to} (or wider), and \
             the ground rules give {me_name} {have}",
            me_name = view.party_name(me),
            ty = type_name(&st.payload),
            author = view.party_name(st.acting_for),
            to = recipient_name(want),
            scopes = scopes.join(" or "),
            have = if mine.is_empty() {
                "no export rule".to_owned()
            } else {
                mine.join(", ")
            },
        );
    }

    // Finality: a device of every party cosigned this very note.
    let parties = view.party_cosigners();
    match is_final(&note, &parties)
        .map_err(|e| Evidence(format!("the checkpoint of size {size}: {e}")))?
    {
        Finality::Final => {}
        Finality::Pending { missing } => bail!(
            "the checkpoint of size {size} is not final yet: {} not cosigned it. Evidence is \
             made over final checkpoints only: wait until every party has run `backchannel log \
             verify` (which cosigns), then export again",
            match missing.as_slice() {
                [one] => format!("{} has", view.party_name(*one)),
                several => format!(
                    "{} have",
                    several
                        .iter()
                        .map(|p| view.party_name(*p))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        ),
    }

    // The inclusion proof at the verified size, checked against the
    // verified root from the archived leaf.
    let proof = s
        .node()
        .inclusion_proof(ctx.talks(), seq, size)
        .await
        .context("fetching the inclusion proof")?;
    s.check_inclusion(seq, &proof)
        .await
        .map_err(crate::messages::evidence_or)?;

    let chain = chain(&view, roster, roster_st, &statement, header.sender, seq)?;
    let bundle = EvidenceBundle {
        statement: statement.clone(),
        salt: message.salt,
        header: archived.header,
        seq,
        node_time: archived.node_time,
        proof,
        checkpoint_note: note,
        chain,
    };
    let witnesses: Vec<CosignerKey> = parties
        .iter()
        .flat_map(|(_, keys)| keys.iter().cloned())
        .collect();
    let verified = bundle
        .verify(
            &ctx.record.node.origin,
            &ctx.record.node.log_key,
            &witnesses,
        )
        .map_err(|e| anyhow!("the bundle made for seq {seq} does not verify: {e}"))?;
    let bytes = bundle.to_canonical_bytes();
    // The file, as written, must decode to the same bundle.
    ensure!(
        EvidenceBundle::from_canonical_bytes(&bytes).as_ref() == Ok(&bundle),
        "the bundle does not survive its own encoding"
    );
    participant::write_secret(&a.out, &bytes)?;

    let by_witness = witness_parties(&view);
    let mut cosigned_by: Vec<String> = verified
        .cosigned_by
        .iter()
        .filter_map(|name| by_witness.get(name))
        .map(|p| view.party_name(*p))
        .collect();
    cosigned_by.sort();
    cosigned_by.dedup();
    // A loss dated at or before the statement (its author's key, or the
    // device that sent it): the bundle proves the statement was logged
    // and signed, and the export says the record flags it.
    let flagged = revoked_or_expired(&view.replay, &st.author, seq, verified.node_time)
        .or_else(|| revoked_or_expired(&view.replay, &header.sender, seq, verified.node_time));
    Ok(Exported {
        flagged,
        talks: ctx.talks().to_hex(),
        seq,
        statement_type: type_name(&st.payload),
        statement_id: st.id.to_hex(),
        party: verified.party.to_hex(),
        party_name: view.party_name(verified.party),
        node_time: verified.node_time,
        checkpoint_size: verified.checkpoint_size,
        cosigned_by,
        markings: MarkingsOut::of(&verified.statement.statement().markings),
        to: recipient_name(want),
        out: a.out.display().to_string(),
        bytes: bytes.len(),
        log_key: hex::encode(ctx.record.node.log_key.as_bytes()),
        origin: ctx.record.node.origin.to_string(),
    })
}

/// The witness name each device the record certifies cosigns under, with
/// its party.
fn witness_parties(view: &View) -> BTreeMap<String, PartyId> {
    view.party_cosigners()
        .into_iter()
        .flat_map(|(party, keys)| keys.into_iter().map(move |k| (k.name().to_owned(), party)))
        .collect()
}

/// The chain for `statement`: the roster statement, then the certificates
/// (accepted by replay, logged before `seq`) that vouch for its author's
/// key and for the device that sent it, and for their certifiers, in log
/// order.
fn chain(
    view: &View,
    roster: &Roster,
    roster_st: &SignedStatement,
    statement: &SignedStatement,
    sender: KeyId,
    seq: u64,
) -> anyhow::Result<Vec<SignedStatement>> {
    let in_roster = |k: &KeyId| {
        roster
            .parties
            .iter()
            .any(|p| p.talks_authority_key.id() == *k)
            || roster
                .members
                .iter()
                .any(|m| m.identity_key.id() == *k || m.devices.iter().any(|d| d.id() == *k))
    };
    let certifies = |s: &SignedStatement| match &s.unverified().payload {
        Payload::MemberCert(c) => Some(c.identity_key.id()),
        Payload::DeviceCert(c) => Some(c.device_key.id()),
        // A talks authority passed on is vouched for by the pass.
        Payload::AuthorityPassed(a) => Some(a.new_key.id()),
        _ => None,
    };
    let mut needed = vec![statement.unverified().author, sender];
    let mut picked: BTreeMap<u64, SignedStatement> = BTreeMap::new();
    while let Some(key) = needed.pop() {
        if in_roster(&key) {
            continue;
        }
        let cert = view
            .statements
            .iter()
            .filter(|l| l.seq < seq && l.verdict.is_ok())
            .rfind(|l| certifies(&l.statement) == Some(key))
            .ok_or_else(|| {
                anyhow!(
                    "no certificate before seq {seq} vouches for key {}: the statement cannot be \
                     tied to the roster",
                    key.to_hex()
                )
            })?;
        if picked.insert(cert.seq, cert.statement.clone()).is_none() {
            needed.push(cert.statement.unverified().author);
        }
    }
    ensure!(
        picked.len() < MAX_CHAIN,
        "the author's key is vouched for by {} certificates; a bundle holds at most {}",
        picked.len(),
        MAX_CHAIN - 1
    );
    Ok(std::iter::once(roster_st.clone())
        .chain(picked.into_values())
        .collect())
}

// --- Offline verification ------------------------------------------------------

/// A cosigner, as `verify-statement` prints it.
#[derive(Debug, Serialize)]
struct CosignerOut {
    witness: String,
    party: String,
    party_name: String,
}

/// What `evidence verify-statement` prints.
#[derive(Debug, Serialize)]
struct VerifiedOut {
    talks: String,
    origin: String,
    statement_type: String,
    statement_id: String,
    statement_hash: String,
    party: String,
    party_name: String,
    party_authority_key: String,
    author: String,
    room: String,
    seq: u64,
    node_time: u64,
    checkpoint_size: u64,
    cosigners: Vec<CosignerOut>,
    parties_cosigning: usize,
    parties: usize,
    #[serde(rename = "final")]
    final_: bool,
    markings: MarkingsOut,
}

/// Runs `evidence verify-statement`: decodes an evidence bundle and
/// verifies it offline. The cosignatures checked are those of the devices
/// the bundle's own chain vouches for (a device certified elsewhere is
/// not counted).
pub fn verify_bundle(args: VerifyBundleArgs) -> anyhow::Result<()> {
    let log_key = hex::decode(&args.log_key)
        .ok()
        .and_then(|b| PublicKey::from_bytes(&b).ok())
        .context("--log-key must be the node's log key: 64 hex digits (`backchannel node info`)")?;
    let origin = NodeOrigin::new(&args.origin)
        .map_err(|e| anyhow!("--origin: {e}; use the node's origin (`backchannel node info`)"))?;
    let bytes = participant::read_bounded(&args.file, MAX_BUNDLE_LEN as u64, "evidence bundle")?;
    let bundle = EvidenceBundle::from_canonical_bytes(&bytes)
        .map_err(|e| anyhow!("{} is not an evidence bundle: {e}", args.file.display()))?;
    let (roster, witnesses) = chain_witnesses(&bundle);
    let verified = bundle
        .verify(
            &origin,
            &log_key,
            &witnesses
                .values()
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>(),
        )
        .map_err(|e| anyhow!("the evidence bundle does not verify: {e}"))?;
    let out = summary(&bundle, &verified, &origin, roster.as_ref(), &witnesses);
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "VERIFIED: the {} {} of {} (party {}, long-term authority key {}), signed by {}",
            out.statement_type,
            out.statement_id,
            out.party_name,
            out.party,
            out.party_authority_key,
            out.author
        );
        println!(
            "logged at seq {} in room “{}” (node time {} ms), included in the checkpoint of size {} of \
             {} signed by the log key {}",
            out.seq, out.room, out.node_time, out.checkpoint_size, out.origin, args.log_key
        );
        if out.cosigners.is_empty() {
            println!("cosigned by no device the bundle's chain vouches for");
        } else {
            println!(
                "cosigned by {} of the roster's {} parties{}: {}",
                out.parties_cosigning,
                out.parties,
                if out.final_ {
                    " (final)"
                } else {
                    " (NOT final)"
                },
                out.cosigners
                    .iter()
                    .map(|c| format!("{} ({})", c.party_name, c.witness))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!("markings: {}", out.markings.line());
    }
    Ok(())
}

/// The roster the chain starts with (as claimed: `verify` checks it), and
/// the cosigner key of every device the chain vouches for, with its party.
fn chain_witnesses(
    bundle: &EvidenceBundle,
) -> (Option<Roster>, BTreeMap<String, (CosignerKey, PartyId)>) {
    let mut out = BTreeMap::new();
    let Some(Payload::Roster(roster)) = bundle.chain.first().map(|s| &s.unverified().payload)
    else {
        return (None, out);
    };
    let mut add = |key: &PublicKey, party: PartyId| {
        if let Ok(k) = CosignerKey::new(&witness_name(&key.id()), *key) {
            out.insert(k.name().to_owned(), (k, party));
        }
    };
    for m in &roster.members {
        for d in &m.devices {
            add(d, m.party);
        }
    }
    // Device certificates: signed by an identity key of the roster or of
    // an earlier member certificate.
    let mut identities: BTreeMap<KeyId, PartyId> = roster
        .members
        .iter()
        .map(|m| (m.identity_key.id(), m.party))
        .collect();
    for cert in &bundle.chain[1..] {
        let st = cert.unverified();
        match &st.payload {
            Payload::MemberCert(c) => {
                identities.insert(c.identity_key.id(), c.party);
            }
            Payload::DeviceCert(c) => {
                if let Some(party) = identities.get(&st.author) {
                    add(&c.device_key, *party);
                }
            }
            _ => {}
        }
    }
    (Some(roster.clone()), out)
}

fn summary(
    bundle: &EvidenceBundle,
    verified: &VerifiedEvidence,
    origin: &NodeOrigin,
    roster: Option<&Roster>,
    witnesses: &BTreeMap<String, (CosignerKey, PartyId)>,
) -> VerifiedOut {
    let st = verified.statement.statement();
    let name = |p: PartyId| roster.map_or_else(|| p.to_hex(), |r| party_name(r, p));
    let cosigners: Vec<CosignerOut> = verified
        .cosigned_by
        .iter()
        .filter_map(|w| {
            witnesses.get(w).map(|(_, p)| CosignerOut {
                witness: w.clone(),
                party: p.to_hex(),
                party_name: name(*p),
            })
        })
        .collect();
    let cosigning: std::collections::BTreeSet<&str> =
        cosigners.iter().map(|c| c.party.as_str()).collect();
    // Every party of the roster with a device must have cosigned.
    let parties: std::collections::BTreeSet<PartyId> = roster
        .map(|r| {
            r.members
                .iter()
                .filter(|m| !m.devices.is_empty())
                .map(|m| m.party)
                .collect()
        })
        .unwrap_or_default();
    let header = bundle.header.header();
    let author = roster
        .and_then(|r| {
            r.parties
                .iter()
                .find(|p| p.talks_authority_key.id() == st.author)
                .map(|p| format!("the talks authority of {}", p.name))
                .or_else(|| {
                    r.members
                        .iter()
                        .find(|m| m.identity_key.id() == st.author)
                        .map(|m| format!("{}, {} ({})", m.name, name(m.party), m.role.name()))
                })
        })
        .unwrap_or_else(|| format!("key {} (certified in the chain)", st.author.to_hex()));
    let room = roster
        .and_then(|r| r.rooms.iter().find(|d| d.room == header.room))
        .map_or_else(|| header.room.to_hex(), |d| d.name.clone());
    VerifiedOut {
        talks: header.talks.to_hex(),
        origin: origin.to_string(),
        statement_type: type_name(&st.payload),
        statement_id: st.id.to_hex(),
        statement_hash: bundle.statement.hash().to_hex(),
        party: verified.party.to_hex(),
        party_name: name(verified.party),
        party_authority_key: hex::encode(verified.party_authority.as_bytes()),
        author,
        room,
        seq: verified.seq,
        node_time: verified.node_time,
        checkpoint_size: verified.checkpoint_size,
        parties_cosigning: parties
            .iter()
            .filter(|p| cosigning.contains(p.to_hex().as_str()))
            .count(),
        parties: parties.len(),
        final_: !parties.is_empty()
            && parties
                .iter()
                .all(|p| cosigning.contains(p.to_hex().as_str())),
        cosigners,
        markings: MarkingsOut::of(&st.markings),
    }
}
