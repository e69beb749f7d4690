//! `backchannel bench load`: a load generator that drives a real node (a
//! child process of this binary) over real TLS with work the real client
//! code built, encrypted and signed, and reports what it measured.
//!
//! The run, in order: the node is set up and started (`node init`, `node
//! creators add`, `node run` on a fresh directory); the machine's limits
//! are measured (Ed25519 verifications per second on every core, fsyncs
//! per second on the node's directory); talks are opened through the API
//! and every device is put in its rooms' MLS groups by the client library;
//! each talks' sender pre-builds its work for the `--mix` (1 KiB MLS
//! application messages, a chain of MLS self-update commits in a room of
//! their own, signed statements to the record room, small encrypted
//! blobs); with `--idle-streams`, that many more devices (each its own
//! access-list entry, in talks of their own with no traffic) open delivery
//! streams and hold them; the other devices open their delivery streams
//! and catch up; then the timed phase, closed loop (each sender keeps
//! `--in-flight` submissions outstanding) or open loop (`--rate`, send
//! times drawn from `--seed`, latency counted from the scheduled time);
//! then, with `--catch-up N`, a recipient's stream is closed, N envelopes
//! are sequenced while it is away, and its reconnection is timed from the
//! upgrade request to the `caught` frame. Docs: `docs/performance.md`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use backchannel_client::attachment::Attachment;
use backchannel_client::follow::{self, Follower};
use backchannel_client::net::{NodeClient, StreamEvent};
use backchannel_client::rooms::sync_all;
use backchannel_client::seal::Content;
use backchannel_client::session::Session;
use backchannel_client::store::MemoryClientStore;
use backchannel_codec::{PartyId, PrincipalId, RoomId, TalksId};
use backchannel_crypto::{Digest, PublicKey, SecretKey, Signer as _};
use backchannel_node::tls::Fingerprint;
use backchannel_statement::access_list::{
    AccessEntry, FLAG_DESIGNATED_SIGNER, FLAG_DEVICE, FLAG_MEDIATOR,
};
use backchannel_statement::{
    AccessList, Attribution, Audience, Conveyance, Markings, Message, Payload, Salt, SignedHeader,
    Statement,
};
use backchannel_tlog::{LogOrigin, NodeOrigin, SignedCheckpoint};
use clap::{Args, Subcommand};
use rand_core::{OsRng, RngCore as _};
use serde::Serialize;

/// The node's origin in every run.
const ORIGIN: &str = "bench.backchannel.example";
/// The plaintext of every timed application message is cut to fit the
/// 1 KiB body bucket; this is where the search starts.
const TALK_LEN: usize = 1024;
/// The body size of every timed application message (the smallest
/// bucket).
const BODY_LEN: usize = 1024;
/// The words of each statement to the record room (a formal message).
const STATEMENT_TEXT_LEN: usize = 400;
/// The file each blob encrypts (the blob is this plus nonce and tag).
const BLOB_FILE_LEN: usize = 4096;
/// `--mix`'s default: mostly application messages, a few commits,
/// statements and blobs.
const DEFAULT_MIX: &str = "app=94,commit=2,statement=3,blob=1";
/// How many failures are kept word for word.
const FIRST_ERRORS: usize = 5;
/// The most submission connections a run may open from one source
/// address: the node is started with `--connections-per-source` this plus
/// room for the set-up's.
const SUBMIT_CONNECTIONS: usize = 1000;
/// Connections from 127.0.0.1 beside the submissions: the set-up's
/// sessions and the warm-up (the node's default per-source allowance).
const SETUP_CONNECTIONS: usize = 64;
/// `node run --streams-per-key`: a recipient's stream of the timed phase
/// and its catch-up streams, with room to spare.
const STREAMS_PER_KEY: usize = 16;
/// Idle devices per idle talks (each its own access-list entry).
const IDLE_PER_TALKS: usize = 100;
/// Idle streams per loopback source address (127.1.x.y), far below the
/// node's per-source allowance and the ephemeral ports of one address.
const IDLE_PER_SOURCE: usize = 500;
/// Idle streams opening (TLS handshake and upgrade) at once.
const IDLE_OPENING: usize = 64;
/// Open files each process keeps beside its sockets (stores, logs,
/// pipes, the runtime's own), when checking `--idle-streams` against the
/// limit on open files.
const NOFILE_MARGIN: u64 = 256;
/// The start mark of a warm-up envelope (sent before t0, not counted).
const WARM_UP: u64 = u64::MAX;
/// The SVG's time bins.
const BIN: Duration = Duration::from_millis(100);

/// `backchannel bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Drive a fresh local node (a child process) over TLS with work the
    /// client library built, encrypted and signed, and report throughput,
    /// latencies and the machine's limits.
    Load(LoadArgs),
}

/// `backchannel bench load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// How many talks.
    #[arg(long, default_value_t = 8)]
    pub talks: usize,
    /// Devices per talks, in its rooms: one sends, the others receive on
    /// their delivery streams.
    #[arg(long, default_value_t = 4)]
    pub devices: usize,
    /// Seconds of the timed phase.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seeds the open loop's send times and the order of the mix's kinds
    /// (and nothing secret).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Closed loop: submissions each sender keeps outstanding. Open loop:
    /// the most each sender has on the wire (one per connection); later
    /// scheduled sends wait in the generator, and that wait is counted.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Open loop: submissions per second in total (every kind of the
    /// mix), spread evenly over the senders (Poisson arrivals); latency is
    /// counted from each scheduled send time. Without it, the loop is
    /// closed.
    #[arg(long, value_name = "PER_S")]
    pub rate: Option<f64>,
    /// What the timed phase submits, as KIND=WEIGHT pairs: `app` (1 KiB
    /// MLS application messages to the talks' room), `commit` (MLS
    /// self-update commits, through `POST …/commits`, in a room of their
    /// own: pre-built as a chain, submitted in order), `statement` (signed
    /// statements to the record room, as `Session::send` posts them),
    /// `blob` (4 KiB files encrypted as attachments, uploaded through the
    /// blob endpoints: declare, one chunk, complete). Kinds left out weigh
    /// 0; `app=100` is the application messages alone.
    #[arg(long, default_value = DEFAULT_MIX, value_parser = parse_mix, value_name = "KIND=WEIGHT,…")]
    pub mix: Mix,
    /// Submissions each sender pre-builds, every kind together [default:
    /// closed loop 6000, open loop rate x duration / senders x 1.2 + 100].
    /// The timed phase ends early, and says so, if a sender runs out.
    #[arg(long, value_name = "N")]
    pub envelopes_per_sender: Option<usize>,
    /// After the timed phase: close a recipient's stream, sequence this
    /// many envelopes of its room while it is away, reconnect it from its
    /// cursor and time the upgrade request to the `caught` frame (0: no
    /// catch-up measurement).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub catch_up: usize,
    /// How many times the catch-up is measured.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub catch_up_repeats: usize,
    /// Delivery streams of idle devices held open from before the timed
    /// phase to the end of the run: each device its own access-list entry,
    /// in talks of their own (100 devices each) with no traffic, the
    /// streams spread over loopback source addresses 127.1.x.y (500
    /// each). The node's resident memory is reported with them connected.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub idle_streams: usize,
    /// The node's PostgreSQL database (`postgres://…`) [default: SQLite in
    /// the node's directory].
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Node processes sharing the node directory and the `--database`
    /// (PostgreSQL only); talks and streams are spread over them, a
    /// talks' recipients on other nodes than its sender where there are
    /// (idle streams all go to the first).
    #[arg(long, default_value_t = 1, requires = "database")]
    pub nodes: usize,
    /// The node's directory, which must not exist [default: a new
    /// directory under the system's temporary directory, removed after
    /// the run].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the node's directory (its database and `node.log`).
    #[arg(long)]
    pub keep: bool,
    /// Submissions and delivery streams are spread over this many loopback
    /// source addresses (127.0.0.2 …): talks k's sender submits from
    /// 127.0.0.(2 + k mod N).
    #[arg(long, default_value_t = 4)]
    pub source_addresses: u8,
    /// The CPUs the node processes run on, as `0`, `0-3` or `0,2-3`: their
    /// affinity, which their threads inherit. The Ed25519 ceiling is
    /// measured on these CPUs [default: every CPU this process may use].
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    pub node_cpus: Option<Cpus>,
    /// The CPUs this generator runs on once the nodes have started
    /// [default: every CPU this process may use].
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    pub generator_cpus: Option<Cpus>,
    /// The generator's nice value, from 0 to 19, raised to this (never
    /// lowered) once the nodes have started, which keep this process's:
    /// the nodes' threads get a shared CPU first, so the generator
    /// disturbs what it measures less; its own delays still count in the
    /// latencies.
    #[arg(long, default_value_t = 10, value_name = "N", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub generator_nice: i32,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write ack and push latency over time (p99 per 100 ms) as SVG.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

/// Runs `backchannel bench …`.
pub fn main(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Load(args) => load(args),
    }
}

// --- The mix ----------------------------------------------------------------

/// What one submission of the timed phase is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// A 1 KiB MLS application message (`POST …/envelopes`).
    App,
    /// An MLS self-update commit (`POST …/commits`).
    Commit,
    /// A signed statement in the record room (`POST …/envelopes`).
    Statement,
    /// A small encrypted blob (`POST …/blobs`, `PUT …/chunks/0`, `POST
    /// …/complete`).
    Blob,
}

/// Every kind, in the order of [`Mix`]'s weights.
const WORKS: [Work; 4] = [Work::App, Work::Commit, Work::Statement, Work::Blob];
/// The kinds that are envelopes (pushed on delivery streams).
const ENVELOPE_WORKS: usize = 3;

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::App => "app",
            Work::Commit => "commit",
            Work::Statement => "statement",
            Work::Blob => "blob",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// `--mix`: a weight per kind ([`WORKS`] order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix([u32; 4]);

impl Mix {
    fn weight(&self, w: Work) -> u32 {
        self.0[w.index()]
    }

    fn total(&self) -> u64 {
        self.0.iter().map(|w| u64::from(*w)).sum()
    }

