//! The log follower and witness: the client's own verified view of one
//! talks' log, built from the leaves themselves, with no per-envelope proof.
//!
//! The node serves, per talks, its latest signed checkpoint and the data
//! tiles (`tile/8/data/<N>[.p/<W>]`) holding each leaf's 97-byte
//! [`LeafData`]. The client keeps the *compact range* of the log it has
//! verified — the roots of the maximal perfect subtrees of `[0, size)`, one
//! hash per set bit of `size` (`tlog_tiles::sub_tree_index(0, size)`) — and
//! for each new checkpoint appends the hashes of the leaves it is served
//! and compares the root it computes with the checkpoint's
//! ([`Follower::advance`]). A checkpoint that does not commit to the leaves
//! the node serves is a fork or a tamper, caught without trusting a proof.
//!
//! With the verified leaves the client then:
//! - accounts for every leaf of its rooms ([`withheld`]): each must be in
//!   its archive with the same header hash, or the node withheld or
//!   rewrote an envelope;
//! - holds the node to its receipts ([`Pending`]): an envelope the node
//!   acknowledged must appear, with the leaf the receipt promised, below a
//!   verified checkpoint within [`MAX_MERGE_DELAY_MS`];
//! - compares the checkpoint each peer's statement carries with its own
//!   view ([`Follower::compare_reference`]);
//! - cosigns what it verified ([`Witness::cosign`]), never two roots for
//!   one size, never going backwards.
//!
//! Sans IO: no network, no clock, no randomness; time is a parameter
//! (`now_ms`, `timestamp_s`). Every value here has a canonical, strictly
//! decoded encoding so the client can persist it through its store:
//!
//! ```text
//! Follower (docs/formats.md conventions, big-endian):
//!   u8        state format version = 0x01
//!   u64       size
//!   popcount(size) × [u8;32]   compact range, largest subtree (leftmost) first
//!   u32       n ≤ MAX_VERIFIED_ROOTS
//!   n × (u64 size ‖ [u8;32] root)   verified roots, sizes strictly increasing,
//!             each 1 ≤ size ≤ follower size; the last is (size, root of the
//!             range) when size > 0, and n = 0 when size = 0
//! Pending:
//!   u8        state format version = 0x01
//!   u32       n ≤ MAX_PENDING
//!   n × (u64 seq ‖ [u8;32] leaf hash ‖ u64 batch timestamp ms), seqs strictly increasing
//! Witness:
//!   u8        state format version = 0x01
//!   u8        0x00 never cosigned | 0x01 followed by u64 size ‖ [u8;32] root
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use backchannel_codec::{Decode, DecodeError, Encode, Reader, RoomId, Writer};
use backchannel_crypto::{Digest, Signer};
use backchannel_tlog::{
    ConsistencyProof, CosignError, Cosignature, InclusionProof, LEAF_DATA_LEN, LeafData,
    SignedCheckpoint, witness_name,
};
use thiserror::Error;

/// The root of the empty tree: SHA-256 of the empty string (RFC 6962 §2.1,
/// "MTH({}) = SHA-256()").
pub const EMPTY_ROOT: Digest = Digest(tlog_tiles::EMPTY_HASH.0);

/// The height of the tiles the node serves: C2SP tlog-tiles' fixed height 8,
/// so a full tile holds 2^8 = 256 entries.
pub const TILE_HEIGHT: u8 = 8;

/// Entries in a full tile, `2^TILE_HEIGHT`.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;

/// How many verified roots a [`Follower`] keeps: the newest 4096 sizes it
/// verified. A peer's statement references the checkpoint its author had
/// verified when signing, seconds before the statement was sequenced, so
/// references are recent; at the node's one checkpoint a second, 4096 is
/// over an hour of uninterrupted traffic, and the persisted follower stays
/// under 170 KiB (40 bytes a root). An older reference is answered
/// [`Reference::Unknown`] and settled with a consistency proof
/// ([`Follower::compare_reference_with_proof`]), which needs no stored root.
pub const MAX_VERIFIED_ROOTS: usize = 4096;

/// How long after a receipt's batch timestamp the receipted envelope must
/// be below a verified checkpoint (the log format's maximum merge delay,
/// [`backchannel_tlog::MAX_MERGE_DELAY_MS`], whose docs break the budget
/// down: checkpoints every second, an integrator failover, the rest room
/// for clock skew between the node, which stamps the batch, and the client,
/// which supplies `now_ms`, and for a slow fetch). Past it, an acknowledged
/// envelope still missing from the log is evidence ([`NotMerged`]).
pub const MAX_MERGE_DELAY_MS: u64 = backchannel_tlog::MAX_MERGE_DELAY_MS;

/// The most receipts a [`Pending`] set holds: a client's own envelopes that
/// are sequenced but not yet below a verified checkpoint. Merges take about
/// a second, so even a fast sender holds a few hundred; the bound keeps the
/// persisted set under 3.2 MiB (48 bytes a receipt).
pub const MAX_PENDING: usize = 1 << 16;

