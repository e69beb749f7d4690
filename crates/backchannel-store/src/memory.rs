//! The in-memory backend, with a crash model: the storage of the future
//! deterministic simulator (no IO, no clock, no randomness).
//!
//! State is split into *durable* (synced) and *pending* (written, not yet
//! synced). Every [`Store`] method runs as a sequence of named **steps**,
//! counted globally from the store's creation ([`MemoryStore::steps`]):
//!
//! ```text
//! sequence                 read → reserve → sign → write envelope (one per new
//!                          envelope) → write room state (one per new envelope
//!                          gated Create or Commit) → sync → notify → acknowledge
//!                          (a batch of retries, conflicts and refused gates
//!                          only: read → reserve → acknowledge)
//! integrate                read → write tree hash (one per hash) → write checkpoint
//!                          → write integrated size → sync → acknowledge
//! create_talks             read → write talks → sync → acknowledge
//! replace_access_list      read → write access list → drop pending changes
//!                          → sync → acknowledge
//! purge_body               read → write purge → sync → acknowledge
//! replace_checkpoint_note  read → write checkpoint → sync → acknowledge
//! create_invitation        read → write invitation → sync → acknowledge
//! redeem_invitation        read → write invitation → write access list
//!                          → drop pending changes → sync → acknowledge
//! put_pending_change       read → write pending change → sync → acknowledge
//! create_blob              read → write blob → sync → acknowledge
//!                          (a room the blob already has: read only)
//! put_blob_chunk           read → write blob chunk → sync → acknowledge
//! complete_blob            read → write complete → sync → acknowledge
//!                          (a blob already complete: read only)
//! put_key_packages         read → write key package (one per new package)
//!                          → sync → acknowledge (nothing new: read only)
//! claim_key_package        read → write claim counter → delete expired key
//!                          packages (if any) → delete key package (an
//!                          ordinary one claimed) → sync → acknowledge
//! acquire_lease            read → write lease → sync → acknowledge
//!                          (another's unexpired lease: read only)
//! release_lease            read → write lease → sync → acknowledge
//!                          (not the holder: read only)
//! schedule                 read → write scheduled → sync → acknowledge
//! fire_due                 read → reserve → sign → write envelope (one per new
//!                          envelope) → write room state (as in sequence) →
//!                          delete scheduled → sync → notify → acknowledge
//!                          (nothing new: read → reserve → delete scheduled →
//!                          sync → acknowledge; nothing due: read only)
//! every read-only method   read
//! ```
//!
//! A call refused by the contract (`Stale`, `UnknownTalks`, `Limit`,
//! `Exists`, `Quota`, a purge with nothing to purge) stops after `read` and
//! writes nothing.
//! [`MemoryStore::crash_at`] arms a crash at the `n`-th step from now: that
//! step does not happen, the call returns `StoreError::Unavailable("crashed")`,
//! every pending write is dropped (as a power loss would), and every call
//! fails the same way until [`MemoryStore::restart`] brings the store back
//! with only its durable state. A crash before `sync` loses the whole call;
//! a crash after it (at `notify` or `acknowledge`) keeps all of it although
//! the caller saw an error — exactly the two outcomes the contract allows.
//!
//! One operation holds the store's (synchronous) mutex from its first step
//! to its last, so operations are serial and a pending write is never seen
//! by another call; no lock is held across an `.await` (there is none).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use backchannel_codec::{Encode, RoomId, TalksId};
use backchannel_crypto::{Digest, KeyId, Signer};
use backchannel_tlog::{BatchRecord, LeafData, SignedBatch};
use tokio::sync::broadcast;

use crate::{
    AccessListRecord, Appended, BlobRecord, CheckpointRecord, Fence, Fired, Gate, InvitationRecord,
    KeyPackageRecord, Lease, LeaseName, MAX_FIRE_BATCH, MAX_INVITATIONS,
    MAX_KEY_PACKAGES_PER_DEVICE, MAX_NUMBER, MAX_PENDING_CHANGES, MAX_READ, MAX_READ_BYTES,
    MAX_SCHEDULED, MAX_SEQUENCE_BATCH, MAX_TREE_HASHES, Outcome, PendingChange, Placement,
    Redemption, RoomCommit, RoomState, SUBSCRIPTION_BUFFER, ScheduledRecord, Store, StoreError,
    StoredEnvelope, Submission, Subscription, TalksRecord,
};

/// The message of the error every call returns while the store is down.
const CRASHED: &str = "crashed";

/// Where the store crashed: the operation and the step that did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPoint {
    /// The [`Store`] method (`"sequence"`, `"integrate"`, …).
    pub op: &'static str,
    /// The step that was cut (`"sign"`, `"sync"`, `"acknowledge"`, …).
    pub step: &'static str,
    /// The global index of that step ([`MemoryStore::steps`] before it).
    pub index: u64,
}

