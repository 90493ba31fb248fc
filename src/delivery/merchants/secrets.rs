//! Merchant signing secrets and their encryption at rest.
//!
//! Invariant: a merchant's secrets reach Redis only as one AEAD ciphertext (ChaCha20-Poly1305
//! under a key-encryption key from configuration), bound to the merchant's id as associated
//! data, so a Redis dump or replica alone gives no secret away and one merchant's ciphertext
//! cannot be moved into another's record. Secret values are never logged: [`Secret`]'s `Debug`
//! prints only its id.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What went wrong with a key-encryption key or a stored ciphertext.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SecretsError {
    #[error("encryption key #{0} must be the base64 of 32 random bytes (make one with `paynotify keygen --encryption-key`)")]
    KeyFormat(usize),
    #[error("merchant secrets are encrypted with key {0}, which this node was not given (--secret-encryption-key)")]
    UnknownKey(String),
    #[error("merchant secrets do not decrypt: the ciphertext was altered or belongs to another merchant")]
    Tampered,
    #[error("merchant secrets need --secret-encryption-key (PAYNOTIFY_SECRET_ENCRYPTION_KEY) on this node")]
    NoKey,
}

/// One HMAC secret of a merchant, with its lifetime.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Secret {
    /// `whsec_<base64>`, as the merchant configures it.
    pub secret: String,
    pub created_at: i64,
    /// After this (unix ms) it no longer signs; `None` while it is the current secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", secret_id(&self.secret))
    }
}

/// A secret's public id: 8 bytes of its SHA-256, hex. Shown by `GET /v1/merchants/{id}` so
/// operators can tell secrets apart without seeing them.
pub fn secret_id(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The answer of the explicit reveal call: every secret of `merchant` with its value.
pub fn revealed(merchant: &str, secrets: &[Secret]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = secrets
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": secret_id(&s.secret),
                "secret": s.secret,
                "created_at": s.created_at,
                "expires_at": s.expires_at,
            })
        })
        .collect();
    serde_json::json!({"id": merchant, "secrets": list})
}

/// A fresh `whsec_` secret of 32 random bytes.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// A fresh key-encryption key, as `--secret-encryption-key` takes it.
pub fn new_encryption_key() -> String {
    let bytes: [u8; 32] = rand::random();
    STANDARD.encode(bytes)
}

/// The HMAC key bytes of a `whsec_` secret (what Standard Webhooks libraries sign with).
pub fn key_bytes(secret: &str) -> Option<Vec<u8>> {
    STANDARD.decode(secret.strip_prefix("whsec_")?).ok()
}

/// The secrets that sign at `now_ms`: the current one and those still in their grace period,
/// newest first.
pub fn signing(secrets: &[Secret], now_ms: i64) -> Vec<Vec<u8>> {
    let mut live: Vec<&Secret> = secrets
        .iter()
        .filter(|s| s.expires_at.is_none_or(|e| e > now_ms))
        .collect();
    live.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    live.iter().filter_map(|s| key_bytes(&s.secret)).collect()
}

/// The key-encryption keys: the first encrypts, any of them decrypts (rotation).
pub struct Keyring {
    keys: Vec<(String, LessSafeKey)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        write!(f, "Keyring({ids:?})")
    }
}

/// The associated data binding a ciphertext to its merchant.
fn aad(merchant: &str) -> Vec<u8> {
    format!("paynotify merchant secrets v1 {merchant}").into_bytes()
}

impl Keyring {
    /// Parses base64 keys of 32 bytes; `None` when there are none.
    pub fn new(keys: &[String]) -> Result<Option<Self>, SecretsError> {
        let mut out = Vec::new();
        for (i, text) in keys.iter().enumerate() {
            let bytes = STANDARD
                .decode(text.trim())
                .map_err(|_| SecretsError::KeyFormat(i + 1))?;
            if bytes.len() != 32 {
                return Err(SecretsError::KeyFormat(i + 1));
            }
            let id: String = Sha256::digest(&bytes)[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
                .map_err(|_| SecretsError::KeyFormat(i + 1))?;
            out.push((id, LessSafeKey::new(key)));
        }
        Ok((!out.is_empty()).then_some(Self { keys: out }))
    }

    /// `v1.<key id>.<base64 of nonce, ciphertext and tag>` of `merchant`'s secrets.
    pub fn seal(&self, merchant: &str, secrets: &[Secret]) -> String {
        let (id, key) = &self.keys[0];
        // A list of plain structs always serializes.
        let mut data = serde_json::to_vec(secrets).unwrap_or_default();
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = Nonce::assume_unique_for_key(nonce_bytes);
        // Sealing fails only for inputs over ~256 GB.
        if key
            .seal_in_place_append_tag(nonce, Aad::from(aad(merchant)), &mut data)
            .is_err()
        {
            data.clear();
        }
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&data);
        format!("v1.{id}.{}", STANDARD.encode(out))
    }

    /// The secrets in `sealed`, if it is `merchant`'s and untouched.
    pub fn open(&self, merchant: &str, sealed: &str) -> Result<Vec<Secret>, SecretsError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SecretsError::Tampered);
        };
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| SecretsError::UnknownKey(id.to_string()))?;
        let bytes = STANDARD.decode(b64).map_err(|_| SecretsError::Tampered)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretsError::Tampered);
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretsError::Tampered)?;
        let mut data = data.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(aad(merchant)), &mut data)
            .map_err(|_| SecretsError::Tampered)?;
        serde_json::from_slice(plain).map_err(|_| SecretsError::Tampered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_for_their_merchant_and_key() {
        let (k1, k2) = (new_encryption_key(), new_encryption_key());
        let ring = Keyring::new(std::slice::from_ref(&k1)).unwrap().unwrap();
        let secrets = vec![Secret {
            secret: new_secret(),
            created_at: 1,
            expires_at: None,
        }];
        let sealed = ring.seal("m1", &secrets);
        assert!(!sealed.contains(&secrets[0].secret[6..]));
        assert_eq!(ring.open("m1", &sealed).unwrap(), secrets);
        // Another merchant's record, a flipped byte, another key.
        assert_eq!(ring.open("m2", &sealed), Err(SecretsError::Tampered));
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(ring.open("m1", &flipped), Err(SecretsError::Tampered));
        let other = Keyring::new(std::slice::from_ref(&k2)).unwrap().unwrap();
        assert!(matches!(
            other.open("m1", &sealed),
            Err(SecretsError::UnknownKey(_))
        ));
        // Rotation of the encryption key: the new one first, the old one still opens.
        let both = Keyring::new(&[k2, k1]).unwrap().unwrap();
        assert_eq!(both.open("m1", &sealed).unwrap(), secrets);
        assert!(!format!("{both:?}").contains(&sealed[8..]));
        assert!(!format!("{:?}", secrets[0]).contains("whsec_"));
        assert_eq!(
            Keyring::new(&["c2hvcnQ=".into()]).unwrap_err(),
            SecretsError::KeyFormat(1)
        );
    }

    #[test]
    fn only_live_secrets_sign_newest_first() {
        let s = |created_at, expires_at| Secret {
            secret: new_secret(),
            created_at,
            expires_at,
        };
        let list = vec![s(1, Some(50)), s(2, Some(200)), s(3, None)];
        let keys = signing(&list, 100);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0], key_bytes(&list[2].secret).unwrap());
        assert_eq!(keys[1], key_bytes(&list[1].secret).unwrap());
    }
}
