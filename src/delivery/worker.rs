//! The delivery worker: claims due notifications in batches, delivers them, settles results.
//!
//! Invariant: this node holds a notification only between a successful claim and the settle
//! (or release) of that claim; everything it holds is listed in `held`, so shutdown can hand it
//! back and the renewer can keep its leases alive. No fixed-interval polling: the scheduler
//! sleeps until the earliest due time it knows of, woken early by the wake channel, with a
//! watchdog bound so a lost wake-up (e.g. across a Redis reconnect) cannot stop it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::Config;
use crate::delivery::attempt::{Deliverer, Verdict};
use crate::delivery::schema::Spec;
use crate::delivery::store::{Claimed, Settled, Settlement, Store, Swept};
use crate::util::lock;

/// Longest the scheduler sleeps without looking at Redis, whatever it was told.
const WATCHDOG: Duration = Duration::from_secs(5);
/// How long an entry is put back when its destination is at its concurrency limit.
const DEFER_MS: i64 = 1000;
/// Most outcomes settled in one script call.
const SETTLE_BATCH: usize = 1000;
/// Most entries the retention sweep forgets per set in one script call.
const SWEEP_BATCH: usize = 1000;
/// How often the retention sweep looks for entries to forget.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Longest one sweep round runs before it pauses for [`SWEEP_PAUSE`].
const SWEEP_BUDGET: Duration = Duration::from_millis(250);
/// The pause between rounds while the sweep is behind.
const SWEEP_PAUSE: Duration = Duration::from_millis(25);

/// What a finished delivery task reports.
enum Report {
    Settle(u32, Settlement),
    Release(u32, String, i64, i64),
}

struct Held {
    token: i64,
    since: Instant,
}

/// Concurrency limit for one destination: `limit` attempts at once, and as many again waiting
/// in line (holding node slots); anything beyond is handed back for later, so one slow merchant
/// can take at most twice its limit of this node's slots.
struct HostLimit {
    limit: usize,
    running: Arc<Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
}

