//! Devices on long-lived connections (role `gateway`): newline-delimited JSON over TCP, presence
//! in Redis, and calls with deadlines from any node.
//!
//! Device → server frames: `{"type":"hello","device_id","token"}` (first, within 10 s),
//! `{"type":"ping"}`, `{"type":"reply","id","result"|"error"}`,
//! `{"type":"event","name","data"}` (delivered to `--device-events-url` as a notification). Server → device:
//! `{"type":"welcome"}`, `{"type":"pong"}`, `{"type":"call","id","method","params"}`,
//! `{"type":"message","data"}`, `{"type":"error","code","message"}`,
//! `{"type":"goodbye","reason"}`.
//!
//! Invariant: every device connection is its own task with its own deadlines, so a device that
//! stops answering delays nobody else; a call is sent to the one node that holds the device
//! (its presence entry), over that node's channel, and the caller waits at most its deadline. A
//! device silent for 1.5 heartbeats is closed and its presence removed at once; presence also
//! expires by itself (3 heartbeats), so a crashed node leaves no ghosts.

pub mod frame;
pub mod link;
pub mod listener;
pub mod presence;
mod routing;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::Config;
use crate::delivery::store::Store;
use crate::redis::{Redis, StoreError};
use crate::util::lock;
pub use frame::{decode_frame, DeviceFrame, MAX_DEVICE_FRAME, MAX_DEVICE_PAYLOAD};
use presence::Presence;
use routing::Ask;
use session::Local;

/// Longest call deadline.
pub const MAX_CALL_TIMEOUT_MS: u64 = 30_000;
/// Default call deadline.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 3_000;
/// Time a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Time one write to a device may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// One-way messages queued for one device (calls have their own queue, bounded by
/// [`MAX_CALLS_IN_FLIGHT`]).
const DEVICE_QUEUE: usize = 64;
/// Events a device may send per second (each one is stored and delivered as a notification),
/// after a first burst of `EVENT_BURST`; more get `rate_limited` and are not stored.
pub const EVENTS_PER_SEC: u32 = 5;
pub const EVENT_BURST: u32 = 20;
/// How long a one-way send waits for the holding node to say it queued the message.
pub const SEND_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Calls taken for one device and not answered yet (nor past their deadline), queued or written.
/// More get `device_busy`, exactly: each admitted call holds a [`CallSlot`] until it ends, so
/// a burst up to the cap always gets through, and a device that never answers cannot make its
/// node hold calls without bound.
pub const MAX_CALLS_IN_FLIGHT: usize = 256;
/// How long a caller trusts a presence lookup. A stale entry costs one retry, never a wrong
/// answer: the node named replies "offline" when it no longer holds the device (or nobody
/// listens on its channel any more), and the call is retried on fresh presence. So the TTL
/// only trades the lookups saved against a retry after a device moves: at 2 s, 5,000 calls/s
/// over 10,000 devices looked a third of their devices up again.
const PRESENCE_CACHE_TTL: Duration = Duration::from_secs(30);
/// Most cached presence entries per node.
const PRESENCE_CACHE_MAX: usize = 200_000;

/// How a call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    Result(Value),
    DeviceError(String),
    Offline,
    Timeout,
    /// A call: the device already has `MAX_CALLS_IN_FLIGHT` unanswered calls. A send: its
    /// message queue is full.
    Busy,
}

struct Inner {
    config: Arc<Config>,
    presence: Presence,
    /// Where device events go (as notifications).
    notifications: Store,
    local: Mutex<HashMap<String, Local>>,
    pending: Mutex<HashMap<String, oneshot::Sender<CallOutcome>>>,
    /// device → (node, when looked up): where calls from this node go without asking Redis.
    presence_cache: Mutex<HashMap<String, (String, Instant)>>,
    /// Replies on their way to their callers' nodes (node, message), published by the node
    /// channel's task, which is awaited on shutdown.
    replies: tokio::sync::mpsc::UnboundedSender<(String, String)>,
    replies_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(String, String)>>>,
    /// Call ids: this node's random prefix (so ids from two nodes never meet on one device)
    /// and a counter (one random draw per node, not one system call per call).
    call_prefix: String,
    next_call: std::sync::atomic::AtomicU64,
}

/// The node's device registry and call router. Cheap to clone.
#[derive(Clone)]
pub struct Devices {
    inner: Arc<Inner>,
}

impl Devices {
    pub fn new(config: Arc<Config>, redis: Redis) -> Self {
        let (replies, replies_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                config,
                presence: Presence::new(redis.clone()),
                notifications: Store::new(redis),
                local: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                presence_cache: Mutex::new(HashMap::new()),
                replies,
                replies_rx: Mutex::new(Some(replies_rx)),
                call_prefix: uuid::Uuid::new_v4().simple().to_string(),
                next_call: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Devices connected to this node.
    pub fn online_here(&self) -> usize {
        lock(&self.inner.local).len()
    }

    /// Calls made through this node that wait for their reply.
    pub fn calls_waiting(&self) -> usize {
        lock(&self.inner.pending).len()
    }

    fn presence_ttl_ms(&self) -> u64 {
        (self.inner.config.device_heartbeat.as_millis() as u64)
            .saturating_mul(3)
            .max(1000)
    }
    /// Calls `method` on a device, wherever it is connected, waiting at most `timeout`.
    ///
    /// The holding node comes from a short-lived local cache of presence when it can (one
    /// Redis round trip less per call); if that node no longer holds the device (it moved or
    /// went away), the call is retried once on fresh presence, within the same deadline.
    pub async fn call(
        &self,
        device: &str,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<CallOutcome, StoreError> {
        let ask = Ask::Call {
            method: method.to_string(),
            params,
        };
        self.route(device, ask, Instant::now() + timeout).await
    }

    /// Queues a one-way message for a device, wherever it is connected: `Result(Null)` once
    /// the holding node has queued it, `Busy` when the device's queue is full, `Offline`, or
    /// `Timeout` when the holding node did not confirm within [`SEND_ACK_TIMEOUT`].
    pub async fn send(&self, device: &str, data: Value) -> Result<CallOutcome, StoreError> {
        let deadline = Instant::now() + SEND_ACK_TIMEOUT;
        self.route(device, Ask::Send { data }, deadline).await
    }
}
