//! Acknowledged means durable, end to end: a real `backchannel node run`
//! on SQLite is SIGKILLed while clients submit over TLS, then restarted on
//! the same directory. Every acknowledged envelope is there once, at the
//! seq it was acknowledged with, with the same bytes, in a dense log; a
//! retry of an acknowledged envelope after the restart gets its original
//! seq back (idempotency keys are rows); and nothing unacknowledged is
//! half there.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backchannel_codec::Encode;
use backchannel_crypto::{SecretKey, Signer, sha256};
use backchannel_node::tls::{self, Fingerprint, Identity};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::header::pad_body;
use backchannel_statement::{Commitment, Header, Kind, SignedHeader};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{backchannel, ok, start_node};
use serde_json::{Value, json};

fn client(label: u8, addr: std::net::SocketAddr, fingerprint: &str) -> (reqwest::Client, String) {
    let identity = Identity::self_signed(&key(label), "device").unwrap();
    let config =
        tls::client_config(&identity, Fingerprint::from_hex(fingerprint).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .resolve("node.invalid", addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    (http, format!("https://node.invalid:{}", addr.port()))
}

fn envelope(sender: &SecretKey, n: u32) -> Vec<u8> {
    let t = fixtures::talks();
    let body = pad_body(format!("envelope {n}").as_bytes()).unwrap();
    let mut idem = [0u8; 16];
    idem[..4].copy_from_slice(&n.to_be_bytes());
    let header = Header {
        talks: t.talks,
        room: t.record,
        sender: sender.public_key().id(),
        kind: Kind::MlsApp,
        idempotency_key: idem,
        body_len: body.len() as u32,
        body_hash: sha256(&body),
        commitment: Commitment([2; 32]),
    }
    .sign(sender)
    .unwrap();
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes
}

#[test]
fn every_acknowledged_envelope_survives_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node");
    ok(backchannel()
        .args(["node", "init", "--origin", "node.example", "--dir"])
        .arg(&node_dir));
    ok(backchannel()
        .args(["node", "creators", "add", "--dir"])
        .arg(&node_dir)
        .arg(hex::encode(key(OMAN_LEAD_DEVICE).public_key().as_bytes())));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = fixtures::talks();
    let talks_path = format!("/v1/talks/{}", t.talks.to_hex());
    let (mut child, addr, fp) = start_node(&node_dir);

    // Open the reference talks.
    let list = t.roster.implied_access_list(t.talks).unwrap();
    rt.block_on(async {
        let (http, base) = client(OMAN_LEAD_DEVICE, addr, &fp);
        let r = http
            .post(format!("{base}/v1/talks"))
            .json(&json!({"access_list": STANDARD.encode(list.to_canonical_bytes())}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    });

    // Four submitters, each with its own device, submit until the node is
    // killed under them; every acknowledgement is recorded.
    let acked: Arc<Mutex<BTreeMap<u64, Vec<u8>>>> = Arc::default();
    let senders = [
        US_HEAD_DEVICE,
        US_NEGOTIATOR_DEVICE,
        IRAN_HEAD_DEVICE,
        OMAN_LEAD_DEVICE,
    ];
    let tasks: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(i, &label)| {
            let acked = Arc::clone(&acked);
            let (http, base) = client(label, addr, &fp);
            let url = format!("{base}{talks_path}/envelopes");
            rt.spawn(async move {
                for n in 0..100_000u32 {
                    let bytes = envelope(&key(label), n * 4 + i as u32);
                    let Ok(r) = http.post(&url).body(bytes.clone()).send().await else {
                        return;
                    };
                    if r.status() != 200 {
                        return;
                    }
                    let Ok(v) = r.json::<Value>().await else {
                        return;
                    };
                    let seq = v["seq"].as_u64().unwrap();
                    assert!(
                        acked.lock().unwrap().insert(seq, bytes).is_none(),
                        "seq {seq} acknowledged twice"
                    );
                }
            })
        })
        .collect();
    // Let a few hundred acknowledgements through, then SIGKILL.
    for _ in 0..600 {
        if acked.lock().unwrap().len() >= 300 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for task in tasks {
        rt.block_on(task).unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 300,
        "only {} acknowledgements before the kill",
        acked.len()
    );

    // Restart on the same directory and read everything back.
    let (mut child, addr, fp) = start_node(&node_dir);
    let (http, base) = client(US_NEGOTIATOR_DEVICE, addr, &fp);
    let stored: BTreeMap<u64, Vec<u8>> = rt.block_on(async {
        let mut out = BTreeMap::new();
        let mut from = 0;
        loop {
            let v: Value = http
                .get(format!("{base}{talks_path}/envelopes?from={from}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for e in v["envelopes"].as_array().unwrap() {
                let mut bytes = STANDARD.decode(e["header"].as_str().unwrap()).unwrap();
                bytes.extend(STANDARD.decode(e["body"].as_str().unwrap()).unwrap());
                assert!(
                    out.insert(e["seq"].as_u64().unwrap(), bytes).is_none(),
                    "a duplicate"
                );
            }
            let next = v["next"].as_u64().unwrap();
            if next >= v["log_size"].as_u64().unwrap() {
                break;
            }
            from = next;
        }
        out
    });
    // Dense, whole, and every acknowledgement at its seq with its bytes.
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (0..stored.len() as u64).collect::<Vec<_>>()
    );
    for (seq, bytes) in &stored {
        let header = SignedHeader::decode(&bytes[..223]).expect("a whole header");
        assert_eq!(
            header.header().body_hash,
            sha256(&bytes[223..]),
            "seq {seq} is torn"
        );
    }
    for (seq, bytes) in &acked {
        assert_eq!(
            stored.get(seq),
            Some(bytes),
            "acknowledged seq {seq} lost or changed"
        );
    }
    // A retry of an acknowledged envelope finds its original seq.
    let (seq, bytes) = acked.iter().next_back().unwrap();
    let sender = SignedHeader::decode(&bytes[..223]).unwrap().header().sender;
    let label = senders
        .into_iter()
        .find(|l| key(*l).public_key().id() == sender)
        .unwrap();
    let (http, base) = client(label, addr, &fp);
    let v: Value = rt.block_on(async {
        http.post(format!("{base}{talks_path}/envelopes"))
            .body(bytes.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(v["seq"].as_u64(), Some(*seq));
    child.kill().unwrap();
    child.wait().unwrap();
}
