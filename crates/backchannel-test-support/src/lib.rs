//! Test support shared by the node's and the client's tests (a
//! dev-dependency only; nothing here ships): the node's [`Listener`] over
//! a loopback TCP socket, a node served over TLS there ([`serve_tls`]),
//! and a [`Clock`] the test moves.
//!
//! It is one of the crates allowed ambient IO (sockets), like the CLI.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use backchannel_node::limits::Limits;
use backchannel_node::net::Listener;
use backchannel_node::sequencer::Clock;

/// A clock the test sets and moves (Unix ms).
#[derive(Debug)]
pub struct ManualClock(pub AtomicU64);

impl ManualClock {
    /// A clock reading `ms`.
    pub fn at(ms: u64) -> Self {
        Self(AtomicU64::new(ms))
    }

    /// Moves the clock by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Tokio's TCP listener as the node's listener.
#[derive(Debug)]
pub struct Tcp(pub tokio::net::TcpListener);

impl Tcp {
    /// Binds `addr` (port 0: any free port).
    pub async fn bind(addr: &str) -> std::io::Result<Self> {
        Ok(Self(tokio::net::TcpListener::bind(addr).await?))
    }
}

impl Listener for Tcp {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> std::io::Result<(Self::Io, IpAddr)> {
        let (s, a) = self.0.accept().await?;
        Ok((s, a.ip()))
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Limits for tests: rates and connection counts out of the way, fast
/// checkpoints (20 ms).
pub fn test_limits() -> Limits {
    Limits {
        requests_per_second: 100_000,
        request_burst: 100_000,
        connections_per_second: 100_000,
        connection_burst: 100_000,
        connections_per_source: 100_000,
        checkpoint_interval: std::time::Duration::from_millis(20),
        ..Limits::default()
    }
}

/// A node serving TLS on loopback for a test, until [`Served::stop`] (or
/// until dropped: the server then stops when the runtime ends).
#[derive(Debug)]
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate's fingerprint, for clients to pin.
    pub fingerprint: backchannel_node::tls::Fingerprint,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

/// Why a test node could not be served.
pub type ServeError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `node` over TLS 1.3 on `addr` (port 0: any free loopback port),
/// with a self-signed certificate for `tls_key`.
pub async fn serve_tls<S: backchannel_store::Store>(
    node: std::sync::Arc<backchannel_node::server::Node<S>>,
    tls_key: &backchannel_crypto::SecretKey,
    addr: SocketAddr,
) -> Result<Served, ServeError> {
    use backchannel_node::net::{Transport, serve};
    use backchannel_node::tls::{Identity, server_config};
    let identity = Identity::self_signed(tls_key, "node")?;
    let config = std::sync::Arc::new(server_config(&identity)?);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let served = serve(Tcp(listener), Transport::Tls(config), node, async {
            let _ = stopped.await;
        })
        .await;
        assert!(served.is_ok(), "the test node failed: {served:?}");
    });
    Ok(Served {
        addr,
        fingerprint: identity.fingerprint(),
        stop: Some(stop),
        server,
    })
}

impl Served {
    /// Stops serving (requests in progress finish) and waits until the
    /// node, its integrator and its store are gone.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.server).await;
    }
}

/// Seeded random byte changes [`survives_corpus`] makes per corpus file.
pub const RANDOM_MUTATIONS: u64 = 300;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs the fuzz target `name` briefly, as every `cargo test` does: over
/// its checked-in corpus (`corpus/<name>/`, which must not be empty), and
/// over deterministic mutations of each file — every single-bit flip of
/// its first 512 bits, truncation to every length below min(its length,
/// 2048), and [`RANDOM_MUTATIONS`] seeded random changes of one to four
/// bytes. The target asserts what it checks; this only feeds it.
pub fn survives_corpus(corpus: &std::path::Path, name: &str, target: fn(&[u8])) {
    let dir = corpus.join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap_or_else(|e| panic!("{e}")).path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus for fuzz target {name}");
    target(&[]);
    for file in files {
        let input = std::fs::read(&file).unwrap_or_else(|e| panic!("{e}"));
        target(&input);
        for bit in 0..(input.len() * 8).min(512) {
            let mut m = input.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            target(&m);
        }
        for len in 0..input.len().min(2048) {
            target(&input[..len]);
        }
        let mut state = input.len() as u64;
        for _ in 0..RANDOM_MUTATIONS {
            if input.is_empty() {
                break;
            }
            let mut m = input.clone();
            for _ in 0..1 + splitmix(&mut state) % 4 {
                let i = (splitmix(&mut state) as usize) % m.len();
                m[i] = splitmix(&mut state) as u8;
            }
            target(&m);
        }
    }
}
