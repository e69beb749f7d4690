//! The canonical binary encoding of Backchannel.
//!
//! Everything that is signed or hashed is encoded with these primitives, and
//! `docs/formats.md` (§ "Primitive encoding") is their specification:
//!
//! - integers are fixed-width big-endian (`u8`, `u16`, `u32`, `u64`);
//! - a boolean is one byte, `0x00` or `0x01`; anything else is rejected;
//! - fixed-size byte strings (ids, hashes, keys, signatures) are written raw;
//! - variable byte strings are a `u32` length followed by the bytes;
//! - text is a variable byte string holding UTF-8;
//! - a list is a `u32` count followed by its items;
//! - an optional value is a presence byte (`0x00` absent, `0x01` present)
//!   followed, if present, by the value.
//!
//! There is exactly one encoding of every value: decoders reject unknown
//! tags, non-canonical booleans and presence bytes, trailing bytes, and
//! lengths past the end of the input (checked before anything is
//! allocated, so a hostile length cannot make the decoder allocate).
//!
//! Features: encoding and strict decoding. Non-features: no IO, no
//! self-description, no schema evolution inside a version (a new format
//! version is a new frame, and later issues add payload types, never fields).

mod ids;

pub use ids::{PartyId, PrincipalId, RoomId, StatementId, TalksId};
use thiserror::Error;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended before `field` was complete.
    #[error("input ended while reading {field}")]
    UnexpectedEnd {
        /// The field being read.
        field: &'static str,
    },
    /// Bytes remained after the value was complete.
    #[error("{count} trailing bytes after the value")]
    TrailingBytes {
        /// How many bytes were left over.
        count: usize,
    },
    /// A tag, version or flag byte had a value this version does not define.
    #[error("{field} has an unknown value {value}")]
    UnknownValue {
        /// The field being read.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// A length or count exceeded the limit of its field.
    #[error("{field} is {len} long, more than its limit of {max}")]
    TooLong {
        /// The field being read.
        field: &'static str,
        /// The length found.
        len: u64,
        /// The field's limit.
        max: u64,
    },
    /// Text was not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    BadUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// A value decoded but broke a rule of its type (e.g. a key of small order,
    /// list items out of canonical order).
    #[error("{field} is invalid: {reason}")]
    Invalid {
        /// The field being read.
        field: &'static str,
        /// What rule it broke.
        reason: &'static str,
    },
}

/// Appends canonical encodings to a buffer.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// The bytes written so far, borrowed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Writes one byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Writes a big-endian `u16`.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Writes a big-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Writes a big-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Writes a boolean as `0x00` or `0x01`.
    pub fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }

    /// Writes bytes of a size fixed by the format, with no length.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Writes a `u32` length then the bytes.
    ///
    /// Every variable field has a limit far below 4 GiB, enforced by the
    /// types that own it, so the length always fits; `u32::MAX` is written if
    /// a caller breaks that rule, which no decoder will accept.
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.buf.extend_from_slice(bytes);
    }

    /// Writes text as a `u32` length then its UTF-8 bytes.
    pub fn text(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// Writes a `u32` list count (or byte length).
    pub fn len(&mut self, len: usize) {
        self.u32(u32::try_from(len).unwrap_or(u32::MAX));
    }

    /// Writes a list: its count, then each item.
    pub fn list<T: Encode>(&mut self, items: &[T]) {
        self.len(items.len());
        for item in items {
            item.encode(self);
        }
    }

    /// Writes an optional value: a presence byte, then the value if present.
    pub fn option<T: Encode>(&mut self, v: Option<&T>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                v.encode(self);
            }
        }
    }
}

/// Reads canonical encodings from a byte slice, strictly.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Self { input }
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.input.len()
    }

    /// Fails unless every byte has been read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                count: self.input.len(),
            })
        }
    }

    /// Takes `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.input.len() {
            return Err(DecodeError::UnexpectedEnd { field });
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Ok(head)
    }

    /// Takes an array of `N` bytes.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Reads a format version byte and fails unless it is `expected`.
    pub fn version(&mut self, field: &'static str, expected: u8) -> Result<(), DecodeError> {
        match self.u8(field)? {
            v if v == expected => Ok(()),
            v => Err(DecodeError::UnknownValue {
                field,
                value: u64::from(v),
            }),
        }
    }

    /// Reads a big-endian `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Reads a boolean; only `0x00` and `0x01` are accepted.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::UnknownValue {
                field,
                value: u64::from(v),
            }),
        }
    }

    /// Reads a `u32` length and checks it against `max` and against the
    /// bytes left (each item takes at least `min_item_len` bytes), so no
    /// caller allocates for a length the input cannot hold.
    pub fn len(
        &mut self,
        field: &'static str,
        max: usize,
        min_item_len: usize,
    ) -> Result<usize, DecodeError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(DecodeError::TooLong {
                field,
                len: len as u64,
                max: max as u64,
            });
        }
        if len.saturating_mul(min_item_len) > self.input.len() {
            return Err(DecodeError::UnexpectedEnd { field });
        }
        Ok(len)
    }

    /// Reads a `u32`-length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.len(field, max, 1)?;
        self.take(len, field)
    }

    /// Reads length-prefixed UTF-8 text of at most `max` bytes.
    pub fn text(&mut self, field: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let bytes = self.bytes(field, max)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::BadUtf8 { field })
    }

    /// Reads a list of at most `max` items.
    pub fn list<T: Decode>(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<Vec<T>, DecodeError> {
        let len = self.len(field, max, T::MIN_LEN.max(1))?;
        let mut out = Vec::with_capacity(len);
        for _ in 0..len {
            out.push(T::decode(self)?);
        }
        Ok(out)
    }

    /// Reads an optional value.
    pub fn option<T: Decode>(&mut self, field: &'static str) -> Result<Option<T>, DecodeError> {
        if self.bool(field)? {
            Ok(Some(T::decode(self)?))
        } else {
            Ok(None)
        }
    }
}

