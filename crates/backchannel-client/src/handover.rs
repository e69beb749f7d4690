//! Handover: a member gives a successor (another member of its party, or
//! its own new device) the history of rooms it holds, which MLS never gives
//! a newcomer.
//!
//! ```text
//! bundle  = version:u8 (=1) talks:[16] from:[16] to:[16] until:u64
//!           checkpoint_size:u64 checkpoint_root:[32] rooms:list<room>
//! room    = room:[16] share:u8 items:list<item>
//!           share 1 shared | 2 withheld: private notes (items empty)
//! item    = seq:u64 what:u8 ...
//!           what 1 opened: app:bytes          (the application message, seal.rs)
//!           what 2 not held: why:u8           1 the sharer could not read it either
//!                                             2 its body was purged before the sharer read it
//! bundle id = SHA-256("backchannel/v1/handover-bundle" ‖ bundle)
//! ```
//!
//! Rooms are sorted by id, items by seq, each strictly; every item of a
//! shared room names a seq below `until`. The bundle must account for every
//! application envelope of each shared room below `until`: the successor
//! checks each opened item against the commitment in the header logged at
//! its seq (a header it verified itself, signed by the sender's device), so
//! a bundle cannot forge, reorder or silently omit anything, and handed-over
//! history is exactly as trustworthy as live history ([`verify`]).
//!
//! The bundle travels sealed to the successor's devices in application
//! messages of one room both sit in ([`Content::Handover`], one part per
//! envelope, each at most [`MAX_PART_BYTES`] of ciphertext):
//!
//! ```text
//! part       = version:u8 (=1) bundle:[32] index:u32 count:u32
//!              recipients:list<recipient> ciphertext:bytes
//! recipient  = device:[32] (KeyId) sealed_key:[80]
//! sealed_key = HPKE(device's X25519 key, info = "backchannel/v1/handover-key" ‖ talks ‖ bundle,
//!                   aad = device, key K)
//! ciphertext = ChaCha20-Poly1305(K, nonce = 0^8 ‖ index:u32,
//!                   aad = "backchannel/v1/handover-part" ‖ talks ‖ bundle ‖ index ‖ count, chunk)
//! ```
//!
//! The other members of that room see that a handover of some size took
//! place, never its content. The sharer then posts a `history-shared`
//! statement to the record room naming the successor, the rooms, `until`
//! and the bundle id, so every party sees who shared which range.

use std::collections::{BTreeMap, BTreeSet};

use backchannel_codec::{DecodeError, PrincipalId, Reader, RoomId, TalksId, Writer};
use backchannel_crypto::{Context, Digest, KeyId, PublicKey, SecretKey, Signer as _};
use backchannel_statement::{AccessList, CheckpointRef, Kind};
use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use thiserror::Error;

use crate::seal::{AppMessage, Content};
use crate::session::{Archived, Session, SessionError};
use crate::store::{ClientStore, Namespace, Put};

/// The bundle format version.
pub const BUNDLE_VERSION: u8 = 1;

/// The part format version.
pub const PART_VERSION: u8 = 1;

/// The context of bundle ids.
pub const BUNDLE_CONTEXT: Context = Context::new("backchannel/v1/handover-bundle");

/// The HPKE `info` prefix of a bundle's key sealed to one device.
pub const KEY_INFO: &[u8] = b"backchannel/v1/handover-key";

/// The AEAD associated-data prefix of a bundle's parts.
pub const PART_AAD: &[u8] = b"backchannel/v1/handover-part";

/// The largest bundle (256 MiB): a talks' whole file for one member.
pub const MAX_BUNDLE_BYTES: usize = 256 << 20;

/// The most ciphertext one part carries, so that a part fits an envelope
/// with room to spare.
pub const MAX_PART_BYTES: usize = 512 * 1024;

/// The most parts a bundle has.
pub const MAX_PARTS: usize = MAX_BUNDLE_BYTES.div_ceil(MAX_PART_BYTES - 16);

/// The most devices one bundle is sealed to.
pub const MAX_RECIPIENTS: usize = 16;

/// The most rooms one bundle covers (the roster's limit).
pub const MAX_ROOMS: usize = 256;

/// The most items one room of a bundle holds.
pub const MAX_ITEMS: usize = 1 << 22;

/// The length of a sealed key: the KEM output, the 32-byte key, the tag.
const SEALED_KEY_LEN: usize = 32 + 32 + 16;

/// How the sharer holds one log position of a shared room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// What the sharer read there.
    Opened(AppMessage),
    /// What the sharer does not hold, and why.
    NotHeld(NotHeld),
}

/// Why a sharer does not hold a log position's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotHeld {
    /// The sharer could not read it either (it was sent before the sharer
    /// joined the room, or was unreadable there).
    Unread = 1,
    /// Its body was purged before the sharer read it.
    Purged = 2,
}

impl NotHeld {
    /// In words, for views.
    pub fn describe(self) -> &'static str {
        match self {
            NotHeld::Unread => "the member who handed it over could not read it either",
            NotHeld::Purged => "its body was purged before the member who handed it over read it",
        }
    }
}

/// One room of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Share {
    /// Its application envelopes below `until`, by seq.
    Shared(Vec<(u64, Item)>),
    /// Private notes: never handed over.
    WithheldPrivateNotes,
}

/// The history a member hands over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The talks.
    pub talks: TalksId,
    /// Who hands it over.
    pub from: PrincipalId,
    /// To whom.
    pub to: PrincipalId,
    /// It covers seqs below this.
    pub until: u64,
    /// The latest checkpoint the sharer verified.
    pub checkpoint: CheckpointRef,
    /// The rooms, by id.
    pub rooms: Vec<(RoomId, Share)>,
}

