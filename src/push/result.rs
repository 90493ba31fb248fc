//! An order's result: the document apps publish, its stored payload and the frame browsers get.
//!
//! Invariant: a result is validated here whatever path it comes by (HTTP, intake, CLI), and
//! the frame a browser gets is the stored payload with its sequence number in front.

use std::time::Duration;

use serde_json::{json, Value};

use super::store::Results;
use crate::delivery::schema::validate_id;
use crate::redis::StoreError;

/// Longest `status`.
pub const MAX_STATUS_LEN: usize = 64;
/// Largest `data` (serialized).
pub const MAX_DATA_BYTES: usize = 16 * 1024;
/// Largest result document (its `data` plus the other fields, with room for JSON whitespace).
pub const MAX_RESULT_BYTES: usize = 4 * MAX_DATA_BYTES;
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
pub async fn publish(results: &Results, ttl: Duration, doc: &ResultDoc) -> Result<u64, StoreError> {
    results
        .publish(
            &doc.order_id,
            &payload(doc, crate::util::now_ms()),
            ttl.as_secs().max(1),
        )
        .await
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
