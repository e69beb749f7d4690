//! Inclusion and consistency proofs (RFC 6962 §2.1.1, §2.1.2), built and
//! checked by `tlog_tiles`, with a canonical encoding and an in-memory hash
//! store.
//!
//! ```text
//! inclusion proof:    u64 leaf index ‖ u64 tree size ‖ u32 count ‖ count × [u8;32]
//! consistency proof:  u64 old size   ‖ u64 new size  ‖ u32 count ‖ count × [u8;32]
//! ```
//!
//! Decoding is strict: `index < size` (resp. `1 ≤ old ≤ new`), and the count
//! must be exactly the length RFC 6962 gives for those sizes, so every
//! proof has one encoding.

use std::collections::HashMap;

use backchannel_codec::{Decode, DecodeError, Encode, Reader, Writer};
use backchannel_crypto::Digest;
use thiserror::Error;
use tlog_tiles::{Hash, HashReader, Tile};

use crate::{from_tlog, to_tlog};

/// The most hashes a proof can hold: a proof has at most one hash per tree
/// level, and 64 levels cover 2^64 leaves, more than any `u64` tree size.
pub const MAX_PROOF_HASHES: usize = 64;

/// Why a proof could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProveError {
    /// The index or sizes are out of range (`index < size ≤ stored`, or
    /// `1 ≤ old ≤ new ≤ stored`).
    #[error("out of range: {0}")]
    OutOfRange(&'static str),
    /// The hash store could not supply a hash.
    #[error("hash store: {0}")]
    Store(String),
}

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyProofError {
    /// The proof does not lead from the given hashes to the given root(s).
    #[error("proof does not verify")]
    Invalid,
}

/// The number of hashes in the inclusion proof of leaf `index` in a tree of
/// `size` leaves (`index < size`): one per level walked down to the leaf.
pub fn inclusion_proof_len(index: u64, size: u64) -> usize {
    let (mut lo, mut hi, mut len) = (0u64, size, 0usize);
    while hi - lo > 1 {
        let k = max_pow2_below(hi - lo);
        if index < lo + k {
            hi = lo + k;
        } else {
            lo += k;
        }
        len += 1;
    }
    len
}

/// The number of hashes in the consistency proof from `old` to `new` leaves
/// (`1 ≤ old ≤ new`), following RFC 6962 §2.1.2's SUBPROOF.
pub fn consistency_proof_len(old: u64, new: u64) -> usize {
    let (mut lo, mut hi, mut len) = (0u64, new, 0usize);
    loop {
        if old == hi {
            return len + usize::from(lo != 0);
        }
        let k = max_pow2_below(hi - lo);
        if old <= lo + k {
            hi = lo + k;
        } else {
            lo += k;
        }
        len += 1;
    }
}

/// The largest power of two strictly below `n` (`n ≥ 2`).
fn max_pow2_below(n: u64) -> u64 {
    1 << (n - 1).ilog2()
}

/// A proof that a leaf is in a tree (RFC 6962 §2.1.1 audit path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    index: u64,
    tree_size: u64,
    hashes: Vec<Digest>,
}

impl InclusionProof {
    /// A proof from its parts; fails unless `index < tree_size` and the
    /// number of hashes is the one RFC 6962 gives.
    pub fn new(index: u64, tree_size: u64, hashes: Vec<Digest>) -> Result<Self, DecodeError> {
        if index >= tree_size {
            return Err(DecodeError::Invalid {
                field: "inclusion proof",
                reason: "leaf index not below tree size",
            });
        }
        if hashes.len() != inclusion_proof_len(index, tree_size) {
            return Err(DecodeError::Invalid {
                field: "inclusion proof",
                reason: "wrong number of hashes for the index and size",
            });
        }
        Ok(Self {
            index,
            tree_size,
            hashes,
        })
    }

