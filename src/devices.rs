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

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::lock;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::Config;
pub mod presence;

use crate::delivery::store::Store;
use crate::redis::{Redis, StoreError};
use crate::token::{self, Kind};
use presence::{Presence, Touch};

/// Largest frame a device may send, in bytes (including the newline).
pub const MAX_DEVICE_FRAME: usize = 4096;
/// Most bytes of call `params` or sent `data` (as JSON), so that every frame a device is sent
/// fits in `MAX_DEVICE_FRAME` too, envelope included.
pub const MAX_DEVICE_PAYLOAD: usize = MAX_DEVICE_FRAME - 512;
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
/// answer: the node named replies "offline" when it no longer holds the device.
const PRESENCE_CACHE_TTL: Duration = Duration::from_secs(2);
/// Most cached presence entries per node.
const PRESENCE_CACHE_MAX: usize = 200_000;

/// What the node channel carries between nodes.
#[derive(Debug, serde::Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum NodeMessage {
    Call {
        call_id: String,
        device: String,
        method: String,
        params: Value,
        reply_node: String,
        /// The caller's remaining time; the holding node forgets the call after it.
        #[serde(default = "default_call_ms")]
        timeout_ms: u64,
    },
    Send {
        device: String,
        data: Value,
        /// Set by senders that want to know whether the message was queued (absent from
        /// older nodes, whose sends are fire-and-forget).
        #[serde(default)]
        call_id: Option<String>,
        #[serde(default)]
        reply_node: Option<String>,
    },
    Kick {
        device: String,
        conn: String,
    },
    Reply {
        call_id: String,
        #[serde(default)]
        result: Option<Value>,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        offline: bool,
        #[serde(default)]
        busy: bool,
    },
}

impl NodeMessage {
    /// The message as sent on a node channel. Infallible: every field is a string, a number, a
    /// bool or a JSON value, so there is no error to hide behind a default.
    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a node message serializes")
    }
}

fn default_call_ms() -> u64 {
    DEFAULT_CALL_TIMEOUT_MS
}

/// What is taken to the node holding a device.
#[derive(Clone)]
enum Ask {
    Call { method: String, params: Value },
    Send { data: Value },
}

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

/// A call on its way to a device (queued, then written and awaiting the reply).
struct DeviceCall {
    call_id: String,
    method: String,
    params: Value,
    reply_node: String,
    deadline: Instant,
    _slot: CallSlot,
}

/// One of a device connection's [`MAX_CALLS_IN_FLIGHT`] call slots: taken when a call is
/// admitted, given back when the value is dropped (answered, past its deadline, or the
/// connection ended), wherever that happens.
struct CallSlot(Arc<AtomicUsize>);

impl CallSlot {
    fn take(in_flight: &Arc<AtomicUsize>) -> Option<Self> {
        if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_CALLS_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(in_flight.clone()))
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Local {
    conn: String,
    /// Capacity [`MAX_CALLS_IN_FLIGHT`]: never full for an admitted call.
    calls: mpsc::Sender<DeviceCall>,
    messages: mpsc::Sender<Value>,
    /// Calls admitted and not ended (see [`CallSlot`]).
    in_flight: Arc<AtomicUsize>,
    kick: CancellationToken,
}

/// A call waiting for its reply, registered in `Inner::pending` for as long as this lives.
struct PendingCall<'a> {
    pending: &'a Mutex<HashMap<String, oneshot::Sender<CallOutcome>>>,
    call_id: &'a str,
}

impl<'a> PendingCall<'a> {
    fn register(
        pending: &'a Mutex<HashMap<String, oneshot::Sender<CallOutcome>>>,
        call_id: &'a str,
        tx: oneshot::Sender<CallOutcome>,
    ) -> Self {
        lock(pending).insert(call_id.to_string(), tx);
        Self { pending, call_id }
    }
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(self.call_id);
    }
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
}

/// The node's device registry and call router. Cheap to clone.
#[derive(Clone)]
pub struct Devices {
    inner: Arc<Inner>,
}

impl Devices {
    pub fn new(config: Arc<Config>, redis: Redis) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                presence: Presence::new(redis.clone()),
                notifications: Store::new(redis),
                local: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                presence_cache: Mutex::new(HashMap::new()),
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

