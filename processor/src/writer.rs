//! Batch writes to PostgreSQL: one transaction per batch that stores the new rows of
//! `positions` (reporting which rows were new) and moves `last_positions` forward only
//! (`WHERE EXCLUDED.fix_time > last_positions.fix_time`), so a late fix lands in history without
//! rewinding the live position.
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
use crate::metrics::Metrics;
use chrono::{DateTime, NaiveDate, Utc};
use gps_runtime::db::StorageMode;
use gps_store::positions::{
    copy_into, encode_copy, Columns, FixKey, StoredFix, COLUMNS, UNNEST_ROWS,
};
use sqlx::PgPool;
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
            SELECT DISTINCT ON (device_id) {COLUMNS} FROM {source}
            ORDER BY device_id, fix_time DESC
            {}
        )
        SELECT device_id, fix_time FROM ins",
        upsert_latest()
    )
}

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

    /// Store `rows` (distinct keys) in one transaction; returns the keys that were new.
    pub async fn write(&mut self, rows: &[StoredFix]) -> Result<HashSet<FixKey>, sqlx::Error> {
        self.forget_dropped_days();
        let result = self.write_once(rows).await;
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

    async fn write_once(&mut self, rows: &[StoredFix]) -> Result<HashSet<FixKey>, sqlx::Error> {
        if rows.is_empty() {
            return Ok(HashSet::new());
        }
        let started = Instant::now();
        self.ensure_partitions(rows).await?;
        let direct = self.mode == WriteMode::Copy && self.direct_copy_allowed();
        let (path, inserted) = match self.mode {
            WriteMode::Copy if direct => match self.copy_direct(rows).await {
                Ok(()) => ("copy", rows.iter().map(StoredFix::key).collect()),
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
    async fn copy_direct(&self, rows: &[StoredFix]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut copy = tx.copy_in_raw(&self.sql.direct_copy).await?;
        copy.send(encode_copy(rows)).await?;
        copy.finish().await?;
        let latest = newest_per_device(rows);
        sqlx::query_with(&self.sql.latest, Columns::of(&latest).into_arguments()?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// COPY into the staging table, then insert what is new; returns the new keys.
    async fn copy_staged(&self, rows: &[StoredFix]) -> Result<HashSet<FixKey>, sqlx::Error> {
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
        tx.commit().await?;
        Ok(keys_of(inserted))
    }

    /// One `INSERT .. SELECT FROM unnest(..)`; returns the new keys.
    async fn unnest(&self, rows: &[StoredFix]) -> Result<HashSet<FixKey>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let inserted: Vec<(Uuid, DateTime<Utc>)> =
            sqlx::query_as_with(&self.sql.unnest, Columns::of(rows).into_arguments()?)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(keys_of(inserted))
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
fn newest_per_device(rows: &[StoredFix]) -> Vec<StoredFix> {
    let mut newest: HashMap<Uuid, &StoredFix> = HashMap::new();
    for row in rows {
        newest
            .entry(row.device)
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
