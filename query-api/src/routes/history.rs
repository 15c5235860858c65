//! History: a device's positions (JSON, GeoJSON, GPX, CSV; keyset pagination; streamed;
//! simplification and time-bucket downsampling; by fix time or receive time), latest positions,
//! area queries and the per-device summary. Every query is scoped by the caller's tenant and the
//! devices its role may see; every read lands in the audit log.

use crate::app::{audit_caller, ApiQuery, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::routes::parse_id;
use crate::summary::{simplify_indices, summarize, TrackPoint};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use futures::TryStreamExt;
use gps_domain::auth::{Permission, Visibility};
use gps_domain::geo::BBox;
use gps_store::geo::{bbox_condition, bbox_param};
use gps_store::positions::{columns_of, PositionRow, COLUMNS};
use gps_store::visibility::visibility;
use serde::Deserialize;
use std::fmt::Write as _;
use uuid::Uuid;

/// Largest page.
pub const MAX_LIMIT: i64 = 100_000;
/// Page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 1_000;

#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
    format: Option<String>,
    simplify: Option<f64>,
    bucket: Option<String>,
    as_of: Option<String>,
    geometry: Option<String>,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    GeoJson,
    Gpx,
    Csv,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::GeoJson => "application/geo+json",
            Self::Gpx => "application/gpx+xml",
            Self::Csv => "text/csv; charset=utf-8",
        }
    }
}

fn negotiate(format: Option<&str>, headers: &HeaderMap) -> ApiResult<Format> {
    if let Some(f) = format {
        return match f {
            "json" => Ok(Format::Json),
            "geojson" => Ok(Format::GeoJson),
            "gpx" => Ok(Format::Gpx),
            "csv" => Ok(Format::Csv),
            _ => Err(ApiError::field(
                "format",
                "must be json, geojson, gpx or csv",
            )),
        };
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(if accept.contains("geo+json") {
        Format::GeoJson
    } else if accept.contains("gpx") {
        Format::Gpx
    } else if accept.contains("text/csv") {
        Format::Csv
    } else {
        Format::Json
    })
}

/// Parse RFC 3339 or epoch milliseconds.
fn parse_time(field: &str, raw: &str) -> ApiResult<DateTime<Utc>> {
    if let Ok(ms) = raw.parse::<i64>() {
        return Utc
            .timestamp_millis_opt(ms)
            .single()
            .ok_or_else(|| ApiError::field(field, "epoch milliseconds out of range"));
    }
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::field(field, "must be RFC 3339 or epoch milliseconds"))
}

fn time_range(from: Option<&str>, to: Option<&str>) -> ApiResult<(DateTime<Utc>, DateTime<Utc>)> {
    let to = to
        .map(|t| parse_time("to", t))
        .transpose()?
        .unwrap_or_else(Utc::now);
    let from = from
        .map(|t| parse_time("from", t))
        .transpose()?
        .unwrap_or(to - chrono::Duration::hours(24));
    if from > to {
        return Err(ApiError::field("from", "must not be after `to`"));
    }
    Ok((from, to))
}

/// Parse `30s`, `5m`, `1h`, `1d` into seconds.
fn parse_bucket(raw: &str) -> ApiResult<i64> {
    let err = || ApiError::field("bucket", "must look like 30s, 5m, 1h or 1d");
    let (num, unit) = raw.split_at(raw.len().checked_sub(1).ok_or_else(err)?);
    let n: i64 = num.parse().map_err(|_| err())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(err()),
    };
    if !(1..=31 * 86_400).contains(&secs) {
        return Err(err());
    }
    Ok(secs)
}

/// The opaque page cursor: the keys of the last row of the page.
fn encode_cursor(t1: DateTime<Utc>, t2: DateTime<Utc>) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}:{}",
        t1.timestamp_micros(),
        t2.timestamp_micros()
    ))
}

