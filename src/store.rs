//! Redis operations on notifications: every state change goes through one script of `lua/`.
//!
//! Invariant: a notification is in exactly one of these states, recorded in its meta entry and
//! mirrored by set membership: `scheduled` (in the due set, score = next attempt), `delivering`
//! (in the due set, score = lease expiry, with an owner and a fencing token), `delivered` (in the
//! done set until retention ends) or `dead` (in the dead set). Outcomes carry the claim's token
//! and are ignored when it no longer matches.

use redis::Value;
use serde_json::{json, Value as Json};

use crate::backend::{Conn, Target};
use crate::keys::{Keys, PartitionKeys};
use crate::notification::NewNotification;
use crate::scripts::Scripts;

/// Redis failures and unexpected replies.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
    #[error("stored, but only {got} of {wanted} replicas confirmed it within {timeout_ms} ms; send it again (enqueue is idempotent)")]
    NotReplicated {
        wanted: u32,
        got: i64,
        timeout_ms: u64,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq)]
pub enum Enqueued {
    /// New notification, first due at this time (ms).
    Created { due_ms: i64 },
    /// The same id with the same content exists already (in this state).
    Exists { state: String },
    /// The same id exists with different content.
    Conflict { state: String },
}

/// A claimed notification.
/// What refreshing a device's presence found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Still this connection's; its TTL is renewed.
    Refreshed,
    /// Another connection holds the device now.
    Replaced,
    /// No entry at all (expired, or Redis restarted empty): join again.
    Missing,
}

#[derive(Debug, Clone)]
pub struct Claimed {
    pub partition: u32,
    pub id: String,
    pub token: i64,
    /// 1-based attempt number over the notification's life.
    pub attempt: u32,
    /// 0-based position in the current round of the schedule (a replay starts a new round).
    pub round_index: u32,
    pub due_ms: i64,
    pub spec: String,
}

/// The outcome of one attempt, to settle.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub id: String,
    pub token: i64,
    pub verdict: Settled,
    pub next_ms: i64,
    pub reason: String,
    pub record: String,
}

/// What settling an attempt does to its notification; `settle.lua` refuses any other word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Done: into the done set until retention ends.
    Delivered,
    /// Scheduled again at the settlement's `next_ms`.
    Retry,
    /// Into the dead set, with the settlement's reason.
    Dead,
}

impl Settled {
    /// The word `settle.lua` expects (also the `outcome` label of the attempts metric).
    pub fn as_str(self) -> &'static str {
        match self {
            Settled::Delivered => "delivered",
            Settled::Retry => "retry",
            Settled::Dead => "dead",
        }
    }
}

/// What one retention batch removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub done: usize,
    pub dead: usize,
}

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

/// Handle to the notification store. Cheap to clone.
///
/// Every call goes over one multiplexed, auto-reconnecting connection (redis-rs'
/// `ConnectionManager`): concurrent calls are pipelined on it, and unlike a pool checkout there
/// is no health-check round trip per call.
#[derive(Clone)]
pub struct Store {
    target: Target,
    shared: std::sync::Arc<tokio::sync::OnceCell<Conn>>,
    /// Opt-in `WAIT replicas timeout_ms` after each enqueue.
    wait: Option<(u32, u64)>,
    keys: Keys,
    /// Shared: the scripts' source text is ~15 KB, and a `Store` is cloned into every
    /// websocket's state (an owned copy cost ~20 KB per connection).
    scripts: std::sync::Arc<Scripts>,
}

impl Store {
    /// A store on the standalone server at `url` (no round trip yet; the connection is made
    /// on first use).
    pub fn connect(url: &str, keys: Keys) -> Result<Self> {
        Ok(Self::on(
            Target::open(url, false, &Default::default())?,
            keys,
        ))
    }

    /// A store on `target`, standalone or Cluster (no round trip yet).
    pub fn on(target: Target, keys: Keys) -> Self {
        Self {
            target,
            shared: Default::default(),
            wait: None,
            keys,
            scripts: std::sync::Arc::new(Scripts::new()),
        }
    }

    /// After every enqueue, waits (Redis `WAIT`) until `replicas` replicas have the write, at
    /// most `timeout`; an enqueue they do not confirm fails with [`StoreError::NotReplicated`].
    /// `replicas == 0` turns it off.
    pub fn with_wait(mut self, replicas: u32, timeout: std::time::Duration) -> Self {
        self.wait = (replicas > 0).then_some((replicas, timeout.as_millis().max(1) as u64));
        self
    }

