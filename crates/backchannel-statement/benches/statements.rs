//! Statement sign and verify: `cargo bench -p backchannel-statement`.
#![allow(missing_docs)] // criterion generates the entry points.
fn main() {}
