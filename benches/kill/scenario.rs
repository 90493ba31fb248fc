//! The kill test: notifications enqueued through the intake stream while `paynotify serve`
//! nodes are SIGKILLed and restarted every few seconds and Redis itself is SIGKILLed once and
//! restarted from its fsync-always append-only file. Counts what was acknowledged, delivered,
//! missing and delivered twice, against the bound the design promises.
//!
//! Shared by the benchmark (`cargo bench --bench kill`, tens of thousands) and a short run in
//! the suite (`tests/it/kill.rs`), so the published figures and the test are the same code.
//!
//! What "acknowledged" means: the producer's `XADD` to the intake stream returned an entry id.
//! An XADD that failed (Redis was down) is retried with the same notification id until one is
//! acknowledged; enqueue is idempotent by id, so retries never make a second notification.
//!
//! The duplicate bound: a notification is delivered twice only when the merchant answered an
//! attempt whose outcome never reached Redis, i.e. the attempt was held by a node at the moment
//! it was SIGKILLed (held = claimed and not yet settled). A node holds at most
//! `--max-in-flight` attempts plus the outcomes waiting for the settler's next script call, so
//! the bound is `node kills × (max in flight + settle batch)`; a Redis kill adds nothing as
//! long as Redis is back within two leases (the settler retries that long, fenced by the claim
//! token). The run also counts how many were delivered twice per kill, which is the figure
//! that matters in practice.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paynotify_testkit::RedisServer;

/// Most outcomes one settle script call takes (`SETTLE_BATCH` in the worker).
pub const SETTLE_BATCH: u64 = 1000;

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The `paynotify` binary to run as nodes.
    pub binary: String,
    pub nodes: usize,
    /// Notifications enqueued in all.
    pub total: u64,
    /// Enqueued per second.
    pub rate: u64,
    /// A node is SIGKILLed (and started again at once) this often while enqueueing.
    pub kill_every: Duration,
    /// Redis is SIGKILLed and restarted from its AOF once, this long into the run.
    pub redis_kill_at: Duration,
    /// `--lease` of the nodes (a killed node's work comes back after it).
    pub lease: Duration,
    /// `--max-in-flight` of the nodes.
    pub max_in_flight: u64,
    /// How long to wait, after the last enqueue, for every acknowledged one to arrive.
    pub settle_time: Duration,
}

/// What a run saw.
#[derive(Debug, Clone)]
pub struct Report {
    pub acknowledged: u64,
    /// XADDs that failed and were sent again (Redis was down).
    pub xadd_retries: u64,
    /// Distinct acknowledged notifications the sink received.
    pub delivered: u64,
    pub missing: u64,
    /// Notifications the sink received more than once, and the extra requests.
    pub duplicated: u64,
    pub extra_requests: u64,
    pub node_kills: u64,
    pub redis_kills: u64,
    /// `node_kills × (max_in_flight + SETTLE_BATCH)`.
    pub bound: u64,
    /// From the first enqueue until the last missing one arrived (or the wait ended).
    pub took: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acknowledged {} (xadd retries {}), delivered {}, missing {}, duplicated {} ({} extra requests, {:.1} per node kill), node kills {}, redis kills {}, duplicate bound {}, took {:.1}s",
            self.acknowledged,
            self.xadd_retries,
            self.delivered,
            self.missing,
            self.duplicated,
            self.extra_requests,
            self.extra_requests as f64 / self.node_kills.max(1) as f64,
            self.node_kills,
            self.redis_kills,
            self.bound,
            self.took.as_secs_f64()
        )
    }
}

/// A sink that answers 200 at once and counts requests per body (the body is the id).
struct Sink {
    addr: std::net::SocketAddr,
    counts: Arc<Mutex<HashMap<String, u32>>>,
    requests: Arc<AtomicU64>,
}

