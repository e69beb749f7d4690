//! The access list: the only part of the roster the node parses.
//!
//! Per key: its public key, an opaque principal id and party id, the rooms
//! it may read and post to, and flags. The roster carries the SHA-256 of the
//! canonical access list it implies; the node serves the current list and
//! its hash so every client can compare it with the roster it accepted.
//!
//! Changes ([`AccessListChange`]) are deltas against the hash of the list
//! they apply to, signed under `backchannel/v1/access-list`. The rule
//! ([`AccessList::apply`]):
//! - a change that only removes keys needs, for each removed key, a
//!   signature by a device of the same principal (a member removing its own
//!   device) or by the designated signer of the key's party;
//! - any other change needs a mediator's designated signer plus the
//!   designated signer of every party it touches: whose entries it adds,
//!   changes or removes, or who has a member in a room whose set of member
//!   principals it changes. So no member of one party enters another party's rooms
//!   without that party's signature, whatever the mediator signs;
//! - except one narrow case: a change that only replaces a party's
//!   talks-authority entry (one entry shaped as the roster implies a
//!   non-mediator talks authority's: flags exactly
//!   [`FLAG_DESIGNATED_SIGNER`], no rooms, principal id = party id; one new
//!   key with an entry identical but for the key), not signed by that
//!   party, needs the new key's own signature over the change (the one
//!   signature allowed from a key not on the list), a mediator's
//!   designated signer and the designated signer of every other party on
//!   the list. This seats a re-appointed talks authority
//!   (`authority-passed`) when the old key can no longer sign.

use std::collections::{BTreeMap, BTreeSet};

use backchannel_codec::{
    Decode, DecodeError, Encode, PartyId, PrincipalId, Reader, RoomId, TalksId, Writer,
    check_strictly_sorted,
};
use backchannel_crypto::{Context, Digest, KeyId, PublicKey, SignError, Signature, Signer, sha256};
use thiserror::Error;

/// The access list format version.
pub const ACCESS_LIST_VERSION: u8 = 1;
/// The signature context of access-list changes.
pub const ACCESS_LIST_CONTEXT: Context = Context::new("backchannel/v1/access-list");
/// The most keys one talks' access list may hold (a large negotiation has a
/// few hundred people with a few devices each; ten thousand is generous and
/// keeps a list under 1 MiB).
pub const MAX_ENTRIES: usize = 10_000;
/// The most rooms one key may be in.
pub const MAX_ROOMS_PER_KEY: usize = 256;
/// The most signatures on one change (one mediator plus every party).
pub const MAX_CHANGE_SIGNATURES: usize = 64;

/// The key is a device key (TLS, envelopes, MLS leaves).
pub const FLAG_DEVICE: u8 = 0x01;
/// The key is its party's designated signer for access-list changes.
pub const FLAG_DESIGNATED_SIGNER: u8 = 0x02;
/// The key may submit access-list changes to the node.
pub const FLAG_MAY_PROPOSE: u8 = 0x04;
/// The key belongs to a mediator team.
pub const FLAG_MEDIATOR: u8 = 0x08;
const KNOWN_FLAGS: u8 = FLAG_DEVICE | FLAG_DESIGNATED_SIGNER | FLAG_MAY_PROPOSE | FLAG_MEDIATOR;

/// One key on the access list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    /// The key (read with [`AccessEntry::key`]).
    key: PublicKey,
    /// Its id, derived once: lists are sorted and searched by it, and a
    /// lookup on the envelope hot path must not hash every probed entry.
    key_id: KeyId,
    /// Its principal (opaque).
    pub principal: PrincipalId,
    /// Its party (opaque).
    pub party: PartyId,
    /// Rooms it may read and post to; sorted, unique.
    rooms: Vec<RoomId>,
    /// `FLAG_*` bits.
    pub flags: u8,
}

