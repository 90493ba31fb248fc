//! Merchants: their own secrets (verified with the `standardwebhooks` crate), allowed URLs,
//! defaults, rotation, sealing at rest, disabling, and the CLI.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// Registers a merchant whose notifications may go to `prefix`; its first secret.
async fn add(node: &Node, id: &str, prefix: &str, extra: Value) -> (Value, String) {
    let mut doc = json!({"id": id, "allowed_urls": [prefix]});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            doc[k] = v;
        }
    }
    let created: Value = node
        .api()
        .post("/v1/merchants", doc, StatusCode::CREATED)
        .await;
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{created}");
    (created, secret)
}

fn verifies(secret: &str, r: &paynotify_testkit::Received) -> bool {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&r.body, &r.headers)
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchants_callbacks_verify_with_its_secret_and_never_with_another_merchants() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let shared = paynotify::delivery::signing::generate_secret();
    let node = node_with(&redis, |c| c.signing_secrets = vec![shared.clone()]).await;
    let (a, secret_a) = add(
        &node,
        "shop-a",
        &sink.url("/ok/a"),
        json!({"headers": {"X-Shop": "a"}, "timeout_ms": 4000}),
    )
    .await;
    let (_, secret_b) = add(&node, "shop-b", &sink.url("/ok/b"), json!({})).await;
    assert_eq!(a["headers"]["x-shop"], "<redacted>", "{a}");
    // Shown once: reading the merchant shows secret ids, never values.
    let shown: Value = node.api().get("/v1/merchants/shop-a", StatusCode::OK).await;
    assert!(!shown.to_string().contains(&secret_a[6..]), "{shown}");
    assert_eq!(shown["secrets"].as_array().unwrap().len(), 1, "{shown}");
    node.api()
        .post::<Value>(
            "/v1/notifications",
            json!({"id": "pay-a", "merchant": "shop-a", "url": sink.url("/ok/a"), "body": {"paid": true}}),
            StatusCode::CREATED,
        )
        .await;
    let done = node
        .api()
        .wait_state("pay-a", "delivered", Duration::from_secs(10))
        .await;
    let got = sink.received();
    assert_eq!(got.len(), 1, "{done}");
    let r = &got[0];
    assert!(verifies(&secret_a, r), "merchant A's secret must verify");
    assert!(
        !verifies(&secret_b, r),
        "merchant B's secret verified A's callback"
    );
    assert!(
        !verifies(&shared, r),
        "the node-wide secret signed a merchant's callback"
    );
    assert_eq!(r.headers["x-shop"], "a", "the merchant's default header");
    // Where a merchant's notifications may not go, and merchants that do not exist.
    for (doc, field) in [
        (
            json!({"merchant": "shop-a", "url": sink.url("/ok/b")}),
            "url",
        ),
        (
            json!({"merchant": "shop-a", "url": sink.url("/ok/a").replace("127.0.0.1", "localhost")}),
            "url",
        ),
        (
            json!({"merchant": "shop-z", "url": sink.url("/ok/a")}),
            "merchant",
        ),
        (json!({"merchant": 7, "url": sink.url("/ok/a")}), "merchant"),
    ] {
        let (status, body) = node.api().post_any("/v1/notifications", &doc).await;
        assert_eq!(
            (status, body["field"].as_str()),
            (400, Some(field)),
            "{doc}: {body}"
        );
    }
    // Notifications without a merchant keep today's behaviour: the node-wide secret.
    node.api()
        .post::<Value>(
            "/v1/notifications",
            json!({"id": "plain", "url": sink.url("/ok")}),
            StatusCode::CREATED,
        )
        .await;
    node.api()
        .wait_state("plain", "delivered", Duration::from_secs(10))
        .await;
    let plain = sink
        .received()
        .into_iter()
        .find(|r| r.path == "/ok")
        .unwrap();
    assert!(verifies(&shared, &plain));
    assert!(!verifies(&secret_a, &plain));
    // At rest the secrets are sealed: the record in Redis does not hold them.
    let mut conn = redis_conn(&redis).await;
    let record: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("paynotify:merchant:{m:shop-a}")
        .query_async(&mut conn)
        .await
        .unwrap();
    let dump = format!("{record:?}");
    assert!(record.contains_key("sealed"), "{dump}");
    assert!(
        !dump.contains(&secret_a[6..]) && !dump.contains(&secret_a[6..20]),
        "{dump}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_old_one_until_the_grace_ends() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = node_with(&redis, |_| {}).await;
    let (_, first) = add(&node, "shop-r", &sink.url("/ok/"), json!({})).await;
    let send = |id: &'static str| {
        let api = node.api();
        let url = sink.url("/ok/r");
        async move {
            api.post::<Value>(
                "/v1/notifications",
                json!({"id": id, "merchant": "shop-r", "url": url}),
                StatusCode::CREATED,
            )
            .await;
            api.wait_state(id, "delivered", Duration::from_secs(10))
                .await;
        }
    };
    let rotated: Value = node
        .api()
        .post(
            "/v1/merchants/shop-r/secret/rotate",
            json!({}),
            StatusCode::OK,
        )
        .await;
    let second = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    assert!(rotated["secrets"][0]["expires_at"].is_i64(), "{rotated}");
    // Caches on every node see a change within 2 s.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    send("r-1").await;
    let r = sink.received().pop().unwrap();
    let signatures = r.headers["webhook-signature"].to_str().unwrap().to_string();
    assert_eq!(signatures.matches("v1,").count(), 2, "{signatures}");
    assert!(verifies(&first, &r) && verifies(&second, &r));
    // Revealed on request only.
    let revealed: Value = node
        .api()
        .post_empty("/v1/merchants/shop-r/secret/reveal", StatusCode::OK)
        .await;
    let values: Vec<&str> = revealed["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["secret"].as_str().unwrap())
        .collect();
    assert!(values.contains(&first.as_str()) && values.contains(&second.as_str()));
    // A rotation with no grace revokes the old secrets at once (a leaked secret).
    let third: Value = node
        .api()
        .post(
            "/v1/merchants/shop-r/secret/rotate",
            json!({"grace_s": 0}),
            StatusCode::OK,
        )
        .await;
    let third = third["secret"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    send("r-2").await;
    let r = sink.received().pop().unwrap();
    assert!(verifies(&third, &r));
    assert!(!verifies(&first, &r) && !verifies(&second, &r));
    let (status, body) = node
        .api()
        .post_any("/v1/merchants/shop-r/secret/rotate", json!({"grace_s": -1}))
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("grace_s")),
        "{body}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intake_applies_the_merchants_rules_and_a_disabled_merchant_waits() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = node_with(&redis, |c| {
        c.disabled_merchant_recheck = Duration::from_millis(300)
    })
    .await;
    let (_, secret) = add(
        &node,
        "shop-i",
        &sink.url("/body/success"),
        json!({"success": {"body": "success"}, "schedule": [0, 0.2, 0.2]}),
    )
    .await;
    let mut conn = redis_conn(&redis).await;
    for doc in [
        json!({"id": "i-ok", "merchant": "shop-i", "url": sink.url("/body/success")}),
        json!({"id": "i-bad", "merchant": "shop-i", "url": sink.url("/ok")}),
        json!({"id": "i-none", "merchant": "nobody", "url": sink.url("/ok")}),
    ] {
        let _: String = redis::cmd("XADD")
            .arg("paynotify:intake")
            .arg("*")
            .arg("notification")
            .arg(doc.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // The intake takes it in its own time: wait until it is there.
    wait_until(Duration::from_secs(10), || async {
        node.api().get_any("/v1/notifications/i-ok").await.0 == 200
    })
    .await;
    let delivered = node
        .api()
        .wait_state("i-ok", "delivered", Duration::from_secs(10))
        .await;
    assert!(verifies(&secret, &sink.received()[0]), "{delivered}");
    wait_until(Duration::from_secs(10), || {
        let mut conn = conn.clone();
        async move {
            let n: usize = redis::cmd("XLEN")
                .arg("paynotify:rejected")
                .query_async(&mut conn)
                .await
                .unwrap();
            n == 2
        }
    })
    .await;
    let rejected = rejected_entries(&mut conn).await;
    let reasons: Vec<String> = rejected
        .iter()
        .map(|e| e.get::<String>("reason").unwrap())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("`url`")), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("`merchant`") && r.contains("nobody")),
        "{reasons:?}"
    );
    // Disabled: due notifications are not attempted and keep their schedule; enabled again,
    // they go out.
    let off: Value = node
        .api()
        .patch(
            "/v1/merchants/shop-i",
            json!({"disabled": true, "disabled_reason": "maintenance"}),
            StatusCode::OK,
        )
        .await;
    assert_eq!(off["disabled"], true);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    node.api()
        .post::<Value>(
            "/v1/notifications",
            json!({"id": "i-wait", "merchant": "shop-i", "url": sink.url("/body/success")}),
            StatusCode::CREATED,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // It is claimed again every recheck (300 ms here), up to 50 ms before it is due (the
    // prefetch), and handed back at once: seen between two rechecks it is scheduled.
    let waiting = node
        .api()
        .wait_state("i-wait", "scheduled", Duration::from_secs(5))
        .await;
    assert_eq!(
        waiting["attempts"].as_array().map(Vec::len),
        Some(0),
        "{waiting}"
    );
    assert_eq!(sink.count(), 1);
    node.api()
        .patch::<Value>(
            "/v1/merchants/shop-i",
            json!({"disabled": false}),
            StatusCode::OK,
        )
        .await;
    node.api()
        .wait_state("i-wait", "delivered", Duration::from_secs(10))
        .await;
    // Deleted: its pending notifications die naming it.
    node.api()
        .delete("/v1/merchants/shop-i", StatusCode::NO_CONTENT)
        .await;
    node.api()
        .delete("/v1/merchants/shop-i", StatusCode::NOT_FOUND)
        .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_are_listed_in_pages_and_bad_input_is_refused_naming_the_field() {
    let redis = RedisServer::start().unwrap();
    let node = node_with(&redis, |_| {}).await;
    for i in 0..5 {
        add(&node, &format!("m{i}"), "https://m.example/", json!({})).await;
    }
    let (status, body) = node
        .api()
        .post_any(
            "/v1/merchants",
            json!({"id": "m1", "allowed_urls": ["https://m.example/"]}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("exists")),
        "{body}"
    );
    let first: Value = node
        .api()
        .get("/v1/merchants?limit=2", StatusCode::OK)
        .await;
    assert_eq!(first["merchants"].as_array().unwrap().len(), 2);
    assert_eq!(first["next"], "m1");
    let rest: Value = node
        .api()
        .get("/v1/merchants?after=m1&limit=10", StatusCode::OK)
        .await;
    let ids: Vec<&str> = rest["merchants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m2", "m3", "m4"]);
    assert!(rest["next"].is_null());
    for (doc, field) in [
        (json!({"allowed_urls": ["https://m.example/"]}), "id"),
        (
            json!({"id": "x", "allowed_urls": ["https://m.example/?q=1"]}),
            "allowed_urls[0]",
        ),
        (
            json!({"id": "x", "allowed_urls": "https://m.example/"}),
            "allowed_urls",
        ),
        (
            json!({"id": "x", "allowed_urls": ["https://m.example/"], "schedule": "hourly"}),
            "schedule",
        ),
        (
            json!({"id": "x}", "allowed_urls": ["https://m.example/"]}),
            "id",
        ),
    ] {
        let (status, body) = node.api().post_any("/v1/merchants", &doc).await;
        assert_eq!(
            (status, body["field"].as_str()),
            (400, Some(field)),
            "{doc}: {body}"
        );
    }
    let (status, _) = node.api().get_any("/v1/merchants/nope").await;
    assert_eq!(status, 404);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_encryption_key_no_merchant_is_made() {
    let redis = RedisServer::start().unwrap();
    let node = node_with(&redis, |c| c.secret_encryption_keys.clear()).await;
    let (status, body) = node
        .api()
        .post_any(
            "/v1/merchants",
            json!({"id": "m1", "allowed_urls": ["https://m.example/"]}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("no_encryption_key")),
        "{body}"
    );
    node.stop().await;
}

#[test]
fn the_merchant_cli_adds_rotates_disables_and_lists() {
    let redis = RedisServer::start().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
            .arg("merchant")
            .args(args)
            .env("PAYNOTIFY_REDIS_URL", redis.url())
            .env("PAYNOTIFY_SECRET_ENCRYPTION_KEY", ENCRYPTION_KEY)
            .output()
            .unwrap();
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (
            out.status.code(),
            json,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, added, err) = run(&[
        "add",
        "cli-m",
        "--allowed-url",
        "https://cli.example/",
        "--schedule",
        "0,5,60",
        "--header",
        "X-K=v",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(added["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(added["schedule"], json!([0.0, 5.0, 60.0]));
    let (code, _, err) = run(&["add", "cli-m", "--allowed-url", "https://cli.example/"]);
    assert_eq!(code, Some(65), "{err}");
    let (code, rotated, _) = run(&["rotate", "cli-m", "--grace", "1h"]);
    assert_eq!(code, Some(0));
    assert_ne!(rotated["secret"], added["secret"]);
    let (_, revealed, _) = run(&["reveal", "cli-m"]);
    assert_eq!(revealed["secrets"].as_array().unwrap().len(), 2);
    let (_, disabled, _) = run(&["disable", "cli-m", "--reason", "down for 2 days"]);
    assert_eq!(
        (
            disabled["disabled"].clone(),
            disabled["disabled_reason"].clone()
        ),
        (json!(true), json!("down for 2 days"))
    );
    let (_, shown, _) = run(&["show", "cli-m"]);
    assert!(
        shown.get("secret").is_none() && !shown.to_string().contains("whsec_"),
        "{shown}"
    );
    let (_, enabled, _) = run(&["enable", "cli-m"]);
    assert_eq!(enabled["disabled"], false);
    let (_, listed, _) = run(&["list"]);
    assert_eq!(listed["merchants"][0]["id"], "cli-m");
    let (code, _, err) = run(&["show", "nobody"]);
    assert_eq!(code, Some(65), "{err}");
    let (code, _, err) = run(&["delete", "cli-m"]);
    assert_eq!(code, Some(0), "{err}");
}

/// The operational events the sink at `/ok/ops` received, by type.
fn ops_events(sink: &Sink) -> Vec<Value> {
    sink.received()
        .iter()
        .filter(|r| r.path == "/ok/ops")
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
        .collect()
}

fn has_event(sink: &Sink, kind: &str) -> bool {
    ops_events(sink).iter().any(|e| e["type"] == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_counts_attempts_and_failing_recovered_and_dead_events_go_out_signed() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let secret = paynotify::delivery::signing::generate_secret();
    let node = node_with(&redis, |c| {
        c.signing_secrets = vec![secret.clone()];
        c.ops_events_url = Some(sink.url("/ok/ops"));
        c.merchant_failing_after = 3;
    })
    .await;
    add(&node, "flaky", &sink.url("/"), json!({})).await;
    // Fails three times (one health flush apart), then answers.
    let api = node.api();
    api.post::<Value>("/v1/notifications", json!({"id": "f1", "merchant": "flaky", "url": sink.url("/flaky/3"), "body": "f1", "schedule": [0, 1.2, 1.2, 1.2]}), StatusCode::CREATED).await;
    api.post::<Value>(
        "/v1/notifications",
        json!({"id": "d1", "merchant": "flaky", "url": sink.url("/status/410"), "body": "d1"}),
        StatusCode::CREATED,
    )
    .await;
    api.wait_state("f1", "delivered", Duration::from_secs(15))
        .await;
    wait_until(Duration::from_secs(10), || async {
        [
            "merchant.failing",
            "merchant.recovered",
            "notification.dead",
        ]
        .iter()
        .all(|k| has_event(&sink, k))
    })
    .await;
    let events = ops_events(&sink);
    let dead = events
        .iter()
        .find(|e| e["type"] == "notification.dead")
        .unwrap();
    assert_eq!(
        (dead["data"]["id"].clone(), dead["data"]["merchant"].clone()),
        (json!("d1"), json!("flaky")),
        "{dead}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "merchant.failing")
            .count(),
        1,
        "{events:?}"
    );
    for r in sink.received().iter().filter(|r| r.path == "/ok/ops") {
        assert!(
            verifies(&secret, r),
            "ops events are signed with the node's secret"
        );
    }
    let shown: Value = api.get("/v1/merchants/flaky", StatusCode::OK).await;
    let h = &shown["health"];
    assert_eq!(h["last_1h"]["delivered"], 1, "{shown}");
    assert_eq!(h["last_1h"]["failed"], 4, "{shown}"); // three 500s and one 410
    assert_eq!(h["last_24h"]["failed"], 4, "{shown}");
    assert!(
        h["last_1h"]["p99_ms"].is_u64() && h["last_success_at"].is_i64(),
        "{shown}"
    );
    assert_eq!(h["failing"], false, "{shown}");
    let lane = &h["lanes"][0];
    assert_eq!(
        lane["destination"],
        format!("127.0.0.1:{}", sink.addr.port()),
        "{shown}"
    );
    assert_eq!(lane["breaker"], "closed", "{shown}");
    assert!(lane["concurrency_limit"].as_u64().unwrap() >= 1, "{shown}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_failing_longer_than_allowed_is_disabled_and_its_notifications_wait() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = node_with(&redis, |c| {
        c.ops_events_url = Some(sink.url("/ok/ops"));
        c.auto_disable_after = Some(Duration::from_millis(500));
        c.disabled_merchant_recheck = Duration::from_millis(300);
    })
    .await;
    add(&node, "down", &sink.url("/status/"), json!({})).await;
    let api = node.api();
    api.post::<Value>("/v1/notifications", json!({"id": "w1", "merchant": "down", "url": sink.url("/status/503"), "schedule": [0, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]}), StatusCode::CREATED).await;
    wait_until(Duration::from_secs(10), || async {
        has_event(&sink, "merchant.disabled")
    })
    .await;
    let shown: Value = api.get("/v1/merchants/down", StatusCode::OK).await;
    assert_eq!(shown["disabled"], true, "{shown}");
    assert!(
        shown["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("automatically"),
        "{shown}"
    );
    // Nothing is dropped: it waits, with attempts to spare, and no more go out.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = sink
        .received()
        .iter()
        .filter(|r| r.path == "/status/503")
        .count();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = sink
        .received()
        .iter()
        .filter(|r| r.path == "/status/503")
        .count();
    assert_eq!(before, after, "a disabled merchant was still called");
    // Every recheck claims it (up to the prefetch window before it is due), finds the
    // merchant disabled and hands it back: between rechecks it is scheduled.
    let w = api
        .wait_state("w1", "scheduled", Duration::from_secs(3))
        .await;
    assert!(w["attempts"].as_array().unwrap().len() < 10, "{w}");
    node.stop().await;
}
