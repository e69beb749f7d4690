//! The node's HTTP API end to end over TLS on loopback: authentication,
//! authorisation, sequencing, delivery, bad input and limits. Every refused
//! request is checked for its status, its stable code, and that nothing
//! changed.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use backchannel_codec::{Decode, Encode, TalksId};
use backchannel_crypto::Signer;
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::header::MAX_BODY;
use backchannel_store::Store;
use common::*;
use serde_json::{Value, json};

/// Every API endpoint, with a body that would be valid in shape.
fn endpoints(talks: TalksId) -> Vec<(&'static str, String, Option<Body>)> {
    let hash = "00".repeat(32);
    vec![
        ("GET", path(talks, "/access-list"), None),
        ("GET", path(talks, "/access-list/changes"), None),
        (
            "POST",
            path(talks, "/access-list/changes"),
            Some(Body::Json(json!({"change": b64(&[1, 2, 3])}))),
        ),
        ("GET", path(talks, "/invitations"), None),
        (
            "POST",
            path(talks, "/invitations"),
            Some(Body::Json(json!({"invitation": b64(&[1])}))),
        ),
        (
            "POST",
            path(talks, "/enrol"),
            Some(Body::Json(json!({"token": b64(&[0; 32])}))),
        ),
        ("GET", path(talks, "/envelopes?from=0"), None),
        (
            "POST",
            path(talks, "/envelopes"),
            Some(Body::Raw(vec![0; 300])),
        ),
        ("GET", path(talks, "/stream?from=0"), None),
        ("GET", path(talks, "/checkpoint"), None),
        (
            "POST",
            path(talks, "/checkpoint/cosignatures"),
            Some(Body::Json(json!({"size": 0, "line": "x"}))),
        ),
        ("GET", path(talks, "/tile/8/0/000"), None),
        ("GET", path(talks, "/proof/inclusion?index=0&size=1"), None),
        ("GET", path(talks, "/proof/consistency?from=1&to=1"), None),
        (
            "POST",
            path(talks, "/blobs"),
            Some(Body::Json(
                json!({"hash": hash, "size": 1, "room": "00".repeat(16)}),
            )),
        ),
        ("GET", path(talks, &format!("/blobs/{hash}")), None),
        (
            "POST",
            path(talks, &format!("/blobs/{hash}/complete")),
            None,
        ),
        ("GET", path(talks, &format!("/blobs/{hash}/chunks/0")), None),
        (
            "PUT",
            path(talks, &format!("/blobs/{hash}/chunks/0")),
            Some(Body::Raw(vec![0])),
        ),
    ]
}

fn clone_body(b: &Option<Body>) -> Option<Body> {
    match b {
        Some(Body::Json(v)) => Some(Body::Json(v.clone())),
        Some(Body::Raw(r)) => Some(Body::Raw(r.clone())),
        None => None,
    }
}

#[tokio::test]
async fn an_outsider_gets_identical_404s_for_existing_and_unknown_talks() {
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    // Some state to find, were the node to leak it.
    let record = fixtures::talks().record;
    let mut mls = mls_rooms(&node, talks, &[record]).await;
    let us = node.client(US_HEAD_DEVICE);
    let a = us
        .post_raw(
            &path(talks, "/envelopes"),
            mls_envelope(&mut mls, US_HEAD_DEVICE, record, b"hello", [1; 16]),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let unknown = TalksId([0x99; 16]);
    let outsider = node.client(OUTSIDER);
    for ((method, existing, body), (_, missing, body2)) in
        endpoints(talks).into_iter().zip(endpoints(unknown))
    {
        let a = outsider.send(method, &existing, clone_body(&body)).await;
        let b = outsider.send(method, &missing, body2).await;
        assert_eq!(a.status, 404, "{method} {existing}: {a:?}");
        assert_eq!(a.code(), "not_found", "{method} {existing}");
        assert_eq!(
            (a.status, &a.bytes),
            (b.status, &b.bytes),
            "{method} {existing}: the answers differ"
        );
    }
}

#[tokio::test]
async fn a_connection_without_a_key_is_unauthenticated_everywhere() {
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let anon = node.anonymous();
    let mut all = endpoints(talks);
    all.push(("GET", "/v1/node".into(), None));
    all.push((
        "POST",
        "/v1/talks".into(),
        Some(Body::Json(json!({"access_list": b64(&[0])}))),
    ));
    for (method, p, body) in all {
        let a = anon.send(method, &p, body).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (401, "unauthenticated"),
            "{method} {p}"
        );
    }
}

