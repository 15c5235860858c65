//! The delivery worker against a real receiver: retries until it recovers, signatures,
//! redelivery with the same event id, SSRF refusals at delivery time, the response cap, two
//! workers sharing the outbox, disabled webhooks.

use crate::support::{
    delivery, event_for, fast_args, outbox, settled, webhook, webhook_of, Receiver, Reply, Worker,
    SECRET,
};
use gps_runtime::testing::{wait_until, TestDb};
use gps_webhooks::signing;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn a_receiver_that_fails_then_times_out_then_recovers_gets_the_event_delivered_once() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(vec![
        Reply::Status(500),
        Reply::Hang(Duration::from_secs(5)),
    ])
    .await;
    let (tenant, hook) = webhook(&db, &receiver.url).await;
    let (event, id) = event_for(&db, tenant, hook).await;
    let worker = Worker::start(&db, fast_args(true));

    let row = settled(&db, id, "delivered").await;
    assert_eq!(row.attempts, 3, "500, a timeout, then 200: {row:?}");
    assert_eq!(row.response_status, Some(200));
    assert_eq!(row.error, None);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "no request after the delivery");
    for request in &requests {
        // The same event id on every attempt: the receiver's idempotency key.
        assert_eq!(request.header(signing::EVENT_ID_HEADER), event.to_string());
        assert_eq!(request.header(signing::DELIVERY_HEADER), id.to_string());
        assert_eq!(request.header(signing::EVENT_TYPE_HEADER), "overspeed");
        assert_eq!(request.header("content-type"), "application/json");
        assert!(
            signing::verify(
                SECRET,
                &request.header(signing::TIMESTAMP_HEADER),
                &request.body,
                &request.header(signing::SIGNATURE_HEADER),
                now(),
                300,
            ),
            "the signature verifies with the webhook's secret"
        );
        assert!(!signing::verify(
            "another-secret-of-16+",
            &request.header(signing::TIMESTAMP_HEADER),
            &request.body,
            &request.header(signing::SIGNATURE_HEADER),
            now(),
            300,
        ));
    }
    // The body is the event as the gps.events topic carries it.
    let body: Value = serde_json::from_slice(&requests[2].body).unwrap();
    assert_eq!(body["id"], event.to_string());
    assert_eq!(body["tenant_id"], tenant.to_string());
    assert_eq!(body["type"], "overspeed");
    assert_eq!(body["fix_time"], 1_796_032_800_123_i64);
    assert_eq!(body["details"]["speed_mps"], 31.5);
    let parsed: gps_domain::events::Event = serde_json::from_slice(&requests[2].body).unwrap();
    assert_eq!(parsed.id, event);
    assert_eq!(worker.attempts("retried"), 2);
    assert_eq!(worker.attempts("delivered"), 1);
    assert_eq!(worker.attempts("failed"), 0);
    worker.stop().await;
}

#[tokio::test]
async fn failures_are_logged_then_final_and_a_redelivery_resends_the_same_event() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(vec![Reply::Status(503), Reply::Status(502)]).await;
    let (tenant, hook) = webhook(&db, &receiver.url).await;
    let (event, id) = event_for(&db, tenant, hook).await;
    let mut args = fast_args(true);
    args.max_attempts = 2;
    let worker = Worker::start(&db, args);

    let row = settled(&db, id, "failed").await;
    assert_eq!(row.attempts, 2);
    assert_eq!(row.response_status, Some(502), "the last attempt's status");
    assert_eq!(row.error.as_deref(), Some("receiver answered 502"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.requests().len(), 2, "no attempt after the last");
    assert_eq!(worker.attempts("failed"), 1);

    // Another tenant's id, or another webhook's, moves nothing.
    let (other_tenant, other_hook) = webhook(&db, &receiver.url).await;
    assert!(!gps_webhooks::redeliver(&db.pool, other_tenant, hook, id)
        .await
        .unwrap());
    assert!(
        !gps_webhooks::redeliver(&db.pool, other_tenant, other_hook, id)
            .await
            .unwrap()
    );
    assert!(!gps_webhooks::redeliver(&db.pool, tenant, other_hook, id)
        .await
        .unwrap());
    assert!(gps_webhooks::redeliver(&db.pool, tenant, hook, id)
        .await
        .unwrap());
    let row = settled(&db, id, "delivered").await;
    assert_eq!(row.attempts, 1, "a fresh attempt budget");
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(
        requests[0].header(signing::EVENT_ID_HEADER),
        requests[2].header(signing::EVENT_ID_HEADER)
    );
    assert_eq!(
        requests[2].header(signing::EVENT_ID_HEADER),
        event.to_string()
    );
    assert_eq!(
        requests[0].body, requests[2].body,
        "the same event, byte for byte"
    );

    // A delivered one can be redelivered too.
    assert!(gps_webhooks::redeliver(&db.pool, tenant, hook, id)
        .await
        .unwrap());
    wait_until(Duration::from_secs(10), "a fourth request", || async {
        receiver.requests().len() == 4
    })
    .await;
    settled(&db, id, "delivered").await;
    worker.stop().await;
}

