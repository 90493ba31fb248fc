//! Browser push benchmark (not a test): `cargo bench --bench push`.
//!
//! Starts a private redis-server and two `paynotify serve --roles gateway,worker` release
//! processes (the worker role runs the intake consumer; both nodes share its group), opens
//! BENCH_CONNS websocket connections (default 15,000) split over the two nodes, each following
//! its own order, then publishes BENCH_RATE results per second (default 10,000) for
//! BENCH_SECONDS (default 10), each to one random followed order, by each path of BENCH_PATH
//! (`direct`, `intake` or `both`, the default; `both` measures the paths one after the other on
//! the same nodes and sockets, BENCH_ROUNDS times, default 1):
//!
//! - `direct`: the same script the API uses (`publish.lua`), called from this process;
//! - `intake`: `XADD paynotify:intake * result <json>`, as an app server in any language does;
//! - `socketio` (in `all`, with `direct` and `intake`): the peer, socket.io 4 servers with the
//!   Redis adapter and the socket.io Redis emitter (`benches/peers/socketio`, `npm ci` run when
//!   missing), BENCH_CONNS sockets of its own, on the same Redis, set up once and measured in
//!   turn.
//!
//! The direct and intake publishers run on a thread and a runtime of their own, beside the one
//! that holds the client sockets. Reports per path results lost and publish-to-client latency
//! (publisher clock just before the call to client clock, same machine), CPU per result of
//! redis-server, the servers and the clients (`/proc/<pid>/stat`), and server memory per idle
//! subscribed connection (RSS growth / connections).

// A benchmark harness: a failed setup step should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use paynotify::push::Results;
use paynotify::redis::keys::Keys;
use paynotify::redis::Redis;
use paynotify_testkit::{cpu_seconds, RedisServer};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "bench-token-secret-0123456789";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn node(redis: &RedisServer, port: u16) -> std::process::Child {
    let bin = std::env::var("PAYNOTIFY_BIN").unwrap_or_else(|_| "target/release/paynotify".into());
    std::process::Command::new(bin)
        .args([
            "serve",
            "--roles",
            "gateway,worker",
            "--redis-url",
            &redis.url(),
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--token-secret",
            SECRET,
        ])
        .env("PAYNOTIFY_LOG", "warn")
        .spawn()
        .expect("build the release binary first: cargo build --release")
}

