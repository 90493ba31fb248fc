//! The notification schema, shared by the HTTP API, the intake stream and the CLI.
//!
//! Invariant: whatever path a notification comes in by, it is parsed here into one normalized
//! [`Spec`], serialized deterministically; two enqueues with the same id are the same
//! notification exactly when their normalized specs are byte-equal.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod merchant;

pub use merchant::{normalize_prefix as merchant_prefix, Defaults, Document, MerchantRules};

/// Largest accepted notification document (the JSON as received), in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// Largest request body sent to the merchant, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Longest id.
pub const MAX_ID_LEN: usize = 128;
/// Longest URL.
pub const MAX_URL_LEN: usize = 2048;
/// Most extra headers.
pub const MAX_HEADERS: usize = 32;
/// Longest header value.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;
/// Most attempts in one schedule.
pub const MAX_ATTEMPTS: usize = 32;
/// Longest single delay in a schedule.
pub const MAX_DELAY_MS: u64 = 7 * 24 * 3600 * 1000;
/// Longest per-attempt timeout.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// Default per-attempt timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// How far ahead `deliver_at` may be.
pub const MAX_DELIVER_AHEAD_MS: i64 = 366 * 24 * 3600 * 1000;

/// Headers the sender sets itself; a notification may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// The named schedules (delays in seconds; the first from enqueue, each next from the
/// previous attempt).
pub const PRESETS: &[(&str, &[f64])] = &[
    (
        "alipay",
        &[0.0, 240.0, 600.0, 600.0, 3600.0, 7200.0, 21600.0, 54000.0],
    ),
    (
        "wechatpay",
        &[
            0.0, 15.0, 15.0, 30.0, 180.0, 600.0, 1200.0, 1800.0, 1800.0, 1800.0, 3600.0, 10800.0,
            10800.0, 10800.0, 21600.0, 21600.0,
        ],
    ),
    (
        "standard",
        &[0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
    ),
];

/// The normalized, immutable part of a notification, as stored in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Merchant notify URL (http or https).
    pub url: String,
    /// Request body, byte for byte.
    pub body: String,
    /// True when `body` came as JSON: sent as `application/json`.
    pub json: bool,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Delays in ms: the first from enqueue (or `deliver_at`), each next from the previous attempt.
    pub schedule: Vec<u64>,
    /// Requested first-delivery base time (unix ms), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_at: Option<i64>,
    /// Per-attempt timeout in ms.
    pub timeout_ms: u64,
    /// When set, a 2xx only counts if the trimmed response body equals this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_body: Option<String>,
    /// The merchant it is for (`delivery::merchants`): signed with that merchant's secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant: Option<String>,
}

impl Spec {
    /// Deterministic serialization (struct field order, sorted headers).
    pub fn to_json(&self) -> String {
        // Infallible (string keys, plain values); an empty string would be stored as the
        // idempotency spec, so say so instead of defaulting.
        serde_json::to_string(self).expect("a normalized spec serializes")
    }

    /// The first due time, given the enqueue time.
    pub fn first_due(&self, now_ms: i64) -> i64 {
        self.deliver_at.unwrap_or(now_ms) + self.schedule.first().copied().unwrap_or(0) as i64
    }

    /// Delay after the attempt at `round_index` (0-based) before the next one, if any remains.
    pub fn delay_after(&self, round_index: usize) -> Option<u64> {
        self.schedule.get(round_index + 1).copied()
    }
}

/// A parsed, validated notification ready to enqueue.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// The idempotency key (given, or generated).
    pub id: String,
    pub spec: Spec,
}

/// Why a notification document was refused. Every variant names the offending field.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SchemaError {
    #[error("the document is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("the document must be a JSON object")]
    NotObject,
    #[error("field `{field}`: {message}")]
    Field { field: String, message: String },
}

