//! History: a device's positions (JSON, GeoJSON, GPX, CSV; keyset pagination; streamed;
//! simplification and time-bucket downsampling; by fix time or receive time), latest positions,
//! area queries and the per-device summary. Every query is scoped by the caller's tenant and the
//! devices its role may see; every read lands in the audit log.
//!
//! Every read is bounded, whoever asks:
//! - query parameters go through one set of parsers ([`parse_time`], [`parse_duration`], the
//!   number parsers) with checked arithmetic over a fixed time domain: a bad value is a `400`
//!   naming its parameter, never a panic, a wrapped number or a database error;
//! - the time range of each kind of query is capped (`HISTORY_MAX_RANGE_DAYS`,
//!   `AREA_MAX_RANGE_DAYS`, `SUMMARY_MAX_RANGE_DAYS`), a `400` on `from` naming the cap;
//! - a streamed page is read in short keyset-paged queries ([`PAGE_ROWS`] rows each) into a
//!   small bounded buffer: no pool connection ever waits on a client's reading speed, and a
//!   client that reads nothing for `EXPORT_IDLE_TIMEOUT_SECS` has its export aborted;
//! - each tenant runs at most `EXPORTS_PER_TENANT` position reads and summaries at once on an
//!   instance ([`ExportSlots`]; `429` with `Retry-After` beyond);
//! - the summary is a fold over keyset pages of the range's fixes, read in order (memory does
//!   not grow with the range); simplification runs off the async workers with a bounded amount
//!   of work;
//! - a bucketed read is a loose index scan: one index probe per bucket, not every row of the
//!   range read and dropped.

use crate::app::{audit_caller, ApiQuery, AppState, Caller};
use crate::config::Limits;
use crate::error::{ApiError, ApiResult};
use crate::routes::parse_id;
use crate::summary::{simplify_indices, Summarizer, TrackPoint};
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
use gps_store::positions::{track_columns_of, PositionRow, TRACK_COLUMNS};
use gps_store::status::{joined_status_columns, JoinedStatus};
use gps_store::visibility::visibility;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use uuid::Uuid;

/// Largest page.
pub const MAX_LIMIT: i64 = 100_000;
/// Page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 1_000;
/// Largest page of an area query.
pub const AREA_MAX_LIMIT: i64 = 10_000;
/// Rows one database query of a streamed page reads; the connection goes back to the pool
/// between these reads, whatever the client does. Each read has a fixed cost: pages of 5,000
/// made a day of 1 Hz history ~35 % slower than one query, pages of 20,000 ~15 %; two pages
/// (the one rendering, the one read ahead) of 20,000 rows are a few MiB per export.
pub const PAGE_ROWS: i64 = 20_000;
/// Rendered bytes per chunk handed to the socket.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks buffered between the database reader and the socket, per export.
const CHUNKS_BUFFERED: usize = 4;
/// `Retry-After` of a refused export: a slot frees when any export of the tenant ends.
const EXPORT_RETRY_AFTER_SECS: u64 = 5;
/// The range when `from` is not given: the 24 h before `to`.
const DEFAULT_SPAN: chrono::Duration = chrono::Duration::hours(24);
/// The time domain of `from`, `to` and cursors, epoch ms: 0001-01-01T00:00:00Z through
/// 9999-12-31T23:59:59.999Z. RFC 3339's years, well inside chrono's and PostgreSQL's ranges, so
/// that no arithmetic on a time can overflow and the database never sees an out-of-range value.
const MIN_TIME_MS: i64 = -62_135_596_800_000;
const MAX_TIME_MS: i64 = 253_402_300_799_999;
/// The longest bucket, seconds (31 days).
const MAX_BUCKET_SECS: i64 = 31 * 86_400;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct HistoryQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    format: Option<String>,
    simplify: Option<String>,
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

fn parse_format(raw: &str) -> ApiResult<Format> {
    match raw {
        "json" => Ok(Format::Json),
        "geojson" => Ok(Format::GeoJson),
        "gpx" => Ok(Format::Gpx),
        "csv" => Ok(Format::Csv),
        _ => Err(ApiError::field(
            "format",
            "must be json, geojson, gpx or csv",
        )),
    }
}