async fn wait_ready(port: u16) {
    for _ in 0..200 {
        if reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node on {port} never became ready");
}

/// CPU seconds used so far by redis-server, the servers and the clients (with the publisher).
fn cpu_now(redis: Option<u32>, servers: &[u32], clients: &[u32]) -> [f64; 3] {
    let sum = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum();
    [
        redis.map(cpu_seconds).unwrap_or(0.0),
        sum(servers),
        sum(clients),
    ]
}

/// Prints CPU per result between two [`cpu_now`] readings.
fn report_cpu(path: &str, round: u64, before: [f64; 3], after: [f64; 3], results: u64) {
    let us = |i: usize| (after[i] - before[i]) * 1e6 / results.max(1) as f64;
    println!(
        "  [{path}, round {round}] CPU per result: redis-server {:.1} us, servers {:.1} us, clients+publisher {:.1} us",
        us(0),
        us(1),
        us(2)
    );
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let conns = env("BENCH_CONNS", 15_000);
    let rate = env("BENCH_RATE", 10_000);
    let seconds = env("BENCH_SECONDS", 10);
    let paths: &[&str] = match std::env::var("BENCH_PATH").as_deref() {
        Ok("direct") => &["direct"],
        Ok("intake") => &["intake"],
        Ok("socketio") => &["socketio"],
        Ok("both") | Err(_) => &["direct", "intake"],
        Ok("all") => &["direct", "intake", "socketio"],
        Ok(other) => panic!("BENCH_PATH={other}: expected direct, intake, socketio, both or all"),
    };
    let rounds = env("BENCH_ROUNDS", 1);
    println!(
        "push: {conns} websocket connections over 2 nodes, {rate} results/s for {seconds} s per path {paths:?}, {rounds} round(s)"
    );
    let redis = RedisServer::start().unwrap();
    let ports = [
        paynotify_testkit::free_port().unwrap(),
        paynotify_testkit::free_port().unwrap(),
    ];
    let mut nodes: Vec<_> = ports.iter().map(|p| node(&redis, *p)).collect();
    for p in ports {
        wait_ready(p).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before: Vec<u64> = nodes.iter().map(|n| rss_kib(n.id())).collect();

    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<u64>::with_capacity(
        (rate * seconds) as usize,
    )));
    let expiry = paynotify::now_ms() / 1000 + 3600;
    let started = Instant::now();
    let subscribed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let connect_limit = Arc::new(tokio::sync::Semaphore::new(200));
    for i in 0..conns {
        let port = ports[(i % 2) as usize];
        let order = format!("bench-{i}");
        let token = paynotify::token::mint(
            &[SECRET.to_string()],
            paynotify::token::Kind::Order,
            &order,
            expiry,
        )
        .unwrap();
        let received = received.clone();
        let latencies = latencies.clone();
        let subscribed = subscribed.clone();
        let limit = connect_limit.clone();
        tasks.push(tokio::spawn(async move {
            let permit = limit.acquire_owned().await.unwrap();
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
                .await
                .unwrap();
            if std::env::var("BENCH_NO_SUBSCRIBE").is_ok() {
                // Memory experiment: connections that never subscribe.
                subscribed.fetch_add(1, Ordering::Relaxed);
                drop(permit);
                let _ = ws.next().await;
                return;
            }
            let sub = serde_json::json!({"type": "subscribe", "order_id": order, "token": token});
            ws.send(Message::Text(sub.to_string().into()))
                .await
                .unwrap();
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    if t.contains("\"subscribed\"") {
                        subscribed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            drop(permit);
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    let now = now_us();
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if let Some(sent) = v["data"]["t_us"].as_u64() {
                        latencies.lock().unwrap().push(now.saturating_sub(sent));
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    while subscribed.load(Ordering::Relaxed) < conns {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "connections did not all subscribe"
        );
    }
    println!(
        "  {conns} connections subscribed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after: Vec<u64> = nodes.iter().map(|n| rss_kib(n.id())).collect();
    let per_conn: Vec<f64> = rss_before
        .iter()
        .zip(&rss_after)
        .map(|(b, a)| (a - b) as f64 / (conns as f64 / 2.0))
        .collect();
    println!(
        "  node RSS before/after: {:?} / {:?} KiB -> {:.2} and {:.2} KiB per idle subscribed connection",
        rss_before, rss_after, per_conn[0], per_conn[1]
    );

    let mut peer = paths
        .contains(&"socketio")
        .then(|| SocketIo::start(&redis.url(), conns));
    let handle = Redis::connect(&redis.url(), Keys::new("paynotify", 1)).unwrap();
    handle.load_scripts().await.unwrap();
    let mut seed: u64 = 7;
    for round in 1..=rounds {
        for path in paths {
            if let (&"socketio", Some(peer)) = (path, peer.as_mut()) {
                peer.round(&redis, rate, seconds, conns, round);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            received.store(0, Ordering::Relaxed);
            latencies.lock().unwrap().clear();
            let node_pids: Vec<u32> = nodes.iter().map(|n| n.id()).collect();
            let me = [std::process::id()];
            let cpu_before = cpu_now(redis.pid(), &node_pids, &me);
            let intake = *path == "intake";
            // The publisher runs on a thread and a runtime of its own, so pacing the results
            // does not compete with this runtime's 15,000 client sockets (it did: the intake
            // publisher reached only 5,300-8,000/s of the 10,000 asked).
            let url = redis.url();
            let (published, next_seed) = tokio::task::spawn_blocking(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let handle = Redis::connect(&url, Keys::new("paynotify", 1)).unwrap();
                    let store = Results::new(handle.clone());
                    let mut seed = seed;
                    let n =
                        publish_for(&store, &handle, intake, rate, seconds, conns, &mut seed).await;
                    (n, seed)
                })
            })
            .await
            .unwrap();
            seed = next_seed;
            let deadline = Instant::now() + Duration::from_secs(10);
            while received.load(Ordering::Relaxed) < published && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let got = received.load(Ordering::Relaxed);
            let cpu_after = cpu_now(redis.pid(), &node_pids, &me);
            let mut lat = latencies.lock().unwrap().clone();
            lat.sort_unstable();
            println!(
                "  [{path}, round {round}] published {published}; received {got}; lost {}",
                published.saturating_sub(got)
            );
            println!(
                "  [{path}, round {round}] publish-to-client latency: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
                pct(&lat, 0.5) as f64 / 1000.0,
                pct(&lat, 0.9) as f64 / 1000.0,
                pct(&lat, 0.99) as f64 / 1000.0,
                pct(&lat, 0.999) as f64 / 1000.0,
                lat.last().copied().unwrap_or(0) as f64 / 1000.0
            );
            report_cpu(path, round, cpu_before, cpu_after, got);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    for n in &mut nodes {
        let _ = n.kill();
        let _ = n.wait();
    }
    drop(peer);
    for t in tasks {
        t.abort();
    }
}

/// Publishes `rate` results per second for `seconds`, paced every millisecond (bursts would
/// measure the publisher's queueing, not delivery), directly (`publish.lua`) or through the
/// intake stream; returns how many were published.
async fn publish_for(
    store: &Results,
    handle: &Redis,
    intake: bool,
    rate: u64,
    seconds: u64,
    conns: u64,
    seed: &mut u64,
) -> u64 {
    let total = rate * seconds;
    let tick = Duration::from_millis(1);
    let per_tick = (rate / 1000).max(1);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let publish_start = Instant::now();
    let mut published = 0u64;
    let stream = handle.keys().intake();
    while published < total {
        interval.tick().await;
        let batch = per_tick.min(total - published);
        let futs = (0..batch).map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let order = format!("bench-{}", (*seed >> 33) % conns);
            let stream = &stream;
            async move {
                if intake {
                    let doc = serde_json::json!({
                        "order_id": order, "status": "paid", "data": {"t_us": now_us()}
                    });
                    let _: String = handle
                        .query(
                            redis::cmd("XADD")
                                .arg(stream)
                                .arg("*")
                                .arg("result")
                                .arg(doc.to_string()),
                        )
                        .await
                        .unwrap();
                } else {
                    let doc = paynotify::push::ResultDoc {
                        order_id: order,
                        status: "paid".into(),
                        data: serde_json::json!({"t_us": now_us()}),
                    };
                    paynotify::push::publish(store, Duration::from_secs(600), &doc)
                        .await
                        .unwrap();
                }
            }
        });
        futures::future::join_all(futs).await;
        published += batch;
    }
    let secs = publish_start.elapsed().as_secs_f64();
    println!(
        "  {} published {published} in {secs:.2} s ({:.0}/s)",
        if intake { "intake" } else { "direct" },
        published as f64 / secs
    );
    published
}

/// The socket.io peer (`benches/peers/socketio`, `npm ci` run when missing): two socket.io
/// servers with the Redis adapter on the same Redis, and one socket.io-client process holding
/// `conns` websockets split over them, each in the room of its order; results are sent with the
/// socket.io Redis emitter, paced like the other paths. Its processes are killed on drop.
struct SocketIo {
    servers: Vec<std::process::Child>,
    client: std::process::Child,
    client_in: std::process::ChildStdin,
    client_out: std::sync::mpsc::Receiver<String>,
}

const PEER_DIR: &str = "benches/peers/socketio";

/// The lines a child prints, read on a thread of their own.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for the line `want` from a child, up to `timeout`.
fn wait_line(lines: &std::sync::mpsc::Receiver<String>, want: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(want) => return line,
            Ok(_) => {}
            Err(e) => panic!(
                "socket.io peer: no {want:?} line ({e}); did you `npm ci --prefix {PEER_DIR}`?"
            ),
        }
    }
}

impl SocketIo {
    fn start(redis_url: &str, conns: u64) -> Self {
        paynotify_testkit::ensure_npm_peer(std::path::Path::new(PEER_DIR), "socket.io");
        let node = |args: &[&str]| {
            std::process::Command::new("node")
                .current_dir(PEER_DIR)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("node (Node.js) must be installed for BENCH_PATH=socketio")
        };
        let ports = [
            paynotify_testkit::free_port().unwrap(),
            paynotify_testkit::free_port().unwrap(),
        ];
        let mut servers: Vec<_> = ports
            .iter()
            .map(|p| node(&["server.js", &p.to_string(), redis_url]))
            .collect();
        for s in &mut servers {
            wait_line(&lines_of(s), "ready", Duration::from_secs(30));
        }
        let started = Instant::now();
        let list = format!("{},{}", ports[0], ports[1]);
        let mut client = node(&["client.js", &conns.to_string(), &list]);
        let client_in = client.stdin.take().unwrap();
        let client_out = lines_of(&mut client);
        wait_line(&client_out, "subscribed", Duration::from_secs(180));
        println!(
            "  socket.io peer: {conns} connections subscribed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Self {
            servers,
            client,
            client_in,
            client_out,
        }
    }

    /// One round: the emitter publishes, then the client reports what arrived.
    fn round(&mut self, redis: &RedisServer, rate: u64, seconds: u64, conns: u64, round: u64) {
        use std::io::Write;
        let redis_url = &redis.url();
        let servers: Vec<u32> = self.servers.iter().map(|s| s.id()).collect();
        let client = [self.client.id()];
        let cpu_before = cpu_now(redis.pid(), &servers, &client);
        let out = std::process::Command::new("node")
            .current_dir(PEER_DIR)
            .args([
                "emitter.js",
                redis_url,
                &rate.to_string(),
                &seconds.to_string(),
                &conns.to_string(),
            ])
            .output()
            .expect("node emitter.js");
        let sent: serde_json::Value =
            serde_json::from_slice(out.stdout.trim_ascii()).unwrap_or_default();
        let published = sent["published"].as_u64().unwrap_or(0);
        println!(
            "  socketio published {published} in {:.2} s ({:.0}/s)",
            sent["seconds"].as_f64().unwrap_or(0.0),
            published as f64 / sent["seconds"].as_f64().unwrap_or(1.0)
        );
        std::thread::sleep(Duration::from_secs(2));
        writeln!(self.client_in, "report").unwrap();
        let report: serde_json::Value = serde_json::from_str(&wait_line(
            &self.client_out,
            "received",
            Duration::from_secs(120),
        ))
        .unwrap();
        let got = report["received"].as_u64().unwrap_or(0);
        // The emitter process has exited by now: its CPU is not in "clients+publisher".
        let cpu_after = cpu_now(redis.pid(), &servers, &client);
        let ms = |k: &str| report[k].as_f64().unwrap_or(0.0) / 1000.0;
        println!(
            "  [socketio, round {round}] published {published}; received {got}; lost {}",
            published.saturating_sub(got)
        );
        println!(
            "  [socketio, round {round}] publish-to-client latency: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            ms("p50"),
            ms("p90"),
            ms("p99"),
            ms("p999"),
            ms("max")
        );
        report_cpu("socketio", round, cpu_before, cpu_after, got);
    }
}

impl Drop for SocketIo {
    fn drop(&mut self) {
        for child in self
            .servers
            .iter_mut()
            .chain(std::iter::once(&mut self.client))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
