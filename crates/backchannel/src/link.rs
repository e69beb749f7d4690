//! `backchannel device link`: a new device of the same member, added
//! through a short code shown on an existing device, and `backchannel
//! device seat`: a new device key of a member of the party put on the
//! access list (a linked device, a restored home, a recovered key).
//!
//! Linking takes four runs of one command:
//!
//! 1. On an existing device, `device link --out OFFER` writes the **offer**
//!    and prints a **short code** (ten characters, 50 bits). The offer
//!    holds what the new device needs to act as the member: the talks
//!    record this home keeps (pinned node, talks, party, principal, role,
//!    record room), the member's identity key, and an expiry
//!    ([`OFFER_LIFETIME_MS`]). It is sealed with age to the code as a
//!    scrypt passphrase (work factor [`backchannel_keyfile::SCRYPT_LOG_N`]),
//!    so whoever copies the file without reading the code off the screen
//!    must guess 2^50 codes at a fraction of a second each.
//! 2. On the new device (a home of its own, `home init`), `device link
//!    --offer OFFER --code CODE --out REQUEST` opens the offer, keeps the
//!    identity key, makes the device's own key (which never leaves it),
//!    signs a device certificate for it with the identity key, and writes
//!    the **request** (the document `members join` writes: talks,
//!    principal, identity key, device key, device certificate).
//! 3. On the existing device, `device link --request REQUEST` seats it:
//!    the same as `device seat`, below.
//! 4. Once the new device has run a command (its key packages are on the
//!    node), `device link --history` on the existing device adds it to
//!    this device's rooms, waits (`--wait`, 10 s) for a checkpoint that
//!    covers what this device received, and hands over the whole history
//!    of its rooms to the member's other devices on the access list
//!    (`handover --to` one's own name; a lost device is revoked first, or
//!    it is sealed to as well): the archive travels device to device,
//!    sealed to the new device's key, through the node as opaque
//!    envelopes, and the new device verifies it against the log.
//!
//! Seating (`device seat --request REQUEST`, or `device link --request`,
//! from the party's talks-authority home; any other home of the party only
//! posts the certificate and says which home finishes): the request's
//! device certificate must be signed by an identity key the
//! record certifies for that member, unrevoked; it is posted to the record
//! room, and the access-list change seating the device in the rooms (and
//! with the flags) of the member's devices on the list — or, when none is
//! left, of the member's roster entry — is signed by the party's talks
//! authority and proposed. A change of rooms' membership needs the
//! mediator and every party in those rooms (`talks cosign`).
//!
//! # Offer plaintext
//!
//! ```text
//! offer = "backchannel device link v1\n" not_after:u64 (Unix ms)
//!         identity_seed:[32] record:TalksRecord (as the home stores it)
//! file  = age v1, one scrypt recipient (the code), binary
//! code  = 10 characters of Crockford's base32 (50 random bits), shown as
//!         XXXXX-XXXXX; read case-insensitively, dashes and spaces ignored,
//!         O read as 0 and I, L as 1
//! ```

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use age::secrecy::SecretString;
use anyhow::{Context as _, anyhow, bail, ensure};
use backchannel_client::participant::{self as talks_store, MemberReplyDoc, TalksRecord};
use backchannel_client::seal::Content;
use backchannel_codec::{Decode, Encode, PrincipalId, Reader, TalksId, Writer};
use backchannel_core::replay::KeyRole;
use backchannel_crypto::{PublicKey, SecretKey, Signer as _};
use backchannel_statement::access_list::{AccessEntry, FLAG_DEVICE, FLAG_MEDIATOR};
use backchannel_statement::{
    AccessListChange, AccessListDelta, Audience, CheckpointRef, DeviceCert, Markings, Payload,
    SignedStatement, Statement,
};
use clap::Args;
use rand_core::{OsRng, RngCore};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::cli::{HomePassphraseArgs, KeyKindArg, TalksArgs};
use crate::participant::{self, CliSession, Ctx, LABEL, View, now_ms, refresh};
use crate::{home, keys};

