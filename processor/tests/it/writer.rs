//! The `copy` write path against the database: a batch of new rows goes straight in by COPY; a
//! batch holding an already stored row rolls back and is written through staging, storing only
//! what is new; `last_positions` keeps each device's newest fix either way. And the row codec:
//! what every write path stores reads back, through the shared read struct, as the same fix.

use crate::support::count_positions;
use chrono::{DateTime, Utc};
use gps_domain::fix::{now_millis, Fix, Protocol};
use gps_runtime::testing::TestDb;
use gps_store::positions::{columns_of, PositionRow, StoredFix, COLUMNS};
use processor::metrics::Metrics;
use processor::writer::Writer;
use processor::WriteMode;
use std::collections::{BTreeMap, HashSet};
use uuid::Uuid;

fn rows(meta: &StoredFix, base: i64, seconds: impl Iterator<Item = i64>) -> Vec<StoredFix> {
    seconds
        .map(|i| StoredFix {
            fix: Fix::new(base + i * 1000, 52.5 + i as f64 * 1e-4, 13.4),
            ..meta.clone()
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
    let meta = |device| StoredFix {
        tenant,
        device,
        uid: "w".into(),
        protocol: Protocol::Json,
        received: now_millis(),
        fix: Fix::new(0, 0.0, 0.0),
    };
    let (a, b) = (meta(Uuid::new_v4()), meta(Uuid::new_v4()));
    let base = now_millis() - 3_600_000;

    // All new: the direct COPY, every key reported new, newest per device (out of order input).
    let mut first = rows(&a, base, (0..10).rev());
    first.extend(rows(&b, base, 0..5));
    let inserted = writer.write(&first, &[], &[]).await.unwrap().inserted;
    assert_eq!(inserted, first.iter().map(StoredFix::key).collect());
    assert_eq!(path_count(&metrics, "copy"), 1);
    assert_eq!(metrics.direct_copy_conflicts.get(), 0);
    let last = last_fix_times(&db.pool).await;
    assert_eq!(last[&a.device], base + 9_000);
    assert_eq!(last[&b.device], base + 4_000);

    // Stored rows mixed with new ones, older and newer: only the new are stored and reported.
    let mut second = rows(&a, base, 5..15);
    second.extend(rows(&b, base, [-3, 2].into_iter()));
    let inserted = writer.write(&second, &[], &[]).await.unwrap().inserted;
    let want: HashSet<_> = second
        .iter()
        .map(StoredFix::key)
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
    let inserted = writer.write(&third, &[], &[]).await.unwrap().inserted;
    assert_eq!(inserted.len(), 2);
    assert_eq!(path_count(&metrics, "copy_staged"), 2);
    assert_eq!(path_count(&metrics, "copy"), 1);
    assert_eq!(last_fix_times(&db.pool).await[&b.device], base + 11_000);
}

/// A fix with every field set, attributes included.
fn full_fix(fix_time: i64, n: f64) -> Fix {
    let mut fix = Fix::new(fix_time, 52.5 + n * 1e-4, 13.4 - n * 1e-4);
    fix.altitude_m = Some(34.5 + n);
    fix.speed_mps = Some(1.25);
    fix.heading_deg = Some(270.0);
    fix.accuracy_m = Some(4.0);
    fix.battery_pct = Some(88.0);
    fix.satellites = Some(9);
    fix.hdop = Some(0.9);
    fix.attributes.insert("tid".into(), "ab".into());
    fix.attributes.insert("charge".into(), true.into());
    fix
}

#[tokio::test]
async fn every_write_path_stores_what_the_read_struct_gives_back() {
    let db = TestDb::new().await;
    let storage = gps_runtime::db::storage_mode(&db.pool).await.unwrap();
    let base = now_millis() - 3_600_000;
    let mut written: Vec<StoredFix> = Vec::new();
    for (n, mode) in [WriteMode::Copy, WriteMode::Unnest].into_iter().enumerate() {
        let metrics = Metrics::new(&prometheus::Registry::new());
        let mut writer = Writer::new(db.pool.clone(), mode, storage, metrics);
        let device = Uuid::new_v4();
        // The older fix with nothing optional; the newer (the one `last_positions` keeps) full.
        let mut plain = full_fix(base + 1_000, n as f64);
        plain.attributes.clear();
        plain.satellites = None;
        plain.altitude_m = None;
        let batch: Vec<StoredFix> = [plain, full_fix(base + 2_000, n as f64)]
            .into_iter()
            .map(|fix| StoredFix {
                tenant: Uuid::new_v4(),
                device,
                uid: "codec".into(),
                protocol: Protocol::Owntracks,
                received: base + 5_000,
                fix,
            })
            .collect();
        let inserted = writer.write(&batch, &[], &[]).await.unwrap().inserted;
        assert_eq!(inserted.len(), 2, "{mode:?}");
        written.extend(batch);
    }
    let read: Vec<PositionRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM positions ORDER BY device_id, fix_time"
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    written.sort_by_key(StoredFix::key);
    assert_eq!(read.len(), written.len());
    for (row, stored) in read.iter().zip(&written) {
        assert_eq!(row.fix(), stored.fix);
        assert_eq!(row.key(), stored.key());
        assert_eq!(
            (row.tenant_id, row.received_ms(), row.protocol.as_str()),
            (stored.tenant, stored.received, stored.protocol.as_str())
        );
    }
    // `last_positions` holds the same columns: the newest fix of each device, read alike.
    let latest: Vec<PositionRow> = sqlx::query_as(&format!(
        "SELECT {} FROM last_positions lp ORDER BY lp.device_id",
        columns_of("lp")
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let newest: Vec<Fix> = written
        .iter()
        .filter(|s| s.fix.fix_time == base + 2_000)
        .map(|s| s.fix.clone())
        .collect();
    assert_eq!(
        latest.iter().map(PositionRow::fix).collect::<Vec<_>>(),
        newest
    );
}

/// The device statuses of a batch commit or roll back with its positions, on every write path,
/// and a fix the device called invalid is stored but never the latest position.
#[tokio::test]
async fn statuses_share_the_batch_transaction_and_invalid_fixes_stay_out_of_latest() {
    use gps_domain::DeviceStatus;
    use processor::plan::{Seen, StatusChange};

    let db = TestDb::new().await;
    let storage = gps_runtime::db::storage_mode(&db.pool).await.unwrap();
    let base = now_millis() - 3_600_000;
    let tenant = Uuid::new_v4();
    let change = |device, t: i64| StatusChange {
        tenant,
        device,
        uid: "s".into(),
        report: DeviceStatus {
            battery_pct: Some(50.0),
            ..DeviceStatus::new(t)
        },
        alarm: Some(("sos".into(), t)),
    };
    let status_row = |device| {
        let pool = db.pool.clone();
        async move {
            let row: Option<(DateTime<Utc>, Option<DateTime<Utc>>, Option<String>)> =
                sqlx::query_as(
                    "SELECT last_seen, status_time, alarm FROM device_status WHERE device_id = $1",
                )
                .bind(device)
                .fetch_optional(&pool)
                .await
                .unwrap();
            row.map(|(seen, at, alarm)| {
                (
                    seen.timestamp_millis(),
                    at.map(|t| t.timestamp_millis()),
                    alarm,
                )
            })
        }
    };
    // (mode, store the first row beforehand so the direct COPY conflicts, expected path)
    let cases = [
        (WriteMode::Copy, false, "copy"),
        (WriteMode::Copy, true, "copy_staged"),
        (WriteMode::Unnest, false, "unnest"),
    ];
    for (mode, conflict, path) in cases {
        let metrics = Metrics::new(&prometheus::Registry::new());
        let mut writer = Writer::new(db.pool.clone(), mode, storage, metrics.clone());
        let device = Uuid::new_v4();
        let row = |t: i64, valid: bool| {
            let mut fix = Fix::new(t, 52.5, 13.4);
            fix.valid = valid;
            StoredFix {
                tenant,
                device,
                uid: "s".into(),
                protocol: Protocol::Osmand,
                received: base + 10_000,
                fix,
            }
        };
        let batch = [row(base + 1_000, true), row(base + 2_000, false)];
        if conflict {
            writer.write(&batch[..1], &[], &[]).await.unwrap();
        }
        let seen = [Seen {
            tenant,
            device,
            at: base + 2_000,
        }];
        let written = writer
            .write(&batch, &[change(device, base + 500)], &seen)
            .await
            .unwrap();
        assert_eq!(path_count(&metrics, path), 1, "{path}");
        assert_eq!(written.statuses.len(), 1, "{path}");
        assert_eq!(written.statuses[0].battery_pct, Some(50.0));
        let latest: Vec<(Uuid, i64)> = last_fix_times(&db.pool)
            .await
            .into_iter()
            .filter(|(d, _)| *d == device)
            .collect();
        assert_eq!(
            latest,
            [(device, base + 1_000)],
            "{path}: the invalid fix is not latest"
        );
        let valid: bool = sqlx::query_scalar(
            "SELECT valid FROM positions WHERE device_id = $1 AND fix_time = $2",
        )
        .bind(device)
        .bind(DateTime::from_timestamp_millis(base + 2_000).unwrap())
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(!valid, "{path}");
        assert_eq!(
            status_row(device).await,
            Some((base + 2_000, Some(base + 500), Some("sos".into()))),
            "{path}"
        );
        // The same status again changes nothing and is not reported as changed.
        let again = writer
            .write(&[], &[change(device, base + 500)], &[])
            .await
            .unwrap();
        assert!(again.statuses.is_empty(), "{path}");
    }

    // A batch whose positions fail leaves no status behind.
    let metrics = Metrics::new(&prometheus::Registry::new());
    let mut writer = Writer::new(db.pool.clone(), WriteMode::Unnest, storage, metrics);
    let device = Uuid::new_v4();
    let broken = StoredFix {
        tenant,
        device,
        uid: "s".into(),
        protocol: Protocol::Osmand,
        received: base,
        fix: Fix::new(base, 95.0, 13.4),
    };
    let seen = [Seen {
        tenant,
        device,
        at: base,
    }];
    assert!(writer
        .write(&[broken], &[change(device, base)], &seen)
        .await
        .is_err());
    assert_eq!(status_row(device).await, None);
    assert_eq!(
        count_positions(&db.pool).await,
        6,
        "two rows per path, none of the broken batch"
    );
}
