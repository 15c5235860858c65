//! Device and gateway credentials, cached with a short TTL so that the hot path does not hit the
//! database per request. The lookups and the API-key rule are the shared store's
//! ([`gps_store::credentials`]); this module only caches them. Unknown credentials are cached
//! too (shorter), so a flood of bad tokens cannot become a flood of queries. A device disabled or
//! a key revoked in the database is refused at the latest one TTL later.
//!
//! A gateway key's use is recorded in `api_keys.last_used_at` at most once a minute, as the
//! rule asks: the cached record is marked used at once (so the next requests see no update due)
//! and the update itself runs in the background, logged if it fails, so it never adds a database
//! round trip to a request.

use crate::config::AuthArgs;
use chrono::{DateTime, Utc};
use gps_domain::auth::{api_key_id, secret_digest, Permission};
use gps_store::credentials::{self, DeviceKey, KeyVerdict};
use sqlx::PgPool;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

pub use gps_store::credentials::{ApiKeyRecord, DeviceRecord};

/// The credential store could not answer (database down): a 503, not a 401.
#[derive(Debug, thiserror::Error)]
#[error("credential store unavailable: {0}")]
pub struct Unavailable(pub String);

impl From<sqlx::Error> for Unavailable {
    fn from(e: sqlx::Error) -> Self {
        Self(e.to_string())
    }
}

/// Whether a presented API key is usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// Valid, with `fixes:write`.
    Ok(Arc<ApiKeyRecord>),
    /// Valid but without `fixes:write`.
    MissingScope,
    /// Unknown, wrong secret, revoked or expired.
    Invalid,
}

/// A bounded map whose entries expire. Time is tokio's clock, so tests can pause and advance it.
struct TtlMap<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> TtlMap<K, V> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((expires, value)) if *expires > Instant::now() => Some(value.clone()),
            _ => None,
        }
    }

    fn insert(&self, key: K, value: V, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= self.capacity {
                // Still full of live entries: start over rather than grow without bound.
                entries.clear();
            }
        }
        entries.insert(key, (now + ttl, value));
    }

    /// Swap the value of a present entry, keeping its expiry: an update must not extend how
    /// long a cached credential is trusted.
    fn replace(&self, key: &K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, slot)) = entries.get_mut(key) {
            *slot = value;
        }
    }
}

/// The cached credential lookups.
pub struct AuthCache {
    pool: PgPool,
    ttl: Duration,
    negative_ttl: Duration,
    by_token: TtlMap<String, Option<Arc<DeviceRecord>>>,
    by_uid: TtlMap<String, Option<Arc<DeviceRecord>>>,
    by_id: TtlMap<Uuid, Option<Arc<DeviceRecord>>>,
    keys: TtlMap<String, Option<Arc<ApiKeyRecord>>>,
}

impl std::fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCache").field("ttl", &self.ttl).finish()
    }
}

impl AuthCache {
    /// A cache over `pool`.
    pub fn new(pool: PgPool, args: &AuthArgs) -> Self {
        Self {
            pool,
            ttl: Duration::from_millis(args.ttl_ms),
            negative_ttl: Duration::from_millis(args.negative_ttl_ms),
            by_token: TtlMap::new(args.capacity),
            by_uid: TtlMap::new(args.capacity),
            by_id: TtlMap::new(args.capacity),
            keys: TtlMap::new(args.capacity),
        }
    }

    /// The cached answer for `key`, or `fetch`'s, cached for the TTL (the negative TTL when
    /// nothing was found).
    async fn cached<K, T, Fut>(
        &self,
        map: &TtlMap<K, Option<Arc<T>>>,
        key: K,
        fetch: impl FnOnce() -> Fut,
    ) -> Result<Option<Arc<T>>, Unavailable>
    where
        K: Eq + Hash,
        Fut: Future<Output = Result<Option<T>, sqlx::Error>>,
    {
        if let Some(found) = map.get(&key) {
            return Ok(found);
        }
        let found = fetch().await?.map(Arc::new);
        let ttl = if found.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        map.insert(key, found.clone(), ttl);
        Ok(found)
    }

