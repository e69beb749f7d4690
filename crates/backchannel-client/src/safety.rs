//! The talks safety code: what two parties compare once, over a channel the
//! mediator does not control, so that neither depends on the mediator for
//! the other's keys.
//!
//! ```text
//! code  = SHA-256("backchannel/v1/safety-code" ‖ version:u8 (=1) ‖ talks[16]
//!                 ‖ SHA-256(accepted roster statement) ‖ SHA-256(accepted ground-rules statement)
//!                 ‖ node certificate fingerprint[32] ‖ node log key[32]
//!                 [‖ "passes" ‖ u32 count ‖ count × SHA-256(accepted authority-passed statement)])
//!         the bracketed part only once some party's talks authority has passed
//!         (replay rule 16), in log order; before that the code is unchanged
//! words = the first 132 bits of `code`, 11 bits at a time, as 12 words of
//!         the BIP-39 English list
//! qr    = "backchannel-safety:1:" ‖ hex(code), as a QR code
//! ```
//!
//! The roster carries every party's keys (talks authority, members'
//! identity and device keys), so a mediator that shows one party a
//! substituted key for another gives the two parties different codes.
//!
//! Each party keeps one [`PartyVerification`] per other party: verified
//! (how, when), vouched for by the mediator only, or changed since it was
//! verified (a talks-authority key that changed blocks that party's formal
//! acts until re-verified — enforced by the client).
//!
//! A party's talks authority passing to a new key (handed over or
//! re-appointed) changes the code: the new key now certifies that party's
//! members for everyone. The code is one for the talks, so every
//! verification made before the pass shows as changed, and the parties
//! compare the new code once.

use backchannel_codec::{Decode, DecodeError, Encode, Reader, TalksId, Writer};
use backchannel_crypto::{Context, Digest, PublicKey};

/// The safety code's hash context.
pub const SAFETY_CONTEXT: Context = Context::new("backchannel/v1/safety-code");

/// The safety code format version.
pub const SAFETY_VERSION: u8 = 1;

/// How many words the code shows (132 bits).
pub const SAFETY_WORDS: usize = 12;

/// What the code covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyInputs {
    /// The talks.
    pub talks: TalksId,
    /// SHA-256 of the accepted roster's signed statement bytes.
    pub roster: Digest,
    /// SHA-256 of the accepted ground rules' signed statement bytes.
    pub ground_rules: Digest,
    /// The node's TLS certificate fingerprint.
    pub node_fingerprint: [u8; 32],
    /// The node's log key.
    pub log_key: PublicKey,
    /// SHA-256 of each accepted authority-passed statement's signed bytes,
    /// in log order (empty until a talks authority passes).
    pub authority_passes: Vec<Digest>,
}

/// A talks safety code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SafetyCode(pub Digest);

impl SafetyCode {
    /// The code for `inputs`.
    pub fn compute(inputs: &SafetyInputs) -> Self {
        let mut parts: Vec<&[u8]> = vec![
            &[SAFETY_VERSION],
            inputs.talks.as_bytes(),
            &inputs.roster.0,
            &inputs.ground_rules.0,
            &inputs.node_fingerprint,
            inputs.log_key.as_bytes(),
        ];
        // u32 cannot overflow: replay accepts far fewer statements.
        let count = u32::try_from(inputs.authority_passes.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes();
        if !inputs.authority_passes.is_empty() {
            parts.push(b"passes");
            parts.push(&count);
            parts.extend(inputs.authority_passes.iter().map(|d| &d.0[..]));
        }
        Self(Digest::with_context(SAFETY_CONTEXT, &parts))
    }

    /// The 12 words people read to each other.
    pub fn words(&self) -> Vec<&'static str> {
        let list = bip39::Language::English.word_list();
        let bits = &self.0.0;
        (0..SAFETY_WORDS)
            .map(|i| {
                let mut index = 0usize;
                for b in 0..11 {
                    let bit = i * 11 + b;
                    let set = (bits[bit / 8] >> (7 - bit % 8)) & 1;
                    index = (index << 1) | usize::from(set);
                }
                list[index]
            })
            .collect()
    }

    /// The words as one line, in groups of four.
    pub fn phrase(&self) -> String {
        self.words()
            .chunks(4)
            .map(|c| c.join(" "))
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// What the QR code encodes.
    pub fn qr_payload(&self) -> String {
        format!(
            "backchannel-safety:{SAFETY_VERSION}:{}",
            hex::encode(self.0.0)
        )
    }

    /// The QR code as text (Unicode half blocks), for a terminal.
    pub fn qr_text(&self) -> String {
        match qrcode::QrCode::new(self.qr_payload().as_bytes()) {
            Ok(code) => code
                .render::<qrcode::render::unicode::Dense1x2>()
                .quiet_zone(true)
                .build(),
            // A 90-byte payload always fits a QR code; say so if not.
            Err(e) => format!("(no QR code: {e})"),
        }
    }
}

/// How one party's keys stand for this participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartyVerification {
    /// Compared out of band: how (free text, e.g. "in person, Muscat") and
    /// when (Unix ms), for the code it was compared on.
    Verified {
        /// How.
        how: String,
        /// When.
        at_ms: u64,
        /// The code compared.
        code: SafetyCode,
    },
    /// Never compared: the keys are as the mediator presented them.
    VouchedByMediator,
    /// Compared once, but the code has changed since (a roster with other
    /// keys for that party): to be re-verified.
    Changed {
        /// The code that was verified.
        was: SafetyCode,
    },
}

