//! Receipts: the node's signed promise, per group-commit batch, that it
//! sequenced each envelope of the batch.
//!
//! ```text
//! batch record (64 bytes)   = talks id [16] ‖ seq u64 ‖ node timestamp ms u64 ‖ leaf hash [32]
//! record hash               = SHA-256(0x00 ‖ batch record)                      (RFC 6962 §2.1)
//! batch root                = RFC 6962 Merkle tree hash of the record hashes, in batch order
//! signed (48 bytes)         = batch root [32] ‖ batch size u64 ‖ batch timestamp ms u64
//! signature                 = Ed25519 by the node's log key over
//!                             "backchannel/v1/receipt" ‖ signed
//! receipt (encoded)         = u8 version = 1 ‖ batch size u64 ‖ batch timestamp ms u64
//!                             ‖ batch root [32] ‖ signature [64] ‖ index u64
//!                             ‖ u32 count ‖ count × audit-path hash [32]
//! ```
//!
//! One signature covers a whole batch (one Ed25519 signing per commit
//! rather than one per envelope); each submitter gets its record's audit
//! path into the batch tree. The batch timestamp is the node's clock when it
//! signed; a record's own timestamp is the one in its leaf.

use backchannel_codec::{Decode, DecodeError, Encode, Reader, TalksId, Writer};
use backchannel_crypto::{Context, Digest, PublicKey, SignError, Signature, Signer};
use thiserror::Error;

use crate::from_tlog;
use crate::proof::{InclusionProof, MemoryHashStore, inclusion_proof_len};

/// The context of receipt signatures.
pub const RECEIPT_CONTEXT: Context = Context::new("backchannel/v1/receipt");

/// The only receipt format version defined.
pub const RECEIPT_FORMAT_VERSION: u8 = 1;

/// The most records one batch may hold. A group commit gathers what arrived
/// during one storage flush (a few milliseconds), so a few thousand is far
/// above any real batch, while the bound keeps an audit path at most
/// [`MAX_RECEIPT_PATH_LEN`] hashes (384 bytes) and the batch tree small
/// enough to build inside the commit.
pub const MAX_BATCH_SIZE: u64 = 4096;

/// The longest audit path in a batch of [`MAX_BATCH_SIZE`] = 2^12 records.
pub const MAX_RECEIPT_PATH_LEN: usize = 12;

/// Length of an encoded batch record.
pub const BATCH_RECORD_LEN: usize = 16 + 8 + 8 + 32;

/// One envelope as a batch records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchRecord {
    /// The talks whose log the envelope went into.
    pub talks: TalksId,
    /// Its sequence number (= leaf index) in that log.
    pub seq: u64,
    /// The node's timestamp in the leaf, Unix ms.
    pub timestamp_ms: u64,
    /// The leaf hash ([`crate::LeafData::hash`]).
    pub leaf_hash: Digest,
}

impl BatchRecord {
    /// `SHA-256(0x00 ‖ record)`, the record's leaf hash in the batch tree.
    pub fn hash(&self) -> Digest {
        from_tlog(tlog_tiles::record_hash(&self.to_canonical_bytes()))
    }
}

impl Encode for BatchRecord {
    fn encode(&self, w: &mut Writer) {
        self.talks.encode(w);
        w.u64(self.seq);
        w.u64(self.timestamp_ms);
        self.leaf_hash.encode(w);
    }
}

impl Decode for BatchRecord {
    const MIN_LEN: usize = BATCH_RECORD_LEN;

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            talks: TalksId::decode(r)?,
            seq: r.u64("record seq")?,
            timestamp_ms: r.u64("record timestamp")?,
            leaf_hash: Digest::decode(r)?,
        })
    }
}

/// The 48 bytes signed (after [`RECEIPT_CONTEXT`]) for a batch.
pub fn batch_signed_bytes(root: &Digest, size: u64, timestamp_ms: u64) -> Vec<u8> {
    let mut w = Writer::with_capacity(48);
    root.encode(&mut w);
    w.u64(size);
    w.u64(timestamp_ms);
    w.into_bytes()
}

