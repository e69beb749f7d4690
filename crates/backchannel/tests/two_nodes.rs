//! Two `backchannel node run` processes on one PostgreSQL database, sharing
//! one node directory (so one log key and one TLS identity): any node
//! accepts any request. Devices of one talks talk through different nodes;
//! a device streaming from node A receives what another submits through
//! node B as it is sequenced; both nodes serve one log, the same envelopes
//! at the same seqs, and checkpoints of one tree. Skipped without
//! `BACKCHANNEL_TEST_DATABASE_URL`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use backchannel_client::net::{NodeClient, StreamEvent};
use backchannel_client::rooms::sync_all;
use backchannel_client::seal::Content;
use backchannel_client::session::Session;
use backchannel_client::store::MemoryClientStore;
use backchannel_crypto::Signer as _;
use backchannel_node::tls::Fingerprint;
use backchannel_statement::Salt;
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_tlog::NodeOrigin;
use common::{PgDatabase, backchannel, ok, start_node_on};

type Sess = Session<MemoryClientStore>;

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The talk `s` archived, in seq order.
async fn talk(s: &Sess) -> Vec<String> {
    s.archive()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|a| match a.message.map(|m| m.content) {
            Some(Content::Talk(t)) => Some(t),
            _ => None,
        })
        .collect()
}

#[test]
fn two_nodes_on_one_database_serve_one_log() {
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node");
    ok(backchannel()
        .args(["node", "init", "--origin", "node.example", "--dir"])
        .arg(&node_dir));
    ok(backchannel()
        .args(["node", "creators", "add", "--dir"])
        .arg(&node_dir)
        .arg(hex::encode(key(OMAN_LEAD_DEVICE).public_key().as_bytes())));
    let (mut a, addr_a, fp_a) = start_node_on(&node_dir, Some(&db.url));
    let (mut b, addr_b, fp_b) = start_node_on(&node_dir, Some(&db.url));
    assert_eq!(fp_a, fp_b, "one TLS identity");
    let fingerprint = Fingerprint::from_hex(&fp_a).unwrap();
    let log_key = {
        let out = ok(backchannel()
            .args(["node", "info", "--json", "--dir"])
            .arg(&node_dir));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let hex = v["log_key"].as_str().unwrap().to_owned();
        backchannel_crypto::PublicKey::from_bytes(&hex::decode(hex).unwrap()).unwrap()
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = fixtures::talks();
        let list = t.roster.implied_access_list(t.talks).unwrap();
        // Opened through node A; every other call of the US devices goes
        // through node B.
        NodeClient::new(addr_a, fingerprint, &key(OMAN_LEAD_DEVICE))
            .unwrap()
            .create_talks(&list)
            .await
            .unwrap();
        let via = |label: u8| {
            if matches!(label, US_HEAD_DEVICE | US_NEGOTIATOR_DEVICE) {
                addr_b
            } else {
                addr_a
            }
        };
        let labels = [
            OMAN_LEAD_DEVICE,
            US_HEAD_DEVICE,
            US_NEGOTIATOR_DEVICE,
            IRAN_HEAD_DEVICE,
        ];
        let mut sessions: Vec<Sess> = Vec::new();
        for l in labels {
            sessions.push(
                Session::open(
                    Arc::new(MemoryClientStore::default()),
                    NodeClient::new(via(l), fingerprint, &key(l)).unwrap(),
                    key(l),
                    t.talks,
                    &NodeOrigin::new("node.example").unwrap(),
                    log_key,
                )
                .await
                .unwrap(),
            );
        }
        // The rooms' groups form across both nodes.
        {
            let mut all: Vec<&mut Sess> = sessions.iter_mut().collect();
            sync_all(&mut all, &list, now_s()).await.unwrap();
        }
        for s in &mut sessions {
            s.receive(&list).await.unwrap();
        }

        // Oman's device streams from node A; the US head talks through
        // node B.
        let size = NodeClient::new(addr_a, fingerprint, &key(OMAN_LEAD_DEVICE))
            .unwrap()
            .fetch(t.talks, 0, 1)
            .await
            .unwrap()
            .log_size;
        let mut stream = NodeClient::new(addr_a, fingerprint, &key(OMAN_LEAD_DEVICE))
            .unwrap()
            .stream(t.talks, size)
            .await
            .unwrap();
        let seq = sessions[1]
            .send(
                &list,
                t.us_caucus,
                Content::Talk("through node B".into()),
                Salt([3; 32]),
            )
            .await
            .unwrap();
        let delivered = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match stream.next().await.unwrap() {
                    StreamEvent::Envelope(d) if d.seq == seq => return d,
                    StreamEvent::Envelope(_) | StreamEvent::Caught(_) => {}
                    StreamEvent::Closed(code) => panic!("the stream closed: {code}"),
                }
            }
        })
        .await
        .expect("node A delivered what node B sequenced");
        assert_eq!(delivered.header.header().room, t.us_caucus);

        // Each device reads everything its rooms hold, whichever node
        // sequenced it.
        for s in &mut sessions {
            s.receive(&list).await.unwrap();
        }
        assert_eq!(talk(&sessions[0]).await, vec!["through node B".to_owned()]);
        assert_eq!(talk(&sessions[2]).await, vec!["through node B".to_owned()]);
        assert!(talk(&sessions[3]).await.is_empty());

        // One log: both nodes serve the same envelopes at the same seqs.
        let page = |addr| async move {
            NodeClient::new(addr, fingerprint, &key(US_NEGOTIATOR_DEVICE))
                .unwrap()
                .fetch(t.talks, 0, 1000)
                .await
                .unwrap()
        };
        let (pa, pb) = (page(addr_a).await, page(addr_b).await);
        assert_eq!(pa.log_size, pb.log_size);
        let seqs = |p: &backchannel_client::net::Page| {
            p.envelopes
                .iter()
                .map(|d| (d.seq, d.leaf_hash()))
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(&pa), seqs(&pb));

        // Checkpoints of one tree: once both nodes' checkpoints cover the
        // whole log, they name the same root.
        let checkpoint = |addr| async move {
            let (_, note) = NodeClient::new(addr, fingerprint, &key(US_NEGOTIATOR_DEVICE))
                .unwrap()
                .checkpoint(t.talks)
                .await
                .unwrap();
            backchannel_tlog::CheckpointNote::parse(&note)
                .unwrap()
                .claimed()
                .clone()
        };
        let both = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let (ca, cb) = (checkpoint(addr_a).await, checkpoint(addr_b).await);
                if ca.size == pa.log_size && cb.size == pa.log_size {
                    return (ca, cb);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("both nodes checkpoint the whole log");
        assert_eq!(both.0.root, both.1.root);
    });
    for child in [&mut a, &mut b] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    drop(db);
}
