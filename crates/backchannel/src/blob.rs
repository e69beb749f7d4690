//! `backchannel blob put|get`: share a file with a room through the node's
//! blob store, and fetch one by its hash.
//!
//! A blob's address is the plain SHA-256 of its bytes (`docs/api.md`
//! § Endpoints, blobs). The node stores and serves the bytes as uploaded;
//! it is not trusted to serve them back unchanged, so `get` re-hashes
//! everything it is served and refuses (exit 3, the hash named) bytes that
//! do not hash to the address asked for. Nothing is written then.
//!
//! `put` uploads the file (resuming an interrupted upload), then announces
//! it in the room with a talk line, `blob <hash> <size> bytes: <file
//! name>`, so the room's other members learn of it from the record. Files
//! are free text: `put` refuses the record room (formal signed statements
//! only) before anything is uploaded, and `get` ignores an announcement
//! someone made there anyway. Access
//! to a blob follows the rooms that reference it: any device in one of
//! them may fetch it, no one else (the node answers 404 to everyone else,
//! as for an unknown hash).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail, ensure};
use backchannel_client::attachment::{Attachment, BLOB_OVERHEAD, MAX_ATTACHMENT_NAME};
use backchannel_client::net::NetError;
use backchannel_client::seal::Content;
use backchannel_crypto::{Digest, sha256};
use backchannel_node::api::codes;
use clap::{Args, Subcommand};
use rand_core::{OsRng, RngCore};
use serde::Serialize;

use crate::cli::{EXIT_CODES, TalksArgs};
use crate::home;
use crate::messages::Evidence;
use crate::participant::{self, Ctx, refresh};

/// `backchannel blob …`.
#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// Upload a file as a blob referenced by one of your rooms, and
    /// announce it there (a talk line naming its hash, size and file
    /// name). Prints the blob's hash (SHA-256 of the file).
    #[command(after_help = EXIT_CODES)]
    Put(BlobPutArgs),
    /// Download a blob of your rooms by its hash, check that what the node
    /// served hashes to it, and write it to a file.
    #[command(after_help = EXIT_CODES)]
    Get(BlobGetArgs),
}

/// `backchannel blob put`.
#[derive(Debug, Args)]
pub struct BlobPutArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The room that references the blob (its members may fetch it): its
    /// name as the roster declares it, its first words ("caucus",
    /// "caucus united"), or its id (32 hex digits). Not the record room:
    /// it carries formal signed statements only.
    #[arg(long)]
    pub room: String,
    /// The file to upload.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `backchannel blob get`.
#[derive(Debug, Args)]
pub struct BlobGetArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The blob's hash, 64 hex digits (as `blob put` printed it and its
    /// announcement in the room names it).
    #[arg(value_name = "HASH")]
    pub hash: String,
    /// Where to write the blob (must not exist, unless --force).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Runs one `blob` command.
pub fn main(home_dir: Option<PathBuf>, command: BlobCommand) -> anyhow::Result<()> {
    let dir = home::resolve(home_dir)?;
    match command {
        BlobCommand::Put(a) => home::block_on(put(dir, a)),
        BlobCommand::Get(a) => home::block_on(get(dir, a)),
    }
}

/// Parses a blob hash given on the command line.
fn parse_hash(s: &str) -> anyhow::Result<Digest> {
    hex::decode(s)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(Digest)
        .ok_or_else(|| {
            anyhow!(
                "{s:?} is not a blob hash; give its 64 hex digits (as `backchannel blob put` \
                 printed it)"
            )
        })
}

/// A blob call's failure, said for a participant.
fn blob_error(e: NetError, hash: &Digest) -> anyhow::Error {
    match &e {
        NetError::Api { code, .. } if code == codes::NOT_FOUND => anyhow!(
            "no blob {} in these talks for you: no room of yours references it (or there is no \
             such blob); check the hash in the room's announcement",
            hash.to_hex()
        ),
        NetError::Api { code, .. } if code == codes::QUOTA_EXCEEDED => anyhow!(
            "the node refused the blob: it does not fit in what is left of your party's blob \
             quota for these talks; ask the node's operator for a larger quota"
        ),
        NetError::Api { code, message, .. } if code == codes::TOO_LARGE => {
            anyhow!("the node refused the blob as too large: {message}")
        }
        NetError::Served(_) => Evidence(format!("blob {}: {e}", hash.to_hex())).into(),
        _ => anyhow::Error::from(e).context(format!("blob {}", hash.to_hex())),
    }
}

