//! The notification store: every state change of a notification is one script of `lua/`.
//!
//! Invariant: a notification is in exactly one of these states, recorded in its meta entry and
//! mirrored by set membership: `scheduled` (in the due set, score = next attempt), `delivering`
//! (in the due set, score = lease expiry, with an owner and a fencing token), `delivered` (in the
//! done set until retention ends) or `dead` (in the dead set). Outcomes carry the claim's token
//! and are ignored when it no longer matches.

use redis::Value;

use crate::delivery::schema::NewNotification;
use crate::redis::{as_i64, as_string, Keys, Redis, Result, StoreError};

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

/// One claim call's terms (see `lua/claim.lua`).
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub now_ms: i64,
    /// Claim entries scored up to this time (ms).
    pub horizon_ms: i64,
    pub lease_ms: u64,
    pub limit: usize,
    /// The claiming node's id.
    pub owner: &'a str,
    pub max_stalls: u32,
}

/// A claimed notification.
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

/// One notification's answer from `enqueue.lua`: its kind and its due time or state.
fn enqueued_of(pair: &[Value]) -> Result<Enqueued> {
    let kind = pair.first().and_then(as_string).unwrap_or_default();
    let second = pair.get(1);
    let state = || {
        second
            .and_then(as_string)
            .ok_or_else(|| StoreError::Reply(format!("enqueue answered {kind:?} without a state")))
    };
    Ok(match kind.as_str() {
        "created" => Enqueued::Created {
            due_ms: second.and_then(as_i64).ok_or_else(|| {
                StoreError::Reply("enqueue answered created without a due time".into())
            })?,
        },
        "exists" => Enqueued::Exists { state: state()? },
        "conflict" => Enqueued::Conflict { state: state()? },
        other => return Err(StoreError::Reply(format!("enqueue answered {other:?}"))),
    })
}

/// The notification store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    redis: Redis,
}

impl Store {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// A store on the standalone server at `url` (no round trip yet).
    pub fn connect(url: &str, keys: Keys) -> Result<Self> {
        Ok(Self::new(Redis::connect(url, keys)?))
    }

    /// The key builder.
    pub fn keys(&self) -> &Keys {
        self.redis.keys()
    }

    /// The Redis handle (for the worker's wake-up follower).
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Loads every script (`SCRIPT LOAD`).
    pub async fn load_scripts(&self) -> Result<()> {
        self.redis.load_scripts().await
    }

    /// Enqueues one notification. `now_ms` is the enqueue time. With `--wait-replicas`, a
    /// created (or already stored) notification is confirmed by the replicas before this
    /// answers.
    pub async fn enqueue(&self, n: &NewNotification, now_ms: i64) -> Result<Enqueued> {
        let mut out = self.enqueue_partition(&[n], now_ms).await?;
        out.pop()
            .ok_or_else(|| StoreError::Reply("enqueue answered nothing".into()))
    }

    /// Enqueues a batch in order: one `enqueue.lua` call per partition the batch touches (its
    /// keys share the partition's hash tag), the calls concurrent. Answers in the batch's order;
    /// an error fails the whole batch (some partitions may have taken theirs: enqueueing again
    /// answers `Exists`). With `--wait-replicas`, as [`enqueue`](Self::enqueue).
    pub async fn enqueue_batch(
        &self,
        batch: &[NewNotification],
        now_ms: i64,
    ) -> Result<Vec<Enqueued>> {
        let keys = self.redis.keys();
        let mut by_partition: Vec<(u32, Vec<usize>)> = Vec::new();
        for (i, n) in batch.iter().enumerate() {
            let p = keys.partition_of(&n.id);
            match by_partition.iter_mut().find(|(q, _)| *q == p) {
                Some((_, members)) => members.push(i),
                None => by_partition.push((p, vec![i])),
            }
        }
        let calls = by_partition.iter().map(|(_, members)| {
            let ns: Vec<&NewNotification> = members.iter().map(|&i| &batch[i]).collect();
            async move { self.enqueue_partition(&ns, now_ms).await }
        });
        let replies = futures::future::join_all(calls).await;
        let mut out: Vec<Option<Enqueued>> = vec![None; batch.len()];
        for ((_, members), reply) in by_partition.iter().zip(replies) {
            for (&i, e) in members.iter().zip(reply?) {
                out[i] = Some(e);
            }
        }
        out.into_iter()
            .map(|e| e.ok_or_else(|| StoreError::Reply("enqueue answered too few".into())))
            .collect()
    }

