//! One device's session in one talks: receive into a verified archive,
//! follow and verify the log, witness checkpoints. Sending and keeping the
//! rooms' MLS groups in step are in [`crate::rooms`].
//!
//! Everything the session learns is kept in its [`ClientStore`]: the
//! archive (one record per accepted envelope, by seq), the log follower,
//! the witness, the receipts awaiting inclusion and the verified leaves not
//! yet accounted for. A restarted session resumes from what it stored. The
//! replay of key validity over the archived statements
//! ([`backchannel_core::replay::Replay`]) is not stored: it is rebuilt from
//! the archive when the session opens (opening reads the archive once) and
//! kept up to date as envelopes are archived.
//!
//! Verification, as the client issue asks, without per-envelope proofs:
//! - every delivered envelope's body is re-hashed against its header (by
//!   [`crate::net`]), its receipt is verified against the node's log key,
//!   its header signature against the sender's key (see below), and its
//!   body is processed by the room's MLS group in log order: a handshake
//!   advances the group, a Welcome joins it, an application message is
//!   decrypted (its MLS sender must be the header's sender) and must open
//!   the header's commitment. A body this device cannot read is archived
//!   with the reason (sent before it joined, a Welcome for another device,
//!   or evidence against its sender) rather than stopping the receive;
//! - the sender's key is judged by log position, not by today's access
//!   list alone: it is the key on the access list the client passes to
//!   [`Session::receive`] (the current one: the mediator's device before
//!   any roster, and devices seated since), or else a device key that the
//!   replay of the statements archived before the envelope's seq knows as
//!   certified at or before that seq. So an envelope a device sent while
//!   it was on the list is still accepted by a client that receives it
//!   after the device was removed (revoked, lost, its member removed); a
//!   key neither on the list nor certified there is evidence naming the
//!   seq. Revocation and expiry do not refuse an envelope: the node
//!   sequences a listed device's envelopes even once the record revoked
//!   it, and every client must hold the same archive, so views mark what a
//!   device sent after its revocation or expiry ([`revoked_or_expired`])
//!   and replay rejects whatever such a key signs, by log position.
//! - each new checkpoint is verified from the data tiles of the new range,
//!   re-hashed into the follower's compact tree ([`crate::follow`]), then
//!   every verified leaf of the session's rooms must be in the archive with
//!   the same leaf once the session has fetched past it (leaves verified
//!   ahead of the fetch cursor are kept until then), and every receipt
//!   awaiting inclusion must be settled within
//!   [`crate::follow::MAX_MERGE_DELAY_MS`];
//! - only a checkpoint verified that way is cosigned, and the witness state
//!   is stored before the cosignature is sent.
//!
//! What the node stored can later change under the client (an operator or
//! an attacker with its database). The session names the seq each time:
//! - a page the node refuses (`500 internal`: it found its own log
//!   corrupt) is bisected down to the single seqs it cannot serve, which
//!   [`Session::receive`] steps over; the accounting in
//!   [`Session::verify_log`] then reports those of its rooms as withheld;
//! - a data tile the node refuses is bisected the same way and the first
//!   seq it will not serve is named ([`SessionError::Unserved`]);
//! - leaf data that does not hash into the node's signed checkpoint is
//!   blamed on the seqs whose leaves differ from the node's own stored leaf
//!   hashes, each shown by the node's inclusion proof of the committed leaf
//!   ([`Discrepancy::NotCommitted`]);
//! - leaves served again for seqs verified before are compared with the
//!   archive ([`Session::verify_log`] for the first tile it reads,
//!   [`Session::check_archive`] for the whole verified log and every
//!   archived envelope);
//! - [`Session::prove_included`] checks the node's inclusion proof against
//!   the leaf re-computed from the archive, never a leaf hash the node
//!   supplies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::NonZeroUsize;

use backchannel_codec::{
    Decode, DecodeError, Encode, Reader, RoomId, StatementId, TalksId, Writer,
};
use backchannel_core::replay::{Accepted, KeyRole, LoggedStatement, Rejected, Replay};
use backchannel_crypto::{Digest, KeyId, PublicKey, SecretKey, Signer};
use backchannel_statement::{AccessList, Kind, SignedHeader, SignedStatement};
use backchannel_tlog::{
    InclusionProof, LeafData, LogOrigin, NodeOrigin, Receipt, SignedCheckpoint,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{CryptoRngCore, SeedableRng};
use thiserror::Error;

use crate::follow::{
    self, FollowError, Follower, Pending, TILE_HEIGHT, TILE_WIDTH, Withheld, Witness,
};
use crate::net::{Delivered, NetError, NodeClient, Page};
use crate::seal::{AppMessage, Content};
use crate::store::{ClientStore, ClientStoreError, Namespace, Put};
use backchannel_mls::Member;

/// How many envelopes a page asks for: the most the node serves in one.
pub const PAGE_LIMIT: usize = 1000;

/// The most seqs one [`Session::receive`] steps over because the node
/// refuses to serve them (`500 internal`). Each costs about ten requests to
/// find (the page is halved down to the one seq); past this many the node
/// is refusing a whole range, and the receive stops with evidence instead
/// of probing seq by seq. The cursor has moved past the ones stepped over,
/// so the next receive goes on from there.
pub const MAX_REFUSED_PER_RECEIVE: usize = 256;

/// The most verified leaves a session keeps to account for once it has
/// fetched past them: a client that verifies the log ahead of its fetch
/// cursor (the checkpoint moved on while it was receiving) holds the
/// verified leaves beyond the cursor until the next
/// [`Session::verify_log`]. 65 536 leaves of 97 bytes is about 6 MiB
/// persisted; a client that far behind must receive before it verifies
/// more.
pub const MAX_UNACCOUNTED: usize = 1 << 16;

/// The most leaves one blame proves with the node's inclusion proofs
/// (one request each) when leaf data does not hash into a checkpoint: a
/// rewrite touches a few envelopes; more than this are named only by the
/// root that does not match.
pub const MAX_BLAME_PROOFS: usize = 64;

/// The format version of the persisted unaccounted leaves.
const UNACCOUNTED_VERSION: u8 = 1;

/// The format version of an archived envelope record (2: with why its
/// body could not be read here).
const ARCHIVE_VERSION: u8 = 2;

/// The longest reason an archived record gives for a body it could not
/// read (the reasons are this crate's own sentences, far shorter).
const MAX_UNREADABLE: usize = 4096;

/// Why an envelope is archived without its sender checked: it came before
/// this device joined its room, from a key neither the access list nor
/// the record this device could read by then names. A copy of the room's
/// statements (`crate::rooms`) may certify it later: each receive that
/// opens a copy checks such envelopes again, and a sender then placed has
/// its header signature verified (evidence if it fails).
pub const UNPLACED: &str =
    "sent before this device joined the room, by a key it cannot place (not checked)";

/// One accepted envelope, as archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// Its seq.
    pub seq: u64,
    /// The node's timestamp.
    pub node_time: u64,
    /// The signed header.
    pub header: SignedHeader,
    /// Its receipt.
    pub receipt: Receipt,
    /// What it carried, if the body could be opened (absent once purged,
    /// and for handshakes and Welcomes).
    pub message: Option<AppMessage>,
    /// Why the body could not be read on this device, in words a person
    /// can act on (sent before it joined the room, a Welcome for another
    /// device, evidence against the sender); `None` when it was read, or
    /// carries nothing to read.
    pub unreadable: Option<String>,
}

