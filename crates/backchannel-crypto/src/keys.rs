//! Ed25519 keys and signatures under one verification policy.
//!
//! # Verification policy
//!
//! Signatures are checked by the ZIP-215 rules (single verification on
//! `curve25519-dalek` 4, [`verify`]; batches by `ed25519-consensus`): the
//! cofactored equation `[8][S]B = [8]R + [8][k]A`, `S` must be canonical
//! (`S < ℓ`), and `A` and `R` may be any point encoding. ZIP-215 is chosen
//! because its batch verification accepts exactly the signatures single
//! verification accepts, so a node that batches (the performance issue) can
//! never reach a different verdict from a client that does not.
//!
//! Keys are stricter than the verification equation: [`PublicKey`] accepts
//! only canonical encodings of points that are not of small order, so a key
//! that could make a signature valid for every message never enters a
//! roster, certificate or access list, and every key has exactly one byte
//! encoding (and so one [`KeyId`]).

use backchannel_codec::{Decode, DecodeError, Encode, Reader, Writer};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use rand_core::CryptoRngCore;
use thiserror::Error;

use crate::{Context, Digest};

/// The context of key ids: `SHA-256("backchannel/v1/key-id" ‖ 0x01 ‖ key)`.
pub const KEY_ID_CONTEXT: Context = Context::new("backchannel/v1/key-id");

/// The algorithm byte of Ed25519 in key ids.
const ALG_ED25519: u8 = 0x01;

/// Why bytes are not an acceptable public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BadKey {
    /// Not 32 bytes.
    #[error("an Ed25519 public key is 32 bytes, got {0}")]
    WrongLength(usize),
    /// Not the encoding of a curve point.
    #[error("not an Ed25519 point")]
    NotAPoint,
    /// A point with another, canonical encoding.
    #[error("non-canonical point encoding")]
    NonCanonical,
    /// A point of small order (it would verify forged signatures).
    #[error("key of small order")]
    SmallOrder,
}

/// A signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("signature does not verify under {context}")]
pub struct BadSignature {
    /// The context it was checked under.
    pub context: Context,
}

/// A [`Signer`] could not sign.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignError {
    /// The key is on a device that is not available (card removed, agent down).
    #[error("signing device unavailable: {0}")]
    Unavailable(String),
    /// The device or its holder refused.
    #[error("signing refused: {0}")]
    Refused(String),
}

/// An Ed25519 public key that is canonically encoded and not of small order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Parses a key, refusing non-canonical encodings and small-order points.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BadKey> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| BadKey::WrongLength(bytes.len()))?;
        let point = CompressedEdwardsY(arr)
            .decompress()
            .ok_or(BadKey::NotAPoint)?;
        if point.compress().to_bytes() != arr {
            return Err(BadKey::NonCanonical);
        }
        if point.is_small_order() {
            return Err(BadKey::SmallOrder);
        }
        Ok(Self(arr))
    }

    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        KeyId(Digest::with_context(
            KEY_ID_CONTEXT,
            &[&[ALG_ED25519], &self.0],
        ))
    }

    /// The X25519 public key of the same key pair (RFC 7748's birational
    /// map from Edwards to Montgomery form): what a sender seals to when it
    /// must reach one device outside any MLS group (a handover bundle,
    /// `docs/formats.md` § Handover bundles). The matching secret is
    /// [`SecretKey::x25519_secret`]. Using one key pair for Ed25519 and an
    /// X25519 KEM is what age's `ssh-ed25519` recipients and libsodium's
    /// `crypto_sign_ed25519_pk_to_curve25519` do; Thormarker (2021, "On
    /// using the same key pair for Ed25519 and an X25519 based KEM") proves
    /// the combination secure. Every such use names its own HPKE `info`.
    pub fn to_x25519(&self) -> [u8; 32] {
        // A parsed key always decompresses (checked in `from_bytes`).
        CompressedEdwardsY(self.0)
            .decompress()
            .map_or([0; 32], |p| p.to_montgomery().to_bytes())
    }

    /// The key with its point decompressed, to check many signatures
    /// without decompressing it for each ([`VerifyingKey`]).
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            key: *self,
            // A parsed key always decompresses (checked in `from_bytes`);
            // were it ever not to, every signature would be refused.
            minus_a: CompressedEdwardsY(self.0).decompress().map(|a| -a),
        }
    }

    /// Verifies `signature` over `context ‖ message` (see the module's
    /// verification policy).
    pub fn verify(
        &self,
        context: Context,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), BadSignature> {
        verify(self, context, message, signature)
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0))
    }
}

