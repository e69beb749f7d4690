//! The application message: what a room's MLS group encrypts
//! (`backchannel_mls::Member::encrypt`, with the header's commitment as the
//! MLS authenticated data) and what every recipient checks against that
//! commitment after decrypting.
//!
//! ```text
//! app     = version:u8 (=1) kind:u8 salt:[32] content:bytes
//! kind    = 1 statement (a canonical SignedStatement) | 2 talk (UTF-8 text)
//!         | 3 copy (statements posted before newcomers joined, see crate::rooms)
//!         | 4 attachment (an encrypted blob's address, size, key, name: crate::attachment)
//!         | 5 handover (one part of a history bundle sealed to a successor's devices: crate::handover)
//! header.commitment = Commitment::to_plaintext(salt, content)             statements
//!                   = Commitment::to_plaintext(salt, 0xff ‖ kind ‖ content)  every other kind
//! ```
//!
//! so a statement can later be opened to an arbiter by its salt alone
//! (evidence bundles), and a receiver checks that what it opened is what
//! the signed header committed to.

use backchannel_codec::{DecodeError, Reader, Writer};
use backchannel_statement::{Commitment, Salt};

/// The application message format version.
pub const APP_VERSION: u8 = 1;

/// The largest content one envelope carries (the largest body bucket less
/// the padding and application framing); larger content goes in a blob.
pub const MAX_CONTENT: usize = (1 << 20) - 64;

/// What an envelope carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A canonical signed statement.
    Statement(Vec<u8>),
    /// Talk: UTF-8 text.
    Talk(String),
    /// A copy of earlier statements of the room for devices that joined
    /// after them (`crate::rooms`).
    Copy(Vec<u8>),
    /// A file shared in the room: its encrypted blob's address, size, key
    /// and name ([`crate::attachment::Attachment`], canonical bytes).
    Attachment(Vec<u8>),
    /// One part of a handover bundle, sealed to the successor's devices
    /// ([`crate::handover::Part`], canonical bytes).
    Handover(Vec<u8>),
}

impl Content {
    fn kind(&self) -> u8 {
        match self {
            Content::Statement(_) => 1,
            Content::Talk(_) => 2,
            Content::Copy(_) => 3,
            Content::Attachment(_) => 4,
            Content::Handover(_) => 5,
        }
    }

    /// The bytes the commitment covers.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Content::Statement(b)
            | Content::Copy(b)
            | Content::Attachment(b)
            | Content::Handover(b) => b,
            Content::Talk(t) => t.as_bytes(),
        }
    }
}

/// An application message with its salt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMessage {
    /// The content.
    pub content: Content,
    /// The commitment salt.
    pub salt: Salt,
}

impl AppMessage {
    /// The commitment its header must carry.
    ///
    /// A statement's commitment opens to its canonical bytes alone (what
    /// evidence bundles open). Every other kind commits to `0xff ‖ kind ‖
    /// content`: a statement's bytes begin with its version (1), never
    /// 0xff, so no talk, copy or attachment can share a statement's
    /// commitment, and none shares another kind's.
    pub fn commitment(&self) -> Commitment {
        match &self.content {
            Content::Statement(bytes) => Commitment::to_plaintext(&self.salt, bytes),
            other => {
                let mut b = Vec::with_capacity(2 + other.bytes().len());
                b.extend_from_slice(&[0xff, other.kind()]);
                b.extend_from_slice(other.bytes());
                Commitment::to_plaintext(&self.salt, &b)
            }
        }
    }

    /// The canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(APP_VERSION);
        w.u8(self.content.kind());
        w.raw(&self.salt.0);
        w.raw(self.content.bytes());
        w.into_bytes()
    }

    /// Parses the canonical bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("application message version", APP_VERSION)?;
        let kind = r.u8("application message kind")?;
        let salt = Salt(r.array("salt")?);
        let rest = r.take(r.remaining(), "content")?;
        let content = match kind {
            1 => Content::Statement(rest.to_vec()),
            2 => Content::Talk(
                std::str::from_utf8(rest)
                    .map_err(|_| DecodeError::Invalid {
                        field: "talk",
                        reason: "not UTF-8",
                    })?
                    .to_owned(),
            ),
            3 => Content::Copy(rest.to_vec()),
            4 => {
                crate::attachment::Attachment::from_bytes(rest)?;
                Content::Attachment(rest.to_vec())
            }
            5 => {
                crate::handover::Part::from_bytes(rest)?;
                Content::Handover(rest.to_vec())
            }
            k => {
                return Err(DecodeError::UnknownValue {
                    field: "application message kind",
                    value: u64::from(k),
                });
            }
        };
        Ok(Self { content, salt })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_messages_round_trip_and_bad_bytes_are_refused() {
        for content in [
            Content::Talk("Muscat, Tuesday".into()),
            Content::Statement(vec![1, 2, 3]),
            Content::Copy(vec![0, 0, 0, 0]),
        ] {
            let m = AppMessage {
                content,
                salt: Salt([9; 32]),
            };
            assert_eq!(AppMessage::from_bytes(&m.to_bytes()).expect("parses"), m);
        }
        for bad in [
            &b""[..],
            &[2, 1][..],
            &[1, 9, 0][..],
            &{
                let mut b = vec![1, 2];
                b.extend([0; 32]);
                b.extend([0xff, 0xfe]);
                b
            }[..],
        ] {
            assert!(AppMessage::from_bytes(bad).is_err(), "{bad:?}");
        }
    }
}
