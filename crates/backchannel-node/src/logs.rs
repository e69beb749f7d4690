//! Log endpoints: the latest checkpoint with its cosignatures, cosigning,
//! tlog tiles, inclusion and consistency proofs — each per talks and
//! authorised by that talks' access list.
//!
//! Proofs are computed from stored tree hashes. `tlog_tiles` reads hashes
//! synchronously and the store is async, so each proof is computed twice:
//! once with a reader that records which indexes it asks for (the set
//! depends only on the sizes, never on hash values), then, after one
//! [`Store::tree_hashes`] round trip, with those hashes.
//!
//! Data tiles (`tile/8/data/<N>[.p/<W>]`) hold each leaf's 97-byte
//! [`LeafData`], rebuilt from the stored envelopes (never trusted from a
//! stored hash): a client re-hashes them into the tree it keeps, so it
//! verifies each new checkpoint from the leaves themselves and accounts for
//! every leaf of its rooms. They show every member of the talks each
//! leaf's room id and time (not its sender, size or content): the price of
//! withheld-envelope detection, stated in the threat model. A full data
//! tile never changes once integrated (a seq's row is never rewritten, and
//! a purge keeps the leaf columns), so the last [`MAX_CACHED_DATA_TILES`]
//! served are kept ([`DataTiles`]): every recipient of a talks fetches the
//! same ones.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use backchannel_codec::{Encode, TalksId};
use backchannel_statement::access_list::FLAG_DEVICE;
use backchannel_store::{MAX_TREE_HASHES, Store, StoreError};
use backchannel_tlog::{
    CheckpointNote, ConsistencyProof, Cosignature, CosignerKey, InclusionProof, LEAF_DATA_LEN,
    attach,
};
use serde::Deserialize;
use tlog_tiles::{Hash, HashReader};

use crate::api::{self, ApiError};
use crate::server::{
    ApiJson, ApiPath, ApiQuery, Authed, Node, parse_talks, store_error, witness_name,
};

/// How often a cosignature is re-attached when another cosigner changed
/// the note between read and compare-and-swap, before answering 503.
pub const COSIGN_ATTEMPTS: usize = 8;

/// The tile height served (C2SP tlog-tiles uses 8).
pub const TILE_HEIGHT: u8 = 8;

/// Records the indexes a computation asks for, answering zero hashes.
#[derive(Default)]
struct Recorder(RefCell<Vec<u64>>);

impl HashReader for Recorder {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        self.0.borrow_mut().extend_from_slice(indexes);
        Ok(vec![Hash([0; 32]); indexes.len()])
    }
}

/// Answers from hashes fetched beforehand.
struct Fetched(BTreeMap<u64, Hash>);

impl HashReader for Fetched {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|i| {
                self.0
                    .get(i)
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// Runs `compute` against the stored hashes of `talks` it needs.
async fn with_hashes<S: Store, T>(
    store: &S,
    talks: TalksId,
    compute: impl Fn(&Dyn<'_>) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let recorder = Recorder::default();
    compute(&Dyn(&recorder))?;
    let mut indexes = recorder.0.into_inner();
    indexes.sort_unstable();
    indexes.dedup();
    if indexes.len() > MAX_TREE_HASHES {
        return Err(ApiError::too_large(
            "the request needs too many tree hashes",
        ));
    }
    let hashes = store
        .tree_hashes(talks, &indexes)
        .await
        .map_err(|e| match e {
            // An index outside the integrated tree: the caller asked beyond it.
            StoreError::Limit(_) => ApiError::not_found(),
            other => store_error(other),
        })?;
    let fetched = Fetched(
        indexes
            .into_iter()
            .zip(hashes.into_iter().map(|d| Hash(d.0)))
            .collect(),
    );
    compute(&Dyn(&fetched))
}

/// Either reader, as one sized type (`tlog_tiles` takes `impl HashReader`).
struct Dyn<'a>(&'a dyn HashReader);

impl HashReader for Dyn<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        self.0.read_hashes(indexes)
    }
}

pub(crate) async fn checkpoint<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
) -> Result<Json<api::CheckpointBody>, ApiError> {
    let talks = parse_talks(&talks)?;
    node.member(talks, &key).await?;
    let record = node
        .store
        .checkpoint(talks)
        .await
        .map_err(store_error)?
        .ok_or_else(ApiError::unavailable)?;
    let note = String::from_utf8(record.note).map_err(|_| ApiError::internal())?;
    Ok(Json(api::CheckpointBody {
        size: record.size,
        note,
    }))
}

