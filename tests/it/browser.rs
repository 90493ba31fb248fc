//! Real headless Chromium (Debian's `chromium`, driven by playwright-core from
//! `tests/browser/run.mjs`): the demo page flips to "Paid", and the JS client fails over when its
//! node dies. `scripts/test` installs chromium, Node's playwright-core and sets
//! PAYNOTIFY_REQUIRE_BROWSER=1, so there a missing browser fails the test instead of skipping it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

pub(crate) fn browser_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// None when the browser tooling is present; else why not (and the test prints it and skips,
/// unless PAYNOTIFY_REQUIRE_BROWSER is set).
pub(crate) fn missing_tooling() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut missing = Vec::new();
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node".to_string());
    }
    if !std::path::Path::new(&chromium).exists() {
        missing.push(chromium);
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        missing.push(
            "tests/browser/node_modules/playwright-core (npm ci --prefix tests/browser)".into(),
        );
    }
    if missing.is_empty() {
        return None;
    }
    let why = format!(
        "browser test SKIPPED: missing {}; scripts/test installs them",
        missing.join(", ")
    );
    assert!(std::env::var("PAYNOTIFY_REQUIRE_BROWSER").is_err(), "{why}");
    eprintln!("{why}");
    Some(why)
}

fn driver(args: &[&str]) -> std::process::Child {
    Command::new("node")
        .arg(browser_dir().join("run.mjs"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_says_paid_in_chromium() {
    if missing_tooling().is_some() {
        return;
    }
    let redis = RedisServer::start().unwrap();
    // Port 0, and the address `dev` bound read from its banner: no free port to race for.
    let mut dev = Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &redis.url(),
            "--device-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let banner = dev.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the banner, then keeps draining stdout so the child never blocks on it.
    std::thread::spawn(move || {
        for line in BufReader::new(banner).lines().map_while(Result::ok) {
            if let Some(url) = line.trim().strip_prefix("HTTP") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("paynotify dev printed its HTTP address");
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    wait_until(Duration::from_secs(20), || {
        let url = format!("{base}/readyz");
        async move { reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let out =
        tokio::task::spawn_blocking(move || driver(&["demo", &base]).wait_with_output().unwrap())
            .await
            .unwrap();
    let _ = dev.kill();
    let _ = dev.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("PAID"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_client_moves_to_another_node_when_its_node_dies_and_still_gets_the_result() {
    if missing_tooling().is_some() {
        return;
    }
    let redis = RedisServer::start().unwrap();
    let a = Node::start(config(&redis)).await;
    let b = Node::start(config(&redis)).await;
    let expiry = paynotify::now_ms() / 1000 + 600;
    let token = paynotify::token::mint(
        &[TOKEN_SECRET.to_string()],
        paynotify::token::Kind::Order,
        "failover-1",
        expiry,
    )
    .unwrap();
    let mut child = driver(&["failover", &a.url(""), &b.url(""), "failover-1", &token]);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    assert_eq!(ready, "READY", "the page never subscribed");
    // Node A goes away (its websockets close with 1001); the result is published through B.
    a.stop().await;
    let r = b
        .api()
        .http()
        .post(b.url("/v1/orders/failover-1/result"))
        .json(&serde_json::json!({"status": "paid"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let line = rx.recv_timeout(Duration::from_secs(40)).unwrap_or_default();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(line, "PAID");
    assert!(status.success());
}
