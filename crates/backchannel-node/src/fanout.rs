//! Fan-out from memory: the latest rows this node sequenced, per talks, as
//! ready stream frames.
//!
//! After each group commit the sequencer hands the batch's new rows here
//! (one JSON frame per envelope, built once, shared by every recipient:
//! the body is base64-encoded once per envelope, never per recipient). A
//! delivery stream woken by an append notification for log size `size`
//! takes `[cursor, size)` from here when this node's tail holds all of it,
//! and reads the store otherwise. So a caught-up stream sends without a
//! store read, and a stream that fell behind, a gap written by another
//! node on the same database, a timer's envelope sequenced outside the
//! sequencer, or a Welcome (whose body depends on the reader) all fall
//! back to the store, which stays the one source.
//!
//! Why a row here is exactly the stored row: a seq's row never changes
//! once committed (the node never purges bodies; if it ever does, it must
//! [`Fanout::forget`] the talks); a retry's placement is its original's,
//! and its header equals the original's (else it is a conflict, not a
//! placement), so its room and body hash do too; and a tail is only ever
//! extended by the row of the next seq, so it stays contiguous.
//!
//! Ordering: the store announces an append when its transaction commits,
//! before the sequencer has the rows. While a batch of a talks is in
//! flight a stream that finds the tail short waits for the batch's fill
//! ([`Fanout::rows`]), so the announcement does not send it to the store
//! just before the rows arrive here.
//!
//! Bounds: at most [`TAIL_ROWS`] rows and [`TAIL_BYTES`] frame bytes per
//! talks (the oldest go first), rows of larger envelopes than
//! [`MAX_CACHED_FRAME`] are not kept, and at most [`MAX_TAILS`] talks have
//! a tail (the talks appended to least recently loses its tail).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use backchannel_codec::{RoomId, TalksId};
use backchannel_store::{Gate, Outcome, Submission};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use tokio::sync::watch;

/// The most rows a talks' tail keeps.
pub const TAIL_ROWS: usize = 4096;

/// The most frame bytes a talks' tail keeps (about 1,600 envelopes of the
/// 1 KiB bucket).
pub const TAIL_BYTES: usize = 4 << 20;

/// Rows whose frame is larger than this (bodies above about 190 KiB) are
/// read from the store.
pub const MAX_CACHED_FRAME: usize = 256 << 10;

/// The most talks with a tail at once.
pub const MAX_TAILS: usize = 256;

/// One sequenced envelope as a ready stream frame.
#[derive(Debug)]
pub struct Row {
    /// Its seq.
    pub seq: u64,
    /// Its room (who may read it).
    pub room: RoomId,
    /// The access-list version it was sequenced under
    /// ([`Submission::access_version`]; `None` for the node's own
    /// envelopes, which were not checked against a list). A stream
    /// delivers it against a list at least this new, and one read from
    /// the store when `None`.
    pub access_version: Option<u64>,
    /// The `StreamFrame::Envelope` JSON text, body included.
    pub frame: Utf8Bytes,
}

/// What the sequencer keeps of a submission for its frame, built on the
/// submitter's task before the batch (so the encoding is not on the
/// sequencer's path): `None` for what is never cached here.
#[derive(Debug)]
pub struct Prepared {
    talks: TalksId,
    room: RoomId,
    access_version: Option<u64>,
    header: String,
    body: String,
}

impl Prepared {
    /// The frame parts of `submission`; `None` for a Welcome (its body is
    /// only for the keys it names) and for bodies too large to keep.
    pub fn of(submission: &Submission) -> Option<Self> {
        if matches!(submission.gate, Some(Gate::Welcome { .. }))
            || submission.body.len() > MAX_CACHED_FRAME / 2
        {
            return None;
        }
        Some(Self {
            talks: submission.talks,
            room: submission.room,
            access_version: submission.access_version,
            header: STANDARD.encode(&submission.header),
            body: STANDARD.encode(&submission.body),
        })
    }
}

/// The wire form of `api::StreamFrame::Envelope` over borrowed parts
/// (tested equal to it).
#[derive(Serialize)]
struct FrameRef<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    node_time: u64,
    header: &'a str,
    body: &'a str,
    receipt: &'a str,
}

struct Tail {
    /// The seq after the last row.
    next: u64,
    rows: VecDeque<Arc<Row>>,
    bytes: usize,
    /// When it was last extended (the fill count), for eviction.
    used: u64,
}

