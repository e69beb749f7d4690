//! Leaf data: what the log commits to for each envelope.
//!
//! ```text
//! leaf data (97 bytes, big-endian, docs/formats.md § "Leaf data"):
//!   u8       format version = 0x01
//!   u64      seq              the envelope's sequence number = its leaf index
//!   u64      timestamp_ms     the node's clock when it sequenced the envelope (Unix ms)
//!   [u8;16]  room id
//!   [u8;32]  SHA-256(canonical envelope header)
//!   [u8;32]  SHA-256(envelope body)
//! leaf hash = SHA-256(0x00 ‖ leaf data)            (RFC 6962 §2.1)
//! ```

use backchannel_codec::{Decode, DecodeError, Encode, Reader, RoomId, Writer};
use backchannel_crypto::Digest;

use crate::from_tlog;

/// The only leaf format version defined.
pub const LEAF_FORMAT_VERSION: u8 = 1;

/// The length of encoded leaf data: 1 + 8 + 8 + 16 + 32 + 32.
pub const LEAF_DATA_LEN: usize = 97;

/// What the log stores for one envelope. The envelope's `seq` is its leaf
/// index, so a leaf at index `i` whose `seq` is not `i` is invalid (checked by
/// [`LeafData::check_index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeafData {
    /// The envelope's sequence number in its talks, which is its leaf index.
    pub seq: u64,
    /// The node's clock when it sequenced the envelope, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The room the envelope was posted to.
    pub room: RoomId,
    /// SHA-256 of the envelope's signed header (the 223 canonical bytes, signature included).
    pub header_hash: Digest,
    /// SHA-256 of the envelope's body.
    pub body_hash: Digest,
}

impl LeafData {
    /// The leaf hash, `SHA-256(0x00 ‖ leaf data)` (RFC 6962 §2.1).
    pub fn hash(&self) -> Digest {
        from_tlog(tlog_tiles::record_hash(&self.to_canonical_bytes()))
    }

    /// Fails unless this leaf may sit at leaf index `index` (seq = index).
    pub fn check_index(&self, index: u64) -> Result<(), DecodeError> {
        if self.seq == index {
            Ok(())
        } else {
            Err(DecodeError::Invalid {
                field: "leaf seq",
                reason: "seq differs from the leaf index",
            })
        }
    }
}

impl Encode for LeafData {
    fn encode(&self, w: &mut Writer) {
        w.u8(LEAF_FORMAT_VERSION);
        w.u64(self.seq);
        w.u64(self.timestamp_ms);
        self.room.encode(w);
        self.header_hash.encode(w);
        self.body_hash.encode(w);
    }
}

impl Decode for LeafData {
    const MIN_LEN: usize = LEAF_DATA_LEN;

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("leaf format version", LEAF_FORMAT_VERSION)?;
        Ok(Self {
            seq: r.u64("leaf seq")?,
            timestamp_ms: r.u64("leaf timestamp")?,
            room: RoomId::decode(r)?,
            header_hash: Digest::decode(r)?,
            body_hash: Digest::decode(r)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf() -> LeafData {
        LeafData {
            seq: 7,
            timestamp_ms: 1_700_000_000_000,
            room: RoomId([3; 16]),
            header_hash: Digest([4; 32]),
            body_hash: Digest([5; 32]),
        }
    }

    fn check(bytes: &[u8], want: Result<LeafData, &str>) {
        let got = LeafData::from_canonical_bytes(bytes);
        match (got, want) {
            (Ok(g), Ok(w)) => {
                assert_eq!(g, w);
                assert_eq!(g.to_canonical_bytes(), bytes);
            }
            (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{e} does not say {w}"),
            (g, w) => panic!("got {g:?}, want {w:?}"),
        }
    }

    #[test]
    fn leaf_data_is_fixed_and_strict() {
        let good = leaf().to_canonical_bytes();
        assert_eq!(good.len(), LEAF_DATA_LEN);
        check(&good, Ok(leaf()));
        let mut v2 = good.clone();
        v2[0] = 2;
        check(&v2, Err("unknown value 2"));
        check(&good[..96], Err("input ended"));
        let mut long = good.clone();
        long.push(0);
        check(&long, Err("trailing"));
        check(&[], Err("input ended"));
    }

    #[test]
    fn leaf_hash_is_rfc6962_leaf_hash() {
        let l = leaf();
        let mut pre = vec![0u8];
        pre.extend(l.to_canonical_bytes());
        assert_eq!(l.hash(), backchannel_crypto::sha256(&pre));
        assert!(l.check_index(7).is_ok());
        assert!(l.check_index(8).is_err());
    }
}
