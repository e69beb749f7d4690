//! The node's API from the client's side (`docs/api.md`): typed calls over
//! TLS 1.3 that pin the node's certificate and authenticate with the
//! connection's key, and the delivery stream over WebSocket.
//!
//! The node is untrusted, so every answer is checked before it is returned:
//! bytes are re-hashed against the hash they came with (access lists, change
//! deltas, envelope bodies, blob content, the leaf of a sequenced envelope),
//! canonical structures are decoded strictly, and ranges are what was asked
//! for (seqs within a page, proof and tile sizes). What does not check out is
//! a [`NetError::Served`]; what the node refused is a [`NetError::Api`] with
//! its stable code. Signatures that need keys the caller holds (receipts by
//! the node's log key, checkpoints, envelope headers by their senders) are
//! left to the caller, with helpers ([`Sequenced::verify_receipt`],
//! [`Delivered::leaf_hash`]).
//!
//! One [`NodeClient`] per key: the TLS client certificate is the key's, so
//! every request on its connections acts as that key.
//!
//! # Several nodes
//!
//! A node address may list several nodes (`host:port,host:port`, at most
//! [`MAX_NODE_ADDRESSES`]): nodes serving one database, one log and one
//! TLS identity, so the pin, the origin and the log key are the same for
//! each. The client talks to one at a time and fails over to the next:
//! - a request that was never sent (the connection could not be made) is
//!   sent to the next node, whatever it is;
//! - a read (`GET`) whose connection failed later, or that the node
//!   answered 503 (its storage unavailable), is sent to the next node too
//!   (reading twice changes nothing);
//! - a write whose answer was lost is not resent by the call (it may have
//!   acted), but the next call goes to the next node. [`NodeClient::submit`]
//!   and [`NodeClient::submit_commit`] do resend (transport failures and
//!   503, with the same bytes: the envelope's idempotency key makes that
//!   safe), so an envelope reaches another node by itself;
//! - a server that does not present the pinned certificate stops the call
//!   ([`NetError::WrongCertificate`]): an impostor at one address is
//!   reported, never routed around;
//! - [`NodeClient::stream`] dials the nodes in turn from the current one;
//!   a caller resuming a closed stream from [`NodeStream::resume_from`]
//!   resumes from the last seq it holds on whichever node answers.
//!
//! Clones of a client share which node is current.
//!
//! Sockets: HTTP goes through reqwest's own connector; the stream dials with
//! hyper-util's `HttpConnector` (the one reqwest uses), or runs over any
//! byte stream the caller brings ([`NodeClient::stream_over`], for a
//! simulated network).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use backchannel_codec::{Decode, Encode, PartyId, RoomId, TalksId};
use backchannel_crypto::{Digest, KeyId, PublicKey, SecretKey, Sha256Writer, Signer, sha256};
use backchannel_node::api;
use backchannel_node::tls::{Fingerprint, Identity, client_config};
use backchannel_statement::header::SIGNED_HEADER_LEN;
use backchannel_statement::{
    AccessList, AccessListChange, Invitation, InvitationToken, SignedHeader,
};
use backchannel_tlog::{
    CheckpointNote, ConsistencyProof, Cosignature, InclusionProof, LEAF_DATA_LEN, LeafData,
    NodeOrigin, Receipt, ReceiptError,
};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tlog_tiles::Tile;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// Where every answer the node sends is copied, when a test asked for it
/// ([`tap_answers`]).
type Tap = std::sync::Mutex<Box<dyn std::io::Write + Send>>;
static TAP: std::sync::OnceLock<Tap> = std::sync::OnceLock::new();

/// For tests of what the node sends (the demo's canary test): from now on,
/// every answer body any [`NodeClient`] of this process reads, error
/// answers and stream frames included, is written to `sink`, each whole.
/// Once per process; a second call is refused.
#[doc(hidden)]
pub fn tap_answers(sink: Box<dyn std::io::Write + Send>) -> Result<(), &'static str> {
    TAP.set(std::sync::Mutex::new(sink))
        .map_err(|_| "answers are already tapped")
}

/// Copies `bytes`, one whole answer of the node, to the tap if there is one. A
/// failed write stops the process: a test relying on the tap must not pass
/// on a partial copy.
fn tap(bytes: &[u8]) {
    use std::io::Write as _;
    if let Some(sink) = TAP.get() {
        let mut sink = sink
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = sink.write_all(bytes) {
            eprintln!("the answer tap failed: {e}");
            std::process::abort();
        }
    }
}

/// How long connecting (TCP and TLS, and the WebSocket upgrade) may take:
/// the node's own handshake timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle connection stays in the client's pool: under the
/// node's default `header_timeout` (10 s), which also closes a keep-alive
/// connection that long idle. A pooled connection past that would be
/// reused just as the node closes it, and the request on it fail.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request may wait for the next bytes of an answer. Generous:
/// a submission waits for a durable commit, a blob chunk is 1 MiB.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times [`NodeClient::submit`] sends an envelope at most.
pub const SUBMIT_ATTEMPTS: u32 = 5;

/// The wait before the first resend of an envelope; it doubles each time
/// (0.25 + 0.5 + 1 + 2 s: a node restart or a storage hiccup).
pub const SUBMIT_BACKOFF: Duration = Duration::from_millis(250);

/// The largest JSON answer read (access lists, invitations, blobs, …):
/// far above what a valid one holds, so only a misbehaving node reaches it.
pub const MAX_ANSWER: usize = 16 << 20;

/// The largest page of envelopes read: the node reads at most 16 MiB of
/// headers and bodies per page (or one envelope), which base64 and JSON
/// grow by about a third.
pub const MAX_PAGE_ANSWER: usize = 64 << 20;

/// The largest error body read.
pub const MAX_ERROR_ANSWER: usize = 64 << 10;

/// The largest blob chunk size accepted from a node (the node's is 1 MiB).
pub const MAX_CHUNK_SIZE: u64 = 16 << 20;

/// The largest stream message: one envelope of at most 1 MiB of body, in
/// base64 JSON.
pub const MAX_STREAM_MESSAGE: usize = 4 << 20;

/// The close code reported when the stream ended without a close frame.
pub const CLOSE_ABNORMAL: u16 = 1006;

/// The close code reported for a close frame without a code.
pub const CLOSE_NO_STATUS: u16 = 1005;

/// The most node addresses one address list holds.
pub const MAX_NODE_ADDRESSES: usize = 8;

/// The longest address list, in its canonical form (bytes): what a talks
/// record and an invitation keep.
pub const MAX_NODE_ADDRESSES_LEN: usize = 256;

/// The code of an error answer that is not the node's JSON error body.
pub const UNKNOWN_CODE: &str = "unknown";

/// Why a call to the node failed.
#[derive(Debug, Error)]
pub enum NetError {
    /// The node refused the request (its JSON error body).
    #[error("the node refused the request ({status} {code}): {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The stable code (`backchannel_node::api::codes`), or
        /// [`UNKNOWN_CODE`] when the body was not the node's error body.
        code: String,
        /// The node's message, saying what to do next.
        message: String,
    },
    /// The node could not be reached, or the connection failed.
    #[error("could not talk to the node: {0}; check the address and the network, then retry")]
    Transport(String),
    /// The server did not present the pinned certificate.
    #[error(
        "the server at {address} did not present the node certificate pinned by fingerprint {pinned}; check the address and the fingerprint in your invitation: another certificate means another server, possibly an impostor, so do not proceed until the node's operator confirms its fingerprint"
    )]
    WrongCertificate {
        /// The address dialled.
        address: String,
        /// The pinned fingerprint (hex).
        pinned: String,
    },
    /// The node served something that does not check out.
    #[error(
        "the node served {0}; do not trust this answer: retry, and if it persists, report the node to its operator and to the other parties"
    )]
    Served(String),
    /// The request was not sent: the caller's arguments or setup are wrong.
    #[error("{0}")]
    Usage(String),
}