#[derive(Default)]
struct Inner {
    tails: HashMap<TalksId, Tail>,
    /// Talks with a batch between its store call and its fill.
    in_flight: HashSet<TalksId>,
    fills: u64,
}

/// The tails of every talks, shared by the sequencer and the streams.
pub struct Fanout {
    inner: Mutex<Inner>,
    /// Bumped after every fill (and every batch that failed).
    filled: watch::Sender<u64>,
}

impl Default for Fanout {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            filled: watch::Sender::new(0),
        }
    }
}

/// What [`Fanout::rows`] found.
#[derive(Debug)]
pub enum Found {
    /// Every row of the range, in seq order.
    Rows(Vec<Arc<Row>>),
    /// Not all here: read the store.
    Store,
}

impl Fanout {
    /// Marks the talks of a batch as in flight (before its store call).
    pub fn begin(&self, talks: impl IntoIterator<Item = TalksId>) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.in_flight.extend(talks);
        }
    }

    /// Ends a batch: appends the rows of its new placements (`prepared[i]`
    /// and `outcomes[i]` are submission `i`'s), or nothing when the batch
    /// failed (`outcomes` empty), and wakes the streams waiting for it.
    pub fn finish(&self, prepared: &[Option<Prepared>], outcomes: &[Outcome]) {
        let rows: Vec<(TalksId, Row)> = prepared
            .iter()
            .zip(outcomes)
            .filter_map(|(p, o)| match (p, o) {
                (Some(p), Outcome::Sequenced(placed)) => Some((p, placed)),
                _ => None,
            })
            .filter_map(|(p, placed)| {
                let receipt = STANDARD.encode(&placed.receipt);
                let text = serde_json::to_string(&FrameRef {
                    kind: "envelope",
                    seq: placed.seq,
                    node_time: placed.node_time,
                    header: &p.header,
                    body: &p.body,
                    receipt: &receipt,
                })
                .ok()?;
                Some((
                    p.talks,
                    Row {
                        seq: placed.seq,
                        room: p.room,
                        access_version: p.access_version,
                        frame: Utf8Bytes::from(text),
                    },
                ))
            })
            .collect();
        if let Ok(mut inner) = self.inner.lock() {
            inner.fills += 1;
            let now = inner.fills;
            for (talks, row) in rows {
                inner.append(talks, row, now);
            }
            inner.in_flight.clear();
        }
        self.filled.send_modify(|n| *n += 1);
    }

    /// Drops what is kept of `talks` (its rows changed in the store).
    pub fn forget(&self, talks: TalksId) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.tails.remove(&talks);
        }
    }

    /// The rows of `talks` with `from <= seq < to`, if this node's tail
    /// holds all of them; waits for a batch of the talks in flight first.
    pub async fn rows(&self, talks: TalksId, from: u64, to: u64) -> Found {
        let mut filled = self.filled.subscribe();
        loop {
            // Seen before looking, so a fill after the look wakes the wait.
            filled.borrow_and_update();
            let in_flight = {
                let Ok(inner) = self.inner.lock() else {
                    return Found::Store;
                };
                if let Some(rows) = inner.range(talks, from, to) {
                    return Found::Rows(rows);
                }
                inner.in_flight.contains(&talks)
            };
            if !in_flight || filled.changed().await.is_err() {
                return Found::Store;
            }
        }
    }

    /// How many rows are kept over all talks (for tests and metrics).
    pub fn kept(&self) -> usize {
        self.inner
            .lock()
            .map(|i| i.tails.values().map(|t| t.rows.len()).sum())
            .unwrap_or(0)
    }
}

impl Inner {
    fn append(&mut self, talks: TalksId, row: Row, now: u64) {
        let size = row.frame.len();
        if size > MAX_CACHED_FRAME {
            self.tails.remove(&talks);
            return;
        }
        if !self.tails.contains_key(&talks) && self.tails.len() >= MAX_TAILS {
            let oldest = self
                .tails
                .iter()
                .min_by_key(|(_, t)| t.used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.tails.remove(&k);
            }
        }
        let tail = self.tails.entry(talks).or_insert_with(|| Tail {
            next: row.seq,
            rows: VecDeque::new(),
            bytes: 0,
            used: now,
        });
        if row.seq < tail.next {
            // A retry of a row already kept (or older): nothing new.
            return;
        }
        if row.seq > tail.next {
            // Rows between were written by someone else: start again.
            tail.rows.clear();
            tail.bytes = 0;
        }
        tail.next = row.seq + 1;
        tail.bytes += size;
        tail.used = now;
        tail.rows.push_back(Arc::new(row));
        while tail.rows.len() > TAIL_ROWS || tail.bytes > TAIL_BYTES {
            match tail.rows.pop_front() {
                Some(old) => tail.bytes -= old.frame.len(),
                None => break,
            }
        }
    }

