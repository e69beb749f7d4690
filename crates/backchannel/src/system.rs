//! The real world the node runs in: the wall clock and TCP.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backchannel_node::net::Listener;
use backchannel_node::sequencer::Clock;
use tokio::net::TcpStream;

/// How long accepting pauses after an error that is not about one
/// connection (out of file descriptors, out of memory): long enough for
/// connections to close and free what is missing, short enough that the
/// node is back promptly. Hyper's old `AddrIncoming` paused the same second.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

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
    /// Never fails: an error about one connection skips it, and any other
    /// error pauses accepting for [`ACCEPT_ERROR_PAUSE`] and tries again,
    /// so a burst that exhausts file descriptors slows the node down
    /// instead of stopping it.
    async fn accept(&mut self) -> io::Result<(Self::Io, IpAddr)> {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY");
                    }
                    return Ok((stream, peer.ip().to_canonical()));
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "accepting connections failed; pausing a second before trying again"
                    );
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An error about the one connection being accepted, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
