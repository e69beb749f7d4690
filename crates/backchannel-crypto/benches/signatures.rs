//! Sign and verify, single and batched: `cargo bench -p backchannel-crypto`.
#![allow(missing_docs)] // criterion generates the entry points.

use backchannel_crypto::{BatchVerifier, Context, SecretKey, Signer};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const CTX: Context = Context::new("backchannel/v1/bench");

fn bench(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha20Rng::from_seed_u64(7);
    let key = SecretKey::generate(&mut rng);
    let pk = key.public_key();
    let msg = vec![0x5a; 256];
    let sig = key.sign(CTX, &msg).unwrap_or_else(|e| panic!("{e}"));

    c.bench_function("ed25519/sign/256B", |b| b.iter(|| key.sign(CTX, &msg)));
    c.bench_function("ed25519/verify/256B", |b| {
        b.iter(|| pk.verify(CTX, &msg, &sig))
    });
    let mut group = c.benchmark_group("ed25519/batch-verify/256B");
    for n in [16usize, 64] {
        let items: Vec<_> = (0..n)
            .map(|i| {
                let k = SecretKey::generate(&mut rng);
                let m = vec![i as u8; 256];
                let s = k.sign(CTX, &m).unwrap_or_else(|e| panic!("{e}"));
                (k.public_key(), m, s)
            })
            .collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &items, |b, items| {
            b.iter(|| {
                let mut v = BatchVerifier::new();
                for (k, m, s) in items {
                    v.queue(k, CTX, m, s);
                }
                v.verify(&mut rand_core::OsRng)
            })
        });
    }
    group.finish();
}

trait FromSeedU64 {
    fn from_seed_u64(seed: u64) -> Self;
}
impl FromSeedU64 for rand_chacha::ChaCha20Rng {
    fn from_seed_u64(seed: u64) -> Self {
        <Self as rand_core::SeedableRng>::seed_from_u64(seed)
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
