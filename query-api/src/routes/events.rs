//! Events: `GET /v1/event-types` (what the engine raises) and `GET /v1/events` (the `events`
//! projection the processor writes: one device or every visible one, by type and fix-time range,
//! in keyset pages, as JSON or CSV). `events:read`, by the device visibility rule: a viewer reads
//! only its groups' devices' events, and naming another tenant's device (or one outside the
//! caller's scope) is a `404`. The range is capped like history's (`HISTORY_MAX_RANGE_DAYS`),
//! a page holds at most [`MAX_LIMIT`] events, and every read is audited. [`count_by_type`]
//! gives a device summary its event counts.

use crate::app::{audit_caller, ApiQuery, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::routes::{parse_id, time_range};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use gps_domain::auth::{Permission, Visibility};
use gps_domain::events::EventType;
use gps_store::visibility::visibility;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::types::Json as SqlJson;
use uuid::Uuid;

/// Largest page.
pub const MAX_LIMIT: i64 = 10_000;
/// Page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 1_000;

const CSV_HEADER: [&str; 8] = [
    "id",
    "device_id",
    "type",
    "fix_time",
    "lat",
    "lon",
    "geofence_id",
    "details",
];

/// `GET /v1/event-types`.
pub(crate) async fn event_types(caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Permission::EventsRead)?;
    let types: Vec<Value> = EventType::ALL
        .iter()
        .map(|t| json!({ "type": t.as_str(), "description": t.description() }))
        .collect();
    Ok(Json(json!({ "event_types": types })))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct EventsQuery {
    device: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
    format: Option<String>,
}

/// A request's parameters after validation.
#[derive(Debug)]
struct EventsParams {
    device: Option<Uuid>,
    types: Option<Vec<String>>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
    csv: bool,
}

impl EventsQuery {
    /// Validate every parameter (pure). `device` is checked against the caller apart.
    fn parse(
        &self,
        now: DateTime<Utc>,
        max_range: chrono::Duration,
        headers: &HeaderMap,
    ) -> ApiResult<EventsParams> {
        let device = self.device.as_deref().map(parse_id).transpose()?;
        let types = self
            .event_type
            .as_deref()
            .map(|raw| {
                raw.split(',')
                    .map(|t| {
                        t.trim()
                            .parse::<EventType>()
                            .map(|t| t.as_str().to_owned())
                            .map_err(|e| ApiError::field("type", e))
                    })
                    .collect::<ApiResult<Vec<_>>>()
            })
            .transpose()?;
        let (from, to) = time_range(
            self.from.as_deref(),
            self.to.as_deref(),
            now,
            max_range,
            "events",
        )?;
        let limit = match self.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::field(
                        "limit",
                        format!("must be a whole number between 1 and {MAX_LIMIT}"),
                    )
                })?,
        };
        let after = self.cursor.as_deref().map(decode_cursor).transpose()?;
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let csv = match self.format.as_deref() {
            Some("csv") => true,
            Some("json") => false,
            Some(_) => return Err(ApiError::field("format", "must be json or csv")),
            None => accept.contains("text/csv"),
        };
        Ok(EventsParams {
            device,
            types,
            from,
            to,
            after,
            limit,
            csv,
        })
    }
}

/// The opaque page cursor: fix time (µs) and id of the page's last event.
fn encode_cursor(fix_time: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{id}", fix_time.timestamp_micros()))
}

fn decode_cursor(raw: &str) -> ApiResult<(DateTime<Utc>, Uuid)> {
    let err = || ApiError::field("cursor", "not a cursor this API issued");
    let text =
        String::from_utf8(URL_SAFE_NO_PAD.decode(raw).map_err(|_| err())?).map_err(|_| err())?;
    let (micros, id) = text.split_once(':').ok_or_else(err)?;
    let time = micros
        .parse::<i64>()
        .ok()
        .and_then(|m| Utc.timestamp_micros(m).single())
        .ok_or_else(err)?;
    Ok((time, id.parse().map_err(|_| err())?))
}

#[derive(Debug, sqlx::FromRow)]
struct EventRow {
    id: Uuid,
    device_id: Uuid,
    #[sqlx(rename = "type")]
    event_type: String,
    fix_time: DateTime<Utc>,
    lat: Option<f64>,
    lon: Option<f64>,
    geofence_id: Option<Uuid>,
    details: SqlJson<Value>,
}