impl PartyVerification {
    /// What every view of that party's signature shows.
    pub fn label(&self) -> String {
        match self {
            PartyVerification::Verified { how, .. } => format!("verified ({how})"),
            PartyVerification::VouchedByMediator => "vouched for by the mediator only".into(),
            PartyVerification::Changed { .. } => {
                "keys changed since verified: verify again before relying on them".into()
            }
        }
    }

    /// The state once the current code is `now`: a verification of another
    /// code becomes [`PartyVerification::Changed`].
    pub fn against(self, now: SafetyCode) -> Self {
        match self {
            PartyVerification::Verified { code, .. } if code != now => {
                PartyVerification::Changed { was: code }
            }
            other => other,
        }
    }

    /// Whether this party's formal acts may be relied on without warning.
    pub fn is_verified(&self) -> bool {
        matches!(self, PartyVerification::Verified { .. })
    }
}

impl Encode for SafetyCode {
    fn encode(&self, w: &mut Writer) {
        self.0.encode(w);
    }
}

impl Decode for SafetyCode {
    const MIN_LEN: usize = 32;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(Digest::decode(r)?))
    }
}

impl Encode for PartyVerification {
    fn encode(&self, w: &mut Writer) {
        match self {
            PartyVerification::Verified { how, at_ms, code } => {
                w.u8(1);
                w.text(how);
                w.u64(*at_ms);
                code.encode(w);
            }
            PartyVerification::VouchedByMediator => w.u8(2),
            PartyVerification::Changed { was } => {
                w.u8(3);
                was.encode(w);
            }
        }
    }
}

/// The longest "how" a verification records.
pub const MAX_HOW_BYTES: usize = 512;

impl Decode for PartyVerification {
    const MIN_LEN: usize = 1;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8("verification state")? {
            1 => PartyVerification::Verified {
                how: r.text("verified how", MAX_HOW_BYTES)?.to_owned(),
                at_ms: r.u64("verified at")?,
                code: SafetyCode::decode(r)?,
            },
            2 => PartyVerification::VouchedByMediator,
            3 => PartyVerification::Changed {
                was: SafetyCode::decode(r)?,
            },
            v => {
                return Err(DecodeError::UnknownValue {
                    field: "verification state",
                    value: u64::from(v),
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backchannel_crypto::{Signer, sha256};
    use backchannel_statement::fixtures::{key, labels};

    fn inputs() -> SafetyInputs {
        SafetyInputs {
            talks: TalksId([1; 16]),
            roster: sha256(b"roster"),
            ground_rules: sha256(b"ground rules"),
            node_fingerprint: [7; 32],
            log_key: key(labels::NODE_LOG).public_key(),
            authority_passes: Vec::new(),
        }
    }

    #[test]
    fn every_input_changes_the_code() {
        let base = SafetyCode::compute(&inputs());
        type Edit = fn(&mut SafetyInputs);
        let edits: [Edit; 7] = [
            |i| i.authority_passes.push(sha256(b"a pass")),
            |i| {
                i.authority_passes = vec![sha256(b"a pass"), sha256(b"another")];
            },
            |i| i.talks = TalksId([2; 16]),
            |i| i.roster = sha256(b"other roster"),
            |i| i.ground_rules = sha256(b"other rules"),
            |i| i.node_fingerprint[0] ^= 1,
            |i| i.log_key = key(labels::US_HEAD).public_key(),
        ];
        for edit in edits {
            let mut i = inputs();
            edit(&mut i);
            let other = SafetyCode::compute(&i);
            assert_ne!(other, base);
            assert_ne!(other.words(), base.words());
        }
        assert_eq!(SafetyCode::compute(&inputs()), base, "deterministic");
    }

    #[test]
    fn words_take_eleven_bits_each() {
        // All-zero bits are "abandon"; all-one bits are "zoo".
        assert!(
            SafetyCode(Digest([0; 32]))
                .words()
                .iter()
                .all(|w| *w == "abandon")
        );
        assert!(
            SafetyCode(Digest([0xff; 32]))
                .words()
                .iter()
                .all(|w| *w == "zoo")
        );
        let code = SafetyCode::compute(&inputs());
        assert_eq!(code.words().len(), SAFETY_WORDS);
        assert_eq!(code.phrase().split(" / ").count(), 3);
        assert!(code.qr_payload().starts_with("backchannel-safety:1:"));
        assert!(code.qr_text().lines().count() > 10);
    }

    #[test]
    fn verification_states() {
        let a = SafetyCode(Digest([1; 32]));
        let b = SafetyCode(Digest([2; 32]));
        let v = PartyVerification::Verified {
            how: "in person, Muscat".into(),
            at_ms: 5,
            code: a,
        };
        assert_eq!(v.clone().against(a), v);
        assert_eq!(v.clone().against(b), PartyVerification::Changed { was: a });
        assert_eq!(
            PartyVerification::VouchedByMediator.label(),
            "vouched for by the mediator only"
        );
        for s in [
            v,
            PartyVerification::VouchedByMediator,
            PartyVerification::Changed { was: b },
        ] {
            let bytes = s.to_canonical_bytes();
            assert_eq!(PartyVerification::from_canonical_bytes(&bytes), Ok(s));
        }
        assert!(PartyVerification::from_canonical_bytes(&[9]).is_err());
    }
}
