//! Devices: list, create (the ingest token and UDP key are shown once), read, change (name,
//! disabled, identity settings), delete, credential rotation, and the tenant's device defaults
//! (`GET`/`PATCH /v1/tenant`).
//!
//! Identity settings (issue 14): `uid_only` (may the device report by its uid alone, without a
//! token), `speed_unit` (the unit the OsmAnd endpoint reads `speed` in) and `payload_secret`
//! (the OwnTracks encryption key: write-only, answered as `payload_secret_set`). `null` means
//! "the tenant's default" (`uid_only_devices`, `osmand_speed_unit`); the effective values are
//! resolved by the `device_identity` view, the one rule ingest reads too.
//!
//! `speed_limit_mps` (issue 16) is the device's own speed limit for `overspeed` events, in
//! (0, [`MAX_SPEED_LIMIT_MPS`]] m/s like a fence's; `null`: none of its own (a fence's may still
//! apply). The processor reads it when it evaluates the device's fixes.
//!
//! Uids are unique per tenant: another tenant's device with the same uid is no conflict and is
//! not disclosed. The one exception is uid-only mode: a protocol that carries nothing but the
//! uid can serve one device per uid across all tenants, so making a device uid-only while the
//! same uid is uid-only in another tenant is a 409 `uid_taken`, the one unavoidable oracle of
//! that mode (documented in `docs/security.md`). The check runs under a transaction-scoped
//! advisory lock on the uid, so two tenants enabling it at once cannot both succeed.

