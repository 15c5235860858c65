//! Login, refresh-token rotation, logout, and live-view tickets (passwords are
//! [`crate::passwords`]'s).
//!
//! Refresh tokens rotate on every use. Each login starts a token family; presenting a token that
//! was already rotated (a stolen copy, or a replay) revokes the whole family and is refused.

use crate::app::{audit, audit_caller, rate_limit, ApiJson, AppState, AuditEntry, Caller};
use crate::error::{ApiError, ApiResult};
use crate::passwords::{hash_password, verify_password};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use gps_domain::auth::{self, Permission, Role};
use gps_store::tickets::issue_ticket;
use serde::Deserialize;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshRequest {
    refresh_token: String,
}

/// A verifiable hash of nothing, so unknown emails cost the same time as wrong passwords.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    hash_password("not-a-real-password-just-for-timing").unwrap_or_default()
});

/// `POST /v1/auth/login`.
pub(crate) async fn login(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let ip = peer.ip();
    let email = body.email.trim().to_lowercase();
    let mut redis = state.redis.clone();
    let limit = state.settings.login_limit_per_minute;
    for (scope, id) in [("login:ip", ip.to_string()), ("login:email", email.clone())] {
        if let Err(e) = rate_limit(&mut redis, scope, &id, limit, 60, true).await {
            state
                .metrics
                .rate_limited
                .with_label_values(&["login"])
                .inc();
            state
                .metrics
                .logins
                .with_label_values(&["rate_limited"])
                .inc();
            return Err(e);
        }
    }
    let user: Option<(Uuid, Uuid, String, String, bool)> = sqlx::query_as(
        "SELECT id, tenant_id, password_hash, role, disabled FROM users WHERE lower(email) = $1",
    )
    .bind(&email)
    .fetch_optional(&state.pool)
    .await?;
    let phc = user
        .as_ref()
        .map(|u| u.2.clone())
        .unwrap_or_else(|| DUMMY_HASH.clone());
    let password = body.password;
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let Some((user_id, tenant_id, _, role, disabled)) = user else {
        state.metrics.logins.with_label_values(&["failure"]).inc();
        return Err(ApiError::Unauthorized);
    };
    if !ok || disabled {
        state.metrics.logins.with_label_values(&["failure"]).inc();
        audit(
            &state.pool,
            AuditEntry {
                tenant: tenant_id,
                actor_kind: "user",
                actor_id: Some(user_id),
                action: "auth.login_failed",
                object_kind: Some("user"),
                object_id: Some(user_id.to_string()),
                ip: Some(ip),
                detail: serde_json::json!({ "disabled": disabled }),
            },
        )
        .await;
        return Err(ApiError::Unauthorized);
    }
    let role: Role = role.parse().map_err(|e: String| ApiError::Internal(e))?;
    let family = Uuid::new_v4();
    let tokens = issue_tokens(&state, user_id, tenant_id, role, family).await?;
    state.metrics.logins.with_label_values(&["success"]).inc();
    audit(
        &state.pool,
        AuditEntry {
            tenant: tenant_id,
            actor_kind: "user",
            actor_id: Some(user_id),
            action: "auth.login",
            object_kind: Some("user"),
            object_id: Some(user_id.to_string()),
            ip: Some(ip),
            detail: serde_json::json!({}),
        },
    )
    .await;
    Ok(Json(tokens))
}

async fn issue_tokens(
    state: &AppState,
    user_id: Uuid,
    tenant_id: Uuid,
    role: Role,
    family: Uuid,
) -> ApiResult<serde_json::Value> {
    let access_token = state
        .keys
        .issue(user_id, tenant_id, role, state.settings.access_ttl_secs);
    let refresh_token = format!("gpsr_{}", auth::random_token(32));
    sqlx::query(
        "INSERT INTO refresh_tokens (tenant_id, user_id, token_hash, family_id, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
    )
    .bind(tenant_id)
    .bind(user_id)
    .bind(auth::secret_digest(&refresh_token))
    .bind(family)
    .bind(state.settings.refresh_ttl_secs as f64)
    .execute(&state.pool)
    .await?;
    Ok(serde_json::json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": state.settings.access_ttl_secs,
        "refresh_token": refresh_token,
        "refresh_expires_in": state.settings.refresh_ttl_secs,
        "role": role,
        "tenant_id": tenant_id,
        "user_id": user_id,
    }))
}

/// `POST /v1/auth/refresh`: rotate the refresh token, issue a new access token.
pub(crate) async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let digest = auth::secret_digest(&body.refresh_token);
    let mut tx = state.pool.begin().await?;
    let row: Option<(Uuid, Uuid, Uuid, Uuid, bool, bool)> = sqlx::query_as(
        "SELECT rt.id, rt.user_id, rt.tenant_id, rt.family_id,
                rt.revoked_at IS NULL AND rt.expires_at > now(),
                u.disabled
         FROM refresh_tokens rt JOIN users u ON u.id = rt.user_id
         WHERE rt.token_hash = $1 FOR UPDATE OF rt",
    )
    .bind(&digest)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((token_id, user_id, tenant_id, family, usable, disabled)) = row else {
        return Err(ApiError::Unauthorized);
    };
    if !usable || disabled {
        // Reuse of a rotated or revoked token: treat the family as stolen.
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE family_id = $1",
        )
        .bind(family)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::warn!(user = %user_id, "refresh token reuse: token family revoked");
        return Err(ApiError::Unauthorized);
    }
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
    let role: Role = role.parse().map_err(|e: String| ApiError::Internal(e))?;
    sqlx::query("UPDATE refresh_tokens SET revoked_at = now() WHERE id = $1")
        .bind(token_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let tokens = issue_tokens(&state, user_id, tenant_id, role, family).await?;
    Ok(Json(tokens))
}

/// `POST /v1/auth/logout`: revoke the refresh token's whole family.
pub(crate) async fn logout(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> ApiResult<StatusCode> {
    let digest = auth::secret_digest(&body.refresh_token);
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = coalesce(revoked_at, now())
         WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
    )
    .bind(digest)
    .execute(&state.pool)
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/live/ticket`: a short-lived single-use ticket for the fanout WebSocket.
pub(crate) async fn live_ticket(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(Permission::LiveRead)?;
    let mut redis = state.redis.clone();
    let ticket = issue_ticket(
        &mut redis,
        &caller.principal,
        state.settings.ticket_ttl_secs,
    )
    .await?;
    audit_caller(
        &state.pool,
        &caller,
        "live.ticket",
        "ticket",
        "-",
        serde_json::json!({}),
    )
    .await;
    Ok(Json(serde_json::json!({
        "ticket": ticket,
        "expires_in": state.settings.ticket_ttl_secs,
    })))
}
