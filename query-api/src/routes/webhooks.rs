//! Webhooks: a tenant's receivers of events and their delivery log (`webhooks:write`, admins
//! and managers, for every route: the log shows receivers' answers). Create, list, read, change
//! (URL, event types, secret, enable/disable) and delete a webhook; page through its deliveries;
//! put one back in the queue (`redeliver`).
//!
//! The URL goes through the one URL policy of [`gps_webhooks::policy`] (http or https, no
//! credentials, and no private, loopback, link-local, ... address, literal or resolved, unless
//! `WEBHOOK_ALLOW_PRIVATE_CIDRS` allows it); a refused address is a `400` with the code
//! `private_address` on `url`. The delivery worker checks again at every delivery. The secret is
//! write-only: never answered, logged or audited. Another tenant's webhook is a `404`; every
//! write is audited (with the URL's host only: a URL's query may carry the receiver's token).

use crate::app::{audit_caller, ApiJson, ApiQuery, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::routes::{parse_id, remove_owned};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use gps_domain::auth::{Actor, Permission};
use gps_domain::events::EventType;
use gps_webhooks::Refusal;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

/// Most webhooks one tenant may have: each new event writes one delivery per matching webhook.
pub const MAX_WEBHOOKS_PER_TENANT: i64 = 100;
/// Longest URL, characters (the column's limit).
const MAX_URL_CHARS: usize = 2048;
/// Secret length, characters.
const SECRET_CHARS: std::ops::RangeInclusive<usize> = 16..=256;
/// Largest page of the delivery log.
const MAX_DELIVERY_LIMIT: i64 = 1_000;
/// Page size when none is asked for.
const DEFAULT_DELIVERY_LIMIT: i64 = 100;

/// The webhook routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", get(list_webhooks).post(create_webhook))
        .route(
            "/v1/webhooks/{id}",
            get(get_webhook).put(update_webhook).delete(delete_webhook),
        )
        .route("/v1/webhooks/{id}/deliveries", get(list_deliveries))
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            post(redeliver),
        )
}

/// `POST /v1/webhooks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    url: String,
    /// Empty or absent: every type.
    #[serde(default)]
    event_types: Vec<String>,
    secret: String,
    #[serde(default)]
    disabled: bool,
}

/// `PUT /v1/webhooks/{id}`: the fields present are changed, the others kept (the secret is
/// write-only, so a client need not send it back).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateBody {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    event_types: Option<Vec<String>>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    disabled: Option<bool>,
}

/// A URL the policy accepted, and its host (for the audit log).
struct CheckedUrl {
    url: String,
    host: String,
}

/// The URL after the policy: `400` on `url` naming why (code `private_address` for an address
/// the policy refuses).
async fn check_url(state: &AppState, raw: &str) -> ApiResult<CheckedUrl> {
    let raw = raw.trim();
    if raw.chars().count() > MAX_URL_CHARS {
        return Err(ApiError::field(
            "url",
            format!("must be at most {MAX_URL_CHARS} characters"),
        ));
    }
    match state.settings.webhook_urls.check_at_creation(raw).await {
        Ok(url) => Ok(CheckedUrl {
            host: url.host_str().unwrap_or_default().to_owned(),
            url: url.to_string(),
        }),
        Err(refusal @ (Refusal::Address { .. } | Refusal::Resolves { .. })) => {
            Err(ApiError::NeedsField {
                code: "private_address",
                field: "url",
                message: format!(
                    "{refusal}: webhooks may not call private, loopback, link-local or other \
                     special addresses unless WEBHOOK_ALLOW_PRIVATE_CIDRS allows them"
                ),
            })
        }
        Err(refusal) => Err(ApiError::field("url", refusal.to_string())),
    }
}