impl Archived {
    /// The leaf the log holds for this envelope, re-computed from what was
    /// archived (seq, node time, room, header hash, and the body hash the
    /// signed header carries). Its receipt, verified on receipt, signs this
    /// leaf.
    pub fn leaf(&self) -> LeafData {
        let h = self.header.header();
        LeafData {
            seq: self.seq,
            timestamp_ms: self.node_time,
            room: h.room,
            header_hash: self.header.hash(),
            body_hash: h.body_hash,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(ARCHIVE_VERSION);
        w.u64(self.seq);
        w.u64(self.node_time);
        w.raw(&self.header.to_bytes());
        w.bytes(&self.receipt.to_canonical_bytes());
        match &self.message {
            Some(m) => {
                w.u8(1);
                w.bytes(&m.to_bytes());
            }
            None => w.u8(0),
        }
        match &self.unreadable {
            Some(why) => {
                w.u8(1);
                w.bytes(why.as_bytes());
            }
            None => w.u8(0),
        }
        w.into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        let bad = |e: DecodeError| SessionError::Stored(e.to_string());
        let mut r = Reader::new(bytes);
        r.version("archive record version", ARCHIVE_VERSION)
            .map_err(bad)?;
        let seq = r.u64("seq").map_err(bad)?;
        let node_time = r.u64("node time").map_err(bad)?;
        let header = SignedHeader::decode(
            r.take(backchannel_statement::header::SIGNED_HEADER_LEN, "header")
                .map_err(bad)?,
        )
        .map_err(bad)?;
        let receipt = Receipt::from_canonical_bytes(r.bytes("receipt", 1 << 16).map_err(bad)?)
            .map_err(bad)?;
        let message = match r.u8("message present").map_err(bad)? {
            0 => None,
            _ => Some(
                AppMessage::from_bytes(r.bytes("message", 1 << 21).map_err(bad)?).map_err(bad)?,
            ),
        };
        let unreadable = match r.u8("unreadable present").map_err(bad)? {
            0 => None,
            _ => Some(
                String::from_utf8(r.bytes("unreadable", MAX_UNREADABLE).map_err(bad)?.to_vec())
                    .map_err(|_| SessionError::Stored("unreadable: not UTF-8".into()))?,
            ),
        };
        r.finish().map_err(bad)?;
        Ok(Self {
            seq,
            node_time,
            header,
            receipt,
            message,
            unreadable,
        })
    }
}

/// Why a session step failed.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The node refused or could not be reached.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Local storage failed.
    #[error(transparent)]
    Store(#[from] ClientStoreError),
    /// Stored state does not decode.
    #[error("stored session state is damaged: {0}")]
    Stored(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
    /// Evidence against the node: what was served does not verify.
    #[error("evidence against the node: {0}")]
    Evidence(String),
    /// Evidence against the node: it refuses to serve the leaf data of
    /// `seq` (`500 internal`), which lies below the signed checkpoint of
    /// `size`. The log cannot be verified past it, so nothing after it can
    /// be accounted for either.
    #[error(
        "evidence against the node: it refuses to serve the leaf data of seq {seq}, below \
         its signed checkpoint of size {size}: it withholds the envelope at seq {seq}; keep \
         the signed checkpoint, report the node to its operator and to the other parties, \
         and do not rely on the log past seq {seq} until the node serves it"
    )]
    Unserved {
        /// The first seq whose leaf data the node refuses.
        seq: u64,
        /// The size of the signed checkpoint it lies below.
        size: u64,
    },
    /// The call cannot be made in the session's state.
    #[error("{0}")]
    Usage(String),
}

/// Something the node now serves differently from what this session
/// verified and archived ([`Session::check_archive`]), or a leaf the node's
/// tree does not commit to as served ([`Session::verify_log`]). Each names
/// its seq; all are evidence against the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discrepancy {
    /// The leaf data the node serves for `seq` is not the leaf of the
    /// envelope archived there, whose leaf the node signed in its receipt
    /// (and, once the session verified the log past it, its checkpoint
    /// committed to).
    Rewritten {
        /// The seq.
        seq: u64,
        /// The leaf hash re-computed from the archive.
        archived: Digest,
        /// The leaf hash of the leaf data served now.
        served: Digest,
    },
    /// The leaf data the node serves for `seq` is not the leaf its tree
    /// commits to: the node's own stored leaf hash, which its inclusion
    /// proof leads into the signed (or verified) root, is `committed`.
    NotCommitted {
        /// The seq.
        seq: u64,
        /// The leaf hash the tree commits to.
        committed: Digest,
        /// The leaf hash of the leaf data served.
        served: Digest,
    },
    /// The node refuses to serve `seq` (its leaf data, or a page of
    /// envelopes holding it: `500 internal`), though its tree holds it.
    Unserved {
        /// The seq.
        seq: u64,
    },
    /// The envelope the node serves again for `seq` is not the one
    /// archived, does not verify, or is no longer served.
    Envelope {
        /// The seq.
        seq: u64,
        /// What differs.
        what: String,
    },
    /// The leaf data served for `[0, size)` re-hashes to another root than
    /// the one verified at `size`, and no leaf could be singled out (the
    /// node's stored leaf hashes were rewritten to match).
    Root {
        /// The verified size.
        size: u64,
        /// The root verified at that size.
        verified: Digest,
        /// The root of the leaf data served now.
        computed: Digest,
    },
}

impl Discrepancy {
    /// The seq it names, if it names one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Discrepancy::Rewritten { seq, .. }
            | Discrepancy::NotCommitted { seq, .. }
            | Discrepancy::Unserved { seq }
            | Discrepancy::Envelope { seq, .. } => Some(*seq),
            Discrepancy::Root { .. } => None,
        }
    }
}

impl fmt::Display for Discrepancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Discrepancy::Rewritten {
                seq,
                archived,
                served,
            } => write!(
                f,
                "seq {seq}: the node now serves leaf data hashing to {} for seq {seq}, but the \
                 envelope archived there, whose leaf the node signed in its receipt, has leaf \
                 {}: the stored envelope was rewritten",
                served.to_hex(),
                archived.to_hex()
            ),
            Discrepancy::NotCommitted {
                seq,
                committed,
                served,
            } => write!(
                f,
                "seq {seq}: the node's tree commits to leaf {} at seq {seq} (its own inclusion \
                 proof shows it), but the leaf data it serves for seq {seq} hashes to {}: the \
                 stored envelope was rewritten",
                committed.to_hex(),
                served.to_hex()
            ),
            Discrepancy::Unserved { seq } => write!(
                f,
                "seq {seq}: the node refuses to serve seq {seq}, which its log holds: it \
                 withholds that envelope"
            ),
            Discrepancy::Envelope { seq, what } => write!(f, "seq {seq}: {what}"),
            Discrepancy::Root {
                size,
                verified,
                computed,
            } => write!(
                f,
                "the leaf data the node serves for the first {size} leaves hashes to root {}, \
                 not the root {} verified at that size: the node rewrote its log",
                computed.to_hex(),
                verified.to_hex()
            ),
        }
    }
}

/// What one log verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogReport {
    /// The verified size.
    pub size: u64,
    /// The verified root.
    pub root: Digest,
    /// Envelopes of this session's rooms the log holds but the archive
    /// lacks, or holds differently.
    pub withheld: Vec<Withheld>,
    /// Receipts not merged within the deadline.
    pub not_merged: Vec<u64>,
}

/// What replaying the archive found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Seqs of statements replay accepted.
    pub accepted: Vec<u64>,
    /// Seqs of statements replay rejected, with why.
    pub rejected: Vec<(u64, String)>,
    /// Statements whose checkpoint reference disagrees with this session's
    /// verified tree: (seq, size, our root, their root) — fork evidence.
    pub forks: Vec<(u64, u64, Digest, Digest)>,
    /// Equivocations: one key signed two statements with the same
    /// statement id and different bytes, both archived here — (first seq,
    /// later seq, statement id), evidence against the author
    /// ([`backchannel_core::replay::Equivocation`]).
    pub equivocations: Vec<(u64, u64, StatementId)>,
}

/// Whether device `other` belongs to the party of device `me` (by the
/// access list, or the record for a device since removed): only a member
/// of one's own party hands one history.
fn same_party(list: &AccessList, replay: &Replay, me: &KeyId, other: &KeyId) -> bool {
    let party = |k: &KeyId| {
        list.get(k)
            .map(|e| e.party)
            .or_else(|| match replay.key(k).map(|s| &s.role) {
                Some(KeyRole::Device { party, .. }) => Some(*party),
                _ => None,
            })
    };
    party(me).is_some() && party(me) == party(other)
}

/// A device's session in one talks.
pub struct Session<S: ClientStore> {
    pub(crate) store: std::sync::Arc<S>,
    pub(crate) node: NodeClient,
    pub(crate) device: SecretKey,
    pub(crate) talks: TalksId,
    pub(crate) log_key: PublicKey,
    origin: LogOrigin,
    /// This device's MLS state in the talks: one group per room it is in.
    /// Persisted with the archive and the cursor in one write.
    pub(crate) mls: Member,
    /// Per room: what makes an update of this device's own leaf due,
    /// counted since its last commit there (`crate::rooms::PcsDue`).
    pub(crate) pcs: BTreeMap<RoomId, crate::rooms::PcsDue>,
    /// The next seq to fetch.
    pub(crate) next: u64,
    follower: Follower,
    witness: Witness,
    pub(crate) pending: Pending,
    pub(crate) idempotency: u64,
    /// Verified leaves at or past the fetch cursor, not yet accounted for
    /// (the log was verified ahead of receiving), in seq order.
    unaccounted: Vec<LeafData>,
    /// Key validity replayed over every statement archived so far (below
    /// the fetch cursor), in seq order: which device keys were valid at
    /// which seq ([`sender_key`]). Rebuilt from the archive on open.
    pub(crate) keys: Replay,
    /// This home's former device keys in the talks (a restore moved it to
    /// a new one): their messages that were sent but not yet archived when
    /// the home was copied are opened from the plaintext kept at sending,
    /// as this device's own are.
    former: Vec<KeyId>,
}

