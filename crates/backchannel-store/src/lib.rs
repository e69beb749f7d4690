//! The mediator node's storage contract.
//!
//! The node keeps no authoritative state in memory: sequence counters,
//! idempotency keys, access lists, receipts, integrated tree hashes and
//! checkpoints are rows behind this trait, and live fan-out is driven by
//! [`Store::subscribe`], so several nodes can later share one PostgreSQL
//! without a rewrite. Every backend passes the one conformance suite in
//! [`conformance`] (the SQLite backend in `backchannel-store-sqlite`, the
//! PostgreSQL backend in `backchannel-store-postgres`, the in-memory
//! backend with a crash model in [`memory`]).
//!
//! # Contract (storage version 4)
//!
//! - **Durability.** A method that returns `Ok` has made its writes
//!   durable (fsync or the backend's equivalent). [`Store::sequence`]
//!   returning `Ok` is what the node's acknowledgement stands on.
//! - **Atomicity.** Each method is one transaction: after a crash at any
//!   point, either all of its writes are visible or none.
//! - **A missing value is `Ok(None)`** (or an empty list), never an error.
//! - **Sequencing.** Per talks, seqs are dense from 0 and are leaf indexes;
//!   node timestamps never decrease along a log (`max(previous, clock)`).
//!   Idempotency keys are scoped to (talks, sender) and stored with the
//!   envelope, so a retry after a restart still finds its original.
//! - **Purging** removes a body and keeps everything else, so proofs and
//!   receipts keep verifying.
//! - **Notifications are wake-ups.** [`Store::subscribe`] says that a talks
//!   has grown; subscribers read by seq from what they last delivered, and
//!   a lagged subscriber re-reads everything after its last seq. A store
//!   notifies its own subscribers of its own writes after they are durable
//!   and before `sequence` returns; writes by other processes (several nodes
//!   on one database) arrive eventually or, after a crash or a cancelled
//!   call, not at all — so subscribers also poll by seq. No order among the
//!   talks of one batch is promised.
//! - **An unknown outcome.** `Unavailable` means the call's outcome is
//!   unknown: it may or may not have committed. Callers retry the same
//!   operation and re-read before treating `Stale` or `TalksExists` on the
//!   retry as a real conflict (sequencing needs no care: the idempotency
//!   key makes the retry safe).
//! - **Bounded requests.** A read returns at most [`MAX_READ`] rows and
//!   [`MAX_READ_BYTES`] of headers and bodies (but always one row if any
//!   is there); [`Store::tree_hashes`] takes at most [`MAX_TREE_HASHES`]
//!   indexes, all inside the integrated tree. Asking for more is `Limit`,
//!   so a request a peer chose never makes stored data look `Corrupt`.
//! - **Numbers fit in 63 bits.** Seqs, timestamps and versions are below
//!   2^63 (what PostgreSQL's and SQLite's signed 64-bit integers hold); a
//!   larger value is refused with `Limit`.
//! - **Receipt batch time.** A batch's receipt is signed at `clock_ms` as
//!   given, which may be earlier than its records' node timestamps when the
//!   clock went backwards; clients must not treat that as an error.
//! - **Atomic MLS gates.** A submission may carry a [`Gate`]: the RFC 9420
//!   sequencing rules of its room, checked inside the `sequence`
//!   transaction (never in node memory), so they hold with several nodes on
//!   one database. Per submission, in batch order: the access-list version
//!   first (a key off the current list learns nothing, not even whether
//!   its retry landed), then the idempotency lookup (a retry that landed
//!   gets its placement back whatever the room's epoch is now), then the
//!   gate, then a seq. A room's group is created
//!   once (epoch 0); a commit is sequenced only from the room's current
//!   epoch and only if that epoch has no commit yet, and it moves the room
//!   to the next epoch with the new public state and GroupInfo in the same
//!   transaction; application messages and proposals only in the current
//!   epoch; a Welcome only if its commit won its epoch. Gates see the
//!   effects of earlier submissions of the same batch. A refused gate is an
//!   [`Outcome`] (`EpochTaken`, `StaleEpoch`, `NoGroup`,
//!   `WelcomeOrphaned`), writes nothing for that submission and takes no
//!   seq (seqs stay dense). Which seq and header hash committed each epoch
//!   is recorded, so the loser of a commit race learns the winner's seq.
//!   The store sees only bytes: it parses no MLS.
//! - **Access checked in the transaction.** A submission that names the
//!   access-list version it was validated against
//!   ([`Submission::access_version`]) is sequenced only while the talks'
//!   list still has that version, read in the `sequence` transaction (with
//!   several nodes, under a lock that a list replacement waits for);
//!   otherwise its outcome is [`Outcome::AccessChanged`], nothing is
//!   written for it and it takes no seq. So a list replacement and a
//!   sequencing are ordered: an envelope validated under a list that a
//!   revocation replaced is never sequenced after that revocation.
//! - **Welcome audience.** A Welcome is stored with the device keys whose
//!   key packages it names ([`StoredEnvelope::welcome_to`]); the node serves
//!   its body to those only (the store just keeps the list).
//! - **Key packages.** Per talks and device, at most
//!   [`MAX_KEY_PACKAGES_PER_DEVICE`] packages, uploaded idempotently (a
//!   reference already stored is ignored), at most one of them the
//!   device's last-resort package (a new one replaces it). A claim takes
//!   one valid package in one transaction: an ordinary one is deleted as it
//!   is handed out (so it is never handed out twice), the last-resort one
//!   is handed out and kept; expired packages are deleted on the way.
//!   Claims are counted per (claimer, device) in a window, in the same
//!   transaction, so the limit holds across nodes.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod memory;

use std::future::Future;

use backchannel_codec::{PartyId, RoomId, TalksId};
use backchannel_crypto::{Digest, KeyId, Signer};
use thiserror::Error;
use tokio::sync::broadcast;

/// The version of this contract. Backends record the schema version they
/// migrated to; a node refuses a database whose version it does not know.
pub const STORAGE_VERSION: u32 = 4;

/// How many envelopes one call to [`Store::sequence`] may hold: the receipt
/// batch limit of the log format.
// 4096 fits every `usize`, so the cast cannot truncate.
pub const MAX_SEQUENCE_BATCH: usize = backchannel_tlog::MAX_BATCH_SIZE as usize;

/// The largest seq, timestamp or version a store accepts: 2^63 − 1, what a
/// signed 64-bit database integer holds.
pub const MAX_NUMBER: u64 = i64::MAX as u64;

/// How many envelopes one read returns at most.
pub const MAX_READ: usize = 1000;

/// How many bytes of envelopes (header plus body, summed over the rows) one
/// read returns at most, unless its first row alone is larger.
///
/// 16 MiB: [`MAX_READ`] rows of bodies up to 1 MiB
/// (`backchannel_statement::header::MAX_BODY`) could otherwise make one
/// read — often asked for by a peer catching up — hold about 1 GiB in
/// memory. 16 MiB still holds sixteen maximal bodies, or [`MAX_READ`] rows of
/// typical small ones, so paging stays cheap, and a page always makes
/// progress because its first row is returned whatever its size.
pub const MAX_READ_BYTES: usize = 16 << 20;

