//! `serve` and `dev`: the flags of a node, parsed into a validated [`Config`].
//!
//! Invariant: every flag has an environment variable and a `///` line that is its `--help`;
//! [`ServeArgs::to_config`] names every field of `Config` (no `..` base), so a new field cannot
//! silently take some other default.

use std::time::Duration;

use clap::Args;

use super::validate;
use crate::config::{Config, Roles};
use crate::delivery::store::Store;
use crate::redis::{Keys, Redis, Target};

/// Where the data lives.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL (redis://[user:password@]host:port[/db]); rediss:// for TLS, which checks the
    /// server's certificate against the system's trust store or --redis-ca-file.
    #[arg(
        long,
        env = "PAYNOTIFY_REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Redis is a Redis Cluster: --redis-url lists one or more seed nodes, comma-separated
    /// (redis://10.0.0.1:6379,redis://10.0.0.2:6379). Needs Redis 7 (sharded pub/sub).
    #[arg(long, env = "PAYNOTIFY_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Find the primary through Redis Sentinel: the name of the monitored master.
    /// --redis-url then lists the Sentinels (redis://10.0.0.1:26379,redis://10.0.0.2:26379); every
    /// (re)connection asks them for the current primary, so a failover is followed.
    #[arg(long, env = "PAYNOTIFY_REDIS_SENTINEL", value_name = "MASTER")]
    pub redis_sentinel: Option<String>,
    /// With --redis-sentinel: the primary's password (the Sentinels' own goes in their URLs).
    #[arg(long, env = "PAYNOTIFY_REDIS_MASTER_PASSWORD", hide_env_values = true)]
    pub redis_master_password: Option<String>,
    /// PEM file of the CA(s) to trust for rediss:// instead of the system's trust store (a
    /// private CA, as managed Redis services and cert-manager issue).
    #[arg(long, env = "PAYNOTIFY_REDIS_CA_FILE", value_name = "PEM")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for mutual TLS to Redis (with --redis-client-key).
    #[arg(long, env = "PAYNOTIFY_REDIS_CLIENT_CERT", value_name = "PEM")]
    pub redis_client_cert: Option<std::path::PathBuf>,
    /// PEM private key of --redis-client-cert.
    #[arg(long, env = "PAYNOTIFY_REDIS_CLIENT_KEY", value_name = "PEM")]
    pub redis_client_key: Option<std::path::PathBuf>,
    /// Prefix of every Redis key.
    #[arg(long, env = "PAYNOTIFY_PREFIX", default_value = "paynotify")]
    pub prefix: String,
    /// Number of partitions notifications are spread over (each is one Redis Cluster slot).
    /// Recorded in Redis by the first node; leave it out to use the recorded count (48 on a
    /// fresh Redis). A count different from the recorded one is refused at start.
    #[arg(long, env = "PAYNOTIFY_PARTITIONS", value_name = "N")]
    pub partitions: Option<u32>,
}

