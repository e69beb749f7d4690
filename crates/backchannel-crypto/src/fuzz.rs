//! Fuzz entry points (`fuzz/fuzz_targets/` calls these, and
//! `backchannel-core`'s corpus test runs them over `fuzz/corpus/`).

use crate::{BatchVerifier, Context, PublicKey, Signature, verify};

/// The context the `signature` target verifies under: the empty one, so
/// that the input's message is exactly what is signed.
const RAW: Context = Context::C2SP_SIGNED_NOTE;

/// 32 key bytes, a 64-byte signature, then the message: where the key
/// parses, the verifiers of [`verdict`] must agree. A differential target:
/// the single and batch paths of the one ZIP-215 policy must never
/// disagree. (Where the key does not parse there is nothing to compare: no
/// verifier here takes an unparsed key.)
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
    if let Err(e) = verdict(&key, RAW, message, &sig) {
        panic!("{e}");
    }
}

/// The verdict on `sig` by `key` over `context ‖ message` of [`verify`]
/// (on `curve25519-dalek` 4), [`crate::VerifyingKey::verify`],
/// `ed25519-consensus`'s single verification and a one-item
/// [`BatchVerifier`] (`ed25519-consensus`'s batch); `Err` names the two
/// that disagree. The fuzz target above and `tests/zip215.rs` both check
/// through it.
pub fn verdict(
    key: &PublicKey,
    context: Context,
    message: &[u8],
    sig: &[u8; 64],
) -> Result<bool, String> {
    let ours = verify(key, context, message, &Signature(*sig)).is_ok();
    let kept = key
        .verifying_key()
        .verify(context, message, &Signature(*sig))
        .is_ok();
    if kept != ours {
        return Err(format!("verify {ours}, VerifyingKey::verify {kept}"));
    }
    let mut signed = context.as_bytes().to_vec();
    signed.extend_from_slice(message);
    let theirs = ed25519_consensus::VerificationKey::try_from(*key.as_bytes()).is_ok_and(|vk| {
        vk.verify(&ed25519_consensus::Signature::from(*sig), &signed)
            .is_ok()
    });
    if theirs != ours {
        return Err(format!("verify {ours}, ed25519-consensus {theirs}"));
    }
    let mut batch = BatchVerifier::new();
    batch.queue(key, context, message, &Signature(*sig));
    let batched = batch
        .verify(&mut InputRng::new(&[key.as_bytes(), &sig[..], &signed]))
        .is_ok();
    if batched != ours {
        return Err(format!("verify {ours}, BatchVerifier {batched}"));
    }
    Ok(ours)
}

/// Coefficients for a one-item batch, drawn from the input itself:
/// `SHA-512(SHA-512(input) ‖ counter)`. With one item, any coefficient that is not
/// 0 mod ℓ gives single verification's verdict, so unpredictable ones are
/// not needed here (and this crate draws no randomness of its own: the
/// ambient-IO test).
struct InputRng {
    seed: [u8; 64],
    counter: u64,
}

impl InputRng {
    /// Seeded from the concatenation of `parts`.
    fn new(parts: &[&[u8]]) -> Self {
        use sha2::Digest as _;
        let mut h = sha2::Sha512::new();
        for part in parts {
            h.update(part);
        }
        Self {
            seed: h.finalize().into(),
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
