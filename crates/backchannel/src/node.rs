//! `backchannel node …`: set up, administer and run a mediator node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use backchannel_crypto::{SecretKey, Signer as _};
use backchannel_keyfile::{KeyFile, KeyKind};
use backchannel_node::admin::{self, Exposure};
use backchannel_node::net::{self, Listener as _, ServeError, Transport};
use backchannel_node::server::{Node, NodeConfig};
use backchannel_node::tls::{self, Identity};
use backchannel_store::Store;
use backchannel_store_postgres::{PostgresOptions, PostgresStore};
use backchannel_store_sqlite::{SqliteOptions, SqliteStore};
use backchannel_tlog::NodeOrigin;
use rand_core::OsRng;
use serde::Serialize;

use crate::cli::{CreatorsAddArgs, CreatorsCommand, InfoArgs, InitArgs, NodeCommand, RunArgs};
use crate::node_dir::{
    self, CERT_NAME, CONFIG, CONFIG_VERSION, CREATORS, Config, DATABASE, LOG_KEY, NodeDir,
    TLS_CERT, TLS_KEY,
};
use crate::passphrase;
use crate::system::{SystemClock, TcpListener};

/// How long, once the node has stopped serving (its connections drain for
/// `Limits::shutdown_grace` after a shutdown signal), the database may take
/// to finish the transactions in progress before the process exits anyway
/// (anything not committed by then was never acknowledged, so nothing
/// acknowledged is lost).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs one `node` command.
pub fn main(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Init(args) => init(args),
        NodeCommand::Creators(CreatorsCommand::Add(args)) => creators_add(args),
        NodeCommand::Run(args) => run(args),
        NodeCommand::Info(args) => info(args),
    }
}

/// What `init` and `info` print.
#[derive(Debug, Serialize)]
struct Summary {
    dir: PathBuf,
    origin: String,
    /// The TLS certificate's SHA-256, hex: what clients pin.
    fingerprint: String,
    /// The log key, hex: what clients verify checkpoints with.
    log_key: String,
    creators: usize,
}

impl Summary {
    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
        } else {
            println!("dir          {}", self.dir.display());
            println!("origin       {}", self.origin);
            println!("fingerprint  {}", self.fingerprint);
            println!("log key      {}", self.log_key);
            println!("creators     {}", self.creators);
        }
        Ok(())
    }
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let dir = NodeDir::new(&args.dir.dir);
    let origin = NodeOrigin::new(&args.origin).map_err(|e| {
        anyhow!(
            "--origin {:?} is not a node origin: {e} (for example node.example.org)",
            args.origin
        )
    })?;
    let passphrase = passphrase::resolve(&args.passphrase)?;
    refuse_to_overwrite(&dir, args.force)?;
    create_dir(&dir)?;

    let log_key = SecretKey::generate(&mut OsRng);
    let tls_key = SecretKey::generate(&mut OsRng);
    let identity = Identity::self_signed(&tls_key, CERT_NAME)
        .map_err(|e| anyhow!("cannot make the node's TLS certificate: {e}"))?;
    let log_public = log_key.public_key();
    // Key kinds without a talks id: `new` cannot refuse them.
    KeyFile::new(KeyKind::Log, None, log_key)?.write(
        &dir.path(LOG_KEY),
        &passphrase,
        args.force,
    )?;
    KeyFile::new(KeyKind::NodeTls, None, tls_key)?.write(
        &dir.path(TLS_KEY),
        &passphrase,
        args.force,
    )?;
    node_dir::write_atomic(
        &dir.path(TLS_CERT),
        identity.certificate().as_ref(),
        args.force,
    )?;
    dir.create_creators()?;
    let config = Config {
        version: CONFIG_VERSION,
        origin: origin.as_str().to_owned(),
        log_key: hex::encode(log_public.as_bytes()),
    };
    // Last: a directory holds a node exactly when it holds node.json.
    dir.write_config(&config, args.force)?;

    if !args.json {
        println!("created a node in {}", dir.root().display());
    }
    Summary {
        dir: dir.root().to_owned(),
        origin: config.origin,
        fingerprint: identity.fingerprint().to_hex(),
        log_key: config.log_key,
        creators: dir.creators()?.len(),
    }
    .print(args.json)?;
    if !args.json {
        println!(
            "next: allow a key to open talks with `backchannel node creators add --dir {} <KEY>`, \
             then start the node with `backchannel node run --dir {}`",
            dir.root().display(),
            dir.root().display()
        );
    }
    Ok(())
}