/// Why a bundle or a part is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandoverError {
    /// The bytes do not decode (this includes items out of order).
    #[error("the handover bundle is malformed: {0}")]
    Malformed(#[from] DecodeError),
    /// A part does not open here, or the parts do not make the bundle
    /// they name.
    #[error("the handover does not open: {0}")]
    Seal(String),
    /// The bundle is for other talks, another member, or another range.
    #[error("the handover bundle is not for this: {0}")]
    NotForUs(String),
    /// An item does not match the log: evidence against the sharer.
    #[error("the handover bundle does not match the log: {0}")]
    Forged(String),
    /// The bundle leaves out an envelope of a room it shares.
    #[error("the handover bundle leaves out {0}")]
    Omits(String),
    /// The bundle's checkpoint is not on this device's log: a fork.
    #[error("the handover bundle names a checkpoint this device's log contradicts: {0}")]
    Fork(String),
}

impl Bundle {
    /// The canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(BUNDLE_VERSION);
        w.raw(&self.talks.0);
        w.raw(&self.from.0);
        w.raw(&self.to.0);
        w.u64(self.until);
        w.u64(self.checkpoint.size);
        w.raw(&self.checkpoint.root.0);
        w.len(self.rooms.len());
        for (room, share) in &self.rooms {
            w.raw(&room.0);
            match share {
                Share::Shared(items) => {
                    w.u8(1);
                    w.len(items.len());
                    for (seq, item) in items {
                        w.u64(*seq);
                        match item {
                            Item::Opened(m) => {
                                w.u8(1);
                                w.bytes(&m.to_bytes());
                            }
                            Item::NotHeld(why) => {
                                w.u8(2);
                                w.u8(*why as u8);
                            }
                        }
                    }
                }
                Share::WithheldPrivateNotes => {
                    w.u8(2);
                    w.len(0);
                }
            }
        }
        w.into_bytes()
    }

    /// Parses the canonical bytes: rooms strictly by id, items strictly by
    /// seq and below `until`, a withheld room without items.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let invalid = |field, reason| DecodeError::Invalid { field, reason };
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(DecodeError::TooLong {
                field: "handover bundle",
                len: bytes.len() as u64,
                max: MAX_BUNDLE_BYTES as u64,
            });
        }
        let mut r = Reader::new(bytes);
        r.version("handover bundle version", BUNDLE_VERSION)?;
        let talks = TalksId(r.array("talks")?);
        let from = PrincipalId(r.array("from")?);
        let to = PrincipalId(r.array("to")?);
        let until = r.u64("until")?;
        let checkpoint = CheckpointRef {
            size: r.u64("checkpoint size")?,
            root: Digest(r.array("checkpoint root")?),
        };
        let n = r.len("rooms", MAX_ROOMS, 16 + 1 + 4)?;
        let mut rooms: Vec<(RoomId, Share)> = Vec::with_capacity(n);
        for _ in 0..n {
            let room = RoomId(r.array("room")?);
            if rooms.last().is_some_and(|(last, _)| last.0 >= room.0) {
                return Err(invalid("rooms", "rooms must be sorted and unique"));
            }
            let share = r.u8("share")?;
            let count = r.len("items", MAX_ITEMS, 8 + 1 + 1)?;
            let share = match share {
                1 => {
                    let mut items: Vec<(u64, Item)> = Vec::with_capacity(count);
                    for _ in 0..count {
                        let seq = r.u64("item seq")?;
                        if items.last().is_some_and(|(last, _)| *last >= seq) {
                            return Err(invalid("items", "items must be sorted by seq and unique"));
                        }
                        if seq >= until {
                            return Err(invalid("items", "an item at or past the bundle's end"));
                        }
                        let item = match r.u8("item kind")? {
                            1 => Item::Opened(AppMessage::from_bytes(
                                r.bytes("application message", crate::seal::MAX_CONTENT + 64)?,
                            )?),
                            2 => Item::NotHeld(match r.u8("not held")? {
                                1 => NotHeld::Unread,
                                2 => NotHeld::Purged,
                                v => {
                                    return Err(DecodeError::UnknownValue {
                                        field: "not held",
                                        value: u64::from(v),
                                    });
                                }
                            }),
                            v => {
                                return Err(DecodeError::UnknownValue {
                                    field: "item kind",
                                    value: u64::from(v),
                                });
                            }
                        };
                        items.push((seq, item));
                    }
                    Share::Shared(items)
                }
                2 if count == 0 => Share::WithheldPrivateNotes,
                2 => return Err(invalid("items", "a withheld room carries no items")),
                v => {
                    return Err(DecodeError::UnknownValue {
                        field: "share",
                        value: u64::from(v),
                    });
                }
            };
            rooms.push((room, share));
        }
        r.finish()?;
        Ok(Self {
            talks,
            from,
            to,
            until,
            checkpoint,
            rooms,
        })
    }

    /// The rooms it shares (not those it withholds), by id.
    pub fn shared_rooms(&self) -> Vec<RoomId> {
        self.rooms
            .iter()
            .filter(|(_, s)| matches!(s, Share::Shared(_)))
            .map(|(r, _)| *r)
            .collect()
    }
}

/// A bundle's id: what the `history-shared` statement names.
pub fn bundle_id(bytes: &[u8]) -> Digest {
    Digest::with_context(BUNDLE_CONTEXT, &[bytes])
}

