//! Rooms are MLS groups: what the node reads of each MLS message, the gate
//! it asks the store to apply atomically with sequencing, the key-package
//! directory and the rooms' latest GroupInfo.
//!
//! The node reads the public MLS framing only (group id, epoch, content
//! type, and for handshakes the public commit) and keeps each room's
//! `PublicGroup` (`backchannel_mls::PublicRoom`), persisted by the store in
//! the transaction that sequences the commit. It validates every commit with
//! it, including that every added or updated leaf is a device key on the
//! room's access list. It never holds a key that decrypts an application
//! message or a Welcome.
//!
//! Sequencing rules (RFC 9420 §14; `docs/api.md`):
//! - the store looks the idempotency key up first, so a retry that landed
//!   gets its seq whatever the room's epoch is now;
//! - a commit is sequenced only from the room's current epoch and if no
//!   commit took that epoch: 409 `epoch_taken` names the winner's seq;
//! - application messages only for the current epoch: 409 `stale_epoch`;
//! - every commit carries its new GroupInfo; a commit that adds members is
//!   submitted with its Welcome in one request (`POST …/commits`), stored in
//!   one transaction, and the Welcome's body goes only to the devices it
//!   adds (everyone else of the room gets its header).
//! - standalone proposals are refused (clients commit their proposals
//!   inline), so no proposal ever waits in a store.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use backchannel_codec::{RoomId, TalksId};
use backchannel_crypto::{KeyId, PublicKey, VerifyingKey};
use backchannel_mls::{Framing, Handshake, PublicRoom};
use backchannel_statement::access_list::{AccessEntry, AccessList, FLAG_DEVICE};
use backchannel_statement::header::{SIGNED_HEADER_LEN, unpad_body};
use backchannel_statement::{Kind, SignedHeader};
use backchannel_store::{Gate, KeyPackageRecord, Outcome, RoomStateUpdate, Store, Submission};

use crate::api::{self, ApiError, codes};
use crate::sequencer::SequenceError;
use crate::server::{
    AccessView, ApiBytes, ApiJson, ApiPath, Authed, AuthedSender, Node, parse_room, parse_talks,
    store_error,
};
use crate::submit::{self, SubmitError};

/// The longest lifetime a key package may declare (90 days).
pub const MAX_KEY_PACKAGE_LIFETIME_S: u64 = 90 * 24 * 3600;

/// The most key packages one upload carries.
pub const MAX_KEY_PACKAGES_PER_UPLOAD: usize = 32;

/// The most devices one claim names (a client adding more claims in
/// several requests).
pub const MAX_CLAIM_DEVICES: usize = 32;

/// Claims one key (the claimer) may make of one device's key packages per
/// [`CLAIM_WINDOW_S`]: enough to add a device to every room it shares with
/// the claimer several times over, far too few to drain its packages.
pub const MAX_CLAIMS_PER_WINDOW: u32 = 64;

/// The window of [`MAX_CLAIMS_PER_WINDOW`] (one hour).
pub const CLAIM_WINDOW_S: u64 = 3600;

/// Whether `key` may be a leaf of `room`'s group: a device key on the
/// access list, seated in that room.
fn admits(list: &AccessList, room: RoomId) -> impl Fn(&PublicKey) -> bool + '_ {
    move |key: &PublicKey| list.seats_device(&key.id(), room)
}

fn bad_mls(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, codes::BAD_MLS, message)
}

/// The MLS message inside a padded body.
fn mls_bytes(body: &[u8]) -> Result<&[u8], ApiError> {
    unpad_body(body).map_err(|e| bad_mls(format!("the body is not a padded MLS message: {e}")))
}

/// What is to be sequenced for one validated MLS envelope: the gate, and
/// for a commit the devices it adds with their key package references.
pub(crate) struct Gated {
    pub(crate) gate: Option<Gate>,
    pub(crate) added: Vec<(KeyId, Vec<u8>)>,
    /// A commit from an epoch the room has left: it can only be a retry of
    /// one that landed (the store answers that first), never sequenced
    /// anew, so it is not validated against today's state.
    pub(crate) past: bool,
}

