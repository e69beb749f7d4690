//! `backchannel blob put|get` and `backchannel evidence export|verify-statement`,
//! run as the built binary against a real node: three homes (Oman
//! mediating between the United States and Iran) seated as in the README.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{backchannel, ok};

/// The homes' passphrase.
const HOME_PASSPHRASE: &str = "home passphrase for tests";
/// The node's origin.
const ORIGIN: &str = "blobs.example.org";
/// The node's largest blob, in these tests.
const MAX_BLOB: u64 = 64 * 1024;
/// Each party's blob quota, in these tests.
const QUOTA: u64 = 100 * 1024;

/// A running `node run`, killed when dropped.
struct Node {
    child: Child,
    addr: SocketAddr,
    fingerprint: String,
}

impl Node {
    /// Starts the node of `dir` on `listen` (port 0: any).
    fn start(dir: &Path, listen: &str) -> Self {
        let mut child = backchannel()
            .args(["node", "run", "--listen", listen])
            .args(["--checkpoint-interval-ms", "50"])
            .args(["--max-blob-bytes", &MAX_BLOB.to_string()])
            .args(["--party-blob-quota-bytes", &QUOTA.to_string()])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let (addr, fingerprint) = common::listening(&mut child).expect("the node listens");
        Self {
            child,
            addr,
            fingerprint,
        }
    }