pub(crate) fn key(talks: TalksId, name: &str) -> Vec<u8> {
    let mut k = talks.0.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// The store key of one room's value `name` in `talks`.
pub(crate) fn room_key(talks: TalksId, name: &str, room: RoomId) -> Vec<u8> {
    let mut k = key(talks, name);
    k.extend_from_slice(room.as_bytes());
    k
}

pub(crate) fn seq_key(talks: TalksId, seq: u64) -> Vec<u8> {
    let mut k = talks.0.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The persisted unaccounted leaves: `u8 version ‖ u32 n ‖ n × LeafData`,
/// seqs strictly increasing.
fn encode_leaves(leaves: &[LeafData]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(UNACCOUNTED_VERSION);
    w.list(leaves);
    w.into_bytes()
}

fn decode_leaves(bytes: &[u8]) -> Result<Vec<LeafData>, SessionError> {
    let bad = |e: DecodeError| SessionError::Stored(e.to_string());
    let mut r = Reader::new(bytes);
    r.version("unaccounted leaves version", UNACCOUNTED_VERSION)
        .map_err(bad)?;
    let leaves: Vec<LeafData> = r.list("unaccounted leaves", MAX_UNACCOUNTED).map_err(bad)?;
    r.finish().map_err(bad)?;
    backchannel_codec::check_strictly_sorted(&leaves, "unaccounted leaves", |l| l.seq)
        .map_err(bad)?;
    Ok(leaves)
}

/// The device's MLS state in `talks` as stored (a new one if none is).
async fn load_mls<S: ClientStore>(
    store: &S,
    talks: TalksId,
    device: &SecretKey,
) -> Result<Member, SessionError> {
    let device = SecretKey::from_seed(&device.seed())
        .map_err(|e| SessionError::Stored(format!("the device key: {e}")))?;
    match store.get(Namespace::Mls, &key(talks, "mls")).await? {
        Some(b) => Member::from_bytes(talks, device, &b)
            .map_err(|e| SessionError::Stored(format!("MLS state: {e}"))),
        None => Ok(Member::new(talks, device)),
    }
}

/// Whether the node answered `500 internal`: it found its own stored data
/// corrupt (docs/api.md), so asking again for the same thing will not help
/// but asking for less may.
fn refused(e: &NetError) -> bool {
    e.status() == Some(500)
}

/// The statement `archived` carries, if its body was opened and holds one
/// (`Err` when the statement bytes do not decode).
fn statement_of(archived: &Archived) -> Option<Result<SignedStatement, DecodeError>> {
    match &archived.message {
        Some(AppMessage {
            content: Content::Statement(bytes),
            ..
        }) => Some(SignedStatement::decode(bytes)),
        _ => None,
    }
}

/// One archived envelope carrying a statement, replayed by
/// [`replay_statements`].
pub struct Replayed<'a> {
    /// The envelope, as archived.
    pub archived: &'a Archived,
    /// The statement and replay's verdict on it, or why its bytes do not
    /// decode.
    pub statement: Result<(SignedStatement, Result<Accepted, Rejected>), DecodeError>,
}

/// Replays the statements `archive` carries (in log order) into `replay`,
/// their signatures batch-verified ahead on this machine's cores
/// (`Replay::apply_all`: the verdicts of applying them one by one; `rng`
/// seeds the batches' coefficients and must be unpredictable to the
/// signers). One [`Replayed`] per envelope that carries a statement.
pub fn replay_statements<'a>(
    replay: &mut Replay,
    archive: &'a [Archived],
    rng: &mut impl CryptoRngCore,
) -> Vec<Replayed<'a>> {
    let decoded: Vec<(&Archived, Result<SignedStatement, DecodeError>)> = archive
        .iter()
        .filter_map(|a| statement_of(a).map(|d| (a, d)))
        .collect();
    let entries: Vec<LoggedStatement<'_>> = decoded
        .iter()
        .filter_map(|(a, d)| {
            d.as_ref().ok().map(|statement| LoggedStatement {
                seq: a.seq,
                node_time: a.node_time,
                room: a.header.header().room,
                statement,
            })
        })
        .collect();
    let threads = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    let verdicts = replay.apply_all(&entries, threads, rng);
    drop(entries);
    let mut verdicts = verdicts.into_iter();
    decoded
        .into_iter()
        .filter_map(|(archived, d)| {
            let statement = match d {
                // One verdict per decoded statement, in order.
                Ok(s) => Ok((s, verdicts.next()?)),
                Err(e) => Err(e),
            };
            Some(Replayed {
                archived,
                statement,
            })
        })
        .collect()
}

/// Applies the statement `archived` carries, if any, to `replay`. A
/// statement that does not decode or that replay rejects changes nothing
/// ([`Session::replay`] reports it).
fn replay_archived(replay: &mut Replay, archived: &Archived) {
    if let Some(Ok(statement)) = statement_of(archived) {
        let _ = replay.apply(LoggedStatement {
            seq: archived.seq,
            node_time: archived.node_time,
            room: archived.header.header().room,
            statement: &statement,
        });
    }
}

/// The key the header signature of the envelope at `seq` from `sender` is
/// checked with; the error says why there is none.
///
/// - the sender's entry on `list`, the access list the client accepted
///   (the current one): it covers the mediator's device before any roster
///   is archived, and devices seated since;
/// - else a device key `replay` (the statements archived before `seq`)
///   certified at or before it (`valid_from <= seq`), revoked or expired
///   since or not: the node sequenced it while the device was on its list,
///   and every client must archive the same envelopes; views mark what a
///   device sent after its revocation or expiry ([`revoked_or_expired`]).
///
/// Talks authority and identity keys sign statements, not envelopes, so
/// replay lends only device keys.
fn sender_key(
    list: &AccessList,
    replay: &Replay,
    seq: u64,
    room: RoomId,
    sender: &KeyId,
) -> Result<PublicKey, String> {
    if let Some(entry) = list.get(sender) {
        if entry.rooms().binary_search(&room).is_err() {
            return Err("its sender is not seated in the envelope's room".to_owned());
        }
        return Ok(*entry.key());
    }
    let not_listed = "its sender is not on the access list";
    let Some(state) = replay.key(sender) else {
        return Err(not_listed.to_owned());
    };
    let KeyRole::Device { .. } = state.role else {
        return Err(format!(
            "{not_listed}, and the record knows its key only as one that signs statements, \
             not envelopes"
        ));
    };
    if state.valid_from > seq {
        return Err(format!(
            "{not_listed}, and its device key is certified only from seq {}",
            state.valid_from
        ));
    }
    // Revocation and expiry do not stop the archive: the node sequences a
    // revoked or expired device's envelopes for as long as the device is
    // on its list (it judges by the list, not the record), so a client
    // that refused them here would hold another archive than a client
    // that received them while the device was listed, and would refuse
    // the same seq for ever. Every client archives them alike; views show
    // them as sent after the revocation or expiry (`revoked_or_expired`),
    // and replay rejects whatever such a key signs, by log position.
    Ok(state.key)
}

/// Whether the device key that signed the envelope at `seq` (node time
/// `node_time`) was revoked before it, reported lost at or before its node
/// time, or had expired, by the record: `Some(why)` to show next to it.
///
/// Loss is judged by log position: the envelope is flagged if its node
/// timestamp (the node's, in seq order, never the signer's claim) is at or
/// after the time the revocation names, even if it was sequenced before
/// the revocation itself.
pub fn revoked_or_expired(
    replay: &Replay,
    sender: &KeyId,
    seq: u64,
    node_time: u64,
) -> Option<String> {
    let state = replay.key(sender)?;
    if state.lost_at.is_some_and(|t| node_time >= t)
        && let Some(r) = state.revoked_at
    {
        return Some(format!(
            "sent after its key was reported lost (the revocation at seq {r} dates the loss at or before this envelope)"
        ));
    }
    if let Some(r) = state.revoked_at.filter(|r| *r < seq) {
        return Some(format!("sent after its key was revoked at seq {r}"));
    }
    if let KeyRole::Device {
        not_after: Some(t), ..
    } = state.role
        && t < node_time
    {
        return Some(format!("sent after its device key expired (not after {t})"));
    }
    None
}

