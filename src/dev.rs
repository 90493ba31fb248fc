//! `paynotify dev`: the whole service on a laptop in one command.
//!
//! Starts a private `redis-server` (unless a URL is given), a node with every role that may
//! deliver to private addresses, and a demo sink at `/dev/sink` that answers `success`; prints
//! the API key and commands to try. The Redis child is killed when the command exits.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::cli::DevArgs;
use crate::redis::child::{RedisChildError, RedisServer};

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
    Run(#[from] crate::node::RunError),
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
    let mut config = crate::cli::serve::config_for(&redis_url);
    config.api_keys = vec![api_key.clone()];
    config.signing_secrets = vec![crate::delivery::signing::generate_secret()];
    config.token_secrets = vec![format!("dev_{}", uuid::Uuid::new_v4().simple())];
    // Merchants work out of the box; their secrets last as long as this run's key (set
    // PAYNOTIFY_SECRET_ENCRYPTION_KEY to keep them across runs on a Redis of your own).
    config.secret_encryption_keys = match std::env::var("PAYNOTIFY_SECRET_ENCRYPTION_KEY") {
        Ok(k) if !k.is_empty() => vec![k],
        _ => vec![crate::delivery::merchants::secrets::new_encryption_key()],
    };
    config.allow_private_targets = true;
    config.node_id = "dev".into();
    config.device_listen = Some(args.device_listen.clone());
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
    print_banner(
        &addr,
        &redis_url,
        args.redis_url.is_none(),
        &api_key,
        &config,
        &args.device_listen,
    );
    let demo = DemoState {
        results: crate::push::Results::new(
            crate::redis::Redis::connect(
                &redis_url,
                crate::redis::keys::Keys::new(&config.prefix, 1),
            )
            .map_err(crate::node::RunError::from)?,
        ),
        token_secrets: config.token_secrets.clone(),
        result_ttl: config.result_ttl,
    };
    let sink = axum::Router::new()
        .route(
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
        )
        .route("/demo", get(demo_page))
        .route("/dev/pay/{order_id}", get(demo_pay).post(demo_pay))
        .with_state(demo);
    crate::node::run_with(config, listener, shutdown, sink).await?;
    Ok(())
}

/// What `dev` prints at start: where everything is, and commands to try.
fn print_banner(
    addr: &std::net::SocketAddr,
    redis_url: &str,
    private_redis: bool,
    api_key: &str,
    config: &crate::config::Config,
    device_listen: &str,
) {
    let redis_note = if private_redis {
        " (a private redis-server, removed on exit)"
    } else {
        ""
    };
    println!(
        r#"
paynotify dev is running.

  HTTP        http://{addr}
  Redis       {redis}{redis_note}
  API key     {api_key}
  Signing     {secret}

Open the console:       http://{addr}/console  (sign in with the API key above)
Open the demo checkout: http://{addr}/demo  (press "Simulate payment", or scan the QR code)

Try it (the demo sink at /dev/sink answers "success"):

  curl -s -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \
    -d '{{"id":"order-1","url":"http://{addr}/dev/sink","body":{{"order_id":"order-1","status":"paid"}},"success":{{"body":"success"}}}}' \
    http://{addr}/v1/notifications

  curl -s -H 'Authorization: Bearer {api_key}' http://{addr}/v1/notifications/order-1

  redis-cli -u {redis} XADD paynotify:intake '*' notification '{{"id":"order-2","url":"http://{addr}/dev/sink","body":"paid"}}'

  PAYNOTIFY_REDIS_URL={redis} cargo run --release -- show order-2
  PAYNOTIFY_REDIS_URL={redis} cargo run --release -- stats

Devices connect to {device_listen} (newline-delimited JSON); mint a device token with
  PAYNOTIFY_TOKEN_SECRET={token_secret} cargo run --release -- token device gate-1

Stop with Ctrl-C.
"#,
        redis = redis_url,
        secret = config.signing_secrets[0],
        token_secret = config.token_secrets[0],
    );
}

#[derive(Clone)]
struct DemoState {
    results: crate::push::Results,
    token_secrets: Vec<String>,
    result_ttl: std::time::Duration,
}

/// `/demo`: a checkout page for a fresh order, with its QR code and a "simulate payment" button.
async fn demo_page(State(demo): State<DemoState>, headers: HeaderMap) -> Response {
    let order_id = format!("demo-{:08x}", rand::random::<u32>());
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:8080");
    let expiry = crate::util::now_ms() / 1000 + 3600;
    let token = match crate::token::mint(
        &demo.token_secrets,
        crate::token::Kind::Order,
        &order_id,
        expiry,
    ) {
        Ok(t) => t,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let pay_url = format!("http://{host}/dev/pay/{order_id}");
    let qr = qrcode::QrCode::new(pay_url.as_bytes())
        .map(|code| {
            code.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .build()
        })
        .unwrap_or_default();
    let page = include_str!("../web/demo.html")
        .replace("{{QR_SVG}}", &qr)
        .replace("{{ORDER_ID}}", &order_id)
        .replace("{{TOKEN}}", &token);
    Html(page).into_response()
}

/// `/dev/pay/{order_id}`: publishes a "paid" result, as a payment provider's callback would.
async fn demo_pay(State(demo): State<DemoState>, Path(order_id): Path<String>) -> Response {
    let doc = match crate::push::parse_result(
        Some(&order_id),
        br#"{"status":"paid","data":{"amount":"9.99"}}"#,
    ) {
        Ok(d) => d,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match crate::push::publish(&demo.results, demo.result_ttl, &doc).await {
        Ok(seq) => {
            axum::Json(serde_json::json!({"order_id": order_id, "status": "paid", "seq": seq}))
                .into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}
