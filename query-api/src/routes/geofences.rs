//! Geofences: list, create, read, replace and delete a tenant's fences (`geofences:read`,
//! `geofences:write`). A body is validated by the events engine's one rule
//! ([`gps_domain::events::Fence::new`]: GeoJSON Polygon, MultiPolygon or Point + `radius_m`,
//! closed rings, no self-intersection, at most 10,000 positions, size limits, the antimeridian),
//! so that what the API accepts is exactly what the processor can evaluate; a refusal is a `400`
//! naming the field (`geometry.coordinates[0]`, `radius_m`, `schedule.windows[1]`, ...).
//!
//! The stored geometry is the one the client sent; the bounding box is computed from it (the
//! `BBox` meaning: `min_lon > max_lon` crosses the antimeridian) and answered as `bbox`. Fence
//! bodies may be larger than other management bodies ([`MAX_FENCE_BODY_BYTES`]). Another
//! tenant's fence is a `404`; every write is audited.

use crate::app::{audit_caller, bad_request_naming_serde_field, ApiQuery, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::routes::{check_name, parse_id, remove_owned};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use gps_domain::auth::Permission;
use gps_domain::events::Fence;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::QueryScalar;
use sqlx::types::Json as SqlJson;
use uuid::Uuid;

/// Largest fence body, bytes: room for the 10,000 positions a fence may have.
pub const MAX_FENCE_BODY_BYTES: usize = 1024 * 1024;
/// Most groups one fence may name.
const MAX_FENCE_GROUPS: usize = 100;
/// Largest page of the list.
const MAX_LIST_LIMIT: i64 = 1_000;
/// Page size when none is asked for.
const DEFAULT_LIST_LIMIT: i64 = 100;
/// Stored geometry a list page carries at most (one fence always): a page of large fences is
/// cut short (with a `next_cursor`) rather than answered by the megabyte.
const PAGE_GEOMETRY_BYTES: i64 = 4 * 1024 * 1024;

/// The geofence routes, with their own body limit.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/geofences", get(list_geofences).post(create_geofence))
        .route(
            "/v1/geofences/{id}",
            get(get_geofence)
                .put(replace_geofence)
                .delete(delete_geofence),
        )
        .layer(DefaultBodyLimit::max(MAX_FENCE_BODY_BYTES))
}

/// The body of a create or a replace.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FenceBody {
    name: String,
    geometry: Value,
    #[serde(default)]
    radius_m: Option<f64>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    speed_limit_mps: Option<f64>,
    #[serde(default)]
    schedule: Option<Value>,
}

/// A fence body whose rejections answer in the API's error shape, with the fence body limit.
pub(crate) struct FenceJson(FenceBody);

impl FromRequest<AppState> for FenceJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        match Json::<FenceBody>::from_request(req, state).await {
            Ok(Json(body)) => Ok(Self(body)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge {
                    limit: MAX_FENCE_BODY_BYTES,
                })
            }
            Err(rejection) => Err(bad_request_naming_serde_field(rejection.body_text())),
        }
    }
}

/// A body after validation: what gets stored.
struct ValidFence {
    name: String,
    geometry: Value,
    radius_m: Option<f64>,
    groups: Vec<Uuid>,
    speed_limit_mps: Option<f64>,
    schedule: Option<Value>,
    bbox: [f64; 4],
}

