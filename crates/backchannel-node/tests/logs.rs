//! Checkpoints, cosignatures, tiles and proofs through the API, and the
//! stored-envelope tamper tests on SQLite across a restart.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use backchannel_codec::{Decode, TalksId};
use backchannel_crypto::{Digest, Signer, sha256};
use backchannel_node::server::witness_name;
use backchannel_statement::SignedHeader;
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_store::Store;
use backchannel_store_sqlite::{SqliteOptions, SqliteStore};
use backchannel_tlog::{
    Checkpoint, ConsistencyProof, InclusionProof, LeafData, LogOrigin, NodeOrigin,
    SignedCheckpoint, cosign_note, cosignatures,
};
use common::*;
use serde_json::json;

/// Waits until the node has a checkpoint of at least `size`; returns it.
async fn checkpoint_at_least(c: &Client, talks: TalksId, size: u64) -> SignedCheckpoint {
    for _ in 0..500 {
        let a = c.get(&path(talks, "/checkpoint")).await;
        assert_eq!(a.status, 200, "{a:?}");
        if a.json["size"].as_u64().unwrap() >= size {
            let note = a.json["note"].as_str().unwrap().as_bytes().to_vec();
            let origin = LogOrigin::new(&NodeOrigin::new("node.example").unwrap(), talks);
            return SignedCheckpoint::verify(&note, &key(NODE_LOG).public_key(), &origin)
                .expect("the checkpoint verifies under the node's log key");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no checkpoint of size {size}");
}

/// The leaf hash a client computes from what it was served.
fn leaf_of(d: &serde_json::Value) -> Digest {
    let header = unb64(&d["header"]);
    let signed = SignedHeader::decode(&header).unwrap();
    LeafData {
        seq: d["seq"].as_u64().unwrap(),
        timestamp_ms: d["node_time"].as_u64().unwrap(),
        room: signed.header().room,
        header_hash: sha256(&header),
        body_hash: sha256(&unb64(&d["body"])),
    }
    .hash()
}

/// Sends `n` MLS application messages from the US head to the record room.
async fn submit_n<S: Store>(node: &TestNode<S>, mls: &mut Mls, from: u8, n: u8) {
    let t = fixtures::talks();
    let talks = mls.talks;
    let us = node.client(US_HEAD_DEVICE);
    for i in from..from + n {
        let a = us
            .post_raw(
                &path(talks, "/envelopes"),
                mls_envelope(mls, US_HEAD_DEVICE, t.record, &[i], [i; 16]),
            )
            .await;
        assert_eq!(a.status, 200, "{a:?}");
    }
}

#[tokio::test]
async fn checkpoints_proofs_tiles_and_cosignatures() {
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let iran = node.client(IRAN_HEAD_DEVICE);
    // The empty log has its checkpoint from the start.
    let cp0 = checkpoint_at_least(&iran, talks, 0).await;
    assert_eq!(cp0.checkpoint().size, 0);
    // The record room's MLS set-up (creation, commit, Welcome: all of the
    // record room, which Iran reads whole) comes first in the log.
    let t = fixtures::talks();
    let mut mls = mls_rooms(&node, talks, &[t.record]).await;
    let base = node.node.store().log_size(talks).await.unwrap();
    let (s5, s8) = (base + 5, base + 8);
    submit_n(&node, &mut mls, 1, 5).await;
    let cp5 = checkpoint_at_least(&iran, talks, s5).await;
    let Checkpoint { size, root, .. } = cp5.checkpoint().clone();
    assert_eq!(size, s5);
    // Every served envelope's re-computed leaf is in the checkpoint.
    let page = iran.get(&path(talks, "/envelopes?from=0")).await;
    assert_eq!(page.json["envelopes"].as_array().unwrap().len() as u64, s5);
    for d in page.json["envelopes"].as_array().unwrap() {
        let seq = d["seq"].as_u64().unwrap();
        let a = iran
            .get(&path(
                talks,
                &format!("/proof/inclusion?index={seq}&size={s5}"),
            ))
            .await;
        let proof = InclusionProof::from_canonical_bytes(&unb64(&a.json["proof"])).unwrap();
        proof.verify(seq, s5, &root, &leaf_of(d)).expect("included");
    }
    // Consistency between sizes, and bad ranges.
    submit_n(&node, &mut mls, 6, 3).await;
    let cp8 = checkpoint_at_least(&iran, talks, s8).await;
    let a = iran
        .get(&path(
            talks,
            &format!("/proof/consistency?from={s5}&to={s8}"),
        ))
        .await;
    let proof = ConsistencyProof::from_canonical_bytes(&unb64(&a.json["proof"])).unwrap();
    proof
        .verify(s5, &root, s8, &cp8.checkpoint().root)
        .expect("consistent");
    for (q, status) in [
        (format!("/proof/consistency?from=0&to={s8}"), 400),
        (format!("/proof/consistency?from={s5}&to={}", s5 - 1), 400),
        (format!("/proof/consistency?from={s5}&to=999"), 404),
        (format!("/proof/inclusion?index={s8}&size={s8}"), 400),
        ("/proof/inclusion?index=1&size=999".to_owned(), 404),
        ("/proof/inclusion?index=x".to_owned(), 400),
        ("/tile/8/0/001".to_owned(), 404),
        ("/tile/8/8/000".to_owned(), 404),
        ("/tile/8/32/000".to_owned(), 404),
        (format!("/tile/8/data/000.p/{}", s8 + 1), 404),
        ("/tile/8/data/001".to_owned(), 404),
    ] {
        let a = iran.get(&path(talks, &q)).await;
        assert_eq!(a.status, status, "{q}: {a:?}");
    }
    // A partial level-0 tile holds the leaf hashes.
    let a = iran
        .get(&path(talks, &format!("/tile/8/0/000.p/{s8}")))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.bytes.len() as u64, s8 * 32);
    let first = &page.json["envelopes"][0];
    assert_eq!(&a.bytes[..32], &leaf_of(first).0);
    // The data tile holds the leaf data, which re-hashes to the hash tile.
    let d = iran
        .get(&path(talks, &format!("/tile/8/data/000.p/{s8}")))
        .await;
    assert_eq!(d.status, 200);
    assert_eq!(
        d.bytes.len() as u64,
        s8 * backchannel_tlog::LEAF_DATA_LEN as u64
    );
    for (i, entry) in d.bytes.chunks(backchannel_tlog::LEAF_DATA_LEN).enumerate() {
        let leaf = LeafData::from_canonical_bytes(entry).unwrap();
        assert_eq!(leaf.seq, i as u64);
        assert_eq!(&leaf.hash().0, &a.bytes[i * 32..(i + 1) * 32]);
    }

    // Cosigning: a device cosigns the latest checkpoint under its witness name.
    let latest = iran.get(&path(talks, "/checkpoint")).await;
    let size = latest.json["size"].as_u64().unwrap();
    let note = latest.json["note"].as_str().unwrap().as_bytes().to_vec();
    let dev = key(IRAN_HEAD_DEVICE);
    let name = witness_name(&dev.public_key().id());
    let cosigned = cosign_note(&note, &dev, &name, T0 / 1000).unwrap();
    let line = cosignatures(&cosigned).unwrap().pop().unwrap().to_line();
    let line = String::from_utf8(line).unwrap();
    // Wrong size: 409; another key's name: 400.
    let a = iran
        .post(
            &path(talks, "/checkpoint/cosignatures"),
            json!({"size": size + 1, "line": line}),
        )
        .await;
    assert_eq!((a.status, a.code().as_str()), (409, "stale"));
    let a = node
        .client(US_HEAD_DEVICE)
        .post(
            &path(talks, "/checkpoint/cosignatures"),
            json!({"size": size, "line": line}),
        )
        .await;
    assert_eq!((a.status, a.code().as_str()), (400, "malformed"));
    let a = iran
        .post(
            &path(talks, "/checkpoint/cosignatures"),
            json!({"size": size, "line": line}),
        )
        .await;
    assert_eq!(a.status, 204, "{a:?}");
    let served = iran.get(&path(talks, "/checkpoint")).await;
    assert!(served.json["note"].as_str().unwrap().contains(&line));
}

async fn sqlite_node(path: &std::path::Path) -> TestNode<SqliteStore> {
    let store = SqliteStore::open(path, SqliteOptions::default())
        .await
        .unwrap();
    start_with(store, test_limits()).await
}

#[tokio::test]
async fn a_rewritten_stored_envelope_no_longer_matches_the_client_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("node.db");
    let node = sqlite_node(&db).await;
    let talks = node.open_reference_talks().await;
    // The record room's MLS set-up comes first in the log; the envelopes
    // this test sends are `base..base + 4`.
    let mut mls = mls_rooms(&node, talks, &[fixtures::talks().record]).await;
    let base = node.node.store().log_size(talks).await.unwrap();
    submit_n(&node, &mut mls, 1, 4).await;
    let iran = node.client(IRAN_HEAD_DEVICE);
    let held = checkpoint_at_least(&iran, talks, base + 4)
        .await
        .checkpoint()
        .clone();
    node.server.abort();
    drop(node);

    // Rewrite seq base + 1's body and body hash consistently, as an attacker with
    // the database would (header left, so the row still decodes).
    {
        use sqlx::Connection as _;
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let body = vec![0x41u8; 1024];
        sqlx::query("UPDATE envelopes SET body = ?, body_hash = ? WHERE seq = ?")
            .bind(&body)
            .bind(sha256(&body).0.to_vec())
            .bind(i64::try_from(base + 1).unwrap())
            .execute(&mut c)
            .await
            .unwrap();
    }
    let node = sqlite_node(&db).await;
    let iran = node.client(IRAN_HEAD_DEVICE);
    // The data tile is read from the store after the restart: served as
    // stored, so the rewritten leaf no longer hashes to the tree's (the
    // client's evidence), and the others still do.
    let tile = iran
        .get(&path(talks, &format!("/tile/8/data/000.p/{}", held.size)))
        .await;
    assert_eq!(tile.status, 200, "{tile:?}");
    let hashes = iran
        .get(&path(talks, &format!("/tile/8/0/000.p/{}", held.size)))
        .await;
    assert_eq!(hashes.status, 200, "{hashes:?}");
    for (i, entry) in tile
        .bytes
        .chunks(backchannel_tlog::LEAF_DATA_LEN)
        .enumerate()
    {
        let leaf = LeafData::from_canonical_bytes(entry).unwrap();
        let matches = leaf.hash().0 == hashes.bytes[i * 32..(i + 1) * 32];
        assert_eq!(matches, i as u64 != base + 1, "leaf {i}");
    }
    let page = iran
        .get(&path(talks, &format!("/envelopes?from={base}")))
        .await;
    let served = &page.json["envelopes"][1];
    assert_eq!(served["seq"], base + 1);
    let a = iran
        .get(&path(
            talks,
            &format!("/proof/inclusion?index={}&size={}", base + 1, held.size),
        ))
        .await;
    let proof = InclusionProof::from_canonical_bytes(&unb64(&a.json["proof"])).unwrap();
    assert!(
        proof
            .verify(base + 1, held.size, &held.root, &leaf_of(served))
            .is_err(),
        "a rewritten envelope must not verify against the client's checkpoint"
    );
    // The untouched ones still do.
    let a = iran
        .get(&path(
            talks,
            &format!("/proof/inclusion?index={}&size={}", base + 2, held.size),
        ))
        .await;
    let proof = InclusionProof::from_canonical_bytes(&unb64(&a.json["proof"])).unwrap();
    assert_eq!(page.json["envelopes"][2]["seq"], base + 2);
    proof
        .verify(
            base + 2,
            held.size,
            &held.root,
            &leaf_of(&page.json["envelopes"][2]),
        )
        .unwrap();
}

