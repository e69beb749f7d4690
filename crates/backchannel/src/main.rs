//! The `backchannel` command: sets up and runs a Backchannel mediator node.
//!
//! A thin binary over the libraries, and the edge of the system: the only
//! crate that knows clap, and (with the storage backends) the only one that
//! reads the wall clock, draws OS randomness, opens sockets or opens files.
//! It hands the node real ones ([`system::SystemClock`],
//! [`system::TcpListener`]); the simulator hands it its own.
//!
//! Arguments are parsed into their raw form ([`cli`]), then each command
//! resolves them into what the libraries take ([`node`]; the participant's
//! [`home`] and [`keys`]).
//!
//! Exit codes: `0` success; `1` the command failed (the reason, and what to
//! do next, on stderr); `2` the arguments were not understood; `3` the
//! command ran, and found evidence against the node (`log verify`, `read`,
//! `follow`: a seq named on stderr).

/// mimalloc rather than glibc's malloc: the node allocates and frees
/// many short-lived buffers per request on several threads (frames,
/// bodies, JSON, TLS records), and glibc's malloc was 12.9 % of the
/// node's profile under load (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod authority;
mod bench;
mod blob;
mod cli;
mod demo;
mod device;
mod evidence;
mod export;
mod handover;
mod home;
mod keys;
mod link;
mod logging;
mod members;
mod messages;
mod node;
mod node_dir;
mod participant;
mod passphrase;
mod restore;
mod room_plan;
mod say;
mod system;
mod talks;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    // Usage errors, `--help` and `--version` exit here (code 2 or 0).
    let cli = Cli::parse();
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the whole chain of causes on one line.
            eprintln!("error: {e:#}");
            if e.downcast_ref::<messages::Evidence>().is_some() {
                ExitCode::from(messages::EXIT_EVIDENCE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn try_main(cli: Cli) -> anyhow::Result<()> {
    // The demo prints its own account of what happens; the node's info
    // lines would interleave with it, so it logs warnings unless asked.
    let level = match (&cli.command, cli.log_level.as_str()) {
        (Command::Demo(_), "info") => "warn",
        (_, level) => level,
    };
    logging::init(level)?;
    match cli.command {
        Command::Node(command) => node::main(command),
        Command::Bench(command) => bench::main(command),
        Command::Demo(args) => demo::main(
            args.keep,
            args.canary.as_deref(),
            args.answers.as_deref(),
            args.database.as_deref(),
            args.nodes,
        ),
        Command::Log(cli::LogCommand::Compare(args)) => evidence::compare(args),
        Command::Log(cli::LogCommand::Verify(args)) => messages::verify(cli.home, args),
        Command::Evidence(cli::EvidenceCommand::Verify(args)) => evidence::verify(args),
        Command::Evidence(cli::EvidenceCommand::Export(args)) => export::main(cli.home, args),
        Command::Evidence(cli::EvidenceCommand::VerifyStatement(args)) => {
            export::verify_bundle(args)
        }
        Command::Blob(command) => blob::main(cli.home, command),
        Command::Home(command) => home::main(cli.home, command),
        Command::Keys(command) => keys::main(cli.home, command),
        Command::Talks(command) => talks::main(cli.home, command),
        Command::Members(command) => members::main(cli.home, command),
        Command::Device(command) => device::main(cli.home, command),
        Command::Handover(args) => handover::main(cli.home, args),
        Command::Send(args) => messages::send(cli.home, args),
        Command::Read(args) => messages::read(cli.home, args),
        Command::Message(args) => say::message(cli.home, args),
        Command::Release(args) => say::release(cli.home, args),
        Command::Convey(args) => say::convey(cli.home, args),
        Command::Receipt(args) => say::receipt(cli.home, args),
        Command::Pending(args) => say::pending(cli.home, args),
        Command::Follow(args) => messages::follow(cli.home, args),
    }
}