impl HostLimit {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            running: Arc::new(Semaphore::new(limit)),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    async fn acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        use std::sync::atomic::Ordering;
        if let Ok(p) = self.running.clone().try_acquire_owned() {
            return Some(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let permit = self.running.clone().acquire_owned().await.ok();
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        permit
    }

    fn idle(&self) -> bool {
        self.running.available_permits() == self.limit
            && self.waiting.load(std::sync::atomic::Ordering::Acquire) == 0
    }
}

/// The one limit of `host` on this node (made on first use).
fn host_limit(
    hosts: &Mutex<HashMap<String, Arc<HostLimit>>>,
    host: &str,
    limit: usize,
) -> Arc<HostLimit> {
    lock(hosts)
        .entry(host.to_string())
        .or_insert_with(|| Arc::new(HostLimit::new(limit)))
        .clone()
}

struct Shared {
    config: Arc<Config>,
    store: Store,
    deliverer: Deliverer,
    held: Mutex<HashMap<(u32, String), Held>>,
    hosts: Mutex<HashMap<String, Arc<HostLimit>>>,
    slots: Arc<Semaphore>,
    slot_freed: Notify,
    wake: Notify,
    metrics: crate::metrics::Metrics,
}

/// Runs the worker until `shutdown` is cancelled, then drains: in-flight attempts get
/// `config.shutdown_grace` to finish; whatever is left is handed back to the due set at once.
pub async fn run(
    config: Arc<Config>,
    store: Store,
    deliverer: Deliverer,
    metrics: crate::metrics::Metrics,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        slots: Arc::new(Semaphore::new(config.max_in_flight)),
        config,
        store,
        deliverer,
        held: Mutex::new(HashMap::new()),
        hosts: Mutex::new(HashMap::new()),
        slot_freed: Notify::new(),
        wake: Notify::new(),
        metrics,
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let stop_helpers = CancellationToken::new();
    let mut helpers = JoinSet::new();
    helpers.spawn(
        wake_listener(shared.clone(), stop_helpers.clone()).instrument(info_span!("wake_listener")),
    );
    helpers.spawn(renewer(shared.clone(), stop_helpers.clone()).instrument(info_span!("renewer")));
    helpers
        .spawn(retention(shared.clone(), stop_helpers.clone()).instrument(info_span!("retention")));
    let settler_task = tokio::spawn(settler(shared.clone(), rx).instrument(info_span!("settler")));

    let mut deliveries = scheduler(shared.clone(), tx, shutdown.clone())
        .instrument(info_span!("scheduler"))
        .await;

    // Drain: let attempts finish within the grace period, then hand back the rest.
    let grace = shared.config.shutdown_grace;
    let in_flight = deliveries.len();
    if in_flight > 0 {
        info!(
            in_flight,
            grace_s = grace.as_secs_f64(),
            "draining in-flight deliveries"
        );
    }
    let drained = tokio::time::timeout(grace, async {
        while deliveries.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = deliveries.len(),
            "grace period over; aborting the remaining attempts"
        );
        deliveries.abort_all();
        while deliveries.join_next().await.is_some() {}
    }
    // Every sender is gone now; the settler flushes what it has and stops.
    let _ = settler_task.await;
    hand_back_everything(&shared).await;
    stop_helpers.cancel();
    while helpers.join_next().await.is_some() {}
    info!("worker stopped");
}

async fn scheduler(
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
    info!(node = %config.node_id, partitions, "worker started");
    while !shutdown.is_cancelled() {
        while deliveries.try_join_next().is_some() {}
        let mut free = shared.slots.available_permits();
        // Claim in batches: with attempts in flight, wait until a worthwhile number of slots
        // is free rather than claiming one entry per finished attempt.
        let in_flight = config.max_in_flight - free;
        if free == 0 || (in_flight > 0 && free < low_water) {
            tokio::select! {
                _ = shared.slot_freed.notified() => continue,
                _ = shutdown.cancelled() => break,
            }
        }
        let mut head: Option<i64> = None;
        let mut full = false;
        let mut error = false;
        for i in 0..partitions {
            let p = (start + i) % partitions;
            let limit = free.min(config.claim_batch);
            if limit == 0 {
                full = true;
                break;
            }
            let now = crate::util::now_ms();
            match shared
                .store
                .claim(
                    p,
                    now,
                    config.lease.as_millis() as u64,
                    limit,
                    &config.node_id,
                    config.max_stalls,
                )
                .await
            {
                Ok((h, claimed)) => {
                    failures = 0;
                    if claimed.len() == limit {
                        full = true;
                    }
                    free -= claimed.len();
                    if let Some(h) = h {
                        head = Some(head.map_or(h, |x| x.min(h)));
                    }
                    for c in claimed {
                        dispatch(&shared, &tx, &mut deliveries, c);
                    }
                }
                Err(e) => {
                    error = true;
                    failures += 1;
                    shared.metrics.redis_errors.inc();
                    warn!(error = %e, partition = p, "claim failed; backing off");
                }
            }
        }
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
    let spec: Spec = match serde_json::from_str(&c.spec) {
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
    let host_limit = host_limit(
        &shared.hosts,
        &host,
        shared.config.per_destination_concurrency,
    );
    let Some(_host_permit) = host_limit.acquire().await else {
        debug!("destination at its concurrency limit with a full queue; deferring");
        return Report::Release(c.partition, c.id, c.token, crate::util::now_ms() + DEFER_MS);
    };
    let result = shared.deliverer.attempt(&c.id, &spec, url).await;
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
    let finished = result.started_ms + result.latency_ms as i64;
    let (verdict, next_ms, reason) = match result.verdict {
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
    };
    Report::Settle(c.partition, settlement(&c, verdict, next_ms, &reason, rec))
}

/// A notification that cannot be attempted at all goes straight to the dead set.
fn unreadable(c: &Claimed, reason: String) -> Report {
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

/// Batches reports and settles them, one script call per partition per batch.
async fn settler(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Report>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < SETTLE_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut settles: HashMap<u32, Vec<Settlement>> = HashMap::new();
        let mut releases: HashMap<u32, Vec<(String, i64, i64)>> = HashMap::new();
        for report in batch {
            match report {
                Report::Settle(p, s) => settles.entry(p).or_default().push(s),
                Report::Release(p, id, token, at) => {
                    releases.entry(p).or_default().push((id, token, at))
                }
            }
        }
        for (p, outcomes) in settles {
            // Settling is worth retrying for as long as Redis may be away: the claim token
            // fences the outcome, so a late settle is still exact, while giving up means the
            // lease expires and the merchant is called again.
            let mut tries = 0u32;
            let give_up = Instant::now() + shared.config.lease * 2;
            loop {
                match shared
                    .store
                    .settle(p, crate::util::now_ms(), &outcomes)
                    .await
                {
                    Ok((head, applied)) => {
                        let fenced = applied.iter().filter(|a| !**a).count();
                        if fenced > 0 {
                            warn!(fenced, "outcomes ignored: their leases were lost");
                        }
                        if head.is_some_and(|h| {
                            h <= crate::util::now_ms() + WATCHDOG.as_millis() as i64
                        }) {
                            shared.wake.notify_one();
                        }
                        break;
                    }
                    Err(e) if Instant::now() < give_up => {
                        tries += 1;
                        shared.metrics.redis_errors.inc();
                        if tries == 1 || tries.is_power_of_two() {
                            warn!(error = %e, tries, "settle failed; retrying");
                        }
                        let pause = crate::util::backoff(tries).min(Duration::from_secs(2));
                        tokio::time::sleep(pause).await;
                    }
                    Err(e) => {
                        warn!(error = %e, count = outcomes.len(), "settle failed; the leases will expire and the entries come back");
                        break;
                    }
                }
            }
            forget(&shared, p, outcomes.iter().map(|o| &o.id));
        }
        for (p, entries) in releases {
            if let Err(e) = shared.store.release(p, &entries).await {
                warn!(error = %e, count = entries.len(), "release failed; the leases will expire and the entries come back");
            }
            forget(&shared, p, entries.iter().map(|e| &e.0));
        }
    }
}

fn forget<'a>(shared: &Shared, p: u32, ids: impl Iterator<Item = &'a String>) {
    let mut held = lock(&shared.held);
    for id in ids {
        held.remove(&(p, id.clone()));
    }
}

/// On shutdown: give back whatever is still held (attempts aborted after the grace period).
async fn hand_back_everything(shared: &Shared) {
    let entries: Vec<((u32, String), i64)> = lock(&shared.held)
        .drain()
        .map(|(k, h)| (k, h.token))
        .collect();
    if entries.is_empty() {
        return;
    }
    let now = crate::util::now_ms();
    let mut by_partition: HashMap<u32, Vec<(String, i64, i64)>> = HashMap::new();
    for ((p, id), token) in entries {
        by_partition.entry(p).or_default().push((id, token, now));
    }
    for (p, entries) in by_partition {
        match shared.store.release(p, &entries).await {
            Ok(n) => info!(released = n, partition = p, "handed back to the due set"),
            Err(e) => {
                warn!(error = %e, "hand-back failed; the leases will expire and the entries come back")
            }
        }
    }
}

/// Keeps leases alive for attempts that run long and prunes idle host limits.
async fn renewer(shared: Arc<Shared>, stop: CancellationToken) {
    let lease = shared.config.lease;
    let every = lease / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {},
            _ = stop.cancelled() => return,
        }
        let due: Vec<(u32, String, i64)> = lock(&shared.held)
            .iter()
            .filter(|(_, h)| h.since.elapsed() >= every)
            .map(|((p, id), h)| (*p, id.clone(), h.token))
            .collect();
        let mut by_partition: HashMap<u32, Vec<(String, i64)>> = HashMap::new();
        for (p, id, token) in due {
            by_partition.entry(p).or_default().push((id, token));
        }
        let until = crate::util::now_ms() + lease.as_millis() as i64;
        for (p, entries) in by_partition {
            match shared.store.renew(p, until, &entries).await {
                Ok(renewed) => {
                    let lost = renewed.iter().filter(|r| !**r).count();
                    if lost > 0 {
                        warn!(
                            lost,
                            "leases lost before the attempt finished; its outcome will be ignored"
                        );
                    }
                }
                Err(e) => warn!(error = %e, "lease renewal failed"),
            }
        }
        lock(&shared.hosts).retain(|_, h| !h.idle());
    }
}