/// What a handover covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The talks.
    pub talks: TalksId,
    /// Who hands it over.
    pub from: PrincipalId,
    /// To whom.
    pub to: PrincipalId,
    /// It covers seqs below this.
    pub until: u64,
    /// The latest checkpoint the sharer verified.
    pub checkpoint: CheckpointRef,
    /// The rooms.
    pub rooms: BTreeSet<RoomId>,
    /// Those of `rooms` that are private notes: withheld.
    pub private_notes: BTreeSet<RoomId>,
}

/// Builds the bundle of `scope` from the sharer's archive (every envelope
/// it archived, in seq order).
pub fn build(archive: &[Archived], scope: &Scope) -> Bundle {
    let until = scope.until;
    let mut by_room: BTreeMap<RoomId, Share> = scope
        .rooms
        .iter()
        .map(|r| {
            let share = if scope.private_notes.contains(r) {
                Share::WithheldPrivateNotes
            } else {
                Share::Shared(Vec::new())
            };
            (*r, share)
        })
        .collect();
    for a in archive.iter().filter(|a| a.seq < until) {
        let h = a.header.header();
        if h.kind != Kind::MlsApp {
            continue;
        }
        let Some(Share::Shared(items)) = by_room.get_mut(&h.room) else {
            continue;
        };
        let item = match (&a.message, &a.unreadable) {
            (Some(m), _) => Item::Opened(m.clone()),
            (None, Some(_)) => Item::NotHeld(NotHeld::Unread),
            (None, None) => Item::NotHeld(NotHeld::Purged),
        };
        items.push((a.seq, item));
    }
    Bundle {
        talks: scope.talks,
        from: scope.from,
        to: scope.to,
        until,
        checkpoint: scope.checkpoint,
        rooms: by_room.into_iter().collect(),
    }
}

/// What a verified bundle gives this device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Envelopes this device could not read, now opened: (seq, message).
    pub opens: Vec<(u64, AppMessage)>,
    /// Envelopes this device could not read that the sharer does not hold
    /// either: (seq, why).
    pub not_held: Vec<(u64, NotHeld)>,
    /// Rooms withheld, with why.
    pub withheld: Vec<(RoomId, &'static str)>,
    /// Rooms this device holds no envelope of below `until` (it is not in
    /// them): nothing there can be checked, so nothing is opened.
    pub unverifiable: Vec<RoomId>,
    /// Items this device had read itself (checked, nothing to open).
    pub already_read: usize,
    /// Items naming a seq this device did not archive (it was seated in
    /// the room later, or the node withheld the envelope): not checked,
    /// nothing opened.
    pub unchecked: usize,
}

/// What a device may open with a handover: an application envelope it
/// archived but could not read because it was not in the room then.
pub(crate) fn openable(a: &Archived) -> bool {
    a.message.is_none()
        && a.unreadable
            .as_deref()
            .is_some_and(|u| u == crate::rooms::BEFORE_JOIN || u.starts_with(NOT_HANDED_OVER))
}

/// Verifies `bundle` against this device's own archive (every envelope it
/// archived, its headers verified on receipt) and its verified roots:
/// - it is for these talks, for `me`, and its checkpoint does not
///   contradict this device's log;
/// - every opened item names an application envelope of its room, and
///   opens the commitment of the header logged there (an envelope this
///   device read must hold the same message);
/// - every application envelope of a shared room below `until` is
///   accounted for, opened or not held.
///
/// Only envelopes whose sender and header signature this device checked
/// are opened; one archived without a placed sender
/// ([`crate::session::UNPLACED`]) waits until a statement the bundle opened
/// places it (the session verifies again, [`Session::apply_handover`]).
pub fn verify(
    bundle: &Bundle,
    archive: &[Archived],
    talks: TalksId,
    me: PrincipalId,
    follower: &crate::follow::Follower,
) -> Result<Verified, HandoverError> {
    if bundle.talks != talks {
        return Err(HandoverError::NotForUs("it is for other talks".into()));
    }
    if bundle.to != me {
        return Err(HandoverError::NotForUs(format!(
            "it is for member {}",
            bundle.to.to_hex()
        )));
    }
    if let crate::follow::Reference::Differs { size, .. } =
        follower.compare_reference(bundle.checkpoint.size, &bundle.checkpoint.root)
    {
        return Err(HandoverError::Fork(format!(
            "its root at size {size} is not this device's"
        )));
    }
    let by_seq: BTreeMap<u64, &Archived> = archive.iter().map(|a| (a.seq, a)).collect();
    // A commitment logged twice is a replayed message (salts are fresh):
    // a handover never opens it under the second sender's name.
    let mut logged: BTreeMap<[u8; 32], u32> = BTreeMap::new();
    for a in archive {
        if a.header.header().kind == Kind::MlsApp {
            *logged.entry(a.header.header().commitment.0).or_default() += 1;
        }
    }
    let mut out = Verified::default();
    for (room, share) in &bundle.rooms {
        let items = match share {
            Share::Shared(items) => items,
            Share::WithheldPrivateNotes => {
                out.withheld
                    .push((*room, "private notes are never handed over"));
                continue;
            }
        };
        let ours: Vec<&Archived> = archive
            .iter()
            .filter(|a| {
                a.seq < bundle.until
                    && a.header.header().room == *room
                    && a.header.header().kind == Kind::MlsApp
            })
            .collect();
        if ours.is_empty() && !items.is_empty() {
            out.unverifiable.push(*room);
            continue;
        }
        let mut named = BTreeSet::new();
        for (seq, item) in items {
            // A seq this device did not archive (a room it was seated in
            // late, or an envelope the node withheld from it) cannot be
            // checked here: nothing is opened from it.
            let Some(a) = by_seq.get(seq) else {
                out.unchecked += 1;
                continue;
            };
            let h = a.header.header();
            if h.room != *room || h.kind != Kind::MlsApp {
                return Err(HandoverError::Forged(format!(
                    "it names seq {seq} as a message of room {}, which it is not",
                    room.to_hex()
                )));
            }
            named.insert(*seq);
            match item {
                Item::Opened(m) => {
                    if m.commitment() != h.commitment {
                        return Err(HandoverError::Forged(format!(
                            "what it gives for seq {seq} does not open the commitment logged there"
                        )));
                    }
                    match &a.message {
                        Some(read) if read != m => {
                            return Err(HandoverError::Forged(format!(
                                "what it gives for seq {seq} is not what this device read there"
                            )));
                        }
                        Some(_) => out.already_read += 1,
                        None if openable(a) && logged.get(&h.commitment.0) == Some(&1) => {
                            out.opens.push((*seq, m.clone()));
                        }
                        None => {}
                    }
                }
                Item::NotHeld(why) => {
                    if openable(a) {
                        out.not_held.push((*seq, *why));
                    }
                }
            }
        }
        let left_out: Vec<u64> = ours
            .iter()
            .map(|a| a.seq)
            .filter(|s| !named.contains(s))
            .collect();
        if let Some(first) = left_out.first() {
            return Err(HandoverError::Omits(format!(
                "{} message(s) of room {} below seq {}, the first at seq {first}",
                left_out.len(),
                room.to_hex(),
                bundle.until
            )));
        }
    }
    Ok(out)
}

