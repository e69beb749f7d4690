//! What people say in rooms, and what the mediator does with it: messages
//! (with their agenda item and, for a released message, its draft),
//! conveyances (verbatim, re-drafted, non-paper, recorded), formal
//! receipts, commit failures and joint-session consents.
//!
//! Layout (`docs/formats.md` § 5, Messages and conveyances):
//!
//! ```text
//! item           = text (1..=64 bytes, one line)
//! message        = option<item> text:text(≤ 64 KiB) option<release> reply_to:option<StatementId>
//! release        = draft:StatementId draft_hash:[32] drafter:PrincipalId
//! conveyance     = 0x01 verbatim | 0x02 redrafted | 0x03 non-paper | 0x04 recorded
//! verbatim       = origin_room:RoomId seq:u64 node_time:u64 header:bytes(≤ 1 KiB)
//!                  salt:[32] statement:bytes(≤ 192 KiB) body_hash:[32] tree_size:u64
//!                  proof:list<[32]>(≤ 64)
//! redrafted      = about:PartyId option<item> text
//! non-paper      = option<item> text
//! recorded       = by:PartyId at:u64 option<item> text
//! receipt        = kind:u8 (0x01 received | 0x02 conveyed-to) statement:StatementId hash:[32]
//!                  room:RoomId seq:u64
//! commit-failure = room:RoomId seq:u64 epoch:u64 reason:text(≤ 1 KiB)
//! session-consent= room:RoomId opens:u64 closes:u64
//! ```
//!
//! Texts are clean NFC ([`check_string`]). This crate checks structure
//! only; who may say, release, convey, receipt or consent to what, in which
//! room, is decided in `backchannel-core` against the roster.

use backchannel_codec::{
    Decode, DecodeError, Encode, PartyId, PrincipalId, Reader, RoomId, StatementId, Writer,
};
use backchannel_crypto::Digest;
use thiserror::Error;

use crate::text::check_string;

/// The longest agenda item name.
pub const MAX_ITEM_BYTES: usize = 64;
/// The longest text of a message or conveyance.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// The longest signed header a verbatim conveyance carries.
pub const MAX_CONVEYED_HEADER: usize = 1024;
/// The largest original statement a verbatim conveyance carries; a larger
/// one is conveyed re-drafted or as an attachment.
pub const MAX_CONVEYED_STATEMENT: usize = 192 * 1024;
/// The most hashes of an inclusion proof (a tree of 2^64 leaves needs 64).
pub const MAX_PROOF_HASHES: usize = 64;
/// The longest commit-failure reason.
pub const MAX_FAILURE_REASON: usize = 1024;

/// Why a message part was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MessageError {
    /// An agenda item is empty, too long, spans lines or is not clean text.
    #[error("an agenda item is 1 to {MAX_ITEM_BYTES} bytes of clean NFC text on one line")]
    Item,
    /// A text is over its limit or not clean NFC text.
    #[error("a text is at most {max} bytes of clean NFC text")]
    Text {
        /// The limit.
        max: usize,
    },
    /// A verbatim conveyance's original is over its limit.
    #[error(
        "the original is over {MAX_CONVEYED_STATEMENT} bytes: convey it re-drafted or attach it"
    )]
    TooLarge,
    /// A joint session that closes before it opens.
    #[error("a joint session must close after it opens")]
    Window,
}

fn text_ok(s: &str, max: usize) -> Result<(), MessageError> {
    if s.len() > max || check_string(s).is_err() {
        return Err(MessageError::Text { max });
    }
    Ok(())
}

fn invalid(field: &'static str, e: MessageError) -> DecodeError {
    DecodeError::Invalid {
        field,
        reason: match e {
            MessageError::Item => "bad agenda item",
            MessageError::Text { .. } => "bad text",
            MessageError::TooLarge => "original too large",
            MessageError::Window => "closes before it opens",
        },
    }
}

/// An agenda item's name ("detainees", "shipping"): what `read --item`
/// threads across rooms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgendaItem(String);

impl AgendaItem {
    /// The item, if `s` is 1 to [`MAX_ITEM_BYTES`] bytes of clean NFC text
    /// on one line with no tab.
    pub fn new(s: impl Into<String>) -> Result<Self, MessageError> {
        let s = s.into();
        if s.is_empty()
            || s.len() > MAX_ITEM_BYTES
            || s.contains(['\n', '\t'])
            || check_string(&s).is_err()
        {
            return Err(MessageError::Item);
        }
        Ok(Self(s))
    }

    /// Its name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Encode for AgendaItem {
    fn encode(&self, w: &mut Writer) {
        w.text(&self.0);
    }
}

