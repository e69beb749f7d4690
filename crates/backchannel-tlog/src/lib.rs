//! Backchannel's transparency logs: one Merkle log per talks.
//!
//! Features:
//! - [`LeafData`]: the fixed 97-byte record the log commits to for each
//!   envelope; its leaf hash is RFC 6962 §2.1's `SHA-256(0x00 ‖ data)`, and
//!   an envelope's `seq` is its leaf index.
//! - [`LogOrigin`] and [`Checkpoint`]: C2SP tlog-checkpoint tree heads,
//!   signed as C2SP signed notes by the node's log key through
//!   [`backchannel_crypto::Signer`]; [`CheckpointNote`] (parsed) and
//!   [`SignedCheckpoint`] (verified) are distinct types.
//! - [`Cosignature`]: C2SP tlog-cosignature/v1 witness cosignatures (never
//!   log leaves).
//! - [`SignedBatch`] and [`Receipt`]: one node signature per group-commit
//!   batch, and each submitter's audit path into it.
//! - [`InclusionProof`], [`ConsistencyProof`], [`MemoryHashStore`],
//!   [`TileSet`]: RFC 6962 proofs by `tlog_tiles`, with a canonical encoding.
//!
//! Non-features: no IO, no async, no storage backend (stores implement
//! `tlog_tiles::HashReader`), no HTTP tile serving; no other hash or
//! signature algorithm in format version 1. `docs/formats.md` (§ "Log") is
//! the byte-level specification of everything here.

mod checkpoint;
mod cosignature;
mod leaf;
mod note;
mod proof;
mod receipt;

pub use checkpoint::{
    BadOrigin, Checkpoint, CheckpointError, CheckpointNote, LogOrigin, MAX_NODE_ORIGIN_LEN,
    NodeOrigin, RESERVED_ORIGIN_PREFIX, SignCheckpointError, SignedCheckpoint, log_key_id,
};
pub use cosignature::{
    COSIGNATURE_HEADER, COSIGNATURE_PAYLOAD_LEN, CosignError, Cosignature, CosignatureError,
    CosignatureSigner, CosignatureVerifier, CosignerKey, MAX_COSIGNATURE_TIMESTAMP, attach,
    cosign_note, cosignatures, cosigned_message, verify_cosignatures, witness_name,
};
pub use leaf::{LEAF_DATA_LEN, LEAF_FORMAT_VERSION, LeafData};
pub use note::{
    MAX_NOTE_LEN, MalformedNote, NoteSigner, NoteVerifier, SIG_TYPE_COSIGNATURE, SIG_TYPE_ED25519,
    is_valid_key_name, key_id,
};
pub use proof::{
    ConsistencyProof, InclusionProof, MAX_PROOF_HASHES, MemoryHashStore, ProveError, TileSet,
    VerifyProofError, consistency_proof_len, inclusion_proof_len, tree_hash_from_tiles,
};
pub use receipt::{
    BATCH_RECORD_LEN, BatchRecord, MAX_BATCH_SIZE, MAX_RECEIPT_PATH_LEN, RECEIPT_CONTEXT,
    RECEIPT_FORMAT_VERSION, Receipt, ReceiptError, SignBatchError, SignedBatch, batch_signed_bytes,
};
/// Re-exported so stores can implement it without naming `tlog_tiles`.
pub use tlog_tiles::HashReader;

/// How long after a receipt's batch timestamp the receipted envelope must
/// be below a checkpoint the node serves (the log's maximum merge delay,
/// as in Certificate Transparency). Clients hold the node to it
/// (`backchannel_client::follow::Pending`); past it, an acknowledged
/// envelope still missing is evidence against the node.
///
/// The node's side of the budget (`backchannel_node::lease`): a checkpoint
/// at most every second, and when the integrating node dies, another takes
/// its lease and integrates within 7 s of the envelope's timestamp, round
/// durations aside. The rest is room for those, for clock skew between
/// the node that stamped the batch and the client that checks, and for a
/// slow fetch.
pub const MAX_MERGE_DELAY_MS: u64 = 10_000;

use backchannel_crypto::Digest;

/// Our digest as a `tlog_tiles` hash (same 32 bytes).
pub(crate) fn to_tlog(d: &Digest) -> tlog_tiles::Hash {
    tlog_tiles::Hash(d.0)
}

/// A `tlog_tiles` hash as our digest (same 32 bytes).
pub(crate) fn from_tlog(h: tlog_tiles::Hash) -> Digest {
    Digest(h.0)
}

/// Fuzz entry points, one per parser (`fuzz/` calls these). Each must
/// never panic, and when the input parses, re-encoding must give back the
/// input byte for byte (one encoding per value).
#[doc(hidden)]
pub mod fuzz {
    use backchannel_codec::{Decode, Encode};
    use backchannel_crypto::{Digest, PublicKey};

    use crate::{
        CheckpointNote, ConsistencyProof, Cosignature, CosignerKey, InclusionProof, LeafData,
        Receipt,
    };

    /// A fixed, valid key for the verification half of the targets (the
    /// Ed25519 base point).
    fn key() -> Option<PublicKey> {
        let mut b = [0x66u8; 32];
        b[0] = 0x58;
        PublicKey::from_bytes(&b).ok()
    }

    /// Leaf data: decode, re-encode.
    pub fn leaf(data: &[u8]) {
        if let Ok(l) = LeafData::from_canonical_bytes(data) {
            assert_eq!(l.to_canonical_bytes(), data);
            let _ = l.hash();
        }
    }

    /// A checkpoint note: parse, re-encode, verify under a fixed key.
    pub fn checkpoint(data: &[u8]) {
        if let Ok(n) = CheckpointNote::parse(data) {
            assert_eq!(n.to_bytes(), data);
            if let Some(k) = key() {
                let origin = n.claimed().origin.clone();
                let _ = n.verify(&k, &origin);
            }
        }
        let _ = crate::cosignatures(data);
    }

    /// A cosignature line: parse, re-encode, verify under a fixed key.
    pub fn cosignature(data: &[u8]) {
        if let Ok(c) = Cosignature::from_line(data) {
            assert_eq!(c.to_line(), data);
            if let Some(k) = key().and_then(|k| CosignerKey::new(c.name(), k).ok()) {
                let _ = c.verify(&k, b"o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n");
            }
        }
    }

    /// A receipt: decode, re-encode, verify under a fixed key.
    pub fn receipt(data: &[u8]) {
        if let Ok(r) = Receipt::from_canonical_bytes(data) {
            assert_eq!(r.to_canonical_bytes(), data);
            if let Some(k) = key() {
                let _ = r.verify(
                    &k,
                    backchannel_codec::TalksId([0; 16]),
                    0,
                    0,
                    &Digest([0; 32]),
                );
            }
        }
    }

    /// A proof: the first byte picks inclusion (even) or consistency (odd);
    /// decode the rest, re-encode, verify against zero hashes.
    pub fn proof(data: &[u8]) {
        let Some((&kind, rest)) = data.split_first() else {
            return;
        };
        let zero = Digest([0; 32]);
        if kind % 2 == 0 {
            if let Ok(p) = InclusionProof::from_canonical_bytes(rest) {
                assert_eq!(p.to_canonical_bytes(), rest);
                let _ = p.verify(p.index(), p.tree_size(), &zero, &zero);
            }
        } else if let Ok(p) = ConsistencyProof::from_canonical_bytes(rest) {
            assert_eq!(p.to_canonical_bytes(), rest);
            let _ = p.verify(p.old_size(), &zero, p.new_size(), &zero);
        }
    }
}
