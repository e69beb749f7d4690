//! The command line, as parsed: raw values, resolved by each command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use backchannel_node::limits::Limits;
use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// The environment variable holding the passphrase of the node's key files.
pub const NODE_PASSPHRASE_ENV: &str = "BACKCHANNEL_NODE_PASSPHRASE";

/// The environment variable holding the passphrase of the participant's
/// home.
pub const HOME_PASSPHRASE_ENV: &str = "BACKCHANNEL_PASSPHRASE";

/// The longest an invitation's token stays valid, in hours: a year.
pub const MAX_INVITATION_HOURS: u64 = 24 * 365;

/// The exit codes, at the end of the participant commands' `--help`.
pub const EXIT_CODES: &str = "Exit codes: 0 success; 1 the command failed (the reason, and what to \
                          do next, on stderr); 2 the arguments were not understood; 3 evidence \
                          against the node was found (named, with its seq, on stderr).";

/// Confidential, mediated negotiation.
#[derive(Debug, Parser)]
#[command(name = "backchannel", version, propagate_version = true)]
pub struct Cli {
    /// Which log lines to print on stderr: a level (error, warn, info,
    /// debug, trace) or a RUST_LOG-style list (info,backchannel_node=debug).
    #[arg(
        long,
        global = true,
        env = "BACKCHANNEL_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub log_level: String,

    /// The participant's home directory (made by `backchannel home init`):
    /// the encrypted store of their keys and talks.
    #[arg(long, global = true, env = "BACKCHANNEL_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up and run a mediator node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Measure a local node under load (`docs/performance.md`).
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
    /// Work with talks logs offline.
    #[command(subcommand)]
    Log(LogCommand),
    /// Check evidence offline.
    #[command(subcommand)]
    Evidence(EvidenceCommand),
    /// Replay the reference scenario (Oman mediating between the United
    /// States and Iran) on a fresh local node, and print what happened.
    Demo(DemoArgs),
    /// Set up the participant's home: one encrypted store for their keys
    /// and talks.
    #[command(subcommand, after_help = EXIT_CODES)]
    Home(HomeCommand),
    /// Generate and list the participant's keys, kept in their home.
    #[command(subcommand, after_help = EXIT_CODES)]
    Keys(KeysCommand),
    /// Open, join, accept and verify talks.
    #[command(subcommand, after_help = EXIT_CODES)]
    Talks(TalksCommand),
    /// Manage your party's members (needs your party's talks authority:
    /// the home that joined the talks).
    #[command(subcommand, after_help = EXIT_CODES)]
    Members(MembersCommand),
    /// Revoke and list your devices.
    #[command(subcommand, after_help = EXIT_CODES)]
    Device(crate::device::DeviceCommand),
    /// Hand the history of your rooms to a successor (or your other
    /// devices), sealed to their devices and verified against the log; or
    /// list the handovers you received (--list).
    #[command(after_help = EXIT_CODES)]
    Handover(crate::handover::HandoverArgs),
    /// Share files with your rooms through the node's blob store.
    #[command(subcommand)]
    Blob(crate::blob::BlobCommand),
    /// Send talk to one room of the talks.
    #[command(after_help = EXIT_CODES)]
    Send(SendArgs),
    /// Post a signed message to one of your rooms (a draft, in your
    /// party's internal room), with its markings, audience and agenda item.
    #[command(after_help = EXIT_CODES)]
    Message(crate::say::MessageArgs),
    /// Release a draft from your party's internal room to another room,
    /// naming its drafter (your role must allow releasing).
    #[command(after_help = EXIT_CODES)]
    Release(crate::say::ReleaseArgs),
    /// Mediator: convey a message verbatim (with its evidence), re-drafted,
    /// as a non-paper, or record an act that happened off the system.
    #[command(after_help = EXIT_CODES)]
    Convey(crate::say::ConveyArgs),
    /// Post your party's formal receipt of a statement marked
    /// receipt-required.
    #[command(after_help = EXIT_CODES)]
    Receipt(crate::say::ReceiptArgs),
    /// List, per room, what awaits whose receipt, response or release, and
    /// by when.
    #[command(after_help = EXIT_CODES)]
    Pending(crate::say::PendingArgs),
    /// Fetch what is new, verify and archive it, and print it (with
    /// --all, the whole archive).
    #[command(after_help = EXIT_CODES)]
    Read(ReadArgs),
    /// Print envelopes as they arrive on the node's event stream, verifying
    /// and archiving each; verify and cosign every new checkpoint.
    #[command(after_help = EXIT_CODES)]
    Follow(FollowArgs),
}