fn decode_cursor(raw: &str) -> ApiResult<(DateTime<Utc>, DateTime<Utc>)> {
    let err = || ApiError::field("cursor", "not a cursor this API issued");
    let text =
        String::from_utf8(URL_SAFE_NO_PAD.decode(raw).map_err(|_| err())?).map_err(|_| err())?;
    let (a, b) = text.split_once(':').ok_or_else(err)?;
    let micros = |s: &str| {
        s.parse::<i64>()
            .ok()
            .and_then(|m| Utc.timestamp_micros(m).single())
            .ok_or_else(err)
    };
    Ok((micros(a)?, micros(b)?))
}

/// One fix of a history page as the API renders it: the stored row (read with the shared
/// [`PositionRow`]) without its tenant, device and attributes.
#[derive(Debug, serde::Serialize)]
struct HistoryFix<'a> {
    fix_time: &'a DateTime<Utc>,
    received_at: &'a DateTime<Utc>,
    lat: f64,
    lon: f64,
    altitude_m: Option<f64>,
    speed_mps: Option<f64>,
    heading_deg: Option<f64>,
    accuracy_m: Option<f64>,
    battery_pct: Option<f64>,
    satellites: Option<i16>,
    hdop: Option<f64>,
    protocol: &'a str,
}

impl<'a> From<&'a PositionRow> for HistoryFix<'a> {
    fn from(row: &'a PositionRow) -> Self {
        Self {
            fix_time: &row.fix_time,
            received_at: &row.received_at,
            lat: row.lat,
            lon: row.lon,
            altitude_m: row.altitude_m,
            speed_mps: row.speed_mps,
            heading_deg: row.heading_deg,
            accuracy_m: row.accuracy_m,
            battery_pct: row.battery_pct,
            satellites: row.satellites,
            hdop: row.hdop,
            protocol: &row.protocol,
        }
    }
}

impl HistoryFix<'_> {
    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    fn geojson_point(&self) -> serde_json::Value {
        let mut props = self.json();
        if let Some(map) = props.as_object_mut() {
            map.remove("lat");
            map.remove("lon");
        }
        serde_json::json!({
            "type": "Feature",
            "geometry": { "type": "Point", "coordinates": [self.lon, self.lat] },
            "properties": props,
        })
    }

    fn gpx(&self, out: &mut String) {
        let _ = write!(out, "<trkpt lat=\"{}\" lon=\"{}\">", self.lat, self.lon);
        if let Some(alt) = self.altitude_m {
            let _ = write!(out, "<ele>{alt}</ele>");
        }
        let _ = write!(
            out,
            "<time>{}</time>",
            self.fix_time
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        if let Some(sat) = self.satellites {
            let _ = write!(out, "<sat>{sat}</sat>");
        }
        if let Some(hdop) = self.hdop {
            let _ = write!(out, "<hdop>{hdop}</hdop>");
        }
        out.push_str("</trkpt>\n");
    }

    fn csv(&self, out: &mut String) {
        fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
            v.map(|v| v.to_string()).unwrap_or_default()
        }
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            self.fix_time
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            self.received_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            self.lat,
            self.lon,
            opt(self.altitude_m),
            opt(self.speed_mps),
            opt(self.heading_deg),
            opt(self.accuracy_m),
            opt(self.battery_pct),
            opt(self.satellites),
            opt(self.hdop),
            self.protocol,
        );
    }
}

const CSV_HEADER: &str =
    "fix_time,received_at,lat,lon,altitude_m,speed_mps,heading_deg,accuracy_m,battery_pct,satellites,hdop,protocol\n";

/// The parts of a history query after validation.
struct Plan {
    device: Uuid,
    tenant: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
    after: Option<(DateTime<Utc>, DateTime<Utc>)>,
    by_received: bool,
}

impl Plan {
    /// WHERE clause and ORDER BY for the page, binding $1 device, $2 tenant, $3 from, $4 to,
    /// $5/$6 the cursor keys.
    fn clauses(&self) -> (String, &'static str) {
        let (time_col, order) = if self.by_received {
            ("received_at", "received_at, fix_time")
        } else {
            ("fix_time", "fix_time")
        };
        let mut filter =
            format!("device_id = $1 AND tenant_id = $2 AND {time_col} >= $3 AND {time_col} <= $4");
        if self.after.is_some() {
            filter.push_str(if self.by_received {
                " AND (received_at, fix_time) > ($5, $6)"
            } else {
                " AND fix_time > $6"
            });
        }
        (filter, order)
    }

