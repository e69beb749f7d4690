//! Fuzz entry points (`fuzz/fuzz_targets/` calls these, and
//! `backchannel-core`'s corpus test runs them over `fuzz/corpus/`).

use crate::{BatchVerifier, PublicKey, Signature, verify};

/// The context the `signature` target verifies under: the empty one, so
/// that the input's message is exactly what is signed.
const RAW: crate::Context = crate::Context::C2SP_SIGNED_NOTE;

/// 32 key bytes, a 64-byte signature, then the message: where the key
/// parses, [`verify`] (on `curve25519-dalek` 4), [`crate::VerifyingKey`],
/// `ed25519-consensus`'s single verification and a one-item
/// [`BatchVerifier`] (`ed25519-consensus`'s batch) must give the same
/// verdict. A differential target: the single and batch paths of the one
/// ZIP-215 policy must never disagree. (Where the key does not parse there
/// is nothing to compare: no verifier here takes an unparsed key.)
pub fn signature(data: &[u8]) {
    if data.len() < 96 {
        return;
    }
    let (key, rest) = data.split_at(32);
    let (sig, message) = rest.split_at(64);
    let Ok(sig) = <[u8; 64]>::try_from(sig) else {
        return;
    };
    let Ok(key) = PublicKey::from_bytes(key) else {
        return;
    };
    let ours = verify(&key, RAW, message, &Signature(sig)).is_ok();
    let kept = key
        .verifying_key()
        .verify(RAW, message, &Signature(sig))
        .is_ok();
    let theirs = ed25519_consensus::VerificationKey::try_from(*key.as_bytes()).is_ok_and(|vk| {
        vk.verify(&ed25519_consensus::Signature::from(sig), message)
            .is_ok()
    });
    assert_eq!(ours, theirs, "verify and ed25519-consensus disagree");
    assert_eq!(ours, kept, "verify and VerifyingKey::verify disagree");
    let mut batch = BatchVerifier::new();
    batch.queue(&key, RAW, message, &Signature(sig));
    // The coefficients only decide whether a failing batch could pass by
    // chance (probability about 2^-128), so the OS's generator is fine here.
    let batched = batch.verify(&mut rand_core::OsRng).is_ok();
    assert_eq!(ours, batched, "verify and BatchVerifier disagree");
}
