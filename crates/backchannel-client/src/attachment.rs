//! Attachments: a file shared in a room is encrypted here under a fresh key
//! and stored on the node as an opaque blob; the key travels only inside
//! the room's MLS group, in an attachment message
//! ([`crate::seal::Content::Attachment`]).
//!
//! ```text
//! blob       = nonce[24] ‖ XChaCha20-Poly1305(key, nonce, aad, file)
//! aad        = "backchannel/v1/attachment" ‖ talks[16]
//! attachment = blob_hash[32] ‖ size:u64 (of the file) ‖ key[32] ‖ name (UTF-8, the rest)
//! ```
//!
//! The blob's address is the SHA-256 of the blob (what the node checks and
//! serves); the receiver re-hashes what it is served, then opens it with
//! the key from the attachment message and checks the file's size.

use backchannel_codec::{DecodeError, Reader, TalksId, Writer};
use backchannel_crypto::{Digest, sha256};
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use thiserror::Error;

/// The most bytes of an attachment's name.
pub const MAX_ATTACHMENT_NAME: usize = 255;

/// The AEAD's overhead on a blob: nonce and tag.
pub const BLOB_OVERHEAD: usize = 24 + 16;

/// What an attachment message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The blob's address: SHA-256 of the encrypted blob.
    pub blob: Digest,
    /// The file's size.
    pub size: u64,
    /// The key the blob is encrypted under.
    pub key: [u8; 32],
    /// The file's name (no control characters).
    pub name: String,
}

/// Why an attachment could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AttachmentError {
    /// The blob does not open under the message's key (altered, or another
    /// blob).
    #[error("the blob does not decrypt with the key its announcement carries")]
    Open,
    /// The decrypted file is not the announced size.
    #[error("the decrypted file is {got} bytes, not the {announced} its announcement says")]
    Size {
        /// What was announced.
        announced: u64,
        /// What it is.
        got: u64,
    },
    /// Encryption failed (a file too large for the AEAD).
    #[error("encrypting the file failed")]
    Seal,
}

fn aad(talks: TalksId) -> Vec<u8> {
    let mut a = b"backchannel/v1/attachment".to_vec();
    a.extend_from_slice(talks.as_bytes());
    a
}

impl Attachment {
    /// Encrypts `file` for `talks` under `key` with `nonce` (both fresh and
    /// random: the caller draws them); the blob to upload, and the
    /// attachment message naming it as `name`.
    pub fn seal(
        talks: TalksId,
        key: [u8; 32],
        nonce: [u8; 24],
        name: String,
        file: &[u8],
    ) -> Result<(Vec<u8>, Attachment), AttachmentError> {
        let cipher = XChaCha20Poly1305::new((&key).into());
        let ct = cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: file,
                    aad: &aad(talks),
                },
            )
            .map_err(|_| AttachmentError::Seal)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        let attachment = Attachment {
            blob: sha256(&blob),
            size: file.len() as u64,
            key,
            name,
        };
        Ok((blob, attachment))
    }

    /// Decrypts a blob served for this attachment (already re-hashed to
    /// [`Attachment::blob`] by the caller).
    pub fn open(&self, talks: TalksId, blob: &[u8]) -> Result<Vec<u8>, AttachmentError> {
        if blob.len() < BLOB_OVERHEAD {
            return Err(AttachmentError::Open);
        }
        let (nonce, ct) = blob.split_at(24);
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        let file = cipher
            .decrypt(
                nonce.into(),
                Payload {
                    msg: ct,
                    aad: &aad(talks),
                },
            )
            .map_err(|_| AttachmentError::Open)?;
        if file.len() as u64 != self.size {
            return Err(AttachmentError::Size {
                announced: self.size,
                got: file.len() as u64,
            });
        }
        Ok(file)
    }

    /// The canonical bytes (the content of an attachment message).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(&self.blob.0);
        w.u64(self.size);
        w.raw(&self.key);
        w.raw(self.name.as_bytes());
        w.into_bytes()
    }

    /// Parses the canonical bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let blob = Digest(r.array("blob hash")?);
        let size = r.u64("size")?;
        let key = r.array("key")?;
        let rest = r.take(r.remaining(), "name")?;
        let name = std::str::from_utf8(rest)
            .ok()
            .filter(|n| n.len() <= MAX_ATTACHMENT_NAME && !n.chars().any(char::is_control))
            .ok_or(DecodeError::Invalid {
                field: "attachment name",
                reason: "UTF-8 of at most 255 bytes with no control characters",
            })?
            .to_owned();
        Ok(Self {
            blob,
            size,
            key,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_sealed_file_opens_only_with_its_key_talks_and_bytes() {
        let talks = TalksId([1; 16]);
        let file = b"draft text of the exchange".to_vec();
        let (blob, a) =
            Attachment::seal(talks, [7; 32], [9; 24], "draft.txt".into(), &file).unwrap();
        assert_eq!(blob.len(), file.len() + BLOB_OVERHEAD);
        assert!(!blob.windows(5).any(|w| w == b"draft"));
        assert_eq!(a.blob, sha256(&blob));
        assert_eq!(Attachment::from_bytes(&a.to_bytes()).unwrap(), a);
        assert_eq!(a.open(talks, &blob).unwrap(), file);
        assert_eq!(a.open(TalksId([2; 16]), &blob), Err(AttachmentError::Open));
        let mut altered = blob.clone();
        altered[30] ^= 1;
        assert_eq!(a.open(talks, &altered), Err(AttachmentError::Open));
        let wrong_key = Attachment {
            key: [8; 32],
            ..a.clone()
        };
        assert_eq!(wrong_key.open(talks, &blob), Err(AttachmentError::Open));
        let wrong_size = Attachment {
            size: 3,
            ..a.clone()
        };
        assert!(matches!(
            wrong_size.open(talks, &blob),
            Err(AttachmentError::Size { .. })
        ));
        let mut bad = a.to_bytes();
        bad.push(b'\n');
        assert!(Attachment::from_bytes(&bad).is_err());
        assert!(Attachment::from_bytes(&[0; 10]).is_err());
    }
}