    fn bind<'q, O>(
        &self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        let query = query
            .bind(self.device)
            .bind(self.tenant)
            .bind(self.from)
            .bind(self.to);
        match self.after {
            Some((a, b)) => query.bind(a).bind(b),
            None => query,
        }
    }

    /// The cursor of the next page, if there is one: the keys of the page's last row, when a
    /// row follows it.
    async fn next_cursor(&self, pool: &sqlx::PgPool) -> ApiResult<Option<String>> {
        let (filter, order) = self.clauses();
        let sql = format!(
            "SELECT received_at, fix_time FROM positions WHERE {filter} ORDER BY {order} OFFSET {} LIMIT 2",
            self.limit - 1
        );
        let rows: Vec<(DateTime<Utc>, DateTime<Utc>)> =
            self.bind(sqlx::query_as(&sql)).fetch_all(pool).await?;
        Ok((rows.len() == 2).then(|| {
            let (received, fix) = rows[0];
            encode_cursor(received, fix)
        }))
    }
}

/// `GET /v1/devices/{id}/positions`.
pub(crate) async fn device_positions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<Response> {
    caller.require(Permission::PositionsRead)?;
    let device = parse_id(&id)?;
    let format = negotiate(query.format.as_deref(), &headers)?;
    if format != Format::Json {
        caller.require(Permission::PositionsExport)?;
    }
    caller.require_device(&state.pool, device).await?;
    let (from, to) = time_range(query.from.as_deref(), query.to.as_deref())?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let by_received = match query.as_of.as_deref() {
        None | Some("fix") => false,
        Some("received") => true,
        Some(_) => return Err(ApiError::field("as_of", "must be fix or received")),
    };
    let simplify = query.simplify;
    if simplify.is_some_and(|e| !e.is_finite() || !(0.0..=100_000.0).contains(&e)) {
        return Err(ApiError::field(
            "simplify",
            "must be metres between 0 and 100000",
        ));
    }
    let bucket = query.bucket.as_deref().map(parse_bucket).transpose()?;
    let line = match query.geometry.as_deref() {
        None | Some("points") => false,
        Some("line") => true,
        Some(_) => return Err(ApiError::field("geometry", "must be points or line")),
    };
    let plan = Plan {
        device,
        tenant: caller.tenant(),
        from,
        to,
        limit,
        after: query.cursor.as_deref().map(decode_cursor).transpose()?,
        by_received,
    };
    let next = plan.next_cursor(&state.pool).await?;
    audit_caller(
        &state.pool,
        &caller,
        "positions.read",
        "device",
        device,
        serde_json::json!({ "from": from, "to": to, "format": format!("{format:?}").to_lowercase() }),
    )
    .await;

    let (filter, order) = plan.clauses();
    let sql = match bucket {
        // One row per bucket: the first fix in it.
        Some(secs) => format!(
            "SELECT {COLUMNS} FROM (
               SELECT DISTINCT ON (date_bin(make_interval(secs => {secs}), fix_time, TIMESTAMPTZ 'epoch'))
                      {COLUMNS}
               FROM (SELECT * FROM positions WHERE {filter} ORDER BY {order} LIMIT {limit}) page
               ORDER BY date_bin(make_interval(secs => {secs}), fix_time, TIMESTAMPTZ 'epoch'), fix_time
             ) b ORDER BY fix_time"
        ),
        None => format!(
            "SELECT {COLUMNS} FROM positions WHERE {filter} ORDER BY {order} LIMIT {limit}"
        ),
    };

    let mut response = if simplify.is_some() || line {
        // These need the whole page at once (bounded by `limit`).
        let mut rows: Vec<PositionRow> = plan
            .bind(sqlx::query_as(&sql))
            .fetch_all(&state.pool)
            .await?;
        if let Some(epsilon) = simplify {
            let points: Vec<(f64, f64)> = rows.iter().map(|r| (r.lat, r.lon)).collect();
            let keep = simplify_indices(&points, epsilon);
            let mut keep = keep.into_iter().peekable();
            rows = rows
                .into_iter()
                .enumerate()
                .filter(|(i, _)| keep.next_if_eq(i).is_some())
                .map(|(_, r)| r)
                .collect();
        }
        let body = render_all(format, device, &rows, line, next.as_deref());
        (StatusCode::OK, body).into_response()
    } else {
        stream_rows(state.pool.clone(), sql, plan, format, device, next.clone())
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Some(cursor) = next.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert("x-next-cursor", cursor);
    }
    Ok(response)
}

