//! The admin listener: `/healthz`, `/readyz` (ready, the database down,
//! shutting down) and `/metrics` after real traffic — counts move, route
//! templates appear, and no talks, room, key, principal or party id, nor
//! an IP address, does.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use backchannel_crypto::Signer as _;
use backchannel_node::admin::{self, AdminError, Exposure};
use backchannel_node::net::{Transport, serve};
use backchannel_node::server::{Node, NodeConfig};
use backchannel_node::tls::{self, Identity};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_store::Store;
use backchannel_store::memory::MemoryStore;
use backchannel_tlog::NodeOrigin;
use common::*;
use futures_util::StreamExt as _;
use rustls::pki_types::ServerName;

/// Serves the admin listener of `node` on a loopback port; its address.
async fn start_admin<S: Store>(node: Arc<Node<S>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        admin::serve(
            Tcp(listener),
            Exposure::LoopbackOnly,
            node,
            std::future::pending(),
        )
        .await
        .expect("admin serve");
    });
    addr
}

/// `GET path` on the admin listener: status, content type and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("an answer");
    let status = resp.status().as_u16();
    let kind = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, kind, resp.text().await.expect("a body"))
}

/// `/readyz` until it answers `status` (the node's `serve` task sets its
/// phase once it runs); the last body.
async fn readyz_until(addr: SocketAddr, status: u16) -> serde_json::Value {
    for _ in 0..400 {
        let (s, _, body) = get(addr, "/readyz").await;
        if s == status {
            return serde_json::from_str(&body).expect("JSON");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("/readyz never answered {status}");
}

/// The value of the sample `series` (name and labels, exactly), if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

#[tokio::test]
async fn healthz_answers_ok() {
    let node = start(test_limits()).await;
    let admin = start_admin(node.node.clone()).await;
    let (status, _, body) = get(admin, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // Only the three endpoints, and only GET.
    assert_eq!(get(admin, "/v1/node").await.0, 404);
    let post = reqwest::Client::new()
        .post(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);
}

#[tokio::test]
async fn readyz_follows_the_database() {
    let node = start(test_limits()).await;
    let admin = start_admin(node.node.clone()).await;
    assert_eq!(
        readyz_until(admin, 200).await,
        serde_json::json!({ "ready": true })
    );
    // The store crashes at its next step (the probe's read, or the
    // integrator's): from then on it refuses every call.
    node.node.store().crash_at(0);
    assert_eq!(
        readyz_until(admin, 503).await,
        serde_json::json!({ "ready": false, "reason": "database_unavailable" })
    );
    // The API's liveness is another matter.
    assert_eq!(get(admin, "/healthz").await.0, 200);
    node.node.store().restart();
    readyz_until(admin, 200).await;
}

#[tokio::test]
async fn readyz_is_503_once_the_node_shuts_down() {
    let clock = Arc::new(ManualClock(AtomicU64::new(T0)));
    let node = Node::new(
        Arc::new(MemoryStore::new()),
        NodeConfig {
            origin: NodeOrigin::new("node.example").unwrap(),
            log_key: Arc::new(key(NODE_LOG)),
            creators: vec![key(CREATOR).public_key()],
            limits: test_limits(),
            clock,
            instance: [0xf6; 16],
        },
    );
    let admin = start_admin(node.clone()).await;
    // Not serving the API yet.
    assert_eq!(
        get(admin, "/readyz").await.0,
        503,
        "ready before the API listens"
    );
    let identity = Identity::self_signed(&key(NODE_TLS), "node").unwrap();
    let config = Arc::new(tls::server_config(&identity).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        Tcp(listener),
        Transport::Tls(config),
        node.clone(),
        async {
            let _ = stopping.await;
        },
    ));
    readyz_until(admin, 200).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
    let (status, _, body) = get(admin, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({ "ready": false, "reason": "shutting_down" })
    );
    // Alive, though draining: a load balancer takes it out, nothing
    // restarts it.
    assert_eq!(get(admin, "/healthz").await.0, 200);
}

#[tokio::test]
async fn a_non_loopback_admin_address_needs_the_opt_in() {
    let node = start(test_limits()).await;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let refused = admin::serve(
        Tcp(listener),
        Exposure::LoopbackOnly,
        node.node.clone(),
        std::future::pending(),
    )
    .await;
    match refused {
        Err(e @ AdminError::NotLoopback(_)) => {
            assert!(e.to_string().contains("--admin-listen-public"), "{e}");
        }
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn metrics_count_real_traffic_by_route_template_and_name_no_id() {
    let node = start(test_limits()).await;
    let admin = start_admin(node.node.clone()).await;
    let talks = node.open_reference_talks().await;
    let t = fixtures::talks();
    let mut mls = mls_rooms(&node, talks, &[t.record]).await;
    let us = node.client(US_HEAD_DEVICE);
    for i in 0..3u8 {
        let env = mls_envelope(&mut mls, US_HEAD_DEVICE, t.record, b"metrics", [i; 16]);
        let a = us.post_raw(&path(talks, "/envelopes"), env).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    let a = us.get(&path(talks, "/envelopes?from=0")).await;
    assert_eq!(a.status, 200, "{a:?}");
    // An outsider's 404, a path no route matches (with an id in it), a
    // room in a path.
    assert_eq!(
        node.client(OUTSIDER)
            .get(&path(talks, "/checkpoint"))
            .await
            .status,
        404
    );
    assert_eq!(us.get(&path(talks, "/no-such-thing")).await.status, 404);
    let a = us
        .get(&path(
            talks,
            &format!("/rooms/{}/group-info", t.record.to_hex()),
        ))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    // A delivery stream, open while the metrics are read.
    let tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let tls =
        tokio_rustls::TlsConnector::from(Arc::new(client_tls(IRAN_HEAD_DEVICE, node.fingerprint)))
            .connect(ServerName::try_from("node.invalid").unwrap(), tcp)
            .await
            .unwrap();
    let url = format!("ws://node.invalid{}", path(talks, "/stream?from=0"));
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    // Its first frame: the stream is running.
    tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("a frame")
        .expect("open")
        .expect("a message");

    let (status, kind, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");

    // Counts moved, by template.
    let envelopes = "route=\"/v1/talks/{talks}/envelopes\"";
    let posted = sample(
        &text,
        &format!("backchannel_http_requests_total{{{envelopes},method=\"POST\",class=\"2xx\"}}"),
    );
    // The room set-up posted its creation envelope there too.
    assert!(posted.is_some_and(|n| n >= 4.0), "{text}");
    for series in [
        format!("backchannel_http_requests_total{{{envelopes},method=\"GET\",class=\"2xx\"}}"),
        "backchannel_http_requests_total{route=\"/v1/talks\",method=\"POST\",class=\"2xx\"}"
            .to_owned(),
        "backchannel_http_requests_total{route=\"/v1/talks/{talks}/checkpoint\",method=\"GET\",class=\"4xx\"}"
            .to_owned(),
        "backchannel_http_requests_total{route=\"unmatched\",method=\"GET\",class=\"4xx\"}"
            .to_owned(),
        "backchannel_http_requests_total{route=\"/v1/talks/{talks}/rooms/{room}/group-info\",method=\"GET\",class=\"2xx\"}"
            .to_owned(),
        "backchannel_http_requests_total{route=\"/v1/talks/{talks}/stream\",method=\"GET\",class=\"1xx\"}"
            .to_owned(),
        format!("backchannel_http_request_duration_seconds_count{{{envelopes},method=\"POST\"}}"),
        format!(
            "backchannel_http_request_duration_seconds_bucket{{{envelopes},method=\"POST\",le=\"+Inf\"}}"
        ),
    ] {
        assert!(sample(&text, &series).is_some_and(|n| n >= 1.0), "{series}\n{text}");
    }
    // Every envelope sequenced on this node, once (no retries here).
    let size = node.node.store().log_size(talks).await.unwrap();
    assert_eq!(
        sample(&text, "backchannel_envelopes_sequenced_total"),
        Some(size as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, "backchannel_delivery_streams"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "backchannel_database_up"),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "backchannel_integration_lag_leaves").is_some(),
        "{text}"
    );
    assert!(
        sample(&text, "backchannel_sequencer_queued").is_some(),
        "{text}"
    );
    assert_eq!(
        sample(&text, "process_start_time_seconds"),
        Some(T0 as f64 / 1000.0),
        "{text}"
    );

    // No id of any kind, and no address.
    let text = text.to_lowercase();
    let list = reference_list();
    let mut ids = vec![talks.to_hex(), hex::encode(talks.as_bytes())];
    for room in [t.record, t.us_caucus, t.iran_caucus] {
        ids.push(room.to_hex());
    }
    for party in [t.oman, t.us, t.iran] {
        ids.push(party.to_hex());
    }
    for e in list.entries() {
        ids.push(e.key_id().to_hex());
        ids.push(hex::encode(e.key().as_bytes()));
        ids.push(e.principal.to_hex());
        ids.push(e.party.to_hex());
        ids.extend(e.rooms().iter().map(|r| r.to_hex()));
    }
    for label in [CREATOR, OUTSIDER, NODE_LOG, NODE_TLS] {
        let k = key(label).public_key();
        ids.push(k.id().to_hex());
        ids.push(hex::encode(k.as_bytes()));
    }
    for id in &ids {
        assert!(
            !text.contains(&id.to_lowercase()),
            "the metrics name {id}:\n{text}"
        );
        // Not even a prefix long enough to identify one.
        assert!(
            !text.contains(&id[..12]),
            "the metrics hold a prefix of {id}:\n{text}"
        );
    }
    for address in ["127.0.0.1", node.addr.to_string().as_str(), "::1"] {
        assert!(
            !text.contains(address),
            "the metrics name {address}:\n{text}"
        );
    }

    // The stream closes: the gauge follows.
    drop(ws);
    for _ in 0..400 {
        let (_, _, text) = get(admin, "/metrics").await;
        if sample(&text, "backchannel_delivery_streams") == Some(0.0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the stream gauge never went back to 0");
}