/// The gate of one envelope submitted alone (`POST …/envelopes`).
pub(crate) async fn gate<S: Store>(
    node: &Node<S>,
    list: &AccessList,
    signed: &SignedHeader,
    sender: &PublicKey,
    body: &[u8],
) -> Result<Gated, ApiError> {
    let h = signed.header();
    let (talks, room) = (h.talks, h.room);
    let none = Gated {
        gate: None,
        added: Vec::new(),
        past: false,
    };
    match h.kind {
        Kind::MlsApp => {
            let framing = backchannel_mls::read_framing(mls_bytes(body)?).map_err(|e| {
                bad_mls(format!(
                    "an application envelope must carry an MLS application message: {e}"
                ))
            })?;
            match framing {
                Framing::Application {
                    talks: t,
                    room: r,
                    epoch,
                    authenticated_data,
                } => {
                    if (t, r) != (talks, room) {
                        return Err(bad_mls("the MLS group is not the header's room"));
                    }
                    if authenticated_data != h.commitment.0 {
                        return Err(bad_mls(
                            "the MLS authenticated data must be the header's commitment",
                        ));
                    }
                    Ok(Gated {
                        gate: Some(Gate::Epoch { epoch }),
                        added: Vec::new(),
                        past: false,
                    })
                }
                _ => Err(bad_mls(
                    "an application envelope must carry an MLS PrivateMessage of content type application",
                )),
            }
        }
        Kind::MlsHandshake => {
            let handshake = Handshake::parse(mls_bytes(body)?)
                .map_err(|e| bad_mls(format!("a handshake that does not parse: {e}")))?;
            let admits = admits(list, room);
            match handshake {
                Handshake::Create { group_info } => {
                    let public = PublicRoom::create(talks, room, group_info, sender, &admits)
                        .map_err(|e| bad_mls(format!("the group creation is refused: {e}")))?;
                    Ok(Gated {
                        gate: Some(Gate::Create {
                            state: RoomStateUpdate {
                                public_group: public.to_bytes(),
                                group_info: group_info.to_vec(),
                            },
                        }),
                        added: Vec::new(),
                        past: false,
                    })
                }
                Handshake::Commit { commit, group_info } => {
                    let state = node
                        .store
                        .room_state(talks, room)
                        .await
                        .map_err(store_error)?
                        .ok_or_else(no_group)?;
                    let public = PublicRoom::from_bytes(&state.public_group).map_err(|e| {
                        tracing::error!(error = %e, "a stored public group does not decode");
                        ApiError::internal()
                    })?;
                    let epoch = public.epoch();
                    match backchannel_mls::read_framing(commit) {
                        // Idempotency comes first: the store answers a
                        // retry of a commit that landed with its seq, and
                        // refuses anything else for a past epoch.
                        Ok(Framing::Commit { epoch: e, .. }) if e < epoch => {
                            return Ok(Gated {
                                gate: Some(Gate::Commit {
                                    epoch: e,
                                    state: RoomStateUpdate {
                                        public_group: Vec::new(),
                                        group_info: Vec::new(),
                                    },
                                }),
                                added: Vec::new(),
                                past: true,
                            });
                        }
                        Ok(Framing::Commit { epoch: e, .. }) if e > epoch => {
                            return Err(stale_epoch(epoch));
                        }
                        Ok(Framing::Commit { .. }) => {}
                        Ok(_) => return Err(bad_mls("a handshake must carry a commit")),
                        Err(e) => {
                            return Err(bad_mls(format!("a commit that does not parse: {e}")));
                        }
                    }
                    let staged = public
                        .stage(commit, group_info, &admits)
                        .map_err(|e| bad_mls(format!("the commit is refused: {e}")))?;
                    let added = staged
                        .added
                        .iter()
                        .map(|(key, reference)| (key.id(), reference.clone()))
                        .collect();
                    Ok(Gated {
                        gate: Some(Gate::Commit {
                            epoch,
                            state: RoomStateUpdate {
                                public_group: staged.room.to_bytes(),
                                group_info: group_info.to_vec(),
                            },
                        }),
                        added,
                        past: false,
                    })
                }
            }
        }
        Kind::Welcome => Err(bad_mls(
            "a Welcome is submitted with the commit that adds its members (POST …/commits)",
        )),
        _ => Ok(none),
    }
}

