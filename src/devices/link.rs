//! A device's connection, whatever carries it: newline-delimited JSON over TCP (plain or TLS),
//! or one JSON frame per message of the `/device` websocket (carried by `http::gateway`, which
//! hands it over as [`MessageStream`]). Same frames, same limits.
//!
//! Invariant: every write is bounded by `WRITE_TIMEOUT`, and reads are cancel-safe.

use futures::future::BoxFuture;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tracing::debug;

use super::frame::{decode_frame, read_frame};
use super::{HELLO_TIMEOUT, WRITE_TIMEOUT};

/// A message-based transport (the `/device` websocket), as the HTTP layer provides it.
pub trait MessageStream: Send {
    /// The next message's bytes; `None` when the peer closed, `Some(Err(()))` on a read error.
    /// Pings and pongs are handled underneath and never returned.
    fn recv(&mut self) -> BoxFuture<'_, Option<Result<Vec<u8>, ()>>>;
    /// Sends one text message; false if the connection is gone.
    fn send(&mut self, text: String) -> BoxFuture<'_, bool>;
    /// Closes normally (best effort).
    fn close(&mut self) -> BoxFuture<'_, ()>;
}

/// A device's connection: newline-delimited JSON over TCP, or one JSON frame per websocket
/// message at `/device`. Same frames, same limits.
pub enum Link {
    Tcp {
        reader: BufReader<Box<dyn AsyncRead + Send + Unpin>>,
        buf: Vec<u8>,
        write: Box<dyn AsyncWrite + Send + Unpin>,
    },
    Messages(Box<dyn MessageStream>),
}

impl Link {
    /// A TCP device connection, after the TLS handshake when the listener has `tls` (which
    /// must finish within the hello deadline); `None` if the handshake fails.
    pub(super) async fn open(
        stream: TcpStream,
        tls: Option<&tokio_rustls::TlsAcceptor>,
    ) -> Option<Link> {
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
    pub(super) async fn recv(&mut self) -> Result<Option<Value>, &'static str> {
        match self {
            Link::Tcp { reader, buf, .. } => read_frame(reader, buf).await,
            Link::Messages(ws) => {
                let bytes = match ws.recv().await {
                    None => return Ok(None),
                    Some(Err(())) => return Err("read_error"),
                    Some(Ok(bytes)) => bytes,
                };
                match decode_frame(&bytes)? {
                    Some(frame) => Ok(Some(frame)),
                    None => Err("bad_frame"),
                }
            }
        }
    }

    /// Writes one frame within the write timeout; false if the connection is gone.
    pub(super) async fn send(&mut self, frame: &Value) -> bool {
        let written = match self {
            Link::Tcp { write, .. } => {
                let mut line = frame.to_string();
                line.push('\n');
                tokio::time::timeout(WRITE_TIMEOUT, write.write_all(line.as_bytes()))
                    .await
                    .map(|r| r.is_ok())
            }
            Link::Messages(ws) => {
                tokio::time::timeout(WRITE_TIMEOUT, ws.send(frame.to_string())).await
            }
        };
        matches!(written, Ok(true))
    }

    pub(super) async fn close(&mut self) {
        match self {
            Link::Tcp { write, .. } => {
                let _ = write.shutdown().await;
            }
            Link::Messages(ws) => {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.close()).await;
            }
        }
    }
}

pub(super) async fn refuse(link: &mut Link, code: &str, message: &str) {
    let _ = link
        .send(&json!({"type": "error", "code": code, "message": message}))
        .await;
    link.close().await;
}
