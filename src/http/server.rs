//! The HTTP/1.1 server loop (in place of `axum::serve`, which has no knobs for these): a
//! deadline for request headers, a cap on open connections, an optional cap per client
//! address, and limits on the request head ([`head_limits`]). The device TCP listener shares
//! the connection caps ([`ConnLimits`]).
//!
//! Request heads are checked twice: [`head_limits`] refuses, with a JSON error naming the
//! limit, any request over [`MAX_URI_BYTES`], [`MAX_REQUEST_HEADERS`] or
//! [`MAX_HEADER_BYTES`]; hyper's own parser stops at twice those (and answers a bodiless
//! 431/414), so a head far over the limits is never buffered whole.
//!
//! Invariant: every accepted connection holds a [`ConnGuard`] for as long as its socket lives
//! (an upgraded websocket keeps it too, since the guard travels inside the I/O object), so the
//! caps count what is really open. A refused connection gets a one-line JSON 503 or 429 and is
//! closed; nothing is queued.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::limits::{ConnGuard, ConnLimits, Refused};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

/// Longest request target (path and query) accepted: 414 `uri_too_long` beyond it.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most request header fields accepted: 431 `too_many_headers` beyond it.
pub const MAX_REQUEST_HEADERS: usize = 64;
/// Most bytes of header names and values together: 431 `headers_too_large` beyond it.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Refuses requests whose head is over the limits above, before any handler runs.
pub async fn head_limits(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::StatusCode;
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    let refusal = if uri_len > MAX_URI_BYTES {
        Some((
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {uri_len} bytes; the limit is {MAX_URI_BYTES}"),
        ))
    } else if req.headers().len() > MAX_REQUEST_HEADERS {
        Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too_many_headers",
            format!(
                "the request has {} header fields; the limit is {MAX_REQUEST_HEADERS}",
                req.headers().len()
            ),
        ))
    } else if header_bytes > MAX_HEADER_BYTES {
        Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request headers are {header_bytes} bytes; the limit is {MAX_HEADER_BYTES}"
            ),
        ))
    } else {
        None
    };
    match refusal {
        Some((status, code, message)) => {
            use axum::response::IntoResponse;
            let mut response = (
                status,
                axum::Json(serde_json::json!({"code": code, "message": message})),
            )
                .into_response();
            // The rest of an oversized head may still be arriving: do not reuse the connection.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
        None => next.run(req).await,
    }
}

/// A TCP stream that holds its [`ConnGuard`] for its whole life.
pub struct Guarded {
    stream: TcpStream,
    _guard: ConnGuard,
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Tells a refused HTTP client why, in one response, and closes.
async fn refuse_http(mut stream: TcpStream, why: Refused) {
    use tokio::io::AsyncWriteExt;
    let (code, message) = why.describe();
    let status = match why {
        Refused::Full => "503 Service Unavailable",
        Refused::PerIp => "429 Too Many Requests",
    };
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(response.as_bytes()),
    )
    .await;
    let _ = stream.shutdown().await;
}

/// Serves `app` on `listener` until `stop`, then lets open requests finish (at most `grace`).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    header_timeout: Duration,
    stop: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer): (TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
            Some(_) = connections.join_next() => continue,
        };
        let guard = match limits.admit(peer.ip()) {
            Ok(g) => g,
            Err(why) => {
                debug!(%peer, ?why, "connection refused");
                connections.spawn(refuse_http(stream, why));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(Guarded {
            stream,
            _guard: guard,
        });
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(
            async move {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .max_headers(MAX_REQUEST_HEADERS * 2)
                    .max_buf_size(4 * (MAX_URI_BYTES + MAX_HEADER_BYTES));
                let conn = builder.serve_connection(io, service).with_upgrades();
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.as_mut().await
                    }
                };
                if let Err(e) = result {
                    debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(info_span!("conn", %peer)),
        );
    }
    drop(listener);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open = connections.len(),
            "HTTP connections still open after the grace period; closing them"
        );
        connections.shutdown().await;
    }
    Ok(())
}