/// `backchannel home …`.
#[derive(Debug, Subcommand)]
pub enum HomeCommand {
    /// Create the home (--home or BACKCHANNEL_HOME): the directory, mode
    /// 0700, and its encrypted store `home.db`. Refuses an existing home.
    #[command(after_help = EXIT_CODES)]
    Init(HomeInitArgs),
    /// Write a backup of the home: one consistent copy of its store,
    /// sealed under the home's passphrase (keys, archive, checkpoints).
    /// Says what a restore could not bring back.
    #[command(after_help = EXIT_CODES)]
    Backup(crate::restore::HomeBackupArgs),
    /// Make a new home (--home) from a backup, on a new device key per
    /// talks: everything but the MLS state, which is never restored. Writes
    /// the requests your talks-authority home seats (`device seat`).
    #[command(after_help = EXIT_CODES)]
    Restore(crate::restore::HomeRestoreArgs),
}

/// Where the passphrase of the participant's home comes from.
#[derive(Debug, Args)]
pub struct HomePassphraseArgs {
    /// Read the passphrase of the home from this file (one trailing newline
    /// is ignored). Without it, the passphrase is read from the environment
    /// variable BACKCHANNEL_PASSPHRASE.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// `backchannel home init`.
#[derive(Debug, Args)]
pub struct HomeInitArgs {
    /// The passphrase.
    #[command(flatten)]
    pub passphrase: HomePassphraseArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `backchannel keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate an Ed25519 key, keep its secret in the home, and print its
    /// public key and key id.
    #[command(after_help = EXIT_CODES)]
    Generate(KeysGenerateArgs),
    /// List the keys in the home (never their secrets).
    #[command(after_help = EXIT_CODES)]
    List(KeysListArgs),
    /// Print one key's public key, hex: for a node operator's creators file
    /// or a mediator.
    #[command(after_help = EXIT_CODES)]
    ExportPublic(KeysExportPublicArgs),
}

/// What a participant's key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum KeyKindArg {
    /// A party's long-term authority key (no talks).
    Authority,
    /// A party's authority key for one talks (needs --talks).
    TalksAuthority,
    /// A member's identity key in one talks (needs --talks).
    Identity,
    /// One device's key in one talks (needs --talks).
    Device,
}

/// `backchannel keys generate`.
#[derive(Debug, Args)]
pub struct KeysGenerateArgs {
    /// What the key is for.
    #[arg(long, value_enum)]
    pub kind: KeyKindArg,
    /// The talks the key belongs to, 32 hex digits: required for
    /// talks-authority, identity and device keys, refused for authority
    /// keys.
    #[arg(long, value_name = "HEX")]
    pub talks: Option<String>,
    /// The key's name, unique per kind and talks.
    #[arg(long, default_value = "default", value_name = "NAME")]
    pub label: String,
    /// Replace the key already under this kind, talks and label. Its secret
    /// is gone afterwards: whatever it signed or was certified for must be
    /// redone with the new key.
    #[arg(long)]
    pub force: bool,
    /// The passphrase.
    #[command(flatten)]
    pub passphrase: HomePassphraseArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `backchannel keys list`.
#[derive(Debug, Args)]
pub struct KeysListArgs {
    /// The passphrase.
    #[command(flatten)]
    pub passphrase: HomePassphraseArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `backchannel keys export-public`.
#[derive(Debug, Args)]
pub struct KeysExportPublicArgs {
    /// The key's label.
    #[arg(long, value_name = "NAME")]
    pub label: String,
    /// Only a key of this kind (when several share the label).
    #[arg(long, value_enum)]
    pub kind: Option<KeyKindArg>,
    /// Only a key of this talks, 32 hex digits (when several share the
    /// label).
    #[arg(long, value_name = "HEX")]
    pub talks: Option<String>,
    /// The passphrase.
    #[command(flatten)]
    pub passphrase: HomePassphraseArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `backchannel demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's temporary directory (the node's database and the
    /// participants' homes) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// For tests: append these 32 hex digits to every name, title, agenda
    /// item, message and statement text, so the node's files and logs can
    /// be searched for them.
    #[arg(long, hide = true, value_name = "HEX32")]
    pub canary: Option<String>,
    /// For tests: copy every answer the node sends (response bodies and
    /// stream frames, as the demo's clients read them) to this new file.
    #[arg(long, hide = true, value_name = "FILE")]
    pub answers: Option<PathBuf>,
    /// Run the demo's node on this PostgreSQL database
    /// (`postgres://USER@HOST:PORT/DATABASE`) instead of a SQLite file in
    /// the demo's directory. The demo's talks are added to what the
    /// database holds.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Run the demo on this many nodes sharing the --database (1 or 2):
    /// the participants are given every node's address, and with 2 the
    /// first node is stopped midway; the clients fail over to the second,
    /// which takes over integrating the log.
    #[arg(
        long,
        default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(1..=2),
        requires = "database"
    )]
    pub nodes: u8,
}

