//! Evidence bundles: one statement, opened to an arbiter, verifiable offline
//! with nothing else.
//!
//! A bundle carries the signed statement and its commitment salt, the
//! signed envelope header that was logged (whose body hash stands in for the
//! ciphertext, which is never included), the seq and node timestamp, an
//! inclusion proof, a checkpoint note with its cosignatures, and the chain
//! of statements that certify the author's key (the roster, then any member
//! or device certificates, and authority passes of a talks authority).
//!
//! Encoding (`docs/formats.md` § 9, Evidence bundles):
//!
//! ```text
//! bundle = version:u8 (=1) statement:bytes salt:[32] signed_header:[223]
//!          seq:u64 node_time:u64 inclusion_proof checkpoint_note:bytes
//!          chain:list<bytes>
//! ```
//!
//! What verification proves, and what it does not: the statement was signed
//! by a key the roster (signed by the mediator team's talks authority, each
//! party's talks authority certified by its long-term key) or a certificate
//! in the chain vouches for; it was committed to in the header logged at
//! `seq`, in the room named there, in the log whose checkpoint the node's
//! log key signed and the listed witnesses cosigned. The chain's own
//! statements are not proven to be in the log, revocations later in the
//! log are not visible in a bundle, and an authority pass's endorsements
//! are not checked; a participant's replay of the whole record (client
//! issue) is what decides those. A talks authority an authority pass in the
//! chain passes on vouches for nothing after it: it signs no later link,
//! passes nothing again and is not accepted as the statement's author.
//!
//! An equivocation (one key, one statement id, two different statements:
//! replay's `Rejected::Equivocation`) is shown with two ordinary bundles,
//! checked together by [`verify_equivocation`].

use backchannel_codec::{
    Decode, DecodeError, Encode, PartyId, PrincipalId, Reader, StatementId, Writer,
};
use backchannel_crypto::{KeyId, PublicKey};
use backchannel_statement::header::SIGNED_HEADER_LEN;
use backchannel_statement::roster::{Roster, VerifiedRoster};
use backchannel_statement::{
    AuthorityPassed, Kind, PartyKind, PassedHow, Payload, Salt, SignedHeader, SignedStatement,
    VerifiedStatement, VerifyError,
};
use backchannel_tlog::{
    CheckpointNote, CosignerKey, InclusionProof, LeafData, LogOrigin, MAX_NOTE_LEN, NodeOrigin,
    verify_cosignatures,
};
use thiserror::Error;

/// The bundle format version.
pub const EVIDENCE_VERSION: u8 = 1;
/// The largest statement a bundle holds (a statement's payload limit plus
/// its frame).
pub const MAX_STATEMENT_LEN: usize = backchannel_statement::statement::MAX_PAYLOAD + 4096;
/// The most chain statements (roster, member certificate, device
/// certificate, and room for a rotation or two).
pub const MAX_CHAIN: usize = 8;

/// The longest encoded bundle: its statement and a full chain, the checkpoint
/// note, and 16 KiB for the salt, header, seq, time and inclusion proof (a
/// proof of 64 hashes is 2 KiB). What a reader of a bundle file may refuse
/// before decoding.
pub const MAX_BUNDLE_LEN: usize = MAX_STATEMENT_LEN * (MAX_CHAIN + 1) + MAX_NOTE_LEN + 16 * 1024;

/// One statement opened for an arbiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceBundle {
    /// The statement.
    pub statement: SignedStatement,
    /// The salt of its commitment.
    pub salt: Salt,
    /// The logged header.
    pub header: SignedHeader,
    /// Its seq (leaf index).
    pub seq: u64,
    /// The node's timestamp (Unix ms).
    pub node_time: u64,
    /// Inclusion of the leaf in the checkpoint's tree.
    pub proof: InclusionProof,
    /// The checkpoint as a C2SP signed note, with cosignature lines.
    pub checkpoint_note: Vec<u8>,
    /// The roster first, then certificates for the author's key.
    pub chain: Vec<SignedStatement>,
}

