//! `backchannel demo`: the reference scenario on a real node.
//!
//! Starts a node on a fresh temporary directory (SQLite, TLS on loopback,
//! clients pinning its fingerprint), creates Oman's mediation team and the
//! US and Iranian delegations with fresh keys, and runs the talks through
//! the client library: the mediator opens the talks and invites each party;
//! each party enrols its talks authority with its one-time token; the
//! mediator builds the roster from what the parties certified and proposes
//! the access-list change that seats their devices, which each party's
//! designated signer checks and co-signs; every device puts MLS key
//! packages on the node and the mediator's device creates each room's MLS
//! group and adds the seated devices; the mediator posts roster and
//! ground rules to the record room; every party verifies them against the
//! node's access list and accepts; the delegations talk with the mediator
//! in their caucuses; every device verifies the log from the data tiles and
//! cosigns the same checkpoint, which is then final. It prints each party's
//! safety code (they match) and a transcript, and exits 0.
//!
//! Every body is an MLS message: the node holds only ciphertext.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use age::secrecy::SecretString;
use anyhow::{Context as _, bail, ensure};
use backchannel_client::net::NodeClient;
use backchannel_client::participant::Enrolment;
use backchannel_client::safety::{SafetyCode, SafetyInputs};
use backchannel_client::seal::Content;
use backchannel_client::session::Session;
use backchannel_client_store_sqlite::{ClientStoreOptions, SqliteClientStore};
use backchannel_codec::{PartyId, PrincipalId, RoomId, TalksId};
use backchannel_crypto::{Digest, PublicKey, SecretKey, Signer, sha256};
use backchannel_node::limits::Limits;
use backchannel_node::net::{Transport, serve};
use backchannel_node::server::{Node, NodeConfig};
use backchannel_node::tls::{Identity, server_config};
use backchannel_statement::access_list::{
    AccessEntry, FLAG_DESIGNATED_SIGNER, FLAG_DEVICE, FLAG_MAY_PROPOSE, FLAG_MEDIATOR,
};
use backchannel_statement::roster::{
    MemberEntry, MemberFields, PartyEntry, RoomDecl, RoomPurpose, VerifiedRoster,
};
use backchannel_statement::{
    Acceptance, AccessList, AccessListChange, AccessListDelta, Audience, CheckpointRef,
    InvitationFields, InvitationToken, Markings, PartyKind, Payload, Role, Roster, Salt,
    SignedStatement, Statement,
};
use backchannel_store_sqlite::{SqliteOptions, SqliteStore};
use backchannel_tlog::NodeOrigin;
use rand_core::{OsRng, RngCore};

use crate::system::{SystemClock, TcpListener};

/// One member of a delegation.
struct Member {
    name: &'static str,
    role: Role,
    principal: PrincipalId,
    identity: SecretKey,
    device: SecretKey,
}