/// The format version of every persisted state here ([`Follower`],
/// [`Pending`], [`Witness`]).
pub const STATE_FORMAT_VERSION: u8 = 1;

/// The RFC 6962 §2.1 interior node, `SHA-256(0x01 ‖ left ‖ right)`.
fn node_hash(left: &Digest, right: &Digest) -> Digest {
    Digest(tlog_tiles::node_hash(tlog_tiles::Hash(left.0), tlog_tiles::Hash(right.0)).0)
}

/// Appends the leaf at index `size` to the compact range of `[0, size)`.
///
/// The range holds one perfect subtree per set bit of `size`, largest
/// first. As in a binary counter, the new leaf is a subtree of one leaf,
/// and each trailing 1 bit of `size` closes a pair of equal subtrees into
/// their parent `node_hash(left, right)`.
fn append(range: &mut Vec<Digest>, size: u64, leaf_hash: Digest) {
    let mut hash = leaf_hash;
    let mut n = size;
    while n & 1 == 1 {
        // The range has one hash per set bit of `size`, so a left sibling
        // exists for each trailing 1; the `else` never runs.
        let Some(left) = range.pop() else { break };
        hash = node_hash(&left, &hash);
        n >>= 1;
    }
    range.push(hash);
}

/// The root of the tree whose compact range is `range`: RFC 6962 §2.1,
/// `MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))` with `k` the largest power
/// of two below `n`, i.e. the subtrees folded from the right.
fn fold(range: &[Digest]) -> Digest {
    let mut hashes = range.iter().rev();
    let Some(mut root) = hashes.next().copied() else {
        return EMPTY_ROOT;
    };
    for left in hashes {
        root = node_hash(left, &root);
    }
    root
}

/// Keeps the newest [`MAX_VERIFIED_ROOTS`] entries.
fn prune(verified: &mut BTreeMap<u64, Digest>) {
    while verified.len() > MAX_VERIFIED_ROOTS {
        verified.pop_first();
    }
}

/// The client's verified view of one talks' log: its size, the compact
/// range of `[0, size)`, the root, and the roots of the newest
/// [`MAX_VERIFIED_ROOTS`] sizes it verified.
///
/// It is only ever extended by leaves whose hashes, appended to the range,
/// give a root the node signed; so every root it holds is one the node
/// committed to *and* that the client recomputed from the leaves. The
/// caller verifies each checkpoint with the talks' log origin and the
/// node's log key (`SignedCheckpoint::verify`) before handing it here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follower {
    size: u64,
    range: Vec<Digest>,
    root: Digest,
    verified: BTreeMap<u64, Digest>,
}

impl Default for Follower {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a checkpoint was not accepted. `Rollback`, `Fork` and `RootMismatch`
/// are evidence against the node (keep the signed checkpoint and the data
/// tiles); the others mean the caller passed the wrong leaves.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FollowError {
    /// The checkpoint is smaller than the size already verified: the node
    /// went back in time.
    #[error(
        "the node's checkpoint has size {offered}, below the verified size {verified}: \
         the node rolled its log back"
    )]
    Rollback {
        /// The size already verified.
        verified: u64,
        /// The checkpoint's size.
        offered: u64,
    },
    /// The checkpoint's size was verified with another root: two histories.
    #[error(
        "fork at size {size}: verified root {}, the node's checkpoint says {}",
        ours.to_hex(),
        theirs.to_hex()
    )]
    Fork {
        /// The size.
        size: u64,
        /// The root verified at that size.
        ours: Digest,
        /// The checkpoint's root.
        theirs: Digest,
    },
    /// A leaf sits at the wrong index (its seq is not the next one).
    #[error("expected the leaf with seq {index}, got seq {seq}: pass the leaves in order")]
    LeafIndex {
        /// The index expected.
        index: u64,
        /// The leaf's seq.
        seq: u64,
    },
    /// A leaf lies past the checkpoint's size.
    #[error("leaf {seq} is past the checkpoint's size {size}")]
    Surplus {
        /// The checkpoint's size.
        size: u64,
        /// The first surplus leaf's seq.
        seq: u64,
    },
    /// The leaves ended before the checkpoint's size.
    #[error("the leaves end at {next}, short of the checkpoint's size {size}")]
    Short {
        /// The checkpoint's size.
        size: u64,
        /// The first leaf index missing.
        next: u64,
    },
    /// The root computed from the leaves served is not the checkpoint's:
    /// the node's signed checkpoint does not commit to the leaves it serves
    /// (fork or tamper).
    #[error(
        "the node's checkpoint at size {size} has root {}, but its leaves hash to {}: \
         the node serves leaves its checkpoint does not commit to",
        checkpoint.to_hex(),
        computed.to_hex()
    )]
    RootMismatch {
        /// The checkpoint's size.
        size: u64,
        /// The checkpoint's root.
        checkpoint: Digest,
        /// The root computed from the leaves.
        computed: Digest,
    },
}