/// `backchannel node …`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Create a node directory: log key, TLS key and certificate, config,
    /// and an empty creators file.
    Init(InitArgs),
    /// Manage the keys allowed to open talks on this node.
    #[command(subcommand)]
    Creators(CreatorsCommand),
    /// Run the node.
    Run(RunArgs),
    /// Print the node's origin, TLS fingerprint and log key.
    Info(InfoArgs),
}

/// `backchannel node creators …`.
#[derive(Debug, Subcommand)]
pub enum CreatorsCommand {
    /// Allow a key to open talks (nothing changes if it already may).
    Add(CreatorsAddArgs),
}

/// The node directory.
#[derive(Debug, Args)]
pub struct DirArg {
    /// The node directory (made by `backchannel node init`).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// Where the passphrase of the node's key files comes from.
#[derive(Debug, Args)]
pub struct PassphraseArgs {
    /// Read the passphrase of the node's key files from this file (one
    /// trailing newline is ignored). Without it, the passphrase is read
    /// from the environment variable BACKCHANNEL_NODE_PASSPHRASE.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// `backchannel node init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The directory.
    #[command(flatten)]
    pub dir: DirArg,
    /// The node's origin, a host-name-like name for its logs
    /// (`node.example.org`); it prefixes every log origin.
    #[arg(long)]
    pub origin: String,
    /// Replace the keys, certificate and config of an existing node
    /// directory (its creators file is kept). The node's log key and TLS
    /// fingerprint change: clients that pinned the old one refuse it.
    #[arg(long)]
    pub force: bool,
    /// The passphrase.
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `backchannel node creators add`.
#[derive(Debug, Args)]
pub struct CreatorsAddArgs {
    /// The directory.
    #[command(flatten)]
    pub dir: DirArg,
    /// The Ed25519 public key, 64 hex digits.
    #[arg(value_name = "HEX_PUBLIC_KEY")]
    pub key: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `backchannel node info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The directory.
    #[command(flatten)]
    pub dir: DirArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `backchannel node run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The directory.
    #[command(flatten)]
    pub dir: DirArg,
    /// The address to listen on (port 0: any free port; the line printed
    /// on start names the one chosen).
    #[arg(long, default_value = "127.0.0.1:7443", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The database: `sqlite:<path>`, or PostgreSQL as
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DATABASE` [default:
    /// sqlite:<DIR>/node.db]. Prefer a password in `PGPASSWORD` or
    /// `~/.pgpass` to one in the URL, which other users can see in the
    /// process list.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// DANGER: serve plain HTTP without TLS, on a loopback address only.
    /// Requests name their key in a header, unproven: anyone on this
    /// machine can act as any key. For local debugging with curl, never
    /// for talks that matter.
    #[arg(long)]
    pub danger_plain_http: bool,
    /// Also serve `/healthz`, `/readyz` and Prometheus `/metrics` in plain
    /// HTTP (no TLS, no authentication; no talks data) on this address,
    /// for load balancers and monitoring; off when not given. Loopback
    /// addresses only, unless --admin-listen-public. Port 0: any free
    /// port; the `admin listening on` line printed on start names it.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Allow --admin-listen on a non-loopback address. Its answers carry
    /// no ids, but they tell how busy the node is and when: use it only on
    /// an address that just your load balancers and monitoring reach (a
    /// private network, a firewall).
    #[arg(long, requires = "admin_listen")]
    pub admin_listen_public: bool,
    /// The passphrase.
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
    /// Print the start lines as JSON.
    #[arg(long)]
    pub json: bool,
    /// The limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The limits an operator tunes; the defaults are [`Limits::default`].
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Requests per key per second, sustained.
    #[arg(
        long,
        default_value_t = defaults().requests_per_second,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub requests_per_second: u32,
    /// Requests a key may burst above the sustained rate.
    #[arg(long, default_value_t = defaults().request_burst, value_name = "N")]
    pub request_burst: u32,
    /// New connections per source address per second, sustained.
    #[arg(
        long,
        default_value_t = defaults().connections_per_second,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub connections_per_second: u32,
    /// New connections a source address may burst above the sustained rate.
    #[arg(long, default_value_t = defaults().connection_burst, value_name = "N")]
    pub connection_burst: u32,
    /// Open connections in all; more are dropped unread.
    #[arg(
        long,
        default_value_t = defaults().max_connections,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..),
        value_name = "N"
    )]
    pub max_connections: usize,
    /// Open connections from one source address; more are dropped unread.
    #[arg(
        long,
        default_value_t = defaults().connections_per_source,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..),
        value_name = "N"
    )]
    pub connections_per_source: usize,
    /// Open event streams (WebSockets) per key.
    #[arg(
        long,
        default_value_t = defaults().streams_per_key,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..),
        value_name = "N"
    )]
    pub streams_per_key: usize,
    /// The largest blob, in bytes.
    #[arg(
        long,
        default_value_t = defaults().max_blob,
        value_parser = RangedU64ValueParser::<u64>::new().range(1..),
        value_name = "BYTES"
    )]
    pub max_blob_bytes: u64,
    /// Blob bytes each party may store per talks.
    #[arg(
        long,
        default_value_t = defaults().party_blob_quota,
        value_parser = RangedU64ValueParser::<u64>::new().range(1..),
        value_name = "BYTES"
    )]
    pub party_blob_quota_bytes: u64,
    /// How often sequenced envelopes are integrated into the logs and a
    /// checkpoint is signed, in milliseconds (at most 1000: clients hold
    /// the node to merging what it acknowledged within 10 s, failovers
    /// included).
    #[arg(
        long,
        default_value_t = millis(defaults().checkpoint_interval),
        value_parser = RangedU64ValueParser::<u64>::new()
            .range(1..=millis(backchannel_node::lease::MAX_CHECKPOINT_INTERVAL)),
        value_name = "MS"
    )]
    pub checkpoint_interval_ms: u64,
    /// How long a connection may take for its TLS handshake and for each
    /// request head, in milliseconds.
    #[arg(
        long,
        default_value_t = millis(defaults().header_timeout),
        value_parser = RangedU64ValueParser::<u64>::new().range(1..),
        value_name = "MS"
    )]
    pub header_timeout_ms: u64,
    /// How long an event stream may stay silent (not even a pong) before
    /// it is closed, in milliseconds.
    #[arg(
        long,
        default_value_t = millis(defaults().idle_timeout),
        value_parser = RangedU64ValueParser::<u64>::new().range(1..),
        value_name = "MS"
    )]
    pub idle_timeout_ms: u64,
}

impl LimitArgs {
    /// The node's limits: these values over the defaults.
    pub fn resolve(&self) -> Limits {
        Limits {
            requests_per_second: self.requests_per_second,
            request_burst: self.request_burst,
            connections_per_second: self.connections_per_second,
            connection_burst: self.connection_burst,
            max_connections: self.max_connections,
            connections_per_source: self.connections_per_source,
            streams_per_key: self.streams_per_key,
            max_blob: self.max_blob_bytes,
            party_blob_quota: self.party_blob_quota_bytes,
            checkpoint_interval: Duration::from_millis(self.checkpoint_interval_ms),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            ..defaults()
        }
    }
}

fn defaults() -> Limits {
    Limits::default()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Which talks, in the participant's home, and the home's passphrase.
#[derive(Debug, Args)]
pub struct TalksArgs {
    /// The talks id, 32 hex digits (`backchannel talks show` lists them);
    /// may be left out when the home takes part in one talks only.
    #[arg(long, value_name = "HEX")]
    pub talks: Option<String>,
    /// The passphrase.
    #[command(flatten)]
    pub passphrase: HomePassphraseArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--recovery-sheet` of `talks open` and `talks join`, whose home also
/// holds the party's authority keys.
#[derive(Debug, Args)]
pub struct AuthoritySheetArgs {
    /// Also write a recovery sheet of your new identity key here (must not
    /// exist): 24 words to print and keep offline, which re-issue the key
    /// on a new home (`members recover` by whichever home then holds your
    /// party's talks authority, then `members join --from-sheet`). It does
    /// not bring back the authority keys this home also holds.
    #[arg(long, value_name = "FILE")]
    pub recovery_sheet: Option<PathBuf>,
}

/// The node to pin, as its operator's `backchannel node info` prints it.
#[derive(Debug, Args)]
pub struct PinArgs {
    /// The node's address, host:port; for several nodes serving one
    /// database, all of them separated by commas (host:port,host:port):
    /// clients fail over between them.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT…]")]
    pub node: String,
    /// The SHA-256 fingerprint of its TLS certificate, 64 hex digits.
    #[arg(long, value_name = "HEX")]
    pub fingerprint: String,
    /// Its origin.
    #[arg(long)]
    pub origin: String,
    /// Its log key, 64 hex digits.
    #[arg(long, value_name = "HEX")]
    pub log_key: String,
}

/// A member's role, as the CLI spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Head of a delegation.
    Head,
    /// Negotiator.
    Negotiator,
    /// Technical expert.
    Expert,
    /// Legal adviser.
    Legal,
    /// Note-taker.
    NoteTaker,
    /// Interpreter.
    Interpreter,
    /// A principal in the capital.
    Principal,
    /// Lead mediator.
    Lead,
    /// Co-mediator.
    CoMediator,
    /// Mediator staff.
    Staff,
}

/// `backchannel talks …`.
#[derive(Debug, Subcommand)]
pub enum TalksCommand {
    /// Mediator: open new talks on a node (your home's authority key must
    /// be in the node's creators file). Prints the talks id.
    #[command(after_help = EXIT_CODES)]
    Open(TalksOpenArgs),
    /// Mediator: invite a party; writes the invitation to hand over out of
    /// band (it holds a one-time token: keep it secret until used).
    #[command(after_help = EXIT_CODES)]
    Invite(TalksInviteArgs),
    /// Party: join talks with the invitation the mediator handed over,
    /// enrolling your party's talks authority and yourself.
    #[command(after_help = EXIT_CODES)]
    Join(TalksJoinArgs),
    /// Mediator: once every invited party has joined, build the roster,
    /// propose the access-list change that seats every party's devices,
    /// and post the roster and the ground rules to the record room.
    #[command(after_help = EXIT_CODES)]
    Seat(TalksSeatArgs),
    /// Party: check and co-sign the change that seats your devices, wait
    /// until it applies, verify the roster and ground rules against the
    /// node's access list, and accept both.
    #[command(after_help = EXIT_CODES)]
    Accept(TalksAcceptArgs),
    /// Show or replace the node addresses this home uses for the talks
    /// (several nodes serving one database: host:port,host:port). Each
    /// new address must present the pinned certificate, origin and log
    /// key; the pin itself never changes.
    Nodes(TalksNodesArgs),
    /// Record that you compared the talks safety code with another party
    /// over a channel the mediator does not control, and how.
    #[command(after_help = EXIT_CODES)]
    Verify(TalksVerifyArgs),
    /// Show the talks: parties (with how their keys stand), rooms,
    /// acceptances, phase, safety code, log state.
    #[command(after_help = EXIT_CODES)]
    Show(TalksArgs),
    /// Review the access-list changes waiting for your signature and
    /// co-sign those that only seat devices the record certifies for
    /// their party's members, or remove keys.
    #[command(after_help = EXIT_CODES)]
    Cosign(TalksArgs),
    /// Party or mediator (talks authority): consent to a time-boxed joint
    /// session in a plenary room; it opens while every party in the room
    /// has consented to a window covering the time.
    #[command(after_help = EXIT_CODES)]
    Consent(TalksConsentArgs),
    /// Party: suspend the talks (no formal acts and no talk until resumed).
    #[command(after_help = EXIT_CODES)]
    Suspend(TalksPhaseArgs),
    /// The suspending party, or the mediator: resume suspended talks.
    #[command(after_help = EXIT_CODES)]
    Resume(TalksPhaseArgs),
    /// Mediator: conclude the talks (only revocations and closing after).
    #[command(after_help = EXIT_CODES)]
    Conclude(TalksPhaseArgs),
    /// Mediator: close concluded talks (nothing is accepted after).
    #[command(after_help = EXIT_CODES)]
    Close(TalksPhaseArgs),
    /// Pass your party's talks authority to a new holder (a head of
    /// delegation replaced): handed over by the old holder, or re-appointed
    /// by a mediator when the old holder is gone.
    #[command(subcommand)]
    Authority(crate::authority::AuthorityCommand),
}

/// `backchannel talks consent`.
#[derive(Debug, Args)]
pub struct TalksConsentArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The plenary room (its name, words of it, or its id).
    #[arg(long)]
    pub room: String,
    /// How long the session may last ("90m", "2h").
    #[arg(long = "for", value_name = "DURATION")]
    pub for_: String,
    /// Open it this long from now instead of now ("30m").
    #[arg(long = "in", value_name = "DURATION")]
    pub in_: Option<String>,
}

/// `backchannel talks suspend|resume|conclude|close`.
#[derive(Debug, Args)]
pub struct TalksPhaseArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// Why, for the record (signed and logged; every party reads it).
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `backchannel talks open`.
#[derive(Debug, Args)]
pub struct TalksOpenArgs {
    /// The node.
    #[command(flatten)]
    pub pin: PinArgs,
    /// Your team's name ("Sultanate of Oman").
    #[arg(long)]
    pub name: String,
    /// Your own name, as the roster shows it.
    #[arg(long)]
    pub member: String,
    /// Your role.
    #[arg(long, value_enum, default_value = "lead")]
    pub role: RoleArg,
    /// The passphrase.
    #[command(flatten)]
    pub passphrase: HomePassphraseArgs,
    /// The recovery sheet to write, if any.
    #[command(flatten)]
    pub sheet: AuthoritySheetArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `backchannel talks invite`.
#[derive(Debug, Args)]
pub struct TalksInviteArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// Where to write the invitation (must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// How long the token stays valid, in hours.
    #[arg(
        long,
        default_value_t = 72,
        value_parser = RangedU64ValueParser::<u64>::new().range(1..=MAX_INVITATION_HOURS),
        value_name = "HOURS"
    )]
    pub valid_hours: u64,
}

