//! Connections: a [`Listener`] (a parameter, so the simulator can bring its
//! own network), TLS with per-connection client keys, connection limits,
//! HTTP/1.1 with WebSocket upgrades, and graceful shutdown.
//!
//! Each accepted connection is checked against the per-source connection
//! rate and the total connection limit before anything is read from it,
//! then completes its TLS 1.3 handshake ([`crate::tls`]) within
//! `header_timeout`. The key its client certificate carries becomes the
//! connection's [`Peer`], inserted into every request on it.
//!
//! An accept error about one connection skips it; any other (out of file
//! descriptors, out of memory) is logged and accepting pauses for
//! [`ACCEPT_ERROR_BACKOFF`], so the node slows down instead of stopping.
//! Only the `shutdown` future ends [`serve`]: it then stops accepting (the
//! listener is closed, so new connections are refused), stops the
//! integrator between rounds, lets requests in progress finish (each
//! connection closes after its current response), closes WebSocket streams
//! with 1001 (going away), and returns once every connection is done, or
//! after `shutdown_grace`, cutting what is still open.
//!
//! `--danger-plain-http` ([`Transport::DangerPlainHttp`]) serves without TLS,
//! only on a loopback address; a request then names its key in the
//! `x-backchannel-danger-key` header (hex), unproven. It exists for local
//! debugging with curl, never for talks that matter.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use backchannel_crypto::PublicKey;
use backchannel_store::Store;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::admin::Phase as AdminPhase;
use crate::limits::{Slot, SourceRates, SourceSlots};
use crate::server::{Node, Peer, router};
use crate::tls;

/// The header naming the key in plain-HTTP danger mode.
pub const DANGER_KEY_HEADER: &str = "x-backchannel-danger-key";

/// How long accepting pauses after an error that is not about one
/// connection (out of file descriptors, out of memory): long enough not to
/// spin on an error that persists, short enough that the node accepts
/// again soon after connections close and free what was missing.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Where connections come from.
pub trait Listener: Send + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection and its peer's address. An error about one
    /// connection (reset, aborted) is skipped; any other error pauses
    /// accepting for [`ACCEPT_ERROR_BACKOFF`]. The future is dropped
    /// unfinished when the node shuts down, so it must lose no accepted
    /// connection when dropped before it completes.
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
    /// The listener could not say what it listens on.
    #[error("the listener failed: {0}")]
    Listener(#[from] io::Error),
}

/// Where a shutdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepting and serving.
    Serving,
    /// Not accepting; requests in progress finish, streams close.
    Draining,
    /// The drain time is over (or `serve` is gone): whatever is still open
    /// is cut.
    Stopped,
}

/// The node's shutdown as its connections see it. Every connection task,
/// request (as an extension, for streams) and stream holds one; [`serve`]
/// waits until none is left, or for `shutdown_grace`.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown(watch::Receiver<Phase>);

impl Shutdown {
    /// Resolves once the node is shutting down (at once if it already is,
    /// or if [`serve`] is gone).
    pub(crate) async fn draining(&mut self) {
        // An error means the sender is gone: `serve` ended, so stop too.
        let _ = self.0.wait_for(|p| *p != Phase::Serving).await;
    }

    /// Resolves once the drain time is over (or [`serve`] is gone): what is
    /// still open is to be cut.
    pub(crate) async fn stopped(&mut self) {
        let _ = self.0.wait_for(|p| *p == Phase::Stopped).await;
    }
}

