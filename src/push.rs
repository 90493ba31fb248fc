//! Browser push: an order's result, published once, reaches every browser following that order,
//! whichever node holds its websocket.
//!
//! Invariant: a result is stored and announced by one script with a per-order sequence number;
//! a node subscribes to the order's channel before it reads the stored result, and each
//! subscriber drops sequence numbers it has seen, so a result published before, during or after
//! a subscribe is delivered exactly once. Only nodes with a local subscriber for an order
//! subscribe to its channel.

pub mod hub;
pub mod ws;

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::ApiError;
use crate::notification::validate_id;
use crate::store::Store;

pub use hub::{Hub, HubStats};

/// Longest `status`.
pub const MAX_STATUS_LEN: usize = 64;
/// Largest `data` (serialized).
pub const MAX_DATA_BYTES: usize = 16 * 1024;
/// Largest result document (its `data` plus the other fields, with room for JSON whitespace).
pub const MAX_RESULT_BYTES: usize = 4 * MAX_DATA_BYTES;
/// Longest long-poll wait.
pub const MAX_WAIT_SECS: u64 = 60;

/// A result to publish for an order.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultDoc {
    pub order_id: String,
    pub status: String,
    pub data: Value,
}

/// Why a result document was refused (names the field).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct ResultError {
    pub field: &'static str,
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> ResultError {
    ResultError {
        field,
        message: message.into(),
    }
}

/// Parses `{"order_id"?, "status", "data"?}`; `order_id` comes from the path when given there.
pub fn parse_result(order_id: Option<&str>, bytes: &[u8]) -> Result<ResultDoc, ResultError> {
    // Refuse a document that cannot fit before parsing it (data is at most MAX_DATA_BYTES).
    if bytes.len() > MAX_RESULT_BYTES {
        return Err(err(
            "body",
            format!("is {} bytes; at most {MAX_RESULT_BYTES}", bytes.len()),
        ));
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| err("body", format!("invalid JSON: {e}")))?;
    let Value::Object(mut map) = value else {
        return Err(err("body", "must be a JSON object"));
    };
    let order_id = match (order_id, map.remove("order_id")) {
        (Some(id), None) => id.to_string(),
        (Some(id), Some(Value::String(body_id))) if body_id == id => id.to_string(),
        (Some(_), Some(_)) => return Err(err("order_id", "differs from the order id in the path")),
        (None, Some(Value::String(id))) => id,
        (None, Some(_)) => return Err(err("order_id", "must be a string")),
        (None, None) => return Err(err("order_id", "is required")),
    };
    validate_id(&order_id).map_err(|m| err("order_id", m))?;
    let status = match map.remove("status") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_STATUS_LEN => s,
        _ => {
            return Err(err(
                "status",
                format!("is required: a string of 1 to {MAX_STATUS_LEN} characters"),
            ))
        }
    };
    let data = match map.remove("data") {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(err("data", "must be a JSON object")),
    };
    if data.to_string().len() > MAX_DATA_BYTES {
        return Err(err(
            "data",
            format!("is larger than {MAX_DATA_BYTES} bytes"),
        ));
    }
    if let Some(k) = map.keys().next() {
        return Err(ResultError {
            field: "body",
            message: format!("unknown field `{k}`; expected order_id, status, data"),
        });
    }
    Ok(ResultDoc {
        order_id,
        status,
        data,
    })
}

/// The stored and published form of a result.
pub fn payload(doc: &ResultDoc, now_ms: i64) -> String {
    json!({"order_id": doc.order_id, "status": doc.status, "data": doc.data, "published_at": now_ms})
        .to_string()
}

/// The websocket frame for a stored payload: `{"type":"result","seq":N, ...payload}`.
pub fn result_frame(seq: u64, payload: &str) -> String {
    match payload.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => {
            format!("{{\"type\":\"result\",\"seq\":{seq}}}")
        }
        Some(rest) => format!("{{\"type\":\"result\",\"seq\":{seq},{rest}"),
        None => format!("{{\"type\":\"result\",\"seq\":{seq}}}"),
    }
}

