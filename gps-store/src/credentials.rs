//! Device and API-key credentials: the one device lookup (by ingest-token digest, tenant and
//! uid, or id; and the uid-only devices by uid: one column list, one row type, the settings
//! resolved by the `device_identity` view) and the one API-key rule, shared by ingest (behind its TTL cache)
//! and by principal resolution in the query API and fanout.
//!
//! The API-key rule is [`ApiKeyRecord::verify`], a pure function of the fetched row and `now`:
//! the presented key's digest matches (constant-time), the key is usable
//! ([`ApiKeyRecord::usable`]: neither revoked nor expired, and its creator still active), it
//! carries the required scope, and its `last_used_at` is due for an update at most once per
//! [`LAST_USED_RESOLUTION`]. Callers write that update with [`touch_api_key`], whose SQL repeats
//! the once-a-minute guard, so concurrent callers and several instances still write at most
//! once a minute per key.
//!
//! A key acts with its creator's delegated authority: the lookup ([`api_key`], [`api_key_by_id`])
//! reads the creating user in the same query, so a key whose creator is disabled stops working
//! (a deleted creator deletes its keys: `api_keys.created_by` is `ON DELETE CASCADE`), and its
//! scopes are capped by what the creator's role grants now (a demoted creator's keys lose what
//! the creator lost). A key without a creator (`created_by` NULL) was provisioned by an operator
//! (seed tooling, SQL), not by a user, and answers to nobody's account.

use chrono::{DateTime, TimeDelta, Utc};
use gps_domain::auth::{digests_equal, scopes_allow, secret_digest, Permission};
use gps_domain::fix::units::SpeedUnit;
use sqlx::PgPool;
use uuid::Uuid;

/// A device as the services need it to accept its fixes, with its settings already resolved
/// against its tenant's defaults (the `device_identity` view: device value, else tenant default,
/// else built-in default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Device id (Kafka key).
    pub id: Uuid,
    /// Owning tenant.
    pub tenant_id: Uuid,
    /// The device's own uid (unique within its tenant).
    pub uid: String,
    /// Disabled devices are refused like unknown ones.
    pub disabled: bool,
    /// HMAC key for UDP, when the device has one.
    pub udp_key: Option<[u8; 32]>,
    /// Effective: whether the device may report by its uid alone, without a token (an explicit
    /// opt-in of the device, else its tenant's `uid_only_devices`, else false).
    pub uid_only: bool,
    /// Effective: the unit the OsmAnd endpoint reads this device's `speed` in (the device's
    /// setting, else its tenant's `osmand_speed_unit`, else knots).
    pub speed_unit: SpeedUnit,
    /// The OwnTracks payload-encryption secret, when the device has one.
    pub payload_secret: Option<PayloadSecret>,
}

/// A device's OwnTracks payload-encryption secret (the app's "encryption key"). Its `Debug`
/// never shows the value, so a logged record cannot leak it; read it with
/// [`PayloadSecret::expose`] only where it is used.
#[derive(Clone, PartialEq, Eq)]
pub struct PayloadSecret(String);

impl PayloadSecret {
    /// Wrap a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, as configured.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PayloadSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PayloadSecret(redacted)")
    }
}

/// The `device_identity` row behind a [`DeviceRecord`].
#[derive(sqlx::FromRow)]
struct DeviceRow {
    id: Uuid,
    tenant_id: Uuid,
    uid: String,
    disabled: bool,
    udp_key: Option<Vec<u8>>,
    uid_only: bool,
    speed_unit: String,
    payload_secret: Option<String>,
}

impl From<DeviceRow> for DeviceRecord {
    fn from(row: DeviceRow) -> Self {
        Self {
            id: row.id,
            tenant_id: row.tenant_id,
            uid: row.uid,
            disabled: row.disabled,
            // The column is CHECKed to 32 bytes; anything else means no usable key.
            udp_key: row
                .udp_key
                .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok()),
            uid_only: row.uid_only,
            // The column is CHECKed to the known units and the view falls back to knots.
            speed_unit: row.speed_unit.parse().unwrap_or_default(),
            payload_secret: row.payload_secret.map(PayloadSecret),
        }
    }
}

