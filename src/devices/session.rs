//! One device connection: the hello and its token, registration (kicking an older connection
//! of the same device, here or on another node), then frames until it ends, then teardown.
//!
//! Invariant: a connection lives no longer than its token and its heartbeat (1.5 intervals of
//! silence close it); each call it is given holds one of the device's
//! [`MAX_CALLS_IN_FLIGHT`](super::MAX_CALLS_IN_FLIGHT) slots until it is answered, passes its
//! deadline or the connection ends; and at the end every call it held or had queued is answered
//! "offline" at once, and its presence is removed if it still owns it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::frame::DeviceFrame;
use super::link::{refuse, Link, MessageStream};
use super::presence::Touch;
use super::routing::NodeMessage;
use super::{
    CallOutcome, Devices, DEVICE_QUEUE, EVENTS_PER_SEC, EVENT_BURST, HELLO_TIMEOUT,
    MAX_CALLS_IN_FLIGHT,
};
use crate::token::{self, Kind};
use crate::util::lock;

/// A call on its way to a device (queued, then written and awaiting the reply).
pub(super) struct DeviceCall {
    pub(super) call_id: String,
    pub(super) method: String,
    pub(super) params: Value,
    pub(super) reply_node: String,
    pub(super) deadline: Instant,
    pub(super) _slot: CallSlot,
}

/// One of a device connection's [`MAX_CALLS_IN_FLIGHT`] call slots: taken when a call is
/// admitted, given back when the value is dropped (answered, past its deadline, or the
/// connection ended), wherever that happens.
pub(super) struct CallSlot(Arc<AtomicUsize>);

