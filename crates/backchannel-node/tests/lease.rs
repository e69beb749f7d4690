//! The integrator lease as the node uses it (`backchannel_node::lease`):
//! two node instances on one store, a clock the test moves. One holds the
//! lease and integrates; the other takes it only once it has expired, under
//! a later epoch; the old holder's integration is then refused, writes
//! nothing, and stops it integrating.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use backchannel_codec::TalksId;
use backchannel_node::integrate::{integrate_once, integrate_round};
use backchannel_node::lease::{LEASE_RENEW_EVERY, LEASE_TTL, LeaseState, release, renew_once};
use backchannel_node::sequencer::Clock;
use backchannel_statement::fixtures::labels;
use backchannel_store::conformance::{
    access_list, log_key, sender, submission, talks_id, talks_record,
};
use backchannel_store::memory::MemoryStore;
use backchannel_store::{Store, StoreError, Submission};
use backchannel_tlog::NodeOrigin;

struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl TestClock {
    fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

const X: [u8; 16] = [0x0a; 16];
const Y: [u8; 16] = [0x0b; 16];

fn node() -> NodeOrigin {
    NodeOrigin::new("mediator.example").unwrap()
}

async fn append(store: &MemoryStore, talks: TalksId, from: u32, n: u32, now: u64) {
    let batch: Vec<Submission> = (from..from + n)
        .map(|i| submission(talks, sender(labels::US_HEAD_DEVICE), i, 0))
        .collect();
    store.sequence(batch, now, &log_key()).await.unwrap();
}

#[tokio::test]
async fn one_integrator_at_a_time_and_a_stale_one_writes_nothing() {
    let store = MemoryStore::new();
    let clock = TestClock(AtomicU64::new(1_000_000));
    let talks = talks_id(1);
    store
        .create_talks(&talks_record(talks), &access_list(1, 0))
        .await
        .unwrap();
    append(&store, talks, 0, 5, clock.now_ms()).await;
    let (x, y) = (LeaseState::default(), LeaseState::default());

    // X asks first and holds it; Y asks and does not.
    let lease = renew_once(&store, &clock, X, &x).await.unwrap();
    assert_eq!((lease.holder, lease.epoch), (X, 1));
    assert_eq!(x.fence().unwrap().epoch, 1);
    renew_once(&store, &clock, Y, &y).await.unwrap();
    assert_eq!(y.fence(), None);
    assert_eq!(
        integrate_round(&store, None, &node(), &log_key(), x.fence())
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.integrated_size(talks).await.unwrap(), 5);

    // X renews within the lease: still epoch 1, Y still out.
    clock.advance(LEASE_TTL.as_millis() as u64 / 2);
    renew_once(&store, &clock, X, &x).await.unwrap();
    renew_once(&store, &clock, Y, &y).await.unwrap();
    assert_eq!((x.epoch(), y.epoch()), (1, 0));

    // X stalls past its expiry: Y takes over under epoch 2.
    append(&store, talks, 5, 3, clock.now_ms()).await;
    clock.advance(LEASE_TTL.as_millis() as u64);
    let lease = renew_once(&store, &clock, Y, &y).await.unwrap();
    assert_eq!((lease.holder, lease.epoch), (Y, 2));

    // X wakes and integrates under epoch 1: refused, nothing written.
    let before = store.checkpoint(talks).await.unwrap();
    let r = integrate_once(&store, talks, &node(), &log_key(), 100, x.fence()).await;
    assert!(
        matches!(r, Err(backchannel_node::integrate::IntegrateError::Fenced)),
        "{r:?}"
    );
    let r = integrate_round(&store, None, &node(), &log_key(), x.fence()).await;
    assert!(matches!(r, Err(StoreError::Fenced)), "{r:?}");
    assert_eq!(store.integrated_size(talks).await.unwrap(), 5);
    assert_eq!(store.checkpoint(talks).await.unwrap(), before);
    // Its next renewal tells it so.
    renew_once(&store, &clock, X, &x).await.unwrap();
    assert_eq!(x.fence(), None);

    // Y integrates under epoch 2.
    assert_eq!(
        integrate_round(&store, None, &node(), &log_key(), y.fence())
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.integrated_size(talks).await.unwrap(), 8);

    // A clean shutdown hands the lease over at once, under epoch 3.
    release(&store, Y, &y).await;
    assert_eq!(y.fence(), None);
    let lease = renew_once(&store, &clock, X, &x).await.unwrap();
    assert_eq!((lease.holder, lease.epoch), (X, 3));
}

#[tokio::test]
async fn a_lease_granted_too_late_is_not_held() {
    // The answer comes back after the lease it grants has expired by this
    // node's clock (a stalled store): the node must not integrate on it.
    struct Slow(TestClock);
    impl Clock for Slow {
        fn now_ms(&self) -> u64 {
            // Each reading is a whole lease later than the one before.
            let t = self.0.now_ms();
            self.0.advance(LEASE_TTL.as_millis() as u64);
            t
        }
    }
    let store = MemoryStore::new();
    let clock = Slow(TestClock(AtomicU64::new(1_000_000)));
    let x = LeaseState::default();
    let lease = renew_once(&store, &clock, X, &x).await.unwrap();
    assert_eq!(lease.holder, X);
    assert_eq!(x.fence(), None);
}

#[tokio::test]
async fn a_holder_whose_clock_runs_ahead_does_not_delay_the_takeover() {
    let store = MemoryStore::new();
    // X's clock runs an hour ahead of Y's: its expiries look an hour away
    // to Y.
    let y_clock = TestClock(AtomicU64::new(1_000_000));
    let x_clock = TestClock(AtomicU64::new(1_000_000 + 3_600_000));
    let (x, y) = (LeaseState::default(), LeaseState::default());
    renew_once(&store, &x_clock, X, &x).await.unwrap();
    assert_eq!(x.epoch(), 1);

    // While X keeps renewing, Y never takes it, however long it watches.
    for _ in 0..10 {
        renew_once(&store, &y_clock, Y, &y).await.unwrap();
        assert_eq!(y.fence(), None);
        y_clock.advance(500);
        x_clock.advance(500);
        renew_once(&store, &x_clock, X, &x).await.unwrap();
        assert_eq!(x.epoch(), 1);
    }

    // X dies. Y watches the same lease, every renewal period, for a whole
    // TTL of its own clock and takes it, an hour before X's claimed expiry.
    let every = LEASE_RENEW_EVERY.as_millis() as u64;
    let rounds = LEASE_TTL.as_millis() as u64 / every;
    renew_once(&store, &y_clock, Y, &y).await.unwrap();
    for _ in 1..rounds {
        y_clock.advance(every);
        renew_once(&store, &y_clock, Y, &y).await.unwrap();
        assert_eq!(y.fence(), None, "not before a whole TTL");
    }
    y_clock.advance(every);
    let lease = renew_once(&store, &y_clock, Y, &y).await.unwrap();
    assert_eq!((lease.holder, lease.epoch), (Y, 2));
    assert_eq!(y.epoch(), 2);
    // Y then renews on its own clock.
    y_clock.advance(500);
    let lease = renew_once(&store, &y_clock, Y, &y).await.unwrap();
    assert_eq!((lease.holder, lease.epoch), (Y, 2));
    assert_eq!(y.epoch(), 2);
}

#[tokio::test]
async fn a_broken_watch_does_not_take_a_live_lease() {
    // X's clock ran an hour ahead; Y watched its lease, then missed rounds
    // (its store calls failed, or it was paused) while NTP stepped X's
    // clock back and X kept renewing. Y's next round must not count the old
    // sighting: X's lease is live.
    let store = MemoryStore::new();
    let y_clock = TestClock(AtomicU64::new(1_000_000));
    let x_clock = TestClock(AtomicU64::new(1_000_000 + 3_600_000));
    let (x, y) = (LeaseState::default(), LeaseState::default());
    let every = LEASE_RENEW_EVERY.as_millis() as u64;
    renew_once(&store, &x_clock, X, &x).await.unwrap();
    renew_once(&store, &y_clock, Y, &y).await.unwrap();
    // X's clock is stepped back to Y's; X renews every period; Y is away
    // for longer than a TTL.
    x_clock.0.store(y_clock.now_ms(), Ordering::SeqCst);
    for _ in 0..8 {
        x_clock.advance(every);
        y_clock.advance(every);
        renew_once(&store, &x_clock, X, &x).await.unwrap();
    }
    // Y is back: it sees a lease (the live one) and starts a new watch.
    let lease = renew_once(&store, &y_clock, Y, &y).await.unwrap();
    assert_eq!((lease.holder, lease.epoch), (X, 1));
    assert_eq!(y.fence(), None);
    assert_eq!(x.epoch(), 1);
    // And while X keeps renewing, Y never takes it.
    for _ in 0..10 {
        x_clock.advance(every);
        y_clock.advance(every);
        renew_once(&store, &x_clock, X, &x).await.unwrap();
        renew_once(&store, &y_clock, Y, &y).await.unwrap();
        assert_eq!((x.epoch(), y.epoch()), (1, 0));
    }
}
