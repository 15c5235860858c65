//! The `copy` write path against the database: a batch of new rows goes straight in by COPY; a
//! batch holding an already stored row rolls back and is written through staging, storing only
//! what is new; `last_positions` keeps each device's newest fix either way.

use crate::support::count_positions;
use chrono::{DateTime, Utc};
use gps_domain::fix::{now_millis, Fix, Protocol};
use gps_runtime::testing::TestDb;
use processor::metrics::Metrics;
use processor::writer::{EnvelopeMeta, PositionRow, Writer};
use processor::WriteMode;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

fn rows(
    meta: &Arc<EnvelopeMeta>,
    base: i64,
    seconds: impl Iterator<Item = i64>,
) -> Vec<PositionRow> {
    seconds
        .map(|i| PositionRow {
            meta: meta.clone(),
            fix: Fix::new(base + i * 1000, 52.5 + i as f64 * 1e-4, 13.4),
        })
        .collect()
}

async fn last_fix_times(pool: &sqlx::PgPool) -> BTreeMap<Uuid, i64> {
    let rows: Vec<(Uuid, DateTime<Utc>)> =
        sqlx::query_as("SELECT device_id, fix_time FROM last_positions")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(d, t)| (d, t.timestamp_millis()))
        .collect()
}

fn path_count(metrics: &Metrics, path: &str) -> u64 {
    metrics
        .write_seconds
        .with_label_values(&[path])
        .get_sample_count()
}

#[tokio::test]
async fn direct_copy_stores_new_batches_and_falls_back_to_staging_on_a_stored_row() {
    let db = TestDb::new().await;
    let storage = gps_runtime::db::storage_mode(&db.pool).await.unwrap();
    let metrics = Metrics::new(&prometheus::Registry::new());
    let mut writer = Writer::new(db.pool.clone(), WriteMode::Copy, storage, metrics.clone());
    let tenant = Uuid::new_v4();
    let meta = |device| {
        Arc::new(EnvelopeMeta {
            tenant,
            device,
            uid: "w".into(),
            proto: Protocol::Json,
            rx: now_millis(),
        })
    };
    let (a, b) = (meta(Uuid::new_v4()), meta(Uuid::new_v4()));
    let base = now_millis() - 3_600_000;

    // All new: the direct COPY, every key reported new, newest per device (out of order input).
    let mut first = rows(&a, base, (0..10).rev());
    first.extend(rows(&b, base, 0..5));
    let inserted = writer.write(&first).await.unwrap();
    assert_eq!(inserted, first.iter().map(PositionRow::key).collect());
    assert_eq!(path_count(&metrics, "copy"), 1);
    assert_eq!(metrics.direct_copy_conflicts.get(), 0);
    let last = last_fix_times(&db.pool).await;
    assert_eq!(last[&a.device], base + 9_000);
    assert_eq!(last[&b.device], base + 4_000);

    // Stored rows mixed with new ones, older and newer: only the new are stored and reported.
    let mut second = rows(&a, base, 5..15);
    second.extend(rows(&b, base, [-3, 2].into_iter()));
    let inserted = writer.write(&second).await.unwrap();
    let want: HashSet<_> = second
        .iter()
        .map(PositionRow::key)
        .filter(|k| !first.iter().any(|r| r.key() == *k))
        .collect();
    assert_eq!(inserted, want);
    assert_eq!(want.len(), 6);
    assert_eq!(metrics.direct_copy_conflicts.get(), 1);
    assert_eq!(path_count(&metrics, "copy_staged"), 1);
    assert_eq!(count_positions(&db.pool).await, 15 + 1 + 5);
    let last = last_fix_times(&db.pool).await;
    assert_eq!(last[&a.device], base + 14_000);
    assert_eq!(
        last[&b.device],
        base + 4_000,
        "an older fix must not rewind it"
    );

    // Right after a conflict the staging path is kept for a while, and still stores new rows.
    let third = rows(&b, base, 10..12);
    let inserted = writer.write(&third).await.unwrap();
    assert_eq!(inserted.len(), 2);
    assert_eq!(path_count(&metrics, "copy_staged"), 2);
    assert_eq!(path_count(&metrics, "copy"), 1);
    assert_eq!(last_fix_times(&db.pool).await[&b.device], base + 11_000);
}