/// The in-memory [`Store`] with a crash model (see the module docs).
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    appended: broadcast::Sender<Appended>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store, running, with no crash armed.
    pub fn new() -> Self {
        let (appended, _) = broadcast::channel(SUBSCRIPTION_BUFFER);
        Self {
            inner: Mutex::new(Inner::default()),
            appended,
        }
    }

    /// How many steps every call so far has run (a step cut by a crash
    /// counts; calls refused while the store is down do not). Run an
    /// operation once without a crash and subtract to learn how many crash
    /// points it has.
    pub fn steps(&self) -> u64 {
        self.lock().steps
    }

    /// Arms a crash at the `n`-th step from now (0 = the very next step),
    /// whichever operation runs it. Replaces any crash already armed.
    pub fn crash_at(&self, n: u64) {
        let mut inner = self.lock();
        inner.crash_at = Some(inner.steps.saturating_add(n));
    }

    /// Disarms a crash armed by [`MemoryStore::crash_at`] that has not
    /// happened yet.
    pub fn disarm(&self) {
        self.lock().crash_at = None;
    }

    /// The lease `name` as durably stored (`None`: never taken), read
    /// behind the contract's back for tests (the contract has no read of a
    /// lease that cannot take it): runs no step, and works while down.
    pub fn lease(&self, name: LeaseName) -> Option<Lease> {
        self.lock().durable.leases.get(name.as_str()).copied()
    }

    /// Where the store crashed, while it is down (`None` while it runs).
    pub fn crashed(&self) -> Option<CrashPoint> {
        self.lock().down
    }

    /// Brings a crashed store back with its durable state only (pending
    /// writes were dropped by the crash). Disarms any crash still armed.
    /// Subscriptions survive (a real restart would drop them; subscribers
    /// re-read from their last seq either way).
    pub fn restart(&self) {
        let mut inner = self.lock();
        inner.down = None;
        inner.crash_at = None;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held can only come from a bug in this
        // module; the durable state is still consistent (it only changes in
        // `Txn::sync`, which does not panic), so keep going.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts operation `op`: fails at once while the store is down.
    fn begin(&self, op: &'static str) -> Result<Txn<'_>, StoreError> {
        let inner = self.lock();
        if inner.down.is_some() {
            return Err(StoreError::Unavailable(CRASHED.to_owned()));
        }
        Ok(Txn {
            inner,
            op,
            pending: Vec::new(),
        })
    }
}

/// Everything behind the mutex.
#[derive(Debug, Default)]
struct Inner {
    /// What survives a crash.
    durable: Durable,
    /// Steps run so far.
    steps: u64,
    /// The global step index at which to crash.
    crash_at: Option<u64>,
    /// Set while the store is down.
    down: Option<CrashPoint>,
}

/// Everything that survives a crash.
#[derive(Debug, Default)]
struct Durable {
    talks: BTreeMap<TalksId, Log>,
    /// Leases by [`LeaseName::as_str`] (a lease never taken has no entry).
    leases: BTreeMap<&'static str, Lease>,
    /// Scheduled items waiting, by id.
    scheduled: BTreeMap<[u8; 16], ScheduledRecord>,
}

/// One talks as stored. `BTreeMap`s rather than `HashMap`s: a `HashMap`
/// seeds its hasher from the OS, and the simulator wants no randomness.
#[derive(Debug, Clone)]
struct Log {
    record: TalksRecord,
    access: AccessListRecord,
    /// Envelopes; the one at index `i` has seq `i`.
    rows: Vec<Row>,
    /// (sender, idempotency key) → seq.
    keys: BTreeMap<(KeyId, [u8; 16]), u64>,
    integrated: u64,
    /// Stored tree hashes by `tlog_tiles` stored-hash index.
    hashes: BTreeMap<u64, Digest>,
    checkpoint: Option<CheckpointRecord>,
    /// The lease epoch the latest checkpoint was integrated under (`None`:
    /// unfenced).
    lease_epoch: Option<u64>,
    /// Invitations by token hash.
    invitations: BTreeMap<Digest, InvitationRecord>,
    /// Pending access-list changes (canonical bytes) by delta hash.
    pending: BTreeMap<Digest, Vec<u8>>,
    /// Blobs by content hash.
    blobs: BTreeMap<Digest, Blob>,
    /// MLS rooms with a group.
    rooms: BTreeMap<RoomId, Room>,
    /// Key packages by device, then by reference (so the lowest reference
    /// comes first).
    key_packages: BTreeMap<KeyId, BTreeMap<Vec<u8>, KeyPackageRecord>>,
    /// Claim counters by (claimer, device): (window start, claims).
    claims: BTreeMap<(KeyId, KeyId), (u64, u32)>,
}

/// One MLS room with a group.
#[derive(Debug, Clone)]
struct Room {
    state: RoomState,
    /// The commit that left each epoch, by that epoch.
    commits: BTreeMap<u64, RoomCommit>,
}

/// A room as the submissions of a batch planned so far leave it.
struct RoomPlan {
    state: Option<RoomState>,
    /// Commits planned in this batch, by the epoch they leave.
    commits: BTreeMap<u64, RoomCommit>,
}

/// One stored blob: its record and the chunks stored so far.
#[derive(Debug, Clone)]
struct Blob {
    record: BlobRecord,
    /// Chunk index → bytes.
    chunks: BTreeMap<u64, Vec<u8>>,
}

/// One stored envelope with what idempotency needs.
#[derive(Debug, Clone)]
struct Row {
    envelope: StoredEnvelope,
    header_hash: Digest,
    idempotency_key: [u8; 16],
}

impl Row {
    fn placement(&self) -> Placement {
        Placement {
            seq: self.envelope.seq,
            node_time: self.envelope.node_time,
            leaf_hash: self.envelope.leaf_hash,
            receipt: self.envelope.receipt.clone(),
        }
    }
}

/// A write waiting for the next sync.
#[derive(Debug)]
enum Write {
    Talks(TalksRecord, AccessListRecord),
    AccessList(TalksId, AccessListRecord),
    Envelope(Box<Row>),
    PurgeBody(TalksId, u64),
    TreeHash(TalksId, u64, Digest),
    Checkpoint(TalksId, CheckpointRecord),
    /// The integrated size, and the lease epoch of its checkpoint.
    Integrated(TalksId, u64, Option<u64>),
    /// A lease as it stands after an acquire or a release.
    Lease(&'static str, Lease),
    /// Stores a scheduled item.
    Scheduled(Box<ScheduledRecord>),
    /// Deletes scheduled items (fired) by id.
    Unschedule(Vec<[u8; 16]>),
    /// Stores an invitation, or replaces it (its redemption).
    Invitation(TalksId, Box<InvitationRecord>),
    /// Drops every pending change of the talks.
    DropPending(TalksId),
    PendingChange(TalksId, PendingChange),
    /// Stores a blob's record, or replaces it keeping its chunks.
    Blob(TalksId, Box<BlobRecord>),
    BlobChunk(TalksId, Digest, u64, Vec<u8>),
    CompleteBlob(TalksId, Digest),
    /// A room's new MLS state, and the commit that left an epoch.
    Room(TalksId, RoomId, Box<RoomState>, Option<(u64, RoomCommit)>),
    /// Stores a key package (a last-resort one replaces the device's
    /// previous last-resort one).
    KeyPackage(TalksId, KeyId, Box<KeyPackageRecord>),
    /// Deletes key packages of a device by reference.
    DeleteKeyPackages(TalksId, KeyId, Vec<Vec<u8>>),
    /// A claim counter: (talks, claimer, device, window start, claims).
    ClaimCounter(TalksId, KeyId, KeyId, u64, u32),
}

/// One operation in progress: the lock, and its pending writes (dropped
/// with it unless synced).
struct Txn<'a> {
    inner: MutexGuard<'a, Inner>,
    op: &'static str,
    pending: Vec<Write>,
}

impl Txn<'_> {
    /// Runs step `step`, or crashes there if a crash is armed for it.
    fn step(&mut self, step: &'static str) -> Result<(), StoreError> {
        let index = self.inner.steps;
        self.inner.steps += 1;
        if self.inner.crash_at == Some(index) {
            self.inner.crash_at = None;
            self.inner.down = Some(CrashPoint {
                op: self.op,
                step,
                index,
            });
            // Power loss: whatever was not synced is gone.
            self.pending.clear();
            return Err(StoreError::Unavailable(CRASHED.to_owned()));
        }
        Ok(())
    }

    /// A write step: `w` becomes pending.
    fn write(&mut self, step: &'static str, w: Write) -> Result<(), StoreError> {
        self.step(step)?;
        self.pending.push(w);
        Ok(())
    }

    /// The sync step: every pending write becomes durable, all at once.
    fn sync(&mut self) -> Result<(), StoreError> {
        self.step("sync")?;
        for w in std::mem::take(&mut self.pending) {
            apply(&mut self.inner.durable, w);
        }
        Ok(())
    }

    fn log(&self, talks: TalksId) -> Option<&Log> {
        self.inner.durable.talks.get(&talks)
    }
}