/// What a verified bundle establishes.
#[derive(Debug, Clone)]
pub struct VerifiedEvidence {
    /// The statement, its signature checked.
    pub statement: VerifiedStatement,
    /// The party it was made for.
    pub party: PartyId,
    /// That party's long-term authority key, to compare with one known
    /// independently.
    pub party_authority: PublicKey,
    /// Its seq.
    pub seq: u64,
    /// The node's timestamp.
    pub node_time: u64,
    /// The checkpoint's tree size.
    pub checkpoint_size: u64,
    /// The names of the witnesses (of those given) whose cosignatures verified.
    pub cosigned_by: Vec<String>,
}

/// Why a bundle did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EvidenceError {
    /// The statement and header are for different talks.
    #[error("the statement and the header belong to different talks")]
    TalksMismatch,
    /// The salt and statement do not open the header's commitment.
    #[error("the statement does not open the commitment in the logged header")]
    Commitment,
    /// The proof is for another index.
    #[error("the inclusion proof is for another seq")]
    ProofIndex,
    /// The checkpoint note is malformed or not signed by the log key.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The leaf is not in the checkpoint's tree.
    #[error("the leaf is not included in the checkpoint: {0}")]
    Inclusion(String),
    /// A cosignature line is malformed or a listed witness's is bad.
    #[error("cosignatures: {0}")]
    Cosignature(String),
    /// The chain does not start with a valid roster.
    #[error(
        "the chain must start with a roster signed by the mediator team's talks authority: {0}"
    )]
    Roster(String),
    /// The author's key is not vouched for by the chain.
    #[error("no statement in the chain certifies the author's key")]
    UnknownAuthor,
    /// The author's or sender's certificate had expired at the node time.
    #[error("a key's certificate had expired when the envelope was sequenced")]
    Expired,
    /// The header's sender is not a device the chain vouches for.
    #[error("the envelope's sender is not a device the chain vouches for")]
    UnknownSender,
    /// The header's signature does not verify.
    #[error("the envelope header's signature does not verify")]
    HeaderSignature,
    /// The header is not an application message.
    #[error("a statement travels as an application message; the header says otherwise")]
    HeaderKind,
    /// Statements are signed by identity or authority keys, never devices.
    #[error("the statement is signed by a device key; statements are signed by identity keys")]
    DeviceAuthor,
    /// A certificate in the chain is not signed by its certifier.
    #[error("a certificate in the chain is not signed by its certifier")]
    Chain,
    /// The statement's signature, talks or room check failed.
    #[error(transparent)]
    Statement(#[from] VerifyError),
    /// The author acts for a party that is not its own.
    #[error("the author acts for a party that is not its own")]
    WrongParty,
    /// The header's room is not declared by the roster.
    #[error("the header's room is not declared by the roster")]
    UnknownRoom,
}

