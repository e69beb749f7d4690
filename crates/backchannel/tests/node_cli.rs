//! `backchannel node …`, run as the built binary.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_failure, assert_success, run, stderr, stdout};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use backchannel_crypto::SecretKey;
use backchannel_node::tls::{self, Fingerprint, Identity};
use rustls::pki_types::ServerName;

const PASSPHRASE: &str = "correct horse battery staple";

/// A valid Ed25519 public key (RFC 8032 §7.1, test 1).
const CREATOR: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

/// How long a started node may take to print its listening line (a debug
/// build opening two key files and a fresh database, on a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The command, with a fast scrypt work factor for the key files it writes
/// (honoured by debug builds only) and no passphrase unless a test adds it.
fn backchannel() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backchannel"));
    cmd.env("BACKCHANNEL_DANGER_TEST_SCRYPT_LOG_N", "4")
        .env_remove("BACKCHANNEL_NODE_PASSPHRASE")
        .env_remove("BACKCHANNEL_LOG")
        .stdin(Stdio::null());
    cmd
}

fn with_passphrase(mut cmd: Command) -> Command {
    cmd.env("BACKCHANNEL_NODE_PASSPHRASE", PASSPHRASE);
    cmd
}

/// `node init --json` in `dir`; the printed JSON.
fn init(dir: &Path) -> serde_json::Value {
    let out = run(with_passphrase(backchannel())
        .args([
            "node",
            "init",
            "--origin",
            "node.example.org",
            "--json",
            "--dir",
        ])
        .arg(dir));
    assert_success(&out);
    serde_json::from_slice(&out.stdout).expect("init --json prints JSON")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn node_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    (tmp, dir)
}

#[test]
fn init_creates_the_node_directory() {
    let (_tmp, dir) = node_dir();
    let info = init(&dir);
    for name in ["node.json", "log.key", "tls.key", "tls.crt", "creators"] {
        assert!(dir.join(name).is_file(), "{name} is missing");
    }
    assert_eq!(mode(&dir.join("log.key")), 0o600);
    assert_eq!(mode(&dir.join("tls.key")), 0o600);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(info["origin"], "node.example.org");
    assert_eq!(info["fingerprint"].as_str().unwrap().len(), 64);
    assert_eq!(info["log_key"].as_str().unwrap().len(), 64);
    assert_eq!(info["creators"], 0);

    // The text form says the same.
    let out = run(with_passphrase(backchannel())
        .args(["node", "init", "--origin", "node.example.org", "--dir"])
        .arg(dir.with_file_name("other")));
    assert_success(&out);
    assert!(stdout(&out).contains("fingerprint  "), "{}", stdout(&out));
}

#[test]
fn info_prints_what_init_printed() {
    let (_tmp, dir) = node_dir();
    let created = init(&dir);
    // No passphrase needed.
    let out = run(backchannel()
        .args(["node", "info", "--json", "--dir"])
        .arg(&dir));
    assert_success(&out);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info, created);

    let out = run(backchannel().args(["node", "info", "--dir"]).arg(&dir));
    assert_success(&out);
    let fingerprint = created["fingerprint"].as_str().unwrap();
    assert!(stdout(&out).contains(fingerprint), "{}", stdout(&out));

    let out = run(backchannel()
        .args(["node", "info", "--dir"])
        .arg(dir.join("nothing")));
    assert_failure(&out, 1, "node init");
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let (_tmp, dir) = node_dir();
    let first = init(&dir);
    let out = run(with_passphrase(backchannel())
        .args(["node", "init", "--origin", "node.example.org", "--dir"])
        .arg(&dir));
    assert_failure(&out, 1, "--force");
    // Nothing changed.
    let out = run(backchannel()
        .args(["node", "info", "--json", "--dir"])
        .arg(&dir));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info, first);

    // With --force: new keys, and the creators file is kept.
    let out = run(backchannel()
        .args(["node", "creators", "add", "--dir"])
        .arg(&dir)
        .arg(CREATOR));
    assert_success(&out);
    let out = run(with_passphrase(backchannel())
        .args([
            "node",
            "init",
            "--force",
            "--json",
            "--origin",
            "other.example",
            "--dir",
        ])
        .arg(&dir));
    assert_success(&out);
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(second["origin"], "other.example");
    assert_ne!(second["fingerprint"], first["fingerprint"]);
    assert_ne!(second["log_key"], first["log_key"]);
    assert_eq!(second["creators"], 1);
    assert_eq!(mode(&dir.join("log.key")), 0o600);
}

