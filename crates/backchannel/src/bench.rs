//! `backchannel bench load`: a load generator that drives a real node (a
//! child process of this binary) over real TLS with envelopes the real
//! client code encrypted and signed, and reports what it measured.
//!
//! The run, in order: the node is set up and started (`node init`, `node
//! creators add`, `node run` on a fresh directory); the machine's limits
//! are measured (Ed25519 verifications per second on every core, fsyncs
//! per second on the node's directory); talks are opened through the API
//! and every device is put in its room's MLS group by the client library;
//! each talks' sender pre-builds its envelopes; the other devices open
//! their delivery streams and catch up; then the timed phase, closed loop
//! (each sender keeps `--in-flight` submissions outstanding) or open loop
//! (`--rate`, send times drawn from `--seed`, latency counted from the
//! scheduled time). Docs: `docs/performance.md`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use backchannel_client::net::{NodeClient, StreamEvent};
use backchannel_client::rooms::sync_all;
use backchannel_client::seal::Content;
use backchannel_client::session::Session;
use backchannel_client::store::MemoryClientStore;
use backchannel_codec::{PartyId, PrincipalId, RoomId, TalksId};
use backchannel_crypto::{SecretKey, Signer as _};
use backchannel_node::tls::Fingerprint;
use backchannel_statement::access_list::{
    AccessEntry, FLAG_DESIGNATED_SIGNER, FLAG_DEVICE, FLAG_MEDIATOR,
};
use backchannel_statement::{AccessList, Salt, SignedHeader};
use backchannel_tlog::NodeOrigin;
use clap::{Args, Subcommand};
use rand_core::{OsRng, RngCore as _};
use serde::Serialize;

/// The node's origin in every run.
const ORIGIN: &str = "bench.backchannel.example";
/// The plaintext of every timed envelope is cut to fit the 1 KiB body
/// bucket; this is where the search starts.
const TALK_LEN: usize = 1024;
/// The body size of every timed envelope (the smallest bucket).
const BODY_LEN: usize = 1024;
/// How many failures are kept word for word.
const FIRST_ERRORS: usize = 5;
/// The most submission connections a run may open: the node is started
/// with `--connections-per-source` this plus room for the set-up's.
const SUBMIT_CONNECTIONS: usize = 1000;
/// Connections from 127.0.0.1 beside the submissions: the set-up's
/// sessions and the warm-up (the node's default per-source allowance).
const SETUP_CONNECTIONS: usize = 64;
/// The start mark of a warm-up envelope (sent before t0, not counted).
const WARM_UP: u64 = u64::MAX;
/// The SVG's time bins.
const BIN: Duration = Duration::from_millis(100);

/// `backchannel bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Drive a fresh local node (a child process) over TLS with envelopes
    /// the client library encrypted and signed, and report throughput,
    /// latencies and the machine's limits.
    Load(LoadArgs),
}

