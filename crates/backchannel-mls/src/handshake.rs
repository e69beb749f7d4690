//! What a handshake envelope's body carries (inside the body padding):
//!
//! ```text
//! handshake = 0x01 group_info                          create the room's group (epoch 0)
//!           | 0x02 commit_len:u32 commit group_info    a commit and its new epoch's GroupInfo
//! ```
//!
//! `group_info` and `commit` are serialized MLS messages (a GroupInfo, a
//! PublicMessage commit). The node cannot make a GroupInfo from its public
//! group, so every commit carries the one for the epoch it starts (RFC 9420
//! §12.4.3), which the node keeps for external joins.

use thiserror::Error;

/// A handshake envelope's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake<'a> {
    /// Creates the room's group: its epoch-0 GroupInfo.
    Create {
        /// The GroupInfo (an MLS message, with the ratchet tree).
        group_info: &'a [u8],
    },
    /// A commit with the GroupInfo of the epoch it starts.
    Commit {
        /// The commit (an MLS PublicMessage).
        commit: &'a [u8],
        /// The new epoch's GroupInfo (an MLS message).
        group_info: &'a [u8],
    },
}

/// Why a handshake's bytes do not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// Empty, or an unknown tag.
    #[error("a handshake starts with tag 1 (create) or 2 (commit)")]
    Tag,
    /// The commit length runs past the end.
    #[error("the commit length runs past the end of the handshake")]
    Length,
    /// A part is empty.
    #[error("a handshake part is empty")]
    Empty,
}

const CREATE: u8 = 1;
const COMMIT: u8 = 2;

impl<'a> Handshake<'a> {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Handshake::Create { group_info } => {
                let mut out = Vec::with_capacity(1 + group_info.len());
                out.push(CREATE);
                out.extend_from_slice(group_info);
                out
            }
            Handshake::Commit { commit, group_info } => {
                let mut out = Vec::with_capacity(5 + commit.len() + group_info.len());
                out.push(COMMIT);
                // A commit is far below 4 GiB (bodies are at most 1 MiB).
                out.extend_from_slice(&(commit.len() as u32).to_be_bytes());
                out.extend_from_slice(commit);
                out.extend_from_slice(group_info);
                out
            }
        }
    }

    /// Parses the bytes (the MLS messages inside are parsed by their users).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, HandshakeError> {
        let (&tag, rest) = bytes.split_first().ok_or(HandshakeError::Tag)?;
        match tag {
            CREATE if !rest.is_empty() => Ok(Handshake::Create { group_info: rest }),
            COMMIT => {
                if rest.len() < 4 {
                    return Err(HandshakeError::Length);
                }
                let (len, rest) = rest.split_at(4);
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                if len > rest.len() {
                    return Err(HandshakeError::Length);
                }
                let (commit, group_info) = rest.split_at(len);
                if commit.is_empty() || group_info.is_empty() {
                    return Err(HandshakeError::Empty);
                }
                Ok(Handshake::Commit { commit, group_info })
            }
            CREATE => Err(HandshakeError::Empty),
            _ => Err(HandshakeError::Tag),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_round_trip_and_bad_bytes_are_refused() {
        for h in [
            Handshake::Create { group_info: b"gi" },
            Handshake::Commit {
                commit: b"c",
                group_info: b"gi",
            },
        ] {
            assert_eq!(Handshake::parse(&h.encode()), Ok(h));
        }
        for (bytes, want) in [
            (&b""[..], HandshakeError::Tag),
            (b"\x03x", HandshakeError::Tag),
            (b"\x01", HandshakeError::Empty),
            (b"\x02\x00\x00", HandshakeError::Length),
            (b"\x02\x00\x00\x00\x05abc", HandshakeError::Length),
            (b"\x02\x00\x00\x00\x00gi", HandshakeError::Empty),
            (b"\x02\x00\x00\x00\x01c", HandshakeError::Empty),
        ] {
            assert_eq!(Handshake::parse(bytes), Err(want), "{bytes:?}");
        }
    }
}
