//! Device and gateway credentials, cached with a short TTL so that the hot path does not hit the
//! database per request. The lookups and the API-key rule are the shared store's
//! ([`gps_store::credentials`]); this module only caches them. Unknown credentials are cached
//! too (shorter), so a flood of bad tokens cannot become a flood of queries. A device disabled, or
//! a key revoked, expired or whose creating user was disabled or deleted (the store's API-key
//! rule), is refused at the latest one TTL later.
//!
//! Device identity on the report protocols (OsmAnd / Traccar Client, OwnTracks, Teltonika) is
//! one rule, [`AuthCache::device_for_report`]: a device proves its reported uid with its own
//! token, and only a device opted in to uid-only mode (itself or its tenant), unambiguous across
//! tenants, may report by its uid alone. Callers answer every refusal alike.
//!
//! Found and unknown answers live in separate maps, so a flood of unknown credentials can only
//! evict other unknown ones, never a real device's entry. A credential found valid stays *known*
//! for a grace period after its entry expired (`--auth-known-grace-ms`): a known device is
//! admitted past the per-source limit on unknown credentials ([`SourceLimiter`]), and UDP keeps
//! serving it while a background lookup refreshes it ([`AuthCache::peek_device_by_id`]).
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
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

pub use gps_store::credentials::{ApiKeyRecord, DeviceRecord};

/// How often at most an ambiguous uid-only uid is logged ([`AuthCache::device_for_report`]).
const AMBIGUITY_LOG_INTERVAL: Duration = Duration::from_secs(3600);

/// How many ambiguous uids are remembered as logged.
const AMBIGUITY_LOG_CAPACITY: usize = 1024;

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
        self.get_within(key, Duration::ZERO)
            .and_then(|(value, fresh)| fresh.then_some(value))
    }

    /// The value while it is fresh or expired less than `grace` ago, with whether it is fresh.
    fn get_within(&self, key: &K, grace: Duration) -> Option<(V, bool)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match entries.get(key) {
            Some((expires, value)) if *expires > now => Some((value.clone(), true)),
            Some((expires, value)) if *expires + grace > now => Some((value.clone(), false)),
            _ => None,
        }
    }

    fn remove(&self, key: &K) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(key);
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

/// One kind of lookup: found records and unknown keys, apart (see the module docs).
struct Lookups<K, T> {
    found: TtlMap<K, Arc<T>>,
    unknown: TtlMap<K, ()>,
}

impl<K: Eq + Hash, T> Lookups<K, T> {
    fn new(capacity: usize) -> Self {
        Self {
            found: TtlMap::new(capacity),
            unknown: TtlMap::new(capacity),
        }
    }

    /// The cached answer: `Some(Some(record))`, `Some(None)` for known to be unknown, `None`
    /// when the database must be asked.
    fn get(&self, key: &K) -> Option<Option<Arc<T>>> {
        if let Some(found) = self.found.get(key) {
            return Some(Some(found));
        }
        self.unknown.get(key).map(|()| None)
    }
}

/// What the cache knows of a device id without asking the database ([`AuthCache::peek_device_by_id`]).
#[derive(Debug, Clone)]
pub enum Peek {
    /// An enabled device; `refresh` when its entry expired (within the grace period) and a
    /// background lookup should renew it.
    Known {
        /// The record.
        device: Arc<DeviceRecord>,
        /// Whether the entry is due for a refresh.
        refresh: bool,
    },
    /// Known to be unknown or disabled.
    Unknown,
    /// Not cached: only a lookup can tell.
    Missing,
}

