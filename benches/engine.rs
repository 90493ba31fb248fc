//! Delivery engine benchmark (not a test): `cargo bench --bench engine -- [drain|steady|soak|all]`.
//!
//! Starts a private redis-server, a local HTTP sink in this process and `paynotify serve`
//! worker processes (the release binary), then measures:
//! - drain: N notifications (default 50,000) fall due at the same instant; time until the sink
//!   has every one (rate = N / time);
//! - steady: notifications fall due at a steady R/s (default 5,000) for S seconds; lateness
//!   = attempt start minus due time, from paynotify's own attempt records, and sink receipt
//!   minus due time as seen by the merchant;
//! - soak (not in `all`): R/s (default 5,000) through the intake stream for S seconds (default
//!   600) with `--retention` BENCH_RETENTION (default 1m); Redis memory every 10 s, which must
//!   stay flat once retention has begun to forget.
//! - intake (not in `all`): intake throughput. N notifications (default 100,000; 250-byte
//!   bodies, due in an hour so nothing is delivered) are XADDed to the intake stream in bulk
//!   (pipelines of 1,000) while BENCH_WORKERS `--roles api,worker` nodes consume it; entries/s
//!   from the first XADD until all are enqueued, with node and Redis CPU µs per entry (from
//!   `/proc/<pid>/stat`). In the same run, as the peer, the direct path: N more notifications
//!   by `POST /v1/notifications` (512 in flight, keep-alive) to the same nodes.
//!
//!   With BENCH_BULLMQ=1 the same schedule then runs as BullMQ delayed jobs on the same sink
//!   (`benches/peers/bullmq`, installed with `npm ci` when missing), and its lateness is
//!   printed beside.
//!
//! Environment: BENCH_N, BENCH_RATE, BENCH_SECONDS, BENCH_WORKERS, BENCH_PARTITIONS,
//! BENCH_RETENTION, BENCH_SIGN (hmac, ed25519 or both: the workers sign every attempt;
//! merchant: every notification names a registered merchant and is signed with its secret).

// A benchmark harness: a failed setup step should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use paynotify::delivery::store::Store;
use paynotify::redis::keys::Keys;
use paynotify_testkit::{cpu_seconds, RedisServer};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct SinkStats {
    received: AtomicU64,
    lateness: Mutex<Vec<i64>>,
}