    /// `n` kinds drawn by weight, from `seed`.
    fn draw(&self, n: usize, seed: u64) -> Vec<Work> {
        let total = self.total().max(1);
        let mut rng = SplitMix(seed);
        (0..n)
            .map(|_| {
                let mut r = rng.next() % total;
                for w in WORKS {
                    let weight = u64::from(self.weight(w));
                    if r < weight {
                        return w;
                    }
                    r -= weight;
                }
                Work::App
            })
            .collect()
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = WORKS
            .iter()
            .filter(|w| self.weight(**w) > 0)
            .map(|w| format!("{}={}", w.name(), self.weight(*w)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// CPU numbers `--node-cpus` and `--generator-cpus` take: below this, as
/// Linux's `cpu_set_t`.
const MAX_CPUS: usize = 1024;

/// What `--node-cpus` and `--generator-cpus` say off Linux.
#[cfg(not(target_os = "linux"))]
const PINNING_NEEDS_LINUX: &str =
    "--node-cpus and --generator-cpus need Linux (sched_setaffinity); leave them out here";

/// A set of CPUs by number (`--node-cpus`, `--generator-cpus`): sorted,
/// distinct, never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpus(Vec<usize>);

impl Cpus {
    /// The CPUs this thread may run on (its affinity).
    #[cfg(target_os = "linux")]
    fn allowed() -> anyhow::Result<Self> {
        let set = rustix::thread::sched_getaffinity(None)
            .context("reading this process's CPU affinity")?;
        let cpus: Vec<usize> = (0..MAX_CPUS.min(rustix::thread::CpuSet::MAX_CPU))
            .filter(|c| set.is_set(*c))
            .collect();
        ensure!(!cpus.is_empty(), "this process may run on no CPU");
        Ok(Self(cpus))
    }

    #[cfg(not(target_os = "linux"))]
    fn allowed() -> anyhow::Result<Self> {
        bail!(PINNING_NEEDS_LINUX)
    }

    #[cfg(target_os = "linux")]
    fn set(&self) -> rustix::thread::CpuSet {
        let mut set = rustix::thread::CpuSet::new();
        for c in &self.0 {
            set.set(*c);
        }
        set
    }

    /// Makes this thread, and every thread or process it starts from now
    /// on, run on these CPUs only (`sched_setaffinity`).
    #[cfg(target_os = "linux")]
    fn pin_this_thread(&self) -> anyhow::Result<()> {
        rustix::thread::sched_setaffinity(None, &self.set()).with_context(|| {
            format!("setting this thread's CPU affinity to {self}; choose other CPUs or leave the option out")
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn pin_this_thread(&self) -> anyhow::Result<()> {
        bail!(PINNING_NEEDS_LINUX)
    }

    /// The same CPUs or, if some are not among `allowed`, an error naming
    /// the option.
    fn within(&self, allowed: &Self, option: &str) -> anyhow::Result<Self> {
        let outside: Vec<usize> = self
            .0
            .iter()
            .copied()
            .filter(|c| !allowed.0.contains(c))
            .collect();
        ensure!(
            outside.is_empty(),
            "{option} {self}: CPU(s) {} are not among the CPUs this process may use ({allowed}); \
             choose from those",
            Cpus(outside)
        );
        Ok(self.clone())
    }
}

impl std::fmt::Display for Cpus {
    /// Ranges, as `0-3,6`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            parts.push(if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            });
            i += 1;
        }
        f.write_str(&parts.join(","))
    }
}

/// Parses `--node-cpus` and `--generator-cpus`: CPU numbers and ranges
/// separated by commas (`0`, `0-3`, `0,2-3`), as `taskset -c` takes them.
fn parse_cpus(s: &str) -> Result<Cpus, String> {
    let max = MAX_CPUS;
    let number = |t: &str| -> Result<usize, String> {
        t.trim()
            .parse::<usize>()
            .ok()
            .filter(|c| *c < max)
            .ok_or_else(|| format!("{:?} is not a CPU number from 0 to {}", t.trim(), max - 1))
    };
    let mut cpus = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    return Err(format!("the range {:?} runs backwards", part.trim()));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(number(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(Cpus(cpus))
}

/// Parses `--mix`: `KIND=WEIGHT` pairs separated by commas, each kind at
/// most once, whole weights, at least one above 0.
fn parse_mix(s: &str) -> Result<Mix, String> {
    const KINDS: &str = "app, commit, statement, blob";
    let mut weights = [None::<u32>; 4];
    for part in s.split(',') {
        let part = part.trim();
        let Some((kind, weight)) = part.split_once('=') else {
            return Err(format!(
                "{part:?} is not KIND=WEIGHT (kinds: {KINDS}; e.g. {DEFAULT_MIX})"
            ));
        };
        let (kind, weight) = (kind.trim(), weight.trim());
        let w = WORKS
            .iter()
            .find(|w| w.name() == kind)
            .ok_or_else(|| format!("{kind:?} is not a kind of work (kinds: {KINDS})"))?;
        let weight: u32 = weight
            .parse()
            .ok()
            .filter(|w| *w <= 1_000_000)
            .ok_or_else(|| {
                format!("the weight of {kind}, {weight:?}, is not a whole number from 0 to 1000000")
            })?;
        if weights[w.index()].replace(weight).is_some() {
            return Err(format!("{kind} is given twice"));
        }
    }
    let mix = Mix(weights.map(|w| w.unwrap_or(0)));
    if mix.total() == 0 {
        return Err(format!(
            "every weight is 0: give at least one kind a weight above 0 (e.g. {DEFAULT_MIX})"
        ));
    }
    Ok(mix)
}

// --- The node, as a child process -------------------------------------------

/// A node process, killed (by its pid) and reaped when dropped.
struct NodeProcess {
    child: Child,
    addr: SocketAddr,
    fingerprint: Fingerprint,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node directory, removed when dropped unless kept.
struct NodeDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for NodeDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn this_binary(passphrase: &str) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut cmd = Command::new(exe);
    cmd.env("BACKCHANNEL_NODE_PASSPHRASE", passphrase);
    Ok(cmd)
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// `node init`, `node creators add` and `node run` with limits far above
/// the load; waits for the listening line.
fn init_node(dir: &Path, passphrase: &str, creator: &SecretKey) -> anyhow::Result<()> {
    run_ok(
        this_binary(passphrase)?
            .args(["node", "init", "--origin", ORIGIN, "--dir"])
            .arg(dir),
    )?;
    run_ok(
        this_binary(passphrase)?
            .args(["node", "creators", "add", "--dir"])
            .arg(dir)
            .arg(hex::encode(creator.public_key().as_bytes())),
    )
}

/// `node run` on `dir` (initialised), logging to `log`.
fn start_node(
    dir: &Path,
    passphrase: &str,
    database: Option<&str>,
    log: &str,
) -> anyhow::Result<NodeProcess> {
    let log_path = dir.join(log);
    let log = std::fs::File::create(&log_path).context("creating the node's log")?;
    let mut cmd = this_binary(passphrase)?;
    cmd.args(["node", "run", "--listen", "127.0.0.1:0"])
        .args(["--requests-per-second", "1000000"])
        .args(["--request-burst", "1000000"])
        .args(["--connections-per-second", "100000"])
        .args(["--connection-burst", "100000"])
        .args(["--max-connections", "100000"])
        .args([
            "--connections-per-source",
            &(SUBMIT_CONNECTIONS + SETUP_CONNECTIONS).to_string(),
        ])
        .args(["--streams-per-key", &STREAMS_PER_KEY.to_string()])
        .args(database.map(|d| ["--database", d]).into_iter().flatten())
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let mut child = cmd.spawn().context("starting the node")?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the node's listening line")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let ["listening", "on", addr, "fingerprint", fp] = words.as_slice() else {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "the node did not start (its stderr is in {}): {line:?}",
            log_path.display()
        );
    };
    let addr = addr.parse().context("the node's address")?;
    let fingerprint = Fingerprint::from_hex(fp).map_err(|e| anyhow!("fingerprint: {e}"))?;
    Ok(NodeProcess {
        child,
        addr,
        fingerprint,
    })
}

// --- The machine's limits ---------------------------------------------------

/// Raises the soft limit on open files to the hard limit; both, after.
fn raise_nofile() -> (Option<u64>, Option<u64>) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    let now = getrlimit(Resource::Nofile);
    (now.current, now.maximum)
}

/// Ed25519 verifications per second with every core verifying
/// (`VerifyingKey::verify` of a 200-byte message, as long as a signed
/// envelope header, under a key decompressed once, as the node keeps the
/// key of each connection) for about a second.
fn ed25519_per_second() -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let key = SecretKey::generate(&mut OsRng);
    let context = backchannel_statement::header::ENVELOPE_CONTEXT;
    let message = [7u8; 200];
    let Ok(signature) = key.sign(context, &message) else {
        return 0.0;
    };
    let public = key.public_key().verifying_key();
    let start = Instant::now();
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            std::thread::spawn(move || {
                let mut n = 0u64;
                while start.elapsed() < Duration::from_secs(1) {
                    for _ in 0..64 {
                        if public.verify(context, &message, &signature).is_ok() {
                            n += 1;
                        }
                    }
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

/// 4 KiB appended and fsynced (`fsync`, `File::sync_all`), in a loop for
/// about a second, in `dir`: per second.
fn fsyncs_per_second(dir: &Path) -> anyhow::Result<f64> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).context("creating the fsync probe")?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        append_and_sync(&mut file)?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

/// The CPUs a process's main thread may run on, as `/proc/<pid>/status`
/// (or `self`) says (`Cpus_allowed_list`, as `0-1`); `unknown` without it.
fn cpus_allowed_list(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The CPU time the hypervisor gave to others (`steal`, the eighth
/// number of `/proc/stat`'s `cpu` line) over every CPU, in seconds; 0
/// where the kernel does not count it.
fn steal_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    stat.lines()
        .find(|l| l.starts_with("cpu "))
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0.0, |t| t as f64 / ticks.max(1.0))
}

/// What the fsync ceiling and the fsync watch append before each fsync.
const PROBE_BLOCK: [u8; 4096] = [0x5a; 4096];

/// Appends [`PROBE_BLOCK`] to `file` and fsyncs it; how long that took.
fn append_and_sync(file: &mut std::fs::File) -> std::io::Result<Duration> {
    let start = Instant::now();
    file.write_all(&PROBE_BLOCK)?;
    file.sync_all()?;
    Ok(start.elapsed())
}

/// A 4 KiB append and `fsync` of `path` (in the node's directory) every
/// [`BIN`] of the timed phase, on a thread of its own, until `stop`: (ns
/// from the start, ns the fsync took) per probe. At ten a second it adds
/// little to the node's own fsyncs, and a slow one shows the disk
/// stalling under the node's group commits.
fn fsync_watch(
    path: PathBuf,
    run: Arc<Run>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<Samples>> {
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::create(&path).context("creating the fsync watch file")?;
        let mut out = Vec::new();
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let at = run.now();
            out.push((at, append_and_sync(&mut file)?.as_nanos() as u64));
            next += BIN;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
        drop(file);
        let _ = std::fs::remove_file(&path);
        Ok(out)
    })
}

/// The hypervisor's steal counter ([`steal_seconds`]) every [`BIN`] of
/// the timed phase, until `stop`: (ns from the start, steal seconds),
/// from the start. Late ticks are delayed, never bunched.
async fn steal_samples(run: Arc<Run>, stop: Arc<AtomicBool>) -> Vec<(u64, f64)> {
    let mut out = vec![(run.now(), steal_seconds())];
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + BIN, BIN);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            return out;
        }
        out.push((run.now(), steal_seconds()));
    }
}

/// The share of `cpus` CPUs' time stolen between successive `samples`
/// ([`steal_samples`]), as (seconds from the start of each span, %) for
/// the SVG: a span shorter than half a [`BIN`] is carried into the next
/// (the counter moves in whole clock ticks, so a short span would read as
/// a spike). With 100 clock ticks a second, one tick in a 100 ms span is
/// 10 % of one CPU: 5 % steps on two CPUs.
fn steal_shares(samples: &[(u64, f64)], cpus: usize) -> Vec<(f64, f64)> {
    let half = BIN.as_nanos() as u64 / 2;
    let mut out = Vec::new();
    let Some(&(mut t0, mut s0)) = samples.first() else {
        return out;
    };
    for &(t, stolen) in &samples[1..] {
        let span = t.saturating_sub(t0);
        if span < half {
            continue;
        }
        let share = (stolen - s0) / (span as f64 / 1e9 * cpus.max(1) as f64) * 100.0;
        out.push((t0 as f64 / 1e9, share.clamp(0.0, 100.0)));
        (t0, s0) = (t, stolen);
    }
    out
}

/// How many CPUs `/proc/stat` counts (its `cpuN` lines; 1 if unreadable).
fn online_cpus() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
                .count()
        })
        .unwrap_or(0)
        .max(1)
}

/// utime + stime of `/proc/<pid>/stat` (or `self`), in seconds.
fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name, in parentheses, may hold spaces: fields count from
    // after its closing parenthesis (field 3 is the first there).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: field {n}"))
    };
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    Ok((field(14)? + field(15)?) as f64 / ticks)
}

/// VmRSS and VmHWM of `/proc/<pid>/status`, in KiB.
fn memory_kib(pid: &str) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/status: no {name}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets the peak resident set size (VmHWM) of `pid` to its current one
/// (`echo 5 > /proc/<pid>/clear_refs`, Linux 4.0 and later): the node's
/// start-up (its key files unlocked by a memory-hard KDF) is not what is
/// measured. Whether it worked.
fn reset_peak_memory(pid: &str) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

// --- Set-up -----------------------------------------------------------------

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b
}

/// One envelope, as submitted.
type Envelope = (SignedHeader, Vec<u8>);

/// What one talks' set-up is asked to build.
struct Plan {
    devices: usize,
    mix: Mix,
    /// Submissions of the timed phase.
    submissions: usize,
    /// Application messages sent before t0, not counted.
    warm_up: usize,
    /// Application messages for the catch-up measurement.
    catch_up: usize,
    /// Seeds the order of the kinds.
    seed: u64,
}

/// One talks, ready for the timed phase.
struct Talks {
    talks: TalksId,
    /// The sender's key.
    sender: SecretKey,
    /// The room blobs are uploaded for (the application room).
    blob_room: RoomId,
    /// Per envelope kind ([`WORKS`] order), the pre-built envelopes: the
    /// application messages (the warm-up's first), the commit chain in
    /// order, the statements.
    envelopes: [Vec<Envelope>; ENVELOPE_WORKS],
    /// The pre-built blobs.
    blobs: Vec<Vec<u8>>,
    /// The timed phase's submissions in order: kind, and its slot in its
    /// kind's list (a commit takes the next of the chain whatever its
    /// slot).
    schedule: Vec<(Work, usize)>,
    /// Application messages for the catch-up measurement.
    catch_up: Vec<Envelope>,
    /// The recipients' device keys.
    recipients: Vec<SecretKey>,
}