/// Why a batch could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignBatchError {
    /// No records, or more than [`MAX_BATCH_SIZE`].
    #[error("a batch holds 1 to {MAX_BATCH_SIZE} records, not {0}")]
    Size(usize),
    /// The signer failed.
    #[error(transparent)]
    Signer(#[from] SignError),
    /// The batch tree could not be built (cannot happen with the in-memory
    /// store; kept rather than a panic).
    #[error("batch tree: {0}")]
    Tree(String),
}

/// Why a receipt was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReceiptError {
    /// The record is not at the receipt's index of the signed batch tree.
    #[error("the record is not in the batch")]
    NotInBatch,
    /// The node's signature over the batch does not verify.
    #[error("the batch signature does not verify")]
    BadSignature,
}

/// A signed batch: its records, root and signature, from which each
/// record's [`Receipt`] is cut.
#[derive(Debug, Clone)]
pub struct SignedBatch {
    records: Vec<BatchRecord>,
    timestamp_ms: u64,
    root: Digest,
    signature: Signature,
    tree: MemoryHashStore,
}

impl SignedBatch {
    /// Builds the batch tree over `records` (in this order) and signs it
    /// with `signer` under [`RECEIPT_CONTEXT`], at node time `timestamp_ms`.
    pub fn sign(
        signer: &dyn Signer,
        records: Vec<BatchRecord>,
        timestamp_ms: u64,
    ) -> Result<Self, SignBatchError> {
        if records.is_empty() || records.len() as u64 > MAX_BATCH_SIZE {
            return Err(SignBatchError::Size(records.len()));
        }
        let mut tree = MemoryHashStore::new();
        for r in &records {
            tree.append(&r.hash())
                .map_err(|e| SignBatchError::Tree(e.to_string()))?;
        }
        let root = tree
            .root()
            .map_err(|e| SignBatchError::Tree(e.to_string()))?;
        let signature = signer.sign(
            RECEIPT_CONTEXT,
            &batch_signed_bytes(&root, records.len() as u64, timestamp_ms),
        )?;
        Ok(Self {
            records,
            timestamp_ms,
            root,
            signature,
            tree,
        })
    }

    /// The records, in batch order.
    pub fn records(&self) -> &[BatchRecord] {
        &self.records
    }

    /// The batch root.
    pub fn root(&self) -> &Digest {
        &self.root
    }

    /// The receipt for the record at `index` in the batch.
    pub fn receipt(&self, index: usize) -> Option<Receipt> {
        if index >= self.records.len() {
            return None;
        }
        let size = self.records.len() as u64;
        let proof = self.tree.prove_inclusion(index as u64, size).ok()?;
        Some(Receipt {
            batch_size: size,
            batch_timestamp_ms: self.timestamp_ms,
            batch_root: self.root,
            signature: self.signature,
            index: index as u64,
            path: proof.hashes().to_vec(),
        })
    }

    /// Every record's receipt, in batch order.
    pub fn receipts(&self) -> Vec<Receipt> {
        (0..self.records.len())
            .filter_map(|i| self.receipt(i))
            .collect()
    }
}

/// What a submitter keeps: the batch's signed fields, its record's index in
/// the batch, and the audit path from that record to the batch root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    batch_size: u64,
    batch_timestamp_ms: u64,
    batch_root: Digest,
    signature: Signature,
    index: u64,
    path: Vec<Digest>,
}

impl Receipt {
    /// How many records the batch held.
    pub fn batch_size(&self) -> u64 {
        self.batch_size
    }

    /// The node's clock when it signed the batch, Unix ms.
    pub fn batch_timestamp_ms(&self) -> u64 {
        self.batch_timestamp_ms
    }

    /// The batch root.
    pub fn batch_root(&self) -> &Digest {
        &self.batch_root
    }