/// Refuses to replace a node without `force`, and even with it a node whose
/// database holds logs signed by its current log key.
fn refuse_to_overwrite(dir: &NodeDir, force: bool) -> anyhow::Result<()> {
    let database = dir.path(DATABASE);
    if database.exists() {
        bail!(
            "{} holds a database whose logs are signed with this node's log key; a new key would \
             make every checkpoint in it unverifiable. To start a new node, use another --dir \
             (or move the database away first)",
            database.display()
        );
    }
    if force {
        return Ok(());
    }
    for name in [CONFIG, LOG_KEY, TLS_KEY, TLS_CERT] {
        if dir.path(name).exists() {
            bail!(
                "{} already holds a node ({name} exists); pass --force to replace its keys \
                 (its log key and TLS fingerprint then change, and clients that pinned the old \
                 fingerprint refuse it), or choose another --dir",
                dir.root().display()
            );
        }
    }
    Ok(())
}

/// Creates the node directory, readable by its owner only (it holds the
/// key files and the database).
fn create_dir(dir: &NodeDir) -> anyhow::Result<()> {
    let root = dir.root();
    if root.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(root).map_err(|e| {
        anyhow!(
            "cannot create the node directory {}: {e}; check the path and its parent's \
             permissions",
            root.display()
        )
    })
}

fn creators_add(args: CreatorsAddArgs) -> anyhow::Result<()> {
    let dir = NodeDir::new(&args.dir.dir);
    let key = node_dir::parse_key(args.key.trim()).map_err(|e| {
        anyhow!("{e}; give the 64 hex digits of the Ed25519 public key of the talks' creator")
    })?;
    // Only to check that the directory holds a node.
    dir.config()?;
    let added = dir.add_creator(&key)?;
    let key = hex::encode(key.as_bytes());
    if args.json {
        #[derive(Serialize)]
        struct Added<'a> {
            key: &'a str,
            added: bool,
        }
        println!("{}", serde_json::to_string(&Added { key: &key, added })?);
    } else if added {
        println!(
            "added {key} to {}; a running node reads it on its next start",
            dir.path(CREATORS).display()
        );
    } else {
        println!("{key} is already a creator; nothing changed");
    }
    Ok(())
}

