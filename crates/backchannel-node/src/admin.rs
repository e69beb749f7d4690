//! The admin listener: `/healthz`, `/readyz` and Prometheus `/metrics`, on
//! a listener of its own, in plain HTTP.
//!
//! It is for the operator's load balancer and monitoring, not for
//! participants: no TLS, no client authentication, and nothing of any
//! talks in what it answers. So that it is not reachable from where
//! participants are by accident, [`serve`] refuses a non-loopback address
//! unless told otherwise ([`Exposure::Public`]): its answers carry no
//! talks data, but request counts and timings tell how busy the node is
//! and when — activity a network outsider should not see.
//!
//! - `GET /healthz`: `200 ok` while the process serves (liveness; stays 200
//!   while draining, so a draining node is not restarted).
//! - `GET /readyz`: `200 {"ready":true}` while the API listener is
//!   accepting and the database answers a trivial read
//!   ([`Store::log_size`] of a talks id no one uses) within
//!   [`READY_TIMEOUT`]; otherwise `503 {"ready":false,"reason":…}` with
//!   one of a few fixed reasons.
//! - `GET /metrics`: Prometheus text exposition format 0.0.4 (see
//!   [`Metrics`] for the series).
//!
//! **No ids in metrics.** No label or value names a talks, room, key,
//! device or principal, or an IP address: a request's `route` label is
//! the route *template* the router matched (`/v1/talks/{talks}/envelopes`,
//! from [`MatchedPath`], which only ever holds a template written in
//! [`crate::server::router`]), or `unmatched`; `method` and `class` come
//! from fixed sets. A test drives real traffic and greps the text for the
//! ids it used.
//!
//! Time: request latency is measured with the node's [`Clock`]
//! (milliseconds), like everything else in the node, so the simulator's
//! clock governs it too; `process_start_time_seconds` is that clock's
//! reading when the [`Node`] was made.
//!
//! [`Clock`]: crate::sequencer::Clock

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use backchannel_codec::TalksId;
use backchannel_store::{IntegrationLag, Store};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::net::{ACCEPT_ERROR_BACKOFF, Listener};
use crate::server::Node;

/// How long `/readyz` waits for the database's answer: a trivial read
/// answers in milliseconds on a healthy database, and a node whose
/// database takes a second for it is not serving requests either. Set the
/// probe's own timeout above it (Kubernetes: `timeoutSeconds: 2`).
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// How long `/metrics` waits for the database (the integration lag); past
/// it the lag gauges are left out and `backchannel_database_up` is 0.
/// Below Prometheus' default scrape timeout (10 s).
pub const METRICS_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// How many admin connections may be open at once: a few load balancers
/// and scrapers, with room to spare; more are dropped unread.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;

/// How long an admin request may take to send its head, and how long the
/// admin connections have to finish once the admin listener stops (its
/// requests are small and quick).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The request-latency histogram's upper bounds, in seconds (Prometheus'
/// default buckets; latency is measured in whole milliseconds).
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The talks id `/readyz` asks the log size of: any id does (an unknown
/// talks has size 0), the answer is thrown away.
const PROBE_TALKS: TalksId = TalksId([0; 16]);

/// How the admin listener may be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Loopback addresses only (127.0.0.0/8, ::1): the default.
    LoopbackOnly,
    /// Any address: the operator has made sure that only its load
    /// balancers and monitoring reach it (a private network, a firewall).
    Public,
}

/// Why the admin listener could not serve.
#[derive(Debug, Error)]
pub enum AdminError {
    /// A non-loopback address without [`Exposure::Public`].
    #[error(
        "the admin listener is refused on the non-loopback address {0}: it serves plain HTTP \
         without authentication. Listen on 127.0.0.1 or ::1, or, if only your load balancers \
         and monitoring can reach {0} (a private network or a firewall), pass \
         --admin-listen-public"
    )]
    NotLoopback(SocketAddr),
    /// The listener could not say what it listens on.
    #[error("the admin listener failed: {0}")]
    Listener(#[from] io::Error),
}

