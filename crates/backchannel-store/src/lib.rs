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

use backchannel_codec::{RoomId, TalksId};
use backchannel_crypto::{Digest, KeyId, Signer};
use thiserror::Error;
use tokio::sync::broadcast;

/// The version of this contract. Backends record the schema version they
/// migrated to; a node refuses a database whose version it does not know.
pub const STORAGE_VERSION: u32 = 1;

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

/// A signed checkpoint as stored, with the cosignatures gathered for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// Tree size.
    pub size: u64,
    /// The checkpoint as a signed note, with every cosignature line
    /// gathered so far appended (C2SP signed-note).
    pub note: Vec<u8>,
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
    /// current version + 1.
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
}
