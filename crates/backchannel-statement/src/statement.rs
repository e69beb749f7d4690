//! The statement frame: one canonical, versioned, signed encoding for every
//! formal act.
//!
//! Layout (`docs/formats.md` § Statements):
//!
//! ```text
//! frame     = version:u8 (=1) type:u16 talks:[16] statement:[16] author:[32]
//!             acting_for:[16] audience:list<audience> checkpoint_size:u64
//!             checkpoint_root:[32] markings payload:bytes
//! signed    = frame signature:[64]
//! signature = Ed25519(author, "backchannel/v1/statement/<type>" ‖ frame)
//! ```

use backchannel_codec::{
    Decode, DecodeError, Encode, PartyId, Reader, RoomId, StatementId, TalksId, Writer,
    check_strictly_sorted,
};
use backchannel_crypto::{
    BadSignature, Digest, KeyId, PublicKey, SignError, Signature, Signer, ToVerify, sha256,
    verify_many,
};
use rand_core::CryptoRngCore;
use thiserror::Error;

use crate::Markings;
use crate::payload::{Payload, StatementType};

/// The statement format version this crate writes and reads.
pub const STATEMENT_VERSION: u8 = 1;
/// The most audience entries (rooms and parties) one statement may name.
pub const MAX_AUDIENCE: usize = 64;
/// The largest payload (256 KiB, a quarter of the largest body bucket, so
/// a statement with its frame always fits an envelope).
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// Who a statement may be shown or conveyed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Audience {
    /// Everyone in this room.
    Room(RoomId),
    /// Every member of this party.
    Party(PartyId),
}

impl Encode for Audience {
    fn encode(&self, w: &mut Writer) {
        match self {
            Audience::Room(r) => {
                w.u8(1);
                r.encode(w);
            }
            Audience::Party(p) => {
                w.u8(2);
                p.encode(w);
            }
        }
    }
}

impl Decode for Audience {
    const MIN_LEN: usize = 17;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("audience kind")? {
            1 => Ok(Audience::Room(RoomId::decode(r)?)),
            2 => Ok(Audience::Party(PartyId::decode(r)?)),
            v => Err(DecodeError::UnknownValue {
                field: "audience kind",
                value: u64::from(v),
            }),
        }
    }
}

/// The size and root hash of the latest checkpoint the author had verified
/// when signing (size 0 and an all-zero root before any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointRef {
    /// Tree size.
    pub size: u64,
    /// Root hash at that size.
    pub root: Digest,
}

impl CheckpointRef {
    /// No checkpoint verified yet.
    pub const NONE: CheckpointRef = CheckpointRef {
        size: 0,
        root: Digest([0; 32]),
    };
}

/// The fields of a statement, before signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The talks it belongs to.
    pub talks: TalksId,
    /// Random id chosen by the author.
    pub id: StatementId,
    /// The signing key's id.
    pub author: KeyId,
    /// The party the author acts for.
    pub acting_for: PartyId,
    /// Rooms and parties it may be shown or conveyed to; sorted and unique.
    audience: Vec<Audience>,
    /// The latest checkpoint the author verified.
    pub checkpoint: CheckpointRef,
    /// Markings.
    pub markings: Markings,
    /// The act itself.
    pub payload: Payload,
}

