//! Two `backchannel node run` processes on one PostgreSQL database, with
//! the integrating node killed or paused under load (the PostgreSQL issue's
//! takeover tests). Skipped without `BACKCHANNEL_TEST_DATABASE_URL`.
//!
//! Clients are given both nodes' addresses and fail over by themselves.
//! What is checked is what a client checks: every session verifies the log
//! across the handover (its follower re-hashes every leaf from the
//! checkpoint it held before into the one after, so a forked or rewritten
//! log is evidence), settles every receipt it was given (each acknowledged
//! envelope is in the verified tree, at its seq, with its leaf) and is never
//! owed a merge past `MAX_MERGE_DELAY_MS` (no evidence against an honest
//! failover); and the log read back has dense seqs and no envelope twice.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backchannel_client::net::NodeClient;
use backchannel_client::rooms::sync_all;
use backchannel_client::seal::Content;
use backchannel_client::session::Session;
use backchannel_client::store::MemoryClientStore;
use backchannel_codec::RoomId;
use backchannel_crypto::{PublicKey, Signer as _};
use backchannel_node::tls::Fingerprint;
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::{AccessList, Salt};
use backchannel_tlog::NodeOrigin;
use common::{PgDatabase, backchannel, now_ms, ok};

type Sess = Session<MemoryClientStore>;

/// A running `node run` with its API and admin addresses.
struct Node {
    child: Child,
    api: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start(dir: &Path, database: &str) -> Self {
        let mut child = backchannel()
            .args([
                "node",
                "run",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--checkpoint-interval-ms",
                "200",
                "--database",
                database,
                "--dir",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next = || lines.next().expect("a line").expect("utf-8");
        let first = next();
        let api = match first.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["listening", "on", addr, "fingerprint", _] => addr.parse().unwrap(),
            _ => panic!("unexpected line {first:?}"),
        };
        let second = next();
        let admin = match second.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["admin", "listening", "on", addr, ..] => addr.parse().unwrap(),
            _ => panic!("unexpected line {second:?}"),
        };
        Self { child, api, admin }
    }

    /// One gauge or counter of the node's `/metrics`.
    async fn metric(&self, name: &str) -> Option<u64> {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// The epoch this node holds the integrator lease under, once it does.
    async fn holds_lease(&self) -> u64 {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(e @ 1..) = self.metric("backchannel_integrator_lease_epoch").await {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the node takes the integrator lease")
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }
}

/// The node directory (one log key, one TLS identity for both nodes),
/// its fingerprint and log key.
fn node_dir(root: &Path) -> (std::path::PathBuf, Fingerprint, PublicKey) {
    let dir = root.join("node");
    ok(backchannel()
        .args(["node", "init", "--origin", "node.example", "--dir"])
        .arg(&dir));
    ok(backchannel()
        .args(["node", "creators", "add", "--dir"])
        .arg(&dir)
        .arg(hex::encode(key(OMAN_LEAD_DEVICE).public_key().as_bytes())));
    let out = ok(backchannel()
        .args(["node", "info", "--json", "--dir"])
        .arg(&dir));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let fingerprint = Fingerprint::from_hex(v["fingerprint"].as_str().unwrap()).unwrap();
    let log_key =
        PublicKey::from_bytes(&hex::decode(v["log_key"].as_str().unwrap()).unwrap()).unwrap();
    (dir, fingerprint, log_key)
}

/// The devices of the load, and the room each talks in.
const DEVICES: [u8; 4] = [
    OMAN_LEAD_DEVICE,
    US_HEAD_DEVICE,
    US_NEGOTIATOR_DEVICE,
    IRAN_HEAD_DEVICE,
];

fn room_of(t: &fixtures::Talks, label: u8) -> RoomId {
    if label == IRAN_HEAD_DEVICE {
        t.iran_caucus
    } else {
        t.us_caucus
    }
}

/// Opens the reference talks through `a` and a session for each of
/// [`DEVICES`], given `a,b` (every other one `b,a` when `mixed`), whose
/// rooms' groups are formed (through both nodes when `mixed`).
async fn sessions(
    t: &fixtures::Talks,
    list: &AccessList,
    (a, b): (SocketAddr, SocketAddr),
    mixed: bool,
    fingerprint: Fingerprint,
    log_key: PublicKey,
) -> Vec<Sess> {
    NodeClient::new(a, fingerprint, &key(OMAN_LEAD_DEVICE))
        .unwrap()
        .create_talks(list)
        .await
        .unwrap();
    let mut out = Vec::new();
    for (i, l) in DEVICES.into_iter().enumerate() {
        let addresses = if i % 2 == 0 || !mixed {
            format!("{a},{b}")
        } else {
            format!("{b},{a}")
        };
        out.push(
            Session::open(
                Arc::new(MemoryClientStore::default()),
                NodeClient::new(addresses, fingerprint, &key(l)).unwrap(),
                key(l),
                t.talks,
                &NodeOrigin::new("node.example").unwrap(),
                log_key,
            )
            .await
            .unwrap(),
        );
    }
    {
        let mut all: Vec<&mut Sess> = out.iter_mut().collect();
        sync_all(&mut all, list, now_ms() / 1000).await.unwrap();
    }
    for s in &mut out {
        s.receive(list).await.unwrap();
    }
    out
}

/// Sends `n` talk messages from `s`, one every `gap`, each acknowledged
/// (the client retries and fails over by itself); returns the seqs.
async fn load(s: &mut Sess, list: &AccessList, room: RoomId, n: usize, gap: Duration) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        let text = format!("message {i}");
        let seq = s
            .send(
                list,
                room,
                Content::Talk(text),
                Salt::generate(&mut rand_core::OsRng),
            )
            .await
            .unwrap_or_else(|e| panic!("message {i} was not acknowledged: {e}"));
        seqs.push(seq);
        tokio::time::sleep(gap).await;
    }
    seqs
}