impl NetError {
    /// The stable code of an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the node surely did not act on the request: it refused it
    /// (a 4xx answer), the server was not the pinned node (nothing was
    /// sent), or the request was never sent. Otherwise (a lost answer, a
    /// 5xx) it may have acted, and the caller must keep what a retry needs.
    pub fn surely_not_acted(&self) -> bool {
        match self {
            Self::Api { status, .. } => (400..500).contains(status),
            Self::WrongCertificate { .. } | Self::Usage(_) => true,
            Self::Transport(_) | Self::Served(_) => false,
        }
    }

    /// Whether resending the same envelope may succeed: the connection
    /// failed, or the node's storage was unavailable.
    fn retryable(&self) -> bool {
        matches!(self, Self::Transport(_) | Self::Api { status: 503, .. })
    }
}

fn served(what: impl Into<String>) -> NetError {
    NetError::Served(what.into())
}

/// The node, as `GET /v1/node` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's origin (log origins are `<origin>/<talks hex>`).
    pub origin: NodeOrigin,
    /// The node's log key: receipts and checkpoints (pin it as the
    /// invitation says; the node's own claim is not evidence).
    pub log_key: PublicKey,
    /// The largest envelope body.
    pub max_body: u32,
    /// The blob chunk size.
    pub blob_chunk: u64,
    /// The largest blob.
    pub max_blob: u64,
}

/// An access list as served: decoded, its bytes re-hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedAccessList {
    /// The list.
    pub list: AccessList,
    /// SHA-256 of its canonical bytes (checked).
    pub hash: Digest,
    /// How many times it changed on this node (0 = as created).
    pub version: u64,
}

/// The answer to an access-list change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeOutcome {
    /// Whether it was applied (else it waits for more signatures).
    pub applied: bool,
    /// SHA-256 of the canonical delta (checked against the change sent).
    pub delta_hash: Digest,
    /// What is still missing, when not applied.
    pub missing: Option<String>,
    /// The access list now.
    pub access_list: ServedAccessList,
}

/// A change waiting for signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingChange {
    /// SHA-256 of its canonical delta (checked).
    pub delta_hash: Digest,
    /// The change with the signatures gathered so far.
    pub change: AccessListChange,
}

/// An invitation as served to the mediator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedInvitation {
    /// The signed invitation (its token hash, party and expiry are the
    /// ones the node indexes it by: checked).
    pub invitation: Invitation,
    /// The key that redeemed it, and when (node time, Unix ms).
    pub redeemed: Option<(KeyId, u64)>,
    /// The enrolment payload the redeemer left for the mediator.
    pub payload: Option<Vec<u8>>,
}

/// A sequenced envelope: the node's answer to [`NodeClient::submit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequenced {
    /// Its seq (leaf index).
    pub seq: u64,
    /// The node's timestamp (Unix ms).
    pub node_time: u64,
    /// Its leaf hash, checked against the envelope sent.
    pub leaf_hash: Digest,
    /// Its batch's receipt (decoded, not yet verified).
    pub receipt: Receipt,
}

impl Sequenced {
    /// Checks the receipt: `node_key` signed a batch holding this leaf.
    pub fn verify_receipt(&self, node_key: &PublicKey, talks: TalksId) -> Result<(), ReceiptError> {
        self.receipt
            .verify(node_key, talks, self.seq, self.node_time, &self.leaf_hash)
    }
}

/// A delivered envelope (fetched or streamed): decoded, its body re-hashed
/// against its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Its seq.
    pub seq: u64,
    /// The node's timestamp (Unix ms).
    pub node_time: u64,
    /// The signed header (its signature is not checked here: the sender's
    /// key is in the access list the caller replays).
    pub header: SignedHeader,
    /// The body (length and hash checked), unless purged by retention.
    pub body: Option<Vec<u8>>,
    /// Its batch's receipt (decoded, not yet verified).
    pub receipt: Receipt,
}

impl Delivered {
    /// The leaf the log holds for this envelope, computed from what was
    /// served.
    pub fn leaf_data(&self) -> LeafData {
        let header = self.header.header();
        LeafData {
            seq: self.seq,
            timestamp_ms: self.node_time,
            room: header.room,
            header_hash: self.header.hash(),
            body_hash: header.body_hash,
        }
    }

    /// The leaf hash of [`Delivered::leaf_data`].
    pub fn leaf_hash(&self) -> Digest {
        self.leaf_data().hash()
    }

    /// Checks the receipt: `node_key` signed a batch holding this leaf.
    pub fn verify_receipt(&self, node_key: &PublicKey) -> Result<(), ReceiptError> {
        self.receipt.verify(
            node_key,
            self.header.header().talks,
            self.seq,
            self.node_time,
            &self.leaf_hash(),
        )
    }
}

/// A page of envelopes: the caller's rooms' envelopes with
/// `from <= seq < next`, in increasing seq order (checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The envelopes.
    pub envelopes: Vec<Delivered>,
    /// Where the next page starts.
    pub next: u64,
    /// The log size when the page was read: page on until `next` reaches it.
    pub log_size: u64,
}

/// A blob as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// SHA-256 of the content: its address.
    pub hash: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The chunk size (every chunk but the last).
    pub chunk_size: u64,
    /// How many chunks (checked against size and chunk size).
    pub chunks: u64,
    /// The chunks stored so far.
    pub present: Vec<u64>,
    /// Whether it is complete (the node checked its hash).
    pub complete: bool,
}

impl Blob {
    /// The length chunk `index` has, or `None` past the last chunk.
    pub fn chunk_len(&self, index: u64) -> Option<u64> {
        let start = index.checked_mul(self.chunk_size)?;
        (start < self.size).then(|| (self.size - start).min(self.chunk_size))
    }
}

/// One node of a client's address list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// `host:port` as given (IPv6 hosts in brackets).
    authority: String,
    /// The host, without brackets.
    host: String,
}

/// A parsed node address list: one or more `host:port` (or `[v6]:port`)
/// separated by commas, at most [`MAX_NODE_ADDRESSES`] and
/// [`MAX_NODE_ADDRESSES_LEN`] bytes in canonical form, no repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddresses(Vec<Endpoint>);

impl NodeAddresses {
    /// Parses `host:port[,host:port…]` (spaces around commas ignored).
    pub fn parse(list: &str) -> Result<Self, NetError> {
        let mut out: Vec<Endpoint> = Vec::new();
        for item in list.split(',').map(str::trim) {
            let host = host_of(item).ok_or_else(|| {
                NetError::Usage(format!(
                    "the node address {item:?} is not host:port (an IPv6 host in brackets); use the address from your invitation (several nodes: host:port,host:port)"
                ))
            })?;
            if out.iter().any(|e| e.authority == item) {
                return Err(NetError::Usage(format!(
                    "the node address {item:?} is listed twice; list each node once"
                )));
            }
            out.push(Endpoint {
                authority: item.to_owned(),
                host,
            });
        }
        if out.len() > MAX_NODE_ADDRESSES {
            return Err(NetError::Usage(format!(
                "{} node addresses are listed, more than the {MAX_NODE_ADDRESSES} a client uses; list fewer",
                out.len()
            )));
        }
        let list = Self(out);
        let len = list.to_string().len();
        if len > MAX_NODE_ADDRESSES_LEN {
            return Err(NetError::Usage(format!(
                "the node addresses take {len} bytes, more than the {MAX_NODE_ADDRESSES_LEN} a talks record keeps; list fewer nodes or shorter names"
            )));
        }
        Ok(list)
    }