impl CallSlot {
    pub(super) fn take(in_flight: &Arc<AtomicUsize>) -> Option<Self> {
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

pub(super) struct Local {
    pub(super) conn: String,
    /// Capacity [`MAX_CALLS_IN_FLIGHT`]: never full for an admitted call.
    pub(super) calls: mpsc::Sender<DeviceCall>,
    pub(super) messages: mpsc::Sender<Value>,
    /// Calls admitted and not ended (see [`CallSlot`]).
    pub(super) in_flight: Arc<AtomicUsize>,
    pub(super) kick: CancellationToken,
}

/// A device that said hello with a valid token.
struct Hello {
    device: String,
    /// The connection lives no longer than its token.
    token_deadline: Instant,
}

/// This connection, registered locally and in presence.
struct Registered {
    device: String,
    conn_id: String,
    presence_ttl_ms: u64,
    token_deadline: Instant,
    kick: CancellationToken,
    calls: mpsc::Receiver<DeviceCall>,
    messages: mpsc::Receiver<Value>,
}

/// What a connection holds while it runs.
struct Running {
    /// Calls written to the device and not answered yet, each holding its slot.
    pending: HashMap<String, DeviceCall>,
    /// No later than the earliest deadline in `pending` (None: nothing pending).
    next_expiry: Option<Instant>,
    events: crate::util::Budget,
    last_touch: Instant,
}

impl Devices {
    /// One device connection, over TCP or a websocket: hello, then frames until it ends.
    pub(super) async fn serve_link(self, mut link: Link, shutdown: CancellationToken) {
        let Some(hello) = self.handshake(&mut link).await else {
            return;
        };
        let Some(mut reg) = self.register(&mut link, hello).await else {
            return;
        };
        debug!(device = %reg.device, "device connected");
        let mut running = Running {
            pending: HashMap::new(),
            next_expiry: None,
            events: crate::util::Budget::new(EVENTS_PER_SEC, EVENT_BURST),
            last_touch: Instant::now(),
        };
        let goodbye = if link.send(&json!({"type": "welcome"})).await {
            self.run(&mut link, &mut reg, &mut running, &shutdown).await
        } else {
            None
        };
        self.teardown(link, reg, running, goodbye).await;
    }

    /// Serves one device whose messages the HTTP layer carries (the `/device` websocket).
    pub async fn serve_messages(self, stream: Box<dyn MessageStream>, shutdown: CancellationToken) {
        self.serve_link(Link::Messages(stream), shutdown).await
    }

    /// The first frame: a hello with a valid device id and token, within `HELLO_TIMEOUT`.
    /// `None` after refusing the connection.
    async fn handshake(&self, link: &mut Link) -> Option<Hello> {
        let first = match tokio::time::timeout(HELLO_TIMEOUT, link.recv()).await {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => return None,
            Ok(Err(code)) => {
                refuse(link, code, "the first frame must be a hello").await;
                return None;
            }
            Err(_) => {
                let message = format!("no hello within {} s", HELLO_TIMEOUT.as_secs());
                refuse(link, "hello_timeout", &message).await;
                return None;
            }
        };
        let Some(DeviceFrame::Hello { device_id, token }) = DeviceFrame::parse(first) else {
            let message = "the first frame must be {\"type\":\"hello\",\"device_id\",\"token\"}";
            refuse(link, "bad_frame", message).await;
            return None;
        };
        if let Err(m) = crate::delivery::schema::validate_id(&device_id) {
            refuse(link, "bad_device_id", &format!("device id {m}")).await;
            return None;
        }
        let secrets = &self.inner.config.token_secrets;
        if let Err(e) = token::verify_now(secrets, Kind::Device, &device_id, &token) {
            refuse(link, e.code(), &e.to_string()).await;
            return None;
        }
        // So an expired or rotated-out token stops working within its lifetime.
        let token_left_ms = token::expiry_of(&token)
            .map(|exp| (exp * 1000 - crate::util::now_ms()).max(0) as u64)
            .unwrap_or(0);
        Some(Hello {
            device: device_id,
            token_deadline: Instant::now() + Duration::from_millis(token_left_ms),
        })
    }

    /// Makes this connection the device's: locally, then in presence; then tells an older
    /// connection (here or on another node) to go. A failed presence write refuses this
    /// connection and leaves the older one as it was.
    async fn register(&self, link: &mut Link, hello: Hello) -> Option<Registered> {
        let Hello {
            device,
            token_deadline,
        } = hello;
        let node_id = &self.inner.config.node_id;
        let conn_id = uuid::Uuid::new_v4().simple().to_string();
        let ttl = self.presence_ttl_ms();
        let (calls, calls_rx) = mpsc::channel(MAX_CALLS_IN_FLIGHT);
        let (messages, messages_rx) = mpsc::channel(DEVICE_QUEUE);
        let kick = CancellationToken::new();
        let previous = lock(&self.inner.local).insert(
            device.clone(),
            Local {
                conn: conn_id.clone(),
                calls,
                messages,
                in_flight: Arc::new(AtomicUsize::new(0)),
                kick: kick.clone(),
            },
        );
        match self
            .inner
            .presence
            .join(&device, node_id, &conn_id, ttl)
            .await
        {
            Ok(replaced) => {
                if let Some(prev) = previous {
                    prev.kick.cancel();
                }
                if let Some((node, conn)) = replaced.filter(|(node, _)| node != node_id) {
                    let kick = NodeMessage::Kick {
                        device: device.clone(),
                        conn,
                    };
                    let _ = self
                        .inner
                        .presence
                        .publish_to_node(&node, &kick.to_json())
                        .await;
                }
            }
            Err(e) => {
                warn!(error = %e, "device presence could not be recorded");
                {
                    let mut local = lock(&self.inner.local);
                    if local.get(&device).is_some_and(|l| l.conn == conn_id) {
                        match previous {
                            Some(prev) => local.insert(device.clone(), prev),
                            None => local.remove(&device),
                        };
                    }
                }
                refuse(link, "unavailable", "presence store unavailable; retry").await;
                return None;
            }
        }
        Some(Registered {
            device,
            conn_id,
            presence_ttl_ms: ttl,
            token_deadline,
            kick,
            calls: calls_rx,
            messages: messages_rx,
        })
    }

    /// Frames both ways until the connection ends; the goodbye reason, if the server ends it.
    async fn run(
        &self,
        link: &mut Link,
        reg: &mut Registered,
        running: &mut Running,
        shutdown: &CancellationToken,
    ) -> Option<&'static str> {
        let heartbeat = self.inner.config.device_heartbeat;
        let silence_limit = heartbeat + heartbeat / 2;
        let mut last_seen = Instant::now();
        // The three timers live across iterations instead of being made (and registered in
        // the timer wheel, and removed) again for every frame in or out: the silence timer
        // is armed at a deadline no later than the real one and, when it fires early
        // (frames came since), re-armed at the real one; the expiry timer is re-armed only
        // when a call due earlier than it is written.
        let silence = tokio::time::sleep_until(last_seen + silence_limit);
        let expiry = tokio::time::sleep_until(reg.token_deadline);
        let token_expired = tokio::time::sleep_until(reg.token_deadline);
        tokio::pin!(silence, expiry, token_expired);
        let mut armed_expiry: Option<Instant> = None;
        loop {
            tokio::select! {
                frame = link.recv() => match frame {
                    Ok(Some(frame)) => {
                        if let Err(goodbye) = self.refresh_presence(reg, running).await {
                            return Some(goodbye);
                        }
                        if let Some(reply) = self.on_frame(&reg.device, frame, running).await {
                            if !link.send(&reply).await { return None }
                        }
                        // The silence clock runs from when this loop is ready to listen
                        // again: time spent on Redis (an event stored during an outage)
                        // is not the device's silence.
                        last_seen = Instant::now();
                    }
                    Ok(None) => return None,
                    Err(code) => {
                        let _ = link.send(&json!({"type": "error", "code": code, "message": "frame refused; closing"})).await;
                        return None;
                    }
                },
                call = reg.calls.recv() => {
                    let call = call?;
                    if let Some(frame) = running.write_call(call) {
                        if !link.send(&frame).await { return None }
                    }
                }
                message = reg.messages.recv() => {
                    let data = message?;
                    if !link.send(&json!({"type": "message", "data": data})).await { return None }
                }
                // Calls past their deadline give their slots back (their callers have
                // stopped waiting; a late reply gets unknown_call).
                _ = &mut expiry, if armed_expiry.is_some() => {
                    armed_expiry = None;
                    running.expire_calls();
                }
                _ = &mut silence => {
                    let deadline = last_seen + silence_limit;
                    if deadline > Instant::now() {
                        silence.as_mut().reset(deadline);
                    } else {
                        debug!(device = %reg.device, "no heartbeat within 1.5 intervals; closing");
                        return Some("heartbeat timeout");
                    }
                }
                _ = reg.kick.cancelled() => return Some("replaced by a newer connection"),
                _ = &mut token_expired => return Some("token expired"),
                _ = shutdown.cancelled() => return Some("server shutting down"),
            }
            if let Some(next) = running.next_expiry {
                if armed_expiry.is_none_or(|armed| next < armed) {
                    expiry.as_mut().reset(next);
                    armed_expiry = Some(next);
                }
            }
        }
    }

    /// Refreshes presence once per heartbeat (it lives 3; once is plenty and halves the Redis
    /// work of a large fleet). Bounded by half a heartbeat, so a Redis that is away neither
    /// stops the connection's loop nor reads as the device's silence. `Err(goodbye)` when
    /// another connection took the device over.
    async fn refresh_presence(
        &self,
        reg: &Registered,
        running: &mut Running,
    ) -> Result<(), &'static str> {
        let heartbeat = self.inner.config.device_heartbeat;
        if running.last_touch.elapsed() < heartbeat {
            return Ok(());
        }
        running.last_touch = Instant::now();
        let presence = &self.inner.presence;
        let (device, conn_id, ttl) = (&reg.device, &reg.conn_id, reg.presence_ttl_ms);
        match tokio::time::timeout(heartbeat / 2, presence.touch(device, conn_id, ttl)).await {
            Err(_) => debug!("presence refresh timed out"),
            Ok(Ok(Touch::Replaced)) => return Err("replaced by a newer connection"),
            Ok(Ok(Touch::Missing)) => {
                // Redis lost the entry (restarted empty, or it expired during an outage): this
                // connection is still the device's, so it says so again.
                info!(%device, "presence entry missing; joining again");
                let node_id = &self.inner.config.node_id;
                let join = presence.join(device, node_id, conn_id, ttl);
                if !matches!(tokio::time::timeout(heartbeat / 2, join).await, Ok(Ok(_))) {
                    // Try again on the next frame rather than a heartbeat later.
                    running.last_touch = Instant::now() - heartbeat;
                }
            }
            Ok(Ok(Touch::Refreshed)) => {}
            Ok(Err(e)) => debug!(error = %e, "presence not refreshed"),
        }
        Ok(())
    }