/// The cached credential lookups.
pub struct AuthCache {
    pool: PgPool,
    ttl: Duration,
    negative_ttl: Duration,
    grace: Duration,
    by_token: Lookups<String, DeviceRecord>,
    uid_only: Lookups<String, DeviceRecord>,
    by_tenant_uid: Lookups<(Uuid, String), DeviceRecord>,
    ambiguous_logged: TtlMap<String, ()>,
    by_id: Lookups<Uuid, DeviceRecord>,
    keys: Lookups<String, ApiKeyRecord>,
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
            grace: Duration::from_millis(args.known_grace_ms),
            by_token: Lookups::new(args.capacity),
            uid_only: Lookups::new(args.capacity),
            by_tenant_uid: Lookups::new(args.capacity),
            ambiguous_logged: TtlMap::new(AMBIGUITY_LOG_CAPACITY),
            by_id: Lookups::new(args.capacity),
            keys: Lookups::new(args.capacity),
        }
    }

    /// Store what the database answered for `key`.
    fn remember<K: Eq + Hash + Clone, T>(
        &self,
        lookups: &Lookups<K, T>,
        key: K,
        found: Option<Arc<T>>,
    ) {
        match found {
            Some(record) => {
                lookups.unknown.remove(&key);
                lookups.found.insert(key, record, self.ttl);
            }
            None => {
                lookups.found.remove(&key);
                lookups.unknown.insert(key, (), self.negative_ttl);
            }
        }
    }

    /// The cached answer for `key`, or `fetch`'s, cached for the TTL (the negative TTL when
    /// nothing was found).
    async fn cached<K, T, Fut>(
        &self,
        lookups: &Lookups<K, T>,
        key: K,
        fetch: impl FnOnce() -> Fut,
    ) -> Result<Option<Arc<T>>, Unavailable>
    where
        K: Eq + Hash + Clone,
        Fut: Future<Output = Result<Option<T>, sqlx::Error>>,
    {
        if let Some(found) = lookups.get(&key) {
            return Ok(found);
        }
        let found = fetch().await?.map(Arc::new);
        self.remember(lookups, key, found.clone());
        Ok(found)
    }

    /// Whether `key` was found valid within the TTL plus the grace period (no database).
    fn known<K: Eq + Hash, T>(&self, lookups: &Lookups<K, T>, key: &K) -> Option<Arc<T>> {
        lookups
            .found
            .get_within(key, self.grace)
            .map(|(record, _)| record)
    }

    /// Whether the enabled device with ingest token `token` is known (no database).
    pub fn knows_token(&self, token: &str) -> bool {
        self.known(&self.by_token, &secret_digest(token))
            .is_some_and(|d| !d.disabled)
    }

    /// Whether the API key presented as `presented` names a key record found recently (no
    /// database; the secret is checked by [`AuthCache::api_key`]).
    pub fn knows_api_key(&self, presented: &str) -> bool {
        api_key_id(presented)
            .is_some_and(|prefix| self.known(&self.keys, &prefix.to_owned()).is_some())
    }

    /// What the cache knows of device `id`, without waiting for the database (the UDP loop).
    pub fn peek_device_by_id(&self, id: Uuid) -> Peek {
        if let Some((device, fresh)) = self.by_id.found.get_within(&id, self.grace) {
            return if device.disabled {
                Peek::Unknown
            } else {
                Peek::Known {
                    device,
                    refresh: !fresh,
                }
            };
        }
        match self.by_id.unknown.get(&id) {
            Some(()) => Peek::Unknown,
            None => Peek::Missing,
        }
    }

    /// Ask the database about device `id` whatever the cache holds, and cache the answer
    /// (run off the UDP loop).
    pub async fn refresh_device_by_id(&self, id: Uuid) -> Result<bool, Unavailable> {
        let found = credentials::device(&self.pool, DeviceKey::Id(id))
            .await?
            .map(Arc::new);
        let known = found.as_ref().is_some_and(|d| !d.disabled);
        self.remember(&self.by_id, id, found);
        Ok(known)
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

    /// The enabled device a report protocol (OsmAnd / Traccar Client, OwnTracks, Teltonika)
    /// speaks for: the one rule of device identity on every protocol whose message names the
    /// device by its uid.
    ///
    /// - With a `credential` (the device's ingest token): the device whose token it is, and only
    ///   if its uid is the reported `uid` (a token speaks for its own device only).
    /// - Without one: the device with that uid whose effective `uid_only` is true (an explicit
    ///   opt-in of the device or its tenant), and only when exactly one such device exists across
    ///   tenants; two are ambiguous (logged once per uid and hour) and name none.
    ///
    /// A disabled device is `None` like an unknown one, so callers give the one answer for
    /// unknown, unauthorised and disabled. Both paths are cached alike (the TTL, the shorter
    /// negative TTL), so the answer's timing tells no more than the cache already does.
    pub async fn device_for_report(
        &self,
        uid: &str,
        credential: Option<&str>,
    ) -> Result<Option<Arc<DeviceRecord>>, Unavailable> {
        let found = match credential {
            Some(token) => self.device_by_token(token).await?,
            None => {
                self.cached(&self.uid_only, uid.to_owned(), || async {
                    let mut matches = credentials::uid_only_devices(&self.pool, uid).await?;
                    if matches.len() > 1 {
                        self.log_ambiguous(uid);
                        return Ok(None);
                    }
                    Ok(matches.pop())
                })
                .await?
            }
        };
        Ok(found.filter(|d| !d.disabled && d.uid == uid))
    }

    /// Whether [`AuthCache::device_for_report`] would find an enabled device for this report
    /// in the cache (no database): such requests pass the per-source limit on unknown
    /// credentials.
    pub fn knows_report(&self, uid: &str, credential: Option<&str>) -> bool {
        let known = match credential {
            Some(token) => self.known(&self.by_token, &secret_digest(token)),
            None => self.known(&self.uid_only, &uid.to_owned()),
        };
        known.is_some_and(|d| !d.disabled && d.uid == uid)
    }

    /// Log once per uid and hour that two tenants opted the same uid into uid-only mode (the
    /// uid only: it is what the devices send in clear anyway).
    fn log_ambiguous(&self, uid: &str) {
        if self.ambiguous_logged.get(&uid.to_owned()).is_none() {
            self.ambiguous_logged
                .insert(uid.to_owned(), (), AMBIGUITY_LOG_INTERVAL);
            tracing::warn!(
                uid,
                "uid-only device uid is opted in by more than one tenant; refusing its reports"
            );
        }
    }

    /// The enabled device of `tenant` with uid `uid` (a gateway naming its tenant's devices).
    pub async fn device_by_tenant_uid(
        &self,
        tenant: Uuid,
        uid: &str,
    ) -> Result<Option<Arc<DeviceRecord>>, Unavailable> {
        let found = self
            .cached(&self.by_tenant_uid, (tenant, uid.to_owned()), || {
                credentials::device(&self.pool, DeviceKey::TenantUid(tenant, uid))
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
            .found
            .replace(&prefix.to_owned(), Arc::new(key.used_at(now)));
        let (pool, key_id) = (self.pool.clone(), key.id);
        tokio::spawn(async move {
            if let Err(e) = credentials::touch_api_key(&pool, key_id, now).await {
                tracing::warn!(key_id = %key_id, error = %e, "api key last_used_at update failed");
            }
        });
    }
}

/// Per-source token buckets for unauthenticated attempts: each request or datagram whose
/// credential is unknown (or wrong) takes a token from its source IP's bucket, which refills at
/// `per_sec` up to `burst`. An empty bucket refuses what would need a database lookup (HTTP:
/// `429` with `Retry-After`; UDP: dropped and counted), while credentials known to the cache
/// still pass, so known devices are never slowed down. In memory, per ingest instance: instances
/// do not share buckets, so a client spread over `n` instances gets `n` budgets. Bounded: when
/// `capacity` sources are tracked, refilled buckets are forgotten first, then all (an attacker
/// cycling through more addresses than that is bounded by the lookup limits instead).
#[derive(Debug)]
pub struct SourceLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    per_sec: f64,
    burst: f64,
    capacity: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl SourceLimiter {
    /// Buckets of `burst` tokens refilled at `per_sec`, for at most `capacity` sources.
    pub fn new(per_sec: f64, burst: u32, capacity: usize) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            per_sec: per_sec.max(f64::MIN_POSITIVE),
            burst: f64::from(burst.max(1)),
            capacity: capacity.max(1),
        }
    }

    /// Run `f` on `source`'s bucket, refilled to now.
    fn with_bucket<R>(&self, source: IpAddr, f: impl FnOnce(&mut Bucket) -> R) -> R {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= self.capacity && !buckets.contains_key(&source) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec < burst);
            if buckets.len() >= self.capacity {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(source).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = (bucket.tokens
            + now.duration_since(bucket.at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        bucket.at = now;
        f(bucket)
    }

    /// `Ok` with a whole token, else how long until there is one.
    fn verdict(&self, tokens: f64) -> Result<(), Duration> {
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::try_from_secs_f64((1.0 - tokens) / self.per_sec).unwrap_or(Duration::MAX))
        }
    }

    /// `Ok` when `source` has a token left (none is taken), else how long to wait.
    pub fn check(&self, source: IpAddr) -> Result<(), Duration> {
        let tokens = self.with_bucket(source, |b| b.tokens);
        self.verdict(tokens)
    }

    /// Take a token from `source`: `Ok` if there was one, else how long to wait.
    pub fn take(&self, source: IpAddr) -> Result<(), Duration> {
        let tokens = self.with_bucket(source, |b| {
            let before = b.tokens;
            if before >= 1.0 {
                b.tokens -= 1.0;
            }
            before
        });
        self.verdict(tokens)
    }
}

