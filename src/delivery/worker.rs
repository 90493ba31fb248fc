//! The delivery worker: claims due notifications in batches, delivers them, settles results.
//!
//! Invariant: this node holds a notification only between a successful claim and the settle
//! (or release) of that claim; everything it holds is listed in `held`, so shutdown can hand it
//! back and the renewer can keep its leases alive. No fixed-interval polling: the scheduler
//! sleeps until the earliest due time it knows of in the partitions it owns (`owners`), woken
//! early by the wake channel, with a watchdog bound so a lost wake-up (e.g. across a Redis
//! reconnect) cannot stop it; it looks at the partitions it does not own every
//! `owners::HELP_EVERY`, for entries their owner left overdue.

mod health;
mod lane;
mod lanes;
mod leases;
mod merchant;
mod owners;
mod retention;
mod scheduler;
mod settler;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::config::Config;
use crate::delivery::attempt::Deliverer;
use crate::delivery::store::{Settlement, Store};
use lane::Lane;

/// What a finished delivery task reports.
enum Report {
    Settle(u32, Settlement),
    Release(u32, String, i64, i64),
}

struct Held {
    token: i64,
    since: Instant,
}

struct Shared {
    config: Arc<Config>,
    store: Store,
    deliverer: Deliverer,
    merchants: crate::delivery::merchants::Registry,
    /// Each merchant's attempts since the last health flush.
    tallies: Mutex<HashMap<String, crate::delivery::merchants::health::Tally>>,
    /// Operational events waiting for the next flush.
    ops: Mutex<Vec<health::OpsEvent>>,
    held: Mutex<HashMap<(u32, String), Held>>,
    /// Each destination's lane (host:port).
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
    slots: Arc<Semaphore>,
    slot_freed: Notify,
    wake: Notify,
    /// This worker's share of the partitions (`owners`).
    owners: owners::Owners,
    metrics: crate::metrics::Metrics,
}

/// The tasks beside the scheduler, stopped with `stop` after the drain.
fn spawn_helpers(shared: &Arc<Shared>, stop: &CancellationToken) -> JoinSet<()> {
    let mut helpers = JoinSet::new();
    let (s, t) = (shared, stop);
    helpers.spawn(
        scheduler::wake_listener(s.clone(), t.clone()).instrument(info_span!("wake_listener")),
    );
    helpers.spawn(leases::renewer(s.clone(), t.clone()).instrument(info_span!("renewer")));
    helpers.spawn(retention::retention(s.clone(), t.clone()).instrument(info_span!("retention")));
    helpers.spawn(lanes::syncer(s.clone(), t.clone()).instrument(info_span!("lanes")));
    helpers.spawn(owners::follow(s.clone(), t.clone()).instrument(info_span!("owners")));
    helpers.spawn(health::flusher(s.clone(), t.clone()).instrument(info_span!("health")));
    helpers
}

/// Runs the worker until `shutdown` is cancelled, then drains: in-flight attempts get
/// `config.shutdown_grace` to finish; whatever is left is handed back to the due set at once.
pub async fn run(
    config: Arc<Config>,
    store: Store,
    deliverer: Deliverer,
    merchants: crate::delivery::merchants::Registry,
    metrics: crate::metrics::Metrics,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        slots: Arc::new(Semaphore::new(config.max_in_flight)),
        owners: owners::Owners::new(store.keys().partitions()),
        config,
        store,
        deliverer,
        merchants,
        tallies: Mutex::default(),
        ops: Mutex::default(),
        held: Mutex::new(HashMap::new()),
        lanes: Mutex::new(HashMap::new()),
        slot_freed: Notify::new(),
        wake: Notify::new(),
        metrics,
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let stop_helpers = CancellationToken::new();
    let mut helpers = spawn_helpers(&shared, &stop_helpers);
    let settler_task =
        tokio::spawn(settler::settler(shared.clone(), rx).instrument(info_span!("settler")));

    let mut deliveries = scheduler::scheduler(shared.clone(), tx, shutdown.clone())
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
    leases::hand_back_everything(&shared).await;
    stop_helpers.cancel();
    while helpers.join_next().await.is_some() {}
    info!("worker stopped");
}
