//! The HTTP API's wire types: the JSON error body with its stable codes,
//! and the request and response bodies.
//!
//! Bytes travel as standard base64 (`"…"`), hashes and ids as lowercase hex.
//! Every error is `{"error": {"code": "<stable code>", "message": "<for
//! humans>"}}` with the status the code implies; messages never name talks,
//! rooms or keys.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// An API error: a status, a stable code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code (see [`codes`]).
    pub code: &'static str,
    /// A message for humans, saying what to do next where it can.
    pub message: String,
}

/// The stable error codes and their statuses.
pub mod codes {
    /// 400: the request does not parse or breaks a format rule.
    pub const MALFORMED: &str = "malformed";
    /// 401: the connection did not authenticate with a key.
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    /// 401: an envelope header's signature does not verify.
    pub const BAD_ENVELOPE_SIGNATURE: &str = "bad_envelope_signature";
    /// 403: the key is on the talks' access list but lacks the right.
    pub const FORBIDDEN: &str = "forbidden";
    /// 403: the envelope's sender is not the connection's key.
    pub const SENDER_NOT_CONNECTION_KEY: &str = "sender_not_connection_key";
    /// 404: unknown talks, or talks whose access list does not hold the
    /// key (the same answer), or an unknown route or object.
    pub const NOT_FOUND: &str = "not_found";
    /// 405.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// 409: the idempotency key was used for another header.
    pub const IDEMPOTENCY_CONFLICT: &str = "idempotency_conflict";
    /// 409: the change or checkpoint names a state that is no longer
    /// current.
    pub const STALE: &str = "stale";
    /// 409: the object exists already.
    pub const EXISTS: &str = "exists";
    /// 409: another commit took the room's epoch first (the message names
    /// its seq); receive it, then commit again if still needed.
    pub const EPOCH_TAKEN: &str = "epoch_taken";
    /// 409: the MLS message is not for the room's current epoch; receive,
    /// process what is new, encrypt again.
    pub const STALE_EPOCH: &str = "stale_epoch";
    /// 409: the room has no MLS group yet.
    pub const NO_GROUP: &str = "no_group";
    /// 400: an MLS message that does not parse or that the room's public
    /// group refuses (a stale or garbage commit, a leaf not on the room's
    /// access list, a Welcome for non-members).
    pub const BAD_MLS: &str = "bad_mls";
    /// 408: the request body did not arrive in time.
    pub const TIMEOUT: &str = "timeout";
    /// 410: the invitation has expired.
    pub const EXPIRED: &str = "expired";
    /// 413: over a size limit.
    pub const TOO_LARGE: &str = "too_large";
    /// 413: over the party's blob quota.
    pub const QUOTA_EXCEEDED: &str = "quota_exceeded";
    /// 429: over a rate or a count limit.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// 503: storage is unavailable; retry (with the same idempotency key).
    pub const UNAVAILABLE: &str = "unavailable";
    /// 500: the node found its own data corrupt or failed internally.
    pub const INTERNAL: &str = "internal";
}

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `malformed`.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, codes::MALFORMED, message)
    }

    /// 401 `unauthenticated`.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHENTICATED,
            "this connection is not authenticated: connect with TLS and your per-talks device key",
        )
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, codes::FORBIDDEN, message)
    }

    /// 404 `not_found`: always the same body, so that unknown talks and
    /// talks one is not on look alike.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "not found")
    }

    /// 409 `stale`.
    pub fn stale(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, codes::STALE, message)
    }

    /// 413 `too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, codes::TOO_LARGE, message)
    }

    /// 429 `rate_limited`.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, codes::RATE_LIMITED, message)
    }

    /// 503 `unavailable`.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::UNAVAILABLE,
            "storage is unavailable; retry the same request",
        )
    }

    /// 500 `internal`; the details go to the node's log, not to the caller.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL,
            "the node failed; its operator has the details",
        )
    }
}

/// The JSON error body.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error inside [`ErrorBody`].
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// The stable code.
    pub code: String,
    /// The message.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// Bytes as standard base64 in JSON.
pub mod b64 {
    use super::*;
    use serde::{Deserializer, Serializer};

    /// Serialises bytes as base64.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    /// Deserialises base64 into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <&str>::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }

    /// Optional bytes as base64 or `null`.
    pub mod option {
        use super::*;

