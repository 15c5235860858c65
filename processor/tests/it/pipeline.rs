//! The whole path on one processor: duplicates and out-of-order fixes stored once, the live
//! position never rewinds, rejects carry their reasons, newly stored fixes reach Redis, and a
//! replay into an empty database rebuilds the same rows.

use crate::support::*;
use futures::StreamExt;
use gps_domain::fix::{now_millis, Fix, Protocol};
use gps_domain::live::{channel_for, LiveBatch};
use gps_domain::reject::RejectReason;
use gps_domain::validation::GPS_ROLLOVER_MS;
use gps_domain::FixEnvelope;
use gps_runtime::testing::{kafka_topics, seed_device, TestDb};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use uuid::Uuid;

fn envelope(tenant: Uuid, device: Uuid, rx: i64, fixes: Vec<Fix>) -> FixEnvelope {
    FixEnvelope::new(tenant, device, "dev", Protocol::Json, rx, fixes)
}

/// A fix `i` seconds after `base`, moving about 10 m per second.
fn walk(base: i64, i: i64) -> Fix {
    let mut fix = Fix::new(base + i * 1000, 52.5 + i as f64 * 1e-4, 13.4);
    fix.accuracy_m = Some(5.0);
    fix.speed_mps = Some(10.0);
    fix
}

type LastRow = (Uuid, chrono::DateTime<chrono::Utc>, f64, f64);
type PositionRow = (
    Uuid,
    Uuid,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
    String,
);

