//! The WebSocket delivery stream: `GET /v1/talks/{talks}/stream?from=<seq>`.
//!
//! One stream per device connection, resuming from a seq with no gap and no
//! duplicate: the stream reads the log by seq from `from`, sends every
//! envelope of the caller's rooms as an [`api::StreamFrame::Envelope`], and
//! a [`api::StreamFrame::Caught`] with the next seq whenever it has caught
//! up. It sleeps on its talks' channel in [`crate::wake`]: woken by this
//! node's appends to its talks, by this node's changes to its access list,
//! and by the node's one poll per talks every `poll_interval` (writes by
//! other nodes), never by other talks. Before each page it reads from the
//! store it re-reads the access list, so a key that left it is closed
//! (code 4003) before it is sent anything more; rows this node just
//! sequenced, sent from memory, are checked against the node's cached
//! list when that is at least as new as the list each row was admitted
//! under (their access-list version), and against the store's otherwise.
//! A key is never sent an envelope sequenced under a list without it, and
//! a change this node makes to the list wakes every stream to the store.
//!
//! Bounds: at most `streams_per_key` streams per key (429 before the
//! upgrade); a send queue of at most `send_queue_bytes` — when it is full
//! the stream waits for it to drain, and a reader that leaves it full for
//! `slow_reader_timeout` is closed with 4008 and resumes by seq; a ping every `ping_interval`, and
//! close with 4001 after `idle_timeout` without a frame from the client.
//!
//! When the node shuts down ([`crate::net::serve`]), every stream is closed
//! with 1001 (going away); the client resumes by seq on the restarted node.
//!
//! Close codes: 1001 node shutting down, 4001 idle, 4003 access revoked,
//! 4008 too slow, 1011 node error.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use backchannel_codec::TalksId;
use backchannel_crypto::PublicKey;
use backchannel_statement::header::{MAX_BODY, SIGNED_HEADER_LEN};
use backchannel_store::{MAX_READ, MAX_READ_BYTES, Store};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{Notify, mpsc};

use crate::api::{self, ApiError};
use crate::fanout::Found;
use crate::limits::StreamSlot;
use crate::net::{ConnectionPermit, Shutdown};
use crate::server::{ApiPath, ApiQuery, Authed, Node, delivered, may_read, parse_talks};

/// Idle: nothing from the client for `idle_timeout`.
pub const CLOSE_IDLE: u16 = 4001;
/// The key left the access list.
pub const CLOSE_REVOKED: u16 = 4003;
/// The send queue overflowed: resume by seq.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// The node failed.
pub const CLOSE_ERROR: u16 = 1011;
/// The node is shutting down (going away): resume by seq once it is back.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// The largest WebSocket message a client may send (it sends only pongs
/// and closes; anything is read as a sign of life).
pub const MAX_CLIENT_MESSAGE: usize = 64 << 10;

/// The WebSocket read buffer of a stream (what the client sends is small;
/// a larger message is read in several turns).
pub const READ_BUFFER: usize = 4 << 10;

/// The most frames the writer sends in one flush.
const MAX_BURST: usize = 64;

/// Query of the stream.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// The first seq to deliver.
    #[serde(default)]
    pub from: u64,
}

pub(crate) async fn stream<S: Store>(
    State(node): State<Arc<Node<S>>>,
    Authed(key): Authed,
    ApiPath(talks): ApiPath<String>,
    ApiQuery(q): ApiQuery<StreamQuery>,
    shutdown: Option<Extension<Shutdown>>,
    permit: Option<Extension<ConnectionPermit>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let talks = parse_talks(&talks)?;
    node.member(talks, &key).await?;
    let upgrade =
        upgrade.map_err(|e| ApiError::malformed(format!("not a WebSocket upgrade: {e}")))?;
    let slot = node
        .streams
        .acquire(key.id(), node.limits.streams_per_key)
        .ok_or_else(|| {
            ApiError::rate_limited("this key has too many open streams; close one first")
        })?;
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        // tungstenite allocates its read buffer up front (128 KiB by
        // default); a client sends only pongs and closes, so a small one
        // keeps an idle stream small.
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| async move {
            // The stream keeps its connection's slot until it ends.
            let _permit = permit;
            run(
                node,
                talks,
                key,
                q.from,
                socket,
                slot,
                shutdown.map(|e| e.0),
            )
            .await
        }))
}