/// Makes one write durable. The operation that queued it held the lock
/// since it read the state the write depends on, so the talks exists and a
/// new envelope's seq is the log's next; a write that breaks this is a bug
/// here and is dropped rather than corrupting the log.
fn apply(d: &mut Durable, w: Write) {
    let durable = &mut d.talks;
    match w {
        Write::Talks(record, access) => {
            durable.entry(record.talks).or_insert(Log {
                record,
                access,
                rows: Vec::new(),
                keys: BTreeMap::new(),
                integrated: 0,
                hashes: BTreeMap::new(),
                checkpoint: None,
                lease_epoch: None,
                invitations: BTreeMap::new(),
                pending: BTreeMap::new(),
                blobs: BTreeMap::new(),
                rooms: BTreeMap::new(),
                key_packages: BTreeMap::new(),
                claims: BTreeMap::new(),
            });
        }
        Write::AccessList(talks, access) => {
            if let Some(log) = durable.get_mut(&talks) {
                log.access = access;
            }
        }
        Write::Envelope(row) => {
            if let Some(log) = durable.get_mut(&row.envelope.talks)
                && row.envelope.seq == log.rows.len() as u64
            {
                log.keys
                    .insert((row.envelope.sender, row.idempotency_key), row.envelope.seq);
                log.rows.push(*row);
            }
        }
        Write::PurgeBody(talks, seq) => {
            if let Some(row) = durable
                .get_mut(&talks)
                .and_then(|log| usize::try_from(seq).ok().and_then(|i| log.rows.get_mut(i)))
            {
                row.envelope.body = None;
            }
        }
        Write::TreeHash(talks, index, hash) => {
            if let Some(log) = durable.get_mut(&talks) {
                log.hashes.insert(index, hash);
            }
        }
        Write::Checkpoint(talks, checkpoint) => {
            if let Some(log) = durable.get_mut(&talks) {
                log.checkpoint = Some(checkpoint);
            }
        }
        Write::Integrated(talks, size, epoch) => {
            if let Some(log) = durable.get_mut(&talks) {
                log.integrated = size;
                log.lease_epoch = epoch;
            }
        }
        Write::Lease(name, lease) => {
            d.leases.insert(name, lease);
        }
        Write::Scheduled(item) => {
            d.scheduled.insert(item.id, *item);
        }
        Write::Unschedule(ids) => {
            for id in &ids {
                d.scheduled.remove(id);
            }
        }
        Write::Invitation(talks, invitation) => {
            if let Some(log) = durable.get_mut(&talks) {
                log.invitations.insert(invitation.token_hash, *invitation);
            }
        }
        Write::DropPending(talks) => {
            if let Some(log) = durable.get_mut(&talks) {
                log.pending.clear();
            }
        }
        Write::PendingChange(talks, change) => {
            if let Some(log) = durable.get_mut(&talks) {
                log.pending.insert(change.delta_hash, change.change);
            }
        }
        Write::Blob(talks, record) => {
            if let Some(log) = durable.get_mut(&talks) {
                match log.blobs.get_mut(&record.hash) {
                    Some(blob) => blob.record = *record,
                    None => {
                        log.blobs.insert(
                            record.hash,
                            Blob {
                                record: *record,
                                chunks: BTreeMap::new(),
                            },
                        );
                    }
                }
            }
        }
        Write::BlobChunk(talks, hash, index, bytes) => {
            if let Some(blob) = durable.get_mut(&talks).and_then(|l| l.blobs.get_mut(&hash)) {
                blob.chunks.insert(index, bytes);
            }
        }
        Write::CompleteBlob(talks, hash) => {
            if let Some(blob) = durable.get_mut(&talks).and_then(|l| l.blobs.get_mut(&hash)) {
                blob.record.complete = true;
            }
        }
        Write::Room(talks, room, state, commit) => {
            if let Some(log) = durable.get_mut(&talks) {
                let state = *state;
                let r = log.rooms.entry(room).or_insert_with(|| Room {
                    state: state.clone(),
                    commits: BTreeMap::new(),
                });
                r.state = state;
                if let Some((epoch, c)) = commit {
                    r.commits.insert(epoch, c);
                }
            }
        }
        Write::KeyPackage(talks, device, package) => {
            if let Some(log) = durable.get_mut(&talks) {
                let packages = log.key_packages.entry(device).or_default();
                if package.last_resort {
                    packages.retain(|_, p| !p.last_resort);
                }
                packages.insert(package.reference.clone(), *package);
            }
        }
        Write::DeleteKeyPackages(talks, device, references) => {
            if let Some(log) = durable.get_mut(&talks)
                && let Some(packages) = log.key_packages.get_mut(&device)
            {
                for r in &references {
                    packages.remove(r);
                }
                if packages.is_empty() {
                    log.key_packages.remove(&device);
                }
            }
        }
        Write::ClaimCounter(talks, claimer, device, start, claims) => {
            if let Some(log) = durable.get_mut(&talks) {
                log.claims.insert((claimer, device), (start, claims));
            }
        }
    }
}

/// The compare-and-swap of an access-list replacement (by
/// [`Store::replace_access_list`] or [`Store::redeem_invitation`]): the
/// current hash must be `expected` and `next` the next version.
fn check_access_list_swap(
    current: &AccessListRecord,
    expected: Digest,
    next: &AccessListRecord,
) -> Result<(), StoreError> {
    if next.version > MAX_NUMBER {
        return Err(StoreError::Limit("versions are below 2^63"));
    }
    if current.hash != expected || Some(next.version) != current.version.checked_add(1) {
        return Err(StoreError::Stale);
    }
    Ok(())
}

pub(crate) use crate::stored_hash_count;

/// The bytes of an envelope that count against [`MAX_READ_BYTES`]: its
/// header and its body (a purged body counts nothing).
pub(crate) fn envelope_bytes(e: &StoredEnvelope) -> usize {
    e.header
        .len()
        .saturating_add(e.body.as_ref().map_or(0, Vec::len))
}

