//! Devices: list, create (the ingest token and UDP key are shown once), read, rename or
//! disable, delete, and credential rotation.

use crate::app::{audit_caller, ApiJson, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::routes::{check_name, not_found_if_zero, parse_id};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use gps_domain::auth::{self, Permission, Visibility};
use gps_store::visibility::visibility;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct DeviceRow {
    id: Uuid,
    uid: String,
    name: String,
    disabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const DEVICE_COLUMNS: &str = "id, uid, name, disabled, created_at, updated_at";

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
}

/// `POST /v1/devices`: returns the ingest token and UDP key once.
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
    let token = auth::new_device_token();
    let udp_key = auth::new_udp_key();
    let row: DeviceRow = sqlx::query_as(&format!(
        "INSERT INTO devices (tenant_id, uid, name, token_hash, udp_key)
         VALUES ($1, $2, $3, $4, $5) RETURNING {DEVICE_COLUMNS}"
    ))
    .bind(caller.tenant())
    .bind(uid)
    .bind(&body.name)
    .bind(auth::secret_digest(&token))
    .bind(udp_key.as_slice())
    .fetch_one(&state.pool)
    .await?;
    audit_caller(
        &state.pool,
        &caller,
        "devices.create",
        "device",
        row.id,
        serde_json::json!({ "uid": uid }),
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
}

/// `PATCH /v1/devices/{id}`: name and disabled only.
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
    let row: DeviceRow = sqlx::query_as(&format!(
        "UPDATE devices SET name = coalesce($3, name), disabled = coalesce($4, disabled), updated_at = now()
         WHERE id = $1 AND tenant_id = $2 RETURNING {DEVICE_COLUMNS}"
    ))
    .bind(id)
    .bind(caller.tenant())
    .bind(body.name)
    .bind(body.disabled)
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound)?;
    audit_caller(
        &state.pool,
        &caller,
        "devices.update",
        "device",
        id,
        serde_json::json!({ "disabled": row.disabled }),
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
    let done = sqlx::query("DELETE FROM devices WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(caller.tenant())
        .execute(&state.pool)
        .await?;
    not_found_if_zero(done.rows_affected())?;
    audit_caller(
        &state.pool,
        &caller,
        "devices.delete",
        "device",
        id,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
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
