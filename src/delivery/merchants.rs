//! Merchants: each one its own signing secrets, allowed URLs and defaults.
//!
//! Invariant: a notification naming a merchant is enqueued only if that merchant exists and
//! its URL is under one of the merchant's allowed URLs; it is signed with that merchant's
//! secrets only (never the node-wide `--signing-secret`s, which other merchants may hold), so
//! no merchant can forge another's callback. Secrets are sealed at rest (`secrets`).

pub mod health;
pub mod model;
pub mod secrets;
pub mod store;

pub use model::Merchant;
pub use store::{MerchantError, Registry, Signing};

use crate::delivery::schema::{Document, NewNotification, SchemaError};

/// Why a notification document naming a merchant was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("{0}")]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Registry(MerchantError),
}

/// Parses a notification document, looking up the merchant it names (if any) and applying its
/// rules; the way every enqueue path (API, intake, CLI) reads a document.
pub async fn parse_notification(
    registry: &Registry,
    document: Document,
    now_ms: i64,
    make_id: impl FnOnce() -> String,
) -> Result<NewNotification, EnqueueError> {
    let record = match document.merchant()? {
        Some(id) => match registry.cached(id).await {
            Ok(r) => r,
            Err(MerchantError::Invalid(e)) => return Err(EnqueueError::Schema(e)),
            Err(e) => return Err(EnqueueError::Registry(e)),
        },
        None => None,
    };
    let rules = record.as_ref().map(|r| r.merchant.rules());
    Ok(document.into_notification(now_ms, make_id, rules)?)
}
