//! The member's side: one device's MLS state in one talks.

use std::collections::BTreeMap;

use backchannel_codec::{DecodeError, Reader, RoomId, TalksId, Writer};
use backchannel_crypto::{PublicKey, SecretKey, Signer as _};
use openmls::prelude as mls;
use openmls::prelude::OpenMlsProvider as _;
use thiserror::Error;

use crate::framing::{self, Framing, FramingError};
use crate::leaf::{self, LeafError};
use crate::padding;
use crate::provider::{self, Map, MlsSigner, Provider};
use crate::storage::{MAX_VALUE, read_map, write_map};
use crate::{CIPHERSUITE, MAX_PAST_EPOCHS, group_id, split_group_id};

/// The version byte of [`Member::to_bytes`].
const MEMBER_VERSION: u8 = 1;

/// A commit this device built, for the node: the commit, the GroupInfo of
/// the epoch it leads to, the Welcome for added devices (if any), and the
/// epoch it commits from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The commit (`MLSMessage`, `PublicMessage`).
    pub commit: Vec<u8>,
    /// The GroupInfo of the new epoch, with ratchet tree and external key.
    pub group_info: Vec<u8>,
    /// The Welcome for the devices added, if any.
    pub welcome: Option<Vec<u8>>,
    /// The epoch the commit commits from.
    pub epoch: u64,
}

/// What [`Member::process_handshake`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// The commit was our own pending commit; it is merged.
    Own {
        /// The room's new epoch.
        epoch: u64,
    },
    /// Another device's commit, validated and merged.
    Applied {
        /// The room's new epoch.
        epoch: u64,
        /// Whether our own pending commit for the same epoch lost the race
        /// and was discarded (build it again if still wanted).
        discarded_own: bool,
    },
    /// The commit removed this device from the room; the room's state is
    /// deleted.
    Removed,
}

/// Why a member operation failed. The state is as it was before the call.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MemberError {
    /// The bytes are not an acceptable MLS message.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// A message of another kind than expected.
    #[error("expected {0}")]
    WrongMessage(&'static str),
    /// The message is for another talks or room.
    #[error("the message is for another talks or room")]
    WrongRoom,
    /// This device has no state for the room.
    #[error("not a member of room {0:?}")]
    NotMember(RoomId),
    /// The room already exists here.
    #[error("already a member of room {0:?}")]
    AlreadyMember(RoomId),
    /// A commit of ours is pending in the room: wait for it to be sequenced
    /// (or discard it).
    #[error("a commit is already pending in this room")]
    PendingCommit,
    /// There is no pending commit to merge.
    #[error("no commit is pending in this room")]
    NoPendingCommit,
    /// A handshake for another epoch than the room's: an old one (already
    /// processed) or a future one (commits were missed: rejoin).
    #[error("a handshake of epoch {message}, the room is at epoch {current}")]
    WrongEpoch {
        /// The message's epoch.
        message: u64,
        /// The room's epoch.
        current: u64,
    },
    /// A leaf is refused.
    #[error(transparent)]
    Leaf(#[from] LeafError),
    /// A device to remove is not in the room.
    #[error("device {0:?} is not in the room")]
    NotInRoom(PublicKey),
    /// A device cannot remove itself by a commit.
    #[error("a device cannot remove itself")]
    RemoveSelf,
    /// OpenMLS refused a key package.
    #[error("invalid key package: {0}")]
    KeyPackage(String),
    /// OpenMLS refused the operation or the message. For a commit of the
    /// room that cannot be processed, the way on is [`Member::rejoin`] (RFC
    /// 9420: a member that cannot process a commit rejoins).
    #[error("MLS: {0}")]
    Mls(String),
    /// A lifetime beyond the end of time.
    #[error("lifetime overflows")]
    Lifetime,
    /// Stored bytes do not decode.
    #[error("stored member state: {0}")]
    Decode(#[from] DecodeError),
    /// Stored state inconsistent (another talks or device, a missing group).
    #[error("member state: {0}")]
    State(String),
}

/// Why an application message does not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecryptError {
    /// This device never joined the room (or was removed from it).
    #[error("not a member of room {0:?}: this device never joined it")]
    NotMember(RoomId),
    /// The message was sent before this device joined the room.
    #[error(
        "sent in epoch {epoch}, before this device joined (epoch {joined}); \
         ask your head of delegation for a handover"
    )]
    BeforeJoin {
        /// The message's epoch.
        epoch: u64,
        /// The epoch this device joined in.
        joined: u64,
    },
    /// The message's epoch is not one this device holds keys for (too old,
    /// or ahead: process the room's handshakes first).
    #[error("sent in epoch {epoch}; this device is at epoch {current}")]
    WrongEpoch {
        /// The message's epoch.
        epoch: u64,
        /// The room's epoch here.
        current: u64,
    },
    /// Not an application message of the right framing.
    #[error("malformed message: {0}")]
    Malformed(#[from] FramingError),
    /// The message belongs to another talks or room.
    #[error("the message is for another talks or room")]
    WrongRoom,
    /// The MLS authenticated data is not the envelope's commitment.
    #[error("the message's authenticated data is not the envelope's commitment")]
    AadMismatch,
    /// The message is this device's own (MLS cannot decrypt one's own
    /// messages: keep the plaintext when sending).
    #[error("this device's own message")]
    OwnMessage,
    /// The inner padding is not canonical.
    #[error("bad padding inside the message")]
    Padding,
    /// The sender's leaf is not a device leaf.
    #[error(transparent)]
    Sender(#[from] LeafError),
    /// OpenMLS could not decrypt or verify it.
    #[error("does not decrypt: {0}")]
    Mls(String),
}

fn mls_err<E: std::fmt::Display>(e: E) -> MemberError {
    MemberError::Mls(e.to_string())
}

fn serialize(m: &impl tls_codec::Serialize) -> Result<Vec<u8>, MemberError> {
    m.tls_serialize_detached().map_err(mls_err)
}

/// What this device knows of one room besides the OpenMLS group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RoomState {
    /// The epoch this device joined in (created, welcomed or rejoined).
    joined: u64,
}

