//! The integrator lease: several nodes on one database, one integrator.
//!
//! Any node sequences, but each talks' log must stay one log: one writer of
//! tree hashes and checkpoints at a time. That writer is whichever node
//! holds the store's [`LeaseName::Integrator`] lease. Every node's lease
//! keeper (started by [`crate::net::serve`]) runs [`renew_once`] every [`LEASE_RENEW_EVERY`] it asks the store to take or
//! renew the lease for [`LEASE_TTL`] ([`Store::acquire_lease`]); the holder
//! renews it, the others take it once it has expired. Integration
//! ([`crate::integrate::integrate_round`]) runs only while this node holds
//! it, and every integration transaction is fenced on the epoch it was
//! taken under ([`Fence`]): the epoch rises at each change of hands, so a
//! node paused past its expiry (SIGSTOP, a long GC-free stall, a partition)
//! writes nothing when it wakes up — the store refuses the stale epoch.
//!
//! # Whose clock
//!
//! The store judges expiry against the asking node's clock, so a holder
//! whose clock runs ahead writes expiries that look far off to the others.
//! So each node also judges by what it sees: a lease another node has not
//! renewed (the same holder, epoch and expiry) for a whole [`LEASE_TTL`] of
//! this node's own clock, watched without a break, is taken whatever expiry
//! it claims ([`renew_once`]
//! then asks the store as of that expiry; a renewal meanwhile moves the
//! expiry past it and the store refuses). A node whose clock runs ahead
//! takes the lease early instead, which costs a handover, never
//! correctness (the fence). Nodes on one database still want their clocks
//! in step (NTP): node timestamps come from them.
//!
//! # The merge-delay budget
//!
//! Clients hold the node to its receipts: an acknowledged envelope must be
//! below a served checkpoint within [`MAX_MERGE_DELAY_MS`], or it is
//! evidence against the node. An honest failover must fit. Say the
//! integrator dies at `d`. An envelope stamped just after its last round
//! read the log started waiting up to one checkpoint interval before `d`
//! (plus that round's duration). The dead node renewed last at or before
//! `d`; another node sees that last value within [`LEASE_RENEW_EVERY`] and
//! takes the lease at its first ask a whole [`LEASE_TTL`] later (another
//! [`LEASE_RENEW_EVERY`]). If the dead node was paused inside a
//! transaction, the database drops its locks within
//! [`MAX_PAUSED_TRANSACTION`] (PostgreSQL's
//! `idle_in_transaction_session_timeout`, which the PostgreSQL backend sets
//! to that by default) — counted twice, as the envelope's own sequencing
//! may have waited on the same locks after its timestamp was read. The new
//! holder integrates at its next tick, within one more checkpoint
//! interval, at most [`MAX_CHECKPOINT_INTERVAL`] (plus its round's
//! duration). A round spreads its talks over at most [`MAX_ROUND_SPREAD`]
//! after its tick, so each of the two rounds may reach a talks that much
//! later:
//!
//! ```text
//! 2 × (MAX_CHECKPOINT_INTERVAL + MAX_ROUND_SPREAD) + LEASE_TTL + 2 × LEASE_RENEW_EVERY
//!   + 2 × MAX_PAUSED_TRANSACTION
//!   = 2.5 s + 2 s + 1 s + 2 s = 7.5 s  <  MAX_MERGE_DELAY_MS = 10 s
//! ```
//!
//! checked at compile time below. The remaining 2.5 s must cover the two
//! rounds' own work (milliseconds per talks at the loads measured; a
//! backlog that makes rounds long is a throughput limit the integration
//! lag metric shows) and the clock skew between the node that stamped the
//! envelope and the client that checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backchannel_store::{Fence, Lease, LeaseName, Store, StoreError};
use backchannel_tlog::MAX_MERGE_DELAY_MS;

use crate::sequencer::Clock;

/// How long the lease lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(2);

/// How often every node asks for the lease (the holder renews it).
pub const LEASE_RENEW_EVERY: Duration = Duration::from_millis(500);

/// The longest checkpoint interval a node accepts (`Limits::checkpoint_interval`).
pub const MAX_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// How long the database may keep the row locks of a writer paused inside
/// a transaction (the PostgreSQL backend's default
/// `idle_in_transaction_session_timeout`; SQLite has one process).
pub const MAX_PAUSED_TRANSACTION: Duration = Duration::from_secs(1);

/// The longest an integration round spreads its talks over after its
/// tick (`net::integrate_until`): a quarter of the longest interval.
pub const MAX_ROUND_SPREAD: Duration = Duration::from_millis(250);

const fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The longest an envelope waits for a checkpoint across an honest
/// failover, round durations and clock skew aside (module docs).
pub const FAILOVER_BUDGET_MS: u64 = 2 * (ms(MAX_CHECKPOINT_INTERVAL) + ms(MAX_ROUND_SPREAD))
    + ms(LEASE_TTL)
    + 2 * ms(LEASE_RENEW_EVERY)
    + 2 * ms(MAX_PAUSED_TRANSACTION);

const _: () = assert!(FAILOVER_BUDGET_MS == 7_500);
const _: () = assert!(FAILOVER_BUDGET_MS + 2_500 <= MAX_MERGE_DELAY_MS);
const _: () = assert!(ms(LEASE_RENEW_EVERY) * 3 < ms(LEASE_TTL));

