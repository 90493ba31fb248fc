//! One batch of intake entries, taken in as few round trips as its contents allow: the
//! notifications of each partition in one `enqueue.lua` call, the results as pipelined
//! `publish.lua` calls (each order is its own hash tag, so one call per result), the rejected
//! entries as pipelined `XADD`s to the rejected stream, then one `intake_ack.lua` call.
//!
//! Invariant: an entry's id is in the acknowledgement list only once its notification is on the
//! schedule (created, or there already with the same content), its result is published, or it
//! is in the rejected stream with its reason. Everything else (a failed call, a registry that
//! cannot be read) stays pending in the consumer group for `XAUTOCLAIM`. Entries of one batch
//! keep their order where order is visible: results in entry order on the one connection,
//! notifications in entry order within their partition's call, rejections in entry order.

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

/// A batch's place in the order of enqueues: its notifications are enqueued only after the
/// batch before it has enqueued its own (`after` resolves, or its sender is gone), and `done`
/// tells the batch after it. So batches taken in at once still enqueue in stream order, and
/// of two entries with one id the earlier one is the one created.
pub struct Turn {
    pub after: Option<tokio::sync::oneshot::Receiver<()>>,
    pub done: tokio::sync::oneshot::Sender<()>,
}

impl Turn {
    /// The turn of a batch taken in on its own (nothing before it, nothing after).
    pub fn alone() -> Self {
        Self {
            after: None,
            done: tokio::sync::oneshot::channel().0,
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
/// The results' publishes are sent at the first poll, before anything is awaited.
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
    let published = futures::future::join_all(
        results
            .iter()
            .map(|(_, doc)| crate::push::publish(cx.results, cx.config.result_ttl, doc)),
    );
    let (published, enqueued) = futures::join!(published, enqueue(cx, entries, docs, now, turn));
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

/// Reads each notification's merchant, then enqueues them all (one call per partition).
async fn enqueue(
    cx: &Intake<'_>,
    entries: &[Entry],
    docs: Vec<(usize, crate::delivery::schema::Document)>,
    now: i64,
    turn: Turn,
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
    if let Some(after) = turn.after {
        // An error means the batch before is gone (failed or dropped): its entries stay
        // pending either way, so this one goes on.
        let _ = after.await;
    }
    let enqueued = cx.store.enqueue_batch(&ns, now).await;
    let _ = turn.done.send(());
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
