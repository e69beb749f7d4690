//! `verify` against `ed25519-consensus`, the ZIP-215 verifier the batch
//! paths use, on signatures made to sit on the edges of the rules.
//!
//! Since `verify` runs on `curve25519-dalek` 4 and no longer calls
//! `ed25519-consensus`, its verdicts could drift from the batch verifier's;
//! batching must never change a verdict (the module's verification
//! policy). Every case below is checked by one helper, [`check`], which
//! asserts that `verify`, `VerifyingKey::verify`, `ed25519-consensus`'s
//! single verification and a one-item `BatchVerifier` agree and returns the
//! verdict, so each case can also state what ZIP-215 says:
//!
//! - a good signature verifies;
//! - a signature whose signer added any of the eight torsion points to its
//!   `R` verifies (the cofactored equation: a cofactorless verifier would
//!   refuse seven of them), and one whose `R` was moved so after signing
//!   does not (but for the identity);
//! - a signature by the key holder with `r = 0` verifies exactly when its
//!   `R` decodes to a small-order point, in every such encoding (canonical
//!   or not: `y ≥ p`, `x = 0` with the sign bit set; at least four
//!   non-canonical ones), and fails for the other edge encodings;
//! - a key with a torsion component (`A = [a]B + T`, which parsing
//!   accepts) verifies its holder's signatures;
//! - `R` replaced after signing by every edge encoding and by random
//!   bytes (about half are not points);
//! - `S + ℓ` (not canonical) and `S` with its top bit set are refused;
//! - one flipped bit anywhere in the signature, and another message or
//!   context, are refused.
//!
//! `tests/wycheproof.rs` compares the two on Wycheproof's vectors.

#![allow(missing_docs)]
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backchannel_crypto::{Context, PublicKey, SecretKey, Signer};
use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

const CTX: Context = Context::new("backchannel/v1/zip215-test");
const OTHER: Context = Context::new("backchannel/v1/zip215-other");

/// ℓ, the order of the base point, little-endian.
const ELL: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// p = 2^255 − 19, little-endian.
const P: [u8; 32] = {
    let mut p = [0xff; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

/// `verify`, `VerifyingKey::verify`,
/// `ed25519-consensus`'s single verification and a one-item
/// `BatchVerifier` must agree (`backchannel_crypto::fuzz::verdict`, which
/// the fuzz target checks through too); returns the verdict.
fn check(case: &str, key: &PublicKey, context: Context, msg: &[u8], sig: &[u8; 64]) -> bool {
    backchannel_crypto::fuzz::verdict(key, context, msg, sig).unwrap_or_else(|e| {
        panic!(
            "{case}: the verifiers disagree: {e} (key {key:?}, sig {})",
            hex::encode(sig)
        )
    })
}

/// Little-endian 256-bit addition, wrapping.
fn add(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let t = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = t as u8;
        carry = t >> 8;
    }
    out
}

/// Every encoding of a small-order point ZIP-215 decodes, canonical or not,
/// and other non-canonical encodings: `y + p` for `y < 19` (the only `y`
/// with a second encoding below 2^255; small-order for `y = 0` and `y = 1`,
/// otherwise a point of large order or nothing), each with both sign bits,
/// the canonical encodings of the eight torsion points, and `y = 1` and
/// `y = p − 1` (the points with `x = 0`) with the sign bit set.
fn edge_encodings() -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    for y in 0u8..19 {
        let mut small = [0u8; 32];
        small[0] = y;
        let enc = add(&P, &small);
        out.push(enc);
        let mut signed = enc;
        signed[31] |= 0x80;
        out.push(signed);
    }
    for t in EIGHT_TORSION {
        out.push(t.compress().to_bytes());
    }
    let mut one = [0u8; 32];
    one[0] = 1;
    one[31] |= 0x80;
    out.push(one);
    let mut minus_one = P;
    minus_one[0] -= 1;
    minus_one[31] |= 0x80;
    out.push(minus_one);
    out
}

