//! SIGKILL in the middle of a stream: the restarted processor stores every fix exactly once.

use crate::support::*;
use gps_domain::fix::{now_millis, Fix, Protocol};
use gps_domain::FixEnvelope;
use gps_runtime::testing::{kafka_topics, TestDb};
use std::collections::BTreeSet;
use uuid::Uuid;

#[tokio::test]
async fn sigkill_mid_stream_then_restart_stores_every_fix_exactly_once() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let group = group();
    let tenant = Uuid::new_v4();
    let devices: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    let rx = now_millis();
    let base = rx - 600_000;
    let mut envelopes = Vec::new();
    let mut expected = BTreeSet::new();
    // 40 devices x 50 envelopes x 10 fixes = 20 000 fixes, each device walking slowly.
    for round in 0..50i64 {
        for (d, device) in devices.iter().enumerate() {
            let fixes: Vec<Fix> = (0..10i64)
                .map(|i| {
                    let n = round * 10 + i;
                    expected.insert((*device, base + n * 500));
                    Fix::new(base + n * 500, 10.0 + d as f64, 20.0 + n as f64 * 1e-5)
                })
                .collect();
            envelopes.push(FixEnvelope::new(
                tenant,
                *device,
                "d",
                Protocol::Udp,
                rx,
                fixes,
            ));
        }
    }
    let producer = producer(&kafka);
    // The first half before the start, the rest while the first process runs.
    let (head, tail) = envelopes.split_at(envelopes.len() / 2);
    produce_many(&producer, &kafka.fixes_topic, head).await;

    let mut first = Process::spawn(&db, &kafka, &group, &[]);
    let tail = tail.to_vec();
    let topic = kafka.fixes_topic.clone();
    let feeder = tokio::spawn(async move {
        for chunk in tail.chunks(100) {
            produce_many(&producer, &topic, chunk).await;
        }
    });
    wait_until(
        std::time::Duration::from_secs(120),
        "the first process to store some fixes",
        || async { count_positions(&db.pool).await >= 2_000 },
    )
    .await;
    first.kill();
    let at_kill = count_positions(&db.pool).await;
    feeder.await.unwrap();
    assert!(
        at_kill < expected.len() as i64,
        "the kill came after everything was stored; the test proves nothing"
    );

    let second = Process::spawn(&db, &kafka, &group, &[]);
    let want = expected.len() as i64;
    wait_until(
        std::time::Duration::from_secs(180),
        "every fix stored after the restart",
        || async { count_positions(&db.pool).await >= want },
    )
    .await;
    drop(second);
    let stored: Vec<(Uuid, i64)> = stored_keys(&db.pool).await;
    assert_eq!(stored.len(), expected.len(), "no fix lost, none doubled");
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), expected);
}
