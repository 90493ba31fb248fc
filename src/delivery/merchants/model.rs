//! A merchant's record: where its notifications may go, what they default to, whether it is
//! disabled, and the ids (never the values) of its signing secrets.
//!
//! Invariant: a [`Merchant`] is valid by construction: it is made only by [`parse_new`] or
//! changed only by [`apply_patch`], which check every field and name the one at fault.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::delivery::schema::{self, Defaults, MerchantRules, SchemaError};

/// Most allowed URL prefixes per merchant.
pub const MAX_ALLOWED_URLS: usize = 16;
/// Longest merchant id.
pub const MAX_MERCHANT_ID_LEN: usize = 64;

/// A signing secret as shown: its id and lifetime, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub id: String,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// One merchant, as stored (JSON) in its Redis record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merchant {
    pub id: String,
    /// Normalized prefixes ([`schema::merchant_prefix`]).
    pub allowed_urls: Vec<String>,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default)]
    pub secrets: Vec<SecretInfo>,
}

impl Merchant {
    /// The rules its notifications are checked and completed with.
    pub fn rules(&self) -> MerchantRules<'_> {
        MerchantRules {
            id: &self.id,
            allowed_urls: &self.allowed_urls,
            defaults: &self.defaults,
        }
    }

    /// The destinations (host:port) its allowed URLs point at, each once: their lanes are the
    /// merchant's lanes.
    pub fn destinations(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .allowed_urls
            .iter()
            .filter_map(|u| url::Url::parse(u).ok())
            .filter_map(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// [`view`](Self::view) with a secret's value, for the one answer that shows it (the call
    /// that made it).
    pub fn view_with_secret(&self, secret: &str) -> Value {
        let mut view = self.view();
        view["secret"] = json!(secret);
        view
    }

    /// The merchant as the API shows it (schedule in seconds, as notifications take it).
    pub fn view(&self) -> Value {
        let d = &self.defaults;
        json!({
            "id": self.id,
            "allowed_urls": self.allowed_urls,
            "schedule": d.schedule.as_ref().map(|s| s.iter().map(|ms| *ms as f64 / 1000.0).collect::<Vec<_>>()),
            "success": d.success.as_ref().map(|b| json!({"body": b})),
            "timeout_ms": d.timeout_ms,
            "headers": d.headers.keys().map(|k| (k.clone(), json!("<redacted>"))).collect::<Map<_, _>>(),
            "disabled": self.disabled,
            "disabled_reason": self.disabled_reason,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "secrets": self.secrets,
        })
    }
}

fn field_err(field: &str, message: impl Into<String>) -> SchemaError {
    SchemaError::Field {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Checks a merchant id: 1 to 64 characters of `A-Z a-z 0-9 . _ : -`.
pub fn validate_merchant_id(id: &str) -> Result<(), String> {
    if id.len() > MAX_MERCHANT_ID_LEN {
        return Err(format!("must be 1 to {MAX_MERCHANT_ID_LEN} characters"));
    }
    schema::validate_id(id)
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>, SchemaError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(SchemaError::NotObject),
        Err(e) => Err(SchemaError::Json(e.to_string())),
    }
}

/// A new merchant from `POST /v1/merchants` (`{"id", "allowed_urls", "schedule", "success",
/// "timeout_ms", "headers", "disabled"}`), without secrets yet.
pub fn parse_new(bytes: &[u8], now_ms: i64) -> Result<Merchant, SchemaError> {
    let mut map = object(bytes)?;
    let id = match map.remove("id") {
        Some(Value::String(id)) => {
            validate_merchant_id(&id).map_err(|m| field_err("id", m))?;
            id
        }
        None | Some(Value::Null) => return Err(field_err("id", "is required")),
        Some(_) => return Err(field_err("id", "must be a string")),
    };
    if !map.contains_key("allowed_urls") {
        return Err(field_err("allowed_urls", "is required"));
    }
    let mut merchant = Merchant {
        id,
        allowed_urls: Vec::new(),
        defaults: Defaults::default(),
        disabled: false,
        disabled_reason: None,
        created_at: now_ms,
        updated_at: now_ms,
        secrets: Vec::new(),
    };
    apply_map(&mut merchant, map, now_ms)?;
    Ok(merchant)
}

/// Applies `PATCH /v1/merchants/{id}`: each field given replaces the stored one; `null` clears
/// a default.
pub fn apply_patch(merchant: &mut Merchant, bytes: &[u8], now_ms: i64) -> Result<(), SchemaError> {
    let map = object(bytes)?;
    if map.contains_key("id") {
        return Err(field_err("id", "cannot be changed; create a new merchant"));
    }
    apply_map(merchant, map, now_ms)
}

fn apply_map(m: &mut Merchant, map: Map<String, Value>, now_ms: i64) -> Result<(), SchemaError> {
    const KNOWN: &[&str] = &[
        "allowed_urls",
        "schedule",
        "success",
        "timeout_ms",
        "headers",
        "disabled",
        "disabled_reason",
    ];
    for (key, value) in map {
        match key.as_str() {
            "allowed_urls" => m.allowed_urls = parse_allowed(value)?,
            "schedule" => {
                m.defaults.schedule = match value {
                    Value::Null => None,
                    v => Some(schema::parse_schedule(Some(v))?),
                }
            }
            "success" => m.defaults.success = schema::parse_success(Some(value))?,
            "timeout_ms" => {
                m.defaults.timeout_ms = match value {
                    Value::Null => None,
                    v => Some(schema::parse_timeout(&v)?),
                }
            }
            "headers" => m.defaults.headers = schema::parse_headers(Some(value))?,
            "disabled" => match value {
                Value::Bool(b) => {
                    m.disabled = b;
                    if !b {
                        m.disabled_reason = None;
                    }
                }
                _ => return Err(field_err("disabled", "must be true or false")),
            },
            "disabled_reason" => match value {
                Value::Null => m.disabled_reason = None,
                Value::String(s) if s.len() <= 512 => m.disabled_reason = Some(s),
                _ => {
                    return Err(field_err(
                        "disabled_reason",
                        "must be a string of at most 512 bytes",
                    ))
                }
            },
            _ => {
                return Err(field_err(
                    &key,
                    format!("unknown field; expected one of id, {}", KNOWN.join(", ")),
                ))
            }
        }
    }
    m.updated_at = now_ms;
    Ok(())
}

fn parse_allowed(value: Value) -> Result<Vec<String>, SchemaError> {
    let Value::Array(items) = value else {
        return Err(field_err("allowed_urls", "must be a list of URL prefixes"));
    };
    if items.is_empty() || items.len() > MAX_ALLOWED_URLS {
        return Err(field_err(
            "allowed_urls",
            format!("must list 1 to {MAX_ALLOWED_URLS} URL prefixes"),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => {
                schema::merchant_prefix(&s).map_err(|e| field_err(&format!("allowed_urls[{i}]"), e))
            }
            _ => Err(field_err(&format!("allowed_urls[{i}]"), "must be a string")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_merchant_is_checked_field_by_field() {
        let m = parse_new(
            br#"{"id":"m1","allowed_urls":["https://M1.example"],"schedule":"standard","success":{"body":"ok"},"timeout_ms":3000,"headers":{"X-Shop":"1"}}"#,
            7,
        )
        .unwrap();
        assert_eq!(m.allowed_urls, vec!["https://m1.example/".to_string()]);
        assert_eq!(m.defaults.schedule.as_ref().map(Vec::len), Some(8));
        assert_eq!(m.defaults.success.as_deref(), Some("ok"));
        assert_eq!(m.view()["headers"]["x-shop"], "<redacted>");
        for (doc, field) in [
            (r#"{"allowed_urls":["https://a.example/"]}"#, "id"),
            (r#"{"id":"m1"}"#, "allowed_urls"),
            (r#"{"id":"m1","allowed_urls":[]}"#, "allowed_urls"),
            (
                r#"{"id":"m1","allowed_urls":["ftp://a/"]}"#,
                "allowed_urls[0]",
            ),
            (
                r#"{"id":"m 1","allowed_urls":["https://a.example/"]}"#,
                "id",
            ),
            (
                r#"{"id":"m1","allowed_urls":["https://a.example/"],"colour":1}"#,
                "colour",
            ),
            (
                r#"{"id":"m1","allowed_urls":["https://a.example/"],"timeout_ms":0}"#,
                "timeout_ms",
            ),
        ] {
            assert_eq!(
                parse_new(doc.as_bytes(), 0).unwrap_err().field(),
                Some(field),
                "{doc}"
            );
        }
        let mut m = m;
        apply_patch(
            &mut m,
            br#"{"schedule":null,"disabled":true,"disabled_reason":"down"}"#,
            9,
        )
        .unwrap();
        assert_eq!(
            (m.defaults.schedule.is_none(), m.disabled, m.updated_at),
            (true, true, 9)
        );
        assert_eq!(
            apply_patch(&mut m, br#"{"id":"m2"}"#, 9)
                .unwrap_err()
                .field(),
            Some("id")
        );
    }
}