fn duplicate(key: &SecretKey) -> anyhow::Result<SecretKey> {
    SecretKey::from_seed(&key.seed()).map_err(|e| anyhow!("{e}"))
}

/// A fresh 32-byte salt.
fn salt() -> Salt {
    let mut salt = [0u8; 32];
    OsRng.fill_bytes(&mut salt);
    Salt(salt)
}

/// Opens one talks (a mediator's talks authority in the record room; the
/// devices, each its own principal of one party, in the application room,
/// and in the commit room and the record room when the mix has commits and
/// statements), puts every device in its rooms' MLS groups, and has its
/// first device pre-build the plan's work with the client's own code.
async fn set_up_talks(
    addr: SocketAddr,
    fp: Fingerprint,
    creator: &SecretKey,
    plan: Plan,
) -> anyhow::Result<Talks> {
    let talks = TalksId(random16());
    let record = RoomId(random16());
    let room = RoomId(random16());
    let commit_room = RoomId(random16());
    let mediators = PartyId(random16());
    let party = PartyId(random16());
    let authority = SecretKey::generate(&mut OsRng);
    let keys: Vec<SecretKey> = (0..plan.devices)
        .map(|_| SecretKey::generate(&mut OsRng))
        .collect();
    let mut device_rooms = vec![room];
    if plan.mix.weight(Work::Commit) > 0 {
        device_rooms.push(commit_room);
    }
    if plan.mix.weight(Work::Statement) > 0 {
        device_rooms.push(record);
    }
    let mut entries = vec![AccessEntry::new(
        authority.public_key(),
        PrincipalId(random16()),
        mediators,
        vec![record],
        FLAG_MEDIATOR | FLAG_DESIGNATED_SIGNER,
    )?];
    for k in &keys {
        entries.push(AccessEntry::new(
            k.public_key(),
            PrincipalId(random16()),
            party,
            device_rooms.clone(),
            FLAG_DEVICE,
        )?);
    }
    let list = AccessList::new(talks, 0, entries)?;
    let opener = NodeClient::new(addr, fp, creator)?;
    opener.create_talks(&list).await.context("opening talks")?;
    let info = opener.node_info().await?;
    let origin = NodeOrigin::new(ORIGIN).map_err(|e| anyhow!("{e}"))?;
    ensure!(
        info.origin == origin,
        "the node's origin is {:?}",
        info.origin
    );

    let mut sessions = Vec::new();
    for k in &keys {
        sessions.push(
            Session::open(
                Arc::new(MemoryClientStore::default()),
                NodeClient::new(addr, fp, k)?,
                duplicate(k)?,
                talks,
                &origin,
                info.log_key,
            )
            .await?,
        );
    }
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    {
        let mut all: Vec<&mut Session<MemoryClientStore>> = sessions.iter_mut().collect();
        sync_all(&mut all, &list, now_s)
            .await
            .context("putting the devices in the rooms' MLS groups")?;
    }
    let mut sender = sessions.swap_remove(0);
    drop(sessions);

    let schedule_kinds = plan.mix.draw(plan.submissions, plan.seed);
    let mut counts = [0usize; 4];
    let mut schedule = Vec::with_capacity(schedule_kinds.len());
    for w in schedule_kinds {
        let slot = counts[w.index()] + if w == Work::App { plan.warm_up } else { 0 };
        counts[w.index()] += 1;
        schedule.push((w, slot));
    }

    // Application messages: the talk's length is cut until the padded
    // body fits the 1 KiB bucket.
    let apps = plan.warm_up + counts[Work::App.index()] + plan.catch_up;
    let mut len = TALK_LEN;
    let mut built = Vec::with_capacity(apps);
    while built.is_empty() && apps > 0 {
        let text: String = std::iter::repeat_n('x', len).collect();
        let (h, b) = sender.prepare_app_envelope(room, Content::Talk(text), salt())?;
        if b.len() == BODY_LEN {
            built.push((h, b));
        } else {
            ensure!(len > 32, "no talk fits a {BODY_LEN}-byte body");
            len -= 16;
        }
    }
    let text: String = std::iter::repeat_n('x', len).collect();
    while built.len() < apps {
        let (h, b) = sender.prepare_app_envelope(room, Content::Talk(text.clone()), salt())?;
        ensure!(b.len() == BODY_LEN, "a body of {} bytes", b.len());
        built.push((h, b));
    }
    let catch_up = built.split_off(apps - plan.catch_up);

    // Commits: a chain of updates of the sender's own leaf in the commit
    // room, each built on the one before (merged at once in the sender's
    // state), for the node to sequence in this order.
    let mut commits = Vec::with_capacity(counts[Work::Commit.index()]);
    for _ in 0..counts[Work::Commit.index()] {
        commits.push(
            sender
                .prepare_update_commit(&list, commit_room)
                .context("building a commit")?,
        );
    }

    // Statements: a formal message, signed, posted to the record room the
    // way `Session::send` posts a statement (MLS-encrypted, header signed).
    let mut statements = Vec::with_capacity(counts[Work::Statement.index()]);
    let words: String = "the parties note the draft and reserve their positions "
        .chars()
        .cycle()
        .take(STATEMENT_TEXT_LEN)
        .collect();
    let words = words.trim().to_owned();
    for _ in 0..counts[Work::Statement.index()] {
        let st = Statement::new(
            &mut OsRng,
            talks,
            keys[0].public_key().id(),
            party,
            vec![Audience::Room(record)],
            sender.checkpoint_ref(),
            Markings::new(Conveyance::MediatorOnly, vec![], Attribution::Formal)?,
            Payload::Message(Message::new(None, words.clone(), None)?),
        )?
        .sign(&keys[0])?;
        statements.push(sender.prepare_app_envelope(
            record,
            Content::Statement(st.as_bytes().to_vec()),
            salt(),
        )?);
    }

    // Blobs: a file encrypted as an attachment (fresh key and nonce each).
    let mut blobs = Vec::with_capacity(counts[Work::Blob.index()]);
    for i in 0..counts[Work::Blob.index()] {
        let mut key = [0u8; 32];
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut key);
        OsRng.fill_bytes(&mut nonce);
        let file = vec![0x2eu8; BLOB_FILE_LEN];
        let (blob, _) = Attachment::seal(talks, key, nonce, format!("annex-{i}.txt"), &file)
            .map_err(|e| anyhow!("sealing a blob: {e}"))?;
        blobs.push(blob);
    }

    let mut recipients = Vec::new();
    for k in &keys[1..] {
        recipients.push(duplicate(k)?);
    }
    Ok(Talks {
        talks,
        sender: duplicate(&keys[0])?,
        blob_room: room,
        envelopes: [built, commits, statements],
        blobs,
        schedule,
        catch_up,
        recipients,
    })
}

// --- Idle devices -----------------------------------------------------------

/// The idle devices' streams, held open until `stop`.
struct Idle {
    /// Streams that connected and caught up.
    connected: usize,
    /// Streams that failed to open.
    failed: usize,
    /// The first failure, word for word.
    first_failure: Option<String>,
    /// Idle talks opened.
    talks: usize,
    /// Source addresses used.
    addresses: usize,
    /// Seconds it took to open them all.
    open_s: f64,
    /// Streams open now (connected, not closed since).
    alive: Arc<AtomicUsize>,
    /// Streams that closed before `stop`, by close code (0: the connection
    /// failed without one).
    closes: Arc<Mutex<HashMap<u16, u64>>>,
    /// Each stream's task.
    tasks: tokio::task::JoinSet<()>,
}

/// Counts an idle stream open while it lives.
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(n))
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The number of files `pid` has open (its sockets included).
fn open_files(pid: &str) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// The source address of idle stream `i`: 127.1.x.y, [`IDLE_PER_SOURCE`]
/// streams each.
fn idle_source(i: usize) -> IpAddr {
    let a = i / IDLE_PER_SOURCE;
    IpAddr::V4(Ipv4Addr::new(127, 1, (a / 250) as u8, (a % 250 + 1) as u8))
}

