//! What only a real file can show: the pragmas durability stands on, state
//! surviving a reopen, schema versions, and what tampering looks like.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use backchannel_codec::Decode;
use backchannel_crypto::{Digest, sha256};
use backchannel_store::{CheckpointRecord, Outcome, Placement, Store, StoreError};
use backchannel_store_sqlite::{OpenError, SCHEMA_VERSION, SqliteOptions, SqliteStore};
use backchannel_tlog::{HashReader, LeafData, MemoryHashStore, Receipt};
use common::{create, fresh, log_key, open, raw, submission, talks_id};

fn placed(o: &Outcome) -> &Placement {
    match o {
        Outcome::Sequenced(p) => p,
        other => panic!("not sequenced: {other:?}"),
    }
}

#[tokio::test]
async fn write_connection_runs_wal_with_synchronous_full() {
    let (_dir, _path, store) = fresh().await;
    let p = store.write_pragmas().await.unwrap();
    assert_eq!(p.journal_mode, "wal");
    assert_eq!(p.synchronous, "FULL");
    assert!(p.foreign_keys);
    assert_eq!(p.busy_timeout_ms, 5_000);
    // Still so after writes (the one write connection is the one checked).
    create(&store, 1).await;
    store
        .sequence(vec![submission(1, 1, 1, 1)], 10, &log_key())
        .await
        .unwrap();
    let p = store.write_pragmas().await.unwrap();
    assert_eq!(
        (p.journal_mode.as_str(), p.synchronous.as_str()),
        ("wal", "FULL")
    );
}

#[tokio::test]
async fn everything_survives_a_reopen_and_seqs_continue() {
    let (_dir, path, store) = fresh().await;
    let key = log_key();
    create(&store, 1).await;
    let first = store
        .sequence(
            (0..3).map(|i| submission(1, 1, i, i)).collect(),
            1_000,
            &key,
        )
        .await
        .unwrap();
    assert!(store.purge_body(talks_id(1), 1).await.unwrap());

    // Integrate the three leaves with their real tree hashes.
    let mut tree = MemoryHashStore::new();
    for o in &first {
        tree.append(&placed(o).leaf_hash).unwrap();
    }
    let count = 2 * 3 - 2; // stored_hash_count(3)
    let indexes: Vec<u64> = (0..count).collect();
    let hashes: Vec<(u64, Digest)> = indexes
        .iter()
        .zip(tree.read_hashes(&indexes).unwrap())
        .map(|(&i, h)| (i, Digest(h.0)))
        .collect();
    let checkpoint = CheckpointRecord {
        size: 3,
        note: b"checkpoint at 3\n".to_vec(),
    };
    store
        .integrate(talks_id(1), 0, 3, &hashes, &checkpoint, None)
        .await
        .unwrap();
    let before = store.read(talks_id(1), 0, 100).await.unwrap();
    store.close().await;
    drop(store);

    let store = open(&path).await;
    assert_eq!(store.log_size(talks_id(1)).await.unwrap(), 3);
    assert_eq!(store.read(talks_id(1), 0, 100).await.unwrap(), before);
    assert_eq!(before[1].body, None);
    assert!(before[0].body.is_some());
    assert_eq!(store.integrated_size(talks_id(1)).await.unwrap(), 3);
    assert_eq!(
        store.checkpoint(talks_id(1)).await.unwrap(),
        Some(checkpoint)
    );
    assert_eq!(
        store.tree_hashes(talks_id(1), &indexes).await.unwrap(),
        hashes.iter().map(|&(_, h)| h).collect::<Vec<_>>()
    );
    assert!(store.talks(talks_id(1)).await.unwrap().is_some());
    assert_eq!(
        store
            .access_list(talks_id(1))
            .await
            .unwrap()
            .unwrap()
            .version,
        0
    );

    // Retries after the restart find their originals; new envelopes
    // continue at seq 3 with no gap, and time does not go back.
    let again = store
        .sequence(
            vec![submission(1, 1, 2, 2), submission(1, 1, 9, 9)],
            500,
            &key,
        )
        .await
        .unwrap();
    assert_eq!(again[0], first[2]);
    let new = placed(&again[1]);
    assert_eq!((new.seq, new.node_time), (3, 1_000));
    let conflict = store
        .sequence(vec![submission(1, 1, 0, 77)], 2_000, &key)
        .await
        .unwrap();
    assert_eq!(conflict, vec![Outcome::Conflict { seq: 0 }]);
    assert_eq!(store.log_size(talks_id(1)).await.unwrap(), 4);

    // Every receipt still verifies under the log key.
    for e in store.read(talks_id(1), 0, 100).await.unwrap() {
        Receipt::from_canonical_bytes(&e.receipt)
            .unwrap()
            .verify(
                &backchannel_crypto::Signer::public_key(&key),
                e.talks,
                e.seq,
                e.node_time,
                &e.leaf_hash,
            )
            .unwrap();
    }
}