impl EvidenceBundle {
    /// Verifies the bundle offline against the node's log key and origin,
    /// and (optionally) witness keys whose cosignatures to check.
    pub fn verify(
        &self,
        node: &NodeOrigin,
        log_key: &PublicKey,
        witnesses: &[CosignerKey],
    ) -> Result<VerifiedEvidence, EvidenceError> {
        let header = self.header.header();
        let talks = header.talks;
        if self.statement.unverified().talks != talks {
            return Err(EvidenceError::TalksMismatch);
        }
        // 1. The statement is what the logged header committed to.
        if !header
            .commitment
            .opens(&self.salt, self.statement.as_bytes())
        {
            return Err(EvidenceError::Commitment);
        }
        // 2. The leaf is in the signed checkpoint's tree.
        let leaf = LeafData {
            seq: self.seq,
            timestamp_ms: self.node_time,
            room: header.room,
            header_hash: self.header.hash(),
            body_hash: header.body_hash,
        };
        if self.proof.index() != self.seq {
            return Err(EvidenceError::ProofIndex);
        }
        let origin = LogOrigin::new(node, talks);
        let checkpoint = CheckpointNote::parse(&self.checkpoint_note)
            .and_then(|n| n.verify(log_key, &origin))
            .map_err(|e| EvidenceError::Checkpoint(e.to_string()))?;
        let cp = checkpoint.checkpoint();
        self.proof
            .verify(self.seq, cp.size, &cp.root, &leaf.hash())
            .map_err(|e| EvidenceError::Inclusion(e.to_string()))?;
        let cosigned_by = verify_cosignatures(&self.checkpoint_note, witnesses)
            .map_err(|e| EvidenceError::Cosignature(e.to_string()))?
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        // 3. The author's key is vouched for by the chain.
        let (roster, keys) = self.chain_keys(talks)?;
        let author_id = self.statement.unverified().author;
        // A talks authority the chain passes on vouches for nothing after
        // the pass; the chain cannot order the statement before it.
        let author = keys
            .iter()
            .find(|k| k.key.id() == author_id && !k.passed)
            .copied()
            .ok_or(EvidenceError::UnknownAuthor)?;
        if matches!(author.holder, Holder::Device(_)) {
            return Err(EvidenceError::DeviceAuthor);
        }
        if author.expired_at(self.node_time) {
            return Err(EvidenceError::Expired);
        }
        let (author_key, author_party) = (author.key, author.party);
        let statement = self.statement.verify(talks, &author_key)?;
        // The logged header was signed by a device the chain vouches for
        // (the author's, or a mediator's conveying it), as an application
        // message (statements travel as MLS application messages).
        let sender = keys
            .iter()
            .find(|k| k.key.id() == header.sender && matches!(k.holder, Holder::Device(_)))
            .ok_or(EvidenceError::UnknownSender)?;
        self.header
            .verify(&sender.key)
            .map_err(|_| EvidenceError::HeaderSignature)?;
        if sender.expired_at(self.node_time) {
            return Err(EvidenceError::Expired);
        }
        if header.kind != Kind::MlsApp {
            return Err(EvidenceError::HeaderKind);
        }
        if statement.statement().acting_for != author_party {
            return Err(EvidenceError::WrongParty);
        }
        // 4. It was posted to a room its audience allows.
        let room_parties = roster
            .room_parties(header.room)
            .ok_or(EvidenceError::UnknownRoom)?;
        statement.check_room(header.room, &room_parties)?;
        let party_authority = roster
            .parties
            .iter()
            .find(|p| p.party == author_party)
            .map(|p| p.authority_key)
            .ok_or(EvidenceError::UnknownAuthor)?;
        Ok(VerifiedEvidence {
            statement,
            party: author_party,
            party_authority,
            seq: self.seq,
            node_time: self.node_time,
            checkpoint_size: cp.size,
            cosigned_by,
        })
    }

    /// The roster and every key the chain vouches for.
    fn chain_keys(
        &self,
        talks: backchannel_codec::TalksId,
    ) -> Result<(&Roster, Vec<ChainKey>), EvidenceError> {
        let first = self
            .chain
            .first()
            .ok_or_else(|| EvidenceError::Roster("the chain is empty".into()))?;
        let Payload::Roster(roster) = &first.unverified().payload else {
            return Err(EvidenceError::Roster(
                "the first statement is not a roster".into(),
            ));
        };
        VerifiedRoster::verify(talks, first).map_err(|e| EvidenceError::Roster(e.to_string()))?;
        let mut keys = Vec::new();
        for p in &roster.parties {
            keys.push(ChainKey {
                key: p.talks_authority_key,
                party: p.party,
                holder: Holder::Authority,
                not_after: None,
                passed: false,
            });
        }
        for m in &roster.members {
            keys.push(ChainKey {
                key: m.identity_key,
                party: m.party,
                holder: Holder::Identity(m.principal),
                not_after: None,
                passed: false,
            });
            keys.extend(m.devices.iter().map(|d| ChainKey {
                key: *d,
                party: m.party,
                holder: Holder::Device(m.principal),
                not_after: None,
                passed: false,
            }));
        }
        for cert in &self.chain[1..] {
            let author = cert.unverified().author;
            // A key passed on earlier in the chain signs no later link.
            let signer = *keys
                .iter()
                .find(|k| k.key.id() == author && !k.passed)
                .ok_or(EvidenceError::Chain)?;
            let verified = cert
                .verify(talks, &signer.key)
                .map_err(|_| EvidenceError::Chain)?;
            let certified = match &verified.statement().payload {
                Payload::MemberCert(c) => Some(c.identity_key),
                Payload::DeviceCert(c) => Some(c.device_key),
                Payload::AuthorityPassed(p) => Some(p.new_key),
                _ => None,
            };
            // One holder and one role per key, as in replay.
            if certified.is_some_and(|k| keys.iter().any(|x| x.key == k)) {
                return Err(EvidenceError::Chain);
            }
            match &verified.statement().payload {
                // A member certificate, by its party's talks authority.
                Payload::MemberCert(c)
                    if signer.holder == Holder::Authority
                        && c.party == signer.party
                        && roster.party_kind(c.party) == Some(c.role.party_kind())
                        && !principal_of_other_party(&keys, c.principal, c.party) =>
                {
                    keys.push(ChainKey {
                        key: c.identity_key,
                        party: c.party,
                        holder: Holder::Identity(c.principal),
                        not_after: c.not_after,
                        passed: false,
                    });
                }
                // A device certificate, by the member's own identity key.
                Payload::DeviceCert(c) if signer.holder == Holder::Identity(c.principal) => {
                    keys.push(ChainKey {
                        key: c.device_key,
                        party: signer.party,
                        holder: Holder::Device(c.principal),
                        not_after: Some(c.not_after),
                        passed: false,
                    });
                }
                // A talks authority passed on (replay rule 16): handed over by
                // the old key, or re-appointed by another mediator team with
                // the party's long-term authority. Endorsements, and whether
                // the old key was still current, are for replay of the
                // whole record to decide, as revocations are.
                Payload::AuthorityPassed(p)
                    if signer.holder == Holder::Authority
                        && passes_in_chain(talks, roster, &keys, &signer, p) =>
                {
                    for k in keys.iter_mut().filter(|k| k.key.id() == p.old_key) {
                        k.passed = true;
                    }
                    keys.push(ChainKey {
                        key: p.new_key,
                        party: p.party,
                        holder: Holder::Authority,
                        not_after: None,
                        passed: false,
                    });
                }
                _ => return Err(EvidenceError::Chain),
            }
        }
        Ok((roster, keys))
    }
}

