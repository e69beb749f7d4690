//! Log origins and signed checkpoints.
//!
//! One log per talks; its origin is `<node origin>/talks/<talks id hex>`.
//! A checkpoint is a C2SP tlog-checkpoint body, signed as a C2SP signed note
//! by the node's log key under the key name `<node origin>`:
//!
//! ```text
//! node.example/talks/00112233445566778899aabbccddeeff     ← origin line
//! 1234                                                     ← tree size, decimal
//! nND/nri//U0xuHUrYSy0HtMeal2vzD9V4k/BO79C+QeI=           ← base64 root hash
//!                                                          ← blank line
//! — node.example base64(key ID ‖ Ed25519 signature)        ← the log's signature
//! — witness.example/w1 base64(key ID ‖ timestamp ‖ sig)    ← cosignatures, if any
//! ```
//!
//! The log signature is Ed25519 over the body (the three lines, final
//! newline included), with no context prefix: [`backchannel_crypto::Context::C2SP_SIGNED_NOTE`].
//! Backchannel checkpoints carry no extension lines.
//!
//! [`CheckpointNote`] is a parsed but unverified note; only
//! [`CheckpointNote::verify`] makes a [`SignedCheckpoint`].

use backchannel_codec::TalksId;
use backchannel_crypto::{Digest, PublicKey, SignError, Signer};
use base64::Engine as _;
use thiserror::Error;

use crate::note::{
    MalformedNote, NoteSigner, NoteVerifier, OnlyKey, SIG_TYPE_ED25519, encode_note, key_id,
    parse_note,
};

/// The longest node origin, in bytes: a DNS name is at most 253 bytes
/// (RFC 1035 §2.3.4), and a short path may follow; this keeps a checkpoint
/// body under 400 bytes.
pub const MAX_NODE_ORIGIN_LEN: usize = 255;

/// The prefix no origin may have: every non-note Backchannel signature is
/// over `backchannel/v1/…`, and a note is signed bare starting with its
/// origin, so refusing this prefix keeps the two apart
/// ([`backchannel_crypto::Context::C2SP_SIGNED_NOTE`]).
pub const RESERVED_ORIGIN_PREFIX: &str = "backchannel/";

/// Separates the node origin from the talks id in a log origin.
const TALKS_SEGMENT: &str = "/talks/";

/// Why a string is not an acceptable origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BadOrigin {
    /// Empty, or longer than [`MAX_NODE_ORIGIN_LEN`].
    #[error("a node origin is 1 to {MAX_NODE_ORIGIN_LEN} bytes")]
    Length,
    /// A character other than `a-z 0-9 . - _ : /`.
    #[error("a node origin holds only a-z, 0-9, '.', '-', '_', ':' and '/'")]
    Character,
    /// Starts or ends with `/`.
    #[error("a node origin neither starts nor ends with '/'")]
    Slash,
    /// Is `backchannel` or starts with `backchannel/`.
    #[error("a node origin may not start with {RESERVED_ORIGIN_PREFIX}")]
    Reserved,
    /// Not `<node origin>/talks/<32 lower-case hex digits>`.
    #[error("a log origin is <node origin>/talks/<32 lower-case hex digits>")]
    NotALogOrigin,
}

/// A node's origin: the key name of its log key and the prefix of its logs'
/// origins. Host-name-like: 1 to [`MAX_NODE_ORIGIN_LEN`] bytes of
/// `a-z 0-9 . - _ : /`, not starting or ending with `/`, and never
/// `backchannel` or `backchannel/…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeOrigin(String);

impl NodeOrigin {
    /// Checks and wraps a node origin.
    pub fn new(s: &str) -> Result<Self, BadOrigin> {
        if s.is_empty() || s.len() > MAX_NODE_ORIGIN_LEN {
            return Err(BadOrigin::Length);
        }
        if !s.bytes().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'.' | b'-' | b'_' | b':' | b'/')
        }) {
            return Err(BadOrigin::Character);
        }
        if s.starts_with('/') || s.ends_with('/') {
            return Err(BadOrigin::Slash);
        }
        if s == "backchannel" || s.starts_with(RESERVED_ORIGIN_PREFIX) {
            return Err(BadOrigin::Reserved);
        }
        Ok(Self(s.to_owned()))
    }

    /// The origin text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The origin of one talks' log: `<node origin>/talks/<talks id hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogOrigin {
    node: NodeOrigin,
    talks: TalksId,
    text: String,
}