impl SchemaError {
    /// The field at fault, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            SchemaError::Field { field, .. } => Some(field),
            _ => None,
        }
    }

    pub(crate) fn field_err(field: &str, message: impl Into<String>) -> Self {
        SchemaError::Field {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Checks an id: 1 to 128 characters of `A-Z a-z 0-9 . _ : -`.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("must be 1 to {MAX_ID_LEN} characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err("may contain only letters, digits, '.', '_', ':' and '-'".into());
    }
    Ok(())
}

/// Parses a notification document. `now_ms` bounds `deliver_at`; `make_id` supplies the id
/// when the document has none.
pub fn parse(
    bytes: &[u8],
    now_ms: i64,
    make_id: impl FnOnce() -> String,
) -> Result<NewNotification, SchemaError> {
    Document::parse(bytes)?.into_notification(now_ms, make_id, None)
}

/// The map of a notification document, checked for size and shape.
fn object_of(bytes: &[u8]) -> Result<Map<String, Value>, SchemaError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(SchemaError::TooLarge {
            size: bytes.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| SchemaError::Json(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(SchemaError::NotObject);
    };
    Ok(map)
}

fn from_object(
    mut map: Map<String, Value>,
    now_ms: i64,
    make_id: impl FnOnce() -> String,
    merchant: Option<MerchantRules<'_>>,
) -> Result<NewNotification, SchemaError> {
    const KNOWN: &[&str] = &[
        "id",
        "merchant",
        "url",
        "body",
        "headers",
        "schedule",
        "deliver_at",
        "timeout_ms",
        "success",
    ];
    if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(SchemaError::field_err(
            unknown,
            format!("unknown field; expected one of {}", KNOWN.join(", ")),
        ));
    }
    let id = match map.remove("id") {
        None | Some(Value::Null) => make_id(),
        Some(Value::String(s)) => {
            validate_id(&s).map_err(|m| SchemaError::field_err("id", m))?;
            s
        }
        Some(_) => return Err(SchemaError::field_err("id", "must be a string")),
    };
    let (merchant_id, defaults) = merchant::apply(&mut map, merchant)?;
    let url = parse_url(map.remove("url"))?;
    merchant::check_url(&url, merchant)?;
    let (body, json) = match map.remove("body") {
        None | Some(Value::Null) => (String::new(), false),
        Some(Value::String(s)) => (s, false),
        Some(v) => (v.to_string(), true),
    };
    if body.len() > MAX_BODY_BYTES {
        return Err(SchemaError::field_err(
            "body",
            format!("is {} bytes; the limit is {MAX_BODY_BYTES}", body.len()),
        ));
    }
    let headers = merchant::merge_headers(&defaults, parse_headers(map.remove("headers"))?)?;
    let schedule = match (map.remove("schedule"), &defaults.schedule) {
        (None | Some(Value::Null), Some(schedule)) => schedule.clone(),
        (value, _) => parse_schedule(value)?,
    };
    let deliver_at = parse_deliver_at(map.remove("deliver_at"), now_ms)?;
    let timeout_ms = match map.remove("timeout_ms") {
        None | Some(Value::Null) => defaults.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
        Some(v) => parse_timeout(&v)?,
    };
    let success_body = match map.remove("success") {
        None | Some(Value::Null) => defaults.success.clone(),
        value => parse_success(value)?,
    };
    Ok(NewNotification {
        id,
        spec: Spec {
            url,
            body,
            json,
            headers,
            schedule,
            deliver_at,
            timeout_ms,
            success_body,
            merchant: merchant_id,
        },
    })
}

/// A per-attempt timeout: whole ms from 1 to [`MAX_TIMEOUT_MS`].
pub(crate) fn parse_timeout(v: &Value) -> Result<u64, SchemaError> {
    match v.as_u64() {
        Some(t) if (1..=MAX_TIMEOUT_MS).contains(&t) => Ok(t),
        _ => Err(SchemaError::field_err(
            "timeout_ms",
            format!("must be an integer from 1 to {MAX_TIMEOUT_MS}"),
        )),
    }
}

pub(crate) fn parse_url(value: Option<Value>) -> Result<String, SchemaError> {
    let err = |m: &str| SchemaError::field_err("url", m);
    let s = match value {
        None | Some(Value::Null) => return Err(err("is required")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(err("must be a string")),
    };
    if s.len() > MAX_URL_LEN {
        return Err(err(&format!("is longer than {MAX_URL_LEN} characters")));
    }
    let parsed = url::Url::parse(&s).map_err(|e| err(&format!("is not a valid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(err("must be an http or https URL"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(err("has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(err(
            "must not carry credentials; send them in an Authorization header",
        ));
    }
    Ok(s)
}

pub(crate) fn parse_headers(value: Option<Value>) -> Result<BTreeMap<String, String>, SchemaError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(SchemaError::field_err(
                "headers",
                "must be an object of header name to string value",
            ))
        }
    };
    if map.len() > MAX_HEADERS {
        return Err(SchemaError::field_err(
            "headers",
            format!("has {} entries; the limit is {MAX_HEADERS}", map.len()),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in map {
        let field = format!("headers.{name}");
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(SchemaError::field_err(&field, "is not a valid header name"));
        }
        if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
            return Err(SchemaError::field_err(
                &field,
                "is set by paynotify and cannot be overridden",
            ));
        }
        let Value::String(v) = value else {
            return Err(SchemaError::field_err(&field, "must be a string"));
        };
        if v.len() > MAX_HEADER_VALUE_LEN || http::HeaderValue::from_str(&v).is_err() {
            return Err(SchemaError::field_err(
                &field,
                format!("must be printable text of at most {MAX_HEADER_VALUE_LEN} bytes"),
            ));
        }
        if out.insert(lower, v).is_some() {
            return Err(SchemaError::field_err(&field, "is given twice"));
        }
    }
    Ok(out)
}

/// Resolves a preset name to its delays in ms.
pub fn preset(name: &str) -> Option<Vec<u64>> {
    PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, delays)| delays.iter().map(|s| (s * 1000.0) as u64).collect())
}