#[derive(Serialize)]
struct Put {
    hash: String,
    size: u64,
    room: String,
    seq: u64,
}

async fn put(dir: PathBuf, a: BlobPutArgs) -> anyhow::Result<()> {
    // The file first: no home, no node, for a file that is not there.
    let meta =
        std::fs::metadata(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    ensure!(meta.is_file(), "{} is not a file", a.file.display());
    ensure!(
        meta.len() > 0,
        "{} is empty: nothing to share",
        a.file.display()
    );
    let ctx = participant::open(&dir, &a.talks).await?;
    let out = put_in(&ctx, &a, meta.len()).await;
    ctx.close().await;
    let out = out?;
    if a.talks.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("{}", out.hash);
        println!(
            "stored {} ({} bytes) as a blob of {}, announced there at seq {} (the node's \
             receipt verified)",
            a.file.display(),
            out.size,
            out.room,
            out.seq
        );
    }
    Ok(())
}

async fn put_in(ctx: &Ctx, a: &BlobPutArgs, len: u64) -> anyhow::Result<Put> {
    // Files are free text: never in the record room (checked again, for
    // every spelling of the room, with the other rules of talk below).
    ensure!(
        !crate::messages::names_record_room(&ctx.record, &a.room),
        crate::messages::RECORD_IS_FORMAL
    );
    let mut s = ctx.session().await?;
    let info = s
        .node()
        .node_info()
        .await
        .context("asking the node for its limits")?;
    ensure!(
        len.saturating_add(BLOB_OVERHEAD as u64) <= info.max_blob,
        "{} is {len} bytes; this node takes files of at most {} bytes (blobs of {}, with \
         {BLOB_OVERHEAD} bytes of encryption overhead)",
        a.file.display(),
        info.max_blob.saturating_sub(BLOB_OVERHEAD as u64),
        info.max_blob
    );
    let view = refresh(ctx, &mut s).await?;
    // The announcement is talk: the same rules as `send`, checked before
    // anything is uploaded.
    let room = crate::messages::talk_room(ctx, &s, &view, &a.room).await?;
    let file = participant::read_bounded(
        &a.file,
        info.max_blob.saturating_sub(BLOB_OVERHEAD as u64),
        "blob",
    )?;
    // Encrypted here under a fresh key; the node stores ciphertext, and the
    // key travels only in the room's MLS group, in the announcement.
    let (mut key, mut nonce) = ([0u8; 32], [0u8; 24]);
    OsRng.fill_bytes(&mut key);
    OsRng.fill_bytes(&mut nonce);
    let (bytes, attachment) = Attachment::seal(ctx.talks(), key, nonce, file_name(&a.file), &file)
        .map_err(|e| anyhow!("{e}"))?;
    let hash = attachment.blob;
    let blob = s
        .node()
        .upload_blob(ctx.talks(), room, &bytes)
        .await
        .map_err(|e| blob_error(e, &hash))?;
    ensure!(
        blob.hash == hash && blob.size == bytes.len() as u64,
        "the node answered for another blob than the one uploaded"
    );
    let seq = participant::post(&mut s, room, Content::Attachment(attachment.to_bytes()))
        .await
        .context(
            "the blob is stored, but announcing it in the room failed; run `backchannel blob \
             put` again to announce it",
        )?;
    Ok(Put {
        hash: hash.to_hex(),
        size: file.len() as u64,
        room: view.room_name(room),
        seq,
    })
}

/// The file's name only, on one line, at most 255 bytes: control
/// characters would let a name forge lines of its own.
fn file_name(file: &Path) -> String {
    let mut name: String = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    while name.len() > MAX_ATTACHMENT_NAME {
        name.pop();
    }
    name
}