    /// Builds the proof that leaf `index` is in the tree of `tree_size`
    /// leaves, reading stored hashes from `store`.
    pub fn prove(store: &impl HashReader, index: u64, tree_size: u64) -> Result<Self, ProveError> {
        if index >= tree_size {
            return Err(ProveError::OutOfRange("leaf index not below tree size"));
        }
        let p = tlog_tiles::prove_record(tree_size, index, store)
            .map_err(|e| ProveError::Store(e.to_string()))?;
        Self::new(index, tree_size, p.into_iter().map(from_tlog).collect())
            .map_err(|_| ProveError::Store("store returned a proof of the wrong length".into()))
    }

    /// The leaf index proved.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The tree size proved against.
    pub fn tree_size(&self) -> u64 {
        self.tree_size
    }

    /// The audit path, leaf to root.
    pub fn hashes(&self) -> &[Digest] {
        &self.hashes
    }

    /// Checks that `leaf_hash` is leaf `index` of the tree of `tree_size`
    /// leaves whose root is `root`. The index and size are the verifier's
    /// (from the envelope and a signed checkpoint), not the proof's: RFC 6962
    /// paths do not commit to the tree size (the path of leaf 0 is the same in
    /// trees of 129 and 255 leaves), so a proof claiming other numbers is
    /// refused here.
    pub fn verify(
        &self,
        index: u64,
        tree_size: u64,
        root: &Digest,
        leaf_hash: &Digest,
    ) -> Result<(), VerifyProofError> {
        if index != self.index || tree_size != self.tree_size {
            return Err(VerifyProofError::Invalid);
        }
        let p: Vec<Hash> = self.hashes.iter().map(to_tlog).collect();
        tlog_tiles::check_record(
            &p,
            self.tree_size,
            to_tlog(root),
            self.index,
            to_tlog(leaf_hash),
        )
        .map_err(|_| VerifyProofError::Invalid)
    }
}

impl Encode for InclusionProof {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.index);
        w.u64(self.tree_size);
        w.list(&self.hashes);
    }
}

impl Decode for InclusionProof {
    const MIN_LEN: usize = 8 + 8 + 4;

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let index = r.u64("leaf index")?;
        let tree_size = r.u64("tree size")?;
        let hashes = r.list("proof hashes", MAX_PROOF_HASHES)?;
        Self::new(index, tree_size, hashes)
    }
}

/// A proof that a tree extends an earlier one (RFC 6962 §2.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    old_size: u64,
    new_size: u64,
    hashes: Vec<Digest>,
}

impl ConsistencyProof {
    /// A proof from its parts; fails unless `1 ≤ old_size ≤ new_size` and
    /// the number of hashes is the one RFC 6962 gives.
    pub fn new(old_size: u64, new_size: u64, hashes: Vec<Digest>) -> Result<Self, DecodeError> {
        if old_size == 0 || old_size > new_size {
            return Err(DecodeError::Invalid {
                field: "consistency proof",
                reason: "sizes must satisfy 1 <= old <= new",
            });
        }
        if hashes.len() != consistency_proof_len(old_size, new_size) {
            return Err(DecodeError::Invalid {
                field: "consistency proof",
                reason: "wrong number of hashes for the sizes",
            });
        }
        Ok(Self {
            old_size,
            new_size,
            hashes,
        })
    }

    /// Builds the proof that the tree of `new_size` leaves extends the tree
    /// of `old_size` leaves.
    pub fn prove(
        store: &impl HashReader,
        old_size: u64,
        new_size: u64,
    ) -> Result<Self, ProveError> {
        if old_size == 0 || old_size > new_size {
            return Err(ProveError::OutOfRange("sizes must satisfy 1 <= old <= new"));
        }
        let p = tlog_tiles::prove_tree(new_size, old_size, store)
            .map_err(|e| ProveError::Store(e.to_string()))?;
        Self::new(old_size, new_size, p.into_iter().map(from_tlog).collect())
            .map_err(|_| ProveError::Store("store returned a proof of the wrong length".into()))
    }

    /// The earlier tree's size.
    pub fn old_size(&self) -> u64 {
        self.old_size
    }

