//! Stream wake-ups, per talks.
//!
//! A delivery stream sleeps until its talks has something for it: rows past
//! its cursor, or an access list that may have changed. [`Wakeups`] keeps
//! one [`watch`] channel per talks that has a stream open, and one task
//! feeds them all:
//! - the store's append notifications (this node's writes) raise the
//!   talks' announced size — the rows are in this node's fan-out tail;
//! - an access-list change made by this node bumps the talks' generation;
//! - every `poll_interval`, one read of the log size and one of the
//!   access-list record per talks (not per stream) catches the writes of
//!   other nodes on one database: a different list, or a size past both
//!   the previous poll and this node's own announced appends, bumps the
//!   generation (those rows are read from the store);
//! - a lagged notification channel bumps every talks.
//!
//! So an append wakes only the streams of its talks, and an idle stream
//! costs no store read at all. A bumped generation makes a stream
//! re-authorise from the store and read the store from its cursor; an
//! append's wake re-authorises against the node's cached list, if it is
//! at least as new as the rows it sends (see [`crate::stream`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use backchannel_codec::TalksId;
use backchannel_crypto::Digest;
use backchannel_store::Store;
use tokio::sync::{broadcast, watch};

/// What a stream of one talks waits on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wake {
    /// The largest log size this node's own appends announced.
    pub size: u64,
    /// Bumped whenever the stream must re-read the store: an access-list
    /// change, another node's rows, a lost notification.
    pub generation: u64,
}

/// One talks' channel, and what the last poll saw.
struct Entry {
    tx: watch::Sender<Wake>,
    /// The log size and access-list hash the last poll read (`None` before
    /// the first poll: the stream reads the store when it opens).
    polled: Option<(u64, Option<Digest>)>,
}

/// The node's wake-up channels, one per talks with a stream open.
#[derive(Default)]
pub struct Wakeups {
    talks: Mutex<HashMap<TalksId, Entry>>,
}

impl Wakeups {
    /// A receiver for `talks`' wake-ups, marked seen: a stream takes it
    /// before its first read, so that nothing falls between.
    pub fn subscribe(&self, talks: TalksId) -> watch::Receiver<Wake> {
        let mut map = self.lock();
        let entry = map.entry(talks).or_insert_with(|| Entry {
            tx: watch::Sender::new(Wake::default()),
            polled: None,
        });
        entry.tx.subscribe()
    }