/// How many indexes one call to [`Store::tree_hashes`] may ask for.
///
/// 4096: an inclusion or consistency proof needs at most a few hundred
/// stored hashes (about two per level of a tree of up to 2^63 leaves), and
/// a full tlog tile is 256 hashes, so this is far above any honest request
/// while bounding the lookups (and the response) one peer-chosen request
/// can cause. It matches [`MAX_SEQUENCE_BATCH`], the other per-call bound.
pub const MAX_TREE_HASHES: usize = 4096;

/// How many notifications a slow subscriber may lag before it is told to
/// re-read ([`broadcast::error::RecvError::Lagged`]).
pub const SUBSCRIPTION_BUFFER: usize = 4096;

/// Why a storage operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The talks does not exist.
    #[error("unknown talks")]
    UnknownTalks,
    /// The talks already exists.
    #[error("the talks already exists")]
    TalksExists,
    /// A compare-and-swap found another value (someone else changed it).
    #[error("the stored value changed since it was read")]
    Stale,
    /// The request breaks a limit of the contract.
    #[error("{0}")]
    Limit(&'static str),
    /// The backend crashed (the in-memory crash model) or lost its
    /// connection: the call's outcome is unknown (see the crate docs).
    #[error("storage crashed or is unreachable: {0}")]
    Unavailable(String),
    /// Signing the batch receipt failed; nothing was written.
    #[error("signing the receipt failed: {0}")]
    Sign(String),
    /// Stored data does not decode or breaks an invariant (corruption or
    /// tampering): the node must stop serving that talks and alert.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The row to create already exists (an invitation's token hash).
    #[error("it already exists")]
    Exists,
    /// A party's blob quota would be exceeded; nothing was written.
    #[error("the party's blob quota would be exceeded")]
    Quota,
    /// A fenced write ([`Fence`]) whose lease has moved to a later epoch:
    /// another node holds the role now; nothing was written.
    #[error("the lease moved to another holder; nothing was written")]
    Fenced,
    /// Any other backend error.
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// A talks as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TalksRecord {
    /// Its id.
    pub talks: TalksId,
    /// The creator key (from the node's creators file) that opened it.
    pub creator: KeyId,
    /// When it was opened (node time, Unix ms).
    pub created_at: u64,
}

/// The current access list of a talks, as canonical bytes with its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessListRecord {
    /// Canonical encoding (`backchannel_statement::AccessList`).
    pub bytes: Vec<u8>,
    /// Its SHA-256.
    pub hash: Digest,
    /// How many times it has changed since the talks opened (0 = initial).
    pub version: u64,
}

/// One envelope the node has validated and wants sequenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The talks.
    pub talks: TalksId,
    /// The room (from the header).
    pub room: RoomId,
    /// The sending key (from the header; the connection's key).
    pub sender: KeyId,
    /// The header's idempotency key.
    pub idempotency_key: [u8; 16],
    /// The canonical signed header (223 bytes).
    pub header: Vec<u8>,
    /// SHA-256 of `header`.
    pub header_hash: Digest,
    /// The padded body.
    pub body: Vec<u8>,
    /// SHA-256 of `body` (equal to the header's body hash).
    pub body_hash: Digest,
    /// How its room's MLS epoch gates it (`None`: not gated — acks,
    /// alerts, ticks and everything outside MLS rooms).
    pub gate: Option<Gate>,
    /// The version of the access list the node validated it against
    /// (`None`: not checked here — the node's own ticks and timers).
    /// [`Store::sequence`] refuses it with [`Outcome::AccessChanged`] if
    /// the talks' list has another version in its transaction, so an
    /// envelope is never sequenced under a list that no longer admits it
    /// (a revocation that commits first wins), and the node may validate
    /// against a cached list.
    pub access_version: Option<u64>,
}

/// How an MLS submission is gated by its room's epoch (RFC 9420 §14),
/// checked by [`Store::sequence`] in its transaction. The node parses the
/// MLS message and hands the store the epochs and opaque bytes; the store
/// parses nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Creates the room's group (epoch 0): only if the room has no group
    /// yet (`EpochTaken` naming the creating envelope otherwise).
    Create {
        /// The group's public state and GroupInfo at epoch 0.
        state: RoomStateUpdate,
    },
    /// A commit from `epoch`: only if the room's epoch is `epoch` and no
    /// commit for `epoch` exists; moves the room to `epoch + 1` with
    /// `state`.
    Commit {
        /// The epoch the commit was made in (the one it leaves).
        epoch: u64,
        /// The group's public state and GroupInfo at `epoch + 1`.
        state: RoomStateUpdate,
    },
    /// An application message or a proposal: only if the room's epoch is
    /// `epoch`.
    Epoch {
        /// The epoch it was sent in.
        epoch: u64,
    },
    /// A Welcome: only if the commit that left `commit_epoch` (the one the
    /// room's epoch `commit_epoch + 1` came from) has header hash `commit`.
    Welcome {
        /// The epoch the Welcome's commit left.
        commit_epoch: u64,
        /// The header hash of the Welcome's commit.
        commit: Digest,
        /// The device keys whose key packages the Welcome names: only they
        /// get its body, everyone else of the room the header alone.
        to: Vec<KeyId>,
    },
}

impl Gate {
    /// The epoch whose recorded commit deciding this gate needs: a
    /// commit's own epoch (has it been taken?), a Welcome's
    /// `commit_epoch` (did its commit win?).
    pub fn commit_epoch(&self) -> Option<u64> {
        match self {
            Gate::Commit { epoch, .. } => Some(*epoch),
            Gate::Welcome { commit_epoch, .. } => Some(*commit_epoch),
            Gate::Create { .. } | Gate::Epoch { .. } => None,
        }
    }
}

/// A room's new MLS state, carried by a [`Gate::Create`] or
/// [`Gate::Commit`] and stored in the same transaction as the envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomStateUpdate {
    /// The group's public state (opaque to the store).
    pub public_group: Vec<u8>,
    /// The group's GroupInfo (opaque to the store).
    pub group_info: Vec<u8>,
}

/// A room's MLS state as stored ([`Store::room_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomState {
    /// The room's current epoch (0 after the create, + 1 per commit).
    pub epoch: u64,
    /// The public state of the group at `epoch`.
    pub public_group: Vec<u8>,
    /// The GroupInfo of the group at `epoch`.
    pub group_info: Vec<u8>,
    /// The seq of the envelope that created the group.
    pub created_seq: u64,
}

/// The commit that left an epoch of a room, as recorded by
/// [`Store::sequence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomCommit {
    /// Its seq.
    pub seq: u64,
    /// Its header hash.
    pub header_hash: Digest,
}

/// The outcome of a submission whose validated access-list version
/// ([`Submission::access_version`]) is not `current`, the talks' version
/// read in the sequencing transaction: [`Outcome::AccessChanged`], checked
/// before the idempotency lookup so that a key off the current list learns
/// nothing, not even of its retries. `None` when it may go on (or names no
/// version). A backend that did not read `current` for a submission naming
/// a version has lost track of its own reads: an error, nothing written.
pub fn access_changed(
    validated: Option<u64>,
    current: Option<u64>,
) -> Result<Option<Outcome>, StoreError> {
    let Some(validated) = validated else {
        return Ok(None);
    };
    let Some(current) = current else {
        return Err(StoreError::Backend(
            "sequence: lost an access list version".into(),
        ));
    };
    Ok((validated != current).then_some(Outcome::AccessChanged { version: current }))
}

