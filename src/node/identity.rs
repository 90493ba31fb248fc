//! A node's id is its address for device calls (its node channel): two live processes with one
//! id would answer each other's calls. A node holds its id in Redis while it runs.
//!
//! Invariant: a node starts only after taking the hold (else `RunError::NodeIdInUse`), refreshes
//! it every third of its lifetime, and lets go of it on stop.

use tokio_util::sync::CancellationToken;

use crate::redis::{Redis, Result};

/// How long a node's hold on its id lasts without a refresh (refreshed every third of it).
pub(super) const NODE_ID_TTL: std::time::Duration = std::time::Duration::from_secs(15);

/// Keeps this process's hold on its node id until `stop`, then lets go of it.
pub(super) async fn hold_node_id(
    redis: Redis,
    node_id: String,
    instance: String,
    stop: CancellationToken,
) {
    let ttl = NODE_ID_TTL.as_millis() as u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(NODE_ID_TTL / 3) => {}
            _ = stop.cancelled() => break,
        }
        match hold(&redis, &node_id, &instance, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(%node_id, "another node took this node id while Redis was unreachable; device calls may be misrouted until one of them stops")
            }
            Err(e) => tracing::debug!(error = %e, "node id not refreshed"),
        }
    }
    if let Err(e) = hold(&redis, &node_id, &instance, 0).await {
        tracing::debug!(error = %e, "node id not released; it expires by itself");
    }
}

/// Holds node id `node_id` for `instance` for `ttl_ms` (0: lets go of it). False when
/// another live instance holds it.
pub(super) async fn hold(
    redis: &Redis,
    node_id: &str,
    instance: &str,
    ttl_ms: u64,
) -> Result<bool> {
    let n: i64 = redis
        .invoke(
            redis
                .scripts()
                .node_id
                .key(redis.keys().node_alive(node_id))
                .arg(instance)
                .arg(ttl_ms),
        )
        .await?;
    Ok(n == 1)
}