fn prologue(format: Format, device: Uuid) -> String {
    match format {
        Format::Json => format!("{{\"device_id\":\"{device}\",\"positions\":["),
        Format::GeoJson => "{\"type\":\"FeatureCollection\",\"features\":[".to_owned(),
        Format::Gpx => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<gpx version=\"1.1\" creator=\"gps-telemetry\" \
             xmlns=\"http://www.topografix.com/GPX/1/1\">\n<trk><name>{device}</name><trkseg>\n"
        ),
        Format::Csv => CSV_HEADER.to_owned(),
    }
}

fn epilogue(format: Format, next: Option<&str>) -> String {
    let next = serde_json::to_string(&next).unwrap_or_else(|_| "null".into());
    match format {
        Format::Json => format!("],\"next_cursor\":{next}}}"),
        Format::GeoJson => format!("],\"next_cursor\":{next}}}"),
        Format::Gpx => "</trkseg></trk>\n</gpx>\n".to_owned(),
        Format::Csv => String::new(),
    }
}

fn render_row(format: Format, row: &PositionRow, first: bool, out: &mut String) {
    let row = HistoryFix::from(row);
    match format {
        Format::Json | Format::GeoJson => {
            if !first {
                out.push(',');
            }
            if format == Format::Json {
                // Straight from the row (same keys as `json()`): no `Value` tree per row, which
                // is most of the cost of a day of history.
                match serde_json::to_string(&row) {
                    Ok(text) => out.push_str(&text),
                    Err(_) => out.push_str(&row.json().to_string()),
                }
            } else {
                out.push_str(&row.geojson_point().to_string());
            }
        }
        Format::Gpx => row.gpx(out),
        Format::Csv => row.csv(out),
    }
}

fn render_all(
    format: Format,
    device: Uuid,
    rows: &[PositionRow],
    line: bool,
    next: Option<&str>,
) -> String {
    let mut out = prologue(format, device);
    if line && format == Format::GeoJson {
        let coords: Vec<[f64; 2]> = rows.iter().map(|r| [r.lon, r.lat]).collect();
        let feature = serde_json::json!({
            "type": "Feature",
            "geometry": { "type": "LineString", "coordinates": coords },
            "properties": {
                "device_id": device,
                "from": rows.first().map(|r| r.fix_time),
                "to": rows.last().map(|r| r.fix_time),
                "fixes": rows.len(),
            },
        });
        out.push_str(&feature.to_string());
    } else {
        for (i, row) in rows.iter().enumerate() {
            render_row(format, row, i == 0, &mut out);
        }
    }
    out.push_str(&epilogue(format, next));
    out
}

