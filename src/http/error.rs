//! The API's error shape: every refusal is JSON `{"code", "message"[, "field"]}` with a stable
//! code, including the ones axum's extractors and router make.
//!
//! Invariant: a Redis failure is a 503 `unavailable` (or `not_replicated`) and is logged once
//! here; no handler answers a Redis failure as if it were an empty result.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::redis::StoreError;

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
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
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

/// JSON 404 for unknown paths.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

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
