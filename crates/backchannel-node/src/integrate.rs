//! The log integrator: turns sequenced leaves into tree hashes and a signed
//! checkpoint, off the request path.
//!
//! Sequencing ([`Store::sequence`]) gives each envelope its seq, leaf hash
//! and receipt, and that is what the node acknowledges. Integration comes
//! later and in bulk: [`integrate_once`] reads the leaves after the
//! integrated size, computes the stored hashes they add (C2SP tlog-tiles
//! stored-hash order, Crosby–Wallach §3.3) and the new root, signs the
//! C2SP tlog-checkpoint at the new size with the node's log key, and hands
//! all of it to [`Store::integrate`] in one transaction fenced on the old
//! integrated size. Two integrators may race: one wins, the other gets
//! [`IntegrateError::Stale`] and simply runs again.
//!
//! # Which stored hashes are read
//!
//! `tlog_tiles` computes hashes synchronously through a
//! [`HashReader`], and the store is async, so the existing hashes are
//! fetched first. They are *computed*, not discovered by a dry run: a
//! stored hash of the tree of `m` leaves that appending leaves `≥ m` (or
//! computing any later root) can need is the root of a perfect subtree
//! lying inside `[0, m)` whose parent reaches past `m` — a *maximal*
//! perfect subtree of `[0, m)`. Those are exactly the subtrees of `m`'s
//! binary decomposition, `tlog_tiles::sub_tree_index(0, m)`: at most
//! `1 + log₂ m` hashes, one `tree_hashes` round trip. (A recording reader
//! run twice would read the same set at twice the hashing cost.) The reader
//! handed to `tlog_tiles` holds only those plus the new hashes, and refuses
//! any other index, so a wrong claim here is an error, never a wrong root.
//!
//! # Where the leaves come from
//!
//! The sequencer records the leaf data of every envelope it sequences in
//! [`LeafHints`], after rebuilding the leaf from the submission's own
//! fields and comparing its hash with the leaf hash the store committed.
//! [`integrate_hinted`] takes the run of hinted leaves that starts at the
//! integrated size and reads only the rest from the store (another node's
//! rows, and everything after a restart), re-hashing those from their
//! stored columns. Either way a leaf enters the tree only after its hash
//! was rebuilt from the envelope's fields: the ones written, or the ones
//! read back.
//!
//! No clock, no randomness: the same store state gives the same hashes and
//! the same checkpoint note (Ed25519 signatures are deterministic), which
//! is what the crash model's tests compare.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use backchannel_codec::Encode;
use backchannel_codec::TalksId;
use backchannel_crypto::{Digest, Signer, sha256};
use backchannel_store::{CheckpointRecord, Fence, MAX_READ, Store, StoreError};
use backchannel_tlog::{
    Checkpoint, LEAF_DATA_LEN, LeafData, LogOrigin, NodeOrigin, SignCheckpointError,
};
use thiserror::Error;
use tlog_tiles::{Hash, HashReader};

/// How many leaves one [`integrate_once`] call integrates at most.
///
/// One call is one store transaction holding about two tree hashes per leaf
/// (`2n − popcount(n)` over the whole log), so this bounds the
/// transaction's size (~8 200 rows of 40 bytes) and the integrator's memory,
/// and keeps a checkpoint at most this many leaves behind under load. It
/// equals the largest receipt batch ([`backchannel_store::MAX_SEQUENCE_BATCH`]),
/// so one integration keeps up with one full sequencing batch.
pub const MAX_INTEGRATION_BATCH: u64 = backchannel_tlog::MAX_BATCH_SIZE;