impl Encode for PublicKey {
    fn encode(&self, w: &mut Writer) {
        w.raw(&self.0);
    }
}

impl Decode for PublicKey {
    const MIN_LEN: usize = 32;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let bytes: [u8; 32] = r.array("public key")?;
        Self::from_bytes(&bytes).map_err(|e| DecodeError::Invalid {
            field: "public key",
            reason: match e {
                BadKey::WrongLength(_) => "wrong length",
                BadKey::NotAPoint => "not a curve point",
                BadKey::NonCanonical => "non-canonical encoding",
                BadKey::SmallOrder => "small-order key",
            },
        })
    }
}

/// A key id: `SHA-256("backchannel/v1/key-id" ‖ 0x01 ‖ public key)`.
///
/// Ids, not keys, travel in envelope headers and statements; the key itself
/// is found in the certificate that introduced it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub Digest);

impl KeyId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0.0
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.to_hex()
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({})", &self.to_hex()[..16])
    }
}

impl Encode for KeyId {
    fn encode(&self, w: &mut Writer) {
        self.0.encode(w);
    }
}

impl Decode for KeyId {
    const MIN_LEN: usize = 32;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(Digest(r.array("key id")?)))
    }
}

/// A 64-byte Ed25519 signature (`R ‖ S`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// The signature's bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..8]))
    }
}

impl Encode for Signature {
    fn encode(&self, w: &mut Writer) {
        w.raw(&self.0);
    }
}

impl Decode for Signature {
    const MIN_LEN: usize = 64;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(r.array("signature")?))
    }
}

fn signed_message(context: Context, message: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(context.as_bytes().len() + message.len());
    m.extend_from_slice(context.as_bytes());
    m.extend_from_slice(message);
    m
}

/// A [`PublicKey`] with its point decompressed (and negated, as the
/// verification equation uses it): what a verifier keeps for a key whose
/// signatures it checks again and again, such as the node for the key a
/// connection authenticated with. [`verify`] builds one per call.
#[derive(Clone, Copy)]
pub struct VerifyingKey {
    key: PublicKey,
    /// `−A` (`None` only if the key did not decompress, which parsing
    /// rules out: then nothing verifies).
    minus_a: Option<EdwardsPoint>,
}

impl VerifyingKey {
    /// The key.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// Verifies `signature` over `context ‖ message` (ZIP-215); see
    /// [`verify`].
    pub fn verify(
        &self,
        context: Context,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), BadSignature> {
        use sha2::Digest as _;
        let bad = BadSignature { context };
        let minus_a = self.minus_a.ok_or(bad)?;
        let (r_bytes, s_bytes) = signature.0.split_at(32);
        let s_bytes: [u8; 32] = s_bytes.try_into().map_err(|_| bad)?;
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)).ok_or(bad)?;
        let r_bytes: [u8; 32] = r_bytes.try_into().map_err(|_| bad)?;
        let r = CompressedEdwardsY(r_bytes).decompress().ok_or(bad)?;
        let mut h = sha2::Sha512::new();
        h.update(r_bytes);
        h.update(self.key.0);
        h.update(context.as_bytes());
        h.update(message);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        // [k](−A) + [S]B, which is R for an honest signature.
        let r_prime = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &minus_a, &s);
        if (r - r_prime).mul_by_cofactor().is_identity() {
            Ok(())
        } else {
            Err(bad)
        }
    }
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("VerifyingKey").field(&self.key).finish()
    }
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        // The point is a function of the (canonical) bytes.
        self.key == other.key
    }
}

impl Eq for VerifyingKey {}

