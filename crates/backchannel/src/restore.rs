//! `backchannel home backup|restore`: a copy of the home, and a home made
//! from one onto a new device key.
//!
//! A backup is the home's store copied whole (`VACUUM INTO`: one
//! consistent snapshot, sealed under the same passphrase as the home):
//! keys, the verified archive, checkpoints, talks records — and the MLS
//! state of the day, which a restore throws away.
//!
//! A restore never brings back an MLS state: a second copy of a leaf would
//! commit from an epoch the group has left or will leave, and fork the
//! room (`backchannel_client::restore`). It copies the backup into a new
//! home and, for each talks, forgets everything that belonged to the old
//! device key and makes a new one, in one atomic write; then writes a
//! **request** per talks (the new device key's certificate, signed by the
//! member's identity key from the backup) for the party's talks-authority
//! home to seat (`device seat`). Once seated, the rooms' members add the
//! new device like any other; what was sent between the backup and that
//! add it cannot read, and a handover from a member of its party who holds
//! those rooms (or from the member's other device) brings it, verified
//! against the log. The old device is then revoked (`device revoke
//! --lost-at`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use backchannel_client::participant as talks_store;
use backchannel_client::restore::device_state_erasure;
use backchannel_client_store_sqlite::{ClientStoreOptions, SqliteClientStore};
use backchannel_crypto::{SecretKey, Signer as _};
use clap::Args;
use rand_core::OsRng;
use serde::Serialize;

use crate::cli::{HomePassphraseArgs, KeyKindArg};
use crate::participant::{self, LABEL};
use crate::{home, keys, link, passphrase};

/// What a backup leaves out, said before any loss (`home backup` prints
/// it).
pub const WHAT_IS_LOST: &str = "if this device is lost, a restore from this backup brings back \
     your keys and everything this home held up to now; it never brings back this device's MLS \
     state (the restored home is a new device, added to your rooms again). What is sent after \
     this backup comes back only through a handover by a member of your party who sits in the \
     room, or from another device of yours: in a room where no one else of your party sits \
     (your private notes, a room you alone hold for your party), it cannot be recovered";

/// What losing a device costs, said before any loss by the commands that
/// make a member's keys (`talks open`, `talks join`, `members join`) and
/// by `device list`.
pub const BEFORE_A_BACKUP: &str = "if this device is lost, only a backup (`backchannel home \
     backup`, kept off this device) brings back its keys and what it alone holds, and a restore \
     never brings back its MLS state (the restored home is a new device, added to your rooms \
     again). History of a room where another member of your party sits comes back through a \
     handover; in a room where no one else of your party sits (your private notes, a room you \
     alone hold for your party), it cannot be recovered";