/// The one column list of a device lookup, completed by a `WHERE` condition on `$1` (and `$2`).
/// A static string per lookup keeps each one a single prepared statement.
macro_rules! select_device_where {
    ($condition:literal) => {
        concat!(
            "SELECT id, tenant_id, uid, disabled, udp_key, uid_only, speed_unit, payload_secret
             FROM device_identity WHERE ",
            $condition
        )
    };
}

/// How a device is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKey<'a> {
    /// By the SHA-256 hex digest of its ingest token ([`secret_digest`]); never the token itself.
    TokenDigest(&'a str),
    /// By its uid within a tenant (uids are unique per tenant only): a gateway naming its
    /// tenant's devices. Devices reporting by uid alone are [`uid_only_devices`]' business.
    TenantUid(Uuid, &'a str),
    /// By its id.
    Id(Uuid),
}

/// The device `key` names, disabled or not: callers decide what a disabled device means.
pub async fn device(
    pool: &PgPool,
    key: DeviceKey<'_>,
) -> Result<Option<DeviceRecord>, sqlx::Error> {
    let query = match key {
        DeviceKey::TokenDigest(digest) => {
            sqlx::query_as::<_, DeviceRow>(select_device_where!("token_hash = $1")).bind(digest)
        }
        DeviceKey::TenantUid(tenant, uid) => {
            sqlx::query_as::<_, DeviceRow>(select_device_where!("tenant_id = $1 AND uid = $2"))
                .bind(tenant)
                .bind(uid)
        }
        DeviceKey::Id(id) => {
            sqlx::query_as::<_, DeviceRow>(select_device_where!("id = $1")).bind(id)
        }
    };
    Ok(query.fetch_optional(pool).await?.map(DeviceRecord::from))
}

/// The devices with uid `uid` whose effective `uid_only` is true, disabled or not, at most two:
/// a protocol that carries nothing but the uid may use the device only when exactly one
/// matches (two means two tenants opted the same uid in, and neither can be told apart).
pub async fn uid_only_devices(pool: &PgPool, uid: &str) -> Result<Vec<DeviceRecord>, sqlx::Error> {
    let rows: Vec<DeviceRow> =
        sqlx::query_as(select_device_where!("uid = $1 AND uid_only LIMIT 2"))
            .bind(uid)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(DeviceRecord::from).collect())
}

/// How often at most `api_keys.last_used_at` is written per key: keeps the hot path read-only.
pub const LAST_USED_RESOLUTION: TimeDelta = TimeDelta::seconds(60);

/// An `api_keys` row as the API-key rule needs it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiKeyRecord {
    /// API key id.
    pub id: Uuid,
    /// Tenant the key acts for.
    pub tenant_id: Uuid,
    /// SHA-256 hex digest of the whole key.
    key_hash: String,
    /// Permission names the key carries.
    pub scopes: Vec<String>,
    /// When the key stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether the key was revoked.
    pub revoked: bool,
    /// When the key was last recorded in use (at [`LAST_USED_RESOLUTION`]).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Whether the user who created the key still exists, in the key's tenant, and is enabled
    /// (true for operator-provisioned keys, which have no creator).
    pub creator_active: bool,
}

/// The verdict of the API-key rule on a presented key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVerdict {
    /// Usable, with the required scope. `touch_last_used`: record the use now
    /// ([`touch_api_key`]); false while the last recorded use is younger than
    /// [`LAST_USED_RESOLUTION`].
    Accepted {
        /// Whether `last_used_at` is due for an update.
        touch_last_used: bool,
    },
    /// Genuine and usable, but without the required scope (a 403, not a 401).
    MissingScope,
    /// Wrong secret, revoked or expired (a 401, like an unknown key).
    Invalid,
}