/// The longest `device link --history --wait`, in seconds (checkpoints
/// come every second; ten minutes is far past any that is coming).
pub const MAX_HISTORY_WAIT_S: u64 = 600;
/// How long an offer can be taken up.
pub const OFFER_LIFETIME_MS: u64 = 30 * 60 * 1000;
/// The first line of an offer's plaintext.
const OFFER_MAGIC: &[u8] = b"backchannel device link v1\n";
/// The largest offer read (a talks record is well under 4 KiB).
const MAX_OFFER: u64 = 64 * 1024;
/// How long a device certificate made for a new device key is valid (a
/// linked, restored or newly joined member's device).
const DEVICE_VALIDITY_MS: u64 = 365 * 24 * 3_600_000;
/// Crockford's base32 alphabet.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in a code.
const CODE_LEN: usize = 10;

/// `backchannel device link`.
#[derive(Debug, Args)]
pub struct DeviceLinkArgs {
    /// Which talks (on the existing device).
    #[command(flatten)]
    pub talks: TalksArgs,
    /// On the existing device: where to write the offer (must not exist);
    /// prints the code to type on the new device. On the new device, with
    /// --offer: where to write the request.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// On the new device: the offer the existing device wrote.
    #[arg(long, value_name = "FILE", requires_all = ["code", "out"], conflicts_with = "request")]
    pub offer: Option<PathBuf>,
    /// On the new device: the code the existing device shows.
    #[arg(long, requires = "offer")]
    pub code: Option<String>,
    /// On the existing device: the new device's request, to seat it.
    #[arg(long, value_name = "FILE", conflicts_with = "out")]
    pub request: Option<PathBuf>,
    /// On the existing device, once the new one is seated and has run a
    /// command: hand it the history of your rooms (a handover to every
    /// other device of yours on the access list — revoke a lost one first
    /// — sealed to them, which verify it against the log), after waiting
    /// up to --wait seconds for a checkpoint that covers what this device
    /// has received.
    #[arg(long, conflicts_with_all = ["out", "offer", "request"])]
    pub history: bool,
    /// With --history: how long to wait for that checkpoint (at most
    /// 600).
    #[arg(
        long,
        default_value_t = 10,
        value_name = "SECONDS",
        requires = "history",
        value_parser = clap::value_parser!(u64).range(0..=MAX_HISTORY_WAIT_S)
    )]
    pub wait: u64,
}

/// `backchannel device seat`.
#[derive(Debug, Args)]
pub struct DeviceSeatArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The request a new device of a member of your party wrote (`device
    /// link --offer`, `home restore`, `members join` of a recovered member).
    #[arg(long, value_name = "FILE")]
    pub request: PathBuf,
}

/// Runs `device link`.
pub fn link(home_dir: Option<PathBuf>, a: DeviceLinkArgs) -> anyhow::Result<()> {
    if a.history {
        return history(home_dir, &a.talks, Duration::from_secs(a.wait));
    }
    match (&a.offer, &a.request, &a.out) {
        (Some(offer), _, Some(out)) => {
            let code = a.code.as_deref().unwrap_or_default();
            take_offer(
                home_dir,
                offer,
                code,
                out,
                &a.talks.passphrase,
                a.talks.json,
            )
        }
        (None, Some(request), None) => seat(home_dir, &a.talks, request),
        (None, None, Some(out)) => make_offer(home_dir, &a.talks, out),
        _ => bail!(
            "say which step: `--out OFFER` on the existing device, `--offer OFFER --code CODE \
             --out REQUEST` on the new one, `--request REQUEST` on the existing device, then \
             `--history` there once the new device is in your rooms"
        ),
    }
}

/// `device link --history`: this device's rooms brought up to date (which
/// adds a newly seated device of the member to their groups), the log
/// verified until a checkpoint covers what this device received (at most
/// `wait`), then the history handed over to the member's other devices.
fn history(home_dir: Option<PathBuf>, t: &TalksArgs, wait: Duration) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    home::block_on(async move {
        let ctx = participant::open(&dir, t).await?;
        let ask = crate::handover::Ask {
            to: ctx.record.principal.to_hex(),
            rooms: Vec::new(),
            until: None,
            wait_for_checkpoint: Some(wait),
            json: t.json,
        };
        let result = crate::handover::send(&ctx, &ask).await;
        ctx.close().await;
        result
    })
}

