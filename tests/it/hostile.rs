//! Hostile clients: slow headers, connection floods from one address and in total. Each one ends
//! in a clear refusal, and the node keeps serving everyone else.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::*;

async fn healthy(node: &Node) -> bool {
    reqwest::get(node.url("/healthz"))
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// Reads what the server sends until it closes (or `wait` passes).
async fn read_all(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(wait, stream.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

/// A node with a header deadline of 800 ms.
async fn impatient_node(redis: &RedisServer) -> Node {
    node_with(redis, |c| {
        c.header_read_timeout = Duration::from_millis(800)
    })
    .await
}

#[tokio::test]
async fn slow_headers_are_cut_off_at_the_header_deadline() {
    let redis = RedisServer::start().unwrap();
    let node = impatient_node(&redis).await;
    let mut slow = TcpStream::connect(node.addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // One header byte every 200 ms would keep a connection forever without a deadline.
    let dripping = async {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow.write_all(b"X").await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), dripping).await;
    let reply = read_all(&mut slow, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(reply.is_some(), "the slow client was never cut off");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(healthy(&node).await);
}

#[tokio::test]
async fn one_address_cannot_take_more_than_its_share_of_connections() {
    let redis = RedisServer::start().unwrap();
    let node = device_node_with(&redis, |c| c.max_connections_per_ip = 5).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(node.addr).await.unwrap());
    }
    // The sixth is told why, in JSON, and closed.
    let mut sixth = TcpStream::connect(node.addr).await.unwrap();
    let reply = read_all(&mut sixth, Duration::from_secs(5)).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 429"), "{reply}");
    assert!(
        reply.contains("\"code\":\"too_many_connections_from_address\""),
        "{reply}"
    );
    // The device listener shares the cap: an error frame, then the close.
    let device = TcpStream::connect(node.device_addr.unwrap()).await.unwrap();
    let mut line = String::new();
    BufReader::new(device).read_line(&mut line).await.unwrap();
    assert!(line.contains("too_many_connections_from_address"), "{line}");
    // Closing one makes room again.
    drop(held.pop());
    wait_until(Duration::from_secs(5), || healthy(&node)).await;
}

#[tokio::test]
async fn a_full_node_refuses_new_connections_with_503() {
    let redis = RedisServer::start().unwrap();
    let node = node_with(&redis, |c| c.max_connections = 4).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(node.addr).await.unwrap());
    }
    let mut extra = TcpStream::connect(node.addr).await.unwrap();
    let reply = read_all(&mut extra, Duration::from_secs(5)).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("too_many_connections"), "{reply}");
    held.clear();
    wait_until(Duration::from_secs(5), || healthy(&node)).await;
}

