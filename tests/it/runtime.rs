//! The async runtime's size: `--worker-threads` (or `PAYNOTIFY_WORKER_THREADS`) sets how many
//! threads run the node's tasks, and a count outside 1..=1024 is refused before anything starts.

use crate::support::*;

/// How many runtime worker threads (named `tokio-rt-worker` by tokio) the process has.
fn runtime_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "tokio-rt-worker")
        .count()
}

#[tokio::test]
async fn worker_threads_sets_the_runtime_size_and_a_bad_count_is_refused() {
    let redis = RedisServer::start().unwrap();
    let one = Proc::serve_with_env(&redis.url(), &[], &[("PAYNOTIFY_WORKER_THREADS", "1")]);
    one.wait_ready().await;
    assert_eq!(runtime_threads(one.child.id()), 1);
    let three = Proc::serve(&redis.url(), &["--worker-threads", "3"]);
    three.wait_ready().await;
    assert_eq!(runtime_threads(three.child.id()), 3);
    drop((one, three));
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
