//! History handed over to a successor: a member that hands the history of
//! rooms it holds to another member of its party (or to its own new
//! device) sends the successor an encrypted bundle and states, in the
//! record room, who shared which range of which rooms, bound to the bundle
//! by its SHA-256.
//!
//! Layout (`docs/formats.md` § 5, History shared):
//!
//! ```text
//! history-shared = to:PrincipalId rooms:list<RoomId> until:u64 bundle:[32]
//! ```
//!
//! `rooms`: 1 to [`MAX_ROOMS`] room ids, strictly sorted (so unique).
//! `until`: the bundle covers the rooms' log positions strictly below it;
//! at least 1. `bundle`: the bundle's id (SHA-256 of its domain-separated plaintext, `docs/formats.md` §7). Whether the
//! author may hand history over, to whom, of which rooms and up to where is
//! decided by replay in `backchannel-core`.

use backchannel_codec::{Decode, DecodeError, Encode, PrincipalId, Reader, RoomId, Writer};
use backchannel_crypto::Digest;
use thiserror::Error;

use crate::roster::MAX_ROOMS;

/// Why a history share was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HistoryError {
    /// No room is named.
    #[error("a history share names at least one room")]
    NoRooms,
    /// More than [`MAX_ROOMS`] rooms.
    #[error("a history share names at most {MAX_ROOMS} rooms")]
    TooManyRooms,
    /// The rooms are not strictly sorted (unsorted, or a room twice).
    #[error("the rooms of a history share must be sorted and unique")]
    RoomsUnsorted,
    /// `until` is 0: the bundle would cover nothing.
    #[error("a history share covers log positions below `until`, which must be at least 1")]
    EmptyRange,
}

/// A member's statement that it handed the history of `rooms` below log
/// position `until` over to `to`, in the bundle whose plaintext hashes to
/// `bundle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryShared {
    /// The successor: a member of the author's party, or the author itself
    /// (its own new device).
    pub to: PrincipalId,
    /// The rooms; 1 to [`MAX_ROOMS`], strictly sorted.
    rooms: Vec<RoomId>,
    /// Log positions covered: those strictly below it; at least 1.
    until: u64,
    /// the bundle's id (SHA-256 of its domain-separated plaintext, `docs/formats.md` §7).
    pub bundle: Digest,
}

impl HistoryShared {
    /// A history share. Sorts nothing: `rooms` must already be strictly
    /// sorted, 1 to [`MAX_ROOMS`] of them, and `until` at least 1.
    pub fn new(
        to: PrincipalId,
        rooms: Vec<RoomId>,
        until: u64,
        bundle: Digest,
    ) -> Result<Self, HistoryError> {
        if rooms.is_empty() {
            return Err(HistoryError::NoRooms);
        }
        if rooms.len() > MAX_ROOMS {
            return Err(HistoryError::TooManyRooms);
        }
        if rooms.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(HistoryError::RoomsUnsorted);
        }
        if until == 0 {
            return Err(HistoryError::EmptyRange);
        }
        Ok(Self {
            to,
            rooms,
            until,
            bundle,
        })
    }

    /// The rooms whose history is handed over, strictly sorted.
    pub fn rooms(&self) -> &[RoomId] {
        &self.rooms
    }

    /// The bundle covers the rooms' log positions strictly below this.
    pub fn until(&self) -> u64 {
        self.until
    }
}

impl Encode for HistoryShared {
    fn encode(&self, w: &mut Writer) {
        self.to.encode(w);
        w.list(&self.rooms);
        w.u64(self.until);
        self.bundle.encode(w);
    }
}

