//! `GET /v1/stats`.

use axum::extract::State;
use axum::Json;
use serde_json::Value;

use crate::http::error::ApiError;
use crate::http::state::AppState;

pub async fn stats(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let s = state.notifications.stats(crate::util::now_ms()).await?;
    Ok(Json(serde_json::to_value(s).unwrap_or(Value::Null)))
}
