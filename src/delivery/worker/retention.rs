//! Retention: delivered and dead notifications are forgotten once their retention has passed.
//!
//! Invariant: forgetting keeps pace with any delivery rate, in bounded batches on a time budget,
//! in a task of its own (never inside lease renewal).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Shared;
use crate::delivery::store::Swept;

/// Most entries the retention sweep forgets per set in one script call.
const SWEEP_BATCH: usize = 1000;
/// How often the retention sweep looks for entries to forget.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Longest one sweep round runs before it pauses for [`SWEEP_PAUSE`].
const SWEEP_BUDGET: Duration = Duration::from_millis(250);
/// The pause between rounds while the sweep is behind.
const SWEEP_PAUSE: Duration = Duration::from_millis(25);

/// Forgets delivered and dead notifications once their retention has passed, in a task of its
/// own so a long sweep never delays lease renewal.
///
/// Each script call removes at most [`SWEEP_BATCH`] entries per set (a few milliseconds of
/// Redis time); a partition is swept again at once while its batches come back full, so
/// forgetting keeps pace with any delivery rate. A round that has swept for [`SWEEP_BUDGET`]
/// pauses for [`SWEEP_PAUSE`] before going on, so a large backlog (say after a retention change)
/// is worked off without monopolising Redis. Every worker node sweeps; the scripts are atomic,
/// so concurrent sweeps only split the work.
pub(super) async fn retention(shared: Arc<Shared>, stop: CancellationToken) {
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
