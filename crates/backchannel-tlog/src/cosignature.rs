//! Witness cosignatures, exactly C2SP tlog-cosignature (Ed25519, v1).
//!
//! From the spec (§Format and §Ed25519 signed message):
//!
//! ```text
//! key ID    = SHA-256(<name> || "\n" || 0x04 || 32-byte Ed25519 cosigner public key)[:4]
//! line      = — <key name> base64(32-bit key ID || timestamped_signature)
//! timestamped_signature = u64 timestamp (big-endian) || opaque ed25519_signature[64]
//! message   = "cosignature/v1\n" || "time " || <timestamp, ASCII decimal, no leading zeroes> || "\n"
//!             || <the whole checkpoint body, final newline included, no signature lines>
//! ```
//!
//! "`timestamp` ... MUST NOT exceed 2^63 - 1". The Ed25519 signature is
//! over `message` with no context prefix ([`Context::C2SP_SIGNED_NOTE`]);
//! `message` begins with `cosignature/v1\n`, never with `backchannel/`.
//!
//! Cosignatures are statements about checkpoints; they are never log leaves.

use backchannel_crypto::{Context, PublicKey, SignError, Signature, Signer, verify};
use thiserror::Error;

use crate::note::{
    MalformedNote, SIG_TYPE_COSIGNATURE, encode_note, is_valid_key_name, key_id, parse_note,
};

/// The header line of the signed message (C2SP tlog-cosignature §Ed25519
/// signed message: "The header line MUST be the fixed string
/// `cosignature/v1`").
pub const COSIGNATURE_HEADER: &str = "cosignature/v1\n";

/// The largest timestamp a cosignature may carry: "It MUST NOT exceed
/// 2^63 - 1" (C2SP tlog-cosignature §Format).
pub const MAX_COSIGNATURE_TIMESTAMP: u64 = (1 << 63) - 1;

/// Bytes of a cosignature line's payload: key ID (4) ‖ timestamp (8) ‖
/// Ed25519 signature (64).
pub const COSIGNATURE_PAYLOAD_LEN: usize = 4 + 8 + 64;

/// Why a cosignature was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CosignatureError {
    /// The note around it is malformed.
    #[error(transparent)]
    Note(#[from] MalformedNote),
    /// Not one `— <name> <base64>\n` line.
    #[error("not a signature line")]
    Line,
    /// The payload is not key ID ‖ timestamp ‖ 64-byte signature.
    #[error("cosignature payload is {0} bytes, not {COSIGNATURE_PAYLOAD_LEN}")]
    PayloadLength(usize),
    /// The timestamp is past 2^63 - 1.
    #[error("cosignature timestamp {0} exceeds 2^63 - 1")]
    Timestamp(u64),
    /// The line is not by the expected key (name or key ID differ).
    #[error("cosignature is by {name}+{id:08x}, not the expected key")]
    WrongKey {
        /// The name on the line.
        name: String,
        /// The key ID on the line.
        id: u32,
    },
    /// The signature does not verify.
    #[error("cosignature by {0} does not verify")]
    BadSignature(String),
    /// A key name that is empty or holds spaces, `+` or control characters.
    #[error("invalid cosigner name")]
    Name,
}

/// Why a cosignature could not be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CosignError {
    /// The signer failed.
    #[error(transparent)]
    Signer(#[from] SignError),
    /// The name or timestamp cannot be put in a cosignature.
    #[error(transparent)]
    Invalid(#[from] CosignatureError),
}

/// A cosigner as verifiers are configured with it: (name, public key), and
/// so its key ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignerKey {
    name: String,
    key: PublicKey,
    id: u32,
}