enum Outgoing {
    Frame(Message, usize),
    Close(u16, &'static str),
}

async fn run<S: Store>(
    node: Arc<Node<S>>,
    talks: TalksId,
    key: PublicKey,
    from: u64,
    socket: WebSocket,
    _slot: StreamSlot,
    mut shutdown: Option<Shutdown>,
) {
    let (mut sink, mut incoming) = socket.split();
    let queue = Arc::new(Queue {
        bytes: AtomicUsize::new(0),
        drained: Notify::new(),
    });
    // The writer: drains the queue into the socket, so that a slow reader
    // shows up as queued bytes, not as a stalled producer.
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer_queue = Arc::clone(&queue);
    let mut writer = tokio::spawn(async move {
        let mut next = rx.recv().await;
        while let Some(out) = next.take() {
            match out {
                Outgoing::Frame(msg, size) => {
                    // Frames already queued go out in one flush (one TLS
                    // write for a burst, not one per frame).
                    let mut fed = sink.feed(msg).await;
                    let mut sizes = size;
                    let mut burst = 1;
                    while fed.is_ok() && burst < MAX_BURST {
                        match rx.try_recv() {
                            Ok(Outgoing::Frame(msg, size)) => {
                                fed = sink.feed(msg).await;
                                sizes += size;
                                burst += 1;
                            }
                            Ok(close) => {
                                next = Some(close);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let sent = match fed {
                        Ok(()) => sink.flush().await,
                        Err(e) => Err(e),
                    };
                    writer_queue.bytes.fetch_sub(sizes, Ordering::AcqRel);
                    writer_queue.drained.notify_one();
                    if sent.is_err() {
                        return;
                    }
                    if next.is_none() {
                        next = rx.recv().await;
                    }
                }
                Outgoing::Close(code, reason) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code,
                            reason: Utf8Bytes::from_static(reason),
                        })))
                        .await;
                    return;
                }
            }
        }
    });

    let close = tokio::select! {
        close = deliver(&node, talks, &key, from, &tx, &queue, &mut incoming) => close,
        () = draining(&mut shutdown) => Some((CLOSE_GOING_AWAY, "the node is shutting down")),
    };
    if let Some((code, reason)) = close {
        let _ = tx.send(Outgoing::Close(code, reason));
    }
    drop(tx);
    // The writer sends what is queued, then the close frame; a reader too
    // slow to take them before the shutdown grace runs out is cut.
    tokio::select! {
        _ = &mut writer => {}
        () = stopped(&mut shutdown) => writer.abort(),
    }
}