/// Another holder's lease as this node has watched it.
#[derive(Debug, Clone, Copy)]
struct Observed {
    lease: Lease,
    /// When it was first seen unchanged (this node's clock).
    since: u64,
    /// When it was last seen (this node's clock).
    last: u64,
}

/// How recent the last sighting must be for an observation to count: the
/// watch must be unbroken (a round missed, an error, or a clock stepped
/// back starts it again).
const UNBROKEN: u64 = 2 * ms(LEASE_RENEW_EVERY);

/// What this node knows of its own hold on the lease: the epoch it holds
/// it under, or 0. Shared between the lease keeper (which writes it) and the
/// integrator (which fences with it) and the metrics.
#[derive(Debug, Default)]
pub struct LeaseState {
    epoch: AtomicU64,
    fenced: AtomicU64,
    /// Another holder's lease as last seen: the lease, when (this node's
    /// clock) it was first seen so, and when last.
    observed: std::sync::Mutex<Option<Observed>>,
}

impl LeaseState {
    /// The fence to integrate under, if this node holds the lease.
    pub fn fence(&self) -> Option<Fence> {
        match self.epoch.load(Ordering::SeqCst) {
            0 => None,
            epoch => Some(Fence {
                name: LeaseName::Integrator,
                epoch,
            }),
        }
    }

    /// The epoch held, or 0.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// How many integrations the store refused as fenced.
    pub fn fenced(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    /// An integration under `epoch` was refused: the lease moved on. Stop
    /// integrating until the lease keeper takes it again.
    pub fn lost(&self, epoch: u64) {
        self.fenced.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .epoch
            .compare_exchange(epoch, 0, Ordering::SeqCst, Ordering::SeqCst);
    }

    fn set(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    fn observed(&self) -> Option<Observed> {
        *self.observed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records another holder's lease as seen at `now` — the watch goes on
    /// while it is unchanged and unbroken, and starts again otherwise — or
    /// forgets it.
    fn observe(&self, lease: Option<Lease>, now: u64) {
        let mut seen = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        *seen = match (lease, *seen) {
            (Some(l), Some(o)) if o.lease == l && o.last <= now && now - o.last <= UNBROKEN => {
                Some(Observed {
                    lease: l,
                    since: o.since,
                    last: now,
                })
            }
            (Some(l), _) => Some(Observed {
                lease: l,
                since: now,
                last: now,
            }),
            (None, _) => None,
        };
    }
}

/// One round of the lease keeper: asks the store for the lease and records
/// whether this node holds it. Returns the lease as the store has it.
///
/// Another node's lease that this node has watched, unchanged and without
/// a break (every round answered, each sighting within two renewal periods
/// of the last, its clock not stepped back), for a whole [`LEASE_TTL`] of
/// its own clock is asked for as of its claimed expiry, so
/// the store hands it over however far ahead the holder's clock runs (see
/// the module docs). The hold is recorded only if the answer came back
/// before the lease it grants would expire by this node's clock; on a
/// store error the node stops integrating (it cannot know whether it still
/// holds the lease; the fence would refuse it anyway once someone else
/// does).
pub async fn renew_once<S: Store>(
    store: &S,
    clock: &dyn Clock,
    instance: [u8; 16],
    state: &LeaseState,
) -> Result<Lease, StoreError> {
    let now = clock.now_ms();
    // Only an unbroken watch counts: seen unchanged from `since` to a
    // sighting at most two renewal periods ago, and the clock not stepped
    // back meanwhile.
    let stale = state
        .observed()
        .filter(|o| {
            o.lease.holder != instance
                && o.since <= o.last
                && o.last <= now
                && now - o.last <= UNBROKEN
                && now - o.since >= ms(LEASE_TTL)
        })
        .map(|o| o.lease.expires_ms);
    let asked = stale.map_or(now, |expiry| now.max(expiry));
    match store
        .acquire_lease(LeaseName::Integrator, instance, asked, ms(LEASE_TTL))
        .await
    {
        Ok(lease) => {
            let before = state.epoch();
            let answered = clock.now_ms();
            if lease.holder == instance && answered < lease.expires_ms {
                if before != lease.epoch {
                    tracing::info!(epoch = lease.epoch, "this node is now the log integrator");
                }
                state.set(lease.epoch);
                state.observe(None, answered);
            } else {
                if before != 0 {
                    tracing::info!(
                        epoch = lease.epoch,
                        "another node took the integrator lease; this node stops integrating"
                    );
                }
                state.set(0);
                state.observe(Some(lease), answered);
            }
            Ok(lease)
        }
        Err(e) => {
            state.set(0);
            // The watch is broken: what was seen may be long stale by the
            // next answer.
            state.observe(None, now);
            Err(e)
        }
    }
}

/// Gives the lease up on a clean shutdown, so another node takes it at
/// once rather than after its expiry.
pub async fn release<S: Store>(store: &S, instance: [u8; 16], state: &LeaseState) {
    let epoch = state.epoch();
    state.set(0);
    if epoch == 0 {
        return;
    }
    match store
        .release_lease(LeaseName::Integrator, instance, epoch)
        .await
    {
        Ok(true) => tracing::info!(epoch, "released the integrator lease"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not release the integrator lease; it expires by itself")
        }
    }
}

/// The lease state of a node, shared.
pub type SharedLease = Arc<LeaseState>;