/// Every room the session's device sits in.
fn my_rooms(t: &fixtures::Talks, list: &AccessList, s: &Sess) -> BTreeSet<RoomId> {
    let me = s.device().public_key().id();
    [t.record, t.us_caucus, t.iran_caucus]
        .into_iter()
        .filter(|r| list.seats_device(&me, *r))
        .collect()
}

/// What every client checks after the handover: its follower verifies the
/// log from the checkpoint it held before into the latest (re-hashing every
/// leaf), every receipt it holds settles (the acknowledged envelope is in
/// the tree at its seq), and no report ever names a receipt overdue.
async fn verify_after(t: &fixtures::Talks, list: &AccessList, sessions: &mut [Sess]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for s in sessions.iter_mut() {
        let rooms = my_rooms(t, list, s);
        loop {
            s.receive(list).await.unwrap();
            let (report, _) = s.verify_log(&rooms, now_ms()).await.unwrap();
            assert!(
                report.not_merged.is_empty(),
                "merge-delay evidence against an honest failover: {:?}",
                report.not_merged
            );
            assert!(report.withheld.is_empty(), "{:?}", report.withheld);
            if s.pending_receipts() == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "receipts never settled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(s.check_archive().await.unwrap().is_empty());
    }
}

/// The whole log as the database holds it: dense seqs from 0 (one order)
/// and no header twice (no envelope sequenced twice); seq → header hash.
fn whole_log(url: &str) -> BTreeMap<u64, String> {
    let rows = psql(
        url,
        "SELECT seq, encode(header_hash, 'hex') FROM envelopes ORDER BY seq",
    );
    let mut out = BTreeMap::new();
    let mut headers = BTreeSet::new();
    for (i, row) in rows.iter().enumerate() {
        let [seq, hash] = row.as_slice() else {
            panic!("{row:?}")
        };
        let seq: u64 = seq.parse().unwrap();
        assert_eq!(seq, i as u64, "dense seqs, one order");
        assert!(
            headers.insert(hash.clone()),
            "seq {seq} repeats an envelope"
        );
        out.insert(seq, hash.clone());
    }
    out
}

/// The rows `sql` selects, each as its columns.
fn psql(url: &str, sql: &str) -> Vec<Vec<String>> {
    let out = std::process::Command::new("psql")
        .args([url, "-At", "-F", " ", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').map(str::to_owned).collect())
        .collect()
}

/// Waits until the latest checkpoint served covers the whole log.
async fn integrated(client: &NodeClient, t: &fixtures::Talks) -> u64 {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let size = client.fetch(t.talks, 0, 1).await.unwrap().log_size;
            let (cp, _) = client.checkpoint(t.talks).await.unwrap();
            if cp == size {
                return size;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the log is integrated")
}

/// Samples the size of the checkpoint `client` is served, every 50 ms,
/// until `stop` is set, and once more then: (Unix ms when it was read,
/// size).
fn sample_checkpoints(
    client: NodeClient,
    talks: backchannel_codec::TalksId,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u64, u64)>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        loop {
            // One last sample once told to stop, after the caller saw the
            // whole log integrated.
            let last = stop.load(std::sync::atomic::Ordering::SeqCst);
            if let Ok((size, _)) = client.checkpoint(talks).await {
                samples.push((now_ms(), size));
            }
            if last {
                return samples;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// For every acknowledged seq, how long after its node timestamp a served
/// checkpoint first covered it (by the samples); asserts each is within
/// `MAX_MERGE_DELAY_MS` — what a client online throughout would have held
/// the node to — and returns the longest.
fn merge_delays(url: &str, acked: &[u64], samples: &[(u64, u64)]) -> u64 {
    let times: BTreeMap<u64, u64> = psql(url, "SELECT seq, node_time FROM envelopes")
        .into_iter()
        .map(|row| (row[0].parse().unwrap(), row[1].parse().unwrap()))
        .collect();
    let mut longest = 0;
    for seq in acked {
        let stamped = times[seq];
        let covered = samples
            .iter()
            .find(|(_, size)| *size > *seq)
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("seq {seq} was never covered by a sampled checkpoint"));
        let delay = covered.saturating_sub(stamped);
        assert!(
            delay < backchannel_tlog::MAX_MERGE_DELAY_MS,
            "seq {seq} was merged {delay} ms after its timestamp: merge-delay evidence"
        );
        longest = longest.max(delay);
    }
    longest
}

/// Runs the load of every session at once; returns each session's seqs.
async fn load_all(
    t: &fixtures::Talks,
    list: &AccessList,
    sessions: &mut [Sess],
    n: usize,
    gap: Duration,
) -> Vec<Vec<u64>> {
    let [s0, s1, s2, s3] = sessions else {
        panic!("four sessions")
    };
    let (r0, r1, r2, r3) = (
        room_of(t, DEVICES[0]),
        room_of(t, DEVICES[1]),
        room_of(t, DEVICES[2]),
        room_of(t, DEVICES[3]),
    );
    let (a, b, c, d) = tokio::join!(
        load(s0, list, r0, n, gap),
        load(s1, list, r1, n, gap),
        load(s2, list, r2, n, gap),
        load(s3, list, r3, n, gap),
    );
    vec![a, b, c, d]
}

/// Two nodes on one database, A started first so that it integrates, and
/// a session of each of [`DEVICES`] (given `a,b` and `b,a` in turn when
/// `mixed`, else `b,a`), each holding a checkpoint A signed.
struct Two {
    a: Node,
    b: Node,
    epoch_a: u64,
    t: fixtures::Talks,
    list: AccessList,
    sessions: Vec<Sess>,
}

async fn two_nodes(
    url: &str,
    dir: &Path,
    fingerprint: Fingerprint,
    log_key: PublicKey,
    mixed: bool,
) -> Two {
    let a = Node::start(dir, url);
    let epoch_a = a.holds_lease().await;
    let b = Node::start(dir, url);
    let t = fixtures::talks();
    let list = t.roster.implied_access_list(t.talks).unwrap();
    let order = if mixed {
        (a.api, b.api)
    } else {
        (b.api, a.api)
    };
    let mut sessions = sessions(&t, &list, order, mixed, fingerprint, log_key).await;
    for s in &mut sessions {
        let rooms = my_rooms(&t, &list, s);
        s.verify_log(&rooms, now_ms()).await.unwrap();
    }
    Two {
        a,
        b,
        epoch_a,
        t,
        list,
        sessions,
    }
}

/// The checkpoint sampler of a test, stopped by [`Sampler::finish`].
struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(u64, u64)>>,
}

impl Sampler {
    fn start(client: NodeClient, talks: backchannel_codec::TalksId) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = sample_checkpoints(client, talks, Arc::clone(&stop));
        Self { stop, task }
    }

    /// Call once the whole log is integrated: the samples, the last taken
    /// after this call.
    async fn finish(self) -> Vec<(u64, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// Nothing acknowledged is lost: the `n` acknowledged seqs (`seqs`, per
/// device) are distinct, each in the log, and each was covered by a
/// sampled checkpoint within the merge delay. Returns the longest delay.
fn check_acknowledged(url: &str, seqs: &[Vec<u64>], n: usize, samples: &[(u64, u64)]) -> u64 {
    let log = whole_log(url);
    let acked: Vec<u64> = seqs.iter().flatten().copied().collect();
    assert_eq!(acked.len(), n);
    let distinct: BTreeSet<u64> = acked.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        acked.len(),
        "an acknowledgement repeats a seq"
    );
    for seq in &acked {
        assert!(
            log.contains_key(seq),
            "acknowledged seq {seq} is not in the log"
        );
    }
    merge_delays(url, &acked, samples)
}

#[test]
fn the_integrator_killed_under_load_is_replaced_and_clients_fail_over() {
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (dir, fingerprint, log_key) = node_dir(root.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let Two {
            a,
            b,
            epoch_a,
            t,
            list,
            mut sessions,
        } = two_nodes(&db.url, &dir, fingerprint, log_key, true).await;
        // The served checkpoint, sampled throughout (the sampler fails over
        // like the clients).
        let sampler = Sampler::start(
            NodeClient::new(
                format!("{},{}", a.api, b.api),
                fingerprint,
                &key(US_NEGOTIATOR_DEVICE),
            )
            .unwrap(),
            t.talks,
        );

        // Load through both nodes; A is killed while it runs.
        let kill = async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            a.signal("KILL");
        };
        let (seqs, ()) = tokio::join!(
            load_all(&t, &list, &mut sessions, 60, Duration::from_millis(50)),
            kill
        );
        assert_eq!(
            a.metric("backchannel_integrator_lease_held").await,
            None,
            "A is gone"
        );

        // B took over, under a later epoch.
        let epoch_b = b.holds_lease().await;
        assert!(epoch_b > epoch_a, "{epoch_b} > {epoch_a}");

        // Every client now talks to B, having failed over by itself.
        for s in &sessions {
            assert_eq!(s.node().current_address(), b.api.to_string());
        }

        let client = NodeClient::new(b.api, fingerprint, &key(US_NEGOTIATOR_DEVICE)).unwrap();
        integrated(&client, &t).await;
        let samples = sampler.finish().await;
        let longest = check_acknowledged(&db.url, &seqs, 4 * 60, &samples);
        eprintln!("longest merge delay across the kill: {longest} ms");
        verify_after(&t, &list, &mut sessions).await;
    });
}

#[test]
fn a_paused_integrator_writes_nothing_after_the_takeover() {
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (dir, fingerprint, log_key) = node_dir(root.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The clients talk to B (a paused node holds their requests until
        // their read timeout; killing is the failover test's business).
        let Two {
            a,
            b,
            epoch_a,
            t,
            list,
            mut sessions,
        } = two_nodes(&db.url, &dir, fingerprint, log_key, false).await;
        let sampler = Sampler::start(
            NodeClient::new(b.api, fingerprint, &key(US_NEGOTIATOR_DEVICE)).unwrap(),
            t.talks,
        );

        // A is paused under load (wherever it is: between rounds, or
        // inside an integration transaction); the clients go on through
        // B, which takes the lease once A's expires.
        let pause = async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            a.signal("STOP");
        };
        let (mut seqs, ()) = tokio::join!(
            load_all(&t, &list, &mut sessions, 40, Duration::from_millis(50)),
            pause
        );
        let epoch_b = b.holds_lease().await;
        assert!(epoch_b > epoch_a, "{epoch_b} > {epoch_a}");
        let client = NodeClient::new(b.api, fingerprint, &key(US_NEGOTIATOR_DEVICE)).unwrap();
        integrated(&client, &t).await;
        let by_a = |rows: &[(u64, Option<u64>)]| -> Vec<u64> {
            rows.iter()
                .filter(|(_, e)| *e == Some(epoch_a))
                .map(|(s, _)| *s)
                .collect()
        };
        let before = by_a(&checkpoints(&db.url));

        // A wakes up while envelopes keep arriving (so it finds leaves to
        // integrate if its integrator runs before its lease keeper): what
        // it was about to write, or tries to, is refused, and it stops
        // integrating.
        let resume = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            a.signal("CONT");
        };
        let (more, ()) = tokio::join!(
            load_all(&t, &list, &mut sessions, 20, Duration::from_millis(50)),
            resume
        );
        seqs.extend(more);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        integrated(&client, &t).await;
        eprintln!(
            "integrations of A refused after it resumed: {:?}",
            a.metric("backchannel_integration_fenced_total").await
        );

        let rows = checkpoints(&db.url);
        // Every integration was fenced: only the first, empty checkpoint
        // names no lease epoch.
        for (size, epoch) in &rows {
            assert!(*size == 0 || epoch.is_some(), "checkpoint {size} unfenced");
        }
        assert_eq!(
            by_a(&rows),
            before,
            "A wrote checkpoints after the takeover"
        );
        // Checkpoints by epoch grow with size: every one A signed is below
        // every one signed after the takeover.
        let mut last_epoch = 0;
        for (size, epoch) in &rows {
            if let Some(e) = epoch {
                assert!(
                    *e >= last_epoch,
                    "checkpoint {size} under epoch {e} after {last_epoch}"
                );
                last_epoch = *e;
            }
        }
        assert_eq!(a.metric("backchannel_integrator_lease_held").await, Some(0));
        assert_eq!(b.metric("backchannel_integrator_lease_held").await, Some(1));
        let samples = sampler.finish().await;
        let longest = check_acknowledged(&db.url, &seqs, 4 * 60, &samples);
        eprintln!("longest merge delay across the pause: {longest} ms");
        verify_after(&t, &list, &mut sessions).await;
    });
}

/// Every checkpoint row of the database: (size, lease epoch it was written
/// under; `None` for the unfenced first checkpoint).
fn checkpoints(url: &str) -> Vec<(u64, Option<u64>)> {
    psql(
        url,
        "SELECT size, lease_epoch FROM checkpoints ORDER BY size",
    )
    .into_iter()
    .map(|row| {
        (
            row[0].parse().unwrap(),
            row.get(1).and_then(|e| e.parse().ok()),
        )
    })
    .collect()
}
