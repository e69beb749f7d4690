//! The in-memory backend against the conformance suite and the crash model.

use backchannel_store::conformance;
use backchannel_store::memory::MemoryStore;

#[tokio::test]
async fn memory_store_conforms() {
    conformance::run(|| async { MemoryStore::new() }).await;
}

#[tokio::test]
async fn memory_store_survives_a_crash_at_every_step() {
    conformance::crash_suite().await;
}
