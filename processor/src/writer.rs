//! Batch writes to PostgreSQL: one transaction per batch that stores the new rows of
//! `positions` (reporting which rows were new), moves `last_positions` forward only
//! (`WHERE EXCLUDED.fix_time > last_positions.fix_time`, and only with fixes the device called
//! valid), so a late or invalid fix lands in history without rewinding the live position, and
//! moves each device's `device_status` forward: its status and alarm from the batch's status
//! reports (only ever by a newer report, returning the rows that changed, for the live publish),
//! its `last_seen` from the batch's fixes. The batch's events (`crate::events::EventFold`: lock
//! the devices' event states, fold, insert the events with their webhook deliveries, upsert
//! the states) run in the same transaction on every path, so positions, statuses, events and
//! the state they were computed from commit together or not at all.
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
//! partitioning only; the known days are cached, and forgotten when upkeep reports dropped
//! partitions through [`PartitionDrops`]).
//!
//! The rows, their column list and their encodings are the shared codec of
//! `gps_store::positions`; this module owns only the statements and the transaction.

use crate::config::WriteMode;
use crate::events::{EventFold, EventsWritten};
use crate::metrics::Metrics;
use crate::plan::{Seen, StatusChange, Written};
use chrono::{DateTime, NaiveDate, Utc};
use gps_domain::fix::EpochMillis;
use gps_runtime::db::StorageMode;
use gps_store::positions::{
    copy_into, encode_copy, Columns, FixKey, StoredFix, COLUMNS, UNNEST_ROWS,
};
use gps_store::status::{StatusRow, STATUS_COLUMNS};
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// `last_positions` moves only forward in fix time: every column but the key is replaced by
/// the newer row's.
fn upsert_latest() -> String {
    let set: Vec<String> = gps_store::positions::column_names()
        .filter(|c| *c != "device_id")
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    format!(
        "ON CONFLICT (device_id) DO UPDATE SET {}, updated_at = now()
         WHERE EXCLUDED.fix_time > last_positions.fix_time",
        set.join(", ")
    )
}

/// Store the rows of relation `source` (a table, or a CTE that `with` defines, ending in
/// `, `): the new ones into `positions`, each device's newest into `last_positions`; select the
/// keys that were new.
fn store_from(with: &str, source: &str) -> String {
    format!(
        "WITH {with}ins AS (
            INSERT INTO positions ({COLUMNS}) SELECT {COLUMNS} FROM {source}
            ON CONFLICT DO NOTHING RETURNING device_id, fix_time
        ), latest AS (
            INSERT INTO last_positions ({COLUMNS})
            SELECT DISTINCT ON (device_id) {COLUMNS} FROM {source} WHERE valid
            ORDER BY device_id, fix_time DESC
            {}
        )
        SELECT device_id, fix_time FROM ins",
        upsert_latest()
    )
}

/// A status report is newer than the stored one (a device without one yet has `-infinity`).
const NEWER_STATUS: &str = "EXCLUDED.status_time > coalesce(s.status_time, '-infinity')";
/// An alarm is newer than the stored one; a report without an alarm (NULL) never is.
const NEWER_ALARM: &str = "EXCLUDED.alarm_time > coalesce(s.alarm_time, '-infinity')";

/// Apply each device's status change (`$1..$9`: device, tenant, report time, battery,
/// charging, motion, attributes, alarm, alarm time): the report's fields replace the stored
/// ones only when the report is newer, the alarm only when it is newer, each on its own, and
/// `last_seen` moves forward; return the rows that changed, as they are now.
fn upsert_statuses() -> String {
    let report = [
        "status_time",
        "battery_pct",
        "charging",
        "motion",
        "attributes",
    ]
    .map(|c| format!("{c} = CASE WHEN {NEWER_STATUS} THEN EXCLUDED.{c} ELSE s.{c} END"))
    .join(", ");
    let alarm = ["alarm", "alarm_time"]
        .map(|c| format!("{c} = CASE WHEN {NEWER_ALARM} THEN EXCLUDED.{c} ELSE s.{c} END"))
        .join(", ");
    format!(
        "INSERT INTO device_status AS s (device_id, tenant_id, last_seen, status_time, battery_pct,
             charging, motion, attributes, alarm, alarm_time)
         SELECT device_id, tenant_id, status_time, status_time, battery_pct, charging, motion,
             attributes, alarm, alarm_time
         FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::float8[], $5::bool[],
             $6::bool[], $7::text[]::jsonb[], $8::text[], $9::timestamptz[])
             AS r(device_id, tenant_id, status_time, battery_pct, charging, motion, attributes,
                  alarm, alarm_time)
         ON CONFLICT (device_id) DO UPDATE SET
             last_seen = greatest(s.last_seen, EXCLUDED.last_seen), {report}, {alarm},
             updated_at = now()
         WHERE {NEWER_STATUS} OR {NEWER_ALARM}
         RETURNING {STATUS_COLUMNS}"
    )
}