    /// Takes `ask` to the node holding `device` and waits for its answer until `deadline`.
    ///
    /// The holding node comes from a short-lived local cache of presence when it can (one
    /// Redis round trip less per call); if that node no longer holds the device (it moved or
    /// went away), the request is retried once on fresh presence, within the same deadline.
    async fn route(
        &self,
        device: &str,
        ask: Ask,
        deadline: Instant,
    ) -> Result<CallOutcome, StoreError> {
        if let Some(node) = self.cached_node(device) {
            let outcome = self.ask_on(&node, device, ask.clone(), deadline).await?;
            if outcome != CallOutcome::Offline {
                return Ok(outcome);
            }
            self.forget_node(device);
        }
        let Some(at) = self.inner.presence.find(device).await? else {
            return Ok(CallOutcome::Offline);
        };
        self.remember_node(device, &at.node);
        let outcome = self.ask_on(&at.node, device, ask, deadline).await?;
        if outcome == CallOutcome::Offline {
            self.forget_node(device);
        }
        Ok(outcome)
    }

    fn cached_node(&self, device: &str) -> Option<String> {
        let cache = lock(&self.inner.presence_cache);
        cache
            .get(device)
            .filter(|(_, at)| at.elapsed() < PRESENCE_CACHE_TTL)
            .map(|(node, _)| node.clone())
    }

