//! The intake stream: app servers `XADD <prefix>:intake * notification <json>` (a merchant
//! callback) or `XADD <prefix>:intake * result <json>` (an order result for browsers) from any
//! Redis client, and this consumer moves each entry onto the schedule or publishes it.
//!
//! Invariant: an entry is acknowledged (and deleted) only after it is on the schedule, or after
//! it has been copied to the rejected stream with its reason; nothing is dropped silently. An
//! entry without an id gets `intake-<entry id>` so a redelivered entry is enqueued once.

use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::delivery::merchants::{parse_notification, EnqueueError, Registry};
use crate::delivery::schema;
use crate::delivery::store::{Enqueued, Store};
use crate::push::store::Results;
use crate::redis::{Blocking, Redis, StoreError};

/// A stream entry: its id and its fields.
type Entry = (String, Vec<(String, Vec<u8>)>);

/// Most entries read per call.
const READ_COUNT: usize = 256;
/// How long one blocking read waits for new entries.
const BLOCK: Duration = Duration::from_secs(2);
/// Most rejected entries kept (the stream is trimmed approximately to this length).
const REJECTED_MAXLEN: usize = 100_000;
/// Most bytes of each field copied into a rejected entry (the stream is for diagnosis; an
/// oversized entry must not be stored twice at full size).
const REJECTED_FIELD_BYTES: usize = 8 * 1024;

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

/// Consumes the intake stream until `shutdown`.
// long: the consumer loop with its group, reclaim and blocking-read states reads best whole;
// its per-batch work is in `process`.
pub async fn run(
    config: Arc<Config>,
    redis: Redis,
    merchants: Registry,
    metrics: crate::metrics::Metrics,
    shutdown: CancellationToken,
) {
    let store = Store::new(redis.clone());
    let results = Results::new(redis.clone());
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
    info!(%stream, "intake consumer started");
    while !shutdown.is_cancelled() {
        let step = async {
            if !group_ready {
                let created: Result<Value, StoreError> = redis
                    .query(
                        redis::cmd("XGROUP")
                            .arg("CREATE")
                            .arg(&stream)
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
                group_ready = true;
            }
            // Entries a crashed node read but never acknowledged.
            if last_autoclaim.elapsed() >= config.lease {
                last_autoclaim = tokio::time::Instant::now();
                let reply: StreamAutoClaimReply = redis
                    .query(
                        redis::cmd("XAUTOCLAIM")
                            .arg(&stream)
                            .arg(group)
                            .arg(&consumer)
                            .arg(config.lease.as_millis() as u64)
                            .arg("0")
                            .arg("COUNT")
                            .arg(READ_COUNT),
                    )
                    .await?;
                let entries: Vec<Entry> = reply
                    .claimed
                    .into_iter()
                    .map(|e| (e.id, fields_of(e.map)))
                    .collect();
                if !entries.is_empty() {
                    info!(
                        count = entries.len(),
                        "reclaimed intake entries from a stalled consumer"
                    );
                    process(&store, &results, &merchants, &config, &metrics, &entries).await?;
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
                if !entries.is_empty() {
                    process(&store, &results, &merchants, &config, &metrics, &entries).await?;
                }
                if shutdown.is_cancelled() || last_autoclaim.elapsed() >= config.lease {
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
                let backoff = crate::util::backoff(failures);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    info!("intake consumer stopped");
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

/// Enqueues one notification entry: `Ok(Some(reason))` rejects it, `Err` leaves it pending.
async fn take_notification(
    store: &Store,
    merchants: &Registry,
    metrics: &crate::metrics::Metrics,
    entry_id: &str,
    doc: schema::Document,
    now: i64,
) -> Result<Option<IntakeError>, StoreError> {
    let n = match parse_notification(merchants, doc, now, || format!("intake-{entry_id}")).await {
        Ok(n) => n,
        Err(EnqueueError::Schema(e)) => return Ok(Some(IntakeError::Schema(e))),
        // Not acknowledged: retried once the registry can be read.
        Err(EnqueueError::Registry(e)) => return Err(StoreError::Reply(e.to_string())),
    };
    Ok(match store.enqueue(&n, now).await? {
        Enqueued::Created { .. } => {
            metrics.enqueued.inc();
            None
        }
        Enqueued::Exists { .. } => None,
        Enqueued::Conflict { state } => Some(IntakeError::Conflict { id: n.id, state }),
    })
}

/// Enqueues, publishes or rejects a batch of entries, then acknowledges them all.
async fn process(
    store: &Store,
    results: &Results,
    merchants: &Registry,
    config: &Config,
    metrics: &crate::metrics::Metrics,
    entries: &[Entry],
) -> Result<(), StoreError> {
    let now = crate::util::now_ms();
    let results = futures::future::join_all(entries.iter().map(|(entry_id, fields)| async move {
        match decode_entry(fields) {
            Ok(IntakeEntry::Notification(doc)) => {
                take_notification(store, merchants, metrics, entry_id, doc, now).await
            }
            Ok(IntakeEntry::Result(doc)) => {
                crate::push::publish(results, config.result_ttl, &doc).await?;
                metrics.results_published.inc();
                Ok(None)
            }
            Err(e) => Ok(Some(e)),
        }
    }))
    .await;
    let redis = store.redis();
    let mut ack = Vec::with_capacity(entries.len());
    for ((entry_id, fields), result) in entries.iter().zip(results) {
        match result {
            Ok(None) => ack.push(entry_id.clone()),
            Ok(Some(reason)) => {
                warn!(entry = %entry_id, %reason, "intake entry rejected");
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
                let _: Value = redis.query(&cmd).await?;
                ack.push(entry_id.clone());
            }
            Err(e) => {
                // Not acknowledged: the entry stays pending and is retried (XAUTOCLAIM).
                warn!(entry = %entry_id, error = %e, "intake entry not enqueued; will retry");
            }
        }
    }
    acknowledge(redis, &ack).await
}

/// Acknowledges and deletes intake entries (`intake_ack.lua`).
async fn acknowledge(redis: &Redis, entry_ids: &[String]) -> Result<(), StoreError> {
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