/// `backchannel talks join`.
#[derive(Debug, Args)]
pub struct TalksJoinArgs {
    /// The invitation file the mediator handed over.
    #[arg(long, value_name = "FILE")]
    pub invitation: PathBuf,
    /// Your party's name ("United States").
    #[arg(long)]
    pub name: String,
    /// Your own name, as the roster shows it.
    #[arg(long)]
    pub member: String,
    /// Your role.
    #[arg(long, value_enum, default_value = "head")]
    pub role: RoleArg,
    /// The passphrase.
    #[command(flatten)]
    pub passphrase: HomePassphraseArgs,
    /// The recovery sheet to write, if any.
    #[command(flatten)]
    pub sheet: AuthoritySheetArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `backchannel talks seat`.
#[derive(Debug, Args)]
pub struct TalksSeatArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The IANA time zone of the talks' calendar.
    #[arg(long, default_value = "UTC", value_name = "ZONE")]
    pub time_zone: String,
    /// How long to wait for the parties' co-signatures and for every
    /// device of the record room to be in its MLS group before posting the
    /// roster, in seconds (0: do what can be done now; run again later).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub wait: u64,
    /// Room presets, combined when repeated: `proximity` (each party's
    /// internal room and its caucus with the mediators) and `direct` (each
    /// party's internal room and a plenary of everyone); both add the
    /// mediators' room.
    #[arg(long = "preset", value_enum, default_values_t = [crate::room_plan::Preset::Proximity])]
    pub presets: Vec<crate::room_plan::Preset>,
    /// Declare an expert track (repeatable): each party's experts with the
    /// mediators' staff.
    #[arg(long = "track", value_name = "NAME")]
    pub tracks: Vec<String>,
    /// Declare a letter room for each pair of parties, and let the ground
    /// rules allow sealed letters between them.
    #[arg(long)]
    pub letters: bool,
    /// Declare a private-notes room for each member.
    #[arg(long)]
    pub private_notes: bool,
    /// Parties' messages leave their delegation only when a head or
    /// negotiator releases them (`backchannel release`).
    #[arg(long)]
    pub require_release: bool,
}