/// Runs `device seat`.
pub fn seat_command(home_dir: Option<PathBuf>, a: DeviceSeatArgs) -> anyhow::Result<()> {
    seat(home_dir, &a.talks, &a.request)
}

/// A fresh code: [`CODE_LEN`] characters of [`CROCKFORD`].
fn new_code() -> String {
    let mut bytes = [0u8; CODE_LEN];
    OsRng.fill_bytes(&mut bytes);
    let chars: String = bytes
        .iter()
        .map(|b| CROCKFORD[usize::from(b & 31)] as char)
        .collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

/// The code as typed, in its canonical form (ten characters of
/// [`CROCKFORD`]), or why not.
pub fn parse_code(typed: &str) -> anyhow::Result<String> {
    let mut out = String::with_capacity(CODE_LEN);
    for c in typed.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        ensure!(
            c.is_ascii() && CROCKFORD.contains(&(c as u8)),
            "the code holds {c:?}, which no code does; type the ten characters the existing \
             device shows (letters and digits, dashes optional)"
        );
        out.push(c);
    }
    ensure!(
        out.len() == CODE_LEN,
        "the code has {} characters, not {CODE_LEN}; type it as the existing device shows it",
        out.len()
    );
    Ok(out)
}

/// What an offer carries.
struct Offer {
    not_after: u64,
    identity: SecretKey,
    record: TalksRecord,
}

impl Offer {
    fn to_plaintext(&self) -> Zeroizing<Vec<u8>> {
        // Exactly the capacity needed, so the buffer holding the seed is
        // never reallocated (which would leave an unwiped copy behind).
        let record = self.record.to_canonical_bytes();
        let mut w = Writer::with_capacity(OFFER_MAGIC.len() + 8 + 32 + record.len());
        w.raw(OFFER_MAGIC);
        w.u64(self.not_after);
        w.raw(&self.identity.seed()[..]);
        w.raw(&record);
        Zeroizing::new(w.into_bytes())
    }

    fn from_plaintext(b: &[u8]) -> anyhow::Result<Self> {
        let mut r = Reader::new(b);
        let magic: [u8; 27] = r.array("magic")?;
        ensure!(magic == OFFER_MAGIC, "it is not a device link offer");
        let not_after = r.u64("not after")?;
        let seed = Zeroizing::new(r.array::<32>("identity seed")?);
        let identity =
            SecretKey::from_seed(&seed).map_err(|e| anyhow!("its identity key is invalid: {e}"))?;
        let record = TalksRecord::decode(&mut r)?;
        r.finish()?;
        Ok(Self {
            not_after,
            identity,
            record,
        })
    }
}

#[derive(Serialize)]
struct Offered {
    offer: PathBuf,
    code: String,
    not_after_ms: u64,
}

fn make_offer(home_dir: Option<PathBuf>, t: &TalksArgs, out: &Path) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    home::block_on(async move {
        let ctx = participant::open(&dir, t).await?;
        let identity = ctx.key(KeyKindArg::Identity).await?;
        // Only a member whose identity key the record still certifies can
        // link: say so now rather than after the new device is set up.
        let mut s = ctx.session().await?;
        let view = refresh(&ctx, &mut s).await?;
        identity_of(
            &view,
            ctx.record.party,
            ctx.record.principal,
            &identity.public_key(),
        )?;
        let mut record = ctx.record.clone();
        // The new device is not the one that invited anyone.
        record.invited.clear();
        record.pending_members.clear();
        let offer = Offer {
            not_after: now_ms() + OFFER_LIFETIME_MS,
            identity,
            record,
        };
        let code = new_code();
        let sealed = seal_offer(&offer, &parse_code(&code)?)?;
        participant::write_secret(out, &sealed)?;
        ctx.close().await;
        let shown = Offered {
            offer: out.to_owned(),
            code: code.clone(),
            not_after_ms: offer.not_after,
        };
        if t.json {
            println!("{}", serde_json::to_string(&shown)?);
        } else {
            println!("wrote the offer to {}", out.display());
            println!("code: {code}");
            println!(
                "on the new device (a home of its own): `backchannel device link --offer {} \
                 --code {code} --out request.json`; the offer holds your identity key: move it \
                 yourself, type the code by hand, and delete the file once used; it expires in \
                 {} minutes",
                out.display(),
                OFFER_LIFETIME_MS / 60_000
            );
        }
        Ok(())
    })
}