/// The name of the URL-encoded parameter that carries a device token on the report protocols
/// (`?token=…` in a Traccar Client server URL, an OsmAnd URL template or a GPSLogger custom URL;
/// or a form field).
pub const TOKEN_PARAM: &str = "token";

/// Take the device token off URL-encoded parameters (a query string or a form body): the value
/// of the first non-empty [`TOKEN_PARAM`] (less a trailing `/`), and the parameters without any
/// `token` pair, the others byte for byte. The decoder only ever sees the rest, so a token never becomes a fix
/// attribute (stored, relayed to dashboards) and the query string is never logged with it.
pub fn take_token_param(encoded: &[u8]) -> (Option<String>, Vec<u8>) {
    let mut token = None;
    let mut rest = Vec::with_capacity(encoded.len());
    for pair in encoded.split(|b| *b == b'&') {
        let parsed: Option<Vec<(String, String)>> = serde_urlencoded::from_bytes(pair).ok();
        if let Some([(key, value)]) = parsed.as_deref() {
            if key == TOKEN_PARAM {
                // Tokens are URL-safe base64 (never a `/`): a trailing `/` is the Flutter Traccar
                // Client's, which appends one to a server URL without a path
                // (`http://host:8080?token=…` becomes `…?token=…/`).
                let value = value.trim_end_matches('/');
                if token.is_none() && !value.is_empty() {
                    token = Some(value.to_owned());
                }
                continue;
            }
        }
        if !rest.is_empty() {
            rest.push(b'&');
        }
        rest.extend_from_slice(pair);
    }
    (token, rest)
}