#[tokio::test]
async fn creating_talks_needs_a_creator_key_and_a_valid_list() {
    let node = start(test_limits()).await;
    let list = reference_list();
    let body = json!({ "access_list": b64(&list.to_canonical_bytes()) });
    // Not a creator: 403, nothing created.
    let a = node
        .client(US_HEAD_DEVICE)
        .post("/v1/talks", body.clone())
        .await;
    assert_eq!((a.status, a.code().as_str()), (403, "forbidden"));
    assert!(
        node.node
            .store()
            .talks(list.talks())
            .await
            .unwrap()
            .is_none()
    );
    // Malformed lists.
    let creator = node.client(CREATOR);
    let check = |b: Value| {
        let creator = creator.clone();
        async move { creator.post("/v1/talks", b).await }
    };
    for bad in [
        json!({"access_list": "not base64!"}),
        json!({"access_list": b64(&[1, 2, 3])}),
        json!({"wrong": 1}),
    ] {
        let a = check(bad.clone()).await;
        assert_eq!((a.status, a.code().as_str()), (400, "malformed"), "{bad}");
    }
    // A list without a mediator's designated signer.
    let only_us: Vec<_> = list
        .entries()
        .iter()
        .filter(|e| e.party == fixtures::talks().us)
        .cloned()
        .collect();
    let no_mediator = backchannel_statement::AccessList::new(list.talks(), 0, only_us).unwrap();
    let a = check(json!({"access_list": b64(&no_mediator.to_canonical_bytes())})).await;
    assert_eq!((a.status, a.code().as_str()), (400, "malformed"));
    assert!(
        node.node
            .store()
            .talks(list.talks())
            .await
            .unwrap()
            .is_none()
    );
    // Then it works, once; a second time is 409.
    assert_eq!(check(body.clone()).await.status, 201);
    let a = check(body).await;
    assert_eq!((a.status, a.code().as_str()), (409, "exists"));
    // The access list is served with its hash.
    let a = node
        .client(IRAN_HEAD_DEVICE)
        .get(&path(list.talks(), "/access-list"))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(unb64(&a.json["access_list"]), list.to_canonical_bytes());
    assert_eq!(a.json["hash"], hex::encode(list.hash().0));
    assert_eq!(a.json["version"], 0);
}