/// Forgets delivered and dead notifications once their retention has passed, in a task of its
/// own so a long sweep never delays lease renewal.
///
/// Each script call removes at most [`SWEEP_BATCH`] entries per set (a few milliseconds of
/// Redis time); a partition is swept again at once while its batches come back full, so
/// forgetting keeps pace with any delivery rate. A round that has swept for [`SWEEP_BUDGET`]
/// pauses for [`SWEEP_PAUSE`] before going on, so a large backlog (say after a retention change)
/// is worked off without monopolising Redis. Every worker node sweeps; the scripts are atomic,
/// so concurrent sweeps only split the work.
async fn retention(shared: Arc<Shared>, stop: CancellationToken) {
    let partitions = shared.store.keys().partitions();
    let mut failures = 0u32;
    let mut behind = false;
    loop {
        let pause = if failures > 0 {
            crate::util::backoff(failures)
        } else if behind {
            SWEEP_PAUSE
        } else {
            SWEEP_EVERY
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {},
            _ = stop.cancelled() => return,
        }
        let now = crate::util::now_ms();
        let done_cutoff = now - shared.config.retention.as_millis() as i64;
        let dead_cutoff = now - shared.config.dead_retention.as_millis() as i64;
        let round = Instant::now();
        let mut total = Swept::default();
        behind = false;
        'partitions: for p in 0..partitions {
            loop {
                if stop.is_cancelled() {
                    return;
                }
                if round.elapsed() >= SWEEP_BUDGET {
                    behind = true;
                    break 'partitions;
                }
                match shared
                    .store
                    .sweep_batch(p, done_cutoff, dead_cutoff, SWEEP_BATCH)
                    .await
                {
                    Ok(swept) => {
                        failures = 0;
                        total.done += swept.done;
                        total.dead += swept.dead;
                        shared
                            .metrics
                            .forgotten
                            .inc_by((swept.done + swept.dead) as u64);
                        if swept.done < SWEEP_BATCH && swept.dead < SWEEP_BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        shared.metrics.redis_errors.inc();
                        warn!(error = %e, partition = p, failures, "retention sweep failed; backing off");
                        break 'partitions;
                    }
                }
            }
        }
        if total.done + total.dead > 0 {
            debug!(
                delivered = total.done,
                dead = total.dead,
                took_ms = round.elapsed().as_millis() as u64,
                behind,
                "retention sweep"
            );
        }
    }
}

/// Subscribes to every partition's wake channel and pokes the scheduler on every message, and after every
/// (re)connect, since wake-ups sent while disconnected are lost.
async fn wake_listener(shared: Arc<Shared>, stop: CancellationToken) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// After a panic poisoned the map, every attempt to a host still shares that host's one
    /// limit (the old code made a fresh limit per attempt, switching the limit off).
    #[test]
    fn a_poisoned_host_map_still_shares_one_limit_per_host() {
        let hosts: Mutex<HashMap<String, Arc<HostLimit>>> = Mutex::default();
        let first = host_limit(&hosts, "m.example:443", 4);
        let poisoned = std::thread::scope(|s| {
            s.spawn(|| {
                let _held = hosts.lock();
                panic!("poison the map");
            })
            .join()
            .is_err()
        });
        assert!(poisoned && hosts.is_poisoned());
        let again = host_limit(&hosts, "m.example:443", 4);
        assert!(Arc::ptr_eq(&first, &again));
        let _a = first.running.clone().try_acquire_owned().unwrap();
        assert_eq!(again.running.available_permits(), 3);
    }
}