/// Verifies `signature` by `key` over `context ‖ message` (ZIP-215).
///
/// The same checks, in the same order, as `ed25519-consensus`'s
/// `VerificationKey::verify`, which the batch paths ([`BatchVerifier`],
/// [`verify_many`]) use: `S` must be canonical, `R` must decompress (any
/// encoding, as ZIP-215 says), and `[8](R − ([S]B − [k]A))` must be the
/// identity, with `k = SHA-512(R ‖ A ‖ context ‖ message) mod ℓ`. It runs
/// on `curve25519-dalek` 4, which picks its AVX2 backend at run time where
/// the CPU has one (`ed25519-consensus` is built on `curve25519-dalek-ng`'s
/// serial one). `tests/wycheproof.rs` and `tests/zip215.rs` check that its
/// verdicts are `ed25519-consensus`'s. To check many signatures by one key,
/// keep its [`VerifyingKey`]: this decompresses the key on every call.
pub fn verify(
    key: &PublicKey,
    context: Context,
    message: &[u8],
    signature: &Signature,
) -> Result<(), BadSignature> {
    key.verifying_key().verify(context, message, signature)
}

/// Verifies many signatures at once, accepting exactly what [`verify`]
/// accepts (ZIP-215). On failure, callers that need to know *which*
/// signature failed fall back to [`verify`] one by one.
#[derive(Default)]
pub struct BatchVerifier {
    inner: ed25519_consensus::batch::Verifier,
    len: usize,
}

impl BatchVerifier {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one signature to the batch.
    pub fn queue(&mut self, key: &PublicKey, context: Context, message: &[u8], sig: &Signature) {
        let item: ed25519_consensus::batch::Item = (
            ed25519_consensus::VerificationKeyBytes::from(key.0),
            ed25519_consensus::Signature::from(sig.0),
            &signed_message(context, message),
        )
            .into();
        self.inner.queue(item);
        self.len += 1;
    }

    /// How many signatures are queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks every queued signature; `rng` draws the random coefficients.
    pub fn verify(self, rng: &mut impl CryptoRngCore) -> Result<(), BatchFailed> {
        self.inner.verify(rng).map_err(|_| BatchFailed)
    }
}

/// One signature to check with [`verify_many`]: what [`verify`] takes.
#[derive(Clone, Copy, Debug)]
pub struct ToVerify<'a> {
    /// The signer's key.
    pub key: &'a PublicKey,
    /// The context the signature is under.
    pub context: Context,
    /// The signed message (after the context).
    pub message: &'a [u8],
    /// The signature.
    pub signature: &'a Signature,
}

/// A part of a failed batch at most this long is checked one signature at
/// a time ([`verify_many`]).
pub const SPLIT_FLOOR: usize = 8;