/// Move each device's `last_seen` forward to its newest stored fix (`$1..$3`: device, tenant,
/// time); a device heard from for the first time gets a row without a status.
const TOUCH_LAST_SEEN: &str = "INSERT INTO device_status AS s (device_id, tenant_id, last_seen)
     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[])
     ON CONFLICT (device_id) DO UPDATE SET last_seen = EXCLUDED.last_seen, updated_at = now()
     WHERE EXCLUDED.last_seen > s.last_seen";

/// Tells the writer that upkeep dropped partitions: it then forgets the days it knew to exist,
/// and creates them again if a batch needs them. Cheap to clone; shared by the writer and upkeep.
#[derive(Debug, Clone, Default)]
pub struct PartitionDrops(Arc<AtomicU64>);

impl PartitionDrops {
    /// Partitions were dropped.
    pub fn record(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// How long the `copy` mode keeps to the staging path after a direct COPY met a stored row.
pub const DIRECT_COPY_PAUSE: Duration = Duration::from_secs(30);

/// The writer's statements, built once.
#[derive(Debug)]
struct Statements {
    /// The direct path's COPY into `positions`.
    direct_copy: String,
    /// The direct path's `last_positions` upsert, from one row per device.
    latest: String,
    /// The staging path's COPY.
    staging_copy: String,
    /// The staging path's insert of what is new.
    from_staging: String,
    /// The `unnest` path.
    unnest: String,
    /// The `device_status` upsert of the batch's status changes.
    statuses: String,
}

impl Statements {
    fn new() -> Self {
        Self {
            direct_copy: copy_into("positions"),
            latest: format!(
                "INSERT INTO last_positions ({COLUMNS}) {UNNEST_ROWS} {}",
                upsert_latest()
            ),
            staging_copy: copy_into("positions_staging"),
            from_staging: store_from("", "positions_staging"),
            unnest: store_from(&format!("rows AS ({UNNEST_ROWS}), "), "rows"),
            statuses: upsert_statuses(),
        }
    }
}

/// Writes batches of positions; owns the cache of days known to have a partition and whether
/// the direct COPY is paused.
#[derive(Debug)]
pub struct Writer {
    pool: PgPool,
    mode: WriteMode,
    partitioned: bool,
    known_days: HashSet<i64>,
    /// Upkeep's drop count when `known_days` was last trusted.
    drops_seen: u64,
    drops: PartitionDrops,
    metrics: Metrics,
    direct_paused_until: Option<Instant>,
    sql: Statements,
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
            drops_seen: 0,
            drops: PartitionDrops::default(),
            metrics,
            direct_paused_until: None,
            sql: Statements::new(),
        }
    }

    /// The handle upkeep reports dropped partitions through.
    pub fn partition_drops(&self) -> PartitionDrops {
        self.drops.clone()
    }

    /// Store `rows` (distinct keys), apply `statuses` and move `last_seen` to `seen` in one
    /// transaction; returns the keys that were new and the status rows that changed.
    pub async fn write(
        &mut self,
        rows: &[StoredFix],
        statuses: &[StatusChange],
        seen: &[Seen],
    ) -> Result<Written, sqlx::Error> {
        self.write_with_events(rows, statuses, seen, None).await
    }

