//! C2SP signed notes through our signing seam.
//!
//! `signed_note` does the note syntax (C2SP signed-note §Format); these
//! adapters make its [`signed_note::Signer`] and [`signed_note::Verifier`]
//! traits sign through [`backchannel_crypto::Signer`] (so a smart card can
//! sign checkpoints later) and verify through [`backchannel_crypto::verify`]
//! (our ZIP-215 policy, so a note verdict never differs from any other
//! verdict in Backchannel). Everything is signed under
//! [`Context::C2SP_SIGNED_NOTE`], the empty context, because other C2SP
//! tools (witnesses, monitors) must verify these signatures as plain
//! Ed25519 over the note text; see [`crate::NodeOrigin`] for why that stays
//! domain-separated from every other Backchannel signature.
//!
//! The traits fit: a note signature is `key ID ‖ bytes`, and `signed_note`
//! treats the bytes as opaque, so the cosignature adapters return
//! `timestamp ‖ signature` as those bytes (C2SP tlog-cosignature §Format).

use std::cell::RefCell;

use backchannel_crypto::{Context, PublicKey, SignError, Signature, Signer, verify};

/// Signature type of plain Ed25519 note signatures (C2SP signed-note
/// §Signature types: "`0x01` — Ed25519 signatures").
pub const SIG_TYPE_ED25519: u8 = 0x01;

/// Signature type of timestamped Ed25519 cosignatures (C2SP signed-note
/// §Signature types: "`0x04` — Timestamped Ed25519 witness cosignatures").
pub const SIG_TYPE_COSIGNATURE: u8 = 0x04;

/// The largest note we parse, in bytes. Our checkpoints are under 400 bytes
/// and each cosignature line adds about 150; 64 KiB leaves room for hundreds
/// of witnesses while keeping a hostile note cheap to refuse.
pub const MAX_NOTE_LEN: usize = 64 * 1024;

/// The C2SP key ID: `SHA-256(key name ‖ 0x0A ‖ signature type ‖ public
/// key)[:4]`, big-endian (C2SP signed-note §Signatures).
pub fn key_id(name: &str, sig_type: u8, key: &PublicKey) -> u32 {
    let mut typed = Vec::with_capacity(33);
    typed.push(sig_type);
    typed.extend_from_slice(key.as_bytes());
    signed_note::key_id(name, &typed)
}

/// Whether `name` is a valid note key name: non-empty, no Unicode spaces,
/// no `+` (C2SP signed-note §Format), and no control characters (which no
/// note may contain).
pub fn is_valid_key_name(name: &str) -> bool {
    signed_note::is_key_name_valid(name) && !name.chars().any(char::is_control)
}

/// Signs note texts with a [`Signer`] as C2SP Ed25519 note signatures
/// (type 0x01), under [`Context::C2SP_SIGNED_NOTE`].
pub struct NoteSigner<'a> {
    name: &'a str,
    id: u32,
    signer: &'a dyn Signer,
    failure: RefCell<Option<SignError>>,
}

impl<'a> NoteSigner<'a> {
    /// An adapter signing as key `name`.
    pub fn new(name: &'a str, signer: &'a dyn Signer) -> Self {
        Self {
            name,
            id: key_id(name, SIG_TYPE_ED25519, &signer.public_key()),
            signer,
            failure: RefCell::new(None),
        }
    }

    /// Why the last signing failed (`signature::Error` cannot carry it).
    pub fn take_failure(&self) -> Option<SignError> {
        self.failure.borrow_mut().take()
    }
}

impl signed_note::Signer for NoteSigner<'_> {
    fn name(&self) -> &str {
        self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        match self.signer.sign(Context::C2SP_SIGNED_NOTE, msg) {
            Ok(sig) => Ok(sig.0.to_vec()),
            Err(e) => {
                *self.failure.borrow_mut() = Some(e);
                Err(signature::Error::new())
            }
        }
    }
}

/// Verifies C2SP Ed25519 note signatures (type 0x01) by one key with
/// [`backchannel_crypto::verify`].
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: PublicKey,
}