/// `GET /v1/events?device&type&from&to&cursor&limit&format`: oldest first.
pub(crate) async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> ApiResult<Response> {
    caller.require(Permission::EventsRead)?;
    let params = query.parse(
        Utc::now(),
        state.settings.limits.history_max_range,
        &headers,
    )?;
    if let Some(device) = params.device {
        caller.require_device(&state.pool, device).await?;
    }
    let visible: Option<Vec<Uuid>> = match visibility(&state.pool, &caller.principal).await? {
        Visibility::AllOfTenant(_) => None,
        Visibility::Only(ids) => Some(ids.into_iter().collect()),
    };
    let (after_time, after_id) = params.after.unzip();
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT id, device_id, type, fix_time, lat, lon, geofence_id, details FROM events
         WHERE tenant_id = $1 AND fix_time >= $2 AND fix_time <= $3
           AND ($4::uuid IS NULL OR device_id = $4)
           AND ($5::uuid[] IS NULL OR device_id = ANY($5))
           AND ($6::text[] IS NULL OR type = ANY($6))
           AND ($7::timestamptz IS NULL OR (fix_time, id) > ($7, $8))
         ORDER BY fix_time, id LIMIT $9",
    )
    .bind(caller.tenant())
    .bind(params.from)
    .bind(params.to)
    .bind(params.device)
    .bind(visible)
    .bind(&params.types)
    .bind(after_time)
    .bind(after_id)
    .bind(params.limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let more = rows.len() as i64 > params.limit;
    let page = &rows[..rows.len().min(params.limit as usize)];
    let next = more
        .then(|| page.last().map(|r| encode_cursor(r.fix_time, r.id)))
        .flatten();
    audit_caller(
        &state.pool,
        &caller,
        "events.read",
        "tenant",
        caller.tenant(),
        json!({ "device": params.device, "types": params.types, "from": params.from, "to": params.to }),
    )
    .await;
    if params.csv {
        return render_csv(page, next);
    }
    let events: Vec<Value> = page
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "device_id": r.device_id,
                "type": r.event_type,
                "fix_time": r.fix_time,
                "lat": r.lat,
                "lon": r.lon,
                "geofence_id": r.geofence_id,
                "details": r.details.0,
            })
        })
        .collect();
    Ok(Json(json!({ "events": events, "next_cursor": next })).into_response())
}

/// The events of `device` (of `tenant`) with `from <= fix_time <= to` (the summary's range), per
/// type, every type present. One range scan of the `(tenant_id, device_id, fix_time)` index.
pub(crate) async fn count_by_type(
    pool: &sqlx::PgPool,
    (device, tenant): (Uuid, Uuid),
    (from, to): (DateTime<Utc>, DateTime<Utc>),
) -> ApiResult<std::collections::BTreeMap<&'static str, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT type, count(*) FROM events
         WHERE tenant_id = $1 AND device_id = $2 AND fix_time >= $3 AND fix_time <= $4
         GROUP BY type",
    )
    .bind(tenant)
    .bind(device)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    Ok(crate::summary::event_counts(rows))
}

/// One page as CSV (the details as a JSON text column); the next cursor in `x-next-cursor`.
fn render_csv(page: &[EventRow], next: Option<String>) -> ApiResult<Response> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let internal = |e: csv::Error| ApiError::Internal(format!("csv: {e}"));
    out.write_record(CSV_HEADER).map_err(internal)?;
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for r in page {
        out.write_record([
            r.id.to_string(),
            r.device_id.to_string(),
            r.event_type.clone(),
            r.fix_time
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            opt(r.lat),
            opt(r.lon),
            r.geofence_id.map(|g| g.to_string()).unwrap_or_default(),
            r.details.0.to_string(),
        ])
        .map_err(internal)?;
    }
    let body = out
        .into_inner()
        .map_err(|e| ApiError::Internal(format!("csv: {e}")))?;
    let mut response = ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response();
    if let Some(cursor) = next.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert("x-next-cursor", cursor);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: EventsQuery) -> ApiResult<EventsParams> {
        q.parse(Utc::now(), chrono::Duration::days(366), &HeaderMap::new())
    }

    fn field_of(result: ApiResult<EventsParams>) -> Option<String> {
        match result {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parameters_are_validated_naming_the_field() {
        let ok = parse(EventsQuery {
            event_type: Some("geofence_enter, overspeed".into()),
            limit: Some("10".into()),
            format: Some("csv".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            ok.types.unwrap(),
            ["geofence_enter".to_owned(), "overspeed".to_owned()]
        );
        assert!(ok.csv);
        for (query, field) in [
            (
                EventsQuery {
                    event_type: Some("teleport".into()),
                    ..Default::default()
                },
                "type",
            ),
            (
                EventsQuery {
                    limit: Some("0".into()),
                    ..Default::default()
                },
                "limit",
            ),
            (
                EventsQuery {
                    limit: Some("10001".into()),
                    ..Default::default()
                },
                "limit",
            ),
            (
                EventsQuery {
                    cursor: Some("!!".into()),
                    ..Default::default()
                },
                "cursor",
            ),
            (
                EventsQuery {
                    format: Some("gpx".into()),
                    ..Default::default()
                },
                "format",
            ),
            (
                EventsQuery {
                    from: Some("yesterday".into()),
                    ..Default::default()
                },
                "from",
            ),
            (
                EventsQuery {
                    from: Some("2020-01-01T00:00:00Z".into()),
                    to: Some("2026-01-01T00:00:00Z".into()),
                    ..Default::default()
                },
                "from",
            ),
        ] {
            assert_eq!(field_of(parse(query)).as_deref(), Some(field));
        }
    }

    #[test]
    fn cursors_round_trip() {
        let t = Utc.timestamp_micros(1_796_023_800_123_456).unwrap();
        let id = Uuid::new_v4();
        assert_eq!(decode_cursor(&encode_cursor(t, id)).unwrap(), (t, id));
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("1:x")).is_err());
    }
}