/// One part of a sealed bundle, as carried by [`Content::Handover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The bundle's id.
    pub bundle: Digest,
    /// This part's index, from 0.
    pub index: u32,
    /// How many parts the bundle has.
    pub count: u32,
    /// The devices it is sealed to, each with the bundle key sealed to it.
    pub recipients: Vec<(KeyId, [u8; SEALED_KEY_LEN])>,
    /// This part's ciphertext.
    pub ciphertext: Vec<u8>,
}

impl Part {
    /// The canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(PART_VERSION);
        w.raw(&self.bundle.0);
        w.u32(self.index);
        w.u32(self.count);
        w.len(self.recipients.len());
        for (device, sealed) in &self.recipients {
            w.raw(&device.0.0);
            w.raw(sealed);
        }
        w.bytes(&self.ciphertext);
        w.into_bytes()
    }

    /// Parses the canonical bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let invalid = |field, reason| DecodeError::Invalid { field, reason };
        let mut r = Reader::new(bytes);
        r.version("handover part version", PART_VERSION)?;
        let bundle = Digest(r.array("bundle")?);
        let index = r.u32("part index")?;
        let count = r.u32("part count")?;
        if count == 0 || count as usize > MAX_PARTS || index >= count {
            return Err(invalid(
                "part index",
                "not below a part count of 1 to MAX_PARTS",
            ));
        }
        let n = r.len("recipients", MAX_RECIPIENTS, 32 + SEALED_KEY_LEN)?;
        if n == 0 {
            return Err(invalid("recipients", "a part sealed to no one"));
        }
        let mut recipients: Vec<(KeyId, [u8; SEALED_KEY_LEN])> = Vec::with_capacity(n);
        for _ in 0..n {
            let device = KeyId(Digest(r.array("recipient")?));
            if recipients
                .last()
                .is_some_and(|(last, _)| last.0.0 >= device.0.0)
            {
                return Err(invalid(
                    "recipients",
                    "recipients must be sorted and unique",
                ));
            }
            recipients.push((device, r.array("sealed key")?));
        }
        let ciphertext = r.bytes("part ciphertext", MAX_PART_BYTES)?.to_vec();
        if ciphertext.len() < 16 {
            return Err(invalid("part ciphertext", "shorter than its tag"));
        }
        r.finish()?;
        Ok(Self {
            bundle,
            index,
            count,
            recipients,
            ciphertext,
        })
    }
}

fn key_info(talks: TalksId, bundle: &Digest) -> Vec<u8> {
    [KEY_INFO, &talks.0, &bundle.0].concat()
}

fn part_aad(talks: TalksId, bundle: &Digest, index: u32, count: u32) -> Vec<u8> {
    [
        PART_AAD,
        &talks.0,
        &bundle.0,
        &index.to_be_bytes(),
        &count.to_be_bytes(),
    ]
    .concat()
}

fn nonce(index: u32) -> chacha20poly1305::Nonce {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&index.to_be_bytes());
    n.into()
}

