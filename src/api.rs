//! The HTTP API (role `api`): enqueue, inspect, dead-set operations, stats and health.
//!
//! Invariant: every `/v1` route requires a configured bearer key, compared in constant time;
//! every refusal is JSON `{"code", "message"[, "field"]}` with a stable code.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::notification::{self, MAX_DOCUMENT_BYTES};
use crate::store::{Enqueued, Store, StoreError};

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    pub config: Arc<Config>,
    pub store: Store,
    /// The pub/sub hub, on nodes with the gateway role (readiness includes it).
    pub hub: Option<crate::push::Hub>,
    pub metrics: crate::metrics::Metrics,
    /// Device call router (nodes with the api or gateway role).
    pub devices: Option<crate::device::Devices>,
    /// Cancelled when the node starts draining (`/readyz` answers 503 from then on).
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// An API refusal or failure, rendered as JSON.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Invalid {
        status: StatusCode,
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    #[error("redis is unavailable: {0}")]
    Store(#[from] StoreError),
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Invalid {
                status,
                code,
                message,
                field,
            } => {
                let mut body = json!({"code": code, "message": message});
                if let Some(f) = field {
                    body["field"] = Value::String(f);
                }
                (status, Json(body)).into_response()
            }
            ApiError::Store(e @ StoreError::NotReplicated { .. }) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"code": "not_replicated", "message": e.to_string()})),
            )
                .into_response(),
            ApiError::Store(e) => {
                tracing::warn!(error = %e, "request failed on redis");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"code": "unavailable", "message": format!("redis is unavailable: {e}")})),
                )
                    .into_response()
            }
        }
    }
}

/// `/healthz` and `/readyz`, served by every node.
pub fn health_router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `/metrics`: Prometheus text. Gauges of shared state are read now.
async fn metrics(State(state): State<ApiState>) -> Response {
    let m = &state.metrics;
    if let Some(hub) = &state.hub {
        let s = hub.stats();
        m.ws_subscriptions.set(s.subscriptions as i64);
        m.orders_followed.set(s.orders_followed as i64);
        m.pubsub_connected.set(i64::from(s.pubsub_live));
    }
    if let Some(devices) = &state.devices {
        m.devices_online.set(devices.online_here() as i64);
        m.device_calls_waiting.set(devices.calls_waiting() as i64);
    }
    let now = crate::now_ms();
    let last = m.stats_read_ms.load(std::sync::atomic::Ordering::Relaxed);
    if now - last >= crate::metrics::STATS_EVERY_MS
        && m.stats_read_ms
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
    {
        let stats =
            tokio::time::timeout(std::time::Duration::from_secs(2), state.store.stats(now)).await;
        match stats {
            Ok(Ok(s)) => {
                m.due_backlog.set(s.due_backlog);
                m.intake_lag.set(s.intake_pending);
            }
            _ => {
                m.redis_errors.inc();
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

/// The `/v1` API (role `api`), behind the API key.
pub fn v1_router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/notifications", post(enqueue))
        .route("/v1/notifications/{id}", get(show))
        .route("/v1/dead", get(dead_list))
        .route("/v1/dead/replay", post(dead_replay))
        .route("/v1/dead/{id}/replay", post(dead_replay_one))
        .route("/v1/stats", get(stats))
        .route(
            "/v1/orders/{order_id}/result",
            post(crate::push::publish_handler),
        )
        .route("/v1/devices/{id}", get(device_show))
        .route("/v1/devices/{id}/call", post(device_call))
        .route("/v1/devices/{id}/send", post(device_send))
        .layer(middleware::from_fn_with_state(state.clone(), require_key))
        .layer(DefaultBodyLimit::max(MAX_DOCUMENT_BYTES))
        .with_state(state)
}

/// JSON 404 for unknown paths.
/// Turns every error response that is not JSON yet (refusals made by axum's extractors and
/// routing: bad query strings, wrong methods, oversized bodies) into the API's JSON error shape,
/// keeping the status and the original text as the message.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::NOT_FOUND => "not_found",
        _ => "error",
    };
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_string();
    }
    let mut out = (status, Json(json!({"code": code, "message": message}))).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// True when `presented` equals one of `keys`; every key is compared, in constant time.
pub fn key_matches(keys: &[String], presented: &str) -> bool {
    let mut found = subtle::Choice::from(0u8);
    for key in keys {
        found |= key.as_bytes().ct_eq(presented.as_bytes());
    }
    bool::from(found)
}

async fn require_key(
    State(state): State<ApiState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(key) if key_matches(&state.config.api_keys, key) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the API key is not valid",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the API key as `Authorization: Bearer <key>`",
        )
        .into_response(),
    }
}

