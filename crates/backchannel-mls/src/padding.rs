//! Application messages padded inside MLS to an envelope body bucket.
//!
//! The MLS application data is `len:u32 ‖ plaintext ‖ zeros`, sized so that
//! the serialized `MLSMessage` is exactly `bucket - 4` bytes, for the
//! smallest bucket of [`BODY_BUCKETS`] that fits (4 = the envelope body's own
//! `u32` length prefix). A `PrivateMessage` of [`crate::CIPHERSUITE`] with a
//! 32-byte group id and 32 bytes of authenticated data serializes as:
//!
//! | field | bytes |
//! | --- | ---: |
//! | version, wire format | 4 |
//! | group id `<V>` | 1 + 32 |
//! | epoch | 8 |
//! | content type | 1 |
//! | authenticated data `<V>` | 1 + 32 |
//! | encrypted sender data `<V>` (12 + 16-byte tag) | 1 + 28 |
//! | ciphertext `<V>` | `v(C)` + `C` |
//!
//! where `C = v(A) + A + (1 + 64) + 1 + 16`: the application data `<V>` of
//! `A` bytes, the Ed25519 signature `<V>`, one more byte OpenMLS 0.9.2
//! writes into every encrypted application content (measured: constant for
//! every length; MLS padding is off), and the AEAD tag; `v(n)` is the
//! length of the varint prefix of `n` (1, 2 or 4 bytes). The tests check
//! the result for every bucket and many lengths, and [`crate::Member::encrypt`]
//! refuses to return a message of any other length.

use backchannel_statement::header::BODY_BUCKETS;

/// The fixed part: header, group id, epoch, content type, authenticated
/// data and encrypted sender data.
const FIXED: usize = 4 + 33 + 8 + 1 + 33 + 29;
/// Signature `<V>`, OpenMLS's extra byte and the AEAD tag inside the
/// ciphertext.
const CONTENT_FIXED: usize = 1 + 64 + 1 + 16;
/// The inner length prefix.
const LEN_PREFIX: usize = 4;

fn varint_len(n: usize) -> usize {
    if n < 1 << 6 {
        1
    } else if n < 1 << 14 {
        2
    } else {
        4
    }
}

/// The serialized message length for `a` bytes of application data.
fn total(a: usize) -> usize {
    let c = varint_len(a) + a + CONTENT_FIXED;
    FIXED + varint_len(c) + c
}

/// The application data length whose message is exactly `target` bytes,
/// if one is.
fn inner_len(target: usize) -> Option<usize> {
    let mut a = target.checked_sub(FIXED + CONTENT_FIXED)?;
    while a > 0 && total(a) > target {
        a -= 1;
    }
    (total(a) == target).then_some(a)
}

/// For a plaintext of `len` bytes: the application data length and the
/// serialized message length (`bucket - 4`), or `None` if it fits no bucket.
pub(crate) fn sizes(len: usize) -> Option<(usize, usize)> {
    BODY_BUCKETS.iter().find_map(|&bucket| {
        let target = (bucket as usize).checked_sub(4)?;
        let a = inner_len(target)?;
        (len.checked_add(LEN_PREFIX)? <= a).then_some((a, target))
    })
}

/// The serialized length of the MLS application message that carries a
/// plaintext of `plaintext_len` bytes (always `bucket - 4` for the smallest
/// envelope body bucket that fits it), or `None` if it is longer than
/// [`max_plaintext`].
pub fn message_len(plaintext_len: usize) -> Option<usize> {
    sizes(plaintext_len).map(|(_, total)| total)
}

/// The longest plaintext one application message carries.
pub fn max_plaintext() -> usize {
    BODY_BUCKETS
        .iter()
        .filter_map(|&b| inner_len((b as usize).checked_sub(4)?))
        .max()
        .map_or(0, |a| a.saturating_sub(LEN_PREFIX))
}

/// `len:u32 ‖ plaintext ‖ zeros`, `a` bytes.
pub(crate) fn pad(plaintext: &[u8], a: usize) -> Option<Vec<u8>> {
    let len = u32::try_from(plaintext.len()).ok()?;
    let mut out = Vec::with_capacity(a);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(plaintext);
    if out.len() > a {
        return None;
    }
    out.resize(a, 0);
    Some(out)
}

/// The plaintext of application data made by [`pad`] for a message of
/// `message_len` bytes: exactly what `pad` makes, or `None`.
pub(crate) fn unpad(data: &[u8], message_len: usize) -> Option<Vec<u8>> {
    let prefix: [u8; 4] = data.get(..LEN_PREFIX)?.try_into().ok()?;
    let len = u32::from_be_bytes(prefix) as usize;
    let end = LEN_PREFIX.checked_add(len)?;
    let plaintext = data.get(LEN_PREFIX..end)?;
    let (a, total) = sizes(len)?;
    if a != data.len() || total != message_len {
        return None;
    }
    if data[end..].iter().any(|b| *b != 0) {
        return None;
    }
    Some(plaintext.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_is_reachable() {
        for &b in &BODY_BUCKETS {
            let target = b as usize - 4;
            let a = inner_len(target).expect("every bucket has an exact size");
            assert_eq!(total(a), target);
        }
        assert!(max_plaintext() > 1_048_000);
        assert_eq!(message_len(0), Some(1020));
        assert_eq!(message_len(max_plaintext()), Some((1 << 20) - 4));
        assert_eq!(message_len(max_plaintext() + 1), None);
    }

    #[test]
    fn unpad_accepts_only_what_pad_makes() {
        let (a, total) = sizes(5).expect("fits");
        let data = pad(b"hello", a).expect("fits");
        assert_eq!(unpad(&data, total).as_deref(), Some(&b"hello"[..]));
        let mut bad = data.clone();
        bad[a - 1] = 1;
        assert_eq!(unpad(&bad, total), None);
        assert_eq!(unpad(&data[..a - 1], total), None);
        assert_eq!(unpad(&data, total + 1), None);
        let mut long = data;
        long[0] = 0xff;
        assert_eq!(unpad(&long, total), None);
    }
}