impl AccessEntry {
    /// An entry; rooms are sorted and deduplicated. Unknown flag bits or
    /// too many rooms are refused.
    pub fn new(
        key: PublicKey,
        principal: PrincipalId,
        party: PartyId,
        mut rooms: Vec<RoomId>,
        flags: u8,
    ) -> Result<Self, AccessListError> {
        rooms.sort();
        rooms.dedup();
        if rooms.len() > MAX_ROOMS_PER_KEY {
            return Err(AccessListError::TooLarge("rooms of one key"));
        }
        if flags & !KNOWN_FLAGS != 0 {
            return Err(AccessListError::UnknownFlags(flags));
        }
        Ok(Self {
            key_id: key.id(),
            key,
            principal,
            party,
            rooms,
            flags,
        })
    }

    /// The key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// The key's id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The rooms, sorted.
    pub fn rooms(&self) -> &[RoomId] {
        &self.rooms
    }

    /// Whether a flag is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }
}

impl Encode for AccessEntry {
    fn encode(&self, w: &mut Writer) {
        self.key.encode(w);
        self.principal.encode(w);
        self.party.encode(w);
        w.list(&self.rooms);
        w.u8(self.flags);
    }
}

impl Decode for AccessEntry {
    const MIN_LEN: usize = 32 + 16 + 16 + 4 + 1;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let key = PublicKey::decode(r)?;
        let principal = PrincipalId::decode(r)?;
        let party = PartyId::decode(r)?;
        let rooms: Vec<RoomId> = r.list("rooms", MAX_ROOMS_PER_KEY)?;
        check_strictly_sorted(&rooms, "rooms", |x| *x)?;
        let flags = r.u8("flags")?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::UnknownValue {
                field: "flags",
                value: u64::from(flags),
            });
        }
        Ok(Self {
            key_id: key.id(),
            key,
            principal,
            party,
            rooms,
            flags,
        })
    }
}

/// The access list of one talks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessList {
    talks: TalksId,
    /// How many changes have been applied since the roster's list (0). Part
    /// of the hash, so a list never returns to an earlier hash and an old
    /// signed change can never be replayed.
    generation: u64,
    /// Sorted by key id.
    entries: Vec<AccessEntry>,
}

/// Why an access list or a change to it was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AccessListError {
    /// A limit was exceeded.
    #[error("too many {0}")]
    TooLarge(&'static str),
    /// Unknown flag bits.
    #[error("unknown access-list flags {0:#04x}")]
    UnknownFlags(u8),
    /// A key appears twice.
    #[error("key {0:?} appears twice")]
    DuplicateKey(KeyId),
    /// The change is for other talks.
    #[error("the change is for other talks")]
    OtherTalks,
    /// The change was made against another version of the list.
    #[error(
        "the change applies to access list {expected:?}, not the current {current:?}; fetch the current list and re-sign"
    )]
    StaleBase {
        /// The base the change names.
        expected: Digest,
        /// The current hash.
        current: Digest,
    },
    /// The change removes a key that is not on the list.
    #[error("the change removes {0:?}, which is not on the list")]
    UnknownKey(KeyId),
    /// A key is both removed and added.
    #[error("the change both removes and adds {0:?}")]
    RemovedAndAdded(KeyId),
    /// The change does nothing.
    #[error("the change is empty")]
    Empty,
    /// A signer is not on the current list.
    #[error("signer {0:?} is not on the current access list")]
    UnknownSigner(KeyId),
    /// A signature does not verify.
    #[error("the signature of {0:?} does not verify")]
    BadSignature(KeyId),
    /// An added entry's mediator flag differs from its party's.
    #[error(
        "{0:?}: the mediator flag must match the party's kind on the current list; mediator teams change only with a new roster"
    )]
    MediatorFlag(KeyId),
    /// One principal id under two parties.
    #[error("principal {0} appears under two parties")]
    PrincipalOfTwoParties(PrincipalId),
    /// A required signature is missing.
    #[error("missing signature: {0}")]
    MissingSignature(String),
}

impl AccessList {
    /// A list; entries are sorted by key id; duplicates are refused.
    /// Every principal belongs to exactly one party.
    pub fn new(
        talks: TalksId,
        generation: u64,
        mut entries: Vec<AccessEntry>,
    ) -> Result<Self, AccessListError> {
        if entries.len() > MAX_ENTRIES {
            return Err(AccessListError::TooLarge("access-list entries"));
        }
        entries.sort_by_key(|e| e.key_id());
        if let Some(w) = entries.windows(2).find(|w| w[0].key_id() == w[1].key_id()) {
            return Err(AccessListError::DuplicateKey(w[0].key_id()));
        }
        check_principals(&entries)?;
        Ok(Self {
            talks,
            generation,
            entries,
        })
    }

