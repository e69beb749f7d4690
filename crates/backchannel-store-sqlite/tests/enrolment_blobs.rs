//! Schema version 2 on a real file: a version 1 database migrates in place
//! and keeps its data, invitations, pending changes and blobs survive a
//! reopen, malformed rows of the new tables are `Corrupt`, and the
//! integrator's work list is read through its partial index.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use backchannel_codec::{PartyId, RoomId};
use backchannel_crypto::{Digest, KeyId, sha256};
use backchannel_store::{
    BLOB_CHUNK, BlobRecord, InvitationRecord, PendingChange, Redemption, Store, StoreError,
};
use backchannel_store_sqlite::SCHEMA_VERSION;
use common::{create, fresh, log_key, open, raw, submission, talks_id};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

fn invitation(n: u8) -> InvitationRecord {
    InvitationRecord {
        token_hash: sha256(&[n; 32]),
        party: PartyId([0xb0 + n; 16]),
        expires_at: 10_000 + u64::from(n),
        invitation: vec![n; 90],
        created_at: 1_000,
        redeemed: None,
    }
}

fn blob(n: u8, size: u64) -> BlobRecord {
    BlobRecord {
        hash: sha256(&[0xbb, n]),
        size,
        party: PartyId([0xb1; 16]),
        uploader: KeyId(Digest([0xa1; 32])),
        created_at: 2_000,
        complete: false,
        rooms: vec![RoomId([0xd0 + n; 16])],
    }
}

fn access_list(tag: u8, version: u64) -> backchannel_store::AccessListRecord {
    let bytes = vec![tag; 40];
    backchannel_store::AccessListRecord {
        hash: sha256(&bytes),
        bytes,
        version,
    }
}

