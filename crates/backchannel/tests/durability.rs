//! Acknowledged means durable, end to end: a real `backchannel node run`
//! on SQLite, and on PostgreSQL, is SIGKILLed while clients submit over TLS, then restarted on
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
use backchannel_mls::{Handshake, Member};
use backchannel_node::tls::{self, Fingerprint, Identity};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::header::pad_body;
use backchannel_statement::{Commitment, Header, Kind, SignedHeader};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{backchannel, ok, start_node_on};
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

/// A signed envelope of `kind` to the record room carrying `message`.
fn signed(
    sender: &SecretKey,
    kind: Kind,
    message: &[u8],
    commitment: [u8; 32],
    idem: [u8; 16],
) -> Vec<u8> {
    let t = fixtures::talks();
    let body = pad_body(message).unwrap();
    let header = Header {
        talks: t.talks,
        room: t.record,
        sender: sender.public_key().id(),
        kind,
        idempotency_key: idem,
        body_len: body.len() as u32,
        body_hash: sha256(&body),
        commitment: Commitment(commitment),
    }
    .sign(sender)
    .unwrap();
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes
}

/// Envelope `n` of `member`: an MLS application message for the record
/// room, the header's commitment as its authenticated data.
fn envelope(member: &mut Member, sender: &SecretKey, n: u32) -> Vec<u8> {
    let commitment = sha256(&n.to_be_bytes()).0;
    let message = member
        .encrypt(
            fixtures::talks().record,
            format!("envelope {n}").as_bytes(),
            &commitment,
        )
        .unwrap();
    let mut idem = [0u8; 16];
    idem[..4].copy_from_slice(&n.to_be_bytes());
    signed(sender, Kind::MlsApp, &message, commitment, idem)
}

fn setup_idem(n: u8) -> [u8; 16] {
    let mut idem = [0xff; 16];
    idem[15] = n;
    idem
}

/// The record room's MLS group with the four devices in it: Oman's device
/// creates it, the others put key packages on the node, Oman's adds them
/// (commit and Welcome in one request), they join from the Welcome.
async fn record_group(addr: std::net::SocketAddr, fp: &str, labels: &[u8]) -> Vec<Member> {
    let t = fixtures::talks();
    let path = format!("/v1/talks/{}", t.talks.to_hex());
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut members: Vec<Member> = labels
        .iter()
        .map(|l| Member::new(t.talks, key(*l)))
        .collect();
    let (http, base) = client(labels[0], addr, fp);
    let gi = members[0].create_room(t.record).unwrap();
    let create = signed(
        &key(labels[0]),
        Kind::MlsHandshake,
        &Handshake::Create { group_info: &gi }.encode(),
        [0; 32],
        setup_idem(0),
    );
    let r = http
        .post(format!("{base}{path}/envelopes"))
        .body(create)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (m, l) in members.iter_mut().zip(labels).skip(1) {
        let kps = m
            .key_packages(1, false, now_s - 60, 30 * 24 * 3600)
            .unwrap();
        let (h, b) = client(*l, addr, fp);
        let r = h
            .post(format!("{b}{path}/key-packages"))
            .json(&json!({ "key_packages": [STANDARD.encode(&kps[0])] }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let ids: Vec<String> = labels[1..]
        .iter()
        .map(|l| key(*l).public_key().id().to_hex())
        .collect();
    let claimed: Value = http
        .post(format!("{base}{path}/key-packages/claim"))
        .json(&json!({ "devices": ids }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kps: Vec<Vec<u8>> = claimed["key_packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| STANDARD.decode(k["key_package"].as_str().unwrap()).unwrap())
        .collect();
    let out = members[0]
        .commit(t.record, &kps, &[], &|_: &backchannel_crypto::PublicKey| {
            true
        })
        .unwrap();
    let mut req = signed(
        &key(labels[0]),
        Kind::MlsHandshake,
        &Handshake::Commit {
            commit: &out.commit,
            group_info: &out.group_info,
        }
        .encode(),
        [0; 32],
        setup_idem(1),
    );
    let welcome = out.welcome.clone().unwrap();
    req.extend(signed(
        &key(labels[0]),
        Kind::Welcome,
        &welcome,
        [0; 32],
        setup_idem(2),
    ));
    let r = http
        .post(format!("{base}{path}/commits"))
        .body(req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    members[0].merge_pending(t.record).unwrap();
    for m in members.iter_mut().skip(1) {
        m.join(&welcome, &|_: &backchannel_crypto::PublicKey| true)
            .unwrap();
    }
    members
}

#[test]
fn every_acknowledged_envelope_survives_a_sigkill() {
    survives_a_sigkill(None);
}

/// The same on PostgreSQL, in a database of its own on the server
/// `BACKCHANNEL_TEST_DATABASE_URL` names.
#[test]
fn every_acknowledged_envelope_survives_a_sigkill_on_postgresql() {
    let Some(db) = common::PgDatabase::create() else {
        return;
    };
    survives_a_sigkill(Some(&db.url));
}

/// Kills a node on `database` (`None`: its directory's SQLite file) under
/// load, restarts it, and reads everything back.
fn survives_a_sigkill(database: Option<&str>) {
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
    let (mut child, addr, fp) = start_node_on(&node_dir, database);

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

    // Four submitters, each with its own device in the record room's MLS
    // group, submit until the node is killed under them; every
    // acknowledgement is recorded.
    let acked: Arc<Mutex<BTreeMap<u64, Vec<u8>>>> = Arc::default();
    let senders = [
        OMAN_LEAD_DEVICE,
        US_HEAD_DEVICE,
        US_NEGOTIATOR_DEVICE,
        IRAN_HEAD_DEVICE,
    ];
    let members = rt.block_on(record_group(addr, &fp, &senders));
    let tasks: Vec<_> = senders
        .iter()
        .zip(members)
        .enumerate()
        .map(|(i, (&label, mut member))| {
            let acked = Arc::clone(&acked);
            let (http, base) = client(label, addr, &fp);
            let url = format!("{base}{talks_path}/envelopes");
            rt.spawn(async move {
                for n in 0..100_000u32 {
                    let bytes = envelope(&mut member, &key(label), n * 4 + i as u32);
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
    let (mut child, addr, fp) = start_node_on(&node_dir, database);
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
