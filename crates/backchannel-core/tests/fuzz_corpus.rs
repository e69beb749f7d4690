//! Runs every fuzz target briefly on each `cargo test`: over the checked-in
//! corpus (`fuzz/corpus/<target>/`) and over deterministic mutations of each
//! corpus file (every single-bit flip of the first 512 bits, truncations at
//! every length, and seeded random byte changes). The targets assert that
//! nothing panics and that whatever parses re-encodes to the same bytes.
//! Longer runs use cargo-fuzz: see `fuzz/Cargo.toml`.

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
];

/// Random byte changes per corpus file.
const RANDOM_MUTATIONS: u64 = 300;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = corpus.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap_or_else(|e| panic!("{e}")).path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus for fuzz target {name}");
        target(&[]);
        for file in files {
            let input = std::fs::read(&file).unwrap_or_else(|e| panic!("{e}"));
            target(&input);
            for bit in 0..(input.len() * 8).min(512) {
                let mut m = input.clone();
                m[bit / 8] ^= 1 << (bit % 8);
                target(&m);
            }
            for len in 0..input.len().min(2048) {
                target(&input[..len]);
            }
            let mut state = input.len() as u64;
            for _ in 0..RANDOM_MUTATIONS {
                if input.is_empty() {
                    break;
                }
                let mut m = input.clone();
                for _ in 0..1 + splitmix(&mut state) % 4 {
                    let i = (splitmix(&mut state) as usize) % m.len();
                    m[i] = splitmix(&mut state) as u8;
                }
                target(&m);
            }
        }
    }
}
