//! The JSON request bodies that the handlers parse by hand (a `serde_json::Map` checked field by
//! field in `delivery::schema`, `delivery::merchants::model` and `push::result`), as ToSchema
//! types for the OpenAPI document only. The handlers never deserialize into them.
//!
//! Invariant: each type names exactly the fields its parser accepts; the unit tests in
//! `openapi.rs` compare them with the parsers' own "unknown field; expected …" lists.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

/// An error answer: every refusal of the API has this shape.
#[derive(Deserialize, ToSchema)]
#[schema(as = ApiError)]
pub struct ApiErrorBody {
    /// A stable machine-readable code (`invalid`, `unauthorized`, `not_found`, `conflict`,
    /// `too_large`, `unavailable`, `not_replicated`, ...).
    pub code: String,
    /// Text for people; not stable.
    pub message: String,
    /// The field at fault (`schedule[1]`, `headers.Host`, `id`), when there is one.
    #[serde(default)]
    pub field: Option<String>,
}

/// A notification to deliver (`POST /v1/notifications`; also the intake stream's and the CLI's
/// document).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationDocument {
    /// Idempotency key: the same id twice is one notification; the same id with other content
    /// is refused (409). Default: a new UUIDv7.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub id: Option<String>,
    /// The merchant's notify URL (http or https, no credentials in it).
    #[schema(max_length = 2048, format = "uri")]
    pub url: String,
    /// A string goes out byte for byte; any other JSON is sent as `application/json`.
    /// At most 256 KiB. Default: empty.
    #[serde(default)]
    pub body: Value,
    /// Extra request headers (at most 32); `Host`, `Content-Length`, hop-by-hop and
    /// `webhook-*` are refused.
    pub headers: Option<BTreeMap<String, String>>,
    /// A preset name or delays in seconds. Default: `alipay` (or the merchant's).
    pub schedule: Option<Schedule>,
    /// The base time of the first delay: unix milliseconds or RFC 3339. Default: now.
    pub deliver_at: Option<DeliverAt>,
    /// Per-attempt timeout in ms (connect + response). Default: 10000 (or the merchant's).
    #[schema(minimum = 1, maximum = 60000)]
    pub timeout_ms: Option<u64>,
    /// What counts as delivered. Default: any 2xx (or the merchant's).
    pub success: Option<Success>,
    /// A registered merchant id: signs with its secrets, checks `url` against its
    /// `allowed_urls`, fills in its defaults.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$")]
    pub merchant: Option<String>,
}

/// The delays before each attempt: the first from enqueue (or `deliver_at`), each next one
/// from the end of the previous attempt.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Schedule {
    Preset(Preset),
    /// Delays in seconds (fractions allowed), 1 to 32 of them, each at most 604800.
    Delays(Vec<f64>),
}

/// A named schedule.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Alipay,
    Wechatpay,
    Standard,
}

/// A time: unix milliseconds, or an RFC 3339 string.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DeliverAt {
    UnixMs(i64),
    #[schema(format = DateTime)]
    Rfc3339(String),
}

/// `"2xx"` (any 2xx), or `{"body": "..."}` (a 2xx whose trimmed response body equals it).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Success {
    Body(SuccessBody),
    Any2xx(Any2xx),
}

/// Any 2xx answer delivers.
#[derive(Deserialize, ToSchema)]
pub enum Any2xx {
    #[serde(rename = "2xx")]
    Any2xx,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuccessBody {
    /// The expected response body, at most 1024 bytes.
    #[schema(max_length = 1024)]
    pub body: String,
}

/// A merchant to register (`POST /v1/merchants`); unknown fields are refused.
#[derive(Deserialize, ToSchema)]
pub struct NewMerchant {
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$")]
    pub id: String,
    /// URL prefixes its notifications' `url` must start with (1 to 32, compared in normal form).
    pub allowed_urls: Vec<String>,
    #[serde(flatten)]
    pub settings: MerchantSettings,
}

/// A change to a merchant (`PATCH /v1/merchants/{id}`): each field given replaces the stored
/// one; `null` clears a default. The id cannot change; unknown fields are refused.
#[derive(Deserialize, ToSchema)]
pub struct MerchantPatch {
    pub allowed_urls: Option<Vec<String>>,
    #[serde(flatten)]
    pub settings: MerchantSettings,
}

/// A merchant's defaults for its notifications, and whether it is disabled (all optional).
#[derive(Deserialize, ToSchema)]
pub struct MerchantSettings {
    /// Default schedule of its notifications.
    pub schedule: Option<Schedule>,
    /// Default success rule.
    pub success: Option<Success>,
    /// Default per-attempt timeout in ms.
    #[schema(minimum = 1, maximum = 60000)]
    pub timeout_ms: Option<u64>,
    /// Headers sent with each of its notifications (a notification's own header wins); shown
    /// as `<redacted>` values.
    pub headers: Option<BTreeMap<String, String>>,
    /// A disabled merchant's notifications wait instead of being sent.
    pub disabled: Option<bool>,
    #[schema(max_length = 512)]
    pub disabled_reason: Option<String>,
}

/// Optional body of `POST /v1/merchants/{id}/secret/rotate`.
#[derive(Deserialize, ToSchema)]
pub struct RotateBody {
    /// How long the old secrets keep signing, in seconds (0 revokes them at once; at most
    /// 2592000). Default: `--secret-rotation-grace`.
    #[schema(minimum = 0, maximum = 2592000)]
    pub grace_s: Option<u64>,
}

/// An order's result, published to its browsers (`POST /v1/orders/{order_id}/result`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultDocument {
    /// Must equal the order id in the path when given.
    pub order_id: Option<String>,
    /// 1 to 64 characters, e.g. `paid`.
    #[schema(min_length = 1, max_length = 64)]
    pub status: String,
    /// Any JSON object, at most 16 KiB. Default: `{}`.
    pub data: Option<BTreeMap<String, Value>>,
}

/// Any JSON value; the device receives `{"type": "message", "data": <this>}`.
#[derive(Deserialize, ToSchema)]
pub struct DeviceMessage(pub Value);
