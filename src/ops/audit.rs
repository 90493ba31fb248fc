//! The audit log: every console action (and every failed sign-in) as one stream entry: who,
//! what, on what, with which answer, when, on which node.
//!
//! Invariant: an entry names a key by its fingerprint only (the first 12 hex digits of its
//! SHA-256), never the key; the stream is capped at [`MAX_ENTRIES`] (approximately, `MAXLEN ~`).

use serde::Serialize;

use crate::redis::{Redis, StoreError};

/// About how many entries the stream keeps.
pub const MAX_ENTRIES: usize = 10_000;

/// One audit entry.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    /// Stream entry id (`<ms>-<n>`); empty before it is written.
    pub id: String,
    /// When (ms).
    pub at: i64,
    /// Who: `key:<fingerprint>` or `anonymous`.
    pub who: String,
    /// `admin` or `read-only`.
    pub role: String,
    /// What, e.g. `POST /v1/dead/order-1/replay` or `sign-in`.
    pub action: String,
    /// The answer's status code, or what went wrong (`wrong key`).
    pub outcome: String,
    /// The node that did it.
    pub node: String,
}

/// The fingerprint of a key as the audit log names it.
pub fn fingerprint(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Appends `entry` (its `id` is ignored).
pub async fn write(redis: &Redis, entry: &Entry) -> Result<(), StoreError> {
    let _id: String = redis
        .query(
            redis::cmd("XADD")
                .arg(redis.keys().audit())
                .arg("MAXLEN")
                .arg("~")
                .arg(MAX_ENTRIES)
                .arg("*")
                .arg("at")
                .arg(entry.at)
                .arg("who")
                .arg(&entry.who)
                .arg("role")
                .arg(&entry.role)
                .arg("action")
                .arg(&entry.action)
                .arg("outcome")
                .arg(&entry.outcome)
                .arg("node")
                .arg(&entry.node),
        )
        .await?;
    Ok(())
}

/// The newest `limit` entries, newest first.
pub async fn newest(redis: &Redis, limit: usize) -> Result<Vec<Entry>, StoreError> {
    type Raw = Vec<(String, Vec<(String, String)>)>;
    let raw: Raw = redis
        .query(
            redis::cmd("XREVRANGE")
                .arg(redis.keys().audit())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(limit),
        )
        .await?;
    Ok(raw
        .into_iter()
        .map(|(id, fields)| {
            let get = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            Entry {
                at: get("at").parse().unwrap_or(0),
                who: get("who"),
                role: get("role"),
                action: get("action"),
                outcome: get("outcome"),
                node: get("node"),
                id,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fingerprint_is_short_and_stable() {
        let f = super::fingerprint("key-1");
        assert_eq!(f.len(), 12);
        assert_eq!(f, super::fingerprint("key-1"));
        assert_ne!(f, super::fingerprint("key-2"));
    }
}
