//! Group commit: concurrent submissions share one durable transaction and
//! one receipt signature.
//!
//! One task owns the sequencing queue. It takes the first waiting
//! submission, then every other one already waiting (up to
//! [`MAX_SEQUENCE_BATCH`]), sequences them in one [`Store::sequence`] call —
//! one fsync, one Ed25519 signature — and answers each submitter with its
//! own outcome. Nothing is acknowledged before that call returns, so an
//! acknowledgement always means durably committed. The batch grows with
//! load by itself: while one commit is in flight, the next batch queues up.
//! After acknowledging a batch it hands the batch's rows, as ready stream
//! frames, to the [`Fanout`] the delivery streams read first, and their leaf
//! data, rebuilt from the submissions and checked against the committed
//! leaf hashes, to the [`LeafHints`] the integrator and the data tiles read
//! first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use backchannel_codec::{RoomId, TalksId};
use backchannel_crypto::{Digest, Signer};
use backchannel_store::{MAX_SEQUENCE_BATCH, Outcome, Store, Submission};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::fanout::{Fanout, Prepared};
use crate::integrate::LeafHints;

/// How many submissions may wait for the sequencer before submitters are
/// slowed down (back-pressure): a few full batches.
pub const SEQUENCER_QUEUE: usize = 4 * MAX_SEQUENCE_BATCH;

/// The most header and body bytes one group commit carries (64 MiB): with
/// 1 KiB bodies a batch is bounded by [`MAX_SEQUENCE_BATCH`] long before
/// this; with 1 MiB bodies it keeps one transaction, and the memory it
/// holds, to 64 envelopes.
pub const MAX_BATCH_BYTES: usize = 64 << 20;

/// The node's clock: a parameter, so that the simulator can skew it.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch, UTC.
    fn now_ms(&self) -> u64;
}

/// Why a submission was not sequenced. Nothing of it was written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SequenceError {
    /// Storage failed; the whole batch was refused and may be retried with
    /// the same idempotency keys.
    #[error("storage is unavailable; retry with the same idempotency key")]
    Unavailable,
    /// The sequencer has stopped (the node is shutting down).
    #[error("the node is shutting down")]
    Stopped,
}

/// Submissions sequenced together: one envelope, or a commit with its
/// Welcome. A unit is never split between two batches, so the Welcome's
/// gate sees its commit's outcome in the same transaction.
struct Job {
    unit: Vec<Submission>,
    /// Each submission's frame parts for [`Fanout`], built by the submitter.
    prepared: Vec<Option<Prepared>>,
    reply: oneshot::Sender<Result<Vec<Outcome>, SequenceError>>,
}

/// A handle to the sequencing task; cheap to clone.
#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<Job>,
    /// The rows of each batch, for the delivery streams.
    fanout: Arc<Fanout>,
    /// The leaf data of each batch, for the integrator and data tiles.
    hints: Arc<LeafHints>,
    /// Envelopes placed in a log so far (for metrics).
    sequenced: Arc<AtomicU64>,
}

impl Sequencer {
    /// Starts the sequencing task on the current Tokio runtime.
    pub fn spawn<S: Store>(
        store: Arc<S>,
        clock: Arc<dyn Clock>,
        log_key: Arc<dyn Signer + Send + Sync>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(SEQUENCER_QUEUE);
        let sequenced = Arc::new(AtomicU64::new(0));
        let fanout = Arc::new(Fanout::default());
        let hints = Arc::new(LeafHints::default());
        tokio::spawn(run(
            store,
            clock,
            log_key,
            rx,
            Arc::clone(&sequenced),
            Arc::clone(&fanout),
            Arc::clone(&hints),
        ));
        Self {
            tx,
            fanout,
            hints,
            sequenced,
        }
    }

    /// The leaf data sequenced lately, for the integrator and the data
    /// tiles.
    pub fn leaf_hints(&self) -> &Arc<LeafHints> {
        &self.hints
    }

    /// The rows of the batches sequenced so far, as stream frames.
    pub fn fanout(&self) -> &Arc<Fanout> {
        &self.fanout
    }

    /// How many envelopes were placed in a log since the start (for
    /// metrics): every [`Outcome::Sequenced`], so an idempotent retry of
    /// an envelope sequenced before counts again.
    pub fn sequenced(&self) -> u64 {
        self.sequenced.load(Ordering::Relaxed)
    }

    /// How many submissions are waiting for the next batch (for metrics).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Sequences one validated submission; returns once it is durably
    /// committed (or refused).
    pub async fn submit(&self, submission: Submission) -> Result<Outcome, SequenceError> {
        let mut outcomes = self.submit_unit(vec![submission]).await?;
        outcomes.pop().ok_or(SequenceError::Unavailable)
    }

    /// Sequences submissions together, in order, in one batch (a commit
    /// and its Welcome); one outcome each.
    pub async fn submit_unit(&self, unit: Vec<Submission>) -> Result<Vec<Outcome>, SequenceError> {
        let (reply, answer) = oneshot::channel();
        let prepared = unit.iter().map(Prepared::of).collect();
        self.tx
            .send(Job {
                unit,
                prepared,
                reply,
            })
            .await
            .map_err(|_| SequenceError::Stopped)?;
        answer.await.map_err(|_| SequenceError::Stopped)?
    }
}

