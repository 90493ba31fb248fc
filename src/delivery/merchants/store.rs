//! The merchant registry in Redis: one record per merchant (`merchant_put.lua`,
//! `merchant_delete.lua`), a paged index, and a short-lived cache per node.
//!
//! Invariant: every change is a compare-and-set on the record's version, so concurrent changes
//! are applied one after the other or retried, never lost; a change reaches every node's cache
//! within [`CACHE_TTL`]. Unknown merchants are never cached, so a merchant is usable on every
//! node as soon as its `POST` has answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;

use super::model::{Merchant, SecretInfo};
use super::secrets::{self, Keyring, Secret, SecretsError};
use crate::redis::{as_i64, as_string, Redis, StoreError};
use crate::util::lock;

/// How long a node uses a merchant record before reading it again.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// Most compare-and-set rounds for one change before it is reported as contended.
const CAS_ROUNDS: usize = 8;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum MerchantError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("merchant {0:?} exists already")]
    Exists(String),
    #[error("no merchant {0:?}")]
    NotFound(String),
    #[error("merchant {0:?} kept changing while this change was made; try again")]
    Contended(String),
    #[error("{0}")]
    Invalid(#[from] crate::delivery::schema::SchemaError),
    #[error("stored merchant record {0:?} is unreadable: {1}")]
    Corrupt(String, String),
}

/// One stored record: the merchant, its sealed secrets and its version.
#[derive(Debug, Clone)]
pub struct Record {
    pub merchant: Merchant,
    sealed: String,
    version: i64,
}

/// What the worker needs to sign a merchant's notification.
#[derive(Debug, Clone)]
pub enum Signing {
    /// The HMAC keys that sign now, newest first.
    Keys(Arc<Vec<Vec<u8>>>),
    /// Disabled: its notifications wait.
    Disabled,
    /// There is no such merchant (any more).
    Missing,
}

struct Cached {
    at: Instant,
    record: Option<Arc<Record>>,
    keys: Option<Arc<Vec<Vec<u8>>>>,
}

/// The registry. Cheap to clone (one cache per node, shared).
#[derive(Clone)]
pub struct Registry {
    redis: Redis,
    keyring: Option<Arc<Keyring>>,
    cache: Arc<Mutex<HashMap<String, Cached>>>,
}

impl Registry {
    /// A registry on `redis`; `keyring` seals and opens secrets (without it, merchants can be
    /// read and used for enqueue, but secrets can be neither made nor used to sign).
    pub fn new(redis: Redis, keyring: Option<Keyring>) -> Self {
        Self {
            redis,
            keyring: keyring.map(Arc::new),
            cache: Arc::default(),
        }
    }

    fn keyring(&self) -> Result<&Keyring, SecretsError> {
        self.keyring.as_deref().ok_or(SecretsError::NoKey)
    }

    /// Reads a record from Redis (no cache).
    pub async fn read(&self, id: &str) -> Result<Option<Record>, MerchantError> {
        let key = self.redis.keys().merchant(id);
        let reply: Vec<Value> = self
            .redis
            .query(
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("doc")
                    .arg("sealed")
                    .arg("version"),
            )
            .await?;
        let (Some(doc), Some(sealed), Some(version)) = (
            reply.first().and_then(as_string),
            reply.get(1).and_then(as_string),
            reply.get(2).and_then(as_i64),
        ) else {
            return Ok(None);
        };
        let merchant: Merchant = serde_json::from_str(&doc)
            .map_err(|e| MerchantError::Corrupt(id.to_string(), e.to_string()))?;
        Ok(Some(Record {
            merchant,
            sealed,
            version,
        }))
    }

    /// The merchant's record as this node knows it (at most [`CACHE_TTL`] old), for enqueue.
    pub async fn cached(&self, id: &str) -> Result<Option<Arc<Record>>, MerchantError> {
        if let Some(c) = lock(&self.cache).get(id) {
            if c.at.elapsed() < CACHE_TTL {
                return Ok(c.record.clone());
            }
        }
        let record = self.read(id).await?.map(Arc::new);
        let mut cache = lock(&self.cache);
        if cache.len() > 100_000 {
            cache.retain(|_, c| c.at.elapsed() < CACHE_TTL);
        }
        if let Some(r) = &record {
            cache.insert(
                id.to_string(),
                Cached {
                    at: Instant::now(),
                    record: Some(r.clone()),
                    keys: None,
                },
            );
        } else {
            cache.remove(id);
        }
        Ok(record)
    }

    /// What signs the merchant's notifications now (cached as [`cached`](Self::cached)).
    pub async fn signing(&self, id: &str, now_ms: i64) -> Result<Signing, MerchantError> {
        let Some(record) = self.cached(id).await? else {
            return Ok(Signing::Missing);
        };
        if record.merchant.disabled {
            return Ok(Signing::Disabled);
        }
        if let Some(keys) = lock(&self.cache).get(id).and_then(|c| c.keys.clone()) {
            return Ok(Signing::Keys(keys));
        }
        let all = self.keyring()?.open(id, &record.sealed)?;
        let keys = Arc::new(secrets::signing(&all, now_ms));
        if let Some(c) = lock(&self.cache).get_mut(id) {
            c.keys = Some(keys.clone());
        }
        Ok(Signing::Keys(keys))
    }

    fn forget(&self, id: &str) {
        lock(&self.cache).remove(id);
    }