/// Seals the bundle's bytes to `devices` under the fresh key `key`, as
/// parts of at most [`MAX_PART_BYTES`] of ciphertext each.
pub fn seal(
    talks: TalksId,
    bytes: &[u8],
    devices: &[PublicKey],
    key: &[u8; 32],
) -> Result<Vec<Part>, HandoverError> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(HandoverError::Seal(format!(
            "the bundle is {} bytes, more than the limit of {MAX_BUNDLE_BYTES}",
            bytes.len()
        )));
    }
    if devices.is_empty() || devices.len() > MAX_RECIPIENTS {
        return Err(HandoverError::Seal(format!(
            "a bundle is sealed to 1 to {MAX_RECIPIENTS} devices, not {}",
            devices.len()
        )));
    }
    let bundle = bundle_id(bytes);
    let info = key_info(talks, &bundle);
    let mut recipients = Vec::with_capacity(devices.len());
    for d in devices {
        let id = d.id();
        let sealed = backchannel_mls::hpke_seal(&d.to_x25519(), &info, &id.0.0, key)
            .map_err(|e| HandoverError::Seal(e.to_string()))?;
        let sealed: [u8; SEALED_KEY_LEN] = sealed
            .try_into()
            .map_err(|_| HandoverError::Seal("a sealed key of another length".into()))?;
        recipients.push((id, sealed));
    }
    recipients.sort_by_key(|r| r.0.0.0);
    recipients.dedup_by(|a, b| a.0 == b.0);
    let cipher = ChaCha20Poly1305::new(key.into());
    let chunk = MAX_PART_BYTES - 16;
    let chunks: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[][..]]
    } else {
        bytes.chunks(chunk).collect()
    };
    let count =
        u32::try_from(chunks.len()).map_err(|_| HandoverError::Seal("too many parts".into()))?;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let index =
                u32::try_from(i).map_err(|_| HandoverError::Seal("too many parts".into()))?;
            let aad = part_aad(talks, &bundle, index, count);
            let ciphertext = cipher
                .encrypt(&nonce(index), Payload { msg: c, aad: &aad })
                .map_err(|_| HandoverError::Seal("encryption failed".into()))?;
            Ok(Part {
                bundle,
                index,
                count,
                recipients: recipients.clone(),
                ciphertext,
            })
        })
        .collect()
}

/// Whether `part` is sealed to `device`.
pub fn is_for(part: &Part, device: &KeyId) -> bool {
    part.recipients.iter().any(|(d, _)| d == device)
}

/// Opens a complete set of parts (any order, one per index) with this
/// device's key and returns the bundle's bytes, checked against the id the
/// parts name.
pub fn open(talks: TalksId, parts: &[Part], device: &SecretKey) -> Result<Vec<u8>, HandoverError> {
    let first = parts
        .first()
        .ok_or_else(|| HandoverError::Seal("no parts".into()))?;
    let (bundle, count) = (first.bundle, first.count);
    let mut by_index: BTreeMap<u32, &Part> = BTreeMap::new();
    for p in parts {
        if p.bundle != bundle || p.count != count {
            return Err(HandoverError::Seal("parts of different bundles".into()));
        }
        by_index.insert(p.index, p);
    }
    if by_index.len() != count as usize {
        return Err(HandoverError::Seal(format!(
            "{} of {count} parts",
            by_index.len()
        )));
    }
    let me = device.public_key().id();
    let sealed = first
        .recipients
        .iter()
        .find(|(d, _)| *d == me)
        .map(|(_, s)| s)
        .ok_or_else(|| HandoverError::NotForUs("it is not sealed to this device".into()))?;
    let key = zeroize::Zeroizing::new(
        backchannel_mls::hpke_open_x25519(
            &device.x25519_secret(),
            &key_info(talks, &bundle),
            &me.0.0,
            sealed,
        )
        .map_err(|e| HandoverError::Seal(format!("the bundle key: {e}")))?,
    );
    let key: [u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| HandoverError::Seal("a bundle key of another length".into()))?;
    let cipher = ChaCha20Poly1305::new(&key.into());
    let mut bytes = Vec::new();
    for (index, p) in by_index {
        let aad = part_aad(talks, &bundle, index, count);
        let plain = cipher
            .decrypt(
                &nonce(index),
                Payload {
                    msg: &p.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| HandoverError::Seal(format!("part {index} was altered")))?;
        if bytes.len() + plain.len() > MAX_BUNDLE_BYTES {
            return Err(HandoverError::Seal("the bundle is too large".into()));
        }
        bytes.extend_from_slice(&plain);
    }
    if bundle_id(&bytes) != bundle {
        return Err(HandoverError::Seal(
            "the parts do not make the bundle they name".into(),
        ));
    }
    Ok(bytes)
}

/// The content of one part's envelope.
pub fn content(part: &Part) -> Content {
    Content::Handover(part.to_bytes())
}

/// The reason an envelope carries once a handover accounted for it without
/// its content (followed by [`NotHeld::describe`]). A later handover from
/// someone who holds it may still open it.
pub const NOT_HANDED_OVER: &str = "not in the handover this device received: ";

/// The longest reason a handover record keeps (this crate's sentences are
/// far shorter; a longer one is cut, so a record always decodes).
pub const MAX_REASON: usize = 4096;

/// The most handover records a session keeps.
pub const MAX_RECORDS: usize = 1024;

/// The most bundles a session waits for at once (parts arrived, not yet
/// complete or announced); parts of further bundles are not waited for.
pub const MAX_PENDING: usize = 256;

/// What became of one handover this device received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The bundle's id.
    pub bundle: Digest,
    /// The seq of its last part: where it was complete.
    pub at: u64,
    /// The device that sent it.
    pub sender: KeyId,
    /// The member the bundle says hands it over (checked against the
    /// sending device's member).
    pub from: PrincipalId,
    /// It covers seqs below this.
    pub until: u64,
    /// The rooms it shares, by id.
    pub rooms: Vec<RoomId>,
    /// Accepted, with what it opened, or refused, with why.
    pub outcome: Outcome,
}

