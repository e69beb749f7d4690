//! Graceful shutdown: a request in progress when shutdown starts completes,
//! new connections are refused, streams close with 1001 (going away), and
//! `serve` returns — once every connection is done, or after the shutdown
//! grace. Accept errors pause accepting; they never end `serve`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use backchannel_codec::{Encode, TalksId};
use backchannel_crypto::Signer as _;
use backchannel_node::limits::Limits;
use backchannel_node::net::{Listener, ServeError, Transport, serve};
use backchannel_node::sequencer::Clock;
use backchannel_node::server::{Node, NodeConfig};
use backchannel_node::stream::CLOSE_GOING_AWAY;
use backchannel_node::tls::{self, Fingerprint, Identity};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_store::memory::MemoryStore;
use backchannel_store::{LeaseName, Store as _};
use backchannel_tlog::NodeOrigin;
use common::*;
use futures_util::StreamExt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// A fixed clock that counts its reads: the node reads it when a request
/// reaches a handler (the per-key rate check), so a test can tell that
/// its request is in progress. It stands at the system time of the
/// node's start: OpenMLS checks key package lifetimes against the system
/// clock, the node against this one.
struct CountingClock {
    reads: AtomicU64,
    now_ms: u64,
}

impl CountingClock {
    fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// Waits until the clock has been read more than `seen` times.
    async fn read_after(&self, seen: u64) {
        for _ in 0..4000 {
            if self.reads() > seen {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the request never reached the node");
    }
}

impl Clock for CountingClock {
    fn now_ms(&self) -> u64 {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.now_ms
    }
}

/// A node served until `stop` is sent (or dropped).
struct Running {
    addr: SocketAddr,
    fingerprint: Fingerprint,
    node: Arc<Node<MemoryStore>>,
    clock: Arc<CountingClock>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), ServeError>>,
}

async fn start<L: Listener>(listener: L, limits: Limits) -> Running {
    let clock = Arc::new(CountingClock {
        reads: AtomicU64::new(0),
        now_ms: system_now_ms(),
    });
    let node = Node::new(
        Arc::new(MemoryStore::new()),
        NodeConfig {
            origin: NodeOrigin::new("node.example").expect("origin"),
            log_key: Arc::new(key(NODE_LOG)),
            creators: vec![key(CREATOR).public_key()],
            limits,
            clock: clock.clone(),
            instance: [0xf4; 16],
        },
    );
    let identity = Identity::self_signed(&key(NODE_TLS), "node").expect("identity");
    let config = Arc::new(tls::server_config(&identity).expect("server config"));
    let addr = listener.local_addr().expect("addr");
    let (stop, stopping) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Transport::Tls(config),
        node.clone(),
        async move {
            let _ = stopping.await;
        },
    ));
    Running {
        addr,
        fingerprint: identity.fingerprint(),
        node,
        clock,
        stop: Some(stop),
        server,
    }
}

impl Running {
    fn client(&self, label: u8) -> Client {
        client_at(client_tls(label, self.fingerprint), self.addr)
    }

    /// Opens the reference talks through `creator` (a client of the
    /// creator's key).
    async fn open_reference_talks(&self, creator: &Client) -> TalksId {
        let list = reference_list();
        let a = creator
            .post(
                "/v1/talks",
                serde_json::json!({ "access_list": b64(&list.to_canonical_bytes()) }),
            )
            .await;
        assert_eq!(a.status, 201, "{a:?}");
        fixtures::talks().talks
    }

    /// A TLS connection as `label`'s key.
    async fn connect(&self, label: u8) -> Tls {
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        tokio_rustls::TlsConnector::from(Arc::new(client_tls(label, self.fingerprint)))
            .connect(ServerName::try_from("node.invalid").unwrap(), tcp)
            .await
            .expect("tls")
    }

    /// Starts the shutdown.
    fn shut_down(&mut self) {
        let _ = self.stop.take().expect("not shut down yet").send(());
    }

