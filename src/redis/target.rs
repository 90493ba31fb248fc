//! The Redis deployment a node runs on: one server (standalone, or the primary behind a
//! managed endpoint), a primary found through Redis Sentinel, or a Redis Cluster, behind one set
//! of connection types.
//!
//! With Sentinel, a connection asks the Sentinels for the primary when it (re)connects, and
//! drops itself on a connection error or a `READONLY` reply (a demoted primary), so the next
//! command, retried by the caller with its usual backoff, reaches the new primary.
//!
//! Invariant: every publish is `SPUBLISH` and every subscription `SSUBSCRIBE` (sharded pub/sub,
//! Redis 7+), in both modes, so there is one code path; on a Cluster a message then travels only
//! to the shard that owns its channel's slot, and each channel carries the hash tag of the keys
//! its script touches (see `keys`). Subscribers speak RESP3; when one loses its connection,
//! `Messages::next` ends and the caller rebuilds it and catches up, because messages published
//! meanwhile are gone.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use redis::aio::ConnectionLike;
use redis::sentinel::SentinelClient;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::{mpsc, Mutex as TokioMutex};

use super::pubsub::{Messages, Subscriptions};
use super::sentinel::{read_only, sentinel_client, FollowPrimary};

/// Where Redis is.
#[derive(Clone)]
pub enum Target {
    Single {
        client: Box<redis::Client>,
        url: String,
        certs: Option<redis::TlsCertificates>,
    },
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        seeds: Vec<String>,
        certs: Option<redis::TlsCertificates>,
    },
    /// The primary of `master`, as Sentinels say: one lookup per (re)connection.
    Sentinel {
        /// Looks up the primary for RESP2 connections.
        plain: Arc<TokioMutex<SentinelClient>>,
        /// The same for RESP3 subscriber connections.
        resp3: Arc<TokioMutex<SentinelClient>>,
    },
}

/// Files for TLS to Redis (`rediss://`), all optional: a CA bundle to trust instead of the
/// system's store, and a client certificate and key for mutual TLS. PEM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The URLs of a comma-separated list (Cluster seeds, Sentinels); at least one.
fn split_urls(url: &str) -> RedisResult<Vec<String>> {
    let urls: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(config_error("no Redis URL".into()));
    }
    Ok(urls)
}

fn config_error(message: String) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "invalid TLS settings",
        message,
    ))
}

impl TlsFiles {
    /// Reads the files; `None` when none is set (a `rediss://` URL then trusts the system's
    /// store). Every URL must be `rediss://` when any file is set.
    fn load(&self, urls: &[String]) -> RedisResult<Option<redis::TlsCertificates>> {
        if *self == TlsFiles::default() {
            return Ok(None);
        }
        if let Some(url) = urls.iter().find(|u| !u.starts_with("rediss://")) {
            return Err(config_error(format!(
                "a Redis CA file or client certificate needs rediss:// URLs, not {:?}",
                url.split('@').next_back().unwrap_or_default()
            )));
        }
        let read = |path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| config_error(format!("cannot read {}: {e}", path.display())))
        };
        let client_tls = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(config_error(
                    "a Redis client certificate and its key go together".into(),
                ))
            }
        };
        let root_cert = self.ca_file.as_ref().map(read).transpose()?;
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// How long a connection attempt and a reply may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// `url` with RESP3 selected (the subscribers need push messages).
fn resp3(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}protocol=resp3")
}

impl Target {
    /// A standalone server at `url`, or, with `cluster`, a Cluster reached through the
    /// comma-separated seed URLs in `url`; `tls` applies to `rediss://` URLs. Reads the TLS
    /// files, but makes no round trip yet.
    pub fn open(url: &str, cluster: bool, tls: &TlsFiles) -> RedisResult<Self> {
        if cluster {
            let seeds = split_urls(url)?;
            let certs = tls.load(&seeds)?;
            Ok(Target::Cluster {
                client: Box::new(Self::cluster_client(&seeds, &certs, None)?),
                seeds,
                certs,
            })
        } else {
            let certs = tls.load(&[url.to_string()])?;
            Ok(Target::Single {
                client: Box::new(Self::single_client(url, &certs)?),
                url: url.to_string(),
                certs,
            })
        }
    }

    /// The primary named `master` as the Sentinels at the comma-separated `urls` report it,
    /// authenticating to it with `password`. No round trip yet.
    pub fn open_sentinel(url: &str, master: &str, password: Option<&str>) -> RedisResult<Self> {
        let urls = split_urls(url)?;
        if master.is_empty() {
            return Err(config_error("the Sentinel master name is empty".into()));
        }
        let client = |protocol| -> RedisResult<_> {
            let c = sentinel_client(&urls, master, password, protocol)?;
            Ok(Arc::new(TokioMutex::new(c)))
        };
        Ok(Target::Sentinel {
            plain: client(redis::ProtocolVersion::RESP2)?,
            resp3: client(redis::ProtocolVersion::RESP3)?,
        })
    }

