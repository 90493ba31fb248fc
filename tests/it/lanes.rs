//! The adaptive lane per destination: a share of the destination's concurrency per node, and
//! a circuit breaker shared in Redis that defers attempts without spending their schedule.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_destinations_concurrency_instead_of_doubling_it() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let tweak = |c: &mut paynotify::Config| {
        c.per_destination_concurrency = 6;
        c.lane_initial_concurrency = 6;
    };
    let a = node_with(&redis, tweak).await;
    let b = node_with(&redis, tweak).await;
    for i in 0..120 {
        a.api()
            .post::<Value>(
                "/v1/notifications",
                json!({"id": format!("s-{i}"), "url": sink.url("/sleep/300"), "body": i}),
                StatusCode::CREATED,
            )
            .await;
    }
    // Once both nodes have reported the destination (a sync is every 0.5 s), each holds half.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sink.reset_peak();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let peak = sink.peak_in_flight();
    assert!(
        peak <= 6,
        "the destination saw {peak} attempts at once; the cluster-wide limit is 6"
    );
    assert!(peak >= 3, "only {peak} at once: is one node idle?");
    a.api()
        .wait_state("s-119", "delivered", Duration::from_secs(30))
        .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_defers_attempts_without_spending_the_schedule() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = node_with(&redis, |c| {
        c.breaker_window = Duration::from_secs(10);
        c.breaker_cooldown = Duration::from_secs(3);
        c.breaker_min_requests = 5;
    })
    .await;
    // Ten attempts 0.3 s apart: without a breaker every one is dead within 3 s.
    let schedule = vec![0.0, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3];
    for i in 0..10 {
        node.api()
            .post::<Value>("/v1/notifications", json!({"id": format!("b-{i}"), "url": sink.url("/status/503"), "body": i, "schedule": schedule}), StatusCode::CREATED)
            .await;
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // The half-open probe (the cooldown is 3 s) can be at the sink but not yet recorded while
    // the notifications are read: read them again until the records catch up with the sink.
    let mut attempts = 0;
    for _ in 0..40 {
        attempts = 0;
        for i in 0..10 {
            let n = node.api().notification(&format!("b-{i}")).await;
            assert_ne!(n["state"], "dead", "the breaker did not hold back {n}");
            attempts += n["attempts"].as_array().unwrap().len();
        }
        if sink.count() == attempts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        attempts < 50,
        "{attempts} attempts were spent while the breaker was open"
    );
    assert_eq!(sink.count(), attempts);
    let metrics = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("paynotify_breaker_opened_total 1")
            || metrics.contains("paynotify_breaker_opened_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("paynotify_breakers_open 1"), "{metrics}");
    node.stop().await;
}

#[tokio::test]
async fn the_breaker_opens_half_opens_for_one_probe_and_closes_on_its_success() {
    use paynotify::delivery::lane::{sync, take_probe, Breaker, BreakerRules, Report};
    let redis_server = RedisServer::start().unwrap();
    let redis = paynotify::redis::Redis::connect(
        &redis_server.url(),
        paynotify::redis::Keys::new("paynotify", 1),
    )
    .unwrap();
    let rules = BreakerRules {
        window_ms: 10_000,
        cooldown_ms: 1_000,
        min_requests: 10,
        failure_percent: 70,
    };
    let d = "m.example:443";
    let report = |answered, congested, probe| Report {
        limit: 4,
        answered,
        congested,
        probe,
    };
    // 9 attempts are too few; 7 congested of 10 open it, from any mix of nodes.
    let s = sync(&redis, "n1", d, &report(0, 6, None), rules, 1_000)
        .await
        .unwrap();
    assert_eq!(s.breaker, Breaker::Closed);
    let s = sync(&redis, "n2", d, &report(3, 0, None), rules, 1_100)
        .await
        .unwrap();
    assert_eq!((s.breaker, s.active_nodes), (Breaker::Closed, 2));
    let s = sync(&redis, "n1", d, &report(0, 0, None), rules, 1_200)
        .await
        .unwrap();
    assert_eq!(s.breaker, Breaker::Closed);
    let s = sync(&redis, "n1", d, &report(0, 1, None), rules, 1_300)
        .await
        .unwrap();
    assert_eq!(
        (s.breaker, s.open_until, s.event.as_deref()),
        (Breaker::Open, 2_300, Some("opened"))
    );
    assert!(
        !take_probe(&redis, "n1", d, 5_000, 1_400).await.unwrap(),
        "a probe while open"
    );
    let s = sync(&redis, "n2", d, &report(0, 0, None), rules, 2_400)
        .await
        .unwrap();
    assert_eq!(
        (s.breaker, s.event.as_deref()),
        (Breaker::HalfOpen, Some("half"))
    );
    // One probe cluster-wide, until it is back or its hold runs out.
    assert!(take_probe(&redis, "n1", d, 5_000, 2_500).await.unwrap());
    assert!(!take_probe(&redis, "n2", d, 5_000, 2_600).await.unwrap());
    let s = sync(&redis, "n1", d, &report(1, 0, Some(true)), rules, 2_700)
        .await
        .unwrap();
    assert_eq!(
        (s.breaker, s.event.as_deref()),
        (Breaker::Closed, Some("closed"))
    );
    // A failed probe opens it again for another cooldown.
    let s = sync(&redis, "n1", d, &report(0, 10, None), rules, 3_000)
        .await
        .unwrap();
    assert_eq!(s.breaker, Breaker::Open);
    let _ = sync(&redis, "n1", d, &report(0, 0, None), rules, 4_100)
        .await
        .unwrap();
    assert!(take_probe(&redis, "n2", d, 5_000, 4_200).await.unwrap());
    let s = sync(&redis, "n2", d, &report(0, 1, Some(false)), rules, 4_300)
        .await
        .unwrap();
    assert_eq!(
        (s.breaker, s.open_until, s.event.as_deref()),
        (Breaker::Open, 5_300, Some("reopened"))
    );
    let view = paynotify::delivery::lane::read(&redis, d, 4_300)
        .await
        .unwrap();
    assert_eq!((view.breaker, view.times_opened), (Breaker::Open, 3));
    assert_eq!((view.nodes_sending, view.concurrency_limit), (2, 8));
}
