//! The command line: `serve`, `dev` and the operator commands (`enqueue`, `show`, `dead`,
//! `stats`), which talk to Redis directly with the same scripts as the service.
//!
//! Invariant: every flag has an environment variable; bad configuration exits with status 64
//! and a message naming the flag.

pub mod simulate;

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, Roles};
use crate::delivery::store::{Enqueued, Store};
use crate::redis::keys::Keys;
use crate::redis::target::Target;
use crate::redis::Redis;

/// Exit status for bad configuration or usage (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// paynotify: durable, scheduled payment notifications to merchants' servers over Redis.
#[derive(Debug, Parser)]
#[command(name = "paynotify", version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "PAYNOTIFY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written (to stderr).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: HTTP API, delivery worker and intake consumer (see --roles).
    Serve(Box<ServeArgs>),
    /// Run everything on this machine: a private redis-server (unless --redis-url is given),
    /// a node with every role, a demo sink, and a printed API key and examples.
    Dev(DevArgs),
    /// Enqueue one notification (JSON argument, or `-` / nothing for stdin).
    Enqueue {
        #[command(flatten)]
        redis: RedisArgs,
        /// The notification JSON, e.g. '{"url":"https://m.example/notify","body":{"paid":true}}'.
        json: Option<String>,
    },
    /// Show one notification: state, next attempt, every attempt.
    Show {
        #[command(flatten)]
        redis: RedisArgs,
        /// Notification id.
        id: String,
    },
    /// List or replay dead notifications.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Counts per state, due backlog and the oldest overdue age.
    Stats {
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Connect simulated devices that ping and answer every call (until Ctrl-C).
    SimulateDevices(SimulateArgs),
    /// Mint signed tokens, one per line: `token order ID...` lets a browser follow those orders.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Publish an order's result to every browser following it (through Redis).
    Publish {
        #[command(flatten)]
        redis: RedisArgs,
        /// The order id.
        order_id: String,
        /// The result's status, e.g. paid.
        #[arg(long)]
        status: String,
        /// Extra data for the page, a JSON object.
        #[arg(long, default_value = "{}")]
        data: String,
        /// How long the result is kept for late subscribers.
        #[arg(long, env = "PAYNOTIFY_RESULT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
        result_ttl: Duration,
    },
}

/// `simulate-devices`: a fleet of simulated devices for demos and load tests.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// The device listener to connect to.
    #[arg(
        long,
        env = "PAYNOTIFY_DEVICE_CONNECT",
        default_value = "127.0.0.1:7070"
    )]
    pub connect: String,
    /// Connect with TLS, trusting the CA certificate(s) in this PEM file (for a listener
    /// started with --device-tls-cert); the certificate must name the host of --connect.
    #[arg(long, env = "PAYNOTIFY_DEVICE_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// How many devices.
    #[arg(long, default_value_t = 10)]
    pub count: usize,
    /// Device ids are this prefix plus a number.
    #[arg(long, default_value = "sim-")]
    pub id_prefix: String,
    /// How often each device pings.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// How many of the devices (the last ones) read and answer nothing.
    #[arg(long, default_value_t = 0)]
    pub black_hole: usize,
    /// Token secret used to mint each device's token.
    #[arg(
        long,
        env = "PAYNOTIFY_TOKEN_SECRET",
        value_delimiter = ',',
        hide_env_values = true,
        required = true
    )]
    pub token_secret: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Tokens to follow orders (websocket subscribe, long-poll).
    Order(TokenArgs),
    /// Tokens for devices to say who they are.
    Device(TokenArgs),
}

