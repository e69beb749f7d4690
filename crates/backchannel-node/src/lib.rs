//! The Backchannel mediator node.
//!
//! The node is an untrusted sequencer: it authenticates, orders, stores,
//! fans out, keeps time and proves its logs, and it never holds a key that
//! decrypts content. Its parts:
//! - [`tls`]: TLS 1.3 with a self-signed server certificate that clients
//!   pin, and client authentication by per-talks device keys;
//! - [`net`]: the listener (a parameter), connection limits, and one
//!   [`server::Peer`] key per connection;
//! - [`server`]: the HTTP API — talks, access lists, invitations,
//!   envelopes, blobs — authorised per request against the talks' access
//!   list; [`api`] holds its wire types and error codes;
//! - [`stream`]: WebSocket delivery resuming by seq; [`fanout`] serves
//!   caught-up streams the rows the sequencer just made durable, as frames
//!   encoded once for every recipient; [`wake`] wakes only the streams of
//!   the talks that changed, and polls once per talks, not per stream;
//! - [`logs`]: checkpoints with cosignatures, tiles and proofs;
//! - [`submit`]: validation of one envelope, cheapest check first, with one
//!   Ed25519 verification per envelope;
//! - [`sequencer`]: group commit — concurrent submissions share one durable
//!   transaction and one receipt signature;
//! - [`integrate`]: integration of sequenced leaves into the talks' tree and
//!   a signed checkpoint, off the request path, fenced against a second
//!   integrator;
//! - [`lease`]: the integrator lease — of several nodes on one database,
//!   the one holding it integrates, and every integration is fenced on its
//!   epoch; the merge-delay budget of a failover;
//! - [`limits`]: the named limits and the soft state enforcing rates;
//! - [`admin`]: the admin listener — `/healthz`, `/readyz` and Prometheus
//!   `/metrics`, in plain HTTP on a loopback address, with no id in any
//!   metric.
//!
//! Non-features: no file, clock, randomness or socket of its own — storage,
//! the [`sequencer::Clock`] and the [`net::Listener`] are parameters (the
//! CLI passes real ones, the simulator its own).

pub mod admin;
pub mod api;
pub mod fanout;
pub mod integrate;
pub mod lease;
pub mod limits;
pub mod logs;
pub mod net;
pub mod rooms;
pub mod sequencer;
pub mod server;
pub mod stream;
pub mod submit;
pub mod tls;
pub mod wake;
