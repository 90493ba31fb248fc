//! What every handler can reach: one state for all routes.
//!
//! Invariant: built once per node in `node::router`; every field is a cheap handle, and the
//! whole state is one `Arc`, because axum clones it for every request (once per middleware
//! with state and once per handler): a clone is one reference count, not one per field.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::merchants::Registry;
use crate::delivery::signing::PublicKey;
use crate::delivery::store::Store;
use crate::devices::presence::Presence;
use crate::devices::Devices;
use crate::metrics::Metrics;
use crate::push::{Hub, Results};
use crate::redis::Redis;

/// Shared state of the API and health handlers: [`Shared`] behind one `Arc` (fields are read
/// through `Deref`).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    pub config: Arc<Config>,
    pub redis: Redis,
    pub notifications: Store,
    pub results: Results,
    pub presence: Presence,
    /// The pub/sub hub; live only on nodes with the gateway role (readiness includes it there).
    pub hub: Hub,
    /// Device call router.
    pub devices: Devices,
    /// The merchant registry (`/v1/merchants`, and the merchant a notification names).
    pub merchants: Registry,
    pub metrics: Metrics,
    /// The public halves of `--signing-key`, as `GET /v1/signing-keys` publishes them.
    pub public_keys: Arc<Vec<PublicKey>>,
    /// Cancelled when the node starts draining (`/readyz` answers 503 from then on).
    pub shutdown: CancellationToken,
}
