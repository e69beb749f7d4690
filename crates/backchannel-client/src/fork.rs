//! Fork detection and fork evidence: what a client shows when the node
//! served two parties different histories of one talks' log.
//!
//! A hostile node can give each party a history of its own: each party's
//! client verifies the checkpoints it is served and cosigns them, and each
//! history is internally consistent. It is caught three ways, all here:
//!
//! - **Missing cosignatures** ([`missing_cosigners`], [`is_final`]): every
//!   party's devices cosign every checkpoint they verified within a
//!   checkpoint interval, so a checkpoint served with no cosignature by a
//!   member of some party after that is suspect — that party was shown
//!   something else (or is offline). A checkpoint is **final** when a
//!   member of every party has cosigned it.
//! - **Comparing verified states** ([`compare`], the core of `log
//!   compare`): two participants' followers that verified different roots
//!   at one size are on two histories.
//! - **Evidence** ([`ForkEvidence`]): two checkpoint notes of the same log,
//!   both signed by the node's log key, that cannot both be honest. It
//!   verifies offline with nothing but its bytes, the log key and the log
//!   origin, so an arbiter (or any party) can check it without trusting
//!   whoever hands it over.
//!
//! # The evidence file
//!
//! Nothing in it is signed or hashed by Backchannel (the notes carry the
//! node's own signatures), so there is no context string: a version byte
//! and a strict decoding (docs/formats.md conventions, big-endian):
//!
//! ```text
//! fork evidence = version:u8 (= FORK_EVIDENCE_VERSION = 1)
//!                 form:u8    (1 = same size, 2 = prefix)
//!                 note_a:bytes  (≤ MAX_NOTE_LEN)
//!                 note_b:bytes  (≤ MAX_NOTE_LEN)
//!                 form 2 only: prefix_root:[32] ‖ consistency proof (§8 encoding)
//! ```
//!
//! Each note is a C2SP checkpoint note (docs/formats.md §8) carrying
//! **exactly one** signature line, by the node origin (the log's own; any
//! cosignature lines are dropped by [`ForkEvidence::from_checkpoints`]), that
//! parses strictly and re-encodes to the same bytes; both are of one log
//! origin.
//!
//! - **Form 1, same size**: the notes have the same size and different
//!   roots, `root_a < root_b` byte-wise (one order, so one encoding per
//!   pair). The node signed two trees of one size.
//! - **Form 2, prefix**: `1 ≤ size_a < size_b`; the consistency proof is
//!   from `size_a` to `size_b`, and it verifies from (`size_a`,
//!   `prefix_root`) to (`size_b`, `root_b`), where `prefix_root ≠ root_a`.
//!   By RFC 6962 a verifying proof binds the later tree's first `size_a`
//!   leaves to `prefix_root`, so the node signed two trees of size `size_a`:
//!   one directly (`note_a`), one as the prefix of `note_b`. (A proof that
//!   merely *fails* to verify proves nothing — anyone can write a wrong
//!   proof for an honest pair — so the form carries a proof that
//!   *succeeds*, against another prefix root.) The prefix root comes from
//!   the client that followed `note_b`'s history: its
//!   [`Follower::root_at`] at `size_a`.
//!
//! Verification ([`ForkEvidence::verify`]): both notes verify as
//! checkpoints of the expected origin under the log key, and for form 2 the
//! proof verifies as above. The structural rules hold for every decoded
//! value, so they are not errors of `verify`.

use std::collections::BTreeSet;

use backchannel_codec::{Decode, DecodeError, Encode, PartyId, Reader, Writer};
use backchannel_crypto::{Digest, PublicKey};
use backchannel_statement::AccessList;
use backchannel_statement::access_list::FLAG_DEVICE;
use backchannel_tlog::{
    CheckpointError, CheckpointNote, ConsistencyProof, CosignatureError, CosignerKey, LogOrigin,
    MAX_NOTE_LEN, SignedCheckpoint, verify_cosignatures, witness_name,
};
use serde::Serialize;
use thiserror::Error;

use crate::follow::Follower;

/// The fork evidence file's format version.
pub const FORK_EVIDENCE_VERSION: u8 = 1;

/// Form code: two notes of one size with different roots.
const FORM_SAME_SIZE: u8 = 1;
/// Form code: a note, and a later note whose tree has another prefix root.
const FORM_PREFIX: u8 = 2;

/// The C2SP signed-note signature line prefix, an em dash and a space.
const SIG_LINE_PREFIX: &str = "\u{2014} ";

/// Which of the two notes (in the order given, or in the evidence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The first.
    A,
    /// The second.
    B,
}

impl std::fmt::Display for Which {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Which::A => "first",
            Which::B => "second",
        })
    }
}

