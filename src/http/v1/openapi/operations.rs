//! The rows of the OpenAPI document: one per routed method of `v1.rs`, with its summary, body,
//! query, success answers and error statuses.
//!
//! Invariant: a row lists every status its handler can answer, other than the ones
//! [`super::errors`] adds to every secured route (401, 503) and every route with a body (413).

use utoipa::openapi::path::HttpMethod;

/// A request body: none, or the named component schema (`required` false: may be empty).
#[derive(Clone, Copy)]
pub enum Body {
    None,
    Schema { name: &'static str, required: bool },
}

/// One routed method and what it can answer.
pub struct Op {
    pub method: HttpMethod,
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    /// False for the routes anyone may read (`public_router`).
    pub secured: bool,
    pub body: Body,
    /// Query parameters: name and meaning (all optional).
    pub query: &'static [(&'static str, &'static str)],
    /// Success statuses: status, meaning, the top-level fields of the JSON answer (a `#Name`
    /// entry: every field of component `Name`).
    pub ok: &'static [(u16, &'static str, &'static [&'static str])],
    /// Error statuses and their codes. 401 `unauthorized` and 503 `unavailable` are added to
    /// every secured route, 413 `too_large` to every route with a body (`DefaultBodyLimit`).
    pub errors: &'static [(u16, &'static str)],
}

const fn op(method: HttpMethod, path: &'static str, tag: &'static str) -> Op {
    Op {
        method,
        path,
        tag,
        summary: "",
        secured: true,
        body: Body::None,
        query: &[],
        ok: &[],
        errors: &[],
    }
}

const fn body(name: &'static str) -> Body {
    Body::Schema {
        name,
        required: true,
    }
}

const INVALID: (u16, &str) = (400, "`invalid` (names the `field`)");
const MERCHANT_BROKEN: (u16, &str) = (500, "`merchant_unreadable`");
/// A merchant as the API shows it (`#` names a component whose fields it includes).
const MERCHANT: &[&str] = &[
    "#MerchantSettings",
    "id",
    "allowed_urls",
    "created_at",
    "updated_at",
    "secrets",
];
const NOTIFICATION_FIELDS: &[&str] = &[
    "id",
    "state",
    "url",
    "created_at",
    "next_attempt_at",
    "attempts",
    "stalls",
    "spec",
];
const STATS_FIELDS: &[&str] = &[
    "scheduled",
    "delivering",
    "delivered",
    "dead",
    "due_backlog",
    "oldest_overdue_ms",
    "total_enqueued",
    "total_attempts",
    "total_delivered",
    "total_dead",
    "intake_pending",
];
const DEVICE_FIELDS: &[&str] = &["id", "online", "node", "connected_since", "last_seen"];

use HttpMethod::{Delete, Get, Patch, Post};

