//! A session's rooms as MLS groups: what it sends and how it keeps each
//! group in step with the access list.
//!
//! - **Sending.** [`Session::send`] encrypts with the room's group (the
//!   header's commitment as MLS authenticated data), writes the new group
//!   state, the exact envelope (with its idempotency key) and the
//!   plaintext this device keeps of its own message in one transaction,
//!   and only then submits. A crash after that resends the same bytes
//!   ([`Session::flush_unsent`], run before every receive and send). A
//!   `409 stale_epoch` answer means a commit moved the room on: the
//!   session receives, processes it and encrypts again — nobody is ever
//!   sent a message it cannot decrypt.
//! - **Membership.** [`Session::sync_rooms`] keeps this device's key
//!   packages on the node, creates the group of a room that has none, and
//!   commits adds and removes so that each group it is in holds exactly
//!   the devices the access list seats in that room. A commit is written
//!   (exact bytes) before its first send; the session merges it only when
//!   it meets it in the log, and discards it when the log shows another
//!   commit for that epoch (`409 epoch_taken`).
//! - **Copies for newcomers.** MLS gives a device nothing sent before it
//!   joined. After a commit that adds devices, the committer posts a
//!   *copy* of every statement of the room archived before the commit: the
//!   original seq, salt and statement bytes, which each newcomer checks
//!   against the commitment in the header logged at that seq. An act
//!   counts once, at its original seq; the copy only opens it. The copy
//!   is owed durably from the commit's first write, so a committer killed
//!   before posting it posts it at its next sync.
//! - **Failpoints** (test-only): [`COMMIT_FAILPOINTS`], named by
//!   [`FAILPOINT_VAR`], kill the process at each step of a commit.

use std::collections::BTreeSet;

use backchannel_codec::Encode as _;
use backchannel_codec::{DecodeError, Reader, RoomId, Writer};
use backchannel_crypto::{KeyId, PublicKey, Signer as _};
use backchannel_mls::{DecryptError, Handled, Handshake};
use backchannel_statement::access_list::FLAG_DEVICE;
use backchannel_statement::header::{pad_body, unpad_body};
use backchannel_statement::{AccessList, Commitment, Header, Kind, Salt, SignedHeader};

use crate::net::NetError;
use crate::seal::{AppMessage, Content};
use crate::session::{Archived, Session, SessionError, key, room_key};
use crate::store::{ClientStore, Namespace, Put};

/// Below this many key packages on the node, a sync uploads more.
pub const KEY_PACKAGES_LOW: u64 = 4;

/// How many key packages a sync uploads (plus one last-resort package).
pub const KEY_PACKAGES_BATCH: usize = 8;

/// The lifetime of an uploaded key package (30 days).
pub const KEY_PACKAGE_LIFETIME_S: u64 = 30 * 24 * 3600;

/// How far before the client's clock a key package's lifetime starts, so
/// that a node (and other clients) whose clock is behind still accept it.
pub const KEY_PACKAGE_SKEW_S: u64 = 3600;

/// How often a send encrypts again after `409 stale_epoch`, and a sync
/// commits again after `409 epoch_taken`, before giving up.
pub const EPOCH_ATTEMPTS: usize = 4;

/// After this many application messages of its own in a room since its
/// last commit there, a device commits an update of its own leaf (at its
/// next sync), so that a key stolen from it stops opening the room's
/// traffic (post-compromise security). It also does after any removal from
/// the room.
pub const PCS_UPDATE_MESSAGES: u32 = 100;

/// At the latest this long after its first own message in a room since its
/// last commit there (by the node's timestamp of that message), a device
/// commits an update of its own leaf at its next sync: a quiet member owes
/// nothing, an active one updates at least this often however few messages
/// it sends.
pub const PCS_UPDATE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// What makes an update of this device's own leaf due in one room
/// ([`PCS_UPDATE_MESSAGES`], [`PCS_UPDATE_INTERVAL`], a removal), counted
/// since its last commit there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PcsDue {
    /// Own application messages sent.
    sent: u32,
    /// Whether a member was removed.
    removal: bool,
    /// The node's timestamp (Unix ms) of the first of those messages to be
    /// sequenced; 0 while none is.
    since_ms: u64,
}

impl PcsDue {
    const LEN: usize = 4 + 1 + 8;

    fn to_bytes(self) -> Vec<u8> {
        let mut v = self.sent.to_be_bytes().to_vec();
        v.push(u8::from(self.removal));
        v.extend_from_slice(&self.since_ms.to_be_bytes());
        v
    }

    /// Reads [`PcsDue::to_bytes`], or the 5 bytes (`sent`, `removal`) of
    /// the counters before [`PCS_UPDATE_INTERVAL`], so an update owed
    /// after a removal survives the upgrade.
    fn from_bytes(v: &[u8]) -> Option<Self> {
        if !(v.len() == Self::LEN || v.len() == 5) || v[4] > 1 {
            return None;
        }
        let since_ms = match v.get(5..) {
            Some(rest) if rest.len() == 8 => {
                let mut since = [0u8; 8];
                since.copy_from_slice(rest);
                u64::from_be_bytes(since)
            }
            _ => 0,
        };
        Some(Self {
            sent: u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
            removal: v[4] == 1,
            since_ms,
        })
    }

    /// Whether an update is due at `now_ms` (the client's clock).
    fn due(self, now_ms: u64) -> bool {
        let interval = PCS_UPDATE_INTERVAL.as_millis() as u64;
        self.removal
            || self.sent >= PCS_UPDATE_MESSAGES
            || (self.since_ms != 0 && now_ms >= self.since_ms.saturating_add(interval))
    }
}

/// What a copy message carries at most, so that it fits an envelope with
/// room to spare (larger histories go in several copies).
pub const MAX_COPY_BYTES: usize = 512 * 1024;

/// Why an application envelope could not be read here: it was sent before
/// this device joined the room (its sender checked). Only such an envelope
/// may be opened by a copy.
pub const BEFORE_JOIN: &str =
    "sent before this device joined the room; ask your head of delegation for a handover";