/// The caller's errors of [`Store::tree_hashes`], checked for the whole
/// call before any hash is read: too many indexes, or an index the tree of
/// `integrated` leaves does not have (`Limit`, never `Corrupt`).
pub(crate) fn check_tree_hash_indexes(indexes: &[u64], integrated: u64) -> Result<(), StoreError> {
    if indexes.len() > MAX_TREE_HASHES {
        return Err(StoreError::Limit(
            "tree_hashes: at most MAX_TREE_HASHES indexes per call",
        ));
    }
    let stored = stored_hash_count(integrated);
    if indexes.iter().any(|&i| i >= stored) {
        return Err(StoreError::Limit(
            "tree_hashes: a hash at or beyond the integrated tree was asked for",
        ));
    }
    Ok(())
}

/// What one submission of a batch becomes, before signing.
enum Planned {
    /// Settled by an envelope stored earlier.
    Done(Outcome),
    /// The `i`-th new envelope of the batch (itself, or a retry of it
    /// within the batch).
    New(usize),
    /// A different header under the key of the `i`-th new envelope.
    ConflictNew(usize),
}

impl MemoryStore {
    /// The sequencing of [`Store::sequence`] and [`Store::fire_due`], from
    /// the `reserve` step to `acknowledge`, inside the caller's operation
    /// (which ran `read` and checked the arguments). `claimed` (fired
    /// items to delete) is written before the sync, in the same
    /// all-or-nothing step sequence as the envelopes.
    fn sequence_in(
        &self,
        txn: &mut Txn<'_>,
        batch: Vec<Submission>,
        clock_ms: u64,
        log_key: &(dyn Signer + Sync),
        claimed: Option<Write>,
    ) -> Result<Vec<Outcome>, StoreError> {
        txn.step("reserve")?;
        // Per talks: (next seq, node time of this batch's new envelopes).
        let mut heads: BTreeMap<TalksId, (u64, u64)> = BTreeMap::new();
        // (talks, sender, key) → index in `new`, for retries within the batch.
        let mut batch_keys: BTreeMap<(TalksId, KeyId, [u8; 16]), usize> = BTreeMap::new();
        let mut new: Vec<(Submission, BatchRecord)> = Vec::new();
        let mut plan = Vec::with_capacity(batch.len());
        // Rooms gated in this batch, as its earlier submissions leave them.
        let mut rooms: BTreeMap<(TalksId, RoomId), RoomPlan> = BTreeMap::new();
        let mut room_writes: Vec<Write> = Vec::new();
        for s in batch {
            let Some(log) = txn.log(s.talks) else {
                return Err(StoreError::UnknownTalks);
            };
            // The access list first, before the idempotency lookup.
            if let Some(refused) =
                crate::access_changed(s.access_version, Some(log.access.version))?
            {
                plan.push(Planned::Done(refused));
                continue;
            }
            if let Some(row) = log
                .keys
                .get(&(s.sender, s.idempotency_key))
                .and_then(|&seq| usize::try_from(seq).ok())
                .and_then(|i| log.rows.get(i))
            {
                plan.push(Planned::Done(if row.header_hash == s.header_hash {
                    Outcome::Sequenced(row.placement())
                } else {
                    Outcome::Conflict {
                        seq: row.envelope.seq,
                    }
                }));
                continue;
            }
            let key = (s.talks, s.sender, s.idempotency_key);
            if let Some(&i) = batch_keys.get(&key) {
                plan.push(if new[i].0.header_hash == s.header_hash {
                    Planned::New(i)
                } else {
                    Planned::ConflictNew(i)
                });
                continue;
            }
            // The gate, after the idempotency lookup: a retry that landed
            // got its placement above, whatever the room's epoch is now.
            let room = match &s.gate {
                None => None,
                Some(gate) => {
                    let durable = log.rooms.get(&s.room);
                    let planned = rooms.entry((s.talks, s.room)).or_insert_with(|| RoomPlan {
                        state: durable.map(|r| r.state.clone()),
                        commits: BTreeMap::new(),
                    });
                    let commit = gate.commit_epoch().and_then(|e| {
                        planned
                            .commits
                            .get(&e)
                            .or_else(|| durable.and_then(|r| r.commits.get(&e)))
                            .copied()
                    });
                    if let Err(refused) = crate::check_gate(gate, planned.state.as_ref(), commit) {
                        plan.push(Planned::Done(refused));
                        continue;
                    }
                    Some((gate, planned))
                }
            };
            let (next, time) = heads.entry(s.talks).or_insert_with(|| {
                // Node time never decreases along a log: max(previous, clock).
                let previous = log.rows.last().map_or(0, |r| r.envelope.node_time);
                (log.rows.len() as u64, previous.max(clock_ms))
            });
            let leaf = LeafData {
                seq: *next,
                timestamp_ms: *time,
                room: s.room,
                header_hash: s.header_hash,
                body_hash: s.body_hash,
            };
            let record = BatchRecord {
                talks: s.talks,
                seq: *next,
                timestamp_ms: *time,
                leaf_hash: leaf.hash(),
            };
            if let Some((gate, planned)) = room
                && let Some((state, commit)) =
                    crate::gate_effect(gate, planned.state.as_ref(), *next, s.header_hash)
            {
                if let Some((epoch, c)) = commit {
                    planned.commits.insert(epoch, c);
                }
                planned.state = Some(state.clone());
                room_writes.push(Write::Room(s.talks, s.room, Box::new(state), commit));
            }
            *next += 1;
            batch_keys.insert(key, new.len());
            plan.push(Planned::New(new.len()));
            new.push((s, record));
        }

        let mut placements = Vec::with_capacity(new.len());
        if !new.is_empty() {
            txn.step("sign")?;
            let signed =
                SignedBatch::sign(log_key, new.iter().map(|(_, r)| *r).collect(), clock_ms)
                    .map_err(|e| StoreError::Sign(e.to_string()))?;
            for (i, (s, r)) in new.into_iter().enumerate() {
                let receipt = signed
                    .receipt(i)
                    .ok_or_else(|| StoreError::Sign("no receipt for a batch record".to_owned()))?
                    .to_canonical_bytes();
                let welcome_to = match s.gate {
                    Some(Gate::Welcome { to, .. }) => Some(to),
                    _ => None,
                };
                let row = Row {
                    envelope: StoredEnvelope {
                        welcome_to,
                        talks: s.talks,
                        seq: r.seq,
                        node_time: r.timestamp_ms,
                        room: s.room,
                        sender: s.sender,
                        header: s.header,
                        body: Some(s.body),
                        body_hash: s.body_hash,
                        leaf_hash: r.leaf_hash,
                        receipt,
                    },
                    header_hash: s.header_hash,
                    idempotency_key: s.idempotency_key,
                };
                placements.push((row.placement(), row.envelope.seq));
                txn.write("write envelope", Write::Envelope(Box::new(row)))?;
            }
            for w in room_writes {
                txn.write("write room state", w)?;
            }
            if let Some(w) = claimed {
                txn.write("delete scheduled", w)?;
            }
            txn.sync()?;
            txn.step("notify")?;
            for (&talks, &(size, _)) in &heads {
                // No receiver is not an error: nobody is listening.
                let _ = self.appended.send(Appended { talks, size });
            }
        } else if let Some(w) = claimed {
            // Nothing new (retries and refusals only): the claimed items
            // are deleted all the same, durably.
            txn.write("delete scheduled", w)?;
            txn.sync()?;
        }
        txn.step("acknowledge")?;
        Ok(plan
            .into_iter()
            .map(|p| match p {
                Planned::Done(o) => o,
                Planned::New(i) => Outcome::Sequenced(placements[i].0.clone()),
                Planned::ConflictNew(i) => Outcome::Conflict {
                    seq: placements[i].1,
                },
            })
            .collect())
    }
}