    /// The later tree's size.
    pub fn new_size(&self) -> u64 {
        self.new_size
    }

    /// The proof's hashes.
    pub fn hashes(&self) -> &[Digest] {
        &self.hashes
    }

    /// Checks that the tree of `new_size` leaves with root `new_root` extends
    /// the tree of `old_size` leaves with root `old_root` (sizes from signed
    /// checkpoints; a proof for other sizes is refused).
    pub fn verify(
        &self,
        old_size: u64,
        old_root: &Digest,
        new_size: u64,
        new_root: &Digest,
    ) -> Result<(), VerifyProofError> {
        if old_size != self.old_size || new_size != self.new_size {
            return Err(VerifyProofError::Invalid);
        }
        let p: Vec<Hash> = self.hashes.iter().map(to_tlog).collect();
        tlog_tiles::check_tree(
            &p,
            self.new_size,
            to_tlog(new_root),
            self.old_size,
            to_tlog(old_root),
        )
        .map_err(|_| VerifyProofError::Invalid)
    }
}

impl Encode for ConsistencyProof {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.old_size);
        w.u64(self.new_size);
        w.list(&self.hashes);
    }
}

impl Decode for ConsistencyProof {
    const MIN_LEN: usize = 8 + 8 + 4;

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let old_size = r.u64("old size")?;
        let new_size = r.u64("new size")?;
        let hashes = r.list("proof hashes", MAX_PROOF_HASHES)?;
        Self::new(old_size, new_size, hashes)
    }
}

/// An append-only log's stored hashes in memory, in `tlog_tiles`' stored
/// hash order (Crosby–Wallach), for tests, benches and clients.
#[derive(Debug, Clone, Default)]
pub struct MemoryHashStore {
    hashes: Vec<Hash>,
    size: u64,
}

impl MemoryHashStore {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf by its leaf hash; returns its index.
    pub fn append(&mut self, leaf_hash: &Digest) -> Result<u64, ProveError> {
        let index = self.size;
        let new = tlog_tiles::stored_hashes_for_record_hash(index, to_tlog(leaf_hash), self)
            .map_err(|e| ProveError::Store(e.to_string()))?;
        self.hashes.extend(new);
        self.size += 1;
        Ok(index)
    }

    /// How many leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the whole log.
    pub fn root(&self) -> Result<Digest, ProveError> {
        self.root_at(self.size)
    }

    /// The root of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Digest, ProveError> {
        if size > self.size {
            return Err(ProveError::OutOfRange("size past the end of the log"));
        }
        tlog_tiles::tree_hash(size, self)
            .map(from_tlog)
            .map_err(|e| ProveError::Store(e.to_string()))
    }

    /// The inclusion proof of leaf `index` in the tree of `tree_size` leaves.
    pub fn prove_inclusion(
        &self,
        index: u64,
        tree_size: u64,
    ) -> Result<InclusionProof, ProveError> {
        if tree_size > self.size {
            return Err(ProveError::OutOfRange("tree size past the end of the log"));
        }
        InclusionProof::prove(self, index, tree_size)
    }

    /// The consistency proof from `old_size` to `new_size` leaves.
    pub fn prove_consistency(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof, ProveError> {
        if new_size > self.size {
            return Err(ProveError::OutOfRange("tree size past the end of the log"));
        }
        ConsistencyProof::prove(self, old_size, new_size)
    }

    /// The tiles of height `height` (C2SP tlog-tiles) of the whole log.
    pub fn tiles(&self, height: u8) -> Result<TileSet, ProveError> {
        let mut set = TileSet::new(height)?;
        for tile in Tile::new_tiles(height, 0, self.size) {
            let data = tile
                .read_data(self)
                .map_err(|e| ProveError::Store(e.to_string()))?;
            set.insert(tile, data)?;
        }
        Ok(set)
    }
}

