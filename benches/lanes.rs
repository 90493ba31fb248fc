//! Merchant lanes benchmark (issue 13, "adaptive lane per destination"; not a test):
//! `cargo bench --bench lanes -- [fast|sick|all]`.
//!
//! Starts a private redis-server, HTTP sinks in this process (plain hyper, as in
//! `benches/engine.rs`) and `paynotify serve --roles worker` release processes, then measures:
//!
//! - **fast**: one fast sink (one destination), BENCH_N (default 50,000) notifications due at
//!   the same instant, delivered three ways in the same run, alternating, BENCH_REPEAT times
//!   (default 3): (a) paynotify with its defaults (only what the harness must set: the Redis URL,
//!   `--listen 127.0.0.1:0`, `--allow-private-targets`, a node id), (b) paynotify with `--per-destination-concurrency 512 --max-in-flight 1024`, (c) BullMQ
//!   (`benches/peers/bullmq/drain.js`, a Worker at concurrency 64 on Redis db 1, prefix
//!   `bullbench`, jobs added with `addBulk` while no worker runs). Rate = N / (from the due
//!   instant, or BullMQ's worker start, to the sink's N-th request); CPU per notification of the
//!   worker process (paynotify or node), redis-server and this process (sink + harness) from
//!   `/proc/<pid>/stat`; ratios a/b and a/c per round and of the medians.
//! - **sick**: BENCH_MERCHANTS (default 100) destinations (one sink listening on that many
//!   ports; host:port is the destination key), two of them sick: port 0 answers every request
//!   after BENCH_SLOW_MS (default 9,000) ms, port 1 never answers (the attempt times out at the
//!   notification's `timeout_ms`, BENCH_TIMEOUT_MS, default 10,000). BENCH_RATE (default 2,000)
//!   notifications/s fall due steadily for BENCH_SECONDS (default 30), round robin over the
//!   merchants. Reports the healthy merchants' lateness (sink receipt - due over all of them;
//!   attempt start - due from paynotify's attempt records for a sample), p50/p99/max, the worst
//!   healthy merchant's p99, and for each sick port the most requests it had open at once.
//!
//! Re-running on another binary (the adaptive lane): build it, then point PAYNOTIFY_BIN at it:
//!
//! ```sh
//! cargo build --release                                          # today's binary, the baseline
//! PAYNOTIFY_BIN=/path/to/new/paynotify cargo bench --bench lanes -- fast
//! PAYNOTIFY_BIN=/path/to/new/paynotify cargo bench --bench lanes -- sick
//! BENCH_WORKER_ARGS="--some-new-flag 64" cargo bench --bench lanes -- sick   # extra worker flags
//! BENCH_WORKER_ARGS="--per-destination-concurrency 512 --max-in-flight 1024" \
//!     cargo bench --bench lanes -- sick                          # today's code, tuned for (b)
//! BENCH_RATE=6000 cargo bench --bench lanes -- sick              # sick demand above the node's slots
//! ```
//!
//! Run the baseline binary and the new one alternately in the same half hour and compare ratios,
//! not absolute rates (this 2-core machine's speed drifts; see BENCHMARKS.md, "Merchant lanes").
//!
//! Without PAYNOTIFY_BIN the worker is `$CARGO_TARGET_DIR/release/paynotify` (or
//! `target/release/paynotify`). BENCH_WORKER_ARGS (split on whitespace) is appended to every
//! paynotify worker's command line, in both modes and all three ways. BullMQ is installed with
//! `npm ci --prefix benches/peers/bullmq` when its node_modules is missing; BENCH_NO_BULLMQ=1 skips
//! way (c).

