//! Proofs build and verify for every tree size 1..=2000, and every signed or
//! proved artefact refuses a one-bit change anywhere.
//!
//! Every tamper case goes through one helper, [`check`]: it takes an
//! artefact's bytes and the verdict function a client applies, asserts the
//! bytes are accepted, then flips one bit in every byte (the bit varies with
//! the position) and asserts each variant is refused.
#![allow(clippy::expect_used)] // Test code: a failed expectation is a failed test.

use backchannel_codec::{Decode, Encode, TalksId};
use backchannel_crypto::{Digest, SecretKey, Signer};
use backchannel_tlog::{
    BatchRecord, Checkpoint, ConsistencyProof, Cosignature, CosignerKey, InclusionProof, LogOrigin,
    MemoryHashStore, NodeOrigin, Receipt, SignedBatch, SignedCheckpoint, attach,
    verify_cosignatures,
};

/// Largest tree size checked.
const MAX_SIZE: u64 = 2000;
/// Up to this size every index (and every old size) is proved.
const EXHAUSTIVE_UP_TO: u64 = 128;
/// Up to this size every proof is tamper-checked; above it, a sample.
const TAMPER_ALL_UP_TO: u64 = 12;

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32]).expect("valid seed")
}

fn leaf_hash(i: u64) -> Digest {
    backchannel_crypto::sha256(&i.to_be_bytes())
}

/// Asserts `accept(bytes)`, then that flipping any one bit makes `accept`
/// false.
fn check(what: &str, bytes: &[u8], accept: impl Fn(&[u8]) -> bool) {
    assert!(
        accept(bytes),
        "{what}: the untouched bytes must be accepted"
    );
    let mut b = bytes.to_vec();
    for i in 0..b.len() {
        for shift in 0..8 {
            let bit = 1u8 << shift;
            b[i] ^= bit;
            assert!(
                !accept(&b),
                "{what}: flipping bit {bit:#04x} of byte {i} was accepted"
            );
            b[i] ^= bit;
        }
    }
}

/// The indices proved in a tree of `size`: all of them in small trees, else
/// both ends, the middle, both sides of the split at the largest power of
/// two below `size` (where the path changes shape), and one spread index.
fn sample(size: u64) -> Vec<u64> {
    if size <= EXHAUSTIVE_UP_TO {
        return (0..size).collect();
    }
    let split = 1 << (size - 1).ilog2();
    let mut v = vec![
        0,
        size / 2,
        split - 1,
        split,
        (size * 7919) % size,
        size - 1,
    ];
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn proofs_build_and_verify_for_every_size() {
    let mut store = MemoryHashStore::new();
    let mut roots = vec![store.root().expect("empty root")];
    for i in 0..MAX_SIZE {
        store.append(&leaf_hash(i)).expect("appends");
        roots.push(store.root().expect("root"));
    }
    for size in 1..=MAX_SIZE {
        let root = roots[size as usize];
        for i in sample(size) {
            let p = store.prove_inclusion(i, size).expect("proves");
            assert_eq!(
                p.verify(i, size, &root, &leaf_hash(i)),
                Ok(()),
                "leaf {i} of {size}"
            );
            assert!(p.verify(i, size, &root, &leaf_hash(i + 1)).is_err());
            let bytes = p.to_canonical_bytes();
            assert_eq!(
                InclusionProof::from_canonical_bytes(&bytes).as_ref(),
                Ok(&p)
            );
            // Tamper-check a spread of cases (each flip costs a verification).
            let tamper = size <= TAMPER_ALL_UP_TO || (size % 97 == 0 && i % 5 == 0);
            if tamper {
                check(&format!("inclusion {i}/{size}"), &bytes, |b| {
                    InclusionProof::from_canonical_bytes(b)
                        .is_ok_and(|p| p.verify(i, size, &root, &leaf_hash(i)).is_ok())
                });
            }

            let old = i + 1;
            let c = store.prove_consistency(old, size).expect("proves");
            let old_root = roots[old as usize];
            assert_eq!(
                c.verify(old, &old_root, size, &root),
                Ok(()),
                "{old} to {size}"
            );
            if old != size {
                assert!(c.verify(old, &root, size, &old_root).is_err());
            }
            let bytes = c.to_canonical_bytes();
            assert_eq!(
                ConsistencyProof::from_canonical_bytes(&bytes).as_ref(),
                Ok(&c)
            );
            if tamper {
                check(&format!("consistency {old}/{size}"), &bytes, |b| {
                    ConsistencyProof::from_canonical_bytes(b)
                        .is_ok_and(|c| c.verify(old, &old_root, size, &root).is_ok())
                });
            }
        }
    }
}

fn origin() -> LogOrigin {
    LogOrigin::new(
        &NodeOrigin::new("node.example").expect("valid"),
        TalksId([7; 16]),
    )
}

fn signed_checkpoint() -> SignedCheckpoint {
    let mut store = MemoryHashStore::new();
    for i in 0..10 {
        store.append(&leaf_hash(i)).expect("appends");
    }
    Checkpoint {
        origin: origin(),
        size: 10,
        root: store.root().expect("root"),
    }
    .sign(&key(1))
    .expect("signs")
}

#[test]
fn checkpoints_refuse_any_bit_flip() {
    let signed = signed_checkpoint();
    let log_key = key(1).public_key();
    check("checkpoint note", signed.note(), |b| {
        SignedCheckpoint::verify(b, &log_key, &origin()).is_ok()
    });
}

#[test]
fn cosignatures_refuse_any_bit_flip() {
    let signed = signed_checkpoint();
    let body = signed.body();
    let w = key(2);
    let wkey = CosignerKey::new("witness.example/w1", w.public_key()).expect("valid name");
    let cos = Cosignature::sign(&w, "witness.example/w1", 1_700_000_000, &body).expect("signs");
    check("cosignature line", &cos.to_line(), |b| {
        Cosignature::from_line(b).is_ok_and(|c| c.verify(&wkey, &body).is_ok())
    });
    // On a note, a flip anywhere either breaks the note, breaks the log
    // signature, or leaves no verified cosignature by the witness.
    let note = attach(signed.note(), &cos).expect("attaches");
    let log_key = key(1).public_key();
    check("cosigned checkpoint note", &note, |b| {
        SignedCheckpoint::verify(b, &log_key, &origin()).is_ok()
            && verify_cosignatures(b, std::slice::from_ref(&wkey)).is_ok_and(|v| v.len() == 1)
    });
}

#[test]
fn receipts_refuse_any_bit_flip() {
    let node = key(3);
    let records: Vec<BatchRecord> = (0..5)
        .map(|i| BatchRecord {
            talks: TalksId([i as u8; 16]),
            seq: 100 + i,
            timestamp_ms: 1_700_000_000_000 + i,
            leaf_hash: leaf_hash(i),
        })
        .collect();
    let batch = SignedBatch::sign(&node, records.clone(), 1_700_000_000_999).expect("signs");
    for (r, rec) in batch.receipts().iter().zip(&records) {
        check(
            &format!("receipt {}", r.index()),
            &r.to_canonical_bytes(),
            |b| {
                Receipt::from_canonical_bytes(b).is_ok_and(|r| {
                    r.verify(
                        &node.public_key(),
                        rec.talks,
                        rec.seq,
                        rec.timestamp_ms,
                        &rec.leaf_hash,
                    )
                    .is_ok()
                })
            },
        );
    }
}
