//! A real 3-master Redis Cluster (started locally): the engine, browser push and devices run on
//! it with partitions spread over the masters, and a master restart is survived.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use paynotify_testkit::RedisCluster;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const PARTITIONS: u32 = 12;

fn cluster_config(cluster: &RedisCluster) -> paynotify::Config {
    let mut c = paynotify::cli::serve::config_for(&cluster.url_list());
    c.redis_cluster = true;
    c.allow_private_targets = true;
    c.partitions = Some(PARTITIONS);
    c.api_keys = vec![API_KEY.to_string()];
    c.token_secrets = vec![TOKEN_SECRET.to_string()];
    c.lease = Duration::from_secs(5);
    c.shutdown_grace = Duration::from_secs(5);
    c
}

/// The masters that hold the partitions' keys.
fn masters_of_partitions(cluster: &RedisCluster) -> HashSet<usize> {
    let keys = paynotify::redis::keys::Keys::for_cluster("paynotify", PARTITIONS);
    (0..PARTITIONS)
        .map(|p| cluster.master_of_key(&keys.partition(p).due).unwrap())
        .collect()
}

async fn follow(node: &Node, order: &str) -> WsClient {
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe(order).await;
    ws
}

/// Publishes until the follower sees a result (a restarted shard may need a moment).
async fn publish_until_seen(node: &Node, ws: &mut WsClient, order: &str) -> Value {
    for _ in 0..100 {
        let r = node
            .api()
            .http()
            .post(node.url(&format!("/v1/orders/{order}/result")))
            .json(&json!({"status": "paid"}))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            if let Some(v) = ws.next_json(Duration::from_millis(300)).await {
                if v["type"] == "result" {
                    return v;
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("no result reached the follower of {order}");
}

/// A device that answers every call with "here" until the test ends.
async fn device(node: &Node, id: &str) -> tokio::task::JoinHandle<()> {
    // Pings well inside the heartbeat, so a loaded machine does not get it closed as silent.
    DeviceClient::online(node.device_addr.unwrap(), id)
        .await
        .serve(Some(Duration::from_millis(300)), |frame| {
            (frame["type"] == "call")
                .then(|| json!({"type": "reply", "id": frame["id"], "result": "here"}))
        })
}

async fn call(node: &Node, id: &str) -> (u16, Value) {
    let r = node
        .api()
        .http()
        .post(node.url(&format!("/v1/devices/{id}/call")))
        .json(&json!({"method": "where", "timeout_ms": 3000}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

async fn enqueue_many(node: &Node, sink: &Sink, prefix: &str, n: usize, extra: Value) {
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let mut doc = json!({"id": id, "url": sink.url("/ok"), "body": id});
        if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        let (code, body) = node.api().post_any("/v1/notifications", doc).await;
        assert_eq!(code, 201, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_push_and_devices_run_on_a_three_master_cluster() {
    let cluster = RedisCluster::start(3).unwrap();
    // Partition tags are chosen by slot: 12 partitions, 4 on each of the 3 masters.
    let keys = paynotify::redis::keys::Keys::for_cluster("paynotify", PARTITIONS);
    let mut per_master = [0usize; 3];
    for p in 0..PARTITIONS {
        per_master[cluster.master_of_key(&keys.partition(p).due).unwrap()] += 1;
    }
    assert_eq!(per_master, [4, 4, 4]);
    assert_eq!(masters_of_partitions(&cluster).len(), 3);
    let sink = Sink::start().await;
    // Two configs, not one cloned: each node has its own id (and node channel).
    let (mut ca, mut cb) = (cluster_config(&cluster), cluster_config(&cluster));
    ca.allow_private_targets = true;
    cb.allow_private_targets = true;
    let a = Node::start_with_devices(ca).await;
    let b = Node::start(cb).await;
    // Engine: 300 notifications over every partition, each delivered exactly once.
    enqueue_many(&b, &sink, "c", 300, json!({})).await;
    wait_until(Duration::from_secs(30), || async { sink.count() >= 300 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.count(), 300, "a notification was delivered twice");
    assert!(sink.counts().values().all(|n| *n == 1));
    // Intake on the cluster.
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let doc = json!({"id": "from-intake", "url": sink.url("/ok"), "body": "from-intake"});
    xadd_notification(&mut conn, &doc).await;
    b.api()
        .wait_state("from-intake", "delivered", Duration::from_secs(20))
        .await;
    // Push: a follower on A, the result published through B.
    let mut ws = follow(&a, "cl-order").await;
    let v = publish_until_seen(&b, &mut ws, "cl-order").await;
    assert_eq!(v["status"], "paid");
    // Devices: a device on A, called through B.
    let d = device(&a, "cl-gate").await;
    let (status, body) = call(&b, "cl-gate").await;
    assert_eq!(
        (status, body["result"].clone()),
        (200, json!("here")),
        "{body}"
    );
    d.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restart_is_survived() {
    let mut cluster = RedisCluster::start(3).unwrap();
    let sink = Sink::start().await;
    let mut c = cluster_config(&cluster);
    c.allow_private_targets = true;
    c.device_heartbeat = Duration::from_secs(2);
    let node = Node::start_with_devices(c).await;
    let mut ws = follow(&node, "restart-order").await;
    let d = device(&node, "restart-gate").await;
    // Due while a master is down.
    let due = paynotify::now_ms() + 1_000;
    enqueue_many(&node, &sink, "r", 120, json!({"deliver_at": due})).await;
    let keys = paynotify::redis::keys::Keys::for_cluster("paynotify", PARTITIONS);
    let victim = cluster.master_of_key(&keys.partition(0).due).unwrap();
    cluster.stop_master(victim).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start_master(victim).unwrap();
    wait_until(Duration::from_secs(30), || async {
        reqwest::get(node.url("/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    wait_until(Duration::from_secs(60), || async {
        sink.counts().len() == 120
    })
    .await;
    // Results and calls still get through.
    let v = publish_until_seen(&node, &mut ws, "restart-order").await;
    assert_eq!(v["status"], "paid");
    // Within three probe rounds: if the restarted master's shard lost the node's subscription
    // without the client noticing, the node's probe finds out within two rounds.
    let mut last = (0, Value::Null);
    let started = std::time::Instant::now();
    while started.elapsed() < paynotify::redis::follow::PROBE_EVERY * 3 {
        last = call(&node, "restart-gate").await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        last.0, 200,
        "calls never reached the device after the restart: {last:?}"
    );
    d.abort();
}

/// The engine's semantics, partition by partition, on the cluster: retries on a schedule, the
/// dead set and replay (one id and all, across masters), idempotency and conflicts, intake
/// rejections, stats over every partition, and the CLI against the seed list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_semantics_hold_on_a_three_master_cluster() {
    let cluster = RedisCluster::start(3).unwrap();
    let sink = Sink::start().await;
    let mut c = cluster_config(&cluster);
    c.allow_private_targets = true;
    // 24 failures in a row to one sink would open its breaker (at the next lane sync, so only
    // under load) and defer the replays by the 30 s cooldown: breakers are not under test here.
    c.breaker_min_requests = 1_000_000;
    let node = Node::start(c).await;
    // 24 ids over 12 partitions: each one fails once, is dead after one try, and is replayed.
    let ids: Vec<String> = (0..24).map(|i| format!("dead-{i}")).collect();
    for id in &ids {
        let doc = json!({"id": id, "url": sink.url("/flaky/1"), "body": id, "schedule": [0]});
        node.api()
            .post::<Value>("/v1/notifications", doc, StatusCode::CREATED)
            .await;
    }
    for id in &ids {
        node.api()
            .wait_state(id, "dead", Duration::from_secs(20))
            .await;
    }
    let dead = node
        .api()
        .get::<Value>("/v1/dead?limit=100", StatusCode::OK)
        .await;
    assert_eq!(dead["dead"].as_array().unwrap().len(), 24, "{dead}");
    node.api()
        .post_empty::<Value>("/v1/dead/dead-0/replay", StatusCode::OK)
        .await;
    node.api()
        .wait_state("dead-0", "delivered", Duration::from_secs(20))
        .await;
    let r = node
        .api()
        .http()
        .post(node.url("/v1/dead/replay"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for id in &ids {
        let v = node
            .api()
            .wait_state(id, "delivered", Duration::from_secs(20))
            .await;
        assert_eq!(v["attempts_made"], 2, "{v}");
    }
    // Retries on a schedule: two failures, then success.
    let doc = json!({"id": "flaky", "url": sink.url("/flaky/2"), "body": "flaky", "schedule": [0, 0.1, 0.1]});
    node.api()
        .post::<Value>("/v1/notifications", doc, StatusCode::CREATED)
        .await;
    let v = node
        .api()
        .wait_state("flaky", "delivered", Duration::from_secs(20))
        .await;
    assert_eq!(v["attempts_made"], 3, "{v}");
    // Idempotency and conflicts.
    let doc = json!({"id": "once", "url": sink.url("/ok"), "body": "once"});
    node.api()
        .post::<Value>("/v1/notifications", doc.clone(), StatusCode::CREATED)
        .await;
    node.api()
        .post::<Value>("/v1/notifications", doc, StatusCode::OK)
        .await;
    let other = json!({"id": "once", "url": sink.url("/ok"), "body": "other"});
    node.api()
        .post::<Value>("/v1/notifications", other, StatusCode::CONFLICT)
        .await;
    node.api()
        .wait_state("once", "delivered", Duration::from_secs(20))
        .await;
    // The intake rejects a bad entry with its reason.
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg("paynotify:intake")
        .arg("*")
        .arg("notification")
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    wait_xlen(&conn, "paynotify:rejected", 1).await;
    // Stats add up over every partition.
    let stats = node.api().get::<Value>("/v1/stats", StatusCode::OK).await;
    assert_eq!(stats["dead"], 0, "{stats}");
    assert_eq!(stats["delivered"], 26, "{stats}");
    assert_eq!(stats["total_dead"], 24, "{stats}");
    // The CLI works against the seed list.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args(["show", "once", "--redis-cluster", "--partitions", "12"])
        .args(["--redis-url", &cluster.url_list()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("delivered"));
    // Every delivery reached the merchant exactly as often as the attempts say.
    assert_eq!(sink.counts().get(&b"once"[..]).copied(), Some(1));
}

/// Browser push and devices on the cluster, beyond the happy path: a result stored before the
/// subscribe arrives at subscribe, once; long-poll; refused tokens; offline, sent messages and
/// device events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_device_semantics_hold_on_a_three_master_cluster() {
    let cluster = RedisCluster::start(3).unwrap();
    let sink = Sink::start().await;
    let (mut ca, mut cb) = (cluster_config(&cluster), cluster_config(&cluster));
    ca.allow_private_targets = true;
    ca.device_events_url = Some(sink.url("/ok"));
    cb.allow_private_targets = true;
    let a = Node::start_with_devices(ca).await;
    let b = Node::start(cb).await;
    // Published before anyone follows: the subscribe delivers it, once.
    for order in ["early-1", "early-2", "early-3"] {
        assert_eq!(post_result(&b, order, "paid").await, 200);
        let mut ws = follow(&a, order).await;
        let first = ws.next().await.unwrap().unwrap();
        assert!(first.to_string().contains("paid"), "{first}");
        let again = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
        assert!(again.is_err(), "delivered twice: {again:?}");
    }
    // Long-poll through the other node.
    let t = mint_token(paynotify::token::Kind::Order, "early-2");
    let r = reqwest::get(a.url(&format!("/v1/orders/early-2/result?token={t}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let wrong = mint_token(paynotify::token::Kind::Order, "early-3");
    let r = reqwest::get(a.url(&format!("/v1/orders/early-2/result?token={wrong}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Devices: offline, a one-way message through the other node, an event.
    assert_eq!(call(&b, "nobody").await.0, 404);
    let mut vend = DeviceClient::online(a.device_addr.unwrap(), "cl-vend").await;
    let r = b
        .api()
        .http()
        .post(b.url("/v1/devices/cl-vend/send"))
        .json(&json!({"open": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let msg = vend.recv(Duration::from_secs(10)).await.unwrap();
    assert!(msg.to_string().contains("\"open\":1"), "{msg}");
    vend.send(json!({"type": "event", "name": "coin", "data": {"n": 1}}))
        .await;
    let ack = vend.recv(Duration::from_secs(10)).await.unwrap();
    assert!(ack.to_string().contains("event_ack"), "{ack}");
    wait_until(Duration::from_secs(20), || async { sink.count() == 1 }).await;
}

/// Resharding moves the slot of a node's channel to another master. The old owner drops the
/// node's subscription (Redis sends it an unsubscribe), the connection itself stays up; the node
/// notices through its probes and subscribes again, so calls reach its devices again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_follows_its_channel_when_the_slot_moves_to_another_master() {
    use paynotify::redis::follow::PROBE_EVERY;
    let cluster = RedisCluster::start(3).unwrap();
    let mut c = cluster_config(&cluster);
    c.node_id = "probe-node".into();
    c.device_heartbeat = Duration::from_secs(2);
    let node = Node::start_with_devices(c).await;
    let d = device(&node, "moving-gate").await;
    assert_eq!(call(&node, "moving-gate").await.0, 200);
    let keys = paynotify::redis::keys::Keys::for_cluster("paynotify", PARTITIONS);
    let channel = keys.node_channel("probe-node");
    let from = cluster.master_of_key(&channel).unwrap();
    cluster.move_slot_of(&channel, (from + 1) % 3).unwrap();
    assert_eq!(cluster.master_of_key(&channel).unwrap(), (from + 1) % 3);
    let started = std::time::Instant::now();
    let mut last = (0, Value::Null);
    while started.elapsed() < PROBE_EVERY * 3 {
        last = call(&node, "moving-gate").await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last.0, 200, "calls stopped reaching the device: {last:?}");
    d.abort();
}

/// The same for a browser: the slot of its order's channel moves while it follows the order;
/// the node subscribes again where the slot now lives, and the result still reaches the browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_keeps_its_order_when_the_slot_moves_to_another_master() {
    let cluster = RedisCluster::start(3).unwrap();
    let node = Node::start(cluster_config(&cluster)).await;
    let mut ws = follow(&node, "moving-order").await;
    let channel = paynotify::redis::keys::Keys::for_cluster("paynotify", PARTITIONS)
        .order_channel("moving-order");
    let from = cluster.master_of_key(&channel).unwrap();
    cluster.move_slot_of(&channel, (from + 1) % 3).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(post_result(&node, "moving-order", "paid").await, 200);
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    let Ok(Some(Ok(Message::Text(t)))) = got else {
        panic!("no result after the slot moved: {got:?}");
    };
    assert!(t.contains("paid"), "{t}");
}