/// `backchannel home backup`.
#[derive(Debug, Args)]
pub struct HomeBackupArgs {
    /// Where to write the backup (must not exist). It is sealed under the
    /// home's passphrase, like the home.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The passphrase.
    #[command(flatten)]
    pub passphrase: HomePassphraseArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `backchannel home restore`.
#[derive(Debug, Args)]
pub struct HomeRestoreArgs {
    /// The backup (`home backup`), opened with its home's passphrase.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// A directory to write one request per talks into (created; must be
    /// new or empty): take each to your talks-authority home (`device
    /// seat --request`).
    #[arg(long, value_name = "DIR")]
    pub requests: PathBuf,
    /// The passphrase.
    #[command(flatten)]
    pub passphrase: HomePassphraseArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct BackedUp {
    backup: PathBuf,
    bytes: u64,
    talks: Vec<String>,
    lost_if_device_lost: &'static str,
}

/// Runs `home backup`.
pub fn backup(dir: &Path, a: HomeBackupArgs) -> anyhow::Result<()> {
    if a.out.exists() {
        bail!("{} exists; choose another --out", a.out.display());
    }
    let out = a.out.clone();
    let talks = home::block_on(async {
        let store = home::open(dir, &a.passphrase).await?;
        let talks = talks_store::talks_index(&store).await?;
        let done = store
            .backup_to(&out)
            .await
            .with_context(|| format!("writing the backup {}", out.display()));
        store.close().await;
        done?;
        Ok(talks)
    })?;
    let bytes = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    let shown = BackedUp {
        backup: a.out.clone(),
        bytes,
        talks: talks.iter().map(|t| t.to_hex()).collect(),
        lost_if_device_lost: WHAT_IS_LOST,
    };
    if a.json {
        println!("{}", serde_json::to_string(&shown)?);
    } else {
        println!(
            "wrote a backup of this home ({} talks, {bytes} bytes) to {}, sealed under the \
             home's passphrase; keep it off this device",
            talks.len(),
            a.out.display()
        );
        println!("note: {WHAT_IS_LOST}");
    }
    Ok(())
}

#[derive(Serialize)]
struct Restored {
    talks: String,
    member: String,
    old_device_key_id: String,
    new_device_key_id: String,
    request: PathBuf,
}

/// Runs `home restore` into the new home `dir`.
pub fn restore(dir: &Path, a: HomeRestoreArgs) -> anyhow::Result<()> {
    let pass = passphrase::resolve_home(&a.passphrase)?;
    home::refuse_existing(dir)?;
    prepare_requests_dir(&a.requests)?;
    let len = std::fs::metadata(&a.from)
        .map_err(|e| anyhow!("cannot read the backup {}: {e}", a.from.display()))?
        .len();
    home::create_dir(dir)?;
    let store_path = dir.join(home::STORE);
    // The copy is opened, never the backup itself (opening migrates).
    let opened = copy_private(&a.from, &store_path).and_then(|()| {
        home::block_on(async {
            SqliteClientStore::open(&store_path, &pass, ClientStoreOptions::default())
                .await
                .map_err(|e| {
                    anyhow!(
                        "{} does not open as a backup of a home ({e}); give the file `home \
                         backup` wrote and its home's passphrase",
                        a.from.display()
                    )
                })?
                .close()
                .await;
            Ok(())
        })
    });
    // Anything failing from here on leaves no half-restored home behind:
    // the directory was new or empty, and is left so.
    let clean = |e: anyhow::Error| {
        home::release();
        for name in [home::STORE, "home.db-wal", "home.db-shm", home::LOCK] {
            let _ = std::fs::remove_file(dir.join(name));
        }
        e
    };
    opened.map_err(clean)?;
    let restored = rotate(dir, &a).map_err(clean)?;
    if a.json {
        println!("{}", serde_json::to_string(&restored)?);
        return Ok(());
    }
    println!(
        "restored a home of {len} bytes into {} on a new device key per talks; its MLS state \
         was not restored (it never is)",
        dir.display()
    );
    for r in &restored {
        println!(
            "talks {}: {} has the new device {}; the old one was {}",
            r.talks, r.member, r.new_device_key_id, r.old_device_key_id
        );
        println!(
            "  next: from your talks-authority home, `backchannel device seat --request {}` \
             (the other parties co-sign); revoke the old device there too (`backchannel device \
             revoke {} --lost-at <UTC>`); once this device is in your rooms, ask a member of \
             your party who sits in them for `backchannel handover --to {}`: it brings what \
             was sent since the backup",
            r.request.display(),
            &r.old_device_key_id[..16],
            r.member
        );
    }
    Ok(())
}

/// Moves every talks of the new home `dir` onto a new device key: first
/// every request is made (nothing is written if one cannot be), then each
/// talks' new key is stored with the erasure of the old key's state, in
/// one write per talks, then the requests are written. A talks for which
/// the home holds no identity key gets a new device key all the same (its
/// old state must not live on in a copy), but no request: it says so.
fn rotate(dir: &Path, a: &HomeRestoreArgs) -> anyhow::Result<Vec<Restored>> {
    home::block_on(async {
        let store = home::open(dir, &a.passphrase).await?;
        let mut planned = Vec::new();
        for talks in talks_store::talks_index(&store).await? {
            let record = talks_store::load(&store, talks)
                .await?
                .context("the backup's talks index names talks it holds no record of")?;
            let t = Some(talks);
            let Some(old) = keys::load(&store, KeyKindArg::Device, t, LABEL).await? else {
                continue;
            };
            let new = SecretKey::generate(&mut OsRng);
            let request = match keys::load(&store, KeyKindArg::Identity, t, LABEL).await? {
                Some(identity) => Some(link::request_for(&record, &identity, &new)?),
                None => {
                    eprintln!(
                        "note: talks {talks}: the backup holds no identity key, so no request \
                         can be signed for the new device; its old device state is forgotten \
                         all the same"
                    );
                    None
                }
            };
            planned.push((record, old, new, request));
        }
        let mut out = Vec::new();
        for (record, old, new, _) in &planned {
            let talks = record.talks;
            let erase = device_state_erasure(&store, talks, old).await?;
            keys::store_given(
                &store,
                KeyKindArg::Device,
                Some(talks),
                LABEL,
                new,
                true,
                erase,
            )
            .await?;
        }
        store.close().await;
        for (record, old, new, request) in planned {
            let Some(request) = request else { continue };
            let path = a
                .requests
                .join(format!("request-{}.json", record.talks.to_hex()));
            participant::write_secret(&path, request.to_json().as_bytes())?;
            out.push(Restored {
                talks: record.talks.to_hex(),
                member: record.member_name.clone(),
                old_device_key_id: old.public_key().id().to_hex(),
                new_device_key_id: new.public_key().id().to_hex(),
                request: path,
            });
        }
        Ok(out)
    })
}

/// Creates the requests directory (mode 0700), or accepts an empty one.
fn prepare_requests_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty; pass --requests naming a new or empty directory",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => home::create_dir(dir),
        Err(e) => bail!("cannot use {} for the requests: {e}", dir.display()),
    }
}

/// Copies `from` to the new file `to` (mode 0600), fsynced with its
/// directory.
fn copy_private(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut src = std::fs::File::open(from)
        .map_err(|e| anyhow!("cannot read the backup {}: {e}", from.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(to)
        .with_context(|| format!("cannot create {}", to.display()))?;
    std::io::copy(&mut src, &mut f)
        .and_then(|_| f.flush())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", to.display()))?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}
