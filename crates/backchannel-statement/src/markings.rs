//! Markings: what every statement says about how it may be handled.

use backchannel_codec::{Decode, DecodeError, Encode, Reader, Writer, check_strictly_sorted};

use crate::text::check_string;

/// The most handling labels one statement may carry.
pub const MAX_LABELS: usize = 16;
/// The longest free label (a national marking such as "SECRET//NOFORN").
pub const MAX_LABEL_BYTES: usize = 64;

/// What the mediator may do with a statement addressed to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Conveyance {
    /// For the mediator only; nothing of it may be conveyed.
    MediatorOnly = 1,
    /// Its substance may be conveyed, in the mediator's words.
    SubstanceMayBeConveyed = 2,
    /// It may be conveyed verbatim, the author's signature intact.
    VerbatimMayBeConveyed = 3,
}

/// A handling label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HandlingLabel {
    /// "Without prejudice": may not be used against the author later.
    WithoutPrejudice,
    /// "Subject to contract": not binding until the contract is signed.
    SubjectToContract,
    /// "Mediation privileged".
    MediationPrivileged,
    /// Any other label, e.g. a national classification marking.
    Free(String),
}

/// Whether a statement is a formal position or exploratory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attribution {
    /// A formal position of the party.
    Formal = 1,
    /// Exploratory: floated, not committed to.
    Exploratory = 2,
}

/// The markings carried inside every statement's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markings {
    /// Conveyance permission.
    pub conveyance: Conveyance,
    /// Handling labels, sorted and unique (see [`Markings::new`]).
    labels: Vec<HandlingLabel>,
    /// Formal or exploratory.
    pub attribution: Attribution,
    /// Whether each recipient must acknowledge receipt.
    pub receipt_required: bool,
    /// A response is requested by this time (Unix ms, UTC).
    pub respond_by: Option<u64>,
    /// The statement lapses at this time (Unix ms, UTC).
    pub valid_until: Option<u64>,
}

/// Why markings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarkingsError {
    /// More labels than [`MAX_LABELS`].
    #[error("at most {MAX_LABELS} handling labels")]
    TooManyLabels,
    /// A free label is empty, too long, or not clean text.
    #[error("a free label must be 1 to {MAX_LABEL_BYTES} bytes of clean NFC text")]
    BadFreeLabel,
}

impl Markings {
    /// Markings with labels sorted and deduplicated.
    pub fn new(
        conveyance: Conveyance,
        mut labels: Vec<HandlingLabel>,
        attribution: Attribution,
    ) -> Result<Self, MarkingsError> {
        labels.sort();
        labels.dedup();
        if labels.len() > MAX_LABELS {
            return Err(MarkingsError::TooManyLabels);
        }
        for l in &labels {
            if let HandlingLabel::Free(s) = l
                && (s.is_empty()
                    || s.len() > MAX_LABEL_BYTES
                    || check_string(s).is_err()
                    || s.contains('\n'))
            {
                return Err(MarkingsError::BadFreeLabel);
            }
        }
        Ok(Self {
            conveyance,
            labels,
            attribution,
            receipt_required: false,
            respond_by: None,
            valid_until: None,
        })
    }

    /// The most restrictive default: mediator only, formal, no labels.
    pub fn mediator_only() -> Self {
        Self {
            conveyance: Conveyance::MediatorOnly,
            labels: Vec::new(),
            attribution: Attribution::Formal,
            receipt_required: false,
            respond_by: None,
            valid_until: None,
        }
    }

    /// The handling labels, sorted.
    pub fn labels(&self) -> &[HandlingLabel] {
        &self.labels
    }
}

impl Encode for HandlingLabel {
    fn encode(&self, w: &mut Writer) {
        match self {
            HandlingLabel::WithoutPrejudice => w.u8(1),
            HandlingLabel::SubjectToContract => w.u8(2),
            HandlingLabel::MediationPrivileged => w.u8(3),
            HandlingLabel::Free(s) => {
                w.u8(0xff);
                w.text(s);
            }
        }
    }
}

impl Decode for HandlingLabel {
    const MIN_LEN: usize = 1;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8("handling label")? {
            1 => HandlingLabel::WithoutPrejudice,
            2 => HandlingLabel::SubjectToContract,
            3 => HandlingLabel::MediationPrivileged,
            0xff => HandlingLabel::Free(r.text("free label", MAX_LABEL_BYTES)?.to_owned()),
            v => {
                return Err(DecodeError::UnknownValue {
                    field: "handling label",
                    value: u64::from(v),
                });
            }
        })
    }
}

impl Encode for Markings {
    fn encode(&self, w: &mut Writer) {
        w.u8(self.conveyance as u8);
        w.list(&self.labels);
        w.u8(self.attribution as u8);
        w.bool(self.receipt_required);
        w.option(self.respond_by.as_ref());
        w.option(self.valid_until.as_ref());
    }
}

impl Decode for Markings {
    const MIN_LEN: usize = 9;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let conveyance = match r.u8("conveyance")? {
            1 => Conveyance::MediatorOnly,
            2 => Conveyance::SubstanceMayBeConveyed,
            3 => Conveyance::VerbatimMayBeConveyed,
            v => {
                return Err(DecodeError::UnknownValue {
                    field: "conveyance",
                    value: u64::from(v),
                });
            }
        };
        let labels: Vec<HandlingLabel> = r.list("handling labels", MAX_LABELS)?;
        check_strictly_sorted(&labels, "handling labels", |l| l.clone())?;
        let attribution = match r.u8("attribution")? {
            1 => Attribution::Formal,
            2 => Attribution::Exploratory,
            v => {
                return Err(DecodeError::UnknownValue {
                    field: "attribution",
                    value: u64::from(v),
                });
            }
        };
        let receipt_required = r.bool("receipt required")?;
        let respond_by = r.option("respond by")?;
        let valid_until = r.option("valid until")?;
        let mut m =
            Markings::new(conveyance, labels, attribution).map_err(|_| DecodeError::Invalid {
                field: "handling labels",
                reason: "bad free label",
            })?;
        m.receipt_required = receipt_required;
        m.respond_by = respond_by;
        m.valid_until = valid_until;
        Ok(m)
    }
}
