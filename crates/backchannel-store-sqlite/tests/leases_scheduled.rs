//! Schema version 4 on a real file: a version 3 database migrates in place
//! and keeps its checkpoints (integrated unfenced); leases, scheduled items
//! with every kind of gate and the fence's epoch of a checkpoint survive a
//! reopen; a scheduled row whose gate columns disagree is `Corrupt`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use backchannel_codec::RoomId;
use backchannel_crypto::{Digest, KeyId};
use backchannel_store::{
    Fence, Gate, Lease, LeaseName, Outcome, RoomStateUpdate, ScheduledRecord, Store, StoreError,
    Submission,
};
use backchannel_store_sqlite::SCHEMA_VERSION;
use common::{create, fresh, log_key, open, raw, submission, talks_id};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

const HOLDER: [u8; 16] = [0xe7; 16];

fn item(n: u8, due_ms: u64, submission: Submission) -> ScheduledRecord {
    ScheduledRecord {
        id: [n; 16],
        due_ms,
        submission,
    }
}

/// A database as a build of schema version 3 created it.
async fn version_3_database(path: &Path) {
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
    for (v, name, sql) in [
        (1, "initial", include_str!("../migrations/0001_initial.sql")),
        (
            2,
            "enrolment_blobs",
            include_str!("../migrations/0002_enrolment_blobs.sql"),
        ),
        (3, "mls", include_str!("../migrations/0003_mls.sql")),
    ] {
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        sqlx::query("INSERT INTO schema_migrations (version, name) VALUES (?, ?)")
            .bind(v)
            .bind(name)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
}

#[tokio::test]
async fn a_version_3_database_migrates_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sqlite");
    version_3_database(&path).await;
    let pool = raw(&path).await;
    let talks = talks_id(1);
    for sql in [
        "INSERT INTO talks (talks, creator, created_at) VALUES (?1, zeroblob(32), 5)",
        "INSERT INTO log_heads (talks, next_seq, last_time, integrated_size) VALUES (?1, 0, 0, 0)",
        "INSERT INTO access_lists (talks, version, hash, bytes) VALUES (?1, 0, zeroblob(32), x'00')",
        "INSERT INTO checkpoints (talks, size, note) VALUES (?1, 0, x'0102')",
    ] {
        sqlx::query(sql)
            .bind(talks.as_bytes().as_slice())
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;

    let store = open(&path).await;
    assert_eq!(SCHEMA_VERSION, 4);
    assert_eq!(store.schema_version().await.unwrap(), 4);
    assert_eq!(store.checkpoint(talks).await.unwrap().unwrap().note, [1, 2]);
    store.close().await;
    let pool = raw(&path).await;
    let epoch: Option<i64> = sqlx::query("SELECT lease_epoch FROM checkpoints")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(epoch, None, "an old checkpoint was written unfenced");
    pool.close().await;

    // The old talks takes scheduled items and fires them.
    let store = open(&path).await;
    store
        .schedule(&item(1, 10, submission(1, 1, 1, 1)))
        .await
        .unwrap();
    let fired = store.fire_due(10, 16, &log_key()).await.unwrap();
    assert!(matches!(&fired[..], [f] if matches!(f.outcome, Outcome::Sequenced(_))));
}

#[tokio::test]
async fn leases_scheduled_items_and_fence_epochs_survive_a_reopen() {
    let (_dir, path, store) = fresh().await;
    create(&store, 1).await;
    let lease = store
        .acquire_lease(LeaseName::Integrator, HOLDER, 1000, 60_000)
        .await
        .unwrap();
    assert_eq!(lease.epoch, 1);
    let room = RoomId([0xe1; 16]);
    let update = RoomStateUpdate {
        public_group: vec![1; 300],
        group_info: vec![2; 100],
    };
    let gates = [
        None,
        Some(Gate::Create {
            state: update.clone(),
        }),
        Some(Gate::Commit {
            epoch: 7,
            state: update,
        }),
        Some(Gate::Epoch { epoch: 9 }),
        Some(Gate::Welcome {
            commit_epoch: 3,
            commit: Digest([4; 32]),
            to: vec![KeyId(Digest([5; 32])), KeyId(Digest([6; 32]))],
        }),
        Some(Gate::Welcome {
            commit_epoch: 0,
            commit: Digest([4; 32]),
            to: vec![],
        }),
    ];
    let items: Vec<ScheduledRecord> = gates
        .into_iter()
        .enumerate()
        .map(|(i, gate)| {
            let n = i as u8;
            item(
                n + 1,
                5_000 + u64::from(n),
                Submission {
                    room,
                    gate,
                    ..submission(1, 1, n, n)
                },
            )
        })
        .collect();
    for i in &items {
        store.schedule(i).await.unwrap();
    }
    store.close().await;
    drop(store);

    let store = open(&path).await;
    assert_eq!(store.scheduled_count().await.unwrap(), items.len() as u64);
    assert_eq!(
        store
            .acquire_lease(LeaseName::Integrator, [1; 16], 2000, 10)
            .await
            .unwrap(),
        Lease {
            epoch: 1,
            holder: HOLDER,
            expires_ms: 61_000
        },
        "the lease survived the reopen"
    );
    // An empty first checkpoint, fenced: its epoch is stored with it.
    let c0 = backchannel_store::CheckpointRecord {
        size: 0,
        note: b"checkpoint".to_vec(),
    };
    let fence = Fence {
        name: LeaseName::Integrator,
        epoch: 1,
    };
    store
        .integrate(talks_id(1), 0, 0, &[], &c0, Some(fence))
        .await
        .unwrap();
    store.close().await;
    drop(store);
    let pool = raw(&path).await;
    let epoch: Option<i64> = sqlx::query("SELECT lease_epoch FROM checkpoints")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        epoch,
        Some(1),
        "the fence's epoch is stored with the checkpoint"
    );
    pool.close().await;

    // Each gate comes back as scheduled: fired one at a time, the refusals
    // name what each gate checked (proof that the gate was read back).
    let store = open(&path).await;
    let mut outcomes = Vec::new();
    for i in &items {
        let fired = store.fire_due(i.due_ms, 1, &log_key()).await.unwrap();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].id, i.id);
        outcomes.push(fired[0].outcome.clone());
    }
    assert!(matches!(outcomes[0], Outcome::Sequenced(_)), "no gate");
    assert!(matches!(outcomes[1], Outcome::Sequenced(_)), "the create");
    assert_eq!(
        outcomes[2],
        Outcome::StaleEpoch { epoch: 0 },
        "commit from 7"
    );
    assert_eq!(
        outcomes[3],
        Outcome::StaleEpoch { epoch: 0 },
        "message at 9"
    );
    assert_eq!(outcomes[4], Outcome::WelcomeOrphaned);
    assert_eq!(outcomes[5], Outcome::WelcomeOrphaned);
    let state = store.room_state(talks_id(1), room).await.unwrap().unwrap();
    assert_eq!(state.public_group, vec![1; 300]);
    assert_eq!(state.group_info, vec![2; 100]);
    assert_eq!(store.scheduled_count().await.unwrap(), 0);
}

#[tokio::test]
async fn a_scheduled_row_with_disagreeing_gate_columns_is_corrupt() {
    let (_dir, path, store) = fresh().await;
    create(&store, 1).await;
    store
        .schedule(&item(
            1,
            10,
            Submission {
                gate: Some(Gate::Epoch { epoch: 2 }),
                ..submission(1, 1, 1, 1)
            },
        ))
        .await
        .unwrap();
    store.close().await;
    drop(store);
    let pool = raw(&path).await;
    // The schema refuses such a row…
    let refused = sqlx::query("UPDATE scheduled SET gate_epoch = NULL")
        .execute(&pool)
        .await;
    assert!(
        refused.is_err(),
        "the gate CHECK refuses disagreeing columns"
    );
    // …so only a damaged file (here: the check switched off) holds one.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE scheduled SET gate_epoch = NULL")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    pool.close().await;
    let store = open(&path).await;
    let err = store.fire_due(10, 16, &log_key()).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert_eq!(store.scheduled_count().await.unwrap(), 1, "nothing fired");
    assert_eq!(store.log_size(talks_id(1)).await.unwrap(), 0);
}
