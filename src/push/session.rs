//! The browser protocol, whatever carries it (the `/ws` websocket in `http::gateway`). Frames
//! are JSON text: client → `{"type":"subscribe","order_id","token"}`,
//! `{"type":"unsubscribe","order_id"}`, `{"type":"ping"}`; server →
//! `{"type":"subscribed"|"unsubscribed","order_id"}`,
//! `{"type":"result","order_id","seq","status","data","published_at"}`, `{"type":"pong"}`,
//! `{"type":"error","code","message"[,"order_id"]}`.
//!
//! Invariant: a session is bounded (frames per second, subscriptions, the lifetime of each
//! subscription's token), a result reaches it at most once per sequence number, and every
//! order it follows is released when the session is dropped, however its transport ends.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::hub::{Hub, Push, Subscriber};
use super::store::Results;
use crate::config::Config;
use crate::token::{self, Kind};
use crate::util::Budget;

/// Largest frame a client may send.
pub const MAX_CLIENT_FRAME: usize = 4096;
/// Frames a browser may send per second (each subscribe or unsubscribe is a Redis round trip),
/// after a first burst of `CLIENT_FRAME_BURST`; more get `rate_limited` and are not acted on.
pub const CLIENT_FRAMES_PER_SEC: u32 = 10;
pub const CLIENT_FRAME_BURST: u32 = 50;
/// Refused frames after which the connection is closed (1008).
pub const MAX_REFUSED_FRAMES: u32 = 20;

/// What every browser session of a node shares. Cheap to clone.
#[derive(Clone)]
pub struct Browsers {
    pub config: Arc<Config>,
    pub results: Results,
    pub hub: Hub,
}

/// A frame a browser sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientFrame {
    Subscribe { order_id: String, token: String },
    Unsubscribe { order_id: String },
    Ping,
}

/// Decodes a browser's frame (the text of one websocket message, at most `MAX_CLIENT_FRAME`
/// bytes by then); the error is the message of a `bad_frame` reply.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, String> {
    serde_json::from_str(text).map_err(|e| format!("not a valid frame: {e}"))
}

/// What the transport does after a client frame.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// Send these frames, in order.
    Frames(Vec<String>),
    /// Close the connection with this code and reason (a frame flood).
    Close(u16, &'static str),
}

/// An error frame.
pub fn error_frame(code: &str, message: &str, order_id: Option<&str>) -> String {
    let mut v = json!({"type": "error", "code": code, "message": message});
    if let Some(o) = order_id {
        v["order_id"] = json!(o);
    }
    v.to_string()
}

/// One browser's session: the orders it follows, each with the last sequence number sent and
/// its token's expiry (unix s).
pub struct Session {
    hub: Hub,
    me: Subscriber,
    following: HashMap<String, (u64, i64)>,
    budget: Budget,
    refused: u32,
}

impl Session {
    /// A new session whose results arrive on `tx`.
    pub fn new(browsers: &Browsers, tx: mpsc::Sender<Arc<Push>>) -> Self {
        Self {
            hub: browsers.hub.clone(),
            me: browsers.hub.subscriber(tx),
            following: HashMap::new(),
            budget: Budget::new(CLIENT_FRAMES_PER_SEC, CLIENT_FRAME_BURST),
            refused: 0,
        }
    }

    /// Cancelled when this session's queue overflowed: it reads too slowly and must go.
    pub fn kicked(&self) -> &CancellationToken {
        &self.me.kicked
    }

    /// Handles one text frame from the client.
    pub async fn on_text(&mut self, browsers: &Browsers, text: &str) -> Reply {
        if !self.budget.take() {
            self.refused += 1;
            if self.refused >= MAX_REFUSED_FRAMES {
                return Reply::Close(1008, "too many frames");
            }
            let message = format!(
                "at most {CLIENT_FRAMES_PER_SEC} frames per second; this one was not acted on"
            );
            return Reply::Frames(vec![error_frame("rate_limited", &message, None)]);
        }
        // Boxed, so the Redis futures inside are not part of every idle connection's task.
        Reply::Frames(Box::pin(self.handle(browsers, text)).await)
    }

