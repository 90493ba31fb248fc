//! Devices on TCP and on the `/device` websocket: calls across nodes with deadlines,
//! heartbeats, presence, bad input.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use paynotify::token::Kind;

use crate::support::*;

/// An authenticated POST of `body` to `path` on `node`: (status, JSON body).
async fn post(node: &Node, path: &str, body: Value) -> (u16, Value) {
    let r = node
        .api()
        .http()
        .post(node.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// Node A, holding devices that may stay silent for 30 s, and node B, which calls them.
async fn patient_pair(redis: &RedisServer) -> (Node, Node) {
    let mut c = config(redis);
    c.device_heartbeat = Duration::from_secs(30);
    let a = Node::start_with_devices(c).await;
    (a, Node::start(config(redis)).await)
}

async fn call(node: &Node, id: &str, method: &str, timeout_ms: u64) -> (u16, Value) {
    let body = json!({"method": method, "params": {"lane": 2}, "timeout_ms": timeout_ms});
    post(node, &format!("/v1/devices/{id}/call"), body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_node_b_reaches_a_device_on_node_a() {
    let redis = RedisServer::start().unwrap();
    let a = Node::start_with_devices(config(&redis)).await;
    let b = Node::start(config(&redis)).await;
    let gate = DeviceClient::online(a.device_addr.unwrap(), "gate-1")
        .await
        .serve_echo();
    let (status, body) = call(&b, "gate-1", "amount_due", 3000).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["echo"], "amount_due");
    assert_eq!(body["result"]["params"]["lane"], 2);
    let (status, body) = call(&b, "gate-1", "fail", 3000).await;
    assert_eq!((status, body["code"].clone()), (502, json!("device_error")));
    assert_eq!(body["message"], "jammed");
    let (status, body) = call(&b, "nobody", "amount_due", 3000).await;
    assert_eq!(
        (status, body["code"].clone()),
        (404, json!("device_offline"))
    );
    let presence = b
        .api()
        .get::<Value>("/v1/devices/gate-1", StatusCode::OK)
        .await;
    assert_eq!(presence["online"], true);
    assert!(presence["connected_since"].as_i64().unwrap() > 0);
    assert_eq!(
        post(&b, "/v1/devices/nobody/send", json!({"open": true}))
            .await
            .0,
        404
    );
    gate.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_device_times_out_without_holding_up_the_others() {
    let redis = RedisServer::start().unwrap();
    // The black hole sends no heartbeats either: give it longer than the call's deadline.
    let (a, b) = patient_pair(&redis).await;
    // This device reads nothing and answers nothing, but its connection stays up.
    let _hole = DeviceClient::online(a.device_addr.unwrap(), "hole").await;
    let mut healthy = Vec::new();
    for i in 0..50 {
        healthy.push(
            DeviceClient::online(a.device_addr.unwrap(), &format!("ok-{i}"))
                .await
                .serve_echo(),
        );
    }
    let started = Instant::now();
    let stuck = tokio::spawn({
        let (client, b_url) = (b.api().http().clone(), b.url("/v1/devices/hole/call"));
        async move {
            let t = Instant::now();
            let r = client
                .post(b_url)
                .json(&json!({"method": "amount_due", "timeout_ms": 10_000}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), t.elapsed())
        }
    });
    // Meanwhile 1,000 concurrent calls to healthy devices all succeed while the stuck one
    // is still waiting (its deadline is long, so a slow machine does not change the order):
    // nothing queues behind an unanswered call.
    let calls = (0..1000).map(|i| {
        let b = &b;
        async move {
            call(b, &format!("ok-{}", i % 50), "amount_due", 3000)
                .await
                .0
        }
    });
    let statuses = futures::future::join_all(calls).await;
    assert!(
        !stuck.is_finished(),
        "the stuck call ended before the others"
    );
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 1000, "{statuses:?}");
    let (status, took) = stuck.await.unwrap();
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_millis(10_000) && took < Duration::from_millis(13_000),
        "{took:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    for h in healthy {
        h.abort();
    }
}

#[tokio::test]
async fn a_silent_device_is_offline_within_one_and_a_half_heartbeats() {
    let redis = RedisServer::start().unwrap();
    let a = device_node_with(&redis, |c| c.device_heartbeat = Duration::from_millis(400)).await;
    let mut d = DeviceClient::online(a.device_addr.unwrap(), "quiet-gate").await;
    // Pings keep it alive.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        d.send(json!({"type": "ping"})).await;
        assert_eq!(
            d.recv(Duration::from_secs(2)).await.unwrap()["type"],
            "pong"
        );
    }
    let silent_since = Instant::now();
    let goodbye = d.recv(Duration::from_secs(5)).await.unwrap();
    let took = silent_since.elapsed();
    assert_eq!(
        goodbye,
        json!({"type": "goodbye", "reason": "heartbeat timeout"})
    );
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let presence = a
        .api()
        .get::<Value>("/v1/devices/quiet-gate", StatusCode::OK)
        .await;
    assert_eq!(presence["online"], false);
}

#[tokio::test]
async fn a_device_that_reconnects_to_another_node_takes_its_calls_along() {
    let redis = RedisServer::start().unwrap();
    let a = device_node_with(&redis, |c| c.node_id = "node-a".into()).await;
    let b = device_node_with(&redis, |c| c.node_id = "node-b".into()).await;
    let mut old = DeviceClient::online(a.device_addr.unwrap(), "roamer").await;
    assert_eq!(
        b.api()
            .get::<Value>("/v1/devices/roamer", StatusCode::OK)
            .await["node"],
        "node-a"
    );
    let new = DeviceClient::online(b.device_addr.unwrap(), "roamer")
        .await
        .serve_echo();
    // The old connection is told to go.
    let bye = old.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(bye["type"], "goodbye");
    let (status, body) = call(&a, "roamer", "amount_due", 3000).await;
    assert_eq!(status, 200, "{body}");
    let presence = a
        .api()
        .get::<Value>("/v1/devices/roamer", StatusCode::OK)
        .await;
    assert_eq!(presence["online"], true);
    assert_eq!(
        presence["node"], "node-b",
        "presence must name the new node"
    );
    new.abort();
}

/// A caller trusts its cache of where a device is for 30 s: after the device moves, the node
/// the cache names answers "offline" and the call is retried on fresh presence, so it reaches
/// the device's new connection, not a 404.
#[tokio::test]
async fn a_caller_whose_cache_names_a_devices_old_node_follows_it_to_the_new_one() {
    let redis = RedisServer::start().unwrap();
    let a = device_node_with(&redis, |c| c.node_id = "node-a".into()).await;
    let b = device_node_with(&redis, |c| c.node_id = "node-b".into()).await;
    let tagged = |via: &'static str| {
        move |frame: &Value| {
            (frame["type"] == "call")
                .then(|| json!({"type": "reply", "id": frame["id"], "result": {"via": via}}))
        }
    };
    let old = DeviceClient::online(a.device_addr.unwrap(), "roamer")
        .await
        .serve(None, tagged("old"));
    // Through b: b now caches "node-a" for the device.
    let (status, body) = call(&b, "roamer", "where", 3000).await;
    assert_eq!(
        (status, &body["result"]["via"]),
        (200, &json!("old")),
        "{body}"
    );
    let new = DeviceClient::online(b.device_addr.unwrap(), "roamer")
        .await
        .serve(None, tagged("new"));
    // Node a has let the old connection go: it no longer holds the device.
    wait_until(Duration::from_secs(10), || async {
        metric(&a, "devices_online").await == 0.0
    })
    .await;
    let (status, body) = call(&b, "roamer", "where", 3000).await;
    assert_eq!(
        (status, &body["result"]["via"]),
        (200, &json!("new")),
        "{body}"
    );
    old.abort();
    new.abort();
}

