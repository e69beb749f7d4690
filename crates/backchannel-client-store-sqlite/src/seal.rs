//! Keys from the passphrase, sealed values and blinded keys.
//!
//! ```text
//! master       = scrypt(passphrase, salt[32], N = 2^log_n, r = 8, p = 1, 32 bytes)
//! value key    = SHA-256("backchannel/v1/client-store/value-key" ‖ master)
//! blinding key = SHA-256("backchannel/v1/client-store/blinding-key" ‖ master)
//! blinded key  = HMAC-SHA256(blinding key, ns tag ‖ key)
//! sealed value = nonce[24] ‖ XChaCha20-Poly1305(value key, nonce, value,
//!                                               ad = ns tag ‖ blinded key) ‖ tag[16]
//! key check    = nonce[24] ‖ XChaCha20-Poly1305(value key, nonce, "backchannel client store v1",
//!                                               ad = "backchannel/v1/client-store/key-check") ‖ tag[16]
//! ```
//!
//! The key check's associated data (37 bytes, starting `b`) can never equal
//! a value's (33 bytes, starting with a namespace tag), so neither opens as
//! the other.

use backchannel_client::store::Namespace;
use backchannel_crypto::{Context, Digest};
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Derives the key that seals values (and the key check) from the scrypt
/// output.
pub const VALUE_KEY_CONTEXT: Context = Context::new("backchannel/v1/client-store/value-key");
/// Derives the key that blinds keys from the scrypt output.
pub const BLINDING_KEY_CONTEXT: Context = Context::new("backchannel/v1/client-store/blinding-key");
/// The associated data of the key check.
pub const KEY_CHECK_CONTEXT: Context = Context::new("backchannel/v1/client-store/key-check");

/// The length of the random scrypt salt.
pub(crate) const SALT_LEN: usize = 32;
/// scrypt's block size parameter `r` (the value every implementation
/// defaults to; age uses it too).
const SCRYPT_R: u32 = 8;
/// scrypt's parallelism parameter `p`.
const SCRYPT_P: u32 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// The fixed plaintext of the key check.
const KEY_CHECK_PLAINTEXT: &[u8] = b"backchannel client store v1";

/// The derived keys. Both are zeroized when dropped: the AEAD zeroizes its
/// key itself (`chacha20poly1305` implements `ZeroizeOnDrop`), the blinding
/// key is held in [`Zeroizing`]. (Transient copies inside hash and MAC
/// states on the stack are not: best effort, as everywhere in Rust.)
pub(crate) struct Keys {
    value: XChaCha20Poly1305,
    /// The 32-byte blinding key zero-padded to SHA-256's 64-byte block,
    /// which HMAC does to any shorter key anyway (RFC 2104 §2): so the key
    /// has the type `Hmac::new` takes, and keying cannot fail.
    blinding: Zeroizing<[u8; 64]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// scrypt refused its parameters (only a work factor of 64 or more, which
/// callers never pass).
#[derive(Debug)]
pub(crate) struct DeriveError;

/// The OS gave no randomness, or a value is too long to seal (over 256 GiB).
#[derive(Debug)]
pub(crate) struct SealError;

/// Why the key check did not pass.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyCheckFailure {
    /// It does not open: a wrong passphrase (or a damaged salt or check).
    WrongPassphrase,
    /// It opens to something else (only a bug could write that).
    Corrupt,
}

impl Keys {
    /// Runs scrypt (seconds of CPU at the default work factor: call it off
    /// the async executor) and derives both keys.
    pub(crate) fn derive(
        passphrase: &SecretString,
        salt: &[u8; SALT_LEN],
        log_n: u8,
    ) -> Result<Self, DeriveError> {
        let params = scrypt::Params::new(log_n, SCRYPT_R, SCRYPT_P, 32).map_err(|_| DeriveError)?;
        let mut master = Zeroizing::new([0u8; 32]);
        scrypt::scrypt(
            passphrase.expose_secret().as_bytes(),
            salt,
            &params,
            &mut master[..],
        )
        .map_err(|_| DeriveError)?;
        let value_key = Zeroizing::new(Digest::with_context(VALUE_KEY_CONTEXT, &[&master[..]]).0);
        let mut blinding = Zeroizing::new([0u8; 64]);
        blinding[..32]
            .copy_from_slice(&Digest::with_context(BLINDING_KEY_CONTEXT, &[&master[..]]).0);
        Ok(Self {
            value: XChaCha20Poly1305::new((&*value_key).into()),
            blinding,
        })
    }

    /// The key as stored: HMAC-SHA256 of `ns tag ‖ key`, so the same key in
    /// two namespaces is two unrelated rows.
    pub(crate) fn blind(&self, ns: Namespace, key: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new((&*self.blinding).into());
        mac.update(&[ns.tag()]);
        mac.update(key);
        mac.finalize().into_bytes().into()
    }

