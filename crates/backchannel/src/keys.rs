//! `backchannel keys …`: the participant's Ed25519 keys, kept in the home's
//! encrypted store ([`Namespace::Keys`]).
//!
//! A key is named by its kind, its talks (per-talks kinds only) and a label
//! unique within the two. The store has no scans, so next to the keys an
//! index lists them, with their public keys (so listing never opens a
//! secret); a key and the index are written in one atomic `put_many`.
//!
//! # Records
//!
//! In the primitives of `backchannel-codec` (`option` is a presence byte,
//! `text` a `u32` length and UTF-8):
//!
//! ```text
//! name       = kind[1] ‖ option(talks id[16]) ‖ text(label)
//!              kind: 0x01 authority, 0x02 talks-authority, 0x03 identity,
//!              0x04 device (the tags of key files)
//! key record   key   = "backchannel/v1/home/keys/key/" ‖ name
//!              value = 0x01 (version) ‖ name ‖ seed[32]
//! index        key   = "backchannel/v1/home/keys/index"
//!              value = 0x01 (version) ‖ u32 count ‖ count × (name ‖ public key[32]),
//!                      strictly sorted by name
//! ```

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use backchannel_client::store::{ClientStore, ClientStoreError, Namespace, Put};
use backchannel_client_store_sqlite::SqliteClientStore;
use backchannel_codec::{Decode, DecodeError, Encode, Reader, TalksId, Writer};
use backchannel_crypto::{PublicKey, SecretKey, Signer as _};
use rand_core::OsRng;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::cli::{
    HomePassphraseArgs, KeyKindArg, KeysCommand, KeysExportPublicArgs, KeysGenerateArgs,
    KeysListArgs,
};
use crate::home;

/// The store key of the index.
const INDEX_KEY: &[u8] = b"backchannel/v1/home/keys/index";
/// The prefix of a key record's store key.
const KEY_PREFIX: &[u8] = b"backchannel/v1/home/keys/key/";
/// The version byte of key records and the index.
const VERSION: u8 = 1;
/// The longest label, in bytes.
const MAX_LABEL_LEN: usize = 64;
/// The most keys one home holds (bounds what decoding the index allocates).
const MAX_KEYS: usize = 100_000;

/// Runs one `keys` command.
pub fn main(home: Option<PathBuf>, command: KeysCommand) -> anyhow::Result<()> {
    let dir = home::resolve(home)?;
    match command {
        KeysCommand::Generate(args) => generate(&dir, args),
        KeysCommand::List(args) => list(&dir, args),
        KeysCommand::ExportPublic(args) => export_public(&dir, args),
    }
}

impl KeyKindArg {
    fn tag(self) -> u8 {
        match self {
            KeyKindArg::Authority => 0x01,
            KeyKindArg::TalksAuthority => 0x02,
            KeyKindArg::Identity => 0x03,
            KeyKindArg::Device => 0x04,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        [
            KeyKindArg::Authority,
            KeyKindArg::TalksAuthority,
            KeyKindArg::Identity,
            KeyKindArg::Device,
        ]
        .into_iter()
        .find(|k| k.tag() == tag)
    }

    /// The kind as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKindArg::Authority => "authority",
            KeyKindArg::TalksAuthority => "talks-authority",
            KeyKindArg::Identity => "identity",
            KeyKindArg::Device => "device",
        }
    }

    /// The kind with its article, for messages ("an identity key").
    fn with_article(self) -> String {
        match self {
            KeyKindArg::Authority | KeyKindArg::Identity => format!("an {}", self.as_str()),
            KeyKindArg::TalksAuthority | KeyKindArg::Device => format!("a {}", self.as_str()),
        }
    }

    fn is_per_talks(self) -> bool {
        !matches!(self, KeyKindArg::Authority)
    }
}

/// What names a key in the home: kind, talks, label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct KeyName {
    kind: KeyKindArg,
    talks: Option<TalksId>,
    label: String,
}