/// Serves the API of `node` on `listener` until `shutdown` resolves, and
/// runs the integrator every `checkpoint_interval` meanwhile.
///
/// Listener errors do not end it (see [`Listener::accept`]); only
/// `shutdown` does. Then it closes the listener, stops the integrator
/// between rounds, lets requests in progress finish (HTTP/1.1 graceful
/// shutdown of each connection), closes streams with 1001 (going away),
/// and returns once every connection is done or `shutdown_grace` has
/// passed, whichever is first; connections still open then are cut.
///
/// Errors only before serving anything: plain HTTP off loopback, or a
/// listener that cannot say its address.
pub async fn serve<L: Listener, S: Store>(
    listener: L,
    transport: Transport,
    node: Arc<Node<S>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    if matches!(transport, Transport::DangerPlainHttp) && !addr.ip().is_loopback() {
        return Err(ServeError::PlainHttpNotLoopback(addr));
    }
    // No receiver is kept here: the sender's `closed` then means that every
    // connection, stream and the integrator are done.
    let (phase, _) = watch::channel(Phase::Serving);
    let keeper = tokio::spawn(keep_lease(Arc::clone(&node), Shutdown(phase.subscribe())));
    let timers = tokio::spawn(fire_until(Arc::clone(&node), Shutdown(phase.subscribe())));
    let integrator = tokio::spawn(integrate_until(
        Arc::clone(&node),
        Shutdown(phase.subscribe()),
    ));
    node.metrics.set_phase(AdminPhase::Serving);
    accept_until(listener, transport, &node, &phase, shutdown).await;

    // The listener is closed: new connections are refused from here on,
    // and `/readyz` answers 503.
    node.metrics.set_phase(AdminPhase::Draining);
    phase.send_replace(Phase::Draining);
    let grace = node.limits().shutdown_grace;
    tracing::info!("shutting down: no longer accepting; letting requests in progress finish");
    let stop_integrating = (integrator.abort_handle(), keeper.abort_handle());
    // The integrator and the lease keeper stop as draining starts (a round
    // in progress finishes first); once both have, the lease is handed
    // over at once, while requests drain, rather than left to expire.
    let hand_over = async {
        let _ = integrator.await;
        let _ = keeper.await;
        crate::lease::release(&**node.store(), node.instance, &node.lease).await;
    };
    let drain = async {
        if tokio::time::timeout(grace, phase.closed()).await.is_err() {
            tracing::warn!(
                grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                "connections were still open when the shutdown grace ran out; cutting them"
            );
        }
    };
    // Both within the grace: a round or a release stuck on the database
    // does not hold the shutdown up (the lease then expires by itself).
    let _ = tokio::time::timeout(grace, async { tokio::join!(hand_over, drain) }).await;
    phase.send_replace(Phase::Stopped);
    stop_integrating.0.abort();
    stop_integrating.1.abort();
    timers.abort();
    Ok(())
}

/// Accepts connections and spawns a task for each until `shutdown`
/// resolves; drops the listener before returning.
async fn accept_until<L: Listener, S: Store>(
    mut listener: L,
    transport: Transport,
    node: &Arc<Node<S>>,
    phase: &watch::Sender<Phase>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let app = router(Arc::clone(node));
    let limits = node.limits().clone();
    let sources = Arc::new(SourceRates::new(
        limits.connections_per_second,
        limits.connection_burst,
    ));
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let open_per_source = Arc::new(SourceSlots::default());
    let mut shutdown = std::pin::pin!(shutdown);
    // Set while accepting keeps failing, so that a persistent error is
    // logged once per episode rather than ten times a second.
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let (io, source) = match accepted {
            Ok(c) => c,
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                if failing {
                    tracing::debug!(error = %e, "accepting connections still fails");
                } else {
                    // The error names no address: io errors from accept
                    // say what ran out, not who connected.
                    tracing::warn!(
                        error = %e,
                        "accepting connections failed; pausing 100 ms before each retry"
                    );
                    failing = true;
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        if failing {
            tracing::info!("accepting connections again");
            failing = false;
        }
        if !sources.allow(source, node.clock.now_ms()) {
            // Dropped before a byte is read: the client sees a reset.
            continue;
        }
        let Some(per_source) = open_per_source.acquire(source, limits.connections_per_source)
        else {
            // This address already holds its share of connections.
            continue;
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            continue;
        };
        let app = app.clone();
        let transport = transport.clone();
        let timeout = limits.header_timeout;
        let mut shutdown = Shutdown(phase.subscribe());
        // Held by the connection and by any stream it upgrades to, so that
        // open streams count against `max_connections` too.
        let permit = ConnectionPermit(Arc::new((permit, per_source)));
        tokio::spawn(async move {
            match transport {
                Transport::Tls(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let handshake = tokio::time::timeout(timeout, acceptor.accept(io));
                    // A connection still in its handshake has sent no
                    // request: it is dropped when shutdown starts.
                    let stream = tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(stream)) => stream,
                            _ => return,
                        },
                        () = shutdown.draining() => return,
                    };
                    let peer = tls::peer_device_key(stream.get_ref().1.peer_certificates());
                    serve_connection(
                        stream,
                        app,
                        Some(Peer(peer.map(|k| k.verifying_key()))),
                        timeout,
                        shutdown,
                        permit,
                    )
                    .await;
                }
                Transport::DangerPlainHttp => {
                    serve_connection(io, app, None, timeout, shutdown, permit).await;
                }
            }
        });
    }
}