        /// Serialises.
        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(b) => s.serialize_str(&STANDARD.encode(b)),
                None => s.serialize_none(),
            }
        }

        /// Deserialises.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            match Option::<&str>::deserialize(d)? {
                Some(s) => STANDARD
                    .decode(s)
                    .map(Some)
                    .map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }

    /// A list of byte strings, each base64.
    pub mod list {
        use super::*;

        /// Serialises.
        pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|b| STANDARD.encode(b)))
        }

        /// Deserialises.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
            Vec::<String>::deserialize(d)?
                .iter()
                .map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom))
                .collect()
        }
    }
}

/// `GET /v1/node`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's origin (log origins are `<origin>/<talks hex>`).
    pub origin: String,
    /// The node's log key (hex): checkpoints, receipts.
    pub log_key: String,
    /// `MAX_BODY`.
    pub max_body: u32,
    /// The blob chunk size.
    pub blob_chunk: u64,
    /// The largest blob.
    pub max_blob: u64,
}

/// `POST /v1/talks`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateTalks {
    /// The initial access list (generation 0), canonical bytes.
    #[serde(with = "b64")]
    pub access_list: Vec<u8>,
}

/// An access list as served.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct AccessListBody {
    /// The talks (hex).
    pub talks: String,
    /// Canonical bytes.
    #[serde(with = "b64")]
    pub access_list: Vec<u8>,
    /// SHA-256 of the bytes (hex).
    pub hash: String,
    /// How many times it changed on this node (0 = as created).
    pub version: u64,
}

/// `POST /v1/talks/{talks}/access-list/changes`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SubmitChange {
    /// A canonical `AccessListChange` (delta plus signatures).
    #[serde(with = "b64")]
    pub change: Vec<u8>,
}

/// The answer to a change.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangeOutcome {
    /// Whether the change was applied (else it waits for signatures).
    pub applied: bool,
    /// SHA-256 of the canonical delta (hex).
    pub delta_hash: String,
    /// What is still missing, when not applied.
    pub missing: Option<String>,
    /// The access list now (after the change, if applied).
    pub access_list: AccessListBody,
}

/// A pending change as served.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingChangeBody {
    /// SHA-256 of the canonical delta (hex).
    pub delta_hash: String,
    /// The change with the signatures gathered so far.
    #[serde(with = "b64")]
    pub change: Vec<u8>,
}

/// `GET /v1/talks/{talks}/access-list/changes`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingChanges {
    /// The pending changes, by delta hash.
    pub pending: Vec<PendingChangeBody>,
}

/// `POST /v1/talks/{talks}/invitations`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateInvitation {
    /// A canonical signed `Invitation`.
    #[serde(with = "b64")]
    pub invitation: Vec<u8>,
}

/// An invitation as served to the mediator.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InvitationBody {
    /// SHA-256 of the token (hex).
    pub token_hash: String,
    /// The party (hex).
    pub party: String,
    /// Expiry (Unix ms).
    pub expires_at: u64,
    /// The signed invitation.
    #[serde(with = "b64")]
    pub invitation: Vec<u8>,
    /// The redeeming key's id (hex), once redeemed.
    pub redeemed_by: Option<String>,
    /// When it was redeemed (node time, Unix ms).
    pub redeemed_at: Option<u64>,
    /// The enrolment payload the redeemer left for the mediator.
    #[serde(with = "b64::option", default)]
    pub payload: Option<Vec<u8>>,
}

/// `GET /v1/talks/{talks}/invitations`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Invitations {
    /// Every invitation of the talks.
    pub invitations: Vec<InvitationBody>,
}

/// `POST /v1/talks/{talks}/enrol`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Enrol {
    /// The 32-byte one-time token.
    #[serde(with = "b64")]
    pub token: Vec<u8>,
    /// An opaque payload for the mediator (≤ 64 KiB).
    #[serde(with = "b64", default)]
    pub payload: Vec<u8>,
}

/// The answer to a sequenced envelope.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct Sequenced {
    /// Its seq (leaf index).
    pub seq: u64,
    /// The node's timestamp (Unix ms).
    pub node_time: u64,
    /// Its leaf hash (hex).
    pub leaf_hash: String,
    /// Its batch's receipt (canonical `Receipt`), with its path.
    #[serde(with = "b64")]
    pub receipt: Vec<u8>,
}