/// What a checkpoint reference (a peer's statement's `checkpoint_size ‖
/// checkpoint_root`) says about the peer's view of the log, against ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// The peer saw the root we verified at that size (or the reference is
    /// of size 0: the empty tree, or `CheckpointRef::NONE`, "none yet",
    /// which claims nothing).
    Matches,
    /// The peer saw another root at a size we verified: two histories.
    /// Evidence of a fork (the peer's signed statement against our signed
    /// checkpoint).
    Differs {
        /// The size.
        size: u64,
        /// The root we verified.
        ours: Digest,
        /// The root in the peer's reference.
        theirs: Digest,
    },
    /// A size beyond ours (verify more first) or one whose root we do not
    /// hold (see [`Follower::compare_reference_with_proof`]).
    Unknown,
}

/// Why a reference could not be settled with a consistency proof.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReferenceProofError {
    /// The proof does not lead from the reference to our verified root.
    /// Not evidence by itself: the node, not the peer, made the proof.
    #[error(
        "the consistency proof from size {size} to the verified size {verified} does not \
         verify: the peer's root is not a prefix of our log, or the node's proof is wrong"
    )]
    Invalid {
        /// The reference's size.
        size: u64,
        /// Our verified size.
        verified: u64,
    },
}

impl Follower {
    /// The view of an empty log: size 0, root [`EMPTY_ROOT`].
    pub fn new() -> Self {
        Self {
            size: 0,
            range: Vec::new(),
            root: EMPTY_ROOT,
            verified: BTreeMap::new(),
        }
    }

    /// The verified size: leaves `[0, size)` are accounted for.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root at the verified size.
    pub fn root(&self) -> Digest {
        self.root
    }

    /// The compact range of `[0, size)`: the roots of its maximal perfect
    /// subtrees, largest (leftmost) first, one per set bit of `size`.
    pub fn range(&self) -> &[Digest] {
        &self.range
    }

    /// The verified roots held, by size (the newest [`MAX_VERIFIED_ROOTS`]).
    pub fn verified(&self) -> &BTreeMap<u64, Digest> {
        &self.verified
    }

    /// The verified root at `size`, if held ([`EMPTY_ROOT`] at size 0).
    pub fn root_at(&self, size: u64) -> Option<Digest> {
        if size == 0 {
            Some(EMPTY_ROOT)
        } else {
            self.verified.get(&size).copied()
        }
    }

    /// Verifies `checkpoint` from `leaves`, which must be exactly the leaves
    /// with seqs `[self.size(), checkpoint size)`, in order; returns the
    /// follower advanced to it (`self` is unchanged).
    ///
    /// A checkpoint of the verified size with the verified root returns a
    /// copy of `self` (nothing new).
    pub fn advance(
        &self,
        checkpoint: &SignedCheckpoint,
        leaves: &[LeafData],
    ) -> Result<Follower, FollowError> {
        let mut advance = self.begin(checkpoint)?;
        advance.push(leaves)?;
        advance.finish()
    }

    /// Starts verifying `checkpoint` incrementally, for a catch-up too long
    /// to hold in memory: push the leaves tile by tile
    /// ([`Advance::push`]), then [`Advance::finish`]. Fails at once on a
    /// rollback or a fork at the verified size.
    ///
    /// A checkpoint below the verified size is a [`FollowError::Fork`] if
    /// we verified another root at its size, else a
    /// [`FollowError::Rollback`].
    pub fn begin(&self, checkpoint: &SignedCheckpoint) -> Result<Advance<'_>, FollowError> {
        let offered = checkpoint.checkpoint();
        if offered.size <= self.size {
            if let Some(ours) = self.root_at(offered.size).filter(|r| *r != offered.root) {
                return Err(FollowError::Fork {
                    size: offered.size,
                    ours,
                    theirs: offered.root,
                });
            }
            if offered.size < self.size {
                return Err(FollowError::Rollback {
                    verified: self.size,
                    offered: offered.size,
                });
            }
        }
        Ok(Advance {
            base: self,
            size: offered.size,
            root: offered.root,
            next: self.size,
            range: self.range.clone(),
            notes: BTreeSet::new(),
            noted: Vec::new(),
        })
    }

    /// Compares a peer's checkpoint reference (`size`, `root`) with the
    /// roots we verified. See [`Reference`].
    pub fn compare_reference(&self, size: u64, root: &Digest) -> Reference {
        if size == 0 && *root == Digest([0; 32]) {
            // `CheckpointRef::NONE`: its author had verified nothing yet.
            return Reference::Matches;
        }
        match self.root_at(size) {
            Some(ours) if ours == *root => Reference::Matches,
            Some(ours) => Reference::Differs {
                size,
                ours,
                theirs: *root,
            },
            None => Reference::Unknown,
        }
    }

    /// [`Follower::compare_reference`], settling a reference below our size
    /// whose root we do not hold with the node's consistency proof from the
    /// reference's (size, root) to our verified (size, root): if the proof
    /// verifies, the peer's root is a prefix of our log ([`Reference::Matches`]).
    /// A reference beyond our size stays [`Reference::Unknown`]; a
    /// reference we can judge ourselves ignores the proof.
    pub fn compare_reference_with_proof(
        &self,
        size: u64,
        root: &Digest,
        proof: &ConsistencyProof,
    ) -> Result<Reference, ReferenceProofError> {
        let direct = self.compare_reference(size, root);
        if direct != Reference::Unknown || size > self.size {
            return Ok(direct);
        }
        proof
            .verify(size, root, self.size, &self.root)
            .map(|()| Reference::Matches)
            .map_err(|_| ReferenceProofError::Invalid {
                size,
                verified: self.size,
            })
    }
}