    /// [`open_sentinel`](Self::open_sentinel) when `sentinel` names a master (TLS is not
    /// combined with Sentinel yet), else [`open`](Self::open).
    pub fn choose(
        url: &str,
        cluster: bool,
        sentinel: Option<&str>,
        master_password: Option<&str>,
        tls: &TlsFiles,
    ) -> RedisResult<Self> {
        match sentinel {
            Some(_) if cluster => Err(config_error(
                "Sentinel and Cluster exclude each other".into(),
            )),
            Some(_) if *tls != TlsFiles::default() || url.contains("rediss://") => Err(
                config_error("TLS with Sentinel is not supported yet".into()),
            ),
            Some(master) => Self::open_sentinel(url, master, master_password),
            None => Self::open(url, cluster, tls),
        }
    }

    fn single_client(
        url: &str,
        certs: &Option<redis::TlsCertificates>,
    ) -> RedisResult<redis::Client> {
        match certs {
            Some(certs) => redis::Client::build_with_tls(url, certs.clone()),
            None => redis::Client::open(url),
        }
    }

    fn cluster_client(
        seeds: &[String],
        certs: &Option<redis::TlsCertificates>,
        push: Option<mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> RedisResult<redis::cluster::ClusterClient> {
        let seeds: Vec<String> = if push.is_some() {
            seeds.iter().map(|s| resp3(s)).collect()
        } else {
            seeds.to_vec()
        };
        let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(3)
            .max_retry_wait(2000);
        if let Some(certs) = certs {
            builder = builder.certs(certs.clone());
        }
        if let Some(tx) = push {
            builder = builder
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx);
        }
        builder.build()
    }

    /// The node's shared connection: multiplexed (concurrent calls are pipelined) and
    /// reconnecting by itself.
    pub async fn shared(&self) -> RedisResult<Conn> {
        match self {
            Target::Single { client, .. } => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(3)
                    .set_max_delay(Duration::from_secs(2));
                let m = redis::aio::ConnectionManager::new_with_config((**client).clone(), config)
                    .await?;
                Ok(Conn::Manager(m))
            }
            Target::Cluster { client, .. } => {
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
            Target::Sentinel { plain, .. } => Ok(Conn::Sentinel(
                FollowPrimary::new(plain.clone(), RESPONSE_TIMEOUT).await?,
            )),
        }
    }

    /// A connection of its own, for blocking reads (`XREADGROUP BLOCK`) that must not stall
    /// the shared one. Blocks for at most `block`, so replies get that much extra time.
    pub async fn dedicated(&self, block: Duration) -> RedisResult<Conn> {
        match self {
            Target::Single { client, .. } => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT + block));
                Ok(Conn::Multiplexed(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Target::Cluster { client, .. } => {
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
            Target::Sentinel { plain, .. } => Ok(Conn::Sentinel(
                FollowPrimary::new(plain.clone(), RESPONSE_TIMEOUT + block).await?,
            )),
        }
    }

    /// A new subscriber connection (RESP3), with no subscriptions yet.
    pub async fn subscriber(&self) -> RedisResult<(Subscriptions, Messages)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = match self {
            Target::Single { url, certs, .. } => {
                let client = Self::single_client(&resp3(url), certs)?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_push_sender(tx);
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Conn::Multiplexed(conn)
            }
            Target::Cluster { seeds, certs, .. } => {
                let client = Self::cluster_client(seeds, certs, Some(tx))?;
                Conn::Cluster(client.get_async_connection().await?)
            }
            Target::Sentinel { resp3, .. } => {
                // Looked up afresh: after a failover the follower rebuilds its subscriber here.
                let client = resp3.lock().await.async_get_client().await?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_push_sender(tx);
                Conn::Multiplexed(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
        };
        Ok((Subscriptions::new(conn), Messages::new(rx)))
    }
}

/// One connection to the target, of whichever kind.
#[derive(Clone)]
pub enum Conn {
    Manager(redis::aio::ConnectionManager),
    Multiplexed(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
    Sentinel(FollowPrimary),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(f) => Box::pin(async move {
                let mut conn = f.conn().await?;
                let result = conn.req_packed_command(cmd).await;
                f.check(&result, read_only).await;
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(f) => Box::pin(async move {
                let mut conn = f.conn().await?;
                let result = conn.req_packed_commands(cmd, offset, count).await;
                f.check(&result, |vs: &Vec<Value>| vs.iter().any(read_only))
                    .await;
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(_) => 0,
        }
    }
}
