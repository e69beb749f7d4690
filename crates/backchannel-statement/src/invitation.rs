//! Invitations: how a party's first key reaches the access list.
//!
//! The change rule ([`AccessList::apply`]) needs the designated signer of
//! every party a change touches, so it can never add a party that has no
//! key on the list yet. An [`Invitation`] is the one way in: the mediator's
//! designated signer (a key with both `FLAG_MEDIATOR` and
//! `FLAG_DESIGNATED_SIGNER`) signs, for one party id with no entry on the
//! list, the hash of a one-time token and an expiry. Whoever presents the
//! token before the expiry, on a connection authenticated by a key `K`,
//! enrols `K` as that party's talks authority ([`AccessList::enrol`]):
//! one entry (K, principal = the party id, party, no rooms,
//! `FLAG_DESIGNATED_SIGNER`). From then on that key co-signs every change
//! touching its party, under the ordinary rule.
//!
//! ```text
//! invitation = version:u8 (=1) talks:[16] party:[16] token_hash:[32]
//!              expires_at:u64 signer:[32] (KeyId) signature:[64]
//! signature  = Ed25519(signer, "backchannel/v1/invitation" ‖ the 73 bytes before signer)
//! token_hash = SHA-256(token)        (the token is 32 random bytes)
//! ```

use backchannel_codec::{Decode, DecodeError, Encode, PartyId, Reader, TalksId, Writer};
use backchannel_crypto::{Context, Digest, KeyId, PublicKey, SignError, Signature, Signer, sha256};
use thiserror::Error;

use crate::access_list::{
    AccessEntry, AccessList, AccessListError, FLAG_DESIGNATED_SIGNER, FLAG_MEDIATOR,
};

/// The invitation format version.
pub const INVITATION_VERSION: u8 = 1;

/// The signature context of an invitation.
pub const INVITATION_CONTEXT: Context = Context::new("backchannel/v1/invitation");

/// The encoded length of an invitation.
pub const INVITATION_LEN: usize = 1 + 16 + 16 + 32 + 8 + 32 + 64;

const SIGNED_LEN: usize = INVITATION_LEN - 32 - 64;

/// A one-time token (32 random bytes); only its hash is ever signed or
/// stored.
#[derive(Clone, PartialEq, Eq)]
pub struct InvitationToken(pub [u8; 32]);

impl std::fmt::Debug for InvitationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InvitationToken(..)")
    }
}

impl InvitationToken {
    /// The token's hash, as an invitation carries it.
    pub fn hash(&self) -> Digest {
        sha256(&self.0)
    }
}

/// The unsigned part of an invitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvitationFields {
    /// The talks.
    pub talks: TalksId,
    /// The party whose talks authority the redeemer becomes.
    pub party: PartyId,
    /// SHA-256 of the one-time token.
    pub token_hash: Digest,
    /// Unix ms after which the node refuses the token.
    pub expires_at: u64,
}

/// A signed invitation (signature not yet checked against any list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// What is signed.
    pub fields: InvitationFields,
    /// The signer's key id.
    pub signer: KeyId,
    /// The signature.
    pub signature: Signature,
}

/// Why an invitation could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvitationError {
    /// The invitation is for other talks.
    #[error("the invitation is for other talks")]
    OtherTalks,
    /// The signer is not a mediator's designated signer on the current list.
    #[error("the invitation must be signed by a mediator's designated signer on the access list")]
    NotByMediator,
    /// The signature does not verify.
    #[error("the invitation's signature does not verify")]
    BadSignature,
    /// The party already has a key on the list.
    #[error("the party already has keys on the access list; add keys with a signed change")]
    PartyExists,
    /// The redeeming key is already on the list.
    #[error("the key is already on the access list")]
    KeyExists,
    /// The resulting list is invalid (size, principal rules).
    #[error(transparent)]
    List(#[from] AccessListError),
}

impl InvitationFields {
    fn encode_unsigned(&self) -> [u8; SIGNED_LEN] {
        let mut w = Writer::with_capacity(SIGNED_LEN);
        w.u8(INVITATION_VERSION);
        self.talks.encode(&mut w);
        self.party.encode(&mut w);
        self.token_hash.encode(&mut w);
        w.u64(self.expires_at);
        let mut out = [0u8; SIGNED_LEN];
        out.copy_from_slice(w.as_bytes());
        out
    }

    /// Signs with the mediator's designated signer.
    pub fn sign(self, signer: &dyn Signer) -> Result<Invitation, SignError> {
        let signature = signer.sign(INVITATION_CONTEXT, &self.encode_unsigned())?;
        Ok(Invitation {
            fields: self,
            signer: signer.public_key().id(),
            signature,
        })
    }
}

impl Invitation {
    /// Checks that `list` is the invitation's talks' list and that the
    /// invitation is signed by a key on it with both `FLAG_MEDIATOR` and
    /// `FLAG_DESIGNATED_SIGNER`.
    pub fn verify(&self, list: &AccessList) -> Result<(), InvitationError> {
        if self.fields.talks != list.talks() {
            return Err(InvitationError::OtherTalks);
        }
        let entry = list
            .get(&self.signer)
            .filter(|e| e.has(FLAG_MEDIATOR) && e.has(FLAG_DESIGNATED_SIGNER))
            .ok_or(InvitationError::NotByMediator)?;
        entry
            .key()
            .verify(
                INVITATION_CONTEXT,
                &self.fields.encode_unsigned(),
                &self.signature,
            )
            .map_err(|_| InvitationError::BadSignature)
    }
}