#[tokio::test]
async fn envelopes_are_sequenced_once_and_delivered_to_their_rooms() {
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let t = fixtures::talks();
    let mut mls = mls_rooms(&node, talks, &[t.record, t.us_caucus]).await;
    // The rooms' MLS set-up (creations, commits, Welcomes) comes first in
    // the log; what this test sends starts at `base`.
    let base = node.node.store().log_size(talks).await.unwrap();
    let us = node.client(US_HEAD_DEVICE);
    let e0 = mls_envelope(&mut mls, US_HEAD_DEVICE, t.record, b"record", [1; 16]);
    let a = us.post_raw(&path(talks, "/envelopes"), e0.clone()).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json["seq"], base);
    // A retry (its reply was lost) gets the same answer.
    let again = us.post_raw(&path(talks, "/envelopes"), e0).await;
    assert_eq!(again, a);
    // The same idempotency key for another header: 409, nothing stored.
    let other = mls_envelope(&mut mls, US_HEAD_DEVICE, t.record, b"other", [1; 16]);
    let c = us.post_raw(&path(talks, "/envelopes"), other).await;
    assert_eq!((c.status, c.code().as_str()), (409, "idempotency_conflict"));
    // A caucus message.
    let e1 = mls_envelope(&mut mls, US_HEAD_DEVICE, t.us_caucus, b"caucus", [2; 16]);
    assert_eq!(
        us.post_raw(&path(talks, "/envelopes"), e1).await.json["seq"],
        base + 1
    );
    assert_eq!(node.node.store().log_size(talks).await.unwrap(), base + 2);

    // Iran sees the record room only; the US negotiator sees both.
    let page = |label, from: u64| {
        let c = node.client(label);
        async move {
            c.get(&path(talks, &format!("/envelopes?from={from}")))
                .await
        }
    };
    let iran = page(IRAN_HEAD_DEVICE, base).await;
    let seqs: Vec<_> = iran.json["envelopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![base]);
    assert_eq!(iran.json["next"], base + 2);
    assert_eq!(iran.json["log_size"], base + 2);
    let neg = page(US_NEGOTIATOR_DEVICE, base).await;
    assert_eq!(neg.json["envelopes"].as_array().unwrap().len(), 2);
    // Every delivered envelope carries its receipt, which verifies.
    let first = &neg.json["envelopes"][0];
    let receipt =
        backchannel_tlog::Receipt::from_canonical_bytes(&unb64(&first["receipt"])).unwrap();
    assert_eq!(
        receipt.index(),
        0,
        "its index in its batch (it was alone in it)"
    );
    // A talks authority (not a device) reads nothing.
    let auth = page(US_TALKS, 0).await;
    assert_eq!(auth.json["envelopes"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn bad_envelopes_get_their_status_and_code_and_change_nothing() {
    // Every check exercised here comes before the node reads the body as
    // MLS (`submit::validate` and the header's decoding), so these
    // envelopes carry padded plaintext, in a talks with no MLS group.
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let t = fixtures::talks();
    let us = node.client(US_HEAD_DEVICE);
    let dev = key(US_HEAD_DEVICE);
    let mut bad_sig = envelope(&dev, t.record, b"x", [3; 16]);
    bad_sig[200] ^= 1; // inside the signature
    let mut bad_body = envelope(&dev, t.record, b"x", [3; 16]);
    let n = bad_body.len();
    bad_body[n - 1] ^= 1;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("too short", vec![0; 10], 400, "malformed"),
        ("garbage header", vec![0xff; 223 + 1024], 400, "malformed"),
        ("bad signature", bad_sig, 401, "bad_envelope_signature"),
        (
            "another sender",
            envelope_with(&key(US_NEGOTIATOR_DEVICE), t.record, b"x", [3; 16], |_| {}),
            403,
            "sender_not_connection_key",
        ),
        (
            "a room not ours",
            envelope(&dev, t.iran_caucus, b"x", [3; 16]),
            403,
            "forbidden",
        ),
        (
            "other talks",
            envelope_with(&dev, t.record, b"x", [3; 16], |h| {
                h.talks = TalksId([5; 16])
            }),
            400,
            "malformed",
        ),
        ("body hash", bad_body, 400, "body_mismatch"),
        (
            "a body length that is no size bucket",
            {
                let mut e = envelope_with(&dev, t.record, b"x", [3; 16], |h| h.body_len = 1000);
                e.truncate(223 + 1000);
                e
            },
            400,
            "malformed",
        ),
        (
            "a body shorter than its header says",
            {
                let mut e = envelope(&dev, t.record, b"x", [3; 16]);
                e.truncate(223 + 512);
                e
            },
            400,
            "body_mismatch",
        ),
        (
            "a node tick from a client",
            envelope_with(&dev, t.record, b"x", [3; 16], |h| {
                h.kind = backchannel_statement::Kind::NodeTick
            }),
            403,
            "forbidden",
        ),
        (
            "body too large",
            {
                let mut e = envelope(&dev, t.record, b"x", [3; 16]);
                e.resize(223 + MAX_BODY as usize + 1, 0);
                e
            },
            413,
            "too_large",
        ),
    ];
    for (name, body, status, code) in cases {
        let a = us.post_raw(&path(talks, "/envelopes"), body).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (status, code),
            "{name}: {a:?}"
        );
        assert_eq!(
            node.node.store().log_size(talks).await.unwrap(),
            0,
            "{name}"
        );
    }
}

#[tokio::test]
async fn requests_per_key_are_rate_limited() {
    let node = start(backchannel_node::limits::Limits {
        requests_per_second: 1,
        request_burst: 2,
        ..test_limits()
    })
    .await;
    let c = node.client(OUTSIDER);
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(c.get("/v1/node").await.status);
        }
        v
    };
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    let a = c.get("/v1/node").await;
    assert_eq!(a.code(), "rate_limited");
    // Another key has its own budget.
    assert_eq!(
        node.client(US_HEAD_DEVICE).get("/v1/node").await.status,
        200
    );
    // Time refills it.
    node.clock
        .0
        .fetch_add(1000, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(c.get("/v1/node").await.status, 200);
}

#[tokio::test]
async fn connection_attempts_per_source_are_limited() {
    let node = start(backchannel_node::limits::Limits {
        connections_per_second: 1,
        connection_burst: 1,
        ..test_limits()
    })
    .await;
    // Separate clients open separate connections.
    let mut ok = 0;
    let mut refused = 0;
    for _ in 0..4 {
        let c = node.client(US_HEAD_DEVICE);
        match c.http.get(format!("{}/v1/node", c.base)).send().await {
            Ok(r) if r.status() == 200 => ok += 1,
            _ => refused += 1,
        }
    }
    assert_eq!((ok, refused), (2, 2));
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let node = start(test_limits()).await;
    let c = node.client(US_HEAD_DEVICE);
    let a = c.get("/v2/nothing").await;
    assert_eq!((a.status, a.code().as_str()), (404, "not_found"));
    let a = c.send("DELETE", "/v1/node", None).await;
    assert_eq!((a.status, a.code().as_str()), (405, "method_not_allowed"));
    let a = c.get("/v1/talks/not-hex/access-list").await;
    assert_eq!((a.status, a.code().as_str()), (404, "not_found"));
}

