//! Batch writes to PostgreSQL: one transaction per batch that stores the new rows of
//! `positions` (reporting which rows were new) and moves `last_positions` forward only (`WHERE EXCLUDED.fix_time > last_positions.fix_time`), so a late fix lands in history
//! without rewinding the live position.
//!
//! Two bulk paths, chosen by [`WriteMode`]:
//! - `copy`: binary `COPY` straight into `positions`, plus one small upsert of each device's
//!   newest fix into `last_positions`. A batch is nearly always all new (the in-memory dedupe
//!   took the redeliveries out), and a plain COPY costs PostgreSQL far less than an
//!   `INSERT .. ON CONFLICT` of the same rows. When the COPY meets a row that is already stored
//!   (a replay, a restart, a duplicate older than the dedupe cache), the transaction rolls back
//!   and the batch goes through a per-connection temporary staging table and
//!   `INSERT .. SELECT .. ON CONFLICT DO NOTHING` instead, and so do the batches of the next
//!   [`DIRECT_COPY_PAUSE`], since conflicts come in runs.
//! - `unnest`: one `INSERT .. SELECT FROM unnest(..)` with an array per column.
//!
//! Before a batch, the daily partitions of its days are created if missing (native
//! partitioning only; the known days are cached).

use crate::config::WriteMode;
use crate::dedupe::FixKey;
use crate::metrics::Metrics;
use chrono::{DateTime, NaiveDate, Utc};
use gps_domain::fix::{EpochMillis, Fix, Protocol};
use gps_runtime::db::StorageMode;
use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgPool};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The envelope fields every fix of one record shares.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvelopeMeta {
    /// Tenant id.
    pub tenant: Uuid,
    /// Device id.
    pub device: Uuid,
    /// The device's own identifier.
    pub uid: String,
    /// Protocol the fixes arrived over.
    pub proto: Protocol,
    /// Ingest receive time, UTC ms.
    pub rx: EpochMillis,
}

/// One fix to store, with its envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionRow {
    /// The envelope it came in.
    pub meta: Arc<EnvelopeMeta>,
    /// The fix.
    pub fix: Fix,
}

impl PositionRow {
    /// Its primary key in `positions`.
    pub fn key(&self) -> FixKey {
        (self.meta.device, self.fix.fix_time)
    }
}

/// The column list of `positions`, in table order (the staging table is `LIKE positions`).
const COLUMNS: &str = "tenant_id, device_id, fix_time, received_at, lat, lon, altitude_m, \
    speed_mps, heading_deg, accuracy_m, battery_pct, satellites, hdop, protocol, attributes";

/// `last_positions` moves only forward in fix time.
const UPSERT_LATEST: &str = "ON CONFLICT (device_id) DO UPDATE SET
        tenant_id = EXCLUDED.tenant_id, fix_time = EXCLUDED.fix_time,
        received_at = EXCLUDED.received_at, lat = EXCLUDED.lat, lon = EXCLUDED.lon,
        altitude_m = EXCLUDED.altitude_m, speed_mps = EXCLUDED.speed_mps,
        heading_deg = EXCLUDED.heading_deg, accuracy_m = EXCLUDED.accuracy_m,
        battery_pct = EXCLUDED.battery_pct, satellites = EXCLUDED.satellites,
        hdop = EXCLUDED.hdop, protocol = EXCLUDED.protocol, attributes = EXCLUDED.attributes,
        updated_at = now()
    WHERE EXCLUDED.fix_time > last_positions.fix_time";

fn copy_sql() -> String {
    format!(
        "WITH ins AS (
            INSERT INTO positions ({COLUMNS}) SELECT {COLUMNS} FROM positions_staging
            ON CONFLICT DO NOTHING RETURNING device_id, fix_time
        ), latest AS (
            INSERT INTO last_positions ({COLUMNS})
            SELECT DISTINCT ON (device_id) {COLUMNS} FROM positions_staging
            ORDER BY device_id, fix_time DESC
            {UPSERT_LATEST}
        )
        SELECT device_id, fix_time FROM ins"
    )
}

