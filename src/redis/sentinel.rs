//! Redis Sentinel: a client that asks the Sentinels for the current primary, and a connection
//! that follows it across failovers.
//!
//! Invariant: a connection looks the primary up on (re)connect and drops itself on a
//! connection error or a `READONLY` reply, so the caller's next retry reaches the new primary.

use std::sync::Arc;
use std::time::Duration;

use redis::sentinel::SentinelClient;
use redis::{RedisResult, Value};
use tokio::sync::Mutex as TokioMutex;

use super::target::CONNECT_TIMEOUT;

/// Builds a client that asks the Sentinels at `urls` for `master`'s primary.
pub(super) fn sentinel_client(
    urls: &[String],
    master: &str,
    password: Option<&str>,
    protocol: redis::ProtocolVersion,
) -> RedisResult<SentinelClient> {
    let mut info = redis::RedisConnectionInfo::default().set_protocol(protocol);
    if let Some(p) = password {
        info = info.set_password(p);
    }
    let node =
        redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
    SentinelClient::build(
        urls.to_vec(),
        master,
        Some(node),
        redis::sentinel::SentinelServerType::Master,
    )
}

/// A multiplexed connection to whichever server the Sentinels call primary: looked up on first
/// use and again after the connection fails or the server answers `READONLY` (it was demoted).
/// The failing command itself is not retried here; callers retry Redis errors with backoff.
#[derive(Clone)]
pub struct FollowPrimary {
    sentinel: Arc<TokioMutex<SentinelClient>>,
    current: Arc<TokioMutex<Option<redis::aio::MultiplexedConnection>>>,
    response_timeout: Duration,
}

impl FollowPrimary {
    pub(super) async fn new(
        sentinel: Arc<TokioMutex<SentinelClient>>,
        response_timeout: Duration,
    ) -> RedisResult<Self> {
        let me = Self {
            sentinel,
            current: Arc::new(TokioMutex::new(None)),
            response_timeout,
        };
        me.conn().await?;
        Ok(me)
    }

    pub(super) async fn conn(&self) -> RedisResult<redis::aio::MultiplexedConnection> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref() {
            return Ok(c.clone());
        }
        let client = self.sentinel.lock().await.async_get_client().await?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.response_timeout));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        tracing::info!(primary = %client.get_connection_info().addr(), "connected to the primary the Sentinels name");
        *current = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection when `result` shows the primary is gone or demoted.
    pub(super) async fn check<T>(&self, result: &RedisResult<T>, values: impl Fn(&T) -> bool) {
        let stale = match result {
            Err(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            }
            Ok(v) => values(v),
        };
        if stale {
            tracing::warn!(
                "the primary's connection failed or was demoted; asking the Sentinels again"
            );
            *self.current.lock().await = None;
        }
    }
}

/// A `READONLY` error among replies (a script or pipeline run against a demoted primary).
pub(super) fn read_only(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::ReadOnly))
}
