//! The node's HTTP API: state, authentication, authorisation, routes.
//!
//! Every request acts as the key its connection authenticated with
//! ([`Peer`], set per connection by [`crate::net`]). A talks-scoped request
//! first loads the talks' access list from storage and looks the key up in
//! it — before parsing anything else — so a caller not on the list gets the
//! very answer an unknown talks gets ([`ApiError::not_found`]). Rights
//! come from the entry's flags and rooms; lacking one is 403.
//!
//! The node keeps no authoritative state in memory: access lists,
//! invitations, pending changes, envelopes, receipts, checkpoints and blobs
//! are rows behind [`Store`]. In memory are only the rate buckets and
//! stream counts ([`crate::limits`]) and the access-change wake-up channel.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use backchannel_codec::{Decode, Encode, RoomId, TalksId};
use backchannel_crypto::{Digest, KeyId, PublicKey, Signer, VerifyingKey, sha256};
use backchannel_statement::access_list::{
    FLAG_DESIGNATED_SIGNER, FLAG_DEVICE, FLAG_MAY_PROPOSE, FLAG_MEDIATOR,
};
use backchannel_statement::header::{MAX_BODY, SIGNED_HEADER_LEN};
use backchannel_statement::{
    AccessEntry, AccessList, AccessListChange, AccessListError, Invitation, InvitationError,
};
use backchannel_store::{
    AccessListRecord, BLOB_CHUNK, BlobRecord, InvitationRecord, MAX_ENROLMENT_PAYLOAD, MAX_READ,
    PendingChange, Redemption, Store, StoreError, TalksRecord,
};
use backchannel_tlog::NodeOrigin;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::admin::Metrics;
use crate::api::{self, ApiError, codes};
use crate::limits::{KeyRates, Limits, StreamCounts};
use crate::sequencer::{Clock, Sequencer};
use crate::submit::SubmitError;
use crate::wake::Wakeups;

/// The key a connection authenticated with, inserted into every request
/// on it. `None`: the connection presented no client certificate. The key
/// is kept decompressed, so that the envelopes of one connection are
/// verified without decompressing it again for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub Option<VerifyingKey>);

/// How the node is set up (no IO: the CLI reads files and passes values).
pub struct NodeConfig {
    /// The node's origin (log origins are `<origin>/<talks hex>`).
    pub origin: NodeOrigin,
    /// The node's log key: receipts and checkpoints.
    pub log_key: Arc<dyn Signer + Send + Sync>,
    /// Keys that may open talks (the creators file).
    pub creators: Vec<PublicKey>,
    /// The limits.
    pub limits: Limits,
    /// Wall time.
    pub clock: Arc<dyn Clock>,
    /// This node process's id among the nodes on one database (random per
    /// process; the integrator lease's holder). Two processes must never
    /// share one.
    pub instance: [u8; 16],
}

/// The node's shared state.
pub struct Node<S: Store> {
    pub(crate) store: Arc<S>,
    pub(crate) sequencer: Sequencer,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) log_key: Arc<dyn Signer + Send + Sync>,
    pub(crate) origin: NodeOrigin,
    creators: Vec<KeyId>,
    pub(crate) limits: Limits,
    rates: KeyRates,
    pub(crate) streams: Arc<StreamCounts>,
    /// Wakes the streams of one talks ([`crate::wake`]).
    pub(crate) wakeups: Arc<Wakeups>,
    /// Request counts and timings, and the API listener's phase.
    pub(crate) metrics: Metrics,
    /// This process's id ([`NodeConfig::instance`]).
    pub(crate) instance: [u8; 16],
    /// Whether this node holds the integrator lease, and under which epoch.
    pub(crate) lease: crate::lease::SharedLease,
    /// The full data tiles served last ([`crate::logs::DataTiles`]).
    pub(crate) data_tiles: crate::logs::DataTiles,
    /// The last access list decoded per talks, with the SHA-256 of its
    /// stored bytes and its version: decoding parses every key (point
    /// decompression, small-order check), and every request and every
    /// stream page reads the list. The store stays the one source: every
    /// use but two reads the record and decodes again whenever its bytes
    /// differ. One is envelope submission ([`Node::access_view`]), which
    /// validates against this cached list and lets the store check, in the
    /// sequencing transaction, that the list still has this version
    /// ([`backchannel_store::Submission::access_version`]). The other is a
    /// stream sending rows this node just sequenced, from memory: against
    /// this list when it is at least as new as every row's version
    /// ([`Node::cached_list`]), so never against an older list than the
    /// one the row was admitted under.
    decoded: std::sync::Mutex<std::collections::HashMap<TalksId, CachedList>>,
}

/// One talks' access list as last read and decoded.
struct CachedList {
    hash: Digest,
    version: u64,
    list: Arc<AccessList>,
}

/// A talks' access list to validate a submission against: a cached one
/// (`fresh: false`), or one just read from the store.
pub(crate) struct AccessView {
    /// The list's version, which the submission names to the store.
    pub(crate) version: u64,
    /// The decoded list.
    pub(crate) list: Arc<AccessList>,
    /// Whether it was read from the store for this request. A refusal
    /// that depends on the list is final only against a fresh list.
    pub(crate) fresh: bool,
}

