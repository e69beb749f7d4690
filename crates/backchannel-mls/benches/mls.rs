//! MLS room costs: one 1 KiB application message encrypted and decrypted,
//! and adding one device by a commit (member side, and the node's
//! `PublicRoom::stage_commit`) in rooms of 10, 100 and 1000 devices.
//! Setup (rooms, key packages) stays outside the timed part.
//!
//! Run: `cargo bench -p backchannel-mls --bench mls -- --warm-up-time 1 --measurement-time 5`.
//!
//! A plaintext of 1024 bytes does not fit the 1 KiB envelope body bucket
//! (padding inside MLS, `backchannel_mls::message_len`): its message fills
//! the 4 KiB bucket, so "encrypt+decrypt 1 KiB" signs, hashes and encrypts
//! about 4 KiB. "encrypt+decrypt, 1 KiB bucket" sends the longest plaintext
//! whose message is a 1 KiB body (what `backchannel bench load` sends).

#![allow(missing_docs)] // criterion generates the entry points.
#![allow(clippy::expect_used)] // Bench setup: a failure is a broken bench.

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;

fn encrypt_decrypt(c: &mut Criterion) {
    let r = room(1);
    let (_node, mut ms) = room_of(2, r);
    let msg = vec![0x5a; 1024];
    let (a, b) = ms.split_at_mut(1);
    c.bench_function("encrypt+decrypt 1 KiB", |bench| {
        bench.iter(|| {
            let ct = a[0].encrypt(r, &msg, &commitment(1)).expect("encrypt");
            b[0].decrypt(r, &ct, &commitment(1)).expect("decrypt")
        })
    });
    // The longest plaintext whose message is a 1 KiB body (bucket less its
    // 4-byte length prefix).
    let fits = (0..1024)
        .rev()
        .find(|&n| backchannel_mls::message_len(n) == Some(1020))
        .expect("a plaintext fits the 1 KiB bucket");
    let msg = vec![0x5a; fits];
    c.bench_function(
        &format!("encrypt+decrypt, 1 KiB bucket ({fits}-byte plaintext)"),
        |bench| {
            bench.iter(|| {
                let ct = a[0].encrypt(r, &msg, &commitment(1)).expect("encrypt");
                b[0].decrypt(r, &ct, &commitment(1)).expect("decrypt")
            })
        },
    );
}

/// A room of `n` devices as its creator and the node see it (the others
/// never join: only their leaves matter here).
fn big_room(n: usize) -> (backchannel_mls::PublicRoom, backchannel_mls::Member) {
    let r = room(2);
    let mut creator = member(1);
    let mut node = create(&mut creator, r);
    let kps: Vec<Vec<u8>> = (0..n - 1)
        .map(|i| {
            let seed = [(i % 251) as u8 + 2, (i / 251) as u8, 0xaa, 0x55];
            let mut s = [0u8; 32];
            s[..4].copy_from_slice(&seed);
            let mut m = backchannel_mls::Member::new(
                TALKS,
                backchannel_crypto::SecretKey::from_seed(&s).expect("key"),
            );
            kp(&mut m)
        })
        .collect();
    commit_all(&mut node, r, &mut creator, &mut [], &kps, &[]);
    (node, creator)
}

fn add_and_commit(c: &mut Criterion) {
    let r = room(2);
    let mut group = c.benchmark_group("add one device by commit");
    group.sample_size(10);
    for n in [10usize, 100, 1000] {
        let (node, mut creator) = big_room(n);
        let mut joiner = member(250);
        group.bench_with_input(BenchmarkId::new("member commit", n), &n, |bench, _| {
            bench.iter_batched(
                || kp(&mut joiner),
                |k| {
                    let out = creator.commit(r, &[k], &[], &all).expect("commit");
                    creator.discard_pending(r);
                    out
                },
                BatchSize::SmallInput,
            )
        });
        let k = kp(&mut joiner);
        let out = creator.commit(r, &[k], &[], &all).expect("commit");
        group.bench_with_input(BenchmarkId::new("node stage_commit", n), &n, |bench, _| {
            bench.iter(|| {
                node.stage_commit(&out.commit, &out.group_info, &all)
                    .expect("accepted")
            })
        });
        creator.discard_pending(r);
    }
    group.finish();
}

criterion_group!(benches, encrypt_decrypt, add_and_commit);
criterion_main!(benches);
