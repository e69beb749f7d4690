//! Succession of a party's talks authority: the key that signs a party's
//! member certificates, revocations, acceptances and access-list changes
//! passes to a new key mid-talks (a head of delegation replaced).
//!
//! Two ways ([`PassedHow`]):
//! - **handed over**: the old holder is present; the statement's author is
//!   the party's current talks authority, and the new key signs the
//!   transfer too (proof of possession and consent);
//! - **re-appointed**: the old holder is gone; a mediator team's talks
//!   authority states the pass, with the new key's signature, a
//!   certification of the new key by the party's long-term authority (the
//!   roster's `authority_key`), and the endorsements the ground rules'
//!   change rule asks for, by the current talks authorities of the other
//!   parties.
//!
//! Layout (`docs/formats.md` § 5, Authority passed):
//!
//! ```text
//! authority-passed = party:[16] old_key:[32] new_key:[32] how:u8
//!                    new_key_signature:[64] authority_certification:option<[64]>
//!                    endorsements:list<(key_id:[32] signature:[64])>
//! transfer         = talks:[16] party:[16] old_key:[32] new_key:[32] how:u8
//! signature        = Ed25519(key, "backchannel/v1/authority-passed" ‖ transfer)
//! ```
//!
//! Every signature the payload carries (the new key's, the long-term
//! authority's, each endorsement) is over the same 97-byte transfer, which
//! binds the talks, so none can be moved to other talks, another party,
//! another old or new key, or the other way of passing. Whether the author
//! may pass the authority, whether `old_key` is the party's current talks
//! authority and which endorsements are required is decided by replay in
//! `backchannel-core`; this module checks structure and signatures only.

use backchannel_codec::{
    Decode, DecodeError, Encode, PartyId, Reader, TalksId, Writer, check_strictly_sorted,
};
use backchannel_crypto::{BadSignature, Context, KeyId, PublicKey, SignError, Signature, Signer};
use thiserror::Error;

use crate::roster::MAX_PARTIES;

/// The context of every signature an authority-passed payload carries.
pub const AUTHORITY_PASSED_CONTEXT: Context = Context::new("backchannel/v1/authority-passed");
/// The length of the transfer every signature is over.
pub const TRANSFER_LEN: usize = 16 + 16 + 32 + 32 + 1;

/// How the authority passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PassedHow {
    /// The old holder hands it over (the old key authors the statement).
    HandedOver = 1,
    /// A mediator team re-appoints it, the old holder being gone.
    Reappointed = 2,
}

impl PassedHow {
    /// The byte on the wire.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The name views show.
    pub const fn name(self) -> &'static str {
        match self {
            PassedHow::HandedOver => "handed over",
            PassedHow::Reappointed => "re-appointed",
        }
    }
}

impl Encode for PassedHow {
    fn encode(&self, w: &mut Writer) {
        w.u8(self.code());
    }
}

impl Decode for PassedHow {
    const MIN_LEN: usize = 1;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("how")? {
            1 => Ok(PassedHow::HandedOver),
            2 => Ok(PassedHow::Reappointed),
            v => Err(DecodeError::UnknownValue {
                field: "how",
                value: u64::from(v),
            }),
        }
    }
}

/// Another party's current talks authority endorsing a re-appointment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endorsement {
    /// The endorsing key's id.
    pub key: KeyId,
    /// Its signature over the transfer.
    pub signature: Signature,
}

impl Encode for Endorsement {
    fn encode(&self, w: &mut Writer) {
        self.key.encode(w);
        self.signature.encode(w);
    }
}

impl Decode for Endorsement {
    const MIN_LEN: usize = 32 + 64;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            key: KeyId::decode(r)?,
            signature: Signature::decode(r)?,
        })
    }
}

/// Why an authority pass was refused (structure, or a signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AuthorityError {
    /// The new key is the old key.
    #[error("the new talks authority key is the old one")]
    SameKey,
    /// A handed-over pass carries a long-term authority certification.
    #[error("a handed-over authority pass carries no long-term authority certification")]
    CertificationOnHandover,
    /// A re-appointment lacks the long-term authority certification.
    #[error("a re-appointed authority needs its party's long-term authority certification")]
    MissingCertification,
    /// A handed-over pass carries endorsements.
    #[error("a handed-over authority pass carries no endorsements")]
    EndorsementsOnHandover,
    /// More than [`MAX_PARTIES`] endorsements.
    #[error("an authority pass carries at most {MAX_PARTIES} endorsements")]
    TooManyEndorsements,
    /// Endorsements not strictly sorted by key id (unsorted, or a key twice).
    #[error("the endorsements of an authority pass must be sorted by key id and unique")]
    EndorsementsUnsorted,
    /// The new key's signature over the transfer does not verify.
    #[error("the new key's signature over the transfer does not verify")]
    BadNewKeySignature,
    /// The long-term authority's certification does not verify.
    #[error(
        "the long-term authority certification does not verify under the party's authority key"
    )]
    BadCertification,
}

