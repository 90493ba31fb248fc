//! Where order results live: the latest result of each order (a hash with a TTL) and the
//! order's shard channel.
//!
//! Invariant: storing a result and publishing it are one script, so a subscriber that reads
//! the stored result after subscribing cannot miss one (see `publish.lua`).

use crate::redis::{Redis, Result};

/// The order-result store. Cheap to clone.
#[derive(Clone)]
pub struct Results {
    redis: Redis,
}

impl Results {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// The Redis handle (for the hub's pub/sub connection and keys).
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Stores an order's latest result and publishes it (one script); returns its sequence number.
    pub async fn publish(&self, order_id: &str, payload: &str, ttl_secs: u64) -> Result<u64> {
        let keys = self.redis.keys();
        self.redis
            .invoke(
                self.redis
                    .scripts()
                    .publish
                    .key(keys.order_result(order_id))
                    .arg(payload)
                    .arg(ttl_secs)
                    .arg(keys.order_channel(order_id)),
            )
            .await
    }

    /// An order's latest result: its sequence number and payload JSON.
    pub async fn read(&self, order_id: &str) -> Result<Option<(u64, String)>> {
        let (seq, result): (Option<u64>, Option<String>) = self
            .redis
            .query(
                redis::cmd("HMGET")
                    .arg(self.redis.keys().order_result(order_id))
                    .arg("seq")
                    .arg("result"),
            )
            .await?;
        Ok(seq.zip(result))
    }
}
