//! The claim loop and the delivery tasks: claims due entries in batches as slots free up,
//! attempts each one under its destination's limit, and reports the outcome to the settler.
//!
//! Invariant: no fixed-interval polling of the partitions it owns (`owners`). The scheduler
//! sleeps until the earliest owned head is `REFILL` away (then claims up to [`PREFETCH`] ahead), woken early by the wake
//! channel, with a [`WATCHDOG`] bound so a lost wake-up (e.g. across a Redis reconnect) cannot
//! stop it; the partitions it does not own it looks at every `owners::HELP_EVERY`, for overdue
//! entries only. Every claimed entry is in `held` until settled, also while a prefetched one
//! waits for its due time.

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
use crate::delivery::store::{Claim, Claimed, Settled, Settlement};
use crate::util::lock;

/// Longest the scheduler sleeps without looking at Redis, whatever it was told.
pub(super) const WATCHDOG: Duration = Duration::from_secs(5);
/// Longest the scheduler waits for a batch's worth of free slots before it claims with fewer.
const BATCH_WAIT: Duration = Duration::from_millis(2);
/// How far ahead of their due time entries of an owned partition are claimed; each is then
/// held until it falls due. One claim takes everything due in the next window (a batch, not
/// one call per entry), and the claim's round trip is off the attempt's critical path.
pub(super) const PREFETCH: Duration = Duration::from_millis(50);
/// An owned partition is claimed again once its head is this close: each claim then takes
/// about `PREFETCH - REFILL` of entries, rather than sliding the window one entry at a time.
const REFILL: Duration = Duration::from_millis(25);

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
    // The earliest score last seen in each partition's due set (None: not known).
    let mut heads: Vec<Option<i64>> = vec![None; partitions as usize];
    let mut next_help = Instant::now();
    let mut looked_at_all = Instant::now();
    info!(node = %config.node_id, partitions, "worker started");
    while !shutdown.is_cancelled() {
        while deliveries.try_join_next().is_some() {}
        let free = match slots_ready(&shared, &mut batching_since, low_water, &shutdown).await {
            Slots::Free(free) => free,
            Slots::Again => continue,
            Slots::Stop => break,
        };
        // The known heads can be stale (a retry another worker settled here, a wake-up lost
        // across a reconnect): look at every owned partition at least once per WATCHDOG.
        if looked_at_all.elapsed() >= WATCHDOG {
            looked_at_all = Instant::now();
            shared.owners.wake_all();
        }
        let help = Instant::now() >= next_help;
        let mut claiming = Claiming {
            deliveries: &mut deliveries,
            heads: &mut heads,
            failures: &mut failures,
        };
        let round = claim_round(&shared, &tx, &mut claiming, start, free, help).await;
        start = start.wrapping_add(1);
        if help {
            // Helped and found a full batch: help again at once, else in HELP_EVERY.
            next_help = if round.help_full {
                Instant::now()
            } else {
                Instant::now() + super::owners::HELP_EVERY
            };
        }
        if round.error {
            let backoff = crate::util::backoff(failures);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {},
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        if round.full {
            continue;
        }
        let Some(wait) = idle_wait(&shared, &heads, next_help) else {
            continue;
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

/// What the free slots allow.
enum Slots {
    /// Claim up to this many.
    Free(usize),
    /// Look again (a slot freed, or the batch wait is over).
    Again,
    Stop,
}

/// Claim in batches: with attempts in flight, wait until a worthwhile number of slots is free
/// rather than claiming one entry per finished attempt; but never longer than BATCH_WAIT, or
/// slow destinations holding most slots would starve everyone else.
async fn slots_ready(
    shared: &Shared,
    batching_since: &mut Option<Instant>,
    low_water: usize,
    shutdown: &CancellationToken,
) -> Slots {
    let free = shared.slots.available_permits();
    let in_flight = shared.config.max_in_flight - free;
    if free == 0 {
        *batching_since = None;
        return tokio::select! {
            _ = shared.slot_freed.notified() => Slots::Again,
            _ = shutdown.cancelled() => Slots::Stop,
        };
    }
    if in_flight > 0 && free < low_water {
        let since = *batching_since.get_or_insert_with(Instant::now);
        if let Some(left) = BATCH_WAIT.checked_sub(since.elapsed()) {
            return tokio::select! {
                _ = shared.slot_freed.notified() => Slots::Again,
                _ = tokio::time::sleep(left) => Slots::Again,
                _ = shutdown.cancelled() => Slots::Stop,
            };
        }
    }
    *batching_since = None;
    Slots::Free(free)
}

/// How long to sleep: until the earliest owned head is [`REFILL`] away, or the next
/// look at the partitions this worker does not own; `None` to claim again at once.
fn idle_wait(shared: &Shared, heads: &[Option<i64>], next_help: Instant) -> Option<Duration> {
    let now = crate::util::now_ms();
    let refill = REFILL.as_millis() as i64;
    let owned_head = (0..heads.len() as u32)
        .filter(|&p| shared.owners.owns(p))
        .filter_map(|p| heads[p as usize])
        .min();
    let until_owned = match owned_head {
        Some(h) if h - refill <= now => return None,
        Some(h) => Duration::from_millis((h - refill - now) as u64).min(WATCHDOG),
        None => WATCHDOG,
    };
    Some(until_owned.min(next_help.saturating_duration_since(Instant::now())))
}

/// The scheduler's state a claim round updates.
struct Claiming<'a> {
    deliveries: &'a mut JoinSet<()>,
    heads: &'a mut [Option<i64>],
    failures: &'a mut u32,
}

/// What one pass over the partitions found.
struct Round {
    /// Some owned partition had more than it could take (claim again at once).
    full: bool,
    /// Some partition helped with had more overdue entries than it could take.
    help_full: bool,
    /// Some claim failed (back off).
    error: bool,
}

/// Claims from the partitions in turn, starting at `start`, as many as `free` slots allow, and
/// starts the attempts. An owned partition is claimed when its head is [`REFILL`] away or
/// nearer (or unknown, or woken), up to [`PREFETCH`] ahead; with `help`, the others are claimed for
/// entries overdue by [`super::owners::HELP_GRACE`] only.
async fn claim_round(
    shared: &Arc<Shared>,
    tx: &mpsc::UnboundedSender<Report>,
    state: &mut Claiming<'_>,
    start: u32,
    mut free: usize,
    help: bool,
) -> Round {
    let config = &shared.config;
    let partitions = shared.store.keys().partitions();
    let mut round = Round {
        full: false,
        help_full: false,
        error: false,
    };
    let prefetch = PREFETCH.as_millis() as i64;
    let refill = REFILL.as_millis() as i64;
    let grace = super::owners::HELP_GRACE.as_millis() as i64;
    for i in 0..partitions {
        let p = (start + i) % partitions;
        let now = crate::util::now_ms();
        let owned = shared.owners.owns(p);
        let woken = shared.owners.take_woken(p);
        let head = state.heads[p as usize];
        let horizon = if owned {
            if !woken && head.is_some_and(|h| h > now + refill) {
                continue;
            }
            now + prefetch
        } else if help {
            now - grace
        } else {
            continue;
        };
        let limit = free.min(config.claim_batch);
        if limit == 0 {
            round.full = true;
            // Not looked at: claim it again as soon as there is room.
            shared.owners.wake(p);
            break;
        }
        let claim = Claim {
            now_ms: now,
            horizon_ms: horizon,
            lease_ms: config.lease.as_millis() as u64,
            limit,
            owner: &config.node_id,
            max_stalls: config.max_stalls,
        };
        match shared.store.claim_until(p, &claim).await {
            Ok((h, claimed)) => {
                *state.failures = 0;
                let full = claimed.len() == limit;
                if owned {
                    round.full |= full;
                } else {
                    round.help_full |= full;
                }
                free -= claimed.len();
                state.heads[p as usize] = h;
                for c in claimed {
                    dispatch(shared, tx, state.deliveries, c);
                }
            }
            Err(e) => {
                round.error = true;
                *state.failures += 1;
                shared.owners.wake(p);
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
    deliveries.spawn(
        async move {
            // A prefetched entry is held until it falls due: at most PREFETCH, since nothing
            // scored later is claimed.
            let early = c.due_ms - crate::util::now_ms();
            if early > 0 {
                let early = Duration::from_millis(early as u64).min(PREFETCH);
                tokio::time::sleep(early).await;
            }
            let lateness_ms = (crate::util::now_ms() - c.due_ms).max(0);
            shared.metrics.lateness.observe(lateness_ms as f64 / 1000.0);
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
    let delivered = result.verdict == Verdict::Delivered;
    if let Some(m) = &spec.merchant {
        super::health::note(shared, m, result.started_ms, result.latency_ms, delivered);
    }
    // A delivered entry is compacted: settled with its summary, not the full record (which is
    // then not built at all: the common case pays for no JSON document).
    let summary = result.status.filter(|_| delivered).map(|status| {
        crate::delivery::meta::delivered_summary(
            status,
            result.latency_ms,
            result.started_ms,
            spec.merchant.as_deref(),
            &spec.url,
        )
    });
    let rec = summary.unwrap_or_else(|| {
        json!({
            "attempt": c.attempt,
            "started_at": result.started_ms,
            "due_at": c.due_ms,
            "status": result.status,
            "latency_ms": result.latency_ms,
            "error": result.error,
            "response": result.excerpt,
            "node": shared.config.node_id,
        })
        .to_string()
    });
    let (verdict, next_ms, reason) = outcome(&spec, &c, result);
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

/// Subscribes to every partition's wake channel and marks the partition woken on every message,
/// poking the scheduler when it owns that partition; after every (re)connect it wakes them all,
/// since wake-ups sent while disconnected are lost.
pub(super) async fn wake_listener(shared: Arc<Shared>, stop: CancellationToken) {
    let channels = shared.store.keys().wake_channels();
    let partition_of: std::collections::HashMap<&str, u32> = channels
        .iter()
        .enumerate()
        .map(|(p, c)| (c.as_str(), p as u32))
        .collect();
    crate::redis::follow::follow(
        shared.store.redis(),
        &channels,
        &stop,
        || {
            shared.owners.wake_all();
            shared.wake.notify_one();
        },
        |msg| {
            let channel = msg.channel.as_str();
            match partition_of.get(channel) {
                // Another worker's partition: its owner is woken; this one helps on its own
                // schedule.
                Some(&p) => {
                    shared.owners.wake(p);
                    if shared.owners.owns(p) {
                        shared.wake.notify_one();
                    }
                }
                None => {
                    shared.owners.wake_all();
                    shared.wake.notify_one();
                }
            }
        },
    )
    .await;
}