#[tokio::test]
async fn schema_version_is_recorded_and_a_newer_one_refused() {
    let (_dir, path, store) = fresh().await;
    assert_eq!(SCHEMA_VERSION, 4);
    assert_eq!(store.schema_version().await.unwrap(), 4);
    store.close().await;
    drop(store);

    // Reopening at the same version migrates nothing and keeps version 4.
    let store = open(&path).await;
    assert_eq!(store.schema_version().await.unwrap(), 4);
    store.close().await;
    drop(store);

    // A newer build migrated this file: this build must not touch it.
    let pool = raw(&path).await;
    sqlx::query("INSERT INTO schema_migrations (version, name) VALUES (5, 'from the future')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let err = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, OpenError::NewerSchema { found: 5, known: 4 }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("schema version 5") && msg.contains("newer"),
        "{msg}"
    );
}

/// The store does not hide tampering, and does not try to detect it in
/// content: it serves exactly the bytes the file holds. A header rewritten
/// behind its back comes back rewritten, next to the untouched leaf hash and
/// receipt, and it is the client that notices, because the header no longer
/// hashes to the leaf the node signed.
#[tokio::test]
async fn a_tampered_header_is_served_as_stored() {
    let (_dir, path, store) = fresh().await;
    let key = log_key();
    create(&store, 1).await;
    let sub = submission(1, 1, 1, 1);
    store.sequence(vec![sub.clone()], 10, &key).await.unwrap();
    let original = store.read(talks_id(1), 0, 1).await.unwrap().remove(0);
    store.close().await;
    drop(store);

    let pool = raw(&path).await;
    let mut header = original.header.clone();
    header[100] ^= 0x01;
    sqlx::query("UPDATE envelopes SET header = ? WHERE seq = 0")
        .bind(header.as_slice())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = open(&path).await;
    let read = store.read(talks_id(1), 0, 1).await.unwrap().remove(0);
    assert_eq!(read.header, header);
    assert_eq!(read.leaf_hash, original.leaf_hash);
    assert_eq!(read.receipt, original.receipt);
    // What a client does: the leaf of the header it got is not the leaf the
    // receipt vouches for.
    let leaf = LeafData {
        seq: read.seq,
        timestamp_ms: read.node_time,
        room: read.room,
        header_hash: sha256(&read.header),
        body_hash: read.body_hash,
    };
    let receipt = Receipt::from_canonical_bytes(&read.receipt).unwrap();
    let pk = backchannel_crypto::Signer::public_key(&key);
    assert!(
        receipt
            .verify(&pk, read.talks, read.seq, read.node_time, &leaf.hash())
            .is_err()
    );
}