use crate::app::{audit_caller, ApiJson, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::routes::{check_name, not_found_if_zero, parse_id, remove_owned};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use gps_domain::auth::{self, Permission, Visibility};
use gps_domain::events::MAX_SPEED_LIMIT_MPS;
use gps_domain::fix::units::SpeedUnit;
use gps_store::visibility::visibility;
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct DeviceRow {
    id: Uuid,
    uid: String,
    name: String,
    disabled: bool,
    /// The device's own setting; `null`: the tenant's `uid_only_devices`.
    uid_only: Option<bool>,
    /// The device's own setting; `null`: the tenant's `osmand_speed_unit`.
    speed_unit: Option<String>,
    /// Whether an OwnTracks payload secret is set (the secret itself is never answered).
    payload_secret_set: bool,
    /// The device's own speed limit for `overspeed` events, m/s; `null`: none.
    speed_limit_mps: Option<f64>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const DEVICE_COLUMNS: &str = "id, uid, name, disabled, uid_only, speed_unit, \
    payload_secret IS NOT NULL AS payload_secret_set, speed_limit_mps, created_at, updated_at";

/// Longest OwnTracks payload secret, in characters (the column's CHECK).
const MAX_PAYLOAD_SECRET_CHARS: usize = 256;

/// A field that may be absent (leave as is), `null` (back to the tenant default) or a value.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A speed unit named in a body, or a 400 naming `field`.
fn parse_speed_unit(field: &str, raw: &str) -> ApiResult<SpeedUnit> {
    raw.parse().map_err(|e: String| ApiError::field(field, e))
}

/// 400 unless a payload secret has 1 to [`MAX_PAYLOAD_SECRET_CHARS`] characters.
fn check_payload_secret(secret: &str) -> ApiResult<()> {
    let chars = secret.chars().count();
    if chars == 0 || chars > MAX_PAYLOAD_SECRET_CHARS {
        return Err(ApiError::field(
            "payload_secret",
            format!("must be 1 to {MAX_PAYLOAD_SECRET_CHARS} characters"),
        ));
    }
    Ok(())
}

/// 400 unless a device speed limit is in (0, [`MAX_SPEED_LIMIT_MPS`]] m/s (the column's CHECK,
/// and a fence's rule).
fn check_speed_limit(limit: f64) -> ApiResult<()> {
    if !(limit > 0.0 && limit <= MAX_SPEED_LIMIT_MPS) {
        return Err(ApiError::field(
            "speed_limit_mps",
            format!("must be above 0 and at most {MAX_SPEED_LIMIT_MPS} m/s"),
        ));
    }
    Ok(())
}

/// Inside the transaction that created or changed device `id` of `tenant`: 409 `uid_taken` if the
/// device is now effectively uid-only while another tenant has a uid-only device with the same
/// uid. Serialized per uid by an advisory lock held until the transaction ends.
async fn check_uid_only_unique(
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> ApiResult<()> {
    let (uid, uid_only): (String, bool) =
        sqlx::query_as("SELECT uid, uid_only FROM device_identity WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if !uid_only {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('device_uid_only:' || $1, 0))")
        .bind(&uid)
        .execute(&mut *tx)
        .await?;
    let taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM device_identity WHERE uid = $1 AND uid_only AND tenant_id <> $2)",
    )
    .bind(&uid)
    .bind(tenant)
    .fetch_one(&mut *tx)
    .await?;
    if taken {
        return Err(uid_taken());
    }
    Ok(())
}

fn uid_taken() -> ApiError {
    ApiError::StateConflict {
        code: "uid_taken",
        message: "this uid is already used in uid-only mode elsewhere: a report that carries only \
                  the uid could not tell the devices apart; give this device a token instead"
            .into(),
    }
}

/// `GET /v1/devices`: the devices the caller may see.
pub(crate) async fn list_devices(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(Permission::DevicesRead)?;
    let rows: Vec<DeviceRow> = match visibility(&state.pool, &caller.principal).await? {
        Visibility::AllOfTenant(tenant) => {
            sqlx::query_as(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE tenant_id = $1 ORDER BY uid"
            ))
            .bind(tenant)
            .fetch_all(&state.pool)
            .await?
        }
        Visibility::Only(ids) => {
            sqlx::query_as(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE tenant_id = $1 AND id = ANY($2) ORDER BY uid"
            ))
            .bind(caller.tenant())
            .bind(ids.into_iter().collect::<Vec<_>>())
            .fetch_all(&state.pool)
            .await?
        }
    };
    Ok(Json(serde_json::json!({ "devices": rows })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateDevice {
    uid: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    uid_only: Option<bool>,
    #[serde(default)]
    speed_unit: Option<String>,
    #[serde(default)]
    payload_secret: Option<String>,
    #[serde(default)]
    speed_limit_mps: Option<f64>,
}

/// `POST /v1/devices`: returns the ingest token and UDP key once; 409 when the uid exists in the
/// caller's tenant, `uid_taken` when the new device would be uid-only on a uid that is uid-only
/// in another tenant.
pub(crate) async fn create_device(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateDevice>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    caller.require(Permission::DevicesWrite)?;
    let uid = body.uid.trim();
    if uid.is_empty() || uid.len() > 128 {
        return Err(ApiError::field("uid", "must be 1 to 128 characters"));
    }
    check_name("name", &body.name)?;
    let speed_unit = match &body.speed_unit {
        Some(raw) => Some(parse_speed_unit("speed_unit", raw)?),
        None => None,
    };
    if let Some(secret) = &body.payload_secret {
        check_payload_secret(secret)?;
    }
    if let Some(limit) = body.speed_limit_mps {
        check_speed_limit(limit)?;
    }
    let token = auth::new_device_token();
    let udp_key = auth::new_udp_key();
    let mut tx = state.pool.begin().await?;
    let row: DeviceRow = sqlx::query_as(&format!(
        "INSERT INTO devices (tenant_id, uid, name, token_hash, udp_key, uid_only, speed_unit,
                              payload_secret, speed_limit_mps)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {DEVICE_COLUMNS}"
    ))
    .bind(caller.tenant())
    .bind(uid)
    .bind(&body.name)
    .bind(auth::secret_digest(&token))
    .bind(udp_key.as_slice())
    .bind(body.uid_only)
    .bind(speed_unit.map(SpeedUnit::as_str))
    .bind(&body.payload_secret)
    .bind(body.speed_limit_mps)
    .fetch_one(&mut *tx)
    .await?;
    check_uid_only_unique(&mut tx, caller.tenant(), row.id).await?;
    tx.commit().await?;
    audit_caller(
        &state.pool,
        &caller,
        "devices.create",
        "device",
        row.id,
        serde_json::json!({
            "uid": uid,
            "uid_only": row.uid_only,
            "speed_unit": row.speed_unit,
            "payload_secret_set": row.payload_secret_set,
            "speed_limit_mps": row.speed_limit_mps,
        }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "device": row,
            "token": token,
            "udp_key": hex::encode(udp_key),
        })),
    ))
}