/// A checkpoint being verified, leaves pushed in order
/// ([`Follower::begin`]). Nothing changes in the follower it started from.
#[derive(Debug)]
pub struct Advance<'a> {
    base: &'a Follower,
    size: u64,
    root: Digest,
    next: u64,
    range: Vec<Digest>,
    notes: BTreeSet<u64>,
    noted: Vec<(u64, Digest)>,
}

impl Advance<'_> {
    /// The seq of the next leaf expected.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The checkpoint's size: the leaves end just below it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Also records the root at `size` when the leaves reach it (if it lies
    /// past the leaves pushed so far and below the checkpoint's size), so
    /// that [`Follower::compare_reference`] can answer a peer's reference to
    /// a checkpoint this client never fetched. Sound because the root of
    /// every prefix of the leaves is fixed once the checkpoint's root is.
    pub fn note(&mut self, size: u64) {
        if size > self.next && size < self.size {
            self.notes.insert(size);
        }
    }

    /// Appends `leaves`, which must continue at [`Advance::next`] in order
    /// and stay below the checkpoint's size. On an error nothing is
    /// appended.
    pub fn push(&mut self, leaves: &[LeafData]) -> Result<(), FollowError> {
        for (leaf, i) in leaves.iter().zip(0u64..) {
            let Some(index) = self.next.checked_add(i).filter(|&x| x < self.size) else {
                return Err(FollowError::Surplus {
                    size: self.size,
                    seq: leaf.seq,
                });
            };
            leaf.check_index(index)
                .map_err(|_| FollowError::LeafIndex {
                    index,
                    seq: leaf.seq,
                })?;
        }
        for leaf in leaves {
            append(&mut self.range, self.next, leaf.hash());
            self.next += 1;
            if self.notes.remove(&self.next) {
                self.noted.push((self.next, fold(&self.range)));
            }
        }
        Ok(())
    }

    /// Compares the root of the leaves pushed with the checkpoint's and
    /// returns the advanced follower.
    pub fn finish(self) -> Result<Follower, FollowError> {
        if self.next < self.size {
            return Err(FollowError::Short {
                size: self.size,
                next: self.next,
            });
        }
        if self.size == self.base.size {
            // `begin` checked the root: nothing new.
            return Ok(self.base.clone());
        }
        let computed = fold(&self.range);
        if computed != self.root {
            return Err(FollowError::RootMismatch {
                size: self.size,
                checkpoint: self.root,
                computed,
            });
        }
        let mut verified = self.base.verified.clone();
        verified.extend(self.noted);
        verified.insert(self.size, computed);
        prune(&mut verified);
        Ok(Follower {
            size: self.size,
            range: self.range,
            root: computed,
            verified,
        })
    }
}

impl Encode for Follower {
    fn encode(&self, w: &mut Writer) {
        w.u8(STATE_FORMAT_VERSION);
        w.u64(self.size);
        for h in &self.range {
            h.encode(w);
        }
        // At most MAX_VERIFIED_ROOTS entries (pruned on every insertion).
        w.len(self.verified.len());
        for (size, root) in &self.verified {
            w.u64(*size);
            root.encode(w);
        }
    }
}

impl Decode for Follower {
    const MIN_LEN: usize = 1 + 8 + 4;

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("follower format version", STATE_FORMAT_VERSION)?;
        let size = r.u64("follower size")?;
        let mut range = Vec::with_capacity(size.count_ones() as usize);
        for _ in 0..size.count_ones() {
            range.push(Digest::decode(r)?);
        }
        let root = fold(&range);
        let count = r.len("verified roots", MAX_VERIFIED_ROOTS, 8 + 32)?;
        let mut verified = BTreeMap::new();
        let mut last = 0u64;
        for _ in 0..count {
            let s = r.u64("verified size")?;
            let h = Digest::decode(r)?;
            if s <= last || s > size {
                return Err(DecodeError::Invalid {
                    field: "verified roots",
                    reason: "sizes must increase strictly within 1..=size",
                });
            }
            last = s;
            verified.insert(s, h);
        }
        let consistent = match verified.last_key_value() {
            None => size == 0,
            Some((&s, h)) => s == size && *h == root,
        };
        if !consistent {
            return Err(DecodeError::Invalid {
                field: "verified roots",
                reason: "the last must be the follower's size and root",
            });
        }
        Ok(Self {
            size,
            range,
            root,
            verified,
        })
    }
}

