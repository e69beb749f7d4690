//! Envelope headers, body padding and commitments: what the node may read.
//!
//! ```text
//! header        = version:u8 (=1) talks:[16] room:[16] sender:[32] kind:u8
//!                 severity:u8 ack_seq:u64 idempotency_key:[16] body_len:u32
//!                 body_hash:[32] commitment:[32]                 (159 bytes)
//! signed header = header signature:[64]                          (223 bytes)
//! signature     = Ed25519(sender, "backchannel/v1/envelope" ‖ header)
//! header hash   = SHA-256(signed header)            (what the log leaf binds)
//! body          = len:u32 message zero-padding      (exactly body_len bytes)
//! commitment    = SHA-256("backchannel/v1/commitment" ‖ salt:[32] ‖ plaintext)
//!                 for a body that carries a statement or a talk message;
//!                 32 random bytes otherwise
//! ```

use backchannel_codec::{Decode, DecodeError, Encode, Reader, RoomId, TalksId, Writer};
use backchannel_crypto::{
    BadSignature, Context, Digest, KeyId, PublicKey, SignError, Signature, Signer, ToVerify,
    VerifyingKey, sha256, verify_many,
};
use rand_core::CryptoRngCore;
use thiserror::Error;

/// The header format version.
pub const HEADER_VERSION: u8 = 1;
/// The signature context of envelope headers (and of `node_tick`s, signed
/// by the node's log key).
pub const ENVELOPE_CONTEXT: Context = Context::new("backchannel/v1/envelope");
/// The commitment context.
pub const COMMITMENT_CONTEXT: Context = Context::new("backchannel/v1/commitment");
/// Encoded header length, without the signature.
pub const HEADER_LEN: usize = 1 + 16 + 16 + 32 + 1 + 1 + 8 + 16 + 4 + 32 + 32;
/// Encoded signed header length.
pub const SIGNED_HEADER_LEN: usize = HEADER_LEN + 64;
/// Body size buckets: every body is padded to one of these, so the node
/// learns only a coarse size. The largest is `MAX_BODY`.
pub const BODY_BUCKETS: [u32; 6] = [1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20];
/// The largest body (1 MiB); larger content goes in blobs.
pub const MAX_BODY: u32 = 1 << 20;

/// The kind of an envelope, as the node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An MLS application message (talk or a statement: the node cannot tell).
    MlsApp,
    /// An MLS handshake (proposal or commit).
    MlsHandshake,
    /// An MLS Welcome.
    Welcome,
    /// A hotline alert, delivered ahead of everything.
    Alert(Severity),
    /// An acknowledgement of the envelope at this seq.
    Ack(u64),
    /// A node tick, sent and signed by the node's log key.
    NodeTick,
}

/// An alert's severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// For information.
    Notice = 1,
    /// Needs a human acknowledgement soon.
    Urgent = 2,
    /// Needs a human acknowledgement now; escalates when unanswered.
    Flash = 3,
}

impl Kind {
    fn codes(self) -> (u8, u8, u64) {
        match self {
            Kind::MlsApp => (1, 0, 0),
            Kind::MlsHandshake => (2, 0, 0),
            Kind::Welcome => (3, 0, 0),
            Kind::Alert(s) => (4, s as u8, 0),
            Kind::Ack(seq) => (5, 0, seq),
            Kind::NodeTick => (6, 0, 0),
        }
    }

    fn from_codes(kind: u8, severity: u8, ack: u64) -> Result<Self, DecodeError> {
        let k = match (kind, severity) {
            (1, 0) => Kind::MlsApp,
            (2, 0) => Kind::MlsHandshake,
            (3, 0) => Kind::Welcome,
            (4, 1) => Kind::Alert(Severity::Notice),
            (4, 2) => Kind::Alert(Severity::Urgent),
            (4, 3) => Kind::Alert(Severity::Flash),
            (5, 0) => Kind::Ack(ack),
            (6, 0) => Kind::NodeTick,
            (1..=6, s) => {
                return Err(DecodeError::UnknownValue {
                    field: "severity",
                    value: u64::from(s),
                });
            }
            (k, _) => {
                return Err(DecodeError::UnknownValue {
                    field: "kind",
                    value: u64::from(k),
                });
            }
        };
        if !matches!(k, Kind::Ack(_)) && ack != 0 {
            return Err(DecodeError::Invalid {
                field: "ack seq",
                reason: "must be zero unless the kind is ack",
            });
        }
        Ok(k)
    }
}

/// A commitment to a body's plaintext (or 32 random bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Commitment(pub [u8; 32]);

/// The 32-byte salt of a commitment: fresh per envelope, kept by every
/// recipient with the plaintext, revealed only to open that one plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Salt(pub [u8; 32]);

