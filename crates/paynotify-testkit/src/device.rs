//! A device: the line protocol over TCP (or TLS), or the same frames over `/device`.

use std::net::SocketAddr;
use std::time::Duration;

use futures::SinkExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, Lines};
use tokio_tungstenite::tungstenite::Message;

use crate::ws::{next_text, WsStream};

type LineReader = Lines<BufReader<Box<dyn AsyncRead + Send + Unpin>>>;
type LineWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// One device connection: JSON lines over a byte stream, or JSON text frames over a websocket.
pub enum DeviceClient {
    Lines {
        reader: LineReader,
        writer: LineWriter,
    },
    Ws(Box<WsStream>),
}

impl DeviceClient {
    /// Connects over TCP to a device listener at `addr` (with TCP_NODELAY, as a device should:
    /// without it, a second reply written back to back waits for the server's delayed ACK,
    /// about 40 ms), says hello as `id` with `token`, and returns the first frame back.
    pub async fn tcp(addr: SocketAddr, id: &str, token: &str) -> (DeviceClient, Value) {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        DeviceClient::over(stream).hello(id, token).await
    }

    /// The same over `ws://{addr}/device` (`addr` is the node's HTTP address).
    pub async fn ws(addr: SocketAddr, id: &str, token: &str) -> (DeviceClient, Value) {
        DeviceClient::ws_unintroduced(addr)
            .await
            .hello(id, token)
            .await
    }

    /// A `ws://{addr}/device` connection that has not said hello.
    pub async fn ws_unintroduced(addr: SocketAddr) -> DeviceClient {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/device"))
            .await
            .unwrap();
        DeviceClient::Ws(Box::new(ws))
    }

    /// The line protocol over any byte stream the test connected (TLS, say); no hello yet.
    pub fn over(stream: impl AsyncRead + AsyncWrite + Send + Unpin + 'static) -> DeviceClient {
        let (r, w) = tokio::io::split(stream);
        let r: Box<dyn AsyncRead + Send + Unpin> = Box::new(r);
        DeviceClient::Lines {
            reader: BufReader::new(r).lines(),
            writer: Box::new(w),
        }
    }

    /// Says hello as `id` with `token`; the connection and the first frame back (5 s).
    pub async fn hello(mut self, id: &str, token: &str) -> (DeviceClient, Value) {
        self.send(json!({"type": "hello", "device_id": id, "token": token}))
            .await;
        let first = self.recv(Duration::from_secs(5)).await.unwrap();
        (self, first)
    }

    /// A device `id` online over TCP at `addr` with a valid token (its welcome checked).
    pub async fn online(addr: SocketAddr, id: &str) -> DeviceClient {
        let token = crate::mint_token(paynotify::token::Kind::Device, id);
        let (d, welcome) = Self::tcp(addr, id, &token).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        d
    }

    /// Sends one frame; panics if the connection is gone.
    pub async fn send(&mut self, v: Value) {
        self.try_send(v).await.unwrap();
    }

    /// Sends one frame.
    pub async fn try_send(&mut self, v: Value) -> Result<(), String> {
        match self {
            DeviceClient::Lines { writer, .. } => writer
                .write_all(format!("{v}\n").as_bytes())
                .await
                .map_err(|e| e.to_string()),
            DeviceClient::Ws(ws) => ws
                .send(Message::Text(v.to_string().into()))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Sends a raw websocket message (binary garbage, say); panics on a line connection.
    pub async fn send_message(&mut self, m: Message) {
        match self {
            DeviceClient::Ws(ws) => ws.send(m).await.unwrap(),
            DeviceClient::Lines { .. } => panic!("send_message on a line connection"),
        }
    }

    /// The next frame; None on timeout or end of stream.
    pub async fn recv(&mut self, wait: Duration) -> Option<Value> {
        match self {
            DeviceClient::Lines { reader, .. } => {
                match tokio::time::timeout(wait, reader.next_line()).await {
                    Ok(Ok(Some(line))) => Some(serde_json::from_str(&line).unwrap()),
                    _ => None,
                }
            }
            DeviceClient::Ws(ws) => next_text(ws, wait).await,
        }
    }

    /// Answers every call with `{"echo": method, "params": params}` (an error for method
    /// `fail`) until the stream ends.
    pub fn serve_echo(self) -> tokio::task::JoinHandle<()> {
        self.serve(None, |frame| {
            (frame["type"] == "call").then(|| {
                if frame["method"] == "fail" {
                    json!({"type": "reply", "id": frame["id"], "error": "jammed"})
                } else {
                    json!({"type": "reply", "id": frame["id"], "result": {"echo": frame["method"], "params": frame["params"]}})
                }
            })
        })
    }

    /// Hands every frame to `answer` and sends back what it returns, pinging every `ping_every`
    /// if given, until the stream ends or a send fails.
    pub fn serve(
        mut self,
        ping_every: Option<Duration>,
        mut answer: impl FnMut(&Value) -> Option<Value> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ping = ping_every.map(tokio::time::interval);
            loop {
                // Some(frame) or None (the end); a tick pings.
                let got = tokio::select! {
                    frame = self.recv(Duration::from_secs(60)) => Some(frame),
                    _ = async { ping.as_mut().map(|p| p.tick()).unwrap().await }, if ping.is_some() => None,
                };
                let reply = match got {
                    None => json!({"type": "ping"}),
                    Some(None) => return,
                    Some(Some(frame)) => match answer(&frame) {
                        Some(reply) => reply,
                        None => continue,
                    },
                };
                if self.try_send(reply).await.is_err() {
                    return;
                }
            }
        })
    }
}
