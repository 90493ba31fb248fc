//! Delivery semantics: schedules, success rules, failures, dead set, replay, signatures,
//! outbound safety, per-destination limits, lease fencing.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn gaps(times: &[i64]) -> Vec<i64> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test]
async fn explicit_sub_second_schedule_is_followed_then_dead() {
    let (_redis, sink, node) = setup().await;
    let (s, _) = node.api().post_any("/v1/notifications", json!({"id": "s1", "url": sink.url("/status/500"), "body": "s1", "schedule": [0.1, 0.2, 0.3]}))
    .await;
    assert_eq!(s, 201);
    let v = node
        .api()
        .wait_state("s1", "dead", Duration::from_secs(10))
        .await;
    let times: Vec<i64> = sink.received().iter().map(|r| r.at_ms).collect();
    assert_eq!(times.len(), 3);
    let g = gaps(&times);
    assert!(g[0] >= 200 && g[0] < 1500, "{g:?}");
    assert!(g[1] >= 300 && g[1] < 1500, "{g:?}");
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|a| a["status"] == 500));
    // The first attempt waited for its first delay (100 ms from enqueue).
    assert!(attempts[0]["started_at"].as_i64().unwrap() - v["created_at"].as_i64().unwrap() >= 100);
    assert!(
        v["reason"].as_str().unwrap().contains("attempts exhausted"),
        "{v}"
    );
    node.stop().await;
}

