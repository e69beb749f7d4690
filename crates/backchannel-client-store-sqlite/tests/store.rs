//! The encrypted client store on a real file: the contract, the durability
//! pragmas, reopening, passphrases, and what the file shows and hides.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use backchannel_client::store::{ClientStore, ClientStoreError, Namespace, Put};
use backchannel_client_store_sqlite::{
    ClientStoreOptions, CreateError, MAX_SCRYPT_LOG_N, OpenError, SCHEMA_VERSION, SqliteClientStore,
};
use secrecy::SecretString;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use tempfile::TempDir;

const ALL: [Namespace; 6] = [
    Namespace::Keys,
    Namespace::Node,
    Namespace::Talks,
    Namespace::Checkpoints,
    Namespace::Cosigned,
    Namespace::Archive,
];

/// The work factor tests create stores with (debug builds honour it).
const TEST_LOG_N: u8 = 4;

fn options() -> ClientStoreOptions {
    ClientStoreOptions {
        danger_test_scrypt_log_n: Some(TEST_LOG_N),
        ..ClientStoreOptions::default()
    }
}

fn passphrase() -> SecretString {
    SecretString::from("correct horse battery staple")
}

/// A new store in its own temporary directory.
async fn fresh() -> (TempDir, PathBuf, SqliteClientStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("home.sqlite");
    let store = SqliteClientStore::create(&path, &passphrase(), options())
        .await
        .unwrap();
    (dir, path, store)
}

async fn reopen(path: &Path) -> SqliteClientStore {
    SqliteClientStore::open(path, &passphrase(), options())
        .await
        .unwrap()
}

/// A raw connection to the file, for tampering behind the store's back.
async fn raw(path: &Path) -> SqlitePool {
    SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false),
    )
    .await
    .unwrap()
}

fn put(ns: Namespace, key: &[u8], value: Option<&[u8]>) -> Put {
    Put {
        ns,
        key: key.to_vec(),
        value: value.map(<[u8]>::to_vec),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The database file and whichever of its `-wal` and `-shm` files exist.
fn file_bytes(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let p = PathBuf::from(p);
            std::fs::read(&p).ok().map(|bytes| (p, bytes))
        })
        .collect()
}

#[tokio::test]
async fn values_round_trip_in_every_namespace_apart() {
    let (_dir, _path, store) = fresh().await;
    // One key in every namespace, a different value in each.
    for ns in ALL {
        store.put(ns, b"key", &[ns.tag(); 3]).await.unwrap();
    }
    for ns in ALL {
        assert_eq!(
            store.get(ns, b"key").await.unwrap(),
            Some(vec![ns.tag(); 3])
        );
        assert_eq!(store.get(ns, b"missing").await.unwrap(), None);
    }
    // Empty keys and values are values like any other.
    store.put(Namespace::Talks, b"", b"").await.unwrap();
    assert_eq!(
        store.get(Namespace::Talks, b"").await.unwrap(),
        Some(vec![])
    );
    assert_eq!(store.get(Namespace::Node, b"").await.unwrap(), None);
    // Overwriting replaces.
    store.put(Namespace::Keys, b"key", b"new").await.unwrap();
    assert_eq!(
        store.get(Namespace::Keys, b"key").await.unwrap(),
        Some(b"new".to_vec())
    );
}

#[tokio::test]
async fn put_with_no_value_deletes() {
    let (_dir, _path, store) = fresh().await;
    store.put(Namespace::Node, b"a", b"1").await.unwrap();
    store.put(Namespace::Talks, b"a", b"2").await.unwrap();
    store
        .put_many(vec![
            put(Namespace::Node, b"a", None),
            // Deleting what is not there is no error.
            put(Namespace::Node, b"never", None),
        ])
        .await
        .unwrap();
    assert_eq!(store.get(Namespace::Node, b"a").await.unwrap(), None);
    assert_eq!(
        store.get(Namespace::Talks, b"a").await.unwrap(),
        Some(b"2".to_vec())
    );
    // An empty batch is no error either.
    store.put_many(vec![]).await.unwrap();
}