    /// What `serve` returned, within `within`.
    async fn returned(self, within: Duration) -> Result<(), ServeError> {
        tokio::time::timeout(within, self.server)
            .await
            .expect("serve returned in time")
            .expect("the serve task")
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

type Ws = tokio_tungstenite::WebSocketStream<Tls>;

async fn open_stream(node: &Running, label: u8, talks: TalksId) -> Ws {
    let tls = node.connect(label).await;
    let url = format!("ws://node.invalid{}", path(talks, "/stream?from=0"));
    tokio_tungstenite::client_async(url, tls)
        .await
        .expect("websocket")
        .0
}

/// The close code the stream ends with (`None`: closed without one),
/// skipping data frames.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame in time");
        match m {
            Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Reads frames until the stream says it is caught up.
async fn until_caught(ws: &mut Ws) {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame in time");
        match m {
            Some(Ok(Message::Text(t))) if t.contains("\"caught\"") => return,
            Some(Ok(_)) => continue,
            other => panic!("the stream ended: {other:?}"),
        }
    }
}

/// Writes the head of `POST …/envelopes` and the first half of `envelope`;
/// returns the rest.
async fn start_submission(conn: &mut Tls, talks: TalksId, envelope: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: node.invalid\r\ncontent-type: application/octet-stream\r\n\
         content-length: {}\r\n\r\n",
        path(talks, "/envelopes"),
        envelope.len()
    );
    let (first, rest) = envelope.split_at(envelope.len() / 2);
    conn.write_all(head.as_bytes()).await.expect("head");
    conn.write_all(first).await.expect("first half");
    conn.flush().await.expect("flush");
    rest.to_vec()
}

/// Everything the node sends until it closes the connection.
async fn read_until_closed(conn: &mut Tls) -> String {
    let mut response = Vec::new();
    // Closed with or without a TLS close_notify: what was read is the
    // response either way.
    let _ = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut response))
        .await
        .expect("the connection closed in time");
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn shutdown_finishes_requests_in_progress_refuses_new_connections_and_closes_streams() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // A grace far longer than the test waits: `serve` must return because
    // every connection is done, not because the grace ran out.
    let mut node = start(
        Tcp(listener),
        Limits {
            shutdown_grace: Duration::from_secs(120),
            ..test_limits()
        },
    )
    .await;
    // The creator's client keeps its connection open, idle, in its pool:
    // shutdown closes it at once.
    let creator = node.client(CREATOR);
    let talks = node.open_reference_talks(&creator).await;
    // The record room's MLS set-up comes first in the log: `base` envelopes.
    let t = fixtures::talks();
    let mut mls = mls_rooms_with(|l| node.client(l), talks, &[t.record]).await;
    let base = node.node.store().log_size(talks).await.unwrap();
    let mut stream = open_stream(&node, IRAN_HEAD_DEVICE, talks).await;
    until_caught(&mut stream).await;

    // A submission whose body is half sent when shutdown starts.
    let submission = mls_envelope(&mut mls, US_HEAD_DEVICE, t.record, b"in flight", [9; 16]);
    let mut conn = node.connect(US_HEAD_DEVICE).await;
    let seen = node.clock.reads();
    let rest = start_submission(&mut conn, talks, &submission).await;
    node.clock.read_after(seen).await;
    // The node holds the integrator lease.
    let held = node.node.lease().epoch();
    assert!(held > 0, "the node took the integrator lease");
    node.shut_down();

    // The stream is told the node is going away.
    assert_eq!(close_code(&mut stream).await, Some(CLOSE_GOING_AWAY));
    // The listener is closed before streams are: no new connection.
    let refused = TcpStream::connect(node.addr).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted: {refused:?}"
    );

    // The lease is handed over while the request is still in progress,
    // not left to expire: released (expiry 0) under the epoch it held.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let lease = node.node.store().lease(LeaseName::Integrator);
            if lease.is_some_and(|l| l.expires_ms == 0) {
                assert_eq!(lease.map(|l| l.epoch), Some(held));
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the lease is released during the drain");
    assert_eq!(node.node.lease().fence(), None);

    // The submission in progress completes, and its connection then closes.
    conn.write_all(&rest).await.expect("the rest of the body");
    conn.flush().await.expect("flush");
    let response = read_until_closed(&mut conn).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(&format!("\"seq\":{base}")), "{response}");
    assert_eq!(node.node.store().log_size(talks).await.unwrap(), base + 1);

    let store = node.node.clone();
    assert!(node.returned(Duration::from_secs(30)).await.is_ok());
    // Acknowledged means durable, shutdown or not.
    assert_eq!(store.store().log_size(talks).await.unwrap(), base + 1);
    drop(creator);
}

#[tokio::test]
async fn serve_returns_after_the_grace_when_a_request_never_finishes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut node = start(
        Tcp(listener),
        Limits {
            shutdown_grace: Duration::from_millis(200),
            ..test_limits()
        },
    )
    .await;
    let talks = node.open_reference_talks(&node.client(CREATOR)).await;
    let t = fixtures::talks();
    let mut mls = mls_rooms_with(|l| node.client(l), talks, &[t.record]).await;
    let base = node.node.store().log_size(talks).await.unwrap();
    let submission = mls_envelope(&mut mls, US_HEAD_DEVICE, t.record, b"never sent", [9; 16]);
    let mut conn = node.connect(US_HEAD_DEVICE).await;
    let seen = node.clock.reads();
    // The second half of the body never comes.
    let _rest = start_submission(&mut conn, talks, &submission).await;
    node.clock.read_after(seen).await;
    node.shut_down();
    let store = node.node.clone();
    assert!(node.returned(Duration::from_secs(30)).await.is_ok());
    // The stalled connection was cut, with no answer and nothing stored.
    assert_eq!(read_until_closed(&mut conn).await, "");
    assert_eq!(store.store().log_size(talks).await.unwrap(), base);
}

/// A listener whose accepts fail with EMFILE (too many open files) while
/// `failures` lasts, then accepts from `inner`.
struct Exhausted {
    inner: Tcp,
    failures: Arc<AtomicUsize>,
}

impl Listener for Exhausted {
    type Io = TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, IpAddr)> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            // EMFILE on Linux and macOS.
            return Err(io::Error::from_raw_os_error(24));
        }
        self.inner.accept().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

async fn exhausted(failures: usize) -> (Running, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let failures = Arc::new(AtomicUsize::new(failures));
    let node = start(
        Exhausted {
            inner: Tcp(listener),
            failures: failures.clone(),
        },
        test_limits(),
    )
    .await;
    (node, failures)
}

#[tokio::test]
async fn accept_errors_pause_accepting_and_never_end_serve() {
    // A few failures: the node pauses after each, then serves.
    let (mut node, failures) = exhausted(3).await;
    let a = node.client(OUTSIDER).get("/v1/node").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    node.shut_down();
    assert!(node.returned(Duration::from_secs(30)).await.is_ok());

    // A listener that keeps failing: `serve` keeps trying until shutdown.
    let (mut node, failures) = exhausted(usize::MAX).await;
    while failures.load(Ordering::SeqCst) > usize::MAX - 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!node.server.is_finished());
    node.shut_down();
    assert!(node.returned(Duration::from_secs(30)).await.is_ok());
}