#[tokio::test]
async fn a_deleted_stored_envelope_is_detectable_as_withheld() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("node.db");
    let node = sqlite_node(&db).await;
    let talks = node.open_reference_talks().await;
    // The record room's MLS set-up comes first in the log; the envelopes
    // this test sends are `base..base + 4`.
    let mut mls = mls_rooms(&node, talks, &[fixtures::talks().record]).await;
    let base = node.node.store().log_size(talks).await.unwrap();
    submit_n(&node, &mut mls, 1, 4).await;
    let iran = node.client(IRAN_HEAD_DEVICE);
    let held = checkpoint_at_least(&iran, talks, base + 4)
        .await
        .checkpoint()
        .clone();
    node.server.abort();
    drop(node);
    {
        use sqlx::Connection as _;
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query("DELETE FROM envelopes WHERE seq = ?")
            .bind(i64::try_from(base + 2).unwrap())
            .execute(&mut c)
            .await
            .unwrap();
    }
    let node = sqlite_node(&db).await;
    let iran = node.client(IRAN_HEAD_DEVICE);
    let seqs = |q: String| {
        let iran = iran.clone();
        async move {
            let a = iran.get(&path(talks, &q)).await;
            let seqs: Vec<u64> = a.json["envelopes"]
                .as_array()
                .map(|v| v.iter().map(|d| d["seq"].as_u64().unwrap()).collect())
                .unwrap_or_default();
            (a.status, seqs)
        }
    };
    // Around the hole the log reads as before; across it the node refuses
    // (it finds its own log corrupt and says so in its log, never serving a
    // page with a gap as if it were whole).
    assert_eq!(
        seqs(format!("/envelopes?from={base}&limit=2")).await,
        (200, vec![base, base + 1])
    );
    assert_eq!(
        seqs(format!("/envelopes?from={}", base + 3)).await,
        (200, vec![base + 3])
    );
    let across = iran
        .get(&path(talks, &format!("/envelopes?from={}", base + 2)))
        .await;
    assert_eq!((across.status, across.code().as_str()), (500, "internal"));
    // Every leaf is in the record room, which Iran reads, and the held
    // checkpoint (and the served tree) commit to every leaf: seq base + 2
    // was withheld, and the client can say so.
    let tile = iran
        .get(&path(talks, &format!("/tile/8/0/000.p/{}", held.size)))
        .await;
    assert_eq!(tile.status, 200, "the tree still commits to seq 2");
}