/// `backchannel talks accept`.
#[derive(Debug, Args)]
pub struct TalksAcceptArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// How long to wait for the other parties' co-signatures and for the
    /// mediator's roster, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub wait: u64,
}

/// `backchannel talks verify`.
#[derive(Debug, Args)]
pub struct TalksVerifyArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The party you compared codes with: its name, its initials, or its
    /// id (32 hex digits).
    #[arg(long, value_name = "PARTY")]
    pub with: String,
    /// How you compared them ("in person, Muscat").
    #[arg(long, value_name = "HOW")]
    pub via: String,
    /// The code the other party read out (its twelve words): checked
    /// against yours before anything is recorded.
    #[arg(long, value_name = "WORDS")]
    pub code: Option<String>,
}

/// `backchannel talks nodes`.
#[derive(Debug, Args)]
pub struct TalksNodesArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The new address list, in the order to try them
    /// (host:port,host:port); without it, the current list is printed.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT…]")]
    pub set: Option<String>,
}

/// `backchannel members …`.
#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Remove a member of your party: revoke their identity and device
    /// keys in the record (signed by your talks authority) and take their
    /// devices off the access list. What they signed before stays valid;
    /// nothing they sign after is.
    #[command(after_help = EXIT_CODES)]
    Remove(MembersRemoveArgs),
    /// Invite a new member of your party: writes the member invitation to
    /// hand them (they answer with `members join`).
    #[command(after_help = EXIT_CODES)]
    Add(MembersAddArgs),
    /// New member: take the member invitation, make your identity and
    /// device keys in your home, and write the reply to hand back.
    #[command(after_help = EXIT_CODES)]
    Join(MembersJoinArgs),
    /// Admit a new member from their reply: certify them in the record and
    /// propose the change that seats their device (the mediator and the
    /// other parties co-sign it with `talks cosign`). For a member being
    /// recovered: the same identity key (from their recovery sheet) is
    /// only seated; a new one is certified and the old one revoked.
    #[command(after_help = EXIT_CODES)]
    Admit(MembersAdmitArgs),
    /// A member of your party lost every device: write a member invitation
    /// for them again, for the same member (principal, role). They answer
    /// with `members join` (with `--from-sheet` if they kept their
    /// recovery sheet: same identity key; otherwise a new one, which you
    /// certify after your own check), and you admit the reply.
    #[command(after_help = EXIT_CODES)]
    Recover(MembersRecoverArgs),
}

