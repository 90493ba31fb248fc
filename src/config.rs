//! Validated runtime configuration of a node, built from the CLI. Its defaults are the flags'
//! (`cli::serve`, written once there); `cli::serve::config_for` gives them to `dev` and tests.
//!
//! Invariant: a `Config` that exists is usable: durations are positive, limits are at least 1,
//! secrets parsed. Secrets are kept out of `Debug` output.

use std::time::Duration;

/// The roles a node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// HTTP API (`/v1/...`).
    pub api: bool,
    /// Delivery worker and intake consumer.
    pub worker: bool,
    /// Public endpoints for browsers: `/ws`, the long-poll, the JS client.
    pub gateway: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        api: true,
        worker: true,
        gateway: true,
    };

    /// Parses a comma-separated list such as `api,worker`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut roles = Roles {
            api: false,
            worker: false,
            gateway: false,
        };
        for role in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "api" => roles.api = true,
                "worker" => roles.worker = true,
                "gateway" => roles.gateway = true,
                "all" => roles = Roles::ALL,
                other => {
                    return Err(format!(
                        "unknown role {other:?}; use api, worker, gateway or all"
                    ))
                }
            }
        }
        if !roles.api && !roles.worker && !roles.gateway {
            return Err("no role given; use api, worker, gateway or all".into());
        }
        Ok(roles)
    }
}

