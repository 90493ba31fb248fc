//! The operator commands (`enqueue`, `show`, `dead`, `stats`, `token`, `publish`): they talk to
//! Redis directly with the service's own scripts and print JSON on stdout.
//!
//! Invariant: exit 0 on success, [`EXIT_CONFIG`] for bad flags or input, [`EXIT_DATA`] for a
//! refusal (a conflict, an id not found), 1 when Redis fails.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::serve::RedisArgs;
use super::{EXIT_CONFIG, EXIT_DATA};
use crate::delivery::store::Enqueued;

/// The operator commands: they talk to Redis directly with the service's own scripts.
#[derive(Debug, Subcommand)]
pub enum Operation {
    /// Make an Ed25519 signing key pair for --signing-key: prints {"signing_key": "whsk_…"
    /// (keep it secret), "public_key": "whpk_…" (give it to merchants; GET /v1/signing-keys
    /// publishes it too)}. With --encryption-key: a key for --secret-encryption-key instead.
    Keygen {
        /// Make a key-encryption key for merchant secrets (--secret-encryption-key).
        #[arg(long)]
        encryption_key: bool,
    },
    /// The merchant registry: each merchant its own secrets, allowed URLs and defaults.
    Merchant {
        #[command(subcommand)]
        command: Box<super::merchant::MerchantCommand>,
    },
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

/// Runs an operator command (everything but `serve` and `dev`), printing JSON on stdout.
pub async fn operate(command: Operation) -> ExitCode {
    let result = match command {
        Operation::Enqueue { redis, json } => enqueue(redis, json).await,
        Operation::Show { redis, id } => show(redis, id).await,
        Operation::Dead { command } => dead(command).await,
        Operation::Merchant { command } => super::merchant::run(*command).await,
        Operation::Keygen {
            encryption_key: true,
        } => {
            let key = crate::delivery::merchants::secrets::new_encryption_key();
            print_json(&serde_json::json!({"secret_encryption_key": key}));
            Ok(())
        }
        Operation::Keygen {
            encryption_key: false,
        } => {
            let (signing_key, public_key) = crate::delivery::signing::generate_key_pair();
            print_json(&serde_json::json!({"signing_key": signing_key, "public_key": public_key}));
            Ok(())
        }
        Operation::Stats { redis } => {
            async {
                let store = redis.store().await.map_err(config_err)?;
                let stats = store.stats(crate::util::now_ms()).await.map_err(runtime_err)?;
                print_json(&serde_json::to_value(stats).unwrap_or_default());
                Ok(())
            }
            .await
        }
        Operation::Token { command } => {
            let (kind, args) = match command {
                TokenCommand::Order(a) => (crate::token::Kind::Order, a),
                TokenCommand::Device(a) => (crate::token::Kind::Device, a),
            };
            mint_tokens(kind, &args)
        }
        Operation::Publish { redis, order_id, status, data, result_ttl } => async {
            let results = crate::push::Results::new(redis.redis().await.map_err(config_err)?);
            let doc = serde_json::json!({"status": status, "data": serde_json::from_str::<serde_json::Value>(&data)
                .map_err(|e| config_err(format!("--data is not JSON: {e}")))?});
            let doc = crate::push::parse_result(Some(&order_id), doc.to_string().as_bytes())
                .map_err(|e| config_err(e.to_string()))?;
            let seq = crate::push::publish(&results, result_ttl, &doc).await.map_err(runtime_err)?;
            print_json(&serde_json::json!({"order_id": doc.order_id, "status": doc.status, "seq": seq}));
            Ok(())
        }
        .await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
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

pub(super) fn config_err(message: String) -> u8 {
    eprintln!("error: {message}");
    EXIT_CONFIG
}

pub(super) fn runtime_err(e: impl std::fmt::Display) -> u8 {
    eprintln!("error: {e}");
    1
}

pub(super) fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// `dead list` and `dead replay`.
async fn dead(command: DeadCommand) -> Result<(), u8> {
    match command {
        DeadCommand::List { redis, limit } => {
            async {
                let store = redis.store().await.map_err(config_err)?;
                let dead = store
                    .dead_list(limit.clamp(1, 10_000))
                    .await
                    .map_err(runtime_err)?;
                print_json(&serde_json::json!({"dead": dead}));
                Ok(())
            }
            .await
        }
        DeadCommand::Replay { redis, ids, all } => {
            async {
                let store = redis.store().await.map_err(config_err)?;
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
    }
}

async fn enqueue(redis: RedisArgs, json: Option<String>) -> Result<(), u8> {
    let store = redis.store().await.map_err(config_err)?;
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
    let registry = crate::delivery::merchants::Registry::new(store.redis().clone(), None);
    let refused = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        EXIT_DATA
    };
    let doc = crate::delivery::schema::Document::parse(doc.as_bytes()).map_err(|e| refused(&e))?;
    let n =
        crate::delivery::merchants::parse_notification(&registry, doc, now, crate::util::new_id)
            .await
            .map_err(|e| match e {
                crate::delivery::merchants::EnqueueError::Schema(e) => refused(&e),
                crate::delivery::merchants::EnqueueError::Registry(e) => runtime_err(e),
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
            return Err(EXIT_DATA);
        }
    }
    Ok(())
}

async fn show(redis: RedisArgs, id: String) -> Result<(), u8> {
    crate::delivery::schema::validate_id(&id).map_err(|m| config_err(format!("id {m}")))?;
    let store = redis.store().await.map_err(config_err)?;
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