/// `GET /v1/devices/{id}`.
pub(crate) async fn get_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceRow>> {
    caller.require(Permission::DevicesRead)?;
    let id = parse_id(&id)?;
    caller.require_device(&state.pool, id).await?;
    let row: DeviceRow = sqlx::query_as(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1 AND tenant_id = $2"
    ))
    .bind(id)
    .bind(caller.tenant())
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound)?;
    Ok(Json(row))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchDevice {
    name: Option<String>,
    disabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    uid_only: Option<Option<bool>>,
    #[serde(default, deserialize_with = "present")]
    speed_unit: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    payload_secret: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    speed_limit_mps: Option<Option<f64>>,
}

/// `PATCH /v1/devices/{id}`: name, disabled, the identity settings (`null` resets a setting
/// to the tenant default, or removes the payload secret) and the speed limit (`null`: none).
/// Not the uid, not the tenant.
pub(crate) async fn patch_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchDevice>,
) -> ApiResult<Json<DeviceRow>> {
    caller.require(Permission::DevicesWrite)?;
    let id = parse_id(&id)?;
    if let Some(name) = &body.name {
        check_name("name", name)?;
    }
    let speed_unit = match &body.speed_unit {
        Some(Some(raw)) => Some(Some(parse_speed_unit("speed_unit", raw)?)),
        Some(None) => Some(None),
        None => None,
    };
    if let Some(Some(secret)) = &body.payload_secret {
        check_payload_secret(secret)?;
    }
    if let Some(Some(limit)) = body.speed_limit_mps {
        check_speed_limit(limit)?;
    }
    let mut tx = state.pool.begin().await?;
    let row: DeviceRow = sqlx::query_as(&format!(
        "UPDATE devices SET name = coalesce($3, name), disabled = coalesce($4, disabled),
                uid_only = CASE WHEN $5 THEN $6 ELSE uid_only END,
                speed_unit = CASE WHEN $7 THEN $8 ELSE speed_unit END,
                payload_secret = CASE WHEN $9 THEN $10 ELSE payload_secret END,
                speed_limit_mps = CASE WHEN $11 THEN $12 ELSE speed_limit_mps END,
                updated_at = now()
         WHERE id = $1 AND tenant_id = $2 RETURNING {DEVICE_COLUMNS}"
    ))
    .bind(id)
    .bind(caller.tenant())
    .bind(&body.name)
    .bind(body.disabled)
    .bind(body.uid_only.is_some())
    .bind(body.uid_only.flatten())
    .bind(speed_unit.is_some())
    .bind(speed_unit.flatten().map(SpeedUnit::as_str))
    .bind(body.payload_secret.is_some())
    .bind(body.payload_secret.clone().flatten())
    .bind(body.speed_limit_mps.is_some())
    .bind(body.speed_limit_mps.flatten())
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    if body.uid_only.is_some() {
        check_uid_only_unique(&mut tx, caller.tenant(), id).await?;
    }
    tx.commit().await?;
    audit_caller(
        &state.pool,
        &caller,
        "devices.update",
        "device",
        id,
        serde_json::json!({
            "disabled": row.disabled,
            "uid_only": row.uid_only,
            "speed_unit": row.speed_unit,
            "payload_secret_changed": body.payload_secret.is_some(),
            "speed_limit_mps": row.speed_limit_mps,
        }),
    )
    .await;
    Ok(Json(row))
}

/// `DELETE /v1/devices/{id}` (its history stays in `positions` until retention).
pub(crate) async fn delete_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::DevicesWrite)?;
    let id = parse_id(&id)?;
    remove_owned(
        &state,
        &caller,
        "DELETE FROM devices WHERE id = $1 AND tenant_id = $2",
        id,
        "devices.delete",
        "device",
    )
    .await
}

/// `POST /v1/devices/{id}/rotate-token`: a new ingest token, shown once; the old one stops working.
pub(crate) async fn rotate_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(Permission::DevicesWrite)?;
    let id = parse_id(&id)?;
    let token = auth::new_device_token();
    let done = sqlx::query(
        "UPDATE devices SET token_hash = $3, updated_at = now() WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(caller.tenant())
    .bind(auth::secret_digest(&token))
    .execute(&state.pool)
    .await?;
    not_found_if_zero(done.rows_affected())?;
    audit_caller(
        &state.pool,
        &caller,
        "devices.rotate_token",
        "device",
        id,
        serde_json::json!({}),
    )
    .await;
    Ok(Json(serde_json::json!({ "token": token })))
}

