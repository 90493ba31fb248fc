//! The worker's lanes: taking a slot for an attempt, and syncing each busy lane with its shared
//! state in Redis every [`SYNC`].
//!
//! Invariant: a Redis failure never stops deliveries: a lane keeps its last known share and
//! breaker state until a sync succeeds again (a probe that cannot be taken is deferred).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::lane::{lane_for, Lane, NotNow, Slot};
use super::Shared;
use crate::delivery::lane::{self as shared_lane, BreakerRules};
use crate::util::lock;

/// How often a busy lane reports to Redis and reads the shared state back.
const SYNC: Duration = Duration::from_millis(500);
/// How long an attempt is put back when its lane and line are full.
const FULL_DEFER_MS: i64 = 1000;

fn rules(shared: &Shared) -> BreakerRules {
    let c = &shared.config;
    BreakerRules {
        window_ms: c.breaker_window.as_millis() as u64,
        cooldown_ms: c.breaker_cooldown.as_millis() as u64,
        min_requests: c.breaker_min_requests,
        failure_percent: c.breaker_failure_percent,
    }
}

/// A slot in `destination`'s lane, or the time to hand the attempt back for.
pub(super) async fn take_slot(
    shared: &Shared,
    destination: &str,
    timeout_ms: u64,
) -> Result<(Arc<Lane>, Slot), i64> {
    let c = &shared.config;
    let lane = lane_for(
        &shared.lanes,
        destination,
        c.lane_initial_concurrency,
        c.per_destination_concurrency,
    );
    let now = crate::util::now_ms();
    let probe = || async {
        let hold = timeout_ms + 1000;
        let redis = shared.store.redis();
        match shared_lane::take_probe(redis, &c.node_id, destination, hold, now).await {
            Ok(won) => won,
            Err(e) => {
                shared.metrics.redis_errors.inc();
                warn!(error = %e, "half-open probe not taken");
                false
            }
        }
    };
    match lane.acquire(now, probe).await {
        Ok(slot) => Ok((lane, slot)),
        Err(NotNow::Full) => {
            debug!("destination at its concurrency limit with a full line; deferring");
            Err(now + FULL_DEFER_MS)
        }
        Err(NotNow::Open(until)) => {
            debug!("destination's breaker is open; deferring without spending an attempt");
            // Spread the retries over a second so they do not all come back at once.
            Err(until.max(now) + rand::random::<u8>() as i64 * 4)
        }
    }
}

/// Reports one lane and applies the shared state it gets back.
async fn sync_one(
    shared: &Shared,
    destination: &str,
    lane: &Lane,
    report: &shared_lane::Report,
    now: i64,
) {
    let redis = shared.store.redis();
    let node = &shared.config.node_id;
    match shared_lane::sync(redis, node, destination, report, rules(shared), now).await {
        Ok(state) => {
            lane.apply(state.active_nodes, state.breaker, state.open_until);
            if let Some(event) = &state.event {
                info!(host = %destination, event = %event, open_until = state.open_until, "circuit breaker");
                if event == "opened" || event == "reopened" {
                    shared.metrics.breaker_opened.inc();
                }
            }
        }
        Err(e) => {
            shared.metrics.redis_errors.inc();
            warn!(host = %destination, error = %e, "lane sync failed; keeping the last known state");
        }
    }
}

/// Syncs every busy lane every [`SYNC`] until `stop`.
pub(super) async fn syncer(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SYNC) => {},
            _ = stop.cancelled() => break,
        }
        let lanes: Vec<(String, Arc<Lane>)> = lock(&shared.lanes)
            .iter()
            .map(|(d, l)| (d.clone(), l.clone()))
            .collect();
        let now = crate::util::now_ms();
        // Every busy lane's sync at once: many destinations cost one round trip's wait.
        let syncs = lanes
            .into_iter()
            .filter_map(|(d, lane)| lane.take_report().map(|r| (d, lane, r)))
            .map(|(destination, lane, report)| {
                let shared = &shared;
                async move { sync_one(shared, &destination, &lane, &report, now).await }
            });
        futures::future::join_all(syncs).await;
        let open = lock(&shared.lanes).values().filter(|l| l.is_open()).count();
        shared.metrics.breakers_open.set(open as i64);
    }
}
