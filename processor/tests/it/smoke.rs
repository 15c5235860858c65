//! The service starts against the real stack and serves its operational endpoints.

use gps_runtime::shutdown::Shutdown;
use gps_runtime::testing::{assert_serves_ops_then_stops, TestDb};

#[tokio::test]
async fn serves_health_readiness_and_metrics() {
    let db = TestDb::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let kafka = gps_runtime::testing::kafka_topics().await;
    let config = crate::support::config(&db, &kafka, &crate::support::group());
    let shutdown = Shutdown::new();
    let server = tokio::spawn(processor::run(config, listener, shutdown.clone()));

    assert_serves_ops_then_stops(addr, server, shutdown, &["postgres", "kafka"]).await;
}