pub(crate) async fn cosign<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
    ApiJson(req): ApiJson<api::Cosign>,
) -> Result<Response, ApiError> {
    let talks = parse_talks(&talks)?;
    let (_, _, entry) = node.member(talks, &key).await?;
    if !entry.has(FLAG_DEVICE) {
        return Err(ApiError::forbidden("only device keys cosign checkpoints"));
    }
    let line = Cosignature::from_line(req.line.as_bytes())
        .map_err(|e| ApiError::malformed(format!("the cosignature line: {e}")))?;
    let cosigner =
        CosignerKey::new(&witness_name(&key.id()), key).map_err(|_| ApiError::internal())?;
    // A few rounds: another cosigner may attach its line meanwhile.
    for _ in 0..COSIGN_ATTEMPTS {
        let record = node
            .store
            .checkpoint(talks)
            .await
            .map_err(store_error)?
            .ok_or_else(ApiError::unavailable)?;
        if record.size != req.size {
            return Err(ApiError::stale(format!(
                "the latest checkpoint has size {}; cosign that one",
                record.size
            )));
        }
        let parsed = CheckpointNote::parse(&record.note).map_err(|_| ApiError::internal())?;
        line.verify(&cosigner, &parsed.claimed().body())
            .map_err(|e| ApiError::malformed(format!("the cosignature does not verify: {e}")))?;
        let note = attach(&record.note, &line)
            .map_err(|e| ApiError::too_large(format!("the note cannot take it: {e}")))?;
        match node
            .store
            .replace_checkpoint_note(talks, record.size, &record.note, &note)
            .await
        {
            Ok(()) => return Ok(StatusCode::NO_CONTENT.into_response()),
            Err(StoreError::Stale) => continue,
            Err(e) => return Err(store_error(e)),
        }
    }
    Err(ApiError::unavailable())
}

pub(crate) async fn tile<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath((talks, path)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let talks = parse_talks(&talks)?;
    node.member(talks, &key).await?;
    let tile =
        tlog_tiles::Tile::from_path(&format!("tile/{path}")).map_err(|_| ApiError::not_found())?;
    // Levels 0..8 of height-8 tiles cover every tree of up to 2^64 leaves;
    // a higher level would overflow the tile maths.
    if tile.height() != TILE_HEIGHT || tile.level() >= 8 {
        return Err(ApiError::not_found());
    }
    if tile.is_data() {
        return data_tile(&node, talks, &tile).await;
    }
    let data = with_hashes(&*node.store, talks, |r| {
        tile.read_data(r).map_err(|_| ApiError::not_found())
    })
    .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        data,
    )
        .into_response())
}

/// How many full data tiles the node keeps (24.25 KiB each: at most about
/// 12 MiB).
pub const MAX_CACHED_DATA_TILES: usize = 512;

/// The full data tiles served last, by talks and tile index (oldest
/// first out). Only full tiles: they are immutable once integrated.
#[derive(Default)]
pub(crate) struct DataTiles {
    inner: Mutex<KeptTiles>,
}

/// The kept tiles, and their keys in the order they were first kept.
type KeptTiles = (HashMap<(TalksId, u64), Arc<[u8]>>, VecDeque<(TalksId, u64)>);

impl DataTiles {
    fn get(&self, talks: TalksId, index: u64) -> Option<Arc<[u8]>> {
        let inner = self.inner.lock().ok()?;
        inner.0.get(&(talks, index)).cloned()
    }

    fn put(&self, talks: TalksId, index: u64, tile: Arc<[u8]>) {
        // A poisoned lock only loses the cache.
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let (tiles, order) = &mut *inner;
        if tiles.insert((talks, index), tile).is_none() {
            order.push_back((talks, index));
        }
        while order.len() > MAX_CACHED_DATA_TILES {
            if let Some(old) = order.pop_front() {
                tiles.remove(&old);
            }
        }
    }
}

/// A data tile: the leaf data of its entries, within the integrated tree:
/// from the leaves this node sequenced lately ([`crate::integrate::LeafHints`])
/// when it holds all of them, else from the stored envelopes' leaf columns
/// (no bodies).
async fn data_tile<S: Store>(
    node: &Node<S>,
    talks: TalksId,
    tile: &tlog_tiles::Tile,
) -> Result<Response, ApiError> {
    if tile.level() != 0 {
        return Err(ApiError::not_found());
    }
    let width = u64::from(tile.width());
    let full = width == 1 << TILE_HEIGHT;
    let start = tile
        .level_index()
        .checked_mul(1 << TILE_HEIGHT)
        .ok_or_else(ApiError::not_found)?;
    let end = start.checked_add(width).ok_or_else(ApiError::not_found)?;
    // Served only once integrated: a cached tile was.
    if full && let Some(cached) = node.data_tiles.get(talks, tile.level_index()) {
        return Ok((
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            axum::body::Bytes::from_owner(cached),
        )
            .into_response());
    }
    integrated(node, talks, end).await?;
    // The log's tail, as this node sequenced it, without a store read.
    let out = match node.sequencer.leaf_hints().tile(talks, start, end) {
        Some(out) => out,
        None => read_data_tile(node, talks, start, end).await?,
    };
    if full {
        let out: Arc<[u8]> = out.into();
        node.data_tiles
            .put(talks, tile.level_index(), Arc::clone(&out));
        return Ok((
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            axum::body::Bytes::from_owner(out),
        )
            .into_response());
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        out,
    )
        .into_response())
}