/// A party's talks authority passing from `old_key` to `new_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityPassed {
    /// The party whose talks authority passes.
    pub party: PartyId,
    /// The id of its talks authority key at the statement's seq.
    pub old_key: KeyId,
    /// The new talks authority key.
    pub new_key: PublicKey,
    /// How.
    how: PassedHow,
    /// The new key's signature over the transfer.
    pub new_key_signature: Signature,
    /// The party's long-term authority's signature over the transfer;
    /// present iff re-appointed.
    authority_certification: Option<Signature>,
    /// Other parties' talks authorities over the transfer; strictly sorted
    /// by key id; empty when handed over.
    endorsements: Vec<Endorsement>,
}

impl AuthorityPassed {
    /// An authority pass. Sorts nothing: endorsements must already be
    /// strictly sorted by key id, at most [`MAX_PARTIES`], and empty when
    /// handed over; the certification present iff re-appointed; the new key
    /// not the old one. Signatures are not verified here.
    pub fn new(
        party: PartyId,
        old_key: KeyId,
        new_key: PublicKey,
        how: PassedHow,
        new_key_signature: Signature,
        authority_certification: Option<Signature>,
        endorsements: Vec<Endorsement>,
    ) -> Result<Self, AuthorityError> {
        if new_key.id() == old_key {
            return Err(AuthorityError::SameKey);
        }
        match (how, authority_certification.is_some()) {
            (PassedHow::HandedOver, true) => return Err(AuthorityError::CertificationOnHandover),
            (PassedHow::Reappointed, false) => return Err(AuthorityError::MissingCertification),
            _ => {}
        }
        if how == PassedHow::HandedOver && !endorsements.is_empty() {
            return Err(AuthorityError::EndorsementsOnHandover);
        }
        if endorsements.len() > MAX_PARTIES {
            return Err(AuthorityError::TooManyEndorsements);
        }
        if endorsements.windows(2).any(|p| p[0].key >= p[1].key) {
            return Err(AuthorityError::EndorsementsUnsorted);
        }
        Ok(Self {
            party,
            old_key,
            new_key,
            how,
            new_key_signature,
            authority_certification,
            endorsements,
        })
    }

    /// How the authority passes.
    pub fn how(&self) -> PassedHow {
        self.how
    }

    /// The long-term authority's certification (re-appointed only).
    pub fn authority_certification(&self) -> Option<&Signature> {
        self.authority_certification.as_ref()
    }

    /// The endorsements, strictly sorted by key id.
    pub fn endorsements(&self) -> &[Endorsement] {
        &self.endorsements
    }

    /// The transfer every signature is over:
    /// `talks ‖ party ‖ old_key ‖ new_key ‖ how` (97 bytes).
    pub fn transfer(
        talks: TalksId,
        party: PartyId,
        old_key: &KeyId,
        new_key: &PublicKey,
        how: PassedHow,
    ) -> Vec<u8> {
        let mut w = Writer::with_capacity(TRANSFER_LEN);
        talks.encode(&mut w);
        party.encode(&mut w);
        old_key.encode(&mut w);
        new_key.encode(&mut w);
        how.encode(&mut w);
        w.into_bytes()
    }

    /// This pass's transfer in `talks`.
    pub fn transfer_bytes(&self, talks: TalksId) -> Vec<u8> {
        Self::transfer(talks, self.party, &self.old_key, &self.new_key, self.how)
    }

    /// Signs a transfer under [`AUTHORITY_PASSED_CONTEXT`]: the new key's
    /// signature, the long-term authority's certification and each
    /// endorsement are all made with this, by their own signers.
    pub fn sign_transfer(
        signer: &dyn Signer,
        talks: TalksId,
        party: PartyId,
        old_key: &KeyId,
        new_key: &PublicKey,
        how: PassedHow,
    ) -> Result<Signature, SignError> {
        signer.sign(
            AUTHORITY_PASSED_CONTEXT,
            &Self::transfer(talks, party, old_key, new_key, how),
        )
    }

    /// Verifies `signature` by `key` over this pass's transfer in `talks`.
    pub fn verify_by(
        &self,
        talks: TalksId,
        key: &PublicKey,
        signature: &Signature,
    ) -> Result<(), BadSignature> {
        key.verify(
            AUTHORITY_PASSED_CONTEXT,
            &self.transfer_bytes(talks),
            signature,
        )
    }