    /// How many changes have been applied to the roster's list.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The talks.
    pub fn talks(&self) -> TalksId {
        self.talks
    }

    /// The entries, sorted by key id.
    pub fn entries(&self) -> &[AccessEntry] {
        &self.entries
    }

    /// The entry of `key`.
    pub fn get(&self, key: &KeyId) -> Option<&AccessEntry> {
        self.entries
            .binary_search_by_key(key, |e| e.key_id())
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Whether `key` is a device this list seats in `room`: the one rule for
    /// who may be a leaf of that room's MLS group (the node's check of every
    /// commit, and every client's).
    pub fn seats_device(&self, key: &KeyId, room: RoomId) -> bool {
        self.get(key)
            .is_some_and(|e| e.has(FLAG_DEVICE) && e.rooms().binary_search(&room).is_ok())
    }

    /// SHA-256 of the canonical encoding: what the roster carries and the
    /// node serves.
    pub fn hash(&self) -> Digest {
        sha256(&self.to_canonical_bytes())
    }

    /// Applies `change` if it is signed as the module docs require, giving
    /// the new list. Nothing changes on error.
    pub fn apply(&self, change: &AccessListChange) -> Result<AccessList, AccessListError> {
        let delta = &change.delta;
        if delta.talks != self.talks {
            return Err(AccessListError::OtherTalks);
        }
        let current = self.hash();
        if delta.base != current {
            return Err(AccessListError::StaleBase {
                expected: delta.base,
                current,
            });
        }
        if delta.remove.is_empty() && delta.upsert.is_empty() {
            return Err(AccessListError::Empty);
        }
        // Signatures: every one must be by a key on the current list and
        // verify; the one exception is the new key's own signature on a
        // replacement of a talks authority's entry (step 7), checked below.
        let replacement = self.replaced_signer(delta);
        let message = delta.to_canonical_bytes();
        let mut signers = Vec::with_capacity(change.signatures.len());
        let mut new_key_signed = false;
        for (key_id, sig) in &change.signatures {
            let key = match (self.get(key_id), replacement) {
                (Some(entry), _) => {
                    signers.push(entry);
                    &entry.key
                }
                (None, Some((_, added))) if added.key_id() == *key_id => {
                    new_key_signed = true;
                    &added.key
                }
                (None, _) => return Err(AccessListError::UnknownSigner(*key_id)),
            };
            key.verify(ACCESS_LIST_CONTEXT, &message, sig)
                .map_err(|_| AccessListError::BadSignature(*key_id))?;
        }
        let designated = |party: PartyId| {
            signers
                .iter()
                .any(|s| s.party == party && s.has(FLAG_DESIGNATED_SIGNER))
        };

        // The new list.
        let mut map: BTreeMap<KeyId, AccessEntry> = self
            .entries
            .iter()
            .map(|e| (e.key_id(), e.clone()))
            .collect();
        let mut removed = Vec::new();
        for k in &delta.remove {
            removed.push(map.remove(k).ok_or(AccessListError::UnknownKey(*k))?);
        }
        let mut touched: BTreeSet<PartyId> = removed.iter().map(|e| e.party).collect();
        for e in &delta.upsert {
            let id = e.key_id();
            if delta.remove.contains(&id) {
                return Err(AccessListError::RemovedAndAdded(id));
            }
            touched.insert(e.party);
            if let Some(old) = map.insert(id, e.clone()) {
                touched.insert(old.party);
            }
        }
        let generation = self
            .generation
            .checked_add(1)
            .ok_or(AccessListError::TooLarge("access-list generations"))?;
        let next = AccessList::new(self.talks, generation, map.into_values().collect())?;

        if delta.upsert.is_empty() {
            // Removal only: the key's own principal (a device) or its party's signer.
            for e in &removed {
                let own = signers.iter().any(|s| {
                    s.has(FLAG_DEVICE)
                        && e.has(FLAG_DEVICE)
                        && s.principal == e.principal
                        && s.party == e.party
                });
                if !own && !designated(e.party) {
                    return Err(AccessListError::MissingSignature(format!(
                        "removing {:?} needs a device of its principal or the designated signer of party {}",
                        e.key_id(),
                        e.party
                    )));
                }
            }
            return Ok(next);
        }

        // A party's talks-authority entry replaced, when that signer can no
        // longer sign (a re-appointed talks authority): the new key itself,
        // a mediator, and every other party on the list.
        if let Some((replaced, added)) = replacement {
            if designated(replaced.party) {
                // The party signs: the ordinary rule, where a key not on
                // the list signs nothing.
                if new_key_signed {
                    return Err(AccessListError::UnknownSigner(added.key_id()));
                }
            } else {
                return self.apply_replacement(replaced, &signers, new_key_signed, next);
            }
        }

        // Any other change: a mediator, plus every touched party.
        for room in changed_rooms(self, &next) {
            for e in self
                .entries
                .iter()
                .filter(|e| e.rooms.binary_search(&room).is_ok())
            {
                touched.insert(e.party);
            }
        }
        let mediator = signers
            .iter()
            .any(|s| s.has(FLAG_MEDIATOR) && s.has(FLAG_DESIGNATED_SIGNER));
        if !mediator {
            return Err(AccessListError::MissingSignature(
                "a change that adds or alters keys needs a mediator's designated signer".into(),
            ));
        }
        // Mediator teams are fixed by the roster: a change may not make a
        // delegation's key a mediator's (which would let a mediator speak
        // for it), nor a mediator's key a delegation's.
        for e in &delta.upsert {
            let mediator_party = self
                .entries
                .iter()
                .any(|x| x.party == e.party && x.has(FLAG_MEDIATOR));
            if e.has(FLAG_MEDIATOR) != mediator_party {
                return Err(AccessListError::MediatorFlag(e.key_id()));
            }
        }
        // Every touched party signs, mediator teams included (the mediator
        // signature above may be another team's).
        for party in touched {
            if !designated(party) {
                return Err(AccessListError::MissingSignature(format!(
                    "the change touches party {party}, whose designated signer has not signed"
                )));
            }
        }
        Ok(next)
    }
}

impl AccessList {
    /// The entries `delta` swaps, if it does nothing but replace one
    /// talks-authority entry's key: it removes exactly one entry `e` of
    /// `self` shaped as the roster implies a non-mediator talks
    /// authority's (flags exactly [`FLAG_DESIGNATED_SIGNER`]: no
    /// [`FLAG_MEDIATOR`], no [`FLAG_DEVICE`]; no rooms; principal id = party
    /// id, see `Roster::implied_access_list`), and upserts exactly one key
    /// not on `self` whose entry is `e`'s but for the key.
    fn replaced_signer<'a>(
        &'a self,
        delta: &'a AccessListDelta,
    ) -> Option<(&'a AccessEntry, &'a AccessEntry)> {
        let ([removed], [added]) = (delta.remove.as_slice(), delta.upsert.as_slice()) else {
            return None;
        };
        let e = self.get(removed)?;
        let authority_shape =
            e.flags == FLAG_DESIGNATED_SIGNER && e.rooms.is_empty() && e.principal.0 == e.party.0;
        let same_but_key = self.get(&added.key_id()).is_none()
            && added.principal == e.principal
            && added.party == e.party
            && added.rooms == e.rooms
            && added.flags == e.flags;
        (authority_shape && same_but_key).then_some((e, added))
    }