/// The gate rule every backend applies in [`Store::sequence`], after the
/// idempotency lookup missed: given the room's state (`None`: no group)
/// and the recorded commit of [`Gate::commit_epoch`] (`None`: none, or the
/// gate needs none), `Ok(())` to sequence, or the refusal.
pub fn check_gate(
    gate: &Gate,
    room: Option<&RoomState>,
    commit: Option<RoomCommit>,
) -> Result<(), Outcome> {
    let Some(room) = room else {
        return match gate {
            Gate::Create { .. } => Ok(()),
            _ => Err(Outcome::NoGroup),
        };
    };
    match gate {
        Gate::Create { .. } => Err(Outcome::EpochTaken {
            seq: room.created_seq,
        }),
        Gate::Commit { epoch, .. } => match commit {
            Some(c) => Err(Outcome::EpochTaken { seq: c.seq }),
            None if *epoch != room.epoch => Err(Outcome::StaleEpoch { epoch: room.epoch }),
            None => Ok(()),
        },
        Gate::Epoch { epoch } if *epoch != room.epoch => {
            Err(Outcome::StaleEpoch { epoch: room.epoch })
        }
        Gate::Epoch { .. } => Ok(()),
        Gate::Welcome { commit: hash, .. } => match commit {
            Some(c) if c.header_hash == *hash => Ok(()),
            _ => Err(Outcome::WelcomeOrphaned),
        },
    }
}

/// A room's new state after a gated submission that passed [`check_gate`]
/// (against `room`) was given `seq`, with the commit to record for the
/// epoch it leaves: what a [`Gate::Create`] or [`Gate::Commit`] writes.
/// `None` for the gates that change no room state.
pub fn gate_effect(
    gate: &Gate,
    room: Option<&RoomState>,
    seq: u64,
    header_hash: Digest,
) -> Option<(RoomState, Option<(u64, RoomCommit)>)> {
    match gate {
        Gate::Create { state } => Some((
            RoomState {
                epoch: 0,
                public_group: state.public_group.clone(),
                group_info: state.group_info.clone(),
                created_seq: seq,
            },
            None,
        )),
        // `check_gate` passed, so the room exists and is at `epoch`, which
        // is below 2^63 (every epoch took a seq).
        Gate::Commit { epoch, state } => Some((
            RoomState {
                epoch: epoch.saturating_add(1),
                public_group: state.public_group.clone(),
                group_info: state.group_info.clone(),
                created_seq: room.map_or(seq, |r| r.created_seq),
            },
            Some((*epoch, RoomCommit { seq, header_hash })),
        )),
        Gate::Epoch { .. } | Gate::Welcome { .. } => None,
    }
}

/// What became of one submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Sequenced now, or earlier under the same idempotency key with the
    /// same header hash (a retry): either way, here is its place.
    Sequenced(Placement),
    /// The idempotency key was used before for a different header.
    Conflict {
        /// The seq of the envelope that holds the key.
        seq: u64,
    },
    /// Refused by its gate: a [`Gate::Create`] for a room whose group
    /// exists, or a [`Gate::Commit`] for an epoch that already has a
    /// commit. Nothing was written for it.
    EpochTaken {
        /// The seq of the envelope that took it: the group's creation, or
        /// the epoch's winning commit.
        seq: u64,
    },
    /// Refused by its gate: a [`Gate::Epoch`] or [`Gate::Commit`] for an
    /// epoch that is not the room's current one (behind it, or ahead).
    /// Nothing was written for it.
    StaleEpoch {
        /// The room's current epoch.
        epoch: u64,
    },
    /// Refused by its gate: the room has no group yet (any gate but
    /// [`Gate::Create`]). Nothing was written for it.
    NoGroup,
    /// Refused by its gate: a [`Gate::Welcome`] whose commit did not win
    /// its epoch (or is not there). Nothing was written for it.
    WelcomeOrphaned,
    /// Refused: the talks' access list is no longer the version the
    /// submission was validated against ([`Submission::access_version`]).
    /// Nothing was written for it; validate it against the current list
    /// and submit it again.
    AccessChanged {
        /// The access list's current version.
        version: u64,
    },
}

/// Where an envelope sits in its log, and its receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Its seq (leaf index).
    pub seq: u64,
    /// The node's timestamp (Unix ms).
    pub node_time: u64,
    /// Its leaf hash.
    pub leaf_hash: Digest,
    /// Its receipt, canonically encoded (`backchannel_tlog::Receipt`).
    pub receipt: Vec<u8>,
}

/// An envelope as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// The talks.
    pub talks: TalksId,
    /// Its seq.
    pub seq: u64,
    /// The node's timestamp (Unix ms).
    pub node_time: u64,
    /// The room.
    pub room: RoomId,
    /// The sender.
    pub sender: KeyId,
    /// The canonical signed header.
    pub header: Vec<u8>,
    /// The body, unless purged.
    pub body: Option<Vec<u8>>,
    /// SHA-256 of the body (kept after a purge).
    pub body_hash: Digest,
    /// The leaf hash.
    pub leaf_hash: Digest,
    /// The receipt, canonically encoded.
    pub receipt: Vec<u8>,
    /// For a Welcome ([`Gate::Welcome`]), the device keys whose key
    /// packages it names, as submitted: only they get its body. `None` for
    /// every other envelope.
    pub welcome_to: Option<Vec<KeyId>>,
}

impl StoredEnvelope {
    /// The log leaf of this envelope, rebuilt from the stored row with the
    /// header re-hashed (never the stored leaf hash): what integration
    /// hashes into the tree and what data tiles serve.
    pub fn leaf(&self) -> backchannel_tlog::LeafData {
        leaf_data(
            self.seq,
            self.node_time,
            self.room,
            &self.header,
            self.body_hash,
        )
    }
}

/// A log leaf rebuilt from a stored row's columns, the header re-hashed.
fn leaf_data(
    seq: u64,
    node_time: u64,
    room: RoomId,
    header: &[u8],
    body_hash: Digest,
) -> backchannel_tlog::LeafData {
    backchannel_tlog::LeafData {
        seq,
        timestamp_ms: node_time,
        room,
        header_hash: backchannel_crypto::sha256(header),
        body_hash,
    }
}

/// What a log leaf is built from, as stored: an envelope's row without its
/// body, receipt and audience ([`Store::leaves`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLeaf {
    /// Its seq.
    pub seq: u64,
    /// The node's timestamp (Unix ms).
    pub node_time: u64,
    /// The room.
    pub room: RoomId,
    /// The canonical signed header.
    pub header: Vec<u8>,
    /// SHA-256 of the body.
    pub body_hash: Digest,
    /// The stored leaf hash.
    pub leaf_hash: Digest,
}

impl StoredLeaf {
    /// The log leaf, rebuilt with the header re-hashed (never the stored
    /// leaf hash), exactly as [`StoredEnvelope::leaf`] rebuilds it.
    pub fn leaf(&self) -> backchannel_tlog::LeafData {
        leaf_data(
            self.seq,
            self.node_time,
            self.room,
            &self.header,
            self.body_hash,
        )
    }
}

