//! The claim loop and the delivery tasks: claims due entries in batches as slots free up,
//! attempts each one under its destination's limit, and reports the outcome to the settler.
//!
//! Invariant: no fixed-interval polling. The scheduler sleeps until the earliest due time it
//! knows of, woken early by the wake channel, with a [`WATCHDOG`] bound so a lost wake-up (e.g.
//! across a Redis reconnect) cannot stop it; every claimed entry is in `held` until settled.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::{Held, Report, Shared};
use crate::delivery::attempt::{AttemptResult, Verdict};
use crate::delivery::schema::Spec;
use crate::delivery::store::{Claimed, Settled, Settlement};
use crate::util::lock;

/// Longest the scheduler sleeps without looking at Redis, whatever it was told.
pub(super) const WATCHDOG: Duration = Duration::from_secs(5);
/// Longest the scheduler waits for a batch's worth of free slots before it claims with fewer.
const BATCH_WAIT: Duration = Duration::from_millis(2);

pub(super) async fn scheduler(
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Report>,
    shutdown: CancellationToken,
) -> JoinSet<()> {
    let config = &shared.config;
    let partitions = shared.store.keys().partitions();
    let mut deliveries = JoinSet::new();
    let mut start = 0u32;
    let mut failures = 0u32;
    let low_water = config.claim_batch.min(config.max_in_flight / 4).max(1);
    let mut batching_since: Option<Instant> = None;
    info!(node = %config.node_id, partitions, "worker started");
    while !shutdown.is_cancelled() {
        while deliveries.try_join_next().is_some() {}
        let free = shared.slots.available_permits();
        // Claim in batches: with attempts in flight, wait until a worthwhile number of slots
        // is free rather than claiming one entry per finished attempt; but never longer than
        // BATCH_WAIT, or slow destinations holding most slots would starve everyone else.
        let in_flight = config.max_in_flight - free;
        if free == 0 {
            batching_since = None;
            tokio::select! {
                _ = shared.slot_freed.notified() => continue,
                _ = shutdown.cancelled() => break,
            }
        }
        if in_flight > 0 && free < low_water {
            let since = *batching_since.get_or_insert_with(Instant::now);
            if let Some(left) = BATCH_WAIT.checked_sub(since.elapsed()) {
                tokio::select! {
                    _ = shared.slot_freed.notified() => continue,
                    _ = tokio::time::sleep(left) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        batching_since = None;
        let round = claim_round(&shared, &tx, &mut deliveries, start, free, &mut failures).await;
        let (head, full, error) = (round.head, round.full, round.error);
        start = start.wrapping_add(1);
        if error {
            let backoff = crate::util::backoff(failures);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {},
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        if full {
            continue;
        }
        let now = crate::util::now_ms();
        let wait = match head {
            Some(h) if h <= now => continue,
            Some(h) => Duration::from_millis((h - now) as u64).min(WATCHDOG),
            None => WATCHDOG,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = shared.wake.notified() => {},
            _ = shutdown.cancelled() => break,
        }
    }
    info!("scheduler stopped claiming");
    deliveries
}

/// What one pass over the partitions found.
struct Round {
    /// The earliest score left in any due set.
    head: Option<i64>,
    /// Some partition had more than it could take (claim again at once).
    full: bool,
    /// Some claim failed (back off).
    error: bool,
}

/// Claims from every partition in turn, starting at `start`, as many as `free` slots allow,
/// and starts the attempts.
async fn claim_round(
    shared: &Arc<Shared>,
    tx: &mpsc::UnboundedSender<Report>,
    deliveries: &mut JoinSet<()>,
    start: u32,
    mut free: usize,
    failures: &mut u32,
) -> Round {
    let config = &shared.config;
    let partitions = shared.store.keys().partitions();
    let mut round = Round {
        head: None,
        full: false,
        error: false,
    };
    for i in 0..partitions {
        let p = (start + i) % partitions;
        let limit = free.min(config.claim_batch);
        if limit == 0 {
            round.full = true;
            break;
        }
        let lease_ms = config.lease.as_millis() as u64;
        let now = crate::util::now_ms();
        let claimed = shared
            .store
            .claim(p, now, lease_ms, limit, &config.node_id, config.max_stalls)
            .await;
        match claimed {
            Ok((h, claimed)) => {
                *failures = 0;
                round.full |= claimed.len() == limit;
                free -= claimed.len();
                if let Some(h) = h {
                    round.head = Some(round.head.map_or(h, |x| x.min(h)));
                }
                for c in claimed {
                    dispatch(shared, tx, deliveries, c);
                }
            }
            Err(e) => {
                round.error = true;
                *failures += 1;
                shared.metrics.redis_errors.inc();
                warn!(error = %e, partition = p, "claim failed; backing off");
            }
        }
    }
    round
}

fn dispatch(
    shared: &Arc<Shared>,
    tx: &mpsc::UnboundedSender<Report>,
    deliveries: &mut JoinSet<()>,
    c: Claimed,
) {
    let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
        // Cannot happen: claims are bounded by free slots and only this task claims. Hand it
        // back rather than hold it.
        let _ = tx.send(Report::Release(
            c.partition,
            c.id,
            c.token,
            crate::util::now_ms(),
        ));
        return;
    };
    lock(&shared.held).insert(
        (c.partition, c.id.clone()),
        Held {
            token: c.token,
            since: Instant::now(),
        },
    );
    let shared = shared.clone();
    let tx = tx.clone();
    let span =
        info_span!("delivery", id = %c.id, attempt = c.attempt, host = tracing::field::Empty);
    shared.metrics.in_flight.inc();
    let lateness_ms = (crate::util::now_ms() - c.due_ms).max(0);
    shared.metrics.lateness.observe(lateness_ms as f64 / 1000.0);
    deliveries.spawn(
        async move {
            let started = Instant::now();
            let report = deliver_one(&shared, c).await;
            shared
                .metrics
                .attempt_duration
                .observe(started.elapsed().as_secs_f64());
            shared.metrics.in_flight.dec();
            if let Report::Settle(_, s) = &report {
                let outcome = crate::metrics::Outcome {
                    outcome: s.verdict.as_str(),
                };
                shared.metrics.attempts.get_or_create(&outcome).inc();
            }
            let _ = tx.send(report);
            drop(permit);
            shared.slot_freed.notify_one();
        }
        .instrument(span),
    );
}

async fn deliver_one(shared: &Shared, c: Claimed) -> Report {
    let mut spec: Spec = match serde_json::from_str(&c.spec) {
        Ok(s) => s,
        Err(e) => return unreadable(&c, format!("stored spec is unreadable: {e}")),
    };
    let url = match url::Url::parse(&spec.url) {
        Ok(u) => u,
        Err(e) => return unreadable(&c, format!("stored url is unreadable: {e}")),
    };
    let host = format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    );
    tracing::Span::current().record("host", host.as_str());
    let merchant_keys = match &spec.merchant {
        Some(m) => match super::merchant::keys_for(shared, &c, m).await {
            Ok(keys) => Some(keys),
            Err(report) => return report,
        },
        None => None,
    };
    let (lane, slot) = match super::lanes::take_slot(shared, &host, spec.timeout_ms).await {
        Ok(taken) => taken,
        Err(at) => return Report::Release(c.partition, c.id, c.token, at),
    };
    // The body is sent as it is (its buffer handed over); nothing below reads it.
    let body = std::mem::take(&mut spec.body);
    let result = shared
        .deliverer
        .attempt(
            &c.id,
            &spec,
            body,
            url,
            merchant_keys.as_ref().map(|k| k.as_slice()),
        )
        .await;
    lane.finish(slot, &result);
    let rec = json!({
        "attempt": c.attempt,
        "started_at": result.started_ms,
        "due_at": c.due_ms,
        "status": result.status,
        "latency_ms": result.latency_ms,
        "error": result.error,
        "response": result.excerpt,
        "node": shared.config.node_id,
    })
    .to_string();
    if let Some(m) = &spec.merchant {
        let ok = result.verdict == Verdict::Delivered;
        super::health::note(shared, m, result.started_ms, result.latency_ms, ok);
    }
    let summary = result.status.map(|status| {
        crate::delivery::meta::delivered_summary(
            status,
            result.latency_ms,
            result.started_ms,
            spec.merchant.as_deref(),
            &spec.url,
        )
    });
    let (verdict, next_ms, reason) = outcome(&spec, &c, result);
    // A delivered entry is compacted: settled with its summary, not the full record.
    let rec = match (verdict, summary) {
        (Settled::Delivered, Some(summary)) => summary,
        _ => rec,
    };
    if verdict == Settled::Dead {
        super::health::dead(shared, &c.id, spec.merchant.as_deref(), &reason);
    }
    Report::Settle(c.partition, settlement(&c, verdict, next_ms, &reason, rec))
}

/// What an attempt's result means: the settle verdict, the next due time and the reason.
fn outcome(spec: &Spec, c: &Claimed, result: AttemptResult) -> (Settled, i64, String) {
    let finished = result.started_ms + result.latency_ms as i64;
    match result.verdict {
        Verdict::Delivered => {
            debug!(
                status = result.status,
                latency_ms = result.latency_ms,
                "delivered"
            );
            (Settled::Delivered, 0, String::new())
        }
        Verdict::Dead(reason) => {
            info!(%reason, "notification is dead");
            (Settled::Dead, 0, reason)
        }
        Verdict::Retry { retry_after_ms } => match spec.delay_after(c.round_index as usize) {
            Some(delay) => {
                let delay = retry_after_ms.map_or(delay, |ra| delay.max(ra));
                debug!(error = ?result.error, delay_ms = delay, "attempt failed; retry scheduled");
                (Settled::Retry, finished + delay as i64, String::new())
            }
            None => {
                let reason = format!(
                    "attempts exhausted after {} tries; last: {}",
                    c.round_index + 1,
                    result.error.as_deref().unwrap_or("failed")
                );
                info!(%reason, "notification is dead");
                (Settled::Dead, 0, reason)
            }
        },
    }
}

/// A notification that cannot be attempted at all goes straight to the dead set.
pub(super) fn unreadable(c: &Claimed, reason: String) -> Report {
    let record = json!({"attempt": c.attempt, "started_at": crate::util::now_ms(), "due_at": c.due_ms, "status": null, "error": reason})
        .to_string();
    Report::Settle(
        c.partition,
        settlement(c, Settled::Dead, 0, &reason, record),
    )
}

fn settlement(
    c: &Claimed,
    verdict: Settled,
    next_ms: i64,
    reason: &str,
    record: String,
) -> Settlement {
    Settlement {
        id: c.id.clone(),
        token: c.token,
        verdict,
        next_ms,
        reason: reason.to_string(),
        record,
    }
}

/// Subscribes to every partition's wake channel and pokes the scheduler on every message, and after every
/// (re)connect, since wake-ups sent while disconnected are lost.
pub(super) async fn wake_listener(shared: Arc<Shared>, stop: CancellationToken) {
    let channels = shared.store.keys().wake_channels();
    crate::redis::follow::follow(
        shared.store.redis(),
        &channels,
        &stop,
        || shared.wake.notify_one(),
        |_| shared.wake.notify_one(),
    )
    .await;
}
