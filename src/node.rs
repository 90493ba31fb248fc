//! One node: picks the Redis target, claims the node id, starts the roles, serves HTTP, and
//! drains in order on shutdown.
//!
//! Invariant: every task a node spawns is in one of two JoinSets and awaited before [`run`]
//! returns: the roles (stopped by the shutdown token) first, then what the HTTP server needs to
//! answer while they drain (the node channel, the node-id hold), then the server itself.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, Instrument};

use crate::config::{self, Config};
use crate::util::new_id;

mod identity;
use crate::delivery::attempt::{DeliverError, Deliverer};
use crate::delivery::merchants::{secrets::Keyring, Registry};
use crate::delivery::signing::{Signer, SigningError};
use crate::delivery::worker;
use crate::devices::Devices;
use crate::http::gateway::Gateway;
use crate::http::state::{AppState, Shared};
use crate::intake;
use crate::limits::ConnLimits;
use crate::metrics::Metrics;
use crate::push::session::Browsers;
use crate::push::{Hub, Results};
use crate::redis::{Keys, Redis, StoreError, Target};

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    #[error("node id {0:?} is held by another running node; give each node its own --node-id (or leave it unset)")]
    NodeIdInUse(String),
    #[error("device TLS: {0}")]
    DeviceTls(String),
    #[error(transparent)]
    Partitions(#[from] crate::redis::partitions::PartitionsError),
}

/// Runs one node until `shutdown` is cancelled, then drains and returns.
///
/// The listener always serves `/healthz` and `/readyz`; the `/v1` API only with the `api` role.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    run_with(config, listener, shutdown, axum::Router::new()).await
}

/// [`run`] with extra routes merged into the HTTP server (used by `dev` for its demo sink).
/// Binds the device listener from `config.device_listen` on gateway nodes.
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    extra: axum::Router,
) -> Result<(), RunError> {
    let devices = match (&config.device_listen, config.roles.gateway) {
        (Some(addr), true) => Some(TcpListener::bind(addr).await.map_err(|e| {
            RunError::Io(std::io::Error::new(
                e.kind(),
                format!("--device-listen {addr}: {e}"),
            ))
        })?),
        _ => None,
    };
    run_with_listeners(config, listener, devices, shutdown, extra).await
}

/// [`run_with`] on an already bound device listener (tests bind port 0).
pub async fn run_with_listeners(
    config: Config,
    listener: TcpListener,
    device_listener: Option<TcpListener>,
    shutdown: CancellationToken,
    extra: axum::Router,
) -> Result<(), RunError> {
    let mut config = config;
    let target = Target::choose(
        &config.redis_url,
        config.redis_cluster,
        config.redis_sentinel.as_deref(),
        config.redis_master_password.as_deref(),
        &config.redis_tls,
    )
    .map_err(StoreError::from)?;
    let partitions = crate::redis::partitions::resolve(
        &target,
        &config.prefix,
        config.redis_cluster,
        config.partitions,
        true,
    )
    .await?;
    config.partitions = Some(partitions);
    let config = Arc::new(config);
    let keys = Keys::for_target(&config.prefix, partitions, config.redis_cluster);
    let redis = Redis::on(target, keys).with_wait(config.wait_replicas, config.wait_timeout);
    redis.load_scripts().await?;
    // Two live nodes with one id would answer each other's device calls: refuse to start.
    let instance = new_id();
    let ttl = identity::NODE_ID_TTL.as_millis() as u64;
    if !identity::hold(&redis, &config.node_id, &instance, ttl).await? {
        return Err(RunError::NodeIdInUse(config.node_id.clone()));
    }
    info!(node = %config.node_id, redis = %config::redact_url(&config.redis_url), roles = ?config.roles, "node starting");

    let parts = Parts::new(config.clone(), redis);
    // One set of connection caps for the HTTP listener and the device listener.
    let conn_limits = ConnLimits::new(config.max_connections, config.max_connections_per_ip);
    // Stops the HTTP server and what it needs to answer (the node channel for device calls),
    // after the roles have drained.
    let stop_http = CancellationToken::new();
    let mut late_tasks = tokio::task::JoinSet::new();
    late_tasks.spawn(
        identity::hold_node_id(
            parts.redis.clone(),
            config.node_id.clone(),
            instance,
            stop_http.clone(),
        )
        .instrument(info_span!("node_id")),
    );
    // Device calls reach a node on its channel (api nodes get the replies there too).
    if config.roles.api || config.roles.gateway {
        late_tasks.spawn(
            parts
                .devices
                .clone()
                .run_node_channel(stop_http.clone())
                .instrument(info_span!("node_channel")),
        );
    }
    let tasks = spawn_roles(&parts, device_listener, &conn_limits, &shutdown)?;
    let app = router(&parts, extra, &shutdown);
    // The HTTP server outlives the shutdown signal: while the roles drain it keeps answering
    // (`/readyz` says 503 draining, so a load balancer stops sending), then it stops.
    let http = tokio::spawn(
        crate::http::server::serve(
            listener,
            app,
            conn_limits,
            config.header_read_timeout,
            stop_http.clone(),
            config.shutdown_grace,
        )
        .instrument(info_span!("http")),
    );
    drain(&parts, tasks, late_tasks, http, stop_http, &shutdown).await
}

/// The node's shared handles, made once.
struct Parts {
    config: Arc<Config>,
    redis: Redis,
    metrics: Metrics,
    results: Results,
    hub: Hub,
    devices: Devices,
    merchants: Registry,
}