async fn start_sink(stats: Arc<SinkStats>) -> std::net::SocketAddr {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let stats = stats.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let stats = stats.clone();
                        async move {
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
                            {
                                stats.lateness.lock().unwrap().push(now - due);
                            }
                            stats.received.fetch_add(1, Ordering::Relaxed);
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

fn workers(redis: &RedisServer, count: u64, partitions: u64) -> Vec<std::process::Child> {
    // BENCH_SIGN=hmac|ed25519|both: what the attempts carry (the cost of signing).
    let (secret, (key, _)) = (
        paynotify::delivery::signing::generate_secret(),
        paynotify::delivery::signing::generate_key_pair(),
    );
    let mode = std::env::var("BENCH_SIGN").unwrap_or_default();
    let mut extra: Vec<&str> = Vec::new();
    if mode == "hmac" || mode == "both" {
        extra.extend(["--signing-secret", secret.as_str()]);
    }
    if mode == "ed25519" || mode == "both" {
        extra.extend(["--signing-key", key.as_str()]);
    }
    if mode == "merchant" {
        extra.extend(["--secret-encryption-key", MERCHANT_KEK]);
    }
    workers_with(redis, count, partitions, &extra)
}

fn workers_with(
    redis: &RedisServer,
    count: u64,
    partitions: u64,
    extra: &[&str],
) -> Vec<std::process::Child> {
    let bin = std::env::var("PAYNOTIFY_BIN").unwrap_or_else(|_| "target/release/paynotify".into());
    (0..count)
        .map(|i| {
            std::process::Command::new(&bin)
                .args(["serve", "--roles", "worker", "--redis-url", &redis.url()])
                .args(["--listen", "127.0.0.1:0", "--allow-private-targets"])
                .args(["--partitions", &partitions.to_string()])
                .args([
                    "--per-destination-concurrency",
                    "512",
                    "--max-in-flight",
                    "1024",
                ])
                .args(["--node-id", &format!("bench-{i}")])
                .args(extra)
                .env("PAYNOTIFY_LOG", "warn")
                .spawn()
                .expect("build the release binary first: cargo build --release")
        })
        .collect()
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

/// The key-encryption key of BENCH_SIGN=merchant (base64 of 32 bytes).
const MERCHANT_KEK: &str = "YmVuY2gta2V5LWVuY3J5cHRpb24tMzItYnl0ZXMtISE=";

/// BENCH_SIGN=merchant: registers merchant `bench` for `url`'s origin; its notifications are
/// then read through the registry (the lookup every enqueue path makes) and signed with its
/// own secret.
async fn merchant_registry(
    store: &Store,
    url: &str,
) -> Option<paynotify::delivery::merchants::Registry> {
    use paynotify::delivery::merchants::{model, secrets::Keyring, Registry};
    if std::env::var("BENCH_SIGN").as_deref() != Ok("merchant") {
        return None;
    }
    let keyring = Keyring::new(&[MERCHANT_KEK.to_string()]).unwrap();
    let registry = Registry::new(store.redis().clone(), keyring);
    let origin = url::Url::parse(url).unwrap().join("/").unwrap().to_string();
    let doc = serde_json::json!({"id": "bench", "allowed_urls": [origin]}).to_string();
    let merchant = model::parse_new(doc.as_bytes(), paynotify::now_ms()).unwrap();
    let _ = registry.create(merchant).await;
    Some(registry)
}

async fn enqueue_all(store: &Store, url: &str, dues: &[i64]) {
    let now = paynotify::now_ms();
    let started = Instant::now();
    let registry = merchant_registry(store, url).await;
    let registry = registry.as_ref();
    let mut done = 0;
    for chunk in dues.chunks(2000) {
        let base = done;
        let futs = chunk.iter().enumerate().map(|(j, due)| {
            let id = format!("b{}", base + j);
            let mut doc = serde_json::json!({
                "id": id, "url": url, "body": format!("{due}:{id}"), "deliver_at": due,
                "schedule": [0, 5, 5], "success": {"body": "success"}
            });
            if registry.is_some() {
                doc["merchant"] = "bench".into();
            }
            let doc = doc.to_string();
            async move {
                let parsed = paynotify::delivery::schema::Document::parse(doc.as_bytes()).unwrap();
                let n = match registry {
                    Some(r) => paynotify::delivery::merchants::parse_notification(
                        r,
                        parsed,
                        now,
                        || unreachable!(),
                    )
                    .await
                    .unwrap(),
                    None => parsed
                        .into_notification(now, || unreachable!(), None)
                        .unwrap(),
                };
                store.enqueue(&n, now).await.unwrap()
            }
        });
        futures::future::join_all(futs).await;
        done += chunk.len();
    }
    eprintln!("  enqueued {} in {:.2?}", dues.len(), started.elapsed());
}

/// Commands Redis executed, counting calls made inside scripts, and script calls alone.
async fn redis_commands(url: &str) -> (u64, u64) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut total = 0;
    let mut scripts = 0;
    for line in info.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let calls: u64 = rest
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        total += calls;
        if name == "evalsha" || name == "eval" {
            scripts += calls;
        }
    }
    (total, scripts)
}

/// Attempt start − due of each (id, due): a delivered notification keeps only its delivering
/// attempt's summary (no `due_at`), so the due time is the one the benchmark enqueued.
async fn attempt_lateness(store: &Store, ids: impl Iterator<Item = (String, i64)>) -> Vec<i64> {
    let mut out = Vec::new();
    for (id, due) in ids {
        if let Ok(Some(v)) = store.show(&id).await {
            if let Some(a) = v["attempts"].get(0) {
                let due = a["due_at"].as_i64().unwrap_or(due);
                out.push(a["started_at"].as_i64().unwrap_or(0) - due);
            }
        }
    }
    out
}

/// A private Redis, the sink and a store on them.
async fn setup(partitions: u64) -> (RedisServer, Arc<SinkStats>, std::net::SocketAddr, Store) {
    let redis = RedisServer::start().unwrap();
    let stats = Arc::new(SinkStats {
        received: AtomicU64::new(0),
        lateness: Mutex::new(Vec::new()),
    });
    let sink = start_sink(stats.clone()).await;
    let store = Store::connect(&redis.url(), Keys::new("paynotify", partitions as u32)).unwrap();
    store.load_scripts().await.unwrap();
    (redis, stats, sink, store)
}

async fn drain(n: u64, worker_count: u64, partitions: u64) {
    println!("drain: {n} notifications due at one instant, {worker_count} worker process(es), {partitions} partition(s)");
    let (redis, stats, sink, store) = setup(partitions).await;
    let due = paynotify::now_ms() + 60_000;
    let dues = vec![due; n as usize];
    enqueue_all(&store, &format!("http://{sink}/notify"), &dues).await;
    // Workers start after enqueue; the batch is due 2 s after they are ready.
    let mut procs = workers(&redis, worker_count, partitions);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let due = paynotify::now_ms() + 1000;
    // Move every entry to the same due instant (setup only, outside the measured path).
    let key = Keys::new("paynotify", partitions as u32);
    for p in 0..partitions as u32 {
        let k = key.partition(p).due;
        let _: () = redis::cmd("EVAL")
            .arg("local m = redis.call('ZRANGE', KEYS[1], 0, -1) for _, x in ipairs(m) do redis.call('ZADD', KEYS[1], ARGV[1], x) end")
            .arg(1).arg(&k).arg(due)
            .query_async(&mut conn).await.unwrap();
    }
    for channel in key.wake_channels() {
        let _: i64 = redis::cmd("SPUBLISH")
            .arg(channel)
            .arg(due)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let cpu_before = cpu_times(&redis, &procs);
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let cmds_before: (u64, u64) = redis_commands(&redis.url()).await;
    let wait = Duration::from_millis((due - paynotify::now_ms()).max(0) as u64);
    tokio::time::sleep(wait).await;
    let start = Instant::now();
    let mut last_report = Instant::now();
    while stats.received.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if last_report.elapsed() > Duration::from_secs(1) {
            eprintln!("  ... {} received", stats.received.load(Ordering::Relaxed));
            last_report = Instant::now();
        }
        if start.elapsed() > Duration::from_secs(120) {
            println!("  gave up after 120 s");
            break;
        }
    }
    let elapsed = start.elapsed();
    let cmds_after = redis_commands(&redis.url()).await;
    let (cmds, scripts) = (cmds_after.0 - cmds_before.0, cmds_after.1 - cmds_before.1);
    let got = stats.received.load(Ordering::Relaxed);
    println!(
        "  drained {got} in {:.3} s = {:.0} notifications/s; per notification: {:.2} redis commands incl. those inside scripts, {:.3} script calls",
        elapsed.as_secs_f64(),
        got as f64 / elapsed.as_secs_f64(),
        cmds as f64 / got.max(1) as f64,
        scripts as f64 / got.max(1) as f64
    );
    report_cpu(cpu_before, cpu_times(&redis, &procs), elapsed);
    if std::env::var("BENCH_VERBOSE").is_ok() {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
            println!("  {line}");
        }
    }
    for p in &mut procs {
        let _ = p.kill();
        let _ = p.wait();
    }
}

