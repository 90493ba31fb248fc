//! The intake stream: app servers `XADD <prefix>:intake * notification <json>` (a merchant
//! callback) or `XADD <prefix>:intake * result <json>` (an order result for browsers) from any
//! Redis client, and this consumer moves each entry onto the schedule or publishes it.
//!
//! Two tasks per node: a reader that reads batches (`XREADGROUP … BLOCK` on a connection of its
//! own, and every `--lease` an `XAUTOCLAIM` of entries a stalled consumer left pending) and hands
//! them over a channel of [`AHEAD`] batches, and a taker that takes up to [`IN_FLIGHT`] batches
//! in at once ([`batch::take`]: one enqueue call per partition, pipelined publishes), and
//! acknowledges what they took in by one call at a time, a few milliseconds after (one call
//! covers the batches of those milliseconds). So the next read is on the wire while a batch is
//! taken in, and a batch's results go out without waiting for the acknowledgement or the
//! enqueue of the batch before; results and notifications each still go in stream order, batch
//! after batch. Nodes share one consumer group.
//!
//! Invariant: an entry is acknowledged (and deleted) only after it is on the schedule, or its
//! result published, or after it has been copied to the rejected stream with its reason;
//! nothing is dropped silently. An entry read but not acknowledged (in the channel, being taken
//! in, failed, or its node crashed) is pending in the group and reclaimed by `XAUTOCLAIM`. An
//! entry without an id gets `intake-<entry id>` so a redelivered entry is enqueued once.

pub mod batch;

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::delivery::merchants::Registry;
use crate::delivery::schema;
use crate::delivery::store::Store;
use crate::push::store::Results;
use crate::redis::{Blocking, Redis, StoreError};

/// A stream entry: its id and its fields.
pub type Entry = (String, Vec<(String, Vec<u8>)>);

/// Most entries read per call.
const READ_COUNT: usize = 512;
/// Batches read ahead of those being taken in (all of them pending in the group).
const AHEAD: usize = 2;
/// Most batches being taken in at once (their replies and acknowledgements overlap).
const IN_FLIGHT: usize = 4;
/// Most entry ids in one acknowledgement call (`intake_ack.lua` unpacks them: Lua's limit is
/// about 8,000).
const ACK_MAX: usize = 4096;
/// How long a taken-in entry may wait for its acknowledgement, so that one call covers the
/// batches of a few milliseconds (an acknowledgement is off the results' path: only the
/// stream's length and the pending count see the wait).
const ACK_DELAY: Duration = Duration::from_millis(5);
/// How long shutdown waits for the batches in flight and the last acknowledgements.
const ACK_FLUSH: Duration = Duration::from_secs(2);
/// How long one blocking read waits for new entries.
const BLOCK: Duration = Duration::from_secs(2);

/// Most bytes in one entry, field names and values together: a notification document at its
/// limit plus a result at its limit, with room for names.
pub const MAX_ENTRY_BYTES: usize =
    schema::MAX_DOCUMENT_BYTES + crate::push::MAX_RESULT_BYTES + 4096;
/// Most fields in one entry (two are used).
pub const MAX_ENTRY_FIELDS: usize = 16;

