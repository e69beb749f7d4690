//! Sign and verify, single and batched: `cargo bench -p backchannel-crypto`.
//!
//! `ed25519/verify-many/4096x256B`: [`verify_many`] over 4,096 signatures
//! with none bad, one bad, one in 64 and one in 2 bad (a bad one: a good
//! signature of another message), beside checking each alone — what a
//! failed batch costs when it is split rather than checked one by one.
#![allow(missing_docs)] // criterion generates the entry points.

use backchannel_crypto::{
    BatchVerifier, Context, PublicKey, SecretKey, Signature, Signer, ToVerify, verify, verify_many,
};
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
    // The key decompressed once, as the node keeps it per connection.
    let vk = pk.verifying_key();
    c.bench_function("ed25519/verify-kept-key/256B", |b| {
        b.iter(|| vk.verify(CTX, &msg, &sig))
    });
    // What `verify` did before it ran on curve25519-dalek 4 with the key's
    // point kept: ed25519-consensus, the key decompressed on every call and
    // `context ‖ message` copied into one buffer. The same verdicts
    // (tests/zip215.rs); kept here to show what the change buys on the
    // machine at hand.
    c.bench_function("ed25519/verify-consensus/256B", |b| {
        b.iter(|| {
            let vk = ed25519_consensus::VerificationKey::try_from(*pk.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
            let mut m = Vec::with_capacity(CTX.as_bytes().len() + msg.len());
            m.extend_from_slice(CTX.as_bytes());
            m.extend_from_slice(&msg);
            vk.verify(&ed25519_consensus::Signature::from(*sig.as_bytes()), &m)
        })
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
    verify_many_bench(c, &mut rng);
}

fn verify_many_bench(c: &mut Criterion, rng: &mut rand_chacha::ChaCha20Rng) {
    const N: usize = 4096;
    let keys: Vec<SecretKey> = (0..64).map(|_| SecretKey::generate(&mut *rng)).collect();
    let publics: Vec<PublicKey> = keys.iter().map(|k| k.public_key()).collect();
    let messages: Vec<Vec<u8>> = (0..N).map(|i| i.to_le_bytes().repeat(32)).collect();
    let good: Vec<Signature> = (0..N)
        .map(|i| {
            keys[i % keys.len()]
                .sign(CTX, &messages[i])
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let mut group = c.benchmark_group("ed25519/verify-many/4096x256B");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);
    for (name, every) in [
        ("none bad", 0),
        ("one bad", N),
        ("1 in 64 bad", 64),
        ("1 in 2 bad", 2),
    ] {
        let sigs: Vec<Signature> = (0..N)
            .map(|i| {
                if every > 0 && i % every == every / 2 {
                    good[(i + 1) % N]
                } else {
                    good[i]
                }
            })
            .collect();
        let items: Vec<ToVerify<'_>> = (0..N)
            .map(|i| ToVerify {
                key: &publics[i % publics.len()],
                context: CTX,
                message: &messages[i],
                signature: &sigs[i],
            })
            .collect();
        group.bench_function(name, |b| b.iter(|| verify_many(&items, &mut *rng)));
        if every == N {
            group.bench_function("each alone", |b| {
                b.iter(|| {
                    items
                        .iter()
                        .map(|i| verify(i.key, i.context, i.message, i.signature).is_ok())
                        .filter(|ok| *ok)
                        .count()
                })
            });
        }
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