    /// Step 7 of the change rule: a talks-authority entry replaced without
    /// its party's signature needs the new key's own signature, a
    /// mediator's designated signer and every other party's.
    fn apply_replacement(
        &self,
        replaced: &AccessEntry,
        signers: &[&AccessEntry],
        new_key_signed: bool,
        next: AccessList,
    ) -> Result<AccessList, AccessListError> {
        if !new_key_signed {
            return Err(AccessListError::MissingSignature(format!(
                "replacing the designated signer of party {} without its signature needs the new key's own signature over the change",
                replaced.party
            )));
        }
        let designated = |party: PartyId| {
            signers
                .iter()
                .any(|s| s.party == party && s.has(FLAG_DESIGNATED_SIGNER))
        };
        let mediator = signers
            .iter()
            .any(|s| s.has(FLAG_MEDIATOR) && s.has(FLAG_DESIGNATED_SIGNER));
        if !mediator {
            return Err(AccessListError::MissingSignature(format!(
                "replacing the designated signer of party {} without its signature needs a mediator's designated signer",
                replaced.party
            )));
        }
        let others: BTreeSet<PartyId> = self
            .entries
            .iter()
            .map(|e| e.party)
            .filter(|p| *p != replaced.party)
            .collect();
        for party in others {
            if !designated(party) {
                return Err(AccessListError::MissingSignature(format!(
                    "replacing the designated signer of party {} without its signature needs every other party's designated signer; party {party} has not signed",
                    replaced.party
                )));
            }
        }
        Ok(next)
    }
}