/// `POST /v1/devices/{id}/rotate-udp-key`: a new UDP HMAC key, shown once.
pub(crate) async fn rotate_udp_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(Permission::DevicesWrite)?;
    let id = parse_id(&id)?;
    let key = auth::new_udp_key();
    let done = sqlx::query(
        "UPDATE devices SET udp_key = $3, updated_at = now() WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(caller.tenant())
    .bind(key.as_slice())
    .execute(&state.pool)
    .await?;
    not_found_if_zero(done.rows_affected())?;
    audit_caller(
        &state.pool,
        &caller,
        "devices.rotate_udp_key",
        "device",
        id,
        serde_json::json!({}),
    )
    .await;
    Ok(Json(serde_json::json!({ "udp_key": hex::encode(key) })))
}

/// The tenant's device defaults as stored in `tenants.settings` (absent: the built-in default).
#[derive(Debug, Serialize)]
pub(crate) struct DeviceDefaults {
    /// Devices without their own `uid_only` may report by uid alone.
    uid_only_devices: bool,
    /// The OsmAnd `speed` unit of devices without their own `speed_unit`.
    osmand_speed_unit: SpeedUnit,
}

async fn device_defaults(conn: &mut sqlx::PgConnection, tenant: Uuid) -> ApiResult<DeviceDefaults> {
    let (uid_only, unit): (Option<bool>, Option<String>) = sqlx::query_as(
        "SELECT CASE WHEN jsonb_typeof(settings -> 'uid_only_devices') = 'boolean'
                     THEN (settings ->> 'uid_only_devices')::boolean END,
                settings ->> 'osmand_speed_unit'
         FROM tenants WHERE id = $1",
    )
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(ApiError::NotFound)?;
    Ok(DeviceDefaults {
        uid_only_devices: uid_only.unwrap_or(false),
        osmand_speed_unit: unit.and_then(|u| u.parse().ok()).unwrap_or_default(),
    })
}

/// `GET /v1/tenant`: the caller's tenant's device defaults.
pub(crate) async fn get_tenant(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<DeviceDefaults>> {
    caller.require(Permission::DevicesRead)?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(device_defaults(&mut conn, caller.tenant()).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchTenant {
    uid_only_devices: Option<bool>,
    osmand_speed_unit: Option<String>,
}

/// `PATCH /v1/tenant`: the tenant's device defaults; admins only (`roles:write`, which only the
/// admin role carries, and `devices:write`), audited. Turning `uid_only_devices` on is a 409
/// `uid_taken` while a device that would follow it has a uid that is uid-only in another tenant
/// (the answer lists those of the caller's own uids, at most ten).
pub(crate) async fn patch_tenant(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<PatchTenant>,
) -> ApiResult<Json<DeviceDefaults>> {
    caller.require(Permission::RolesWrite)?;
    caller.require(Permission::DevicesWrite)?;
    let mut changes = serde_json::Map::new();
    if let Some(on) = body.uid_only_devices {
        changes.insert("uid_only_devices".into(), on.into());
    }
    if let Some(raw) = &body.osmand_speed_unit {
        let unit = parse_speed_unit("osmand_speed_unit", raw)?;
        changes.insert("osmand_speed_unit".into(), unit.as_str().into());
    }
    let tenant = caller.tenant();
    let mut tx = state.pool.begin().await?;
    sqlx::query("UPDATE tenants SET settings = settings || $2 WHERE id = $1")
        .bind(tenant)
        .bind(serde_json::Value::Object(changes.clone()))
        .execute(&mut *tx)
        .await?;
    if body.uid_only_devices == Some(true) {
        let taken: Vec<String> = sqlx::query_scalar(
            "SELECT d.uid FROM device_identity d
             WHERE d.tenant_id = $1 AND d.uid_only
               AND EXISTS (SELECT 1 FROM device_identity o
                           WHERE o.uid = d.uid AND o.uid_only AND o.tenant_id <> $1)
             ORDER BY d.uid LIMIT 10",
        )
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        if !taken.is_empty() {
            return Err(ApiError::StateConflict {
                code: "uid_taken",
                message: format!(
                    "these devices' uids are already used in uid-only mode elsewhere; set their \
                     uid_only to false first: {}",
                    taken.join(", ")
                ),
            });
        }
    }
    let defaults = device_defaults(&mut tx, tenant).await?;
    tx.commit().await?;
    audit_caller(
        &state.pool,
        &caller,
        "tenant.update",
        "tenant",
        tenant,
        serde_json::Value::Object(changes),
    )
    .await;
    Ok(Json(defaults))
}