/// `POST /v1/talks/{talks}/commits`: where the commit and its Welcome
/// were sequenced.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct CommitSequenced {
    /// The commit envelope.
    pub commit: Sequenced,
    /// The Welcome envelope, when the commit added members.
    pub welcome: Option<Sequenced>,
}

/// `POST /v1/talks/{talks}/key-packages`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct KeyPackageUpload {
    /// Serialized MLS messages, each a KeyPackage of the caller's device.
    #[serde(with = "b64::list")]
    pub key_packages: Vec<Vec<u8>>,
}

/// How many ordinary key packages the caller's device has left.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct KeyPackageCount {
    /// Valid, unclaimed, not last-resort.
    pub count: u64,
}

/// `POST /v1/talks/{talks}/key-packages/claim`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct KeyPackageClaim {
    /// Device key ids (hex) to claim one key package of each.
    pub devices: Vec<String>,
}

/// One claimed key package.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct ClaimedKeyPackage {
    /// The device key id (hex).
    pub device: String,
    /// The key package, or none when the device has none valid.
    #[serde(with = "b64::option", default)]
    pub key_package: Option<Vec<u8>>,
}

/// The answer to a claim.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct KeyPackagesClaimed {
    /// One per device asked for, in order.
    pub key_packages: Vec<ClaimedKeyPackage>,
}

/// `GET /v1/talks/{talks}/rooms/{room}/group-info`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct GroupInfoBody {
    /// The room's current epoch.
    pub epoch: u64,
    /// The GroupInfo (an MLS message) of that epoch.
    #[serde(with = "b64")]
    pub group_info: Vec<u8>,
}

/// One delivered envelope (fetch page or stream frame).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct Delivered {
    /// Its seq.
    pub seq: u64,
    /// The node's timestamp (Unix ms).
    pub node_time: u64,
    /// The canonical signed header (223 bytes).
    #[serde(with = "b64")]
    pub header: Vec<u8>,
    /// The body, unless purged (retention).
    #[serde(with = "b64::option", default)]
    pub body: Option<Vec<u8>>,
    /// Its batch's receipt with its path.
    #[serde(with = "b64")]
    pub receipt: Vec<u8>,
}

/// `GET /v1/talks/{talks}/envelopes`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Page {
    /// Envelopes of the caller's rooms with `from <= seq < next`.
    pub envelopes: Vec<Delivered>,
    /// Where the next page starts.
    pub next: u64,
    /// The log size when the page was read.
    pub log_size: u64,
}

/// A stream frame (WebSocket text message).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamFrame {
    /// An envelope of one of the caller's rooms.
    Envelope(Delivered),
    /// Every seq below `next` has been delivered or skipped (not the
    /// caller's rooms); sent when the stream has caught up.
    Caught {
        /// The next seq the stream will deliver from.
        next: u64,
    },
}

/// `GET /v1/talks/{talks}/checkpoint`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckpointBody {
    /// The tree size.
    pub size: u64,
    /// The signed note with every cosignature gathered so far.
    pub note: String,
}

/// `POST /v1/talks/{talks}/checkpoint/cosignatures`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Cosign {
    /// The size of the checkpoint cosigned (must be the latest).
    pub size: u64,
    /// The cosignature line (`— <name> <base64>\n`), name = [`witness_name`]
    /// of the connection's key.
    ///
    /// [`witness_name`]: crate::server::witness_name
    pub line: String,
}

/// A proof as served.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProofBody {
    /// The canonical proof (`InclusionProof` or `ConsistencyProof`).
    #[serde(with = "b64")]
    pub proof: Vec<u8>,
}

/// `POST /v1/talks/{talks}/blobs`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateBlob {
    /// SHA-256 of the content (hex).
    pub hash: String,
    /// Its size in bytes.
    pub size: u64,
    /// The room that references it (hex).
    pub room: String,
}

/// A blob as served.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobBody {
    /// SHA-256 of the content (hex).
    pub hash: String,
    /// Its size.
    pub size: u64,
    /// The chunk size (every chunk but the last).
    pub chunk_size: u64,
    /// How many chunks.
    pub chunks: u64,
    /// The chunks stored so far.
    pub present: Vec<u64>,
    /// Whether it is complete (its hash checked).
    pub complete: bool,
}
