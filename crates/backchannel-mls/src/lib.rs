//! MLS (RFC 9420) for Backchannel rooms, through OpenMLS.
//!
//! Every room of a talks is one MLS group. This crate is everything MLS in
//! Backchannel: what the node may read of a message ([`read_framing`]), the
//! node's public view of a room ([`PublicRoom`], validating each commit
//! before it is sequenced), key package checks for uploads
//! ([`check_key_package`]), and one device's member state in one talks
//! ([`Member`]: key packages, commits, joins, rejoins, encryption).
//!
//! # Invariants
//!
//! - **Sans-IO.** No network, files or clock reads here: time is a
//!   parameter (seconds since the Unix epoch). Randomness comes from the
//!   OpenMLS RustCrypto provider. (OpenMLS itself still compares key package
//!   lifetimes with the system clock when it validates a key package or a
//!   joined tree; see [`check_key_package`].)
//! - **Fixed suite and framing.** [`CIPHERSUITE`] only; handshakes are
//!   `PublicMessage`s the node can validate, application messages
//!   `PrivateMessage`s; Welcomes and GroupInfos carry the ratchet tree.
//! - **Group id = talks ‖ room** ([`group_id`]), 32 bytes.
//! - **Leaves are devices.** Every leaf's credential is a `BasicCredential`
//!   whose identity is the device's 32-byte Ed25519 key, and the leaf's
//!   signature key is that same key; a leaf breaking this is refused
//!   everywhere a leaf is checked, before the caller's `admits` is asked.
//!   The MLS signature key is the device key itself, signing through
//!   [`backchannel_crypto::SecretKey::sign_mls`], which signs only MLS
//!   `SignContent`s.
//! - **One body per bucket.** Application messages are padded inside MLS so
//!   that the serialized message is exactly `bucket - 4` bytes for the
//!   smallest envelope body bucket that fits.
//! - **No panics on peer input**; every operation that changes a member's
//!   state either completes or leaves the state as it was.

mod framing;
mod handshake;
mod hpke;
mod leaf;
mod member;
mod padding;
mod provider;
mod public;
mod storage;

use backchannel_codec::{RoomId, TalksId};
use openmls::prelude::Ciphersuite;

pub use framing::{Framing, FramingError, read_framing};
pub use handshake::{Handshake, HandshakeError};
pub use hpke::{HPKE_KEY_LEN, HpkeError, hpke_open, hpke_open_x25519, hpke_public_key, hpke_seal};
pub use leaf::LeafError;
pub use member::{DecryptError, Handled, Member, MemberError, Outgoing};
pub use padding::{max_plaintext, message_len};
pub use public::{KeyPackageInfo, PublicError, PublicRoom, Staged, check_key_package};

/// The one ciphersuite of Backchannel rooms.
pub const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;

/// How many past epochs a member keeps secrets for, so that an application
/// message built just before a commit and sequenced just after it still
/// decrypts. One: the node sequences each room in one order, so a message
/// can trail at most the commits that raced it.
pub const MAX_PAST_EPOCHS: usize = 1;

/// The MLS group id of a room: `talks[16] ‖ room[16]`.
pub fn group_id(talks: TalksId, room: RoomId) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(talks.as_bytes());
    id[16..].copy_from_slice(room.as_bytes());
    id
}

/// Splits a group id into talks and room; `None` unless it is 32 bytes.
pub(crate) fn split_group_id(id: &[u8]) -> Option<(TalksId, RoomId)> {
    if id.len() != 32 {
        return None;
    }
    let mut talks = [0u8; 16];
    let mut room = [0u8; 16];
    talks.copy_from_slice(&id[..16]);
    room.copy_from_slice(&id[16..]);
    Some((TalksId(talks), RoomId(room)))
}
