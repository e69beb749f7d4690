//! The node's side: a room's public state, and key package checks.

use backchannel_codec::{DecodeError, Reader, RoomId, TalksId, Writer};
use backchannel_crypto::PublicKey;
use openmls::prelude as mls;
use openmls::prelude::tls_codec::{Serialize as _, Size as _};
use openmls::prelude::{OpenMlsProvider as _, Verifiable as _};
use openmls_traits::types::SignatureScheme;
use thiserror::Error;

use crate::framing::{self, Framing, FramingError};
use crate::leaf::{self, LeafError};
use crate::provider::{Map, Provider};
use crate::storage::{read_map, write_map};
use crate::{CIPHERSUITE, group_id};

/// The version byte of [`PublicRoom::to_bytes`].
const PUBLIC_ROOM_VERSION: u8 = 1;

/// Why the node refuses a room's creation, a commit, a GroupInfo or a key
/// package, or cannot read a stored room.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublicError {
    /// The bytes are not an acceptable MLS message.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// A message of another kind than expected.
    #[error("expected {0}")]
    WrongMessage(&'static str),
    /// A message of another group than this room's.
    #[error("the message is for another room")]
    WrongRoom,
    /// A message for another epoch than expected.
    #[error("the message is for epoch {got}, expected {expected}")]
    WrongEpoch {
        /// The epoch expected.
        expected: u64,
        /// The epoch of the message.
        got: u64,
    },
    /// The GroupInfo carries no ratchet tree.
    #[error("the GroupInfo carries no ratchet tree")]
    NoRatchetTree,
    /// The GroupInfo carries no external public key (no one could rejoin).
    #[error("the GroupInfo carries no external public key")]
    NoExternalPub,
    /// OpenMLS refused the GroupInfo (signature, tree, leaves).
    #[error("invalid GroupInfo: {0}")]
    InvalidGroupInfo(String),
    /// A new room's tree has other than one leaf.
    #[error("a new room has exactly one member, this one has {0}")]
    NotOneLeaf(usize),
    /// The new room's one leaf is not its creator.
    #[error("the new room's member is not its creator")]
    NotCreator,
    /// A leaf is refused.
    #[error(transparent)]
    Leaf(#[from] LeafError),
    /// OpenMLS refused the commit.
    #[error("commit refused: {0}")]
    Commit(String),
    /// The GroupInfo does not describe the state the commit leads to.
    #[error("the GroupInfo does not match the commit: {0}")]
    GroupInfoMismatch(&'static str),
    /// OpenMLS refused the key package (encoding, signature, suite).
    #[error("invalid key package: {0}")]
    KeyPackage(String),
    /// The key package is not the uploading device's.
    #[error("the key package is not the device's")]
    WrongDevice,
    /// The key package's lifetime does not cover now.
    #[error("key package valid [{not_before}, {not_after}), not at {now}")]
    Expired {
        /// Start of its lifetime.
        not_before: u64,
        /// End of its lifetime.
        not_after: u64,
        /// The time checked.
        now: u64,
    },
    /// The key package's lifetime is longer than allowed.
    #[error("key package lifetime {lifetime}s is longer than {max}s")]
    LifetimeTooLong {
        /// Its lifetime.
        lifetime: u64,
        /// The allowed maximum.
        max: u64,
    },
    /// Stored room bytes do not decode.
    #[error("stored room: {0}")]
    Decode(#[from] DecodeError),
    /// The stored state is inconsistent or OpenMLS's storage failed.
    #[error("room state: {0}")]
    State(String),
}

/// A room's public state, as the node keeps it: the OpenMLS `PublicGroup`
/// (tree, group context, confirmation tag, interim transcript hash), its
/// epoch, talks and room. Created from the creator's GroupInfo, advanced
/// only by [`PublicRoom::stage_commit`].
#[derive(Clone, PartialEq, Eq)]
pub struct PublicRoom {
    talks: TalksId,
    room: RoomId,
    epoch: u64,
    members: Vec<PublicKey>,
    map: Map,
}

impl std::fmt::Debug for PublicRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicRoom")
            .field("talks", &self.talks)
            .field("room", &self.room)
            .field("epoch", &self.epoch)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

fn state<E: std::fmt::Debug>(e: E) -> PublicError {
    PublicError::State(format!("{e:?}"))
}

/// A GroupInfo message's contents.
fn group_info(
    bytes: &[u8],
) -> Result<(Framing, openmls::messages::group_info::VerifiableGroupInfo), PublicError> {
    let framing = framing::read_framing(bytes)?;
    match framing::decode(bytes)?.extract() {
        mls::MlsMessageBodyIn::GroupInfo(gi) => Ok((framing, gi)),
        _ => Err(PublicError::WrongMessage("a GroupInfo")),
    }
}

/// The device keys of a public group's leaves, in leaf order.
fn members_of(group: &mls::PublicGroup) -> Result<Vec<PublicKey>, PublicError> {
    group
        .members()
        .map(|m| leaf::device_key(&m.credential, &m.signature_key).map_err(PublicError::from))
        .collect()
}

impl PublicRoom {
    fn group_id(&self) -> mls::GroupId {
        mls::GroupId::from_slice(&group_id(self.talks, self.room))
    }

    fn load(&self, provider: &Provider) -> Result<mls::PublicGroup, PublicError> {
        mls::PublicGroup::load(provider.storage(), &self.group_id())
            .map_err(state)?
            .ok_or_else(|| PublicError::State("no public group in the stored state".into()))
    }

    /// Creates a room from its creator's GroupInfo: epoch 0, with the ratchet
    /// tree and an external public key, one leaf, whose identity is
    /// `creator` and admitted by `admits`.
    pub fn create(
        talks: TalksId,
        room: RoomId,
        group_info_bytes: &[u8],
        creator: &PublicKey,
        admits: &dyn Fn(&PublicKey) -> bool,
    ) -> Result<PublicRoom, PublicError> {
        let (framing, gi) = group_info(group_info_bytes)?;
        let Framing::GroupInfo {
            talks: t,
            room: r,
            epoch,
        } = framing
        else {
            return Err(PublicError::WrongMessage("a GroupInfo"));
        };
        if (t, r) != (talks, room) {
            return Err(PublicError::WrongRoom);
        }
        if epoch != 0 {
            return Err(PublicError::WrongEpoch {
                expected: 0,
                got: epoch,
            });
        }
        let tree = gi
            .extensions()
            .ratchet_tree()
            .ok_or(PublicError::NoRatchetTree)?
            .ratchet_tree()
            .clone();
        if gi.extensions().external_pub().is_none() {
            return Err(PublicError::NoExternalPub);
        }
        // Cheap checks on the unverified tree first.
        let leaves: Vec<_> = tree.leaves().collect();
        if leaves.len() != 1 {
            return Err(PublicError::NotOneLeaf(leaves.len()));
        }
        let provider = Provider::default();
        let (group, _) = mls::PublicGroup::from_external(
            provider.crypto(),
            provider.storage(),
            tree,
            gi,
            mls::ProposalStore::new(),
        )
        .map_err(|e| PublicError::InvalidGroupInfo(e.to_string()))?;
        let members: Vec<_> = group.members().collect();
        let [only] = members.as_slice() else {
            return Err(PublicError::NotOneLeaf(members.len()));
        };
        let key = leaf::check(&only.credential, &only.signature_key, admits)?;
        if key != *creator {
            return Err(PublicError::NotCreator);
        }
        Ok(PublicRoom {
            talks,
            room,
            epoch: 0,
            members: vec![key],
            map: provider.map(),
        })
    }

    /// Validates a commit for the current epoch and the GroupInfo that goes
    /// with it, and returns the next state (`self` is unchanged).
    ///
    /// The commit must be a `PublicMessage` OpenMLS's `PublicGroup` accepts
    /// (signature, membership tag, proposals, path, confirmation tag). Every
    /// leaf it brings in is checked (the leaf rule and `admits`): each Add's
    /// key package leaf, each Update leaf, the UpdatePath leaf (for an
    /// external commit, the joiner's), and the committer's current leaf.
    /// The GroupInfo must be for the new epoch of this room, signed by the
    /// committer's leaf, and carry exactly the new state: the same group
    /// context (hence tree hash and transcript), the same ratchet tree, the
    /// commit's confirmation tag, and an external public key.
    pub fn stage_commit(
        &self,
        commit: &[u8],
        group_info_bytes: &[u8],
        admits: &dyn Fn(&PublicKey) -> bool,
    ) -> Result<PublicRoom, PublicError> {
        self.stage(commit, group_info_bytes, admits).map(|s| s.room)
    }

    /// [`PublicRoom::stage_commit`], also naming the devices the commit
    /// adds with the references of their key packages (what its Welcome
    /// must name, and whom its body goes to).
    pub fn stage(
        &self,
        commit: &[u8],
        group_info_bytes: &[u8],
        admits: &dyn Fn(&PublicKey) -> bool,
    ) -> Result<Staged, PublicError> {
        let (framing, message) = framing::protocol_message(commit)?;
        let Framing::Commit { talks, room, epoch } = framing else {
            return Err(PublicError::WrongMessage("a commit"));
        };
        if (talks, room) != (self.talks, self.room) {
            return Err(PublicError::WrongRoom);
        }
        if epoch != self.epoch {
            return Err(PublicError::WrongEpoch {
                expected: self.epoch,
                got: epoch,
            });
        }
        let provider = Provider::with_map(&self.map);
        let mut group = self.load(&provider)?;
        let processed = group
            .process_message(provider.crypto(), message)
            .map_err(|e| PublicError::Commit(e.to_string()))?;
        let sender = processed.sender().clone();
        let mls::ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content()
        else {
            return Err(PublicError::WrongMessage("a commit"));
        };

        // Every leaf the commit brings in.
        let mut added = Vec::new();
        for add in staged.add_proposals() {
            let kp = add.add_proposal().key_package();
            let leaf = kp.leaf_node();
            let key = leaf::check(leaf.credential(), leaf.signature_key().as_slice(), admits)?;
            let reference = kp.hash_ref(provider.crypto()).map_err(state)?;
            added.push((key, reference.as_slice().to_vec()));
        }
        for update in staged.update_proposals() {
            let leaf = update.update_proposal().leaf_node();
            leaf::check(leaf.credential(), leaf.signature_key().as_slice(), admits)?;
        }
        let path_key = match staged.update_path_leaf_node() {
            Some(leaf) => Some(leaf::check(
                leaf.credential(),
                leaf.signature_key().as_slice(),
                admits,
            )?),
            None => None,
        };
        // No member removes a device the access list still seats in the
        // room (only the list decides who leaves), except an external
        // commit removing the joiner's own old leaf.
        for remove in staged.remove_proposals() {
            let index = remove.remove_proposal().removed();
            let leaf = group
                .leaf(index)
                .ok_or_else(|| PublicError::Commit("a removal of no leaf".into()))?;
            if let Ok(key) = leaf::device_key(leaf.credential(), leaf.signature_key().as_slice())
                && admits(&key)
                && !(matches!(sender, mls::Sender::NewMemberCommit) && path_key == Some(key))
            {
                return Err(PublicError::Commit(
                    "the commit removes a device the access list still seats in the room".into(),
                ));
            }
        }
        let committer = match sender {
            mls::Sender::Member(index) => {
                let leaf = group
                    .leaf(index)
                    .ok_or_else(|| PublicError::Commit("no committer leaf".into()))?;
                leaf::check(leaf.credential(), leaf.signature_key().as_slice(), admits)?;
                index
            }
            mls::Sender::NewMemberCommit => {
                if staged.update_path_leaf_node().is_none() {
                    return Err(PublicError::Commit(
                        "an external commit without a path".into(),
                    ));
                }
                group.ext_commit_sender_index(&staged).map_err(state)?
            }
            _ => return Err(PublicError::Commit("a commit by a non-member".into())),
        };

        group
            .merge_commit(provider.storage(), *staged)
            .map_err(state)?;
        let new_epoch = group.group_context().epoch().as_u64();
        if new_epoch != self.epoch + 1 {
            return Err(PublicError::State(
                "the commit did not advance one epoch".into(),
            ));
        }
        check_group_info(&provider, &group, committer, group_info_bytes)?;
        Ok(Staged {
            room: PublicRoom {
                talks: self.talks,
                room: self.room,
                epoch: new_epoch,
                members: members_of(&group)?,
                map: provider.map(),
            },
            added,
        })
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The talks.
    pub fn talks(&self) -> TalksId {
        self.talks
    }

    /// The room.
    pub fn room(&self) -> RoomId {
        self.room
    }

    /// The device keys of the room's members (leaf identities, leaf order).
    pub fn members(&self) -> Vec<PublicKey> {
        self.members.clone()
    }

    /// The canonical encoding: version, talks, room, epoch, storage map
    /// (sorted).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(PUBLIC_ROOM_VERSION);
        w.raw(self.talks.as_bytes());
        w.raw(self.room.as_bytes());
        w.u64(self.epoch);
        write_map(&mut w, &self.map);
        w.into_bytes()
    }

    /// Reads [`PublicRoom::to_bytes`], checking that the stored group is this
    /// room's at this epoch.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PublicError> {
        let mut r = Reader::new(bytes);
        r.version("public room version", PUBLIC_ROOM_VERSION)?;
        let talks = TalksId(r.array("talks")?);
        let room = RoomId(r.array("room")?);
        let epoch = r.u64("epoch")?;
        let map = read_map(&mut r)?;
        r.finish()?;
        let mut out = PublicRoom {
            talks,
            room,
            epoch,
            members: vec![],
            map,
        };
        let provider = Provider::with_map(&out.map);
        let group = out.load(&provider)?;
        if group.group_context().epoch().as_u64() != epoch {
            return Err(PublicError::State(
                "stored epoch differs from the group's".into(),
            ));
        }
        out.members = members_of(&group)?;
        Ok(out)
    }
}

/// Checks the GroupInfo sent with a commit against the merged state.
fn check_group_info(
    provider: &Provider,
    group: &mls::PublicGroup,
    committer: mls::LeafNodeIndex,
    bytes: &[u8],
) -> Result<(), PublicError> {
    let (framing, gi) = group_info(bytes)?;
    let Framing::GroupInfo { epoch, .. } = framing else {
        return Err(PublicError::WrongMessage("a GroupInfo"));
    };
    if gi.group_id() != group.group_id() {
        return Err(PublicError::WrongRoom);
    }
    let expected = group.group_context().epoch().as_u64();
    if epoch != expected {
        return Err(PublicError::WrongEpoch {
            expected,
            got: epoch,
        });
    }
    // GroupInfoTBS = group_context ‖ extensions ‖ confirmation_tag ‖ signer:
    // the confirmation tag and signer index are read off the encoding (OpenMLS
    // does not expose them).
    let serialized = gi.tls_serialize_detached().map_err(state)?;
    let offset = gi.group_context().tls_serialized_len() + gi.extensions().tls_serialized_len();
    let tag = group
        .confirmation_tag()
        .tls_serialize_detached()
        .map_err(state)?;
    let after_tag = offset + tag.len();
    if serialized.get(offset..after_tag) != Some(tag.as_slice()) {
        return Err(PublicError::GroupInfoMismatch("confirmation tag"));
    }
    let signer = serialized
        .get(after_tag..after_tag + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or(PublicError::GroupInfoMismatch("truncated"))?;
    if signer != committer.u32() {
        return Err(PublicError::GroupInfoMismatch(
            "not signed by the committer",
        ));
    }
    let committer_leaf = group
        .leaf(committer)
        .ok_or(PublicError::GroupInfoMismatch("no committer leaf"))?;
    let key = mls::OpenMlsSignaturePublicKey::new(
        committer_leaf.signature_key().as_slice().to_vec().into(),
        SignatureScheme::ED25519,
    )
    .map_err(state)?;
    let gi = gi
        .verify(provider.crypto(), &key)
        .map_err(|_| PublicError::GroupInfoMismatch("signature"))?;
    if gi.group_context() != group.group_context() {
        return Err(PublicError::GroupInfoMismatch("group context"));
    }
    if gi.extensions().external_pub().is_none() {
        return Err(PublicError::NoExternalPub);
    }
    let tree = gi
        .extensions()
        .ratchet_tree()
        .ok_or(PublicError::NoRatchetTree)?
        .ratchet_tree()
        .tls_serialize_detached()
        .map_err(state)?;
    let ours = group
        .export_ratchet_tree()
        .tls_serialize_detached()
        .map_err(state)?;
    if tree != ours {
        return Err(PublicError::GroupInfoMismatch("ratchet tree"));
    }
    Ok(())
}

/// A validated commit: the room's next public state, and the devices it
/// adds with the references of their key packages.
#[derive(Clone)]
pub struct Staged {
    /// The state after the commit.
    pub room: PublicRoom,
    /// (device key, KeyPackageRef) of each Add, in proposal order.
    pub added: Vec<(PublicKey, Vec<u8>)>,
}

/// What the node keeps of an uploaded key package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageInfo {
    /// Its `KeyPackageRef` (what a Welcome names).
    pub reference: Vec<u8>,
    /// The end of its lifetime (seconds since the Unix epoch).
    pub not_after: u64,
    /// Whether it is a last-resort key package (reusable).
    pub last_resort: bool,
}

/// Validates an uploaded KeyPackage (an `MLSMessage`): [`CIPHERSUITE`], its
/// signature, its leaf (credential identity = signature key = `device`), a
/// lifetime `[not_before, not_after)` that covers `now` and is no longer
/// than `max_lifetime` seconds.
///
/// OpenMLS's own validation also compares the lifetime with the system
/// clock (it cannot be told the time): a key package outside its lifetime
/// by the system clock is refused as [`PublicError::KeyPackage`] whatever
/// `now` says.
pub fn check_key_package(
    bytes: &[u8],
    device: &PublicKey,
    now: u64,
    max_lifetime: u64,
) -> Result<KeyPackageInfo, PublicError> {
    let framing = framing::read_framing(bytes)?;
    if framing != Framing::KeyPackage {
        return Err(PublicError::WrongMessage("a key package"));
    }
    let mls::MlsMessageBodyIn::KeyPackage(kp) = framing::decode(bytes)?.extract() else {
        return Err(PublicError::WrongMessage("a key package"));
    };
    let crypto = openmls_rust_crypto::RustCrypto::default();
    let kp = kp
        .validate(&crypto, mls::ProtocolVersion::Mls10)
        .map_err(|e| PublicError::KeyPackage(e.to_string()))?;
    if kp.ciphersuite() != CIPHERSUITE {
        return Err(FramingError::WrongCiphersuite(u16::from(kp.ciphersuite())).into());
    }
    let leaf = kp.leaf_node();
    let key = leaf::device_key(leaf.credential(), leaf.signature_key().as_slice())?;
    if key != *device {
        return Err(PublicError::WrongDevice);
    }
    let lifetime = kp.life_time();
    let (not_before, not_after) = (lifetime.not_before(), lifetime.not_after());
    if now < not_before || now >= not_after {
        return Err(PublicError::Expired {
            not_before,
            not_after,
            now,
        });
    }
    if not_after - not_before > max_lifetime {
        return Err(PublicError::LifetimeTooLong {
            lifetime: not_after - not_before,
            max: max_lifetime,
        });
    }
    Ok(KeyPackageInfo {
        reference: kp.hash_ref(&crypto).map_err(state)?.as_slice().to_vec(),
        not_after,
        last_resort: kp.last_resort(),
    })
}