    /// Sends SIGTERM and waits for the node to close its database and exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        for _ in 0..300 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the node did not exit within 30 s of SIGTERM");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Talks on a fresh node, every party seated and accepted.
struct Talks {
    tmp: tempfile::TempDir,
    node: Option<Node>,
    log_key: String,
    talks: String,
    /// The seq of each party's acceptance.
    us_accepted: u64,
    ir_accepted: u64,
}

/// The command on the home `name` of `tmp`.
fn home_cmd(tmp: &Path, name: &str) -> Command {
    let mut cmd = backchannel();
    cmd.env("BACKCHANNEL_PASSPHRASE", HOME_PASSPHRASE)
        .arg("--home")
        .arg(tmp.join(name))
        .current_dir(tmp)
        .stdin(Stdio::null());
    cmd
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `cmd`, which must fail with `code` and say `holds` on stderr.
#[track_caller]
fn fails(cmd: &mut Command, code: i32, holds: &str) -> String {
    let out = cmd.output().expect("runs");
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?}\nstdout: {}\nstderr: {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains(holds), "stderr does not say {holds:?}: {err}");
    err
}

impl Talks {
    fn setup() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let node_dir = t.join("node");
        ok(backchannel()
            .args(["node", "init", "--origin", ORIGIN, "--json", "--dir"])
            .arg(&node_dir));
        let info = json(&ok(backchannel()
            .args(["node", "info", "--json", "--dir"])
            .arg(&node_dir)));
        let log_key = info["log_key"].as_str().unwrap().to_owned();
        for h in ["om", "us", "ir"] {
            ok(home_cmd(t, h).args(["home", "init"]));
        }
        ok(home_cmd(t, "om").args(["keys", "generate", "--kind", "authority"]));
        let om_key = ok(home_cmd(t, "om").args([
            "keys",
            "export-public",
            "--label",
            "default",
            "--kind",
            "authority",
        ]));
        ok(backchannel()
            .args(["node", "creators", "add", "--dir"])
            .arg(&node_dir)
            .arg(om_key.trim()));
        let node = Node::start(&node_dir, "127.0.0.1:0");
        let opened = json(&ok(home_cmd(t, "om")
            .args(["talks", "open", "--node", &node.addr.to_string()])
            .args(["--fingerprint", &node.fingerprint, "--origin", ORIGIN])
            .args(["--log-key", &log_key, "--name", "Sultanate of Oman"])
            .args(["--member", "Omani lead mediator", "--json"])));
        let talks = opened["talks"].as_str().unwrap().to_owned();
        ok(home_cmd(t, "om").args(["talks", "invite", "--out", "us.inv"]));
        ok(home_cmd(t, "om").args(["talks", "invite", "--out", "ir.inv"]));
        ok(home_cmd(t, "us").args([
            "talks",
            "join",
            "--invitation",
            "us.inv",
            "--name",
            "United States",
            "--member",
            "US envoy",
        ]));
        ok(home_cmd(t, "ir").args([
            "talks",
            "join",
            "--invitation",
            "ir.inv",
            "--name",
            "Islamic Republic of Iran",
            "--member",
            "Iranian deputy foreign minister",
        ]));
        ok(home_cmd(t, "om").args(["talks", "seat"]));
        // Both parties accept at once: each co-signs the seating change the
        // other waits for.
        let accept = |h: &str| {
            home_cmd(t, h)
                .args(["talks", "accept", "--wait", "60", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (us, ir) = (accept("us"), accept("ir"));
        // The mediator seats again: it adds every device to the rooms' MLS
        // groups once they have key packages, then posts the roster.
        ok(home_cmd(t, "om").args(["talks", "seat", "--wait", "60"]));
        let seq_of = |child: Child| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "accept: {}", stderr(&out));
            json(&String::from_utf8_lossy(&out.stdout))["seq"]
                .as_u64()
                .unwrap()
        };
        let (us_accepted, ir_accepted) = (seq_of(us), seq_of(ir));
        // Let the node integrate the acceptances into a checkpoint.
        std::thread::sleep(Duration::from_millis(500));
        Self {
            tmp,
            node: Some(node),
            log_key,
            talks,
            us_accepted,
            ir_accepted,
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn home(&self, name: &str) -> Command {
        home_cmd(self.dir(), name)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    fn verify_statement(&self, file: &Path) -> Command {
        let mut cmd = backchannel();
        cmd.args(["evidence", "verify-statement", "--log-key", &self.log_key])
            .args(["--origin", ORIGIN])
            .arg(file);
        cmd
    }
}

#[test]
fn blobs_go_round_trip_between_homes_and_bad_inputs_are_named() {
    let t = Talks::setup();
    let content: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(t.path("brief.pdf"), &content).unwrap();

    // US shares a file in its caucus; Oman, also in it, fetches it (the
    // record room takes formal statements only, and the parties share no
    // other room).
    let put = json(&ok(t.home("us").args([
        "blob",
        "put",
        "--room",
        "caucus",
        "brief.pdf",
        "--json",
    ])));
    let hash = put["hash"].as_str().unwrap().to_owned();
    // The blob is the file encrypted under a key only the room's MLS group
    // carries: its address is not the file's hash.
    assert_ne!(hash, backchannel_crypto::sha256(&content).to_hex());
    assert_eq!(put["size"].as_u64(), Some(content.len() as u64));
    let announced = put["seq"].as_u64().unwrap();
    assert_eq!(put["room"], "Caucus: Sultanate of Oman with United States");

    let got = json(&ok(t.home("om").args([
        "blob",
        "get",
        &hash,
        "--out",
        "fetched.pdf",
        "--json",
    ])));
    assert_eq!(got["size"].as_u64(), Some(content.len() as u64));
    assert_eq!(std::fs::read(t.path("fetched.pdf")).unwrap(), content);
    // Iran, not in that room, has no announcement and so no key.
    fails(
        t.home("ir")
            .args(["blob", "get", &hash, "--out", "not-iran.pdf"]),
        1,
        &format!("no announcement of blob {hash}"),
    );
    assert!(!t.path("not-iran.pdf").exists());

    // The announcement reached the room as talk.
    let read = ok(t.home("om").args(["read", "--all", "--json"]));
    let line = read
        .lines()
        .map(json)
        .find(|l| l["seq"].as_u64() == Some(announced))
        .expect("the announcement is archived");
    assert_eq!(line["kind"], "attachment");
    assert_eq!(
        line["text"],
        format!(
            "attachment brief.pdf ({} bytes): `backchannel blob get {hash} --out FILE`",
            content.len()
        )
    );

    // An existing --out is kept unless --force.
    fails(
        t.home("om")
            .args(["blob", "get", &hash, "--out", "fetched.pdf"]),
        1,
        "exists",
    );
    std::fs::write(t.path("fetched.pdf"), b"old").unwrap();
    ok(t.home("om")
        .args(["blob", "get", &hash, "--out", "fetched.pdf", "--force"]));
    assert_eq!(std::fs::read(t.path("fetched.pdf")).unwrap(), content);

    // Unknown and malformed hashes, a missing file.
    let unknown = "ab".repeat(32);
    fails(
        t.home("ir")
            .args(["blob", "get", &unknown, "--out", "x.bin"]),
        1,
        &format!("no announcement of blob {unknown}"),
    );
    assert!(!t.path("x.bin").exists());
    fails(
        t.home("ir").args(["blob", "get", "abc", "--out", "x.bin"]),
        1,
        "not a blob hash",
    );
    fails(
        t.home("us")
            .args(["blob", "put", "--room", "caucus", "missing.pdf"]),
        1,
        "missing.pdf",
    );

    // Over the node's largest blob: refused before any upload.
    std::fs::write(t.path("big.bin"), vec![1u8; MAX_BLOB as usize + 1]).unwrap();
    fails(
        t.home("us")
            .args(["blob", "put", "--room", "caucus", "big.bin"]),
        1,
        &format!("blobs of {MAX_BLOB}"),
    );

    // Over the party's quota (50 000 bytes held, 60 000 more asked for).
    std::fs::write(t.path("annex.bin"), vec![2u8; 60_000]).unwrap();
    fails(
        t.home("us")
            .args(["blob", "put", "--room", "caucus", "annex.bin"]),
        1,
        "quota",
    );
    // Iran's quota is its own.
    ok(t.home("ir")
        .args(["blob", "put", "--room", "caucus", "annex.bin"]));
}

/// The archive of home `h`, `read --all --json`, one value a line.
fn read_all(t: &Talks, h: &str) -> Vec<serde_json::Value> {
    ok(t.home(h).args(["read", "--all", "--json"]))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(json)
        .collect()
}

#[test]
fn a_file_for_the_record_room_is_refused_before_any_upload() {
    let t = Talks::setup();
    // More than half the party's quota: had a refused put uploaded it, the
    // same file would not fit again.
    let content = vec![3u8; 60_000];
    std::fs::write(t.path("annex.bin"), &content).unwrap();
    let shown = json(&ok(t.home("us").args(["talks", "show", "--json"])));
    let record = shown["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "Record")
        .unwrap()["room"]
        .as_str()
        .unwrap()
        .to_owned();
    // Every home up to date (its rooms' MLS groups complete), then one
    // envelope the node takes: the log's last seq before the refusals.
    for _ in 0..2 {
        for h in ["om", "us", "ir"] {
            read_all(&t, h);
        }
    }
    let last = json(&ok(t.home("us").args([
        "send",
        "--room",
        "caucus",
        "A file follows.",
        "--json",
    ])))["seq"]
        .as_u64()
        .unwrap();
    let archives: Vec<_> = ["om", "us", "ir"]
        .into_iter()
        .map(|h| (h, read_all(&t, h)))
        .collect();
    for room in ["record", "Record", &record] {
        let err = fails(
            t.home("us")
                .args(["blob", "put", "--room", room, "annex.bin"]),
            1,
            "the record room carries formal signed statements only",
        );
        assert!(err.contains("backchannel talks show"), "{err}");
    }
    // Nothing announced: every archive as it was.
    for (h, before) in &archives {
        assert_eq!(&read_all(&t, h), before, "{h}'s archive changed");
    }
    // Nothing uploaded: the whole quota is still there for it, in a room
    // that takes files; and nothing logged: its announcement takes the
    // next seq.
    let put = json(&ok(t.home("us").args([
        "blob",
        "put",
        "--room",
        "caucus",
        "annex.bin",
        "--json",
    ])));
    assert_eq!(put["seq"].as_u64(), Some(last + 1), "{put}");
    ok(t.home("om").args([
        "blob",
        "get",
        put["hash"].as_str().unwrap(),
        "--out",
        "annex.out",
    ]));
    assert_eq!(std::fs::read(t.path("annex.out")).unwrap(), content);
}

/// The stored bytes of the (one) blob chunk in the node's database.
fn blob_chunk(db: &Path) -> Vec<u8> {
    use sqlx::Connection as _;
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let bytes: Vec<u8> = sqlx::query_scalar("SELECT bytes FROM blob_chunks")
            .fetch_one(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        bytes
    })
}

/// Flips one byte of every copy of `marker` in `file`; how many.
fn flip_all(file: &Path, marker: &[u8]) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let mut n = 0;
    let mut i = 0;
    while i + marker.len() <= bytes.len() {
        if &bytes[i..i + marker.len()] == marker {
            bytes[i] ^= 0x20;
            n += 1;
            i += marker.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(file, bytes).unwrap();
    n
}

#[test]
fn a_served_blob_that_does_not_hash_to_its_address_is_refused() {
    let mut t = Talks::setup();
    let content = b"Draft heads of agreement, paragraph 7. ".repeat(100);
    std::fs::write(t.path("heads.txt"), &content).unwrap();
    let put = json(&ok(t.home("us").args([
        "blob",
        "put",
        "--room",
        "caucus",
        "heads.txt",
        "--json",
    ])));
    let hash = put["hash"].as_str().unwrap().to_owned();
    // Oman shares the US caucus.
    ok(t.home("om")
        .args(["blob", "get", &hash, "--out", "first.txt"]));

    // The node's database is changed behind its back: the chunk's bytes.
    let node = t.node.take().unwrap();
    let addr = node.addr;
    node.stop();
    let db = t.path("node").join("node.db");
    let wal = t.path("node").join("node.db-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "the node left a write-ahead log behind"
    );
    // The file's text is nowhere in the database: only its ciphertext.
    assert_eq!(
        flip_all(&db, b"paragraph 7"),
        0,
        "the plaintext is in node.db"
    );
    let chunk = blob_chunk(&db);
    assert!(
        flip_all(&db, &chunk[100..132]) > 0,
        "the chunk is in node.db"
    );
    // Restarted on the same address: the homes' pins still hold.
    t.node = Some(Node::start(&t.path("node"), &addr.to_string()));

    let err = fails(
        t.home("om")
            .args(["blob", "get", &hash, "--out", "second.txt"]),
        3,
        &hash,
    );
    assert!(err.contains("hash"), "{err}");
    assert!(!t.path("second.txt").exists(), "nothing is written");
}

#[test]
fn evidence_is_exported_as_the_rules_allow_once_final_and_verifies_offline() {
    let t = Talks::setup();
    let us_seq = t.us_accepted.to_string();
    let ir_seq = t.ir_accepted.to_string();

    // Before every party verified (and so cosigned), nothing is final.
    ok(t.home("us").args(["log", "verify"]));
    let err = fails(
        t.home("us").args([
            "evidence",
            "export",
            "--seq",
            &us_seq,
            "--out",
            "early.bundle",
        ]),
        1,
        "not final",
    );
    assert!(err.contains("log verify"), "{err}");
    assert!(!t.path("early.bundle").exists());

    ok(t.home("ir").args(["log", "verify"]));
    ok(t.home("om").args(["log", "verify"]));

    // US exports its own acceptance: own statements → own archive.
    let exported = json(&ok(t.home("us").args([
        "evidence",
        "export",
        "--seq",
        &us_seq,
        "--out",
        "us.bundle",
        "--json",
    ])));
    assert_eq!(exported["statement_type"], "acceptance");
    assert_eq!(exported["party_name"], "United States");
    assert_eq!(exported["seq"].as_u64(), Some(t.us_accepted));
    assert_eq!(exported["cosigned_by"].as_array().unwrap().len(), 3);
    assert_eq!(exported["markings"]["conveyance"], "mediator only");
    assert_eq!(exported["markings"]["attribution"], "formal");
    // Never over an existing file.
    fails(
        t.home("us")
            .args(["evidence", "export", "--seq", &us_seq, "--out", "us.bundle"]),
        1,
        "exists",
    );

    // Anyone verifies it offline, with the log key and the origin only.
    let bundle = t.path("us.bundle");
    let verified = json(&ok(t.verify_statement(&bundle).arg("--json")));
    assert_eq!(verified["statement_type"], "acceptance");
    assert_eq!(verified["party_name"], "United States");
    assert_eq!(verified["seq"].as_u64(), Some(t.us_accepted));
    assert_eq!(verified["talks"], t.talks);
    assert_eq!(verified["final"], true);
    assert_eq!(verified["parties_cosigning"].as_u64(), Some(3));
    assert_eq!(verified["markings"]["conveyance"], "mediator only");
    assert_eq!(
        verified["checkpoint_size"], exported["checkpoint_size"],
        "{verified}"
    );
    let text = ok(&mut t.verify_statement(&bundle));
    assert!(text.starts_with("VERIFIED"), "{text}");
    assert!(text.contains("markings: mediator only"), "{text}");

    // One byte changed anywhere important and it no longer verifies.
    let good = std::fs::read(&bundle).unwrap();
    for at in [20, good.len() / 2, good.len() - 10] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let file = t.path(&format!("bad-{at}.bundle"));
        std::fs::write(&file, bad).unwrap();
        let out = t.verify_statement(&file).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "a bundle with byte {at} changed verified: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Another log key: refused.
    let mut other = backchannel();
    other
        .args([
            "evidence",
            "verify-statement",
            "--log-key",
            &"11".repeat(32),
        ])
        .args(["--origin", ORIGIN])
        .arg(&bundle);
    assert_eq!(other.output().unwrap().status.code(), Some(1));

    // US may not export Iran's acceptance: each party exports its own
    // statements only.
    let err = fails(
        t.home("us")
            .args(["evidence", "export", "--seq", &ir_seq, "--out", "ir.bundle"]),
        1,
        "ground rules",
    );
    assert!(err.contains("own statements → own archive"), "{err}");
    assert!(!t.path("ir.bundle").exists());
    // Nor its own to an arbiter: the rule names its own archive only.
    fails(
        t.home("us").args([
            "evidence",
            "export",
            "--seq",
            &us_seq,
            "--out",
            "arbiter.bundle",
            "--to",
            "arbiter",
        ]),
        1,
        "ground rules",
    );
    // The mediator has no export rule at all.
    let err = fails(
        t.home("om")
            .args(["evidence", "export", "--seq", &us_seq, "--out", "om.bundle"]),
        1,
        "ground rules",
    );
    assert!(err.contains("no export rule"), "{err}");
    // Iran exports its own.
    ok(t.home("ir")
        .args(["evidence", "export", "--seq", &ir_seq, "--out", "ir.bundle"]));
    ok(&mut t.verify_statement(&t.path("ir.bundle")));
}
