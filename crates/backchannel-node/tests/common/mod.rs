//! A real node on loopback (TLS, the in-memory store or SQLite), and
//! clients that authenticate with fixture keys.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use backchannel_codec::{Encode, RoomId, TalksId};
use backchannel_crypto::{PublicKey, SecretKey, Signer, sha256};
use backchannel_mls::{Handshake, Member};
use backchannel_node::api::ErrorBody;
use backchannel_node::limits::Limits;
use backchannel_node::net::{Transport, serve};
use backchannel_node::server::{Node, NodeConfig};
use backchannel_node::tls::{self, Fingerprint, Identity};
use backchannel_statement::access_list::FLAG_DEVICE;
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
            instance: [0xf5; 16],
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

// --- MLS rooms ---------------------------------------------------------------

/// The devices of the reference talks, in the order rooms are set up: the
/// first one seated in a room creates its group and adds the others.
pub const REFERENCE_DEVICES: [u8; 4] = [
    OMAN_LEAD_DEVICE,
    US_HEAD_DEVICE,
    IRAN_HEAD_DEVICE,
    US_NEGOTIATOR_DEVICE,
];

/// How long the fixture's key packages live (seconds).
pub const KEY_PACKAGE_LIFETIME_S: u64 = 30 * 24 * 3600;

/// How long before the system time the fixture's key packages become
/// valid (seconds): the node, whose clock was set to the system time a
/// moment before, must find them valid even if a second ticked since.
pub const KEY_PACKAGE_SKEW_S: u64 = 60;

/// The system time in milliseconds. OpenMLS checks key package lifetimes
/// against the system clock, and the node against its own: a node whose
/// rooms run on MLS must run its clock near the system's.
pub fn system_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64
}

/// The reference devices' MLS members in the rooms [`mls_rooms`] set up.
pub struct Mls {
    pub talks: TalksId,
    /// Each reference device's member state, by key label.
    pub members: std::collections::BTreeMap<u8, Member>,
    /// The rooms with a group, at epoch 1 with every device the reference
    /// access list seats there.
    pub rooms: Vec<RoomId>,
    setup_idem: u64,
}

impl Mls {
    /// `label`'s member state.
    pub fn member(&mut self, label: u8) -> &mut Member {
        self.members
            .get_mut(&label)
            .unwrap_or_else(|| panic!("no MLS member for key {label:#x}"))
    }

    /// A fresh idempotency key for a set-up envelope of `label` (never a
    /// key a test uses: those are not of this shape).
    fn setup_idem(&mut self, label: u8) -> [u8; 16] {
        self.setup_idem += 1;
        let mut k = [0u8; 16];
        k[0] = 0xfe;
        k[1] = label;
        k[8..].copy_from_slice(&self.setup_idem.to_be_bytes());
        k
    }
}

/// The reference devices the reference access list seats in `room`, in
/// [`REFERENCE_DEVICES`] order.
pub fn seated(room: RoomId) -> Vec<u8> {
    let list = reference_list();
    REFERENCE_DEVICES
        .into_iter()
        .filter(|l| {
            list.get(&key(*l).public_key().id())
                .is_some_and(|e| e.has(FLAG_DEVICE) && e.rooms().binary_search(&room).is_ok())
        })
        .collect()
}

/// Sets `node`'s clock to the system time, then gives each of `rooms` its
/// MLS group with every reference device the access list seats there (see
/// [`mls_rooms_with`]).
pub async fn mls_rooms<S: Store>(node: &TestNode<S>, talks: TalksId, rooms: &[RoomId]) -> Mls {
    node.clock.0.store(system_now_ms(), Ordering::SeqCst);
    mls_rooms_with(|label| node.client(label), talks, rooms).await
}