impl From<StoredEnvelope> for StoredLeaf {
    fn from(e: StoredEnvelope) -> Self {
        Self {
            seq: e.seq,
            node_time: e.node_time,
            room: e.room,
            header: e.header,
            body_hash: e.body_hash,
            leaf_hash: e.leaf_hash,
        }
    }
}

/// A signed checkpoint as stored, with the cosignatures gathered for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// Tree size.
    pub size: u64,
    /// The checkpoint as a signed note, with every cosignature line
    /// gathered so far appended (C2SP signed-note).
    pub note: Vec<u8>,
}

/// An invitation to a talks, as stored: a one-time token (kept only as its
/// hash) that lets its redeemer's key enrol as the talks authority of one
/// party (see `docs/formats.md`, "Invitations and enrolment").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationRecord {
    /// SHA-256 of the one-time token (the token itself is never stored).
    pub token_hash: Digest,
    /// The party whose talks authority the redeemer becomes.
    pub party: PartyId,
    /// After this node time (Unix ms) the token can no longer be redeemed.
    pub expires_at: u64,
    /// The invitation as the mediator signed it (canonical bytes).
    pub invitation: Vec<u8>,
    /// When it was created (node time, Unix ms).
    pub created_at: u64,
    /// Its redemption, once redeemed.
    pub redeemed: Option<Redemption>,
}

/// The redemption of an invitation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redemption {
    /// The key that redeemed it (now on the access list).
    pub key: KeyId,
    /// When (node time, Unix ms).
    pub at: u64,
    /// An opaque enrolment payload for the mediator (at most
    /// [`MAX_ENROLMENT_PAYLOAD`] bytes).
    pub payload: Vec<u8>,
}

/// The largest enrolment payload a redemption carries (64 KiB).
pub const MAX_ENROLMENT_PAYLOAD: usize = 64 << 10;

/// How many invitations a talks may hold (redeemed or not).
pub const MAX_INVITATIONS: usize = 1024;

/// An access-list change waiting for more signatures, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingChange {
    /// SHA-256 of the canonical delta (its identity).
    pub delta_hash: Digest,
    /// The canonical change (`backchannel_statement::AccessListChange`):
    /// the delta with every signature gathered so far.
    pub change: Vec<u8>,
}

/// How many pending changes a talks may hold at once.
pub const MAX_PENDING_CHANGES: usize = 64;

/// The size of every blob chunk but the last (1 MiB).
pub const BLOB_CHUNK: u64 = 1 << 20;

/// A blob (an encrypted attachment) as stored, without its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    /// SHA-256 of its content (its address).
    pub hash: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The party it counts against.
    pub party: PartyId,
    /// The key that created it.
    pub uploader: KeyId,
    /// When it was created (node time, Unix ms).
    pub created_at: u64,
    /// Whether every chunk is stored and the content hash was checked.
    pub complete: bool,
    /// The rooms that reference it, sorted, unique (at least one).
    pub rooms: Vec<RoomId>,
}

impl BlobRecord {
    /// How many chunks a blob of `size` bytes has (0 for an empty blob).
    pub fn chunk_count(size: u64) -> u64 {
        size.div_ceil(BLOB_CHUNK)
    }

    /// The length chunk `index` of a blob of `size` bytes must have, or
    /// `None` past the last chunk.
    pub fn chunk_len(size: u64, index: u64) -> Option<u64> {
        let start = index.checked_mul(BLOB_CHUNK)?;
        (start < size).then(|| (size - start).min(BLOB_CHUNK))
    }
}

/// How many key packages one device may have stored in one talks, its
/// last-resort package included.
pub const MAX_KEY_PACKAGES_PER_DEVICE: usize = 64;

/// The largest key package (16 KiB).
pub const MAX_KEY_PACKAGE_BYTES: usize = 16 << 10;

/// The longest key package reference (64 bytes: a hash reference of any
/// MLS cipher suite).
pub const MAX_KEY_PACKAGE_REFERENCE: usize = 64;

/// An MLS key package of one device, as stored (opaque to the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageRecord {
    /// Its reference (RFC 9420 `KeyPackageRef`): 1 to
    /// [`MAX_KEY_PACKAGE_REFERENCE`] bytes, unique per device.
    pub reference: Vec<u8>,
    /// The key package, at most [`MAX_KEY_PACKAGE_BYTES`].
    pub bytes: Vec<u8>,
    /// The end of its validity (Unix seconds): valid at `now` while
    /// `not_after >= now`.
    pub not_after: u64,
    /// Whether it is the device's last-resort package (handed out when no
    /// other is left, and kept).
    pub last_resort: bool,
}

/// The argument checks every backend makes in [`Store::put_key_packages`]
/// before reading anything: each reference is 1 to
/// [`MAX_KEY_PACKAGE_REFERENCE`] bytes, each package at most
/// [`MAX_KEY_PACKAGE_BYTES`], `not_after` below 2^63, at most
/// [`MAX_KEY_PACKAGES_PER_DEVICE`] packages and at most one last-resort
/// package per call (`Limit` otherwise).
pub fn check_key_packages(packages: &[KeyPackageRecord]) -> Result<(), StoreError> {
    if packages.len() > MAX_KEY_PACKAGES_PER_DEVICE {
        return Err(StoreError::Limit(
            "a device holds at most MAX_KEY_PACKAGES_PER_DEVICE key packages",
        ));
    }
    if packages.iter().filter(|p| p.last_resort).count() > 1 {
        return Err(StoreError::Limit(
            "one upload carries at most one last-resort key package",
        ));
    }
    for p in packages {
        if p.reference.is_empty() || p.reference.len() > MAX_KEY_PACKAGE_REFERENCE {
            return Err(StoreError::Limit(
                "a key package reference has 1 to MAX_KEY_PACKAGE_REFERENCE bytes",
            ));
        }
        if p.bytes.len() > MAX_KEY_PACKAGE_BYTES {
            return Err(StoreError::Limit(
                "a key package holds at most MAX_KEY_PACKAGE_BYTES bytes",
            ));
        }
        if p.not_after > MAX_NUMBER {
            return Err(StoreError::Limit("times are below 2^63"));
        }
    }
    Ok(())
}

/// The packages of an upload that [`Store::put_key_packages`] stores,
/// given the references the device already has: each in upload order,
/// skipping a reference already stored or already earlier in the upload
/// (an idempotent upload).
pub fn new_key_packages(
    packages: &[KeyPackageRecord],
    stored: impl Fn(&[u8]) -> bool,
) -> Vec<&KeyPackageRecord> {
    let mut out: Vec<&KeyPackageRecord> = Vec::with_capacity(packages.len());
    for p in packages {
        if !stored(&p.reference) && !out.iter().any(|q| q.reference == p.reference) {
            out.push(p);
        }
    }
    out
}

/// The claim counter of one (claimer, device) pair at `now`, given the
/// stored one (`(window start, claims)`): the counter after this claim, or
/// `Limit` if `max_claims` were already made in the window
/// `[now - window_s, now]` (an older window starts afresh at `now`).
pub fn count_claim(
    stored: Option<(u64, u32)>,
    now: u64,
    max_claims: u32,
    window_s: u64,
) -> Result<(u64, u32), StoreError> {
    let (start, claims) = match stored {
        Some((start, claims)) if now.saturating_sub(start) <= window_s => (start, claims),
        _ => (now, 0),
    };
    if claims >= max_claims {
        return Err(StoreError::Limit(
            "too many key package claims for this device in the window",
        ));
    }
    Ok((start, claims + 1))
}