impl Store for MemoryStore {
    async fn create_talks(
        &self,
        talks: &TalksRecord,
        access_list: &AccessListRecord,
    ) -> Result<(), StoreError> {
        let mut txn = self.begin("create_talks")?;
        txn.step("read")?;
        if talks.created_at > MAX_NUMBER || access_list.version != 0 {
            return Err(StoreError::Limit(
                "created_at must be below 2^63 and the first access list is version 0",
            ));
        }
        if txn.log(talks.talks).is_some() {
            return Err(StoreError::TalksExists);
        }
        txn.write(
            "write talks",
            Write::Talks(talks.clone(), access_list.clone()),
        )?;
        txn.sync()?;
        txn.step("acknowledge")
    }

    async fn talks(&self, talks: TalksId) -> Result<Option<TalksRecord>, StoreError> {
        let mut txn = self.begin("talks")?;
        txn.step("read")?;
        Ok(txn.log(talks).map(|l| l.record.clone()))
    }

    async fn access_list(&self, talks: TalksId) -> Result<Option<AccessListRecord>, StoreError> {
        let mut txn = self.begin("access_list")?;
        txn.step("read")?;
        Ok(txn.log(talks).map(|l| l.access.clone()))
    }

    async fn replace_access_list(
        &self,
        talks: TalksId,
        expected: Digest,
        next: &AccessListRecord,
    ) -> Result<(), StoreError> {
        let mut txn = self.begin("replace_access_list")?;
        txn.step("read")?;
        let current = &txn.log(talks).ok_or(StoreError::UnknownTalks)?.access;
        check_access_list_swap(current, expected, next)?;
        txn.write("write access list", Write::AccessList(talks, next.clone()))?;
        // Every pending change applied to the list just replaced.
        txn.write("drop pending changes", Write::DropPending(talks))?;
        txn.sync()?;
        txn.step("acknowledge")
    }

    async fn sequence(
        &self,
        batch: Vec<Submission>,
        clock_ms: u64,
        log_key: &(dyn Signer + Sync),
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut txn = self.begin("sequence")?;
        txn.step("read")?;
        if batch.len() > MAX_SEQUENCE_BATCH {
            return Err(StoreError::Limit(
                "a sequence batch holds at most MAX_SEQUENCE_BATCH envelopes",
            ));
        }
        if clock_ms > MAX_NUMBER {
            return Err(StoreError::Limit("timestamps are below 2^63"));
        }
        if batch.iter().any(|s| txn.log(s.talks).is_none()) {
            return Err(StoreError::UnknownTalks);
        }

        self.sequence_in(&mut txn, batch, clock_ms, log_key, None)
    }

    async fn log_size(&self, talks: TalksId) -> Result<u64, StoreError> {
        let mut txn = self.begin("log_size")?;
        txn.step("read")?;
        Ok(txn.log(talks).map_or(0, |l| l.rows.len() as u64))
    }

    async fn read(
        &self,
        talks: TalksId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        let mut txn = self.begin("read")?;
        txn.step("read")?;
        let Some(log) = txn.log(talks) else {
            return Ok(Vec::new());
        };
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for r in log.rows.iter().skip(from).take(limit.min(MAX_READ)) {
            bytes = bytes.saturating_add(envelope_bytes(&r.envelope));
            // The first row always goes, so paging makes progress.
            if !out.is_empty() && bytes > MAX_READ_BYTES {
                break;
            }
            out.push(r.envelope.clone());
        }
        Ok(out)
    }

    async fn purge_body(&self, talks: TalksId, seq: u64) -> Result<bool, StoreError> {
        let mut txn = self.begin("purge_body")?;
        txn.step("read")?;
        let has_body = txn
            .log(talks)
            .and_then(|l| usize::try_from(seq).ok().and_then(|i| l.rows.get(i)))
            .is_some_and(|r| r.envelope.body.is_some());
        if !has_body {
            return Ok(false);
        }
        txn.write("write purge", Write::PurgeBody(talks, seq))?;
        txn.sync()?;
        txn.step("acknowledge")?;
        Ok(true)
    }

    async fn integrated_size(&self, talks: TalksId) -> Result<u64, StoreError> {
        let mut txn = self.begin("integrated_size")?;
        txn.step("read")?;
        Ok(txn.log(talks).map_or(0, |l| l.integrated))
    }

    async fn tree_hashes(
        &self,
        talks: TalksId,
        indexes: &[u64],
    ) -> Result<Vec<Digest>, StoreError> {
        let mut txn = self.begin("tree_hashes")?;
        txn.step("read")?;
        let log = txn.log(talks);
        check_tree_hash_indexes(indexes, log.map_or(0, |l| l.integrated))?;
        indexes
            .iter()
            .map(|i| {
                log.and_then(|l| l.hashes.get(i)).copied().ok_or_else(|| {
                    StoreError::Corrupt("a tree hash is missing below the integrated size".into())
                })
            })
            .collect()
    }