    /// [`Writer::write`], and run `events` (the batch's event fold) in the same transaction.
    pub async fn write_with_events(
        &mut self,
        rows: &[StoredFix],
        statuses: &[StatusChange],
        seen: &[Seen],
        events: Option<&EventFold<'_>>,
    ) -> Result<Written, sqlx::Error> {
        self.forget_dropped_days();
        let status = DeviceStatusWrite {
            statuses,
            seen,
            events,
        };
        let result = self.write_once(rows, &status).await;
        if result.is_err() {
            // A partition may have been dropped under us between upkeep's report and this
            // batch; check again next time.
            self.known_days.clear();
        }
        result
    }

    /// Forget the known days when upkeep dropped partitions since the last batch.
    fn forget_dropped_days(&mut self) {
        let drops = self.drops.count();
        if drops != self.drops_seen {
            self.drops_seen = drops;
            self.known_days.clear();
        }
    }

    async fn write_once(
        &mut self,
        rows: &[StoredFix],
        status: &DeviceStatusWrite<'_>,
    ) -> Result<Written, sqlx::Error> {
        if rows.is_empty() {
            if status.statuses.is_empty() {
                return Ok(Written::default());
            }
            let mut tx = self.pool.begin().await?;
            let (statuses, events) = status.apply(&mut tx, &self.sql.statuses).await?;
            tx.commit().await?;
            return Ok(Written {
                inserted: HashSet::new(),
                statuses,
                events,
            });
        }
        let started = Instant::now();
        self.ensure_partitions(rows).await?;
        let direct = self.mode == WriteMode::Copy && self.direct_copy_allowed();
        let (path, written) = match self.mode {
            WriteMode::Copy if direct => match self.copy_direct(rows, status).await {
                Ok((statuses, events)) => (
                    "copy",
                    Written {
                        inserted: rows.iter().map(StoredFix::key).collect(),
                        statuses,
                        events,
                    },
                ),
                Err(e) if is_unique_violation(&e) => {
                    tracing::debug!(
                        rows = rows.len(),
                        "direct copy met a stored row; staging path for a while"
                    );
                    self.direct_paused_until = Some(Instant::now() + DIRECT_COPY_PAUSE);
                    self.metrics.direct_copy_conflicts.inc();
                    ("copy_staged", self.copy_staged(rows, status).await?)
                }
                Err(e) => return Err(e),
            },
            WriteMode::Copy => ("copy_staged", self.copy_staged(rows, status).await?),
            WriteMode::Unnest => ("unnest", self.unnest(rows, status).await?),
        };
        self.metrics
            .write_seconds
            .with_label_values(&[path])
            .observe(started.elapsed().as_secs_f64());
        Ok(written)
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

    /// COPY every row into `positions`, upsert each device's newest valid fix into
    /// `last_positions`, write the device statuses and the events, in one transaction; returns
    /// the status rows that changed and what the events wrote. Fails with a unique violation,
    /// and changes nothing, when any row is already stored.
    async fn copy_direct(
        &self,
        rows: &[StoredFix],
        status: &DeviceStatusWrite<'_>,
    ) -> Result<(Vec<StatusRow>, EventsWritten), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut copy = tx.copy_in_raw(&self.sql.direct_copy).await?;
        copy.send(encode_copy(rows)).await?;
        copy.finish().await?;
        let latest = newest_valid_per_device(rows);
        if !latest.is_empty() {
            sqlx::query_with(&self.sql.latest, Columns::of(latest).into_arguments()?)
                .execute(&mut *tx)
                .await?;
        }
        let written = status.apply(&mut tx, &self.sql.statuses).await?;
        tx.commit().await?;
        Ok(written)
    }

    /// COPY into the staging table, then insert what is new; returns the new keys.
    async fn copy_staged(
        &self,
        rows: &[StoredFix],
        status: &DeviceStatusWrite<'_>,
    ) -> Result<Written, sqlx::Error> {
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
        let mut copy = tx.copy_in_raw(&self.sql.staging_copy).await?;
        copy.send(encode_copy(rows)).await?;
        copy.finish().await?;
        let inserted: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(&self.sql.from_staging)
            .fetch_all(&mut *tx)
            .await?;
        let (statuses, events) = status.apply(&mut tx, &self.sql.statuses).await?;
        tx.commit().await?;
        Ok(Written {
            inserted: keys_of(inserted),
            statuses,
            events,
        })
    }

