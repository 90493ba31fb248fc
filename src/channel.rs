//! Following shard channels (`SSUBSCRIBE`) for the life of the node.
//!
//! Invariant: the follower reconnects with backoff (100 ms doubling to 3 s) whenever the
//! connection is lost, and calls `on_connected` after every (re)subscribe, because messages
//! published while it was disconnected are gone and the caller must catch up another way.

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::backend::{Message, Target};

/// Subscribes to `channels` and hands every message to `on_message` until `stop`.
pub async fn follow(
    target: &Target,
    channels: &[String],
    stop: &CancellationToken,
    mut on_connected: impl FnMut(),
    mut on_message: impl FnMut(&Message),
) {
    let mut failures = 0u32;
    let name = channels.first().cloned().unwrap_or_default();
    while !stop.is_cancelled() {
        let connected = async {
            let (mut subs, messages) = target.subscriber().await?;
            subs.subscribe(channels).await?;
            Ok::<_, redis::RedisError>((subs, messages))
        }
        .await;
        match connected {
            Ok((_subs, mut messages)) => {
                failures = 0;
                on_connected();
                loop {
                    tokio::select! {
                        msg = messages.next() => match msg {
                            Some(msg) => on_message(&msg),
                            None => { warn!(channel = %name, "pub/sub connection lost; reconnecting"); break }
                        },
                        _ = stop.cancelled() => return,
                    }
                }
            }
            Err(e) => {
                failures += 1;
                warn!(channel = %name, error = %e, "subscribe failed; retrying");
            }
        }
        let backoff = crate::backoff(failures);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = stop.cancelled() => return,
        }
    }
}