/// The rows of a [`Columns`] bound as `$1..$15`, as a query over them.
const UNNEST_ROWS: &str = "SELECT tenant_id, device_id, fix_time, received_at, lat, lon,
            altitude_m, speed_mps, heading_deg, accuracy_m, battery_pct, satellites, hdop,
            protocol, attributes::jsonb AS attributes
        FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::timestamptz[],
                    $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::float8[],
                    $10::float8[], $11::float8[], $12::int2[], $13::float8[], $14::text[],
                    $15::text[])
             AS r(tenant_id, device_id, fix_time, received_at, lat, lon, altitude_m,
                  speed_mps, heading_deg, accuracy_m, battery_pct, satellites, hdop, protocol,
                  attributes)";

/// The direct path's COPY: every column of `positions`, in table order.
fn direct_copy_sql() -> String {
    format!("COPY positions ({COLUMNS}) FROM STDIN (FORMAT binary)")
}

/// The direct path's `last_positions` upsert, from one row per device.
fn latest_sql() -> String {
    format!("INSERT INTO last_positions ({COLUMNS}) {UNNEST_ROWS} {UPSERT_LATEST}")
}

fn unnest_sql() -> String {
    format!(
        "WITH rows AS (
            {UNNEST_ROWS}
        ), ins AS (
            INSERT INTO positions ({COLUMNS}) SELECT {COLUMNS} FROM rows
            ON CONFLICT DO NOTHING RETURNING device_id, fix_time
        ), latest AS (
            INSERT INTO last_positions ({COLUMNS})
            SELECT DISTINCT ON (device_id) {COLUMNS} FROM rows
            ORDER BY device_id, fix_time DESC
            {UPSERT_LATEST}
        )
        SELECT device_id, fix_time FROM ins"
    )
}

/// How long the `copy` mode keeps to the staging path after a direct COPY met a stored row.
pub const DIRECT_COPY_PAUSE: Duration = Duration::from_secs(30);

/// Writes batches of positions; owns the cache of days known to have a partition and whether
/// the direct COPY is paused.
#[derive(Debug)]
pub struct Writer {
    pool: PgPool,
    mode: WriteMode,
    partitioned: bool,
    known_days: HashSet<i64>,
    metrics: Metrics,
    direct_paused_until: Option<Instant>,
    direct_copy_sql: String,
    latest_sql: String,
    copy_sql: String,
    unnest_sql: String,
}

const MS_PER_DAY: i64 = 86_400_000;

impl Writer {
    /// A writer on `pool`, for the storage path the migrations took.
    pub fn new(pool: PgPool, mode: WriteMode, storage: StorageMode, metrics: Metrics) -> Self {
        Self {
            pool,
            mode,
            partitioned: storage == StorageMode::Partitioned,
            known_days: HashSet::new(),
            metrics,
            direct_paused_until: None,
            direct_copy_sql: direct_copy_sql(),
            latest_sql: latest_sql(),
            copy_sql: copy_sql(),
            unnest_sql: unnest_sql(),
        }
    }

    /// Store `rows` (distinct keys) in one transaction; returns the keys that were new.
    pub async fn write(&mut self, rows: &[PositionRow]) -> Result<HashSet<FixKey>, sqlx::Error> {
        let result = self.write_once(rows).await;
        if result.is_err() {
            // A partition may have been dropped under us (retention); check again next time.
            self.known_days.clear();
        }
        result
    }

    async fn write_once(&mut self, rows: &[PositionRow]) -> Result<HashSet<FixKey>, sqlx::Error> {
        if rows.is_empty() {
            return Ok(HashSet::new());
        }
        let started = Instant::now();
        self.ensure_partitions(rows).await?;
        let direct = self.mode == WriteMode::Copy && self.direct_copy_allowed();
        let (path, inserted) = match self.mode {
            WriteMode::Copy if direct => match self.copy_direct(rows).await {
                Ok(()) => ("copy", rows.iter().map(PositionRow::key).collect()),
                Err(e) if is_unique_violation(&e) => {
                    tracing::debug!(
                        rows = rows.len(),
                        "direct copy met a stored row; staging path for a while"
                    );
                    self.direct_paused_until = Some(Instant::now() + DIRECT_COPY_PAUSE);
                    self.metrics.direct_copy_conflicts.inc();
                    ("copy_staged", self.copy_staged(rows).await?)
                }
                Err(e) => return Err(e),
            },
            WriteMode::Copy => ("copy_staged", self.copy_staged(rows).await?),
            WriteMode::Unnest => ("unnest", self.unnest(rows).await?),
        };
        self.metrics
            .write_seconds
            .with_label_values(&[path])
            .observe(started.elapsed().as_secs_f64());
        Ok(inserted)
    }