async fn ready(State(state): State<ApiState>) -> Response {
    let ping = async {
        let mut conn = state.store.conn().await?;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok::<_, StoreError>(pong)
    };
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down\n").into_response();
    }
    if let Some(hub) = &state.hub {
        if !hub.is_live() {
            return (StatusCode::SERVICE_UNAVAILABLE, "pub/sub: not connected\n").into_response();
        }
    }
    match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "redis: timed out\n").into_response(),
    }
}

async fn enqueue(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_body"
        };
        ApiError::new(
            status,
            code,
            format!("{r} (limit {MAX_DOCUMENT_BYTES} bytes)"),
        )
    })?;
    let now = crate::now_ms();
    let n = notification::parse(&body, now, crate::new_id).map_err(|e| {
        let (status, code) = match e {
            notification::SchemaError::TooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
            _ => (StatusCode::BAD_REQUEST, "invalid"),
        };
        ApiError::Invalid {
            status,
            code,
            message: e.to_string(),
            field: e.field().map(str::to_string),
        }
    })?;
    Ok(match state.store.enqueue(&n, now).await? {
        Enqueued::Created { due_ms } => {
            state.metrics.enqueued.inc();
            (
            StatusCode::CREATED,
            Json(json!({"id": n.id, "state": "scheduled", "next_attempt_at": due_ms, "created": true})),
        )
            .into_response()
        }
        Enqueued::Exists { state } => (
            StatusCode::OK,
            Json(json!({"id": n.id, "state": state, "created": false})),
        )
            .into_response(),
        Enqueued::Conflict { state } => {
            return Err(ApiError::Invalid {
                status: StatusCode::CONFLICT,
                code: "conflict",
                message: format!(
                    "notification {:?} exists ({state}) with different content",
                    n.id
                ),
                field: Some("id".into()),
            })
        }
    })
}

/// Refuses call params or sent data that would not fit in a device frame.
fn check_device_payload(field: &str, value: &Value) -> Result<(), ApiError> {
    let len = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if len > crate::device::MAX_DEVICE_PAYLOAD {
        return Err(ApiError::Invalid {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            message: format!(
                "{field} is {len} bytes as JSON; a device is sent at most {} (its frames are {} bytes)",
                crate::device::MAX_DEVICE_PAYLOAD,
                crate::device::MAX_DEVICE_FRAME
            ),
            field: Some(field.to_string()),
        });
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), ApiError> {
    notification::validate_id(id).map_err(|m| ApiError::Invalid {
        status: StatusCode::BAD_REQUEST,
        code: "invalid",
        message: format!("id {m}"),
        field: Some("id".into()),
    })
}

async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id(&id)?;
    state.store.show(&id).await?.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no notification {id:?}"),
        )
    })
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn dead_list(
    State(state): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let dead = state.store.dead_list(limit).await?;
    Ok(Json(json!({"dead": dead})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

async fn dead_replay(
    State(state): State<ApiState>,
    body: Result<Json<ReplayBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) =
        body.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, "invalid", r.body_text()))?;
    let now = crate::now_ms();
    if body.all {
        let n = state.store.replay_all(now).await?;
        return Ok(Json(json!({"replayed": n})));
    }
    if body.ids.is_empty() || body.ids.len() > 1000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "give {\"ids\": [...]} (1 to 1000) or {\"all\": true}",
        ));
    }
    for id in &body.ids {
        check_id(id)?;
    }
    let replayed = state.store.replay(&body.ids, now).await?;
    Ok(Json(json!({"replayed": replayed.len(), "ids": replayed})))
}

async fn dead_replay_one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id(&id)?;
    let replayed = state
        .store
        .replay(std::slice::from_ref(&id), crate::now_ms())
        .await?;
    if replayed.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_dead",
            format!("{id:?} is not in the dead set"),
        ));
    }
    Ok(Json(json!({"replayed": 1, "ids": replayed})))
}

async fn stats(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let s = state.store.stats(crate::now_ms()).await?;
    Ok(Json(serde_json::to_value(s).unwrap_or(Value::Null)))
}

