//! The sans-IO core of Backchannel.
//!
//! Features:
//! - [`replay::Replay`]: replays the talks' record, statement by statement
//!   in log order, and decides for each whether its author's key was
//!   certified, entitled and not yet revoked **at that log position** —
//!   whatever time the statement claims;
//! - [`posts`]: release, conveyance and audience rules for what people
//!   say in rooms, and the recipient's check of a verbatim conveyance;
//! - [`evidence::EvidenceBundle`]: one statement opened to an arbiter with
//!   everything needed to verify it offline.
//!
//! Non-features: no IO, no clock (node timestamps come from the log), no
//! randomness. Later issues add agreements, disputes, exchanges, ledgers,
//! blind ranges and the hotline as further replayed state.

pub mod evidence;
pub mod posts;
pub mod replay;

/// Fuzz entry points (`fuzz/fuzz_targets/`, and the corpus test).
#[doc(hidden)]
pub mod fuzz {
    use backchannel_codec::{Decode, Encode};

    use crate::evidence::EvidenceBundle;

    /// An evidence bundle: decode, re-encode, verify against a fixed node.
    pub fn evidence(data: &[u8]) {
        if let Ok(b) = EvidenceBundle::from_canonical_bytes(data) {
            assert_eq!(b.to_canonical_bytes(), data);
            let node = backchannel_tlog::NodeOrigin::new("node.example");
            // A fixed valid key (the Ed25519 base point): verification runs
            // its checks and fails at the checkpoint signature at the latest.
            let mut base = [0x66u8; 32];
            base[0] = 0x58;
            let key = backchannel_crypto::PublicKey::from_bytes(&base);
            if let (Ok(node), Ok(key)) = (node, key) {
                let _ = b.verify(&node, &key, &[]);
            }
        }
    }
}
