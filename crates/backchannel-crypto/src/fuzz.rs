//! Fuzz entry points (`fuzz/fuzz_targets/` calls these, and
//! `backchannel-core`'s corpus test runs them over `fuzz/corpus/`).

use crate::{PublicKey, Signature, verify};

/// The context the `signature` target verifies under: the empty one, so
/// that the input's message is exactly what is signed.
const RAW: crate::Context = crate::Context::C2SP_SIGNED_NOTE;

/// 32 key bytes, a 64-byte signature, then the message: where the key
/// parses, [`verify`] (on `curve25519-dalek` 4), [`crate::VerifyingKey`]
/// and `ed25519-consensus` (which the batch paths use) must give the same
/// verdict, and where it does not, no signature may verify. A differential
/// target: the single and batch paths of the one ZIP-215 policy must never
/// disagree.
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
}
