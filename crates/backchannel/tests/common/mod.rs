//! Running the `backchannel` binary in tests: fast key files, a fixed
//! node passphrase, and a `node run` whose address and fingerprint are
//! read from its listening line.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

pub mod talks;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// The node passphrase the tests use.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// The binary, with fast (test-only) key files and the node passphrase.
pub fn backchannel() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backchannel"));
    cmd.env("BACKCHANNEL_DANGER_TEST_SCRYPT_LOG_N", "4")
        .env("BACKCHANNEL_NODE_PASSPHRASE", PASSPHRASE)
        .env_remove("BACKCHANNEL_LOG");
    cmd
}

/// Runs `cmd`, which must succeed; its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `node run` on `dir` (loopback, any port, 50 ms checkpoints); the child,
/// its address and its fingerprint (hex) from the listening line.
pub fn start_node(dir: &Path) -> (Child, std::net::SocketAddr, String) {
    start_node_on(dir, None)
}

/// [`start_node`], on the database `database` names (`--database`) if any.
pub fn start_node_on(dir: &Path, database: Option<&str>) -> (Child, std::net::SocketAddr, String) {
    start_node_with(dir, database, &[])
}

/// [`start_node_on`], with `extra` arguments for `node run` (limits).
pub fn start_node_with(
    dir: &Path,
    database: Option<&str>,
    extra: &[&str],
) -> (Child, std::net::SocketAddr, String) {
    let mut child = backchannel()
        .args([
            "node",
            "run",
            "--listen",
            "127.0.0.1:0",
            "--checkpoint-interval-ms",
            "50",
        ])
        .args(extra)
        .args(database.map(|d| ["--database", d]).into_iter().flatten())
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let (addr, fp) = listening(&mut child).expect("the node listens");
    (child, addr, fp)
}

/// The address and fingerprint of a spawned `node run` (stdout piped),
/// from its listening line; `None` if it exited without one (the address
/// is taken).
pub fn listening(child: &mut Child) -> Option<(std::net::SocketAddr, String)> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the listening line");
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["listening", "on", addr, "fingerprint", fp] => {
            Some((addr.parse().unwrap(), (*fp).to_owned()))
        }
        [] => None,
        _ => panic!("unexpected line {line:?}"),
    }
}

/// Runs `cmd` to its end.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the binary runs")
}

/// Its stdout, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Its stderr, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// It exited 0.
#[track_caller]
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// It exited `code`, saying `stderr_holds` on stderr.
#[track_caller]
pub fn assert_failure(out: &Output, code: i32, stderr_holds: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    assert!(
        stderr(out).contains(stderr_holds),
        "stderr does not mention {stderr_holds:?}: {}",
        stderr(out)
    );
}

/// A PostgreSQL database of its own for one test, on the server
/// `BACKCHANNEL_TEST_DATABASE_URL` names (created with `psql`, dropped when
/// this is dropped); `None`, after saying so, when the variable is unset.
pub struct PgDatabase {
    /// The server's URL, as given.
    server: String,
    /// The database's name.
    name: String,
    /// The database's URL.
    pub url: String,
}

impl PgDatabase {
    pub fn create() -> Option<Self> {
        let Ok(server) = std::env::var("BACKCHANNEL_TEST_DATABASE_URL") else {
            eprintln!(
                "skipped: BACKCHANNEL_TEST_DATABASE_URL is not set (.ci/run sets it to the \
                 machine's PostgreSQL)"
            );
            return None;
        };
        let name = format!(
            "bc_test_{:016x}",
            rand_core::RngCore::next_u64(&mut rand_core::OsRng)
        );
        psql(&server, &format!("CREATE DATABASE {name}"));
        // The same server and user, the new database.
        let base = server
            .split('?')
            .next()
            .and_then(|u| u.rsplit_once('/'))
            .expect("a URL naming a database")
            .0;
        let url = format!("{base}/{name}");
        Some(Self { server, name, url })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        psql(
            &self.server,
            &format!("DROP DATABASE {} WITH (FORCE)", self.name),
        );
    }
}

/// Runs one SQL command with `psql` on `url`, which must succeed.
fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql runs (PostgreSQL's client is needed for this test)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The wall clock, Unix ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Unix ms (whole seconds) as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}