fn no_group() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        codes::NO_GROUP,
        "the room has no MLS group yet: create it first (a handshake with its GroupInfo)",
    )
}

fn stale_epoch(epoch: u64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        codes::STALE_EPOCH,
        format!(
            "the room is at epoch {epoch}: receive and process what is new, then encrypt again"
        ),
    )
}

/// The answer for an outcome the store refused.
pub(crate) fn refused(outcome: &Outcome) -> Option<ApiError> {
    match outcome {
        Outcome::Sequenced(_) => None,
        Outcome::Conflict { seq } => Some(ApiError::new(
            StatusCode::CONFLICT,
            codes::IDEMPOTENCY_CONFLICT,
            format!(
                "this idempotency key was used at seq {seq} for another header; use a fresh key for a new envelope"
            ),
        )),
        Outcome::EpochTaken { seq } => Some(ApiError::new(
            StatusCode::CONFLICT,
            codes::EPOCH_TAKEN,
            format!(
                "another commit for this epoch was sequenced first, at seq {seq}: receive it, \
                 discard this commit, and commit again if still needed"
            ),
        )),
        Outcome::StaleEpoch { epoch } => Some(stale_epoch(*epoch)),
        Outcome::NoGroup => Some(no_group()),
        Outcome::WelcomeOrphaned => Some(ApiError::new(
            StatusCode::CONFLICT,
            codes::EPOCH_TAKEN,
            "the Welcome's commit was not sequenced",
        )),
        Outcome::AccessChanged { .. } => Some(ApiError::stale(
            "the talks' access list changed while this was submitted; submit it again",
        )),
    }
}

fn sequenced(outcome: Outcome) -> Result<api::Sequenced, ApiError> {
    if let Some(e) = refused(&outcome) {
        return Err(e);
    }
    match outcome {
        Outcome::Sequenced(p) => Ok(api::Sequenced {
            seq: p.seq,
            node_time: p.node_time,
            leaf_hash: hex::encode(p.leaf_hash.0),
            receipt: p.receipt,
        }),
        _ => Err(ApiError::internal()),
    }
}

fn sequence_error(e: SequenceError) -> ApiError {
    match e {
        SequenceError::Unavailable | SequenceError::Stopped => ApiError::unavailable(),
    }
}

fn submit_error(e: SubmitError) -> ApiError {
    crate::server::submit_error(e)
}

/// Splits `header ‖ body` envelopes laid end to end (each header names its
/// body's length).
/// One envelope of a request: its signed header and its body.
type Part<'a> = (&'a [u8], &'a [u8]);

fn split_envelopes(mut bytes: &[u8]) -> Result<Vec<Part<'_>>, ApiError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < SIGNED_HEADER_LEN || out.len() == 2 {
            return Err(ApiError::malformed(
                "a commit request is the commit envelope, then optionally its Welcome envelope, \
                 each a 223-byte signed header followed by its body",
            ));
        }
        let signed = SignedHeader::decode(&bytes[..SIGNED_HEADER_LEN])
            .map_err(|e| ApiError::malformed(format!("an envelope header does not decode: {e}")))?;
        let end = SIGNED_HEADER_LEN + signed.header().body_len as usize;
        if bytes.len() < end {
            return Err(ApiError::malformed(
                "an envelope's body is shorter than its header says",
            ));
        }
        out.push((&bytes[..SIGNED_HEADER_LEN], &bytes[SIGNED_HEADER_LEN..end]));
        bytes = &bytes[end..];
    }
    Ok(out)
}

