//! Partition upkeep for the native partitioning fallback (`gps_storage_mode() = 'partitioned'`):
//! keep daily partitions ready ahead of today and drop those past retention. TimescaleDB does
//! both by itself (chunks and its retention policy), so the task does not run there.
//!
//! Drops are reported to the writer ([`PartitionDrops`]), which otherwise would go on believing
//! in the partitions of days it had seen and fail its next batch of such a day once.

use crate::config::UpkeepArgs;
use crate::metrics::Metrics;
use crate::writer::PartitionDrops;
use gps_runtime::service::CancellationToken;
use sqlx::PgPool;
use std::time::Duration;

/// Create the partitions from yesterday to `ahead_days` ahead and drop those whose whole day is
/// older than the retention. Returns (created, dropped).
pub async fn run_once(
    pool: &PgPool,
    args: &UpkeepArgs,
    metrics: &Metrics,
) -> Result<(i32, i32), sqlx::Error> {
    let created: i32 = sqlx::query_scalar(
        "SELECT gps_ensure_position_partitions(
            (now() AT TIME ZONE 'UTC')::date - 1,
            (now() AT TIME ZONE 'UTC')::date + $1)",
    )
    .bind(args.ahead_days as i32)
    .fetch_one(pool)
    .await?;
    let dropped: i32 = sqlx::query_scalar(
        "SELECT gps_drop_position_partitions(now() - make_interval(days => $1))",
    )
    .bind(args.retention_days as i32)
    .fetch_one(pool)
    .await?;
    metrics
        .partitions
        .with_label_values(&["created"])
        .inc_by(created.max(0) as u64);
    metrics
        .partitions
        .with_label_values(&["dropped"])
        .inc_by(dropped.max(0) as u64);
    if created > 0 || dropped > 0 {
        tracing::info!(
            created,
            dropped,
            retention_days = args.retention_days,
            "partition upkeep"
        );
    }
    Ok((created, dropped))
}

/// Run [`run_once`] now and every `interval_secs` until `stop`, reporting drops to the writer.
/// Failures are logged and retried at the next tick: the writer also creates the partitions it
/// needs.
pub async fn run(
    pool: PgPool,
    args: UpkeepArgs,
    metrics: Metrics,
    drops: PartitionDrops,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(args.interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match run_once(&pool, &args, &metrics).await {
            Ok((_, dropped)) if dropped > 0 => drops.record(),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "partition upkeep failed; retrying next interval");
            }
        }
    }
}