/// Every operation of the API, in `v1.rs` order.
pub const OPERATIONS: &[Op] = &[
    Op {
        summary: "Enqueue a notification",
        body: body("NotificationDocument"),
        ok: &[
            (
                201,
                "Created and scheduled",
                &["id", "state", "next_attempt_at", "created"],
            ),
            (
                200,
                "The same notification exists already",
                &["id", "state", "created"],
            ),
        ],
        errors: &[
            (400, "`invalid` (names the `field`), `bad_body`"),
            (409, "`conflict`: the id exists with other content"),
            (413, "`too_large`: over 512 KiB"),
            (503, "`unavailable`, `not_replicated`, `no_encryption_key`"),
            MERCHANT_BROKEN,
        ],
        ..op(Post, "/v1/notifications", "notifications")
    },
    Op {
        summary: "Show a notification, its state and attempts",
        ok: &[(200, "The notification", NOTIFICATION_FIELDS)],
        errors: &[INVALID, (404, "`not_found`")],
        ..op(Get, "/v1/notifications/{id}", "notifications")
    },
    Op {
        summary: "List the dead set",
        query: &[("limit", "Most entries (1 to 1000, default 100)")],
        ok: &[(200, "Dead notifications", &["dead"])],
        errors: &[(400, "`bad_request`: a bad query string")],
        ..op(Get, "/v1/dead", "dead")
    },
    Op {
        summary: "Replay dead notifications: some ids, or all",
        body: body("ReplayBody"),
        ok: &[(200, "Replayed", &["replayed", "ids"])],
        errors: &[INVALID],
        ..op(Post, "/v1/dead/replay", "dead")
    },
    Op {
        summary: "Replay one dead notification",
        ok: &[(200, "Replayed", &["replayed", "ids"])],
        errors: &[INVALID, (404, "`not_dead`: not in the dead set")],
        ..op(Post, "/v1/dead/{id}/replay", "dead")
    },
    Op {
        summary: "Queue and delivery counts",
        ok: &[(200, "Counts across partitions", STATS_FIELDS)],
        ..op(Get, "/v1/stats", "stats")
    },
    Op {
        summary: "Publish an order's result to its browsers",
        body: body("ResultDocument"),
        ok: &[(200, "Published", &["order_id", "status", "seq"])],
        errors: &[INVALID],
        ..op(Post, "/v1/orders/{order_id}/result", "results")
    },
    Op {
        summary: "Whether a device is connected, and where",
        ok: &[(200, "The device's presence", DEVICE_FIELDS)],
        errors: &[INVALID],
        ..op(Get, "/v1/devices/{id}", "devices")
    },
    Op {
        summary: "Call a method on a connected device and wait for its answer",
        body: body("CallBody"),
        ok: &[(200, "The device's answer", &["result"])],
        errors: &[
            INVALID,
            (404, "`device_offline`"),
            (413, "`too_large`: `params` does not fit in a device frame"),
            (429, "`device_busy`: too many calls in flight"),
            (502, "`device_error`: the device answered with an error"),
            (504, "`device_timeout`"),
        ],
        ..op(Post, "/v1/devices/{id}/call", "devices")
    },
    Op {
        summary: "Send any JSON to a connected device (`{\"type\":\"message\",\"data\":...}`)",
        body: body("DeviceMessage"),
        ok: &[(
            202,
            "Queued on the node holding the device",
            &["id", "sent"],
        )],
        errors: &[
            INVALID,
            (404, "`device_offline`"),
            (413, "`too_large`: does not fit in a device frame"),
            (429, "`device_busy`: its outgoing queue is full"),
            (504, "`device_timeout`: its node did not confirm"),
        ],
        ..op(Post, "/v1/devices/{id}/send", "devices")
    },
    Op {
        summary: "Register a merchant (its first secret is shown this once)",
        body: body("NewMerchant"),
        ok: &[(
            201,
            "The merchant, its secret in `secret` (shown this once)",
            MERCHANT,
        )],
        errors: &[
            INVALID,
            (409, "`exists`"),
            (503, "`unavailable`, `no_encryption_key`"),
            MERCHANT_BROKEN,
        ],
        ..op(Post, "/v1/merchants", "merchants")
    },
    Op {
        summary: "List merchants, a page at a time",
        query: &[
            ("after", "The last merchant id of the previous page"),
            ("limit", "Most merchants (1 to 500, default 100)"),
        ],
        ok: &[(200, "A page", &["merchants", "next"])],
        errors: &[INVALID],
        ..op(Get, "/v1/merchants", "merchants")
    },
    Op {
        summary: "Show a merchant with its health and lanes (secret ids only)",
        ok: &[(
            200,
            "The merchant, with `health` (and `health.lanes`)",
            MERCHANT,
        )],
        errors: &[INVALID, (404, "`not_found`"), MERCHANT_BROKEN],
        ..op(Get, "/v1/merchants/{id}", "merchants")
    },
    Op {
        summary: "Change a merchant",
        body: body("MerchantPatch"),
        ok: &[(200, "The merchant", MERCHANT)],
        errors: &[
            INVALID,
            (404, "`not_found`"),
            (409, "`contended`: changed concurrently; retry"),
            MERCHANT_BROKEN,
        ],
        ..op(Patch, "/v1/merchants/{id}", "merchants")
    },
    Op {
        summary: "Delete a merchant",
        ok: &[(204, "Deleted", &[])],
        errors: &[INVALID, (404, "`not_found`")],
        ..op(Delete, "/v1/merchants/{id}", "merchants")
    },
    Op {
        summary: "Rotate a merchant's secret (the new one is shown this once)",
        body: Body::Schema {
            name: "RotateBody",
            required: false,
        },
        ok: &[(200, "The merchant, its new secret in `secret`", MERCHANT)],
        errors: &[
            INVALID,
            (404, "`not_found`"),
            (409, "`contended`"),
            (503, "`unavailable`, `no_encryption_key`"),
            MERCHANT_BROKEN,
        ],
        ..op(Post, "/v1/merchants/{id}/secret/rotate", "merchants")
    },
    Op {
        summary: "Reveal every secret of a merchant with its value",
        ok: &[(200, "The secrets", &["id", "secrets"])],
        errors: &[
            INVALID,
            (404, "`not_found`"),
            (503, "`unavailable`, `no_encryption_key`"),
            MERCHANT_BROKEN,
        ],
        ..op(Post, "/v1/merchants/{id}/secret/reveal", "merchants")
    },
    Op {
        summary: "The public Ed25519 keys that verify `v1a` signatures (no API key)",
        secured: false,
        ok: &[(200, "The keys, newest last", &["keys"])],
        ..op(Get, "/v1/signing-keys", "keys")
    },
    Op {
        summary: "This document (no API key)",
        secured: false,
        ok: &[(
            200,
            "The OpenAPI 3.1 document",
            &["openapi", "info", "paths"],
        )],
        ..op(Get, "/openapi.json", "meta")
    },
];
