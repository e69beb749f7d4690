//! What the node writes to its own log: no talks id, room id, key id,
//! public key or IP address at info level or above, through a whole
//! session of requests (good and bad); and the plain-HTTP danger mode.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use backchannel_codec::Encode;
use backchannel_codec::PartyId;
use backchannel_crypto::Signer;
use backchannel_node::net::{DANGER_KEY_HEADER, ServeError, Transport, serve};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::{InvitationFields, InvitationToken};
use common::*;
use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_node_logs_no_ids_keys_or_addresses() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let t = fixtures::talks();
    // The record room's MLS set-up (key packages, the group's creation, a
    // commit with its Welcome) is part of the session; it sets the node's
    // clock to the system time.
    let mut mls = mls_rooms(&node, talks, &[t.record]).await;
    let us = node.client(US_HEAD_DEVICE);
    let a = us
        .post_raw(
            &path(talks, "/envelopes"),
            mls_envelope(&mut mls, US_HEAD_DEVICE, t.record, b"x", [1; 16]),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    us.post_raw(&path(talks, "/envelopes"), vec![0; 400]).await;
    node.client(OUTSIDER)
        .get(&path(talks, "/access-list"))
        .await;
    let token = InvitationToken([9; 32]);
    let inv = InvitationFields {
        talks,
        party: PartyId([0xee; 16]),
        token_hash: token.hash(),
        expires_at: node.clock.0.load(std::sync::atomic::Ordering::SeqCst) + 1000,
    }
    .sign(&key(OMAN_TALKS))
    .unwrap();
    // (Its expiry follows the node's clock, which the MLS set-up moved.)
    let a = node
        .client(OMAN_LEAD_DEVICE)
        .post(
            &path(talks, "/invitations"),
            json!({"invitation": b64(&inv.to_canonical_bytes())}),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let a = node
        .client(0x67)
        .post(&path(talks, "/enrol"), json!({"token": b64(&token.0)}))
        .await;
    assert_eq!(a.status, 200, "{a:?}");

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("talks opened"),
        "nothing was captured: {text}"
    );
    let mut secrets = vec![
        talks.to_hex(),
        t.record.to_hex(),
        t.us_caucus.to_hex(),
        "127.0.0.1".to_owned(),
    ];
    for label in [
        US_HEAD_DEVICE,
        OUTSIDER,
        OMAN_LEAD_DEVICE,
        OMAN_TALKS,
        0x67,
        NODE_LOG,
    ] {
        let k = key(label).public_key();
        secrets.push(hex::encode(k.as_bytes()));
        secrets.push(hex::encode(k.id().0.0));
    }
    for s in secrets {
        assert!(!text.contains(&s), "the node logged {s}:\n{text}");
    }
}

#[tokio::test]
async fn plain_http_is_refused_off_loopback_and_names_its_key_on_it() {
    let store = backchannel_store::memory::MemoryStore::new();
    let node = start_with(store, test_limits()).await;
    let public = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let r = serve(
        Tcp(public),
        Transport::DangerPlainHttp,
        node.node.clone(),
        std::future::pending(),
    )
    .await;
    assert!(
        matches!(r, Err(ServeError::PlainHttpNotLoopback(_))),
        "{r:?}"
    );

    let local = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = local.local_addr().unwrap();
    let n = node.node.clone();
    tokio::spawn(async move {
        serve(
            Tcp(local),
            Transport::DangerPlainHttp,
            n,
            std::future::pending(),
        )
        .await
    });
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/v1/node");
    let a = http.get(&url).send().await.unwrap();
    assert_eq!(a.status(), 401);
    let a = http
        .get(&url)
        .header(
            DANGER_KEY_HEADER,
            hex::encode(key(OUTSIDER).public_key().as_bytes()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 200);
}