    /// How many nodes are listed (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never: a list holds at least one address.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The addresses, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|e| e.authority.as_str())
    }
}

impl fmt::Display for NodeAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&e.authority)?;
        }
        Ok(())
    }
}

/// A client of a node (or of several nodes serving one log, failing over
/// between them), acting as one key.
#[derive(Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    nodes: Arc<[Endpoint]>,
    /// The index in `nodes` of the node calls go to first.
    current: Arc<std::sync::atomic::AtomicUsize>,
    tls: Arc<rustls::ClientConfig>,
    key: PublicKey,
    pinned: Fingerprint,
    /// The local address connections are made from, if bound.
    local: Option<std::net::IpAddr>,
}

impl fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeClient")
            .field("addresses", &NodeAddresses(self.nodes.to_vec()).to_string())
            .field("current", &self.current_index())
            .field("pinned", &self.pinned)
            .field("key", &self.key.id())
            .finish_non_exhaustive()
    }
}

/// Splits `host:port` (or `[v6]:port`) into the host without brackets.
fn host_of(authority: &str) -> Option<String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        (host, port)
    } else {
        let (host, port) = authority.rsplit_once(':')?;
        if host.contains(':') {
            return None;
        }
        (host, port)
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if host.is_empty() || !host.chars().all(valid) || port.parse::<u16>().is_err() {
        return None;
    }
    Some(host.to_owned())
}

impl NodeClient {
    /// A client of the node at `address` (`host:port`, `[v6]:port` or a
    /// `SocketAddr`; or several, separated by commas: [`NodeAddresses`]),
    /// whose certificate must have `fingerprint`, acting as `key`
    /// (normally a per-talks device key).
    pub fn new(
        address: impl fmt::Display,
        fingerprint: Fingerprint,
        key: &SecretKey,
    ) -> Result<Self, NetError> {
        Self::build(address, fingerprint, key, None)
    }

    /// [`NodeClient::new`], with every connection of this client (its
    /// requests and [`NodeClient::stream`]) made from the local address
    /// `local`: for a load generator spreading its connections over several
    /// loopback addresses, or a host with several interfaces.
    /// ([`NodeClient::stream_over`] uses the connection the caller made.)
    pub fn with_local_address(
        address: impl fmt::Display,
        fingerprint: Fingerprint,
        key: &SecretKey,
        local: std::net::IpAddr,
    ) -> Result<Self, NetError> {
        Self::build(address, fingerprint, key, Some(local))
    }

    fn build(
        address: impl fmt::Display,
        fingerprint: Fingerprint,
        key: &SecretKey,
        local: Option<std::net::IpAddr>,
    ) -> Result<Self, NetError> {
        let nodes = NodeAddresses::parse(&address.to_string())?;
        let identity = Identity::self_signed(key, "client").map_err(|e| {
            NetError::Usage(format!("could not make this key's TLS certificate: {e}"))
        })?;
        let tls = client_config(&identity, fingerprint)
            .map_err(|e| NetError::Usage(format!("could not configure TLS: {e}")))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .local_address(local)
            .build()
            .map_err(|e| NetError::Usage(format!("could not set up the HTTP client: {e}")))?;
        Ok(Self {
            http,
            nodes: nodes.0.into(),
            current: Arc::default(),
            tls: Arc::new(tls),
            key: key.public_key(),
            pinned: fingerprint,
            local,
        })
    }

    /// The key this client acts as.
    pub fn key(&self) -> PublicKey {
        self.key
    }

    // --- Plumbing ----------------------------------------------------------

    /// The node addresses, in order.
    pub fn addresses(&self) -> NodeAddresses {
        NodeAddresses(self.nodes.to_vec())
    }

    /// The address calls go to first (the node that last answered, or the
    /// next after the one that last failed).
    pub fn current_address(&self) -> &str {
        &self.nodes[self.current_index()].authority
    }

