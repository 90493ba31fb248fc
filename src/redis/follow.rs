//! Following shard channels (`SSUBSCRIBE`) for the life of the node.
//!
//! Invariant: the follower reconnects with backoff (100 ms doubling to 3 s) whenever the
//! connection is lost, and calls `on_connected` after every (re)subscribe, because messages
//! published while it was disconnected are gone and the caller must catch up another way.
//!
//! A subscription can also die while its connection stays up: when a Cluster slot moves to
//! another master, the old owner unsubscribes the clients of that slot's shard channels. The
//! follower subscribes again when the server says so; and, in case a client library swallows
//! that, every `PROBE_EVERY` it publishes a probe on a few of its channels in turn: a probe that
//! has not come back by the next round means the subscription is gone. Probes never reach `on_message`.

use std::collections::HashSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::redis::pubsub::{Event, Message};
use crate::redis::Redis;

/// How often a follower checks that its subscriptions still deliver.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Channels probed per round.
const PROBES_PER_ROUND: usize = 4;
/// The start of a probe's payload (no message of the node's starts with a NUL byte).
const PROBE_MARK: &[u8] = b"\0paynotify-probe:";

/// Subscribes to `channels` and hands every message to `on_message` until `stop`.
pub async fn follow(
    redis: &Redis,
    channels: &[String],
    stop: &CancellationToken,
    mut on_connected: impl FnMut(),
    mut on_message: impl FnMut(&Message),
) {
    let mut failures = 0u32;
    let name = channels.first().cloned().unwrap_or_default();
    let mut probe = PROBE_MARK.to_vec();
    probe.extend_from_slice(uuid::Uuid::new_v4().simple().to_string().as_bytes());
    while !stop.is_cancelled() {
        let connected = async {
            let (mut subs, messages) = redis.subscriber().await?;
            subs.subscribe(channels).await?;
            Ok::<_, redis::RedisError>((subs, messages))
        }
        .await;
        match connected {
            Ok((_subs, mut messages)) => {
                failures = 0;
                on_connected();
                let mut tick = tokio::time::interval(PROBE_EVERY);
                tick.tick().await;
                // Channels whose latest probe has not come back yet.
                let mut awaiting: HashSet<&String> = HashSet::new();
                let mut next_probe = 0;
                loop {
                    tokio::select! {
                        event = messages.next_event() => match event {
                            Some(Event::Message(msg)) if msg.payload.starts_with(PROBE_MARK) => {
                                if msg.payload == probe {
                                    awaiting.retain(|c| **c != msg.channel);
                                }
                            }
                            Some(Event::Message(msg)) => on_message(&msg),
                            // This follower never unsubscribes: the server did (a slot moved).
                            Some(Event::Unsubscribed(channel)) => {
                                warn!(%channel, "the server ended a subscription (slot moved?); subscribing again");
                                break;
                            }
                            None => { warn!(channel = %name, "pub/sub connection lost; reconnecting"); break }
                        },
                        _ = tick.tick() => {
                            if !awaiting.is_empty() {
                                warn!(channels = ?awaiting, "a probe on a followed channel did not come back; subscribing again");
                                break;
                            }
                            // A few channels a round, in turn: every node hears every node's probes
                            // on shared channels (wake-ups), so all of them at once would cost
                            // partitions × nodes² messages a round.
                            for channel in channels.iter().cycle().skip(next_probe).take(PROBES_PER_ROUND.min(channels.len())) {
                                // On the node's shared connection. A failed publish (Redis away)
                                // proves nothing; the subscriber's own loss is noticed above.
                                let sent = redis
                                    .query::<i64>(::redis::cmd("SPUBLISH").arg(channel).arg(&probe))
                                    .await
                                    .is_ok();
                                if sent {
                                    awaiting.insert(channel);
                                }
                            }
                            next_probe = (next_probe + PROBES_PER_ROUND) % channels.len().max(1);
                        }
                        _ = stop.cancelled() => return,
                    }
                }
            }
            Err(e) => {
                failures += 1;
                warn!(channel = %name, error = %e, "subscribe failed; retrying");
            }
        }
        let backoff = crate::util::backoff(failures);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = stop.cancelled() => return,
        }
    }
}