    /// The answer to one frame from the device, if it gets one.
    async fn on_frame(&self, device: &str, frame: Value, running: &mut Running) -> Option<Value> {
        match DeviceFrame::parse(frame) {
            Some(DeviceFrame::Ping) => Some(json!({"type": "pong"})),
            Some(DeviceFrame::Reply { id, result, error }) => {
                let Some(call) = running.pending.remove(&id) else {
                    return Some(
                        json!({"type": "error", "code": "unknown_call", "message": "no pending call with that id"}),
                    );
                };
                let outcome = match error {
                    Some(e) if !e.is_null() => CallOutcome::DeviceError(
                        e.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| e.to_string()),
                    ),
                    _ => CallOutcome::Result(result.unwrap_or(Value::Null)),
                };
                self.reply(&call.reply_node, &id, outcome);
                None
            }
            Some(DeviceFrame::Event { name, data }) => {
                if running.events.take() {
                    self.on_event(device, name, data).await
                } else {
                    Some(
                        json!({"type": "error", "code": "rate_limited", "message": format!("at most {EVENTS_PER_SEC} events per second; this one was not stored")}),
                    )
                }
            }
            Some(DeviceFrame::Hello { .. }) | None => Some(
                json!({"type": "error", "code": "bad_frame", "message": "expected ping, reply or event"}),
            ),
        }
    }

    /// Ends the connection: goodbye, close, unregister, presence removed, and every call it
    /// held or had queued answered "offline" at once.
    async fn teardown(
        &self,
        mut link: Link,
        mut reg: Registered,
        running: Running,
        goodbye: Option<&'static str>,
    ) {
        if let Some(reason) = goodbye {
            let _ = link
                .send(&json!({"type": "goodbye", "reason": reason}))
                .await;
        }
        link.close().await;
        self.unregister(&reg.device, &reg.conn_id);
        if let Err(e) = self.inner.presence.leave(&reg.device, &reg.conn_id).await {
            warn!(error = %e, "device presence could not be removed; it expires by itself");
        }
        for (call_id, call) in running.pending {
            self.reply(&call.reply_node, &call_id, CallOutcome::Offline);
        }
        // Calls still queued: their callers learn at once instead of at their deadline.
        reg.calls.close();
        while let Ok(call) = reg.calls.try_recv() {
            self.reply(&call.reply_node, &call.call_id, CallOutcome::Offline);
        }
        debug!(device = %reg.device, "device disconnected");
    }

    fn unregister(&self, device: &str, conn_id: &str) {
        let mut local = lock(&self.inner.local);
        if local.get(device).is_some_and(|l| l.conn == conn_id) {
            local.remove(device);
        }
    }

    /// Turns a device event into a notification for the app (with the engine's retries).
    /// Answers `{"type":"event_ack","id"}` once it is durable, or an error frame.
    async fn on_event(
        &self,
        device: &str,
        name: Option<String>,
        data: Option<Value>,
    ) -> Option<Value> {
        let Some(url) = &self.inner.config.device_events_url else {
            return Some(
                json!({"type": "error", "code": "events_disabled", "message": "this server has no --device-events-url"}),
            );
        };
        let Some(name) = name.filter(|n| !n.is_empty() && n.len() <= 64) else {
            return Some(
                json!({"type": "error", "code": "bad_frame", "message": "an event needs a name of 1 to 64 characters"}),
            );
        };
        let id = format!("event-{}", uuid::Uuid::now_v7());
        let now = crate::util::now_ms();
        let doc = json!({
            "id": id,
            "url": url,
            "body": {"device_id": device, "event": name, "data": data.unwrap_or(Value::Null), "at": now},
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
}

impl Running {
    /// The frame for a call taken off the queue, now pending; `None` if its caller gave up
    /// while it was queued (not worth the device's time).
    fn write_call(&mut self, mut call: DeviceCall) -> Option<Value> {
        if call.deadline <= Instant::now() {
            return None;
        }
        let frame = json!({"type": "call", "id": call.call_id, "method": call.method, "params": std::mem::take(&mut call.params)});
        self.next_expiry = Some(
            self.next_expiry
                .map_or(call.deadline, |e| e.min(call.deadline)),
        );
        self.pending.insert(call.call_id.clone(), call);
        Some(frame)
    }

    /// Forgets the calls past their deadline, giving their slots back.
    fn expire_calls(&mut self) {
        let now = Instant::now();
        self.pending.retain(|_, c| c.deadline > now);
        self.next_expiry = self.pending.values().map(|c| c.deadline).min();
    }
}
