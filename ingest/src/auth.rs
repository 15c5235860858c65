//! Device and gateway credentials, looked up in PostgreSQL (stored as SHA-256 digests) and cached
//! with a short TTL so that the hot path does not hit the database per request. Unknown
//! credentials are cached too (shorter), so a flood of bad tokens cannot become a flood of
//! queries. A device disabled or a key revoked in the database is refused at the latest one TTL
//! later.

use crate::config::AuthArgs;
use gps_domain::auth::{api_key_id, digests_equal, secret_digest, Permission};
use sqlx::PgPool;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A device as ingest needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Device id (Kafka key).
    pub id: Uuid,
    /// Owning tenant.
    pub tenant_id: Uuid,
    /// The device's own uid.
    pub uid: String,
    /// Disabled devices are refused like unknown ones.
    pub disabled: bool,
    /// HMAC key for UDP, when the device has one.
    pub udp_key: Option<[u8; 32]>,
}

/// An `api_keys` row: id, tenant, digest, scopes, expiry, revoked.
type ApiKeyRow = (
    Uuid,
    Uuid,
    String,
    Vec<String>,
    Option<chrono::DateTime<chrono::Utc>>,
    bool,
);

/// A gateway API key as ingest needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// API key id.
    pub id: Uuid,
    /// Tenant the key acts for.
    pub tenant_id: Uuid,
    key_hash: String,
    /// Whether the scopes include `fixes:write`.
    pub can_write_fixes: bool,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    revoked: bool,
}

/// The credential store could not answer (database down): a 503, not a 401.
#[derive(Debug, thiserror::Error)]
#[error("credential store unavailable: {0}")]
pub struct Unavailable(pub String);

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

type DeviceRow = (Uuid, Uuid, String, bool, Option<Vec<u8>>);

const DEVICE_COLUMNS: &str = "SELECT id, tenant_id, uid, disabled, udp_key FROM devices";

fn device_from_row(row: DeviceRow) -> Arc<DeviceRecord> {
    let (id, tenant_id, uid, disabled, udp_key) = row;
    Arc::new(DeviceRecord {
        id,
        tenant_id,
        uid,
        disabled,
        udp_key: udp_key.and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok()),
    })
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

    fn ttl_for<T>(&self, value: &Option<T>) -> Duration {
        if value.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        }
    }

    async fn fetch_device(
        &self,
        filter: &str,
        bind: impl FnOnce(
            sqlx::query::QueryAs<'_, sqlx::Postgres, DeviceRow, sqlx::postgres::PgArguments>,
        ) -> sqlx::query::QueryAs<
            '_,
            sqlx::Postgres,
            DeviceRow,
            sqlx::postgres::PgArguments,
        >,
    ) -> Result<Option<Arc<DeviceRecord>>, Unavailable> {
        let sql = format!("{DEVICE_COLUMNS} WHERE {filter}");
        let row = bind(sqlx::query_as::<_, DeviceRow>(&sql))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Unavailable(e.to_string()))?;
        Ok(row.map(device_from_row))
    }

    /// The enabled device whose ingest token is `token`.
    pub async fn device_by_token(
        &self,
        token: &str,
    ) -> Result<Option<Arc<DeviceRecord>>, Unavailable> {
        let digest = secret_digest(token);
        let found = match self.by_token.get(&digest) {
            Some(found) => found,
            None => {
                let found = self
                    .fetch_device("token_hash = $1", |q| q.bind(digest.clone()))
                    .await?;
                self.by_token
                    .insert(digest, found.clone(), self.ttl_for(&found));
                found
            }
        };
        Ok(found.filter(|d| !d.disabled))
    }

    /// The enabled device with uid `uid`.
    pub async fn device_by_uid(&self, uid: &str) -> Result<Option<Arc<DeviceRecord>>, Unavailable> {
        let found = match self.by_uid.get(&uid.to_owned()) {
            Some(found) => found,
            None => {
                let found = self
                    .fetch_device("uid = $1", |q| q.bind(uid.to_owned()))
                    .await?;
                self.by_uid
                    .insert(uid.to_owned(), found.clone(), self.ttl_for(&found));
                found
            }
        };
        Ok(found.filter(|d| !d.disabled))
    }

    /// The enabled device with id `id`.
    pub async fn device_by_id(&self, id: Uuid) -> Result<Option<Arc<DeviceRecord>>, Unavailable> {
        let found = match self.by_id.get(&id) {
            Some(found) => found,
            None => {
                let found = self.fetch_device("id = $1", |q| q.bind(id)).await?;
                self.by_id.insert(id, found.clone(), self.ttl_for(&found));
                found
            }
        };
        Ok(found.filter(|d| !d.disabled))
    }

    /// Check a presented API key (`gpsk_<id>_<secret>`).
    pub async fn api_key(&self, presented: &str) -> Result<KeyCheck, Unavailable> {
        let Some(prefix) = api_key_id(presented) else {
            return Ok(KeyCheck::Invalid);
        };
        let found = match self.keys.get(&prefix.to_owned()) {
            Some(found) => found,
            None => {
                let row: Option<ApiKeyRow> = sqlx::query_as(
                    "SELECT id, tenant_id, key_hash, scopes, expires_at, revoked_at IS NOT NULL
                         FROM api_keys WHERE prefix = $1",
                )
                .bind(prefix)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| Unavailable(e.to_string()))?;
                let found = row.map(|(id, tenant_id, key_hash, scopes, expires_at, revoked)| {
                    Arc::new(ApiKeyRecord {
                        id,
                        tenant_id,
                        key_hash,
                        can_write_fixes: scopes
                            .iter()
                            .any(|s| s == Permission::FixesWrite.as_str()),
                        expires_at,
                        revoked,
                    })
                });
                self.keys
                    .insert(prefix.to_owned(), found.clone(), self.ttl_for(&found));
                found
            }
        };
        let Some(key) = found else {
            return Ok(KeyCheck::Invalid);
        };
        let expired = key.expires_at.is_some_and(|t| t <= chrono::Utc::now());
        if key.revoked || expired || !digests_equal(&secret_digest(presented), &key.key_hash) {
            return Ok(KeyCheck::Invalid);
        }
        Ok(if key.can_write_fixes {
            KeyCheck::Ok(key)
        } else {
            KeyCheck::MissingScope
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_map_expires_and_stays_bounded() {
        let map = TtlMap::new(2);
        map.insert("a", 1, Duration::from_secs(60));
        map.insert("b", 2, Duration::ZERO);
        assert_eq!(map.get(&"a"), Some(1));
        assert_eq!(map.get(&"b"), None, "expired");
        map.insert("c", 3, Duration::from_secs(60));
        map.insert("d", 4, Duration::from_secs(60));
        assert!(map.entries.lock().unwrap().len() <= 2);
        assert_eq!(map.get(&"d"), Some(4));
    }
}
