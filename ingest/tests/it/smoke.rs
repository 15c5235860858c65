//! The service starts against the real stack and serves its operational endpoints.

use gps_runtime::shutdown::Shutdown;
use gps_runtime::testing::{assert_serves_ops_then_stops, kafka_topics, TestDb};

#[tokio::test]
async fn serves_health_readiness_and_metrics() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    let mut config = <ingest::Config as clap::Parser>::parse_from(["ingest"]);
    config.database = db.args.clone();
    config.kafka = kafka;
    let shutdown = Shutdown::new();
    let server = tokio::spawn(ingest::run(config, http, udp, shutdown.clone()));

    assert_serves_ops_then_stops(addr, server, shutdown, &["postgres", "kafka"]).await;
}