    /// The record's index in the batch.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Checks that `node_key` signed a batch holding, at this receipt's
    /// index, the record (talks, seq, timestamp, leaf hash).
    pub fn verify(
        &self,
        node_key: &PublicKey,
        talks: TalksId,
        seq: u64,
        timestamp_ms: u64,
        leaf_hash: &Digest,
    ) -> Result<(), ReceiptError> {
        let record = BatchRecord {
            talks,
            seq,
            timestamp_ms,
            leaf_hash: *leaf_hash,
        };
        let proof = InclusionProof::new(self.index, self.batch_size, self.path.clone())
            .map_err(|_| ReceiptError::NotInBatch)?;
        proof
            .verify(
                self.index,
                self.batch_size,
                &self.batch_root,
                &record.hash(),
            )
            .map_err(|_| ReceiptError::NotInBatch)?;
        node_key
            .verify(
                RECEIPT_CONTEXT,
                &batch_signed_bytes(&self.batch_root, self.batch_size, self.batch_timestamp_ms),
                &self.signature,
            )
            .map_err(|_| ReceiptError::BadSignature)
    }
}

impl Encode for Receipt {
    fn encode(&self, w: &mut Writer) {
        w.u8(RECEIPT_FORMAT_VERSION);
        w.u64(self.batch_size);
        w.u64(self.batch_timestamp_ms);
        self.batch_root.encode(w);
        self.signature.encode(w);
        w.u64(self.index);
        w.list(&self.path);
    }
}

impl Decode for Receipt {
    const MIN_LEN: usize = 1 + 8 + 8 + 32 + 64 + 8 + 4;

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("receipt format version", RECEIPT_FORMAT_VERSION)?;
        let batch_size = r.u64("batch size")?;
        if batch_size == 0 || batch_size > MAX_BATCH_SIZE {
            return Err(DecodeError::TooLong {
                field: "batch size",
                len: batch_size,
                max: MAX_BATCH_SIZE,
            });
        }
        let batch_timestamp_ms = r.u64("batch timestamp")?;
        let batch_root = Digest::decode(r)?;
        let signature = Signature::decode(r)?;
        let index = r.u64("batch index")?;
        if index >= batch_size {
            return Err(DecodeError::Invalid {
                field: "batch index",
                reason: "not below the batch size",
            });
        }
        let path: Vec<Digest> = r.list("receipt path", MAX_RECEIPT_PATH_LEN)?;
        if path.len() != inclusion_proof_len(index, batch_size) {
            return Err(DecodeError::Invalid {
                field: "receipt path",
                reason: "wrong number of hashes for the index and batch size",
            });
        }
        Ok(Self {
            batch_size,
            batch_timestamp_ms,
            batch_root,
            signature,
            index,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backchannel_crypto::SecretKey;

    fn record(i: u64) -> BatchRecord {
        BatchRecord {
            talks: TalksId([i as u8; 16]),
            seq: i,
            timestamp_ms: 1000 + i,
            leaf_hash: Digest([i as u8; 32]),
        }
    }

    #[test]
    fn every_receipt_verifies_and_round_trips() {
        let k = SecretKey::from_seed(&[7; 32]).expect("valid seed");
        for n in [1u64, 2, 3, 5, 8, 13] {
            let batch = SignedBatch::sign(&k, (0..n).map(record).collect(), 5000).expect("signs");
            for (i, r) in batch.receipts().iter().enumerate() {
                let rec = record(i as u64);
                assert_eq!(
                    r.verify(
                        &k.public_key(),
                        rec.talks,
                        rec.seq,
                        rec.timestamp_ms,
                        &rec.leaf_hash
                    ),
                    Ok(())
                );
                let other = record(i as u64 + 1);
                assert!(
                    r.verify(
                        &k.public_key(),
                        other.talks,
                        other.seq,
                        other.timestamp_ms,
                        &other.leaf_hash
                    )
                    .is_err()
                );
                let bytes = r.to_canonical_bytes();
                assert_eq!(Receipt::from_canonical_bytes(&bytes).as_ref(), Ok(r));
            }
        }
        assert_eq!(
            SignedBatch::sign(&k, vec![], 1).map(|_| ()),
            Err(SignBatchError::Size(0))
        );
        assert_eq!(record(1).to_canonical_bytes().len(), BATCH_RECORD_LEN);
    }

    #[test]
    fn batch_limit_matches_path_limit() {
        assert_eq!(inclusion_proof_len(0, MAX_BATCH_SIZE), MAX_RECEIPT_PATH_LEN);
    }
}