// A benchmark harness: a failed setup step should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use paynotify::delivery::store::Store;
use paynotify::redis::keys::Keys;
use paynotify_testkit::{cpu_seconds, RedisServer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn paynotify_bin() -> String {
    if let Ok(bin) = std::env::var("PAYNOTIFY_BIN") {
        return bin;
    }
    match std::env::var("CARGO_TARGET_DIR") {
        Ok(dir) if !dir.is_empty() => format!("{dir}/release/paynotify"),
        _ => "target/release/paynotify".into(),
    }
}

fn extra_worker_args() -> Vec<String> {
    std::env::var("BENCH_WORKER_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// One `paynotify serve --roles worker` process on `redis` with `flags` (and BENCH_WORKER_ARGS).
fn worker(redis: &RedisServer, flags: &[&str]) -> std::process::Child {
    let bin = paynotify_bin();
    std::process::Command::new(&bin)
        .args(["serve", "--roles", "worker", "--redis-url", &redis.url()])
        .args(["--listen", "127.0.0.1:0", "--allow-private-targets"])
        .args(["--node-id", "bench-lanes"])
        .args(flags)
        .args(extra_worker_args())
        .env("PAYNOTIFY_LOG", "warn")
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{bin}: {e}; build the release binary first: cargo build --release")
        })
}

fn stop(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, mut v: Vec<i64>) {
    v.sort_unstable();
    println!(
        "  {name}: n={} p50={} ms p90={} ms p99={} ms p99.9={} ms max={} ms",
        v.len(),
        pct(&v, 0.5),
        pct(&v, 0.9),
        pct(&v, 0.99),
        pct(&v, 0.999),
        v.last().copied().unwrap_or(0)
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------------------------
// Sinks

/// What one sink port does with a request.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Answers `success` at once.
    Fast,
    /// Answers `success` after this long.
    Slow(Duration),
    /// Reads the request and never answers (until the client gives up and closes).
    BlackHole,
}

/// One sink port's counters.
#[derive(Default)]
struct PortStats {
    received: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    /// Receipt minus due time (ms) of each request whose body starts with "<due ms>:".
    lateness: Mutex<Vec<i64>>,
}

impl PortStats {
    fn enter(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a request open at the sink while it lives (also when hyper drops the future).
struct Open(Arc<PortStats>);
impl Drop for Open {
    fn drop(&mut self) {
        self.0.leave();
    }
}

async fn bind(backlog: u32) -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    // A deep accept queue: a burst of new connections must not be dropped and retried by the
    // kernel 1-7 s later (see BENCHMARKS.md, issue #5).
    socket.listen(backlog).unwrap()
}

/// Starts one sink port with `behaviour`; returns its address.
async fn start_port(behaviour: Behaviour, stats: Arc<PortStats>) -> SocketAddr {
    use http_body_util::BodyExt;
    let listener = bind(8192).await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let stats = stats.clone();
            if let Behaviour::BlackHole = behaviour {
                // One request per connection (it is never answered, so never reused): open from
                // its first bytes until the client closes the connection.
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut open = None;
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {
                                if open.is_none() {
                                    stats.received.fetch_add(1, Ordering::Relaxed);
                                    stats.enter();
                                    open = Some(Open(stats.clone()));
                                }
                            }
                        }
                    }
                    drop(open);
                });
                continue;
            }
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let stats = stats.clone();
                        async move {
                            stats.enter();
                            let _open = Open(stats.clone());
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let now = paynotify::now_ms();
                            // body: "<due ms>:<id>"
                            if let Some(due) = std::str::from_utf8(&body)
                                .ok()
                                .and_then(|s| s.split(':').next())
                                .and_then(|d| d.parse::<i64>().ok())
                                .filter(|d| *d > 0)
                            {
                                stats.lateness.lock().unwrap().push(now - due);
                            }
                            stats.received.fetch_add(1, Ordering::Relaxed);
                            if let Behaviour::Slow(d) = behaviour {
                                tokio::time::sleep(d).await;
                            }
                            Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                                Bytes::from_static(b"success"),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// Enqueueing (the store, as engine.rs does: setup, outside the measured path)

/// Enqueues one notification per (id, url, due) with `extra` fields, 2,000 at a time.
async fn enqueue_all(store: &Store, items: &[(String, String, i64)], extra: &serde_json::Value) {
    let now = paynotify::now_ms();
    let started = Instant::now();
    for chunk in items.chunks(2000) {
        let futs = chunk.iter().map(|(id, url, due)| {
            let mut doc = serde_json::json!({
                "id": id, "url": url, "body": format!("{due}:{id}"), "deliver_at": due,
            });
            if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
                d.extend(e.clone());
            }
            let doc = doc.to_string();
            let n =
                paynotify::delivery::schema::parse(doc.as_bytes(), now, || unreachable!()).unwrap();
            async move { store.enqueue(&n, now).await.unwrap() }
        });
        futures::future::join_all(futs).await;
    }
    eprintln!("  enqueued {} in {:.2?}", items.len(), started.elapsed());
}

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// fast