/// The event types in their stable names, each checked (`400` on `event_types[i]`), without
/// repeats.
fn check_event_types(raw: &[String]) -> ApiResult<Vec<String>> {
    let mut types = raw
        .iter()
        .enumerate()
        .map(|(i, name)| {
            name.trim()
                .parse::<EventType>()
                .map(|t| t.as_str().to_owned())
                .map_err(|reason| ApiError::field(&format!("event_types[{i}]"), reason))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    types.sort_unstable();
    types.dedup();
    Ok(types)
}

/// `400` on `secret` unless it has 16..256 characters (the message never repeats it).
fn check_secret(secret: &str) -> ApiResult<()> {
    if SECRET_CHARS.contains(&secret.chars().count()) {
        Ok(())
    } else {
        Err(ApiError::field(
            "secret",
            format!(
                "must have {} to {} characters",
                SECRET_CHARS.start(),
                SECRET_CHARS.end()
            ),
        ))
    }
}

#[derive(Debug, sqlx::FromRow)]
struct WebhookRow {
    id: Uuid,
    url: String,
    event_types: Vec<String>,
    disabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const WEBHOOK_COLUMNS: &str = "id, url, event_types, disabled, created_at, updated_at";

impl WebhookRow {
    /// The answer: never the secret.
    fn into_json(self) -> Value {
        json!({
            "id": self.id,
            "url": self.url,
            "event_types": self.event_types,
            "disabled": self.disabled,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

async fn read_webhook(state: &AppState, tenant: Uuid, id: Uuid) -> ApiResult<WebhookRow> {
    sqlx::query_as(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND tenant_id = $2"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound)
}

/// `GET /v1/webhooks`: the tenant's webhooks (at most [`MAX_WEBHOOKS_PER_TENANT`]), oldest
/// first.
pub(crate) async fn list_webhooks(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::WebhooksWrite)?;
    let rows: Vec<WebhookRow> = sqlx::query_as(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant_id = $1 ORDER BY created_at, id"
    ))
    .bind(caller.tenant())
    .fetch_all(&state.pool)
    .await?;
    let webhooks: Vec<Value> = rows.into_iter().map(WebhookRow::into_json).collect();
    Ok(Json(json!({ "webhooks": webhooks })))
}

/// `POST /v1/webhooks`.
pub(crate) async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Permission::WebhooksWrite)?;
    let event_types = check_event_types(&body.event_types)?;
    check_secret(&body.secret)?;
    let CheckedUrl { url, host } = check_url(&state, &body.url).await?;
    // The count and the insert under the tenant's row lock: two concurrent creates cannot both
    // pass the cap.
    let mut tx = state.pool.begin().await?;
    sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE")
        .bind(caller.tenant())
        .execute(&mut *tx)
        .await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks WHERE tenant_id = $1")
        .bind(caller.tenant())
        .fetch_one(&mut *tx)
        .await?;
    if count >= MAX_WEBHOOKS_PER_TENANT {
        return Err(ApiError::StateConflict {
            code: "too_many_webhooks",
            message: format!("a tenant may have at most {MAX_WEBHOOKS_PER_TENANT} webhooks"),
        });
    }
    let row: WebhookRow = sqlx::query_as(&format!(
        "INSERT INTO webhooks (tenant_id, url, event_types, secret, disabled, created_by)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {WEBHOOK_COLUMNS}"
    ))
    .bind(caller.tenant())
    .bind(&url)
    .bind(&event_types)
    .bind(&body.secret)
    .bind(body.disabled)
    .bind(match &caller.principal.actor {
        Actor::User { user_id, .. } => Some(*user_id),
        Actor::ApiKey { .. } => None,
    })
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    audit_caller(
        &state.pool,
        &caller,
        "webhooks.create",
        "webhook",
        row.id,
        json!({ "host": host, "event_types": event_types, "disabled": body.disabled }),
    )
    .await;
    Ok((StatusCode::CREATED, Json(row.into_json())))
}

/// `GET /v1/webhooks/{id}`.
pub(crate) async fn get_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::WebhooksWrite)?;
    let id = parse_id(&id)?;
    Ok(Json(
        read_webhook(&state, caller.tenant(), id).await?.into_json(),
    ))
}

/// `PUT /v1/webhooks/{id}`: change the fields present.
pub(crate) async fn update_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateBody>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::WebhooksWrite)?;
    let id = parse_id(&id)?;
    let event_types = body
        .event_types
        .as_deref()
        .map(check_event_types)
        .transpose()?;
    if let Some(secret) = &body.secret {
        check_secret(secret)?;
    }
    let url = match &body.url {
        Some(raw) => Some(check_url(&state, raw).await?),
        None => None,
    };
    let row: WebhookRow = sqlx::query_as(&format!(
        "UPDATE webhooks SET url = coalesce($3, url), event_types = coalesce($4, event_types),
                secret = coalesce($5, secret), disabled = coalesce($6, disabled),
                updated_at = now()
         WHERE id = $1 AND tenant_id = $2 RETURNING {WEBHOOK_COLUMNS}"
    ))
    .bind(id)
    .bind(caller.tenant())
    .bind(url.as_ref().map(|u| &u.url))
    .bind(&event_types)
    .bind(&body.secret)
    .bind(body.disabled)
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound)?;
    audit_caller(
        &state.pool,
        &caller,
        "webhooks.update",
        "webhook",
        id,
        json!({
            "host": url.as_ref().map(|u| &u.host),
            "event_types": event_types,
            "secret_changed": body.secret.is_some(),
            "disabled": body.disabled,
        }),
    )
    .await;
    Ok(Json(row.into_json()))
}