/// A connection's slot among `max_connections`; a stream the connection
/// upgrades to keeps a clone, so the slot is free only when both are gone.
#[derive(Clone)]
pub(crate) struct ConnectionPermit(
    #[allow(dead_code)] Arc<(tokio::sync::OwnedSemaphorePermit, Slot<IpAddr>)>,
);

/// How long a request may take to send its body (the handshake and
/// request-head timeout), for the body extractors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyTimeout(pub(crate) Duration);

/// An error about the one connection being accepted, not the listener.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Serves HTTP/1.1 (with upgrades) on one connection. `peer`: the TLS
/// client key; `None` in plain-HTTP danger mode (read from a header).
/// When shutdown starts, the connection finishes the request in progress
/// (if any) and closes; when the drain time is over, it is cut.
async fn serve_connection<I>(
    io: I,
    app: Router,
    peer: Option<Peer>,
    header_timeout: Duration,
    mut shutdown: Shutdown,
    permit: ConnectionPermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let for_requests = shutdown.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let peer = peer.unwrap_or_else(|| {
            Peer(
                req.headers()
                    .get(DANGER_KEY_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| hex::decode(s).ok())
                    .and_then(|b| PublicKey::from_bytes(&b).ok())
                    .map(|k| k.verifying_key()),
            )
        });
        req.extensions_mut().insert(peer);
        // Streams close when the node shuts down (`crate::stream`).
        req.extensions_mut().insert(for_requests.clone());
        req.extensions_mut().insert(permit.clone());
        req.extensions_mut().insert(BodyTimeout(header_timeout));
        app.clone().oneshot(req)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        () = shutdown.draining() => connection.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        _ = connection => {}
        () = shutdown.stopped() => {}
    }
}

/// Takes or renews the integrator lease every
/// [`crate::lease::LEASE_RENEW_EVERY`] until shutdown starts (see
/// [`crate::lease`]).
async fn keep_lease<S: Store>(node: Arc<Node<S>>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(crate::lease::LEASE_RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            () = shutdown.draining() => return,
            _ = tick.tick() => {}
        }
        match crate::lease::renew_once(&**node.store(), &*node.clock, node.instance, &node.lease)
            .await
        {
            Ok(_) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "could not take or renew the integrator lease; retrying");
                }
                failing = true;
            }
        }
    }
}

/// How often a node looks for scheduled items that fell due.
pub const TIMER_RESOLUTION: Duration = Duration::from_millis(250);