/// The verdict on a handover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Verified against the log and applied.
    Applied {
        /// Envelopes it opened.
        opened: u64,
        /// Envelopes it accounts for without content.
        not_held: u64,
        /// Rooms it withholds, with why.
        withheld: Vec<(RoomId, String)>,
        /// Rooms this device cannot check it in (it is not in them).
        unverifiable: Vec<RoomId>,
    },
    /// Refused: nothing of it was used.
    Refused(String),
}

impl Received {
    fn encode(&self, w: &mut Writer) {
        w.raw(&self.bundle.0);
        w.u64(self.at);
        w.raw(&self.sender.0.0);
        w.raw(&self.from.0);
        w.u64(self.until);
        w.len(self.rooms.len());
        for r in &self.rooms {
            w.raw(&r.0);
        }
        match &self.outcome {
            Outcome::Applied {
                opened,
                not_held,
                withheld,
                unverifiable,
            } => {
                w.u8(1);
                w.u64(*opened);
                w.u64(*not_held);
                w.len(withheld.len());
                for (r, why) in withheld {
                    w.raw(&r.0);
                    w.text(truncated(why));
                }
                w.len(unverifiable.len());
                for r in unverifiable {
                    w.raw(&r.0);
                }
            }
            Outcome::Refused(why) => {
                w.u8(2);
                w.text(truncated(why));
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let bundle = Digest(r.array("bundle")?);
        let at = r.u64("at")?;
        let sender = KeyId(Digest(r.array("sender")?));
        let from = PrincipalId(r.array("from")?);
        let until = r.u64("until")?;
        let n = r.len("rooms", MAX_ROOMS, 16)?;
        let mut rooms = Vec::with_capacity(n);
        for _ in 0..n {
            rooms.push(RoomId(r.array("room")?));
        }
        let outcome = match r.u8("outcome")? {
            1 => {
                let opened = r.u64("opened")?;
                let not_held = r.u64("not held")?;
                let n = r.len("withheld", MAX_ROOMS, 16 + 4)?;
                let mut withheld = Vec::with_capacity(n);
                for _ in 0..n {
                    withheld.push((
                        RoomId(r.array("room")?),
                        r.text("why", MAX_REASON)?.to_owned(),
                    ));
                }
                let n = r.len("unverifiable", MAX_ROOMS, 16)?;
                let mut unverifiable = Vec::with_capacity(n);
                for _ in 0..n {
                    unverifiable.push(RoomId(r.array("room")?));
                }
                Outcome::Applied {
                    opened,
                    not_held,
                    withheld,
                    unverifiable,
                }
            }
            2 => Outcome::Refused(r.text("why", MAX_REASON)?.to_owned()),
            v => {
                return Err(DecodeError::UnknownValue {
                    field: "outcome",
                    value: u64::from(v),
                });
            }
        };
        Ok(Self {
            bundle,
            at,
            sender,
            from,
            until,
            rooms,
            outcome,
        })
    }
}

/// A reason cut to what [`Received`] decodes ([`MAX_REASON`]), on a
/// character boundary.
fn truncated(why: &str) -> &str {
    let mut end = why.len().min(MAX_REASON);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    &why[..end]
}

fn encode_records(records: &[Received]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(1);
    w.len(records.len());
    for r in records {
        r.encode(&mut w);
    }
    w.into_bytes()
}

fn decode_records(bytes: &[u8]) -> Result<Vec<Received>, DecodeError> {
    let mut r = Reader::new(bytes);
    r.version("handover records version", 1)?;
    let n = r.len("handover records", MAX_RECORDS, 32)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Received::decode(&mut r)?);
    }
    r.finish()?;
    Ok(out)
}

/// What [`Session::hand_over`] sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOver {
    /// The bundle's id (what the `history-shared` statement names).
    pub bundle: Digest,
    /// Its size in bytes.
    pub bytes: usize,
    /// The seqs of its parts.
    pub parts: Vec<u64>,
    /// The bundle itself.
    pub contents: Bundle,
}

impl Bundle {
    /// How many envelopes it opens and how many it accounts for without
    /// content.
    pub fn counts(&self) -> (usize, usize) {
        let mut opened = 0;
        let mut not_held = 0;
        for (_, share) in &self.rooms {
            if let Share::Shared(items) = share {
                for (_, item) in items {
                    match item {
                        Item::Opened(_) => opened += 1,
                        Item::NotHeld(_) => not_held += 1,
                    }
                }
            }
        }
        (opened, not_held)
    }
}

impl<S: ClientStore> Session<S> {
    fn records_key(&self) -> Vec<u8> {
        crate::session::key(self.talks, "handovers")
    }

    fn pending_key(&self) -> Vec<u8> {
        crate::session::key(self.talks, "handovers-pending")
    }

    /// The bundles a part of which was archived here and that are not yet
    /// applied or refused (written with the archive page that brought the
    /// part).
    pub(crate) async fn pending_handovers(&self) -> Result<BTreeSet<Digest>, SessionError> {
        let Some(b) = self.store.get(Namespace::Mls, &self.pending_key()).await? else {
            return Ok(BTreeSet::new());
        };
        if b.len() % 32 != 0 {
            return Err(SessionError::Stored("the pending handovers".into()));
        }
        Ok(b.chunks_exact(32)
            .filter_map(|c| c.try_into().ok().map(Digest))
            .collect())
    }

    /// The write that keeps `pending` as the pending handovers.
    pub(crate) fn pending_handovers_put(&self, pending: &BTreeSet<Digest>) -> Put {
        Put {
            ns: Namespace::Mls,
            key: self.pending_key(),
            value: Some(pending.iter().flat_map(|d| d.0).collect()),
        }
    }