/// What a copied statement adds to a copy besides its bytes: its seq (8),
/// salt (32) and length (4).
const COPY_ITEM_OVERHEAD: usize = 8 + 32 + 4;

/// The persisted unsent request's format version.
const UNSENT_VERSION: u8 = 1;

/// What one [`Session::sync_rooms`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Key packages uploaded.
    pub key_packages_uploaded: usize,
    /// Rooms whose group this device created.
    pub created: Vec<RoomId>,
    /// Devices added, per room.
    pub added: Vec<(RoomId, usize)>,
    /// Devices removed, per room.
    pub removed: Vec<(RoomId, usize)>,
    /// Statements copied for newcomers, per room.
    pub copied: Vec<(RoomId, usize)>,
    /// Rooms whose group this device rejoined by external commit (it could
    /// not process a commit the log holds).
    pub rejoined: Vec<RoomId>,
    /// For each rejoined room, the epoch this device could not leave (the
    /// commit for it is the one it could not process): what its signed
    /// `commit_failure` names.
    pub rejoined_from: Vec<(RoomId, u64)>,
    /// Rooms where this device committed an update of its own leaf.
    pub updated: Vec<RoomId>,
    /// Why a room is not (yet) as the access list wants it.
    pub waiting: Vec<(RoomId, String)>,
}

impl SyncReport {
    /// Whether the sync changed anything on the node.
    pub fn changed(&self) -> bool {
        !self.created.is_empty()
            || !self.added.is_empty()
            || !self.removed.is_empty()
            || !self.rejoined.is_empty()
            || !self.updated.is_empty()
    }
}

/// A request written before its first send: exact bytes, resent as they
/// are after a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unsent {
    /// `POST …/envelopes`.
    Envelope(SignedHeader, Vec<u8>),
    /// `POST …/commits`: the commit, and its Welcome.
    Commit(SignedHeader, Vec<u8>, Option<Box<(SignedHeader, Vec<u8>)>>),
}

impl Unsent {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(UNSENT_VERSION);
        let put = |w: &mut Writer, h: &SignedHeader, b: &[u8]| {
            w.raw(&h.to_bytes());
            w.bytes(b);
        };
        match self {
            Unsent::Envelope(h, b) => {
                w.u8(1);
                put(&mut w, h, b);
            }
            Unsent::Commit(h, b, welcome) => {
                w.u8(2);
                put(&mut w, h, b);
                match welcome.as_deref() {
                    Some((wh, wb)) => {
                        w.u8(1);
                        put(&mut w, wh, wb);
                    }
                    None => w.u8(0),
                }
            }
        }
        w.into_bytes()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("unsent request version", UNSENT_VERSION)?;
        let get = |r: &mut Reader<'_>| -> Result<(SignedHeader, Vec<u8>), DecodeError> {
            let h = SignedHeader::decode(
                r.take(backchannel_statement::header::SIGNED_HEADER_LEN, "header")?,
            )?;
            let b = r.bytes("body", 1 << 21)?.to_vec();
            Ok((h, b))
        };
        let out = match r.u8("unsent route")? {
            1 => {
                let (h, b) = get(&mut r)?;
                Unsent::Envelope(h, b)
            }
            2 => {
                let (h, b) = get(&mut r)?;
                let welcome = match r.u8("welcome present")? {
                    0 => None,
                    _ => Some(Box::new(get(&mut r)?)),
                };
                Unsent::Commit(h, b, welcome)
            }
            v => {
                return Err(DecodeError::UnknownValue {
                    field: "unsent route",
                    value: u64::from(v),
                });
            }
        };
        r.finish()?;
        Ok(out)
    }
}

/// A copy of statements for newcomers: `u32 n ‖ n × (seq u64 ‖ salt[32] ‖
/// statement bytes)`, seqs strictly increasing.
pub(crate) fn encode_copy(items: &[(u64, Salt, Vec<u8>)]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(items.len() as u32);
    for (seq, salt, bytes) in items {
        w.u64(*seq);
        w.raw(&salt.0);
        w.bytes(bytes);
    }
    w.into_bytes()
}

/// Parses a copy.
pub(crate) fn decode_copy(bytes: &[u8]) -> Result<Vec<(u64, Salt, Vec<u8>)>, DecodeError> {
    let mut r = Reader::new(bytes);
    let n = r.u32("copied statements")? as usize;
    let mut out: Vec<(u64, Salt, Vec<u8>)> = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let seq = r.u64("seq")?;
        if out.last().is_some_and(|(s, _, _)| *s >= seq) {
            return Err(DecodeError::Invalid {
                field: "copied statements",
                reason: "seqs must increase",
            });
        }
        let salt = Salt(r.array("salt")?);
        let bytes = r.bytes("statement", 1 << 20)?.to_vec();
        out.push((seq, salt, bytes));
    }
    r.finish()?;
    Ok(out)
}

/// The device keys `list` seats in `room`.
pub fn seated(list: &AccessList, room: RoomId) -> BTreeSet<PublicKey> {
    list.entries()
        .iter()
        .filter(|e| list.seats_device(&e.key_id(), room))
        .map(|e| *e.key())
        .collect()
}

/// Why a stored envelope's body could not be read here, in words a person
/// can act on.
pub(crate) fn unreadable_text(e: &DecryptError) -> String {
    match e {
        DecryptError::NotMember(_) | DecryptError::BeforeJoin { .. } => BEFORE_JOIN.to_owned(),
        DecryptError::AadMismatch => {
            "evidence against its sender: its MLS authenticated data is not the commitment its \
             signed header carries"
                .to_owned()
        }
        other => format!("could not be decrypted: {other}"),
    }
}

/// The environment variable that names a failpoint of the commit path
/// (test-only: crash tests set it on one run of the binary).
pub const FAILPOINT_VAR: &str = "BACKCHANNEL_FAILPOINT";

