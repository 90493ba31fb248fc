//! `/v1/merchants`: the merchant registry over HTTP.
//!
//! Invariant: a secret value leaves the node only in the answer to the call that made it
//! (create, rotate) or to the explicit reveal call; every other answer shows secret ids only.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::delivery::merchants::health;
use crate::delivery::merchants::model::{self, validate_merchant_id};
use crate::delivery::merchants::secrets::SecretsError;
use crate::delivery::merchants::MerchantError;
use crate::delivery::schema::SchemaError;
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Most merchants on one page of `GET /v1/merchants`.
const MAX_PAGE: usize = 500;

impl From<SchemaError> for ApiError {
    fn from(e: SchemaError) -> Self {
        ApiError::Invalid {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: e.to_string(),
            field: e.field().map(str::to_string),
        }
    }
}

impl From<MerchantError> for ApiError {
    fn from(e: MerchantError) -> Self {
        let (status, code) = match e {
            MerchantError::Store(s) => return ApiError::Store(s),
            MerchantError::Invalid(s) => return s.into(),
            MerchantError::Exists(_) => (StatusCode::CONFLICT, "exists"),
            MerchantError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            MerchantError::Contended(_) => (StatusCode::CONFLICT, "contended"),
            MerchantError::Secrets(SecretsError::NoKey) => {
                (StatusCode::SERVICE_UNAVAILABLE, "no_encryption_key")
            }
            MerchantError::Secrets(_) | MerchantError::Corrupt(..) => {
                tracing::error!(error = %e, "merchant record cannot be used");
                (StatusCode::INTERNAL_SERVER_ERROR, "merchant_unreadable")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn path_id(id: &str) -> Result<(), ApiError> {
    validate_merchant_id(id).map_err(|m| ApiError::Invalid {
        status: StatusCode::BAD_REQUEST,
        code: "invalid",
        message: format!("merchant id {m}"),
        field: Some("id".into()),
    })
}

/// `POST /v1/merchants`: 201 with the merchant and its first secret (shown this once).
pub async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let merchant = model::parse_new(&body, crate::util::now_ms())?;
    let (merchant, secret) = state.merchants.create(merchant).await?;
    tracing::info!(merchant = %merchant.id, "merchant created");
    let view = merchant.view_with_secret(&secret);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `GET /v1/merchants/{id}`.
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    path_id(&id)?;
    let record = state
        .merchants
        .read(&id)
        .await?
        .ok_or_else(|| MerchantError::NotFound(id.clone()))?;
    let mut view = record.merchant.view();
    let now = crate::util::now_ms();
    let health = health::read(&state.redis, &id, now).await?;
    view["health"] = serde_json::to_value(health).unwrap_or_default();
    let mut lanes = Vec::new();
    for destination in record.merchant.destinations() {
        let lane = crate::delivery::lane::read(&state.redis, &destination, now).await?;
        lanes.push(serde_json::to_value(lane).unwrap_or_default());
    }
    view["health"]["lanes"] = Value::Array(lanes);
    Ok(Json(view))
}

#[derive(Debug, Deserialize)]
pub struct Page {
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// `GET /v1/merchants?after=<id>&limit=N`: `{"merchants": [...], "next": <id or null>}`.
pub async fn list(
    State(state): State<AppState>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    if let Some(after) = &page.after {
        path_id(after)?;
    }
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let (merchants, next) = state.merchants.list(page.after.as_deref(), limit).await?;
    let merchants: Vec<Value> = merchants.iter().map(|m| m.view()).collect();
    Ok(Json(json!({"merchants": merchants, "next": next})))
}

/// `PATCH /v1/merchants/{id}`: changes the fields given.
pub async fn patch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    path_id(&id)?;
    let now = crate::util::now_ms();
    let (merchant, ()) = state
        .merchants
        .update(&id, false, |m, _| {
            model::apply_patch(m, &body, now).map_err(MerchantError::Invalid)
        })
        .await?;
    tracing::info!(merchant = %id, disabled = merchant.disabled, "merchant changed");
    Ok(Json(merchant.view()))
}

/// `DELETE /v1/merchants/{id}`: 204.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    path_id(&id)?;
    if !state.merchants.delete(&id).await? {
        return Err(MerchantError::NotFound(id).into());
    }
    tracing::info!(merchant = %id, "merchant deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/merchants/{id}/secret/rotate` (body optional: `{"grace_s": N}`, default
/// `--secret-rotation-grace`; 0 revokes the old secrets at once).
pub async fn rotate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    path_id(&id)?;
    let mut grace = state.config.secret_rotation_grace;
    if !body.is_empty() {
        let doc: Value =
            serde_json::from_slice(&body).map_err(|e| SchemaError::Json(e.to_string()))?;
        match doc.get("grace_s") {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(s) if s <= 30 * 24 * 3600 => grace = std::time::Duration::from_secs(s),
                _ => {
                    return Err(SchemaError::Field {
                        field: "grace_s".into(),
                        message: "must be whole seconds from 0 to 2592000 (30 days)".into(),
                    }
                    .into())
                }
            },
        }
    }
    let (merchant, secret) = state
        .merchants
        .rotate(&id, grace, crate::util::now_ms())
        .await?;
    tracing::info!(merchant = %id, grace_s = grace.as_secs(), "merchant secret rotated");
    let view = merchant.view_with_secret(&secret);
    Ok(Json(view))
}

/// `POST /v1/merchants/{id}/secret/reveal`: every secret with its value.
pub async fn reveal(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    path_id(&id)?;
    let secrets = state.merchants.reveal(&id).await?;
    tracing::info!(merchant = %id, "merchant secrets revealed");
    Ok(Json(crate::delivery::merchants::secrets::revealed(
        &id, &secrets,
    )))
}
