//! The Backchannel mediator node.
//!
//! The node is an untrusted sequencer: it authenticates, orders, stores,
//! fans out, keeps time and proves its logs, and it never holds a key that
//! decrypts content. This version holds its transport identity ([`tls`]):
//! TLS 1.3 with a self-signed server certificate that clients pin, and
//! client authentication by per-talks device keys.

pub mod tls;