/// How the two notes contradict each other.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// One size, two roots.
    SameSize,
    /// `note_b`'s tree has `prefix_root` at `note_a`'s size, by `proof`.
    Prefix {
        prefix_root: Digest,
        proof: ConsistencyProof,
    },
}

/// Two checkpoint notes of one talks' log, both signed by the node's log
/// key, that cannot both be honest (see the [module docs](self) for the
/// format and its two forms). Made only by [`ForkEvidence::from_checkpoints`],
/// [`ForkEvidence::from_prefix`] (which check the signatures) or by decoding
/// (which checks the structure only: call [`ForkEvidence::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkEvidence {
    form: Form,
    note_a: Vec<u8>,
    note_b: Vec<u8>,
    /// `note_a`'s checkpoint, as claimed (verified by `verify`).
    size_a: u64,
    root_a: Digest,
    /// `note_b`'s checkpoint, as claimed.
    size_b: u64,
    root_b: Digest,
    /// The notes' origin, as claimed.
    origin: LogOrigin,
}

/// Why two notes are not fork evidence.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NotAFork {
    /// A note does not verify as a checkpoint of the log under the log key
    /// (it is no evidence against the node: the node did not sign it).
    #[error("the {which} note is not a checkpoint of this log signed by the log key: {error}")]
    Checkpoint {
        /// Which note.
        which: Which,
        /// Why.
        error: CheckpointError,
    },
    /// Both notes have the same size and root: one history.
    #[error("both notes are of size {size} with the same root: no fork")]
    SameRoot {
        /// The size.
        size: u64,
    },
    /// The sizes differ and no consistency proof was given: two sizes alone
    /// prove nothing (use [`ForkEvidence::from_prefix`]).
    #[error(
        "the notes are of sizes {size_a} and {size_b}: a fork between two sizes needs a \
         consistency proof and the later tree's root at the earlier size"
    )]
    DifferentSizes {
        /// The first note's size.
        size_a: u64,
        /// The second note's size.
        size_b: u64,
    },
    /// The consistency proof is not from the earlier note's size to the
    /// later's.
    #[error(
        "the consistency proof is from {proof_old} to {proof_new}, the notes are of sizes \
         {old} and {new}"
    )]
    ProofSizes {
        /// The earlier note's size.
        old: u64,
        /// The later note's size.
        new: u64,
        /// The proof's old size.
        proof_old: u64,
        /// The proof's new size.
        proof_new: u64,
    },
    /// The proof does not lead from the given prefix root to the later
    /// note's root: nothing is shown about the later tree's prefix.
    #[error(
        "the consistency proof does not verify from the given root at size {old} to the \
         later note's root at size {new}"
    )]
    BadProof {
        /// The earlier size.
        old: u64,
        /// The later size.
        new: u64,
    },
    /// The later tree's prefix root is the earlier note's root: the later
    /// note extends the earlier one, one history.
    #[error("the note of size {new} extends the note of size {old}: no fork")]
    Consistent {
        /// The earlier size.
        old: u64,
        /// The later size.
        new: u64,
    },
}

/// Why fork evidence did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ForkError {
    /// A note does not verify as a checkpoint of the expected origin under
    /// the log key: not the node's signature, or another log.
    #[error("the {which} checkpoint note does not verify: {error}")]
    Checkpoint {
        /// Which note.
        which: Which,
        /// Why.
        error: CheckpointError,
    },
    /// The consistency proof (form 2) does not lead from the prefix root at
    /// the earlier size to the later note's root.
    #[error(
        "the consistency proof does not verify from the prefix root at size {old} to the \
         later note's root at size {new}"
    )]
    BadProof {
        /// The earlier size.
        old: u64,
        /// The later size.
        new: u64,
    },
}

/// Fork evidence that verified: the node signed two different trees of
/// size [`VerifiedFork::size`] for the log [`VerifiedFork::origin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedFork {
    /// The log.
    pub origin: LogOrigin,
    /// The size at which the two histories differ.
    pub size: u64,
    /// The root the first note signs at `size`.
    pub root_a: Digest,
    /// The other root at `size`: the second note's (same size), or the
    /// root the second note's tree has at `size` (prefix form).
    pub root_b: Digest,
    /// For the prefix form, the second note's own size and root.
    pub later: Option<(u64, Digest)>,
}

/// A JSON-friendly summary of a verified fork, for the CLI: sizes as
/// numbers, roots as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForkSummary {
    /// The log origin.
    pub origin: String,
    /// The size at which the histories differ.
    pub size: u64,
    /// One root at `size` (hex).
    pub root_a: String,
    /// The other root at `size` (hex).
    pub root_b: String,
    /// Prefix form: the later note's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub later_size: Option<u64>,
    /// Prefix form: the later note's root (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub later_root: Option<String>,
}

