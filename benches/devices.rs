//! Device call benchmark (not a test): `cargo bench --bench devices`.
//!
//! A private redis-server; node A (`--roles gateway`, device listener) holds BENCH_DEVICES
//! simulated devices (default 10,000, in two `paynotify simulate-devices` processes) plus one
//! black-holed device;
//! node B (`--roles api`) takes BENCH_RATE calls per second (default 5,000) for BENCH_SECONDS
//! (default 10), each to a random healthy device, over HTTP (BENCH_CONNECTIONS keep-alive
//! connections, default 64: `devices/caller.rs`); meanwhile 10 calls per second go to
//! the black-holed device (deadline 1 s). Reports the healthy calls' latency and failures.
//! Then BENCH_BURST_ROUNDS (20) bursts of BENCH_BURST (200; 0 skips it) concurrent calls to one
//! device, with the same bursts of `GET /readyz` as the HTTP floor.
//! BENCH_TLS=1: the device listener speaks TLS (a CA and certificate made for the run) and the
//! simulators connect with `--tls-ca`.
//! BENCH_PEER=mqtt: afterwards, in the same invocation, the same load over MQTT 5
//! request/response with a private mosquitto (`devices/mqtt.rs`), and the ratios of the two.

// A benchmark harness: a failed setup step should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paynotify_testkit::RedisServer;

#[path = "devices/caller.rs"]
mod caller;
#[path = "devices/mqtt.rs"]
mod mqtt;

