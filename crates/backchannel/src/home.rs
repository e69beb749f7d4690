//! `backchannel home …`: the participant's home, a directory (mode `0700`)
//! holding one encrypted client store, [`STORE`]
//! ([`SqliteClientStore`]), opened with the passphrase from
//! `BACKCHANNEL_PASSPHRASE` or `--passphrase-file`.
//!
//! The home is named by `--home <DIR>` or `BACKCHANNEL_HOME`; there is no
//! default, so a command never opens (or creates) a home by accident.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use backchannel_client_store_sqlite::{ClientStoreOptions, CreateError, SqliteClientStore};
use serde::Serialize;

use crate::cli::{HomeCommand, HomeInitArgs, HomePassphraseArgs};
use crate::passphrase;

/// The store's file name in the home directory.
pub const STORE: &str = "home.db";

/// Runs one `home` command.
pub fn main(home: Option<PathBuf>, command: HomeCommand) -> anyhow::Result<()> {
    let dir = resolve(home)?;
    match command {
        HomeCommand::Init(args) => init(&dir, args),
        HomeCommand::Backup(args) => crate::restore::backup(&dir, args),
        HomeCommand::Restore(args) => crate::restore::restore(&dir, args),
    }
}

/// The home directory named by `--home` or `BACKCHANNEL_HOME`.
pub fn resolve(home: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match home {
        Some(dir) if !dir.as_os_str().is_empty() => Ok(dir),
        _ => bail!(
            "no home given: pass --home <DIR> or set BACKCHANNEL_HOME (create one with \
             `backchannel home init --home <DIR>`)"
        ),
    }
}

/// Runs `task` on a single-threaded Tokio runtime (the store runs scrypt on
/// its blocking pool).
pub fn block_on<T>(task: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the async runtime: {e}"))?
        .block_on(task)
}

/// The lock file in the home: one command at a time works on a home.
pub const LOCK: &str = "home.lock";

/// The home lock this process holds (an exclusive `flock` on [`LOCK`]),
/// from [`open`] until [`release`] or exit.
static HELD: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

/// Takes the home's lock for this process, waiting (and saying so) while
/// another command holds it: a session reads its state when it opens and
/// writes it as it goes, so two commands on one home at once would each
/// overwrite what the other stored.
fn lock(dir: &Path) -> anyhow::Result<()> {
    let mut held = HELD
        .lock()
        .map_err(|_| anyhow!("the home lock is poisoned"))?;
    if held.is_some() {
        return Ok(());
    }
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the home's lock {}", path.display()))?;
    lock_file(&file, dir)
        .with_context(|| format!("cannot lock the home's lock {}", path.display()))?;
    *held = Some(file);
    Ok(())
}

#[cfg(unix)]
fn lock_file(file: &std::fs::File, dir: &Path) -> std::io::Result<()> {
    use rustix::fs::{FlockOperation, flock};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            eprintln!(
                "waiting for another backchannel command using the home {} to finish",
                dir.display()
            );
            Ok(flock(file, FlockOperation::LockExclusive)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Elsewhere: no lock (the home is meant for one command at a time).
#[cfg(not(unix))]
fn lock_file(_: &std::fs::File, _: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Releases the home's lock (a long-running command between rounds, once
/// it has closed the store).
pub fn release() {
    if let Ok(mut held) = HELD.lock() {
        held.take();
    }
}

/// Opens the home's store, holding the home's lock: refuses a missing home
/// before asking for the passphrase, then a passphrase that does not open
/// it.
pub async fn open(
    dir: &Path,
    passphrase: &HomePassphraseArgs,
) -> anyhow::Result<SqliteClientStore> {
    let store = dir.join(STORE);
    if !store.is_file() {
        bail!(
            "no home at {}; run `backchannel home init` first",
            dir.display()
        );
    }
    lock(dir)?;
    let passphrase = passphrase::resolve_home(passphrase)?;
    SqliteClientStore::open(&store, &passphrase, ClientStoreOptions::default())
        .await
        .with_context(|| format!("cannot open the home at {}", dir.display()))
}

/// What `home init` prints.
#[derive(Debug, Serialize)]
struct Created {
    home: PathBuf,
    store: PathBuf,
}

fn init(dir: &Path, args: HomeInitArgs) -> anyhow::Result<()> {
    let passphrase = passphrase::resolve_home(&args.passphrase)?;
    refuse_existing(dir)?;
    create_dir(dir)?;
    let store_path = dir.join(STORE);
    block_on(async {
        let store =
            SqliteClientStore::create(&store_path, &passphrase, ClientStoreOptions::default())
                .await
                .map_err(|e| match e {
                    CreateError::AlreadyExists { .. } => anyhow!(
                        "a home already exists at {}; use it, or pass another --home",
                        dir.display()
                    ),
                    other => anyhow!(other).context(format!(
                        "cannot create the home's store {}",
                        store_path.display()
                    )),
                })?;
        store.close().await;
        Ok(())
    })?;

    let home = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let created = Created {
        store: home.join(STORE),
        home,
    };
    if args.json {
        println!("{}", serde_json::to_string(&created)?);
    } else {
        println!("created a home in {}", created.home.display());
        println!(
            "next: generate a key with `backchannel keys generate --home {} --kind authority`",
            created.home.display()
        );
    }
    Ok(())
}

/// Refuses a directory that already holds a home, or anything else.
pub fn refuse_existing(dir: &Path) -> anyhow::Result<()> {
    if dir.join(STORE).exists() {
        bail!(
            "a home already exists at {}; use it, or pass another --home",
            dir.display()
        );
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} exists and is not empty; pass --home naming a new or empty directory",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => bail!(
            "{} is not a directory; pass --home naming a new or empty directory",
            dir.display()
        ),
        Err(e) => Err(anyhow!("cannot read {}: {e}", dir.display())),
    }
}

/// Creates the directory (and its parents) with mode `0700`, or narrows an
/// existing empty one to it.
pub fn create_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("cannot create the home directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (mode 0700)", dir.display()))?;
    }
    Ok(())
}