/// Opens `n` idle devices' delivery streams to `node`: each device its own
/// access-list entry, [`IDLE_PER_TALKS`] to a talks of their own, seated
/// in a room nothing is sent to; each stream read (pings answered) until
/// `stop`.
async fn open_idle(
    node: &NodeProcess,
    creator: &SecretKey,
    n: usize,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Idle> {
    let start = Instant::now();
    let opener = NodeClient::new(node.addr, node.fingerprint, creator)?;
    let mut devices: Vec<(TalksId, SecretKey)> = Vec::with_capacity(n);
    let mut talks_n = 0;
    while devices.len() < n {
        let talks = TalksId(random16());
        let lobby = RoomId(random16());
        let party = PartyId(random16());
        let authority = SecretKey::generate(&mut OsRng);
        let mut entries = vec![AccessEntry::new(
            authority.public_key(),
            PrincipalId(random16()),
            PartyId(random16()),
            vec![lobby],
            FLAG_MEDIATOR | FLAG_DESIGNATED_SIGNER,
        )?];
        let keys: Vec<SecretKey> = (0..IDLE_PER_TALKS.min(n - devices.len()))
            .map(|_| SecretKey::generate(&mut OsRng))
            .collect();
        for k in &keys {
            entries.push(AccessEntry::new(
                k.public_key(),
                PrincipalId(random16()),
                party,
                vec![lobby],
                FLAG_DEVICE,
            )?);
        }
        opener
            .create_talks(&AccessList::new(talks, 0, entries)?)
            .await
            .context("opening an idle talks")?;
        talks_n += 1;
        devices.extend(keys.into_iter().map(|k| (talks, k)));
    }
    eprintln!(
        "bench: {talks_n} idle talks opened in {:.1} s; opening {n} idle streams",
        start.elapsed().as_secs_f64()
    );
    let opening = Arc::new(tokio::sync::Semaphore::new(IDLE_OPENING));
    // One permit per stream, connected or failed.
    let settled = Arc::new(tokio::sync::Semaphore::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let alive = Arc::new(AtomicUsize::new(0));
    let closes = Arc::new(Mutex::new(HashMap::<u16, u64>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (talks, key)) in devices.into_iter().enumerate() {
        let (addr, fp) = (node.addr, node.fingerprint);
        let (opening, settled) = (Arc::clone(&opening), Arc::clone(&settled));
        let (connected, failures) = (Arc::clone(&connected), Arc::clone(&failures));
        let (alive, closes) = (Arc::clone(&alive), Arc::clone(&closes));
        let mut stop = stop.clone();
        tasks.spawn(async move {
            let opened = async {
                let _permit = opening.acquire().await?;
                let client = NodeClient::new(addr, fp, &key)?;
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(idle_source(i), 0))?;
                let io = socket.connect(addr).await?;
                let mut stream = client.stream_over(io, talks, 0).await?;
                loop {
                    match stream.next().await? {
                        StreamEvent::Caught(_) => break,
                        StreamEvent::Envelope(_) => {}
                        StreamEvent::Closed(code) => bail!("closed ({code}) while opening"),
                    }
                }
                anyhow::Ok(stream)
            }
            .await;
            let mut stream = match opened {
                Ok(s) => {
                    connected.fetch_add(1, Ordering::Relaxed);
                    settled.add_permits(1);
                    s
                }
                Err(e) => {
                    if let Ok(mut f) = failures.lock() {
                        f.push(format!("{e:#}"));
                    }
                    settled.add_permits(1);
                    return;
                }
            };
            let _alive = Alive::new(&alive);
            let closed = loop {
                tokio::select! {
                    e = stream.next() => match e {
                        Ok(StreamEvent::Closed(code)) => break Some(code),
                        Ok(StreamEvent::Caught(_) | StreamEvent::Envelope(_)) => {}
                        Err(_) => break Some(0),
                    },
                    _ = stop.changed() => break None,
                }
            };
            match closed {
                Some(code) if !*stop.borrow() => {
                    if let Ok(mut c) = closes.lock() {
                        *c.entry(code).or_default() += 1;
                    }
                }
                _ => stream.close().await,
            }
        });
    }
    let mut reported = Instant::now();
    let mut waited = 0;
    while waited < n {
        let step = (n - waited).min(IDLE_OPENING) as u32;
        settled.acquire_many(step).await?.forget();
        waited += step as usize;
        if reported.elapsed() >= Duration::from_secs(5) {
            reported = Instant::now();
            eprintln!(
                "bench: {} of {n} idle streams open ({:.0} s)",
                connected.load(Ordering::Relaxed),
                start.elapsed().as_secs_f64()
            );
        }
    }
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    Ok(Idle {
        connected: connected.load(Ordering::Relaxed),
        failed: failures.len(),
        first_failure: failures.first().cloned(),
        talks: talks_n,
        addresses: n.div_ceil(IDLE_PER_SOURCE),
        open_s: start.elapsed().as_secs_f64(),
        alive,
        closes,
        tasks,
    })
}

// --- The timed phase --------------------------------------------------------

/// What one sender shares with its tasks and its talks' recipients.
struct Sender {
    talks: TalksId,
    client: NodeClient,
    blob_room: RoomId,
    envelopes: [Vec<Envelope>; ENVELOPE_WORKS],
    blobs: Vec<Vec<u8>>,
    schedule: Vec<(Work, usize)>,
    /// Each envelope's kind and slot, by idempotency key.
    index: HashMap<[u8; 16], (Work, usize)>,
    /// The next submission of `schedule`.
    next: AtomicUsize,
    /// The next commit of the chain; held while one is on the wire (a
    /// room's commits are sequenced one epoch after another).
    next_commit: tokio::sync::Mutex<usize>,
    /// Per envelope kind and slot: ns after `t0` it was sent (closed loop)
    /// or scheduled (open loop), plus one; 0 while unsent.
    start: [Vec<AtomicU64>; ENVELOPE_WORKS],
    /// Acknowledged, per kind.
    acked: [AtomicU64; 4],
    /// Acknowledged envelopes of the timed phase no verified checkpoint
    /// covers yet: seq, the leaf hash its receipt promised, and ns after
    /// `t0` it was acknowledged ([`prober`] takes them out).
    unproven: Mutex<Vec<(u64, Digest, u64)>>,
}

impl Sender {
    fn new(t: Talks, client: NodeClient) -> Self {
        let mut index = HashMap::new();
        for w in &WORKS[..ENVELOPE_WORKS] {
            for (i, (h, _)) in t.envelopes[w.index()].iter().enumerate() {
                index.insert(h.header().idempotency_key, (*w, i));
            }
        }
        let start = [0, 1, 2].map(|k| {
            (0..t.envelopes[k].len())
                .map(|_| AtomicU64::new(0))
                .collect()
        });
        Self {
            talks: t.talks,
            client,
            blob_room: t.blob_room,
            envelopes: t.envelopes,
            blobs: t.blobs,
            schedule: t.schedule,
            index,
            next: AtomicUsize::new(0),
            next_commit: tokio::sync::Mutex::new(0),
            start,
            acked: Default::default(),
            unproven: Mutex::new(Vec::new()),
        }
    }

    fn acked(&self, w: Work) -> u64 {
        self.acked[w.index()].load(Ordering::Relaxed)
    }
}

/// Shared by every task of the timed phase.
struct Run {
    /// The start of the timed phase, set once the streams caught up and
    /// the warm-up is over.
    t0: std::sync::OnceLock<Instant>,
    end: Duration,
    /// A sender ran out of pre-built work.
    exhausted: AtomicBool,
    errors: AtomicU64,
    /// Failed submissions, per kind.
    failed: [AtomicU64; 4],
    first_errors: Mutex<Vec<String>>,
}

impl Run {
    /// ns after `t0` (0 before it).
    fn now(&self) -> u64 {
        self.t0.get().map_or(0, |t0| t0.elapsed().as_nanos() as u64)
    }

    /// `t0` (now, if it was not set).
    fn t0(&self) -> Instant {
        *self.t0.get_or_init(Instant::now)
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_errors.lock()
            && first.len() < FIRST_ERRORS
        {
            first.push(what);
        }
    }
}

/// (time of the sample, latency), both ns after `t0`.
type Samples = Vec<(u64, u64)>;

/// Samples per kind ([`WORKS`] order).
type KindSamples = [Samples; 4];

/// Submits the schedule's submission `i` of `sender`, counted from `from`
/// (ns after `t0`): its kind and ack sample, or `None` after counting the
/// error. A commit waits for the commit before it (its latency counts the
/// wait).
async fn submit_one(run: &Run, sender: &Sender, i: usize, from: u64) -> Option<(Work, (u64, u64))> {
    let (work, slot) = sender.schedule[i];
    let done = match work {
        Work::App | Work::Statement => {
            sender.start[work.index()][slot].store(from + 1, Ordering::Release);
            let (h, b) = &sender.envelopes[work.index()][slot];
            sender.client.submit(sender.talks, h, b).await.map(|s| {
                // A poisoned lock only means another task panicked: the
                // list itself is whole, and the prober must see every ack.
                let mut unproven = sender.unproven.lock().unwrap_or_else(|p| p.into_inner());
                unproven.push((s.seq, s.leaf_hash, run.now()));
            })
        }
        Work::Commit => {
            let mut next = sender.next_commit.lock().await;
            let slot = *next;
            *next += 1;
            match sender.envelopes[work.index()].get(slot) {
                Some((h, b)) => {
                    sender.start[work.index()][slot].store(from + 1, Ordering::Release);
                    sender
                        .client
                        .submit_commit(sender.talks, (h, b), None)
                        .await
                        .map(|_| ())
                }
                None => {
                    run.exhausted.store(true, Ordering::Relaxed);
                    return None;
                }
            }
        }
        Work::Blob => sender
            .client
            .upload_blob(sender.talks, sender.blob_room, &sender.blobs[slot])
            .await
            .map(|_| ()),
    };
    match done {
        Ok(()) => {
            let at = run.now();
            sender.acked[work.index()].fetch_add(1, Ordering::Relaxed);
            Some((work, (at, at.saturating_sub(from))))
        }
        Err(e) => {
            run.failed[work.index()].fetch_add(1, Ordering::Relaxed);
            run.error(format!("submit {}: {e}", work.name()));
            None
        }
    }
}

/// Closed loop: one of a sender's `--in-flight` tasks.
async fn closed_worker(run: Arc<Run>, sender: Arc<Sender>) -> KindSamples {
    let mut samples = KindSamples::default();
    loop {
        let from = run.now();
        if from >= run.end.as_nanos() as u64 {
            return samples;
        }
        let i = sender.next.fetch_add(1, Ordering::Relaxed);
        if i >= sender.schedule.len() {
            run.exhausted.store(true, Ordering::Relaxed);
            return samples;
        }
        if let Some((w, s)) = submit_one(&run, &sender, i, from).await {
            samples[w.index()].push(s);
        }
    }
}

/// A small deterministic generator (SplitMix64) for the open loop's send
/// times and the mix's order.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// Open loop: one sender's schedule (Poisson, `rate` per second), each
/// submission its own task, latency counted from its scheduled time.
async fn open_sender(
    run: Arc<Run>,
    sender: Arc<Sender>,
    rate: f64,
    seed: u64,
    in_flight: usize,
) -> KindSamples {
    let mut rng = SplitMix(seed);
    // At most `in_flight` submissions on the wire (HTTP/1.1: one per
    // connection); the others wait here, in order, their wait counted.
    let wire = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut at = 0f64;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        at += -rng.unit().ln() / rate;
        let scheduled = Duration::from_secs_f64(at);
        if scheduled >= run.end {
            break;
        }
        let i = sender.next.fetch_add(1, Ordering::Relaxed);
        if i >= sender.schedule.len() {
            run.exhausted.store(true, Ordering::Relaxed);
            break;
        }
        tokio::time::sleep_until((run.t0() + scheduled).into()).await;
        let (run, sender) = (Arc::clone(&run), Arc::clone(&sender));
        let from = scheduled.as_nanos() as u64;
        let wire = Arc::clone(&wire);
        tasks.spawn(async move {
            let _permit = wire.acquire_owned().await.ok()?;
            submit_one(&run, &sender, i, from).await
        });
    }
    let mut samples = KindSamples::default();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some((w, s))) = done {
            samples[w.index()].push(s);
        }
    }
    samples
}

/// Envelopes a recipient received, per envelope kind.
type Received = [AtomicU64; ENVELOPE_WORKS];

