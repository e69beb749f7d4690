//! A node and three homes in one talks, through the binary: Oman mediating
//! between the United States and Iran (`Talks::open`), with the helpers
//! the CLI tests of members and devices share (`device_cli`,
//! `succession_cli`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{backchannel, ok};

/// The node's origin.
pub const ORIGIN: &str = "device.example.org";
/// The passphrase of every home.
pub const HOME_PASSPHRASE: &str = "home passphrase";
/// The homes of the mediator and the two parties.
pub const OM: &str = "om";
pub const US: &str = "us";
pub const IR: &str = "ir";
/// The command failed.
pub const FAILED: i32 = 1;
/// The arguments were not understood.
pub const USAGE: i32 = 2;

// --- Running the binary ------------------------------------------------------

/// What one command did.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// Asserts the command failed with `code`, saying each of `what` on
    /// stderr.
    #[track_caller]
    pub fn refused(&self, code: i32, what: &[&str]) {
        assert_eq!(self.code, Some(code), "{self:?}");
        for w in what {
            assert!(
                self.stderr.contains(w),
                "stderr does not say {w:?}: {self:?}"
            );
        }
    }
}

pub fn run(cmd: &mut Command) -> Out {
    let out = cmd.output().expect("runs");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `cmd`, which must succeed; its stdout as JSON.
pub fn ok_json(cmd: &mut Command) -> Value {
    let out = ok(cmd);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

// --- The node ----------------------------------------------------------------

/// A running `backchannel node run`, SIGKILLed when dropped.
pub struct Node {
    child: Child,
    pub addr: SocketAddr,
    pub fingerprint: String,
}

impl Node {
    pub fn start(dir: &Path) -> Node {
        // Every command is a new connection from 127.0.0.1.
        let (child, addr, fingerprint) = super::start_node_with(
            dir,
            None,
            &[
                "--connections-per-second",
                "1000",
                "--connection-burst",
                "1000",
                "--requests-per-second",
                "1000",
                "--request-burst",
                "1000",
            ],
        );
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

/// A node and the homes, in one talks.
pub struct Talks {
    pub dir: tempfile::TempDir,
    /// The `talks open` flags that pin the node (address, fingerprint,
    /// origin, log key).
    pub pin: Vec<String>,
    _node: Node,
}

impl Talks {
    /// Oman opens the talks, invites and seats the United States and Iran,
    /// both accept, and the roster is out.
    pub fn open() -> Talks {
        let dir = tempfile::tempdir().unwrap();
        let node_dir = dir.path().join("node");
        let init = ok_json(
            backchannel()
                .args(["node", "init", "--origin", ORIGIN, "--json", "--dir"])
                .arg(&node_dir),
        );
        let log_key = init["log_key"].as_str().unwrap().to_owned();
        let cli = |h: &str| home_cli(dir.path(), h);
        for h in [OM, US, IR] {
            ok(cli(h).args(["home", "init"]));
        }
        ok(cli(OM).args(["keys", "generate", "--kind", "authority"]));
        let key = ok(cli(OM).args([
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
        let node = Node::start(&node_dir);
        let pin: Vec<String> = [
            "--node",
            &node.addr.to_string(),
            "--fingerprint",
            &node.fingerprint,
            "--origin",
            ORIGIN,
            "--log-key",
            &log_key,
        ]
        .map(str::to_owned)
        .into();
        ok(cli(OM).args(["talks", "open"]).args(&pin).args([
            "--name",
            "Sultanate of Oman",
            "--member",
            "Omani lead mediator",
        ]));
        for (h, name, member) in [
            (US, "United States", "US envoy"),
            (
                IR,
                "Islamic Republic of Iran",
                "Iranian deputy foreign minister",
            ),
        ] {
            let inv = dir.path().join(format!("{h}.inv"));
            ok(cli(OM).args(["talks", "invite", "--out"]).arg(&inv));
            ok(cli(h)
                .args(["talks", "join", "--invitation"])
                .arg(&inv)
                .args(["--name", name, "--member", member]));
        }
        ok(cli(OM).args(["talks", "seat"]));
        let children: Vec<Child> = [US, IR]
            .iter()
            .map(|h| {
                cli(h)
                    .args(["talks", "accept", "--wait", "60"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let seated = ok_json(cli(OM).args(["talks", "seat", "--wait", "60", "--json"]));
        assert_eq!(seated["roster_posted"], true, "{seated}");
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "talks accept: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Talks {
            dir,
            pin,
            _node: node,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The binary, on home `h`.
    pub fn cli(&self, h: &str) -> Command {
        home_cli(self.dir.path(), h)
    }

    /// The US invites "US negotiator" (once: `invitation` must not exist).
    pub fn invite_negotiator(&self, invitation: &Path) {
        ok(self
            .cli(US)
            .args([
                "members",
                "add",
                "--name",
                "US negotiator",
                "--role",
                "negotiator",
                "--out",
            ])
            .arg(invitation));
    }

    /// Home `h` answers the negotiator's invitation with a device of its
    /// own; the US admits it, the mediator and Iran co-sign, and it puts
    /// its key packages on the node.
    pub fn admit(&self, h: &str, invitation: &Path) {
        let reply = self.path(&format!("{h}.reply"));
        ok(self.cli(h).args(["home", "init"]));
        ok(self
            .cli(h)
            .args(["members", "join", "--invitation"])
            .arg(invitation)
            .arg("--out")
            .arg(&reply));
        ok(self
            .cli(US)
            .args(["members", "admit", "--reply"])
            .arg(&reply));
        ok(self.cli(OM).args(["talks", "cosign"]));
        ok(self.cli(IR).args(["talks", "cosign"]));
        ok(self.cli(h).args(["read"]));
    }

    /// `send --json` from `h`, which must succeed; the seq.
    pub fn send(&self, h: &str, room: &str, text: &str) -> u64 {
        let sent = ok_json(
            self.cli(h)
                .args(["send", "--json", "--room", room])
                .arg(text),
        );
        sent["seq"].as_u64().unwrap()
    }

    /// `read --all --json` of `h`, which must succeed.
    pub fn read_all(&self, h: &str) -> Vec<Value> {
        let out = run(self.cli(h).args(["read", "--all", "--json"]));
        assert_eq!(out.code, Some(0), "{out:?}");
        out.json_lines()
    }

    /// The log as the mediator and both parties archived it, merged by seq
    /// (the mediator is in every room of these talks).
    pub fn log_size(&self) -> usize {
        let mut by_seq = BTreeMap::new();
        for h in [OM, US, IR] {
            for l in self.read_all(h) {
                by_seq.entry(l["seq"].as_u64().unwrap()).or_insert(l);
            }
        }
        by_seq.len()
    }

    /// `device list --json` of `h` (with `extra` arguments).
    pub fn devices(&self, h: &str, extra: &[&str]) -> Vec<Value> {
        let v = ok_json(self.cli(h).args(["device", "list", "--json"]).args(extra));
        v["devices"].as_array().unwrap().clone()
    }

    /// `device revoke` from `h`.
    pub fn revoke(&self, h: &str, args: &[&str]) -> Out {
        run(self.cli(h).args(["device", "revoke"]).args(args))
    }

    /// `h`'s `log verify --json`, repeated until the node has integrated
    /// (and `h` verified) a log of `size`: no evidence, and replay rejected
    /// no statement.
    pub fn verified_to(&self, h: &str, size: u64) {
        for _ in 0..200 {
            let out = run(self.cli(h).args(["log", "verify", "--json"]));
            assert_eq!(out.code, Some(0), "{out:?}");
            let v = out.json();
            for field in [
                "withheld",
                "not_merged",
                "discrepancies",
                "forks",
                "statements_rejected",
            ] {
                assert_eq!(v[field], Value::Array(vec![]), "{h}: {field}: {v}");
            }
            if v["size"].as_u64().unwrap() >= size {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the node did not integrate a log of size {size}");
    }
}

/// The binary, on home `h` under `root`.
pub fn home_cli(root: &Path, h: &str) -> Command {
    let mut cmd = backchannel();
    cmd.env("BACKCHANNEL_PASSPHRASE", HOME_PASSPHRASE)
        .env_remove("BACKCHANNEL_HOME")
        .arg("--home")
        .arg(root.join(h));
    cmd
}

/// The line of `lines` at `seq`.
#[track_caller]
pub fn at(lines: &[Value], seq: u64) -> &Value {
    lines
        .iter()
        .find(|l| l["seq"] == seq)
        .unwrap_or_else(|| panic!("no seq {seq}: {lines:?}"))
}