impl VerifiedFork {
    /// The summary for display or JSON.
    pub fn summary(&self) -> ForkSummary {
        ForkSummary {
            origin: self.origin.to_string(),
            size: self.size,
            root_a: self.root_a.to_hex(),
            root_b: self.root_b.to_hex(),
            later_size: self.later.map(|(s, _)| s),
            later_root: self.later.map(|(_, r)| r.to_hex()),
        }
    }
}

/// Verifies `note` and returns it with only the log's signature line
/// (cosignature lines dropped), and the verified checkpoint.
fn log_signed(
    note: &[u8],
    which: Which,
    log_key: &PublicKey,
    origin: &LogOrigin,
) -> Result<(Vec<u8>, SignedCheckpoint), NotAFork> {
    let checkpoint = |error| NotAFork::Checkpoint { which, error };
    let signed = SignedCheckpoint::verify(note, log_key, origin).map_err(checkpoint)?;
    // The note re-encoded: body ‖ "\n" ‖ lines, each ending in "\n".
    let body = signed.body();
    let mut head = body.clone();
    head.push(b'\n');
    let lines = signed.note().get(head.len()..).unwrap_or_default();
    let prefix = format!("{SIG_LINE_PREFIX}{} ", origin.node());
    for line in lines.split_inclusive(|&b| b == b'\n') {
        if !line.starts_with(prefix.as_bytes()) {
            continue;
        }
        let mut only = head.clone();
        only.extend_from_slice(line);
        // Exactly one line by the log key verified in the whole note, so
        // the one that verifies alone is it.
        if let Ok(alone) = SignedCheckpoint::verify(&only, log_key, origin) {
            return Ok((only, alone));
        }
    }
    // Unreachable for a note that verified; refused rather than assumed.
    Err(checkpoint(CheckpointError::BadSignature))
}

impl ForkEvidence {
    /// Evidence from two notes of the **same size** with different roots
    /// (form 1), each verified for `origin` under `log_key`. The notes may
    /// carry cosignature lines (as served); the evidence keeps only the
    /// log's signature line. The order of the two does not matter.
    pub fn from_checkpoints(
        note_a: &[u8],
        note_b: &[u8],
        log_key: &PublicKey,
        origin: &LogOrigin,
    ) -> Result<Self, NotAFork> {
        let (a, ca) = log_signed(note_a, Which::A, log_key, origin)?;
        let (b, cb) = log_signed(note_b, Which::B, log_key, origin)?;
        let (ca, cb) = (ca.checkpoint(), cb.checkpoint());
        if ca.size != cb.size {
            return Err(NotAFork::DifferentSizes {
                size_a: ca.size,
                size_b: cb.size,
            });
        }
        if ca.root == cb.root {
            return Err(NotAFork::SameRoot { size: ca.size });
        }
        let ((note_a, a), (note_b, b)) = if ca.root < cb.root {
            ((a, ca), (b, cb))
        } else {
            ((b, cb), (a, ca))
        };
        Ok(Self {
            form: Form::SameSize,
            size_a: a.size,
            root_a: a.root,
            size_b: b.size,
            root_b: b.root,
            origin: origin.clone(),
            note_a,
            note_b,
        })
    }

    /// Evidence from two notes of **different sizes** (form 2): the later
    /// note's tree has `prefix_root` at the earlier note's size, shown by
    /// `proof` (from the earlier size to the later), and the earlier note
    /// signs another root. `prefix_root` is the root the client following
    /// the later note's history verified at the earlier size
    /// ([`Follower::root_at`]); `proof` may come from anywhere (it is
    /// checked). The notes may be given in either order; notes of one size
    /// are handed to [`ForkEvidence::from_checkpoints`] (the proof is then
    /// not needed).
    pub fn from_prefix(
        note_a: &[u8],
        note_b: &[u8],
        prefix_root: &Digest,
        proof: &ConsistencyProof,
        log_key: &PublicKey,
        origin: &LogOrigin,
    ) -> Result<Self, NotAFork> {
        let (a, ca) = log_signed(note_a, Which::A, log_key, origin)?;
        let (b, cb) = log_signed(note_b, Which::B, log_key, origin)?;
        let (ca, cb) = (ca.checkpoint().clone(), cb.checkpoint().clone());
        if ca.size == cb.size {
            return Self::from_checkpoints(note_a, note_b, log_key, origin);
        }
        let ((old_note, old), (new_note, new)) = if ca.size < cb.size {
            ((a, ca), (b, cb))
        } else {
            ((b, cb), (a, ca))
        };
        if proof.old_size() != old.size || proof.new_size() != new.size {
            return Err(NotAFork::ProofSizes {
                old: old.size,
                new: new.size,
                proof_old: proof.old_size(),
                proof_new: proof.new_size(),
            });
        }
        proof
            .verify(old.size, prefix_root, new.size, &new.root)
            .map_err(|_| NotAFork::BadProof {
                old: old.size,
                new: new.size,
            })?;
        if *prefix_root == old.root {
            return Err(NotAFork::Consistent {
                old: old.size,
                new: new.size,
            });
        }
        Ok(Self {
            form: Form::Prefix {
                prefix_root: *prefix_root,
                proof: proof.clone(),
            },
            size_a: old.size,
            root_a: old.root,
            size_b: new.size,
            root_b: new.root,
            origin: origin.clone(),
            note_a: old_note,
            note_b: new_note,
        })
    }

