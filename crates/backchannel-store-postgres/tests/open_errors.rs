//! What `open` says when it cannot open: a bad URL, a bad schema name, an
//! unreachable server. None of these needs a running server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use backchannel_store_postgres::{OpenError, PostgresOptions, PostgresStore};

async fn open_err(url: &str, schema: Option<&str>) -> OpenError {
    let options = PostgresOptions {
        schema: schema.map(str::to_owned),
        acquire_timeout: Duration::from_secs(5),
        ..PostgresOptions::default()
    };
    match PostgresStore::open(url, options).await {
        Err(e) => e,
        Ok(_) => panic!("{url} with schema {schema:?} opened"),
    }
}

#[tokio::test]
async fn a_bad_url_is_refused() {
    for url in [
        "",
        "not a url",
        "mysql://root@localhost/db",
        "postgres://h:notaport/db",
    ] {
        let e = open_err(url, None).await;
        assert!(matches!(e, OpenError::Url(_)), "{url:?}: {e}");
    }
}

#[tokio::test]
async fn a_bad_schema_name_is_refused_before_connecting() {
    // The URL is unreachable on purpose: the name is checked first.
    let url = "postgres://nobody@127.0.0.1:1/none";
    for name in [
        "",
        "Upper",
        "1digit",
        "with-dash",
        "with space",
        "quote\"d",
        "pg_reserved",
        "ünïcode",
        &"a".repeat(64),
    ] {
        let e = open_err(url, Some(name)).await;
        assert!(matches!(e, OpenError::SchemaName(_)), "{name:?}: {e}");
    }
    // The longest and shortest good names get past the check (and then
    // fail to connect).
    for name in ["_", "a", "bc_test_0123456789abcdef", &"z".repeat(63)] {
        let e = open_err(url, Some(name)).await;
        assert!(matches!(e, OpenError::Unreachable(_)), "{name:?}: {e}");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_reported_as_such() {
    // Port 1 on loopback: nothing listens, the connection is refused.
    let e = open_err("postgres://nobody@127.0.0.1:1/none", Some("bc")).await;
    assert!(matches!(e, OpenError::Unreachable(_)), "{e}");
    assert!(e.to_string().contains("cannot reach"), "{e}");
}
