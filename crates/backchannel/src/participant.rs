//! What every participant command shares: the home opened on one talks,
//! its keys, a session of its device, receiving into it ([`refresh`]), the
//! view of the talks that replaying its archive gives (roster, ground
//! rules, acceptances, phase, who each key speaks for, and how each
//! party's keys stand), and the files handed over out of band (read with
//! a bound, written owner-only).
//!
//! Keys: each talks has the participant's talks-authority (parties and the
//! mediator's designated signer), identity and device keys, all labelled
//! [`LABEL`] under that talks; the party's long-term authority key is the
//! home's `authority` key labelled [`LABEL`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail, ensure};
use backchannel_client::fork::cosigner_key;
use backchannel_client::participant::{self as talks_store, TalksRecord};
use backchannel_client::safety::{PartyVerification, SafetyCode, SafetyInputs};
use backchannel_client::seal::Content;
use backchannel_client::session::{Archived, Session, replay_statements};
use backchannel_client_store_sqlite::SqliteClientStore;
use backchannel_codec::{PartyId, RoomId, TalksId};
use backchannel_core::replay::{KeyRole, Phase, Replay};
use backchannel_crypto::{KeyId, SecretKey, Signer as _};
use backchannel_statement::roster::{RoomPurpose, Roster};
use backchannel_statement::{AccessList, SignedStatement};
use backchannel_tlog::CosignerKey;
use rand_core::{OsRng, RngCore};

use crate::cli::{HomePassphraseArgs, KeyKindArg, TalksArgs};
use crate::{home, keys};

/// The label of every key the participant commands make.
pub const LABEL: &str = "default";

/// The client session the CLI runs.
pub type CliSession = Session<SqliteClientStore>;

/// A home opened on one talks.
pub struct Ctx {
    /// The home's store.
    pub store: Arc<SqliteClientStore>,
    /// What the home remembers of the talks.
    pub record: TalksRecord,
}

/// Sixteen random bytes (ids).
pub fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b
}

/// The wall clock, Unix ms.
pub fn now_ms() -> u64 {
    use backchannel_node::sequencer::Clock as _;
    crate::system::SystemClock.now_ms()
}

/// Parses a talks id given on the command line.
pub fn parse_talks(s: &str) -> anyhow::Result<TalksId> {
    TalksId::from_hex(s).map_err(|_| {
        anyhow!(
            "--talks {s:?} is not a talks id; give its 32 hex digits (`backchannel talks show`)"
        )
    })
}

/// Opens the home and the talks `args` names (or its only talks).
pub async fn open(home_dir: &Path, args: &TalksArgs) -> anyhow::Result<Ctx> {
    open_with(home_dir, &args.passphrase, args.talks.as_deref()).await
}

