//! The public routes of the gateway role: `/ws` (the browser protocol over a websocket), the
//! long-poll `GET /v1/orders/{order_id}/result`, `/paynotify.js`, and `/device` (the device
//! protocol over a websocket). Token-authenticated, no API key.
//!
//! Invariant: every websocket is bounded: frame size, send queue (a follower that falls behind
//! is cut off with close code 1013), write time, and liveness (a ping every interval; no pong by
//! the next one closes the socket). The protocols themselves live in `push::session` and
//! `devices`; this module only carries frames.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, Instrument};

use futures::future::BoxFuture;

use super::error::ApiError;
use crate::devices::link::MessageStream;
use crate::devices::Devices;
use crate::push::hub::Push;
use crate::push::result_frame;
use crate::push::session::{error_frame, Browsers, Reply, Session, MAX_CLIENT_FRAME};

/// Longest long-poll wait.
pub const MAX_WAIT_SECS: u64 = 60;
/// How long one write to a browser may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// State of the gateway routes.
#[derive(Clone)]
pub struct Gateway {
    pub browsers: Browsers,
    pub devices: Devices,
    pub shutdown: CancellationToken,
}

/// The gateway's routes.
pub fn router(state: Gateway) -> axum::Router {
    axum::Router::new()
        .route("/ws", axum::routing::get(browser_socket))
        .route("/v1/orders/{order_id}/result", axum::routing::get(poll))
        .route("/paynotify.js", axum::routing::get(client_js))
        .route("/device", axum::routing::get(device_socket))
        .with_state(state)
}

/// The browser client (`web/paynotify.js`), served as is.
async fn client_js() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../../web/paynotify.js"),
    )
}

/// `GET /ws`: the upgrade, with buffers sized for many idle connections.
async fn browser_socket(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    State(state): State<Gateway>,
) -> Response {
    let allowed = &state.browsers.config.ws_allowed_origins;
    if !allowed.is_empty() {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
                return (
                    StatusCode::FORBIDDEN,
                    Json(json!({"code": "origin_not_allowed", "message": "this Origin may not open /ws (--ws-allowed-origins)"})),
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
            state.browsers.hub.connection(true);
            carry_browser(socket, &state).await;
            state.browsers.hub.connection(false);
        })
}

/// Sends one frame; false when the write failed, took too long, or the follower was cut off
/// meanwhile (a client that stops reading blocks the write, not the rest of the node).
async fn send(socket: &mut WebSocket, kicked: &CancellationToken, text: String) -> bool {
    tokio::select! {
        r = tokio::time::timeout(WRITE_TIMEOUT, socket.send(Message::Text(text.into()))) => matches!(r, Ok(Ok(()))),
        _ = kicked.cancelled() => false,
    }
}