    fn remember_node(&self, device: &str, node: &str) {
        let mut cache = lock(&self.inner.presence_cache);
        if cache.len() >= PRESENCE_CACHE_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < PRESENCE_CACHE_TTL);
            if cache.len() >= PRESENCE_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(device.to_string(), (node.to_string(), Instant::now()));
    }

    fn forget_node(&self, device: &str) {
        lock(&self.inner.presence_cache).remove(device);
    }

    /// One request through `node`'s channel, waiting for its reply until `deadline`.
    async fn ask_on(
        &self,
        node: &str,
        device: &str,
        ask: Ask,
        deadline: Instant,
    ) -> Result<CallOutcome, StoreError> {
        let call_id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = oneshot::channel();
        // Removed when this future ends or is dropped (the HTTP caller went away), whether or
        // not a reply ever comes.
        let _pending = PendingCall::register(&self.inner.pending, &call_id, tx);
        let reply_node = self.inner.config.node_id.clone();
        let message = match ask {
            Ask::Call { method, params } => NodeMessage::Call {
                call_id: call_id.clone(),
                device: device.to_string(),
                method,
                params,
                reply_node,
                timeout_ms: deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .max(1) as u64,
            },
            Ask::Send { data } => NodeMessage::Send {
                device: device.to_string(),
                data,
                call_id: Some(call_id.clone()),
                reply_node: Some(reply_node),
            },
        };
        let sent = self
            .inner
            .presence
            .publish_to_node(node, &message.to_json())
            .await?;
        Ok(match sent {
            0 => CallOutcome::Offline,
            _ => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => CallOutcome::Offline,
                Err(_) => CallOutcome::Timeout,
            },
        })
    }

    fn reply(&self, reply_node: &str, call_id: &str, outcome: CallOutcome) {
        let message = match outcome {
            CallOutcome::Result(v) => NodeMessage::Reply {
                call_id: call_id.into(),
                result: Some(v),
                error: None,
                offline: false,
                busy: false,
            },
            CallOutcome::DeviceError(e) => NodeMessage::Reply {
                call_id: call_id.into(),
                result: None,
                error: Some(e),
                offline: false,
                busy: false,
            },
            CallOutcome::Busy => NodeMessage::Reply {
                call_id: call_id.into(),
                result: None,
                error: None,
                offline: false,
                busy: true,
            },
            CallOutcome::Offline | CallOutcome::Timeout => NodeMessage::Reply {
                call_id: call_id.into(),
                result: None,
                error: None,
                offline: true,
                busy: false,
            },
        };
        let presence = self.inner.presence.clone();
        let node = reply_node.to_string();
        tokio::spawn(async move {
            let text = message.to_json();
            if let Err(e) = presence.publish_to_node(&node, &text).await {
                warn!(error = %e, "could not send a call reply");
            }
        });
    }

    fn on_node_message(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<NodeMessage>(text) else {
            warn!("unreadable node message");
            return;
        };
        match message {
            NodeMessage::Reply {
                call_id,
                result,
                error,
                offline,
                busy,
            } => {
                if let Some(tx) = lock(&self.inner.pending).remove(&call_id) {
                    let outcome = match (result, error, offline) {
                        _ if busy => CallOutcome::Busy,
                        (_, _, true) => CallOutcome::Offline,
                        (_, Some(e), _) => CallOutcome::DeviceError(e),
                        (Some(v), None, false) => CallOutcome::Result(v),
                        (None, None, false) => CallOutcome::Result(Value::Null),
                    };
                    let _ = tx.send(outcome);
                }
            }
            NodeMessage::Call {
                call_id,
                device,
                method,
                params,
                reply_node,
                timeout_ms,
            } => {
                let target = lock(&self.inner.local)
                    .get(&device)
                    .map(|l| (l.calls.clone(), CallSlot::take(&l.in_flight)));
                let deadline =
                    Instant::now() + Duration::from_millis(timeout_ms.min(MAX_CALL_TIMEOUT_MS));
                let refused = match target {
                    None => Some(CallOutcome::Offline),
                    Some((_, None)) => Some(CallOutcome::Busy),
                    Some((tx, Some(slot))) => match tx.try_send(DeviceCall {
                        call_id: call_id.clone(),
                        method,
                        params,
                        reply_node: reply_node.clone(),
                        deadline,
                        _slot: slot,
                    }) {
                        Ok(()) => None,
                        // Not while the slot is held (the queue is as long as the cap).
                        Err(mpsc::error::TrySendError::Full(_)) => Some(CallOutcome::Busy),
                        Err(mpsc::error::TrySendError::Closed(_)) => Some(CallOutcome::Offline),
                    },
                };
                if let Some(outcome) = refused {
                    self.reply(&reply_node, &call_id, outcome);
                }
            }
            NodeMessage::Send {
                device,
                data,
                call_id,
                reply_node,
            } => {
                let tx = lock(&self.inner.local)
                    .get(&device)
                    .map(|l| l.messages.clone());
                let outcome = match tx {
                    None => CallOutcome::Offline,
                    Some(tx) => match tx.try_send(data) {
                        Ok(()) => CallOutcome::Result(Value::Null),
                        Err(mpsc::error::TrySendError::Full(_)) => CallOutcome::Busy,
                        Err(mpsc::error::TrySendError::Closed(_)) => CallOutcome::Offline,
                    },
                };
                if let (Some(call_id), Some(reply_node)) = (call_id, reply_node) {
                    self.reply(&reply_node, &call_id, outcome);
                } else if outcome != CallOutcome::Result(Value::Null) {
                    debug!(%device, ?outcome, "fire-and-forget message not queued");
                }
            }
            NodeMessage::Kick { device, conn } => {
                if let Some(l) = lock(&self.inner.local).get(&device) {
                    if l.conn == conn {
                        l.kick.cancel();
                    }
                }
            }
        }
    }

    /// Listens on this node's channel (calls, sends, kicks, replies) until `shutdown`.
    pub async fn run_node_channel(self, shutdown: CancellationToken) {
        let redis = self.inner.presence.redis();
        let channel = redis.keys().node_channel(&self.inner.config.node_id);
        crate::redis::follow::follow(
            redis,
            &[channel],
            &shutdown,
            || {},
            |msg| {
                if let Ok(text) = std::str::from_utf8(&msg.payload) {
                    self.on_node_message(text);
                }
            },
        )
        .await;
    }

    /// Accepts device connections on `listener` until `shutdown`; each one is its own task.
    pub async fn run_listener(
        self,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        limits: crate::http::server::ConnLimits,
        shutdown: CancellationToken,
    ) {
        let mut connections = tokio::task::JoinSet::new();
        info!(addr = ?listener.local_addr().ok(), tls = tls.is_some(), "device listener started");
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        match limits.admit(peer.ip()) {
                            Ok(guard) => {
                                let this = self.clone();
                                let stop = shutdown.clone();
                                let tls = tls.clone();
                                connections.spawn(async move {
                                    if let Some(link) = Link::open(stream, tls.as_ref()).await {
                                        this.serve_link(link, stop).await;
                                    }
                                    drop(guard);
                                }.instrument(info_span!("device", %peer)));
                            }
                            // Told why in plain text; over TLS simply closed, since a handshake
                            // per refused connection would let a flood past the caps.
                            Err(why) if tls.is_none() => {
                                let (code, message) = why.describe();
                                connections.spawn(async move {
                                    if let Some(mut link) = Link::open(stream, None).await {
                                        refuse(&mut link, code, message).await;
                                    }
                                });
                            }
                            Err(why) => debug!(%peer, ?why, "TLS device connection refused"),
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "device accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = shutdown.cancelled() => break,
                Some(_) = connections.join_next() => {}
            }
        }
        while connections.join_next().await.is_some() {}
    }

    /// One device connection, over TCP or a websocket: hello, then frames until it ends.
    async fn serve_link(self, mut link: Link, shutdown: CancellationToken) {
        let write = &mut link;
        // Hello first.
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, write.recv()).await {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => return,
            Ok(Err(code)) => return refuse(write, code, "the first frame must be a hello").await,
            Err(_) => return refuse(write, "hello_timeout", "no hello within 10 s").await,
        };
        let (device, token) = match (
            hello.get("type").and_then(Value::as_str),
            hello.get("device_id").and_then(Value::as_str),
            hello.get("token").and_then(Value::as_str),
        ) {
            (Some("hello"), Some(d), Some(t)) => (d.to_string(), t.to_string()),
            _ => {
                return refuse(
                    write,
                    "bad_frame",
                    "the first frame must be {\"type\":\"hello\",\"device_id\",\"token\"}",
                )
                .await
            }
        };
        if let Err(m) = crate::delivery::schema::validate_id(&device) {
            return refuse(write, "bad_device_id", &format!("device id {m}")).await;
        }
        if let Err(e) = token::verify_now(
            &self.inner.config.token_secrets,
            Kind::Device,
            &device,
            &token,
        ) {
            let code = e.code();
            return refuse(write, code, &e.to_string()).await;
        }
        // The connection lives no longer than its token: the device must come back with a
        // fresh one (so an expired or rotated-out token stops working within its lifetime).
        let token_left_ms = token::expiry_of(&token)
            .map(|exp| (exp * 1000 - crate::util::now_ms()).max(0) as u64)
            .unwrap_or(0);
        let token_deadline = Instant::now() + Duration::from_millis(token_left_ms);
        let conn_id = uuid::Uuid::new_v4().simple().to_string();
        let ttl = self.presence_ttl_ms();
        let (calls, mut calls_rx) = mpsc::channel(MAX_CALLS_IN_FLIGHT);
        let (messages, mut messages_rx) = mpsc::channel(DEVICE_QUEUE);
        let kick = CancellationToken::new();
        let previous_local = lock(&self.inner.local).insert(
            device.clone(),
            Local {
                conn: conn_id.clone(),
                calls,
                messages,
                in_flight: Arc::new(AtomicUsize::new(0)),
                kick: kick.clone(),
            },
        );
        if let Some(prev) = previous_local {
            prev.kick.cancel();
        }
        match self
            .inner
            .presence
            .join(&device, &self.inner.config.node_id, &conn_id, ttl)
            .await
        {
            Ok(Some((node, conn))) if node != self.inner.config.node_id => {
                let kick_msg = NodeMessage::Kick {
                    device: device.clone(),
                    conn,
                };
                let _ = self
                    .inner
                    .presence
                    .publish_to_node(&node, &kick_msg.to_json())
                    .await;
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "device presence could not be recorded");
                self.unregister(&device, &conn_id);
                return refuse(write, "unavailable", "presence store unavailable; retry").await;
            }
        }
        debug!(%device, "device connected");
        let heartbeat = self.inner.config.device_heartbeat;
        let silence_limit = heartbeat + heartbeat / 2;
        // Calls written to the device and not answered yet, each holding its slot.
        let mut pending: HashMap<String, DeviceCall> = HashMap::new();
        // No later than the earliest deadline in `pending` (None: nothing pending).
        let mut next_expiry: Option<Instant> = None;
        let mut events = crate::util::Budget::new(EVENTS_PER_SEC, EVENT_BURST);
        let mut last_seen = Instant::now();
        let mut last_touch = Instant::now();
        let mut goodbye = None;
        if write.send(&json!({"type": "welcome"})).await {
            loop {
                tokio::select! {
                    frame = write.recv() => match frame {
                        Ok(Some(frame)) => {
                            // Presence lives 3 heartbeats; refreshing it once per heartbeat is
                            // plenty and halves the Redis work of a large fleet.
                            if last_touch.elapsed() >= heartbeat {
                                last_touch = Instant::now();
                                // Bounded: while Redis is away this loop must keep reading and
                                // writing, and a long wait here must not look like the device's
                                // silence (see the end of this branch).
                                let touched = tokio::time::timeout(heartbeat / 2, self.inner.presence.touch(&device, &conn_id, ttl)).await;
                                match touched {
                                    Err(_) => debug!("presence refresh timed out"),
                                    Ok(Ok(Touch::Replaced)) => {
                                        goodbye = Some("replaced by a newer connection");
                                        break;
                                    }
                                    Ok(Ok(Touch::Missing)) => {
                                        // Redis lost the entry (restarted empty, or it expired
                                        // during an outage): this connection is still the
                                        // device's, so it says so again.
                                        info!(%device, "presence entry missing; joining again");
                                        let joined = tokio::time::timeout(heartbeat / 2, self.inner.presence.join(&device, &self.inner.config.node_id, &conn_id, ttl)).await;
                                        if !matches!(joined, Ok(Ok(_))) {
                                            // Try again on the next frame rather than a heartbeat later.
                                            last_touch = Instant::now() - heartbeat;
                                        }
                                    }
                                    Ok(Ok(Touch::Refreshed)) => {}
                                    Ok(Err(e)) => debug!(error = %e, "presence not refreshed"),
                                }
                            }
                            let reply = if frame.get("type").and_then(Value::as_str) == Some("event") {
                                if events.take() {
                                    self.on_event(&device, &frame).await
                                } else {
                                    Some(json!({"type": "error", "code": "rate_limited", "message": format!("at most {EVENTS_PER_SEC} events per second; this one was not stored")}))
                                }
                            } else {
                                self.on_device_frame(&frame, &mut pending)
                            };
                            if let Some(reply) = reply {
                                if !write.send(&reply).await { break }
                            }
                            // The silence clock runs from when this loop is ready to listen
                            // again: time spent on Redis (an event stored during an outage)
                            // is not the device's silence.
                            last_seen = Instant::now();
                        }
                        Ok(None) => break,
                        Err(code) => {
                            let _ = write.send(&json!({"type": "error", "code": code, "message": "frame refused; closing"})).await;
                            break;
                        }
                    },
                    call = calls_rx.recv() => match call {
                        Some(mut call) => {
                            // Its caller gave up while it was queued: not worth the device's time.
                            if call.deadline <= Instant::now() {
                                continue;
                            }
                            let frame = json!({"type": "call", "id": call.call_id, "method": call.method, "params": std::mem::take(&mut call.params)});
                            next_expiry = Some(next_expiry.map_or(call.deadline, |e| e.min(call.deadline)));
                            pending.insert(call.call_id.clone(), call);
                            if !write.send(&frame).await { break }
                        }
                        None => break,
                    },
                    message = messages_rx.recv() => match message {
                        Some(data) => {
                            if !write.send(&json!({"type": "message", "data": data})).await { break }
                        }
                        None => break,
                    },
                    // Calls past their deadline give their slots back (their callers have
                    // stopped waiting; a late reply gets unknown_call).
                    _ = tokio::time::sleep_until(next_expiry.unwrap_or(token_deadline)), if next_expiry.is_some() => {
                        let now = Instant::now();
                        pending.retain(|_, c| c.deadline > now);
                        next_expiry = pending.values().map(|c| c.deadline).min();
                    }
                    _ = tokio::time::sleep_until(last_seen + silence_limit) => {
                        debug!(%device, "no heartbeat within 1.5 intervals; closing");
                        goodbye = Some("heartbeat timeout");
                        break;
                    }
                    _ = kick.cancelled() => { goodbye = Some("replaced by a newer connection"); break }
                    _ = tokio::time::sleep_until(token_deadline) => { goodbye = Some("token expired"); break }
                    _ = shutdown.cancelled() => { goodbye = Some("server shutting down"); break }
                }
            }
        }
        if let Some(reason) = goodbye {
            let _ = write
                .send(&json!({"type": "goodbye", "reason": reason}))
                .await;
        }
        write.close().await;
        self.unregister(&device, &conn_id);
        if let Err(e) = self.inner.presence.leave(&device, &conn_id).await {
            warn!(error = %e, "device presence could not be removed; it expires by itself");
        }
        for (call_id, call) in pending {
            self.reply(&call.reply_node, &call_id, CallOutcome::Offline);
        }
        // Calls still queued: their callers learn at once instead of at their deadline.
        calls_rx.close();
        while let Ok(call) = calls_rx.try_recv() {
            self.reply(&call.reply_node, &call.call_id, CallOutcome::Offline);
        }
        debug!(%device, "device disconnected");
    }

    /// Serves one device connected over the `/device` websocket until it goes or `shutdown`.
    pub async fn serve_websocket(self, socket: WebSocket, shutdown: CancellationToken) {
        self.serve_link(Link::Ws(Box::new(socket)), shutdown).await
    }

    fn unregister(&self, device: &str, conn_id: &str) {
        let mut local = lock(&self.inner.local);
        if local.get(device).is_some_and(|l| l.conn == conn_id) {
            local.remove(device);
        }
    }

    /// Turns a device event into a notification for the app (with the engine's retries).
    /// Answers `{"type":"event_ack","id"}` once it is durable, or an error frame.
    async fn on_event(&self, device: &str, frame: &Value) -> Option<Value> {
        let Some(url) = &self.inner.config.device_events_url else {
            return Some(
                json!({"type": "error", "code": "events_disabled", "message": "this server has no --device-events-url"}),
            );
        };
        let Some(name) = frame
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty() && n.len() <= 64)
        else {
            return Some(
                json!({"type": "error", "code": "bad_frame", "message": "an event needs a name of 1 to 64 characters"}),
            );
        };
        let id = format!("event-{}", uuid::Uuid::now_v7());
        let now = crate::util::now_ms();
        let doc = json!({
            "id": id,
            "url": url,
            "body": {"device_id": device, "event": name, "data": frame.get("data").cloned().unwrap_or(Value::Null), "at": now},
        });
        let n = match crate::delivery::schema::parse(doc.to_string().as_bytes(), now, String::new) {
            Ok(n) => n,
            Err(e) => {
                return Some(
                    json!({"type": "error", "code": "bad_frame", "message": e.to_string()}),
                )
            }
        };
        match self.inner.notifications.enqueue(&n, now).await {
            Ok(_) => Some(json!({"type": "event_ack", "id": id})),
            Err(e) => {
                warn!(error = %e, "device event could not be enqueued");
                Some(
                    json!({"type": "error", "code": "unavailable", "message": "event not stored; send it again"}),
                )
            }
        }
    }

    fn on_device_frame(
        &self,
        frame: &Value,
        pending: &mut HashMap<String, DeviceCall>,
    ) -> Option<Value> {
        match frame.get("type").and_then(Value::as_str) {
            Some("ping") => Some(json!({"type": "pong"})),
            Some("reply") => {
                let id = frame.get("id").and_then(Value::as_str)?;
                let Some(call) = pending.remove(id) else {
                    return Some(
                        json!({"type": "error", "code": "unknown_call", "message": "no pending call with that id"}),
                    );
                };
                let outcome = match frame.get("error") {
                    Some(e) if !e.is_null() => CallOutcome::DeviceError(
                        e.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| e.to_string()),
                    ),
                    _ => CallOutcome::Result(frame.get("result").cloned().unwrap_or(Value::Null)),
                };
                self.reply(&call.reply_node, id, outcome);
                None
            }
            _ => Some(
                json!({"type": "error", "code": "bad_frame", "message": "expected ping or reply"}),
            ),
        }
    }
}

