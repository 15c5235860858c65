//! Device status reports and invalid fixes, through the running processor: a status report
//! without fixes becomes the device's `device_status` row (not a position, not a reject) in the
//! batch's transaction and goes live after the commit; an older report never overwrites a newer
//! one; a fix the device called invalid is history only, never the latest or live position;
//! `replay` rebuilds the statuses.

use crate::support::*;
use chrono::{DateTime, Utc};
use gps_domain::fix::{now_millis, Fix, Protocol};
use gps_domain::{DeviceStatus, FixEnvelope};
use gps_runtime::testing::{kafka_topics, seed_device, TestDb};
use std::time::Duration;
use uuid::Uuid;

type StatusRow = (
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<f64>,
    Option<bool>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<bool>,
    Option<serde_json::Value>,
);

async fn status_of(pool: &sqlx::PgPool, device: Uuid) -> Option<StatusRow> {
    sqlx::query_as(
        "SELECT last_seen, status_time, battery_pct, charging, alarm, alarm_time, motion, attributes
         FROM device_status WHERE device_id = $1",
    )
    .bind(device)
    .fetch_optional(pool)
    .await
    .unwrap()
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn status_envelope(tenant: Uuid, device: Uuid, rx: i64, status: DeviceStatus) -> FixEnvelope {
    FixEnvelope::new(tenant, device, "phone-1", Protocol::Osmand, rx, Vec::new())
        .with_status(status)
}

#[tokio::test]
async fn a_status_report_without_fixes_is_stored_published_and_only_moves_forward() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let seeded = seed_device(&db.pool, &format!("t-{}", Uuid::new_v4())).await;
    let (tenant, device) = (seeded.tenant_id, seeded.device_id);
    let marker = Uuid::new_v4();
    let rx = now_millis();
    let mut pubsub = live_messages(tenant).await;

    let mut heartbeat = DeviceStatus::new(rx - 10_000);
    heartbeat.battery_pct = Some(42.0);
    heartbeat.charging = Some(true);
    heartbeat.alarm = Some("sos".into());
    heartbeat
        .attributes
        .insert("push_token".into(), serde_json::json!("abc"));
    let producer = producer(&kafka);
    produce(
        &producer,
        &kafka.fixes_topic,
        &[status_envelope(tenant, device, rx, heartbeat.clone())],
    )
    .await;
    let running = Running::start(config(&db, &kafka, &group())).await;
    wait_until(Duration::from_secs(60), "the status is stored", || async {
        status_of(&db.pool, device).await.is_some()
    })
    .await;
    let row = status_of(&db.pool, device).await.unwrap();
    assert_eq!(ms(row.0), rx - 10_000, "last seen at the report");
    assert_eq!(row.1.map(ms), Some(rx - 10_000));
    assert_eq!((row.2, row.3), (Some(42.0), Some(true)));
    assert_eq!(row.4.as_deref(), Some("sos"));
    assert_eq!(row.5.map(ms), Some(rx - 10_000));
    assert_eq!(row.7, Some(serde_json::json!({ "push_token": "abc" })));
    assert_eq!(count_positions(&db.pool).await, 0, "never a fake position");
    assert_eq!(
        running
            .metric("gps_processor_fixes_rejected_total{reason=\"empty_envelope\"}")
            .await,
        0.0
    );

    // Live, after the commit: the whole status row.
    let batches = live_until(&mut pubsub, |b| !b.statuses.is_empty()).await;
    let live = &batches.last().unwrap().statuses[0];
    assert_eq!((live.device, live.uid.as_str()), (device, "phone-1"));
    assert_eq!(live.battery_pct, Some(42.0));
    assert_eq!(live.alarm.as_deref(), Some("sos"));
    assert_eq!(live.status_time, Some(rx - 10_000));

    // An older report (delivered late) changes nothing; a newer one without an alarm replaces
    // the report's fields but keeps the alarm; a fix moves last seen.
    let mut older = DeviceStatus::new(rx - 60_000);
    older.battery_pct = Some(99.0);
    older.alarm = Some("lowBattery".into());
    let mut newer = DeviceStatus::new(rx - 5_000);
    newer.battery_pct = Some(41.0);
    newer.motion = Some(true);
    let fix = Fix::new(rx - 1_000, 52.5, 13.4);
    let mut marker_status = DeviceStatus::new(rx);
    marker_status.battery_pct = Some(1.0);
    produce(
        &producer,
        &kafka.fixes_topic,
        &[status_envelope(tenant, device, rx, older)],
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "the older report is consumed",
        || async { running.metric("gps_processor_records_total").await >= 2.0 },
    )
    .await;
    let after_older = status_of(&db.pool, device).await.unwrap();
    assert_eq!(after_older, row, "an older report overwrote a newer one");
    produce(
        &producer,
        &kafka.fixes_topic,
        &[
            status_envelope(tenant, device, rx, newer),
            FixEnvelope::new(tenant, device, "phone-1", Protocol::Osmand, rx, vec![fix]),
            status_envelope(tenant, marker, rx, marker_status),
        ],
    )
    .await;
    wait_until(Duration::from_secs(60), "the marker is stored", || async {
        status_of(&db.pool, marker).await.is_some()
    })
    .await;
    let row = status_of(&db.pool, device).await.unwrap();
    assert_eq!(ms(row.0), rx - 1_000, "last seen at the newest fix");
    assert_eq!(row.1.map(ms), Some(rx - 5_000));
    assert_eq!((row.2, row.3, row.6), (Some(41.0), None, Some(true)));
    assert_eq!(row.4.as_deref(), Some("sos"), "the alarm is kept");
    assert_eq!(row.5.map(ms), Some(rx - 10_000));
    assert_eq!(row.7, None);
    let marker_row = status_of(&db.pool, marker).await.unwrap();
    // The older report was never published: only the first, the newer and the marker's.
    let batches = live_until(&mut pubsub, |b| {
        b.statuses.iter().any(|s| s.device == marker)
    })
    .await;
    let batteries: Vec<Option<f64>> = batches
        .iter()
        .flat_map(|b| &b.statuses)
        .filter(|s| s.device == device)
        .map(|s| s.battery_pct)
        .collect();
    assert_eq!(batteries, [Some(41.0)]);
    running.stop().await;

    // Replay into an empty database: the same statuses.
    let empty = TestDb::new().await;
    let summary = replay_all(&config(&empty, &kafka, &group())).await;
    assert!(summary.statuses >= 2, "{summary}");
    assert_eq!(status_of(&empty.pool, device).await, Some(row));
    assert_eq!(status_of(&empty.pool, marker).await, Some(marker_row));
}