/// One way's result in one round.
struct Trial {
    rate: f64,
    /// CPU µs per notification: the worker process (paynotify or node), redis-server, this
    /// process (sink + harness).
    cpu_us: [f64; 3],
}

fn print_trial(label: &str, n: u64, got: u64, elapsed: Duration, cpu_us: [f64; 3]) -> Trial {
    let rate = got as f64 / elapsed.as_secs_f64();
    println!(
        "  {label}: {got}/{n} in {:.3} s = {rate:.0} notifications/s; CPU per notification: worker {:.1} us, redis-server {:.1} us, sink+harness {:.1} us",
        elapsed.as_secs_f64(),
        cpu_us[0],
        cpu_us[1],
        cpu_us[2]
    );
    Trial { rate, cpu_us }
}

/// Waits until the sink has `n` requests (at most `limit`); the time from `start`. Also prints
/// when it had half and 99 % of them (a long tail shows as t99 far below the total).
async fn wait_received(stats: &PortStats, n: u64, start: Instant, limit: Duration) -> Duration {
    let mut last_report = Instant::now();
    let (mut t50, mut t99) = (None, None);
    loop {
        let got = stats.received.load(Ordering::Relaxed);
        if t50.is_none() && got * 2 >= n {
            t50 = Some(start.elapsed());
        }
        if t99.is_none() && got * 100 >= n * 99 {
            t99 = Some(start.elapsed());
        }
        if got >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("  ... {got} received");
            last_report = Instant::now();
        }
        if start.elapsed() > limit {
            println!("  gave up after {limit:?}");
            break;
        }
    }
    let elapsed = start.elapsed();
    let secs = |t: Option<Duration>| t.map_or(f64::NAN, |t| t.as_secs_f64());
    eprintln!(
        "  half received at {:.3} s, 99 % at {:.3} s, all at {:.3} s",
        secs(t50),
        secs(t99),
        elapsed.as_secs_f64()
    );
    elapsed
}