impl AccessList {
    /// Enrols `key` through `invitation` (checked with
    /// [`Invitation::verify`]): the new list, one generation on, holds one
    /// more entry — `key` as the talks authority of the invitation's party
    /// (principal id = party id, no rooms, `FLAG_DESIGNATED_SIGNER`). The
    /// party must have no entry yet. Expiry and one-time use are the node's
    /// to check (they need its clock and storage). Nothing changes on error.
    pub fn enrol(
        &self,
        invitation: &Invitation,
        key: PublicKey,
    ) -> Result<AccessList, InvitationError> {
        invitation.verify(self)?;
        let party = invitation.fields.party;
        if self.entries().iter().any(|e| e.party == party) {
            return Err(InvitationError::PartyExists);
        }
        if self.get(&key.id()).is_some() {
            return Err(InvitationError::KeyExists);
        }
        let principal = backchannel_codec::PrincipalId(party.0);
        let entry = AccessEntry::new(key, principal, party, Vec::new(), FLAG_DESIGNATED_SIGNER)?;
        let generation = self
            .generation()
            .checked_add(1)
            .ok_or(AccessListError::TooLarge("access-list generations"))?;
        let mut entries = self.entries().to_vec();
        entries.push(entry);
        Ok(AccessList::new(self.talks(), generation, entries)?)
    }
}

impl Encode for Invitation {
    fn encode(&self, w: &mut Writer) {
        w.raw(&self.fields.encode_unsigned());
        self.signer.encode(w);
        self.signature.encode(w);
    }
}

impl Decode for Invitation {
    const MIN_LEN: usize = INVITATION_LEN;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("invitation version", INVITATION_VERSION)?;
        let talks = TalksId::decode(r)?;
        let party = PartyId::decode(r)?;
        let token_hash = Digest::decode(r)?;
        let expires_at = r.u64("expires at")?;
        let signer = KeyId::decode(r)?;
        let signature = Signature::decode(r)?;
        Ok(Self {
            fields: InvitationFields {
                talks,
                party,
                token_hash,
                expires_at,
            },
            signer,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, key, labels::*};

    fn invitation(signer_label: u8, party: PartyId) -> (Invitation, AccessList) {
        let t = fixtures::talks();
        let list = t.roster.implied_access_list(t.talks).expect("list");
        let token = InvitationToken([7; 32]);
        let inv = InvitationFields {
            talks: t.talks,
            party,
            token_hash: token.hash(),
            expires_at: 1_000,
        }
        .sign(&key(signer_label))
        .expect("sign");
        (inv, list)
    }

    const NEW_PARTY: PartyId = PartyId([0xee; 16]);
    const NEW_KEY: u8 = 0x61;

    #[test]
    fn round_trip_and_length() {
        let (inv, _) = invitation(OMAN_TALKS, NEW_PARTY);
        let bytes = inv.to_canonical_bytes();
        assert_eq!(bytes.len(), INVITATION_LEN);
        assert_eq!(Invitation::from_canonical_bytes(&bytes), Ok(inv));
        let mut bad = bytes.clone();
        bad[0] = 2;
        assert!(Invitation::from_canonical_bytes(&bad).is_err());
        assert!(Invitation::from_canonical_bytes(&bytes[..INVITATION_LEN - 1]).is_err());
    }

    #[test]
    fn enrol_adds_one_talks_authority() {
        let (inv, list) = invitation(OMAN_TALKS, NEW_PARTY);
        let k = key(NEW_KEY).public_key();
        let next = list.enrol(&inv, k).expect("enrol");
        assert_eq!(next.generation(), list.generation() + 1);
        assert_eq!(next.entries().len(), list.entries().len() + 1);
        let e = next.get(&k.id()).expect("entry");
        assert_eq!(e.party, NEW_PARTY);
        assert_eq!(e.principal.0, NEW_PARTY.0);
        assert!(e.rooms().is_empty());
        assert!(e.has(FLAG_DESIGNATED_SIGNER));
        assert!(!e.has(crate::access_list::FLAG_DEVICE));
    }

    #[test]
    fn enrol_refusals() {
        let k = key(NEW_KEY).public_key();
        let check =
            |signer: u8, party: PartyId, key: PublicKey, edit: &dyn Fn(&mut Invitation), want| {
                let (mut inv, list) = invitation(signer, party);
                edit(&mut inv);
                assert_eq!(list.enrol(&inv, key), Err(want));
            };
        let same = |_: &mut Invitation| {};
        // Signed by a device, not the mediator's designated signer.
        check(
            OMAN_LEAD_DEVICE,
            NEW_PARTY,
            k,
            &same,
            InvitationError::NotByMediator,
        );
        // Signed by another party's designated signer.
        check(
            US_TALKS,
            NEW_PARTY,
            k,
            &same,
            InvitationError::NotByMediator,
        );
        // A party already on the list.
        check(
            OMAN_TALKS,
            fixtures::talks().us,
            k,
            &same,
            InvitationError::PartyExists,
        );
        // A key already on the list.
        let existing = key(US_HEAD_DEVICE).public_key();
        check(
            OMAN_TALKS,
            NEW_PARTY,
            existing,
            &same,
            InvitationError::KeyExists,
        );
        // A forged signature.
        check(
            OMAN_TALKS,
            NEW_PARTY,
            k,
            &|i| i.signature.0[0] ^= 1,
            InvitationError::BadSignature,
        );
        // Other talks.
        check(
            OMAN_TALKS,
            NEW_PARTY,
            k,
            &|i| i.fields.talks = TalksId([9; 16]),
            InvitationError::OtherTalks,
        );
    }
}