/// What two bundles prove together: one key signed two different
/// statements under one statement id, both in the log (replay's
/// equivocation, shown to an arbiter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenEquivocation {
    /// The statement id both carry.
    pub statement: StatementId,
    /// The key that signed both.
    pub author: KeyId,
    /// The party it signs for.
    pub party: PartyId,
    /// The seq of the earlier statement.
    pub first: u64,
    /// The seq of the later one.
    pub later: u64,
}

/// Why two bundles do not prove an equivocation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EquivocationError {
    /// The first bundle does not verify.
    #[error("the first bundle does not verify: {0}")]
    FirstBundle(EvidenceError),
    /// The second bundle does not verify.
    #[error("the second bundle does not verify: {0}")]
    SecondBundle(EvidenceError),
    /// The statements belong to different talks.
    #[error("the two statements belong to different talks")]
    OtherTalks,
    /// The statements carry different ids.
    #[error("the two statements carry different statement ids")]
    OtherId,
    /// The statements are signed by different keys.
    #[error("the two statements are signed by different keys")]
    OtherAuthor,
    /// The statements are the same signed bytes.
    #[error("the two bundles open the same signed bytes: a copy, not an equivocation")]
    SameBytes,
}

/// Verifies that two bundles (of one log: same node and log key) prove an
/// equivocation: each verifies offline, and their statements carry the
/// same talks, id and author key, with different signed bytes. The bundle
/// format is unchanged; an equivocation is two ordinary bundles.
pub fn verify_equivocation(
    first: &EvidenceBundle,
    second: &EvidenceBundle,
    node: &NodeOrigin,
    log_key: &PublicKey,
    witnesses: &[CosignerKey],
) -> Result<ProvenEquivocation, EquivocationError> {
    let a = first
        .verify(node, log_key, witnesses)
        .map_err(EquivocationError::FirstBundle)?;
    let b = second
        .verify(node, log_key, witnesses)
        .map_err(EquivocationError::SecondBundle)?;
    let (sa, sb) = (a.statement.statement(), b.statement.statement());
    if sa.talks != sb.talks {
        return Err(EquivocationError::OtherTalks);
    }
    if sa.id != sb.id {
        return Err(EquivocationError::OtherId);
    }
    if sa.author != sb.author {
        return Err(EquivocationError::OtherAuthor);
    }
    if a.statement.signed().as_bytes() == b.statement.signed().as_bytes() {
        return Err(EquivocationError::SameBytes);
    }
    Ok(ProvenEquivocation {
        statement: sa.id,
        author: sa.author,
        party: a.party,
        first: a.seq.min(b.seq),
        later: a.seq.max(b.seq),
    })
}

