//! Checks a [`Config`] once, at start; every error names the flag to fix.
//!
//! Invariant: a `Config` that passed [`validate`] can run: its Redis target is well-formed, its
//! limits are in range, the secrets its roles need are there and long enough.

use std::time::Duration;

use crate::config::Config;
use crate::delivery::signing::SigningError;
use crate::redis::Target;

/// The merchant registry's and health's flags.
fn validate_merchant_flags(c: &Config) -> Result<(), String> {
    crate::delivery::merchants::secrets::Keyring::new(&c.secret_encryption_keys)
        .map_err(|e| format!("--secret-encryption-key: {e}"))?;
    if let Some(url) = &c.ops_events_url {
        let doc = serde_json::json!({ "url": url });
        crate::delivery::schema::parse(doc.to_string().as_bytes(), 0, String::new)
            .map_err(|e| format!("--ops-events-url: {e}"))?;
    }
    if c.lane_initial_concurrency == 0 {
        return Err("--lane-initial-concurrency must be at least 1".into());
    }
    if !(1..=100).contains(&c.breaker_failure_percent) {
        return Err("--breaker-failure-percent must be from 1 to 100".into());
    }
    if c.breaker_window.is_zero() || c.breaker_cooldown.is_zero() {
        return Err("--breaker-window and --breaker-cooldown must be more than 0".into());
    }
    if c.merchant_failing_after == 0 {
        return Err("--merchant-failing-after must be at least 1".into());
    }
    Ok(())
}

/// The console's flags.
fn validate_console(c: &Config) -> Result<(), String> {
    if let Some(short) = c.console_read_only_keys.iter().find(|k| k.len() < 16) {
        return Err(format!(
            "--console-read-only-keys: every key must be at least 16 characters (one has {})",
            short.len()
        ));
    }
    if c.console_read_only_keys
        .iter()
        .any(|k| c.api_keys.contains(k))
    {
        return Err("--console-read-only-keys: a key is also an --api-key; a read-only key must not be one (it would have every right on /v1)".into());
    }
    if c.console_session_ttl < std::time::Duration::from_secs(1)
        || c.console_session_ttl > std::time::Duration::from_secs(30 * 86_400)
    {
        return Err("--console-session-ttl must be from 1s to 30d".into());
    }
    Ok(())
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
    check_partitions(c.partitions)?;
    if c.roles.api && c.api_keys.is_empty() {
        return Err("--api-key (PAYNOTIFY_API_KEY) is required with the api role; give one or more keys, comma-separated".into());
    }
    if let Some(short) = c.api_keys.iter().find(|k| k.len() < 16) {
        return Err(format!(
            "--api-key: every key must be at least 16 characters (one has {})",
            short.len()
        ));
    }
    validate_console(c)?;
    crate::delivery::signing::Signer::new(&c.signing_secrets, &c.signing_keys).map_err(
        |e| match e {
            SigningError::KeyFormat(_) | SigningError::KeyMismatch(_) => {
                format!("--signing-key: {e}")
            }
            _ => format!("--signing-secret: {e}"),
        },
    )?;
    validate_merchant_flags(c)?;
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

pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 64 || prefix.contains(['{', '}', ' ']) {
        return Err("--prefix must be 1 to 64 characters without braces or spaces".into());
    }
    Ok(())
}

/// `--partitions`, when given, is from 1 to [`crate::redis::partitions::MAX`].
pub(super) fn check_partitions(partitions: Option<u32>) -> Result<(), String> {
    match partitions {
        Some(n) if n == 0 || n > crate::redis::partitions::MAX => Err(format!(
            "--partitions must be from 1 to {}",
            crate::redis::partitions::MAX
        )),
        _ => Ok(()),
    }
}