/// Fails if one principal id appears under two parties.
fn check_principals(entries: &[AccessEntry]) -> Result<(), AccessListError> {
    let mut owner: BTreeMap<PrincipalId, PartyId> = BTreeMap::new();
    for e in entries {
        if *owner.entry(e.principal).or_insert(e.party) != e.party {
            return Err(AccessListError::PrincipalOfTwoParties(e.principal));
        }
    }
    Ok(())
}

/// Rooms whose set of member *principals* differs between two lists. A new
/// device of a principal already in a room changes who holds keys, not who
/// can read, so it touches only the device's own party.
fn changed_rooms(old: &AccessList, new: &AccessList) -> BTreeSet<RoomId> {
    fn members(l: &AccessList) -> BTreeMap<RoomId, BTreeSet<(PartyId, PrincipalId)>> {
        let mut m: BTreeMap<RoomId, BTreeSet<(PartyId, PrincipalId)>> = BTreeMap::new();
        for e in &l.entries {
            for r in &e.rooms {
                m.entry(*r).or_default().insert((e.party, e.principal));
            }
        }
        m
    }
    let (a, b) = (members(old), members(new));
    a.keys()
        .chain(b.keys())
        .filter(|r| a.get(r) != b.get(r))
        .copied()
        .collect()
}

impl Encode for AccessList {
    fn encode(&self, w: &mut Writer) {
        w.u8(ACCESS_LIST_VERSION);
        self.talks.encode(w);
        w.u64(self.generation);
        w.list(&self.entries);
    }
}

impl Decode for AccessList {
    const MIN_LEN: usize = 1 + 16 + 8 + 4;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("access list version", ACCESS_LIST_VERSION)?;
        let talks = TalksId::decode(r)?;
        let generation = r.u64("access list generation")?;
        let entries: Vec<AccessEntry> = r.list("access list entries", MAX_ENTRIES)?;
        check_strictly_sorted(&entries, "access list entries", |e| e.key_id())?;
        check_principals(&entries).map_err(|_| DecodeError::Invalid {
            field: "access list entries",
            reason: "a principal belongs to two parties",
        })?;
        Ok(Self {
            talks,
            generation,
            entries,
        })
    }
}

/// The signed part of a change: what is removed and added, against which list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessListDelta {
    /// The talks.
    pub talks: TalksId,
    /// Hash of the list this change applies to.
    pub base: Digest,
    /// Keys removed; sorted, unique.
    remove: Vec<KeyId>,
    /// Entries added or replaced; sorted by key id, unique.
    upsert: Vec<AccessEntry>,
}