/// Whether `addr` may be listened on with `exposure`.
pub fn check_exposure(addr: SocketAddr, exposure: Exposure) -> Result<(), AdminError> {
    if exposure == Exposure::LoopbackOnly && !addr.ip().is_loopback() {
        return Err(AdminError::NotLoopback(addr));
    }
    Ok(())
}

/// Serves `/healthz`, `/readyz` and `/metrics` of `node` on `listener`, in
/// plain HTTP, until `shutdown` resolves; then stops accepting and gives
/// the requests in progress [`ADMIN_TIMEOUT`] to finish.
///
/// Run it alongside [`crate::net::serve`] and stop it after that returns,
/// so that `/readyz` answers 503 while the API drains. Errors only before
/// serving anything: a non-loopback address without [`Exposure::Public`],
/// or a listener that cannot say its address.
pub async fn serve<L: Listener, S: Store>(
    mut listener: L,
    exposure: Exposure,
    node: Arc<Node<S>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AdminError> {
    check_exposure(listener.local_addr()?, exposure)?;
    let app = router(node);
    let open = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    // `true` once the admin listener stops: connections finish their
    // current request and close.
    let (stopping, _) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        // Reap the connections that are done.
        while connections.try_join_next().is_some() {}
        // The source address is never looked at: the admin listener keeps
        // and logs no address.
        let io = match accepted {
            Ok((io, _)) => io,
            Err(e) => {
                tracing::debug!(error = %e, "the admin listener could not accept a connection");
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            continue;
        };
        let app = app.clone();
        let mut stop = stopping.subscribe();
        connections.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                app.clone().oneshot(req)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_TIMEOUT)
                .serve_connection(TokioIo::new(io), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.wait_for(|s| *s) => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    drop(listener);
    stopping.send_replace(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    // Whatever is still open after that is cut when `connections` drops.
    let _ = tokio::time::timeout(ADMIN_TIMEOUT, drained).await;
    Ok(())
}

/// The admin routes over `node`.
pub fn router<S: Store>(node: Arc<Node<S>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics::<S>))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .method_not_allowed_fallback(|| async {
            (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        })
        .with_state(node)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<S: Store>(State(node): State<Arc<Node<S>>>) -> Response {
    let answer = node.readiness().await;
    let metrics = &node.metrics;
    let was_ready = metrics.was_ready.swap(answer.is_ok(), Ordering::Relaxed);
    match answer {
        Ok(()) => {
            if !was_ready {
                tracing::info!("the node is ready");
            }
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({ "ready": true })),
            )
                .into_response()
        }
        Err(reason) => {
            if was_ready {
                tracing::warn!(reason = reason.as_str(), "the node is not ready");
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({ "ready": false, "reason": reason.as_str() })),
            )
                .into_response()
        }
    }
}

/// Why the node is not ready: a fixed set, so `/readyz` never passes on
/// an error's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// The API listener has not started accepting.
    Starting,
    /// The API listener stopped accepting: the node is shutting down.
    ShuttingDown,
    /// The database did not answer within [`READY_TIMEOUT`].
    DatabaseTimeout,
    /// The database answered with an error.
    DatabaseUnavailable,
}

impl NotReady {
    /// The reason as `/readyz` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::ShuttingDown => "shutting_down",
            Self::DatabaseTimeout => "database_timeout",
            Self::DatabaseUnavailable => "database_unavailable",
        }
    }
}

impl<S: Store> Node<S> {
    /// Whether the node can serve: its API listener accepts and its
    /// database answers a trivial read within [`READY_TIMEOUT`].
    pub async fn readiness(&self) -> Result<(), NotReady> {
        match self.metrics.phase() {
            Phase::Starting => return Err(NotReady::Starting),
            Phase::Draining => return Err(NotReady::ShuttingDown),
            Phase::Serving => {}
        }
        match tokio::time::timeout(READY_TIMEOUT, self.store.log_size(PROBE_TALKS)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the readiness probe's read failed");
                Err(NotReady::DatabaseUnavailable)
            }
            Err(_) => Err(NotReady::DatabaseTimeout),
        }
    }

    /// The metrics in Prometheus text exposition format 0.0.4.
    pub async fn metrics_text(&self) -> String {
        let lag = tokio::time::timeout(METRICS_STORE_TIMEOUT, self.store.integration_lag())
            .await
            .ok()
            .and_then(Result::ok);
        let gauges = Gauges {
            sequenced: self.sequencer.sequenced(),
            queued: self.sequencer.queued(),
            streams: self.streams.total(),
            lag,
            lease_epoch: self.lease.epoch(),
            fenced: self.lease.fenced(),
        };
        self.metrics.render(&gauges)
    }
}