#[tokio::test]
async fn bad_tokens_oversized_frames_and_garbage_are_refused() {
    let redis = RedisServer::start().unwrap();
    let a = Node::start_with_devices(config(&redis)).await;
    let order_token = paynotify::token::mint(
        &[TOKEN_SECRET.to_string()],
        paynotify::token::Kind::Order,
        "gate-x",
        paynotify::now_ms() / 1000 + 60,
    )
    .unwrap();
    for (token, code) in [
        (mint_token(Kind::Device, "other"), "bad_token"),
        (order_token, "bad_token"),
        ("junk".into(), "bad_token"),
    ] {
        let (mut d, first) = DeviceClient::tcp(a.device_addr.unwrap(), "gate-x", &token).await;
        assert_eq!(
            (first["type"].clone(), first["code"].clone()),
            (json!("error"), json!(code))
        );
        assert!(
            d.recv(Duration::from_secs(2)).await.is_none(),
            "the connection stayed open"
        );
    }
    // Garbage instead of a hello.
    let stream = TcpStream::connect(a.device_addr.unwrap()).await.unwrap();
    let (r, mut w) = stream.into_split();
    w.write_all(b"\x00\xff garbage\n").await.unwrap();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await.unwrap();
    assert!(line.contains("\"error\""), "{line}");
    // An oversized frame after a good hello ends the connection with an error.
    let mut d = DeviceClient::online(a.device_addr.unwrap(), "gate-y").await;
    d.send(json!({"type": "ping", "pad": "x".repeat(10_000)}))
        .await;
    let err = d.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(err["code"], "frame_too_large");
    // The node is fine.
    let _ok = DeviceClient::online(a.device_addr.unwrap(), "gate-z").await;
}

