//! The per-destination limit of one node: `limit` attempts at once per host:port, and as many
//! again waiting in line; anything beyond is handed back for later.
//!
//! Invariant: one [`HostLimit`] per destination for as long as it has work (idle ones are pruned
//! by the lease renewer), shared by every attempt to it, also after a panic poisoned the map.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::util::lock;

/// Concurrency limit for one destination: `limit` attempts at once, and as many again waiting
/// in line (holding node slots); anything beyond is handed back for later, so one slow merchant
/// can take at most twice its limit of this node's slots.
pub(super) struct HostLimit {
    limit: usize,
    running: Arc<Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
}

impl HostLimit {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            running: Arc::new(Semaphore::new(limit)),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub(super) async fn acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
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

    pub(super) fn idle(&self) -> bool {
        self.running.available_permits() == self.limit
            && self.waiting.load(std::sync::atomic::Ordering::Acquire) == 0
    }
}

/// The one limit of `host` on this node (made on first use).
pub(super) fn host_limit(
    hosts: &Mutex<HashMap<String, Arc<HostLimit>>>,
    host: &str,
    limit: usize,
) -> Arc<HostLimit> {
    lock(hosts)
        .entry(host.to_string())
        .or_insert_with(|| Arc::new(HostLimit::new(limit)))
        .clone()
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
