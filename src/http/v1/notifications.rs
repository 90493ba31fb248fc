//! `POST /v1/notifications` and `GET /v1/notifications/{id}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::check_id;
use crate::delivery::merchants::{parse_notification, EnqueueError};
use crate::delivery::schema::{self as notification, MAX_DOCUMENT_BYTES};
use crate::delivery::store::Enqueued;
use crate::http::error::ApiError;
use crate::http::state::AppState;

pub async fn enqueue(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_body"
        };
        ApiError::new(
            status,
            code,
            format!("{r} (limit {MAX_DOCUMENT_BYTES} bytes)"),
        )
    })?;
    let now = crate::util::now_ms();
    let schema_err = |e: notification::SchemaError| {
        let (status, code) = match e {
            notification::SchemaError::TooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
            _ => (StatusCode::BAD_REQUEST, "invalid"),
        };
        ApiError::Invalid {
            status,
            code,
            message: e.to_string(),
            field: e.field().map(str::to_string),
        }
    };
    let doc = notification::Document::parse(&body).map_err(schema_err)?;
    let n = parse_notification(&state.merchants, doc, now, crate::util::new_id)
        .await
        .map_err(|e| match e {
            EnqueueError::Schema(e) => schema_err(e),
            EnqueueError::Registry(e) => ApiError::from(e),
        })?;
    Ok(match state.notifications.enqueue(&n, now).await? {
        Enqueued::Created { due_ms } => {
            state.metrics.enqueued.inc();
            (
            StatusCode::CREATED,
            Json(json!({"id": n.id, "state": "scheduled", "next_attempt_at": due_ms, "created": true})),
        )
            .into_response()
        }
        Enqueued::Exists { state } => (
            StatusCode::OK,
            Json(json!({"id": n.id, "state": state, "created": false})),
        )
            .into_response(),
        Enqueued::Conflict { state } => {
            return Err(ApiError::Invalid {
                status: StatusCode::CONFLICT,
                code: "conflict",
                message: format!(
                    "notification {:?} exists ({state}) with different content",
                    n.id
                ),
                field: Some("id".into()),
            })
        }
    })
}

pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id(&id)?;
    state
        .notifications
        .show(&id)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no notification {id:?}"),
            )
        })
}
