//! Runs every fuzz target briefly on each `cargo test`: over the checked-in
//! corpus (`fuzz/corpus/<target>/`) and over deterministic mutations of each
//! corpus file (every single-bit flip of the first 512 bits, truncations at
//! every length, and seeded random byte changes). The targets assert that
//! nothing panics and that whatever parses re-encodes to the same bytes.
//! Longer runs use cargo-fuzz: see `fuzz/Cargo.toml`.

use backchannel_test_support::survives_corpus;
use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("statement", backchannel_statement::fuzz::statement),
    ("header", backchannel_statement::fuzz::header),
    ("access_list", backchannel_statement::fuzz::access_list),
    ("text", backchannel_statement::fuzz::text),
    ("roster", backchannel_statement::fuzz::roster),
    ("leaf", backchannel_tlog::fuzz::leaf),
    ("checkpoint", backchannel_tlog::fuzz::checkpoint),
    ("cosignature", backchannel_tlog::fuzz::cosignature),
    ("receipt", backchannel_tlog::fuzz::receipt),
    ("proof", backchannel_tlog::fuzz::proof),
    ("evidence", backchannel_core::fuzz::evidence),
    ("signature", backchannel_crypto::fuzz::signature),
];

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (name, target) in TARGETS {
        survives_corpus(&corpus, name, *target);
    }
}