/// `backchannel members recover`.
#[derive(Debug, Args)]
pub struct MembersRecoverArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The member: their name as the record knows it, or their principal
    /// id (32 hex digits).
    #[arg(long)]
    pub member: String,
    /// Where to write the member invitation (must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// When their devices were lost, in UTC (2026-11-30T09:00Z; default
    /// now): once you admit their reply, their earlier keys are revoked as
    /// lost at this time, and what their devices sent from it is flagged.
    #[arg(long, value_name = "UTC")]
    pub lost_at: Option<String>,
}

/// `backchannel members add`.
#[derive(Debug, Args)]
pub struct MembersAddArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The new member's name.
    #[arg(long)]
    pub name: String,
    /// Their role.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Where to write the member invitation (must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `backchannel members join`.
#[derive(Debug, Args)]
pub struct MembersJoinArgs {
    /// The member invitation.
    #[arg(long, value_name = "FILE")]
    pub invitation: PathBuf,
    /// Where to write the reply (must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write a recovery sheet of the new identity key here (must not
    /// exist): 24 words to print and keep offline, which re-issue the key
    /// on a new home if every device is lost (`--from-sheet`).
    #[arg(long, value_name = "FILE", conflicts_with = "from_sheet")]
    pub recovery_sheet: Option<PathBuf>,
    /// Being recovered (`members recover`): take the identity key from
    /// your recovery sheet (the sheet as printed, or its 24 words) instead
    /// of making a new one.
    #[arg(long, value_name = "FILE")]
    pub from_sheet: Option<PathBuf>,
    /// The passphrase.
    #[command(flatten)]
    pub passphrase: HomePassphraseArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `backchannel members admit`.
#[derive(Debug, Args)]
pub struct MembersAdmitArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The new member's reply.
    #[arg(long, value_name = "FILE")]
    pub reply: PathBuf,
}

