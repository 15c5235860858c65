//! The processor alone: how fast one processor drains a backlog from the log into `positions`.
//! A throwaway topic is filled with `fixes` plausible fixes (envelopes of `fixes_per_record`, as
//! ingest produces them) of a freshly seeded fleet while no processor reads it; then the processor
//! binary is started on that topic with a fresh consumer group, and its stored-fix counter is
//! watched until every fix is in `positions` (checked by a count). The raw COPY ceiling of the
//! same number of rows is measured in the same run, so the ratio is of like with like.

use crate::ceiling::{self, Ceiling};
use crate::seed;
use crate::sim::Traffic;
use crate::LoadgenError;
use gps_domain::fix::now_millis;
use gps_domain::{FixEnvelope, Protocol};
use gps_runtime::config::{DatabaseArgs, KafkaArgs};
use secrecy::ExposeSecret;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What to drain and with which processor.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// Fixes put in the backlog.
    pub fixes: u64,
    /// Fixes per Kafka record.
    pub fixes_per_record: usize,
    /// Distinct devices.
    pub devices: usize,
    /// The processor binary.
    pub processor_bin: PathBuf,
    /// Extra flags for the processor (e.g. `--write-mode=unnest`).
    pub processor_args: Vec<String>,
    /// Where the started processor serves `/metrics`.
    pub metrics_addr: SocketAddr,
    /// Give up when the stored count does not move for this long.
    pub stall_timeout: Duration,
    /// Also measure the COPY ceiling with the same number of rows.
    pub with_copy_ceiling: bool,
}

/// The measured drain.
#[derive(Debug, Clone, Serialize)]
pub struct DrainResult {
    /// Fixes produced into the backlog.
    pub fixes: u64,
    /// Records they travelled in.
    pub records: u64,
    /// Seconds the fill took.
    pub fill_secs: f64,
    /// Seconds from starting the processor to its first stored fix (start-up, group join).
    pub startup_secs: f64,
    /// Seconds from the first to the last stored fix.
    pub drain_secs: f64,
    /// Fixes stored per second while draining.
    pub fixes_per_sec: f64,
    /// Rows of the run's tenant in `positions` at the end.
    pub stored_rows: i64,
    /// The COPY ceiling of the same number of rows, when measured.
    pub copy_ceiling: Option<Ceiling>,
    /// The drain rate as a share of the COPY ceiling.
    pub ratio_to_copy: Option<f64>,
}

/// Fill, drain, count and compare. The run's rows are removed afterwards; its topic is left in
/// place (see the [`ceiling`] module docs).
pub async fn run(
    config: DrainConfig,
    db: &DatabaseArgs,
    kafka: &KafkaArgs,
) -> Result<DrainResult, LoadgenError> {
    let pool = gps_runtime::db::connect(db).await?;
    let run_id = &Uuid::new_v4().simple().to_string()[..10];
    let devices = config.devices.max(1);
    let per_record = config.fixes_per_record.max(1);
    let records = config.fixes.div_ceil(per_record as u64).max(1);
    let fleet = seed::fleet(
        &pool,
        &format!("drain-{run_id}"),
        &format!("drain-{run_id}"),
        devices,
    )
    .await?;
    let topic = format!("bench.drain.{run_id}");
    gps_runtime::kafka::ensure_topics(kafka, &[(&topic, gps_runtime::kafka::FIXES_PARTITIONS)])
        .await?;

    // Every fix in the recent past, one second apart per device, so validation accepts them all.
    let rounds = records.div_ceil(devices as u64);
    let span_ms = rounds as i64 * per_record as i64 * 1000;
    let start_clock = (now_millis() - span_ms - 60_000).div_euclid(1000) * 1000;
    let mut traffic = Traffic::clean_fleet(devices, start_clock, 1000);
    let rx = now_millis();
    let mut payloads = Vec::with_capacity(records as usize);
    let mut left = config.fixes;
    for n in 0..records {
        let d = (n % devices as u64) as usize;
        let take = left.min(per_record as u64) as usize;
        left -= take as u64;
        let fixes = (0..take).map(|_| traffic[d].next_fix().0).collect();
        let device = &fleet.devices[d];
        let envelope = FixEnvelope::new(
            fleet.tenant_id,
            device.id,
            device.uid.clone(),
            Protocol::Json,
            rx,
            fixes,
        );
        payloads.push((envelope.key(), envelope.encode()));
    }
    let filled = Instant::now();
    ceiling::produce_records(
        kafka,
        &topic,
        payloads.iter().map(|(k, p)| (k.as_str(), p.as_slice())),
        1000,
    )
    .await?;
    let fill_secs = filled.elapsed().as_secs_f64();
    drop(payloads);
    tracing::info!(fixes = config.fixes, records, fill_secs, "backlog filled");

    let result = drain(&config, db, kafka, &topic, run_id).await;
    let stored_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM positions WHERE tenant_id = $1")
            .bind(fleet.tenant_id)
            .fetch_one(&pool)
            .await?;
    cleanup(&pool, fleet.tenant_id).await;
    let (startup_secs, drain_secs) = result?;
    let fixes_per_sec = config.fixes as f64 / drain_secs.max(1e-9);
    let copy_ceiling = if config.with_copy_ceiling {
        Some(ceiling::copy(db, config.fixes, devices, 50_000).await?)
    } else {
        None
    };
    let ratio_to_copy = copy_ceiling
        .as_ref()
        .map(|c| fixes_per_sec / c.fixes_per_sec.max(1e-9));
    Ok(DrainResult {
        fixes: config.fixes,
        records,
        fill_secs,
        startup_secs,
        drain_secs,
        fixes_per_sec,
        stored_rows,
        copy_ceiling,
        ratio_to_copy,
    })
}