/// A data tile to fetch: `tile/8/data/<N>[.p/<W>]` (C2SP tlog-tiles path
/// syntax, as `tlog_tiles::Tile::path` writes it), holding the leaf data of
/// seqs `[N·256, N·256 + W)`, of which [`DataTile::wanted`] are the ones
/// asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataTile {
    tile: tlog_tiles::Tile,
    first_seq: u64,
    width: u64,
    wanted: Range<u64>,
}

impl DataTile {
    /// The tile's path under `…/talks/{talks}/` (the node's `GET …/tile/…`).
    pub fn path(&self) -> String {
        self.tile.path()
    }

    /// The seq of the tile's first entry, `N·256`.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The number of entries, `W` (256 for a full tile).
    pub fn width(&self) -> u64 {
        self.width
    }

    /// The seqs asked for (the first tile may begin before them).
    pub fn wanted(&self) -> Range<u64> {
        self.wanted.clone()
    }

    /// The tile as `NodeClient::data_tile` asks for it.
    pub fn tile(&self) -> tlog_tiles::Tile {
        self.tile
    }

    /// Parses the tile's bytes strictly ([`parse_data_tile`]) and returns
    /// the leaves of [`DataTile::wanted`].
    pub fn parse(&self, bytes: &[u8]) -> Result<Vec<LeafData>, TileError> {
        let skip = usize::try_from(self.wanted.start - self.first_seq).unwrap_or(usize::MAX);
        let mut leaves = parse_data_tile(bytes, self.first_seq, self.width)?;
        Ok(leaves.split_off(skip.min(leaves.len())))
    }
}

/// The data tiles holding the leaves `[from, to)`, in order: full tiles,
/// then a partial last tile `.p/<W>` if `to` is not a multiple of 256.
/// Lazy, so a huge range costs nothing until iterated (fetch a bounded
/// number of tiles per round and use [`Follower::begin`]).
pub fn data_tiles(from: u64, to: u64) -> impl Iterator<Item = DataTile> {
    // (to − 1) / 256 + 1 ≤ 2^56: no overflow.
    let tiles = if from < to {
        (from / TILE_WIDTH)..((to - 1) / TILE_WIDTH + 1)
    } else {
        0..0
    };
    tiles.map(move |n| {
        // n·256 ≤ to − 1, so neither line overflows, and 1 ≤ width ≤ 256.
        let first_seq = n * TILE_WIDTH;
        let width = (to - first_seq).min(TILE_WIDTH);
        // Within tlog_tiles::Tile::new's ranges (height 8, level 0, width
        // 1 to 256), so its assertion holds.
        let tile = tlog_tiles::Tile::new(TILE_HEIGHT, 0, n, width as u32, true);
        DataTile {
            tile,
            first_seq,
            width,
            wanted: from.max(first_seq)..first_seq + width,
        }
    })
}

/// Why a data tile was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TileError {
    /// The tile is not `count` entries of [`LEAF_DATA_LEN`] bytes.
    #[error("a data tile of {count} entries is {count} × {LEAF_DATA_LEN} bytes, not {len}")]
    Length {
        /// The entries expected.
        count: u64,
        /// The bytes received.
        len: usize,
    },
    /// An entry does not decode as leaf data.
    #[error("data tile entry {seq}: {error}")]
    Entry {
        /// The entry's index (its expected seq).
        seq: u64,
        /// Why it does not decode.
        error: DecodeError,
    },
    /// An entry's seq is not its index.
    #[error("data tile entry {index} holds the leaf of seq {seq}")]
    Seq {
        /// The entry's index.
        index: u64,
        /// The seq in its leaf data.
        seq: u64,
    },
}

/// Parses a data tile: exactly `count` entries of 97-byte [`LeafData`], the
/// entry at position `i` being the leaf of seq `first_seq + i`. Strict:
/// wrong length, an entry that does not decode, or a seq out of place is
/// refused. The leaves are not verified until [`Follower::advance`].
pub fn parse_data_tile(
    bytes: &[u8],
    first_seq: u64,
    count: u64,
) -> Result<Vec<LeafData>, TileError> {
    let expected = usize::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(LEAF_DATA_LEN));
    if expected != Some(bytes.len()) {
        return Err(TileError::Length {
            count,
            len: bytes.len(),
        });
    }
    let mut leaves = Vec::with_capacity(bytes.len() / LEAF_DATA_LEN);
    for (entry, i) in bytes.chunks_exact(LEAF_DATA_LEN).zip(0u64..) {
        let index = first_seq.checked_add(i);
        let leaf = LeafData::from_canonical_bytes(entry).map_err(|error| TileError::Entry {
            seq: index.unwrap_or(u64::MAX),
            error,
        })?;
        match index {
            Some(index) if leaf.check_index(index).is_ok() => leaves.push(leaf),
            _ => {
                return Err(TileError::Seq {
                    index: index.unwrap_or(u64::MAX),
                    seq: leaf.seq,
                });
            }
        }
    }
    Ok(leaves)
}