fn negotiate(format: Option<&str>, headers: &HeaderMap) -> ApiResult<Format> {
    if let Some(f) = format {
        return parse_format(f);
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

/// A time inside the domain ([`MIN_TIME_MS`]..=[`MAX_TIME_MS`]), or `None`.
fn in_domain(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    (MIN_TIME_MS..=MAX_TIME_MS)
        .contains(&t.timestamp_millis())
        .then_some(t)
}

/// Parse RFC 3339 or epoch milliseconds, inside the time domain (years 0001 to 9999).
pub(crate) fn parse_time(field: &'static str, raw: &str) -> ApiResult<DateTime<Utc>> {
    let err = || {
        ApiError::field(
            field,
            "must be RFC 3339 or epoch milliseconds, between 0001-01-01 and 9999-12-31",
        )
    };
    let parsed = match raw.parse::<i64>() {
        Ok(ms) if (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms) => DateTime::from_timestamp_millis(ms),
        Ok(_) => None,
        Err(_) => DateTime::parse_from_rfc3339(raw)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
    };
    parsed.and_then(in_domain).ok_or_else(err)
}

/// `from` and `to` (either may be missing: `to` defaults to `now`, `from` to 24 h before `to`),
/// with `from <= to` and `to - from <= max`, the cap of the query kind `what`. The cap is
/// reported on `from`, the bound a caller moves to narrow the range.
pub(crate) fn time_range(
    from: Option<&str>,
    to: Option<&str>,
    now: DateTime<Utc>,
    max: chrono::Duration,
    what: &str,
) -> ApiResult<(DateTime<Utc>, DateTime<Utc>)> {
    let to = match to {
        Some(raw) => parse_time("to", raw)?,
        None => now,
    };
    let from = match from {
        Some(raw) => parse_time("from", raw)?,
        // Checked: `to` may be the first instant of the domain.
        None => to
            .checked_sub_signed(DEFAULT_SPAN)
            .and_then(in_domain)
            .unwrap_or(to),
    };
    if from > to {
        return Err(ApiError::field("from", "must not be after `to`"));
    }
    if to.signed_duration_since(from) > max {
        return Err(ApiError::field(
            "from",
            format!(
                "the range from `from` to `to` is at most {} days for {what} (the {what} range cap); narrow it or page through it",
                max.num_days()
            ),
        ));
    }
    Ok((from, to))
}

/// Parse a duration: a whole number and a unit, `s`, `m`, `h` or `d` (`30s`, `5m`, `1h`,
/// `1d`), into seconds between 1 and `max_secs`. Checked arithmetic: nothing wraps.
pub(crate) fn parse_duration(field: &'static str, raw: &str, max_secs: i64) -> ApiResult<i64> {
    let err = || {
        ApiError::field(
            field,
            format!("must look like 30s, 5m, 1h or 1d, between 1s and {max_secs}s"),
        )
    };
    let unit_secs: i64 = match raw.as_bytes().last() {
        Some(b's') => 1,
        Some(b'm') => 60,
        Some(b'h') => 3_600,
        Some(b'd') => 86_400,
        _ => return Err(err()),
    };
    // The last byte is ASCII, so this slice ends on a character boundary.
    let digits = &raw[..raw.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let secs = digits
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_secs))
        .ok_or_else(err)?;
    if !(1..=max_secs).contains(&secs) {
        return Err(err());
    }
    Ok(secs)
}

/// An integer parameter in `range`.
fn parse_int(
    field: &'static str,
    raw: &str,
    range: std::ops::RangeInclusive<i64>,
) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            ApiError::field(
                field,
                format!(
                    "must be a whole number between {} and {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

/// A finite number parameter in `range`, `unit` naming what it counts.
fn parse_number(
    field: &'static str,
    raw: &str,
    range: std::ops::RangeInclusive<f64>,
    unit: &str,
) -> ApiResult<f64> {
    raw.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && range.contains(n))
        .ok_or_else(|| {
            ApiError::field(
                field,
                format!(
                    "must be {unit} between {} and {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

/// A history request's parameters after validation (the format is negotiated apart, with the
/// `Accept` header, before the device is checked).
#[derive(Debug)]
struct HistoryParams {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
    after: Option<(DateTime<Utc>, DateTime<Utc>)>,
    by_received: bool,
    simplify: Option<f64>,
    bucket: Option<i64>,
    line: bool,
}

impl HistoryQuery {
    /// Validate every parameter but `format`: pure, so that it can be fuzzed.
    fn parse(&self, now: DateTime<Utc>, limits: &Limits) -> ApiResult<HistoryParams> {
        let (from, to) = time_range(
            self.from.as_deref(),
            self.to.as_deref(),
            now,
            limits.history_max_range,
            "history",
        )?;
        let limit = match self.limit.as_deref() {
            Some(raw) => parse_int("limit", raw, 1..=MAX_LIMIT)?,
            None => DEFAULT_LIMIT,
        };
        let by_received = match self.as_of.as_deref() {
            None | Some("fix") => false,
            Some("received") => true,
            Some(_) => return Err(ApiError::field("as_of", "must be fix or received")),
        };
        let simplify = self
            .simplify
            .as_deref()
            .map(|raw| parse_number("simplify", raw, 0.0..=100_000.0, "metres"))
            .transpose()?;
        let bucket = self
            .bucket
            .as_deref()
            .map(|raw| parse_duration("bucket", raw, MAX_BUCKET_SECS))
            .transpose()?;
        if bucket.is_some() && by_received {
            // Buckets are by fix time; a page in receive order has no first fix per bucket.
            return Err(ApiError::field(
                "bucket",
                "buckets are by fix time: not with as_of=received",
            ));
        }
        let line = match self.geometry.as_deref() {
            None | Some("points") => false,
            Some("line") => true,
            Some(_) => return Err(ApiError::field("geometry", "must be points or line")),
        };
        let after = self.cursor.as_deref().map(decode_cursor).transpose()?;
        Ok(HistoryParams {
            from,
            to,
            limit,
            after,
            by_received,
            simplify,
            bucket,
            line,
        })
    }
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
            .and_then(in_domain)
            .ok_or_else(err)
    };
    Ok((micros(a)?, micros(b)?))
}

/// One fix of a history page as the API renders it: the stored row (read with the shared
/// [`PositionRow`]) without its tenant, device and attributes. A fix the device called invalid
/// carries `"valid": false` (JSON, GeoJSON) or `<fix>none</fix>` (GPX); valid fixes say nothing.
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
    #[serde(skip_serializing_if = "is_true")]
    valid: bool,
}

fn is_true(value: &bool) -> bool {
    *value
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
            valid: row.valid,
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
        if !self.valid {
            out.push_str("<fix>none</fix>");
        }
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

/// The rows a history request reads: one device of one tenant in a time range, ordered by
/// fix time or by receive time, with keyset pages after a cursor; with a bucket, only the first
/// fix of each bucket.
#[derive(Debug, Clone, Copy)]
struct Plan {
    device: Uuid,
    tenant: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    by_received: bool,
    /// Bucket length, seconds (only by fix time).
    bucket: Option<i64>,
}

impl Plan {
    /// WHERE clause and ORDER BY, binding $1 device, $2 tenant, $3 from, $4 to, and when
    /// `after` is set $5/$6 the keys (received_at, fix_time) of the last row already read.
    fn clauses(&self, after: bool) -> (String, &'static str) {
        let (time_col, order) = if self.by_received {
            ("received_at", "received_at, fix_time")
        } else {
            ("fix_time", "fix_time")
        };
        let mut filter =
            format!("device_id = $1 AND tenant_id = $2 AND {time_col} >= $3 AND {time_col} <= $4");
        if after {
            filter.push_str(if self.by_received {
                " AND (received_at, fix_time) > ($5, $6)"
            } else {
                " AND fix_time > $6"
            });
        }
        (filter, order)
    }

    /// The statement selecting `columns` of the plan's rows after the cursor (if `after`),
    /// in order, ending with `tail` (`LIMIT`, `OFFSET`); its parameters are bound by
    /// [`Plan::bind`].
    ///
    /// With a bucket it is a loose index scan: a recursive query that reads the first fix of
    /// the range, then jumps to the first fix at or after the next bucket boundary, one
    /// primary-key probe per bucket (`(device_id, fix_time)`). A month in hourly buckets is 720
    /// probes, not 259,200 rows read and dropped; `tail` counts buckets. $3 is the start (the
    /// bucket after the cursor's), $5 the bucket length; the recursive query yields its rows in
    /// the order it finds them, ascending, so the `LIMIT` stops it early. The probe repeats the
    /// bound `fix_time >= $3`, which its own bound implies, so that the planner prunes the
    /// partitions outside the range: planning the probe against every partition of the year
    /// cost 50–200 ms a statement, against the range's 3–9 ms.
    fn select(&self, after: bool, columns: &str, tail: &str) -> String {
        if self.bucket.is_none() {
            let (filter, order) = self.clauses(after);
            return format!(
                "SELECT {columns} FROM positions WHERE {filter} ORDER BY {order} {tail}"
            );
        }
        format!(
            "WITH RECURSIVE firsts AS (
                 (SELECT {TRACK_COLUMNS} FROM positions
                  WHERE device_id = $1 AND tenant_id = $2 AND fix_time >= $3 AND fix_time <= $4
                  ORDER BY fix_time LIMIT 1)
                 UNION ALL
                 SELECT following.* FROM firsts CROSS JOIN LATERAL (
                     SELECT {TRACK_COLUMNS} FROM positions
                     WHERE device_id = $1 AND tenant_id = $2 AND fix_time >= $3 AND fix_time <= $4
                       AND fix_time >= date_bin($5, firsts.fix_time, TIMESTAMPTZ 'epoch') + $5
                     ORDER BY fix_time LIMIT 1) following
             )
             SELECT {columns} FROM firsts {tail}"
        )
    }

    fn bind<'q, O>(
        &self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
        after: Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        if let Some(secs) = self.bucket {
            // The page after a cursor starts at the bucket after the cursor's row: a bucket is
            // never split over two pages.
            let start = match after {
                None => self.from,
                Some((_, fix)) => next_bucket(fix, secs)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
                    .max(self.from),
            };
            let length = sqlx::postgres::types::PgInterval {
                months: 0,
                days: 0,
                // At most MAX_BUCKET_SECS: no overflow.
                microseconds: secs * 1_000_000,
            };
            return query
                .bind(self.device)
                .bind(self.tenant)
                .bind(start)
                .bind(self.to)
                .bind(length);
        }
        let query = query
            .bind(self.device)
            .bind(self.tenant)
            .bind(self.from)
            .bind(self.to);
        match after {
            Some((a, b)) => query.bind(a).bind(b),
            None => query,
        }
    }

    /// The cursor of the page of `limit` rows after `after`, if a row follows it: the keys of
    /// the page's last row.
    async fn next_cursor(
        &self,
        pool: &sqlx::PgPool,
        after: Option<(DateTime<Utc>, DateTime<Utc>)>,
        limit: i64,
    ) -> ApiResult<Option<String>> {
        let sql = self.select(
            after.is_some(),
            "received_at, fix_time",
            &format!("OFFSET {} LIMIT 2", limit - 1),
        );
        let rows: Vec<(DateTime<Utc>, DateTime<Utc>)> = self
            .bind(sqlx::query_as(&sql), after)
            .fetch_all(pool)
            .await?;
        Ok((rows.len() == 2).then(|| {
            let (received, fix) = rows[0];
            encode_cursor(received, fix)
        }))
    }

    /// At most `rows` rows after `after`, in one short query: the connection is back in the
    /// pool when this returns.
    async fn page(
        &self,
        pool: &sqlx::PgPool,
        after: Option<(DateTime<Utc>, DateTime<Utc>)>,
        rows: i64,
    ) -> Result<Vec<PositionRow>, sqlx::Error> {
        let sql = self.select(after.is_some(), TRACK_COLUMNS, &format!("LIMIT {rows}"));
        self.bind(sqlx::query_as(&sql), after).fetch_all(pool).await
    }
}

/// The start of the bucket of `secs` seconds that follows the one `t` falls in (buckets
/// aligned on the Unix epoch, as PostgreSQL's `date_bin(.., TIMESTAMPTZ 'epoch')`); `None`
/// beyond the representable times.
fn next_bucket(t: DateTime<Utc>, secs: i64) -> Option<DateTime<Utc>> {
    let micros = secs.checked_mul(1_000_000)?;
    let start = t
        .timestamp_micros()
        .div_euclid(micros)
        .checked_add(1)?
        .checked_mul(micros)?;
    DateTime::from_timestamp_micros(start)
}

/// Per-tenant slots of concurrent history reads (position pages and exports, summaries) on
/// this instance, and the share of the pool they may use at once. Kept in memory, not in
/// Redis: what they protect (this instance's pool, memory and workers) is per instance, and a
/// slot can never outlive its request.
#[derive(Debug, Clone)]
pub struct ExportSlots {
    per_tenant: usize,
    in_use: Arc<Mutex<HashMap<Uuid, usize>>>,
    /// Pool connections history reads may hold at once, all tenants together: the rest of the
    /// pool stays free for every other route (login included), however many exports run.
    readers: Arc<tokio::sync::Semaphore>,
}

impl ExportSlots {
    /// At most `per_tenant` reads per tenant at once, and at most `connections` of their
    /// queries at once in all (at least 1).
    pub fn new(per_tenant: usize, connections: usize) -> Self {
        Self {
            per_tenant,
            in_use: Arc::default(),
            readers: Arc::new(tokio::sync::Semaphore::new(connections.max(1))),
        }
    }

    /// A slot for `tenant`, held until the returned guard drops; `429` when all are taken.
    fn acquire(&self, tenant: Uuid) -> ApiResult<ExportSlot> {
        let mut in_use = self.in_use.lock().unwrap_or_else(PoisonError::into_inner);
        let count = in_use.entry(tenant).or_insert(0);
        if *count >= self.per_tenant {
            return Err(ApiError::TooManyExports {
                limit: self.per_tenant,
                retry_after: EXPORT_RETRY_AFTER_SECS,
            });
        }
        *count += 1;
        Ok(ExportSlot {
            in_use: self.in_use.clone(),
            readers: self.readers.clone(),
            tenant,
        })
    }
}

/// One taken slot of [`ExportSlots`]; dropping it frees the slot.
#[derive(Debug)]
struct ExportSlot {
    in_use: Arc<Mutex<HashMap<Uuid, usize>>>,
    readers: Arc<tokio::sync::Semaphore>,
    tenant: Uuid,
}

impl ExportSlot {
    /// Wait for a turn to query: hold the permit for the duration of one query.
    /// The permit is owned, so a page read spawned on another task can hold it too.
    fn reader(
        &self,
    ) -> impl std::future::Future<Output = Option<tokio::sync::OwnedSemaphorePermit>> + Send + 'static
    {
        let readers = self.readers.clone();
        // `None` only if the semaphore were closed, which it never is.
        async move { readers.acquire_owned().await.ok() }
    }
}

impl Drop for ExportSlot {
    fn drop(&mut self) {
        let mut in_use = self.in_use.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = in_use.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                in_use.remove(&self.tenant);
            }
        }
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
    let params = query.parse(Utc::now(), &state.settings.limits)?;
    let slot = state.exports.acquire(caller.tenant())?;
    let plan = Plan {
        device,
        tenant: caller.tenant(),
        from: params.from,
        to: params.to,
        by_received: params.by_received,
        bucket: params.bucket,
    };
    let reader = slot.reader().await;
    let next = plan
        .next_cursor(&state.pool, params.after, params.limit)
        .await?;
    drop(reader);
    audit_caller(
        &state.pool,
        &caller,
        "positions.read",
        "device",
        device,
        serde_json::json!({ "from": params.from, "to": params.to, "format": format!("{format:?}").to_lowercase() }),
    )
    .await;

    let mut response = if params.simplify.is_some() || params.line {
        // These need the whole page at once (bounded by `limit`): one query, then the CPU work
        // off the async workers.
        let reader = slot.reader().await;
        let mut rows = plan.page(&state.pool, params.after, params.limit).await?;
        drop(reader);
        let (simplify, line, cursor) = (params.simplify, params.line, next.clone());
        let body = tokio::task::spawn_blocking(move || {
            if let Some(epsilon) = simplify {
                let points: Vec<(f64, f64)> = rows.iter().map(|r| (r.lat, r.lon)).collect();
                let mut keep = simplify_indices(&points, epsilon).into_iter().peekable();
                rows = rows
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| keep.next_if_eq(i).is_some())
                    .map(|(_, r)| r)
                    .collect();
            }
            render_all(format, device, &rows, line, cursor.as_deref())
        })
        .await
        .map_err(|e| ApiError::Internal(format!("history rendering task: {e}")))?;
        drop(slot);
        (StatusCode::OK, body).into_response()
    } else {
        Export {
            pool: state.pool.clone(),
            plan,
            after: params.after,
            limit: params.limit,
            format,
            device,
            next: next.clone(),
            idle_timeout: state.settings.limits.export_idle_timeout,
            slot,
        }
        .stream()
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

/// A streamed page: read from the database in keyset pages of [`PAGE_ROWS`] rows (a short
/// query each, the connection released in between), rendered into chunks of [`CHUNK_BYTES`],
/// handed to the socket through a buffer of [`CHUNKS_BUFFERED`] chunks.
struct Export {
    pool: sqlx::PgPool,
    plan: Plan,
    after: Option<(DateTime<Utc>, DateTime<Utc>)>,
    limit: i64,
    format: Format,
    device: Uuid,
    next: Option<String>,
    idle_timeout: Duration,
    /// Held for as long as the export runs.
    slot: ExportSlot,
}

/// Why an export stopped before its end.
#[derive(Debug, thiserror::Error)]
enum ExportEnd {
    /// The client closed the connection.
    #[error("client gone")]
    ClientGone,
    /// The client read nothing for the idle timeout.
    #[error("client read nothing for {0:?}")]
    Stalled(Duration),
    /// A page query failed.
    #[error("page query failed: {0}")]
    Database(sqlx::Error),
    /// A page read ended without an answer (its task panicked).
    #[error("page read failed: {0}")]
    Failed(String),
}

impl Export {
    /// The response: headers now, the body as the pages are read. A failure after the headers
    /// aborts the body (the client sees a broken transfer, never a short "complete" one).
    fn stream(self) -> Response {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHUNKS_BUFFERED);
        let failed = Arc::new(AtomicBool::new(false));
        let failed_writer = failed.clone();
        tokio::spawn(async move {
            let device = self.device;
            match self.run(&tx).await {
                Ok(()) | Err(ExportEnd::ClientGone) => {}
                Err(ExportEnd::Stalled(idle)) => {
                    failed_writer.store(true, Ordering::Release);
                    tracing::info!(
                        %device,
                        idle_secs = idle.as_secs(),
                        "history export aborted: client not reading"
                    );
                }
                Err(failure) => {
                    failed_writer.store(true, Ordering::Release);
                    tracing::error!(%device, error = %failure, "history export failed");
                }
            }
            // `tx` drops here: the body ends after the buffered chunks.
        });
        // The buffered chunks first; then, if the export failed, an error that aborts the body.
        let body = futures::stream::unfold(Some(rx), move |rx| {
            let failed = failed.clone();
            async move {
                let mut rx = rx?;
                match rx.recv().await {
                    Some(chunk) => Some((Ok(chunk), Some(rx))),
                    None if failed.load(Ordering::Acquire) => {
                        Some((Err(std::io::Error::other("history export aborted")), None))
                    }
                    None => None,
                }
            }
        });
        Body::from_stream(body).into_response()
    }

    async fn run(self, tx: &tokio::sync::mpsc::Sender<Bytes>) -> Result<(), ExportEnd> {
        let mut out = prologue(self.format, self.device);
        let mut first = true;
        let mut remaining = self.limit;
        let mut want = remaining.min(PAGE_ROWS);
        let mut pending = Some(self.read_page(self.after, want));
        while let Some(page) = pending.take() {
            let rows = page.await.map_err(|e| ExportEnd::Failed(e.to_string()))??;
            remaining -= rows.len() as i64;
            // The next page is read (on another worker, the database working meanwhile) while
            // this one renders and drains to the socket: an export costs about one page of
            // latency, not one per page.
            if let Some(last) = rows.last() {
                if rows.len() as i64 == want && remaining > 0 {
                    want = remaining.min(PAGE_ROWS);
                    pending = Some(self.read_page(Some((last.received_at, last.fix_time)), want));
                }
            }
            for row in &rows {
                render_row(self.format, row, first, &mut out);
                first = false;
                if out.len() >= CHUNK_BYTES {
                    self.send(tx, std::mem::take(&mut out)).await?;
                }
            }
        }
        out.push_str(&epilogue(self.format, self.next.as_deref()));
        self.send(tx, out).await
    }

    /// Start reading the keyset page of at most `rows` rows after `after`: a reader permit
    /// (and a pool connection) is held only for the query.
    fn read_page(
        &self,
        after: Option<(DateTime<Utc>, DateTime<Utc>)>,
        rows: i64,
    ) -> tokio::task::JoinHandle<Result<Vec<PositionRow>, ExportEnd>> {
        let (pool, plan, reader) = (self.pool.clone(), self.plan, self.slot.reader());
        tokio::spawn(async move {
            let _reader = reader.await;
            plan.page(&pool, after, rows)
                .await
                .map_err(ExportEnd::Database)
        })
    }

    /// Hand a chunk to the socket, waiting at most the idle timeout for room in the buffer.
    async fn send(
        &self,
        tx: &tokio::sync::mpsc::Sender<Bytes>,
        chunk: String,
    ) -> Result<(), ExportEnd> {
        match tokio::time::timeout(self.idle_timeout, tx.send(Bytes::from(chunk))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ExportEnd::ClientGone),
            Err(_) => Err(ExportEnd::Stalled(self.idle_timeout)),
        }
    }
}

/// One device's last known position, with its uid and its status (`routes::status`).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LatestRow {
    uid: String,
    #[sqlx(flatten)]
    position: PositionRow,
    #[sqlx(flatten)]
    status: JoinedStatus,
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
    status: &'a JoinedStatus,
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
            status: &self.status,
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
    let columns = track_columns_of("lp");
    let status = joined_status_columns("ds");
    let positions: Vec<LatestRow> =
        sqlx::query_as(&format!(
            "SELECT lp.device_id, {columns}, d.uid, {status}
             FROM last_positions lp JOIN devices d ON d.id = lp.device_id AND d.tenant_id = $1
             LEFT JOIN device_status ds ON ds.device_id = lp.device_id AND ds.tenant_id = $1
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

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AreaQuery {
    bbox: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
}

/// An area query's parameters after validation.
#[derive(Debug)]
struct AreaParams {
    bbox: BBox,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
}

impl AreaQuery {
    /// Validate every parameter: pure, so that it can be fuzzed.
    fn parse(&self, now: DateTime<Utc>, limits: &Limits) -> ApiResult<AreaParams> {
        let bbox = parse_bbox(
            self.bbox
                .as_deref()
                .ok_or_else(|| ApiError::field("bbox", "is required"))?,
        )?;
        let (from, to) = time_range(
            self.from.as_deref(),
            self.to.as_deref(),
            now,
            limits.area_max_range,
            "area queries",
        )?;
        let limit = match self.limit.as_deref() {
            Some(raw) => parse_int("limit", raw, 1..=AREA_MAX_LIMIT)?,
            None => DEFAULT_LIMIT,
        };
        Ok(AreaParams {
            bbox,
            from,
            to,
            limit,
        })
    }
}

/// `GET /v1/positions?bbox&from&to&limit`: every visible fix inside a box and a time range.
pub(crate) async fn area(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AreaQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(Permission::PositionsRead)?;
    let AreaParams {
        bbox,
        from,
        to,
        limit,
    } = query.parse(Utc::now(), &state.settings.limits)?;
    let visible = visible_filter(&state, &caller).await?;
    let in_bbox = bbox_condition("lat", "lon", "$4");
    let rows: Vec<(Uuid, DateTime<Utc>, f64, f64, Option<f64>)> = sqlx::query_as(&format!(
        "SELECT device_id, fix_time, lat, lon, speed_mps FROM positions
         WHERE tenant_id = $1 AND fix_time >= $2 AND fix_time <= $3 AND valid
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

#[derive(Debug, Default, Deserialize)]
pub(crate) struct SummaryQuery {
    from: Option<String>,
    to: Option<String>,
    /// Seconds of stillness or silence that split trips (default 300).
    idle_gap: Option<String>,
    /// Speed below which the device counts as still, m/s (default 0.5).
    moving_speed: Option<String>,
}

/// A summary's parameters after validation.
#[derive(Debug)]
struct SummaryParams {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    idle_gap_s: f64,
    moving_mps: f64,
}

impl SummaryQuery {
    /// Validate every parameter: pure, so that it can be fuzzed.
    fn parse(&self, now: DateTime<Utc>, limits: &Limits) -> ApiResult<SummaryParams> {
        let (from, to) = time_range(
            self.from.as_deref(),
            self.to.as_deref(),
            now,
            limits.summary_max_range,
            "summaries",
        )?;
        let idle_gap_s = match self.idle_gap.as_deref() {
            Some(raw) => parse_number("idle_gap", raw, 1.0..=86_400.0, "seconds")?,
            None => 300.0,
        };
        let moving_mps = match self.moving_speed.as_deref() {
            Some(raw) => parse_number("moving_speed", raw, 0.0..=100.0, "m/s")?,
            None => 0.5,
        };
        Ok(SummaryParams {
            from,
            to,
            idle_gap_s,
            moving_mps,
        })
    }
}

/// `GET /v1/devices/{id}/summary`: a fold over the range's fixes, read in keyset pages
/// ([`fold_track`]; memory does not grow with the range), and the range's event counts per type
/// when the caller may read events.
pub(crate) async fn summary(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<SummaryQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(Permission::PositionsRead)?;
    let device = parse_id(&id)?;
    caller.require_device(&state.pool, device).await?;
    let params = query.parse(Utc::now(), &state.settings.limits)?;
    let slot = state.exports.acquire(caller.tenant())?;
    let mut fold = Summarizer::new(params.idle_gap_s, params.moving_mps);
    fold_track(
        &state.pool,
        &slot,
        (device, caller.tenant()),
        (params.from, params.to),
        &mut fold,
    )
    .await?;
    drop(slot);
    let mut summary = fold.finish();
    if caller.principal.allows(Permission::EventsRead) {
        let counts = crate::routes::events::count_by_type(
            &state.pool,
            (device, caller.tenant()),
            (params.from, params.to),
        )
        .await?;
        summary.event_counts = Some(counts);
    }
    audit_caller(
        &state.pool,
        &caller,
        "positions.summary",
        "device",
        device,
        serde_json::json!({ "from": params.from, "to": params.to }),
    )
    .await;
    Ok(Json(serde_json::json!({
        "device_id": device, "from": params.from, "to": params.to, "summary": summary,
    })))
}

/// Fixes one query of a summary reads: a keyset page. Its rows are four columns, folded as they
/// arrive, so the page size costs no memory; it bounds how long one query holds its connection
/// (~100 ms) and keeps the `LIMIT` that holds the planner to the ordered index scan.
const SUMMARY_PAGE_ROWS: i64 = 100_000;

/// Fold the valid fixes of `device` (of `tenant`) between `from` and `to` into `fold`, in
/// fix-time order, in keyset pages of [`SUMMARY_PAGE_ROWS`]. The `LIMIT` keeps each page on the
/// ordered primary-key scan whatever the table size: one query over a month without it turned,
/// once the partitions held many devices, into bitmap heap scans and a sort of the whole month
/// before the first row (docs/performance.md, "History at scale"). The pool connection goes back
/// between pages.
async fn fold_track(
    pool: &sqlx::PgPool,
    slot: &ExportSlot,
    (device, tenant): (Uuid, Uuid),
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    fold: &mut Summarizer,
) -> ApiResult<()> {
    let mut after: Option<DateTime<Utc>> = None;
    loop {
        let (lower, start) = match after {
            None => (">=", from),
            Some(last) => (">", last),
        };
        let reader = slot.reader().await;
        let sql = format!(
            "SELECT fix_time, lat, lon, speed_mps FROM positions
             WHERE device_id = $1 AND tenant_id = $2 AND fix_time {lower} $3 AND fix_time <= $4
               AND valid
             ORDER BY fix_time LIMIT {SUMMARY_PAGE_ROWS}"
        );
        let mut rows = sqlx::query_as::<_, (DateTime<Utc>, f64, f64, Option<f64>)>(&sql)
            .bind(device)
            .bind(tenant)
            .bind(start)
            .bind(to)
            .fetch(pool);
        let mut read = 0;
        while let Some((t, lat, lon, speed_mps)) = rows.try_next().await? {
            fold.push(TrackPoint {
                t_ms: t.timestamp_millis(),
                lat,
                lon,
                speed_mps,
            });
            read += 1;
            after = Some(t);
        }
        drop(rows);
        drop(reader);
        if read < SUMMARY_PAGE_ROWS {
            return Ok(());
        }
    }
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
        assert_eq!(
            parse_duration("bucket", "30s", MAX_BUCKET_SECS).unwrap(),
            30
        );
        assert_eq!(
            parse_duration("bucket", "5m", MAX_BUCKET_SECS).unwrap(),
            300
        );
        assert_eq!(
            parse_duration("bucket", "1d", MAX_BUCKET_SECS).unwrap(),
            86_400
        );
        assert!(parse_duration("bucket", "0s", MAX_BUCKET_SECS).is_err());
        assert!(parse_duration("bucket", "h", MAX_BUCKET_SECS).is_err());
        assert!(parse_duration("bucket", "", MAX_BUCKET_SECS).is_err());
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
            valid: true,
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
        let mut invalid = row.clone();
        invalid.valid = false;
        let invalid = serde_json::to_value(HistoryFix::from(&invalid)).unwrap();
        assert_eq!(invalid["valid"], false, "only an invalid fix says so");
        let mut gpx = String::new();
        HistoryFix::from(&stored_row()).gpx(&mut gpx);
        assert!(!gpx.contains("<fix>"));
        let mut gpx_invalid = String::new();
        let mut invalid_row = stored_row();
        invalid_row.valid = false;
        HistoryFix::from(&invalid_row).gpx(&mut gpx_invalid);
        assert!(
            gpx_invalid.contains("</time><fix>none</fix><sat>"),
            "{gpx_invalid}"
        );
        let latest = LatestRow {
            uid: "358240051111110".into(),
            position: row,
            status: JoinedStatus::default(),
        };
        assert_eq!(
            serde_json::to_string(&latest).unwrap(),
            "{\"device_id\":\"00000000-0000-0000-0000-000000000002\",\"uid\":\"358240051111110\",\
             \"fix_time\":\"2023-11-14T22:13:20.123Z\",\"received_at\":\"2023-11-14T22:13:20.500Z\",\
             \"lat\":52.5,\"lon\":13.4,\"speed_mps\":1.5,\"heading_deg\":null,\"accuracy_m\":4.0,\
             \"battery_pct\":null,\"status\":null}"
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

    fn error_field(result: ApiResult<impl std::fmt::Debug>) -> Option<String> {
        match result {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_000).unwrap()
    }

    #[test]
    fn the_reported_bad_parameters_are_400s_naming_their_field() {
        let limits = Limits::default();
        let history = |q: HistoryQuery| q.parse(now(), &limits);
        // A multi-byte last character used to split inside it (a panic: the connection dropped).
        for bucket in [
            "é",
            "1é",
            "ß",
            "144115188075855873d",
            "9223372036854775807s",
            "-1s",
        ] {
            let q = HistoryQuery {
                bucket: Some(bucket.into()),
                ..Default::default()
            };
            assert_eq!(
                error_field(history(q)).as_deref(),
                Some("bucket"),
                "{bucket}"
            );
        }
        // Near the minimum date: out of the time domain, or the default `from` before it.
        for to in [
            "-8334632851200001",
            "-9223372036854775808",
            "0000-01-01T00:00:00Z",
        ] {
            let q = HistoryQuery {
                to: Some(to.into()),
                ..Default::default()
            };
            assert_eq!(error_field(history(q)).as_deref(), Some("to"), "{to}");
        }
        let q = HistoryQuery {
            to: Some("0001-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        let p = history(q).expect("the first instant of the domain is a valid `to`");
        assert_eq!(
            p.from, p.to,
            "the default `from` is clamped into the domain"
        );
        let q = HistoryQuery {
            cursor: Some(encode_cursor(
                DateTime::<Utc>::MIN_UTC,
                DateTime::<Utc>::MIN_UTC,
            )),
            ..Default::default()
        };
        assert_eq!(error_field(history(q)).as_deref(), Some("cursor"));
        for (raw, field) in [("limit", "limit"), ("simplify", "simplify")] {
            let mut q = HistoryQuery::default();
            match raw {
                "limit" => q.limit = Some("1e3".into()),
                _ => q.simplify = Some("NaN".into()),
            }
            assert_eq!(error_field(history(q)).as_deref(), Some(field));
        }
    }

    #[test]
    fn ranges_are_capped_per_query_kind_naming_the_cap() {
        let limits = Limits::default();
        let day = 86_400_000_i64;
        let at = |days: i64| (1_700_000_000_000 - days * day).to_string();
        let history = HistoryQuery {
            from: Some(at(367)),
            to: Some(at(0)),
            ..Default::default()
        };
        let err = history.parse(now(), &limits).unwrap_err();
        assert!(
            err.to_string().contains("366 days") && err.to_string().contains("history"),
            "{err}"
        );
        assert_eq!(
            error_field(history.parse(now(), &limits)).as_deref(),
            Some("from")
        );
        let history = HistoryQuery {
            from: Some(at(366)),
            to: Some(at(0)),
            ..Default::default()
        };
        assert!(
            history.parse(now(), &limits).is_ok(),
            "the cap itself is allowed"
        );
        let area = AreaQuery {
            bbox: Some("13,52,14,53".into()),
            from: Some(at(8)),
            ..Default::default()
        };
        let err = area.parse(now(), &limits).unwrap_err().to_string();
        assert!(err.contains("7 days") && err.contains("area"), "{err}");
        let summary = SummaryQuery {
            from: Some(at(32)),
            ..Default::default()
        };
        let err = summary.parse(now(), &limits).unwrap_err().to_string();
        assert!(err.contains("31 days") && err.contains("summar"), "{err}");
        // Without `from`: the 24 h before `to`, within every cap.
        assert!(SummaryQuery::default().parse(now(), &limits).is_ok());
    }

    #[test]
    fn bucket_boundaries_follow_date_bin_from_the_epoch() {
        let at = |s: i64| Utc.timestamp_opt(s, 0).unwrap();
        let next: Vec<i64> = [0, 30, 59, 60, 61, 179, 180, -1, -60, -61]
            .into_iter()
            .map(|s| next_bucket(at(s), 60).unwrap().timestamp())
            .collect();
        assert_eq!(next, vec![60, 60, 60, 120, 120, 180, 240, 0, 0, -60]);
        let sub_second = Utc.timestamp_micros(59_999_999).unwrap();
        assert_eq!(next_bucket(sub_second, 60).unwrap().timestamp(), 60);
        // Beyond the representable times there is none (the page after such a cursor is empty).
        assert!(next_bucket(DateTime::<Utc>::MAX_UTC, MAX_BUCKET_SECS).is_none());
    }

    #[test]
    fn export_slots_are_per_tenant_and_freed_on_drop() {
        let slots = ExportSlots::new(2, 1);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let first = slots.acquire(a).unwrap();
        let _second = slots.acquire(a).unwrap();
        assert!(matches!(
            slots.acquire(a),
            Err(ApiError::TooManyExports { limit: 2, .. })
        ));
        let _other = slots.acquire(b).expect("another tenant has its own slots");
        drop(first);
        assert!(slots.acquire(a).is_ok());
    }

    mod fuzz {
        //! Every query parameter parser of history, area and summary, fed arbitrary text:
        //! never a panic, and every refusal a 400 naming one of the query's parameters.
        use super::*;
        use proptest::prelude::*;

        /// Arbitrary text, and text close to what the parsers accept.
        fn raw() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "[-+]?[0-9]{0,22}[smhdé]?",
                "[-+]?[0-9]{1,6}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[-+][0-9]{2}:[0-9]{2})",
                "[-+]?[0-9]*\\.?[0-9]*(e[-+]?[0-9]{1,4})?|NaN|inf|-inf",
                "[-0-9.,eE ]{0,40}",
                "[A-Za-z0-9_-]{0,40}",
            ]
        }

        fn check<T: std::fmt::Debug>(result: ApiResult<T>, fields: &[&str]) {
            match result {
                Ok(_) => {}
                Err(ApiError::BadRequest {
                    field: Some(field), ..
                }) if fields.contains(&field.as_str()) => {}
                Err(other) => panic!("not a 400 naming a parameter: {other:?}"),
            }
        }

        const HISTORY: [&str; 8] = [
            "from", "to", "limit", "cursor", "simplify", "bucket", "as_of", "geometry",
        ];

        fn slot<'a>(name: &str, q: &'a mut HistoryQuery) -> Option<&'a mut Option<String>> {
            Some(match name {
                "from" => &mut q.from,
                "to" => &mut q.to,
                "limit" => &mut q.limit,
                "cursor" => &mut q.cursor,
                "simplify" => &mut q.simplify,
                "bucket" => &mut q.bucket,
                "as_of" => &mut q.as_of,
                "geometry" => &mut q.geometry,
                _ => return None,
            })
        }

        /// A raw query string as axum reads it (`ApiQuery`: a rejection is a 400 by
        /// construction), then validated by the query's `parse`.
        fn raw_query<Q: serde::de::DeserializeOwned>(data: &[u8]) -> Option<Q> {
            let uri: axum::http::Uri = format!("/q?{}", gps_fuzz::as_query(data)).parse().ok()?;
            axum::extract::Query::<Q>::try_from_uri(&uri)
                .ok()
                .map(|q| q.0)
        }

        fn history_query(data: &[u8]) {
            if let Some(q) = raw_query::<HistoryQuery>(data) {
                check(q.parse(now(), &Limits::default()), &HISTORY);
                if let Some(format) = &q.format {
                    check(parse_format(format), &["format"]);
                }
            }
        }

        fn area_query(data: &[u8]) {
            if let Some(q) = raw_query::<AreaQuery>(data) {
                check(
                    q.parse(now(), &Limits::default()),
                    &["bbox", "from", "to", "limit"],
                );
            }
        }

        fn summary_query(data: &[u8]) {
            if let Some(q) = raw_query::<SummaryQuery>(data) {
                check(
                    q.parse(now(), &Limits::default()),
                    &["from", "to", "idle_gap", "moving_speed"],
                );
            }
        }

        fn latest_query(data: &[u8]) {
            if let Some(q) = raw_query::<LatestQuery>(data) {
                if let Some(bbox) = &q.bbox {
                    check(parse_bbox(bbox), &["bbox"]);
                }
                if let Some(group) = &q.group {
                    // A malformed id is an object that does not exist: 404, never a 5xx.
                    assert!(matches!(parse_id(group), Ok(_) | Err(ApiError::NotFound)));
                }
            }
        }

        /// Raw query strings from the kept corpus (`fuzz/corpus/query-*`), then mutated.
        #[test]
        fn raw_query_strings_from_the_corpus() {
            for (target, property) in [
                ("query-history", history_query as fn(&[u8])),
                ("query-area", area_query),
                ("query-summary", summary_query),
                ("query-latest", latest_query),
            ] {
                gps_fuzz::replay(target, property);
                gps_fuzz::fuzz(target, property);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn history_parameters(which in 0..HISTORY.len() + 1, value in raw(), other in raw()) {
                let mut q = HistoryQuery::default();
                if let Some(name) = HISTORY.get(which) {
                    *slot(name, &mut q).unwrap() = Some(value.clone());
                }
                // A second parameter at once, to reach the combinations (range, bucket + as_of).
                *slot(HISTORY[value.len() % HISTORY.len()], &mut q).unwrap() = Some(other);
                check(q.parse(now(), &Limits::default()), &HISTORY);
                check(parse_format(&value), &["format"]);
            }

            #[test]
            fn area_parameters(bbox in raw(), from in raw(), to in raw(), limit in raw(), mask in 0u8..16) {
                let pick = |bit: u8, v: String| (mask & bit != 0).then_some(v);
                let q = AreaQuery {
                    bbox: pick(1, bbox).or_else(|| Some("13,52,14,53".into())),
                    from: pick(2, from),
                    to: pick(4, to),
                    limit: pick(8, limit),
                };
                check(q.parse(now(), &Limits::default()), &["bbox", "from", "to", "limit"]);
            }

            #[test]
            fn summary_parameters(from in raw(), to in raw(), idle in raw(), moving in raw(), mask in 0u8..16) {
                let pick = |bit: u8, v: String| (mask & bit != 0).then_some(v);
                let q = SummaryQuery {
                    from: pick(1, from),
                    to: pick(2, to),
                    idle_gap: pick(4, idle),
                    moving_speed: pick(8, moving),
                };
                check(
                    q.parse(now(), &Limits::default()),
                    &["from", "to", "idle_gap", "moving_speed"],
                );
            }

            #[test]
            fn times_and_durations_alone(value in raw()) {
                check(parse_time("from", &value), &["from"]);
                check(parse_duration("bucket", &value, MAX_BUCKET_SECS), &["bucket"]);
                check(decode_cursor(&value), &["cursor"]);
                check(decode_cursor(&URL_SAFE_NO_PAD.encode(&value)), &["cursor"]);
            }
        }
    }
}
