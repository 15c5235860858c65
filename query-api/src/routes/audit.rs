//! The tenant's audit log, newest first with keyset pagination (writing it is
//! [`crate::app::audit`]'s job).

use crate::app::{ApiQuery, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use gps_domain::auth::Permission;
use serde::Deserialize;
use uuid::Uuid;

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
