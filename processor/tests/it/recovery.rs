//! Self-healing consumers with real processes (issue 18): two processors share the group, one
//! is SIGKILLed and the survivor takes its partitions over within 30 s; a processor restarted
//! in place after a SIGKILL recovers by itself; every fix stored exactly once in both. On
//! tansu 0.6 the broker never hands a dead member's partitions on, so these fail without the
//! watchdog; on Apache Kafka the group does it after the session timeout.

use crate::support::*;
use gps_domain::fix::{now_millis, Fix, Protocol};
use gps_domain::FixEnvelope;
use gps_runtime::config::KafkaArgs;
use gps_runtime::testing::{kafka_topics, TestDb};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The bound the issue sets for a take-over.
const TAKE_OVER: Duration = Duration::from_secs(30);

/// A flag the feeder polls.
type Stop = Arc<std::sync::atomic::AtomicBool>;

/// Produce a wave of one fix for each of 64 devices (every partition) every 200 ms until
/// `stop`; the keys produced (all acknowledged) go into `expected`.
fn feed(
    kafka: &KafkaArgs,
    expected: Arc<Mutex<BTreeSet<(Uuid, i64)>>>,
    stop: Stop,
) -> tokio::task::JoinHandle<()> {
    let producer = producer(kafka);
    let topic = kafka.fixes_topic.clone();
    let tenant = Uuid::new_v4();
    let devices: Vec<Uuid> = (0..64).map(|_| Uuid::new_v4()).collect();
    let base = now_millis() - 3_600_000;
    tokio::spawn(async move {
        let mut wave = 0i64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let t = base + wave * 1000;
            let rx = now_millis();
            let envelopes: Vec<FixEnvelope> = devices
                .iter()
                .enumerate()
                .map(|(d, device)| {
                    FixEnvelope::new(
                        tenant,
                        *device,
                        "d",
                        Protocol::Json,
                        rx,
                        vec![Fix::new(t, 10.0 + d as f64 * 0.01, 20.0)],
                    )
                })
                .collect();
            produce_many(&producer, &topic, &envelopes).await;
            expected
                .lock()
                .unwrap()
                .extend(devices.iter().map(|d| (*d, t)));
            wave += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Stop the feeder, wait until everything it produced is stored, and check exactly once.
async fn stop_and_check_exactly_once(
    db: &TestDb,
    feeder: tokio::task::JoinHandle<()>,
    stop: Stop,
    expected: Arc<Mutex<BTreeSet<(Uuid, i64)>>>,
) {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.await.unwrap();
    let expected = expected.lock().unwrap().clone();
    let want = expected.len() as i64;
    wait_until(Duration::from_secs(90), "every fed fix stored", || async {
        count_positions(&db.pool).await >= want
    })
    .await;
    let stored: Vec<(Uuid, i64)> = stored_keys(&db.pool).await;
    assert_eq!(stored.len(), expected.len(), "no fix lost, none doubled");
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), expected);
}

#[tokio::test]
async fn two_processors_one_sigkilled_the_survivor_takes_over_its_partitions() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let group = group();
    let mut a = Process::spawn(&db, &kafka, &group, &[]);
    wait_until(
        Duration::from_secs(60),
        "a to own every partition",
        || async { a.metric("gps_processor_assigned_partitions").await == 8.0 },
    )
    .await;
    let b = Process::spawn(&db, &kafka, &group, &[]);
    wait_until(
        Duration::from_secs(60),
        "a and b to split the partitions",
        || async {
            let (x, y) = (
                a.metric("gps_processor_assigned_partitions").await,
                b.metric("gps_processor_assigned_partitions").await,
            );
            x > 0.0 && y > 0.0 && x + y == 8.0
        },
    )
    .await;

    let expected = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Stop::default();
    let feeder = feed(&kafka, expected.clone(), stop.clone());
    wait_until(Duration::from_secs(60), "both to store fixes", || async {
        a.metric("gps_processor_fixes_accepted_total").await > 0.0
            && b.metric("gps_processor_fixes_accepted_total").await > 0.0
    })
    .await;

    a.kill();
    let killed = Instant::now();
    wait_until(TAKE_OVER, "the survivor to own every partition", || async {
        b.metric("gps_processor_assigned_partitions").await == 8.0
    })
    .await;
    let took = killed.elapsed();
    eprintln!(
        "take-over after SIGKILL: {:.1} s, recoveries {}",
        took.as_secs_f64(),
        b.metric("gps_processor_consumer_recoveries_total").await
    );

    stop_and_check_exactly_once(&db, feeder, stop, expected).await;
    // Caught up: no lag left anywhere in the group, nothing unstored, and it is ready.
    wait_until(
        Duration::from_secs(30),
        "the group's lag to reach 0",
        || async {
            b.metric("gps_processor_group_lag").await == 0.0
                && b.metric("gps_processor_oldest_unstored_age_seconds").await == 0.0
        },
    )
    .await;
    assert!(b.metric("gps_processor_freshness_seconds").await > 0.0);
    assert_eq!(b.metric("gps_processor_stalled_partitions").await, 0.0);
    let ready = reqwest::get(format!("{}/readyz", b.base)).await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
}

#[tokio::test]
async fn a_processor_restarted_in_place_after_sigkill_recovers_by_itself() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let group = group();
    let expected = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Stop::default();
    let mut first = Process::spawn(&db, &kafka, &group, &[]);
    let feeder = feed(&kafka, expected.clone(), stop.clone());
    wait_until(
        Duration::from_secs(60),
        "the first process to store fixes",
        || async { first.metric("gps_processor_fixes_accepted_total").await > 0.0 },
    )
    .await;
    first.kill();
    let killed = Instant::now();
    // Restarted a moment later, as a supervisor does: the dead member still counts then.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = Process::spawn(&db, &kafka, &group, &[]);
    wait_until(
        TAKE_OVER,
        "the restarted process to own every partition",
        || async { second.metric("gps_processor_assigned_partitions").await == 8.0 },
    )
    .await;
    eprintln!(
        "restart in place: every partition owned {:.1} s after the SIGKILL, recoveries {}",
        killed.elapsed().as_secs_f64(),
        second
            .metric("gps_processor_consumer_recoveries_total")
            .await
    );
    stop_and_check_exactly_once(&db, feeder, stop, expected).await;
}

#[tokio::test]
async fn a_kafka_property_librdkafka_does_not_know_is_refused_naming_it() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let (mut command, _) = Process::command(
        &db,
        &kafka,
        &group(),
        &[
            ("KAFKA_PROPERTY_bogus.property", "1"),
            ("RUST_LOG", "error"),
        ],
    );
    let output = tokio::task::spawn_blocking(move || {
        command
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("processor binary runs")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("KAFKA_PROPERTY_bogus.property"), "{stderr}");
    assert!(stderr.contains("\"bogus.property\""), "{stderr}");
    assert!(
        !stderr.contains("cannot reach"),
        "not a reachability error: {stderr}"
    );
}
