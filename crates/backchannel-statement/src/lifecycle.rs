//! The talks lifecycle: suspension, resumption, conclusion and closing.
//!
//! Layout (`docs/formats.md` § 5, Lifecycle change):
//!
//! ```text
//! lifecycle = phase:u8 reason:text
//! ```
//!
//! `phase`: `0x01` suspended, `0x02` resumed, `0x03` concluded, `0x04`
//! closed; any other value is refused. `reason`: at most
//! [`MAX_REASON_BYTES`] bytes of clean NFC text ([`check_string`]) with no
//! control character but line feed (so no tab either); may be empty. Who
//! may make which change, and in which phase, is decided by replay in
//! `backchannel-core`.

use backchannel_codec::{Decode, DecodeError, Encode, Reader, Writer};
use thiserror::Error;

use crate::roles::u8_enum_codec;
use crate::text::{TextError, check_string};

/// The most bytes a lifecycle change's reason may hold.
pub const MAX_REASON_BYTES: usize = 1024;

/// The change a lifecycle statement makes to the talks' phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LifecyclePhase {
    /// A party suspends the talks (open → suspended).
    Suspended = 1,
    /// The suspending party or the mediator team resumes them (suspended → open).
    Resumed = 2,
    /// The mediator team concludes them (open or suspended → concluded).
    Concluded = 3,
    /// The mediator team closes them (concluded → closed).
    Closed = 4,
}

u8_enum_codec!(
    LifecyclePhase,
    "lifecycle phase",
    [
        LifecyclePhase::Suspended,
        LifecyclePhase::Resumed,
        LifecyclePhase::Concluded,
        LifecyclePhase::Closed,
    ]
);

impl LifecyclePhase {
    /// Every change of this version.
    pub const ALL: [LifecyclePhase; 4] = [
        LifecyclePhase::Suspended,
        LifecyclePhase::Resumed,
        LifecyclePhase::Concluded,
        LifecyclePhase::Closed,
    ];

    /// The change's name, as messages and the docs spell it.
    pub const fn name(self) -> &'static str {
        match self {
            LifecyclePhase::Suspended => "suspended",
            LifecyclePhase::Resumed => "resumed",
            LifecyclePhase::Concluded => "concluded",
            LifecyclePhase::Closed => "closed",
        }
    }
}

/// Why a lifecycle change was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LifecycleError {
    /// The reason is over [`MAX_REASON_BYTES`].
    #[error("a lifecycle reason is at most {MAX_REASON_BYTES} bytes")]
    ReasonTooLong,
    /// The reason is not clean NFC text, or holds a control character other
    /// than line feed.
    #[error("a lifecycle reason must be clean NFC text: {0}")]
    ReasonText(TextError),
}

/// A change of the talks' phase, with a reason in prose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleChange {
    /// The change.
    pub phase: LifecyclePhase,
    /// Why; checked by [`LifecycleChange::new`].
    reason: String,
}

impl LifecycleChange {
    /// A change; `reason` must be at most [`MAX_REASON_BYTES`] bytes of
    /// clean NFC text with no control character but line feed. It may be
    /// empty.
    pub fn new(phase: LifecyclePhase, reason: impl Into<String>) -> Result<Self, LifecycleError> {
        let reason = reason.into();
        check_reason(&reason)?;
        Ok(Self { phase, reason })
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

fn check_reason(s: &str) -> Result<(), LifecycleError> {
    if s.len() > MAX_REASON_BYTES {
        return Err(LifecycleError::ReasonTooLong);
    }
    check_string(s).map_err(LifecycleError::ReasonText)?;
    // `check_string` lets tab through; a reason is prose, one paragraph per line.
    if s.contains('\t') {
        return Err(LifecycleError::ReasonText(TextError::ControlCharacter(
            u32::from('\t'),
        )));
    }
    Ok(())
}

impl Encode for LifecycleChange {
    fn encode(&self, w: &mut Writer) {
        self.phase.encode(w);
        w.text(&self.reason);
    }
}

impl Decode for LifecycleChange {
    const MIN_LEN: usize = 1 + 4;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let phase = LifecyclePhase::decode(r)?;
        let reason = r.text("lifecycle reason", MAX_REASON_BYTES)?;
        Self::new(phase, reason).map_err(|e| DecodeError::Invalid {
            field: "lifecycle reason",
            reason: match e {
                LifecycleError::ReasonTooLong => "too long",
                LifecycleError::ReasonText(TextError::NotNfc) => "not NFC",
                LifecycleError::ReasonText(TextError::BidiControl(_)) => "bidi control character",
                LifecycleError::ReasonText(_) => "control character",
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_clean_text() {
        let ok = |s: &str| LifecycleChange::new(LifecyclePhase::Suspended, s).is_ok();
        assert!(ok(""));
        assert!(ok("Consultations in capitals.\nBack on Monday."));
        assert!(ok(&"x".repeat(MAX_REASON_BYTES)));
        assert!(!ok(&"x".repeat(MAX_REASON_BYTES + 1)));
        assert!(!ok("tab\there"));
        assert!(!ok("bell\u{7}"));
        assert!(!ok("cr\r\n"));
        assert!(!ok("e\u{301}"));
        assert!(!ok("\u{202E}desrever"));
    }
}