/// A database as a build of schema version 1 created it: the first
/// migration only, recorded as version 1.
async fn version_1_database(path: &Path) {
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE schema_migrations (
            version INTEGER NOT NULL PRIMARY KEY,
            name    TEXT    NOT NULL
        ) STRICT",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::raw_sql(include_str!("../migrations/0001_initial.sql"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO schema_migrations (version, name) VALUES (1, 'initial')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test]
async fn a_version_1_database_migrates_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sqlite");
    version_1_database(&path).await;
    // A talks the version 1 build wrote.
    let pool = raw(&path).await;
    let talks = talks_id(1);
    let al = access_list(1, 0);
    for sql in [
        "INSERT INTO talks (talks, creator, created_at) VALUES (?1, zeroblob(32), 5)",
        "INSERT INTO log_heads (talks, next_seq, last_time, integrated_size) VALUES (?1, 0, 0, 0)",
    ] {
        sqlx::query(sql)
            .bind(talks.as_bytes().as_slice())
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO access_lists (talks, version, hash, bytes) VALUES (?, 0, ?, ?)")
        .bind(talks.as_bytes().as_slice())
        .bind(al.hash.0.as_slice())
        .bind(al.bytes.as_slice())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = open(&path).await;
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    assert_eq!(store.access_list(talks).await.unwrap(), Some(al.clone()));
    assert_eq!(store.talks(talks).await.unwrap().unwrap().created_at, 5);
    // The old talks takes the new rows.
    store
        .create_invitation(talks, &invitation(1))
        .await
        .unwrap();
    store
        .put_pending_change(
            talks,
            al.hash,
            None,
            &PendingChange {
                delta_hash: sha256(b"delta"),
                change: vec![1; 10],
            },
        )
        .await
        .unwrap();
    store.create_blob(talks, &blob(1, 3), 3).await.unwrap();
    store
        .sequence(vec![submission(1, 1, 1, 1)], 10, &log_key())
        .await
        .unwrap();
    assert_eq!(store.unintegrated_talks(10).await.unwrap(), [talks]);
}

#[tokio::test]
async fn enrolment_and_blobs_survive_a_reopen() {
    let (_dir, path, store) = fresh().await;
    let talks = talks_id(1);
    create(&store, 1).await;
    create(&store, 2).await;
    let base = store.access_list(talks).await.unwrap().unwrap().hash;
    let (redeemed, open_one) = (invitation(1), invitation(2));
    for inv in [&redeemed, &open_one] {
        store.create_invitation(talks, inv).await.unwrap();
    }
    let redemption = Redemption {
        key: KeyId(Digest([0xe1; 32])),
        at: 3_000,
        payload: b"enrolment".to_vec(),
    };
    let next = access_list(9, 1);
    store
        .redeem_invitation(talks, redeemed.token_hash, &redemption, base, &next)
        .await
        .unwrap();
    let change = PendingChange {
        delta_hash: sha256(b"delta"),
        change: vec![7; 100],
    };
    store
        .put_pending_change(talks, next.hash, None, &change)
        .await
        .unwrap();
    let size = BLOB_CHUNK + 2;
    let done = blob(1, size);
    let partial = blob(2, size);
    for b in [&done, &partial] {
        store.create_blob(talks, b, u64::MAX).await.unwrap();
    }
    let mut from_room = blob(1, size);
    from_room.rooms = vec![RoomId([0x01; 16])];
    store.create_blob(talks, &from_room, 0).await.unwrap();
    let chunk0 = vec![0x5a; BLOB_CHUNK as usize];
    for (b, i, bytes) in [
        (&done, 0, chunk0.clone()),
        (&done, 1, vec![1, 2]),
        (&partial, 1, vec![3, 4]),
    ] {
        store
            .put_blob_chunk(talks, b.hash, i, &bytes)
            .await
            .unwrap();
    }
    store.complete_blob(talks, done.hash).await.unwrap();
    store
        .sequence(vec![submission(2, 1, 1, 1)], 10, &log_key())
        .await
        .unwrap();

    let invitations = store.invitations(talks).await.unwrap();
    let blobs = (
        store.blob(talks, done.hash).await.unwrap(),
        store.blob(talks, partial.hash).await.unwrap(),
    );
    store.close().await;
    drop(store);

    let store = open(&path).await;
    assert_eq!(store.invitations(talks).await.unwrap(), invitations);
    assert_eq!(
        store
            .invitation(talks, redeemed.token_hash)
            .await
            .unwrap()
            .unwrap()
            .redeemed,
        Some(redemption)
    );
    assert_eq!(store.access_list(talks).await.unwrap(), Some(next));
    assert_eq!(store.pending_changes(talks).await.unwrap(), [change]);
    let again = (
        store.blob(talks, done.hash).await.unwrap(),
        store.blob(talks, partial.hash).await.unwrap(),
    );
    assert_eq!(again, blobs);
    let done_record = again.0.unwrap();
    assert!(done_record.complete);
    assert_eq!(done_record.rooms, [RoomId([0x01; 16]), RoomId([0xd1; 16])]);
    assert_eq!(
        store.blob_chunk(talks, done.hash, 0).await.unwrap(),
        Some(chunk0)
    );
    assert_eq!(
        store
            .blob_chunks_present(talks, partial.hash)
            .await
            .unwrap(),
        [1]
    );
    assert_eq!(store.unintegrated_talks(10).await.unwrap(), [talks_id(2)]);
}

/// Values the schema's CHECKs (or the store's own writes) would never
/// leave, written behind the store's back: reads report `Corrupt` instead
/// of panicking or serving them.
#[tokio::test]
async fn malformed_enrolment_and_blob_rows_are_corrupt() {
    let (_dir, path, store) = fresh().await;
    let talks = talks_id(1);
    create(&store, 1).await;
    let inv = invitation(1);
    store.create_invitation(talks, &inv).await.unwrap();
    let b = blob(1, 5);
    store.create_blob(talks, &b, 5).await.unwrap();
    store
        .put_pending_change(
            talks,
            store.access_list(talks).await.unwrap().unwrap().hash,
            None,
            &PendingChange {
                delta_hash: sha256(b"delta"),
                change: vec![1; 10],
            },
        )
        .await
        .unwrap();
    store.close().await;
    drop(store);

    #[derive(Clone, Copy)]
    enum Read {
        Invitation,
        Invitations,
        Pending,
        Blob,
        Chunk,
    }
    let cases: &[(&str, Read, &str)] = &[
        (
            "UPDATE invitations SET redeemed_key = zeroblob(32)",
            Read::Invitation,
            "partly",
        ),
        (
            "UPDATE invitations SET redeemed_at = 5, payload = x''",
            Read::Invitations,
            "partly",
        ),
        (
            "UPDATE invitations SET party = x'01'",
            Read::Invitation,
            "party",
        ),
        (
            "UPDATE invitations SET expires_at = -1",
            Read::Invitations,
            "expires_at",
        ),
        (
            "UPDATE pending_changes SET delta_hash = x'00'",
            Read::Pending,
            "delta_hash",
        ),
        ("UPDATE blobs SET complete = 2", Read::Blob, "complete"),
        ("UPDATE blobs SET size = -5", Read::Blob, "size"),
        ("DELETE FROM blob_rooms", Read::Blob, "no room"),
        ("UPDATE blob_rooms SET room = x'02'", Read::Blob, "room"),
        ("UPDATE blobs SET complete = 7", Read::Chunk, "complete"),
    ];
    for (i, (sql, read, says)) in cases.iter().enumerate() {
        let copy = path.with_file_name(format!("case{i}.sqlite"));
        {
            let pool = raw(&path).await;
            sqlx::query("VACUUM INTO ?")
                .bind(copy.to_string_lossy().into_owned())
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let mut conn = raw(&copy).await.acquire().await.unwrap().detach();
        for pragma in [
            "PRAGMA ignore_check_constraints = ON",
            "PRAGMA foreign_keys = OFF",
        ] {
            sqlx::query(pragma).execute(&mut conn).await.unwrap();
        }
        sqlx::raw_sql(*sql).execute(&mut conn).await.unwrap();
        drop(conn);

        let store = open(&copy).await;
        let r: Result<(), StoreError> = match read {
            Read::Invitation => store.invitation(talks, inv.token_hash).await.map(drop),
            Read::Invitations => store.invitations(talks).await.map(drop),
            Read::Pending => store.pending_changes(talks).await.map(drop),
            Read::Blob => store.blob(talks, b.hash).await.map(drop),
            // A write reads the blob's state first.
            Read::Chunk => store.put_blob_chunk(talks, b.hash, 0, &[0; 5]).await,
        };
        match r {
            Err(StoreError::Corrupt(m)) => assert!(m.contains(says), "{sql}: {m}"),
            other => panic!("{sql}: {other:?}"),
        }
        store.close().await;
    }
}

/// The integrator polls `unintegrated_talks` often, over every talks: the
/// query reads the partial index of talks with work, not the whole table.
#[tokio::test]
async fn unintegrated_talks_reads_its_partial_index() {
    let (_dir, path, store) = fresh().await;
    create(&store, 1).await;
    store.close().await;
    let pool = raw(&path).await;
    let rows = sqlx::query(
        "EXPLAIN QUERY PLAN SELECT talks FROM log_heads WHERE integrated_size < next_seq
         ORDER BY talks LIMIT 10",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let plan: Vec<String> = rows
        .iter()
        .map(|r| sqlx::Row::get::<String, _>(r, "detail"))
        .collect();
    pool.close().await;
    assert!(
        plan.iter().any(|d| d.contains("log_heads_unintegrated")),
        "{plan:?}"
    );
}