/// Everything a node takes.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Address the HTTP server listens on.
    #[arg(long, env = "PAYNOTIFY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Roles of this node, comma-separated: api (the /v1 API), worker (delivery and the intake
    /// consumer), gateway (browsers' /ws and long-poll, the /device websocket), or all.
    #[arg(long, env = "PAYNOTIFY_ROLES", default_value = "all")]
    pub roles: String,
    /// API bearer keys, comma-separated (several for rotation). Required with the api role.
    #[arg(
        long,
        env = "PAYNOTIFY_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_key: Vec<String>,
    /// Keys that sign in to the operator console (/console) to look only: no replay, rotate,
    /// disable or device call. Comma-separated, each at least 16 characters. (Any --api-key
    /// signs in with every right.)
    #[arg(
        long,
        env = "PAYNOTIFY_CONSOLE_READ_ONLY_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub console_read_only_keys: Vec<String>,
    /// How long a console sign-in lasts; then the browser is sent back to the sign-in page.
    #[arg(long, env = "PAYNOTIFY_CONSOLE_SESSION_TTL", default_value = "8h", value_parser = humantime::parse_duration)]
    pub console_session_ttl: std::time::Duration,
    /// Mark the console's session cookie `Secure` on every sign-in, not only on requests that
    /// came over TLS (`X-Forwarded-Proto: https`): set it when a TLS proxy terminates in front.
    #[arg(long, env = "PAYNOTIFY_CONSOLE_SECURE_COOKIES")]
    pub console_secure_cookies: bool,
    /// Standard Webhooks signing secrets (whsec_...), comma-separated; one signature each.
    #[arg(
        long,
        env = "PAYNOTIFY_SIGNING_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub signing_secret: Vec<String>,
    /// Ed25519 signing keys (whsk_..., from `paynotify keygen`), comma-separated: every
    /// attempt also carries one `v1a,<base64>` signature per key (Standard Webhooks asymmetric),
    /// and GET /v1/signing-keys publishes their public halves, so merchants verify without a
    /// shared secret.
    #[arg(
        long,
        env = "PAYNOTIFY_SIGNING_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub signing_key: Vec<String>,
    /// Key-encryption keys for merchant secrets at rest (base64 of 32 random bytes, from
    /// `paynotify keygen --encryption-key`), comma-separated: the first seals, any opens, so the
    /// key can be rotated. Needed to make merchants and to sign their notifications; a Redis
    /// dump or replica alone then gives no merchant secret away.
    #[arg(
        long,
        env = "PAYNOTIFY_SECRET_ENCRYPTION_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub secret_encryption_key: Vec<String>,
    /// After a merchant's secret is rotated, how long the old one keeps signing beside the new
    /// one (one `v1,` signature each), so the merchant can switch without missing a callback.
    #[arg(long, env = "PAYNOTIFY_SECRET_ROTATION_GRACE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub secret_rotation_grace: Duration,
    /// How long a disabled merchant's due notifications wait before they are looked at again
    /// (they are never attempted, and never spend their schedule, while it stays disabled).
    #[arg(long, env = "PAYNOTIFY_DISABLED_MERCHANT_RECHECK", default_value = "60s", value_parser = humantime::parse_duration)]
    pub disabled_merchant_recheck: Duration,
    /// Where operational events go (notification.dead, merchant.failing, merchant.recovered,
    /// merchant.disabled): POSTed as notifications through the engine itself, signed like any
    /// other with --signing-secret/--signing-key. Unset: no events are sent.
    #[arg(long, env = "PAYNOTIFY_OPS_EVENTS_URL")]
    pub ops_events_url: Option<String>,
    /// Failed attempts in a row after which a merchant is failing (merchant.failing; its next
    /// success says merchant.recovered).
    #[arg(long, env = "PAYNOTIFY_MERCHANT_FAILING_AFTER", default_value_t = 10)]
    pub merchant_failing_after: u32,
    /// Opt-in: disable a merchant that has been failing this long (e.g. 120h); its
    /// notifications then wait, nothing is dropped, until it is enabled again. Unset: never.
    #[arg(long, env = "PAYNOTIFY_AUTO_DISABLE_AFTER", value_parser = humantime::parse_duration)]
    pub auto_disable_after: Option<Duration>,
    /// Allow notify URLs that resolve to loopback, private, link-local, CGNAT or unique-local
    /// addresses (refused by default).
    #[arg(long, env = "PAYNOTIFY_ALLOW_PRIVATE_TARGETS")]
    pub allow_private_targets: bool,
    /// Unique name of this node (default: hostname-pid-random).
    #[arg(long, env = "PAYNOTIFY_NODE_ID")]
    pub node_id: Option<String>,
    /// How long a claim holds a notification; a crashed node's work returns after this.
    #[arg(long, env = "PAYNOTIFY_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Lease expiries (crashes) tolerated per notification before it goes to the dead set.
    #[arg(long, env = "PAYNOTIFY_MAX_STALLS", default_value_t = 3)]
    pub max_stalls: u32,
    /// How long delivered notifications are kept for inspection (and as idempotency keys).
    #[arg(long, env = "PAYNOTIFY_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// How long dead notifications are kept for inspection and replay.
    #[arg(long, env = "PAYNOTIFY_DEAD_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub dead_retention: Duration,
    /// Most concurrent attempts to one destination (host:port), across every node sending to
    /// it: each node's share is this divided by their number. Within its share a node adapts
    /// the limit: it starts at --lane-initial-concurrency, grows while answers come back near
    /// the destination's best latency, and is cut to 70 % on timeouts, connection errors, 429
    /// and 5xx.
    #[arg(
        long,
        env = "PAYNOTIFY_PER_DESTINATION_CONCURRENCY",
        default_value_t = 512
    )]
    pub per_destination_concurrency: usize,
    /// Where a destination's adaptive limit starts on each node.
    #[arg(long, env = "PAYNOTIFY_LANE_INITIAL_CONCURRENCY", default_value_t = 8)]
    pub lane_initial_concurrency: usize,
    /// A destination's circuit breaker counts attempts over this window (all nodes together).
    #[arg(long, env = "PAYNOTIFY_BREAKER_WINDOW", default_value = "30s", value_parser = humantime::parse_duration)]
    pub breaker_window: Duration,
    /// How long an open breaker defers a destination's attempts (without spending their
    /// schedule) before one probe may test it.
    #[arg(long, env = "PAYNOTIFY_BREAKER_COOLDOWN", default_value = "30s", value_parser = humantime::parse_duration)]
    pub breaker_cooldown: Duration,
    /// Fewest attempts in the window before the breaker may open.
    #[arg(long, env = "PAYNOTIFY_BREAKER_MIN_REQUESTS", default_value_t = 10)]
    pub breaker_min_requests: u64,
    /// Share of the window's attempts (percent) that, failing with a timeout, a connection
    /// error, 429 or 5xx, opens the breaker.
    #[arg(long, env = "PAYNOTIFY_BREAKER_FAILURE_PERCENT", default_value_t = 70)]
    pub breaker_failure_percent: u64,
    /// Concurrent attempts per node.
    #[arg(long, env = "PAYNOTIFY_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Most notifications claimed in one script call.
    #[arg(long, env = "PAYNOTIFY_CLAIM_BATCH", default_value_t = 256)]
    pub claim_batch: usize,
    /// On SIGTERM, how long in-flight attempts may finish before the rest is handed back.
    #[arg(long, env = "PAYNOTIFY_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Opt-in durability against asynchronous failover: after each enqueue, wait (Redis
    /// `WAIT`) until this many replicas have it; if they do not within --wait-timeout the
    /// enqueue answers 503 `not_replicated` (the intake leaves the entry for a retry).
    /// 0 turns it off.
    #[arg(long, env = "PAYNOTIFY_WAIT_REPLICAS", default_value_t = 0)]
    pub wait_replicas: u32,
    /// Longest `WAIT` after an enqueue (with --wait-replicas).
    #[arg(long, env = "PAYNOTIFY_WAIT_TIMEOUT", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub wait_timeout: Duration,
    /// Most open connections (HTTP, websockets and devices together); more are refused with
    /// 503 `too_many_connections` (devices: an error frame).
    #[arg(long, env = "PAYNOTIFY_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Most open connections from one client address (0: no cap). Leave it off behind a load
    /// balancer or ingress that does not preserve client addresses.
    #[arg(long, env = "PAYNOTIFY_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,
    /// How long a client may take to send a request's headers before the connection is closed
    /// (slow-header attacks).
    #[arg(long, env = "PAYNOTIFY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// On SIGTERM, how long the HTTP server keeps answering (with `/readyz` at 503) before it
    /// stops, so that load balancers take the node out first. Websockets and devices are told
    /// to reconnect elsewhere at once either way.
    #[arg(long, env = "PAYNOTIFY_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,
    /// Secrets for subscribe/device tokens, comma-separated (the first mints, any verifies).
    /// Required with the gateway role.
    #[arg(
        long,
        env = "PAYNOTIFY_TOKEN_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub token_secret: Vec<String>,
    /// How long an order's latest result is kept for late subscribers.
    #[arg(long, env = "PAYNOTIFY_RESULT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub result_ttl: Duration,
    /// Websocket ping interval; a socket whose pong has not come by the next ping is closed.
    #[arg(long, env = "PAYNOTIFY_WS_PING_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration)]
    pub ws_ping_interval: Duration,
    /// Orders one websocket may follow.
    #[arg(long, env = "PAYNOTIFY_WS_MAX_SUBSCRIPTIONS", default_value_t = 32)]
    pub ws_max_subscriptions: usize,
    /// Browser origins allowed to open `/ws`, comma-separated (https://shop.example); a request
    /// with another `Origin` header gets 403. Empty: any origin (subscriptions need a token
    /// either way). Clients that send no `Origin` (servers, devices) are not affected.
    #[arg(long, env = "PAYNOTIFY_WS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub ws_allowed_origins: Vec<String>,
    /// Frames queued for one websocket before it is cut off as too slow a reader.
    #[arg(long, env = "PAYNOTIFY_WS_SEND_QUEUE", default_value_t = 64)]
    pub ws_send_queue: usize,
    /// Address devices connect to (TCP, newline-delimited JSON), on gateway nodes. Unset: none.
    #[arg(long, env = "PAYNOTIFY_DEVICE_LISTEN")]
    pub device_listen: Option<String>,
    /// Device heartbeat interval; a device silent for 1.5 intervals is closed and marked offline.
    #[arg(long, env = "PAYNOTIFY_DEVICE_HEARTBEAT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub device_heartbeat: Duration,
    /// App URL that device events are delivered to, as notifications with the default schedule.
    #[arg(long, env = "PAYNOTIFY_DEVICE_EVENTS_URL")]
    pub device_events_url: Option<String>,
    /// PEM certificate chain for the device listener: with --device-tls-key, devices must
    /// connect with TLS (their tokens then never cross in the clear).
    #[arg(
        long,
        env = "PAYNOTIFY_DEVICE_TLS_CERT",
        value_name = "PEM",
        requires = "device_tls_key"
    )]
    pub device_tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --device-tls-cert.
    #[arg(
        long,
        env = "PAYNOTIFY_DEVICE_TLS_KEY",
        value_name = "PEM",
        requires = "device_tls_cert"
    )]
    pub device_tls_key: Option<std::path::PathBuf>,
}

