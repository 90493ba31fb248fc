//! Redis Sentinel: a primary, a replica and three Sentinels; the primary is killed and the
//! node follows the failover. Real processes.

use std::time::Duration;

use paynotify_testkit::RedisSentinels;
use serde_json::json;

use crate::support::*;

/// Enqueues `id` (body: the id), retrying while Redis is unavailable (503) for up to 30 s.
async fn enqueue_until_accepted(node: &Node, sink: &Sink, id: &str) {
    let doc = json!({"id": id, "url": sink.url("/ok"), "body": id});
    for _ in 0..300 {
        let (status, body) = node.api().post_any("/v1/notifications", doc.clone()).await;
        match status {
            201 | 200 => return,
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => panic!("{id}: {status} {body}"),
        }
    }
    panic!("{id} was not accepted within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_follows_a_sentinel_failover_and_loses_nothing_that_was_replicated() {
    let mut primary = RedisServer::start().unwrap();
    let replica = RedisServer::start_replica_of(&primary).unwrap();
    let sentinels =
        RedisSentinels::start(&primary, "pay", 3, 2, Duration::from_millis(1000)).unwrap();
    let sink = Sink::start().await;
    let node = node_with(&primary, |c| {
        c.redis_url = sentinels.url_list();
        c.redis_sentinel = Some("pay".into());
    })
    .await;
    for i in 0..50 {
        enqueue_until_accepted(&node, &sink, &format!("before-{i}")).await;
    }
    // Everything so far is on the replica before the primary dies.
    let mut conn = redis::Client::open(primary.url())
        .unwrap()
        .get_connection()
        .unwrap();
    // The replica may still be in its first sync on a busy machine: WAIT again until it
    // acknowledges (at most 30 s).
    let mut acked: i64 = 0;
    for _ in 0..6 {
        acked = redis::cmd("WAIT")
            .arg(1)
            .arg(5000)
            .query(&mut conn)
            .unwrap();
        if acked == 1 {
            break;
        }
    }
    assert_eq!(acked, 1, "the replica never acknowledged the writes");
    primary.stop();
    // Enqueues during the failover are refused (503) until the replica is promoted, then land.
    for i in 0..50 {
        enqueue_until_accepted(&node, &sink, &format!("after-{i}")).await;
    }
    assert_eq!(
        sentinels.primary_port().unwrap(),
        replica.port(),
        "{}",
        sentinels.logs()
    );
    // Every notification is delivered (at least once: a settle the old primary took with it is
    // repeated, which is what at-least-once allows).
    wait_until(Duration::from_secs(30), || async {
        let counts = sink.counts();
        (0..50).all(|i| {
            ["before", "after"].iter().all(|p| {
                counts.contains_key(format!("\"{p}-{i}\"").as_bytes())
                    || counts.contains_key(format!("{p}-{i}").as_bytes())
            })
        })
    })
    .await;
    // Pub/sub follows too: a long-poll waiting on the new primary gets a result published there.
    let token = mint_token(paynotify::token::Kind::Order, "order-after");
    let poll = reqwest::get(node.url(&format!(
        "/v1/orders/order-after/result?token={token}&wait=20"
    )));
    let publish = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(post_result(&node, "order-after", "paid").await, 200);
    };
    let (polled, ()) = tokio::join!(poll, publish);
    let polled = polled.unwrap();
    assert_eq!(polled.status(), 200);
    let v: serde_json::Value = polled.json().await.unwrap();
    assert_eq!(v["status"], "paid", "{v}");
    node.stop().await;
}

#[tokio::test]
async fn sentinel_settings_that_cannot_work_are_refused() {
    use paynotify::redis::target::{Target, TlsFiles};
    let cases = [
        ("redis://127.0.0.1:1", true, "pay", "exclude each other"),
        ("rediss://127.0.0.1:1", false, "pay", "TLS with Sentinel"),
        ("redis://127.0.0.1:1", false, "", "master name"),
    ];
    for (url, cluster, master, want) in cases {
        let e = Target::choose(url, cluster, Some(master), None, &TlsFiles::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains(want), "{e}");
    }
}
