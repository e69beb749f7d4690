//! What the node may read of an MLS message: RFC 9420's public framing.

use backchannel_codec::{RoomId, TalksId};
use openmls::prelude::{
    ContentType, MlsMessageBodyIn, MlsMessageIn, ProtocolMessage, tls_codec::Deserialize,
};
use thiserror::Error;

use crate::{CIPHERSUITE, split_group_id};

/// The MLS 1.0 protocol version on the wire.
const MLS10: u16 = 1;

/// What the node may read of one MLS message (RFC 9420 public framing
/// only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// A `PrivateMessage` of content type application.
    Application {
        /// The talks of the group.
        talks: TalksId,
        /// The room of the group.
        room: RoomId,
        /// The epoch it was encrypted in.
        epoch: u64,
        /// The MLS authenticated data (in Backchannel: the commitment).
        authenticated_data: Vec<u8>,
    },
    /// A `PublicMessage` commit, by a member or an external joiner.
    Commit {
        /// The talks of the group.
        talks: TalksId,
        /// The room of the group.
        room: RoomId,
        /// The epoch it commits from.
        epoch: u64,
    },
    /// A `PublicMessage` proposal.
    Proposal {
        /// The talks of the group.
        talks: TalksId,
        /// The room of the group.
        room: RoomId,
        /// The epoch it proposes in.
        epoch: u64,
    },
    /// A GroupInfo.
    GroupInfo {
        /// The talks of the group.
        talks: TalksId,
        /// The room of the group.
        room: RoomId,
        /// The epoch it describes.
        epoch: u64,
    },
    /// A Welcome.
    Welcome {
        /// The `KeyPackageRef`s its `EncryptedGroupSecrets` are for.
        key_packages: Vec<Vec<u8>>,
    },
    /// A KeyPackage.
    KeyPackage,
}

/// Why bytes are not an acceptable MLS message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FramingError {
    /// The bytes do not decode as an MLS message.
    #[error("not an MLS message: {0}")]
    Decode(String),
    /// Bytes remained after the message.
    #[error("{0} trailing bytes after the MLS message")]
    TrailingBytes(usize),
    /// Not MLS 1.0.
    #[error("MLS protocol version {0:#06x}, not MLS 1.0")]
    WrongVersion(u16),
    /// A ciphersuite other than [`CIPHERSUITE`].
    #[error("ciphersuite {0:#06x} is not this crate's")]
    WrongCiphersuite(u16),
    /// A `PrivateMessage` that is not an application message (handshakes
    /// must be public so the node can validate them).
    #[error("an encrypted handshake message (handshakes must be PublicMessages)")]
    PrivateHandshake,
    /// A `PublicMessage` application message (application messages must be
    /// encrypted).
    #[error("an unencrypted application message")]
    PublicApplication,
    /// The group id is not 32 bytes (talks ‖ room).
    #[error("group id of {0} bytes, not talks ‖ room (32)")]
    BadGroupId(usize),
    /// A wire format this crate does not accept.
    #[error("unsupported MLS wire format")]
    UnsupportedWireFormat,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn ids(group_id: &[u8]) -> Result<(TalksId, RoomId), FramingError> {
    split_group_id(group_id).ok_or(FramingError::BadGroupId(group_id.len()))
}

/// Decodes an MLS message strictly (MLS 1.0, no trailing bytes).
pub(crate) fn decode(message: &[u8]) -> Result<MlsMessageIn, FramingError> {
    let version =
        u16_at(message, 0).ok_or_else(|| FramingError::Decode("shorter than a header".into()))?;
    if version != MLS10 {
        return Err(FramingError::WrongVersion(version));
    }
    // The ciphersuite is visible, before decoding, in a Welcome (right after
    // the 4-byte header), a GroupInfo (its group context's second field) and
    // a KeyPackage (its second field).
    let suite_at = match u16_at(message, 2) {
        Some(3) => Some(4),
        Some(4) | Some(5) => Some(6),
        _ => None,
    };
    if let Some(at) = suite_at {
        let suite =
            u16_at(message, at).ok_or_else(|| FramingError::Decode("truncated message".into()))?;
        if suite != u16::from(CIPHERSUITE) {
            return Err(FramingError::WrongCiphersuite(suite));
        }
    }
    let mut rest = message;
    let decoded = MlsMessageIn::tls_deserialize(&mut rest)
        .map_err(|e| FramingError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FramingError::TrailingBytes(rest.len()));
    }
    Ok(decoded)
}

/// Decodes a handshake or application message into a [`ProtocolMessage`],
/// with [`read_framing`]'s rules.
pub(crate) fn protocol_message(message: &[u8]) -> Result<(Framing, ProtocolMessage), FramingError> {
    let framing = read_framing(message)?;
    match decode(message)?.extract() {
        MlsMessageBodyIn::PublicMessage(m) => Ok((framing, m.into())),
        MlsMessageBodyIn::PrivateMessage(m) => Ok((framing, m.into())),
        _ => Err(FramingError::UnsupportedWireFormat),
    }
}

/// Reads the public framing of an MLS message.
pub fn read_framing(message: &[u8]) -> Result<Framing, FramingError> {
    match decode(message)?.extract() {
        MlsMessageBodyIn::PrivateMessage(m) => {
            if m.content_type() != ContentType::Application {
                return Err(FramingError::PrivateHandshake);
            }
            let (talks, room) = ids(m.group_id().as_slice())?;
            Ok(Framing::Application {
                talks,
                room,
                epoch: m.epoch().as_u64(),
                authenticated_data: m.aad().to_vec(),
            })
        }
        MlsMessageBodyIn::PublicMessage(m) => {
            let (talks, room) = ids(m.group_id().as_slice())?;
            let epoch = m.epoch().as_u64();
            match m.content_type() {
                ContentType::Application => Err(FramingError::PublicApplication),
                ContentType::Commit => Ok(Framing::Commit { talks, room, epoch }),
                ContentType::Proposal => Ok(Framing::Proposal { talks, room, epoch }),
            }
        }
        MlsMessageBodyIn::GroupInfo(gi) => {
            if gi.ciphersuite() != CIPHERSUITE {
                return Err(FramingError::WrongCiphersuite(u16::from(gi.ciphersuite())));
            }
            let (talks, room) = ids(gi.group_id().as_slice())?;
            Ok(Framing::GroupInfo {
                talks,
                room,
                epoch: gi.epoch().as_u64(),
            })
        }
        MlsMessageBodyIn::Welcome(w) => {
            if w.ciphersuite() != CIPHERSUITE {
                return Err(FramingError::WrongCiphersuite(u16::from(w.ciphersuite())));
            }
            Ok(Framing::Welcome {
                key_packages: w
                    .secrets()
                    .iter()
                    .map(|s| s.new_member().as_slice().to_vec())
                    .collect(),
            })
        }
        MlsMessageBodyIn::KeyPackage(_) => Ok(Framing::KeyPackage),
        #[allow(unreachable_patterns)]
        _ => Err(FramingError::UnsupportedWireFormat),
    }
}