/// The verdict of [`verify`] for each of `items`, in order, found with as
/// few single verifications as the bad signatures allow: all of them in
/// one batch; when a batch fails, its halves are batched, a good half is
/// settled and a failing one split again, down to [`SPLIT_FLOOR`]; when
/// both halves of a failing part fail (bad signatures are not rare there)
/// that part is checked one signature at a time, so a log full of bad
/// signatures costs at most about a third more than checking each alone.
/// Every signature no batch proved good gets [`verify`]'s own verdict, so
/// the verdicts are exactly [`verify`]'s: a batch accepts what single
/// verification accepts (ZIP-215). `rng` draws the batches' coefficients
/// and must be unpredictable to whoever made the signatures.
pub fn verify_many(
    items: &[ToVerify<'_>],
    rng: &mut impl CryptoRngCore,
) -> Vec<Result<(), BadSignature>> {
    let prepared: Vec<ed25519_consensus::batch::Item> = items
        .iter()
        .map(|i| {
            (
                ed25519_consensus::VerificationKeyBytes::from(i.key.0),
                ed25519_consensus::Signature::from(i.signature.0),
                &signed_message(i.context, i.message),
            )
                .into()
        })
        .collect();
    let mut good = vec![false; items.len()];
    if batch_holds(&prepared, rng) {
        good.fill(true);
    } else {
        split_failed(&prepared, 0..items.len(), &mut good, rng);
    }
    items
        .iter()
        .zip(good)
        .map(|(i, good)| {
            if good {
                Ok(())
            } else {
                verify(i.key, i.context, i.message, i.signature)
            }
        })
        .collect()
}

/// Whether `items` verify as one batch.
fn batch_holds(items: &[ed25519_consensus::batch::Item], rng: &mut impl CryptoRngCore) -> bool {
    let mut batch = ed25519_consensus::batch::Verifier::new();
    for item in items {
        batch.queue(item.clone());
    }
    batch.verify(rng).is_ok()
}

/// `range` of `items` failed as a batch: marks in `good` what batches of
/// its halves prove good (see [`verify_many`]).
fn split_failed(
    items: &[ed25519_consensus::batch::Item],
    range: std::ops::Range<usize>,
    good: &mut [bool],
    rng: &mut impl CryptoRngCore,
) {
    if range.len() <= SPLIT_FLOOR {
        return;
    }
    let mid = range.start + range.len() / 2;
    let (left, right) = (range.start..mid, mid..range.end);
    if batch_holds(&items[left.clone()], rng) {
        good[left].fill(true);
        // The failure is in the right half.
        split_failed(items, right, good, rng);
    } else if batch_holds(&items[right.clone()], rng) {
        good[right].fill(true);
        split_failed(items, left, good, rng);
    }
    // Both halves fail: each of their signatures is checked on its own.
}

/// At least one signature in a batch did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("at least one signature in the batch does not verify")]
pub struct BatchFailed;

/// Anything that can sign for one key: a key in memory, a key file, later a
/// smart card. Implementations sign exactly `context ‖ message`.
pub trait Signer {
    /// The public key signatures verify under.
    fn public_key(&self) -> PublicKey;

    /// Signs `context ‖ message`.
    fn sign(&self, context: Context, message: &[u8]) -> Result<Signature, SignError>;
}

/// An Ed25519 secret key held in memory (zeroized on drop).
pub struct SecretKey {
    inner: ed25519_consensus::SigningKey,
    public: PublicKey,
}

impl SecretKey {
    /// A fresh key from `rng`. Draws until the public key is acceptable
    /// (a small-order public key from a hashed seed has negligible
    /// probability; the loop only makes that explicit).
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        loop {
            let mut seed = zeroize::Zeroizing::new([0u8; 32]);
            rng.fill_bytes(seed.as_mut());
            if let Ok(key) = Self::from_seed(&seed) {
                return key;
            }
        }
    }

    /// The key whose 32-byte RFC 8032 seed is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, BadKey> {
        let inner = ed25519_consensus::SigningKey::from(*seed);
        let public = PublicKey::from_bytes(inner.verification_key().as_bytes())?;
        Ok(Self { inner, public })
    }

    /// The 32-byte seed (secret).
    pub fn seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.inner.to_bytes())
    }

    /// The X25519 secret of the same key pair: the clamped first half of
    /// `SHA-512(seed)`, the Ed25519 secret scalar (RFC 8032 § 5.1.5), so
    /// that `X25519(secret, 9)` is [`PublicKey::to_x25519`] of this key.
    pub fn x25519_secret(&self) -> zeroize::Zeroizing<[u8; 32]> {
        use sha2::Digest as _;
        // Hashed straight into a zeroized buffer: `Zeroizing` of the
        // digest's own array type needs a feature of `generic-array` that
        // only other crates of the workspace happen to turn on, so this
        // crate alone (`cargo test -p` of a crate below it) did not build.
        let mut h = zeroize::Zeroizing::new([0u8; 64]);
        let mut hasher = sha2::Sha512::new();
        hasher.update(self.inner.to_bytes().as_slice());
        hasher.finalize_into(sha2::digest::generic_array::GenericArray::from_mut_slice(
            &mut h[..],
        ));
        let mut s = zeroize::Zeroizing::new([0u8; 32]);
        s.copy_from_slice(&h[..32]);
        s[0] &= 248;
        s[31] &= 127;
        s[31] |= 64;
        s
    }

    /// Signs an MLS (RFC 9420) `SignContent` bare, with no Backchannel
    /// context: the device key is the MLS signature key of its leaves, and
    /// MLS verifiers check `Ed25519(key, SignContent)`.
    ///
    /// `SignContent` is `opaque label<V> = "MLS 1.0 " ‖ Label; opaque
    /// content<V>`, so it begins with the label's length as a TLS variable
    /// length integer, then `MLS 1.0 `. Only such payloads are signed; any
    /// other is refused with [`SignError::Refused`]. Precisely: the first
    /// byte must be below `0x40` (a one-byte length: every RFC 9420 label is
    /// shorter than 64 bytes), that length must be at least 8 and fit in
    /// the payload, and the next 8 bytes must be `MLS 1.0 `.
    ///
    /// Why signing bare is safe: every other message a Backchannel key
    /// signs begins with a context, `backchannel/v1/…`, whose first byte
    /// `b` (`0x62`) is not below `0x40`; C2SP notes begin with a log origin,
    /// whose alphabet (`a-z 0-9 . - _ : /`) has no upper case or space, so
    /// never `MLS 1.0 ` at offset 1, or with `cosignature/v1` (`c`, `0x63`);
    /// TLS 1.3 `CertificateVerify` content begins with 64 spaces and a
    /// certificate's TBS with a DER length byte after `0x30`, never `M`.
    /// So no signature made here verifies as any other Backchannel, note or
    /// TLS signature, and no other signature verifies as an MLS one (RFC
    /// 9420 `SignWithLabel` already separates MLS labels from each other).
    pub fn sign_mls(&self, sign_content: &[u8]) -> Result<[u8; 64], SignError> {
        const PREFIX: &[u8] = b"MLS 1.0 ";
        let refuse = || SignError::Refused("not an MLS 1.0 SignContent".into());
        let (&len, rest) = sign_content.split_first().ok_or_else(refuse)?;
        if len >= 0x40 || (len as usize) < PREFIX.len() || rest.len() < len as usize {
            return Err(refuse());
        }
        if !rest.starts_with(PREFIX) {
            return Err(refuse());
        }
        Ok(self.inner.sign(sign_content).to_bytes())
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Signer for SecretKey {
    fn public_key(&self) -> PublicKey {
        self.public
    }

    fn sign(&self, context: Context, message: &[u8]) -> Result<Signature, SignError> {
        Ok(Signature(
            self.inner
                .sign(&signed_message(context, message))
                .to_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed(&[n; 32]).expect("seed gives a valid key")
    }

    const A: Context = Context::new("backchannel/v1/test/a");
    const B: Context = Context::new("backchannel/v1/test/b");

    #[test]
    fn the_x25519_halves_of_a_key_pair_match() {
        use curve25519_dalek::montgomery::MontgomeryPoint;
        for n in [1u8, 2, 77, 255] {
            let k = key(n);
            let public = MontgomeryPoint::mul_base_clamped(*k.x25519_secret()).to_bytes();
            assert_eq!(public, k.public_key().to_x25519(), "seed {n}");
        }
        assert_ne!(
            key(1).public_key().to_x25519(),
            key(2).public_key().to_x25519()
        );
    }

    #[test]
    fn signature_is_bound_to_its_context_and_message() {
        let k = key(1);
        let sig = k.sign(A, b"hello").expect("in-memory keys sign");
        assert!(k.public_key().verify(A, b"hello", &sig).is_ok());
        assert!(k.public_key().verify(B, b"hello", &sig).is_err());
        assert!(k.public_key().verify(A, b"hellp", &sig).is_err());
        assert!(key(2).public_key().verify(A, b"hello", &sig).is_err());
    }

    #[test]
    fn small_order_and_non_canonical_keys_are_refused() {
        // The identity point (y = 1) has order 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(BadKey::SmallOrder));
        // y = 1 + p is the identity again, non-canonically encoded
        // (p = 2^255 - 19, so 1 + p = 2^255 - 18: 0xee, 0xff…, 0x7f).
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        assert_eq!(
            PublicKey::from_bytes(&non_canonical),
            Err(BadKey::NonCanonical)
        );
        assert_eq!(
            PublicKey::from_bytes(&[0; 31]),
            Err(BadKey::WrongLength(31))
        );
        assert!(PublicKey::from_bytes(key(3).public_key().as_bytes()).is_ok());
    }

    #[test]
    fn sign_mls_signs_only_mls_sign_content() {
        let k = key(4);
        // SignContent { label: "MLS 1.0 LeafNodeTBS", content: [1, 2, 3] }.
        let mut ok = vec![19u8];
        ok.extend_from_slice(b"MLS 1.0 LeafNodeTBS");
        ok.extend_from_slice(&[3, 1, 2, 3]);
        let sig = k.sign_mls(&ok).expect("an MLS SignContent is signed");
        // Bare: it verifies over exactly the bytes, with the empty context.
        assert!(
            k.public_key()
                .verify(Context::C2SP_SIGNED_NOTE, &ok, &Signature(sig))
                .is_ok()
        );
        let refused = [
            &b""[..],
            &[8u8][..],                          // "MLS 1.0 " missing
            &b"\x08MLS 1.0"[..],                 // too short
            &b"backchannel/v1/envelope"[..],     // a Backchannel context
            &b"cosignature/v1\nfoo"[..],         // a C2SP cosignature
            &b"node.example/talks/00\n1\n"[..],  // a checkpoint
            &b"\x07MLS 1.0 "[..],                // length below the prefix
            &b"\x20MLS 1.0 x"[..],               // length past the end
            &b"\x40\x13MLS 1.0 LeafNodeTBS"[..], // two-byte length
            &b"\x13MLS 1.1 LeafNodeTBS"[..],     // other version
        ];
        for bytes in refused {
            assert!(
                matches!(k.sign_mls(bytes), Err(SignError::Refused(_))),
                "signed {bytes:?}"
            );
        }
    }

    #[test]
    fn batch_and_single_agree() {
        // Deterministic: the crate reads no OS randomness, not even in tests.
        let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(7);
        let keys: Vec<_> = (1..=5).map(key).collect();
        let mut ok = BatchVerifier::new();
        for (i, k) in keys.iter().enumerate() {
            let msg = [i as u8; 10];
            let sig = k.sign(A, &msg).expect("in-memory keys sign");
            ok.queue(&k.public_key(), A, &msg, &sig);
        }
        assert_eq!(ok.len(), 5);
        assert!(ok.verify(&mut rng).is_ok());

        let mut bad = BatchVerifier::new();
        let sig = keys[0].sign(A, b"x").expect("in-memory keys sign");
        bad.queue(&keys[0].public_key(), B, b"x", &sig);
        assert!(bad.verify(&mut rng).is_err());
    }

    /// `verify_many` gives each signature [`verify`]'s verdict, for sets of
    /// bad signatures from none to all, sparse and dense, at every place a
    /// split can put them.
    #[test]
    fn verify_many_gives_each_signature_its_own_verdict() {
        let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(9);
        let keys: Vec<_> = (1..=7).map(key).collect();
        let n = 100;
        let messages: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 1 + i % 13]).collect();
        let publics: Vec<PublicKey> = keys.iter().map(|k| k.public_key()).collect();
        let good_sigs: Vec<Signature> = (0..n)
            .map(|i| {
                keys[i % keys.len()]
                    .sign(A, &messages[i])
                    .expect("in-memory keys sign")
            })
            .collect();
        let check = |bad: &[usize], rng: &mut rand_chacha::ChaCha20Rng| {
            // A bad signature: a good one of another message.
            let sigs: Vec<Signature> = (0..n)
                .map(|i| {
                    if bad.contains(&i) {
                        good_sigs[(i + 1) % n]
                    } else {
                        good_sigs[i]
                    }
                })
                .collect();
            let items: Vec<ToVerify<'_>> = (0..n)
                .map(|i| ToVerify {
                    key: &publics[i % keys.len()],
                    context: A,
                    message: &messages[i],
                    signature: &sigs[i],
                })
                .collect();
            let alone: Vec<_> = items
                .iter()
                .map(|i| verify(i.key, i.context, i.message, i.signature))
                .collect();
            assert_eq!(verify_many(&items, rng), alone, "bad {bad:?}");
            assert_eq!(
                alone.iter().filter(|v| v.is_err()).count(),
                bad.len(),
                "bad {bad:?}"
            );
        };
        check(&[], &mut rng);
        for one in [0, 1, 7, 8, 49, 50, 51, 98, 99] {
            check(&[one], &mut rng);
        }
        check(&[3, 77], &mut rng);
        check(&[10, 11, 12, 60, 61], &mut rng);
        check(&(0..n).step_by(3).collect::<Vec<_>>(), &mut rng);
        check(&(0..n).collect::<Vec<_>>(), &mut rng);
        assert!(verify_many(&[], &mut rng).is_empty());
    }
}
