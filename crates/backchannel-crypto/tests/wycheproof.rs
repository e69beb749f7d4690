//! Every Wycheproof Ed25519 vector through both verification paths.
//!
//! For each vector this test checks that
//! - [`verify`] and a [`BatchVerifier`] holding only that vector agree (the
//!   crate's promise: batching never changes a verdict), and so do
//!   `ed25519-consensus`'s own single and batch verification, which also
//!   covers keys [`PublicKey::from_bytes`] refuses;
//! - on every key we accept, our verdict is exactly the ZIP-215 verdict;
//! - the vectors where ZIP-215 differs from Wycheproof's expected result are
//!   exactly [`ZIP215_DIFFERS_FROM_WYCHEPROOF`], and the vectors whose key
//!   we refuse are exactly [`KEY_REFUSED`]; a change to either set (a new
//!   Wycheproof release, a new `ed25519-consensus`) fails the test until the
//!   lists, and their reasons, are updated.
//!
//! Wycheproof signs raw messages, while our functions sign and verify
//! `context ‖ message`. We need no test-only "raw" entry point in the public
//! API: [`Context::C2SP_SIGNED_NOTE`] is the empty context, so verifying under
//! it checks exactly the raw message, through the very code every other
//! context uses. `ed25519-consensus` is called directly as the ZIP-215
//! reference: our batch paths are built on it, our single verification is
//! not (it runs the same equation on `curve25519-dalek` 4), and it also
//! covers keys [`PublicKey::from_bytes`] refuses, where our API cannot go.