/// A Redis, a sink for device events, and a node that sends them there.
async fn events_setup() -> (RedisServer, Sink, Node) {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let a = device_node_with(&redis, |c| c.device_events_url = Some(sink.url("/ok"))).await;
    (redis, sink, a)
}

#[tokio::test]
async fn device_events_become_notifications_for_the_app() {
    let (_redis, sink, a) = events_setup().await;
    let mut d = DeviceClient::online(a.device_addr.unwrap(), "vending-7").await;
    d.send(json!({"type": "event", "name": "coin_jam", "data": {"slot": 3}}))
        .await;
    let ack = d.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(ack["type"], "event_ack", "{ack}");
    wait_until(Duration::from_secs(10), || async { sink.count() == 1 }).await;
    let got: Value = serde_json::from_slice(&sink.received()[0].body).unwrap();
    assert_eq!(got["device_id"], "vending-7");
    assert_eq!(got["event"], "coin_jam");
    assert_eq!(got["data"]["slot"], 3);
    let shown = a.api().notification(ack["id"].as_str().unwrap()).await;
    assert_eq!(shown["state"], "delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_connects_devices_that_answer_calls() {
    let redis = RedisServer::start().unwrap();
    let a = Node::start_with_devices(config(&redis)).await;
    let mut sim = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args([
            "simulate-devices",
            "--connect",
            &a.device_addr.unwrap().to_string(),
        ])
        .args([
            "--count",
            "5",
            "--black-hole",
            "1",
            "--heartbeat",
            "1s",
            "--token-secret",
            TOKEN_SECRET,
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The simulator connects its devices in parallel: wait for each one the test calls.
    for id in ["sim-0", "sim-4"] {
        wait_until(Duration::from_secs(10), || async {
            let v = a
                .api()
                .get::<Value>(&format!("/v1/devices/{id}"), StatusCode::OK)
                .await;
            v["online"] == true
        })
        .await;
    }
    let (status, body) = call(&a, "sim-0", "amount_due", 3000).await;
    assert_eq!(
        (status, body["result"]["echo"].clone()),
        (200, json!("amount_due"))
    );
    let (status, _) = call(&a, "sim-4", "amount_due", 300).await;
    assert_eq!(status, 504, "the black-holed simulated device answered");
    let _ = sim.kill();
    let _ = sim.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_websocket_speaks_the_same_frames() {
    let redis = RedisServer::start().unwrap();
    let a = Node::start_with_devices(config(&redis)).await;
    let b = Node::start(config(&redis)).await;
    let (mut d, welcome) =
        DeviceClient::ws(a.addr, "kiosk-1", &mint_token(Kind::Device, "kiosk-1")).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    d.send(json!({"type": "ping"})).await;
    assert_eq!(
        d.recv(Duration::from_secs(5)).await.unwrap()["type"],
        "pong"
    );
    let echo = d.serve_echo();
    let (status, body) = call(&b, "kiosk-1", "amount_due", 3000).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["echo"], "amount_due");
    // A TCP connection for the same device replaces the websocket one.
    let tcp = DeviceClient::online(a.device_addr.unwrap(), "kiosk-1")
        .await
        .serve_echo();
    echo.await.unwrap();
    let (status, _) = call(&b, "kiosk-1", "amount_due", 3000).await;
    assert_eq!(status, 200);
    tcp.abort();
    // Refusals: a bad token, garbage, an oversized frame.
    let (mut bad, first) =
        DeviceClient::ws(a.addr, "kiosk-2", &mint_token(Kind::Device, "other")).await;
    assert_eq!(first["code"], "bad_token", "{first}");
    assert!(bad.recv(Duration::from_secs(2)).await.is_none());
    let mut garbage = DeviceClient::ws_unintroduced(a.addr).await;
    garbage
        .send_message(Message::Binary(vec![0u8, 0xff, 1].into()))
        .await;
    let err = garbage.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(err["code"], "bad_frame", "{err}");
    let (mut big, _) =
        DeviceClient::ws(a.addr, "kiosk-3", &mint_token(Kind::Device, "kiosk-3")).await;
    big.send(json!({"type": "ping", "pad": "x".repeat(10_000)}))
        .await;
    let err = big.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(err["code"], "frame_too_large", "{err}");
    let (_ok, welcome) =
        DeviceClient::ws(a.addr, "kiosk-4", &mint_token(Kind::Device, "kiosk-4")).await;
    assert_eq!(welcome["type"], "welcome");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_answers_gets_at_most_256_calls_in_flight() {
    let redis = RedisServer::start().unwrap();
    let a = device_node_with(&redis, |c| c.device_heartbeat = Duration::from_secs(30)).await;
    let _hole = DeviceClient::online(a.device_addr.unwrap(), "jammed").await;
    let calls = (0..300).map(|_| call(&a, "jammed", "amount_due", 2000));
    let results = futures::future::join_all(calls).await;
    let busy: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 429)
        .map(|(_, b)| b)
        .collect();
    let timed_out = results.iter().filter(|(s, _)| *s == 504).count();
    // Exactly 256 calls wait for the device; the rest are refused at once.
    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert_eq!(timed_out + busy.len(), 300, "{statuses:?}");
    assert_eq!((timed_out, busy.len()), (256, 44), "{statuses:?}");
    assert_eq!(busy[0]["code"], "device_busy");
    // Calls past their deadline are forgotten: the device takes calls again.
    let (status, _) = call(&a, "jammed", "amount_due", 300).await;
    assert_eq!(status, 504);
}

/// A connection's expiry timer follows the earliest deadline of its pending calls: a short call
/// written after long ones gives its slot back at its own deadline, not at theirs (the timer
/// lives across the connection's loop and is moved earlier when such a call is written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_call_behind_long_ones_gives_its_slot_back_at_its_own_deadline() {
    let redis = RedisServer::start().unwrap();
    let a = device_node_with(&redis, |c| c.device_heartbeat = Duration::from_secs(60)).await;
    let _hole = DeviceClient::online(a.device_addr.unwrap(), "slow-gate").await;
    let cap = paynotify::devices::MAX_CALLS_IN_FLIGHT;
    // All slots but one held by calls that wait 30 s.
    let long = futures::future::join_all(
        (0..cap - 1).map(|_| call(&a, "slow-gate", "amount_due", 30_000)),
    );
    let probe = async {
        wait_until(Duration::from_secs(10), || async {
            metric(&a, "device_calls_waiting").await as usize == cap - 1
        })
        .await;
        // The last slot, for 300 ms.
        assert_eq!(call(&a, "slow-gate", "amount_due", 300).await.0, 504);
        // Its slot comes back long before the others' deadlines: a later short call is
        // admitted (504 at its deadline) instead of refused (429).
        let mut statuses = Vec::new();
        for _ in 0..20 {
            let (status, _) = call(&a, "slow-gate", "amount_due", 300).await;
            statuses.push(status);
            if status == 504 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        statuses
    };
    tokio::select! {
        statuses = probe => assert_eq!(statuses.last(), Some(&504), "{statuses:?}"),
        _ = long => panic!("the 30 s calls ended first"),
    }
}

#[tokio::test]
async fn a_device_connection_ends_when_its_token_expires() {
    let redis = RedisServer::start().unwrap();
    let a = Node::start_with_devices(config(&redis)).await;
    let short = paynotify::token::mint(
        &[TOKEN_SECRET.to_string()],
        paynotify::token::Kind::Device,
        "brief",
        paynotify::now_ms() / 1000 + 2,
    )
    .unwrap();
    let (mut d, welcome) = DeviceClient::tcp(a.device_addr.unwrap(), "brief", &short).await;
    assert_eq!(welcome["type"], "welcome");
    let mut last = None;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        d.send(json!({"type": "ping"})).await;
        match d.recv(Duration::from_millis(500)).await {
            Some(v) if v["type"] == "pong" => continue,
            other => {
                last = other;
                break;
            }
        }
    }
    assert_eq!(
        last,
        Some(json!({"type": "goodbye", "reason": "token expired"}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_say_when_the_device_queue_is_full_and_oversized_payloads_are_refused() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = patient_pair(&redis).await;
    // A device that reads what it is sent gets the message (sent through the other node).
    let mut reader = DeviceClient::online(a.device_addr.unwrap(), "reader").await;
    assert_eq!(
        post(&b, "/v1/devices/reader/send", json!({"open": true}))
            .await
            .0,
        202
    );
    let frame = reader.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(frame, json!({"type": "message", "data": {"open": true}}));
    // Params or data that would not fit in a device frame are refused, naming the field.
    let big = "x".repeat(paynotify::devices::MAX_DEVICE_PAYLOAD);
    let (status, body) = post(&b, "/v1/devices/reader/send", json!({ "pad": big })).await;
    assert_eq!(status, 413);
    assert_eq!(
        (body["code"].as_str(), body["field"].as_str()),
        (Some("too_large"), Some("data"))
    );
    assert_eq!(
        post(
            &b,
            "/v1/devices/reader/call",
            json!({"method": "m", "params": { "pad": big }})
        )
        .await
        .0,
        413
    );
    // A device that stops reading: once the socket buffers and its queue are full, sends are
    // refused with 429 device_busy instead of being accepted and dropped.
    let _stuck = DeviceClient::online(a.device_addr.unwrap(), "stuck").await;
    let data = json!({ "pad": "y".repeat(paynotify::devices::MAX_DEVICE_PAYLOAD - 20) });
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut busy_body = Value::Null;
    for _ in 0..60 {
        let sends = (0..50).map(|_| {
            b.api()
                .http()
                .post(b.url("/v1/devices/stuck/send"))
                .json(&data)
                .send()
        });
        for r in futures::future::join_all(sends).await {
            let r = r.unwrap();
            let status = r.status().as_u16();
            *statuses.entry(status).or_default() += 1;
            if status == 429 {
                busy_body = r.json().await.unwrap();
            }
        }
        if statuses.contains_key(&429) {
            break;
        }
    }
    assert!(statuses.contains_key(&429), "{statuses:?}");
    assert_eq!(busy_body["code"], "device_busy", "{busy_body}");
    assert!(
        statuses.keys().all(|s| [202, 429, 404].contains(s)),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn an_event_flood_is_rate_limited_and_every_acknowledged_event_is_delivered() {
    use paynotify::devices::EVENT_BURST;
    let (_redis, sink, a) = events_setup().await;
    let mut d = DeviceClient::online(a.device_addr.unwrap(), "chatty").await;
    let sent = EVENT_BURST * 2;
    for i in 0..sent {
        d.send(json!({"type": "event", "name": "tick", "data": {"i": i}}))
            .await;
    }
    let (mut acked, mut limited) = (0, 0);
    for _ in 0..sent {
        let v = d.recv(Duration::from_secs(5)).await.unwrap();
        match v["type"].as_str() {
            Some("event_ack") => acked += 1,
            _ if v["code"] == "rate_limited" => limited += 1,
            _ => panic!("unexpected frame {v}"),
        }
    }
    assert!(
        acked >= EVENT_BURST as usize && limited > 0,
        "{acked} acked, {limited} limited"
    );
    assert_eq!(acked + limited, sent as usize);
    // What was acknowledged was stored and is delivered; nothing else was.
    wait_until(Duration::from_secs(10), || async { sink.count() == acked }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.count(), acked);
    // The connection stays up.
    d.send(json!({"type": "ping"})).await;
    assert_eq!(
        d.recv(Duration::from_secs(5)).await.unwrap()["type"],
        "pong"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_listener_speaks_tls_only_when_given_a_certificate() {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let pki = crate::tls::Pki::new();
    let redis = RedisServer::start().unwrap();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let a = device_node_with(&redis, |c| c.device_tls = Some((cert, key))).await;
    let b = Node::start(config(&redis)).await;
    // A device that trusts the CA connects with TLS and is called through the other node.
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = TcpStream::connect(a.device_addr.unwrap()).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (device, welcome) = DeviceClient::over(tls)
        .hello("tls-gate", &mint_token(Kind::Device, "tls-gate"))
        .await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let answering = device.serve(None, |frame| {
        (frame["type"] == "call")
            .then(|| json!({"type": "reply", "id": frame["id"], "result": "over tls"}))
    });
    let (status, body) = call(&b, "tls-gate", "where", 3000).await;
    assert_eq!(
        (status, body["result"].clone()),
        (200, json!("over tls")),
        "{body}"
    );
    answering.abort();
    // A plaintext hello (a token in the clear) is never answered: the handshake fails and the
    // connection is closed.
    let mut plain = TcpStream::connect(a.device_addr.unwrap()).await.unwrap();
    let hello =
        json!({"type": "hello", "device_id": "plain", "token": mint_token(Kind::Device, "plain")});
    plain
        .write_all(format!("{hello}\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the plaintext connection was left open");
    assert!(!String::from_utf8_lossy(&got).contains("welcome"));
    let presence = b
        .api()
        .get::<Value>("/v1/devices/plain", StatusCode::OK)
        .await;
    assert_eq!(presence["online"], false, "{presence}");
    // The simulator speaks TLS too, given the CA.
    let mut sim = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args([
            "simulate-devices",
            "--count",
            "2",
            "--id-prefix",
            "tls-sim-",
        ])
        .args(["--connect", &a.device_addr.unwrap().to_string()])
        .arg("--tls-ca")
        .arg(pki.path("ca.pem"))
        .args(["--token-secret", TOKEN_SECRET])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The simulator connects its devices in parallel: wait for each one it is asked about.
    for id in ["tls-sim-0", "tls-sim-1"] {
        wait_until(Duration::from_secs(10), || async {
            b.api()
                .get::<Value>(&format!("/v1/devices/{id}"), StatusCode::OK)
                .await["online"]
                == true
        })
        .await;
    }
    let (status, body) = call(&b, "tls-sim-0", "amount_due", 3000).await;
    assert_eq!(
        (status, body["result"]["echo"].clone()),
        (200, json!("amount_due"))
    );
    let _ = sim.kill();
    let _ = sim.wait();
    // Files that cannot work are refused with the reason (the node would not start).
    let acceptor = paynotify::tls::tls_acceptor;
    let e = acceptor(&pki.path("missing.pem"), &pki.path("server.key"))
        .err()
        .unwrap();
    assert!(e.contains("missing.pem"), "{e}");
    let e = acceptor(&pki.path("server.key"), &pki.path("server.key"))
        .err()
        .unwrap();
    assert!(e.contains("no certificate"), "{e}");
    let e = acceptor(&pki.path("server.pem"), &pki.path("client.key"))
        .err()
        .unwrap();
    assert!(!e.is_empty());
}

/// `paynotify_{name}` with the given labels (e.g. `{outcome="busy"}`) on `node`'s `/metrics`,
/// 0 when absent.
async fn metric(node: &Node, name: &str) -> f64 {
    let text = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("paynotify_{name} ")))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// 1,000 concurrent calls through node B to one device on node A that holds every call until
/// told to answer: exactly the cap (256) are taken and answered, exactly the other 744 are
/// refused at once with 429, and the calling node counts exactly those refusals. Then a burst
/// of 200 to a device that answers at once gets 200 answers, no refusal (it used to find the
/// 64-entry queue full and answer "busy" in some runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_gets_exactly_the_cap_and_refusals_are_exact_and_counted() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = patient_pair(&redis).await;
    let mut device = DeviceClient::online(a.device_addr.unwrap(), "gate-A").await;
    let client = b.api().http().clone();
    let url = b.url("/v1/devices/gate-A/call");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let (client, url) = (client.clone(), url.clone());
        calls.spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"method": "open", "params": {"i": i}, "timeout_ms": 20000}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        });
    }
    // The refusals come back at once, while the device sits on what it was given.
    let mut busy = 0;
    while busy < 744 {
        let (status, body) = tokio::time::timeout(Duration::from_secs(30), calls.join_next())
            .await
            .expect("the refusals came back within 30 s")
            .unwrap()
            .unwrap();
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["code"], "device_busy");
        busy += 1;
    }
    let mut taken = Vec::new();
    while taken.len() < 256 {
        let frame = device.recv(Duration::from_secs(10)).await.unwrap();
        if frame["type"] == "call" {
            taken.push(frame);
        }
    }
    for frame in &taken {
        device
            .send(json!({"type": "reply", "id": frame["id"], "result": {"opened": frame["params"]["i"]}}))
            .await;
    }
    let mut ok = 0;
    while let Some(done) = calls.join_next().await {
        let (status, body) = done.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body["result"]["opened"].is_number(), "{body}");
        ok += 1;
    }
    assert_eq!(ok, 256);
    assert_eq!(
        metric(&b, "device_calls_total{outcome=\"busy\"}").await,
        744.0
    );
    assert_eq!(
        metric(&b, "device_calls_total{outcome=\"ok\"}").await,
        256.0
    );
    assert!(device.recv(Duration::from_millis(300)).await.is_none());

    // A device that answers at once: a burst below the cap is never refused.
    let echo = DeviceClient::online(a.device_addr.unwrap(), "gate-B")
        .await
        .serve_echo();
    let burst = (0..200).map(|i| {
        let client = client.clone();
        let url = b.url("/v1/devices/gate-B/call");
        async move {
            client
                .post(url)
                .json(&json!({"method": "open", "params": {"i": i}, "timeout_ms": 10000}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(burst).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    echo.abort();
}

/// Callers that give up (their HTTP clients go away) leave no call registered on their node,
/// even when the device never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_calls_leave_nothing_waiting() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = patient_pair(&redis).await;
    let _silent = DeviceClient::online(a.device_addr.unwrap(), "mute").await;
    let client = b.api().http().clone();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (client, url) = (client.clone(), b.url("/v1/devices/mute/call"));
        calls.spawn(async move {
            client
                .post(url)
                .json(&json!({"method": "open", "timeout_ms": 30000}))
                .send()
                .await
        });
    }
    wait_until(Duration::from_secs(20), || async {
        metric(&b, "device_calls_waiting").await == 100.0
    })
    .await;
    calls.abort_all();
    while calls.join_next().await.is_some() {}
    drop(client);
    wait_until(Duration::from_secs(10), || async {
        metric(&b, "device_calls_waiting").await == 0.0
    })
    .await;
}
