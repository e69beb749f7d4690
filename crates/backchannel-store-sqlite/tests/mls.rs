//! Schema version 3 on a real file: a version 2 database migrates in place
//! and keeps its envelopes; room state, recorded commits, Welcome audiences,
//! key packages and claim counters survive a reopen; a gated batch whose
//! signing fails writes no room state; malformed rows of the new tables are
//! `Corrupt`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use backchannel_codec::RoomId;
use backchannel_crypto::{Digest, KeyId, Signer};
use backchannel_store::{
    Gate, KeyPackageRecord, Outcome, Placement, RoomState, RoomStateUpdate, Store, StoreError,
    Submission,
};
use backchannel_store_sqlite::SCHEMA_VERSION;
use common::{BrokenSigner, create, fresh, log_key, open, raw, submission, talks_id};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

const ROOM: RoomId = RoomId([0xe1; 16]);
const NOW: u64 = 1_700_000_000;

fn device(n: u8) -> KeyId {
    KeyId(Digest([n; 32]))
}

fn update(tag: u8) -> RoomStateUpdate {
    RoomStateUpdate {
        public_group: vec![tag; 300],
        group_info: vec![tag ^ 0xff; 120],
    }
}

/// Submission `key` of `sender` to talks 1's MLS room, gated by `gate`.
fn gated(sender: u8, key: u8, gate: Gate) -> Submission {
    Submission {
        room: ROOM,
        gate: Some(gate),
        ..submission(1, sender, key, key)
    }
}

fn placed(o: &Outcome) -> &Placement {
    match o {
        Outcome::Sequenced(p) => p,
        other => panic!("not sequenced: {other:?}"),
    }
}

fn package(n: u8, not_after: u64, last_resort: bool) -> KeyPackageRecord {
    KeyPackageRecord {
        reference: vec![n; 32],
        bytes: vec![n; 200],
        not_after,
        last_resort,
    }
}

