//! Login, refresh-token rotation, logout, and live-view tickets (passwords are
//! [`crate::passwords`]'s).
//!
//! Refresh tokens rotate on every use. Each login starts a token family; presenting a token that
//! was already rotated (a stolen copy, or a replay) revokes the whole family and is refused. The
//! rotation is one transaction: the presented token is locked, revoked and its successor
//! inserted before the commit, so a concurrent reuse either waits and finds it revoked or
//! commits first and revokes the family the successor belongs to. A password change, disable or
//! role change revokes every family of the user (`routes::users`), and a refresh of a disabled
//! or deleted user is refused.
//!
//! Login and refresh are rate limited in Redis per client IP and per account (login: the email,
//! hashed; refresh: the user behind the token), so neither one address behind a proxy nor many
//! addresses against one account get unbounded attempts.

use crate::app::{audit, audit_caller, rate_limit, ApiJson, AppState, AuditEntry, Caller};
use crate::error::{ApiError, ApiResult};
use crate::passwords::{hash_new_password, hash_password, store_password, verify_password};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use gps_domain::auth::{self, Actor, Permission, Role};
use gps_store::tickets::{issue_ticket, TicketKey};
use serde::Deserialize;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    email: String,
    password: String,
    /// The tenant (name or id): needed only when the email and password match users of
    /// several tenants.
    #[serde(default)]
    tenant: Option<String>,
}

/// Most users (of different tenants) sharing an email whose password a login verifies: the
/// cost of one login stays bounded (argon2 is deliberately slow) whatever the number of tenants.
const MAX_LOGIN_CANDIDATES: i64 = 5;