/// The RFC 6962 root of `leaves`, which must be the leaves `[0, n)` in
/// order: appended into a compact range (one subtree per set bit of the
/// count, as in [`Follower`]) and folded from the right.
fn root_of(leaves: &[LeafData]) -> Digest {
    let node = |l: &Digest, r: &Digest| {
        Digest(tlog_tiles::node_hash(tlog_tiles::Hash(l.0), tlog_tiles::Hash(r.0)).0)
    };
    let mut range: Vec<Digest> = Vec::new();
    for (leaf, size) in leaves.iter().zip(0u64..) {
        let mut hash = leaf.hash();
        let mut n = size;
        while n & 1 == 1 {
            let Some(left) = range.pop() else { break };
            hash = node(&left, &hash);
            n >>= 1;
        }
        range.push(hash);
    }
    let mut hashes = range.iter().rev();
    let Some(mut root) = hashes.next().copied() else {
        return follow::EMPTY_ROOT;
    };
    for left in hashes {
        root = node(left, &root);
    }
    root
}

/// Pages through the node's envelopes from a cursor. When the node refuses
/// a page (`500 internal`, or for an audit also a page that does not
/// check out), the page is halved until it holds one seq, which is then
/// stepped over and reported: a hole in the node's storage costs about
/// ten requests, and the envelopes around it are still read.
struct Pager {
    next: u64,
    limit: usize,
}

/// One step of a [`Pager`].
enum Paged {
    /// A page; the cursor is now its `next`.
    Page(Page),
    /// The node refuses to serve `seq`; the cursor is now past it.
    Refused {
        /// The seq.
        seq: u64,
        /// What the node answered.
        error: NetError,
    },
}

impl Pager {
    fn new(from: u64) -> Self {
        Self {
            next: from,
            limit: PAGE_LIMIT,
        }
    }

    /// The next page of at most `max` envelopes from the cursor; errors
    /// for which `skip` holds are bisected around, others returned.
    async fn step(
        &mut self,
        node: &NodeClient,
        talks: TalksId,
        max: usize,
        skip: impl Fn(&NetError) -> bool,
    ) -> Result<Paged, NetError> {
        loop {
            let limit = self.limit.min(max).max(1);
            match node.fetch(talks, self.next, limit).await {
                Ok(page) => {
                    if page.next == self.next && page.next < page.log_size {
                        return Err(NetError::Served(format!(
                            "a page from seq {} that ends where it starts, below the log size {}",
                            self.next, page.log_size
                        )));
                    }
                    self.next = page.next;
                    return Ok(Paged::Page(page));
                }
                Err(e) if skip(&e) => {
                    if limit > 1 {
                        self.limit = limit / 2;
                        continue;
                    }
                    let seq = self.next;
                    self.next = seq.saturating_add(1);
                    self.limit = PAGE_LIMIT;
                    return Ok(Paged::Refused { seq, error: e });
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl<S: ClientStore> Session<S> {
    /// Opens (or resumes) the session of `device` in `talks` on the node
    /// `node` (already pinned), whose log origin and key are `node_origin`
    /// and `log_key`.
    ///
    /// Resuming reads the whole archive once, to rebuild the replay of key
    /// validity that [`Session::receive`] judges senders by (nothing of it
    /// is stored apart from the archive).
    pub async fn open(
        store: std::sync::Arc<S>,
        node: NodeClient,
        device: SecretKey,
        talks: TalksId,
        node_origin: &NodeOrigin,
        log_key: PublicKey,
    ) -> Result<Self, SessionError> {
        let get = |name: &'static str| {
            let store = store.clone();
            async move { store.get(Namespace::Checkpoints, &key(talks, name)).await }
        };
        let decode_err = |e: DecodeError| SessionError::Stored(e.to_string());
        let follower = match get("follower").await? {
            Some(b) => Follower::from_canonical_bytes(&b).map_err(decode_err)?,
            None => Follower::new(),
        };
        let pending = match get("pending").await? {
            Some(b) => Pending::from_canonical_bytes(&b).map_err(decode_err)?,
            None => Pending::new(),
        };
        let witness = match store
            .get(Namespace::Cosigned, &key(talks, "witness"))
            .await?
        {
            Some(b) => Witness::from_canonical_bytes(&b).map_err(decode_err)?,
            None => Witness::new(),
        };
        let next = match get("next").await? {
            Some(b) => u64::from_be_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| SessionError::Stored("next seq".into()))?,
            ),
            None => 0,
        };
        let idempotency = match get("idempotency").await? {
            Some(b) => u64::from_be_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| SessionError::Stored("idempotency counter".into()))?,
            ),
            None => 0,
        };
        let unaccounted = match get("unaccounted").await? {
            Some(b) => decode_leaves(&b)?,
            None => Vec::new(),
        };
        let mls = load_mls(&*store, talks, &device).await?;
        let former = crate::restore::former_devices(&*store, talks).await?;
        let mut session = Self {
            former,
            store,
            mls,
            pcs: BTreeMap::new(),
            node,
            device,
            talks,
            log_key,
            origin: LogOrigin::new(node_origin, talks),
            next,
            follower,
            witness,
            pending,
            idempotency,
            unaccounted,
            keys: Replay::new(talks),
        };
        for archived in session.archive().await? {
            replay_archived(&mut session.keys, &archived);
        }
        let rooms = session.mls.rooms();
        session.pcs_load(&rooms).await?;
        Ok(session)
    }

    /// The node client.
    pub fn node(&self) -> &NodeClient {
        &self.node
    }

    /// The talks.
    pub fn talks(&self) -> TalksId {
        self.talks
    }

    /// The device key.
    pub fn device(&self) -> &SecretKey {
        &self.device
    }

    /// The verified log state.
    pub fn follower(&self) -> &Follower {
        &self.follower
    }

    /// The next seq this session will fetch (everything below is archived
    /// or not for its rooms).
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// How many of this session's own envelopes the node acknowledged
    /// (receipts held) but no verified checkpoint covers yet;
    /// [`Session::verify_log`] settles them and reports the overdue ones.
    pub fn pending_receipts(&self) -> usize {
        self.pending.len()
    }

    /// Fetches everything new of this session's rooms, verifies it and
    /// archives it. Returns the newly archived envelopes.
    ///
    /// `list` is the access list the client accepted (the current one).
    /// Each envelope's header signature is checked with its sender's key
    /// on `list`, or else, for a sender no longer on it, with the device
    /// key the record (the statements archived before the envelope's seq,
    /// replayed) shows certified at or before that seq (revoked or expired
    /// since or not: views mark those, see [`revoked_or_expired`]). So
    /// envelopes a device sent before it was removed from the list (revoked,
    /// lost, its member removed) are archived by a client that receives
    /// them only afterwards. Statements are applied to that replay in seq
    /// order as they are archived.
    ///
    /// A page the node refuses with `500 internal` (it found its own log
    /// corrupt, for example a deleted row) is bisected down to the seqs it
    /// cannot serve, which are stepped over: the envelopes around them are
    /// still archived, and [`Session::verify_log`] reports those of this
    /// session's rooms as withheld once it has verified their leaves. An
    /// envelope whose receipt, sender or header signature does not check
    /// out is evidence and stops the receive with an error naming its seq.
    pub async fn receive(&mut self, list: &AccessList) -> Result<Vec<Archived>, SessionError> {
        self.flush_unsent().await?;
        match self.receive_pages(list).await {
            Ok(out) => Ok(out),
            Err(e) => {
                // What this call processed but did not store is undone, so
                // that memory and the store agree again.
                if let Ok(m) = load_mls(&*self.store, self.talks, &self.device).await {
                    self.mls = m;
                }
                Err(e)
            }
        }
    }

