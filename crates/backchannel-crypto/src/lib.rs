//! Keys, signatures, hashes and domain separation for Backchannel.
//!
//! Features:
//! - Ed25519 public keys parsed once ([`PublicKey`]): non-canonical encodings
//!   and keys of small order are refused, so no such key can enter a roster,
//!   certificate or access list.
//! - Every signature and every domain-separated hash is made over
//!   `context ‖ message`, where the [`Context`] is one of a fixed,
//!   prefix-free set of strings (`backchannel/v1/…`). A signature made under
//!   one context never verifies under another.
//! - All signing goes through the [`Signer`] trait (key files now, smart
//!   cards later); [`SecretKey`] is the in-memory implementation.
//! - One verification policy, ZIP-215 ([`verify`] and [`BatchVerifier`] accept
//!   exactly the same signatures), so batching can never change a verdict.
//!   A [`VerifyingKey`] keeps a key's point for checking many signatures.
//!
//! Non-features: no IO, no randomness of its own (callers pass an RNG), no
//! other signature algorithm in format version 1.

mod context;
#[doc(hidden)]
pub mod fuzz;
mod hash;
mod keys;

pub use context::Context;
pub use hash::{Digest, Sha256Writer, sha256};
pub use keys::{
    BadKey, BadSignature, BatchVerifier, KEY_ID_CONTEXT, KeyId, PublicKey, SPLIT_FLOOR, SecretKey,
    SignError, Signature, Signer, ToVerify, VerifyingKey, verify, verify_many,
};