impl Decode for AgendaItem {
    const MIN_LEN: usize = 5;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let s = r.text("agenda item", MAX_ITEM_BYTES)?;
        AgendaItem::new(s).map_err(|e| invalid("agenda item", e))
    }
}

fn read_text<'a>(
    r: &mut Reader<'a>,
    field: &'static str,
    max: usize,
) -> Result<&'a str, DecodeError> {
    let s = r.text(field, max)?;
    text_ok(s, max).map_err(|e| invalid(field, e))?;
    Ok(s)
}

/// Where a released message came from: the draft a member posted to its
/// party-internal room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// The draft's statement id.
    pub draft: StatementId,
    /// SHA-256 of the draft's signed bytes.
    pub draft_hash: Digest,
    /// Who drafted it.
    pub drafter: PrincipalId,
}

impl Encode for Release {
    fn encode(&self, w: &mut Writer) {
        self.draft.encode(w);
        self.draft_hash.encode(w);
        self.drafter.encode(w);
    }
}

impl Decode for Release {
    const MIN_LEN: usize = 64;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            draft: StatementId::decode(r)?,
            draft_hash: Digest::decode(r)?,
            drafter: PrincipalId::decode(r)?,
        })
    }
}

/// A member's words in a room, signed with its identity key for its party.
/// In a party-internal room it may be a draft; elsewhere, where the roster
/// makes the party's messages need release, it must carry the [`Release`]
/// of a draft and be signed by a member the release rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The agenda item it speaks to.
    pub item: Option<AgendaItem>,
    text: String,
    /// The draft it releases, if released.
    pub release: Option<Release>,
    /// The statement it answers, if any (what `pending` counts as a response).
    pub reply_to: Option<StatementId>,
}

impl Message {
    /// A message; `text` is at most [`MAX_TEXT_BYTES`] of clean NFC text.
    pub fn new(
        item: Option<AgendaItem>,
        text: impl Into<String>,
        release: Option<Release>,
    ) -> Result<Self, MessageError> {
        let text = text.into();
        text_ok(&text, MAX_TEXT_BYTES)?;
        Ok(Self {
            item,
            text,
            release,
            reply_to: None,
        })
    }

    /// The words.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl Encode for Message {
    fn encode(&self, w: &mut Writer) {
        w.option(self.item.as_ref());
        w.text(&self.text);
        w.option(self.release.as_ref());
        w.option(self.reply_to.as_ref());
    }
}

impl Decode for Message {
    const MIN_LEN: usize = 6;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let item = r.option("agenda item")?;
        let text = read_text(r, "message text", MAX_TEXT_BYTES)?.to_owned();
        let release = r.option("release")?;
        let reply_to = r.option("reply to")?;
        Ok(Self {
            item,
            text,
            release,
            reply_to,
        })
    }
}

/// The evidence a verbatim conveyance carries: the original as its author
/// posted it, where, and proof that the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verbatim {
    /// The room the original was posted to.
    pub origin_room: RoomId,
    /// Its seq.
    pub seq: u64,
    /// The node's timestamp for it.
    pub node_time: u64,
    /// The signed envelope header logged at `seq` (its commitment opens to
    /// the statement with `salt`).
    header: Vec<u8>,
    /// The commitment salt.
    pub salt: [u8; 32],
    /// The original signed statement, canonical bytes.
    statement: Vec<u8>,
    /// SHA-256 of the envelope's body as logged.
    pub body_hash: Digest,
    /// The tree size the proof is for.
    pub tree_size: u64,
    /// The inclusion proof of the leaf at `seq` in that tree.
    pub proof: Vec<Digest>,
}

impl Verbatim {
    /// The evidence for a verbatim conveyance.
    #[allow(clippy::too_many_arguments)] // The evidence has this many parts.
    pub fn new(
        origin_room: RoomId,
        seq: u64,
        node_time: u64,
        header: Vec<u8>,
        salt: [u8; 32],
        statement: Vec<u8>,
        body_hash: Digest,
        tree_size: u64,
        proof: Vec<Digest>,
    ) -> Result<Self, MessageError> {
        if statement.len() > MAX_CONVEYED_STATEMENT
            || header.len() > MAX_CONVEYED_HEADER
            || proof.len() > MAX_PROOF_HASHES
        {
            return Err(MessageError::TooLarge);
        }
        Ok(Self {
            origin_room,
            seq,
            node_time,
            header,
            salt,
            statement,
            body_hash,
            tree_size,
            proof,
        })
    }

    /// The signed header bytes.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// The original statement's bytes.
    pub fn statement(&self) -> &[u8] {
        &self.statement
    }
}