impl<S: Store> Node<S> {
    /// The node over `store`; starts its sequencer on the current runtime.
    pub fn new(store: Arc<S>, config: NodeConfig) -> Arc<Self> {
        let sequencer = Sequencer::spawn(
            Arc::clone(&store),
            Arc::clone(&config.clock),
            Arc::clone(&config.log_key),
        );
        let wakeups = Arc::new(Wakeups::default());
        tokio::spawn(crate::wake::feed(
            Arc::downgrade(&wakeups),
            Arc::downgrade(&store),
            config.limits.poll_interval,
        ));
        let rates = KeyRates::new(
            config.limits.requests_per_second,
            config.limits.request_burst,
        );
        let metrics = Metrics::new(config.clock.now_ms());
        Arc::new(Self {
            store,
            sequencer,
            clock: config.clock,
            log_key: config.log_key,
            origin: config.origin,
            creators: config.creators.iter().map(PublicKey::id).collect(),
            limits: config.limits,
            rates,
            streams: Arc::new(StreamCounts::default()),
            wakeups,
            metrics,
            instance: config.instance,
            lease: Arc::default(),
            data_tiles: crate::logs::DataTiles::default(),
            decoded: std::sync::Mutex::default(),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether this node holds the integrator lease, and under which epoch
    /// (clone it to watch it after the node is handed to
    /// [`crate::net::serve`]).
    pub fn lease(&self) -> &crate::lease::SharedLease {
        &self.lease
    }

    /// The talks' access list, and the caller's entry on it; `not_found`
    /// for unknown talks and for a key not on the list alike.
    pub(crate) async fn member(
        &self,
        talks: TalksId,
        key: &PublicKey,
    ) -> Result<(AccessListRecord, Arc<AccessList>, AccessEntry), ApiError> {
        let (record, list) = self.read_list(talks).await?;
        let entry = list
            .get(&key.id())
            .cloned()
            .ok_or_else(ApiError::not_found)?;
        Ok((record, list, entry))
    }

    /// The access list to validate an envelope submission against: the
    /// cached one unless `fresh` is asked for or none is cached, else the
    /// store's. `not_found` for unknown talks.
    pub(crate) async fn access_view(
        &self,
        talks: TalksId,
        fresh: bool,
    ) -> Result<AccessView, ApiError> {
        if !fresh
            && let Ok(cache) = self.decoded.lock()
            && let Some(cached) = cache.get(&talks)
        {
            return Ok(AccessView {
                version: cached.version,
                list: Arc::clone(&cached.list),
                fresh: false,
            });
        }
        let (record, list) = self.read_list(talks).await?;
        Ok(AccessView {
            version: record.version,
            list,
            fresh: true,
        })
    }

    /// The cached access list of `talks` if its version is at least
    /// `at_least`, else `None` (read the store). Versions only grow, so a
    /// list this new holds every change made before an envelope was
    /// sequenced under version `at_least`: a key removed by then is not
    /// on it.
    pub(crate) fn cached_list(&self, talks: TalksId, at_least: u64) -> Option<Arc<AccessList>> {
        let cache = self.decoded.lock().ok()?;
        let cached = cache.get(&talks)?;
        (cached.version >= at_least).then(|| Arc::clone(&cached.list))
    }

    /// The talks' access list read from the store, and decoded (once per
    /// distinct stored bytes); `not_found` for unknown talks.
    async fn read_list(
        &self,
        talks: TalksId,
    ) -> Result<(AccessListRecord, Arc<AccessList>), ApiError> {
        let record = self
            .store
            .access_list(talks)
            .await
            .map_err(store_error)?
            .ok_or_else(ApiError::not_found)?;
        let list = self.decoded_list(talks, &record).map_err(|e| {
            tracing::error!(error = %e, "a stored access list does not decode");
            ApiError::internal()
        })?;
        Ok((record, list))
    }

    /// `record`'s list of `talks`, decoded once per distinct stored bytes.
    pub(crate) fn decoded_list(
        &self,
        talks: TalksId,
        record: &AccessListRecord,
    ) -> Result<Arc<AccessList>, backchannel_codec::DecodeError> {
        let hash = sha256(&record.bytes);
        // A poisoned lock only loses the cache: decode again.
        if let Ok(cache) = self.decoded.lock()
            && let Some(cached) = cache.get(&talks)
            && cached.hash == hash
        {
            return Ok(Arc::clone(&cached.list));
        }
        let list = Arc::new(AccessList::from_canonical_bytes(&record.bytes)?);
        if let Ok(mut cache) = self.decoded.lock() {
            // A read that raced a newer one does not take the cache back.
            let older = cache
                .get(&talks)
                .is_some_and(|cached| cached.version > record.version);
            if !older {
                cache.insert(
                    talks,
                    CachedList {
                        hash,
                        version: record.version,
                        list: Arc::clone(&list),
                    },
                );
            }
        }
        Ok(list)
    }
}

pub use backchannel_tlog::witness_name;

/// Maps a storage error to the API's answer; corruption and backend
/// failures are logged (without ids) and answered 500/503.
pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::UnknownTalks => ApiError::not_found(),
        StoreError::Unavailable(_) => ApiError::unavailable(),
        StoreError::Stale => {
            ApiError::stale("the state changed meanwhile; read it again and retry")
        }
        StoreError::Exists => {
            ApiError::new(StatusCode::CONFLICT, codes::EXISTS, "it already exists")
        }
        StoreError::Quota => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::QUOTA_EXCEEDED,
            "your party's blob quota for these talks is used up",
        ),
        StoreError::Limit(what) => ApiError::too_large(what),
        StoreError::TalksExists => ApiError::new(
            StatusCode::CONFLICT,
            codes::EXISTS,
            "these talks exist already",
        ),
        e @ (StoreError::Corrupt(_)
        | StoreError::Backend(_)
        | StoreError::Sign(_)
        | StoreError::Fenced) => {
            tracing::error!(error = %e, "storage failed");
            ApiError::internal()
        }
    }
}

