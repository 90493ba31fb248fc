//! What the worker does with a notification's merchant before the attempt: sign with its
//! secrets, wait while it is disabled, give up when it is gone.
//!
//! Invariant: a merchant's notification is never sent unsigned or signed with anything but
//! that merchant's secrets; when they cannot be had (Redis down, no encryption key on this
//! node) the notification is handed back without spending an attempt of its schedule.

use std::sync::Arc;

use tracing::{info, warn};

use super::{Report, Shared};
use crate::delivery::merchants::Signing;
use crate::delivery::store::Claimed;

/// How long a notification waits when its merchant's secrets cannot be read.
const UNAVAILABLE_DEFER_MS: i64 = 5_000;

/// The merchant's signing keys, or the report that ends this attempt before it starts.
pub(super) async fn keys_for(
    shared: &Shared,
    c: &Claimed,
    merchant: &str,
) -> Result<Arc<Vec<Vec<u8>>>, Report> {
    let now = crate::util::now_ms();
    let release = |at| Report::Release(c.partition, c.id.clone(), c.token, at);
    match shared.merchants.signing(merchant, now).await {
        Ok(Signing::Keys(keys)) => Ok(keys),
        Ok(Signing::Disabled) => {
            info!(%merchant, "merchant is disabled; the notification waits");
            let wait = shared.config.disabled_merchant_recheck.as_millis() as i64;
            Err(release(now + wait.max(100)))
        }
        Ok(Signing::Missing) => Err(super::scheduler::unreadable(
            c,
            format!("merchant {merchant:?} is not registered (deleted?); make it again and replay"),
        )),
        Err(e) => {
            shared.metrics.redis_errors.inc();
            warn!(%merchant, error = %e, "merchant secrets unavailable; handing the notification back");
            Err(release(now + UNAVAILABLE_DEFER_MS))
        }
    }
}