/// The failpoints of the commit path ([`Session::sync_rooms`] committing
/// adds, removes or an update, or rejoining), in the order a commit meets
/// them. At the one [`FAILPOINT_VAR`] names, the process kills itself
/// (test-only: a crash test's way to SIGKILL a client at an exact point):
///
/// - `commit-created`: the commit (and its Welcome) is built and written
///   with the MLS state holding it pending, as the `Unsent` record, in one
///   transaction; nothing has been sent.
/// - `commit-submitted`: `POST …/commits` returned the node's placement:
///   the node sequenced the commit (and its Welcome), and the client has
///   looked at nothing of the answer nor stored anything since
///   `commit-created`. (The client cannot stop between writing the request
///   and reading the reply; for what it stores, this is the same as a kill
///   after the send, with the node acting on it.)
/// - `commit-replied`: the receipts are verified and kept and the `Unsent`
///   record is cleared (one transaction); the commit is still pending.
/// - `commit-merged`: the session received the commit from the log, merged
///   its pending commit and stored the new epoch (with the archive and
///   cursor); nothing after that (the update counters, the copies for
///   newcomers) has run.
pub const COMMIT_FAILPOINTS: [&str; 4] = [
    "commit-created",
    "commit-submitted",
    "commit-replied",
    "commit-merged",
];

/// Test-only: kills the process at `point` if [`FAILPOINT_VAR`] names it
/// (read once). A real SIGKILL through `kill -KILL` (the workspace forbids
/// `unsafe`, so no `libc::kill`), else `abort`: either way no destructor
/// runs and nothing is flushed, only what was written to the store stays.
fn failpoint(point: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(FAILPOINT_VAR).ok());
    if armed.as_deref() == Some(point) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        std::process::abort();
    }
}

fn seated_or_stale(e: &NetError) -> bool {
    matches!(e.code(), Some("stale_epoch" | "epoch_taken"))
}

impl<S: ClientStore> Session<S> {
    pub(crate) fn random32(&self) -> Result<[u8; 32], SessionError> {
        self.mls
            .random32()
            .map_err(|e| SessionError::Usage(e.to_string()))
    }

    /// The commitment of an envelope that carries no plaintext (handshakes,
    /// Welcomes): 32 random bytes, so the node cannot tell them apart.
    fn random_commitment(&self) -> Result<Commitment, SessionError> {
        Ok(Commitment(self.random32()?))
    }

    fn unsent_key(&self) -> Vec<u8> {
        key(self.talks, "unsent")
    }

    fn mls_put(&self) -> Put {
        Put {
            ns: Namespace::Mls,
            key: key(self.talks, "mls"),
            value: Some(self.mls.to_bytes()),
        }
    }

    pub(crate) fn sent_key(&self, header: &SignedHeader) -> Vec<u8> {
        let mut k = key(self.talks, "sent");
        k.extend_from_slice(&header.hash().0);
        k
    }

    /// The next idempotency key (the counter is persisted by the caller in
    /// the same write as the request).
    fn next_idempotency(&mut self) -> [u8; 16] {
        self.idempotency += 1;
        let mut idem = [0u8; 16];
        idem[..8].copy_from_slice(&self.idempotency.to_be_bytes());
        idem[8..].copy_from_slice(&self.device.public_key().as_bytes()[..8]);
        idem
    }

    fn idempotency_put(&self) -> Put {
        Put {
            ns: Namespace::Checkpoints,
            key: key(self.talks, "idempotency"),
            value: Some(self.idempotency.to_be_bytes().to_vec()),
        }
    }

    /// A signed header for `message` (unpadded) of `kind` in `room`, and
    /// the padded body.
    fn envelope(
        &mut self,
        room: RoomId,
        kind: Kind,
        message: &[u8],
        commitment: Commitment,
    ) -> Result<(SignedHeader, Vec<u8>), SessionError> {
        let body = pad_body(message).map_err(|e| SessionError::Usage(e.to_string()))?;
        let header = Header {
            talks: self.talks,
            room,
            sender: self.device.public_key().id(),
            kind,
            idempotency_key: self.next_idempotency(),
            body_len: body.len() as u32,
            body_hash: backchannel_crypto::sha256(&body),
            commitment,
        }
        .sign(&self.device)
        .map_err(|e| SessionError::Sign(e.to_string()))?;
        Ok((header, body))
    }

    /// Writes, in one transaction, everything a request needs before its
    /// first send: the MLS state (the ratchet or the pending commit it
    /// advanced), the idempotency counter, the exact request, and `also`.
    async fn write_before_send(&self, unsent: &Unsent, also: Vec<Put>) -> Result<(), SessionError> {
        let mut writes = vec![
            self.mls_put(),
            self.idempotency_put(),
            Put {
                ns: Namespace::Mls,
                key: self.unsent_key(),
                value: Some(unsent.encode()),
            },
        ];
        writes.extend(also);
        self.store.put_many(writes).await?;
        Ok(())
    }

    async fn clear_unsent(&self) -> Result<(), SessionError> {
        self.store
            .put_many(vec![Put {
                ns: Namespace::Mls,
                key: self.unsent_key(),
                value: None,
            }])
            .await?;
        Ok(())
    }

