//! Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
//!
//! Invariant: the signed content is exactly `"{id}.{timestamp}.{body}"` over the bytes sent,
//! with one `v1,<base64 HMAC-SHA256>` per configured secret and one `v1a,<base64 Ed25519>` per
//! configured signing key, so receivers can rotate either. A signing key's private half never
//! leaves the node; its public half (`whpk_…`) is published at `GET /v1/signing-keys`, so a
//! receiver can verify without holding any secret another receiver also holds.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};

/// A bad signing secret.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("signing secret #{0} must look like whsec_<base64>")]
    Format(usize),
    #[error("signing secret #{0} is not valid base64 after whsec_")]
    Base64(usize),
    #[error("signing secret #{0} is shorter than 16 bytes after base64 decoding")]
    TooShort(usize),
    #[error("signing key #{0} must look like whsk_<base64 of a 32-byte Ed25519 seed, or of the 64-byte seed and public key> (make one with `paynotify keygen`)")]
    KeyFormat(usize),
    #[error("signing key #{0}: its public half does not match its seed")]
    KeyMismatch(usize),
}

/// An Ed25519 signing key and the id it is published under.
struct SigningKey {
    id: String,
    pair: Ed25519KeyPair,
}

/// A public key as published: its id and `whpk_<base64>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PublicKey {
    pub id: String,
    pub public_key: String,
    pub algorithm: &'static str,
}

impl SigningKey {
    fn parse(i: usize, text: &str) -> Result<Self, SigningError> {
        let bytes = text
            .trim()
            .strip_prefix("whsk_")
            .and_then(|b64| STANDARD.decode(b64).ok())
            .ok_or(SigningError::KeyFormat(i + 1))?;
        let (seed, public) = match bytes.len() {
            32 => (&bytes[..], None),
            64 => (&bytes[..32], Some(&bytes[32..])),
            _ => return Err(SigningError::KeyFormat(i + 1)),
        };
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| SigningError::KeyFormat(i + 1))?;
        if public.is_some_and(|p| p != pair.public_key().as_ref()) {
            return Err(SigningError::KeyMismatch(i + 1));
        }
        Ok(Self {
            id: key_id(pair.public_key().as_ref()),
            pair,
        })
    }
}

/// A public key's id: the first 8 bytes of its SHA-256, hex (`whpk_` keys are long; ids let a
/// receiver pick the key to verify with while keys rotate).
fn key_id(public: &[u8]) -> String {
    Sha256::digest(public)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Signs with every configured secret and signing key. The key bytes are never printed.
#[derive(Default)]
pub struct Signer {
    keys: Vec<Vec<u8>>,
    signing_keys: Vec<SigningKey>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Signer({} secrets, {} signing keys)",
            self.keys.len(),
            self.signing_keys.len()
        )
    }
}

impl Signer {
    /// Parses `whsec_<base64>` secrets and `whsk_<base64>` Ed25519 signing keys; `None` when
    /// there are neither (notifications then go out unsigned).
    pub fn new(secrets: &[String], signing_keys: &[String]) -> Result<Option<Self>, SigningError> {
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
        let signing_keys = signing_keys
            .iter()
            .enumerate()
            .map(|(i, k)| SigningKey::parse(i, k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((!keys.is_empty() || !signing_keys.is_empty()).then_some(Self { keys, signing_keys }))
    }

    /// The public halves of the signing keys, as published.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.signing_keys
            .iter()
            .map(|k| PublicKey {
                id: k.id.clone(),
                public_key: format!("whpk_{}", STANDARD.encode(k.pair.public_key().as_ref())),
                algorithm: "ed25519",
            })
            .collect()
    }

    /// The three headers for one attempt; `None` when there is nothing to sign with.
    ///
    /// `merchant` is the secrets of the notification's merchant: they sign in place of the
    /// node-wide secrets, which other merchants may hold. The Ed25519 keys sign either way.
    pub fn headers(
        &self,
        id: &str,
        timestamp: i64,
        body: &[u8],
        merchant: Option<&[Vec<u8>]>,
    ) -> Option<[(&'static str, String); 3]> {
        let hmac_keys = merchant.unwrap_or(&self.keys);
        if hmac_keys.is_empty() && self.signing_keys.is_empty() {
            return None;
        }
        let mut signatures: Vec<String> = hmac_keys
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
        if !self.signing_keys.is_empty() {
            let mut content = Vec::with_capacity(id.len() + body.len() + 24);
            content.extend_from_slice(id.as_bytes());
            content.push(b'.');
            content.extend_from_slice(timestamp.to_string().as_bytes());
            content.push(b'.');
            content.extend_from_slice(body);
            for key in &self.signing_keys {
                let signature = key.pair.sign(&content);
                signatures.push(format!("v1a,{}", STANDARD.encode(signature.as_ref())));
            }
        }
        Some([
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signatures.join(" ")),
        ])
    }
}

/// A fresh Ed25519 key pair: (`whsk_<base64 of seed and public key>`, `whpk_<base64>`), as
/// `paynotify keygen` prints it (64-byte secret keys, as libsodium's
/// `sodium_crypto_sign_detached` takes them).
pub fn generate_key_pair() -> (String, String) {
    let seed: [u8; 32] = rand::random();
    // A 32-byte seed is always a valid Ed25519 key.
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).expect("a 32-byte seed is a key");
    let public = pair.public_key().as_ref().to_vec();
    let mut secret = seed.to_vec();
    secret.extend_from_slice(&public);
    (
        format!("whsk_{}", STANDARD.encode(secret)),
        format!("whpk_{}", STANDARD.encode(public)),
    )
}

/// A fresh random secret in `whsec_` form (used by `dev`).
pub fn generate_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("whsec_{}", STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_keys_parse_in_both_lengths_and_refuse_nonsense() {
        let (secret, public) = generate_key_pair();
        let signer = Signer::new(&[], std::slice::from_ref(&secret))
            .unwrap()
            .unwrap();
        let published = signer.public_keys();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].public_key, public);
        assert_eq!(published[0].id.len(), 16);
        // The 32-byte seed alone is the same key.
        let bytes = STANDARD.decode(&secret[5..]).unwrap();
        let seed_only = format!("whsk_{}", STANDARD.encode(&bytes[..32]));
        let again = Signer::new(&[], &[seed_only]).unwrap().unwrap();
        assert_eq!(again.public_keys(), published);
        // A public half that does not belong to the seed, and malformed keys.
        let mut wrong = bytes.clone();
        wrong[40] ^= 1;
        let wrong = format!("whsk_{}", STANDARD.encode(wrong));
        assert!(matches!(
            Signer::new(&[], &[wrong]),
            Err(SigningError::KeyMismatch(1))
        ));
        for bad in ["whsk_", "whsec_AAAA", "whsk_!!!", "whsk_AAAA"] {
            assert!(
                matches!(
                    Signer::new(&[], &[bad.to_string()]),
                    Err(SigningError::KeyFormat(1))
                ),
                "{bad}"
            );
        }
        assert!(!format!("{signer:?}").contains(&secret[5..15]));
    }
}
