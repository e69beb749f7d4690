//! The fixed-size random identifiers every format uses.
//!
//! Each is 16 bytes drawn by its creator from a CSPRNG, encoded raw (no
//! length), and shown as 32 lower-case hex digits. They are opaque: the node
//! sees talks, room, party and principal ids, never names.

use crate::{Decode, DecodeError, Encode, Reader, Writer};

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// The id's bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// 32 lower-case hex digits.
            pub fn to_hex(&self) -> String {
                let mut s = String::with_capacity(32);
                for b in self.0 {
                    s.push_str(&format!("{b:02x}"));
                }
                s
            }

            /// Parses 32 hex digits (either case).
            pub fn from_hex(s: &str) -> Result<Self, DecodeError> {
                let bad = DecodeError::Invalid { field: $field, reason: "not 32 hex digits" };
                if s.len() != 32 || !s.is_ascii() {
                    return Err(bad);
                }
                let mut out = [0u8; 16];
                for (i, o) in out.iter_mut().enumerate() {
                    *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad.clone())?;
                }
                Ok(Self(out))
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl Encode for $name {
            fn encode(&self, w: &mut Writer) {
                w.raw(&self.0);
            }
        }

        impl Decode for $name {
            const MIN_LEN: usize = 16;
            fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(Self(r.array($field)?))
            }
        }
    };
}

define_id!(
    /// One negotiation ("talks"): one log, one roster, one set of per-talks keys.
    TalksId, "talks id"
);
define_id!(
    /// A room of a talks (one MLS group once rooms are encrypted).
    RoomId, "room id"
);
define_id!(
    /// A statement, chosen at random by its author; two statements with one
    /// id and different bytes are evidence of equivocation.
    StatementId, "statement id"
);
define_id!(
    /// A party (delegation), a mediator team, a monitor or an escrow agent,
    /// as the node sees it: opaque, and specific to one talks.
    PartyId, "party id"
);
define_id!(
    /// A member of a party (a person in a role), opaque and per talks.
    PrincipalId, "principal id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let id = TalksId([0xab; 16]);
        assert_eq!(id.to_hex(), "ab".repeat(16));
        assert_eq!(TalksId::from_hex(&id.to_hex()), Ok(id));
        assert!(TalksId::from_hex("ab").is_err());
        assert!(TalksId::from_hex(&"zz".repeat(16)).is_err());
        assert!(TalksId::from_hex(&"é".repeat(16)).is_err());
    }
}
