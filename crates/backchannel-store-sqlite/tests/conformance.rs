//! The storage contract's conformance suite, on SQLite files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use backchannel_store_sqlite::{SqliteOptions, SqliteStore};
use tempfile::TempDir;

#[tokio::test]
async fn sqlite_store_conforms() {
    // Each property gets a new database in its own directory; the
    // directories live until the suite is over.
    let dirs: Arc<Mutex<Vec<TempDir>>> = Arc::default();
    backchannel_store::conformance::run(|| {
        let dirs = Arc::clone(&dirs);
        async move {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = SqliteStore::open(dir.path().join("node.sqlite"), SqliteOptions::default())
                .await
                .expect("opens a fresh database");
            dirs.lock().unwrap().push(dir);
            store
        }
    })
    .await;
}