    /// One `enqueue.lua` call for notifications of one partition.
    async fn enqueue_partition(
        &self,
        ns: &[&NewNotification],
        now_ms: i64,
    ) -> Result<Vec<Enqueued>> {
        let Some(first) = ns.first() else {
            return Ok(Vec::new());
        };
        let keys = self.redis.keys();
        let p = keys.partition_of(&first.id);
        let pk = keys.partition(p);
        let mut inv = self.redis.scripts().enqueue.prepare_invoke();
        inv.key(&pk.due)
            .key(&pk.spec)
            .key(&pk.meta)
            .key(&pk.seq)
            .key(&pk.stats)
            .arg(now_ms)
            .arg(keys.wake_channel(p));
        for n in ns {
            // enqueue.lua formats the new meta entry without escaping (meta.lua
            // meta_new_encoded): only an id of the schema's characters may reach it.
            crate::delivery::schema::validate_id(&n.id).map_err(|reason| {
                StoreError::InvalidId {
                    id: n.id.clone(),
                    reason,
                }
            })?;
            let spec_json = n.spec.to_json();
            let digest = crate::delivery::meta::spec_digest(&spec_json);
            inv.arg(&n.id)
                .arg(spec_json)
                .arg(n.spec.first_due(now_ms))
                .arg(digest);
        }
        let reply: Vec<Value> = self
            .redis
            .invoke_durably(&inv, |reply: &Vec<Value>| {
                reply.chunks(2).any(|r| {
                    matches!(
                        r.first().and_then(as_string).as_deref(),
                        Some("created" | "exists")
                    )
                })
            })
            .await?;
        if reply.len() != 2 * ns.len() {
            return Err(StoreError::Reply(format!(
                "enqueue answered {} elements for {} notifications",
                reply.len(),
                ns.len()
            )));
        }
        reply.chunks(2).map(enqueued_of).collect()
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
        self.claim_until(
            p,
            &Claim {
                now_ms,
                horizon_ms: now_ms,
                lease_ms,
                limit,
                owner,
                max_stalls,
            },
        )
        .await
    }

