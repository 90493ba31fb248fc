//! The API key: every `/v1` route except the browsers' long-poll requires a configured bearer key.
//!
//! Invariant: a presented key is compared with every configured key in constant time.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::state::AppState;

/// True when `presented` equals one of `keys`; every key is compared, in constant time.
pub fn key_matches(keys: &[String], presented: &str) -> bool {
    let mut found = subtle::Choice::from(0u8);
    for key in keys {
        found |= key.as_bytes().ct_eq(presented.as_bytes());
    }
    bool::from(found)
}

pub async fn require_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(key) if key_matches(&state.config.api_keys, key) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the API key is not valid",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the API key as `Authorization: Bearer <key>`",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_any_configured_key() {
        let keys = vec!["old-key".to_string(), "new-key".to_string()];
        assert!(key_matches(&keys, "old-key"));
        assert!(key_matches(&keys, "new-key"));
        assert!(!key_matches(&keys, "new-ke"));
        assert!(!key_matches(&keys, ""));
        assert!(!key_matches(&[], "anything"));
    }
}
