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
//! # The merge-delay budget
//!
//! Clients hold the node to its receipts: an acknowledged envelope must be
//! below a served checkpoint within [`MAX_MERGE_DELAY_MS`], or it is
//! evidence against the node. An honest failover must fit. When the
//! integrator dies just after renewing, its lease expires [`LEASE_TTL`]
//! later; another node notices within [`LEASE_RENEW_EVERY`]; if the dead
//! node was paused inside a transaction, the database releases its row
//! locks within [`MAX_PAUSED_TRANSACTION`] (PostgreSQL's
//! `idle_in_transaction_session_timeout`, which the PostgreSQL backend sets
//! to that by default); and the new holder integrates within one
//! checkpoint interval, at most [`MAX_CHECKPOINT_INTERVAL`]:
//!
//! ```text
//! LEASE_TTL + LEASE_RENEW_EVERY + MAX_PAUSED_TRANSACTION + MAX_CHECKPOINT_INTERVAL
//!   = 2 s + 0.5 s + 1 s + 1 s = 4.5 s  <  MAX_MERGE_DELAY_MS = 10 s
//! ```
//!
//! checked at compile time below; the rest is the clients' allowance for
//! clock skew and slow fetches. Lease expiry is judged on node clocks, so
//! nodes on one database need their clocks in step (NTP); a node whose
//! clock runs ahead takes the lease early, which costs work, never
//! correctness (the fence).

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

const fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The worst delay an honest failover adds before a leaf is integrated.
pub const FAILOVER_BUDGET_MS: u64 = ms(LEASE_TTL)
    + ms(LEASE_RENEW_EVERY)
    + ms(MAX_PAUSED_TRANSACTION)
    + ms(MAX_CHECKPOINT_INTERVAL);

const _: () = assert!(FAILOVER_BUDGET_MS < MAX_MERGE_DELAY_MS);
const _: () = assert!(ms(LEASE_RENEW_EVERY) * 3 < ms(LEASE_TTL));

/// What this node knows of its own hold on the lease: the epoch it holds
/// it under, or 0. Shared between the lease keeper (which writes it) and the
/// integrator (which fences with it) and the metrics.
#[derive(Debug, Default)]
pub struct LeaseState {
    epoch: AtomicU64,
    fenced: AtomicU64,
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
}

/// One round of the lease keeper: asks the store for the lease and records
/// whether this node holds it. Returns the lease as the store has it.
///
/// The hold is recorded only if the answer came back before the lease it
/// grants would expire by this node's clock; on a store error the node
/// stops integrating (it cannot know whether it still holds the lease;
/// the fence would refuse it anyway once someone else does).
pub async fn renew_once<S: Store>(
    store: &S,
    clock: &dyn Clock,
    instance: [u8; 16],
    state: &LeaseState,
) -> Result<Lease, StoreError> {
    let asked = clock.now_ms();
    match store
        .acquire_lease(LeaseName::Integrator, instance, asked, ms(LEASE_TTL))
        .await
    {
        Ok(lease) => {
            let before = state.epoch();
            if lease.holder == instance && clock.now_ms() < lease.expires_ms {
                if before != lease.epoch {
                    tracing::info!(epoch = lease.epoch, "this node is now the log integrator");
                }
                state.set(lease.epoch);
            } else {
                if before != 0 {
                    tracing::info!(
                        epoch = lease.epoch,
                        "another node took the integrator lease; this node stops integrating"
                    );
                }
                state.set(0);
            }
            Ok(lease)
        }
        Err(e) => {
            state.set(0);
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