/// A delegation (or the mediation team).
struct Party {
    name: &'static str,
    short: &'static str,
    kind: PartyKind,
    id: PartyId,
    authority: SecretKey,
    talks_authority: SecretKey,
    members: Vec<Member>,
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
    name: &'static str,
    short: &'static str,
    kind: PartyKind,
    members: &[(&'static str, Role)],
) -> Party {
    Party {
        name,
        short,
        kind,
        id: PartyId(random16()),
        authority: SecretKey::generate(&mut OsRng),
        talks_authority: SecretKey::generate(&mut OsRng),
        members: members
            .iter()
            .map(|&(name, role)| Member {
                name,
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
            self.name,
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
                    name: m.name.into(),
                    identity_key: m.identity.public_key(),
                    devices: vec![m.device.public_key()],
                    acts,
                }
                .certify(talks, &self.talks_authority)
                .map_err(|e| anyhow::anyhow!("{e}"))
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

/// Runs the demo; `keep`: leave the node's directory in place.
pub fn main(keep: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let dir = std::env::temp_dir().join(format!("backchannel-demo-{}", hex::encode(random16())));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = runtime.block_on(run(&dir));
    if keep {
        println!("\nThe node's directory is kept at {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run(dir: &std::path::Path) -> anyhow::Result<()> {
    println!("Backchannel demo: Oman mediates between the United States and Iran.\n");
    println!(
        "Note: formal statements are transferable proof, and talk is attributable:\n\
         Backchannel offers no deniability. Every room is an MLS group: the node\n\
         relays and logs ciphertext it cannot read.\n"
    );

    // Delegations.
    let oman = party(
        "Sultanate of Oman",
        "OM",
        PartyKind::Mediator,
        &[("Omani lead mediator", Role::Lead)],
    );
    let us = party(
        "United States",
        "US",
        PartyKind::Party,
        &[
            ("US envoy", Role::Head),
            ("US negotiator", Role::Negotiator),
        ],
    );
    let iran = party(
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
    let room_names: BTreeMap<RoomId, &str> = [
        (record, "record"),
        (us_caucus, "caucus OM-US"),
        (iran_caucus, "caucus OM-IR"),
    ]
    .into();

    // The node.
    let log_key = SecretKey::generate(&mut OsRng);
    let tls_key = SecretKey::generate(&mut OsRng);
    let identity = Identity::self_signed(&tls_key, "backchannel-demo-node")?;
    let fingerprint = identity.fingerprint();
    let origin = NodeOrigin::new("demo.backchannel.example")?;
    let store = SqliteStore::open(&dir.join("node.db"), SqliteOptions::default()).await?;
    let node = Node::new(
        Arc::new(store),
        NodeConfig {
            origin: origin.clone(),
            log_key: Arc::new(SecretKey::from_seed(&log_key.seed())?),
            creators: vec![oman.members[0].device.public_key()],
            limits: Limits {
                checkpoint_interval: Duration::from_millis(100),
                ..Limits::default()
            },
            clock: Arc::new(SystemClock),
        },
    );
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = backchannel_node::net::Listener::local_addr(&listener)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Transport::Tls(Arc::new(server_config(&identity)?)),
        node,
        async move {
            let _ = stopped.await;
        },
    ));
    println!(
        "Node on {addr} (TLS 1.3), fingerprint {}",
        fingerprint.to_hex()
    );
    let client = |key: &SecretKey| NodeClient::new(addr, fingerprint, key);
    let lead = &oman.members[0];
    let mediator = client(&lead.device)?;

    // 1. The mediator opens the talks with its own team on the list.
    let oman_rooms = vec![record, us_caucus, iran_caucus];
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
                oman_rooms,
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

    // 4. The mediator builds the roster from what the parties certified.
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
    let principals = |ps: &[&Party]| {
        let mut v: Vec<PrincipalId> = ps
            .iter()
            .flat_map(|p| p.members.iter().map(|m| m.principal))
            .collect();
        v.sort();
        v
    };
    let mut rooms = vec![
        RoomDecl {
            room: record,
            purpose: RoomPurpose::Record,
            name: "Record".into(),
            members: principals(&[&oman, &us, &iran]),
        },
        RoomDecl {
            room: us_caucus,
            purpose: RoomPurpose::Caucus,
            name: "Caucus: Oman with the United States".into(),
            members: principals(&[&oman, &us]),
        },
        RoomDecl {
            room: iran_caucus,
            purpose: RoomPurpose::Caucus,
            name: "Caucus: Oman with Iran".into(),
            members: principals(&[&oman, &iran]),
        },
    ];
    rooms.sort_by_key(|r| r.room);
    let mut roster = Roster {
        parties,
        members,
        rooms,
        rules: vec![],
        access_list_hash: Digest([0; 32]),
    };
    let implied = roster.implied_access_list(talks)?;
    roster.access_list_hash = implied.hash();
    roster.verify_for(talks)?;

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
    let mut sessions: Vec<(String, PartyId, DemoSession, BTreeSet<RoomId>)> = Vec::new();
    for (n, p) in [&oman, &us, &iran].into_iter().enumerate() {
        for (k, m) in p.members.iter().enumerate() {
            let home = dir.join(format!("home-{n}-{k}"));
            std::fs::create_dir_all(&home)?;
            let passphrase = SecretString::from(hex::encode(random16()));
            let store = SqliteClientStore::create(
                home.join("home.db"),
                &passphrase,
                ClientStoreOptions::default(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating a participant's home: {e}"))?;
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
            sessions.push((format!("[{}] {}", p.short, m.name), p.id, s, rooms));
        }
    }

    println!(
        "Each of the {} devices keeps its archive in its own home, encrypted at rest",
        sessions.len()
    );

    // 6. Rooms become MLS groups: every device puts key packages on the
    //    node; the mediator's device creates each room's group and adds
    //    the devices the access list seats there (one commit and Welcome
    //    per room); everyone joins from its Welcome.
    let list = seated.list.clone();
    {
        // The mediator's device first: it creates each room's group.
        let mut all: Vec<&mut DemoSession> = sessions.iter_mut().map(|(_, _, s, _)| s).collect();
        backchannel_client::rooms::sync_all(&mut all, &list, now_ms() / 1000).await?;
    }
    for (name, _, s, rooms) in sessions.iter_mut() {
        for room in rooms.iter() {
            ensure!(
                s.room_epoch(*room).is_some(),
                "{name} is not in the group of a room it is seated in"
            );
        }
    }
    println!(
        "[OM] created the MLS group of each of the {} rooms and added every seated device; \
         from here on the node holds only ciphertext",
        room_names.len()
    );

    // 7. The mediator posts roster and ground rules to the record room.
    let roster_st = statement(
        &oman.talks_authority,
        talks,
        oman.id,
        record,
        CheckpointRef::NONE,
        Payload::Roster(roster),
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
        )),
    )?;
    {
        let s = &mut sessions[0].2;
        s.send(
            &list,
            record,
            Content::Statement(roster_st.as_bytes().to_vec()),
            salt(),
        )
        .await?;
        s.send(
            &list,
            record,
            Content::Statement(rules_st.as_bytes().to_vec()),
            salt(),
        )
        .await?;
        println!("[OM] posted the roster and the ground rules to the record room");
    }

    // 8. Each party's head receives them, verifies the roster (every party's
    //    own certification), compares it with the node's access list, and
    //    its talks authority accepts.
    for p in [&us, &iran] {
        let i = sessions
            .iter()
            .position(|(_, party, _, _)| *party == p.id)
            .context("a head's session")?;
        let got = sessions[i].2.receive(&list).await?;
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
        let served = sessions[i].2.node().access_list(talks).await?;
        ensure!(
            served.list.entries() == verified.access_list.entries(),
            "{}: the node's access list is not the roster's",
            p.short
        );
        // The acceptance carries the latest checkpoint this party verified,
        // which every recipient compares with its own tree.
        let my_rooms = sessions[i].3.clone();
        wait_for_integration(&sessions[i].2).await?;
        sessions[i].2.verify_log(&my_rooms, now_ms()).await?;
        let acceptance = statement(
            &p.talks_authority,
            talks,
            p.id,
            record,
            sessions[i].2.checkpoint_ref(),
            Payload::Acceptance(Acceptance {
                roster: r.unverified().id,
                roster_hash: sha256(r.as_bytes()),
                ground_rules: g.unverified().id,
                ground_rules_hash: sha256(g.as_bytes()),
            }),
        )?;
        sessions[i]
            .2
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

    // 9. Talk in the caucuses.
    let say = [
        (
            1,
            us_caucus,
            "We can move on the prisoner exchange if the funds stay humanitarian-only.",
        ),
        (
            0,
            us_caucus,
            "Noted. I will convey the substance, not the wording.",
        ),
        (
            0,
            iran_caucus,
            "The US side signals flexibility on the exchange, tied to humanitarian use of the funds.",
        ),
        (
            3,
            iran_caucus,
            "Acceptable in principle. We need the bank named before the first step.",
        ),
        (
            0,
            us_caucus,
            "Tehran accepts in principle and asks for the bank to be named first.",
        ),
    ];
    for (who, room, text) in say {
        sessions[who]
            .2
            .send(&list, room, Content::Talk(text.into()), salt())
            .await?;
    }

    // 10. Everyone receives, verifies the log from the data tiles and
    //    cosigns the same checkpoint.
    wait_for_integration(&sessions[0].2).await?;
    let total = mediator.fetch(talks, 0, 1).await?.log_size;
    for (name, _, s, rooms) in sessions.iter_mut() {
        s.receive(&list).await?;
        let (report, checkpoint) = s.verify_log(rooms, now_ms()).await?;
        ensure!(
            report.size == total,
            "{name}: verified {} of {total}",
            report.size
        );
        ensure!(
            report.withheld.is_empty(),
            "{name}: withheld {:?}",
            report.withheld
        );
        ensure!(
            report.not_merged.is_empty(),
            "{name}: not merged {:?}",
            report.not_merged
        );
        s.cosign(&checkpoint, now_ms() / 1000).await?;
    }
    for (name, _, s, _) in &sessions {
        let r = s.replay().await?;
        ensure!(
            r.rejected.is_empty() && r.forks.is_empty(),
            "{name}: replay rejected {:?}, forks {:?}",
            r.rejected,
            r.forks
        );
    }
    let replayed = sessions[0].2.replay().await?.accepted.len();
    println!(
        "\nEvery device replayed the record from its archive: {replayed} statements accepted, \
         none rejected, every checkpoint reference matching its own tree."
    );
    let (size, note) = mediator.checkpoint(talks).await?;
    let cosigned = backchannel_tlog::cosignatures(&note)?.len();
    let parties_cosigning: BTreeSet<PartyId> = sessions.iter().map(|(_, p, _, _)| *p).collect();
    ensure!(
        cosigned == sessions.len(),
        "{cosigned} cosignatures, not {}",
        sessions.len()
    );
    println!(
        "\nEvery device verified the log ({size} leaves) and cosigned it: \
         {cosigned} cosignatures from {} parties — the checkpoint is final.",
        parties_cosigning.len()
    );

    // 11. Safety codes: each party computes its own.
    println!("\nTalks safety codes (compare once over a channel the mediator does not control):");
    let mut codes = BTreeSet::new();
    for (p, i) in [(&oman, 0usize), (&us, 1), (&iran, 3)] {
        let archive = sessions[i].2.archive().await?;
        let statements: Vec<SignedStatement> = archive
            .iter()
            .filter_map(|a| match a.message.as_ref().map(|m| &m.content) {
                Some(Content::Statement(b)) => SignedStatement::decode(b).ok(),
                _ => None,
            })
            .collect();
        let code = SafetyCode::compute(&SafetyInputs {
            talks,
            roster: sha256(statements.first().context("no roster")?.as_bytes()),
            ground_rules: sha256(statements.get(1).context("no ground rules")?.as_bytes()),
            node_fingerprint: fingerprint.0,
            log_key: log_key.public_key(),
        });
        println!("  {:2}  {}", p.short, code.phrase());
        codes.insert(code.0);
    }
    if codes.len() != 1 {
        bail!("the parties' safety codes differ");
    }
    println!("  (all three match)");

    // 12. The transcript, as the mediator's archive holds it.
    println!("\nTranscript (the mediator's verified archive):");
    let names: BTreeMap<backchannel_crypto::KeyId, String> = sessions
        .iter()
        .map(|(n, _, s, _)| (s.device().public_key().id(), n.clone()))
        .collect();
    sessions[0].2.receive(&list).await?;
    for a in sessions[0].2.archive().await? {
        let h = a.header.header();
        let what = match a.message.as_ref().map(|m| &m.content) {
            Some(Content::Talk(t)) => format!("“{t}”"),
            Some(Content::Statement(b)) => match SignedStatement::decode(b) {
                Ok(s) => format!(
                    "signed statement: {:?}",
                    s.unverified().payload.statement_type()
                ),
                Err(_) => "a statement that does not decode".into(),
            },
            Some(Content::Copy(_)) => "a copy of earlier statements for newcomers".into(),
            Some(Content::Attachment(_)) => "an attachment".into(),
            None => match h.kind {
                backchannel_statement::Kind::MlsHandshake => "MLS handshake (group change)".into(),
                backchannel_statement::Kind::Welcome => "MLS Welcome".into(),
                _ => a.unreadable.clone().unwrap_or_else(|| "(purged)".into()),
            },
        };
        println!(
            "  #{:<3} {:14} {:36} {}",
            a.seq,
            room_names.get(&h.room).copied().unwrap_or("?"),
            names.get(&h.sender).map_or("?", String::as_str),
            what
        );
    }

    let _ = stop.send(());
    let _ = server.await;
    println!("\nDemo complete.");
    Ok(())
}
