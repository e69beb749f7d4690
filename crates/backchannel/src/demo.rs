//! `backchannel demo`: the opening of the reference scenario on a real node.
//!
//! Starts a node on a fresh temporary directory (SQLite, TLS on loopback,
//! clients pinning its fingerprint), creates Oman's mediation team (a lead
//! and a staff member) and the US (envoy, note-taker, negotiator, shipping
//! expert) and Iranian (deputy foreign minister, expert) delegations with
//! fresh keys, and runs the talks through the client library: the mediator
//! opens the talks and invites each party; each party enrols its talks
//! authority with its one-time token; the mediator builds the roster from
//! what the parties certified, with the rooms of the proximity preset, an
//! expert track on shipping and a letter room (`crate::room_plan`), and
//! release required; each party's designated signer co-signs the
//! access-list change that seats its devices; every device joins its rooms'
//! MLS groups; the mediator posts roster and ground rules; every party
//! verifies them and accepts.
//!
//! Then the opening of the scenario, every message a statement signed by
//! its author's identity key: Iran's delegation deliberates in its internal
//! room; a US note-taker drafts, and the US envoy releases, the demand that
//! Iran restrain its proxies; Oman receipts it and conveys it verbatim to
//! Iran with its evidence (Iran's client checks the author's signature and
//! the inclusion proof against its own verified log), conveys Iran's
//! ceasefire demand re-drafted, refuses to convey Iran's `mediator-only`
//! note verbatim, puts a non-paper on detainees to both caucuses and
//! records an oral message; the experts meet on shipping; a sealed letter
//! passes between the parties with no mediator in the room. Every device
//! verifies the log from the data tiles and cosigns the same checkpoint,
//! which is then final; each party's safety code is printed (they match),
//! and what each participant saw, rendered as `backchannel read` renders it
//! (`crate::say::describe`).
//!
//! Every body is an MLS message: the node holds only ciphertext. With the
//! hidden `--canary HEX32`, the hex string is appended to every name,
//! title, agenda item, message and statement text, so a test can search the
//! node's files and log output for it (`tests/demo.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use age::secrecy::SecretString;
use anyhow::{Context as _, anyhow, bail, ensure};
use backchannel_client::net::NodeClient;
use backchannel_client::participant::Enrolment;
use backchannel_client::safety::{PartyVerification, SafetyCode, SafetyInputs};
use backchannel_client::seal::Content;
use backchannel_client::session::{Archived, Session};
use backchannel_client_store_sqlite::{ClientStoreOptions, SqliteClientStore};
use backchannel_codec::{PartyId, PrincipalId, RoomId, TalksId};
use backchannel_core::posts::{check_outgoing, check_verbatim, may_convey};
use backchannel_crypto::{Digest, KeyId, PublicKey, SecretKey, Signer, sha256};
use backchannel_node::limits::Limits;
use backchannel_node::net::{Transport, serve};
use backchannel_node::server::{Node, NodeConfig};
use backchannel_node::tls::{Identity, server_config};
use backchannel_statement::access_list::{
    AccessEntry, FLAG_DESIGNATED_SIGNER, FLAG_DEVICE, FLAG_MAY_PROPOSE, FLAG_MEDIATOR,
};
use backchannel_statement::roster::{
    MemberEntry, MemberFields, PartyEntry, RoomPurpose, VerifiedRoster,
};
use backchannel_statement::{
    Acceptance, AccessList, AccessListChange, AccessListDelta, AgendaItem, Attribution, Audience,
    AuthorityPassed, CheckpointRef, Conveyance, Conveyed, InvitationFields, InvitationToken,
    Markings, Message, PartyKind, PassedHow, Payload, Receipt, ReceiptKind, Release, Role, Roster,
    Salt, SignedStatement, Statement,
};
use backchannel_store_postgres::{PostgresOptions, PostgresStore};
use backchannel_store_sqlite::{SqliteOptions, SqliteStore};
use backchannel_tlog::NodeOrigin;
use rand_core::{OsRng, RngCore};

use crate::participant::View;
use crate::room_plan::{Preset, RoomPlan};
use crate::system::{SystemClock, TcpListener};

/// One member of a delegation.
struct Member {
    name: String,
    role: Role,
    principal: PrincipalId,
    identity: SecretKey,
    device: SecretKey,
}

/// A delegation (or the mediation team).
struct Party {
    name: String,
    short: &'static str,
    kind: PartyKind,
    id: PartyId,
    authority: SecretKey,
    talks_authority: SecretKey,
    members: Vec<Member>,
}

/// The canary planted in every name and text, if any (`--canary`).
struct Plant(Option<String>);

impl Plant {
    /// `text`, with the canary appended.
    fn s(&self, text: &str) -> String {
        match &self.0 {
            Some(c) => format!("{text} {c}"),
            None => text.to_owned(),
        }
    }

    /// An agenda item named `name`.
    fn item(&self, name: &str) -> anyhow::Result<Option<AgendaItem>> {
        Ok(Some(AgendaItem::new(self.s(name))?))
    }
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b
}

fn salt() -> Salt {
    Salt::generate(&mut OsRng)
}

fn party(
    plant: &Plant,
    name: &str,
    short: &'static str,
    kind: PartyKind,
    members: &[(&str, Role)],
) -> Party {
    Party {
        name: plant.s(name),
        short,
        kind,
        id: PartyId(random16()),
        authority: SecretKey::generate(&mut OsRng),
        talks_authority: SecretKey::generate(&mut OsRng),
        members: members
            .iter()
            .map(|&(name, role)| Member {
                name: plant.s(name),
                role,
                principal: PrincipalId(random16()),
                identity: SecretKey::generate(&mut OsRng),
                device: SecretKey::generate(&mut OsRng),
            })
            .collect(),
    }
}