/// Stream the page from the database to the client in chunks, never holding it whole.
fn stream_rows(
    pool: sqlx::PgPool,
    sql: String,
    plan: Plan,
    format: Format,
    device: Uuid,
    next: Option<String>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(async move {
        let mut buffer = prologue(format, device);
        let mut rows = plan
            .bind(sqlx::query_as::<_, PositionRow>(&sql))
            .fetch(&pool);
        let mut first = true;
        loop {
            match rows.try_next().await {
                Ok(Some(row)) => {
                    render_row(format, &row, first, &mut buffer);
                    first = false;
                    if buffer.len() >= 64 * 1024 {
                        let chunk = Bytes::from(std::mem::take(&mut buffer));
                        if tx.send(Ok(chunk)).await.is_err() {
                            return; // client went away
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "history stream failed");
                    let _ = tx
                        .send(Err(std::io::Error::other("history stream failed")))
                        .await;
                    return;
                }
            }
        }
        buffer.push_str(&epilogue(format, next.as_deref()));
        let _ = tx.send(Ok(Bytes::from(buffer))).await;
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).into_response()
}

/// One device's last known position, with its uid.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LatestRow {
    uid: String,
    #[sqlx(flatten)]
    position: PositionRow,
}

/// A [`LatestRow`] as the API renders it.
#[derive(serde::Serialize)]
struct LatestFix<'a> {
    device_id: &'a Uuid,
    uid: &'a str,
    fix_time: &'a DateTime<Utc>,
    received_at: &'a DateTime<Utc>,
    lat: f64,
    lon: f64,
    speed_mps: Option<f64>,
    heading_deg: Option<f64>,
    accuracy_m: Option<f64>,
    battery_pct: Option<f64>,
}

impl serde::Serialize for LatestRow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let p = &self.position;
        LatestFix {
            device_id: &p.device_id,
            uid: &self.uid,
            fix_time: &p.fix_time,
            received_at: &p.received_at,
            lat: p.lat,
            lon: p.lon,
            speed_mps: p.speed_mps,
            heading_deg: p.heading_deg,
            accuracy_m: p.accuracy_m,
            battery_pct: p.battery_pct,
        }
        .serialize(serializer)
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct LatestQuery {
    group: Option<String>,
    bbox: Option<String>,
}

/// Parse `minLon,minLat,maxLon,maxLat` by the one [`BBox`] rule: `minLon > maxLon` crosses the
/// antimeridian, as on fanout's live side.
pub fn parse_bbox(raw: &str) -> ApiResult<BBox> {
    raw.parse().map_err(|e| {
        ApiError::field(
            "bbox",
            format!("must be minLon,minLat,maxLon,maxLat in degrees: {e}"),
        )
    })
}

/// The device ids the caller may see, as a filter: `None` means every device of the tenant.
async fn visible_filter(state: &AppState, caller: &Caller) -> ApiResult<Option<Vec<Uuid>>> {
    Ok(match visibility(&state.pool, &caller.principal).await? {
        Visibility::AllOfTenant(_) => None,
        Visibility::Only(ids) => Some(ids.into_iter().collect()),
    })
}

/// `GET /v1/positions/latest?group&bbox`: the last known position of each visible device.
pub(crate) async fn latest(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<LatestQuery>,
) -> ApiResult<Json<LatestResponse>> {
    caller.require(Permission::PositionsRead)?;
    let bbox = query.bbox.as_deref().map(parse_bbox).transpose()?;
    let group = match query.group.as_deref() {
        Some(raw) => {
            let id = parse_id(raw)?;
            let ours: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM groups WHERE id = $1 AND tenant_id = $2)",
            )
            .bind(id)
            .bind(caller.tenant())
            .fetch_one(&state.pool)
            .await?;
            if !ours {
                return Err(ApiError::NotFound);
            }
            Some(id)
        }
        None => None,
    };
    let visible = visible_filter(&state, &caller).await?;
    let in_bbox = bbox_condition("lp.lat", "lp.lon", "$4");
    let columns = columns_of("lp");
    let positions: Vec<LatestRow> =
        sqlx::query_as(&format!(
            "SELECT {columns}, d.uid
             FROM last_positions lp JOIN devices d ON d.id = lp.device_id AND d.tenant_id = $1
             WHERE lp.tenant_id = $1
               AND ($2::uuid[] IS NULL OR lp.device_id = ANY($2))
               AND ($3::uuid IS NULL OR EXISTS (SELECT 1 FROM group_devices gd WHERE gd.group_id = $3 AND gd.device_id = lp.device_id))
               AND ($4::float8[] IS NULL OR {in_bbox})
             ORDER BY d.uid COLLATE \"C\"",
        ))
        .bind(caller.tenant())
        .bind(visible)
        .bind(group)
        .bind(bbox.as_ref().map(bbox_param))
        .fetch_all(&state.pool)
        .await?;
    audit_caller(
        &state.pool,
        &caller,
        "positions.latest",
        "tenant",
        caller.tenant(),
        serde_json::json!({ "count": positions.len() }),
    )
    .await;
    // Serialized straight from the rows: a `serde_json::Value` tree of 10,000 objects costs more
    // than the query itself.
    Ok(Json(LatestResponse { positions }))
}

