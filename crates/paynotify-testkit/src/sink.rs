//! A recording HTTP server: the merchant end of callbacks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tokio_util::sync::CancellationToken;

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request's path as sent (no query).
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at_ms: i64,
}

#[derive(Default)]
struct SinkState {
    received: Mutex<Vec<Received>>,
    per_body: Mutex<HashMap<Bytes, u32>>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: std::sync::atomic::AtomicUsize,
    peak_in_flight: std::sync::atomic::AtomicUsize,
}

/// Counts one request in flight at the sink while it lives.
struct InFlight(Arc<SinkState>);

impl InFlight {
    fn enter(state: &Arc<SinkState>) -> Self {
        use std::sync::atomic::Ordering;
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A recording HTTP server. Its paths choose the answer:
/// `/ok`, `/status/{code}`, `/body/{text}`, `/sleep/{ms}`, `/redirect`,
/// `/flaky/{n}` (500 for the first n requests with a given body, then 200),
/// `/retry-after/{secs}` (503 with Retry-After).
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<SinkState>,
    _stop: Arc<StopOnDrop>,
}

struct StopOnDrop(CancellationToken);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Sink {
    pub async fn start() -> Sink {
        let state = Arc::new(SinkState::default());
        let app = Router::new()
            .route("/{kind}", post(handle_plain))
            .route("/{kind}/{arg}", post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await
                .ok();
        });
        Sink {
            addr,
            state,
            _stop: Arc::new(StopOnDrop(stop)),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Requests received per body.
    pub fn counts(&self) -> HashMap<Bytes, u32> {
        self.state.per_body.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    /// The most requests this sink was answering at the same time.
    pub fn peak_in_flight(&self) -> usize {
        self.state
            .peak_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts [`peak_in_flight`](Self::peak_in_flight) again from the requests open now.
    pub fn reset_peak(&self) {
        use std::sync::atomic::Ordering;
        let now = self.state.in_flight.load(Ordering::SeqCst);
        self.state.peak_in_flight.store(now, Ordering::SeqCst);
    }
}

async fn handle_plain(
    State(state): State<Arc<SinkState>>,
    Path(kind): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(state, uri, kind, String::new(), headers, body).await
}

async fn handle(
    State(state): State<Arc<SinkState>>,
    Path((kind, arg)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(state, uri, kind, arg, headers, body).await
}

async fn respond(
    state: Arc<SinkState>,
    uri: Uri,
    kind: String,
    arg: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = InFlight::enter(&state);
    let at_ms = paynotify::now_ms();
    let seen = {
        let mut per = state.per_body.lock().unwrap();
        let n = per.entry(body.clone()).or_insert(0);
        *n += 1;
        *n
    };
    state.received.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        headers,
        body,
        at_ms,
    });
    match kind.as_str() {
        "ok" => "ok".into_response(),
        "status" => StatusCode::from_u16(arg.parse().unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        "body" => arg.into_response(),
        "sleep" => {
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(1000))).await;
            "ok".into_response()
        }
        "redirect" => (StatusCode::FOUND, [("location", "/ok")]).into_response(),
        "flaky" => {
            if seen <= arg.parse().unwrap_or(1) {
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            } else {
                "ok".into_response()
            }
        }
        "retry-after" => (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", arg)]).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
