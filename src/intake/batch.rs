//! One batch of intake entries, taken in as few round trips as its contents allow: the
//! notifications of each partition in one `enqueue.lua` call, the results as concurrent
//! `publish.lua` calls (each order is its own hash tag, so one call per result), the rejected
//! entries as pipelined `XADD`s to the rejected stream, then one `intake_ack.lua` call.
//!
//! Invariant: an entry's id is in the acknowledgement list only once its notification is on the
//! schedule (created, or there already with the same content), its result is published, or it
//! is in the rejected stream with its reason. Everything else (a failed call, a registry that
//! cannot be read) stays pending in the consumer group for `XAUTOCLAIM`. Entries of one batch
//! keep their order where order is visible: one order's results one after the other in entry
//! order, notifications in entry order within their partition's call, rejections in entry
//! order; across batches, [`Turn`] keeps the stream's order.

use redis::Value;
use tracing::warn;

use super::{decode_entry, Entry, IntakeEntry, IntakeError};
use crate::config::Config;
use crate::delivery::merchants::{parse_notification, EnqueueError, Registry};
use crate::delivery::schema::NewNotification;
use crate::delivery::store::{Enqueued, Store};
use crate::push::store::Results;
use crate::redis::{Redis, StoreError};

/// Most rejected entries kept (the stream is trimmed approximately to this length).
const REJECTED_MAXLEN: usize = 100_000;
/// Most bytes of each field copied into a rejected entry (the stream is for diagnosis; an
/// oversized entry must not be stored twice at full size).
const REJECTED_FIELD_BYTES: usize = 8 * 1024;

/// What a batch needs: the stores and the node's settings.
pub struct Intake<'a> {
    pub store: &'a Store,
    pub results: &'a Results,
    pub merchants: &'a Registry,
    pub config: &'a Config,
    pub metrics: &'a crate::metrics::Metrics,
}

/// One step that batches taken in at once still take in stream order: it starts once the batch
/// before has finished its own (`after` resolves, or its sender is gone), and `done` tells the
/// batch after it.
pub struct Step {
    pub after: Option<tokio::sync::oneshot::Receiver<()>>,
    pub done: tokio::sync::oneshot::Sender<()>,
}

impl Step {
    /// Runs `work` once the batch before has finished its own, then tells the batch after.
    async fn run<T>(self, work: impl std::future::Future<Output = T>) -> T {
        if let Some(after) = self.after {
            // An error means the batch before is gone (failed or dropped): its entries stay
            // pending either way, so this one goes on.
            let _ = after.await;
        }
        let out = work.await;
        let _ = self.done.send(());
        out
    }
}

/// A batch's place in the stream: its results are published only after the batch before has
/// published its own, and its notifications enqueued after the batch before enqueued its own.
/// So results of one order keep their stream order, and of two entries with one id the
/// earlier one is the one created; the acknowledgements (and a batch's enqueue against the
/// next one's publishes) overlap.
pub struct Turn {
    pub publish: Step,
    pub enqueue: Step,
}

impl Turn {
    /// The turn of a batch taken in on its own (nothing before it, nothing after).
    pub fn alone() -> Self {
        let step = || Step {
            after: None,
            done: tokio::sync::oneshot::channel().0,
        };
        Self {
            publish: step(),
            enqueue: step(),
        }
    }
}

/// Where one entry stands while its batch is taken in.
enum Outcome {
    /// Taken in (or nothing to do): acknowledge.
    Done,
    /// Refused: copy to the rejected stream with this reason, then acknowledge.
    Rejected(IntakeError),
    /// Not taken in (a failed call): leave pending.
    Pending(StoreError),
}

/// Takes a batch in (enqueue, publish, reject) and returns the ids to acknowledge, in entry
/// order. `Err` only when the rejected stream cannot be written: then nothing is acknowledged.
pub async fn take(
    cx: &Intake<'_>,
    entries: &[Entry],
    turn: Turn,
) -> Result<Vec<String>, StoreError> {
    let now = crate::util::now_ms();
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(entries.len());
    let mut results = Vec::new();
    let mut docs = Vec::new();
    for (i, (_, fields)) in entries.iter().enumerate() {
        outcomes.push(match decode_entry(fields) {
            Ok(IntakeEntry::Result(doc)) => {
                results.push((i, doc));
                None
            }
            Ok(IntakeEntry::Notification(doc)) => {
                docs.push((i, doc));
                None
            }
            Err(e) => Some(Outcome::Rejected(e)),
        });
    }
    // Results first: they are what a browser waits for.
    let published = turn.publish.run(publish_in_order(cx, &results));
    let (published, enqueued) =
        futures::join!(published, enqueue(cx, entries, docs, now, turn.enqueue));
    for ((i, _), r) in results.iter().zip(published) {
        outcomes[*i] = Some(match r {
            Ok(_) => {
                cx.metrics.results_published.inc();
                Outcome::Done
            }
            Err(e) => Outcome::Pending(e),
        });
    }
    for (i, outcome) in enqueued {
        outcomes[i] = Some(outcome);
    }
    settle(cx.store.redis(), entries, outcomes).await
}