    fn current_index(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::Relaxed) % self.nodes.len()
    }

    /// After node `i` failed: calls go to the one after it, unless another
    /// call already moved on.
    fn fail_over_from(&self, i: usize) {
        self.move_current(i, (i + 1) % self.nodes.len());
    }

    /// Calls go to node `to` from now on, if they still went to `from`
    /// (another call may have moved on meanwhile).
    fn move_current(&self, from: usize, to: usize) {
        let _ = self.current.compare_exchange(
            from,
            to,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The URL of `path` on the current node; [`NodeClient::call`] rewrites
    /// the authority for each node it tries.
    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.current_address())
    }

    fn talks_url(&self, talks: TalksId, rest: &str) -> String {
        self.url(&format!("/v1/talks/{}{rest}", talks.to_hex()))
    }

    /// A transport error at node `i`, or [`NetError::WrongCertificate`]
    /// when the pin failed somewhere in its chain.
    fn transport_at(&self, i: usize, e: &(dyn std::error::Error + 'static)) -> NetError {
        if pin_failed(e) {
            return NetError::WrongCertificate {
                address: self.nodes[i].authority.clone(),
                pinned: self.pinned.to_hex(),
            };
        }
        let e = chain(e);
        if self.nodes.len() > 1 {
            NetError::Transport(format!("{} (node {})", e, self.nodes[i].authority))
        } else {
            NetError::Transport(e)
        }
    }

    /// Sends `req` to the current node, failing over to the others as the
    /// module docs say; an error status is parsed into [`NetError::Api`]; a
    /// success answer is read up to `max` bytes.
    async fn call(&self, req: reqwest::RequestBuilder, max: usize) -> Result<Vec<u8>, NetError> {
        let req = req
            .build()
            .map_err(|e| NetError::Usage(format!("could not build the request: {}", chain(&e))))?;
        let read_only = req.method() == reqwest::Method::GET;
        let first = self.current_index();
        let n = self.nodes.len();
        for attempt in 0..n {
            let i = (first + attempt) % n;
            let last = attempt + 1 == n;
            let this = req.try_clone().ok_or_else(|| {
                NetError::Usage("a request with a streamed body cannot be resent".to_owned())
            })?;
            let this = self.at(this, i)?;
            match self.http.execute(this).await {
                Err(e) => {
                    let err = self.transport_at(i, &e);
                    if matches!(err, NetError::WrongCertificate { .. }) {
                        return Err(err);
                    }
                    self.fail_over_from(i);
                    // Not sent at all, or only a read: the next node may
                    // answer. A write that may have acted goes back to the
                    // caller (the next call goes to the next node).
                    if last || !(e.is_connect() || read_only) {
                        return Err(err);
                    }
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        match self.read_at(resp, max, i).await {
                            // The answer broke off: a read goes to the
                            // next node; anything else goes back.
                            Err(e @ NetError::Transport(_)) => {
                                self.fail_over_from(i);
                                if !read_only || last {
                                    return Err(e);
                                }
                                continue;
                            }
                            done => return done,
                        }
                    }
                    let body = self
                        .read_at(resp, MAX_ERROR_ANSWER, i)
                        .await
                        .unwrap_or_default();
                    let err = api_error(status.as_u16(), &body);
                    if status.as_u16() == 503 {
                        self.fail_over_from(i);
                        if read_only && !last {
                            continue;
                        }
                    }
                    return Err(err);
                }
            }
        }
        // `n >= 1` and the last attempt always returns.
        Err(NetError::Usage("no node address to call".to_owned()))
    }

    /// `req` addressed to node `i` (same path and query).
    fn at(&self, mut req: reqwest::Request, i: usize) -> Result<reqwest::Request, NetError> {
        let url = req.url();
        let rewritten = format!(
            "https://{}{}{}",
            self.nodes[i].authority,
            url.path(),
            url.query().map(|q| format!("?{q}")).unwrap_or_default()
        );
        *req.url_mut() = rewritten.parse().map_err(|_| {
            NetError::Usage(format!(
                "{:?} is not an address a URL can hold",
                self.nodes[i].authority
            ))
        })?;
        Ok(req)
    }

    async fn read_at(
        &self,
        mut resp: reqwest::Response,
        max: usize,
        i: usize,
    ) -> Result<Vec<u8>, NetError> {
        let too_long = |len: u64| {
            served(format!(
                "an answer of {len} bytes or more, over the {max} bytes a valid one can have"
            ))
        };
        if let Some(len) = resp.content_length()
            && len > max as u64
        {
            return Err(too_long(len));
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_at(i, &e))? {
            out.extend_from_slice(&chunk);
            if out.len() > max {
                tap(&out);
                return Err(too_long(out.len() as u64));
            }
        }
        // Whole answers, so that concurrent answers never interleave.
        tap(&out);
        Ok(out)
    }

    async fn get_json<T: DeserializeOwned>(&self, url: String, max: usize) -> Result<T, NetError> {
        let body = self.call(self.http.get(url), max).await?;
        json(&body)
    }

    async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        url: String,
        req: &B,
    ) -> Result<T, NetError> {
        let body = self.call(self.http.post(url).json(req), MAX_ANSWER).await?;
        json(&body)
    }

    // --- Node and talks ----------------------------------------------------

    /// `GET /v1/node`.
    pub async fn node_info(&self) -> Result<NodeInfo, NetError> {
        let info: api::NodeInfo = self.get_json(self.url("/v1/node"), MAX_ANSWER).await?;
        let origin = NodeOrigin::new(&info.origin)
            .map_err(|e| served(format!("a node origin that is not valid ({e})")))?;
        let log_key = hex::decode(&info.log_key)
            .ok()
            .and_then(|b| PublicKey::from_bytes(&b).ok())
            .ok_or_else(|| served("a log key that is not an acceptable Ed25519 key in hex"))?;
        Ok(NodeInfo {
            origin,
            log_key,
            max_body: info.max_body,
            blob_chunk: info.blob_chunk,
            max_blob: info.max_blob,
        })
    }

    /// `POST /v1/talks`: opens talks with their generation-0 access list
    /// (this key must be in the node's creators file).
    pub async fn create_talks(&self, list: &AccessList) -> Result<ServedAccessList, NetError> {
        let bytes = list.to_canonical_bytes();
        let body: api::AccessListBody = self
            .post_json(
                self.url("/v1/talks"),
                &api::CreateTalks {
                    access_list: bytes.clone(),
                },
            )
            .await?;
        if body.access_list != bytes {
            return Err(served(
                "as the new talks' access list another list than the one sent",
            ));
        }
        served_list(list.talks(), body)
    }

    /// `GET …/access-list`: the current list, its bytes re-hashed.
    pub async fn access_list(&self, talks: TalksId) -> Result<ServedAccessList, NetError> {
        let body = self
            .get_json(self.talks_url(talks, "/access-list"), MAX_ANSWER)
            .await?;
        served_list(talks, body)
    }

    /// `POST …/access-list/changes`: applied, or waiting for signatures.
    pub async fn submit_change(
        &self,
        talks: TalksId,
        change: &AccessListChange,
    ) -> Result<ChangeOutcome, NetError> {
        let body: api::ChangeOutcome = self
            .post_json(
                self.talks_url(talks, "/access-list/changes"),
                &api::SubmitChange {
                    change: change.to_canonical_bytes(),
                },
            )
            .await?;
        let delta_hash = hex_digest(&body.delta_hash, "delta hash")?;
        if delta_hash != sha256(&change.delta.to_canonical_bytes()) {
            return Err(served(
                "a change outcome for another delta than the one sent",
            ));
        }
        if body.applied == body.missing.is_some() {
            return Err(served(
                "a change outcome that is applied and missing signatures at once (or neither)",
            ));
        }
        Ok(ChangeOutcome {
            applied: body.applied,
            delta_hash,
            missing: body.missing,
            access_list: served_list(talks, body.access_list)?,
        })
    }

    /// `GET …/access-list/changes`: the changes waiting for signatures.
    pub async fn pending_changes(&self, talks: TalksId) -> Result<Vec<PendingChange>, NetError> {
        let body: api::PendingChanges = self
            .get_json(self.talks_url(talks, "/access-list/changes"), MAX_ANSWER)
            .await?;
        body.pending
            .into_iter()
            .map(|p| {
                let delta_hash = hex_digest(&p.delta_hash, "delta hash")?;
                let change = AccessListChange::from_canonical_bytes(&p.change)
                    .map_err(|e| served(format!("a pending change that does not decode ({e})")))?;
                if change.delta.talks != talks {
                    return Err(served("a pending change of other talks"));
                }
                if sha256(&change.delta.to_canonical_bytes()) != delta_hash {
                    return Err(served(
                        "a pending change whose delta does not hash to its delta hash",
                    ));
                }
                Ok(PendingChange { delta_hash, change })
            })
            .collect()
    }

    /// `POST …/invitations` (the mediator team).
    pub async fn create_invitation(
        &self,
        talks: TalksId,
        invitation: &Invitation,
    ) -> Result<ServedInvitation, NetError> {
        let bytes = invitation.to_canonical_bytes();
        let body: api::InvitationBody = self
            .post_json(
                self.talks_url(talks, "/invitations"),
                &api::CreateInvitation {
                    invitation: bytes.clone(),
                },
            )
            .await?;
        if body.invitation != bytes {
            return Err(served(
                "as the new invitation another one than the one sent",
            ));
        }
        served_invitation(talks, body)
    }

    /// `GET …/invitations` (the mediator team): every invitation with its
    /// redemption and enrolment payload.
    pub async fn invitations(&self, talks: TalksId) -> Result<Vec<ServedInvitation>, NetError> {
        let body: api::Invitations = self
            .get_json(self.talks_url(talks, "/invitations"), MAX_ANSWER)
            .await?;
        body.invitations
            .into_iter()
            .map(|i| served_invitation(talks, i))
            .collect()
    }

    /// `POST …/enrol`: redeems `token`, leaving `payload` for the mediator;
    /// answers the new access list, which must hold this client's key.
    pub async fn enrol(
        &self,
        talks: TalksId,
        token: &InvitationToken,
        payload: &[u8],
    ) -> Result<ServedAccessList, NetError> {
        let body = self
            .post_json(
                self.talks_url(talks, "/enrol"),
                &api::Enrol {
                    token: token.0.to_vec(),
                    payload: payload.to_vec(),
                },
            )
            .await?;
        let list = served_list(talks, body)?;
        if list.list.get(&self.key.id()).is_none() {
            return Err(served(
                "as the list after enrolment one that does not hold the enrolled key",
            ));
        }
        Ok(list)
    }

    // --- Envelopes ---------------------------------------------------------

    /// `POST …/envelopes`: sequences `header ‖ body`, retrying transport
    /// failures and 503 with the same bytes up to [`SUBMIT_ATTEMPTS`] times
    /// (the header's idempotency key makes a resend answer the first
    /// sequencing). The served leaf hash is checked against the envelope.
    pub async fn submit(
        &self,
        talks: TalksId,
        header: &SignedHeader,
        body: &[u8],
    ) -> Result<Sequenced, NetError> {
        let mut bytes = Vec::with_capacity(SIGNED_HEADER_LEN + body.len());
        bytes.extend_from_slice(&header.to_bytes());
        bytes.extend_from_slice(body);
        let leaf = |seq, node_time| {
            LeafData {
                seq,
                timestamp_ms: node_time,
                room: header.header().room,
                header_hash: header.hash(),
                body_hash: sha256(body),
            }
            .hash()
        };
        let mut delay = SUBMIT_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.submit_once(talks, bytes.clone(), leaf).await {
                Err(e) if e.retryable() && attempt < SUBMIT_ATTEMPTS => {
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    async fn submit_once(
        &self,
        talks: TalksId,
        bytes: Vec<u8>,
        leaf: impl Fn(u64, u64) -> Digest,
    ) -> Result<Sequenced, NetError> {
        let req = self
            .http
            .post(self.talks_url(talks, "/envelopes"))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes);
        let body: api::Sequenced = json(&self.call(req, MAX_ANSWER).await?)?;
        sequenced_of(&body, leaf(body.seq, body.node_time))
    }

    /// `POST …/commits`: a commit envelope and, when it adds members, its
    /// Welcome envelope, sequenced together. Retried like
    /// [`NodeClient::submit`] (the idempotency keys make a resend answer
    /// the first sequencing); each served leaf hash is checked.
    pub async fn submit_commit(
        &self,
        talks: TalksId,
        commit: (&SignedHeader, &[u8]),
        welcome: Option<(&SignedHeader, &[u8])>,
    ) -> Result<(Sequenced, Option<Sequenced>), NetError> {
        let mut bytes = Vec::new();
        for (h, b) in std::iter::once(commit).chain(welcome) {
            bytes.extend_from_slice(&h.to_bytes());
            bytes.extend_from_slice(b);
        }
        let check = |(h, b): (&SignedHeader, &[u8]), s: &api::Sequenced| {
            let leaf = LeafData {
                seq: s.seq,
                timestamp_ms: s.node_time,
                room: h.header().room,
                header_hash: h.hash(),
                body_hash: sha256(b),
            }
            .hash();
            sequenced_of(s, leaf)
        };
        let mut delay = SUBMIT_BACKOFF;
        let mut attempt = 1;
        loop {
            let req = self
                .http
                .post(self.talks_url(talks, "/commits"))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes.clone());
            let answer = match self.call(req, MAX_ANSWER).await {
                Ok(a) => a,
                Err(e) if e.retryable() && attempt < SUBMIT_ATTEMPTS => {
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let body: api::CommitSequenced = json(&answer)?;
            let c = check(commit, &body.commit)?;
            let w = match (welcome, &body.welcome) {
                (Some(w), Some(s)) => Some(check(w, s)?),
                (None, None) => None,
                _ => {
                    return Err(served(
                        "an answer to a commit whose Welcome placement does not match the request"
                            .to_owned(),
                    ));
                }
            };
            return Ok((c, w));
        }
    }

    /// `POST …/key-packages`: uploads this device's key packages; the
    /// count of its ordinary packages now on the node.
    pub async fn upload_key_packages(
        &self,
        talks: TalksId,
        key_packages: Vec<Vec<u8>>,
    ) -> Result<u64, NetError> {
        let body: api::KeyPackageCount = self
            .post_json(
                self.talks_url(talks, "/key-packages"),
                &api::KeyPackageUpload { key_packages },
            )
            .await?;
        Ok(body.count)
    }

    /// `GET …/key-packages`: how many ordinary key packages of this device
    /// the node holds.
    pub async fn key_package_count(&self, talks: TalksId) -> Result<u64, NetError> {
        let body: api::KeyPackageCount = self
            .get_json(self.talks_url(talks, "/key-packages"), MAX_ANSWER)
            .await?;
        Ok(body.count)
    }

    /// `POST …/key-packages/claim`: one key package of each device (in
    /// order; `None` where the device has none).
    pub async fn claim_key_packages(
        &self,
        talks: TalksId,
        devices: &[KeyId],
    ) -> Result<Vec<Option<Vec<u8>>>, NetError> {
        let body: api::KeyPackagesClaimed = self
            .post_json(
                self.talks_url(talks, "/key-packages/claim"),
                &api::KeyPackageClaim {
                    devices: devices.iter().map(KeyId::to_hex).collect(),
                },
            )
            .await?;
        if body.key_packages.len() != devices.len()
            || body
                .key_packages
                .iter()
                .zip(devices)
                .any(|(c, d)| c.device != d.to_hex())
        {
            return Err(served(
                "key packages for other devices than those asked for".to_owned(),
            ));
        }
        Ok(body
            .key_packages
            .into_iter()
            .map(|c| c.key_package)
            .collect())
    }

    /// `GET …/rooms/{room}/group-info`: the room's epoch and latest
    /// GroupInfo; `None` when the room has no group yet.
    pub async fn group_info(
        &self,
        talks: TalksId,
        room: RoomId,
    ) -> Result<Option<(u64, Vec<u8>)>, NetError> {
        let url = self.talks_url(talks, &format!("/rooms/{}/group-info", room.to_hex()));
        match self
            .get_json::<api::GroupInfoBody>(url, MAX_PAGE_ANSWER)
            .await
        {
            Ok(b) => Ok(Some((b.epoch, b.group_info))),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET …/envelopes?from=&limit=`: a page of the caller's rooms'
    /// envelopes, each body re-hashed against its header and each seq
    /// checked to lie in `[from, next)`, strictly increasing.
    pub async fn fetch(&self, talks: TalksId, from: u64, limit: usize) -> Result<Page, NetError> {
        let url = self.talks_url(talks, &format!("/envelopes?from={from}&limit={limit}"));
        let body: api::Page = self.get_json(url, MAX_PAGE_ANSWER).await?;
        if body.next < from {
            return Err(served(format!(
                "a page from seq {from} whose next seq {} is below it",
                body.next
            )));
        }
        let mut expected = from;
        let mut envelopes = Vec::with_capacity(body.envelopes.len());
        for d in body.envelopes {
            if d.seq < expected || d.seq >= body.next {
                return Err(served(format!(
                    "envelope seq {} in a page that must hold seqs from {expected} (increasing) below {}",
                    d.seq, body.next
                )));
            }
            expected = d.seq + 1;
            envelopes.push(delivered(talks, d)?);
        }
        Ok(Page {
            envelopes,
            next: body.next,
            log_size: body.log_size,
        })
    }

    // --- Logs --------------------------------------------------------------

    /// `GET …/checkpoint`: the latest checkpoint's size and signed note with
    /// every cosignature gathered (the note parses as a checkpoint of these
    /// talks of that size; its signatures are the caller's to verify).
    pub async fn checkpoint(&self, talks: TalksId) -> Result<(u64, Vec<u8>), NetError> {
        let body: api::CheckpointBody = self
            .get_json(self.talks_url(talks, "/checkpoint"), MAX_ANSWER)
            .await?;
        let note = body.note.into_bytes();
        let parsed = CheckpointNote::parse(&note)
            .map_err(|e| served(format!("a checkpoint note that does not parse ({e})")))?;
        let claimed = parsed.claimed();
        if claimed.size != body.size || claimed.origin.talks() != talks {
            return Err(served(format!(
                "a checkpoint of size {} whose note is of size {} or of other talks",
                body.size, claimed.size
            )));
        }
        Ok((body.size, note))
    }

    /// `POST …/checkpoint/cosignatures`: this key's cosignature of the
    /// latest checkpoint, of `size` (409 `stale` if a newer one exists).
    pub async fn cosign(
        &self,
        talks: TalksId,
        size: u64,
        cosignature: &Cosignature,
    ) -> Result<(), NetError> {
        let line = String::from_utf8(cosignature.to_line())
            .map_err(|_| NetError::Usage("a cosignature line is UTF-8".into()))?;
        self.call(
            self.http
                .post(self.talks_url(talks, "/checkpoint/cosignatures"))
                .json(&api::Cosign { size, line }),
            MAX_ERROR_ANSWER,
        )
        .await?;
        Ok(())
    }

    /// `GET …/tile/8/<L>/<N>[.p/<W>]`: a hash tile (its length checked).
    pub async fn hash_tile(&self, talks: TalksId, tile: &Tile) -> Result<Vec<u8>, NetError> {
        if tile.is_data() {
            return Err(NetError::Usage(
                "hash_tile reads hash tiles; read data tiles with data_tile".into(),
            ));
        }
        let len = tile.width() as usize * 32;
        let bytes = self.tile(talks, tile, len).await?;
        if bytes.len() != len {
            return Err(served(format!(
                "a hash tile of {} bytes where its width makes {len}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// `GET …/tile/8/data/<N>[.p/<W>]`: a data tile, the leaf data of its
    /// entries (each decoded, its seq its leaf index).
    pub async fn data_tile(&self, talks: TalksId, tile: &Tile) -> Result<Vec<u8>, NetError> {
        if !tile.is_data() {
            return Err(NetError::Usage(
                "data_tile reads data tiles; read hash tiles with hash_tile".into(),
            ));
        }
        let len = tile.width() as usize * LEAF_DATA_LEN;
        let bytes = self.tile(talks, tile, len).await?;
        if bytes.len() != len {
            return Err(served(format!(
                "a data tile of {} bytes where its width makes {len}",
                bytes.len()
            )));
        }
        let start = tile
            .level_index()
            .checked_mul(1 << tile.height())
            .ok_or_else(|| NetError::Usage("no such tile".into()))?;
        for (i, entry) in bytes.chunks(LEAF_DATA_LEN).enumerate() {
            let index = start + i as u64;
            let leaf = LeafData::from_canonical_bytes(entry).map_err(|e| {
                served(format!(
                    "leaf data at index {index} that does not decode ({e})"
                ))
            })?;
            if leaf.seq != index {
                return Err(served(format!(
                    "leaf data of seq {} at leaf index {index}",
                    leaf.seq
                )));
            }
        }
        Ok(bytes)
    }

    async fn tile(&self, talks: TalksId, tile: &Tile, max: usize) -> Result<Vec<u8>, NetError> {
        let url = self.talks_url(talks, &format!("/{}", tile.path()));
        self.call(self.http.get(url), max).await
    }

    /// `GET …/proof/inclusion?index=&size=`.
    pub async fn inclusion_proof(
        &self,
        talks: TalksId,
        index: u64,
        size: u64,
    ) -> Result<InclusionProof, NetError> {
        let url = self.talks_url(
            talks,
            &format!("/proof/inclusion?index={index}&size={size}"),
        );
        let body: api::ProofBody = self.get_json(url, MAX_ANSWER).await?;
        let proof = InclusionProof::from_canonical_bytes(&body.proof)
            .map_err(|e| served(format!("an inclusion proof that does not decode ({e})")))?;
        if proof.index() != index || proof.tree_size() != size {
            return Err(served(format!(
                "an inclusion proof of index {} in size {} when {index} in {size} was asked for",
                proof.index(),
                proof.tree_size()
            )));
        }
        Ok(proof)
    }

    /// `GET …/proof/consistency?from=&to=`.
    pub async fn consistency_proof(
        &self,
        talks: TalksId,
        from: u64,
        to: u64,
    ) -> Result<ConsistencyProof, NetError> {
        let url = self.talks_url(talks, &format!("/proof/consistency?from={from}&to={to}"));
        let body: api::ProofBody = self.get_json(url, MAX_ANSWER).await?;
        let proof = ConsistencyProof::from_canonical_bytes(&body.proof)
            .map_err(|e| served(format!("a consistency proof that does not decode ({e})")))?;
        if proof.old_size() != from || proof.new_size() != to {
            return Err(served(format!(
                "a consistency proof from {} to {} when {from} to {to} was asked for",
                proof.old_size(),
                proof.new_size()
            )));
        }
        Ok(proof)
    }

    // --- Blobs -------------------------------------------------------------

    fn blob_url(&self, talks: TalksId, hash: &Digest, rest: &str) -> String {
        self.talks_url(talks, &format!("/blobs/{}{rest}", hash.to_hex()))
    }

    /// `POST …/blobs`: declares a blob of `size` bytes at address `hash`,
    /// referenced by `room` (or references an existing one from `room`).
    pub async fn create_blob(
        &self,
        talks: TalksId,
        hash: &Digest,
        size: u64,
        room: RoomId,
    ) -> Result<Blob, NetError> {
        let body = self
            .post_json(
                self.talks_url(talks, "/blobs"),
                &api::CreateBlob {
                    hash: hash.to_hex(),
                    size,
                    room: room.to_hex(),
                },
            )
            .await?;
        let blob = served_blob(hash, body)?;
        if blob.size != size {
            return Err(served(format!(
                "a blob of {} bytes at the address of one of {size}",
                blob.size
            )));
        }
        Ok(blob)
    }

    /// `PUT …/blobs/{hash}/chunks/{index}`.
    pub async fn put_chunk(
        &self,
        talks: TalksId,
        hash: &Digest,
        index: u64,
        chunk: &[u8],
    ) -> Result<(), NetError> {
        let req = self
            .http
            .put(self.blob_url(talks, hash, &format!("/chunks/{index}")))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(chunk.to_vec());
        self.call(req, MAX_ERROR_ANSWER).await?;
        Ok(())
    }

    /// `POST …/blobs/{hash}/complete`: the node checks the chunks hash to
    /// the address.
    pub async fn complete_blob(&self, talks: TalksId, hash: &Digest) -> Result<Blob, NetError> {
        let body = self
            .call(
                self.http.post(self.blob_url(talks, hash, "/complete")),
                MAX_ANSWER,
            )
            .await?;
        let blob = served_blob(hash, json(&body)?)?;
        if !blob.complete {
            return Err(served(
                "a blob still incomplete as the answer to completing it",
            ));
        }
        Ok(blob)
    }

    /// `GET …/blobs/{hash}`.
    pub async fn blob(&self, talks: TalksId, hash: &Digest) -> Result<Blob, NetError> {
        let body = self
            .get_json(self.blob_url(talks, hash, ""), MAX_ANSWER)
            .await?;
        served_blob(hash, body)
    }

    /// `GET …/blobs/{hash}/chunks/{index}` (complete blobs only). One chunk
    /// cannot be checked alone: [`NodeClient::download_blob`] re-hashes the
    /// whole content.
    pub async fn get_chunk(
        &self,
        talks: TalksId,
        hash: &Digest,
        index: u64,
    ) -> Result<Vec<u8>, NetError> {
        let url = self.blob_url(talks, hash, &format!("/chunks/{index}"));
        self.call(self.http.get(url), MAX_CHUNK_SIZE as usize).await
    }

    /// Uploads `content` as a blob referenced by `room`: declares it, sends
    /// the chunks the node does not have yet (so an interrupted upload
    /// resumes), and completes it.
    pub async fn upload_blob(
        &self,
        talks: TalksId,
        room: RoomId,
        content: &[u8],
    ) -> Result<Blob, NetError> {
        let hash = sha256(content);
        let blob = self
            .create_blob(talks, &hash, content.len() as u64, room)
            .await?;
        if blob.complete {
            return Ok(blob);
        }
        for index in 0..blob.chunks {
            if blob.present.contains(&index) {
                continue;
            }
            let start = (index * blob.chunk_size) as usize;
            let len = blob.chunk_len(index).unwrap_or(0) as usize;
            let chunk = content
                .get(start..start + len)
                .ok_or_else(|| served("a chunk layout that does not fit the blob's size"))?;
            self.put_chunk(talks, &hash, index, chunk).await?;
        }
        self.complete_blob(talks, &hash).await
    }

    /// Downloads a complete blob and re-hashes its content against its
    /// address.
    pub async fn download_blob(&self, talks: TalksId, hash: &Digest) -> Result<Vec<u8>, NetError> {
        let blob = self.blob(talks, hash).await?;
        if !blob.complete {
            return Err(NetError::Usage(
                "the blob is not complete yet: its uploader has not finished; try again later"
                    .into(),
            ));
        }
        let mut hasher = Sha256Writer::new();
        let mut content = Vec::with_capacity(blob.size.min(64 << 20) as usize);
        for index in 0..blob.chunks {
            let chunk = self.get_chunk(talks, hash, index).await?;
            if Some(chunk.len() as u64) != blob.chunk_len(index) {
                return Err(served(format!(
                    "blob chunk {index} of {} bytes, not the length the blob's size makes",
                    chunk.len()
                )));
            }
            hasher.update(&chunk);
            content.extend_from_slice(&chunk);
        }
        if hasher.finish() != *hash {
            return Err(served("blob content that does not hash to its address"));
        }
        Ok(content)
    }

    // --- Stream ------------------------------------------------------------

    /// `GET …/stream?from=`: the delivery stream of the caller's rooms from
    /// seq `from`, over a new connection with the same pin and key, to the
    /// current node or, if it cannot be reached or its storage is
    /// unavailable (503), to the next ones in turn.
    pub async fn stream(&self, talks: TalksId, from: u64) -> Result<NodeStream, NetError> {
        let first = self.current_index();
        let n = self.nodes.len();
        let mut failed = None;
        for attempt in 0..n {
            let i = (first + attempt) % n;
            match self.stream_at(i, talks, from).await {
                Ok(stream) => {
                    self.move_current(first, i);
                    return Ok(stream);
                }
                Err(e @ (NetError::Transport(_) | NetError::Api { status: 503, .. })) => {
                    self.fail_over_from(i);
                    failed = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(failed.unwrap_or_else(|| NetError::Usage("no node address to call".to_owned())))
    }

    async fn stream_at(&self, i: usize, talks: TalksId, from: u64) -> Result<NodeStream, NetError> {
        let node = &self.nodes[i];
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.enforce_http(false);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_local_address(self.local);
        let uri: tungstenite::http::Uri = format!("http://{}", node.authority)
            .parse()
            .map_err(|_| NetError::Usage(format!("{:?} is not an address", node.authority)))?;
        let io = tower::ServiceExt::oneshot(connector, uri)
            .await
            .map_err(|e| self.transport_at(i, &e))?
            .into_inner();
        self.stream_over_at(i, io, talks, from, None)
            .await
            .map(|(stream, _)| stream)
    }

    /// The delivery stream over `io`, a byte stream already connected to the
    /// current node (TLS and the WebSocket upgrade happen here): for a
    /// network other than the operating system's.
    pub async fn stream_over<Io>(
        &self,
        io: Io,
        talks: TalksId,
        from: u64,
    ) -> Result<NodeStream, NetError>
    where
        Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.stream_over_at(self.current_index(), io, talks, from, None)
            .await
            .map(|(stream, _)| stream)
    }

    /// [`NodeClient::stream_over`], and the instant the TLS handshake was
    /// done and the WebSocket upgrade request (`GET …/stream?from=`) was
    /// about to be written: for a load generator timing a catch-up from
    /// the upgrade request to the `caught` frame, without the handshake.
    /// `now` reads the caller's clock (the library reads none).
    #[doc(hidden)]
    pub async fn stream_over_timed<Io>(
        &self,
        io: Io,
        talks: TalksId,
        from: u64,
        now: fn() -> std::time::Instant,
    ) -> Result<(NodeStream, std::time::Instant), NetError>
    where
        Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (stream, upgrade) = self
            .stream_over_at(self.current_index(), io, talks, from, Some(now))
            .await?;
        // `Some(now)` always yields the instant.
        Ok((stream, upgrade.unwrap_or_else(now)))
    }

    /// The stream, and the instant (by `now`, if given) its upgrade request
    /// was about to be written (after the TLS handshake).
    async fn stream_over_at<Io>(
        &self,
        i: usize,
        io: Io,
        talks: TalksId,
        from: u64,
        now: Option<fn() -> std::time::Instant>,
    ) -> Result<(NodeStream, Option<std::time::Instant>), NetError>
    where
        Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let node = &self.nodes[i];
        let name = ServerName::try_from(node.host.clone())
            .map_err(|_| NetError::Usage(format!("{:?} is not a host name", node.host)))?;
        let io: BoxIo = Box::new(io);
        let connect = async {
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
                .connect(name, io)
                .await
                .map_err(|e| self.transport_at(i, &e))?;
            let upgrade = now.map(|now| now());
            let url = format!(
                "wss://{}/v1/talks/{}/stream?from={from}",
                node.authority,
                talks.to_hex()
            );
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_STREAM_MESSAGE))
                .max_frame_size(Some(MAX_STREAM_MESSAGE));
            match tokio_tungstenite::client_async_with_config(url, tls, Some(config)).await {
                Ok((ws, _)) => Ok((ws, upgrade)),
                Err(tungstenite::Error::Http(resp)) => {
                    let body = resp.body().as_deref().unwrap_or_default();
                    tap(body);
                    Err(api_error(resp.status().as_u16(), body))
                }
                Err(e) => Err(self.transport_at(i, &e)),
            }
        };
        let (ws, upgrade) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                NetError::Transport(format!(
                    "the stream did not open within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })??;
        let stream = NodeStream {
            ws,
            talks,
            next: from,
            closed: None,
        };
        Ok((stream, upgrade))
    }
}

/// A byte stream to the node, whatever network carries it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
type BoxIo = Box<dyn Io>;

/// What the delivery stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// An envelope of one of the caller's rooms (checked like a fetched
    /// one, and its seq above every seq before).
    Envelope(Box<Delivered>),
    /// Every seq below this one has been delivered or was not the caller's:
    /// the stream has caught up.
    Caught(u64),
    /// The stream ended, with its close code: 1001 the node is shutting
    /// down, 4001 idle, 4003 the key left the access list, 4008 too slow,
    /// 1011 node error, [`CLOSE_ABNORMAL`] the connection dropped. Resume
    /// with a new stream from [`NodeStream::resume_from`].
    Closed(u16),
}

/// The delivery stream: envelopes of the caller's rooms in seq order, no
/// gap and no duplicate. Keep calling [`NodeStream::next`]: it answers the
/// node's pings, and a stream not read from for the node's idle timeout is
/// closed (4001).
pub struct NodeStream {
    ws: WebSocketStream<tokio_rustls::client::TlsStream<BoxIo>>,
    talks: TalksId,
    next: u64,
    closed: Option<u16>,
}

impl fmt::Debug for NodeStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeStream")
            .field("next", &self.next)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl NodeStream {
    /// The next event; once closed, always [`StreamEvent::Closed`].
    pub async fn next(&mut self) -> Result<StreamEvent, NetError> {
        loop {
            if let Some(code) = self.closed {
                return Ok(StreamEvent::Closed(code));
            }
            let message = match self.ws.next().await {
                Some(Ok(m)) => m,
                Some(Err(_)) | None => {
                    self.closed = Some(CLOSE_ABNORMAL);
                    continue;
                }
            };
            match message {
                Message::Text(text) => {
                    tap(text.as_bytes());
                    let frame: api::StreamFrame = serde_json::from_str(&text)
                        .map_err(|e| served(format!("a stream frame that is not a frame ({e})")))?;
                    return self.frame(frame);
                }
                // tungstenite queued the pong; send it now.
                Message::Ping(_) => {
                    if self.ws.flush().await.is_err() {
                        self.closed = Some(CLOSE_ABNORMAL);
                    }
                }
                Message::Pong(_) | Message::Frame(_) => {}
                Message::Binary(bytes) => {
                    tap(&bytes);
                    return Err(served("a binary stream frame (frames are JSON text)"));
                }
                Message::Close(frame) => {
                    self.closed = Some(frame.map_or(CLOSE_NO_STATUS, |f| u16::from(f.code)));
                }
            }
        }
    }

    fn frame(&mut self, frame: api::StreamFrame) -> Result<StreamEvent, NetError> {
        match frame {
            api::StreamFrame::Envelope(d) => {
                if d.seq < self.next {
                    return Err(served(format!(
                        "on the stream envelope seq {} where seqs from {} were due",
                        d.seq, self.next
                    )));
                }
                let d = delivered(self.talks, d)?;
                self.next = d.seq + 1;
                Ok(StreamEvent::Envelope(Box::new(d)))
            }
            api::StreamFrame::Caught { next } => {
                if next < self.next {
                    return Err(served(format!(
                        "on the stream caught up at seq {next}, below seq {} it had reached",
                        self.next
                    )));
                }
                self.next = next;
                Ok(StreamEvent::Caught(next))
            }
        }
    }

    /// Where a new stream resumes: the seq after the last envelope
    /// delivered, or the last caught-up point.
    pub fn resume_from(&self) -> u64 {
        self.next
    }

    /// Closes the stream (normal closure).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

// --- Checks of what was served ---------------------------------------------

fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, NetError> {
    serde_json::from_slice(bytes)
        .map_err(|e| served(format!("an answer that is not the API's JSON ({e})")))
}

/// The API error of an error answer.
fn api_error(status: u16, body: &[u8]) -> NetError {
    match serde_json::from_slice::<api::ErrorBody>(body) {
        Ok(b) => NetError::Api {
            status,
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => NetError::Api {
            status,
            code: UNKNOWN_CODE.to_owned(),
            message: format!(
                "the answer is not a Backchannel node's error ({:?}); check that the address is the node's",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        },
    }
}

/// A placement as answered, checked against the leaf hash the envelope
/// sent has at that seq and time.
fn sequenced_of(body: &api::Sequenced, leaf: Digest) -> Result<Sequenced, NetError> {
    let leaf_hash = hex_digest(&body.leaf_hash, "leaf hash")?;
    if leaf_hash != leaf {
        return Err(served(format!(
            "for the envelope sent a leaf hash at seq {} that is not the envelope's",
            body.seq
        )));
    }
    let receipt = Receipt::from_canonical_bytes(&body.receipt).map_err(|e| {
        served(format!(
            "a receipt for seq {} that does not decode ({e})",
            body.seq
        ))
    })?;
    Ok(Sequenced {
        seq: body.seq,
        node_time: body.node_time,
        leaf_hash,
        receipt,
    })
}

fn hex_digest(s: &str, what: &str) -> Result<Digest, NetError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| served(format!("a {what} that is not 64 hex digits")))?;
    Ok(Digest(out))
}

fn served_list(talks: TalksId, body: api::AccessListBody) -> Result<ServedAccessList, NetError> {
    if TalksId::from_hex(&body.talks).ok() != Some(talks) {
        return Err(served("the access list of other talks"));
    }
    let hash = hex_digest(&body.hash, "access list hash")?;
    if sha256(&body.access_list) != hash {
        return Err(served(
            "an access list whose bytes do not hash to the hash it came with",
        ));
    }
    let list = AccessList::from_canonical_bytes(&body.access_list)
        .map_err(|e| served(format!("an access list that does not decode ({e})")))?;
    if list.talks() != talks {
        return Err(served("the access list of other talks"));
    }
    Ok(ServedAccessList {
        list,
        hash,
        version: body.version,
    })
}

fn served_invitation(
    talks: TalksId,
    body: api::InvitationBody,
) -> Result<ServedInvitation, NetError> {
    let invitation = Invitation::from_canonical_bytes(&body.invitation)
        .map_err(|e| served(format!("an invitation that does not decode ({e})")))?;
    let f = invitation.fields;
    if f.talks != talks
        || hex_digest(&body.token_hash, "token hash")? != f.token_hash
        || PartyId::from_hex(&body.party).ok() != Some(f.party)
        || body.expires_at != f.expires_at
    {
        return Err(served(
            "an invitation listed under another talks, token hash, party or expiry than its own",
        ));
    }
    let redeemed = match (body.redeemed_by, body.redeemed_at) {
        (Some(by), Some(at)) => Some((KeyId(hex_digest(&by, "redeeming key id")?), at)),
        (None, None) => None,
        _ => {
            return Err(served(
                "an invitation redeemed by a key without a time, or the reverse",
            ));
        }
    };
    Ok(ServedInvitation {
        invitation,
        redeemed,
        payload: body.payload,
    })
}

/// Decodes a delivered envelope of `talks` and re-hashes its body.
fn delivered(talks: TalksId, d: api::Delivered) -> Result<Delivered, NetError> {
    let seq = d.seq;
    let header = SignedHeader::decode(&d.header).map_err(|e| {
        served(format!(
            "envelope seq {seq} whose header does not decode ({e})"
        ))
    })?;
    if header.header().talks != talks {
        return Err(served(format!("envelope seq {seq} of other talks")));
    }
    if let Some(body) = &d.body {
        header.check_body(body).map_err(|e| {
            served(format!(
                "envelope seq {seq} whose body does not match its header ({e})"
            ))
        })?;
    }
    let receipt = Receipt::from_canonical_bytes(&d.receipt).map_err(|e| {
        served(format!(
            "envelope seq {seq} whose receipt does not decode ({e})"
        ))
    })?;
    Ok(Delivered {
        seq,
        node_time: d.node_time,
        header,
        body: d.body,
        receipt,
    })
}

fn served_blob(hash: &Digest, b: api::BlobBody) -> Result<Blob, NetError> {
    if hex_digest(&b.hash, "blob hash")? != *hash {
        return Err(served("another blob than the one asked for"));
    }
    if b.chunk_size == 0 || b.chunk_size > MAX_CHUNK_SIZE {
        return Err(served(format!(
            "a blob chunk size of {} bytes",
            b.chunk_size
        )));
    }
    if b.chunks != b.size.div_ceil(b.chunk_size) || b.present.iter().any(|&i| i >= b.chunks) {
        return Err(served(
            "a blob whose chunk count or present chunks do not fit its size",
        ));
    }
    Ok(Blob {
        hash: *hash,
        size: b.size,
        chunk_size: b.chunk_size,
        chunks: b.chunks,
        present: b.present,
        complete: b.complete,
    })
}

// --- Error chains ----------------------------------------------------------

/// Whether the pinned-certificate check failed somewhere in `e`'s chain
/// (rustls errors travel inside `io::Error`s, whose `source` skips them).
fn pin_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(rustls::Error::InvalidCertificate(_)) = err.downcast_ref::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && pin_failed(inner)
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// `e` and its sources, joined.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(err) = next {
        let s = err.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = err.source();
    }
    out
}
