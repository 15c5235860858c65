//! API keys: list (never the secrets), mint (the key is shown once, its scopes a subset of the
//! caller's), revoke.

use crate::app::{audit_caller, ApiJson, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::routes::{not_found_if_zero, parse_id};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use gps_domain::auth::{self, Actor, Permission};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
        Actor::User { user_id, .. } => Some(*user_id),
        Actor::ApiKey { .. } => None,
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