/// Values the schema's CHECKs would refuse, written with the checks off:
/// reads report `Corrupt` instead of panicking or serving them.
#[tokio::test]
async fn malformed_rows_are_corrupt_not_panics() {
    let (_dir, path, store) = fresh().await;
    create(&store, 1).await;
    store
        .sequence(
            (0..3).map(|i| submission(1, 1, i, i)).collect(),
            10,
            &log_key(),
        )
        .await
        .unwrap();
    store.close().await;
    drop(store);

    let cases: &[(&'static str, &str)] = &[
        (
            "UPDATE envelopes SET leaf_hash = x'00' WHERE seq = 1",
            "leaf_hash",
        ),
        ("UPDATE envelopes SET room = x'0102' WHERE seq = 1", "room"),
        (
            "UPDATE envelopes SET node_time = -1 WHERE seq = 1",
            "node_time",
        ),
        ("DELETE FROM envelopes WHERE seq = 1", "disagree"),
        ("UPDATE log_heads SET next_seq = 5", "disagree"),
        (
            "DELETE FROM envelopes WHERE seq = 1; UPDATE log_heads SET next_seq = 2",
            "missing",
        ),
    ];
    for (i, (sql, says)) in cases.iter().enumerate() {
        let copy = path.with_file_name(format!("case{i}.sqlite"));
        {
            // A consistent copy of the database (WAL included).
            let pool = raw(&path).await;
            sqlx::query("VACUUM INTO ?")
                .bind(copy.to_string_lossy().into_owned())
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let mut conn = raw(&copy).await.acquire().await.unwrap().detach();
        sqlx::query("PRAGMA ignore_check_constraints = ON")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::raw_sql(*sql).execute(&mut conn).await.unwrap();
        drop(conn);

        let store = open(&copy).await;
        match store.read(talks_id(1), 0, 10).await {
            Err(StoreError::Corrupt(m)) => assert!(m.contains(says), "{sql}: {m}"),
            other => panic!("{sql}: {other:?}"),
        }
        store.close().await;
    }
}

/// A tree hash missing below the integrated size is a hole in stored data:
/// `Corrupt`. An index beyond the integrated tree stays a caller's error
/// (`Limit`) even then: a peer's proof request never reads as corruption.
#[tokio::test]
async fn a_missing_tree_hash_is_corrupt_one_beyond_the_tree_is_limit() {
    let (_dir, path, store) = fresh().await;
    create(&store, 1).await;
    let out = store
        .sequence(
            (0..3).map(|i| submission(1, 1, i, i)).collect(),
            10,
            &log_key(),
        )
        .await
        .unwrap();
    let mut tree = MemoryHashStore::new();
    for o in &out {
        tree.append(&placed(o).leaf_hash).unwrap();
    }
    let count = 2 * 3 - 2; // stored_hash_count(3)
    let indexes: Vec<u64> = (0..count).collect();
    let hashes: Vec<(u64, Digest)> = indexes
        .iter()
        .zip(tree.read_hashes(&indexes).unwrap())
        .map(|(&i, h)| (i, Digest(h.0)))
        .collect();
    let checkpoint = CheckpointRecord {
        size: 3,
        note: b"checkpoint at 3\n".to_vec(),
    };
    store
        .integrate(talks_id(1), 0, 3, &hashes, &checkpoint, None)
        .await
        .unwrap();
    store.close().await;
    drop(store);

    let pool = raw(&path).await;
    sqlx::query("DELETE FROM tree_hashes WHERE idx = 1")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = open(&path).await;
    assert_eq!(
        store.tree_hashes(talks_id(1), &[0, 2]).await.unwrap(),
        [hashes[0].1, hashes[2].1]
    );
    match store.tree_hashes(talks_id(1), &[0, 1]).await {
        Err(StoreError::Corrupt(m)) => assert!(m.contains("missing"), "{m}"),
        other => panic!("a hole below the integrated size: {other:?}"),
    }
    for idx in [count, count + 1, u64::MAX] {
        let r = store.tree_hashes(talks_id(1), &[idx]).await;
        assert!(matches!(r, Err(StoreError::Limit(_))), "{idx}: {r:?}");
    }
}
