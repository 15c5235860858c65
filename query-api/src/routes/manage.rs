//! Management of the tenant's objects: devices (with credential rotation), users and their
//! roles, groups and their members, API keys, and the audit log.
//!
//! Mass-assignment safety: request bodies deny unknown fields, the tenant always comes from the
//! credential, and a role changes only through `PUT /v1/users/{id}/role` (`roles:write`, never
//! one's own).

use crate::app::{audit_caller, ApiJson, ApiQuery, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::routes::identity::{check_password_strength, hash_password};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use gps_domain::auth::{self, Permission, Role};
use gps_runtime::access::{self, Visibility};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Parse an id from a path; a malformed id is just an object that does not exist.
pub fn parse_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse().map_err(|_| ApiError::NotFound)
}

fn not_found_if_zero(rows: u64) -> ApiResult<()> {
    if rows == 0 {
        Err(ApiError::NotFound)
    } else {
        Ok(())
    }
}

// --- devices -----------------------------------------------------------------------------------

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
    let rows: Vec<DeviceRow> = match access::visibility(&state.pool, &caller.principal).await? {
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

// --- users -------------------------------------------------------------------------------------

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct UserRow {
    id: Uuid,
    email: String,
    display_name: String,
    role: String,
    disabled: bool,
    created_at: DateTime<Utc>,
}

const USER_COLUMNS: &str = "id, email, display_name, role, disabled, created_at";

/// `GET /v1/users`.
pub(crate) async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(Permission::UsersRead)?;
    let rows: Vec<UserRow> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 ORDER BY email"
    ))
    .bind(caller.tenant())
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(serde_json::json!({ "users": rows })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateUser {
    email: String,
    password: String,
    role: String,
    #[serde(default)]
    display_name: String,
}

fn parse_role(raw: &str) -> ApiResult<Role> {
    let role: Role = raw
        .parse()
        .map_err(|e: String| ApiError::field("role", e))?;
    if role == Role::Device {
        return Err(ApiError::field(
            "role",
            "the device role is for devices, not users",
        ));
    }
    Ok(role)
}

/// Create a user in `tenant` (shared by the route and the bootstrap command).
pub async fn insert_user(
    pool: &sqlx::PgPool,
    tenant: Uuid,
    email: &str,
    password: &str,
    role: Role,
    display_name: &str,
) -> ApiResult<Uuid> {
    let email = email.trim();
    if !email.contains('@') || email.len() > 320 {
        return Err(ApiError::field("email", "must be an email address"));
    }
    check_password_strength(password)?;
    let password = password.to_owned();
    let phc = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let id = sqlx::query_scalar(
        "INSERT INTO users (tenant_id, email, display_name, password_hash, role)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(tenant)
    .bind(email)
    .bind(display_name)
    .bind(phc)
    .bind(role.as_str())
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// `POST /v1/users`: choosing the role needs `roles:write` too.
pub(crate) async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserRow>)> {
    caller.require(Permission::UsersWrite)?;
    caller.require(Permission::RolesWrite)?;
    let role = parse_role(&body.role)?;
    let id = insert_user(
        &state.pool,
        caller.tenant(),
        &body.email,
        &body.password,
        role,
        &body.display_name,
    )
    .await?;
    audit_caller(
        &state.pool,
        &caller,
        "users.create",
        "user",
        id,
        serde_json::json!({ "role": role }),
    )
    .await;
    let row = fetch_user(&state, &caller, id).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

async fn fetch_user(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<UserRow> {
    sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND tenant_id = $2"
    ))
    .bind(id)
    .bind(caller.tenant())
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound)
}

/// `GET /v1/users/{id}`.
pub(crate) async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<UserRow>> {
    caller.require(Permission::UsersRead)?;
    let id = parse_id(&id)?;
    Ok(Json(fetch_user(&state, &caller, id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchUser {
    display_name: Option<String>,
    disabled: Option<bool>,
    password: Option<String>,
}

/// `PATCH /v1/users/{id}`: display name, disabled, password. Not the role, not the tenant.
pub(crate) async fn patch_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchUser>,
) -> ApiResult<Json<UserRow>> {
    caller.require(Permission::UsersWrite)?;
    let id = parse_id(&id)?;
    let phc = match body.password {
        Some(password) => {
            check_password_strength(&password)?;
            Some(
                tokio::task::spawn_blocking(move || hash_password(&password))
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))??,
            )
        }
        None => None,
    };
    let done = sqlx::query(
        "UPDATE users SET display_name = coalesce($3, display_name), disabled = coalesce($4, disabled),
                password_hash = coalesce($5, password_hash), updated_at = now()
         WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(caller.tenant())
    .bind(body.display_name)
    .bind(body.disabled)
    .bind(phc)
    .execute(&state.pool)
    .await?;
    not_found_if_zero(done.rows_affected())?;
    audit_caller(
        &state.pool,
        &caller,
        "users.update",
        "user",
        id,
        serde_json::json!({}),
    )
    .await;
    Ok(Json(fetch_user(&state, &caller, id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetRole {
    role: String,
}

/// `PUT /v1/users/{id}/role`: `roles:write`, and never one's own role.
pub(crate) async fn set_role(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SetRole>,
) -> ApiResult<Json<UserRow>> {
    caller.require(Permission::RolesWrite)?;
    let id = parse_id(&id)?;
    if matches!(caller.principal.actor, access::Actor::User { user_id, .. } if user_id == id) {
        return Err(ApiError::Forbidden("roles:write"));
    }
    let role = parse_role(&body.role)?;
    let done = sqlx::query(
        "UPDATE users SET role = $3, updated_at = now() WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(caller.tenant())
    .bind(role.as_str())
    .execute(&state.pool)
    .await?;
    not_found_if_zero(done.rows_affected())?;
    audit_caller(
        &state.pool,
        &caller,
        "users.set_role",
        "user",
        id,
        serde_json::json!({ "role": role }),
    )
    .await;
    Ok(Json(fetch_user(&state, &caller, id).await?))
}

/// `DELETE /v1/users/{id}` (not oneself).
pub(crate) async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::UsersWrite)?;
    let id = parse_id(&id)?;
    if matches!(caller.principal.actor, access::Actor::User { user_id, .. } if user_id == id) {
        return Err(ApiError::bad_request("you cannot delete yourself"));
    }
    let done = sqlx::query("DELETE FROM users WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(caller.tenant())
        .execute(&state.pool)
        .await?;
    not_found_if_zero(done.rows_affected())?;
    audit_caller(
        &state.pool,
        &caller,
        "users.delete",
        "user",
        id,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

// --- groups ------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateGroup {
    name: String,
}

/// `GET /v1/groups`: all of the tenant's for tenant-wide roles, one's own groups for viewers.
pub(crate) async fn list_groups(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(Permission::GroupsRead)?;
    let own_only = match &caller.principal.actor {
        access::Actor::User { user_id, .. }
            if caller.principal.device_scope() == auth::DeviceScope::Groups =>
        {
            Some(*user_id)
        }
        _ => None,
    };
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT g.id, g.name FROM groups g WHERE g.tenant_id = $1
           AND ($2::uuid IS NULL OR EXISTS (SELECT 1 FROM group_members m WHERE m.group_id = g.id AND m.user_id = $2))
         ORDER BY g.name",
    )
    .bind(caller.tenant())
    .bind(own_only)
    .fetch_all(&state.pool)
    .await?;
    let groups: Vec<_> = rows
        .into_iter()
        .map(|(id, name)| serde_json::json!({ "id": id, "name": name }))
        .collect();
    Ok(Json(serde_json::json!({ "groups": groups })))
}

/// `POST /v1/groups`.
pub(crate) async fn create_group(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateGroup>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    caller.require(Permission::GroupsWrite)?;
    let name = body.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::field("name", "must be 1 to 200 characters"));
    }
    let id: Uuid =
        sqlx::query_scalar("INSERT INTO groups (tenant_id, name) VALUES ($1, $2) RETURNING id")
            .bind(caller.tenant())
            .bind(name)
            .fetch_one(&state.pool)
            .await?;
    audit_caller(
        &state.pool,
        &caller,
        "groups.create",
        "group",
        id,
        serde_json::json!({ "name": name }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": id, "name": name })),
    ))
}

/// `GET /v1/groups/{id}`: with its device and member ids.
pub(crate) async fn get_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(Permission::GroupsRead)?;
    let id = parse_id(&id)?;
    let name: String =
        sqlx::query_scalar("SELECT name FROM groups WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(caller.tenant())
            .fetch_optional(&state.pool)
            .await?
            .ok_or(ApiError::NotFound)?;
    let members: Vec<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM group_members WHERE group_id = $1 ORDER BY user_id",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    if let access::Actor::User { user_id, .. } = &caller.principal.actor {
        if caller.principal.device_scope() == auth::DeviceScope::Groups
            && !members.contains(user_id)
        {
            return Err(ApiError::NotFound);
        }
    }
    let devices: Vec<Uuid> = sqlx::query_scalar(
        "SELECT device_id FROM group_devices WHERE group_id = $1 ORDER BY device_id",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(
        serde_json::json!({ "id": id, "name": name, "devices": devices, "members": members }),
    ))
}

/// `DELETE /v1/groups/{id}`.
pub(crate) async fn delete_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::GroupsWrite)?;
    let id = parse_id(&id)?;
    let done = sqlx::query("DELETE FROM groups WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(caller.tenant())
        .execute(&state.pool)
        .await?;
    not_found_if_zero(done.rows_affected())?;
    audit_caller(
        &state.pool,
        &caller,
        "groups.delete",
        "group",
        id,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Which membership table a group route edits.
#[derive(Clone, Copy)]
enum Membership {
    Device,
    User,
}

async fn edit_membership(
    state: &AppState,
    caller: &Caller,
    group: &str,
    member: &str,
    kind: Membership,
    add: bool,
) -> ApiResult<StatusCode> {
    caller.require(Permission::GroupsWrite)?;
    let (group, member) = (parse_id(group)?, parse_id(member)?);
    let (member_table, link_table, link_column) = match kind {
        Membership::Device => ("devices", "group_devices", "device_id"),
        Membership::User => ("users", "group_members", "user_id"),
    };
    // Both ends must be the caller's tenant's: anything else is "not found".
    let both_ours: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM groups WHERE id = $1 AND tenant_id = $3)
            AND EXISTS (SELECT 1 FROM {member_table} WHERE id = $2 AND tenant_id = $3)"
    ))
    .bind(group)
    .bind(member)
    .bind(caller.tenant())
    .fetch_one(&state.pool)
    .await?;
    if !both_ours {
        return Err(ApiError::NotFound);
    }
    let sql = if add {
        format!("INSERT INTO {link_table} (group_id, {link_column}) VALUES ($1, $2) ON CONFLICT DO NOTHING")
    } else {
        format!("DELETE FROM {link_table} WHERE group_id = $1 AND {link_column} = $2")
    };
    sqlx::query(&sql)
        .bind(group)
        .bind(member)
        .execute(&state.pool)
        .await?;
    let action = match (kind, add) {
        (Membership::Device, true) => "groups.add_device",
        (Membership::Device, false) => "groups.remove_device",
        (Membership::User, true) => "groups.add_member",
        (Membership::User, false) => "groups.remove_member",
    };
    audit_caller(
        &state.pool,
        caller,
        action,
        "group",
        group,
        serde_json::json!({ "member": member }),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/groups/{id}/devices/{device_id}`.
pub(crate) async fn add_group_device(
    State(state): State<AppState>,
    caller: Caller,
    Path((group, device)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    edit_membership(&state, &caller, &group, &device, Membership::Device, true).await
}

/// `DELETE /v1/groups/{id}/devices/{device_id}`.
pub(crate) async fn remove_group_device(
    State(state): State<AppState>,
    caller: Caller,
    Path((group, device)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    edit_membership(&state, &caller, &group, &device, Membership::Device, false).await
}

/// `PUT /v1/groups/{id}/members/{user_id}`.
pub(crate) async fn add_group_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((group, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    edit_membership(&state, &caller, &group, &user, Membership::User, true).await
}

/// `DELETE /v1/groups/{id}/members/{user_id}`.
pub(crate) async fn remove_group_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((group, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    edit_membership(&state, &caller, &group, &user, Membership::User, false).await
}

// --- API keys ----------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateApiKey {
    #[serde(default)]
    name: String,
    scopes: Vec<String>,
    /// Expiry, RFC 3339; none means the key never expires.
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct ApiKeyRow {
    id: Uuid,
    name: String,
    prefix: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

/// `GET /v1/api-keys`: never the secrets.
pub(crate) async fn list_api_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(Permission::KeysRead)?;
    let rows: Vec<ApiKeyRow> = sqlx::query_as(
        "SELECT id, name, prefix, scopes, created_at, expires_at, revoked_at, last_used_at
         FROM api_keys WHERE tenant_id = $1 ORDER BY created_at",
    )
    .bind(caller.tenant())
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(serde_json::json!({ "api_keys": rows })))
}

/// `POST /v1/api-keys`: the key is in this answer only; scopes are a subset of the caller's.
pub(crate) async fn create_api_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateApiKey>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    caller.require(Permission::KeysWrite)?;
    if body.scopes.is_empty() {
        return Err(ApiError::field("scopes", "name at least one permission"));
    }
    for scope in &body.scopes {
        let permission: Permission = scope
            .parse()
            .map_err(|e: String| ApiError::field("scopes", e))?;
        if !caller.principal.allows(permission) {
            return Err(ApiError::field(
                "scopes",
                format!("you do not hold {scope}"),
            ));
        }
    }
    if body.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(ApiError::field("expires_at", "must be in the future"));
    }
    let minted = auth::new_api_key();
    let created_by = match &caller.principal.actor {
        access::Actor::User { user_id, .. } => Some(*user_id),
        access::Actor::ApiKey { .. } => None,
    };
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO api_keys (tenant_id, name, prefix, key_hash, scopes, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(caller.tenant())
    .bind(&body.name)
    .bind(&minted.id)
    .bind(auth::secret_digest(&minted.key))
    .bind(&body.scopes)
    .bind(created_by)
    .bind(body.expires_at)
    .fetch_one(&state.pool)
    .await?;
    audit_caller(
        &state.pool,
        &caller,
        "api_keys.create",
        "api_key",
        id,
        serde_json::json!({ "scopes": body.scopes }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "id": id, "key": minted.key, "prefix": minted.id,
            "scopes": body.scopes, "expires_at": body.expires_at,
        })),
    ))
}

/// `DELETE /v1/api-keys/{id}`: revoke.
pub(crate) async fn revoke_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::KeysWrite)?;
    let id = parse_id(&id)?;
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(caller.tenant())
    .execute(&state.pool)
    .await?;
    not_found_if_zero(done.rows_affected())?;
    audit_caller(
        &state.pool,
        &caller,
        "api_keys.revoke",
        "api_key",
        id,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

// --- audit -------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<i64>,
    /// Return entries older than this id (keyset pagination).
    before: Option<i64>,
}

/// `GET /v1/audit`: newest first.
pub(crate) async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(Permission::AuditRead)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 1000"));
    }
    let rows: Vec<(
        i64,
        DateTime<Utc>,
        String,
        Option<Uuid>,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        serde_json::Value,
    )> = sqlx::query_as(
        "SELECT id, at, actor_kind, actor_id, action, object_kind, object_id, host(ip), detail
             FROM audit_log WHERE tenant_id = $1 AND ($2::bigint IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3",
    )
    .bind(caller.tenant())
    .bind(query.before)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.0))
        .flatten();
    let entries: Vec<_> = rows
        .into_iter()
        .map(
            |(id, at, actor_kind, actor_id, action, object_kind, object_id, ip, detail)| {
                serde_json::json!({
                    "id": id, "at": at, "actor_kind": actor_kind, "actor_id": actor_id,
                    "action": action, "object_kind": object_kind, "object_id": object_id,
                    "ip": ip, "detail": detail,
                })
            },
        )
        .collect();
    Ok(Json(
        serde_json::json!({ "entries": entries, "next_before": next }),
    ))
}
