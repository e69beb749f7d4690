//! The mediator node's storage contract.
//!
//! The node keeps no authoritative state in memory: sequence counters,
//! idempotency keys, access lists, receipts, integrated tree hashes and
//! checkpoints are rows behind this trait, and live fan-out is driven by
//! [`Store::subscribe`], so several nodes can later share one PostgreSQL
//! without a rewrite. Every backend passes the one conformance suite in
//! [`conformance`] (the SQLite backend in `backchannel-store-sqlite`, the
//! in-memory backend with a crash model in [`memory`], PostgreSQL later).
//!
//! # Contract (storage version 1)
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
pub const STORAGE_VERSION: u32 = 2;

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
}

impl StoredEnvelope {
    /// The log leaf of this envelope, rebuilt from the stored row with the
    /// header re-hashed (never the stored leaf hash): what integration
    /// hashes into the tree and what data tiles serve.
    pub fn leaf(&self) -> backchannel_tlog::LeafData {
        backchannel_tlog::LeafData {
            seq: self.seq,
            timestamp_ms: self.node_time,
            room: self.room,
            header_hash: backchannel_crypto::sha256(&self.header),
            body_hash: self.body_hash,
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
    /// and otherwise assigns the talks' next seq and a node timestamp of
    /// `max(previous timestamp of that talks, clock_ms)`. The new envelopes
    /// of the batch get one receipt batch signed by `log_key` over their
    /// records (`backchannel_tlog::SignedBatch`), stored with each. Returns
    /// one outcome per submission, in order. All submissions' talks must
    /// exist (`UnknownTalks` otherwise, and nothing is written).
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
    fn integrate(
        &self,
        talks: TalksId,
        from: u64,
        to: u64,
        hashes: &[(u64, Digest)],
        checkpoint: &CheckpointRecord,
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
}