    fn direct_copy_allowed(&mut self) -> bool {
        match self.direct_paused_until {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                self.direct_paused_until = None;
                true
            }
            None => true,
        }
    }

    /// COPY every row into `positions` and upsert each device's newest into `last_positions`,
    /// in one transaction. Fails with a unique violation, and changes nothing, when any row is
    /// already stored.
    async fn copy_direct(&self, rows: &[PositionRow]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut copy = tx.copy_in_raw(&self.direct_copy_sql).await?;
        copy.send(encode_copy(rows)).await?;
        copy.finish().await?;
        let latest = newest_per_device(rows);
        sqlx::query_with(&self.latest_sql, Columns::of(&latest).into_arguments()?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// COPY into the staging table, then insert what is new; returns the new keys.
    async fn copy_staged(&self, rows: &[PositionRow]) -> Result<HashSet<FixKey>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Quiet the "already exists" notice; SET LOCAL ends with the transaction.
        // A &str with no arguments goes over the simple protocol: both statements in
        // one round trip.
        sqlx::Executor::execute(
            &mut *tx,
            "SET LOCAL client_min_messages = warning;
             CREATE TEMP TABLE IF NOT EXISTS positions_staging
                (LIKE positions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
        )
        .await?;
        let mut copy = tx
            .copy_in_raw("COPY positions_staging FROM STDIN (FORMAT binary)")
            .await?;
        copy.send(encode_copy(rows)).await?;
        copy.finish().await?;
        let inserted: Vec<(Uuid, DateTime<Utc>)> =
            sqlx::query_as(&self.copy_sql).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(keys_of(inserted))
    }

    /// One `INSERT .. SELECT FROM unnest(..)`; returns the new keys.
    async fn unnest(&self, rows: &[PositionRow]) -> Result<HashSet<FixKey>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let inserted: Vec<(Uuid, DateTime<Utc>)> =
            sqlx::query_as_with(&self.unnest_sql, Columns::of(rows).into_arguments()?)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(keys_of(inserted))
    }

    /// Create the daily partitions of the batch's days that are not known to exist. Runs in
    /// its own short transaction: the function serializes callers with an advisory lock, which
    /// must not be held for the length of a batch.
    async fn ensure_partitions(&mut self, rows: &[PositionRow]) -> Result<(), sqlx::Error> {
        if !self.partitioned {
            return Ok(());
        }
        let mut missing: Vec<i64> = rows
            .iter()
            .map(|r| r.fix.fix_time.div_euclid(MS_PER_DAY))
            .filter(|d| !self.known_days.contains(d))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        // Contiguous runs, so a few far-apart days do not create everything in between.
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for day in missing {
            match runs.last_mut() {
                Some((_, end)) if *end + 1 == day => *end = day,
                _ => runs.push((day, day)),
            }
        }
        for (from, to) in runs {
            let (Some(from_date), Some(to_date)) = (day_date(from), day_date(to)) else {
                continue;
            };
            let created: i32 = sqlx::query_scalar("SELECT gps_ensure_position_partitions($1, $2)")
                .bind(from_date)
                .bind(to_date)
                .fetch_one(&self.pool)
                .await?;
            if created > 0 {
                tracing::info!(from = %from_date, to = %to_date, created, "position partitions created");
                self.metrics
                    .partitions
                    .with_label_values(&["created"])
                    .inc_by(created as u64);
            }
            self.known_days.extend(from..=to);
        }
        Ok(())
    }

    /// Forget the known days (upkeep dropped some).
    pub fn forget_partitions(&mut self) {
        self.known_days.clear();
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("23505"))
}

