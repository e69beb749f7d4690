//! Clients resume across a node crash: a real `backchannel node run` is
//! SIGKILLed while two devices send through their client sessions, then
//! restarted on the same directory (on a new port). The sessions reopen
//! from their stores, receive with no gap and no duplicate, find every
//! envelope the node acknowledged to them, and verify the whole log from
//! the data tiles.
//!
//! Rooms are MLS groups: before they send, the two devices join their
//! rooms' groups (`sync_all`), which logs the groups' handshakes and
//! Welcomes ahead of the talk. They talk in the room they share that takes
//! talk, the US caucus (the record room carries formal signed statements
//! only).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use backchannel_client::net::NodeClient;
use backchannel_client::rooms::sync_all;
use backchannel_client::seal::Content;
use backchannel_client::session::Session;
use backchannel_client::store::MemoryClientStore;
use backchannel_crypto::{SecretKey, Signer};
use backchannel_node::tls::Fingerprint;
use backchannel_statement::Salt;
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_tlog::NodeOrigin;
use common::{backchannel, now_ms, ok, start_node};

type S = Session<MemoryClientStore>;

async fn session(
    store: &Arc<MemoryClientStore>,
    label: u8,
    addr: std::net::SocketAddr,
    fp: Fingerprint,
    log_key: backchannel_crypto::PublicKey,
) -> S {
    let t = fixtures::talks();
    Session::open(
        Arc::clone(store),
        NodeClient::new(addr, fp, &key(label)).unwrap(),
        SecretKey::from_seed(&[label; 32]).unwrap(),
        t.talks,
        &NodeOrigin::new("node.example").unwrap(),
        log_key,
    )
    .await
    .unwrap()
}

#[test]
fn sessions_resume_without_gap_or_duplicate_after_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node");
    let init = ok(backchannel()
        .args([
            "node",
            "init",
            "--origin",
            "node.example",
            "--json",
            "--dir",
        ])
        .arg(&node_dir));
    let info: serde_json::Value = serde_json::from_str(&init).unwrap();
    let log_key_hex = info["log_key"]
        .as_str()
        .expect("the log key in init's JSON");
    let log_key =
        backchannel_crypto::PublicKey::from_bytes(&hex::decode(log_key_hex).unwrap()).unwrap();
    ok(backchannel()
        .args(["node", "creators", "add", "--dir"])
        .arg(&node_dir)
        .arg(hex::encode(key(OMAN_LEAD_DEVICE).public_key().as_bytes())));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = fixtures::talks();
    let list = t.roster.implied_access_list(t.talks).unwrap();
    let (mut child, addr, fp) = start_node(&node_dir);
    let fp = Fingerprint::from_hex(&fp).unwrap();
    rt.block_on(async {
        NodeClient::new(addr, fp, &key(OMAN_LEAD_DEVICE))
            .unwrap()
            .create_talks(&list)
            .await
            .unwrap();
    });

    // The two devices join their rooms' groups (the node runs at the real
    // time, which key-package lifetimes are checked against). What each
    // archived then is the head of its archive; the talk follows it, from
    // `base` on. Both are the United States' (its head and negotiator):
    // the US caucus holds them both, and their rooms are the same.
    let devices = [US_HEAD_DEVICE, US_NEGOTIATOR_DEVICE];
    let stores: Vec<Arc<MemoryClientStore>> = devices.iter().map(|_| Arc::default()).collect();
    let (base, heads): (u64, Vec<Vec<u64>>) = rt.block_on(async {
        let mut us = session(&stores[0], devices[0], addr, fp, log_key).await;
        let mut negotiator = session(&stores[1], devices[1], addr, fp, log_key).await;
        sync_all(&mut [&mut us, &mut negotiator], &list, now_ms() / 1000)
            .await
            .unwrap();
        let base = us.next_seq();
        assert_eq!(negotiator.next_seq(), base);
        let mut heads = Vec::new();
        for s in [&us, &negotiator] {
            heads.push(s.archive().await.unwrap().iter().map(|a| a.seq).collect());
        }
        (base, heads)
    });

    // Two devices send until the node is killed under them; each records
    // the seqs the node acknowledged.
    let tasks: Vec<_> = devices
        .iter()
        .zip(&stores)
        .map(|(&label, store)| {
            let store = Arc::clone(store);
            let list = list.clone();
            rt.spawn(async move {
                let mut s = session(&store, label, addr, fp, log_key).await;
                let mut acked = Vec::new();
                for i in 0..10_000u32 {
                    let text = format!("device {label} message {i}");
                    match s
                        .send(&list, t.us_caucus, Content::Talk(text), Salt([label; 32]))
                        .await
                    {
                        Ok(seq) => acked.push(seq),
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let acked: Vec<Vec<u64>> = tasks.into_iter().map(|t| rt.block_on(t).unwrap()).collect();
    assert!(
        acked.iter().all(|a| a.len() >= 5),
        "too few acknowledgements: {acked:?}"
    );

    // Restart on a new port; the sessions reopen from their stores.
    let (mut child, addr, fp) = start_node(&node_dir);
    let fp = Fingerprint::from_hex(&fp).unwrap();
    rt.block_on(async {
        for (((&label, store), acked), head) in devices.iter().zip(&stores).zip(&acked).zip(&heads)
        {
            let mut s = session(store, label, addr, fp, log_key).await;
            let rooms: BTreeSet<_> = list
                .get(&key(label).public_key().id())
                .unwrap()
                .rooms()
                .iter()
                .copied()
                .collect();
            // Receive everything (after the setup, the US caucus holds
            // both devices' talk, and nothing else is sent).
            s.receive(&list).await.unwrap();
            let size = s.next_seq();
            let archive = s.archive().await.unwrap();
            let seqs: Vec<u64> = archive.iter().map(|a| a.seq).collect();
            let mut sorted = seqs.clone();
            sorted.dedup();
            assert_eq!(seqs, sorted, "a duplicate or out-of-order seq");
            assert_eq!(
                seqs,
                head.iter().copied().chain(base..size).collect::<Vec<_>>(),
                "a gap in the archive"
            );
            for a in archive.iter().filter(|a| a.seq >= base) {
                assert_eq!(a.header.header().room, t.us_caucus, "seq {}", a.seq);
                assert!(
                    matches!(&a.message, Some(m) if matches!(&m.content, Content::Talk(_))),
                    "seq {}: {:?}",
                    a.seq,
                    a.unreadable
                );
            }
            for seq in acked {
                assert!(*seq >= base, "acknowledged seq {seq} in the setup");
                assert!(seqs.contains(seq), "acknowledged seq {seq} missing");
            }
            // The whole log verifies from the data tiles.
            let mut verified = 0;
            for _ in 0..100 {
                let (report, _) = s.verify_log(&rooms, now_ms()).await.unwrap();
                assert!(report.withheld.is_empty(), "{:?}", report.withheld);
                verified = report.size;
                if verified == size {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(verified, size, "the log did not verify to its end");
        }
    });
    child.kill().unwrap();
    child.wait().unwrap();
}