/// Seconds for a `Retry-After` header: `wait` rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u32 {
    (wait.as_secs_f64().ceil() as u32).max(1)
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

    #[tokio::test(start_paused = true)]
    async fn a_source_over_its_budget_waits_for_a_refill_and_others_do_not() {
        let limiter = SourceLimiter::new(0.5, 3, 16);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(limiter.take(a), Ok(()));
        }
        let wait = limiter.take(a).unwrap_err();
        assert_eq!(wait, Duration::from_secs(2), "one token per 2 s");
        assert_eq!(retry_after_secs(wait), 2);
        assert_eq!(limiter.check(a), Err(Duration::from_secs(2)));
        assert_eq!(limiter.check(b), Ok(()), "another source is not affected");
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(limiter.check(a).unwrap_err(), Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(limiter.take(a), Ok(()));
        assert!(limiter.take(a).is_err());
        // Refills never exceed the burst.
        tokio::time::advance(Duration::from_secs(3_600)).await;
        for _ in 0..3 {
            assert_eq!(limiter.take(a), Ok(()));
        }
        assert!(limiter.take(a).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_stays_bounded_and_forgets_refilled_sources_first() {
        let limiter = SourceLimiter::new(1.0, 2, 2);
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        limiter.take(ip(1)).unwrap();
        limiter.take(ip(1)).unwrap();
        limiter.check(ip(2)).unwrap();
        // ip(2) is full, ip(1) empty: a third source evicts ip(2), not ip(1).
        limiter.check(ip(3)).unwrap();
        assert!(limiter.check(ip(1)).is_err(), "the drained bucket was kept");
        assert!(limiter.buckets.lock().unwrap().len() <= 2);
        assert_retry_after_rounds_up();
    }

    fn assert_retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2_001)), 3);
    }

    #[test]
    fn the_token_parameter_is_taken_off_and_the_rest_kept_byte_for_byte() {
        let (token, rest) = take_token_param(b"id=abc&lat=1.5&token=dvt_x%2By&lon=2&token=other");
        assert_eq!(token.as_deref(), Some("dvt_x+y"));
        assert_eq!(rest, b"id=abc&lat=1.5&lon=2");
        let (token, rest) = take_token_param(b"token=secret");
        assert_eq!(
            (token.as_deref(), rest.as_slice()),
            (Some("secret"), &b""[..])
        );
        let (token, _) = take_token_param(b"token=gpsd_abc-_9/");
        assert_eq!(
            token.as_deref(),
            Some("gpsd_abc-_9"),
            "a client's trailing slash"
        );
        // An empty token is no token; a key merely containing the name is not it.
        let (token, rest) = take_token_param(b"token=&tokens=1&id=a%26b");
        assert_eq!((token, rest.as_slice()), (None, &b"tokens=1&id=a%26b"[..]));
        let (token, rest) = take_token_param(b"");
        assert_eq!((token, rest.as_slice()), (None, &b""[..]));
    }

    #[tokio::test(start_paused = true)]
    async fn found_entries_stay_known_through_the_grace_period_only() {
        let map = TtlMap::new(8);
        map.insert("k", 1, Duration::from_secs(10));
        assert_eq!(
            map.get_within(&"k", Duration::from_secs(5)),
            Some((1, true))
        );
        tokio::time::advance(Duration::from_secs(12)).await;
        assert_eq!(map.get(&"k"), None);
        assert_eq!(
            map.get_within(&"k", Duration::from_secs(5)),
            Some((1, false))
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(map.get_within(&"k", Duration::from_secs(5)), None);
    }
}
