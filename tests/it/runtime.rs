//! The async runtime's size: `--worker-threads` (or `PAYNOTIFY_WORKER_THREADS`) sets how many
//! threads run the node's tasks, and a count outside 1..=1024 is refused before anything starts.

use std::time::Duration;

use crate::support::*;

/// How many runtime worker threads (named `tokio-rt-worker` by tokio) the process has.
fn runtime_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "tokio-rt-worker")
        .count()
}

/// Starts a node with `extra` arguments and `env`, waits until it is ready, and returns it.
async fn node(redis: &RedisServer, extra: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args(extra)
        .args([
            "serve",
            "--redis-url",
            &redis.url(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--api-key", API_KEY, "--token-secret", TOKEN_SECRET])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let port = paynotify_testkit::listening_port(&mut child, Duration::from_secs(20));
    let ready = format!("http://127.0.0.1:{port}/readyz");
    wait_until(Duration::from_secs(20), || {
        let ready = ready.clone();
        async move { reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    child
}

#[tokio::test]
async fn worker_threads_sets_the_runtime_size_and_a_bad_count_is_refused() {
    let redis = RedisServer::start().unwrap();
    let mut one = node(&redis, &[], &[("PAYNOTIFY_WORKER_THREADS", "1")]).await;
    assert_eq!(runtime_threads(one.id()), 1);
    let mut three = node(&redis, &["--worker-threads", "3"], &[]).await;
    assert_eq!(runtime_threads(three.id()), 3);
    for child in [&mut one, &mut three] {
        let _ = child.kill();
        let _ = child.wait();
    }
    for bad in ["0", "1025", "many"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
            .args([
                "--worker-threads",
                bad,
                "serve",
                "--redis-url",
                &redis.url(),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--worker-threads"), "{bad}: {stderr}");
    }
}