/// A full data tile, once integrated, is served the same every time (the
/// second time from the node's cache of full tiles, whose keeping and
/// eviction `logs::tests` checks: from outside the two are
/// indistinguishable); its entries re-hash to the level-0 hash tile, and
/// a partial tile of the same index is its prefix. Nothing is served
/// before there is anything to integrate.
#[tokio::test]
async fn a_full_data_tile_is_the_same_from_the_cache() {
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let t = fixtures::talks();
    let us = node.client(US_HEAD_DEVICE);
    let iran = node.client(IRAN_HEAD_DEVICE);
    assert_eq!(
        iran.get(&path(talks, "/tile/8/data/000")).await.status,
        404,
        "not yet integrated"
    );
    for i in 0..256u16 {
        let mut idem = [0u8; 16];
        idem[..2].copy_from_slice(&i.to_be_bytes());
        let e = envelope_with(&key(US_HEAD_DEVICE), t.record, b"seen", idem, |h| {
            h.kind = backchannel_statement::Kind::Ack(0)
        });
        let a = us.post_raw(&path(talks, "/envelopes"), e).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    checkpoint_at_least(&iran, talks, 256).await;
    let first = iran.get(&path(talks, "/tile/8/data/000")).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.bytes.len(), 256 * backchannel_tlog::LEAF_DATA_LEN);
    let again = iran.get(&path(talks, "/tile/8/data/000")).await;
    assert_eq!(again, first, "the same the second time");
    let hashes = iran.get(&path(talks, "/tile/8/0/000")).await;
    assert_eq!(hashes.status, 200);
    for (i, entry) in again
        .bytes
        .chunks(backchannel_tlog::LEAF_DATA_LEN)
        .enumerate()
    {
        let leaf = LeafData::from_canonical_bytes(entry).unwrap();
        assert_eq!(leaf.seq, i as u64);
        assert_eq!(&leaf.hash().0, &hashes.bytes[i * 32..(i + 1) * 32]);
    }
    // A partial tile of the same index is never taken from the cache.
    let partial = iran.get(&path(talks, "/tile/8/data/000.p/7")).await;
    assert_eq!(partial.status, 200);
    assert_eq!(
        &partial.bytes[..],
        &first.bytes[..7 * backchannel_tlog::LEAF_DATA_LEN]
    );
}