impl KeyName {
    fn store_key(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(KEY_PREFIX);
        self.encode(&mut w);
        w.into_bytes()
    }
}

impl Encode for KeyName {
    fn encode(&self, w: &mut Writer) {
        w.u8(self.kind.tag());
        w.option(self.talks.as_ref());
        w.text(&self.label);
    }
}

impl Decode for KeyName {
    const MIN_LEN: usize = 1 + 1 + 4;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let tag = r.u8("key kind")?;
        let kind = KeyKindArg::from_tag(tag).ok_or(DecodeError::UnknownValue {
            field: "key kind",
            value: u64::from(tag),
        })?;
        let talks = r.option("talks id")?;
        if kind.is_per_talks() != talks.is_some() {
            return Err(DecodeError::Invalid {
                field: "talks id",
                reason: "present exactly for per-talks kinds",
            });
        }
        let label = r.text("label", MAX_LABEL_LEN)?.to_owned();
        Ok(Self { kind, talks, label })
    }
}

/// One line of the index: a key's name and its public key.
#[derive(Debug, Clone)]
struct IndexEntry {
    name: KeyName,
    public: PublicKey,
}

impl Encode for IndexEntry {
    fn encode(&self, w: &mut Writer) {
        self.name.encode(w);
        self.public.encode(w);
    }
}

impl Decode for IndexEntry {
    const MIN_LEN: usize = KeyName::MIN_LEN + 32;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            name: KeyName::decode(r)?,
            public: PublicKey::decode(r)?,
        })
    }
}

/// The index: every key in the home, sorted by name.
fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(VERSION);
    w.list(entries);
    w.into_bytes()
}

fn decode_index(bytes: &[u8]) -> Result<Vec<IndexEntry>, DecodeError> {
    let mut r = Reader::new(bytes);
    r.version("key index version", VERSION)?;
    let entries: Vec<IndexEntry> = r.list("key index", MAX_KEYS)?;
    r.finish()?;
    backchannel_codec::check_strictly_sorted(&entries, "key index", |e| e.name.clone())?;
    Ok(entries)
}

/// A key record: its name and seed (the value is zeroized when dropped).
fn encode_record(name: &KeyName, key: &SecretKey) -> Zeroizing<Vec<u8>> {
    let mut w = Writer::with_capacity(64 + name.label.len());
    w.u8(VERSION);
    name.encode(&mut w);
    w.raw(key.seed().as_ref());
    Zeroizing::new(w.into_bytes())
}

/// The home's index (empty when no key was ever stored).
async fn read_index(store: &SqliteClientStore) -> anyhow::Result<Vec<IndexEntry>> {
    match store.get(Namespace::Keys, INDEX_KEY).await? {
        None => Ok(Vec::new()),
        Some(bytes) => decode_index(&bytes).map_err(|e| {
            anyhow!(ClientStoreError::Corrupt(format!(
                "the key index does not decode: {e}"
            )))
        }),
    }
}

/// A key as printed (never its secret).
#[derive(Debug, Serialize)]
struct KeyView {
    kind: &'static str,
    talks: Option<String>,
    label: String,
    public_key: String,
    key_id: String,
}

impl From<&IndexEntry> for KeyView {
    fn from(e: &IndexEntry) -> Self {
        Self {
            kind: e.name.kind.as_str(),
            talks: e.name.talks.map(|t| t.to_hex()),
            label: e.name.label.clone(),
            public_key: hex::encode(e.public.as_bytes()),
            key_id: e.public.id().to_hex(),
        }
    }
}

fn parse_talks(hex: Option<&str>) -> anyhow::Result<Option<TalksId>> {
    hex.map(|s| {
        TalksId::from_hex(s).map_err(|_| {
            anyhow!(
                "--talks {s:?} is not a talks id; give its 32 hex digits, as the mediator sent it"
            )
        })
    })
    .transpose()
}

fn check_label(label: &str) -> anyhow::Result<()> {
    if label.is_empty() || label.len() > MAX_LABEL_LEN {
        bail!("--label must be 1 to {MAX_LABEL_LEN} bytes long; choose a shorter name");
    }
    if label.chars().any(char::is_control) {
        bail!("--label {label:?} holds control characters; choose a printable name");
    }
    Ok(())
}