/// Why an intake entry was rejected.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("entry has neither a `notification` nor a `result` field (fields: {0})")]
    NoNotification(String),
    #[error("entry is {size} bytes in {fields} fields; the limits are {MAX_ENTRY_BYTES} bytes and {MAX_ENTRY_FIELDS} fields")]
    TooLarge { size: usize, fields: usize },
    #[error("`{0}` field is not UTF-8 text")]
    NotText(&'static str),
    #[error("{0}")]
    Schema(#[from] schema::SchemaError),
    #[error("{0}")]
    Result(#[from] crate::push::ResultError),
    #[error("id {id:?} exists with different content (state {state})")]
    Conflict { id: String, state: String },
}

/// What an intake entry asks for.
#[derive(Debug)]
pub enum IntakeEntry {
    Notification(schema::Document),
    Result(crate::push::ResultDoc),
}

/// Decodes one intake entry (the field layout an app server writes); a notification's merchant
/// is looked up afterwards ([`parse_notification`]).
pub fn decode_entry(fields: &[(String, Vec<u8>)]) -> Result<IntakeEntry, IntakeError> {
    let size: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_ENTRY_BYTES || fields.len() > MAX_ENTRY_FIELDS {
        return Err(IntakeError::TooLarge {
            size,
            fields: fields.len(),
        });
    }
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    };
    if let Some(raw) = field("notification") {
        std::str::from_utf8(raw).map_err(|_| IntakeError::NotText("notification"))?;
        return Ok(IntakeEntry::Notification(schema::Document::parse(raw)?));
    }
    if let Some(raw) = field("result") {
        std::str::from_utf8(raw).map_err(|_| IntakeError::NotText("result"))?;
        return Ok(IntakeEntry::Result(crate::push::parse_result(None, raw)?));
    }
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    Err(IntakeError::NoNotification(names.join(", ")))
}

/// Consumes the intake stream until `shutdown`: the reader and the taker (see the module doc).
pub async fn run(
    config: Arc<Config>,
    redis: Redis,
    merchants: Registry,
    metrics: crate::metrics::Metrics,
    shutdown: CancellationToken,
) {
    let (batches, incoming) = mpsc::channel::<Vec<Entry>>(AHEAD);
    info!(stream = %redis.keys().intake(), "intake consumer started");
    let reader = read(&config, &redis, &metrics, batches, &shutdown);
    let taker = async {
        let store = Store::new(redis.clone());
        let results = Results::new(redis.clone());
        let cx = batch::Intake {
            store: &store,
            results: &results,
            merchants: &merchants,
            config: &config,
            metrics: &metrics,
        };
        take_all(&cx, incoming, &shutdown).await;
    };
    // The taker stops at shutdown or when the reader is gone; the reader when shutdown comes
    // or the taker is gone (its channel closed).
    tokio::join!(reader, taker);
    info!("intake consumer stopped");
}

/// The taker: up to [`IN_FLIGHT`] batches at once, so a batch's enqueue overlaps the next
/// batch's publishes; results and notifications each still go in batch after batch
/// ([`batch::Turn`]). Taken-in entries are acknowledged by one call at a time, [`ACK_DELAY`]
/// after the oldest of them was taken in (at once past [`ACK_MAX`] ids, or once the reader is
/// gone): so one `intake_ack.lua` call covers every batch of those milliseconds instead of a
/// call per batch. At shutdown it takes no new batch, and returns once the batches in flight
/// have finished and what they took in is acknowledged (or after [`ACK_FLUSH`]: the rest is
/// taken in again after a lease); else when the reader is gone and everything has finished.
// long: one select loop over batches, acknowledgements and the backoff reads best whole.
async fn take_all(
    cx: &batch::Intake<'_>,
    mut incoming: mpsc::Receiver<Vec<Entry>>,
    shutdown: &CancellationToken,
) {
    let redis = cx.store.redis();
    let mut in_flight = FuturesOrdered::new();
    let mut acking = FuturesUnordered::new();
    let mut to_ack: Vec<String> = Vec::new();
    // When the oldest id in `to_ack` is due for acknowledgement.
    let mut ack_at: Option<tokio::time::Instant> = None;
    let mut published: Option<oneshot::Receiver<()>> = None;
    let mut enqueued: Option<oneshot::Receiver<()>> = None;
    let mut failures = 0u32;
    // No more batches are taken: the reader is gone, or shutdown came (then what is in flight
    // finishes and is acknowledged until `stop_by`).
    let mut reader_gone = false;
    let mut stop_by: Option<tokio::time::Instant> = None;
    // After a failed batch or acknowledgement no new batch starts until the backoff ends; the
    // batches in flight are still driven meanwhile.
    let mut paused_until: Option<tokio::time::Instant> = None;
    let failed = |e: &StoreError, count: usize, what: &str, failures: &mut u32| {
        // Left pending: reclaimed by XAUTOCLAIM once idle for a lease.
        warn!(error = %e, count, "intake {what} failed; will retry");
        cx.metrics.redis_errors.inc();
        *failures += 1;
        tokio::time::Instant::now() + crate::util::backoff(*failures)
    };
    loop {
        let now = tokio::time::Instant::now();
        let ack_due = ack_at.is_some_and(|at| at <= now) || to_ack.len() >= ACK_MAX || reader_gone;
        if acking.is_empty() && !to_ack.is_empty() && ack_due {
            let ids: Vec<String> = to_ack.drain(..to_ack.len().min(ACK_MAX)).collect();
            acking.push(async move { (ids.len(), batch::acknowledge(redis, &ids).await) });
            ack_at = (!to_ack.is_empty()).then_some(now);
        }
        if reader_gone && in_flight.is_empty() && acking.is_empty() && to_ack.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if stop_by.is_none() => {
                reader_gone = true;
                stop_by = Some(tokio::time::Instant::now() + ACK_FLUSH);
            }
            _ = tokio::time::sleep_until(stop_by.unwrap_or_else(tokio::time::Instant::now)), if stop_by.is_some() => {
                warn!(
                    count = to_ack.len(),
                    in_flight = in_flight.len(),
                    "intake acknowledgement at shutdown timed out; these entries will be taken in again"
                );
                return;
            }
            Some((count, outcome)) = acking.next(), if !acking.is_empty() => {
                match outcome {
                    Ok(()) => failures = 0,
                    Err(e) => paused_until = Some(failed(&e, count, "acknowledgement", &mut failures)),
                }
            }
            Some((count, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                match outcome {
                    Ok(ids) => {
                        let was_empty = to_ack.is_empty();
                        to_ack.extend(ids);
                        if was_empty && !to_ack.is_empty() {
                            ack_at = Some(tokio::time::Instant::now() + ACK_DELAY);
                        }
                    }
                    Err(e) => paused_until = Some(failed(&e, count, "batch", &mut failures)),
                }
            }
            _ = tokio::time::sleep_until(ack_at.unwrap_or_else(tokio::time::Instant::now)), if ack_at.is_some() && acking.is_empty() => {}
            _ = tokio::time::sleep_until(paused_until.unwrap_or_else(tokio::time::Instant::now)), if paused_until.is_some() => {
                paused_until = None;
            }
            entries = incoming.recv(), if !reader_gone && paused_until.is_none() && in_flight.len() < IN_FLIGHT => {
                let Some(entries) = entries else {
                    reader_gone = true;
                    continue;
                };
                let step = |before: &mut Option<oneshot::Receiver<()>>| {
                    let (done, next) = oneshot::channel();
                    batch::Step { after: before.replace(next), done }
                };
                let turn = batch::Turn {
                    publish: step(&mut published),
                    enqueue: step(&mut enqueued),
                };
                in_flight.push_back(async move {
                    (entries.len(), batch::take(cx, &entries, turn).await)
                });
            }
        }
    }
}

/// The reader: creates the group, reclaims stalled entries every lease, reads new ones, and
/// sends each non-empty batch to the taker. Returns at shutdown or when the taker is gone.
// long: the group, reclaim and blocking-read states with their one error path read best whole.
async fn read(
    config: &Config,
    redis: &Redis,
    metrics: &crate::metrics::Metrics,
    batches: mpsc::Sender<Vec<Entry>>,
    shutdown: &CancellationToken,
) {
    let keys = redis.keys().clone();
    let stream = keys.intake();
    let group = keys.intake_group();
    let consumer = config.node_id.clone();
    let mut failures = 0u32;
    let mut group_ready = false;
    let mut last_autoclaim = tokio::time::Instant::now();
    // A dedicated connection for the blocking read, so a BLOCK never stalls the commands on the
    // shared one. Kept across iterations; rebuilt only after an error.
    let mut blocking: Option<Blocking> = None;
    let send = |entries: Vec<Entry>| {
        let batches = batches.clone();
        async move { entries.is_empty() || batches.send(entries).await.is_ok() }
    };
    while !shutdown.is_cancelled() && !batches.is_closed() {
        let step = async {
            if !group_ready {
                create_group(redis, &stream, group).await?;
                group_ready = true;
            }
            // Entries a crashed node read but never acknowledged (or that failed here).
            if last_autoclaim.elapsed() >= config.lease {
                last_autoclaim = tokio::time::Instant::now();
                let entries = autoclaim(redis, &stream, group, &consumer, config.lease).await?;
                if !entries.is_empty() {
                    info!(
                        count = entries.len(),
                        "reclaimed intake entries from a stalled consumer"
                    );
                }
                if !send(entries).await {
                    return Ok(());
                }
            }
            if blocking.is_none() {
                blocking = Some(redis.blocking(BLOCK).await?);
            }
            let Some(blocking) = blocking.as_mut() else {
                return Ok(());
            };
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(group)
                .arg(&consumer)
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">");
            loop {
                let reply: StreamReadReply = blocking.query(&read).await?;
                let entries: Vec<Entry> = reply
                    .keys
                    .into_iter()
                    .flat_map(|k| k.ids)
                    .map(|e| (e.id, fields_of(e.map)))
                    .collect();
                if !send(entries).await
                    || shutdown.is_cancelled()
                    || last_autoclaim.elapsed() >= config.lease
                {
                    return Ok::<(), StoreError>(());
                }
            }
        };
        let result = tokio::select! {
            r = step => r,
            _ = shutdown.cancelled() => break,
        };
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                blocking = None;
                if e.code() == Some("NOGROUP") {
                    warn!("intake consumer group is gone (Redis restarted empty?); recreating");
                    group_ready = false;
                } else {
                    warn!(error = %e, "intake read failed; retrying");
                }
                failures += 1;
                metrics.redis_errors.inc();
                tokio::select! {
                    _ = tokio::time::sleep(crate::util::backoff(failures)) => {},
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
}

/// `XGROUP CREATE … MKSTREAM`; a group that exists already is fine.
async fn create_group(redis: &Redis, stream: &str, group: &str) -> Result<(), StoreError> {
    let created: Result<Value, StoreError> = redis
        .query(
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM"),
        )
        .await;
    match created {
        Ok(_) => info!("created intake consumer group"),
        Err(e) if e.code() == Some("BUSYGROUP") => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Claims for `consumer` entries pending longer than `idle` (a stalled consumer's, or ones
/// that failed here).
async fn autoclaim(
    redis: &Redis,
    stream: &str,
    group: &str,
    consumer: &str,
    idle: Duration,
) -> Result<Vec<Entry>, StoreError> {
    let reply: StreamAutoClaimReply = redis
        .query(
            redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(group)
                .arg(consumer)
                .arg(idle.as_millis() as u64)
                .arg("0")
                .arg("COUNT")
                .arg(READ_COUNT),
        )
        .await?;
    Ok(reply
        .claimed
        .into_iter()
        .map(|e| (e.id, fields_of(e.map)))
        .collect())
}

fn fields_of(map: std::collections::HashMap<String, Value>) -> Vec<(String, Vec<u8>)> {
    map.into_iter()
        .map(|(k, v)| {
            let bytes = match v {
                Value::BulkString(b) => b,
                Value::SimpleString(s) => s.into_bytes(),
                other => format!("{other:?}").into_bytes(),
            };
            (k, bytes)
        })
        .collect()
}