/// Publishes a result; returns its sequence number.
pub async fn publish(
    store: &Store,
    ttl: Duration,
    doc: &ResultDoc,
) -> Result<u64, crate::store::StoreError> {
    store
        .publish_result(
            &doc.order_id,
            &payload(doc, crate::now_ms()),
            ttl.as_secs().max(1),
        )
        .await
}

/// `POST /v1/orders/{order_id}/result` (API key).
pub async fn publish_handler(
    State(state): State<crate::api::ApiState>,
    Path(order_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let doc = parse_result(Some(&order_id), &body).map_err(|e| ApiError::Invalid {
        status: StatusCode::BAD_REQUEST,
        code: "invalid",
        message: e.to_string(),
        field: Some(e.field.to_string()),
    })?;
    let seq = publish(&state.store, state.config.result_ttl, &doc).await?;
    state.metrics.results_published.inc();
    Ok((
        StatusCode::OK,
        Json(json!({"order_id": doc.order_id, "status": doc.status, "seq": seq})),
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct PollQuery {
    token: Option<String>,
    wait: Option<u64>,
}

/// `GET /v1/orders/{order_id}/result?token=…&wait=30`: the result now if there is one, else the
/// first one within `wait` seconds (204 when none came). For clients without websockets.
pub async fn poll_handler(
    State(state): State<ws::GatewayState>,
    Path(order_id): Path<String>,
    Query(q): Query<PollQuery>,
) -> Result<Response, ApiError> {
    validate_id(&order_id).map_err(|m| ApiError::Invalid {
        status: StatusCode::BAD_REQUEST,
        code: "invalid",
        message: format!("order id {m}"),
        field: Some("order_id".into()),
    })?;
    let token = q.token.unwrap_or_default();
    crate::token::verify_now(
        &state.config.token_secrets,
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
        state
            .store
            .read_result(&order_id)
            .await?
            .map(|(seq, payload)| result_frame(seq, &payload))
    } else {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        // Follow first, then read the stored result: nothing published falls in between. The
        // guard leaves when this future ends or is dropped (the client went away mid-wait).
        let _following = state.hub.follow(&order_id, state.hub.subscriber(tx)).await;
        match state.store.read_result(&order_id).await? {
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
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            frame,
        )
            .into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_parse_with_field_errors() {
        let ok = parse_result(
            Some("o-1"),
            br#"{"status":"paid","data":{"amount":"9.99"}}"#,
        )
        .unwrap();
        assert_eq!(ok.order_id, "o-1");
        assert_eq!(ok.data["amount"], "9.99");
        let ok = parse_result(None, br#"{"order_id":"o-2","status":"paid"}"#).unwrap();
        assert_eq!(ok.data, json!({}));
        for (path, doc, field) in [
            (Some("o"), &b"{"[..], "body"),
            (Some("o"), br#"{"data":{}}"#, "status"),
            (Some("o"), br#"{"status":"paid","data":[1]}"#, "data"),
            (
                Some("o"),
                br#"{"status":"paid","order_id":"p"}"#,
                "order_id",
            ),
            (None, br#"{"status":"paid"}"#, "order_id"),
            (None, br#"{"order_id":"a b","status":"paid"}"#, "order_id"),
            (Some("o"), br#"{"status":"paid","extra":1}"#, "body"),
        ] {
            assert_eq!(parse_result(path, doc).unwrap_err().field, field);
        }
    }

    #[test]
    fn frames_carry_type_and_seq() {
        let p = payload(
            &ResultDoc {
                order_id: "o".into(),
                status: "paid".into(),
                data: json!({"a": 1}),
            },
            5,
        );
        let f: Value = serde_json::from_str(&result_frame(3, &p)).unwrap();
        assert_eq!(f["type"], "result");
        assert_eq!(f["seq"], 3);
        assert_eq!(f["order_id"], "o");
        assert_eq!(f["status"], "paid");
        assert_eq!(f["data"]["a"], 1);
    }
}
