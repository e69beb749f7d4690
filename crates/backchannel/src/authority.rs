//! `backchannel talks authority claim|certify|endorse|pass`: a party's
//! talks authority passed to a new holder (`docs/formats.md` §5
//! "Authority passed", §10 rule 16).
//!
//! A head of delegation replaced mid-talks hands the talks authority (the
//! key that certifies the party's members, revokes their keys, signs its
//! acceptances and its access-list changes) to the successor:
//!
//! 1. The new holder's home (a member of the party, e.g. the successor)
//!    runs `claim --out CLAIM`: it makes the new talks-authority key, which
//!    never leaves that home, and signs the transfer with it (talks,
//!    party, the current key, the new key, how).
//! 2. **Handed over** (the old holder is here): the old holder's home runs
//!    `pass --claim CLAIM`: its talks authority signs the `authority-passed`
//!    statement (the new key's signature inside), posts it to the record
//!    room, and proposes the access-list change that puts the new key in
//!    the old one's entry (same principal, rooms, flags); the mediator
//!    co-signs it (`talks cosign`, which checks the record holds the pass).
//! 3. **Re-appointed** (the old holder is gone): the home holding the
//!    party's long-term authority key runs `certify --claim CLAIM --out
//!    CLAIM2` (the certification the roster's party entry started with);
//!    under the all-parties change rule, every other party's
//!    talks-authority home runs `endorse`; then a mediator team's
//!    talks-authority home runs `pass`. The access-list change then needs
//!    the mediator, every other party and the new key itself (`talks
//!    cosign`, the new holder's home last, over its device's connection),
//!    not the party's old key, which can no longer sign.
//!
//! Every party's replay takes the new key as the party's talks authority
//! from the statement's seq and refuses what the old key signs after it;
//! the talks safety code changes (it covers every pass), so each party
//! compares it again.
//!
//! The claim is a JSON document (hex fields): version, talks, party, old
//! key id, new key, how (`handed over`, `re-appointed`), the new key's
//! signature, the certification (re-appointed), the endorsements.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail, ensure};
use backchannel_client::seal::Content;
use backchannel_codec::{PartyId, TalksId};
use backchannel_crypto::{Digest, KeyId, PublicKey, SecretKey, Signature, Signer as _};
use backchannel_statement::access_list::{AccessEntry, FLAG_DESIGNATED_SIGNER};
use backchannel_statement::{
    AccessListChange, AccessListDelta, AuthorityPassed, Endorsement, PartyKind, PassedHow, Payload,
};
use clap::{Args, Subcommand};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};

use crate::cli::{EXIT_CODES, HomePassphraseArgs, KeyKindArg, TalksArgs};
use crate::participant::{self, LABEL, refresh};
use crate::{home, keys};

/// `backchannel talks authority …`.
#[derive(Debug, Subcommand)]
pub enum AuthorityCommand {
    /// New holder: make the new talks-authority key in this home and sign
    /// the transfer with it; writes the claim.
    #[command(after_help = EXIT_CODES)]
    Claim(ClaimArgs),
    /// Re-appointed only: the party's long-term authority certifies the new
    /// key (run from the home holding it).
    #[command(after_help = EXIT_CODES)]
    Certify(CertifyArgs),
    /// Re-appointed only: another party's talks authority endorses the
    /// claim (needed from every other party under the all-parties rule).
    #[command(after_help = EXIT_CODES)]
    Endorse(EndorseArgs),
    /// Pass it: the old holder (handed over) or a mediator team
    /// (re-appointed) signs and posts the statement, and proposes the
    /// access-list change the mediator (and, re-appointed, every other
    /// party) co-signs with `talks cosign`.
    #[command(after_help = EXIT_CODES)]
    Pass(PassArgs),
}

/// `talks authority claim`.
#[derive(Debug, Args)]
pub struct ClaimArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The old holder is gone: a mediator team re-appoints, with the
    /// party's long-term authority's certification.
    #[arg(long)]
    pub reappointed: bool,
    /// Where to write the claim (must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `talks authority certify`.
#[derive(Debug, Args)]
pub struct CertifyArgs {
    /// The claim.
    #[arg(long, value_name = "FILE")]
    pub claim: PathBuf,
    /// Where to write the certified claim (must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The passphrase.
    #[command(flatten)]
    pub passphrase: HomePassphraseArgs,
}

