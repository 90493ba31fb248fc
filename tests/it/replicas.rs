//! Many replicas on one Redis: exactly-once under load, recovery after kill -9.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

async fn enqueue_many(redis: &RedisServer, ids: impl Iterator<Item = String>, url: &str) {
    let store = store(redis);
    store.load_scripts().await.unwrap();
    let now = paynotify::now_ms();
    let docs: Vec<_> = ids
        .map(|id| {
            let doc =
                json!({"id": id, "url": url, "body": id, "schedule": [0, 1, 1, 1]}).to_string();
            paynotify::delivery::schema::parse(doc.as_bytes(), now, || unreachable!()).unwrap()
        })
        .collect();
    for chunk in docs.chunks(500) {
        let results = futures::future::join_all(chunk.iter().map(|n| store.enqueue(n, now))).await;
        for r in results {
            r.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_deliver_20000_notifications_exactly_once() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let procs: Vec<Proc> = (0..4)
        .map(|i| {
            Proc::serve(
                &redis.url(),
                &["--node-id", &format!("replica-{i}"), "--partitions", "1"],
            )
        })
        .collect();
    for p in &procs {
        p.wait_ready().await;
    }
    enqueue_many(
        &redis,
        (0..20_000).map(|i| format!("n-{i}")),
        &sink.url("/ok"),
    )
    .await;
    wait_until(Duration::from_secs(120), || async {
        sink.counts().len() == 20_000
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = sink.counts();
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        dupes.is_empty(),
        "{} notifications delivered more than once",
        dupes.len()
    );
    let stats = store(&redis).stats(paynotify::now_ms()).await.unwrap();
    assert_eq!(stats.delivered, 20_000);
    assert_eq!(stats.delivering, 0);
    assert_eq!(stats.scheduled, 0);
    // Every replica took part.
    let owners: std::collections::HashSet<String> = {
        let store = store(&redis);
        let mut owners = std::collections::HashSet::new();
        for i in (0..20_000).step_by(97) {
            let v = store.show(&format!("n-{i}")).await.unwrap().unwrap();
            owners.insert(v["attempts"][0]["node"].as_str().unwrap().to_string());
        }
        owners
    };
    assert!(owners.len() >= 2, "only {owners:?} delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_mid_batch_loses_nothing_and_recovers_within_a_lease() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let lease = "2s";
    let mut victim = Proc::serve(
        &redis.url(),
        &[
            "--node-id",
            "victim",
            "--lease",
            lease,
            "--max-in-flight",
            "100",
        ],
    );
    victim.wait_ready().await;
    // The victim alone claims the first batch against a slow merchant.
    enqueue_many(
        &redis,
        (0..300).map(|i| format!("k-{i}")),
        &sink.url("/sleep/700"),
    )
    .await;
    wait_until(Duration::from_secs(10), || async { sink.count() >= 50 }).await;
    let held = store(&redis)
        .stats(paynotify::now_ms())
        .await
        .unwrap()
        .delivering;
    assert!(held > 0);
    victim.kill9();
    let killed_at = Instant::now();
    let survivor = Proc::serve(&redis.url(), &["--node-id", "survivor", "--lease", lease]);
    survivor.wait_ready().await;
    wait_until(Duration::from_secs(60), || async {
        sink.counts().len() == 300
    })
    .await;
    let recovered_in = killed_at.elapsed();
    let store = store(&redis);
    wait_until(Duration::from_secs(10), || async {
        store.stats(paynotify::now_ms()).await.unwrap().delivered == 300
    })
    .await;
    let stats = store.stats(paynotify::now_ms()).await.unwrap();
    assert_eq!(stats.delivering, 0);
    assert_eq!(stats.dead, 0);
    let extra: u32 = sink.counts().values().map(|n| n - 1).sum();
    assert!(
        extra as i64 <= held.max(100),
        "{extra} duplicates, the victim held {held}"
    );
    // Entries the victim held came back after their lease (2 s) and were delivered by the
    // survivor, marked as a stall rather than a failed attempt.
    let mut stalled = 0;
    for i in 0..300 {
        let v = store.show(&format!("k-{i}")).await.unwrap().unwrap();
        if v["stalls"] == 1 {
            stalled += 1;
            assert_eq!(v["attempts"].as_array().unwrap().len(), 1, "{v}");
        }
    }
    assert!(stalled > 0);
    eprintln!("victim held {held}; {stalled} stalled entries redelivered; all 300 delivered {recovered_in:?} after kill -9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_hands_back_the_rest_at_once() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let mut node = Proc::serve(&redis.url(), &["--shutdown-grace", "1s", "--lease", "60s"]);
    node.wait_ready().await;
    enqueue_many(
        &redis,
        (0..200).map(|i| format!("t-{i}")),
        &sink.url("/sleep/3000"),
    )
    .await;
    wait_until(Duration::from_secs(10), || async { sink.count() >= 20 }).await;
    let status = node.sigterm();
    assert!(status.success(), "exit status {status:?}");
    // Nothing is left leased: what was in flight is back in the due set now, not in 60 s.
    let stats = store(&redis).stats(paynotify::now_ms()).await.unwrap();
    assert_eq!(stats.delivering, 0, "{stats:?}");
    assert_eq!(stats.scheduled + stats.delivered, 200, "{stats:?}");
    assert!(stats.due_backlog > 0);
}

#[tokio::test]
async fn readyz_turns_503_on_sigterm_while_the_node_drains() {
    let redis = RedisServer::start().unwrap();
    let mut node = Proc::serve(&redis.url(), &["--shutdown-delay", "3s"]);
    node.wait_ready().await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status();
    let ready = format!("http://{}/readyz", node.addr);
    wait_until(Duration::from_secs(5), || {
        let ready = ready.clone();
        async move {
            match reqwest::get(&ready).await {
                Ok(r) => {
                    r.status() == 503 && r.text().await.unwrap_or_default().contains("draining")
                }
                Err(_) => false,
            }
        }
    })
    .await;
    let health = reqwest::get(format!("http://{}/healthz", node.addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "healthz must stay up while draining");
    // Then it stops by itself, with status 0.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = node.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_second_node_with_the_same_id_refuses_to_start() {
    let redis = RedisServer::start().unwrap();
    let mut c = config(&redis);
    c.node_id = "fixed-node".into();
    let first = Node::start(c.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        paynotify::run(
            c.clone(),
            listener,
            tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .expect("the second node started and kept running");
    let err = second.unwrap_err().to_string();
    assert!(
        err.contains("fixed-node") && err.contains("another running node"),
        "{err}"
    );
    // Once the first one has stopped (and let go of the id), the id can be used again.
    first.stop().await;
    let again = Node::start(c).await;
    assert!(reqwest::get(again.url("/readyz"))
        .await
        .is_ok_and(|r| r.status() == 200));
}