/// What a mediator conveys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conveyed {
    /// The original, its author's signature intact.
    Verbatim(Verbatim),
    /// The mediator's rendering of a party's position, in its own words.
    Redrafted {
        /// Whose position.
        about: PartyId,
        /// The agenda item.
        item: Option<AgendaItem>,
        /// The mediator's text.
        text: String,
    },
    /// An unattributed text the mediator puts to a room as its own draft.
    NonPaper {
        /// The agenda item.
        item: Option<AgendaItem>,
        /// The text.
        text: String,
    },
    /// An act that happened off the system, recorded by the signer; never
    /// shown as the party's own act.
    Recorded {
        /// The party that acted.
        by: PartyId,
        /// When, as the recorder states it (Unix ms, UTC).
        at: u64,
        /// The agenda item.
        item: Option<AgendaItem>,
        /// What happened ("conveyed orally: …").
        text: String,
    },
}

impl Conveyed {
    /// Checks the texts.
    pub fn check(&self) -> Result<(), MessageError> {
        match self {
            Conveyed::Verbatim(v) => {
                if v.statement.len() > MAX_CONVEYED_STATEMENT
                    || v.header.len() > MAX_CONVEYED_HEADER
                    || v.proof.len() > MAX_PROOF_HASHES
                {
                    return Err(MessageError::TooLarge);
                }
                Ok(())
            }
            Conveyed::Redrafted { text, .. }
            | Conveyed::NonPaper { text, .. }
            | Conveyed::Recorded { text, .. } => text_ok(text, MAX_TEXT_BYTES),
        }
    }

    /// The mode's name: "verbatim", "re-drafted", "non-paper", "recorded".
    pub fn mode(&self) -> &'static str {
        match self {
            Conveyed::Verbatim(_) => "verbatim",
            Conveyed::Redrafted { .. } => "re-drafted",
            Conveyed::NonPaper { .. } => "non-paper",
            Conveyed::Recorded { .. } => "recorded",
        }
    }

    /// The agenda item, where the conveyance names one itself (a verbatim
    /// conveyance's item is its original's).
    pub fn item(&self) -> Option<&AgendaItem> {
        match self {
            Conveyed::Verbatim(_) => None,
            Conveyed::Redrafted { item, .. }
            | Conveyed::NonPaper { item, .. }
            | Conveyed::Recorded { item, .. } => item.as_ref(),
        }
    }
}

impl Encode for Conveyed {
    fn encode(&self, w: &mut Writer) {
        match self {
            Conveyed::Verbatim(v) => {
                w.u8(1);
                v.origin_room.encode(w);
                w.u64(v.seq);
                w.u64(v.node_time);
                w.bytes(&v.header);
                w.raw(&v.salt);
                w.bytes(&v.statement);
                v.body_hash.encode(w);
                w.u64(v.tree_size);
                w.list(&v.proof);
            }
            Conveyed::Redrafted { about, item, text } => {
                w.u8(2);
                about.encode(w);
                w.option(item.as_ref());
                w.text(text);
            }
            Conveyed::NonPaper { item, text } => {
                w.u8(3);
                w.option(item.as_ref());
                w.text(text);
            }
            Conveyed::Recorded { by, at, item, text } => {
                w.u8(4);
                by.encode(w);
                w.u64(*at);
                w.option(item.as_ref());
                w.text(text);
            }
        }
    }
}

impl Decode for Conveyed {
    const MIN_LEN: usize = 6;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8("conveyance mode")? {
            1 => {
                let origin_room = RoomId::decode(r)?;
                let seq = r.u64("seq")?;
                let node_time = r.u64("node time")?;
                let header = r.bytes("conveyed header", MAX_CONVEYED_HEADER)?.to_vec();
                let salt = r.array("salt")?;
                let statement = r
                    .bytes("conveyed statement", MAX_CONVEYED_STATEMENT)?
                    .to_vec();
                let body_hash = Digest::decode(r)?;
                let tree_size = r.u64("tree size")?;
                let proof = r.list("inclusion proof", MAX_PROOF_HASHES)?;
                Conveyed::Verbatim(Verbatim {
                    origin_room,
                    seq,
                    node_time,
                    header,
                    salt,
                    statement,
                    body_hash,
                    tree_size,
                    proof,
                })
            }
            2 => Conveyed::Redrafted {
                about: PartyId::decode(r)?,
                item: r.option("agenda item")?,
                text: read_text(r, "re-drafted text", MAX_TEXT_BYTES)?.to_owned(),
            },
            3 => Conveyed::NonPaper {
                item: r.option("agenda item")?,
                text: read_text(r, "non-paper text", MAX_TEXT_BYTES)?.to_owned(),
            },
            4 => Conveyed::Recorded {
                by: PartyId::decode(r)?,
                at: r.u64("recorded at")?,
                item: r.option("agenda item")?,
                text: read_text(r, "recorded text", MAX_TEXT_BYTES)?.to_owned(),
            },
            v => {
                return Err(DecodeError::UnknownValue {
                    field: "conveyance mode",
                    value: u64::from(v),
                });
            }
        })
    }
}

