//! Redis faults: a 30 s outage, and a Redis that comes back empty. Real processes, real Redis.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

async fn status(url: String) -> Option<u16> {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

async fn enqueue(node: &Proc, doc: Value) -> (u16, Value) {
    node.api().post_any("/v1/notifications", doc).await
}

/// Ids the sink has received (the body of each notification is its id).
fn delivered_ids(sink: &Sink) -> HashSet<String> {
    sink.received()
        .iter()
        .map(|r| {
            String::from_utf8_lossy(&r.body)
                .trim_matches('"')
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_second_redis_outage_loses_nothing_and_readiness_follows_it() {
    let mut redis = RedisServer::start_with(true).unwrap();
    let sink = Sink::start().await;
    let mut procs = vec![
        Proc::serve(&redis.url(), &["--lease", "5s"]),
        Proc::serve(&redis.url(), &["--lease", "5s"]),
    ];
    for p in &procs {
        p.wait_ready().await;
    }
    let a = &procs[0];
    let mut expected = HashSet::new();
    for i in 0..100 {
        let id = format!("before-{i}");
        let (code, body) = enqueue(a, json!({"id": id, "url": sink.url("/ok"), "body": id})).await;
        assert_eq!(code, 201, "{body}");
        expected.insert(id);
    }
    wait_until(Duration::from_secs(20), || async {
        delivered_ids(&sink).len() == 100
    })
    .await;
    // These fall due while Redis is away.
    let due = paynotify::now_ms() + 1_500;
    for i in 0..100 {
        let id = format!("during-{i}");
        let (code, body) = enqueue(
            a,
            json!({"id": id, "url": sink.url("/ok"), "body": id, "deliver_at": due}),
        )
        .await;
        assert_eq!(code, 201, "{body}");
        expected.insert(id);
    }
    redis.stop();
    let outage = Instant::now();
    for p in &procs {
        let ready = format!("http://{}/readyz", p.addr);
        wait_until(Duration::from_secs(10), || {
            let ready = ready.clone();
            async move { status(ready).await == Some(503) }
        })
        .await;
        assert_eq!(
            status(format!("http://{}/healthz", p.addr)).await,
            Some(200)
        );
    }
    // An enqueue during the outage is refused clearly, never accepted and dropped.
    let (code, body) = enqueue(a, json!({"id": "refused", "url": sink.url("/ok")})).await;
    assert_eq!((code, body["code"].clone()), (503, json!("unavailable")));
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;
    for p in &mut procs {
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "a node exited during the outage"
        );
    }
    redis.start_again().unwrap();
    for p in &procs {
        let ready = format!("http://{}/readyz", p.addr);
        wait_until(Duration::from_secs(30), || {
            let ready = ready.clone();
            async move { status(ready).await == Some(200) }
        })
        .await;
    }
    for i in 0..50 {
        let id = format!("after-{i}");
        let (code, body) = enqueue(
            &procs[1],
            json!({"id": id, "url": sink.url("/ok"), "body": id}),
        )
        .await;
        assert_eq!(code, 201, "{body}");
        expected.insert(id);
    }
    wait_until(Duration::from_secs(30), || async {
        delivered_ids(&sink).is_superset(&expected)
    })
    .await;
    let received = sink.count();
    eprintln!(
        "outage: {} notifications, {} requests received ({} repeated)",
        expected.len(),
        received,
        received - expected.len()
    );
    for p in &mut procs {
        assert!(p.child.try_wait().unwrap().is_none());
        assert!(p.sigterm().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_comes_back_empty_gets_its_groups_subscriptions_and_presence_again() {
    let mut redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = device_node_with(&redis, |c| c.device_heartbeat = Duration::from_millis(500)).await;
    // A browser following an order, and a device.
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe("o-empty").await;
    // The device pings and answers calls.
    let device = DeviceClient::online(node.device_addr.unwrap(), "gate-e")
        .await
        .serve(Some(Duration::from_millis(250)), |frame| {
            assert_ne!(
                frame["type"], "goodbye",
                "the device was sent away: {frame}"
            );
            (frame["type"] == "call")
                .then(|| json!({"type": "reply", "id": frame["id"], "result": "here"}))
        });

    redis.restart().unwrap();
    wait_until(Duration::from_secs(20), || async {
        status(node.url("/readyz")).await == Some(200)
    })
    .await;
    // The intake consumer group is created again.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let doc = json!({"id": "after-empty", "url": sink.url("/ok"), "body": "after-empty"});
    xadd_notification(&mut conn, &doc).await;
    wait_until(Duration::from_secs(20), || async { sink.count() == 1 }).await;
    // The browser's subscription is made again: a result still reaches it.
    let mut got = None;
    for _ in 0..50 {
        assert_eq!(post_result(&node, "o-empty", "paid").await, 200);
        if let Some(v) = ws.next_json(Duration::from_millis(300)).await {
            if v["type"] == "result" {
                got = Some(v);
                break;
            }
        }
    }
    assert_eq!(got.expect("no result after the restart")["status"], "paid");
    // The device's presence comes back without dropping it, and calls reach it.
    wait_until(Duration::from_secs(10), || async {
        let v = node
            .api()
            .get::<Value>("/v1/devices/gate-e", StatusCode::OK)
            .await;
        v["online"] == true
    })
    .await;
    let r = node
        .api()
        .http()
        .post(node.url("/v1/devices/gate-e/call"))
        .json(&json!({"method": "where", "timeout_ms": 3000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!device.is_finished(), "the device connection ended");
    device.abort();
}

#[tokio::test]
async fn wait_replicas_refuses_an_enqueue_no_replica_confirmed() {
    let redis = RedisServer::start().unwrap();
    let mut replica = RedisServer::start_replica_of(&redis).unwrap();
    let sink = Sink::start().await;
    let mut c = config(&redis);
    c.wait_replicas = 1;
    c.wait_timeout = Duration::from_millis(200);
    let node = Node::start(c).await;
    // With the replica in sync, enqueues are confirmed (it may need a moment to sync first).
    let mut created = false;
    let later = paynotify::now_ms() + 3_600_000;
    for i in 0..50 {
        // The same document each time: a retry of a refused enqueue is idempotent.
        let (code, _) = node
            .api()
            .post_any(
                "/v1/notifications",
                json!({"id": "w-1", "url": sink.url("/ok"), "deliver_at": later}),
            )
            .await;
        if code == 201 || code == 200 {
            created = true;
            break;
        }
        assert_eq!(code, 503, "attempt {i}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(created, "the replica never confirmed");
    // Without it, the enqueue is refused clearly (the write is on the primary; a retry is safe).
    replica.stop();
    let (code, body) = node.api().post_any("/v1/notifications", json!({"id": "w-2", "url": sink.url("/ok"), "deliver_at": paynotify::now_ms() + 3_600_000}))
    .await;
    assert_eq!(
        (code, body["code"].clone()),
        (503, json!("not_replicated")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("0 of 1"),
        "{body}"
    );
}