// ---------------------------------------------------------------------------
// Extractors: every rejection is a JSON error.

/// The authenticated key of the request, after its rate check.
pub struct Authed(pub PublicKey);

impl<S: Store> FromRequestParts<Arc<Node<S>>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        node: &Arc<Node<S>>,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, node).map(|key| Self(*key.public_key()))
    }
}

/// [`Authed`] with the key as its connection keeps it, decompressed: for
/// the handlers that verify the caller's envelope signatures.
pub struct AuthedSender(pub VerifyingKey);

impl<S: Store> FromRequestParts<Arc<Node<S>>> for AuthedSender {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        node: &Arc<Node<S>>,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, node).map(Self)
    }
}

/// The request's key, after its rate check.
fn authenticate<S: Store>(parts: &Parts, node: &Node<S>) -> Result<VerifyingKey, ApiError> {
    let key = parts
        .extensions
        .get::<Peer>()
        .and_then(|p| p.0)
        .ok_or_else(ApiError::unauthenticated)?;
    if !node.rates.allow(key.public_key().id(), node.clock.now_ms()) {
        return Err(ApiError::rate_limited(
            "too many requests from this key; slow down and retry",
        ));
    }
    Ok(key)
}

/// A JSON body, bounded by the route's body limit.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequest<St> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &St) -> Result<Self, Self::Rejection> {
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::malformed(format!("the JSON body does not parse: {e}")))
    }
}

/// A raw body, bounded by the route's body limit.
pub struct ApiBytes(pub Bytes);

impl<St: Send + Sync> FromRequest<St> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &St) -> Result<Self, Self::Rejection> {
        // A body that trickles in must not hold a connection slot forever.
        let limit = req
            .extensions()
            .get::<crate::net::BodyTimeout>()
            .map_or(std::time::Duration::from_secs(10), |t| t.0);
        let read = tokio::time::timeout(limit, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    codes::TIMEOUT,
                    "the request body took too long to arrive; send it again",
                )
            })?;
        read.map(ApiBytes).map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large("the request body is larger than this endpoint accepts")
            } else {
                ApiError::malformed(format!("the request body could not be read: {e}"))
            }
        })
    }
}

/// Query parameters.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequestParts<St> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::malformed(format!("bad query parameters: {e}")))
    }
}

/// Path parameters.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, St: Send + Sync> FromRequestParts<St> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|_| ApiError::not_found())
    }
}

pub(crate) fn parse_talks(s: &str) -> Result<TalksId, ApiError> {
    TalksId::from_hex(s).map_err(|_| ApiError::not_found())
}

fn parse_digest(s: &str, what: &str) -> Result<Digest, ApiError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| ApiError::malformed(format!("{what} must be 64 hex digits")))?;
    Ok(Digest(out))
}

pub(crate) fn parse_room(s: &str) -> Result<RoomId, ApiError> {
    RoomId::from_hex(s).map_err(|_| ApiError::malformed("a room id must be 32 hex digits"))
}

fn decode<T: Decode>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    T::from_canonical_bytes(bytes).map_err(|e| ApiError::malformed(format!("{what}: {e}")))
}

fn access_list_body(talks: TalksId, record: &AccessListRecord) -> api::AccessListBody {
    api::AccessListBody {
        talks: talks.to_hex(),
        access_list: record.bytes.clone(),
        hash: hex::encode(record.hash.0),
        version: record.version,
    }
}

fn record_of(list: &AccessList, version: u64) -> AccessListRecord {
    let bytes = list.to_canonical_bytes();
    AccessListRecord {
        hash: sha256(&bytes),
        bytes,
        version,
    }
}

// ---------------------------------------------------------------------------
// Routes.

/// The largest JSON body of the small endpoints (invitations, blobs,
/// cosignatures): 256 KiB, far above any honest request.
pub const MAX_SMALL_BODY: usize = 256 << 10;

/// The largest body carrying a whole access list or change (talks creation,
/// access-list changes): 4 MiB holds `MAX_ENTRIES` (10 000) entries with a
/// few rooms each, base64-encoded.
pub const MAX_LIST_BODY: usize = 4 << 20;

/// The largest key-package upload: [`crate::rooms::MAX_KEY_PACKAGES_PER_UPLOAD`]
/// packages of at most 16 KiB each, in base64 JSON.
pub const MAX_KEY_PACKAGE_UPLOAD: usize = 1 << 20;

