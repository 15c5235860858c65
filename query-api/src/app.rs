//! Request plumbing shared by every route: the application state, the authenticated [`Caller`]
//! extractor (which is also where RBAC is checked: [`Caller::require`]), JSON and query
//! extractors that answer in the API's error shape (a body over [`MAX_BODY_BYTES`] is a `413`),
//! Redis rate limits and the audit log.

use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use gps_domain::auth::{Permission, Principal};
use gps_store::principal::{principal_from_bearer, JwtKeys};
use gps_store::visibility::can_read_device;
use redis::aio::ConnectionManager;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use uuid::Uuid;

pub use crate::config::Settings;

/// Largest request body the API reads (every body is a small management object); larger ones
/// answer `413` before they are buffered. Applied to the router as axum's `DefaultBodyLimit`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Shared state of every route.
#[derive(Clone)]
pub struct AppState {
    /// Database pool.
    pub pool: PgPool,
    /// Redis (rate limits, tickets).
    pub redis: ConnectionManager,
    /// JWT signing keys.
    pub keys: JwtKeys,
    /// Tunables.
    pub settings: Arc<Settings>,
    /// Metrics.
    pub metrics: Metrics,
    /// The per-tenant slots of concurrent history reads (exports).
    pub exports: crate::routes::history::ExportSlots,
}

/// The authenticated caller of a route. Extracting it authenticates (401 otherwise) and applies
/// the per-caller rate limit; routes then call [`Caller::require`] for their permission.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who is calling, bound to one tenant.
    pub principal: Principal,
    /// The peer address, for the audit log.
    pub ip: Option<IpAddr>,
}

impl Caller {
    /// The caller's tenant (every query is scoped to it).
    pub fn tenant(&self) -> Uuid {
        self.principal.tenant_id
    }

    /// 403 unless the caller holds `permission`. The single RBAC check of the API.
    pub fn require(&self, permission: Permission) -> ApiResult<()> {
        if self.principal.allows(permission) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(permission.as_str()))
        }
    }

    /// 404 unless the caller may read `device` (exists in its tenant, within its role's scope).
    pub async fn require_device(&self, pool: &PgPool, device: Uuid) -> ApiResult<()> {
        if can_read_device(pool, &self.principal, device).await? {
            Ok(())
        } else {
            Err(ApiError::NotFound)
        }
    }
}

/// The peer IP of a request.
pub fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let principal = principal_from_bearer(&state.pool, &state.keys, header)
            .await
            .inspect_err(|e| tracing::debug!(reason = %e, "credential refused"))?;
        let (kind, id) = principal.audit_actor();
        let mut redis = state.redis.clone();
        rate_limit(
            &mut redis,
            &format!("api:{kind}"),
            &id.to_string(),
            state.settings.api_limit_per_minute,
            60,
            false,
        )
        .await
        .inspect_err(|_| state.metrics.rate_limited.with_label_values(&["api"]).inc())?;
        Ok(Self {
            principal,
            ip: peer_ip(parts),
        })
    }
}

/// A JSON body whose rejections answer in the API's error shape.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        };
    }
    bad_request_naming_serde_field(rejection.body_text())
}

/// A 400 whose field is the one serde's message names (`unknown field \`role\``,
/// `missing field \`email\``, `duplicate field \`from\``), if it names one.
pub(crate) fn bad_request_naming_serde_field(text: String) -> ApiError {
    let field = text
        .split('`')
        .nth(1)
        .filter(|_| text.contains("field"))
        .map(str::to_owned);
    ApiError::BadRequest {
        field,
        message: text,
    }
}

/// Query parameters whose rejections answer in the API's error shape.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    bad_request_naming_serde_field(rejection.body_text())
}

/// Fixed-window counter in Redis: the `limit + 1`th call in a window is refused with the seconds
/// left. When Redis is down, `fail_closed` refuses (login) or lets the call through (the rest).
pub async fn rate_limit(
    redis: &mut ConnectionManager,
    scope: &str,
    id: &str,
    limit: u64,
    window_secs: u64,
    fail_closed: bool,
) -> ApiResult<()> {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let window = now / window_secs;
    let key = format!("gps:rl:{scope}:{id}:{window}");
    let result: Result<(u64,), redis::RedisError> = redis::pipe()
        .atomic()
        .incr(&key, 1u64)
        .expire(&key, window_secs as i64 + 1)
        .ignore()
        .query_async(redis)
        .await;
    match result {
        Ok((count,)) if count > limit => Err(ApiError::RateLimited {
            retry_after: window_secs - now % window_secs,
        }),
        Ok(_) => Ok(()),
        Err(e) if fail_closed => Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, scope, "rate limit check skipped: redis unavailable");
            Ok(())
        }
    }
}

/// One audit-log entry (the one definition is the shared store's).
pub use gps_store::audit::AuditEntry;

/// Write an audit entry through the one audit insert ([`gps_store::audit`]). A failure never
/// fails the request it records; it is counted (`gps_query_audit_failures_total`) and logged.
pub async fn audit(pool: &PgPool, entry: AuditEntry<'_>) {
    gps_store::audit::record(pool, entry).await;
}

/// Audit an action of `caller`.
pub async fn audit_caller(
    pool: &PgPool,
    caller: &Caller,
    action: &str,
    object_kind: &str,
    object_id: impl ToString,
    detail: serde_json::Value,
) {
    let (actor_kind, actor_id) = caller.principal.audit_actor();
    audit(
        pool,
        AuditEntry {
            tenant: caller.tenant(),
            actor_kind,
            actor_id: Some(actor_id),
            action,
            object_kind: Some(object_kind),
            object_id: Some(object_id.to_string()),
            ip: caller.ip,
            detail,
        },
    )
    .await;
}