/// A type with a canonical encoding.
pub trait Encode {
    /// Appends the canonical encoding of `self`.
    fn encode(&self, w: &mut Writer);

    /// The canonical encoding of `self`.
    fn to_canonical_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.into_bytes()
    }
}

/// A type that can be strictly decoded from its canonical encoding.
pub trait Decode: Sized {
    /// The fewest bytes one encoded value takes (used to bound list counts
    /// before allocating).
    const MIN_LEN: usize;

    /// Reads one value.
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// Decodes exactly one value from `bytes`, rejecting trailing bytes.
    fn from_canonical_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = Self::decode(&mut r)?;
        r.finish()?;
        Ok(v)
    }
}

impl<const N: usize> Encode for [u8; N] {
    fn encode(&self, w: &mut Writer) {
        w.raw(self);
    }
}

impl<const N: usize> Decode for [u8; N] {
    const MIN_LEN: usize = N;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.array("fixed bytes")
    }
}

impl Encode for u64 {
    fn encode(&self, w: &mut Writer) {
        w.u64(*self);
    }
}

impl Decode for u64 {
    const MIN_LEN: usize = 8;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.u64("u64")
    }
}

/// Fails with [`DecodeError::Invalid`] unless `items` is strictly increasing
/// by `key`: the canonical order of sets (no duplicates, one order).
pub fn check_strictly_sorted<T, K: Ord>(
    items: &[T],
    field: &'static str,
    key: impl Fn(&T) -> K,
) -> Result<(), DecodeError> {
    for pair in items.windows(2) {
        if key(&pair[0]) >= key(&pair[1]) {
            return Err(DecodeError::Invalid {
                field,
                reason: "items must be sorted and unique",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_primitives() {
        let mut w = Writer::new();
        w.u8(7);
        w.u16(0x0102);
        w.u32(0x0304_0506);
        w.u64(0x0708_090a_0b0c_0d0e);
        w.bool(true);
        w.bytes(b"abc");
        w.text("ي");
        let bytes = w.into_bytes();
        assert_eq!(
            bytes,
            [
                7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 1, 0, 0, 0, 3, b'a', b'b', b'c',
                0, 0, 0, 2, 0xd9, 0x8a
            ]
        );
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a"), Ok(7));
        assert_eq!(r.u16("b"), Ok(0x0102));
        assert_eq!(r.u32("c"), Ok(0x0304_0506));
        assert_eq!(r.u64("d"), Ok(0x0708_090a_0b0c_0d0e));
        assert_eq!(r.bool("e"), Ok(true));
        assert_eq!(r.bytes("f", 3), Ok(&b"abc"[..]));
        assert_eq!(r.text("g", 2), Ok("ي"));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn rejects_what_is_not_canonical() {
        assert!(matches!(
            Reader::new(&[2]).bool("flag"),
            Err(DecodeError::UnknownValue { value: 2, .. })
        ));
        // A length beyond the limit, and one beyond the input.
        assert!(matches!(
            Reader::new(&[0, 0, 0, 4, 1, 2, 3, 4]).bytes("b", 3),
            Err(DecodeError::TooLong { .. })
        ));
        assert!(matches!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff]).bytes("b", usize::MAX),
            Err(DecodeError::UnexpectedEnd { .. })
        ));
        assert!(matches!(
            Reader::new(&[0, 0, 0, 1, 0xff]).text("t", 9),
            Err(DecodeError::BadUtf8 { .. })
        ));
        assert!(matches!(
            <[u8; 2]>::from_canonical_bytes(&[1, 2, 3]),
            Err(DecodeError::TrailingBytes { count: 1 })
        ));
        // A huge list count is refused before any allocation.
        assert!(matches!(
            Reader::new(&[0x00, 0xff, 0xff, 0xff]).list::<u64>("l", usize::MAX),
            Err(DecodeError::UnexpectedEnd { .. })
        ));
    }

    #[test]
    fn sorted_sets_are_checked() {
        assert!(check_strictly_sorted(&[1, 2, 3], "s", |x| *x).is_ok());
        assert!(check_strictly_sorted(&[1, 1], "s", |x| *x).is_err());
        assert!(check_strictly_sorted(&[2, 1], "s", |x| *x).is_err());
    }
}
