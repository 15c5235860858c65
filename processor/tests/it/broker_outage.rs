//! The broker gone for longer than a producer's `message.timeout.ms` while rejects are being
//! quarantined: once it is back, every reject still reaches the quarantine topic and the same
//! processor carries on, without a restart.
//!
//! On tansu 0.6 an idempotent producer whose record librdkafka timed out bumps its epoch and
//! wedges the broker for good (docs/operations.md, "Known broker defects"): the reject sink must
//! replace its producer at its own deadline instead. Runs against a private tansu so the shared
//! broker is never touched. Slow: about 50 s, most of it the outage.

use crate::support::*;
use gps_runtime::config::KafkaArgs;
use gps_runtime::testing::{PrivateBroker, TestDb};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

/// Longer than the reject producer's old `message.timeout.ms` (30 s) and than its current one
/// (the processor's deadline plus grace, 25 s): without the replacement, librdkafka times the
/// in-flight rejects out and bumps the producer's epoch while the broker is away.
const OUTAGE: Duration = Duration::from_secs(35);

/// Unreadable records waiting when the processor starts.
const BACKLOG: u32 = 10_000;

/// Where a fixes record is: (partition, offset).
type Source = (i32, i64);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_in_flight_through_a_long_broker_outage_all_reach_the_quarantine_topic() {
    let mut broker = PrivateBroker::start().await.expect(
        "tansu binary found: run `dev/stack up` (it builds and caches the broker) or set TANSU_BIN",
    );
    let mut kafka = KafkaArgs::local();
    kafka.brokers = broker.brokers();
    gps_runtime::kafka::ensure_standard_topics(&kafka)
        .await
        .unwrap();
    let db = TestDb::new().await;
    // A backlog of unreadable records, quarantined in small batches: when the broker freezes
    // the processor is mid-backlog, with rejects sent and never answered and more fetched.
    let feeder = feeder_producer(&kafka);
    let acked = Mutex::new(BTreeSet::new());
    feed(&feeder, &kafka.fixes_topic, 0..BACKLOG, &acked).await;
    let mut config = config(&db, &kafka, &group());
    config.batch.max_fixes = 100;
    let processor = Running::start(config).await;
    wait_until(Duration::from_secs(30), "rejects to flow", || async {
        processor.metric("gps_processor_fixes_rejected_total").await >= 300.0
    })
    .await;
    broker.pause();
    let at_freeze = processor.metric("gps_processor_fixes_rejected_total").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.kill();
    tokio::time::sleep(OUTAGE - Duration::from_secs(2)).await;
    broker.spawn().await;
    assert!(
        processor.metric("gps_processor_batch_retries_total").await >= 1.0,
        "no batch failed during the outage: it did not catch rejects in flight ({at_freeze} of \
         {BACKLOG} quarantined at the freeze)"
    );

    // Everything acknowledged before the outage, and what arrives after it, is quarantined by
    // the same processor.
    feed(&feeder, &kafka.fixes_topic, BACKLOG..BACKLOG + 20, &acked).await;
    let all = acked.into_inner().unwrap();
    assert!(all.len() > BACKLOG as usize, "{} acked", all.len());
    await_rejects(&kafka, &all, &broker).await;
    assert!(
        !processor.task.is_finished(),
        "the processor stopped during the outage"
    );
    processor.stop().await;
}

/// A plain (not idempotent) producer for the test's own records: its timed-out records must not
/// wedge the broker themselves.
fn feeder_producer(kafka: &KafkaArgs) -> FutureProducer {
    gps_runtime::kafka::client_config(kafka, "test-feeder")
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produce one unreadable record per number in `keys`, concurrently; the positions of those
/// the broker acknowledged go to `acked` (a record not acknowledged need not be quarantined).
async fn feed(
    producer: &FutureProducer,
    topic: &str,
    keys: std::ops::Range<u32>,
    acked: &Mutex<BTreeSet<Source>>,
) {
    let keys: Vec<String> = keys.map(|k| format!("garbage-{k}")).collect();
    let sends = keys.iter().map(|key| {
        producer.send(
            FutureRecord::to(topic).key(key).payload("not an envelope"),
            Duration::from_secs(30),
        )
    });
    for delivery in futures::future::join_all(sends).await.into_iter().flatten() {
        acked
            .lock()
            .unwrap()
            .insert((delivery.partition, delivery.offset));
    }
}

/// Read the quarantine topic from the beginning until a reject of every record in `expected`
/// was seen (duplicates allowed: at least once), or panic after 60 s with the broker's log.
async fn await_rejects(kafka: &KafkaArgs, expected: &BTreeSet<Source>, broker: &PrivateBroker) {
    let consumer = rejects_consumer(kafka);
    let mut missing = expected.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !missing.is_empty() {
        let Ok(message) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            panic!(
                "{} of {} rejects never arrived; broker log:\n{}",
                missing.len(),
                expected.len(),
                broker.log_tail(40)
            );
        };
        // A consumer error (the broker not answering) is waited out until the deadline.
        let Ok(message) = message else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let reject = gps_domain::reject::RejectRecord::decode(message.payload().unwrap()).unwrap();
        missing.remove(&(reject.source.partition, reject.source.offset));
    }
}