    async fn integrate(
        &self,
        talks: TalksId,
        from: u64,
        to: u64,
        hashes: &[(u64, Digest)],
        checkpoint: &CheckpointRecord,
        fence: Option<Fence>,
    ) -> Result<(), StoreError> {
        let mut txn = self.begin("integrate")?;
        txn.step("read")?;
        // The lease first, as the database backends lock it first.
        if let Some(fence) = fence {
            let stored = txn.inner.durable.leases.get(fence.name.as_str());
            crate::check_fence(fence, stored.map(|l| l.epoch))?;
        }
        let log = txn.log(talks).ok_or(StoreError::UnknownTalks)?;
        if log.integrated != from {
            return Err(StoreError::Stale);
        }
        if to < from || to > log.rows.len() as u64 || checkpoint.size != to {
            return Err(StoreError::Limit(
                "integrate: need from <= to <= log size and a checkpoint at size to",
            ));
        }
        if from == to && log.checkpoint.is_some() {
            // Re-signing would drop the cosignatures gathered on the note.
            return Err(StoreError::Limit(
                "integrate: nothing new to integrate; add cosignatures with replace_checkpoint_note",
            ));
        }
        crate::check_integration_hashes(from, to, hashes)?;
        for &(index, hash) in hashes {
            txn.write("write tree hash", Write::TreeHash(talks, index, hash))?;
        }
        txn.write(
            "write checkpoint",
            Write::Checkpoint(talks, checkpoint.clone()),
        )?;
        txn.write(
            "write integrated size",
            Write::Integrated(talks, to, fence.map(|f| f.epoch)),
        )?;
        txn.sync()?;
        txn.step("acknowledge")
    }

    async fn checkpoint(&self, talks: TalksId) -> Result<Option<CheckpointRecord>, StoreError> {
        let mut txn = self.begin("checkpoint")?;
        txn.step("read")?;
        Ok(txn.log(talks).and_then(|l| l.checkpoint.clone()))
    }

    async fn replace_checkpoint_note(
        &self,
        talks: TalksId,
        size: u64,
        expected: &[u8],
        note: &[u8],
    ) -> Result<(), StoreError> {
        let mut txn = self.begin("replace_checkpoint_note")?;
        txn.step("read")?;
        let log = txn.log(talks).ok_or(StoreError::UnknownTalks)?;
        match &log.checkpoint {
            Some(c) if c.size == size && c.note == expected => {}
            _ => return Err(StoreError::Stale),
        }
        txn.write(
            "write checkpoint",
            Write::Checkpoint(
                talks,
                CheckpointRecord {
                    size,
                    note: note.to_vec(),
                },
            ),
        )?;
        txn.sync()?;
        txn.step("acknowledge")
    }

    fn subscribe(&self) -> Subscription {
        self.appended.subscribe()
    }

    async fn integration_lag(&self) -> Result<crate::IntegrationLag, StoreError> {
        let mut txn = self.begin("integration_lag")?;
        txn.step("read")?;
        let mut lag = crate::IntegrationLag::default();
        for log in txn.inner.durable.talks.values() {
            let behind = (log.rows.len() as u64).saturating_sub(log.integrated);
            if behind > 0 {
                lag.lagging_talks += 1;
                lag.max_leaves = lag.max_leaves.max(behind);
            }
        }
        Ok(lag)
    }

    async fn unintegrated_talks(&self, limit: usize) -> Result<Vec<TalksId>, StoreError> {
        let mut txn = self.begin("unintegrated_talks")?;
        txn.step("read")?;
        Ok(txn
            .inner
            .durable
            .talks
            .iter()
            .filter(|(_, log)| log.integrated < log.rows.len() as u64)
            .map(|(&talks, _)| talks)
            .take(limit)
            .collect())
    }

    async fn create_invitation(
        &self,
        talks: TalksId,
        invitation: &InvitationRecord,
    ) -> Result<(), StoreError> {
        let mut txn = self.begin("create_invitation")?;
        txn.step("read")?;
        crate::check_new_invitation(invitation)?;
        let log = txn.log(talks).ok_or(StoreError::UnknownTalks)?;
        if log.invitations.contains_key(&invitation.token_hash) {
            return Err(StoreError::Exists);
        }
        if log.invitations.len() >= MAX_INVITATIONS {
            return Err(StoreError::Limit(
                "a talks holds at most MAX_INVITATIONS invitations",
            ));
        }
        txn.write(
            "write invitation",
            Write::Invitation(talks, Box::new(invitation.clone())),
        )?;
        txn.sync()?;
        txn.step("acknowledge")
    }

    async fn invitation(
        &self,
        talks: TalksId,
        token_hash: Digest,
    ) -> Result<Option<InvitationRecord>, StoreError> {
        let mut txn = self.begin("invitation")?;
        txn.step("read")?;
        Ok(txn
            .log(talks)
            .and_then(|l| l.invitations.get(&token_hash))
            .cloned())
    }