/// Data tile contents for seqs `[start, end)`, from the stored
/// envelopes' leaf columns, each leaf rebuilt with its header re-hashed;
/// one that does not hash to its stored leaf hash is logged as an error
/// (and served as stored, for clients to catch).
async fn read_data_tile<S: Store>(
    node: &Node<S>,
    talks: TalksId,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity((end - start) as usize * LEAF_DATA_LEN);
    let mut next = start;
    while next < end {
        let rows = node
            .store
            .leaves(talks, next, (end - next) as usize)
            .await
            .map_err(store_error)?;
        if rows.is_empty() {
            return Err(ApiError::internal());
        }
        for e in rows.into_iter().take((end - next) as usize) {
            if e.seq != next {
                tracing::error!("a seq is missing below the integrated size");
                return Err(ApiError::internal());
            }
            // Integration from the leaf hints never read this row back, so
            // a row changed since its commit is noticed here. It is still
            // served as stored: clients re-hash what they are served, and
            // the mismatch with the signed tree is their evidence.
            let leaf = e.leaf();
            if leaf.hash() != e.leaf_hash {
                tracing::error!(
                    seq = e.seq,
                    "a stored envelope does not match its leaf hash: the store is corrupt"
                );
            }
            out.extend_from_slice(&leaf.to_canonical_bytes());
            next += 1;
        }
    }
    Ok(out)
}

/// Query of the inclusion proof.
#[derive(Debug, Deserialize)]
pub struct InclusionQuery {
    /// The leaf index.
    pub index: u64,
    /// The tree size (at most the integrated size).
    pub size: u64,
}

/// Query of the consistency proof.
#[derive(Debug, Deserialize)]
pub struct ConsistencyQuery {
    /// The older size.
    pub from: u64,
    /// The newer size (at most the integrated size).
    pub to: u64,
}

async fn integrated<S: Store>(node: &Node<S>, talks: TalksId, size: u64) -> Result<(), ApiError> {
    let integrated = node
        .store
        .integrated_size(talks)
        .await
        .map_err(store_error)?;
    if size > integrated {
        return Err(ApiError::not_found());
    }
    Ok(())
}

pub(crate) async fn inclusion<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
    ApiQuery(q): ApiQuery<InclusionQuery>,
) -> Result<Json<api::ProofBody>, ApiError> {
    let talks = parse_talks(&talks)?;
    node.member(talks, &key).await?;
    if q.index >= q.size {
        return Err(ApiError::malformed("index must be below size"));
    }
    integrated(&node, talks, q.size).await?;
    let proof = with_hashes(&*node.store, talks, |r| {
        InclusionProof::prove(r, q.index, q.size).map_err(|_| ApiError::internal())
    })
    .await?;
    Ok(Json(api::ProofBody {
        proof: proof.to_canonical_bytes(),
    }))
}

pub(crate) async fn consistency<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> Result<Json<api::ProofBody>, ApiError> {
    let talks = parse_talks(&talks)?;
    node.member(talks, &key).await?;
    if q.from == 0 || q.from > q.to {
        return Err(ApiError::malformed("need 1 <= from <= to"));
    }
    integrated(&node, talks, q.to).await?;
    let proof = with_hashes(&*node.store, talks, |r| {
        ConsistencyProof::prove(r, q.from, q.to).map_err(|_| ApiError::internal())
    })
    .await?;
    Ok(Json(api::ProofBody {
        proof: proof.to_canonical_bytes(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_tiles_keep_the_last_ones_served() {
        let cache = DataTiles::default();
        let t = TalksId([1; 16]);
        let tile = |n: u64| -> Arc<[u8]> { Arc::from(n.to_be_bytes().to_vec()) };
        for n in 0..MAX_CACHED_DATA_TILES as u64 {
            cache.put(t, n, tile(n));
        }
        // Served again: kept once.
        cache.put(t, 0, tile(0));
        assert_eq!(cache.get(t, 0).as_deref(), Some(&tile(0)[..]));
        assert!(cache.get(TalksId([2; 16]), 0).is_none(), "per talks");
        cache.put(t, MAX_CACHED_DATA_TILES as u64, tile(9));
        assert!(cache.get(t, 0).is_none(), "the oldest went first");
        assert!(cache.get(t, 1).is_some());
        assert!(cache.get(t, MAX_CACHED_DATA_TILES as u64).is_some());
    }
}