    /// Claims up to `c.limit` entries of partition `p` scored up to `c.horizon_ms`: above now
    /// it prefetches entries falling due soon (the caller holds them until due), below now it
    /// takes only overdue ones. Returns the earliest score left and the claimed entries.
    pub async fn claim_until(&self, p: u32, c: &Claim<'_>) -> Result<(Option<i64>, Vec<Claimed>)> {
        let pk = self.redis.keys().partition(p);
        let reply: Vec<Value> = self
            .redis
            .invoke(
                self.redis
                    .scripts()
                    .claim
                    .key(&pk.due)
                    .key(&pk.spec)
                    .key(&pk.meta)
                    .key(&pk.seq)
                    .key(&pk.dead)
                    .key(&pk.stats)
                    .arg(c.now_ms)
                    .arg(c.lease_ms)
                    .arg(c.limit)
                    .arg(c.owner)
                    .arg(c.max_stalls)
                    .arg(c.horizon_ms),
            )
            .await?;
        let head = head_of(&reply);
        let entries = reply.get(1..).unwrap_or_default();
        if entries.len() % 6 != 0 {
            // A short trailing entry would be leased and never attempted: say so instead.
            return Err(StoreError::Reply(format!(
                "claim returned {} values after the head, not 6 per entry",
                entries.len()
            )));
        }
        let mut claimed = Vec::with_capacity(entries.len() / 6);
        for chunk in entries.chunks_exact(6) {
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
        let pk = self.redis.keys().partition(p);
        let mut inv = self.redis.scripts().settle.prepare_invoke();
        inv.key(&pk.due)
            .key(&pk.meta)
            .key(&pk.log)
            .key(&pk.done)
            .key(&pk.dead)
            .key(&pk.stats)
            .key(self.redis.keys().attempts_hour(p, now_ms / 3_600_000))
            .key(&pk.spec)
            .arg(now_ms);
        for o in outcomes {
            inv.arg(&o.id)
                .arg(o.token)
                .arg(o.verdict.as_str())
                .arg(o.next_ms)
                .arg(&o.reason)
                .arg(&o.record);
        }
        let reply: Vec<Value> = self.redis.invoke(&inv).await?;
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
        let pk = self.redis.keys().partition(p);
        let mut inv = self.redis.scripts().release.prepare_invoke();
        inv.key(&pk.due)
            .key(&pk.meta)
            .key(&pk.stats)
            .arg(self.redis.keys().wake_channel(p));
        for (id, token, at) in entries {
            inv.arg(id).arg(token).arg(at);
        }
        self.redis.invoke(&inv).await
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
        let pk = self.redis.keys().partition(p);
        let mut inv = self.redis.scripts().renew.prepare_invoke();
        inv.key(&pk.due).key(&pk.meta).arg(until_ms);
        for (id, token) in entries {
            inv.arg(id).arg(token);
        }
        let reply: Vec<i64> = self.redis.invoke(&inv).await?;
        Ok(reply.into_iter().map(|r| r == 1).collect())
    }

    /// Replays the given dead notifications now. Returns the ids replayed.
    pub async fn replay(&self, ids: &[String], now_ms: i64) -> Result<Vec<String>> {
        let mut by_partition: std::collections::BTreeMap<u32, Vec<&String>> = Default::default();
        for id in ids {
            by_partition
                .entry(self.redis.keys().partition_of(id))
                .or_default()
                .push(id);
        }
        let mut replayed = Vec::new();
        for (p, ids) in by_partition {
            let pk = self.redis.keys().partition(p);
            let mut inv = self.redis.scripts().replay.prepare_invoke();
            inv.key(&pk.due)
                .key(&pk.meta)
                .key(&pk.dead)
                .arg(now_ms)
                .arg(self.redis.keys().wake_channel(p))
                .arg("ids");
            for id in ids {
                inv.arg(id);
            }
            let got: Vec<String> = self.redis.invoke(&inv).await?;
            replayed.extend(got);
        }
        Ok(replayed)
    }

    /// Replays every dead notification, in batches of 500 per partition. Returns the count.
    pub async fn replay_all(&self, now_ms: i64) -> Result<usize> {
        let mut total = 0;
        for p in 0..self.redis.keys().partitions() {
            let pk = self.redis.keys().partition(p);
            loop {
                let got: Vec<String> = self
                    .redis
                    .invoke(
                        self.redis
                            .scripts()
                            .replay
                            .key(&pk.due)
                            .key(&pk.meta)
                            .key(&pk.dead)
                            .arg(now_ms)
                            .arg(self.redis.keys().wake_channel(p))
                            .arg("oldest")
                            .arg(500),
                    )
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
        let pk = self.redis.keys().partition(p);
        let (done, dead): (usize, usize) = self
            .redis
            .invoke(
                self.redis
                    .scripts()
                    .sweep
                    .key(&pk.done)
                    .key(&pk.dead)
                    .key(&pk.spec)
                    .key(&pk.meta)
                    .key(&pk.log)
                    .arg(done_cutoff)
                    .arg(dead_cutoff)
                    .arg(limit),
            )
            .await?;
        Ok(Swept { done, dead })
    }
}

fn head_of(reply: &[Value]) -> Option<i64> {
    reply.first().and_then(as_i64).filter(|h| *h >= 0)
}
