//! The fault drill and the scale-out, short versions: the real service binaries as processes
//! with a broker, a Redis, a database and topics of their own (free ports, throwaway names), so
//! nothing here disturbs the shared stack or other tests. The long drill is `loadgen drill`
//! (docs/operations.md).

use benches::drill::{self, DrillConfig, DrillReport, Fault};
use gps_runtime::shutdown::Shutdown;
use gps_runtime::testing::database_args;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The service binaries, built (or found up to date) in this test binary's own target directory:
/// another package's binaries have no `CARGO_BIN_EXE_*`, so the test asks cargo for them.
fn service_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // <target>/<profile>/deps/it-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary sits in <target>/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
    let release = profile_dir.file_name().is_some_and(|p| p == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The checkout the test runs from (set by cargo and nextest at run time; a shared target
    // directory may hold this binary from another checkout), else where it was compiled.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../Cargo.toml");
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .args([
            "-p",
            "ingest",
            "-p",
            "processor",
            "-p",
            "fanout",
            "-p",
            "query-api",
            "--bins",
        ])
        .env("CARGO_TARGET_DIR", &target_dir);
    if release {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building the service binaries failed");
    profile_dir
}

fn short_config(instances: usize, faults: &[&str]) -> DrillConfig {
    let mut config = DrillConfig::long(service_binaries(), database_args());
    config.instances = instances;
    config.faults = faults.iter().map(|f| f.parse::<Fault>().unwrap()).collect();
    config.rate = 400.0;
    config.devices = 40;
    config.phase = Duration::from_secs(7);
    config.fault_at = Duration::from_secs(2);
    // Down for less than ingest's delivery timeout (5 s), to keep the test short; longer is
    // `broker_down_longer_than_the_delivery_timeout_recovers`.
    config.down_for = Duration::from_secs(1);
    config.settle = Duration::from_secs(10);
    config.heartbeat_devices = 24;
    // Small batches, so a SIGKILL finds batches in flight; a shorter session timeout and stall
    // time than the defaults (10 s, 15 s) keep a processor's recovery, and so the test, short.
    config.service_env = [
        ("PROCESSOR_BATCH_MAX_FIXES", "200"),
        ("PROCESSOR_SESSION_TIMEOUT_MS", "6000"),
        ("PROCESSOR_STALL_SECS", "8"),
        ("PROCESSOR_WATCH_INTERVAL_MS", "1000"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec();
    config
}

fn finish(report: &DrillReport) {
    let table = drill::table(report);
    println!("{table}");
    assert!(report.passed(), "the drill failed:\n{table}");
    let _ = std::fs::remove_dir_all(&report.work_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_drill_loses_nothing_doubles_nothing_and_recovers() {
    let config = short_config(
        1,
        &[
            "kill-processor",
            "kill-processor-mid-commit",
            "kill-broker",
            "pause-broker",
            "kill-redis",
        ],
    );
    let report = drill::run(config, Shutdown::new())
        .await
        .expect("the drill runs");
    // Each fault actually interrupted something: the broker faults and the processor kills
    // failed or delayed requests or stored rows late, and the Redis kill was announced live.
    let redis = report
        .rows
        .iter()
        .find(|r| r.fault == "kill-redis")
        .unwrap();
    assert!(redis.live_gaps > 0, "no gap frame announced: {redis:?}");
    for row in &report.rows {
        assert!(row.acked > 0 && row.down_secs >= 0.0, "{row:?}");
    }
    finish(&report);
}

/// The broker SIGKILLed and kept down longer than ingest's delivery timeout (5 s), so records
/// time out in ingest's producers while it is away: after its restart the pipeline must come
/// back by itself. On tansu 0.6 a producer that bumps its epoch after a timeout wedges the
/// broker (docs/operations.md, "Known broker defects"); ingest must never send that bump.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_down_longer_than_the_delivery_timeout_recovers() {
    let mut config = short_config(1, &["kill-broker"]);
    // 5.5 s: back just after the first records timed out, while the producers that held them
    // are being replaced (the window in which tansu was wedged); the rate keeps records in flight.
    config.down_for = Duration::from_millis(5500);
    config.phase = Duration::from_secs(12);
    config.rate = 1000.0;
    let report = drill::run(config, Shutdown::new())
        .await
        .expect("the drill runs");
    let row = &report.rows[0];
    assert!(row.down_secs >= 5.5 && row.acked > 0, "{row:?}");
    finish(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_of_each_split_the_partitions_and_every_watcher_sees_every_fix() {
    let config = short_config(2, &["baseline"]);
    let report = drill::run(config, Shutdown::new())
        .await
        .expect("the drill runs");
    let row = &report.rows[0];
    assert!(row.errors.is_empty(), "requests failed: {row:?}");
    assert_eq!(row.acked_per_ingest.len(), 2);
    assert!(
        row.acked_per_ingest.iter().all(|&n| n > 0),
        "fixes entered through both ingests: {row:?}"
    );
    assert_eq!(report.processor_partitions.len(), 2);
    assert!(
        report.processor_partitions.iter().all(|&p| p > 0),
        "a processor holds no partition: {:?}",
        report.processor_partitions
    );
    assert_eq!(
        report.processor_partitions.iter().sum::<usize>(),
        gps_runtime::kafka::FIXES_PARTITIONS as usize,
        "every partition held once"
    );
    assert_eq!(report.live_received.len(), 2);
    assert!(report.live_received.iter().all(|&n| n > 0), "{report:?}");
    assert_eq!(
        report.live_missed,
        vec![0, 0],
        "a watcher missed live fixes"
    );
    finish(&report);
}