async fn start_sink() -> Sink {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the sink");
    let addr = listener.local_addr().expect("sink address");
    let counts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let requests = Arc::new(AtomicU64::new(0));
    let (c, r) = (counts.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (counts, requests) = (c.clone(), r.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (counts, requests) = (counts.clone(), requests.clone());
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let id = String::from_utf8_lossy(&body).trim_matches('"').to_string();
                            *counts.lock().expect("sink lock").entry(id).or_insert(0) += 1;
                            requests.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(axum::body::Bytes::from_static(b"ok")),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Sink {
        addr,
        counts,
        requests,
    }
}

fn spawn_node(plan: &Plan, redis_url: &str) -> Child {
    Command::new(&plan.binary)
        .args(["serve", "--redis-url", redis_url, "--listen", "127.0.0.1:0"])
        .args(["--api-key", "kill-test-api-key-0123456789"])
        .args(["--token-secret", "kill-test-token-secret-0123456789"])
        .arg("--allow-private-targets")
        .args(["--lease", &format!("{}ms", plan.lease.as_millis())])
        .args(["--max-in-flight", &plan.max_in_flight.to_string()])
        // A notification claimed again and again because its nodes keep dying is not lost;
        // keep the stall limit out of the way of a test that kills on purpose.
        .args(["--max-stalls", "1000"])
        .env("PAYNOTIFY_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn paynotify serve")
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the plan; `progress` gets a line now and then.
pub async fn run(plan: &Plan, progress: impl Fn(String)) -> Report {
    let mut redis = RedisServer::start_with(true).expect("start a persistent redis-server");
    let url = redis.url();
    let sink = start_sink().await;
    let target = format!("http://{}/hook", sink.addr);
    let mut nodes: Vec<Child> = (0..plan.nodes).map(|_| spawn_node(plan, &url)).collect();

    let acknowledged = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let producer = {
        let (acknowledged, retries) = (acknowledged.clone(), retries.clone());
        let (url, total, rate) = (url.clone(), plan.total, plan.rate.max(1));
        tokio::spawn(async move {
            let client = redis::Client::open(url).expect("redis url");
            let mut conn = None;
            let batch = (rate / 20).max(1);
            let mut next = 0u64;
            while next < total {
                let due = started + Duration::from_secs_f64(next as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let end = (next + batch).min(total);
                loop {
                    if conn.is_none() {
                        conn = client.get_multiplexed_async_connection().await.ok();
                    }
                    let Some(c) = conn.as_mut() else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let mut pipe = redis::pipe();
                    for i in next..end {
                        let doc = serde_json::json!({"id": format!("k-{i}"), "url": target, "body": format!("k-{i}")});
                        pipe.cmd("XADD")
                            .arg("paynotify:intake")
                            .arg("*")
                            .arg("notification")
                            .arg(doc.to_string());
                    }
                    match pipe.query_async::<Vec<String>>(c).await {
                        Ok(ids) if ids.len() as u64 == end - next => break,
                        _ => {
                            retries.fetch_add(end - next, Ordering::Relaxed);
                            conn = None;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                acknowledged.fetch_add(end - next, Ordering::Relaxed);
                next = end;
            }
        })
    };

    // Chaos while the producer runs.
    let mut node_kills = 0u64;
    let mut redis_kills = 0u64;
    let mut next_kill = Instant::now() + plan.kill_every;
    while !producer.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if redis_kills == 0 && started.elapsed() >= plan.redis_kill_at {
            redis.stop();
            redis_kills += 1;
            progress(format!(
                "{:>5.1}s redis SIGKILLed at {} acknowledged; restarting from its AOF",
                started.elapsed().as_secs_f64(),
                acknowledged.load(Ordering::Relaxed)
            ));
            tokio::time::sleep(Duration::from_millis(500)).await;
            redis.start_again().expect("redis restarts from its AOF");
        }
        if Instant::now() >= next_kill {
            let victim = (node_kills as usize) % nodes.len();
            kill9(&mut nodes[victim]);
            nodes[victim] = spawn_node(plan, &url);
            node_kills += 1;
            next_kill = Instant::now() + plan.kill_every;
            if node_kills % 5 == 1 {
                progress(format!(
                    "{:>5.1}s node kills {node_kills}, acknowledged {}, sink requests {}",
                    started.elapsed().as_secs_f64(),
                    acknowledged.load(Ordering::Relaxed),
                    sink.requests.load(Ordering::Relaxed)
                ));
            }
        }
    }
    producer.await.expect("producer");
    let acknowledged = acknowledged.load(Ordering::Relaxed);
    progress(format!(
        "{:>5.1}s all {acknowledged} acknowledged; waiting up to {:?} for delivery",
        started.elapsed().as_secs_f64(),
        plan.settle_time
    ));
    let delivered = |counts: &HashMap<String, u32>| {
        (0..acknowledged)
            .filter(|i| counts.contains_key(&format!("k-{i}")))
            .count() as u64
    };
    let deadline = Instant::now() + plan.settle_time;
    loop {
        let done = delivered(&sink.counts.lock().expect("sink lock"));
        if done == acknowledged || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    // Late duplicates (a lease that expires after the last first delivery) count too.
    tokio::time::sleep(plan.lease + Duration::from_secs(1)).await;
    for node in &mut nodes {
        kill9(node);
    }
    let counts = sink.counts.lock().expect("sink lock").clone();
    let delivered = delivered(&counts);
    let duplicated = counts.values().filter(|n| **n > 1).count() as u64;
    let extra_requests = counts
        .values()
        .map(|n| u64::from(n.saturating_sub(1)))
        .sum();
    Report {
        acknowledged,
        xadd_retries: retries.load(Ordering::Relaxed),
        delivered,
        missing: acknowledged - delivered,
        duplicated,
        extra_requests,
        node_kills,
        redis_kills,
        bound: node_kills * (plan.max_in_flight + SETTLE_BATCH),
        took,
    }
}