    /// Seals `value` for the row (`ns`, `blinded`).
    pub(crate) fn seal_value(
        &self,
        ns: Namespace,
        blinded: &[u8; 32],
        value: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        self.seal(&value_aad(ns, blinded), value)
    }

    /// Opens the value stored in the row (`ns`, `blinded`); `None` if it
    /// was sealed for another row, altered or truncated.
    pub(crate) fn open_value(
        &self,
        ns: Namespace,
        blinded: &[u8; 32],
        sealed: &[u8],
    ) -> Option<Vec<u8>> {
        self.open(&value_aad(ns, blinded), sealed)
    }

    /// A fresh key check for the `meta` row.
    pub(crate) fn key_check(&self) -> Result<Vec<u8>, SealError> {
        self.seal(KEY_CHECK_CONTEXT.as_bytes(), KEY_CHECK_PLAINTEXT)
    }

    /// Whether these keys are the ones the key check was sealed under.
    pub(crate) fn verify_key_check(&self, stored: &[u8]) -> Result<(), KeyCheckFailure> {
        match self.open(KEY_CHECK_CONTEXT.as_bytes(), stored) {
            None => Err(KeyCheckFailure::WrongPassphrase),
            Some(p) if p == KEY_CHECK_PLAINTEXT => Ok(()),
            Some(_) => Err(KeyCheckFailure::Corrupt),
        }
    }

    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        // Random 192-bit nonces never repeat in practice (XChaCha20 is made
        // for them), so no counter needs to survive a crash.
        OsRng.try_fill_bytes(&mut nonce).map_err(|_| SealError)?;
        // One buffer, exactly sized: nonce ‖ plaintext (encrypted in place) ‖ tag.
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .value
            .encrypt_in_place_detached((&nonce).into(), aad, &mut out[NONCE_LEN..])
            .map_err(|_| SealError)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, rest) = sealed.split_first_chunk::<NONCE_LEN>()?;
        let (ciphertext, tag) = rest.split_last_chunk::<TAG_LEN>()?;
        let mut buf = ciphertext.to_vec();
        self.value
            .decrypt_in_place_detached(nonce.into(), aad, &mut buf, tag.into())
            .ok()?;
        Some(buf)
    }
}

/// A sealed value's associated data: `ns tag ‖ blinded key`, so a value
/// moved to another row no longer opens.
fn value_aad(ns: Namespace, blinded: &[u8; 32]) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[0] = ns.tag();
    aad[1..].copy_from_slice(blinded);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many bytes sealing adds to a value.
    const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

    fn keys(passphrase: &str) -> Keys {
        Keys::derive(&SecretString::from(passphrase), &[7; SALT_LEN], 4).unwrap()
    }

    #[test]
    fn values_open_only_in_their_row_under_their_keys() {
        let k = keys("correct horse");
        let a = k.blind(Namespace::Talks, b"a");
        let b = k.blind(Namespace::Talks, b"b");
        let sealed = k.seal_value(Namespace::Talks, &a, b"value").unwrap();
        assert_eq!(sealed.len(), b"value".len() + SEAL_OVERHEAD);
        assert_eq!(
            k.open_value(Namespace::Talks, &a, &sealed).as_deref(),
            Some(&b"value"[..])
        );
        assert_eq!(k.open_value(Namespace::Talks, &b, &sealed), None);
        assert_eq!(k.open_value(Namespace::Node, &a, &sealed), None);
        assert_eq!(
            keys("wrong").open_value(Namespace::Talks, &a, &sealed),
            None
        );
        assert_eq!(
            k.open_value(Namespace::Talks, &a, &sealed[..SEAL_OVERHEAD - 1]),
            None
        );
        // Two seals of one value differ (fresh nonces).
        assert_ne!(
            sealed,
            k.seal_value(Namespace::Talks, &a, b"value").unwrap()
        );
    }

    #[test]
    fn blinding_depends_on_namespace_key_and_passphrase() {
        let k = keys("correct horse");
        let x = k.blind(Namespace::Keys, b"k");
        assert_eq!(x, k.blind(Namespace::Keys, b"k"));
        assert_ne!(x, k.blind(Namespace::Node, b"k"));
        assert_ne!(x, k.blind(Namespace::Keys, b"k2"));
        assert_ne!(x, keys("other").blind(Namespace::Keys, b"k"));
    }

    #[test]
    fn blinding_is_hmac_sha256_under_the_unpadded_key() {
        // The zero padding is RFC 2104's own: keying with the 32-byte key
        // gives the same MAC.
        let k = keys("correct horse");
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&k.blinding[..32]).unwrap();
        mac.update(&[Namespace::Archive.tag()]);
        mac.update(b"key");
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(k.blind(Namespace::Archive, b"key"), expected);
    }

    #[test]
    fn key_check_tells_the_passphrase() {
        let check = keys("correct horse").key_check().unwrap();
        assert_eq!(keys("correct horse").verify_key_check(&check), Ok(()));
        assert_eq!(
            keys("wrong").verify_key_check(&check),
            Err(KeyCheckFailure::WrongPassphrase)
        );
    }
}
