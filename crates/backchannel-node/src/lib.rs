//! The Backchannel mediator node.
//!
//! The node is an untrusted sequencer: it authenticates, orders, stores,
//! fans out, keeps time and proves its logs, and it never holds a key that
//! decrypts content. This version holds its parts below the HTTP surface:
//! - [`tls`]: TLS 1.3 with a self-signed server certificate that clients
//!   pin, and client authentication by per-talks device keys;
//! - [`submit`]: validation of one envelope, cheapest check first, with one
//!   Ed25519 verification per envelope;
//! - [`sequencer`]: group commit — concurrent submissions share one durable
//!   transaction and one receipt signature;
//! - [`integrate`]: integration of sequenced leaves into the talks' tree and
//!   a signed checkpoint, off the request path, fenced against a second
//!   integrator.

pub mod integrate;
pub mod sequencer;
pub mod submit;
pub mod tls;
