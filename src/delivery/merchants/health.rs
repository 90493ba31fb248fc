//! A merchant's health: attempts delivered and failed per minute and per hour with a latency
//! histogram, the current run of failures, and the operational events it causes.
//!
//! Invariant: each node adds its own tally every second in one script call per merchant
//! (`merchant_health.lua`), never one per attempt; each event (`failing`, `recovered`,
//! `disabled`) is said once per change, by whichever node's tally caused it, because the
//! script flips the flag and reports the event in the same atomic step.

use serde::Serialize;

use crate::redis::{as_i64, as_string, Redis, StoreError};

/// Latency histogram buckets: bucket `i` counts attempts under `2^i` ms (the last, the rest).
pub const BUCKETS: usize = 16;

/// One node's attempts to one merchant since its last flush, in order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    pub delivered: u64,
    pub failed: u64,
    /// When the last success in the tally started (ms).
    pub last_success: Option<i64>,
    /// Failures after the last success (all failures if none succeeded).
    pub trailing_failures: u64,
    /// When the first of those failures started.
    pub streak_start: Option<i64>,
    pub latency: [u64; BUCKETS],
}

impl Tally {
    /// Adds one attempt.
    pub fn add(&mut self, started_ms: i64, latency_ms: u64, delivered: bool) {
        let bucket = (64 - latency_ms.leading_zeros() as usize).min(BUCKETS - 1);
        self.latency[bucket] += 1;
        if delivered {
            self.delivered += 1;
            self.last_success = Some(started_ms);
            self.trailing_failures = 0;
            self.streak_start = None;
        } else {
            self.failed += 1;
            self.trailing_failures += 1;
            self.streak_start.get_or_insert(started_ms);
        }
    }
}

/// An operational event about a merchant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Failing,
    Recovered,
    Disabled,
}

impl Event {
    /// The event type as `--ops-events-url` receives it.
    pub fn name(self) -> &'static str {
        match self {
            Event::Failing => "merchant.failing",
            Event::Recovered => "merchant.recovered",
            Event::Disabled => "merchant.disabled",
        }
    }
}

/// What a flush found: the run of failures and the events it caused.
#[derive(Debug, Clone, PartialEq)]
pub struct Flushed {
    pub consecutive_failures: i64,
    pub failing_since: Option<i64>,
    pub events: Vec<Event>,
}

/// Adds `tally` to `merchant`'s health.
pub async fn record(
    redis: &Redis,
    merchant: &str,
    tally: &Tally,
    now_ms: i64,
    failing_after: u32,
    disable_after_ms: u64,
) -> Result<Flushed, StoreError> {
    let keys = redis.keys();
    let mut inv = redis.scripts().merchant_health.prepare_invoke();
    inv.key(keys.merchant_health(merchant))
        .key(keys.merchant_bucket(merchant, "m", now_ms / 60_000))
        .key(keys.merchant_bucket(merchant, "h", now_ms / 3_600_000))
        .arg(now_ms)
        .arg(tally.delivered)
        .arg(tally.failed)
        .arg(tally.last_success.unwrap_or(0))
        .arg(tally.trailing_failures)
        .arg(tally.streak_start.unwrap_or(0))
        .arg(failing_after.max(1))
        .arg(disable_after_ms);
    for n in tally.latency {
        inv.arg(n);
    }
    let reply: Vec<redis::Value> = redis.invoke(&inv).await?;
    let number = |i: usize| reply.get(i).and_then(as_i64);
    let consecutive_failures =
        number(0).ok_or_else(|| StoreError::Reply(format!("merchant_health: {reply:?}")))?;
    let events = reply
        .iter()
        .skip(2)
        .filter_map(as_string)
        .filter_map(|e| match e.as_str() {
            "failing" => Some(Event::Failing),
            "recovered" => Some(Event::Recovered),
            "disabled" => Some(Event::Disabled),
            _ => None,
        })
        .collect();
    Ok(Flushed {
        consecutive_failures,
        failing_since: number(1).filter(|s| *s > 0),
        events,
    })
}