    /// The log origin the notes claim (checked by [`ForkEvidence::verify`]).
    pub fn origin(&self) -> &LogOrigin {
        &self.origin
    }

    /// The two notes, as kept (each with the log's signature line only).
    pub fn notes(&self) -> (&[u8], &[u8]) {
        (&self.note_a, &self.note_b)
    }

    /// Verifies the evidence offline: both notes are checkpoints of
    /// `origin` signed by `log_key`, and (prefix form) the consistency
    /// proof binds the later tree's prefix to a root the earlier note does
    /// not sign.
    pub fn verify(
        &self,
        log_key: &PublicKey,
        origin: &LogOrigin,
    ) -> Result<VerifiedFork, ForkError> {
        for (which, note) in [(Which::A, &self.note_a), (Which::B, &self.note_b)] {
            SignedCheckpoint::verify(note, log_key, origin)
                .map_err(|error| ForkError::Checkpoint { which, error })?;
        }
        match &self.form {
            Form::SameSize => Ok(VerifiedFork {
                origin: origin.clone(),
                size: self.size_a,
                root_a: self.root_a,
                root_b: self.root_b,
                later: None,
            }),
            Form::Prefix { prefix_root, proof } => {
                proof
                    .verify(self.size_a, prefix_root, self.size_b, &self.root_b)
                    .map_err(|_| ForkError::BadProof {
                        old: self.size_a,
                        new: self.size_b,
                    })?;
                Ok(VerifiedFork {
                    origin: origin.clone(),
                    size: self.size_a,
                    root_a: self.root_a,
                    root_b: *prefix_root,
                    later: Some((self.size_b, self.root_b)),
                })
            }
        }
    }
}

impl Encode for ForkEvidence {
    fn encode(&self, w: &mut Writer) {
        w.u8(FORK_EVIDENCE_VERSION);
        match &self.form {
            Form::SameSize => w.u8(FORM_SAME_SIZE),
            Form::Prefix { .. } => w.u8(FORM_PREFIX),
        }
        w.bytes(&self.note_a);
        w.bytes(&self.note_b);
        if let Form::Prefix { prefix_root, proof } = &self.form {
            prefix_root.encode(w);
            proof.encode(w);
        }
    }
}

/// A decode error about a note of the evidence.
fn bad_note(reason: &'static str) -> DecodeError {
    DecodeError::Invalid {
        field: "fork evidence note",
        reason,
    }
}

/// Reads one note: a checkpoint note that re-encodes to the same bytes and
/// carries exactly one signature line, by its node origin.
fn read_note(r: &mut Reader<'_>) -> Result<(Vec<u8>, CheckpointNote), DecodeError> {
    let bytes = r.bytes("fork evidence note", MAX_NOTE_LEN)?;
    let parsed = CheckpointNote::parse(bytes).map_err(|_| bad_note("not a checkpoint note"))?;
    if parsed.to_bytes() != bytes {
        return Err(bad_note("not in its canonical encoding"));
    }
    let claimed = parsed.claimed();
    let head = claimed.body().len() + 1;
    let lines = bytes.get(head..).unwrap_or_default();
    let prefix = format!("{SIG_LINE_PREFIX}{} ", claimed.origin.node());
    let one_line = lines.iter().filter(|&&b| b == b'\n').count() == 1;
    if !one_line || !lines.starts_with(prefix.as_bytes()) {
        return Err(bad_note(
            "must carry exactly one signature line, by its node origin",
        ));
    }
    Ok((bytes.to_vec(), parsed))
}