/// Why a member's keys are revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RevokeReasonArg {
    /// The member left the talks.
    Left,
    /// The member's device was lost.
    Lost,
    /// The member's keys are known or suspected to be compromised.
    Compromised,
}

/// `backchannel members remove`.
#[derive(Debug, Args)]
pub struct MembersRemoveArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The member: their name as the roster lists it, or their principal
    /// id (32 hex digits).
    #[arg(long)]
    pub member: String,
    /// Why.
    #[arg(long, value_enum, default_value = "left")]
    pub reason: RevokeReasonArg,
    /// With --reason lost or compromised: when their keys were lost, in
    /// UTC (2026-11-30T09:00Z; default now). Everything their device sent
    /// from the first seq the node stamped at or after it is flagged in
    /// every view, even before this removal is logged.
    #[arg(long, value_name = "UTC")]
    pub lost_at: Option<String>,
}

/// `backchannel send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// The room: its name as the roster declares it, its first word
    /// ("record", "caucus"), or its id (32 hex digits).
    #[arg(long)]
    pub room: String,
    /// What to say.
    pub text: String,
}

/// `backchannel read`.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// Print the whole archive, not only what is new.
    #[arg(long)]
    pub all: bool,
    /// Only what names this agenda item, across every room you may see
    /// (implies --all).
    #[arg(long, value_name = "ITEM")]
    pub item: Option<String>,
}