/// `POST /v1/talks/{talks}/commits`: a commit envelope (kind handshake,
/// carrying the commit and its new GroupInfo), then, if it adds members,
/// its Welcome envelope; sequenced together in one transaction.
pub(crate) async fn submit_commit<S: Store>(
    State(node): State<Arc<Node<S>>>,
    AuthedSender(sender): AuthedSender,
    ApiPath(talks): ApiPath<String>,
    ApiBytes(bytes): ApiBytes,
) -> Result<axum::Json<api::CommitSequenced>, ApiError> {
    let talks = parse_talks(&talks)?;
    let key = *sender.public_key();
    let (record, list, _) = node.member(talks, &key).await?;
    let parts = split_envelopes(&bytes)?;
    let Some(&(commit_header, commit_body)) = parts.first() else {
        return Err(ApiError::malformed(
            "a commit request holds at least the commit envelope",
        ));
    };
    let commit_signed = SignedHeader::decode(commit_header)
        .map_err(|e| ApiError::malformed(format!("the commit header does not decode: {e}")))?;
    if commit_signed.header().kind != Kind::MlsHandshake {
        return Err(bad_mls(
            "the first envelope of a commit request must be a handshake",
        ));
    }
    let mut commit = submit::validate(talks, &sender, &list, commit_header, commit_body.to_vec())
        .map_err(submit_error)?;
    let gated = gate(&node, &list, &commit_signed, &key, commit_body).await?;
    let commit_epoch = match &gated.gate {
        Some(Gate::Commit { epoch, .. }) => *epoch,
        _ => {
            return Err(bad_mls(
                "the first envelope of a commit request must carry a commit",
            ));
        }
    };
    let commit_hash = commit.header_hash;
    commit.gate = gated.gate;
    commit.access_version = Some(record.version);
    let mut unit = vec![commit];
    match parts.get(1) {
        Some(&(welcome_header, welcome_body)) if gated.past => {
            // Only a retry of a commit and Welcome that landed: the store
            // answers their seqs, or refuses both. It must still be a
            // Welcome of the same room.
            let signed = SignedHeader::decode(welcome_header).map_err(|e| {
                ApiError::malformed(format!("the Welcome header does not decode: {e}"))
            })?;
            if signed.header().kind != Kind::Welcome
                || signed.header().room != commit_signed.header().room
            {
                return Err(bad_mls(
                    "the second envelope must be the commit's Welcome, to the same room",
                ));
            }
            let mut welcome =
                submit::validate(talks, &sender, &list, welcome_header, welcome_body.to_vec())
                    .map_err(submit_error)?;
            welcome.gate = Some(Gate::Welcome {
                commit_epoch,
                commit: commit_hash,
                to: Vec::new(),
            });
            welcome.access_version = Some(record.version);
            unit.push(welcome);
        }
        Some(&(welcome_header, welcome_body)) => {
            if gated.added.is_empty() {
                return Err(bad_mls(
                    "a Welcome goes only with a commit that adds members",
                ));
            }
            let signed = SignedHeader::decode(welcome_header).map_err(|e| {
                ApiError::malformed(format!("the Welcome header does not decode: {e}"))
            })?;
            let h = signed.header();
            if h.kind != Kind::Welcome || h.room != commit_signed.header().room {
                return Err(bad_mls(
                    "the second envelope must be the commit's Welcome, to the same room",
                ));
            }
            let mut welcome =
                submit::validate(talks, &sender, &list, welcome_header, welcome_body.to_vec())
                    .map_err(submit_error)?;
            let refs = match backchannel_mls::read_framing(mls_bytes(welcome_body)?) {
                Ok(Framing::Welcome { key_packages }) => key_packages,
                Ok(_) => return Err(bad_mls("the second envelope must carry an MLS Welcome")),
                Err(e) => return Err(bad_mls(format!("a Welcome that does not parse: {e}"))),
            };
            let mut named: Vec<&Vec<u8>> = refs.iter().collect();
            let mut added: Vec<&Vec<u8>> = gated.added.iter().map(|(_, r)| r).collect();
            named.sort();
            added.sort();
            if named != added {
                return Err(bad_mls(
                    "the Welcome must name exactly the key packages the commit adds",
                ));
            }
            let mut to: Vec<KeyId> = gated.added.iter().map(|(k, _)| *k).collect();
            to.sort();
            to.dedup();
            welcome.gate = Some(Gate::Welcome {
                commit_epoch,
                commit: commit_hash,
                to,
            });
            welcome.access_version = Some(record.version);
            unit.push(welcome);
        }
        None if !gated.added.is_empty() && !gated.past => {
            return Err(bad_mls(
                "a commit that adds members is submitted with its Welcome in the same request",
            ));
        }
        None => {}
    }
    let mut outcomes = node
        .sequencer
        .submit_unit(unit)
        .await
        .map_err(sequence_error)?
        .into_iter();
    let commit = sequenced(outcomes.next().ok_or_else(ApiError::internal)?)?;
    let welcome = match outcomes.next() {
        Some(o) => Some(sequenced(o)?),
        None => None,
    };
    Ok(axum::Json(api::CommitSequenced { commit, welcome }))
}

