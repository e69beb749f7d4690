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
    let batched = batch.verify(&mut InputRng::new(data)).is_ok();
    assert_eq!(ours, batched, "verify and BatchVerifier disagree");
}

/// Coefficients for a one-item batch, drawn from the input itself:
/// `SHA-512(input ‖ counter)`. With one item, any coefficient that is not
/// 0 mod ℓ gives single verification's verdict, so unpredictable ones are
/// not needed here (and this crate draws no randomness of its own: the
/// ambient-IO test).
struct InputRng {
    seed: [u8; 64],
    counter: u64,
}

impl InputRng {
    fn new(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Self {
            seed: sha2::Sha512::digest(data).into(),
            counter: 0,
        }
    }
}

impl rand_core::RngCore for InputRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        use sha2::Digest as _;
        for chunk in dest.chunks_mut(64) {
            let block = sha2::Sha512::new()
                .chain_update(self.seed)
                .chain_update(self.counter.to_le_bytes())
                .finalize();
            self.counter += 1;
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for InputRng {}
