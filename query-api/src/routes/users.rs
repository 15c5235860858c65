//! Users and their roles: list, create, read, update (display name, disabled, password), set
//! the role (`roles:write`, never one's own), delete (never oneself); and [`insert_user`], shared
//! with the bootstrap command.
//!
//! Revocation takes effect at once, in the transaction of the change: a password change or
//! reset refuses every access token issued before it (`users.tokens_not_before`) and revokes
//! every refresh token of the user (all families); disabling and role changes revoke the refresh
//! tokens too, and every request reads the role and the disabled flag afresh
//! (`gps_store::principal`); deleting cascades to the user's refresh tokens and API keys.
//! A tenant always keeps one enabled admin: disabling, demoting or deleting the last one is a 409
//! `last_admin` ([`keep_an_admin`], serialized per tenant so two admins cannot remove each other
//! at the same time).
//!
//! Emails are unique within a tenant (case-insensitive), not across tenants: another tenant's
//! address is no conflict and is not disclosed; login asks for the tenant when the address and
//! password fit several (`routes::identity`).

use crate::app::{audit_caller, ApiJson, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::passwords::{hash_new_password, revoke_refresh_tokens, store_password};
use crate::routes::{check_name, not_found_if_zero, parse_id};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use gps_domain::auth::{Actor, Permission, Role};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
    check_name("display_name", display_name)?;
    let phc = hash_new_password(password.to_owned()).await?;
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
    if let Some(name) = &body.display_name {
        check_name("display_name", name)?;
    }
    let phc = match body.password {
        Some(password) => Some(hash_new_password(password).await?),
        None => None,
    };
    let password_changed = phc.is_some();
    let disabling = body.disabled == Some(true);
    let mut tx = state.pool.begin().await?;
    if disabling {
        keep_an_admin(&mut tx, caller.tenant(), id).await?;
    }
    let done = sqlx::query(
        "UPDATE users SET display_name = coalesce($3, display_name), disabled = coalesce($4, disabled),
                updated_at = now()
         WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(caller.tenant())
    .bind(body.display_name)
    .bind(body.disabled)
    .execute(&mut *tx)
    .await?;
    not_found_if_zero(done.rows_affected())?;
    if let Some(phc) = &phc {
        store_password(&mut tx, caller.tenant(), id, phc).await?;
    }
    if disabling {
        revoke_refresh_tokens(&mut tx, id).await?;
    }
    tx.commit().await?;
    audit_caller(
        &state.pool,
        &caller,
        "users.update",
        "user",
        id,
        serde_json::json!({ "password_changed": password_changed, "disabled": body.disabled }),
    )
    .await;
    Ok(Json(fetch_user(&state, &caller, id).await?))
}

/// Refuse (409 `last_admin`) when `user` is an enabled admin of `tenant` and no other enabled
/// admin would remain: call it inside the transaction that disables, demotes or deletes the
/// user, before the change. The tenant row is locked first (`FOR NO KEY UPDATE`, which does not
/// block inserts referencing the tenant), so concurrent changes of one tenant's admins run one
/// after the other and each counts what the previous one committed.
async fn keep_an_admin(tx: &mut sqlx::PgConnection, tenant: Uuid, user: Uuid) -> ApiResult<()> {
    sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR NO KEY UPDATE")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    let (is_admin, others): (bool, i64) = sqlx::query_as(
        "SELECT coalesce(bool_or(id = $2), false), count(*) FILTER (WHERE id <> $2)
         FROM users WHERE tenant_id = $1 AND role = 'admin' AND NOT disabled",
    )
    .bind(tenant)
    .bind(user)
    .fetch_one(&mut *tx)
    .await?;
    if is_admin && others == 0 {
        return Err(ApiError::StateConflict {
            code: "last_admin",
            message: "this is the tenant's last enabled admin: make another user admin first"
                .into(),
        });
    }
    Ok(())
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
    if matches!(caller.principal.actor, Actor::User { user_id, .. } if user_id == id) {
        return Err(ApiError::Forbidden("roles:write"));
    }
    let role = parse_role(&body.role)?;
    let mut tx = state.pool.begin().await?;
    if role != Role::Admin {
        keep_an_admin(&mut tx, caller.tenant(), id).await?;
    }
    let before: Option<String> =
        sqlx::query_scalar("SELECT role FROM users WHERE id = $1 AND tenant_id = $2 FOR UPDATE")
            .bind(id)
            .bind(caller.tenant())
            .fetch_optional(&mut *tx)
            .await?;
    let before = before.ok_or(ApiError::NotFound)?;
    if before != role.as_str() {
        sqlx::query("UPDATE users SET role = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(role.as_str())
            .execute(&mut *tx)
            .await?;
        // Access tokens carry no authority (the role is read per request); refresh tokens
        // would keep a session of the old role alive, so they go.
        revoke_refresh_tokens(&mut tx, id).await?;
    }
    tx.commit().await?;
    audit_caller(
        &state.pool,
        &caller,
        "users.set_role",
        "user",
        id,
        serde_json::json!({ "role": role, "previous": before }),
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
    if matches!(caller.principal.actor, Actor::User { user_id, .. } if user_id == id) {
        return Err(ApiError::bad_request("you cannot delete yourself"));
    }
    let mut tx = state.pool.begin().await?;
    keep_an_admin(&mut tx, caller.tenant(), id).await?;
    // Cascades to the user's refresh tokens and API keys.
    let done = sqlx::query("DELETE FROM users WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(caller.tenant())
        .execute(&mut *tx)
        .await?;
    not_found_if_zero(done.rows_affected())?;
    tx.commit().await?;
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