/// What a receipt acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReceiptKind {
    /// The signer's party formally received the statement in `room` at
    /// `seq` (for statements marked `receipt-required`).
    Received = 1,
    /// The signing mediator conveyed the statement verbatim: the
    /// conveyance is at `seq` in `room`. Posted to the origin room, so the
    /// author sees where its words went and can check the seq in the log.
    ConveyedTo = 2,
}

crate::roles::u8_enum_codec!(
    ReceiptKind,
    "receipt kind",
    [ReceiptKind::Received, ReceiptKind::ConveyedTo]
);

/// A formal receipt: a party's of a statement marked `receipt-required`,
/// or a mediator's record of a verbatim conveyance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// What it acknowledges.
    pub kind: ReceiptKind,
    /// The statement received or conveyed.
    pub statement: StatementId,
    /// SHA-256 of its signed bytes.
    pub hash: Digest,
    /// The room it was received in, or conveyed to.
    pub room: RoomId,
    /// Its seq there, or the conveyance's.
    pub seq: u64,
}

impl Encode for Receipt {
    fn encode(&self, w: &mut Writer) {
        self.kind.encode(w);
        self.statement.encode(w);
        self.hash.encode(w);
        self.room.encode(w);
        w.u64(self.seq);
    }
}

impl Decode for Receipt {
    const MIN_LEN: usize = 73;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            kind: ReceiptKind::decode(r)?,
            statement: StatementId::decode(r)?,
            hash: Digest::decode(r)?,
            room: RoomId::decode(r)?,
            seq: r.u64("seq")?,
        })
    }
}

/// A member's statement that it could not process the commit sequenced at
/// `seq` in `room` (RFC 9420 §14 rule f) and rejoins by external commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitFailure {
    /// The room.
    pub room: RoomId,
    /// The commit's seq.
    pub seq: u64,
    /// The epoch the commit was for.
    pub epoch: u64,
    reason: String,
}

impl CommitFailure {
    /// A commit failure; `reason` is at most [`MAX_FAILURE_REASON`] bytes.
    pub fn new(
        room: RoomId,
        seq: u64,
        epoch: u64,
        reason: impl Into<String>,
    ) -> Result<Self, MessageError> {
        let reason = reason.into();
        text_ok(&reason, MAX_FAILURE_REASON)?;
        Ok(Self {
            room,
            seq,
            epoch,
            reason,
        })
    }

    /// Why the commit could not be processed.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl Encode for CommitFailure {
    fn encode(&self, w: &mut Writer) {
        self.room.encode(w);
        w.u64(self.seq);
        w.u64(self.epoch);
        w.text(&self.reason);
    }
}

impl Decode for CommitFailure {
    const MIN_LEN: usize = 36;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            room: RoomId::decode(r)?,
            seq: r.u64("seq")?,
            epoch: r.u64("epoch")?,
            reason: read_text(r, "commit failure reason", MAX_FAILURE_REASON)?.to_owned(),
        })
    }
}

/// A party's consent to a time-boxed joint session in a plenary room: the
/// session is open only while every party with a member in the room has
/// consented to a window covering the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConsent {
    /// The plenary room.
    pub room: RoomId,
    /// From (Unix ms, UTC).
    pub opens: u64,
    /// Until (Unix ms, UTC), after `opens`.
    pub closes: u64,
}

impl SessionConsent {
    /// A consent, if the window is not empty.
    pub fn new(room: RoomId, opens: u64, closes: u64) -> Result<Self, MessageError> {
        if closes <= opens {
            return Err(MessageError::Window);
        }
        Ok(Self {
            room,
            opens,
            closes,
        })
    }
}

impl Encode for SessionConsent {
    fn encode(&self, w: &mut Writer) {
        self.room.encode(w);
        w.u64(self.opens);
        w.u64(self.closes);
    }
}

impl Decode for SessionConsent {
    const MIN_LEN: usize = 32;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let room = RoomId::decode(r)?;
        let opens = r.u64("opens")?;
        let closes = r.u64("closes")?;
        SessionConsent::new(room, opens, closes).map_err(|e| invalid("session consent", e))
    }
}
