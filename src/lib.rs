//! paynotify: tells the world a payment happened, reliably, at scale.
//!
//! The library behind the `paynotify` binary. [`run`] starts one node with the roles of its
//! [`Config`] on a bound listener and stops when the shutdown token is cancelled; tests call the
//! same function. See ARCHITECTURE.md for the code map.
#![forbid(unsafe_code)]

pub mod api;
pub mod backend;
pub mod channel;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod dev;
pub mod device;
pub mod http;
pub mod intake;
pub mod keys;
pub mod metrics;
pub mod notification;
pub mod push;
pub mod redis_child;
pub mod scripts;
pub mod shutdown;
pub mod signing;
pub mod store;
pub mod token;
pub mod worker;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, Instrument};

pub use config::Config;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Deliver(#[from] deliver::DeliverError),
    #[error(transparent)]
    Signing(#[from] signing::SigningError),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    #[error("node id {0:?} is held by another running node; give each node its own --node-id (or leave it unset)")]
    NodeIdInUse(String),
    #[error("device TLS: {0}")]
    DeviceTls(String),
}

/// Locks `m`, also after a panic elsewhere poisoned it (the data are counters and maps that
/// stay consistent between statements).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pause before the next attempt to reach Redis after `failures` failures in a row: 100 ms
/// doubling to at most 3 s.
pub(crate) fn backoff(failures: u32) -> std::time::Duration {
    std::time::Duration::from_millis((100u64 << failures.min(5)).min(3000))
}

/// A token bucket with one owner (a connection's loop, so no locking): up to `burst` at once,
/// refilled at `per_sec`. Used to bound what one client can make the node do per second.
pub(crate) struct Budget {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Budget {
    pub(crate) fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: std::time::Instant::now(),
        }
    }

    /// Takes one token; false when there is none left.
    pub(crate) fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new notification id: a UUIDv7, so generated ids sort by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// How long a node's hold on its id lasts without a refresh (refreshed every third of it).
const NODE_ID_TTL: std::time::Duration = std::time::Duration::from_secs(15);

/// Keeps this process's hold on its node id until `stop`, then lets go of it.
async fn hold_node_id(
    store: store::Store,
    node_id: String,
    instance: String,
    stop: CancellationToken,
) {
    let ttl = NODE_ID_TTL.as_millis() as u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(NODE_ID_TTL / 3) => {}
            _ = stop.cancelled() => break,
        }
        match store.hold_node_id(&node_id, &instance, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(%node_id, "another node took this node id while Redis was unreachable; device calls may be misrouted until one of them stops")
            }
            Err(e) => tracing::debug!(error = %e, "node id not refreshed"),
        }
    }
    if let Err(e) = store.hold_node_id(&node_id, &instance, 0).await {
        tracing::debug!(error = %e, "node id not released; it expires by itself");
    }
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
    let config = Arc::new(config);
    let keys = keys::Keys::for_target(&config.prefix, config.partitions, config.redis_cluster);
    let target = backend::Target::choose(
        &config.redis_url,
        config.redis_cluster,
        config.redis_sentinel.as_deref(),
        config.redis_master_password.as_deref(),
        &config.redis_tls,
    )
    .map_err(store::StoreError::from)?;
    let store = store::Store::on(target, keys).with_wait(config.wait_replicas, config.wait_timeout);
    store.load_scripts().await?;
    // Two live nodes with one id would answer each other's device calls: refuse to start.
    let instance = new_id();
    if !store
        .hold_node_id(&config.node_id, &instance, NODE_ID_TTL.as_millis() as u64)
        .await?
    {
        return Err(RunError::NodeIdInUse(config.node_id.clone()));
    }
    info!(node = %config.node_id, redis = %config::redact_url(&config.redis_url), roles = ?config.roles, "node starting");

    let metrics = metrics::Metrics::new();
    // One set of connection caps for the HTTP listener and the device listener.
    let conn_limits = http::ConnLimits::new(config.max_connections, config.max_connections_per_ip);
    let mut tasks = tokio::task::JoinSet::new();
    // Stops the HTTP server and what it needs to answer (the node channel for device calls),
    // after the roles have drained.
    let stop_http = CancellationToken::new();
    let mut late_tasks = tokio::task::JoinSet::new();
    late_tasks.spawn(
        hold_node_id(
            store.clone(),
            config.node_id.clone(),
            instance,
            stop_http.clone(),
        )
        .instrument(info_span!("node_id")),
    );
    if config.roles.worker {
        let signer = signing::Signer::new(&config.signing_secrets)?;
        let deliverer = deliver::Deliverer::new(
            signer,
            config.allow_private_targets,
            config.per_destination_concurrency,
        )?;
        tasks.spawn(
            worker::run(
                config.clone(),
                store.clone(),
                deliverer,
                metrics.clone(),
                shutdown.clone(),
            )
            .instrument(info_span!("worker")),
        );
        tasks.spawn(
            intake::run(
                config.clone(),
                store.clone(),
                metrics.clone(),
                shutdown.clone(),
            )
            .instrument(info_span!("intake")),
        );
    }
    let hub = config
        .roles
        .gateway
        .then(|| push::Hub::new(store.clone(), metrics.clone()));
    if let Some(hub) = &hub {
        tasks.spawn(
            hub.clone()
                .run(shutdown.clone())
                .instrument(info_span!("pubsub")),
        );
    }
    let devices = (config.roles.api || config.roles.gateway)
        .then(|| device::Devices::new(config.clone(), store.clone()));
    if let Some(devices) = &devices {
        late_tasks.spawn(
            devices
                .clone()
                .run_node_channel(stop_http.clone())
                .instrument(info_span!("node_channel")),
        );
        if let (Some(l), true) = (device_listener, config.roles.gateway) {
            let tls = match &config.device_tls {
                Some((cert, key)) => {
                    Some(device::tls_acceptor(cert, key).map_err(RunError::DeviceTls)?)
                }
                None => None,
            };
            tasks.spawn(
                devices
                    .clone()
                    .run_listener(l, tls, conn_limits.clone(), shutdown.clone())
                    .instrument(info_span!("devices")),
            );
        }
    }
    let device_ws = devices
        .clone()
        .filter(|_| config.roles.gateway)
        .map(|d| device::router(d, shutdown.clone()));
    let state = api::ApiState {
        config: config.clone(),
        store: store.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        devices,
        shutdown: shutdown.clone(),
    };
    let mut app = api::health_router(state.clone());
    if config.roles.api {
        app = app.merge(api::v1_router(state));
    }
    if let Some(hub) = hub {
        app = app.merge(push::ws::router(push::ws::GatewayState {
            config: config.clone(),
            store: store.clone(),
            hub,
            shutdown: shutdown.clone(),
        }));
    }
    if let Some(device_ws) = device_ws {
        app = app.merge(device_ws);
    }
    let app = app
        .merge(extra)
        .fallback(api::not_found)
        .layer(axum::middleware::map_response(api::json_errors))
        .layer(axum::middleware::from_fn(http::head_limits));
    // The HTTP server outlives the shutdown signal: while the roles drain it keeps answering
    // (`/readyz` says 503 draining, so a load balancer stops sending), then it stops.
    let http_stop = stop_http.clone();
    let mut http = tokio::spawn(
        http::serve(
            listener,
            app,
            conn_limits.clone(),
            config.header_read_timeout,
            http_stop,
            config.shutdown_grace,
        )
        .instrument(info_span!("http")),
    );
    metrics.ready.set(1);
    let early = tokio::select! {
        _ = shutdown.cancelled() => None,
        ended = &mut http => Some(ended),
    };
    metrics.ready.set(0);
    // A listener failure also stops everything.
    shutdown.cancel();
    info!(delay_s = config.shutdown_delay.as_secs_f64(), "draining");
    let delay = tokio::time::sleep(config.shutdown_delay);
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