impl Decode for ForkEvidence {
    /// Version, form and two empty length prefixes.
    const MIN_LEN: usize = 1 + 1 + 4 + 4;

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("fork evidence version", FORK_EVIDENCE_VERSION)?;
        let form = r.u8("fork evidence form")?;
        if form != FORM_SAME_SIZE && form != FORM_PREFIX {
            return Err(DecodeError::UnknownValue {
                field: "fork evidence form",
                value: u64::from(form),
            });
        }
        let (note_a, parsed_a) = read_note(r)?;
        let (note_b, parsed_b) = read_note(r)?;
        let (a, b) = (parsed_a.claimed(), parsed_b.claimed());
        if a.origin != b.origin {
            return Err(DecodeError::Invalid {
                field: "fork evidence",
                reason: "the notes must be of one log origin",
            });
        }
        let form = if form == FORM_SAME_SIZE {
            if a.size != b.size || a.root >= b.root {
                return Err(DecodeError::Invalid {
                    field: "fork evidence",
                    reason: "same-size notes must have one size and roots in increasing order",
                });
            }
            Form::SameSize
        } else {
            let prefix_root = Digest::decode(r)?;
            let proof = ConsistencyProof::decode(r)?;
            if a.size == 0 || a.size >= b.size {
                return Err(DecodeError::Invalid {
                    field: "fork evidence",
                    reason: "prefix-form notes must have sizes 1 <= a < b",
                });
            }
            if proof.old_size() != a.size || proof.new_size() != b.size {
                return Err(DecodeError::Invalid {
                    field: "fork evidence",
                    reason: "the consistency proof must be from the first note's size to the second's",
                });
            }
            if prefix_root == a.root {
                return Err(DecodeError::Invalid {
                    field: "fork evidence",
                    reason: "the prefix root must differ from the first note's root",
                });
            }
            Form::Prefix { prefix_root, proof }
        };
        Ok(Self {
            form,
            size_a: a.size,
            root_a: a.root,
            size_b: b.size,
            root_b: b.root,
            origin: a.origin.clone(),
            note_a,
            note_b,
        })
    }
}

// --- Comparing two participants' verified states ---------------------------

/// What [`compare`] found between two followers of one talks' log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// At every size (≥ 1) both verified, the roots agree.
    Consistent {
        /// How many sizes both verified.
        compared: usize,
        /// The largest of them.
        largest: u64,
    },
    /// No size (≥ 1) was verified by both: nothing to compare. Settle it
    /// with a consistency proof between the two verified sizes
    /// ([`Follower::compare_reference_with_proof`]).
    Inconclusive,
    /// Two roots at one size: two histories. The smallest such size.
    Forked {
        /// The size.
        size: u64,
        /// The first follower's root there.
        root_a: Digest,
        /// The second follower's root there.
        root_b: Digest,
    },
}

/// Compares two participants' verified states of one log (the core of `log
/// compare`): at every size both hold a verified root for
/// ([`Follower::verified`], [`Follower::root_at`]), the roots must agree.
/// Sans IO; the followers may come from two devices' stores or from a peer
/// over any channel the parties trust.
pub fn compare(a: &Follower, b: &Follower) -> Comparison {
    let mut compared = 0;
    let mut largest = 0;
    for (&size, root_a) in a.verified() {
        let Some(root_b) = b.root_at(size) else {
            continue;
        };
        if *root_a != root_b {
            return Comparison::Forked {
                size,
                root_a: *root_a,
                root_b,
            };
        }
        compared += 1;
        largest = size;
    }
    if compared == 0 {
        Comparison::Inconclusive
    } else {
        Comparison::Consistent { compared, largest }
    }
}

// --- Cosignatures and finality -----------------------------------------------

/// The cosigner key a device cosigns under: its public key, named
/// [`witness_name`] of its key id (the only name the node accepts from it).
pub fn cosigner_key(device: &PublicKey) -> Result<CosignerKey, CosignatureError> {
    CosignerKey::new(&witness_name(&device.id()), *device)
}

/// Every party with a device key on `list`, with its devices' cosigner
/// keys, in party order: who must cosign for a checkpoint to be final.
/// Parties without a device on the list cannot cosign and are left out.
pub fn party_cosigners(list: &AccessList) -> Vec<(PartyId, Vec<CosignerKey>)> {
    let mut out: Vec<(PartyId, Vec<CosignerKey>)> = Vec::new();
    let parties: BTreeSet<PartyId> = list
        .entries()
        .iter()
        .filter(|e| e.has(FLAG_DEVICE))
        .map(|e| e.party)
        .collect();
    for party in parties {
        let keys = list
            .entries()
            .iter()
            .filter(|e| e.party == party && e.has(FLAG_DEVICE))
            .filter_map(|e| cosigner_key(e.key()).ok())
            .collect();
        out.push((party, keys));
    }
    out
}

/// Why the cosignatures of a note could not be counted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MissingCosignersError {
    /// The note is malformed, or a line by an expected cosigner does not
    /// verify (C2SP signed-note: a bad line by a known key rejects the
    /// note). Evidence of tampering by whoever served the note.
    #[error("the checkpoint's cosignatures do not verify: {0}")]
    Cosignature(#[from] CosignatureError),
}