fn devices(state: &ApiState) -> Result<&crate::device::Devices, ApiError> {
    state.devices.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "devices are not served here",
        )
    })
}

/// `GET /v1/devices/{id}`: online, node, connected since, last seen.
async fn device_show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id(&id)?;
    let p = state.store.device_presence(&id).await?;
    let time = |k: &str| p.get(k).and_then(|v| v.parse::<i64>().ok());
    Ok(Json(match p.get("node") {
        Some(node) => {
            json!({"id": id, "online": true, "node": node, "connected_since": time("since"), "last_seen": time("last_seen")})
        }
        None => json!({"id": id, "online": false}),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallBody {
    method: String,
    #[serde(default)]
    params: Value,
    timeout_ms: Option<u64>,
}

/// `POST /v1/devices/{id}/call`: 200 `{"result"}`, 404 `device_offline`, 504 `device_timeout`,
/// 502 `device_error`.
async fn device_call(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<CallBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let Json(body) =
        body.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, "invalid", r.body_text()))?;
    if body.method.is_empty() || body.method.len() > 64 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "method must be 1 to 64 characters",
        ));
    }
    check_device_payload("params", &body.params)?;
    let timeout_ms = body
        .timeout_ms
        .unwrap_or(crate::device::DEFAULT_CALL_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > crate::device::MAX_CALL_TIMEOUT_MS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!(
                "timeout_ms must be from 1 to {}",
                crate::device::MAX_CALL_TIMEOUT_MS
            ),
        ));
    }
    let outcome = devices(&state)?
        .call(
            &id,
            &body.method,
            body.params,
            std::time::Duration::from_millis(timeout_ms),
        )
        .await?;
    use crate::device::CallOutcome;
    let label = match &outcome {
        CallOutcome::Result(_) => "ok",
        CallOutcome::DeviceError(_) => "device_error",
        CallOutcome::Offline => "offline",
        CallOutcome::Timeout => "timeout",
        CallOutcome::Busy => "busy",
    };
    state
        .metrics
        .device_calls
        .get_or_create(&crate::metrics::Outcome { outcome: label })
        .inc();
    Ok(match outcome {
        CallOutcome::Result(v) => Json(json!({"result": v})).into_response(),
        CallOutcome::DeviceError(e) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({"code": "device_error", "message": e})),
        )
            .into_response(),
        CallOutcome::Offline => ApiError::new(
            StatusCode::NOT_FOUND,
            "device_offline",
            format!("device {id:?} is not connected"),
        )
        .into_response(),
        CallOutcome::Busy => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "device_busy",
            format!(
                "device {id:?} has {} calls in flight already; retry later",
                crate::device::MAX_CALLS_IN_FLIGHT
            ),
        )
        .into_response(),
        CallOutcome::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "device_timeout",
            format!("device {id:?} did not answer within {timeout_ms} ms"),
        )
        .into_response(),
    })
}

/// `POST /v1/devices/{id}/send` with any JSON: delivered as `{"type":"message","data":…}`.
/// 202 once the node holding the device has queued it; 429 when that queue is full.
async fn device_send(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let Json(data) =
        body.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, "invalid", r.body_text()))?;
    check_device_payload("data", &data)?;
    use crate::device::CallOutcome;
    match devices(&state)?.send(&id, data).await? {
        CallOutcome::Result(_) => {
            Ok((StatusCode::ACCEPTED, Json(json!({"id": id, "sent": true}))).into_response())
        }
        CallOutcome::Busy => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "device_busy",
            format!("device {id:?} has a full outgoing queue; retry later"),
        )),
        CallOutcome::Timeout => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "device_timeout",
            format!(
                "the node holding device {id:?} did not confirm within {} s",
                crate::device::SEND_ACK_TIMEOUT.as_secs()
            ),
        )),
        CallOutcome::Offline | CallOutcome::DeviceError(_) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "device_offline",
            format!("device {id:?} is not connected"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_any_configured_key() {
        let keys = vec!["old-key".to_string(), "new-key".to_string()];
        assert!(key_matches(&keys, "old-key"));
        assert!(key_matches(&keys, "new-key"));
        assert!(!key_matches(&keys, "new-ke"));
        assert!(!key_matches(&keys, ""));
        assert!(!key_matches(&[], "anything"));
    }
}