#[tokio::test]
async fn put_many_applies_in_order() {
    let (_dir, _path, store) = fresh().await;
    store
        .put_many(vec![
            put(Namespace::Archive, b"a", Some(b"1")),
            put(Namespace::Archive, b"a", Some(b"2")),
            put(Namespace::Archive, b"b", Some(b"3")),
            put(Namespace::Archive, b"b", None),
            put(Namespace::Archive, b"c", None),
            put(Namespace::Archive, b"c", Some(b"4")),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.get(Namespace::Archive, b"a").await.unwrap(),
        Some(b"2".to_vec())
    );
    assert_eq!(store.get(Namespace::Archive, b"b").await.unwrap(), None);
    assert_eq!(
        store.get(Namespace::Archive, b"c").await.unwrap(),
        Some(b"4".to_vec())
    );
}

#[tokio::test]
async fn a_failing_put_many_writes_nothing() {
    let (_dir, path, store) = fresh().await;
    store.put(Namespace::Keys, b"a", b"old").await.unwrap();
    store.put(Namespace::Talks, b"c", b"kept").await.unwrap();
    store.close().await;
    // Make every insert into the archive namespace fail, after the batch's
    // earlier writes have run inside the transaction.
    let tamper = raw(&path).await;
    sqlx::query(
        "CREATE TRIGGER refuse_archive BEFORE INSERT ON kv WHEN NEW.ns = 6 \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    .execute(&tamper)
    .await
    .unwrap();
    tamper.close().await;

    let store = reopen(&path).await;
    let failed = store
        .put_many(vec![
            put(Namespace::Keys, b"a", Some(b"new")),
            put(Namespace::Node, b"b", Some(b"added")),
            put(Namespace::Talks, b"c", None),
            put(Namespace::Archive, b"d", Some(b"refused")),
        ])
        .await;
    assert!(
        matches!(failed, Err(ClientStoreError::Backend(_))),
        "{failed:?}"
    );
    assert_eq!(
        store.get(Namespace::Keys, b"a").await.unwrap(),
        Some(b"old".to_vec())
    );
    assert_eq!(store.get(Namespace::Node, b"b").await.unwrap(), None);
    assert_eq!(
        store.get(Namespace::Talks, b"c").await.unwrap(),
        Some(b"kept".to_vec())
    );
    assert_eq!(store.get(Namespace::Archive, b"d").await.unwrap(), None);

    // The store is still usable, and the rollback holds after a reopen.
    store.put(Namespace::Node, b"b", b"later").await.unwrap();
    store.close().await;
    let store = reopen(&path).await;
    assert_eq!(
        store.get(Namespace::Keys, b"a").await.unwrap(),
        Some(b"old".to_vec())
    );
    assert_eq!(
        store.get(Namespace::Node, b"b").await.unwrap(),
        Some(b"later".to_vec())
    );
}

#[tokio::test]
async fn everything_survives_a_reopen_with_the_right_passphrase() {
    let (_dir, path, store) = fresh().await;
    let writes: Vec<Put> = ALL
        .iter()
        .flat_map(|&ns| {
            (0u16..20).map(move |i| {
                put(
                    ns,
                    &i.to_be_bytes(),
                    Some(&vec![ns.tag() ^ i as u8; usize::from(i) * 97]),
                )
            })
        })
        .collect();
    store.put_many(writes.clone()).await.unwrap();
    store.close().await;
    drop(store);

    let store = reopen(&path).await;
    assert_eq!(store.scrypt_log_n(), TEST_LOG_N);
    for w in &writes {
        assert_eq!(store.get(w.ns, &w.key).await.unwrap(), w.value);
    }
}

#[tokio::test]
async fn a_wrong_passphrase_is_told_apart() {
    let (_dir, path, store) = fresh().await;
    store.put(Namespace::Keys, b"k", b"v").await.unwrap();
    store.close().await;
    for wrong in [
        "correct horse battery stapl",
        "Correct horse battery staple",
        "",
    ] {
        let e = SqliteClientStore::open(&path, &SecretString::from(wrong), options())
            .await
            .unwrap_err();
        assert!(matches!(e, OpenError::WrongPassphrase), "{wrong:?}: {e:?}");
        assert!(matches!(
            ClientStoreError::from(e),
            ClientStoreError::WrongPassphrase
        ));
    }
    // The right one still opens it (a failed open wrote nothing).
    let store = reopen(&path).await;
    assert_eq!(
        store.get(Namespace::Keys, b"k").await.unwrap(),
        Some(b"v".to_vec())
    );
}

#[tokio::test]
async fn the_file_holds_no_plaintext_key_or_value() {
    let (_dir, path, store) = fresh().await;
    let key_marker = b"KEY-MARKER-3f7a91c2".to_vec();
    let value_marker = b"VALUE-MARKER-c91e55d0".to_vec();
    // A short value, and one long enough to spill into overflow pages.
    let long_value = value_marker.repeat(1_000);
    for ns in ALL {
        store
            .put_many(vec![
                put(ns, &key_marker, Some(&value_marker)),
                put(ns, &[&key_marker[..], b"-long"].concat(), Some(&long_value)),
            ])
            .await
            .unwrap();
    }
    let secrets: [&[u8]; 3] = [&key_marker, &value_marker, b"correct horse battery staple"];

    // While open, the writes sit in the WAL: read every file.
    let files = file_bytes(&path);
    assert!(
        files
            .iter()
            .any(|(p, b)| p.to_string_lossy().ends_with("-wal") && b.len() > 40_000),
        "the WAL holds the writes"
    );
    for (p, bytes) in &files {
        for s in secrets {
            assert!(
                !contains(bytes, s),
                "{} holds {}",
                p.display(),
                String::from_utf8_lossy(s)
            );
        }
    }
    // Closing checkpoints the WAL into the database file.
    store.close().await;
    let files = file_bytes(&path);
    assert!(files[0].1.len() > 40_000, "the database holds the writes");
    for (p, bytes) in &files {
        for s in secrets {
            assert!(
                !contains(bytes, s),
                "{} holds {}",
                p.display(),
                String::from_utf8_lossy(s)
            );
        }
    }
    // And they are all there.
    let store = reopen(&path).await;
    for ns in ALL {
        assert_eq!(
            store.get(ns, &key_marker).await.unwrap(),
            Some(value_marker.clone())
        );
    }
}

#[tokio::test]
async fn values_moved_or_altered_in_the_file_are_corrupt() {
    let (_dir, path, store) = fresh().await;
    store.put(Namespace::Talks, b"one", b"first").await.unwrap();
    store
        .put(Namespace::Talks, b"two", b"second")
        .await
        .unwrap();
    store
        .put(Namespace::Node, b"three", b"third")
        .await
        .unwrap();
    store
        .put(Namespace::Archive, b"four", b"fourth")
        .await
        .unwrap();
    store.close().await;

    let tamper = raw(&path).await;
    let rows: Vec<(i64, i64, Vec<u8>)> =
        sqlx::query_as("SELECT rowid, ns, v FROM kv ORDER BY rowid")
            .fetch_all(&tamper)
            .await
            .unwrap();
    assert_eq!(rows.len(), 4);
    let set = |rowid: i64, v: Vec<u8>| {
        let tamper = tamper.clone();
        async move {
            sqlx::query("UPDATE kv SET v = ? WHERE rowid = ?")
                .bind(v)
                .bind(rowid)
                .execute(&tamper)
                .await
                .unwrap();
        }
    };
    // Swap the two values of one namespace.
    set(rows[0].0, rows[1].2.clone()).await;
    set(rows[1].0, rows[0].2.clone()).await;
    // Flip one bit of another.
    let mut flipped = rows[2].2.clone();
    *flipped.last_mut().unwrap() ^= 1;
    set(rows[2].0, flipped).await;
    // Move a row into another namespace under its stored key: it is simply
    // not found there (keys are blinded per namespace).
    sqlx::query("UPDATE kv SET ns = ? WHERE rowid = ?")
        .bind(i64::from(Namespace::Keys.tag()))
        .bind(rows[3].0)
        .execute(&tamper)
        .await
        .unwrap();
    tamper.close().await;

    let store = reopen(&path).await;
    for (ns, key) in [
        (Namespace::Talks, &b"one"[..]),
        (Namespace::Talks, b"two"),
        (Namespace::Node, b"three"),
    ] {
        let got = store.get(ns, key).await;
        assert!(
            matches!(got, Err(ClientStoreError::Corrupt(_))),
            "{ns:?} {key:?}: {got:?}"
        );
    }
    assert_eq!(store.get(Namespace::Archive, b"four").await.unwrap(), None);
    assert_eq!(store.get(Namespace::Keys, b"four").await.unwrap(), None);
}

#[tokio::test]
async fn write_connection_runs_wal_with_synchronous_full() {
    let (_dir, path, store) = fresh().await;
    let check = |p: backchannel_client_store_sqlite::WritePragmas| {
        assert_eq!(p.journal_mode, "wal");
        assert_eq!(p.synchronous, "FULL");
        assert_eq!(p.busy_timeout_ms, 5_000);
    };
    check(store.write_pragmas().await.unwrap());
    store.put(Namespace::Keys, b"k", b"v").await.unwrap();
    check(store.write_pragmas().await.unwrap());
    store.close().await;
    let store = reopen(&path).await;
    check(store.write_pragmas().await.unwrap());
}

#[tokio::test]
async fn create_refuses_an_existing_path() {
    let (dir, path, store) = fresh().await;
    store.put(Namespace::Keys, b"k", b"v").await.unwrap();
    let e = SqliteClientStore::create(&path, &passphrase(), options())
        .await
        .unwrap_err();
    assert!(matches!(e, CreateError::AlreadyExists { .. }), "{e:?}");
    store.close().await;
    let e = SqliteClientStore::create(&path, &passphrase(), options())
        .await
        .unwrap_err();
    assert!(matches!(e, CreateError::AlreadyExists { .. }), "{e:?}");
    assert_eq!(
        reopen(&path)
            .await
            .get(Namespace::Keys, b"k")
            .await
            .unwrap(),
        Some(b"v".to_vec())
    );

    // Any file, untouched.
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, b"mine").unwrap();
    let e = SqliteClientStore::create(&other, &passphrase(), options())
        .await
        .unwrap_err();
    assert!(matches!(e, CreateError::AlreadyExists { .. }), "{e:?}");
    assert_eq!(std::fs::read(&other).unwrap(), b"mine");

    // A leftover WAL of a removed database would be replayed into the new
    // file: refused too.
    let orphan = dir.path().join("orphan.sqlite");
    std::fs::write(dir.path().join("orphan.sqlite-wal"), b"old frames").unwrap();
    let e = SqliteClientStore::create(&orphan, &passphrase(), options())
        .await
        .unwrap_err();
    assert!(matches!(e, CreateError::AlreadyExists { .. }), "{e:?}");
    assert!(!orphan.exists());
}

#[tokio::test]
async fn create_refuses_an_empty_passphrase_and_open_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("home.sqlite");
    let e = SqliteClientStore::create(&path, &SecretString::from(""), options())
        .await
        .unwrap_err();
    assert!(matches!(e, CreateError::EmptyPassphrase), "{e:?}");
    assert!(!path.exists());
    let e = SqliteClientStore::open(&path, &passphrase(), options())
        .await
        .unwrap_err();
    assert!(matches!(e, OpenError::NotFound { .. }), "{e:?}");
    assert!(!path.exists(), "open created no file");
}

