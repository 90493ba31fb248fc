//! The kill test, short: the same scenario as `cargo bench --bench kill` (benches/kill/), with
//! 3,000 notifications through the intake, a node SIGKILLed every 1.5 s and Redis SIGKILLed
//! once and restarted from its AOF. Nothing acknowledged may be missing, and the duplicates
//! stay within the bound the design promises.

#[path = "../../benches/kill/scenario.rs"]
mod scenario;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_of_nodes_and_redis_lose_nothing_acknowledged() {
    let plan = scenario::Plan {
        binary: env!("CARGO_BIN_EXE_paynotify").to_string(),
        nodes: 3,
        total: 3_000,
        rate: 300,
        kill_every: Duration::from_millis(1_500),
        redis_kill_at: Duration::from_secs(4),
        lease: Duration::from_secs(2),
        max_in_flight: 256,
        settle_time: Duration::from_secs(60),
    };
    let report = scenario::run(&plan, |line| eprintln!("{line}")).await;
    eprintln!("{report}");
    assert_eq!(report.acknowledged, plan.total);
    assert_eq!(report.missing, 0, "{report}");
    assert!(report.node_kills >= 5, "{report}");
    assert_eq!(report.redis_kills, 1, "{report}");
    assert!(report.extra_requests <= report.bound, "{report}");
}