impl FenceBody {
    /// Validate every field (pure): the name, the groups' form, and the fence itself.
    fn validate(self) -> ApiResult<ValidFence> {
        let name = self.name.trim().to_owned();
        if name.is_empty() {
            return Err(ApiError::field("name", "must not be empty"));
        }
        check_name("name", &name)?;
        if self.groups.len() > MAX_FENCE_GROUPS {
            return Err(ApiError::field(
                "groups",
                format!("at most {MAX_FENCE_GROUPS} groups"),
            ));
        }
        let mut groups = self
            .groups
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                raw.parse::<Uuid>()
                    .map_err(|_| ApiError::field(&format!("groups[{i}]"), "must be a group id"))
            })
            .collect::<ApiResult<Vec<_>>>()?;
        groups.sort_unstable();
        groups.dedup();
        let schedule = self.schedule.filter(|s| !s.is_null());
        let fence = Fence::new(
            Uuid::nil(),
            &self.geometry,
            self.radius_m,
            groups.clone(),
            self.speed_limit_mps,
            schedule.as_ref(),
        )
        .map_err(|e| ApiError::field(&e.field, e.reason))?;
        Ok(ValidFence {
            name,
            geometry: self.geometry,
            radius_m: self.radius_m,
            groups,
            speed_limit_mps: self.speed_limit_mps,
            // Stored in its canonical form.
            schedule: fence
                .schedule
                .as_ref()
                .map(|s| serde_json::to_value(s).unwrap_or(Value::Null)),
            bbox: fence.shape.bbox().to_array(),
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
struct FenceRow {
    id: Uuid,
    name: String,
    geometry: SqlJson<Value>,
    radius_m: Option<f64>,
    bbox_min_lon: f64,
    bbox_min_lat: f64,
    bbox_max_lon: f64,
    bbox_max_lat: f64,
    speed_limit_mps: Option<f64>,
    schedule: Option<SqlJson<Value>>,
    groups: Vec<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const FENCE_COLUMNS: &str = "g.id, g.name, g.geometry, g.radius_m, g.bbox_min_lon, g.bbox_min_lat, \
    g.bbox_max_lon, g.bbox_max_lat, g.speed_limit_mps, g.schedule, \
    ARRAY(SELECT gg.group_id FROM geofence_groups gg WHERE gg.geofence_id = g.id ORDER BY gg.group_id) AS groups, \
    g.created_at, g.updated_at";

impl FenceRow {
    fn into_json(self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "geometry": self.geometry.0,
            "radius_m": self.radius_m,
            "bbox": [self.bbox_min_lon, self.bbox_min_lat, self.bbox_max_lon, self.bbox_max_lat],
            "groups": self.groups,
            "speed_limit_mps": self.speed_limit_mps,
            "schedule": self.schedule.map(|s| s.0),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

/// Bind `$1` the tenant and `$2..$10` the fence's columns (name, geometry, radius, the bbox,
/// speed limit, schedule), in the order of the create's column list.
fn bind_fence<'q>(
    query: QueryScalar<'q, Postgres, Uuid, PgArguments>,
    tenant: Uuid,
    fence: &'q ValidFence,
) -> QueryScalar<'q, Postgres, Uuid, PgArguments> {
    query
        .bind(tenant)
        .bind(&fence.name)
        .bind(SqlJson(&fence.geometry))
        .bind(fence.radius_m)
        .bind(fence.bbox[0])
        .bind(fence.bbox[1])
        .bind(fence.bbox[2])
        .bind(fence.bbox[3])
        .bind(fence.speed_limit_mps)
        .bind(fence.schedule.as_ref().map(SqlJson))
}

async fn read_fence(state: &AppState, tenant: Uuid, id: Uuid) -> ApiResult<Value> {
    let row: FenceRow = sqlx::query_as(&format!(
        "SELECT {FENCE_COLUMNS} FROM geofences g WHERE g.id = $1 AND g.tenant_id = $2"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound)?;
    Ok(row.into_json())
}

/// Replace the fence's groups inside `tx`: each must be a group of `tenant` (else a `400` on
/// `groups`, the same for a group that does not exist and another tenant's).
async fn set_groups(
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    fence: Uuid,
    groups: &[Uuid],
) -> ApiResult<()> {
    let known: i64 =
        sqlx::query_scalar("SELECT count(*) FROM groups WHERE tenant_id = $1 AND id = ANY($2)")
            .bind(tenant)
            .bind(groups)
            .fetch_one(&mut *tx)
            .await?;
    if known != groups.len() as i64 {
        return Err(ApiError::field(
            "groups",
            "names a group that does not exist",
        ));
    }
    sqlx::query("DELETE FROM geofence_groups WHERE geofence_id = $1")
        .bind(fence)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO geofence_groups (geofence_id, group_id) SELECT $1, unnest($2::uuid[])",
    )
    .bind(fence)
    .bind(groups)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The leading ids of `sizes` (id, stored geometry bytes) that make a page: at most `limit`,
/// and no more once the geometries reach `budget` bytes (but always the first).
fn page_ids(sizes: &[(Uuid, i32)], limit: usize, budget: i64) -> Vec<Uuid> {
    let mut total = 0i64;
    sizes
        .iter()
        .take(limit)
        .take_while(|(_, size)| {
            let fits = total < budget;
            total += i64::from(*size);
            fits
        })
        .map(|(id, _)| *id)
        .collect()
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/geofences?limit&cursor`: the tenant's fences by id, in pages of at most `limit`
/// fences and [`PAGE_GEOMETRY_BYTES`] of geometry.
pub(crate) async fn list_geofences(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::GeofencesRead)?;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIST_LIMIT,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::field(
                    "limit",
                    format!("must be a whole number between 1 and {MAX_LIST_LIMIT}"),
                )
            })?,
    };
    let after = query
        .cursor
        .as_deref()
        .map(|raw| {
            raw.parse::<Uuid>()
                .map_err(|_| ApiError::field("cursor", "not a cursor this API issued"))
        })
        .transpose()?;
    // The page's ids first, with each geometry's stored size (no geometry read), then the rows
    // of those that fit the page's byte budget.
    let sizes: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT id, pg_column_size(geometry) FROM geofences
         WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2)
         ORDER BY id LIMIT $3",
    )
    .bind(caller.tenant())
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let ids = page_ids(&sizes, limit as usize, PAGE_GEOMETRY_BYTES);
    let more = ids.len() < sizes.len();
    let rows: Vec<FenceRow> = sqlx::query_as(&format!(
        "SELECT {FENCE_COLUMNS} FROM geofences g
         WHERE g.tenant_id = $1 AND g.id = ANY($2) ORDER BY g.id"
    ))
    .bind(caller.tenant())
    .bind(&ids)
    .fetch_all(&state.pool)
    .await?;
    let next = more.then(|| ids.last().copied()).flatten();
    let fences: Vec<Value> = rows.into_iter().map(FenceRow::into_json).collect();
    Ok(Json(json!({ "geofences": fences, "next_cursor": next })))
}

/// `POST /v1/geofences`.
pub(crate) async fn create_geofence(
    State(state): State<AppState>,
    caller: Caller,
    FenceJson(body): FenceJson,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Permission::GeofencesWrite)?;
    let fence = body.validate()?;
    let mut tx = state.pool.begin().await?;
    let id: Uuid = bind_fence(
        sqlx::query_scalar(
            "INSERT INTO geofences (tenant_id, name, geometry, radius_m, bbox_min_lon, bbox_min_lat,
                                    bbox_max_lon, bbox_max_lat, speed_limit_mps, schedule)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        ),
        caller.tenant(),
        &fence,
    )
    .fetch_one(&mut *tx)
    .await?;
    set_groups(&mut tx, caller.tenant(), id, &fence.groups).await?;
    tx.commit().await?;
    audit_caller(
        &state.pool,
        &caller,
        "geofences.create",
        "geofence",
        id,
        json!({ "name": fence.name }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(read_fence(&state, caller.tenant(), id).await?),
    ))
}

/// `GET /v1/geofences/{id}`.
pub(crate) async fn get_geofence(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::GeofencesRead)?;
    let id = parse_id(&id)?;
    Ok(Json(read_fence(&state, caller.tenant(), id).await?))
}

/// `PUT /v1/geofences/{id}`: replace every field (groups included).
pub(crate) async fn replace_geofence(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    FenceJson(body): FenceJson,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::GeofencesWrite)?;
    let id = parse_id(&id)?;
    let fence = body.validate()?;
    let mut tx = state.pool.begin().await?;
    bind_fence(
        sqlx::query_scalar::<_, Uuid>(
            "UPDATE geofences SET name = $2, geometry = $3, radius_m = $4, bbox_min_lon = $5,
                    bbox_min_lat = $6, bbox_max_lon = $7, bbox_max_lat = $8, speed_limit_mps = $9,
                    schedule = $10, updated_at = now()
             WHERE tenant_id = $1 AND id = $11 RETURNING id",
        ),
        caller.tenant(),
        &fence,
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    set_groups(&mut tx, caller.tenant(), id, &fence.groups).await?;
    tx.commit().await?;
    audit_caller(
        &state.pool,
        &caller,
        "geofences.update",
        "geofence",
        id,
        json!({ "name": fence.name }),
    )
    .await;
    Ok(Json(read_fence(&state, caller.tenant(), id).await?))
}

/// `DELETE /v1/geofences/{id}`.
pub(crate) async fn delete_geofence(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::GeofencesWrite)?;
    let id = parse_id(&id)?;
    remove_owned(
        &state,
        &caller,
        "DELETE FROM geofences WHERE id = $1 AND tenant_id = $2",
        id,
        "geofences.delete",
        "geofence",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> FenceBody {
        serde_json::from_value(value).unwrap()
    }

    fn field(result: ApiResult<ValidFence>) -> Option<String> {
        match result {
            Err(ApiError::BadRequest { field, .. }) => field,
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn pages_stop_at_the_limit_or_the_byte_budget() {
        let sizes: Vec<(Uuid, i32)> = (0..5).map(|i| (Uuid::from_u128(i), 100)).collect();
        assert_eq!(page_ids(&sizes, 3, 10_000).len(), 3);
        assert_eq!(
            page_ids(&sizes, 10, 250).len(),
            3,
            "100 + 100 < 250: a third starts"
        );
        assert_eq!(page_ids(&sizes, 10, 1).len(), 1, "always one");
        assert!(page_ids(&[], 10, 1).is_empty());
    }

    const SQUARE: &str = r#"{"type":"Polygon","coordinates":[[[13,52],[13.01,52],[13.01,52.01],[13,52.01],[13,52]]]}"#;

    #[test]
    fn bodies_are_validated_naming_the_field() {
        let geometry: Value = serde_json::from_str(SQUARE).unwrap();
        let ok = body(json!({ "name": " depot ", "geometry": geometry, "groups": [], "speed_limit_mps": 13.9 }))
            .validate()
            .unwrap();
        assert_eq!(ok.name, "depot");
        assert_eq!(ok.bbox, [13.0, 52.0, 13.01, 52.01]);
        assert_eq!(
            field(body(json!({ "name": "", "geometry": geometry })).validate()).as_deref(),
            Some("name")
        );
        assert_eq!(
            field(
                body(json!({ "name": "x", "geometry": geometry, "groups": ["nope"] })).validate()
            )
            .as_deref(),
            Some("groups[0]")
        );
        assert_eq!(
            field(
                body(json!({ "name": "x", "geometry": geometry, "speed_limit_mps": -1 }))
                    .validate()
            )
            .as_deref(),
            Some("speed_limit_mps")
        );
        assert_eq!(
            field(
                body(json!({ "name": "x", "geometry": geometry, "schedule": { "windows": [] } }))
                    .validate()
            )
            .as_deref(),
            Some("schedule.windows")
        );
        let bowtie =
            json!({ "type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]] });
        assert_eq!(
            field(body(json!({ "name": "x", "geometry": bowtie })).validate()).as_deref(),
            Some("geometry.coordinates[0]")
        );
    }
}