    async fn invitations(&self, talks: TalksId) -> Result<Vec<InvitationRecord>, StoreError> {
        let mut txn = self.begin("invitations")?;
        txn.step("read")?;
        Ok(txn
            .log(talks)
            .map(|l| l.invitations.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn redeem_invitation(
        &self,
        talks: TalksId,
        token_hash: Digest,
        redemption: &Redemption,
        expected: Digest,
        next: &AccessListRecord,
    ) -> Result<(), StoreError> {
        let mut txn = self.begin("redeem_invitation")?;
        txn.step("read")?;
        crate::check_redemption(redemption, next)?;
        let log = txn.log(talks).ok_or(StoreError::UnknownTalks)?;
        let Some(invitation) = log.invitations.get(&token_hash) else {
            return Err(StoreError::Stale);
        };
        if invitation.redeemed.is_some() {
            return Err(StoreError::Stale);
        }
        check_access_list_swap(&log.access, expected, next)?;
        let redeemed = InvitationRecord {
            redeemed: Some(redemption.clone()),
            ..invitation.clone()
        };
        txn.write(
            "write invitation",
            Write::Invitation(talks, Box::new(redeemed)),
        )?;
        txn.write("write access list", Write::AccessList(talks, next.clone()))?;
        txn.write("drop pending changes", Write::DropPending(talks))?;
        txn.sync()?;
        txn.step("acknowledge")
    }

    async fn pending_changes(&self, talks: TalksId) -> Result<Vec<PendingChange>, StoreError> {
        let mut txn = self.begin("pending_changes")?;
        txn.step("read")?;
        Ok(txn
            .log(talks)
            .map(|l| {
                l.pending
                    .iter()
                    .map(|(&delta_hash, change)| PendingChange {
                        delta_hash,
                        change: change.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn put_pending_change(
        &self,
        talks: TalksId,
        base: Digest,
        expected: Option<&[u8]>,
        change: &PendingChange,
    ) -> Result<(), StoreError> {
        let mut txn = self.begin("put_pending_change")?;
        txn.step("read")?;
        let log = txn.log(talks).ok_or(StoreError::UnknownTalks)?;
        let stored = log.pending.get(&change.delta_hash);
        if log.access.hash != base || stored.map(Vec::as_slice) != expected {
            return Err(StoreError::Stale);
        }
        if stored.is_none() && log.pending.len() >= MAX_PENDING_CHANGES {
            return Err(StoreError::Limit(
                "a talks holds at most MAX_PENDING_CHANGES pending changes",
            ));
        }
        txn.write(
            "write pending change",
            Write::PendingChange(talks, change.clone()),
        )?;
        txn.sync()?;
        txn.step("acknowledge")
    }

    async fn create_blob(
        &self,
        talks: TalksId,
        blob: &BlobRecord,
        quota: u64,
    ) -> Result<BlobRecord, StoreError> {
        let mut txn = self.begin("create_blob")?;
        txn.step("read")?;
        let room = crate::check_new_blob(blob)?;
        let log = txn.log(talks).ok_or(StoreError::UnknownTalks)?;
        let record = match log.blobs.get(&blob.hash) {
            Some(existing) => {
                if existing.record.size != blob.size {
                    return Err(StoreError::Limit(
                        "a blob with this hash exists with another size",
                    ));
                }
                let mut record = existing.record.clone();
                match record.rooms.binary_search(&room) {
                    // Already referenced from this room: nothing to write.
                    Ok(_) => return Ok(record),
                    Err(at) => record.rooms.insert(at, room),
                }
                record
            }
            None => {
                let used = log
                    .blobs
                    .values()
                    .filter(|b| b.record.party == blob.party)
                    .fold(0u64, |sum, b| sum.saturating_add(b.record.size));
                if !crate::fits_quota(used, blob.size, quota) {
                    return Err(StoreError::Quota);
                }
                blob.clone()
            }
        };
        txn.write("write blob", Write::Blob(talks, Box::new(record.clone())))?;
        txn.sync()?;
        txn.step("acknowledge")?;
        Ok(record)
    }

    async fn blob(&self, talks: TalksId, hash: Digest) -> Result<Option<BlobRecord>, StoreError> {
        let mut txn = self.begin("blob")?;
        txn.step("read")?;
        Ok(txn
            .log(talks)
            .and_then(|l| l.blobs.get(&hash))
            .map(|b| b.record.clone()))
    }

    async fn put_blob_chunk(
        &self,
        talks: TalksId,
        hash: Digest,
        index: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let mut txn = self.begin("put_blob_chunk")?;
        txn.step("read")?;
        let log = txn.log(talks).ok_or(StoreError::UnknownTalks)?;
        let Some(blob) = log.blobs.get(&hash) else {
            return Err(StoreError::Limit("put_blob_chunk: no such blob"));
        };
        if blob.record.complete {
            return Err(StoreError::Limit("put_blob_chunk: the blob is complete"));
        }
        crate::check_blob_chunk(blob.record.size, index, bytes.len())?;
        txn.write(
            "write blob chunk",
            Write::BlobChunk(talks, hash, index, bytes.to_vec()),
        )?;
        txn.sync()?;
        txn.step("acknowledge")
    }

    async fn blob_chunk(
        &self,
        talks: TalksId,
        hash: Digest,
        index: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut txn = self.begin("blob_chunk")?;
        txn.step("read")?;
        Ok(txn
            .log(talks)
            .and_then(|l| l.blobs.get(&hash))
            .and_then(|b| b.chunks.get(&index))
            .cloned())
    }

    async fn blob_chunks_present(
        &self,
        talks: TalksId,
        hash: Digest,
    ) -> Result<Vec<u64>, StoreError> {
        let mut txn = self.begin("blob_chunks_present")?;
        txn.step("read")?;
        Ok(txn
            .log(talks)
            .and_then(|l| l.blobs.get(&hash))
            .map(|b| b.chunks.keys().copied().collect())
            .unwrap_or_default())
    }

    async fn complete_blob(&self, talks: TalksId, hash: Digest) -> Result<(), StoreError> {
        let mut txn = self.begin("complete_blob")?;
        txn.step("read")?;
        let log = txn.log(talks).ok_or(StoreError::UnknownTalks)?;
        let Some(blob) = log.blobs.get(&hash) else {
            return Err(StoreError::Limit("complete_blob: no such blob"));
        };
        if blob.record.complete {
            return Ok(());
        }
        let count = BlobRecord::chunk_count(blob.record.size);
        // Chunks are only stored at indexes below the count, so a count of
        // them says whether every one is there.
        if blob.chunks.len() as u64 != count {
            return Err(StoreError::Limit("complete_blob: a chunk is missing"));
        }
        txn.write("write complete", Write::CompleteBlob(talks, hash))?;
        txn.sync()?;
        txn.step("acknowledge")
    }

    async fn room_state(
        &self,
        talks: TalksId,
        room: RoomId,
    ) -> Result<Option<RoomState>, StoreError> {
        let mut txn = self.begin("room_state")?;
        txn.step("read")?;
        Ok(txn
            .log(talks)
            .and_then(|l| l.rooms.get(&room))
            .map(|r| r.state.clone()))
    }

    async fn acquire_lease(
        &self,
        name: LeaseName,
        holder: [u8; 16],
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Lease, StoreError> {
        let mut txn = self.begin("acquire_lease")?;
        txn.step("read")?;
        let current = txn.inner.durable.leases.get(name.as_str()).copied();
        let Some(next) = crate::next_lease(current, holder, now_ms, ttl_ms)? else {
            // Another holder's unexpired lease: it stands.
            return Ok(current.unwrap_or(Lease {
                epoch: 0,
                holder: [0; 16],
                expires_ms: 0,
            }));
        };
        txn.write("write lease", Write::Lease(name.as_str(), next))?;
        txn.sync()?;
        txn.step("acknowledge")?;
        Ok(next)
    }

    async fn release_lease(
        &self,
        name: LeaseName,
        holder: [u8; 16],
        epoch: u64,
    ) -> Result<bool, StoreError> {
        let mut txn = self.begin("release_lease")?;
        txn.step("read")?;
        let Some(current) = txn
            .inner
            .durable
            .leases
            .get(name.as_str())
            .copied()
            .filter(|l| l.epoch > 0 && l.epoch == epoch && l.holder == holder)
        else {
            return Ok(false);
        };
        txn.write(
            "write lease",
            Write::Lease(
                name.as_str(),
                Lease {
                    expires_ms: 0,
                    ..current
                },
            ),
        )?;
        txn.sync()?;
        txn.step("acknowledge")?;
        Ok(true)
    }

    async fn schedule(&self, item: &ScheduledRecord) -> Result<(), StoreError> {
        let mut txn = self.begin("schedule")?;
        txn.step("read")?;
        crate::check_scheduled(item)?;
        if txn.log(item.submission.talks).is_none() {
            return Err(StoreError::UnknownTalks);
        }
        let scheduled = &txn.inner.durable.scheduled;
        if scheduled.contains_key(&item.id) {
            return Err(StoreError::Exists);
        }
        if scheduled.len() >= MAX_SCHEDULED {
            return Err(StoreError::Limit(
                "a store holds at most MAX_SCHEDULED scheduled items",
            ));
        }
        txn.write("write scheduled", Write::Scheduled(Box::new(item.clone())))?;
        txn.sync()?;
        txn.step("acknowledge")
    }

    async fn fire_due(
        &self,
        now_ms: u64,
        limit: usize,
        log_key: &(dyn Signer + Sync),
    ) -> Result<Vec<Fired>, StoreError> {
        let mut txn = self.begin("fire_due")?;
        txn.step("read")?;
        if now_ms > MAX_NUMBER {
            return Err(StoreError::Limit("timestamps are below 2^63"));
        }
        let mut due: Vec<&ScheduledRecord> = txn
            .inner
            .durable
            .scheduled
            .values()
            .filter(|s| s.due_ms <= now_ms)
            .collect();
        // Earliest first, ties by id (the order the database backends use).
        due.sort_by_key(|s| (s.due_ms, s.id));
        due.truncate(limit.min(MAX_FIRE_BATCH));
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<[u8; 16]> = due.iter().map(|s| s.id).collect();
        let batch: Vec<Submission> = due.iter().map(|s| s.submission.clone()).collect();
        let outcomes = self.sequence_in(
            &mut txn,
            batch,
            now_ms,
            log_key,
            Some(Write::Unschedule(ids.clone())),
        )?;
        Ok(ids
            .into_iter()
            .zip(outcomes)
            .map(|(id, outcome)| Fired { id, outcome })
            .collect())
    }

    async fn scheduled_count(&self) -> Result<u64, StoreError> {
        let mut txn = self.begin("scheduled_count")?;
        txn.step("read")?;
        Ok(txn.inner.durable.scheduled.len() as u64)
    }

    async fn put_key_packages(
        &self,
        talks: TalksId,
        device: KeyId,
        packages: Vec<KeyPackageRecord>,
    ) -> Result<(), StoreError> {
        let mut txn = self.begin("put_key_packages")?;
        txn.step("read")?;
        crate::check_key_packages(&packages)?;
        let log = txn.log(talks).ok_or(StoreError::UnknownTalks)?;
        let stored = log.key_packages.get(&device);
        let new: Vec<KeyPackageRecord> =
            crate::new_key_packages(&packages, |r| stored.is_some_and(|m| m.contains_key(r)))
                .into_iter()
                .cloned()
                .collect();
        let held = stored.map_or(0, BTreeMap::len);
        // A new last-resort package takes the place of the stored one.
        let replaced = new.iter().any(|p| p.last_resort)
            && stored.is_some_and(|m| m.values().any(|p| p.last_resort));
        if held + new.len() - usize::from(replaced) > MAX_KEY_PACKAGES_PER_DEVICE {
            return Err(StoreError::Limit(
                "a device holds at most MAX_KEY_PACKAGES_PER_DEVICE key packages",
            ));
        }
        if new.is_empty() {
            return Ok(());
        }
        for p in new {
            txn.write(
                "write key package",
                Write::KeyPackage(talks, device, Box::new(p)),
            )?;
        }
        txn.sync()?;
        txn.step("acknowledge")
    }

    async fn claim_key_package(
        &self,
        talks: TalksId,
        claimer: KeyId,
        device: KeyId,
        now: u64,
        max_claims: u32,
        window_s: u64,
    ) -> Result<Option<KeyPackageRecord>, StoreError> {
        let mut txn = self.begin("claim_key_package")?;
        txn.step("read")?;
        if now > MAX_NUMBER {
            return Err(StoreError::Limit("times are below 2^63"));
        }
        let log = txn.log(talks).ok_or(StoreError::UnknownTalks)?;
        let (start, claims) = crate::count_claim(
            log.claims.get(&(claimer, device)).copied(),
            now,
            max_claims,
            window_s,
        )?;
        let packages = log.key_packages.get(&device);
        let valid = || {
            packages
                .into_iter()
                .flat_map(|m| m.values())
                .filter(|p| p.not_after >= now)
        };
        let expired: Vec<Vec<u8>> = packages
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|p| p.not_after < now)
            .map(|p| p.reference.clone())
            .collect();
        // The lowest reference first (the map's order).
        let ordinary = valid().find(|p| !p.last_resort).cloned();
        let claimed = ordinary
            .clone()
            .or_else(|| valid().find(|p| p.last_resort).cloned());
        txn.write(
            "write claim counter",
            Write::ClaimCounter(talks, claimer, device, start, claims),
        )?;
        if !expired.is_empty() {
            txn.write(
                "delete expired key packages",
                Write::DeleteKeyPackages(talks, device, expired),
            )?;
        }
        if let Some(p) = ordinary {
            txn.write(
                "delete key package",
                Write::DeleteKeyPackages(talks, device, vec![p.reference]),
            )?;
        }
        txn.sync()?;
        txn.step("acknowledge")?;
        Ok(claimed)
    }

    async fn key_package_count(
        &self,
        talks: TalksId,
        device: KeyId,
        now: u64,
    ) -> Result<u64, StoreError> {
        let mut txn = self.begin("key_package_count")?;
        txn.step("read")?;
        Ok(txn
            .log(talks)
            .and_then(|l| l.key_packages.get(&device))
            .map_or(0, |m| {
                m.values()
                    .filter(|p| !p.last_resort && p.not_after >= now)
                    .count() as u64
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_hash_count_matches_tlog_tiles() {
        let mut tree = backchannel_tlog::MemoryHashStore::new();
        for n in 0..70u64 {
            // The count is the first index the tree of n leaves lacks.
            let count = stored_hash_count(n);
            use backchannel_tlog::HashReader;
            assert!(tree.read_hashes(&[count]).is_err(), "n = {n}");
            if count > 0 {
                assert!(tree.read_hashes(&[count - 1]).is_ok(), "n = {n}");
            }
            tree.append(&Digest([n as u8; 32])).unwrap();
        }
    }
}
