//! Calls between nodes: a call made on any node travels on the holding node's channel
//! (`SPUBLISH` to its node channel), is queued for the device there, and its reply comes back on
//! the caller's channel.
//!
//! Invariant: a caller waits at most its deadline, and its pending entry ([`PendingCall`]) is
//! removed however its future ends; the holding node is found from a short-lived cache of
//! presence when it can, and a stale entry costs one retry on fresh presence, never a wrong
//! answer (the node named replies "offline" when it no longer holds the device).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::session::{CallSlot, DeviceCall};
use super::{
    CallOutcome, Devices, DEFAULT_CALL_TIMEOUT_MS, MAX_CALL_TIMEOUT_MS, PRESENCE_CACHE_MAX,
    PRESENCE_CACHE_TTL,
};
use crate::redis::StoreError;
use crate::util::lock;

/// What the node channel carries between nodes.
#[derive(Debug, serde::Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(super) enum NodeMessage {
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
    Reply(Reply),
}

/// The answer to a call or a confirmed send, from the node that holds the device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "ReplyWire", into = "ReplyWire")]
pub(super) struct Reply {
    call_id: String,
    outcome: CallOutcome,
}

/// A reply as it travels: independent fields, as every node version has sent them (a timeout
/// travels as offline; the caller keeps its own deadline).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReplyWire {
    call_id: String,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    offline: bool,
    #[serde(default)]
    busy: bool,
}

impl From<ReplyWire> for Reply {
    fn from(w: ReplyWire) -> Self {
        let outcome = match (w.busy, w.offline, w.error, w.result) {
            (true, _, _, _) => CallOutcome::Busy,
            (_, true, _, _) => CallOutcome::Offline,
            (_, _, Some(e), _) => CallOutcome::DeviceError(e),
            (_, _, None, v) => CallOutcome::Result(v.unwrap_or(Value::Null)),
        };
        Reply {
            call_id: w.call_id,
            outcome,
        }
    }
}

impl From<Reply> for ReplyWire {
    fn from(r: Reply) -> Self {
        let mut w = ReplyWire {
            call_id: r.call_id,
            result: None,
            error: None,
            offline: false,
            busy: false,
        };
        match r.outcome {
            CallOutcome::Result(v) => w.result = Some(v),
            CallOutcome::DeviceError(e) => w.error = Some(e),
            CallOutcome::Busy => w.busy = true,
            CallOutcome::Offline | CallOutcome::Timeout => w.offline = true,
        }
        w
    }
}

impl NodeMessage {
    /// The message as sent on a node channel. Infallible: every field is a string, a number, a
    /// bool or a JSON value, so there is no error to hide behind a default.
    pub(super) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a node message serializes")
    }
}

fn default_call_ms() -> u64 {
    DEFAULT_CALL_TIMEOUT_MS
}

/// What is taken to the node holding a device.
#[derive(Clone)]
pub(super) enum Ask {
    Call { method: String, params: Value },
    Send { data: Value },
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

impl Devices {
    /// Takes `ask` to the node holding `device` and waits for its answer until `deadline`.
    ///
    /// The holding node comes from a short-lived local cache of presence when it can (one
    /// Redis round trip less per call); if that node no longer holds the device (it moved or
    /// went away), the request is retried once on fresh presence, within the same deadline.
    pub(super) async fn route(
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
        let n = self
            .inner
            .next_call
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let call_id = format!("{}-{n:x}", self.inner.call_prefix);
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

    pub(super) fn reply(&self, reply_node: &str, call_id: &str, outcome: CallOutcome) {
        let message = NodeMessage::Reply(Reply {
            call_id: call_id.into(),
            outcome,
        });
        // Fails only when the node channel's task is gone, i.e. the node has stopped.
        let _ = self
            .inner
            .replies
            .send((reply_node.to_string(), message.to_json()));
    }

    /// Publishes replies as they are queued, concurrently, until `stop`; then publishes what is
    /// left (the "offline" answers of connections that ended in the drain) and waits for all.
    /// The publishes are futures of this task (on its one shared connection), not a spawned
    /// task and span each.
    async fn publish_replies(
        &self,
        mut queued: mpsc::UnboundedReceiver<(String, String)>,
        stop: &CancellationToken,
    ) {
        let presence = &self.inner.presence;
        let mut sending = FuturesUnordered::new();
        let send = |(node, text): (String, String)| async move {
            if let Err(e) = presence.publish_to_node(&node, &text).await {
                warn!(error = %e, "could not send a call reply");
            }
        };
        loop {
            tokio::select! {
                next = queued.recv() => match next {
                    Some(reply) => sending.push(send(reply)),
                    None => break,
                },
                Some(()) = sending.next(), if !sending.is_empty() => {}
                _ = stop.cancelled() => break,
            }
        }
        while let Ok(reply) = queued.try_recv() {
            sending.push(send(reply));
        }
        while sending.next().await.is_some() {}
    }

    fn on_node_message(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<NodeMessage>(text) else {
            warn!("unreadable node message");
            return;
        };
        match message {
            NodeMessage::Reply(Reply { call_id, outcome }) => {
                if let Some(tx) = lock(&self.inner.pending).remove(&call_id) {
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
    /// Also publishes the replies this node sends (see [`Devices::reply`]).
    pub async fn run_node_channel(self, shutdown: CancellationToken) {
        let redis = self.inner.presence.redis();
        let channels = [redis.keys().node_channel(&self.inner.config.node_id)];
        let follow = crate::redis::follow::follow(
            redis,
            &channels,
            &shutdown,
            || {},
            |msg| {
                if let Ok(text) = std::str::from_utf8(&msg.payload) {
                    self.on_node_message(text);
                }
            },
        );
        let queued = lock(&self.inner.replies_rx).take();
        match queued {
            Some(queued) => {
                tokio::join!(follow, self.publish_replies(queued, &shutdown));
            }
            None => {
                warn!("replies are published by another node-channel task");
                follow.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replies keep the wire format every node version sends (independent fields), so a rolling
    /// upgrade can mix versions; in Rust they are one outcome.
    #[test]
    fn replies_keep_their_wire_format_and_decode_to_one_outcome() {
        let cases = [
            (
                CallOutcome::Result(serde_json::json!({"a": 1})),
                r#"{"kind":"reply","call_id":"c","result":{"a":1},"error":null,"offline":false,"busy":false}"#,
            ),
            (
                CallOutcome::DeviceError("jammed".into()),
                r#"{"kind":"reply","call_id":"c","result":null,"error":"jammed","offline":false,"busy":false}"#,
            ),
            (
                CallOutcome::Busy,
                r#"{"kind":"reply","call_id":"c","result":null,"error":null,"offline":false,"busy":true}"#,
            ),
            (
                CallOutcome::Offline,
                r#"{"kind":"reply","call_id":"c","result":null,"error":null,"offline":true,"busy":false}"#,
            ),
        ];
        for (outcome, wire) in cases {
            let sent = NodeMessage::Reply(Reply {
                call_id: "c".into(),
                outcome: outcome.clone(),
            });
            assert_eq!(sent.to_json(), wire);
            let NodeMessage::Reply(got) = serde_json::from_str(wire).unwrap() else {
                panic!("not a reply");
            };
            assert_eq!(got.outcome, outcome);
        }
        // An older node's reply without the optional fields: a null result.
        let NodeMessage::Reply(got) =
            serde_json::from_str(r#"{"kind":"reply","call_id":"c"}"#).unwrap()
        else {
            panic!("not a reply");
        };
        assert_eq!(got.outcome, CallOutcome::Result(Value::Null));
    }
}