#[cfg(unix)]
#[tokio::test]
async fn the_file_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, path, store) = fresh().await;
    store.put(Namespace::Keys, b"k", b"v").await.unwrap();
    for (p, _) in file_bytes(&path) {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}

#[tokio::test]
async fn open_refuses_files_that_are_not_client_stores() {
    let dir = tempfile::tempdir().unwrap();
    // Not SQLite at all.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    // SQLite, but another schema.
    let other = dir.path().join("other.sqlite");
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&other)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    sqlx::query("CREATE TABLE t (x INTEGER)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    for path in [junk, other] {
        let e = SqliteClientStore::open(&path, &passphrase(), options())
            .await
            .unwrap_err();
        assert!(
            matches!(e, OpenError::Corrupt(_)),
            "{}: {e:?}",
            path.display()
        );
    }
}

#[tokio::test]
async fn open_refuses_a_newer_schema_and_excessive_work() {
    let check = |tamper: &'static str, expected: fn(&OpenError) -> bool| async move {
        let (_dir, path, store) = fresh().await;
        store.close().await;
        let pool = raw(&path).await;
        sqlx::raw_sql(tamper).execute(&pool).await.unwrap();
        pool.close().await;
        let e = SqliteClientStore::open(&path, &passphrase(), options())
            .await
            .unwrap_err();
        assert!(expected(&e), "{tamper}: {e:?}");
    };
    assert_eq!(SCHEMA_VERSION, 1);
    check(
        "INSERT INTO schema_migrations (version, name) VALUES (2, 'future')",
        |e| matches!(e, OpenError::NewerSchema { found: 2, known: 1 }),
    )
    .await;
    // 20 is past MAX_SCRYPT_LOG_N (19): refused before any work is done.
    assert_eq!(MAX_SCRYPT_LOG_N, 19);
    check("UPDATE meta SET scrypt_log_n = 20", |e| {
        matches!(e, OpenError::WorkFactorTooHigh { log_n: 20, max: 19 })
    })
    .await;
    // An altered salt or key check reads as a wrong passphrase (as in age).
    check("UPDATE meta SET salt = zeroblob(32)", |e| {
        matches!(e, OpenError::WrongPassphrase)
    })
    .await;
    check("DELETE FROM meta", |e| matches!(e, OpenError::Corrupt(_))).await;
}