impl Salt {
    /// A fresh salt.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut s = [0u8; 32];
        rng.fill_bytes(&mut s);
        Self(s)
    }
}

impl Commitment {
    /// `SHA-256("backchannel/v1/commitment" ‖ salt ‖ plaintext)`.
    pub fn to_plaintext(salt: &Salt, plaintext: &[u8]) -> Self {
        Self(Digest::with_context(COMMITMENT_CONTEXT, &[&salt.0, plaintext]).0)
    }

    /// 32 random bytes, for envelopes that carry no plaintext (handshakes,
    /// welcomes, acks, ticks), so the node cannot tell them from the rest.
    pub fn random(rng: &mut impl CryptoRngCore) -> Self {
        let mut c = [0u8; 32];
        rng.fill_bytes(&mut c);
        Self(c)
    }

    /// Whether `salt` and `plaintext` open this commitment.
    pub fn opens(&self, salt: &Salt, plaintext: &[u8]) -> bool {
        Self::to_plaintext(salt, plaintext) == *self
    }
}

/// The header of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The talks.
    pub talks: TalksId,
    /// The room.
    pub room: RoomId,
    /// The sending device key (the node's log key for a `node_tick`).
    pub sender: KeyId,
    /// The kind.
    pub kind: Kind,
    /// Chosen by the sender; a retry reuses it (see the node issue).
    pub idempotency_key: [u8; 16],
    /// The body's length: always one of [`BODY_BUCKETS`].
    pub body_len: u32,
    /// SHA-256 of the (padded) body.
    pub body_hash: Digest,
    /// See [`Commitment`].
    pub commitment: Commitment,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// The body length is not a bucket.
    #[error("body length {0} is not one of the size buckets")]
    NotABucket(u32),
    /// The signer is not the header's sender.
    #[error("the signing key is not the header's sender")]
    WrongSigner,
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl Header {
    /// The canonical header (without signature).
    pub fn encode_unsigned(&self) -> [u8; HEADER_LEN] {
        let mut w = Writer::with_capacity(HEADER_LEN);
        let (kind, severity, ack) = self.kind.codes();
        w.u8(HEADER_VERSION);
        self.talks.encode(&mut w);
        self.room.encode(&mut w);
        self.sender.encode(&mut w);
        w.u8(kind);
        w.u8(severity);
        w.u64(ack);
        w.raw(&self.idempotency_key);
        w.u32(self.body_len);
        self.body_hash.encode(&mut w);
        w.raw(&self.commitment.0);
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(w.as_bytes());
        out
    }

    /// Signs the header with the sender's device key (or the node's log key
    /// for a tick).
    pub fn sign(self, signer: &dyn Signer) -> Result<SignedHeader, HeaderError> {
        if !BODY_BUCKETS.contains(&self.body_len) {
            return Err(HeaderError::NotABucket(self.body_len));
        }
        if signer.public_key().id() != self.sender {
            return Err(HeaderError::WrongSigner);
        }
        let unsigned = self.encode_unsigned();
        let signature = signer.sign(ENVELOPE_CONTEXT, &unsigned)?;
        Ok(SignedHeader {
            header: self,
            signature,
        })
    }
}

/// A header with its signature, as submitted and logged. Decoding does not
/// check the signature: the node looks up the sender first (cheap checks
/// before the one signature check), then calls [`SignedHeader::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedHeader {
    header: Header,
    signature: Signature,
}

impl SignedHeader {
    /// The header fields (not yet verified).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The canonical signed header: 159 header bytes then 64 signature bytes.
    pub fn to_bytes(&self) -> [u8; SIGNED_HEADER_LEN] {
        let mut out = [0u8; SIGNED_HEADER_LEN];
        out[..HEADER_LEN].copy_from_slice(&self.header.encode_unsigned());
        out[HEADER_LEN..].copy_from_slice(self.signature.as_bytes());
        out
    }

    /// SHA-256 of the signed header: what the log leaf binds.
    pub fn hash(&self) -> Digest {
        sha256(&self.to_bytes())
    }