fn generate(dir: &Path, args: KeysGenerateArgs) -> anyhow::Result<()> {
    let talks = parse_talks(args.talks.as_deref())?;
    let kind = args.kind;
    match (kind.is_per_talks(), talks.is_some()) {
        (true, false) => bail!(
            "{} key belongs to one talks; pass --talks <HEX> with the talks id",
            kind.with_article()
        ),
        (false, true) => bail!(
            "{} key belongs to no talks; drop --talks (or choose a per-talks --kind: \
             talks-authority, identity or device)",
            kind.with_article()
        ),
        _ => {}
    }
    check_label(&args.label)?;
    let name = KeyName {
        kind,
        talks,
        label: args.label,
    };

    let (entry, replaced) = home::block_on(async {
        let store = home::open(dir, &args.passphrase).await?;
        let stored = store_new_key(&store, name, args.force).await;
        store.close().await;
        stored
    })?;

    let view = KeyView::from(&entry);
    if replaced {
        eprintln!(
            "replaced the {} key labelled {:?}: its old secret is gone",
            view.kind, view.label
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&view)?);
    } else {
        println!("kind        {}", view.kind);
        println!("talks       {}", view.talks.as_deref().unwrap_or("-"));
        println!("label       {}", view.label);
        println!("public key  {}", view.public_key);
        println!("key id      {}", view.key_id);
    }
    Ok(())
}

/// Generates a key under `name` and stores it with the updated index, in
/// one atomic write. Returns its index entry, and whether it replaced one.
async fn store_new_key(
    store: &SqliteClientStore,
    name: KeyName,
    force: bool,
) -> anyhow::Result<(IndexEntry, bool)> {
    let key = SecretKey::generate(&mut OsRng);
    store_key(store, name, &key, force, Vec::new()).await
}

/// Stores `key` (made elsewhere: a linked device's identity key, a seed
/// from a recovery sheet, a device key replacing a lost one) under `kind`,
/// `talks`, `label`, with the updated index and the writes in `also`, in
/// one atomic write. An existing key under that name is replaced only with
/// `force`.
pub async fn store_given(
    store: &SqliteClientStore,
    kind: KeyKindArg,
    talks: Option<TalksId>,
    label: &str,
    key: &SecretKey,
    force: bool,
    also: Vec<Put>,
) -> anyhow::Result<()> {
    let name = KeyName {
        kind,
        talks,
        label: label.to_owned(),
    };
    store_key(store, name, key, force, also).await.map(|_| ())
}

async fn store_key(
    store: &SqliteClientStore,
    name: KeyName,
    key: &SecretKey,
    force: bool,
    also: Vec<Put>,
) -> anyhow::Result<(IndexEntry, bool)> {
    let mut index = read_index(store).await?;
    let found = index.binary_search_by(|e| e.name.cmp(&name));
    // The same key stored again (a command run again after it stopped
    // half way) is no conflict: only `also` is written.
    if let Ok(i) = found
        && !force
        && index[i].public == key.public_key()
    {
        if !also.is_empty() {
            store.put_many(also).await?;
        }
        return Ok((index[i].clone(), true));
    }
    if found.is_ok() && !force {
        bail!(
            "this home already has {} key labelled {:?}{}; choose another --label, or pass \
             --force to replace it (its secret would be lost)",
            name.kind.with_article(),
            name.label,
            name.talks
                .map(|t| format!(" for talks {t}"))
                .unwrap_or_default()
        );
    }
    let entry = IndexEntry {
        name: name.clone(),
        public: key.public_key(),
    };
    match found {
        Ok(i) => index[i] = entry.clone(),
        Err(i) => index.insert(i, entry.clone()),
    }
    let record = encode_record(&name, key);
    let mut writes = vec![
        Put {
            ns: Namespace::Keys,
            key: name.store_key(),
            // The store zeroizes the values it is given once sealed.
            value: Some(record.to_vec()),
        },
        Put {
            ns: Namespace::Keys,
            key: INDEX_KEY.to_vec(),
            value: Some(encode_index(&index)),
        },
    ];
    writes.extend(also);
    store.put_many(writes).await?;
    Ok((entry, found.is_ok()))
}

