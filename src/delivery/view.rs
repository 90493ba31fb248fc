//! What operators see: one notification's record, the dead list and the counts. Reads only.
//!
//! Invariant: a view never shows a header value (they may be the merchant's credentials), and a
//! corrupt stored entry is an error naming the id, never a silent default.

use redis::Value;
use serde_json::{json, Value as Json};

use super::meta::{Meta, State};
use super::store::Store;
use crate::redis::{as_i64, PartitionKeys, Result};

/// Counts across partitions.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub scheduled: i64,
    pub delivering: i64,
    pub delivered: i64,
    pub dead: i64,
    /// Entries whose time has come (including expired leases) but that nobody holds.
    pub due_backlog: i64,
    /// Age (ms) of the oldest entry in the backlog, 0 when there is none.
    pub oldest_overdue_ms: i64,
    /// Totals since the partition was created.
    pub total_enqueued: i64,
    pub total_attempts: i64,
    pub total_delivered: i64,
    pub total_dead: i64,
    pub intake_pending: i64,
}

impl Store {
    /// The full record of one notification, or `None` if unknown (or past retention).
    pub async fn show(&self, id: &str) -> Result<Option<Json>> {
        let keys = self.redis().keys();
        let pk = keys.partition(keys.partition_of(id));
        let (spec, meta, log): (Option<String>, Option<String>, Option<String>) = self
            .redis()
            .pipeline(
                redis::pipe()
                    .hget(&pk.spec, id)
                    .hget(&pk.meta, id)
                    .hget(&pk.log, id),
            )
            .await?;
        // A delivered entry is compacted: no spec, no log, its summary in meta.
        let Some(meta) = meta else {
            return Ok(None);
        };
        render(id, spec.as_deref(), &meta, log.as_deref()).map(Some)
    }

    /// The oldest dead notifications of each partition (id, died at ms, reason), up to `limit`.
    pub async fn dead_list(&self, limit: usize) -> Result<Vec<Json>> {
        let mut out = Vec::new();
        let keys = self.redis().keys();
        for p in 0..keys.partitions() {
            let pk = keys.partition(p);
            let ids: Vec<(String, f64)> = self
                .redis()
                .query(
                    redis::cmd("ZRANGE")
                        .arg(&pk.dead)
                        .arg(0)
                        .arg(limit.saturating_sub(1))
                        .arg("WITHSCORES"),
                )
                .await?;
            if ids.is_empty() {
                continue;
            }
            let metas: Vec<Option<String>> = self
                .redis()
                .query(
                    redis::cmd("HMGET")
                        .arg(&pk.meta)
                        .arg(ids.iter().map(|(id, _)| id).collect::<Vec<_>>()),
                )
                .await?;
            for ((id, died), meta) in ids.into_iter().zip(metas) {
                // No meta: the retention sweep forgot the entry between the two reads.
                let Some(meta) = meta else { continue };
                let meta = Meta::decode(&id, &meta)?;
                out.push(json!({
                    "id": id,
                    "died_at": died as i64,
                    "reason": meta.reason,
                    "attempts": meta.attempts,
                }));
            }
        }
        out.sort_by_key(|e| e["died_at"].as_i64().unwrap_or(0));
        out.truncate(limit);
        Ok(out)
    }