/// One recipient's delivery stream, over a connection from `source`:
/// caught up before `ready` is counted, then a push sample for every
/// envelope of the timed phase, per kind, until `stop`.
#[allow(clippy::too_many_arguments)]
async fn recipient(
    run: Arc<Run>,
    sender: Arc<Sender>,
    client: NodeClient,
    node: SocketAddr,
    source: IpAddr,
    ready: Arc<tokio::sync::Semaphore>,
    received: Arc<Received>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<KindSamples> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let io = socket.connect(node).await?;
    io.set_nodelay(true)?;
    let mut stream = client.stream_over(io, sender.talks, 0).await?;
    let mut samples = KindSamples::default();
    let mut caught = false;
    loop {
        let event = tokio::select! {
            e = stream.next() => e?,
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                continue;
            }
        };
        match event {
            StreamEvent::Caught(_) => {
                if !caught {
                    caught = true;
                    ready.add_permits(1);
                }
            }
            StreamEvent::Envelope(d) => {
                let at = run.now();
                let key = d.header.header().idempotency_key;
                if let Some(&(w, i)) = sender.index.get(&key) {
                    let from = sender.start[w.index()][i].load(Ordering::Acquire);
                    if from == WARM_UP {
                        // A warm-up envelope, before t0: not counted.
                    } else if from > 0 {
                        samples[w.index()].push((at, at.saturating_sub(from - 1)));
                        received[w.index()].fetch_add(1, Ordering::Relaxed);
                    } else {
                        run.error(format!(
                            "a {} envelope delivered before its submission began",
                            w.name()
                        ));
                    }
                }
            }
            StreamEvent::Closed(code) => {
                if !stop.load(Ordering::Relaxed) {
                    run.error(format!("a delivery stream closed ({code})"));
                }
                break;
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    stream.close().await;
    Ok(samples)
}

// --- Inclusion ----------------------------------------------------------------

/// How often a prober asks for the talks' checkpoint.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long a prober waits, after the timed phase, for checkpoints to cover
/// the last acknowledgements.
const PROBE_DRAIN: Duration = Duration::from_secs(5);

/// What one talks' prober measured.
struct Proven {
    /// (ns after `t0` the prober verified it, ns from its acknowledgement).
    samples: Samples,
    /// Acknowledged envelopes no verified checkpoint covered by the end.
    unproven: u64,
    /// Checkpoints verified (each from the data tiles of its new range).
    checkpoints: u64,
}

/// A recipient device's verifier, as a client does it: every
/// [`PROBE_EVERY`] it fetches the talks' checkpoint, checks the node's
/// signature, fetches the data tiles of the new range, hashes the leaves up
/// to the checkpoint's root ([`Follower::advance`]), and then counts every
/// acknowledged envelope below it as provably included — once the leaf it
/// verified is the leaf its receipt promised. Its samples run from the
/// acknowledgement to that verification, so they include up to one
/// [`PROBE_EVERY`] of polling.
async fn prober(
    run: Arc<Run>,
    sender: Arc<Sender>,
    client: NodeClient,
    log_key: PublicKey,
    origin: LogOrigin,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Proven> {
    let talks = sender.talks;
    let mut follower = Follower::new();
    // The leaf hash of every verified seq (the run's envelopes, in memory
    // like the pre-built work).
    let mut verified: HashMap<u64, Digest> = HashMap::new();
    let mut proven = Proven {
        samples: Samples::new(),
        unproven: 0,
        checkpoints: 0,
    };
    let mut stopped_at: Option<Instant> = None;
    loop {
        let (_, note) = client.checkpoint(talks).await?;
        let checkpoint = SignedCheckpoint::verify(&note, &log_key, &origin)
            .map_err(|e| anyhow!("a checkpoint that does not verify: {e}"))?;
        let to = checkpoint.checkpoint().size;
        if to > follower.size() {
            let mut leaves = Vec::new();
            for tile in follow::data_tiles(follower.size(), to) {
                let bytes = client.data_tile(talks, &tile.tile()).await?;
                leaves.extend(
                    tile.parse(&bytes)
                        .map_err(|e| anyhow!("a data tile: {e}"))?,
                );
            }
            follower = follower
                .advance(&checkpoint, &leaves)
                .map_err(|e| anyhow!("the data tiles do not hash to the checkpoint: {e}"))?;
            proven.checkpoints += 1;
            verified.extend(leaves.iter().map(|l| (l.seq, l.hash())));
        }
        let at = run.now();
        let size = follower.size();
        {
            let mut unproven = sender.unproven.lock().unwrap_or_else(|p| p.into_inner());
            let mut wrong = Vec::new();
            unproven.retain(|&(seq, leaf, acked)| {
                if seq >= size {
                    return true;
                }
                if verified.get(&seq) == Some(&leaf) {
                    proven.samples.push((at, at.saturating_sub(acked)));
                } else {
                    wrong.push(seq);
                }
                false
            });
            for seq in wrong {
                run.error(format!(
                    "seq {seq}: the verified leaf is not the one its receipt promised"
                ));
            }
            if let Some(since) = stopped_at
                && (unproven.is_empty() || since.elapsed() >= PROBE_DRAIN)
            {
                proven.unproven = unproven.len() as u64;
                return Ok(proven);
            }
        }
        if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
            stopped_at = Some(Instant::now());
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

// --- Catch-up -----------------------------------------------------------------

/// What the catch-up measurement found.
#[derive(Debug, Serialize)]
struct CatchUpReport {
    /// Envelopes sequenced while the recipient was away, each repetition.
    missed: usize,
    repetitions: usize,
    /// From the WebSocket upgrade request (written after the TLS
    /// handshake) to the `caught` frame after the last missed envelope:
    /// the client-observed upper bound of the node's time.
    upgrade_to_caught: Latency,
    /// From the upgrade request to the first missed envelope's arrival
    /// (the node's authentication, authorisation and first read, and the
    /// round trip).
    upgrade_to_first: Latency,
    /// TCP connected to upgrade request: the TLS handshake, not counted
    /// above.
    tls_handshake: Latency,
    /// Missed envelopes per second of `upgrade_to_caught` (p50).
    envelopes_per_s: f64,
}

/// Closes nothing the timed phase used: opens `recipient`'s stream at the
/// end of the log, then `repeats` times: the stream closed, `missed`
/// envelopes of its room sequenced (`in_flight` at a time over the
/// sender's client), the stream reopened from its cursor and read to the
/// `caught` frame after them.
#[allow(clippy::too_many_arguments)]
async fn catch_up(
    sender: &Sender,
    envelopes: Vec<Envelope>,
    recipient: NodeClient,
    node: SocketAddr,
    source: IpAddr,
    missed: usize,
    repeats: usize,
    in_flight: usize,
) -> anyhow::Result<CatchUpReport> {
    let envelopes = Arc::new(envelopes);
    let mut cursor = recipient
        .fetch(sender.talks, 0, 1)
        .await
        .context("reading the log's size")?
        .log_size;
    let mut upgrade_to_caught = Samples::new();
    let mut upgrade_to_first = Samples::new();
    let mut tls = Samples::new();
    for r in 0..repeats {
        let batch = r * missed..(r + 1) * missed;
        let keys: HashSet<[u8; 16]> = envelopes[batch.clone()]
            .iter()
            .map(|(h, _)| h.header().idempotency_key)
            .collect();
        // Sequenced while the recipient is away.
        let next = Arc::new(AtomicUsize::new(batch.start));
        let mut submitters = tokio::task::JoinSet::new();
        for _ in 0..in_flight.min(missed) {
            let (next, envelopes) = (Arc::clone(&next), Arc::clone(&envelopes));
            let (client, talks, end) = (sender.client.clone(), sender.talks, batch.end);
            submitters.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        return anyhow::Ok(());
                    }
                    let (h, b) = &envelopes[i];
                    client.submit(talks, h, b).await?;
                }
            });
        }
        while let Some(s) = submitters.join_next().await {
            s.context("a catch-up submitter")?
                .context("a catch-up submission")?;
        }
        // Back, from its cursor.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let io = socket.connect(node).await?;
        io.set_nodelay(true)?;
        let connected = Instant::now();
        let (mut stream, upgrade) = recipient
            .stream_over_timed(io, sender.talks, cursor, Instant::now)
            .await
            .context("reopening the stream")?;
        let (mut got, mut other) = (0usize, 0usize);
        let mut first = None;
        let read = async {
            loop {
                match stream.next().await? {
                    StreamEvent::Envelope(d) => {
                        first.get_or_insert_with(|| upgrade.elapsed());
                        if keys.contains(&d.header.header().idempotency_key) {
                            got += 1;
                        } else {
                            other += 1;
                        }
                    }
                    StreamEvent::Caught(next) if got >= missed => {
                        return anyhow::Ok((upgrade.elapsed(), next));
                    }
                    StreamEvent::Caught(_) => {}
                    StreamEvent::Closed(code) => bail!("the stream closed ({code})"),
                }
            }
        };
        let (took, next) = tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .map_err(|_| anyhow!("the catch-up took over 60 s"))??;
        ensure!(
            got == missed && other == 0,
            "the catch-up delivered {got} of the {missed} missed envelopes and {other} others"
        );
        cursor = next;
        upgrade_to_caught.push((0, took.as_nanos() as u64));
        upgrade_to_first.push((0, first.unwrap_or(took).as_nanos() as u64));
        tls.push((0, upgrade.duration_since(connected).as_nanos() as u64));
        stream.close().await;
    }
    let lat = latency(&upgrade_to_caught);
    Ok(CatchUpReport {
        missed,
        repetitions: repeats,
        envelopes_per_s: if lat.p50_ms > 0.0 {
            missed as f64 / (lat.p50_ms / 1e3)
        } else {
            0.0
        },
        upgrade_to_caught: lat,
        upgrade_to_first: latency(&upgrade_to_first),
        tls_handshake: latency(&tls),
    })
}

// --- The report ---------------------------------------------------------------

/// Percentiles of one latency sample (ms), nearest rank over the sorted
/// full sample.
#[derive(Debug, Serialize)]
struct Latency {
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

fn rank(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1e6
}

fn latency(samples: &Samples) -> Latency {
    let mut v: Vec<u64> = samples.iter().map(|s| s.1).collect();
    v.sort_unstable();
    Latency {
        samples: v.len(),
        p50_ms: rank(&v, 0.50),
        p99_ms: rank(&v, 0.99),
        p999_ms: rank(&v, 0.999),
        max_ms: rank(&v, 1.0),
    }
}

/// One kind of the mix, as measured.
#[derive(Debug, Serialize)]
struct KindReport {
    kind: &'static str,
    weight: u32,
    /// What one submission carries: the padded body, or the blob.
    bytes: usize,
    acknowledged: u64,
    errors: u64,
    throughput_per_s: f64,
    /// Submission start (or scheduled time) to the answer: for a blob, its
    /// declaration to the answer completing it; for a commit, including
    /// the wait for the talks' commit before it.
    ack: Latency,
    /// Submission start to arrival on each recipient's stream (envelopes
    /// only).
    push: Option<Latency>,
    push_missing: Option<u64>,
}

/// The idle devices' streams, as measured.
#[derive(Debug, Serialize)]
struct IdleReport {
    requested: usize,
    connected: usize,
    failed: usize,
    first_failure: Option<String>,
    /// Connected streams the node closed before the end of the run.
    dropped: u64,
    /// Those, by close code (4001: the node's idle timeout; 0: the
    /// connection failed without a close frame).
    dropped_by_code: Vec<(u16, u64)>,
    /// Streams open when the memory was read (before the timed phase), and
    /// the node's open files then (its sockets included).
    open_at_measurement: usize,
    node_open_files_at_measurement: u64,
    /// Streams still open at the end of the run.
    open_at_end: usize,
    /// Each stream a device of its own (its own access-list entry), not
    /// more streams of the same devices.
    distinct_devices: bool,
    talks: usize,
    devices_per_talks: usize,
    source_addresses: usize,
    open_s: f64,
    /// The first node's VmRSS before the idle streams opened, then with
    /// them connected (before the timed phase), KiB.
    node_vmrss_before_kib: u64,
    node_vmrss_connected_kib: u64,
    node_vmhwm_connected_kib: u64,
    /// The first node's CPU with only the idle streams connected (2 s with
    /// no load), in cores; this generator's, the same 2 s.
    node_idle_cpu_cores: f64,
    generator_idle_cpu_cores: f64,
}

/// What `bench load` reports.
#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    durability: String,
    nodes: usize,
    talks: usize,
    devices: usize,
    recipients_per_envelope: usize,
    /// The application messages' body.
    body_bytes: usize,
    mix: String,
    mode: String,
    rate: Option<f64>,
    in_flight: usize,
    seed: u64,
    duration_s: f64,
    /// A sender ran out of pre-built work, ending the phase early.
    exhausted: bool,
    /// Every kind together.
    acknowledged: u64,
    errors: u64,
    first_errors: Vec<String>,
    throughput_per_s: f64,
    /// Every kind together.
    ack: Latency,
    /// Application messages.
    push: Latency,
    /// Pushes of acknowledged envelopes (every kind) never seen on a
    /// stream.
    push_missing: u64,
    /// Acknowledgement to inclusion verified by a recipient (application
    /// messages and statements; see [`prober`]).
    inclusion: Latency,
    /// Acknowledged envelopes no verified checkpoint covered by the end.
    inclusion_missing: u64,
    /// Checkpoints the recipients verified from data tiles.
    checkpoints_verified: u64,
    kinds: Vec<KindReport>,
    catch_up: Option<CatchUpReport>,
    idle: Option<IdleReport>,
    /// The first node's VmRSS and VmHWM at the end of the timed phase, KiB.
    node_vmrss_kib: u64,
    node_vmhwm_kib: u64,
    /// Whether VmHWM was reset after the node's start-up (which unlocks
    /// its key files with a memory-hard KDF); if not, it counts that too.
    node_vmhwm_reset: bool,
    ed25519_verify_per_s: f64,
    fsync_per_s: f64,
    node_cpu_s: f64,
    generator_cpu_s: f64,
    envelopes_per_node_cpu_s: f64,
    fraction_of_ed25519: f64,
    envelopes_per_fsync: f64,
    nofile_limit: Option<u64>,
    stream_source_addresses: u8,
    submit_source_addresses: u8,
    /// `/proc/loadavg` (1, 5, 15 min) as the timed phase started: above
    /// about 1.5 on two cores, others were using the machine too.
    load_average: [f64; 3],
    /// CPU time the hypervisor gave to other guests during the timed
    /// phase, summed over every CPU (`steal` in `/proc/stat`).
    steal_cpu_s: f64,
    /// The most of every CPU's time stolen in one 100 ms of the phase, %.
    steal_peak_percent: f64,
    /// The fsyncs of [`fsync_watch`] in the timed phase (ten a second).
    fsync_watch: Latency,
    /// When the slowest of them started, seconds into the phase.
    fsync_watch_slowest_at_s: f64,
    placement: Placement,
}

/// Where the node and the generator ran, as `/proc` reported it after
/// `--node-cpus`, `--generator-cpus` and `--generator-nice` were applied.
#[derive(Debug, Default, Serialize)]
struct Placement {
    /// The first node's `Cpus_allowed_list`.
    node_cpus: String,
    /// This generator's.
    generator_cpus: String,
    generator_nice: i32,
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn table(r: &Report) -> String {
    let mut s = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "{k:<34} {v}");
    };
    row(
        "backend",
        format!("{} ({} node process(es))", r.backend, r.nodes),
    );
    row("durability", r.durability.clone());
    row(
        "talks x devices",
        format!(
            "{} x {} ({} recipients per envelope)",
            r.talks, r.devices, r.recipients_per_envelope
        ),
    );
    row(
        "mix",
        format!("{} (application bodies {} bytes)", r.mix, r.body_bytes),
    );
    row(
        "mode",
        match r.rate {
            Some(rate) => format!(
                "open loop, {rate} submissions/s, seed {}, at most {} on the wire per sender",
                r.seed, r.in_flight
            ),
            None => format!("closed loop, {} in flight per sender", r.in_flight),
        },
    );
    row(
        "source addresses",
        format!(
            "submissions {}, streams {} (127.0.0.2 …)",
            r.submit_source_addresses, r.stream_source_addresses
        ),
    );
    row(
        "placement",
        format!(
            "node on CPUs {}, generator on CPUs {} at nice {}",
            r.placement.node_cpus, r.placement.generator_cpus, r.placement.generator_nice
        ),
    );
    row(
        "load average at start",
        format!(
            "{:.2} {:.2} {:.2}{}",
            r.load_average[0],
            r.load_average[1],
            r.load_average[2],
            if r.load_average[0] > 1.5 {
                " (others were using the machine: figures indicative only)"
            } else {
                ""
            }
        ),
    );
    row(
        "duration",
        format!(
            "{:.2} s{}",
            r.duration_s,
            if r.exhausted {
                " (ended early: pre-built work ran out)"
            } else {
                ""
            }
        ),
    );
    row("acknowledged", format!("{} (every kind)", r.acknowledged));
    row("errors", r.errors.to_string());
    row(
        "throughput",
        format!("{:.0} /s (every kind)", r.throughput_per_s),
    );
    let lat = |l: &Latency| {
        format!(
            "p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={})",
            l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.samples
        )
    };
    row("ack latency (every kind)", lat(&r.ack));
    row("push latency (app)", lat(&r.push));
    row("push missing", r.push_missing.to_string());
    row("inclusion verified (app+stmt)", lat(&r.inclusion));
    row(
        "inclusion missing",
        format!(
            "{} ({} checkpoints verified from data tiles)",
            r.inclusion_missing, r.checkpoints_verified
        ),
    );
    for k in &r.kinds {
        row(
            &format!("{} ({} bytes)", k.kind, k.bytes),
            format!(
                "{} acknowledged, {} errors, {:.1} /s",
                k.acknowledged, k.errors, k.throughput_per_s
            ),
        );
        row(&format!("  {} ack", k.kind), lat(&k.ack));
        if let Some(p) = &k.push {
            row(&format!("  {} push", k.kind), lat(p));
        }
    }
    if let Some(c) = &r.catch_up {
        row(
            "catch-up",
            format!(
                "{} envelopes missed, {} repetitions, after the timed phase (no load)",
                c.missed, c.repetitions
            ),
        );
        row(
            "  upgrade request -> caught",
            format!(
                "{} (client-observed upper bound of the node's time)",
                lat(&c.upgrade_to_caught)
            ),
        );
        row("  upgrade request -> first", lat(&c.upgrade_to_first));
        row("  TLS handshake (not counted)", lat(&c.tls_handshake));
        row(
            "  envelopes per second (p50)",
            format!("{:.0}", c.envelopes_per_s),
        );
        if c.missed == 1000 {
            row(
                "  target: 1000 in <= 50 ms",
                format!(
                    "{} (p99 {:.2} ms)",
                    if c.upgrade_to_caught.p99_ms <= 50.0 {
                        "met"
                    } else {
                        "missed"
                    },
                    c.upgrade_to_caught.p99_ms
                ),
            );
        }
    }
    if let Some(i) = &r.idle {
        row(
            "idle streams",
            format!(
                "{} connected of {} ({} failed) in {:.1} s",
                i.connected, i.requested, i.failed, i.open_s
            ),
        );
        row(
            "  open when measured",
            format!(
                "{} (node: {} files open); {} at the end of the run",
                i.open_at_measurement, i.node_open_files_at_measurement, i.open_at_end
            ),
        );
        row(
            "  closed by the node",
            format!(
                "{} (by close code: {})",
                i.dropped,
                if i.dropped_by_code.is_empty() {
                    "none".to_owned()
                } else {
                    i.dropped_by_code
                        .iter()
                        .map(|(c, n)| format!("{c}: {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        );
        row(
            "  devices",
            format!(
                "distinct: each its own access-list entry, {} talks of up to {}, no traffic; \
                 {} source addresses (127.1.x.y)",
                i.talks, i.devices_per_talks, i.source_addresses
            ),
        );
        row(
            "  node VmRSS",
            format!(
                "{} before them, {} with them connected (VmHWM {}), {} at the end of the run",
                mib(i.node_vmrss_before_kib),
                mib(i.node_vmrss_connected_kib),
                mib(i.node_vmhwm_connected_kib),
                mib(r.node_vmrss_kib)
            ),
        );
        row(
            "  node VmRSS per idle stream",
            format!(
                "{:.0} KiB ((with - before) / open when measured)",
                i.node_vmrss_connected_kib
                    .saturating_sub(i.node_vmrss_before_kib) as f64
                    / i.open_at_measurement.max(1) as f64
            ),
        );
        row(
            "  node CPU, idle streams only",
            format!(
                "{:.2} cores (2 s, no load; this generator {:.2})",
                i.node_idle_cpu_cores, i.generator_idle_cpu_cores
            ),
        );
        row(
            "  target: 20000, <= 2 GiB",
            format!(
                "{} ({} open when measured, {} at the end; VmHWM of the run {})",
                if i.open_at_measurement.min(i.open_at_end) >= 20_000 && r.node_vmhwm_kib <= 2 << 20
                {
                    "met"
                } else {
                    "missed"
                },
                i.open_at_measurement,
                i.open_at_end,
                mib(r.node_vmhwm_kib)
            ),
        );
        if let Some(f) = &i.first_failure {
            row("  first failure", f.clone());
        }
    }
    row(
        "node memory (end of timed phase)",
        format!(
            "VmRSS {}, VmHWM {} ({})",
            mib(r.node_vmrss_kib),
            mib(r.node_vmhwm_kib),
            if r.node_vmhwm_reset {
                "peak since the node's start-up"
            } else {
                "peak including the start-up's key-file unlock: not reset"
            }
        ),
    );
    row(
        "ed25519 verify (all cores)",
        format!("{:.0} /s", r.ed25519_verify_per_s),
    );
    row(
        "fsync (4 KiB, node dir)",
        format!("{:.0} /s", r.fsync_per_s),
    );
    row("node CPU", format!("{:.2} s", r.node_cpu_s));
    row("generator CPU", format!("{:.2} s", r.generator_cpu_s));
    row(
        "fsync watch (4 KiB, every 100 ms)",
        format!(
            "{}; slowest at {:.1} s",
            lat(&r.fsync_watch),
            r.fsync_watch_slowest_at_s
        ),
    );
    row(
        "stolen by the hypervisor",
        format!(
            "{:.2} CPU-s over every CPU in the timed phase; at most {:.0} % of them in one 100 ms",
            r.steal_cpu_s, r.steal_peak_percent
        ),
    );
    row(
        "submissions per node CPU-second",
        format!("{:.0}", r.envelopes_per_node_cpu_s),
    );
    row(
        "throughput / ed25519 ceiling",
        format!("{:.3}", r.fraction_of_ed25519),
    );
    row(
        "submissions per fsync",
        format!("{:.2} (throughput / fsyncs per s)", r.envelopes_per_fsync),
    );
    for e in &r.first_errors {
        row("error", e.clone());
    }
    s
}

/// p99 per bin of `samples`, in ms, by bin start (s).
fn p99_bins(samples: &Samples, end: Duration) -> Vec<(f64, f64)> {
    let bins = (end.as_nanos() / BIN.as_nanos()).max(1) as usize + 1;
    let mut by: Vec<Vec<u64>> = vec![Vec::new(); bins];
    for &(at, lat) in samples {
        let b = (at / BIN.as_nanos() as u64) as usize;
        if let Some(v) = by.get_mut(b) {
            v.push(lat);
        }
    }
    by.into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(i, mut v)| {
            v.sort_unstable();
            (i as f64 * BIN.as_secs_f64(), rank(&v, 0.99))
        })
        .collect()
}

/// Ack and push p99 and the [`fsync_watch`]'s fsync per [`BIN`] on the
/// left axis (ms), and the share of the CPUs the hypervisor stole in each
/// bin on the right (%, grey).
fn svg(
    ack: &Samples,
    push: &Samples,
    fsyncs: &Samples,
    steal: &[(f64, f64)],
    end: Duration,
    title: &str,
) -> String {
    let (w, h, m) = (900.0, 400.0, 50.0);
    let a = p99_bins(ack, end);
    let p = p99_bins(push, end);
    let f = p99_bins(fsyncs, end);
    let ymax = a
        .iter()
        .chain(&p)
        .chain(&f)
        .map(|x| x.1)
        .fold(1.0f64, f64::max)
        * 1.1;
    let xmax = end.as_secs_f64().max(0.1);
    let x = |t: f64| m + t / xmax * (w - 2.0 * m);
    let y = |v: f64| h - m - v / ymax * (h - 2.0 * m);
    let line = |pts: &[(f64, f64)], colour: &str| {
        let mut d = String::new();
        for (t, v) in pts {
            let _ = write!(d, "{:.1},{:.1} ", x(*t), y(*v));
        }
        format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{d}\"/>\n"
        )
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{m}\" y=\"20\">{title}: p99 per 100 ms (ms)</text>\n\
         <line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{b}\" stroke=\"black\"/>\n",
        b = h - m,
        r = w - m,
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let _ = writeln!(s, "<text x=\"5\" y=\"{:.1}\">{v:.1}</text>", y(v) + 4.0);
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\">{xmax:.1} s</text>",
        w - m - 20.0,
        h - m + 18.0
    );
    // Steal on the right-hand axis, 0 to 100 %.
    let stolen: Vec<(f64, f64)> = steal
        .iter()
        .map(|(t, pct)| (*t, pct / 100.0 * ymax))
        .collect();
    s.push_str(&line(&stolen, "#7f7f7f"));
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#7f7f7f\">{} %</text>",
            w - m + 5.0,
            y(v) + 4.0,
            25 * i
        );
    }
    s.push_str(&line(&f, "#2ca02c"));
    s.push_str(&line(&a, "#1f77b4"));
    s.push_str(&line(&p, "#d62728"));
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"40\" fill=\"#1f77b4\">ack</text>\
         <text x=\"{:.1}\" y=\"40\" fill=\"#d62728\">push</text>\
         <text x=\"{:.1}\" y=\"40\" fill=\"#2ca02c\">fsync</text>\
         <text x=\"{:.1}\" y=\"40\" fill=\"#7f7f7f\">CPU stolen</text>\n</svg>",
        w - m - 240.0,
        w - m - 200.0,
        w - m - 160.0,
        w - m - 115.0
    );
    s
}