/// A user a login may be for.
#[derive(sqlx::FromRow)]
struct LoginCandidate {
    id: Uuid,
    tenant_id: Uuid,
    password_hash: String,
    role: String,
    disabled: bool,
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
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    // The client behind trusted proxies (`TRUSTED_PROXIES`); otherwise the TCP peer.
    let ip = state
        .settings
        .trusted_proxies
        .client_ip(peer.ip(), &headers);
    let email = body.email.trim().to_lowercase();
    let mut redis = state.redis.clone();
    let limit = state.settings.login_limit_per_minute;
    // The account bucket is keyed by a digest: no addresses in Redis keys.
    let account = auth::secret_digest(&email);
    for (scope, id) in [("login:ip", ip.to_string()), ("login:email", account)] {
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
    // Emails are unique per tenant only: every user with this email (in the named tenant, when
    // one is named) is a candidate, at most MAX_LOGIN_CANDIDATES of them, oldest first.
    let tenant = body.tenant.as_deref().map(str::trim);
    let candidates: Vec<LoginCandidate> = sqlx::query_as(
        "SELECT u.id, u.tenant_id, u.password_hash, u.role, u.disabled
         FROM users u JOIN tenants t ON t.id = u.tenant_id
         WHERE lower(u.email) = $1 AND ($2::text IS NULL OR t.name = $2 OR t.id::text = $2)
         ORDER BY u.created_at, u.id LIMIT $3",
    )
    .bind(&email)
    .bind(tenant)
    .bind(MAX_LOGIN_CANDIDATES)
    .fetch_all(&state.pool)
    .await?;
    // No candidate still costs one verification (of a dummy hash), as much as one wrong
    // password: the answer's timing does not tell whether the email exists.
    let hashes: Vec<String> = if candidates.is_empty() {
        vec![DUMMY_HASH.clone()]
    } else {
        candidates.iter().map(|c| c.password_hash.clone()).collect()
    };
    let password = body.password;
    let verified: Vec<bool> = tokio::task::spawn_blocking(move || {
        hashes
            .iter()
            .map(|phc| verify_password(&password, phc))
            .collect()
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut matches = candidates
        .iter()
        .zip(&verified)
        .filter(|(c, ok)| **ok && !c.disabled)
        .map(|(c, _)| c);
    let (user, another) = (matches.next(), matches.next());
    if another.is_some() {
        // Only someone who knows the password learns that the address has several accounts.
        state.metrics.logins.with_label_values(&["failure"]).inc();
        return Err(ApiError::NeedsField {
            code: "tenant_required",
            field: "tenant",
            message: "this email and password match accounts of several tenants: name the tenant \
                      (its name or id)"
                .into(),
        });
    }
    let Some(user) = user else {
        state.metrics.logins.with_label_values(&["failure"]).inc();
        for candidate in &candidates {
            audit(
                &state.pool,
                AuditEntry {
                    tenant: candidate.tenant_id,
                    actor_kind: "user",
                    actor_id: Some(candidate.id),
                    action: "auth.login_failed",
                    object_kind: Some("user"),
                    object_id: Some(candidate.id.to_string()),
                    ip: Some(ip),
                    detail: serde_json::json!({ "disabled": candidate.disabled }),
                },
            )
            .await;
        }
        return Err(ApiError::Unauthorized);
    };
    let (user_id, tenant_id) = (user.id, user.tenant_id);
    let role: Role = user
        .role
        .parse()
        .map_err(|e: String| ApiError::Internal(e))?;
    let family = Uuid::new_v4();
    let mut conn = state.pool.acquire().await?;
    let (tokens, _) = issue_tokens(&state, &mut conn, user_id, tenant_id, role, family).await?;
    drop(conn);
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

/// A new access token and a new refresh token of `family`, the latter stored through `conn`
/// (the rotating transaction, on refresh). Returns the answer and the refresh token's row id.
async fn issue_tokens(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    user_id: Uuid,
    tenant_id: Uuid,
    role: Role,
    family: Uuid,
) -> ApiResult<(serde_json::Value, Uuid)> {
    let access_token = state
        .keys
        .issue(user_id, tenant_id, role, state.settings.access_ttl_secs);
    let refresh_token = format!("gpsr_{}", auth::random_token(32));
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO refresh_tokens (tenant_id, user_id, token_hash, family_id, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
         RETURNING id",
    )
    .bind(tenant_id)
    .bind(user_id)
    .bind(auth::secret_digest(&refresh_token))
    .bind(family)
    .bind(state.settings.refresh_ttl_secs as f64)
    .fetch_one(&mut *conn)
    .await?;
    let body = serde_json::json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": state.settings.access_ttl_secs,
        "refresh_token": refresh_token,
        "refresh_expires_in": state.settings.refresh_ttl_secs,
        "role": role,
        "tenant_id": tenant_id,
        "user_id": user_id,
    });
    Ok((body, id))
}

/// Count one refresh against `scope`'s bucket for `id`; a 429 is counted in the metrics.
async fn refresh_limit(state: &AppState, scope: &str, id: &str) -> ApiResult<()> {
    let mut redis = state.redis.clone();
    let limit = state.settings.refresh_limit_per_minute;
    // Fail open: refresh tokens are 256 random bits, not guessable; the limit protects the
    // database, and a Redis outage must not log every user out.
    rate_limit(&mut redis, scope, id, limit, 60, false)
        .await
        .inspect_err(|_| {
            state
                .metrics
                .rate_limited
                .with_label_values(&["refresh"])
                .inc();
        })
}

/// `POST /v1/auth/refresh`: rotate the refresh token, issue a new access token with the user's
/// current role. Rate limited per client IP (before any lookup) and per user.
pub(crate) async fn refresh(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let ip = state
        .settings
        .trusted_proxies
        .client_ip(peer.ip(), &headers);
    refresh_limit(&state, "refresh:ip", &ip.to_string()).await?;
    let digest = auth::secret_digest(&body.refresh_token);
    let mut tx = state.pool.begin().await?;
    let row: Option<(Uuid, Uuid, Uuid, Uuid, bool, bool, String)> = sqlx::query_as(
        "SELECT rt.id, rt.user_id, rt.tenant_id, rt.family_id,
                rt.revoked_at IS NULL AND rt.expires_at > now(),
                u.disabled, u.role
         FROM refresh_tokens rt JOIN users u ON u.id = rt.user_id AND u.tenant_id = rt.tenant_id
         WHERE rt.token_hash = $1 FOR UPDATE OF rt",
    )
    .bind(&digest)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((token_id, user_id, tenant_id, family, usable, disabled, role)) = row else {
        return Err(ApiError::Unauthorized);
    };
    refresh_limit(&state, "refresh:user", &user_id.to_string()).await?;
    if !usable || disabled {
        // A rotated token presented again (a stolen copy, or a replay), or one revoked by a
        // password change, disable or logout: the whole family goes.
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE family_id = $1",
        )
        .bind(family)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::warn!(user = %user_id, disabled, "refresh token refused: token family revoked");
        return Err(ApiError::Unauthorized);
    }
    let role: Role = role.parse().map_err(|e: String| ApiError::Internal(e))?;
    // Successor first, inside the transaction that revokes the presented token: nothing of the
    // family exists outside the revocation's reach.
    let (tokens, successor) =
        issue_tokens(&state, &mut tx, user_id, tenant_id, role, family).await?;
    sqlx::query("UPDATE refresh_tokens SET revoked_at = now(), replaced_by = $2 WHERE id = $1")
        .bind(token_id)
        .bind(successor)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(tokens))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangePassword {
    current_password: String,
    new_password: String,
}

/// `POST /v1/auth/password`: a user changes its own password, proving the current one. Every
/// older session of the user ends (access tokens issued before, every refresh family); the answer
/// is a fresh login (a new family). Attempts count against the account's login limit.
pub(crate) async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ChangePassword>,
) -> ApiResult<Json<serde_json::Value>> {
    let (user_id, role) = match caller.principal.actor {
        Actor::User { user_id, role } => (user_id, role),
        Actor::ApiKey { .. } => {
            return Err(ApiError::bad_request(
                "API keys have no password: change a user's password with PATCH /v1/users/{id}",
            ))
        }
    };
    let tenant_id = caller.tenant();
    let mut redis = state.redis.clone();
    rate_limit(
        &mut redis,
        "password:user",
        &user_id.to_string(),
        state.settings.login_limit_per_minute,
        60,
        true,
    )
    .await
    .inspect_err(|_| {
        state
            .metrics
            .rate_limited
            .with_label_values(&["password"])
            .inc();
    })?;
    let phc: String =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1 AND tenant_id = $2")
            .bind(user_id)
            .bind(tenant_id)
            .fetch_optional(&state.pool)
            .await?
            .ok_or(ApiError::Unauthorized)?;
    let current = body.current_password;
    let ok = tokio::task::spawn_blocking(move || verify_password(&current, &phc))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if !ok {
        audit_caller(
            &state.pool,
            &caller,
            "users.password_change_failed",
            "user",
            user_id,
            serde_json::json!({}),
        )
        .await;
        return Err(ApiError::field(
            "current_password",
            "does not match the current password",
        ));
    }
    let new_phc = hash_new_password(body.new_password)
        .await
        .map_err(|e| match e {
            // The strength rule names `password`; here the field is `new_password`.
            ApiError::BadRequest { message, .. } => ApiError::field("new_password", message),
            other => other,
        })?;
    let mut tx = state.pool.begin().await?;
    if !store_password(&mut tx, tenant_id, user_id, &new_phc).await? {
        return Err(ApiError::Unauthorized);
    }
    let (tokens, _) =
        issue_tokens(&state, &mut tx, user_id, tenant_id, role, Uuid::new_v4()).await?;
    tx.commit().await?;
    audit_caller(
        &state.pool,
        &caller,
        "users.password_change",
        "user",
        user_id,
        serde_json::json!({}),
    )
    .await;
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
    // Signed with a key derived from the JWT secret, which fanout derives the same way.
    let ticket = issue_ticket(
        &mut redis,
        &TicketKey::derive(&state.settings.jwt_secret),
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