/// A leaf of the client's rooms that its archive does not account for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    /// The log holds an envelope of one of the client's rooms that the node
    /// never delivered.
    Missing {
        /// The leaf's seq.
        seq: u64,
        /// Its room.
        room: RoomId,
    },
    /// The envelope archived at this seq is not the one the log holds: the
    /// node delivered one thing and logged another.
    Mismatch {
        /// The leaf's seq.
        seq: u64,
        /// The leaf's room.
        room: RoomId,
        /// The header hash in the log.
        logged: Digest,
        /// The header hash of the envelope archived at that seq.
        archived: Digest,
    },
}

/// Accounts for verified `leaves` (below a verified checkpoint): every leaf
/// whose room is in `my_rooms` must be archived, and every archived
/// envelope (of any room) must have the leaf's header hash. `archived(seq)`
/// gives the header hash of the envelope archived at `seq`, if any.
///
/// `my_rooms` are the rooms the client receives over the leaves' range; if
/// they changed within it (an access-list change), call once per part.
pub fn withheld(
    leaves: &[LeafData],
    my_rooms: &BTreeSet<RoomId>,
    archived: impl Fn(u64) -> Option<Digest>,
) -> Vec<Withheld> {
    leaves
        .iter()
        .filter_map(|leaf| match archived(leaf.seq) {
            Some(h) if h != leaf.header_hash => Some(Withheld::Mismatch {
                seq: leaf.seq,
                room: leaf.room,
                logged: leaf.header_hash,
                archived: h,
            }),
            Some(_) => None,
            None if my_rooms.contains(&leaf.room) => Some(Withheld::Missing {
                seq: leaf.seq,
                room: leaf.room,
            }),
            None => None,
        })
        .collect()
}

/// What a receipt promised: the leaf hash at its seq, by its batch time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Promise {
    leaf_hash: Digest,
    batch_time_ms: u64,
}

/// The client's receipted envelopes not yet below a verified checkpoint.
///
/// Rules for the caller: [`Pending::add`] each verified receipt
/// (`Receipt::verify`) as it arrives; after every [`Follower::advance`],
/// [`Pending::settle`] with the leaves just verified; then ask
/// [`Pending::overdue`] with the time the checkpoint was fetched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    entries: BTreeMap<u64, Promise>,
}

/// Evidence that the node acknowledged an envelope and did not merge it
/// into its log in time: the receipt for `seq`, signed at
/// `receipt_time_ms`, and a verified checkpoint not reaching `seq` fetched
/// [`MAX_MERGE_DELAY_MS`] or more later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotMerged {
    /// The receipted envelope's seq.
    pub seq: u64,
    /// The receipt's batch timestamp (node clock, Unix ms).
    pub receipt_time_ms: u64,
}

/// Why a receipt was not added.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PendingError {
    /// Another receipt for the same seq promised another leaf: the node
    /// signed two batches placing different envelopes at one seq (keep both
    /// receipts: they are the evidence).
    #[error(
        "two receipts for seq {seq}: leaf {} and leaf {}",
        held.to_hex(),
        offered.to_hex()
    )]
    Conflict {
        /// The seq.
        seq: u64,
        /// The leaf hash already held.
        held: Digest,
        /// The leaf hash of the new receipt.
        offered: Digest,
    },
    /// [`MAX_PENDING`] receipts already wait.
    #[error("{MAX_PENDING} receipts already wait to be merged; sync the log first")]
    Full,
}

/// Why pending receipts could not be settled.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettleError {
    /// Evidence: the verified log holds another leaf at a receipted seq
    /// than the receipt promised (the receipt and the checkpoint are both
    /// signed by the node).
    #[error(
        "the receipt for seq {seq} promised leaf {}, the verified log holds {}",
        promised.to_hex(),
        logged.to_hex()
    )]
    LeafDiffers {
        /// The seq.
        seq: u64,
        /// The leaf hash in the receipt.
        promised: Digest,
        /// The leaf hash in the verified log.
        logged: Digest,
    },
    /// A receipted seq is below the verified size but its leaf was not
    /// passed (the caller's mistake): settle with the leaves the follower
    /// verified, or with an inclusion proof ([`Pending::settle_with_proof`]).
    #[error("seq {seq} is below the verified size but its leaf was not given")]
    LeafNotGiven {
        /// The seq.
        seq: u64,
    },
    /// The inclusion proof does not lead from the promised leaf to the
    /// verified root. Not evidence by itself: the node made the proof.
    #[error("the inclusion proof for seq {seq} does not verify against the verified root")]
    BadProof {
        /// The seq.
        seq: u64,
    },
}

