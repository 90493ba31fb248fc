//! Partitions: the count recorded in Redis (a different one is refused, never used), workers
//! sharing the partitions (a partition whose owner is silent is still delivered), and
//! prefetched entries held until they fall due (never early).

use std::time::Duration;

use serde_json::json;

use crate::support::*;

async fn recorded(redis: &RedisServer) -> Option<String> {
    let mut c = redis_conn(redis).await;
    redis::cmd("GET")
        .arg("paynotify:partitions")
        .query_async(&mut c)
        .await
        .unwrap()
}

/// A node on its own listener that is expected to refuse to start: its error.
async fn refused(config: paynotify::Config) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let run = paynotify::run_with_listeners(
        config,
        listener,
        None,
        tokio_util::sync::CancellationToken::new(),
        axum::Router::new(),
    );
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(())) => panic!("the node started and stopped instead of refusing"),
        Err(_) => panic!("the node started instead of refusing"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_count_is_recorded_and_a_different_one_is_refused() {
    // A fresh Redis without --partitions: the default, recorded.
    let redis = RedisServer::start().unwrap();
    let first = node_with(&redis, |c| c.partitions = None).await;
    assert_eq!(recorded(&redis).await.as_deref(), Some("48"));
    // Another node with a different count is refused, naming both.
    let e = refused({
        let mut c = config(&redis);
        c.partitions = Some(12);
        c
    })
    .await;
    assert!(
        e.contains("48 partitions") && e.contains("--partitions 12"),
        "{e}"
    );
    // So is a CLI command.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args(["stats", "--redis-url", &redis.url(), "--partitions", "12"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("48 partitions"), "{stderr}");
    // Without the flag, both use the recorded count.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args(["stats", "--redis-url", &redis.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = node_with(&redis, |c| c.partitions = None).await;
    let sink = Sink::start().await;
    for i in 0..40 {
        second
            .api()
            .post::<Value>(
                "/v1/notifications",
                json!({"id": format!("n-{i}"), "url": sink.url("/ok"), "body": i}),
                StatusCode::CREATED,
            )
            .await;
    }
    for i in 0..40 {
        first
            .api()
            .wait_state(&format!("n-{i}"), "delivered", Duration::from_secs(10))
            .await;
    }
    assert_eq!(sink.count(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_from_before_the_record_keeps_one_partition() {
    let redis = RedisServer::start().unwrap();
    // What an earlier version left: partition 0's keys, no record.
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    let now = paynotify::now_ms();
    let doc = json!({"id": "old", "url": "http://127.0.0.1:9/x", "deliver_at": now + 86_400_000})
        .to_string();
    let n = paynotify::delivery::schema::parse(doc.as_bytes(), now, || unreachable!()).unwrap();
    store.enqueue(&n, now).await.unwrap();
    let node = node_with(&redis, |c| c.partitions = None).await;
    assert_eq!(recorded(&redis).await.as_deref(), Some("1"));
    let old = node.api().notification("old").await;
    assert_eq!(old["state"], "scheduled", "{old}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_owner_is_silent_is_still_delivered() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    // A worker that reports itself alive but never claims: it sorts first, so it owns half
    // of the 4 partitions.
    let mut c = redis_conn(&redis).await;
    let now = paynotify::now_ms();
    let ghost = json!({"id": "0-ghost", "roles": "worker", "version": "0", "started_at": now,
        "at": now + 8_000, "in_flight": 0, "ws_connections": 0, "orders_followed": 0,
        "devices_online": 0, "device_calls_waiting": 0});
    let _: i64 = redis::cmd("HSET")
        .arg("paynotify:{nodes}:reports")
        .arg("0-ghost")
        .arg(format!("{}|{ghost}", now + 8_000))
        .query_async(&mut c)
        .await
        .unwrap();
    let node = node_with(&redis, |c| c.partitions = Some(4)).await;
    // Let the node read the reports and take its half.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 0..40 {
        node.api()
            .post::<Value>(
                "/v1/notifications",
                json!({"id": format!("g-{i}"), "url": sink.url("/ok"), "body": i}),
                StatusCode::CREATED,
            )
            .await;
    }
    for i in 0..40 {
        node.api()
            .wait_state(&format!("g-{i}"), "delivered", Duration::from_secs(10))
            .await;
    }
    let counts = sink.counts();
    assert_eq!(counts.len(), 40);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_notifications_are_delivered_on_time_never_early() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = node_with(&redis, |_| {}).await;
    let now = paynotify::now_ms();
    let mut due = Vec::new();
    for i in 0..30i64 {
        let at = now + 300 + i * 7;
        due.push(at);
        node.api()
            .post::<Value>(
                "/v1/notifications",
                json!({"id": format!("p-{i}"), "url": sink.url("/ok"), "body": i.to_string(),
                    "deliver_at": at}),
                StatusCode::CREATED,
            )
            .await;
    }
    for i in 0..30 {
        node.api()
            .wait_state(&format!("p-{i}"), "delivered", Duration::from_secs(10))
            .await;
    }
    for r in sink.received() {
        let i: usize = std::str::from_utf8(&r.body).unwrap().parse().unwrap();
        assert!(
            r.at_ms >= due[i],
            "p-{i} arrived {} ms before it was due",
            due[i] - r.at_ms
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_rescored_earlier_is_delivered_at_its_score() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = node_with(&redis, |_| {}).await;
    let later = paynotify::now_ms() + 60_000;
    node.api()
        .post::<Value>(
            "/v1/notifications",
            json!({"id": "moved", "url": sink.url("/ok"), "body": "moved", "deliver_at": later}),
            StatusCode::CREATED,
        )
        .await;
    // An operator moves it in the due set (as the benchmarks do); its meta still says later.
    let mut c = redis_conn(&redis).await;
    let _: () = redis::cmd("EVAL")
        .arg("for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do redis.call('ZADD', KEYS[1], ARGV[1], m) end")
        .arg(1)
        .arg("paynotify:{p0}:due")
        .arg(paynotify::now_ms())
        .query_async(&mut c)
        .await
        .unwrap();
    let _: i64 = redis::cmd("SPUBLISH")
        .arg("paynotify:{p0}:wake")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    node.api()
        .wait_state("moved", "delivered", Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_leaves_the_live_list_at_once() {
    let redis = RedisServer::start().unwrap();
    let mut c = config(&redis);
    c.node_id = "leaving".to_string();
    let node = Node::start(c).await;
    let conn = redis_conn(&redis).await;
    let reported = |mut conn: redis::aio::MultiplexedConnection| async move {
        redis::cmd("HEXISTS")
            .arg("paynotify:{nodes}:reports")
            .arg("leaving")
            .query_async::<bool>(&mut conn)
            .await
            .unwrap()
    };
    wait_until(Duration::from_secs(5), || reported(conn.clone())).await;
    node.stop().await;
    // Its partitions go to the others at their next look, not when the report goes stale.
    assert!(!reported(conn).await);
}