/// paynotify drains `n` due at one instant into the fast sink, with worker `flags`.
async fn paynotify_drain(
    label: &str,
    redis: &RedisServer,
    sink: (SocketAddr, &Arc<PortStats>),
    n: u64,
    flags: &[&str],
) -> Trial {
    let keys = Keys::new("paynotify", 1);
    let store = Store::connect(&redis.url(), keys.clone()).unwrap();
    store.load_scripts().await.unwrap();
    let url = format!("http://{}/notify", sink.0);
    let due = paynotify::now_ms() + 60_000;
    let items: Vec<(String, String, i64)> = (0..n)
        .map(|i| (format!("b{i}"), url.clone(), due))
        .collect();
    enqueue_all(&store, &items, &serde_json::json!({})).await;
    // The worker starts after the enqueue; the batch falls due 1 s after it has had 2 s to start.
    let proc = worker(redis, flags);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut conn = redis_conn(redis).await;
    let due = paynotify::now_ms() + 1000;
    let _: () = redis::cmd("EVAL")
        .arg("local m = redis.call('ZRANGE', KEYS[1], 0, -1) for _, x in ipairs(m) do redis.call('ZADD', KEYS[1], ARGV[1], x) end")
        .arg(1).arg(&keys.partition(0).due).arg(due)
        .query_async(&mut conn).await.unwrap();
    for channel in keys.wake_channels() {
        let _: i64 = redis::cmd("SPUBLISH")
            .arg(channel)
            .arg(due)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let cpu = |pid: u32| cpu_seconds(pid);
    let before = [
        cpu(proc.id()),
        redis.pid().map(cpu).unwrap_or(0.0),
        cpu(std::process::id()),
    ];
    tokio::time::sleep(Duration::from_millis(
        (due - paynotify::now_ms()).max(0) as u64
    ))
    .await;
    let start = Instant::now();
    let elapsed = wait_received(sink.1, n, start, Duration::from_secs(180)).await;
    let after = [
        cpu(proc.id()),
        redis.pid().map(cpu).unwrap_or(0.0),
        cpu(std::process::id()),
    ];
    stop(proc);
    let got = sink.1.received.load(Ordering::Relaxed);
    let per = |i: usize| (after[i] - before[i]) * 1e6 / got.max(1) as f64;
    print_trial(label, n, got, elapsed, [per(0), per(1), per(2)])
}

/// The next JSON line the BullMQ peer printed.
async fn next_event(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> serde_json::Value {
    let line = lines
        .next_line()
        .await
        .unwrap()
        .expect("the BullMQ peer exited early (see its stderr)");
    serde_json::from_str(&line).unwrap()
}

fn bullmq_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peers/bullmq")
}

/// BullMQ (benches/peers/bullmq/drain.js) drains `n` jobs into the fast sink at `concurrency`.
async fn bullmq_drain(
    label: &str,
    redis: &RedisServer,
    sink: (SocketAddr, &Arc<PortStats>),
    n: u64,
    concurrency: u64,
) -> Trial {
    let script = bullmq_dir().join("drain.js");
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .args(["--redis", &format!("{}/1", redis.url())])
        .args(["--prefix", "bullbench"])
        .args(["--sink", &format!("http://{}/notify", sink.0)])
        .args(["--n", &n.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (Node.js) is needed for the BullMQ peer; or set BENCH_NO_BULLMQ=1");
    let pid = child.id().unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let enqueued = next_event(&mut lines).await;
    eprintln!(
        "  bullmq: added {} jobs in {} ms",
        enqueued["n"], enqueued["ms"]
    );
    let start_event = next_event(&mut lines).await;
    assert_eq!(start_event["event"], "start", "{start_event}");
    let start = Instant::now();
    let before = [
        cpu_seconds(pid),
        redis.pid().map(cpu_seconds).unwrap_or(0.0),
        cpu_seconds(std::process::id()),
    ];
    let elapsed = wait_received(sink.1, n, start, Duration::from_secs(300)).await;
    let done = next_event(&mut lines).await;
    let after = [
        cpu_seconds(pid),
        redis.pid().map(cpu_seconds).unwrap_or(0.0),
        cpu_seconds(std::process::id()),
    ];
    eprintln!(
        "  bullmq: {} completed, {} failed, {} ms from its worker start to the last completion",
        done["completed"], done["failed"], done["elapsed_ms"]
    );
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    if !matches!(status, Ok(Ok(s)) if s.success()) {
        let _ = child.kill().await;
    }
    let got = sink.1.received.load(Ordering::Relaxed);
    let per = |i: usize| (after[i] - before[i]) * 1e6 / got.max(1) as f64;
    print_trial(label, n, got, elapsed, [per(0), per(1), per(2)])
}

async fn fast(n: u64, repeat: u64) {
    let with_bullmq = std::env::var("BENCH_NO_BULLMQ").map_or(true, |v| v.is_empty() || v == "0");
    println!(
        "fast: {n} notifications due at one instant, one fast sink (one destination), {repeat} round(s) of (a) paynotify defaults, (b) paynotify --per-destination-concurrency 512 --max-in-flight 1024{}; worker {}",
        if with_bullmq { ", (c) BullMQ concurrency 64" } else { "" },
        paynotify_bin()
    );
    if with_bullmq {
        paynotify_testkit::ensure_npm_peer(&bullmq_dir(), "bullmq");
    }
    let redis = RedisServer::start().unwrap();
    let stats = Arc::new(PortStats::default());
    let addr = start_port(Behaviour::Fast, stats.clone()).await;
    let mut conn = redis_conn(&redis).await;
    let mut results: [Vec<Trial>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 1..=repeat {
        println!("round {round}:");
        for (way, trials) in results.iter_mut().enumerate() {
            if way == 2 && !with_bullmq {
                continue;
            }
            let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
            stats.received.store(0, Ordering::SeqCst);
            let sink = (addr, &stats);
            let trial = match way {
                0 => paynotify_drain("(a) paynotify defaults", &redis, sink, n, &[]).await,
                1 => {
                    paynotify_drain(
                        "(b) paynotify --per-destination-concurrency 512 --max-in-flight 1024",
                        &redis,
                        sink,
                        n,
                        &[
                            "--per-destination-concurrency",
                            "512",
                            "--max-in-flight",
                            "1024",
                        ],
                    )
                    .await
                }
                _ => bullmq_drain("(c) BullMQ concurrency 64", &redis, sink, n, 64).await,
            };
            trials.push(trial);
        }
        let (a, b) = (
            &results[0][results[0].len() - 1],
            &results[1][results[1].len() - 1],
        );
        let mut line = format!("  round {round} ratios: a/b {:.2}", a.rate / b.rate);
        if let Some(c) = results[2].last() {
            line += &format!(", a/c {:.2}", a.rate / c.rate);
        }
        println!("{line}");
    }
    println!("summary ({repeat} round(s), medians):");
    let names = [
        "(a) paynotify defaults",
        "(b) paynotify 512/1024",
        "(c) BullMQ concurrency 64",
    ];
    let mut medians = [0.0; 3];
    for (way, trials) in results.iter().enumerate() {
        if trials.is_empty() {
            continue;
        }
        medians[way] = median(trials.iter().map(|t| t.rate).collect());
        let cpu = |i: usize| median(trials.iter().map(|t| t.cpu_us[i]).collect());
        println!(
            "  {:<28} {:>8.0}/s  (runs: {})  CPU/notification: worker {:.1} us, redis {:.1} us, sink+harness {:.1} us",
            names[way],
            medians[way],
            trials
                .iter()
                .map(|t| format!("{:.0}", t.rate))
                .collect::<Vec<_>>()
                .join(", "),
            cpu(0),
            cpu(1),
            cpu(2)
        );
    }
    let mut line = format!(
        "  ratio of medians: a/b {:.2} (target >= 1)",
        medians[0] / medians[1]
    );
    if medians[2] > 0.0 {
        line += &format!(", a/c {:.2} (target >= 3)", medians[0] / medians[2]);
    }
    println!("{line}");
}

// ---------------------------------------------------------------------------------------------
// sick

async fn sick(rate: u64, seconds: u64, merchants: u64) {
    let slow = Duration::from_millis(env("BENCH_SLOW_MS", 9000));
    let timeout_ms = env("BENCH_TIMEOUT_MS", 10_000);
    assert!(merchants >= 3, "BENCH_MERCHANTS must be at least 3");
    println!(
        "sick: {rate}/s falling due for {seconds} s over {merchants} merchants (ports), port 0 answers after {} ms, port 1 never answers, timeout_ms {timeout_ms}; 1 worker process ({}), defaults{}",
        slow.as_millis(),
        paynotify_bin(),
        match extra_worker_args() {
            a if a.is_empty() => String::new(),
            a => format!(" + {}", a.join(" ")),
        }
    );
    let redis = RedisServer::start().unwrap();
    let keys = Keys::new("paynotify", 1);
    let store = Store::connect(&redis.url(), keys).unwrap();
    store.load_scripts().await.unwrap();
    let mut ports = Vec::new();
    for m in 0..merchants {
        let behaviour = match m {
            0 => Behaviour::Slow(slow),
            1 => Behaviour::BlackHole,
            _ => Behaviour::Fast,
        };
        let stats = Arc::new(PortStats::default());
        let addr = start_port(behaviour, stats.clone()).await;
        ports.push((addr, stats));
    }
    let total = rate * seconds;
    let proc = worker(&redis, &[]);
    let t0 = paynotify::now_ms() + 5000 + total as i64 / 20; // room to enqueue first
    let items: Vec<(String, String, i64)> = (0..total)
        .map(|i| {
            let m = (i % merchants) as usize;
            (
                format!("m{m}-{i}"),
                format!("http://{}/notify", ports[m].0),
                t0 + (i * 1000 / rate) as i64,
            )
        })
        .collect();
    enqueue_all(
        &store,
        &items,
        &serde_json::json!({ "timeout_ms": timeout_ms }),
    )
    .await;
    let last_due = items.last().map_or(t0, |i| i.2);
    let lead = t0 - paynotify::now_ms();
    assert!(
        lead > 500,
        "enqueue took too long; lower BENCH_RATE or BENCH_SECONDS"
    );
    tokio::time::sleep(Duration::from_millis(lead as u64)).await;
    let cpu_before = (
        cpu_seconds(proc.id()),
        redis.pid().map(cpu_seconds).unwrap_or(0.0),
    );
    let started = Instant::now();
    let healthy_total: u64 = (0..total).filter(|i| i % merchants >= 2).count() as u64;
    let healthy_received = || -> u64 {
        ports[2..]
            .iter()
            .map(|(_, s)| s.received.load(Ordering::Relaxed))
            .sum()
    };
    let mut next_report = Duration::from_secs(5);
    while healthy_received() < healthy_total {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() >= next_report {
            next_report += Duration::from_secs(5);
            eprintln!(
                "  ... {:>3} s: healthy {} of {}, slow port open {} (peak {}), black hole open {} (peak {})",
                started.elapsed().as_secs(),
                healthy_received(),
                healthy_total,
                ports[0].1.in_flight.load(Ordering::Relaxed),
                ports[0].1.peak_in_flight.load(Ordering::Relaxed),
                ports[1].1.in_flight.load(Ordering::Relaxed),
                ports[1].1.peak_in_flight.load(Ordering::Relaxed),
            );
        }
        if paynotify::now_ms() > last_due + 30_000 {
            println!("  gave up waiting for the healthy merchants");
            break;
        }
    }
    let elapsed = started.elapsed();
    let cpu_after = (
        cpu_seconds(proc.id()),
        redis.pid().map(cpu_seconds).unwrap_or(0.0),
    );
    println!(
        "  healthy merchants: received {} of {healthy_total}; CPU while due (cores busy): worker {:.2}, redis-server {:.2}",
        healthy_received(),
        (cpu_after.0 - cpu_before.0) / elapsed.as_secs_f64(),
        (cpu_after.1 - cpu_before.1) / elapsed.as_secs_f64()
    );
    let mut all = Vec::new();
    let mut worst = (0usize, 0i64);
    for (m, (_, s)) in ports.iter().enumerate().skip(2) {
        let mut v = s.lateness.lock().unwrap().clone();
        v.sort_unstable();
        let p99 = pct(&v, 0.99);
        if p99 >= worst.1 {
            worst = (m, p99);
        }
        all.extend(v);
    }
    summary("healthy sink receipt - due (all)", all);
    println!(
        "  worst healthy merchant's p99: {} ms (port {})",
        worst.1, worst.0
    );
    let per_merchant = total / merchants;
    let sample = (0..total)
        .filter(|i| i % merchants >= 2)
        .step_by((healthy_total / 20_000).max(1) as usize)
        .map(|i| format!("m{}-{i}", i % merchants));
    summary(
        "healthy attempt start - due (paynotify records, sample)",
        attempt_lateness(&store, sample).await,
    );
    for (m, name) in [
        (0usize, "slow (answers after the delay)"),
        (1, "black hole (never answers)"),
    ] {
        let s = &ports[m].1;
        println!(
            "  sick port {m}, {name}: {per_merchant} notifications, {} requests received, at most {} open at once, {} open now",
            s.received.load(Ordering::Relaxed),
            s.peak_in_flight.load(Ordering::Relaxed),
            s.in_flight.load(Ordering::Relaxed)
        );
    }
    stop(proc);
}

async fn attempt_lateness(store: &Store, ids: impl Iterator<Item = String>) -> Vec<i64> {
    let mut out = Vec::new();
    for id in ids {
        if let Ok(Some(v)) = store.show(&id).await {
            if let Some(a) = v["attempts"].get(0) {
                out.push(a["started_at"].as_i64().unwrap_or(0) - a["due_at"].as_i64().unwrap_or(0));
            }
        }
    }
    out
}

fn main() {
    let mode = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "all".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if mode == "fast" || mode == "all" {
            fast(env("BENCH_N", 50_000), env("BENCH_REPEAT", 3).max(1)).await;
        }
        if mode == "sick" || mode == "all" {
            sick(
                env("BENCH_RATE", 2_000),
                env("BENCH_SECONDS", 30),
                env("BENCH_MERCHANTS", 100),
            )
            .await;
        }
    });
}