fn info(args: InfoArgs) -> anyhow::Result<()> {
    let dir = NodeDir::new(&args.dir.dir);
    let (config, _, _) = dir.config()?;
    Summary {
        dir: dir.root().to_owned(),
        origin: config.origin,
        fingerprint: dir.fingerprint()?.to_hex(),
        log_key: config.log_key,
        creators: dir.creators()?.len(),
    }
    .print(args.json)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    // Cheapest checks first: nothing is opened for a command that cannot run.
    if args.danger_plain_http && !args.listen.ip().is_loopback() {
        return Err(ServeError::PlainHttpNotLoopback(args.listen).into());
    }
    let exposure = if args.admin_listen_public {
        Exposure::Public
    } else {
        Exposure::LoopbackOnly
    };
    if let Some(addr) = args.admin_listen {
        admin::check_exposure(addr, exposure)?;
    }
    let limits = args.limits.resolve();
    let dir = NodeDir::new(&args.dir.dir);
    let database = database(&dir, args.database.as_deref())?;
    let (_, origin, log_public) = dir.config()?;
    let creators = dir.creators()?;
    let passphrase = passphrase::resolve(&args.passphrase)?;
    let log_key = dir.open_log_key(&passphrase, &log_public)?;
    let identity = dir.open_identity(&passphrase)?;
    drop(passphrase);

    let transport = if args.danger_plain_http {
        warn_plain_http();
        Transport::DangerPlainHttp
    } else {
        let config =
            tls::server_config(&identity).map_err(|e| anyhow!("cannot configure TLS: {e}"))?;
        Transport::Tls(Arc::new(config))
    };
    let started = Started {
        listening: args.listen,
        fingerprint: identity.fingerprint().to_hex(),
        admin: args.admin_listen.map(|addr| (addr, exposure)),
        json: args.json,
    };
    let config = NodeConfig {
        origin,
        log_key: Arc::new(log_key),
        creators,
        limits,
        clock: Arc::new(SystemClock),
        instance: {
            let mut id = [0u8; 16];
            rand_core::RngCore::fill_bytes(&mut OsRng, &mut id);
            id
        },
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(serve(database, transport, config, started));
    // Tasks still running (connections cut at the end of the shutdown
    // grace, the sequencer) end here; every acknowledged envelope is
    // already durable.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

/// The `listening on …` line, printed once the socket is bound, and the
/// `admin listening on …` line after it when there is an admin listener.
struct Started {
    listening: SocketAddr,
    fingerprint: String,
    /// The admin listener's address (the bound one once bound), and where
    /// it may be.
    admin: Option<(SocketAddr, Exposure)>,
    json: bool,
}

async fn serve(
    database: Database,
    transport: Transport,
    config: NodeConfig,
    started: Started,
) -> anyhow::Result<()> {
    // Before the socket opens, so a signal sent as soon as the line below
    // is read is caught.
    let signals = Signals::new()?;
    match database {
        Database::Sqlite(path) => {
            let store = SqliteStore::open(&path, SqliteOptions::default())
                .await
                .map_err(|e| {
                    anyhow!(
                        "{e} ({}); check the path given to --database and its directory's \
                         permissions",
                        path.display()
                    )
                })?;
            let store = Arc::new(store);
            let outcome = serve_on(Arc::clone(&store), signals, transport, config, started).await;
            finish(outcome, store.close()).await
        }
        Database::Postgres(url) => {
            // The URL may hold a password: it is never printed.
            let store = PostgresStore::open(&url, PostgresOptions::default())
                .await
                .map_err(|e| {
                    anyhow!(
                        "{e}; check the URL given to --database \
                         (postgres://USER@HOST:PORT/DATABASE) and that the server is up"
                    )
                })?;
            let store = Arc::new(store);
            let outcome = serve_on(Arc::clone(&store), signals, transport, config, started).await;
            finish(outcome, store.close()).await
        }
    }
}

/// Serves `store` until a shutdown signal (or a failure to serve); `None`
/// when a second signal cut connections short.
async fn serve_on<S: Store>(
    store: Arc<S>,
    mut signals: Signals,
    transport: Transport,
    config: NodeConfig,
    mut started: Started,
) -> anyhow::Result<Option<Result<(), ServeError>>> {
    let creators = config.creators.len();
    let node = Node::new(Arc::clone(&store), config);
    let api_node = Arc::clone(&node);
    let listener = TcpListener::bind(started.listening).await.map_err(|e| {
        anyhow!(
            "cannot listen on {}: {e}; choose another address with --listen, or stop the \
             process using it",
            started.listening
        )
    })?;
    started.listening = listener
        .local_addr()
        .context("reading the listening address")?;
    let admin_listener = match started.admin {
        Some((addr, exposure)) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                anyhow!(
                    "cannot listen on {addr} for the admin listener: {e}; choose another address \
                     with --admin-listen, or stop the process using it"
                )
            })?;
            let bound = listener
                .local_addr()
                .context("reading the admin listening address")?;
            started.admin = Some((bound, exposure));
            Some((listener, exposure))
        }
        None => None,
    };
    started.print()?;
    tracing::info!(creators, "the node is serving");

    // The admin listener runs until the API listener has drained (so that
    // `/readyz` answers 503 meanwhile), then stops.
    let (stop_admin, admin_stopping) = tokio::sync::oneshot::channel::<()>();
    let admin = admin_listener.map(|(listener, exposure)| {
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            let stopping = async {
                let _ = admin_stopping.await;
            };
            if let Err(e) = admin::serve(listener, exposure, node, stopping).await {
                tracing::error!(error = %e, "the admin listener stopped");
            }
        })
    });

    // The first signal starts a graceful shutdown: no new connections,
    // requests in progress finish, streams close with 1001, for at most the
    // node's `shutdown_grace`. A second signal stops waiting for them.
    let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
    // Boxed, so that it can be dropped (cutting what is still open) before
    // the database closes.
    let mut serving = Box::pin(net::serve(listener, transport, api_node, async {
        // Sent on the first signal.
        let _ = stopping.await;
    }));
    let first = tokio::select! {
        r = serving.as_mut() => Err(r),
        signal = signals.recv() => Ok(signal),
    };
    let outcome = match first {
        Err(r) => Some(r),
        Ok(signal) => {
            tracing::info!(
                "{signal} received; shutting down once requests in progress finish (send it \
                 again to stop at once)"
            );
            let _ = stop.send(());
            tokio::select! {
                r = serving.as_mut() => Some(r),
                signal = signals.recv() => {
                    tracing::warn!(
                        "{signal} received again; stopping without waiting for connections"
                    );
                    None
                }
            }
        }
    };
    // After a second signal, this cuts whatever is still open; nothing
    // acknowledged depends on it: every acknowledged envelope is durable.
    drop(serving);
    if let Some(admin) = admin {
        if outcome.is_some() {
            // Its requests in progress finish (it waits at most
            // `ADMIN_TIMEOUT` for them).
            let _ = stop_admin.send(());
            let _ = admin.await;
        } else {
            admin.abort();
        }
    }
    Ok(outcome)
}

/// Closes the database once serving is over, letting transactions in
/// progress finish (later ones fail and are retried by their clients
/// against the restarted node), then reports how serving ended.
async fn finish(
    outcome: anyhow::Result<Option<Result<(), ServeError>>>,
    close: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if tokio::time::timeout(SHUTDOWN_GRACE, close).await.is_err() {
        tracing::warn!("the database did not close in time; exiting anyway");
    }
    tracing::info!("the node has stopped");
    match outcome? {
        Some(Err(e)) => Err(anyhow!("the node could not serve: {e}")),
        Some(Ok(())) | None => Ok(()),
    }
}

