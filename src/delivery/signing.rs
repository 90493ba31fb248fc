//! Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
//!
//! Invariant: the signed content is exactly `"{id}.{timestamp}.{body}"` over the bytes sent,
//! with one `v1,<base64 HMAC-SHA256>` per configured secret, so receivers can rotate secrets.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A bad signing secret.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("signing secret #{0} must look like whsec_<base64>")]
    Format(usize),
    #[error("signing secret #{0} is not valid base64 after whsec_")]
    Base64(usize),
    #[error("signing secret #{0} is shorter than 16 bytes after base64 decoding")]
    TooShort(usize),
}

/// Signs with every configured secret. The key bytes are never printed.
pub struct Signer {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} secrets)", self.keys.len())
    }
}

impl Signer {
    /// Parses `whsec_<base64>` secrets (at least one).
    pub fn new(secrets: &[String]) -> Result<Option<Self>, SigningError> {
        let mut keys = Vec::new();
        for (i, secret) in secrets.iter().enumerate() {
            let b64 = secret
                .trim()
                .strip_prefix("whsec_")
                .ok_or(SigningError::Format(i + 1))?;
            let key = STANDARD
                .decode(b64)
                .map_err(|_| SigningError::Base64(i + 1))?;
            // An empty (or trivially short) key would sign with no secret at all.
            if key.len() < 16 {
                return Err(SigningError::TooShort(i + 1));
            }
            keys.push(key);
        }
        Ok((!keys.is_empty()).then_some(Self { keys }))
    }

    /// The three headers for one attempt.
    pub fn headers(&self, id: &str, timestamp: i64, body: &[u8]) -> [(&'static str, String); 3] {
        let signatures: Vec<String> = self
            .keys
            .iter()
            .map(|key| {
                // HMAC takes keys of any length; new_from_slice cannot fail for it.
                let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
                    Ok(mac) => mac,
                    Err(_) => return String::new(),
                };
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.to_string().as_bytes());
                mac.update(b".");
                mac.update(body);
                format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
            })
            .collect();
        [
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signatures.join(" ")),
        ]
    }
}

/// A fresh random secret in `whsec_` form (used by `dev`).
pub fn generate_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("whsec_{}", STANDARD.encode(bytes))
}