    /// Sends the request written before a crash, if any, as it was written.
    /// A refusal (4xx) clears it: the node did not act, and what the
    /// request was for is decided again from the log.
    pub async fn flush_unsent(&mut self) -> Result<(), SessionError> {
        let Some(bytes) = self.store.get(Namespace::Mls, &self.unsent_key()).await? else {
            return Ok(());
        };
        let unsent = Unsent::decode(&bytes).map_err(|e| SessionError::Stored(e.to_string()))?;
        let result = match &unsent {
            Unsent::Envelope(h, b) => self.node.submit(self.talks, h, b).await.map(|s| vec![s]),
            Unsent::Commit(h, b, w) => self
                .node
                .submit_commit(
                    self.talks,
                    (h, b),
                    w.as_deref().map(|(h, b)| (h, b.as_slice())),
                )
                .await
                .map(|(c, w)| std::iter::once(c).chain(w).collect()),
        };
        match result {
            Ok(placed) => {
                for s in placed {
                    self.note_sequenced(&s)?;
                }
                self.save_pending_and_clear().await
            }
            Err(e) if e.surely_not_acted() => {
                // Refused: what the request was for is undone here too, as
                // when the refusal came at once.
                match &unsent {
                    Unsent::Commit(h, _, _) => self.mls.discard_pending(h.header().room),
                    Unsent::Envelope(h, b) if h.header().kind == Kind::MlsHandshake => {
                        if let Ok(Handshake::Create { .. }) = unpad_body(b)
                            .map_err(|_| ())
                            .and_then(|m| Handshake::parse(m).map_err(|_| ()))
                        {
                            self.mls.forget_room(h.header().room);
                        }
                    }
                    Unsent::Envelope(..) => {}
                }
                self.store.put_many(vec![self.mls_put()]).await?;
                self.clear_unsent().await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Verifies a placement's receipt and keeps it until the envelope is
    /// included in a verified checkpoint.
    fn note_sequenced(&mut self, s: &crate::net::Sequenced) -> Result<(), SessionError> {
        s.verify_receipt(&self.log_key, self.talks)
            .map_err(|e| SessionError::Evidence(format!("a receipt that does not verify: {e}")))?;
        self.pending
            .add(s.seq, s.leaf_hash, s.receipt.batch_timestamp_ms())
            .map_err(|e| SessionError::Evidence(e.to_string()))
    }

    async fn save_pending_and_clear(&self) -> Result<(), SessionError> {
        self.store
            .put_many(vec![
                Put {
                    ns: Namespace::Checkpoints,
                    key: key(self.talks, "pending"),
                    value: Some(self.pending.to_canonical_bytes()),
                },
                Put {
                    ns: Namespace::Mls,
                    key: self.unsent_key(),
                    value: None,
                },
            ])
            .await?;
        Ok(())
    }

    /// Encrypts `content` for `room` with the room's MLS group, signs the
    /// header with the device key and submits it; the receipt is verified
    /// and kept until the envelope is included in a verified checkpoint.
    /// Returns the seq. `list` is the access list the client accepted (a
    /// stale epoch makes the session receive before it encrypts again).
    pub async fn send(
        &mut self,
        list: &AccessList,
        room: RoomId,
        content: Content,
        salt: Salt,
    ) -> Result<u64, SessionError> {
        // A device the list does not seat in the room (removed from it, or
        // never there) says so, before anything is encrypted or sent: its
        // group state, if it still holds one, is of epochs the room left.
        if !list.seats_device(&self.device.public_key().id(), room) {
            return Err(SessionError::Usage(
                "the access list does not seat this device in that room (it was removed from \
                 it, or never seated there): nothing was sent"
                    .into(),
            ));
        }
        let message = AppMessage { content, salt };
        let plaintext = message.to_bytes();
        let commitment = message.commitment();
        for _ in 0..EPOCH_ATTEMPTS {
            self.flush_unsent().await?;
            if self.mls.epoch(room).is_none() {
                return Err(SessionError::Usage(
                    "this device is not in the room's MLS group yet: another member adds it \
                     once the access list seats it there and its key packages are on the node \
                     (any command of that member does it); try again then"
                        .into(),
                ));
            }
            let ciphertext = self
                .mls
                .encrypt(room, &plaintext, &commitment.0)
                .map_err(|e| SessionError::Usage(format!("encrypting for the room: {e}")))?;
            let (header, body) = self.envelope(room, Kind::MlsApp, &ciphertext, commitment)?;
            // The ratchet moved: the group state, the request and our own
            // plaintext are durable before anything leaves.
            self.pcs_note(room, 1, false);
            let mut also = self.pcs_puts();
            also.push(Put {
                ns: Namespace::Mls,
                key: self.sent_key(&header),
                value: Some(plaintext.clone()),
            });
            self.write_before_send(&Unsent::Envelope(header, body.clone()), also)
                .await?;
            match self.node.submit(self.talks, &header, &body).await {
                Ok(s) => {
                    self.note_sequenced(&s)?;
                    self.save_pending_and_clear().await?;
                    self.pcs_sequenced(room, s.node_time).await?;
                    return Ok(s.seq);
                }
                Err(e) if e.code() == Some("stale_epoch") => {
                    self.clear_unsent().await?;
                    self.receive(list).await?;
                }
                Err(e) if e.surely_not_acted() => {
                    self.clear_unsent().await?;
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(SessionError::Usage(format!(
            "the room's epoch kept moving for {EPOCH_ATTEMPTS} attempts; send again"
        )))
    }

    /// For load generators only: the envelope [`Session::send`] would submit
    /// for `content` in `room` — encrypted with the room's MLS group at its
    /// current epoch, header signed with a fresh idempotency key, body
    /// padded — built by the same code, but neither sent nor written to the
    /// store (the ratchet and the idempotency counter advance in memory).
    #[doc(hidden)]
    pub fn prepare_app_envelope(
        &mut self,
        room: RoomId,
        content: Content,
        salt: Salt,
    ) -> Result<(SignedHeader, Vec<u8>), SessionError> {
        let message = AppMessage { content, salt };
        let plaintext = message.to_bytes();
        let commitment = message.commitment();
        let ciphertext = self
            .mls
            .encrypt(room, &plaintext, &commitment.0)
            .map_err(|e| SessionError::Usage(format!("encrypting for the room: {e}")))?;
        self.envelope(room, Kind::MlsApp, &ciphertext, commitment)
    }

    /// For load generators only: the commit envelope an update of this
    /// device's own leaf in `room` makes (no adds, no removes, no Welcome) —
    /// built, headed and signed by the same code as the commits
    /// [`Session::sync_rooms`] submits to `POST …/commits` — then merged
    /// here at once, as if the node had sequenced it, so that the next call
    /// builds the commit of the next epoch. Nothing is sent or written to
    /// the store. The commits of one room must be submitted in the order
    /// they were built, each after the one before was sequenced, and
    /// application messages of `room` built before them are stale after the
    /// first (commits belong in a room with no other traffic).
    #[doc(hidden)]
    pub fn prepare_update_commit(
        &mut self,
        list: &AccessList,
        room: RoomId,
    ) -> Result<(SignedHeader, Vec<u8>), SessionError> {
        let admits = |k: &PublicKey| list.seats_device(&k.id(), room);
        let out = self
            .mls
            .commit(room, &[], &[], &admits)
            .map_err(|e| SessionError::Usage(format!("committing to the room: {e}")))?;
        let hs = Handshake::Commit {
            commit: &out.commit,
            group_info: &out.group_info,
        }
        .encode();
        let built = self
            .random_commitment()
            .and_then(|c| self.envelope(room, Kind::MlsHandshake, &hs, c))
            .and_then(|built| {
                self.mls
                    .merge_pending(room)
                    .map_err(|e| SessionError::Usage(format!("merging the room's commit: {e}")))?;
                Ok(built)
            });
        if built.is_err() {
            self.mls.discard_pending(room);
        }
        built
    }

    /// Keeps this device's key packages on the node and each of its rooms'
    /// groups in step with `list`: creates the group of a room that has
    /// none, adds the devices `list` seats in a room and removes those it
    /// no longer does, then copies the room's statements for the newcomers.
    /// `now_s`: the client's clock (key package lifetimes).
    pub async fn sync_rooms(
        &mut self,
        list: &AccessList,
        now_s: u64,
    ) -> Result<SyncReport, SessionError> {
        let mut report = SyncReport::default();
        self.flush_unsent().await?;
        let me = self.device.public_key();
        let Some(entry) = list.get(&me.id()).filter(|e| e.has(FLAG_DEVICE)) else {
            return Ok(report);
        };
        let rooms: Vec<RoomId> = entry.rooms().to_vec();

        if self.node.key_package_count(self.talks).await? < KEY_PACKAGES_LOW {
            let kps = self
                .mls
                .key_packages(
                    KEY_PACKAGES_BATCH,
                    true,
                    now_s.saturating_sub(KEY_PACKAGE_SKEW_S),
                    KEY_PACKAGE_LIFETIME_S,
                )
                .map_err(|e| SessionError::Usage(format!("making key packages: {e}")))?;
            report.key_packages_uploaded = kps.len();
            // The private keys are durable before the packages are public.
            self.store.put_many(vec![self.mls_put()]).await?;
            self.node.upload_key_packages(self.talks, kps).await?;
        }

        for room in rooms {
            self.sync_room(list, room, now_s, &mut report).await?;
        }
        Ok(report)
    }

    async fn sync_room(
        &mut self,
        list: &AccessList,
        room: RoomId,
        now_s: u64,
        report: &mut SyncReport,
    ) -> Result<(), SessionError> {
        for _ in 0..EPOCH_ATTEMPTS {
            // RFC 9420: a member that could not process a commit the log
            // holds rejoins by an external commit from the room's latest
            // GroupInfo (never from a restored state).
            if let Some(epoch) = self.mls.epoch(room)
                && let Some((current, group_info)) = self.node.group_info(self.talks, room).await?
                && current > epoch
            {
                self.receive(list).await?;
                if self.mls.epoch(room).is_some_and(|e| e < current) {
                    let out = match self.mls.rejoin(room, &group_info, &|k: &PublicKey| {
                        list.seats_device(&k.id(), room)
                    }) {
                        Ok(out) => out,
                        Err(e) => {
                            report.waiting.push((
                                room,
                                format!(
                                    "this device is behind the room's group and cannot rejoin \
                                     yet ({e}); it tries again at its next command"
                                ),
                            ));
                            return Ok(());
                        }
                    };
                    if self.submit_outgoing(list, room, out).await?.is_some() {
                        report.rejoined.push(room);
                        report.rejoined_from.push((room, epoch));
                    }
                    continue;
                }
            }
            if self.mls.epoch(room).is_none() {
                if self.node.group_info(self.talks, room).await?.is_some() {
                    report.waiting.push((
                        room,
                        "a member of the room adds this device (it has key packages on the node)"
                            .into(),
                    ));
                    return Ok(());
                }
                let group_info = self
                    .mls
                    .create_room(room)
                    .map_err(|e| SessionError::Usage(format!("creating the room's group: {e}")))?;
                let body = Handshake::Create {
                    group_info: &group_info,
                }
                .encode();
                let (header, body) =
                    self.envelope(room, Kind::MlsHandshake, &body, self.random_commitment()?)?;
                self.write_before_send(&Unsent::Envelope(header, body.clone()), Vec::new())
                    .await?;
                match self.node.submit(self.talks, &header, &body).await {
                    Ok(s) => {
                        self.note_sequenced(&s)?;
                        self.save_pending_and_clear().await?;
                        report.created.push(room);
                    }
                    Err(e) if e.code() == Some("epoch_taken") => {
                        // Another device created it first: ours goes.
                        self.mls.forget_room(room);
                        self.store.put_many(vec![self.mls_put()]).await?;
                        self.clear_unsent().await?;
                        continue;
                    }
                    Err(e) => {
                        if e.surely_not_acted() {
                            self.mls.forget_room(room);
                            self.store.put_many(vec![self.mls_put()]).await?;
                            self.clear_unsent().await?;
                        }
                        return Err(e.into());
                    }
                }
            }
            // A copy a commit of ours that added newcomers still owes them
            // (the process stopped between the commit and the copy).
            self.post_owed_copy(list, room, report).await?;
            let want = seated(list, room);
            let have: BTreeSet<PublicKey> = self.mls.members(room).into_iter().collect();
            let add: Vec<KeyId> = want.difference(&have).map(PublicKey::id).collect();
            let remove: Vec<PublicKey> = have.difference(&want).copied().collect();
            let update = self.pcs_due(room, now_s.saturating_mul(1000));
            if add.is_empty() && remove.is_empty() && !update {
                return Ok(());
            }
            let mut key_packages = Vec::new();
            if !add.is_empty() {
                let mut claimed = Vec::with_capacity(add.len());
                for devices in add.chunks(backchannel_node::rooms::MAX_CLAIM_DEVICES) {
                    claimed.extend(self.node.claim_key_packages(self.talks, devices).await?);
                }
                let missing = claimed.iter().filter(|k| k.is_none()).count();
                if missing > 0 {
                    report.waiting.push((
                        room,
                        format!(
                            "{missing} device(s) seated in the room have no key packages on the \
                             node yet (they upload them when they next run a command)"
                        ),
                    ));
                }
                key_packages = claimed.into_iter().flatten().collect();
            }
            if key_packages.is_empty() && remove.is_empty() && !update {
                return Ok(());
            }
            let admits = |k: &PublicKey| list.seats_device(&k.id(), room);
            let out = self
                .mls
                .commit(room, &key_packages, &remove, &admits)
                .map_err(|e| SessionError::Usage(format!("committing to the room: {e}")))?;
            if self.submit_outgoing(list, room, out).await?.is_none() {
                continue;
            }
            if !key_packages.is_empty() {
                report.added.push((room, key_packages.len()));
                self.post_owed_copy(list, room, report).await?;
            }
            if !remove.is_empty() {
                report.removed.push((room, remove.len()));
            }
            if key_packages.is_empty() && remove.is_empty() {
                report.updated.push(room);
            }
            return Ok(());
        }
        report.waiting.push((
            room,
            format!("other commits kept taking the room's epoch ({EPOCH_ATTEMPTS} attempts)"),
        ));
        Ok(())
    }

    /// Submits a commit this device built (`out`, pending in its state):
    /// written with its Welcome before the first send, then `POST
    /// …/commits`; once sequenced, the session receives (and so merges it
    /// when it meets it in the log) and the commit's seq is returned. When
    /// another commit took the epoch, ours is discarded and the session
    /// receives: `None`, to decide again.
    async fn submit_outgoing(
        &mut self,
        list: &AccessList,
        room: RoomId,
        out: backchannel_mls::Outgoing,
    ) -> Result<Option<u64>, SessionError> {
        let hs = Handshake::Commit {
            commit: &out.commit,
            group_info: &out.group_info,
        }
        .encode();
        let (ch, cb) = self.envelope(room, Kind::MlsHandshake, &hs, self.random_commitment()?)?;
        let welcome = match &out.welcome {
            Some(w) => Some(self.envelope(room, Kind::Welcome, w, self.random_commitment()?)?),
            None => None,
        };
        let unsent = Unsent::Commit(ch, cb.clone(), welcome.clone().map(Box::new));
        // A commit that adds devices owes them a copy of the room's earlier
        // statements: that debt is durable with the commit, and paid (or
        // dropped, if the commit never makes the log) by `post_owed_copy`.
        let also = match &welcome {
            Some(_) => {
                let mut owed = self.next_seq().to_be_bytes().to_vec();
                owed.extend_from_slice(&ch.hash().0);
                vec![Put {
                    ns: Namespace::Mls,
                    key: self.copy_key(room),
                    value: Some(owed),
                }]
            }
            None => Vec::new(),
        };
        self.write_before_send(&unsent, also).await?;
        failpoint("commit-created");
        let sent = self
            .node
            .submit_commit(
                self.talks,
                (&ch, &cb),
                welcome.as_ref().map(|(h, b)| (h, b.as_slice())),
            )
            .await;
        if sent.is_ok() {
            failpoint("commit-submitted");
        }
        match sent {
            Ok((c, w)) => {
                self.note_sequenced(&c)?;
                if let Some(w) = &w {
                    self.note_sequenced(w)?;
                }
                self.save_pending_and_clear().await?;
                failpoint("commit-replied");
                // The commit merges when the session meets it in the log.
                self.receive(list).await?;
                failpoint("commit-merged");
                self.pcs_done(room).await?;
                Ok(Some(c.seq))
            }
            Err(e) if seated_or_stale(&e) || e.surely_not_acted() => {
                self.mls.discard_pending(room);
                self.store.put_many(vec![self.mls_put()]).await?;
                self.clear_unsent().await?;
                if !seated_or_stale(&e) {
                    return Err(e.into());
                }
                self.receive(list).await?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn copy_key(&self, room: RoomId) -> Vec<u8> {
        room_key(self.talks, "copy", room)
    }

    /// Pays the copy for newcomers that a commit of ours adding devices to
    /// `room` owes (written with the commit: `fetch cursor u64 ‖ header
    /// hash`): once the commit is in the archive (it made the log: the
    /// newcomers joined at it), the room's earlier statements are copied
    /// for them; a commit that never made the log (refused, or another
    /// took its epoch) owes nothing, whatever replaces it owes its own.
    /// Run after the commit's answer and again by every sync, so a process
    /// killed anywhere between the commit and the copy still posts it. A
    /// kill after the copy but before the debt is cleared posts it twice:
    /// harmless, a copy opens only what is still unread.
    async fn post_owed_copy(
        &mut self,
        list: &AccessList,
        room: RoomId,
        report: &mut SyncReport,
    ) -> Result<(), SessionError> {
        let Some(owed) = self.store.get(Namespace::Mls, &self.copy_key(room)).await? else {
            return Ok(());
        };
        let (from, hash) = match owed.split_first_chunk::<8>() {
            Some((from, hash)) if hash.len() == 32 => (u64::from_be_bytes(*from), hash),
            _ => return Err(SessionError::Stored("a malformed copy owed".into())),
        };
        let mut at = None;
        for seq in from..self.next_seq() {
            if let Some(a) = self.archived(seq).await?
                && a.header.hash().0 == hash
            {
                at = Some(seq);
                break;
            }
        }
        if let Some(at) = at {
            let copied = self.copy_for_newcomers(list, room, at).await?;
            if copied > 0 {
                report.copied.push((room, copied));
            }
        }
        self.store
            .put_many(vec![Put {
                ns: Namespace::Mls,
                key: self.copy_key(room),
                value: None,
            }])
            .await?;
        Ok(())
    }

    fn pcs_key(&self, room: RoomId) -> Vec<u8> {
        room_key(self.talks, "pcs", room)
    }

    /// Whether this device owes the room an update of its own leaf at
    /// `now_ms` ([`PcsDue`]).
    fn pcs_due(&self, room: RoomId, now_ms: u64) -> bool {
        self.pcs.get(&room).is_some_and(|d| d.due(now_ms))
    }

    /// Counts what makes an update due (in memory; written with the next
    /// state write of the session).
    pub(crate) fn pcs_note(&mut self, room: RoomId, sent: u32, removal: bool) {
        let e = self.pcs.entry(room).or_default();
        e.sent = e.sent.saturating_add(sent);
        e.removal |= removal;
    }

    /// An own message in `room` was sequenced at `node_time` (Unix ms): the
    /// first since our last commit there starts [`PCS_UPDATE_INTERVAL`].
    async fn pcs_sequenced(&mut self, room: RoomId, node_time: u64) -> Result<(), SessionError> {
        let e = self.pcs.entry(room).or_default();
        if e.since_ms == 0 {
            e.since_ms = node_time.max(1);
            self.store.put_many(self.pcs_puts()).await?;
        }
        Ok(())
    }

    /// The writes of the update counters.
    pub(crate) fn pcs_puts(&self) -> Vec<Put> {
        self.pcs
            .iter()
            .map(|(room, due)| Put {
                ns: Namespace::Mls,
                key: self.pcs_key(*room),
                value: Some(due.to_bytes()),
            })
            .collect()
    }

    /// Reads the update counters of `rooms` from the store (a value of
    /// another length, written by an older version, counts nothing).
    pub(crate) async fn pcs_load(&mut self, rooms: &[RoomId]) -> Result<(), SessionError> {
        for room in rooms {
            if let Some(v) = self.store.get(Namespace::Mls, &self.pcs_key(*room)).await?
                && let Some(due) = PcsDue::from_bytes(&v)
            {
                self.pcs.insert(*room, due);
            }
        }
        Ok(())
    }

    /// Our own commit in the room merged: it updated our leaf.
    async fn pcs_done(&mut self, room: RoomId) -> Result<(), SessionError> {
        self.pcs.insert(room, PcsDue::default());
        self.store.put_many(self.pcs_puts()).await?;
        Ok(())
    }

    /// Posts copies of every statement archived in `room` below `below`
    /// (the commit that added newcomers) for them to open. Returns how many
    /// statements were copied.
    async fn copy_for_newcomers(
        &mut self,
        list: &AccessList,
        room: RoomId,
        below: u64,
    ) -> Result<usize, SessionError> {
        let mut items: Vec<(u64, Salt, Vec<u8>)> = Vec::new();
        for a in self.archive().await? {
            if a.seq >= below || a.header.header().room != room {
                continue;
            }
            if let Some(AppMessage {
                content: Content::Statement(bytes),
                salt,
            }) = &a.message
            {
                items.push((a.seq, *salt, bytes.clone()));
            }
        }
        let n = items.len();
        let mut chunk: Vec<(u64, Salt, Vec<u8>)> = Vec::new();
        let mut size = 0;
        for item in items {
            if !chunk.is_empty() && size + item.2.len() + COPY_ITEM_OVERHEAD > MAX_COPY_BYTES {
                let copy = encode_copy(&std::mem::take(&mut chunk));
                self.send(list, room, Content::Copy(copy), Salt(self.random32()?))
                    .await?;
                size = 0;
            }
            size += item.2.len() + COPY_ITEM_OVERHEAD;
            chunk.push(item);
        }
        if !chunk.is_empty() {
            self.send(
                list,
                room,
                Content::Copy(encode_copy(&chunk)),
                Salt(self.random32()?),
            )
            .await?;
        }
        Ok(n)
    }

    /// Applies a copy received at `at` in `room`: each copied statement
    /// whose archived envelope (same room, below `at`) could not be read
    /// here and whose header commits to exactly the copied salt and bytes
    /// is archived as that envelope's content. Returns how many it opened;
    /// an item that does not match its header is named in the error string
    /// list (evidence against the copier).
    pub(crate) async fn apply_copy(
        &mut self,
        room: RoomId,
        at: u64,
        items: Vec<(u64, Salt, Vec<u8>)>,
    ) -> Result<(usize, Vec<String>), SessionError> {
        let mut opened = 0;
        let mut bad = Vec::new();
        let mut writes = Vec::new();
        for (seq, salt, bytes) in items {
            if seq >= at {
                bad.push(format!(
                    "the copy at seq {at} names seq {seq}, not before it"
                ));
                continue;
            }
            let Some(mut a) = self.archived(seq).await? else {
                continue;
            };
            let h = *a.header.header();
            if h.room != room {
                bad.push(format!(
                    "the copy at seq {at} names seq {seq} of another room"
                ));
                continue;
            }
            // Only an application envelope this device could not read
            // because it was not in the room's group then, from a sender
            // it placed: never a handshake, never one it read or found to
            // be evidence.
            if h.kind != Kind::MlsApp || a.message.is_some() || !crate::handover::openable(&a) {
                continue;
            }
            if Commitment::to_plaintext(&salt, &bytes) != h.commitment {
                bad.push(format!(
                    "the copy at seq {at} does not open the commitment of seq {seq}"
                ));
                continue;
            }
            a.message = Some(AppMessage {
                content: Content::Statement(bytes),
                salt,
            });
            a.unreadable = None;
            writes.push(a.put(self.talks));
            opened += 1;
        }
        if !writes.is_empty() {
            self.store.put_many(writes).await?;
        }
        Ok((opened, bad))
    }

    /// Processes one sequenced MLS envelope of this session's rooms, in log
    /// order: handshakes advance the room's group, Welcomes join it,
    /// application messages are decrypted. Returns the message and, when
    /// the body could not be read here, why.
    ///
    /// A leaf is admitted only when `list` seats the device in the room.
    pub(crate) fn open_envelope(
        &mut self,
        list: &AccessList,
        header: &SignedHeader,
        body: &[u8],
        own_plaintext: Option<Vec<u8>>,
    ) -> (Option<AppMessage>, Option<String>) {
        let h = *header.header();
        let Ok(message) = unpad_body(body) else {
            return (None, Some("the body's padding is malformed".into()));
        };
        // Only devices the access list seats in this room enter its group,
        // whoever commits them (a device the record certifies for another
        // room or party never does). A commit that brought in a device
        // removed since cannot be checked: this device falls behind and
        // rejoins from the room's latest GroupInfo (`sync_rooms`).
        let admits = |k: &PublicKey| list.seats_device(&k.id(), h.room);
        match h.kind {
            Kind::MlsApp => {
                // This device's own, or a former device's of this home
                // (a restore) whose plaintext was kept at sending: the
                // commitment below is checked all the same.
                let plaintext = if let Some(p) = own_plaintext {
                    p
                } else if h.sender == self.device.public_key().id() {
                    return (
                        None,
                        Some("sent from this device, but its plaintext was not kept here".into()),
                    );
                } else {
                    match self.mls.decrypt_from(h.room, message, &h.commitment.0) {
                        Ok((sender, p)) if sender.id() == h.sender => p,
                        Ok(_) => {
                            return (
                                None,
                                Some(
                                    "evidence: the MLS sender of this message is not the device \
                                     that signed its envelope"
                                        .into(),
                                ),
                            );
                        }
                        Err(e) => return (None, Some(unreadable_text(&e))),
                    }
                };
                match AppMessage::from_bytes(&plaintext) {
                    Ok(m) if m.commitment() == h.commitment => (Some(m), None),
                    Ok(_) => (
                        None,
                        Some(
                            "evidence against its sender: the decrypted message does not open \
                             the commitment its signed header carries"
                                .into(),
                        ),
                    ),
                    Err(e) => (
                        None,
                        Some(format!(
                            "evidence against its sender: the decrypted message is malformed ({e})"
                        )),
                    ),
                }
            }
            Kind::MlsHandshake => {
                if let Ok(Handshake::Commit { commit, .. }) = Handshake::parse(message)
                    && self.mls.epoch(h.room).is_some()
                {
                    let before = self.mls.members(h.room);
                    match self.mls.process_handshake(h.room, commit, &admits) {
                        Ok(Handled::Applied { .. }) => {
                            // A removal: this device owes the room an update.
                            let after = self.mls.members(h.room);
                            if before.iter().any(|k| !after.contains(k)) {
                                self.pcs_note(h.room, 0, true);
                            }
                        }
                        Ok(Handled::Own { .. } | Handled::Removed) => {}
                        Err(backchannel_mls::MemberError::WrongEpoch { message, current })
                            if message < current => {}
                        Err(e) => {
                            return (
                                None,
                                Some(format!(
                                    "this device could not process this commit ({e}); it \
                                         rejoins the room by external commit"
                                )),
                            );
                        }
                    }
                }
                (None, None)
            }
            Kind::Welcome => {
                if self.mls.epoch(h.room).is_none()
                    && let Err(e) = self.mls.join(message, &admits)
                {
                    return (
                        None,
                        Some(format!("this device could not join from it ({e})")),
                    );
                }
                (None, None)
            }
            _ => (None, None),
        }
    }
}

/// The archived record's write.
impl Archived {
    pub(crate) fn put(&self, talks: backchannel_codec::TalksId) -> Put {
        Put {
            ns: Namespace::Archive,
            key: crate::session::seq_key(talks, self.seq),
            value: Some(self.encode()),
        }
    }
}

impl<S: ClientStore> Session<S> {
    /// The device keys in this device's MLS group of `room` (empty when it
    /// is not in the room's group).
    pub fn room_members(&self, room: RoomId) -> BTreeSet<PublicKey> {
        self.mls.members(room).into_iter().collect()
    }

    /// The room's MLS epoch on this device, if it is in the room's group.
    pub fn room_epoch(&self, room: RoomId) -> Option<u64> {
        self.mls.epoch(room)
    }
}

/// Brings several devices' sessions into step with `list` at once (for
/// tests, demos and tools that drive every device of a talks): each puts
/// key packages on the node; then each syncs in turn — the first to reach a
/// room creates its group and adds every device that has key packages —
/// and receives, until every session is in the group of every room `list`
/// seats it in. `Usage` if that does not happen within a few rounds.
pub async fn sync_all<S: ClientStore>(
    sessions: &mut [&mut Session<S>],
    list: &AccessList,
    now_s: u64,
) -> Result<(), SessionError> {
    for _ in 0..3 {
        for s in sessions.iter_mut() {
            s.sync_rooms(list, now_s).await?;
        }
        for s in sessions.iter_mut() {
            s.receive(list).await?;
        }
        let done = sessions.iter().all(|s| {
            list.get(&s.device.public_key().id())
                .is_none_or(|e| e.rooms().iter().all(|r| s.mls.epoch(*r).is_some()))
        });
        if done {
            return Ok(());
        }
    }
    Err(SessionError::Usage(
        "some devices are still not in the groups of their rooms".into(),
    ))
}

#[cfg(test)]
mod pcs_tests {
    use super::PcsDue;

    #[test]
    fn update_counters_round_trip_and_read_the_old_form() {
        let due = PcsDue {
            sent: 7,
            removal: true,
            since_ms: 1_700_000_000_000,
        };
        assert_eq!(PcsDue::from_bytes(&due.to_bytes()), Some(due));
        // Before the interval: sent and removal only; the owed update stays.
        let old = PcsDue::from_bytes(&[0, 0, 0, 3, 1]).unwrap();
        assert_eq!((old.sent, old.removal, old.since_ms), (3, true, 0));
        assert!(old.due(0));
        for bad in [&[0u8; 4][..], &[0, 0, 0, 0, 2], &[0; 12], &[0; 14]] {
            assert_eq!(PcsDue::from_bytes(bad), None, "{bad:?}");
        }
    }
}
