//! Following one Redis pub/sub channel for the life of the node.
//!
//! Invariant: the follower reconnects with backoff (100 ms doubling to 3 s) whenever the
//! connection is lost, and calls `on_connected` after every (re)subscribe, because messages
//! published while it was disconnected are gone and the caller must catch up another way.

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Subscribes to `channel` and hands every message to `on_message` until `stop`.
pub async fn follow(
    redis_url: &str,
    channel: &str,
    stop: &CancellationToken,
    mut on_connected: impl FnMut(),
    mut on_message: impl FnMut(&redis::Msg),
) {
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let connected = async {
            let client = redis::Client::open(redis_url)?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match connected {
            Ok(pubsub) => {
                failures = 0;
                on_connected();
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        msg = messages.next() => match msg {
                            Some(msg) => on_message(&msg),
                            None => { warn!(%channel, "pub/sub connection lost; reconnecting"); break }
                        },
                        _ = stop.cancelled() => return,
                    }
                }
            }
            Err(e) => {
                failures += 1;
                warn!(%channel, error = %e, "subscribe failed; retrying");
            }
        }
        let backoff = Duration::from_millis((100u64 << failures.min(5)).min(3000));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = stop.cancelled() => return,
        }
    }
}