impl ApiKeyRecord {
    /// The one API-key rule (pure): `presented` hashes to this key's digest (compared in
    /// constant time), the key is not revoked, `now` is before its expiry, and it carries
    /// `required` (when given; principals carry their scopes to each route's own check instead).
    pub fn verify(
        &self,
        presented: &str,
        required: Option<Permission>,
        now: DateTime<Utc>,
    ) -> KeyVerdict {
        let genuine = digests_equal(&secret_digest(presented), &self.key_hash);
        if !genuine || !self.usable(now) {
            return KeyVerdict::Invalid;
        }
        if required.is_some_and(|p| !scopes_allow(&self.scopes, p)) {
            return KeyVerdict::MissingScope;
        }
        KeyVerdict::Accepted {
            touch_last_used: self
                .last_used_at
                .is_none_or(|t| now - t >= LAST_USED_RESOLUTION),
        }
    }

    /// Whether the key may act at `now`, whoever presents it: not revoked, not expired (expiry
    /// is exclusive) and its creator still active. [`Self::verify`] adds the secret and scope
    /// checks; [`crate::principal::current`] re-checks a principal already authenticated.
    pub fn usable(&self, now: DateTime<Utc>) -> bool {
        let expired = self.expires_at.is_some_and(|t| t <= now);
        !self.revoked && !expired && self.creator_active
    }

    /// This record with its use at `now` recorded: what a cache keeps after [`touch_api_key`],
    /// so that the rule does not ask for another update within [`LAST_USED_RESOLUTION`].
    pub fn used_at(&self, now: DateTime<Utc>) -> Self {
        Self {
            last_used_at: Some(now),
            ..self.clone()
        }
    }
}

/// The one column list of an API-key lookup, completed by a `WHERE` condition on `$1` (and `$2`):
/// the key, its creator's state, and its scopes capped by the creator's current role (in scope
/// order). A static string per lookup keeps each one a single prepared statement.
macro_rules! select_api_key_where {
    ($condition:literal) => {
        concat!(
            "SELECT k.id, k.tenant_id, k.key_hash,
                    CASE WHEN k.created_by IS NULL THEN k.scopes
                         ELSE ARRAY(SELECT s FROM unnest(k.scopes) WITH ORDINALITY AS t (s, n)
                                    WHERE s IN (SELECT permission FROM role_permissions
                                                WHERE role = u.role)
                                    ORDER BY n)
                    END AS scopes,
                    k.expires_at, k.revoked_at IS NOT NULL AS revoked, k.last_used_at,
                    (k.created_by IS NULL
                     OR coalesce(NOT u.disabled AND u.tenant_id = k.tenant_id, false))
                        AS creator_active
             FROM api_keys k LEFT JOIN users u ON u.id = k.created_by
             WHERE ",
            $condition
        )
    };
}

/// The API key with lookup id `prefix` (the `<id>` of `gpsk_<id>_<secret>`, see
/// [`gps_domain::auth::api_key_id`]), whatever its state: [`ApiKeyRecord::verify`] judges it.
pub async fn api_key(pool: &PgPool, prefix: &str) -> Result<Option<ApiKeyRecord>, sqlx::Error> {
    sqlx::query_as(select_api_key_where!("k.prefix = $1"))
        .bind(prefix)
        .fetch_optional(pool)
        .await
}