/// `backchannel bench load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// How many talks.
    #[arg(long, default_value_t = 8)]
    pub talks: usize,
    /// Devices per talks, in one room: one sends, the others receive on
    /// their delivery streams.
    #[arg(long, default_value_t = 4)]
    pub devices: usize,
    /// Seconds of the timed phase.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seeds the open loop's send times (and nothing secret).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Closed loop: submissions each sender keeps outstanding. Open loop:
    /// the most each sender has on the wire (one per connection); later
    /// scheduled sends wait in the generator, and that wait is counted.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Open loop: envelopes per second in total, spread evenly over the
    /// senders (Poisson arrivals); latency is counted from each scheduled
    /// send time. Without it, the loop is closed.
    #[arg(long, value_name = "ENVELOPES_PER_S")]
    pub rate: Option<f64>,
    /// Envelopes each sender pre-builds [default: closed loop 6000, open
    /// loop rate x duration / senders x 1.2 + 100]. The timed phase ends
    /// early, and says so, if a sender runs out.
    #[arg(long, value_name = "N")]
    pub envelopes_per_sender: Option<usize>,
    /// The node's PostgreSQL database (`postgres://…`) [default: SQLite in
    /// the node's directory].
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Node processes sharing the node directory and the `--database`
    /// (PostgreSQL only); talks and streams are spread over them, a
    /// talks' recipients on other nodes than its sender where there are.
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
    /// Delivery streams are spread over this many loopback source
    /// addresses (127.0.0.2 …).
    #[arg(long, default_value_t = 4)]
    pub source_addresses: u8,
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
        .args(["--streams-per-key", "16"])
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
/// (`backchannel_crypto::verify` of a 200-byte message, as long as a
/// signed envelope header) for about a second.
fn ed25519_per_second() -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let key = SecretKey::generate(&mut OsRng);
    let context = backchannel_statement::header::ENVELOPE_CONTEXT;
    let message = [7u8; 200];
    let Ok(signature) = key.sign(context, &message) else {
        return 0.0;
    };
    let public = key.public_key();
    let start = Instant::now();
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            std::thread::spawn(move || {
                let mut n = 0u64;
                while start.elapsed() < Duration::from_secs(1) {
                    for _ in 0..64 {
                        if backchannel_crypto::verify(&public, context, &message, &signature)
                            .is_ok()
                        {
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
    let block = [0x5au8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        file.write_all(&block)?;
        file.sync_all()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(rate)
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

// --- Set-up -----------------------------------------------------------------

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b
}

/// One talks, ready for the timed phase.
struct Talks {
    talks: TalksId,
    /// The sender's client (its own TLS connections).
    sender: NodeClient,
    /// The pre-built envelopes, in order.
    envelopes: Vec<(SignedHeader, Vec<u8>)>,
    /// Each envelope's index, by idempotency key.
    index: HashMap<[u8; 16], usize>,
    /// The recipients' device keys.
    recipients: Vec<SecretKey>,
}

fn duplicate(key: &SecretKey) -> anyhow::Result<SecretKey> {
    SecretKey::from_seed(&key.seed()).map_err(|e| anyhow!("{e}"))
}

/// Opens one talks (a mediator's talks authority in the record room, the
/// devices in one room besides it, each its own principal of one party),
/// puts every device in the room's MLS group, and pre-builds `envelopes`
/// 1 KiB application messages of its first device.
async fn set_up_talks(
    addr: SocketAddr,
    fp: Fingerprint,
    creator: &SecretKey,
    devices: usize,
    envelopes: usize,
) -> anyhow::Result<Talks> {
    let talks = TalksId(random16());
    let record = RoomId(random16());
    let room = RoomId(random16());
    let mediators = PartyId(random16());
    let party = PartyId(random16());
    let authority = SecretKey::generate(&mut OsRng);
    let keys: Vec<SecretKey> = (0..devices)
        .map(|_| SecretKey::generate(&mut OsRng))
        .collect();
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
            vec![room],
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
            .context("putting the devices in the room's MLS group")?;
    }
    let mut sender = sessions.swap_remove(0);
    drop(sessions);

    // The talk's length is cut until the padded body fits the 1 KiB bucket.
    let mut len = TALK_LEN;
    let mut built = Vec::with_capacity(envelopes);
    while built.is_empty() {
        let text: String = std::iter::repeat_n('x', len).collect();
        let mut salt = [0u8; 32];
        OsRng.fill_bytes(&mut salt);
        let (h, b) = sender.prepare_app_envelope(room, Content::Talk(text), Salt(salt))?;
        if b.len() == BODY_LEN {
            built.push((h, b));
        } else {
            ensure!(len > 32, "no talk fits a {BODY_LEN}-byte body");
            len -= 16;
        }
    }
    let text: String = std::iter::repeat_n('x', len).collect();
    while built.len() < envelopes {
        let mut salt = [0u8; 32];
        OsRng.fill_bytes(&mut salt);
        let (h, b) = sender.prepare_app_envelope(room, Content::Talk(text.clone()), Salt(salt))?;
        ensure!(b.len() == BODY_LEN, "a body of {} bytes", b.len());
        built.push((h, b));
    }
    let index = built
        .iter()
        .enumerate()
        .map(|(i, (h, _))| (h.header().idempotency_key, i))
        .collect();
    let mut recipients = Vec::new();
    for k in &keys[1..] {
        recipients.push(duplicate(k)?);
    }
    Ok(Talks {
        talks,
        sender: NodeClient::new(addr, fp, &keys[0])?,
        envelopes: built,
        index,
        recipients,
    })
}

// --- The timed phase --------------------------------------------------------

/// What one sender shares with its tasks and its talks' recipients.
struct Sender {
    talks: TalksId,
    client: NodeClient,
    envelopes: Vec<(SignedHeader, Vec<u8>)>,
    index: HashMap<[u8; 16], usize>,
    /// The next envelope to send.
    next: AtomicUsize,
    /// Per envelope: ns after `t0` it was sent (closed loop) or scheduled
    /// (open loop), plus one; 0 while unsent.
    start: Vec<AtomicU64>,
    /// Envelopes acknowledged.
    acked: AtomicU64,
}

/// Shared by every task of the timed phase.
struct Run {
    t0: Instant,
    end: Duration,
    /// A sender ran out of pre-built envelopes.
    exhausted: AtomicBool,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Run {
    fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
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

/// Submits envelope `i` of `sender`, counted from `from` (ns after `t0`):
/// the ack sample, or `None` after counting the error.
async fn submit_one(run: &Run, sender: &Sender, i: usize, from: u64) -> Option<(u64, u64)> {
    sender.start[i].store(from + 1, Ordering::Release);
    let (h, b) = &sender.envelopes[i];
    match sender.client.submit(sender.talks, h, b).await {
        Ok(_) => {
            let at = run.now();
            sender.acked.fetch_add(1, Ordering::Relaxed);
            Some((at, at.saturating_sub(from)))
        }
        Err(e) => {
            run.error(format!("submit: {e}"));
            None
        }
    }
}

/// Closed loop: one of a sender's `--in-flight` tasks.
async fn closed_worker(run: Arc<Run>, sender: Arc<Sender>) -> Samples {
    let mut samples = Vec::new();
    loop {
        let from = run.now();
        if from >= run.end.as_nanos() as u64 {
            return samples;
        }
        let i = sender.next.fetch_add(1, Ordering::Relaxed);
        if i >= sender.envelopes.len() {
            run.exhausted.store(true, Ordering::Relaxed);
            return samples;
        }
        if let Some(s) = submit_one(&run, &sender, i, from).await {
            samples.push(s);
        }
    }
}

/// A small deterministic generator (SplitMix64) for the open loop's send
/// times.
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
) -> Samples {
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
        if i >= sender.envelopes.len() {
            run.exhausted.store(true, Ordering::Relaxed);
            break;
        }
        tokio::time::sleep_until((run.t0 + scheduled).into()).await;
        let (run, sender) = (Arc::clone(&run), Arc::clone(&sender));
        let from = scheduled.as_nanos() as u64;
        let wire = Arc::clone(&wire);
        tasks.spawn(async move {
            let _permit = wire.acquire_owned().await.ok()?;
            submit_one(&run, &sender, i, from).await
        });
    }
    let mut samples = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(s)) = done {
            samples.push(s);
        }
    }
    samples
}

/// One recipient's delivery stream, over a connection from `source`:
/// caught up before `ready` is counted, then a push sample for every
/// envelope of the timed phase, until `stop`.
#[allow(clippy::too_many_arguments)]
async fn recipient(
    run: Arc<Run>,
    sender: Arc<Sender>,
    client: NodeClient,
    node: SocketAddr,
    source: IpAddr,
    ready: Arc<tokio::sync::Semaphore>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Samples> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let io = socket.connect(node).await?;
    io.set_nodelay(true)?;
    let mut stream = client.stream_over(io, sender.talks, 0).await?;
    let mut samples = Vec::new();
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
                if let Some(&i) = sender.index.get(&key) {
                    let from = sender.start[i].load(Ordering::Acquire);
                    if from == WARM_UP {
                        // A warm-up envelope, before t0: not counted.
                    } else if from > 0 {
                        samples.push((at, at.saturating_sub(from - 1)));
                        received.fetch_add(1, Ordering::Relaxed);
                    } else {
                        run.error("an envelope delivered before its submission began".into());
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

/// What `bench load` reports.
#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    durability: String,
    nodes: usize,
    talks: usize,
    devices: usize,
    recipients_per_envelope: usize,
    body_bytes: usize,
    mode: String,
    rate: Option<f64>,
    in_flight: usize,
    seed: u64,
    duration_s: f64,
    /// A sender ran out of pre-built envelopes, ending the phase early.
    exhausted: bool,
    acknowledged: u64,
    errors: u64,
    first_errors: Vec<String>,
    throughput_per_s: f64,
    ack: Latency,
    push: Latency,
    /// Pushes of acknowledged envelopes never seen on a stream.
    push_missing: u64,
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
    row("body", format!("{} bytes (MLS application)", r.body_bytes));
    row(
        "mode",
        match r.rate {
            Some(rate) => format!(
                "open loop, {rate} env/s, seed {}, at most {} on the wire per sender",
                r.seed, r.in_flight
            ),
            None => format!("closed loop, {} in flight per sender", r.in_flight),
        },
    );
    row(
        "duration",
        format!(
            "{:.2} s{}",
            r.duration_s,
            if r.exhausted {
                " (ended early: envelopes ran out)"
            } else {
                ""
            }
        ),
    );
    row("acknowledged", r.acknowledged.to_string());
    row("errors", r.errors.to_string());
    row("throughput", format!("{:.0} env/s", r.throughput_per_s));
    let lat = |l: &Latency| {
        format!(
            "p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={})",
            l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.samples
        )
    };
    row("ack latency", lat(&r.ack));
    row("push latency", lat(&r.push));
    row("push missing", r.push_missing.to_string());
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
        "envelopes per node CPU-second",
        format!("{:.0}", r.envelopes_per_node_cpu_s),
    );
    row(
        "throughput / ed25519 ceiling",
        format!("{:.3}", r.fraction_of_ed25519),
    );
    row(
        "envelopes per fsync",
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

fn svg(ack: &Samples, push: &Samples, end: Duration, title: &str) -> String {
    let (w, h, m) = (900.0, 400.0, 50.0);
    let a = p99_bins(ack, end);
    let p = p99_bins(push, end);
    let ymax = a.iter().chain(&p).map(|x| x.1).fold(1.0f64, f64::max) * 1.1;
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
    s.push_str(&line(&a, "#1f77b4"));
    s.push_str(&line(&p, "#d62728"));
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"40\" fill=\"#1f77b4\">ack</text>\
         <text x=\"{:.1}\" y=\"40\" fill=\"#d62728\">push</text>\n</svg>",
        w - m - 80.0,
        w - m - 40.0
    );
    s
}

// --- The run ------------------------------------------------------------------

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
        args.source_addresses >= 1,
        "--source-addresses must be at least 1"
    );
    if let Some(rate) = args.rate {
        ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
    }
    // Every submission connection comes from 127.0.0.1 (`NodeClient` binds
    // no local address); the node is started allowing this many per source
    // address (`--connections-per-source`), and drops more during their
    // TLS handshake.
    ensure!(
        args.talks * args.in_flight <= SUBMIT_CONNECTIONS,
        "--talks x --in-flight is {}, above the {SUBMIT_CONNECTIONS} connections the node \
         allows one source address (every submission connection comes from 127.0.0.1)",
        args.talks * args.in_flight
    );
    let (nofile, _) = raise_nofile();
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
    let ed25519 = ed25519_per_second();
    let fsync = fsyncs_per_second(&dir.path)?;
    eprintln!("bench: {ed25519:.0} Ed25519 verifications/s, {fsync:.0} fsyncs/s");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(timed(&args, &nodes, &creator, ed25519, fsync, nofile))?;
    drop(nodes);
    if let Some(file) = &args.svg {
        let (ack, push, end) = &report.1;
        let title = format!(
            "{} {}, {} talks x {} devices",
            report.0.backend, report.0.mode, report.0.talks, report.0.devices
        );
        std::fs::write(file, svg(ack, push, *end, &title))
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

async fn timed(
    args: &LoadArgs,
    nodes: &[NodeProcess],
    creator: &SecretKey,
    ed25519: f64,
    fsync: f64,
    nofile: Option<u64>,
) -> anyhow::Result<(Report, (Samples, Samples, Duration))> {
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
        let (addr, fingerprint, devices) = (node.addr, node.fingerprint, args.devices);
        tasks.spawn(async move {
            (
                k,
                set_up_talks(addr, fingerprint, &creator, devices, per_sender).await,
            )
        });
    }
    let mut all = Vec::new();
    while let Some(t) = tasks.join_next().await {
        let (k, talks) = t.context("a set-up task")?;
        all.push((k, talks?));
    }
    // In talks order: talks k's sender is on node k mod nodes.
    all.sort_by_key(|(k, _)| *k);
    eprintln!(
        "bench: {} talks set up, {} envelopes pre-built per sender, in {:.1} s",
        all.len(),
        per_sender,
        setup.elapsed().as_secs_f64()
    );

    let end = Duration::from_secs_f64(args.duration);
    // The streams open and catch up on the set-up's envelopes first; t0,
    // the start of the timed phase, leaves them time for that.
    let t0 = Instant::now() + Duration::from_secs(3) + Duration::from_millis(50 * all.len() as u64);
    let run = Arc::new(Run {
        t0,
        end,
        exhausted: AtomicBool::new(false),
        errors: AtomicU64::new(0),
        first_errors: Mutex::new(Vec::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let mut senders = Vec::new();
    let mut streams = tokio::task::JoinSet::new();
    let mut receivers = Vec::new();
    let mut n_streams = 0u32;
    for (k, t) in all {
        let n = t.envelopes.len();
        let sender = Arc::new(Sender {
            talks: t.talks,
            client: t.sender,
            envelopes: t.envelopes,
            index: t.index,
            next: AtomicUsize::new(0),
            start: (0..n).map(|_| AtomicU64::new(0)).collect(),
            acked: AtomicU64::new(0),
        });
        for (j, key) in t.recipients.iter().enumerate() {
            let source = IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                2 + ((k + j) % usize::from(args.source_addresses)) as u8,
            ));
            let received = Arc::new(AtomicU64::new(0));
            receivers.push((Arc::clone(&sender), Arc::clone(&received)));
            // Another node than the sender's, where there is one.
            let node = &nodes[(k + j + 1) % nodes.len()];
            streams.spawn(recipient(
                Arc::clone(&run),
                Arc::clone(&sender),
                NodeClient::new(node.addr, node.fingerprint, key)?,
                node.addr,
                source,
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
        () = tokio::time::sleep_until(t0.into()) => {
            bail!("the delivery streams did not catch up within the set-up's grace period");
        }
        Some(r) = streams.join_next() => {
            r??;
            bail!("a delivery stream ended before the timed phase");
        }
    }
    // Warm-up: each sender's first `--in-flight` envelopes, at once, so
    // its connections (TLS handshakes) are open before t0; not counted.
    let mut warm = tokio::task::JoinSet::new();
    for sender in &senders {
        let warm_up = args.in_flight.min(sender.envelopes.len());
        sender.next.store(warm_up, Ordering::Relaxed);
        for i in 0..warm_up {
            let sender = Arc::clone(sender);
            sender.start[i].store(WARM_UP, Ordering::Release);
            warm.spawn(async move {
                let (h, b) = &sender.envelopes[i];
                sender.client.submit(sender.talks, h, b).await.map(|_| ())
            });
        }
    }
    while let Some(w) = warm.join_next().await {
        w.context("a warm-up task")?
            .context("a warm-up submission")?;
    }
    ensure!(
        Instant::now() < t0,
        "the set-up's grace period ran out before the warm-up ended"
    );
    let node_pids: Vec<String> = nodes.iter().map(|n| n.child.id().to_string()).collect();
    let nodes_cpu = || -> anyhow::Result<f64> { node_pids.iter().map(|p| cpu_seconds(p)).sum() };
    tokio::time::sleep_until(t0.into()).await;
    let node_cpu0 = nodes_cpu()?;
    let self_cpu0 = cpu_seconds("self")?;

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
    let mut ack = Samples::new();
    while let Some(w) = workers.join_next().await {
        ack.extend(w.context("a sender task")?);
    }
    // The phase lasts until the last answer came (closed loop: the last
    // submissions begun before the end; open loop: the last scheduled).
    let elapsed = Duration::from_nanos(run.now());
    let node_cpu = nodes_cpu()? - node_cpu0;
    let self_cpu = cpu_seconds("self")? - self_cpu0;
    // Timed phase over (the last acknowledgement in); the pushes still on
    // their way get up to 5 s.
    let drain = Instant::now();
    while drain.elapsed() < Duration::from_secs(5)
        && receivers
            .iter()
            .any(|(s, r)| r.load(Ordering::Relaxed) < s.acked.load(Ordering::Relaxed))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut push = Samples::new();
    while let Some(s) = streams.join_next().await {
        match s.context("a stream task")? {
            Ok(samples) => push.extend(samples),
            Err(e) => run.error(format!("stream: {e:#}")),
        }
    }
    let push_missing = receivers
        .iter()
        .map(|(s, r)| {
            s.acked
                .load(Ordering::Relaxed)
                .saturating_sub(r.load(Ordering::Relaxed))
        })
        .sum();
    let acknowledged: u64 = senders
        .iter()
        .map(|s| s.acked.load(Ordering::Relaxed))
        .sum();
    let duration_s = elapsed.as_secs_f64();
    let throughput = acknowledged as f64 / duration_s;
    let exhausted = run.exhausted.load(Ordering::Relaxed);
    let errors = run.errors.load(Ordering::Relaxed);
    let first_errors = run
        .first_errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
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
        ack: latency(&ack),
        push: latency(&push),
        push_missing,
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
        submit_source_addresses: 1,
    };
    Ok((report, (ack, push, elapsed)))
}
