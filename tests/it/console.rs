//! The operator console (`/console`): in real Chromium, a person signs in, finds a dead
//! notification by id, sees its attempts, presses Replay and sees it delivered without a
//! reload; a wrong key cannot sign in, a read-only key cannot replay, an expired session goes
//! back to the sign-in page. Over plain HTTP: a change without the CSRF token is refused, the
//! cookie and the security headers are what SECURITY.md says, and every change is audited.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::browser::{browser_dir, missing_tooling};
use crate::support::*;

const READ_ONLY_KEY: &str = "console-read-only-key-0123";

/// Where the browser test leaves its screenshots (looked at by a person, not committed).
fn shots_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn console_node(redis: &RedisServer, ttl: Duration) -> Node {
    node_with(redis, |c| {
        c.console_read_only_keys = vec![READ_ONLY_KEY.to_string()];
        c.console_session_ttl = ttl;
    })
    .await
}

/// Enqueues `id` to the sink's `/flaky/1` with one try: it dies on a 500, and a replay delivers it.
async fn dead_notification(node: &Node, sink: &Sink, id: &str) {
    let _: Value = node
        .api()
        .post(
            "/v1/notifications",
            json!({"id": id, "url": sink.url("/flaky/1"), "body": {"order": id}, "schedule": [0]}),
            StatusCode::CREATED,
        )
        .await;
    let path = format!("/v1/notifications/{id}");
    wait_until(Duration::from_secs(20), || async {
        node.api().get_any(&path).await.1["state"] == "dead"
    })
    .await;
}