    /// Every handover this device received, in the order they completed.
    pub async fn handovers(&self) -> Result<Vec<Received>, SessionError> {
        match self.store.get(Namespace::Mls, &self.records_key()).await? {
            Some(b) => decode_records(&b)
                .map_err(|e| SessionError::Stored(format!("the handover records: {e}"))),
            None => Ok(Vec::new()),
        }
    }

    /// Hands the history of `scope` over: builds the bundle from this
    /// device's archive, seals it to `devices` (the successor's) and posts
    /// its parts to `room`, a room this device and every one of `devices`
    /// sit in. The caller posts the `history-shared` statement naming the
    /// returned bundle id.
    pub async fn hand_over(
        &mut self,
        list: &AccessList,
        scope: &Scope,
        devices: &[PublicKey],
        room: RoomId,
    ) -> Result<HandedOver, SessionError> {
        if scope.until > self.next {
            return Err(SessionError::Usage(format!(
                "this device has archived the log up to seq {} only, not {}: receive first",
                self.next, scope.until
            )));
        }
        let in_group = self.room_members(room);
        for d in devices {
            if !list.seats_device(&d.id(), room) {
                return Err(SessionError::Usage(format!(
                    "device {} is not seated in the room the handover travels through",
                    d.id().to_hex()
                )));
            }
            if !in_group.contains(d) {
                return Err(SessionError::Usage(format!(
                    "device {} is seated in the room the handover travels through but not yet \
                     in its MLS group, so it could not read the handover: once it has run a \
                     command (its key packages reach the node), run any command here (this \
                     device adds it), then hand over again",
                    d.id().to_hex()
                )));
            }
        }
        let archive = self.archive().await?;
        let bundle = build(&archive, scope);
        let bytes = bundle.to_bytes();
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        *key = self
            .mls
            .random32()
            .map_err(|e| SessionError::Usage(e.to_string()))?;
        let parts = seal(self.talks, &bytes, devices, &key)
            .map_err(|e| SessionError::Usage(e.to_string()))?;
        let mut seqs = Vec::with_capacity(parts.len());
        for p in &parts {
            let salt = backchannel_statement::Salt(
                self.mls
                    .random32()
                    .map_err(|e| SessionError::Usage(e.to_string()))?,
            );
            seqs.push(self.send(list, room, content(p), salt).await?);
        }
        Ok(HandedOver {
            bundle: bundle_id(&bytes),
            bytes: bytes.len(),
            parts: seqs,
            contents: bundle,
        })
    }

    /// Applies the handover `bundle` once its announcement (a
    /// `history-shared` statement of the sharer naming this member, the
    /// rooms, `until` and the bundle) is in the replayed record and all
    /// its parts from one device, sealed to this device under one key, are
    /// archived: opens it, verifies it against the archive ([`verify`])
    /// and opens what it gives; records the outcome. Until then it stays
    /// pending. Parts from other devices, or copies and fakes naming the
    /// same bundle, make other groups: each complete group is tried, so
    /// no one can spoil a genuine handover by posting parts beside it.
    /// Returns how many envelopes it opened.
    pub(crate) async fn apply_handover(
        &mut self,
        list: &AccessList,
        bundle: Digest,
    ) -> Result<usize, SessionError> {
        let mut records = self.handovers().await?;
        let applied = records
            .iter()
            .any(|r| r.bundle == bundle && matches!(r.outcome, Outcome::Applied { .. }));
        let me = self.device.public_key().id();
        let archive = self.archive().await?;
        let mut groups: BTreeMap<(KeyId, Vec<u8>), PartsByIndex> = BTreeMap::new();
        if !applied {
            for a in &archive {
                let Some(AppMessage {
                    content: Content::Handover(b),
                    ..
                }) = &a.message
                else {
                    continue;
                };
                let Ok(p) = Part::from_bytes(b) else { continue };
                if p.bundle != bundle {
                    continue;
                }
                let Some((_, sealed)) = p.recipients.iter().find(|(d, _)| *d == me) else {
                    continue;
                };
                groups
                    .entry((a.header.header().sender, sealed.to_vec()))
                    .or_default()
                    .entry(p.index)
                    .or_insert((a.seq, p));
            }
        }
        let complete: Vec<(KeyId, Vec<(u64, Part)>)> = groups
            .into_iter()
            .filter(|(_, g)| {
                g.values()
                    .next()
                    .is_some_and(|(_, p)| p.count as usize == g.len())
            })
            .map(|((sender, _), g)| (sender, g.into_values().collect()))
            .collect();
        let mut outcome = None;
        for (sender, group) in complete {
            let at = group.iter().map(|(s, _)| *s).max().unwrap_or(0);
            let parts: Vec<Part> = group.into_iter().map(|(_, p)| p).collect();
            let mut record = Received {
                bundle,
                at,
                sender,
                from: PrincipalId([0; 16]),
                until: 0,
                rooms: Vec::new(),
                outcome: Outcome::Refused(String::new()),
            };
            match self.check_handover(list, &parts, sender, &mut record).await {
                Ok(n) => {
                    outcome = Some((record, n));
                    break;
                }
                // Not announced yet: stays pending.
                Err(HandoverFailure::Unannounced) => {}
                Err(HandoverFailure::Refused(why)) => {
                    record.outcome = Outcome::Refused(why);
                    outcome = Some((record, 0));
                }
                Err(HandoverFailure::Session(e)) => return Err(e),
            }
        }
        let mut pending = self.pending_handovers().await?;
        let Some((record, opened)) = outcome else {
            // Nothing complete and announced: keep waiting, unless this
            // bundle was applied before.
            if applied && pending.remove(&bundle) {
                self.store
                    .put_many(vec![self.pending_handovers_put(&pending)])
                    .await?;
            }
            return Ok(0);
        };
        records.retain(|r| r.bundle != bundle || matches!(r.outcome, Outcome::Applied { .. }));
        records.push(record);
        if records.len() > MAX_RECORDS {
            records.remove(0);
        }
        pending.remove(&bundle);
        self.store
            .put_many(vec![
                Put {
                    ns: Namespace::Mls,
                    key: self.records_key(),
                    value: Some(encode_records(&records)),
                },
                self.pending_handovers_put(&pending),
            ])
            .await?;
        Ok(opened)
    }