    /// Counts per state, backlog and totals.
    pub async fn stats(&self, now_ms: i64) -> Result<Stats> {
        let mut s = Stats::default();
        let mut oldest: Option<i64> = None;
        let keys = self.redis().keys();
        for p in 0..keys.partitions() {
            let pk: PartitionKeys = keys.partition(p);
            #[allow(clippy::type_complexity)]
            let (due, counters, done, dead, backlog, head): (
                i64,
                std::collections::HashMap<String, i64>,
                i64,
                i64,
                i64,
                Vec<(String, f64)>,
            ) = self
                .redis()
                .pipeline(
                    redis::pipe()
                        .zcard(&pk.due)
                        .hgetall(&pk.stats)
                        .zcard(&pk.done)
                        .zcard(&pk.dead)
                        .zcount(&pk.due, "-inf", now_ms)
                        .zrange_withscores(&pk.due, 0, 0),
                )
                .await?;
            let delivering = counters.get("delivering").copied().unwrap_or(0).max(0);
            s.delivering += delivering;
            s.scheduled += (due - delivering).max(0);
            s.delivered += done;
            s.dead += dead;
            s.due_backlog += backlog;
            s.total_enqueued += counters.get("enqueued").copied().unwrap_or(0);
            s.total_attempts += counters.get("attempts").copied().unwrap_or(0);
            s.total_delivered += counters.get("delivered").copied().unwrap_or(0);
            s.total_dead += counters.get("dead").copied().unwrap_or(0);
            if let Some((_, score)) = head.first() {
                let score = *score as i64;
                if score <= now_ms {
                    oldest = Some(oldest.map_or(score, |o: i64| o.min(score)));
                }
            }
        }
        s.oldest_overdue_ms = oldest.map_or(0, |o| now_ms - o);
        // No group yet (nothing ever read): XPENDING fails, and the length is the answer.
        let pending: Result<Value> = self
            .redis()
            .query(
                redis::cmd("XPENDING")
                    .arg(keys.intake())
                    .arg(keys.intake_group()),
            )
            .await;
        let length: i64 = self
            .redis()
            .query(redis::cmd("XLEN").arg(keys.intake()))
            .await
            .unwrap_or(0);
        s.intake_pending = match pending {
            Ok(Value::Array(items)) => length.max(items.first().and_then(as_i64).unwrap_or(0)),
            _ => length,
        };
        Ok(s)
    }
}

/// Builds the public JSON view of a notification from its stored parts; a corrupt meta entry
/// is an error naming the id.
fn render(id: &str, spec: Option<&str>, meta: &str, log: Option<&str>) -> Result<Json> {
    let mut spec: Json = spec
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Json::Null);
    // Header values may be the merchant's credentials: views show the names only.
    if let Some(headers) = spec.get_mut("headers").and_then(Json::as_object_mut) {
        for value in headers.values_mut() {
            *value = Json::String("<redacted>".into());
        }
    }
    let meta = Meta::decode(id, meta)?;
    let mut attempts: Json = log
        .and_then(|l| serde_json::from_str(&format!("[{l}]")).ok())
        .unwrap_or_else(|| json!([]));
    let compacted = spec.is_null() && meta.state == State::Delivered;
    if compacted {
        // Only the delivering attempt is kept, as a summary.
        attempts = json!([{
            "attempt": meta.attempts,
            "started_at": meta.last_started,
            "status": meta.last_status,
            "latency_ms": meta.last_latency_ms,
            "node": meta.last_node,
            "error": null,
        }]);
    }
    let url = spec
        .get("url")
        .cloned()
        .or_else(|| meta.url.clone().map(Json::String));
    let mut out = json!({
        "id": id,
        "state": meta.state.as_str(),
        "url": url,
        "created_at": meta.created,
        "next_attempt_at": if meta.state == State::Scheduled { meta.next_at } else { None },
        "attempts": attempts,
        "attempts_made": meta.attempts,
        "stalls": meta.stalls,
        "spec": spec,
    });
    if meta.state == State::Delivering {
        out["lease_until"] = json!(meta.lease_until);
        out["owner"] = json!(meta.owner);
    }
    if let Some(finished) = meta.finished {
        out[if meta.state == State::Dead {
            "died_at"
        } else {
            "delivered_at"
        }] = json!(finished);
    }
    if let Some(reason) = meta.reason {
        out["reason"] = json!(reason);
    }
    if compacted {
        out["compacted"] = json!(true);
        out["merchant"] = json!(meta.merchant);
        out["spec_digest"] = json!(meta.digest);
        out["earlier_attempts"] = json!(meta.attempts.saturating_sub(1));
    }
    Ok(out)
}