fn run_driver(args: &[&str]) -> String {
    let out = Command::new("node")
        .arg(browser_dir().join("console.mjs"))
        .args(args)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_finds_a_dead_notification_and_replays_it_in_chromium() {
    if missing_tooling().is_some() {
        return;
    }
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = console_node(&redis, Duration::from_secs(3600)).await;
    // A merchant with a delivered notification, for the merchants page.
    let _: Value = node
        .api()
        .post(
            "/v1/merchants",
            json!({"id": "m1", "allowed_urls": [sink.url("/")]}),
            StatusCode::CREATED,
        )
        .await;
    let _: Value = node
        .api()
        .post(
            "/v1/notifications",
            json!({"id": "m1-order-1", "merchant": "m1", "url": sink.url("/ok"), "body": "paid"}),
            StatusCode::CREATED,
        )
        .await;
    // And one that fails for good, so the dead page has a merchant's group to show.
    let _: Value = node
        .api()
        .post(
            "/v1/notifications",
            json!({"id": "m1-order-2", "merchant": "m1", "url": sink.url("/status/503"), "schedule": [0]}),
            StatusCode::CREATED,
        )
        .await;
    dead_notification(&node, &sink, "order-dead-1").await;
    let (base, shots) = (node.url(""), shots_dir());
    let shots_s = shots.to_string_lossy().to_string();
    let stdout = tokio::task::spawn_blocking(move || {
        run_driver(&["flow", &base, API_KEY, "order-dead-1", &shots_s])
    })
    .await
    .unwrap();
    assert!(stdout.contains("OK"), "{stdout}");
    let n: Value = node
        .api()
        .get("/v1/notifications/order-dead-1", StatusCode::OK)
        .await;
    assert_eq!(n["state"], "delivered", "{n}");
    for page in [
        "overview",
        "search",
        "notification-dead",
        "notification-delivered",
        "dead",
    ] {
        assert!(shots.join(format!("{page}.png")).exists(), "no {page}.png");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_read_only_keys_and_expired_sessions_are_refused_in_chromium() {
    if missing_tooling().is_some() {
        return;
    }
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = console_node(&redis, Duration::from_secs(3600)).await;
    let short = console_node(&redis, Duration::from_secs(2)).await;
    dead_notification(&node, &sink, "order-dead-2").await;
    let (base, short_base) = (node.url(""), short.url(""));
    let stdout = tokio::task::spawn_blocking(move || {
        run_driver(&[
            "access",
            &base,
            READ_ONLY_KEY,
            "order-dead-2",
            &short_base,
            API_KEY,
        ])
    })
    .await
    .unwrap();
    assert!(stdout.contains("OK"), "{stdout}");
    let n: Value = node
        .api()
        .get("/v1/notifications/order-dead-2", StatusCode::OK)
        .await;
    assert_eq!(n["state"], "dead", "the read-only key replayed it: {n}");
    node.stop().await;
    short.stop().await;
}

/// Signs in over HTTP; the session cookie (`name=value`) and the whole `Set-Cookie` line.
async fn sign_in(http: &reqwest::Client, node: &Node, key: &str, tls: bool) -> (String, String) {
    let mut req = http
        .post(node.url("/console/login"))
        .form(&[("api_key", key)]);
    if tls {
        req = req.header("x-forwarded-proto", "https");
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console");
    let line = r.headers()["set-cookie"].to_str().unwrap().to_string();
    (line.split(';').next().unwrap().to_string(), line)
}

async fn csrf_of(http: &reqwest::Client, node: &Node, cookie: &str) -> String {
    let s: Value = http
        .get(node.url("/console/api/session"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    s["csrf"].as_str().unwrap().to_string()
}

async fn post_with(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    csrf: &str,
) -> reqwest::Response {
    http.post(url)
        .header("cookie", cookie)
        .header("x-csrf-token", csrf)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn changes_need_the_csrf_token_and_every_one_is_audited() {
    let redis = RedisServer::start().unwrap();
    let sink = Sink::start().await;
    let node = console_node(&redis, Duration::from_secs(3600)).await;
    dead_notification(&node, &sink, "order-dead-3").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (cookie, line) = sign_in(&http, &node, API_KEY, false).await;
    assert!(
        line.contains("HttpOnly") && line.contains("SameSite=Strict"),
        "{line}"
    );
    assert!(!line.contains("Secure"), "{line}");
    let replay = node.url("/console/api/v1/dead/order-dead-3/replay");
    for token in [None, Some("not-the-token")] {
        let mut req = http.post(&replay).header("cookie", &cookie);
        if let Some(t) = token {
            req = req.header("x-csrf-token", t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "csrf");
    }
    let n: Value = node
        .api()
        .get("/v1/notifications/order-dead-3", StatusCode::OK)
        .await;
    assert_eq!(n["state"], "dead", "a refused replay changed it: {n}");
    // A read-only key with its own valid token is refused too.
    let (ro_cookie, _) = sign_in(&http, &node, READ_ONLY_KEY, false).await;
    let ro_csrf = csrf_of(&http, &node, &ro_cookie).await;
    let r = post_with(&http, &replay, &ro_cookie, &ro_csrf).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "read_only");
    // The admin's token works, once.
    let csrf = csrf_of(&http, &node, &cookie).await;
    let r = post_with(&http, &replay, &cookie, &csrf).await;
    assert_eq!(r.status(), 200);
    // The audit log has each attempt, with who and the answer, and never a key.
    let audit: Value = http
        .get(node.url("/console/api/audit"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = audit["entries"].as_array().unwrap();
    let outcomes: Vec<String> = entries
        .iter()
        .filter(|e| e["action"] == "POST /v1/dead/order-dead-3/replay")
        .map(|e| {
            format!(
                "{} {}",
                e["role"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            "admin 200",
            "read-only 403 refused",
            "admin 403 refused",
            "admin 403 refused"
        ],
        "{audit}"
    );
    assert!(!audit.to_string().contains(API_KEY) && !audit.to_string().contains(READ_ONLY_KEY));
    node.stop().await;
}

#[tokio::test]
async fn the_console_is_framed_by_no_one_and_runs_no_inline_script() {
    let redis = RedisServer::start().unwrap();
    let node = console_node(&redis, Duration::from_secs(3600)).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/", "/console", "/console/login", "/console/api/session"] {
        let r = http.get(node.url(path)).send().await.unwrap();
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(r.headers()["x-frame-options"], "DENY", "{path}");
    }
    // No page carries a script in its markup.
    for path in ["/", "/console/login"] {
        let body = http
            .get(node.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let handler = [" onclick=", " onload=", " onsubmit=", " onerror="]
            .iter()
            .any(|h| body.contains(h));
        assert!(!body.contains("<script>") && !handler, "{path}: {body}");
    }
    // Without a session the API says so; the page goes to the sign-in form.
    let r = http
        .get(node.url("/console/api/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(node.url("/console")).send().await.unwrap();
    assert_eq!(r.headers()["location"], "/console/login");
    // Over TLS (as a proxy reports it) the cookie is Secure.
    let (_, line) = sign_in(&http, &node, API_KEY, true).await;
    assert!(line.ends_with("; Secure"), "{line}");
    // A sign-in posted from another site is refused.
    let r = http
        .post(node.url("/console/login"))
        .header("origin", "https://evil.example")
        .form(&[("api_key", API_KEY)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/console/login?error=origin");
    assert!(r.headers().get("set-cookie").is_none());
    node.stop().await;
}
