//! Signed tokens that let a browser follow one order, or a device say who it is.
//!
//! Format: `v1.<expiry unix seconds>.<signature>` where the signature is the unpadded
//! base64url of HMAC-SHA256(secret, "<kind>:<id>:<expiry>") and kind is `order` or `device`.
//! Invariant: a token verifies only for its own kind and id, before its expiry, under one of the
//! configured secrets (several, for rotation); comparison is constant-time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Follow one order's result.
    Order,
    /// Connect as one device.
    Device,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Order => "order",
            Kind::Device => "device",
        }
    }
}

/// Why a token was refused. The messages are safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid for this {0}")]
    BadSignature(&'static str),
    #[error("no token secret is configured on this node")]
    NoSecret,
}

impl TokenError {
    /// The stable error code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Expired => "expired_token",
            _ => "bad_token",
        }
    }
}

/// Longest token accepted (anything longer is malformed without further work).
pub const MAX_TOKEN_LEN: usize = 128;

/// The MAC over "<kind>:<id>:<expiry>" (HMAC accepts keys of any length).
fn mac(secret: &str, kind: Kind, id: &str, expiry: i64) -> Result<Hmac<Sha256>, TokenError> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| TokenError::NoSecret)?;
    mac.update(kind.as_str().as_bytes());
    mac.update(b":");
    mac.update(id.as_bytes());
    mac.update(b":");
    mac.update(expiry.to_string().as_bytes());
    Ok(mac)
}

/// Mints a token for `id`, valid until `expiry` (unix seconds), with the first secret.
pub fn mint(secrets: &[String], kind: Kind, id: &str, expiry: i64) -> Result<String, TokenError> {
    let secret = secrets.first().ok_or(TokenError::NoSecret)?;
    let sig = mac(secret, kind, id, expiry)?.finalize().into_bytes();
    Ok(format!("v1.{expiry}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// Checks `token` for `id` at `now` (unix seconds).
pub fn verify(
    secrets: &[String],
    kind: Kind,
    id: &str,
    token: &str,
    now: i64,
) -> Result<(), TokenError> {
    if secrets.is_empty() {
        return Err(TokenError::NoSecret);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.splitn(3, '.');
    let (Some("v1"), Some(expiry), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    // Digits only, no leading zero: `parse` would also take "+123" or "0123", so one token
    // would have several spellings.
    if expiry.is_empty()
        || expiry.len() > 12
        || !expiry.bytes().all(|b| b.is_ascii_digit())
        || (expiry.len() > 1 && expiry.starts_with('0'))
    {
        return Err(TokenError::Malformed);
    }
    let expiry: i64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::Malformed)?;
    let mut ok = false;
    for secret in secrets {
        // verify_slice compares in constant time; every secret is tried.
        ok |= mac(secret, kind, id, expiry)?.verify_slice(&sig).is_ok();
    }
    if !ok {
        return Err(TokenError::BadSignature(kind.as_str()));
    }
    if expiry <= now {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// The expiry (Unix seconds) written in a token, without checking it; use after [`verify`].
pub fn expiry_of(token: &str) -> Option<i64> {
    token.split('.').nth(1)?.parse().ok()
}

/// [`verify`] against the current time.
pub fn verify_now(secrets: &[String], kind: Kind, id: &str, token: &str) -> Result<(), TokenError> {
    verify(secrets, kind, id, token, crate::util::now_ms() / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Vec<String> {
        vec![
            "new-secret-0123456789".into(),
            "old-secret-0123456789".into(),
        ]
    }

    #[test]
    fn a_token_verifies_only_for_its_kind_id_and_lifetime() {
        let s = secrets();
        let t = mint(&s, Kind::Order, "order-1", 2000).unwrap();
        assert_eq!(verify(&s, Kind::Order, "order-1", &t, 1999), Ok(()));
        assert_eq!(
            verify(&s, Kind::Order, "order-1", &t, 2000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&s, Kind::Order, "order-2", &t, 1000),
            Err(TokenError::BadSignature("order"))
        );
        assert_eq!(
            verify(&s, Kind::Device, "order-1", &t, 1000),
            Err(TokenError::BadSignature("device"))
        );
        // A changed expiry breaks the signature.
        let forged = t.replacen("2000", "9999", 1);
        assert!(verify(&s, Kind::Order, "order-1", &forged, 1000).is_err());
    }

    #[test]
    fn rotation_accepts_tokens_of_any_configured_secret() {
        let old_only = vec!["old-secret-0123456789".to_string()];
        let t = mint(&old_only, Kind::Order, "o", 2000).unwrap();
        assert_eq!(verify(&secrets(), Kind::Order, "o", &t, 1000), Ok(()));
        assert!(verify(&["other".to_string()], Kind::Order, "o", &t, 1000).is_err());
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        let s = secrets();
        for t in [
            "",
            "v1",
            "v1..",
            "v2.1.abc",
            "v1.x.abc",
            "v1.1.!!!",
            &"a".repeat(500),
        ] {
            assert!(verify(&s, Kind::Order, "o", t, 0).is_err(), "{t}");
        }
    }
}
