//! Test support shared by the node's and the client's tests (a
//! dev-dependency only; nothing here ships): the node's [`Listener`] over
//! a loopback TCP socket, and a [`Clock`] the test moves.
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
