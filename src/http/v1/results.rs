//! `POST /v1/orders/{order_id}/result`: an app publishes an order's result to its browsers.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::push::{parse_result, publish};

/// `POST /v1/orders/{order_id}/result` (API key).
pub async fn publish_handler(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let doc = parse_result(Some(&order_id), &body).map_err(|e| ApiError::Invalid {
        status: StatusCode::BAD_REQUEST,
        code: "invalid",
        message: e.to_string(),
        field: Some(e.field.to_string()),
    })?;
    let seq = publish(&state.results, state.config.result_ttl, &doc).await?;
    state.metrics.results_published.inc();
    Ok((
        StatusCode::OK,
        Json(json!({"order_id": doc.order_id, "status": doc.status, "seq": seq})),
    )
        .into_response())
}