async fn metrics<S: Store>(State(node): State<Arc<Node<S>>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.metrics_text().await,
    )
        .into_response()
}

/// What `/metrics` reads at scrape time.
struct Gauges {
    sequenced: u64,
    queued: usize,
    streams: usize,
    /// `None`: the database did not answer in time.
    lag: Option<IntegrationLag>,
    /// The integrator lease's epoch this node holds it under, or 0.
    lease_epoch: u64,
    /// Integrations the store refused as fenced.
    fenced: u64,
}

// ---------------------------------------------------------------------------
// The request metrics.

/// Where the node's API listener is, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not yet accepting.
    Starting = 0,
    /// Accepting.
    Serving = 1,
    /// No longer accepting: shutting down.
    Draining = 2,
}

/// The node's request metrics: counters and histograms in atomics, by
/// route template, method and status class. Series exposed:
///
/// - `backchannel_http_requests_total{route,method,class}` (counter);
/// - `backchannel_http_request_duration_seconds{route,method}` (histogram,
///   [`LATENCY_BUCKETS`]);
/// - `backchannel_envelopes_sequenced_total` (counter);
/// - `backchannel_sequencer_queued` (gauge);
/// - `backchannel_integration_lag_leaves` and
///   `backchannel_integration_lagging_talks` (gauges);
/// - `backchannel_database_up` (gauge);
/// - `backchannel_integrator_lease_held`, `backchannel_integrator_lease_epoch`
///   (gauges) and `backchannel_integration_fenced_total` (counter);
/// - `backchannel_delivery_streams` (gauge: connected devices);
/// - `process_start_time_seconds` (gauge).
#[derive(Debug)]
pub struct Metrics {
    start_ms: u64,
    phase: AtomicU8,
    was_ready: AtomicBool,
    /// By route template (never a concrete path: see the module docs).
    routes: RwLock<BTreeMap<Box<str>, Arc<RouteStats>>>,
}

/// The `route` label of a request no route matched.
const UNMATCHED: &str = "unmatched";

/// The `method` labels (anything else is `other`).
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "HEAD", "other"];

/// The `class` labels, by the status code's first digit.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Debug, Default)]
struct RouteStats {
    by_method: [MethodStats; METHODS.len()],
}

#[derive(Debug, Default)]
struct MethodStats {
    by_class: [AtomicU64; CLASSES.len()],
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ms: AtomicU64,
}

