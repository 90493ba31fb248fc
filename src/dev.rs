//! `paynotify dev`: the whole service on a laptop in one command.
//!
//! Starts a private `redis-server` (unless a URL is given), a node with every role that may
//! deliver to private addresses, and a demo sink at `/dev/sink` that answers `success`; prints
//! the API key and commands to try. The Redis child is killed when the command exits.

use axum::routing::post;
use tokio_util::sync::CancellationToken;

use crate::cli::DevArgs;
use crate::config::Config;
use crate::redis_child::{RedisChildError, RedisServer};

/// Why `dev` could not run.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Redis(#[from] RedisChildError),
    #[error("--listen {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Run(#[from] crate::RunError),
}

/// Runs the dev node until `shutdown`.
pub async fn run(args: DevArgs, shutdown: CancellationToken) -> Result<(), DevError> {
    let (redis_url, _redis) = match &args.redis_url {
        Some(url) => (url.clone(), None),
        None => {
            let server = tokio::task::spawn_blocking(RedisServer::start)
                .await
                .map_err(|e| RedisChildError::Io(std::io::Error::other(e)))??;
            (server.url(), Some(server))
        }
    };
    let api_key = args
        .api_key
        .clone()
        .unwrap_or_else(|| format!("dev_{}", uuid::Uuid::new_v4().simple()));
    let mut config = Config::for_redis(&redis_url);
    config.api_keys = vec![api_key.clone()];
    config.signing_secrets = vec![crate::signing::generate_secret()];
    config.token_secrets = vec![format!("dev_{}", uuid::Uuid::new_v4().simple())];
    config.allow_private_targets = true;
    config.node_id = "dev".into();
    config.shutdown_grace = std::time::Duration::from_secs(5);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|source| DevError::Bind {
            addr: args.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DevError::Bind {
        addr: args.listen.clone(),
        source,
    })?;
    let redis_note = if args.redis_url.is_some() {
        String::new()
    } else {
        " (a private redis-server, removed on exit)".to_string()
    };
    println!(
        r#"
paynotify dev is running.

  HTTP        http://{addr}
  Redis       {redis}{redis_note}
  API key     {api_key}
  Signing     {secret}

Try it (the demo sink at /dev/sink answers "success"):

  curl -s -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \
    -d '{{"id":"order-1","url":"http://{addr}/dev/sink","body":{{"order_id":"order-1","status":"paid"}},"success":{{"body":"success"}}}}' \
    http://{addr}/v1/notifications

  curl -s -H 'Authorization: Bearer {api_key}' http://{addr}/v1/notifications/order-1

  redis-cli -u {redis} XADD paynotify:intake '*' notification '{{"id":"order-2","url":"http://{addr}/dev/sink","body":"paid"}}'

  PAYNOTIFY_REDIS_URL={redis} cargo run --release -- show order-2
  PAYNOTIFY_REDIS_URL={redis} cargo run --release -- stats

Stop with Ctrl-C.
"#,
        redis = redis_url,
        secret = config.signing_secrets[0],
    );
    let sink = axum::Router::new().route(
        "/dev/sink",
        post(|headers: axum::http::HeaderMap, body: String| async move {
            let id = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string();
            tracing::info!(%id, body = %body.chars().take(200).collect::<String>(), "demo sink received a notification");
            "success"
        }),
    );
    crate::run_with(config, listener, shutdown, sink).await?;
    Ok(())
}