    async fn put(&self, expected: i64, m: &Merchant, sealed: &str) -> Result<Put, StoreError> {
        let mut inv = self.redis.scripts().merchant_put.prepare_invoke();
        inv.key(self.redis.keys().merchant(&m.id))
            .arg(expected)
            .arg(serde_json::to_string(m).unwrap_or_default())
            .arg(sealed);
        let reply: Vec<Value> = self
            .redis
            .invoke_durably(&inv, |r: &Vec<Value>| {
                r.first().and_then(as_string).as_deref() == Some("ok")
            })
            .await?;
        self.forget(&m.id);
        match reply.first().and_then(as_string).as_deref() {
            Some("ok") => Ok(Put::Ok),
            Some("exists") => Ok(Put::Exists),
            Some("missing") => Ok(Put::Missing),
            Some("conflict") => Ok(Put::Conflict),
            _ => Err(StoreError::Reply(format!("merchant_put: {reply:?}"))),
        }
    }

    /// Registers `merchant` with a first secret; returns the record and that secret (the only
    /// time it is shown, but for [`reveal`](Self::reveal)).
    pub async fn create(
        &self,
        mut merchant: Merchant,
    ) -> Result<(Merchant, String), MerchantError> {
        let keyring = self.keyring()?;
        let secret = Secret {
            secret: secrets::new_secret(),
            created_at: merchant.created_at,
            expires_at: None,
        };
        merchant.secrets = vec![info(&secret)];
        let sealed = keyring.seal(&merchant.id, std::slice::from_ref(&secret));
        let index = self.redis.keys().merchant_index();
        let _: Value = self
            .redis
            .query(redis::cmd("ZADD").arg(&index).arg(0).arg(&merchant.id))
            .await?;
        match self.put(0, &merchant, &sealed).await? {
            Put::Ok => Ok((merchant, secret.secret)),
            _ => Err(MerchantError::Exists(merchant.id)),
        }
    }

    /// Changes a merchant: `change` gets the record and its secrets (opened only when
    /// `with_secrets`), and is run again if someone else changed the record meanwhile.
    pub async fn update<T>(
        &self,
        id: &str,
        with_secrets: bool,
        mut change: impl FnMut(&mut Merchant, &mut Vec<Secret>) -> Result<T, MerchantError>,
    ) -> Result<(Merchant, T), MerchantError> {
        for _ in 0..CAS_ROUNDS {
            let Some(record) = self.read(id).await? else {
                return Err(MerchantError::NotFound(id.to_string()));
            };
            let mut merchant = record.merchant.clone();
            let mut all = if with_secrets {
                self.keyring()?.open(id, &record.sealed)?
            } else {
                Vec::new()
            };
            let out = change(&mut merchant, &mut all)?;
            let sealed = if with_secrets {
                merchant.secrets = all.iter().map(info).collect();
                self.keyring()?.seal(id, &all)
            } else {
                record.sealed.clone()
            };
            match self.put(record.version, &merchant, &sealed).await? {
                Put::Ok => return Ok((merchant, out)),
                Put::Missing => return Err(MerchantError::NotFound(id.to_string())),
                Put::Conflict | Put::Exists => continue,
            }
        }
        Err(MerchantError::Contended(id.to_string()))
    }

    /// Makes a new current secret; the ones before it keep signing for `grace`, then stop.
    pub async fn rotate(
        &self,
        id: &str,
        grace: Duration,
        now_ms: i64,
    ) -> Result<(Merchant, String), MerchantError> {
        let until = now_ms.saturating_add(grace.as_millis() as i64);
        self.update(id, true, |m, all| {
            all.retain(|s| s.expires_at.is_none_or(|e| e > now_ms));
            for s in all.iter_mut() {
                s.expires_at = Some(s.expires_at.map_or(until, |e| e.min(until)));
            }
            let secret = secrets::new_secret();
            all.push(Secret {
                secret: secret.clone(),
                created_at: now_ms,
                expires_at: None,
            });
            m.updated_at = now_ms;
            Ok(secret)
        })
        .await
    }

    /// Every secret of the merchant with its value (the explicit reveal call).
    pub async fn reveal(&self, id: &str) -> Result<Vec<Secret>, MerchantError> {
        let record = self
            .read(id)
            .await?
            .ok_or_else(|| MerchantError::NotFound(id.to_string()))?;
        Ok(self.keyring()?.open(id, &record.sealed)?)
    }

    /// Removes a merchant; false if there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, MerchantError> {
        let mut inv = self.redis.scripts().merchant_delete.prepare_invoke();
        inv.key(self.redis.keys().merchant(id));
        let removed: i64 = self.redis.invoke_durably(&inv, |n| *n == 1).await?;
        self.forget(id);
        let _: Value = self
            .redis
            .query(
                redis::cmd("ZREM")
                    .arg(self.redis.keys().merchant_index())
                    .arg(id),
            )
            .await?;
        Ok(removed == 1)
    }

    /// Up to `limit` merchants with ids after `after`, in id order, and the cursor of the next
    /// page (`None` at the end).
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Merchant>, Option<String>), MerchantError> {
        let start = after.map_or("-".to_string(), |a| format!("({a}"));
        let ids: Vec<String> = self
            .redis
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.redis.keys().merchant_index())
                    .arg(start)
                    .arg("+")
                    .arg("BYLEX")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit + 1),
            )
            .await?;
        let more = ids.len() > limit;
        // Concurrent reads share the multiplexed connection: one round trip's wait, not one
        // per merchant (and each record keeps its own hash tag on a Cluster).
        let reads = futures::future::join_all(ids.iter().take(limit).map(|id| self.read(id))).await;
        let mut out = Vec::with_capacity(limit);
        for r in reads {
            if let Some(r) = r? {
                out.push(r.merchant);
            }
        }
        let next = more.then(|| ids[limit - 1].clone());
        Ok((out, next))
    }
}

enum Put {
    Ok,
    Exists,
    Missing,
    Conflict,
}

fn info(s: &Secret) -> SecretInfo {
    SecretInfo {
        id: secrets::secret_id(&s.secret),
        created_at: s.created_at,
        expires_at: s.expires_at,
    }
}