fn seal_offer(offer: &Offer, code: &str) -> anyhow::Result<Vec<u8>> {
    let mut recipient = age::scrypt::Recipient::new(SecretString::from(code.to_owned()));
    recipient.set_work_factor(backchannel_keyfile::write_log_n());
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .map_err(|e| anyhow!("sealing the offer: {e}"))?;
    let mut out = Vec::with_capacity(4096);
    let mut w = encryptor
        .wrap_output(&mut out)
        .context("sealing the offer")?;
    w.write_all(&offer.to_plaintext())
        .and_then(|()| w.finish().map(|_| ()))
        .context("sealing the offer")?;
    Ok(out)
}

fn open_offer(sealed: &[u8], code: &str) -> anyhow::Result<Offer> {
    let decryptor = age::Decryptor::new_buffered(sealed)
        .map_err(|e| anyhow!("it is not a device link offer ({e})"))?;
    let mut identity = age::scrypt::Identity::new(SecretString::from(code.to_owned()));
    identity.set_max_work_factor(backchannel_keyfile::MAX_SCRYPT_LOG_N);
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys | age::DecryptError::DecryptionFailed => anyhow!(
                "the code does not open this offer; check it against the existing device's \
                 screen (or make a new offer there)"
            ),
            other => anyhow!("the offer does not open ({other})"),
        })?;
    let mut plain = Zeroizing::new(Vec::new());
    reader
        .by_ref()
        .take(MAX_OFFER)
        .read_to_end(&mut plain)
        .map_err(|e| anyhow!("the offer is damaged ({e}); make a new one"))?;
    Offer::from_plaintext(&plain).map_err(|e| anyhow!("the offer is damaged ({e}); make a new one"))
}

#[derive(Serialize)]
struct Requested {
    talks: String,
    principal: String,
    device_key_id: String,
    request: PathBuf,
}

fn take_offer(
    home_dir: Option<PathBuf>,
    offer_path: &Path,
    code: &str,
    out: &Path,
    passphrase: &HomePassphraseArgs,
    json: bool,
) -> anyhow::Result<()> {
    let code = parse_code(code)?;
    let sealed = participant::read_bounded(offer_path, MAX_OFFER, "device link offer")?;
    let dir = home::resolve(home_dir)?;
    let offer = open_offer(&sealed, &code)?;
    ensure!(
        now_ms() <= offer.not_after,
        "this offer expired; make a new one on the existing device (`backchannel device link \
         --out OFFER`)"
    );
    ensure!(
        !out.exists(),
        "{} exists; choose another --out",
        out.display()
    );
    home::block_on(async move {
        let store = home::open(&dir, passphrase).await?;
        let talks = offer.record.talks;
        if talks_store::load(&store, talks).await?.is_some() {
            bail!(
                "this home already takes part in talks {talks}; link from a new home \
                 (`backchannel home init --home <DIR>`)"
            );
        }
        let t = Some(talks);
        keys::store_given(
            &store,
            KeyKindArg::Identity,
            t,
            LABEL,
            &offer.identity,
            false,
            Vec::new(),
        )
        .await?;
        let device = keys::load_or_generate(&store, KeyKindArg::Device, t, LABEL).await?;
        let request = request_for(&offer.record, &offer.identity, &device)?;
        participant::write_secret(out, request.to_json().as_bytes())?;
        talks_store::create(&store, &offer.record).await?;
        store.close().await;
        let shown = Requested {
            talks: talks.to_hex(),
            principal: offer.record.principal.to_hex(),
            device_key_id: device.public_key().id().to_hex(),
            request: out.to_owned(),
        };
        if json {
            println!("{}", serde_json::to_string(&shown)?);
        } else {
            println!(
                "this device is {} of {} (device key {}); wrote the request to {}: take it \
                 back to the existing device and run `backchannel device link --request {}` \
                 there",
                offer.record.member_name,
                offer.record.party_name,
                shown.device_key_id,
                out.display(),
                out.display()
            );
        }
        Ok(())
    })
}

