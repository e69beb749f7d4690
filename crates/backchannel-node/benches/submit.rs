//! The submit path: envelopes per second through validation (one Ed25519
//! verification each), the sequencer and group commit, on SQLite (WAL,
//! `synchronous=FULL`: one fsync per batch) and on the in-memory store.
//!
//! Run: `cargo bench -p backchannel-node --bench submit -- --warm-up-time 1 --measurement-time 10`.
//!
//! Each iteration submits [`ENVELOPES`] pre-signed envelopes from
//! [`CONCURRENCY`] concurrent submitters (as many connections would) and
//! waits for every acknowledgement. Signing is the clients' cost and is
//! done before timing; the access list is loaded once per submission, as
//! the API does. HTTP and TLS are not included (the load generator of the
//! performance issue measures them).
#![allow(missing_docs)] // criterion generates the entry points.
#![allow(clippy::expect_used)] // Bench setup: a failure is a broken bench.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backchannel_codec::{Decode, Encode};
use backchannel_crypto::{Signer, sha256};
use backchannel_node::sequencer::{Clock, Sequencer};
use backchannel_node::submit::validate;
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::header::pad_body;
use backchannel_statement::{AccessList, Commitment, Header, Kind};
use backchannel_store::memory::MemoryStore;
use backchannel_store::{AccessListRecord, Outcome, Store, TalksRecord};
use backchannel_store_sqlite::{SqliteOptions, SqliteStore};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const ENVELOPES: usize = 4096;
const CONCURRENCY: usize = 256;

struct FixedClock;
impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        1_800_000_000_000
    }
}

fn envelopes(counter: &AtomicU64, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let t = fixtures::talks();
    let dev = key(US_HEAD_DEVICE);
    (0..n)
        .map(|_| {
            let i = counter.fetch_add(1, Ordering::Relaxed);
            let mut idem = [0u8; 16];
            idem[..8].copy_from_slice(&i.to_be_bytes());
            let body = pad_body(&i.to_be_bytes()).expect("pads");
            let header = Header {
                talks: t.talks,
                room: t.record,
                sender: dev.public_key().id(),
                kind: Kind::MlsApp,
                idempotency_key: idem,
                body_len: body.len() as u32,
                body_hash: sha256(&body),
                commitment: Commitment([2; 32]),
            }
            .sign(&dev)
            .expect("signs");
            (header.to_bytes().to_vec(), body)
        })
        .collect()
}

async fn open<S: Store>(store: &S) {
    let t = fixtures::talks();
    let list = t.roster.implied_access_list(t.talks).expect("list");
    let bytes = list.to_canonical_bytes();
    store
        .create_talks(
            &TalksRecord {
                talks: t.talks,
                creator: key(OMAN_LEAD_DEVICE).public_key().id(),
                created_at: 0,
            },
            &AccessListRecord {
                hash: sha256(&bytes),
                bytes,
                version: 0,
            },
        )
        .await
        .expect("create talks");
}

async fn run<S: Store>(store: Arc<S>, sequencer: &Sequencer, batch: Vec<(Vec<u8>, Vec<u8>)>) {
    let t = fixtures::talks();
    // Kept decompressed, as the node keeps a connection's key.
    let conn_key = key(US_HEAD_DEVICE).public_key().verifying_key();
    let chunk = batch.len().div_ceil(CONCURRENCY);
    let mut tasks = Vec::new();
    let mut batch = batch;
    while !batch.is_empty() {
        let mine: Vec<_> = batch.drain(..chunk.min(batch.len())).collect();
        let store = Arc::clone(&store);
        let sequencer = sequencer.clone();
        tasks.push(tokio::spawn(async move {
            for (header, body) in mine {
                let record = store
                    .access_list(t.talks)
                    .await
                    .expect("read")
                    .expect("talks");
                let list = AccessList::from_canonical_bytes(&record.bytes).expect("list");
                let s = validate(t.talks, &conn_key, &list, &header, body).expect("valid");
                match sequencer.submit(s).await.expect("sequenced") {
                    Outcome::Sequenced(_) => {}
                    other => panic!("not sequenced: {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let counter = AtomicU64::new(0);
    let mut group = c.benchmark_group("submit");
    group.throughput(Throughput::Elements(ENVELOPES as u64));
    group.sample_size(10);

    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = rt.block_on(async {
        let s = SqliteStore::open(&dir.path().join("bench.db"), SqliteOptions::default())
            .await
            .expect("open sqlite");
        open(&s).await;
        Arc::new(s)
    });
    let memory = rt.block_on(async {
        let s = MemoryStore::new();
        open(&s).await;
        Arc::new(s)
    });
    let log_key: Arc<dyn Signer + Send + Sync> = Arc::new(key(NODE_LOG));
    let clock: Arc<dyn Clock> = Arc::new(FixedClock);

    let seq_sqlite = rt.block_on(async {
        Sequencer::spawn(
            Arc::clone(&sqlite),
            Arc::clone(&clock),
            Arc::clone(&log_key),
        )
    });
    group.bench_function("sqlite", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = envelopes(&counter, ENVELOPES);
                let start = Instant::now();
                rt.block_on(run(Arc::clone(&sqlite), &seq_sqlite, batch));
                total += start.elapsed();
            }
            total
        })
    });
    let seq_memory = rt.block_on(async {
        Sequencer::spawn(
            Arc::clone(&memory),
            Arc::clone(&clock),
            Arc::clone(&log_key),
        )
    });
    group.bench_function("memory", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = envelopes(&counter, ENVELOPES);
                let start = Instant::now();
                rt.block_on(run(Arc::clone(&memory), &seq_memory, batch));
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