/// Reads one newline-terminated JSON frame. `Ok(None)` at end of stream; `Err(code)` for an
/// oversized, non-UTF-8 or non-JSON frame. Cancel-safe: bytes of a frame read so far stay in
/// `buf` until the frame is complete.
async fn read_frame<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Value>, &'static str> {
    loop {
        let room = (MAX_DEVICE_FRAME + 1).saturating_sub(buf.len()) as u64;
        let n = (&mut *reader)
            .take(room)
            .read_until(b'\n', buf)
            .await
            .map_err(|_| "read_error")?;
        if buf.last() != Some(&b'\n') {
            if buf.len() > MAX_DEVICE_FRAME {
                buf.clear();
                return Err("frame_too_large");
            }
            if n != 0 {
                continue;
            }
            if buf.is_empty() {
                return Ok(None);
            }
            // End of stream after an unterminated frame: take it as the last one.
        }
        let parsed = decode_frame(buf);
        buf.clear();
        match parsed {
            Ok(None) if n == 0 => return Ok(None),
            Ok(None) => continue,
            other => return other,
        }
    }
}

/// Decodes one device frame (a TCP line without its newline, or a `/device` websocket
/// message): `Ok(None)` for a blank frame, `Err(code)` for one over [`MAX_DEVICE_FRAME`],
/// not UTF-8, or not JSON. Every frame a device sends goes through here.
pub fn decode_frame(bytes: &[u8]) -> Result<Option<Value>, &'static str> {
    if bytes.len() > MAX_DEVICE_FRAME {
        return Err("frame_too_large");
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "bad_frame")?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text.trim())
        .map(Some)
        .map_err(|_| "bad_frame")
}