pub(crate) fn parse_schedule(value: Option<Value>) -> Result<Vec<u64>, SchemaError> {
    let names = || {
        PRESETS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match value {
        None | Some(Value::Null) => Ok(preset("alipay").unwrap_or_default()),
        Some(Value::String(name)) => preset(&name).ok_or_else(|| {
            SchemaError::field_err(
                "schedule",
                format!(
                    "unknown schedule {name:?}; use one of {} or a list of delays in seconds",
                    names()
                ),
            )
        }),
        Some(Value::Array(items)) => {
            if items.is_empty() || items.len() > MAX_ATTEMPTS {
                return Err(SchemaError::field_err(
                    "schedule",
                    format!("must list 1 to {MAX_ATTEMPTS} delays"),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| match v.as_f64() {
                    Some(s) if s.is_finite() && s >= 0.0 && s * 1000.0 <= MAX_DELAY_MS as f64 => {
                        Ok((s * 1000.0).round() as u64)
                    }
                    _ => Err(SchemaError::field_err(
                        &format!("schedule[{i}]"),
                        format!(
                            "must be a number of seconds from 0 to {}",
                            MAX_DELAY_MS / 1000
                        ),
                    )),
                })
                .collect()
        }
        Some(_) => Err(SchemaError::field_err(
            "schedule",
            format!(
                "must be a preset name ({}) or a list of delays in seconds",
                names()
            ),
        )),
    }
}

fn parse_deliver_at(value: Option<Value>, now_ms: i64) -> Result<Option<i64>, SchemaError> {
    let err = |m: String| SchemaError::field_err("deliver_at", m);
    let ms = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(ms) => ms,
            None => return Err(err("must be whole unix milliseconds".into())),
        },
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(&s)
            .map_err(|e| err(format!("is not an RFC 3339 time: {e}")))?
            .timestamp_millis(),
        Some(_) => return Err(err("must be unix milliseconds or an RFC 3339 time".into())),
    };
    if ms < 100_000_000_000 {
        return Err(err(format!(
            "{ms} is before 1973; deliver_at is unix milliseconds, not seconds"
        )));
    }
    if ms > now_ms + MAX_DELIVER_AHEAD_MS {
        return Err(err("is more than a year ahead".into()));
    }
    Ok(Some(ms))
}

pub(crate) fn parse_success(value: Option<Value>) -> Result<Option<String>, SchemaError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "2xx" => Ok(None),
        Some(Value::Object(mut m)) => {
            let body = m.remove("body");
            if let Some(k) = m.keys().next() {
                return Err(SchemaError::field_err(
                    &format!("success.{k}"),
                    "unknown field; expected `body`",
                ));
            }
            match body {
                Some(Value::String(s)) if s.len() <= 1024 => Ok(Some(s.trim().to_string())),
                _ => Err(SchemaError::field_err(
                    "success.body",
                    "must be a string of at most 1024 bytes",
                )),
            }
        }
        Some(_) => Err(SchemaError::field_err(
            "success",
            "must be \"2xx\" or {\"body\": \"<expected response body>\"}",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn p(json: &str) -> Result<NewNotification, SchemaError> {
        parse(json.as_bytes(), NOW, || "gen".to_string())
    }

    #[test]
    fn defaults_are_alipay_2xx_and_ten_seconds() {
        let n = p(r#"{"url":"https://m.example/notify","body":{"a":1}}"#).unwrap();
        assert_eq!(n.id, "gen");
        assert_eq!(n.spec.schedule, preset("alipay").unwrap());
        assert_eq!(n.spec.schedule.len(), 8);
        assert_eq!(n.spec.timeout_ms, 10_000);
        assert!(n.spec.json);
        assert_eq!(n.spec.body, r#"{"a":1}"#);
        assert_eq!(n.spec.first_due(NOW), NOW);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"body":"x"}"#, "url"),
            (r#"{"url":"ftp://x/"}"#, "url"),
            (r#"{"url":"http://x/","schedule":"daily"}"#, "schedule"),
            (r#"{"url":"http://x/","schedule":[0,-1]}"#, "schedule[1]"),
            (r#"{"url":"http://x/","timeout_ms":0}"#, "timeout_ms"),
            (
                r#"{"url":"http://x/","deliver_at":1700000000}"#,
                "deliver_at",
            ),
            (
                r#"{"url":"http://x/","headers":{"Host":"y"}}"#,
                "headers.Host",
            ),
            (r#"{"url":"http://x/","id":"a b"}"#, "id"),
            (r#"{"url":"http://x/","colour":"red"}"#, "colour"),
            (
                r#"{"url":"http://x/","success":{"status":200}}"#,
                "success.status",
            ),
        ];
        for (doc, field) in cases {
            assert_eq!(p(doc).unwrap_err().field(), Some(field), "{doc}");
        }
        assert!(matches!(p("{"), Err(SchemaError::Json(_))));
        assert!(matches!(p("[]"), Err(SchemaError::NotObject)));
    }

    #[test]
    fn same_content_same_spec_bytes() {
        let a =
            p(r#"{"id":"o1","url":"http://x/","headers":{"B":"1","a":"2"},"schedule":"standard"}"#)
                .unwrap();
        let b = p(r#"{"schedule":[0,5,300,1800,7200,18000,36000,36000],"headers":{"a":"2","b":"1"},"url":"http://x/","id":"o1"}"#).unwrap();
        assert_eq!(a.spec.to_json(), b.spec.to_json());
    }

    #[test]
    fn deliver_at_accepts_rfc3339_and_ms() {
        let a = p(r#"{"url":"http://x/","deliver_at":"2027-01-15T08:00:00Z"}"#).unwrap();
        let b = p(r#"{"url":"http://x/","deliver_at":1800000000000}"#).unwrap();
        assert_eq!(a.spec.deliver_at, Some(1_800_000_000_000));
        assert_eq!(b.spec.deliver_at, Some(1_800_000_000_000));
    }

    #[test]
    fn fractional_schedule_and_success_body() {
        let n = p(r#"{"url":"http://x/","schedule":[0.1,0.25],"success":{"body":" success "}}"#)
            .unwrap();
        assert_eq!(n.spec.schedule, vec![100, 250]);
        assert_eq!(n.spec.first_due(NOW), NOW + 100);
        assert_eq!(n.spec.delay_after(0), Some(250));
        assert_eq!(n.spec.delay_after(1), None);
        assert_eq!(n.spec.success_body.as_deref(), Some("success"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed: u64 = 42;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 33) as u8
                })
                .collect();
            let _ = parse(&bytes, NOW, || "g".into());
        }
    }
}