/// What became of one envelope submitted alone.
pub(crate) enum Attempt {
    /// Sequenced, or refused for good.
    Done(Result<api::Sequenced, ApiError>),
    /// The access list it was checked against is not (or may not be) the
    /// current one: read the list again and submit again. Nothing was
    /// written.
    ListChanged,
}

/// Validates and sequences one envelope submitted alone, against `view`
/// (a cached list is good enough to accept, not to refuse: see
/// [`Attempt::ListChanged`]).
pub(crate) async fn sequence_one<S: Store>(
    node: &Node<S>,
    talks: TalksId,
    sender: &VerifyingKey,
    view: &AccessView,
    header: &[u8],
    body: &[u8],
) -> Attempt {
    let mut submission: Submission =
        match submit::validate(talks, sender, &view.list, header, body.to_vec()) {
            Ok(s) => s,
            // Any refusal is given only against a list just read: a key
            // off the current list gets its 404, whatever else is wrong.
            Err(_) if !view.fresh => return Attempt::ListChanged,
            Err(e) => return Attempt::Done(Err(submit_error(e))),
        };
    let signed = match SignedHeader::decode(header) {
        Ok(s) => s,
        Err(e) => {
            return Attempt::Done(Err(ApiError::malformed(format!(
                "the header does not decode: {e}"
            ))));
        }
    };
    let gated = match gate(node, &view.list, &signed, sender.public_key(), body).await {
        Ok(g) => g,
        Err(_) if !view.fresh => return Attempt::ListChanged,
        Err(e) => return Attempt::Done(Err(e)),
    };
    if !gated.added.is_empty() && !gated.past {
        return Attempt::Done(Err(bad_mls(
            "a commit that adds members is submitted with its Welcome (POST …/commits)",
        )));
    }
    submission.gate = gated.gate;
    submission.access_version = Some(view.version);
    match node.sequencer.submit(submission).await {
        Ok(Outcome::AccessChanged { .. }) => Attempt::ListChanged,
        // A refusal by the store (a conflicting key, a stale epoch) is
        // only given against a list just read.
        Ok(outcome) if !view.fresh && refused(&outcome).is_some() => Attempt::ListChanged,
        Ok(outcome) => Attempt::Done(sequenced(outcome)),
        Err(e) => Attempt::Done(Err(sequence_error(e))),
    }
}

// --- Key packages ------------------------------------------------------------

/// 403 unless the caller's entry is a device.
fn require_device(entry: &AccessEntry, why: &'static str) -> Result<(), ApiError> {
    if entry.has(FLAG_DEVICE) {
        Ok(())
    } else {
        Err(ApiError::forbidden(why))
    }
}

/// 400 unless a request's list holds 1 to `max` items.
fn count_within(n: usize, max: usize, holds: &str, items: &str) -> Result<(), ApiError> {
    if (1..=max).contains(&n) {
        Ok(())
    } else {
        Err(ApiError::malformed(format!("{holds} 1 to {max} {items}")))
    }
}

/// `POST /v1/talks/{talks}/key-packages`: a device uploads its own key
/// packages.
pub(crate) async fn upload_key_packages<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
    ApiJson(req): ApiJson<api::KeyPackageUpload>,
) -> Result<axum::Json<api::KeyPackageCount>, ApiError> {
    let talks = parse_talks(&talks)?;
    let (_, _, entry) = node.member(talks, &key).await?;
    require_device(&entry, "only devices hold key packages")?;
    count_within(
        req.key_packages.len(),
        MAX_KEY_PACKAGES_PER_UPLOAD,
        "an upload holds",
        "key packages",
    )?;
    let now = node.clock.now_ms() / 1000;
    let mut records = Vec::with_capacity(req.key_packages.len());
    for (i, bytes) in req.key_packages.into_iter().enumerate() {
        let info =
            backchannel_mls::check_key_package(&bytes, &key, now, MAX_KEY_PACKAGE_LIFETIME_S)
                .map_err(|e| bad_mls(format!("key package {i} is refused: {e}")))?;
        records.push(KeyPackageRecord {
            reference: info.reference,
            bytes,
            not_after: info.not_after,
            last_resort: info.last_resort,
        });
    }
    node.store
        .put_key_packages(talks, key.id(), records)
        .await
        .map_err(store_error)?;
    let count = node
        .store
        .key_package_count(talks, key.id(), now)
        .await
        .map_err(store_error)?;
    Ok(axum::Json(api::KeyPackageCount { count }))
}

