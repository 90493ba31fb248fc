//! The command line: `serve`, `dev` and the operator commands (`enqueue`, `show`, `dead`,
//! `stats`), which talk to Redis directly with the same scripts as the service.
//!
//! Invariant: every flag has an environment variable; bad configuration exits with status 64
//! and a message naming the flag.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, Roles};
use crate::keys::Keys;
use crate::store::{Enqueued, Store};

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
    Serve(ServeArgs),
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
    /// Redis URL (redis://[:password@]host:port[/db], rediss:// for TLS).
    #[arg(
        long,
        env = "PAYNOTIFY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
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
    /// Roles of this node, comma-separated: api, worker (or all).
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
    /// Redis connections in the pool.
    #[arg(long, env = "PAYNOTIFY_REDIS_POOL_SIZE", default_value_t = 32)]
    pub redis_pool_size: usize,
}

/// `dev`: like serve, with a private Redis and laptop defaults.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Use this Redis instead of starting a private redis-server.
    #[arg(long, env = "PAYNOTIFY_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Address the HTTP server listens on.
    #[arg(long, env = "PAYNOTIFY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// API key to use (default: a fresh random one, printed).
    #[arg(long, env = "PAYNOTIFY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ServeArgs {
    /// Validates into a [`Config`]; the error names the flag.
    pub fn to_config(&self) -> Result<Config, String> {
        let roles = Roles::parse(&self.roles).map_err(|e| format!("--roles: {e}"))?;
        let mut c = Config::for_redis(&self.redis.redis_url);
        c.prefix = self.redis.prefix.clone();
        c.partitions = self.redis.partitions;
        c.roles = roles;
        if let Some(id) = &self.node_id {
            c.node_id = id.clone();
        }
        c.api_keys = self
            .api_key
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        c.signing_secrets = self
            .signing_secret
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        c.allow_private_targets = self.allow_private_targets;
        c.lease = self.lease;
        c.max_stalls = self.max_stalls;
        c.retention = self.retention;
        c.dead_retention = self.dead_retention;
        c.per_destination_concurrency = self.per_destination_concurrency;
        c.max_in_flight = self.max_in_flight;
        c.claim_batch = self.claim_batch;
        c.shutdown_grace = self.shutdown_grace;
        c.redis_pool_size = self.redis_pool_size;
        validate(&c)?;
        Ok(c)
    }
}

/// Checks a config; the error names the flag.
pub fn validate(c: &Config) -> Result<(), String> {
    check_redis_url(&c.redis_url)?;
    check_prefix(&c.prefix)?;
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
    crate::signing::Signer::new(&c.signing_secrets)
        .map_err(|e| format!("--signing-secret: {e}"))?;
    if c.lease < Duration::from_secs(1) {
        return Err("--lease must be at least 1s".into());
    }
    if c.per_destination_concurrency == 0
        || c.max_in_flight == 0
        || c.claim_batch == 0
        || c.redis_pool_size == 0
    {
        return Err("--per-destination-concurrency, --max-in-flight, --claim-batch and --redis-pool-size must be at least 1".into());
    }
    if c.claim_batch > 1000 {
        return Err("--claim-batch must be at most 1000".into());
    }
    Ok(())
}

fn check_redis_url(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| format!("--redis-url: {e}"))
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 64 || prefix.contains(['{', '}', ' ']) {
        return Err("--prefix must be 1 to 64 characters without braces or spaces".into());
    }
    Ok(())
}

impl RedisArgs {
    fn store(&self) -> Result<Store, String> {
        check_redis_url(&self.redis_url)?;
        check_prefix(&self.prefix)?;
        if self.partitions == 0 || self.partitions > 1024 {
            return Err("--partitions must be from 1 to 1024".into());
        }
        Store::connect(&self.redis_url, Keys::new(&self.prefix, self.partitions), 4)
            .map_err(|e| e.to_string())
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
                        .replay_all(crate::now_ms())
                        .await
                        .map_err(runtime_err)?;
                    print_json(&serde_json::json!({"replayed": n}));
                } else if ids.is_empty() {
                    return Err(config_err("give one or more ids, or --all".into()));
                } else {
                    let got = store
                        .replay(&ids, crate::now_ms())
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
                let stats = store.stats(crate::now_ms()).await.map_err(runtime_err)?;
                print_json(&serde_json::to_value(stats).unwrap_or_default());
                Ok(())
            }
            .await
        }
        Command::Serve(_) | Command::Dev(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
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
                .take(crate::notification::MAX_DOCUMENT_BYTES as u64 + 1)
                .read_to_string(&mut s)
                .map_err(runtime_err)?;
            s
        }
    };
    let now = crate::now_ms();
    let n = crate::notification::parse(doc.as_bytes(), now, crate::new_id).map_err(|e| {
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
    crate::notification::validate_id(&id).map_err(|m| config_err(format!("id {m}")))?;
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
