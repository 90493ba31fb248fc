//! `/healthz`, `/readyz` and `/metrics`, served by every node whatever its roles.
//!
//! Invariant: `/readyz` is 503 while Redis does not answer, while the gateway's pub/sub
//! connection is down, and from the shutdown signal on; `/metrics` reads Redis at most once
//! per `STATS_EVERY_MS`, so an unauthenticated scrape cannot load Redis.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::state::AppState;

/// `/healthz` and `/readyz`, served by every node.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `/metrics`: Prometheus text. Gauges of shared state are read now.
async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    if state.config.roles.gateway {
        let s = state.hub.stats();
        m.ws_subscriptions.set(s.subscriptions as i64);
        m.orders_followed.set(s.orders_followed as i64);
        m.pubsub_connected.set(i64::from(s.pubsub_live));
    }
    m.devices_online.set(state.devices.online_here() as i64);
    m.device_calls_waiting
        .set(state.devices.calls_waiting() as i64);
    let now = crate::util::now_ms();
    let last = m.stats_read_ms.load(std::sync::atomic::Ordering::Relaxed);
    if now - last >= crate::metrics::STATS_EVERY_MS
        && m.stats_read_ms
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
    {
        let stats = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            state.notifications.stats(now),
        )
        .await;
        match stats {
            Ok(Ok(s)) => {
                m.due_backlog.set(s.due_backlog);
                m.intake_lag.set(s.intake_pending);
            }
            _ => {
                m.redis_errors.inc();
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

async fn ready(State(state): State<AppState>) -> Response {
    let ping = state.redis.ping();
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down\n").into_response();
    }
    if state.config.roles.gateway && !state.hub.is_live() {
        return (StatusCode::SERVICE_UNAVAILABLE, "pub/sub: not connected\n").into_response();
    }
    match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "redis: timed out\n").into_response(),
    }
}
