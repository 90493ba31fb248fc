//! The test and benchmark harness of paynotify, out of the service library: the library keeps
//! only the single private `redis-server` that `paynotify dev` runs ([`RedisServer`], re-exported
//! here), and this crate builds on it what only tests and benchmarks need: [`RedisCluster`] and
//! [`RedisSentinels`], Redis Cluster and Sentinel children (slot moves, master restarts,
//! failovers).

mod cluster;
mod sentinel;

pub use cluster::RedisCluster;
pub use paynotify::redis::child::{free_port, RedisChildError, RedisServer};
pub use sentinel::RedisSentinels;

use std::time::Duration;

/// Starting a Redis Cluster or Sentinels failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Child(#[from] RedisChildError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("no port p with p and p + 10000 (cluster bus) both free after {0} tries")]
    NoClusterPort(usize),
    #[error("`redis-cli --cluster create` failed ({status}):\n{output}\nnode logs:\n{logs}")]
    ClusterCreate {
        status: String,
        output: String,
        logs: String,
    },
    #[error("the cluster did not report cluster_state:ok with all 16384 slots ok on every node within {timeout:?}; last CLUSTER INFO:\n{last}\nnode logs:\n{logs}")]
    ClusterNotReady {
        timeout: Duration,
        last: String,
        logs: String,
    },
    #[error("no master {index}: the cluster has {masters}")]
    NoSuchMaster { index: usize, masters: usize },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no master of the cluster serves slot {0}")]
    SlotUnserved(u16),
    #[error("the Sentinels did not all report the primary within 10 s; their logs:\n{0}")]
    SentinelsNotReady(String),
}
