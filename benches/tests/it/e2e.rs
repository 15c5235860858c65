//! A short, low-rate run through ingest and the processor started in-process (port 0, a fresh
//! database and fresh topics): every acknowledged fix must be stored exactly once and every
//! deliberately bad fix quarantined.

use crate::support::Pipeline;
use benches::run::{self, RunConfig, RunEnv};
use benches::sim::FaultRates;
use benches::wire::Mode;
use std::time::Duration;

#[tokio::test]
async fn short_run_loses_nothing() {
    let pipeline = Pipeline::start(false).await;

    let config = RunConfig {
        mode: Mode::HttpBatch,
        ingest_url: format!("http://{}", pipeline.ingest_addr),
        udp_addr: pipeline.udp_addr,
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
        pool: pipeline.db.pool.clone(),
        kafka: pipeline.kafka.clone(),
        jwt_secret: None,
    };
    let report = run::run(config, env).await.expect("run completes");
    let loss = &report.loss;
    assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
    assert!(loss.acked > 500, "{loss:?}");
    assert!(loss.bad_sent > 0, "{loss:?}");
    assert!(loss.passed(), "{loss:?}");
    assert!(report.ingest_to_db.count > 0, "latency was measured");

    pipeline.stop().await;
}