const SECRET: &str = "bench-token-secret-0123456789";
const KEY: &str = "bench-api-key-0123456789";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if let Ok(spec) = std::env::var(mqtt::CHILD_ENV) {
        return mqtt::child_main(&spec);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

/// A CA and a server certificate for 127.0.0.1, as PEM files in a temp dir.
fn make_pki() -> tempfile::TempDir {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    std::fs::write(
        dir.path().join("ca.pem"),
        ca.self_signed(&ca_key).unwrap().pem(),
    )
    .unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
    dir
}

async fn run() {
    let count = env("BENCH_DEVICES", 10_000);
    let rate = env("BENCH_RATE", 5_000);
    let seconds = env("BENCH_SECONDS", 10);
    // BENCH_BLACK_HOLE=0: no calls to the black-holed device (the baseline for its effect).
    let hole_calls = env("BENCH_BLACK_HOLE", 1) != 0;
    let pki = (env("BENCH_TLS", 0) == 1).then(make_pki);
    let tls_server: Vec<String> = pki.as_ref().map_or(Vec::new(), |dir| {
        let p = |f: &str| dir.path().join(f).display().to_string();
        vec![
            "--device-tls-cert".into(),
            p("server.pem"),
            "--device-tls-key".into(),
            p("server.key"),
        ]
    });
    let tls_client: Vec<String> = pki.as_ref().map_or(Vec::new(), |dir| {
        vec![
            "--tls-ca".into(),
            dir.path().join("ca.pem").display().to_string(),
        ]
    });
    println!("devices: {count} devices on node A, {rate} calls/s through node B for {seconds} s, one black-holed device{}", if env("BENCH_TLS", 0) == 1 { ", device connections over TLS" } else { "" });
    let bin = std::env::var("PAYNOTIFY_BIN").unwrap_or_else(|_| "target/release/paynotify".into());
    let redis = RedisServer::start().unwrap();
    let port = || paynotify_testkit::free_port().unwrap();
    let (a_http, a_dev, b_http) = (port(), port(), port());
    let spawn = |args: Vec<String>| {
        std::process::Command::new(&bin)
            .args(args)
            .env("PAYNOTIFY_LOG", "warn")
            .spawn()
            .expect("build the release binary first: cargo build --release")
    };
    let mut nodes = vec![
        spawn(
            [
                "serve",
                "--roles",
                "gateway",
                "--redis-url",
                &redis.url(),
                "--token-secret",
                SECRET,
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--listen".into(),
                format!("127.0.0.1:{a_http}"),
                "--device-listen".into(),
                format!("127.0.0.1:{a_dev}"),
            ])
            .chain(tls_server.iter().cloned())
            .collect(),
        ),
        spawn(
            [
                "serve",
                "--roles",
                "api",
                "--redis-url",
                &redis.url(),
                "--api-key",
                KEY,
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(["--listen".into(), format!("127.0.0.1:{b_http}")])
            .collect(),
        ),
    ];
    for p in [a_http, b_http] {
        let mut ok = false;
        for _ in 0..200 {
            if reqwest::get(format!("http://127.0.0.1:{p}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok, "node on {p} never became ready");
    }
    // The devices run in two `paynotify simulate-devices` processes (and the black hole in a
    // third), so this process only generates the HTTP load.
    let half = count / 2;
    let started = Instant::now();
    let sim = |prefix: &str, n: u64, hole: bool| {
        let mut args: Vec<String> = ["simulate-devices", "--connect"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(format!("127.0.0.1:{a_dev}"));
        args.extend([
            "--count".into(),
            n.to_string(),
            "--id-prefix".into(),
            prefix.into(),
            "--token-secret".into(),
            SECRET.into(),
        ]);
        if hole {
            args.extend(["--black-hole".into(), "1".into()]);
        }
        args.extend(tls_client.iter().cloned());
        std::process::Command::new(&bin)
            .args(args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("build the release binary first: cargo build --release")
    };
    nodes.push(sim("sim-a", half, false));
    nodes.push(sim("sim-b", count - half, false));
    nodes.push(sim("hole", 1, true));
    let online = |id: String| {
        let url = format!("http://127.0.0.1:{b_http}/v1/devices/{id}");
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(KEY)
                .send()
                .await;
            match r {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|v| v["online"] == true),
                Err(_) => false,
            }
        }
    };
    // Wait until node A holds every device (its `paynotify_devices_online` gauge).
    let metrics_url = format!("http://127.0.0.1:{a_http}/metrics");
    loop {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let n = text
            .lines()
            .find_map(|l| l.strip_prefix("paynotify_devices_online "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if n > count {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {n} of {} devices connected",
            count + 1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(online("hole0".into()).await);
    println!(
        "  {} devices online in {:.1} s",
        count + 1,
        started.elapsed().as_secs_f64()
    );

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let hole_client = reqwest::Client::new();
    let url = |id: &str| format!("http://127.0.0.1:{b_http}/v1/devices/{id}/call");
    let connections = env("BENCH_CONNECTIONS", 64) as usize;
    let caller = caller::Caller::connect(
        b_http,
        connections,
        &format!("Bearer {KEY}"),
        r#"{"method":"amount_due","params":{"lane":1},"timeout_ms":3000}"#,
    )
    .await;
    println!("  healthy calls over {connections} keep-alive HTTP/1.1 connections to node B");
    // CPU time of every process over the load phase: where the cores go, per call.
    let pids: Vec<(&str, u32)> = vec![
        ("node A (gateway)", nodes[0].id()),
        ("node B (api)", nodes[1].id()),
        ("simulators", nodes[2].id()),
        ("simulators", nodes[3].id()),
        ("redis", redis.pid().unwrap_or(0)),
        ("load generator", std::process::id()),
    ];
    let load = Load {
        rate,
        seconds,
        count,
        hole_calls,
    };
    let measured = load
        .drive(
            &pids,
            |id| {
                let caller = caller.clone();
                async move { caller.call(format!("/v1/devices/{id}/call")).await }
            },
            || {
                // Its own client: the black hole's stuck requests must not take connections
                // out of the healthy calls' pool (the load generator would then be what is
                // measured).
                let (client, target) = (hole_client.clone(), url("hole0"));
                async move {
                    let r = client
                        .post(target)
                        .bearer_auth(KEY)
                        .json(&serde_json::json!({"method": "amount_due", "timeout_ms": 1000}))
                        .send()
                        .await;
                    r.map(|r| r.status().as_u16()).unwrap_or(0)
                }
            },
        )
        .await;
    let ours = measured.report(&["node A (gateway)", "node B (api)", "redis"]);
    let burst = env("BENCH_BURST", 200);
    if burst > 0 {
        burst_phase(&client, b_http, burst, env("BENCH_BURST_ROUNDS", 20)).await;
    }
    for n in &mut nodes {
        let _ = n.kill();
        let _ = n.wait();
    }
    drop(redis);
    if std::env::var("BENCH_PEER").is_ok_and(|p| p == "mqtt") {
        let theirs = mqtt_phase(&load).await;
        println!(
            "  paynotify / mosquitto, same invocation: p50 {:.2}×, p99 {:.2}×, p99.9 {:.2}×, server CPU per call {:.2}× ({:.0} µs / {:.0} µs)",
            ours.p50 as f64 / theirs.p50.max(1) as f64,
            ours.p99 as f64 / theirs.p99.max(1) as f64,
            ours.p999 as f64 / theirs.p999.max(1) as f64,
            ours.server_us / theirs.server_us.max(1.0),
            ours.server_us,
            theirs.server_us
        );
    }
}

/// The same load over MQTT 5 request/response with mosquitto (see `mqtt.rs`).
async fn mqtt_phase(load: &Load) -> Summary {
    println!(
        "mqtt: {} devices on mosquitto, {} calls/s from one MQTT caller for {} s, one black-holed device",
        load.count, load.rate, load.seconds
    );
    let broker = mqtt::Broker::start();
    let started = Instant::now();
    let half = load.count / 2;
    let children = vec![
        mqtt::spawn_devices(broker.port, "sim-a", half, false),
        mqtt::spawn_devices(broker.port, "sim-b", load.count - half, false),
        mqtt::spawn_devices(broker.port, "hole", 1, true),
    ];
    println!(
        "  {} devices subscribed in {:.1} s",
        load.count + 1,
        started.elapsed().as_secs_f64()
    );
    let caller = mqtt::Caller::connect(broker.port).await;
    let pids: Vec<(&str, u32)> = vec![
        ("mosquitto", broker.pid()),
        ("simulators", children[0].id()),
        ("simulators", children[1].id()),
        ("load generator", std::process::id()),
    ];
    let measured = load
        .drive(
            &pids,
            |id| {
                let caller = caller.clone();
                async move {
                    let body = serde_json::json!({"method": "amount_due", "params": {"lane": 1}});
                    caller.call(&id, body, Duration::from_millis(3000)).await
                }
            },
            || {
                let caller = caller.clone();
                async move {
                    let body = serde_json::json!({"method": "amount_due"});
                    caller
                        .call("hole0", body, Duration::from_millis(1000))
                        .await
                }
            },
        )
        .await;
    let summary = measured.report(&["mosquitto"]);
    drop(children);
    summary
}

/// The offered load: `rate` calls a second for `seconds` to random devices of `count`
/// (`sim-a<n>`, `sim-b<n>`), and, with `hole_calls`, 10 a second to `hole0`.
struct Load {
    rate: u64,
    seconds: u64,
    count: u64,
    hole_calls: bool,
}

/// What one load phase measured.
struct Measured {
    total: u64,
    lat: Vec<u64>,
    failures: Vec<u16>,
    holes: Vec<(u16, u64)>,
    secs: f64,
    wall: f64,
    cpu: Vec<(&'static str, f64)>,
}

/// The figures the side-by-side ratio is made of (µs).
struct Summary {
    p50: u64,
    p99: u64,
    p999: u64,
    /// CPU per call of the serving side (paynotify: both nodes and Redis; the broker).
    server_us: f64,
}

impl Load {
    /// Offers the load (1 ms ticks): `call(device id)` and `hole()` give an HTTP-like status,
    /// 200 for a result; measures each healthy call's latency and every process' CPU.
    async fn drive<C, CF, H, HF>(&self, pids: &[(&'static str, u32)], call: C, hole: H) -> Measured
    where
        C: Fn(String) -> CF,
        CF: std::future::Future<Output = u16> + Send + 'static,
        H: Fn() -> HF,
        HF: std::future::Future<Output = u16> + Send + 'static,
    {
        let (rate, count) = (self.rate, self.count);
        let half = count / 2;
        let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
        let failures = Arc::new(Mutex::new(Vec::<u16>::new()));
        let hole_results = Arc::new(Mutex::new(Vec::<(u16, u64)>::new()));
        let total = rate * self.seconds;
        let per_tick = (rate / 1000).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut seed: u64 = 11;
        let mut sent = 0u64;
        let mut tasks = tokio::task::JoinSet::new();
        let pids: Vec<(&'static str, u32)> =
            pids.iter().copied().filter(|(_, pid)| *pid != 0).collect();
        let cpu_before: Vec<u64> = pids.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
        let run_start = Instant::now();
        while sent < total {
            tick.tick().await;
            for _ in 0..per_tick {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let n = (seed >> 33) % count;
                let target = if n < half {
                    format!("sim-a{n}")
                } else {
                    format!("sim-b{}", n - half)
                };
                let one = call(target);
                let (latencies, failures) = (latencies.clone(), failures.clone());
                tasks.spawn(async move {
                    let t = Instant::now();
                    let status = one.await;
                    if status == 200 {
                        latencies
                            .lock()
                            .unwrap()
                            .push(t.elapsed().as_micros() as u64);
                    } else {
                        failures.lock().unwrap().push(status);
                    }
                });
            }
            sent += per_tick;
            if self.hole_calls && sent.is_multiple_of((rate / 10).max(1)) {
                let (one, hole_results) = (hole(), hole_results.clone());
                tasks.spawn(async move {
                    let t = Instant::now();
                    let status = one.await;
                    hole_results
                        .lock()
                        .unwrap()
                        .push((status, t.elapsed().as_millis() as u64));
                });
            }
            while tasks.try_join_next().is_some() {}
        }
        // The rate achieved is measured over the sending; the wait for the last answers (and
        // the black hole's deadline) is not part of it.
        let secs = run_start.elapsed().as_secs_f64();
        while tasks.join_next().await.is_some() {}
        let wall = run_start.elapsed().as_secs_f64();
        let mut cpu: Vec<(&'static str, f64)> = Vec::new();
        for ((name, pid), before) in pids.iter().zip(&cpu_before) {
            let used = cpu_ticks(*pid).saturating_sub(*before) as f64 / 100.0;
            match cpu.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total += used,
                None => cpu.push((name, used)),
            }
        }
        let mut lat = latencies.lock().unwrap().clone();
        lat.sort_unstable();
        let failures = failures.lock().unwrap().clone();
        let holes = hole_results.lock().unwrap().clone();
        Measured {
            total,
            lat,
            failures,
            holes,
            secs,
            wall,
            cpu,
        }
    }
}

impl Measured {
    /// Prints the phase's figures; `server` names the processes that serve the calls.
    fn report(&self, server: &[&str]) -> Summary {
        let (total, lat, failures) = (self.total, &self.lat, &self.failures);
        println!(
            "  {} healthy calls in {:.1} s ({:.0}/s): {} ok, {} failed {:?}",
            total,
            self.secs,
            total as f64 / self.secs,
            lat.len(),
            failures.len(),
            failures.iter().take(5).collect::<Vec<_>>()
        );
        println!(
            "  healthy call latency (request in, to the device, back): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            pct(lat, 0.5) as f64 / 1000.0,
            pct(lat, 0.9) as f64 / 1000.0,
            pct(lat, 0.99) as f64 / 1000.0,
            pct(lat, 0.999) as f64 / 1000.0,
            lat.last().copied().unwrap_or(0) as f64 / 1000.0
        );
        let timeouts = self.holes.iter().filter(|(s, _)| *s == 504).count();
        let max_ms = self.holes.iter().map(|(_, ms)| *ms).max().unwrap_or(0);
        println!("  black-holed device: {} calls, {timeouts} answered 504, slowest {max_ms} ms (deadline 1000 ms)", self.holes.len());
        let per_call = |c: f64| c * 1e6 / total as f64;
        let total_cpu: f64 = self.cpu.iter().map(|(_, c)| c).sum();
        let parts: Vec<String> = self
            .cpu
            .iter()
            .map(|(name, c)| format!("{name} {:.0} µs", per_call(*c)))
            .collect();
        let server_cpu: f64 = self
            .cpu
            .iter()
            .filter(|(name, _)| server.contains(name))
            .map(|(_, c)| c)
            .sum();
        println!(
            "  CPU per call: {} (all: {:.0} µs; serving: {:.0} µs; {:.2} of 2 cores busy)",
            parts.join(", "),
            per_call(total_cpu),
            per_call(server_cpu),
            total_cpu / self.wall
        );
        Summary {
            p50: pct(lat, 0.5),
            p99: pct(lat, 0.99),
            p999: pct(lat, 0.999),
            server_us: per_call(server_cpu),
        }
    }
}

/// `burst` concurrent calls through node B to ONE device on node A (it answers at once), for
/// `rounds` rounds, 200 ms apart; and, as the same run's floor, the same bursts of `GET /readyz`
/// on node B (the HTTP hop alone). Every call should answer 200 (a burst below the cap of 256
/// is never refused).
async fn burst_phase(client: &reqwest::Client, b_http: u16, burst: u64, rounds: u64) {
    println!("  burst: {rounds} rounds of {burst} concurrent calls to one device (sim-a0)");
    let one = |url: String, call: bool| {
        let client = client.clone();
        async move {
            let t = Instant::now();
            let r = if call {
                client
                    .post(url)
                    .bearer_auth(KEY)
                    .json(&serde_json::json!({"method": "open", "timeout_ms": 5000}))
                    .send()
                    .await
            } else {
                client.get(url).send().await
            };
            let status = r.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
            if let Ok(r) = r {
                let _ = r.bytes().await;
            }
            (status, t.elapsed().as_micros() as u64)
        }
    };
    for (name, call, url) in [
        (
            "calls to one device",
            true,
            format!("http://127.0.0.1:{b_http}/v1/devices/sim-a0/call"),
        ),
        (
            "GET /readyz (floor)",
            false,
            format!("http://127.0.0.1:{b_http}/readyz"),
        ),
    ] {
        let mut lat = Vec::new();
        let mut refused = std::collections::BTreeMap::<u16, u64>::new();
        for _ in 0..rounds {
            let results =
                futures::future::join_all((0..burst).map(|_| one(url.clone(), call))).await;
            for (status, us) in results {
                if status == 200 {
                    lat.push(us);
                } else {
                    *refused.entry(status).or_default() += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lat.sort_unstable();
        println!(
            "    {name}: {} ok, not ok {refused:?}; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lat.len(),
            pct(&lat, 0.5) as f64 / 1000.0,
            pct(&lat, 0.99) as f64 / 1000.0,
            lat.last().copied().unwrap_or(0) as f64 / 1000.0
        );
    }
}

/// utime + stime of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name (field 2) may hold spaces; count fields after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}
