//! One node's lane to one destination (host:port): an adaptive concurrency limit and the
//! destination's circuit breaker as last read from Redis.
//!
//! Invariant: at most `cap()` attempts run at once and as many again wait in line; anything
//! beyond, and anything due while the breaker is open, is handed back without spending an
//! attempt. The limit starts at `--lane-initial-concurrency`, grows while answers come back
//! near the destination's best latency and the lane is full (one per answer below the
//! slow-start threshold, so it doubles every round trip; then one per round trip), and is cut
//! to 70 % on congestion (timeout, connection error, 429, 5xx) at most once per round trip. It
//! never exceeds this node's share: `--per-destination-concurrency` divided by the nodes
//! sending to the destination.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::delivery::attempt::AttemptResult;
use crate::delivery::lane::{Breaker, Report};
use crate::util::lock;

/// Multiplicative decrease on congestion.
const BACKOFF: f64 = 0.7;
/// An answer counts as "near the best" within twice the best latency plus this.
const LATENCY_SLACK_MS: u64 = 20;

/// Why an attempt may not go out now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum NotNow {
    /// The lane and its line are full: try again shortly.
    Full,
    /// The breaker is open (or half-open with its probe out) until then (ms).
    Open(i64),
}

struct State {
    limit: f64,
    ssthresh: f64,
    max: f64,
    in_flight: usize,
    waiting: usize,
    best_ms: Option<u64>,
    last_cut: Option<Instant>,
    /// This node's share of the destination (max / nodes sending to it).
    share: usize,
    breaker: Breaker,
    open_until: i64,
    probe_out: bool,
    report: Report,
    last_used: Instant,
    /// When the lane was last full (an attempt took its last slot, or had to wait).
    last_full: Option<Instant>,
}

/// The lane. Shared by every attempt to its destination on this node.
pub(super) struct Lane {
    state: Mutex<State>,
    freed: Notify,
}

/// A slot in the lane; give it back with [`Lane::finish`] (dropping it frees the slot too).
pub(super) struct Slot {
    lane: Arc<Lane>,
    taken_at: Instant,
    probe: bool,
    done: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.done {
            let mut s = lock(&self.lane.state);
            s.in_flight -= 1;
            if self.probe {
                s.probe_out = false;
            }
            drop(s);
            self.lane.freed.notify_one();
        }
    }
}

impl Lane {
    pub(super) fn new(initial: usize, max: usize) -> Self {
        let max = max.max(1) as f64;
        Self {
            state: Mutex::new(State {
                limit: (initial.max(1) as f64).min(max),
                ssthresh: max,
                max,
                in_flight: 0,
                waiting: 0,
                best_ms: None,
                last_cut: None,
                share: max as usize,
                breaker: Breaker::Closed,
                open_until: 0,
                probe_out: false,
                report: Report::default(),
                last_used: Instant::now(),
                last_full: None,
            }),
            freed: Notify::new(),
        }
    }

    /// The number of attempts that may run at once now.
    #[cfg(test)]
    fn cap(&self) -> usize {
        let s = lock(&self.state);
        (s.limit as usize).clamp(1, s.share.max(1))
    }

    /// Waits for a slot; `probe` is called (once) when the breaker is half-open and this
    /// node has no probe out, and says whether this node won the cluster's one probe.
    pub(super) async fn acquire<F, Fut>(
        self: &Arc<Self>,
        now_ms: i64,
        probe: F,
    ) -> Result<Slot, NotNow>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let must_probe = {
            let mut s = lock(&self.state);
            s.last_used = Instant::now();
            match s.breaker {
                Breaker::Open if now_ms < s.open_until => return Err(NotNow::Open(s.open_until)),
                Breaker::Closed | Breaker::Open => false,
                Breaker::HalfOpen if s.probe_out => return Err(NotNow::Open(now_ms + 1000)),
                Breaker::HalfOpen => {
                    s.probe_out = true;
                    true
                }
            }
        };
        if must_probe {
            let won = probe().await;
            let mut s = lock(&self.state);
            if !won {
                s.probe_out = false;
                return Err(NotNow::Open(now_ms + 1000));
            }
            s.in_flight += 1;
            drop(s);
            return Ok(self.slot(true));
        }
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = lock(&self.state);
                let cap = (s.limit as usize).clamp(1, s.share.max(1));
                if s.in_flight < cap {
                    s.in_flight += 1;
                    let slot = self.slot(false);
                    if s.in_flight >= cap {
                        s.last_full = Some(slot.taken_at);
                    }
                    return Ok(slot);
                }
                s.last_full = Some(Instant::now());
                if s.waiting >= cap {
                    return Err(NotNow::Full);
                }
                s.waiting += 1;
            }
            notified.await;
            lock(&self.state).waiting -= 1;
        }
    }

    fn slot(self: &Arc<Self>, probe: bool) -> Slot {
        Slot {
            lane: self.clone(),
            taken_at: Instant::now(),
            probe,
            done: false,
        }
    }

    /// Gives the slot back with what the attempt found, adapting the limit.
    pub(super) fn finish(&self, mut slot: Slot, result: &AttemptResult) {
        slot.done = true;
        let congested = is_congestion(result);
        let mut s = lock(&self.state);
        s.in_flight -= 1;
        if slot.probe {
            s.probe_out = false;
            s.report.probe = Some(!congested);
        }
        if congested {
            s.report.congested += 1;
            let round_trip = Duration::from_millis(s.best_ms.unwrap_or(100).max(10));
            if s.last_cut.is_none_or(|t| t.elapsed() >= round_trip) {
                s.limit = (s.limit * BACKOFF).max(1.0);
                s.ssthresh = s.limit;
                s.last_cut = Some(Instant::now());
            }
        } else {
            s.report.answered += 1;
            let best = s
                .best_ms
                .map_or(result.latency_ms, |b| b.min(result.latency_ms));
            s.best_ms = Some(best);
            let near_best = result.latency_ms <= 2 * best + LATENCY_SLACK_MS;
            // Grow only when the lane was full while this attempt ran: demand exceeds the limit.
            let was_full = s.last_full.is_some_and(|t| t >= slot.taken_at);
            if was_full && near_best {
                let step = if s.limit < s.ssthresh {
                    1.0
                } else {
                    1.0 / s.limit
                };
                s.limit = (s.limit + step).min(s.max);
            }
        }
        drop(s);
        self.freed.notify_one();
    }

    /// Takes what to report to Redis, if anything happened or work is waiting.
    pub(super) fn take_report(&self) -> Option<Report> {
        let mut s = lock(&self.state);
        let busy = s.in_flight > 0 || s.waiting > 0 || s.breaker != Breaker::Closed;
        let mut r = std::mem::take(&mut s.report);
        let active = busy || r != Report::default();
        r.limit = (s.limit as u64).clamp(1, s.share.max(1) as u64);
        active.then_some(r)
    }

    /// Applies the shared state read from Redis.
    pub(super) fn apply(&self, active_nodes: u64, breaker: Breaker, open_until: i64) {
        let mut s = lock(&self.state);
        s.share = ((s.max / active_nodes.max(1) as f64).ceil() as usize).max(1);
        s.breaker = breaker;
        s.open_until = open_until;
        drop(s);
        // A wider share lets waiters in.
        self.freed.notify_waiters();
    }

    /// The breaker is not closed.
    pub(super) fn is_open(&self) -> bool {
        lock(&self.state).breaker != Breaker::Closed
    }

    /// Unused for a while, with nothing running: can be forgotten.
    pub(super) fn idle(&self, for_at_least: Duration) -> bool {
        let s = lock(&self.state);
        s.in_flight == 0 && s.waiting == 0 && s.last_used.elapsed() >= for_at_least
    }

    /// The current limit and breaker state (tests, logs).
    #[cfg(test)]
    fn limit(&self) -> f64 {
        lock(&self.state).limit
    }
}