    async fn receive_pages(&mut self, list: &AccessList) -> Result<Vec<Archived>, SessionError> {
        let mut out = Vec::new();
        let mut pager = Pager::new(self.next);
        let mut skipped = Vec::new();
        let mut copies = Vec::new();
        let mut handovers = self.pending_handovers().await?;
        loop {
            let mut writes = Vec::new();
            // The replay moves on with the archive: a page's statements
            // are applied to a copy, kept once the page is stored.
            let mut keys = None;
            let done = match pager
                .step(&self.node, self.talks, PAGE_LIMIT, refused)
                .await?
            {
                Paged::Page(page) => {
                    let mut replay = self.keys.clone();
                    for d in page.envelopes {
                        let archived = self.accept(list, &replay, d).await?;
                        replay_archived(&mut replay, &archived);
                        if let Some(AppMessage {
                            content: Content::Copy(bytes),
                            ..
                        }) = &archived.message
                        {
                            copies.push((
                                archived.header.header().room,
                                archived.seq,
                                bytes.clone(),
                            ));
                        }
                        if let Some(AppMessage {
                            content: Content::Handover(bytes),
                            ..
                        }) = &archived.message
                            && let Ok(part) = crate::handover::Part::from_bytes(bytes)
                            && crate::handover::is_for(&part, &self.device.public_key().id())
                            && !handovers.contains(&part.bundle)
                            && handovers.len() < crate::handover::MAX_PENDING
                            && same_party(
                                list,
                                &replay,
                                &self.device.public_key().id(),
                                &archived.header.header().sender,
                            )
                        {
                            // Owed durably with the page that brought the
                            // part: a process killed before applying it
                            // applies it at its next receive.
                            handovers.insert(part.bundle);
                            writes.push(self.pending_handovers_put(&handovers));
                        }
                        writes.push(Put {
                            ns: Namespace::Archive,
                            key: seq_key(self.talks, archived.seq),
                            value: Some(archived.encode()),
                        });
                        out.push(archived);
                    }
                    keys = Some(replay);
                    page.next >= page.log_size
                }
                Paged::Refused { seq, error } => {
                    let first = skipped.first().copied().unwrap_or(seq);
                    skipped.push(seq);
                    if skipped.len() > MAX_REFUSED_PER_RECEIVE {
                        return Err(SessionError::Evidence(format!(
                            "the node refuses to serve {} seqs, from seq {first} to seq {seq} \
                             ({error}); receive again to go on past them",
                            skipped.len()
                        )));
                    }
                    false
                }
            };
            self.next = pager.next;
            writes.push(Put {
                ns: Namespace::Checkpoints,
                key: key(self.talks, "next"),
                value: Some(self.next.to_be_bytes().to_vec()),
            });
            // The archive, the cursor and the MLS state move together.
            writes.push(Put {
                ns: Namespace::Mls,
                key: key(self.talks, "mls"),
                value: Some(self.mls.to_bytes()),
            });
            writes.extend(self.pcs_puts());
            self.store.put_many(writes).await?;
            if let Some(keys) = keys {
                self.keys = keys;
            }
            if done {
                break;
            }
        }
        // Copies open statements posted before this device joined; the
        // replay of key validity is rebuilt with them in their places.
        let mut opened = 0;
        for (room, at, bytes) in copies {
            let Ok(items) = crate::rooms::decode_copy(&bytes) else {
                continue;
            };
            let (n, _bad) = self.apply_copy(room, at, items).await?;
            opened += n;
        }
        // Handovers sealed to this device open what it could not read.
        for bundle in handovers {
            opened += self.apply_handover(list, bundle).await?;
        }
        if opened > 0 {
            self.place_senders(list).await?;
            for a in &mut out {
                if let Some(stored) = self.archived(a.seq).await? {
                    *a = stored;
                }
            }
        }
        Ok(out)
    }

    /// Rebuilds the replay of key validity from the archive (after copies
    /// or a handover opened statements in their places) and checks the
    /// envelopes archived without a placed sender ([`UNPLACED`]) again: a
    /// sender now placed has its header signature verified (evidence if it
    /// fails) and its envelope becomes one sent before this device joined,
    /// which a copy or handover may open. Returns how many it placed.
    pub(crate) async fn place_senders(&mut self, list: &AccessList) -> Result<usize, SessionError> {
        let mut replay = Replay::new(self.talks);
        let archive = self.archive().await?;
        for archived in &archive {
            replay_archived(&mut replay, archived);
        }
        let mut placed = Vec::new();
        for mut a in archive {
            if a.unreadable.as_deref() != Some(UNPLACED) {
                continue;
            }
            let h = *a.header.header();
            if let Ok(key) = sender_key(list, &replay, a.seq, h.room, &h.sender) {
                a.header.verify(&key).map_err(|_| {
                    SessionError::Evidence(format!(
                        "seq {}: its header signature does not verify",
                        a.seq
                    ))
                })?;
                a.unreadable = Some(crate::rooms::BEFORE_JOIN.into());
                placed.push(a.put(self.talks));
            }
        }
        let n = placed.len();
        if !placed.is_empty() {
            self.store.put_many(placed).await?;
        }
        self.keys = replay;
        Ok(n)
    }

    /// Verifies one delivered envelope and opens it with the room's MLS
    /// group; `replay` holds the statements archived before it
    /// ([`sender_key`]).
    async fn accept(
        &mut self,
        list: &AccessList,
        replay: &Replay,
        d: Delivered,
    ) -> Result<Archived, SessionError> {
        let seq = d.seq;
        let evidence = |what: String| SessionError::Evidence(format!("seq {seq}: {what}"));
        d.verify_receipt(&self.log_key)
            .map_err(|e| evidence(format!("its receipt does not verify ({e})")))?;
        let h = *d.header.header();
        let sender = match sender_key(list, replay, seq, h.room, &h.sender) {
            Ok(k) => k,
            // A device this one cannot place, in a room whose group this
            // device was not in yet: what it sent before this device joined
            // cannot be read here either (copies open statements later).
            Err(_) if self.mls.epoch(h.room).is_none() => {
                return Ok(Archived {
                    seq,
                    node_time: d.node_time,
                    header: d.header,
                    receipt: d.receipt,
                    message: None,
                    unreadable: Some(UNPLACED.into()),
                });
            }
            Err(why) => return Err(evidence(why)),
        };
        d.header
            .verify(&sender)
            .map_err(|_| evidence("its header signature does not verify".into()))?;
        let (message, unreadable) = match &d.body {
            Some(body) => {
                let mine =
                    h.sender == self.device.public_key().id() || self.former.contains(&h.sender);
                let own = if mine && h.kind == Kind::MlsApp {
                    self.store
                        .get(Namespace::Mls, &self.sent_key(&d.header))
                        .await?
                } else {
                    None
                };
                self.open_envelope(list, &d.header, body, own)
            }
            None if h.kind == Kind::Welcome => (None, None),
            None => (None, None),
        };
        Ok(Archived {
            seq,
            node_time: d.node_time,
            header: d.header,
            receipt: d.receipt,
            message,
            unreadable,
        })
    }

    /// Verifies, opens and archives `envelopes` as [`Session::receive`]
    /// does each envelope of a fetched page (in the order given, each
    /// judged by `list` and the record archived before it, its body
    /// processed by the room's MLS group), storing the archive records and
    /// the MLS state in one write; but the envelopes come from the caller,
    /// not the node, and the fetch cursor does not move (copies are not
    /// opened). For tests that feed a device's saved state what the node's
    /// store holds beyond what the node serves it (a device taken off the
    /// access list): not part of the client's API.
    #[doc(hidden)]
    pub async fn receive_delivered(
        &mut self,
        list: &AccessList,
        envelopes: Vec<Delivered>,
    ) -> Result<Vec<Archived>, SessionError> {
        let mut replay = self.keys.clone();
        let mut out = Vec::with_capacity(envelopes.len());
        let mut writes = Vec::with_capacity(envelopes.len() + 1);
        for d in envelopes {
            let archived = match self.accept(list, &replay, d).await {
                Ok(a) => a,
                Err(e) => {
                    if let Ok(m) = load_mls(&*self.store, self.talks, &self.device).await {
                        self.mls = m;
                    }
                    return Err(e);
                }
            };
            replay_archived(&mut replay, &archived);
            writes.push(archived.put(self.talks));
            out.push(archived);
        }
        writes.push(Put {
            ns: Namespace::Mls,
            key: key(self.talks, "mls"),
            value: Some(self.mls.to_bytes()),
        });
        self.store.put_many(writes).await?;
        self.keys = replay;
        Ok(out)
    }

    /// The archived envelope at `seq`, if any.
    pub async fn archived(&self, seq: u64) -> Result<Option<Archived>, SessionError> {
        match self
            .store
            .get(Namespace::Archive, &seq_key(self.talks, seq))
            .await?
        {
            Some(b) => Ok(Some(Archived::decode(&b)?)),
            None => Ok(None),
        }
    }

