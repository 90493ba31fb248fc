//! Kill benchmark (not a test): `cargo bench --bench kill`.
//!
//! Enqueues notifications through the intake stream while `paynotify serve` nodes (the release
//! binary) are SIGKILLed and restarted every few seconds and Redis is SIGKILLed once and
//! restarted from its fsync-always AOF; prints acknowledged, delivered, missing, duplicates and
//! the duplicate bound (see `scenario.rs`). Exits 1 when anything acknowledged is missing or
//! the duplicates pass the bound.
//!
//! Environment: BENCH_NODES (3), BENCH_N (30,000), BENCH_RATE (1,000/s), BENCH_KILL_EVERY_MS
//! (3,000), BENCH_REDIS_KILL_AT_S (12), BENCH_LEASE_MS (3,000), BENCH_MAX_IN_FLIGHT (1,024).

// A benchmark harness: a failed setup step should stop it loudly.
#![allow(clippy::unwrap_used)]

mod scenario;

use std::time::Duration;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let plan = scenario::Plan {
        binary: env!("CARGO_BIN_EXE_paynotify").to_string(),
        nodes: env("BENCH_NODES", 3) as usize,
        total: env("BENCH_N", 30_000),
        rate: env("BENCH_RATE", 1_000),
        kill_every: Duration::from_millis(env("BENCH_KILL_EVERY_MS", 3_000)),
        redis_kill_at: Duration::from_secs(env("BENCH_REDIS_KILL_AT_S", 12)),
        lease: Duration::from_millis(env("BENCH_LEASE_MS", 3_000)),
        max_in_flight: env("BENCH_MAX_IN_FLIGHT", 1_024),
        settle_time: Duration::from_secs(120),
    };
    println!("kill test: {plan:?}");
    let report = scenario::run(&plan, |line| println!("  {line}")).await;
    println!("{report}");
    if report.missing > 0 || report.extra_requests > report.bound {
        std::process::exit(1);
    }
}