/// `backchannel follow`.
#[derive(Debug, Args)]
pub struct FollowArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// Stop after this many new envelopes (default: run until interrupted).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// `backchannel log verify`.
#[derive(Debug, Args)]
pub struct LogVerifyArgs {
    /// Which talks.
    #[command(flatten)]
    pub talks: TalksArgs,
    /// Verify only: do not cosign the verified checkpoint.
    #[arg(long)]
    pub no_cosign: bool,
    /// Also write the checkpoint note verified (as the node signed it) to
    /// this file: what `backchannel log compare` takes, to prove a fork
    /// from two participants' checkpoints.
    #[arg(long, value_name = "FILE")]
    pub save_checkpoint: Option<PathBuf>,
}

/// `backchannel log …`.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Fetch and archive what is new, verify the log from the data tiles,
    /// account for every envelope of your rooms, re-check the archive
    /// against what the node serves now, replay every statement, and
    /// cosign the verified checkpoint. Exit 3 with the seq named on any
    /// evidence against the node.
    #[command(after_help = EXIT_CODES)]
    Verify(LogVerifyArgs),
    /// Prove a fork from two participants' checkpoints of one log: writes
    /// a self-contained evidence file that verifies offline.
    Compare(CompareArgs),
}

/// `backchannel evidence …`.
#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Verify a fork-evidence file offline.
    Verify(VerifyEvidenceArgs),
    /// Export one statement of your archive as an evidence bundle, as the
    /// ground rules allow, over a final checkpoint.
    Export(crate::export::ExportArgs),
    /// Verify a statement's evidence bundle offline.
    VerifyStatement(crate::export::VerifyBundleArgs),
}

/// Which log: the node's log key and origin, and the talks.
#[derive(Debug, Args)]
pub struct LogIdentity {
    /// The node's log key (hex), as `backchannel node info` prints it.
    #[arg(long)]
    pub log_key: String,
    /// The node's origin.
    #[arg(long)]
    pub origin: String,
    /// The talks id (hex).
    #[arg(long)]
    pub talks: String,
}

/// `backchannel log compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Which log.
    #[command(flatten)]
    pub log: LogIdentity,
    /// One participant's checkpoint note (a file).
    #[arg(long)]
    pub checkpoint_a: PathBuf,
    /// The other participant's checkpoint note (a file).
    #[arg(long)]
    pub checkpoint_b: PathBuf,
    /// Where to write the evidence (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `backchannel evidence verify`.
#[derive(Debug, Args)]
pub struct VerifyEvidenceArgs {
    /// Which log.
    #[command(flatten)]
    pub log: LogIdentity,
    /// The evidence file.
    pub file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn limits_default_to_the_nodes_defaults() {
        let cli = Cli::parse_from(["backchannel", "node", "run", "--dir", "d"]);
        let Command::Node(NodeCommand::Run(run)) = cli.command else {
            panic!("parsed as another command");
        };
        let (got, want) = (run.limits.resolve(), Limits::default());
        // `Limits` has no `PartialEq`; its `Debug` shows every field.
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
    }

    #[test]
    fn zero_intervals_and_counts_are_refused() {
        for flag in [
            "--checkpoint-interval-ms",
            "--header-timeout-ms",
            "--max-connections",
            "--streams-per-key",
            "--requests-per-second",
            "--connections-per-second",
        ] {
            let parsed =
                Cli::try_parse_from(["backchannel", "node", "run", "--dir", "d", flag, "0"]);
            assert!(parsed.is_err(), "{flag} 0 was accepted");
        }
    }
}
