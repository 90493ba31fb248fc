//! Scale-out benchmark (not a test): `cargo bench --bench scale`.
//!
//! Does delivery throughput hold as worker processes are added? For each worker count N of
//! BENCH_WORKERS (default "1,2,4"), on a fresh Redis (or, with BENCH_CLUSTER=1, a fresh 3-master
//! Redis Cluster):
//! 1. one `paynotify serve --roles api` process takes BENCH_COUNT (default 50,000)
//!    notifications over HTTP, 64 requests in flight, all with the same `deliver_at`; no worker
//!    runs yet. The due instant is chosen from the enqueue rate of a short calibration batch
//!    (due tomorrow, never delivered) so that enqueueing and worker startup finish before it;
//! 2. N `paynotify serve --roles worker` processes start and answer `/readyz` with 200; the
//!    clock starts at the due instant (or when every worker is ready, if that is later) and
//!    stops at the last first-time delivery to a local sink (in this process) that answers
//!    `success` and counts every body, so duplicates show.
//!
//! One line per run: deliveries (and how many landed before the clock started, which the rate
//! leaves out; 0 unless startup overran the due instant), seconds, rate, duplicates, Redis
//! commands per notification (counting those run inside scripts) and each Redis node's share of
//! them, CPU per process group; then the median rate over BENCH_REPEAT runs.
//! Every process shares the machine's cores: more workers cannot add CPU, so on a small box
//! the point is that the rate does not fall as replicas are added.
//!
//! Steady mode (BENCH_RATE set, e.g. 3000): BENCH_RATE × BENCH_SECONDS (20) notifications fall
//! due one after another at that rate instead of all at once, below saturation; the costs are
//! then what matters: Redis CPU µs, worker CPU µs and script calls per notification over the
//! delivery window, and lateness (sink receipt − due). A `ROW` line per run sums them up.
//!
//! On one Redis it also prints Redis memory per pending notification (after enqueueing, before
//! any is due; BENCH_BODY_BYTES pads the bodies) and partition 0's key sizes after the run.
//!
//! Environment: BENCH_WORKERS, BENCH_COUNT, BENCH_REPEAT (1), BENCH_CLUSTER (0),
//! BENCH_PARTITIONS (12), BENCH_TIMEOUT (seconds, 300), BENCH_VERBOSE (set: calls per Redis
//! command during the drain), BENCH_PER_DESTINATION (each worker's
//! `--per-destination-concurrency`, 512 as in benches/engine.rs), PAYNOTIFY_BIN
//! (target/release/paynotify; build it first with `cargo build --release`).

// A benchmark harness: a failed setup step should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::StreamExt;
use paynotify_testkit::{free_port, RedisCluster, RedisServer};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the sink has seen: distinct bodies, repeats, and when each distinct one came.
#[derive(Default)]
struct Seen {
    bodies: HashSet<Bytes>,
    duplicates: u64,
    /// When each distinct body arrived, in order (and the wall clock then, in ms).
    arrivals: Vec<(Instant, Bytes)>,
    /// Wall-clock arrival (ms) of each distinct body, in the same order as `arrivals`.
    arrived_ms: Vec<i64>,
}