async fn run<S: Store>(
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    log_key: Arc<dyn Signer + Send + Sync>,
    mut rx: mpsc::Receiver<Job>,
    sequenced: Arc<AtomicU64>,
    fanout: Arc<Fanout>,
    hints: Arc<LeafHints>,
) {
    // A job that would have made the last batch too large opens the next.
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        // Bodies move into the batch; they are never copied.
        let mut batch = Vec::with_capacity(MAX_SEQUENCE_BATCH);
        let mut replies = Vec::with_capacity(MAX_SEQUENCE_BATCH);
        let mut prepared = Vec::with_capacity(MAX_SEQUENCE_BATCH);
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let size: usize = job.unit.iter().map(|s| s.header.len() + s.body.len()).sum();
            if !batch.is_empty()
                && (bytes + size > MAX_BATCH_BYTES
                    || batch.len() + job.unit.len() > MAX_SEQUENCE_BATCH)
            {
                carried = Some(job);
                break;
            }
            bytes += size;
            replies.push((job.unit.len(), job.reply));
            batch.extend(job.unit);
            prepared.extend(job.prepared);
            if batch.len() < MAX_SEQUENCE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let expected = batch.len();
        let leaf_parts: Vec<LeafParts> = batch.iter().map(LeafParts::of).collect();
        fanout.begin(batch.iter().map(|s| s.talks));
        match store.sequence(batch, clock.now_ms(), &*log_key).await {
            Ok(outcomes) if outcomes.len() == expected => {
                let placed = outcomes
                    .iter()
                    .filter(|o| matches!(o, Outcome::Sequenced(_)))
                    .count();
                sequenced.fetch_add(placed as u64, Ordering::Relaxed);
                // Acknowledge first (the receipts are cheap to clone), then
                // hand the rows to the streams.
                let mut rest = outcomes.iter();
                for (n, reply) in replies {
                    // A submitter that went away still had its envelopes
                    // committed; a retry with its keys finds them.
                    let _ = reply.send(Ok(rest.by_ref().take(n).cloned().collect()));
                }
                fanout.finish(&prepared, &outcomes);
                hints.record(committed_leaves(&leaf_parts, &outcomes));
            }
            // Every submission was validated against an existing talks, so
            // any failure is the store's: nothing was written, all retry.
            _ => {
                for (_, reply) in replies {
                    let _ = reply.send(Err(SequenceError::Unavailable));
                }
                fanout.finish(&[], &[]);
            }
        }
    }
}

/// What a submission's log leaf is built from, besides the seq and time
/// the store gives it.
struct LeafParts {
    talks: TalksId,
    room: RoomId,
    header_hash: Digest,
    body_hash: Digest,
}

impl LeafParts {
    fn of(s: &Submission) -> Self {
        Self {
            talks: s.talks,
            room: s.room,
            header_hash: s.header_hash,
            body_hash: s.body_hash,
        }
    }
}

/// The leaves of a committed batch for [`LeafHints`]: each sequenced
/// submission's leaf rebuilt from its own fields and the store's seq and
/// time, kept only where it hashes to the leaf hash the store committed
/// (a mismatch is left for integration to read, and refuse, from the
/// store).
fn committed_leaves<'a>(
    parts: &'a [LeafParts],
    outcomes: &'a [Outcome],
) -> impl Iterator<Item = (TalksId, backchannel_tlog::LeafData)> + 'a {
    parts.iter().zip(outcomes).filter_map(|(p, o)| {
        let Outcome::Sequenced(placed) = o else {
            return None;
        };
        let leaf = backchannel_tlog::LeafData {
            seq: placed.seq,
            timestamp_ms: placed.node_time,
            room: p.room,
            header_hash: p.header_hash,
            body_hash: p.body_hash,
        };
        if leaf.hash() == placed.leaf_hash {
            Some((p.talks, leaf))
        } else {
            tracing::error!(
                seq = placed.seq,
                "a committed leaf hash does not match its submission; integration will read it"
            );
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use backchannel_store::Placement;

    use super::*;

    fn parts(n: u8) -> LeafParts {
        LeafParts {
            talks: TalksId([n; 16]),
            room: RoomId([n; 16]),
            header_hash: Digest([n; 32]),
            body_hash: Digest([n ^ 0xff; 32]),
        }
    }

    fn placed(p: &LeafParts, seq: u64, node_time: u64) -> Outcome {
        let leaf = backchannel_tlog::LeafData {
            seq,
            timestamp_ms: node_time,
            room: p.room,
            header_hash: p.header_hash,
            body_hash: p.body_hash,
        };
        Outcome::Sequenced(Placement {
            seq,
            node_time,
            leaf_hash: leaf.hash(),
            receipt: Vec::new(),
        })
    }

    /// Only sequenced submissions whose rebuilt leaf hashes to the
    /// committed leaf hash are hinted.
    #[test]
    fn only_matching_committed_leaves_are_hinted() {
        let ps = [parts(1), parts(2), parts(3), parts(4)];
        let good = placed(&ps[0], 10, 5_000);
        let mut wrong = placed(&ps[1], 11, 5_000);
        if let Outcome::Sequenced(p) = &mut wrong {
            p.leaf_hash.0[31] ^= 1;
        }
        // Built from another submission's fields: a store that mixed rows up.
        let swapped = placed(&ps[3], 12, 5_000);
        let refused = Outcome::Conflict { seq: 3 };
        let outcomes = [good.clone(), wrong, swapped, refused];
        let got: Vec<_> = committed_leaves(&ps, &outcomes).collect();
        let Outcome::Sequenced(g) = good else {
            unreachable!()
        };
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].1.seq), (ps[0].talks, 10));
        assert_eq!(got[0].1.hash(), g.leaf_hash);
    }
}
