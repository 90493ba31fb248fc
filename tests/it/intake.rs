//! The intake consumer's batches: a bad entry in the middle of a batch, notifications of many
//! partitions and results in one batch, the batched enqueue's answers, and an entry taken in
//! but never acknowledged (a crash between taking in and the ack) staying pending until it is
//! reclaimed.

use std::time::Duration;

use paynotify::delivery::store::{Enqueued, Store};
use paynotify::redis::keys::Keys;
use paynotify::redis::Redis;
use serde_json::json;

use crate::support::*;

const PARTITIONS: u32 = 4;

async fn xlen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("XLEN").arg(key).query_async(conn).await.unwrap()
}

/// Entries pending in the intake group (read, never acknowledged).
async fn pending(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg("paynotify:intake")
        .arg("paynotify")
        .query_async(conn)
        .await
        .unwrap();
    match reply {
        redis::Value::Array(v) => paynotify::redis::as_i64(&v[0]).unwrap(),
        other => panic!("XPENDING answered {other:?}"),
    }
}

#[tokio::test]
async fn a_batch_with_bad_entries_in_the_middle_takes_in_the_rest_in_order() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let mut conn = redis_conn(&redis).await;
    let doc = |id: &str| json!({"id": id, "url": sink.url("/ok"), "body": id}).to_string();
    // One atomic pipeline: the consumer reads the entries as one batch.
    let mut pipe = redis::pipe();
    pipe.atomic();
    let entries: Vec<(&str, String)> = vec![
        ("notification", doc("good-1")),
        ("notification", "{not json".into()),
        (
            "result",
            json!({"order_id": "o-1", "status": "paid"}).to_string(),
        ),
        ("notification", doc("good-2")),
        ("result", json!({"order_id": "o-2"}).to_string()),
        ("notification", doc("good-3")),
        ("notification", doc("good-1")),
        (
            "notification",
            json!({"id": "good-2", "url": sink.url("/ok"), "body": "changed"}).to_string(),
        ),
        (
            "result",
            json!({"order_id": "o-1", "status": "refunded"}).to_string(),
        ),
        ("notification", doc("good-4")),
    ];
    for (field, value) in &entries {
        pipe.cmd("XADD")
            .arg("paynotify:intake")
            .arg("*")
            .arg(*field)
            .arg(value)
            .ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();
    let node = node_with(&redis, |c| c.partitions = Some(PARTITIONS)).await;
    wait_xlen(&conn, "paynotify:rejected", 3).await;
    wait_xlen(&conn, "paynotify:intake", 0).await;
    for id in ["good-1", "good-2", "good-3", "good-4"] {
        node.api()
            .wait_state(id, "delivered", Duration::from_secs(10))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in ["good-1", "good-2", "good-3", "good-4"] {
        assert_eq!(sink.counts().get(id.as_bytes()).copied(), Some(1), "{id}");
    }
    let rejected = rejected_entries(&mut conn).await;
    let reasons: Vec<String> = rejected
        .iter()
        .map(|e| e.get::<String>("reason").unwrap())
        .collect();
    assert!(reasons[0].contains("invalid JSON"), "{reasons:?}");
    assert!(reasons[1].contains("status"), "{reasons:?}");
    assert!(reasons[2].contains("different content"), "{reasons:?}");
    // Results of one order in one batch are published in entry order.
    let (seq, latest) = results(&redis).read("o-1").await.unwrap().unwrap();
    assert_eq!(seq, 2);
    assert!(latest.contains("refunded"), "{latest}");
    assert_eq!(pending(&mut conn).await, 0);
    node.stop().await;
}

#[tokio::test]
async fn a_batch_enqueue_answers_each_notification_in_order_across_partitions() {
    let redis = RedisServer::start().unwrap();
    let store =
        Store::new(Redis::connect(&redis.url(), Keys::new("paynotify", PARTITIONS)).unwrap());
    store.load_scripts().await.unwrap();
    let now = paynotify::now_ms();
    let parse = |doc: serde_json::Value| {
        paynotify::delivery::schema::parse(doc.to_string().as_bytes(), now, || unreachable!())
            .unwrap()
    };
    let mut batch: Vec<_> = (0..20)
        .map(|i| parse(json!({"id": format!("n-{i}"), "url": "http://127.0.0.1:9/", "body": "b"})))
        .collect();
    batch.push(parse(
        json!({"id": "n-3", "url": "http://127.0.0.1:9/", "body": "b"}),
    ));
    batch.push(parse(
        json!({"id": "n-4", "url": "http://127.0.0.1:9/", "body": "other"}),
    ));
    let answers = store.enqueue_batch(&batch, now).await.unwrap();
    assert_eq!(answers.len(), 22);
    for a in &answers[..20] {
        assert!(matches!(a, Enqueued::Created { .. }), "{a:?}");
    }
    assert_eq!(
        answers[20],
        Enqueued::Exists {
            state: "scheduled".into()
        }
    );
    assert_eq!(
        answers[21],
        Enqueued::Conflict {
            state: "scheduled".into()
        }
    );
    // The batch touched every partition; each counts only what it created.
    let mut conn = redis_conn(&redis).await;
    let mut total = 0;
    for p in 0..PARTITIONS {
        let n: Option<i64> = redis::cmd("HGET")
            .arg(store.keys().partition(p).stats)
            .arg("enqueued")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(n.unwrap_or(0) > 0, "partition {p}");
        total += n.unwrap_or(0);
    }
    assert_eq!(total, 20);
    // The single enqueue is the batch of one.
    assert_eq!(
        store.enqueue(&batch[0], now).await.unwrap(),
        Enqueued::Exists {
            state: "scheduled".into()
        }
    );
    assert!(store.enqueue_batch(&[], now).await.unwrap().is_empty());
}

#[tokio::test]
async fn entries_taken_in_but_not_acknowledged_stay_pending_until_reclaimed() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let mut conn = redis_conn(&redis).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("paynotify:intake")
        .arg("paynotify")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    for i in 0..10 {
        let doc = json!({"id": format!("crash-{i}"), "url": sink.url("/ok"), "body": format!("crash-{i}")});
        xadd_notification(&mut conn, &doc).await;
    }
    // A consumer reads the batch and takes it in, then "crashes" before its acknowledgement.
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("paynotify")
        .arg("crashed-node")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg("paynotify:intake")
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let entries: Vec<paynotify::intake::Entry> = reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids)
        .map(|e| {
            let fields = e
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<Vec<u8>>(v).unwrap()))
                .collect();
            (e.id, fields)
        })
        .collect();
    assert_eq!(entries.len(), 10);
    let config = config(&redis);
    let handle = Redis::connect(&redis.url(), Keys::new("paynotify", 1)).unwrap();
    handle.load_scripts().await.unwrap();
    let store = Store::new(handle.clone());
    let results = paynotify::push::Results::new(handle.clone());
    let merchants = paynotify::delivery::merchants::Registry::new(handle.clone(), None);
    let metrics = paynotify::metrics::Metrics::new();
    let cx = paynotify::intake::batch::Intake {
        store: &store,
        results: &results,
        merchants: &merchants,
        config: &config,
        metrics: &metrics,
    };
    let ack =
        paynotify::intake::batch::take(&cx, &entries, paynotify::intake::batch::Turn::alone())
            .await
            .unwrap();
    assert_eq!(ack.len(), 10);
    // Taken in, not acknowledged: still in the stream and pending.
    assert_eq!(xlen(&mut conn, "paynotify:intake").await, 10);
    assert_eq!(pending(&mut conn).await, 10);
    // A node reclaims them once idle for a lease, finds them enqueued and acknowledges them;
    // each is delivered once.
    let node = node_with(&redis, |c| c.lease = Duration::from_secs(1)).await;
    wait_xlen(&conn, "paynotify:intake", 0).await;
    wait_until(Duration::from_secs(10), || {
        let mut conn = conn.clone();
        async move { pending(&mut conn).await == 0 }
    })
    .await;
    for i in 0..10 {
        node.api()
            .wait_state(&format!("crash-{i}"), "delivered", Duration::from_secs(10))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        let body = format!("crash-{i}");
        assert_eq!(
            sink.counts().get(body.as_bytes()).copied(),
            Some(1),
            "{body}"
        );
    }
    let enqueued: i64 = redis::cmd("HGET")
        .arg(store.keys().partition(0).stats)
        .arg("enqueued")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(enqueued, 10);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_taken_in_at_once_keep_the_streams_order() {
    let redis = RedisServer::start().unwrap();
    let mut conn = redis_conn(&redis).await;
    let node = node_with(&redis, |c| c.partitions = Some(PARTITIONS)).await;
    let later = paynotify::now_ms() + 3_600_000;
    let doc = |id: String, body: &str| {
        json!({"id": id, "url": "http://127.0.0.1:9/", "body": body, "deliver_at": later})
            .to_string()
    };
    // 3,000 entries in 30 pipelines written while the node reads: many batches, several of
    // them taken in at once.
    let mut published = 0;
    for chunk in 0..30 {
        let mut pipe = redis::pipe();
        for j in 0..100 {
            let i = chunk * 100 + j;
            let (field, value) = match i {
                200 => ("notification", doc("dup".into(), "first")),
                2_500 => ("notification", doc("dup".into(), "second")),
                i if i % 3 == 0 => {
                    published += 1;
                    (
                        "result",
                        json!({"order_id": "o-seq", "status": "paid", "data": {"i": published}})
                            .to_string(),
                    )
                }
                i => ("notification", doc(format!("n-{i}"), "b")),
            };
            pipe.cmd("XADD")
                .arg("paynotify:intake")
                .arg("*")
                .arg(field)
                .arg(value)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
        tokio::task::yield_now().await;
    }
    wait_xlen(&conn, "paynotify:intake", 0).await;
    wait_xlen(&conn, "paynotify:rejected", 1).await;
    // The last result in the stream is the one kept, and every one was published.
    let (seq, latest) = results(&redis).read("o-seq").await.unwrap().unwrap();
    assert_eq!(seq, published);
    assert!(latest.contains(&format!("\"i\":{published}")), "{latest}");
    // Of two entries with one id, the earlier is created and the later refused.
    let dup = node.api().notification("dup").await;
    assert_eq!(dup["spec"]["body"], "first", "{dup}");
    let rejected = rejected_entries(&mut conn).await;
    let body: String = rejected[0].get("notification").unwrap();
    assert!(body.contains("second"), "{body}");
    assert_eq!(pending(&mut conn).await, 0);
    node.stop().await;
}

#[tokio::test]
async fn a_batch_larger_than_a_scripts_argument_slice_is_enqueued_whole() {
    let redis = RedisServer::start().unwrap();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    let now = paynotify::now_ms();
    // One partition, 2,500 notifications: more than one slice of reads and of writes.
    let batch: Vec<_> = (0..2_500)
        .map(|i| {
            let doc = json!({"id": format!("s-{i}"), "url": "http://127.0.0.1:9/", "deliver_at": now + 60_000 + i});
            paynotify::delivery::schema::parse(doc.to_string().as_bytes(), now, || unreachable!())
                .unwrap()
        })
        .collect();
    let answers = store.enqueue_batch(&batch, now).await.unwrap();
    assert!(answers
        .iter()
        .all(|a| matches!(a, Enqueued::Created { .. })));
    let mut conn = redis_conn(&redis).await;
    let due = store.keys().partition(0).due;
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&due)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    // In due order, which is enqueue order here, each id once with its own sequence number.
    let ids: Vec<String> = members.iter().map(|m| m[17..].to_string()).collect();
    let expected: Vec<String> = (0..2_500).map(|i| format!("s-{i}")).collect();
    assert_eq!(ids, expected);
    let again = store.enqueue_batch(&batch[2_400..], now).await.unwrap();
    assert!(again.iter().all(|a| matches!(a, Enqueued::Exists { .. })));
    let shown = store.show("s-2499").await.unwrap().unwrap();
    assert_eq!(shown["state"], "scheduled", "{shown}");
}