/// `S = r + k·a` over `CTX ‖ msg`, with `k = SHA-512(R ‖ A ‖ CTX ‖ msg)`
/// hashed over the exact bytes of `R` and `A` given: a signature made by
/// whoever knows `a` and `r`, for any encoding of `R`.
fn sign_raw(a: &Scalar, key: &[u8; 32], msg: &[u8], r: &Scalar, r_bytes: &[u8; 32]) -> [u8; 64] {
    use sha2::Digest as _;
    let mut h = sha2::Sha512::new();
    h.update(r_bytes);
    h.update(key);
    h.update(CTX.as_bytes());
    h.update(msg);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    let s = r + k * a;
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(r_bytes);
    sig[32..].copy_from_slice(s.as_bytes());
    sig
}

/// The key's secret scalar `a` (`A = [a]B`).
fn secret_scalar(secret: &SecretKey) -> Scalar {
    Scalar::from_bytes_mod_order(*secret.x25519_secret())
}

fn random_scalar(rng: &mut ChaCha20Rng) -> Scalar {
    let mut wide = [0u8; 64];
    rng.fill_bytes(&mut wide);
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// Signs `CTX ‖ msg` with `R = [r]B + T`.
fn sign_with_torsion(
    secret: &SecretKey,
    msg: &[u8],
    t: &EdwardsPoint,
    rng: &mut ChaCha20Rng,
) -> [u8; 64] {
    let r = random_scalar(rng);
    let big_r = (EdwardsPoint::mul_base(&r) + t).compress().to_bytes();
    sign_raw(
        &secret_scalar(secret),
        secret.public_key().as_bytes(),
        msg,
        &r,
        &big_r,
    )
}

fn r_of(sig: &[u8; 64]) -> [u8; 32] {
    sig[..32].try_into().unwrap()
}

fn with_r(sig: &[u8; 64], r: &[u8; 32]) -> [u8; 64] {
    let mut out = *sig;
    out[..32].copy_from_slice(r);
    out
}

fn with_s(sig: &[u8; 64], s: &[u8; 32]) -> [u8; 64] {
    let mut out = *sig;
    out[32..].copy_from_slice(s);
    out
}

#[test]
fn verify_agrees_with_ed25519_consensus_on_the_edges() {
    let mut rng = ChaCha20Rng::seed_from_u64(215);
    let encodings = edge_encodings();
    let decodable = encodings
        .iter()
        .filter(|e| CompressedEdwardsY(**e).decompress().is_some())
        .count();
    // The 8 canonical torsion encodings, p and p + 1 (y = 0 and y = 1 once
    // more), and the x = 0 points with the sign bit set, at least.
    assert!(decodable >= 12, "only {decodable} of the encodings decode");
    // Of which non-canonical encodings of small-order points (y = 0 and
    // y = 1 as y + p, the x = 0 points with the sign bit set), which the
    // signed cases below must see accepted.
    let non_canonical_small = encodings
        .iter()
        .filter(|e| {
            CompressedEdwardsY(**e)
                .decompress()
                .is_some_and(|p| p.is_small_order() && p.compress().to_bytes() != **e)
        })
        .count();
    assert!(
        non_canonical_small >= 4,
        "only {non_canonical_small} non-canonical small-order encodings"
    );
    let (mut accepted, mut refused) = (0usize, 0usize);
    let mut tally = |v: bool| {
        if v {
            accepted += 1;
        } else {
            refused += 1;
        }
    };
    for round in 0..48 {
        let secret = SecretKey::generate(&mut rng);
        let key = secret.public_key();
        let mut msg = vec![0u8; (rng.next_u32() % 300) as usize];
        rng.fill_bytes(&mut msg);
        let sig = secret.sign(CTX, &msg).unwrap().0;

        assert!(check("good", &key, CTX, &msg, &sig), "round {round}");
        tally(true);

        // A signer that adds a torsion point T to its R: the cofactored
        // equation holds, where a cofactorless one would fail for T ≠ 0.
        for (i, t) in EIGHT_TORSION.iter().enumerate() {
            let torsioned = sign_with_torsion(&secret, &msg, t, &mut rng);
            assert!(
                check(&format!("R + torsion {i}"), &key, CTX, &msg, &torsioned),
                "round {round}: R + torsion point {i} must verify under ZIP-215"
            );
            tally(true);
            // Moving R after signing changes k, so that one fails.
            let r = CompressedEdwardsY(r_of(&sig)).decompress().unwrap();
            let moved = with_r(&sig, &(r + t).compress().to_bytes());
            tally(check(
                &format!("R moved by torsion {i}"),
                &key,
                CTX,
                &msg,
                &moved,
            ));
        }

        // R = a small-order point, in every encoding, signed by the key
        // holder (r = 0, S = k·a over those exact bytes): `[S]B − [k]A` is
        // the identity and `[8]R` too, so every encoding of a small-order
        // point must verify, the non-canonical ones (y ≥ p, x = 0 with the
        // sign bit set) included: ZIP-215 decodes them all. The other
        // encodings in the list decode to points of large order (r = 0 is
        // then the wrong discrete log) or to nothing, and must fail.
        let a = secret_scalar(&secret);
        for (i, enc) in encodings.iter().enumerate() {
            let signed = sign_raw(&a, key.as_bytes(), &msg, &Scalar::ZERO, enc);
            let small = CompressedEdwardsY(*enc)
                .decompress()
                .is_some_and(|p| p.is_small_order());
            assert_eq!(
                check(&format!("signed R {i}, r = 0"), &key, CTX, &msg, &signed),
                small,
                "round {round}: a signature with r = 0 on R encoding {i} ({}) must verify \
                 exactly when the encoding decodes to a point of small order",
                hex::encode(enc)
            );
            tally(small);
        }

        // A key with a torsion component, A = [a]B + T: canonical and not
        // of small order, so parsing accepts it, and an honest signature
        // verifies under the cofactored equation (`[S]B − [k]A = R − [k]T`).
        for (i, t) in EIGHT_TORSION.iter().enumerate() {
            let torsioned = (EdwardsPoint::mul_base(&a) + t).compress().to_bytes();
            let tkey = PublicKey::from_bytes(&torsioned)
                .unwrap_or_else(|e| panic!("round {round}: key + torsion {i} refused: {e}"));
            let r = random_scalar(&mut rng);
            let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();
            let signed = sign_raw(&a, &torsioned, &msg, &r, &big_r);
            assert!(
                check(&format!("key + torsion {i}"), &tkey, CTX, &msg, &signed),
                "round {round}: a key with torsion point {i} must verify its holder's signature"
            );
            tally(true);
        }

        // R replaced by small-order and random encodings after signing.
        for (i, enc) in encodings.iter().enumerate() {
            tally(check(
                &format!("small-order R {i}"),
                &key,
                CTX,
                &msg,
                &with_r(&sig, enc),
            ));
        }
        let mut random_r = [0u8; 32];
        rng.fill_bytes(&mut random_r);
        tally(check("random R", &key, CTX, &msg, &with_r(&sig, &random_r)));

        // S not canonical.
        let s: [u8; 32] = sig[32..].try_into().unwrap();
        let s_plus_ell = add(&s, &ELL);
        assert!(!check("S + ℓ", &key, CTX, &msg, &with_s(&sig, &s_plus_ell)));
        let mut s_top = s;
        s_top[31] |= 0x80;
        assert!(!check("S top bit", &key, CTX, &msg, &with_s(&sig, &s_top)));
        tally(false);
        tally(false);

        // One flipped bit anywhere.
        let bit = (rng.next_u32() % 512) as usize;
        let mut flipped = sig;
        flipped[bit / 8] ^= 1 << (bit % 8);
        tally(check(
            &format!("bit {bit} flipped"),
            &key,
            CTX,
            &msg,
            &flipped,
        ));

        // Another message, another context.
        let mut other_msg = msg.clone();
        other_msg.push(0);
        assert!(!check("other message", &key, CTX, &other_msg, &sig));
        assert!(!check("other context", &key, OTHER, &msg, &sig));
        tally(false);
        tally(false);
    }
    // Both kinds of verdict were compared, many times.
    assert!(accepted >= 48 * 9, "accepted {accepted}");
    assert!(refused >= 48 * 4, "refused {refused}");
}