    /// Every archived envelope below the fetch cursor, in seq order.
    pub async fn archive(&self) -> Result<Vec<Archived>, SessionError> {
        let mut out = Vec::new();
        for seq in 0..self.next {
            if let Some(a) = self.archived(seq).await? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// The checkpoint reference every statement this session's participant
    /// signs should carry: the size and root of the latest checkpoint it
    /// verified, so every recipient can compare it with its own tree.
    pub fn checkpoint_ref(&self) -> backchannel_statement::CheckpointRef {
        backchannel_statement::CheckpointRef {
            size: self.follower.size(),
            root: self.follower.root(),
        }
    }

    /// Replays every statement in the archive, in log order, with
    /// `backchannel_core::replay::Replay` (key validity by log position:
    /// a revoked or expired key's later statements are rejected; the
    /// signatures batch-verified ahead on the machine's cores by
    /// `Replay::apply_all`, with the verdicts of one-by-one replay), and
    /// compares each statement's checkpoint reference with this session's
    /// verified tree. Runs over the archive only (MLS cannot decrypt twice).
    pub async fn replay(&self) -> Result<ReplayReport, SessionError> {
        let mut replay = Replay::new(self.talks);
        let mut report = ReplayReport::default();
        let archive = self.archive().await?;
        let mut rng = ChaCha20Rng::from_seed(self.random32()?);
        for r in replay_statements(&mut replay, &archive, &mut rng) {
            let seq = r.archived.seq;
            let statement = match r.statement {
                Err(_) => {
                    report.rejected.push((seq, "does not decode".into()));
                    continue;
                }
                Ok((statement, Ok(_))) => {
                    report.accepted.push(seq);
                    statement
                }
                Ok((statement, Err(e))) => {
                    report.rejected.push((seq, e.to_string()));
                    statement
                }
            };
            let c = statement.unverified().checkpoint;
            match self.follower.compare_reference(c.size, &c.root) {
                follow::Reference::Differs { size, ours, theirs } => {
                    report.forks.push((seq, size, ours, theirs));
                }
                follow::Reference::Matches | follow::Reference::Unknown => {}
            }
        }
        report.equivocations = replay
            .equivocations()
            .iter()
            .map(|e| (e.first, e.later, e.statement))
            .collect();
        Ok(report)
    }

    /// Verifies the node's latest checkpoint from the data tiles of the new
    /// range, accounts for every new leaf of `my_rooms`, settles receipts,
    /// and stores the new verified state. `now_ms`: the client's clock, for
    /// the merge deadline.
    ///
    /// Every verified leaf of `my_rooms` below the fetch cursor must be
    /// archived with the same leaf (else it is reported withheld, or a
    /// rewrite is evidence naming its seq); verified leaves at or past the
    /// cursor are kept and accounted for by a later call, once
    /// [`Session::receive`] has fetched past them. The first data tile may
    /// begin below the verified size: what the node serves there now must
    /// still be the leaves of the envelopes archived there. A data tile the
    /// node refuses is [`SessionError::Unserved`], naming the first seq it
    /// will not serve; leaf data that does not hash into the checkpoint is
    /// evidence naming the seqs whose leaves the node's own tree disagrees
    /// with, where it can prove them.
    pub async fn verify_log(
        &mut self,
        my_rooms: &BTreeSet<RoomId>,
        now_ms: u64,
    ) -> Result<(LogReport, SignedCheckpoint), SessionError> {
        let (_, note) = self.node.checkpoint(self.talks).await?;
        let checkpoint =
            SignedCheckpoint::verify(&note, &self.log_key, &self.origin).map_err(|e| {
                SessionError::Evidence(format!("a checkpoint that does not verify: {e}"))
            })?;
        let from = self.follower.size();
        let to = checkpoint.checkpoint().size;
        let mut leaves = Vec::new();
        for tile in follow::data_tiles(from, to) {
            let n = tile.first_seq() / TILE_WIDTH;
            let all = match self.tile_leaves(n, tile.width()).await {
                Err(SessionError::Net(e)) if refused(&e) => {
                    let (seq, _) = self.first_unserved(n, tile.width()).await?;
                    return Err(SessionError::Unserved { seq, size: to });
                }
                other => other?,
            };
            let (before, wanted): (Vec<LeafData>, Vec<LeafData>) =
                all.into_iter().partition(|l| l.seq < from);
            for leaf in &before {
                if let Some(d) = self.recheck(leaf).await? {
                    return Err(SessionError::Evidence(d.to_string()));
                }
            }
            leaves.extend(wanted);
        }
        let follower = match self.follower.advance(&checkpoint, &leaves) {
            Ok(f) => f,
            Err(e @ FollowError::RootMismatch { .. }) => {
                let blamed = self.blame(to, &checkpoint.checkpoint().root, &leaves).await;
                let named: Vec<String> = blamed.iter().map(ToString::to_string).collect();
                return Err(SessionError::Evidence(if named.is_empty() {
                    e.to_string()
                } else {
                    format!("{} ({e})", named.join("; "))
                }));
            }
            Err(e) => return Err(SessionError::Evidence(e.to_string())),
        };
        // Accounting: the archive must hold every verified leaf of my rooms
        // that the session has fetched past, with the same leaf; leaves the
        // session has not fetched yet wait for a later call.
        let mut due = self.unaccounted.clone();
        due.extend(leaves.iter().cloned());
        let (fetched, later): (Vec<LeafData>, Vec<LeafData>) =
            due.into_iter().partition(|l| l.seq < self.next);
        if later.len() > MAX_UNACCOUNTED {
            return Err(SessionError::Usage(format!(
                "the log is verified {} leaves past what this session has fetched; receive \
                 before verifying more of the log",
                later.len()
            )));
        }
        let mut archived = BTreeMap::new();
        for leaf in &fetched {
            if let Some(a) = self.archived(leaf.seq).await? {
                let held = a.leaf();
                if a.header.hash() == leaf.header_hash && held != *leaf {
                    return Err(SessionError::Evidence(
                        Discrepancy::Rewritten {
                            seq: leaf.seq,
                            archived: held.hash(),
                            served: leaf.hash(),
                        }
                        .to_string(),
                    ));
                }
                archived.insert(leaf.seq, a.header.hash());
            }
        }
        let withheld = follow::withheld(&fetched, my_rooms, |seq| archived.get(&seq).copied());
        self.pending
            .settle(&follower, &leaves)
            .map_err(|e| SessionError::Evidence(e.to_string()))?;
        let not_merged = self.pending.overdue(now_ms).iter().map(|n| n.seq).collect();
        self.follower = follower;
        self.unaccounted = later;
        self.store
            .put_many(vec![
                Put {
                    ns: Namespace::Checkpoints,
                    key: key(self.talks, "follower"),
                    value: Some(self.follower.to_canonical_bytes()),
                },
                Put {
                    ns: Namespace::Checkpoints,
                    key: key(self.talks, "pending"),
                    value: Some(self.pending.to_canonical_bytes()),
                },
                Put {
                    ns: Namespace::Checkpoints,
                    key: key(self.talks, "unaccounted"),
                    value: Some(encode_leaves(&self.unaccounted)),
                },
            ])
            .await?;
        Ok((
            LogReport {
                size: self.follower.size(),
                root: self.follower.root(),
                withheld,
                not_merged,
            },
            checkpoint,
        ))
    }

    /// Audits everything this session verified and archived against what
    /// the node serves now, and names every seq that differs. Costly (it
    /// reads the whole verified log's leaf data and every envelope of this
    /// session's rooms below the fetch cursor again); for an audit, not
    /// for every sync. An empty answer: the node still serves exactly what
    /// was verified.
    ///
    /// - The data tiles of `[0, verified size)` are re-hashed: each leaf of
    ///   an archived envelope must be the archived one
    ///   ([`Discrepancy::Rewritten`]); the whole must hash to the verified
    ///   root, and where it does not, the leaves the node's own stored leaf
    ///   hashes disagree with are proved with its inclusion proofs
    ///   ([`Discrepancy::NotCommitted`], else [`Discrepancy::Root`]); leaf
    ///   data the node refuses is [`Discrepancy::Unserved`].
    /// - The envelopes below the fetch cursor are fetched again (pages the
    ///   node refuses or that do not check out are bisected down to their
    ///   seq): each must be the archived one, and every archived one must
    ///   still be served ([`Discrepancy::Envelope`]).
    pub async fn check_archive(&self) -> Result<Vec<Discrepancy>, SessionError> {
        let size = self.follower.size();
        let root = self.follower.root();
        let mut found = Vec::new();
        let mut leaves = Vec::new();
        let mut whole = true;
        for tile in follow::data_tiles(0, size) {
            let n = tile.first_seq() / TILE_WIDTH;
            let got = match self.tile_leaves(n, tile.width()).await {
                Err(SessionError::Net(e)) if refused(&e) => {
                    let (seq, prefix) = self.first_unserved(n, tile.width()).await?;
                    found.push(Discrepancy::Unserved { seq });
                    whole = false;
                    prefix
                }
                other => other?,
            };
            for leaf in &got {
                found.extend(self.recheck(leaf).await?);
            }
            leaves.extend(got);
        }
        if whole && root_of(&leaves) != root {
            let named: BTreeSet<u64> = found.iter().filter_map(Discrepancy::seq).collect();
            let blamed: Vec<Discrepancy> = self
                .blame(size, &root, &leaves)
                .await
                .into_iter()
                .filter(|d| d.seq().is_some_and(|s| !named.contains(&s)))
                .collect();
            if blamed.is_empty() && named.is_empty() {
                found.push(Discrepancy::Root {
                    size,
                    verified: root,
                    computed: root_of(&leaves),
                });
            }
            found.extend(blamed);
        }
        found.extend(self.recheck_envelopes().await?);
        found.sort_by_key(|d| d.seq().unwrap_or(u64::MAX));
        found.dedup();
        Ok(found)
    }

    /// Fetches the envelopes below the fetch cursor again and compares
    /// them with the archive.
    async fn recheck_envelopes(&self) -> Result<Vec<Discrepancy>, SessionError> {
        let mut found = Vec::new();
        let mut unseen: BTreeMap<u64, Archived> = self
            .archive()
            .await?
            .into_iter()
            .map(|a| (a.seq, a))
            .collect();
        let mut pager = Pager::new(0);
        // Pages the node refuses, and pages holding an envelope that does
        // not check out, are both bisected down to their seq.
        let skip = |e: &NetError| refused(e) || matches!(e, NetError::Served(_));
        while pager.next < self.next {
            let max = usize::try_from(self.next - pager.next).unwrap_or(PAGE_LIMIT);
            match pager.step(&self.node, self.talks, max, skip).await? {
                Paged::Page(page) => {
                    for d in page.envelopes.into_iter().filter(|d| d.seq < self.next) {
                        let seq = d.seq;
                        let what = match unseen.remove(&seq) {
                            None => Some(
                                "the node now serves an envelope this session never archived"
                                    .to_owned(),
                            ),
                            Some(a) if a.header != d.header => Some(format!(
                                "the node now serves another header (hash {}) than the one \
                                 archived (hash {})",
                                d.header.hash().to_hex(),
                                a.header.hash().to_hex()
                            )),
                            Some(a) if a.node_time != d.node_time || a.receipt != d.receipt => {
                                Some(
                                    "the node now serves another time or receipt than the \
                                     archived ones"
                                        .to_owned(),
                                )
                            }
                            Some(_) => None,
                        };
                        found.extend(what.map(|what| Discrepancy::Envelope { seq, what }));
                    }
                    if page.next >= page.log_size {
                        break;
                    }
                }
                Paged::Refused { seq, error } => {
                    unseen.remove(&seq);
                    found.push(if refused(&error) {
                        Discrepancy::Unserved { seq }
                    } else {
                        Discrepancy::Envelope {
                            seq,
                            what: format!("the envelope served again does not check out: {error}"),
                        }
                    });
                }
            }
        }
        found.extend(unseen.into_keys().map(|seq| Discrepancy::Envelope {
            seq,
            what: "the node no longer serves the envelope archived there".to_owned(),
        }));
        Ok(found)
    }

    /// Checks `proof` as the node's proof that the envelope archived at
    /// `seq` is leaf `seq` of this session's verified tree. The leaf hash
    /// is re-computed from the archive ([`Archived::leaf`]), never taken
    /// from the node, so a valid proof of another leaf — offered for this
    /// seq, or relabelled with this seq's index — does not verify.
    pub async fn check_inclusion(
        &self,
        seq: u64,
        proof: &InclusionProof,
    ) -> Result<(), SessionError> {
        let size = self.follower.size();
        if seq >= size {
            return Err(SessionError::Usage(format!(
                "seq {seq} is not below the verified size {size}: verify the log first"
            )));
        }
        let archived = self.archived(seq).await?.ok_or_else(|| {
            SessionError::Usage(format!("this session archived no envelope at seq {seq}"))
        })?;
        let leaf = archived.leaf().hash();
        proof
            .verify(seq, size, &self.follower.root(), &leaf)
            .map_err(|_| {
                SessionError::Evidence(format!(
                    "seq {seq}: the inclusion proof does not lead from the archived envelope's \
                     leaf {} at seq {seq} to the verified root {} of size {size}",
                    leaf.to_hex(),
                    self.follower.root().to_hex()
                ))
            })
    }

    /// Asks the node for the inclusion proof of the envelope archived at
    /// `seq` in this session's verified tree and checks it
    /// ([`Session::check_inclusion`]).
    pub async fn prove_included(&self, seq: u64) -> Result<(), SessionError> {
        let size = self.follower.size();
        if seq >= size {
            return Err(SessionError::Usage(format!(
                "seq {seq} is not below the verified size {size}: verify the log first"
            )));
        }
        let proof = self.node.inclusion_proof(self.talks, seq, size).await?;
        self.check_inclusion(seq, &proof).await
    }

    /// The leaf data of data tile `n` of `width` entries, parsed strictly.
    async fn tile_leaves(&self, n: u64, width: u64) -> Result<Vec<LeafData>, SessionError> {
        let width = u32::try_from(width)
            .ok()
            .filter(|w| (1..=TILE_WIDTH as u32).contains(w))
            .ok_or_else(|| SessionError::Usage(format!("no data tile of width {width}")))?;
        // Height 8, level 0 and a width of 1 to 256: within the ranges
        // `tlog_tiles::Tile::new` asserts (as in `follow::data_tiles`).
        let tile = tlog_tiles::Tile::new(TILE_HEIGHT, 0, n, width, true);
        let bytes = self.node.data_tile(self.talks, &tile).await?;
        follow::parse_data_tile(&bytes, n * TILE_WIDTH, u64::from(width))
            .map_err(|e| SessionError::Evidence(format!("a data tile: {e}")))
    }

    /// The first seq of data tile `n` (of `width` entries, which the node
    /// refused) whose leaf data the node refuses, found by halving the
    /// width asked for; and the leaves before it.
    async fn first_unserved(
        &self,
        n: u64,
        width: u64,
    ) -> Result<(u64, Vec<LeafData>), SessionError> {
        let (mut good, mut bad) = (0u64, width);
        let mut prefix = Vec::new();
        while bad - good > 1 {
            let mid = good + (bad - good) / 2;
            match self.tile_leaves(n, mid).await {
                Ok(leaves) => {
                    good = mid;
                    prefix = leaves;
                }
                Err(SessionError::Net(e)) if refused(&e) => bad = mid,
                Err(e) => return Err(e),
            }
        }
        Ok((n * TILE_WIDTH + bad - 1, prefix))
    }

    /// Compares leaf data served for a seq verified before with the
    /// envelope archived there, if any.
    async fn recheck(&self, leaf: &LeafData) -> Result<Option<Discrepancy>, SessionError> {
        if leaf.seq >= self.next {
            return Ok(None);
        }
        Ok(self.archived(leaf.seq).await?.and_then(|a| {
            let archived = a.leaf().hash();
            let served = leaf.hash();
            (archived != served).then_some(Discrepancy::Rewritten {
                seq: leaf.seq,
                archived,
                served,
            })
        }))
    }

    /// Best effort: the seqs among `leaves` (served for the tree of `size`
    /// with `root`) whose leaf data is not the leaf the tree commits to.
    /// Candidates are the leaves whose hash differs from the node's own
    /// stored leaf hash (its level-0 hash tiles); each is named only once
    /// the node's inclusion proof leads that stored hash into `root`, which
    /// no other leaf could do. Requests that fail name nothing.
    async fn blame(&self, size: u64, root: &Digest, leaves: &[LeafData]) -> Vec<Discrepancy> {
        let mut candidates = Vec::new();
        let mut tiles: BTreeMap<u64, Vec<&LeafData>> = BTreeMap::new();
        for leaf in leaves {
            tiles.entry(leaf.seq / TILE_WIDTH).or_default().push(leaf);
        }
        for (n, group) in tiles {
            let first = n * TILE_WIDTH;
            let Some(width) = size
                .checked_sub(first)
                .map(|w| w.min(TILE_WIDTH))
                .filter(|w| *w > 0)
            else {
                continue;
            };
            // Height 8, level 0, width 1 to 256: within Tile::new's ranges.
            let tile = tlog_tiles::Tile::new(TILE_HEIGHT, 0, n, width as u32, false);
            let Ok(hashes) = self.node.hash_tile(self.talks, &tile).await else {
                continue;
            };
            for leaf in group {
                let at = usize::try_from(leaf.seq - first).unwrap_or(usize::MAX);
                let Some(stored) = hashes
                    .chunks_exact(32)
                    .nth(at)
                    .and_then(|h| <[u8; 32]>::try_from(h).ok())
                    .map(Digest)
                else {
                    continue;
                };
                if stored != leaf.hash() {
                    candidates.push((leaf.seq, stored, leaf.hash()));
                }
            }
        }
        let mut blamed = Vec::new();
        for (seq, committed, served) in candidates.into_iter().take(MAX_BLAME_PROOFS) {
            let Ok(proof) = self.node.inclusion_proof(self.talks, seq, size).await else {
                continue;
            };
            if proof.verify(seq, size, root, &committed).is_ok() {
                blamed.push(Discrepancy::NotCommitted {
                    seq,
                    committed,
                    served,
                });
            }
        }
        blamed
    }

    /// Cosigns `checkpoint` (which [`Session::verify_log`] verified) and
    /// sends the cosignature; the witness state is stored first.
    pub async fn cosign(
        &mut self,
        checkpoint: &SignedCheckpoint,
        now_s: u64,
    ) -> Result<(), SessionError> {
        let line = self
            .witness
            .cosign(&self.follower, checkpoint, &self.device, now_s)
            .map_err(|e| SessionError::Evidence(e.to_string()))?;
        self.store
            .put(
                Namespace::Cosigned,
                &key(self.talks, "witness"),
                &self.witness.to_canonical_bytes(),
            )
            .await?;
        let cosignature = backchannel_tlog::Cosignature::from_line(&line)
            .map_err(|e| SessionError::Sign(format!("a cosignature line: {e}")))?;
        self.node
            .cosign(self.talks, checkpoint.checkpoint().size, &cosignature)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backchannel_statement::fixtures::{self, key, labels::*};
    use backchannel_statement::{DeviceCert, Payload, Revoke, RevokeReason};

    /// A device the US negotiator certifies at seq 1, until `NOT_AFTER`.
    const NEW_DEVICE: u8 = 0x45;
    /// A key no list or statement ever names.
    const STRANGER: u8 = 0x66;
    const NOT_AFTER: u64 = 1_900_000_000_000;
    const T0: u64 = 1_800_000_000_000;

    /// The reference talks' record room (every device is seated in it).
    fn rec() -> RoomId {
        fixtures::talks().record
    }

    fn id(label: u8) -> KeyId {
        key(label).public_key().id()
    }

    /// The record: the roster at seq 0, the US negotiator's new device
    /// certified at seq 1, the negotiator's roster device revoked by the US
    /// talks authority at seq 3 (seq 2 is talk). Returns the roster's list
    /// without that device (as the node serves it once it was removed) and
    /// the replay of the record through seq 3.
    fn record() -> (AccessList, Replay) {
        let t = fixtures::talks();
        let log = [
            (
                0,
                t.statement(
                    1,
                    &key(OMAN_TALKS),
                    t.oman,
                    Payload::Roster(t.roster.clone()),
                ),
            ),
            (
                1,
                t.statement(
                    2,
                    &key(US_NEGOTIATOR),
                    t.us,
                    Payload::DeviceCert(DeviceCert {
                        principal: fixtures::PRINCIPALS[3],
                        device_key: key(NEW_DEVICE).public_key(),
                        not_after: NOT_AFTER,
                    }),
                ),
            ),
            (
                3,
                t.statement(
                    3,
                    &key(US_TALKS),
                    t.us,
                    Payload::Revoke(Revoke {
                        key: id(US_NEGOTIATOR_DEVICE),
                        reason: RevokeReason::Lost,
                        lost_at: None,
                    }),
                ),
            ),
        ];
        let mut replay = Replay::new(t.talks);
        for (seq, statement) in &log {
            let applied = replay.apply(LoggedStatement {
                seq: *seq,
                node_time: T0,
                room: t.record,
                statement,
            });
            assert!(applied.is_ok(), "seq {seq}: {applied:?}");
        }
        let full = t
            .roster
            .implied_access_list(t.talks)
            .expect("the roster's list");
        let entries = full
            .entries()
            .iter()
            .filter(|e| e.key_id() != id(US_NEGOTIATOR_DEVICE))
            .cloned()
            .collect();
        let list = AccessList::new(t.talks, 1, entries).expect("a list");
        (list, replay)
    }

    #[test]
    fn a_sender_on_the_list_is_accepted_whatever_the_record_says() {
        let (list, replay) = record();
        let empty = Replay::new(fixtures::talks().talks);
        // The mediator's device before any roster: the list alone.
        assert_eq!(
            sender_key(&list, &empty, 0, rec(), &id(OMAN_LEAD_DEVICE)),
            Ok(key(OMAN_LEAD_DEVICE).public_key())
        );
        assert_eq!(
            sender_key(&list, &replay, 9, rec(), &id(US_HEAD_DEVICE)),
            Ok(key(US_HEAD_DEVICE).public_key())
        );
    }

    #[test]
    fn a_removed_device_is_archived_and_marked_after_its_revocation() {
        let (list, replay) = record();
        let device = id(US_NEGOTIATOR_DEVICE);
        // Before its revocation at seq 3 (certified by the roster at seq 0).
        for seq in [1, 2] {
            assert_eq!(
                sender_key(&list, &replay, seq, rec(), &device),
                Ok(key(US_NEGOTIATOR_DEVICE).public_key()),
                "seq {seq}"
            );
        }
        // At and after it: still archived (the node sequenced it while the
        // device was listed; every client must hold the same archive), and
        // marked as sent after the revocation.
        for seq in [3, 4, 100] {
            assert_eq!(
                sender_key(&list, &replay, seq, rec(), &device),
                Ok(key(US_NEGOTIATOR_DEVICE).public_key()),
                "seq {seq}"
            );
        }
        assert_eq!(revoked_or_expired(&replay, &device, 3, T0), None);
        for seq in [4, 100] {
            let why = revoked_or_expired(&replay, &device, seq, T0).expect("marked");
            assert!(why.contains("revoked at seq 3"), "seq {seq}: {why}");
        }
        // Not yet known to a replay that has not seen the roster.
        let empty = Replay::new(fixtures::talks().talks);
        let e = sender_key(&list, &empty, 1, rec(), &device).unwrap_err();
        assert_eq!(e, "its sender is not on the access list");
    }

    #[test]
    fn a_device_certified_by_statement_is_known_from_its_seq_and_marked_once_expired() {
        let (list, replay) = record();
        let device = id(NEW_DEVICE);
        assert_eq!(
            sender_key(&list, &replay, 2, rec(), &device),
            Ok(key(NEW_DEVICE).public_key())
        );
        assert_eq!(revoked_or_expired(&replay, &device, 2, NOT_AFTER), None);
        assert_eq!(
            sender_key(&list, &replay, 2, rec(), &device),
            Ok(key(NEW_DEVICE).public_key())
        );
        let why = revoked_or_expired(&replay, &device, 2, NOT_AFTER + 1).expect("marked");
        assert!(why.contains("expired"), "{why}");
        // Its certificate is at seq 1: nothing before it.
        let e = sender_key(&list, &replay, 0, rec(), &device).unwrap_err();
        assert!(e.contains("from seq 1"), "{e}");
    }

    #[test]
    fn keys_that_sign_statements_or_that_nothing_names_sign_no_envelopes() {
        let (list, replay) = record();
        let e = sender_key(&list, &replay, 5, rec(), &id(STRANGER)).unwrap_err();
        assert_eq!(e, "its sender is not on the access list");
        // An identity key is known to the record but signs statements only.
        let e = sender_key(&list, &replay, 5, rec(), &id(US_NEGOTIATOR)).unwrap_err();
        assert!(e.contains("signs statements"), "{e}");
    }
}
