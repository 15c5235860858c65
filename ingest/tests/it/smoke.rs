//! The service starts against the real stack and serves its operational endpoints.

use gps_runtime::shutdown::Shutdown;
use gps_runtime::testing::{assert_ops_endpoints, kafka_topics, wait_until_ok, TestDb};
use std::time::Duration;

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
        .expect("ingest stops on shutdown")
        .unwrap()
        .unwrap();
}