impl AccessListDelta {
    /// A delta; both lists are sorted, and duplicates refused.
    pub fn new(
        talks: TalksId,
        base: Digest,
        mut remove: Vec<KeyId>,
        mut upsert: Vec<AccessEntry>,
    ) -> Result<Self, AccessListError> {
        remove.sort();
        if let Some(w) = remove.windows(2).find(|w| w[0] == w[1]) {
            return Err(AccessListError::DuplicateKey(w[0]));
        }
        upsert.sort_by_key(|e| e.key_id());
        if let Some(w) = upsert.windows(2).find(|w| w[0].key_id() == w[1].key_id()) {
            return Err(AccessListError::DuplicateKey(w[0].key_id()));
        }
        if remove.len() + upsert.len() > MAX_ENTRIES {
            return Err(AccessListError::TooLarge("changes in one delta"));
        }
        Ok(Self {
            talks,
            base,
            remove,
            upsert,
        })
    }

    /// Keys removed.
    pub fn remove(&self) -> &[KeyId] {
        &self.remove
    }

    /// Entries added or replaced.
    pub fn upsert(&self) -> &[AccessEntry] {
        &self.upsert
    }

    /// Signs the canonical delta under `backchannel/v1/access-list`.
    pub fn sign(&self, signer: &dyn Signer) -> Result<(KeyId, Signature), SignError> {
        let sig = signer.sign(ACCESS_LIST_CONTEXT, &self.to_canonical_bytes())?;
        Ok((signer.public_key().id(), sig))
    }
}

impl Encode for AccessListDelta {
    fn encode(&self, w: &mut Writer) {
        w.u8(ACCESS_LIST_VERSION);
        self.talks.encode(w);
        self.base.encode(w);
        w.list(&self.remove);
        w.list(&self.upsert);
    }
}

impl Decode for AccessListDelta {
    const MIN_LEN: usize = 1 + 16 + 32 + 8;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("access list version", ACCESS_LIST_VERSION)?;
        let talks = TalksId::decode(r)?;
        let base = Digest::decode(r)?;
        let remove: Vec<KeyId> = r.list("removed keys", MAX_ENTRIES)?;
        check_strictly_sorted(&remove, "removed keys", |k| *k)?;
        let upsert: Vec<AccessEntry> = r.list("added entries", MAX_ENTRIES)?;
        check_strictly_sorted(&upsert, "added entries", |e| e.key_id())?;
        if remove.len() + upsert.len() > MAX_ENTRIES {
            return Err(DecodeError::TooLong {
                field: "changes in one delta",
                len: (remove.len() + upsert.len()) as u64,
                max: MAX_ENTRIES as u64,
            });
        }
        Ok(Self {
            talks,
            base,
            remove,
            upsert,
        })
    }
}

/// A delta with its signatures: the payload the node verifies before
/// applying, and the statement type clients log it as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessListChange {
    /// What changes.
    pub delta: AccessListDelta,
    /// Signatures over the canonical delta, sorted by key id, unique.
    signatures: Vec<(KeyId, Signature)>,
}

impl AccessListChange {
    /// A change with signatures sorted by key id; duplicates refused.
    pub fn new(
        delta: AccessListDelta,
        mut signatures: Vec<(KeyId, Signature)>,
    ) -> Result<Self, AccessListError> {
        signatures.sort_by_key(|s| s.0);
        if let Some(w) = signatures.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(AccessListError::DuplicateKey(w[0].0));
        }
        if signatures.len() > MAX_CHANGE_SIGNATURES {
            return Err(AccessListError::TooLarge("signatures"));
        }
        Ok(Self { delta, signatures })
    }

    /// The signatures.
    pub fn signatures(&self) -> &[(KeyId, Signature)] {
        &self.signatures
    }
}

impl Encode for AccessListChange {
    fn encode(&self, w: &mut Writer) {
        self.delta.encode(w);
        w.len(self.signatures.len());
        for (k, s) in &self.signatures {
            k.encode(w);
            s.encode(w);
        }
    }
}

impl Decode for AccessListChange {
    const MIN_LEN: usize = AccessListDelta::MIN_LEN + 4;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let delta = AccessListDelta::decode(r)?;
        let n = r.len("signatures", MAX_CHANGE_SIGNATURES, 96)?;
        let mut signatures = Vec::with_capacity(n);
        for _ in 0..n {
            signatures.push((KeyId::decode(r)?, Signature::decode(r)?));
        }
        check_strictly_sorted(&signatures, "signatures", |s| s.0)?;
        Ok(Self { delta, signatures })
    }
}