/// A database as a build of schema version 2 created it.
async fn version_2_database(path: &Path) {
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
async fn a_version_2_database_migrates_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sqlite");
    version_2_database(&path).await;
    // A talks with an envelope, as the version 2 build wrote them (through
    // a store of this build would need version 3: write the rows by hand).
    let pool = raw(&path).await;
    let talks = talks_id(1);
    for sql in [
        "INSERT INTO talks (talks, creator, created_at) VALUES (?1, zeroblob(32), 5)",
        "INSERT INTO log_heads (talks, next_seq, last_time, integrated_size) VALUES (?1, 1, 10, 0)",
        "INSERT INTO access_lists (talks, version, hash, bytes) VALUES (?1, 0, zeroblob(32), x'00')",
        "INSERT INTO envelopes (talks, seq, node_time, room, sender, idempotency_key, header,
             header_hash, body, body_hash, leaf_hash, receipt)
         VALUES (?1, 0, 10, zeroblob(16), zeroblob(32), zeroblob(16), x'01', zeroblob(32),
             x'02', zeroblob(32), zeroblob(32), x'03')",
    ] {
        sqlx::query(sql)
            .bind(talks.as_bytes().as_slice())
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;

    let store = open(&path).await;
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let old = store.read(talks, 0, 10).await.unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].welcome_to, None, "an old envelope is no Welcome");
    // The old talks takes the new rows.
    let out = store
        .sequence(
            vec![gated(1, 1, Gate::Create { state: update(1) })],
            20,
            &log_key(),
        )
        .await
        .unwrap();
    assert_eq!(placed(&out[0]).seq, 1);
    assert_eq!(
        store.room_state(talks, ROOM).await.unwrap().unwrap().epoch,
        0
    );
    store
        .put_key_packages(talks, device(1), vec![package(1, NOW, false)])
        .await
        .unwrap();
    assert_eq!(
        store
            .key_package_count(talks, device(1), NOW)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn mls_state_survives_a_reopen() {
    let (_dir, path, store) = fresh().await;
    let key = log_key();
    let talks = talks_id(1);
    create(&store, 1).await;
    let win = gated(
        1,
        2,
        Gate::Commit {
            epoch: 0,
            state: update(2),
        },
    );
    let out = store
        .sequence(
            vec![
                gated(1, 1, Gate::Create { state: update(1) }),
                win.clone(),
                gated(
                    1,
                    3,
                    Gate::Welcome {
                        commit_epoch: 0,
                        commit: win.header_hash,
                        to: vec![device(7), device(8)],
                    },
                ),
            ],
            100,
            &key,
        )
        .await
        .unwrap();
    let win_seq = placed(&out[1]).seq;
    store
        .put_key_packages(
            talks,
            device(1),
            vec![
                package(1, NOW + 10, false),
                package(2, NOW + 10, false),
                package(9, NOW + 10, true),
            ],
        )
        .await
        .unwrap();
    // One claim of the two the window allows.
    let first = store
        .claim_key_package(talks, device(5), device(1), NOW, 2, 60)
        .await
        .unwrap();
    assert_eq!(first, Some(package(1, NOW + 10, false)));
    let state = store.room_state(talks, ROOM).await.unwrap();
    let rows = store.read(talks, 0, 10).await.unwrap();
    store.close().await;
    drop(store);

    let store = open(&path).await;
    assert_eq!(store.room_state(talks, ROOM).await.unwrap(), state);
    assert_eq!(
        state,
        Some(RoomState {
            epoch: 1,
            public_group: update(2).public_group,
            group_info: update(2).group_info,
            created_seq: 0,
        })
    );
    assert_eq!(store.read(talks, 0, 10).await.unwrap(), rows);
    assert_eq!(rows[2].welcome_to, Some(vec![device(7), device(8)]));
    assert_eq!(rows[1].welcome_to, None);

    // The recorded commit still decides races and Welcomes.
    let loser = gated(
        2,
        4,
        Gate::Commit {
            epoch: 0,
            state: update(3),
        },
    );
    let out = store
        .sequence(
            vec![
                loser.clone(),
                gated(
                    2,
                    5,
                    Gate::Welcome {
                        commit_epoch: 0,
                        commit: loser.header_hash,
                        to: vec![device(9)],
                    },
                ),
                gated(
                    2,
                    6,
                    Gate::Welcome {
                        commit_epoch: 0,
                        commit: win.header_hash,
                        to: Vec::new(),
                    },
                ),
                gated(1, 1, Gate::Create { state: update(1) }), // a retry
            ],
            200,
            &key,
        )
        .await
        .unwrap();
    assert_eq!(out[0], Outcome::EpochTaken { seq: win_seq });
    assert_eq!(out[1], Outcome::WelcomeOrphaned);
    assert_eq!(placed(&out[2]).seq, 3);
    assert_eq!(placed(&out[3]).seq, 0);
    assert_eq!(
        store.read(talks, 3, 1).await.unwrap()[0].welcome_to,
        Some(Vec::new()),
        "an empty audience is not None"
    );

    // Key packages and the claim counter survived: the second claim is the
    // window's last.
    assert_eq!(
        store
            .key_package_count(talks, device(1), NOW)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .claim_key_package(talks, device(5), device(1), NOW + 1, 2, 60)
            .await
            .unwrap(),
        Some(package(2, NOW + 10, false))
    );
    assert!(matches!(
        store
            .claim_key_package(talks, device(5), device(1), NOW + 2, 2, 60)
            .await,
        Err(StoreError::Limit(_))
    ));
    assert_eq!(
        store
            .claim_key_package(talks, device(6), device(1), NOW + 2, 2, 60)
            .await
            .unwrap(),
        Some(package(9, NOW + 10, true)),
        "the last resort"
    );
}

/// Room state is written in the `sequence` transaction: when the batch
/// cannot be signed, neither the envelopes nor the room's state are there.
#[tokio::test]
async fn a_gated_batch_that_fails_writes_no_room_state() {
    let (_dir, _path, store) = fresh().await;
    let talks = talks_id(1);
    create(&store, 1).await;
    let create_room = gated(1, 1, Gate::Create { state: update(1) });
    let broken = BrokenSigner(log_key().public_key());
    let r = store.sequence(vec![create_room.clone()], 10, &broken).await;
    assert!(matches!(r, Err(StoreError::Sign(_))), "{r:?}");
    assert_eq!(store.room_state(talks, ROOM).await.unwrap(), None);
    assert_eq!(store.log_size(talks).await.unwrap(), 0);
    // Nothing was remembered: the create goes through now.
    let out = store
        .sequence(vec![create_room], 10, &log_key())
        .await
        .unwrap();
    assert_eq!(placed(&out[0]).seq, 0);

    let commit = gated(
        1,
        2,
        Gate::Commit {
            epoch: 0,
            state: update(2),
        },
    );
    let r = store.sequence(vec![commit.clone()], 10, &broken).await;
    assert!(matches!(r, Err(StoreError::Sign(_))), "{r:?}");
    let state = store.room_state(talks, ROOM).await.unwrap().unwrap();
    assert_eq!(
        (state.epoch, state.public_group),
        (0, update(1).public_group)
    );
    let out = store.sequence(vec![commit], 10, &log_key()).await.unwrap();
    assert_eq!(placed(&out[0]).seq, 1, "the epoch was not taken");
}

/// Values the schema's CHECKs would refuse, written with the checks off:
/// reads report `Corrupt` instead of panicking or serving them.
#[tokio::test]
async fn malformed_mls_rows_are_corrupt() {
    let (_dir, path, store) = fresh().await;
    let talks = talks_id(1);
    create(&store, 1).await;
    let commit = gated(
        1,
        2,
        Gate::Commit {
            epoch: 0,
            state: update(2),
        },
    );
    store
        .sequence(
            vec![
                gated(1, 1, Gate::Create { state: update(1) }),
                commit.clone(),
                gated(
                    1,
                    3,
                    Gate::Welcome {
                        commit_epoch: 0,
                        commit: commit.header_hash,
                        to: vec![device(7)],
                    },
                ),
            ],
            10,
            &log_key(),
        )
        .await
        .unwrap();
    store
        .put_key_packages(talks, device(1), vec![package(1, NOW, false)])
        .await
        .unwrap();
    store.close().await;
    drop(store);

    #[derive(Clone, Copy)]
    enum Read {
        Envelopes,
        RoomState,
        /// A gated submission reads the room's commit.
        Commit,
        Claim,
    }
    let cases: &[(&str, Read, &str)] = &[
        (
            "UPDATE envelopes SET welcome_to = x'0102' WHERE seq = 2",
            Read::Envelopes,
            "welcome_to",
        ),
        ("UPDATE room_state SET epoch = -1", Read::RoomState, "epoch"),
        (
            "UPDATE room_state SET created_seq = -3",
            Read::RoomState,
            "created_seq",
        ),
        (
            "UPDATE room_commits SET header_hash = x'00'",
            Read::Commit,
            "header_hash",
        ),
        ("UPDATE room_commits SET seq = -1", Read::Commit, "seq"),
        (
            "UPDATE key_packages SET reference = x''",
            Read::Claim,
            "reference",
        ),
        (
            "UPDATE key_packages SET last_resort = 3",
            Read::Claim,
            "last_resort",
        ),
        (
            "INSERT INTO key_package_claims VALUES
                 ((SELECT talks FROM talks), zeroblob(32), x'0101010101010101010101010101010101010101010101010101010101010101', 0, -1)",
            Read::Claim,
            "claims",
        ),
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
            Read::Envelopes => store.read(talks, 0, 10).await.map(drop),
            Read::RoomState => store.room_state(talks, ROOM).await.map(drop),
            Read::Commit => {
                let late = gated(
                    2,
                    9,
                    Gate::Commit {
                        epoch: 0,
                        state: update(3),
                    },
                );
                store.sequence(vec![late], 20, &log_key()).await.map(drop)
            }
            Read::Claim => store
                .claim_key_package(talks, KeyId(Digest([0; 32])), device(1), NOW, 5, 60)
                .await
                .map(drop),
        };
        match r {
            Err(StoreError::Corrupt(m)) => assert!(m.contains(says), "{sql}: {m}"),
            other => panic!("{sql}: {other:?}"),
        }
        store.close().await;
    }
}