/// Start the processor on the backlog, wait until it stored every fix, stop it.
/// Returns (seconds to the first stored fix, seconds from the first to the last).
async fn drain(
    config: &DrainConfig,
    db: &DatabaseArgs,
    kafka: &KafkaArgs,
    topic: &str,
    run_id: &str,
) -> Result<(f64, f64), LoadgenError> {
    let mut child = tokio::process::Command::new(&config.processor_bin)
        .args(&config.processor_args)
        .env("DATABASE_URL", db.database_url.expose_secret())
        .env("KAFKA_BROKERS", &kafka.brokers)
        .env("KAFKA_FIXES_TOPIC", topic)
        .env("PROCESSOR_GROUP_ID", format!("bench-drain-{run_id}"))
        .env("PROCESSOR_ADDR", config.metrics_addr.to_string())
        // Its warnings and errors show on our stderr; its info lines would only be noise.
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            LoadgenError::Setup(format!(
                "cannot start processor {}: {e}",
                config.processor_bin.display()
            ))
        })?;
    let started = Instant::now();
    let client = reqwest::Client::new();
    let url = format!("http://{}/metrics", config.metrics_addr);
    let mut first: Option<Instant> = None;
    let mut last_change = Instant::now();
    let mut last_seen = 0u64;
    let outcome = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(Some(status)) = child.try_wait() {
            break Err(LoadgenError::Setup(format!(
                "processor exited early: {status}"
            )));
        }
        let stored = match client.get(&url).send().await {
            Ok(response) => response
                .text()
                .await
                .ok()
                .and_then(|text| {
                    gps_runtime::ops::metric_sample(&text, "gps_processor_fixes_accepted_total")
                })
                .map_or(0, |v| v as u64),
            Err(_) => 0,
        };
        let now = Instant::now();
        if stored != last_seen {
            last_seen = stored;
            last_change = now;
            first.get_or_insert(now);
        }
        if stored >= config.fixes {
            let first = first.unwrap_or(now);
            break Ok(((first - started).as_secs_f64(), (now - first).as_secs_f64()));
        }
        if now - last_change > config.stall_timeout {
            break Err(LoadgenError::Setup(format!(
                "processor stalled at {stored} of {} fixes",
                config.fixes
            )));
        }
    };
    if let Some(pid) = child.id() {
        // SIGTERM: let it commit and leave the group like in production.
        let _ = tokio::process::Command::new("kill")
            .arg(pid.to_string())
            .status()
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    outcome
}

async fn cleanup(pool: &sqlx::PgPool, tenant: Uuid) {
    for sql in [
        "DELETE FROM positions WHERE tenant_id = $1",
        "DELETE FROM last_positions WHERE tenant_id = $1",
        "DELETE FROM devices WHERE tenant_id = $1",
        "DELETE FROM tenants WHERE id = $1",
    ] {
        if let Err(e) = sqlx::query(sql).bind(tenant).execute(pool).await {
            tracing::warn!(error = %e, "drain cleanup statement failed");
        }
    }
}

/// The result as a few lines of text.
pub fn table(r: &DrainResult) -> String {
    let mut out = format!(
        "backlog: {} fixes in {} records, filled in {:.1} s\n\
         processor: first fix stored {:.1} s after start; drained in {:.2} s = {:.0} fixes/s\n\
         stored rows: {} ({})\n",
        r.fixes,
        r.records,
        r.fill_secs,
        r.startup_secs,
        r.drain_secs,
        r.fixes_per_sec,
        r.stored_rows,
        if r.stored_rows == r.fixes as i64 {
            "every fix once"
        } else {
            "MISMATCH"
        },
    );
    if let (Some(c), Some(ratio)) = (&r.copy_ceiling, r.ratio_to_copy) {
        out.push_str(&format!(
            "COPY ceiling: {} rows in {:.2} s = {:.0} rows/s; processor at {:.0} % of it\n",
            c.fixes,
            c.secs,
            c.fixes_per_sec,
            ratio * 100.0
        ));
    }
    out
}
