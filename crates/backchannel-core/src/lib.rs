//! The sans-IO core of Backchannel.
//!
//! Features:
//! - [`replay::Replay`]: replays the talks' record, statement by statement
//!   in log order, and decides for each whether its author's key was
//!   certified, entitled and not yet revoked **at that log position** —
//!   whatever time the statement claims;
//! - [`evidence::EvidenceBundle`]: one statement opened to an arbiter with
//!   everything needed to verify it offline.
//!
//! Non-features: no IO, no clock (node timestamps come from the log), no
//! randomness. Later issues add agreements, disputes, exchanges, ledgers,
//! blind ranges and the hotline as further replayed state.

pub mod evidence;
pub mod replay;