async fn snapshot(pool: &sqlx::PgPool) -> (Vec<PositionRow>, Vec<LastRow>) {
    let positions = sqlx::query_as(
        "SELECT tenant_id, device_id, fix_time, received_at, lat, lon, accuracy_m, speed_mps, protocol
         FROM positions ORDER BY device_id, fix_time",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let last = sqlx::query_as(
        "SELECT device_id, fix_time, lat, lon FROM last_positions ORDER BY device_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    (positions, last)
}

#[tokio::test]
async fn stores_each_distinct_fix_once_quarantines_rejects_publishes_and_replays() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let a = seed_device(&db.pool, &format!("t-{}", Uuid::new_v4())).await;
    let tenant = a.tenant_id;
    let dev_a = a.device_id;
    let dev_b = Uuid::new_v4();
    let rx = now_millis();
    let base = rx - 3_600_000;

    // Subscribe before anything is produced.
    let client = redis::Client::open(
        secrecy::ExposeSecret::expose_secret(&gps_runtime::testing::redis_args().redis_url)
            .to_owned(),
    )
    .unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(channel_for(tenant)).await.unwrap();

    let producer = producer(&kafka);
    let mut expected: BTreeSet<(Uuid, i64)> = BTreeSet::new();
    let mut input = Vec::new();
    // Device A: fixes 0..30 in three envelopes, the middle one sent twice, plus a repeat inside
    // an envelope, and the last envelope out of order (older fixes after newer ones).
    let first: Vec<Fix> = (10..20).map(|i| walk(base, i)).collect();
    let mut second: Vec<Fix> = (20..30).map(|i| walk(base, i)).collect();
    second.push(walk(base, 25));
    let late: Vec<Fix> = (0..10).rev().map(|i| walk(base, i)).collect();
    for i in 0..30 {
        expected.insert((dev_a, base + i * 1000));
    }
    input.push(envelope(tenant, dev_a, rx, first.clone()));
    input.push(envelope(tenant, dev_a, rx, second.clone()));
    input.push(envelope(tenant, dev_a, rx, second));
    input.push(envelope(tenant, dev_a, rx, late));
    input.push(envelope(tenant, dev_a, rx, first));

    // Rejects on device A, one per reason, after good fixes exist (for the speed check).
    let mut bad = vec![
        Fix::new(base + 40_000, 0.0, 0.0),
        Fix::new(base + 41_000, 95.0, 13.4),
        Fix::new(rx + 3_600_000, 52.5, 13.4),
        Fix::new(rx - GPS_ROLLOVER_MS, 52.5, 13.4),
    ];
    let mut poor = walk(base, 42);
    poor.accuracy_m = Some(50_000.0);
    bad.push(poor);
    // 4000 km a few seconds after the newest accepted fix.
    bad.push(Fix::new(base + 31_000, 12.0, 13.4));
    input.push(envelope(tenant, dev_a, rx, bad));

    // Device B: newest first, then older ones: the live position must stay at the newest.
    input.push(envelope(tenant, dev_b, rx, vec![walk(base, 100)]));
    input.push(envelope(
        tenant,
        dev_b,
        rx,
        (90..100).map(|i| walk(base, i)).collect(),
    ));
    for i in 90..=100 {
        expected.insert((dev_b, base + i * 1000));
    }
    produce(&producer, &kafka.fixes_topic, &input).await;
    produce_raw(
        &producer,
        &kafka.fixes_topic,
        "garbage",
        b"\x00not an envelope",
    )
    .await;
    let future_version = String::from_utf8(input[0].encode_as(gps_domain::EnvelopeFormat::Json))
        .unwrap()
        .replacen("{\"v\":1,", "{\"v\":9,", 1);
    produce_raw(
        &producer,
        &kafka.fixes_topic,
        "v9",
        future_version.as_bytes(),
    )
    .await;
    // An old JSON record among the binary ones (written before the binary encoding, or by an
    // ingest on INGEST_ENVELOPE_FORMAT=json) is stored like the others.
    let dev_c = Uuid::new_v4();
    let old = envelope(tenant, dev_c, rx, vec![walk(base, 50)]);
    let old_json = old.encode_as(gps_domain::EnvelopeFormat::Json);
    assert_eq!(old_json[0], b'{');
    produce_raw(&producer, &kafka.fixes_topic, &old.key(), &old_json).await;
    expected.insert((dev_c, base + 50_000));

    let running = Running::start(config(&db, &kafka, &group())).await;
    let want = expected.len() as i64;
    wait_until(
        std::time::Duration::from_secs(90),
        "every distinct fix stored",
        || async { count_positions(&db.pool).await >= want },
    )
    .await;

    // Exactly the distinct fixes.
    let stored: BTreeSet<(Uuid, i64)> = stored_keys(&db.pool).await.into_iter().collect();
    assert_eq!(stored, expected);
    // The newest by fix time, whatever the arrival order.
    let (_, last) = snapshot(&db.pool).await;
    let last: BTreeMap<Uuid, i64> = last
        .into_iter()
        .map(|(d, t, _, _)| (d, t.timestamp_millis()))
        .collect();
    assert_eq!(last[&dev_a], base + 29_000);
    assert_eq!(last[&dev_b], base + 100_000);

    // One reject per bad fix and per unreadable record, with the right reason.
    let rejects = read_rejects(&kafka, 8).await;
    let reasons: BTreeSet<RejectReason> = rejects.iter().map(|r| r.reason).collect();
    let want_reasons: BTreeSet<RejectReason> = [
        RejectReason::NullIsland,
        RejectReason::LatOutOfRange,
        RejectReason::FutureTime,
        RejectReason::WeekRollover,
        RejectReason::PoorAccuracy,
        RejectReason::ImpossibleSpeed,
        RejectReason::MalformedRecord,
        RejectReason::UnsupportedVersion,
    ]
    .into_iter()
    .collect();
    assert_eq!(reasons, want_reasons, "{rejects:#?}");
    let garbage = rejects
        .iter()
        .find(|r| r.reason == RejectReason::MalformedRecord)
        .unwrap();
    assert_eq!(garbage.raw_payload().unwrap(), b"\x00not an envelope");
    let speed = rejects
        .iter()
        .find(|r| r.reason == RejectReason::ImpossibleSpeed)
        .unwrap();
    assert_eq!(speed.device, Some(dev_a));
    assert_eq!(speed.fix.as_ref().unwrap().lat, 12.0);
    assert_eq!(speed.source.topic, kafka.fixes_topic);

    // Every stored fix reaches Redis once; duplicates do not.
    let mut live: Vec<(Uuid, i64)> = Vec::new();
    let mut messages = pubsub.on_message();
    while live.len() < expected.len() {
        let message = tokio::time::timeout(std::time::Duration::from_secs(30), messages.next())
            .await
            .expect("live messages arrive")
            .unwrap();
        let batch = LiveBatch::decode(message.get_payload_bytes()).unwrap();
        assert_eq!(batch.tenant, tenant);
        live.extend(batch.fixes.iter().map(|f| (f.device, f.fix.fix_time)));
    }
    let distinct: HashSet<(Uuid, i64)> = live.iter().copied().collect();
    assert_eq!(distinct.len(), live.len(), "a fix was published twice");
    assert_eq!(distinct.into_iter().collect::<BTreeSet<_>>(), expected);

    assert!(running.metric("gps_processor_fixes_duplicate_total").await >= 21.0);
    assert_eq!(
        running.metric("gps_processor_fixes_accepted_total").await,
        expected.len() as f64
    );
    running.stop().await;

    // Replay into an empty database: the same rows.
    let empty = TestDb::new().await;
    let replay_config = config(&empty, &kafka, &group());
    let summary = replay_all(&replay_config).await;
    assert_eq!(summary.stored, expected.len() as u64, "{summary}");
    // The envelopes, the garbage, the future version and the old JSON record.
    assert_eq!(summary.records, input.len() as u64 + 3);
    assert_eq!(snapshot(&empty.pool).await, snapshot(&db.pool).await);
    // Replaying again into the rebuilt database changes nothing.
    let again = replay_all(&replay_config).await;
    assert_eq!(again.stored, 0);
    assert_eq!(snapshot(&empty.pool).await, snapshot(&db.pool).await);
}
