//! Validation of one submitted envelope, before it joins a group commit.
//!
//! Checks run cheapest first, and the one Ed25519 verification per
//! envelope comes only after every check that costs nothing (ARCHITECTURE.md
//! states this budget): sizes, header decoding, the talks, the sender being
//! the connection's own key, the access list (the key, its rooms, its
//! kind), the body length; then the header signature; then the body hash.
//! An envelope that fails here never reaches a batch, so one bad envelope
//! can never fail the others.

use backchannel_codec::{DecodeError, TalksId};
use backchannel_crypto::{VerifyingKey, sha256};
use backchannel_statement::access_list::{AccessList, FLAG_DEVICE};
use backchannel_statement::header::{MAX_BODY, SIGNED_HEADER_LEN};
use backchannel_statement::{Kind, SignedHeader};
use backchannel_store::Submission;
use thiserror::Error;

/// Why a submitted envelope was refused. Each maps to an HTTP status and a
/// stable error code ([`SubmitError::status`], [`SubmitError::code`]);
/// messages never name talks, rooms or keys.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubmitError {
    /// The header is not 223 bytes or does not decode.
    #[error("the envelope header is malformed: {0}")]
    MalformedHeader(DecodeError),
    /// The body is larger than `MAX_BODY`.
    #[error("the body is larger than {MAX_BODY} bytes; send large content as a blob")]
    BodyTooLarge,
    /// The header names other talks than the request.
    #[error("the header names other talks than the request path")]
    OtherTalks,
    /// The header's sender is not the key the connection authenticated.
    #[error("the header's sender must be the key this connection authenticated with")]
    NotConnectionKey,
    /// The connection's key is not on the talks' access list (answered
    /// exactly as for unknown talks).
    #[error("not found")]
    NotOnAccessList,
    /// The key is on the list but not as a device (e.g. a designated signer).
    #[error("this key may not send envelopes")]
    NotADevice,
    /// The key may not post to the header's room.
    #[error("this key may not post to that room")]
    RoomNotAllowed,
    /// Clients may not send node ticks.
    #[error("node ticks are sent only by the node")]
    KindNotAllowed,
    /// The body's length is not the header's.
    #[error("the body's length differs from the header's body length")]
    BodyLength,
    /// The header signature does not verify.
    #[error("the envelope header's signature does not verify")]
    BadSignature,
    /// The body's hash is not the header's.
    #[error("the body's SHA-256 differs from the header's body hash")]
    BodyHash,
}

impl SubmitError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            SubmitError::MalformedHeader(_)
            | SubmitError::OtherTalks
            | SubmitError::BodyLength
            | SubmitError::BodyHash => 400,
            SubmitError::BadSignature => 401,
            SubmitError::NotConnectionKey
            | SubmitError::NotADevice
            | SubmitError::RoomNotAllowed
            | SubmitError::KindNotAllowed => 403,
            SubmitError::NotOnAccessList => 404,
            SubmitError::BodyTooLarge => 413,
        }
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            SubmitError::MalformedHeader(_) => "malformed",
            SubmitError::BodyTooLarge => "too_large",
            SubmitError::OtherTalks => "malformed",
            SubmitError::NotConnectionKey => "sender_not_connection_key",
            SubmitError::NotOnAccessList => "not_found",
            SubmitError::NotADevice | SubmitError::RoomNotAllowed | SubmitError::KindNotAllowed => {
                "forbidden"
            }
            SubmitError::BodyLength | SubmitError::BodyHash => "body_mismatch",
            SubmitError::BadSignature => "bad_envelope_signature",
        }
    }
}

/// Validates one envelope submitted to `talks` on a connection
/// authenticated as `connection_key` (kept decompressed for the
/// connection's life: one key decompression per connection, not per
/// envelope), against the talks' access list. On
/// success, the submission to sequence; the body moves into it (it is
/// never copied on the way to storage). The caller sets its
/// `access_version` to the list's version, so that the store refuses it
/// if the list has changed since.
pub fn validate(
    talks: TalksId,
    connection_key: &VerifyingKey,
    access: &AccessList,
    header: &[u8],
    body: Vec<u8>,
) -> Result<Submission, SubmitError> {
    // Sizes first: nothing is decoded or hashed beyond the limits.
    if header.len() != SIGNED_HEADER_LEN {
        return Err(SubmitError::MalformedHeader(DecodeError::Invalid {
            field: "signed header",
            reason: "must be 223 bytes",
        }));
    }
    if body.len() > MAX_BODY as usize {
        return Err(SubmitError::BodyTooLarge);
    }
    let signed = SignedHeader::decode(header).map_err(SubmitError::MalformedHeader)?;
    let h = signed.header();
    if h.talks != talks || access.talks() != talks {
        return Err(SubmitError::OtherTalks);
    }
    let key_id = connection_key.public_key().id();
    if h.sender != key_id {
        return Err(SubmitError::NotConnectionKey);
    }
    let entry = access.get(&key_id).ok_or(SubmitError::NotOnAccessList)?;
    if !entry.has(FLAG_DEVICE) {
        return Err(SubmitError::NotADevice);
    }
    if entry.rooms().binary_search(&h.room).is_err() {
        return Err(SubmitError::RoomNotAllowed);
    }
    if h.kind == Kind::NodeTick {
        return Err(SubmitError::KindNotAllowed);
    }
    if body.len() != h.body_len as usize {
        return Err(SubmitError::BodyLength);
    }
    // The one signature check of the hot path.
    signed
        .verify_with(connection_key)
        .map_err(|_| SubmitError::BadSignature)?;
    let body_hash = sha256(&body);
    if body_hash != h.body_hash {
        return Err(SubmitError::BodyHash);
    }
    Ok(Submission {
        talks,
        room: h.room,
        sender: key_id,
        idempotency_key: h.idempotency_key,
        header: header.to_vec(),
        header_hash: signed.hash(),
        body,
        body_hash,
        gate: None,
        // Named by the caller, which knows the list's version.
        access_version: None,
    })
}