/// CPU seconds used so far by: redis-server, the worker processes, this process (sink + harness).
fn cpu_times(redis: &RedisServer, procs: &[std::process::Child]) -> [f64; 3] {
    [
        redis.pid().map(cpu_seconds).unwrap_or(0.0),
        procs.iter().map(|p| cpu_seconds(p.id())).sum(),
        cpu_seconds(std::process::id()),
    ]
}

fn report_cpu(before: [f64; 3], after: [f64; 3], elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "  CPU during the run (cores busy): redis-server {:.2}, paynotify workers {:.2}, sink+harness {:.2}",
        (after[0] - before[0]) / secs,
        (after[1] - before[1]) / secs,
        (after[2] - before[2]) / secs
    );
}

async fn steady(rate: u64, seconds: u64, worker_count: u64, partitions: u64) {
    println!("steady: {rate}/s falling due for {seconds} s, {worker_count} worker process(es), {partitions} partition(s)");
    let (redis, stats, sink, store) = setup(partitions).await;
    let total = rate * seconds;
    let mut procs = workers(&redis, worker_count, partitions);
    let t0 = paynotify::now_ms() + 5000 + total as i64 / 20; // room to enqueue first
    let dues: Vec<i64> = (0..total).map(|i| t0 + (i * 1000 / rate) as i64).collect();
    enqueue_all(&store, &format!("http://{sink}/notify"), &dues).await;
    let lead = t0 - paynotify::now_ms();
    assert!(
        lead > 500,
        "enqueue took too long; lower BENCH_RATE or BENCH_SECONDS"
    );
    tokio::time::sleep(Duration::from_millis(lead as u64)).await;
    while stats.received.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if paynotify::now_ms() > dues[dues.len() - 1] + 30_000 {
            println!("  gave up");
            break;
        }
    }
    println!("  received {}", stats.received.load(Ordering::Relaxed));
    let sink_late = stats.lateness.lock().unwrap().clone();
    summary("sink receipt - due", sink_late);
    let sample = (0..total)
        .step_by((total / 20_000).max(1) as usize)
        .map(|i| (format!("b{i}"), dues[i as usize]));
    summary(
        "attempt start - due (paynotify records)",
        attempt_lateness(&store, sample).await,
    );
    for p in &mut procs {
        let _ = p.kill();
        let _ = p.wait();
    }
    if std::env::var("BENCH_BULLMQ").as_deref() == Ok("1") {
        bullmq_steady(&redis, &stats, sink, rate, total).await;
    }
}

