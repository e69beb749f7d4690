//! The Backchannel client library.
//!
//! Every front end (the `backchannel` CLI, a future graphical client) is a
//! thin layer over this crate, so none re-implements crypto, verification
//! or replay. Its parts:
//! - [`follow`]: the sans-IO log follower — verifies each new checkpoint
//!   from the leaf data it is served, re-hashed into the compact tree it
//!   keeps; accounts for every leaf of the client's rooms; decides what it
//!   may cosign.
//! - [`store`]: the client's storage trait (everything is persisted through
//!   it; backends encrypt at rest).
//! - [`net`]: the node's API over pinned TLS with the client's key, typed
//!   after `docs/api.md`, and the delivery stream.
//! - [`safety`]: the talks safety code and each party's verification state.
//! - [`seal`]: the application message a room's MLS group encrypts
//!   (statement, talk, copy, attachment) and the commitment it opens.
//! - [`session`]: one device's session in one talks — receive into a
//!   verified archive (MLS messages processed in log order), verify the
//!   log, cosign.
//! - [`rooms`]: sending through the room's MLS group, and keeping each
//!   group in step with the access list (key packages, creation, adds and
//!   removes, copies for newcomers, leaf updates, rejoins).
//! - [`attachment`]: files encrypted under a key that travels only in the
//!   room's group.
//! - [`handover`]: history bundles a member hands a successor, sealed to
//!   the successor's devices and verified against the log's commitments.
//! - [`fork`]: forks — finality by cosignature, comparison, offline evidence.
//! - [`participant`]: what a home remembers of each talks (pinned node,
//!   who the participant is, every other party's verification state), the
//!   invitation document and the enrolment payload, sealed to the mediator.
//! - [`recovery`]: the recovery sheet (a member's identity key as 24
//!   words to print) and reading it back.
//! - [`restore`]: moving a home onto a new device key (restore, recovery):
//!   everything but the MLS state, which is never restored.
//!
//! IO only at one edge: [`net`] opens sockets (through reqwest and
//! hyper-util; [`net::NodeClient::stream_over`] takes any byte stream, for
//! a simulator). Storage is a trait ([`store::ClientStore`]); time and
//! randomness are parameters.

pub mod attachment;
pub mod follow;
pub mod fork;
/// Fuzz entry points (`fuzz/fuzz_targets/`, and `tests/fuzz_corpus.rs`).
#[doc(hidden)]
pub mod fuzz;
pub mod handover;
pub mod net;
pub mod participant;
pub mod recovery;
pub mod restore;
pub mod rooms;
pub mod safety;
pub mod seal;
pub mod session;
pub mod store;
