//! The schema's versions on a real server: a newer schema is refused before
//! anything is written, opening (and so migrating) twice or at once is
//! harmless, and every connection commits synchronously.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use backchannel_store::Store;
use backchannel_store_postgres::{OpenError, PostgresStore, SCHEMA_VERSION};
use common::{Schemas, create, database_url, open, options, raw, talks_id, with_schemas};
use sqlx::{Connection, Row};

/// The versions recorded in `schema`, in order.
async fn versions(url: &str, schema: &str) -> Vec<i32> {
    let mut conn = raw(url).await;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM \"{schema}\".schema_migrations ORDER BY version"
    )))
    .fetch_all(&mut conn)
    .await
    .expect("reads the versions");
    conn.close().await.expect("closes");
    rows.iter().map(|r| r.get::<i32, _>(0)).collect()
}

/// The tables of `schema`, by name.
async fn tables(url: &str, schema: &str) -> Vec<String> {
    let mut conn = raw(url).await;
    let rows = sqlx::query(
        "SELECT table_name::TEXT FROM information_schema.tables WHERE table_schema = $1
         ORDER BY table_name",
    )
    .bind(schema)
    .fetch_all(&mut conn)
    .await
    .expect("lists the tables");
    conn.close().await.expect("closes");
    rows.iter().map(|r| r.get::<String, _>(0)).collect()
}

fn all_versions() -> Vec<i32> {
    (1..=i32::try_from(SCHEMA_VERSION).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused_before_anything_is_written() {
    let Some(url) = database_url("a_newer_schema_is_refused_before_anything_is_written") else {
        return;
    };
    let at = url.clone();
    with_schemas(&url, move |schemas: Schemas| async move {
        let url = at;
        let schema = schemas.fresh();
        let store = open(&url, &schema).await;
        create(&store, 1).await;
        store.close().await;

        // A newer build migrated this schema further.
        let newer = SCHEMA_VERSION + 1;
        let mut conn = raw(&url).await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO \"{schema}\".schema_migrations (version, name) VALUES ($1, 'future')"
        )))
        .bind(i32::try_from(newer).unwrap())
        .execute(&mut conn)
        .await
        .expect("records a newer version");
        conn.close().await.expect("closes");
        let before = tables(&url, &schema).await;

        match PostgresStore::open(&url, options(&schema)).await {
            Err(OpenError::NewerSchema { found, known }) => {
                assert_eq!((found, known), (newer, SCHEMA_VERSION));
            }
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("a schema newer than this build was opened"),
        }
        let mut want = all_versions();
        want.push(i32::try_from(newer).unwrap());
        assert_eq!(versions(&url, &schema).await, want, "nothing recorded");
        assert_eq!(tables(&url, &schema).await, before, "nothing created");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_twice_migrates_once_and_keeps_the_data() {
    let Some(url) = database_url("opening_twice_migrates_once_and_keeps_the_data") else {
        return;
    };
    let at = url.clone();
    with_schemas(&url, move |schemas: Schemas| async move {
        let url = at;
        let schema = schemas.fresh();
        let first = open(&url, &schema).await;
        assert_eq!(first.schema_version().await.unwrap(), SCHEMA_VERSION);
        create(&first, 1).await;
        first.close().await;

        let second = open(&url, &schema).await;
        assert_eq!(second.schema_version().await.unwrap(), SCHEMA_VERSION);
        assert!(second.talks(talks_id(1)).await.unwrap().is_some());
        assert_eq!(versions(&url, &schema).await, all_versions());
        second.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_opening_one_fresh_schema_at_once_migrate_it_once() {
    let Some(url) = database_url("nodes_opening_one_fresh_schema_at_once_migrate_it_once") else {
        return;
    };
    let at = url.clone();
    with_schemas(&url, move |schemas: Schemas| async move {
        let url = at;
        for round in 0..4 {
            let schema = schemas.fresh();
            let opens = (0..4).map(|_| {
                let (url, schema) = (url.clone(), schema.clone());
                tokio::spawn(async move { PostgresStore::open(&url, options(&schema)).await })
            });
            let mut stores = Vec::new();
            for opened in futures_join(opens).await {
                let store = opened.unwrap_or_else(|e| panic!("round {round}: open failed: {e}"));
                assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
                stores.push(store);
            }
            assert_eq!(
                versions(&url, &schema).await,
                all_versions(),
                "round {round}"
            );
            for store in stores {
                store.close().await;
            }
        }
    })
    .await;
}

/// Awaits spawned tasks in order.
async fn futures_join<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let tasks: Vec<_> = tasks.collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_commits_synchronously_in_its_schema() {
    let Some(url) = database_url("every_connection_commits_synchronously_in_its_schema") else {
        return;
    };
    let at = url.clone();
    with_schemas(&url, move |schemas: Schemas| async move {
        let url = at;
        let schema = schemas.fresh();
        // Several pooled connections at once, not just the first: each is
        // set up by the pool's `after_connect`.
        let store = open(&url, &schema).await;
        let reads = (0..6).map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.settings().await })
        });
        for settings in futures_join(reads).await {
            let settings = settings.expect("reads the settings");
            assert_eq!(settings.synchronous_commit, "on");
            assert_eq!(settings.current_schema.as_deref(), Some(schema.as_str()));
        }
        store.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_asking_for_asynchronous_commit_is_overridden() {
    let Some(url) = database_url("a_url_asking_for_asynchronous_commit_is_overridden") else {
        return;
    };
    let at = url.clone();
    with_schemas(&url, move |schemas: Schemas| async move {
        // The connection string (or a role's default) may say `off`: the
        // store sets `on` on every connection regardless.
        let sep = if at.contains('?') { '&' } else { '?' };
        let url = format!("{at}{sep}options[synchronous_commit]=off");
        let schema = schemas.fresh();
        let store = open(&url, &schema).await;
        let settings = store.settings().await.unwrap();
        assert_eq!(settings.synchronous_commit, "on");
        // And the raw connection with the same URL really is `off`, so the
        // test tests something.
        let mut conn = raw(&url).await;
        let raw_setting: String =
            sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(raw_setting, "off");
        conn.close().await.unwrap();
        store.close().await;
    })
    .await;
}