/// The API's routes over `node`.
pub fn router<S: Store>(node: Arc<Node<S>>) -> Router {
    let small = DefaultBodyLimit::max(MAX_SMALL_BODY);
    Router::new()
        .route("/v1/node", get(node_info::<S>))
        .route(
            "/v1/talks",
            post(create_talks::<S>).layer(DefaultBodyLimit::max(MAX_LIST_BODY)),
        )
        .route("/v1/talks/{talks}/access-list", get(get_access_list::<S>))
        .route(
            "/v1/talks/{talks}/access-list/changes",
            get(pending_changes::<S>)
                .post(submit_change::<S>)
                .layer(DefaultBodyLimit::max(MAX_LIST_BODY)),
        )
        .route(
            "/v1/talks/{talks}/invitations",
            get(list_invitations::<S>)
                .post(create_invitation::<S>)
                .layer(small),
        )
        .route(
            "/v1/talks/{talks}/enrol",
            post(enrol::<S>).layer(DefaultBodyLimit::max(2 * MAX_ENROLMENT_PAYLOAD)),
        )
        .route(
            "/v1/talks/{talks}/envelopes",
            get(fetch::<S>)
                .post(submit_envelope::<S>)
                .layer(DefaultBodyLimit::max(SIGNED_HEADER_LEN + MAX_BODY as usize)),
        )
        .route(
            "/v1/talks/{talks}/commits",
            post(crate::rooms::submit_commit::<S>).layer(DefaultBodyLimit::max(
                2 * (SIGNED_HEADER_LEN + MAX_BODY as usize),
            )),
        )
        .route(
            "/v1/talks/{talks}/key-packages",
            get(crate::rooms::key_package_count::<S>)
                .post(crate::rooms::upload_key_packages::<S>)
                .layer(DefaultBodyLimit::max(MAX_KEY_PACKAGE_UPLOAD)),
        )
        .route(
            "/v1/talks/{talks}/key-packages/claim",
            post(crate::rooms::claim_key_packages::<S>).layer(small),
        )
        .route(
            "/v1/talks/{talks}/rooms/{room}/group-info",
            get(crate::rooms::group_info::<S>),
        )
        .route("/v1/talks/{talks}/stream", get(crate::stream::stream::<S>))
        .route(
            "/v1/talks/{talks}/checkpoint",
            get(crate::logs::checkpoint::<S>),
        )
        .route(
            "/v1/talks/{talks}/checkpoint/cosignatures",
            post(crate::logs::cosign::<S>).layer(small),
        )
        .route(
            "/v1/talks/{talks}/tile/{*path}",
            get(crate::logs::tile::<S>),
        )
        .route(
            "/v1/talks/{talks}/proof/inclusion",
            get(crate::logs::inclusion::<S>),
        )
        .route(
            "/v1/talks/{talks}/proof/consistency",
            get(crate::logs::consistency::<S>),
        )
        .route(
            "/v1/talks/{talks}/blobs",
            post(create_blob::<S>).layer(small),
        )
        .route("/v1/talks/{talks}/blobs/{hash}", get(get_blob::<S>))
        .route(
            "/v1/talks/{talks}/blobs/{hash}/complete",
            post(complete_blob::<S>),
        )
        .route(
            "/v1/talks/{talks}/blobs/{hash}/chunks/{index}",
            put(put_chunk::<S>)
                .get(get_chunk::<S>)
                .layer(DefaultBodyLimit::max(BLOB_CHUNK as usize)),
        )
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                codes::METHOD_NOT_ALLOWED,
                "this method is not allowed on this path",
            )
        })
        // Counts and times every request, by the route template matched.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&node),
            crate::admin::observe::<S>,
        ))
        .with_state(node)
}

async fn node_info<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(_): Authed,
) -> axum::Json<api::NodeInfo> {
    axum::Json(api::NodeInfo {
        origin: node.origin.as_str().to_owned(),
        log_key: hex::encode(node.log_key.public_key().as_bytes()),
        max_body: MAX_BODY,
        blob_chunk: BLOB_CHUNK,
        max_blob: node.limits.max_blob,
    })
}

// --- Talks and access lists ------------------------------------------------

async fn create_talks<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiJson(req): ApiJson<api::CreateTalks>,
) -> Result<Response, ApiError> {
    if !node.creators.contains(&key.id()) {
        return Err(ApiError::forbidden(
            "this key is not in the node's creators file; ask the node's operator to add it",
        ));
    }
    let list: AccessList = decode(&req.access_list, "access list")?;
    if list.generation() != 0 {
        return Err(ApiError::malformed(
            "a new talks' access list has generation 0",
        ));
    }
    if !list
        .entries()
        .iter()
        .any(|e| e.has(FLAG_MEDIATOR) && e.has(FLAG_DESIGNATED_SIGNER))
    {
        return Err(ApiError::malformed(
            "the access list needs a mediator's designated signer (talks authority)",
        ));
    }
    let talks = list.talks();
    let record = record_of(&list, 0);
    node.store
        .create_talks(
            &TalksRecord {
                talks,
                creator: key.id(),
                created_at: node.clock.now_ms(),
            },
            &record,
        )
        .await
        .map_err(store_error)?;
    // The first checkpoint, of the empty log, so that clients always have
    // one to start from.
    if let Err(e) =
        crate::integrate::first_checkpoint(&*node.store, talks, &node.origin, &*node.log_key).await
    {
        tracing::warn!(error = %e, "the first checkpoint of new talks failed; the integrator retries");
    }
    tracing::info!("talks opened");
    Ok((
        StatusCode::CREATED,
        axum::Json(access_list_body(talks, &record)),
    )
        .into_response())
}

async fn get_access_list<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
) -> Result<axum::Json<api::AccessListBody>, ApiError> {
    let talks = parse_talks(&talks)?;
    let (record, _, _) = node.member(talks, &key).await?;
    Ok(axum::Json(access_list_body(talks, &record)))
}

async fn pending_changes<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
) -> Result<axum::Json<api::PendingChanges>, ApiError> {
    let talks = parse_talks(&talks)?;
    node.member(talks, &key).await?;
    let pending = node
        .store
        .pending_changes(talks)
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|p| api::PendingChangeBody {
            delta_hash: hex::encode(p.delta_hash.0),
            change: p.change,
        })
        .collect();
    Ok(axum::Json(api::PendingChanges { pending }))
}

