//! The `it` binary's harness: in-process nodes, `paynotify serve` child processes and the test
//! config, on top of paynotify-testkit (Redis children, the sink, the websocket, device and API
//! clients), whose pieces are re-exported here.

use std::net::SocketAddr;
use std::time::Duration;

use paynotify::Config;
pub use paynotify_testkit::{
    mint_token, wait_until, DeviceClient, RedisServer, Sink, TestClient, WsClient, API_KEY,
    TOKEN_SECRET,
};
pub use reqwest::StatusCode;
pub use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The tests' key-encryption key for merchant secrets (32 bytes, base64).
pub const ENCRYPTION_KEY: &str = "dGVzdC1rZXktZW5jcnlwdGlvbi0zMi1ieXRlcy0hISE=";

/// A node run in-process with [`paynotify::run`].
pub struct Node {
    pub addr: SocketAddr,
    /// Where devices connect, when the node was started with a device listener.
    pub device_addr: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    /// The test's API client for this node.
    api: TestClient,
    handle: Option<tokio::task::JoinHandle<Result<(), paynotify::RunError>>>,
}

impl Node {
    pub async fn start(config: Config) -> Node {
        Self::start_inner(config, false).await
    }

    /// A node that also listens for devices on a free port.
    pub async fn start_with_devices(config: Config) -> Node {
        Self::start_inner(config, true).await
    }

    async fn start_inner(config: Config, devices: bool) -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let device_listener = if devices {
            Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let device_addr = device_listener.as_ref().map(|l| l.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(paynotify::run_with_listeners(
            config,
            listener,
            device_listener,
            shutdown.clone(),
            axum::Router::new(),
        ));
        let node = Node {
            addr,
            device_addr,
            shutdown,
            api: TestClient::new(addr),
            handle: Some(handle),
        };
        node.wait_ready().await;
        node
    }

    async fn wait_ready(&self) {
        // Not the kept API client: its pooled connection would count against the node's
        // connection caps for the rest of the test.
        let client = reqwest::Client::new();
        let url = format!("http://{}/readyz", self.addr);
        wait_until(Duration::from_secs(10), || {
            let client = client.clone();
            let url = url.clone();
            async move {
                client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The test's authenticated API client for this node (one per node, kept for the test).
    pub fn api(&self) -> &TestClient {
        &self.api
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A private Redis, a sink and a node with the test config.
pub async fn setup() -> (RedisServer, Sink, Node) {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = Node::start(config(&redis)).await;
    (redis, sink, node)
}

/// A plain connection to the test's Redis, for reading and changing keys behind the node's back.
pub async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The rejected intake stream, oldest first.
pub async fn rejected_entries(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Vec<redis::streams::StreamId> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("paynotify:rejected")
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    reply.ids
}

/// A test config: the given Redis, a unique prefix, an API key, short lease.
pub fn config(redis: &RedisServer) -> Config {
    let mut c = paynotify::cli::serve::config_for(&redis.url());
    // The sink listens on loopback.
    c.allow_private_targets = true;
    c.api_keys = vec![API_KEY.to_string()];
    c.token_secrets = vec![TOKEN_SECRET.to_string()];
    c.secret_encryption_keys = vec![ENCRYPTION_KEY.to_string()];
    c.lease = Duration::from_secs(5);
    c.shutdown_grace = Duration::from_secs(5);
    // The tests' own store handles use one partition (`Keys::new(prefix, 1)`).
    c.partitions = Some(1);
    c
}

/// A node on `redis` with the test config as changed by `tweak`.
pub async fn node_with(redis: &RedisServer, tweak: impl FnOnce(&mut Config)) -> Node {
    let mut c = config(redis);
    tweak(&mut c);
    Node::start(c).await
}

/// The same, listening for devices too.
pub async fn device_node_with(redis: &RedisServer, tweak: impl FnOnce(&mut Config)) -> Node {
    let mut c = config(redis);
    tweak(&mut c);
    Node::start_with_devices(c).await
}

/// Publishes `{"status": status}` as `order_id`'s result through `node`; the HTTP status.
pub async fn post_result(node: &Node, order_id: &str, status: &str) -> u16 {
    let path = format!("/v1/orders/{order_id}/result");
    node.api()
        .post_any(&path, serde_json::json!({ "status": status }))
        .await
        .0
}

/// Waits (up to 20 s) until the stream `key` has `n` entries.
pub async fn wait_xlen<C>(conn: &C, key: &str, n: i64)
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync,
{
    wait_until(Duration::from_secs(20), || {
        let mut conn = conn.clone();
        async move {
            let len: i64 = redis::cmd("XLEN")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            len == n
        }
    })
    .await;
}

/// The order-result store on the given Redis with the default prefix.
pub fn results(redis: &RedisServer) -> paynotify::push::Results {
    paynotify::push::Results::new(
        paynotify::redis::Redis::connect(
            &redis.url(),
            paynotify::redis::keys::Keys::new("paynotify", 1),
        )
        .unwrap(),
    )
}

/// A store on the given Redis with the default prefix.
pub fn store(redis: &RedisServer) -> paynotify::delivery::store::Store {
    paynotify::delivery::store::Store::connect(
        &redis.url(),
        paynotify::redis::keys::Keys::new("paynotify", 1),
    )
    .unwrap()
}

/// A `paynotify serve` child process.
pub struct Proc {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    api: TestClient,
}

impl Proc {
    /// Starts `paynotify serve` on `127.0.0.1:0` and learns the port it bound from `/proc`
    /// (no free port picked beforehand that another process could take first).
    pub fn serve(redis_url: &str, extra: &[&str]) -> Proc {
        Self::serve_with_env(redis_url, extra, &[])
    }

    /// [`Proc::serve`] with these environment variables set for the child.
    pub fn serve_with_env(redis_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
            .arg("serve")
            .args([
                "--redis-url",
                redis_url,
                "--listen",
                "127.0.0.1:0",
                "--api-key",
                API_KEY,
                "--token-secret",
                TOKEN_SECRET,
            ])
            .arg("--allow-private-targets")
            .args(extra)
            .env("PAYNOTIFY_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let port = paynotify_testkit::listening_port(&mut child, Duration::from_secs(20));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Proc {
            child,
            addr,
            api: TestClient::new(addr),
        }
    }

    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.addr);
        wait_until(Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                reqwest::get(&url)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
    }

    /// The test's authenticated API client for this node.
    pub fn api(&self) -> &TestClient {
        &self.api
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `XADD paynotify:intake * notification <doc>` on any connection (standalone or cluster).
pub async fn xadd_notification(
    conn: &mut impl redis::aio::ConnectionLike,
    doc: &serde_json::Value,
) -> String {
    redis::cmd("XADD")
        .arg("paynotify:intake")
        .arg("*")
        .arg("notification")
        .arg(doc.to_string())
        .query_async(conn)
        .await
        .unwrap()
}