impl Metrics {
    /// Metrics of a node started at `start_ms` (the node's clock).
    pub(crate) fn new(start_ms: u64) -> Self {
        Self {
            start_ms,
            phase: AtomicU8::new(Phase::Starting as u8),
            was_ready: AtomicBool::new(false),
            routes: RwLock::new(BTreeMap::new()),
        }
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    /// The stats of `route` (a template), made on its first request.
    fn route(&self, route: &str) -> Arc<RouteStats> {
        // Each update is one insertion, so a poisoned lock is still usable.
        if let Some(s) = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
        {
            return Arc::clone(s);
        }
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(routes.entry(route.into()).or_default())
    }

    /// Counts one request of `route` (a template) answered with `status`
    /// after `elapsed_ms`.
    fn observe(&self, route: &str, method: &Method, status: StatusCode, elapsed_ms: u64) {
        let stats = self.route(route);
        let m = METHODS
            .iter()
            .position(|n| *n == method.as_str())
            .unwrap_or(METHODS.len() - 1);
        let stats = &stats.by_method[m];
        let class = usize::from(status.as_u16() / 100).clamp(1, CLASSES.len()) - 1;
        stats.by_class[class].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed_ms as f64 / 1000.0;
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        stats.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        stats.sum_ms.fetch_add(elapsed_ms, Ordering::Relaxed);
    }

    fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(8 << 10);
        let routes: Vec<(Box<str>, Arc<RouteStats>)> = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();

        family(
            &mut out,
            "backchannel_http_requests_total",
            "counter",
            "API requests answered, by route template, method and status class.",
        );
        for (route, stats) in &routes {
            for (method, m) in METHODS.iter().zip(&stats.by_method) {
                for (class, n) in CLASSES.iter().zip(&m.by_class) {
                    let n = n.load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "backchannel_http_requests_total{{route=\"{}\",method=\"{method}\",class=\"{class}\"}} {n}",
                            escape(route)
                        );
                    }
                }
            }
        }

        family(
            &mut out,
            "backchannel_http_request_duration_seconds",
            "histogram",
            "API request latency until the response head, by route template and method \
             (for a stream, until the upgrade).",
        );
        for (route, stats) in &routes {
            for (method, m) in METHODS.iter().zip(&stats.by_method) {
                let counts: Vec<u64> = m
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect();
                let total: u64 = counts.iter().sum();
                if total == 0 {
                    continue;
                }
                let labels = format!("route=\"{}\",method=\"{method}\"", escape(route));
                let mut cumulative = 0;
                for (le, n) in LATENCY_BUCKETS.iter().zip(&counts) {
                    cumulative += n;
                    let _ = writeln!(
                        out,
                        "backchannel_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "backchannel_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {total}"
                );
                let sum = m.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
                let _ = writeln!(
                    out,
                    "backchannel_http_request_duration_seconds_sum{{{labels}}} {sum}"
                );
                let _ = writeln!(
                    out,
                    "backchannel_http_request_duration_seconds_count{{{labels}}} {total}"
                );
            }
        }

        sample(
            &mut out,
            "backchannel_envelopes_sequenced_total",
            "counter",
            "Envelopes the sequencer placed in a log (an idempotent retry of a sequenced \
             envelope counts again).",
            g.sequenced,
        );
        sample(
            &mut out,
            "backchannel_sequencer_queued",
            "gauge",
            "Submissions waiting for the next group commit.",
            g.queued,
        );
        sample(
            &mut out,
            "backchannel_database_up",
            "gauge",
            "1 if the database answered this scrape's reads in time, else 0.",
            u8::from(g.lag.is_some()),
        );
        if let Some(lag) = g.lag {
            sample(
                &mut out,
                "backchannel_integration_lag_leaves",
                "gauge",
                "The largest number of sequenced leaves not yet integrated into a signed \
                 checkpoint, over talks.",
                lag.max_leaves,
            );
            sample(
                &mut out,
                "backchannel_integration_lagging_talks",
                "gauge",
                "Talks with sequenced leaves not yet integrated.",
                lag.lagging_talks,
            );
        }
        sample(
            &mut out,
            "backchannel_integrator_lease_held",
            "gauge",
            "1 while this node holds the integrator lease (it integrates the logs), else 0.",
            u8::from(g.lease_epoch != 0),
        );
        sample(
            &mut out,
            "backchannel_integrator_lease_epoch",
            "gauge",
            "The integrator lease's epoch this node holds it under, 0 when it does not.",
            g.lease_epoch,
        );
        sample(
            &mut out,
            "backchannel_integration_fenced_total",
            "counter",
            "Integrations the database refused because the integrator lease had moved to \
             another node (nothing was written).",
            g.fenced,
        );
        sample(
            &mut out,
            "backchannel_delivery_streams",
            "gauge",
            "Open WebSocket delivery streams (connected devices; a device may hold several).",
            g.streams,
        );
        family(
            &mut out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
        );
        let _ = writeln!(
            out,
            "process_start_time_seconds {}.{:03}",
            self.start_ms / 1000,
            self.start_ms % 1000
        );
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value escaped as the text format requires (`\`, `"`, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware of the API router: counts and times each request by the
/// route template it matched.
pub(crate) async fn observe<S: Store>(
    State(node): State<Arc<Node<S>>>,
    req: Request,
    next: Next,
) -> Response {
    // A template of `crate::server::router`, never the request's path.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let start = node.clock.now_ms();
    let response = next.run(req).await;
    let elapsed = node.clock.now_ms().saturating_sub(start);
    node.metrics.observe(
        route.as_ref().map_or(UNMATCHED, MatchedPath::as_str),
        &method,
        response.status(),
        elapsed,
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::new(1_800_000_000_123);
        let route = "/v1/talks/{talks}/envelopes";
        m.observe(route, &Method::POST, StatusCode::OK, 3);
        m.observe(route, &Method::POST, StatusCode::OK, 40);
        m.observe(route, &Method::POST, StatusCode::CONFLICT, 20_000);
        m.observe(UNMATCHED, &Method::DELETE, StatusCode::NOT_FOUND, 0);
        let text = m.render(&Gauges {
            sequenced: 7,
            queued: 0,
            streams: 2,
            lag: Some(IntegrationLag {
                max_leaves: 5,
                lagging_talks: 1,
            }),
            lease_epoch: 3,
            fenced: 1,
        });
        for line in [
            "backchannel_integrator_lease_held 1",
            "backchannel_integrator_lease_epoch 3",
            "backchannel_integration_fenced_total 1",
            "backchannel_http_requests_total{route=\"/v1/talks/{talks}/envelopes\",method=\"POST\",class=\"2xx\"} 2",
            "backchannel_http_requests_total{route=\"/v1/talks/{talks}/envelopes\",method=\"POST\",class=\"4xx\"} 1",
            "backchannel_http_requests_total{route=\"unmatched\",method=\"other\",class=\"4xx\"} 1",
            "backchannel_http_request_duration_seconds_bucket{route=\"/v1/talks/{talks}/envelopes\",method=\"POST\",le=\"0.005\"} 1",
            "backchannel_http_request_duration_seconds_bucket{route=\"/v1/talks/{talks}/envelopes\",method=\"POST\",le=\"0.05\"} 2",
            "backchannel_http_request_duration_seconds_bucket{route=\"/v1/talks/{talks}/envelopes\",method=\"POST\",le=\"10\"} 2",
            "backchannel_http_request_duration_seconds_bucket{route=\"/v1/talks/{talks}/envelopes\",method=\"POST\",le=\"+Inf\"} 3",
            "backchannel_http_request_duration_seconds_sum{route=\"/v1/talks/{talks}/envelopes\",method=\"POST\"} 20.043",
            "backchannel_http_request_duration_seconds_count{route=\"/v1/talks/{talks}/envelopes\",method=\"POST\"} 3",
            "backchannel_envelopes_sequenced_total 7",
            "backchannel_integration_lag_leaves 5",
            "backchannel_delivery_streams 2",
            "backchannel_database_up 1",
            "process_start_time_seconds 1800000000.123",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        // Every sample's family is declared before it.
        let mut declared = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap_or("").to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                    .unwrap_or(name);
                assert!(declared.contains(family), "{line}");
            }
        }
    }

    #[test]
    fn a_database_that_did_not_answer_leaves_the_lag_out() {
        let text = Metrics::new(0).render(&Gauges {
            sequenced: 0,
            queued: 0,
            streams: 0,
            lag: None,
            lease_epoch: 0,
            fenced: 0,
        });
        assert!(text.contains("\nbackchannel_database_up 0\n"), "{text}");
        assert!(
            !text.contains("backchannel_integration_lag_leaves"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn exposure() {
        let lo: SocketAddr = "127.0.0.1:9090".parse().unwrap_or_else(|_| unreachable!());
        let any: SocketAddr = "0.0.0.0:9090".parse().unwrap_or_else(|_| unreachable!());
        assert!(check_exposure(lo, Exposure::LoopbackOnly).is_ok());
        assert!(matches!(
            check_exposure(any, Exposure::LoopbackOnly),
            Err(AdminError::NotLoopback(_))
        ));
        assert!(check_exposure(any, Exposure::Public).is_ok());
    }
}