/// The request a new device key of the member `record` names makes: its
/// device certificate, signed by `identity`.
pub fn request_for(
    record: &TalksRecord,
    identity: &SecretKey,
    device: &SecretKey,
) -> anyhow::Result<MemberReplyDoc> {
    let room = record
        .record_room
        .context("this home does not know the talks' record room yet")?;
    let cert = Statement::new(
        &mut OsRng,
        record.talks,
        identity.public_key().id(),
        record.party,
        vec![Audience::Room(room)],
        CheckpointRef::NONE,
        Markings::mediator_only(),
        Payload::DeviceCert(DeviceCert {
            principal: record.principal,
            device_key: device.public_key(),
            not_after: now_ms() + DEVICE_VALIDITY_MS,
        }),
    )?
    .sign(identity)?;
    Ok(MemberReplyDoc {
        talks: record.talks,
        principal: record.principal,
        identity_key: identity.public_key(),
        device_key: device.public_key(),
        device_cert: cert.as_bytes().to_vec(),
    })
}

/// Checks that the record certifies `key` as `principal`'s identity key and
/// has not revoked it.
fn identity_of(
    view: &View,
    party: backchannel_codec::PartyId,
    principal: PrincipalId,
    key: &PublicKey,
) -> anyhow::Result<()> {
    let Some(state) = view.replay.key(&key.id()) else {
        bail!(
            "the record does not know the identity key {}; the member must be admitted \
             first (`members admit`)",
            key.id().to_hex()
        );
    };
    ensure!(
        matches!(state.role, KeyRole::Identity { principal: p, party: q, .. }
            if p == principal && q == party),
        "the key {} is not the identity key of that member of your party in the record",
        key.id().to_hex()
    );
    ensure!(
        state.revoked_at.is_none(),
        "the identity key {} is revoked in the record; a new identity key must be certified \
         first (`members recover`)",
        key.id().to_hex()
    );
    Ok(())
}

#[derive(Serialize)]
struct Seated {
    principal: String,
    device_key_id: String,
    device_cert_seq: u64,
    applied: bool,
    missing: Option<String>,
}

fn seat(home_dir: Option<PathBuf>, t: &TalksArgs, request_path: &Path) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    let text = participant::read_document(request_path, "device request")?;
    let request = MemberReplyDoc::parse(&text).map_err(|e| {
        anyhow!(
            "{} is not a device request ({e}); write it again on the new device",
            request_path.display()
        )
    })?;
    home::block_on(async move {
        let ctx = participant::open(&dir, t).await?;
        ensure!(
            request.talks == ctx.talks(),
            "the request is for talks {}, not these; pass --talks {}",
            request.talks,
            request.talks
        );
        let mut s = ctx.session().await?;
        let out = seat_request(&ctx, &mut s, &request).await?;
        ctx.close().await;
        if t.json {
            println!("{}", serde_json::to_string(&out)?);
        } else if out.applied {
            println!(
                "the device {} is certified (seq {}) and seated; once it has opened the talks \
                 (`backchannel read` there), the member's existing device sends it the history \
                 it cannot read with `backchannel device link --history` (another member of \
                 the party: `backchannel handover --to <the member>`)",
                out.device_key_id, out.device_cert_seq
            );
        } else if let Some(missing) = &out.missing {
            println!(
                "the device {} is certified (seq {}); the change seating it waits for \
                 co-signatures ({missing}): the mediator and the other parties run \
                 `backchannel talks cosign`",
                out.device_key_id, out.device_cert_seq
            );
        }
        Ok(())
    })
}