/// Everything a node needs to run.
#[derive(Clone)]
pub struct Config {
    pub redis_url: String,
    /// `redis_url` lists seed nodes of a Redis Cluster (comma-separated).
    pub redis_cluster: bool,
    /// With Sentinel: the master's name (`redis_url` then lists the Sentinels).
    pub redis_sentinel: Option<String>,
    /// With Sentinel: the password of the primary (the Sentinels' own is in their URLs).
    pub redis_master_password: Option<String>,
    /// CA and client certificate files for `rediss://` (all optional).
    pub redis_tls: crate::redis::target::TlsFiles,
    /// Opt-in durability: after each enqueue, `WAIT` for this many replicas (0: off).
    pub wait_replicas: u32,
    /// How long that `WAIT` may take before the enqueue is refused as not replicated.
    pub wait_timeout: Duration,
    pub prefix: String,
    /// `--partitions` as given; the node resolves it against the count recorded in Redis
    /// (`redis::partitions`) before it builds its keys.
    pub partitions: Option<u32>,
    pub roles: Roles,
    pub node_id: String,
    /// Bearer keys accepted by the HTTP API (several for rotation).
    pub api_keys: Vec<String>,
    /// Keys that sign in to the console to look only (`--console-read-only-keys`).
    pub console_read_only_keys: Vec<String>,
    /// How long a console sign-in lasts.
    pub console_session_ttl: Duration,
    /// Always mark the console's session cookie `Secure`.
    pub console_secure_cookies: bool,
    /// `whsec_` secrets; every attempt carries one signature per secret.
    pub signing_secrets: Vec<String>,
    /// `whsk_` Ed25519 keys; every attempt carries one `v1a` signature per key.
    pub signing_keys: Vec<String>,
    /// Key-encryption keys for merchant secrets (secret: never printed).
    pub secret_encryption_keys: Vec<String>,
    pub secret_rotation_grace: Duration,
    pub disabled_merchant_recheck: Duration,
    /// Where operational events are sent (as notifications), if anywhere.
    pub ops_events_url: Option<String>,
    pub merchant_failing_after: u32,
    pub auto_disable_after: Option<Duration>,
    pub allow_private_targets: bool,
    pub lease: Duration,
    pub max_stalls: u32,
    pub retention: Duration,
    pub dead_retention: Duration,
    /// Most attempts to one destination across the cluster (each node's share: this / nodes).
    pub per_destination_concurrency: usize,
    pub lane_initial_concurrency: usize,
    pub breaker_window: Duration,
    pub breaker_cooldown: Duration,
    pub breaker_min_requests: u64,
    pub breaker_failure_percent: u64,
    pub max_in_flight: usize,
    pub claim_batch: usize,
    pub shutdown_grace: Duration,
    /// How long HTTP keeps answering (not ready) after the shutdown signal.
    pub shutdown_delay: Duration,
    /// Open connections a node accepts (HTTP, websockets and devices together).
    pub max_connections: usize,
    /// Open connections from one client address (0: no cap).
    pub max_connections_per_ip: usize,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Secrets for subscribe and device tokens (the first mints; any verifies).
    pub token_secrets: Vec<String>,
    /// How long an order's latest result is kept.
    pub result_ttl: Duration,
    /// Websocket ping interval; a ping unanswered by the next one closes the socket.
    pub ws_ping_interval: Duration,
    /// Orders one websocket may follow.
    pub ws_max_subscriptions: usize,
    /// Origins allowed to open `/ws` (lowercase, no trailing slash); empty: any.
    pub ws_allowed_origins: Vec<String>,
    /// Frames queued for one websocket before it is cut off as too slow.
    pub ws_send_queue: usize,
    /// Where devices connect (TCP, newline-delimited JSON); none: no device listener.
    pub device_listen: Option<String>,
    /// Expected device heartbeat interval; a device silent for 1.5 of them is closed.
    pub device_heartbeat: Duration,
    /// PEM certificate chain and key: the device TCP listener then speaks TLS only.
    pub device_tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Where device events are delivered (as notifications, with retries); none: refused.
    pub device_events_url: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_cluster", &self.redis_cluster)
            .field("redis_tls", &self.redis_tls)
            .field("redis_sentinel", &self.redis_sentinel)
            .field(
                "redis_master_password",
                &self.redis_master_password.as_ref().map(|_| "<redacted>"),
            )
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .field("prefix", &self.prefix)
            .field("partitions", &self.partitions)
            .field("roles", &self.roles)
            .field("node_id", &self.node_id)
            .field("api_keys", &format!("{} configured", self.api_keys.len()))
            .field(
                "console_read_only_keys",
                &format!("{} configured", self.console_read_only_keys.len()),
            )
            .field("console_session_ttl", &self.console_session_ttl)
            .field("console_secure_cookies", &self.console_secure_cookies)
            .field(
                "signing_secrets",
                &format!("{} configured", self.signing_secrets.len()),
            )
            .field(
                "signing_keys",
                &format!("{} configured", self.signing_keys.len()),
            )
            .field(
                "secret_encryption_keys",
                &format!("{} configured", self.secret_encryption_keys.len()),
            )
            .field("secret_rotation_grace", &self.secret_rotation_grace)
            .field("disabled_merchant_recheck", &self.disabled_merchant_recheck)
            .field(
                "ops_events_url",
                &self.ops_events_url.as_deref().map(redact_url),
            )
            .field("merchant_failing_after", &self.merchant_failing_after)
            .field("auto_disable_after", &self.auto_disable_after)
            .field("allow_private_targets", &self.allow_private_targets)
            .field("lease", &self.lease)
            .field("max_stalls", &self.max_stalls)
            .field("retention", &self.retention)
            .field("dead_retention", &self.dead_retention)
            .field(
                "per_destination_concurrency",
                &self.per_destination_concurrency,
            )
            .field("lane_initial_concurrency", &self.lane_initial_concurrency)
            .field("breaker_window", &self.breaker_window)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("breaker_min_requests", &self.breaker_min_requests)
            .field("breaker_failure_percent", &self.breaker_failure_percent)
            .field("max_in_flight", &self.max_in_flight)
            .field("claim_batch", &self.claim_batch)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("shutdown_delay", &self.shutdown_delay)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("header_read_timeout", &self.header_read_timeout)
            .field(
                "token_secrets",
                &format!("{} configured", self.token_secrets.len()),
            )
            .field("result_ttl", &self.result_ttl)
            .field("ws_ping_interval", &self.ws_ping_interval)
            .field("ws_max_subscriptions", &self.ws_max_subscriptions)
            .field("ws_send_queue", &self.ws_send_queue)
            .field("device_listen", &self.device_listen)
            .field("device_heartbeat", &self.device_heartbeat)
            .field("device_tls", &self.device_tls)
            .field("ws_allowed_origins", &self.ws_allowed_origins)
            .field("device_events_url", &self.device_events_url)
            .finish()
    }
}

/// `hostname-pid-xxxx`, unique per process.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// A Redis URL with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    // A Cluster's seed list is several URLs, comma-separated: redact each.
    url.split(',')
        .map(|one| match url::Url::parse(one.trim()) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            Ok(u) => u.to_string(),
            Err(_) if one.contains('@') => "<unparsable URL with credentials>".to_string(),
            Err(_) => one.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}