impl LogOrigin {
    /// The origin of `talks`' log on `node`.
    pub fn new(node: &NodeOrigin, talks: TalksId) -> Self {
        Self {
            text: format!("{node}{TALKS_SEGMENT}{}", talks.to_hex()),
            node: node.clone(),
            talks,
        }
    }

    /// Parses an origin line (lower-case hex only, so each log has one origin).
    pub fn parse(s: &str) -> Result<Self, BadOrigin> {
        let (node, hex) = s
            .rsplit_once(TALKS_SEGMENT)
            .ok_or(BadOrigin::NotALogOrigin)?;
        let talks = TalksId::from_hex(hex).map_err(|_| BadOrigin::NotALogOrigin)?;
        let origin = Self::new(&NodeOrigin::new(node)?, talks);
        if origin.text != s {
            return Err(BadOrigin::NotALogOrigin);
        }
        Ok(origin)
    }

    /// The node origin, which is also the log key's name.
    pub fn node(&self) -> &NodeOrigin {
        &self.node
    }

    /// The talks whose log this is.
    pub fn talks(&self) -> TalksId {
        self.talks
    }

    /// The origin line's text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for LogOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The C2SP key ID of a node's log key: `SHA-256(<node origin> ‖ 0x0A ‖ 0x01
/// ‖ public key)[:4]` (C2SP signed-note §Ed25519 signatures).
pub fn log_key_id(node: &NodeOrigin, key: &PublicKey) -> u32 {
    key_id(node.as_str(), SIG_TYPE_ED25519, key)
}

/// A tree head of one talks' log (C2SP tlog-checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Whose log.
    pub origin: LogOrigin,
    /// How many leaves.
    pub size: u64,
    /// The RFC 6962 root hash of those leaves.
    pub root: Digest,
}

/// Why a checkpoint note was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckpointError {
    /// Not a signed note at all.
    #[error(transparent)]
    Note(#[from] MalformedNote),
    /// The note text is not a C2SP checkpoint body (three lines, canonical
    /// decimal size, canonical base64 32-byte hash).
    #[error("note text is not a checkpoint body")]
    Body,
    /// The body has extension lines, which Backchannel logs never write.
    #[error("checkpoint has extension lines")]
    Extension,
    /// The origin line is not a Backchannel log origin.
    #[error("origin line: {0}")]
    Origin(#[from] BadOrigin),
    /// The origin is not the one expected.
    #[error("checkpoint is for {found}, expected {expected}")]
    WrongOrigin {
        /// The origin expected.
        expected: String,
        /// The origin in the note.
        found: String,
    },
    /// No signature line by the log key.
    #[error("no signature by the log key {name}+{id:08x}")]
    Unsigned {
        /// The key name looked for.
        name: String,
        /// The key ID looked for.
        id: u32,
    },
    /// More than one signature line by the log key.
    #[error("more than one signature by the log key")]
    DuplicateSignature,
    /// The log key's signature does not verify.
    #[error("the log signature does not verify")]
    BadSignature,
}

/// Why a checkpoint could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignCheckpointError {
    /// The signer failed.
    #[error(transparent)]
    Signer(#[from] SignError),
}

impl Checkpoint {
    /// The checkpoint body, the note text (C2SP tlog-checkpoint §Note text):
    /// `<origin>\n<decimal size>\n<base64 root>\n`.
    pub fn body(&self) -> Vec<u8> {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            base64::engine::general_purpose::STANDARD.encode(self.root.0)
        )
        .into_bytes()
    }

    /// Parses a body strictly (no extension lines, a Backchannel origin).
    pub fn parse_body(text: &[u8]) -> Result<Self, CheckpointError> {
        let c = tlog_tiles::Checkpoint::from_bytes(text).map_err(|_| CheckpointError::Body)?;
        if !c.extension().is_empty() {
            return Err(CheckpointError::Extension);
        }
        let checkpoint = Self {
            origin: LogOrigin::parse(c.origin())?,
            size: c.size(),
            root: crate::from_tlog(*c.hash()),
        };
        // tlog_tiles already insists on canonical decimal and base64; this
        // keeps the one-encoding rule independent of that.
        if checkpoint.body() != text {
            return Err(CheckpointError::Body);
        }
        Ok(checkpoint)
    }

    /// Signs the checkpoint with the node's log key (key name = the node
    /// origin), through `signer` under [`backchannel_crypto::Context::C2SP_SIGNED_NOTE`].
    pub fn sign(&self, signer: &dyn Signer) -> Result<SignedCheckpoint, SignCheckpointError> {
        let name = self.origin.node().as_str();
        let adapter = NoteSigner::new(name, signer);
        let body = self.body();
        // The body is ASCII with newlines only and ends in "\n", and the name
        // is a valid key name (NodeOrigin), so Note::new and add_sigs can
        // fail only through the signer.
        let mut note = signed_note::Note::new(&body, &[])
            .map_err(|_| SignError::Refused("checkpoint body is not a note text".to_owned()))?;
        note.add_sigs(&[&adapter]).map_err(|_| {
            adapter
                .take_failure()
                .unwrap_or_else(|| SignError::Refused("note signing failed".to_owned()))
        })?;
        Ok(SignedCheckpoint {
            checkpoint: self.clone(),
            log_key: signer.public_key(),
            note: note.to_bytes(),
        })
    }
}

