//! Which partitions this worker claims eagerly. The live workers (from the node reports,
//! `ops::nodes`) share the partitions round-robin by sorted node id, so each partition has one
//! eager claimer however many workers run: its claim and settle batches do not shrink as
//! workers are added, and the Redis work per notification stays flat.
//!
//! Invariant: ownership is an economy, never a lock. Every worker also claims any partition's
//! entries once they are [`HELP_GRACE`] overdue (checked every [`HELP_EVERY`]), so a partition
//! whose owner died, is saturated or is not known yet is delivered late by about
//! `HELP_GRACE + HELP_EVERY` at most, never lost; two workers that both believe they own a
//! partition only share its batches (every claim is atomic, `lua/claim.lua`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Shared;
use crate::ops::nodes;

/// How overdue an entry of a partition this worker does not own must be before it helps.
pub(super) const HELP_GRACE: Duration = Duration::from_millis(500);
/// How often a worker looks for overdue entries in the partitions it does not own.
pub(super) const HELP_EVERY: Duration = Duration::from_millis(500);

/// This worker's share of the partitions, and which of them were woken since the last claim.
pub(super) struct Owners {
    owned: Vec<AtomicBool>,
    woken: Vec<AtomicBool>,
}

impl Owners {
    /// Until the first look at the node reports, this worker owns every partition (alone, it
    /// does; with others, they share batches for a moment).
    pub(super) fn new(partitions: u32) -> Self {
        Owners {
            owned: (0..partitions).map(|_| AtomicBool::new(true)).collect(),
            woken: (0..partitions).map(|_| AtomicBool::new(true)).collect(),
        }
    }

    pub(super) fn owns(&self, p: u32) -> bool {
        self.owned
            .get(p as usize)
            .is_some_and(|o| o.load(Ordering::Relaxed))
    }

    /// Marks partition `p` as having news (an enqueue, a release, a reconnect).
    pub(super) fn wake(&self, p: u32) {
        if let Some(w) = self.woken.get(p as usize) {
            w.store(true, Ordering::Relaxed);
        }
    }

    pub(super) fn wake_all(&self) {
        for w in &self.woken {
            w.store(true, Ordering::Relaxed);
        }
    }

    /// Whether `p` was woken since the last call (and clears it).
    pub(super) fn take_woken(&self, p: u32) -> bool {
        self.woken
            .get(p as usize)
            .is_some_and(|w| w.swap(false, Ordering::Relaxed))
    }

    /// Sets the share; returns how many partitions this worker owns now, if that changed.
    fn set(&self, owned: &[bool]) -> Option<usize> {
        let mut changed = false;
        for (slot, &o) in self.owned.iter().zip(owned) {
            changed |= slot.swap(o, Ordering::Relaxed) != o;
        }
        changed.then(|| owned.iter().filter(|o| **o).count())
    }
}

/// Partition `p` of `partitions` belongs to the `p % n`-th of the `n` workers sorted by id;
/// `me` always counts as one of them.
pub(super) fn assign(partitions: u32, me: &str, workers: &[String]) -> Vec<bool> {
    let mut ids: Vec<&str> = workers.iter().map(String::as_str).collect();
    ids.push(me);
    ids.sort_unstable();
    ids.dedup();
    let n = ids.len();
    let mine = ids.iter().position(|id| *id == me).unwrap_or(0);
    (0..partitions as usize).map(|p| p % n == mine).collect()
}

/// Re-reads the live workers every [`nodes::REPORT_EVERY`] and updates the share, waking the
/// scheduler when it changes. A failed read keeps the share it had.
pub(super) async fn follow(shared: Arc<Shared>, stop: CancellationToken) {
    let partitions = shared.store.keys().partitions();
    let me = shared.config.node_id.clone();
    let mut tick = tokio::time::interval(nodes::REPORT_EVERY);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        match nodes::alive(shared.store.redis(), crate::util::now_ms()).await {
            Ok(reports) => {
                failing = false;
                let workers: Vec<String> = reports
                    .into_iter()
                    .filter(|r| r.roles.split(',').any(|role| role == "worker"))
                    .map(|r| r.id)
                    .collect();
                let share = assign(partitions, &me, &workers);
                if let Some(owned) = shared.owners.set(&share) {
                    info!(
                        owned,
                        partitions,
                        workers = workers.len().max(1),
                        "partition share changed"
                    );
                    shared.owners.wake_all();
                    shared.wake.notify_one();
                } else {
                    debug!(workers = workers.len(), "partition share unchanged");
                }
            }
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "reading the live workers failed; keeping the partition share");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner() {
        let workers = ids(&["w3", "w1", "w2"]);
        let shares: Vec<Vec<bool>> = workers.iter().map(|me| assign(12, me, &workers)).collect();
        for p in 0..12 {
            assert_eq!(shares.iter().filter(|s| s[p]).count(), 1, "partition {p}");
        }
        assert!(shares.iter().all(|s| s.iter().filter(|o| **o).count() == 4));
    }

    #[test]
    fn a_worker_missing_from_the_reports_still_counts_itself() {
        assert_eq!(assign(3, "new", &[]), vec![true, true, true]);
        let share = assign(4, "b", &ids(&["a"]));
        assert_eq!(share, vec![false, true, false, true]);
    }

    #[test]
    fn more_workers_than_partitions_leaves_some_owning_none() {
        let workers = ids(&["a", "b", "c"]);
        assert_eq!(assign(2, "c", &workers), vec![false, false]);
        assert_eq!(assign(2, "a", &workers), vec![true, false]);
    }
}