/// Why a statement could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BuildError {
    /// Audience is empty or over [`MAX_AUDIENCE`].
    #[error("a statement's audience must name 1 to {MAX_AUDIENCE} rooms or parties")]
    Audience,
    /// The encoded payload is over [`MAX_PAYLOAD`].
    #[error("payload is over {MAX_PAYLOAD} bytes")]
    PayloadTooLarge,
    /// The signing key is not the statement's author.
    #[error("the signing key is not the statement's author key")]
    WrongSigner,
    /// The signer failed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl Statement {
    /// A statement with a fresh random id.
    #[allow(clippy::too_many_arguments)] // A frame has this many fields; a builder would only rename them.
    pub fn new(
        rng: &mut impl CryptoRngCore,
        talks: TalksId,
        author: KeyId,
        acting_for: PartyId,
        mut audience: Vec<Audience>,
        checkpoint: CheckpointRef,
        markings: Markings,
        payload: Payload,
    ) -> Result<Self, BuildError> {
        audience.sort();
        audience.dedup();
        if audience.is_empty() || audience.len() > MAX_AUDIENCE {
            return Err(BuildError::Audience);
        }
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        Ok(Self {
            talks,
            id: StatementId(id),
            author,
            acting_for,
            audience,
            checkpoint,
            markings,
            payload,
        })
    }

    /// The audience, sorted.
    pub fn audience(&self) -> &[Audience] {
        &self.audience
    }

    /// The statement's type.
    pub fn statement_type(&self) -> StatementType {
        self.payload.statement_type()
    }

    /// The canonical frame (the bytes that are signed, after the context).
    pub fn frame_bytes(&self) -> Result<Vec<u8>, BuildError> {
        let payload = self.payload.to_canonical_bytes();
        if payload.len() > MAX_PAYLOAD {
            return Err(BuildError::PayloadTooLarge);
        }
        let mut w = Writer::with_capacity(256 + payload.len());
        w.u8(STATEMENT_VERSION);
        w.u16(self.statement_type().code());
        self.talks.encode(&mut w);
        self.id.encode(&mut w);
        self.author.encode(&mut w);
        self.acting_for.encode(&mut w);
        w.list(&self.audience);
        w.u64(self.checkpoint.size);
        self.checkpoint.root.encode(&mut w);
        self.markings.encode(&mut w);
        w.bytes(&payload);
        Ok(w.into_bytes())
    }

    /// Signs the statement. The signer's key id must be the author.
    pub fn sign(self, signer: &dyn Signer) -> Result<SignedStatement, BuildError> {
        if signer.public_key().id() != self.author {
            return Err(BuildError::WrongSigner);
        }
        let frame = self.frame_bytes()?;
        let signature = signer.sign(self.statement_type().context(), &frame)?;
        let mut bytes = frame;
        bytes.extend_from_slice(signature.as_bytes());
        Ok(SignedStatement {
            statement: self,
            signature,
            bytes,
        })
    }
}

fn decode_frame(r: &mut Reader<'_>) -> Result<Statement, DecodeError> {
    r.version("statement version", STATEMENT_VERSION)?;
    let code = r.u16("statement type")?;
    let ty = StatementType::from_code(code).ok_or(DecodeError::UnknownValue {
        field: "statement type",
        value: u64::from(code),
    })?;
    let talks = TalksId::decode(r)?;
    let id = StatementId::decode(r)?;
    let author = KeyId::decode(r)?;
    let acting_for = PartyId::decode(r)?;
    let audience: Vec<Audience> = r.list("audience", MAX_AUDIENCE)?;
    if audience.is_empty() {
        return Err(DecodeError::Invalid {
            field: "audience",
            reason: "empty",
        });
    }
    check_strictly_sorted(&audience, "audience", |a| *a)?;
    let checkpoint = CheckpointRef {
        size: r.u64("checkpoint size")?,
        root: Digest::decode(r)?,
    };
    let markings = Markings::decode(r)?;
    let payload_bytes = r.bytes("payload", MAX_PAYLOAD)?;
    let payload = Payload::decode_as(ty, payload_bytes)?;
    Ok(Statement {
        talks,
        id,
        author,
        acting_for,
        audience,
        checkpoint,
        markings,
        payload,
    })
}

/// A statement with its signature, as sent and logged. Not yet verified:
/// see [`SignedStatement::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedStatement {
    statement: Statement,
    signature: Signature,
    bytes: Vec<u8>,
}

