//! The participant commands end to end, as a mediator and two parties run
//! them: a real `backchannel node run`, three homes, and the whole flow
//! (open, invite, join, seat, accept, send, read, follow, log verify, talks
//! verify, talks show) through the binary. Then what must survive or be
//! caught: a node SIGKILLed mid-run and restarted on its address (the homes
//! resume with no gap and no duplicate, every acknowledged send there), a
//! stored envelope rewritten or deleted behind the node's back (`log
//! verify` exits 3 naming the seq), and bad inputs (a clear error, a
//! nonzero exit, nothing changed). Then a member added after the roster
//! and removed, and the talks' lifecycle.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backchannel_codec::RoomId;
use backchannel_crypto::sha256;
use common::{backchannel, now_ms, ok, rfc3339};
use serde_json::Value;
use sqlx::Connection as _;

/// The node's origin.
const ORIGIN: &str = "smoke.example.org";
/// The passphrase of every home.
const HOME_PASSPHRASE: &str = "home passphrase";
/// The three homes.
const OM: &str = "om";
const US: &str = "us";
const IR: &str = "ir";
/// Exit codes.
const FAILED: i32 = 1;
const USAGE: i32 = 2;
const EVIDENCE: i32 = 3;
/// A talks id no home takes part in.
const UNKNOWN_TALKS: &str = "0123456789abcdef0123456789abcdef";

// --- Running the binary ------------------------------------------------------

/// What one command did.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// `--json` output of one object per line.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// Asserts the command failed with `code`, saying `what` on stderr.
    fn refused(&self, code: i32, what: &str) {
        assert_eq!(self.code, Some(code), "{self:?}");
        assert!(
            self.stderr.contains(what),
            "stderr does not say {what:?}: {self:?}"
        );
    }
}

