//! Signed statements and the formats the node may read.
//!
//! Features:
//! - the statement frame ([`Statement`], [`SignedStatement`],
//!   [`VerifiedStatement`]): one canonical, versioned encoding, signed under
//!   a per-type context `backchannel/v1/statement/<type>`, binding talks,
//!   author, party, audience, the author's latest verified checkpoint,
//!   [`Markings`] and the payload;
//! - payloads of this version: [`Roster`], [`GroundRules`], [`Acceptance`],
//!   [`AccessListChange`], [`DeviceCert`], [`MemberCert`], [`Revoke`],
//!   [`LifecycleChange`], and what people say in rooms: [`Message`],
//!   [`Conveyed`], [`Receipt`], [`CommitFailure`], [`SessionConsent`];
//!   a member's hand-over of room history, [`HistoryShared`]; and the
//!   succession of a party's talks authority, [`AuthorityPassed`];
//! - [`StructuredText`] for prose, with NFC and bidi-control checks and a
//!   [`confusables`] detector;
//! - the [`AccessList`] (the only roster-derived thing the node parses) and
//!   the rule for changing it;
//! - envelope [`Header`]s, body padding to size buckets and [`Commitment`]s.
//!
//! Non-features: no IO, no time source, no randomness of its own. Whether a
//! key was entitled and still valid at a log position is decided by replay
//! in `backchannel-core`; this crate checks signatures and structure only.
//!
//! Every byte is specified in `docs/formats.md`; `test-vectors/` holds
//! known-answer vectors.

pub mod access_list;
pub mod authority;
pub mod certs;
#[cfg(feature = "test-fixtures")]
#[doc(hidden)]
pub mod fixtures;
#[cfg(feature = "test-fixtures")]
#[doc(hidden)]
pub mod fuzz;
pub mod header;
pub mod history;
pub mod invitation;
pub mod lifecycle;
pub mod markings;
pub mod message;
pub mod payload;
pub mod roles;
pub mod roster;
pub mod statement;
pub mod text;

pub use access_list::{
    AccessEntry, AccessList, AccessListChange, AccessListDelta, AccessListError,
};
pub use authority::{AuthorityError, AuthorityPassed, Endorsement, PassedHow};
pub use certs::{DeviceCert, MemberCert, Revoke, RevokeReason};
pub use header::{Commitment, Header, Kind, Salt, Severity, SignedHeader};
pub use history::{HistoryError, HistoryShared};
pub use invitation::{Invitation, InvitationError, InvitationFields, InvitationToken};
pub use lifecycle::{LifecycleChange, LifecycleError, LifecyclePhase};
pub use markings::{Attribution, Conveyance, HandlingLabel, Markings};
pub use message::{
    AgendaItem, CommitFailure, Conveyed, Message, MessageError, Receipt, ReceiptKind, Release,
    SessionConsent, Verbatim,
};
pub use payload::{Acceptance, Payload, StatementType};
pub use roles::{Act, PartyKind, Role};
pub use roster::{GroundRules, Roster, RosterError};
pub use statement::{
    Audience, CheckpointRef, SignedStatement, Statement, VerifiedStatement, VerifyError,
};
pub use text::{StructuredText, confusables};

/// Every signature and hash context this crate defines (for the
/// prefix-freeness test and the formats document).
pub fn contexts() -> Vec<backchannel_crypto::Context> {
    let mut v: Vec<_> = StatementType::ALL.iter().map(|t| t.context()).collect();
    v.extend([
        access_list::ACCESS_LIST_CONTEXT,
        authority::AUTHORITY_PASSED_CONTEXT,
        invitation::INVITATION_CONTEXT,
        header::ENVELOPE_CONTEXT,
        header::COMMITMENT_CONTEXT,
        roster::TALKS_AUTHORITY_CONTEXT,
        roster::ROSTER_MEMBER_CONTEXT,
    ]);
    v
}