/// The API key `id` of `tenant`, whatever its state: [`ApiKeyRecord::usable`] judges it (the
/// secret was checked when the principal was authenticated).
pub async fn api_key_by_id(
    pool: &PgPool,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<ApiKeyRecord>, sqlx::Error> {
    sqlx::query_as(select_api_key_where!("k.id = $1 AND k.tenant_id = $2"))
        .bind(id)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

/// Record that key `id` was used at `now`, unless a use within [`LAST_USED_RESOLUTION`] is
/// already recorded (the same guard as [`ApiKeyRecord::verify`], in SQL, so racing callers write
/// once). Returns whether the row was written.
pub async fn touch_api_key(
    pool: &PgPool,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE api_keys SET last_used_at = $2
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at <= $2 - make_interval(secs => $3))",
    )
    .bind(id)
    .bind(now)
    .bind(LAST_USED_RESOLUTION.num_seconds() as f64)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gps_domain::auth::new_api_key;

    fn record(key: &str, scopes: &[&str]) -> ApiKeyRecord {
        ApiKeyRecord {
            id: Uuid::new_v4(),
            tenant_id: Uuid::new_v4(),
            key_hash: secret_digest(key),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_at: None,
            revoked: false,
            last_used_at: None,
            creator_active: true,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap()
    }

    const ACCEPTED: KeyVerdict = KeyVerdict::Accepted {
        touch_last_used: true,
    };

    #[test]
    fn a_genuine_usable_key_is_accepted() {
        let key = new_api_key().key;
        let rec = record(&key, &["fixes:write"]);
        assert_eq!(
            rec.verify(&key, Some(Permission::FixesWrite), now()),
            ACCEPTED
        );
        assert_eq!(rec.verify(&key, None, now()), ACCEPTED);
    }

    #[test]
    fn a_wrong_secret_revocation_or_expiry_is_invalid() {
        let key = new_api_key().key;
        let rec = record(&key, &["fixes:write"]);
        assert_eq!(
            rec.verify(&new_api_key().key, None, now()),
            KeyVerdict::Invalid
        );
        assert_eq!(
            rec.verify(&format!("{key}x"), None, now()),
            KeyVerdict::Invalid
        );
        let revoked = ApiKeyRecord {
            revoked: true,
            ..rec.clone()
        };
        assert_eq!(revoked.verify(&key, None, now()), KeyVerdict::Invalid);
        // Expiry is exclusive: at the instant itself the key no longer works.
        let expiring = ApiKeyRecord {
            expires_at: Some(now()),
            ..rec.clone()
        };
        assert_eq!(expiring.verify(&key, None, now()), KeyVerdict::Invalid);
        let just_before = now() - TimeDelta::milliseconds(1);
        assert_eq!(expiring.verify(&key, None, just_before), ACCEPTED);
        // A key whose creator was disabled dies with the creator's account.
        let orphaned = ApiKeyRecord {
            creator_active: false,
            ..rec.clone()
        };
        assert_eq!(orphaned.verify(&key, None, now()), KeyVerdict::Invalid);
        assert!(!orphaned.usable(now()) && rec.usable(now()));
        // Invalid wins over a missing scope: a stranger learns nothing about the key's scopes.
        assert_eq!(
            revoked.verify(&key, Some(Permission::UsersWrite), now()),
            KeyVerdict::Invalid
        );
    }

    #[test]
    fn scopes_are_checked_only_when_required() {
        let key = new_api_key().key;
        let rec = record(&key, &["positions:read"]);
        assert_eq!(
            rec.verify(&key, Some(Permission::FixesWrite), now()),
            KeyVerdict::MissingScope
        );
        assert_eq!(
            rec.verify(&key, Some(Permission::PositionsRead), now()),
            ACCEPTED
        );
    }

    #[test]
    fn last_used_is_due_at_most_once_a_minute() {
        let key = new_api_key().key;
        let rec = record(&key, &[]).used_at(now());
        let at = |secs: i64| rec.verify(&key, None, now() + TimeDelta::seconds(secs));
        let touch = |touch_last_used| KeyVerdict::Accepted { touch_last_used };
        assert_eq!(at(0), touch(false));
        assert_eq!(at(59), touch(false));
        assert_eq!(at(60), touch(true));
        assert_eq!(at(3600), touch(true));
        // A clock behind the recorded use (another instance wrote it) does not write again.
        assert_eq!(at(-5), touch(false));
    }
}