#[tokio::test]
async fn node_info_names_the_log_key() {
    let node = start(test_limits()).await;
    let a = node.client(OUTSIDER).get("/v1/node").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json["origin"], "node.example");
    assert_eq!(
        a.json["log_key"],
        hex::encode(key(NODE_LOG).public_key().as_bytes())
    );
}

/// A raw TLS connection to the node as `label`.
async fn raw_tls(
    node: &TestNode<backchannel_store::memory::MemoryStore>,
    label: u8,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(node.addr).await?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_tls(label, node.fingerprint)))
        .connect(
            rustls::pki_types::ServerName::try_from("node.invalid").expect("name"),
            tcp,
        )
        .await
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = start(backchannel_node::limits::Limits {
        header_timeout: std::time::Duration::from_millis(300),
        ..test_limits()
    })
    .await;
    let talks = node.open_reference_talks().await;
    let mut s = raw_tls(&node, US_HEAD_DEVICE).await.expect("tls");
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: node.invalid\r\ncontent-type: application/octet-stream\r\ncontent-length: 1247\r\n\r\n",
        path(talks, "/envelopes")
    );
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(&[0u8; 10]).await.expect("some body");
    // Then nothing: the node answers 408 once the body timeout passes.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_end(&mut answer),
    )
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"timeout\""), "{text}");
    assert_eq!(node.node.store().log_size(talks).await.expect("size"), 0);
}

#[tokio::test]
async fn connections_per_source_address_are_capped() {
    let node = start(backchannel_node::limits::Limits {
        connections_per_source: 2,
        ..test_limits()
    })
    .await;
    let a = raw_tls(&node, US_HEAD_DEVICE).await.expect("first");
    let b = raw_tls(&node, US_HEAD_DEVICE).await.expect("second");
    assert!(
        raw_tls(&node, US_HEAD_DEVICE).await.is_err(),
        "a third connection from one address"
    );
    drop(a);
    let mut ok = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if raw_tls(&node, US_HEAD_DEVICE).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "closing a connection did not free its slot");
    drop(b);
}

/// Envelope submission validates against the node's cached access list,
/// and the store checks, in the sequencing transaction, that this list is
/// still the current one: a list replaced behind the node's back (by
/// another node on the same database; here, the store directly) is never
/// outrun. A device taken off is refused and nothing of it is written; a
/// device put on is admitted at once.
#[tokio::test]
async fn a_cached_access_list_never_outruns_a_replaced_one() {
    let node = start(test_limits()).await;
    let talks = node.open_reference_talks().await;
    let t = fixtures::talks();
    let ack = |label: u8, idem: u8| {
        envelope_with(&key(label), t.record, b"seen", [idem; 16], |h| {
            h.kind = backchannel_statement::Kind::Ack(0)
        })
    };
    let us = node.client(US_HEAD_DEVICE);
    // Admitted, and the list is now cached.
    let a = us
        .post_raw(&path(talks, "/envelopes"), ack(US_HEAD_DEVICE, 1))
        .await;
    assert_eq!(a.status, 200, "{a:?}");

    // The US head's device off the list, a second US negotiator device on.
    let store = node.node.store().clone();
    let gone = key(US_HEAD_DEVICE).public_key().id();
    let added = backchannel_statement::AccessEntry::new(
        key(0x69).public_key(),
        fixtures::PRINCIPALS[3],
        t.us,
        vec![t.record],
        backchannel_statement::access_list::FLAG_DEVICE,
    )
    .unwrap();
    replace_list(&*store, talks, &[gone], vec![added]).await;
    let size = store.log_size(talks).await.unwrap();

    // The cached list still admits the removed device: the store does not.
    let a = us
        .post_raw(&path(talks, "/envelopes"), ack(US_HEAD_DEVICE, 2))
        .await;
    assert_eq!((a.status, a.code().as_str()), (404, "not_found"), "{a:?}");
    assert_eq!(
        store.log_size(talks).await.unwrap(),
        size,
        "nothing written"
    );
    // Off the list, it is not found for anything, a retry included.
    let again = us
        .post_raw(&path(talks, "/envelopes"), ack(US_HEAD_DEVICE, 1))
        .await;
    assert_eq!(again.status, 404, "{again:?}");
    // The new device, unknown to the cached list, is admitted.
    let a = node
        .client(0x69)
        .post_raw(&path(talks, "/envelopes"), ack(0x69, 3))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json["seq"], size);

    // The new device taken off again, behind the node's back: its first
    // request after that, a retry of what landed, is not found either
    // (the store checks the list before it looks the retry up).
    replace_list(&*store, talks, &[key(0x69).public_key().id()], Vec::new()).await;
    let again = node
        .client(0x69)
        .post_raw(&path(talks, "/envelopes"), ack(0x69, 3))
        .await;
    assert_eq!(again.status, 404, "{again:?}");
}
