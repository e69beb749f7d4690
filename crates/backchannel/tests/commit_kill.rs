//! A client SIGKILLed at each point of a commit ends on the winning epoch
//! with no commit applied twice.
//!
//! A real `backchannel node run` and the reference homes (Oman mediating
//! between the United States and Iran); the US admits a negotiator after
//! the roster, whose device puts its key packages on the node. The US
//! envoy's next `read` commits the negotiator's add to each of its rooms:
//! that one run is killed at a failpoint of the commit path
//! (`BACKCHANNEL_FAILPOINT`, see `backchannel_client::rooms::COMMIT_FAILPOINTS`),
//! then `read` runs again without it. Then: it succeeds; each of the
//! negotiator's rooms moved exactly one epoch on the node, by exactly one
//! handshake, and every room's log holds one handshake per epoch (the
//! creation, then one commit per epoch: none twice); the US view has no
//! commit it could not process; and every member, the killed one and the
//! newcomer included, reads what every other sends in their rooms after
//! the recovery (the node takes messages of a room's current epoch only,
//! so each sender is on the winning epoch, and each reader too), and the
//! newcomer reads the record from before it joined (the copy for
//! newcomers was posted).
#![cfg(unix)]
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use backchannel_client::rooms::{COMMIT_FAILPOINTS, FAILPOINT_VAR};
use backchannel_statement::{Kind, SignedHeader};
use common::{backchannel, ok};
use serde_json::Value;
use sqlx::Connection as _;

const ORIGIN: &str = "kill.example.org";
const HOME_PASSPHRASE: &str = "home passphrase";
const OM: &str = "om";
const US: &str = "us";
const IR: &str = "ir";
const NEG: &str = "neg";

#[test]
fn killed_after_creating_the_commit() {
    check("commit-created");
}

#[test]
fn killed_after_submitting_the_commit() {
    check("commit-submitted");
}

#[test]
fn killed_after_the_reply() {
    check("commit-replied");
}

#[test]
fn killed_after_merging() {
    check("commit-merged");
}

