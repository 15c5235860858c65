//! The service starts against the real stack and serves its operational endpoints.

use gps_runtime::shutdown::Shutdown;
use gps_runtime::testing::{assert_ops_endpoints, wait_until_ok, TestDb};
use std::time::Duration;

#[tokio::test]
async fn serves_health_readiness_and_metrics() {
    let db = TestDb::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let kafka = gps_runtime::testing::kafka_topics().await;
    let config = crate::support::config(&db, &kafka, &crate::support::group());
    let shutdown = Shutdown::new();
    let server = tokio::spawn(processor::run(config, listener, shutdown.clone()));

    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    wait_until_ok(
        &client,
        &format!("{base}/healthz"),
        &server,
        Duration::from_secs(10),
    )
    .await;
    assert_ops_endpoints(&client, &base, &["postgres", "kafka"]).await;

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("processor stops on shutdown")
        .unwrap()
        .unwrap();
}