#[derive(Serialize)]
struct Got {
    hash: String,
    size: u64,
    out: String,
}

async fn get(dir: PathBuf, a: BlobGetArgs) -> anyhow::Result<()> {
    let hash = parse_hash(&a.hash)?;
    if !a.force && a.out.exists() {
        bail!(
            "{} exists; choose another --out, or pass --force to replace it",
            a.out.display()
        );
    }
    let ctx = participant::open(&dir, &a.talks).await?;
    let bytes = fetch(&ctx, &hash).await;
    ctx.close().await;
    let bytes = bytes?;
    write_out(&a.out, &bytes, a.force)?;
    let out = Got {
        hash: hash.to_hex(),
        size: bytes.len() as u64,
        out: a.out.display().to_string(),
    };
    if a.talks.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "wrote {} bytes to {} (blob {}; its SHA-256 checked)",
            out.size, out.out, out.hash
        );
    }
    Ok(())
}

/// Finds the blob's announcement in the rooms this device reads, downloads
/// the blob and re-hashes it here, whatever the client library checked
/// already (bytes that do not hash to the address asked for are evidence
/// against the node), then decrypts it with the announced key.
async fn fetch(ctx: &Ctx, hash: &Digest) -> anyhow::Result<Vec<u8>> {
    let mut s = ctx.session().await?;
    let view = refresh(ctx, &mut s).await?;
    // Announcements in the record room are refused (free text where only
    // formal statements belong): they count for nothing, here neither.
    let announced = |in_record: bool| {
        view.archive
            .iter()
            .filter(|a| {
                crate::messages::is_record_room(&ctx.record, &view, a.header.header().room)
                    == in_record
            })
            .filter_map(|a| match a.message.as_ref().map(|m| &m.content) {
                Some(Content::Attachment(b)) => Attachment::from_bytes(b).ok(),
                _ => None,
            })
            .find(|a| a.blob == *hash)
    };
    let attachment = match announced(false) {
        Some(a) => a,
        None if announced(true).is_some() => bail!(
            "blob {} was announced in the record room, which carries formal signed statements \
             only: that announcement is refused and not counted; ask its sender to share the \
             file in a caucus or another room you share (`backchannel blob put --room …`)",
            hash.to_hex()
        ),
        None => bail!(
            "no announcement of blob {} in the rooms you read: its key travels only in the \
             room's announcement; check the hash (`backchannel read`)",
            hash.to_hex()
        ),
    };
    let bytes = s
        .node()
        .download_blob(ctx.talks(), hash)
        .await
        .map_err(|e| blob_error(e, hash))?;
    let served = sha256(&bytes);
    if served != *hash {
        return Err(Evidence(format!(
            "blob {}: the node served {} bytes that hash to {}, not to the blob's address; \
             nothing was written (report the node to its operator and the other parties)",
            hash.to_hex(),
            bytes.len(),
            served.to_hex()
        ))
        .into());
    }
    attachment.open(ctx.talks(), &bytes).map_err(|e| {
        Evidence(format!(
            "blob {}: {e}: its announcer's key does not open what it stored (report it to the \
             other parties)",
            hash.to_hex()
        ))
        .into()
    })
}

/// Writes `bytes` to `out`, readable by the owner only: a new file, or
/// (with `force`) replacing an existing one whole — written beside it and
/// renamed over it, so a failure leaves the old file as it was.
fn write_out(out: &Path, bytes: &[u8], force: bool) -> anyhow::Result<()> {
    if !force {
        return participant::write_secret(out, bytes).map_err(|e| {
            if out.exists() {
                anyhow!(
                    "{} exists; choose another --out, or pass --force to replace it",
                    out.display()
                )
            } else {
                e
            }
        });
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = out.with_file_name(format!(".{name}.backchannel-{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    participant::write_secret(&temp, bytes)?;
    std::fs::rename(&temp, out).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        anyhow!("cannot replace {}: {e}", out.display())
    })
}