    fn range(&self, talks: TalksId, from: u64, to: u64) -> Option<Vec<Arc<Row>>> {
        let tail = self.tails.get(&talks)?;
        let start = tail.next - tail.rows.len() as u64;
        if from < start || to > tail.next || from > to {
            return None;
        }
        let skip = usize::try_from(from - start).ok()?;
        let take = usize::try_from(to - from).ok()?;
        Some(tail.rows.iter().skip(skip).take(take).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backchannel_crypto::{Digest, KeyId};
    use backchannel_store::Placement;

    use crate::api::{Delivered, StreamFrame};

    fn talks(n: u8) -> TalksId {
        TalksId([n; 16])
    }

    fn submission(t: TalksId, n: u8, body_len: usize, gate: Option<Gate>) -> Submission {
        Submission {
            talks: t,
            room: RoomId([7; 16]),
            sender: KeyId(Digest([3; 32])),
            idempotency_key: [n; 16],
            header: vec![n; 223],
            header_hash: Digest([n; 32]),
            body: vec![n.wrapping_add(1); body_len],
            body_hash: Digest([0; 32]),
            gate,
            access_version: None,
        }
    }

    fn placed(seq: u64) -> Outcome {
        Outcome::Sequenced(Placement {
            seq,
            node_time: 1000 + seq,
            leaf_hash: Digest([9; 32]),
            receipt: vec![seq as u8; 200],
        })
    }

    fn seqs(found: Found) -> Option<Vec<u64>> {
        match found {
            Found::Rows(rows) => Some(rows.iter().map(|r| r.seq).collect()),
            Found::Store => None,
        }
    }

    fn check(
        fanout: &Fanout,
        batch: &[(TalksId, u8, usize, Option<Gate>)],
        outcomes: Vec<Outcome>,
    ) {
        let prepared: Vec<Option<Prepared>> = batch
            .iter()
            .map(|(t, n, len, gate)| Prepared::of(&submission(*t, *n, *len, gate.clone())))
            .collect();
        fanout.begin(batch.iter().map(|b| b.0));
        fanout.finish(&prepared, &outcomes);
    }

    #[tokio::test]
    async fn frames_are_the_api_frame() {
        let fanout = Fanout::default();
        let t = talks(1);
        check(&fanout, &[(t, 5, 1024, None)], vec![placed(0)]);
        let Found::Rows(rows) = fanout.rows(t, 0, 1).await else {
            panic!("the row is kept");
        };
        let sub = submission(t, 5, 1024, None);
        let want = StreamFrame::Envelope(Delivered {
            seq: 0,
            node_time: 1000,
            header: sub.header,
            body: Some(sub.body),
            receipt: vec![0; 200],
        });
        let got: StreamFrame = serde_json::from_str(rows[0].frame.as_str()).expect("frame parses");
        assert_eq!(got, want);
        assert_eq!(
            rows[0].frame.as_str(),
            serde_json::to_string(&want).expect("json")
        );
    }

    #[tokio::test]
    async fn tails_stay_contiguous() {
        let fanout = Fanout::default();
        let (t, u) = (talks(1), talks(2));
        check(
            &fanout,
            &[(t, 1, 10, None), (u, 2, 10, None), (t, 3, 10, None)],
            vec![placed(4), placed(0), placed(5)],
        );
        assert_eq!(seqs(fanout.rows(t, 4, 6).await), Some(vec![4, 5]));
        assert_eq!(seqs(fanout.rows(t, 5, 6).await), Some(vec![5]));
        assert_eq!(seqs(fanout.rows(t, 6, 6).await), Some(vec![]));
        assert_eq!(seqs(fanout.rows(t, 3, 6).await), None, "before the tail");
        assert_eq!(seqs(fanout.rows(t, 4, 7).await), None, "beyond the tail");
        assert_eq!(seqs(fanout.rows(u, 0, 1).await), Some(vec![0]));
        assert_eq!(seqs(fanout.rows(talks(3), 0, 1).await), None, "no tail");

        // A retry of a kept row and a refused submission add nothing.
        check(
            &fanout,
            &[(t, 1, 10, None), (t, 9, 10, None), (t, 6, 10, None)],
            vec![placed(4), Outcome::StaleEpoch { epoch: 3 }, placed(6)],
        );
        assert_eq!(seqs(fanout.rows(t, 4, 7).await), Some(vec![4, 5, 6]));

        // A gap (rows written elsewhere) starts the tail again.
        check(&fanout, &[(t, 8, 10, None)], vec![placed(9)]);
        assert_eq!(seqs(fanout.rows(t, 6, 10).await), None);
        assert_eq!(seqs(fanout.rows(t, 9, 10).await), Some(vec![9]));

        // A Welcome is never kept, and what follows it starts again.
        let welcome = Gate::Welcome {
            commit_epoch: 1,
            commit: Digest([1; 32]),
            to: vec![KeyId(Digest([4; 32]))],
        };
        check(
            &fanout,
            &[(t, 10, 10, Some(welcome)), (t, 11, 10, None)],
            vec![placed(10), placed(11)],
        );
        assert_eq!(seqs(fanout.rows(t, 10, 12).await), None);
        assert_eq!(seqs(fanout.rows(t, 11, 12).await), Some(vec![11]));

        // A large body is not kept either.
        check(&fanout, &[(t, 12, 200 << 10, None)], vec![placed(12)]);
        assert_eq!(seqs(fanout.rows(t, 12, 13).await), None);

        // A failed batch adds nothing; forget drops the talks.
        check(&fanout, &[(u, 13, 10, None)], vec![]);
        assert_eq!(seqs(fanout.rows(u, 0, 2).await), None);
        fanout.forget(u);
        assert_eq!(seqs(fanout.rows(u, 0, 1).await), None);
    }

    #[tokio::test]
    async fn tails_are_bounded() {
        let fanout = Fanout::default();
        let t = talks(1);
        let n = TAIL_ROWS + 10;
        let batch: Vec<(TalksId, u8, usize, Option<Gate>)> =
            (0..n).map(|i| (t, i as u8, 16, None)).collect();
        check(&fanout, &batch, (0..n as u64).map(placed).collect());
        assert_eq!(fanout.kept(), TAIL_ROWS);
        assert_eq!(seqs(fanout.rows(t, 9, 11).await), None, "the oldest went");
        assert!(seqs(fanout.rows(t, 10, n as u64).await).is_some());

        // Bytes: 1 KiB bodies fill TAIL_BYTES long before TAIL_ROWS.
        let big: Vec<(TalksId, u8, usize, Option<Gate>)> =
            (0..3000).map(|i| (talks(2), i as u8, 1024, None)).collect();
        check(&fanout, &big, (0..3000).map(placed).collect());
        let kept_big = fanout.kept() - TAIL_ROWS;
        assert!(kept_big < 3000 && kept_big > 1000, "{kept_big}");

        // Talks: the least recently appended loses its tail.
        for i in 0..MAX_TAILS as u64 {
            let mut id = [0xee; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            let id = TalksId(id);
            check(&fanout, &[(id, 1, 16, None)], vec![placed(0)]);
        }
        assert_eq!(seqs(fanout.rows(t, n as u64 - 1, n as u64).await), None);
    }

    #[tokio::test]
    async fn a_stream_waits_for_the_batch_in_flight() {
        let fanout = Arc::new(Fanout::default());
        let t = talks(1);
        fanout.begin([t]);
        let reader = {
            let fanout = Arc::clone(&fanout);
            tokio::spawn(async move { seqs(fanout.rows(t, 0, 1).await) })
        };
        tokio::task::yield_now().await;
        assert!(!reader.is_finished(), "waits while the batch is in flight");
        fanout.finish(&[Prepared::of(&submission(t, 1, 16, None))], &[placed(0)]);
        assert_eq!(reader.await.expect("reader"), Some(vec![0]));

        // A failed batch sends the reader to the store.
        fanout.begin([t]);
        let reader = {
            let fanout = Arc::clone(&fanout);
            tokio::spawn(async move { seqs(fanout.rows(t, 1, 2).await) })
        };
        tokio::task::yield_now().await;
        fanout.finish(&[], &[]);
        assert_eq!(reader.await.expect("reader"), None);
    }
}
