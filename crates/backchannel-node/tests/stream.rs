//! WebSocket delivery: resume by seq with no gap and no duplicate, closing
//! a key that leaves the access list, and the stream limits.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use backchannel_codec::{Encode, TalksId};
use backchannel_crypto::Signer;
use backchannel_node::api::StreamFrame;
use backchannel_node::limits::Limits;
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::{AccessListChange, AccessListDelta};
use backchannel_store::Store as _;
use common::*;
use futures_util::StreamExt;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn connect<S: backchannel_store::Store>(
    node: &TestNode<S>,
    label: u8,
    talks: TalksId,
    from: u64,
) -> Result<Ws, u16> {
    let tcp = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_tls(label, node.fingerprint)))
        .connect(ServerName::try_from("node.invalid").unwrap(), tcp)
        .await
        .expect("tls");
    let url = format!(
        "ws://node.invalid{}",
        path(talks, &format!("/stream?from={from}"))
    );
    match tokio_tungstenite::client_async(url, tls).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    }
}

enum Got {
    Envelope(u64),
    Caught(u64),
    Closed(Option<u16>),
}

async fn next(ws: &mut Ws) -> Got {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame in time");
        match m {
            Some(Ok(Message::Text(t))) => {
                return match serde_json::from_str::<StreamFrame>(&t).expect("frame") {
                    StreamFrame::Envelope(d) => Got::Envelope(d.seq),
                    StreamFrame::Caught { next } => Got::Caught(next),
                };
            }
            Some(Ok(Message::Close(f))) => return Got::Closed(f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Got::Closed(None),
        }
    }
}

/// Reads frames until caught up at `next`; returns the envelope seqs.
async fn until_caught(ws: &mut Ws, at: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        match next(ws).await {
            Got::Envelope(s) => seqs.push(s),
            Got::Caught(n) if n >= at => return seqs,
            Got::Caught(_) => {}
            Got::Closed(c) => panic!("closed early: {c:?}"),
        }
    }
}