    /// This node appended to `talks`, up to `size`.
    pub fn appended(&self, talks: TalksId, size: u64) {
        if let Some(e) = self.lock().get(&talks) {
            e.tx.send_if_modified(|w| {
                if size > w.size {
                    w.size = size;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// `talks` must be read again from the store (its access list changed).
    pub fn bump(&self, talks: TalksId) {
        if let Some(e) = self.lock().get(&talks) {
            e.tx.send_modify(|w| w.generation += 1);
        }
    }

    /// Every talks must be read again (a notification was lost).
    fn bump_all(&self) {
        for e in self.lock().values() {
            e.tx.send_modify(|w| w.generation += 1);
        }
    }

    /// How many talks have a channel.
    #[cfg(test)]
    fn talks_watched(&self) -> usize {
        self.lock().len()
    }

    /// Drops the channels no stream holds; the talks with one left.
    fn prune(&self) -> Vec<TalksId> {
        let mut map = self.lock();
        map.retain(|_, e| e.tx.receiver_count() > 0);
        map.keys().copied().collect()
    }

    /// Records what a poll of `talks` read; bumps its generation when the
    /// access list differs from the previous poll's, or the log grew past
    /// both the previous poll and what this node's own appends announced
    /// (rows another node wrote: this node's are in its fan-out already).
    fn polled(&self, talks: TalksId, size: u64, list: Option<Digest>) {
        if let Some(e) = self.lock().get_mut(&talks) {
            if let Some((before, before_list)) = e.polled {
                let announced = e.tx.borrow().size;
                if before_list != list || (size > before && size > announced) {
                    e.tx.send_modify(|w| w.generation += 1);
                }
            }
            e.polled = Some((size, list));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TalksId, Entry>> {
        // The map holds no invariant a panic could break halfway.
        self.talks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Feeds `wakeups` from `store` until either is dropped: its append
/// notifications at once, and one poll per watched talks every `every`.
pub(crate) async fn feed<S: Store>(wakeups: Weak<Wakeups>, store: Weak<S>, every: Duration) {
    let Some(mut appended) = store.upgrade().map(|s| s.subscribe()) else {
        return;
    };
    let mut poll = tokio::time::interval(every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = appended.recv() => {
                let Some(w) = wakeups.upgrade() else { return };
                match n {
                    Ok(a) => w.appended(a.talks, a.size),
                    Err(broadcast::error::RecvError::Lagged(_)) => w.bump_all(),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            _ = poll.tick() => {
                let (Some(w), Some(s)) = (wakeups.upgrade(), store.upgrade()) else { return };
                let read = poll_once(&w, &s).await;
                if !settle(&w, &mut appended, read) {
                    return;
                }
            }
        }
    }
}

/// Records a poll's reads, after this node's appends announced while the
/// poll read: a log size they explain is not another node's rows, and
/// must not send every stream of the talks to the store (under load, some
/// always are). `false` when the store's notifications have ended.
fn settle(
    w: &Wakeups,
    appended: &mut broadcast::Receiver<backchannel_store::Appended>,
    read: Vec<(TalksId, Polled)>,
) -> bool {
    loop {
        match appended.try_recv() {
            Ok(a) => w.appended(a.talks, a.size),
            Err(broadcast::error::TryRecvError::Lagged(_)) => w.bump_all(),
            Err(broadcast::error::TryRecvError::Empty) => break,
            Err(broadcast::error::TryRecvError::Closed) => return false,
        }
    }
    for (talks, polled) in read {
        match polled {
            Some((size, list)) => w.polled(talks, size, list),
            // A failed read: let the streams find out for themselves.
            None => w.bump(talks),
        }
    }
    true
}

/// What a poll read of one talks: its log size and its access list's
/// hash (`None`: a read failed).
type Polled = Option<(u64, Option<Digest>)>;

/// One read of the log size and the access list's hash of every watched
/// talks.
async fn poll_once<S: Store>(wakeups: &Wakeups, store: &Arc<S>) -> Vec<(TalksId, Polled)> {
    let mut read = Vec::new();
    for talks in wakeups.prune() {
        let size = store.log_size(talks).await;
        let list = store.access_list(talks).await;
        read.push((
            talks,
            match (size, list) {
                (Ok(size), Ok(list)) => Some((size, list.map(|r| r.hash))),
                _ => None,
            },
        ));
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    fn talks(n: u8) -> TalksId {
        TalksId([n; 16])
    }

    #[test]
    fn an_append_wakes_only_its_talks_and_only_when_it_grows() {
        let w = Wakeups::default();
        let mut a = w.subscribe(talks(1));
        let mut b = w.subscribe(talks(2));
        w.appended(talks(1), 5);
        assert!(a.has_changed().unwrap());
        assert!(!b.has_changed().unwrap());
        assert_eq!(
            *a.borrow_and_update(),
            Wake {
                size: 5,
                generation: 0
            }
        );
        // A smaller or equal size (a retry, an older notification) wakes no one.
        w.appended(talks(1), 5);
        w.appended(talks(1), 3);
        assert!(!a.has_changed().unwrap());
        // A talks no stream watches keeps no channel.
        w.appended(talks(3), 9);
        assert_eq!(w.talks_watched(), 2);
        w.bump(talks(2));
        assert_eq!(
            *b.borrow_and_update(),
            Wake {
                size: 0,
                generation: 1
            }
        );
    }

    #[test]
    fn a_poll_bumps_on_a_change_but_not_the_first_time() {
        let w = Wakeups::default();
        let mut a = w.subscribe(talks(1));
        let list = Some(Digest([7; 32]));
        w.polled(talks(1), 4, list);
        assert!(!a.has_changed().unwrap(), "the first poll is a baseline");
        w.polled(talks(1), 4, list);
        assert!(!a.has_changed().unwrap(), "nothing changed");
        w.polled(talks(1), 6, list);
        assert_eq!(a.borrow_and_update().generation, 1, "another node's rows");
        // This node's own appends, announced already: no store read.
        w.appended(talks(1), 9);
        a.borrow_and_update();
        w.polled(talks(1), 9, list);
        assert!(!a.has_changed().unwrap(), "this node's own rows");
        w.polled(talks(1), 9, Some(Digest([8; 32])));
        assert_eq!(a.borrow_and_update().generation, 2, "another node's list");
        w.polled(talks(1), 9, None);
        assert_eq!(a.borrow_and_update().generation, 3, "the list is gone");
    }

    #[test]
    fn a_poll_that_read_this_nodes_unannounced_appends_bumps_nothing() {
        let w = Wakeups::default();
        let mut a = w.subscribe(talks(1));
        let (tx, mut rx) = broadcast::channel(4);
        let list = Some(Digest([7; 32]));
        assert!(settle(&w, &mut rx, vec![(talks(1), Some((4, list)))]));
        // This node appended up to 9, and the poll read 9 before the feed
        // had seen the notification.
        tx.send(backchannel_store::Appended {
            talks: talks(1),
            size: 9,
        })
        .unwrap();
        assert!(settle(&w, &mut rx, vec![(talks(1), Some((9, list)))]));
        assert_eq!(
            *a.borrow_and_update(),
            Wake {
                size: 9,
                generation: 0
            },
            "announced, not sent to the store"
        );
        // Rows beyond what this node announced are another node's.
        assert!(settle(&w, &mut rx, vec![(talks(1), Some((11, list)))]));
        assert_eq!(a.borrow_and_update().generation, 1);
        // A failed read bumps; a closed notification channel ends the feed.
        assert!(settle(&w, &mut rx, vec![(talks(1), None)]));
        assert_eq!(a.borrow_and_update().generation, 2);
        drop(tx);
        assert!(!settle(&w, &mut rx, Vec::new()));
    }

    #[test]
    fn channels_no_stream_holds_are_pruned_and_lagging_bumps_all() {
        let w = Wakeups::default();
        let a = w.subscribe(talks(1));
        let mut b = w.subscribe(talks(2));
        drop(a);
        assert_eq!(w.prune(), vec![talks(2)]);
        assert_eq!(w.talks_watched(), 1);
        w.bump_all();
        assert_eq!(b.borrow_and_update().generation, 1);
        // A stream opening again gets a fresh channel.
        let mut a = w.subscribe(talks(1));
        assert!(!a.has_changed().unwrap());
        w.appended(talks(1), 1);
        assert_eq!(a.borrow_and_update().size, 1);
    }
}