    /// Where Redis is (for the connections a caller needs of its own: pub/sub, blocking reads).
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The key builder.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The shared connection (a cheap clone), for the few plain commands outside this module.
    pub async fn conn(&self) -> Result<Conn> {
        let conn = self.shared.get_or_try_init(|| self.target.shared()).await?;
        Ok(conn.clone())
    }

    /// Loads every script (`SCRIPT LOAD`), which also proves Redis is reachable.
    pub async fn load_scripts(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        for (_, script) in self.scripts.all() {
            script.prepare_invoke().load_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Enqueues one notification. `now_ms` is the enqueue time.
    pub async fn enqueue(&self, n: &NewNotification, now_ms: i64) -> Result<Enqueued> {
        let pk = self.keys.partition(self.keys.partition_of(&n.id));
        let mut conn = self.conn().await?;
        let reply: Vec<Value> = self
            .scripts
            .enqueue
            .key(&pk.due)
            .key(&pk.spec)
            .key(&pk.meta)
            .key(&pk.seq)
            .key(&pk.stats)
            .arg(&n.id)
            .arg(n.spec.to_json())
            .arg(n.spec.first_due(now_ms))
            .arg(now_ms)
            .arg(self.keys.wake_channel(self.keys.partition_of(&n.id)))
            .invoke_async(&mut conn)
            .await?;
        let kind = reply.first().and_then(as_string).unwrap_or_default();
        let second = reply.get(1);
        if let (Some((wanted, timeout_ms)), "created" | "exists") = (self.wait, kind.as_str()) {
            // WAIT covers every write made before it on this connection, this one included.
            let got: i64 = redis::cmd("WAIT")
                .arg(wanted)
                .arg(timeout_ms)
                .query_async(&mut conn)
                .await?;
            if got < i64::from(wanted) {
                return Err(StoreError::NotReplicated {
                    wanted,
                    got,
                    timeout_ms,
                });
            }
        }
        Ok(match kind.as_str() {
            "created" => Enqueued::Created {
                due_ms: second.and_then(as_i64).unwrap_or(now_ms),
            },
            "exists" => Enqueued::Exists {
                state: second.and_then(as_string).unwrap_or_default(),
            },
            "conflict" => Enqueued::Conflict {
                state: second.and_then(as_string).unwrap_or_default(),
            },
            other => return Err(StoreError::Reply(format!("enqueue answered {other:?}"))),
        })
    }

    /// Claims up to `limit` due entries of partition `p`. Returns the earliest score left in the
    /// due set (if any) and the claimed entries.
    pub async fn claim(
        &self,
        p: u32,
        now_ms: i64,
        lease_ms: u64,
        limit: usize,
        owner: &str,
        max_stalls: u32,
    ) -> Result<(Option<i64>, Vec<Claimed>)> {
        let pk = self.keys.partition(p);
        let mut conn = self.conn().await?;
        let reply: Vec<Value> = self
            .scripts
            .claim
            .key(&pk.due)
            .key(&pk.spec)
            .key(&pk.meta)
            .key(&pk.seq)
            .key(&pk.dead)
            .key(&pk.stats)
            .arg(now_ms)
            .arg(lease_ms)
            .arg(limit)
            .arg(owner)
            .arg(max_stalls)
            .invoke_async(&mut conn)
            .await?;
        let head = head_of(&reply);
        let mut claimed = Vec::with_capacity(reply.len().saturating_sub(1) / 6);
        for chunk in reply.get(1..).unwrap_or_default().chunks_exact(6) {
            let bad = || StoreError::Reply("claim returned a malformed entry".into());
            claimed.push(Claimed {
                partition: p,
                id: as_string(&chunk[0]).ok_or_else(bad)?,
                token: as_i64(&chunk[1]).ok_or_else(bad)?,
                attempt: as_i64(&chunk[2]).ok_or_else(bad)? as u32,
                round_index: as_i64(&chunk[3]).ok_or_else(bad)? as u32,
                due_ms: as_i64(&chunk[4]).ok_or_else(bad)?,
                spec: as_string(&chunk[5]).ok_or_else(bad)?,
            });
        }
        Ok((head, claimed))
    }

    /// Settles a batch of outcomes in partition `p`. Returns the earliest score left and, per
    /// outcome, whether it was applied (false: fenced off, the lease was lost).
    pub async fn settle(
        &self,
        p: u32,
        now_ms: i64,
        outcomes: &[Settlement],
    ) -> Result<(Option<i64>, Vec<bool>)> {
        let pk = self.keys.partition(p);
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.settle.prepare_invoke();
        inv.key(&pk.due)
            .key(&pk.meta)
            .key(&pk.log)
            .key(&pk.done)
            .key(&pk.dead)
            .key(&pk.stats)
            .arg(now_ms);
        for o in outcomes {
            inv.arg(&o.id)
                .arg(o.token)
                .arg(o.verdict.as_str())
                .arg(o.next_ms)
                .arg(&o.reason)
                .arg(&o.record);
        }
        let reply: Vec<Value> = inv.invoke_async(&mut conn).await?;
        let applied = reply
            .get(1..)
            .unwrap_or_default()
            .iter()
            .map(|v| as_i64(v) == Some(1))
            .collect();
        Ok((head_of(&reply), applied))
    }

    /// Hands leased entries of partition `p` back, due at the given times, without counting an
    /// attempt. Returns how many were released.
    pub async fn release(&self, p: u32, entries: &[(String, i64, i64)]) -> Result<i64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let pk = self.keys.partition(p);
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(&pk.due)
            .key(&pk.meta)
            .key(&pk.stats)
            .arg(self.keys.wake_channel(p));
        for (id, token, at) in entries {
            inv.arg(id).arg(token).arg(at);
        }
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Extends leases in partition `p` to `until_ms`. Returns, per entry, whether it was renewed.
    pub async fn renew(
        &self,
        p: u32,
        until_ms: i64,
        entries: &[(String, i64)],
    ) -> Result<Vec<bool>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let pk = self.keys.partition(p);
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.renew.prepare_invoke();
        inv.key(&pk.due).key(&pk.meta).arg(until_ms);
        for (id, token) in entries {
            inv.arg(id).arg(token);
        }
        let reply: Vec<i64> = inv.invoke_async(&mut conn).await?;
        Ok(reply.into_iter().map(|r| r == 1).collect())
    }

    /// Replays the given dead notifications now. Returns the ids replayed.
    pub async fn replay(&self, ids: &[String], now_ms: i64) -> Result<Vec<String>> {
        let mut by_partition: std::collections::BTreeMap<u32, Vec<&String>> = Default::default();
        for id in ids {
            by_partition
                .entry(self.keys.partition_of(id))
                .or_default()
                .push(id);
        }
        let mut replayed = Vec::new();
        for (p, ids) in by_partition {
            let pk = self.keys.partition(p);
            let mut conn = self.conn().await?;
            let mut inv = self.scripts.replay.prepare_invoke();
            inv.key(&pk.due)
                .key(&pk.meta)
                .key(&pk.dead)
                .arg(now_ms)
                .arg(self.keys.wake_channel(p))
                .arg("ids");
            for id in ids {
                inv.arg(id);
            }
            let got: Vec<String> = inv.invoke_async(&mut conn).await?;
            replayed.extend(got);
        }
        Ok(replayed)
    }

    /// Replays every dead notification, in batches of 500 per partition. Returns the count.
    pub async fn replay_all(&self, now_ms: i64) -> Result<usize> {
        let mut total = 0;
        for p in 0..self.keys.partitions() {
            let pk = self.keys.partition(p);
            loop {
                let mut conn = self.conn().await?;
                let got: Vec<String> = self
                    .scripts
                    .replay
                    .key(&pk.due)
                    .key(&pk.meta)
                    .key(&pk.dead)
                    .arg(now_ms)
                    .arg(self.keys.wake_channel(p))
                    .arg("oldest")
                    .arg(500)
                    .invoke_async(&mut conn)
                    .await?;
                total += got.len();
                if got.len() < 500 {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Forgets one batch in partition `p`: at most `limit` (1..=5000) delivered entries
    /// finished at or before `done_cutoff` and as many dead ones that died at or before
    /// `dead_cutoff`. Returns how many of each were removed; a full batch means there may be
    /// more (the retention task loops).
    pub async fn sweep_batch(
        &self,
        p: u32,
        done_cutoff: i64,
        dead_cutoff: i64,
        limit: usize,
    ) -> Result<Swept> {
        let pk = self.keys.partition(p);
        let mut conn = self.conn().await?;
        let (done, dead): (usize, usize) = self
            .scripts
            .sweep
            .key(&pk.done)
            .key(&pk.dead)
            .key(&pk.spec)
            .key(&pk.meta)
            .key(&pk.log)
            .arg(done_cutoff)
            .arg(dead_cutoff)
            .arg(limit)
            .invoke_async(&mut conn)
            .await?;
        Ok(Swept { done, dead })
    }

    /// Stores an order's latest result and publishes it (one script); returns its sequence number.
    pub async fn publish_result(
        &self,
        order_id: &str,
        payload: &str,
        ttl_secs: u64,
    ) -> Result<u64> {
        let mut conn = self.conn().await?;
        Ok(self
            .scripts
            .publish
            .key(self.keys.order_result(order_id))
            .arg(payload)
            .arg(ttl_secs)
            .arg(self.keys.order_channel(order_id))
            .invoke_async(&mut conn)
            .await?)
    }

    /// An order's latest result: its sequence number and payload JSON.
    pub async fn read_result(&self, order_id: &str) -> Result<Option<(u64, String)>> {
        let mut conn = self.conn().await?;
        let (seq, result): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.order_result(order_id))
            .arg("seq")
            .arg("result")
            .query_async(&mut conn)
            .await?;
        Ok(seq.zip(result))
    }

    /// Records a device's connection; returns the connection it replaced (node, connection id).
    pub async fn device_join(
        &self,
        device_id: &str,
        node: &str,
        conn_id: &str,
        ttl_ms: u64,
    ) -> Result<Option<(String, String)>> {
        let mut conn = self.conn().await?;
        let prev: Vec<String> = self
            .scripts
            .device_join
            .key(self.keys.device_presence(device_id))
            .arg(node)
            .arg(conn_id)
            .arg(crate::now_ms())
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(match prev.as_slice() {
            [node, conn] => Some((node.clone(), conn.clone())),
            _ => None,
        })
    }

    /// Refreshes a device's presence; false when another connection owns it now.
    pub async fn device_touch(&self, device_id: &str, conn_id: &str, ttl_ms: u64) -> Result<Touch> {
        let mut conn = self.conn().await?;
        let n: i64 = self
            .scripts
            .device_touch
            .key(self.keys.device_presence(device_id))
            .arg(conn_id)
            .arg(crate::now_ms())
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(match n {
            1 => Touch::Refreshed,
            0 => Touch::Replaced,
            _ => Touch::Missing,
        })
    }

    /// Holds node id `node_id` for `instance` for `ttl_ms` (0: lets go of it). False when
    /// another live instance holds it.
    pub async fn hold_node_id(&self, node_id: &str, instance: &str, ttl_ms: u64) -> Result<bool> {
        let mut conn = self.conn().await?;
        let n: i64 = self
            .scripts
            .node_id
            .key(self.keys.node_alive(node_id))
            .arg(instance)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Removes a device's presence if `conn_id` still owns it.
    pub async fn device_leave(&self, device_id: &str, conn_id: &str) -> Result<()> {
        let mut conn = self.conn().await?;
        let _: i64 = self
            .scripts
            .device_leave
            .key(self.keys.device_presence(device_id))
            .arg(conn_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Where a device is connected: `{node, conn, since, last_seen}`, empty when offline.
    pub async fn device_presence(
        &self,
        device_id: &str,
    ) -> Result<std::collections::HashMap<String, String>> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("HGETALL")
            .arg(self.keys.device_presence(device_id))
            .query_async(&mut conn)
            .await?)
    }

    /// Publishes on a node's channel; returns how many subscribers got it (0: the node is gone).
    pub async fn publish_to_node(&self, node: &str, message: &str) -> Result<i64> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("SPUBLISH")
            .arg(self.keys.node_channel(node))
            .arg(message)
            .query_async(&mut conn)
            .await?)
    }

    /// Acknowledges and deletes intake entries.
    pub async fn intake_ack(&self, entry_ids: &[String]) -> Result<()> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let mut inv = self.scripts.intake_ack.prepare_invoke();
        inv.key(self.keys.intake()).arg(self.keys.intake_group());
        for id in entry_ids {
            inv.arg(id);
        }
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// The full record of one notification, or `None` if unknown (or past retention).
    pub async fn show(&self, id: &str) -> Result<Option<Json>> {
        let pk = self.keys.partition(self.keys.partition_of(id));
        let mut conn = self.conn().await?;
        let (spec, meta, log): (Option<String>, Option<String>, Option<String>) = redis::pipe()
            .hget(&pk.spec, id)
            .hget(&pk.meta, id)
            .hget(&pk.log, id)
            .query_async(&mut conn)
            .await?;
        let (Some(spec), Some(meta)) = (spec, meta) else {
            return Ok(None);
        };
        Ok(Some(render(id, &spec, &meta, log.as_deref())))
    }

    /// The oldest dead notifications of each partition (id, died at ms, reason), up to `limit`.
    pub async fn dead_list(&self, limit: usize) -> Result<Vec<Json>> {
        let mut out = Vec::new();
        for p in 0..self.keys.partitions() {
            let pk = self.keys.partition(p);
            let mut conn = self.conn().await?;
            let ids: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(&pk.dead)
                .arg(0)
                .arg(limit.saturating_sub(1))
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await?;
            if ids.is_empty() {
                continue;
            }
            let metas: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(&pk.meta)
                .arg(ids.iter().map(|(id, _)| id).collect::<Vec<_>>())
                .query_async(&mut conn)
                .await?;
            for ((id, died), meta) in ids.into_iter().zip(metas) {
                let meta: Json = meta
                    .and_then(|m| serde_json::from_str(&m).ok())
                    .unwrap_or(Json::Null);
                out.push(json!({
                    "id": id,
                    "died_at": died as i64,
                    "reason": meta.get("r").cloned().unwrap_or(Json::Null),
                    "attempts": meta.get("a").cloned().unwrap_or(Json::Null),
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
        for p in 0..self.keys.partitions() {
            let pk: PartitionKeys = self.keys.partition(p);
            let mut conn = self.conn().await?;
            #[allow(clippy::type_complexity)]
            let (due, counters, done, dead, backlog, head): (
                i64,
                std::collections::HashMap<String, i64>,
                i64,
                i64,
                i64,
                Vec<(String, f64)>,
            ) = redis::pipe()
                .zcard(&pk.due)
                .hgetall(&pk.stats)
                .zcard(&pk.done)
                .zcard(&pk.dead)
                .zcount(&pk.due, "-inf", now_ms)
                .zrange_withscores(&pk.due, 0, 0)
                .query_async(&mut conn)
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
        let mut conn = self.conn().await?;
        let pending: redis::RedisResult<Value> = redis::cmd("XPENDING")
            .arg(self.keys.intake())
            .arg(self.keys.intake_group())
            .query_async(&mut conn)
            .await;
        let length: i64 = redis::cmd("XLEN")
            .arg(self.keys.intake())
            .query_async(&mut conn)
            .await
            .unwrap_or(0);
        s.intake_pending = match pending {
            Ok(Value::Array(items)) => length.max(items.first().and_then(as_i64).unwrap_or(0)),
            _ => length,
        };
        Ok(s)
    }
}

/// Builds the public JSON view of a notification from its stored parts.
fn render(id: &str, spec: &str, meta: &str, log: Option<&str>) -> Json {
    let mut spec: Json = serde_json::from_str(spec).unwrap_or(Json::Null);
    // Header values may be the merchant's credentials: views show the names only.
    if let Some(headers) = spec.get_mut("headers").and_then(Json::as_object_mut) {
        for value in headers.values_mut() {
            *value = Json::String("<redacted>".into());
        }
    }
    let meta: Json = serde_json::from_str(meta).unwrap_or(Json::Null);
    let attempts: Json = log
        .and_then(|l| serde_json::from_str(&format!("[{l}]")).ok())
        .unwrap_or_else(|| json!([]));
    let state = meta.get("s").and_then(Json::as_str).unwrap_or("unknown");
    // Times are stored as strings (cheaper for the scripts); the API shows numbers.
    let time = |k: &str| -> Json {
        match meta.get(k) {
            Some(Json::String(s)) => s.parse::<i64>().map(Json::from).unwrap_or(Json::Null),
            Some(v) => v.clone(),
            None => Json::Null,
        }
    };
    let mut out = json!({
        "id": id,
        "state": state,
        "url": spec.get("url"),
        "created_at": time("c"),
        "next_attempt_at": if state == "scheduled" { time("n") } else { Json::Null },
        "attempts": attempts,
        "stalls": meta.get("st"),
        "spec": spec,
    });
    if state == "delivering" {
        out["lease_until"] = time("l");
        out["owner"] = meta.get("o").cloned().unwrap_or(Json::Null);
    }
    if meta.get("f").is_some() {
        out[if state == "dead" {
            "died_at"
        } else {
            "delivered_at"
        }] = time("f");
    }
    if let Some(r) = meta.get("r") {
        out["reason"] = r.clone();
    }
    out
}

fn head_of(reply: &[Value]) -> Option<i64> {
    reply.first().and_then(as_i64).filter(|h| *h >= 0)
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}