impl NoteVerifier {
    /// A verifier for key `name` (the caller checks the name is valid; an
    /// invalid name simply never matches a parsed signature line).
    pub fn new(name: &str, key: PublicKey) -> Self {
        Self {
            name: name.to_owned(),
            id: key_id(name, SIG_TYPE_ED25519, &key),
            key,
        }
    }
}

impl signed_note::Verifier for NoteVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = <[u8; 64]>::try_from(sig) else {
            return false;
        };
        verify(&self.key, Context::C2SP_SIGNED_NOTE, msg, &Signature(sig)).is_ok()
    }
}

/// A [`signed_note::Verifiers`] that knows exactly one key.
pub(crate) struct OnlyKey<'a>(pub(crate) &'a dyn signed_note::Verifier);

impl signed_note::Verifiers for OnlyKey<'_> {
    fn verifier(
        &self,
        name: &str,
        id: u32,
    ) -> Result<&dyn signed_note::Verifier, signed_note::VerificationError> {
        if self.0.name() == name && self.0.key_id() == id {
            Ok(self.0)
        } else {
            Err(signed_note::VerificationError::UnknownKey {
                name: name.to_owned(),
                id,
            })
        }
    }
}

/// A note split into its text and its signature lines.
///
/// `signed_note::Note` validates notes but does not expose their signature
/// lines, so after it accepts a note we split the lines off ourselves, by the
/// same rule (C2SP signed-note §Format: "the text is separated from the
/// signatures by the last empty line in the note").
pub(crate) struct ParsedNote {
    pub(crate) note: signed_note::Note,
    pub(crate) sigs: Vec<signed_note::Signature>,
}

/// Why bytes are not a signed note.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedNote {
    /// Longer than [`MAX_NOTE_LEN`].
    #[error("note is longer than {MAX_NOTE_LEN} bytes")]
    TooLong,
    /// Not a C2SP signed note.
    #[error("not a C2SP signed note")]
    Syntax,
}

pub(crate) fn parse_note(bytes: &[u8]) -> Result<ParsedNote, MalformedNote> {
    if bytes.len() > MAX_NOTE_LEN {
        return Err(MalformedNote::TooLong);
    }
    let note = signed_note::Note::from_bytes(bytes).map_err(|_| MalformedNote::Syntax)?;
    // from_bytes accepted `text ‖ "\n" ‖ lines`, each line ending in "\n".
    let block = bytes
        .get(note.text().len() + 1..)
        .and_then(|b| b.strip_suffix(b"\n"))
        .ok_or(MalformedNote::Syntax)?;
    let sigs = block
        .split(|&b| b == b'\n')
        .map(|line| signed_note::Signature::from_bytes(line).map_err(|_| MalformedNote::Syntax))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ParsedNote { note, sigs })
}

/// Encodes a note text and signature lines (C2SP signed-note §Format).
pub(crate) fn encode_note(text: &[u8], sigs: &[signed_note::Signature]) -> Vec<u8> {
    let mut out = text.to_vec();
    out.push(b'\n');
    for s in sigs {
        out.extend_from_slice(&s.to_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use backchannel_crypto::SecretKey;
    use signed_note::Verifier as _;

    #[test]
    fn adapters_round_trip_and_bind_the_text() {
        let k = SecretKey::from_seed(&[1; 32]).expect("valid seed");
        let signer = NoteSigner::new("example.org", &k);
        let mut note = signed_note::Note::new(b"hello\n", &[]).expect("valid text");
        note.add_sigs(&[&signer]).expect("in-memory keys sign");
        let bytes = note.to_bytes();
        let parsed = parse_note(&bytes).expect("parses");
        assert_eq!(parsed.sigs.len(), 1);
        assert_eq!(encode_note(parsed.note.text(), &parsed.sigs), bytes);
        let v = NoteVerifier::new("example.org", k.public_key());
        assert!(v.verify(b"hello\n", parsed.sigs[0].signature()));
        assert!(!v.verify(b"hellp\n", parsed.sigs[0].signature()));
        assert!(!v.verify(b"hello\n", &parsed.sigs[0].signature()[1..]));
        assert!(note.verify(&OnlyKey(&v)).is_ok());
        assert!(!is_valid_key_name("a b"));
        assert!(!is_valid_key_name("a+b"));
        assert!(!is_valid_key_name(""));
        assert!(is_valid_key_name("witness.example/w1"));
    }
}