impl CosignerKey {
    /// A cosigner key; the name must be a valid note key name.
    pub fn new(name: &str, key: PublicKey) -> Result<Self, CosignatureError> {
        if !is_valid_key_name(name) {
            return Err(CosignatureError::Name);
        }
        Ok(Self {
            name: name.to_owned(),
            id: key_id(name, SIG_TYPE_COSIGNATURE, &key),
            key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// The key ID (signature type 0x04).
    pub fn key_id(&self) -> u32 {
        self.id
    }
}

/// One cosignature line, parsed (not necessarily verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosignature {
    name: String,
    key_id: u32,
    timestamp: u64,
    signature: Signature,
}

/// The message a cosigner signs (C2SP tlog-cosignature §Ed25519 signed
/// message).
pub fn cosigned_message(timestamp: u64, checkpoint_body: &[u8]) -> Vec<u8> {
    let mut m = format!("{COSIGNATURE_HEADER}time {timestamp}\n").into_bytes();
    m.extend_from_slice(checkpoint_body);
    m
}

impl Cosignature {
    /// Cosigns `checkpoint_body` at `timestamp` (POSIX seconds) as cosigner
    /// `name`, through `signer` under [`Context::C2SP_SIGNED_NOTE`].
    pub fn sign(
        signer: &dyn Signer,
        name: &str,
        timestamp: u64,
        checkpoint_body: &[u8],
    ) -> Result<Self, CosignError> {
        let key = CosignerKey::new(name, signer.public_key())?;
        if timestamp > MAX_COSIGNATURE_TIMESTAMP {
            return Err(CosignatureError::Timestamp(timestamp).into());
        }
        let signature = signer.sign(
            Context::C2SP_SIGNED_NOTE,
            &cosigned_message(timestamp, checkpoint_body),
        )?;
        Ok(Self {
            name: key.name,
            key_id: key.id,
            timestamp,
            signature,
        })
    }

    /// The cosigner's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID on the line.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// When the cosigner signed (POSIX seconds).
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// The Ed25519 signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Checks the line is by `key` and its signature over `checkpoint_body`
    /// verifies ([`backchannel_crypto::verify`]).
    pub fn verify(
        &self,
        key: &CosignerKey,
        checkpoint_body: &[u8],
    ) -> Result<(), CosignatureError> {
        if self.name != key.name || self.key_id != key.id {
            return Err(CosignatureError::WrongKey {
                name: self.name.clone(),
                id: self.key_id,
            });
        }
        verify(
            &key.key,
            Context::C2SP_SIGNED_NOTE,
            &cosigned_message(self.timestamp, checkpoint_body),
            &self.signature,
        )
        .map_err(|_| CosignatureError::BadSignature(self.name.clone()))
    }

    /// The note signature this line encodes.
    fn to_note_signature(&self) -> Result<signed_note::Signature, CosignatureError> {
        let mut payload = Vec::with_capacity(72);
        payload.extend_from_slice(&self.timestamp.to_be_bytes());
        payload.extend_from_slice(&self.signature.0);
        signed_note::Signature::new(self.name.clone(), self.key_id, payload)
            .map_err(|_| CosignatureError::Name)
    }

    fn from_note_signature(sig: &signed_note::Signature) -> Result<Self, CosignatureError> {
        let bytes = sig.signature();
        if bytes.len() != COSIGNATURE_PAYLOAD_LEN - 4 {
            return Err(CosignatureError::PayloadLength(bytes.len() + 4));
        }
        let (ts, s) = bytes.split_at(8);
        let timestamp = u64::from_be_bytes(ts.try_into().map_err(|_| CosignatureError::Line)?);
        if timestamp > MAX_COSIGNATURE_TIMESTAMP {
            return Err(CosignatureError::Timestamp(timestamp));
        }
        if !is_valid_key_name(sig.name()) {
            return Err(CosignatureError::Name);
        }
        Ok(Self {
            name: sig.name().to_owned(),
            key_id: sig.id(),
            timestamp,
            signature: Signature(s.try_into().map_err(|_| CosignatureError::Line)?),
        })
    }

    /// The signature line, `— <name> <base64(key ID ‖ timestamp ‖ sig)>\n`.
    pub fn to_line(&self) -> Vec<u8> {
        // Every Cosignature holds a valid name (checked where it was made or
        // parsed), so the fallback never runs; it keeps this infallible.
        self.to_note_signature()
            .map(|s| s.to_bytes())
            .unwrap_or_default()
    }

    /// Parses one signature line, newline included.
    pub fn from_line(line: &[u8]) -> Result<Self, CosignatureError> {
        let body = line.strip_suffix(b"\n").ok_or(CosignatureError::Line)?;
        if body.contains(&b'\n') || line.len() > crate::note::MAX_NOTE_LEN {
            return Err(CosignatureError::Line);
        }
        let sig = signed_note::Signature::from_bytes(body).map_err(|_| CosignatureError::Line)?;
        let cos = Self::from_note_signature(&sig)?;
        if cos.to_line() != line {
            return Err(CosignatureError::Line);
        }
        Ok(cos)
    }
}

/// Adds `cosignature` to a signed note, replacing any earlier line by the
/// same (name, key ID), as `signed_note::Note::add_sigs` does.
pub fn attach(note: &[u8], cosignature: &Cosignature) -> Result<Vec<u8>, CosignatureError> {
    let parsed = parse_note(note)?;
    let mut sigs = parsed.sigs;
    sigs.retain(|s| !(s.name() == cosignature.name && s.id() == cosignature.key_id));
    sigs.push(cosignature.to_note_signature()?);
    let out = encode_note(parsed.note.text(), &sigs);
    // Check the result is still a note we accept (size limit included).
    parse_note(&out)?;
    Ok(out)
}

/// Cosigns a signed note's text and attaches the cosignature, using the
/// [`CosignatureSigner`] adapter with `signed_note::Note::add_sigs`.
pub fn cosign_note(
    note: &[u8],
    signer: &dyn Signer,
    name: &str,
    timestamp: u64,
) -> Result<Vec<u8>, CosignError> {
    let parsed = parse_note(note).map_err(CosignatureError::from)?;
    if timestamp > MAX_COSIGNATURE_TIMESTAMP {
        return Err(CosignatureError::Timestamp(timestamp).into());
    }
    let adapter = CosignatureSigner::new(name, signer, timestamp)?;
    let mut n = signed_note::Note::new(parsed.note.text(), &parsed.sigs)
        .map_err(|_| CosignatureError::Note(MalformedNote::Syntax))?;
    n.add_sigs(&[&adapter]).map_err(|_| {
        adapter
            .failure
            .borrow_mut()
            .take()
            .unwrap_or_else(|| SignError::Refused("note signing failed".to_owned()))
    })?;
    Ok(n.to_bytes())
}

/// Every line of `note` shaped like an Ed25519 cosignature (a 76-byte
/// payload), in note order; other lines (the log's own signature, other
/// signature types) are skipped. Nothing is verified.
pub fn cosignatures(note: &[u8]) -> Result<Vec<Cosignature>, CosignatureError> {
    let parsed = parse_note(note)?;
    let mut out = Vec::new();
    for sig in &parsed.sigs {
        if sig.signature().len() + 4 == COSIGNATURE_PAYLOAD_LEN {
            out.push(Cosignature::from_note_signature(sig)?);
        }
    }
    Ok(out)
}

/// Verifies the cosignatures on `note` by the cosigners in `keys`, as C2SP
/// signed-note §Signatures requires: lines by unknown keys are ignored, a
/// line by a known key that fails to verify rejects the whole note. Returns
/// the verified cosignatures (at most one per key; the caller applies its
/// quorum). Verification goes through `signed_note::Note::verify` with the
/// [`CosignatureVerifier`] adapter.
pub fn verify_cosignatures(
    note: &[u8],
    keys: &[CosignerKey],
) -> Result<Vec<Cosignature>, CosignatureError> {
    let parsed = parse_note(note)?;
    let verifiers = signed_note::VerifierList::new(
        keys.iter()
            .map(|k| Box::new(CosignatureVerifier(k.clone())) as Box<dyn signed_note::Verifier>)
            .collect(),
    );
    let n = signed_note::Note::new(parsed.note.text(), &parsed.sigs)
        .map_err(|_| CosignatureError::Note(MalformedNote::Syntax))?;
    match n.verify(&verifiers) {
        Ok((verified, _unknown)) => verified
            .iter()
            .map(Cosignature::from_note_signature)
            .collect(),
        Err(signed_note::NoteError::UnverifiedNote) => Ok(Vec::new()),
        Err(signed_note::NoteError::InvalidSignature { name, .. }) => {
            Err(CosignatureError::BadSignature(name))
        }
        Err(_) => Err(CosignatureError::Note(MalformedNote::Syntax)),
    }
}

/// A [`signed_note::Signer`] producing cosignatures at a fixed timestamp:
/// its "signature" bytes are `timestamp ‖ Ed25519 signature`, made through
/// a [`Signer`] under [`Context::C2SP_SIGNED_NOTE`].
pub struct CosignatureSigner<'a> {
    key: CosignerKey,
    signer: &'a dyn Signer,
    timestamp: u64,
    failure: std::cell::RefCell<Option<SignError>>,
}

impl<'a> CosignatureSigner<'a> {
    /// An adapter cosigning as `name` at `timestamp`.
    pub fn new(
        name: &str,
        signer: &'a dyn Signer,
        timestamp: u64,
    ) -> Result<Self, CosignatureError> {
        if timestamp > MAX_COSIGNATURE_TIMESTAMP {
            return Err(CosignatureError::Timestamp(timestamp));
        }
        Ok(Self {
            key: CosignerKey::new(name, signer.public_key())?,
            signer,
            timestamp,
            failure: std::cell::RefCell::new(None),
        })
    }
}

impl signed_note::Signer for CosignatureSigner<'_> {
    fn name(&self) -> &str {
        &self.key.name
    }