/// Timeouts, connection errors, 429 and 5xx: the destination is overloaded or down. Any other
/// answer (2xx, 3xx, 4xx, a wrong body) is the merchant speaking.
pub(super) fn is_congestion(result: &AttemptResult) -> bool {
    match result.status {
        None => true,
        Some(s) => s == 429 || s >= 500,
    }
}

/// The one lane of `destination` on this node (made on first use).
pub(super) fn lane_for(
    lanes: &Mutex<HashMap<String, Arc<Lane>>>,
    destination: &str,
    initial: usize,
    max: usize,
) -> Arc<Lane> {
    lock(lanes)
        .entry(destination.to_string())
        .or_insert_with(|| Arc::new(Lane::new(initial, max)))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::attempt::Verdict;

    fn result(status: Option<u16>, latency_ms: u64) -> AttemptResult {
        AttemptResult {
            started_ms: 0,
            latency_ms,
            status,
            error: None,
            excerpt: None,
            verdict: Verdict::Delivered,
        }
    }

    #[tokio::test]
    async fn the_limit_doubles_per_round_trip_when_full_and_is_cut_on_congestion() {
        let lane = Arc::new(Lane::new(4, 512));
        let yes = || async { true };
        // A full lane whose answers come back fast: slow start.
        for _ in 0..3 {
            let cap = lane.cap();
            let slots: Vec<Slot> =
                futures::future::join_all((0..cap).map(|_| lane.acquire(0, yes)))
                    .await
                    .into_iter()
                    .map(|s| s.unwrap())
                    .collect();
            for s in slots {
                lane.finish(s, &result(Some(200), 2));
            }
        }
        assert_eq!(lane.limit(), 32.0);
        // Congestion: cut to 70 % once per round trip, not once per failure.
        let a = lane.acquire(0, yes).await.unwrap();
        let b = lane.acquire(0, yes).await.unwrap();
        lane.finish(a, &result(None, 10_000));
        lane.finish(b, &result(Some(503), 3));
        assert!((lane.limit() - 22.4).abs() < 1e-9, "{}", lane.limit());
        // 4xx is an answer, not congestion; slow answers do not grow it.
        let c = lane.acquire(0, yes).await.unwrap();
        lane.finish(c, &result(Some(404), 500));
        assert!((lane.limit() - 22.4).abs() < 1e-9);
        // The share caps it: two nodes send to the destination.
        lane.apply(2, Breaker::Closed, 0);
        assert_eq!(lane.cap(), 22);
        let small = Arc::new(Lane::new(600, 512));
        small.apply(3, Breaker::Closed, 0);
        assert_eq!(small.cap(), 171);
    }

    #[tokio::test]
    async fn an_open_breaker_defers_and_half_open_lets_one_probe_through() {
        let lane = Arc::new(Lane::new(8, 512));
        lane.apply(1, Breaker::Open, 5_000);
        assert!(matches!(
            lane.acquire(1_000, || async { true }).await,
            Err(NotNow::Open(5_000))
        ));
        lane.apply(1, Breaker::HalfOpen, 5_000);
        let probe = lane.acquire(6_000, || async { true }).await.unwrap();
        assert!(matches!(
            lane.acquire(6_000, || async { true }).await,
            Err(NotNow::Open(_))
        ));
        lane.finish(probe, &result(Some(200), 5));
        assert_eq!(lane.take_report().unwrap().probe, Some(true));
        // Another node holds the probe.
        assert!(matches!(
            lane.acquire(6_000, || async { false }).await,
            Err(NotNow::Open(_))
        ));
    }
}
