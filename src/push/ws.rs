//! `GET /ws`: the browser protocol. Frames are JSON text:
//! client → `{"type":"subscribe","order_id","token"}`, `{"type":"unsubscribe","order_id"}`,
//! `{"type":"ping"}`; server → `{"type":"subscribed"|"unsubscribed","order_id"}`,
//! `{"type":"result","order_id","seq","status","data","published_at"}`, `{"type":"pong"}`,
//! `{"type":"error","code","message"[,"order_id"]}`.
//!
//! Invariant: every connection is bounded: frame size, subscriptions, send queue (a follower
//! that falls behind is cut off with close code 1013), write time, and liveness (a ping every
//! interval; no pong by the next one closes the socket). A result reaches a connection at most
//! once per sequence number.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::hub::{Hub, Push};
use crate::config::Config;
use crate::store::Store;
use crate::token::{self, Kind};

/// Largest frame a client may send.
pub const MAX_CLIENT_FRAME: usize = 4096;
/// Frames a browser may send per second (each subscribe or unsubscribe is a Redis round trip),
/// after a first burst of `CLIENT_FRAME_BURST`; more get `rate_limited` and are not acted on.
pub const CLIENT_FRAMES_PER_SEC: u32 = 10;
pub const CLIENT_FRAME_BURST: u32 = 50;
/// Refused frames after which the connection is closed (1008).
pub const MAX_REFUSED_FRAMES: u32 = 20;
/// How long one write to a client may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// State of the gateway routes.
#[derive(Clone)]
pub struct GatewayState {
    pub config: Arc<Config>,
    pub store: Store,
    pub hub: Hub,
    pub shutdown: CancellationToken,
}

/// A frame a browser sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientFrame {
    Subscribe { order_id: String, token: String },
    Unsubscribe { order_id: String },
    Ping,
}

/// `/ws` and the long-poll `GET /v1/orders/{order_id}/result` (role `gateway`; token-authenticated).
pub fn router(state: GatewayState) -> axum::Router {
    axum::Router::new()
        .route("/ws", axum::routing::get(handler))
        .route(
            "/v1/orders/{order_id}/result",
            axum::routing::get(super::poll_handler),
        )
        .route("/paynotify.js", axum::routing::get(client_js))
        .with_state(state)
}

/// The browser client (`web/paynotify.js`), served as is.
async fn client_js() -> impl axum::response::IntoResponse {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../../web/paynotify.js"),
    )
}

/// The upgrade handler, with buffers sized for many idle connections.
pub async fn handler(
    ws: WebSocketUpgrade,
    headers: axum::http::HeaderMap,
    State(state): State<GatewayState>,
) -> Response {
    let allowed = &state.config.ws_allowed_origins;
    if !allowed.is_empty() {
        if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
                return (
                    axum::http::StatusCode::FORBIDDEN,
                    axum::Json(json!({"code": "origin_not_allowed", "message": "this Origin may not open /ws (--ws-allowed-origins)"})),
                )
                    .into_response();
            }
        }
    }
    // Client frames are small (a subscribe is ~200 bytes); the buffer grows for a larger one.
    ws.read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| async move {
            state.hub.connection(true);
            serve(socket, &state).await;
            state.hub.connection(false);
        })
}

fn error_frame(code: &str, message: &str, order_id: Option<&str>) -> String {
    let mut v = json!({"type": "error", "code": code, "message": message});
    if let Some(o) = order_id {
        v["order_id"] = json!(o);
    }
    v.to_string()
}

/// Sends one frame; false when the write failed, took too long, or the follower was cut off
/// meanwhile (a client that stops reading blocks the write, not the rest of the node).
async fn send(socket: &mut WebSocket, me: &super::hub::Subscriber, text: String) -> bool {
    tokio::select! {
        r = tokio::time::timeout(WRITE_TIMEOUT, socket.send(Message::Text(text.into()))) => matches!(r, Ok(Ok(()))),
        _ = me.kicked.cancelled() => false,
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}

async fn serve(mut socket: WebSocket, state: &GatewayState) {
    let config = &state.config;
    let (tx, mut rx) = mpsc::channel::<Arc<Push>>(config.ws_send_queue);
    let me = state.hub.subscriber(tx);
    // order id -> (last sequence number delivered on this connection, token expiry in s)
    let mut following: HashMap<String, (u64, i64)> = HashMap::new();
    let mut ping = tokio::time::interval(config.ws_ping_interval);
    ping.tick().await;
    let mut awaiting_pong = false;
    let mut last_seen = Instant::now();
    let mut budget = crate::Budget::new(CLIENT_FRAMES_PER_SEC, CLIENT_FRAME_BURST);
    let mut refused = 0;
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let Some(Ok(msg)) = incoming else { break };
                last_seen = Instant::now();
                match msg {
                    Message::Text(_) if !budget.take() => {
                        refused += 1;
                        if refused >= MAX_REFUSED_FRAMES {
                            debug!("frame flood; closing");
                            close(&mut socket, 1008, "too many frames").await;
                            break;
                        }
                        let message = format!("at most {CLIENT_FRAMES_PER_SEC} frames per second; this one was not acted on");
                        if !send(&mut socket, &me, error_frame("rate_limited", &message, None)).await { break }
                    }
                    Message::Text(text) => {
                        // Boxed, so the Redis futures inside are not part of every idle connection's task.
                        let reply = Box::pin(handle_frame(state, &me, &mut following, text.as_str())).await;
                        for frame in reply {
                            if !send(&mut socket, &me, frame).await { return cleanup(state, &me, following); }
                        }
                    }
                    Message::Pong(_) => awaiting_pong = false,
                    Message::Ping(_) => {}
                    Message::Binary(_) => {
                        if !send(&mut socket, &me, error_frame("bad_frame", "binary frames are not accepted; send JSON text", None)).await { break }
                    }
                    Message::Close(_) => break,
                }
            }
            push = rx.recv() => {
                let Some(push) = push else { break };
                if let Some((last, _)) = following.get_mut(&push.order_id) {
                    if push.seq > *last {
                        *last = push.seq;
                        if !send(&mut socket, &me, push.frame.clone()).await { break }
                    }
                }
            }
            _ = ping.tick() => {
                if awaiting_pong && last_seen.elapsed() >= config.ws_ping_interval {
                    debug!("no pong within the ping interval; closing");
                    close(&mut socket, 1011, "ping timeout").await;
                    break;
                }
                awaiting_pong = true;
                if tokio::time::timeout(WRITE_TIMEOUT, socket.send(Message::Ping(Default::default()))).await.is_err() { break }
                // A subscription lives no longer than its token (checked once per ping interval,
                // so idle connections carry no extra timer); a fresh subscribe renews it.
                let now_s = crate::now_ms() / 1000;
                if following.values().any(|(_, exp)| *exp <= now_s) {
                    // Boxed, like handle_frame: keeps idle connections' tasks small.
                    let ok = Box::pin(expire(state, &me, &mut following, &mut socket, now_s)).await;
                    if !ok { return cleanup(state, &me, following); }
                }
            }
            _ = me.kicked.cancelled() => {
                debug!("send queue full; cutting off a slow reader");
                close(&mut socket, 1013, "send queue full: reading too slowly").await;
                break;
            }
            _ = state.shutdown.cancelled() => {
                close(&mut socket, 1001, "server shutting down").await;
                break;
            }
        }
    }
    cleanup(state, &me, following);
}

