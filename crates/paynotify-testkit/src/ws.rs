//! A browser on a node's `/ws` websocket.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The websocket stream under a [`WsClient`] (and a websocket [`DeviceClient`](crate::DeviceClient)).
pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A browser's websocket to `/ws`, speaking JSON text frames. It derefs to the stream itself,
/// for tests that send raw frames or watch for the close.
pub struct WsClient {
    ws: WsStream,
}

impl WsClient {
    /// Connects to `ws://{addr}/ws`.
    pub async fn connect(addr: SocketAddr) -> WsClient {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        WsClient { ws }
    }

    /// Wraps a stream the test connected itself (over a socket with a tiny buffer, say).
    pub fn from_stream(ws: WsStream) -> WsClient {
        WsClient { ws }
    }

    /// Sends `v` as a text frame.
    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// The next text frame as JSON (pings and pongs skipped), or None if nothing comes within
    /// `wait` or the stream ends or fails.
    pub async fn next_json(&mut self, wait: Duration) -> Option<Value> {
        next_text(&mut self.ws, wait).await
    }

    /// Subscribes to `order_id` with a valid token and checks the `subscribed` answer (5 s).
    pub async fn subscribe(&mut self, order_id: &str) {
        let token = crate::mint_token(paynotify::token::Kind::Order, order_id);
        self.send_json(json!({"type": "subscribe", "order_id": order_id, "token": token}))
            .await;
        let v = self.next_json(Duration::from_secs(5)).await.unwrap();
        assert_eq!(v, json!({"type": "subscribed", "order_id": order_id}));
    }
}

impl std::ops::Deref for WsClient {
    type Target = WsStream;
    fn deref(&self) -> &WsStream {
        &self.ws
    }
}

impl std::ops::DerefMut for WsClient {
    fn deref_mut(&mut self) -> &mut WsStream {
        &mut self.ws
    }
}

/// The next text frame of `ws` as JSON, skipping pings and pongs; None on timeout, end or error.
pub(crate) async fn next_text(ws: &mut WsStream, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}
