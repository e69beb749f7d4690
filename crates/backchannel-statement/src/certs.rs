//! Member and device certificates, and revocations.
//!
//! Chain of trust within one talks: a party's long-term authority key
//! certifies its *talks authority* key (in the roster's party entry); the
//! talks authority signs [`MemberCert`]s binding a per-talks member
//! identity key to a principal, a role and the acts it may sign; a member's
//! identity key signs [`DeviceCert`]s for its per-talks device keys. A
//! [`Revoke`] retires an identity or device key from its log position on.

use backchannel_codec::{
    Decode, DecodeError, Encode, PartyId, PrincipalId, Reader, Writer, check_strictly_sorted,
};
use backchannel_crypto::{KeyId, PublicKey};

use crate::roles::{Act, Role, u8_enum_codec};

/// How many acts a certificate may list (there are 12 in this version).
pub const MAX_ACTS: usize = 32;

/// Binds a member identity key to a principal, its party, a role and the
/// acts it may sign. Signed by the party's talks authority key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCert {
    /// The member.
    pub principal: PrincipalId,
    /// Its party.
    pub party: PartyId,
    /// Its role.
    pub role: Role,
    /// Its identity key for these talks.
    pub identity_key: PublicKey,
    /// The acts it may sign for the party; sorted, unique, each permitted by `role`.
    acts: Vec<Act>,
    /// Not valid after this time (Unix ms), if set.
    pub not_after: Option<u64>,
}

/// A certificate names an act its role does not permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the role {role:?} may not sign {act:?}")]
pub struct ActNotPermitted {
    /// The role.
    pub role: Role,
    /// The act.
    pub act: Act,
}

impl MemberCert {
    /// A certificate; `acts` are sorted, deduplicated and checked against
    /// the role's permissions.
    pub fn new(
        principal: PrincipalId,
        party: PartyId,
        role: Role,
        identity_key: PublicKey,
        mut acts: Vec<Act>,
        not_after: Option<u64>,
    ) -> Result<Self, ActNotPermitted> {
        acts.sort();
        acts.dedup();
        if let Some(&act) = acts.iter().find(|a| !role.permits(**a)) {
            return Err(ActNotPermitted { role, act });
        }
        Ok(Self {
            principal,
            party,
            role,
            identity_key,
            acts,
            not_after,
        })
    }

    /// The acts this member may sign.
    pub fn acts(&self) -> &[Act] {
        &self.acts
    }
}

impl Encode for MemberCert {
    fn encode(&self, w: &mut Writer) {
        self.principal.encode(w);
        self.party.encode(w);
        self.role.encode(w);
        self.identity_key.encode(w);
        w.list(&self.acts);
        w.option(self.not_after.as_ref());
    }
}

impl Decode for MemberCert {
    const MIN_LEN: usize = 16 + 16 + 1 + 32 + 4 + 1;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let principal = PrincipalId::decode(r)?;
        let party = PartyId::decode(r)?;
        let role = Role::decode(r)?;
        let identity_key = PublicKey::decode(r)?;
        let acts: Vec<Act> = r.list("acts", MAX_ACTS)?;
        check_strictly_sorted(&acts, "acts", |a| *a)?;
        let not_after = r.option("not after")?;
        Self::new(principal, party, role, identity_key, acts, not_after).map_err(|_| {
            DecodeError::Invalid {
                field: "acts",
                reason: "an act the role does not permit",
            }
        })
    }
}

/// Binds a per-talks device key to a member. Signed by the member's
/// identity key; the talks id is bound by the statement frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCert {
    /// The member the device belongs to.
    pub principal: PrincipalId,
    /// The device key (TLS client authentication, envelopes, MLS leaves).
    pub device_key: PublicKey,
    /// Not valid after this time (Unix ms, UTC).
    pub not_after: u64,
}

impl Encode for DeviceCert {
    fn encode(&self, w: &mut Writer) {
        self.principal.encode(w);
        self.device_key.encode(w);
        w.u64(self.not_after);
    }
}

impl Decode for DeviceCert {
    const MIN_LEN: usize = 16 + 32 + 8;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            principal: PrincipalId::decode(r)?,
            device_key: PublicKey::decode(r)?,
            not_after: r.u64("not after")?,
        })
    }
}

/// Why a key is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevokeReason {
    /// Replaced by a new key (rotation = new certificate + revoke).
    Superseded = 1,
    /// The device was lost.
    Lost = 2,
    /// The key is known or suspected to be compromised.
    Compromised = 3,
    /// The member left the talks.
    Left = 4,
}

u8_enum_codec!(
    RevokeReason,
    "revoke reason",
    [
        RevokeReason::Superseded,
        RevokeReason::Lost,
        RevokeReason::Compromised,
        RevokeReason::Left,
    ]
);

/// Retires an identity or device key. Valid when signed by the key's party's
/// talks authority, by the member's identity key (for its own identity key
/// or its devices). Device keys never sign statements, so a member revokes
/// a lost device from another device through its identity key. Every
/// signature by the key sequenced after the revocation is rejected,
/// whatever time it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoke {
    /// The key retired.
    pub key: KeyId,
    /// Why.
    pub reason: RevokeReason,
    /// For a lost or compromised key: when it was lost (Unix ms); absent for
    /// other reasons. Views flag what the key signed at or after the first
    /// log position whose node timestamp is at or after this time.
    pub lost_at: Option<u64>,
}

impl Encode for Revoke {
    fn encode(&self, w: &mut Writer) {
        self.key.encode(w);
        self.reason.encode(w);
        w.option(self.lost_at.as_ref());
    }
}

impl Decode for Revoke {
    const MIN_LEN: usize = 32 + 1 + 1;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let key = KeyId::decode(r)?;
        let reason = RevokeReason::decode(r)?;
        let lost_at = r.option("lost at")?;
        if lost_at.is_some() && !matches!(reason, RevokeReason::Lost | RevokeReason::Compromised) {
            return Err(DecodeError::Invalid {
                field: "lost at",
                reason: "only a lost or compromised key has a time of loss",
            });
        }
        Ok(Self {
            key,
            reason,
            lost_at,
        })
    }
}
