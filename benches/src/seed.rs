//! The simulated fleet's identities, written straight into PostgreSQL: a tenant, its devices with
//! fresh ingest tokens and UDP keys (the database keeps only digests), and a user or API key for
//! the WebSocket subscribers. Same row shapes as `gps_runtime::testing::seed_device`.

use gps_domain::auth::{self, Role};
use gps_store::principal::JwtKeys;
use sqlx::PgPool;
use uuid::Uuid;

/// One simulated device and its clear-text credentials.
#[derive(Debug, Clone)]
pub struct Device {
    /// Database id.
    pub id: Uuid,
    /// The device's own identifier.
    pub uid: String,
    /// Bearer token for HTTP ingest.
    pub token: String,
    /// UDP HMAC key.
    pub udp_key: [u8; 32],
}

/// A tenant and its simulated devices.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Tenant id.
    pub tenant_id: Uuid,
    /// Devices, indexed by their position (the run's device index).
    pub devices: Vec<Device>,
}

/// Create (or reuse) tenant `tenant` and upsert `count` devices named `<prefix>-<n>`, rotating
/// their credentials: tokens are stored only as digests, so a rerun cannot recover the old ones.
/// Uids are unique per tenant, so another tenant's devices of the same names are no concern.
pub async fn fleet(
    pool: &PgPool,
    tenant: &str,
    prefix: &str,
    count: usize,
) -> Result<Fleet, sqlx::Error> {
    let tenant_id: Uuid = sqlx::query_scalar(
        "INSERT INTO tenants (name) VALUES ($1)
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await?;
    let mut devices = Vec::with_capacity(count);
    // Chunks keep each statement's parameter arrays small.
    for chunk_start in (0..count).step_by(1000) {
        let n = (count - chunk_start).min(1000);
        let uids: Vec<String> = (chunk_start..chunk_start + n)
            .map(|i| format!("{prefix}-{i:05}"))
            .collect();
        let tokens: Vec<String> = (0..n).map(|_| auth::new_device_token()).collect();
        let hashes: Vec<String> = tokens.iter().map(|t| auth::secret_digest(t)).collect();
        let keys: Vec<[u8; 32]> = (0..n).map(|_| auth::new_udp_key()).collect();
        let key_bytes: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "INSERT INTO devices (tenant_id, uid, name, token_hash, udp_key)
             SELECT $1, u, u, h, k FROM UNNEST($2::text[], $3::text[], $4::bytea[]) AS t(u, h, k)
             ON CONFLICT (tenant_id, uid) DO UPDATE
                SET token_hash = EXCLUDED.token_hash, udp_key = EXCLUDED.udp_key,
                    disabled = false, updated_at = now()
             RETURNING id, uid",
        )
        .bind(tenant_id)
        .bind(&uids)
        .bind(&hashes)
        .bind(&key_bytes)
        .fetch_all(pool)
        .await?;
        let ids: std::collections::HashMap<String, Uuid> =
            rows.into_iter().map(|(id, uid)| (uid, id)).collect();
        for ((uid, token), key) in uids.into_iter().zip(tokens).zip(keys) {
            let Some(&id) = ids.get(&uid) else {
                return Err(sqlx::Error::Protocol(format!(
                    "device uid {uid} belongs to another tenant; choose another --device-prefix"
                )));
            };
            devices.push(Device {
                id,
                uid,
                token,
                udp_key: key,
            });
        }
    }
    Ok(Fleet { tenant_id, devices })
}

/// Turn `fleet` into Teltonika units: each device's uid becomes a 15-digit IMEI derived from its
/// id, and the device is opted in to uid-only reporting (Teltonika carries no secret).
pub async fn as_teltonika(pool: &PgPool, fleet: &mut Fleet) -> Result<(), sqlx::Error> {
    for device in &mut fleet.devices {
        device.uid = format!("{:015}", device.id.as_u128() % 1_000_000_000_000_000);
    }
    let ids: Vec<Uuid> = fleet.devices.iter().map(|d| d.id).collect();
    let uids: Vec<String> = fleet.devices.iter().map(|d| d.uid.clone()).collect();
    sqlx::query(
        "UPDATE devices SET uid = t.u, uid_only = true, updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[]) AS t(i, u) WHERE devices.id = t.i",
    )
    .bind(&ids)
    .bind(&uids)
    .execute(pool)
    .await?;
    Ok(())
}

/// Create (or reuse) an analyst user of `tenant_id` named `email` that cannot log in with a
/// password, and mint it an access token valid `ttl_secs` with `keys`.
pub async fn live_viewer_token(
    pool: &PgPool,
    keys: &JwtKeys,
    tenant_id: Uuid,
    email: &str,
    ttl_secs: i64,
) -> Result<String, sqlx::Error> {
    // "!" is never a valid argon2 PHC string, so nobody can log in as this user.
    let user_id: Uuid = sqlx::query_scalar(
        "INSERT INTO users (tenant_id, email, display_name, password_hash, role)
         VALUES ($1, $2, 'load generator', '!', 'analyst')
         ON CONFLICT (tenant_id, lower(email)) DO UPDATE SET disabled = false, updated_at = now()
         RETURNING id",
    )
    .bind(tenant_id)
    .bind(email)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| sqlx::Error::Protocol(format!("user {email} belongs to another tenant")))?;
    Ok(keys.issue(user_id, tenant_id, Role::Analyst, ttl_secs))
}

/// A fresh API key with `live:read` for `tenant_id` (for the WebSocket subscribers when no JWT
/// secret is at hand), expiring after `ttl_secs`.
pub async fn live_api_key(
    pool: &PgPool,
    tenant_id: Uuid,
    ttl_secs: i64,
) -> Result<String, sqlx::Error> {
    let key = auth::new_api_key();
    sqlx::query(
        "INSERT INTO api_keys (tenant_id, name, prefix, key_hash, scopes, expires_at)
         VALUES ($1, 'loadgen', $2, $3, ARRAY['live:read'], now() + make_interval(secs => $4))",
    )
    .bind(tenant_id)
    .bind(&key.id)
    .bind(auth::secret_digest(&key.key))
    .bind(ttl_secs as f64)
    .execute(pool)
    .await?;
    Ok(key.key)
}