/// Counts and latency over one window.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Window {
    pub delivered: u64,
    pub failed: u64,
    /// Upper bounds of the latency buckets holding the median and the 99th percentile (ms).
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
}

/// A merchant's health as `GET /v1/merchants/{id}` shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Health {
    pub last_1h: Window,
    pub last_24h: Window,
    pub last_success_at: Option<i64>,
    pub last_failure_at: Option<i64>,
    pub consecutive_failures: i64,
    pub failing_since: Option<i64>,
    pub failing: bool,
}

fn window(buckets: &[std::collections::HashMap<String, i64>]) -> Window {
    let field = |m: &std::collections::HashMap<String, i64>, k: &str| {
        m.get(k).copied().unwrap_or(0).max(0) as u64
    };
    let mut hist = [0u64; BUCKETS];
    let mut w = Window::default();
    for b in buckets {
        w.delivered += field(b, "d");
        w.failed += field(b, "f");
        for (i, slot) in hist.iter_mut().enumerate() {
            *slot += field(b, &format!("l{i}"));
        }
    }
    let total: u64 = hist.iter().sum();
    let quantile = |q: f64| {
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        hist.iter().enumerate().find_map(|(i, n)| {
            seen += n;
            (seen >= rank).then_some(1u64 << i)
        })
    };
    if total > 0 {
        w.p50_ms = quantile(0.5);
        w.p99_ms = quantile(0.99);
    }
    w
}

/// Reads a merchant's health (one pipelined round trip: its state, 60 minutes and 24 hours).
pub async fn read(redis: &Redis, merchant: &str, now_ms: i64) -> Result<Health, StoreError> {
    let keys = redis.keys();
    let mut pipe = redis::pipe();
    pipe.cmd("HGETALL").arg(keys.merchant_health(merchant));
    let minute = now_ms / 60_000;
    let hour = now_ms / 3_600_000;
    for m in (minute - 59)..=minute {
        pipe.cmd("HGETALL")
            .arg(keys.merchant_bucket(merchant, "m", m));
    }
    for h in (hour - 23)..=hour {
        pipe.cmd("HGETALL")
            .arg(keys.merchant_bucket(merchant, "h", h));
    }
    let replies: Vec<std::collections::HashMap<String, String>> = redis.pipeline(&pipe).await?;
    let numbers: Vec<std::collections::HashMap<String, i64>> = replies
        .iter()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.parse().ok()?)))
                .collect()
        })
        .collect();
    let (state, rest) = numbers
        .split_first()
        .ok_or_else(|| StoreError::Reply("empty health reply".into()))?;
    let (minutes, hours) = rest.split_at(rest.len().min(60));
    let get = |k: &str| state.get(k).copied();
    Ok(Health {
        last_1h: window(minutes),
        last_24h: window(hours),
        last_success_at: get("last_success"),
        last_failure_at: get("last_failure"),
        consecutive_failures: get("consecutive").unwrap_or(0),
        failing_since: get("failing_since").filter(|s| *s > 0),
        failing: get("failing") == Some(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_keeps_the_run_of_failures_after_the_last_success() {
        let mut t = Tally::default();
        t.add(1, 0, false);
        t.add(2, 3, true);
        t.add(3, 700, false);
        t.add(4, 40_000, false);
        assert_eq!((t.delivered, t.failed, t.last_success), (1, 3, Some(2)));
        assert_eq!((t.trailing_failures, t.streak_start), (2, Some(3)));
        assert_eq!(t.latency[0], 1); // 0 ms
        assert_eq!(t.latency[2], 1); // 3 ms: under 4
        assert_eq!(t.latency[10], 1); // 700 ms: under 1024
        assert_eq!(t.latency[15], 1); // the rest
        let mut b = std::collections::HashMap::new();
        b.insert("d".to_string(), 99);
        b.insert("l2".to_string(), 99);
        b.insert("l10".to_string(), 1);
        let w = window(&[b]);
        assert_eq!((w.delivered, w.p50_ms, w.p99_ms), (99, Some(4), Some(4)));
    }
}