#[tokio::test]
async fn success_body_rule_redirects_timeouts_gone_and_retry_after() {
    let (_redis, sink, node) = setup().await;
    let docs = [
        json!({"id": "ok-body", "url": sink.url("/body/success"), "body": "a", "success": {"body": "success"}}),
        json!({"id": "bad-body", "url": sink.url("/body/fail"), "body": "b", "success": {"body": "success"}, "schedule": [0, 0.05]}),
        json!({"id": "plain-2xx", "url": sink.url("/body/anything"), "body": "c"}),
        json!({"id": "redirect", "url": sink.url("/redirect"), "body": "d", "schedule": [0]}),
        json!({"id": "timeout", "url": sink.url("/sleep/3000"), "body": "e", "schedule": [0], "timeout_ms": 200}),
        json!({"id": "gone", "url": sink.url("/status/410"), "body": "f", "schedule": [0, 0.05, 0.05]}),
        json!({"id": "flaky", "url": sink.url("/flaky/2"), "body": "g", "schedule": [0, 0.05, 0.05, 0.05]}),
        json!({"id": "later", "url": sink.url("/retry-after/1"), "body": "h", "schedule": [0, 0.05]}),
    ];
    for d in docs {
        node.api()
            .post::<Value>("/v1/notifications", d, StatusCode::CREATED)
            .await;
    }
    let t = Duration::from_secs(10);
    assert_eq!(
        node.api().wait_state("ok-body", "delivered", t).await["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        node.api().wait_state("plain-2xx", "delivered", t).await["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let v = node.api().wait_state("bad-body", "dead", t).await;
    assert_eq!(v["attempts"].as_array().unwrap().len(), 2);
    assert!(
        v["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("success rule"),
        "{v}"
    );
    assert_eq!(v["attempts"][0]["response"], "fail");
    let v = node.api().wait_state("redirect", "dead", t).await;
    assert_eq!(v["attempts"][0]["status"], 302);
    assert!(
        sink.received().iter().all(|r| r.path != "/ok"),
        "a redirect was followed"
    );
    let v = node.api().wait_state("timeout", "dead", t).await;
    assert!(
        v["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{v}"
    );
    assert!(v["attempts"][0]["latency_ms"].as_u64().unwrap() < 2000);
    let v = node.api().wait_state("gone", "dead", t).await;
    assert_eq!(
        v["attempts"].as_array().unwrap().len(),
        1,
        "410 must stop retries"
    );
    assert!(v["reason"].as_str().unwrap().contains("410"));
    let v = node.api().wait_state("flaky", "delivered", t).await;
    // Delivered entries are compacted: the count of attempts, the delivering one's summary.
    assert_eq!(v["attempts_made"], 3, "{v}");
    assert_eq!(v["attempts"][0]["status"], 200, "{v}");
    let v = node.api().wait_state("later", "dead", t).await;
    let a = v["attempts"].as_array().unwrap();
    let gap = a[1]["started_at"].as_i64().unwrap() - a[0]["started_at"].as_i64().unwrap();
    assert!(gap >= 1000, "Retry-After: 1 not honoured: {gap} ms");
    node.stop().await;
}

#[tokio::test]
async fn dead_list_and_replay_over_http_and_cli() {
    let (redis, sink, node) = setup().await;
    for id in ["d1", "d2", "d3"] {
        node.api()
            .post::<Value>(
                "/v1/notifications",
                json!({"id": id, "url": sink.url("/flaky/1"), "body": id, "schedule": [0]}),
                StatusCode::CREATED,
            )
            .await;
    }
    for id in ["d1", "d2", "d3"] {
        node.api()
            .wait_state(id, "dead", Duration::from_secs(10))
            .await;
    }
    let list = node.api().get::<Value>("/v1/dead", StatusCode::OK).await;
    assert_eq!(list["dead"].as_array().unwrap().len(), 3, "{list}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args(["dead", "list", "--redis-url", &redis.url()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"d2\""));

    node.api()
        .post_empty::<Value>("/v1/dead/d1/replay", StatusCode::OK)
        .await;
    let v = node
        .api()
        .wait_state("d1", "delivered", Duration::from_secs(10))
        .await;
    assert_eq!(v["attempts_made"], 2, "{v}");
    let r = node
        .api()
        .http()
        .post(node.url("/v1/dead/d1/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "a delivered notification is not replayable"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args(["dead", "replay", "--redis-url", &redis.url(), "--all"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"replayed\": 2"));
    node.api()
        .wait_state("d2", "delivered", Duration::from_secs(10))
        .await;
    node.api()
        .wait_state("d3", "delivered", Duration::from_secs(10))
        .await;
    let stats = node.api().get::<Value>("/v1/stats", StatusCode::OK).await;
    assert_eq!(stats["delivered"], 3, "{stats}");
    assert_eq!(stats["dead"], 0, "{stats}");
    node.stop().await;
}

/// With `--signing-key`, every attempt also carries a `v1a` Ed25519 signature that verifies,
/// with an implementation other than the signer's (ed25519-dalek; the node signs with ring),
/// against the public key published at `GET /v1/signing-keys` without an API key; a key from
/// `paynotify keygen` works; the HMAC signature is still there for existing receivers.
#[tokio::test]
async fn asymmetric_signatures_verify_with_the_published_public_key() {
    use base64::Engine;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let b64 = base64::engine::general_purpose::STANDARD;
    let keygen = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .arg("keygen")
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let pair: Value = serde_json::from_slice(&keygen.stdout).unwrap();
    let (signing_key, public_key) = (
        pair["signing_key"].as_str().unwrap().to_string(),
        pair["public_key"].as_str().unwrap().to_string(),
    );
    assert!(signing_key.starts_with("whsk_") && public_key.starts_with("whpk_"));
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let hmac = paynotify::delivery::signing::generate_secret();
    let node = node_with(&redis, |c| {
        c.signing_secrets = vec![hmac.clone()];
        c.signing_keys = vec![signing_key.clone()];
    })
    .await;
    let published: Value = reqwest::get(node.url("/v1/signing-keys"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        published["keys"][0]["public_key"], public_key,
        "{published}"
    );
    assert_eq!(published["keys"][0]["algorithm"], "ed25519");
    node.api()
        .post::<Value>(
            "/v1/notifications",
            json!({"id": "asym-1", "url": sink.url("/ok"), "body": {"paid": true}}),
            StatusCode::CREATED,
        )
        .await;
    node.api()
        .wait_state("asym-1", "delivered", Duration::from_secs(10))
        .await;
    let got = sink.received();
    let r = &got[0];
    let header = |name: &str| r.headers[name].to_str().unwrap().to_string();
    let signatures = header("webhook-signature");
    let v1a: Vec<&str> = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1a,"))
        .collect();
    assert_eq!(v1a.len(), 1, "{signatures}");
    let key_bytes: [u8; 32] = b64.decode(&public_key[5..]).unwrap().try_into().unwrap();
    let key = VerifyingKey::from_bytes(&key_bytes).unwrap();
    let sig_bytes: [u8; 64] = b64.decode(v1a[0]).unwrap().try_into().unwrap();
    let signature = Signature::from_bytes(&sig_bytes);
    let content = |body: &[u8]| {
        let mut c =
            format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).into_bytes();
        c.extend_from_slice(body);
        c
    };
    key.verify(&content(&r.body), &signature)
        .expect("the v1a signature verifies with the published key");
    assert!(key
        .verify(&content(b"{\"paid\":false}"), &signature)
        .is_err());
    let (_, other_public) = paynotify::delivery::signing::generate_key_pair();
    let other: [u8; 32] = b64.decode(&other_public[5..]).unwrap().try_into().unwrap();
    assert!(VerifyingKey::from_bytes(&other)
        .unwrap()
        .verify(&content(&r.body), &signature)
        .is_err());
    // Receivers of the HMAC signature are not affected.
    standardwebhooks::Webhook::new(&hmac)
        .unwrap()
        .verify(&r.body, &r.headers)
        .expect("v1 still verifies beside v1a");
    node.stop().await;
}

#[tokio::test]
async fn signatures_verify_with_the_standardwebhooks_crate_and_bodies_go_out_unchanged() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let new = paynotify::delivery::signing::generate_secret();
    let node = node_with(&redis, |c| {
        c.signing_secrets = vec![old.to_string(), new.clone()]
    })
    .await;
    let form = "charset=utf-8&notify_id=abc&out_trade_no=o-1&sign=Qx%2Bz9%2F%3D%3D&sign_type=RSA2&trade_status=TRADE_SUCCESS";
    node.api()
        .post::<Value>(
            "/v1/notifications",
            json!({"id": "signed-1", "url": sink.url("/ok"), "body": form,
               "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
            StatusCode::CREATED,
        )
        .await;
    node.api().post::<Value>("/v1/notifications", json!({"id": "signed-2", "url": sink.url("/ok"), "body": {"paid": true, "amount": "9.99"}}), StatusCode::CREATED).await;
    node.api()
        .wait_state("signed-1", "delivered", Duration::from_secs(10))
        .await;
    node.api()
        .wait_state("signed-2", "delivered", Duration::from_secs(10))
        .await;
    let got = sink.received();
    assert_eq!(got.len(), 2);
    for r in &got {
        for secret in [old, new.as_str()] {
            standardwebhooks::Webhook::new(secret)
                .unwrap()
                .verify(&r.body, &r.headers)
                .unwrap_or_else(|e| panic!("signature with {secret} did not verify: {e:?}"));
        }
        assert!(
            standardwebhooks::Webhook::new("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
                .unwrap()
                .verify(&r.body, &r.headers)
                .is_err()
        );
    }
    let form_req = got
        .iter()
        .find(|r| r.headers["webhook-id"] == "signed-1")
        .unwrap();
    assert_eq!(&form_req.body[..], form.as_bytes());
    assert_eq!(
        form_req.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let json_req = got
        .iter()
        .find(|r| r.headers["webhook-id"] == "signed-2")
        .unwrap();
    assert_eq!(json_req.headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&json_req.body).unwrap();
    assert_eq!(v["amount"], "9.99");
    node.stop().await;
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = node_with(&redis, |c| c.allow_private_targets = false).await;
    let port = sink.addr.port();
    let targets = [
        ("literal", format!("http://127.0.0.1:{port}/ok")),
        ("dns", format!("http://localhost:{port}/ok")),
        ("v6", format!("http://[::ffff:127.0.0.1]:{port}/ok")),
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/".to_string(),
        ),
    ];
    for (id, url) in &targets {
        node.api()
            .post::<Value>(
                "/v1/notifications",
                json!({"id": id, "url": url, "body": id}),
                StatusCode::CREATED,
            )
            .await;
    }
    for (id, _) in &targets {
        let v = node
            .api()
            .wait_state(id, "dead", Duration::from_secs(10))
            .await;
        assert!(
            v["reason"]
                .as_str()
                .unwrap()
                .contains("private target refused"),
            "{v}"
        );
        assert_eq!(
            v["attempts"].as_array().unwrap().len(),
            1,
            "refusal is final: {v}"
        );
    }
    assert_eq!(sink.count(), 0, "a private target was contacted");
    node.stop().await;
}

#[tokio::test]
async fn a_slow_destination_does_not_hold_up_others() {
    let redis = RedisServer::start().unwrap();
    let slow = Sink::start().await;
    let fast = Sink::start().await;
    let node = node_with(&redis, |c| c.per_destination_concurrency = 4).await;
    for i in 0..40 {
        node.api().post::<Value>("/v1/notifications", json!({"id": format!("slow-{i}"), "url": slow.url("/sleep/2000"), "body": format!("slow-{i}")}), StatusCode::CREATED).await;
    }
    for i in 0..40 {
        node.api().post::<Value>("/v1/notifications", json!({"id": format!("fast-{i}"), "url": fast.url("/ok"), "body": format!("fast-{i}")}), StatusCode::CREATED).await;
    }
    wait_until(Duration::from_secs(10), || async { fast.count() == 40 }).await;
    // The slow destination never had more than its limit at once (and had that many: the
    // limit is a cap, not a trickle), while the fast one got everything meanwhile.
    assert_eq!(
        slow.peak_in_flight(),
        4,
        "peak concurrency at the slow destination"
    );
    let stats = node.api().get::<Value>("/v1/stats", StatusCode::OK).await;
    assert!(stats["delivered"].as_i64().unwrap() >= 40, "{stats}");
    node.stop().await;
}

#[tokio::test]
async fn a_lost_lease_cannot_overwrite_state_and_stalls_end_in_dead() {
    let redis = RedisServer::start().unwrap();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    let now = paynotify::now_ms();
    let n = paynotify::delivery::schema::parse(
        br#"{"id":"fenced","url":"http://m.example/","schedule":[0,1]}"#,
        now,
        || unreachable!(),
    )
    .unwrap();
    store.enqueue(&n, now).await.unwrap();
    let (_, first) = store.claim(0, now, 100, 10, "worker-a", 1).await.unwrap();
    assert_eq!(first.len(), 1);
    // Nothing else is due while the lease runs.
    let (head, none) = store
        .claim(0, now + 50, 100, 10, "worker-b", 1)
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(head, Some(now + 100));
    // The lease expires; worker-b takes over (a stall, not an attempt).
    let (_, second) = store
        .claim(0, now + 150, 100, 10, "worker-b", 1)
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt, 1, "a stall is not counted as an attempt");
    assert_eq!(
        second[0].due_ms, first[0].due_ms,
        "a stall re-claim is due when it was scheduled, not when the lost lease ran out"
    );
    assert_eq!(second[0].due_ms, now);
    // A verdict that is none of the three words is refused whole, not read as "dead".
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let typo: redis::RedisResult<redis::Value> =
        redis::Script::new(include_str!("../../lua/settle.lua"))
            .key("paynotify:{p0}:due")
            .key("paynotify:{p0}:meta")
            .key("paynotify:{p0}:log")
            .key("paynotify:{p0}:done")
            .key("paynotify:{p0}:dead")
            .key("paynotify:{p0}:stats")
            .arg(now + 155)
            .arg("fenced")
            .arg(second[0].token)
            .arg("delivred")
            .arg(0)
            .arg("")
            .arg("{}")
            .invoke_async(&mut conn)
            .await;
    let err = typo.expect_err("an unknown verdict must be an error reply");
    assert!(err.to_string().contains("unknown verdict"), "{err}");
    let shown = store.show("fenced").await.unwrap().unwrap();
    assert_eq!(shown["state"], "delivering", "{shown}");
    let stale = paynotify::delivery::store::Settlement {
        id: "fenced".into(),
        token: first[0].token,
        verdict: paynotify::delivery::store::Settled::Delivered,
        next_ms: 0,
        reason: String::new(),
        record: "{}".into(),
    };
    let (_, applied) = store.settle(0, now + 160, &[stale]).await.unwrap();
    assert_eq!(applied, vec![false], "the old token must be fenced off");
    let renewed = store
        .renew(0, now + 10_000, &[("fenced".into(), first[0].token)])
        .await
        .unwrap();
    assert_eq!(renewed, vec![false]);
    let shown = store.show("fenced").await.unwrap().unwrap();
    assert_eq!(shown["state"], "delivering");
    assert_eq!(shown["owner"], "worker-b");
    assert_eq!(shown["stalls"], 1);
    // A second expiry passes max_stalls = 1: dead, with the reason.
    let (_, third) = store
        .claim(0, now + 300, 100, 10, "worker-c", 1)
        .await
        .unwrap();
    assert!(third.is_empty());
    let shown = store.show("fenced").await.unwrap().unwrap();
    assert_eq!(shown["state"], "dead");
    assert!(
        shown["reason"].as_str().unwrap().contains("stalled"),
        "{shown}"
    );
}

/// Every script that rewrites a meta entry leaves one `Meta` can read with the fields
/// `lua/meta.lua` documents: a claim, a stall re-claim, a release, a dead outcome and a replay,
/// with the due-set member and its score in step; a corrupt entry is an error naming the id.
#[tokio::test]
async fn meta_round_trips_through_stall_release_dead_and_replay() {
    use paynotify::delivery::meta::{id_of_member, Meta, State};
    use paynotify::delivery::store::{Settled, Settlement};

    let redis = RedisServer::start().unwrap();
    let store = store(&redis);
    store.load_scripts().await.unwrap();
    let pk = store.keys().partition(store.keys().partition_of("rt"));
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // The stored entry (only documented fields), decoded, and its member's score in `due`.
    let mut read = async || -> (Meta, Option<i64>) {
        let raw: String = redis::cmd("HGET")
            .arg(&pk.meta)
            .arg("rt")
            .query_async(&mut conn)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&raw).unwrap();
        for key in json.as_object().unwrap().keys() {
            assert!(Meta::FIELDS.contains(&key.as_str()), "{key} in {raw}");
        }
        let meta = Meta::decode("rt", &raw).unwrap();
        assert_eq!(id_of_member(&meta.member), Some("rt"), "{raw}");
        let score: Option<i64> = redis::cmd("ZSCORE")
            .arg(&pk.due)
            .arg(&meta.member)
            .query_async(&mut conn)
            .await
            .unwrap();
        (meta, score)
    };
    let now = paynotify::now_ms();
    let n = paynotify::delivery::schema::parse(
        br#"{"id":"rt","url":"http://m.example/","schedule":[0,1]}"#,
        now,
        || unreachable!(),
    )
    .unwrap();
    store.enqueue(&n, now).await.unwrap();
    let (m, score) = read().await;
    assert_eq!(m.state, State::Scheduled);
    assert_eq!((m.attempts, m.round_base, m.stalls, m.token), (0, 0, 0, 0));
    assert_eq!((m.created, m.next_at, score), (now, Some(now), Some(now)));
    assert_eq!(
        (m.owner.clone(), m.lease_until, m.due_at),
        (None, None, None)
    );
    let member = m.member;

    let (_, first) = store.claim(0, now, 100, 10, "worker-a", 5).await.unwrap();
    let (m, score) = read().await;
    assert_eq!(m.state, State::Delivering);
    assert_eq!(
        (m.token, m.owner.as_deref()),
        (first[0].token, Some("worker-a"))
    );
    assert_eq!(
        (m.lease_until, score, m.due_at),
        (Some(now + 100), Some(now + 100), Some(now))
    );

    // The lease runs out: a stall re-claim counts a stall, not an attempt, and keeps the due time.
    let (_, second) = store
        .claim(0, now + 150, 100, 10, "worker-b", 5)
        .await
        .unwrap();
    let (m, score) = read().await;
    assert_eq!(m.state, State::Delivering);
    assert_eq!((m.attempts, m.stalls), (0, 1));
    assert_eq!(
        (m.token, m.owner.as_deref()),
        (second[0].token, Some("worker-b"))
    );
    assert_eq!((m.lease_until, score), (Some(now + 250), Some(now + 250)));
    assert_eq!((m.due_at, m.next_at), (Some(now), Some(now)));
    assert_eq!(m.member, member);

    // Released: scheduled again without an attempt, no lease.
    let released = store
        .release(0, &[("rt".into(), second[0].token, now + 500)])
        .await
        .unwrap();
    assert_eq!(released, 1);
    let (m, score) = read().await;
    assert_eq!(m.state, State::Scheduled);
    assert_eq!((m.attempts, m.stalls, m.token), (0, 1, second[0].token));
    assert_eq!((m.owner.clone(), m.lease_until), (None, None));
    assert_eq!((m.next_at, score), (Some(now + 500), Some(now + 500)));
    let shown = store.show("rt").await.unwrap().unwrap();
    assert_eq!(shown["state"], "scheduled", "{shown}");
    assert_eq!(shown["next_attempt_at"], now + 500, "{shown}");
    assert_eq!(shown["stalls"], 1, "{shown}");
    assert!(shown.get("owner").is_none(), "{shown}");

    // Claimed again (not a stall) and settled dead.
    let (_, third) = store
        .claim(0, now + 500, 100, 10, "worker-c", 5)
        .await
        .unwrap();
    assert_eq!((third[0].attempt, third[0].due_ms), (1, now + 500));
    let (m, _) = read().await;
    assert_eq!((m.stalls, m.due_at), (1, Some(now + 500)));
    let dead = Settlement {
        id: "rt".into(),
        token: third[0].token,
        verdict: Settled::Dead,
        next_ms: 0,
        reason: "410 Gone / stop".into(),
        record: "{}".into(),
    };
    let (_, applied) = store.settle(0, now + 600, &[dead]).await.unwrap();
    assert_eq!(applied, vec![true]);
    let (m, score) = read().await;
    assert_eq!(m.state, State::Dead);
    assert_eq!((m.attempts, m.round_base, m.stalls), (1, 0, 1));
    assert_eq!(
        (m.finished, m.next_at, score),
        (Some(now + 600), None, None)
    );
    assert_eq!(m.reason.as_deref(), Some("410 Gone / stop"));
    assert_eq!((m.owner.clone(), m.lease_until), (None, None));
    let list = store.dead_list(10).await.unwrap();
    assert_eq!(
        list,
        vec![json!({"id": "rt", "died_at": now + 600, "reason": "410 Gone / stop", "attempts": 1})]
    );
    let shown = store.show("rt").await.unwrap().unwrap();
    assert_eq!(shown["died_at"], now + 600, "{shown}");

    // Replayed: a new round, stalls and the outcome forgotten, the member kept.
    let replayed = store.replay(&["rt".into()], now + 700).await.unwrap();
    assert_eq!(replayed, vec!["rt".to_string()]);
    let (m, score) = read().await;
    assert_eq!(m.state, State::Scheduled);
    assert_eq!((m.attempts, m.round_base, m.stalls), (1, 1, 0));
    assert_eq!((m.next_at, score), (Some(now + 700), Some(now + 700)));
    assert_eq!((m.finished, m.reason.clone()), (None, None));
    assert_eq!((m.member, m.created), (member, now));
    let (_, fourth) = store
        .claim(0, now + 700, 100, 10, "worker-d", 5)
        .await
        .unwrap();
    assert_eq!((fourth[0].attempt, fourth[0].round_index), (2, 0));

    // A corrupt entry is an error naming the id, in both views.
    let _: () = redis::cmd("HSET")
        .arg(&pk.meta)
        .arg("rt")
        .arg(r#"{"s":"limbo"}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = store
        .show("rt")
        .await
        .expect_err("corrupt meta must not render");
    assert!(err.to_string().contains("\"rt\""), "{err}");
    let _: () = redis::cmd("ZADD")
        .arg(&pk.dead)
        .arg(now)
        .arg("rt")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = store
        .dead_list(10)
        .await
        .expect_err("corrupt meta must not list");
    assert!(err.to_string().contains("\"rt\""), "{err}");
}

#[tokio::test]
async fn retention_sweep_forgets_old_delivered_notifications() {
    let (redis, sink, node) = setup().await;
    node.api()
        .post::<Value>(
            "/v1/notifications",
            json!({"id": "old", "url": sink.url("/ok"), "body": "old"}),
            StatusCode::CREATED,
        )
        .await;
    node.api()
        .wait_state("old", "delivered", Duration::from_secs(10))
        .await;
    let store = store(&redis);
    let future = paynotify::now_ms() + 1000;
    let swept = store.sweep_batch(0, future, 0, 100).await.unwrap();
    assert_eq!((swept.done, swept.dead), (1, 0));
    assert!(store.show("old").await.unwrap().is_none());
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for key in [
        "paynotify:{p0}:spec",
        "paynotify:{p0}:meta",
        "paynotify:{p0}:log",
        "paynotify:{p0}:done",
    ] {
        let n: i64 = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0, "{key} still holds data");
    }
    node.stop().await;
}

/// Forgetting keeps pace at volume: thousands delivered and dead with a 1 s retention leave the
/// done and dead sets and the spec, meta and log hashes empty (the old sweep removed 1,000 a
/// minute and left most of them behind).
#[tokio::test]
async fn retention_forgets_thousands_and_redis_shrinks_to_nothing() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = node_with(&redis, |c| {
        c.retention = Duration::from_secs(1);
        c.dead_retention = Duration::from_secs(1);
        // A thousand 500s in a row would open the destination's breaker (and defer the rest
        // for its cooldown); this test is about retention.
        c.breaker_min_requests = 1_000_000;
    })
    .await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    const DELIVERED: usize = 4000;
    const DEAD: usize = 1000;
    let mut pipe = redis::pipe();
    for i in 0..DELIVERED + DEAD {
        let url = if i < DELIVERED {
            sink.url("/ok")
        } else {
            sink.url("/status/500")
        };
        let doc = json!({"id": format!("r-{i}"), "url": url, "body": i, "schedule": [0]});
        pipe.cmd("XADD")
            .arg("paynotify:intake")
            .arg("*")
            .arg("notification")
            .arg(doc.to_string())
            .ignore();
    }
    let () = pipe.query_async(&mut conn).await.unwrap();
    let store = store(&redis);
    wait_until(Duration::from_secs(60), || {
        let store = store.clone();
        async move {
            let s = store.stats(paynotify::now_ms()).await.unwrap();
            s.total_delivered == DELIVERED as i64 && s.total_dead == DEAD as i64
        }
    })
    .await;
    let sizes = |conn: redis::aio::MultiplexedConnection| async move {
        let mut conn = conn;
        let (done, dead, spec, meta, log): (i64, i64, i64, i64, i64) = redis::pipe()
            .cmd("ZCARD")
            .arg("paynotify:{p0}:done")
            .cmd("ZCARD")
            .arg("paynotify:{p0}:dead")
            .cmd("HLEN")
            .arg("paynotify:{p0}:spec")
            .cmd("HLEN")
            .arg("paynotify:{p0}:meta")
            .cmd("HLEN")
            .arg("paynotify:{p0}:log")
            .query_async(&mut conn)
            .await
            .unwrap();
        [done, dead, spec, meta, log]
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = sizes(conn.clone()).await;
        if now == [0; 5] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention left [done, dead, spec, meta, log] = {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "paynotify_retention_forgotten_total {}",
            DELIVERED + DEAD
        )),
        "{metrics}"
    );
    node.stop().await;
}

/// Slow destinations holding all but a few of a node's slots do not stop the scheduler from
/// claiming with the few that are free (it used to wait for a quarter of the slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_destinations_holding_most_slots_do_not_starve_the_others() {
    let redis = RedisServer::start().unwrap();
    let slow = Sink::start().await;
    let fast = Sink::start().await;
    let node = node_with(&redis, |c| {
        c.max_in_flight = 16;
        c.claim_batch = 16;
        // The slow destination may take 15 at once (its lane would start at 8).
        c.lane_initial_concurrency = 32;
    })
    .await;
    for i in 0..15 {
        node.api()
            .post::<Value>("/v1/notifications", json!({"id": format!("slow-{i}"), "url": slow.url("/sleep/8000"), "timeout_ms": 9000}), StatusCode::CREATED)
            .await;
    }
    wait_until(Duration::from_secs(5), || async { slow.count() == 15 }).await;
    node.api()
        .post::<Value>(
            "/v1/notifications",
            json!({"id": "fast-1", "url": fast.url("/ok")}),
            StatusCode::CREATED,
        )
        .await;
    // 15 of 16 slots are held for 8 s; the one free slot is used at once.
    node.api()
        .wait_state("fast-1", "delivered", Duration::from_secs(4))
        .await;
    assert_eq!(fast.count(), 1);
    node.stop().await;
}
