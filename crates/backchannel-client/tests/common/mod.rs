//! What the client tests share: a real node over a memory store, served
//! over TLS on loopback with the talks opened, and device sessions on it.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use backchannel_client::net::NodeClient;
use backchannel_client::session::Session;
use backchannel_client::store::MemoryClientStore;
use backchannel_codec::TalksId;
use backchannel_crypto::Signer as _;
use backchannel_node::server::{Node, NodeConfig};
use backchannel_statement::AccessList;
use backchannel_statement::fixtures::{key, labels::*};
use backchannel_store::memory::MemoryStore;
use backchannel_test_support::{ManualClock, Served, serve_tls, test_limits};
use backchannel_tlog::NodeOrigin;

/// A device's session over an in-memory client store.
pub type Sess = Session<MemoryClientStore>;

/// The node's origin.
pub const ORIGIN: &str = "node.example";

/// The wall clock, Unix ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A node on `store`, its clock at the current time, with talks opened on
/// `list` by the mediator's lead device.
pub async fn start_with(store: Arc<MemoryStore>, list: &AccessList) -> Served {
    let node = Node::new(
        store,
        NodeConfig {
            origin: NodeOrigin::new(ORIGIN).unwrap(),
            log_key: Arc::new(key(NODE_LOG)),
            creators: vec![key(OMAN_LEAD_DEVICE).public_key()],
            limits: test_limits(),
            clock: Arc::new(ManualClock(AtomicU64::new(now_ms()))),
            instance: [0xf1; 16],
        },
    );
    let served = serve_tls(node, &key(0x52), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    client(&served, OMAN_LEAD_DEVICE)
        .create_talks(list)
        .await
        .unwrap();
    served
}

/// The node's API, as fixture key `device`.
pub fn client(served: &Served, device: u8) -> NodeClient {
    NodeClient::new(served.addr, served.fingerprint, &key(device)).unwrap()
}

/// Fixture key `device`'s session in `talks`, on `store`.
pub async fn session(
    served: &Served,
    device: u8,
    talks: TalksId,
    store: Arc<MemoryClientStore>,
) -> Sess {
    Session::open(
        store,
        client(served, device),
        key(device),
        talks,
        &NodeOrigin::new(ORIGIN).unwrap(),
        key(NODE_LOG).public_key(),
    )
    .await
    .unwrap()
}