/// The body of `GET /v1/positions/latest`.
#[derive(Debug, serde::Serialize)]
pub(crate) struct LatestResponse {
    positions: Vec<LatestRow>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AreaQuery {
    bbox: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/positions?bbox&from&to&limit`: every visible fix inside a box and a time range.
pub(crate) async fn area(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AreaQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(Permission::PositionsRead)?;
    let bbox = parse_bbox(
        query
            .bbox
            .as_deref()
            .ok_or_else(|| ApiError::field("bbox", "is required"))?,
    )?;
    let (from, to) = time_range(query.from.as_deref(), query.to.as_deref())?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 10000"));
    }
    let visible = visible_filter(&state, &caller).await?;
    let in_bbox = bbox_condition("lat", "lon", "$4");
    let rows: Vec<(Uuid, DateTime<Utc>, f64, f64, Option<f64>)> = sqlx::query_as(&format!(
        "SELECT device_id, fix_time, lat, lon, speed_mps FROM positions
         WHERE tenant_id = $1 AND fix_time >= $2 AND fix_time <= $3
           AND {in_bbox}
           AND ($5::uuid[] IS NULL OR device_id = ANY($5))
         ORDER BY fix_time, device_id LIMIT $6",
    ))
    .bind(caller.tenant())
    .bind(from)
    .bind(to)
    .bind(bbox_param(&bbox))
    .bind(visible)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let positions: Vec<_> = rows
        .into_iter()
        .map(|(device, fix_time, lat, lon, speed)| {
            serde_json::json!({ "device_id": device, "fix_time": fix_time, "lat": lat, "lon": lon, "speed_mps": speed })
        })
        .collect();
    audit_caller(
        &state.pool,
        &caller,
        "positions.area",
        "tenant",
        caller.tenant(),
        serde_json::json!({ "bbox": bbox, "from": from, "to": to }),
    )
    .await;
    Ok(Json(serde_json::json!({ "positions": positions })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct SummaryQuery {
    from: Option<String>,
    to: Option<String>,
    /// Seconds of stillness or silence that split trips (default 300).
    idle_gap: Option<f64>,
    /// Speed below which the device counts as still, m/s (default 0.5).
    moving_speed: Option<f64>,
}

/// `GET /v1/devices/{id}/summary`.
pub(crate) async fn summary(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<SummaryQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(Permission::PositionsRead)?;
    let device = parse_id(&id)?;
    caller.require_device(&state.pool, device).await?;
    let (from, to) = time_range(query.from.as_deref(), query.to.as_deref())?;
    let idle_gap = query.idle_gap.unwrap_or(300.0);
    if !idle_gap.is_finite() || !(1.0..=86_400.0).contains(&idle_gap) {
        return Err(ApiError::field(
            "idle_gap",
            "must be seconds between 1 and 86400",
        ));
    }
    let moving = query.moving_speed.unwrap_or(0.5);
    if !moving.is_finite() || !(0.0..=100.0).contains(&moving) {
        return Err(ApiError::field(
            "moving_speed",
            "must be m/s between 0 and 100",
        ));
    }
    let points: Vec<TrackPoint> = sqlx::query_as::<_, (DateTime<Utc>, f64, f64, Option<f64>)>(
        "SELECT fix_time, lat, lon, speed_mps FROM positions
         WHERE device_id = $1 AND tenant_id = $2 AND fix_time >= $3 AND fix_time <= $4 ORDER BY fix_time",
    )
    .bind(device)
    .bind(caller.tenant())
    .bind(from)
    .bind(to)
    .fetch(&state.pool)
    .map_ok(|(t, lat, lon, speed)| TrackPoint { t_ms: t.timestamp_millis(), lat, lon, speed_mps: speed })
    .try_collect()
    .await?;
    let summary = summarize(&points, idle_gap, moving);
    audit_caller(
        &state.pool,
        &caller,
        "positions.summary",
        "device",
        device,
        serde_json::json!({ "from": from, "to": to }),
    )
    .await;
    Ok(Json(serde_json::json!({
        "device_id": device, "from": from, "to": to, "summary": summary,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let a = Utc.timestamp_micros(1_700_000_000_123_456).unwrap();
        let b = Utc.timestamp_micros(1_700_000_001_000_000).unwrap();
        assert_eq!(decode_cursor(&encode_cursor(a, b)).unwrap(), (a, b));
        assert!(decode_cursor("!!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("x:y")).is_err());
    }

    #[test]
    fn buckets_and_bboxes_parse() {
        assert_eq!(parse_bucket("30s").unwrap(), 30);
        assert_eq!(parse_bucket("5m").unwrap(), 300);
        assert_eq!(parse_bucket("1d").unwrap(), 86_400);
        assert!(parse_bucket("0s").is_err());
        assert!(parse_bucket("h").is_err());
        assert!(parse_bucket("").is_err());
        assert_eq!(
            parse_bbox("13,52,14,53").unwrap().to_array(),
            [13.0, 52.0, 14.0, 53.0]
        );
        assert!(
            parse_bbox("179,52,-179,53").unwrap().crosses_antimeridian(),
            "minLon > maxLon crosses the antimeridian"
        );
        assert!(parse_bbox("1,53,2,52").is_err(), "minLat > maxLat");
        assert!(parse_bbox("NaN,1,2,3").is_err());
        assert!(parse_bbox("1,2,3").is_err());
    }

    fn stored_row() -> PositionRow {
        let at = |ms| Utc.timestamp_millis_opt(ms).unwrap();
        PositionRow {
            tenant_id: Uuid::from_u128(1),
            device_id: Uuid::from_u128(2),
            fix_time: at(1_700_000_000_123),
            received_at: at(1_700_000_000_500),
            lat: 52.5,
            lon: 13.4,
            altitude_m: Some(34.0),
            speed_mps: Some(1.5),
            heading_deg: None,
            accuracy_m: Some(4.0),
            battery_pct: None,
            satellites: Some(9),
            hdop: Some(0.9),
            protocol: "osmand".into(),
            attributes: Some(serde_json::json!({ "charge": true })),
        }
    }

    #[test]
    fn history_and_latest_rows_render_their_documented_fields_in_order() {
        let row = stored_row();
        assert_eq!(
            serde_json::to_string(&HistoryFix::from(&row)).unwrap(),
            "{\"fix_time\":\"2023-11-14T22:13:20.123Z\",\"received_at\":\"2023-11-14T22:13:20.500Z\",\
             \"lat\":52.5,\"lon\":13.4,\"altitude_m\":34.0,\"speed_mps\":1.5,\"heading_deg\":null,\
             \"accuracy_m\":4.0,\"battery_pct\":null,\"satellites\":9,\"hdop\":0.9,\"protocol\":\"osmand\"}"
        );
        let latest = LatestRow {
            uid: "358240051111110".into(),
            position: row,
        };
        assert_eq!(
            serde_json::to_string(&latest).unwrap(),
            "{\"device_id\":\"00000000-0000-0000-0000-000000000002\",\"uid\":\"358240051111110\",\
             \"fix_time\":\"2023-11-14T22:13:20.123Z\",\"received_at\":\"2023-11-14T22:13:20.500Z\",\
             \"lat\":52.5,\"lon\":13.4,\"speed_mps\":1.5,\"heading_deg\":null,\"accuracy_m\":4.0,\
             \"battery_pct\":null}"
        );
    }

    #[test]
    fn times_accept_rfc3339_and_epoch_ms() {
        assert_eq!(
            parse_time("from", "1700000000000").unwrap().timestamp(),
            1_700_000_000
        );
        assert_eq!(
            parse_time("from", "2023-11-14T22:13:20Z")
                .unwrap()
                .timestamp(),
            1_700_000_000
        );
        assert!(parse_time("from", "yesterday").is_err());
    }
}