/// Resolves when the node starts shutting down (never without a
/// [`Shutdown`]: a router served by other means than `serve`).
async fn draining(shutdown: &mut Option<Shutdown>) {
    match shutdown {
        Some(s) => s.draining().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the node's shutdown grace is over.
async fn stopped(shutdown: &mut Option<Shutdown>) {
    match shutdown {
        Some(s) => s.stopped().await,
        None => std::future::pending().await,
    }
}

/// Delivers until the stream must close; returns the close code and reason
/// (`None`: the client went away).
async fn deliver<S: Store>(
    node: &Node<S>,
    talks: TalksId,
    key: &PublicKey,
    from: u64,
    tx: &mpsc::UnboundedSender<Outgoing>,
    queue: &Queue,
    incoming: &mut futures_util::stream::SplitStream<WebSocket>,
) -> Option<(u16, &'static str)> {
    let limits = &node.limits;
    // Subscribe before the first read, so that no append falls between.
    let mut wake = node.wakeups.subscribe(talks);
    let mut seen = *wake.borrow_and_update();
    let mut cursor = from;
    let mut ping = tokio::time::interval(limits.ping_interval);
    ping.tick().await;
    let mut idle = Box::pin(tokio::time::sleep(limits.idle_timeout));
    // The log size the last append notification named, while nothing else
    // woke the stream: up to it, this node's fan-out may hold the rows.
    let mut announced: Option<u64> = None;

    loop {
        // Deliver everything from the cursor, re-authorising for every page
        // (a long catch-up must not outlive a removal from the list) and
        // hearing the client between pages (pongs keep it from looking
        // idle; a close ends the stream).
        loop {
            while let Some(m) = incoming.next().now_or_never() {
                match m {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => idle = Box::pin(tokio::time::sleep(limits.idle_timeout)),
                }
            }
            // Caught up to an announced size: the rows from memory, if
            // this node sequenced all of them (shared frames, no store
            // read, no encoding per recipient).
            if let Some(size) = announced.take().filter(|&n| n > cursor)
                && let Found::Rows(rows) = node.sequencer.fanout().rows(talks, cursor, size).await
            {
                // A row not checked against a list (`None`) needs the store's.
                let newest = rows
                    .iter()
                    .map(|r| r.access_version.unwrap_or(u64::MAX))
                    .max()
                    .unwrap_or(0);
                let entry = match node.cached_list(talks, newest) {
                    Some(list) => list
                        .get(&key.id())
                        .cloned()
                        .ok_or((CLOSE_REVOKED, "access revoked")),
                    None => authorised(node, talks, key).await,
                };
                let entry = match entry {
                    Ok(e) => e,
                    Err(close) => return Some(close),
                };
                for row in rows {
                    if !may_read(&entry, row.room) {
                        continue;
                    }
                    if !send_text(tx, queue, limits, row.frame.clone()).await {
                        return Some((CLOSE_TOO_SLOW, "send queue full; resume by seq"));
                    }
                }
                // Caught up to the announced size; a later append's
                // notification is already waiting, if there was one.
                cursor = size;
                break;
            }
            let entry = match authorised(node, talks, key).await {
                Ok(e) => e,
                Err(close) => return Some(close),
            };
            let rows = match node.store.read(talks, cursor, MAX_READ).await {
                Ok(rows) => rows,
                Err(_) => return Some((CLOSE_ERROR, "node error")),
            };
            let Some(last) = rows.last().map(|r| r.seq) else {
                break;
            };
            // A page that stopped neither at the row limit nor near the
            // byte limit (a further row of the largest size would still
            // have fitted) reached the end of the log: no second read (an
            // append after it wakes this stream again).
            let bytes: usize = rows
                .iter()
                .map(|r| r.header.len() + r.body.as_ref().map_or(0, Vec::len))
                .sum();
            let caught_up = rows.len() < MAX_READ
                && bytes + SIGNED_HEADER_LEN + MAX_BODY as usize <= MAX_READ_BYTES;
            for row in rows {
                if !may_read(&entry, row.room) {
                    continue;
                }
                let frame = api::StreamFrame::Envelope(delivered(row, &entry.key_id()));
                if !send(tx, queue, limits, &frame).await {
                    return Some((CLOSE_TOO_SLOW, "send queue full; resume by seq"));
                }
            }
            cursor = last + 1;
            if caught_up {
                break;
            }
        }
        if !send(
            tx,
            queue,
            limits,
            &api::StreamFrame::Caught { next: cursor },
        )
        .await
        {
            return Some((CLOSE_TOO_SLOW, "send queue full; resume by seq"));
        }

        // Wait for something to do.
        loop {
            tokio::select! {
                changed = wake.changed() => {
                    if changed.is_err() {
                        return Some((CLOSE_ERROR, "node error"));
                    }
                    let now = *wake.borrow_and_update();
                    let previous = std::mem::replace(&mut seen, now);
                    if now.generation != previous.generation {
                        // Re-read the store from the cursor.
                        break;
                    }
                    if now.size > cursor {
                        announced = Some(now.size);
                        break;
                    }
                }
                _ = ping.tick() => {
                    let _ = tx.send(Outgoing::Frame(Message::Ping(Default::default()), 0));
                }
                () = &mut idle => return Some((CLOSE_IDLE, "idle timeout")),
                m = incoming.next() => match m {
                    // Anything from the client (pongs included) shows it is alive.
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => {
                        idle = Box::pin(tokio::time::sleep(limits.idle_timeout));
                    }
                },
            }
        }
    }
}

/// The caller's current access-list entry, or the close it gets.
async fn authorised<S: Store>(
    node: &Node<S>,
    talks: TalksId,
    key: &PublicKey,
) -> Result<backchannel_statement::AccessEntry, (u16, &'static str)> {
    match node.store.access_list(talks).await {
        Ok(Some(record)) => match node.decoded_list(talks, &record) {
            Ok(list) => list
                .get(&key.id())
                .cloned()
                .ok_or((CLOSE_REVOKED, "access revoked")),
            Err(_) => Err((CLOSE_ERROR, "node error")),
        },
        Ok(None) => Err((CLOSE_REVOKED, "access revoked")),
        Err(_) => Err((CLOSE_ERROR, "node error")),
    }
}

/// The send queue's byte count, and a wake-up each time the writer sends.
struct Queue {
    bytes: AtomicUsize,
    drained: Notify,
}

/// Queues a frame, waiting while the queue is full; `false` when it stayed
/// full for `slow_reader_timeout` (or the writer is gone). An empty queue
/// always takes one frame, so a frame larger than the limit still goes.
async fn send(
    tx: &mpsc::UnboundedSender<Outgoing>,
    queue: &Queue,
    limits: &crate::limits::Limits,
    frame: &api::StreamFrame,
) -> bool {
    match serde_json::to_string(frame) {
        Ok(text) => send_text(tx, queue, limits, text.into()).await,
        Err(_) => false,
    }
}

/// [`send`] of a frame already in its wire form (shared, not copied).
async fn send_text(
    tx: &mpsc::UnboundedSender<Outgoing>,
    queue: &Queue,
    limits: &crate::limits::Limits,
    text: Utf8Bytes,
) -> bool {
    let size = text.len();
    let room = async {
        loop {
            let now = queue.bytes.load(Ordering::Acquire);
            if now == 0 || now + size <= limits.send_queue_bytes {
                return;
            }
            queue.drained.notified().await;
        }
    };
    if tokio::time::timeout(limits.slow_reader_timeout, room)
        .await
        .is_err()
    {
        return false;
    }
    queue.bytes.fetch_add(size, Ordering::AcqRel);
    tx.send(Outgoing::Frame(Message::Text(text), size)).is_ok()
}