/// Whether an authority pass by `signer` holds as a chain link: the old key
/// is a talks authority of the party the chain knows and has not passed on
/// already; handed over by that key, or re-appointed by another mediator
/// team's talks authority; the new key is no roster long-term authority
/// key; the new key's signature and (re-appointed) the long-term
/// authority's certification verify.
fn passes_in_chain(
    talks: backchannel_codec::TalksId,
    roster: &Roster,
    keys: &[ChainKey],
    signer: &ChainKey,
    p: &AuthorityPassed,
) -> bool {
    let Some(entry) = roster.parties.iter().find(|e| e.party == p.party) else {
        return false;
    };
    let old_known = keys.iter().any(|k| {
        k.holder == Holder::Authority && k.party == p.party && k.key.id() == p.old_key && !k.passed
    });
    let new_is_long_term = roster.parties.iter().any(|e| e.authority_key == p.new_key);
    let author_fits = match p.how() {
        PassedHow::HandedOver => signer.party == p.party && signer.key.id() == p.old_key,
        PassedHow::Reappointed => {
            signer.party != p.party && roster.party_kind(signer.party) == Some(PartyKind::Mediator)
        }
    };
    old_known && !new_is_long_term && author_fits && p.verify(talks, &entry.authority_key).is_ok()
}

/// Whether `principal` is already bound to a party other than `party`
/// (a principal belongs to one party for the life of the talks).
fn principal_of_other_party(keys: &[ChainKey], principal: PrincipalId, party: PartyId) -> bool {
    keys.iter().any(|k| match k.holder {
        Holder::Identity(p) | Holder::Device(p) => p == principal && k.party != party,
        Holder::Authority => k.party.0 == principal.0,
    })
}

/// Who holds a key the chain vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Authority,
    Identity(PrincipalId),
    Device(PrincipalId),
}

#[derive(Debug, Clone, Copy)]
struct ChainKey {
    key: PublicKey,
    party: PartyId,
    holder: Holder,
    /// From its certificate, compared with the bundle's node time.
    not_after: Option<u64>,
    /// A talks authority an authority pass earlier in the chain passed on:
    /// it vouches for nothing after that link, passes nothing again and
    /// does not author the statement.
    passed: bool,
}

impl ChainKey {
    fn expired_at(&self, node_time: u64) -> bool {
        self.not_after.is_some_and(|t| node_time > t)
    }
}

impl Encode for EvidenceBundle {
    fn encode(&self, w: &mut Writer) {
        w.u8(EVIDENCE_VERSION);
        w.bytes(self.statement.as_bytes());
        w.raw(&self.salt.0);
        w.raw(&self.header.to_bytes());
        w.u64(self.seq);
        w.u64(self.node_time);
        self.proof.encode(w);
        w.bytes(&self.checkpoint_note);
        w.len(self.chain.len());
        for s in &self.chain {
            w.bytes(s.as_bytes());
        }
    }
}

impl Decode for EvidenceBundle {
    const MIN_LEN: usize = 1 + 4 + 32 + SIGNED_HEADER_LEN + 16;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("evidence version", EVIDENCE_VERSION)?;
        let statement = SignedStatement::decode(r.bytes("statement", MAX_STATEMENT_LEN)?)?;
        let salt = Salt(r.array("salt")?);
        let header = SignedHeader::decode(r.take(SIGNED_HEADER_LEN, "signed header")?)?;
        let seq = r.u64("seq")?;
        let node_time = r.u64("node time")?;
        let proof = InclusionProof::decode(r)?;
        let checkpoint_note = r.bytes("checkpoint note", MAX_NOTE_LEN)?.to_vec();
        let n = r.len("chain", MAX_CHAIN, 4)?;
        let mut chain = Vec::with_capacity(n);
        for _ in 0..n {
            chain.push(SignedStatement::decode(
                r.bytes("chain statement", MAX_STATEMENT_LEN)?,
            )?);
        }
        Ok(Self {
            statement,
            salt,
            header,
            seq,
            node_time,
            proof,
            checkpoint_note,
            chain,
        })
    }
}