#[tokio::test]
async fn an_invalid_fix_is_history_but_never_the_latest_or_live_position() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let seeded = seed_device(&db.pool, &format!("t-{}", Uuid::new_v4())).await;
    let (tenant, device) = (seeded.tenant_id, seeded.device_id);
    let rx = now_millis();
    let mut pubsub = live_messages(tenant).await;
    let valid = Fix::new(rx - 30_000, 52.5, 13.4);
    // Traccar Client's `valid=false`: the last known position, 4000 km away, 10 s later.
    let mut invalid = Fix::new(rx - 20_000, 12.0, 13.4);
    invalid.valid = false;
    let envelope =
        |fix: Fix| FixEnvelope::new(tenant, device, "phone-1", Protocol::Osmand, rx, vec![fix]);
    let producer = producer(&kafka);
    produce(
        &producer,
        &kafka.fixes_topic,
        &[envelope(valid.clone()), envelope(invalid.clone())],
    )
    .await;
    let running = Running::start(config(&db, &kafka, &group())).await;
    wait_until(Duration::from_secs(60), "both fixes stored", || async {
        count_positions(&db.pool).await == 2
    })
    .await;
    let history: Vec<(DateTime<Utc>, bool)> =
        sqlx::query_as("SELECT fix_time, valid FROM positions ORDER BY fix_time")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let history: Vec<(i64, bool)> = history.into_iter().map(|(t, v)| (ms(t), v)).collect();
    assert_eq!(history, [(rx - 30_000, true), (rx - 20_000, false)]);
    let latest: (DateTime<Utc>, f64) =
        sqlx::query_as("SELECT fix_time, lat FROM last_positions WHERE device_id = $1")
            .bind(device)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (ms(latest.0), latest.1),
        (rx - 30_000, 52.5),
        "latest stays on the valid fix"
    );
    let seen = status_of(&db.pool, device).await.unwrap();
    assert_eq!(
        ms(seen.0),
        rx - 20_000,
        "an invalid fix still says the device was heard"
    );
    assert_eq!(seen.1, None, "no status report yet");

    // A later valid fix near the first: accepted (the invalid one was never the speed
    // reference), and once it is live everything before it was published.
    let next = Fix::new(rx - 10_000, 52.5001, 13.4);
    produce(&producer, &kafka.fixes_topic, &[envelope(next.clone())]).await;
    let batches = live_until(&mut pubsub, |b| {
        b.fixes.iter().any(|f| f.fix.fix_time == next.fix_time)
    })
    .await;
    let live: Vec<i64> = batches
        .iter()
        .flat_map(|b| &b.fixes)
        .map(|f| f.fix.fix_time)
        .collect();
    assert_eq!(
        live,
        [valid.fix_time, next.fix_time],
        "the invalid fix went live"
    );
    running.stop().await;
}