    /// The enabled device whose ingest token is `token`.
    pub async fn device_by_token(
        &self,
        token: &str,
    ) -> Result<Option<Arc<DeviceRecord>>, Unavailable> {
        let digest = secret_digest(token);
        let found = self
            .cached(&self.by_token, digest.clone(), || {
                credentials::device(&self.pool, DeviceKey::TokenDigest(&digest))
            })
            .await?;
        Ok(found.filter(|d| !d.disabled))
    }

    /// The enabled device with uid `uid`.
    pub async fn device_by_uid(&self, uid: &str) -> Result<Option<Arc<DeviceRecord>>, Unavailable> {
        let found = self
            .cached(&self.by_uid, uid.to_owned(), || {
                credentials::device(&self.pool, DeviceKey::Uid(uid))
            })
            .await?;
        Ok(found.filter(|d| !d.disabled))
    }

    /// The enabled device with id `id`.
    pub async fn device_by_id(&self, id: Uuid) -> Result<Option<Arc<DeviceRecord>>, Unavailable> {
        let found = self
            .cached(&self.by_id, id, || {
                credentials::device(&self.pool, DeviceKey::Id(id))
            })
            .await?;
        Ok(found.filter(|d| !d.disabled))
    }

    /// Check a presented API key (`gpsk_<id>_<secret>`) by the one API-key rule, requiring
    /// `fixes:write`.
    pub async fn api_key(&self, presented: &str) -> Result<KeyCheck, Unavailable> {
        let Some(prefix) = api_key_id(presented) else {
            return Ok(KeyCheck::Invalid);
        };
        let found = self
            .cached(&self.keys, prefix.to_owned(), || {
                credentials::api_key(&self.pool, prefix)
            })
            .await?;
        let Some(key) = found else {
            return Ok(KeyCheck::Invalid);
        };
        let now = Utc::now();
        Ok(
            match key.verify(presented, Some(Permission::FixesWrite), now) {
                KeyVerdict::Accepted { touch_last_used } => {
                    if touch_last_used {
                        self.record_use(prefix, &key, now);
                    }
                    KeyCheck::Ok(key)
                }
                KeyVerdict::MissingScope => KeyCheck::MissingScope,
                KeyVerdict::Invalid => KeyCheck::Invalid,
            },
        )
    }

    /// Record a use of `key` at `now`: in the cache at once, in the database in the background.
    /// A lost update is logged and retried by the rule with the next request once the cached
    /// record is refetched.
    fn record_use(&self, prefix: &str, key: &ApiKeyRecord, now: DateTime<Utc>) {
        self.keys
            .replace(&prefix.to_owned(), Some(Arc::new(key.used_at(now))));
        let (pool, key_id) = (self.pool.clone(), key.id);
        tokio::spawn(async move {
            if let Err(e) = credentials::touch_api_key(&pool, key_id, now).await {
                tracing::warn!(key_id = %key_id, error = %e, "api key last_used_at update failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ttl_map_entries_expire_on_the_tokio_clock() {
        let map = TtlMap::new(8);
        map.insert("a", 1, Duration::from_secs(10));
        map.insert("b", 2, Duration::ZERO);
        assert_eq!(map.get(&"a"), Some(1));
        assert_eq!(map.get(&"b"), None, "a zero TTL is expired at once");
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(map.get(&"a"), Some(1));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(map.get(&"a"), None, "expired exactly at its TTL");
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_map_stays_bounded_and_evicts_the_expired_first() {
        let map = TtlMap::new(2);
        map.insert("old", 1, Duration::from_secs(1));
        map.insert("live", 2, Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(2)).await;
        map.insert("new", 3, Duration::from_secs(60));
        assert_eq!(
            map.get(&"live"),
            Some(2),
            "only the expired entry made room"
        );
        assert_eq!(map.get(&"new"), Some(3));
        map.insert("more", 4, Duration::from_secs(60));
        assert!(map.entries.lock().unwrap().len() <= 2);
        assert_eq!(map.get(&"more"), Some(4));
    }

    #[tokio::test(start_paused = true)]
    async fn replacing_a_value_keeps_its_expiry() {
        let map = TtlMap::new(8);
        map.insert("k", 1, Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(9)).await;
        map.replace(&"k", 2);
        assert_eq!(map.get(&"k"), Some(2));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            map.get(&"k"),
            None,
            "the replacement did not extend the TTL"
        );
        map.replace(&"absent", 3);
        assert_eq!(map.get(&"absent"), None, "replace never inserts");
    }
}