async fn seat_request(
    ctx: &Ctx,
    s: &mut CliSession,
    request: &MemberReplyDoc,
) -> anyhow::Result<Seated> {
    let view = refresh(ctx, s).await?;
    let cert = SignedStatement::decode(&request.device_cert).map_err(|e| {
        anyhow!("the request's device certificate does not decode ({e}); write it again on the new device")
    })?;
    let verified = cert.verify(ctx.talks(), &request.identity_key).map_err(|e| {
        anyhow!("the request's device certificate is not signed by its identity key ({e}); do not seat it")
    })?;
    let st = verified.statement();
    let ok = st.acting_for == ctx.record.party
        && matches!(&st.payload, Payload::DeviceCert(c)
            if c.principal == request.principal && c.device_key == request.device_key);
    ensure!(
        ok,
        "the request's device certificate is not for that member's device in your party; do not \
         seat it"
    );
    identity_of(
        &view,
        ctx.record.party,
        request.principal,
        &request.identity_key,
    )?;
    // A device key the record revoked, or whose certificate expired, is
    // never seated (again).
    if let Some(k) = view.replay.key(&request.device_key.id()) {
        ensure!(
            k.revoked_at.is_none(),
            "the request's device key is revoked in the record (seq {}); make a new request",
            k.revoked_at.unwrap_or_default()
        );
        let expired = matches!(k.role, KeyRole::Device { not_after: Some(t), .. } if t <= now_ms());
        ensure!(
            !expired,
            "the request's device certificate has expired; make a new request"
        );
    }
    ensure!(
        view.replay.key(&request.device_key.id()).is_none()
            || view.statements.iter().any(|l| l.verdict.is_ok()
                && matches!(&l.statement.unverified().payload, Payload::DeviceCert(c)
                    if c.device_key == request.device_key && c.principal == request.principal)),
        "the request's device key is already in the record for another holder; make a new request"
    );
    let room = ctx.record.record_room.context("no record room yet")?;
    let logged = view
        .statements
        .iter()
        .filter(|l| l.verdict.is_ok())
        .find(|l| {
            matches!(&l.statement.unverified().payload, Payload::DeviceCert(c)
                if c.principal == request.principal && c.device_key == request.device_key)
        })
        .map(|l| l.seq);
    let device_cert_seq = match logged {
        Some(seq) => seq,
        None => {
            let seq =
                participant::post(s, room, Content::Statement(request.device_cert.clone())).await?;
            // Seated only if every replay takes the certificate.
            let view = refresh(ctx, s).await?;
            if let Some(l) = view.logged(seq)
                && let Err(e) = &l.verdict
            {
                bail!(
                    "the record refused the device certificate at seq {seq} ({e}); the device is \
                     not seated"
                );
            }
            seq
        }
    };
    let current = s.node().access_list(ctx.talks()).await?;
    let device_key_id = request.device_key.id().to_hex();
    if current.list.get(&request.device_key.id()).is_some() {
        return Ok(Seated {
            principal: request.principal.to_hex(),
            device_key_id,
            device_cert_seq,
            applied: true,
            missing: None,
        });
    }
    let Ok(ta) = ctx.key(KeyKindArg::TalksAuthority).await else {
        bail!(
            "the device certificate is in the record (seq {device_cert_seq}), but only your \
             party's talks-authority home signs the change that seats a device: run \
             `backchannel device seat --request <the same file>` there"
        );
    };
    let outcome = propose_seat(
        ctx,
        s,
        &ta,
        &view,
        &current.list,
        request.principal,
        request.device_key,
    )
    .await?;
    Ok(Seated {
        principal: request.principal.to_hex(),
        device_key_id,
        device_cert_seq,
        applied: outcome.applied,
        missing: outcome.missing,
    })
}

/// Proposes, signed by the party's talks authority `ta`, the access-list
/// change that seats `device` for `principal` in [`seat_rooms`]: applied
/// at once, or waiting for the co-signatures the change rule asks
/// (`talks cosign`). The node merges the same delta proposed again.
pub async fn propose_seat(
    ctx: &Ctx,
    s: &CliSession,
    ta: &SecretKey,
    view: &View,
    list: &backchannel_statement::AccessList,
    principal: PrincipalId,
    device: PublicKey,
) -> anyhow::Result<backchannel_client::net::ChangeOutcome> {
    let (rooms, flags) = seat_rooms(
        view,
        list,
        principal,
        &s.device().public_key(),
        ctx.record.party_kind,
        ctx.talks(),
    )?;
    let entry = AccessEntry::new(device, principal, ctx.record.party, rooms, flags)?;
    let delta = AccessListDelta::new(ctx.talks(), list.hash(), vec![], vec![entry])?;
    let change = AccessListChange::new(delta.clone(), vec![delta.sign(ta)?])?;
    participant::submit_change(ctx, ta, &change).await
}