/// A commit of ours not yet sequenced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    outgoing: Outgoing,
    /// For an external commit (rejoin): the storage of the group it leads
    /// to, swapped in when it is merged (OpenMLS merges an external commit at
    /// once, so it is built apart from the room's current state).
    external: Option<Map>,
}

/// One device's MLS state in one talks: its key packages, and for each room
/// the OpenMLS group, the epoch it joined in and its pending commit.
pub struct Member {
    talks: TalksId,
    device: SecretKey,
    provider: Provider,
    rooms: BTreeMap<RoomId, RoomState>,
    pending: BTreeMap<RoomId, Pending>,
    /// Our unused key packages' refs → last resort.
    key_packages: BTreeMap<Vec<u8>, bool>,
    /// The loaded groups (derived from the storage, never serialized).
    groups: BTreeMap<RoomId, mls::MlsGroup>,
    /// Senders' keys as [`PublicKey::from_bytes`] parsed them, by their
    /// bytes (a cache, never serialized): parsing decompresses and
    /// recompresses the point, a tenth of a decryption, and a room's
    /// messages come from few devices.
    senders: BTreeMap<[u8; 32], PublicKey>,
}

/// The most sender keys [`Member`] keeps parsed; past it the cache starts
/// over (a talks has far fewer devices).
const MAX_PARSED_SENDERS: usize = 4096;

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("talks", &self.talks)
            .field("device", &self.device.public_key())
            .field("rooms", &self.rooms)
            .finish_non_exhaustive()
    }
}

/// Everything a transaction may change, to put back on failure.
struct Snapshot {
    map: Map,
    rooms: BTreeMap<RoomId, RoomState>,
    pending: BTreeMap<RoomId, Pending>,
    key_packages: BTreeMap<Vec<u8>, bool>,
}

impl Member {
    /// A device with no rooms yet in `talks`.
    pub fn new(talks: TalksId, device: SecretKey) -> Self {
        Self {
            talks,
            device,
            provider: Provider::default(),
            rooms: BTreeMap::new(),
            pending: BTreeMap::new(),
            key_packages: BTreeMap::new(),
            groups: BTreeMap::new(),
            senders: BTreeMap::new(),
        }
    }

    /// The device's public key.
    pub fn device(&self) -> PublicKey {
        self.device.public_key()
    }

    /// The talks.
    pub fn talks(&self) -> TalksId {
        self.talks
    }