/// Sequences scheduled items as they fall due ([`Store::fire_due`]), every
/// [`TIMER_RESOLUTION`], until shutdown starts. Every node does: the store
/// hands each item to one of them (`FOR UPDATE SKIP LOCKED` on
/// PostgreSQL), so an item fires once whichever nodes are alive.
async fn fire_until<S: Store>(node: Arc<Node<S>>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(TIMER_RESOLUTION);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            () = shutdown.draining() => return,
            _ = tick.tick() => {}
        }
        loop {
            let fired = node
                .store()
                .fire_due(
                    node.clock.now_ms(),
                    backchannel_store::MAX_FIRE_BATCH,
                    &*node.log_key,
                )
                .await;
            match fired {
                Ok(fired) => {
                    failing = false;
                    if fired.len() < backchannel_store::MAX_FIRE_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "firing scheduled items failed; retrying");
                    }
                    failing = true;
                    break;
                }
            }
        }
    }
}

/// One integration round with its talks spread over a quarter of `every`
/// (at most [`crate::lease::MAX_ROUND_SPREAD`]) after the tick: each
/// talks' integration is a transaction on the store's one writer (SQLite),
/// which the sequencer waits for, so several short waits spread over the
/// round replace one long one. The talks' turns are paced from the
/// round's start (a late turn comes at once, never pushing the others
/// later), and not at all when they would be under a millisecond apart.
/// Stops between talks, having written nothing more, when shutdown starts
/// or the lease moves on.
async fn integrate_spread<S: Store>(
    node: &Node<S>,
    hints: &crate::integrate::LeafHints,
    fence: backchannel_store::Fence,
    every: Duration,
    shutdown: &mut Shutdown,
) -> Result<(), backchannel_store::StoreError> {
    let store = &**node.store();
    let talks = store
        .unintegrated_talks(crate::integrate::TALKS_PER_ROUND)
        .await?;
    let window = (every / 4).min(crate::lease::MAX_ROUND_SPREAD);
    let gap = window / u32::try_from(talks.len()).unwrap_or(u32::MAX).max(1);
    // `interval` ticks at start + k × gap, at once for a tick already
    // past (its default `Burst`), so the round never outlasts the window
    // by more than its own work.
    let mut pace = (gap >= Duration::from_millis(1)).then(|| tokio::time::interval(gap));
    for t in talks {
        if let Some(pace) = pace.as_mut() {
            tokio::select! {
                biased;
                () = shutdown.draining() => return Ok(()),
                _ = pace.tick() => {}
            }
        }
        if node.lease.fence() != Some(fence) {
            return Ok(());
        }
        crate::integrate::integrate_talks(
            store,
            Some(hints),
            t,
            &node.origin,
            &*node.log_key,
            Some(fence),
        )
        .await?;
    }
    Ok(())
}

/// Runs an integration round every `checkpoint_interval` (at most
/// [`crate::lease::MAX_CHECKPOINT_INTERVAL`]) while this node holds the
/// integrator lease, until shutdown starts; a talks' integration in
/// progress then finishes (it is cut only when the drain time is over),
/// and the round's remaining talks wait for the next integrator.
async fn integrate_until<S: Store>(node: Arc<Node<S>>, mut shutdown: Shutdown) {
    let every = node
        .limits()
        .checkpoint_interval
        .min(crate::lease::MAX_CHECKPOINT_INTERVAL);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.draining() => return,
            _ = tick.tick() => {}
        }
        let hints = node.sequencer.leaf_hints();
        let Some(fence) = node.lease.fence() else {
            // Another node integrates: this node's hints would only grow.
            hints.clear();
            continue;
        };
        match integrate_spread(&node, hints, fence, every, &mut shutdown).await {
            Ok(()) => {}
            Err(backchannel_store::StoreError::Fenced) => {
                tracing::info!(
                    epoch = fence.epoch,
                    "the integrator lease moved to another node; this node wrote nothing more"
                );
                node.lease.lost(fence.epoch);
            }
            Err(e) => {
                tracing::warn!(error = %e, "an integration round failed; retrying at the next interval");
            }
        }
    }
}