/// The peer of `steady`, in the same run on the same sink: BullMQ delayed jobs falling due at
/// the same `rate` (`benches/peers/bullmq/drain.js --rate`, a Worker at concurrency 64 on
/// Redis db 1, `npm ci` run when missing). Prints its sink receipt - due.
async fn bullmq_steady(
    redis: &RedisServer,
    stats: &SinkStats,
    sink: std::net::SocketAddr,
    rate: u64,
    total: u64,
) {
    use tokio::io::AsyncBufReadExt;
    stats.received.store(0, Ordering::Relaxed);
    stats.lateness.lock().unwrap().clear();
    let t0 = paynotify::now_ms() + 5000 + total as i64 / 10; // BullMQ adds about 25,000/s here
    let peer = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/bullmq");
    paynotify_testkit::ensure_npm_peer(&peer, "bullmq");
    let script = peer.join("drain.js");
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .args(["--redis", &format!("{}/1", redis.url())])
        .args(["--sink", &format!("http://{sink}/notify")])
        .args(["--n", &total.to_string(), "--concurrency", "64"])
        .args(["--rate", &rate.to_string(), "--start", &t0.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (Node.js) is needed for BENCH_BULLMQ=1");
    let stdin = child.stdin.take();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let enqueued = lines.next_line().await.unwrap().unwrap_or_default();
    let lead = t0 - paynotify::now_ms();
    println!("  bullmq: {enqueued}; first job due in {lead} ms");
    assert!(
        lead > 500,
        "BullMQ's enqueue took too long; lower BENCH_RATE or BENCH_SECONDS"
    );
    let last_due = t0 + (total.saturating_sub(1) * 1000 / rate) as i64;
    while stats.received.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if paynotify::now_ms() > last_due + 30_000 {
            println!("  bullmq: gave up");
            break;
        }
    }
    println!(
        "  bullmq: received {}",
        stats.received.load(Ordering::Relaxed)
    );
    let late = stats.lateness.lock().unwrap().clone();
    summary("BullMQ sink receipt - due", late);
    drop(stdin);
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Retention soak: notifications enqueued through the intake stream (`XADD`, the documented
/// path) at `rate`/s for `seconds`, delivered at once, forgotten `retention` after delivery.
/// Every 10 s: Redis `used_memory`, the done set, the spec hash, the intake stream and what the
/// sink received. Memory must level off once the first deliveries pass their retention.
async fn soak(rate: u64, seconds: u64, retention: &str, worker_count: u64, partitions: u64) {
    println!("soak: {rate}/s through the intake for {seconds} s, --retention {retention}, {worker_count} worker process(es), {partitions} partition(s), 250-byte bodies");
    let (redis, stats, sink, _store) = setup(partitions).await;
    let mut procs = workers_with(
        &redis,
        worker_count,
        partitions,
        &["--retention", retention],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let url = format!("http://{sink}/notify");
    let keys = Keys::new("paynotify", partitions as u32);
    let padding = "x".repeat(250 - 20);
    let total = rate * seconds;
    let started = Instant::now();
    let mut next_sample = Duration::ZERO;
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let batch = (rate / 100).max(1);
    let mut sent = 0u64;
    let mut behind_max = Duration::ZERO;
    println!(
        "  {:>5} {:>10} {:>12} {:>10} {:>10} {:>8} {:>10}",
        "t (s)", "sent", "used_memory", "done", "spec", "intake", "received"
    );
    while sent < total || started.elapsed() < Duration::from_secs(seconds) {
        if sent < total {
            let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            } else {
                behind_max = behind_max.max(now - due);
            }
            let mut pipe = redis::pipe();
            let now_ms = paynotify::now_ms();
            for i in sent..(sent + batch).min(total) {
                let id = format!("s{i}");
                let doc = serde_json::json!({"id": id, "url": url, "body": format!("{now_ms}:{id}:{padding}")});
                pipe.cmd("XADD")
                    .arg("paynotify:intake")
                    .arg("*")
                    .arg("notification")
                    .arg(doc.to_string())
                    .ignore();
            }
            let () = pipe.query_async(&mut conn).await.unwrap();
            sent = (sent + batch).min(total);
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if started.elapsed() >= next_sample {
            next_sample += Duration::from_secs(10);
            let info: String = redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut conn)
                .await
                .unwrap();
            let used: u64 = info
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let (mut done, mut spec) = (0u64, 0u64);
            for p in 0..partitions as u32 {
                let pk = keys.partition(p);
                let (d, s): (u64, u64) = redis::pipe()
                    .cmd("ZCARD")
                    .arg(&pk.done)
                    .cmd("HLEN")
                    .arg(&pk.spec)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                done += d;
                spec += s;
            }
            let intake: u64 = redis::cmd("XLEN")
                .arg("paynotify:intake")
                .query_async(&mut conn)
                .await
                .unwrap();
            let t = started.elapsed().as_secs();
            println!(
                "  {t:>5} {sent:>10} {used:>12} {done:>10} {spec:>10} {intake:>8} {:>10}",
                stats.received.load(Ordering::Relaxed)
            );
            samples.push((t, used));
        }
    }
    let retention_s = humantime_secs(retention);
    let steady: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= retention_s + 30)
        .map(|(_, m)| *m)
        .collect();
    if let (Some(lo), Some(hi)) = (steady.iter().min(), steady.iter().max()) {
        println!(
            "  used_memory from {} s on (retention + 30 s): min {:.1} MB, max {:.1} MB, max/min {:.2}; producer at most {:.0} ms behind schedule",
            retention_s + 30,
            *lo as f64 / 1e6,
            *hi as f64 / 1e6,
            *hi as f64 / (*lo).max(1) as f64,
            behind_max.as_secs_f64() * 1000.0
        );
    }
    for p in &mut procs {
        let _ = p.kill();
        let _ = p.wait();
    }
}

/// Seconds in a duration like `1m` or `90s` (the bench's own inputs only).
fn humantime_secs(text: &str) -> u64 {
    let (n, unit) = text.split_at(text.trim_end_matches(char::is_alphabetic).len());
    let n: u64 = n.parse().unwrap();
    match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        other => panic!("unsupported unit {other:?}"),
    }
}

/// The HTTP ceiling: reqwest alone (1024 in flight) posting from a separate process to the same
/// sink, no Redis. Shows how much of the drain rate the HTTP hop itself allows on this machine.
async fn http_ceiling(n: u64) {
    println!(
        "http-ceiling: {n} POSTs from a separate process with reqwest (1024 in flight) to the sink"
    );
    let stats = Arc::new(SinkStats {
        received: AtomicU64::new(0),
        lateness: Mutex::new(Vec::new()),
    });
    let sink = start_sink(stats.clone()).await;
    let exe = std::env::current_exe().unwrap();
    let start = Instant::now();
    let self_before = cpu_seconds(std::process::id());
    let mut child = std::process::Command::new(exe)
        .args([
            "http-client",
            &format!("http://{sink}/notify"),
            &n.to_string(),
        ])
        .spawn()
        .unwrap();
    // Sample the client's CPU until it exits (a reaped process has no /proc entry).
    let mut client_cpu = 0.0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        client_cpu = cpu_seconds(child.id());
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let elapsed = start.elapsed();
    let sink_cpu = cpu_seconds(std::process::id()) - self_before;
    assert!(status.success());
    println!(
        "  CPU per request: reqwest client >= {:.0} us, sink {:.0} us",
        client_cpu * 1e6 / n as f64,
        sink_cpu * 1e6 / n as f64
    );
    println!(
        "  {} requests in {:.3} s = {:.0}/s",
        stats.received.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
}

async fn http_client(url: String, n: u64) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let sem = Arc::new(tokio::sync::Semaphore::new(1024));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        let url = url.clone();
        set.spawn(async move {
            let r = client
                .post(&url)
                .timeout(Duration::from_secs(10))
                .body(format!("0:{i}"))
                .send()
                .await
                .unwrap();
            let _ = r.bytes().await;
            drop(permit);
        });
        while set.try_join_next().is_some() {}
    }
    while set.join_next().await.is_some() {}
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("http-client") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(http_client(args[2].clone(), args[3].parse().unwrap()));
        return;
    }
    let mode = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "all".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let workers = env("BENCH_WORKERS", 1);
    let partitions = env("BENCH_PARTITIONS", 1);
    rt.block_on(async {
        if mode == "drain" || mode == "all" {
            drain(env("BENCH_N", 50_000), workers, partitions).await;
        }
        if mode == "soak" {
            soak(
                env("BENCH_RATE", 5_000),
                env("BENCH_SECONDS", 600),
                &std::env::var("BENCH_RETENTION").unwrap_or_else(|_| "1m".into()),
                workers,
                partitions,
            )
            .await;
        }
        if mode == "intake" {
            intake(env("BENCH_N", 100_000), workers, partitions).await;
        }
        if mode == "http-ceiling" {
            http_ceiling(env("BENCH_N", 50_000)).await;
        }
        if mode == "steady" || mode == "all" {
            steady(
                env("BENCH_RATE", 5_000),
                env("BENCH_SECONDS", 30),
                workers,
                partitions,
            )
            .await;
        }
    });
}