/// Gives each of `rooms` its MLS group, as real members do through the
/// API (`client` makes a client of the node for a key label): every
/// device to be added uploads key packages; the first seated device
/// creates the group (a handshake with its GroupInfo), claims the others'
/// key packages and commits adding them, with its Welcome
/// (`POST …/commits`); the added devices join from that Welcome. Each room
/// ends at epoch 1 and its set-up adds three envelopes to the log
/// (creation, commit, Welcome). The node's clock must be near the system
/// time (see [`system_now_ms`]).
pub async fn mls_rooms_with(
    client: impl Fn(u8) -> Client,
    talks: TalksId,
    rooms: &[RoomId],
) -> Mls {
    // Valid from a minute ago: the node's clock was set to the system time
    // a moment before, and a second may have ticked since.
    let not_before = system_now_ms() / 1000 - KEY_PACKAGE_SKEW_S;
    let mut mls = Mls {
        talks,
        members: REFERENCE_DEVICES
            .into_iter()
            .map(|l| (l, Member::new(talks, key(l))))
            .collect(),
        rooms: rooms.to_vec(),
        setup_idem: 0,
    };
    let admits = |_: &PublicKey| true;
    // Key packages: one for each room a device is added to, and a last
    // resort one.
    for label in REFERENCE_DEVICES {
        let added = rooms
            .iter()
            .filter(|r| seated(**r).iter().skip(1).any(|l| *l == label))
            .count();
        if added == 0 {
            continue;
        }
        let kps = mls
            .member(label)
            .key_packages(added, true, not_before, KEY_PACKAGE_LIFETIME_S)
            .expect("key packages");
        let a = client(label)
            .post(
                &path(talks, "/key-packages"),
                serde_json::json!({ "key_packages": kps.iter().map(|k| b64(k)).collect::<Vec<_>>() }),
            )
            .await;
        assert_eq!(a.status, 200, "key package upload of {label:#x}: {a:?}");
    }
    for &room in rooms {
        let seats = seated(room);
        let (&creator, others) = seats.split_first().expect("someone is seated in the room");
        let c = client(creator);
        // The group's creation.
        let gi = mls
            .member(creator)
            .create_room(room)
            .expect("creates the group");
        let body = Handshake::Create { group_info: &gi }.encode();
        let idem = mls.setup_idem(creator);
        let env = envelope_with(&key(creator), room, &body, idem, |h| {
            h.kind = Kind::MlsHandshake;
            h.commitment = Commitment([0; 32]);
        });
        let a = c.post_raw(&path(talks, "/envelopes"), env).await;
        assert_eq!(a.status, 200, "the group creation: {a:?}");
        if others.is_empty() {
            continue;
        }
        // The commit adding everyone else seated there, with its Welcome.
        let ids: Vec<String> = others
            .iter()
            .map(|l| key(*l).public_key().id().to_hex())
            .collect();
        let a = c
            .post(
                &path(talks, "/key-packages/claim"),
                serde_json::json!({ "devices": ids }),
            )
            .await;
        assert_eq!(a.status, 200, "the key package claim: {a:?}");
        let kps: Vec<Vec<u8>> = a.json["key_packages"]
            .as_array()
            .expect("claimed key packages")
            .iter()
            .map(|k| unb64(&k["key_package"]))
            .collect();
        let out = mls
            .member(creator)
            .commit(room, &kps, &[], &admits)
            .expect("commits");
        let hs = Handshake::Commit {
            commit: &out.commit,
            group_info: &out.group_info,
        }
        .encode();
        let welcome = out
            .welcome
            .clone()
            .expect("a Welcome for the added devices");
        let idem = mls.setup_idem(creator);
        let mut req = envelope_with(&key(creator), room, &hs, idem, |h| {
            h.kind = Kind::MlsHandshake;
            h.commitment = Commitment([0; 32]);
        });
        let idem = mls.setup_idem(creator);
        req.extend(envelope_with(&key(creator), room, &welcome, idem, |h| {
            h.kind = Kind::Welcome;
            h.commitment = Commitment([0; 32]);
        }));
        let a = c.post_raw(&path(talks, "/commits"), req).await;
        assert_eq!(a.status, 200, "the commit adding the room's devices: {a:?}");
        mls.member(creator)
            .merge_pending(room)
            .expect("merges its commit");
        for &label in others {
            let joined = mls
                .member(label)
                .join(&welcome, &admits)
                .expect("joins from the Welcome");
            assert_eq!(joined, Some(room));
        }
        for &label in &seats {
            assert_eq!(mls.member(label).epoch(room), Some(1), "{label:#x}");
        }
    }
    mls
}

/// The commitment an application envelope of `plaintext` carries (and its
/// MLS authenticated data): distinct for distinct plaintexts.
pub fn app_commitment(plaintext: &[u8]) -> [u8; 32] {
    sha256(plaintext).0
}

/// A signed application envelope (header ‖ body) from `sender_label` to
/// `room`: `plaintext` encrypted as an MLS application message of the
/// room's current epoch, its authenticated data the header's commitment.
pub fn mls_envelope(
    mls: &mut Mls,
    sender_label: u8,
    room: RoomId,
    plaintext: &[u8],
    idem: [u8; 16],
) -> Vec<u8> {
    let commitment = app_commitment(plaintext);
    let message = mls
        .member(sender_label)
        .encrypt(room, plaintext, &commitment)
        .expect("encrypts");
    envelope_with(&key(sender_label), room, &message, idem, |h| {
        h.kind = Kind::MlsApp;
        h.commitment = Commitment(commitment);
    })
}

/// Replaces the talks' access list in the store directly, as another node
/// applying a change would (behind this node's back): `remove` taken off,
/// `add` put on, the generation and version one up.
pub async fn replace_list<S: Store>(
    store: &S,
    talks: TalksId,
    remove: &[backchannel_crypto::KeyId],
    add: Vec<backchannel_statement::AccessEntry>,
) {
    let current = store.access_list(talks).await.unwrap().unwrap();
    let list =
        <AccessList as backchannel_codec::Decode>::from_canonical_bytes(&current.bytes).unwrap();
    let mut entries: Vec<_> = list
        .entries()
        .iter()
        .filter(|e| !remove.contains(&e.key_id()))
        .cloned()
        .collect();
    entries.extend(add);
    let next = AccessList::new(talks, list.generation() + 1, entries).unwrap();
    let bytes = next.to_canonical_bytes();
    store
        .replace_access_list(
            talks,
            current.hash,
            &backchannel_store::AccessListRecord {
                hash: sha256(&bytes),
                bytes,
                version: current.version + 1,
            },
        )
        .await
        .unwrap();
}
