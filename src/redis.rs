//! Everything that talks to Redis: where it is (standalone, Cluster, Sentinel), the shared
//! connection, pub/sub, channel followers, the key layout, the Lua scripts, and a private
//! `redis-server` for `paynotify dev` and the tests.
//!
//! Invariant: no module outside `redis/` holds a raw connection. Domain stores
//! (`delivery::store`, `push::store`, `devices::presence`, `node::identity`) run their scripts
//! and reads through a [`Redis`] handle, which only accepts a script invocation, a command or a
//! pipeline; so "Rust never writes notification keys directly" is a property of the types.

pub mod child;
pub mod follow;
pub mod keys;
pub mod partitions;
pub mod pubsub;
pub mod scripts;
pub mod sentinel;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use ::redis::{Cmd, FromRedisValue, Pipeline, ScriptInvocation};

pub use keys::{Keys, PartitionKeys};
pub use target::{Target, TlsFiles};

use pubsub::{Messages, Subscriptions};
use scripts::Scripts;
use target::Conn;

/// Redis failures and unexpected replies.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
    /// An id that `schema::validate_id` refuses reached the store (the scripts store ids inside
    /// JSON without escaping them, so the store checks again).
    #[error("notification id {id:?} refused: {reason}")]
    InvalidId { id: String, reason: String },
    #[error("stored, but only {got} of {wanted} replicas confirmed it within {timeout_ms} ms; send it again (enqueue is idempotent)")]
    NotReplicated {
        wanted: u32,
        got: i64,
        timeout_ms: u64,
    },
}

impl StoreError {
    /// The server's error code (`NOGROUP`, `BUSYGROUP`, …) of a Redis error reply.
    pub fn code(&self) -> Option<&str> {
        match self {
            StoreError::Redis(e) => e.code(),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The node's way to Redis. Cheap to clone.
///
/// Every call goes over one multiplexed, auto-reconnecting connection (redis-rs'
/// `ConnectionManager`): concurrent calls are pipelined on it, and unlike a pool checkout there
/// is no health-check round trip per call.
///
/// One `Arc`: HTTP handlers clone it (their state is cloned for every request), as do the domain
/// stores, so a clone must cost a reference count, not a copy of the target's URLs.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    shared: tokio::sync::OnceCell<Conn>,
    /// Opt-in `WAIT replicas timeout_ms` after each durable write.
    wait: Option<(u32, u64)>,
    keys: Keys,
    /// The scripts' source text is ~15 KB: one copy per node.
    scripts: Scripts,
}

impl Redis {
    /// A handle on the standalone server at `url` (no round trip yet; the connection is made
    /// on first use).
    pub fn connect(url: &str, keys: Keys) -> Result<Self> {
        Ok(Self::on(
            Target::open(url, false, &Default::default())?,
            keys,
        ))
    }

    /// A handle on `target`, standalone or Cluster (no round trip yet).
    pub fn on(target: Target, keys: Keys) -> Self {
        Self::build(target, keys, None)
    }

    fn build(target: Target, keys: Keys, wait: Option<(u32, u64)>) -> Self {
        Self {
            inner: Arc::new(Inner {
                target,
                shared: Default::default(),
                wait,
                keys,
                scripts: Scripts::new(),
            }),
        }
    }

    /// After every durable write ([`invoke_durably`](Self::invoke_durably)), waits (Redis
    /// `WAIT`) until `replicas` replicas have it, at most `timeout`; a write they do not
    /// confirm fails with [`StoreError::NotReplicated`]. `replicas == 0` turns it off.
    pub fn with_wait(self, replicas: u32, timeout: Duration) -> Self {
        let wait = (replicas > 0).then_some((replicas, timeout.as_millis().max(1) as u64));
        Self::build(self.inner.target.clone(), self.inner.keys.clone(), wait)
    }

    /// The key builder.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The scripts, to build invocations for [`invoke`](Self::invoke).
    pub fn scripts(&self) -> &Scripts {
        &self.inner.scripts
    }

    async fn conn(&self) -> Result<Conn> {
        let inner = &self.inner;
        let conn = inner
            .shared
            .get_or_try_init(|| inner.target.shared())
            .await?;
        Ok(conn.clone())
    }

    /// Loads every script (`SCRIPT LOAD`), which also proves Redis is reachable.
    pub async fn load_scripts(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        for (_, script) in self.inner.scripts.all() {
            script.prepare_invoke().load_async(&mut conn).await?;
        }
        Ok(())
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<()> {
        let _: String = self.query(&::redis::cmd("PING")).await?;
        Ok(())
    }

    /// Runs one script.
    pub async fn invoke<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> Result<T> {
        let mut conn = self.conn().await?;
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Runs one script that stores something the caller must not lose to a failover; with
    /// [`with_wait`](Self::with_wait), waits for the replicas when `stored` says the reply
    /// means a write (or a state that a write produced) before answering.
    pub async fn invoke_durably<T: FromRedisValue>(
        &self,
        inv: &ScriptInvocation<'_>,
        stored: impl Fn(&T) -> bool,
    ) -> Result<T> {
        let mut conn = self.conn().await?;
        let reply: T = inv.invoke_async(&mut conn).await?;
        if let (Some((wanted, timeout_ms)), true) = (self.inner.wait, stored(&reply)) {
            // WAIT covers every write made before it on this connection, this one included.
            let got: i64 = ::redis::cmd("WAIT")
                .arg(wanted)
                .arg(timeout_ms)
                .query_async(&mut conn)
                .await?;
            if got < i64::from(wanted) {
                return Err(StoreError::NotReplicated {
                    wanted,
                    got,
                    timeout_ms,
                });
            }
        }
        Ok(reply)
    }

    /// Runs one plain command (reads, and the few writes that are not notification state:
    /// stream bookkeeping, shard publishes).
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let mut conn = self.conn().await?;
        Ok(cmd.query_async(&mut conn).await?)
    }

    /// Runs a pipeline of plain reads (all keys in one slot on a Cluster).
    pub async fn pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        let mut conn = self.conn().await?;
        Ok(pipe.query_async(&mut conn).await?)
    }

    /// A pub/sub connection of its own (sink for (un)subscribes, stream of messages).
    pub async fn subscriber(&self) -> ::redis::RedisResult<(Subscriptions, Messages)> {
        self.inner.target.subscriber().await
    }

    /// A connection of its own for blocking reads (`XREADGROUP … BLOCK`), whose response
    /// timeout allows for `block`.
    pub async fn blocking(&self, block: Duration) -> Result<Blocking> {
        Ok(Blocking(self.inner.target.dedicated(block).await?))
    }
}

/// A connection for blocking reads, used by one task.
pub struct Blocking(Conn);

impl Blocking {
    /// Runs one command on this connection.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T> {
        Ok(cmd.query_async(&mut self.0).await?)
    }
}

/// The integer in a script reply (`Int`, or a number sent as a string).
pub fn as_i64(v: &::redis::Value) -> Option<i64> {
    use ::redis::Value;
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// The string in a script reply.
pub fn as_string(v: &::redis::Value) -> Option<String> {
    use ::redis::Value;
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}
