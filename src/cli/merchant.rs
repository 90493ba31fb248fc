//! `paynotify merchant add|show|list|rotate|reveal|disable|enable|delete`: the merchant registry
//! from the command line, through the same scripts as `/v1/merchants`.
//!
//! Invariant: a secret value is printed only by `add` and `rotate` (the new one) and `reveal`.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::ops::{config_err, print_json, runtime_err};
use super::serve::RedisArgs;
use super::EXIT_DATA;
use crate::delivery::merchants::model::{self, validate_merchant_id};
use crate::delivery::merchants::secrets::{revealed, Keyring};
use crate::delivery::merchants::{MerchantError, Registry};

/// Where the registry is, and the key its secrets are sealed with.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Key-encryption keys (as `serve --secret-encryption-key`): needed by add, rotate and
    /// reveal.
    #[arg(
        long,
        env = "PAYNOTIFY_SECRET_ENCRYPTION_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub secret_encryption_key: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum MerchantCommand {
    /// Register a merchant; prints it with its first secret (whsec_…, shown this once).
    Add {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Merchant id (what notifications name in their `merchant` field).
        id: String,
        /// URL prefix its notifications may go to (repeat for more), e.g. https://m1.example/.
        #[arg(long = "allowed-url", required = true)]
        allowed_urls: Vec<String>,
        /// Default schedule: a preset (alipay, wechatpay, standard) or delays in seconds, e.g. 0,5,300.
        #[arg(long)]
        schedule: Option<String>,
        /// Default per-attempt timeout in ms.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Default expected response body (a 2xx counts only when the body is this).
        #[arg(long)]
        success_body: Option<String>,
        /// Default header sent with every notification, NAME=VALUE (repeat for more).
        #[arg(long = "header")]
        headers: Vec<String>,
    },
    /// Show one merchant (secret ids, never values).
    Show {
        #[command(flatten)]
        registry: RegistryArgs,
        id: String,
    },
    /// List merchants in id order.
    List {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Start after this id (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Make a new secret; the old ones keep signing for --grace, then stop.
    Rotate {
        #[command(flatten)]
        registry: RegistryArgs,
        id: String,
        /// How long the old secrets keep signing (0s revokes them at once).
        #[arg(long, env = "PAYNOTIFY_SECRET_ROTATION_GRACE", default_value = "24h", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// Print every secret of a merchant with its value.
    Reveal {
        #[command(flatten)]
        registry: RegistryArgs,
        id: String,
    },
    /// Stop delivering to a merchant: its notifications wait (nothing is dropped).
    Disable {
        #[command(flatten)]
        registry: RegistryArgs,
        id: String,
        /// Why (shown with the merchant).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deliver to a disabled merchant again.
    Enable {
        #[command(flatten)]
        registry: RegistryArgs,
        id: String,
    },
    /// Remove a merchant (its pending notifications die naming it; replay after adding it again).
    Delete {
        #[command(flatten)]
        registry: RegistryArgs,
        id: String,
    },
}

impl RegistryArgs {
    async fn registry(&self) -> Result<Registry, u8> {
        let keyring = Keyring::new(&self.secret_encryption_key)
            .map_err(|e| config_err(format!("--secret-encryption-key: {e}")))?;
        Ok(Registry::new(
            self.redis.redis().await.map_err(config_err)?,
            keyring,
        ))
    }
}

fn merchant_err(e: MerchantError) -> u8 {
    match e {
        MerchantError::Exists(_) | MerchantError::NotFound(_) | MerchantError::Invalid(_) => {
            eprintln!("error: {e}");
            EXIT_DATA
        }
        e => runtime_err(e),
    }
}

fn checked(id: &str) -> Result<(), u8> {
    validate_merchant_id(id).map_err(|m| config_err(format!("merchant id {m}")))
}

/// The `add` flags as the JSON `POST /v1/merchants` takes.
fn add_document(
    id: &str,
    allowed_urls: &[String],
    schedule: Option<String>,
    timeout_ms: Option<u64>,
    success_body: Option<String>,
    headers: &[String],
) -> Result<Value, u8> {
    let mut doc = json!({"id": id, "allowed_urls": allowed_urls});
    if let Some(s) = schedule {
        doc["schedule"] = if s.contains(',') || s.parse::<f64>().is_ok() {
            let delays: Result<Vec<f64>, _> =
                s.split(',').map(|d| d.trim().parse::<f64>()).collect();
            json!(delays
                .map_err(|_| config_err(format!("--schedule {s:?}: not a list of seconds")))?)
        } else {
            json!(s)
        };
    }
    if let Some(t) = timeout_ms {
        doc["timeout_ms"] = json!(t);
    }
    if let Some(b) = success_body {
        doc["success"] = json!({"body": b});
    }
    let mut map = serde_json::Map::new();
    for h in headers {
        let (name, value) = h
            .split_once('=')
            .ok_or_else(|| config_err(format!("--header {h:?}: expected NAME=VALUE")))?;
        map.insert(name.to_string(), json!(value));
    }
    if !map.is_empty() {
        doc["headers"] = Value::Object(map);
    }
    Ok(doc)
}

/// Runs one `merchant` subcommand.
// long: one arm per subcommand, each a few lines of the same shape; it reads best as one table.
pub async fn run(command: MerchantCommand) -> Result<(), u8> {
    let now = crate::util::now_ms();
    match command {
        MerchantCommand::Add {
            registry,
            id,
            allowed_urls,
            schedule,
            timeout_ms,
            success_body,
            headers,
        } => {
            checked(&id)?;
            let doc = add_document(
                &id,
                &allowed_urls,
                schedule,
                timeout_ms,
                success_body,
                &headers,
            )?;
            let merchant = model::parse_new(doc.to_string().as_bytes(), now).map_err(|e| {
                eprintln!("error: {e}");
                EXIT_DATA
            })?;
            let (merchant, secret) = registry
                .registry()
                .await?
                .create(merchant)
                .await
                .map_err(merchant_err)?;
            print_json(&merchant.view_with_secret(&secret));
        }
        MerchantCommand::Show { registry, id } => {
            checked(&id)?;
            let record = registry
                .registry()
                .await?
                .read(&id)
                .await
                .map_err(merchant_err)?;
            let record = record.ok_or_else(|| merchant_err(MerchantError::NotFound(id)))?;
            print_json(&record.merchant.view());
        }
        MerchantCommand::List {
            registry,
            after,
            limit,
        } => {
            if let Some(a) = &after {
                checked(a)?;
            }
            let (list, next) = registry
                .registry()
                .await?
                .list(after.as_deref(), limit.clamp(1, 10_000))
                .await
                .map_err(merchant_err)?;
            let list: Vec<Value> = list.iter().map(|m| m.view()).collect();
            print_json(&json!({"merchants": list, "next": next}));
        }
        MerchantCommand::Rotate {
            registry,
            id,
            grace,
        } => {
            checked(&id)?;
            let (merchant, secret) = registry
                .registry()
                .await?
                .rotate(&id, grace, now)
                .await
                .map_err(merchant_err)?;
            print_json(&merchant.view_with_secret(&secret));
        }
        MerchantCommand::Reveal { registry, id } => {
            checked(&id)?;
            let secrets = registry
                .registry()
                .await?
                .reveal(&id)
                .await
                .map_err(merchant_err)?;
            print_json(&revealed(&id, &secrets));
        }
        MerchantCommand::Disable {
            registry,
            id,
            reason,
        } => {
            checked(&id)?;
            let patch = json!({"disabled": true, "disabled_reason": reason}).to_string();
            patch_and_print(&registry, &id, &patch, now).await?;
        }
        MerchantCommand::Enable { registry, id } => {
            checked(&id)?;
            patch_and_print(&registry, &id, r#"{"disabled":false}"#, now).await?;
        }
        MerchantCommand::Delete { registry, id } => {
            checked(&id)?;
            if !registry
                .registry()
                .await?
                .delete(&id)
                .await
                .map_err(merchant_err)?
            {
                return Err(merchant_err(MerchantError::NotFound(id)));
            }
            print_json(&json!({"id": id, "deleted": true}));
        }
    }
    Ok(())
}

async fn patch_and_print(
    registry: &RegistryArgs,
    id: &str,
    patch: &str,
    now: i64,
) -> Result<(), u8> {
    let (merchant, ()) = registry
        .registry()
        .await?
        .update(id, false, |m, _| {
            model::apply_patch(m, patch.as_bytes(), now).map_err(MerchantError::Invalid)
        })
        .await
        .map_err(merchant_err)?;
    print_json(&merchant.view());
    Ok(())
}
