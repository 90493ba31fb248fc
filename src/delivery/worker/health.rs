//! The worker's part of merchant health: it tallies each merchant's attempts, adds the tallies
//! to Redis every second, and turns the events that causes into operational notifications
//! (and, when configured, disables a merchant that has failed for too long).
//!
//! Invariant: operational events go out through the engine itself, as notifications to
//! `--ops-events-url` signed with the node's own secrets and keys, with ids derived from the
//! event so a retried flush enqueues each event once; an ops notification that dies causes no
//! further event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Shared;
use crate::delivery::merchants::health::{self, Event, Tally};
use crate::delivery::merchants::MerchantError;
use crate::util::lock;

/// How often each node adds its tallies to Redis.
const FLUSH: Duration = Duration::from_secs(1);
/// Ids of operational notifications start with this.
pub(super) const OPS_ID_PREFIX: &str = "paynotify-ops-";

/// What the flusher sends: an event type, its subject and its data.
pub(super) struct OpsEvent {
    pub kind: &'static str,
    pub subject: String,
    pub data: serde_json::Value,
}

/// Adds one attempt to its merchant's tally.
pub(super) fn note(shared: &Shared, merchant: &str, started_ms: i64, latency_ms: u64, ok: bool) {
    lock(&shared.tallies)
        .entry(merchant.to_string())
        .or_default()
        .add(started_ms, latency_ms, ok);
}

/// Queues `notification.dead` for a notification that died (not for ops notifications).
pub(super) fn dead(shared: &Shared, id: &str, merchant: Option<&str>, reason: &str) {
    if shared.config.ops_events_url.is_none() || id.starts_with(OPS_ID_PREFIX) {
        return;
    }
    lock(&shared.ops).push(OpsEvent {
        kind: "notification.dead",
        subject: id.to_string(),
        data: json!({"id": id, "merchant": merchant, "reason": reason}),
    });
}

/// Flushes tallies and ops events every [`FLUSH`] until `stop`, then once more.
pub(super) async fn flusher(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(FLUSH) => false,
            _ = stop.cancelled() => true,
        };
        flush(&shared).await;
        if stopping {
            break;
        }
    }
}

async fn flush(shared: &Shared) {
    let tallies: HashMap<String, Tally> = std::mem::take(&mut *lock(&shared.tallies));
    let now = crate::util::now_ms();
    let config = &shared.config;
    let disable_after = config
        .auto_disable_after
        .map_or(0, |d| d.as_millis() as u64);
    let redis = shared.store.redis();
    // Every merchant's tally at once: thousands of merchants cost one round trip's wait.
    let recorded = futures::future::join_all(tallies.iter().map(|(merchant, tally)| {
        health::record(
            redis,
            merchant,
            tally,
            now,
            config.merchant_failing_after,
            disable_after,
        )
    }))
    .await;
    for ((merchant, _), flushed) in tallies.iter().zip(recorded) {
        let merchant = merchant.as_str();
        let flushed = match flushed {
            Ok(f) => f,
            Err(e) => {
                // Health is best effort: a lost tally is a gap in the counts, not a lost
                // notification.
                shared.metrics.redis_errors.inc();
                warn!(%merchant, error = %e, "merchant health not recorded");
                continue;
            }
        };
        for event in flushed.events.clone() {
            on_event(shared, merchant, event, &flushed, now).await;
        }
    }
    let events: Vec<OpsEvent> = std::mem::take(&mut *lock(&shared.ops));
    for event in events {
        send(shared, event, now).await;
    }
}

async fn on_event(shared: &Shared, merchant: &str, event: Event, f: &health::Flushed, now: i64) {
    info!(%merchant, event = event.name(), consecutive_failures = f.consecutive_failures, "merchant event");
    if event == Event::Disabled {
        let reason = format!(
            "disabled automatically: failing since {} ({} failed attempts in a row)",
            f.failing_since
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            f.consecutive_failures
        );
        let disabled = shared
            .merchants
            .update(merchant, false, |m, _| {
                m.disabled = true;
                m.disabled_reason = Some(reason.clone());
                m.updated_at = now;
                Ok::<_, MerchantError>(())
            })
            .await;
        if let Err(e) = disabled {
            warn!(%merchant, error = %e, "could not disable the failing merchant");
        }
    }
    if shared.config.ops_events_url.is_some() {
        lock(&shared.ops).push(OpsEvent {
            kind: event.name(),
            subject: merchant.to_string(),
            data: json!({
                "merchant": merchant,
                "consecutive_failures": f.consecutive_failures,
                "failing_since": f.failing_since,
            }),
        });
    }
}

/// Enqueues one ops event as a notification to `--ops-events-url`.
async fn send(shared: &Shared, event: OpsEvent, now: i64) {
    let Some(url) = &shared.config.ops_events_url else {
        return;
    };
    let id = format!("{OPS_ID_PREFIX}{}-{}-{now}", event.kind, event.subject);
    let id: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._:-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(crate::delivery::schema::MAX_ID_LEN)
        .collect();
    let doc = json!({
        "id": id,
        "url": url,
        "body": {"type": event.kind, "at": now, "data": event.data},
        "schedule": "standard",
    });
    let n = match crate::delivery::schema::parse(doc.to_string().as_bytes(), now, String::new) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "ops event refused by the schema");
            return;
        }
    };
    match shared.store.enqueue(&n, now).await {
        Ok(_) => {
            shared
                .metrics
                .ops_events
                .get_or_create(&crate::metrics::EventLabel { event: event.kind })
                .inc();
        }
        Err(e) => {
            shared.metrics.redis_errors.inc();
            warn!(error = %e, kind = event.kind, "ops event not enqueued");
        }
    };
}