const BENCH_API_KEY: &str = "bench-api-key-0123456789";

/// Notifications enqueued so far (the `enqueued` counters of every partition).
async fn enqueued_count(conn: &mut redis::aio::MultiplexedConnection, keys: &Keys) -> u64 {
    let mut total = 0;
    for p in 0..keys.partitions() {
        let n: Option<u64> = redis::cmd("HGET")
            .arg(keys.partition(p).stats)
            .arg("enqueued")
            .query_async(conn)
            .await
            .unwrap();
        total += n.unwrap_or(0);
    }
    total
}

/// A notification document of the intake benchmark: a 250-byte body, due in an hour.
fn intake_doc(url: &str, id: &str, due: i64) -> String {
    let mut body = format!("{id}:");
    while body.len() < 250 {
        body.push('x');
    }
    serde_json::json!({"id": id, "url": url, "body": body, "deliver_at": due}).to_string()
}

/// One measured phase of the intake benchmark: `n` entries, done when `target` are enqueued.
struct Phase {
    label: &'static str,
    target: u64,
    n: u64,
    start: Instant,
    before: [f64; 3],
}

/// Waits until the phase's `target` notifications are enqueued; reports entries/s and CPU µs
/// per entry since its `start` / `before`.
async fn until_enqueued(
    phase: Phase,
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    redis: &RedisServer,
    procs: &[std::process::Child],
) {
    let Phase {
        label,
        target,
        n,
        start,
        before,
    } = phase;
    let deadline = Instant::now() + Duration::from_secs(300);
    while enqueued_count(conn, keys).await < target {
        assert!(Instant::now() < deadline, "{label}: not all enqueued");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let after = cpu_times(redis, procs);
    let per = |i: usize| (after[i] - before[i]) * 1e6 / n as f64;
    println!(
        "  {label}: {n} enqueued in {secs:.3} s = {:.0}/s ({:.0}/s per node); CPU per entry: nodes {:.1} us, redis-server {:.1} us, harness {:.1} us",
        n as f64 / secs,
        n as f64 / secs / procs.len() as f64,
        per(1),
        per(0),
        per(2)
    );
    // Where Redis's time went: its own µs per entry by command (scripts include the commands
    // they call, which are also listed on their own).
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let mut rows: Vec<(String, u64, f64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            Some((name.to_string(), field("calls")? as u64, field("usec")?))
        })
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    let shown: Vec<String> = rows
        .iter()
        .take(8)
        .map(|(name, calls, usec)| {
            format!(
                "{name} {:.2} us/entry ({:.3} calls/entry)",
                usec / n as f64,
                *calls as f64 / n as f64
            )
        })
        .collect();
    println!("  {label}: redis by command: {}", shown.join(", "));
}