    /// Parses a signed header strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("header version", HEADER_VERSION)?;
        let talks = TalksId::decode(&mut r)?;
        let room = RoomId::decode(&mut r)?;
        let sender = KeyId::decode(&mut r)?;
        let kind = r.u8("kind")?;
        let severity = r.u8("severity")?;
        let ack = r.u64("ack seq")?;
        let kind = Kind::from_codes(kind, severity, ack)?;
        let idempotency_key = r.array("idempotency key")?;
        let body_len = r.u32("body length")?;
        if !BODY_BUCKETS.contains(&body_len) {
            return Err(DecodeError::Invalid {
                field: "body length",
                reason: "not a size bucket",
            });
        }
        let body_hash = Digest::decode(&mut r)?;
        let commitment = Commitment(r.array("commitment")?);
        let signature = Signature::decode(&mut r)?;
        r.finish()?;
        Ok(Self {
            header: Header {
                talks,
                room,
                sender,
                kind,
                idempotency_key,
                body_len,
                body_hash,
                commitment,
            },
            signature,
        })
    }

    /// Verifies the signature by `sender`, whose id must be the header's sender.
    pub fn verify(&self, sender: &PublicKey) -> Result<(), BadSignature> {
        self.verify_with(&sender.verifying_key())
    }

    /// [`SignedHeader::verify`] under a key whose point the caller keeps
    /// (the node keeps one per connection).
    pub fn verify_with(&self, sender: &VerifyingKey) -> Result<(), BadSignature> {
        if sender.public_key().id() != self.header.sender {
            return Err(BadSignature {
                context: ENVELOPE_CONTEXT,
            });
        }
        sender.verify(
            ENVELOPE_CONTEXT,
            &self.header.encode_unsigned(),
            &self.signature,
        )
    }

    /// Verifies each `(header, sender)` of `items` as
    /// [`SignedHeader::verify`] does, with the same verdict for each, in
    /// order: the sender check first, then the signatures of those that
    /// pass through [`verify_many`] (batches, split where one fails,
    /// ZIP-215 like single verification; `rng` draws their coefficients
    /// and must be unpredictable to whoever made the signatures).
    pub fn verify_batch(
        items: &[(&SignedHeader, PublicKey)],
        rng: &mut impl CryptoRngCore,
    ) -> Vec<Result<(), BadSignature>> {
        // The signed bytes of each header whose sender is the key offered.
        let unsigned: Vec<Option<_>> = items
            .iter()
            .map(|(h, sender)| (sender.id() == h.header.sender).then(|| h.header.encode_unsigned()))
            .collect();
        let to_verify: Vec<ToVerify<'_>> = items
            .iter()
            .zip(&unsigned)
            .filter_map(|((h, sender), message)| {
                Some(ToVerify {
                    key: sender,
                    context: ENVELOPE_CONTEXT,
                    message: message.as_ref()?,
                    signature: &h.signature,
                })
            })
            .collect();
        let mut checked = verify_many(&to_verify, rng).into_iter();
        items
            .iter()
            .zip(&unsigned)
            .map(
                |((h, sender), message)| match message.as_ref().and_then(|_| checked.next()) {
                    Some(verdict) => verdict,
                    // Another key than the header's sender: `verify`'s verdict.
                    None => h.verify(sender),
                },
            )
            .collect()
    }

    /// Checks that `body` is the body this header describes (length and hash).
    pub fn check_body(&self, body: &[u8]) -> Result<(), BodyError> {
        if body.len() != self.header.body_len as usize {
            return Err(BodyError::Length);
        }
        if sha256(body) != self.header.body_hash {
            return Err(BodyError::Hash);
        }
        Ok(())
    }
}

/// Why a body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BodyError {
    /// The message is larger than the largest bucket allows.
    #[error("message of {0} bytes is over the {MAX_BODY}-byte body limit; send it as a blob")]
    TooLarge(usize),
    /// The body's length is not the header's.
    #[error("body length differs from the header's")]
    Length,
    /// The body's hash is not the header's.
    #[error("body hash differs from the header's")]
    Hash,
    /// The body is not a length-prefixed message followed by zeros.
    #[error("body is not a message followed by zero padding")]
    Padding,
}

/// Pads `message` into a body: `len:u32 ‖ message ‖ zeros`, to the smallest
/// bucket that holds it.
pub fn pad_body(message: &[u8]) -> Result<Vec<u8>, BodyError> {
    let need = message.len() + 4;
    let bucket = BODY_BUCKETS
        .iter()
        .copied()
        .find(|b| *b as usize >= need)
        .ok_or(BodyError::TooLarge(message.len()))?;
    let mut body = Vec::with_capacity(bucket as usize);
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    body.resize(bucket as usize, 0);
    Ok(body)
}

/// The message inside a padded body. The body must be exactly what
/// [`pad_body`] makes of that message: the smallest bucket that holds it,
/// with all-zero padding (one body per message).
pub fn unpad_body(body: &[u8]) -> Result<&[u8], BodyError> {
    let [a, b, c, d, ..] = *body else {
        return Err(BodyError::Padding);
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    let end = len
        .checked_add(4)
        .filter(|e| *e <= body.len())
        .ok_or(BodyError::Padding)?;
    let smallest = BODY_BUCKETS.iter().find(|b| **b as usize >= end);
    if smallest.map(|b| *b as usize) != Some(body.len()) {
        return Err(BodyError::Padding);
    }
    if body[end..].iter().any(|b| *b != 0) {
        return Err(BodyError::Padding);
    }
    Ok(&body[4..end])
}