    fn key_id(&self) -> u32 {
        self.key.id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        match self.signer.sign(
            Context::C2SP_SIGNED_NOTE,
            &cosigned_message(self.timestamp, msg),
        ) {
            Ok(sig) => {
                let mut out = self.timestamp.to_be_bytes().to_vec();
                out.extend_from_slice(&sig.0);
                Ok(out)
            }
            Err(e) => {
                *self.failure.borrow_mut() = Some(e);
                Err(signature::Error::new())
            }
        }
    }
}

/// A [`signed_note::Verifier`] for one cosigner's key.
#[derive(Debug, Clone)]
pub struct CosignatureVerifier(pub CosignerKey);

impl signed_note::Verifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn key_id(&self) -> u32 {
        self.0.id
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        if sig.len() != COSIGNATURE_PAYLOAD_LEN - 4 {
            return false;
        }
        let (ts, s) = sig.split_at(8);
        let (Ok(ts), Ok(s)) = (<[u8; 8]>::try_from(ts), <[u8; 64]>::try_from(s)) else {
            return false;
        };
        let timestamp = u64::from_be_bytes(ts);
        timestamp <= MAX_COSIGNATURE_TIMESTAMP
            && verify(
                &self.0.key,
                Context::C2SP_SIGNED_NOTE,
                &cosigned_message(timestamp, msg),
                &Signature(s),
            )
            .is_ok()
    }
}