/// A talks has grown: every seq below `size` is readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The talks.
    pub talks: TalksId,
    /// Its new log size (next seq).
    pub size: u64,
}

/// A subscription to [`Appended`] notifications.
pub type Subscription = broadcast::Receiver<Appended>;

/// How many tree hashes a tree of `n` leaves stores, in tlog-tiles storage
/// order (`tlog_tiles::stored_hash_count`): leaf `i` adds
/// `1 + trailing_ones(i)` hashes, which sums to `2n − popcount(n)`; it is
/// also the first index a tree of `n` leaves lacks. `n` is below 2^63
/// ([`MAX_NUMBER`]), so this cannot overflow.
pub fn stored_hash_count(n: u64) -> u64 {
    2 * n - u64::from(n.count_ones())
}

/// The argument check every backend makes in [`Store::integrate`]: the
/// hashes must be exactly the stored hashes leaves `[from, to)` add, each
/// once, so that an integrator that forgets one is caught at once, not by
/// a later read.
pub fn check_integration_hashes(
    from: u64,
    to: u64,
    hashes: &[(u64, Digest)],
) -> Result<(), StoreError> {
    let range = stored_hash_count(from)..stored_hash_count(to);
    let mut seen: Vec<u64> = hashes.iter().map(|&(i, _)| i).collect();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != hashes.len()
        || seen.len() as u64 != range.end - range.start
        || !seen.iter().all(|i| range.contains(i))
    {
        return Err(StoreError::Limit(
            "integrate: hashes must be exactly the stored hashes leaves [from, to) add",
        ));
    }
    Ok(())
}

/// The argument checks every backend makes in [`Store::create_invitation`]
/// before reading anything: a new invitation is unredeemed and its times
/// fit 63 bits (`Limit` otherwise).
pub fn check_new_invitation(invitation: &InvitationRecord) -> Result<(), StoreError> {
    if invitation.redeemed.is_some() {
        return Err(StoreError::Limit("a new invitation is not redeemed"));
    }
    if invitation.expires_at > MAX_NUMBER || invitation.created_at > MAX_NUMBER {
        return Err(StoreError::Limit("times are below 2^63"));
    }
    Ok(())
}

/// The argument checks every backend makes in [`Store::redeem_invitation`]
/// before reading anything: the payload is at most
/// [`MAX_ENROLMENT_PAYLOAD`] bytes, the time and the next version fit 63
/// bits (`Limit` otherwise).
pub fn check_redemption(
    redemption: &Redemption,
    next: &AccessListRecord,
) -> Result<(), StoreError> {
    if redemption.payload.len() > MAX_ENROLMENT_PAYLOAD {
        return Err(StoreError::Limit(
            "an enrolment payload holds at most MAX_ENROLMENT_PAYLOAD bytes",
        ));
    }
    if redemption.at > MAX_NUMBER || next.version > MAX_NUMBER {
        return Err(StoreError::Limit("times and versions are below 2^63"));
    }
    Ok(())
}

/// The argument checks every backend makes in [`Store::create_blob`]
/// before reading anything: exactly one room, not complete, size and time
/// below 2^63 (`Limit` otherwise). Returns the room.
pub fn check_new_blob(blob: &BlobRecord) -> Result<RoomId, StoreError> {
    let (&[room], false) = (blob.rooms.as_slice(), blob.complete) else {
        return Err(StoreError::Limit(
            "a new blob names exactly one room and is not complete",
        ));
    };
    if blob.size > MAX_NUMBER || blob.created_at > MAX_NUMBER {
        return Err(StoreError::Limit("sizes and times are below 2^63"));
    }
    Ok(room)
}

/// The quota rule of [`Store::create_blob`]: whether a new blob of `size`
/// bytes fits `quota` when the party's blobs in the talks already take
/// `used` bytes. A total above [`MAX_NUMBER`] never fits, whatever the
/// quota: like every stored number, a party's total stays below 2^63 (so a
/// backend can sum sizes in a signed 64-bit integer).
pub fn fits_quota(used: u64, size: u64, quota: u64) -> bool {
    used.checked_add(size)
        .is_some_and(|total| total <= quota.min(MAX_NUMBER))
}

/// The length rule every backend checks in [`Store::put_blob_chunk`]:
/// chunk `index` of a blob of `size` bytes has exactly
/// [`BlobRecord::chunk_len`] bytes (`Limit` otherwise, and for an index
/// past the last chunk).
pub fn check_blob_chunk(size: u64, index: u64, len: usize) -> Result<(), StoreError> {
    match BlobRecord::chunk_len(size, index) {
        None => Err(StoreError::Limit(
            "put_blob_chunk: the index is past the blob's last chunk",
        )),
        Some(want) if want != len as u64 => Err(StoreError::Limit(
            "put_blob_chunk: a chunk must have exactly its length",
        )),
        Some(_) => Ok(()),
    }
}

/// A role only one node may play at a time, held as a [`Lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseName {
    /// The log integrator: the one node that integrates every talks' log
    /// and signs its checkpoints.
    Integrator,
}

impl LeaseName {
    /// The name stored in the lease row.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Integrator => "integrator",
        }
    }
}

/// Who holds a [`LeaseName`], under which epoch, until when.
///
/// The epoch rises by one each time the lease changes hands (and never
/// otherwise), so it is a fencing token: a write made under a lease names
/// its epoch ([`Fence`]) and the store refuses it once the epoch moved on,
/// however long its writer was paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The fencing token (1 for the first holder; 0 only for a lease never
    /// taken, whose holder is all zeroes).
    pub epoch: u64,
    /// The holder's instance id (random per node process).
    pub holder: [u8; 16],
    /// When it expires unless renewed (the holder's clock, Unix ms).
    pub expires_ms: u64,
}

/// The lease a fenced write is made under: the write happens only if the
/// lease `name` still has epoch `epoch` when its transaction runs
/// ([`StoreError::Fenced`] otherwise, and nothing is written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The lease.
    pub name: LeaseName,
    /// The epoch the writer holds it under.
    pub epoch: u64,
}

/// An envelope to be sequenced when it falls due (a timer): a
/// [`Submission`] the node validated when it was scheduled, and the time at
/// or after which it is sequenced. Whichever node finds it due first claims
/// it and sequences it in one transaction ([`Store::fire_due`]), so it is
/// sequenced once however many nodes are alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRecord {
    /// Its id (unique in the store; chosen by the scheduler).
    pub id: [u8; 16],
    /// When it falls due (node clock, Unix ms; at most [`MAX_NUMBER`]).
    pub due_ms: u64,
    /// What is sequenced. Its talks must exist.
    pub submission: Submission,
}

/// A scheduled item that [`Store::fire_due`] claimed, with the outcome of
/// sequencing its submission (an [`Outcome::Sequenced`] placement, or the
/// refusal its gate or idempotency key met then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The item's id.
    pub id: [u8; 16],
    /// Its outcome.
    pub outcome: Outcome,
}

/// How far integration is behind, over every talks ([`Store::integration_lag`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntegrationLag {
    /// Talks with sequenced leaves not yet integrated.
    pub lagging_talks: u64,
    /// The most such leaves any one talks has.
    pub max_leaves: u64,
}

