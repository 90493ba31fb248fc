//! `GET /v1/devices/{id}`, `POST /v1/devices/{id}/call` and `POST /v1/devices/{id}/send`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::check_id;
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Refuses call params or sent data that would not fit in a device frame.
fn check_device_payload(field: &str, value: &Value) -> Result<(), ApiError> {
    let len = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if len > crate::devices::MAX_DEVICE_PAYLOAD {
        return Err(ApiError::Invalid {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            message: format!(
                "{field} is {len} bytes as JSON; a device is sent at most {} (its frames are {} bytes)",
                crate::devices::MAX_DEVICE_PAYLOAD,
                crate::devices::MAX_DEVICE_FRAME
            ),
            field: Some(field.to_string()),
        });
    }
    Ok(())
}

/// `GET /v1/devices/{id}`: online, node, connected since, last seen.
pub async fn device_show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id(&id)?;
    Ok(Json(match state.presence.find(&id).await? {
        Some(at) => {
            json!({"id": id, "online": true, "node": at.node, "connected_since": at.since_ms, "last_seen": at.last_seen_ms})
        }
        None => json!({"id": id, "online": false}),
    }))
}

/// A call to a device.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    /// The device's method, 1 to 64 characters.
    #[schema(min_length = 1, max_length = 64)]
    method: String,
    /// Any JSON, as the method's parameters.
    #[serde(default)]
    params: Value,
    /// How long to wait for the answer (1 to 30000; default 3000).
    #[schema(minimum = 1, maximum = 30000)]
    timeout_ms: Option<u64>,
}

/// `POST /v1/devices/{id}/call`: 200 `{"result"}`, 404 `device_offline`, 504 `device_timeout`,
/// 502 `device_error`.
pub async fn device_call(
    State(state): State<AppState>,
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
        .unwrap_or(crate::devices::DEFAULT_CALL_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > crate::devices::MAX_CALL_TIMEOUT_MS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!(
                "timeout_ms must be from 1 to {}",
                crate::devices::MAX_CALL_TIMEOUT_MS
            ),
        ));
    }
    let outcome = state
        .devices
        .call(
            &id,
            &body.method,
            body.params,
            std::time::Duration::from_millis(timeout_ms),
        )
        .await?;
    use crate::devices::CallOutcome;
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
    Ok(call_response(&id, timeout_ms, outcome))
}

/// The HTTP answer to a call's outcome.
fn call_response(id: &str, timeout_ms: u64, outcome: crate::devices::CallOutcome) -> Response {
    use crate::devices::CallOutcome;
    match outcome {
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
                crate::devices::MAX_CALLS_IN_FLIGHT
            ),
        )
        .into_response(),
        CallOutcome::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "device_timeout",
            format!("device {id:?} did not answer within {timeout_ms} ms"),
        )
        .into_response(),
    }
}

/// `POST /v1/devices/{id}/send` with any JSON: delivered as `{"type":"message","data":…}`.
/// 202 once the node holding the device has queued it; 429 when that queue is full.
pub async fn device_send(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let Json(data) =
        body.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, "invalid", r.body_text()))?;
    check_device_payload("data", &data)?;
    use crate::devices::CallOutcome;
    match state.devices.send(&id, data).await? {
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
                crate::devices::SEND_ACK_TIMEOUT.as_secs()
            ),
        )),
        CallOutcome::Offline | CallOutcome::DeviceError(_) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "device_offline",
            format!("device {id:?} is not connected"),
        )),
    }
}
