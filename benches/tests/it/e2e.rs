//! A short, low-rate run through ingest and the processor started in-process (port 0, a fresh
//! database and fresh topics): every acknowledged fix must be stored exactly once and every
//! deliberately bad fix quarantined.

use benches::run::{self, RunConfig, RunEnv};
use benches::sim::FaultRates;
use benches::wire::Mode;
use gps_runtime::shutdown::Shutdown;
use gps_runtime::testing::{kafka_topics, wait_until_ok, TestDb};
use std::time::Duration;

#[tokio::test]
async fn short_run_loses_nothing() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let shutdown = Shutdown::new();

    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ingest_addr = http.local_addr().unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let mut ingest_config = <ingest::Config as clap::Parser>::parse_from(["ingest"]);
    ingest_config.database = db.args.clone();
    ingest_config.kafka = kafka.clone();
    let mut ingest = tokio::spawn(ingest::run(ingest_config, http, udp, shutdown.clone()));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut processor_config = <processor::Config as clap::Parser>::parse_from(["processor"]);
    processor_config.database = db.args.clone();
    processor_config.kafka = kafka.clone();
    processor_config.group_id = format!("test-loadgen-{}", gps_runtime::testing::unique_suffix());
    let processor = tokio::spawn(processor::run(processor_config, listener, shutdown.clone()));

    wait_until_ok(
        &reqwest::Client::new(),
        &format!("http://{ingest_addr}/readyz"),
        &mut ingest,
        Duration::from_secs(30),
    )
    .await;

    let config = RunConfig {
        mode: Mode::HttpBatch,
        ingest_url: format!("http://{ingest_addr}"),
        udp_addr,
        fanout_url: "ws://127.0.0.1:1/v1/live".into(),
        devices: 8,
        workers: 4,
        rate: Some(400.0),
        duration: Duration::from_secs(3),
        batch: 10,
        seed: 42,
        // Enough faults to see each kind in ~1200 fixes.
        faults: FaultRates {
            duplicate: 0.02,
            late: 0.02,
            bad: 0.01,
        },
        subscribers: 0,
        probe_devices: 4,
        poll_interval: Duration::from_millis(25),
        settle_timeout: Duration::from_secs(15),
        check_quarantine: true,
        progress: false,
        cleanup: false,
    };
    let env = RunEnv {
        pool: db.pool.clone(),
        kafka: kafka.clone(),
        jwt_secret: None,
    };
    let report = run::run(config, env).await.expect("run completes");
    let loss = &report.loss;
    assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
    assert!(loss.acked > 500, "{loss:?}");
    assert!(loss.bad_sent > 0, "{loss:?}");
    assert!(loss.passed(), "{loss:?}");
    assert!(report.ingest_to_db.count > 0, "latency was measured");

    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(15), ingest).await;
    let _ = tokio::time::timeout(Duration::from_secs(15), processor).await;
}