impl Pending {
    /// No receipts.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many receipts wait.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The seqs waiting, in order.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.keys().copied()
    }

    /// Holds the node to a verified receipt: the envelope at `seq` has leaf
    /// hash `leaf_hash`, in a batch signed at `batch_time_ms`. Adding the
    /// same promise again is a no-op.
    pub fn add(
        &mut self,
        seq: u64,
        leaf_hash: Digest,
        batch_time_ms: u64,
    ) -> Result<(), PendingError> {
        if let Some(held) = self.entries.get(&seq) {
            return if held.leaf_hash == leaf_hash {
                Ok(())
            } else {
                Err(PendingError::Conflict {
                    seq,
                    held: held.leaf_hash,
                    offered: leaf_hash,
                })
            };
        }
        if self.entries.len() >= MAX_PENDING {
            return Err(PendingError::Full);
        }
        self.entries.insert(
            seq,
            Promise {
                leaf_hash,
                batch_time_ms,
            },
        );
        Ok(())
    }

    /// Settles every receipt below the follower's size against `leaves`
    /// (verified by the follower, in seq order): each must hold the leaf
    /// hash its receipt promised. Settled receipts leave the set; on an
    /// error none do.
    pub fn settle(&mut self, follower: &Follower, leaves: &[LeafData]) -> Result<(), SettleError> {
        let due: Vec<u64> = self
            .entries
            .range(..follower.size())
            .map(|(s, _)| *s)
            .collect();
        for (seq, promise) in self.entries.range(..follower.size()) {
            let leaf = leaves
                .binary_search_by_key(seq, |l| l.seq)
                .ok()
                .and_then(|i| leaves.get(i))
                .ok_or(SettleError::LeafNotGiven { seq: *seq })?;
            let logged = leaf.hash();
            if logged != promise.leaf_hash {
                return Err(SettleError::LeafDiffers {
                    seq: *seq,
                    promised: promise.leaf_hash,
                    logged,
                });
            }
        }
        for seq in due {
            self.entries.remove(&seq);
        }
        Ok(())
    }

    /// Settles one receipt below the follower's size with the node's
    /// inclusion proof of its promised leaf in the follower's verified
    /// root, for a receipt that arrived after the follower passed its seq.
    /// A seq not pending or not below the size is left alone.
    pub fn settle_with_proof(
        &mut self,
        follower: &Follower,
        seq: u64,
        proof: &InclusionProof,
    ) -> Result<(), SettleError> {
        let Some(promise) = self.entries.get(&seq) else {
            return Ok(());
        };
        if seq >= follower.size() {
            return Ok(());
        }
        proof
            .verify(seq, follower.size(), &follower.root(), &promise.leaf_hash)
            .map_err(|_| SettleError::BadProof { seq })?;
        self.entries.remove(&seq);
        Ok(())
    }

    /// The receipts whose envelope should have been merged by `now_ms`:
    /// batch timestamp + [`MAX_MERGE_DELAY_MS`] ≤ `now_ms`, still pending.
    ///
    /// `now_ms` must be the time the checkpoint the follower last advanced
    /// to was fetched (the node's latest then), and [`Pending::settle`] must
    /// have run since: the question is whether the node's latest checkpoint
    /// reached the envelope, not whether this client was online.
    pub fn overdue(&self, now_ms: u64) -> Vec<NotMerged> {
        self.entries
            .iter()
            .filter(|(_, p)| now_ms >= p.batch_time_ms.saturating_add(MAX_MERGE_DELAY_MS))
            .map(|(seq, p)| NotMerged {
                seq: *seq,
                receipt_time_ms: p.batch_time_ms,
            })
            .collect()
    }
}

impl Encode for Pending {
    fn encode(&self, w: &mut Writer) {
        w.u8(STATE_FORMAT_VERSION);
        // At most MAX_PENDING entries (`add` refuses more).
        w.len(self.entries.len());
        for (seq, p) in &self.entries {
            w.u64(*seq);
            p.leaf_hash.encode(w);
            w.u64(p.batch_time_ms);
        }
    }
}

impl Decode for Pending {
    const MIN_LEN: usize = 1 + 4;

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("pending format version", STATE_FORMAT_VERSION)?;
        let count = r.len("pending receipts", MAX_PENDING, 8 + 32 + 8)?;
        let mut entries = BTreeMap::new();
        let mut last = None;
        for _ in 0..count {
            let seq = r.u64("pending seq")?;
            let leaf_hash = Digest::decode(r)?;
            let batch_time_ms = r.u64("pending batch timestamp")?;
            if last.is_some_and(|l| seq <= l) {
                return Err(DecodeError::Invalid {
                    field: "pending receipts",
                    reason: "items must be sorted and unique",
                });
            }
            last = Some(seq);
            entries.insert(
                seq,
                Promise {
                    leaf_hash,
                    batch_time_ms,
                },
            );
        }
        Ok(Self { entries })
    }
}

