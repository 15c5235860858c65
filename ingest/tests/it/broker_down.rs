//! Broker stopped: the device gets 503 + Retry-After within the delivery timeout, never a hang,
//! a false 202 or a silent drop, and every fix acknowledged before the outage is in the topic.
//! Runs against a private tansu so the shared broker is never touched.
//!
//! Two outages: the broker frozen (SIGSTOP, connections hang) and the broker killed (SIGKILL)
//! and restarted on its durable storage. In both, once it is back, the same request is
//! acknowledged. This relies on ingest replacing its idempotent producer after a timed-out
//! record: letting librdkafka bump the old producer's epoch instead makes tansu 0.6's storage
//! panic ("more or less than one row") and stop serving.

use crate::support::{read_fixes, Ingest, PrivateBroker};
use serde_json::json;
use std::time::{Duration, Instant};

/// The producer's delivery timeout in these tests.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The request timeout: an answer only this late was cut off by the HTTP layer (a hang), not
/// given by the producer's delivery timeout. The time bounds below are deadlines, this far from
/// the delivery timeout so that a loaded machine cannot trip them.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Ingest against a private broker, with one fix acknowledged before anything goes wrong.
async fn ingest_on_private_broker() -> (Ingest, PrivateBroker) {
    let (ingest, broker) = Ingest::start_on_private_broker(|c| {
        c.producer.delivery_timeout_ms = DELIVERY_TIMEOUT.as_millis() as u64;
        c.limits.request_timeout_ms = REQUEST_TIMEOUT.as_millis() as u64;
    })
    .await;
    assert_eq!(post(&ingest, 1_714_557_600_000).await, 202);
    (ingest, broker)
}

/// The broker frozen after one acknowledged fix.
async fn outage() -> (Ingest, PrivateBroker) {
    let (ingest, broker) = ingest_on_private_broker().await;
    broker.pause();
    (ingest, broker)
}

async fn post(ingest: &Ingest, t: i64) -> u16 {
    ingest
        .client
        .post(ingest.url("/v1/fixes"))
        .bearer_auth(&ingest.device.token)
        .json(&json!({"time": t, "lat": 52.5, "lon": 13.4}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn broker_down_gives_503_with_retry_after_and_loses_nothing_acknowledged() {
    let (ingest, broker) = outage().await;
    for attempt in 0..3 {
        let started = Instant::now();
        let down = ingest
            .client
            .post(ingest.url("/v1/fixes"))
            .bearer_auth(&ingest.device.token)
            .json(&json!({"time": 1_714_557_601_000_i64 + attempt, "lat": 52.5, "lon": 13.4}))
            .send()
            .await
            .unwrap();
        let waited = started.elapsed();
        assert_eq!(down.status(), 503, "attempt {attempt}");
        let retry: u64 = down.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1);
        assert!(
            waited < REQUEST_TIMEOUT,
            "answered after {waited:?}: the request hung until the request timeout"
        );
    }
    assert!(
        ingest
            .metric("gps_ingest_fixes_refused_total{protocol=\"json\",reason=\"unavailable\"}")
            .await
            >= 3.0
    );
    broker.resume();
    let envelopes = read_fixes(&ingest.kafka, 1).await;
    let times: Vec<i64> = envelopes
        .iter()
        .flat_map(|e| e.fixes.iter().map(|f| f.fix_time))
        .collect();
    assert!(
        times.contains(&1_714_557_600_000),
        "the acknowledged fix is in the topic: {times:?}"
    );
    ingest.stop().await;
}

#[tokio::test]
async fn after_the_broker_returns_the_same_request_succeeds() {
    let (ingest, broker) = outage().await;
    assert_eq!(post(&ingest, 1_714_557_601_000).await, 503);
    broker.resume();
    retry_until_acknowledged(&ingest, &broker, 1_714_557_601_000).await;
    assert_in_topic(&ingest, &[1_714_557_600_000, 1_714_557_601_000]).await;
    ingest.stop().await;
}

/// The broker process dies (SIGKILL) and is started again on the same durable storage: while it
/// is gone the answer is 503, once it is back the same request is acknowledged, and both the fix
/// acknowledged before the crash and the retried one are in the topic.
#[tokio::test]
async fn after_a_broker_crash_and_restart_the_same_request_succeeds() {
    let (ingest, mut broker) = ingest_on_private_broker().await;
    broker.kill();
    let started = Instant::now();
    assert_eq!(post(&ingest, 1_714_557_601_000).await, 503);
    let waited = started.elapsed();
    assert!(
        waited < REQUEST_TIMEOUT,
        "answered after {waited:?}: the request hung until the request timeout"
    );
    broker.spawn().await;
    retry_until_acknowledged(&ingest, &broker, 1_714_557_601_000).await;
    assert_in_topic(&ingest, &[1_714_557_600_000, 1_714_557_601_000]).await;
    ingest.stop().await;
}

/// Send the same fix until it is acknowledged: 503 meanwhile and nothing else, within 60 s.
async fn retry_until_acknowledged(ingest: &Ingest, broker: &PrivateBroker, t: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = post(ingest, t).await;
        if status == 202 {
            return;
        }
        assert_eq!(
            status, 503,
            "while recovering the answer is 503, nothing else"
        );
        assert!(
            Instant::now() < deadline,
            "ingest never recovered after the broker came back; broker log:\n{}",
            broker.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every fix time in `times` is in the fixes topic.
async fn assert_in_topic(ingest: &Ingest, times: &[i64]) {
    let envelopes = read_fixes(&ingest.kafka, times.len()).await;
    let found: Vec<i64> = envelopes
        .iter()
        .flat_map(|e| e.fixes.iter().map(|f| f.fix_time))
        .collect();
    for t in times {
        assert!(found.contains(t), "{t} missing from the topic: {found:?}");
    }
}
