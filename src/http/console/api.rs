//! The console's own JSON routes under `/console/api` (the `/v1` routes are there too, see
//! `http::console`): the session, the overview, search, the dead grouped by error, merchants
//! with their health, a test notification, an order's stored result and the audit log.
//!
//! Invariant: every handler here reads through the same domain calls as `/v1` and the CLI
//! (`delivery`, `ops`, `push`); none writes Redis except through them.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::session::Viewer;
use super::Console;
use crate::delivery::meta::State as NState;
use crate::delivery::search::{Cursor, Query as SearchQuery};
use crate::http::error::ApiError;

pub fn routes() -> Router<Console> {
    Router::new()
        .route("/session", get(session))
        .route("/logout", post(logout))
        .route("/overview", get(overview))
        .route("/search", get(search))
        .route("/dead/groups", get(dead_groups))
        .route("/dead/replay-merchant", post(replay_merchant))
        .route("/merchants", get(merchants))
        .route("/merchants/{id}/test", post(test_notification))
        .route("/orders/{order_id}/result", get(order_result))
        .route("/audit", get(audit_log))
        .route("/live", get(super::live::live))
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        status: StatusCode::BAD_REQUEST,
        code: "invalid",
        message: message.into(),
        field: Some(field.to_string()),
    }
}

