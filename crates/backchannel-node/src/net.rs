//! Connections: a [`Listener`] (a parameter, so the simulator can bring its
//! own network), TLS with per-connection client keys, connection limits,
//! and HTTP/1.1 with WebSocket upgrades.
//!
//! Each accepted connection is checked against the per-source connection
//! rate and the total connection limit before anything is read from it,
//! then completes its TLS 1.3 handshake ([`crate::tls`]) within
//! `header_timeout`. The key its client certificate carries becomes the
//! connection's [`Peer`], inserted into every request on it.
//!
//! `--danger-plain-http` ([`Transport::DangerPlainHttp`]) serves without TLS,
//! only on a loopback address; a request then names its key in the
//! `x-backchannel-danger-key` header (hex), unproven. It exists for local
//! debugging with curl, never for talks that matter.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use backchannel_crypto::PublicKey;
use backchannel_store::Store;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::limits::SourceRates;
use crate::server::{Node, Peer, router};
use crate::tls;

/// The header naming the key in plain-HTTP danger mode.
pub const DANGER_KEY_HEADER: &str = "x-backchannel-danger-key";

/// Where connections come from.
pub trait Listener: Send + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection and its peer's address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, IpAddr)>> + Send;

    /// The address listened on.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// How connections are secured.
#[derive(Clone)]
pub enum Transport {
    /// TLS 1.3 with client keys.
    Tls(Arc<rustls::ServerConfig>),
    /// No TLS: loopback only, keys named in a header, unproven.
    DangerPlainHttp,
}

/// Why the node could not serve.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Plain HTTP was asked for on a non-loopback address.
    #[error(
        "--danger-plain-http is refused on the non-loopback address {0}; listen on 127.0.0.1 or ::1, or use TLS"
    )]
    PlainHttpNotLoopback(SocketAddr),
    /// The listener failed.
    #[error("the listener failed: {0}")]
    Listener(#[from] io::Error),
}

/// Serves the API of `node` on `listener` until the listener fails. Also
/// runs the integrator every `checkpoint_interval`.
pub async fn serve<L: Listener, S: Store>(
    mut listener: L,
    transport: Transport,
    node: Arc<Node<S>>,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    if matches!(transport, Transport::DangerPlainHttp) && !addr.ip().is_loopback() {
        return Err(ServeError::PlainHttpNotLoopback(addr));
    }
    let integrator = tokio::spawn(integrate_forever(Arc::clone(&node)));
    let app = router(Arc::clone(&node));
    let limits = node.limits().clone();
    let sources = Arc::new(SourceRates::new(
        limits.connections_per_second,
        limits.connection_burst,
    ));
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let result = loop {
        let (io, source) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if is_transient(&e) => continue,
            Err(e) => break Err(ServeError::Listener(e)),
        };
        if !sources.allow(source, node.clock.now_ms()) {
            // Dropped before a byte is read: the client sees a reset.
            continue;
        }
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            continue;
        };
        let app = app.clone();
        let transport = transport.clone();
        let timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match transport {
                Transport::Tls(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let Ok(Ok(stream)) = tokio::time::timeout(timeout, acceptor.accept(io)).await
                    else {
                        return;
                    };
                    let peer = tls::peer_device_key(stream.get_ref().1.peer_certificates());
                    serve_connection(stream, app, Some(Peer(peer)), timeout).await;
                }
                Transport::DangerPlainHttp => serve_connection(io, app, None, timeout).await,
            }
        });
    };
    integrator.abort();
    result
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Serves HTTP/1.1 (with upgrades) on one connection. `peer`: the TLS
/// client key; `None` in plain-HTTP danger mode (read from a header).
async fn serve_connection<I>(
    io: I,
    app: Router,
    peer: Option<Peer>,
    header_timeout: std::time::Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let peer = peer.unwrap_or_else(|| {
            Peer(
                req.headers()
                    .get(DANGER_KEY_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| hex::decode(s).ok())
                    .and_then(|b| PublicKey::from_bytes(&b).ok()),
            )
        });
        req.extensions_mut().insert(peer);
        app.clone().oneshot(req)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
}

async fn integrate_forever<S: Store>(node: Arc<Node<S>>) {
    let mut tick = tokio::time::interval(node.limits().checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) =
            crate::integrate::integrate_round(&**node.store(), &node.origin, &*node.log_key).await
        {
            tracing::warn!(error = %e, "an integration round failed; retrying at the next interval");
        }
    }
}