/// The US envoy's `read`, which adds the negotiator to its rooms, killed at
/// `point`; then run again.
fn check(point: &str) {
    assert!(COMMIT_FAILPOINTS.contains(&point), "{point}");
    let t = Talks::open();
    t.admit_negotiator();
    let before = t.node_rooms();

    // Killed at its first commit; run again with the failpoint still
    // set, it goes on from there and is killed at its next commit, until
    // a run makes no commit: so each room's commit is killed once.
    let mut kills = 0;
    loop {
        let out = t
            .cli(US)
            .env(FAILPOINT_VAR, point)
            .arg("read")
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert_killed(&out, point);
        kills += 1;
        assert!(kills <= 10, "{point}: killed {kills} times");
        if kills == 1 {
            // The node took that one commit, or none.
            let mid = t.node_rooms();
            let moved: u64 = mid.iter().map(|(r, m)| m.epoch - before[r].epoch).sum();
            assert_eq!(
                moved,
                u64::from(point != "commit-created"),
                "{point}: {before:?} → {mid:?}"
            );
        }
    }

    // Run again, without the failpoint: it recovers.
    ok(t.cli(US).arg("read"));
    let after = t.node_rooms();
    let mut added_to = BTreeSet::new();
    for (room, a) in &after {
        let b = &before[room];
        assert!(
            a.epoch <= b.epoch + 1,
            "{point}: room {room}: {b:?} → {a:?}"
        );
        assert_eq!(
            a.handshakes - b.handshakes,
            a.epoch - b.epoch,
            "{point}: room {room}: a commit more than the epochs it moved"
        );
        // The creation, then one commit per epoch.
        assert_eq!(a.handshakes, a.epoch + 1, "{point}: room {room}: {a:?}");
        if a.epoch > b.epoch {
            added_to.insert(room.clone());
        }
    }
    // The US device processed every commit of the log.
    for l in t.read_all(US) {
        assert_ne!(l["kind"], "unreadable", "{point}: {l}");
    }

    // The newcomer joins from the Welcome, and the rooms that moved are
    // its.
    ok(t.cli(NEG).arg("read"));
    // The newcomer reads the record as it stood before it joined, from the
    // copy the committer owed it.
    let roster = t
        .read_all(NEG)
        .into_iter()
        .find(|l| l["text"].as_str().is_some_and(|t| t.starts_with("roster")));
    assert!(
        roster.is_some_and(|r| r["verdict"] == "accepted"),
        "{point}: the newcomer does not read the roster"
    );
    let neg_rooms = rooms_of(&t.show(NEG));
    assert_eq!(
        neg_rooms.values().cloned().collect::<BTreeSet<_>>(),
        added_to,
        "{point}"
    );
    assert_eq!(kills, added_to.len(), "{point}: one kill per commit");
    // Every member says something in every room it shares with the
    // newcomer (the record carries statements only: the US suspends the
    // talks, Oman resumes them), and each reads what every other said.
    let mut said: Vec<(String, String)> = Vec::new();
    for (name, id) in &neg_rooms {
        if name == "Record" {
            for (h, act) in [(US, "suspend"), (OM, "resume")] {
                let reason = format!("{h} {act}s after {point}");
                ok(t.cli(h).args(["talks", act, "--reason", &reason]));
                said.push((id.clone(), reason));
            }
            continue;
        }
        for h in [OM, US, IR, NEG] {
            if !rooms_of(&t.show(h)).contains_key(name) {
                continue;
            }
            let text = format!("{h} in {name} after {point}");
            ok(t.cli(h).args(["send", "--room", id]).arg(&text));
            said.push((id.clone(), text));
        }
    }
    assert!(said.len() >= 5, "{said:?}");
    for h in [OM, US, IR, NEG] {
        let mine: BTreeSet<String> = rooms_of(&t.show(h)).into_values().collect();
        let lines = t.read_all(h);
        for (room, text) in said.iter().filter(|(r, _)| mine.contains(r)) {
            assert!(
                lines.iter().any(|l| l["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(text.as_str()))),
                "{point}: {h} does not read {text:?} in {room}: {lines:#?}"
            );
        }
    }
    // Nothing moved the epochs further (no rejoin, no commit again).
    let end = t.node_rooms();
    for (room, a) in &end {
        assert_eq!(a.epoch, after[room].epoch, "{point}: room {room}");
    }
}

/// The process was killed by a signal (the failpoint), not exited.
#[track_caller]
fn assert_killed(out: &std::process::Output, point: &str) {
    use std::os::unix::process::ExitStatusExt as _;
    // SIGKILL (9), or SIGABRT (6) where `kill` could not be run.
    assert!(
        matches!(out.status.signal(), Some(9 | 6)),
        "{point}: not killed at the failpoint: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A room of the node, as its database holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodeRoom {
    /// The current epoch (`room_state`).
    epoch: u64,
    /// The handshake envelopes (creation and commits) of its log.
    handshakes: u64,
}

/// The rooms `show` marks the home's: name → id (hex).
fn rooms_of(show: &Value) -> BTreeMap<String, String> {
    show["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["mine"] == true)
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["room"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

// --- The node ----------------------------------------------------------------

/// A running `backchannel node run`, SIGKILLed when dropped.
struct Node {
    child: Child,
    addr: SocketAddr,
    fingerprint: String,
}

impl Node {
    fn start(dir: &Path) -> Node {
        let mut child = backchannel()
            .args(["node", "run", "--listen", "127.0.0.1:0"])
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
        let (addr, fingerprint) = common::listening(&mut child).expect("the node listens");
        Node {
            child,
            addr,
            fingerprint,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- The talks ---------------------------------------------------------------

/// A node and three homes in one talks, accepted by both parties.
struct Talks {
    dir: tempfile::TempDir,
    node: Node,
}

fn ok_json(cmd: &mut Command) -> Value {
    let out = ok(cmd);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

impl Talks {
    fn open() -> Talks {
        let dir = tempfile::tempdir().unwrap();
        let node_dir = dir.path().join("node");
        let init = ok_json(
            backchannel()
                .args(["node", "init", "--origin", ORIGIN, "--json", "--dir"])
                .arg(&node_dir),
        );
        let log_key = init["log_key"].as_str().unwrap().to_owned();
        let home = |h: &str| home_cli(dir.path(), h);
        for h in [OM, US, IR, NEG] {
            ok(home(h).args(["home", "init"]));
        }
        ok(home(OM).args(["keys", "generate", "--kind", "authority"]));
        let key = ok(home(OM).args([
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
        let t = Talks {
            node: Node::start(&node_dir),
            dir,
        };
        let addr = t.node.addr.to_string();
        ok(t.cli(OM).args([
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
        ]));
        for (h, name, member) in [
            (US, "United States", "US envoy"),
            (IR, "Islamic Republic of Iran", "Iranian deputy FM"),
        ] {
            let inv = t.path(&format!("{h}.inv"));
            ok(t.cli(OM).args(["talks", "invite", "--out"]).arg(&inv));
            ok(t.cli(h)
                .args(["talks", "join", "--invitation"])
                .arg(&inv)
                .args(["--name", name, "--member", member]));
        }
        ok(t.cli(OM).args(["talks", "seat"]));
        let children: Vec<Child> = [US, IR]
            .iter()
            .map(|h| {
                t.cli(h)
                    .args(["talks", "accept", "--wait", "60"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let seated = ok_json(t.cli(OM).args(["talks", "seat", "--wait", "60", "--json"]));
        assert_eq!(seated["roster_posted"], true, "{seated}");
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "talks accept: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        t
    }

    /// The US admits a negotiator, seated once the mediator and Iran
    /// co-sign; its device puts its key packages on the node. Nobody has
    /// added it to a room's group yet.
    fn admit_negotiator(&self) {
        let invitation = self.path("neg.member");
        let reply = self.path("neg.reply");
        ok(self
            .cli(US)
            .args(["members", "add", "--name", "US negotiator"])
            .args(["--role", "negotiator", "--out"])
            .arg(&invitation));
        ok(self
            .cli(NEG)
            .args(["members", "join", "--invitation"])
            .arg(&invitation)
            .arg("--out")
            .arg(&reply));
        ok(self
            .cli(US)
            .args(["members", "admit", "--reply"])
            .arg(&reply));
        ok(self.cli(OM).args(["talks", "cosign"]));
        ok(self.cli(IR).args(["talks", "cosign"]));
        // Its first command puts its key packages on the node.
        ok(self.cli(NEG).arg("read"));
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cli(&self, h: &str) -> Command {
        home_cli(self.dir.path(), h)
    }

    fn show(&self, h: &str) -> Value {
        ok_json(self.cli(h).args(["talks", "show", "--json"]))
    }

    /// `read --all --json` of `h`.
    fn read_all(&self, h: &str) -> Vec<Value> {
        ok(self.cli(h).args(["read", "--all", "--json"]))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// Every room of the node's database: its epoch and its handshakes.
    fn node_rooms(&self) -> BTreeMap<String, NodeRoom> {
        let db = self.path("node").join("node.db");
        runtime().block_on(async {
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap();
            let epochs: Vec<(Vec<u8>, i64)> = sqlx::query_as("SELECT room, epoch FROM room_state")
                .fetch_all(&mut c)
                .await
                .unwrap();
            let headers: Vec<Vec<u8>> = sqlx::query_scalar("SELECT header FROM envelopes")
                .fetch_all(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
            let mut out: BTreeMap<String, NodeRoom> = epochs
                .into_iter()
                .map(|(room, epoch)| {
                    (
                        hex::encode(room),
                        NodeRoom {
                            epoch: epoch as u64,
                            handshakes: 0,
                        },
                    )
                })
                .collect();
            let mut seen = BTreeSet::new();
            for bytes in headers {
                assert!(seen.insert(bytes.clone()), "an envelope logged twice");
                let h = *SignedHeader::decode(&bytes).unwrap().header();
                if h.kind == Kind::MlsHandshake {
                    out.get_mut(&hex::encode(h.room.as_bytes()))
                        .expect("a handshake of a room with a group")
                        .handshakes += 1;
                }
            }
            out
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The binary, on home `h` under `root`.
fn home_cli(root: &Path, h: &str) -> Command {
    let mut cmd = backchannel();
    cmd.env("BACKCHANNEL_PASSPHRASE", HOME_PASSPHRASE)
        .env_remove("BACKCHANNEL_HOME")
        .env_remove(FAILPOINT_VAR)
        .arg("--home")
        .arg(root.join(h));
    cmd
}