/// `GET /console/api/session`: who is signed in, with what rights, and the CSRF token.
async fn session(State(c): State<Console>, Extension(viewer): Extension<Viewer>) -> Json<Value> {
    Json(json!({
        "who": viewer.who,
        "role": viewer.role,
        "csrf": viewer.csrf,
        "expires_at": viewer.expires_at,
        "node": c.app.config.node_id,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// `POST /console/api/logout`: ends the session in this browser.
async fn logout(State(c): State<Console>) -> Response {
    (
        [(header::SET_COOKIE, c.sessions.clear_cookie())],
        Json(json!({"signed_out": true})),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct OverviewQuery {
    range: Option<String>,
}

/// The minutes a chart range covers.
pub fn range_minutes(range: Option<&str>) -> Result<usize, ApiError> {
    match range.unwrap_or("hour") {
        "hour" => Ok(60),
        "day" => Ok(1440),
        other => Err(invalid(
            "range",
            format!("range must be hour or day, not {other:?}"),
        )),
    }
}

/// The overview: counts, backlog, attempts per minute and the nodes alive.
pub async fn overview_of(c: &Console, minutes: usize) -> Result<Value, ApiError> {
    let now = crate::util::now_ms();
    let (stats, chart, nodes) = tokio::try_join!(
        c.app.notifications.stats(now),
        c.app.notifications.attempts_per_minute(now, minutes),
        crate::ops::nodes::alive(&c.app.redis, now),
    )?;
    Ok(json!({"now": now, "stats": stats, "chart": chart, "nodes": nodes}))
}

async fn overview(
    State(c): State<Console>,
    Query(q): Query<OverviewQuery>,
) -> Result<Json<Value>, ApiError> {
    let minutes = range_minutes(q.range.as_deref())?;
    Ok(Json(overview_of(&c, minutes).await?))
}

#[derive(Deserialize, Default)]
pub struct SearchParams {
    q: Option<String>,
    state: Option<String>,
    merchant: Option<String>,
    reason: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    after: Option<String>,
    limit: Option<usize>,
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn parse_state(s: Option<&str>) -> Result<Option<NState>, ApiError> {
    Ok(match s.unwrap_or("") {
        "" | "any" => None,
        "scheduled" => Some(NState::Scheduled),
        "delivering" => Some(NState::Delivering),
        "delivered" => Some(NState::Delivered),
        "dead" => Some(NState::Dead),
        other => {
            return Err(invalid(
                "state",
                format!(
                    "state must be any, scheduled, delivering, delivered or dead, not {other:?}"
                ),
            ))
        }
    })
}

/// `GET /console/api/search`: a page of notifications, newest first; `q` that is a stored
/// notification's id comes first as `exact`.
async fn search(
    State(c): State<Console>,
    Query(p): Query<SearchParams>,
) -> Result<Json<Value>, ApiError> {
    let text = nonempty(&p.q);
    if text.as_ref().is_some_and(|t| t.len() > 256) {
        return Err(invalid("q", "q is at most 256 characters"));
    }
    let after = match nonempty(&p.after) {
        Some(a) => Some(Cursor::decode(&a).ok_or_else(|| invalid("after", "not a cursor"))?),
        None => None,
    };
    let query = SearchQuery {
        state: parse_state(p.state.as_deref())?,
        merchant: nonempty(&p.merchant),
        reason: nonempty(&p.reason),
        text: text.clone(),
        from_ms: p.from,
        to_ms: p.to,
        after: after.clone(),
        limit: p.limit.unwrap_or(50),
    };
    let exact = match (&text, &after) {
        (Some(t), None) if crate::delivery::schema::validate_id(t).is_ok() => {
            c.app.notifications.show(t).await?
        }
        _ => None,
    };
    let page = c.app.notifications.search(&query).await?;
    Ok(Json(json!({
        "exact": exact,
        "hits": page.hits,
        "next": page.next,
        "scanned": page.scanned,
    })))
}

async fn dead_groups(State(c): State<Console>) -> Result<Json<Value>, ApiError> {
    let groups = c.app.notifications.dead_groups().await?;
    Ok(Json(serde_json::to_value(groups).unwrap_or_default()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantBody {
    merchant: String,
}

/// `POST /console/api/dead/replay-merchant {"merchant"}`: replays all of one merchant's dead.
async fn replay_merchant(
    State(c): State<Console>,
    body: Result<Json<MerchantBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) =
        body.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, "invalid", r.body_text()))?;
    crate::delivery::merchants::model::validate_merchant_id(&body.merchant)
        .map_err(|m| invalid("merchant", format!("merchant {m}")))?;
    let (replayed, complete) = c
        .app
        .notifications
        .replay_merchant(&body.merchant, crate::util::now_ms())
        .await?;
    Ok(Json(
        json!({"replayed": replayed, "complete": complete, "merchant": body.merchant}),
    ))
}

#[derive(Deserialize)]
pub struct MerchantPage {
    after: Option<String>,
}

/// `GET /console/api/merchants?after=`: 50 merchants with their health and lanes.
async fn merchants(
    State(c): State<Console>,
    Query(q): Query<MerchantPage>,
) -> Result<Json<Value>, ApiError> {
    use crate::http::v1::merchants as v1;
    let Json(page) = v1::list(
        State(c.app.clone()),
        Query(v1::Page {
            after: nonempty(&q.after),
            limit: Some(50),
        }),
    )
    .await?;
    let ids: Vec<String> = page["merchants"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let shown = futures::future::join_all(
        ids.into_iter()
            .map(|id| v1::show(State(c.app.clone()), Path(id))),
    )
    .await;
    let mut out = Vec::new();
    for one in shown {
        match one {
            Ok(Json(v)) => out.push(v),
            // Deleted between the list and the read.
            Err(ApiError::Invalid { status, .. }) if status == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Json(json!({"merchants": out, "next": page["next"]})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    url: Option<String>,
}

/// `POST /console/api/merchants/{id}/test {"url"?}`: enqueues a test notification for the
/// merchant (to `url`, default its first allowed URL), signed like all of its notifications.
async fn test_notification(
    State(c): State<Console>,
    Path(id): Path<String>,
    body: Option<Json<TestBody>>,
) -> Result<Response, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let record = c.app.merchants.read(&id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no merchant {id:?}"),
        )
    })?;
    let url = match nonempty(&body.url) {
        Some(u) => u,
        None => record
            .merchant
            .allowed_urls
            .first()
            .cloned()
            .ok_or_else(|| invalid("url", "the merchant has no allowed URL; give one"))?,
    };
    let now = crate::util::now_ms();
    let doc = json!({
        "id": format!("console-test-{}", uuid::Uuid::now_v7()),
        "merchant": id,
        "url": url,
        "body": {"type": "paynotify.test", "merchant": id, "sent_at": now},
        "schedule": [0],
    });
    crate::http::v1::notifications::enqueue(
        State(c.app.clone()),
        Ok(axum::body::Bytes::from(doc.to_string())),
    )
    .await
}

/// `GET /console/api/orders/{order_id}/result`: the stored result of an order, if any.
async fn order_result(
    State(c): State<Console>,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    crate::delivery::schema::validate_id(&order_id)
        .map_err(|m| invalid("order_id", format!("order id {m}")))?;
    Ok(Json(match c.app.results.read(&order_id).await? {
        Some((seq, result)) => json!({
            "order_id": order_id,
            "seq": seq,
            "result": serde_json::from_str::<Value>(&result).unwrap_or(Value::String(result)),
        }),
        None => json!({"order_id": order_id, "result": null}),
    }))
}

/// `GET /console/api/audit`: the newest 200 audit entries.
async fn audit_log(State(c): State<Console>) -> Result<Json<Value>, ApiError> {
    let entries = crate::ops::audit::newest(&c.app.redis, 200).await?;
    Ok(Json(json!({"entries": entries})))
}
