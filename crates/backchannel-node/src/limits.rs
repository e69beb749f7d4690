//! Named limits, and the soft state that enforces rates and counts.
//!
//! Rate buckets and stream counts are the only state the node keeps in
//! memory, and none of it is authoritative: losing it on a restart (or not
//! sharing it between nodes on one database) loosens a limit for a moment
//! and loses no data.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backchannel_crypto::KeyId;

/// Every limit the node enforces, with its default.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests per key per second (sustained).
    pub requests_per_second: u32,
    /// Requests a key may burst above the sustained rate.
    pub request_burst: u32,
    /// New connections per source address per second (sustained).
    pub connections_per_second: u32,
    /// Connections a source address may burst.
    pub connection_burst: u32,
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections per source address (streams included), so that
    /// one address cannot hold every slot.
    pub connections_per_source: usize,
    /// Open WebSocket streams per key.
    pub streams_per_key: usize,
    /// Bytes queued for one stream. When the queue is full the stream waits
    /// for it to drain; a reader that does not drain it within
    /// `slow_reader_timeout` is closed (code 4008; it resumes by seq).
    pub send_queue_bytes: usize,
    /// How long a stream waits for its full send queue to drain before it
    /// closes the reader as too slow.
    pub slow_reader_timeout: Duration,
    /// A stream with nothing from its client (not even a pong) for this
    /// long is closed (code 4001).
    pub idle_timeout: Duration,
    /// How often a stream pings its client.
    pub ping_interval: Duration,
    /// How often the node reads each watched talks' log size and access
    /// list without a notification (writes by other nodes on one database;
    /// [`crate::wake`]), once per talks, not per stream.
    pub poll_interval: Duration,
    /// The largest blob.
    pub max_blob: u64,
    /// Blob bytes per party per talks.
    pub party_blob_quota: u64,
    /// The longest an invitation may stay redeemable.
    pub max_invitation_ttl: Duration,
    /// How long a connection may take for its TLS handshake, to send each
    /// request head, and to send each request body (408 `timeout` after).
    /// The head's timer runs while a keep-alive connection waits for its
    /// next request too, so this is also how long one may sit idle
    /// (`backchannel_client::net::POOL_IDLE_TIMEOUT`, 5 s, is shorter).
    pub header_timeout: Duration,
    /// How often sequenced leaves are integrated and checkpoints signed.
    pub checkpoint_interval: Duration,
    /// How long a shutting-down node waits for requests in progress to
    /// finish and streams to close before it cuts what is still open: long
    /// enough for any request within `header_timeout` and the store's own
    /// timeouts, short enough for a service manager's stop timeout.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            requests_per_second: 200,
            request_burst: 400,
            connections_per_second: 20,
            connection_burst: 40,
            max_connections: 1024,
            connections_per_source: 64,
            streams_per_key: 4,
            send_queue_bytes: 8 << 20,
            slow_reader_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(20),
            poll_interval: Duration::from_secs(1),
            max_blob: 64 << 20,
            party_blob_quota: 1 << 30,
            max_invitation_ttl: Duration::from_secs(30 * 24 * 3600),
            header_timeout: Duration::from_secs(10),
            checkpoint_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Token buckets keyed by `K`, refilled from the node's clock (ms).
#[derive(Debug)]
pub struct RateLimiter<K> {
    per_second: u32,
    burst: u32,
    buckets: Mutex<HashMap<K, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens, in thousandths.
    milli_tokens: u64,
    at_ms: u64,
}

/// How many buckets are kept before full ones are dropped (a full bucket
/// is the same as no bucket).
const MAX_BUCKETS: usize = 100_000;

impl<K: Eq + Hash + Copy> RateLimiter<K> {
    /// `per_second` sustained, `burst` on top (a bucket holds
    /// `per_second + burst` tokens).
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn capacity(&self) -> u64 {
        (u64::from(self.per_second) + u64::from(self.burst)) * 1000
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Bucket>> {
        // A panic while holding this lock cannot leave a bucket half
        // updated (each update is one assignment), so a poisoned lock is
        // still usable.
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one token for `key` at `now_ms`; `false` when the bucket is
    /// empty. A clock that went backwards refills nothing.
    pub fn allow(&self, key: K, now_ms: u64) -> bool {
        let capacity = self.capacity();
        let rate = u64::from(self.per_second);
        let mut buckets = self.lock();
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| {
                b.milli_tokens + now_ms.saturating_sub(b.at_ms).saturating_mul(rate) < capacity
            });
        }
        let b = buckets.entry(key).or_insert(Bucket {
            milli_tokens: capacity,
            at_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(b.at_ms);
        b.milli_tokens = b
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(rate))
            .min(capacity);
        b.at_ms = b.at_ms.max(now_ms);
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// Requests per key.
pub type KeyRates = RateLimiter<KeyId>;
/// Connection attempts per source address.
pub type SourceRates = RateLimiter<IpAddr>;

/// Counted slots per key `K` (open streams per key, open connections per
/// source address): a slot is taken while a count is below its maximum
/// and freed when its guard drops.
#[derive(Debug)]
pub struct Slots<K> {
    counts: Mutex<HashMap<K, usize>>,
}

impl<K> Default for Slots<K> {
    fn default() -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
        }
    }
}

/// One held slot; dropping it frees it.
#[derive(Debug)]
pub struct Slot<K: Eq + Hash + Copy> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: Eq + Hash + Copy> Slots<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, usize>> {
        // Each update is one assignment, so a poisoned lock is still usable.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for `key`, unless it already holds `max`.
    pub fn acquire(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut counts = self.lock();
        let n = counts.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: Arc::clone(self),
            key,
        })
    }

    /// How many slots `key` holds.
    pub fn count(&self, key: &K) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }

    /// How many slots are held, over all keys.
    pub fn total(&self) -> usize {
        self.lock().values().sum()
    }
}

impl<K: Eq + Hash + Copy> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = self.slots.lock();
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Open streams per key.
pub type StreamCounts = Slots<KeyId>;
/// One open stream.
pub type StreamSlot = Slot<KeyId>;
/// Open connections per source address.
pub type SourceSlots = Slots<IpAddr>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_rate_plus_burst_then_refills() {
        let r = RateLimiter::new(2, 1);
        let k = 1u8;
        assert!(r.allow(k, 0));
        assert!(r.allow(k, 0));
        assert!(r.allow(k, 0));
        assert!(!r.allow(k, 0));
        // Half a second at 2/s gives one token back.
        assert!(r.allow(k, 500));
        assert!(!r.allow(k, 500));
        // A clock that goes backwards refills nothing.
        assert!(!r.allow(k, 100));
        // Other keys have their own bucket.
        assert!(r.allow(2u8, 0));
    }

    #[test]
    fn stream_slots_are_counted_and_freed() {
        let c = Arc::new(StreamCounts::default());
        let k = KeyId(backchannel_crypto::Digest([1; 32]));
        let a = c.acquire(k, 2).expect("first");
        let _b = c.acquire(k, 2).expect("second");
        assert!(c.acquire(k, 2).is_none());
        assert_eq!(c.total(), 2);
        drop(a);
        assert_eq!(c.count(&k), 1);
        assert_eq!(c.total(), 1);
        assert!(c.acquire(k, 2).is_some());
    }
}