    async fn check_handover(
        &mut self,
        list: &AccessList,
        parts: &[Part],
        sender: KeyId,
        record: &mut Received,
    ) -> Result<usize, HandoverFailure> {
        let refused = |e: HandoverError| HandoverFailure::Refused(e.to_string());
        let bytes = open(self.talks, parts, &self.device).map_err(refused)?;
        let bundle = Bundle::from_bytes(&bytes)
            .map_err(HandoverError::from)
            .map_err(refused)?;
        record.from = bundle.from;
        record.until = bundle.until;
        record.rooms = bundle.shared_rooms();
        let mine = list
            .get(&self.device.public_key().id())
            .map(|e| (e.principal, e.party))
            .ok_or_else(|| {
                HandoverFailure::Refused("this device is not on the access list".into())
            })?;
        // The parts come from a device of the member the bundle names, of
        // this member's party.
        let by = list
            .get(&sender)
            .map(|e| (e.principal, e.party))
            .or_else(|| match self.keys.key(&sender).map(|k| &k.role) {
                Some(backchannel_core::replay::KeyRole::Device {
                    principal, party, ..
                }) => Some((*principal, *party)),
                _ => None,
            });
        if by != Some((bundle.from, mine.1)) {
            return Err(HandoverFailure::Refused(format!(
                "it says member {} of your party hands it over, but device {} sent it",
                bundle.from.to_hex(),
                sender.to_hex()
            )));
        }
        // The record announces exactly this handover; a withheld room is
        // a private-notes room.
        let id = bundle_id(&bytes);
        let announced = self.keys.history_shared().iter().any(|h| {
            h.bundle == id
                && h.by == bundle.from
                && h.to == mine.0
                && h.until == bundle.until
                && h.rooms == record.rooms
        });
        if !announced {
            return Err(HandoverFailure::Unannounced);
        }
        if let Some(roster) = self.keys.roster() {
            for (room, share) in &bundle.rooms {
                let purpose = roster
                    .rooms
                    .iter()
                    .find(|d| d.room == *room)
                    .map(|d| d.purpose);
                if matches!(share, Share::WithheldPrivateNotes)
                    && purpose != Some(backchannel_statement::roster::RoomPurpose::PrivateNotes)
                {
                    return Err(HandoverFailure::Refused(format!(
                        "it withholds room {} as private notes, which it is not",
                        room.to_hex()
                    )));
                }
            }
        }
        // Opening statements may place senders whose envelopes this device
        // could not check yet; those are opened in a later round, until a
        // round opens nothing new.
        let mut opened = BTreeSet::new();
        let mut not_held = BTreeSet::new();
        let mut last = Verified::default();
        for _round in 0..=bundle.counts().0 {
            let archive = self.archive().await.map_err(HandoverFailure::Session)?;
            let v =
                verify(&bundle, &archive, self.talks, mine.0, self.follower()).map_err(refused)?;
            let mut writes = Vec::new();
            for (seq, message) in &v.opens {
                if let Some(mut a) = self
                    .archived(*seq)
                    .await
                    .map_err(HandoverFailure::Session)?
                {
                    a.message = Some(message.clone());
                    a.unreadable = None;
                    writes.push(a.put(self.talks));
                    opened.insert(*seq);
                }
            }
            for (seq, why) in &v.not_held {
                if not_held.insert(*seq)
                    && let Some(mut a) = self
                        .archived(*seq)
                        .await
                        .map_err(HandoverFailure::Session)?
                {
                    a.unreadable = Some(format!("{NOT_HANDED_OVER}{}", why.describe()));
                    writes.push(a.put(self.talks));
                }
            }
            let progress = !v.opens.is_empty();
            if !writes.is_empty() {
                self.store
                    .put_many(writes)
                    .await
                    .map_err(|e| HandoverFailure::Session(e.into()))?;
            }
            last = v;
            if !progress {
                break;
            }
            let placed = self
                .place_senders(list)
                .await
                .map_err(HandoverFailure::Session)?;
            if placed == 0 {
                break;
            }
        }
        let not_held = not_held.difference(&opened).count();
        record.outcome = Outcome::Applied {
            opened: opened.len() as u64,
            not_held: not_held as u64,
            withheld: last
                .withheld
                .iter()
                .map(|(r, why)| (*r, (*why).to_owned()))
                .collect(),
            unverifiable: last.unverifiable,
        };
        Ok(opened.len())
    }
}

/// The parts of one group (one sending device, one sealed key), by index:
/// (seq, part), the first of each index kept.
type PartsByIndex = BTreeMap<u32, (u64, Part)>;

enum HandoverFailure {
    Unannounced,
    Refused(String),
    Session(SessionError),
}