/// The merchant: plain hyper (as in benches/engine.rs), answers `success` to every POST.
async fn start_sink(seen: Arc<Mutex<Seen>>) -> std::net::SocketAddr {
    use http_body_util::BodyExt;
    // A deep accept queue: N workers open up to N x 512 connections at the same instant, and a
    // SYN dropped from a full queue costs 1, 3, 7 s of retransmits (tokio's default is 1024).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(8192).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let mut s = seen.lock().unwrap();
                            let body = body.unwrap_or_default();
                            if s.bodies.insert(body.clone()) {
                                s.arrivals.push((Instant::now(), body));
                                s.arrived_ms.push(paynotify::now_ms());
                            } else {
                                s.duplicates += 1;
                            }
                            drop(s);
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

/// The Redis under test.
enum Backend {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Backend {
    fn start(cluster: bool) -> Self {
        if cluster {
            Backend::Cluster(RedisCluster::start(3).unwrap())
        } else {
            Backend::Single(RedisServer::start().unwrap())
        }
    }

    /// The `--redis-url` value: one URL, or the comma-joined seed list.
    fn url(&self) -> String {
        match self {
            Backend::Single(r) => r.url(),
            Backend::Cluster(c) => c.url_list(),
        }
    }

    fn ports(&self) -> Vec<u16> {
        match self {
            Backend::Single(r) => vec![r.port()],
            Backend::Cluster(c) => c.ports(),
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Backend::Single(r) => r.pid().into_iter().collect(),
            Backend::Cluster(c) => (0..c.ports().len()).filter_map(|i| c.pid(i)).collect(),
        }
    }
}

/// paynotify child processes, killed when dropped (also on a failed run).
#[derive(Default)]
struct Nodes(Vec<(Child, u16)>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Settings {
    bin: String,
    cluster: bool,
    partitions: u64,
    /// `--per-destination-concurrency` of each worker (every delivery goes to the one sink).
    per_destination: u64,
    api_key: String,
    /// Steady mode: notifications falling due per second (0: the drain, all due at once).
    rate: u64,
}

impl Settings {
    /// Starts `serve --roles <roles>` listening on a free port.
    fn spawn(&self, nodes: &mut Nodes, backend: &Backend, roles: &str, node_id: &str) {
        let port = free_port().unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["serve", "--roles", roles, "--redis-url", &backend.url()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--partitions", &self.partitions.to_string()])
            .args(["--allow-private-targets", "--api-key", &self.api_key])
            .args([
                "--per-destination-concurrency",
                &self.per_destination.to_string(),
                "--max-in-flight",
                "1024",
            ])
            .args(["--node-id", node_id])
            .env("PAYNOTIFY_LOG", "warn");
        if self.cluster {
            cmd.arg("--redis-cluster");
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (run `cargo build --release` first)", self.bin));
        nodes.0.push((child, port));
    }
}

/// Waits until every node answers `/readyz` with 200.
async fn wait_ready(http: &reqwest::Client, nodes: &mut Nodes) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (child, port) in &mut nodes.0 {
        let url = format!("http://127.0.0.1:{port}/readyz");
        loop {
            if let Ok(r) = http.get(&url).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("node on port {port} exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "node on port {port} not ready in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Calls per command each Redis node has executed so far, counting those run inside scripts.
async fn commands(ports: &[u16]) -> Vec<BTreeMap<String, u64>> {
    let mut out = Vec::new();
    for port in ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        // cmdstat_<name>:calls=<n>,usec=...
        let calls = info.lines().filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let n = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            // And the microseconds Redis spent in it, as `usec:<name>`.
            let usec: u64 = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("usec="))?
                .parse()
                .ok()?;
            Some([(name.to_string(), n), (format!("usec:{name}"), usec)])
        });
        out.push(calls.flatten().collect());
    }
    out
}

/// The machine-wide count of connections dropped from full accept queues (TcpExt
/// ListenOverflows in /proc/net/netstat; other processes count too).
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (Some(names), Some(values)) = (lines.first(), lines.get(1)) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds the whole machine has been busy so far (all cores; /proc/stat, minus idle
/// and iowait), to tell how much of the machine other processes took during a run.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = fields.get(3).unwrap_or(&0.0) + fields.get(4).unwrap_or(&0.0);
    (fields.iter().take(8).sum::<f64>() - idle) / 100.0
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// CPU seconds so far of: Redis, the workers, the api node, this process (sink), the machine.
fn cpu(backend: &Backend, api: &Nodes, workers: &Nodes) -> [f64; 5] {
    let sum = |n: &Nodes| n.0.iter().map(|(c, _)| cpu_seconds(c.id())).sum();
    [
        backend.pids().into_iter().map(cpu_seconds).sum(),
        sum(workers),
        sum(api),
        cpu_seconds(std::process::id()),
        machine_busy_seconds(),
    ]
}

/// The body of notification `<tag><i>`: `<tag><i>:` padded with `x` to BENCH_BODY_BYTES.
fn body_of(tag: &str, i: u64) -> String {
    let mut body = format!("{tag}{i}:");
    let want = env("BENCH_BODY_BYTES", 0) as usize;
    while body.len() < want {
        body.push('x');
    }
    body
}

/// `used_memory` of a standalone Redis (0 on a cluster).
async fn used_memory(backend: &Backend) -> u64 {
    let Backend::Single(r) = backend else {
        return 0;
    };
    let client = redis::Client::open(r.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Bytes and entries of partition 0's keys on a standalone Redis, for the key-size model.
async fn partition_keys(backend: &Backend, partitions: u32) -> Vec<(String, u64, u64)> {
    let Backend::Single(r) = backend else {
        return Vec::new();
    };
    let client = redis::Client::open(r.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pk = paynotify::redis::keys::Keys::new("paynotify", partitions).partition(0);
    let mut out = Vec::new();
    for (name, key, kind) in [
        ("meta", &pk.meta, "HLEN"),
        ("spec", &pk.spec, "HLEN"),
        ("log", &pk.log, "HLEN"),
        ("done", &pk.done, "ZCARD"),
        ("due", &pk.due, "ZCARD"),
    ] {
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap();
        let n: u64 = redis::cmd(kind)
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        out.push((name.to_string(), bytes.unwrap_or(0), n));
    }
    out
}

/// Enqueues `count` notifications `<tag><i>` through the api node, 64 requests in flight,
/// the i-th due at `due_of(i)` (unix ms); returns the enqueue rate per second.
async fn enqueue(
    http: &reqwest::Client,
    api_port: u16,
    key: &str,
    sink: &str,
    (tag, count, due_of): (&str, u64, &dyn Fn(u64) -> i64),
) -> f64 {
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{api_port}/v1/notifications");
    let mut results = futures::stream::iter(0..count)
        .map(|i| {
            let doc = serde_json::json!({
                "id": format!("{tag}{i}"), "url": sink, "body": body_of(tag, i),
                "deliver_at": due_of(i), "schedule": [0, 5, 5], "success": {"body": "success"}
            });
            http.post(&url).bearer_auth(key).json(&doc).send()
        })
        .buffer_unordered(64);
    while let Some(r) = results.next().await {
        let r = r.unwrap();
        if r.status() != 201 {
            panic!(
                "enqueue: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// One measured drain with `n` workers; returns the rate.
async fn run_once(s: &Settings, n: usize, count: u64) -> f64 {
    let backend = Backend::start(s.cluster);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sink = format!("http://{}/notify", start_sink(seen.clone()).await);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let mut api = Nodes::default();
    s.spawn(&mut api, &backend, "api", "scale-api");
    wait_ready(&http, &mut api).await;
    let api_port = api.0[0].1;
    let memory_empty = used_memory(&backend).await;
    // Calibration: the enqueue rate, on notifications due tomorrow (never delivered here).
    let warmup = (count / 10).clamp(100, 2000);
    let day = paynotify::now_ms() + 86_400_000;
    let enqueue_rate = enqueue(&http, api_port, &s.api_key, &sink, ("w", warmup, &|_| day)).await;
    // Everything falls due at one instant after enqueueing and worker startup, with room.
    let startup_ms = 1500 + 250 * n as i64;
    // Steady runs spread the due times, but all must be enqueued before the first: more room.
    let room = if s.rate > 0 { 2000.0 } else { 1250.0 };
    let due = paynotify::now_ms() + (count as f64 / enqueue_rate * room) as i64 + startup_ms;
    // Drain: all due at once. Steady: the i-th due i / BENCH_RATE seconds after the first.
    let rate = s.rate;
    let due_of = move |i: u64| due + (i * 1000).checked_div(rate).unwrap_or(0) as i64;
    let rate_in = enqueue(&http, api_port, &s.api_key, &sink, ("s", count, &due_of)).await;
    eprintln!(
        "  enqueued {count} over HTTP at {rate_in:.0}/s, due in {} ms",
        due - paynotify::now_ms()
    );
    let pending_bytes =
        used_memory(&backend).await.saturating_sub(memory_empty) as f64 / (warmup + count) as f64;

    let mut workers = Nodes::default();
    for i in 0..n {
        s.spawn(
            &mut workers,
            &backend,
            "worker",
            &format!("scale-worker-{i}"),
        );
    }
    wait_ready(&http, &mut workers).await;
    let to_due = due - paynotify::now_ms();
    if to_due < 0 {
        println!("  (workers became ready {} ms after the due time)", -to_due);
    }
    // The clock starts at the due instant, or when every worker is ready if that is later.
    let ready = Instant::now() + Duration::from_millis(to_due.max(0) as u64);
    let mut cmds_before = commands(&backend.ports()).await;
    let mut cpu_before = cpu(&backend, &api, &workers);
    let overflows_before = listen_overflows();
    tokio::time::sleep_until(ready.into()).await;
    if s.rate > 0 {
        // Steady: the costs are of the delivery window only, not of the idle wait before it.
        cmds_before = commands(&backend.ports()).await;
        cpu_before = cpu(&backend, &api, &workers);
    }
    let before_ready = seen.lock().unwrap().bodies.len() as u64;
    let timeout = Duration::from_secs(env("BENCH_TIMEOUT", 300));
    let mut last_report = Instant::now();
    loop {
        let got = seen.lock().unwrap().bodies.len() as u64;
        if got >= count {
            break;
        }
        if ready.elapsed() > timeout {
            println!("  gave up after {timeout:?} with {got} of {count}");
            break;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("  ... {got} delivered");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let cpu_after = cpu(&backend, &api, &workers);
    let overflows = listen_overflows() - overflows_before;
    let cmds_after = commands(&backend.ports()).await;
    // Late repeats would show within a moment (none are expected at all).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (delivered, duplicates, arrivals, arrived_ms) = {
        let s = seen.lock().unwrap();
        (
            s.bodies.len() as u64,
            s.duplicates,
            s.arrivals.clone(),
            s.arrived_ms.clone(),
        )
    };
    // Seconds from the clock start until the given fraction of deliveries had arrived.
    let at = |q: f64| {
        let i = ((arrivals.len() as f64 * q).ceil() as usize).clamp(1, arrivals.len().max(1)) - 1;
        arrivals
            .get(i)
            .map(|(t, _)| t.saturating_duration_since(ready).as_secs_f64())
            .unwrap_or(0.0)
    };
    let secs = at(1.0).max(1e-3);
    let rate = (delivered - before_ready) as f64 / secs;
    // Per node: calls of each command during the drain.
    let cmds: Vec<BTreeMap<String, u64>> = cmds_after
        .iter()
        .zip(&cmds_before)
        .map(|(after, before)| {
            let mut d = after.clone();
            for (name, n) in d.iter_mut() {
                *n -= before.get(name).copied().unwrap_or(0);
            }
            d
        })
        .collect();
    let per_node: Vec<u64> = cmds
        .iter()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.starts_with("usec:"))
                .map(|(_, v)| v)
                .sum()
        })
        .collect();
    let total: u64 = per_node.iter().sum();
    let scripts: u64 = cmds
        .iter()
        .flat_map(|m| ["evalsha", "eval", "fcall"].map(|c| m.get(c).copied().unwrap_or(0)))
        .sum();
    let script_usec: u64 = cmds
        .iter()
        .flat_map(|m| {
            ["usec:evalsha", "usec:eval", "usec:fcall"].map(|c| m.get(c).copied().unwrap_or(0))
        })
        .sum();
    let shares = backend
        .ports()
        .iter()
        .zip(&per_node)
        .map(|(port, c)| format!(":{port} {:.1}%", *c as f64 * 100.0 / total.max(1) as f64))
        .collect::<Vec<_>>()
        .join(" ");
    let busy = |i: usize| (cpu_after[i] - cpu_before[i]) / secs;
    println!(
        "  workers={n} delivered={delivered} ({before_ready} before the clock started) seconds={secs:.3} rate={rate:.0}/s duplicates={duplicates} per notification: {:.3} script calls, {:.2} redis commands; share of commands: {shares}",
        scripts as f64 / delivered.max(1) as f64,
        total as f64 / delivered.max(1) as f64
    );
    if std::env::var("BENCH_VERBOSE").is_ok() {
        let mut all: BTreeMap<&str, u64> = BTreeMap::new();
        for (name, n) in cmds.iter().flatten() {
            *all.entry(name).or_default() += n;
        }
        let all: Vec<String> = all.iter().map(|(c, n)| format!("{c}={n}")).collect();
        println!("    commands during the drain: {}", all.join(" "));
        // Why the last ones came last: their attempt records.
        for (_, id) in arrivals.iter().rev().take(3) {
            let id = String::from_utf8_lossy(id);
            let url = format!("http://127.0.0.1:{}/v1/notifications/{id}", api.0[0].1);
            let r = http.get(&url).bearer_auth(&s.api_key).send().await.unwrap();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            println!("    last delivered {id}: attempts {}", v["attempts"]);
        }
    }
    println!(
        "    timeline: 50% at {:.3} s, 90% at {:.3} s, 99% at {:.3} s, all at {secs:.3} s",
        at(0.5),
        at(0.9),
        at(0.99)
    );
    println!(
        "    CPU cores busy: redis {:.2}, workers {:.2}, api {:.2}, sink+harness {:.2}, other processes {:.2}; accept-queue overflows (machine-wide): {overflows}",
        busy(0),
        busy(1),
        busy(2),
        busy(3),
        busy(4) - (0..4).map(busy).sum::<f64>()
    );
    let per = |i: usize| (cpu_after[i] - cpu_before[i]) * 1e6 / delivered.max(1) as f64;
    let mut late: Vec<i64> = arrivals
        .iter()
        .zip(&arrived_ms)
        .filter_map(|((_, body), at)| {
            let i: u64 = std::str::from_utf8(body)
                .ok()?
                .strip_prefix('s')?
                .parse()
                .ok()?;
            Some(at - due_of(i))
        })
        .collect();
    late.sort_unstable();
    let q = |f: f64| {
        late.get(((late.len() as f64 * f).ceil() as usize).clamp(1, late.len().max(1)) - 1)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "    per notification: redis {:.1} us, workers {:.1} us, {:.4} script calls; lateness (sink receipt - due) p50 {} ms, p99 {} ms, max {} ms",
        per(0),
        per(1),
        scripts as f64 / delivered.max(1) as f64,
        q(0.5),
        q(0.99),
        q(1.0)
    );
    println!(
        "ROW workers={n} rate={rate:.0} before_clock={before_ready} redis_us={:.1} worker_us={:.1} scripts={:.4} commands={:.3} p50_ms={} p99_ms={} max_ms={} redis_cores={:.3} worker_cores={:.3} script_us_per_call={:.1} script_us={:.1}",
        per(0),
        per(1),
        scripts as f64 / delivered.max(1) as f64,
        total as f64 / delivered.max(1) as f64,
        q(0.5),
        q(0.99),
        q(1.0),
        busy(0),
        busy(1),
        script_usec as f64 / scripts.max(1) as f64,
        script_usec as f64 / delivered.max(1) as f64
    );
    if memory_empty > 0 {
        let keys = partition_keys(&backend, s.partitions as u32).await;
        let keys: Vec<String> = keys
            .iter()
            .map(|(name, bytes, n)| {
                format!(
                    "{name} {bytes} B / {n} = {:.0} B",
                    *bytes as f64 / (*n).max(1) as f64
                )
            })
            .collect();
        println!(
            "    memory: {pending_bytes:.0} bytes per pending notification (used_memory after enqueueing, {} B bodies); partition 0's keys after the run: {}",
            body_of("s", 0).len(),
            keys.join(", ")
        );
    }
    drop(workers);
    drop(api);
    rate
}

fn main() {
    let bin = std::env::var("PAYNOTIFY_BIN").unwrap_or_else(|_| "target/release/paynotify".into());
    let cluster = env("BENCH_CLUSTER", 0) == 1;
    if cluster {
        let help = Command::new(&bin)
            .args(["serve", "--help"])
            .output()
            .unwrap_or_else(|e| panic!("{bin}: {e} (run `cargo build --release` first)"));
        if !String::from_utf8_lossy(&help.stdout).contains("--redis-cluster") {
            println!("scale: BENCH_CLUSTER=1 skipped: `{bin} serve --help` has no --redis-cluster flag (this binary cannot talk to a Redis Cluster yet)");
            return;
        }
    }
    let s = Settings {
        bin,
        cluster,
        partitions: env("BENCH_PARTITIONS", 12),
        per_destination: env("BENCH_PER_DESTINATION", 512),
        api_key: format!("bench_{}", uuid::Uuid::new_v4().simple()),
        rate: env("BENCH_RATE", 0),
    };
    let count = if s.rate > 0 {
        s.rate * env("BENCH_SECONDS", 20)
    } else {
        env("BENCH_COUNT", 50_000)
    };
    let repeat = env("BENCH_REPEAT", 1).max(1);
    let counts: Vec<usize> = std::env::var("BENCH_WORKERS")
        .unwrap_or_else(|_| "1,2,4".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("BENCH_WORKERS: comma-separated numbers")
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let shape = if s.rate > 0 {
        format!("{}/s falling due", s.rate)
    } else {
        "due at once".to_string()
    };
    println!(
        "scale: {count} notifications {shape}, {} partitions, {}; workers {counts:?}, {repeat} run(s) each",
        s.partitions,
        if cluster { "Redis Cluster of 3 masters" } else { "one Redis" }
    );
    let mut medians = Vec::new();
    for &n in &counts {
        let mut rates = Vec::new();
        for _ in 0..repeat {
            rates.push(rt.block_on(run_once(&s, n, count)));
        }
        rates.sort_by(f64::total_cmp);
        medians.push((n, rates[rates.len() / 2]));
    }
    for (n, rate) in medians {
        println!("median workers={n}: {rate:.0}/s over {repeat} run(s)");
    }
}