/// A device's connection: newline-delimited JSON over TCP, or one JSON frame per websocket
/// message at `/device`. Same frames, same limits.
enum Link {
    Tcp {
        reader: BufReader<Box<dyn AsyncRead + Send + Unpin>>,
        buf: Vec<u8>,
        write: Box<dyn AsyncWrite + Send + Unpin>,
    },
    Ws(Box<WebSocket>),
}

/// The TLS acceptor for the device listener, from PEM files; the error says what is wrong.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

impl Link {
    /// A TCP device connection, after the TLS handshake when the listener has `tls` (which
    /// must finish within the hello deadline); `None` if the handshake fails.
    async fn open(stream: TcpStream, tls: Option<&tokio_rustls::TlsAcceptor>) -> Option<Link> {
        let (reader, write): (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        ) = match tls {
            None => {
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(acceptor) => {
                match tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        let (r, w) = tokio::io::split(s);
                        (Box::new(r), Box::new(w))
                    }
                    Ok(Err(e)) => {
                        debug!(error = %e, "device TLS handshake failed");
                        return None;
                    }
                    Err(_) => {
                        debug!("device TLS handshake timed out");
                        return None;
                    }
                }
            }
        };
        Some(Link::Tcp {
            reader: BufReader::with_capacity(1024, reader),
            buf: Vec::with_capacity(256),
            write,
        })
    }

    /// The next frame; `Ok(None)` when the device closed. Cancel-safe.
    async fn recv(&mut self) -> Result<Option<Value>, &'static str> {
        match self {
            Link::Tcp { reader, buf, .. } => read_frame(reader, buf).await,
            Link::Ws(ws) => loop {
                let bytes = match ws.recv().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(None),
                    Some(Err(_)) => return Err("read_error"),
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                };
                match decode_frame(&bytes)? {
                    Some(frame) => return Ok(Some(frame)),
                    None => return Err("bad_frame"),
                }
            },
        }
    }

    /// Writes one frame within the write timeout; false if the connection is gone.
    async fn send(&mut self, frame: &Value) -> bool {
        let written = match self {
            Link::Tcp { write, .. } => {
                let mut line = frame.to_string();
                line.push('\n');
                tokio::time::timeout(WRITE_TIMEOUT, write.write_all(line.as_bytes()))
                    .await
                    .map(|r| r.is_ok())
            }
            Link::Ws(ws) => tokio::time::timeout(
                WRITE_TIMEOUT,
                ws.send(Message::Text(frame.to_string().into())),
            )
            .await
            .map(|r| r.is_ok()),
        };
        matches!(written, Ok(true))
    }

    async fn close(&mut self) {
        match self {
            Link::Tcp { write, .. } => {
                let _ = write.shutdown().await;
            }
            Link::Ws(ws) => {
                let frame = CloseFrame {
                    code: 1000,
                    reason: "".into(),
                };
                let _ =
                    tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::Close(Some(frame)))).await;
            }
        }
    }
}

