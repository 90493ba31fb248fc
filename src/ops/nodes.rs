//! The nodes that are alive: each node reports its id, roles, version, start time and load
//! every [`REPORT_EVERY`]; a report older than [`ALIVE_FOR`] means the node is gone.
//!
//! Invariant: a report holds counts and names only (never a key, a secret or a URL), and the
//! reports hash loses a dead node's entry within [`FORGET_AFTER`] (`lua/node_report.lua`).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::redis::{Redis, StoreError};

/// How often a node reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// A node whose latest report is older than this is not shown as alive.
pub const ALIVE_FOR: Duration = Duration::from_secs(10);
/// Reports older than this are removed.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// One node's report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub id: String,
    /// `api,worker,gateway` or a subset.
    pub roles: String,
    pub version: String,
    /// When the node started (ms).
    pub started_at: i64,
    /// When it wrote this report (ms).
    pub at: i64,
    /// Attempts this node has in flight.
    pub in_flight: i64,
    /// Open browser websockets and long-polls.
    pub ws_connections: i64,
    /// Orders its browsers follow.
    pub orders_followed: i64,
    /// Devices connected to it.
    pub devices_online: i64,
    /// Device calls it is waiting on.
    pub device_calls_waiting: i64,
}

fn roles_of(config: &Config) -> String {
    let r = &config.roles;
    [("api", r.api), ("worker", r.worker), ("gateway", r.gateway)]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// This node's report now.
pub fn current(config: &Config, metrics: &Metrics, started_at: i64, now_ms: i64) -> Report {
    Report {
        id: config.node_id.clone(),
        roles: roles_of(config),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at,
        at: now_ms,
        in_flight: metrics.in_flight.get(),
        ws_connections: metrics.ws_connections.get(),
        orders_followed: metrics.orders_followed.get(),
        devices_online: metrics.devices_online.get(),
        device_calls_waiting: metrics.device_calls_waiting.get(),
    }
}

/// Writes `report` (and forgets reports older than [`FORGET_AFTER`]).
pub async fn report(redis: &Redis, report: &Report) -> Result<(), StoreError> {
    let json = serde_json::to_string(report).map_err(|e| StoreError::Reply(e.to_string()))?;
    let json = format!("{}|{json}", report.at);
    let _removed: i64 = redis
        .invoke(
            redis
                .scripts()
                .node_report
                .key(redis.keys().nodes())
                .arg(&report.id)
                .arg(json)
                .arg(report.at)
                .arg(FORGET_AFTER.as_millis() as u64),
        )
        .await?;
    Ok(())
}

/// The nodes alive at `now_ms`, by id. A report that does not parse is skipped with a warning.
pub async fn alive(redis: &Redis, now_ms: i64) -> Result<Vec<Report>, StoreError> {
    let all: std::collections::BTreeMap<String, String> = redis
        .query(redis::cmd("HGETALL").arg(redis.keys().nodes()))
        .await?;
    let cutoff = now_ms - ALIVE_FOR.as_millis() as i64;
    Ok(all
        .into_iter()
        .filter_map(|(id, raw)| {
            match serde_json::from_str::<Report>(
                raw.split_once('|').map_or(raw.as_str(), |(_, json)| json),
            ) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "a node report does not parse; skipped");
                    None
                }
            }
        })
        .filter(|r| r.at >= cutoff)
        .collect())
}

/// Reports this node every [`REPORT_EVERY`] until `shutdown`, then removes its report; a failed
/// report is logged once per outage and retried at the next tick.
pub async fn run(config: Arc<Config>, redis: Redis, metrics: Metrics, shutdown: CancellationToken) {
    let started_at = crate::util::now_ms();
    let mut tick = tokio::time::interval(REPORT_EVERY);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let now = crate::util::now_ms();
        match report(&redis, &current(&config, &metrics, started_at, now)).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "node report failed; retrying every tick");
            }
            Err(_) => {}
        }
    }
    // Stopping: no longer alive. The other workers take this one's partitions at their next
    // look (`delivery::worker::owners`) instead of when the report goes stale.
    let gone: Result<i64, StoreError> = redis
        .query(
            redis::cmd("HDEL")
                .arg(redis.keys().nodes())
                .arg(&config.node_id),
        )
        .await;
    if let Err(e) = gone {
        tracing::warn!(error = %e, "could not remove this node's report; it goes stale in 10 s");
    }
}
