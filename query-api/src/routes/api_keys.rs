//! API keys: list (never the secrets), mint (the key is shown once, its scopes a subset of the
//! caller's, its expiry required and at most the configured maximum ahead), revoke.
//!
//! A key acts with the authority of the user who minted it (`created_by`): it stops working while
//! that user is disabled, dies with the user's deletion, and never holds more than the user's
//! current role grants (the rule is `gps_store::credentials`'). A key minted through another key
//! inherits that key's creator, so no key escapes its human owner.

use crate::app::{audit_caller, ApiJson, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::routes::{check_name, parse_id, remove_owned};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, TimeDelta, Utc};
use gps_domain::auth::{self, Actor, Permission};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateApiKey {
    #[serde(default)]
    name: String,
    scopes: Vec<String>,
    /// Expiry, RFC 3339: required, in the future, and at most `--api-key-max-ttl-days` ahead.
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
    check_name("name", &body.name)?;
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
    let expires_at = check_expiry(
        body.expires_at,
        state.settings.api_key_max_ttl_days,
        Utc::now(),
    )?;
    let minted = auth::new_api_key();
    // The creator is the user behind the caller: the caller itself, or the creator of the key
    // the caller acts through (NULL only below an operator-provisioned key).
    let (created_by, minting_key) = match &caller.principal.actor {
        Actor::User { user_id, .. } => (Some(*user_id), None),
        Actor::ApiKey { key_id, .. } => (None, Some(*key_id)),
    };
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO api_keys (tenant_id, name, prefix, key_hash, scopes, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5,
                 coalesce($6, (SELECT created_by FROM api_keys WHERE id = $8 AND tenant_id = $1)),
                 $7)
         RETURNING id",
    )
    .bind(caller.tenant())
    .bind(&body.name)
    .bind(&minted.id)
    .bind(auth::secret_digest(&minted.key))
    .bind(&body.scopes)
    .bind(created_by)
    .bind(expires_at)
    .bind(minting_key)
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
            "scopes": body.scopes, "expires_at": expires_at,
        })),
    ))
}

/// Every key expires: `expires_at` is required, in the future, and at most `max_days` after
/// `now` (a 400 naming `expires_at` otherwise).
fn check_expiry(
    expires_at: Option<DateTime<Utc>>,
    max_days: u32,
    now: DateTime<Utc>,
) -> ApiResult<DateTime<Utc>> {
    let Some(at) = expires_at else {
        return Err(ApiError::field(
            "expires_at",
            format!("required: every key expires, at most {max_days} days ahead"),
        ));
    };
    if at <= now {
        return Err(ApiError::field("expires_at", "must be in the future"));
    }
    if at > now + TimeDelta::days(i64::from(max_days)) {
        return Err(ApiError::field(
            "expires_at",
            format!("at most {max_days} days ahead"),
        ));
    }
    Ok(at)
}

/// `DELETE /v1/api-keys/{id}`: revoke.
pub(crate) async fn revoke_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::KeysWrite)?;
    let id = parse_id(&id)?;
    remove_owned(
        &state,
        &caller,
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 AND tenant_id = $2",
        id,
        "api_keys.revoke",
        "api_key",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap()
    }

    fn refused_field(result: ApiResult<DateTime<Utc>>) -> Option<String> {
        match result {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn every_key_expires_within_the_maximum() {
        let field = Some("expires_at".to_owned());
        assert_eq!(refused_field(check_expiry(None, 365, now())), field);
        assert_eq!(refused_field(check_expiry(Some(now()), 365, now())), field);
        let max = now() + TimeDelta::days(365);
        assert_eq!(check_expiry(Some(max), 365, now()).unwrap(), max);
        let beyond = max + TimeDelta::seconds(1);
        assert_eq!(refused_field(check_expiry(Some(beyond), 365, now())), field);
        assert!(check_expiry(Some(beyond), 366, now()).is_ok());
    }
}