/// How many scheduled items may wait in a store at once
/// ([`Store::schedule`] refuses more with `Limit`).
pub const MAX_SCHEDULED: usize = 100_000;

/// How many due items one [`Store::fire_due`] call claims at most (one
/// sequencing transaction).
pub const MAX_FIRE_BATCH: usize = 256;

/// The lease rule of [`Store::acquire_lease`] every backend applies to
/// the lease as stored (`None`: never taken): the lease to write, or
/// `None` to leave it as it is (another holder's unexpired lease).
/// `holder` holds the lease iff it is the stored holder of an epoch above
/// 0. `Limit` if `now_ms + ttl_ms` passes [`MAX_NUMBER`], or the epoch
/// would.
pub fn next_lease(
    current: Option<Lease>,
    holder: [u8; 16],
    now_ms: u64,
    ttl_ms: u64,
) -> Result<Option<Lease>, StoreError> {
    let expires_ms = now_ms
        .checked_add(ttl_ms)
        .filter(|&e| e <= MAX_NUMBER)
        .ok_or(StoreError::Limit(
            "acquire_lease: now_ms + ttl_ms must be below 2^63",
        ))?;
    match current {
        Some(l) if l.epoch > 0 && l.holder == holder => Ok(Some(Lease { expires_ms, ..l })),
        Some(l) if l.epoch > 0 && l.expires_ms > now_ms => Ok(None),
        _ => {
            let epoch = current
                .map_or(0, |l| l.epoch)
                .checked_add(1)
                .filter(|&e| e <= MAX_NUMBER)
                .ok_or(StoreError::Limit("acquire_lease: the epoch is exhausted"))?;
            Ok(Some(Lease {
                epoch,
                holder,
                expires_ms,
            }))
        }
    }
}

/// The fence check of [`Store::integrate`], given the lease's stored epoch
/// (`None`: never taken): `Fenced` unless it is the fence's. Epoch 0 is
/// never held, so a fence under it is always refused.
pub fn check_fence(fence: Fence, stored_epoch: Option<u64>) -> Result<(), StoreError> {
    match stored_epoch {
        Some(e) if e > 0 && e == fence.epoch => Ok(()),
        _ => Err(StoreError::Fenced),
    }
}

/// The argument check every backend makes in [`Store::schedule`] before
/// reading anything: `due_ms` fits 63 bits (`Limit` otherwise).
pub fn check_scheduled(item: &ScheduledRecord) -> Result<(), StoreError> {
    if item.due_ms > MAX_NUMBER {
        return Err(StoreError::Limit("schedule: due_ms must be below 2^63"));
    }
    Ok(())
}

/// A submission's [`Gate`] as flat columns: how the database backends
/// store the gate of a [`ScheduledRecord`] (all `None` for no gate).
/// `kind` is 1 for a Create, 2 a Commit, 3 an Epoch gate, 4 a Welcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateColumns {
    /// The gate's kind (`None`: no gate).
    pub kind: Option<u8>,
    /// A Commit's or Epoch gate's epoch, a Welcome's commit epoch.
    pub epoch: Option<u64>,
    /// A Create's or Commit's new public group state.
    pub public_group: Option<Vec<u8>>,
    /// A Create's or Commit's new GroupInfo.
    pub group_info: Option<Vec<u8>>,
    /// A Welcome's commit header hash.
    pub commit: Option<Digest>,
    /// A Welcome's audience.
    pub to: Option<Vec<KeyId>>,
}

impl GateColumns {
    /// The columns of `gate`.
    pub fn of(gate: Option<&Gate>) -> Self {
        let update = |kind, epoch, state: &RoomStateUpdate| Self {
            kind: Some(kind),
            epoch,
            public_group: Some(state.public_group.clone()),
            group_info: Some(state.group_info.clone()),
            ..Self::default()
        };
        match gate {
            None => Self::default(),
            Some(Gate::Create { state }) => update(1, None, state),
            Some(Gate::Commit { epoch, state }) => update(2, Some(*epoch), state),
            Some(Gate::Epoch { epoch }) => Self {
                kind: Some(3),
                epoch: Some(*epoch),
                ..Self::default()
            },
            Some(Gate::Welcome {
                commit_epoch,
                commit,
                to,
            }) => Self {
                kind: Some(4),
                epoch: Some(*commit_epoch),
                commit: Some(*commit),
                to: Some(to.clone()),
                ..Self::default()
            },
        }
    }

    /// The gate these columns hold: `Corrupt` if they hold none
    /// consistently.
    pub fn into_gate(self) -> Result<Option<Gate>, StoreError> {
        let corrupt = || StoreError::Corrupt("a scheduled gate's columns disagree".into());
        let Self {
            kind,
            epoch,
            public_group,
            group_info,
            commit,
            to,
        } = self;
        let state = |public_group: Option<Vec<u8>>, group_info: Option<Vec<u8>>| {
            Some(RoomStateUpdate {
                public_group: public_group?,
                group_info: group_info?,
            })
        };
        let gate = match (kind, epoch, commit, to) {
            (None, None, None, None) if public_group.is_none() && group_info.is_none() => None,
            (Some(1), None, None, None) => Some(Gate::Create {
                state: state(public_group, group_info).ok_or_else(corrupt)?,
            }),
            (Some(2), Some(epoch), None, None) => Some(Gate::Commit {
                epoch,
                state: state(public_group, group_info).ok_or_else(corrupt)?,
            }),
            (Some(3), Some(epoch), None, None)
                if public_group.is_none() && group_info.is_none() =>
            {
                Some(Gate::Epoch { epoch })
            }
            (Some(4), Some(commit_epoch), Some(commit), Some(to))
                if public_group.is_none() && group_info.is_none() =>
            {
                Some(Gate::Welcome {
                    commit_epoch,
                    commit,
                    to,
                })
            }
            _ => return Err(corrupt()),
        };
        Ok(gate)
    }
}

