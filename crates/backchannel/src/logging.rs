//! Log lines on stderr, filtered by `--log-level`.
//!
//! stdout is for results (and the `listening on …` line scripts read), so
//! logs never go there. At `info` and above nothing names talks, rooms,
//! keys, peer addresses or user agents (the node's rule, kept here too).

use std::io::IsTerminal;

use anyhow::anyhow;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: `filter` is a level (`info`) or a
/// `RUST_LOG`-style directive list (`info,backchannel_node=debug`).
pub fn init(filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter).map_err(|e| {
        anyhow!(
            "--log-level {filter:?} is not a log filter ({e}); give a level (error, warn, info, \
             debug, trace) or a RUST_LOG-style list such as info,backchannel_node=debug"
        )
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| anyhow!("could not set up logging: {e}"))
}
