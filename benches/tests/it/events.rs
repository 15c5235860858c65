//! `loadgen events` through ingest, the processor and fanout started in-process (port 0, a fresh
//! database and fresh topics): a short compared run, without fences and then with a few
//! hundred, must store every acknowledged fix, raise fence events only where there are fences,
//! and deliver event frames whose fixes it sent (so the fix-to-event latency is measured).

use crate::support::{Pipeline, JWT_SECRET};
use benches::events_load::{self, EventsConfig};
use benches::run::{RunConfig, RunEnv};
use benches::sim::FaultRates;
use benches::wire::Mode;
use secrecy::SecretString;
use std::time::Duration;

#[tokio::test]
async fn compared_run_counts_events_and_measures_fix_to_event() {
    let pipeline = Pipeline::start(true).await;
    let fanout_addr = pipeline.fanout_addr.expect("fanout started");
    let devices = 32;
    let config = EventsConfig {
        run: RunConfig {
            mode: Mode::HttpBatch,
            ingest_url: format!("http://{}", pipeline.ingest_addr),
            udp_addr: pipeline.udp_addr,
            fanout_url: format!("ws://{fanout_addr}/v1/live"),
            devices,
            workers: 4,
            rate: Some(400.0),
            duration: Duration::from_secs(3),
            batch: 10,
            seed: 7,
            faults: FaultRates::none(),
            subscribers: 0,
            probe_devices: 4,
            poll_interval: Duration::from_millis(25),
            settle_timeout: Duration::from_secs(15),
            check_quarantine: false,
            progress: false,
            cleanup: false,
        },
        // Fences ~1 km across over the fleet's area: a third of the devices start inside one.
        fences: 200,
        compare_no_fences: true,
        compare_rounds: 1,
        event_drain: Duration::from_secs(1),
        fence_settle: Duration::from_secs(3),
        clock_behind: events_load::EVENTS_CLOCK_BEHIND,
    };
    let env = RunEnv {
        pool: pipeline.db.pool.clone(),
        kafka: pipeline.kafka.clone(),
        jwt_secret: Some(SecretString::from(JWT_SECRET)),
    };
    let report = events_load::run(&config, &env)
        .await
        .expect("run completes");
    eprint!("{}", events_load::table(&report));
    let [without, with] = report.phases.as_slice() else {
        panic!("two phases: {report:?}");
    };
    let count = |phase: &events_load::Phase, kind: &str| {
        phase.events_by_type.get(kind).copied().unwrap_or(0)
    };
    for phase in [without, with] {
        assert!(phase.loss_passed, "{phase:?}");
        assert!(phase.ws_error.is_none(), "{phase:?}");
        assert_eq!(count(phase, "device_online"), devices as i64, "{phase:?}");
        assert!(phase.event_frames > 0, "{phase:?}");
        assert!(phase.fix_to_event.count > 0, "{phase:?}");
    }
    assert_eq!(without.fences, 0);
    assert_eq!(count(without, "geofence_enter"), 0, "{without:?}");
    assert_eq!(with.fences, 200);
    assert!(count(with, "geofence_enter") > 0, "{with:?}");
    assert!(report.stored_ratio.is_some_and(|r| r > 0.0));
    let geofences: i64 = sqlx::query_scalar("SELECT count(*) FROM geofences WHERE tenant_id = $1")
        .bind(with.tenant_id)
        .fetch_one(&pipeline.db.pool)
        .await
        .unwrap();
    assert_eq!(geofences, 200);

    pipeline.stop().await;
}
