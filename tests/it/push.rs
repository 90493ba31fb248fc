//! Browser push: websockets on several nodes, one Redis, real sockets.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use paynotify::token::Kind;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

async fn publish(node: &Node, order_id: &str, status: &str) -> u64 {
    let r = node
        .api()
        .http()
        .post(node.url(&format!("/v1/orders/{order_id}/result")))
        .json(&json!({"status": status, "data": {"amount": "9.99"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["seq"].as_u64().unwrap()
}

#[tokio::test]
async fn a_subscriber_on_node_a_gets_a_result_published_through_node_b() {
    let redis = RedisServer::start().unwrap();
    let a = Node::start(config(&redis)).await;
    let b = Node::start(config(&redis)).await;
    let mut ws = WsClient::connect(a.addr).await;
    ws.subscribe("order-ab").await;
    assert_eq!(publish(&b, "order-ab", "paid").await, 1);
    let v = ws.next_json(Duration::from_secs(5)).await.unwrap();
    assert_eq!(v["type"], "result");
    assert_eq!(v["order_id"], "order-ab");
    assert_eq!(v["status"], "paid");
    assert_eq!(v["seq"], 1);
    assert_eq!(v["data"]["amount"], "9.99");
    assert!(
        ws.next_json(Duration::from_millis(300)).await.is_none(),
        "a second copy arrived"
    );
}

#[tokio::test]
async fn results_published_before_during_and_after_subscribe_arrive_exactly_once() {
    let redis = RedisServer::start().unwrap();
    let a = node_with(&redis, |c| c.ws_max_subscriptions = 64).await;
    let b = Node::start(config(&redis)).await;
    // Before.
    publish(&b, "before", "paid").await;
    let mut ws = WsClient::connect(a.addr).await;
    ws.subscribe("before").await;
    let v = ws.next_json(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (v["order_id"].clone(), v["seq"].clone()),
        (json!("before"), json!(1))
    );
    // During: the publish races the subscribe, many times.
    let mut ws2 = WsClient::connect(a.addr).await;
    for i in 0..40 {
        let order = format!("during-{i}");
        let sub = async {
            let token = mint_token(Kind::Order, &order);
            ws2.send_json(json!({"type": "subscribe", "order_id": order, "token": token}))
                .await;
        };
        tokio::join!(sub, publish(&b, &order, "paid"));
    }
    let mut seen = std::collections::HashMap::new();
    while let Some(v) = ws2.next_json(Duration::from_millis(700)).await {
        if v["type"] == "result" {
            *seen
                .entry(v["order_id"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
            assert_eq!(v["seq"], 1);
        }
    }
    assert_eq!(seen.len(), 40, "some results were lost: {seen:?}");
    assert!(seen.values().all(|n| *n == 1), "duplicates: {seen:?}");
    // After, and a second result is a new result.
    ws.subscribe("after").await;
    publish(&b, "after", "paid").await;
    publish(&b, "after", "refunded").await;
    let first = ws.next_json(Duration::from_secs(5)).await.unwrap();
    let second = ws.next_json(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (first["seq"].clone(), first["status"].clone()),
        (json!(1), json!("paid"))
    );
    assert_eq!(
        (second["seq"].clone(), second["status"].clone()),
        (json!(2), json!("refunded"))
    );
    assert!(ws.next_json(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn bad_expired_and_other_orders_tokens_get_an_error_frame_and_nothing_else() {
    let (_redis, _sink, node) = setup().await;
    let mut ws = WsClient::connect(node.addr).await;
    let expired = paynotify::token::mint(
        &[TOKEN_SECRET.to_string()],
        paynotify::token::Kind::Order,
        "secret-order",
        paynotify::now_ms() / 1000 - 1,
    )
    .unwrap();
    let device = paynotify::token::mint(
        &[TOKEN_SECRET.to_string()],
        paynotify::token::Kind::Device,
        "secret-order",
        paynotify::now_ms() / 1000 + 60,
    )
    .unwrap();
    for (tok, code) in [
        (mint_token(Kind::Order, "other-order"), "bad_token"),
        (expired, "expired_token"),
        (device, "bad_token"),
        ("v1.99999999999.AAAA".to_string(), "bad_token"),
        ("garbage".to_string(), "bad_token"),
    ] {
        ws.send_json(json!({"type": "subscribe", "order_id": "secret-order", "token": tok}))
            .await;
        let v = ws.next_json(Duration::from_secs(5)).await.unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["code"], code, "{v}");
    }
    publish(&node, "secret-order", "paid").await;
    assert!(
        ws.next_json(Duration::from_millis(500)).await.is_none(),
        "a refused subscriber got the result"
    );
    // Malformed frames get errors too, and the connection stays usable.
    for frame in [
        json!({"type": "subscribe"}),
        json!({"type": "dance"}),
        json!([1, 2]),
    ] {
        ws.send_json(frame).await;
        assert_eq!(
            ws.next_json(Duration::from_secs(5)).await.unwrap()["code"],
            "bad_frame"
        );
    }
    ws.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await.unwrap()["code"],
        "bad_frame"
    );
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await.unwrap()["type"],
        "pong"
    );
}

#[tokio::test]
async fn two_tabs_both_get_the_result_and_an_unsubscribed_one_does_not() {
    let (_redis, _sink, node) = setup().await;
    let mut tab1 = WsClient::connect(node.addr).await;
    let mut tab2 = WsClient::connect(node.addr).await;
    let mut gone = WsClient::connect(node.addr).await;
    for ws in [&mut tab1, &mut tab2, &mut gone] {
        ws.subscribe("order-tabs").await;
    }
    gone.send_json(json!({"type": "unsubscribe", "order_id": "order-tabs"}))
        .await;
    assert_eq!(
        gone.next_json(Duration::from_secs(5)).await.unwrap()["type"],
        "unsubscribed"
    );
    publish(&node, "order-tabs", "paid").await;
    for ws in [&mut tab1, &mut tab2] {
        assert_eq!(
            ws.next_json(Duration::from_secs(5)).await.unwrap()["status"],
            "paid"
        );
    }
    assert!(gone.next_json(Duration::from_millis(500)).await.is_none());
    // Closing tab 1 leaves tab 2 subscribed.
    tab1.close(None).await.unwrap();
    publish(&node, "order-tabs", "refunded").await;
    assert_eq!(
        tab2.next_json(Duration::from_secs(5)).await.unwrap()["status"],
        "refunded"
    );
}

#[tokio::test]
async fn too_many_subscriptions_and_oversized_frames_are_refused() {
    let redis = RedisServer::start().unwrap();
    let node = node_with(&redis, |c| c.ws_max_subscriptions = 3).await;
    let mut ws = WsClient::connect(node.addr).await;
    for i in 0..3 {
        ws.subscribe(&format!("many-{i}")).await;
    }
    let token = mint_token(Kind::Order, "many-3");
    ws.send_json(json!({"type": "subscribe", "order_id": "many-3", "token": token}))
        .await;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await.unwrap()["code"],
        "too_many_subscriptions"
    );
    // An oversized frame ends the connection; the node carries on.
    let big = json!({"type": "subscribe", "order_id": "x", "token": "a".repeat(10_000)});
    let _ = ws.send(Message::Text(big.to_string().into())).await;
    let mut ended = false;
    for _ in 0..10 {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                ended = true;
                break;
            }
            _ => continue,
        }
    }
    assert!(ended, "the connection stayed open after an oversized frame");
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe("still-up").await;
}

#[tokio::test]
async fn a_slow_reader_is_cut_off_and_the_others_carry_on() {
    let redis = RedisServer::start().unwrap();
    let node = node_with(&redis, |c| c.ws_send_queue = 4).await;
    // The slow client has a tiny receive buffer, so the server's writes back up quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.addr).await.unwrap();
    let (slow, _) = tokio_tungstenite::client_async(
        format!("ws://{}/ws", node.addr),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let mut slow = WsClient::from_stream(slow);
    slow.subscribe("busy").await;
    let mut fast = WsClient::connect(node.addr).await;
    fast.subscribe("busy").await;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Some(v) = fast.next_json(Duration::from_secs(10)).await {
            if v["type"] == "result" {
                n += 1;
                if n == 600 {
                    break;
                }
            }
        }
        n
    });
    // The slow client never reads while 600 results of ~12 KB each are published.
    let store = results(&redis);
    let big = "x".repeat(12_000);
    for i in 0..600 {
        let doc = paynotify::push::ResultDoc {
            order_id: "busy".into(),
            status: format!("s{i}"),
            data: json!({"pad": big}),
        };
        paynotify::push::publish(&store, Duration::from_secs(60), &doc)
            .await
            .unwrap();
    }
    assert_eq!(reader.await.unwrap(), 600, "the fast reader missed results");
    // Now read the slow one: it got a prefix, then the server cut it off.
    let mut got = 0;
    let mut closed_with = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), slow.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => got += 1,
            Ok(Some(Ok(Message::Close(frame)))) => {
                closed_with = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(None) | Ok(Some(Err(_))) => break,
            Err(_) => panic!("the slow reader was never cut off"),
        }
    }
    assert!(got < 600, "the slow reader got everything ({got})");
    if let Some(code) = closed_with {
        assert_eq!(code, 1013);
    }
    let stats = node
        .api()
        .http()
        .get(node.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 200);
}