/// Why an integration did not happen.
#[derive(Debug, Error)]
pub enum IntegrateError {
    /// Another integrator moved the integrated size first; nothing was
    /// written. Run again: the next call starts from the new size.
    #[error("another integrator integrated this log first; run the integrator again")]
    Stale,
    /// The integrator lease moved to a later epoch than the fence's:
    /// another node integrates now; nothing was written.
    #[error("the integrator lease moved to another node; nothing was written")]
    Fenced,
    /// The store failed (or, for the in-memory backend, crashed).
    #[error(transparent)]
    Store(StoreError),
    /// `max_leaves` was 0, so no call could ever make progress.
    #[error("max_leaves must be at least 1")]
    EmptyBatch,
    /// The store says more leaves are integrated than sequenced.
    #[error("integrated size {integrated} is past the log size {size}: the store is corrupt")]
    AheadOfLog {
        /// The integrated size read.
        integrated: u64,
        /// The log size read.
        size: u64,
    },
    /// A seq below the log size could not be read (a gap in the log).
    #[error("leaf {seq} is missing below the log size: the store is corrupt")]
    MissingLeaf {
        /// The first seq not read.
        seq: u64,
    },
    /// A stored envelope does not hash to its stored leaf hash, or sits at
    /// the wrong seq or talks.
    #[error("leaf {seq} does not match its stored envelope: the store is corrupt")]
    BadLeaf {
        /// The seq of the envelope.
        seq: u64,
    },
    /// The tree maths could not read a hash it needed (a stored hash is
    /// missing, or the prefetched set is wrong).
    #[error("tree hashes: {0}")]
    Tree(#[from] tlog_tiles::Error),
    /// Signing the checkpoint failed; nothing was written.
    #[error("signing the checkpoint failed: {0}")]
    Sign(#[from] SignCheckpointError),
}

impl From<StoreError> for IntegrateError {
    fn from(e: StoreError) -> Self {
        match e {
            // The only call that fences is `Store::integrate`; losing that
            // race is routine, not a storage failure.
            StoreError::Stale => Self::Stale,
            StoreError::Fenced => Self::Fenced,
            other => Self::Store(other),
        }
    }
}

/// Integrates up to `max_leaves` leaves of `talks` past its integrated
/// size, signing the checkpoint at the new size with `log_key` under the
/// origin of `node`, in a store transaction fenced on `fence` (the
/// integrator lease's epoch; `None` for an unfenced write). Returns the new
/// integrated size, or `None` when every sequenced leaf is already
/// integrated.
///
/// Each leaf is re-hashed from its stored envelope before it enters the
/// tree: a leaf in a signed checkpoint is there for good, so a corrupt row
/// stops integration ([`IntegrateError::BadLeaf`]) rather than being
/// committed. ([`integrate_hinted`] takes hinted leaves instead, checked
/// against the committed leaf hash when the sequencer recorded them; a
/// row changed after that is caught when a data tile reads it.)
pub async fn integrate_once<S: Store>(
    store: &S,
    talks: TalksId,
    node: &NodeOrigin,
    log_key: &(dyn Signer + Sync),
    max_leaves: u64,
    fence: Option<Fence>,
) -> Result<Option<u64>, IntegrateError> {
    integrate_hinted(store, None, talks, node, log_key, max_leaves, fence).await
}

/// [`integrate_once`], taking the leaves `hints` holds from the integrated
/// size on instead of reading them, and forgetting the hints the new
/// integrated size leaves behind (all but the last two data tiles').
pub async fn integrate_hinted<S: Store>(
    store: &S,
    hints: Option<&LeafHints>,
    talks: TalksId,
    node: &NodeOrigin,
    log_key: &(dyn Signer + Sync),
    max_leaves: u64,
    fence: Option<Fence>,
) -> Result<Option<u64>, IntegrateError> {
    if max_leaves == 0 {
        return Err(IntegrateError::EmptyBatch);
    }
    let from = store.integrated_size(talks).await?;
    let size = store.log_size(talks).await?;
    if size < from {
        return Err(IntegrateError::AheadOfLog {
            integrated: from,
            size,
        });
    }
    if let Some(hints) = hints {
        hints.forget_below(talks, from);
    }
    if size == from {
        return Ok(None);
    }
    let to = size.min(from.saturating_add(max_leaves));

    let mut leaves = hints.map_or_else(Vec::new, |h| h.run(talks, from, to));
    let read_from = from + leaves.len() as u64;
    if read_from < to {
        leaves.extend(read_leaves(store, talks, read_from, to).await?);
    }

    // The maximal perfect subtrees of [0, from): see the module docs.
    let frontier = tlog_tiles::sub_tree_index(0, from, Vec::new());
    let old = store.tree_hashes(talks, &frontier).await?;
    let mut tree = Overlay {
        old: frontier
            .into_iter()
            .zip(old.iter().map(|d| Hash(d.0)))
            .collect(),
        base: tlog_tiles::stored_hash_count(from),
        new: Vec::with_capacity(leaves.len().saturating_mul(2)),
    };
    for (seq, leaf) in (from..to).zip(&leaves) {
        // Leaf `seq`'s hashes go at stored_hash_index(0, seq), right after
        // everything stored before it, so appending in order keeps `new`
        // dense from `base`.
        let added = tlog_tiles::stored_hashes_for_record_hash(seq, Hash(leaf.0), &tree)?;
        tree.new.extend(added);
    }
    let root = tlog_tiles::tree_hash(to, &tree)?;

    let checkpoint = Checkpoint {
        origin: LogOrigin::new(node, talks),
        size: to,
        root: Digest(root.0),
    }
    .sign(log_key)?;
    let hashes: Vec<(u64, Digest)> = (tree.base..)
        .zip(tree.new.iter().map(|h| Digest(h.0)))
        .collect();
    store
        .integrate(
            talks,
            from,
            to,
            &hashes,
            &CheckpointRecord {
                size: to,
                note: checkpoint.note().to_vec(),
            },
            fence,
        )
        .await?;
    if let Some(hints) = hints {
        hints.forget_below(talks, to);
    }
    Ok(Some(to))
}

/// The leaf hashes of seqs `[from, to)`, read page by page and each checked
/// against its envelope.
async fn read_leaves<S: Store>(
    store: &S,
    talks: TalksId,
    from: u64,
    to: u64,
) -> Result<Vec<Digest>, IntegrateError> {
    let want = usize::try_from(to - from).unwrap_or(usize::MAX);
    let mut leaves = Vec::with_capacity(want.min(1 << 20));
    let mut next = from;
    while next < to {
        let limit = usize::try_from(to - next)
            .unwrap_or(usize::MAX)
            .min(MAX_READ);
        // The leaf columns only: a leaf commits to the body's hash, so
        // integration never loads a body.
        let page = store.leaves(talks, next, limit).await?;
        if page.is_empty() {
            return Err(IntegrateError::MissingLeaf { seq: next });
        }
        for e in page.into_iter().take(limit) {
            if e.seq != next {
                // A store returns seqs in order from `next`; anything else
                // means a hole before `e.seq` (or a broken backend).
                return Err(if e.seq > next {
                    IntegrateError::MissingLeaf { seq: next }
                } else {
                    IntegrateError::BadLeaf { seq: e.seq }
                });
            }
            if e.leaf().hash() != e.leaf_hash {
                return Err(IntegrateError::BadLeaf { seq: e.seq });
            }
            leaves.push(e.leaf_hash);
            next += 1;
        }
    }
    Ok(leaves)
}

/// The stored hashes `tlog_tiles` may read during one integration: the
/// prefetched frontier of the old tree, and the hashes added so far
/// (dense from `base`, the old tree's stored-hash count).
struct Overlay {
    old: BTreeMap<u64, Hash>,
    base: u64,
    new: Vec<Hash>,
}

impl HashReader for Overlay {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                let found = match i.checked_sub(self.base) {
                    Some(k) => usize::try_from(k).ok().and_then(|k| self.new.get(k)),
                    None => self.old.get(&i),
                };
                found.copied().ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// The most leaves [`LeafHints`] holds over all talks (32 full
/// integration batches; 104 bytes each, leaf data and key, so about
/// 14 MiB in maps of many leaves, more when the leaves are spread over
/// many talks of few leaves each). Past it, the talks recorded least recently are
/// forgotten first.
pub const MAX_LEAF_HINTS: usize = 32 * MAX_INTEGRATION_BATCH as usize;

/// Leaves per data tile (tlog-tiles height 8).
const TILE_WIDTH: u64 = 1 << 8;

/// The leaves this node's sequencer committed, as leaf data, so that
/// neither integration nor the data tiles of the log's tail read back the
/// rows just written. Each talks keeps what is not yet integrated, and the
/// integrated leaves of its last partial data tile and of the full one
/// before it (the tiles verifying members fetch next).
///
/// Only ever a shortcut: a leaf not here is read from the store, so what
/// is dropped (past [`MAX_LEAF_HINTS`], on a restart, by
/// [`LeafHints::clear`]) costs a read, never a wrong tree or tile.
#[derive(Debug, Default)]
pub struct LeafHints {
    inner: Mutex<HintsInner>,
}

#[derive(Debug, Default)]
struct HintsInner {
    talks: HashMap<TalksId, Hinted>,
    count: usize,
    /// Bumped by every [`LeafHints::record`]: the recency of each talks.
    clock: u64,
}

#[derive(Debug, Default)]
struct Hinted {
    leaves: BTreeMap<u64, LeafData>,
    recorded: u64,
}

impl LeafHints {
    /// Records committed leaves of their talks. Call it only with leaves
    /// the caller rebuilt from the envelope's fields and found to hash to
    /// the leaf hash the store committed.
    pub fn record(&self, leaves: impl IntoIterator<Item = (TalksId, LeafData)>) {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let HintsInner {
            talks: all, count, ..
        } = &mut *inner;
        for (talks, leaf) in leaves {
            let hinted = all.entry(talks).or_default();
            hinted.recorded = now;
            if hinted.leaves.insert(leaf.seq, leaf).is_none() {
                *count += 1;
            }
        }
        while inner.count > MAX_LEAF_HINTS {
            inner.evict_one();
        }
    }

    /// The leaf hashes of `talks` from `from` on, re-hashed from the leaf
    /// data, as long as they are contiguous, and before `to`.
    fn run(&self, talks: TalksId, from: u64, to: u64) -> Vec<Digest> {
        let inner = self.lock();
        let Some(hinted) = inner.talks.get(&talks) else {
            return Vec::new();
        };
        (from..to)
            .zip(hinted.leaves.range(from..to))
            .take_while(|(want, (seq, _))| want == *seq)
            .map(|(_, (_, leaf))| leaf.hash())
            .collect()
    }

    /// The leaf data of seqs `[start, end)` of `talks`, encoded one after
    /// the other (a data tile's contents), if every one is held.
    pub fn tile(&self, talks: TalksId, start: u64, end: u64) -> Option<Vec<u8>> {
        let inner = self.lock();
        let leaves = &inner.talks.get(&talks)?.leaves;
        let want = usize::try_from(end.checked_sub(start)?).ok()?;
        let mut out = Vec::with_capacity(want * LEAF_DATA_LEN);
        let mut n = 0;
        for ((_, leaf), seq) in leaves.range(start..end).zip(start..) {
            if leaf.seq != seq {
                return None;
            }
            out.extend_from_slice(&leaf.to_canonical_bytes());
            n += 1;
        }
        (n == want).then_some(out)
    }

    /// Forgets the leaves of `talks` that no longer matter once `size`
    /// leaves are integrated: those below the full data tile before the
    /// one `size` falls in.
    fn forget_below(&self, talks: TalksId, size: u64) {
        let keep_from = (size / TILE_WIDTH).saturating_sub(1) * TILE_WIDTH;
        let mut inner = self.lock();
        let HintsInner {
            talks: all, count, ..
        } = &mut *inner;
        let Some(hinted) = all.get_mut(&talks) else {
            return;
        };
        let kept = hinted.leaves.split_off(&keep_from);
        *count -= hinted.leaves.len();
        if kept.is_empty() {
            all.remove(&talks);
        } else {
            hinted.leaves = kept;
        }
    }

    /// Forgets everything: another node integrates now.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.talks.clear();
        inner.count = 0;
    }

    /// How many leaves are held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().count
    }

    /// Whether no leaf is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HintsInner> {
        // The data is a cache of plain values, consistent after every
        // statement, so a panic elsewhere leaves nothing half-done.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl HintsInner {
    /// Frees room: the talks recorded least recently goes, unless it is
    /// the only one left, which loses its newest leaf (the oldest are the
    /// ones integration takes next).
    fn evict_one(&mut self) {
        if self.talks.len() > 1 {
            let oldest = self
                .talks
                .iter()
                .min_by_key(|(_, h)| h.recorded)
                .map(|(t, _)| *t);
            if let Some(hinted) = oldest.and_then(|t| self.talks.remove(&t)) {
                self.count -= hinted.leaves.len();
            }
        } else if let Some(hinted) = self.talks.values_mut().next()
            && hinted.leaves.pop_last().is_some()
        {
            self.count -= 1;
        } else {
            self.count = 0;
        }
    }
}

/// Signs and stores the checkpoint of a new talks' empty log (size 0, the
/// root of the empty tree), unless the talks already has a checkpoint.
/// Returns whether it wrote one.
///
/// Unfenced: any node that opens a talks writes it at once, lease or not.
/// It cannot disagree with the integrator's: it is the same bytes whoever
/// signs it (one log key, deterministic signatures), and the store refuses
/// it once the talks has a checkpoint.
pub async fn first_checkpoint<S: Store>(
    store: &S,
    talks: TalksId,
    node: &NodeOrigin,
    log_key: &(dyn Signer + Sync),
) -> Result<bool, IntegrateError> {
    if store.checkpoint(talks).await?.is_some() || store.integrated_size(talks).await? != 0 {
        return Ok(false);
    }
    let checkpoint = Checkpoint {
        origin: LogOrigin::new(node, talks),
        size: 0,
        // RFC 6962: the hash of an empty tree is SHA-256 of nothing.
        root: sha256(&[]),
    }
    .sign(log_key)?;
    store
        .integrate(
            talks,
            0,
            0,
            &[],
            &CheckpointRecord {
                size: 0,
                note: checkpoint.note().to_vec(),
            },
            None,
        )
        .await?;
    Ok(true)
}

/// How many talks one integration round looks at.
pub const TALKS_PER_ROUND: usize = 1024;

/// One integration round: integrates every talks with un-integrated
/// leaves (as the store lists them), up to [`MAX_INTEGRATION_BATCH`]
/// leaves each, each fenced on `fence`, one after the other (the node
/// spreads them over its checkpoint interval instead: see
/// [`integrate_talks`]). A fenced integration ends the round with
/// [`StoreError::Fenced`]: the lease moved on, so the rest would be
/// refused too. Returns how many talks got a new checkpoint.
pub async fn integrate_round<S: Store>(
    store: &S,
    hints: Option<&LeafHints>,
    node: &NodeOrigin,
    log_key: &(dyn Signer + Sync),
    fence: Option<Fence>,
) -> Result<usize, StoreError> {
    let mut done = 0;
    for talks in store.unintegrated_talks(TALKS_PER_ROUND).await? {
        if integrate_talks(store, hints, talks, node, log_key, fence).await? {
            done += 1;
        }
    }
    Ok(done)
}

/// One talks' turn in an integration round: up to
/// [`MAX_INTEGRATION_BATCH`] leaves, fenced on `fence`. Returns whether it
/// got a new checkpoint. Errors other than [`StoreError::Fenced`] are the
/// talks' own: logged without ids and not returned, so a talks whose
/// stored data is corrupt keeps failing (and alerting) while the others go
/// on.
pub async fn integrate_talks<S: Store>(
    store: &S,
    hints: Option<&LeafHints>,
    talks: TalksId,
    node: &NodeOrigin,
    log_key: &(dyn Signer + Sync),
    fence: Option<Fence>,
) -> Result<bool, StoreError> {
    let integrated = integrate_hinted(
        store,
        hints,
        talks,
        node,
        log_key,
        MAX_INTEGRATION_BATCH,
        fence,
    );
    match integrated.await {
        Ok(Some(_)) => Ok(true),
        Err(IntegrateError::Fenced) => Err(StoreError::Fenced),
        Ok(None) | Err(IntegrateError::Stale) => Ok(false),
        Err(e) => {
            tracing::error!(error = %e, "integration of a talks failed");
            Ok(false)
        }
    }
}