async fn refuse(link: &mut Link, code: &str, message: &str) {
    let _ = link
        .send(&json!({"type": "error", "code": code, "message": message}))
        .await;
    link.close().await;
}

/// `GET /device`: the device protocol over a websocket (role `gateway`), for devices and
/// networks where only HTTP(S) passes. Each text (or binary) message is one JSON frame.
/// A simulated device fleet (`paynotify simulate-devices`, tests, benchmarks): each device
/// connects, says hello, pings every `heartbeat`, answers every call with
/// `{"echo": method, "params": params}` (unless it is black-holed: then it reads nothing and
/// answers nothing), and reconnects with backoff when its connection ends.
pub mod simulate {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::{json, Value};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;
    use tokio_util::sync::CancellationToken;

    /// Counters of a fleet.
    #[derive(Default, Debug)]
    pub struct FleetStats {
        pub online: AtomicU64,
        pub calls_answered: AtomicU64,
        pub reconnects: AtomicU64,
    }

    /// TLS for a fleet: a connector and the name the listener's certificate must carry.
    pub type Tls = (
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    );

    /// A connector that trusts the CA certificates in `ca_file` (PEM), for the host of `addr`.
    pub fn tls_to(addr: &str, ca_file: &std::path::Path) -> Result<Tls, String> {
        use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| format!("{}: {e}", ca_file.display()))?
        {
            let cert = cert.map_err(|e| format!("{}: {e}", ca_file.display()))?;
            roots.add(cert).map_err(|e| e.to_string())?;
        }
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
    }

    /// Runs one device until `stop`; over TLS when `tls` is given.
    #[allow(clippy::too_many_arguments)]
    pub async fn device(
        addr: String,
        tls: Option<Tls>,
        id: String,
        token: String,
        heartbeat: Duration,
        black_hole: bool,
        stats: Arc<FleetStats>,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            if let Ok(stream) = TcpStream::connect(&addr).await {
                let _ = stream.set_nodelay(true);
                let welcomed = match &tls {
                    None => {
                        run_connection(stream, &id, &token, heartbeat, black_hole, &stats, &stop)
                            .await
                    }
                    Some((connector, name)) => {
                        match connector.connect(name.clone(), stream).await {
                            Ok(s) => {
                                run_connection(s, &id, &token, heartbeat, black_hole, &stats, &stop)
                                    .await
                            }
                            Err(_) => false,
                        }
                    }
                };
                if welcomed {
                    backoff = Duration::from_millis(100);
                }
            }
            if stop.is_cancelled() {
                return;
            }
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {},
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One connection's life; true if it was welcomed.
    async fn run_connection<S>(
        stream: S,
        id: &str,
        token: &str,
        heartbeat: Duration,
        black_hole: bool,
        stats: &FleetStats,
        stop: &CancellationToken,
    ) -> bool
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (r, mut w) = tokio::io::split(stream);
        let mut lines = BufReader::new(r).lines();
        let hello = json!({"type": "hello", "device_id": id, "token": token});
        if w.write_all(format!("{hello}\n").as_bytes()).await.is_err() {
            return false;
        }
        match lines.next_line().await {
            Ok(Some(line)) if line.contains("\"welcome\"") => {}
            _ => return false,
        }
        stats.online.fetch_add(1, Ordering::Relaxed);
        // Real fleets are not in step: each device starts its ping cycle at a random phase.
        let phase = heartbeat.mul_f64(rand::random::<f64>());
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + phase, heartbeat);
        loop {
            tokio::select! {
                line = lines.next_line(), if !black_hole => match line {
                    Ok(Some(line)) => {
                        let Ok(frame) = serde_json::from_str::<Value>(&line) else { continue };
                        if frame["type"] == "call" {
                            let reply = json!({"type": "reply", "id": frame["id"], "result": {"echo": frame["method"], "params": frame["params"]}});
                            if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() { break }
                            stats.calls_answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => break,
                },
                _ = ping.tick() => {
                    if w.write_all(b"{\"type\":\"ping\"}\n").await.is_err() { break }
                }
                _ = stop.cancelled() => break,
            }
        }
        stats.online.fetch_sub(1, Ordering::Relaxed);
        true
    }
}