fn run(cmd: &mut Command) -> Out {
    let out = cmd.output().expect("runs");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `cmd`, which must succeed; its stdout as JSON.
fn ok_json(cmd: &mut Command) -> Value {
    let out = ok(cmd);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Whether `message` names `seq` (and not a longer number starting with it).
fn names(message: &str, seq: u64) -> bool {
    let needle = format!("seq {seq}");
    message.match_indices(&needle).any(|(i, _)| {
        !message[i + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

fn words(code: &str) -> String {
    code.split_whitespace()
        .filter(|w| *w != "/")
        .collect::<Vec<_>>()
        .join(" ")
}

// --- The node ----------------------------------------------------------------

/// A running `backchannel node run`, SIGKILLed when dropped.
struct Node {
    child: Child,
    addr: SocketAddr,
    fingerprint: String,
}

impl Node {
    /// `node run` on `dir` listening on `listen` (on the PostgreSQL
    /// `database` if any); `None` if it exited before listening (the
    /// address is taken).
    fn spawn(dir: &Path, listen: &str, database: Option<&str>) -> Option<Node> {
        let mut child = backchannel()
            .args(["node", "run", "--listen", listen])
            .args(database.map(|d| ["--database", d]).into_iter().flatten())
            .args(["--checkpoint-interval-ms", "50"])
            // Every command is a new connection from 127.0.0.1.
            .args(["--connections-per-second", "1000"])
            .args(["--connection-burst", "1000"])
            .args(["--requests-per-second", "1000"])
            .args(["--request-burst", "1000"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        match common::listening(&mut child) {
            Some((addr, fingerprint)) => Some(Node {
                addr,
                fingerprint,
                child,
            }),
            None => {
                let _ = child.wait();
                None
            }
        }
    }

    /// `node run` on `dir` at `listen`, retrying while the port is taken.
    fn start(dir: &Path, listen: &str, database: Option<&str>) -> Node {
        for _ in 0..50 {
            if let Some(node) = Node::spawn(dir, listen, database) {
                return node;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the node could not listen on {listen}");
    }

    /// SIGKILL.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- The talks ---------------------------------------------------------------

/// The binary, on home `h` under `root`.
fn home_cli(root: &Path, h: &str) -> Command {
    let mut cmd = backchannel();
    cmd.env("BACKCHANNEL_PASSPHRASE", HOME_PASSPHRASE)
        .env_remove("BACKCHANNEL_HOME")
        .arg("--home")
        .arg(root.join(h));
    cmd
}

/// A node and three homes in one talks: Oman mediating between the United
/// States and Iran.
struct Talks {
    dir: tempfile::TempDir,
    node: Node,
    talks: String,
    /// `talks accept --json` of the United States and of Iran.
    accepted: Vec<Value>,
    /// What every `talks seat` is given besides `--json` (the roster is
    /// built by the run that posts it, so every run gets the same).
    seat_args: Vec<&'static str>,
    /// The node's PostgreSQL database (`None`: SQLite in its directory).
    database: Option<String>,
}

impl Talks {
    /// The node, the three homes, the talks opened, both parties invited
    /// and joined, and seated by the mediator; not accepted yet.
    fn seated() -> Talks {
        Talks::seated_with(&[])
    }

    /// [`Talks::seated`], `talks seat` given `seat_args` (presets, tracks,
    /// letters, release).
    fn seated_with(seat_args: &[&'static str]) -> Talks {
        Talks::seated_on(seat_args, None)
    }

    /// [`Talks::seated_with`], the node on the PostgreSQL `database` if
    /// any.
    fn seated_on(seat_args: &[&'static str], database: Option<&str>) -> Talks {
        let dir = tempfile::tempdir().unwrap();
        let node_dir = dir.path().join("node");
        let init = ok_json(
            backchannel()
                .args(["node", "init", "--origin", ORIGIN, "--json", "--dir"])
                .arg(&node_dir),
        );
        let log_key = init["log_key"].as_str().unwrap().to_owned();
        for h in [OM, US, IR] {
            ok(home_cli(dir.path(), h).args(["home", "init"]));
        }
        ok(home_cli(dir.path(), OM).args(["keys", "generate", "--kind", "authority"]));
        let key = ok(home_cli(dir.path(), OM).args([
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
            .arg(key.trim()));
        let mut t = Talks {
            node: Node::start(&node_dir, "127.0.0.1:0", database),
            dir,
            talks: String::new(),
            accepted: vec![],
            seat_args: seat_args.to_vec(),
            database: database.map(str::to_owned),
        };

        let addr = t.node.addr.to_string();
        let opened = ok_json(t.cli(OM).args([
            "talks",
            "open",
            "--node",
            &addr,
            "--fingerprint",
            &t.node.fingerprint,
            "--origin",
            ORIGIN,
            "--log-key",
            &log_key,
            "--name",
            "Sultanate of Oman",
            "--member",
            "Omani lead mediator",
            "--json",
        ]));
        t.talks = opened["talks"].as_str().unwrap().to_owned();
        assert_eq!(t.talks.len(), 32, "{opened}");
        for (h, name, member) in [
            (US, "United States", "US envoy"),
            (
                IR,
                "Islamic Republic of Iran",
                "Iranian deputy foreign minister",
            ),
        ] {
            let inv = t.path(&format!("{h}.inv"));
            ok(t.cli(OM).args(["talks", "invite", "--out"]).arg(&inv));
            let joined = ok_json(
                t.cli(h)
                    .args(["talks", "join", "--invitation"])
                    .arg(&inv)
                    .args(["--name", name, "--member", member, "--json"]),
            );
            assert_eq!(joined["talks"], t.talks.as_str());
        }
        // The change that seats the parties is proposed; the roster waits
        // until their devices are in the record room's MLS group.
        let seated = ok_json(
            t.cli(OM)
                .args(["talks", "seat", "--json"])
                .args(&t.seat_args),
        );
        assert_eq!(seated["parties"], 3, "{seated}");
        assert_eq!(seated["roster_posted"], false, "{seated}");
        t
    }

    /// Both parties accept, concurrently: each co-signs the change seating
    /// its devices, waits for the other's, puts its key packages on the
    /// node, and accepts once the mediator, seating again meanwhile, has
    /// added every device to the rooms' MLS groups and posted the roster.
    fn accept_all(&mut self) {
        let children: Vec<Child> = [US, IR]
            .iter()
            .map(|h| {
                self.cli(h)
                    .args(["talks", "accept", "--wait", "60", "--json"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let seated = ok_json(
            self.cli(OM)
                .args(["talks", "seat", "--wait", "60", "--json"])
                .args(&self.seat_args),
        );
        assert_eq!(seated["roster_posted"], true, "{seated}");
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "talks accept: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            self.accepted
                .push(serde_json::from_slice(&out.stdout).unwrap());
        }
    }

    /// [`Talks::seated`], and both parties accepted.
    fn open() -> Talks {
        let mut t = Talks::seated();
        t.accept_all();
        t
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn node_dir(&self) -> PathBuf {
        self.path("node")
    }

    /// The binary, on home `h`.
    fn cli(&self, h: &str) -> Command {
        home_cli(self.dir.path(), h)
    }

    /// `send --json` from `h`, which must succeed; the seq.
    fn send(&self, h: &str, room: &str, text: &str) -> u64 {
        let sent = ok_json(
            self.cli(h)
                .args(["send", "--json", "--room", room])
                .arg(text),
        );
        sent["seq"].as_u64().unwrap()
    }

    /// `read --all --json` of `h`, which must succeed.
    fn read_all(&self, h: &str) -> Vec<Value> {
        let out = run(self.cli(h).args(["read", "--all", "--json"]));
        assert_eq!(out.code, Some(0), "{out:?}");
        out.json_lines()
    }

    /// The whole log, as the three homes archived it: their archives
    /// merged by seq, the mediator's line first (every room holds one of
    /// them, but a party's internal room holds only its own delegation).
    fn whole_log(&self) -> Vec<Value> {
        let mut by_seq = BTreeMap::new();
        for h in [OM, US, IR] {
            for l in self.read_all(h) {
                by_seq.entry(l["seq"].as_u64().unwrap()).or_insert(l);
            }
        }
        by_seq.into_values().collect()
    }

    fn log_verify(&self, h: &str) -> Out {
        run(self.cli(h).args(["log", "verify", "--json"]))
    }

    /// `h`'s `log verify --json`, repeated until the node has integrated
    /// (and `h` verified) a log of `size`; it must find no evidence.
    fn verified_to(&self, h: &str, size: u64) -> Value {
        for _ in 0..200 {
            let out = self.log_verify(h);
            assert_eq!(out.code, Some(0), "{out:?}");
            let v = out.json();
            assert_no_evidence(&v);
            if v["size"].as_u64().unwrap() >= size {
                assert_eq!(v["size"], size, "{v}");
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the node did not integrate a log of size {size}");
    }

    /// `talks show --json` of `h`.
    fn show(&self, h: &str) -> Value {
        ok_json(self.cli(h).args(["talks", "show", "--json"]))
    }

    /// Starts the (SIGKILLed) node again on the same directory and
    /// address (the homes pinned it).
    fn start_again(&mut self) {
        let (addr, fp) = (self.node.addr, self.node.fingerprint.clone());
        self.node = Node::start(
            &self.node_dir(),
            &addr.to_string(),
            self.database.as_deref(),
        );
        assert_eq!(self.node.addr, addr);
        assert_eq!(self.node.fingerprint, fp);
    }
}

fn assert_no_evidence(v: &Value) {
    for field in [
        "withheld",
        "not_merged",
        "discrepancies",
        "forks",
        "statements_rejected",
    ] {
        assert_eq!(v[field], Value::Array(vec![]), "{field}: {v}");
    }
}

/// The party named `name` in a `talks show --json`.
fn party<'a>(show: &'a Value, name: &str) -> &'a Value {
    show["parties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no party {name:?}: {show}"))
}

/// The id of the room named `name` in a `talks show --json`.
fn room_id(show: &Value, name: &str) -> String {
    show["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no room {name:?}: {show}"))["room"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The names of `h`'s rooms in a `talks show --json`.
fn my_rooms(show: &Value) -> BTreeSet<String> {
    show["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["mine"] == true)
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

fn seqs(lines: &[Value]) -> Vec<u64> {
    lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect()
}

/// The seqs of `lines` in `rooms`.
fn seqs_in(lines: &[Value], rooms: &BTreeSet<String>) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| rooms.contains(l["room"].as_str().unwrap()))
        .map(|l| l["seq"].as_u64().unwrap())
        .collect()
}

/// The line of `lines` at `seq`.
#[track_caller]
fn at(lines: &[Value], seq: u64) -> &Value {
    lines
        .iter()
        .find(|l| l["seq"] == seq)
        .unwrap_or_else(|| panic!("no seq {seq}: {lines:?}"))
}

const US_CAUCUS: &str = "Caucus: Sultanate of Oman with United States";
const IR_CAUCUS: &str = "Caucus: Sultanate of Oman with Islamic Republic of Iran";

// --- The node's database, behind its back --------------------------------------

/// Runs `f` on a connection to the (stopped) node's database.
fn with_db<T>(db: &Path, f: impl AsyncFnOnce(&mut sqlx::SqliteConnection) -> T) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap();
            let out = f(&mut c).await;
            c.close().await.unwrap();
            out
        })
}

// --- Tests -------------------------------------------------------------------

/// The ways a string could sit in a file: raw (and so JSON-escaped, for
/// these ASCII strings), lowercase and uppercase hex, UTF-16LE, and
/// standard and URL-safe base64 at each of the three byte alignments.
fn encodings(s: &str) -> Vec<(String, Vec<u8>)> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let b = s.as_bytes();
    let mut out = vec![
        ("raw".to_owned(), b.to_vec()),
        ("hex".to_owned(), hex::encode(b).into_bytes()),
        ("HEX".to_owned(), hex::encode_upper(b).into_bytes()),
        (
            "utf-16".to_owned(),
            s.encode_utf16().flat_map(u16::to_le_bytes).collect(),
        ),
    ];
    for k in 0..3 {
        for (name, e) in [
            ("base64", STANDARD.encode(&b[k..])),
            ("base64url", URL_SAFE_NO_PAD.encode(&b[k..])),
        ] {
            // The part that does not depend on what follows the string.
            let stable = &e[..e.len() - 4];
            out.push((format!("{name}@{k}"), stable.as_bytes().to_vec()));
        }
    }
    out
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Names, statements and talk travel inside MLS messages and sealed
/// enrolments: none of them is anywhere in what the node stores (database,
/// write-ahead log, every file of its directory) or prints, in any common
/// encoding.
#[test]
fn no_name_or_text_reaches_the_node_in_the_clear() {
    let mut t = Talks::open();
    let canary = format!(
        "canary-{:032x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            ^ u128::from(std::process::id()) << 64
    );
    t.send(US, "caucus", &format!("talk {canary} talk"));
    t.send(OM, "caucus united", &format!("reply {canary}"));
    let file = t.path(&format!("{canary}.txt"));
    std::fs::write(&file, format!("a file about {canary}")).unwrap();
    ok(t.cli(IR)
        .args(["blob", "put", "--room", "caucus"])
        .arg(&file));
    // Everyone has read everything: the MLS state works on.
    for h in [OM, US, IR] {
        t.read_all(h);
    }
    t.node.kill();
    let mut printed = Vec::new();
    if let Some(mut out) = t.node.child.stdout.take() {
        use std::io::Read as _;
        out.read_to_end(&mut printed).unwrap();
    }
    let mut files = Vec::new();
    files_under(&t.node_dir(), &mut files);
    assert!(files.iter().any(|f| f.ends_with("node.db")), "{files:?}");
    // The search finds what is there (controls): SQLite's own header, and
    // the talks id's 16 bytes, which the node stores raw in every row (in
    // the database or its write-ahead log: the node was killed).
    let db: Vec<u8> = files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    let talks_id = hex::decode(&t.talks).unwrap();
    for there in [b"SQLite format 3".as_slice(), talks_id.as_slice()] {
        assert!(
            db.windows(there.len()).any(|w| w == there),
            "the control {there:?} is not found"
        );
    }
    let planted = [
        canary.as_str(),
        "Sultanate of Oman",
        "United States",
        "Islamic Republic of Iran",
        "Omani lead mediator",
        "US envoy",
        "Iranian deputy foreign minister",
    ];
    for f in files
        .iter()
        .map(|f| (f.display().to_string(), std::fs::read(f).unwrap()))
        .chain(std::iter::once(("the node's output".to_owned(), printed)))
    {
        let (name, bytes) = f;
        for word in planted {
            for (how, needle) in encodings(word) {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                    "{word:?} ({how}) is in {name}"
                );
            }
        }
    }
}

#[test]
fn the_reference_flow_runs_through_the_cli() {
    let mut t = Talks::open();

    // Both acceptances, at distinct seqs, on one safety code.
    assert_eq!(t.accepted.len(), 2);
    let code = t.accepted[0]["safety_code"].as_str().unwrap().to_owned();
    for a in &t.accepted {
        assert_eq!(a["talks"], t.talks.as_str(), "{a}");
        assert_eq!(a["already"], false, "{a}");
        assert_eq!(a["safety_code"], code.as_str(), "{a}");
    }
    assert_ne!(t.accepted[0]["seq"], t.accepted[1]["seq"]);
    assert_eq!(words(&code).split(' ').count(), 12, "{code}");

    // Talk in both caucuses, from all three homes (the record room takes
    // formal statements only).
    let welcome = ok_json(t.cli(OM).args([
        "send",
        "--room",
        "caucus united",
        "Welcome to Muscat.",
        "--json",
    ]));
    assert_eq!(welcome["room"], US_CAUCUS);
    let exchange = ok_json(t.cli(US).args([
        "send",
        "--room",
        "caucus",
        "We can move on the exchange.",
        "--json",
    ]));
    assert_eq!(exchange["room"], US_CAUCUS);
    let present =
        ok_json(
            t.cli(IR)
                .args(["send", "--room", "caucus", "Iran is present.", "--json"]),
        );
    assert_eq!(present["room"], IR_CAUCUS);
    let talk = [
        (&welcome, "Welcome to Muscat.", "Omani lead mediator"),
        (&exchange, "We can move on the exchange.", "US envoy"),
        (
            &present,
            "Iran is present.",
            "Iranian deputy foreign minister",
        ),
    ];
    let size = present["seq"].as_u64().unwrap() + 1;

    // The mediator reads what is new, then nothing more; its archive holds
    // the whole log: roster, ground rules, two acceptances, the talk.
    let new = run(t.cli(OM).args(["read", "--json"])).json_lines();
    for (sent, text, _) in &talk[1..] {
        assert!(
            new.iter()
                .any(|l| l["seq"] == sent["seq"] && l["text"] == *text),
            "{new:?}"
        );
    }
    assert_eq!(run(t.cli(OM).args(["read", "--json"])).stdout, "");
    // The log is whole and dense; the mediator archived all of it in its
    // rooms (every room but the parties' internal ones).
    let all = t.read_all(OM);
    let whole = t.whole_log();
    assert_eq!(seqs(&whole), (0..size).collect::<Vec<_>>());
    assert_eq!(seqs(&all), seqs_in(&whole, &my_rooms(&t.show(OM))));
    for (sent, text, sender) in &talk {
        let l = at(&all, sent["seq"].as_u64().unwrap());
        assert_eq!(l["kind"], "talk", "{l}");
        assert_eq!(l["text"], *text, "{l}");
        assert_eq!(l["room"], sent["room"], "{l}");
        assert!(l["sender"].as_str().unwrap().starts_with(sender), "{l}");
    }
    // Roster and ground rules accepted by replay; the acceptances too, but
    // blocked for the mediator until it verifies the parties' keys (the
    // ground rules require it).
    let statements: Vec<&Value> = all.iter().filter(|l| l["kind"] == "statement").collect();
    assert_eq!(statements.len(), 4, "{all:?}");
    for l in &statements[..2] {
        assert_eq!(l["verdict"], "accepted", "{l}");
    }
    for l in &statements[2..] {
        let (text, verdict) = (l["text"].as_str().unwrap(), l["verdict"].as_str().unwrap());
        assert!(
            text.starts_with("acceptance of roster and ground rules"),
            "{l}"
        );
        assert!(!verdict.contains("REJECTED"), "{l}");
        if text.contains("by United States") {
            assert!(
                verdict.contains("BLOCKED until you verify United States"),
                "{l}"
            );
        }
    }

    // Each party reads its own rooms only: the record room and its
    // caucus, never the other party's.
    for (h, ours, theirs) in [(US, US_CAUCUS, IR_CAUCUS), (IR, IR_CAUCUS, US_CAUCUS)] {
        let rooms = my_rooms(&t.show(h));
        assert!(
            rooms.contains("Record") && rooms.contains(ours) && !rooms.contains(theirs),
            "{h}: {rooms:?}"
        );
        let lines = t.read_all(h);
        assert!(
            lines
                .iter()
                .all(|l| rooms.contains(l["room"].as_str().unwrap()))
        );
        assert_eq!(seqs(&lines), seqs_in(&whole, &rooms), "{h}");
    }

    // Every home verifies the same log, finds no evidence, and cosigns;
    // once all three have, the checkpoint is final.
    let first = t.verified_to(OM, size);
    assert_eq!(first["cosigned"], true, "{first}");
    assert_eq!(first["final_"], false, "{first}");
    let us = t.verified_to(US, size);
    let ir = t.verified_to(IR, size);
    for v in [&us, &ir] {
        assert_eq!(v["root"], first["root"], "{v}");
        assert_eq!(v["cosigned"], true, "{v}");
        assert_eq!(v["talks"], t.talks.as_str(), "{v}");
    }
    assert_eq!(ir["parties"], 3, "{ir}");
    assert_eq!(ir["parties_cosigning"], 3, "{ir}");
    assert_eq!(ir["final_"], true, "{ir}");

    // The US compares codes with Iran in person, and records it.
    let verified = ok_json(t.cli(US).args([
        "talks",
        "verify",
        "--with",
        "IR",
        "--via",
        "in person, Muscat",
        "--code",
        &words(&code),
        "--json",
    ]));
    assert_eq!(verified["name"], "Islamic Republic of Iran", "{verified}");
    let show = t.show(US);
    assert_eq!(show["talks"], t.talks.as_str());
    assert_eq!(show["roster"], true);
    assert_eq!(show["ground_rules"], true);
    assert_eq!(show["awaiting_acceptance"], Value::Array(vec![]));
    assert_eq!(show["other_talks"], Value::Array(vec![]));
    assert_eq!(show["verified_size"], size);
    assert_eq!(show["archived_to"], size);
    let iran = party(&show, "Islamic Republic of Iran");
    assert_eq!(iran["kind"], "party", "{iran}");
    assert_eq!(iran["accepted"], true, "{iran}");
    assert_eq!(iran["verified"], true, "{iran}");
    assert_eq!(iran["keys"], "verified (in person, Muscat)", "{iran}");
    let own = party(&show, "United States");
    assert_eq!(own["accepted"], true, "{own}");
    assert_eq!(own["keys"], "your own party", "{own}");
    let oman = party(&show, "Sultanate of Oman");
    assert_eq!(oman["kind"], "mediator", "{oman}");
    assert_eq!(oman["verified"], false, "{oman}");
    assert_eq!(oman["keys"], "vouched for by the mediator only", "{oman}");
    let mine = my_rooms(&show);
    assert!(
        mine.contains("Record") && mine.contains(US_CAUCUS) && !mine.contains(IR_CAUCUS),
        "{mine:?}"
    );
    // Iran's acceptance, blocked for the US until now, counts.
    let iran_accepts =
        t.read_all(US)
            .into_iter()
            .find(|l| {
                l["text"].as_str().unwrap().starts_with(
                    "acceptance of roster and ground rules by Islamic Republic of Iran",
                )
            })
            .unwrap();
    assert_eq!(iran_accepts["verdict"], "accepted", "{iran_accepts}");
    // Iran has verified nobody yet.
    let ir_show = t.show(IR);
    assert_eq!(
        party(&ir_show, "United States")["keys"],
        "vouched for by the mediator only"
    );
    // One safety code for all three.
    for h in [OM, US, IR] {
        assert_eq!(t.show(h)["safety_code"], code.as_str(), "{h}");
    }

    // `follow` prints what arrives: the US follows while Oman speaks.
    let follow = t
        .cli(US)
        .args(["follow", "--count", "1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let later = t.send(OM, "caucus united", "Shall we meet at ten?");
    let out = wait_bounded(follow);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["seq"], later);
    assert_eq!(lines[0]["text"], "Shall we meet at ten?");
    assert_eq!(lines[0]["room"], US_CAUCUS);
    t.node.kill();
}

/// Waits for `child`, killing it (and failing) if it runs far too long.
fn wait_bounded(mut child: Child) -> std::process::Output {
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!("still running after 30 s: {out:?}");
}

#[test]
fn clients_resume_after_the_node_is_killed() {
    let mut t = Talks::open();
    t.send(OM, "caucus united", "before the crash: Oman");
    t.send(US, "caucus", "before the crash: US");
    t.send(IR, "caucus", "before the crash: Iran");

    // Each home sends in a loop until the node is SIGKILLed under it; every
    // acknowledged send (exit 0 with a seq) is recorded.
    let acked: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::default();
    // Oman and Iran share Iran's caucus; the US has its own.
    let loops: Vec<_> = [(OM, "caucus islamic"), (US, "caucus"), (IR, "caucus")]
        .into_iter()
        .map(|(h, room)| {
            let (root, acked) = (t.dir.path().to_owned(), Arc::clone(&acked));
            std::thread::spawn(move || {
                for i in 0..200 {
                    let text = format!("{h} message {i}");
                    let out =
                        run(home_cli(&root, h).args(["send", "--json", "--room", room, &text]));
                    if out.code != Some(0) {
                        return out;
                    }
                    let seq = out.json()["seq"].as_u64().unwrap();
                    acked.lock().unwrap().push((h.to_owned(), seq, text));
                }
                panic!("{h} sent 200 messages and the node is still up");
            })
        })
        .collect();
    for _ in 0..600 {
        if acked.lock().unwrap().len() >= 9 || loops.iter().any(|l| l.is_finished()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // No send failed while the node was up.
    if let Some(i) = loops.iter().position(|l| l.is_finished()) {
        let failed = loops.into_iter().nth(i).unwrap().join().unwrap();
        panic!("a send failed before the node was killed: {failed:?}");
    }
    t.node.kill(); // SIGKILL, mid-run
    for l in loops {
        let failed = l.join().unwrap();
        assert_eq!(failed.code, Some(FAILED), "{failed:?}");
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 9, "too few acknowledgements: {acked:?}");

    // Restarted on the same directory and address: more talk.
    t.start_again();
    let mut last = 0;
    for (h, room) in [(OM, "caucus islamic"), (US, "caucus"), (IR, "caucus")] {
        last = t.send(h, room, &format!("after the crash: {h}"));
    }
    let size = last + 1;
    let first = t.verified_to(OM, size);

    // The homes together archived the whole log once, in order; each
    // archived exactly the envelopes of its rooms.
    let all = t.whole_log();
    assert_eq!(seqs(&all), (0..size).collect::<Vec<_>>());
    let mut archives = BTreeMap::new();
    for h in [OM, US, IR] {
        let rooms = my_rooms(&t.show(h));
        let lines = t.read_all(h);
        assert_eq!(
            seqs(&lines),
            seqs_in(&all, &rooms),
            "{h}: a gap or a duplicate"
        );
        archives.insert(h, lines);
    }
    // Every acknowledged send is there, at its seq, with its text, in the
    // whole log and in its sender's archive.
    for (h, seq, text) in &acked {
        assert_eq!(at(&all, *seq)["text"], text.as_str(), "{h} seq {seq}");
        assert!(
            archives[h.as_str()]
                .iter()
                .any(|l| l["seq"] == *seq && l["text"] == text.as_str()),
            "{h}'s seq {seq} is not in its own archive"
        );
    }
    // And every home verifies the same log without evidence.
    for h in [US, IR] {
        let v = t.verified_to(h, size);
        assert_eq!(v["root"], first["root"], "{h}: {v}");
    }
}

#[test]
fn a_rewritten_stored_envelope_fails_log_verify_naming_its_seq() {
    let mut t = Talks::open();
    t.send(OM, "caucus united", "Welcome to Muscat.");
    let rewritten = t.send(US, "caucus", "We can move on the exchange.");
    let last = t.send(IR, "caucus", "Iran is present.");
    let clean = t.verified_to(US, last + 1);
    assert_eq!(clean["cosigned"], true, "{clean}");

    // Stop the node; rewrite the US envelope's body, and its body hash to
    // match, as an attacker holding the database would (the header, signed
    // by the US device, is left: the row still decodes).
    t.node.kill();
    with_db(&t.node_dir().join("node.db"), async |c| {
        let room: Vec<u8> = sqlx::query_scalar("SELECT room FROM envelopes WHERE seq = ?")
            .bind(rewritten as i64)
            .fetch_one(&mut *c)
            .await
            .unwrap();
        let room = RoomId(room.try_into().unwrap());
        let _ = room;
        // Another body of the same bucket (the node cannot tell MLS
        // ciphertexts apart from bytes).
        let forged = backchannel_statement::header::pad_body(&[0xee; 200]).unwrap();
        let done = sqlx::query("UPDATE envelopes SET body = ?, body_hash = ? WHERE seq = ?")
            .bind(forged.clone())
            .bind(sha256(&forged).0.to_vec())
            .bind(rewritten as i64)
            .execute(&mut *c)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
    });
    t.start_again();

    // The US home, which verified and archived the original: evidence,
    // exit 3, naming that seq and no other.
    let out = t.log_verify(US);
    blames_only(&out, rewritten, last);
    let v = out.json();
    let found = v["discrepancies"].as_array().unwrap();
    assert!(!found.is_empty(), "{v}");
    for d in found {
        assert!(names(d.as_str().unwrap(), rewritten), "{d}");
    }
    assert_eq!(v["cosigned"], false, "{v}");
    for seq in (0..=last).filter(|s| *s != rewritten) {
        assert!(!names(&out.stdout, seq), "seq {seq} blamed too: {out:?}");
    }
    // Not once: again on the next run.
    let again = t.log_verify(US);
    assert_eq!(again.code, Some(EVIDENCE), "{again:?}");
    assert!(names(&again.stderr, rewritten), "{again:?}");
}

/// `out` is evidence (exit 3) naming `seq` on stderr, and no other seq of
/// `0..=last`.
#[track_caller]
fn blames_only(out: &Out, seq: u64, last: u64) {
    assert_eq!(out.code, Some(EVIDENCE), "{out:?}");
    assert!(names(&out.stderr, seq), "{out:?}");
    for other in (0..=last).filter(|s| *s != seq) {
        assert!(
            !names(&out.stderr, other),
            "seq {other} blamed too: {out:?}"
        );
    }
}

#[test]
fn a_deleted_stored_envelope_is_reported_withheld() {
    let mut t = Talks::open();
    t.send(US, "caucus", "We can move on the exchange.");
    // The US verified the log before these; it has not read them.
    let before = t.send(IR, "caucus", "Iran is present.");
    t.verified_to(US, before + 1);
    let deleted = t.send(OM, "caucus united", "A proposal for the US only.");
    // The US receives this one, after the deleted one, in the same room.
    let last = t.send(OM, "caucus united", "The session resumes at ten.");
    // The node has integrated both (the mediator verified them).
    t.verified_to(OM, last + 1);

    t.node.kill();
    with_db(&t.node_dir().join("node.db"), async |c| {
        let done = sqlx::query("DELETE FROM envelopes WHERE seq = ?")
            .bind(deleted as i64)
            .execute(&mut *c)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
    });
    t.start_again();

    // The US home, in that room, never received it: the node withholds
    // it below its signed checkpoint. Exit 3, seq named.
    let out = t.log_verify(US);
    blames_only(&out, deleted, last);
    assert!(out.stderr.contains("withholds"), "{out:?}");
    // The mediator, which archived it, finds it no longer served.
    let out = t.log_verify(OM);
    assert_eq!(out.code, Some(EVIDENCE), "{out:?}");
    assert!(names(&out.stderr, deleted), "{out:?}");
    let v = out.json();
    let found = v["discrepancies"].as_array().unwrap();
    assert!(
        found
            .iter()
            .any(|d| names(d.as_str().unwrap(), deleted)
                && d.as_str().unwrap().contains("withholds")),
        "{v}"
    );
}

#[test]
fn bad_inputs_are_refused_clearly_and_change_nothing() {
    let mut t = Talks::seated();
    let addr = t.node.addr.to_string();
    let log_key = ok_json(
        backchannel()
            .args(["node", "info", "--json", "--dir"])
            .arg(t.node_dir()),
    )["log_key"]
        .as_str()
        .unwrap()
        .to_owned();

    // A garbage invitation, into a fresh home: refused before anything.
    ok(t.cli("x").args(["home", "init"]));
    let garbage = t.path("garbage.inv");
    std::fs::write(&garbage, "this is not an invitation\n").unwrap();
    let out = run(t
        .cli("x")
        .args([
            "talks",
            "join",
            "--name",
            "X",
            "--member",
            "Y",
            "--invitation",
        ])
        .arg(&garbage));
    out.refused(FAILED, "is not a usable invitation");
    let no_talks = |t: &Talks| {
        run(t.cli("x").args(["talks", "show", "--json"])).refused(FAILED, "takes part in no talks");
    };
    no_talks(&t);
    assert_eq!(
        ok_json(t.cli("x").args(["keys", "list", "--json"]))["keys"],
        Value::Array(vec![])
    );
    // The US invitation, already used, in a second home: the node refuses.
    let out = run(t
        .cli("x")
        .args([
            "talks",
            "join",
            "--name",
            "X",
            "--member",
            "Y",
            "--invitation",
        ])
        .arg(t.path("us.inv")));
    out.refused(FAILED, "already used");
    no_talks(&t);

    // `talks open` with a bad fingerprint: malformed, then the wrong one.
    let open = |fp: &str| {
        run(t.cli(OM).args([
            "talks",
            "open",
            "--node",
            &addr,
            "--fingerprint",
            fp,
            "--origin",
            ORIGIN,
            "--log-key",
            &log_key,
            "--name",
            "Oman",
            "--member",
            "M",
        ]))
    };
    open("abcd").refused(FAILED, "--fingerprint must be 64 hex digits");
    open(&"00".repeat(32)).refused(FAILED, "did not present the node certificate");
    // The mediator's home still takes part in these talks only.
    let om = t.show(OM);
    assert_eq!(om["talks"], t.talks.as_str());
    assert_eq!(om["other_talks"], Value::Array(vec![]));

    // Joined, seated by the mediator, not accepted: no talk yet.
    let out = run(t.cli(US).args(["send", "--room", "caucus", "Too early."]));
    out.refused(FAILED, "talks accept");
    assert!(!out.stderr.contains("Too early."), "{out:?}");

    // Both accept; the log as it stands.
    t.accept_all();
    let log = t.whole_log();
    let unchanged = |t: &Talks| assert_eq!(t.whole_log(), log, "the log changed");

    // A room the sender is not in: by words, by id.
    run(t
        .cli(US)
        .args(["send", "--room", "caucus islamic", "Psst."]))
    .refused(FAILED, "you are in no room called \"caucus islamic\"");
    let ir_caucus = room_id(&t.show(US), IR_CAUCUS);
    run(t.cli(US).args(["send", "--room", &ir_caucus, "Psst."]))
        .refused(FAILED, &format!("you are not in room {IR_CAUCUS}"));
    unchanged(&t);

    // A wrong code: refused, nothing recorded.
    let out = run(t.cli(IR).args([
        "talks",
        "verify",
        "--with",
        "US",
        "--via",
        "phone",
        "--code",
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon \
         abandon zoo",
    ]));
    out.refused(FAILED, "the codes differ");
    assert!(out.stderr.contains("Nothing was recorded"), "{out:?}");
    let us = party(&t.show(IR), "United States").clone();
    assert_eq!(us["verified"], false, "{us}");
    assert_eq!(us["keys"], "vouched for by the mediator only", "{us}");
    // A party not in the roster; no --via (usage: exit 2).
    run(t
        .cli(IR)
        .args(["talks", "verify", "--with", "Nobody", "--via", "phone"]))
    .refused(FAILED, "no party of the roster matches \"Nobody\"");
    run(t.cli(IR).args(["talks", "verify", "--with", "US"])).refused(USAGE, "--via");
    let us = party(&t.show(IR), "United States").clone();
    assert_eq!(us["verified"], false, "{us}");

    // Only the mediator invites.
    let out_file = t.path("party.inv");
    run(t.cli(US).args(["talks", "invite", "--out"]).arg(&out_file))
        .refused(FAILED, "only the mediator invites parties");
    assert!(!out_file.exists());

    // Talks the home does not take part in, and a malformed id.
    let commands: [&[&str]; 8] = [
        &["send", "--room", "caucus", "Hello?"],
        &["read"],
        &["follow", "--count", "1"],
        &["log", "verify"],
        &["talks", "show"],
        &["talks", "accept", "--wait", "1"],
        &["talks", "verify", "--with", "IR", "--via", "phone"],
        &["talks", "seat"],
    ];
    for args in commands {
        run(t.cli(US).args(args).args(["--talks", UNKNOWN_TALKS])).refused(
            FAILED,
            &format!("does not take part in talks {UNKNOWN_TALKS}"),
        );
        run(t.cli(US).args(args).args(["--talks", "zz"])).refused(FAILED, "is not a talks id");
    }
    run(t
        .cli(OM)
        .args(["talks", "invite", "--talks", UNKNOWN_TALKS, "--out"])
        .arg(&out_file))
    .refused(FAILED, "does not take part in talks");
    assert!(!out_file.exists());

    // Nothing reached the log, and the US log still verifies.
    unchanged(&t);
    t.verified_to(US, log.len() as u64);
}

// --- The record room: formal signed statements only ---------------------------

/// What `send` and `blob put` say to talk or a file for the record room.
const RECORD_IS_FORMAL: &str = "the record room carries formal signed statements only";
/// What `read` shows of talk or a file someone put there anyway.
const REFUSED_IN_RECORD: &str = "free text in the record room (not counted)";

/// Talk and files addressed to the record room, however it is named, are
/// refused before anything is sent: a clear error that says where to talk
/// instead, nothing in the sender's home or anyone's archive, the node's
/// log the size it was (the next envelope takes the next seq), no blob
/// uploaded. Before the roster too (the mediator, whose home knows the
/// record room from the start).
#[test]
fn talk_and_files_for_the_record_room_are_refused_and_nothing_is_sent() {
    let mut t = Talks::seated();
    // Before the roster only the record room exists: no talk anywhere.
    let out = run(t
        .cli(OM)
        .args(["send", "--room", "record", "Before the roster."]));
    out.refused(FAILED, RECORD_IS_FORMAL);
    assert!(out.stderr.contains("backchannel talks show"), "{out:?}");
    run(t
        .cli(OM)
        .args(["send", "--room", "caucus", "Before the roster."]))
    .refused(FAILED, "the roster has not been posted yet");

    t.accept_all();
    let record = room_id(&t.show(OM), "Record");
    let file = t.path("brief.txt");
    std::fs::write(&file, "A brief for the record room.").unwrap();
    // Every home up to date (its rooms' MLS groups complete), then one
    // envelope the node takes: the log's last seq before the refusals.
    for _ in 0..2 {
        for h in [OM, US, IR] {
            t.read_all(h);
        }
    }
    let last = t.send(US, "caucus", "On the way to the record room.");
    let homes = [OM, US, IR].map(|h| (h, t.read_all(h)));
    // Its first word, any case, its roster name, a prefix the home
    // resolves only once up to date, and its id.
    for room in ["record", "RECORD", "Record", "rec", record.as_str()] {
        for h in [OM, US, IR] {
            let out = run(t.cli(h).args(["send", "--room", room, "On the record."]));
            out.refused(FAILED, RECORD_IS_FORMAL);
            assert!(out.stderr.contains("backchannel talks show"), "{out:?}");
            assert_eq!(out.stdout, "", "{out:?}");
        }
        let out = run(t.cli(US).args(["blob", "put", "--room", room]).arg(&file));
        out.refused(FAILED, RECORD_IS_FORMAL);
        assert_eq!(out.stdout, "", "{out:?}");
    }
    // Nothing reached any home's archive (each reads the log first, so it
    // would have received whatever the node took).
    for (h, before) in &homes {
        assert_eq!(&t.read_all(h), before, "{h}'s archive changed");
    }
    // Nothing reached the node's log: the next envelope takes the next
    // seq, and the log verifies to just after it.
    let next = t.send(US, "caucus", "Off the record.");
    assert_eq!(next, last + 1, "the node's log grew on a refused send");
    t.verified_to(US, next + 1);
    // No blob was uploaded either: the only blob of these talks is the
    // one shared next, in a caucus, and Oman fetches it from there.
    let put = ok_json(
        t.cli(US)
            .args(["blob", "put", "--json", "--room", "caucus"])
            .arg(&file),
    );
    assert_eq!(put["room"], US_CAUCUS, "{put}");
    assert_eq!(put["seq"], next + 1, "{put}");
    let hash = put["hash"].as_str().unwrap().to_owned();
    ok(t.cli(OM)
        .args(["blob", "get", &hash, "--out"])
        .arg(t.path("fetched.txt")));
    t.node.kill();
    let blobs: i64 = with_db(&t.node_dir().join("node.db"), async |c| {
        sqlx::query_scalar("SELECT COUNT(*) FROM blobs")
            .fetch_one(&mut *c)
            .await
            .unwrap()
    });
    assert_eq!(blobs, 1, "a refused blob put uploaded a blob");
}

/// What [`send_around_the_cli`] sends.
enum Free {
    /// Talk.
    Talk(&'static str),
    /// A file, uploaded and announced: its name and bytes.
    File(&'static str, &'static [u8]),
}

/// Sends `what` to `room` from home `h` as another client could, through
/// the client library on the home's own store and keys, without the CLI's
/// refusal: what a record room receives from a client that does not keep
/// the rule. The seq, and the blob's hash for a file.
fn send_around_the_cli(t: &Talks, h: &str, room: RoomId, what: Free) -> (u64, String) {
    use age::secrecy::SecretString;
    use backchannel_client::attachment::Attachment;
    use backchannel_client::seal::Content;
    use backchannel_client::session::Session;
    use backchannel_client::store::{ClientStore as _, Namespace};
    use backchannel_client_store_sqlite::{ClientStoreOptions, SqliteClientStore};
    let run = async {
        let store = Arc::new(
            SqliteClientStore::open(
                t.path(h).join("home.db"),
                &SecretString::from(HOME_PASSPHRASE.to_owned()),
                ClientStoreOptions::default(),
            )
            .await
            .unwrap(),
        );
        let talks = backchannel_codec::TalksId::from_hex(&t.talks).unwrap();
        // The device key, as `keys.rs` documents its record: name = kind
        // (0x04 device) ‖ option(talks) ‖ text(label); value = version ‖
        // name ‖ seed.
        let mut name = vec![0x04, 0x01];
        name.extend(talks.0);
        name.extend(7u32.to_be_bytes());
        name.extend(b"default");
        let mut key = b"backchannel/v1/home/keys/key/".to_vec();
        key.extend(&name);
        let stored = store.get(Namespace::Keys, &key).await.unwrap().unwrap();
        let seed: [u8; 32] = stored[1 + name.len()..].try_into().unwrap();
        let device = backchannel_crypto::SecretKey::from_seed(&seed).unwrap();
        let record = backchannel_client::participant::load(&*store, talks)
            .await
            .unwrap()
            .unwrap();
        let mut s = Session::open(
            Arc::clone(&store),
            record.node.client(&device).unwrap(),
            device,
            talks,
            &record.node.origin,
            record.node.log_key,
        )
        .await
        .unwrap();
        let list = s.node().access_list(talks).await.unwrap().list;
        s.receive(&list).await.unwrap();
        let (content, hash) = match what {
            Free::Talk(text) => (Content::Talk(text.into()), String::new()),
            Free::File(name, bytes) => {
                let (sealed, attachment) =
                    Attachment::seal(talks, [5; 32], [6; 24], name.into(), bytes).unwrap();
                let blob = s.node().upload_blob(talks, room, &sealed).await.unwrap();
                assert_eq!(blob.hash, attachment.blob);
                (
                    Content::Attachment(attachment.to_bytes()),
                    attachment.blob.to_hex(),
                )
            }
        };
        let seq = s
            .send(&list, room, content, backchannel_statement::Salt([9; 32]))
            .await
            .unwrap();
        drop(s);
        store.close().await;
        (seq, hash)
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run)
}

/// Talk and a file another client put in the record room anyway: every
/// `read` shows them refused (their text nowhere), `blob get` does not
/// open the file, and they count for nothing: replay, acceptances,
/// verification and the phase are as they were, and talk goes on.
#[test]
fn talk_that_reaches_the_record_room_anyway_is_shown_refused_and_counts_for_nothing() {
    let t = Talks::open();
    let record = RoomId::from_hex(&room_id(&t.show(OM), "Record")).unwrap();
    // Every home up to date (its rooms' MLS groups complete).
    for _ in 0..2 {
        for h in [OM, US, IR] {
            t.read_all(h);
        }
    }
    let before: Vec<(&str, Value)> = [OM, US, IR].iter().map(|h| (*h, t.show(h))).collect();
    let said = "Off the books: we will pay.";
    let (talk, _) = send_around_the_cli(&t, IR, record, Free::Talk(said));
    let (shared, hash) = send_around_the_cli(
        &t,
        IR,
        record,
        Free::File("annex.txt", b"An annex nobody opens from the record room."),
    );
    for h in [OM, US, IR] {
        let lines = t.read_all(h);
        for seq in [talk, shared] {
            let l = lines
                .iter()
                .find(|l| l["seq"] == seq)
                .unwrap_or_else(|| panic!("{h}: seq {seq} not archived"));
            assert_eq!(l["kind"], "refused", "{h}: {l}");
            assert_eq!(l["text"], REFUSED_IN_RECORD, "{h}: {l}");
            assert_eq!(l["room"], "Record", "{h}: {l}");
            assert_eq!(l["verdict"], Value::Null, "{h}: {l}");
        }
        let text = ok(t.cli(h).args(["read", "--all"]));
        assert!(!text.contains(said), "{h}: {text}");
        assert!(!text.contains("annex.txt"), "{h}: {text}");
        assert!(
            text.lines()
                .filter(|l| l.contains(&format!("refused: {REFUSED_IN_RECORD}")))
                .count()
                == 2,
            "{h}: {text}"
        );
        // The file's key travelled in the refused announcement only.
        let out = t.path(&format!("{h}-annex.txt"));
        run(t.cli(h).args(["blob", "get", &hash, "--out"]).arg(&out))
            .refused(FAILED, "announced in the record room");
        assert!(!out.exists());
    }
    // No effect on what replay derives: every view of the talks is as it
    // was but for the log's size, and nothing is rejected. Talk goes on
    // where it belongs.
    let next = t.send(IR, "caucus", "Back to the caucus.");
    for (h, was) in before {
        let mut now = t.show(h);
        let mut was = was;
        for v in [&mut now, &mut was] {
            v["verified_size"] = Value::Null;
            v["archived_to"] = Value::Null;
        }
        assert_eq!(now, was, "{h}: the talks' state changed");
        let v = t.verified_to(h, next + 1);
        assert_eq!(v["statements_rejected"], serde_json::json!([]), "{h}: {v}");
    }
}

// --- Found by these tests, fixed -------------------------------------------

/// Every command prints the safety code in groups of four words separated
/// by " / "; `talks verify --code` should take it as printed.
#[test]
fn talks_verify_takes_the_code_as_printed() {
    let t = Talks::open();
    let code = t.show(US)["safety_code"].as_str().unwrap().to_owned();
    assert!(code.contains(" / "), "{code}");
    let out = run(t.cli(IR).args([
        "talks", "verify", "--with", "US", "--via", "phone", "--code", &code,
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(party(&t.show(IR), "United States")["verified"], true);
}

/// A `talks open` or `talks join` the node refuses leaves the home as it
/// was: no keys for talks it does not take part in.
#[test]
fn a_refused_open_or_join_leaves_no_keys_behind() {
    let t = Talks::seated();
    ok(t.cli("x").args(["home", "init"]));
    let out = run(t
        .cli("x")
        .args([
            "talks",
            "join",
            "--name",
            "X",
            "--member",
            "Y",
            "--invitation",
        ])
        .arg(t.path("us.inv")));
    out.refused(FAILED, "already used");
    // (The party's long-term authority key may stay: it is no talks'.)
    let keys = ok_json(t.cli("x").args(["keys", "list", "--json"]));
    let talks_keys: Vec<&Value> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| !k["talks"].is_null())
        .collect();
    assert_eq!(talks_keys, Vec::<&Value>::new());
    let keys = ok_json(t.cli(OM).args(["keys", "list", "--json"]));
    let log_key = ok_json(
        backchannel()
            .args(["node", "info", "--json", "--dir"])
            .arg(t.node_dir()),
    )["log_key"]
        .as_str()
        .unwrap()
        .to_owned();
    run(t.cli(OM).args([
        "talks",
        "open",
        "--node",
        &t.node.addr.to_string(),
        "--fingerprint",
        &"00".repeat(32),
        "--origin",
        ORIGIN,
        "--log-key",
        &log_key,
        "--name",
        "Oman",
        "--member",
        "M",
    ]))
    .refused(FAILED, "fingerprint");
    assert_eq!(ok_json(t.cli(OM).args(["keys", "list", "--json"])), keys);
}

/// `--json` outputs name the talks also when `--talks` is left out (the
/// home's only talks).
#[test]
fn json_outputs_name_the_talks_when_talks_is_left_out() {
    let t = Talks::seated();
    let inv = ok_json(
        t.cli(OM)
            .args(["talks", "invite", "--json", "--out"])
            .arg(t.path("third.inv")),
    );
    assert_eq!(inv["talks"], t.talks.as_str(), "{inv}");
}

// --- Members and the talks' lifecycle -----------------------------------------

/// A member joins a party after the roster — one hand-over each way, their
/// keys made in their own home — is seated once the mediator and the other
/// party co-sign, talks; then the party removes them: their keys are
/// revoked in the record, their device is off the list, and every log
/// still verifies.
#[test]
fn a_member_is_added_after_the_roster_and_removed() {
    let t = Talks::open();
    // Talk in the caucus before the negotiator is invited: MLS gives the
    // negotiator none of it; only a handover does.
    let early = t.send(
        US,
        "caucus",
        "Before the negotiator: hold the funds question.",
    );
    ok(t.cli("neg").args(["home", "init"]));
    let invitation = t.path("neg.member");
    let reply = t.path("neg.reply");
    // Only the home holding the party's talks authority adds members.
    run(t
        .cli(US)
        .args([
            "members",
            "add",
            "--name",
            "US negotiator",
            "--role",
            "lead",
            "--out",
        ])
        .arg(t.path("bad.member")))
    .refused(FAILED, "not a role of your kind of party");
    ok(t.cli(US)
        .args([
            "members",
            "add",
            "--name",
            "US negotiator",
            "--role",
            "negotiator",
            "--out",
        ])
        .arg(&invitation));
    ok(t.cli("neg")
        .args(["members", "join", "--invitation"])
        .arg(&invitation)
        .arg("--out")
        .arg(&reply));
    // A reply to an invitation another party made is refused.
    run(t.cli(IR).args(["members", "admit", "--reply"]).arg(&reply))
        .refused(FAILED, "you did not invite member");
    let admitted = ok_json(
        t.cli(US)
            .args(["members", "admit", "--json", "--reply"])
            .arg(&reply),
    );
    assert_eq!(admitted["applied"], false, "{admitted}");
    // Not seated until the mediator and Iran co-sign.
    run(t.cli("neg").args(["send", "--room", "caucus", "too early"]))
        .refused(FAILED, "access list");
    // Admitting again before the device is seated resumes: nothing is
    // posted twice.
    let again = ok_json(
        t.cli(US)
            .args(["members", "admit", "--json", "--reply"])
            .arg(&reply),
    );
    assert_eq!(
        again["member_cert_seq"], admitted["member_cert_seq"],
        "{again}"
    );
    assert_eq!(
        again["device_cert_seq"], admitted["device_cert_seq"],
        "{again}"
    );
    let om = ok_json(t.cli(OM).args(["talks", "cosign", "--json"]));
    assert_eq!(om["cosigned"].as_array().unwrap().len(), 1, "{om}");
    let ir = ok_json(t.cli(IR).args(["talks", "cosign", "--json"]));
    assert_eq!(ir["applied"], 1, "{ir}");
    run(t.cli(US).args(["members", "admit", "--reply"]).arg(&reply))
        .refused(FAILED, "already admitted and seated");
    // Seated, but not yet in the rooms' MLS groups: its first command puts
    // its key packages on the node; the next command of a member of its
    // rooms adds it and copies the rooms' earlier statements for it.
    run(t.cli("neg").args(["send", "--room", "caucus", "too early"]))
        .refused(FAILED, "the roster has not been received yet");
    ok(t.cli(US).args(["read"]));
    let seq = t.send("neg", "caucus", "The negotiator is here.");
    // It reads the record as it stood before it joined, opened by the copy
    // and checked against the commitments logged at those seqs.
    let neg_view = t.read_all("neg");
    let roster = neg_view
        .iter()
        .find(|l| l["text"].as_str().is_some_and(|t| t.starts_with("roster")))
        .expect("the negotiator reads the roster from the copy");
    assert_eq!(roster["verdict"], "accepted", "{roster}");
    let seen = t.read_all(OM);
    let line = seen
        .iter()
        .find(|l| l["seq"] == seq)
        .expect("the mediator reads it");
    assert_eq!(line["text"], "The negotiator is here.");
    assert!(
        line["sender"]
            .as_str()
            .unwrap()
            .contains("certified after the roster"),
        "{line}"
    );
    // The US names its own member as it invited them.
    let us_view = t.read_all(US);
    let line = us_view.iter().find(|l| l["seq"] == seq).unwrap();
    assert!(
        line["sender"]
            .as_str()
            .unwrap()
            .starts_with("US negotiator"),
        "{line}"
    );

    // The caucus talk from before it joined: unreadable, with the reason
    // and what to do, not an error.
    let early_line = |h: &str| {
        t.read_all(h)
            .into_iter()
            .find(|l| l["seq"] == early)
            .expect("archived")
    };
    let before_handover = early_line("neg");
    assert!(
        before_handover["text"]
            .as_str()
            .unwrap()
            .contains("ask your head of delegation for a handover"),
        "{before_handover}"
    );
    // Bad handovers are refused and post nothing.
    let before = t.whole_log().len();
    run(t.cli(US).args(["handover", "--to", "nobody"])).refused(FAILED, "your party has no member");
    run(t.cli(IR).args(["handover", "--to", "US negotiator"]))
        .refused(FAILED, "your party has no member");
    run(t
        .cli(US)
        .args(["handover", "--to", "US negotiator", "--until", "999999"]))
    .refused(FAILED, "lies past the latest checkpoint you verified");
    run(t
        .cli(US)
        .args(["handover", "--to", "US negotiator", "--until", "0"]))
    .refused(FAILED, "hands over nothing");
    run(t
        .cli(US)
        .args(["handover", "--to", "US negotiator", "--rooms", "nowhere"]))
    .refused(FAILED, "you are in no room called");
    assert_eq!(t.whole_log().len(), before, "nothing was posted");
    // The envoy hands the caucus over; the negotiator verifies it against
    // the log and reads it; the record says who shared what.
    t.verified_to(US, t.whole_log().len() as u64);
    let sent = ok_json(t.cli(US).args([
        "handover",
        "--json",
        "--to",
        "US negotiator",
        "--rooms",
        "caucus",
    ]));
    assert!(sent["opened"].as_u64().unwrap() >= 1, "{sent}");
    let after_handover = early_line("neg");
    assert_eq!(
        after_handover["text"], "Before the negotiator: hold the funds question.",
        "{after_handover}"
    );
    let listed = ok_json(t.cli("neg").args(["handover", "--list", "--json"]));
    let received = &listed["received"][0];
    assert_eq!(received["applied"], true, "{listed}");
    assert_eq!(received["from"], "US envoy", "{listed}");
    assert_eq!(received["announced_at"], sent["statement_seq"], "{listed}");
    for h in [OM, IR] {
        let seen = ok_json(t.cli(h).args(["handover", "--list", "--json"]));
        assert_eq!(seen["received"], serde_json::json!([]), "{h}: {seen}");
        assert_eq!(
            seen["announced"].as_array().unwrap().len(),
            1,
            "{h}: {seen}"
        );
    }

    // The negotiator's laptop is lost after its first message: it sends
    // once more, at a node time past the loss.
    let first_time = line["node_time"].as_u64().unwrap();
    let lost_at = (first_time / 1000 + 2) * 1000;
    while now_ms() <= lost_at {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stolen = t.send("neg", "caucus", "Sent by whoever holds the laptop.");

    // Bad --lost-at values change nothing.
    let before = t.whole_log().len();
    let remove = |extra: &[&str]| {
        let mut cmd = t.cli(US);
        cmd.args(["members", "remove", "--member", "US negotiator"]);
        cmd.args(extra);
        run(&mut cmd)
    };
    remove(&["--lost-at", &rfc3339(lost_at)]).refused(FAILED, "goes with --reason lost");
    remove(&["--reason", "lost", "--lost-at", "yesterday"]).refused(FAILED, "not a UTC time");
    remove(&["--reason", "lost", "--lost-at", "2026-02-30T10:00Z"])
        .refused(FAILED, "not a UTC time");
    remove(&[
        "--reason",
        "lost",
        "--lost-at",
        &rfc3339(now_ms() + 3_600_000),
    ])
    .refused(FAILED, "lies in the future");
    assert_eq!(t.whole_log().len(), before, "nothing was posted");

    // Removal: revoked in the record, off the list.
    run(t
        .cli(IR)
        .args(["members", "remove", "--member", "US negotiator"]))
    .refused(FAILED, "no member");
    run(t
        .cli(US)
        .args(["members", "remove", "--member", "US envoy"]))
    .refused(FAILED, "cannot remove yourself");
    let removed = ok_json(t.cli(US).args([
        "members",
        "remove",
        "--json",
        "--member",
        "US negotiator",
        "--reason",
        "lost",
        "--lost-at",
        &rfc3339(lost_at),
    ]));
    assert_eq!(removed["revoked"].as_array().unwrap().len(), 2, "{removed}");
    assert_eq!(removed["devices_removed"], 1, "{removed}");
    // Every view flags what the device sent from the first seq stamped at
    // or after the loss — sequenced before the revocation — and not what
    // it sent before.
    for h in [OM, US] {
        let view = t.read_all(h);
        let sender = |seq: u64| {
            view.iter().find(|l| l["seq"] == seq).unwrap()["sender"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert!(
            !sender(seq).contains("reported lost"),
            "{h}: {}",
            sender(seq)
        );
        assert!(
            sender(stolen).contains("reported lost"),
            "{h}: {}",
            sender(stolen)
        );
    }
    run(t
        .cli("neg")
        .args(["send", "--room", "caucus", "still here?"]))
    .refused(FAILED, "taken off the access list");
    // Every replay accepts the revocations and rejects nothing; every log
    // verifies.
    let size = t.whole_log().len() as u64;
    for h in [OM, US, IR] {
        let v = t.verified_to(h, size);
        assert_eq!(v["statements_rejected"], serde_json::json!([]), "{h}: {v}");
    }
}

/// A party suspends; nothing is said until the talks resume; only the
/// suspending party or the mediator resumes; the mediator concludes and
/// closes, in that order; every view shows the phase.
#[test]
fn the_talks_are_suspended_resumed_concluded_and_closed() {
    let t = Talks::open();
    let suspended = ok_json(t.cli(US).args([
        "talks",
        "suspend",
        "--json",
        "--reason",
        "consulting the capital",
    ]));
    assert!(
        suspended["phase"]
            .as_str()
            .unwrap()
            .starts_with("suspended by United States"),
        "{suspended}"
    );
    for h in [OM, IR] {
        assert!(
            t.show(h)["phase"]
                .as_str()
                .unwrap()
                .starts_with("suspended by United States"),
            "{h}"
        );
    }
    run(t.cli(IR).args(["send", "--room", "caucus", "hello?"])).refused(FAILED, "suspended");
    run(t.cli(IR).args(["talks", "resume"])).refused(FAILED, "cannot be resumed now");
    run(t.cli(OM).args(["talks", "close"])).refused(FAILED, "cannot be closed now");
    ok(t.cli(OM)
        .args(["talks", "resume", "--reason", "the capital answered"]));
    assert_eq!(t.show(IR)["phase"], "open");
    t.send(IR, "caucus", "We are back.");
    run(t.cli(US).args(["talks", "conclude"])).refused(FAILED, "cannot be concluded now");
    ok(t.cli(OM)
        .args(["talks", "conclude", "--reason", "agreement reached"]));
    run(t
        .cli(US)
        .args(["send", "--room", "caucus", "one more thing"]))
    .refused(FAILED, "concluded");
    ok(t.cli(OM).args(["talks", "close"]));
    assert!(t.show(US)["phase"].as_str().unwrap().starts_with("closed"));
    let size = t.whole_log().len() as u64;
    for h in [OM, US, IR] {
        let v = t.verified_to(h, size);
        assert_eq!(v["statements_rejected"], serde_json::json!([]), "{h}: {v}");
    }
}

// --- Messages, release, conveyance -------------------------------------------

/// `h`'s `read --json` lines of `kind` whose text holds `needle`.
fn lines_with(t: &Talks, h: &str, kind: &str, needle: &str) -> Vec<Value> {
    t.read_all(h)
        .into_iter()
        .filter(|l| l["kind"] == kind && l["text"].as_str().unwrap().contains(needle))
        .collect()
}

/// `message`/`release`/`convey`/`receipt` `--json` by `h`, which must
/// succeed: the seq.
fn posted(t: &Talks, h: &str, args: &[&str]) -> u64 {
    let v = ok_json(t.cli(h).arg(args[0]).arg("--json").args(&args[1..]));
    v["seq"].as_u64().unwrap()
}

/// The whole path of a position across the proximity line: the US drafts
/// in its internal room and releases to its caucus (marked verbatim, for
/// Iran, receipt required); Oman conveys it verbatim to Iran, whose client
/// verifies the evidence and the author's signature; the US sees the
/// conveyance receipt; Iran's mediator-only demand cannot be conveyed
/// verbatim (refused, nothing sent) but can be re-drafted (with a
/// warning); a non-paper and a recorded act are shown as what they are;
/// receipts and `pending`; `read --item` threads one item across rooms; a
/// sealed letter passes between the parties with no mediator in the room;
/// and the bad inputs are refused with nothing sent.
#[test]
fn a_position_is_drafted_released_conveyed_and_receipted() {
    let t = {
        let mut t = Talks::seated_with(&["--require-release", "--letters", "--track", "shipping"]);
        t.accept_all();
        t
    };
    // The proximity invariant, as the roster declares it: Iran is in no
    // room of the US but the record, the track and their letter room.
    let us_rooms = my_rooms(&t.show(US));
    let ir_rooms = my_rooms(&t.show(IR));
    let om_rooms = my_rooms(&t.show(OM));
    let shared: BTreeSet<_> = us_rooms.intersection(&ir_rooms).cloned().collect();
    assert_eq!(shared.len(), 3, "{shared:?}");
    assert!(us_rooms.contains("Internal: United States"), "{us_rooms:?}");
    assert!(
        !om_rooms.contains("Internal: United States"),
        "{om_rooms:?}"
    );
    assert!(
        !ir_rooms.contains("Internal: United States"),
        "{ir_rooms:?}"
    );
    assert!(
        om_rooms.contains("Mediators: Sultanate of Oman"),
        "{om_rooms:?}"
    );

    // A draft in the US internal room; sent straight out it is refused.
    let draft = posted(
        &t,
        US,
        &[
            "message",
            "--room",
            "internal",
            "--item",
            "proxies",
            "Iran must restrain its proxies",
        ],
    );
    run(t
        .cli(US)
        .args(["message", "--room", "caucus", "unreleased words"]))
    .refused(FAILED, "leave the delegation by release");
    // Released to the caucus, for Iran, verbatim allowed, receipt required.
    let released = posted(
        &t,
        US,
        &[
            "release",
            "--draft",
            &draft.to_string(),
            "--to",
            "caucus",
            "--marking",
            "verbatim",
            "--for",
            "IR",
            "--receipt-required",
        ],
    );
    let om_sees = lines_with(&t, OM, "message", "Iran must restrain its proxies");
    assert_eq!(om_sees.len(), 1, "{om_sees:?}");
    assert!(
        om_sees[0]["text"]
            .as_str()
            .unwrap()
            .contains("drafted by US envoy, released by US envoy"),
        "{om_sees:?}"
    );
    // Oman owes a receipt.
    let pending = ok_json(t.cli(OM).args(["pending", "--json"]));
    assert!(
        pending
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["seq"] == released && p["what"] == "receipt"),
        "{pending}"
    );
    posted(&t, OM, &["receipt", "--seq", &released.to_string()]);
    let pending = ok_json(t.cli(OM).args(["pending", "--json"]));
    assert!(
        !pending
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["seq"] == released),
        "{pending}"
    );

    // Conveyed verbatim to Iran: Iran's client checks the evidence.
    let conveyed = posted(
        &t,
        OM,
        &[
            "convey",
            "--to",
            "caucus islamic",
            "verbatim",
            "--seq",
            &released.to_string(),
        ],
    );
    let ir_sees = lines_with(&t, IR, "conveyance", "Iran must restrain its proxies");
    assert_eq!(ir_sees.len(), 1, "{ir_sees:?}");
    let text = ir_sees[0]["text"].as_str().unwrap();
    assert!(
        text.contains("conveyed verbatim by Omani lead mediator"),
        "{text}"
    );
    assert!(text.contains("US envoy of United States"), "{text}");
    assert!(text.contains("signature verified"), "{text}");
    assert!(names(text, released), "{text}");
    // The US sees where its words went.
    let receipts = lines_with(
        &t,
        US,
        "receipt",
        "conveyed verbatim to Islamic Republic of Iran",
    );
    assert_eq!(receipts.len(), 1, "{receipts:?}");
    let receipt = receipts[0]["text"].as_str().unwrap();
    assert!(names(receipt, conveyed), "{receipt}");
    // When: the US is not in Iran's caucus, so the time the receipt was
    // logged, right after the conveyance.
    assert!(receipt.contains("; receipted at 20"), "{receipt}");

    // Iran's demand, for the mediator only: no verbatim conveyance.
    let ir_draft = posted(
        &t,
        IR,
        &[
            "message",
            "--room",
            "internal",
            "--item",
            "ceasefire",
            "We demand a ceasefire first",
        ],
    );
    let demand = posted(
        &t,
        IR,
        &[
            "release",
            "--draft",
            &ir_draft.to_string(),
            "--to",
            "caucus",
            "--marking",
            "mediator-only",
        ],
    );
    let before = t.read_all(US).len();
    run(t.cli(OM).args([
        "convey",
        "--to",
        "caucus united",
        "verbatim",
        "--seq",
        &demand.to_string(),
    ]))
    .refused(FAILED, "mediator-only: it may not be conveyed verbatim");
    assert_eq!(
        t.read_all(US).len(),
        before,
        "a refused conveyance sent something"
    );
    // Re-drafted instead, with a warning to the mediator.
    let out = run(t.cli(OM).args([
        "convey",
        "--to",
        "caucus united",
        "redraft",
        "--about",
        "IR",
        "--source",
        &demand.to_string(),
        "--item",
        "ceasefire",
        "Iran would consider a ceasefire as a first step",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("marked mediator-only"), "{out:?}");
    let us_sees = lines_with(&t, US, "conveyance", "Iran would consider a ceasefire");
    assert!(
        us_sees[0]["text"]
            .as_str()
            .unwrap()
            .contains("rendering of Islamic Republic of Iran's position"),
        "{us_sees:?}"
    );
    // The link to the source stays in the mediators' room.
    let links = lines_with(&t, OM, "message", &format!("re-drafted seq {demand}"));
    assert_eq!(links.len(), 1);
    assert!(links[0]["room"].as_str().unwrap().starts_with("Mediators:"));
    // A non-paper, and an act recorded off the system.
    posted(
        &t,
        OM,
        &[
            "convey",
            "--to",
            "caucus united",
            "non-paper",
            "--item",
            "detainees",
            "A phased exchange of detainees",
        ],
    );
    posted(
        &t,
        OM,
        &[
            "convey",
            "--to",
            "caucus united",
            "record",
            "--by",
            "IR",
            "--at",
            "5m",
            "Iran conveyed orally that talks may continue",
        ],
    );
    assert!(
        lines_with(&t, US, "conveyance", "A phased exchange")[0]["text"]
            .as_str()
            .unwrap()
            .contains("non-paper")
    );
    assert!(
        lines_with(&t, US, "conveyance", "conveyed orally")[0]["text"]
            .as_str()
            .unwrap()
            .contains("RECORDED by Omani lead mediator")
    );

    // One item across every room the reader may see.
    let proxies = run(t.cli(US).args(["read", "--item", "proxies", "--json"])).json_lines();
    assert_eq!(seqs(&proxies), vec![draft, released], "{proxies:?}");
    let proxies = run(t.cli(IR).args(["read", "--item", "PROXIES", "--json"])).json_lines();
    assert_eq!(seqs(&proxies), vec![conveyed], "{proxies:?}");

    // A sealed letter: the parties' own room, no mediator.
    let letter_draft = posted(
        &t,
        US,
        &["message", "--room", "internal", "A sealed letter to Tehran"],
    );
    let letter = posted(
        &t,
        US,
        &[
            "release",
            "--draft",
            &letter_draft.to_string(),
            "--to",
            "letter",
        ],
    );
    assert_eq!(lines_with(&t, IR, "message", "A sealed letter").len(), 1);
    assert!(
        !t.read_all(OM).iter().any(|l| l["seq"] == letter),
        "the mediator holds the letter"
    );

    // Bad inputs: a clear error, nothing sent.
    let size = t.whole_log().len();
    run(t.cli(US).args(["message", "--room", "record", "words"]))
        .refused(FAILED, "record room carries formal signed statements only");
    run(t
        .cli(US)
        .args(["convey", "--to", "caucus", "non-paper", "words"]))
    .refused(FAILED, "only a mediator");
    run(t.cli(US).args([
        "release",
        "--draft",
        &conveyed.to_string(),
        "--to",
        "caucus",
    ]))
    .refused(FAILED, "no statement at seq");
    run(t.cli(OM).args(["receipt", "--seq", &demand.to_string()]))
        .refused(FAILED, "not marked receipt-required");
    run(t
        .cli(US)
        .args(["message", "--room", "caucus", "--item", "", "x"]))
    .refused(FAILED, "agenda item");
    assert_eq!(
        t.whole_log().len(),
        size,
        "a refused command sent something"
    );
}

/// A plenary beside the proximity caucuses (`--preset proximity --preset
/// direct`) opens only for a joint session every party in it consented
/// to: talk there is refused until the last consent, then reaches both
/// delegations; a consent for a caucus is refused.
#[test]
fn a_joint_session_opens_only_with_every_partys_consent() {
    let mut t = Talks::seated_with(&["--preset", "proximity", "--preset", "direct"]);
    t.accept_all();
    assert!(my_rooms(&t.show(IR)).contains("Plenary"));
    let size = t.whole_log().len();
    run(t.cli(US).args(["send", "--room", "plenary", "too early"]))
        .refused(FAILED, "open only during a joint session");
    run(t
        .cli(US)
        .args(["talks", "consent", "--room", "caucus", "--for", "2h"]))
    .refused(FAILED, "is not one");
    assert_eq!(
        t.whole_log().len(),
        size,
        "a refused command sent something"
    );
    for (i, h) in [US, IR, OM].into_iter().enumerate() {
        let v = ok_json(t.cli(h).args([
            "talks", "consent", "--room", "plenary", "--for", "2h", "--json",
        ]));
        assert_eq!(v["open_now"], i == 2, "{v}");
        if i < 2 {
            run(t.cli(US).args(["send", "--room", "plenary", "still early"]))
                .refused(FAILED, "open only during a joint session");
        }
    }
    let seq = t.send(US, "plenary", "Good morning to both delegations.");
    assert!(
        t.read_all(IR)
            .iter()
            .any(|l| l["seq"] == seq && l["text"] == "Good morning to both delegations."),
        "Iran does not read the plenary"
    );
}

// --- Several nodes -------------------------------------------------------------

/// Two nodes on one PostgreSQL database: each home is given both
/// addresses with `talks nodes --set` (bad lists refused, nothing changed),
/// sends in a loop while the first node is SIGKILLed, and every send is
/// acknowledged — the client fails over by itself — with every
/// acknowledged envelope in the log and every home verifying one log
/// without evidence. Skipped without `BACKCHANNEL_TEST_DATABASE_URL`.
#[test]
fn the_cli_fails_over_between_nodes_on_one_database() {
    let Some(db) = common::PgDatabase::create() else {
        return;
    };
    let mut t = Talks::seated_on(&[], Some(&db.url));
    t.accept_all();
    let b = Node::start(&t.node_dir(), "127.0.0.1:0", Some(&db.url));
    assert_eq!(b.fingerprint, t.node.fingerprint, "one TLS identity");
    let (a_addr, b_addr) = (t.node.addr.to_string(), b.addr.to_string());

    // Bad lists change nothing.
    let nodes = |h| ok_json(t.cli(h).args(["talks", "nodes", "--json"]))["nodes"].clone();
    assert_eq!(nodes(US), serde_json::json!([a_addr]));
    run(t
        .cli(US)
        .args(["talks", "nodes", "--set", &format!("{a_addr},,{b_addr}")]))
    .refused(FAILED, "is not host:port");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    run(t
        .cli(US)
        .args(["talks", "nodes", "--set", &format!("{a_addr},{closed}")]))
    .refused(FAILED, "nothing was changed");
    // Another node (another TLS identity) is refused by its certificate.
    let other_dir = t.path("other-node");
    ok(backchannel()
        .args(["node", "init", "--origin", ORIGIN, "--dir"])
        .arg(&other_dir));
    let other = Node::start(&other_dir, "127.0.0.1:0", None);
    run(t.cli(US).args([
        "talks",
        "nodes",
        "--set",
        &format!("{a_addr},{}", other.addr),
    ]))
    .refused(FAILED, "did not present the node certificate");
    drop(other);
    assert_eq!(nodes(US), serde_json::json!([a_addr]));

    for h in [OM, US, IR] {
        let set = ok_json(t.cli(h).args([
            "talks",
            "nodes",
            "--json",
            "--set",
            &format!(" {a_addr} , {b_addr} "),
        ]));
        assert_eq!(set["nodes"], serde_json::json!([a_addr, b_addr]), "{set}");
        assert_eq!(set["changed"], true);
    }

    // Each home sends in a loop; node A is SIGKILLed under them.
    let acked: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::default();
    let loops: Vec<_> = [(OM, "caucus islamic"), (US, "caucus"), (IR, "caucus")]
        .into_iter()
        .map(|(h, room)| {
            let (root, acked) = (t.dir.path().to_owned(), Arc::clone(&acked));
            std::thread::spawn(move || {
                for i in 0..12 {
                    let text = format!("{h} message {i}");
                    let out =
                        run(home_cli(&root, h).args(["send", "--json", "--room", room, &text]));
                    assert_eq!(out.code, Some(0), "{h} message {i}: {out:?}");
                    let seq = out.json()["seq"].as_u64().unwrap();
                    acked.lock().unwrap().push((h.to_owned(), seq, text));
                }
            })
        })
        .collect();
    for _ in 0..600 {
        if acked.lock().unwrap().len() >= 6 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    t.node.kill();
    for l in loops {
        l.join()
            .expect("every send was acknowledged, through B after A died");
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 36);

    // One log, every acknowledged send in it, verified by every home.
    let size = acked.iter().map(|(_, seq, _)| seq + 1).max().unwrap();
    let first = t.verified_to(OM, size);
    let all = t.whole_log();
    for (h, seq, text) in &acked {
        assert_eq!(at(&all, *seq)["text"], text.as_str(), "{h} seq {seq}");
    }
    for h in [US, IR] {
        let v = t.verified_to(h, size);
        assert_eq!(v["root"], first["root"], "{h}: {v}");
    }
    drop(b);
}
