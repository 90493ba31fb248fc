//! `GET /v1/dead`, `POST /v1/dead/replay` and `POST /v1/dead/{id}/replay`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::check_id;
use crate::http::error::ApiError;
use crate::http::state::AppState;

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
}

pub async fn dead_list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let dead = state.notifications.dead_list(limit).await?;
    Ok(Json(json!({"dead": dead})))
}

/// `{"ids": [...]}` (1 to 1000) or `{"all": true}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// Dead notification ids to replay.
    #[serde(default)]
    ids: Vec<String>,
    /// Replay the whole dead set.
    #[serde(default)]
    all: bool,
}

pub async fn dead_replay(
    State(state): State<AppState>,
    body: Result<Json<ReplayBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) =
        body.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, "invalid", r.body_text()))?;
    let now = crate::util::now_ms();
    if body.all {
        let n = state.notifications.replay_all(now).await?;
        return Ok(Json(json!({"replayed": n})));
    }
    if body.ids.is_empty() || body.ids.len() > 1000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "give {\"ids\": [...]} (1 to 1000) or {\"all\": true}",
        ));
    }
    for id in &body.ids {
        check_id(id)?;
    }
    let replayed = state.notifications.replay(&body.ids, now).await?;
    Ok(Json(json!({"replayed": replayed.len(), "ids": replayed})))
}

pub async fn dead_replay_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id(&id)?;
    let replayed = state
        .notifications
        .replay(std::slice::from_ref(&id), crate::util::now_ms())
        .await?;
    if replayed.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_dead",
            format!("{id:?} is not in the dead set"),
        ));
    }
    Ok(Json(json!({"replayed": 1, "ids": replayed})))
}