fn keys_of(inserted: Vec<(Uuid, DateTime<Utc>)>) -> HashSet<FixKey> {
    inserted
        .into_iter()
        .map(|(device, t)| (device, t.timestamp_millis()))
        .collect()
}

/// Each device's row with the newest fix time (keys are distinct, so there are no ties).
pub fn newest_per_device(rows: &[PositionRow]) -> Vec<PositionRow> {
    let mut newest: HashMap<Uuid, &PositionRow> = HashMap::new();
    for row in rows {
        newest
            .entry(row.meta.device)
            .and_modify(|kept| {
                if row.fix.fix_time > kept.fix.fix_time {
                    *kept = row;
                }
            })
            .or_insert(row);
    }
    newest.into_values().cloned().collect()
}

fn day_date(day: i64) -> Option<NaiveDate> {
    DateTime::from_timestamp_millis(day.checked_mul(MS_PER_DAY)?).map(|t| t.date_naive())
}

fn ts(ms: EpochMillis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn attributes_json(fix: &Fix) -> Option<String> {
    (!fix.attributes.is_empty())
        .then(|| serde_json::to_string(&fix.attributes).expect("json values serialize"))
}

/// One array per column, for the UNNEST path.
pub struct Columns {
    tenant: Vec<Uuid>,
    device: Vec<Uuid>,
    fix_time: Vec<DateTime<Utc>>,
    received_at: Vec<DateTime<Utc>>,
    lat: Vec<f64>,
    lon: Vec<f64>,
    alt: Vec<Option<f64>>,
    speed: Vec<Option<f64>>,
    heading: Vec<Option<f64>>,
    accuracy: Vec<Option<f64>>,
    battery: Vec<Option<f64>>,
    satellites: Vec<Option<i16>>,
    hdop: Vec<Option<f64>>,
    protocol: Vec<&'static str>,
    attributes: Vec<Option<String>>,
}

impl Columns {
    /// The column arrays of `rows` (public for the benches).
    pub fn of(rows: &[PositionRow]) -> Self {
        let n = rows.len();
        let mut c = Self {
            tenant: Vec::with_capacity(n),
            device: Vec::with_capacity(n),
            fix_time: Vec::with_capacity(n),
            received_at: Vec::with_capacity(n),
            lat: Vec::with_capacity(n),
            lon: Vec::with_capacity(n),
            alt: Vec::with_capacity(n),
            speed: Vec::with_capacity(n),
            heading: Vec::with_capacity(n),
            accuracy: Vec::with_capacity(n),
            battery: Vec::with_capacity(n),
            satellites: Vec::with_capacity(n),
            hdop: Vec::with_capacity(n),
            protocol: Vec::with_capacity(n),
            attributes: Vec::with_capacity(n),
        };
        for row in rows {
            let f = &row.fix;
            c.tenant.push(row.meta.tenant);
            c.device.push(row.meta.device);
            c.fix_time.push(ts(f.fix_time));
            c.received_at.push(ts(row.meta.rx));
            c.lat.push(f.lat);
            c.lon.push(f.lon);
            c.alt.push(f.altitude_m);
            c.speed.push(f.speed_mps);
            c.heading.push(f.heading_deg);
            c.accuracy.push(f.accuracy_m);
            c.battery.push(f.battery_pct);
            c.satellites.push(f.satellites.map(satellites_i16));
            c.hdop.push(f.hdop);
            c.protocol.push(row.meta.proto.as_str());
            c.attributes.push(attributes_json(f));
        }
        c
    }

    /// The fifteen arrays as the arguments `$1..$15`, in `positions` column order.
    pub fn into_arguments(self) -> Result<PgArguments, sqlx::Error> {
        let mut args = PgArguments::default();
        let add = |result: Result<(), BoxDynError>| result.map_err(sqlx::Error::Encode);
        add(args.add(self.tenant))?;
        add(args.add(self.device))?;
        add(args.add(self.fix_time))?;
        add(args.add(self.received_at))?;
        add(args.add(self.lat))?;
        add(args.add(self.lon))?;
        add(args.add(self.alt))?;
        add(args.add(self.speed))?;
        add(args.add(self.heading))?;
        add(args.add(self.accuracy))?;
        add(args.add(self.battery))?;
        add(args.add(self.satellites))?;
        add(args.add(self.hdop))?;
        add(args.add(self.protocol))?;
        add(args.add(self.attributes))?;
        Ok(args)
    }
}

fn satellites_i16(n: u16) -> i16 {
    i16::try_from(n).unwrap_or(i16::MAX)
}

/// Milliseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MS: i64 = 946_684_800_000;

/// Rows in PostgreSQL's binary COPY format, in `positions` column order.
/// Format: <https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>
pub fn encode_copy(rows: &[PositionRow]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(19 + rows.len() * 200 + 2);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes()); // flags
    buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for row in rows {
        let f = &row.fix;
        buf.extend_from_slice(&15i16.to_be_bytes());
        put_uuid(&mut buf, row.meta.tenant);
        put_uuid(&mut buf, row.meta.device);
        put_ts(&mut buf, f.fix_time);
        put_ts(&mut buf, row.meta.rx);
        put_f64(&mut buf, Some(f.lat));
        put_f64(&mut buf, Some(f.lon));
        put_f64(&mut buf, f.altitude_m);
        put_f64(&mut buf, f.speed_mps);
        put_f64(&mut buf, f.heading_deg);
        put_f64(&mut buf, f.accuracy_m);
        put_f64(&mut buf, f.battery_pct);
        match f.satellites {
            Some(n) => {
                buf.extend_from_slice(&2i32.to_be_bytes());
                buf.extend_from_slice(&satellites_i16(n).to_be_bytes());
            }
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        put_f64(&mut buf, f.hdop);
        put_bytes(&mut buf, row.meta.proto.as_str().as_bytes());
        match attributes_json(f) {
            Some(json) => {
                // jsonb binary format: version byte 1, then the text.
                let len = i32::try_from(json.len() + 1).unwrap_or(i32::MAX);
                buf.extend_from_slice(&len.to_be_bytes());
                buf.push(1);
                buf.extend_from_slice(json.as_bytes());
            }
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    buf
}

fn put_uuid(buf: &mut Vec<u8>, id: Uuid) {
    buf.extend_from_slice(&16i32.to_be_bytes());
    buf.extend_from_slice(id.as_bytes());
}

fn put_ts(buf: &mut Vec<u8>, ms: EpochMillis) {
    let micros = ms.saturating_sub(PG_EPOCH_MS).saturating_mul(1000);
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&micros.to_be_bytes());
}

fn put_f64(buf: &mut Vec<u8>, value: Option<f64>) {
    match value {
        Some(v) => {
            buf.extend_from_slice(&8i32.to_be_bytes());
            buf.extend_from_slice(&v.to_be_bytes());
        }
        None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_encoding_has_header_rows_and_trailer() {
        let meta = Arc::new(EnvelopeMeta {
            tenant: Uuid::nil(),
            device: Uuid::nil(),
            uid: "d".into(),
            proto: Protocol::Udp,
            rx: PG_EPOCH_MS,
        });
        let mut fix = Fix::new(PG_EPOCH_MS + 1, 1.0, 2.0);
        fix.satellites = Some(7);
        let bytes = encode_copy(&[PositionRow { meta, fix }]);
        assert!(bytes.starts_with(b"PGCOPY\n\xff\r\n\0"));
        assert!(bytes.ends_with(&[0xff, 0xff]));
        // header 19, field count 2, two uuids 40, two timestamps 24, eleven more fields.
        let fix_time = &bytes[19 + 2 + 40 + 4..19 + 2 + 40 + 12];
        assert_eq!(i64::from_be_bytes(fix_time.try_into().unwrap()), 1000);
    }

    #[test]
    fn days_map_to_dates() {
        assert_eq!(day_date(0).unwrap().to_string(), "1970-01-01");
        assert_eq!(day_date(20_000).unwrap().to_string(), "2024-10-04");
        assert_eq!(day_date(i64::MAX), None);
    }
}