impl Started {
    fn print(&self) -> anyhow::Result<()> {
        use std::io::Write as _;
        if self.json {
            #[derive(Serialize)]
            struct Line<'a> {
                listening: String,
                fingerprint: &'a str,
            }
            #[derive(Serialize)]
            struct AdminLine {
                admin_listening: String,
            }
            let line = Line {
                listening: self.listening.to_string(),
                fingerprint: &self.fingerprint,
            };
            println!("{}", serde_json::to_string(&line)?);
            if let Some((admin, _)) = self.admin {
                let line = AdminLine {
                    admin_listening: admin.to_string(),
                };
                println!("{}", serde_json::to_string(&line)?);
            }
        } else {
            println!(
                "listening on {} fingerprint {}",
                self.listening, self.fingerprint
            );
            if let Some((admin, _)) = self.admin {
                println!("admin listening on {admin}");
            }
        }
        // stdout is a pipe when a script reads this line: send it now.
        std::io::stdout().flush().context("writing to stdout")
    }
}

/// Where the node stores (`--database`).
#[derive(PartialEq, Eq)]
enum Database {
    /// A SQLite file (the default: `<DIR>/node.db`).
    Sqlite(PathBuf),
    /// A PostgreSQL database, by its URL as given (it may hold a password,
    /// so it is never printed).
    Postgres(String),
}

/// Never shows a PostgreSQL URL, which may hold a password.
impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(_) => f.write_str("Postgres(…)"),
        }
    }
}

/// The database `--database` names: `sqlite:<path>`,
/// `postgres://…` (or `postgresql://…`), or by default `<DIR>/node.db`.
fn database(dir: &NodeDir, url: Option<&str>) -> anyhow::Result<Database> {
    let Some(url) = url else {
        return Ok(Database::Sqlite(dir.path(DATABASE)));
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Database::Postgres(url.to_owned()));
    }
    let path = url
        .strip_prefix("sqlite:")
        .map(|p| p.strip_prefix("//").unwrap_or(p))
        .ok_or_else(|| {
            anyhow!(
                "--database takes sqlite:<path> or postgres://USER@HOST:PORT/DATABASE; \
                 what was given is neither"
            )
        })?;
    if path.is_empty() {
        bail!("--database {url:?} names no file; give sqlite:<path>");
    }
    Ok(Database::Sqlite(PathBuf::from(path)))
}

fn warn_plain_http() {
    eprintln!(
        "\n\
         !!! DANGER: --danger-plain-http: serving WITHOUT TLS.                            !!!\n\
         !!! Requests name their key in a header and nothing proves it: anyone who can   !!!\n\
         !!! reach this port can act as any key. For local debugging only, never for     !!!\n\
         !!! talks that matter.                                                          !!!\n"
    );
    tracing::warn!("serving plain HTTP without TLS (--danger-plain-http): keys are unproven");
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts catching the signals (from now on they no longer kill the
    /// process).
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let catch =
                |kind| signal(kind).map_err(|e| anyhow!("cannot catch shutdown signals: {e}"));
            Ok(Self {
                interrupt: catch(SignalKind::interrupt())?,
                terminate: catch(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The name of the next signal.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                // Cannot listen for Ctrl-C: never stop on a signal.
                Err(_) => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn database_urls() {
        let dir = NodeDir::new(Path::new("/n"));
        let check = |url: Option<&str>| database(&dir, url).ok();
        let sqlite = |p: &str| Some(Database::Sqlite(PathBuf::from(p)));
        assert_eq!(check(None), sqlite("/n/node.db"));
        assert_eq!(check(Some("sqlite:x.db")), sqlite("x.db"));
        assert_eq!(check(Some("sqlite:///a/x.db")), sqlite("/a/x.db"));
        assert_eq!(check(Some("sqlite:")), None);
        assert_eq!(
            check(Some("postgres://h/db")),
            Some(Database::Postgres("postgres://h/db".into()))
        );
        assert_eq!(
            check(Some("postgresql://u:p@h:5432/db")),
            Some(Database::Postgres("postgresql://u:p@h:5432/db".into()))
        );
        assert_eq!(check(Some("mysql://h/db")), None);
        assert_eq!(check(Some("x.db")), None);
    }

    /// The failover budget (`backchannel_node::lease`) counts on the
    /// PostgreSQL backend dropping a paused writer's locks this soon.
    #[test]
    fn the_postgresql_idle_timeout_is_the_budgets() {
        assert_eq!(
            backchannel_store_postgres::DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT,
            backchannel_node::lease::MAX_PAUSED_TRANSACTION
        );
        assert_eq!(
            PostgresOptions::default().idle_in_transaction_timeout,
            backchannel_node::lease::MAX_PAUSED_TRANSACTION
        );
    }
}