/// A checkpoint note, parsed but not verified: what arrives from the network.
#[derive(Debug)]
pub struct CheckpointNote {
    claimed: Checkpoint,
    text: Vec<u8>,
    sigs: Vec<signed_note::Signature>,
}

impl CheckpointNote {
    /// Parses a signed checkpoint note (signatures not checked).
    pub fn parse(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let parsed = parse_note(bytes)?;
        let claimed = Checkpoint::parse_body(parsed.note.text())?;
        Ok(Self {
            claimed,
            text: parsed.note.text().to_vec(),
            sigs: parsed.sigs,
        })
    }

    /// What the note claims, before any signature is checked.
    pub fn claimed(&self) -> &Checkpoint {
        &self.claimed
    }

    /// The note's encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_note(&self.text, &self.sigs)
    }

    /// Checks that the note is for `origin` and carries exactly one signature
    /// line by `log_key` (named by the node origin), and that it verifies.
    /// Lines by other keys (cosignatures) are kept, unverified.
    pub fn verify(
        self,
        log_key: &PublicKey,
        origin: &LogOrigin,
    ) -> Result<SignedCheckpoint, CheckpointError> {
        if &self.claimed.origin != origin {
            return Err(CheckpointError::WrongOrigin {
                expected: origin.to_string(),
                found: self.claimed.origin.to_string(),
            });
        }
        let name = origin.node().as_str();
        let id = log_key_id(origin.node(), log_key);
        let count = self
            .sigs
            .iter()
            .filter(|s| s.name() == name && s.id() == id)
            .count();
        match count {
            0 => {
                return Err(CheckpointError::Unsigned {
                    name: name.to_owned(),
                    id,
                });
            }
            1 => {}
            _ => return Err(CheckpointError::DuplicateSignature),
        }
        let verifier = NoteVerifier::new(name, *log_key);
        let note = signed_note::Note::new(&self.text, &self.sigs)
            .map_err(|_| CheckpointError::Note(MalformedNote::Syntax))?;
        note.verify(&OnlyKey(&verifier))
            .map_err(|_| CheckpointError::BadSignature)?;
        Ok(SignedCheckpoint {
            note: self.to_bytes(),
            checkpoint: self.claimed,
            log_key: *log_key,
        })
    }
}

/// A checkpoint whose log signature has been verified (or just made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    checkpoint: Checkpoint,
    log_key: PublicKey,
    note: Vec<u8>,
}

impl SignedCheckpoint {
    /// Parses and verifies a note in one step ([`CheckpointNote::verify`]).
    pub fn verify(
        bytes: &[u8],
        log_key: &PublicKey,
        origin: &LogOrigin,
    ) -> Result<Self, CheckpointError> {
        CheckpointNote::parse(bytes)?.verify(log_key, origin)
    }