/// Zeroes Redis's command statistics (the start of a measured phase).
async fn reset_stats(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .unwrap();
}

// long: two measured phases sharing one setup read best in order.
async fn intake(n: u64, worker_count: u64, partitions: u64) {
    println!("intake: {n} notifications (250-byte bodies) through the intake stream, then {n} by POST /v1/notifications, {worker_count} node(s), {partitions} partition(s)");
    let (redis, _stats, sink, _store) = setup(partitions).await;
    let url = format!("http://{sink}/notify");
    let keys = Keys::new("paynotify", partitions as u32);
    let bin = std::env::var("PAYNOTIFY_BIN").unwrap_or_else(|_| "target/release/paynotify".into());
    let ports: Vec<u16> = (0..worker_count)
        .map(|_| paynotify_testkit::free_port().unwrap())
        .collect();
    let procs: Vec<std::process::Child> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            std::process::Command::new(&bin)
                .args([
                    "serve",
                    "--roles",
                    "api,worker",
                    "--redis-url",
                    &redis.url(),
                ])
                .args([
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--allow-private-targets",
                ])
                .args(["--partitions", &partitions.to_string()])
                .args(["--api-key", BENCH_API_KEY])
                .args(["--node-id", &format!("bench-{i}")])
                .env("PAYNOTIFY_LOG", "warn")
                .spawn()
                .expect("build the release binary first: cargo build --release")
        })
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    for port in &ports {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "node on {port} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let due = paynotify::now_ms() + 3_600_000;

    // Intake: bulk XADDs while the nodes consume.
    let docs: Vec<String> = (0..n)
        .map(|i| intake_doc(&url, &format!("in-{i}"), due))
        .collect();
    reset_stats(&mut conn).await;
    let before = cpu_times(&redis, &procs);
    let start = Instant::now();
    for chunk in docs.chunks(1000) {
        let mut pipe = redis::pipe();
        for doc in chunk {
            pipe.cmd("XADD")
                .arg(keys.intake())
                .arg("*")
                .arg("notification")
                .arg(doc)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
    }
    let added = start.elapsed();
    println!("  intake: {n} XADDed in {:.3} s", added.as_secs_f64());
    let phase = Phase {
        label: "intake",
        target: n,
        n,
        start,
        before,
    };
    until_enqueued(phase, &mut conn, &keys, &redis, &procs).await;
    let pending: u64 = redis::cmd("XLEN")
        .arg(keys.intake())
        .query_async(&mut conn)
        .await
        .unwrap();
    println!("  intake: {pending} entries left in the stream");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The peer: the same documents by POST /v1/notifications.
    let docs: Vec<String> = (0..n)
        .map(|i| intake_doc(&url, &format!("api-{i}"), due))
        .collect();
    let sem = Arc::new(tokio::sync::Semaphore::new(512));
    let mut set = tokio::task::JoinSet::new();
    reset_stats(&mut conn).await;
    let before = cpu_times(&redis, &procs);
    let start = Instant::now();
    for (i, doc) in docs.into_iter().enumerate() {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let http = http.clone();
        let url = format!(
            "http://127.0.0.1:{}/v1/notifications",
            ports[i % ports.len()]
        );
        set.spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(BENCH_API_KEY)
                .header("content-type", "application/json")
                .body(doc)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            let _ = r.bytes().await;
            drop(permit);
        });
        while set.try_join_next().is_some() {}
    }
    while set.join_next().await.is_some() {}
    let phase = Phase {
        label: "http",
        target: 2 * n,
        n,
        start,
        before,
    };
    until_enqueued(phase, &mut conn, &keys, &redis, &procs).await;
    for mut p in procs {
        let _ = p.kill();
        let _ = p.wait();
    }
}