/// What a token is for and how long it lives.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Ids to mint a token for (one line of output each).
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Lifetime of the tokens.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Token secret (the first of PAYNOTIFY_TOKEN_SECRET's comma-separated list mints).
    #[arg(
        long,
        env = "PAYNOTIFY_TOKEN_SECRET",
        value_delimiter = ',',
        hide_env_values = true,
        required = true
    )]
    pub token_secret: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List the oldest dead notifications with their reasons.
    List {
        #[command(flatten)]
        redis: RedisArgs,
        /// Most entries to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Replay dead notifications: a fresh round of their schedule, starting now.
    Replay {
        #[command(flatten)]
        redis: RedisArgs,
        /// Ids to replay.
        ids: Vec<String>,
        /// Replay every dead notification.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

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
    /// Number of partitions notifications are spread over (the same on every node; each is
    /// one Redis Cluster slot).
    #[arg(long, env = "PAYNOTIFY_PARTITIONS", default_value_t = 1)]
    pub partitions: u32,
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
    /// Standard Webhooks signing secrets (whsec_...), comma-separated; one signature each.
    #[arg(
        long,
        env = "PAYNOTIFY_SIGNING_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub signing_secret: Vec<String>,
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
    /// Concurrent attempts per destination (host:port) per node.
    #[arg(
        long,
        env = "PAYNOTIFY_PER_DESTINATION_CONCURRENCY",
        default_value_t = 32
    )]
    pub per_destination_concurrency: usize,
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
            signing_secrets: secrets(&self.signing_secret),
            allow_private_targets: self.allow_private_targets,
            lease: self.lease,
            max_stalls: self.max_stalls,
            retention: self.retention,
            dead_retention: self.dead_retention,
            per_destination_concurrency: self.per_destination_concurrency,
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
        if let Some((cert, key)) = &c.device_tls {
            crate::tls::tls_acceptor(cert, key)
                .map_err(|e| format!("--device-tls-cert/--device-tls-key: {e}"))?;
        }
        validate(&c)?;
        Ok(c)
    }
}

/// A comma-separated secret list, trimmed, without empty entries.
fn secrets(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

/// Checks a config; the error names the flag.
pub fn validate(c: &Config) -> Result<(), String> {
    Target::choose(
        &c.redis_url,
        c.redis_cluster,
        c.redis_sentinel.as_deref(),
        c.redis_master_password.as_deref(),
        &c.redis_tls,
    )
    .map_err(|e| format!("--redis-url: {e}"))?;
    check_prefix(&c.prefix)?;
    check_node_id(&c.node_id)?;
    if c.partitions == 0 || c.partitions > 1024 {
        return Err("--partitions must be from 1 to 1024".into());
    }
    if c.roles.api && c.api_keys.is_empty() {
        return Err("--api-key (PAYNOTIFY_API_KEY) is required with the api role; give one or more keys, comma-separated".into());
    }
    if let Some(short) = c.api_keys.iter().find(|k| k.len() < 16) {
        return Err(format!(
            "--api-key: every key must be at least 16 characters (one has {})",
            short.len()
        ));
    }
    crate::delivery::signing::Signer::new(&c.signing_secrets)
        .map_err(|e| format!("--signing-secret: {e}"))?;
    if c.lease < Duration::from_secs(1) {
        return Err("--lease must be at least 1s".into());
    }
    if c.per_destination_concurrency == 0 || c.max_in_flight == 0 || c.claim_batch == 0 {
        return Err(
            "--per-destination-concurrency, --max-in-flight and --claim-batch must be at least 1"
                .into(),
        );
    }
    if c.roles.gateway && c.token_secrets.is_empty() {
        return Err(
            "--token-secret (PAYNOTIFY_TOKEN_SECRET) is required with the gateway role".into(),
        );
    }
    if let Some(short) = c.token_secrets.iter().find(|k| k.len() < 16) {
        return Err(format!(
            "--token-secret: every secret must be at least 16 characters (one has {})",
            short.len()
        ));
    }
    if c.ws_max_subscriptions == 0
        || c.ws_send_queue == 0
        || c.ws_ping_interval < Duration::from_millis(100)
    {
        return Err("--ws-max-subscriptions and --ws-send-queue must be at least 1, --ws-ping-interval at least 100ms".into());
    }
    if let Some(url) = &c.device_events_url {
        let doc = serde_json::json!({"url": url});
        crate::delivery::schema::parse(doc.to_string().as_bytes(), 0, String::new)
            .map_err(|e| format!("--device-events-url: {e}"))?;
    }
    if c.wait_replicas > 0 && (c.wait_timeout.is_zero() || c.wait_timeout > Duration::from_secs(10))
    {
        return Err("--wait-timeout must be from 1ms to 10s".into());
    }
    if c.max_connections == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    if c.header_read_timeout.is_zero() {
        return Err("--header-read-timeout must be more than 0".into());
    }
    if c.claim_batch > 1000 {
        return Err("--claim-batch must be at most 1000".into());
    }
    Ok(())
}

/// A node id names Redis keys and channels, and is a `{hash tag}` on a Cluster: a brace would
/// move its keys to another slot.
fn check_node_id(id: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--node-id must be 1 to 128 characters of letters, digits, '.', '-', '_' or ':' (got {id:?})"
        ))
    }
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 64 || prefix.contains(['{', '}', ' ']) {
        return Err("--prefix must be 1 to 64 characters without braces or spaces".into());
    }
    Ok(())
}