#[tokio::test]
async fn ssrf_urls_are_refused_at_delivery_and_nothing_is_sent() {
    let db = TestDb::new().await;
    // A real receiver on loopback, reached by name: refused because loopback is not allowed.
    let receiver = Receiver::start(vec![]).await;
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let (tenant, metadata) = webhook(&db, "http://169.254.169.254/latest/meta-data/").await;
    let private = webhook_of(&db, tenant, "http://10.0.0.1/hook").await;
    let mapped = webhook_of(&db, tenant, "http://[::ffff:7f00:1]:9/hook").await;
    let local = webhook_of(&db, tenant, &by_name).await;
    let literal = webhook_of(&db, tenant, &receiver.url).await;
    let mut ids = Vec::new();
    for hook in [metadata, private, mapped, local, literal] {
        ids.push(event_for(&db, tenant, hook).await.1);
    }
    let mut args = fast_args(false);
    args.max_attempts = 1;
    let worker = Worker::start(&db, args);
    for (id, expected) in ids.iter().zip([
        "169.254.169.254 is a link_local address",
        "10.0.0.1 is a private address",
        "is a loopback address",
        "localhost resolves only to refused addresses (loopback)",
        "127.0.0.1 is a loopback address",
    ]) {
        let row = settled(&db, *id, "failed").await;
        let error = row.error.unwrap_or_default();
        assert!(error.starts_with("refused: "), "{error}");
        assert!(error.contains(expected), "{error} / {expected}");
        assert_eq!(row.response_status, None);
    }
    assert!(
        receiver.requests().is_empty(),
        "no request reached the receiver"
    );
    worker.stop().await;
}

#[tokio::test]
async fn an_endless_response_is_read_up_to_the_cap_only() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(vec![Reply::Endless]).await;
    let (tenant, hook) = webhook(&db, &receiver.url).await;
    let (_, id) = event_for(&db, tenant, hook).await;
    let mut args = fast_args(true);
    // Reading the whole body would run into the timeout and fail the attempt.
    args.timeout_ms = 5_000;
    args.max_response_bytes = 1024;
    let worker = Worker::start(&db, args);
    let row = settled(&db, id, "delivered").await;
    assert_eq!(row.attempts, 1, "{row:?}");
    assert_eq!(row.error, None);
    worker.stop().await;
}

#[tokio::test]
async fn two_workers_share_the_outbox_and_deliver_each_event_once() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(vec![]).await;
    let (tenant, hook) = webhook(&db, &receiver.url).await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(event_for(&db, tenant, hook).await.1);
    }
    let mut args = fast_args(true);
    args.batch = 3;
    args.concurrency = 2;
    let (a, b) = (Worker::start(&db, args.clone()), Worker::start(&db, args));
    for id in &ids {
        settled(&db, *id, "delivered").await;
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for request in receiver.requests() {
        *seen
            .entry(request.header(signing::EVENT_ID_HEADER))
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 40);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert_eq!(a.attempts("delivered") + b.attempts("delivered"), 40);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_disabled_webhook_keeps_its_deliveries_pending_and_a_missing_event_fails() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(vec![]).await;
    let (tenant, hook) = webhook(&db, &receiver.url).await;
    let (_, id) = event_for(&db, tenant, hook).await;
    sqlx::query("UPDATE webhooks SET disabled = true WHERE id = $1")
        .bind(hook)
        .execute(&db.pool)
        .await
        .unwrap();
    let gone = outbox(&db, tenant, hook, uuid::Uuid::new_v4()).await;
    let worker = Worker::start(&db, fast_args(true));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(delivery(&db, id).await.status, "pending");
    assert!(receiver.requests().is_empty());
    sqlx::query("UPDATE webhooks SET disabled = false WHERE id = $1")
        .bind(hook)
        .execute(&db.pool)
        .await
        .unwrap();
    settled(&db, id, "delivered").await;
    let row = settled(&db, gone, "failed").await;
    assert_eq!(row.error.as_deref(), Some("the event no longer exists"));
    assert_eq!(row.attempts, 1);
    assert_eq!(receiver.requests().len(), 1);
    worker.stop().await;
}