fn change_error(e: AccessListError) -> ApiError {
    match e {
        AccessListError::StaleBase { .. } => ApiError::stale(
            "the change applies to an older access list; fetch the current list and sign again",
        ),
        AccessListError::TooLarge(_) => ApiError::too_large(e.to_string()),
        other => ApiError::malformed(format!("the change is refused: {other}")),
    }
}

async fn submit_change<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
    ApiJson(req): ApiJson<api::SubmitChange>,
) -> Result<Response, ApiError> {
    let talks = parse_talks(&talks)?;
    let (record, list, entry) = node.member(talks, &key).await?;
    // Any member may hand in a change its signatures complete (they alone
    // authorise it); only a proposer's connection may leave one waiting.
    let may_propose = entry.has(FLAG_MAY_PROPOSE) || entry.has(FLAG_DESIGNATED_SIGNER);
    let change: AccessListChange = decode(&req.change, "access-list change")?;
    let delta_bytes = change.delta.to_canonical_bytes();
    let delta_hash = sha256(&delta_bytes);
    // The signatures given must each be valid on their own: `apply` checks
    // every one before it looks for missing ones.
    let outcome = match list.apply(&change) {
        Ok(next) => Ok(next),
        Err(AccessListError::MissingSignature(_)) if !may_propose => {
            return Err(ApiError::forbidden(
                "this key may not submit access-list changes that wait for signatures; submit \
                 it with every signature it needs, or from a head's or a talks authority's \
                 connection",
            ));
        }
        Err(AccessListError::MissingSignature(_))
            if !change
                .signatures()
                .iter()
                .any(|(k, _)| list.get(k).is_some_and(|e| e.party == entry.party)) =>
        {
            // A change that waits for signatures is stored only with a
            // signature of the submitter's own party (every signature was
            // verified by `apply` before it looked for missing ones):
            // otherwise anyone with the right to propose could fill the
            // pending slots with unsigned deltas.
            return Err(ApiError::forbidden(
                "a change that is not yet complete must carry a signature of your own party; sign it and submit again",
            ));
        }
        Err(AccessListError::MissingSignature(_)) => {
            // Merge with the signatures gathered so far for this delta.
            let pending = node
                .store
                .pending_changes(talks)
                .await
                .map_err(store_error)?;
            let earlier = pending.iter().find(|p| p.delta_hash == delta_hash);
            let mut sigs: BTreeMap<KeyId, _> = change.signatures().iter().copied().collect();
            if let Some(p) = earlier
                && let Ok(c) = AccessListChange::from_canonical_bytes(&p.change)
            {
                for (k, s) in c.signatures() {
                    sigs.entry(*k).or_insert(*s);
                }
            }
            let merged = AccessListChange::new(change.delta.clone(), sigs.into_iter().collect())
                .map_err(change_error)?;
            match list.apply(&merged) {
                Ok(next) => Ok(next),
                Err(AccessListError::MissingSignature(missing)) => {
                    let stored = PendingChange {
                        delta_hash,
                        change: merged.to_canonical_bytes(),
                    };
                    node.store
                        .put_pending_change(
                            talks,
                            record.hash,
                            earlier.map(|p| p.change.as_slice()),
                            &stored,
                        )
                        .await
                        .map_err(store_error)?;
                    Err(missing)
                }
                Err(e) => return Err(change_error(e)),
            }
        }
        Err(e) => return Err(change_error(e)),
    };
    match outcome {
        Ok(next) => {
            let next_record = record_of(&next, record.version + 1);
            node.store
                .replace_access_list(talks, record.hash, &next_record)
                .await
                .map_err(store_error)?;
            node.wakeups.bump(talks);
            tracing::info!("access list changed");
            Ok(axum::Json(api::ChangeOutcome {
                applied: true,
                delta_hash: hex::encode(delta_hash.0),
                missing: None,
                access_list: access_list_body(talks, &next_record),
            })
            .into_response())
        }
        Err(missing) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(api::ChangeOutcome {
                applied: false,
                delta_hash: hex::encode(delta_hash.0),
                missing: Some(missing),
                access_list: access_list_body(talks, &record),
            }),
        )
            .into_response()),
    }
}

// --- Invitations -----------------------------------------------------------

fn invitation_body(i: InvitationRecord) -> api::InvitationBody {
    let (redeemed_by, redeemed_at, payload) = match i.redeemed {
        Some(r) => (Some(hex::encode(r.key.0.0)), Some(r.at), Some(r.payload)),
        None => (None, None, None),
    };
    api::InvitationBody {
        token_hash: hex::encode(i.token_hash.0),
        party: i.party.to_hex(),
        expires_at: i.expires_at,
        invitation: i.invitation,
        redeemed_by,
        redeemed_at,
        payload,
    }
}

async fn create_invitation<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
    ApiJson(req): ApiJson<api::CreateInvitation>,
) -> Result<Response, ApiError> {
    let talks = parse_talks(&talks)?;
    let (_, list, entry) = node.member(talks, &key).await?;
    if !entry.has(FLAG_MEDIATOR) {
        return Err(ApiError::forbidden("only the mediator team invites"));
    }
    let invitation: Invitation = decode(&req.invitation, "invitation")?;
    invitation.verify(&list).map_err(invitation_error)?;
    let now = node.clock.now_ms();
    let ttl = u64::try_from(node.limits.max_invitation_ttl.as_millis()).unwrap_or(u64::MAX);
    let f = invitation.fields;
    if f.expires_at <= now || f.expires_at - now > ttl {
        return Err(ApiError::malformed(format!(
            "an invitation must expire in the future and within {} days",
            ttl / 86_400_000
        )));
    }
    if list.entries().iter().any(|e| e.party == f.party) {
        return Err(invitation_error(InvitationError::PartyExists));
    }
    let record = InvitationRecord {
        token_hash: f.token_hash,
        party: f.party,
        expires_at: f.expires_at,
        invitation: req.invitation,
        created_at: now,
        redeemed: None,
    };
    node.store
        .create_invitation(talks, &record)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, axum::Json(invitation_body(record))).into_response())
}