    /// The frame for a result pushed to this session, unless it was sent already.
    pub fn on_push(&mut self, push: &Push) -> Option<String> {
        let (last, _) = self.following.get_mut(&push.order_id)?;
        if push.seq <= *last {
            return None;
        }
        *last = push.seq;
        Some(push.frame.clone())
    }

    /// True when some subscription's token has expired by `now_s`.
    pub fn has_expired(&self, now_s: i64) -> bool {
        self.following.values().any(|(_, exp)| *exp <= now_s)
    }

    /// Ends the subscriptions whose token has expired; the frames that tell the client.
    pub fn expire(&mut self, now_s: i64) -> Vec<String> {
        let expired: Vec<String> = self
            .following
            .iter()
            .filter(|(_, (_, exp))| *exp <= now_s)
            .map(|(o, _)| o.clone())
            .collect();
        expired
            .into_iter()
            .map(|order_id| {
                self.following.remove(&order_id);
                self.hub.release(&order_id, self.me.id());
                error_frame(
                    "expired_token",
                    "the subscription's token expired; subscribe again with a fresh one",
                    Some(&order_id),
                )
            })
            .collect()
    }

    async fn handle(&mut self, browsers: &Browsers, text: &str) -> Vec<String> {
        let frame = match parse_client_frame(text) {
            Ok(f) => f,
            Err(message) => return vec![error_frame("bad_frame", &message, None)],
        };
        match frame {
            ClientFrame::Ping => vec![json!({"type": "pong"}).to_string()],
            ClientFrame::Subscribe { order_id, token } => {
                self.subscribe(browsers, order_id, &token).await
            }
            ClientFrame::Unsubscribe { order_id } => {
                if self.following.remove(&order_id).is_some() {
                    self.hub.release(&order_id, self.me.id());
                }
                vec![json!({"type": "unsubscribed", "order_id": order_id}).to_string()]
            }
        }
    }

    async fn subscribe(
        &mut self,
        browsers: &Browsers,
        order_id: String,
        token: &str,
    ) -> Vec<String> {
        if let Err(m) = crate::delivery::schema::validate_id(&order_id) {
            return vec![error_frame("bad_order_id", &format!("order id {m}"), None)];
        }
        let config = &browsers.config;
        if let Err(e) = token::verify_now(&config.token_secrets, Kind::Order, &order_id, token) {
            return vec![error_frame(e.code(), &e.to_string(), Some(&order_id))];
        }
        let expiry = token::expiry_of(token).unwrap_or(0);
        let subscribed = json!({"type": "subscribed", "order_id": order_id}).to_string();
        if let Some((_, exp)) = self.following.get_mut(&order_id) {
            // Subscribing again with a fresh token extends the subscription.
            *exp = (*exp).max(expiry);
            return vec![subscribed];
        }
        if self.following.len() >= config.ws_max_subscriptions {
            return vec![error_frame(
                "too_many_subscriptions",
                &format!(
                    "at most {} orders per connection",
                    config.ws_max_subscriptions
                ),
                Some(&order_id),
            )];
        }
        // Subscribe in Redis first, then read the stored result: nothing falls in between.
        self.hub.subscribe(&order_id, self.me.clone()).await;
        self.following.insert(order_id.clone(), (0, expiry));
        let mut out = vec![subscribed];
        if let Ok(Some((seq, payload))) = browsers.results.read(&order_id).await {
            if let Some((last, _)) = self.following.get_mut(&order_id) {
                *last = seq;
            }
            out.push(super::result_frame(seq, &payload));
        }
        out
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for order_id in self.following.keys() {
            self.hub.release(order_id, self.me.id());
        }
    }
}