/// Sends an MLS application message of `size` plaintext bytes from
/// `label` to `room`; returns its seq.
async fn submit<S: backchannel_store::Store>(
    node: &TestNode<S>,
    mls: &mut Mls,
    label: u8,
    room: backchannel_codec::RoomId,
    i: u8,
    size: usize,
) -> u64 {
    let talks = mls.talks;
    let a = node
        .client(label)
        .post_raw(
            &path(talks, "/envelopes"),
            mls_envelope(mls, label, room, &vec![i; size], [i; 16]),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    a.json["seq"].as_u64().unwrap()
}

#[tokio::test]
async fn a_stream_delivers_live_and_resumes_by_seq_without_gap_or_duplicate() {
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let t = fixtures::talks();
    let mut mls = mls_rooms(&node, talks, &[t.record, t.us_caucus]).await;
    // The rooms' MLS set-up comes first in the log; this test's envelopes
    // start at `base`.
    let base = node.node.store().log_size(talks).await.unwrap();
    let mut ws = connect(&node, IRAN_HEAD_DEVICE, talks, base)
        .await
        .expect("stream");
    assert!(until_caught(&mut ws, base).await.is_empty());
    // Record-room envelopes reach Iran; the US caucus one does not.
    submit(&node, &mut mls, US_HEAD_DEVICE, t.record, 1, 10).await;
    submit(&node, &mut mls, US_HEAD_DEVICE, t.us_caucus, 2, 10).await;
    submit(&node, &mut mls, US_HEAD_DEVICE, t.record, 3, 10).await;
    assert_eq!(until_caught(&mut ws, base + 3).await, vec![base, base + 2]);
    drop(ws);
    // Resume from base + 1: exactly what is left, once.
    submit(&node, &mut mls, US_HEAD_DEVICE, t.record, 4, 10).await;
    let mut ws = connect(&node, IRAN_HEAD_DEVICE, talks, base + 1)
        .await
        .expect("stream");
    assert_eq!(
        until_caught(&mut ws, base + 4).await,
        vec![base + 2, base + 3]
    );
}

#[tokio::test]
async fn a_key_removed_from_the_access_list_is_closed_at_once() {
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let mut ws = connect(&node, US_NEGOTIATOR_DEVICE, talks, 0)
        .await
        .expect("stream");
    until_caught(&mut ws, 0).await;
    // The US designated signer removes the negotiator's device.
    let list = reference_list();
    let delta = AccessListDelta::new(
        talks,
        list.hash(),
        vec![key(US_NEGOTIATOR_DEVICE).public_key().id()],
        vec![],
    )
    .unwrap();
    let sig = delta.sign(&key(US_TALKS)).unwrap();
    let change = AccessListChange::new(delta, vec![sig]).unwrap();
    let a = node
        .client(US_TALKS)
        .post(
            &path(talks, "/access-list/changes"),
            json!({"change": b64(&change.to_canonical_bytes())}),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json["applied"], true);
    match next(&mut ws).await {
        Got::Closed(code) => assert_eq!(code, Some(4003)),
        _ => panic!("expected the stream to close"),
    }
    // And the key is now an outsider.
    assert_eq!(
        connect(&node, US_NEGOTIATOR_DEVICE, talks, 0).await.err(),
        Some(404)
    );
}

/// A removal the node did not make (another node's, on the same database)
/// wakes no stream here; the next envelope this node sequences is checked
/// against the new list, and the stream that would deliver it from memory
/// closes instead, sending nothing sequenced after the removal.
#[tokio::test]
async fn a_key_removed_behind_the_node_is_sent_nothing_sequenced_after() {
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let t = fixtures::talks();
    let mut mls = mls_rooms(&node, talks, &[t.record]).await;
    let base = node.node.store().log_size(talks).await.unwrap();
    let mut ws = connect(&node, IRAN_HEAD_DEVICE, talks, base)
        .await
        .expect("stream");
    assert!(until_caught(&mut ws, base).await.is_empty());
    // Delivered live, from this node's memory.
    submit(&node, &mut mls, US_HEAD_DEVICE, t.record, 1, 10).await;
    assert_eq!(until_caught(&mut ws, base + 1).await, vec![base]);

    let iran = key(IRAN_HEAD_DEVICE).public_key().id();
    replace_list(&**node.node.store(), talks, &[iran], vec![]).await;
    let seq = submit(&node, &mut mls, US_HEAD_DEVICE, t.record, 2, 10).await;
    assert_eq!(seq, base + 1);
    match next(&mut ws).await {
        Got::Closed(code) => assert_eq!(code, Some(4003)),
        Got::Envelope(s) => panic!("envelope {s} sent after the removal"),
        Got::Caught(n) => panic!("caught {n} sent after the removal"),
    }
}

#[tokio::test]
async fn streams_per_key_are_limited() {
    let node = start(Limits {
        streams_per_key: 1,
        ..test_limits()
    })
    .await;
    let talks = node.open_reference_talks().await;
    let mut first = connect(&node, IRAN_HEAD_DEVICE, talks, 0)
        .await
        .expect("first");
    until_caught(&mut first, 0).await;
    assert_eq!(
        connect(&node, IRAN_HEAD_DEVICE, talks, 0).await.err(),
        Some(429)
    );
    // Another key is not affected; closing the first frees the slot.
    assert!(connect(&node, US_HEAD_DEVICE, talks, 0).await.is_ok());
    first.close(None).await.unwrap();
    drop(first);
    let mut ok = false;
    for _ in 0..50 {
        if connect(&node, IRAN_HEAD_DEVICE, talks, 0).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the slot was not freed");
}

#[tokio::test]
async fn an_idle_stream_is_closed() {
    let node = start(Limits {
        idle_timeout: Duration::from_millis(300),
        ping_interval: Duration::from_secs(3600),
        ..test_limits()
    })
    .await;
    let talks = node.open_reference_talks().await;
    let mut ws = connect(&node, IRAN_HEAD_DEVICE, talks, 0)
        .await
        .expect("stream");
    // The client sends nothing: after the idle timeout the node closes.
    let mut closed = None;
    for _ in 0..10 {
        if let Got::Closed(c) = next(&mut ws).await {
            closed = c;
            break;
        }
    }
    assert_eq!(closed, Some(4001));
}

#[tokio::test]
async fn a_slow_reader_is_closed_and_resumes_by_seq() {
    let node = start(Limits {
        send_queue_bytes: 64 << 10,
        slow_reader_timeout: Duration::from_millis(300),
        ..test_limits()
    })
    .await;
    let talks = node.open_reference_talks().await;
    let t = fixtures::talks();
    let mut mls = mls_rooms(&node, talks, &[t.record]).await;
    // The room's MLS set-up comes first in the log; this test's envelopes
    // start at `base`.
    let base = node.node.store().log_size(talks).await.unwrap();
    // 24 envelopes of 1 MiB bodies: far more than the socket buffers and
    // the 64 KiB queue hold while the reader reads nothing.
    for i in 1..=24u8 {
        submit(&node, &mut mls, US_HEAD_DEVICE, t.record, i, 1000 * 1000).await;
    }
    let mut ws = connect(&node, IRAN_HEAD_DEVICE, talks, base)
        .await
        .expect("stream");
    // The reader reads nothing for longer than the slow-reader timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut seqs = Vec::new();
    let code = loop {
        match next(&mut ws).await {
            Got::Envelope(s) => seqs.push(s),
            Got::Caught(_) => panic!("a slow reader caught up: the queue is not bounded"),
            Got::Closed(c) => break c,
        }
    };
    assert_eq!(code, Some(4008));
    assert!(seqs.len() < 24);
    // Resume where it stopped: the rest, no gap, no duplicate.
    let from = seqs.last().map_or(base, |s| s + 1);
    assert_eq!(seqs, (base..from).collect::<Vec<_>>());
    let mut ws = connect(&node, IRAN_HEAD_DEVICE, talks, from)
        .await
        .expect("stream");
    let rest = until_caught(&mut ws, base + 24).await;
    assert_eq!(rest, (from..base + 24).collect::<Vec<_>>());
}

#[tokio::test]
async fn open_streams_count_against_the_connection_limit() {
    let node = start(Limits {
        max_connections: 2,
        ..test_limits()
    })
    .await;
    let talks = node.open_reference_talks().await;
    let mut a = connect(&node, IRAN_HEAD_DEVICE, talks, 0).await.expect("a");
    until_caught(&mut a, 0).await;
    let mut b = connect(&node, US_HEAD_DEVICE, talks, 0).await.expect("b");
    until_caught(&mut b, 0).await;
    // Both slots are held by upgraded streams: a third connection is
    // dropped before its handshake completes.
    let tcp = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("connect");
    let third = tokio_rustls::TlsConnector::from(Arc::new(client_tls(
        US_NEGOTIATOR_DEVICE,
        node.fingerprint,
    )))
    .connect(ServerName::try_from("node.invalid").unwrap(), tcp)
    .await;
    assert!(third.is_err(), "a third connection got through");
    drop(a);
    let mut ok = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let tcp = tokio::net::TcpStream::connect(node.addr)
            .await
            .expect("connect");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client_tls(
            US_NEGOTIATOR_DEVICE,
            node.fingerprint,
        )))
        .connect(ServerName::try_from("node.invalid").unwrap(), tcp)
        .await;
        if tls.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "closing a stream did not free its slot");
}
