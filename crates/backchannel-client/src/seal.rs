//! The one seam every body goes through: [`Seal::seal`] on send,
//! [`Seal::open`] on receive. Until rooms are MLS groups (the rooms issue
//! replaces what this seam does, nothing else), [`PlaintextSeal`] only pads:
//! **bodies are not yet encrypted**, and the node can read them.
//!
//! What is sealed is an application message:
//!
//! ```text
//! app     = version:u8 (=1) kind:u8 salt:[32] content:bytes
//! kind    = 1 statement (a canonical SignedStatement) | 2 talk (UTF-8 text)
//! header.commitment = Commitment::to_plaintext(salt, content)
//! ```
//!
//! so a statement can later be opened to an arbiter by its salt alone
//! (evidence bundles), and a receiver checks that what it opened is what
//! the signed header committed to.

use backchannel_codec::{DecodeError, Reader, RoomId, Writer};
use backchannel_statement::header::{BodyError, pad_body, unpad_body};
use backchannel_statement::{Commitment, Salt};
use thiserror::Error;

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
}

impl Content {
    fn kind(&self) -> u8 {
        match self {
            Content::Statement(_) => 1,
            Content::Talk(_) => 2,
        }
    }

    /// The bytes the commitment covers.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Content::Statement(b) => b,
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
    pub fn commitment(&self) -> Commitment {
        Commitment::to_plaintext(&self.salt, self.content.bytes())
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

/// Why a body could not be sealed or opened.
#[derive(Debug, Error)]
pub enum SealError {
    /// The content is larger than one envelope carries.
    #[error("the content is larger than {MAX_CONTENT} bytes; send it as a blob")]
    TooLarge,
    /// Padding failed.
    #[error("padding: {0}")]
    Body(#[from] BodyError),
    /// The opened bytes are not an application message.
    #[error("the body is not an application message: {0}")]
    Malformed(#[from] DecodeError),
    /// What was opened is not what the header committed to.
    #[error("the body does not open the header's commitment")]
    Commitment,
}

/// Seals bodies for a room and opens them.
pub trait Seal: Send + Sync {
    /// The padded body for `message` in `room`.
    fn seal(&self, room: RoomId, message: &AppMessage) -> Result<Vec<u8>, SealError>;

    /// The message in `body`, checked against the header's commitment.
    fn open(
        &self,
        room: RoomId,
        body: &[u8],
        commitment: &Commitment,
    ) -> Result<AppMessage, SealError>;
}

/// Until the rooms issue: padding only, no encryption.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlaintextSeal;

impl Seal for PlaintextSeal {
    fn seal(&self, _room: RoomId, message: &AppMessage) -> Result<Vec<u8>, SealError> {
        if message.content.bytes().len() > MAX_CONTENT {
            return Err(SealError::TooLarge);
        }
        Ok(pad_body(&message.to_bytes())?)
    }

    fn open(
        &self,
        _room: RoomId,
        body: &[u8],
        commitment: &Commitment,
    ) -> Result<AppMessage, SealError> {
        let m = AppMessage::from_bytes(unpad_body(body)?)?;
        if m.commitment() != *commitment {
            return Err(SealError::Commitment);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open() {
        let room = RoomId([1; 16]);
        for content in [
            Content::Talk("Muscat, Tuesday".into()),
            Content::Statement(vec![1, 2, 3]),
        ] {
            let m = AppMessage {
                content,
                salt: Salt([9; 32]),
            };
            let body = PlaintextSeal.seal(room, &m).expect("seals");
            assert!(backchannel_statement::header::BODY_BUCKETS.contains(&(body.len() as u32)));
            assert_eq!(
                PlaintextSeal
                    .open(room, &body, &m.commitment())
                    .expect("opens"),
                m
            );
            // Another commitment: refused.
            let other = Commitment([0; 32]);
            assert!(matches!(
                PlaintextSeal.open(room, &body, &other),
                Err(SealError::Commitment)
            ));
        }
        let bad = pad_body(&[1, 7]).expect("pads");
        assert!(
            PlaintextSeal
                .open(room, &bad, &Commitment([0; 32]))
                .is_err()
        );
    }
}
