//! Where each device is connected (its presence entry) and the node channels calls travel on.
//!
//! Invariant: a presence entry names one node and one connection; only that connection may
//! refresh or remove it (the scripts compare the connection id), so a stale connection can
//! never erase its successor's entry.

use crate::redis::{Redis, Result, StoreError};

/// What refreshing a device's presence found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Still this connection's; its TTL is renewed.
    Refreshed,
    /// Another connection holds the device now.
    Replaced,
    /// No entry at all (expired, or Redis restarted empty): join again.
    Missing,
}

/// Where a device is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Where {
    pub node: String,
    pub conn: String,
    /// When this connection joined and when it was last refreshed (ms since the epoch).
    pub since_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
}

/// The presence store. Cheap to clone.
#[derive(Clone)]
pub struct Presence {
    redis: Redis,
}

impl Presence {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// Records a device's connection; returns the connection it replaced (node, connection id).
    pub async fn join(
        &self,
        device_id: &str,
        node: &str,
        conn_id: &str,
        ttl_ms: u64,
    ) -> Result<Option<(String, String)>> {
        let prev: Vec<String> = self
            .redis
            .invoke(
                self.redis
                    .scripts()
                    .device_join
                    .key(self.redis.keys().device_presence(device_id))
                    .arg(node)
                    .arg(conn_id)
                    .arg(crate::util::now_ms())
                    .arg(ttl_ms),
            )
            .await?;
        Ok(match prev.as_slice() {
            [node, conn] => Some((node.clone(), conn.clone())),
            _ => None,
        })
    }

    /// Refreshes a device's presence.
    pub async fn touch(&self, device_id: &str, conn_id: &str, ttl_ms: u64) -> Result<Touch> {
        let n: i64 = self
            .redis
            .invoke(
                self.redis
                    .scripts()
                    .device_touch
                    .key(self.redis.keys().device_presence(device_id))
                    .arg(conn_id)
                    .arg(crate::util::now_ms())
                    .arg(ttl_ms),
            )
            .await?;
        match n {
            1 => Ok(Touch::Refreshed),
            0 => Ok(Touch::Replaced),
            -1 => Ok(Touch::Missing),
            other => Err(StoreError::Reply(format!(
                "device_touch answered {other}, not 1, 0 or -1"
            ))),
        }
    }

    /// Removes a device's presence if `conn_id` still owns it.
    pub async fn leave(&self, device_id: &str, conn_id: &str) -> Result<()> {
        let _: i64 = self
            .redis
            .invoke(
                self.redis
                    .scripts()
                    .device_leave
                    .key(self.redis.keys().device_presence(device_id))
                    .arg(conn_id),
            )
            .await?;
        Ok(())
    }

    /// Where a device is connected; `None` when offline.
    pub async fn find(&self, device_id: &str) -> Result<Option<Where>> {
        let mut p: std::collections::HashMap<String, String> = self
            .redis
            .query(redis::cmd("HGETALL").arg(self.redis.keys().device_presence(device_id)))
            .await?;
        let time = |v: Option<String>| v.and_then(|t| t.parse::<i64>().ok());
        Ok(match (p.remove("node"), p.remove("conn")) {
            (Some(node), Some(conn)) => Some(Where {
                node,
                conn,
                since_ms: time(p.remove("since")),
                last_seen_ms: time(p.remove("last_seen")),
            }),
            _ => None,
        })
    }

    /// Publishes on a node's channel; returns how many subscribers got it (0: the node is gone).
    pub async fn publish_to_node(&self, node: &str, message: &str) -> Result<i64> {
        self.redis
            .query(
                redis::cmd("SPUBLISH")
                    .arg(self.redis.keys().node_channel(node))
                    .arg(message),
            )
            .await
    }

    /// The Redis handle (for the node channel's follower).
    pub fn redis(&self) -> &Redis {
        &self.redis
    }
}