impl HashReader for MemoryHashStore {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.hashes.get(i))
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// Tiles of one height (C2SP tlog-tiles), as a client fetches them, read as
/// a [`HashReader`] without checking them against a root: use it to
/// *compute* a tree hash ([`tree_hash_from_tiles`]) and compare that with a
/// signed checkpoint, or wrap the tiles in `tlog_tiles::TileHashReader`,
/// which checks them.
#[derive(Debug, Clone)]
pub struct TileSet {
    height: u8,
    tiles: HashMap<(u8, u64), (Tile, Vec<u8>)>,
}

/// The tile heights `tlog_tiles` supports (`1 ≤ H ≤ 30`).
const TILE_HEIGHTS: std::ops::RangeInclusive<u8> = 1..=30;

impl TileSet {
    /// An empty set of tiles of height `height` (1 to 30; C2SP tlog-tiles
    /// uses 8).
    pub fn new(height: u8) -> Result<Self, ProveError> {
        if !TILE_HEIGHTS.contains(&height) {
            return Err(ProveError::OutOfRange("tile height must be 1 to 30"));
        }
        Ok(Self {
            height,
            tiles: HashMap::new(),
        })
    }

    /// Adds a tile (a wider tile replaces a narrower one at the same place).
    pub fn insert(&mut self, tile: Tile, data: Vec<u8>) -> Result<(), ProveError> {
        if tile.height() != self.height || tile.is_data() {
            return Err(ProveError::OutOfRange(
                "tile of another height, or a data tile",
            ));
        }
        if data.len() != tile.width() as usize * tlog_tiles::HASH_SIZE {
            return Err(ProveError::OutOfRange(
                "tile data length does not match its width",
            ));
        }
        let key = (tile.level(), tile.level_index());
        if self
            .tiles
            .get(&key)
            .is_none_or(|(t, _)| t.width() < tile.width())
        {
            self.tiles.insert(key, (tile, data));
        }
        Ok(())
    }

    /// The tiles held.
    pub fn iter(&self) -> impl Iterator<Item = (&Tile, &[u8])> {
        self.tiles.values().map(|(t, d)| (t, d.as_slice()))
    }
}

impl HashReader for TileSet {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                let want = Tile::from_index(self.height, i);
                let (tile, data) = self
                    .tiles
                    .get(&(want.level(), want.level_index()))
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)?;
                tile.hash_at_index(data, i)
            })
            .collect()
    }
}

/// The root hash of the first `size` leaves, computed from tiles.
pub fn tree_hash_from_tiles(size: u64, tiles: &TileSet) -> Result<Digest, ProveError> {
    tlog_tiles::tree_hash(size, tiles)
        .map(from_tlog)
        .map_err(|e| ProveError::Store(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(n: u64) -> MemoryHashStore {
        let mut s = MemoryHashStore::new();
        for i in 0..n {
            s.append(&from_tlog(tlog_tiles::record_hash(
                format!("leaf {i}").as_bytes(),
            )))
            .expect("appends");
        }
        s
    }

    #[test]
    fn lengths_match_tlog_tiles() {
        let s = store(70);
        for size in 1..=70 {
            for i in 0..size {
                let p = tlog_tiles::prove_record(size, i, &s).expect("proves");
                assert_eq!(p.len(), inclusion_proof_len(i, size));
                let p = tlog_tiles::prove_tree(size, i + 1, &s).expect("proves");
                assert_eq!(p.len(), consistency_proof_len(i + 1, size));
            }
        }
    }

    #[test]
    fn tiles_give_the_same_root() {
        let s = store(1000);
        for h in [1, 2, 8] {
            let tiles = s.tiles(h).expect("tiles");
            for size in [1, 2, 3, 255, 256, 257, 999, 1000] {
                assert_eq!(tree_hash_from_tiles(size, &tiles), s.root_at(size));
            }
        }
        assert!(TileSet::new(0).is_err());
        assert!(s.root_at(1001).is_err());
        assert!(s.prove_inclusion(0, 1001).is_err());
    }
}