// --- The run ------------------------------------------------------------------

/// `/proc/loadavg`'s three averages (zeros if unreadable).
fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = [0.0; 3];
    for (o, f) in out.iter_mut().zip(text.split_whitespace()) {
        *o = f.parse().unwrap_or(0.0);
    }
    out
}

fn load(args: LoadArgs) -> anyhow::Result<()> {
    ensure!(args.talks >= 1, "--talks must be at least 1");
    ensure!(args.nodes >= 1, "--nodes must be at least 1");
    ensure!(
        args.devices >= 2,
        "--devices must be at least 2 (a sender and a recipient)"
    );
    ensure!(
        args.duration > 0.0 && args.duration.is_finite(),
        "--duration must be positive"
    );
    ensure!(args.in_flight >= 1, "--in-flight must be at least 1");
    ensure!(
        args.source_addresses >= 1 && args.source_addresses <= 250,
        "--source-addresses must be from 1 to 250 (127.0.0.2 … 127.0.0.251)"
    );
    if let Some(rate) = args.rate {
        ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
    }
    ensure!(
        args.catch_up == 0 || args.catch_up_repeats >= 1,
        "--catch-up-repeats must be at least 1"
    );
    ensure!(
        args.catch_up.saturating_mul(args.catch_up_repeats) <= 1_000_000,
        "--catch-up x --catch-up-repeats is over 1000000 pre-built envelopes"
    );
    // Talks k's sender submits from 127.0.0.(2 + k mod --source-addresses);
    // the node is started allowing this many connections per source
    // address (`--connections-per-source`), and drops more during their
    // TLS handshake.
    let per_source = args.talks.div_ceil(usize::from(args.source_addresses)) * args.in_flight;
    ensure!(
        per_source <= SUBMIT_CONNECTIONS,
        "--talks x --in-flight / --source-addresses is {per_source} submission connections \
         from one source address, above the {SUBMIT_CONNECTIONS} the node is started to allow; \
         use more --source-addresses or fewer in flight"
    );
    let (nofile, hard) = raise_nofile();
    if args.idle_streams > 0 {
        // Each idle stream is a socket in this process and one in the
        // node's (which inherits this limit).
        let others = (args.talks * (args.in_flight + args.devices) + 2 * SETUP_CONNECTIONS) as u64
            + NOFILE_MARGIN;
        let limit = nofile.unwrap_or(u64::MAX);
        ensure!(
            args.idle_streams as u64 + others <= limit,
            "--idle-streams {}: this process and the node may each have {limit} files open \
             (RLIMIT_NOFILE, hard limit {}), and each idle stream is one socket on either side; \
             with the run's other connections and files (about {others}) at most {} idle \
             streams fit. Raising the hard limit needs root with CAP_SYS_RESOURCE (`ulimit -Hn`, \
             or LimitNOFILE= for a service)",
            args.idle_streams,
            hard.map_or("unlimited".to_owned(), |h| h.to_string()),
            limit.saturating_sub(others)
        );
        ensure!(
            args.idle_streams.div_ceil(IDLE_PER_SOURCE) <= 250 * 250,
            "--idle-streams is above what 127.1.x.y can hold at {IDLE_PER_SOURCE} per address"
        );
    }
    // The nodes inherit the affinity of the thread that starts them, and
    // so do the ceiling's verifying threads; the generator's runtime
    // threads inherit what this thread has when it is built.
    // Without either option, nothing is pinned.
    let (node_cpus, generator_cpus) = if args.node_cpus.is_some() || args.generator_cpus.is_some() {
        let allowed = Cpus::allowed()?;
        let within = |c: &Option<Cpus>, option: &str| match c {
            Some(c) => c.within(&allowed, option),
            None => Ok(allowed.clone()),
        };
        (
            Some(within(&args.node_cpus, "--node-cpus")?),
            Some(within(&args.generator_cpus, "--generator-cpus")?),
        )
    } else {
        (None, None)
    };
    if let Some(c) = &node_cpus {
        c.pin_this_thread()?;
    }
    let path = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "backchannel-bench-{}-{}",
            std::process::id(),
            hex::encode(&random16()[..4])
        )),
    };
    ensure!(!path.exists(), "{} exists already", path.display());
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    let dir = NodeDir {
        path,
        keep: args.keep || args.dir.is_some(),
    };
    let passphrase = hex::encode(random16());
    let creator = SecretKey::generate(&mut OsRng);
    init_node(&dir.path, &passphrase, &creator)?;
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        let log = if i == 0 {
            "node.log".to_owned()
        } else {
            format!("node{}.log", i + 1)
        };
        let node = start_node(&dir.path, &passphrase, args.database.as_deref(), &log)?;
        eprintln!(
            "bench: node {} listening on {} (directory {})",
            node.child.id(),
            node.addr,
            dir.path.display()
        );
        nodes.push(node);
    }
    let hwm_reset = nodes
        .iter()
        .all(|n| reset_peak_memory(&n.child.id().to_string()));
    let ed25519 = ed25519_per_second();
    let fsync = fsyncs_per_second(&dir.path)?;
    eprintln!("bench: {ed25519:.0} Ed25519 verifications/s, {fsync:.0} fsyncs/s");
    // From here on this process is the generator.
    if let Some(c) = &generator_cpus {
        c.pin_this_thread()?;
    }
    let nice =
        rustix::process::getpriority_process(None).context("reading this process's nice value")?;
    if nice < args.generator_nice {
        rustix::process::setpriority_process(None, args.generator_nice).with_context(|| {
            format!(
                "raising the generator's nice value to {}; --generator-nice {nice} leaves it as it is",
                args.generator_nice
            )
        })?;
    }
    let placement = Placement {
        node_cpus: cpus_allowed_list(&nodes[0].child.id().to_string()),
        generator_cpus: cpus_allowed_list("self"),
        generator_nice: rustix::process::getpriority_process(None)
            .context("reading the generator's nice value")?,
    };
    eprintln!(
        "bench: node on CPUs {}, generator on CPUs {} at nice {}",
        placement.node_cpus, placement.generator_cpus, placement.generator_nice
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut report = runtime.block_on(timed(
        &args, &nodes, &creator, ed25519, fsync, nofile, &dir.path,
    ))?;
    report.0.node_vmhwm_reset = hwm_reset;
    report.0.placement = placement;
    // The idle streams' tasks may still be closing: not waited for.
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(nodes);
    if let Some(file) = &args.svg {
        let (ack, push, end, steal, watched) = &report.1;
        let title = format!(
            "{} {}, {}, {} talks x {} devices",
            report.0.backend, report.0.mode, report.0.mix, report.0.talks, report.0.devices
        );
        std::fs::write(file, svg(ack, push, watched, steal, *end, &title))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    let report = report.0;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    if dir.keep {
        eprintln!(
            "bench: the node's directory is kept: {}",
            dir.path.display()
        );
    }
    Ok(())
}

/// Loopback source address `i` of the submissions and streams
/// (127.0.0.2 …).
fn source(i: usize, n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(n)) as u8))
}