/// The name a participant's key cosigns checkpoints under (the node
/// accepts a cosignature only under the name of the connection's key):
/// `bc-` and the 64 hex digits of its key id, a valid note key name.
pub fn witness_name(key: &backchannel_crypto::KeyId) -> String {
    let mut name = String::with_capacity(3 + 64);
    name.push_str("bc-");
    for b in key.0.0 {
        name.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        name.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use backchannel_crypto::SecretKey;

    const BODY: &[u8] =
        b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    #[test]
    fn message_is_the_spec_example() {
        // C2SP tlog-cosignature §Ed25519 signed message, verbatim.
        assert_eq!(
            cosigned_message(1679315147, BODY),
            b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
    }

    #[test]
    fn sign_verify_attach_parse() {
        let w = SecretKey::from_seed(&[4; 32]).expect("valid seed");
        let key = CosignerKey::new("witness.example/w1", w.public_key()).expect("valid name");
        let cos = Cosignature::sign(&w, "witness.example/w1", 1679315147, BODY).expect("signs");
        assert!(cos.verify(&key, BODY).is_ok());
        assert!(cos.verify(&key, b"other\n").is_err());
        assert_eq!(Cosignature::from_line(&cos.to_line()), Ok(cos.clone()));

        let log = SecretKey::from_seed(&[5; 32]).expect("valid seed");
        let mut note = signed_note::Note::new(BODY, &[]).expect("valid");
        note.add_sigs(&[&crate::note::NoteSigner::new(
            "example.com/behind-the-sofa",
            &log,
        )])
        .expect("signs");
        let with = attach(&note.to_bytes(), &cos).expect("attaches");
        assert_eq!(cosignatures(&with), Ok(vec![cos.clone()]));
        assert_eq!(
            verify_cosignatures(&with, std::slice::from_ref(&key)),
            Ok(vec![cos.clone()])
        );
        // The add_sigs adapter path gives the same bytes (Ed25519 is deterministic).
        assert_eq!(
            cosign_note(&note.to_bytes(), &w, "witness.example/w1", 1679315147),
            Ok(with.clone())
        );
        // Attaching again replaces rather than duplicates.
        assert_eq!(attach(&with, &cos), Ok(with.clone()));
        // An unknown cosigner is ignored, not an error.
        let other = SecretKey::from_seed(&[6; 32]).expect("valid seed");
        let okey = CosignerKey::new("witness.example/w2", other.public_key()).expect("valid");
        assert_eq!(verify_cosignatures(&with, &[okey]), Ok(vec![]));
        assert!(Cosignature::sign(&w, "bad name", 1, BODY).is_err());
        assert!(Cosignature::sign(&w, "w", 1 << 63, BODY).is_err());
    }
}
