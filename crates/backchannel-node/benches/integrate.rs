//! Leaf integration throughput against the in-memory store.
//!
//! Run: `cargo bench -p backchannel-node --bench integrate -- --warm-up-time 1 --measurement-time 5`.
//!
//! Each sample opens a fresh store and sequences [`LEAVES`] envelopes in
//! batches of [`MAX_SEQUENCE_BATCH`] (untimed: sequencing has its own
//! costs), then times integrating all of them in calls of
//! [`MAX_INTEGRATION_BATCH`] leaves. The store's steps are memory copies, so
//! this is the integrator's own cost: reading and re-hashing leaves, the
//! tree maths, one checkpoint signature per call.
#![allow(missing_docs)] // criterion generates the entry points.
#![allow(clippy::expect_used)] // Bench setup: a failure is a broken bench.

use std::time::{Duration, Instant};

use backchannel_node::integrate::{MAX_INTEGRATION_BATCH, integrate_once};
use backchannel_statement::fixtures::labels;
use backchannel_store::conformance::{
    access_list, log_key, sender, submission, talks_id, talks_record,
};
use backchannel_store::memory::MemoryStore;
use backchannel_store::{MAX_SEQUENCE_BATCH, Store};
use backchannel_tlog::NodeOrigin;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

/// Leaves integrated per sample: a busy talks.
const LEAVES: u64 = 100_000;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let node = NodeOrigin::new("mediator.example").expect("node origin");
    let key = log_key();
    let t = talks_id(1);
    let a = sender(labels::US_HEAD_DEVICE);

    let fill = || {
        rt.block_on(async {
            let store = MemoryStore::new();
            store
                .create_talks(&talks_record(t), &access_list(1, 0))
                .await
                .expect("create talks");
            let mut next = 0u64;
            while next < LEAVES {
                let end = LEAVES.min(next + MAX_SEQUENCE_BATCH as u64);
                let batch = (next..end)
                    .map(|i| submission(t, a, u32::try_from(i).expect("small"), 0))
                    .collect();
                store.sequence(batch, 1_000, &key).await.expect("sequence");
                next = end;
            }
            store
        })
    };

    let mut group = c.benchmark_group("integrate");
    group.throughput(Throughput::Elements(LEAVES));
    // One iteration is a whole log, and the setup per iteration is costly:
    // few samples, one iteration each.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function(
        format!("{LEAVES} leaves in batches of {MAX_INTEGRATION_BATCH}"),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let store = fill();
                    let start = Instant::now();
                    rt.block_on(async {
                        while integrate_once(&store, t, &node, &key, MAX_INTEGRATION_BATCH, None)
                            .await
                            .expect("integrates")
                            .is_some()
                        {}
                    });
                    total += start.elapsed();
                    drop(store);
                }
                total
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