impl RedisArgs {
    fn tls_files(&self) -> crate::redis::target::TlsFiles {
        crate::redis::target::TlsFiles {
            ca_file: self.redis_ca_file.clone(),
            client_cert: self.redis_client_cert.clone(),
            client_key: self.redis_client_key.clone(),
        }
    }

    fn store(&self) -> Result<Store, String> {
        Ok(Store::new(self.redis()?))
    }

    fn redis(&self) -> Result<Redis, String> {
        check_prefix(&self.prefix)?;
        if self.partitions == 0 || self.partitions > 1024 {
            return Err("--partitions must be from 1 to 1024".into());
        }
        let target = Target::choose(
            &self.redis_url,
            self.redis_cluster,
            self.redis_sentinel.as_deref(),
            self.redis_master_password.as_deref(),
            &self.tls_files(),
        )
        .map_err(|e| format!("--redis-url: {e}"))?;
        Ok(Redis::on(
            target,
            Keys::for_target(&self.prefix, self.partitions, self.redis_cluster),
        ))
    }
}

/// Runs an operator command (everything but `serve` and `dev`), printing JSON on stdout.
pub async fn operate(command: Command) -> ExitCode {
    let result = match command {
        Command::Enqueue { redis, json } => enqueue(redis, json).await,
        Command::Show { redis, id } => show(redis, id).await,
        Command::Dead {
            command: DeadCommand::List { redis, limit },
        } => {
            async {
                let store = redis.store().map_err(config_err)?;
                let dead = store
                    .dead_list(limit.clamp(1, 10_000))
                    .await
                    .map_err(runtime_err)?;
                print_json(&serde_json::json!({"dead": dead}));
                Ok(())
            }
            .await
        }
        Command::Dead {
            command: DeadCommand::Replay { redis, ids, all },
        } => {
            async {
                let store = redis.store().map_err(config_err)?;
                if all {
                    let n = store
                        .replay_all(crate::util::now_ms())
                        .await
                        .map_err(runtime_err)?;
                    print_json(&serde_json::json!({"replayed": n}));
                } else if ids.is_empty() {
                    return Err(config_err("give one or more ids, or --all".into()));
                } else {
                    let got = store
                        .replay(&ids, crate::util::now_ms())
                        .await
                        .map_err(runtime_err)?;
                    print_json(&serde_json::json!({"replayed": got.len(), "ids": got}));
                    if got.len() < ids.len() {
                        eprintln!(
                            "{} of the ids were not in the dead set",
                            ids.len() - got.len()
                        );
                        return Err(1);
                    }
                }
                Ok(())
            }
            .await
        }
        Command::Stats { redis } => {
            async {
                let store = redis.store().map_err(config_err)?;
                let stats = store.stats(crate::util::now_ms()).await.map_err(runtime_err)?;
                print_json(&serde_json::to_value(stats).unwrap_or_default());
                Ok(())
            }
            .await
        }
        Command::Token { command } => {
            let (kind, args) = match command {
                TokenCommand::Order(a) => (crate::token::Kind::Order, a),
                TokenCommand::Device(a) => (crate::token::Kind::Device, a),
            };
            mint_tokens(kind, &args)
        }
        Command::Publish { redis, order_id, status, data, result_ttl } => async {
            let results = crate::push::Results::new(redis.redis().map_err(config_err)?);
            let doc = serde_json::json!({"status": status, "data": serde_json::from_str::<serde_json::Value>(&data)
                .map_err(|e| config_err(format!("--data is not JSON: {e}")))?});
            let doc = crate::push::parse_result(Some(&order_id), doc.to_string().as_bytes())
                .map_err(|e| config_err(e.to_string()))?;
            let seq = crate::push::publish(&results, result_ttl, &doc).await.map_err(runtime_err)?;
            print_json(&serde_json::json!({"order_id": doc.order_id, "status": doc.status, "seq": seq}));
            Ok(())
        }
        .await,
        Command::SimulateDevices(args) => simulate_devices(args).await,
        Command::Serve(_) | Command::Dev(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}

async fn simulate_devices(args: SimulateArgs) -> Result<(), u8> {
    use crate::cli::simulate::{device, FleetStats};
    use std::sync::atomic::Ordering;
    let stats = std::sync::Arc::new(FleetStats::default());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::shutdown::cancel_on_signal(stop.clone()));
    let expiry = crate::util::now_ms() / 1000 + 30 * 24 * 3600;
    let tls = match &args.tls_ca {
        Some(ca) => Some(
            crate::cli::simulate::tls_to(&args.connect, ca)
                .map_err(|e| config_err(format!("--tls-ca: {e}")))?,
        ),
        None => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let id = format!("{}{i}", args.id_prefix);
        crate::delivery::schema::validate_id(&id)
            .map_err(|m| config_err(format!("device id {id:?}: {m}")))?;
        let token = crate::token::mint(&args.token_secret, crate::token::Kind::Device, &id, expiry)
            .map_err(|e| config_err(e.to_string()))?;
        let black_hole = i >= args.count.saturating_sub(args.black_hole);
        tasks.spawn(device(
            args.connect.clone(),
            tls.clone(),
            id,
            token,
            args.heartbeat,
            black_hole,
            stats.clone(),
            stop.clone(),
        ));
    }
    let mut report = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = report.tick() => eprintln!(
                "devices online {}/{}, calls answered {}, reconnects {}",
                stats.online.load(Ordering::Relaxed),
                args.count,
                stats.calls_answered.load(Ordering::Relaxed),
                stats.reconnects.load(Ordering::Relaxed)
            ),
            _ = stop.cancelled() => break,
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn mint_tokens(kind: crate::token::Kind, args: &TokenArgs) -> Result<(), u8> {
    if let Some(short) = args.token_secret.iter().find(|k| k.len() < 16) {
        return Err(config_err(format!(
            "--token-secret: every secret must be at least 16 characters (one has {})",
            short.len()
        )));
    }
    let expiry = crate::util::now_ms() / 1000 + args.ttl.as_secs().max(1) as i64;
    let mut out = String::new();
    for id in &args.ids {
        crate::delivery::schema::validate_id(id)
            .map_err(|m| config_err(format!("id {id:?}: {m}")))?;
        let t = crate::token::mint(&args.token_secret, kind, id, expiry)
            .map_err(|e| config_err(e.to_string()))?;
        out.push_str(&t);
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

fn config_err(message: String) -> u8 {
    eprintln!("error: {message}");
    EXIT_CONFIG
}

fn runtime_err(e: impl std::fmt::Display) -> u8 {
    eprintln!("error: {e}");
    1
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn enqueue(redis: RedisArgs, json: Option<String>) -> Result<(), u8> {
    let store = redis.store().map_err(config_err)?;
    let doc = match json.as_deref() {
        Some(s) if s != "-" => s.to_string(),
        _ => {
            let mut s = String::new();
            std::io::stdin()
                .take(crate::delivery::schema::MAX_DOCUMENT_BYTES as u64 + 1)
                .read_to_string(&mut s)
                .map_err(runtime_err)?;
            s
        }
    };
    let now = crate::util::now_ms();
    let n =
        crate::delivery::schema::parse(doc.as_bytes(), now, crate::util::new_id).map_err(|e| {
            eprintln!("error: {e}");
            65
        })?;
    match store.enqueue(&n, now).await.map_err(runtime_err)? {
        Enqueued::Created { due_ms } => print_json(
            &serde_json::json!({"id": n.id, "state": "scheduled", "next_attempt_at": due_ms, "created": true}),
        ),
        Enqueued::Exists { state } => {
            print_json(&serde_json::json!({"id": n.id, "state": state, "created": false}))
        }
        Enqueued::Conflict { state } => {
            eprintln!(
                "error: notification {:?} exists ({state}) with different content",
                n.id
            );
            return Err(65);
        }
    }
    Ok(())
}

async fn show(redis: RedisArgs, id: String) -> Result<(), u8> {
    crate::delivery::schema::validate_id(&id).map_err(|m| config_err(format!("id {m}")))?;
    let store = redis.store().map_err(config_err)?;
    match store.show(&id).await.map_err(runtime_err)? {
        Some(v) => {
            print_json(&v);
            Ok(())
        }
        None => {
            eprintln!("no notification {id:?}");
            Err(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["paynotify", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(args) => args.to_config(),
            _ => unreachable!(),
        }
    }

    const MINIMAL: &[&str] = &[
        "--api-key",
        "an-api-key-of-16-chars",
        "--token-secret",
        "a-token-secret-16-chars",
        "--node-id",
        "n1",
    ];

    /// The flags' defaults are `Config`'s defaults, which are the production ones: a node
    /// started with no flags refuses private targets, and so does a `Config` built in code.
    #[test]
    fn flag_defaults_are_the_config_defaults_and_safe() {
        let from_flags = serve(MINIMAL).unwrap();
        let mut from_code = Config::for_redis("redis://127.0.0.1:6379");
        from_code.node_id = "n1".into();
        from_code.api_keys = vec!["an-api-key-of-16-chars".into()];
        from_code.token_secrets = vec!["a-token-secret-16-chars".into()];
        assert_eq!(format!("{from_flags:?}"), format!("{from_code:?}"));
        assert!(!from_flags.allow_private_targets);
        assert!(!from_code.allow_private_targets);
    }

    #[test]
    fn a_node_id_that_would_break_a_hash_tag_is_refused() {
        for bad in ["a}b", "{x}", "with space", "", &"x".repeat(129)] {
            let mut args = MINIMAL.to_vec();
            args[5] = bad;
            let err = serve(&args).unwrap_err();
            assert!(err.starts_with("--node-id"), "{bad:?}: {err}");
        }
        let mut args = MINIMAL.to_vec();
        args[5] = "pod-7f9c.zone-a:1";
        assert_eq!(serve(&args).unwrap().node_id, "pod-7f9c.zone-a:1");
    }

    #[test]
    fn roles_help_names_every_role() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").unwrap();
        let roles = serve
            .get_arguments()
            .find(|a| a.get_id() == "roles")
            .unwrap();
        let help = roles.get_help().unwrap().to_string();
        for role in ["api", "worker", "gateway", "all"] {
            assert!(help.contains(role), "{help}");
        }
    }
}
