//! The real world the node runs in: the wall clock and TCP.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use backchannel_node::net::Listener;
use backchannel_node::sequencer::Clock;
use tokio::net::TcpStream;

/// Wall time: milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock set before 1970 reads as 1970: the node compares times
        // and never divides by them.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A TCP listener for the node.
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
}

impl TcpListener {
    /// Listens on `addr` (port 0: a port the system picks).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self {
            inner: tokio::net::TcpListener::bind(addr).await?,
        })
    }
}

impl Listener for TcpListener {
    type Io = TcpStream;

    /// The next connection, with `TCP_NODELAY` set (requests and stream
    /// frames are small and latency matters more than packet count) and
    /// the peer's address in canonical form (an IPv4 client of a dual-stack
    /// socket is rate-limited as the IPv4 address it is).
    ///
    /// Errors are returned as they are: `serve` skips those about one
    /// connection and pauses on the others (out of file descriptors), so
    /// a burst that exhausts them slows the node down instead of stopping
    /// it. Cancel-safe, as `tokio`'s `accept` is.
    async fn accept(&mut self) -> io::Result<(Self::Io, IpAddr)> {
        let (stream, peer) = self.inner.accept().await?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        Ok((stream, peer.ip().to_canonical()))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}