/// Opens the home and the talks `talks` names (or its only talks).
pub async fn open_with(
    home_dir: &Path,
    passphrase: &HomePassphraseArgs,
    talks: Option<&str>,
) -> anyhow::Result<Ctx> {
    let store = Arc::new(home::open(home_dir, passphrase).await?);
    let talks = match talks {
        Some(s) => parse_talks(s)?,
        None => {
            let index = talks_store::talks_index(&*store).await?;
            match index.as_slice() {
                [one] => *one,
                [] => bail!(
                    "this home takes part in no talks yet; open some (`backchannel talks open`) \
                     or join with an invitation (`backchannel talks join`)"
                ),
                several => bail!(
                    "this home takes part in {} talks; choose one with --talks ({})",
                    several.len(),
                    several
                        .iter()
                        .map(TalksId::to_hex)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let record = talks_store::load(&*store, talks).await?.ok_or_else(|| {
        anyhow!(
            "this home does not take part in talks {talks}; `backchannel talks show` lists the \
             ones it does"
        )
    })?;
    Ok(Ctx { store, record })
}

impl Ctx {
    /// The talks.
    pub fn talks(&self) -> TalksId {
        self.record.talks
    }

    /// One of this participant's keys for the talks.
    pub async fn key(&self, kind: KeyKindArg) -> anyhow::Result<SecretKey> {
        keys::load(&self.store, kind, Some(self.talks()), LABEL)
            .await?
            .ok_or_else(|| {
                anyhow!(
                    "this home has no {} key for talks {}: it was deleted or replaced; this \
                     home cannot act in these talks any more",
                    kind.as_str(),
                    self.talks()
                )
            })
    }

    /// This participant's device session (resumed from the home).
    pub async fn session(&self) -> anyhow::Result<CliSession> {
        let device = self.key(KeyKindArg::Device).await?;
        let node = self.record.node.client(&device)?;
        Session::open(
            self.store.clone(),
            node,
            device,
            self.talks(),
            &self.record.node.origin,
            self.record.node.log_key,
        )
        .await
        .context("resuming the session from the home")
    }

    /// Saves the talks record.
    pub async fn save(&self) -> anyhow::Result<()> {
        talks_store::save(&*self.store, &self.record).await?;
        Ok(())
    }

    /// Closes the store.
    pub async fn close(self) {
        self.store.close().await;
    }
}

/// Submits `change` over a connection of `ta`, the party's talks
/// authority (its designated signer on the list): the node takes changes
/// from a designated signer's connection whatever the flags of this home's
/// device (a talks authority passed to a member who is not a head).
pub async fn submit_change(
    ctx: &Ctx,
    ta: &SecretKey,
    change: &backchannel_statement::AccessListChange,
) -> anyhow::Result<backchannel_client::net::ChangeOutcome> {
    Ok(ctx
        .record
        .node
        .client(ta)?
        .submit_change(ctx.talks(), change)
        .await?)
}

/// The node's current access list, as served (the one `receive` checks
/// senders against, with the archive's replay for keys since removed).
pub async fn access_list(s: &CliSession) -> anyhow::Result<AccessList> {
    match s.node().access_list(s.talks()).await {
        Ok(served) => Ok(served.list),
        Err(e) if e.status() == Some(404) => bail!(
            "the node does not know this device in talks {}: it was taken off the access list \
             (removed or revoked by its party), or it was never seated (`backchannel talks \
             accept`)",
            s.talks()
        ),
        Err(e) => Err(anyhow!(e).context("fetching the talks' access list from the node")),
    }
}

/// A statement in the archive, with replay's verdict.
pub struct Logged {
    /// Its seq.
    pub seq: u64,
    /// The statement.
    pub statement: SignedStatement,
    /// What replay made of it: `Ok` accepted, `Err` why rejected.
    pub verdict: Result<(), String>,
}

/// What replaying the archive shows of the talks.
pub struct View {
    /// The archive replayed, in seq order.
    pub archive: Vec<Archived>,
    /// The replay, after the whole archive.
    pub replay: Replay,
    /// Every statement, with replay's verdict, in seq order.
    pub statements: Vec<Logged>,
    /// Who each key speaks for: (party, display name).
    pub names: BTreeMap<KeyId, (PartyId, String)>,
}

impl View {
    /// Replays `archive` (`backchannel_core::replay`: keys by log
    /// position, ground rules first, acceptances, the talks' phase).
    pub fn of(talks: TalksId, archive: Vec<Archived>) -> Self {
        let mut replay = Replay::new(talks);
        // Statements that do not decode are left out (`log verify` names
        // them); the others carry replay's verdict.
        let statements: Vec<Logged> = replay_statements(&mut replay, &archive, &mut OsRng)
            .into_iter()
            .filter_map(|r| {
                let (statement, verdict) = r.statement.ok()?;
                Some(Logged {
                    seq: r.archived.seq,
                    statement,
                    verdict: verdict.map(|_| ()).map_err(|e| e.to_string()),
                })
            })
            .collect();
        let mut names = BTreeMap::new();
        if let Some(r) = replay.roster() {
            for p in &r.parties {
                names.insert(
                    p.talks_authority_key.id(),
                    (p.party, format!("{} (talks authority)", p.name)),
                );
            }
            // A talks authority passed on: the new key is named too, and the
            // old one as former.
            for pass in replay.authority_passes() {
                if let Some(p) = r.parties.iter().find(|p| p.party == pass.party) {
                    names.insert(
                        pass.new.id(),
                        (p.party, format!("{} (talks authority)", p.name)),
                    );
                    names.insert(
                        pass.old,
                        (p.party, format!("{} (former talks authority)", p.name)),
                    );
                }
            }
            for m in &r.members {
                let party = r
                    .parties
                    .iter()
                    .find(|p| p.party == m.member.party)
                    .map_or("?", |p| p.name.as_str());
                let who = format!("{}, {} ({})", m.member.name, party, m.member.role.name());
                names.insert(m.member.identity_key.id(), (m.member.party, who.clone()));
                for d in &m.member.devices {
                    names.insert(d.id(), (m.member.party, who.clone()));
                }
            }
        }
        Self {
            archive,
            replay,
            statements,
            names,
        }
    }

    /// The envelope archived at `seq` (the archive is in seq order).
    pub fn archived_at(&self, seq: u64) -> Option<&Archived> {
        let i = self.archive.binary_search_by_key(&seq, |a| a.seq).ok()?;
        self.archive.get(i)
    }

    /// The statement archived at `seq`, with replay's verdict.
    pub fn logged(&self, seq: u64) -> Option<&Logged> {
        let i = self.statements.binary_search_by_key(&seq, |l| l.seq).ok()?;
        self.statements.get(i)
    }

    fn statement_at(&self, seq: u64) -> Option<&SignedStatement> {
        self.logged(seq).map(|l| &l.statement)
    }

    /// The archived envelopes from `seq` on.
    pub fn archived_from(&self, seq: u64) -> &[Archived] {
        let i = self.archive.partition_point(|a| a.seq < seq);
        &self.archive[i..]
    }

    /// The roster statement replay accepted.
    pub fn roster_statement(&self) -> Option<&SignedStatement> {
        self.statement_at(self.replay.roster_statement()?.seq)
    }

    /// The ground rules statement replay accepted.
    pub fn ground_rules_statement(&self) -> Option<&SignedStatement> {
        self.statement_at(self.replay.ground_rules_statement()?.seq)
    }

    /// The roster, as replay accepted it.
    pub fn roster(&self) -> Option<&Roster> {
        self.replay.roster()
    }

    /// Whether `party` accepted roster and ground rules.
    pub fn has_accepted(&self, party: PartyId) -> bool {
        self.replay.accepted_by().contains(&party)
    }

    /// The parties (not the mediator) that have not accepted yet.
    pub fn awaiting(&self) -> Vec<PartyId> {
        self.replay.awaiting_acceptance()
    }

    /// The talks safety code as this participant sees them, once roster
    /// and ground rules are known.
    pub fn safety_code(&self, record: &TalksRecord) -> Option<SafetyCode> {
        Some(SafetyCode::compute(&SafetyInputs {
            talks: record.talks,
            roster: self.replay.roster_statement()?.hash,
            ground_rules: self.replay.ground_rules_statement()?.hash,
            node_fingerprint: record.node.fingerprint.0,
            log_key: record.node.log_key,
            authority_passes: self.authority_pass_hashes(),
        }))
    }

    /// SHA-256 of each accepted authority-passed statement, in log order
    /// (what the safety code covers of them).
    pub fn authority_pass_hashes(&self) -> Vec<backchannel_crypto::Digest> {
        self.replay
            .authority_passes()
            .iter()
            .filter_map(|p| self.logged(p.seq))
            .map(|l| l.statement.hash())
            .collect()
    }

    /// How `party`'s keys stand for this participant now: its recorded
    /// verification, against the current code.
    pub fn standing(&self, record: &TalksRecord, party: PartyId) -> PartyVerification {
        if party == record.party {
            return PartyVerification::Verified {
                how: "your own party".into(),
                at_ms: 0,
                code: SafetyCode(backchannel_crypto::Digest([0; 32])),
            };
        }
        let v = record.verification(party);
        match self.safety_code(record) {
            Some(code) => v.against(code),
            None => v,
        }
    }

    /// Who must cosign for a checkpoint to be final, from the record (never
    /// the node's list, which the node could change to suit a fork): every
    /// party of the roster, with the cosigner keys of the devices the
    /// replayed record certifies for its members (the roster's, and device
    /// certificates since), unrevoked.
    pub fn party_cosigners(&self) -> Vec<(PartyId, Vec<CosignerKey>)> {
        let Some(roster) = self.roster() else {
            return Vec::new();
        };
        let mut devices: BTreeMap<PartyId, BTreeSet<backchannel_crypto::PublicKey>> =
            BTreeMap::new();
        for m in &roster.members {
            devices
                .entry(m.member.party)
                .or_default()
                .extend(m.member.devices.iter().copied());
        }
        for l in self.statements.iter().filter(|l| l.verdict.is_ok()) {
            if let backchannel_statement::Payload::DeviceCert(c) = &l.statement.unverified().payload
            {
                devices
                    .entry(l.statement.unverified().acting_for)
                    .or_default()
                    .insert(c.device_key);
            }
        }
        roster
            .parties
            .iter()
            .map(|p| {
                let keys = devices
                    .get(&p.party)
                    .into_iter()
                    .flatten()
                    .filter(|k| {
                        self.replay
                            .key(&k.id())
                            .is_some_and(|st| st.revoked_at.is_none())
                    })
                    .filter_map(|k| cosigner_key(k).ok())
                    .collect();
                (p.party, keys)
            })
            .collect()
    }

    /// The talks' phase, parties named.
    pub fn phase_text(&self) -> String {
        match self.replay.phase() {
            Phase::Suspended { by, at } => {
                format!("suspended by {} at seq {at}", self.party_name(*by))
            }
            other => other.to_string(),
        }
    }

    /// The party's name.
    pub fn party_name(&self, party: PartyId) -> String {
        self.roster()
            .and_then(|r| r.parties.iter().find(|p| p.party == party))
            .map_or_else(|| party.to_hex(), |p| p.name.clone())
    }

    /// Who `key` speaks for, with how that party's keys stand: what every
    /// view of a signature shows.
    pub fn signer(&self, record: &TalksRecord, key: &KeyId) -> String {
        match self.names.get(key) {
            Some((party, who)) => {
                let standing = self.standing(record, *party);
                if *party == record.party {
                    who.clone()
                } else {
                    format!("{who} [{}]", standing.label())
                }
            }
            None => match self.replay.key(key).map(|k| &k.role) {
                Some(
                    KeyRole::Device {
                        party, principal, ..
                    }
                    | KeyRole::Identity {
                        party, principal, ..
                    },
                ) => {
                    // Member certificates name no one; this home knows the
                    // names of the members it invited.
                    let name = record
                        .pending_members
                        .iter()
                        .find(|m| m.principal == *principal)
                        .map_or_else(|| "a member".to_owned(), |m| m.name.clone());
                    format!(
                        "{name}, {} (certified after the roster){}",
                        self.party_name(*party),
                        if *party == record.party {
                            String::new()
                        } else {
                            format!(" [{}]", self.standing(record, *party).label())
                        }
                    )
                }
                _ => format!("key {}", key.to_hex()),
            },
        }
    }

    /// The private-notes rooms the roster declares (never handed over, and
    /// never given to another member's device).
    pub fn private_notes(&self) -> BTreeSet<RoomId> {
        self.roster()
            .map(|r| {
                r.rooms
                    .iter()
                    .filter(|d| d.purpose == RoomPurpose::PrivateNotes)
                    .map(|d| d.room)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The room's name, as the roster declares it.
    pub fn room_name(&self, room: RoomId) -> String {
        self.roster()
            .and_then(|r| r.rooms.iter().find(|d| d.room == room))
            .map_or_else(|| room.to_hex(), |d| d.name.clone())
    }

    /// Finds one of the participant's rooms by its id, its name, or words
    /// each beginning a word of its name ("record", "caucus", "caucus
    /// united"), when only one room matches.
    pub fn find_room(
        &self,
        record: &TalksRecord,
        mine: &BTreeSet<RoomId>,
        query: &str,
    ) -> anyhow::Result<RoomId> {
        if let Ok(id) = RoomId::from_hex(query) {
            return Ok(id);
        }
        let q = query.to_lowercase();
        let Some(r) = self.roster() else {
            // Before the roster only the record room exists.
            return match record.record_room {
                Some(room) if q == "record" => Ok(room),
                _ => bail!(
                    "the roster has not been received yet: only the record room exists (--room \
                     record); run `backchannel read` to fetch the roster"
                ),
            };
        };
        let mine: Vec<_> = r.rooms.iter().filter(|d| mine.contains(&d.room)).collect();
        let matching: Vec<_> = mine
            .iter()
            .filter(|d| {
                let name = d.name.to_lowercase();
                let words: Vec<&str> = name.split([' ', ':']).filter(|w| !w.is_empty()).collect();
                name == q
                    || (q == "record" && d.purpose == RoomPurpose::Record)
                    || q.split_whitespace()
                        .all(|qw| words.iter().any(|w| w.starts_with(qw)))
            })
            .collect();
        match matching.as_slice() {
            [one] => Ok(one.room),
            [] => bail!(
                "you are in no room called {query:?}; your rooms: {}",
                mine.iter()
                    .map(|d| format!("{:?}", d.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            several => bail!(
                "{} of your rooms match {query:?}: {}; give the whole name or the id",
                several.len(),
                several
                    .iter()
                    .map(|d| format!("{:?} ({})", d.name, d.room.to_hex()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Finds a party of the roster by its id, name (any case), a prefix of
    /// one of its words, or a prefix of its initials ("US" for "United
    /// States", "IR" for "Islamic Republic of Iran").
    pub fn find_party(&self, query: &str) -> anyhow::Result<PartyId> {
        let Some(r) = self.roster() else {
            bail!(
                "the roster has not been received yet; run `backchannel read` (or `backchannel \
                 talks accept`) first"
            );
        };
        if let Ok(id) = PartyId::from_hex(query)
            && r.parties.iter().any(|p| p.party == id)
        {
            return Ok(id);
        }
        let q = query.to_lowercase();
        let exact: Vec<_> = r
            .parties
            .iter()
            .filter(|p| p.name.to_lowercase() == q)
            .collect();
        let matching = if exact.is_empty() && q.len() >= 2 {
            r.parties
                .iter()
                .filter(|p| {
                    let initials: String = p
                        .name
                        .split_whitespace()
                        .filter_map(|w| w.chars().next())
                        .filter(|c| c.is_uppercase())
                        .collect::<String>()
                        .to_lowercase();
                    initials.starts_with(&q)
                        || p.name
                            .split_whitespace()
                            .any(|w| w.to_lowercase().starts_with(&q))
                })
                .collect()
        } else {
            exact
        };
        match matching.as_slice() {
            [one] => Ok(one.party),
            [] => bail!(
                "no party of the roster matches {query:?}; the parties: {}",
                r.parties
                    .iter()
                    .map(|p| format!("{:?}", p.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            several => bail!(
                "{} parties match {query:?}: {}; give more of the name",
                several.len(),
                several
                    .iter()
                    .map(|p| format!("{:?}", p.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The rooms the device is in, by the access list (or none).
pub fn my_rooms(list: &AccessList, device: &SecretKey) -> BTreeSet<RoomId> {
    list.get(&device.public_key().id())
        .map(|e| e.rooms().iter().copied().collect())
        .unwrap_or_default()
}

/// Receives everything new and keeps this device's rooms in step with the
/// access list (key packages, groups, adds and removes, copies for
/// newcomers: `backchannel_client::rooms`); the archive's view after it.
pub async fn refresh(ctx: &Ctx, s: &mut CliSession) -> anyhow::Result<View> {
    let list = access_list(s).await?;
    s.receive(&list)
        .await
        .map_err(crate::messages::evidence_or)
        .context("receiving from the node")?;
    let synced = s
        .sync_rooms(&list, now_ms() / 1000)
        .await
        .map_err(crate::messages::evidence_or)
        .context("keeping this device's rooms in step with the access list")?;
    if synced.changed() {
        s.receive(&list)
            .await
            .map_err(crate::messages::evidence_or)
            .context("receiving from the node")?;
    }
    let view = View::of(ctx.talks(), s.archive().await?);
    if synced.rejoined_from.is_empty() {
        return Ok(view);
    }
    // RFC 9420 §14 (f): a member that could not process a sequenced commit
    // says so in the record, signed, and rejoined by external commit.
    for (room, epoch) in &synced.rejoined_from {
        if let Err(e) = commit_failure(ctx, s, &view, *room, *epoch).await {
            eprintln!(
                "warning: this device rejoined room {} after a commit it could not process,                  but could not post the signed commit failure to the record ({e:#}); it will                  not try again",
                view.room_name(*room)
            );
        }
    }
    Ok(View::of(ctx.talks(), s.archive().await?))
}

/// Posts a signed `commit_failure` for the commit of `epoch` in `room`:
/// the latest handshake of the room this device archived as unprocessable
/// (or, where its MLS state was lost rather than a commit refused, the
/// room's latest handshake it archived).
async fn commit_failure(
    ctx: &Ctx,
    s: &mut CliSession,
    view: &View,
    room: RoomId,
    epoch: u64,
) -> anyhow::Result<()> {
    let record_room = ctx.record.record_room.context("no record room")?;
    let seq = view
        .archive
        .iter()
        .rev()
        .find(|a| {
            let h = a.header.header();
            h.room == room
                && h.kind == backchannel_statement::Kind::MlsHandshake
                && a.unreadable.is_some()
        })
        .or_else(|| {
            view.archive.iter().rev().find(|a| {
                let h = a.header.header();
                h.room == room && h.kind == backchannel_statement::Kind::MlsHandshake
            })
        })
        .map(|a| a.seq)
        .context("no commit of that room in the archive")?;
    // A fixed reason: the error text may quote what a peer sent, and the
    // record is read by every delegation.
    let key = ctx.key(KeyKindArg::Identity).await?;
    let failure = backchannel_statement::CommitFailure::new(
        room,
        seq,
        epoch,
        "this device could not process the commit and rejoined by external commit",
    )?;
    let st = crate::talks::statement(
        &key,
        &ctx.record,
        record_room,
        s.checkpoint_ref(),
        backchannel_statement::Payload::CommitFailure(failure),
    )?;
    post(s, record_room, Content::Statement(st.as_bytes().to_vec())).await?;
    Ok(())
}

/// Encrypts `content` for `room` and sends it (a stale epoch is caught up
/// with and encrypted again); the seq.
pub async fn post(s: &mut CliSession, room: RoomId, content: Content) -> anyhow::Result<u64> {
    let list = access_list(s).await?;
    s.send(
        &list,
        room,
        content,
        backchannel_statement::Salt::generate(&mut OsRng),
    )
    .await
    .map_err(crate::messages::evidence_or)
}

// --- Files handed over out of band -------------------------------------------

/// The largest document a participant reads from a file handed over out
/// of band (an invitation, a member's reply): far above any real one.
pub const MAX_DOCUMENT: u64 = 256 * 1024;

/// Reads a file of at most `max` bytes, refusing a larger one before
/// reading it.
pub fn read_bounded(path: &Path, max: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path)
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    ensure!(
        bytes.len() as u64 <= max,
        "{} is larger than any {what} ({max} bytes at most); check the file",
        path.display()
    );
    Ok(bytes)
}

/// Reads a text document of at most [`MAX_DOCUMENT`] bytes.
pub fn read_document(path: &Path, what: &str) -> anyhow::Result<String> {
    String::from_utf8(read_bounded(path, MAX_DOCUMENT, what)?)
        .map_err(|_| anyhow!("{} is not a {what}: it is not UTF-8 text", path.display()))
}

/// Writes a new file only the owner can read, refusing an existing one.
pub fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow!("{} exists; choose another --out", path.display())
        } else {
            anyhow!("cannot create {}: {e}", path.display())
        }
    })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