impl Party {
    /// What the party certifies for the roster: its party entry (by its
    /// long-term authority) and its member entries (by its talks
    /// authority).
    fn certified(&self, talks: TalksId) -> anyhow::Result<(PartyEntry, Vec<MemberEntry>)> {
        let entry = PartyEntry::certify(
            talks,
            self.id,
            self.kind,
            self.name.as_str(),
            &self.authority,
            self.talks_authority.public_key(),
        )?;
        let members = self
            .members
            .iter()
            .map(|m| {
                let acts = crate::talks::acts_of(m.role);
                MemberFields {
                    principal: m.principal,
                    party: self.id,
                    role: m.role,
                    name: m.name.clone(),
                    identity_key: m.identity.public_key(),
                    devices: vec![m.device.public_key()],
                    acts,
                }
                .certify(talks, &self.talks_authority)
                .map_err(|e| anyhow!("{e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok((entry, members))
    }
}

fn statement(
    signer: &SecretKey,
    talks: TalksId,
    party: PartyId,
    record: RoomId,
    checkpoint: CheckpointRef,
    payload: Payload,
) -> anyhow::Result<SignedStatement> {
    Ok(Statement::new(
        &mut OsRng,
        talks,
        signer.public_key().id(),
        party,
        vec![Audience::Room(record)],
        checkpoint,
        Markings::mediator_only(),
        payload,
    )?
    .sign(signer)?)
}

fn now_ms() -> u64 {
    use backchannel_node::sequencer::Clock as _;
    SystemClock.now_ms()
}

type DemoSession = Session<SqliteClientStore>;

/// Waits until the node has integrated everything sequenced so far.
async fn wait_for_integration(s: &DemoSession) -> anyhow::Result<()> {
    let talks = s.talks();
    for _ in 0..100 {
        let size = s.node().fetch(talks, 0, 1).await?.log_size;
        let (cp, _) = s.node().checkpoint(talks).await?;
        if cp == size {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the node did not integrate its log within 5 s")
}

/// One device at the table: its member, its session and its rooms.
struct Seat {
    /// "[US] US envoy".
    label: String,
    party: PartyId,
    principal: PrincipalId,
    identity: SecretKey,
    s: DemoSession,
    rooms: BTreeSet<RoomId>,
}

// The seats, in the order the delegations list their members.
const OM_LEAD: usize = 0;
const OM_STAFF: usize = 1;
const US_ENVOY: usize = 2;
const US_NOTE_TAKER: usize = 3;
const US_NEGOTIATOR: usize = 4;
const US_EXPERT: usize = 5;
const IR_HEAD: usize = 6;
const IR_EXPERT: usize = 7;

/// What every post is checked and signed against.
struct Table<'a> {
    talks: TalksId,
    roster: &'a Roster,
    list: &'a AccessList,
    letters: &'a [(PartyId, PartyId)],
}

impl Table<'_> {
    /// Signs `payload` with the seat's identity key, for `audience`.
    fn sign(
        &self,
        seat: &Seat,
        audience: Vec<Audience>,
        markings: Markings,
        payload: Payload,
    ) -> anyhow::Result<SignedStatement> {
        Ok(Statement::new(
            &mut OsRng,
            self.talks,
            seat.identity.public_key().id(),
            seat.party,
            audience,
            seat.s.checkpoint_ref(),
            markings,
            payload,
        )?
        .sign(&seat.identity)?)
    }

    /// Posts a signed statement to `room` through the room's MLS group.
    async fn post(
        &self,
        seat: &mut Seat,
        room: RoomId,
        st: &SignedStatement,
    ) -> anyhow::Result<u64> {
        Ok(seat
            .s
            .send(
                self.list,
                room,
                Content::Statement(st.as_bytes().to_vec()),
                salt(),
            )
            .await?)
    }

    /// Whether the seat may post `msg` to `room` (`posts::check_outgoing`:
    /// release rules, letters, membership).
    fn check(&self, seat: &Seat, room: RoomId, msg: &Message) -> anyhow::Result<()> {
        check_outgoing(
            self.roster,
            seat.principal,
            seat.party,
            room,
            self.list
                .seats_device(&seat.s.device().public_key().id(), room),
            msg,
            |a, b| {
                let pair = if a < b { (a, b) } else { (b, a) };
                self.letters.contains(&pair)
            },
        )
        .map_err(|e| anyhow!("{e}"))
    }

    /// A signed message by the seat in `room`, checked first; also for
    /// `parties` beyond the room (a verbatim conveyance needs them).
    async fn say(
        &self,
        seat: &mut Seat,
        room: RoomId,
        msg: Message,
        markings: Markings,
        parties: &[PartyId],
    ) -> anyhow::Result<(u64, SignedStatement)> {
        self.check(seat, room, &msg)?;
        let mut audience = vec![Audience::Room(room)];
        audience.extend(parties.iter().map(|p| Audience::Party(*p)));
        let st = self.sign(seat, audience, markings, Payload::Message(msg))?;
        let seq = self.post(seat, room, &st).await?;
        Ok((seq, st))
    }

    /// Releases `draft` (by `drafter`) from the seat's internal room to
    /// `room`.
    async fn release(
        &self,
        seat: &mut Seat,
        draft: &SignedStatement,
        drafter: PrincipalId,
        room: RoomId,
        markings: Markings,
        parties: &[PartyId],
    ) -> anyhow::Result<(u64, SignedStatement)> {
        let Payload::Message(d) = &draft.unverified().payload else {
            bail!("only a drafted message is released");
        };
        let release = Release {
            draft: draft.unverified().id,
            draft_hash: draft.hash(),
            drafter,
        };
        let msg = Message::new(d.item.clone(), d.text().to_owned(), Some(release))?;
        self.say(seat, room, msg, markings, parties).await
    }

    /// A conveyance by the seat (a mediator whose role permits it, by the
    /// record it replayed), to `room`.
    async fn convey(
        &self,
        seat: &mut Seat,
        room: RoomId,
        conveyed: Conveyed,
    ) -> anyhow::Result<u64> {
        let view = View::of(self.talks, seat.s.archive().await?);
        ensure!(
            may_convey(&view.replay, &seat.identity.public_key().id()),
            "{} may not convey",
            seat.label
        );
        ensure!(
            self.roster.room(room).map(|d| d.purpose) != Some(RoomPurpose::Record),
            "conveyances never go to the record room"
        );
        conveyed.check()?;
        let st = self.sign(
            seat,
            vec![Audience::Room(room)],
            Markings::mediator_only(),
            Payload::Conveyance(conveyed),
        )?;
        self.post(seat, room, &st).await
    }
}

fn marked(conveyance: Conveyance, receipt_required: bool) -> anyhow::Result<Markings> {
    let mut m = Markings::new(conveyance, vec![], Attribution::Formal)?;
    m.receipt_required = receipt_required;
    Ok(m)
}

/// Runs the demo; `keep`: leave its directory (the node's data and the
/// participants' homes) in place; `canary`: 32 hex digits planted in every
/// name and text; `answers`: a new file to copy every answer of the node
/// to (`backchannel_client::net::tap_answers`); `database`: a PostgreSQL
/// URL for the node instead of a SQLite file in the demo's directory;
/// `nodes`: how many nodes serve that database (2: the first is stopped
/// midway and the clients fail over).
pub fn main(
    keep: bool,
    canary: Option<&str>,
    answers: Option<&Path>,
    database: Option<&str>,
    nodes: u8,
) -> anyhow::Result<()> {
    ensure!(
        nodes == 1 || (nodes == 2 && database.is_some()),
        "--nodes 2 needs --database postgres://…: nodes share one PostgreSQL database"
    );
    if let Some(url) = database {
        ensure!(
            url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "--database takes a PostgreSQL URL, postgres://USER@HOST:PORT/DATABASE (without it \
             the demo's node uses a SQLite file in the demo's directory)"
        );
    }
    if let Some(path) = answers {
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)
            .with_context(|| format!("creating {} for the node's answers", path.display()))?;
        backchannel_client::net::tap_answers(Box::new(file)).map_err(|e| anyhow!(e))?;
    }
    let canary = match canary {
        Some(c) => {
            ensure!(
                c.len() == 32 && c.bytes().all(|b| b.is_ascii_hexdigit()),
                "--canary takes 32 hex digits"
            );
            Some(c.to_ascii_lowercase())
        }
        None => None,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let dir = std::env::temp_dir().join(format!("backchannel-demo-{}", hex::encode(random16())));
    let node_dir = dir.join("node");
    let homes = dir.join("homes");
    for d in [&node_dir, &homes] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let result = runtime.block_on(run(&node_dir, &homes, &Plant(canary), database, nodes));
    drop(runtime);
    if keep {
        println!(
            "\nThe node's data directory is kept at {}",
            node_dir.display()
        );
        println!("The participants' homes are kept at {}", homes.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run(
    node_dir: &Path,
    homes: &Path,
    plant: &Plant,
    database: Option<&str>,
    nodes: u8,
) -> anyhow::Result<()> {
    println!("Backchannel demo: Oman mediates between the United States and Iran.\n");
    println!(
        "Note: formal statements are transferable proof, and talk is attributable:\n\
         Backchannel offers no deniability. Every room is an MLS group: the node\n\
         relays and logs ciphertext it cannot read.\n"
    );

    // Delegations.
    let oman = party(
        plant,
        "Sultanate of Oman",
        "OM",
        PartyKind::Mediator,
        &[
            ("Omani lead mediator", Role::Lead),
            ("Omani mediation staff", Role::Staff),
        ],
    );
    let mut us = party(
        plant,
        "United States",
        "US",
        PartyKind::Party,
        &[
            ("US envoy", Role::Head),
            ("US note-taker", Role::NoteTaker),
            ("US negotiator", Role::Negotiator),
            ("US shipping expert", Role::Expert),
        ],
    );
    let iran = party(
        plant,
        "Islamic Republic of Iran",
        "IR",
        PartyKind::Party,
        &[
            ("Iranian deputy foreign minister", Role::Head),
            ("Iranian expert", Role::Expert),
        ],
    );
    let talks = TalksId(random16());
    let record = RoomId(random16());
    let us_caucus = RoomId(random16());
    let iran_caucus = RoomId(random16());

    // The node.
    let log_key = SecretKey::generate(&mut OsRng);
    let tls_key = SecretKey::generate(&mut OsRng);
    let identity = Identity::self_signed(&tls_key, "backchannel-demo-node")?;
    let fingerprint = identity.fingerprint();
    let origin = NodeOrigin::new("demo.backchannel.example")?;
    // One node, or several on one database: one log key, one TLS identity.
    let mut served = Vec::new();
    for _ in 0..nodes {
        let config = NodeConfig {
            origin: origin.clone(),
            log_key: Arc::new(SecretKey::from_seed(&log_key.seed())?),
            creators: vec![oman.members[0].device.public_key()],
            limits: Limits {
                checkpoint_interval: Duration::from_millis(100),
                ..Limits::default()
            },
            clock: Arc::new(SystemClock),
            instance: {
                let mut id = [0u8; 16];
                OsRng.fill_bytes(&mut id);
                id
            },
        };
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = backchannel_node::net::Listener::local_addr(&listener)?;
        let transport = Transport::Tls(Arc::new(server_config(&identity)?));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        let (server, lease) = match database {
            None => {
                let store =
                    SqliteStore::open(&node_dir.join("node.db"), SqliteOptions::default()).await?;
                let node = Node::new(Arc::new(store), config);
                let lease = Arc::clone(node.lease());
                (
                    tokio::spawn(serve(listener, transport, node, stopped)),
                    lease,
                )
            }
            Some(url) => {
                let store = PostgresStore::open(url, PostgresOptions::default())
                    .await
                    .context("opening the PostgreSQL database given to --database")?;
                let node = Node::new(Arc::new(store), config);
                let lease = Arc::clone(node.lease());
                (
                    tokio::spawn(serve(listener, transport, node, stopped)),
                    lease,
                )
            }
        };
        println!(
            "Node on {addr} (TLS 1.3, {}), fingerprint {}",
            if database.is_some() {
                "PostgreSQL"
            } else {
                "SQLite"
            },
            fingerprint.to_hex()
        );
        served.push((addr, stop, server, lease));
    }
    let addresses = served
        .iter()
        .map(|(addr, ..)| addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    if nodes > 1 {
        println!(
            "{nodes} nodes serve one database; every participant is given {addresses} and fails over"
        );
    }
    let client = |key: &SecretKey| NodeClient::new(&addresses, fingerprint, key);
    let lead = &oman.members[0];
    let mediator = client(&lead.device)?;

    // 1. The mediator opens the talks with its own team on the list.
    let initial = AccessList::new(
        talks,
        0,
        vec![
            AccessEntry::new(
                oman.talks_authority.public_key(),
                PrincipalId(oman.id.0),
                oman.id,
                vec![],
                FLAG_DESIGNATED_SIGNER | FLAG_MEDIATOR,
            )?,
            AccessEntry::new(
                lead.device.public_key(),
                lead.principal,
                oman.id,
                vec![record, us_caucus, iran_caucus],
                FLAG_DEVICE | FLAG_MAY_PROPOSE | FLAG_MEDIATOR,
            )?,
        ],
    )?;
    mediator.create_talks(&initial).await?;
    println!("[OM] opened the talks");

    // 2. Invitations, one per party; the token travels out of band.
    let mut tokens = Vec::new();
    for p in [&us, &iran] {
        let mut t = [0u8; 32];
        OsRng.fill_bytes(&mut t);
        let token = InvitationToken(t);
        let invitation = InvitationFields {
            talks,
            party: p.id,
            token_hash: token.hash(),
            expires_at: now_ms() + 3_600_000,
        }
        .sign(&oman.talks_authority)?;
        mediator.create_invitation(talks, &invitation).await?;
        println!("[OM] invited {} (token handed over out of band)", p.name);
        tokens.push(token);
    }

    // 3. Each party enrols its talks authority with its token, leaving its
    //    certified roster entries for the mediator.
    //    The enrolment is sealed (HPKE) to the mediator's enrolment key,
    //    which the invitation carries: the node never reads the names.
    let mut enrolment_secret = [0u8; 32];
    OsRng.fill_bytes(&mut enrolment_secret);
    let enrolment_key = backchannel_mls::hpke_public_key(&enrolment_secret)?;
    for (p, token) in [&us, &iran].into_iter().zip(&tokens) {
        let (entry, members) = p.certified(talks)?;
        client(&p.talks_authority)?
            .enrol(
                talks,
                token,
                &Enrolment { entry, members }.seal_to(&enrolment_key, talks, p.id)?,
            )
            .await?;
        println!("[{}] enrolled its talks authority", p.short);
    }

    // 4. The mediator builds the roster from what the parties certified,
    //    with the rooms of the proximity preset, an expert track on
    //    shipping and a letter room, and release required.
    let mut parties = vec![oman.certified(talks)?.0];
    let mut members = oman.certified(talks)?.1;
    for inv in mediator.invitations(talks).await? {
        let payload = inv
            .payload
            .as_deref()
            .context("an invitation was not redeemed")?;
        let Enrolment { entry, members: ms } = Enrolment::open(
            &enrolment_secret,
            talks,
            inv.invitation.fields.party,
            payload,
        )?;
        ensure!(
            entry.party == inv.invitation.fields.party,
            "an enrolment for another party"
        );
        parties.push(entry);
        members.extend(ms);
    }
    parties.sort_by_key(|p| p.party);
    members.sort_by_key(|m| m.principal);
    let caucuses: BTreeMap<PartyId, RoomId> = [(us.id, us_caucus), (iran.id, iran_caucus)].into();
    let plan = RoomPlan {
        presets: vec![Preset::Proximity],
        tracks: vec![plant.s("shipping")],
        letters: true,
        private_notes: false,
        require_release: true,
    };
    let (mut rooms, rules) = crate::room_plan::declare(
        talks,
        &parties,
        &members,
        record,
        |p| caucuses.get(&p).copied(),
        &plan,
    )?;
    if let Some(c) = &plant.0 {
        for r in rooms.iter_mut().filter(|r| !r.name.contains(c.as_str())) {
            r.name = plant.s(&r.name);
        }
    }
    let letter_pairs = crate::room_plan::letter_pairs(&rooms, &members);
    let mut roster = Roster {
        parties,
        members,
        rooms,
        rules,
        access_list_hash: Digest([0; 32]),
    };
    let implied = roster.implied_access_list(talks)?;
    roster.access_list_hash = implied.hash();
    roster.verify_for(talks)?;
    let room_of = |purpose: RoomPurpose, party: Option<PartyId>| -> anyhow::Result<RoomId> {
        roster
            .rooms
            .iter()
            .find(|d| {
                d.purpose == purpose
                    && party.is_none_or(|p| roster.room_parties(d.room).unwrap_or_default() == [p])
            })
            .map(|d| d.room)
            .with_context(|| format!("the roster declares no {purpose:?} room"))
    };
    let mediators_room = room_of(RoomPurpose::Mediators, None)?;
    let us_internal = room_of(RoomPurpose::PartyInternal, Some(us.id))?;
    let iran_internal = room_of(RoomPurpose::PartyInternal, Some(iran.id))?;
    let track = room_of(RoomPurpose::Track, None)?;
    let letter = room_of(RoomPurpose::Letter, None)?;
    println!(
        "[OM] declared {} rooms: the record, the mediators' room, each delegation's internal \
         room and caucus, the shipping track and the parties' letter room; release required",
        roster.rooms.len()
    );

    // 5. The access-list change that seats every party's devices: the
    //    mediator signs first, then each party's designated signer checks
    //    that its own entries are its devices and co-signs.
    let current = mediator.access_list(talks).await?;
    let upsert: Vec<AccessEntry> = implied
        .entries()
        .iter()
        .filter(|e| current.list.get(&e.key_id()) != Some(e))
        .cloned()
        .collect();
    let delta = AccessListDelta::new(talks, current.list.hash(), vec![], upsert)?;
    let change = AccessListChange::new(delta.clone(), vec![delta.sign(&oman.talks_authority)?])?;
    let outcome = mediator.submit_change(talks, &change).await?;
    ensure!(!outcome.applied, "the change applied without the parties");
    for p in [&us, &iran] {
        let authority = client(&p.talks_authority)?;
        let pending = authority.pending_changes(talks).await?;
        let proposed = pending.first().context("no pending change")?;
        let ours: BTreeSet<PublicKey> = p.members.iter().map(|m| m.device.public_key()).collect();
        let touching: BTreeSet<PublicKey> = proposed
            .change
            .delta
            .upsert()
            .iter()
            .filter(|e| e.party == p.id)
            .map(|e| *e.key())
            .collect();
        ensure!(
            touching == ours,
            "{}: the change seats other keys for us",
            p.short
        );
        let signed = AccessListChange::new(
            proposed.change.delta.clone(),
            vec![proposed.change.delta.sign(&p.talks_authority)?],
        )?;
        let o = authority.submit_change(talks, &signed).await?;
        println!(
            "[{}] checked and co-signed the access-list change{}",
            p.short,
            if o.applied { " (applied)" } else { "" }
        );
    }
    let seated = mediator.access_list(talks).await?;
    ensure!(
        seated.list.entries() == implied.entries(),
        "the node's access list is not the roster's"
    );

    // Sessions: one per device, each archiving into its own home — an
    // encrypted client store (a fresh random passphrase per participant).
    let mut seats: Vec<Seat> = Vec::new();
    for (n, p) in [&oman, &us, &iran].into_iter().enumerate() {
        for (k, m) in p.members.iter().enumerate() {
            let home = homes.join(format!("home-{n}-{k}"));
            std::fs::create_dir_all(&home)?;
            let passphrase = SecretString::from(hex::encode(random16()));
            let store = SqliteClientStore::create(
                home.join("home.db"),
                &passphrase,
                ClientStoreOptions::default(),
            )
            .await
            .map_err(|e| anyhow!("creating a participant's home: {e}"))?;
            let s = Session::open(
                Arc::new(store),
                client(&m.device)?,
                SecretKey::from_seed(&m.device.seed())?,
                talks,
                &origin,
                log_key.public_key(),
            )
            .await?;
            let rooms = implied
                .get(&m.device.public_key().id())
                .map(|e| e.rooms().iter().copied().collect())
                .unwrap_or_default();
            seats.push(Seat {
                label: format!("[{}] {}", p.short, m.name),
                party: p.id,
                principal: m.principal,
                identity: SecretKey::from_seed(&m.identity.seed())?,
                s,
                rooms,
            });
        }
    }
    ensure!(seats.len() == IR_EXPERT + 1, "the seats are not as listed");
    println!(
        "Each of the {} devices keeps its archive in its own home, encrypted at rest",
        seats.len()
    );

    // 6. Rooms become MLS groups: every device puts key packages on the
    //    node; the first device to reach each room creates its group and
    //    adds the devices the access list seats there (one commit and
    //    Welcome per room); everyone joins from its Welcome.
    let list = seated.list.clone();
    {
        let mut all: Vec<&mut DemoSession> = seats.iter_mut().map(|x| &mut x.s).collect();
        backchannel_client::rooms::sync_all(&mut all, &list, now_ms() / 1000).await?;
    }
    for x in &seats {
        for room in &x.rooms {
            ensure!(
                x.s.room_epoch(*room).is_some(),
                "{} is not in the group of a room it is seated in",
                x.label
            );
        }
    }
    println!(
        "Every device joined the MLS group of each of its rooms ({} rooms declared); from here on \
         the node holds only ciphertext",
        roster.rooms.len()
    );

    // 7. The mediator posts roster and ground rules to the record room.
    let roster_st = statement(
        &oman.talks_authority,
        talks,
        oman.id,
        record,
        CheckpointRef::NONE,
        Payload::Roster(roster.clone()),
    )?;
    let rules_st = statement(
        &oman.talks_authority,
        talks,
        oman.id,
        record,
        CheckpointRef::NONE,
        Payload::GroundRules(crate::talks::default_ground_rules(
            [us.id, iran.id],
            "Asia/Muscat".into(),
            letter_pairs.clone(),
        )),
    )?;
    for st in [&roster_st, &rules_st] {
        seats[OM_LEAD]
            .s
            .send(
                &list,
                record,
                Content::Statement(st.as_bytes().to_vec()),
                salt(),
            )
            .await?;
    }
    println!("[OM] posted the roster and the ground rules to the record room");

    // 8. Each party's head receives them, verifies the roster (every party's
    //    own certification), compares it with the node's access list, and
    //    its talks authority accepts.
    for (p, i) in [(&us, US_ENVOY), (&iran, IR_HEAD)] {
        let got = seats[i].s.receive(&list).await?;
        let statements: Vec<SignedStatement> = got
            .iter()
            .filter_map(|a| match a.message.as_ref().map(|m| &m.content) {
                Some(Content::Statement(b)) => SignedStatement::decode(b).ok(),
                _ => None,
            })
            .collect();
        let r = statements.first().context("no roster received")?;
        let g = statements.get(1).context("no ground rules received")?;
        let verified = VerifiedRoster::verify(talks, r)?;
        let served = seats[i].s.node().access_list(talks).await?;
        ensure!(
            served.list.entries() == verified.access_list.entries(),
            "{}: the node's access list is not the roster's",
            p.short
        );
        // The acceptance carries the latest checkpoint this party verified,
        // which every recipient compares with its own tree.
        let my_rooms = seats[i].rooms.clone();
        wait_for_integration(&seats[i].s).await?;
        seats[i].s.verify_log(&my_rooms, now_ms()).await?;
        let acceptance = statement(
            &p.talks_authority,
            talks,
            p.id,
            record,
            seats[i].s.checkpoint_ref(),
            Payload::Acceptance(Acceptance {
                roster: r.unverified().id,
                roster_hash: sha256(r.as_bytes()),
                ground_rules: g.unverified().id,
                ground_rules_hash: sha256(g.as_bytes()),
            }),
        )?;
        seats[i]
            .s
            .send(
                &list,
                record,
                Content::Statement(acceptance.as_bytes().to_vec()),
                salt(),
            )
            .await?;
        println!(
            "[{}] verified the roster against the node's access list and accepted",
            p.short
        );
    }

    // The opening. Every message is a statement signed by its author's
    // identity key, checked against the roster before it is sent.
    let table = Table {
        talks,
        roster: &roster,
        list: &list,
        letters: &letter_pairs,
    };
    println!("\nThe opening:");

    // 9. Iran's delegation deliberates in its internal room: its expert
    //    drafts the ceasefire demand; its head adds a note for Oman alone.
    let (_, ir_demand_draft) = table
        .say(
            &mut seats[IR_EXPERT],
            iran_internal,
            Message::new(
                plant.item("ceasefire")?,
                plant.s(
                    "Iran asks that an effort for a ceasefire in Gaza come before any other \
                     step.",
                ),
                None,
            )?,
            Markings::mediator_only(),
            &[],
        )
        .await?;
    say_talk(
        &mut seats[IR_HEAD],
        &list,
        iran_internal,
        &plant.s(
            "Agreed. Release it to Oman as substance only; I will tell Oman alone what we \
             could live with.",
        ),
    )
    .await?;
    let (_, ir_note_draft) = table
        .say(
            &mut seats[IR_HEAD],
            iran_internal,
            Message::new(
                plant.item("ceasefire")?,
                plant.s(
                    "For Oman alone: Tehran could accept a phased ceasefire if the first \
                     phase is monitored.",
                ),
                None,
            )?,
            Markings::mediator_only(),
            &[],
        )
        .await?;
    println!("[IR] the delegation deliberated in its internal room (no one else is in it)");

    // 10. A US note-taker drafts the demand; sent straight out it is
    //     refused; the envoy releases it, verbatim allowed, for Iran,
    //     receipt required.
    let proxies_text = plant.s(
        "The United States demands that Iran restrain the groups it backs from attacking US \
         forces in Iraq and Syria.",
    );
    let (_, us_draft) = table
        .say(
            &mut seats[US_NOTE_TAKER],
            us_internal,
            Message::new(plant.item("proxies")?, proxies_text.clone(), None)?,
            Markings::mediator_only(),
            &[],
        )
        .await?;
    say_talk(
        &mut seats[US_NEGOTIATOR],
        &list,
        us_internal,
        &plant.s("Good. Mark it verbatim, so Tehran reads our own words, and ask for a receipt."),
    )
    .await?;
    let unreleased = Message::new(plant.item("proxies")?, proxies_text.clone(), None)?;
    match table.check(&seats[US_NOTE_TAKER], us_caucus, &unreleased) {
        Err(e) => println!("[US] the note-taker's draft cannot leave the delegation itself: {e}"),
        Ok(()) => bail!("an unreleased message would have left the US delegation"),
    }
    let us_principal = seats[US_NOTE_TAKER].principal;
    let (us_demand_seq, _) = table
        .release(
            &mut seats[US_ENVOY],
            &us_draft,
            us_principal,
            us_caucus,
            marked(Conveyance::VerbatimMayBeConveyed, true)?,
            &[iran.id],
        )
        .await?;
    println!(
        "[US] the US envoy released the note-taker's draft to the US caucus (seq \
         {us_demand_seq}): verbatim may be conveyed, for Iran, receipt required"
    );

    // 11. Oman receives it, receipts it formally, and conveys it verbatim
    //     to Iran with its evidence: the original signed statement, its
    //     logged header and salt, and an inclusion proof against a
    //     checkpoint the mediator's client verified. The receipt of the
    //     conveyance goes back to the US caucus.
    let lead_seat = &mut seats[OM_LEAD];
    lead_seat.s.receive(&list).await?;
    wait_for_integration(&lead_seat.s).await?;
    lead_seat
        .s
        .verify_log(&lead_seat.rooms.clone(), now_ms())
        .await?;
    let view = View::of(talks, lead_seat.s.archive().await?);
    let original = view
        .logged(us_demand_seq)
        .context("the US demand is not in the mediator's archive")?;
    ensure!(
        original.verdict.is_ok(),
        "the US demand did not verify: {:?}",
        original.verdict
    );
    let receipt = Receipt {
        kind: ReceiptKind::Received,
        statement: original.statement.unverified().id,
        hash: original.statement.hash(),
        room: us_caucus,
        seq: us_demand_seq,
    };
    let st = table.sign(
        lead_seat,
        vec![Audience::Room(us_caucus)],
        Markings::mediator_only(),
        Payload::Receipt(receipt),
    )?;
    table.post(lead_seat, us_caucus, &st).await?;
    check_verbatim(&roster, &original.statement, iran_caucus)
        .map_err(|e| anyhow!("refused: seq {us_demand_seq} {e}"))?;
    let archived = view
        .archive
        .iter()
        .find(|a| a.seq == us_demand_seq)
        .context("the original is not archived")?;
    let verbatim =
        crate::say::verbatim_evidence(&lead_seat.s, archived, &original.statement).await?;
    let size = verbatim.tree_size;
    let conveyed_seq = table
        .convey(lead_seat, iran_caucus, Conveyed::Verbatim(verbatim))
        .await?;
    let conveyed_to = Receipt {
        kind: ReceiptKind::ConveyedTo,
        statement: original.statement.unverified().id,
        hash: original.statement.hash(),
        room: iran_caucus,
        seq: conveyed_seq,
    };
    let st = table.sign(
        lead_seat,
        vec![Audience::Room(us_caucus)],
        Markings::mediator_only(),
        Payload::Receipt(conveyed_to),
    )?;
    table.post(lead_seat, us_caucus, &st).await?;
    println!(
        "[OM] received the US demand formally and conveyed it verbatim to Iran's caucus (seq \
         {conveyed_seq}), with an inclusion proof against a checkpoint of {size} leaves"
    );

    // 12. Iran's head releases the ceasefire demand (substance may be
    //     conveyed) and the note for Oman alone (mediator-only).
    let ir_expert = seats[IR_EXPERT].principal;
    let ir_head = seats[IR_HEAD].principal;
    let (ir_demand_seq, _) = table
        .release(
            &mut seats[IR_HEAD],
            &ir_demand_draft,
            ir_expert,
            iran_caucus,
            marked(Conveyance::SubstanceMayBeConveyed, false)?,
            &[],
        )
        .await?;
    let (ir_note_seq, _) = table
        .release(
            &mut seats[IR_HEAD],
            &ir_note_draft,
            ir_head,
            iran_caucus,
            marked(Conveyance::MediatorOnly, false)?,
            &[],
        )
        .await?;
    println!(
        "[IR] the deputy foreign minister released the ceasefire demand (substance may be \
         conveyed) and a note for Oman alone (mediator-only) to Iran's caucus"
    );

    // 13. Oman: the note for Oman alone is not conveyed verbatim; the
    //     demand goes to the US re-drafted, its link to the source kept in
    //     the mediators' room.
    let lead_seat = &mut seats[OM_LEAD];
    lead_seat.s.receive(&list).await?;
    let view = View::of(talks, lead_seat.s.archive().await?);
    let note = view
        .logged(ir_note_seq)
        .context("Iran's note is not in the mediator's archive")?;
    match check_verbatim(&roster, &note.statement, us_caucus) {
        Err(e) => println!(
            "[OM] refused to convey Iran's note verbatim to the US caucus: seq {ir_note_seq} {e}"
        ),
        Ok(()) => bail!("a mediator-only message could have been conveyed verbatim"),
    }
    let demand = view
        .logged(ir_demand_seq)
        .context("Iran's demand is not in the mediator's archive")?;
    ensure!(
        demand.statement.unverified().markings.conveyance == Conveyance::SubstanceMayBeConveyed,
        "Iran's demand may not be conveyed in substance"
    );
    let redrafted_seq = table
        .convey(
            lead_seat,
            us_caucus,
            Conveyed::Redrafted {
                about: iran.id,
                item: plant.item("ceasefire")?,
                text: plant.s(
                    "Tehran asks that an effort for a ceasefire in Gaza come first; it sees it \
                     as the condition for progress on the other items.",
                ),
            },
        )
        .await?;
    let link = Message::new(
        None,
        plant.s(&format!(
            "re-drafted seq {ir_demand_seq} (statement {}) as seq {redrafted_seq} in {}",
            demand.statement.unverified().id,
            view.room_name(us_caucus)
        )),
        None,
    )?;
    table
        .say(
            lead_seat,
            mediators_room,
            link,
            Markings::mediator_only(),
            &[],
        )
        .await?;
    println!(
        "[OM] conveyed Iran's ceasefire demand to the US caucus re-drafted, in Oman's words \
         (seq {redrafted_seq}); the link to the source stays in the mediators' room"
    );

    // 14. A non-paper on detainees to both caucuses, and an oral message
    //     recorded.
    for room in [us_caucus, iran_caucus] {
        table
            .convey(
                lead_seat,
                room,
                Conveyed::NonPaper {
                    item: plant.item("detainees")?,
                    text: plant.s(
                        "Non-paper: five detainees released by each side at the same hour, \
                         through a neutral intermediary, once the humanitarian channel for \
                         the funds is in place.",
                    ),
                },
            )
            .await?;
    }
    println!("[OM] put a non-paper on detainees to both caucuses");
    table
        .convey(
            lead_seat,
            us_caucus,
            Conveyed::Recorded {
                by: iran.id,
                at: now_ms().saturating_sub(25 * 60_000),
                item: plant.item("detainees")?,
                text: plant.s(
                    "Conveyed orally to the Omani lead mediator in Muscat: Tehran will not \
                     comment on the talks in public while they continue.",
                ),
            },
        )
        .await?;
    println!("[OM] recorded an oral message from Iran in the US caucus");

    // With two nodes, the first is stopped here (maintenance, or a
    // crash): the participants' next calls fail over to the second, which
    // takes over integrating the log.
    if served.len() > 1 {
        let (addr, stop, server, _) = served.remove(0);
        let _ = stop.send(());
        let _ = server.await;
        println!("\n[ops] node {addr} stopped; the participants carry on through the other node");
        let lease = &served[0].3;
        let epoch = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match lease.epoch() {
                    0 => tokio::time::sleep(Duration::from_millis(50)).await,
                    e => return e,
                }
            }
        })
        .await
        .context("the remaining node did not take the integrator lease")?;
        println!(
            "[ops] node {} integrates the log now (integrator lease epoch {epoch})\n",
            served[0].0
        );
    }

    // 15. The expert track on shipping, beside the main talks: the
    //     mediators' staff sets the agenda; the experts talk (their signed
    //     messages would need a release their heads, outside the track,
    //     cannot give there).
    table
        .say(
            &mut seats[OM_STAFF],
            track,
            Message::new(
                plant.item("shipping")?,
                plant.s(
                    "Shipping track: compare incident reports from the Red Sea and sketch a \
                     line between the naval commands.",
                ),
                None,
            )?,
            marked(Conveyance::SubstanceMayBeConveyed, false)?,
            &[],
        )
        .await?;
    say_talk(
        &mut seats[US_EXPERT],
        &list,
        track,
        &plant.s(
            "Our log lists fourteen incidents since November; we can share positions and times.",
        ),
    )
    .await?;
    say_talk(
        &mut seats[IR_EXPERT],
        &list,
        track,
        &plant.s("We will bring the coast guard's log to the next session."),
    )
    .await?;
    println!("[OM] the shipping track met beside the main talks: the experts and Oman's staff");

    // 16. A sealed letter: drafted and released by the US envoy into the
    //     parties' letter room, where no mediator is; Iran receipts it.
    let (_, letter_draft) = table
        .say(
            &mut seats[US_ENVOY],
            us_internal,
            Message::new(
                None,
                plant.s(
                    "Sealed letter to the Iranian deputy foreign minister: the United States \
                     is ready to meet in Muscat once the first steps hold.",
                ),
                None,
            )?,
            Markings::mediator_only(),
            &[],
        )
        .await?;
    let envoy = seats[US_ENVOY].principal;
    let (letter_seq, _) = table
        .release(
            &mut seats[US_ENVOY],
            &letter_draft,
            envoy,
            letter,
            marked(Conveyance::MediatorOnly, true)?,
            &[],
        )
        .await?;
    let head_seat = &mut seats[IR_HEAD];
    head_seat.s.receive(&list).await?;
    let view = View::of(talks, head_seat.s.archive().await?);
    let got = view
        .logged(letter_seq)
        .context("the letter did not reach Iran")?;
    let receipt = Receipt {
        kind: ReceiptKind::Received,
        statement: got.statement.unverified().id,
        hash: got.statement.hash(),
        room: letter,
        seq: letter_seq,
    };
    let st = table.sign(
        head_seat,
        vec![Audience::Room(letter)],
        Markings::mediator_only(),
        Payload::Receipt(receipt),
    )?;
    table.post(head_seat, letter, &st).await?;
    println!(
        "[US] a sealed letter passed to Iran in the parties' letter room, where no mediator \
         is; [IR] received it formally"
    );

    // 17. Talk in the caucuses.
    let say = [
        (
            US_NEGOTIATOR,
            us_caucus,
            "We can move on the prisoner exchange if the funds stay humanitarian-only.",
        ),
        (
            OM_LEAD,
            us_caucus,
            "Noted. I will convey the substance, not the wording.",
        ),
        (
            OM_LEAD,
            iran_caucus,
            "The US side signals flexibility on the exchange, tied to humanitarian use of the funds.",
        ),
        (
            IR_HEAD,
            iran_caucus,
            "Acceptable in principle. We need the bank named before the first step.",
        ),
        (
            OM_LEAD,
            us_caucus,
            "Tehran accepts in principle and asks for the bank to be named first.",
        ),
    ];
    for (who, room, text) in say {
        say_talk(&mut seats[who], &list, room, &plant.s(text)).await?;
    }

    // 17b. Succession: the US envoy is replaced mid-talks. The US talks
    //      authority certifies the new envoy and seats their device where
    //      the envoy sits (every party co-signs the change, as the ground
    //      rules require); the rooms' groups add the device; the outgoing
    //      envoy hands over the history of every room they hold, sealed to
    //      the new device and announced in the record; then the outgoing
    //      envoy's keys are revoked and their device taken off the list.
    let (list, former) = {
        println!("\nSuccession:");
        let successor = Member {
            name: plant.s("US envoy (successor)"),
            role: Role::Head,
            principal: PrincipalId(random16()),
            identity: SecretKey::generate(&mut OsRng),
            device: SecretKey::generate(&mut OsRng),
        };
        let old = &seats[US_ENVOY];
        let old_device = old.s.device().public_key();
        let old_identity = old.identity.public_key();
        let old_rooms = old.rooms.clone();
        let certs = [
            statement(
                &us.talks_authority,
                talks,
                us.id,
                record,
                seats[US_ENVOY].s.checkpoint_ref(),
                Payload::MemberCert(backchannel_statement::MemberCert::new(
                    successor.principal,
                    us.id,
                    Role::Head,
                    successor.identity.public_key(),
                    crate::talks::acts_of(Role::Head),
                    None,
                )?),
            )?,
            statement(
                &successor.identity,
                talks,
                us.id,
                record,
                CheckpointRef::NONE,
                Payload::DeviceCert(backchannel_statement::DeviceCert {
                    principal: successor.principal,
                    device_key: successor.device.public_key(),
                    not_after: now_ms() + 365 * 24 * 3_600_000,
                }),
            )?,
        ];
        for st in &certs {
            table.post(&mut seats[US_ENVOY], record, st).await?;
        }
        let entry = AccessEntry::new(
            successor.device.public_key(),
            successor.principal,
            us.id,
            old_rooms.iter().copied().collect(),
            FLAG_DEVICE,
        )?;
        let current = mediator.access_list(talks).await?;
        let delta = AccessListDelta::new(talks, current.list.hash(), vec![], vec![entry])?;
        change_list(&client, talks, &delta, [&us, &oman, &iran]).await?;
        let list = mediator.access_list(talks).await?.list;
        println!(
            "[US] certified {} (head of delegation) in the record; every party co-signed the \
             change seating their device in the envoy's {} rooms",
            successor.name,
            old_rooms.len()
        );
        let home = homes.join("home-1-successor");
        std::fs::create_dir_all(&home)?;
        let store = SqliteClientStore::create(
            home.join("home.db"),
            &SecretString::from(hex::encode(random16())),
            ClientStoreOptions::default(),
        )
        .await
        .map_err(|e| anyhow!("creating a participant's home: {e}"))?;
        let mut new_seat = Seat {
            label: format!("[US] {}", successor.name),
            party: us.id,
            principal: successor.principal,
            identity: SecretKey::from_seed(&successor.identity.seed())?,
            s: Session::open(
                Arc::new(store),
                client(&successor.device)?,
                SecretKey::from_seed(&successor.device.seed())?,
                talks,
                &origin,
                log_key.public_key(),
            )
            .await?,
            rooms: old_rooms.clone(),
        };
        {
            let mut all: Vec<&mut DemoSession> = seats.iter_mut().map(|x| &mut x.s).collect();
            all.push(&mut new_seat.s);
            backchannel_client::rooms::sync_all(&mut all, &list, now_ms() / 1000).await?;
        }
        new_seat.s.receive(&list).await?;
        let unread_before = new_seat
            .s
            .archive()
            .await?
            .iter()
            .filter(|a| a.message.is_none() && a.unreadable.is_some())
            .count();
        println!(
            "[US] the new envoy's device joined the groups of its rooms: MLS gives it nothing \
             sent before (copies opened the earlier statements), so {unread_before} earlier \
             messages of talk are unreadable to it"
        );
        // The handover: every room the outgoing envoy holds, up to the
        // checkpoint it verified.
        wait_for_integration(&seats[US_ENVOY].s).await?;
        seats[US_ENVOY].s.receive(&list).await?;
        seats[US_ENVOY].s.verify_log(&old_rooms, now_ms()).await?;
        let until = seats[US_ENVOY].s.checkpoint_ref().size;
        let scope = backchannel_client::handover::Scope {
            talks,
            from: seats[US_ENVOY].principal,
            to: successor.principal,
            until,
            checkpoint: seats[US_ENVOY].s.checkpoint_ref(),
            rooms: old_rooms.clone(),
            private_notes: BTreeSet::new(),
        };
        let handed = seats[US_ENVOY]
            .s
            .hand_over(&list, &scope, &[successor.device.public_key()], us_internal)
            .await?;
        let shared = table.sign(
            &seats[US_ENVOY],
            vec![Audience::Room(record)],
            Markings::mediator_only(),
            Payload::HistoryShared(backchannel_statement::HistoryShared::new(
                successor.principal,
                old_rooms.iter().copied().collect(),
                until,
                handed.bundle,
            )?),
        )?;
        let announced = table.post(&mut seats[US_ENVOY], record, &shared).await?;
        let (opened, _) = handed.contents.counts();
        println!(
            "[US] the outgoing envoy handed over {} rooms up to seq {until} ({opened} messages, \
             {} bytes), sealed to the new envoy's device; announced in the record at seq \
             {announced}",
            old_rooms.len(),
            handed.bytes
        );
        new_seat.s.receive(&list).await?;
        let received = new_seat.s.handovers().await?;
        match received.last().map(|r| &r.outcome) {
            Some(backchannel_client::handover::Outcome::Applied { opened, .. }) => println!(
                "[US] the new envoy verified the bundle against the headers logged at each seq \
                 and opened {opened} messages"
            ),
            Some(backchannel_client::handover::Outcome::Refused(why)) => {
                bail!("the new envoy refused the handover: {why}")
            }
            None => bail!("the new envoy received no handover"),
        }
        // The US talks authority passes to the new envoy: handed over, the
        // outgoing holder signing with the incoming key's own signature
        // inside; the node seats the new key in the old one's entry (the
        // US's old key and the mediator sign; the others too, as
        // change_list does). Every party's safety code changes with it.
        let code_before = code_seen_by(&seats[IR_HEAD].s, talks, &fingerprint, &log_key).await?;
        let old_ta = us.talks_authority.public_key().id();
        let new_ta = SecretKey::generate(&mut OsRng);
        let how = PassedHow::HandedOver;
        let signature = AuthorityPassed::sign_transfer(
            &new_ta,
            talks,
            us.id,
            &old_ta,
            &new_ta.public_key(),
            how,
        )?;
        let passed = statement(
            &us.talks_authority,
            talks,
            us.id,
            record,
            new_seat.s.checkpoint_ref(),
            Payload::AuthorityPassed(AuthorityPassed::new(
                us.id,
                old_ta,
                new_ta.public_key(),
                how,
                signature,
                None,
                vec![],
            )?),
        )?;
        let pass_seq = new_seat
            .s
            .send(
                &list,
                record,
                Content::Statement(passed.as_bytes().to_vec()),
                salt(),
            )
            .await?;
        let current = mediator.access_list(talks).await?;
        let old_entry = current
            .list
            .get(&old_ta)
            .context("the US talks authority is not on the access list")?
            .clone();
        let delta = AccessListDelta::new(
            talks,
            current.list.hash(),
            vec![old_ta],
            vec![AccessEntry::new(
                new_ta.public_key(),
                old_entry.principal,
                old_entry.party,
                old_entry.rooms().to_vec(),
                old_entry.flags,
            )?],
        )?;
        change_list(&client, talks, &delta, [&us, &oman, &iran]).await?;
        us.talks_authority = new_ta;
        seats[IR_HEAD].s.receive(&list).await?;
        let code_after = code_seen_by(&seats[IR_HEAD].s, talks, &fingerprint, &log_key).await?;
        let iran_sees = PartyVerification::Verified {
            how: "safety codes compared".into(),
            at_ms: 0,
            code: code_before,
        }
        .against(code_after);
        println!(
            "[US] the US talks authority passed to the new envoy at seq {pass_seq} ({}: the \
             outgoing holder signed, with the new key's own signature); the node seats the new \
             key in the old one's place, and the old key signs nothing from here on",
            how.name()
        );
        println!(
            "[IR] Iran's record shows the pass; how the US's keys stand for Iran now: {} (the \
             safety code covers every pass: {} → {})",
            iran_sees.label(),
            &code_before
                .phrase()
                .split(' ')
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            &code_after
                .phrase()
                .split(' ')
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        );
        // Revocation, signed by the new talks authority: the outgoing
        // envoy's identity and device keys, then their device off the
        // list; the groups remove it.
        for key in [old_identity.id(), old_device.id()] {
            let st = statement(
                &us.talks_authority,
                talks,
                us.id,
                record,
                new_seat.s.checkpoint_ref(),
                Payload::Revoke(backchannel_statement::Revoke {
                    key,
                    reason: backchannel_statement::RevokeReason::Left,
                    lost_at: None,
                }),
            )?;
            new_seat
                .s
                .send(
                    &list,
                    record,
                    Content::Statement(st.as_bytes().to_vec()),
                    salt(),
                )
                .await?;
        }
        let current = mediator.access_list(talks).await?;
        let delta =
            AccessListDelta::new(talks, current.list.hash(), vec![old_device.id()], vec![])?;
        change_list(&client, talks, &delta, [&us, &oman, &iran]).await?;
        let list = mediator.access_list(talks).await?.list;
        let mut old = std::mem::replace(&mut seats[US_ENVOY], new_seat);
        {
            let mut all: Vec<&mut DemoSession> = seats.iter_mut().map(|x| &mut x.s).collect();
            backchannel_client::rooms::sync_all(&mut all, &list, now_ms() / 1000).await?;
        }
        say_talk(
            &mut seats[US_ENVOY],
            &list,
            us_internal,
            &plant.s("I have the file. We hold the line agreed on the exchange."),
        )
        .await?;
        match old.s.receive(&list).await {
            Ok(_) => bail!("the outgoing envoy's device can still fetch from the node"),
            Err(e) => println!(
                "[US] the outgoing envoy's keys are revoked and their device is off the list \
                 and out of every group: the node refuses it ({e})"
            ),
        }
        let successor_archive = seats[US_ENVOY].s.archive().await?;
        let unread: Vec<u64> = successor_archive
            .iter()
            .filter(|a| {
                a.header.header().kind == backchannel_statement::Kind::MlsApp && a.message.is_none()
            })
            .map(|a| a.seq)
            .collect();
        ensure!(
            unread.is_empty(),
            "the new envoy still cannot read seqs {unread:?}"
        );
        println!(
            "[US] the new envoy reads the whole file of its rooms ({} envelopes), verified",
            successor_archive.len()
        );
        let former = format!("{} (former)", old.label);
        (
            list,
            [
                (old_device.id(), former.clone()),
                (old_identity.id(), former),
                (old_ta, format!("[US] {} (former talks authority)", us.name)),
            ],
        )
    };

    // 18. Everyone receives, verifies the log from the data tiles and
    //    cosigns the same checkpoint.
    wait_for_integration(&seats[OM_LEAD].s).await?;
    let total = mediator.fetch(talks, 0, 1).await?.log_size;
    for x in seats.iter_mut() {
        x.s.receive(&list).await?;
        let (report, checkpoint) = x.s.verify_log(&x.rooms, now_ms()).await?;
        ensure!(
            report.size == total,
            "{}: verified {} of {total}",
            x.label,
            report.size
        );
        ensure!(
            report.withheld.is_empty(),
            "{}: withheld {:?}",
            x.label,
            report.withheld
        );
        ensure!(
            report.not_merged.is_empty(),
            "{}: not merged {:?}",
            x.label,
            report.not_merged
        );
        x.s.cosign(&checkpoint, now_ms() / 1000).await?;
    }
    let mut replayed = 0;
    for x in &seats {
        let r = x.s.replay().await?;
        ensure!(
            r.rejected.is_empty() && r.forks.is_empty(),
            "{}: replay rejected {:?}, forks {:?}",
            x.label,
            r.rejected,
            r.forks
        );
        replayed += r.accepted.len();
    }
    println!(
        "\nEvery device replayed the record from its archive: {replayed} statements accepted \
         across the {} devices, none rejected, every checkpoint reference matching its own tree.",
        seats.len()
    );
    let (size, note) = mediator.checkpoint(talks).await?;
    let cosigned = backchannel_tlog::cosignatures(&note)?.len();
    let parties_cosigning: BTreeSet<PartyId> = seats.iter().map(|x| x.party).collect();
    ensure!(
        cosigned == seats.len(),
        "{cosigned} cosignatures, not {}",
        seats.len()
    );
    println!(
        "\nEvery device verified the log ({size} leaves) and cosigned it: \
         {cosigned} cosignatures from {} parties — the checkpoint is final.",
        parties_cosigning.len()
    );

    // What each party's devices hold: only their rooms.
    let mut archives: Vec<Vec<Archived>> = Vec::new();
    for x in &seats {
        archives.push(x.s.archive().await?);
    }
    let rooms_held = |i: usize| -> BTreeSet<RoomId> {
        archives[i].iter().map(|a| a.header.header().room).collect()
    };
    for i in [IR_HEAD, IR_EXPERT] {
        ensure!(
            rooms_held(i).is_disjoint(&[us_internal, us_caucus].into()),
            "{} holds envelopes of the US's rooms",
            seats[i].label
        );
    }
    for i in [US_ENVOY, US_NOTE_TAKER, US_NEGOTIATOR, US_EXPERT] {
        ensure!(
            rooms_held(i).is_disjoint(&[iran_internal, iran_caucus].into()),
            "{} holds envelopes of Iran's rooms",
            seats[i].label
        );
    }
    for i in [OM_LEAD, OM_STAFF] {
        ensure!(
            rooms_held(i).is_disjoint(&[us_internal, iran_internal, letter].into()),
            "{} holds envelopes of a party's internal room or the letter room",
            seats[i].label
        );
    }
    println!(
        "Each device holds only its rooms: Iran's hold nothing of the US internal room or \
         caucus, the US's nothing of Iran's, Oman's nothing of either internal room or of the \
         letter room."
    );

    // 19. Safety codes: each party computes its own.
    println!("\nTalks safety codes (compare once over a channel the mediator does not control):");
    let mut codes = BTreeSet::new();
    for (p, i) in [(&oman, OM_LEAD), (&us, US_ENVOY), (&iran, IR_HEAD)] {
        let view = View::of(talks, archives[i].clone());
        let code = safety_code_of(&view, talks, &fingerprint, &log_key)?;
        println!("  {:2}  {}", p.short, code.phrase());
        codes.insert(code.0);
    }
    if codes.len() != 1 {
        bail!("the parties' safety codes differ");
    }
    println!("  (all three match)");

    // 20. What each participant saw, from its own verified archive,
    //     rendered as `backchannel read` renders it.
    let mut names: BTreeMap<KeyId, String> = BTreeMap::new();
    for x in &seats {
        names.insert(x.s.device().public_key().id(), x.label.clone());
        names.insert(x.identity.public_key().id(), x.label.clone());
    }
    names.extend(former);
    for (p, short) in [(&oman, "OM"), (&us, "US"), (&iran, "IR")] {
        names.insert(
            p.talks_authority.public_key().id(),
            format!("[{short}] {} (talks authority)", p.name),
        );
    }
    for (i, x) in seats.iter().enumerate() {
        let view = View::of(talks, archives[i].clone());
        let conveyances = crate::say::check_conveyances(&x.s, &view, 0).await;
        let own = x.party;
        let standing = |p: PartyId| {
            if p == own {
                "your own party".to_owned()
            } else {
                PartyVerification::Verified {
                    how: "safety codes compared".into(),
                    at_ms: 0,
                    code: SafetyCode(Digest([0; 32])),
                }
                .label()
            }
        };
        let mut lines = Vec::new();
        let mut group_changes = 0;
        for a in &view.archive {
            match render(&view, a, &conveyances, &standing) {
                Some(text) => lines.push(format!(
                    "  #{:<4}{} — {}: {text}",
                    a.seq,
                    view.room_name(a.header.header().room),
                    names
                        .get(&a.header.header().sender)
                        .map_or("?", String::as_str),
                )),
                None => group_changes += 1,
            }
        }
        println!(
            "\nWhat {} saw ({} envelopes of its rooms; {group_changes} MLS group changes and \
             copies not shown):",
            x.label,
            view.archive.len()
        );
        for l in lines {
            println!("{l}");
        }
    }

    for (_, stop, server, _) in served {
        let _ = stop.send(());
        let _ = server.await;
    }
    println!("\nDemo complete.");
    Ok(())
}

/// Applies an access-list change `delta`: each party's talks authority in
/// turn signs and submits it until the node applies it (the ground rules'
/// change rule names whose signatures it needs).
async fn change_list<E: std::error::Error + Send + Sync + 'static>(
    client: &impl Fn(&SecretKey) -> Result<NodeClient, E>,
    talks: TalksId,
    delta: &AccessListDelta,
    parties: [&Party; 3],
) -> anyhow::Result<()> {
    for p in parties {
        let change = AccessListChange::new(delta.clone(), vec![delta.sign(&p.talks_authority)?])?;
        if client(&p.talks_authority)?
            .submit_change(talks, &change)
            .await?
            .applied
        {
            return Ok(());
        }
    }
    bail!("the access-list change was not applied with every party's signature")
}

/// The talks safety code as `s`'s verified archive gives it (roster,
/// ground rules, every authority pass).
async fn code_seen_by(
    s: &DemoSession,
    talks: TalksId,
    fingerprint: &backchannel_node::tls::Fingerprint,
    log_key: &SecretKey,
) -> anyhow::Result<SafetyCode> {
    safety_code_of(
        &View::of(talks, s.archive().await?),
        talks,
        fingerprint,
        log_key,
    )
}

/// The talks safety code `view` gives.
fn safety_code_of(
    view: &View,
    talks: TalksId,
    fingerprint: &backchannel_node::tls::Fingerprint,
    log_key: &SecretKey,
) -> anyhow::Result<SafetyCode> {
    Ok(SafetyCode::compute(&SafetyInputs {
        talks,
        roster: view.roster_statement().context("no roster")?.hash(),
        ground_rules: view
            .ground_rules_statement()
            .context("no ground rules")?
            .hash(),
        node_fingerprint: fingerprint.0,
        log_key: log_key.public_key(),
        authority_passes: view.authority_pass_hashes(),
    }))
}

/// Talk (MLS chat) by the seat in `room`.
async fn say_talk(
    seat: &mut Seat,
    list: &AccessList,
    room: RoomId,
    text: &str,
) -> anyhow::Result<u64> {
    Ok(seat
        .s
        .send(list, room, Content::Talk(text.into()), salt())
        .await?)
}

/// One archived envelope as its reader sees it, or `None` for MLS group
/// changes and copies for newcomers.
fn render(
    view: &View,
    a: &Archived,
    conveyances: &BTreeMap<
        u64,
        Result<backchannel_core::posts::VerifiedVerbatim, backchannel_core::posts::ConveyError>,
    >,
    standing: &dyn Fn(PartyId) -> String,
) -> Option<String> {
    let h = a.header.header();
    Some(match a.message.as_ref().map(|m| &m.content) {
        Some(Content::Talk(t)) => format!("talk: “{t}”"),
        Some(Content::Statement(b)) => match SignedStatement::decode(b) {
            Ok(st) => {
                let text =
                    match crate::say::describe(standing, view, h.room, &st, conveyances, a.seq) {
                        Some((kind, text)) => format!("{kind}: {text}"),
                        None => format!(
                            "signed statement: {:?}",
                            st.unverified().payload.statement_type()
                        ),
                    };
                match view.logged(a.seq).map(|l| &l.verdict) {
                    Some(Err(e)) => format!("{text} — REJECTED by replay: {e}"),
                    _ => text,
                }
            }
            Err(e) => format!("a statement that does not decode: {e}"),
        },
        Some(Content::Copy(_) | Content::Handover(_)) => return None,
        Some(Content::Attachment(_)) => "an attachment".into(),
        None => match (h.kind, &a.unreadable) {
            (_, Some(why)) => format!("unreadable: {why}"),
            (
                backchannel_statement::Kind::MlsHandshake | backchannel_statement::Kind::Welcome,
                None,
            ) => return None,
            _ => "(purged)".into(),
        },
    })
}
