//! `GET /v1/signing-keys` (no API key): the public halves of the node's Ed25519 signing keys,
//! `{"keys": [{"id", "public_key": "whpk_…", "algorithm": "ed25519"}]}`, newest last. Merchants
//! verify `v1a` signatures with them; publishing them is safe by design.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::http::state::AppState;

pub async fn signing_keys(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"keys": *state.public_keys}))
}
