//! The settler: batches the outcomes of finished attempts and settles them, one script call per
//! partition per batch, fenced by each claim's token.
//!
//! Invariant: an outcome is retried for as long as Redis may be away (two leases): a late settle
//! is still exact, while giving up means the lease expires and the merchant is called again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::scheduler::WATCHDOG;
use super::{Report, Shared};
use crate::delivery::store::{Settled, Settlement};
use crate::util::lock;

/// Most outcomes settled in one script call.
const SETTLE_BATCH: usize = 1000;
/// How long the settler gathers outcomes after the first before it settles them: one script
/// call per partition per batch, so at a steady rate this sets the batch size (at 3,000/s,
/// 30 outcomes), against a lease of seconds. A crash in this window means the merchant is
/// called again, as for any attempt not settled yet.
const SETTLE_LINGER: Duration = Duration::from_millis(10);

/// Batches reports and settles them, one script call per partition per batch.
pub(super) async fn settler(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Report>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(SETTLE_LINGER);
        tokio::pin!(linger);
        while batch.len() < SETTLE_BATCH {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => batch.push(r),
                    None => break,
                },
                _ = &mut linger => break,
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
                        // A retry may now be the partition's head: look at it again. Other
                        // outcomes only remove entries, so the head the scheduler knows holds.
                        let retried = outcomes.iter().any(|o| o.verdict == Settled::Retry);
                        if retried
                            && head.is_some_and(|h| {
                                h <= crate::util::now_ms() + WATCHDOG.as_millis() as i64
                            })
                        {
                            shared.owners.wake(p);
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

pub(super) fn forget<'a>(shared: &Shared, p: u32, ids: impl Iterator<Item = &'a String>) {
    let mut held = lock(&shared.held);
    for id in ids {
        held.remove(&(p, id.clone()));
    }
}
