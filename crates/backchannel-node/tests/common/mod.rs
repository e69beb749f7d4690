//! A real node on loopback (TLS, the in-memory store or SQLite), and
//! clients that authenticate with fixture keys.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use backchannel_codec::{Encode, RoomId, TalksId};
use backchannel_crypto::{SecretKey, Signer, sha256};
use backchannel_node::api::ErrorBody;
use backchannel_node::limits::Limits;
use backchannel_node::net::{Transport, serve};
use backchannel_node::server::{Node, NodeConfig};
use backchannel_node::tls::{self, Fingerprint, Identity};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::header::pad_body;
use backchannel_statement::{AccessList, Commitment, Header, Kind};
use backchannel_store::Store;
use backchannel_store::memory::MemoryStore;
use backchannel_tlog::NodeOrigin;
use serde_json::Value;

/// The creator key (in the creators file).
pub const CREATOR: u8 = OMAN_LEAD_DEVICE;
/// A key on no list.
pub const OUTSIDER: u8 = 0x66;
/// The node's TLS key.
pub const NODE_TLS: u8 = 0x52;

pub use backchannel_test_support::{ManualClock, Tcp, test_limits};

/// Start of test time.
pub const T0: u64 = 1_800_000_000_000;

/// A running node.
pub struct TestNode<S: Store> {
    pub addr: SocketAddr,
    pub fingerprint: Fingerprint,
    pub node: Arc<Node<S>>,
    pub clock: Arc<ManualClock>,
    pub server: tokio::task::JoinHandle<()>,
}

/// Starts a node over `store` with `limits`.
pub async fn start_with<S: Store>(store: S, limits: Limits) -> TestNode<S> {
    let clock = Arc::new(ManualClock(AtomicU64::new(T0)));
    let node = Node::new(
        Arc::new(store),
        NodeConfig {
            origin: NodeOrigin::new("node.example").expect("origin"),
            log_key: Arc::new(key(NODE_LOG)),
            creators: vec![key(CREATOR).public_key()],
            limits,
            clock: clock.clone(),
        },
    );
    let identity = Identity::self_signed(&key(NODE_TLS), "node").expect("identity");
    let config = Arc::new(tls::server_config(&identity).expect("server config"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let n = node.clone();
    let server = tokio::spawn(async move {
        serve(
            Tcp(listener),
            Transport::Tls(config),
            n,
            std::future::pending(),
        )
        .await
        .expect("serve");
    });
    TestNode {
        addr,
        fingerprint: identity.fingerprint(),
        node,
        clock,
        server,
    }
}

/// Starts a node on the in-memory store.
pub async fn start(limits: Limits) -> TestNode<MemoryStore> {
    start_with(MemoryStore::new(), limits).await
}

/// A client's TLS configuration for `label`'s key.
pub fn client_tls(label: u8, fingerprint: Fingerprint) -> rustls::ClientConfig {
    let identity = Identity::self_signed(&key(label), "device").expect("identity");
    tls::client_config(&identity, fingerprint).expect("client config")
}

/// A TLS configuration presenting no client certificate.
pub fn anonymous_tls(fingerprint: Fingerprint) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(tls::PinnedServerVerifier::new(fingerprint)))
        .with_no_client_auth()
}

/// An HTTP client of the node.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

/// A response: status and JSON (or raw) body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub json: Value,
    pub bytes: Vec<u8>,
}

impl Answer {
    /// The error code of an error answer.
    pub fn code(&self) -> String {
        serde_json::from_value::<ErrorBody>(self.json.clone())
            .map(|e| e.error.code)
            .unwrap_or_else(|_| format!("<not an error body: {}>", self.json))
    }
}

impl Client {
    pub async fn send(&self, method: &str, path: &str, body: Option<Body>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        match body {
            Some(Body::Json(v)) => req = req.json(&v),
            Some(Body::Raw(b)) => {
                req = req
                    .header("content-type", "application/octet-stream")
                    .body(b)
            }
            None => {}
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body").to_vec();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            json,
            bytes,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None).await
    }

    pub async fn post(&self, path: &str, json: Value) -> Answer {
        self.send("POST", path, Some(Body::Json(json))).await
    }

    pub async fn post_raw(&self, path: &str, bytes: Vec<u8>) -> Answer {
        self.send("POST", path, Some(Body::Raw(bytes))).await
    }
}

/// A request body.
pub enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

impl<S: Store> TestNode<S> {
    /// A client authenticating with `label`'s key.
    pub fn client(&self, label: u8) -> Client {
        client_at(client_tls(label, self.fingerprint), self.addr)
    }

    /// A client with no key.
    pub fn anonymous(&self) -> Client {
        client_at(anonymous_tls(self.fingerprint), self.addr)
    }

    /// Opens the reference talks (its roster's access list) as the creator.
    pub async fn open_reference_talks(&self) -> TalksId {
        let t = fixtures::talks();
        let list = reference_list();
        let a = self
            .client(CREATOR)
            .post(
                "/v1/talks",
                serde_json::json!({ "access_list": b64(&list.to_canonical_bytes()) }),
            )
            .await;
        assert_eq!(a.status, 201, "{a:?}");
        t.talks
    }
}

pub fn client_at(config: rustls::ClientConfig, addr: SocketAddr) -> Client {
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .resolve("node.invalid", addr)
        .build()
        .expect("client");
    Client {
        http,
        base: format!("https://node.invalid:{}", addr.port()),
    }
}

pub fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub fn unb64(v: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("a base64 string"))
        .expect("base64")
}

/// The reference talks' generation-0 access list.
pub fn reference_list() -> AccessList {
    let t = fixtures::talks();
    t.roster.implied_access_list(t.talks).expect("list")
}

/// A signed envelope (header ‖ body) from `sender` to `room`.
pub fn envelope(sender: &SecretKey, room: RoomId, message: &[u8], idem: [u8; 16]) -> Vec<u8> {
    envelope_with(sender, room, message, idem, |_| {})
}

/// An envelope with `edit` applied to the header before signing (signed
/// with `sender` whatever the header says).
pub fn envelope_with(
    sender: &SecretKey,
    room: RoomId,
    message: &[u8],
    idem: [u8; 16],
    edit: impl Fn(&mut Header),
) -> Vec<u8> {
    let t = fixtures::talks();
    let body = pad_body(message).expect("pads");
    let mut header = Header {
        talks: t.talks,
        room,
        sender: sender.public_key().id(),
        kind: Kind::MlsApp,
        idempotency_key: idem,
        body_len: body.len() as u32,
        body_hash: sha256(&body),
        commitment: Commitment([2; 32]),
    };
    edit(&mut header);
    let unsigned = header.encode_unsigned();
    let sig = sender
        .sign(backchannel_statement::header::ENVELOPE_CONTEXT, &unsigned)
        .expect("signs");
    let mut bytes = unsigned.to_vec();
    bytes.extend_from_slice(sig.as_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// The path of talks-scoped endpoint `rest`.
pub fn path(talks: TalksId, rest: &str) -> String {
    format!("/v1/talks/{}{}", talks.to_hex(), rest)
}
