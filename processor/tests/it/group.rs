//! Two instances in one consumer group share the partitions and store each fix once.

use crate::support::*;
use gps_domain::fix::{now_millis, Fix, Protocol};
use gps_domain::FixEnvelope;
use gps_runtime::testing::{kafka_topics, TestDb};
use std::collections::BTreeSet;
use uuid::Uuid;

#[tokio::test]
async fn two_instances_share_partitions_and_store_each_fix_once() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let group = group();
    let a = Running::start(config(&db, &kafka, &group)).await;
    let b = Running::start(config(&db, &kafka, &group)).await;
    let producer = producer(&kafka);
    let tenant = Uuid::new_v4();
    let rx = now_millis();
    let mut expected = BTreeSet::new();
    let mut wave = 0i64;
    // Keep producing waves (64 devices over all 8 partitions) until both instances have
    // processed records: then the group has split the partitions between them.
    wait_until(
        std::time::Duration::from_secs(120),
        "both instances to own partitions",
        || {
            wave += 1;
            let mut envelopes = Vec::new();
            for d in 0..64u128 {
                let device = Uuid::from_u128(d + 1 + (tenant.as_u128() & 0xffff_0000));
                let t = rx - 600_000 + wave * 1000;
                expected.insert((device, t));
                envelopes.push(FixEnvelope::new(
                    tenant,
                    device,
                    "d",
                    Protocol::Json,
                    rx,
                    vec![Fix::new(t, 1.0 + d as f64, 2.0)],
                ));
            }
            let (producer, topic, a, b) = (&producer, &kafka.fixes_topic, &a, &b);
            async move {
                produce_many(producer, topic, &envelopes).await;
                tokio::time::sleep(std::time::Duration::from_millis(400)).await;
                a.metric("gps_processor_records_total").await > 0.0
                    && b.metric("gps_processor_records_total").await > 0.0
            }
        },
    )
    .await;
    let want = expected.len() as i64;
    wait_until(
        std::time::Duration::from_secs(60),
        "every fix stored",
        || async { count_positions(&db.pool).await >= want },
    )
    .await;
    let stored: BTreeSet<(Uuid, i64)> = stored_keys(&db.pool).await.into_iter().collect();
    assert_eq!(stored, expected);
    let accepted = a.metric("gps_processor_fixes_accepted_total").await
        + b.metric("gps_processor_fixes_accepted_total").await;
    assert_eq!(
        accepted,
        expected.len() as f64,
        "each fix newly stored exactly once"
    );
    a.stop().await;
    b.stop().await;
}