#[test]
fn init_refuses_without_a_passphrase_or_a_bad_origin() {
    let (tmp, dir) = node_dir();
    let out = run(backchannel()
        .args(["node", "init", "--origin", "node.example.org", "--dir"])
        .arg(&dir));
    assert_failure(&out, 1, "BACKCHANNEL_NODE_PASSPHRASE");
    assert!(!dir.exists(), "a refused init left a directory behind");

    let out = run(with_passphrase(backchannel())
        .args(["node", "init", "--origin", "Bad Origin!", "--dir"])
        .arg(&dir));
    assert_failure(&out, 1, "--origin");
    assert!(!dir.exists());

    // A passphrase file works without the environment variable.
    let pass = tmp.path().join("pass");
    std::fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
    let out = run(backchannel()
        .args([
            "node",
            "init",
            "--origin",
            "node.example.org",
            "--passphrase-file",
        ])
        .arg(&pass)
        .arg("--dir")
        .arg(&dir));
    assert_success(&out);
}

#[test]
fn creators_add_checks_the_key_and_is_idempotent() {
    let (_tmp, dir) = node_dir();
    init(&dir);
    let add = |key: &str| {
        run(backchannel()
            .args(["node", "creators", "add", "--json", "--dir"])
            .arg(&dir)
            .arg(key))
    };
    for bad in [
        "",
        "zz",
        &CREATOR[..62],
        &"ff".repeat(32),
        &format!("01{}", "00".repeat(31)),
    ] {
        assert_failure(&add(bad), 1, "public key");
    }
    let out = add(CREATOR);
    assert_success(&out);
    assert!(stdout(&out).contains(r#""added":true"#), "{}", stdout(&out));
    let out = add(&CREATOR.to_uppercase());
    assert_success(&out);
    assert!(
        stdout(&out).contains(r#""added":false"#),
        "{}",
        stdout(&out)
    );

    let file = std::fs::read_to_string(dir.join("creators")).unwrap();
    assert_eq!(file.matches(CREATOR).count(), 1, "{file}");
    let out = run(backchannel()
        .args(["node", "info", "--json", "--dir"])
        .arg(&dir));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["creators"], 1);
}

#[test]
fn a_bad_creators_line_is_named() {
    let (_tmp, dir) = node_dir();
    init(&dir);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("creators"))
        .unwrap();
    writeln!(file, "{CREATOR}\nnot a key").unwrap();
    drop(file);
    let out = run(backchannel().args(["node", "info", "--dir"]).arg(&dir));
    assert_failure(&out, 1, "line 4");
    let out = run(with_passphrase(backchannel())
        .args(["node", "run", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dir));
    assert_failure(&out, 1, "line 4");
}

/// A started `node run`, killed when dropped.
struct Running {
    child: Child,
    line: String,
    /// The lines it prints after the first.
    more: mpsc::Receiver<String>,
}

impl Running {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let mut child = with_passphrase(backchannel())
            .args(["node", "run", "--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                let read = stdout.read_line(&mut line);
                let end = !matches!(read, Ok(n) if n > 0);
                if tx.send(line).is_err() || end {
                    break;
                }
            }
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) if !line.is_empty() => line,
            other => {
                let _ = child.kill();
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("no listening line ({other:?}); stderr: {err}");
            }
        };
        Self {
            child,
            line,
            more: rx,
        }
    }

    /// The next line printed after the first.
    fn next_line(&self) -> String {
        self.more
            .recv_timeout(START_TIMEOUT)
            .expect("another line on stdout")
    }

    /// The address and fingerprint of `listening on <addr> fingerprint <hex>`.
    fn parsed(&self) -> (std::net::SocketAddr, String) {
        let words: Vec<&str> = self.line.split_whitespace().collect();
        match words.as_slice() {
            ["listening", "on", addr, "fingerprint", fp] => {
                (addr.parse().expect("an address"), (*fp).to_owned())
            }
            _ => panic!("unexpected line {:?}", self.line),
        }
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the node did not exit within 30 s of SIGTERM");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over TLS as a device key, pinning `fingerprint`; the raw
/// response.
fn get_over_tls(addr: std::net::SocketAddr, fingerprint: &str, path: &str) -> String {
    let device = Identity::self_signed(&SecretKey::from_seed(&[7; 32]).unwrap(), "device").unwrap();
    let config = tls::client_config(&device, Fingerprint::from_hex(fingerprint).unwrap()).unwrap();
    let name = ServerName::try_from("node.invalid").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    // The server may close without a TLS close_notify after `connection:
    // close`; what was read by then is the response.
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn run_prints_the_listening_line_and_stops_on_sigterm() {
    let (_tmp, dir) = node_dir();
    let created = init(&dir);
    let node = Running::start(&dir, &[]);
    let (addr, fingerprint) = node.parsed();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    assert_eq!(fingerprint, created["fingerprint"].as_str().unwrap());
    // A client pinning the printed fingerprint reaches the API over TLS,
    // authenticated by its device key.
    let response = get_over_tls(addr, &fingerprint, "/v1/node");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(created["log_key"].as_str().unwrap()),
        "{response}"
    );
    let status = node.terminate();
    assert!(status.success(), "{status:?}");
    assert!(dir.join("node.db").is_file());
}

#[test]
fn plain_http_serves_the_api_on_loopback() {
    let (_tmp, dir) = node_dir();
    let created = init(&dir);
    let node = Running::start(&dir, &["--danger-plain-http"]);
    let (addr, _) = node.parsed();
    // Any valid key authenticates in plain-HTTP mode (unproven).
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        conn,
        "GET /v1/node HTTP/1.1\r\nhost: localhost\r\nx-backchannel-danger-key: {CREATOR}\r\n\
         connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(created["log_key"].as_str().unwrap()),
        "{response}"
    );
    assert!(node.terminate().success());
}

#[test]
fn plain_http_is_refused_off_loopback() {
    let (_tmp, dir) = node_dir();
    init(&dir);
    let out = run(with_passphrase(backchannel())
        .args([
            "node",
            "run",
            "--danger-plain-http",
            "--listen",
            "0.0.0.0:0",
            "--dir",
        ])
        .arg(&dir));
    assert_failure(&out, 1, "loopback");
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

#[test]
fn run_refuses_a_wrong_passphrase() {
    let (_tmp, dir) = node_dir();
    init(&dir);
    let out = run(backchannel()
        .env("BACKCHANNEL_NODE_PASSPHRASE", "wrong")
        .args(["node", "run", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dir));
    assert_failure(&out, 1, "wrong passphrase");
    let out = run(backchannel()
        .args(["node", "run", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dir));
    assert_failure(&out, 1, "BACKCHANNEL_NODE_PASSPHRASE");
}

#[test]
fn run_serves_the_stored_certificate_whatever_made_it() {
    let (_tmp, dir) = node_dir();
    init(&dir);
    // Another certificate for the same key (as another version might have
    // made it): the node serves it as stored, and its fingerprint.
    let passphrase = age::secrecy::SecretString::from(PASSPHRASE.to_owned());
    let key = backchannel_keyfile::KeyFile::open(&dir.join("tls.key"), &passphrase).unwrap();
    let renamed = Identity::self_signed(key.secret_key(), "renamed").unwrap();
    std::fs::write(dir.join("tls.crt"), renamed.certificate().as_ref()).unwrap();
    let node = Running::start(&dir, &[]);
    let (addr, fingerprint) = node.parsed();
    assert_eq!(fingerprint, renamed.fingerprint().to_hex());
    let response = get_over_tls(addr, &fingerprint, "/v1/node");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(node.terminate().success());
}

#[test]
fn run_refuses_a_certificate_for_another_key() {
    let (_tmp, dir) = node_dir();
    init(&dir);
    let (_other_tmp, other) = node_dir();
    init(&other);
    std::fs::copy(other.join("tls.crt"), dir.join("tls.crt")).unwrap();
    let out = run(with_passphrase(backchannel())
        .args(["node", "run", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dir));
    assert_failure(&out, 1, "tls.crt");
    assert!(stderr(&out).contains("another key"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

/// `GET path` in plain HTTP; the raw response.
fn get_plain(addr: std::net::SocketAddr, path: &str) -> String {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    response
}

/// `GET /readyz` until it answers 200 (the API starts accepting a moment
/// after the start lines are printed).
fn until_ready(addr: std::net::SocketAddr) -> String {
    for _ in 0..300 {
        let response = get_plain(addr, "/readyz");
        if response.starts_with("HTTP/1.1 200") {
            return response;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("/readyz never answered 200");
}

#[test]
fn run_serves_health_readiness_and_metrics_on_the_admin_listener() {
    let (_tmp, dir) = node_dir();
    init(&dir);
    let node = Running::start(&dir, &["--admin-listen", "127.0.0.1:0"]);
    // The first line is unchanged; the admin address comes second.
    let (addr, fingerprint) = node.parsed();
    let line = node.next_line();
    let admin: std::net::SocketAddr = match line.split_whitespace().collect::<Vec<_>>()[..] {
        ["admin", "listening", "on", admin] => admin.parse().unwrap(),
        _ => panic!("unexpected line {line:?}"),
    };
    assert!(admin.ip().is_loopback());
    assert_ne!(admin.port(), 0);
    assert_ne!(admin, addr);

    let health = get_plain(admin, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
    let ready = until_ready(admin);
    assert!(ready.contains(r#"{"ready":true}"#), "{ready}");

    let response = get_over_tls(addr, &fingerprint, "/v1/node");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let metrics = get_plain(admin, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("content-type: text/plain; version=0.0.4"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "\nbackchannel_http_requests_total{route=\"/v1/node\",method=\"GET\",class=\"2xx\"} 1\n"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nprocess_start_time_seconds "),
        "{metrics}"
    );
    assert!(!metrics.contains("127.0.0.1"), "{metrics}");

    // The admin listener outlives the API's drain, then stops with it.
    assert!(node.terminate().success());
    assert!(TcpStream::connect(admin).is_err());
}

#[test]
fn run_prints_the_admin_line_as_json_and_serves_it_publicly_when_told() {
    let (_tmp, dir) = node_dir();
    init(&dir);
    let node = Running::start(
        &dir,
        &[
            "--json",
            "--admin-listen",
            "0.0.0.0:0",
            "--admin-listen-public",
        ],
    );
    let first: serde_json::Value = serde_json::from_str(&node.line).unwrap();
    assert!(first["listening"].is_string(), "{first}");
    let second: serde_json::Value = serde_json::from_str(&node.next_line()).unwrap();
    let admin: std::net::SocketAddr = second["admin_listening"]
        .as_str()
        .expect("admin_listening")
        .parse()
        .unwrap();
    assert!(admin.ip().is_unspecified(), "{admin}");
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], admin.port()));
    assert!(get_plain(local, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(node.terminate().success());
}

#[test]
fn a_non_loopback_admin_address_is_refused_without_the_opt_in() {
    let (_tmp, dir) = node_dir();
    init(&dir);
    let out = run(with_passphrase(backchannel())
        .args([
            "node",
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "0.0.0.0:0",
            "--dir",
        ])
        .arg(&dir));
    assert_failure(&out, 1, "--admin-listen-public");
    assert!(stderr(&out).contains("loopback"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    // The opt-in alone means nothing.
    let out = run(with_passphrase(backchannel())
        .args(["node", "run", "--admin-listen-public", "--dir"])
        .arg(&dir));
    assert_failure(&out, 2, "--admin-listen");
}