impl Decode for HistoryShared {
    /// One room: 16 + (4 + 16) + 8 + 32.
    const MIN_LEN: usize = 16 + 4 + 16 + 8 + 32;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let to = PrincipalId::decode(r)?;
        let rooms: Vec<RoomId> = r.list("history rooms", MAX_ROOMS)?;
        let until = r.u64("until")?;
        let bundle = Digest::decode(r)?;
        Self::new(to, rooms, until, bundle).map_err(|e| match e {
            HistoryError::NoRooms => DecodeError::Invalid {
                field: "history rooms",
                reason: "at least one room",
            },
            HistoryError::TooManyRooms => DecodeError::Invalid {
                field: "history rooms",
                reason: "too many rooms",
            },
            HistoryError::RoomsUnsorted => DecodeError::Invalid {
                field: "history rooms",
                reason: "items must be sorted and unique",
            },
            HistoryError::EmptyRange => DecodeError::Invalid {
                field: "until",
                reason: "must be at least 1",
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(b: u8) -> RoomId {
        RoomId([b; 16])
    }

    #[test]
    fn the_constructor_refuses_what_the_decoder_refuses() {
        let to = PrincipalId([0xa4; 16]);
        let bundle = Digest([0x5b; 32]);
        let new = |rooms: Vec<RoomId>, until| HistoryShared::new(to, rooms, until, bundle);
        let ok = new(vec![room(1), room(2)], 9).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.rooms(), [room(1), room(2)]);
        assert_eq!(ok.until(), 9);
        assert_eq!(new(vec![], 9), Err(HistoryError::NoRooms));
        assert_eq!(
            new(vec![room(2), room(1)], 9),
            Err(HistoryError::RoomsUnsorted)
        );
        assert_eq!(
            new(vec![room(1), room(1)], 9),
            Err(HistoryError::RoomsUnsorted)
        );
        assert_eq!(new(vec![room(1)], 0), Err(HistoryError::EmptyRange));
        assert!(new(vec![room(1)], 1).is_ok());
        let many = |n: usize| {
            (0..n)
                .map(|i| {
                    let mut id = [0u8; 16];
                    id[14..].copy_from_slice(&(i as u16).to_be_bytes());
                    RoomId(id)
                })
                .collect::<Vec<_>>()
        };
        assert!(new(many(MAX_ROOMS), 1).is_ok());
        assert_eq!(new(many(MAX_ROOMS + 1), 1), Err(HistoryError::TooManyRooms));
    }

    #[test]
    fn it_encodes_as_documented_and_decodes_strictly() {
        let to = PrincipalId([0xa4; 16]);
        let share = HistoryShared::new(to, vec![room(1), room(3)], 0x0102, Digest([0x5b; 32]))
            .unwrap_or_else(|e| panic!("{e}"));
        let bytes = share.to_canonical_bytes();
        let mut want = vec![0xa4; 16];
        want.extend_from_slice(&2u32.to_be_bytes());
        want.extend_from_slice(&[1; 16]);
        want.extend_from_slice(&[3; 16]);
        want.extend_from_slice(&0x0102u64.to_be_bytes());
        want.extend_from_slice(&[0x5b; 32]);
        assert_eq!(bytes, want);
        assert_eq!(HistoryShared::from_canonical_bytes(&bytes), Ok(share));
        // Trailing bytes, truncation.
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            HistoryShared::from_canonical_bytes(&long),
            Err(DecodeError::TrailingBytes { .. })
        ));
        for n in 0..bytes.len() {
            assert!(HistoryShared::from_canonical_bytes(&bytes[..n]).is_err());
        }
        // Rooms swapped (unsorted), repeated, none; until 0.
        let encode = |rooms: &[RoomId], until: u64| {
            let mut w = Writer::new();
            to.encode(&mut w);
            w.list(rooms);
            w.u64(until);
            Digest([0x5b; 32]).encode(&mut w);
            w.into_bytes()
        };
        for (rooms, until, field) in [
            (&[room(3), room(1)][..], 5, "history rooms"),
            (&[room(1), room(1)][..], 5, "history rooms"),
            (&[][..], 5, "history rooms"),
            (&[room(1)][..], 0, "until"),
        ] {
            assert!(
                matches!(
                    HistoryShared::from_canonical_bytes(&encode(rooms, until)),
                    Err(DecodeError::Invalid { field: f, .. }) if f == field
                ),
                "{rooms:?} {until}"
            );
        }
        assert!(HistoryShared::from_canonical_bytes(&encode(&[room(1)], 1)).is_ok());
    }
}
