//! The test and benchmark harness of paynotify, out of the service library: the library keeps
//! only the single private `redis-server` that `paynotify dev` runs ([`RedisServer`], re-exported
//! here), and this crate builds on it what only tests and benchmarks need.
//!
//! - [`RedisCluster`] and [`RedisSentinels`]: Redis Cluster and Sentinel children (slot moves,
//!   master restarts, failovers);
//! - [`Sink`]: a recording HTTP server for merchant callbacks;
//! - [`WsClient`]: a browser on `/ws`; [`DeviceClient`]: a device over TCP or `/device`;
//! - [`TestClient`]: the API, each call stating the status it expects;
//! - [`listening_port`]: the port a child started on port 0 bound;
//! - [`mint_token`], [`wait_until`], and the test credentials [`API_KEY`] and [`TOKEN_SECRET`].

mod client;
mod cluster;
mod device;
mod listen;
mod sentinel;
mod sink;
mod wait;
mod ws;

pub use client::TestClient;
pub use cluster::RedisCluster;
pub use device::DeviceClient;
pub use listen::listening_port;
pub use paynotify::redis::child::{free_port, RedisChildError, RedisServer};
pub use sentinel::RedisSentinels;
pub use sink::{Received, Sink};
pub use wait::{poll_until, wait_until};
pub use ws::WsClient;

use std::time::Duration;

/// The API key test nodes accept.
pub const API_KEY: &str = "test-api-key-0123456789";
/// The secret test nodes sign and check tokens with.
pub const TOKEN_SECRET: &str = "test-token-secret-0123456789";

/// CPU seconds (user + system) process `pid` has used so far, from `/proc/<pid>/stat` (0 when
/// it cannot be read: the process is gone). For the benchmarks' CPU per unit of work.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// `npm ci` in the benchmark peer directory `dir` (e.g. `benches/peers/bullmq`) when its
/// `node_modules/<package>` is missing; panics with what to run when it fails.
pub fn ensure_npm_peer(dir: &std::path::Path, package: &str) {
    if dir.join("node_modules").join(package).exists() {
        return;
    }
    eprintln!(
        "  installing the {package} peer: npm ci --prefix {}",
        dir.display()
    );
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(dir)
        .status()
        .expect("npm (Node.js) is needed for the benchmark peers");
    assert!(status.success(), "npm ci --prefix {} failed", dir.display());
}

/// A token for `id` of `kind` (an order for a browser, a device), valid for ten minutes, signed
/// with [`TOKEN_SECRET`].
pub fn mint_token(kind: paynotify::token::Kind, id: &str) -> String {
    let expiry = paynotify::now_ms() / 1000 + 600;
    paynotify::token::mint(&[TOKEN_SECRET.to_string()], kind, id, expiry)
        .expect("minting a token with the test secret")
}

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