    /// One `INSERT .. SELECT FROM unnest(..)`; returns the new keys.
    async fn unnest(
        &self,
        rows: &[StoredFix],
        status: &DeviceStatusWrite<'_>,
    ) -> Result<Written, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let inserted: Vec<(Uuid, DateTime<Utc>)> =
            sqlx::query_as_with(&self.sql.unnest, Columns::of(rows).into_arguments()?)
                .fetch_all(&mut *tx)
                .await?;
        let (statuses, events) = status.apply(&mut tx, &self.sql.statuses).await?;
        tx.commit().await?;
        Ok(Written {
            inserted: keys_of(inserted),
            statuses,
            events,
        })
    }

    /// Create the daily partitions of the batch's days that are not known to exist. Runs in
    /// its own short transaction: the function serializes callers with an advisory lock, which
    /// must not be held for the length of a batch.
    async fn ensure_partitions(&mut self, rows: &[StoredFix]) -> Result<(), sqlx::Error> {
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
}

/// A batch's `device_status` writes and its events, run inside the batch's transaction after
/// its positions.
struct DeviceStatusWrite<'a> {
    statuses: &'a [StatusChange],
    seen: &'a [Seen],
    events: Option<&'a EventFold<'a>>,
}

impl DeviceStatusWrite<'_> {
    /// Apply the status changes with `upsert` ([`upsert_statuses`]), then move `last_seen` to
    /// the fixes' times, then run the event fold (last: it locks the devices' event states,
    /// which are then held only until the commit that follows); returns the status rows that
    /// changed and what the fold wrote. Two status statements, because one statement may not
    /// update a row twice.
    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        upsert: &str,
    ) -> Result<(Vec<StatusRow>, EventsWritten), sqlx::Error> {
        let mut changed = Vec::new();
        if !self.statuses.is_empty() {
            let s = self.statuses;
            let column = |f: fn(&StatusChange) -> Option<f64>| s.iter().map(f).collect::<Vec<_>>();
            let flag = |f: fn(&StatusChange) -> Option<bool>| s.iter().map(f).collect::<Vec<_>>();
            changed = sqlx::query_as(upsert)
                .bind(s.iter().map(|c| c.device).collect::<Vec<_>>())
                .bind(s.iter().map(|c| c.tenant).collect::<Vec<_>>())
                .bind(s.iter().map(|c| ts(c.report.time)).collect::<Vec<_>>())
                .bind(column(|c| c.report.battery_pct))
                .bind(flag(|c| c.report.charging))
                .bind(flag(|c| c.report.motion))
                .bind(
                    s.iter()
                        .map(|c| {
                            (!c.report.attributes.is_empty()).then(|| {
                                serde_json::to_string(&c.report.attributes)
                                    .expect("json values serialize")
                            })
                        })
                        .collect::<Vec<_>>(),
                )
                .bind(
                    s.iter()
                        .map(|c| c.alarm.as_ref().map(|(a, _)| a.clone()))
                        .collect::<Vec<_>>(),
                )
                .bind(
                    s.iter()
                        .map(|c| c.alarm.as_ref().map(|(_, t)| ts(*t)))
                        .collect::<Vec<_>>(),
                )
                .fetch_all(&mut **tx)
                .await?;
        }
        if !self.seen.is_empty() {
            sqlx::query(TOUCH_LAST_SEEN)
                .bind(self.seen.iter().map(|s| s.device).collect::<Vec<_>>())
                .bind(self.seen.iter().map(|s| s.tenant).collect::<Vec<_>>())
                .bind(self.seen.iter().map(|s| ts(s.at)).collect::<Vec<_>>())
                .execute(&mut **tx)
                .await?;
        }
        let events = match self.events {
            Some(fold) => fold.run(tx).await?,
            None => EventsWritten::default(),
        };
        Ok((changed, events))
    }
}

