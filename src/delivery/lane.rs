//! The shared part of a destination's lane in Redis: which nodes send to it (each node's share
//! of the destination's concurrency is the maximum divided by their number) and its circuit
//! breaker, which every node obeys.
//!
//! Invariant: a node talks to Redis about a destination once per sync interval while it has
//! work for it (`lane_sync.lua`), never once per attempt, plus one `lane_probe.lua` call per
//! half-open probe; at most one probe per destination is out cluster-wide.

use serde::Serialize;

use crate::redis::{as_i64, as_string, Redis, StoreError};

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Breaker {
    /// Attempts go out.
    Closed,
    /// Attempts are deferred (without spending their schedule) until the cooldown ends.
    Open,
    /// One probe at a time decides: success closes it, failure opens it again.
    HalfOpen,
}

impl Breaker {
    fn parse(s: &str) -> Self {
        match s {
            "open" => Breaker::Open,
            "half" => Breaker::HalfOpen,
            _ => Breaker::Closed,
        }
    }
}

/// What one node reports about a destination.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// The node's current limit for the destination.
    pub limit: u64,
    pub answered: u64,
    pub congested: u64,
    /// The result of a half-open probe that finished since the last report.
    pub probe: Option<bool>,
}

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerRules {
    pub window_ms: u64,
    pub cooldown_ms: u64,
    pub min_requests: u64,
    pub failure_percent: u64,
}

/// The shared state as a sync returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Shared {
    pub active_nodes: u64,
    pub breaker: Breaker,
    pub open_until: i64,
    /// What this sync changed: "opened", "half", "closed", "reopened".
    pub event: Option<String>,
}

/// Reports `report` for `destination` and reads its shared state.
pub async fn sync(
    redis: &Redis,
    node: &str,
    destination: &str,
    report: &Report,
    rules: BreakerRules,
    now_ms: i64,
) -> Result<Shared, StoreError> {
    let keys = redis.keys();
    let mut inv = redis.scripts().lane_sync.prepare_invoke();
    let probe = match report.probe {
        Some(true) => "ok",
        Some(false) => "fail",
        None => "",
    };
    inv.key(keys.lane(destination))
        .key(keys.lane_nodes(destination))
        .arg(node)
        .arg(now_ms)
        .arg(report.answered)
        .arg(report.congested)
        .arg(probe)
        .arg(rules.window_ms)
        .arg(rules.cooldown_ms)
        .arg(rules.min_requests)
        .arg(rules.failure_percent)
        .arg(report.limit);
    let reply: Vec<redis::Value> = redis.invoke(&inv).await?;
    let bad = || StoreError::Reply(format!("lane_sync: {reply:?}"));
    Ok(Shared {
        active_nodes: reply.first().and_then(as_i64).ok_or_else(bad)?.max(1) as u64,
        breaker: Breaker::parse(&reply.get(1).and_then(as_string).ok_or_else(bad)?),
        open_until: reply.get(2).and_then(as_i64).unwrap_or(0),
        event: reply.get(3).and_then(as_string).filter(|e| !e.is_empty()),
    })
}

/// Takes the destination's one half-open probe, if nobody holds it.
pub async fn take_probe(
    redis: &Redis,
    node: &str,
    destination: &str,
    hold_ms: u64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let mut inv = redis.scripts().lane_probe.prepare_invoke();
    inv.key(redis.keys().lane(destination))
        .arg(node)
        .arg(now_ms)
        .arg(hold_ms);
    let got: i64 = redis.invoke(&inv).await?;
    Ok(got == 1)
}

/// A destination's lane as the merchant view shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LaneView {
    pub destination: String,
    pub breaker: Breaker,
    pub open_until: Option<i64>,
    pub times_opened: i64,
    pub nodes_sending: u64,
    /// The sum of the current limits of the nodes sending to it.
    pub concurrency_limit: u64,
}

/// Reads a destination's lane.
pub async fn read(redis: &Redis, destination: &str, now_ms: i64) -> Result<LaneView, StoreError> {
    let keys = redis.keys();
    let mut pipe = redis::pipe();
    pipe.cmd("HGETALL").arg(keys.lane(destination));
    pipe.cmd("ZRANGE")
        .arg(keys.lane_nodes(destination))
        .arg(now_ms - 5000)
        .arg("+inf")
        .arg("BYSCORE");
    let (fields, nodes): (std::collections::HashMap<String, String>, Vec<String>) =
        redis.pipeline(&pipe).await?;
    let number = |k: &str| fields.get(k).and_then(|v| v.parse::<i64>().ok());
    let breaker = fields
        .get("state")
        .map_or(Breaker::Closed, |s| Breaker::parse(s));
    let concurrency_limit = nodes
        .iter()
        .filter_map(|n| number(&format!("limit:{n}")))
        .map(|l| l.max(0) as u64)
        .sum();
    Ok(LaneView {
        destination: destination.to_string(),
        breaker,
        open_until: number("open_until").filter(|_| breaker == Breaker::Open),
        times_opened: number("opened").unwrap_or(0),
        nodes_sending: nodes.len() as u64,
        concurrency_limit,
    })
}
