//! The speed check against a planted outlier (issue 14): one fix dated minutes ahead and far
//! away, slipped into a device's stream, is refused, and the device's real fixes around it are
//! all stored; the live position stays on the real track. Run across a restart, so the second
//! instance judges against the anchor it loads from `last_positions`.

use crate::support::*;
use gps_domain::fix::{now_millis, Fix, Protocol};
use gps_domain::reject::RejectReason;
use gps_domain::FixEnvelope;
use gps_runtime::testing::{kafka_topics, TestDb};
use std::time::Duration;
use uuid::Uuid;

/// About 1° of latitude, metres.
const DEGREE_M: f64 = 111_195.0;

/// Real fix `i`: 2 s apart, driving north at 20 m/s, received 500 ms after it was taken.
fn real(tenant: Uuid, device: Uuid, base: i64, i: i64) -> FixEnvelope {
    let mut fix = Fix::new(base + i * 2_000, 48.0 + (i * 40) as f64 / DEGREE_M, 11.0);
    fix.accuracy_m = Some(5.0);
    FixEnvelope::new(
        tenant,
        device,
        "victim",
        Protocol::Osmand,
        fix.fix_time + 500,
        vec![fix],
    )
}

#[tokio::test]
async fn a_planted_future_fix_far_away_hides_none_of_the_real_track() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let (tenant, device) = (Uuid::new_v4(), Uuid::new_v4());
    let base = now_millis() - 200_000;
    let producer = producer(&kafka);
    let group = group();

    // The device's history so far, stored by a first instance.
    let first: Vec<FixEnvelope> = (0..20).map(|i| real(tenant, device, base, i)).collect();
    produce(&producer, &kafka.fixes_topic, &first).await;
    let running = Running::start(config(&db, &kafka, &group)).await;
    wait_until(
        Duration::from_secs(60),
        "the first 20 fixes stored",
        || async { count_positions(&db.pool).await >= 20 },
    )
    .await;
    running.stop().await;

    // The attack, received between real fixes 19 and 20: dated 9 minutes after its receipt
    // (within the clock-skew tolerance) and 185 km away, which is 342 m/s from fix 19 if its
    // date is believed; the old rule then refused every real fix within ~9 minutes of it.
    let rx = base + 19 * 2_000 + 1_000;
    let last_real = 48.0 + (19 * 40) as f64 / DEGREE_M;
    let planted = Fix::new(rx + 540_000, last_real + 185_000.0 / DEGREE_M, 11.0);
    let mut rest = vec![FixEnvelope::new(
        tenant,
        device,
        "victim",
        Protocol::Osmand,
        rx,
        vec![planted],
    )];
    rest.extend((20..40).map(|i| real(tenant, device, base, i)));
    produce(&producer, &kafka.fixes_topic, &rest).await;

    let running = Running::start(config(&db, &kafka, &group)).await;
    wait_until(Duration::from_secs(60), "all 21 fixes judged", || async {
        running.metric("gps_processor_fixes_accepted_total").await
            + running.metric("gps_processor_fixes_rejected_total").await
            >= 21.0
    })
    .await;
    let stored = stored_keys(&db.pool).await;
    let want: Vec<(Uuid, i64)> = (0..40).map(|i| (device, base + i * 2_000)).collect();
    assert_eq!(stored, want, "exactly the real track is stored");
    let last: (chrono::DateTime<chrono::Utc>, f64) =
        sqlx::query_as("SELECT fix_time, lat FROM last_positions WHERE device_id = $1")
            .bind(device)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(last.0.timestamp_millis(), base + 39 * 2_000);
    let rejects = read_rejects(&kafka, 1).await;
    assert_eq!(rejects[0].reason, RejectReason::ImpossibleSpeed);
    assert_eq!(rejects[0].fix.as_ref().unwrap().fix_time, rx + 540_000);
    assert_eq!(
        running
            .metric("gps_processor_fixes_rejected_total{reason=\"impossible_speed\"}")
            .await,
        1.0
    );
    running.stop().await;
}
