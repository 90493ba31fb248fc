//! Enqueue on all three paths: HTTP, the intake stream, the CLI. Idempotency, conflicts,
//! refusals that name the field, authentication.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn http_enqueue_is_idempotent_and_conflicts_on_different_content() {
    let (_redis, sink, node) = setup().await;
    let doc = json!({"id": "order-1", "url": sink.url("/ok"), "body": "order-1"});
    let (status, body) = node.api().post_any("/v1/notifications", doc.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created"], true);
    let (status, body) = node.api().post_any("/v1/notifications", doc.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["created"], false);
    node.api()
        .wait_state("order-1", "delivered", Duration::from_secs(10))
        .await;
    // Same id, same content, after delivery: still one notification.
    let (status, _) = node.api().post_any("/v1/notifications", doc).await;
    assert_eq!(status, 200);
    let (status, body) = node
        .api()
        .post_any(
            "/v1/notifications",
            json!({"id": "order-1", "url": sink.url("/ok"), "body": "other"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "conflict");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.counts().get(&b"order-1"[..]).copied(), Some(1));
    node.stop().await;
}

#[tokio::test]
async fn intake_stream_enqueues_once_and_rejects_with_reason() {
    let (redis, sink, node) = setup().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let doc = json!({"id": "order-2", "url": sink.url("/ok"), "body": "order-2"}).to_string();
    for _ in 0..3 {
        let _: String = redis::cmd("XADD")
            .arg("paynotify:intake")
            .arg("*")
            .arg("notification")
            .arg(&doc)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // No id: the entry id becomes the idempotency key.
    let anonymous = json!({"url": sink.url("/ok"), "body": "anonymous"}).to_string();
    let _: String = redis::cmd("XADD")
        .arg("paynotify:intake")
        .arg("*")
        .arg("notification")
        .arg(&anonymous)
        .query_async(&mut conn)
        .await
        .unwrap();
    let conflicting =
        json!({"id": "order-2", "url": sink.url("/ok"), "body": "changed"}).to_string();
    for (field, value) in [
        ("notification", "{not json"),
        (
            "notification",
            r#"{"url": "http://x/", "schedule": "hourly"}"#,
        ),
        ("something", "else"),
        ("notification", conflicting.as_str()),
    ] {
        let _: String = redis::cmd("XADD")
            .arg("paynotify:intake")
            .arg("*")
            .arg(field)
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // An entry over the field-count limit (app servers are trusted, but not unbounded).
    let mut many = redis::cmd("XADD");
    many.arg("paynotify:intake").arg("*");
    for i in 0..=paynotify::intake::MAX_ENTRY_FIELDS {
        many.arg(format!("f{i}")).arg("v");
    }
    let _: String = many.query_async(&mut conn).await.unwrap();
    wait_xlen(&conn, "paynotify:rejected", 5).await;
    node.api()
        .wait_state("order-2", "delivered", Duration::from_secs(10))
        .await;
    wait_until(Duration::from_secs(10), || async {
        sink.counts().contains_key(&b"anonymous"[..])
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.counts().get(&b"order-2"[..]).copied(), Some(1));
    let rejected = rejected_entries(&mut conn).await;
    let reasons: Vec<String> = rejected
        .iter()
        .map(|e| e.get::<String>("reason").unwrap())
        .collect();
    assert!(reasons[0].contains("invalid JSON"), "{reasons:?}");
    assert!(reasons[1].contains("schedule"), "{reasons:?}");
    assert!(
        reasons[2].contains("neither a `notification` nor a `result` field"),
        "{reasons:?}"
    );
    assert!(reasons[3].contains("different content"), "{reasons:?}");
    assert!(reasons[4].contains("the limits are"), "{reasons:?}");
    // Every entry was acknowledged and removed: the stream does not grow.
    let len: i64 = redis::cmd("XLEN")
        .arg("paynotify:intake")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 0);
    node.stop().await;
}

#[tokio::test]
async fn cli_enqueue_is_idempotent() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let doc = json!({"id": "order-3", "url": sink.url("/ok"), "body": "order-3"}).to_string();
    let run = |doc: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
            .args(["enqueue", "--redis-url", &redis.url(), &doc])
            .output()
            .unwrap()
    };
    let first = run(doc.clone());
    assert!(first.status.success(), "{first:?}");
    assert!(String::from_utf8_lossy(&first.stdout).contains("\"created\": true"));
    let second = run(doc.clone());
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("\"created\": false"));
    let conflict = run(json!({"id": "order-3", "url": sink.url("/ok"), "body": "x"}).to_string());
    assert_eq!(conflict.status.code(), Some(65));
    let invalid = run(json!({"url": "nope"}).to_string());
    assert_eq!(invalid.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("field `url`"));

    // The CLI recorded the partition count (the default, on this fresh Redis): the node uses it.
    let node = node_with(&redis, |c| c.partitions = None).await;
    node.api()
        .wait_state("order-3", "delivered", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.counts().get(&b"order-3"[..]).copied(), Some(1));
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args(["show", "--redis-url", &redis.url(), "order-3"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(v["state"], "delivered");
    assert_eq!(v["attempts"][0]["status"], 200);
    node.stop().await;
}

#[tokio::test]
async fn bad_requests_get_400_naming_the_field_and_401_without_key() {
    let redis = RedisServer::start().unwrap();
    let node = Node::start(config(&redis)).await;
    let client = node.api().http().clone();
    let cases = [
        ("{\"url\": ", None),
        (r#"{"body": "x"}"#, Some("url")),
        (
            r#"{"url": "http://m.example/", "schedule": "never"}"#,
            Some("schedule"),
        ),
        (
            r#"{"url": "http://m.example/", "schedule": [0, "x"]}"#,
            Some("schedule[1]"),
        ),
        (
            r#"{"url": "http://m.example/", "timeout_ms": 999999}"#,
            Some("timeout_ms"),
        ),
        (
            r#"{"url": "http://m.example/", "id": "has space"}"#,
            Some("id"),
        ),
    ];
    for (doc, field) in cases {
        let r = client
            .post(node.url("/v1/notifications"))
            .header("content-type", "application/json")
            .body(doc)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{doc}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "invalid");
        if let Some(f) = field {
            assert_eq!(body["field"], f, "{doc}: {body}");
            assert!(body["message"].as_str().unwrap().contains(f));
        }
    }
    let huge = format!(
        r#"{{"url": "http://m.example/", "body": "{}"}}"#,
        "x".repeat(600 * 1024)
    );
    let r = client
        .post(node.url("/v1/notifications"))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let anon = reqwest::Client::new();
    let r = anon
        .post(node.url("/v1/notifications"))
        .body(r#"{"url":"http://m.example/"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = anon
        .get(node.url("/v1/stats"))
        .bearer_auth("wrong-key-wrong-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(node.url("/v1/notifications/unknown"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    node.stop().await;
}

#[tokio::test]
async fn serve_refuses_bad_configuration_with_exit_64() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args(["serve", "--redis-url", "redis://127.0.0.1:1"])
        .env_remove("PAYNOTIFY_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-key"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args([
            "serve",
            "--api-key",
            "0123456789abcdef0",
            "--signing-secret",
            "nope",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--signing-secret"));
}
