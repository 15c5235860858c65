//! Groups and their members: list (viewers see only their own groups), create, read with its
//! device and member ids, delete, and adding or removing devices and users.

use crate::app::{audit_caller, ApiJson, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::routes::{check_name, parse_id, remove_owned};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use gps_domain::auth::{self, Actor, Permission};
use serde::Deserialize;
use uuid::Uuid;

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
        Actor::User { user_id, .. }
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
    if name.is_empty() {
        return Err(ApiError::field("name", "must not be empty"));
    }
    check_name("name", name)?;
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
    if let Actor::User { user_id, .. } = &caller.principal.actor {
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
    remove_owned(
        &state,
        &caller,
        "DELETE FROM groups WHERE id = $1 AND tenant_id = $2",
        id,
        "groups.delete",
        "group",
    )
    .await
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