async fn send_all(socket: &mut WebSocket, kicked: &CancellationToken, frames: Vec<String>) -> bool {
    for frame in frames {
        if !send(socket, kicked, frame).await {
            return false;
        }
    }
    true
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

/// Carries one browser's frames between its socket and its [`Session`] until either ends.
async fn carry_browser(mut socket: WebSocket, state: &Gateway) {
    let browsers = &state.browsers;
    let config = &browsers.config;
    let (tx, mut rx) = mpsc::channel::<Arc<Push>>(config.ws_send_queue);
    // Dropped on every way out of this function: its orders are released then.
    let mut session = Session::new(browsers, tx);
    let kicked = session.kicked().clone();
    let mut ping = tokio::time::interval(config.ws_ping_interval);
    ping.tick().await;
    let mut awaiting_pong = false;
    let mut last_seen = Instant::now();
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let Some(Ok(msg)) = incoming else { break };
                last_seen = Instant::now();
                match msg {
                    Message::Text(text) => match session.on_text(browsers, text.as_str()).await {
                        Reply::Frames(frames) => {
                            if !send_all(&mut socket, &kicked, frames).await { break }
                        }
                        Reply::Close(code, reason) => {
                            debug!(reason, "closing a browser connection");
                            close(&mut socket, code, reason).await;
                            break;
                        }
                    },
                    Message::Pong(_) => awaiting_pong = false,
                    Message::Ping(_) => {}
                    Message::Binary(_) => {
                        let frame = error_frame("bad_frame", "binary frames are not accepted; send JSON text", None);
                        if !send(&mut socket, &kicked, frame).await { break }
                    }
                    Message::Close(_) => break,
                }
            }
            push = rx.recv() => {
                let Some(push) = push else { break };
                if let Some(frame) = session.on_push(&push) {
                    if !send(&mut socket, &kicked, frame).await { break }
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
                let now_s = crate::util::now_ms() / 1000;
                if session.has_expired(now_s) {
                    let frames = session.expire(now_s);
                    if !send_all(&mut socket, &kicked, frames).await { break }
                }
            }
            _ = kicked.cancelled() => {
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
}

#[derive(Deserialize)]
struct PollQuery {
    token: Option<String>,
    wait: Option<u64>,
}

/// `GET /v1/orders/{order_id}/result?token=…&wait=30`: the result now if there is one, else the
/// first one within `wait` seconds (204 when none came). For clients without websockets.
async fn poll(
    State(state): State<Gateway>,
    Path(order_id): Path<String>,
    Query(q): Query<PollQuery>,
) -> Result<Response, ApiError> {
    let browsers = &state.browsers;
    crate::delivery::schema::validate_id(&order_id).map_err(|m| ApiError::Invalid {
        status: StatusCode::BAD_REQUEST,
        code: "invalid",
        message: format!("order id {m}"),
        field: Some("order_id".into()),
    })?;
    let token = q.token.unwrap_or_default();
    crate::token::verify_now(
        &browsers.config.token_secrets,
        crate::token::Kind::Order,
        &order_id,
        &token,
    )
    .map_err(|e| ApiError::Invalid {
        status: StatusCode::FORBIDDEN,
        code: e.code(),
        message: e.to_string(),
        field: Some("token".into()),
    })?;
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let found = if wait.is_zero() {
        // Nothing to wait for: the stored result, without a subscription.
        browsers
            .results
            .read(&order_id)
            .await?
            .map(|(seq, payload)| result_frame(seq, &payload))
    } else {
        let (tx, mut rx) = mpsc::channel(4);
        // Follow first, then read the stored result: nothing published falls in between. The
        // guard leaves when this future ends or is dropped (the client went away mid-wait).
        let hub = &browsers.hub;
        let _following = hub.follow(&order_id, hub.subscriber(tx)).await;
        match browsers.results.read(&order_id).await? {
            Some((seq, payload)) => Some(result_frame(seq, &payload)),
            None => match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(push)) => Some(push.frame.to_string()),
                _ => None,
            },
        }
    };
    Ok(match found {
        Some(frame) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            frame,
        )
            .into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// `GET /device`: a device on a websocket, with the same frames and limits as on TCP.
async fn device_socket(ws: WebSocketUpgrade, State(state): State<Gateway>) -> Response {
    ws.read_buffer_size(1024)
        .write_buffer_size(0)
        // Larger than a frame so that an oversized one gets a clear `frame_too_large`.
        .max_message_size(crate::devices::MAX_DEVICE_FRAME * 4)
        .max_frame_size(crate::devices::MAX_DEVICE_FRAME * 4)
        .on_upgrade(move |socket| {
            state
                .devices
                .serve_messages(Box::new(DeviceSocket(socket)), state.shutdown.clone())
                .instrument(info_span!("device_ws"))
        })
}

/// The `/device` websocket as the device protocol's message transport: a text or binary
/// message is one frame; pings and pongs are answered underneath.
struct DeviceSocket(WebSocket);

impl MessageStream for DeviceSocket {
    fn recv(&mut self) -> BoxFuture<'_, Option<Result<Vec<u8>, ()>>> {
        Box::pin(async move {
            loop {
                return match self.0.recv().await {
                    None | Some(Ok(Message::Close(_))) => None,
                    Some(Err(_)) => Some(Err(())),
                    Some(Ok(Message::Text(t))) => Some(Ok(t.as_bytes().to_vec())),
                    Some(Ok(Message::Binary(b))) => Some(Ok(b.to_vec())),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                };
            }
        })
    }

    fn send(&mut self, text: String) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.0.send(Message::Text(text.into())).await.is_ok() })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let frame = CloseFrame {
                code: 1000,
                reason: "".into(),
            };
            let _ = self.0.send(Message::Close(Some(frame))).await;
        })
    }
}