fn ts(ms: EpochMillis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
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

/// Each device's valid row with the newest fix time (keys are distinct, so there are no ties).
fn newest_valid_per_device(rows: &[StoredFix]) -> Vec<&StoredFix> {
    let mut newest: HashMap<Uuid, &StoredFix> = HashMap::new();
    for row in rows.iter().filter(|r| r.fix.valid) {
        newest
            .entry(row.device)
            .and_modify(|kept| {
                if row.fix.fix_time > kept.fix.fix_time {
                    *kept = row;
                }
            })
            .or_insert(row);
    }
    newest.into_values().collect()
}

fn day_date(day: i64) -> Option<NaiveDate> {
    DateTime::from_timestamp_millis(day.checked_mul(MS_PER_DAY)?).map(|t| t.date_naive())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_and_unnest_paths_share_one_store_statement() {
        let sql = Statements::new();
        let tail = |s: &str| s[s.find("ins AS").unwrap()..].to_owned();
        assert_eq!(
            tail(&sql.from_staging).replace("positions_staging", "rows"),
            tail(&sql.unnest)
        );
        assert!(sql.unnest.starts_with("WITH rows AS (SELECT "));
        assert!(sql.from_staging.starts_with("WITH ins AS"));
        assert!(sql
            .latest
            .contains("WHERE EXCLUDED.fix_time > last_positions.fix_time"));
        assert!(!upsert_latest().contains("device_id = EXCLUDED"));
        assert!(upsert_latest().contains("attributes = EXCLUDED.attributes"));
        // Only fixes the device called valid become the latest position.
        assert!(sql.unnest.contains("FROM rows WHERE valid"));
        assert!(sql
            .from_staging
            .contains("FROM positions_staging WHERE valid"));
    }

    #[test]
    fn the_status_upsert_only_moves_forward() {
        let sql = Statements::new().statuses;
        assert!(sql.contains(&format!("WHERE {NEWER_STATUS} OR {NEWER_ALARM}")));
        assert!(sql.contains("last_seen = greatest(s.last_seen, EXCLUDED.last_seen)"));
        for column in [
            "status_time",
            "battery_pct",
            "charging",
            "motion",
            "attributes",
        ] {
            assert!(sql.contains(&format!(
                "{column} = CASE WHEN {NEWER_STATUS} THEN EXCLUDED.{column} ELSE s.{column} END"
            )));
        }
        assert!(sql.ends_with(&format!("RETURNING {STATUS_COLUMNS}")));
        assert!(TOUCH_LAST_SEEN.contains("WHERE EXCLUDED.last_seen > s.last_seen"));
    }

    #[test]
    fn only_valid_fixes_are_candidates_for_the_latest_position() {
        let row = |t, valid| {
            let mut fix = gps_domain::Fix::new(t, 1.0, 2.0);
            fix.valid = valid;
            StoredFix {
                tenant: Uuid::nil(),
                device: Uuid::from_u128(7),
                uid: "d".into(),
                protocol: gps_domain::Protocol::Json,
                received: t,
                fix,
            }
        };
        let rows = [row(1, true), row(3, false), row(2, true)];
        let newest = newest_valid_per_device(&rows);
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].fix.fix_time, 2);
        assert!(newest_valid_per_device(&[row(3, false)]).is_empty());
    }

    #[tokio::test]
    async fn dropped_partitions_make_the_writer_forget_its_days() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let metrics = Metrics::new(&prometheus::Registry::new());
        let mut writer = Writer::new(pool, WriteMode::Copy, StorageMode::Partitioned, metrics);
        writer.known_days.extend([20_000, 20_001]);
        writer.forget_dropped_days();
        assert_eq!(writer.known_days.len(), 2, "nothing dropped yet");
        let drops = writer.partition_drops();
        drops.record();
        writer.forget_dropped_days();
        assert!(writer.known_days.is_empty());
        writer.known_days.insert(20_002);
        writer.forget_dropped_days();
        assert_eq!(
            writer.known_days.len(),
            1,
            "the same drop is not counted twice"
        );
    }

    #[test]
    fn days_map_to_dates() {
        assert_eq!(day_date(0).unwrap().to_string(), "1970-01-01");
        assert_eq!(day_date(20_000).unwrap().to_string(), "2024-10-04");
        assert_eq!(day_date(i64::MAX), None);
    }
}