/// The client's witness memory for one talks' log: the last checkpoint it
/// cosigned.
///
/// The rule that makes cosignatures worth anything: **persist the witness
/// state after [`Witness::cosign`] returns and before sending the line.**
/// `cosign` updates the state first, so a crash between persisting and
/// sending loses one cosignature, never the memory of having given it (a
/// lost memory could let a forked node obtain a second root for one size).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Witness {
    last: Option<(u64, Digest)>,
}

/// Why the witness refused to cosign.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WitnessError {
    /// The follower has not verified (or no longer holds) a root at this
    /// size: only verified checkpoints are cosigned.
    #[error("the checkpoint of size {size} has not been verified; advance the follower first")]
    Unverified {
        /// The checkpoint's size.
        size: u64,
    },
    /// The follower verified another root at this size: the checkpoint is
    /// from another history.
    #[error(
        "the checkpoint of size {size} has root {}, the follower verified {}",
        offered.to_hex(),
        verified.to_hex()
    )]
    Disagrees {
        /// The size.
        size: u64,
        /// The root the follower verified.
        verified: Digest,
        /// The checkpoint's root.
        offered: Digest,
    },
    /// The checkpoint is smaller than the last one cosigned.
    #[error("the checkpoint of size {offered} is older than the last cosigned, of size {cosigned}")]
    Older {
        /// The last cosigned size.
        cosigned: u64,
        /// The checkpoint's size.
        offered: u64,
    },
    /// Evidence of a fork: a root at the last cosigned size other than the
    /// one cosigned (in the checkpoint, or in the follower's view).
    #[error(
        "fork at size {size}: cosigned root {}, now offered {}",
        cosigned.to_hex(),
        offered.to_hex()
    )]
    Fork {
        /// The size.
        size: u64,
        /// The root cosigned.
        cosigned: Digest,
        /// The other root.
        offered: Digest,
    },
    /// The signer failed.
    #[error(transparent)]
    Sign(#[from] CosignError),
}

impl Witness {
    /// A witness that has cosigned nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last (size, root) cosigned, if any.
    pub fn last_cosigned(&self) -> Option<(u64, Digest)> {
        self.last
    }

    /// Cosigns `checkpoint` (verified under the talks' log origin and the
    /// node's log key) as `witness_name(signer's key id)` at `timestamp_s`
    /// (POSIX seconds), returning the C2SP cosignature line for
    /// `POST …/checkpoint/cosignatures`. Refuses a checkpoint the follower
    /// has not verified with the same root, one older than the last
    /// cosigned, and another root at the last cosigned size. The state is
    /// updated before the line is returned (see [`Witness`] for the rule).
    /// Cosigning the last cosigned checkpoint again is allowed (a retry).
    pub fn cosign(
        &mut self,
        follower: &Follower,
        checkpoint: &SignedCheckpoint,
        signer: &dyn Signer,
        timestamp_s: u64,
    ) -> Result<Vec<u8>, WitnessError> {
        let offered = checkpoint.checkpoint();
        if let Some((size, cosigned)) = self.last {
            if offered.size < size {
                return Err(WitnessError::Older {
                    cosigned: size,
                    offered: offered.size,
                });
            }
            if offered.size == size && offered.root != cosigned {
                return Err(WitnessError::Fork {
                    size,
                    cosigned,
                    offered: offered.root,
                });
            }
            // The follower's own root at the cosigned size, if it still
            // holds it, must be the one cosigned (a follower rebuilt on
            // another history).
            if let Some(ours) = follower.root_at(size).filter(|r| *r != cosigned) {
                return Err(WitnessError::Fork {
                    size,
                    cosigned,
                    offered: ours,
                });
            }
        }
        match follower.root_at(offered.size) {
            None => {
                return Err(WitnessError::Unverified { size: offered.size });
            }
            Some(verified) if verified != offered.root => {
                return Err(WitnessError::Disagrees {
                    size: offered.size,
                    verified,
                    offered: offered.root,
                });
            }
            Some(_) => {}
        }
        let name = witness_name(&signer.public_key().id());
        let line = Cosignature::sign(signer, &name, timestamp_s, &checkpoint.body())?.to_line();
        self.last = Some((offered.size, offered.root));
        Ok(line)
    }
}

impl Encode for Witness {
    fn encode(&self, w: &mut Writer) {
        w.u8(STATE_FORMAT_VERSION);
        match self.last {
            None => w.bool(false),
            Some((size, root)) => {
                w.bool(true);
                w.u64(size);
                root.encode(w);
            }
        }
    }
}

impl Decode for Witness {
    const MIN_LEN: usize = 2;

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("witness format version", STATE_FORMAT_VERSION)?;
        let last = if r.bool("witness cosigned")? {
            Some((r.u64("witness size")?, Digest::decode(r)?))
        } else {
            None
        };
        Ok(Self { last })
    }
}