/// `GET /v1/talks/{talks}/key-packages`: how many ordinary key packages of
/// the caller's device are left.
pub(crate) async fn key_package_count<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
) -> Result<axum::Json<api::KeyPackageCount>, ApiError> {
    let talks = parse_talks(&talks)?;
    node.member(talks, &key).await?;
    let now = node.clock.now_ms() / 1000;
    let count = node
        .store
        .key_package_count(talks, key.id(), now)
        .await
        .map_err(store_error)?;
    Ok(axum::Json(api::KeyPackageCount { count }))
}

/// `POST /v1/talks/{talks}/key-packages/claim`: one key package of each
/// named device. Only a device that shares a room with the target (the
/// access list seats the target in a room before anyone may add it there)
/// may claim; claims are counted per claimer and target.
pub(crate) async fn claim_key_packages<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
    ApiJson(req): ApiJson<api::KeyPackageClaim>,
) -> Result<axum::Json<api::KeyPackagesClaimed>, ApiError> {
    let talks = parse_talks(&talks)?;
    let (_, list, entry) = node.member(talks, &key).await?;
    require_device(&entry, "only devices add devices to rooms")?;
    count_within(
        req.devices.len(),
        MAX_CLAIM_DEVICES,
        "a claim names",
        "devices",
    )?;
    let now = node.clock.now_ms() / 1000;
    let mut out = Vec::with_capacity(req.devices.len());
    for hex_id in req.devices {
        let mut id = [0u8; 32];
        hex::decode_to_slice(&hex_id, &mut id)
            .map_err(|_| ApiError::malformed("a device is named by its 64-hex-digit key id"))?;
        let target = KeyId(backchannel_crypto::Digest(id));
        let shares = list.get(&target).is_some_and(|t| {
            t.has(FLAG_DEVICE)
                && t.rooms()
                    .iter()
                    .any(|r| entry.rooms().binary_search(r).is_ok())
        });
        if !shares {
            return Err(ApiError::forbidden(
                "a key package is claimed only for a device that shares a room with the claimer",
            ));
        }
        let claimed = node
            .store
            .claim_key_package(
                talks,
                key.id(),
                target,
                now,
                MAX_CLAIMS_PER_WINDOW,
                CLAIM_WINDOW_S,
            )
            .await
            .map_err(|e| match e {
                backchannel_store::StoreError::Limit(_) => ApiError::rate_limited(
                    "too many key packages claimed for this device; try again later",
                ),
                e => store_error(e),
            })?;
        out.push(api::ClaimedKeyPackage {
            device: hex_id,
            key_package: claimed.map(|c| c.bytes),
        });
    }
    Ok(axum::Json(api::KeyPackagesClaimed { key_packages: out }))
}

/// `GET /v1/talks/{talks}/rooms/{room}/group-info`: the room's latest
/// GroupInfo (what an external commit rejoins from), for its members.
pub(crate) async fn group_info<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath((talks, room)): ApiPath<(String, String)>,
) -> Result<axum::Json<api::GroupInfoBody>, ApiError> {
    let talks = parse_talks(&talks)?;
    let room = parse_room(&room)?;
    let (_, _, entry) = node.member(talks, &key).await?;
    if !crate::server::may_read(&entry, room) {
        return Err(ApiError::forbidden("this key is not seated in that room"));
    }
    let state = node
        .store
        .room_state(talks, room)
        .await
        .map_err(store_error)?
        .ok_or_else(ApiError::not_found)?;
    Ok(axum::Json(api::GroupInfoBody {
        epoch: state.epoch,
        group_info: state.group_info,
    }))
}

/// Whether `key` receives the body of a stored envelope: a Welcome's body
/// goes only to the devices it adds.
pub(crate) fn body_for(welcome_to: Option<&[KeyId]>, key: &KeyId) -> bool {
    welcome_to.is_none_or(|to| to.contains(key))
}
