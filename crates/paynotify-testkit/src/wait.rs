//! Polling until a condition holds.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it is true; panics after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let met = poll_until(timeout, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await;
    assert!(met.is_some(), "condition not met within {timeout:?}");
}

/// Polls `check` every 20 ms until it gives a value, and returns it; `None` after `timeout`
/// (for a caller that panics with its own message).
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