/// Two stores on one file (two nodes): commits for the same epochs race
/// through both, and every epoch has exactly one winner, which every loser
/// names — the gate is checked inside the write transaction, not in a
/// store's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_race_commits_and_one_wins_each_epoch() {
    let (_dir, path, a) = fresh().await;
    let b = open(&path).await;
    let talks = talks_id(1);
    create(&a, 1).await;
    a.sequence(
        vec![gated(1, 1, Gate::Create { state: update(1) })],
        10,
        &log_key(),
    )
    .await
    .unwrap();
    const EPOCHS: u8 = 10;
    let race = |store: backchannel_store_sqlite::SqliteStore, sender: u8| {
        tokio::spawn(async move {
            let key = log_key();
            let mut out = Vec::new();
            // Epoch e - 1 has a commit once this store learnt its outcome
            // (won it, or lost it to the other store's), so the room is at
            // e or beyond: the commit for e wins it or names its winner.
            for e in 0..EPOCHS {
                let sub = gated(
                    sender,
                    e + 16 * (sender - 1) + 2,
                    Gate::Commit {
                        epoch: u64::from(e),
                        state: update(sender),
                    },
                );
                let o = store.sequence(vec![sub], 10, &key).await.unwrap();
                out.push((u64::from(e), o[0].clone()));
            }
            out
        })
    };
    let (oa, ob) = tokio::join!(race(a.clone(), 1), race(b.clone(), 2));
    let mut by_epoch: std::collections::BTreeMap<u64, Vec<Outcome>> = Default::default();
    for (e, o) in oa.unwrap().into_iter().chain(ob.unwrap()) {
        by_epoch.entry(e).or_default().push(o);
    }
    for (e, outcomes) in &by_epoch {
        let winners: Vec<u64> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Sequenced(p) => Some(p.seq),
                _ => None,
            })
            .collect();
        assert_eq!(winners.len(), 1, "epoch {e}: {outcomes:?}");
        for o in outcomes {
            assert!(
                matches!(o, Outcome::Sequenced(_)) || *o == Outcome::EpochTaken { seq: winners[0] },
                "epoch {e}: {o:?}"
            );
        }
    }
    let state = b.room_state(talks, ROOM).await.unwrap().unwrap();
    assert_eq!(state.epoch, u64::from(EPOCHS));
    assert_eq!(
        a.log_size(talks).await.unwrap(),
        1 + u64::from(EPOCHS),
        "one commit per epoch"
    );
}
