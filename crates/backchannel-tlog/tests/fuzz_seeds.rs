//! Runs the fuzz entry points over the seed corpus in `fuzz/corpus/`, and
//! over every truncation and one-bit flip of each seed: none may panic, and
//! each checks that what parses re-encodes to the same bytes.
#![allow(clippy::expect_used)] // Test code: a failed expectation is a failed test.

use std::path::PathBuf;

use backchannel_tlog::fuzz;

fn check(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
        let path = entry.expect("dir entry").path();
        let seed = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        seeds += 1;
        run(&seed);
        for len in 0..seed.len() {
            run(&seed[..len]);
        }
        let mut b = seed.clone();
        for i in 0..b.len() {
            b[i] ^= 1 << (i % 8);
            run(&b);
            b[i] ^= 1 << (i % 8);
        }
    }
    assert!(seeds > 0, "no seeds in {dir:?}");
}

#[test]
fn fuzz_targets_survive_their_seeds_and_mutations() {
    check("leaf", fuzz::leaf);
    check("checkpoint", fuzz::checkpoint);
    check("cosignature", fuzz::cosignature);
    check("receipt", fuzz::receipt);
    check("proof", fuzz::proof);
}