/// `dev`: like serve, with a private Redis and laptop defaults.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Use this Redis instead of starting a private redis-server.
    #[arg(long, env = "PAYNOTIFY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Address the HTTP server listens on.
    #[arg(long, env = "PAYNOTIFY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// API key to use (default: a fresh random one, printed).
    #[arg(long, env = "PAYNOTIFY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Address devices connect to (TCP, newline-delimited JSON).
    #[arg(
        long,
        env = "PAYNOTIFY_DEVICE_LISTEN",
        default_value = "127.0.0.1:7070"
    )]
    pub device_listen: String,
}

impl ServeArgs {
    /// Validates into a [`Config`]; the error names the flag.
    pub fn to_config(&self) -> Result<Config, String> {
        let c = self.config()?;
        if let Some((cert, key)) = &c.device_tls {
            crate::tls::tls_acceptor(cert, key)
                .map_err(|e| format!("--device-tls-cert/--device-tls-key: {e}"))?;
        }
        validate::validate(&c)?;
        Ok(c)
    }

    /// The flags as a `Config`, not validated yet.
    fn config(&self) -> Result<Config, String> {
        let roles = Roles::parse(&self.roles).map_err(|e| format!("--roles: {e}"))?;
        // Every field from its flag, spelled out with no `..` base: a field added to `Config`
        // and forgotten here fails to compile instead of inheriting some other default.
        let c = Config {
            redis_url: self.redis.redis_url.clone(),
            redis_cluster: self.redis.redis_cluster,
            redis_sentinel: self.redis.redis_sentinel.clone(),
            redis_master_password: self.redis.redis_master_password.clone(),
            redis_tls: self.redis.tls_files(),
            wait_replicas: self.wait_replicas,
            wait_timeout: self.wait_timeout,
            prefix: self.redis.prefix.clone(),
            partitions: self.redis.partitions,
            roles,
            node_id: self
                .node_id
                .clone()
                .unwrap_or_else(crate::config::default_node_id),
            api_keys: secrets(&self.api_key),
            console_read_only_keys: secrets(&self.console_read_only_keys),
            console_session_ttl: self.console_session_ttl,
            console_secure_cookies: self.console_secure_cookies,
            signing_secrets: secrets(&self.signing_secret),
            signing_keys: secrets(&self.signing_key),
            secret_encryption_keys: secrets(&self.secret_encryption_key),
            secret_rotation_grace: self.secret_rotation_grace,
            disabled_merchant_recheck: self.disabled_merchant_recheck,
            ops_events_url: self.ops_events_url.clone(),
            merchant_failing_after: self.merchant_failing_after,
            auto_disable_after: self.auto_disable_after,
            allow_private_targets: self.allow_private_targets,
            lease: self.lease,
            max_stalls: self.max_stalls,
            retention: self.retention,
            dead_retention: self.dead_retention,
            per_destination_concurrency: self.per_destination_concurrency,
            lane_initial_concurrency: self.lane_initial_concurrency,
            breaker_window: self.breaker_window,
            breaker_cooldown: self.breaker_cooldown,
            breaker_min_requests: self.breaker_min_requests,
            breaker_failure_percent: self.breaker_failure_percent,
            max_in_flight: self.max_in_flight,
            claim_batch: self.claim_batch,
            shutdown_grace: self.shutdown_grace,
            shutdown_delay: self.shutdown_delay,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            header_read_timeout: self.header_read_timeout,
            token_secrets: secrets(&self.token_secret),
            result_ttl: self.result_ttl,
            ws_ping_interval: self.ws_ping_interval,
            ws_max_subscriptions: self.ws_max_subscriptions,
            ws_allowed_origins: self
                .ws_allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
            ws_send_queue: self.ws_send_queue,
            device_listen: self.device_listen.clone(),
            device_heartbeat: self.device_heartbeat,
            device_tls: self
                .device_tls_cert
                .clone()
                .zip(self.device_tls_key.clone()),
            device_events_url: self.device_events_url.clone(),
        };
        Ok(c)
    }
}