    /// The verified checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The key that signed it.
    pub fn log_key(&self) -> &PublicKey {
        &self.log_key
    }

    /// The whole note (any cosignature lines included, unverified).
    pub fn note(&self) -> &[u8] {
        &self.note
    }

    /// The checkpoint body: the text the log and every cosigner signed.
    pub fn body(&self) -> Vec<u8> {
        self.checkpoint.body()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backchannel_crypto::SecretKey;

    fn check_node(s: &str, want: Result<(), BadOrigin>) {
        assert_eq!(NodeOrigin::new(s).map(|_| ()), want, "{s:?}");
    }

    #[test]
    fn node_origins() {
        check_node("node.example", Ok(()));
        check_node("node.example:8443/bc", Ok(()));
        check_node("", Err(BadOrigin::Length));
        check_node(&"a".repeat(256), Err(BadOrigin::Length));
        check_node("Node.example", Err(BadOrigin::Character));
        check_node("node example", Err(BadOrigin::Character));
        check_node("node\nexample", Err(BadOrigin::Character));
        check_node("node+example", Err(BadOrigin::Character));
        check_node("/node", Err(BadOrigin::Slash));
        check_node("node/", Err(BadOrigin::Slash));
        check_node("backchannel", Err(BadOrigin::Reserved));
        check_node("backchannel/v1/receipt", Err(BadOrigin::Reserved));
        check_node("backchannelx", Ok(()));
    }

    #[test]
    fn log_origins() {
        let node = NodeOrigin::new("n.example").expect("valid");
        let o = LogOrigin::new(&node, TalksId([0xab; 16]));
        assert_eq!(o.as_str(), format!("n.example/talks/{}", "ab".repeat(16)));
        assert_eq!(LogOrigin::parse(o.as_str()), Ok(o.clone()));
        for bad in [
            format!("n.example/talks/{}", "AB".repeat(16)),
            format!("n.example/talks/{}", "ab".repeat(15)),
            format!("n.example/talk/{}", "ab".repeat(16)),
            format!("backchannel/talks/{}", "ab".repeat(16)),
            format!("/talks/{}", "ab".repeat(16)),
        ] {
            assert!(LogOrigin::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sign_then_verify() {
        let key = SecretKey::from_seed(&[1; 32]).expect("valid seed");
        let node = NodeOrigin::new("n.example").expect("valid");
        let origin = LogOrigin::new(&node, TalksId([1; 16]));
        let cp = Checkpoint {
            origin: origin.clone(),
            size: 5,
            root: Digest([9; 32]),
        };
        let signed = cp.sign(&key).expect("signs");
        let again =
            SignedCheckpoint::verify(signed.note(), &key.public_key(), &origin).expect("verifies");
        assert_eq!(again, signed);
        // Another key, another origin: refused.
        let other = SecretKey::from_seed(&[2; 32]).expect("valid seed");
        assert!(matches!(
            SignedCheckpoint::verify(signed.note(), &other.public_key(), &origin),
            Err(CheckpointError::Unsigned { .. })
        ));
        let elsewhere = LogOrigin::new(&node, TalksId([2; 16]));
        assert!(matches!(
            SignedCheckpoint::verify(signed.note(), &key.public_key(), &elsewhere),
            Err(CheckpointError::WrongOrigin { .. })
        ));
        // A duplicated log signature line is refused.
        let mut dup = signed.note().to_vec();
        let line_start = signed.note().len() - (signed.note().len() - signed.body().len() - 1);
        dup.extend_from_slice(&signed.note()[line_start..]);
        assert_eq!(
            SignedCheckpoint::verify(&dup, &key.public_key(), &origin),
            Err(CheckpointError::DuplicateSignature)
        );
        // The body agrees with tlog_tiles' own encoder.
        let theirs = tlog_tiles::Checkpoint::new(origin.as_str(), 5, tlog_tiles::Hash([9; 32]), "")
            .expect("valid checkpoint");
        assert_eq!(theirs.to_bytes(), cp.body());
    }
}