/// The secret key named `kind`, `talks`, `label`, if the home has it.
pub async fn load(
    store: &SqliteClientStore,
    kind: KeyKindArg,
    talks: Option<TalksId>,
    label: &str,
) -> anyhow::Result<Option<SecretKey>> {
    let name = KeyName {
        kind,
        talks,
        label: label.to_owned(),
    };
    let Some(bytes) = store.get(Namespace::Keys, &name.store_key()).await? else {
        return Ok(None);
    };
    let bytes = Zeroizing::new(bytes);
    let corrupt = |what: &str| {
        anyhow!(ClientStoreError::Corrupt(format!(
            "the {} key labelled {label:?} {what}",
            kind.as_str()
        )))
    };
    let mut r = Reader::new(&bytes);
    r.version("key record version", VERSION)
        .map_err(|_| corrupt("has an unknown record version"))?;
    let stored = KeyName::decode(&mut r).map_err(|_| corrupt("has a damaged name"))?;
    if stored != name {
        return Err(corrupt("is stored under another name"));
    }
    let seed = Zeroizing::new(
        r.array::<32>("seed")
            .map_err(|_| corrupt("has a damaged seed"))?,
    );
    r.finish().map_err(|_| corrupt("has trailing bytes"))?;
    let key = SecretKey::from_seed(&seed).map_err(|_| corrupt("has an invalid seed"))?;
    Ok(Some(key))
}

/// Deletes every key of `talks` (of the per-talks kinds) from the home,
/// with the index, in one atomic write: for keys made for talks the node
/// then refused, which must not linger as if they were in use.
pub async fn forget_talks(store: &SqliteClientStore, talks: TalksId) -> anyhow::Result<()> {
    let index = read_index(store).await?;
    let (gone, kept): (Vec<IndexEntry>, Vec<IndexEntry>) =
        index.into_iter().partition(|e| e.name.talks == Some(talks));
    if gone.is_empty() {
        return Ok(());
    }
    let mut writes: Vec<Put> = gone
        .iter()
        .map(|e| Put {
            ns: Namespace::Keys,
            key: e.name.store_key(),
            value: None,
        })
        .collect();
    writes.push(Put {
        ns: Namespace::Keys,
        key: INDEX_KEY.to_vec(),
        value: Some(encode_index(&kept)),
    });
    store.put_many(writes).await?;
    Ok(())
}

/// The secret key named `kind`, `talks`, `label`: the stored one, or a new
/// one generated and stored now.
pub async fn load_or_generate(
    store: &SqliteClientStore,
    kind: KeyKindArg,
    talks: Option<TalksId>,
    label: &str,
) -> anyhow::Result<SecretKey> {
    if let Some(key) = load(store, kind, talks, label).await? {
        return Ok(key);
    }
    let name = KeyName {
        kind,
        talks,
        label: label.to_owned(),
    };
    store_new_key(store, name, false).await?;
    load(store, kind, talks, label)
        .await?
        .ok_or_else(|| anyhow!("the key just stored cannot be read back"))
}

/// The index of the home at `dir`, opened and closed for it.
fn read_home_index(dir: &Path, passphrase: &HomePassphraseArgs) -> anyhow::Result<Vec<IndexEntry>> {
    home::block_on(async {
        let store = home::open(dir, passphrase).await?;
        let index = read_index(&store).await;
        store.close().await;
        index
    })
}