/// Publishes a batch's results: each order's one after the other in entry order, the orders
/// at once (concurrent calls on one connection can go out in any order). Answers in entry order.
async fn publish_in_order(
    cx: &Intake<'_>,
    results: &[(usize, crate::push::ResultDoc)],
) -> Vec<Result<u64, StoreError>> {
    let mut orders: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut by_order = std::collections::HashMap::<&str, usize>::new();
    for (k, (_, doc)) in results.iter().enumerate() {
        let slot = *by_order.entry(doc.order_id.as_str()).or_insert_with(|| {
            orders.push((doc.order_id.as_str(), Vec::new()));
            orders.len() - 1
        });
        orders[slot].1.push(k);
    }
    let runs = futures::future::join_all(orders.iter().map(|(_, ks)| async move {
        let mut out = Vec::with_capacity(ks.len());
        for &k in ks {
            out.push((
                k,
                crate::push::publish(cx.results, cx.config.result_ttl, &results[k].1).await,
            ));
        }
        out
    }))
    .await;
    let mut answers: Vec<Option<Result<u64, StoreError>>> =
        (0..results.len()).map(|_| None).collect();
    for (k, r) in runs.into_iter().flatten() {
        answers[k] = Some(r);
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(StoreError::Reply("result not published".into()))))
        .collect()
}

/// Reads each notification's merchant, then enqueues them all (one call per partition).
async fn enqueue(
    cx: &Intake<'_>,
    entries: &[Entry],
    docs: Vec<(usize, crate::delivery::schema::Document)>,
    now: i64,
    step: Step,
) -> Vec<(usize, Outcome)> {
    let parsed = futures::future::join_all(docs.into_iter().map(|(i, doc)| async move {
        let entry_id = &entries[i].0;
        (
            i,
            parse_notification(cx.merchants, doc, now, || format!("intake-{entry_id}")).await,
        )
    }))
    .await;
    let mut out = Vec::with_capacity(parsed.len());
    let mut batch: Vec<(usize, NewNotification)> = Vec::with_capacity(parsed.len());
    for (i, n) in parsed {
        match n {
            Ok(n) => batch.push((i, n)),
            Err(EnqueueError::Schema(e)) => out.push((i, Outcome::Rejected(e.into()))),
            // Not acknowledged: retried once the registry can be read.
            Err(EnqueueError::Registry(e)) => {
                out.push((i, Outcome::Pending(StoreError::Reply(e.to_string()))))
            }
        }
    }
    let (index, ns): (Vec<usize>, Vec<NewNotification>) = batch.into_iter().unzip();
    let enqueued = step.run(cx.store.enqueue_batch(&ns, now)).await;
    match enqueued {
        Ok(answers) => {
            for ((i, n), answer) in index.into_iter().zip(ns).zip(answers) {
                out.push((
                    i,
                    match answer {
                        Enqueued::Created { .. } => {
                            cx.metrics.enqueued.inc();
                            Outcome::Done
                        }
                        Enqueued::Exists { .. } => Outcome::Done,
                        Enqueued::Conflict { state } => {
                            Outcome::Rejected(IntakeError::Conflict { id: n.id, state })
                        }
                    },
                ))
            }
        }
        Err(e) => {
            // Not acknowledged; the partitions that did take theirs answer `Exists` next time.
            let reason = e.to_string();
            out.extend(
                index
                    .into_iter()
                    .map(|i| (i, Outcome::Pending(StoreError::Reply(reason.clone())))),
            );
        }
    }
    out
}

/// Copies the rejected entries to the rejected stream (pipelined, in entry order) and returns
/// the ids to acknowledge.
async fn settle(
    redis: &Redis,
    entries: &[Entry],
    outcomes: Vec<Option<Outcome>>,
) -> Result<Vec<String>, StoreError> {
    let mut ack = Vec::with_capacity(entries.len());
    let mut rejects = Vec::new();
    for ((entry_id, fields), outcome) in entries.iter().zip(outcomes) {
        match outcome {
            Some(Outcome::Done) => ack.push(entry_id.clone()),
            Some(Outcome::Rejected(reason)) => {
                warn!(entry = %entry_id, %reason, "intake entry rejected");
                rejects.push(rejected_entry(redis, entry_id, fields, &reason));
                ack.push(entry_id.clone());
            }
            Some(Outcome::Pending(e)) => {
                // Not acknowledged: the entry stays pending and is retried (XAUTOCLAIM).
                warn!(entry = %entry_id, error = %e, "intake entry not taken in; will retry");
            }
            None => warn!(entry = %entry_id, "intake entry without an outcome; will retry"),
        }
    }
    let written = futures::future::join_all(rejects.iter().map(|cmd| redis.query::<Value>(cmd)));
    for w in written.await {
        w?;
    }
    Ok(ack)
}

/// The `XADD` that copies a rejected entry, with its reason, to the rejected stream.
fn rejected_entry(
    redis: &Redis,
    entry_id: &str,
    fields: &[(String, Vec<u8>)],
    reason: &IntakeError,
) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(redis.keys().rejected())
        .arg("MAXLEN")
        .arg("~")
        .arg(REJECTED_MAXLEN)
        .arg("*")
        .arg("reason")
        .arg(reason.to_string())
        .arg("entry_id")
        .arg(entry_id);
    for (k, v) in fields.iter().take(32) {
        let k: &str = if k.len() <= 256 {
            k
        } else {
            "oversized_field_name"
        };
        if v.len() > REJECTED_FIELD_BYTES {
            cmd.arg(k).arg(&v[..REJECTED_FIELD_BYTES]);
            cmd.arg(format!("{k}.truncated_from")).arg(v.len());
        } else {
            cmd.arg(k).arg(v.as_slice());
        }
    }
    cmd
}

/// Acknowledges and deletes intake entries (`intake_ack.lua`).
pub async fn acknowledge(redis: &Redis, entry_ids: &[String]) -> Result<(), StoreError> {
    if entry_ids.is_empty() {
        return Ok(());
    }
    let keys = redis.keys();
    let mut inv = redis.scripts().intake_ack.prepare_invoke();
    inv.key(keys.intake()).arg(keys.intake_group());
    for id in entry_ids {
        inv.arg(id);
    }
    let _: i64 = redis.invoke(&inv).await?;
    Ok(())
}