fn invitation_error(e: InvitationError) -> ApiError {
    match e {
        InvitationError::PartyExists | InvitationError::KeyExists => {
            ApiError::new(StatusCode::CONFLICT, codes::EXISTS, e.to_string())
        }
        other => ApiError::malformed(format!("the invitation is refused: {other}")),
    }
}

async fn list_invitations<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
) -> Result<axum::Json<api::Invitations>, ApiError> {
    let talks = parse_talks(&talks)?;
    let (_, _, entry) = node.member(talks, &key).await?;
    if !entry.has(FLAG_MEDIATOR) {
        return Err(ApiError::forbidden(
            "only the mediator team reads invitations",
        ));
    }
    let invitations = node
        .store
        .invitations(talks)
        .await
        .map_err(store_error)?
        .into_iter()
        .map(invitation_body)
        .collect();
    Ok(axum::Json(api::Invitations { invitations }))
}

async fn enrol<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
    ApiJson(req): ApiJson<api::Enrol>,
) -> Result<axum::Json<api::AccessListBody>, ApiError> {
    let talks = parse_talks(&talks)?;
    // The caller is not on the list yet: the token is its credential. Any
    // failure to find the invitation looks like unknown talks.
    let token: [u8; 32] = req
        .token
        .as_slice()
        .try_into()
        .map_err(|_| ApiError::not_found())?;
    let token_hash = sha256(&token);
    let Some(record) = node
        .store
        .invitation(talks, token_hash)
        .await
        .map_err(store_error)?
    else {
        return Err(ApiError::not_found());
    };
    let list_record = node
        .store
        .access_list(talks)
        .await
        .map_err(store_error)?
        .ok_or_else(ApiError::not_found)?;
    if let Some(r) = &record.redeemed {
        // A retry by the same key (its reply was lost) gets the list again
        // — while that key is still on it: a key removed since is an
        // outsider like any other.
        if r.key == key.id() {
            let list = AccessList::from_canonical_bytes(&list_record.bytes)
                .map_err(|_| ApiError::internal())?;
            if list.get(&key.id()).is_none() {
                return Err(ApiError::not_found());
            }
            return Ok(axum::Json(access_list_body(talks, &list_record)));
        }
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            codes::EXISTS,
            "this invitation was already used; ask the mediator for a new one",
        ));
    }
    let now = node.clock.now_ms();
    if now > record.expires_at {
        return Err(ApiError::new(
            StatusCode::GONE,
            codes::EXPIRED,
            "this invitation has expired; ask the mediator for a new one",
        ));
    }
    if req.payload.len() > MAX_ENROLMENT_PAYLOAD {
        return Err(ApiError::too_large(format!(
            "the enrolment payload is larger than {MAX_ENROLMENT_PAYLOAD} bytes"
        )));
    }
    let list =
        AccessList::from_canonical_bytes(&list_record.bytes).map_err(|_| ApiError::internal())?;
    let invitation =
        Invitation::from_canonical_bytes(&record.invitation).map_err(|_| ApiError::internal())?;
    let next = list.enrol(&invitation, key).map_err(invitation_error)?;
    let next_record = record_of(&next, list_record.version + 1);
    node.store
        .redeem_invitation(
            talks,
            token_hash,
            &Redemption {
                key: key.id(),
                at: now,
                payload: req.payload,
            },
            list_record.hash,
            &next_record,
        )
        .await
        .map_err(store_error)?;
    node.wakeups.bump(talks);
    tracing::info!("a party enrolled");
    Ok(axum::Json(access_list_body(talks, &next_record)))
}

// --- Envelopes -------------------------------------------------------------

pub(crate) fn submit_error(e: SubmitError) -> ApiError {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    if e == SubmitError::NotOnAccessList {
        return ApiError::not_found();
    }
    ApiError::new(status, e.code(), e.to_string())
}

async fn submit_envelope<S: Store>(
    State(node): State<Arc<Node<S>>>,
    AuthedSender(sender): AuthedSender,
    ApiPath(talks): ApiPath<String>,
    ApiBytes(bytes): ApiBytes,
) -> Result<axum::Json<api::Sequenced>, ApiError> {
    let talks = parse_talks(&talks)?;
    // Validated against the cached list; the store's sequencing checks
    // that the list still has that version, and a refusal that depends on
    // the list is only given against one just read.
    let mut view = node.access_view(talks, false).await?;
    let mut refreshed = 0;
    loop {
        if view.list.get(&sender.public_key().id()).is_none() {
            if view.fresh {
                return Err(ApiError::not_found());
            }
            view = node.access_view(talks, true).await?;
            continue;
        }
        if bytes.len() < SIGNED_HEADER_LEN {
            if !view.fresh {
                view = node.access_view(talks, true).await?;
                continue;
            }
            return Err(ApiError::malformed(
                "the request body is the 223-byte signed header followed by the body",
            ));
        }
        let (header, body) = bytes.split_at(SIGNED_HEADER_LEN);
        match crate::rooms::sequence_one(&node, talks, &sender, &view, header, body).await {
            crate::rooms::Attempt::Done(sequenced) => return sequenced.map(axum::Json),
            crate::rooms::Attempt::ListChanged => {
                refreshed += 1;
                if refreshed > MAX_ACCESS_REFRESHES {
                    return Err(ApiError::stale(
                        "the talks' access list kept changing while this was submitted; \
                         submit it again",
                    ));
                }
                view = node.access_view(talks, true).await?;
            }
        }
    }
}

