//! SHA-256 digests.

use backchannel_codec::{Decode, DecodeError, Encode, Reader, Writer};
use sha2::Digest as _;

use crate::Context;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// SHA-256(`context` ‖ `parts`…): the domain-separated hash used for
    /// commitments, key ids and the like.
    pub fn with_context(context: Context, parts: &[&[u8]]) -> Self {
        let mut h = Sha256Writer::new();
        h.update(context.as_bytes());
        for p in parts {
            h.update(p);
        }
        h.finish()
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl Encode for Digest {
    fn encode(&self, w: &mut Writer) {
        w.raw(&self.0);
    }
}

impl Decode for Digest {
    const MIN_LEN: usize = 32;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(r.array("digest")?))
    }
}

/// SHA-256 of `data`, with no context (for body hashes, header hashes and
/// anything the formats document hashes plainly).
pub fn sha256(data: &[u8]) -> Digest {
    Digest(sha2::Sha256::digest(data).into())
}

/// An incremental SHA-256.
#[derive(Clone, Default)]
pub struct Sha256Writer(sha2::Sha256);

impl Sha256Writer {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}
