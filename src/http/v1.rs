//! The `/v1` API (role `api`), behind the API key.
//!
//! Invariant: every route of [`router`] requires a configured bearer key (`auth`; those of
//! [`public_router`] are public), every body is bounded (`MAX_DOCUMENT_BYTES`), every refusal
//! has a stable code (`error`), and every route is in the OpenAPI document (`openapi`).

pub mod dead;
pub mod devices;
pub mod keys;
pub mod merchants;
pub mod notifications;
pub mod openapi;
pub mod results;
pub mod stats;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

use super::error::ApiError;
use super::state::AppState;
use crate::delivery::schema::MAX_DOCUMENT_BYTES;

/// The `/v1` routes behind the API key.
pub fn router(state: AppState) -> Router {
    routes()
        .layer(middleware::from_fn_with_state(
            state.clone(),
            super::auth::require_key,
        ))
        .layer(DefaultBodyLimit::max(MAX_DOCUMENT_BYTES))
        .with_state(state)
}

/// The `/v1` routes with no access check: [`router`] puts the API key in front of them, the
/// console (`http::console`) its session.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/notifications", post(notifications::enqueue))
        .route("/v1/notifications/{id}", get(notifications::show))
        .route("/v1/dead", get(dead::dead_list))
        .route("/v1/dead/replay", post(dead::dead_replay))
        .route("/v1/dead/{id}/replay", post(dead::dead_replay_one))
        .route("/v1/stats", get(stats::stats))
        .route(
            "/v1/orders/{order_id}/result",
            post(results::publish_handler),
        )
        .route("/v1/devices/{id}", get(devices::device_show))
        .route("/v1/devices/{id}/call", post(devices::device_call))
        .route("/v1/devices/{id}/send", post(devices::device_send))
        .route(
            "/v1/merchants",
            post(merchants::create).get(merchants::list),
        )
        .route(
            "/v1/merchants/{id}",
            get(merchants::show)
                .patch(merchants::patch)
                .delete(merchants::delete),
        )
        .route("/v1/merchants/{id}/secret/rotate", post(merchants::rotate))
        .route("/v1/merchants/{id}/secret/reveal", post(merchants::reveal))
}

/// The `/v1` routes anyone may read (no API key): the public signing keys, and the API's
/// OpenAPI document.
pub fn public_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/signing-keys", get(keys::signing_keys))
        .route("/openapi.json", get(openapi::openapi_json))
        .with_state(state)
}

/// A notification or device id from the path, checked like the schema checks ids.
pub(crate) fn check_id(id: &str) -> Result<(), ApiError> {
    crate::delivery::schema::validate_id(id).map_err(|m| ApiError::Invalid {
        status: StatusCode::BAD_REQUEST,
        code: "invalid",
        message: format!("id {m}"),
        field: Some("id".into()),
    })
}