    fn gid(&self, room: RoomId) -> mls::GroupId {
        mls::GroupId::from_slice(&group_id(self.talks, room))
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            map: self.provider.map(),
            rooms: self.rooms.clone(),
            pending: self.pending.clone(),
            key_packages: self.key_packages.clone(),
        }
    }

    fn restore(&mut self, s: Snapshot) {
        self.provider.set_map(&s.map);
        self.rooms = s.rooms;
        self.pending = s.pending;
        self.key_packages = s.key_packages;
        // Groups are reloaded from the restored storage; a room whose group
        // does not load is dropped (it cannot have been there before).
        let rooms: Vec<RoomId> = self.rooms.keys().copied().collect();
        self.groups.clear();
        for room in rooms {
            match self.load(room) {
                Ok(group) => {
                    self.groups.insert(room, group);
                }
                Err(_) => {
                    self.rooms.remove(&room);
                }
            }
        }
    }

    /// Runs `f`; on error, puts every change back.
    fn transact<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, MemberError>,
    ) -> Result<T, MemberError> {
        let snapshot = self.snapshot();
        let result = f(self);
        if result.is_err() {
            self.restore(snapshot);
        }
        result
    }

    fn load(&self, room: RoomId) -> Result<mls::MlsGroup, MemberError> {
        mls::MlsGroup::load(self.provider.storage(), &self.gid(room))
            .map_err(|e| MemberError::State(format!("{e:?}")))?
            .ok_or_else(|| MemberError::State("a room's group is missing".into()))
    }

    /// Everything: the storage map (sorted) and our own metadata.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(MEMBER_VERSION);
        w.raw(self.talks.as_bytes());
        write_map(&mut w, &self.provider.map());
        w.len(self.rooms.len());
        for (room, state) in &self.rooms {
            w.raw(room.as_bytes());
            w.u64(state.joined);
        }
        w.len(self.pending.len());
        for (room, p) in &self.pending {
            w.raw(room.as_bytes());
            w.bytes(&p.outgoing.commit);
            w.bytes(&p.outgoing.group_info);
            match &p.outgoing.welcome {
                Some(welcome) => {
                    w.u8(1);
                    w.bytes(welcome);
                }
                None => w.u8(0),
            }
            w.u64(p.outgoing.epoch);
            match &p.external {
                Some(map) => {
                    w.u8(1);
                    write_map(&mut w, map);
                }
                None => w.u8(0),
            }
        }
        w.len(self.key_packages.len());
        for (r, last_resort) in &self.key_packages {
            w.bytes(r);
            w.bool(*last_resort);
        }
        w.into_bytes()
    }

    /// Reads [`Member::to_bytes`] for `device` in `talks`.
    pub fn from_bytes(
        talks: TalksId,
        device: SecretKey,
        bytes: &[u8],
    ) -> Result<Self, MemberError> {
        let mut r = Reader::new(bytes);
        r.version("member version", MEMBER_VERSION)?;
        if TalksId(r.array("talks")?) != talks {
            return Err(MemberError::State("saved for another talks".into()));
        }
        let map = read_map(&mut r)?;
        let mut rooms = BTreeMap::new();
        for _ in 0..r.len("rooms", usize::MAX, 24)? {
            let room = RoomId(r.array("room")?);
            let joined = r.u64("joined")?;
            if rooms.insert(room, RoomState { joined }).is_some() {
                return Err(DecodeError::Invalid {
                    field: "room",
                    reason: "duplicate",
                }
                .into());
            }
        }
        let mut pending = BTreeMap::new();
        for _ in 0..r.len("pending", usize::MAX, 30)? {
            let room = RoomId(r.array("room")?);
            let commit = r.bytes("commit", MAX_VALUE)?.to_vec();
            let group_info = r.bytes("group info", MAX_VALUE)?.to_vec();
            let welcome = match r.u8("welcome")? {
                0 => None,
                1 => Some(r.bytes("welcome", MAX_VALUE)?.to_vec()),
                v => {
                    return Err(DecodeError::UnknownValue {
                        field: "welcome",
                        value: u64::from(v),
                    }
                    .into());
                }
            };
            let epoch = r.u64("epoch")?;
            let external = match r.u8("external")? {
                0 => None,
                1 => Some(read_map(&mut r)?),
                v => {
                    return Err(DecodeError::UnknownValue {
                        field: "external",
                        value: u64::from(v),
                    }
                    .into());
                }
            };
            let p = Pending {
                outgoing: Outgoing {
                    commit,
                    group_info,
                    welcome,
                    epoch,
                },
                external,
            };
            if pending.insert(room, p).is_some() {
                return Err(DecodeError::Invalid {
                    field: "pending room",
                    reason: "duplicate",
                }
                .into());
            }
        }
        let mut key_packages = BTreeMap::new();
        for _ in 0..r.len("key packages", usize::MAX, 5)? {
            let kp = r.bytes("key package ref", 64)?.to_vec();
            let last_resort = r.bool("last resort")?;
            key_packages.insert(kp, last_resort);
        }
        r.finish()?;
        let mut member = Self {
            talks,
            device,
            provider: Provider::with_map(&map),
            rooms,
            pending,
            key_packages,
            groups: BTreeMap::new(),
            senders: BTreeMap::new(),
        };
        let me = member.device();
        let rooms: Vec<RoomId> = member.rooms.keys().copied().collect();
        for room in rooms {
            let group = member.load(room)?;
            let own = group
                .own_leaf_node()
                .ok_or_else(|| MemberError::State("no own leaf".into()))?;
            if leaf::device_key(own.credential(), own.signature_key().as_slice())? != me {
                return Err(MemberError::State("saved for another device".into()));
            }
            member.groups.insert(room, group);
        }
        Ok(member)
    }

    /// `n` fresh key packages, plus one last-resort key package if
    /// `last_resort`, each an `MLSMessage`, valid `[now, now + lifetime)`.
    pub fn key_packages(
        &mut self,
        n: usize,
        last_resort: bool,
        now: u64,
        lifetime: u64,
    ) -> Result<Vec<Vec<u8>>, MemberError> {
        let not_after = now.checked_add(lifetime).ok_or(MemberError::Lifetime)?;
        self.transact(|this| {
            let signer = MlsSigner(&this.device);
            let credential = provider::credential(&this.device.public_key());
            let mut out = Vec::with_capacity(n + usize::from(last_resort));
            for i in 0..n + usize::from(last_resort) {
                let last = i == n;
                let mut builder = mls::KeyPackage::builder()
                    .key_package_lifetime(mls::Lifetime::init(now, not_after));
                if last {
                    // A leaf must list the extensions its key package carries.
                    builder = builder.mark_as_last_resort().leaf_node_capabilities(
                        mls::Capabilities::new(
                            None,
                            None,
                            Some(&[mls::ExtensionType::LastResort]),
                            None,
                            None,
                        ),
                    );
                }
                let bundle = builder
                    .build(CIPHERSUITE, &this.provider, &signer, credential.clone())
                    .map_err(mls_err)?;
                let kp = bundle.key_package();
                let r = kp.hash_ref(this.provider.crypto()).map_err(mls_err)?;
                this.key_packages.insert(r.as_slice().to_vec(), last);
                out.push(serialize(&mls::MlsMessageOut::from(kp.clone()))?);
            }
            Ok(out)
        })
    }

    /// Creates the room's group with this device alone, at epoch 0, and
    /// returns its GroupInfo (with ratchet tree) for the node.
    pub fn create_room(&mut self, room: RoomId) -> Result<Vec<u8>, MemberError> {
        if self.rooms.contains_key(&room) {
            return Err(MemberError::AlreadyMember(room));
        }
        self.transact(|this| {
            let signer = MlsSigner(&this.device);
            let group = mls::MlsGroup::new_with_group_id(
                &this.provider,
                &signer,
                &provider::create_config(),
                this.gid(room),
                provider::credential(&this.device.public_key()),
            )
            .map_err(mls_err)?;
            let info = group
                .export_group_info(this.provider.crypto(), &signer, true)
                .map_err(mls_err)?;
            this.rooms.insert(room, RoomState { joined: 0 });
            this.groups.insert(room, group);
            serialize(&info)
        })
    }

    /// The rooms this device is a member of.
    pub fn rooms(&self) -> Vec<RoomId> {
        self.rooms.keys().copied().collect()
    }

    /// The room's current epoch here.
    pub fn epoch(&self, room: RoomId) -> Option<u64> {
        self.groups.get(&room).map(|g| g.epoch().as_u64())
    }

    /// The epoch this device joined the room in.
    pub fn joined(&self, room: RoomId) -> Option<u64> {
        self.rooms.get(&room).map(|s| s.joined)
    }

    /// The device keys of the room's members, in leaf order.
    pub fn members(&self, room: RoomId) -> Vec<PublicKey> {
        self.groups.get(&room).map_or_else(Vec::new, |g| {
            g.members()
                .filter_map(|m| leaf::device_key(&m.credential, &m.signature_key).ok())
                .collect()
        })
    }

    /// The room's current epoch authenticator (RFC 9420 §8.7): equal for
    /// every member in the same epoch of the same group.
    pub fn epoch_authenticator(&self, room: RoomId) -> Option<Vec<u8>> {
        self.groups
            .get(&room)
            .map(|g| g.epoch_authenticator().as_slice().to_vec())
    }

    /// Builds (does not merge) a commit: adds the devices of these key
    /// packages, removes these devices, and always updates our own leaf (a
    /// path). Each key package is validated and its leaf checked with
    /// `admits` first. One pending commit per room: it is kept (and
    /// persisted) until [`Member::merge_pending`], [`Member::discard_pending`]
    /// or [`Member::process_handshake`] settles it.
    pub fn commit(
        &mut self,
        room: RoomId,
        add: &[Vec<u8>],
        remove: &[PublicKey],
        admits: &dyn Fn(&PublicKey) -> bool,
    ) -> Result<Outgoing, MemberError> {
        if !self.rooms.contains_key(&room) {
            return Err(MemberError::NotMember(room));
        }
        if self.pending.contains_key(&room) {
            return Err(MemberError::PendingCommit);
        }
        let mut key_packages = Vec::with_capacity(add.len());
        for bytes in add {
            let Framing::KeyPackage = framing::read_framing(bytes)? else {
                return Err(MemberError::WrongMessage("a key package"));
            };
            let mls::MlsMessageBodyIn::KeyPackage(kp) = framing::decode(bytes)?.extract() else {
                return Err(MemberError::WrongMessage("a key package"));
            };
            let kp = kp
                .validate(self.provider.crypto(), mls::ProtocolVersion::Mls10)
                .map_err(|e| MemberError::KeyPackage(e.to_string()))?;
            if kp.ciphersuite() != CIPHERSUITE {
                return Err(FramingError::WrongCiphersuite(u16::from(kp.ciphersuite())).into());
            }
            let leaf = kp.leaf_node();
            leaf::check(leaf.credential(), leaf.signature_key().as_slice(), admits)?;
            key_packages.push(kp);
        }
        let me = self.device.public_key();
        let group = self.groups.get(&room).ok_or(MemberError::NotMember(room))?;
        let mut removed = Vec::with_capacity(remove.len());
        for key in remove {
            if *key == me {
                return Err(MemberError::RemoveSelf);
            }
            let index = group
                .members()
                .find(|m| m.signature_key == key.as_bytes())
                .map(|m| m.index)
                .ok_or(MemberError::NotInRoom(*key))?;
            removed.push(index);
        }
        self.transact(|this| {
            let signer = MlsSigner(&this.device);
            let group = this
                .groups
                .get_mut(&room)
                .ok_or(MemberError::NotMember(room))?;
            let epoch = group.epoch().as_u64();
            let bundle = group
                .commit_builder()
                .propose_adds(key_packages)
                .propose_removals(removed)
                .force_self_update(true)
                .load_psks(this.provider.storage())
                .map_err(mls_err)?
                .build(
                    this.provider.rand(),
                    this.provider.crypto(),
                    &signer,
                    |_| true,
                )
                .map_err(mls_err)?
                .stage_commit(&this.provider)
                .map_err(mls_err)?;
            let (commit, welcome, info) = bundle.into_messages();
            let info =
                info.ok_or_else(|| MemberError::Mls("the commit made no GroupInfo".into()))?;
            let outgoing = Outgoing {
                commit: serialize(&commit)?,
                group_info: serialize(&info)?,
                welcome: welcome.map(|w| serialize(&w)).transpose()?,
                epoch,
            };
            this.pending.insert(
                room,
                Pending {
                    outgoing: outgoing.clone(),
                    external: None,
                },
            );
            Ok(outgoing)
        })
    }

    /// Merges the room's pending commit (the node sequenced it).
    pub fn merge_pending(&mut self, room: RoomId) -> Result<(), MemberError> {
        let pending = self
            .pending
            .get(&room)
            .cloned()
            .ok_or(MemberError::NoPendingCommit)?;
        self.transact(|this| {
            match pending.external {
                Some(map) => {
                    // Swap the rejoined group in for the old one.
                    if let Some(mut old) = this.groups.remove(&room) {
                        old.delete(this.provider.storage())
                            .map_err(|e| MemberError::State(format!("{e:?}")))?;
                    }
                    let mut all = this.provider.map();
                    all.extend(map);
                    this.provider.set_map(&all);
                    let group = this.load(room)?;
                    this.rooms.insert(
                        room,
                        RoomState {
                            joined: group.epoch().as_u64(),
                        },
                    );
                    this.groups.insert(room, group);
                }
                None => {
                    let group = this
                        .groups
                        .get_mut(&room)
                        .ok_or(MemberError::NotMember(room))?;
                    group
                        .merge_pending_commit(&this.provider)
                        .map_err(mls_err)?;
                }
            }
            this.pending.remove(&room);
            Ok(())
        })
    }

    /// Discards the room's pending commit, if any (it lost a race, or the
    /// node refused it).
    pub fn discard_pending(&mut self, room: RoomId) {
        if self.pending.remove(&room).is_some()
            && let Some(group) = self.groups.get_mut(&room)
        {
            // A storage error here only leaves the pending state in the
            // group, which the next commit or merge replaces.
            let _ = group.clear_pending_commit(self.provider.storage());
        }
    }

    /// 32 bytes from the MLS provider's random generator (for what a
    /// device sends beside MLS messages and must look random to the node:
    /// the commitments of handshakes and Welcomes, commitment salts).
    pub fn random32(&self) -> Result<[u8; 32], MemberError> {
        use openmls_traits::random::OpenMlsRand as _;
        self.provider
            .rand()
            .random_array::<32>()
            .map_err(|e| MemberError::Mls(format!("randomness: {e:?}")))
    }

    /// Forgets the room: its group, its pending commit and what this device
    /// knew of it (a group created here whose creation the node refused
    /// because another device created the room first; a device then joins
    /// from a Welcome). Nothing happens for a room this device is not in.
    pub fn forget_room(&mut self, room: RoomId) {
        if let Some(mut group) = self.groups.remove(&room) {
            // A storage error leaves stale rows that nothing reads: the
            // room is no longer among `rooms`.
            let _ = group.delete(self.provider.storage());
        }
        self.rooms.remove(&room);
        self.pending.remove(&room);
    }

    /// The room's pending commit, if any.
    pub fn pending(&self, room: RoomId) -> Option<Outgoing> {
        self.pending.get(&room).map(|p| p.outgoing.clone())
    }

    /// Processes the room's next sequenced handshake (a `PublicMessage`
    /// commit), in log order. Our own pending commit (the same bytes) is
    /// merged; another commit for the epoch of our pending commit discards
    /// ours first. Before merging, every leaf the commit brings in (Adds,
    /// Updates, the UpdatePath leaf) and the committer's leaf are checked
    /// with the leaf rule and `admits`.
    pub fn process_handshake(
        &mut self,
        room: RoomId,
        message: &[u8],
        admits: &dyn Fn(&PublicKey) -> bool,
    ) -> Result<Handled, MemberError> {
        let (framing, protocol) = framing::protocol_message(message)?;
        let Framing::Commit {
            talks,
            room: r,
            epoch,
        } = framing
        else {
            return Err(MemberError::WrongMessage("a commit"));
        };
        if (talks, r) != (self.talks, room) {
            return Err(MemberError::WrongRoom);
        }
        if self
            .pending
            .get(&room)
            .is_some_and(|p| p.outgoing.commit == message)
        {
            self.merge_pending(room)?;
            let epoch = self.epoch(room).unwrap_or_default();
            return Ok(Handled::Own { epoch });
        }
        let current = self
            .groups
            .get(&room)
            .map(|g| g.epoch().as_u64())
            .ok_or(MemberError::NotMember(room))?;
        if epoch != current {
            return Err(MemberError::WrongEpoch {
                message: epoch,
                current,
            });
        }
        self.transact(|this| {
            let discarded_own = this
                .pending
                .get(&room)
                .is_some_and(|p| p.outgoing.epoch == epoch);
            if discarded_own {
                this.pending.remove(&room);
                if let Some(group) = this.groups.get_mut(&room) {
                    group
                        .clear_pending_commit(this.provider.storage())
                        .map_err(|e| MemberError::State(format!("{e:?}")))?;
                }
            }
            let group = this
                .groups
                .get_mut(&room)
                .ok_or(MemberError::NotMember(room))?;
            let processed = group
                .process_message(&this.provider, protocol)
                .map_err(mls_err)?;
            let sender = processed.sender().clone();
            let mls::ProcessedMessageContent::StagedCommitMessage(staged) =
                processed.into_content()
            else {
                return Err(MemberError::WrongMessage("a commit"));
            };
            for add in staged.add_proposals() {
                let leaf = add.add_proposal().key_package().leaf_node();
                leaf::check(leaf.credential(), leaf.signature_key().as_slice(), admits)?;
            }
            for update in staged.update_proposals() {
                let leaf = update.update_proposal().leaf_node();
                leaf::check(leaf.credential(), leaf.signature_key().as_slice(), admits)?;
            }
            // As the node checks it: no removal of a device still admitted
            // to the room, except an external joiner's own old leaf.
            let path_key = staged
                .update_path_leaf_node()
                .and_then(|l| leaf::device_key(l.credential(), l.signature_key().as_slice()).ok());
            for remove in staged.remove_proposals() {
                let index = remove.remove_proposal().removed();
                if let Some(leaf) = group.public_group().leaf(index)
                    && let Ok(key) =
                        leaf::device_key(leaf.credential(), leaf.signature_key().as_slice())
                    && admits(&key)
                    && !(matches!(sender, mls::Sender::NewMemberCommit) && path_key == Some(key))
                {
                    return Err(MemberError::Mls(
                        "the commit removes a device the room still admits".into(),
                    ));
                }
            }
            if let Some(leaf) = staged.update_path_leaf_node() {
                leaf::check(leaf.credential(), leaf.signature_key().as_slice(), admits)?;
            }
            if let mls::Sender::Member(index) = sender {
                let leaf = group
                    .public_group()
                    .leaf(index)
                    .ok_or_else(|| MemberError::Mls("no committer leaf".into()))?;
                leaf::check(leaf.credential(), leaf.signature_key().as_slice(), admits)?;
            }
            let removed = staged.self_removed();
            group
                .merge_staged_commit(&this.provider, *staged)
                .map_err(mls_err)?;
            if removed {
                group
                    .delete(this.provider.storage())
                    .map_err(|e| MemberError::State(format!("{e:?}")))?;
                this.groups.remove(&room);
                this.rooms.remove(&room);
                this.pending.remove(&room);
                return Ok(Handled::Removed);
            }
            Ok(Handled::Applied {
                epoch: group.epoch().as_u64(),
                discarded_own,
            })
        })
    }

    /// Joins a room from a Welcome if it names one of our key packages
    /// (`Ok(None)` otherwise). Every leaf of the welcomed tree is checked
    /// with the leaf rule and `admits` before joining.
    pub fn join(
        &mut self,
        welcome: &[u8],
        admits: &dyn Fn(&PublicKey) -> bool,
    ) -> Result<Option<RoomId>, MemberError> {
        let Framing::Welcome { key_packages } = framing::read_framing(welcome)? else {
            return Err(MemberError::WrongMessage("a Welcome"));
        };
        let ours: Vec<Vec<u8>> = key_packages
            .into_iter()
            .filter(|r| self.key_packages.contains_key(r))
            .collect();
        if ours.is_empty() {
            return Ok(None);
        }
        let mls::MlsMessageBodyIn::Welcome(w) = framing::decode(welcome)?.extract() else {
            return Err(MemberError::WrongMessage("a Welcome"));
        };
        self.transact(|this| {
            let staged =
                mls::StagedWelcome::build_from_welcome(&this.provider, &provider::join_config(), w)
                    .map_err(mls_err)?
                    .skip_lifetime_validation()
                    .build()
                    .map_err(mls_err)?;
            let (talks, room) = split_group_id(staged.group_context().group_id().as_slice())
                .ok_or(FramingError::BadGroupId(
                    staged.group_context().group_id().as_slice().len(),
                ))?;
            if talks != this.talks {
                return Err(MemberError::WrongRoom);
            }
            if this.rooms.contains_key(&room) {
                return Err(MemberError::AlreadyMember(room));
            }
            if staged.group_context().ciphersuite() != CIPHERSUITE {
                return Err(FramingError::WrongCiphersuite(u16::from(
                    staged.group_context().ciphersuite(),
                ))
                .into());
            }
            for m in staged.members() {
                leaf::check(&m.credential, &m.signature_key, admits)?;
            }
            let group = staged.into_group(&this.provider).map_err(mls_err)?;
            for r in &ours {
                if this.key_packages.get(r) == Some(&false) {
                    this.key_packages.remove(r);
                }
            }
            this.rooms.insert(
                room,
                RoomState {
                    joined: group.epoch().as_u64(),
                },
            );
            this.groups.insert(room, group);
            Ok(Some(room))
        })
    }

    /// Rejoins a room by an external commit from its current GroupInfo (RFC
    /// 9420: a member that cannot process a commit rejoins; also a device
    /// that lost its state). Every leaf of the GroupInfo's tree is checked
    /// with the leaf rule and `admits` first. The result is pending like any
    /// commit: merged when the node sequences it ([`Member::merge_pending`]
    /// or [`Member::process_handshake`] of the same bytes); until then the
    /// room's old state, if any, is kept. A pending commit of ours in the
    /// room is replaced. If the node sequences another commit first, the
    /// external commit is stale: call `rejoin` again with the newer
    /// GroupInfo (it replaces the stale one).
    pub fn rejoin(
        &mut self,
        room: RoomId,
        group_info: &[u8],
        admits: &dyn Fn(&PublicKey) -> bool,
    ) -> Result<Outgoing, MemberError> {
        let Framing::GroupInfo {
            talks,
            room: r,
            epoch,
        } = framing::read_framing(group_info)?
        else {
            return Err(MemberError::WrongMessage("a GroupInfo"));
        };
        if (talks, r) != (self.talks, room) {
            return Err(MemberError::WrongRoom);
        }
        let mls::MlsMessageBodyIn::GroupInfo(gi) = framing::decode(group_info)?.extract() else {
            return Err(MemberError::WrongMessage("a GroupInfo"));
        };
        let tree = gi
            .extensions()
            .ratchet_tree()
            .ok_or_else(|| MemberError::Mls("the GroupInfo carries no ratchet tree".into()))?;
        for leaf in tree.ratchet_tree().leaves() {
            leaf::check(leaf.credential(), leaf.signature_key().as_slice(), admits)?;
        }
        let scratch = Provider::default();
        let signer = MlsSigner(&self.device);
        let (_group, bundle) = mls::MlsGroup::external_commit_builder()
            .with_config(provider::join_config())
            .skip_lifetime_validation()
            .build_group(
                &scratch,
                gi,
                provider::credential(&self.device.public_key()),
            )
            .map_err(mls_err)?
            .load_psks(scratch.storage())
            .map_err(mls_err)?
            .build(scratch.rand(), scratch.crypto(), &signer, |_| true)
            .map_err(mls_err)?
            .finalize(&scratch)
            .map_err(mls_err)?;
        let (commit, _, info) = bundle.into_messages();
        let info = info.ok_or_else(|| MemberError::Mls("the commit made no GroupInfo".into()))?;
        let outgoing = Outgoing {
            commit: serialize(&commit)?,
            group_info: serialize(&info)?,
            welcome: None,
            epoch,
        };
        self.discard_pending(room);
        self.pending.insert(
            room,
            Pending {
                outgoing: outgoing.clone(),
                external: Some(scratch.map()),
            },
        );
        Ok(outgoing)
    }

    /// Encrypts `plaintext` for the room, with `commitment` as the MLS
    /// authenticated data. The plaintext is padded inside MLS (`len:u32 ‖
    /// plaintext ‖ zeros`) so that the returned `MLSMessage` is exactly
    /// `bucket - 4` bytes for the smallest envelope body bucket that fits
    /// ([`crate::message_len`]).
    pub fn encrypt(
        &mut self,
        room: RoomId,
        plaintext: &[u8],
        commitment: &[u8; 32],
    ) -> Result<Vec<u8>, MemberError> {
        let (inner_len, total) = padding::sizes(plaintext.len())
            .ok_or_else(|| MemberError::Mls("the plaintext is longer than one message".into()))?;
        let inner = padding::pad(plaintext, inner_len)
            .ok_or_else(|| MemberError::Mls("padding failed".into()))?;
        let signer = MlsSigner(&self.device);
        let group = self
            .groups
            .get_mut(&room)
            .ok_or(MemberError::NotMember(room))?;
        group.set_aad(commitment.to_vec());
        let message = group
            .create_message(&self.provider, &signer, &inner)
            .map_err(mls_err)?;
        let bytes = serialize(&message)?;
        if bytes.len() != total {
            return Err(MemberError::Mls(format!(
                "message of {} bytes, expected {total}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// The sender key whose bytes are `identity`, parsed as
    /// [`PublicKey::from_bytes`] parses it (the same checks, each distinct
    /// key parsed once).
    fn sender_key(&mut self, identity: &[u8]) -> Result<PublicKey, DecryptError> {
        let bad = || DecryptError::Sender(LeafError::BadIdentity);
        let bytes: [u8; 32] = identity.try_into().map_err(|_| bad())?;
        if let Some(key) = self.senders.get(&bytes) {
            return Ok(*key);
        }
        let key = PublicKey::from_bytes(&bytes).map_err(|_| bad())?;
        if self.senders.len() >= MAX_PARSED_SENDERS {
            self.senders.clear();
        }
        self.senders.insert(bytes, key);
        Ok(key)
    }

    /// Decrypts an application message of the room: the plaintext (padding
    /// checked), after checking that its authenticated data is
    /// `commitment`.
    pub fn decrypt(
        &mut self,
        room: RoomId,
        message: &[u8],
        commitment: &[u8; 32],
    ) -> Result<Vec<u8>, DecryptError> {
        self.decrypt_from(room, message, commitment)
            .map(|(_, plaintext)| plaintext)
    }

    /// [`Member::decrypt`], also returning the sending device's key (so the
    /// caller can check it against the envelope's sender).
    pub fn decrypt_from(
        &mut self,
        room: RoomId,
        message: &[u8],
        commitment: &[u8; 32],
    ) -> Result<(PublicKey, Vec<u8>), DecryptError> {
        let (framing, protocol) = framing::protocol_message(message)?;
        let Framing::Application {
            talks,
            room: r,
            epoch,
            authenticated_data,
        } = framing
        else {
            return Err(DecryptError::Malformed(FramingError::UnsupportedWireFormat));
        };
        if (talks, r) != (self.talks, room) {
            return Err(DecryptError::WrongRoom);
        }
        let joined = self
            .rooms
            .get(&room)
            .ok_or(DecryptError::NotMember(room))?
            .joined;
        let group = self
            .groups
            .get_mut(&room)
            .ok_or(DecryptError::NotMember(room))?;
        if epoch < joined {
            return Err(DecryptError::BeforeJoin { epoch, joined });
        }
        let current = group.epoch().as_u64();
        if epoch > current || epoch.saturating_add(MAX_PAST_EPOCHS as u64) < current {
            return Err(DecryptError::WrongEpoch { epoch, current });
        }
        if authenticated_data.as_slice() != commitment.as_slice() {
            return Err(DecryptError::AadMismatch);
        }
        let processed = group
            .process_message(&self.provider, protocol)
            .map_err(|e| DecryptError::Mls(e.to_string()))?;
        if processed.aad() != commitment.as_slice() {
            return Err(DecryptError::AadMismatch);
        }
        if !matches!(processed.sender(), mls::Sender::Member(_)) {
            return Err(DecryptError::Mls("not sent by a member".into()));
        }
        let credential = processed.credential().clone();
        let data = match processed.into_content() {
            mls::ProcessedMessageContent::ApplicationMessage(app) => app.into_bytes(),
            mls::ProcessedMessageContent::OwnPrivateMessage => {
                return Err(DecryptError::OwnMessage);
            }
            _ => {
                return Err(DecryptError::Malformed(FramingError::PrivateHandshake));
            }
        };
        // The leaf rule (checked whenever a leaf enters the room) makes the
        // credential's identity the sender's signature key.
        let identity = mls::BasicCredential::try_from(credential)
            .map_err(|_| DecryptError::Sender(LeafError::NotBasic))?;
        let sender = self.sender_key(identity.identity())?;
        let plaintext = padding::unpad(&data, message.len()).ok_or(DecryptError::Padding)?;
        Ok((sender, plaintext))
    }
}