/// The expected cosigners that have not cosigned `note` (a checkpoint note
/// as served, with its gathered cosignature lines), in the order given.
/// Each line by an expected key is verified against the note's checkpoint
/// body; lines by other keys are ignored. The caller verifies the note
/// itself under the log key first (`SignedCheckpoint::verify`).
pub fn missing_cosigners(
    note: &[u8],
    expected: &[CosignerKey],
) -> Result<Vec<CosignerKey>, MissingCosignersError> {
    // One verifier per (name, key ID): signed_note refuses ambiguous keys.
    let mut unique: Vec<CosignerKey> = Vec::new();
    for k in expected {
        if !unique
            .iter()
            .any(|u| u.name() == k.name() && u.key_id() == k.key_id())
        {
            unique.push(k.clone());
        }
    }
    let verified = verify_cosignatures(note, &unique)?;
    Ok(expected
        .iter()
        .filter(|k| {
            !verified
                .iter()
                .any(|c| c.name() == k.name() && c.key_id() == k.key_id())
        })
        .cloned()
        .collect())
}

/// Whether a checkpoint is final: cosigned by a member of every party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finality {
    /// A device of every party cosigned.
    Final,
    /// These parties (in the order given) have no verified cosignature.
    /// Past a checkpoint interval (and the parties' usual delay), a missing
    /// party was likely shown another history: compare with it.
    Pending {
        /// The parties that have not cosigned.
        missing: Vec<PartyId>,
    },
}

impl Finality {
    /// Whether it is [`Finality::Final`].
    pub fn is_final(&self) -> bool {
        matches!(self, Finality::Final)
    }
}

/// Why finality could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FinalityError {
    /// The cosignatures could not be counted.
    #[error(transparent)]
    Cosigners(#[from] MissingCosignersError),
    /// No party was given: a checkpoint is never final by default.
    #[error("no parties given: finality needs every party's cosigner keys")]
    NoParties,
}