/// A `Config` with every flag at its default, on `redis_url`: the production defaults, read from
/// the flags' own definitions (the one place they are written), with environment variables
/// ignored. Not validated: it has no API key or token secret yet. For `dev` and tests, which
/// then set what they need.
pub fn config_for(redis_url: &str) -> Config {
    use clap::FromArgMatches;
    let command = ServeArgs::augment_args(clap::Command::new("defaults"))
        .mut_args(|arg| arg.env(None::<&'static str>));
    let matches = command
        .try_get_matches_from(["defaults", "--redis-url", redis_url])
        .expect("the flags' defaults parse");
    ServeArgs::from_arg_matches(&matches)
        .and_then(|args| {
            args.config()
                .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))
        })
        .expect("the flags' defaults make a config")
}

/// A comma-separated secret list, trimmed, without empty entries.
fn secrets(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

impl RedisArgs {
    fn tls_files(&self) -> crate::redis::target::TlsFiles {
        crate::redis::target::TlsFiles {
            ca_file: self.redis_ca_file.clone(),
            client_cert: self.redis_client_cert.clone(),
            client_key: self.redis_client_key.clone(),
        }
    }

    pub(super) async fn store(&self) -> Result<Store, String> {
        Ok(Store::new(self.redis().await?))
    }

    /// A handle on Redis with the recorded partition count; on a fresh Redis a command
    /// records it as a node would (an enqueue before any node starts must land where the
    /// nodes will look).
    pub(super) async fn redis(&self) -> Result<Redis, String> {
        validate::check_prefix(&self.prefix)?;
        validate::check_partitions(self.partitions)?;
        let target = Target::choose(
            &self.redis_url,
            self.redis_cluster,
            self.redis_sentinel.as_deref(),
            self.redis_master_password.as_deref(),
            &self.tls_files(),
        )
        .map_err(|e| format!("--redis-url: {e}"))?;
        let partitions = crate::redis::partitions::resolve(
            &target,
            &self.prefix,
            self.redis_cluster,
            self.partitions,
            true,
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(Redis::on(
            target,
            Keys::for_target(&self.prefix, partitions, self.redis_cluster),
        ))
    }
}