    /// Verifies what the payload alone can prove: the new key's signature
    /// and, when re-appointed, the certification under `authority_key` (the
    /// party's long-term authority, from the roster). Endorsements are
    /// checked by replay, which knows each party's current talks authority.
    pub fn verify(&self, talks: TalksId, authority_key: &PublicKey) -> Result<(), AuthorityError> {
        self.verify_by(talks, &self.new_key, &self.new_key_signature)
            .map_err(|_| AuthorityError::BadNewKeySignature)?;
        if let Some(cert) = &self.authority_certification {
            self.verify_by(talks, authority_key, cert)
                .map_err(|_| AuthorityError::BadCertification)?;
        }
        Ok(())
    }
}

impl Encode for AuthorityPassed {
    fn encode(&self, w: &mut Writer) {
        self.party.encode(w);
        self.old_key.encode(w);
        self.new_key.encode(w);
        self.how.encode(w);
        self.new_key_signature.encode(w);
        w.option(self.authority_certification.as_ref());
        w.list(&self.endorsements);
    }
}

impl Decode for AuthorityPassed {
    /// Handed over: 16 + 32 + 32 + 1 + 64 + 1 + 4.
    const MIN_LEN: usize = 16 + 32 + 32 + 1 + 64 + 1 + 4;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let party = PartyId::decode(r)?;
        let old_key = KeyId::decode(r)?;
        let new_key = PublicKey::decode(r)?;
        let how = PassedHow::decode(r)?;
        let new_key_signature = Signature::decode(r)?;
        let authority_certification = r.option("authority certification")?;
        let endorsements: Vec<Endorsement> = r.list("endorsements", MAX_PARTIES)?;
        check_strictly_sorted(&endorsements, "endorsements", |e| e.key)?;
        Self::new(
            party,
            old_key,
            new_key,
            how,
            new_key_signature,
            authority_certification,
            endorsements,
        )
        .map_err(|e| match e {
            AuthorityError::SameKey => DecodeError::Invalid {
                field: "new key",
                reason: "must differ from the old key",
            },
            AuthorityError::CertificationOnHandover => DecodeError::Invalid {
                field: "authority certification",
                reason: "absent when handed over",
            },
            AuthorityError::MissingCertification => DecodeError::Invalid {
                field: "authority certification",
                reason: "present when re-appointed",
            },
            AuthorityError::EndorsementsOnHandover => DecodeError::Invalid {
                field: "endorsements",
                reason: "none when handed over",
            },
            // The list and sort checks above come first.
            AuthorityError::TooManyEndorsements
            | AuthorityError::EndorsementsUnsorted
            | AuthorityError::BadNewKeySignature
            | AuthorityError::BadCertification => DecodeError::Invalid {
                field: "endorsements",
                reason: "items must be sorted and unique",
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backchannel_crypto::SecretKey;

    fn key(label: u8) -> SecretKey {
        SecretKey::from_seed(&[label; 32]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn handed_over() -> (TalksId, AuthorityPassed) {
        let (talks, party) = (TalksId([1; 16]), PartyId([0x0b; 16]));
        let old = key(0x22).public_key().id();
        let new = key(0x25).public_key();
        let sig = AuthorityPassed::sign_transfer(
            &key(0x25),
            talks,
            party,
            &old,
            &new,
            PassedHow::HandedOver,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let p = AuthorityPassed::new(party, old, new, PassedHow::HandedOver, sig, None, vec![])
            .unwrap_or_else(|e| panic!("{e}"));
        (talks, p)
    }

    #[test]
    fn it_encodes_as_documented_and_verifies() {
        let (talks, p) = handed_over();
        let bytes = p.to_canonical_bytes();
        assert_eq!(bytes.len(), AuthorityPassed::MIN_LEN);
        let mut want = p.party.0.to_vec();
        want.extend_from_slice(p.old_key.as_bytes());
        want.extend_from_slice(p.new_key.as_bytes());
        want.push(1);
        want.extend_from_slice(p.new_key_signature.as_bytes());
        want.push(0);
        want.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(bytes, want);
        assert_eq!(AuthorityPassed::from_canonical_bytes(&bytes), Ok(p.clone()));
        let transfer = p.transfer_bytes(talks);
        assert_eq!(transfer.len(), TRANSFER_LEN);
        assert_eq!(&transfer[..16], &talks.0);
        assert_eq!(transfer[96], 1);
        let authority = key(0x12).public_key();
        assert_eq!(p.verify(talks, &authority), Ok(()));
        // Bound to the talks.
        assert_eq!(
            p.verify(TalksId([9; 16]), &authority),
            Err(AuthorityError::BadNewKeySignature)
        );
    }
}