/// Whether `note` (a checkpoint note as served, verified by the caller
/// under the log key) is final: a device of every party in `parties`
/// (each with its devices' cosigner keys, e.g. from [`party_cosigners`])
/// has a verified cosignature on it. A party with no keys is always
/// missing.
pub fn is_final(
    note: &[u8],
    parties: &[(PartyId, Vec<CosignerKey>)],
) -> Result<Finality, FinalityError> {
    if parties.is_empty() {
        return Err(FinalityError::NoParties);
    }
    let all: Vec<CosignerKey> = parties
        .iter()
        .flat_map(|(_, k)| k.iter().cloned())
        .collect();
    let missing_keys = missing_cosigners(note, &all)?;
    let missing: Vec<PartyId> = parties
        .iter()
        .filter(|(_, keys)| keys.iter().all(|k| missing_keys.contains(k)))
        .map(|(p, _)| *p)
        .collect();
    Ok(if missing.is_empty() {
        Finality::Final
    } else {
        Finality::Pending { missing }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use backchannel_codec::TalksId;
    use backchannel_crypto::{SecretKey, Signer};
    use backchannel_tlog::{Checkpoint, MemoryHashStore, NodeOrigin, cosign_note};

    fn log_key() -> SecretKey {
        SecretKey::from_seed(&[0x51; 32]).expect("valid seed")
    }

    fn origin() -> LogOrigin {
        LogOrigin::new(
            &NodeOrigin::new("node.example").expect("valid"),
            TalksId([7; 16]),
        )
    }

    /// A log of `n` leaves, each hash `(tag, i)`.
    fn tree(tag: u8, n: u64) -> MemoryHashStore {
        let mut t = MemoryHashStore::new();
        for i in 0..n {
            let mut leaf = [tag; 32];
            leaf[..8].copy_from_slice(&i.to_be_bytes());
            t.append(&Digest(leaf)).expect("appends");
        }
        t
    }

    fn note(t: &MemoryHashStore, size: u64) -> Vec<u8> {
        Checkpoint {
            origin: origin(),
            size,
            root: t.root_at(size).expect("root"),
        }
        .sign(&log_key())
        .expect("signs")
        .note()
        .to_vec()
    }

    fn same_size() -> ForkEvidence {
        let (a, b) = (tree(1, 5), tree(2, 5));
        ForkEvidence::from_checkpoints(
            &note(&a, 5),
            &note(&b, 5),
            &log_key().public_key(),
            &origin(),
        )
        .expect("a fork")
    }

    fn prefix() -> ForkEvidence {
        // History a has 3 leaves; history b's first 3 differ, and it goes on to 7.
        let (a, b) = (tree(1, 3), tree(2, 7));
        let proof = b.prove_consistency(3, 7).expect("proves");
        let prefix_root = b.root_at(3).expect("root");
        ForkEvidence::from_prefix(
            &note(&b, 7),
            &note(&a, 3),
            &prefix_root,
            &proof,
            &log_key().public_key(),
            &origin(),
        )
        .expect("a fork")
    }

    #[test]
    fn both_forms_round_trip_and_verify() {
        for (evidence, later) in [(same_size(), None), (prefix(), Some(7))] {
            let bytes = evidence.to_canonical_bytes();
            let decoded = ForkEvidence::from_canonical_bytes(&bytes).expect("decodes");
            assert_eq!(decoded, evidence);
            let v = decoded
                .verify(&log_key().public_key(), &origin())
                .expect("verifies");
            assert_ne!(v.root_a, v.root_b);
            assert_eq!(v.later.map(|(s, _)| s), later);
            let json = serde_json::to_value(v.summary()).expect("serialises");
            assert_eq!(json["size"], if later.is_some() { 3 } else { 5 });
            assert_eq!(json["origin"], origin().to_string());
        }
    }

    #[test]
    fn the_order_of_the_notes_does_not_matter() {
        let (a, b) = (tree(1, 5), tree(2, 5));
        let k = log_key().public_key();
        let ab = ForkEvidence::from_checkpoints(&note(&a, 5), &note(&b, 5), &k, &origin());
        let ba = ForkEvidence::from_checkpoints(&note(&b, 5), &note(&a, 5), &k, &origin());
        assert_eq!(ab, ba);
    }

    #[test]
    fn the_format_is_strict() {
        for evidence in [same_size(), prefix()] {
            let good = evidence.to_canonical_bytes();
            // Trailing bytes.
            let mut long = good.clone();
            long.push(0);
            assert!(matches!(
                ForkEvidence::from_canonical_bytes(&long),
                Err(DecodeError::TrailingBytes { count: 1 })
            ));
            // Another version, another form.
            for (at, value) in [(0, 2u8), (0, 0), (1, 0), (1, 3)] {
                let mut bad = good.clone();
                bad[at] = value;
                assert!(matches!(
                    ForkEvidence::from_canonical_bytes(&bad),
                    Err(DecodeError::UnknownValue { .. })
                ));
            }
            // Every truncation.
            for len in 0..good.len() {
                assert!(ForkEvidence::from_canonical_bytes(&good[..len]).is_err());
            }
        }
        // The form byte swapped between the two shapes.
        let mut bad = same_size().to_canonical_bytes();
        bad[1] = FORM_PREFIX;
        assert!(ForkEvidence::from_canonical_bytes(&bad).is_err());
    }

    /// Builds evidence bytes by hand.
    fn raw(form: u8, a: &[u8], b: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(FORK_EVIDENCE_VERSION);
        w.u8(form);
        w.bytes(a);
        w.bytes(b);
        w.raw(tail);
        w.into_bytes()
    }

    #[test]
    fn decoding_refuses_what_is_not_a_fork_or_not_canonical() {
        let (a, b) = (tree(1, 5), tree(2, 5));
        let (na, nb) = (note(&a, 5), note(&b, 5));
        let (lo, hi) = if a.root().expect("root") < b.root().expect("root") {
            (na.clone(), nb.clone())
        } else {
            (nb.clone(), na.clone())
        };
        assert!(ForkEvidence::from_canonical_bytes(&raw(FORM_SAME_SIZE, &lo, &hi, &[])).is_ok());
        // Roots out of order, or equal.
        assert!(ForkEvidence::from_canonical_bytes(&raw(FORM_SAME_SIZE, &hi, &lo, &[])).is_err());
        assert!(ForkEvidence::from_canonical_bytes(&raw(FORM_SAME_SIZE, &lo, &lo, &[])).is_err());
        // Different sizes in the same-size form.
        let n3 = note(&a, 3);
        assert!(ForkEvidence::from_canonical_bytes(&raw(FORM_SAME_SIZE, &n3, &hi, &[])).is_err());
        // A cosignature line kept on a note.
        let w = SecretKey::from_seed(&[9; 32]).expect("valid seed");
        let cosigned = cosign_note(&lo, &w, "bc-w", 1).expect("cosigns");
        assert!(
            ForkEvidence::from_canonical_bytes(&raw(FORM_SAME_SIZE, &cosigned, &hi, &[])).is_err()
        );
        // Notes of two origins.
        let other = Checkpoint {
            origin: LogOrigin::new(
                &NodeOrigin::new("node.example").expect("valid"),
                TalksId([8; 16]),
            ),
            size: 5,
            root: Digest([0xff; 32]),
        }
        .sign(&log_key())
        .expect("signs")
        .note()
        .to_vec();
        assert!(
            ForkEvidence::from_canonical_bytes(&raw(FORM_SAME_SIZE, &lo, &other, &[])).is_err()
        );
        // Prefix form: the prefix root equal to the first note's root.
        let b7 = tree(2, 7);
        let proof = b7.prove_consistency(3, 7).expect("proves");
        let mut tail = Writer::new();
        a.root_at(3).expect("root").encode(&mut tail);
        proof.encode(&mut tail);
        assert!(
            ForkEvidence::from_canonical_bytes(&raw(
                FORM_PREFIX,
                &n3,
                &note(&b7, 7),
                tail.as_bytes()
            ))
            .is_err()
        );
        // Prefix form: a proof for other sizes.
        let proof = b7.prove_consistency(2, 7).expect("proves");
        let mut tail = Writer::new();
        b7.root_at(2).expect("root").encode(&mut tail);
        proof.encode(&mut tail);
        assert!(
            ForkEvidence::from_canonical_bytes(&raw(
                FORM_PREFIX,
                &n3,
                &note(&b7, 7),
                tail.as_bytes()
            ))
            .is_err()
        );
    }

    #[test]
    fn one_history_is_not_a_fork() {
        let k = log_key().public_key();
        let t = tree(1, 7);
        assert_eq!(
            ForkEvidence::from_checkpoints(&note(&t, 5), &note(&t, 5), &k, &origin()),
            Err(NotAFork::SameRoot { size: 5 })
        );
        assert_eq!(
            ForkEvidence::from_checkpoints(&note(&t, 3), &note(&t, 7), &k, &origin()),
            Err(NotAFork::DifferentSizes {
                size_a: 3,
                size_b: 7
            })
        );
        let proof = t.prove_consistency(3, 7).expect("proves");
        let root3 = t.root_at(3).expect("root");
        assert_eq!(
            ForkEvidence::from_prefix(&note(&t, 3), &note(&t, 7), &root3, &proof, &k, &origin()),
            Err(NotAFork::Consistent { old: 3, new: 7 })
        );
        // A wrong prefix root with an honest proof: the proof fails, no evidence.
        assert_eq!(
            ForkEvidence::from_prefix(
                &note(&t, 3),
                &note(&t, 7),
                &Digest([1; 32]),
                &proof,
                &k,
                &origin()
            ),
            Err(NotAFork::BadProof { old: 3, new: 7 })
        );
        // A note not signed by the log key.
        let other = SecretKey::from_seed(&[0x99; 32]).expect("valid seed");
        let forged = Checkpoint {
            origin: origin(),
            size: 5,
            root: Digest([3; 32]),
        }
        .sign(&other)
        .expect("signs")
        .note()
        .to_vec();
        assert!(matches!(
            ForkEvidence::from_checkpoints(&note(&t, 5), &forged, &k, &origin()),
            Err(NotAFork::Checkpoint {
                which: Which::B,
                ..
            })
        ));
    }

    #[test]
    fn verification_needs_the_right_key_and_origin() {
        let e = same_size();
        let other = SecretKey::from_seed(&[0x99; 32]).expect("valid seed");
        assert!(matches!(
            e.verify(&other.public_key(), &origin()),
            Err(ForkError::Checkpoint {
                which: Which::A,
                ..
            })
        ));
        let elsewhere = LogOrigin::new(
            &NodeOrigin::new("node.example").expect("valid"),
            TalksId([8; 16]),
        );
        assert!(e.verify(&log_key().public_key(), &elsewhere).is_err());
    }

    #[test]
    fn compare_finds_the_smallest_differing_size() {
        // Followers are built from real checkpoints through `advance`.
        use backchannel_tlog::LeafData;
        let leaves = |tag: u8, n: u64| -> Vec<LeafData> {
            (0..n)
                .map(|seq| LeafData {
                    seq,
                    timestamp_ms: 1,
                    room: backchannel_codec::RoomId([tag; 16]),
                    header_hash: Digest([tag; 32]),
                    body_hash: Digest([0; 32]),
                })
                .collect()
        };
        let follow = |ls: &[LeafData], sizes: &[u64]| -> Follower {
            let mut f = Follower::new();
            for &s in sizes {
                let mut t = MemoryHashStore::new();
                for l in &ls[..s as usize] {
                    t.append(&l.hash()).expect("appends");
                }
                let cp = Checkpoint {
                    origin: origin(),
                    size: s,
                    root: t.root().expect("root"),
                }
                .sign(&log_key())
                .expect("signs");
                f = f
                    .advance(&cp, &ls[f.size() as usize..s as usize])
                    .expect("verifies");
            }
            f
        };
        let mut b_leaves = leaves(1, 6);
        b_leaves[4] = leaves(2, 6)[4];
        let a = follow(&leaves(1, 6), &[2, 4, 6]);
        let b = follow(&b_leaves, &[2, 3, 4, 6]);
        assert_eq!(
            compare(&a, &a),
            Comparison::Consistent {
                compared: 3,
                largest: 6
            }
        );
        assert!(matches!(
            compare(&a, &b),
            Comparison::Forked { size: 6, .. }
        ));
        let c = follow(&leaves(1, 6), &[3, 5]);
        assert_eq!(compare(&a, &c), Comparison::Inconclusive);
        assert_eq!(compare(&Follower::new(), &a), Comparison::Inconclusive);
    }
}