#[tokio::test]
async fn an_id_the_schema_refuses_is_refused_by_the_store_and_nothing_is_stored() {
    // enqueue.lua writes the new meta entry without escaping: the store checks ids itself, so
    // a caller that built a notification without the schema cannot store broken JSON.
    let redis = RedisServer::start().unwrap();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    let now = paynotify::now_ms();
    let doc = json!({"id": "ok-1", "url": "http://127.0.0.1:9/", "deliver_at": now + 60_000});
    let good =
        paynotify::delivery::schema::parse(doc.to_string().as_bytes(), now, || unreachable!())
            .unwrap();
    let mut bad = good.clone();
    bad.id = "x\",\"s\":\"dead".into();
    let err = store.enqueue(&bad, now).await.unwrap_err();
    assert!(
        matches!(err, paynotify::redis::StoreError::InvalidId { .. }),
        "{err}"
    );
    // A batch with one bad id stores none of it.
    let err = store
        .enqueue_batch(&[good.clone(), bad], now)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    let mut conn = redis_conn(&redis).await;
    let stored: i64 = redis::cmd("HLEN")
        .arg(&store.keys().partition(0).meta)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    // The good one alone goes in, and its meta reads back.
    assert!(matches!(
        store.enqueue(&good, now).await.unwrap(),
        Enqueued::Created { .. }
    ));
    let shown = store.show("ok-1").await.unwrap().unwrap();
    assert_eq!(shown["state"], "scheduled", "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_right_after_taking_entries_in_leaves_none_of_them_pending() {
    // Acknowledgements wait a few milliseconds to cover several batches; a shutdown in that
    // window must still acknowledge what was taken in, or it would be taken in again later.
    let redis = RedisServer::start().unwrap();
    let node = node_with(&redis, |_| {}).await;
    let mut conn = redis_conn(&redis).await;
    let mut pipe = redis::pipe();
    for i in 0..300 {
        let doc = json!({"order_id": format!("stop-{i}"), "status": "paid"});
        pipe.cmd("XADD")
            .arg("paynotify:intake")
            .arg("*")
            .arg("result")
            .arg(doc.to_string())
            .ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();
    let results = results(&redis);
    // A tight loop, not wait_until's polling: the node must be stopped within the few
    // milliseconds its acknowledgement waits.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while results.read("stop-299").await.unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "stop-299 never published"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    node.stop().await;
    assert_eq!(pending(&mut conn).await, 0);
    assert_eq!(xlen(&mut conn, "paynotify:intake").await, 0);
    for i in [0, 150, 299] {
        let (seq, _) = results.read(&format!("stop-{i}")).await.unwrap().unwrap();
        assert_eq!(seq, 1, "stop-{i} was published once");
    }
}