/// How many times one envelope submission reads the access list again
/// because it changed under it before the request gives up (409 `stale`).
const MAX_ACCESS_REFRESHES: u32 = 3;

/// Query of `GET …/envelopes`.
#[derive(Debug, Deserialize)]
pub struct FetchQuery {
    /// The first seq.
    #[serde(default)]
    pub from: u64,
    /// At most this many envelopes (≤ 1000).
    pub limit: Option<usize>,
}

/// One stored envelope as delivered to `reader`: a Welcome's body only
/// to the devices it adds (everyone else of the room gets its header).
pub(crate) fn delivered(e: backchannel_store::StoredEnvelope, reader: &KeyId) -> api::Delivered {
    let body = if crate::rooms::body_for(e.welcome_to.as_deref(), reader) {
        e.body
    } else {
        None
    };
    api::Delivered {
        seq: e.seq,
        node_time: e.node_time,
        header: e.header,
        body,
        receipt: e.receipt,
    }
}

async fn fetch<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
    ApiQuery(q): ApiQuery<FetchQuery>,
) -> Result<axum::Json<api::Page>, ApiError> {
    let talks = parse_talks(&talks)?;
    let (_, _, entry) = node.member(talks, &key).await?;
    let reader = key.id();
    let limit = q.limit.unwrap_or(MAX_READ).clamp(1, MAX_READ);
    let log_size = node.store.log_size(talks).await.map_err(store_error)?;
    let rows = node
        .store
        .read(talks, q.from, limit)
        .await
        .map_err(store_error)?;
    let next = rows.last().map_or(q.from, |r| r.seq + 1);
    let envelopes = rows
        .into_iter()
        .filter(|r| may_read(&entry, r.room))
        .map(|r| delivered(r, &reader))
        .collect();
    Ok(axum::Json(api::Page {
        envelopes,
        next,
        log_size,
    }))
}

/// Whether `entry` reads envelopes of `room`: devices read their rooms.
pub(crate) fn may_read(entry: &AccessEntry, room: RoomId) -> bool {
    entry.has(FLAG_DEVICE) && entry.rooms().binary_search(&room).is_ok()
}

// --- Blobs -----------------------------------------------------------------

/// A blob as answered, with the chunks stored so far.
async fn blob_answer<S: Store>(
    node: &Node<S>,
    talks: TalksId,
    blob: &BlobRecord,
) -> Result<axum::Json<api::BlobBody>, ApiError> {
    let present = node
        .store
        .blob_chunks_present(talks, blob.hash)
        .await
        .map_err(store_error)?;
    Ok(axum::Json(blob_body(blob, present)))
}

fn blob_body(b: &BlobRecord, present: Vec<u64>) -> api::BlobBody {
    api::BlobBody {
        hash: hex::encode(b.hash.0),
        size: b.size,
        chunk_size: BLOB_CHUNK,
        chunks: BlobRecord::chunk_count(b.size),
        present,
        complete: b.complete,
    }
}

/// The blob, if the caller's rooms reference it (else `not_found`: which
/// blobs other rooms hold is their business).
async fn visible_blob<S: Store>(
    node: &Node<S>,
    talks: TalksId,
    entry: &AccessEntry,
    hash: &str,
) -> Result<BlobRecord, ApiError> {
    let hash = parse_digest(hash, "a blob hash")?;
    let blob = node
        .store
        .blob(talks, hash)
        .await
        .map_err(store_error)?
        .ok_or_else(ApiError::not_found)?;
    if blob.rooms.iter().any(|r| may_read(entry, *r)) {
        Ok(blob)
    } else {
        Err(ApiError::not_found())
    }
}

async fn create_blob<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
    ApiJson(req): ApiJson<api::CreateBlob>,
) -> Result<Response, ApiError> {
    let talks = parse_talks(&talks)?;
    let (_, _, entry) = node.member(talks, &key).await?;
    let hash = parse_digest(&req.hash, "a blob hash")?;
    let room = parse_room(&req.room)?;
    if !may_read(&entry, room) {
        return Err(ApiError::forbidden("this key may not post to that room"));
    }
    if req.size > node.limits.max_blob {
        return Err(ApiError::too_large(format!(
            "a blob may be at most {} bytes",
            node.limits.max_blob
        )));
    }
    // An existing blob is linked to another room only by its own party or
    // by a key that already sees it: knowing a hash must not open another
    // party's blob (or let one overwrite its unfinished chunks).
    if let Some(existing) = node.store.blob(talks, hash).await.map_err(store_error)?
        && existing.party != entry.party
        && !existing.rooms.iter().any(|r| may_read(&entry, *r))
    {
        return Err(ApiError::not_found());
    }
    let blob = node
        .store
        .create_blob(
            talks,
            &BlobRecord {
                hash,
                size: req.size,
                party: entry.party,
                uploader: key.id(),
                created_at: node.clock.now_ms(),
                complete: false,
                rooms: vec![room],
            },
            node.limits.party_blob_quota,
        )
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, blob_answer(&node, talks, &blob).await?).into_response())
}

