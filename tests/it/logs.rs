//! Logs: JSON lines with a span per delivery, and no secret ever written, even at debug level.

use std::io::Read;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_delivery_span_and_never_a_secret() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let signing = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args(["--log-format", "json", "serve", "--redis-url", &redis.url()])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            API_KEY,
            "--token-secret",
            TOKEN_SECRET,
        ])
        .args(["--signing-secret", signing, "--allow-private-targets"])
        .env("PAYNOTIFY_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Drained as it is written: a debug log larger than the pipe's buffer would otherwise block
    // the child on its log writes and hang the test.
    let mut stderr = child.stderr.take().unwrap();
    let drained = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let port = paynotify_testkit::listening_port(&mut child, Duration::from_secs(20));
    let addr = format!("127.0.0.1:{port}");
    let ready = format!("http://{addr}/readyz");
    wait_until(Duration::from_secs(20), || {
        let ready = ready.clone();
        async move { reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let api = TestClient::new(addr.parse().unwrap());
    let doc = json!({"id": "logged-1", "url": sink.url("/status/500"), "schedule": [0, 0.2]});
    api.post::<Value>("/v1/notifications", doc, StatusCode::CREATED)
        .await;
    wait_until(Duration::from_secs(10), || async { sink.count() >= 2 }).await;
    // Both attempts reached the route that answers 500 (not a 404 from a missing route).
    assert!(sink.received().iter().all(|r| r.path == "/status/500"));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    let text = drained.join().unwrap();
    assert!(!text.is_empty());
    for secret in [API_KEY, TOKEN_SECRET, signing, &signing[6..]] {
        assert!(!text.contains(secret), "a secret is in the logs:\n{text}");
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // Some line about this notification's attempts carries the delivery span's fields.
    let in_span = lines.iter().any(|l| {
        l["span"]["name"] == "delivery"
            && l["span"]["id"] == "logged-1"
            && l["span"]["host"]
                .as_str()
                .is_some_and(|h| h.starts_with("127.0.0.1"))
            && l["span"]["attempt"].as_u64().is_some()
    });
    assert!(in_span, "no log line in a delivery span:\n{text}");
}