/// Ends the subscriptions whose token has expired, telling the client; false if it is gone.
async fn expire(
    state: &GatewayState,
    me: &super::hub::Subscriber,
    following: &mut HashMap<String, (u64, i64)>,
    socket: &mut WebSocket,
    now_s: i64,
) -> bool {
    let expired: Vec<String> = following
        .iter()
        .filter(|(_, (_, exp))| *exp <= now_s)
        .map(|(o, _)| o.clone())
        .collect();
    for order_id in expired {
        following.remove(&order_id);
        state.hub.release(&order_id, me.id());
        let frame = error_frame(
            "expired_token",
            "the subscription's token expired; subscribe again with a fresh one",
            Some(&order_id),
        );
        if !send(socket, me, frame).await {
            return false;
        }
    }
    true
}

fn cleanup(
    state: &GatewayState,
    me: &super::hub::Subscriber,
    following: HashMap<String, (u64, i64)>,
) {
    for order_id in following.keys() {
        state.hub.release(order_id, me.id());
    }
}

/// Decodes a browser's frame (the text of one websocket message, at most `MAX_CLIENT_FRAME`
/// bytes by then); the error is the message of a `bad_frame` reply.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, String> {
    serde_json::from_str(text).map_err(|e| format!("not a valid frame: {e}"))
}

/// Handles one client frame; returns the frames to send back (in order).
async fn handle_frame(
    state: &GatewayState,
    me: &super::hub::Subscriber,
    following: &mut HashMap<String, (u64, i64)>,
    text: &str,
) -> Vec<String> {
    let frame = match parse_client_frame(text) {
        Ok(f) => f,
        Err(message) => return vec![error_frame("bad_frame", &message, None)],
    };
    match frame {
        ClientFrame::Ping => vec![json!({"type": "pong"}).to_string()],
        ClientFrame::Subscribe { order_id, token } => {
            if let Err(m) = crate::notification::validate_id(&order_id) {
                return vec![error_frame("bad_order_id", &format!("order id {m}"), None)];
            }
            if let Err(e) =
                token::verify_now(&state.config.token_secrets, Kind::Order, &order_id, &token)
            {
                let code = e.code();
                return vec![error_frame(code, &e.to_string(), Some(&order_id))];
            }
            let expiry = token::expiry_of(&token).unwrap_or(0);
            let subscribed = json!({"type": "subscribed", "order_id": order_id}).to_string();
            if let Some((_, exp)) = following.get_mut(&order_id) {
                // Subscribing again with a fresh token extends the subscription.
                *exp = (*exp).max(expiry);
                return vec![subscribed];
            }
            if following.len() >= state.config.ws_max_subscriptions {
                return vec![error_frame(
                    "too_many_subscriptions",
                    &format!(
                        "at most {} orders per connection",
                        state.config.ws_max_subscriptions
                    ),
                    Some(&order_id),
                )];
            }
            // Subscribe in Redis first, then read the stored result: nothing falls in between.
            state.hub.subscribe(&order_id, me.clone()).await;
            following.insert(order_id.clone(), (0, expiry));
            let mut out = vec![subscribed];
            if let Ok(Some((seq, payload))) = state.store.read_result(&order_id).await {
                if let Some((last, _)) = following.get_mut(&order_id) {
                    *last = seq;
                }
                out.push(super::result_frame(seq, &payload));
            }
            out
        }
        ClientFrame::Unsubscribe { order_id } => {
            if following.remove(&order_id).is_some() {
                state.hub.release(&order_id, me.id());
            }
            vec![json!({"type": "unsubscribed", "order_id": order_id}).to_string()]
        }
    }
}