async fn get_blob<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath((talks, hash)): ApiPath<(String, String)>,
) -> Result<axum::Json<api::BlobBody>, ApiError> {
    let talks = parse_talks(&talks)?;
    let (_, _, entry) = node.member(talks, &key).await?;
    let blob = visible_blob(&node, talks, &entry, &hash).await?;
    blob_answer(&node, talks, &blob).await
}

async fn put_chunk<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath((talks, hash, index)): ApiPath<(String, String, u64)>,
    ApiBytes(bytes): ApiBytes,
) -> Result<StatusCode, ApiError> {
    let talks = parse_talks(&talks)?;
    let (_, _, entry) = node.member(talks, &key).await?;
    let blob = visible_blob(&node, talks, &entry, &hash).await?;
    if blob.complete {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            codes::EXISTS,
            "the blob is complete; its chunks no longer change",
        ));
    }
    match BlobRecord::chunk_len(blob.size, index) {
        Some(len) if len == bytes.len() as u64 => {}
        Some(len) => {
            return Err(ApiError::malformed(format!(
                "chunk {index} must be {len} bytes"
            )));
        }
        None => {
            return Err(ApiError::malformed(
                "no such chunk index for this blob's size",
            ));
        }
    }
    // Chunks never change once stored: a chunk hashed for completion can
    // not be replaced behind the check.
    if let Some(stored) = node
        .store
        .blob_chunk(talks, blob.hash, index)
        .await
        .map_err(store_error)?
    {
        if stored == bytes {
            return Ok(StatusCode::NO_CONTENT);
        }
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            codes::EXISTS,
            format!("chunk {index} is already stored with other bytes; chunks never change"),
        ));
    }
    node.store
        .put_blob_chunk(talks, blob.hash, index, &bytes)
        .await
        .map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn complete_blob<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath((talks, hash)): ApiPath<(String, String)>,
) -> Result<axum::Json<api::BlobBody>, ApiError> {
    let talks = parse_talks(&talks)?;
    let (_, _, entry) = node.member(talks, &key).await?;
    let mut blob = visible_blob(&node, talks, &entry, &hash).await?;
    if !blob.complete {
        // Re-hash the stored chunks in order: the address must be earned.
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        for index in 0..BlobRecord::chunk_count(blob.size) {
            let chunk = node
                .store
                .blob_chunk(talks, blob.hash, index)
                .await
                .map_err(store_error)?
                .ok_or_else(|| ApiError::malformed(format!("chunk {index} is missing")))?;
            hasher.update(&chunk);
        }
        if Digest(hasher.finalize().into()) != blob.hash {
            return Err(ApiError::malformed(
                "the chunks do not hash to the blob's address; upload them again",
            ));
        }
        node.store
            .complete_blob(talks, blob.hash)
            .await
            .map_err(store_error)?;
        blob.complete = true;
    }
    blob_answer(&node, talks, &blob).await
}

async fn get_chunk<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath((talks, hash, index)): ApiPath<(String, String, u64)>,
) -> Result<Response, ApiError> {
    let talks = parse_talks(&talks)?;
    let (_, _, entry) = node.member(talks, &key).await?;
    let blob = visible_blob(&node, talks, &entry, &hash).await?;
    if !blob.complete {
        return Err(ApiError::not_found());
    }
    let chunk = node
        .store
        .blob_chunk(talks, blob.hash, index)
        .await
        .map_err(store_error)?
        .ok_or_else(ApiError::not_found)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        chunk,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use backchannel_codec::Encode as _;
    use backchannel_statement::fixtures::{key, labels};
    use backchannel_store::conformance::{talks_id, talks_record};
    use backchannel_store::memory::MemoryStore;

    use super::*;

    struct FixedClock;

    impl Clock for FixedClock {
        fn now_ms(&self) -> u64 {
            1_700_000_000_000
        }
    }

    /// A stream sends rows from memory against the cached list only when
    /// its version is at least the rows' (`u64::MAX` for rows admitted
    /// under no list): anything newer sends it to the store.
    #[tokio::test]
    async fn the_cached_list_stands_only_for_rows_of_its_version_or_older() {
        let store = Arc::new(MemoryStore::new());
        let fixture = backchannel_statement::fixtures::talks();
        let t = fixture.talks;
        let bytes = fixture
            .roster
            .implied_access_list(t)
            .expect("the reference list")
            .to_canonical_bytes();
        let list = AccessListRecord {
            hash: sha256(&bytes),
            bytes,
            version: 0,
        };
        store
            .create_talks(&talks_record(t), &list)
            .await
            .expect("create talks");
        let node = Node::new(
            store,
            NodeConfig {
                origin: NodeOrigin::new("node.example").expect("origin"),
                log_key: Arc::new(key(labels::NODE_LOG)),
                creators: Vec::new(),
                limits: Limits::default(),
                clock: Arc::new(FixedClock),
                instance: [1; 16],
            },
        );
        assert!(node.cached_list(t, 0).is_none(), "nothing cached yet");
        let view = node.access_view(t, true).await.expect("the list");
        assert!(node.cached_list(t, 0).is_some());
        assert_eq!(view.version, 0);
        assert!(node.cached_list(t, view.version).is_some());
        assert!(node.cached_list(t, view.version + 1).is_none());
        assert!(node.cached_list(t, u64::MAX).is_none());
        assert!(node.cached_list(talks_id(2), 0).is_none(), "another talks");
    }
}