/// The node's storage (contract version [`STORAGE_VERSION`]).
pub trait Store: Send + Sync + 'static {
    /// Opens a talks with its initial access list (whose version is 0).
    /// `TalksExists` if the id is taken.
    fn create_talks(
        &self,
        talks: &TalksRecord,
        access_list: &AccessListRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The talks, if it exists.
    fn talks(
        &self,
        talks: TalksId,
    ) -> impl Future<Output = Result<Option<TalksRecord>, StoreError>> + Send;

    /// The current access list (`None` for an unknown talks).
    fn access_list(
        &self,
        talks: TalksId,
    ) -> impl Future<Output = Result<Option<AccessListRecord>, StoreError>> + Send;

    /// Replaces the access list if its current hash is `expected`
    /// (compare-and-swap); `Stale` otherwise. `next.version` must be the
    /// current version + 1. Drops every pending change of the talks.
    fn replace_access_list(
        &self,
        talks: TalksId,
        expected: Digest,
        next: &AccessListRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sequences a batch in one durable transaction: for each submission,
    /// in order, finds an earlier envelope with the same (talks, sender,
    /// idempotency key) — a retry with the same header hash gets the
    /// original's placement back, a different header hash a `Conflict` —
    /// after checking its [`Submission::access_version`], if any, against
    /// the talks' access list (`AccessChanged` if it differs, before the
    /// lookup), and otherwise checks its [`Gate`], if any, against its room's state
    /// as the earlier submissions of the batch left it ([`check_gate`]): a
    /// refused gate is its outcome, and nothing is written for it nor a seq
    /// taken. Otherwise it gets the talks' next seq and a node timestamp of
    /// `max(previous timestamp of that talks, clock_ms)`; a Create or
    /// Commit stores the room's new state and (a commit) which seq and
    /// header hash left the epoch ([`gate_effect`]), and a Welcome is
    /// stored with its audience. The new envelopes of the batch get one
    /// receipt batch signed by `log_key` over their records
    /// (`backchannel_tlog::SignedBatch`), stored with each. Returns one
    /// outcome per submission, in order. All submissions' talks must exist
    /// (`UnknownTalks` otherwise, and nothing is written).
    fn sequence(
        &self,
        batch: Vec<Submission>,
        clock_ms: u64,
        log_key: &(dyn Signer + Sync),
    ) -> impl Future<Output = Result<Vec<Outcome>, StoreError>> + Send;

    /// The next seq of a talks (its log size); 0 for an unknown talks.
    fn log_size(&self, talks: TalksId) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Envelopes of a talks with `from <= seq`, in seq order, at most
    /// `limit` (capped at [`MAX_READ`]). A page also stops before the row
    /// that would take the sum of its rows' header and body bytes past
    /// [`MAX_READ_BYTES`], but always holds at least one row if any is
    /// asked for and exists (so paging by seq always makes progress). A
    /// short page is therefore not the end of the log: callers page on
    /// until a read returns nothing, or compare with [`Store::log_size`].
    fn read(
        &self,
        talks: TalksId,
        from: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredEnvelope>, StoreError>> + Send;

    /// What the log leaves of a talks with `from <= seq` are built from, in
    /// seq order, at most `limit` (capped at [`MAX_READ`]): [`Store::read`]
    /// without the bodies, receipts and audiences, which integration and
    /// data tiles do not need (a leaf commits to the body's hash). Rows are
    /// at most a few hundred bytes, so no byte budget applies: a page
    /// shorter than asked is the end of the log (or rows missing there:
    /// callers compare with [`Store::log_size`]); a gap between returned
    /// rows is `Corrupt`. The default reads whole envelopes; backends read
    /// only these columns.
    fn leaves(
        &self,
        talks: TalksId,
        from: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredLeaf>, StoreError>> + Send {
        async move {
            let limit = limit.min(MAX_READ);
            let mut out: Vec<StoredLeaf> = Vec::with_capacity(limit.min(1024));
            let mut next = from;
            while out.len() < limit {
                let page = self.read(talks, next, limit - out.len()).await?;
                let Some(last) = page.last().map(|e| e.seq) else {
                    break;
                };
                out.extend(page.into_iter().map(StoredLeaf::from));
                next = last
                    .checked_add(1)
                    .ok_or(StoreError::Corrupt("a seq beyond the largest".into()))?;
            }
            Ok(out)
        }
    }

    /// Removes the body of one envelope, keeping its hash, header, leaf and
    /// receipt. `Ok(false)` if there was no such envelope or it was
    /// already purged.
    fn purge_body(
        &self,
        talks: TalksId,
        seq: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// How many leaves have been integrated into the talks' tree.
    fn integrated_size(
        &self,
        talks: TalksId,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Stored tree hashes (indexes as in `tlog_tiles::stored_hash_index`),
    /// in the order asked.
    ///
    /// The indexes are often chosen by a peer (a proof request), so asking
    /// for a hash the integrated tree does not have — an index at or beyond
    /// `stored_hash_count(integrated_size)`, which for an unknown talks is
    /// every index — is a caller's error: `Limit`, never `Corrupt`. So is
    /// asking for more than [`MAX_TREE_HASHES`] indexes. Both are checked
    /// for the whole call before any hash is read. Only a hash missing
    /// *below* the integrated tree is `Corrupt` (stored data is damaged).
    fn tree_hashes(
        &self,
        talks: TalksId,
        indexes: &[u64],
    ) -> impl Future<Output = Result<Vec<Digest>, StoreError>> + Send;

    /// Integrates leaves `[from, to)`: stores the tree hashes the new leaves
    /// add (`(index, hash)` pairs) and the signed checkpoint at size `to`,
    /// in one transaction fenced on the integrated size still being `from`
    /// (`Stale` otherwise, and nothing is written). `from == to` is allowed
    /// only for a talks' first checkpoint (of an empty log); otherwise it is
    /// `Limit`, so a checkpoint and its gathered cosignatures are never
    /// replaced. Malformed arguments (`to` beyond the log, a checkpoint of
    /// another size, other hashes than those `[from, to)` add) are `Limit`.
    ///
    /// With a `fence`, the transaction also checks that the lease still
    /// has the fence's epoch (reading the lease row so that a concurrent
    /// [`Store::acquire_lease`] that moves it waits for this transaction,
    /// or this one sees the new epoch): `Fenced` otherwise, and nothing is
    /// written. The epoch is stored with the checkpoint. Without one (a
    /// talks' first checkpoint, the same bytes whoever signs it) nothing
    /// is checked.
    fn integrate(
        &self,
        talks: TalksId,
        from: u64,
        to: u64,
        hashes: &[(u64, Digest)],
        checkpoint: &CheckpointRecord,
        fence: Option<Fence>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The latest checkpoint, with its gathered cosignatures.
    fn checkpoint(
        &self,
        talks: TalksId,
    ) -> impl Future<Output = Result<Option<CheckpointRecord>, StoreError>> + Send;

    /// Replaces the note of the checkpoint at `size` (to add a verified
    /// cosignature line), if it is still the latest and its note is still
    /// `expected` (compare-and-swap); `Stale` otherwise.
    fn replace_checkpoint_note(
        &self,
        talks: TalksId,
        size: u64,
        expected: &[u8],
        note: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Notifications of appended envelopes, from now on.
    fn subscribe(&self) -> Subscription;

    /// Talks whose integrated size is below their log size, at most
    /// `limit`, in talks id order (the integrator's work list; it keeps no
    /// list of its own).
    fn unintegrated_talks(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<TalksId>, StoreError>> + Send;

    /// Stores a new invitation (`redeemed` must be `None`). `Exists` if the
    /// token hash is taken in that talks, `Limit` past
    /// [`MAX_INVITATIONS`], `UnknownTalks` for an unknown talks.
    fn create_invitation(
        &self,
        talks: TalksId,
        invitation: &InvitationRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One invitation by its token hash.
    fn invitation(
        &self,
        talks: TalksId,
        token_hash: Digest,
    ) -> impl Future<Output = Result<Option<InvitationRecord>, StoreError>> + Send;

    /// Every invitation of a talks (at most [`MAX_INVITATIONS`]), by token
    /// hash.
    fn invitations(
        &self,
        talks: TalksId,
    ) -> impl Future<Output = Result<Vec<InvitationRecord>, StoreError>> + Send;

    /// Redeems an invitation and installs the access list the redemption
    /// makes, in one transaction: the invitation must exist and be
    /// unredeemed, and the current access list's hash must be `expected`
    /// (`Stale` otherwise, and nothing is written); `next.version` must be
    /// the current version + 1. Like [`Store::replace_access_list`], it
    /// drops every pending change (their base is gone).
    fn redeem_invitation(
        &self,
        talks: TalksId,
        token_hash: Digest,
        redemption: &Redemption,
        expected: Digest,
        next: &AccessListRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The pending access-list changes of a talks, by delta hash. Every one
    /// applies to the current access list: replacing the list drops them.
    fn pending_changes(
        &self,
        talks: TalksId,
    ) -> impl Future<Output = Result<Vec<PendingChange>, StoreError>> + Send;

    /// Stores or updates a pending change, if the access list's hash is
    /// still `base` and the stored change for that delta hash is still
    /// `expected` (`None`: there is none) — compare-and-swap, `Stale`
    /// otherwise. `Limit` past [`MAX_PENDING_CHANGES`].
    fn put_pending_change(
        &self,
        talks: TalksId,
        base: Digest,
        expected: Option<&[u8]>,
        change: &PendingChange,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Creates a blob (`complete` false, `rooms` exactly one room) or, if
    /// one with that hash exists in the talks, adds the room to its
    /// references and returns it. A new blob counts `size` against its
    /// party's quota: if the sizes of the party's blobs in that talks plus
    /// `size` would exceed `quota`, `Quota` and nothing is written. A
    /// record for an existing hash with another size is `Limit`.
    fn create_blob(
        &self,
        talks: TalksId,
        blob: &BlobRecord,
        quota: u64,
    ) -> impl Future<Output = Result<BlobRecord, StoreError>> + Send;

    /// A blob's record.
    fn blob(
        &self,
        talks: TalksId,
        hash: Digest,
    ) -> impl Future<Output = Result<Option<BlobRecord>, StoreError>> + Send;

    /// Stores chunk `index` of an incomplete blob (durably). Its length
    /// must be [`BlobRecord::chunk_len`] (`Limit` otherwise, or for an
    /// unknown or complete blob). Storing a chunk again replaces it.
    fn put_blob_chunk(
        &self,
        talks: TalksId,
        hash: Digest,
        index: u64,
        bytes: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Chunk `index` of a blob, if stored.
    fn blob_chunk(
        &self,
        talks: TalksId,
        hash: Digest,
        index: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Which chunks of a blob are stored, in order.
    fn blob_chunks_present(
        &self,
        talks: TalksId,
        hash: Digest,
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// Marks a blob complete, once the caller has checked that its chunks
    /// hash to its address. `Limit` if a chunk is missing or the blob is
    /// unknown; completing a complete blob is `Ok`.
    fn complete_blob(
        &self,
        talks: TalksId,
        hash: Digest,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The MLS state of a room: its epoch, public state and GroupInfo as
    /// the last [`Gate::Create`] or [`Gate::Commit`] left them (`None`
    /// while the room has no group, or for an unknown talks).
    fn room_state(
        &self,
        talks: TalksId,
        room: RoomId,
    ) -> impl Future<Output = Result<Option<RoomState>, StoreError>> + Send;

    /// Takes or renews the lease `name` for `holder`, in one transaction:
    /// if `holder` holds it (expired or not: nobody took it since), its
    /// expiry becomes `now_ms + ttl_ms` and its epoch stays; if nobody
    /// holds it or its expiry is `<= now_ms`, `holder` takes it under the
    /// next epoch with that expiry; otherwise nothing changes. Returns the
    /// lease as it stands after the call — the caller holds it iff its
    /// `holder` is `holder`. `now_ms + ttl_ms` must not pass
    /// [`MAX_NUMBER`] (`Limit`).
    fn acquire_lease(
        &self,
        name: LeaseName,
        holder: [u8; 16],
        now_ms: u64,
        ttl_ms: u64,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Gives the lease up (on a clean shutdown) so another node can take
    /// it at once: if `holder` holds it under `epoch`, its expiry becomes
    /// 0 (the epoch stays; the next taker gets the next one). Returns
    /// whether it did.
    fn release_lease(
        &self,
        name: LeaseName,
        holder: [u8; 16],
        epoch: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// How far integration is behind, over every talks, in one read (for
    /// monitoring: the node's `/metrics`).
    fn integration_lag(&self) -> impl Future<Output = Result<IntegrationLag, StoreError>> + Send;

    /// Stores an item to be sequenced when due. `Exists` if its id is
    /// taken (by a waiting item), `UnknownTalks` if its submission's talks
    /// does not exist, `Limit` past [`MAX_SCHEDULED`] waiting items or a
    /// `due_ms` past [`MAX_NUMBER`].
    fn schedule(
        &self,
        item: &ScheduledRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Claims up to `limit` (capped at [`MAX_FIRE_BATCH`]) items with
    /// `due_ms <= now_ms`, earliest first, and sequences their submissions
    /// in one transaction with the claim, exactly as [`Store::sequence`]
    /// would (timestamps from `now_ms`, one receipt batch signed by
    /// `log_key`), and deletes them. An item another caller is claiming at
    /// the same moment is skipped, not waited for (`FOR UPDATE SKIP
    /// LOCKED`), so concurrent callers on any number of nodes fire each
    /// item once. Returns what was fired (empty when nothing is due).
    fn fire_due(
        &self,
        now_ms: u64,
        limit: usize,
        log_key: &(dyn Signer + Sync),
    ) -> impl Future<Output = Result<Vec<Fired>, StoreError>> + Send;

    /// How many scheduled items wait (due or not).
    fn scheduled_count(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Stores key packages of `device` in one transaction. A package whose
    /// reference the device already has (or that an earlier package of the
    /// same call has) is ignored, so an upload may be retried. A
    /// last-resort package replaces the device's previous last-resort one.
    /// If the device would then hold more than
    /// [`MAX_KEY_PACKAGES_PER_DEVICE`] packages (expired ones count until a
    /// claim deletes them), `Limit` and nothing is written; so are the
    /// argument errors of [`check_key_packages`]. `UnknownTalks` for an
    /// unknown talks.
    fn put_key_packages(
        &self,
        talks: TalksId,
        device: KeyId,
        packages: Vec<KeyPackageRecord>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Claims one package of `device` valid at `now` (Unix seconds;
    /// `not_after >= now`), in one transaction: the ordinary package with
    /// the lowest reference (bytewise), which is deleted; if none is left,
    /// the last-resort one, which is kept. Every expired package of the
    /// device is deleted on the way. `Ok(None)` when nothing valid is left.
    ///
    /// Claims are counted per (`claimer`, `device`): once `max_claims`
    /// were made in the window `[now - window_s, now]`, the claim is
    /// refused with `Limit` and nothing is written. Every claim that is not
    /// refused counts, whether it found a package or not. `UnknownTalks`
    /// for an unknown talks; `now` must be below 2^63 (`Limit`).
    fn claim_key_package(
        &self,
        talks: TalksId,
        claimer: KeyId,
        device: KeyId,
        now: u64,
        max_claims: u32,
        window_s: u64,
    ) -> impl Future<Output = Result<Option<KeyPackageRecord>, StoreError>> + Send;

    /// How many ordinary (not last-resort) packages of `device` are valid
    /// at `now` (0 for an unknown talks).
    fn key_package_count(
        &self,
        talks: TalksId,
        device: KeyId,
        now: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