fn list(dir: &Path, args: KeysListArgs) -> anyhow::Result<()> {
    let index = read_home_index(dir, &args.passphrase)?;
    let keys: Vec<KeyView> = index.iter().map(KeyView::from).collect();
    if args.json {
        #[derive(Serialize)]
        struct Listing {
            keys: Vec<KeyView>,
        }
        println!("{}", serde_json::to_string(&Listing { keys })?);
        return Ok(());
    }
    if keys.is_empty() {
        println!(
            "no keys in this home; generate one with `backchannel keys generate --kind <KIND>`"
        );
        return Ok(());
    }
    println!(
        "{:<16} {:<32} {:<16} {:<64} key id",
        "kind", "talks", "label", "public key"
    );
    for k in &keys {
        println!(
            "{:<16} {:<32} {:<16} {:<64} {}",
            k.kind,
            k.talks.as_deref().unwrap_or("-"),
            k.label,
            k.public_key,
            k.key_id
        );
    }
    Ok(())
}

fn export_public(dir: &Path, args: KeysExportPublicArgs) -> anyhow::Result<()> {
    let talks = parse_talks(args.talks.as_deref())?;
    let index = read_home_index(dir, &args.passphrase)?;
    let matching: Vec<&IndexEntry> = index
        .iter()
        .filter(|e| e.name.label == args.label)
        .filter(|e| args.kind.is_none_or(|k| e.name.kind == k))
        .filter(|e| talks.is_none() || e.name.talks == talks)
        .collect();
    let entry = match matching.as_slice() {
        [one] => *one,
        [] => bail!(
            "no key labelled {:?}{} in this home; `backchannel keys list` shows the keys",
            args.label,
            if args.kind.is_some() || talks.is_some() {
                " of that kind and talks"
            } else {
                ""
            }
        ),
        several => bail!(
            "{} keys are labelled {:?} ({}); choose one with --kind and --talks",
            several.len(),
            args.label,
            several
                .iter()
                .map(|e| match e.name.talks {
                    Some(t) => format!("{} for talks {t}", e.name.kind.as_str()),
                    None => e.name.kind.as_str().to_owned(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let view = KeyView::from(entry);
    if args.json {
        println!("{}", serde_json::to_string(&view)?);
    } else {
        println!("{}", view.public_key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    // Test code: a panic is the failure report.
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(kind: KeyKindArg, talks: Option<u8>, label: &str) -> IndexEntry {
        IndexEntry {
            name: KeyName {
                kind,
                talks: talks.map(|b| TalksId([b; 16])),
                label: label.into(),
            },
            public: SecretKey::generate(&mut OsRng).public_key(),
        }
    }

    #[test]
    fn the_index_round_trips_and_decodes_strictly() {
        let entries = vec![
            entry(KeyKindArg::Authority, None, "a"),
            entry(KeyKindArg::Device, Some(1), "a"),
            entry(KeyKindArg::Device, Some(1), "b"),
        ];
        let bytes = encode_index(&entries);
        let back = decode_index(&bytes).unwrap();
        assert_eq!(back.len(), 3);
        for (a, b) in entries.iter().zip(&back) {
            assert_eq!(a.name, b.name);
            assert_eq!(a.public, b.public);
        }
        // Out of order, duplicated, or with trailing bytes: refused.
        let mut swapped = entries.clone();
        swapped.swap(0, 1);
        assert!(decode_index(&encode_index(&swapped)).is_err());
        let doubled = vec![entries[0].clone(), entries[0].clone()];
        assert!(decode_index(&encode_index(&doubled)).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode_index(&long).is_err());
        // An authority key with a talks id: refused.
        let odd = vec![entry(KeyKindArg::Authority, Some(1), "a")];
        assert!(decode_index(&encode_index(&odd)).is_err());
    }

    #[test]
    fn names_give_distinct_store_keys() {
        let a = KeyName {
            kind: KeyKindArg::Identity,
            talks: Some(TalksId([7; 16])),
            label: "x".into(),
        };
        let b = KeyName {
            kind: KeyKindArg::Device,
            ..a.clone()
        };
        assert_ne!(a.store_key(), b.store_key());
        assert_ne!(a.store_key(), INDEX_KEY);
        assert!(a.store_key().starts_with(KEY_PREFIX));
    }
}