impl SignedStatement {
    /// Parses a signed statement strictly (every field canonical, no
    /// trailing bytes). The signature is not checked.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let statement = decode_frame(&mut r)?;
        let signature = Signature::decode(&mut r)?;
        r.finish()?;
        Ok(Self {
            statement,
            signature,
            bytes: bytes.to_vec(),
        })
    }

    /// The canonical bytes (frame ‖ signature).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The frame bytes (what was signed, after the context).
    pub fn frame(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - 64]
    }

    /// SHA-256 of the canonical bytes: what acceptances and evidence cite.
    pub fn hash(&self) -> Digest {
        sha256(&self.bytes)
    }

    /// The unverified fields, e.g. to find the author's key.
    pub fn unverified(&self) -> &Statement {
        &self.statement
    }

    /// The signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Verifies the statement as one of `talks`, signed by `author`.
    ///
    /// Checks that the frame names `talks`, that `author` is the key the
    /// frame names, and the signature under the context of the frame's
    /// type. Whether `author` was entitled to sign, and was still valid at
    /// the statement's log position, is for replay (`backchannel-core`).
    pub fn verify(
        &self,
        talks: TalksId,
        author: &PublicKey,
    ) -> Result<VerifiedStatement, VerifyError> {
        if self.statement.talks != talks {
            return Err(VerifyError::OtherTalks);
        }
        if author.id() != self.statement.author {
            return Err(VerifyError::WrongKey);
        }
        author.verify(
            self.statement.statement_type().context(),
            self.frame(),
            &self.signature,
        )?;
        Ok(VerifiedStatement(self.clone()))
    }

    /// Verifies each `(statement, author)` of `items` as
    /// [`SignedStatement::verify`] does, with the same verdict for each, in
    /// order: the talks and author checks first, then the signatures of
    /// those that pass through [`verify_many`] (batches, split where one
    /// fails, ZIP-215 like single verification; `rng` draws their
    /// coefficients and must be unpredictable to whoever made the
    /// signatures).
    pub fn verify_batch(
        talks: TalksId,
        items: &[(&SignedStatement, PublicKey)],
        rng: &mut impl CryptoRngCore,
    ) -> Vec<Result<VerifiedStatement, VerifyError>> {
        let pre: Vec<Option<VerifyError>> = items
            .iter()
            .map(|(s, author)| {
                if s.statement.talks != talks {
                    Some(VerifyError::OtherTalks)
                } else if author.id() != s.statement.author {
                    Some(VerifyError::WrongKey)
                } else {
                    None
                }
            })
            .collect();
        let to_verify: Vec<ToVerify<'_>> = items
            .iter()
            .zip(&pre)
            .filter(|(_, refused)| refused.is_none())
            .map(|((s, author), _)| ToVerify {
                key: author,
                context: s.statement.statement_type().context(),
                message: s.frame(),
                signature: &s.signature,
            })
            .collect();
        let mut checked = verify_many(&to_verify, rng).into_iter();
        items
            .iter()
            .zip(pre)
            .map(|((s, author), refused)| match refused {
                Some(e) => Err(e),
                None => match checked.next() {
                    Some(Ok(())) => Ok(VerifiedStatement((*s).clone())),
                    Some(Err(e)) => Err(e.into()),
                    // One verdict per statement checked: not reached.
                    None => s.verify(talks, author),
                },
            })
            .collect()
    }
}

/// Why a statement did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// The frame names other talks.
    #[error("the statement belongs to other talks")]
    OtherTalks,
    /// The key offered is not the frame's author key.
    #[error("the key offered is not the statement's author key")]
    WrongKey,
    /// The signature is bad.
    #[error(transparent)]
    BadSignature(#[from] BadSignature),
    /// The room it was posted to is outside its audience.
    #[error("the statement was posted to a room outside its audience")]
    OutsideAudience,
}

/// A statement whose signature verified for its talks. Only
/// [`SignedStatement::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedStatement(SignedStatement);

impl VerifiedStatement {
    /// The verified fields.
    pub fn statement(&self) -> &Statement {
        &self.0.statement
    }

    /// The signed form.
    pub fn signed(&self) -> &SignedStatement {
        &self.0
    }

    /// Checks that the statement may appear in `room`, whose members belong
    /// to `room_parties`: the room is named in the audience, or every party
    /// with a member in the room is. A statement moved into a room outside
    /// its audience fails here.
    pub fn check_room(&self, room: RoomId, room_parties: &[PartyId]) -> Result<(), VerifyError> {
        let aud = self.statement().audience();
        let named = aud.contains(&Audience::Room(room));
        let by_party = !room_parties.is_empty()
            && room_parties
                .iter()
                .all(|p| aud.contains(&Audience::Party(*p)));
        if named || by_party {
            Ok(())
        } else {
            Err(VerifyError::OutsideAudience)
        }
    }
}