/// The rooms and flags a new device of `principal` is seated with: those
/// of the member's devices on `list`; else of the member's roster entry;
/// else (a member admitted after the roster whose devices are all gone) of
/// this home's device `mine` but its private notes, as `members admit`
/// seats a new member.
pub fn seat_rooms(
    view: &View,
    list: &backchannel_statement::AccessList,
    principal: PrincipalId,
    mine: &PublicKey,
    party_kind: backchannel_statement::PartyKind,
    talks: TalksId,
) -> anyhow::Result<(Vec<backchannel_codec::RoomId>, u8)> {
    let device_of = |l: &backchannel_statement::AccessList| {
        l.entries()
            .iter()
            .find(|e| e.principal == principal && e.has(FLAG_DEVICE))
            .map(|e| (e.rooms().to_vec(), e.flags))
    };
    if let Some(found) = device_of(list) {
        return Ok(found);
    }
    if let Some(found) = view
        .roster()
        .and_then(|r| r.implied_access_list(talks).ok())
        .as_ref()
        .and_then(device_of)
    {
        return Ok(found);
    }
    let e = list
        .get(&mine.id())
        .context("your own device is not on the access list")?;
    let mut flags = FLAG_DEVICE;
    if party_kind == backchannel_statement::PartyKind::Mediator {
        flags |= FLAG_MEDIATOR;
    }
    // Never this home's member's private notes.
    let private = view.private_notes();
    let rooms = e
        .rooms()
        .iter()
        .copied()
        .filter(|r| !private.contains(r))
        .collect();
    Ok((rooms, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_back() {
        for _ in 0..64 {
            let code = new_code();
            let canonical = parse_code(&code).expect("a fresh code parses");
            assert_eq!(canonical.len(), CODE_LEN);
            assert_eq!(parse_code(&code.to_lowercase()).unwrap(), canonical);
            assert_eq!(parse_code(&canonical).unwrap(), canonical);
        }
        assert_eq!(parse_code("o1il0-ABCDE").unwrap(), "01110ABCDE");
        assert!(parse_code("ABCDE-FGHJ").is_err(), "too short");
        assert!(parse_code("ABCDE-FGHJKM").is_err(), "too long");
        assert!(
            parse_code("ABCDE-FGHJU").is_err(),
            "U is not in the alphabet"
        );
        assert!(parse_code("ABCDE-FGHJ\u{e9}").is_err(), "not ASCII");
    }

    #[test]
    fn an_offer_opens_with_its_code_only() {
        use backchannel_client::participant::PinnedNode;
        use backchannel_codec::{PartyId, RoomId};
        use backchannel_statement::{PartyKind, Role};
        let record = TalksRecord {
            talks: TalksId([1; 16]),
            node: PinnedNode {
                address: "127.0.0.1:7443".into(),
                fingerprint: backchannel_node::tls::Fingerprint([7; 32]),
                origin: backchannel_tlog::NodeOrigin::new("node.example.org").unwrap(),
                log_key: SecretKey::generate(&mut OsRng).public_key(),
            },
            party: PartyId([2; 16]),
            party_kind: PartyKind::Party,
            party_name: "United States".into(),
            principal: PrincipalId([3; 16]),
            member_name: "US head".into(),
            role: Role::Head,
            record_room: Some(RoomId([4; 16])),
            invited: vec![],
            pending_members: vec![],
            verifications: Default::default(),
        };
        let offer = Offer {
            not_after: 7,
            identity: SecretKey::generate(&mut OsRng),
            record: record.clone(),
        };
        let sealed = seal_offer(&offer, "0123456789").unwrap();
        let back = open_offer(&sealed, "0123456789").unwrap();
        assert_eq!(back.not_after, 7);
        assert_eq!(back.identity.public_key(), offer.identity.public_key());
        assert_eq!(back.record, record);
        let wrong = open_offer(&sealed, "0123456788").err().unwrap().to_string();
        assert!(
            wrong.contains("the code does not open this offer"),
            "{wrong}"
        );
        let mut cut = sealed.clone();
        cut.truncate(sealed.len() - 1);
        assert!(open_offer(&cut, "0123456789").is_err());
        assert!(open_offer(b"not age", "0123456789").is_err());
    }
}