#[tokio::test]
async fn refusals_made_by_the_framework_are_json_too() {
    let (_redis, _sink, node) = setup().await;
    let wrong_method = node
        .api()
        .http()
        .put(node.url("/v1/notifications"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    let body: serde_json::Value = wrong_method.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed", "{body}");
    let bad_query = node
        .api()
        .http()
        .get(node.url("/v1/orders/o-1/result?wait=forever&token=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_query.status(), 400);
    let body: serde_json::Value = bad_query.json().await.unwrap();
    assert_eq!(body["code"], "bad_request", "{body}");
    assert!(!body["message"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn views_never_show_the_merchants_header_values() {
    let (_redis, sink, node) = setup().await;
    let (code, body) = node
        .api()
        .post_any(
            "/v1/notifications",
            serde_json::json!({"id": "with-creds", "url": sink.url("/status/500"), "schedule": [0],
            "headers": {"Authorization": "Bearer merchant-secret-123"}}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let shown = node
        .api()
        .wait_state("with-creds", "dead", Duration::from_secs(10))
        .await;
    // (A dead entry keeps its spec; a delivered one is compacted and keeps no headers at all.)
    let text = shown.to_string();
    assert!(!text.contains("merchant-secret-123"), "{text}");
    assert_eq!(
        shown["spec"]["headers"]["authorization"]
            .as_str()
            .or(shown["spec"]["headers"]["Authorization"].as_str()),
        Some("<redacted>"),
        "{text}"
    );
    // The merchant still gets the real header.
    let got = &sink.received()[0];
    assert_eq!(
        got.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer merchant-secret-123")
    );
}

#[tokio::test]
async fn only_allowed_origins_open_a_websocket_when_a_list_is_set() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let redis = RedisServer::start().unwrap();
    let node = node_with(&redis, |c| {
        c.ws_allowed_origins = vec!["https://shop.example".into()]
    })
    .await;
    let open = |origin: Option<&'static str>| {
        let url = format!("ws://{}/ws", node.addr);
        async move {
            let mut request = url.into_client_request().unwrap();
            if let Some(o) = origin {
                request.headers_mut().insert("Origin", o.parse().unwrap());
            }
            match tokio_tungstenite::connect_async(request).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(open(Some("https://evil.example")).await, 403);
    assert_eq!(open(Some("https://shop.example")).await, 101);
    assert_eq!(open(Some("https://SHOP.example/")).await, 101);
    assert_eq!(
        open(None).await,
        101,
        "clients without an Origin are not browsers"
    );
}

/// Sends `GET target` with `headers` (raw lines) and returns the status and body of the answer.
async fn raw_get(node: &Node, target: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let head = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let reply = read_all(&mut s, Duration::from_secs(10))
        .await
        .unwrap_or_default();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test]
async fn request_heads_over_the_limits_are_refused_naming_the_limit() {
    use paynotify::http::server::{MAX_HEADER_BYTES, MAX_REQUEST_HEADERS, MAX_URI_BYTES};
    let redis = RedisServer::start().unwrap();
    let node = Node::start(config(&redis)).await;
    let lines = |n: usize| -> String { (0..n).map(|i| format!("X-H{i}: v\r\n")).collect() };
    // Just under every limit: served.
    let longest = format!("/healthz?{}", "a".repeat(MAX_URI_BYTES - 9));
    assert_eq!(
        raw_get(&node, &longest, &lines(MAX_REQUEST_HEADERS - 2))
            .await
            .0,
        200
    );
    // Over one limit each: refused in JSON, naming it.
    let cases = [
        (format!("{longest}a"), String::new(), 414, "uri_too_long"),
        (
            "/healthz".to_string(),
            lines(MAX_REQUEST_HEADERS),
            431,
            "too_many_headers",
        ),
        (
            "/healthz".to_string(),
            format!("X-Fat: {}\r\n", "f".repeat(MAX_HEADER_BYTES)),
            431,
            "headers_too_large",
        ),
    ];
    for (target, headers, want, code) in cases {
        let (status, body) = raw_get(&node, &target, &headers).await;
        assert_eq!(status, want, "{code}: {body}");
        assert!(body.contains(&format!("\"code\":\"{code}\"")), "{body}");
    }
    // Far over: the parser stops reading and refuses without buffering it all.
    let huge = format!("X-Huge: {}\r\n", "h".repeat(1 << 20));
    assert_eq!(raw_get(&node, "/healthz", &huge).await.0, 431);
    assert_eq!(raw_get(&node, "/healthz", &lines(1000)).await.0, 431);
    assert!(healthy(&node).await);
}

#[tokio::test]
async fn connections_that_go_quiet_are_closed_at_the_header_deadline() {
    let redis = RedisServer::start().unwrap();
    let node = impatient_node(&redis).await;
    // A peer that connects and then says nothing (or vanished without a FIN: the same, seen from
    // here) holds a connection only until the header deadline.
    let mut silent = TcpStream::connect(node.addr).await.unwrap();
    assert!(read_all(&mut silent, Duration::from_secs(5))
        .await
        .is_some());
    // The same after one request on a kept-alive connection.
    let mut idle = TcpStream::connect(node.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = read_all(&mut idle, Duration::from_secs(5)).await;
    assert!(reply.is_some_and(|r| r.starts_with("HTTP/1.1 200")));
    assert!(healthy(&node).await);
}

#[tokio::test]
async fn forged_cross_kind_and_replayed_expired_tokens_are_refused() {
    use paynotify::token::{mint, Kind};
    let redis = RedisServer::start().unwrap();
    let node = Node::start_with_devices(config(&redis)).await;
    let secrets = [TOKEN_SECRET.to_string()];
    let later = paynotify::now_ms() / 1000 + 600;
    let order = mint(&secrets, Kind::Order, "order-1", later).unwrap();
    let device = mint(&secrets, Kind::Device, "order-1", later).unwrap();
    let expired = mint(&secrets, Kind::Order, "order-1", later - 1200).unwrap();
    let mut forged = order.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let other_secret = mint(
        &["another-secret-0123456789".into()],
        Kind::Order,
        "order-1",
        later,
    )
    .unwrap();
    let longer = format!("v1.{}.{}", later + 3600, order.rsplit('.').next().unwrap());
    let cases = [
        (device.as_str(), "bad_token"),
        (forged.as_str(), "bad_token"),
        (other_secret.as_str(), "bad_token"),
        (longer.as_str(), "bad_token"),
        (expired.as_str(), "expired_token"),
    ];
    for (token, code) in cases {
        let r = reqwest::get(node.url(&format!("/v1/orders/order-1/result?token={token}")))
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some(code)),
            "{token}: {body}"
        );
    }
    // An order token is not a device token either.
    let stream = TcpStream::connect(node.device_addr.unwrap()).await.unwrap();
    let (r, mut w) = stream.into_split();
    let hello = serde_json::json!({"type": "hello", "device_id": "order-1", "token": order});
    w.write_all(format!("{hello}\n").as_bytes()).await.unwrap();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await.unwrap();
    assert!(line.contains("\"code\":\"bad_token\""), "{line}");
    assert!(healthy(&node).await);
}

#[test]
fn help_never_shows_secrets_from_the_environment() {
    let secrets = [
        ("PAYNOTIFY_REDIS_URL", "redis://:redis-pass-abc@h:1"),
        ("PAYNOTIFY_API_KEY", "api-key-secret-0123456789"),
        ("PAYNOTIFY_TOKEN_SECRET", "token-secret-0123456789"),
        (
            "PAYNOTIFY_SIGNING_SECRET",
            "whsec_c2lnbmluZy1zZWNyZXQtMDEyMzQ1",
        ),
        ("PAYNOTIFY_REDIS_MASTER_PASSWORD", "master-pass-xyz"),
    ];
    for command in ["serve", "dev", "simulate-devices", "enqueue"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
            .args([command, "--help"])
            .envs(secrets)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{command}: {text}");
        for (name, value) in secrets {
            assert!(!text.contains(value), "{command} --help shows {name}");
        }
    }
}