/// `talks authority endorse`.
#[derive(Debug, Args)]
pub struct EndorseArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The claim.
    #[arg(long, value_name = "FILE")]
    pub claim: PathBuf,
    /// Where to write the endorsed claim (must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `talks authority pass`.
#[derive(Debug, Args)]
pub struct PassArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The claim (certified and endorsed, when re-appointed).
    #[arg(long, value_name = "FILE")]
    pub claim: PathBuf,
}

/// Runs one `talks authority` command.
pub fn main(home_dir: Option<PathBuf>, command: AuthorityCommand) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    match command {
        AuthorityCommand::Claim(a) => claim(&dir, a),
        AuthorityCommand::Certify(a) => certify(&dir, a),
        AuthorityCommand::Endorse(a) => endorse(&dir, a),
        AuthorityCommand::Pass(a) => pass(&dir, a),
    }
}

/// A claim as the parties hand it on.
#[derive(Debug, Clone)]
pub struct Claim {
    talks: TalksId,
    party: PartyId,
    old_key: KeyId,
    new_key: PublicKey,
    how: PassedHow,
    new_key_signature: Signature,
    certification: Option<Signature>,
    endorsements: Vec<Endorsement>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimJson {
    version: u8,
    talks: String,
    party: String,
    old_key: String,
    new_key: String,
    how: String,
    new_key_signature: String,
    certification: Option<String>,
    endorsements: Vec<EndorsementJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndorsementJson {
    key: String,
    signature: String,
}

fn hex_array<const N: usize>(field: &str, s: &str) -> anyhow::Result<[u8; N]> {
    let bytes = hex::decode(s).map_err(|_| anyhow!("its {field} is not hex"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow!("its {field} is not {N} bytes"))
}

impl Claim {
    fn to_json(&self) -> String {
        let j = ClaimJson {
            version: 1,
            talks: self.talks.to_hex(),
            party: self.party.to_hex(),
            old_key: self.old_key.to_hex(),
            new_key: hex::encode(self.new_key.as_bytes()),
            how: self.how.name().to_owned(),
            new_key_signature: hex::encode(self.new_key_signature.as_bytes()),
            certification: self.certification.map(|s| hex::encode(s.as_bytes())),
            endorsements: self
                .endorsements
                .iter()
                .map(|e| EndorsementJson {
                    key: e.key.to_hex(),
                    signature: hex::encode(e.signature.as_bytes()),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&j).unwrap_or_default()
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        let j: ClaimJson = serde_json::from_str(text).map_err(|e| anyhow!("{e}"))?;
        ensure!(j.version == 1, "it is version {}, not 1", j.version);
        let how = match j.how.as_str() {
            h if h == PassedHow::HandedOver.name() => PassedHow::HandedOver,
            h if h == PassedHow::Reappointed.name() => PassedHow::Reappointed,
            other => bail!("its how {other:?} is neither \"handed over\" nor \"re-appointed\""),
        };
        let mut endorsements = Vec::new();
        for e in &j.endorsements {
            endorsements.push(Endorsement {
                key: KeyId(Digest(hex_array("endorsement key", &e.key)?)),
                signature: Signature(hex_array("endorsement signature", &e.signature)?),
            });
        }
        Ok(Self {
            talks: TalksId::from_hex(&j.talks).map_err(|_| anyhow!("its talks is not an id"))?,
            party: PartyId::from_hex(&j.party).map_err(|_| anyhow!("its party is not an id"))?,
            old_key: KeyId(Digest(hex_array("old key", &j.old_key)?)),
            new_key: PublicKey::from_bytes(&hex_array::<32>("new key", &j.new_key)?)
                .map_err(|e| anyhow!("its new key is not a key ({e})"))?,
            how,
            new_key_signature: Signature(hex_array("new key signature", &j.new_key_signature)?),
            certification: j
                .certification
                .as_deref()
                .map(|s| hex_array("certification", s).map(Signature))
                .transpose()?,
            endorsements,
        })
    }

    fn read(path: &Path) -> anyhow::Result<Self> {
        let text = participant::read_document(path, "authority claim")?;
        Self::parse(&text).map_err(|e| {
            anyhow!(
                "{} is not an authority claim ({e}); ask for it again",
                path.display()
            )
        })
    }

    /// The payload, checked as the decoder checks it.
    fn payload(&self) -> anyhow::Result<AuthorityPassed> {
        let mut endorsements = self.endorsements.clone();
        endorsements.sort_by_key(|e| e.key);
        AuthorityPassed::new(
            self.party,
            self.old_key,
            self.new_key,
            self.how,
            self.new_key_signature,
            self.certification,
            endorsements,
        )
        .map_err(|e| anyhow!("the claim is not complete or not well formed: {e}"))
    }

    fn sign(&self, signer: &SecretKey) -> anyhow::Result<Signature> {
        Ok(AuthorityPassed::sign_transfer(
            signer,
            self.talks,
            self.party,
            &self.old_key,
            &self.new_key,
            self.how,
        )?)
    }

    /// Whether `signature` by `key` is over this claim's transfer.
    fn verifies(&self, key: &PublicKey, signature: &Signature) -> bool {
        let transfer = AuthorityPassed::transfer(
            self.talks,
            self.party,
            &self.old_key,
            &self.new_key,
            self.how,
        );
        key.verify(
            backchannel_statement::authority::AUTHORITY_PASSED_CONTEXT,
            &transfer,
            signature,
        )
        .is_ok()
    }
}

fn write_claim(path: &Path, claim: &Claim) -> anyhow::Result<()> {
    participant::write_secret(path, claim.to_json().as_bytes())
}

#[derive(Serialize)]
struct Claimed {
    claim: PathBuf,
    new_key_id: String,
    old_key_id: String,
    how: &'static str,
}

fn claim(dir: &Path, a: ClaimArgs) -> anyhow::Result<()> {
    ensure!(
        !a.out.exists(),
        "{} exists; choose another --out",
        a.out.display()
    );
    home::block_on(async move {
        let ctx = participant::open(dir, &a.talks).await?;
        let mut s = ctx.session().await?;
        let view = refresh(&ctx, &mut s).await?;
        let party = ctx.record.party;
        let old = view.replay.talks_authority(party).with_context(|| {
            format!(
                "the record knows no current talks authority of {}; nothing to pass",
                view.party_name(party)
            )
        })?;
        // A key made by an earlier, unfinished claim is used again; one
        // the record already knows is this home's own authority.
        let new = match keys::load(
            &ctx.store,
            KeyKindArg::TalksAuthority,
            Some(ctx.talks()),
            LABEL,
        )
        .await?
        {
            Some(k) if view.replay.key(&k.public_key().id()).is_some() => bail!(
                "this home already holds your party's talks authority (or a former one): the \
                 claim is made in the new holder's home"
            ),
            Some(k) => k,
            None => {
                let k = SecretKey::generate(&mut OsRng);
                keys::store_given(
                    &ctx.store,
                    KeyKindArg::TalksAuthority,
                    Some(ctx.talks()),
                    LABEL,
                    &k,
                    false,
                    Vec::new(),
                )
                .await?;
                k
            }
        };
        let how = if a.reappointed {
            PassedHow::Reappointed
        } else {
            PassedHow::HandedOver
        };
        let mut c = Claim {
            talks: ctx.talks(),
            party,
            old_key: old.key.id(),
            new_key: new.public_key(),
            how,
            new_key_signature: Signature([0; 64]),
            certification: None,
            endorsements: Vec::new(),
        };
        c.new_key_signature = c.sign(&new)?;
        write_claim(&a.out, &c)?;
        ctx.close().await;
        let out = Claimed {
            claim: a.out.clone(),
            new_key_id: new.public_key().id().to_hex(),
            old_key_id: c.old_key.to_hex(),
            how: how.name(),
        };
        if a.talks.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            println!(
                "made the new talks-authority key {} in this home and signed the claim to {}",
                out.new_key_id,
                a.out.display()
            );
            if a.reappointed {
                println!(
                    "next: the home holding your party's long-term authority runs `backchannel \
                     talks authority certify --claim {}`; under the all-parties rule every other \
                     party endorses it (`talks authority endorse`); then a mediator runs `talks \
                     authority pass`",
                    a.out.display()
                );
            } else {
                println!(
                    "next: the current holder runs `backchannel talks authority pass --claim {}`",
                    a.out.display()
                );
            }
        }
        Ok(())
    })
}

/// The re-appointment claim at `claim`, to be signed and written to the
/// new file `out`; `refusal` says why a handed-over claim is not.
fn reappointment(claim: &Path, out: &Path, refusal: &str) -> anyhow::Result<Claim> {
    ensure!(
        !out.exists(),
        "{} exists; choose another --out",
        out.display()
    );
    let c = Claim::read(claim)?;
    ensure!(c.how == PassedHow::Reappointed, "{refusal}");
    Ok(c)
}

fn certify(dir: &Path, a: CertifyArgs) -> anyhow::Result<()> {
    let mut c = reappointment(
        &a.claim,
        &a.out,
        "a handed-over claim needs no certification: the current holder passes it",
    )?;
    ensure!(
        c.verifies(&c.new_key, &c.new_key_signature),
        "the claim's new key did not sign it; do not certify it"
    );
    home::block_on(async move {
        let store = home::open(dir, &a.passphrase).await?;
        let authority = keys::load(&store, KeyKindArg::Authority, None, LABEL)
            .await?
            .context(
                "this home holds no long-term authority key: certify from the home that holds \
                 your party's",
            )?;
        store.close().await;
        c.certification = Some(c.sign(&authority)?);
        write_claim(&a.out, &c)?;
        println!(
            "certified the new talks-authority key {} with the long-term authority {}; wrote {}",
            c.new_key.id().to_hex(),
            authority.public_key().id().to_hex(),
            a.out.display()
        );
        Ok(())
    })
}

fn endorse(dir: &Path, a: EndorseArgs) -> anyhow::Result<()> {
    let mut c = reappointment(
        &a.claim,
        &a.out,
        "a handed-over claim takes no endorsements",
    )?;
    home::block_on(async move {
        let ctx = participant::open(dir, &a.talks).await?;
        ensure!(c.talks == ctx.talks(), "the claim is for other talks");
        ensure!(
            c.party != ctx.record.party,
            "your own party's claim is not yours to endorse"
        );
        let ta = ctx.key(KeyKindArg::TalksAuthority).await?;
        let mut s = ctx.session().await?;
        let view = refresh(&ctx, &mut s).await?;
        check_claim(&view, &c)?;
        ensure!(
            !c.endorsements.iter().any(|e| e.key == ta.public_key().id()),
            "you endorsed this claim already"
        );
        c.endorsements.push(Endorsement {
            key: ta.public_key().id(),
            signature: c.sign(&ta)?,
        });
        write_claim(&a.out, &c)?;
        ctx.close().await;
        println!(
            "endorsed {}'s new talks-authority key {}; wrote {}",
            view.party_name(c.party),
            c.new_key.id().to_hex(),
            a.out.display()
        );
        Ok(())
    })
}

/// What any home checks of a claim against its replayed record.
fn check_claim(view: &participant::View, c: &Claim) -> anyhow::Result<()> {
    let current = view.replay.talks_authority(c.party).with_context(|| {
        format!(
            "the record knows no current talks authority of {}",
            view.party_name(c.party)
        )
    })?;
    ensure!(
        current.key.id() == c.old_key,
        "the claim replaces key {}, but {}'s talks authority is {} now",
        c.old_key.to_hex(),
        view.party_name(c.party),
        current.key.id().to_hex()
    );
    ensure!(
        view.replay.key(&c.new_key.id()).is_none(),
        "the claim's new key is already in the record"
    );
    ensure!(
        c.verifies(&c.new_key, &c.new_key_signature),
        "the claim's new key did not sign it"
    );
    Ok(())
}

#[derive(Serialize)]
struct Passed {
    seq: u64,
    new_key_id: String,
    applied: bool,
    missing: Option<String>,
}

fn pass(dir: &Path, a: PassArgs) -> anyhow::Result<()> {
    let c = Claim::read(&a.claim)?;
    let payload = c.payload()?;
    home::block_on(async move {
        let ctx = participant::open(dir, &a.talks).await?;
        ensure!(c.talks == ctx.talks(), "the claim is for other talks");
        let ta = ctx.key(KeyKindArg::TalksAuthority).await?;
        match c.how {
            PassedHow::HandedOver => ensure!(
                ta.public_key().id() == c.old_key,
                "a handed-over claim is passed by its current holder: run this from the home \
                 holding the talks authority it replaces"
            ),
            PassedHow::Reappointed => ensure!(
                ctx.record.party_kind == PartyKind::Mediator && c.party != ctx.record.party,
                "a re-appointment is passed by a mediator team's talks authority"
            ),
        }
        let mut s = ctx.session().await?;
        let view = refresh(&ctx, &mut s).await?;
        // Passed already (an earlier run stopped before the access-list
        // change): only the change is proposed again.
        let logged = view
            .replay
            .authority_passes()
            .iter()
            .find(|p| p.party == c.party && p.old == c.old_key && p.new == c.new_key)
            .map(|p| p.seq);
        if logged.is_none() {
            check_claim(&view, &c)?;
        }
        // The old key's entry is checked before anything is posted.
        let current = s.node().access_list(ctx.talks()).await?;
        if let Some(seq) = logged
            && current.list.get(&c.new_key.id()).is_some()
        {
            ctx.close().await;
            println!(
                "the pass is in the record (seq {seq}) and the new key is on the access list: \
                 nothing left to do"
            );
            return Ok(());
        }
        let old = current.list.get(&c.old_key).cloned().with_context(|| {
            "the node's access list does not hold the old key: the new one cannot be seated in \
             its place; nothing was posted"
                .to_owned()
        })?;
        ensure!(
            old.has(FLAG_DESIGNATED_SIGNER),
            "the old key is not its party's designated signer on the access list; nothing was \
             posted"
        );
        let room = ctx.record.record_room.context("no record room yet")?;
        let seq = match logged {
            Some(seq) => seq,
            None => {
                let st = crate::talks::statement(
                    &ta,
                    &ctx.record,
                    room,
                    s.checkpoint_ref(),
                    Payload::AuthorityPassed(payload),
                )?;
                // The statement goes first: co-signers check the record for it.
                let seq =
                    participant::post(&mut s, room, Content::Statement(st.as_bytes().to_vec()))
                        .await?;
                let view = refresh(&ctx, &mut s).await?;
                if let Some(l) = view.logged(seq)
                    && let Err(e) = &l.verdict
                {
                    bail!("the record refused the pass at seq {seq}: {e}");
                }
                seq
            }
        };
        let current = s.node().access_list(ctx.talks()).await?;
        let entry = AccessEntry::new(
            c.new_key,
            old.principal,
            old.party,
            old.rooms().to_vec(),
            old.flags,
        )?;
        let delta = AccessListDelta::new(
            ctx.talks(),
            current.list.hash(),
            vec![c.old_key],
            vec![entry],
        )?;
        let change = AccessListChange::new(delta.clone(), vec![delta.sign(&ta)?])?;
        let outcome = participant::submit_change(&ctx, &ta, &change).await?;
        ctx.close().await;
        let out = Passed {
            seq,
            new_key_id: c.new_key.id().to_hex(),
            applied: outcome.applied,
            missing: outcome.missing,
        };
        if a.talks.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            println!(
                "the talks authority of {} passed to {} ({}), in the record at seq {seq}",
                view.party_name(c.party),
                out.new_key_id,
                c.how.name()
            );
            match &out.missing {
                None => println!("the new key is on the access list"),
                Some(m) => println!(
                    "the access-list change waits for co-signatures ({m}): `backchannel talks \
                     cosign` from {}",
                    if c.how == PassedHow::Reappointed {
                        "every other party and then the new holder's home (its key signs last)"
                    } else {
                        "the mediator"
                    }
                ),
            }
            println!(
                "note: the talks safety code changes with the pass: every party compares it again"
            );
        }
        Ok(())
    })
}

/// The key a change justified by a pass in the record seats: the change
/// removes exactly a party's talks authority that the record passed on and
/// puts the new key in the same entry (principal, party, rooms, flags).
pub fn justified_pass(
    view: &participant::View,
    current: &backchannel_statement::AccessList,
    delta: &AccessListDelta,
) -> Option<KeyId> {
    let ([removed], [added]) = (delta.remove(), delta.upsert()) else {
        return None;
    };
    let old = current.get(removed)?;
    // The pass is in the record, and the key it seats is still the
    // party's talks authority (not itself passed on since).
    let passed = view
        .replay
        .authority_passes()
        .iter()
        .any(|p| p.old == *removed && p.new.id() == added.key_id() && p.party == old.party)
        && view
            .replay
            .talks_authority(old.party)
            .is_some_and(|k| k.key.id() == added.key_id());
    let same = added.principal == old.principal
        && added.party == old.party
        && added.rooms() == old.rooms()
        && added.flags == old.flags
        && current.get(&added.key_id()).is_none();
    (passed && same).then(|| added.key_id())
}