async fn timed(
    args: &LoadArgs,
    nodes: &[NodeProcess],
    creator: &SecretKey,
    ed25519: f64,
    fsync: f64,
    nofile: Option<u64>,
    dir: &Path,
) -> anyhow::Result<(
    Report,
    (Samples, Samples, Duration, Vec<(f64, f64)>, Samples),
)> {
    let senders_n = args.talks;
    let per_sender = args.envelopes_per_sender.unwrap_or(match args.rate {
        None => 6000,
        Some(rate) => (rate * args.duration / senders_n as f64 * 1.2) as usize + 100,
    });
    let setup = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..args.talks {
        let creator = duplicate(creator)?;
        let node = &nodes[k % nodes.len()];
        let (addr, fingerprint) = (node.addr, node.fingerprint);
        let plan = Plan {
            devices: args.devices,
            mix: args.mix,
            submissions: per_sender,
            warm_up: args.in_flight,
            catch_up: if k == 0 {
                args.catch_up * args.catch_up_repeats
            } else {
                0
            },
            seed: args
                .seed
                .wrapping_mul(0x1000_0000_01b3)
                .wrapping_add(k as u64)
                ^ 0x006d_6978,
        };
        tasks.spawn(async move { (k, set_up_talks(addr, fingerprint, &creator, plan).await) });
    }
    let mut all = Vec::new();
    while let Some(t) = tasks.join_next().await {
        let (k, talks) = t.context("a set-up task")?;
        all.push((k, talks?));
    }
    // In talks order: talks k's sender is on node k mod nodes.
    all.sort_by_key(|(k, _)| *k);
    eprintln!(
        "bench: {} talks set up, {} submissions pre-built per sender ({}), in {:.1} s",
        all.len(),
        per_sender,
        args.mix,
        setup.elapsed().as_secs_f64()
    );

    // The idle devices' streams, open before the timed phase and held to
    // the end of the run.
    let node0 = nodes[0].child.id().to_string();
    let (stop_idle, stop_idle_rx) = tokio::sync::watch::channel(false);
    let mut idle = None;
    if args.idle_streams > 0 {
        let (rss_before, _) = memory_kib(&node0)?;
        let opened = open_idle(&nodes[0], creator, args.idle_streams, &stop_idle_rx).await?;
        eprintln!(
            "bench: {} idle streams connected, {} failed, in {:.1} s",
            opened.connected, opened.failed, opened.open_s
        );
        let (cpu0, self0) = (cpu_seconds(&node0)?, cpu_seconds("self")?);
        let quiet = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let secs = quiet.elapsed().as_secs_f64();
        let idle_cpu = (cpu_seconds(&node0)? - cpu0) / secs;
        let self_cpu = (cpu_seconds("self")? - self0) / secs;
        let (rss, hwm) = memory_kib(&node0)?;
        let open = opened.alive.load(Ordering::Relaxed);
        let files = open_files(&node0);
        eprintln!(
            "bench: {open} idle streams open, the node has {files} files open, VmRSS {}",
            mib(rss)
        );
        idle = Some((
            opened,
            rss_before,
            rss,
            hwm,
            [idle_cpu, self_cpu],
            (open, files),
        ));
    }

    let end = Duration::from_secs_f64(args.duration);
    // The streams open and catch up on the set-up's envelopes first, within
    // this grace period (longer with idle streams keeping the node busy).
    let grace = Duration::from_secs(3)
        + Duration::from_millis(50 * all.len() as u64)
        + Duration::from_millis(2 * args.idle_streams as u64);
    let ready_by = Instant::now() + grace;
    let run = Arc::new(Run {
        t0: std::sync::OnceLock::new(),
        end,
        exhausted: AtomicBool::new(false),
        errors: AtomicU64::new(0),
        failed: Default::default(),
        first_errors: Mutex::new(Vec::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let mut senders = Vec::new();
    let mut streams = tokio::task::JoinSet::new();
    let mut receivers = Vec::new();
    let mut n_streams = 0u32;
    let mut catch_up_work = None;
    let mut probers = tokio::task::JoinSet::new();
    let probes_stop = Arc::new(AtomicBool::new(false));
    let origin = NodeOrigin::new(ORIGIN).map_err(|e| anyhow!("{e}"))?;
    let bytes: [usize; 4] = {
        let (_, t) = &all[0];
        [
            t.envelopes[0].first().map_or(0, |e| e.1.len()),
            t.envelopes[1].first().map_or(0, |e| e.1.len()),
            t.envelopes[2].first().map_or(0, |e| e.1.len()),
            t.blobs.first().map_or(0, Vec::len),
        ]
    };
    for (k, mut t) in all {
        let node = &nodes[k % nodes.len()];
        let client = NodeClient::with_local_address(
            node.addr,
            node.fingerprint,
            &t.sender,
            source(k, args.source_addresses),
        )?;
        let recipients = std::mem::take(&mut t.recipients);
        if k == 0 && args.catch_up > 0 {
            catch_up_work = Some((std::mem::take(&mut t.catch_up), duplicate(&recipients[0])?));
        }
        let sender = Arc::new(Sender::new(t, client));
        {
            // The first recipient verifies inclusion, on its stream's node.
            let node = &nodes[(k + 1) % nodes.len()];
            let client = NodeClient::new(node.addr, node.fingerprint, &recipients[0])?;
            let log_key = client.node_info().await?.log_key;
            probers.spawn(prober(
                Arc::clone(&run),
                Arc::clone(&sender),
                client,
                log_key,
                LogOrigin::new(&origin, sender.talks),
                Arc::clone(&probes_stop),
            ));
        }
        for (j, key) in recipients.iter().enumerate() {
            let received = Arc::new(Received::default());
            receivers.push((Arc::clone(&sender), Arc::clone(&received)));
            // Another node than the sender's, where there is one.
            let node = &nodes[(k + j + 1) % nodes.len()];
            streams.spawn(recipient(
                Arc::clone(&run),
                Arc::clone(&sender),
                NodeClient::new(node.addr, node.fingerprint, key)?,
                node.addr,
                source(k + j, args.source_addresses),
                Arc::clone(&ready),
                received,
                Arc::clone(&stop),
            ));
            n_streams += 1;
        }
        senders.push(sender);
    }
    // Every stream caught up on the set-up's envelopes before t0.
    tokio::select! {
        r = ready.acquire_many(n_streams) => { r?.forget(); }
        () = tokio::time::sleep_until(ready_by.into()) => {
            bail!(
                "the delivery streams did not catch up within {:.1} s (the set-up's grace period)",
                grace.as_secs_f64()
            );
        }
        Some(r) = streams.join_next() => {
            r??;
            bail!("a delivery stream ended before the timed phase");
        }
    }
    // Warm-up: each sender's first `--in-flight` application messages, at
    // once, so its connections (TLS handshakes) are open before t0; not
    // counted.
    let mut warm = tokio::task::JoinSet::new();
    for sender in &senders {
        let warm_up = args
            .in_flight
            .min(sender.envelopes[Work::App.index()].len());
        for i in 0..warm_up {
            let sender = Arc::clone(sender);
            sender.start[Work::App.index()][i].store(WARM_UP, Ordering::Release);
            warm.spawn(async move {
                let (h, b) = &sender.envelopes[Work::App.index()][i];
                sender.client.submit(sender.talks, h, b).await.map(|_| ())
            });
        }
    }
    while let Some(w) = warm.join_next().await {
        w.context("a warm-up task")?
            .context("a warm-up submission")?;
    }
    let node_pids: Vec<String> = nodes.iter().map(|n| n.child.id().to_string()).collect();
    let nodes_cpu = || -> anyhow::Result<f64> { node_pids.iter().map(|p| cpu_seconds(p)).sum() };
    // The warm-up's pushes settle; then the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.t0();
    let load_average = load_average();
    let node_cpu0 = nodes_cpu()?;
    let self_cpu0 = cpu_seconds("self")?;
    let steal0 = steal_seconds();
    // The steal sampler and the fsync watch, until the phase ends.
    let watch_stop = Arc::new(AtomicBool::new(false));
    let steal_sampler = tokio::spawn(steal_samples(Arc::clone(&run), Arc::clone(&watch_stop)));
    let fsync_watcher = fsync_watch(
        dir.join("fsync-watch"),
        Arc::clone(&run),
        Arc::clone(&watch_stop),
    );

    let mut workers = tokio::task::JoinSet::new();
    for (k, sender) in senders.iter().enumerate() {
        match args.rate {
            None => {
                for _ in 0..args.in_flight {
                    workers.spawn(closed_worker(Arc::clone(&run), Arc::clone(sender)));
                }
            }
            Some(rate) => {
                workers.spawn(open_sender(
                    Arc::clone(&run),
                    Arc::clone(sender),
                    rate / senders_n as f64,
                    args.seed
                        .wrapping_mul(0x1000_0000_01b3)
                        .wrapping_add(k as u64),
                    args.in_flight,
                ));
            }
        }
    }
    let mut ack = KindSamples::default();
    while let Some(w) = workers.join_next().await {
        for (all, some) in ack.iter_mut().zip(w.context("a sender task")?) {
            all.extend(some);
        }
    }
    // The phase lasts until the last answer came (closed loop: the last
    // submissions begun before the end; open loop: the last scheduled).
    let elapsed = Duration::from_nanos(run.now());
    probes_stop.store(true, Ordering::Relaxed);
    let node_cpu = nodes_cpu()? - node_cpu0;
    let self_cpu = cpu_seconds("self")? - self_cpu0;
    let steal = steal_seconds() - steal0;
    watch_stop.store(true, Ordering::Relaxed);
    let steal_bins = steal_shares(
        &steal_sampler.await.context("the steal sampler")?,
        online_cpus(),
    );
    let fsyncs_watched = fsync_watcher
        .await
        .context("the fsync watch")?
        .context("the fsync watch")?;
    let steal_peak = steal_bins.iter().map(|b| b.1).fold(0.0, f64::max);
    let (node_vmrss, node_vmhwm) = memory_kib(&node0)?;
    // Timed phase over (the last acknowledgement in); the pushes still on
    // their way get up to 5 s.
    let missing = |w: Work| -> u64 {
        receivers
            .iter()
            .map(|(s, r)| {
                s.acked(w)
                    .saturating_sub(r[w.index()].load(Ordering::Relaxed))
            })
            .sum()
    };
    let drain = Instant::now();
    while drain.elapsed() < Duration::from_secs(5)
        && WORKS[..ENVELOPE_WORKS].iter().any(|w| missing(*w) > 0)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut push = KindSamples::default();
    while let Some(s) = streams.join_next().await {
        match s.context("a stream task")? {
            Ok(samples) => {
                for (all, some) in push.iter_mut().zip(samples) {
                    all.extend(some);
                }
            }
            Err(e) => run.error(format!("stream: {e:#}")),
        }
    }
    let mut inclusion = Samples::new();
    let (mut unproven, mut checkpoints) = (0, 0);
    while let Some(p) = probers.join_next().await {
        match p.context("a prober task")? {
            Ok(p) => {
                inclusion.extend(p.samples);
                unproven += p.unproven;
                checkpoints += p.checkpoints;
            }
            Err(e) => run.error(format!("inclusion: {e:#}")),
        }
    }
    if unproven > 0 {
        run.error(format!(
            "{unproven} acknowledged envelopes were not under a verified checkpoint {} s after the timed phase",
            PROBE_DRAIN.as_secs()
        ));
    }

    let catch_up_report = match catch_up_work {
        Some((envelopes, key)) => {
            let node = &nodes[1 % nodes.len()];
            eprintln!(
                "bench: catch-up: {} missed envelopes, {} repetitions",
                args.catch_up, args.catch_up_repeats
            );
            Some(
                catch_up(
                    &senders[0],
                    envelopes,
                    NodeClient::new(node.addr, node.fingerprint, &key)?,
                    node.addr,
                    source(0, args.source_addresses),
                    args.catch_up,
                    args.catch_up_repeats,
                    args.in_flight.max(8),
                )
                .await
                .context("the catch-up measurement")?,
            )
        }
        None => None,
    };

    let idle_report = match idle {
        Some((mut opened, rss_before, rss, hwm, [idle_cpu, self_idle_cpu], (open, files))) => {
            let open_at_end = opened.alive.load(Ordering::Relaxed);
            let _ = stop_idle.send(true);
            while let Some(t) = opened.tasks.join_next().await {
                if let Err(e) = t {
                    run.error(format!("an idle stream's task: {e}"));
                }
            }
            let mut by_code: Vec<(u16, u64)> = opened
                .closes
                .lock()
                .map(|c| c.iter().map(|(k, v)| (*k, *v)).collect())
                .unwrap_or_default();
            by_code.sort_unstable();
            let dropped = by_code.iter().map(|(_, n)| n).sum();
            if dropped > 0 {
                run.error(format!(
                    "{dropped} idle streams closed by the node (by close code: {by_code:?})"
                ));
            }
            Some(IdleReport {
                requested: args.idle_streams,
                connected: opened.connected,
                failed: opened.failed,
                first_failure: opened.first_failure,
                dropped,
                dropped_by_code: by_code,
                open_at_measurement: open,
                node_open_files_at_measurement: files,
                open_at_end,
                distinct_devices: true,
                talks: opened.talks,
                devices_per_talks: IDLE_PER_TALKS,
                source_addresses: opened.addresses,
                open_s: opened.open_s,
                node_vmrss_before_kib: rss_before,
                node_vmrss_connected_kib: rss,
                node_vmhwm_connected_kib: hwm,
                node_idle_cpu_cores: idle_cpu,
                generator_idle_cpu_cores: self_idle_cpu,
            })
        }
        None => None,
    };

    let duration_s = elapsed.as_secs_f64();
    let kinds: Vec<KindReport> = WORKS
        .iter()
        .filter(|w| args.mix.weight(**w) > 0)
        .map(|w| {
            let acknowledged: u64 = senders.iter().map(|s| s.acked(*w)).sum();
            let envelope = w.index() < ENVELOPE_WORKS;
            KindReport {
                kind: w.name(),
                weight: args.mix.weight(*w),
                bytes: bytes[w.index()],
                acknowledged,
                errors: run.failed[w.index()].load(Ordering::Relaxed),
                throughput_per_s: acknowledged as f64 / duration_s,
                ack: latency(&ack[w.index()]),
                push: envelope.then(|| latency(&push[w.index()])),
                push_missing: envelope.then(|| missing(*w)),
            }
        })
        .collect();
    let push_missing = WORKS[..ENVELOPE_WORKS].iter().map(|w| missing(*w)).sum();
    let acknowledged: u64 = kinds.iter().map(|k| k.acknowledged).sum();
    let throughput = acknowledged as f64 / duration_s;
    let exhausted = run.exhausted.load(Ordering::Relaxed);
    let errors = run.errors.load(Ordering::Relaxed);
    let first_errors = run
        .first_errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    let all_ack: Samples = ack.iter().flatten().copied().collect();
    let [app_push, ..] = push;
    let report = Report {
        backend: if args.database.is_some() {
            "postgresql".into()
        } else {
            "sqlite".into()
        },
        durability: if args.database.is_some() {
            "synchronous_commit=on: each group commit's transaction durable before its acks".into()
        } else {
            "synchronous=FULL (WAL): fsync per group commit, before its acks".into()
        },
        nodes: args.nodes,
        talks: args.talks,
        devices: args.devices,
        recipients_per_envelope: args.devices - 1,
        body_bytes: BODY_LEN,
        mix: args.mix.to_string(),
        mode: if args.rate.is_some() {
            "open".into()
        } else {
            "closed".into()
        },
        rate: args.rate,
        in_flight: args.in_flight,
        seed: args.seed,
        duration_s,
        exhausted,
        acknowledged,
        errors,
        first_errors,
        throughput_per_s: throughput,
        ack: latency(&all_ack),
        push: latency(&app_push),
        push_missing,
        inclusion: latency(&inclusion),
        inclusion_missing: unproven,
        checkpoints_verified: checkpoints,
        kinds,
        catch_up: catch_up_report,
        idle: idle_report,
        node_vmrss_kib: node_vmrss,
        node_vmhwm_kib: node_vmhwm,
        node_vmhwm_reset: false,
        ed25519_verify_per_s: ed25519,
        fsync_per_s: fsync,
        node_cpu_s: node_cpu,
        generator_cpu_s: self_cpu,
        envelopes_per_node_cpu_s: if node_cpu > 0.0 {
            acknowledged as f64 / node_cpu
        } else {
            0.0
        },
        fraction_of_ed25519: throughput / ed25519.max(1.0),
        envelopes_per_fsync: throughput / fsync.max(1.0),
        nofile_limit: nofile,
        stream_source_addresses: args.source_addresses,
        submit_source_addresses: args.source_addresses,
        load_average,
        steal_cpu_s: steal,
        steal_peak_percent: steal_peak,
        fsync_watch: latency(&fsyncs_watched),
        fsync_watch_slowest_at_s: fsyncs_watched
            .iter()
            .max_by_key(|s| s.1)
            .map_or(0.0, |s| s.0 as f64 / 1e9),
        placement: Placement::default(),
    };
    Ok((
        report,
        (all_ack, app_push, elapsed, steal_bins, fsyncs_watched),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--node-cpus` and `--generator-cpus` values: what they parse to and
    /// how the report writes them, or the error.
    #[test]
    fn cpu_lists() {
        fn check(input: &str, want: Result<&[usize], &str>, shown: &str) {
            match (parse_cpus(input), want) {
                (Ok(c), Ok(w)) => {
                    assert_eq!(c.0, w, "{input:?}");
                    assert_eq!(c.to_string(), shown, "{input:?}");
                }
                (Err(e), Err(w)) => assert!(e.contains(w), "{input:?}: {e}"),
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
        check("0", Ok(&[0]), "0");
        check("0-1", Ok(&[0, 1]), "0-1");
        check("3,0-1,1", Ok(&[0, 1, 3]), "0-1,3");
        check(" 2 , 4-6 ", Ok(&[2, 4, 5, 6]), "2,4-6");
        check("5-5", Ok(&[5]), "5");
        check("1023", Ok(&[1023]), "1023");
        check("1024", Err("is not a CPU number from 0 to 1023"), "");
        check("", Err("\"\" is not a CPU number"), "");
        check("0,", Err("\"\" is not a CPU number"), "");
        check("a-1", Err("\"a\" is not a CPU number"), "");
        check("-1", Err("\"\" is not a CPU number"), "");
        check("3-1", Err("the range \"3-1\" runs backwards"), "");
        check("0-1-2", Err("\"1-2\" is not a CPU number"), "");
    }

    /// The SVG's stolen share per span: whole ticks over span x CPUs,
    /// short spans carried into the next, each drawn at its start.
    #[test]
    fn steal_shares_per_span() {
        let ms = |n: u64| n * 1_000_000;
        // Two CPUs; 0.01 s (one tick) stolen in the first 100 ms, none in
        // the second, then a 10 ms span carried into a 110 ms one with
        // 0.11 s stolen (half of two CPUs).
        let samples = [
            (ms(0), 5.0),
            (ms(100), 5.01),
            (ms(200), 5.01),
            (ms(210), 5.02),
            (ms(310), 5.12),
        ];
        let got = steal_shares(&samples, 2);
        let want = [(0.0, 5.0), (0.1, 0.0), (0.2, 50.0)];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((t, v), (wt, wv)) in got.iter().zip(want) {
            assert!((t - wt).abs() < 1e-9 && (v - wv).abs() < 1e-6, "{got:?}");
        }
        // Clamped, and nothing from fewer than two samples.
        assert_eq!(steal_shares(&[(0, 0.0), (ms(100), 9.0)], 2), [(0.0, 100.0)]);
        assert!(steal_shares(&[(0, 0.0)], 2).is_empty());
        assert!(steal_shares(&[], 2).is_empty());
    }
}
