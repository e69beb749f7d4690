//! Proof and receipt costs at log scale.
//!
//! Run: `cargo bench -p backchannel-tlog -- --warm-up-time 1 --measurement-time 3`.
#![allow(missing_docs)] // criterion generates the entry points.
#![allow(clippy::expect_used)] // Bench setup: a failure is a broken bench.

use std::hint::black_box;

use backchannel_codec::TalksId;
use backchannel_crypto::{Digest, SecretKey, sha256};
use backchannel_tlog::{BatchRecord, MemoryHashStore, SignedBatch};
use criterion::{Criterion, criterion_group, criterion_main};

/// Leaves in the benchmarked log: a busy talks many times over.
const LOG_SIZE: u64 = 1 << 20;
/// Records in the benchmarked receipt batch.
const BATCH: u64 = 256;

fn leaf(i: u64) -> Digest {
    sha256(&i.to_be_bytes())
}

fn bench(c: &mut Criterion) {
    let mut store = MemoryHashStore::new();
    for i in 0..LOG_SIZE {
        store.append(&leaf(i)).expect("appends");
    }
    let size = store.size();
    let root = store.root().expect("root");
    let index = 777_777;
    let old = 600_001;
    let old_root = store.root_at(old).expect("root");

    c.bench_function("inclusion proof build (1M leaves)", |b| {
        b.iter(|| {
            store
                .prove_inclusion(black_box(index), size)
                .expect("proves")
        })
    });
    let p = store.prove_inclusion(index, size).expect("proves");
    c.bench_function("inclusion proof verify (1M leaves)", |b| {
        b.iter(|| {
            p.verify(index, size, black_box(&root), &leaf(index))
                .expect("verifies")
        })
    });
    c.bench_function("consistency proof build (600k -> 1M leaves)", |b| {
        b.iter(|| {
            store
                .prove_consistency(black_box(old), size)
                .expect("proves")
        })
    });
    let cp = store.prove_consistency(old, size).expect("proves");
    c.bench_function("consistency proof verify (600k -> 1M leaves)", |b| {
        b.iter(|| {
            cp.verify(old, black_box(&old_root), size, &root)
                .expect("verifies")
        })
    });

    let key = SecretKey::from_seed(&[3; 32]).expect("valid seed");
    let records: Vec<BatchRecord> = (0..BATCH)
        .map(|i| BatchRecord {
            talks: TalksId([1; 16]),
            seq: i,
            timestamp_ms: 1_700_000_000_000 + i,
            leaf_hash: leaf(i),
        })
        .collect();
    c.bench_function("receipt batch sign + 256 receipts", |b| {
        b.iter(|| {
            let batch = SignedBatch::sign(&key, black_box(records.clone()), 1).expect("signs");
            batch.receipts()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
