//! The storage contract's conformance suite, on PostgreSQL: each property
//! on a store in a fresh schema of the database named by
//! `BACKCHANNEL_TEST_DATABASE_URL` (skipped, with a line saying so, when it
//! is unset). The schemas are dropped afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Schemas, database_url, open, with_schemas};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    let Some(url) = database_url("postgres_store_conforms") else {
        return;
    };
    let at = url.clone();
    with_schemas(&url, move |schemas: Schemas| async move {
        backchannel_store::conformance::run(|| {
            let schema = schemas.fresh();
            let url = at.clone();
            async move { open(&url, &schema).await }
        })
        .await;
    })
    .await;
}
