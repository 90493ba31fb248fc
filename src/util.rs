//! Small helpers every layer uses: time, ids, a poison-tolerant lock, Redis backoff and a
//! token bucket.
//!
//! Invariant: nothing here knows about Redis, HTTP or any domain; every module may depend on it.

/// Locks `m`, also after a panic elsewhere poisoned it (the data are counters and maps that
/// stay consistent between statements).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pause before the next attempt to reach Redis after `failures` failures in a row: 100 ms
/// doubling to at most 3 s.
pub fn backoff(failures: u32) -> std::time::Duration {
    std::time::Duration::from_millis((100u64 << failures.min(5)).min(3000))
}

/// A token bucket with one owner (a connection's loop, so no locking): up to `burst` at once,
/// refilled at `per_sec`. Used to bound what one client can make the node do per second.
pub struct Budget {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Budget {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: std::time::Instant::now(),
        }
    }

    /// Takes one token; false when there is none left.
    pub fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new notification id: a UUIDv7, so generated ids sort by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