/// `DELETE /v1/webhooks/{id}` (its delivery log goes with it).
pub(crate) async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::WebhooksWrite)?;
    let id = parse_id(&id)?;
    remove_owned(
        &state,
        &caller,
        "DELETE FROM webhooks WHERE id = $1 AND tenant_id = $2",
        id,
        "webhooks.delete",
        "webhook",
    )
    .await
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeliveriesQuery {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct DeliveryRow {
    id: i64,
    event_id: Uuid,
    event_type: Option<String>,
    status: String,
    attempts: i32,
    response_status: Option<i32>,
    error: Option<String>,
    created_at: DateTime<Utc>,
    last_attempt_at: Option<DateTime<Utc>>,
    next_attempt_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
}

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.type AS event_type, d.status, d.attempts, \
    d.response_status, d.error, d.created_at, d.last_attempt_at, d.next_attempt_at, d.delivered_at";

impl DeliveryRow {
    fn into_json(self) -> Value {
        let pending = self.status == "pending";
        json!({
            "id": self.id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "status": self.status,
            "attempts": self.attempts,
            "response_status": self.response_status,
            "error": self.error,
            "created_at": self.created_at,
            "last_attempt_at": self.last_attempt_at,
            "next_attempt_at": pending.then_some(self.next_attempt_at),
            "delivered_at": self.delivered_at,
        })
    }
}

/// `GET /v1/webhooks/{id}/deliveries?status&cursor&limit`: the delivery log, newest first, in
/// keyset pages of the delivery id.
pub(crate) async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::WebhooksWrite)?;
    let id = parse_id(&id)?;
    let status = match query.status.as_deref() {
        None => None,
        Some(s @ ("pending" | "delivered" | "failed")) => Some(s),
        Some(_) => {
            return Err(ApiError::field(
                "status",
                "must be pending, delivered or failed",
            ))
        }
    };
    let limit = match query.limit.as_deref() {
        None => DEFAULT_DELIVERY_LIMIT,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_DELIVERY_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::field(
                    "limit",
                    format!("must be a whole number between 1 and {MAX_DELIVERY_LIMIT}"),
                )
            })?,
    };
    let before = query
        .cursor
        .as_deref()
        .map(|raw| {
            raw.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::field("cursor", "not a cursor this API issued"))
        })
        .transpose()?;
    // The webhook must be the caller's tenant's (else 404, whatever its deliveries).
    read_webhook(&state, caller.tenant(), id).await?;
    let mut rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
         LEFT JOIN events e ON e.id = d.event_id AND e.tenant_id = d.tenant_id
         WHERE d.webhook_id = $1 AND d.tenant_id = $2
           AND ($3::text IS NULL OR d.status = $3)
           AND ($4::bigint IS NULL OR d.id < $4)
         ORDER BY d.id DESC LIMIT $5"
    ))
    .bind(id)
    .bind(caller.tenant())
    .bind(status)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    let deliveries: Vec<Value> = rows.into_iter().map(DeliveryRow::into_json).collect();
    Ok(Json(
        json!({ "deliveries": deliveries, "next_cursor": next }),
    ))
}

/// `POST /v1/webhooks/{id}/deliveries/{delivery_id}/redeliver`: back to pending, due now, with
/// a fresh attempt budget; the same event (and event id) is sent again.
pub(crate) async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, delivery)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::WebhooksWrite)?;
    let id = parse_id(&id)?;
    let delivery: i64 = delivery.parse().map_err(|_| ApiError::NotFound)?;
    if !gps_webhooks::redeliver(&state.pool, caller.tenant(), id, delivery).await? {
        return Err(ApiError::NotFound);
    }
    audit_caller(
        &state.pool,
        &caller,
        "webhooks.redeliver",
        "webhook_delivery",
        delivery,
        json!({ "webhook": id }),
    )
    .await;
    let row: DeliveryRow = sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
         LEFT JOIN events e ON e.id = d.event_id AND e.tenant_id = d.tenant_id
         WHERE d.id = $1"
    ))
    .bind(delivery)
    .fetch_one(&state.pool)
    .await?;
    Ok(Json(row.into_json()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(result: ApiResult<impl std::fmt::Debug>) -> Option<String> {
        match result {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn event_types_are_checked_by_name_and_deduplicated() {
        let ok = check_event_types(&[
            "overspeed".into(),
            " geofence_enter".into(),
            "overspeed".into(),
        ])
        .unwrap();
        assert_eq!(ok, vec!["geofence_enter", "overspeed"]);
        assert!(check_event_types(&[]).unwrap().is_empty());
        assert_eq!(
            field(check_event_types(&["alarm".into(), "teleport".into()])).as_deref(),
            Some("event_types[1]")
        );
    }

    #[test]
    fn secrets_have_16_to_256_characters_and_are_never_repeated() {
        assert!(check_secret(&"s".repeat(16)).is_ok());
        assert!(check_secret(&"é".repeat(256)).is_ok());
        match check_secret("short-secret") {
            Err(ApiError::BadRequest { field, message }) => {
                assert_eq!(field.as_deref(), Some("secret"));
                assert!(!message.contains("short-secret"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            field(check_secret(&"s".repeat(257))).as_deref(),
            Some("secret")
        );
    }
}