#[tokio::test]
async fn long_poll_answers_at_once_or_when_the_result_lands() {
    let (_redis, _sink, node) = setup().await;
    let client = reqwest::Client::new();
    let url = |order: &str, wait: u64| {
        node.url(&format!(
            "/v1/orders/{order}/result?token={}&wait={wait}",
            mint_token(Kind::Order, order)
        ))
    };
    let waiting = tokio::spawn(client.get(url("lp-1", 10)).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&node, "lp-1", "paid").await;
    let r = waiting.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["status"].clone(), v["seq"].clone()),
        (json!("paid"), json!(1))
    );
    let r = client.get(url("lp-1", 0)).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "paid");
    let r = client.get(url("lp-2", 1)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = client
        .get(node.url(&format!(
            "/v1/orders/lp-1/result?token={}",
            mint_token(Kind::Order, "lp-2")
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn intake_and_cli_publish_and_cli_tokens() {
    let (redis, _sink, node) = setup().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args([
            "token",
            "order",
            "cli-1",
            "cli-2",
            "--ttl",
            "5m",
            "--token-secret",
            TOKEN_SECRET,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let tokens: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(tokens.len(), 2);
    let mut ws = WsClient::connect(node.addr).await;
    for (order, tok) in ["cli-1", "cli-2"].iter().zip(&tokens) {
        ws.send_json(json!({"type": "subscribe", "order_id": order, "token": tok}))
            .await;
        assert_eq!(
            ws.next_json(Duration::from_secs(5)).await.unwrap()["type"],
            "subscribed"
        );
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg("paynotify:intake")
        .arg("*")
        .arg("result")
        .arg(json!({"order_id": "cli-1", "status": "paid"}).to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let v = ws.next_json(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (v["order_id"].clone(), v["status"].clone()),
        (json!("cli-1"), json!("paid"))
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args([
            "publish",
            "--redis-url",
            &redis.url(),
            "cli-2",
            "--status",
            "paid",
            "--data",
            r#"{"n":1}"#,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v = ws.next_json(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (v["order_id"].clone(), v["data"]["n"].clone()),
        (json!("cli-2"), json!(1))
    );
}

#[tokio::test]
async fn subscriptions_come_back_after_redis_restarts() {
    let mut redis = RedisServer::start_with(true).unwrap();
    let node = Node::start(config(&redis)).await;
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe("survivor").await;
    redis.restart().unwrap();
    // The hub notices, reconnects and subscribes again; readiness says when.
    wait_until(Duration::from_secs(20), || async {
        reqwest::get(node.url("/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let store = results(&redis);
    let doc = paynotify::push::ResultDoc {
        order_id: "survivor".into(),
        status: "paid".into(),
        data: json!({}),
    };
    // The pool may need a moment to replace its dead connections.
    let mut seq = None;
    for _ in 0..50 {
        if let Ok(s) = paynotify::push::publish(&store, Duration::from_secs(60), &doc).await {
            seq = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seq.is_some(), "publish never succeeded after the restart");
    let v = ws
        .next_json(Duration::from_secs(10))
        .await
        .expect("no result after the Redis restart");
    assert_eq!(v["status"], "paid");
}

/// Parses Prometheus text into name{labels} -> value, failing on any malformed line.
fn parse_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(name.to_string(), value);
    }
    out
}

#[tokio::test]
async fn metrics_count_connections_subscriptions_and_results() {
    let (_redis, _sink, node) = setup().await;
    let mut one = WsClient::connect(node.addr).await;
    let mut two = WsClient::connect(node.addr).await;
    one.subscribe("m-1").await;
    one.subscribe("m-2").await;
    two.subscribe("m-1").await;
    publish(&node, "m-1", "paid").await;
    one.next_json(Duration::from_secs(5)).await.unwrap();
    two.next_json(Duration::from_secs(5)).await.unwrap();
    let text = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let m = parse_metrics(&text);
    assert_eq!(m["paynotify_ws_connections"], 2.0, "{text}");
    assert_eq!(m["paynotify_ws_subscriptions"], 3.0, "{text}");
    assert_eq!(m["paynotify_orders_followed"], 2.0, "{text}");
    assert_eq!(m["paynotify_results_published_total"], 1.0, "{text}");
    assert_eq!(m["paynotify_results_pushed_total"], 2.0, "{text}");
    assert_eq!(m["paynotify_pubsub_connected"], 1.0, "{text}");
    assert_eq!(m["paynotify_ready"], 1.0, "{text}");
    assert_eq!(m["paynotify_devices_online"], 0.0, "{text}");
    assert_eq!(m["paynotify_intake_lag"], 0.0, "{text}");
    // The histograms are there, with their +Inf bucket, sum and count.
    for h in [
        "paynotify_lateness_seconds",
        "paynotify_attempt_duration_seconds",
    ] {
        assert!(
            m.contains_key(&format!("{h}_bucket{{le=\"+Inf\"}}")),
            "{h}: {text}"
        );
        assert!(m.contains_key(&format!("{h}_count")), "{h}: {text}");
    }
}

#[tokio::test]
async fn a_socket_that_stops_answering_pings_is_closed() {
    let redis = RedisServer::start().unwrap();
    let node = node_with(&redis, |c| c.ws_ping_interval = Duration::from_millis(200)).await;
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe("quiet").await;
    // Not reading means not answering pings (the client answers them as it reads).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut closed = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                closed = Some(frame.map(|f| u16::from(f.code)));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(None) | Ok(Some(Err(_))) => break,
            Err(_) => panic!("the silent socket was not closed"),
        }
    }
    assert_eq!(
        closed,
        Some(Some(1011)),
        "expected a close with 1011 (ping timeout)"
    );
    let m = parse_metrics(
        &reqwest::get(node.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(
        m["paynotify_ws_subscriptions"], 0.0,
        "the closed socket's subscription is gone"
    );
}

#[tokio::test]
async fn a_subscription_ends_when_its_token_expires() {
    let redis = RedisServer::start().unwrap();
    let node = node_with(&redis, |c| c.ws_ping_interval = Duration::from_millis(300)).await;
    let short = paynotify::token::mint(
        &[TOKEN_SECRET.to_string()],
        paynotify::token::Kind::Order,
        "brief-order",
        paynotify::now_ms() / 1000 + 2,
    )
    .unwrap();
    let mut ws = WsClient::connect(node.addr).await;
    ws.send_json(json!({"type": "subscribe", "order_id": "brief-order", "token": short}))
        .await;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await.unwrap()["type"],
        "subscribed"
    );
    // Within a ping interval of the expiry, the subscription ends with an error frame...
    let v = ws.next_json(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (v["code"].clone(), v["order_id"].clone()),
        (json!("expired_token"), json!("brief-order")),
        "{v}"
    );
    // ...and later results for the order no longer arrive on this connection.
    publish(&node, "brief-order", "paid").await;
    assert!(ws.next_json(Duration::from_millis(500)).await.is_none());
}

#[tokio::test]
async fn a_frame_flood_is_rate_limited_then_closed_and_others_are_unaffected() {
    use paynotify::push::session::{CLIENT_FRAME_BURST, MAX_REFUSED_FRAMES};
    let redis = RedisServer::start().unwrap();
    let node = Node::start(config(&redis)).await;
    let mut flood = WsClient::connect(node.addr).await;
    let sent = CLIENT_FRAME_BURST + MAX_REFUSED_FRAMES + 10;
    for _ in 0..sent {
        // Sends can fail once the server has closed: that is the point.
        let _ = flood
            .send(Message::Text(json!({"type": "ping"}).to_string().into()))
            .await;
    }
    let (mut pongs, mut limited, mut close_code) = (0, 0, None);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), flood.next()).await {
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("pong") => pongs += 1,
                    _ if v["code"] == "rate_limited" => limited += 1,
                    _ => panic!("unexpected frame {v}"),
                }
            }
            Message::Close(frame) => {
                close_code = frame.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    // The burst is served; then each frame is refused, until the connection is closed.
    assert!(pongs >= CLIENT_FRAME_BURST, "{pongs} pongs");
    assert!(pongs < sent, "{pongs} pongs");
    assert_eq!(limited, MAX_REFUSED_FRAMES - 1, "{limited} refusals");
    assert_eq!(close_code, Some(1008));
    // Another browser subscribes and gets its result as usual.
    let mut calm = WsClient::connect(node.addr).await;
    calm.subscribe("order-calm").await;
    publish(&node, "order-calm", "paid").await;
    let v = calm.next_json(Duration::from_secs(5)).await.unwrap();
    assert_eq!(v["status"], "paid", "{v}");
}

/// The `calls` of a command in `INFO commandstats` (0 when never called).
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// 1,000 long-polls whose clients give up mid-wait leave nothing behind: no follower in the
/// hub, no shard subscription in Redis (the handler's registration is a guard dropped with its
/// future). A poll without `wait` subscribes to nothing, and a failed read of the stored result
/// is an error, not "no result yet".
#[tokio::test]
async fn abandoned_long_polls_leave_no_subscription_behind() {
    let (mut redis, _sink, node) = setup().await;
    let client = reqwest::Client::new();
    let orders: Vec<String> = (0..1000).map(|i| format!("gone-{i}")).collect();
    let mut polls = tokio::task::JoinSet::new();
    for order in &orders {
        let url = node.url(&format!(
            "/v1/orders/{order}/result?token={}&wait=30",
            mint_token(Kind::Order, order)
        ));
        let client = client.clone();
        polls.spawn(async move { client.get(url).send().await });
    }
    let followed = |node: &Node| {
        let url = node.url("/metrics");
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            parse_metrics(&text)["paynotify_orders_followed"]
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while followed(&node).await < 1000.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the long-polls never all followed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The clients give up: their connections close mid-wait.
    polls.abort_all();
    while polls.join_next().await.is_some() {}
    drop(client);
    let keys = paynotify::redis::keys::Keys::new("paynotify", 1);
    let rc = redis::Client::open(redis.url()).unwrap();
    let mut conn = rc.get_multiplexed_async_connection().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("SHARDNUMSUB");
        for order in &orders {
            cmd.arg(keys.order_channel(order));
        }
        let counts: Vec<redis::Value> = cmd.query_async(&mut conn).await.unwrap();
        let subscribed: i64 = counts
            .chunks(2)
            .map(|c| redis::from_redis_value::<i64>(c[1].clone()).unwrap())
            .sum();
        let hub = followed(&node).await;
        if subscribed == 0 && hub == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "abandoned polls left {hub} orders followed and {subscribed} shard subscriptions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Without wait: the stored result, no subscription at all.
    let before = command_calls(&mut conn, "ssubscribe").await;
    for _ in 0..20 {
        let r = reqwest::get(node.url(&format!(
            "/v1/orders/now-1/result?token={}",
            mint_token(Kind::Order, "now-1")
        )))
        .await
        .unwrap();
        assert_eq!(r.status(), 204);
    }
    assert_eq!(command_calls(&mut conn, "ssubscribe").await, before);
    // Redis is gone: the poll says so instead of "no result yet".
    redis.stop();
    let r = reqwest::get(node.url(&format!(
        "/v1/orders/now-1/result?token={}",
        mint_token(Kind::Order, "now-1")
    )))
    .await
    .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unavailable", "{body}");
}