#![allow(missing_docs)]
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use backchannel_crypto::{
    BadKey, BatchVerifier, Context, PublicKey, Signature, ToVerify, verify, verify_many,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use wycheproof::TestResult;
use wycheproof::eddsa::{TestName, TestSet};

/// The context whose bytes are empty: verification of the raw message.
const RAW: Context = Context::C2SP_SIGNED_NOTE;

/// Vectors where the ZIP-215 verdict (ours, on every key we accept) differs
/// from Wycheproof's expected result, and why that is intended.
const ZIP215_DIFFERS_FROM_WYCHEPROOF: &[(usize, &str)] = &[(
    151,
    "Wycheproof: invalid; ZIP-215: valid. R is encoded as y = 1 with the sign \
     bit of x set. The only point with y = 1 is the identity (x = 0), so this is \
     a non-canonical encoding of a small-order R, which RFC 8032 §5.1.3 decoding \
     rejects. ZIP-215 decodes A and R without a canonicity check (any y < 2^255 \
     and any sign bit on x = 0) and checks the cofactored equation, so the \
     signature verifies. Not a forgery: only the key holder can compute S for \
     this R. Accepting it is the price of batch = single verification.",
)];

/// Vectors whose public key [`PublicKey::from_bytes`] refuses, with the
/// reason. Backchannel rejects these signatures whatever ZIP-215 says (no
/// such key can enter a roster). Wycheproof's Ed25519 file has none today:
/// its keys are all canonical and of large order.
const KEY_REFUSED: &[(usize, BadKey)] = &[];

/// One vector's verdicts.
struct Outcome {
    tc_id: usize,
    comment: String,
    expected: TestResult,
    /// What [`PublicKey::from_bytes`] says about the group's key.
    key: Result<PublicKey, BadKey>,
    /// The ZIP-215 verdict (`ed25519-consensus`, raw key bytes).
    zip215: bool,
    /// Our verdict: key accepted and signature verifies.
    ours: bool,
}

fn signature(bytes: &[u8]) -> Option<[u8; 64]> {
    bytes.try_into().ok()
}

/// ZIP-215 single and batch verdicts straight from `ed25519-consensus`, for
/// any 32 key bytes (the reference `backchannel_crypto::verify` must match,
/// and what `BatchVerifier::queue` runs, minus the key check).
fn zip215_verdicts(pk: &[u8], msg: &[u8], sig: &[u8], rng: &mut ChaCha20Rng) -> (bool, bool) {
    let (Ok(pk), Some(sig)) = (<[u8; 32]>::try_from(pk), signature(sig)) else {
        return (false, false);
    };
    let sig = ed25519_consensus::Signature::from(sig);
    let single = ed25519_consensus::VerificationKey::try_from(pk)
        .is_ok_and(|vk| vk.verify(&sig, msg).is_ok());
    let mut batch = ed25519_consensus::batch::Verifier::new();
    batch.queue((ed25519_consensus::VerificationKeyBytes::from(pk), sig, msg));
    (single, batch.verify(&mut *rng).is_ok())
}

/// Our single and batch verdicts, through the public API only.
fn our_verdicts(key: &PublicKey, msg: &[u8], sig: &[u8], rng: &mut ChaCha20Rng) -> (bool, bool) {
    // A signature of the wrong length cannot even be a `Signature`: both
    // paths reject it at parsing.
    let Some(sig) = signature(sig).map(Signature) else {
        return (false, false);
    };
    let single = verify(key, RAW, msg, &sig).is_ok();
    let mut batch = BatchVerifier::new();
    batch.queue(key, RAW, msg, &sig);
    (single, batch.verify(rng).is_ok())
}

#[test]
fn wycheproof_ed25519() {
    let set = TestSet::load(TestName::Ed25519).expect("the wycheproof crate embeds its data");
    let mut rng = ChaCha20Rng::seed_from_u64(215);

    let mut outcomes = Vec::new();
    // Vectors we accept, to check in one batch: (key, message, signature).
    let mut accepted: Vec<(PublicKey, &[u8], Signature)> = Vec::new();
    // Vectors we reject despite a key we accept and a 64-byte signature.
    let mut rejected: Vec<(usize, PublicKey, &[u8], Signature)> = Vec::new();
    for group in &set.test_groups {
        let pk: &[u8] = &group.key.pk;
        let key = PublicKey::from_bytes(pk);
        for test in &group.tests {
            let (zip_single, zip_batch) = zip215_verdicts(pk, &test.msg, &test.sig, &mut rng);
            assert_eq!(
                zip_single, zip_batch,
                "tcId {}: ed25519-consensus single and batch disagree",
                test.tc_id
            );
            let ours = match &key {
                Ok(key) => {
                    let (single, batch) = our_verdicts(key, &test.msg, &test.sig, &mut rng);
                    assert_eq!(
                        single, batch,
                        "tcId {}: verify and BatchVerifier disagree",
                        test.tc_id
                    );
                    assert_eq!(
                        single, zip_single,
                        "tcId {}: verify differs from ZIP-215",
                        test.tc_id
                    );
                    if let Some(sig) = signature(&test.sig).map(Signature) {
                        if single {
                            accepted.push((*key, &test.msg, sig));
                        } else {
                            rejected.push((test.tc_id, *key, &test.msg, sig));
                        }
                    }
                    single
                }
                Err(_) => false,
            };
            outcomes.push(Outcome {
                tc_id: test.tc_id,
                comment: test.comment.clone(),
                expected: test.result,
                key,
                zip215: zip_single,
                ours,
            });
        }
    }
    assert_eq!(
        outcomes.len(),
        set.number_of_tests,
        "every vector in the file was run"
    );

    // All accepted vectors in one batch verify, and any one rejected vector
    // added to them makes the batch fail.
    let mut all = BatchVerifier::new();
    for (key, msg, sig) in &accepted {
        all.queue(key, RAW, msg, sig);
    }
    assert_eq!(all.len(), accepted.len());
    assert!(
        all.verify(&mut rng).is_ok(),
        "the batch of all valid vectors fails"
    );
    for (tc_id, bad_key, bad_msg, bad_sig) in &rejected {
        let mut batch = BatchVerifier::new();
        for (key, msg, sig) in &accepted {
            batch.queue(key, RAW, msg, sig);
        }
        batch.queue(bad_key, RAW, bad_msg, bad_sig);
        assert!(
            batch.verify(&mut rng).is_err(),
            "tcId {tc_id}: rejected alone but accepted in a batch of valid vectors"
        );
    }

    // `verify_many` over every vector with a key we accept and a 64-byte
    // signature, accepted and rejected mixed, gives each vector the verdict
    // `verify` gives it (a batch of them fails and is split).
    let mut mixed: Vec<(PublicKey, &[u8], Signature, bool)> = accepted
        .iter()
        .map(|(k, m, s)| (*k, *m, *s, true))
        .chain(rejected.iter().map(|(_, k, m, s)| (*k, *m, *s, false)))
        .collect();
    // Interleaved, so good and bad signatures share every split.
    mixed.sort_by_key(|(_, m, s, _)| (m.len(), s.0));
    let items: Vec<ToVerify<'_>> = mixed
        .iter()
        .map(|(key, message, signature, _)| ToVerify {
            key,
            context: RAW,
            message,
            signature,
        })
        .collect();
    let verdicts = verify_many(&items, &mut rng);
    for ((_, _, _, good), verdict) in mixed.iter().zip(&verdicts) {
        assert_eq!(verdict.is_ok(), *good, "verify_many disagrees with verify");
    }
    assert!(verdicts.iter().any(Result::is_err) && verdicts.iter().any(Result::is_ok));

    // The key refusals, exactly as listed.
    let refused: BTreeMap<usize, BadKey> = outcomes
        .iter()
        .filter_map(|o| o.key.err().map(|e| (o.tc_id, e)))
        .collect();
    for (tc_id, reason) in &refused {
        println!("tcId {tc_id}: key refused by PublicKey::from_bytes: {reason}");
    }
    let expected_refused: BTreeMap<usize, BadKey> = KEY_REFUSED.iter().copied().collect();
    assert_eq!(
        refused, expected_refused,
        "the set of vectors whose key is refused changed; update KEY_REFUSED"
    );

    // The differences from Wycheproof, exactly as listed. "Acceptable"
    // vectors may go either way, so they never count as a difference.
    let differs = |verdict: bool, expected: TestResult| match expected {
        TestResult::Valid => !verdict,
        TestResult::Invalid => verdict,
        TestResult::Acceptable => false,
    };
    let zip_diffs: BTreeMap<usize, &Outcome> = outcomes
        .iter()
        .filter(|o| differs(o.zip215, o.expected))
        .map(|o| (o.tc_id, o))
        .collect();
    for o in zip_diffs.values() {
        println!(
            "tcId {}: Wycheproof {:?}, ZIP-215 {} ({})",
            o.tc_id,
            o.expected,
            if o.zip215 { "valid" } else { "invalid" },
            o.comment
        );
    }
    let listed: BTreeMap<usize, &str> = ZIP215_DIFFERS_FROM_WYCHEPROOF.iter().copied().collect();
    assert_eq!(
        zip_diffs.keys().collect::<Vec<_>>(),
        listed.keys().collect::<Vec<_>>(),
        "the set of vectors where ZIP-215 differs from Wycheproof changed; \
         update ZIP215_DIFFERS_FROM_WYCHEPROOF with the reason for each"
    );
    // Our final verdict differs from Wycheproof only where ZIP-215 does, or
    // where we refuse the key.
    for o in &outcomes {
        if differs(o.ours, o.expected) {
            assert!(
                listed.contains_key(&o.tc_id) || refused.contains_key(&o.tc_id),
                "tcId {}: our verdict differs from Wycheproof for no listed reason",
                o.tc_id
            );
        }
    }

    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    println!(
        "Wycheproof Ed25519: {} vectors in {} groups; expected {} valid, {} invalid, {} acceptable",
        outcomes.len(),
        set.test_groups.len(),
        count(&|o| o.expected == TestResult::Valid),
        count(&|o| o.expected == TestResult::Invalid),
        count(&|o| o.expected == TestResult::Acceptable),
    );
    println!(
        "ZIP-215 accepts {}, rejects {}; keys refused: {}; we accept {}; \
         single = batch on all {}; {} accepted in one batch; {} rejected each \
         failing a batch of the accepted; ZIP-215 differs from Wycheproof on {}",
        count(&|o| o.zip215),
        count(&|o| !o.zip215),
        refused.len(),
        count(&|o| o.ours),
        outcomes.len(),
        accepted.len(),
        rejected.len(),
        zip_diffs.len(),
    );
}
