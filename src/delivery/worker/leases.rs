//! Leases: renewed for attempts that run long, handed back on shutdown.
//!
//! Invariant: every held entry's lease is renewed every third of the lease while its attempt
//! runs; on shutdown whatever is still held goes back to the due set at once (not after a lease).

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Shared;
use crate::util::lock;

/// On shutdown: give back whatever is still held (attempts aborted after the grace period).
pub(super) async fn hand_back_everything(shared: &Shared) {
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

/// Keeps leases alive for attempts that run long and prunes lanes idle for a minute.
pub(super) async fn renewer(shared: Arc<Shared>, stop: CancellationToken) {
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
        lock(&shared.lanes).retain(|_, l| !l.idle(std::time::Duration::from_secs(60)));
    }
}
