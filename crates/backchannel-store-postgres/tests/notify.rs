//! Notifications across nodes: a store's subscribers hear, through
//! `LISTEN`/`NOTIFY`, of what another store (another node) sequences in the
//! same schema, never of a store in another schema, and never twice of
//! their own store's writes; after the relay's connection is cut, what was
//! sequenced meanwhile is announced once it listens again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use backchannel_store::{Appended, Store, Subscription};
use common::{
    Schemas, create, database_url, log_key, open, raw, submission, talks_id, with_schemas,
};
use tokio::sync::broadcast::error::TryRecvError;

/// The next notification for talks `n` whose size is at least `size`,
/// skipping others; panics after 10 s.
async fn heard(rx: &mut Subscription, n: u8, size: u64) -> Appended {
    let wait = async {
        loop {
            let a = rx.recv().await.expect("subscribed");
            if a.talks == talks_id(n) && a.size >= size {
                return a;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no notification for talks {n} reaching size {size}"))
}

/// One test, the two parts in turn: the second cuts every relay listening
/// on the database, which would disturb the first if they ran at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_hear_each_other() {
    let Some(url) = database_url("nodes_hear_each_other") else {
        return;
    };
    a_node_hears_what_another_sequences(&url).await;
    after_its_connection_is_cut_a_node_catches_up(&url).await;
}

async fn a_node_hears_what_another_sequences(url: &str) {
    let at = url.to_owned();
    with_schemas(url, move |schemas: Schemas| async move {
        let url = at;
        let schema = schemas.fresh();
        let (a, b) = (open(&url, &schema).await, open(&url, &schema).await);
        // A store in another schema of the same database, with the same
        // talks id: none of its writes reach a.
        let other = open(&url, &schemas.fresh()).await;
        create(&a, 1).await;
        create(&other, 1).await;
        let mut rx = a.subscribe();

        b.sequence(vec![submission(1, 2, 1, 1)], 1_000, &log_key())
            .await
            .unwrap();
        assert_eq!(
            heard(&mut rx, 1, 1).await,
            Appended {
                talks: talks_id(1),
                size: 1
            }
        );

        // Its own write: heard once (in-process), not echoed back by the
        // relay; another schema's: not at all.
        a.sequence(vec![submission(1, 3, 1, 1)], 1_000, &log_key())
            .await
            .unwrap();
        for i in 0..3u8 {
            other
                .sequence(vec![submission(1, 4, i, i)], 1_000, &log_key())
                .await
                .unwrap();
        }
        assert_eq!(heard(&mut rx, 1, 2).await.size, 2);
        // A later write by b, after a's own and other's: if a's echo or
        // other's were relayed, they would come before it.
        b.sequence(vec![submission(1, 2, 2, 2)], 1_000, &log_key())
            .await
            .unwrap();
        assert_eq!(
            rx.recv().await.unwrap(),
            Appended {
                talks: talks_id(1),
                size: 3
            },
            "nothing but b's write was relayed"
        );
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        for s in [&a, &b, &other] {
            s.close().await;
        }
    })
    .await;
}

async fn after_its_connection_is_cut_a_node_catches_up(url: &str) {
    let at = url.to_owned();
    with_schemas(url, move |schemas: Schemas| async move {
        let url = at;
        let schema = schemas.fresh();
        let (a, b) = (open(&url, &schema).await, open(&url, &schema).await);
        create(&a, 1).await;
        let mut rx = a.subscribe();

        // Cut every connection listening in this test's schema's stores:
        // a's relay and b's alike (the backends whose last statement was
        // the LISTEN, in this database, opened by a node).
        let mut conn = raw(&url).await;
        let cut: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database()
                AND application_name = 'backchannel-node'
                AND query ILIKE 'LISTEN%backchannel_appended%'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert!(!cut.is_empty(), "no relay is listening");
        for pid in &cut {
            sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        // Sequenced while a's relay may be down: its notification may be
        // lost, but the relay announces the size once it listens again.
        for i in 0..5u8 {
            b.sequence(vec![submission(1, 2, i, i)], 1_000, &log_key())
                .await
                .unwrap();
        }
        assert_eq!(heard(&mut rx, 1, 5).await.size, 5);
        // And it goes on relaying.
        b.sequence(vec![submission(1, 2, 9, 9)], 1_000, &log_key())
            .await
            .unwrap();
        assert_eq!(heard(&mut rx, 1, 6).await.size, 6);
        a.close().await;
        b.close().await;
    })
    .await;
}