impl Parts {
    fn new(config: Arc<Config>, redis: Redis) -> Self {
        let metrics = Metrics::new();
        let results = Results::new(redis.clone());
        Self {
            hub: Hub::new(results.clone(), metrics.clone()),
            devices: Devices::new(config.clone(), redis.clone()),
            // Validated at start (`to_config`): keys that do not parse open nothing.
            merchants: Registry::new(
                redis.clone(),
                Keyring::new(&config.secret_encryption_keys).ok().flatten(),
            ),
            config,
            redis,
            metrics,
            results,
        }
    }
}

/// Starts the tasks of the node's roles (all stopped by `shutdown`): worker and intake, the
/// pub/sub hub, the device listener.
fn spawn_roles(
    parts: &Parts,
    device_listener: Option<TcpListener>,
    conn_limits: &ConnLimits,
    shutdown: &CancellationToken,
) -> Result<tokio::task::JoinSet<()>, RunError> {
    let config = &parts.config;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(
        crate::ops::nodes::run(
            config.clone(),
            parts.redis.clone(),
            parts.metrics.clone(),
            shutdown.clone(),
        )
        .instrument(info_span!("node_report")),
    );
    if config.roles.worker {
        let deliverer = Deliverer::new(
            Signer::new(&config.signing_secrets, &config.signing_keys)?,
            config.allow_private_targets,
            config.per_destination_concurrency,
        )?;
        tasks.spawn(
            worker::run(
                config.clone(),
                crate::delivery::store::Store::new(parts.redis.clone()),
                deliverer,
                parts.merchants.clone(),
                parts.metrics.clone(),
                shutdown.clone(),
            )
            .instrument(info_span!("worker")),
        );
        tasks.spawn(
            intake::run(
                config.clone(),
                parts.redis.clone(),
                parts.merchants.clone(),
                parts.metrics.clone(),
                shutdown.clone(),
            )
            .instrument(info_span!("intake")),
        );
    }
    if config.roles.gateway {
        tasks.spawn(
            parts
                .hub
                .clone()
                .run(shutdown.clone())
                .instrument(info_span!("pubsub")),
        );
        if let Some(listener) = device_listener {
            let tls = match &config.device_tls {
                Some((cert, key)) => {
                    Some(crate::tls::tls_acceptor(cert, key).map_err(RunError::DeviceTls)?)
                }
                None => None,
            };
            tasks.spawn(
                parts
                    .devices
                    .clone()
                    .run_listener(listener, tls, conn_limits.clone(), shutdown.clone())
                    .instrument(info_span!("devices")),
            );
        }
    }
    Ok(tasks)
}

/// The HTTP routes of the node's roles: health always, `/v1` with the api role, the browser
/// and device routes with the gateway role, then `extra` (the `dev` demo).
fn router(parts: &Parts, extra: axum::Router, shutdown: &CancellationToken) -> axum::Router {
    let config = &parts.config;
    let state = AppState::new(Shared {
        config: config.clone(),
        redis: parts.redis.clone(),
        notifications: crate::delivery::store::Store::new(parts.redis.clone()),
        results: parts.results.clone(),
        presence: crate::devices::presence::Presence::new(parts.redis.clone()),
        hub: parts.hub.clone(),
        devices: parts.devices.clone(),
        merchants: parts.merchants.clone(),
        metrics: parts.metrics.clone(),
        public_keys: Arc::new(
            // Validated at start (`to_config`); a key that does not parse publishes nothing.
            Signer::new(&[], &config.signing_keys)
                .ok()
                .flatten()
                .map(|s| s.public_keys())
                .unwrap_or_default(),
        ),
        shutdown: shutdown.clone(),
    });
    let mut app = crate::http::health::router(state.clone());
    if config.roles.api {
        app = app.merge(crate::http::v1::public_router(state.clone()));
        app = app.merge(crate::http::v1::router(state.clone()));
        app = app.merge(crate::http::console::router(state));
    }
    if config.roles.gateway {
        app = app.merge(crate::http::gateway::router(Gateway {
            browsers: Browsers {
                config: config.clone(),
                results: parts.results.clone(),
                hub: parts.hub.clone(),
            },
            devices: parts.devices.clone(),
            shutdown: shutdown.clone(),
        }));
    }
    app.merge(extra)
        .fallback(crate::http::error::not_found)
        .layer(axum::middleware::map_response(
            crate::http::error::json_errors,
        ))
        .layer(axum::middleware::from_fn(crate::http::server::head_limits))
}

/// Waits for the shutdown signal (or the HTTP server's end), then drains in order: the roles,
/// `--shutdown-delay`, then what HTTP needs, then HTTP.
async fn drain(
    parts: &Parts,
    mut tasks: tokio::task::JoinSet<()>,
    mut late_tasks: tokio::task::JoinSet<()>,
    mut http: tokio::task::JoinHandle<std::io::Result<()>>,
    stop_http: CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    let metrics = &parts.metrics;
    metrics.ready.set(1);
    let early = tokio::select! {
        _ = shutdown.cancelled() => None,
        ended = &mut http => Some(ended),
    };
    metrics.ready.set(0);
    // A listener failure also stops everything.
    shutdown.cancel();
    let delay_for = parts.config.shutdown_delay;
    info!(delay_s = delay_for.as_secs_f64(), "draining");
    let delay = tokio::time::sleep(delay_for);
    while tasks.join_next().await.is_some() {}
    delay.await;
    stop_http.cancel();
    while late_tasks.join_next().await.is_some() {}
    let http_result = match early {
        Some(ended) => ended,
        None => http.await,
    };
    info!("node stopped");
    match http_result {
        Ok(r) => Ok(r?),
        Err(e) => Err(RunError::Io(std::io::Error::other(format!(
            "http server task: {e}"
        )))),
    }
}
